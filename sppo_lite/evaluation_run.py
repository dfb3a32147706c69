"""A finished SPPO run, read back and evaluated: what each iteration cost, how it trained, whether it won.

    load_run              the loop.Run of an output directory (its config.json)
    finished_iterations   the t whose train stage has finished (π_{t+1} exists)
    iteration_models      {0: π_1 (the base model), 1: π_2, ..., T: π_{T+1}}: model per finished iteration
    stage_table           wall time (manifest elapsed_s) and peak GPU memory (when recorded) per stage
    train_histories       each iteration's Trainer log history (loss_scaled, logratio/*, target/*, ...)
    win_prob_stats        the judge's win rates of the trained pairs, per iteration (build stage)
    heldout_prompts       evaluation prompts that no iteration trained on
    generate_for_models   n seeded responses per prompt from each model, cached as parquet (resumable)
    generate_datasets_for_models   the same, each model's whole Dataset (with `finished`: not cut at the cap)
    evaluate_iterations   every model vs the base and vs the previous iteration: WR, LC WR, bootstrap CIs
    best_of_n_eval        best of n samples by the judge (evaluate.best_of_n) vs the base model
    achieved_vs_target    per trained response: achieved log-ratio log π_{t+1} − log π_t vs its SPPO target
    model_label           a row's name after the model that ran ("SPPO iter 2 (SmolLM2-135M-Instruct)")
    paper_table_text      the paper's AlpacaEval 2.0 table, on its own (never beside our rows)
    paper_comparison_text the same table with its iterative DPO / IPO and Snorkel rows, WR − LC and lengths
    pi_name, in_notebook_notation   the notebooks' names of the models: π₀ the base, π_t after iteration t

The model of "iteration t" is π_{t+1}, what iteration t's train stage produced; iteration 0 is the
base model π_1. (Notebooks 01–05 call the base π₀ and iteration t's model π_t: `pi_name` and
`in_notebook_notation` turn the loop's names into theirs.) Responses are sampled with per-(seed, prompt, sample) generators, so every model
answers a prompt with the same random numbers (common random numbers: less noise between models),
sample 0 of a best-of-n draw is the single-sample response, and a rerun reproduces the same texts.

Evaluation judges see the raw prompt (what PairRM was trained on), not the chat-templated prompt the
training judge saw. When the judge that trained the policy also evaluates it, a win partly measures
how well the policy learnt that judge's taste: the paper evaluates with GPT-4-Turbo instead.
"""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import evaluate, loop
from .resources import PROJECT_ROOT

__all__ = [
    "load_run", "finished_iterations", "iteration_models", "stage_table", "train_histories",
    "win_prob_stats", "heldout_prompts", "generate_for_models", "generate_datasets_for_models", "evaluate_iterations",
    "best_of_n_eval", "make_eval_judge", "paper_label", "model_name", "model_label", "paper_table_text",
    "results_text", "paper_comparison_text", "achieved_vs_target", "jsonable", "pi_name", "in_notebook_notation",
]


# ---------------------------------------------------------------- reading a run

