"""K-sample generation on the tiny policy: shape, seeding, left padding, long prompts, parquet output."""
import os

import pytest
import torch
from datasets import Dataset

from sppo_lite.generation import bf16_autocast, generate_responses, generate_responses_vllm, save_parquet
from sppo_lite.modeling import build_tiny_model, build_tiny_tokenizer, load_policy, save_tiny_policy

PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "Write a short poem about the sea, the gulls and the wind over the harbour at night.",
    "How many legs does a spider have?",
    "2 + 3?",
]
FAST = dict(max_new_tokens=12, progress=False)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """The tiny policy loaded through the real loader, as the pipeline does."""
    return load_policy(save_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy"))


def chat_ids(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_dict=False)


def test_k_responses_per_prompt_with_columns_and_stats(policy):
    model, tokenizer = policy
    ds, stats = generate_responses(model, tokenizer, PROMPTS, k=3, batch_size=2, **FAST)
    assert isinstance(ds, Dataset) and ds.column_names == ["prompt_id", "prompt", "responses", "finished"]
    assert ds["prompt"] == PROMPTS and ds["prompt_id"] == list(range(len(PROMPTS)))
    assert all(len(r) == 3 and all(isinstance(s, str) for s in r) for r in ds["responses"])
    assert any(len(set(r)) > 1 for r in ds["responses"])  # K samples, not K copies
    assert stats == {"prompts": 5, "generated": 5, "skipped": 0, "truncated": 0,
                     "skipped_prompt_ids": [], "truncated_prompt_ids": []}


def test_bf16_autocast_is_on_in_its_block_only_and_samples_reproducibly(policy):
    """generation.bf16: logits within bf16 rounding of fp32 (so autocast is really on), fp32 outside the block,
    and seeded samples as reproducible as in fp32."""
    model, tokenizer = policy
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[2])])
    with torch.no_grad():
        fp32 = model(ids).logits
        with bf16_autocast(model):
            half = model(ids).logits
        with bf16_autocast(model, enabled=False):
            off = model(ids).logits
    assert half.dtype == torch.bfloat16 and torch.equal(off, fp32)
    gap = (half.float() - fp32).abs().max().item()
    assert 0 < gap < 0.05 * fp32.abs().max().item()
    first, _ = generate_responses(model, tokenizer, PROMPTS, k=2, seed=7, bf16=True, **FAST)
    again, _ = generate_responses(model, tokenizer, PROMPTS, k=2, seed=7, bf16=True, batch_size=2, **FAST)
    assert first["responses"] == again["responses"] and all(len(r) == 2 for r in first["responses"])
    assert next(model.parameters()).dtype == torch.float32


def test_same_seed_same_output_other_seed_different(policy):
    model, tokenizer = policy
    first, _ = generate_responses(model, tokenizer, PROMPTS, k=2, seed=7, **FAST)
    again, _ = generate_responses(model, tokenizer, PROMPTS, k=2, seed=7, **FAST)
    other, _ = generate_responses(model, tokenizer, PROMPTS, k=2, seed=8, **FAST)
    assert first["responses"] == again["responses"]
    assert first["responses"] != other["responses"]


def test_samples_do_not_depend_on_batch_size_or_order(policy):
    model, tokenizer = policy
    one_by_one, _ = generate_responses(model, tokenizer, PROMPTS, k=2, batch_size=1, **FAST)
    batched, _ = generate_responses(model, tokenizer, PROMPTS, k=2, batch_size=4, **FAST)
    assert one_by_one["responses"] == batched["responses"]
    ids = list(range(len(PROMPTS)))[::-1]
    reversed_ds, _ = generate_responses(model, tokenizer, PROMPTS[::-1], prompt_ids=ids, k=2, batch_size=3, **FAST)
    assert reversed_ds["responses"][::-1] == batched["responses"]


def test_string_prompt_ids_key_the_rows(policy):
    model, tokenizer = policy
    ds, _ = generate_responses(model, tokenizer, PROMPTS[:2], prompt_ids=["a1", "b2"], k=1, **FAST)
    alone, _ = generate_responses(model, tokenizer, PROMPTS[1:2], prompt_ids=["b2"], k=1, **FAST)
    assert ds["prompt_id"] == ["a1", "b2"] and ds["responses"][1] == alone["responses"][0]
    with pytest.raises(ValueError, match="prompt_ids must be unique"):
        generate_responses(model, tokenizer, PROMPTS[:2], prompt_ids=["a", "a"], **FAST)


def test_greedy_left_padding_matches_unpadded_generate(policy):
    """temperature=0 is greedy: a short prompt padded inside a batch decodes exactly as it does alone."""
    model, tokenizer = policy
    ds, _ = generate_responses(model, tokenizer, PROMPTS, k=2, temperature=0, batch_size=len(PROMPTS), **FAST)
    for prompt, responses in zip(PROMPTS, ds["responses"]):
        ids = torch.tensor([chat_ids(tokenizer, prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=FAST["max_new_tokens"], pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert responses == [expected, expected]


def test_tiny_top_p_is_greedy(policy):
    model, tokenizer = policy
    greedy, _ = generate_responses(model, tokenizer, PROMPTS, k=1, temperature=0, **FAST)
    nucleus, _ = generate_responses(model, tokenizer, PROMPTS, k=1, temperature=0.7, top_p=1e-6, **FAST)
    assert greedy["responses"] == nucleus["responses"]


def test_works_without_pad_token_and_restores_model_mode():
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = None  # as Mistral's tokenizer
    model = build_tiny_model(tokenizer).train()
    ds, _ = generate_responses(model, tokenizer, PROMPTS[:3], k=2, **FAST)
    assert len(ds) == 3 and model.training and tokenizer.pad_token is None
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[0])])
    model(input_ids=ids, labels=ids).loss.backward()  # the same model trains right after generating


