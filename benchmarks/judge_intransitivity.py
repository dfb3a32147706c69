"""How intransitive is a judge on real samples? SmolLM2-135M-Instruct's own answers, judged two ways.

    HF_HUB_OFFLINE=1 python benchmarks/judge_intransitivity.py --prompts 32 --k 6     # CPU, a few minutes

K seeded samples per prompt (T 0.7, top-p 0.9) from SmolLM2-135M-Instruct, then each prompt's K×K matrix from
    committee   judges.CommitteeJudge: relevance (SmolLM2's PMI of the answer and the prompt), warmth, concision
    sentiment   judges.SentimentJudge: one score per answer (Bradley–Terry, the transitive contrast)
For each judge: the share of response triples that form a cycle (game.cyclic_triple_share, averaged over
prompts), the share of prompts with at least one cycle, and how far each matrix is from its best Bradley–Terry
fit (game.bradley_terry_distance: max |P − σ(s_i − s_j)|). Writes benchmarks/results/judge_intransitivity-<hw>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from common import hardware, versions
from sppo_lite import game, judges
from sppo_lite.data import load_prompts
from sppo_lite.generation import generate_responses
from sppo_lite.modeling import load_policy

ROOT = Path(__file__).resolve().parent.parent


def describe(matrices) -> dict:
    shares = np.array([game.cyclic_triple_share(m) for m in matrices])
    distances = np.array([game.bradley_terry_distance(m) for m in matrices])
    return {"cyclic_triple_share": float(shares.mean()), "prompts_with_a_cycle": float((shares > 0).mean()),
            "bt_distance_mean": float(distances.mean()), "bt_distance_max": float(distances.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = hardware("cpu") if not torch.cuda.is_available() else hardware()
    model, tokenizer = load_policy("smollm2-135m-instruct", dtype="float32")
    prompts = load_prompts(ROOT / "data" / "prompts.jsonl")[: args.prompts]
    t0 = time.time()
    ds, _ = generate_responses(model, tokenizer, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                               temperature=0.7, top_p=0.9, seed=args.seed, batch_size=8, progress=False)
    generated = time.time() - t0
    responses = [list(r) for r in ds["responses"]]
    results = {}
    for name, judge in (("committee", judges.CommitteeJudge((model, tokenizer))), ("sentiment", judges.SentimentJudge())):
        t0 = time.time()
        matrices = judge.win_matrices(prompts, responses)
        results[name] = {**describe(matrices), "seconds": round(time.time() - t0, 1)}
    print(f"{len(prompts)} prompts × K = {args.k} samples of ≤ {args.max_new_tokens} tokens from SmolLM2-135M-Instruct "
          f"({generated:.0f} s to generate), on {hw}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'judge':<10} {'cyclic triples':>15} {'prompts w/ cycle':>17} {'BT distance mean':>17} {'max':>6} {'time':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['cyclic_triple_share']:>15.3f} {r['prompts_with_a_cycle']:>17.3f} "
              f"{r['bt_distance_mean']:>17.3f} {r['bt_distance_max']:>6.3f} {r['seconds']:>6.1f}s")
    out = ROOT / "benchmarks" / "results" / f"judge_intransitivity-{hw}.json"
    out.write_text(json.dumps({"hardware": hw, "versions": versions(), "args": vars(args),
                               "generate_seconds": round(generated, 1), "load_average": os.getloadavg()[0], "results": results}, indent=2))
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
