"""bf16 autocast on a CPU for SmolLM2's passes: what it saves per stage and what it changes, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/cpu_bf16.py --root outputs/cpu-bf16 [--seed 0] [--threads 2]

Iteration 1 of configs/cpu-smollm2-compare.yaml (SPPO, 32 prompts × K = 4, LoRA) twice from the same π₀:
    fp32   the recipe as it was
    bf16   generation.bf16 (sampling), judge.dtype=bfloat16 (the committee's relevance LM), build.bf16 (log π_t),
           train.bf16 (the Trainer's CPU autocast); fp32 weights everywhere but the judge's frozen LM
Each stage's wall time comes from its manifest. What bf16 changes, each measured on the same inputs:
    log π_t    the fp32 run's training rows rescored under autocast: |Δ| in nats, beside |SPPO target| = η·|P − ½|
    judge      the fp32 run's samples rejudged by the bf16 LM: pair decisions and best/worst picks that change
    samples    iteration 1's samples: mean characters and the share cut off, fp32 vs bf16
    π_1        each run's π_1 against π₀ on validation prompts (fp32 sampling, fp32 judge), and head to head
    factual    π₀'s greedy answers to the factual questions, fp32 vs autocast: accuracy and answers that differ
Writes benchmarks/results/cpu_bf16-<hw>.json. Resumable (finished stages and answers are read back).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from common import hardware, processor, versions
from sppo_lite import compare, evaluate, evaluation_run, factual, loop
from sppo_lite.data import add_reference_logps
from sppo_lite.modeling import load_policy

ROOT = Path(__file__).resolve().parent.parent
BF16 = ["generation.bf16=true", "build.bf16=true", "judge.dtype=bfloat16", "train.bf16=true"]


def stage_seconds(run) -> dict:
    return {r["stage"]: r["elapsed_s"] for r in evaluation_run.stage_table(run.output_dir)}


def logp_change(run, cfg) -> dict:
    """The fp32 run's rows rescored under autocast against their stored fp32 ref log-probs."""
    from datasets import Dataset

    ds = Dataset.from_parquet(str(run.stage_dir(1, "build") / "sppo.parquet"))
    model, tok = load_policy(run.policy_path(1), mode="full", dtype="float32")
    tr = cfg["train"]
    t0 = time.time()
    again = add_reference_logps(ds, model, tok, batch_size=cfg["build"]["ref_batch_size"], max_length=tr["max_length"],
                                max_prompt_length=tr["max_prompt_length"], bf16=True)
    seconds = time.time() - t0
    diff = np.concatenate([np.abs(np.array(again[f"ref_{c}_logps"]) - np.array(ds[f"ref_{c}_logps"]))
                           for c in ("chosen", "rejected")])
    eta = 1.0 / cfg["train"]["beta"]
    target = np.abs(eta * (np.concatenate([ds["chosen_probs_win"], ds["chosen_probs_lose"]]) - 0.5))
    return {"rows": len(ds), "bf16_seconds": round(seconds, 1), "mean_abs_nats": float(diff.mean()),
            "max_abs_nats": float(diff.max()), "median_abs_target_nats": float(np.median(target)),
            "mean_abs_over_median_target": float(diff.mean() / np.median(target))}


def judge_change(run, judge32, judge16) -> dict:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(run.stage_dir(1, "generate") / "responses.parquet"))
    prompts, responses = list(ds["prompt"]), [list(r) for r in ds["responses"]]
    times, mats = {}, {}
    for name, judge in (("fp32", judge32), ("bf16", judge16)):
        t0 = time.time()
        mats[name] = judge.win_matrices(prompts, responses)
        times[name] = round(time.time() - t0, 1)
    pairs = changed = picks = 0
    for a, b in zip(mats["fp32"], mats["bf16"]):
        iu = np.triu_indices(len(a), 1)
        pairs += len(iu[0])
        changed += int((np.abs(a[iu] - b[iu]) > 1e-9).sum())
        picks += int(a.mean(1).argmax() != b.mean(1).argmax() or a.mean(1).argmin() != b.mean(1).argmin())
    return {"prompts": len(prompts), "seconds": times, "pairs": pairs, "pairs_changed": changed,
            "share_pairs_changed": changed / pairs, "prompts_best_or_worst_changed": picks}


