#!/usr/bin/env bash
# sppo-lite's first GPU check, in one command: three parts, each under its own time cap, so that one
# failure or overrun leaves the others. Everything it writes goes to $OUT (at most 7 files):
#
#   1. pipeline  benchmarks/gpu_smoke.py: one iteration of configs/cpu-tiny.yaml on cuda with
#                policy.mode=qlora, every stage (generate, judge, build, train + merge into π_2, hand-off:
#                π_2 loaded as iteration 2 loads it, a few tokens sampled)  → gpu_smoke-<gpu>.json
#   2. qlora     benchmarks/qlora_step.py --shapes 1024x8 --variants sppo_lite,trl --profile-if-behind:
#                random-init Mistral-7B shape, weights made on the GPU (no checkpoint)  → qlora_step-<gpu>.json
#   3. judge     benchmarks/judge_throughput.py --ranker large --prompts 16 --repeats 1 --profile-if-behind:
#                official fp32 batch-1 PairRM vs PairRMJudge  → judge-<gpu>.json
#   plus pipeline.log, qlora.log, judge.log (each part's full output) and summary.txt (machine, versions,
#   wheel install, each part's status, the headline numbers).
#
# Caps (seconds; override with CAP_INSTALL, CAP_PIPELINE, CAP_QLORA, CAP_JUDGE): install 30, pipeline 100,
# qlora 200, judge 150: 480 s at most, so that the 15 minutes of device time (the start included) leave room
# to rerun one part: ONLY="judge" bash benchmarks/gpu_check.sh runs just the parts named. Targets are reported, never asserted: sppo-lite's
# QLoRA step ≥ 1.1× TRL's tokens/s at ≤ 0.9× its peak memory; judging ≥ 5× the official prompts/s with the
# same decisions. A part that misses its target puts a torch.profiler table in its JSON.
#
# On a lent H200 (device tool), from the repository root, after `bash benchmarks/fetch_gpu_wheels.sh` here:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# The image has torch, transformers, peft and accelerate but no bitsandbytes, trl, llm-blender or datasets:
# the wheels in .whl/ (about 44 MiB) are installed first with pip --no-index --no-deps --target, each only
# when its package is not installed already.
#
#   bash benchmarks/gpu_check.sh --dry-run     # every part at tiny size on CPU (bitsandbytes 4-bit on CPU)
#
# --dry-run: gpu_smoke.py --device cpu; qlora_step.py --tiny --shapes 128x8 (1 warm-up + 2 steps);
# judge_throughput.py --ranker tiny --prompts 4; and, when .whl/ exists, the wheels installed into a
# scratch folder for Python 3.12 / manylinux x86_64 (what the device does) plus the size that would travel.
# $OUT defaults to outputs/gpu_check[-dry-run]. PYTHON picks the interpreter (default python3). Exit
# status 0 when every part passed, 1 otherwise.
set -u

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
if [ -z "${OUT:-}" ]; then
  OUT=$ROOT/outputs/gpu_check$([ "$DRY" = 1 ] && echo -dry-run)
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
# Run folders, models and rankers: never under $OUT (only a few files come back from it). A fixed name
# (digits only): llm-blender special-cases paths containing "llama", "alpaca" or "phi".
WORK=${TMPDIR:-/tmp}/sppo-gpu-check-$$
mkdir -p "$WORK" || exit 2
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

CAP_INSTALL=${CAP_INSTALL:-30}
CAP_PIPELINE=${CAP_PIPELINE:-100}
CAP_QLORA=${CAP_QLORA:-200}
CAP_JUDGE=${CAP_JUDGE:-150}
ONLY=${ONLY:-pipeline qlora judge}

export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false

SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
T_START=$(date +%s)

say "== sppo-lite gpu_check $([ "$DRY" = 1 ] && echo '--dry-run (CPU, tiny sizes)') — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "results: $OUT"
say "python: $($PY -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
if command -v nvidia-smi >/dev/null 2>&1; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
fi

