"""The four stages of iteration t, each a fingerprint (what changes its artifact) and its work.

    generate   iter{t}/generate/responses.parquet   K samples per prompt from π_t        (sharded, resumable)
    judge      iter{t}/judge/judgements.parquet     the judge's K×K win matrix per prompt (sharded, resumable)
    build      iter{t}/build/sppo.parquet           pairs, win rates, log π_t of each response
    train      iter{t}/train/model/                 π_{t+1}: the next iteration's generator and reference

A fingerprint holds exactly what changes the artifact's content: settings, the prompts' texts, the
models by identity (content hash or hub id) with their mode and resolved dtype, and the content hashes
of upstream artifacts (verified against their manifests before use) — not batch sizes, devices,
shard sizes or paths. Generation and judging share one shard mechanism (`run_shards`); shards are
spread over the processes of a launch, and a shard layout, once started, is kept on resume.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import hash_obj, ranks, read_manifest, wait_until, write_json_atomic

__all__ = ["STAGE_SPECS", "STAGE_FUNCTIONS", "check_prompts_fit", "check_responses", "check_judgements", "generate_stage", "judge_stage", "build_stage", "train_stage",
           "iteration_prompts", "make_judge", "run_shards", "device_for"]


@dataclass(frozen=True)
class StageSpec:
    fingerprint: Callable  # (run, t) -> dict
    work: Callable         # (run, t, tmp, partial, **kw) -> (counts, summary); rank 0 writes the artifact in tmp
    all_ranks: bool = True
    check: Callable | None = None  # (run, t) -> None: refuses bad inputs before any folder is made


def device_for(name: str) -> str:
    """"auto": this process's GPU (LOCAL_RANK under torchrun / accelerate launch), else the CPU."""
    if name != "auto":
        return name
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def _resolved_dtype(dtype, device: str) -> str:
    """The dtype a model will actually run in: the configured one, else pick_dtype's choice for the device."""
    if dtype is not None:
        return str(dtype)
    from ..modeling import pick_dtype

    return str(pick_dtype(device_for(device))).replace("torch.", "")


def _without(section: dict, keys) -> dict:
    return {k: v for k, v in section.items() if k not in keys}


# ---------------------------------------------------------------- prompts

def iteration_prompts(config: dict, t: int) -> tuple[list[int], list[str]]:
    """(prompt ids, prompts) of iteration t: its disjoint part of the prompt set, first n_prompts of it."""
    from ..data import iteration_split, load_prompts

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


def check_prompts_fit(run, t: int) -> None:
    """With long_prompts = skip, at least one prompt of iteration t fits generation.max_prompt_tokens in π_1's
    chat template: said in one line before any work (else the stage would sample nothing)."""
    g = run.config["generation"]
    if g["long_prompts"] != "skip" or g["max_prompt_tokens"] is None or ("fits", t) in run.prompt_cache:
        return
    from transformers import AutoTokenizer

    from ..generation import _chat_ids

    _, prompts = _prompts(run, t)
    if run.model_source("policy").kind == "tiny":  # its tokenizer alone, without building the model
        from ..modeling import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(run.base_model("policy"))
    shortest = min(len(_chat_ids(tokenizer, p)) for p in prompts)
    if shortest > g["max_prompt_tokens"]:
        raise ValueError(f"no prompt of iteration {t} fits generation.max_prompt_tokens = {g['max_prompt_tokens']} "
                         f"(the shortest of its {len(prompts)} is {shortest} tokens in the chat template): raise it, "
                         f"or set generation.long_prompts=truncate")
    run.prompt_cache[("fits", t)] = True


def _prompts(run, t: int):
    if t not in run.prompt_cache:
        run.prompt_cache[t] = iteration_prompts(run.config, t)
    return run.prompt_cache[t]


# ---------------------------------------------------------------- shards

