"""SPPO vs iterative DPO vs iterative IPO on SmolLM2-135M-Instruct under the committee judge, on a CPU.

    HF_HUB_OFFLINE=1 python benchmarks/smollm2_compare.py --seed 0 --root outputs/compare-seed0   # TUNED settings
    HF_HUB_OFFLINE=1 python benchmarks/smollm2_compare.py --sweep --seed 0 --root outputs/sweep-seed0

The recipe is configs/cpu-smollm2-compare.yaml (3 iterations of 32 prompts × K = 4, LoRA). --sweep first runs
each baseline's β × lr grid on iteration 1 (sppo_lite.compare.sweep: every point trains on the SPPO arm's
iteration-1 rows and is scored by its π_1's win rate against π₀ on 40 validation prompts) and runs each baseline
at the sweep's best (at seed 0 that was IPO β 0.03, which compare.TUNED moved to 0.003 after
benchmarks/baseline_grid_edges.py); without it the baselines run at compare.TUNED. Then every arm's iterates are
evaluated on 64 other held-out prompts (compare.evaluate_arms) and on the factual questions (compare.factual_arms). Prints the tables and
each stage's time; writes benchmarks/results/smollm2_compare-seed<seed>[-sweep]-<hw>.json (-sweep: a --sweep run,
so it never overwrites a TUNED run's record). Everything is resumable.

    python benchmarks/smollm2_compare.py --table benchmarks/results/smollm2_compare-seed1-cpu-x86_64-2threads.json

prints a written result as BENCHMARKS.md's Markdown table, without running anything.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from common import hardware, processor, versions
from sppo_lite import compare, evaluation_run, loop

ROOT = Path(__file__).resolve().parent.parent
BETAS = (0.03, 0.1, 0.3)
LRS = (1.5e-4, 5e-4, 1.5e-3)


def stage_seconds(run) -> dict:
    return {f"iter{r['iteration']}/{r['stage']}": r["elapsed_s"] for r in evaluation_run.stage_table(run.output_dir)}


def _ci(r: dict, key: str = "win_rate", scale: float = 1.0, sign: str = "") -> str:
    low, high = (scale * x for x in r[key + "_ci"])
    return f"{scale * r[key]:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"


def markdown_table(record: dict) -> str:
    """A written result as Markdown: each arm's iterates vs π₀, π̄, cut-off share, length, facts; the head-to-heads."""
    r, f = record["result"], record["result"]["factual"]
    T = str(r["iterations"])
    base = r["vs_base"]["sppo"]["0"]
    lines = [f"| arm | π_1 vs π₀ | π_2 vs π₀ | π_{T} vs π₀ (LC) | π̄ vs π₀ | π̄ vs π_{T} | cut off, π_{T} "
             f"(π₀ {100 * r['cut_off']['sppo']['0']:.0f} %) | characters, π_{T} (π₀ {base['mean_chars_baseline']:.0f}) "
             f"| factual, π_{T} vs π₀ {100 * f['sppo']['accuracy']['0']:.1f} % (right only here / only in π₀) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in compare.ARMS:
        vb, fa = r["vs_base"][arm], f[arm]["vs_base"][T]
        p = fa["mcnemar_p"]
        facts = (f"{100 * fa['accuracy']:.1f} % ({_ci(fa, 'difference', 100, '+')}, {fa['only_model']} / "
                 f"{fa['only_baseline']}{'' if p >= 0.05 else f', McNemar p {p:.2g}'})")
        iterates = [_ci(vb[str(t)]) for t in range(1, int(T))] + [f"{_ci(vb[T])} ({vb[T]['lc_win_rate']:.1f})"]
        lines.append(f"| {compare.ARM_NAMES[arm]} | {' | '.join(iterates)} | {_ci(r['average_vs_base'][arm])} | "
                     f"{_ci(r['average_vs_last'][arm])} | {100 * r['cut_off'][arm][T]:.0f} % | "
                     f"{vb[T]['mean_chars_model']:.0f} | {facts} |")
    lines.append("")
    for key, per in r["head_to_head"].items():
        a, b = key.split("_vs_")
        lines.append(f"- {compare.ARM_NAMES[a]} vs {compare.ARM_NAMES[b]} at iterations 1 … {T}: "
                     + " / ".join(f"{_ci(per[str(t)])} (LC {per[str(t)]['lc_win_rate']:.1f})"
                                  for t in range(1, int(T) + 1)))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the arms, the sweep and the cached answers land here")
    parser.add_argument("--table", metavar="RESULT_JSON", help="print a written result as Markdown and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="tune each baseline on iteration 1 first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--n-validation", type=int, default=40)
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    if not args.root:
        parser.error("--root is required to run the comparison (or --table to print a written result)")
    torch.set_num_threads(args.threads)
    hw = hardware("cpu")
    config = loop.load_config(ROOT / "configs" / "cpu-smollm2-compare.yaml", [f"seed={args.seed}"])
    eval_prompts, validation = compare.split_prompts(config, args.n_eval, args.n_validation)
    generation = compare.eval_generation(config)
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
    print(f"seed {args.seed}: {len(eval_prompts)} evaluation prompts, {T} iterations, on {hw} ({processor()}), "
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
    path = ROOT / "benchmarks" / "results" / f"smollm2_compare-seed{args.seed}{'-sweep' if args.sweep else ''}-{hw}.json"
    path.write_text(json.dumps({
        "hardware": hw, "processor": processor(), "versions": versions(), "args": vars(args), "betas": BETAS, "learning_rates": LRS,
        "load_average": os.getloadavg()[0], "minutes": {"arms": round(trained / 60, 1), "evaluation": round(evaluated / 60, 1)},
        "sweeps": {k: [{kk: v for kk, v in p.items() if kk != "run_dir"} for p in pts] for k, pts in sweeps.items()},
        "chosen": {k: {"beta": v["beta"], "learning_rate": v["learning_rate"]} for k, v in chosen.items()},
        "stage_seconds": {arm: stage_seconds(run) for arm, run in runs.items()}, "result": out}, indent=1, default=float))
    print(f"written: {path.relative_to(ROOT)}")
    print(markdown_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
