"""PairRM judging throughput: the official SPPO setting vs sppo-lite's batched PairRMJudge, one run.

    python benchmarks/judge_throughput.py --ranker tiny --prompts 16 --batch-size 8   # CPU: tiny trained ranker
    python benchmarks/judge_throughput.py --ranker large --prompts 64     # GPU: a random PairRM-sized ranker
    python benchmarks/judge_throughput.py --ranker DIR --prompts 64       # a local llm-blender/PairRM download

K = 5 responses per prompt; synthetic text from a seeded word list: prompts of 50–250 words,
responses of 100–400 words. Both paths judge the same prompts and rank every ordered pair (K(K−1)
ranker passes per prompt); the time covers tokenisation, the ranker and the scores → matrix step.

    official          fp32 ranker, `Blender.rank([prompt], [responses], return_scores=True, batch_size=1)`
                      one prompt at a time, as the SPPO rank script does, then P_ij = σ(s_i − s_j)
    sppo_lite         PairRMJudge(mode="official").win_matrices(all prompts): `--batch-size` prompts per
                      Blender.rank batch, fp16 on a GPU (fp32 on CPU)
    sppo_lite_sorted  the same judge fed the prompts longest-first and the matrices put back in order:
                      llm-blender pads each batch to its longest text, and PairRMJudge does not bucket
                      by length itself, so this row shows what bucketing would gain (nothing with the
                      tiny ranker: its 64-token limits cut every text to the same length)

Reported: prompts/s (median of `--repeats` interleaved rounds) and the speed-up over official (same
run), whether the trained pair
(chosen, rejected) = (argmax, argmin) is the same for every prompt, and max |P_official − P_sppo_lite|.
Writes benchmarks/results/judge-<hardware>[-tiny].json (`--results-dir` moves it). With
--profile-if-behind, when sppo-lite is under `--target-speedup` (5×) the official speed, one batch of
PairRMJudge.win_matrices is profiled and its top ops go in the JSON under "profile".

`--ranker large` is `sppo_lite.pairrm.build_pairrm(size="large")`: DeBERTa-v3-large-shaped (hidden 1024,
24 layers, 16 heads, MLP 4096) with random weights, in the tiny ranker's layout: its speed is PairRM's,
its decisions are not (random scores sit close together, so fp16 rounding can flip a
near-tie); check decision parity on the tiny trained ranker or real PairRM weights.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from common import hardware

from sppo_lite.data import probs_from_scores, select_pairs
from sppo_lite.judges import PairRMJudge
from sppo_lite.pairrm import build_pairrm, load_blender

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a of to and is it this that with for on as be by are was can will not more most very "
         "answer question explain reason example step first then next finally because however also "
         "good better clear simple short long detailed helpful polite correct wrong true false "
         "water light tree river city music book story code data model number time place people "
         "sun moon blue red green warm cold fast slow small big happy calm").split()


def synthetic_prompts(n: int, k: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n prompts of 50–250 words, each with k responses of 100–400 words."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    prompts = [text(50, 250) for _ in range(n)]
    return prompts, [[text(100, 400) for _ in range(k)] for _ in prompts]


def ranker_dir(ranker: str, workdir: Path) -> str:
    if ranker not in ("tiny", "large"):
        return ranker  # a local ranker directory
    path = workdir / f"pairrm-{ranker}"
    if not (path / "config.json").exists():
        print(f"building the {ranker} ranker (once; kept in --workdir) ...", flush=True)
        # large: its tokenizer learns WORDS, so each word of the synthetic texts is about one token, as in PairRM
        build_pairrm(path, size=ranker, **({"words": WORDS} if ranker == "large" else {}))
    return str(path)


def official_matrices(blender, prompts, responses) -> list[np.ndarray]:
    """The SPPO rank script's loop: one prompt per Blender.rank call, batch_size=1, then σ(s_i − s_j)."""
    out = []
    for prompt, candidates in zip(prompts, responses):
        scores = blender.rank([prompt], [candidates], return_scores=True, batch_size=1, disable_tqdm=True)
        out.append(probs_from_scores(scores[0]))
    return out


