"""Seeded per-row sampling vs plain `generate(do_sample=True)` on SmolLM2-135M-Instruct, same batch, one run.

    python benchmarks/seeded_sampling.py [--prompts 8] [--k 4] [--max-new-tokens 48] [--repeats 3] [--bf16] [--threads 1]

Every variant decodes exactly max_new_tokens tokens for the same rows (min_new_tokens = max_new_tokens),
with temperature 0.7 and top-p 0.9:

    plain        model.generate(do_sample=True): one global RNG for the batch (not reproducible per row)
    seeded       sppo_lite's sampler (generation._SeededSampling): a uniform per vocabulary entry per row and
                 step (49,152 on SmolLM2) from that row's own generator, Gumbel-max
    inverse_cdf  an alternative measured here: one uniform per row and step, inverse CDF over the kept
                 (top-p) tokens (equally reproducible, but other samples for the same seed)
    plain_bf16   plain under torch.autocast(bfloat16) (--bf16): what bf16 buys generation on this CPU

Reports the median wall time of `repeats` runs per variant and the ratios to plain; writes
benchmarks/results/seeded_sampling-<hardware>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import torch
from common import hardware, versions
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from sppo_lite.data import load_prompts
from sppo_lite.generation import _row_seed, _SeededSampling
from sppo_lite.modeling import load_policy

ROOT = Path(__file__).resolve().parent.parent


class InverseCDF(_SeededSampling):
    """One uniform per row and step; the first token whose cumulative probability exceeds u times the total."""

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = scores.float().softmax(dim=-1)
        cdf = probs.cumsum(dim=-1)
        uniform = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])
        drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
        last_kept = probs.shape[1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
        drawn = torch.minimum(drawn, last_kept)
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn[:, None], 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time plain sampling under bf16 autocast")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_policy("smollm2-135m-instruct", dtype="float32")
    prompts = load_prompts(ROOT / "data" / "prompts.jsonl", limit=args.prompts)
    ids = [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)) for p in prompts]
    padded = tok.pad({"input_ids": ids}, padding_side="left", return_attention_mask=True, return_tensors="pt")
    input_ids, mask = padded["input_ids"], padded["attention_mask"]
    input_ids, mask = input_ids.repeat_interleave(args.k, 0), mask.repeat_interleave(args.k, 0)
    rows, n = input_ids.shape[0], args.max_new_tokens
    fixed = dict(max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id, use_cache=True)

    def generators():
        return [torch.Generator().manual_seed(_row_seed(0, i // args.k, i % args.k)) for i in range(rows)]

    def run(variant):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "plain_bf16" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            if variant.startswith("plain"):
                torch.manual_seed(0)
                config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=0, **fixed)
                return model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            cls = _SeededSampling if variant == "seeded" else InverseCDF
            config = GenerationConfig(do_sample=False, **fixed)
            return model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                  logits_processor=LogitsProcessorList([cls(0.7, 0.9, generators())]))

    variants = ["plain", "seeded", "inverse_cdf"] + (["plain_bf16"] if args.bf16 else [])
    run("plain")  # warm-up
    times = {v: [] for v in variants}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every variant alike
        for v in variants:
            t0 = time.perf_counter()
            out = run(v)
            times[v].append(time.perf_counter() - t0)
            assert out.shape[1] == input_ids.shape[1] + n
            print(f"  {v:<12} {times[v][-1]:7.2f} s", flush=True)
    median = {v: sorted(ts)[len(ts) // 2] for v, ts in times.items()}
    again = run("seeded")
    reproducible = bool(torch.equal(again, run("seeded")))
    load = os.getloadavg()
    result = {"hardware": hardware("cpu"), "rows": rows, "new_tokens": n, "repeats": args.repeats,
              "median_s": median, "tokens_per_s": {v: rows * n / s for v, s in median.items()},
              "ratio_to_plain": {v: s / median["plain"] for v, s in median.items()},
              "seeded_reproducible": reproducible, "load_average_1_5_15": load, "versions": versions()}
    for v in variants:
        print(f"{v:<12} {median[v]:7.2f} s  {rows * n / median[v]:7.1f} tok/s  ×{median[v] / median['plain']:.2f} of plain")
    print(f"seeded rerun identical: {reproducible}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    out = ROOT / "benchmarks" / "results" / f"seeded_sampling-{hardware('cpu')}.json"
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