def run_shards(partial: Path, n: int, shard_size: int, make, desc: str, log=print):
    """Items 0..n−1 in resumable shards: `make(a, b) -> (dataset, stats)` for each missing shard [a, b).

    Shards are dealt round-robin over the launch's processes; a shard is complete once its stats file
    (written after its parquet) exists. The layout (shard size) of a stage's first attempt is kept when
    it resumes, so a changed batch or shard size never discards finished shards. Rank 0 returns
    (concatenated dataset, summed stats); the other ranks return (None, None).
    """
    from datasets import concatenate_datasets
    from tqdm.auto import tqdm

    from ..generation import save_parquet

    rank, world = ranks()
    layout_file = partial / "layout.json"
    if rank == 0:
        if layout_file.is_file():
            kept = json.loads(layout_file.read_text())
            if kept["shard_size"] != shard_size:
                log(f"{desc}: resuming with the shard size of the finished shards ({kept['shard_size']}, "
                    f"not {shard_size})")
        else:
            write_json_atomic(layout_file, {"shard_size": shard_size, "n": n})
    else:
        wait_until(layout_file.is_file)
    layout = json.loads(layout_file.read_text())
    if layout["n"] != n:
        raise RuntimeError(f"{desc}: {partial} was started for {layout['n']} items, not {n}: delete it")
    size = layout["shard_size"]
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    totals: dict = {}
    from ..console import verbosity

    with tqdm(total=n, desc=desc, unit="prompt", disable=rank != 0 or verbosity() == "quiet") as bar:
        for i, (a, b) in enumerate(bounds):
            shard, stats_file = partial / f"shard-{i:05d}.parquet", partial / f"shard-{i:05d}.json"
            if i % world != rank:  # another process's shard
                if rank == 0:
                    wait_until(stats_file.is_file)
            elif not (shard.is_file() and stats_file.is_file() and _readable_shard(shard)
                      and _readable_json(stats_file)):
                if stats_file.is_file():
                    log(f"{desc}: {shard.name} of an earlier attempt cannot be read: made again")
                ds, stats = make(a, b)
                save_parquet(ds, shard)
                write_json_atomic(stats_file, stats)  # written last: marks the shard complete
            if rank != 0:
                continue
            for key, value in json.loads(stats_file.read_text()).items():  # counts add up, lists join
                totals[key] = totals.get(key, [] if isinstance(value, list) else 0) + value
            bar.update(b - a)
    if rank != 0:
        return None, None
    from datasets import Dataset

    parts = [_load_parquet(partial / f"shard-{i:05d}.parquet",
                           fix=f"delete the folder {partial} and rerun (finished stages are kept)")
             for i in range(len(bounds))]
    return concatenate_datasets(parts), totals


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _load_parquet(path: Path, stage: str | None = None, fix: str | None = None):
    """A stage's parquet artifact; a read error names the file and the fix (by default, redoing its stage)."""
    from ..data import read_parquet

    return read_parquet(path, fix or f"redo its stage with --force {stage}")


def _readable_shard(path: Path) -> bool:
    """Whether a finished shard's parquet opens (its footer is read, not its data)."""
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(str(path))
        return True
    except Exception:
        return False


def check_responses(responses, k: int, name: str) -> None:
    """Every row holds k responses and its own prompt id: what judge and build rely on, said with the file."""
    ids = list(responses["prompt_id"])
    wrong = [i for i, r in enumerate(responses["responses"]) if len(r) != k]
    if wrong:
        raise ValueError(f"{name}: row(s) {wrong[:5]} hold other than k = {k} responses: redo the stage "
                         f"with --force generate")
    from collections import Counter

    repeated = sorted(p for p, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"{name}: prompt id(s) {repeated[:5]} appear more than once: redo the stage with "
                         f"--force generate")


def check_judgements(judged, responses, k: int, name: str) -> None:
    """One K×K matrix of finite probabilities per response row, for the same prompt ids in the same order."""
    import numpy as np

    if list(judged["prompt_id"]) != list(responses["prompt_id"]):
        raise ValueError(f"{name}: its prompt ids are not those of the responses: redo the judge stage "
                         f"with --force judge")
    for row, (pid, m) in enumerate(zip(judged["prompt_id"], judged["matrix"])):
        m = np.asarray(m, dtype=float)
        problem = (f"is {'×'.join(map(str, m.shape))}, not {k}×{k}" if m.shape != (k, k) else
                   "holds NaN or inf" if not np.all(np.isfinite(m)) else
                   "holds values outside [0, 1]" if m.min() < -1e-6 or m.max() > 1 + 1e-6 else None)  # the judge's tolerance
        if problem:
            raise ValueError(f"{name}: the win matrix of row {row} (prompt id {pid}) {problem}: redo the judge "
                             f"stage with --force judge")


