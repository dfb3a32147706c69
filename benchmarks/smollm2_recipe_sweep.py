"""A candidate setting of configs/cpu-smollm2.yaml, measured: its iterations, then every model vs the base.

    python benchmarks/smollm2_recipe_sweep.py --name lr5e-4_b0.05 --iterations 1 --eval 48 \
        --set train.beta=0.05 --set train.learning_rate=5e-4

Runs `iterations` SPPO iterations of the recipe with the overrides into runs/sweep/<name> (resumable;
--reuse DIR first copies DIR's iter1 generate/judge/build stages when they fit, so candidates that differ
only in training share one sample of π_1), then judges each finished model against the base model on
`eval` held-out prompts (the recipe's prompt source minus every prompt its 3 iterations train on) with
the recipe's judge. Prints and appends one record per candidate to
benchmarks/results/smollm2_recipe_sweep-<hardware>.json: wall time per stage, win rate and LC win rate
with 95 % bootstrap CIs, mean words, and the load average (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import hardware

from sppo_lite import evaluation_run, loop, reproduce

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--eval", type=int, default=48, help="held-out prompts")
    ap.add_argument("--eval-tokens", type=int, default=48)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--reuse", default=None, help="a run folder whose iter1 samples, judgements and pairs to copy")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "sweep"))
    args = ap.parse_args()

    recipe = ROOT / "configs" / "cpu-smollm2.yaml"
    full = loop.load_config(recipe, args.overrides)
    config = loop.apply_overrides(full, [f"iterations={args.iterations}"])
    run_dir = Path(args.runs) / args.name
    if args.reuse and not run_dir.exists():
        for stage in ("generate", "judge", "build"):
            src = Path(args.reuse) / "iter1" / stage
            if src.is_dir():
                shutil.copytree(src, run_dir / "iter1" / stage)
    t0 = time.time()
    resources = reproduce.run_pipeline(config, run_dir)
    wall = time.time() - t0
    run = evaluation_run.load_run(run_dir)
    prompts = evaluation_run.heldout_prompts(full, n=args.eval)  # held out from all 3 of the recipe's iterations
    judge = evaluation_run.make_eval_judge(run)
    t1 = time.time()
    result = evaluation_run.evaluate_iterations(run, prompts, judge, Path(args.runs) / "eval",
                                                max_new_tokens=args.eval_tokens, seed=config["seed"],
                                                batch_size=config["generation"]["batch_size"], log=lambda *a: None)
    eval_s = time.time() - t1
    histories = evaluation_run.train_histories(run_dir)
    record = {"name": args.name, "overrides": args.overrides, "iterations": args.iterations,
              "stages": resources, "pipeline_wall_s": round(wall, 1), "eval_wall_s": round(eval_s, 1),
              "n_eval": len(prompts), "load_average_1_5_15": os.getloadavg(), "hardware": hardware("cpu"),
              "vs_base": {t: {**evaluation_run.jsonable(r), "mean_words_model": r["mean_words_model"],
                              "mean_words_baseline": r["mean_words_baseline"]}
                          for t, r in result["vs_base"].items() if t > 0},
              "last_logratios": {t: {k: h[-1][k] for k in ("logratio/chosen", "target/chosen", "logratio/rejected",
                                                           "target/rejected")} for t, h in histories.items()}}
    print(json.dumps(record, indent=1))
    for t, r in result["vs_base"].items():
        if t:
            print(f"iter{t}: WR {r['win_rate']:.1f} [{r['win_rate_ci'][0]:.1f}, {r['win_rate_ci'][1]:.1f}]  "
                  f"LC {r['lc_win_rate']:.1f}  words {r['mean_words_model']:.1f} (base {r['mean_words_baseline']:.1f})")
    print("example:", repr(result["responses"][0][0][:150]), "→", repr(result["responses"][max(result["responses"])][0][:150]))
    out = ROOT / "benchmarks" / "results" / f"smollm2_recipe_sweep-{hardware('cpu')}.json"
    records = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([r for r in records if r["name"] != args.name] + [record], indent=1))


if __name__ == "__main__":
    main()
