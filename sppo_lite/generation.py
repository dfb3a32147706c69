"""K sampled responses per prompt from the policy π_t, through its chat template, batched and reproducible.

Sampling is temperature T then nucleus top_p (no top-k), as vLLM and the official SPPO scripts do;
T = 0 means greedy. Other decoding defaults in the model's generation_config (eos ids,
repetition_penalty, ...) still apply, as in vLLM.

Reproducibility: response j of prompt `pid` is drawn with its own torch.Generator seeded from
(seed, pid, j), so a prompt's responses depend only on the model, the settings, `seed` and its
prompt id — not on batch_size, prompt order, or which prompts share its batch. Padding changes float
rounding only, which could flip a draw that lands within rounding error of a token boundary.

Both backends return (dataset, stats): a datasets.Dataset with columns prompt_id, prompt (the text
actually used, truncated if it was), responses (K strings, special tokens dropped, whitespace
stripped), finished (K bools: False where a sample was cut at max_new_tokens), and a JSON-ready dict
of prompt counts for the stage manifest.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass

import torch
from datasets import Dataset, Features, Sequence, Value
from tqdm.auto import tqdm
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                          TopPLogitsWarper)

from .modeling import require_chat_template

__all__ = ["generate_responses", "generate_responses_vllm", "VLLMEngine", "save_parquet", "LONG_PROMPT_POLICIES",
           "bf16_autocast"]

logger = logging.getLogger(__name__)

LONG_PROMPT_POLICIES = ("skip", "truncate")


def bf16_autocast(model, enabled: bool = True):
    """torch.autocast(bfloat16) on the model's device when enabled (the weights stay as loaded), else a no-op.

    Matmuls run in bf16, softmax and log-softmax in fp32; on a CPU with AVX512-BF16 this is what makes SmolLM2's
    sampling and scoring faster (BENCHMARKS.md, benchmarks/cpu_bf16.py).
    """
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


@dataclass
class _Prompt:
    prompt_id: object
    text: str
    input_ids: list


def generate_responses(model, tokenizer, prompts, k: int = 5, temperature: float = 0.7, top_p: float = 0.9,
                       max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0, max_prompt_tokens=None,
                       long_prompts: str = "skip", prompt_ids=None, progress: bool = True, bf16: bool = False):
    """K responses per prompt with transformers generate(); returns (dataset, stats), see the module docstring.

    `batch_size` counts prompts (batch_size·k rows per generate call); prompts are length-sorted and
    left-padded (tokenizer.pad). `prompt_ids` (default 0..N-1) key the seeds and the prompt_id column. A chat-templated
    prompt longer than `max_prompt_tokens` is skipped or has its user text cut to fit (`long_prompts`).
    The model is put in eval mode for the call and restored after. bf16: sample under bf16_autocast.
    """
    _check_sampling(k, temperature, top_p)
    prompts, stats = _encode_prompts(tokenizer, prompts, prompt_ids, max_prompt_tokens, long_prompts)
    padder = _with_pad_token(tokenizer)
    pad_id = padder.pad_token_id
    # Unset fields are filled from model.generation_config by generate(); eos falls back to the tokenizer's.
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=pad_id)
    if model.generation_config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].input_ids))  # longest first: OOM shows early
    responses, finished = [None] * len(prompts), [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), bf16_autocast(model, bf16), \
                tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = [prompts[i] for i in order[start:start + batch_size]]
                texts, done = _generate_batch(model, tokenizer, padder, batch, k, temperature, top_p, seed, config)
                for row, i in enumerate(order[start:start + batch_size]):
                    responses[i], finished[i] = texts[row * k:(row + 1) * k], done[row * k:(row + 1) * k]
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return _to_dataset(prompts, responses, finished), stats


class VLLMEngine:
    """A vLLM engine built once (per stage) and reused for every shard: `VLLMEngine(model_path, **llm_kwargs)`.

    `model_path` is a full model directory or hub id (merge LoRA adapters first); `llm_kwargs` go to
    vllm.LLM (tensor_parallel_size, gpu_memory_utilization, max_model_len, ...). vLLM is imported lazily.
    """

    def __init__(self, model_path, seed: int = 0, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("the vLLM backend needs vllm: pip install vllm (or sppo-lite[full]), "
                              "or use generation.backend=transformers") from err
        self.llm = LLM(model=str(model_path), seed=seed, **llm_kwargs)


def generate_responses_vllm(model_path_or_engine, prompts, k: int = 5, temperature: float = 0.7, top_p: float = 0.9,
                            max_new_tokens: int = 128, seed: int = 0, max_prompt_tokens=None,
                            long_prompts: str = "skip", prompt_ids=None, **llm_kwargs):
    """generate_responses with vLLM sampling; same columns and stats.

    `model_path_or_engine`: a VLLMEngine to reuse, or a model directory / hub id to build one for this call
    (with `llm_kwargs`). Each prompt gets its own vLLM seed from (seed, prompt_id), so reruns match on the
    same vLLM version and hardware; the samples differ from the transformers backend's (another RNG).
    """
    from vllm import SamplingParams  # VLLMEngine has checked the import

    _check_sampling(k, temperature, top_p)
    engine = model_path_or_engine if isinstance(model_path_or_engine, VLLMEngine) else \
        VLLMEngine(model_path_or_engine, seed=seed, **llm_kwargs)
    llm = engine.llm
    prompts, stats = _encode_prompts(llm.get_tokenizer(), prompts, prompt_ids, max_prompt_tokens, long_prompts)
    params = [SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                             seed=_row_seed(seed, p.prompt_id, 0)) for p in prompts]
    # Token ids, not text: the templated text already holds <s>, which vLLM would add a second time.
    outputs = llm.generate([{"prompt_token_ids": p.input_ids} for p in prompts], params)
    responses = [[completion.text.strip() for completion in out.outputs] for out in outputs]
    finished = [[completion.finish_reason == "stop" for completion in out.outputs] for out in outputs]
    return _to_dataset(prompts, responses, finished), stats


def save_parquet(dataset: Dataset, path) -> str:
    """Write `dataset` to parquet atomically: a temp file in the same directory, then os.replace."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        dataset.to_parquet(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class _SeededSampling(LogitsProcessor):
    """Temperature, top-p, then one draw per row with that row's own generator; returns a 0/−inf mask on
    the drawn token so that greedy decoding emits it.

    The draw is Gumbel-max, argmax(log p + G) with G = −log(−log U) ~ Gumbel, which samples from p: the
    uniforms come from each row's generator on the model's device, and everything else is one batched
    op (no host round trip). Hand-written: generate(do_sample=True) draws every row from one global RNG,
    which ties a prompt's samples to its batch.
    """

    def __init__(self, temperature: float, top_p: float, generators: list):
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        self.generators = generators

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        vocab = scores.shape[1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20)))
        drawn = (scores.float().log_softmax(dim=-1) + gumbel).argmax(dim=-1)
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn[:, None], 0.0)