# ------------------------------------------------------------------ carried wheels
install_wheels() {  # target folder; prints what it does; sets MISSING
  local target=$1
  shift
  MISSING=$($PY - <<'EOF'
import glob
import os
from importlib import metadata

for path in sorted(glob.glob(".whl/*.whl")):
    name = os.path.basename(path).split("-")[0]
    for candidate in (name, name.replace("_", "-")):
        try:
            metadata.version(candidate)
            break
        except metadata.PackageNotFoundError:
            pass
    else:
        print(path)
EOF
)
  if [ -z "$MISSING" ]; then
    say "wheels: every package in .whl/ is installed already"
    return 0
  fi
  say "wheels: installing $(echo $MISSING | wc -w) into $target: $(echo $MISSING | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  timeout --kill-after=5 "$CAP_INSTALL" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$target" "$@" $MISSING 2>&1 | tail -n 5 | tee -a "$SUMMARY"
  return "${PIPESTATUS[0]}"
}

if [ -d .whl ]; then
  if [ "$DRY" = 1 ]; then
    # Here the packages are installed already: unpack every carried wheel as the device would, for its
    # Python 3.12 on manylinux x86_64, into a scratch folder (nothing is imported from it).
    T0=$(date +%s)
    MISSING=$(ls .whl/*.whl 2>/dev/null)
    # shellcheck disable=SC2086
    if timeout --kill-after=5 "$CAP_INSTALL" $PY -m pip install -q --no-index --no-deps --no-compile \
         --no-cache-dir --target "$WORK/site" --python-version 3.12 --implementation cp \
         --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 --only-binary=:all: $MISSING \
         >"$WORK/pip.log" 2>&1; then
      say "wheels: all $(echo $MISSING | wc -w) in .whl/ install for Python 3.12 manylinux x86_64 ($(( $(date +%s) - T0 )) s)"
    else
      say "wheels: FAILED to install for Python 3.12: $(tail -n 1 "$WORK/pip.log")"
    fi
  else
    SITE=${TMPDIR:-/tmp}/sppo-gpu-site
    T0=$(date +%s)
    if install_wheels "$SITE"; then
      export PYTHONPATH=$ROOT:$SITE${PYTHONPATH#"$ROOT"}
      say "wheels: done in $(( $(date +%s) - T0 )) s"
    else
      say "wheels: pip install FAILED; the parts run with what is importable"
    fi
  fi
  say "wheels: .whl/ holds $(du -sm .whl | cut -f1) MiB"
else
  say "wheels: no .whl/ folder (make one with bash benchmarks/fetch_gpu_wheels.sh)"
fi
if [ "$DRY" = 1 ] && command -v git >/dev/null 2>&1 && git rev-parse --git-dir >/dev/null 2>&1; then
  TREE=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
  WHL=$(du -sb .whl 2>/dev/null | cut -f1)
  say "travel size: working tree $(( ${TREE:-0} / 1048576 )) MiB + .whl $(( ${WHL:-0} / 1048576 )) MiB (device limit 64 MiB)"
fi
say "versions: $($PY - <<'EOF' 2>&1
from importlib import metadata

out = []
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "llm-blender", "datasets",
             "pyarrow", "fsspec", "huggingface-hub", "dill", "multiprocess"):
    try:
        out.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        out.append(f"{name} MISSING")
print(", ".join(out))
EOF
)"

# ------------------------------------------------------------------ the three parts
declare -A STATUS SECONDS_OF
PARTS=()
part() {  # name cap command...: run under `timeout`, log to $OUT/<name>.log, record the status
  local name=$1 cap=$2
  shift 2
  case " $ONLY " in *" $name "*) ;; *) say "-- part $name: skipped (not in ONLY)"; return ;; esac
  PARTS+=("$name")
  say ""
  say "-- part $name (cap ${cap} s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$cap" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  SECONDS_OF[$name]=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then
    STATUS[$name]=passed
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    STATUS[$name]="TIMED OUT (cap ${cap} s)"
  else
    STATUS[$name]="FAILED (exit $rc)"
  fi
  tail -n 12 "$OUT/$name.log"
  say "-- part $name: ${STATUS[$name]} in ${SECONDS_OF[$name]} s"
}

if [ "$DRY" = 1 ]; then
  part pipeline "$CAP_PIPELINE" $PY benchmarks/gpu_smoke.py --device cpu --name cpu-dry-run \
    --work-dir "$WORK/pipeline" --results-dir "$OUT"
  part qlora "$CAP_QLORA" $PY benchmarks/qlora_step.py --tiny --shapes 128x8 --variants sppo_lite,trl \
    --warmup 1 --steps 2 --profile-if-behind --workdir "$WORK/qlora" --results-dir "$OUT" --timeout "$CAP_QLORA"
  part judge "$CAP_JUDGE" $PY benchmarks/judge_throughput.py --ranker tiny --prompts 4 --batch-size 2 \
    --repeats 1 --profile-if-behind --workdir "$WORK/judge" --results-dir "$OUT"
else
  part pipeline "$CAP_PIPELINE" $PY benchmarks/gpu_smoke.py --device cuda \
    --work-dir "$WORK/pipeline" --results-dir "$OUT"
  part qlora "$CAP_QLORA" $PY benchmarks/qlora_step.py --shapes 1024x8 --variants sppo_lite,trl \
    --profile-if-behind --workdir "$WORK/qlora" --results-dir "$OUT" --timeout "$CAP_QLORA"
  part judge "$CAP_JUDGE" $PY benchmarks/judge_throughput.py --ranker large --prompts 16 --repeats 1 \
    --profile-if-behind --workdir "$WORK/judge" --results-dir "$OUT"
fi

# ------------------------------------------------------------------ summary
say ""
say "== summary ($(( $(date +%s) - T_START )) s in all)"
FAILED=0
for name in "${PARTS[@]}"; do
  say "$(printf '  %-9s %-24s %5s s' "$name" "${STATUS[$name]}" "${SECONDS_OF[$name]}")"
  [ "${STATUS[$name]}" = passed ] || FAILED=1
done
say "$($PY - "$OUT" <<'EOF' 2>&1
import glob
import json
import sys

out = sys.argv[1]


def load(pattern):
    paths = sorted(glob.glob(f"{out}/{pattern}"))
    return json.load(open(paths[-1])) if paths else None


def num(x, spec):
    return "—" if x is None else format(x, spec)


lines = []
smoke = load("gpu_smoke-*.json")
if smoke:
    stages = ", ".join(f"{s} {v['seconds']} s / {num(v['peak_gb'], '.2f')} GB" for s, v in smoke["stages"].items())
    lines.append(f"  pipeline: ok={smoke['ok']} on {smoke['gpu']}: {stages}" + (f"; error: {smoke['error']}" if smoke["error"] else ""))
qlora = load("qlora_step-*.json")
if qlora:
    for variant in ("sppo_lite", "trl"):
        r = qlora.get(variant, {})
        if "error" in r:
            lines.append(f"  qlora {qlora['shape']} {variant}: error: {r['error']}")
        elif r:
            lines.append(f"  qlora {qlora['shape']} {variant}: {num(r.get('tokens_per_s'), ',.0f')} tok/s, peak "
                         f"{num(r.get('peak_gb'), '.2f')} GB, {num(r.get('speed_vs_trl'), '.2f')}× TRL speed, "
                         f"{num(r.get('memory_vs_trl'), '.2f')}× TRL memory (load {num(r.get('load_s'), '.1f')} s, "
                         f"worker {num(r.get('wall_s'), '.0f')} s)")
    lines.append(f"  qlora targets missed: {qlora.get('targets', {}).get('missed')}"
                 + (" (profile in the JSON)" if "profile" in qlora else ""))
judge = load("judge-*.json")
if judge:
    lines.append(f"  judge {judge['ranker']} ×{judge['prompts']}: official {judge['official']['prompts_per_s']:.2f} "
                 f"prompts/s, sppo-lite {judge['sppo_lite']['prompts_per_s']:.2f} ({judge['speedup']:.2f}×), sorted "
                 f"{judge['speedup_sorted']:.2f}×; same decisions {judge['same_decisions']} "
                 f"({judge['decisions_differ']} differ), max |ΔP| {judge['max_prob_diff']:.1e}"
                 + (" (profile in the JSON)" if "profile" in judge else ""))
print("\n".join(lines) or "  no result files")
EOF
)"
say "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
