"""One SPPO iteration t as resumable stages: generate → judge → build → train.

    iter{t}/generate/responses.parquet   K samples per prompt from π_t            (sharded, resumable)
    iter{t}/judge/judgements.parquet     the judge's K×K win matrix per prompt    (sharded, resumable)
    iter{t}/build/sppo.parquet           pairs, win rates, log π_t of each response
    iter{t}/train/model/                 π_{t+1}: the next iteration's generator and reference

Every stage writes its artifact into a temporary folder and renames it into place, with a
manifest.json (config hash, seed, model, K, counts, package versions) written last. A rerun
skips a finished stage whose config hash matches, refuses one whose config changed (use --force
or a new output dir), and resumes a stage that was killed from its last finished shard. Seeds
depend on (seed, prompt id, sample index) only, so a resumed run produces the identical dataset.

The same command runs under `torchrun` / `accelerate launch`: generation, judging and the reference
log-probs of the build stage are spread over the processes (one GPU each), and training is
data-parallel through the Trainer (DDP; DeepSpeed / FSDP for full fine-tuning via an accelerate config).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable
from pathlib import Path

import yaml

__all__ = ["STAGES", "DEFAULT_CONFIG", "load_config", "apply_overrides", "Run", "run_iteration", "run_all"]

STAGES = ("generate", "judge", "build", "train")
JUDGE_TYPES = ("pairrm", "reward_model", "length", "cyclic_style")

# Every key a config may set, with its default. Configs override these; unknown keys are errors.
DEFAULT_CONFIG = {
    "seed": 0,
    "iterations": 3,
    "policy": {
        "model": "mistralai/Mistral-7B-Instruct-v0.2",  # "tiny": a random tiny Mistral built locally
        "mode": "full",                    # full | lora | qlora (training; generation uses the merged π_t)
        "dtype": None,                     # None: bf16 / fp16 / fp32 by device
        "device": "auto",                  # auto: cuda when available, else cpu
    },
    "prompts": {
        "source": "data/prompts.jsonl",    # .jsonl / .parquet / hub dataset id (UltraFeedback)
        "split": "train",
        "column": None,
        "thirds": 3,                       # disjoint parts, one per iteration (paper: 3); null: all prompts every iteration
        "n_prompts": None,                 # per iteration; None = the whole part
    },
    "generation": {
        "backend": "transformers",         # transformers | vllm
        "k": 5, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 512,
        "batch_size": 8, "max_prompt_tokens": 512, "long_prompts": "skip",
        "shard_size": 256,                 # prompts per resumable shard
    },
    "judge": {
        "type": "pairrm",                  # pairrm | reward_model | length | cyclic_style
        "model": "llm-blender/PairRM",     # "tiny": a tiny PairRM-shaped ranker built locally
        "mode": "official",                # pairrm: official (BT scores, as the paper) | pairwise
        "batch_size": 16, "dtype": None, "device": "auto",
        "template_prompts": True,          # show the judge the prompt in π_t's chat template (official rank.py)
        "markers": None,                   # cyclic_style: one marker string per style
        "style_matrix": None,              # cyclic_style: the styles' preference matrix (default game.weighted_cycle())
        "quality_keyword": None,           # cyclic_style: q(y) = occurrences of this word (within-style quality)
        "quality_weight": 0.2,             # cyclic_style: P = (1 − w)·S + w·σ(q_i − q_j)
        "length_scale": 20.0,              # length judge: P_ij = σ((len_i − len_j)/scale)
        "shard_size": 256,
    },
    "build": {
        "pair_mode": "best_worst",         # official: argmax / argmin judge score; or all
        "ref_batch_size": 8,
    },
    "train": {
        "loss_type": "sppo", "beta": 0.001, "learning_rate": 5.0e-7, "optim": "rmsprop",
        "lr_scheduler_type": "linear", "warmup_steps": 0.1, "num_train_epochs": 1,  # warmup < 1: a ratio
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "max_length": 1024, "max_prompt_length": 512, "gradient_checkpointing": True,
        "bf16": "auto", "logging_steps": 10, "save_steps": 100, "lora_r": 16, "lora_alpha": 32,
        "lora_dropout": 0.05, "reference": "precomputed",
    },
}


# ---------------------------------------------------------------- config

def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            raise ValueError(f"unknown config key {where + key!r}; known here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where + key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        elif isinstance(base[key], float) and isinstance(value, str):
            try:  # YAML 1.1 reads 5e-7 (no dot) as text
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"config key {where + key!r} must be a number, got {value!r}") from None
        else:
            out[key] = value
    return out


def apply_overrides(config: dict, overrides) -> dict:
    """Apply "a.b=value" strings (value parsed as YAML) on top of config."""
    update: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. generation.k=8")
        dotted, raw = item.split("=", 1)
        node = update
        *parents, last = dotted.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    return _merge(config, update)


def read_yaml_mapping(path) -> dict:
    """A YAML file that must hold a mapping; one-line errors when it is missing or is not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a YAML mapping of key: value")
    return data