def load_run(run_dir, log: Callable = print) -> loop.Run:
    """The run in run_dir with the config it was made with (run_dir/config.json)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no SPPO run (no config.json): run notebook 04 or "
                                f"`sppo-lite iterate --output-dir {run_dir.name}` first")
    return loop.Run(_with_prompt_file_found(json.loads(path.read_text()), run_dir), run_dir, log)


def _with_prompt_file_found(config: dict, run_dir: Path) -> dict:
    """config with a relative prompt file that the working directory cannot see found again.

    config.json keeps prompts.source as written from the folder the run was made in (no machine paths),
    so a notebook in notebooks/ reading a run made from the repository root would miss
    `data/prompts.jsonl`. It is looked for from each folder above run_dir, then from the project root;
    the stages' fingerprints hold the prompts' texts, not the path, so nothing downstream changes.
    """
    source = config.get("prompts", {}).get("source")
    if (not isinstance(source, str) or not source.lower().endswith((".jsonl", ".json", ".parquet"))
            or Path(source).is_absolute() or Path(source).is_file()):
        return config  # a hub dataset id, an absolute path, or already found
    places = [*Path(run_dir).resolve().parents, PROJECT_ROOT]
    for place in places:
        if (place / source).is_file():
            return {**config, "prompts": {**config["prompts"], "source": str(place / source)}}
    raise FileNotFoundError(f"{run_dir}/config.json reads its prompts from {source}, which is not there from "
                            f"the working directory, from any folder above {run_dir} or from the project root: "
                            f"run from the folder the run was made in, or copy the prompt file there")


def finished_iterations(run_dir) -> list[int]:
    """Iterations t = 1, 2, ... whose train stage finished, in order, stopping at the first gap."""
    done, t = [], 1
    while loop.read_manifest(Path(run_dir) / f"iter{t}" / "train") is not None:
        done.append(t)
        t += 1
    return done


def iteration_models(run: loop.Run) -> dict[int, str]:
    """{0: base model id or path, t: iter{t}/train/model for each finished iteration t}."""
    models = {0: run.policy_path(1)}
    for t in finished_iterations(run.output_dir):
        models[t] = str(run.stage_dir(t, "train") / "model")
    return models


def _resources(run_dir) -> dict:
    path = Path(run_dir) / "resources.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_table(run_dir) -> list[dict]:
    """One row per finished (iteration, stage): elapsed_s from the manifest, the manifest's summary,
    and peak_gpu_gib / wall_s when sppo_lite.reproduce.run_pipeline recorded them (CUDA, in-process)."""
    run_dir, rows = Path(run_dir), []
    resources = _resources(run_dir)
    t = 1
    while (run_dir / f"iter{t}").is_dir():
        for stage in loop.STAGES:
            manifest = loop.read_manifest(run_dir / f"iter{t}" / stage)
            if manifest is None:
                continue
            extra = resources.get(f"iter{t}", {}).get(stage, {})
            rows.append({"iteration": t, "stage": stage, "elapsed_s": manifest["elapsed_s"],
                         "summary": manifest["summary"], "world_size": manifest.get("world_size", 1),
                         "peak_gpu_gib": extra.get("peak_gpu_gib"), "finished": manifest["finished"]})
        t += 1
    return rows


def train_histories(run_dir) -> dict[int, list[dict]]:
    """{t: the Trainer's log entries of iteration t that carry a training loss} (one per logging step)."""
    out = {}
    for t in finished_iterations(run_dir):
        path = Path(run_dir) / f"iter{t}" / "train" / "log_history.json"
        if path.is_file():
            out[t] = [e for e in json.loads(path.read_text()) if "loss" in e]
    return out


def win_prob_stats(run_dir) -> dict[int, dict[str, np.ndarray]]:
    """{t: {"chosen": P̂(y_w ≻ π_t), "rejected": P̂(y_l ≻ π_t), "pair": P(y_w ≻ y_l)}} per trained pair,
    from iteration t's build stage (the official chosen_probs_win / _lose / chosen_probs columns)."""
    from datasets import Dataset

    out, t = {}, 1
    while loop.read_manifest(Path(run_dir) / f"iter{t}" / "build") is not None:
        ds = Dataset.from_parquet(str(Path(run_dir) / f"iter{t}" / "build" / "sppo.parquet"))
        if "chosen_probs_win" in ds.column_names:
            out[t] = {"chosen": np.asarray(ds["chosen_probs_win"]), "rejected": np.asarray(ds["chosen_probs_lose"]),
                      "pair": np.asarray(ds["chosen_probs"])}
        t += 1
    return out


def paper_label(t: int, best_of: int | None = None) -> str:
    """The row name evaluate.PAPER_ALPACAEVAL uses for iteration t (0: the base model): the paper's rows only."""
    label = "Mistral-7B-Instruct-v0.2" if t == 0 else f"SPPO Iter{t}"
    return f"{label} (best-of-{best_of})" if best_of else label


def model_name(model: str) -> str:
    """A readable name for a config's policy.model: a named model's label, a Hub id's last part, a folder's name."""
    from .model_source import display_name

    return display_name(model)


def model_label(run_or_model, t: int, best_of: int | None = None) -> str:
    """The row name of iteration t's model, after the model that ran: "SmolLM2-135M-Instruct (base)" for t = 0,
    "SPPO iter 2 (SmolLM2-135M-Instruct)" for t = 2 ("DPO iter 2 (…)" for a run with loss_type dpo), "... best-of-16"
    with best_of."""
    is_run = isinstance(run_or_model, loop.Run)
    model = run_or_model.config["policy"]["model"] if is_run else str(run_or_model)
    loss = run_or_model.config["train"]["loss_type"] if is_run else "sppo"
    method = "SPPO" if str(loss).startswith("sppo") else str(loss).upper()  # a DPO / IPO arm is named as such
    name = model_name(model)
    label = f"{name} (base)" if t == 0 else f"{method} iter {t} ({name})"
    return f"{label}, best-of-{best_of}" if best_of else label


def paper_table_text() -> str:
    """The paper's AlpacaEval 2.0 table (Mistral-7B-Instruct-v0.2 and SPPO, GPT-4-Turbo judge and baseline)."""
    rows = [("model (paper)", "LC WR %", "WR %")] + [(name, f"{r['lc_win_rate']:.2f}", f"{r['win_rate']:.2f}")
                                                   for name, r in evaluate.PAPER_ALPACAEVAL.items()]
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)


