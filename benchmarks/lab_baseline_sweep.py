"""Notebook 03's baselines at their own best: iterative DPO and IPO over a β × learning-rate grid, SPPO beside.

    python benchmarks/lab_baseline_sweep.py --seeds 0 1 2 --output-dir outputs/lab_sweep

Every arm is the lab's (sppo_lite.lab.lab_config: 20 iterations, 32 prompts, K = 8, 2 epochs, the same SFT
policy π_0, prompts and judge, the same optimizer steps per iteration); SPPO runs at the notebook's β = 0.15,
lr 3e-3. The score is the average iterate's final exploitability (broken answers counted), the number the
notebook compares. Prints each method's grid and best per seed; writes benchmarks/results/lab_baseline_sweep-*.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sppo_lite import lab, loop
from sppo_lite.data import load_prompts

from common import hardware, versions

ROOT = Path(__file__).resolve().parents[1]
BETAS = (0.15, 0.5, 2.0)
LRS = (1e-4, 3e-4, 1e-3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output-dir", default="outputs/lab_sweep")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loop.quiet_datasets()
    prompts_file = ROOT / "data" / "prompts.jsonl"
    prompts = load_prompts(prompts_file)[:32]
    results = {"hardware": hardware("cpu"), "versions": versions(), "betas": BETAS, "learning_rates": LRS, "seeds": {}}
    for seed in args.seeds:
        out = Path(args.output_dir) / f"seed{seed}"
        log = out / "lab.log"
        t0 = time.time()
        policy = lab.build_lab_policy(out / "policy", prompts, mix=(0.6, 0.3, 0.1), per_prompt=8, epochs=8,
                                      seed=seed, log_file=log)
        common = dict(iterations=20, n_prompts=32, k=8, epochs=2, quality_weight=0.2, seed=seed)
        rows = {"sppo": lab.sweep_arms("sppo", [0.15], [3e-3], out, policy, prompts_file, log_file=log, **common)}
        for method in ("dpo", "ipo"):
            rows[method] = lab.sweep_arms(method, BETAS, LRS, out, policy, prompts_file, log_file=log, **common)
        results["seeds"][seed] = {m: [{k: v for k, v in r.items() if k not in ("run", "curves")} for r in rs]
                                  for m, rs in rows.items()}
        results["seeds"][seed]["wall_s"] = round(time.time() - t0, 1)
        print(f"seed {seed} ({time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.1f})")
        for method, rs in rows.items():
            for r in sorted(rs, key=lambda r: (r["beta"], r["learning_rate"])):
                best = " ← best" if r is rs[0] and len(rs) > 1 else ""
                print(f"  {method:4} β {r['beta']:<5g} lr {r['learning_rate']:<7g} average {r['average']:.3f}  "
                      f"last {r['last']:.3f}  rows at t=20 {r['rows_last']:>3}  steps {r['steps']}{best}")
    path = ROOT / "benchmarks" / "results" / f"lab_baseline_sweep-{results['hardware']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