def _generate_batch(model, tokenizer, padder, batch, k, temperature, top_p, seed, config):
    """(texts, finished): k decoded responses for each prompt of `batch`, rows ordered prompt-major, and
    whether each ended with an end-of-sequence token (False: cut at max_new_tokens). `padder` left-pads."""
    padded = padder.pad({"input_ids": [p.input_ids for p in batch]}, padding_side="left",
                        return_attention_mask=True, return_tensors="pt")
    input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]
    input_ids, attention_mask = input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0)
    processors = LogitsProcessorList()
    if temperature > 0:
        generators = [torch.Generator(device=model.device).manual_seed(_row_seed(seed, p.prompt_id, j))
                      for p in batch for j in range(k)]
        processors.append(_SeededSampling(temperature, top_p, generators))
    out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                         generation_config=config, logits_processor=processors)
    new = out[:, input_ids.shape[1]:]
    eos = config.eos_token_id if config.eos_token_id is not None else model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=new.device)
    finished = torch.isin(new, eos).any(dim=1).tolist()
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)], finished


def _with_pad_token(tokenizer):
    """`tokenizer` when it has a pad token, else a copy whose pad token is its eos (Mistral's has none).

    The padding is masked out, so which id fills it does not matter; the caller's tokenizer is left as is.
    """
    if tokenizer.pad_token is not None:
        return tokenizer
    padder = copy.deepcopy(tokenizer)
    padder.pad_token = tokenizer.eos_token
    return padder


def _row_seed(seed: int, prompt_id, j: int) -> int:
    """63-bit seed hashed from (seed, prompt_id, j); prompt ids may be ints or strings."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{j}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_sampling(k, temperature, top_p) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _encode_prompts(tokenizer, prompts, prompt_ids, max_prompt_tokens, long_prompts):
    """Chat-template each prompt as one user message; skip or truncate the long ones; count what happened."""
    require_chat_template(tokenizer)
    if long_prompts not in LONG_PROMPT_POLICIES:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPT_POLICIES}, got {long_prompts!r}")
    prompts = list(prompts)
    prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"got {len(prompt_ids)} prompt_ids for {len(prompts)} prompts: pass one id per prompt")
    if len(set(prompt_ids)) != len(prompt_ids):
        raise ValueError("prompt_ids must be unique: they key the sampling seeds and the output rows")
    kept, skipped, truncated = [], [], []
    for pid, text in zip(prompt_ids, prompts):
        input_ids = _chat_ids(tokenizer, text)
        if max_prompt_tokens is not None and len(input_ids) > max_prompt_tokens:
            if long_prompts == "skip":
                skipped.append(pid)
                continue
            text, input_ids = _truncate(tokenizer, text, max_prompt_tokens)
            truncated.append(pid)
        kept.append(_Prompt(pid, text, input_ids))
    if skipped or truncated:
        logger.warning("%d of %d prompts were longer than %d tokens: %d skipped, %d truncated",
                       len(skipped) + len(truncated), len(prompts), max_prompt_tokens, len(skipped), len(truncated))
    stats = {"prompts": len(prompts), "generated": len(kept), "skipped": len(skipped), "truncated": len(truncated),
             "skipped_prompt_ids": skipped, "truncated_prompt_ids": truncated}
    return kept, stats


def _chat_ids(tokenizer, text: str) -> list:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def _truncate(tokenizer, text: str, max_tokens: int):
    """Longest head of the user text whose templated prompt fits in max_tokens: (text, input_ids)."""
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep, input_ids = len(content), _chat_ids(tokenizer, text)
    while len(input_ids) > max_tokens:
        keep -= len(input_ids) - max_tokens
        if keep <= 0:
            raise ValueError(f"max_prompt_tokens={max_tokens} leaves no room for the prompt inside the chat "
                             "template: raise max_prompt_tokens")
        text = tokenizer.decode(content[:keep])
        input_ids = _chat_ids(tokenizer, text)
    return text, input_ids


def _to_dataset(prompts, responses, finished) -> Dataset:
    ids = [p.prompt_id for p in prompts]
    features = Features({"prompt_id": Value("string" if any(isinstance(i, str) for i in ids) else "int64"),
                         "prompt": Value("string"), "responses": Sequence(Value("string")),
                         "finished": Sequence(Value("bool"))})
    return Dataset.from_dict({"prompt_id": ids, "prompt": [p.text for p in prompts], "responses": responses,
                              "finished": finished}, features=features)
