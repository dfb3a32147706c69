"""β × learning-rate sweep for SPPO with LoRA / QLoRA vs full fine-tuning, on a tiny model (CPU, minutes).

    python benchmarks/qlora_hparam_sweep.py                      # the default grid: 32 cells, ~3-4 min on 1 CPU thread
    python benchmarks/qlora_hparam_sweep.py --widths 64,128,256  # + the LoRA-vs-full lr ratio at 2 more widths (~8 min)
    python benchmarks/qlora_hparam_sweep.py --modes qlora --betas 0.01 --lrs 5e-5 --lora-betas "" --full "" --extra ""

Why: the paper's β = 0.001, lr 5e-7 are for full fine-tuning with RMSprop. A LoRA adapter moves the model much
less per step at the same lr, and β does not do what its name suggests under an Adam / RMSprop-type optimizer:
the update of each parameter is ≈ lr·g/√E[g²], whatever the scale of the loss, so the size of the targets
(P̂ − ½)/β does not change how fast Δ = log π_θ − log π_t moves while Δ is far from them. β only sets where the
regression stops (an anchor), and the relative pull on chosen vs rejected (the same for every β).

What one cell does, identically for every cell:
  1. One fixed SPPO dataset per model width: a tiny Mistral (sppo_lite.modeling.save_tiny_policy, then
     `--warm-start-steps` supervised steps so it is peaked and structured, not uniform) samples K responses
     to each training prompt (sppo_lite.generation, T 0.7, top_p 0.9); the length judge
     (sppo_lite.judges.LengthJudge, Bradley–Terry like PairRM's official mode) gives the K×K win matrix;
     sppo_lite.data.build_sppo_dataset makes the official (best, worst) pairs with their win rates and
     add_reference_logps the log π_t columns. Held-out prompts get K samples of π_t for a drift measure.
  2. load_policy(mode) on the tiny model, then SPPOTrainer (loss sppo, the given β and lr, the recipe's
     optimizer, linear schedule, warmup 0.1, grad-norm clip 1.0, LoRA r16 α32 dropout 0.05 all-linear) for
     exactly `--steps` optimizer steps (one pass over the pairs at the default sizes, as one SPPO iteration).
  3. Exact measurements after training, eval mode, no dropout, against the cell's own starting model (for
     QLoRA: the NF4 base with the adapter off, i.e. the adapter's own effect):
       Δc, Δr        mean log-ratio of the trained chosen / rejected responses (summed over tokens, nats)
       tc, tr        their mean SPPO targets (P̂ − ½)/β; Δc/tc, Δr/tr: how far toward the targets (1 = there)
       up/down       share of pairs with Δc > 0 and Δr < 0 (chosen up AND rejected down)
       L/L0          SPPO loss after / before training (1: no progress, 0: targets met)
       KL            drift on held-out prompts: mean over samples y ~ π_t of log π_t(y) − log π_θ(y), an
                     unbiased estimate of KL(π_t ‖ π_θ) per response (nats; noisy, can come out < 0 when tiny)
       KL k3         the same KL as mean of e^Δ − 1 − Δ (≥ 0 per sample; heavy-tailed once drift is large)
       |Δ|held       mean |log π_θ(y) − log π_t(y)| on those samples: drift in either direction
     and the last logged training averages (logratio/*, target/*) from trainer.state.log_history.

For QLoRA the trainer's reference is "on_the_fly" (the adapter switched off: the NF4 base) by default. With
"precomputed" the loop's reference columns come from the unquantised π_t, so Δ starts at the NF4 rounding
offset log π_NF4 − log π_t instead of 0; the sweep measures that offset and can run cells that way
(`--extra qlora:0.01:5e-5:precomputed`).

The tiny model is a proxy, not Mistral-7B: 2 layers of hidden size 64 instead of 32 of 4096, ~30-token
responses instead of ~400, a length judge instead of PairRM. What transfers is the mechanism (β-invariance of the step size, the anchor,
chosen-up / rejected-down); the absolute lr does not, because full fine-tuning's per-step change grows with
the width of the layers while LoRA's does not. `--widths` measures that trend so it can be extrapolated.

Writes benchmarks/results/qlora_hparam_sweep-<hardware>.json and prints the tables.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally; never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import hardware, versions  # noqa: E402

PAPER = {"beta": 0.001, "lr": 5e-7}


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="qlora,lora", help="adapter modes for the β × lr grid (lora, qlora)")
    p.add_argument("--betas", default="0.001,0.01,0.1", type=parse_floats)
    p.add_argument("--lrs", default="5e-7,5e-6,5e-5,5e-4,5e-3", type=parse_floats)
    p.add_argument("--lora-betas", default="0.001,0.1", type=parse_floats,  # "" for none
                   help="β values for the plain-LoRA mode (it tracks QLoRA closely; fewer cells save time)")
    p.add_argument("--full", default="0.001:5e-7,0.1:5e-7,0.001:5e-6",
                   help="full fine-tuning cells as β:lr (the paper's is 0.001:5e-7)")
    p.add_argument("--extra", default="qlora:0.01:5e-5:precomputed,qlora:0.01:5e-4:precomputed,"
                                       "qlora:0.01:5e-5:on_the_fly:adamw_torch,full:0.001:5e-7:precomputed:adamw_torch",
                   help="more cells as mode:β:lr:reference[:optim]")
    p.add_argument("--optim", default="rmsprop", help="the recipes' optimizer (the paper's RMSprop)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per cell")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--train-prompts", type=int, default=160, help="prompts for the SPPO pairs (steps × batch: one epoch)")
    p.add_argument("--heldout-prompts", type=int, default=40, help="prompts whose π_t samples measure drift")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--warm-start-steps", type=int, default=300,
                   help="supervised steps before sampling (0: the random-init model, near-uniform samples)")
    p.add_argument("--widths", default="64", help="hidden sizes; the grid runs at the first, the width check at all")
    p.add_argument("--width-lrs", default="5e-6,5e-5,5e-4", type=parse_floats,
                   help="QLoRA lrs (β 0.001) run at every width to find the lr that matches full FT's movement")
    p.add_argument("--prompts", default=str(ROOT / "data" / "prompts.jsonl"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest for the tiny model on a busy machine)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/qlora_hparam_sweep-<hardware>.json)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the fixed dataset

@torch.no_grad()
def response_logps(model, tokenizer, conversations, batch_size: int = 32, max_length: int = 320,
                   max_prompt_length: int = 256):
    """(Σ log π(response | prompt), response token count) per chat, eval mode, no dropout."""
    from sppo_lite.data import encode_chat, pad_chat_batch, sequence_logps

    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        encoded = [encode_chat(tokenizer, c, max_length, max_prompt_length) for c in conversations]
        for start in range(0, len(encoded), batch_size):
            batch = pad_chat_batch(encoded[start:start + batch_size], tokenizer)
            sums.append(sequence_logps(model, **batch).cpu())
            counts.append(batch["response_mask"].sum(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums).double().numpy(), torch.cat(counts).numpy()


def warm_start(policy: Path, prompts: list[str], steps: int, seed: int) -> None:
    """Supervised warm start (sppo_lite.lab.sft), so the proxy is peaked and structured like a pretrained model.

    Each prompt is answered by 1-3 other prompts of the set (English sentences, an EOS after them): the model
    learns fluent-ish answers of varying length, so K samples differ in a feature a judge can prefer and the
    policy can learn (length, as PairRM's known length preference). `steps` steps of 16 chats, each chat seen
    once; AdamW 3e-3 (weight decay 0.01), constant lr, no gradient clipping; loss on the answer tokens.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sppo_lite.data import chat_messages
    from sppo_lite.lab import sft

    rng = np.random.default_rng(seed + 1)
    chats = []
    for _ in range(steps):
        for i in rng.integers(len(prompts), size=16):
            answer = " ".join(prompts[j] for j in rng.integers(len(prompts), size=int(rng.integers(1, 4))))
            chats.append(chat_messages(prompts[i], answer))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    sft(model, tokenizer, chats, policy.with_name(policy.name + ".sft"), max_length=320, max_prompt_length=256,
        max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3, lr_scheduler_type="constant",
        weight_decay=0.01, max_grad_norm=0.0, logging_strategy="no", seed=seed)
    model.save_pretrained(policy)


def build_data(workdir: Path, width: int, args) -> dict:
    """Tiny policy of this width, its SPPO pairs (with log π_t) and held-out samples; one fixed set per width."""
    from sppo_lite.data import add_reference_logps, build_sppo_dataset, chat_messages, load_prompts
    from sppo_lite.generation import generate_responses
    from sppo_lite.judges import LengthJudge
    from sppo_lite.modeling import load_policy, save_tiny_policy

    prompts = load_prompts(args.prompts)
    policy = workdir / f"tiny-h{width}"
    save_tiny_policy(policy, texts=prompts, hidden_size=width, seed=args.seed)
    if args.warm_start_steps:
        warm_start(policy, prompts, args.warm_start_steps, args.seed)
    model, tokenizer = load_policy(policy, mode="full")
    need = args.train_prompts + args.heldout_prompts
    if len(prompts) < need:
        raise SystemExit(f"{args.prompts} holds {len(prompts)} prompts; --train-prompts + --heldout-prompts needs {need}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(prompts))
    train_p = [prompts[i] for i in order[:args.train_prompts]]
    held_p = [prompts[i] for i in order[args.train_prompts:need]]
    gen = dict(k=args.k, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, batch_size=16,
               seed=args.seed, progress=False)
    train_r, _ = generate_responses(model, tokenizer, train_p, **gen)
    held_r, _ = generate_responses(model, tokenizer, held_p, prompt_ids=list(range(10**6, 10**6 + len(held_p))), **gen)
    judge = LengthJudge(scale=20.0)  # Bradley–Terry on character length: P̂ spreads like PairRM's official scores
    mats = judge.win_matrices(train_r["prompt"], train_r["responses"])
    pairs = build_sppo_dataset(train_r["prompt"], train_r["responses"], mats)
    pairs = add_reference_logps(pairs, model, tokenizer, batch_size=32, max_length=320, max_prompt_length=256)
    held = [chat_messages(p, r) for p, rs in zip(held_r["prompt"], held_r["responses"]) for r in rs]
    if len(pairs) < args.steps * args.batch_size:
        logging.warning("%d pairs for %d steps × %d: more than one pass over the data", len(pairs), args.steps,
                        args.batch_size)
    return {"policy": str(policy), "pairs": pairs, "heldout": held, "width": width,
            "win_chosen": float(np.mean(pairs["chosen_probs_win"])),
            "win_rejected": float(np.mean(pairs["chosen_probs_lose"])),
            "response_tokens": float(np.mean(response_logps(model, tokenizer, held)[1]))}


# ---------------------------------------------------------------- one cell

def run_cell(data: dict, mode: str, beta: float, lr: float, reference: str, optim: str, args, workdir: Path) -> dict:
    from sppo_lite.losses import sppo_pair_loss
    from sppo_lite.modeling import load_policy
    from transformers.trainer_callback import PrinterCallback

    from sppo_lite.trainer import SPPOConfig, SPPOTrainer

    torch.manual_seed(args.seed)  # the same LoRA initialisation in every cell
    model, tokenizer = load_policy(data["policy"], mode=mode)
    model.train()
    pairs = data["pairs"]
    chosen, rejected, held = list(pairs["chosen"]), list(pairs["rejected"]), data["heldout"]
    adapter_off = model.disable_adapter if mode != "full" else contextlib.nullcontext
    # Start points: the model as loaded (for QLoRA the NF4 base), so every Δ below is what training changed.
    with adapter_off():
        c0, _ = response_logps(model, tokenizer, chosen)
        r0, _ = response_logps(model, tokenizer, rejected)
        h0, h_tokens = response_logps(model, tokenizer, held)
    offset = {"chosen": float(np.mean(c0 - np.asarray(pairs["ref_chosen_logps"]))),
              "rejected": float(np.mean(r0 - np.asarray(pairs["ref_rejected_logps"])))}
    config = SPPOConfig(
        output_dir=str(workdir / "trainer"), loss_type="sppo", beta=beta, learning_rate=lr, optim=optim,
        lr_scheduler_type="linear", warmup_steps=0.1, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_length=320, max_prompt_length=256, reference=reference,
        logging_steps=max(1, args.steps // 4), save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        dataloader_pin_memory=False, seed=args.seed)
    t0 = time.time()
    trainer = SPPOTrainer(model, config, train_dataset=pairs, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the logs are read from log_history, not printed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    train_s = time.time() - t0
    c1, _ = response_logps(model, tokenizer, chosen)
    r1, _ = response_logps(model, tokenizer, rejected)
    h1, _ = response_logps(model, tokenizer, held)
    dc, dr, dh = c1 - c0, r1 - r0, h1 - h0
    pw, pl = np.asarray(pairs["chosen_probs_win"]), np.asarray(pairs["chosen_probs_lose"])
    tc, tr = (pw - 0.5) / beta, (pl - 0.5) / beta

    def loss(a, b):
        return float(sppo_pair_loss(torch.tensor(a), torch.tensor(b), torch.zeros(len(a), dtype=torch.float64),
                                    torch.zeros(len(b), dtype=torch.float64), torch.tensor(pw), torch.tensor(pl),
                                    beta).mean())

    logged = [h for h in trainer.state.log_history if "logratio/chosen" in h]
    last = logged[-1] if logged else {}
    result = {
        "mode": mode, "beta": beta, "lr": lr, "reference": reference, "width": data["width"], "optim": optim,
        "steps": args.steps, "train_s": round(train_s, 2),
        "delta_chosen": float(dc.mean()), "delta_rejected": float(dr.mean()),
        "target_chosen": float(tc.mean()), "target_rejected": float(tr.mean()),
        "frac_chosen": float(dc.mean() / tc.mean()), "frac_rejected": float(dr.mean() / tr.mean()),
        "margin": float((dc - dr).mean()),
        "up_down": float(np.mean((dc > 0) & (dr < 0))),
        "loss_ratio": loss(dc, dr) / loss(np.zeros_like(dc), np.zeros_like(dr)),
        "kl_heldout": float(-dh.mean()), "kl_heldout_per_token": float(-dh.sum() / h_tokens.sum()),
        "kl_heldout_k3": float(np.mean(np.expm1(dh) - dh)),
        "abs_delta_heldout": float(np.abs(dh).mean()),
        "init_offset_vs_fp32_reference": offset,
        "logged": {k: last[k] for k in ("step", "logratio/chosen", "logratio/rejected", "target/chosen",
                                        "target/rejected", "loss", "grad_norm", "learning_rate") if k in last},
    }
    if reference == "precomputed" and mode == "qlora":
        # What the loss saw: Δ against the unquantised π_t, i.e. the movement plus the NF4 offset.
        result["delta_vs_reference"] = {"chosen": float((c1 - np.asarray(pairs["ref_chosen_logps"])).mean()),
                                        "rejected": float((r1 - np.asarray(pairs["ref_rejected_logps"])).mean())}
    del trainer, model
    return result


# ---------------------------------------------------------------- tables

def fmt(x: float) -> str:
    return f"{x:9.3g}"


HEADER = (f"{'mode':>6} {'ref':>4} {'β':>6} {'lr':>7} | {'Δc':>9} {'tc':>9} {'Δc/tc':>9} | {'Δr':>9} {'tr':>9} "
          f"{'Δr/tr':>9} | {'up/down':>7} {'L/L0':>9} {'KL':>9} {'KL k3':>9} {'|Δ|held':>9} | {'s':>5}")


def row(r: dict) -> str:
    ref = "pre" if r["reference"] == "precomputed" else "otf"
    mode = r["mode"] if r["optim"] == "rmsprop" else f"{r['mode']}/{r['optim'][:4]}"
    return (f"{mode:>6} {ref:>4} {r['beta']:>6g} {r['lr']:>7.0e} | {fmt(r['delta_chosen'])} {fmt(r['target_chosen'])} "
            f"{fmt(r['frac_chosen'])} | {fmt(r['delta_rejected'])} {fmt(r['target_rejected'])} {fmt(r['frac_rejected'])} | "
            f"{r['up_down']:>7.2f} {fmt(r['loss_ratio'])} {fmt(r['kl_heldout'])} {fmt(r['kl_heldout_k3'])} "
            f"{fmt(r['abs_delta_heldout'])} | "
            f"{r['train_s']:>5.1f}")


def matched_lr(cells: list[dict], target_margin: float) -> float | None:
    """The QLoRA lr whose margin equals target_margin, by log-log interpolation between grid points."""
    pts = sorted((c["lr"], c["margin"]) for c in cells if c["margin"] > 0)
    for (l0, m0), (l1, m1) in zip(pts, pts[1:]):
        if m0 <= target_margin <= m1:
            w = (math.log(target_margin) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return math.exp(math.log(l0) + w * (math.log(l1) - math.log(l0)))
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "sppo_lite", "datasets", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    widths = [int(w) for w in args.widths.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    cells = []  # (width, mode, beta, lr, reference, optim)
    for mode in modes:
        for beta in (args.lora_betas if mode == "lora" else args.betas):
            for lr in args.lrs:
                cells.append((widths[0], mode, beta, lr, "on_the_fly", args.optim))
    for spec in [s for s in args.full.split(",") if s]:
        beta, lr = (float(x) for x in spec.split(":"))
        cells.append((widths[0], "full", beta, lr, "precomputed", args.optim))
    for spec in [s for s in args.extra.split(",") if s]:
        mode, beta, lr, ref, *optim = spec.split(":")
        cells.append((widths[0], mode, float(beta), float(lr), ref, optim[0] if optim else args.optim))
    for w in widths[1:]:
        cells.append((w, "full", PAPER["beta"], PAPER["lr"], "precomputed", args.optim))
        for lr in args.width_lrs:
            cells.append((w, "qlora", PAPER["beta"], lr, "on_the_fly", args.optim))

    results, datasets_info = [], {}
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = {}
        for w in widths:
            t0 = time.time()
            data[w] = build_data(workdir, w, args)
            datasets_info[w] = {k: data[w][k] for k in ("win_chosen", "win_rejected", "response_tokens")}
            datasets_info[w]["pairs"] = len(data[w]["pairs"])
            datasets_info[w]["heldout_responses"] = len(data[w]["heldout"])
            print(f"width {w}: {len(data[w]['pairs'])} pairs, {len(data[w]['heldout'])} held-out samples, "
                  f"mean P̂ chosen {datasets_info[w]['win_chosen']:.3f} / rejected {datasets_info[w]['win_rejected']:.3f}, "
                  f"{datasets_info[w]['response_tokens']:.1f} tokens per response ({time.time() - t0:.0f} s)", flush=True)
        print(f"\n{len(cells)} cells, {args.steps} steps × {args.batch_size} pairs, optim {args.optim}\n{HEADER}", flush=True)
        for n, (w, mode, beta, lr, ref, optim) in enumerate(cells):
            if w != widths[0] and (n == 0 or cells[n - 1][0] != w):
                print(f"-- width {w}", flush=True)
            r = run_cell(data[w], mode, beta, lr, ref, optim, args, workdir / f"cell{n}")
            results.append(r)
            print(row(r), flush=True)

    # The LoRA lr that moves the margin as far as full fine-tuning at the paper's lr, per width.
    scaling = []
    for w in widths:
        full = [r for r in results if r["width"] == w and r["mode"] == "full" and r["optim"] == args.optim
                and (r["beta"], r["lr"]) == (PAPER["beta"], PAPER["lr"])]
        q = [r for r in results if r["width"] == w and r["mode"] == "qlora" and r["beta"] == PAPER["beta"]
             and r["reference"] == "on_the_fly" and r["optim"] == args.optim]
        if full and q:
            lr_match = matched_lr(q, full[0]["margin"])
            scaling.append({"width": w, "full_margin": full[0]["margin"], "full_kl": full[0]["kl_heldout"],
                            "qlora_lr_matching_full": lr_match,
                            "ratio_to_paper_lr": lr_match / PAPER["lr"] if lr_match else None})
    if scaling:
        print("\nQLoRA lr that moves Δc − Δr as far as full fine-tuning at β 0.001, lr 5e-7 (log-log interpolation):")
        for s in scaling:
            lr_txt = f"{s['qlora_lr_matching_full']:.2e} ({s['ratio_to_paper_lr']:.0f}× the paper's)" \
                if s["qlora_lr_matching_full"] else "outside the grid"
            print(f"  width {s['width']:>4}: full-FT margin {s['full_margin']:.3g} nats, KL {s['full_kl']:.3g} → {lr_txt}")

    hw = hardware()
    out = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"qlora_hparam_sweep-{hw}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmark": "SPPO β × lr sweep, LoRA / QLoRA vs full fine-tuning, tiny random-init Mistral (proxy)",
        "hardware": hw, "versions": versions(), "elapsed_s": round(time.time() - t_start, 1),
        "settings": {"optim": args.optim, "steps": args.steps, "batch_pairs": args.batch_size, "k": args.k,
                     "max_new_tokens": args.max_new_tokens, "schedule": "linear, warmup 0.1", "max_grad_norm": 1.0,
                     "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                     "judge": "LengthJudge(scale=20), Bradley–Terry", "widths": widths, "seed": args.seed,
                     "train_prompts": args.train_prompts, "heldout_prompts": args.heldout_prompts},
        "datasets": datasets_info, "cells": results, "lr_matching_full_ft": scaling,
        "columns": {"delta_*": "mean log π_θ − log π_start over the trained responses (nats, summed over tokens)",
                    "target_*": "mean (P̂ − ½)/β", "frac_*": "delta / target",
                    "up_down": "share of pairs with Δc > 0 and Δr < 0", "loss_ratio": "SPPO loss after / before",
                    "kl_heldout": "mean log π_start(y) − log π_θ(y), y ~ π_t on held-out prompts (nats/response)"},
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"\n{len(results)} cells in {summary['elapsed_s']:.0f} s → {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