def load_config(path=None, overrides=None, updates: dict | None = None) -> dict:
    """DEFAULT_CONFIG ← YAML file ← `updates` (a nested dict) ← "a.b=value" overrides; validated."""
    config = DEFAULT_CONFIG
    if path is not None:
        config = _merge(config, read_yaml_mapping(path))
    config = apply_overrides(_merge(config, updates or {}), overrides)
    _validate(config)
    return config


def _validate(config: dict) -> None:
    g, j = config["generation"], config["judge"]
    if not isinstance(g["k"], int) or g["k"] < 2:
        raise ValueError(f"generation.k must be an integer >= 2 (SPPO compares each sample with the others), got {g['k']}")
    if not isinstance(config["iterations"], int) or config["iterations"] < 1:
        raise ValueError(f"iterations must be a positive integer, got {config['iterations']}")
    if config["prompts"]["thirds"] is not None and config["iterations"] > config["prompts"]["thirds"]:
        raise ValueError(f"iterations ({config['iterations']}) exceeds prompts.thirds ({config['prompts']['thirds']}): "
                         f"each iteration needs its own part of the prompts")
    if j["type"] not in JUDGE_TYPES:
        raise ValueError(f"judge.type must be one of {', '.join(JUDGE_TYPES)}, got {j['type']!r}")
    if j["type"] == "cyclic_style" and not j["markers"]:
        raise ValueError("judge.type cyclic_style needs judge.markers: one marker string per style")
    if g["backend"] not in ("transformers", "vllm"):
        raise ValueError(f"generation.backend must be transformers or vllm, got {g['backend']!r}")
    for section in ("generation", "judge"):
        if config[section]["shard_size"] < 1:
            raise ValueError(f"{section}.shard_size must be >= 1")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _versions() -> dict:
    out = {}
    for pkg in ("sppo-lite", "torch", "transformers", "datasets", "peft", "accelerate", "llm-blender", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device(name: str) -> str:
    """"auto": this process's GPU (LOCAL_RANK under torchrun / accelerate launch), else the CPU."""
    if name != "auto":
        return name
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- artifacts

class StageChanged(ValueError):
    """A finished stage was made with another config."""


def _rank_world() -> tuple[int, int]:
    """(rank, world size) as torchrun / accelerate launch set them; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _launch_token() -> str:
    """Tells this launch's processes apart from a crashed earlier launch's leftovers."""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.environ.get('MASTER_PORT', '')}:{_rank_world()[1]}"


def _wait_until(condition, poll_s: float = 0.5) -> None:
    """Block until condition() holds (torchrun ends every process if rank 0 dies, so no timeout)."""
    while not condition():
        time.sleep(poll_s)


def _wait_for_manifest(final: Path, config_hash: str, name: str) -> dict:
    _wait_until(lambda: (m := read_manifest(final)) is not None and m["config_hash"] == config_hash)
    return read_manifest(final)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Rename a finished temporary folder into place (replacing an older artifact last)."""
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's manifest, or None when the stage has not finished."""
    path = Path(stage_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Run:
    """An output directory and its config; `run.stage_dir(t, "judge")` → iter{t}/judge."""

    config: dict
    output_dir: Path
    log: Callable = print

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        if _rank_world()[0] != 0:  # one voice per launch: rank 0 reports
            self.log = lambda *_: None

    def stage_dir(self, t: int, stage: str) -> Path:
        return self.output_dir / f"iter{t}" / stage

    def policy_path(self, t: int) -> str:
        """π_t: the configured base model for t = 1, else the model trained in iteration t − 1."""
        if t == 1:
            return self.base_model("policy")
        prev = self.stage_dir(t - 1, "train")
        if read_manifest(prev) is None:
            raise ValueError(f"iteration {t} needs π_{t} from iteration {t - 1}: run its train stage first")
        return str(prev / "model")

    def base_model(self, section: str) -> str:
        """The configured model id or path; "tiny" builds a tiny local model once under base/."""
        name = self.config[section]["model"]
        if name != "tiny":
            return name
        target = self.output_dir / "base" / ("tiny-policy" if section == "policy" else "tiny-pairrm")
        if _rank_world()[0] != 0:  # rank 0 builds it; the others wait for it to be complete and usable
            _wait_until(lambda: (target / ".complete").exists() and (
                section == "policy" or Path(json.loads((target / "config.json").read_text())["model_name"]).is_dir()))
            return str(target)
        if not (target / ".complete").exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            seed = self.config["seed"]
            if section == "policy":
                from .modeling import save_tiny_policy

                save_tiny_policy(tmp, seed=seed)
            else:
                from .pairrm import build_tiny_pairrm

                build_tiny_pairrm(tmp, seed=seed)
            (tmp / ".complete").write_text("")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        if section == "judge":
            # The ranker config records its backbone's absolute path: rebuild it if the folder moved.
            cfg = json.loads((target / "config.json").read_text())
            if not Path(cfg["model_name"]).is_dir():
                cfg["model_name"] = str((target / "backbone").resolve())
                _write_json_atomic(target / "config.json", cfg)
        return str(target)

    # --------------------------------------------------------- stage bookkeeping

    def _stage(self, t: int, stage: str, fingerprint: dict, force: bool, work, all_ranks: bool = False):
        """Run `work(tmp_dir, partial_dir) -> (counts, summary, artifact)` unless the stage is already done.

        Under torchrun / accelerate launch, rank 0 owns the folders and the manifest; with all_ranks
        every rank runs `work` (sharded generation and judging, DDP training) and the others return
        None from it; without, the other ranks wait for rank 0's manifest.
        """
        final = self.stage_dir(t, stage)
        config_hash = _hash(fingerprint)
        done = read_manifest(final)
        name = f"iter{t}/{stage}"
        if done is not None and not force:
            if done["config_hash"] != config_hash:
                raise StageChanged(
                    f"{name} was made with a different config or inputs (hash {done['config_hash']} ≠ "
                    f"{config_hash}): rerun with --force {stage} to redo it, or use a new --output-dir")
            self.log(f"{name}: done already, skipped ({done['summary']})")
            return done
        rank, _ = _rank_world()
        partial, tmp = final.with_name(stage + ".partial"), final.with_name(stage + ".tmp")
        stamp, ready = partial / "config_hash", f"{config_hash} {_launch_token()}"
        if rank == 0:
            if partial.exists() and (force or not stamp.is_file() or stamp.read_text().split()[0] != config_hash):
                shutil.rmtree(partial)  # shards of another config (or forced): never mix them in
            partial.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(stamp, ready)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        elif not all_ranks:
            return _wait_for_manifest(final, config_hash, name)
        else:
            _wait_until(lambda: stamp.is_file() and stamp.read_text() == ready)
        t0 = time.time()
        counts, summary, artifact = work(tmp, partial)
        if rank != 0:
            return _wait_for_manifest(final, config_hash, name)
        manifest = {
            "stage": stage, "iteration": t, "config_hash": config_hash, "inputs": fingerprint,
            "seed": self.config["seed"], "counts": counts, "summary": summary,
            "artifact_hash": _file_hash(tmp / artifact) if artifact else config_hash,
            "elapsed_s": round(time.time() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(), "world_size": _rank_world()[1],
        }
        _write_json_atomic(tmp / "manifest.json", manifest)
        _publish(tmp, final)
        shutil.rmtree(partial, ignore_errors=True)
        self.log(f"{name}: {summary} in {manifest['elapsed_s']:.1f} s")
        return manifest

    def _upstream(self, t: int, stage: str) -> str:
        done = read_manifest(self.stage_dir(t, stage))
        if done is None:
            raise ValueError(f"iter{t}/{stage} has not finished: run `sppo-lite {stage}` for iteration {t} first "
                             f"(or `sppo-lite iterate`)")
        return done["artifact_hash"]


# ---------------------------------------------------------------- prompts

def iteration_prompts(config: dict, t: int) -> tuple[list[int], list[str]]:
    """(prompt ids, prompts) of iteration t: its disjoint part of the prompt set, first n_prompts of it."""
    from .data import iteration_split, load_prompts

    p = config["prompts"]
    prompts = load_prompts(p["source"], split=p["split"], prompt_column=p["column"])
    ids = list(range(len(prompts)))
    if p["thirds"] is not None:
        ids = iteration_split(ids, t, n_iterations=p["thirds"], seed=config["seed"])
    if p["n_prompts"] is not None:
        ids = ids[: p["n_prompts"]]
    if not ids:
        raise ValueError(f"iteration {t} has no prompts: {p['source']} holds {len(prompts)}, split in {p['thirds']} parts")
    return ids, [prompts[i] for i in ids]


def _shards(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _load_parquet(path: Path):
    from datasets import Dataset

    return Dataset.from_parquet(str(path))


def _concat_shards(partial: Path, n_shards: int):
    from datasets import concatenate_datasets

    return concatenate_datasets([_load_parquet(partial / f"shard-{i:05d}.parquet") for i in range(n_shards)])


# ---------------------------------------------------------------- stages

def generate_stage(run: Run, t: int, force: bool = False) -> dict:
    """K samples per prompt from π_t, one resumable shard at a time."""
    from tqdm.auto import tqdm

    from .generation import generate_responses, generate_responses_vllm, save_parquet

    cfg, g = run.config, run.config["generation"]
    policy = run.policy_path(t)
    ids, prompts = iteration_prompts(cfg, t)
    upstream = read_manifest(run.stage_dir(t - 1, "train"))["artifact_hash"] if t > 1 else policy
    fingerprint = {"generation": g, "prompts": cfg["prompts"], "seed": cfg["seed"], "policy": upstream,
                   "prompt_ids": _hash(ids)}

    def work(tmp, partial):
        shards = _shards(len(ids), g["shard_size"])
        opts = dict(k=g["k"], temperature=g["temperature"], top_p=g["top_p"], max_new_tokens=g["max_new_tokens"],
                    seed=cfg["seed"], max_prompt_tokens=g["max_prompt_tokens"], long_prompts=g["long_prompts"])
        model = tokenizer = None
        rank, world = _rank_world()
        stats_total = {"prompts": 0, "generated": 0, "skipped": 0, "truncated": 0}
        with tqdm(total=len(ids), desc=f"iter{t} generate", unit="prompt", disable=rank != 0) as bar:
            for n, (a, b) in enumerate(shards):
                shard, stats_file = partial / f"shard-{n:05d}.parquet", partial / f"shard-{n:05d}.json"
                if n % world != rank:  # another process's shard
                    if rank == 0:
                        _wait_until(stats_file.is_file)
                elif not (shard.is_file() and stats_file.is_file()):
                    if g["backend"] == "vllm":
                        ds, stats = generate_responses_vllm(policy, prompts[a:b], prompt_ids=ids[a:b], **opts)
                    else:
                        if model is None:
                            model, tokenizer = _load_inference_policy(policy, cfg)
                        ds, stats = generate_responses(model, tokenizer, prompts[a:b], prompt_ids=ids[a:b],
                                                       batch_size=g["batch_size"], progress=False, **opts)
                    save_parquet(ds, shard)
                    _write_json_atomic(stats_file, stats)  # written last: marks the shard complete
                if rank != 0:
                    continue
                stats = json.loads(stats_file.read_text())
                for key in stats_total:
                    stats_total[key] += stats[key]
                bar.update(b - a)
        if rank != 0:
            return None, None, None
        _concat_shards(partial, len(shards)).to_parquet(str(tmp / "responses.parquet"))
        counts = {**stats_total, "k": g["k"], "policy": policy}
        summary = (f"{stats_total['generated']} prompts × {g['k']} responses "
                   f"({stats_total['skipped']} skipped, {stats_total['truncated']} truncated as too long)")
        return counts, summary, "responses.parquet"

    return run._stage(t, "generate", fingerprint, force, work, all_ranks=True)


def _load_inference_policy(policy: str, cfg: dict):
    """π_t for sampling and reference log-probs, as training will see it at step 0.

    QLoRA trains on the 4-bit base, so π_t is sampled and scored in 4 bit too (its rounding
    would otherwise show up as a log-ratio before any training); other modes use the full
    weights. Weights load straight onto the GPU, never staged in CPU RAM.
    """
    from .modeling import load_policy

    device = _device(cfg["policy"]["device"])
    qlora = cfg["policy"]["mode"] == "qlora"
    device_map = {"": device} if device.startswith("cuda") or qlora else None
    model, tokenizer = load_policy(policy, mode="qlora" if qlora else "full", dtype=cfg["policy"]["dtype"],
                                   device_map=device_map)
    return (model if device_map else model.to(device)), tokenizer


def make_judge(cfg: dict, run: Run | None = None):
    """The judge a config asks for."""
    from . import judges

    j = cfg["judge"]
    if j["type"] == "length":
        return judges.LengthJudge(scale=j["length_scale"])
    if j["type"] == "cyclic_style":
        word = j["quality_keyword"]
        return judges.CyclicStyleJudge(j["markers"], j["style_matrix"],
                                       quality=(lambda y: y.split().count(word)) if word else None,
                                       quality_weight=j["quality_weight"])
    model = run.base_model("judge") if run is not None else j["model"]
    device = _device(j["device"])
    if j["type"] == "reward_model":
        return judges.RewardModelJudge(model, device=device, batch_size=j["batch_size"], dtype=j["dtype"])
    return judges.PairRMJudge(model, mode=j["mode"], device=device, batch_size=j["batch_size"], dtype=j["dtype"])


def _templated(policy: str, prompts: list[str]) -> list[str]:
    """Each prompt as π_t's chat template renders it up to the assistant's answer (what rank.py shows PairRM)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts]


def judge_stage(run: Run, t: int, force: bool = False, judge=None) -> dict:
    """The judge's K×K win matrix for every prompt, one resumable shard at a time."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    from .generation import save_parquet

    cfg, j = run.config, run.config["judge"]
    fingerprint = {"judge": j, "responses": run._upstream(t, "generate")}

    def work(tmp, partial):
        nonlocal judge
        responses = _load_parquet(run.stage_dir(t, "generate") / "responses.parquet")
        prompts = list(responses["prompt"])
        if j["template_prompts"]:
            prompts = _templated(run.policy_path(t), prompts)
        shards = _shards(len(responses), j["shard_size"])
        rank, world = _rank_world()
        with tqdm(total=len(responses), desc=f"iter{t} judge", unit="prompt", disable=rank != 0) as bar:
            for n, (a, b) in enumerate(shards):
                shard = partial / f"shard-{n:05d}.parquet"
                if n % world != rank:
                    if rank == 0:
                        _wait_until(shard.is_file)
                elif not shard.is_file():
                    judge = judge or make_judge(cfg, run)
                    rows = responses.select(range(a, b))
                    mats = judge.win_matrices(prompts[a:b], rows["responses"])
                    save_parquet(Dataset.from_dict({"prompt_id": rows["prompt_id"],
                                                    "matrix": [m.tolist() for m in mats]}), shard)
                bar.update(b - a)
        if rank != 0:
            return None, None, None
        _concat_shards(partial, len(shards)).to_parquet(str(tmp / "judgements.parquet"))
        counts = {"prompts": len(responses), "judge": j["type"], "model": j["model"], "mode": j["mode"]}
        return counts, f"{len(responses)} win matrices ({j['type']}, {j['mode']})", "judgements.parquet"

    return run._stage(t, "judge", fingerprint, force, work, all_ranks=True)


def build_stage(run: Run, t: int, force: bool = False) -> dict:
    """Pairs and win rates (official columns) plus log π_t of each trained response."""
    import numpy as np

    from datasets import concatenate_datasets

    from .data import CHAT_COLUMNS, add_reference_logps, build_sppo_dataset
    from .generation import save_parquet

    cfg, b, tr = run.config, run.config["build"], run.config["train"]
    policy = run.policy_path(t)
    fingerprint = {"build": b, "lengths": [tr["max_length"], tr["max_prompt_length"]],
                   "responses": run._upstream(t, "generate"), "judgements": run._upstream(t, "judge")}

    def work(tmp, partial):
        responses = _load_parquet(run.stage_dir(t, "generate") / "responses.parquet")
        judged = _load_parquet(run.stage_dir(t, "judge") / "judgements.parquet")
        if responses["prompt_id"] != judged["prompt_id"]:
            raise ValueError(f"iter{t}: judgements do not match the responses: redo the judge stage with --force judge")
        matrices = [np.asarray(m, dtype=float) for m in judged["matrix"]]
        finished = responses["finished"] if "finished" in responses.column_names else None
        ds = build_sppo_dataset(responses["prompt"], responses["responses"], matrices, pair_mode=b["pair_mode"],
                                finished=finished)
        # log π_t: every process scores one contiguous slice of the rows (a resumable shard each).
        rank, world = _rank_world()
        slices = np.array_split(np.arange(len(ds)), world)
        shards = [partial / f"ref-{r:05d}-of-{world:05d}.parquet" for r in range(world)]
        if len(slices[rank]) and not shards[rank].is_file():
            model, tokenizer = _load_inference_policy(policy, cfg)
            scored = add_reference_logps(ds.select(slices[rank]), model, tokenizer, batch_size=b["ref_batch_size"],
                                         max_length=tr["max_length"], max_prompt_length=tr["max_prompt_length"])
            save_parquet(scored, shards[rank])
        if rank != 0:
            return None, None, None
        done = [shards[r] for r in range(world) if len(slices[r])]
        for shard in done:
            _wait_until(shard.is_file)
        if done:
            ds = concatenate_datasets([_load_parquet(shard) for shard in done])
        else:  # no rows: nothing to score, same columns
            for column in [c for c in CHAT_COLUMNS if c in ds.column_names]:
                ds = ds.add_column(f"ref_{column}_logps", [])
        ds.to_parquet(str(tmp / "sppo.parquet"))
        counts = {"prompts": len(responses), "rows": len(ds), "dropped_ties": len(responses) - len(ds)
                  if b["pair_mode"] == "best_worst" else 0, "pair_mode": b["pair_mode"],
                  "cut_at_max_new_tokens": sum(not f for fs in (finished or []) for f in fs)}
        return counts, f"{len(ds)} training rows ({b['pair_mode']}) with reference log-probs", "sppo.parquet"

    return run._stage(t, "build", fingerprint, force, work, all_ranks=True)


def train_stage(run: Run, t: int, force: bool = False) -> dict:
    """π_{t+1} = SPPO training of π_t on iteration t's dataset; LoRA adapters merged for the hand-off."""
    from .trainer import train_and_merge

    cfg = run.config
    policy = run.policy_path(t)
    fingerprint = {"train": cfg["train"], "policy": cfg["policy"], "dataset": run._upstream(t, "build"),
                   "start": policy if t == 1 else run._upstream(t - 1, "train")}

    def work(tmp, partial):
        if read_manifest(run.stage_dir(t, "build"))["counts"]["rows"] == 0:
            # Every pair tied (e.g. all K samples identical): no signal, so π_{t+1} = π_t.
            if _rank_world()[0] != 0:
                return None, None, None
            shutil.copytree(policy, tmp / "model", ignore=shutil.ignore_patterns(".complete"))
            _write_json_atomic(tmp / "log_history.json", [])
            return {"metrics": {}, "mode": cfg["policy"]["mode"], "steps": 0}, \
                f"no training rows: π_{t + 1} = π_{t} (every pair tied)", None
        metrics, history = train_and_merge(policy, run.stage_dir(t, "build") / "sppo.parquet", tmp / "model",
                                           checkpoint_dir=partial / "checkpoints", mode=cfg["policy"]["mode"],
                                           dtype=cfg["policy"]["dtype"], seed=cfg["seed"], **cfg["train"])
        if _rank_world()[0] != 0:
            return None, None, None
        _write_json_atomic(tmp / "log_history.json", history)
        summary = (f"π_{t + 1} trained ({cfg['train']['loss_type']}, β={cfg['train']['beta']}, "
                   f"{cfg['policy']['mode']}), loss {metrics.get('train_loss', float('nan')):.4g}")
        return {"metrics": metrics, "mode": cfg["policy"]["mode"], "steps": len(history)}, summary, None

    return run._stage(t, "train", fingerprint, force, work, all_ranks=True)


STAGE_FUNCTIONS = {"generate": generate_stage, "judge": judge_stage, "build": build_stage, "train": train_stage}


def run_iteration(run: Run, t: int, force=(), stages=STAGES) -> dict:
    """Run the given stages of iteration t in order; finished stages are skipped unless forced."""
    return {s: STAGE_FUNCTIONS[s](run, t, force=s in force) for s in stages}


def quiet_datasets() -> None:
    """datasets' per-file progress bars would bury the one bar per stage."""
    import datasets

    datasets.disable_progress_bars()


def run_all(config: dict, output_dir, force=(), iterations=None, log=print) -> Run:
    """Iterations 1..T, each generate → judge → build → train; resumable at any point."""
    quiet_datasets()
    run = Run(config, output_dir, log)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if _rank_world()[0] == 0:  # one writer: every rank renaming the same temporary file races
        _write_json_atomic(run.output_dir / "config.json", config)
    for t in range(1, (iterations or config["iterations"]) + 1):
        run_iteration(run, t, force=force)
    return run