def test_long_prompts_are_skipped_and_counted(policy):
    model, tokenizer = policy
    limit = len(chat_ids(tokenizer, PROMPTS[3]))
    assert [i for i, p in enumerate(PROMPTS) if len(chat_ids(tokenizer, p)) > limit] == [2]
    ds, stats = generate_responses(model, tokenizer, PROMPTS, k=1, max_prompt_tokens=limit, **FAST)
    assert ds["prompt_id"] == [0, 1, 3, 4]
    assert (stats["skipped"], stats["truncated"], stats["generated"]) == (1, 0, 4)
    assert stats["skipped_prompt_ids"] == [2]
    nothing, stats = generate_responses(model, tokenizer, PROMPTS[2:3], max_prompt_tokens=limit, **FAST)
    assert len(nothing) == 0 and stats["skipped"] == 1
    assert nothing.features == ds.features  # typed columns even when every prompt is skipped


def test_long_prompts_are_truncated_and_counted(policy):
    model, tokenizer = policy
    limit = len(chat_ids(tokenizer, PROMPTS[3]))
    ds, stats = generate_responses(model, tokenizer, PROMPTS, k=1, max_prompt_tokens=limit,
                                   long_prompts="truncate", **FAST)
    assert len(ds) == 5 and (stats["skipped"], stats["truncated"]) == (0, 1)
    assert stats["truncated_prompt_ids"] == [2]
    cut = ds["prompt"][2]
    assert PROMPTS[2].startswith(cut) and len(cut) < len(PROMPTS[2])
    assert limit - 2 <= len(chat_ids(tokenizer, cut)) <= limit
    assert ds["prompt"][:2] == PROMPTS[:2]


def test_prompt_limit_below_template_size_is_an_error(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="raise max_prompt_tokens"):
        generate_responses(model, tokenizer, PROMPTS, max_prompt_tokens=3, long_prompts="truncate", **FAST)
    with pytest.raises(ValueError, match="long_prompts must be one of"):
        generate_responses(model, tokenizer, PROMPTS, max_prompt_tokens=3, long_prompts="drop", **FAST)


def test_no_chat_template_is_an_error(policy):
    model, _ = policy
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="set tokenizer.chat_template"):
        generate_responses(model, tokenizer, PROMPTS, **FAST)


def test_save_parquet_is_atomic_and_round_trips(tmp_path):
    ds = Dataset.from_dict({"prompt_id": [0, 1], "prompt": ["a", "b"], "responses": [["x", "y"], ["z", "w"]]})
    path = tmp_path / "gen" / "responses.parquet"
    assert save_parquet(ds, path) == str(path)
    save_parquet(ds.select([1]), path)  # replaces the previous file
    assert Dataset.from_parquet(str(path)).to_dict() == ds.select([1]).to_dict()
    assert os.listdir(path.parent) == ["responses.parquet"]  # no temp file left behind


def test_vllm_backend_matches_the_output_format(tmp_path):
    pytest.importorskip("vllm", reason="vllm is not installed (optional backend: pip install vllm)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    path = save_tiny_policy(tmp_path / "policy", hidden_size=128, heads=2, kv_heads=1)
    run = dict(k=2, max_new_tokens=8, seed=3, max_prompt_tokens=20, gpu_memory_utilization=0.3)
    ds, stats = generate_responses_vllm(path, PROMPTS, **run)
    again, _ = generate_responses_vllm(path, PROMPTS, **run)
    assert ds.column_names == ["prompt_id", "prompt", "responses", "finished"]
    assert all(len(r) == 2 for r in ds["responses"]) and stats["generated"] == len(ds)
    assert ds["responses"] == again["responses"]


def test_finished_flags_tell_cut_samples_apart(policy):
    model, tok = policy
    # One new token cannot hold a whole answer; with min_new_tokens above the limit nothing ends by itself.
    short, _ = generate_responses(model, tok, ["Say hi"], k=3, max_new_tokens=1, progress=False)
    assert short["finished"][0] == [t == "" for t in short["responses"][0]]  # only an immediate </s> finishes
    model.generation_config.min_new_tokens = 4
    try:
        cut, _ = generate_responses(model, tok, ["Say hi"], k=3, max_new_tokens=4, progress=False)
    finally:
        model.generation_config.min_new_tokens = None
    assert cut["finished"][0] == [False, False, False]


def test_seeded_draw_samples_from_the_nucleus_distribution():
    """The per-row draw (Gumbel-max from the row's generator) picks token i with probability p_i after top-p, never a
    token top-p removed, and the same generators give the same draws."""
    from sppo_lite.generation import _SeededSampling

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -8.0, 0.5])
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    kept = order[: int((probs[order].cumsum(0) < 0.95).sum()) + 1]  # the top-p = 0.95 nucleus
    target = torch.zeros_like(probs)
    target[kept] = probs[kept] / probs[kept].sum()
    rows = 4000

    def draws():
        sampler = _SeededSampling(1.0, 0.95, [torch.Generator().manual_seed(i) for i in range(rows)])
        mask = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.repeat(rows, 1))
        assert ((mask == 0).sum(-1) == 1).all()
        return mask.argmax(-1)

    drawn = draws()
    freq = torch.bincount(drawn, minlength=len(logits)).float() / rows
    assert set(drawn.unique().tolist()) <= set(kept.tolist())
    assert torch.allclose(freq, target, atol=0.03)
    assert torch.equal(drawn, draws())
