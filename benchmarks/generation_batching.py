"""Batched K-sample generation vs a per-prompt loop, same model, same settings, one run.

    python benchmarks/generation_batching.py [--prompts 32] [--k 5] [--max-new-tokens 32] [--device cpu]

Baseline: the plain loop, one `model.generate(num_return_sequences=K, do_sample=True)` per prompt.
sppo-lite: `generation.generate_responses` (prompts batched with left padding, per-sample seeds).
Prints prompts/s for both and the ratio; writes benchmarks/results/generation-<hardware>.json.
The policy is the tiny local Mistral (random weights): EOS is switched off so every response runs
the full max_new_tokens in both paths (min_new_tokens) and the comparison is token-for-token fair.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import hardware

from sppo_lite.data import load_prompts
from sppo_lite.generation import generate_responses
from sppo_lite.modeling import build_tiny_model, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def per_prompt_loop(model, tokenizer, prompts, k, max_new_tokens, device):
    """The plain loop: one generate() call per prompt with num_return_sequences=K."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        gen = model.generate(**{k_: v.to(device) for k_, v in ids.items()}, do_sample=True, temperature=0.7,
                             top_p=0.9, max_new_tokens=max_new_tokens, num_return_sequences=k,
                             pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.batch_decode(gen[:, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (sppo-lite)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    prompts = load_prompts(ROOT / "data" / "prompts.jsonl", limit=args.prompts)
    tokenizer = build_tiny_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_tiny_model(tokenizer).to(args.device).eval()
    # Random weights hit EOS at random: make every response run the full length in both paths.
    model.generation_config.min_new_tokens = args.max_new_tokens
    torch.manual_seed(0)

    per_prompt_loop(model, tokenizer, prompts[:2], args.k, 4, args.device)  # warm-up
    t0 = time.perf_counter()
    with torch.no_grad():
        per_prompt_loop(model, tokenizer, prompts, args.k, args.max_new_tokens, args.device)
    loop_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ds, _ = generate_responses(model, tokenizer, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - t0
    assert len(ds) == len(prompts)
    n_tokens = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for rs in ds["responses"] for r in rs]
    print(f"sppo-lite responses: {sum(n_tokens) / len(n_tokens):.1f} tokens on average (re-tokenised)")

    hw = hardware(args.device)
    result = {
        "hardware": hw, "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "per_prompt_loop": {"prompts_per_s": len(prompts) / loop_s, "seconds": loop_s},
        "sppo_lite": {"prompts_per_s": len(prompts) / ours_s, "seconds": ours_s},
        "speedup": loop_s / ours_s,
    }
    out = ROOT / "benchmarks" / "results" / f"generation-{hw}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{hw}: per-prompt loop {result['per_prompt_loop']['prompts_per_s']:.2f} prompts/s, "
          f"sppo-lite batched {result['sppo_lite']['prompts_per_s']:.2f} prompts/s "
          f"→ {result['speedup']:.2f}× ({len(prompts)} prompts × K={args.k}, {args.max_new_tokens} new tokens)")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