def sample_stats(run) -> dict:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(run.stage_dir(1, "generate") / "responses.parquet"))
    return {"mean_characters": float(np.mean([len(y) for ys in ds["responses"] for y in ys])),
            "cut_off": float(np.mean([not f for fs in ds["finished"] for f in fs]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-validation", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = hardware("cpu")
    root = Path(args.root)
    cfg32 = loop.load_config(compare.COMPARE_RECIPE, [f"seed={args.seed}"])
    cfg16 = loop.apply_overrides(cfg32, BF16)
    runs = {}
    for name, cfg in (("fp32", cfg32), ("bf16", cfg16)):
        runs[name] = compare.run_arm(compare.arm_config(cfg, "sppo"), root / name, iterations=1)
    stages = {name: stage_seconds(run) for name, run in runs.items()}
    judge32, judge16 = loop.make_judge(cfg32), loop.make_judge(cfg16)
    out = {"hardware": hw, "processor": processor(), "versions": versions(), "args": vars(args), "load_average": os.getloadavg()[0],
           "bf16_settings": BF16, "stage_seconds": stages,
           "logp": logp_change(runs["fp32"], cfg32),
           "judge": judge_change(runs["fp32"], judge32, judge16),
           "samples": {name: sample_stats(run) for name, run in runs.items()}}
    _, validation = compare.split_prompts(cfg32, 64, args.n_validation)
    gen = {**compare.eval_generation(cfg32), "bf16": False}
    answers = {name: evaluation_run.generate_for_models(run, validation, root / "eval", iterations=[0, 1], **gen)
               for name, run in runs.items()}
    first = {name: [y[0] for y in a[1]] for name, a in answers.items()}
    base = [y[0] for y in answers["fp32"][0]]
    out["pi1_vs_base"] = {name: evaluation_run.jsonable(evaluate.evaluate_against(judge32, validation, ys, base))
                          for name, ys in first.items()}
    out["pi1_bf16_vs_fp32"] = evaluation_run.jsonable(evaluate.evaluate_against(judge32, validation, first["bf16"],
                                                                                first["fp32"]))
    items = factual.load_factual()
    questions = [it["question"] for it in items]
    fact = {}
    for bf16 in (False, True):
        t0 = time.time()
        got = evaluation_run.generate_for_models(runs["fp32"], questions, root / "eval", iterations=[0], n=1,
                                                 temperature=0.0, top_p=1.0, max_new_tokens=64, batch_size=8,
                                                 seed=args.seed, bf16=bf16)
        fact["bf16" if bf16 else "fp32"] = {"answers": [r[0] for r in got[0]], "seconds": round(time.time() - t0, 1)}
    for name, f in fact.items():
        f["accuracy"] = float(factual.score_answers(f["answers"], items).mean())
    out["factual_base"] = {name: {"accuracy": f["accuracy"], "seconds": f["seconds"]} for name, f in fact.items()}
    out["factual_base"]["answers_differ"] = int(sum(a != b for a, b in zip(fact["fp32"]["answers"],
                                                                           fact["bf16"]["answers"])))
    out["factual_base"]["questions"] = len(items)
    print(f"on {hw} ({out['processor']}), load average {out['load_average']:.1f}")
    for stage in stages["fp32"]:
        a, b = stages["fp32"][stage], stages["bf16"].get(stage)
        print(f"  {stage:<9} fp32 {a:6.1f} s   bf16 {b:6.1f} s   ×{a / b:.2f}")
    lp, jd = out["logp"], out["judge"]
    print(f"log π_t under autocast: mean |Δ| {lp['mean_abs_nats']:.3f} nats (max {lp['max_abs_nats']:.3f}) against a "
          f"median |SPPO target| of {lp['median_abs_target_nats']:.1f} nats")
    print(f"committee in bf16: {jd['pairs_changed']} of {jd['pairs']} pair probabilities change, best or worst pick "
          f"changes on {jd['prompts_best_or_worst_changed']} of {jd['prompts']} prompts; {jd['seconds']}")
    print(f"samples: {out['samples']}")
    for name, r in out["pi1_vs_base"].items():
        print(f"π_1 ({name}) vs π₀: {r['win_rate']:.1f} [{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}]")
    r = out["pi1_bf16_vs_fp32"]
    print(f"π_1 (bf16) vs π_1 (fp32): {r['win_rate']:.1f} [{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}]")
    print(f"factual, π₀: {out['factual_base']}")
    path = ROOT / "benchmarks" / "results" / f"cpu_bf16-{hw}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
