"""Running the pipeline from a notebook, and the full reproduction: notebooks 04 (train) → 05 (evaluate).

    CPU_RECIPE            configs/cpu-smollm2.yaml: SmolLM2-135M-Instruct + sentiment judge, 04's run without CUDA
    SMOKE_SETTINGS        the CI setting notebooks 04 and 05 share: CPU_RECIPE made small (smoke_config)
    TINY_SETTINGS         random tiny Mistral + tiny PairRM, the pipeline's mechanics in seconds (tests)
    as_overrides          {"train.beta": 1e-3} → ["train.beta=0.001"], the form loop.load_config takes
    accelerate_config_for the accelerate config a recipe needs on N GPUs (ZeRO-3 for full, DDP for (Q)LoRA)
    accelerate_command    `accelerate launch --config_file F --num_processes N -m sppo_lite.cli iterate ...`
    run_pipeline          iterations 1..T: in this process (CPU / one GPU: peak GPU memory per stage), or
                          through accelerate launch in a child process when gpus > 1
    reproduce             `sppo-lite reproduce`: notebooks 04 and 05 through papermill, resumable

A notebook cannot be the torchrun process of a multi-GPU run (every rank must run the same
script from the start), so with gpus > 1 run_pipeline writes the resolved config to
RUN_DIR/recipe.yaml and launches `sppo-lite iterate` on it; the stages resume either way.

    sppo-lite reproduce --output-dir D [--smoke] [--gpus N] [--config configs/full-8gpu-mistral7b.yaml]

    D/04_qlora_sppo_mistral7b/   the executed notebook 04, its figures and summary.json
    D/05_evaluation/             the executed notebook 05, its figures, summary.json, response cache
    D/run/                       config.json, resources.json, iter{t}/{generate,judge,build,train}/
    D/reproduce.json             both summaries and the wall time of each notebook

Rerunning the same command after an interruption re-executes both notebooks; every finished stage
and every cached evaluation generation is skipped, so the work resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import yaml

from . import loop
from .resources import PROJECT_ROOT, recipe_path

__all__ = ["REPO_ROOT", "repo_path", "FULL_RECIPE", "CPU_RECIPE", "NOTEBOOKS", "SMOKE_SETTINGS", "smoke_config",
           "TINY_SETTINGS", "tiny_settings", "as_overrides", "accelerate_config_for",
           "accelerate_command", "run_pipeline", "reproduce"]

REPO_ROOT = PROJECT_ROOT  # the checkout, or sppo_lite/share/ in an installed wheel (sppo_lite.resources)
FULL_RECIPE = REPO_ROOT / "configs" / "full-8gpu-mistral7b.yaml"
NOTEBOOKS = ("04_qlora_sppo_mistral7b.ipynb", "05_evaluation.ipynb")


def repo_path(*parts: str) -> str:
    """A shipped file (configs/, data/, notebooks/) as a path relative to the working directory (no machine paths in outputs)."""
    return os.path.relpath(REPO_ROOT.joinpath(*parts))


# The CPU recipe: SPPO on SmolLM2-135M-Instruct with the sentiment judge, the stand-in for Mistral-7B that
# notebook 04 runs on a machine without CUDA (and notebook 05 evaluates).
CPU_RECIPE = REPO_ROOT / "configs" / "cpu-smollm2.yaml"

# The SMOKE setting of notebooks 04 and 05 (CI): the CPU recipe made small — SmolLM2-135M-Instruct and the
# sentiment judge, 2 iterations of 6 prompts × 3 samples of 16 tokens, LoRA, a few optimizer steps. It runs
# every line of the real path (GGUF-converted model, LoRA merge hand-off, evaluation) in a minute or two on a
# CPU; its numbers are too small to say much about SPPO.
SMOKE_SETTINGS = {
    "iterations": 2,
    "prompts.n_prompts": 6,
    "generation.k": 3, "generation.max_new_tokens": 16, "generation.batch_size": 6, "generation.shard_size": 6,
    "build.ref_batch_size": 6,
    "train.num_train_epochs": 2, "train.per_device_train_batch_size": 3, "train.warmup_steps": 0,
}

# The random tiny setting (a tiny Mistral and a tiny PairRM-shaped ranker, QLoRA code path, 3 iterations of
# 4 prompts × 3 samples of 8 tokens): the pipeline's mechanics in seconds, for tests. Its numbers say
# nothing about SPPO.
TINY_SETTINGS = {
    "iterations": 3,
    "policy.model": "tiny", "policy.mode": "qlora", "policy.device": "cpu",
    "prompts.source": None,  # filled by tiny_settings(): data/prompts.jsonl
    "prompts.thirds": 3, "prompts.n_prompts": 4,
    "generation.k": 3, "generation.max_new_tokens": 8, "generation.batch_size": 8, "generation.shard_size": 8,
    "generation.max_prompt_tokens": 256,
    "judge.model": "tiny", "judge.mode": "official", "judge.device": "cpu", "judge.batch_size": 32,
    "judge.shard_size": 8,
    "build.ref_batch_size": 8,
    "train.beta": 0.1, "train.learning_rate": 1.0e-2, "train.optim": "adamw_torch", "train.warmup_steps": 0,
    "train.num_train_epochs": 2, "train.per_device_train_batch_size": 2, "train.activation_checkpointing": False,
    "train.bf16": False, "train.max_length": 256, "train.max_prompt_length": 200, "train.logging_steps": 1,
    "train.lora_r": 8, "train.lora_alpha": 16, "train.lora_dropout": 0.0,
}


def tiny_settings() -> dict:
    """TINY_SETTINGS with the prompt file (data/prompts.jsonl) as a path from the working directory."""
    return {**TINY_SETTINGS, "prompts.source": repo_path("data", "prompts.jsonl")}


def smoke_config(overrides=()) -> dict:
    """The config of the notebooks' SMOKE run: CPU_RECIPE ← SMOKE_SETTINGS ← overrides ("a.b=value")."""
    return loop.load_config(CPU_RECIPE, as_overrides(SMOKE_SETTINGS) + list(overrides))


