"""Past the edges of the baselines' β grid: was the best β of iterative DPO / IPO on the grid's border?

    HF_HUB_OFFLINE=1 python benchmarks/baseline_grid_edges.py --root outputs/grid-edges --seed 0

smollm2_compare.py --sweep chose DPO's β = 0.3 and IPO's β = 0.03 from β ∈ {0.03, 0.1, 0.3}: one at each edge,
so the best β may lie outside the grid. This runs the same protocol one step past each edge, at the chosen
learning rate, on the recipe as it is now (configs/cpu-smollm2-compare.yaml, bf16): DPO at β ∈ {0.3, 1, 3} and
IPO at β ∈ {0.003, 0.01, 0.03}, the chosen point included so that every score below comes from one precision and
one machine. Each point trains iteration 1 on the SPPO arm's iteration-1 rows (compare.sweep) and is scored by its
π_1's committee win rate against π₀ on the 40 validation prompts (not the evaluation prompts). Prints one row per
point and whether a point past the edge beats the sweep's pick (compare.TUNED takes the best of them); writes
benchmarks/results/baseline_grid_edges-seed<seed>-<hw>.json. Resumable; --reuse-sppo takes a finished SPPO arm
(e.g. notebook 05's outputs/05_evaluation/compare/sppo at the same seed) instead of training one.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from common import hardware, processor, versions
from sppo_lite import compare, loop

ROOT = Path(__file__).resolve().parent.parent
SWEPT = {"dpo": 0.3, "ipo": 0.03}  # the β that smollm2_compare.py --sweep picked from {0.03, 0.1, 0.3}
GRID = {"dpo": (0.3, 1.0, 3.0), "ipo": (0.003, 0.01, 0.03)}  # the sweep's pick and past its edge


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the sweep points and their cached answers land here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-sppo", help="a finished SPPO arm of the comparison recipe at this seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-validation", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = loop.load_config(compare.COMPARE_RECIPE, [f"seed={args.seed}"])
    validation = compare.split_prompts(config, n_validation=args.n_validation)[1]
    generation = compare.eval_generation(config)
    root = Path(args.root)
    sppo = Path(args.reuse_sppo) if args.reuse_sppo else root / "sppo"
    if args.reuse_sppo and not (sppo / "iter1" / "build").is_dir():
        raise SystemExit(f"{sppo} has no finished iteration-1 build stage: give a finished SPPO arm or drop --reuse-sppo")
    t0 = time.time()
    if not args.reuse_sppo:
        compare.run_arm(compare.arm_config(config, "sppo"), sppo, iterations=1)
    judge = loop.make_judge(config)
    points = {}
    for arm, betas in GRID.items():
        lr = compare.TUNED[arm]["learning_rate"]
        points[arm] = compare.sweep(config, root, arm, betas, [lr], validation, judge, reuse_from=sppo, **generation)
    minutes = (time.time() - t0) / 60
    print(f"seed {args.seed}, {len(validation)} validation prompts, on {hardware('cpu')} ({processor()}), "
          f"{minutes:.1f} min")
    verdicts = {}
    for arm, pts in points.items():
        chosen_beta = SWEPT[arm]
        for p in pts:
            mark = ("  (the sweep's pick)" if p["beta"] == chosen_beta else "") + \
                   ("  (compare.TUNED)" if p["beta"] == compare.TUNED[arm]["beta"] else "")
            print(f"{compare.ARM_NAMES[arm]:<14} β {p['beta']:<6g} lr {p['learning_rate']:g}: π_1 vs π₀ "
                  f"{p['win_rate']:.1f} [{p['win_rate_ci'][0]:.1f}, {p['win_rate_ci'][1]:.1f}]{mark}")
        best = compare.best_point(pts)
        verdicts[arm] = {"chosen_beta": chosen_beta, "best_beta": best["beta"],
                         "edge_beats_chosen": best["beta"] != chosen_beta}
        print(f"  best β here: {best['beta']:g}; "
              f"{'a point past the edge scores higher' if best['beta'] != chosen_beta else 'the chosen β stays best'}")
    path = ROOT / "benchmarks" / "results" / f"baseline_grid_edges-seed{args.seed}-{hardware('cpu')}.json"
    path.write_text(json.dumps({
        "hardware": hardware("cpu"), "processor": processor(), "versions": versions(), "args": vars(args),
        "load_average": os.getloadavg()[0], "minutes": round(minutes, 1), "grid": GRID,
        "points": {arm: [{k: v for k, v in p.items() if k not in ("run_dir", "win_probs")} for p in pts]
                   for arm, pts in points.items()},
        "verdicts": verdicts}, indent=1, default=float))
    print(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
