"""One SPPO iteration of the cpu-tiny recipe on a GPU with QLoRA, stage by stage: what runs, how long, how much memory.

    python benchmarks/gpu_smoke.py                          # CUDA: cpu-tiny recipe, policy.mode=qlora, iteration 1
    python benchmarks/gpu_smoke.py --device cpu --name cpu-dry-run   # the same code on CPU (bitsandbytes 4-bit on CPU)

Runs the loop's own stage functions in this process (sppo_lite.loop.STAGE_FUNCTIONS: generate, judge,
build, train; train ends with the adapter merged into π_2), then the hand-off: π_2 is loaded the way
iteration 2 loads its generator and samples a few tokens. The recipe is configs/cpu-tiny.yaml with
policy.mode=qlora, the policy and judge on --device, and the GPU settings of the QLoRA recipe
(train.bf16=auto, gradient checkpointing on); `--set` adds overrides.

Writes <results-dir>/gpu_smoke-<gpu>.json:
    {"ok": bool, "gpu": name, "stages": {stage: {"seconds", "peak_gb"}}, "error": null or the last line}
peak_gb is torch.cuda.max_memory_allocated during the stage (null on CPU). The first stage that
raises ends the run: it is recorded with its time and memory, its traceback goes to stderr, and the
last line of that traceback is "error". Exit status 0 when every stage ran, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("generate", "judge", "build", "train", "handoff")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unknown"


def handoff_stage(run, t: int = 1) -> None:
    """π_{t+1} loaded as iteration t+1 loads its generator, and a few sampled tokens from it."""
    import torch

    from sppo_lite import loop
    from sppo_lite.generation import generate_responses
    from sppo_lite.loop.stages import _load_inference_policy

    policy = run.policy_path(t + 1)  # raises when iteration t's train stage has not finished
    model, tokenizer = _load_inference_policy(policy, run.config)
    prompts = loop.iteration_prompts(run.config, t + 1)[1][:2]
    ds, stats = generate_responses(model, tokenizer, prompts, k=2, max_new_tokens=8, seed=run.config["seed"],
                                   progress=False)
    if stats["generated"] != len(prompts) or not any(r for rs in ds["responses"] for r in rs):
        raise RuntimeError(f"π_{t + 1} generated nothing: {stats}")
    run.log(f"handoff: π_{t + 1} loaded from {policy} and sampled {len(prompts)} prompts × 2 "
            f"(first: {ds['responses'][0][0][:60]!r})")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--config", default=str(ROOT / "configs" / "cpu-tiny.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    ap.add_argument("--work-dir", help="the run's output folder (default: a new temporary folder)")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", help="the label in the file name and in \"gpu\" (default: the GPU's name)")
    args = ap.parse_args(argv)

    import torch

    from sppo_lite import loop

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU: use --device cpu for the dry run")
    gpu = args.name or (torch.cuda.get_device_name(0) if cuda else "cpu")
    overrides = ["iterations=1", "policy.mode=qlora", f"policy.device={args.device}", f"judge.device={args.device}",
                 "train.bf16=auto", "train.activation_checkpointing=true", *args.set]
    result = {"ok": False, "gpu": gpu, "stages": {}, "error": None}
    out = Path(args.results_dir) / f"gpu_smoke-{slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_smoke_"))
    print(f"gpu_smoke: {gpu}, recipe {args.config} with {' '.join(overrides)}; run folder {work}", flush=True)

    try:
        config = loop.load_config(args.config, overrides)
        loop.quiet_datasets()
        run = loop.Run(config, work)
        run.output_dir.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            entry = result["stages"][stage] = {"seconds": None, "peak_gb": None}
            try:
                if stage == "handoff":
                    handoff_stage(run, 1)
                else:
                    loop.STAGE_FUNCTIONS[stage](run, 1)
                if cuda:
                    torch.cuda.synchronize()
            finally:
                entry["seconds"] = round(time.perf_counter() - t0, 2)
                if cuda:
                    entry["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
            print(f"gpu_smoke: {stage} {entry['seconds']:.1f} s, peak {entry['peak_gb']} GB", flush=True)
        result["ok"] = True
    except Exception:  # noqa: BLE001 - any failure is the finding: record it, keep the traceback in the log
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        result["error"] = lines[-1] if lines else "unknown error"  # the failing stage is the last in "stages"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"gpu_smoke: {'ok' if result['ok'] else 'FAILED'}; written {out}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