def as_overrides(settings: Mapping[str, object]) -> list[str]:
    """{"section.key": value} → ["section.key=value"], each value written as YAML that loads back equal.

    (PyYAML's dump writes 5.0e-07, which YAML 1.1 loads as a float; load_config also coerces a hand-typed
    5e-7, which YAML 1.1 would read as text, for keys whose default is a number.)
    """
    out = []
    for key, value in settings.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16)
        text = text[:-5] if text.endswith("\n...\n") else text
        out.append(f"{key}={text.strip()}")
    return out


def accelerate_config_for(config: dict) -> Path:
    """configs/accelerate/deepspeed_zero3.yaml for full fine-tuning (the paper's), ddp.yaml for LoRA / QLoRA
    (a 4-bit base cannot be sharded by ZeRO-3; each GPU holds its own copy)."""
    name = "deepspeed_zero3.yaml" if config["policy"]["mode"] == "full" else "ddp.yaml"
    return REPO_ROOT / "configs" / "accelerate" / name


def accelerate_command(recipe, run_dir, gpus: int, accelerate_config) -> list[str]:
    """argv of `accelerate launch --config_file F --num_processes N -m sppo_lite.cli iterate --config R
    --output-dir D`, run as `python -m accelerate.commands.launch` (the same program, found without PATH)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
            "--num_processes", str(gpus), "-m", "sppo_lite.cli", "iterate", "--config", str(recipe),
            "--output-dir", str(run_dir)]


def _peak_gpu_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _reset_gpu_peak() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def _into(log_file: Path | None):
    """Send print/tqdm/warnings of the stages to log_file (None: leave them where they are)."""
    if log_file is None:
        yield
        return
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _for_recipe_file(config: dict) -> dict:
    """The config as a YAML recipe elsewhere must say it: a prompt file by its absolute path (a relative
    path in a recipe is read from the recipe's folder)."""
    source = config["prompts"]["source"]
    if Path(source).is_file():
        config = {**config, "prompts": {**config["prompts"], "source": str(Path(source).resolve())}}
    return config


def run_pipeline(config: dict, run_dir, gpus: int = 1, accelerate_config=None, quiet: bool = True,
                 log: Callable = print) -> dict:
    """All iterations of `config` into run_dir, resumable; returns resources.json's content.

    gpus <= 1: stage by stage in this process, like loop.run_all; for each stage that runs now, its
    wall time and (with CUDA) peak GPU memory go to run_dir/resources.json. quiet sends the stages'
    own output (progress bars, Trainer logs, warnings) to run_dir/pipeline.log; one line per stage
    is logged. gpus > 1: the config goes to run_dir/recipe.yaml and `accelerate launch` runs
    `sppo-lite iterate` on it (accelerate_config default: accelerate_config_for(config)); its output
    goes to pipeline.log and its stage lines to log. Raises RuntimeError when the launch fails.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / "pipeline.log" if quiet else None
    resources_path = run_dir / "resources.json"
    resources = json.loads(resources_path.read_text()) if resources_path.is_file() else {}
    if gpus > 1:
        recipe = run_dir / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(_for_recipe_file(config), sort_keys=False))
        cmd = accelerate_command(recipe, run_dir, gpus, accelerate_config or accelerate_config_for(config))
        log("$ " + shlex.join(["accelerate", "launch", *cmd[3:]]))
        _launch(cmd, log_file or run_dir / "pipeline.log", log)
        return resources
    from .precision import check_precision

    check_precision(config, engine="single")  # before any stage runs (trainer.train_and_merge checks again)
    loop.quiet_datasets()
    shown = sys.stdout  # the stages' own output may be redirected; their one-line reports are not

    def report(*args):
        with contextlib.redirect_stdout(shown):
            log(*args)

    run = loop.Run(config, run_dir, report)
    with run.lock:  # one run per folder; config.json is written once the config is accepted
        run.accept(config["iterations"])
        for t in range(1, config["iterations"] + 1):
            for stage in loop.STAGES:
                before = loop.read_manifest(run.stage_dir(t, stage))
                _reset_gpu_peak()
                t0 = time.time()
                with _into(log_file):
                    after = loop.STAGE_FUNCTIONS[stage](run, t)
                if after != before:  # it ran now: record what it cost
                    resources.setdefault(f"iter{t}", {})[stage] = {
                        "wall_s": round(time.time() - t0, 2), "peak_gpu_gib": _peak_gpu_gib()}
                    resources_path.write_text(json.dumps(resources, indent=2))
    _reset_gpu_peak()
    return resources


_STAGE_LINE = re.compile(r"^iter\d+/\w+: ")


def _launch(cmd: list[str], log_file: Path, log: Callable) -> None:
    """Run cmd with its output appended to log_file; pass its stage lines on to log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_file, "a") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                    text=True, env=env) as proc:
        tail = []
        for line in proc.stdout:
            f.write(line)
            tail = (tail + [line])[-40:]
            if _STAGE_LINE.match(line):
                log(line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed (exit {proc.returncode}); the end of {log_file.name}:\n"
                           + "".join(tail))