def paper_comparison_text() -> str:
    """The paper's Table 1 with its baselines: base, Snorkel, iterative DPO, IPO and SPPO, each row's LC WR, WR,
    WR − LC (positive: part of the raw win is length) and average length in characters; GPT-4-Turbo judge and baseline."""
    table = {**evaluate.PAPER_ALPACAEVAL, **evaluate.PAPER_ALPACAEVAL_BASELINES}
    order = ["Mistral-7B-Instruct-v0.2", "Snorkel (Mistral-PairRM-DPO)", *(f"{m} Iter{t}" for m in ("DPO", "IPO", "SPPO")
                                                                         for t in (1, 2, 3))]
    rows = [("model (paper, Mistral-7B)", "LC WR %", "WR %", "WR − LC", "avg chars")]
    rows += [(name, f"{table[name]['lc_win_rate']:.2f}", f"{table[name]['win_rate']:.2f}",
              f"{table[name]['win_rate'] - table[name]['lc_win_rate']:+.2f}", str(evaluate.PAPER_AVG_LENGTH[name]))
             for name in order]
    widths = [max(len(row[k]) for row in rows) for k in range(5)]
    return "\n".join("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def results_text(rows: Mapping[str, Mapping]) -> str:
    """Our rows (label → evaluate_against result) as text: WR and LC WR with their 95 % CIs, mean words."""
    def cell(r, key):
        return f"{r[key]:.1f} [{r[key + '_ci'][0]:.1f}, {r[key + '_ci'][1]:.1f}]"

    lines = [("model", "WR % vs base [95 % CI]", "LC WR % [95 % CI]", "words")]
    lines += [(label, cell(r, "win_rate"), cell(r, "lc_win_rate"), f"{r['mean_words_model']:.1f}")
              for label, r in rows.items()]
    widths = [max(len(line[k]) for line in lines) for k in range(4)]
    return "\n".join("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def achieved_vs_target(run: loop.Run, t: int, batch_size: int = 8) -> dict:
    """How far iteration t's training moved each trained response toward its SPPO target.

    For every response of iteration t's pairs: the target (P̂(y ≻ π_t) − ½)/β and the achieved
    Δ = log π_{t+1}(y|x) − log π_t(y|x) (summed over the response's tokens; log π_t from the build stage,
    log π_{t+1} computed here with the trained model). Returns {"target", "achieved" (arrays, chosen then
    rejected), "slope" (least squares of achieved on target), "correlation"}.
    """
    from datasets import Dataset

    from .data import add_reference_logps
    from .modeling import load_policy

    cfg = run.config
    ds = Dataset.from_parquet(str(run.stage_dir(t, "build") / "sppo.parquet"))
    beta = cfg["train"]["beta"]
    model, tokenizer = load_policy(str(run.stage_dir(t, "train") / "model"), mode="full", dtype=cfg["policy"]["dtype"])
    scored = add_reference_logps(ds.remove_columns(["ref_chosen_logps", "ref_rejected_logps"]), model, tokenizer,
                                 batch_size=batch_size, max_length=cfg["train"]["max_length"],
                                 max_prompt_length=cfg["train"]["max_prompt_length"])
    del model
    gc.collect()
    target = np.concatenate([(np.asarray(ds["chosen_probs_win"]) - 0.5) / beta,
                             (np.asarray(ds["chosen_probs_lose"]) - 0.5) / beta])
    achieved = np.concatenate([np.asarray(scored["ref_chosen_logps"]) - np.asarray(ds["ref_chosen_logps"]),
                               np.asarray(scored["ref_rejected_logps"]) - np.asarray(ds["ref_rejected_logps"])])
    slope = float(np.polyfit(target, achieved, 1)[0]) if np.ptp(target) > 0 else float("nan")
    corr = float(np.corrcoef(target, achieved)[0, 1]) if np.ptp(target) > 0 and np.ptp(achieved) > 0 else float("nan")
    return {"target": target, "achieved": achieved, "slope": slope, "correlation": corr}


# ---------------------------------------------------------------- prompts

def heldout_prompts(config: dict, source=None, n: int | None = None, split: str = "train",
                    column: str | None = None) -> list[str]:
    """Prompts of `source` (default: the run's own prompt source) that no iteration 1..T trained on.

    Training prompts are recomputed from the config exactly as the loop picks them
    (loop.iteration_prompts) and removed by text, so another file that shares prompts is safe too.
    Returns the first n of the rest (all when n is None).
    """
    from .data import load_prompts

    p = config["prompts"]
    trained = set()
    for t in range(1, config["iterations"] + 1):
        trained.update(loop.iteration_prompts(config, t)[1])
    if source is None:
        source, split, column = p["source"], p["split"], p["column"]
    kept = [x for x in load_prompts(source, split=split, prompt_column=column) if x not in trained]
    if not kept:
        raise ValueError(f"every prompt of {source} trains some iteration, so none is held out: pass another "
                         f"evaluation prompt file (e.g. data/prompts.jsonl) or set prompts.n_prompts lower")
    return kept if n is None else kept[:n]


# ---------------------------------------------------------------- generation

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _model_fingerprint(run: loop.Run, t: int, path: str) -> str:
    """What identifies model t: the base model's name (and seed, for "tiny"), or its train stage's config hash."""
    if t == 0:
        return f"{run.config['policy']['model']}@{run.config['seed']}"
    return loop.read_manifest(run.stage_dir(t, "train"))["config_hash"]


def generate_for_models(run: loop.Run, prompts: Sequence[str], out_dir, iterations: Sequence[int] | None = None,
                        n: int = 1, temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 512,
                        batch_size: int = 8, seed: int = 0, max_prompt_tokens: int | None = None,
                        device: str = "auto", bf16: bool | None = None, log: Callable = print) -> dict[int, list[list[str]]]:
    """{t: n responses per prompt from model t} for t in `iterations` (default: base and every finished one).

    Each model's responses are written to out_dir/responses/iter{t}-n{n}-<hash>.parquet (atomically)
    and read back on a rerun; the hash covers the model, the prompts and the sampling settings.
    Prompts that do not fit max_prompt_tokens are truncated, so every model answers every prompt.
    bf16: sample under bf16 autocast; None: as the run's generation.bf16.
    """
    data = generate_datasets_for_models(run, prompts, out_dir, iterations, n=n, temperature=temperature, top_p=top_p,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                        max_prompt_tokens=max_prompt_tokens, device=device, bf16=bf16, log=log)
    return {t: [list(r) for r in ds["responses"]] for t, ds in data.items()}


def generate_datasets_for_models(run: loop.Run, prompts: Sequence[str], out_dir, iterations: Sequence[int] | None = None,
                                 n: int = 1, temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 512,
                                 batch_size: int = 8, seed: int = 0, max_prompt_tokens: int | None = None,
                                 device: str = "auto", bf16: bool | None = None, log: Callable = print) -> dict:
    """generate_for_models, each model's whole Dataset: prompt, responses, finished (False: cut at max_new_tokens)."""
    import torch

    from datasets import Dataset

    from .generation import generate_responses, save_parquet
    from .modeling import load_policy

    prompts = list(prompts)
    models = iteration_models(run)
    iterations = sorted(models) if iterations is None else list(iterations)
    missing = [t for t in iterations if t not in models]
    if missing:
        raise ValueError(f"iteration(s) {missing} of {run.output_dir} have not finished training: "
                         f"finished are {sorted(models)[1:]}")
    settings = dict(k=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                    max_prompt_tokens=max_prompt_tokens, long_prompts="truncate")
    bf16 = bool(run.config["generation"].get("bf16", False)) if bf16 is None else bool(bf16)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for t in iterations:
        key = _digest({"model": _model_fingerprint(run, t, models[t]), "prompts": prompts, **settings,
                       **({"bf16": True} if bf16 else {})})  # an fp32 answer keeps the key it always had
        path = Path(out_dir) / "responses" / f"iter{t}-n{n}-{key}.parquet"
        if path.is_file():
            ds = Dataset.from_parquet(str(path))
            log(f"{model_label(run, t)}: {len(ds)} × {n} responses read back from the cache")
        else:
            model, tokenizer = load_policy(models[t], mode="full", dtype=run.config["policy"]["dtype"])
            model.to(device)
            ds, _ = generate_responses(model, tokenizer, prompts, batch_size=batch_size, progress=False, bf16=bf16,
                                       **settings)
            save_parquet(ds, path)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log(f"{model_label(run, t)}: {len(ds)} prompts × {n} responses generated")
        out[t] = ds
    return out


# ---------------------------------------------------------------- judging

def make_eval_judge(run: loop.Run, overrides: Sequence[str] = ()):
    """The run's own judge (its config's judge section), with "judge.key=value" overrides applied.

    llm-blender prints and warns while it loads a ranker (no fuser, config fields left empty); that
    chatter is dropped here. Errors still raise.
    """
    import contextlib
    import io
    import logging
    import warnings

    config = loop.apply_overrides(run.config, list(overrides)) if overrides else run.config
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return loop.make_judge(config, run)
    finally:
        logging.disable(logging.NOTSET)


def evaluate_iterations(run: loop.Run, prompts: Sequence[str], judge, out_dir, n_boot: int = 2000,
                        alpha: float = 0.05, seed: int = 0, log: Callable = print, **generation) -> dict:
    """Every finished model against the base model and against the previous iteration's model.

    Returns {"iterations": [0, 1, ..., T], "responses": {t: one response per prompt},
    "vs_base": {t: evaluate_against(model t, base)} for t = 0..T (t = 0 is the base against itself,
    50 by construction), "vs_previous": {t: evaluate_against(model t, model t−1)} for t = 1..T
    (t = 1 is the same comparison as vs_base[1]), "length_drift": evaluate.length_drift of the
    responses' characters per t}. Generation settings (n excluded) go to generate_for_models.
    """
    if "n" in generation:
        raise ValueError("evaluate_iterations compares one response per prompt: use best_of_n_eval for n > 1")
    prompts = list(prompts)
    samples = generate_for_models(run, prompts, out_dir, n=1, seed=seed, log=log, **generation)
    responses = {t: [r[0] for r in rs] for t, rs in samples.items()}
    iterations = sorted(responses)
    boot = dict(n_boot=n_boot, alpha=alpha, seed=seed)
    vs_base = {t: evaluate.evaluate_against(judge, prompts, responses[t], responses[0], **boot) for t in iterations}
    vs_previous = {t: vs_base[1] if t == 1 else
                   evaluate.evaluate_against(judge, prompts, responses[t], responses[t - 1], **boot)
                   for t in iterations[1:]}
    drift = evaluate.length_drift([[len(r) for r in responses[t]] for t in iterations])
    return {"iterations": iterations, "prompts": prompts, "responses": responses, "vs_base": vs_base,
            "vs_previous": vs_previous, "length_drift": drift}


def best_of_n_eval(run: loop.Run, prompts: Sequence[str], judge, out_dir, n: int, iteration: int | None = None,
                   baseline: Sequence[str] | None = None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                   log: Callable = print, **generation) -> dict:
    """Model `iteration` (default: the last finished) answers with the judge's pick of n samples.

    The pick is evaluate.best_of_n (highest row mean of the judge's n×n matrix); it is judged
    against `baseline` (default: the base model's single sample, as in evaluate_iterations) and so is
    sample 0 alone, the single-sample answer, for comparison. Returns {"iteration", "n",
    "best": evaluate_against result, "single": evaluate_against result, "responses": the picks}.
    """
    if n < 2:
        raise ValueError(f"best-of-n needs n >= 2 samples per prompt, got {n}")
    prompts = list(prompts)
    iteration = finished_iterations(run.output_dir)[-1] if iteration is None else iteration
    candidates = generate_for_models(run, prompts, out_dir, iterations=[iteration], n=n, seed=seed, log=log,
                                     **generation)[iteration]
    if baseline is None:
        baseline = [r[0] for r in generate_for_models(run, prompts, out_dir, iterations=[0], n=1, seed=seed,
                                                      log=log, **generation)[0]]
    picks = evaluate.best_of_n(judge, prompts, candidates)
    boot = dict(n_boot=n_boot, alpha=alpha, seed=seed)
    return {"iteration": iteration, "n": n, "responses": picks,
            "best": evaluate.evaluate_against(judge, prompts, picks, list(baseline), **boot),
            "single": evaluate.evaluate_against(judge, prompts, [c[0] for c in candidates], list(baseline), **boot)}


# ---------------------------------------------------------------- summaries

_HEADLINE = ("n_prompts", "win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci", "length_coef",
             "mean_chars_model", "mean_chars_baseline")


def jsonable(result: Mapping) -> dict:
    """An evaluate_against result's headline numbers as plain floats and lists (no per-prompt arrays)."""
    return {k: (list(map(float, result[k])) if isinstance(result[k], (tuple, list)) else
                result[k] if isinstance(result[k], int) else float(result[k]))
            for k in _HEADLINE if k in result}


# ---------------------------------------------------------------- the notebooks' names of the models

_SUBSCRIPT_ZERO = "π₀"


def pi_name(t: int) -> str:
    """The notebooks' name of the model after t SPPO iterations: "π₀" for the base (t = 0), "π_t" after iteration t."""
    if t < 0:
        raise ValueError(f"no model before the base: t = {t}")
    return _SUBSCRIPT_ZERO if t == 0 else f"π_{t}"


def in_notebook_notation(text: str) -> str:
    """A line of the loop (which calls the base π_1 and iteration t's model π_{t+1}) in the notebooks' numbering:
    "iter1/train: π_2 trained" → "iter1/train: π_1 trained", "π_2 = π_1" → "π_1 = π₀". Other text is unchanged."""
    import re

    return re.sub(r"π_(\d+)", lambda m: pi_name(int(m.group(1)) - 1), str(text))
