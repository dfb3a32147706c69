#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that the GPU machine's image lacks, for its Python 3.12 on
# manylinux x86_64, so that benchmarks/gpu_check.sh can install them there without a package registry:
#
#   bash benchmarks/fetch_gpu_wheels.sh        # from the repository root, on a machine that reaches PyPI
#
# The image has torch 2.11, transformers, peft, accelerate, pyarrow, pandas, fsspec, xxhash, typing-inspect,
# huggingface-hub and the rest of their stack; it lacks bitsandbytes, trl, llm-blender and datasets, and of
# their needs dill, multiprocess (datasets), dataclasses-json and marshmallow (llm-blender). --no-deps: each
# one is named here, one version each. About 44 MiB in all, 41 of them bitsandbytes (its CUDA kernels).
# PYTHON picks the interpreter whose pip downloads (default python3).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  bitsandbytes==0.50.2
  trl==1.16.0
  llm-blender==0.0.2
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  dataclasses-json==0.6.7
  marshmallow==3.26.2
)
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
# One version of each: an older download left in .whl/ would stop the install on the device.
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  version=${spec##*==}
  for f in .whl/"${name//-/_}"-*.whl .whl/"$name"-*.whl; do
    [ -e "$f" ] || continue
    case "$(basename "$f")" in
      "${name//-/_}-$version-"*|"$name-$version-"*) ;;
      *) echo "removing $f (not $spec)"; rm -f "$f" ;;
    esac
  done
done
ls -l .whl
echo "$(ls .whl/*.whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB in .whl/"