def sorted_matrices(judge, prompts, responses) -> list[np.ndarray]:
    """PairRMJudge fed longest-first (prompt + longest response), matrices returned in the original order."""
    order = sorted(range(len(prompts)), key=lambda n: -(len(prompts[n]) + max(map(len, responses[n]))))
    matrices = judge.win_matrices([prompts[n] for n in order], [responses[n] for n in order])
    out = [None] * len(prompts)
    for n, M in zip(order, matrices):
        out[n] = M
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def profile_batch(judge, prompts, responses, on_gpu: bool, rows: int = 25) -> dict:
    """torch.profiler over one PairRMJudge.win_matrices batch: top ops by self device (GPU) or CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, record_shapes=True) as prof:
        judge.win_matrices(prompts, responses)
        if on_gpu:
            torch.cuda.synchronize()
    sort = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    return {"prompts": len(prompts), "sort_by": sort,
            "output": prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)}


def compare(reference, matrices) -> dict:
    pairs = [(select_pairs(a)[0], select_pairs(b)[0]) for a, b in zip(reference, matrices)]
    differ = sum((a["chosen_index"], a["rejected_index"]) != (b["chosen_index"], b["rejected_index"])
                 for a, b in pairs)
    return {"same_decisions": differ == 0, "decisions_differ": differ,
            "max_prob_diff": float(max(np.abs(a - b).max() for a, b in zip(reference, matrices)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranker", default="tiny", help="tiny | large | a local ranker directory")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per Blender.rank batch (sppo-lite)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the median time is reported")
    ap.add_argument("--threads", type=int, default=1, help="CPU only: intra-op threads (one is faster and "
                                                          "steadier for these small tensors on a shared CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sppo-lite-bench"),
                    help="where the tiny / large ranker is built once and reused")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"), help="where the JSON goes")
    ap.add_argument("--profile-if-behind", action="store_true",
                    help="profile one sppo-lite batch when the speed-up misses --target-speedup; tables in the JSON")
    ap.add_argument("--target-speedup", type=float, default=5.0, help="sppo-lite over official prompts/s (reported only)")
    args = ap.parse_args()

    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)  # subnormal floats slow CPU ops at random moments (not GPUs); per thread
    path = ranker_dir(args.ranker, Path(args.workdir))
    prompts, responses = synthetic_prompts(args.prompts, args.k)
    on_gpu = args.device.startswith("cuda")
    ours_dtype = torch.float16 if on_gpu else torch.float32
    official = load_blender(path, device=args.device, dtype=torch.float32)
    judge = PairRMJudge(path, mode="official", device=args.device, batch_size=args.batch_size, dtype=ours_dtype)

    n = len(prompts)
    print(f"warm-up ({args.device}) ...", flush=True)
    official_matrices(official, prompts[:2], responses[:2])  # warm-up (kernels, allocator)
    judge.win_matrices(prompts[:args.batch_size], responses[:args.batch_size])
    runs = {"official": (official_matrices, official), "sppo_lite": (judge.win_matrices,),
            "sppo_lite_sorted": (sorted_matrices, judge)}
    seconds = {name: [] for name in runs}
    for r in range(args.repeats):  # interleaved rounds: a busy neighbour slows all three paths alike
        for name, (fn, *bound) in runs.items():
            matrices, s = timed(fn, *bound, prompts, responses)
            seconds[name].append(s)
            print(f"round {r + 1}/{args.repeats}: {name} {s:.2f} s ({n / s:.2f} prompts/s)", flush=True)
            if name == "official":
                reference = matrices
            elif name == "sppo_lite":
                ours = matrices
            else:
                ours_sorted = matrices
    official_s, ours_s, sorted_s = (float(np.median(seconds[name])) for name in runs)

    hw = hardware(args.device)
    result = {
        "hardware": hw, "ranker": args.ranker if args.ranker in ("tiny", "large") else Path(path).name,
        "device": args.device, "prompts": n, "k": args.k, "batch_size": args.batch_size, "repeats": args.repeats,
        "seconds_per_round": seconds,
        "official": {"prompts_per_s": n / official_s, "seconds": official_s, "dtype": "float32", "batch_size": 1},
        "sppo_lite": {"prompts_per_s": n / ours_s, "seconds": ours_s, "dtype": str(ours_dtype).split(".")[-1],
                      "batch_size": args.batch_size},
        "sppo_lite_sorted": {"prompts_per_s": n / sorted_s, "seconds": sorted_s, **compare(reference, ours_sorted)},
        "speedup": official_s / ours_s, "speedup_sorted": official_s / sorted_s,
        **compare(reference, ours),
        "versions": {name: metadata.version(name) for name in ("torch", "transformers", "llm-blender")},
    }
    result["targets"] = {"speedup": args.target_speedup, "same_decisions": True,
                         "met": result["speedup"] >= args.target_speedup and result["same_decisions"]}
    if args.profile_if_behind and result["speedup"] < args.target_speedup:
        print(f"speed-up {result['speedup']:.2f}× < {args.target_speedup}×: profiling one sppo-lite batch ...", flush=True)
        result["profile"] = profile_batch(judge, prompts[:args.batch_size], responses[:args.batch_size], on_gpu)
    suffix = "-tiny" if args.ranker == "tiny" else ""
    out = Path(args.results_dir) / f"judge-{hw}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    ours_label = f"sppo-lite ({result['sppo_lite']['dtype']}, batch {args.batch_size})"
    print(f"{hw}, ranker {result['ranker']}, {n} prompts × K={args.k}, median of {args.repeats} rounds:")
    print(f"  {'official (fp32, batch 1, one prompt per call)':<48} {n / official_s:8.2f} prompts/s")
    print(f"  {ours_label:<48} {n / ours_s:8.2f} prompts/s  {result['speedup']:5.2f}×")
    print(f"  {'sppo-lite, prompts sorted by length':<48} {n / sorted_s:8.2f} prompts/s  {result['speedup_sorted']:5.2f}×")
    print(f"  same (chosen, rejected) on every prompt: {result['same_decisions']} "
          f"({result['decisions_differ']} differ); max |ΔP| = {result['max_prob_diff']:.2e}"
          f" (sorted: {result['sppo_lite_sorted']['same_decisions']}, "
          f"{result['sppo_lite_sorted']['max_prob_diff']:.2e})")
    print(f"written {out}")


if __name__ == "__main__":
    main()