def reproduce(output_dir, smoke: bool = False, gpus: int | None = None, config=FULL_RECIPE,
              parameters: Mapping[str, Mapping] | None = None, log: Callable = print) -> dict:
    """Notebooks 04 then 05 through papermill (sppo_lite.notebooks.run_notebook) into output_dir.

    04 trains into output_dir/run with the recipe `config` on `gpus` GPUs (default: all visible, at
    least 1); 05 evaluates that run. smoke runs both in their SMOKE setting (the CPU recipe made small;
    `config` is not read). parameters: extra papermill parameters per notebook, keyed "04" / "05".
    Returns {"04_...": summary, "05_...": summary}, also written with timings to reproduce.json.
    """
    from .notebooks import NOTEBOOK_DIR, run_notebook

    output_dir = Path(output_dir).resolve()
    try:  # a path, a shipped recipe's name, or its repository path (configs/...) from any folder
        config = recipe_path(config).resolve()
    except ValueError:
        if not smoke:
            raise
        config = Path(config).resolve()  # SMOKE does not read it
    if gpus is None:
        import torch

        gpus = max(1, torch.cuda.device_count())
    output_dir.mkdir(parents=True, exist_ok=True)
    run_dir = output_dir / "run"
    extra = dict(parameters or {})
    params = {"04": {"RUN_DIR": str(run_dir), "CONFIG": str(config), "GPUS": gpus, **extra.get("04", {})},
              "05": {"RUN_DIR": str(run_dir), **extra.get("05", {})}}
    results, timings = {}, {}
    for name in NOTEBOOKS:
        t0 = time.time()
        log(f"{name}: running ({'SMOKE' if smoke else 'full'}, {gpus} GPU(s)) → {output_dir / Path(name).stem}")
        results[Path(name).stem] = run_notebook(NOTEBOOK_DIR / name, output_dir, smoke=smoke,
                                                parameters=params[name[:2]])
        timings[Path(name).stem] = round(time.time() - t0, 1)
        log(f"{name}: done in {timings[Path(name).stem]:.0f} s")
    (output_dir / "reproduce.json").write_text(json.dumps(
        {"smoke": smoke, "gpus": gpus, "recipe": "SMOKE settings" if smoke else config.name, "wall_s": timings,
         "summaries": results},
        indent=2, default=str))
    return results
