"""SPPO vs iterative DPO vs iterative IPO on SmolLM2-135M-Instruct under the committee judge, on a CPU.

    HF_HUB_OFFLINE=1 python benchmarks/smollm2_compare.py --sweep --seed 0 --root outputs/compare-seed0
    HF_HUB_OFFLINE=1 python benchmarks/smollm2_compare.py --seed 1 --root outputs/compare-seed1   # TUNED settings

The recipe is configs/cpu-smollm2-compare.yaml (3 iterations of 32 prompts × K = 4, LoRA). --sweep first runs
each baseline's β × lr grid on iteration 1 (sppo_lite.compare.sweep: every point trains on the SPPO arm's
iteration-1 rows and is scored by its π_1's win rate against π₀ on 40 validation prompts) and runs each baseline
at its best; without it the baselines run at compare.TUNED. Then every arm's iterates are evaluated on 64 other
held-out prompts (compare.evaluate_arms) and on the factual questions (compare.factual_arms). Prints the tables and
each stage's time; writes benchmarks/results/smollm2_compare-seed<seed>-<hw>.json. Everything is resumable.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from common import hardware, versions
from sppo_lite import compare, evaluation_run, loop

ROOT = Path(__file__).resolve().parent.parent
BETAS = (0.03, 0.1, 0.3)
LRS = (1.5e-4, 5e-4, 1.5e-3)


def stage_seconds(run) -> dict:
    return {f"iter{r['iteration']}/{r['stage']}": r["elapsed_s"] for r in evaluation_run.stage_table(run.output_dir)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the arms, the sweep and the cached answers land here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="tune each baseline on iteration 1 first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--n-validation", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = hardware("cpu")
    config = loop.load_config(ROOT / "configs" / "cpu-smollm2-compare.yaml", [f"seed={args.seed}"])
    eval_prompts, validation = compare.split_prompts(config, args.n_eval, args.n_validation)
    g = config["generation"]
    generation = dict(max_new_tokens=g["max_new_tokens"], batch_size=g["batch_size"],
                      max_prompt_tokens=g["max_prompt_tokens"], seed=args.seed)
    judge = loop.make_judge(config)
    root = Path(args.root)
    t0 = time.time()
    if args.sweep:
        made = compare.run_comparison(config, root, validation, judge, BETAS, LRS, **generation)
        runs, sweeps, chosen = made["runs"], made["sweeps"], made["chosen"]
    else:
        runs = compare.run_arms(config, root)
        sweeps, chosen = {}, dict(compare.TUNED)
    trained = time.time() - t0
    t1 = time.time()
    result = compare.evaluate_arms(runs, eval_prompts, judge, root / "eval", **generation)
    factual = compare.factual_arms(runs, root / "eval", seed=args.seed)
    evaluated = time.time() - t1
    out = compare.summary(result, factual)
    T = result["iterations"][-1]
    print(f"seed {args.seed}: {len(eval_prompts)} evaluation prompts, {T} iterations, on {hw}, "
          f"load average {os.getloadavg()[0]:.1f}; arms {trained / 60:.1f} min, evaluation {evaluated / 60:.1f} min")
    for arm in result["arms"]:
        rows = [f"{r['win_rate']:.1f} [{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}]"
                for t, r in sorted(result["vs_base"][arm].items()) if t > 0]
        print(f"{compare.ARM_NAMES[arm]:<15} vs π₀ by iteration: {' | '.join(rows)}; cut off "
              f"{[round(v, 2) for _, v in sorted(result['cut_off'][arm].items())]}; factual "
              f"{[round(v, 3) for _, v in sorted(factual[arm]['accuracy'].items())]}")
    for key, per in result["head_to_head"].items():
        r = per[T]
        print(f"{key} at iteration {T}: {r['win_rate']:.1f} [{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}]")
    path = ROOT / "benchmarks" / "results" / f"smollm2_compare-seed{args.seed}-{hw}.json"
    path.write_text(json.dumps({
        "hardware": hw, "versions": versions(), "args": vars(args), "betas": BETAS, "learning_rates": LRS,
        "load_average": os.getloadavg()[0], "minutes": {"arms": round(trained / 60, 1), "evaluation": round(evaluated / 60, 1)},
        "sweeps": {k: [{kk: v for kk, v in p.items() if kk != "run_dir"} for p in pts] for k, pts in sweeps.items()},
        "chosen": {k: {"beta": v["beta"], "learning_rate": v["learning_rate"]} for k, v in chosen.items()},
        "stage_seconds": {arm: stage_seconds(run) for arm, run in runs.items()}, "result": out}, indent=1, default=float))
    print(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