# ---------------------------------------------------------------- generate

def _quantized(config: dict) -> bool:
    return config["policy"]["mode"] == "qlora"  # QLoRA samples and scores π_t in 4 bit; full and LoRA alike


def _unset_bf16(section: dict) -> tuple:
    """("bf16",) when a section's bf16 switch is off: a run made before the switch existed keeps its fingerprint."""
    return () if section.get("bf16") else ("bf16",)


def fingerprint_generate(run, t: int) -> dict:
    cfg = run.config
    ids, prompts = _prompts(run, t)
    return {"generation": _without(cfg["generation"], ("batch_size", "shard_size") + _unset_bf16(cfg["generation"])),
            "policy": run.policy_identity(t), "quantized": _quantized(cfg),
            "dtype": _resolved_dtype(cfg["policy"]["dtype"], cfg["policy"]["device"]),
            "seed": cfg["seed"], "prompts": hash_obj([ids, prompts])}


def work_generate(run, t: int, tmp: Path, partial: Path):
    from ..generation import VLLMEngine, generate_responses, generate_responses_vllm

    cfg, g = run.config, run.config["generation"]
    policy = run.policy_path(t)
    ids, prompts = _prompts(run, t)
    opts = dict(k=g["k"], temperature=g["temperature"], top_p=g["top_p"], max_new_tokens=g["max_new_tokens"],
                seed=cfg["seed"], max_prompt_tokens=g["max_prompt_tokens"], long_prompts=g["long_prompts"])
    loaded = {}

    def make(a, b):
        if g["backend"] == "vllm":
            if "engine" not in loaded:  # one engine per stage, not per shard
                loaded["engine"] = VLLMEngine(policy, seed=cfg["seed"])
            return generate_responses_vllm(loaded["engine"], prompts[a:b], prompt_ids=ids[a:b], **opts)
        if "model" not in loaded:
            loaded["model"], loaded["tokenizer"] = _load_inference_policy(policy, cfg)
        return generate_responses(loaded["model"], loaded["tokenizer"], prompts[a:b], prompt_ids=ids[a:b],
                                  batch_size=g["batch_size"], progress=False, bf16=g["bf16"], **opts)

    ds, totals = run_shards(partial, len(ids), g["shard_size"], make, f"iter{t} generate", run.log)
    if ds is None:
        return None, None
    check_responses(ds, g["k"], f"iter{t}/generate")
    ds.to_parquet(str(tmp / "responses.parquet"))
    counts = {**totals, "k": g["k"], "policy": run.policy_identity(t)}
    summary = (f"{totals.get('generated', 0)} prompts × {g['k']} responses "
               f"({totals.get('skipped', 0)} skipped, {totals.get('truncated', 0)} truncated as too long)")
    return counts, summary


def _load_inference_policy(policy: str, cfg: dict):
    """π_t for sampling and reference log-probs, as training will see it at step 0.

    QLoRA trains on the 4-bit base, so π_t is sampled and scored in 4 bit too (its rounding
    would otherwise show up as a log-ratio before any training); other modes use the full
    weights. Weights load straight onto the GPU, never staged in CPU RAM.
    """
    from ..modeling import load_policy

    device = device_for(cfg["policy"]["device"])
    qlora = _quantized(cfg)
    device_map = {"": device} if device.startswith("cuda") or qlora else None
    model, tokenizer = load_policy(policy, mode="qlora" if qlora else "full", dtype=cfg["policy"]["dtype"],
                                   device_map=device_map)
    return (model if device_map else model.to(device)), tokenizer


# ---------------------------------------------------------------- judge

_MODEL_JUDGES = ("pairrm", "reward_model", "committee")


