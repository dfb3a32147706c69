"""Does a notebook's every claim hold at other seeds? Run it at each seed with claims reported, not raised.

    python benchmarks/notebook_seeds.py 03 --seeds 0 1 2 --output-dir outputs/seeds            # full setting
    python benchmarks/notebook_seeds.py 02 --seeds 0 --smoke --output-dir outputs/seeds
    python benchmarks/notebook_seeds.py 03 --seeds 1 2 --set 'OUTPUT_DIR="runs/lab/seed{seed}"'   # reuse arms there

Each run is the notebook through papermill (sppo_lite.notebooks.run_notebook) with SEED set and
SPPO_LITE_CLAIMS=report, so a claim the run does not show prints `✗ ...` and the run goes on. Prints one
line per claim with its result at every seed and the wall time of each run; exits 1 when any claim failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from sppo_lite.notebooks import notebook_paths, run_notebook


def claim_lines(executed: Path) -> list[str]:
    """The ✓ / ✗ lines an executed notebook printed, in order, numbers stripped."""
    lines = []
    for cell in json.loads(executed.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            for line in text.splitlines():
                if line.startswith(("✓ ", "✗ ")):
                    lines.append(line.split(" (", 1)[0])
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="a substring of the notebook's name, e.g. 03")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output-dir", default="outputs/notebook_seeds")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="another papermill parameter, e.g. --set ITERATIONS=10")
    args = parser.parse_args(argv)
    (path,) = [p for p in notebook_paths() if args.notebook in p.name]
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    reuse = extra.pop("OUTPUT_DIR", None)  # e.g. --set OUTPUT_DIR='"runs/lab/seed{seed}"': reuse finished arms
    os.environ["SPPO_LITE_CLAIMS"] = "report"
    results, seconds = {}, {}
    for seed in args.seeds:
        t0 = time.time()
        out = Path(args.output_dir) / f"seed{seed}"
        where = {"OUTPUT_DIR": reuse.format(seed=seed)} if reuse else {}
        run_notebook(path, out, smoke=args.smoke, parameters={"SEED": seed, **extra, **where})
        seconds[seed] = time.time() - t0
        results[seed] = claim_lines(out / path.stem / path.name)
    statements = list(dict.fromkeys(line[2:] for lines in results.values() for line in lines))
    print(f"{path.name}, {'SMOKE' if args.smoke else 'full'} setting, on {platform.machine()} with "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("  ".join(f"seed {s}: {seconds[s]:.0f} s" for s in args.seeds))
    failed = 0
    for statement in statements:
        marks = []
        for seed in args.seeds:
            mark = "✓" if f"✓ {statement}" in results[seed] else "✗" if f"✗ {statement}" in results[seed] else "·"
            failed += mark == "✗"
            marks.append(mark)
        print(" ".join(marks), statement)
    print(f"{failed} failed claim-seed pair(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
