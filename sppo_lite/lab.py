"""The tiny-LM self-play lab: a language model whose answers come in styles that play rock-paper-scissors.

A tiny Mistral is taught (SFT) to answer every prompt in one of three styles, each opened by a marker
("Sure!", "Well,", "Briefly:"), in a skewed mix π_0. A CyclicStyleJudge prefers the styles in a cycle
(game.weighted_cycle: no reward model can represent it) and, with a small weight, answers that say
"good". SPPO iterations through the real pipeline (sppo_lite.loop) should then move the style mix like
multiplicative weights: π_{t+1}(s) ∝ π_t(s)·exp(η·P(s ≻ π_t)), η = 1/β.
"""
from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path

import numpy as np

from . import game

__all__ = ["MARKERS", "BODIES", "style_response", "style_sft_chats", "sft", "build_lab_policy", "style_mix",
           "lab_config", "style_payoff", "mix_trajectory", "run_arm", "samples", "win_rate_vs", "logratio_moves",
           "fit_effective_eta", "style_game_with_broken", "with_broken", "train_counts", "quiet_into", "style_lows",
           "sft_seconds", "METHODS", "sweep_arms", "arm_exploitability"]

MARKERS = ("Sure!", "Well,", "Briefly:")
METHODS = ("sppo", "dpo", "ipo")
# Two bodies per style: the first says "good" (the judge's within-style quality), the second does not.
BODIES = {
    "Sure!": ("here is a good answer for you.", "here is an answer for you."),
    "Well,": ("I think a good answer is this one.", "I think an answer is this one."),
    "Briefly:": ("good answer.", "an answer."),
}


def style_response(style: int, good: bool) -> str:
    """The response text of a style (0, 1, 2) with or without the quality word."""
    marker = MARKERS[style]
    return f"{marker} {BODIES[marker][0 if good else 1]}"


def style_sft_chats(prompts, mix, per_prompt: int = 8, good_fraction: float = 0.5, seed: int = 0) -> list[list[dict]]:
    """SFT chats: for each prompt, `per_prompt` answers whose styles follow `mix` exactly in expectation."""
    from .data import chat_messages

    mix = game.validate_policy(mix, len(MARKERS))
    rng = random.Random(seed)
    chats = []
    for prompt in prompts:
        for _ in range(per_prompt):
            style = rng.choices(range(len(MARKERS)), weights=mix)[0]
            answer = style_response(style, rng.random() < good_fraction)
            chats.append(chat_messages(prompt, answer))
    return chats


def sft(model, tokenizer, chats, output_dir, max_length: int = 256, max_prompt_length: int = 192,
        **training_args) -> None:
    """Supervised fine-tuning of `model` in place on chat-message lists, loss on the answer tokens only.

    transformers Trainer with DataCollatorForSeq2Seq (labels −100 on the prompt and on padding; the
    tokenizer needs a pad token); chats encoded by data.encode_chat. `training_args` go to
    TrainingArguments (num_train_epochs or max_steps, learning_rate, per_device_train_batch_size, ...)
    on top of: CPU, no checkpoints, no reports. Nothing is left in `output_dir`.
    """
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from .data import encode_chat

    def encode(chat):
        enc = encode_chat(tokenizer, chat, max_length=max_length, max_prompt_length=max_prompt_length)
        labels = list(enc["input_ids"])
        labels[: enc["prompt_length"]] = [-100] * enc["prompt_length"]
        return {"input_ids": enc["input_ids"], "attention_mask": [1] * len(labels), "labels": labels}

    args = TrainingArguments(**{"output_dir": str(output_dir), "report_to": [], "save_strategy": "no",
                                "use_cpu": True, "disable_tqdm": True, **training_args})
    Trainer(model=model, args=args, train_dataset=Dataset.from_list([encode(c) for c in chats]),
            data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)).train()
    shutil.rmtree(args.output_dir, ignore_errors=True)  # nothing is saved there (save_strategy "no")