def make_judge(cfg: dict, run=None):
    """The judge a config asks for."""
    from .. import judges

    j = cfg["judge"]
    if j["type"] == "length":
        return judges.LengthJudge(scale=j["length_scale"])
    if j["type"] == "sentiment":
        return judges.SentimentJudge(words_per_point=j["words_per_point"], scale=j["sentiment_scale"])
    if j["type"] == "cyclic_style":
        word = j["quality_keyword"]
        return judges.CyclicStyleJudge(j["markers"], j["style_matrix"],
                                       quality=(lambda y: y.split().count(word)) if word else None,
                                       quality_weight=j["quality_weight"])
    model = run.base_model("judge") if run is not None else j["model"]
    device = device_for(j["device"])
    if j["type"] == "committee":
        return judges.CommitteeJudge(model, batch_size=j["batch_size"], device=device, dtype=j["dtype"] or "float32")
    if j["type"] == "reward_model":
        return judges.RewardModelJudge(model, device=device, batch_size=j["batch_size"], dtype=j["dtype"])
    return judges.PairRMJudge(model, mode=j["mode"], device=device, batch_size=j["batch_size"], dtype=j["dtype"])


def judge_has_model(config: dict) -> bool:
    """Whether the configured judge loads judge.model (PairRM, a reward model, the committee's LM)."""
    return config["judge"]["type"] in _MODEL_JUDGES


def _judge_identity(run) -> str:
    source = run.model_source("judge")
    return source.identity(None if source.kind == "tiny" else run.base_model("judge"))


def fingerprint_judge(run, t: int) -> dict:
    j = run.config["judge"]
    model_based = j["type"] in _MODEL_JUDGES
    return {"judge": _without(j, ("batch_size", "shard_size", "device", "model", "dtype")),
            "judge_model": _judge_identity(run) if model_based else None,
            "judge_dtype": _resolved_dtype(j["dtype"], j["device"]) if model_based else None,
            "template": run.policy_identity(t) if j["template_prompts"] else None,
            "responses": run.upstream(t, "generate")}


def _templated(policy: str, prompts: list[str]) -> list[str]:
    """Each prompt as π_t's chat template renders it up to the assistant's answer (what rank.py shows PairRM)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts]


def work_judge(run, t: int, tmp: Path, partial: Path, judge=None):
    from datasets import Dataset

    cfg, j = run.config, run.config["judge"]
    path = run.stage_dir(t, "generate") / "responses.parquet"
    responses = _load_parquet(path, "generate")
    check_responses(responses, cfg["generation"]["k"], str(path))
    prompts = list(responses["prompt"])
    if j["template_prompts"]:
        prompts = _templated(run.policy_path(t), prompts)
    made = {"judge": judge}

    def make(a, b):
        made["judge"] = made["judge"] or make_judge(cfg, run)
        rows = responses.select(range(a, b))
        mats = made["judge"].win_matrices(prompts[a:b], rows["responses"])
        return Dataset.from_dict({"prompt_id": rows["prompt_id"], "matrix": [m.tolist() for m in mats]}), {}

    ds, _ = run_shards(partial, len(responses), j["shard_size"], make, f"iter{t} judge", run.log)
    if ds is None:
        return None, None
    ds.to_parquet(str(tmp / "judgements.parquet"))
    counts = {"prompts": len(responses), "judge": j["type"], "model": j["model"], "mode": j["mode"]}
    return counts, f"{len(responses)} win matrices ({j['type']}, {j['mode']})"


# ---------------------------------------------------------------- build

def fingerprint_build(run, t: int) -> dict:
    cfg, tr = run.config, run.config["train"]
    return {"build": _without(cfg["build"], ("ref_batch_size",) + _unset_bf16(cfg["build"])),
            "lengths": [tr["max_length"], tr["max_prompt_length"]]
            + ([tr["truncation_mode"]] if tr.get("truncation_mode", "keep_end") != "keep_end" else []),
            "policy": run.policy_identity(t), "quantized": _quantized(cfg),
            "dtype": _resolved_dtype(cfg["policy"]["dtype"], cfg["policy"]["device"]),
            "responses": run.upstream(t, "generate"), "judgements": run.upstream(t, "judge")}


def work_build(run, t: int, tmp: Path, partial: Path):
    """Pairs and win rates (official columns) plus log π_t of each trained response."""
    import numpy as np
    from datasets import concatenate_datasets

    from ..data import CHAT_COLUMNS, add_reference_logps, build_sppo_dataset, check_training_values
    from ..generation import save_parquet

    cfg, b, tr = run.config, run.config["build"], run.config["train"]
    policy = run.policy_path(t)
    k = cfg["generation"]["k"]
    responses_path = run.stage_dir(t, "generate") / "responses.parquet"
    judged_path = run.stage_dir(t, "judge") / "judgements.parquet"
    responses = _load_parquet(responses_path, "generate")
    check_responses(responses, k, str(responses_path))
    judged = _load_parquet(judged_path, "judge")
    check_judgements(judged, responses, k, str(judged_path))
    matrices = [np.asarray(m, dtype=float) for m in judged["matrix"]]
    finished = responses["finished"] if "finished" in responses.column_names else None
    ds = build_sppo_dataset(responses["prompt"], responses["responses"], matrices, pair_mode=b["pair_mode"],
                            finished=finished, prompt_ids=responses["prompt_id"])
    # log π_t: every process scores one contiguous slice of the rows (a resumable shard each).
    rank, world = ranks()
    slices = np.array_split(np.arange(len(ds)), world)
    shards = [partial / f"ref-{r:05d}-of-{world:05d}.parquet" for r in range(world)]
    if len(slices[rank]) and not (shards[rank].is_file() and _readable_shard(shards[rank])):
        model, tokenizer = _load_inference_policy(policy, cfg)
        scored = add_reference_logps(ds.select(slices[rank]), model, tokenizer, batch_size=b["ref_batch_size"],
                                     max_length=tr["max_length"], max_prompt_length=tr["max_prompt_length"],
                                     truncation_mode=tr.get("truncation_mode", "keep_end"), bf16=b["bf16"])
        save_parquet(scored, shards[rank])
    if rank != 0:
        return None, None
    done = [shards[r] for r in range(world) if len(slices[r])]
    for shard in done:
        wait_until(shard.is_file)
    if done:
        ds = concatenate_datasets([_load_parquet(shard, fix=f"delete the folder {partial} and rerun") for shard in done])
    else:  # no rows: nothing to score, same columns
        for column in [c for c in CHAT_COLUMNS if c in ds.column_names]:
            ds = ds.add_column(f"ref_{column}_logps", [])
    check_training_values(ds, f"iter{t}/build/sppo.parquet")  # nothing non-finite or out of range is published
    ds.to_parquet(str(tmp / "sppo.parquet"))
    counts = {"prompts": len(responses), "rows": len(ds), "dropped_ties": len(responses) - len(ds)
              if b["pair_mode"] == "best_worst" else 0, "pair_mode": b["pair_mode"],
              "cut_at_max_new_tokens": sum(not f for fs in (finished or []) for f in fs)}
    return counts, f"{len(ds)} training rows ({b['pair_mode']}) with reference log-probs"


# ---------------------------------------------------------------- train

# Train settings that do not change the trained model: how often to log and checkpoint, where to report.
_TRAIN_BOOKKEEPING = ("logging_steps", "save_steps", "report_to", "activation_checkpointing", "gradient_checkpointing",
                      "logging_dir",
                      "run_name", "dataloader_num_workers", "save_total_limit", "disable_tqdm", "logging_first_step",
                      "logging_strategy", "dataloader_pin_memory", "dataloader_persistent_workers")


def fingerprint_train(run, t: int) -> dict:
    cfg = run.config
    return {"train": _without(cfg["train"], _TRAIN_BOOKKEEPING), "mode": cfg["policy"]["mode"],
            "dtype": _resolved_dtype(cfg["policy"]["dtype"], cfg["policy"]["device"]), "seed": cfg["seed"],
            "dataset": run.upstream(t, "build"), "start": run.policy_identity(t)}


def work_train(run, t: int, tmp: Path, partial: Path):
    """π_{t+1} = SPPO training of π_t on iteration t's dataset; LoRA adapters merged for the hand-off."""
    from ..modeling import check_finite_weights, resolve_model_dir, weight_change
    from ..trainer import train_and_merge

    cfg = run.config
    policy = run.policy_path(t)
    rank = ranks()[0]
    if read_manifest(run.stage_dir(t, "build"))["counts"]["rows"] == 0:
        # Every pair tied (e.g. all K samples identical): no signal, so π_{t+1} = π_t.
        if rank != 0:
            return None, None
        shutil.copytree(resolve_model_dir(policy), tmp / "model", ignore=shutil.ignore_patterns(".*"))
        write_json_atomic(tmp / "log_history.json", [])
        return {"metrics": {}, "mode": cfg["policy"]["mode"], "steps": 0}, \
            f"no training rows: π_{t + 1} = π_{t} (every pair tied)"
    metrics, history = train_and_merge(policy, run.stage_dir(t, "build") / "sppo.parquet", tmp / "model",
                                       checkpoint_dir=partial / "checkpoints", mode=cfg["policy"]["mode"],
                                       dtype=cfg["policy"]["dtype"], seed=cfg["seed"], **cfg["train"])
    if rank != 0:
        return None, None
    check_finite_weights(tmp / "model")  # a model with non-finite weights is never published
    try:
        moved = weight_change(resolve_model_dir(policy), tmp / "model")
    except FileNotFoundError:  # π_t saved without safetensors (pytorch_model.bin): the movement is not measured
        moved = {"relative_l2": None, "max_abs": None, "changed_tensors": None, "tensors": 0}
    if moved["tensors"] and moved["changed_tensors"] == 0:
        raise ValueError(f"iter{t}/train: π_{t + 1} is bit-identical to π_{t} after {metrics.get('global_step')} "
                         f"step(s), so it is not published: raise train.learning_rate or the number of steps "
                         f"(num_train_epochs, a smaller per_device_train_batch_size)")
    write_json_atomic(tmp / "log_history.json", history)
    summary = (f"π_{t + 1} trained ({cfg['train']['loss_type']}, β={cfg['train']['beta']}, "
               f"{cfg['policy']['mode']}), {metrics.get('global_step')} steps, loss "
               f"{metrics.get('train_loss', float('nan')):.4g}, weights moved ‖Δθ‖/‖θ‖ = "
               + (f"{moved['relative_l2']:.2e}" if moved["tensors"] else "not measured (no shared safetensors)"))
    return {"metrics": metrics, "mode": cfg["policy"]["mode"], "steps": metrics.get("global_step", len(history)),
            "weight_change": moved}, summary