def build_lab_policy(path, prompts, mix=(0.6, 0.3, 0.1), per_prompt: int = 8, epochs: int = 8,
                     learning_rate: float = 5e-3, batch_size: int = 32, seed: int = 0, log_file=None) -> str:
    """Tiny Mistral + tokenizer, SFT on style_sft_chats (loss on answer tokens only), saved to `path`.

    Does nothing if `path` already holds a finished policy. With log_file, the Trainer's logs and the
    libraries' messages go there (quiet_into) instead of the notebook.
    """
    with quiet_into(log_file):
        return _build_lab_policy(path, prompts, mix, per_prompt, epochs, learning_rate, batch_size, seed)


@contextlib.contextmanager
def quiet_into(log_file):
    """Send stdout and stderr (Trainer logs, progress bars, library warnings) to log_file, appended.

    None leaves them where they are. Nothing is dropped: the file keeps every line.
    """
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _build_lab_policy(path, prompts, mix, per_prompt, epochs, learning_rate, batch_size, seed) -> str:
    from .modeling import build_tiny_model, build_tiny_tokenizer

    import json
    import time

    path = Path(path)
    if (path / ".complete").exists():
        return str(path)
    t0 = time.time()
    chats = style_sft_chats(prompts, mix, per_prompt=per_prompt, seed=seed)
    tokenizer = build_tiny_tokenizer([m["content"] for chat in chats[:: per_prompt] for m in chat]
                                     + [style_response(s, g) for s in range(3) for g in (True, False)])
    tokenizer.pad_token = tokenizer.eos_token
    model = build_tiny_model(tokenizer, seed=seed)
    sft(model, tokenizer, chats, path.with_name(path.name + ".sft"), max_length=256, max_prompt_length=192,
        num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine", warmup_steps=0.1, seed=seed, logging_steps=10)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    (path / ".complete").write_text(json.dumps({"elapsed_s": round(time.time() - t0, 1)}))
    return str(path)


def style_mix(responses, markers=MARKERS) -> tuple[np.ndarray, float]:
    """(share of each style among styled responses, share of responses with no marker)."""
    from .judges import CyclicStyleJudge

    judge = CyclicStyleJudge(markers)
    styles = [judge.style(r) for r in responses]
    counts = np.bincount([s for s in styles if s is not None], minlength=len(markers)).astype(float)
    n_marked = counts.sum()
    return (counts / n_marked if n_marked else np.full(len(markers), np.nan)), 1 - n_marked / max(len(styles), 1)


def style_payoff(style_matrix, quality_weight: float) -> np.ndarray:
    """The style game the judge plays on average: (1 − w)·S + w·½ (the quality term is a coin flip across styles)."""
    return (1 - quality_weight) * np.asarray(style_matrix, dtype=float) + quality_weight * 0.5


def lab_config(policy_path: str, prompts_path: str, method: str = "sppo", iterations: int = 6,
               n_prompts: int = 48, k: int = 8, beta: float = 0.125, learning_rate: float = 3e-3,
               epochs: int = 2, quality_weight: float = 0.2, seed: int = 0) -> dict:
    """The loop config of one lab arm: SPPO (every sample, its own target), iterative DPO or IPO (best vs worst).

    Every arm takes the same number of optimizer steps per iteration: SPPO trains n_prompts·k rows in
    batches of 32, DPO / IPO n_prompts pairs in batches of max(1, 32 // k) (fewer when tied pairs are dropped;
    train_counts reads what ran). The Trainer's progress display is off (disable_tqdm).
    """
    from .loop import load_config

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    overrides = {
        "seed": seed, "iterations": iterations,
        "policy": {"model": str(policy_path), "mode": "full", "device": "cpu"},
        # The same prompts every iteration: the lab watches one policy's style mix move.
        "prompts": {"source": str(prompts_path), "thirds": None, "n_prompts": n_prompts},
        # T = 1, top_p = 1: samples come from π_t itself, so their style shares estimate π_t.
        "generation": {"k": k, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16, "batch_size": 16,
                       "max_prompt_tokens": 192, "shard_size": 1024},
        "judge": {"type": "cyclic_style", "markers": list(MARKERS), "style_matrix": game.weighted_cycle().tolist(),
                  "quality_keyword": "good", "quality_weight": quality_weight, "template_prompts": False,
                  "shard_size": 1024, "device": "cpu"},
        "build": {"pair_mode": "all" if method == "sppo" else "best_worst", "ref_batch_size": 64},
        "train": {"loss_type": method, "beta": beta, "learning_rate": learning_rate, "optim": "adamw_torch",
                  "lr_scheduler_type": "constant", "warmup_steps": 0, "num_train_epochs": epochs,
                  "per_device_train_batch_size": 32 if method == "sppo" else max(1, 32 // k), "max_length": 256, "max_prompt_length": 192,
                  "activation_checkpointing": False, "bf16": False, "logging_steps": 1, "save_steps": 10_000,
                  "disable_tqdm": True},
    }
    return load_config(updates=overrides)


def mix_trajectory(run, iterations: int) -> tuple[np.ndarray, list[float]]:
    """Style mix of π_1..π_{T+1} from each iteration's samples (rows), and each one's unmarked share."""
    from datasets import Dataset

    mixes, unmarked = [], []
    for t in range(1, iterations + 2):
        responses = Dataset.from_parquet(str(run.stage_dir(t, "generate") / "responses.parquet"))["responses"]
        mix, none = style_mix([r for rs in responses for r in rs])
        mixes.append(mix)
        unmarked.append(none)
    return np.array(mixes), unmarked


def run_arm(config: dict, output_dir, log=print, log_file=None):
    """Iterations 1..T of one arm through sppo_lite.loop, plus the last model's samples to measure where it ended.

    The loop's iteration t samples from, and trains, the policy the notebooks call π_{t−1} (π_0 is the SFT
    model), so iter{t+1}/generate holds π_t's samples. With log_file, the stages' own output goes there.
    """
    from .loop import generate_stage, run_all

    with quiet_into(log_file):
        run = run_all(config, output_dir, log=log)
        generate_stage(run, config["iterations"] + 1)
    return run


def train_counts(run, iterations: int) -> dict:
    """Per iteration 1..T: training rows and optimizer steps that ran, from the build and train manifests, and
    the seconds the arm's stages took when they ran (all four stages of 1..T plus the last model's samples), so a
    rerun that skips finished stages still reports what they cost."""
    from .loop import STAGES, read_manifest

    rows = [read_manifest(run.stage_dir(t, "build"))["counts"]["rows"] for t in range(1, iterations + 1)]
    steps = [read_manifest(run.stage_dir(t, "train"))["counts"]["steps"] for t in range(1, iterations + 1)]
    seconds = sum(read_manifest(run.stage_dir(t, s))["elapsed_s"] for t in range(1, iterations + 1) for s in STAGES)
    seconds += read_manifest(run.stage_dir(iterations + 1, "generate"))["elapsed_s"]
    return {"rows": rows, "steps": steps, "seconds": round(seconds, 1)}


def sft_seconds(path) -> float | None:
    """Seconds the SFT of build_lab_policy took when it ran (None for a policy saved without the record)."""
    import json

    try:
        return json.loads((Path(path) / ".complete").read_text())["elapsed_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def style_game_with_broken(style_matrix) -> np.ndarray:
    """The style game with a 4th response, "no marker": it loses to every style (P = 0), as the judge scores it.

    Its Nash is the style game's with zero weight on broken answers, so exploitability on this game is
    exploitability on the styles plus what the broken share gives away.
    """
    S = game.validate_preference(style_matrix)
    n = len(S)
    out = np.full((n + 1, n + 1), 0.5)
    out[:n, :n] = S
    out[n, :n], out[:n, n] = 0.0, 1.0
    return out


def with_broken(mixes, unmarked) -> np.ndarray:
    """Rows (π_t(style) over all answers..., share unmarked): the style mixes (among marked answers) scaled
    by the marked share, with the unmarked share appended; policies of style_game_with_broken."""
    mixes = np.atleast_2d(np.asarray(mixes, dtype=float))
    u = np.asarray(unmarked, dtype=float).reshape(-1, 1)
    return np.hstack([np.nan_to_num(mixes) * (1 - u), u])


def samples(run, t: int) -> tuple[list[str], list[list[str]]]:
    """(prompts, K responses each) that π_t generated in iteration t."""
    from datasets import Dataset

    ds = Dataset.from_parquet(str(run.stage_dir(t, "generate") / "responses.parquet"))
    return list(ds["prompt"]), list(ds["responses"])


def win_rate_vs(judge, run_a, t_a: int, run_b, t_b: int, n_boot: int = 1000) -> dict:
    """P(π_a ≻ π_b) under the judge, sample j of a prompt against sample j of the same prompt."""
    from .evaluate import evaluate_against

    prompts, a = samples(run_a, t_a)
    prompts_b, b = samples(run_b, t_b)
    if prompts != prompts_b:
        raise ValueError("the two iterations were sampled on different prompts: compare runs of one lab")
    flat = [(p, x, y) for p, xs, ys in zip(prompts, a, b) for x, y in zip(xs, ys)]
    return evaluate_against(judge, *map(list, zip(*flat)), n_boot=n_boot)


def logratio_moves(run, t: int, log_file=None) -> dict:
    """Δ = log π_{t+1}(y) − log π_t(y) of iteration t's trained responses, beside their win rates.

    With log_file, the libraries' output while the model loads goes there. SPPO rows (one per response): {"win_prob", "delta", "style" (marker index, −1 for none), "good"
    (says "good"), "text"}; pair rows (DPO): {"delta_chosen",
    "delta_rejected", "win_chosen", "win_rejected"}.
    """
    from datasets import Dataset

    from .data import add_reference_logps
    from .modeling import load_policy

    ds = Dataset.from_parquet(str(run.stage_dir(t, "build") / "sppo.parquet"))
    ref_cols = [c for c in ds.column_names if c.startswith("ref_")]
    tr = run.config["train"]
    with quiet_into(log_file):  # loading a model prints the libraries' notices (accelerator detection, ...)
        model, tokenizer = load_policy(str(run.stage_dir(t, "train") / "model"))
        after = add_reference_logps(ds.remove_columns(ref_cols), model, tokenizer, batch_size=64,
                                    max_length=tr["max_length"], max_prompt_length=tr["max_prompt_length"])
    if "ref_response_logps" in ref_cols:
        from .judges import CyclicStyleJudge

        texts = [chat[-1]["content"] for chat in ds["response"]]
        style = CyclicStyleJudge(MARKERS).style
        return {"win_prob": np.array(ds["win_prob"]),
                "delta": np.array(after["ref_response_logps"]) - np.array(ds["ref_response_logps"]),
                "style": np.array([-1 if (k := style(x)) is None else k for x in texts]),
                "good": np.array(["good" in x.split() for x in texts]), "text": texts}
    return {"win_chosen": np.array(ds["chosen_probs_win"]), "win_rejected": np.array(ds["chosen_probs_lose"]),
            "delta_chosen": np.array(after["ref_chosen_logps"]) - np.array(ds["ref_chosen_logps"]),
            "delta_rejected": np.array(after["ref_rejected_logps"]) - np.array(ds["ref_rejected_logps"])}


def fit_effective_eta(mixes, payoff, etas=None) -> tuple[float, np.ndarray]:
    """The η whose exact multiplicative weights from mixes[0] best fits the measured mixes (least squares).

    Returns (η_eff, its predicted trajectory). Compare with the nominal η = 1/β to see how much of
    each SPPO target the language model realised on its style tokens.
    """
    mixes = np.asarray(mixes, dtype=float)
    etas = np.geomspace(0.5, 64, 200) if etas is None else np.asarray(etas, dtype=float)
    errors = [np.sum((game.sppo_dynamics(payoff, e, len(mixes) - 1, pi0=mixes[0]) - mixes) ** 2) for e in etas]
    best = float(etas[int(np.argmin(errors))])
    return best, game.sppo_dynamics(payoff, best, len(mixes) - 1, pi0=mixes[0])



def style_lows(mixes, markers=MARKERS) -> list[dict]:
    """For each style: its lowest share over the iterations, when, and the most it regained afterwards.

    A style whose share reaches 0 is no longer sampled, so nothing can show that it would now win: the
    language-model version of a frozen multiplicative-weights policy (game.freeze_step).
    Iterations whose answers were all broken (no style, NaN rows of mix_trajectory) are skipped; a style with no
    styled iteration at all is left out.
    """
    mixes = np.asarray(mixes, dtype=float)
    out = []
    for k, marker in enumerate(markers):
        if np.all(np.isnan(mixes[:, k])):
            continue
        t = int(np.nanargmin(mixes[:, k]))
        out.append({"style": marker, "low": float(mixes[t, k]), "at": t, "regained": float(np.nanmax(mixes[t:, k]))})
    return out


def arm_exploitability(run, iterations: int, style_matrix=None) -> dict:
    """Exploitability (broken answers counted) of an arm's last iterate and of its running average, t = 0..T."""
    G = style_game_with_broken(game.weighted_cycle() if style_matrix is None else style_matrix)
    mixes, unmarked = mix_trajectory(run, iterations)
    pi = with_broken(mixes, unmarked)
    return {"last": game.exploitability_curve(G, pi), "average": game.exploitability_curve(G, game.running_average(pi)),
            "mixes": mixes, "unmarked": np.asarray(unmarked, dtype=float)}


def sweep_arms(method: str, betas, learning_rates, output_dir, policy_path, prompts_path, progress=True,
               log_file=None, **config) -> list[dict]:
    """One arm of `method` per (β, learning rate), each through run_arm; rows sorted best first.

    A row: {"beta", "learning_rate", "average" (the average iterate's final exploitability, the score),
    "last" (the last iterate's), "rows_last" (training rows of the last iteration: 0 means every pair tied),
    "steps" (optimizer steps that ran), "seconds", "run", "curves" (arm_exploitability's)}. `config` goes to lab_config (iterations, n_prompts, k,
    epochs, quality_weight, seed): every arm sees the same prompts and, at iteration 1, the same samples.
    Finished arms are read back, not rerun (the loop's stages are resumable).
    """
    from tqdm.auto import tqdm

    grid = [(float(b), float(lr)) for b in betas for lr in learning_rates]
    if not grid:
        raise ValueError("sweep_arms needs at least one β and one learning rate")
    out = []
    for beta, lr in tqdm(grid, desc=f"{method} sweep", disable=not progress):
        cfg = lab_config(policy_path, prompts_path, method, beta=beta, learning_rate=lr, **config)
        run = run_arm(cfg, Path(output_dir) / f"{method}_beta{beta:g}_lr{lr:g}", log=lambda *a: None,
                      log_file=log_file)
        T = cfg["iterations"]
        curves = arm_exploitability(run, T)
        counts = train_counts(run, T)
        out.append({"beta": beta, "learning_rate": lr, "average": float(curves["average"][-1]),
                    "last": float(curves["last"][-1]), "rows_last": counts["rows"][-1],
                    "steps": int(sum(counts["steps"])), "seconds": counts["seconds"], "run": run, "curves": curves})
    return sorted(out, key=lambda r: r["average"])