STAGE_SPECS = {
    "generate": StageSpec(fingerprint_generate, work_generate, check=check_prompts_fit),
    "judge": StageSpec(fingerprint_judge, work_judge),
    "build": StageSpec(fingerprint_build, work_build),
    "train": StageSpec(fingerprint_train, work_train),
}


def generate_stage(run, t: int, force: bool = False) -> dict:
    """K samples per prompt from π_t, one resumable shard at a time."""
    return run.run_stage(t, "generate", force)


def judge_stage(run, t: int, force: bool = False, judge=None) -> dict:
    """The judge's K×K win matrix for every prompt, one resumable shard at a time (`judge`: a Judge to use)."""
    return run.run_stage(t, "judge", force, **({"judge": judge} if judge is not None else {}))


def build_stage(run, t: int, force: bool = False) -> dict:
    """Pairs and win rates (official columns) plus log π_t of each trained response."""
    return run.run_stage(t, "build", force)


def train_stage(run, t: int, force: bool = False) -> dict:
    """π_{t+1} = SPPO training of π_t on iteration t's dataset; LoRA adapters merged for the hand-off."""
    return run.run_stage(t, "train", force)


STAGE_FUNCTIONS = {"generate": generate_stage, "judge": judge_stage, "build": build_stage, "train": train_stage}
