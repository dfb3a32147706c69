"""PairRM through llm-blender: the transformers-5 shims, loading a ranker, and PairRM-shaped offline rankers.

PairRM (llm-blender/PairRM) is a DeBERTa cross-encoder that reads (prompt, A, B) at once and emits
ℓ(A, B), the logit that A (shown first) beats B. Everything llm-blender-specific lives here;
`sppo_lite.judges.PairRMJudge` turns its outputs into preference matrices.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import random
import string
from pathlib import Path

__all__ = ["patch_llm_blender_for_transformers5", "load_blender", "PAIRRM_SIZES", "build_pairrm",
           "build_tiny_pairrm"]

# llm-blender's tokenizer builder special-cases base paths containing these substrings.
_SPECIAL_CASED_PATH_PARTS = ("llama", "alpaca", "phi")


def _batch_encode_plus(self, batch_text_or_text_pairs, **kwargs):
    """transformers-4 `batch_encode_plus` for a list of texts: the same as calling the tokenizer."""
    return self(batch_text_or_text_pairs, **kwargs)


def patch_llm_blender_for_transformers5() -> None:
    """Restore the two transformers-4 names llm-blender 0.0.2 uses; a no-op where they exist.

    `transformers.utils.hub.TRANSFORMERS_CACHE` (imported by llm-blender) becomes the Hub cache, and
    `PreTrainedTokenizerBase.batch_encode_plus` (called by its collator) becomes `tokenizer(texts, ...)`.
    Call it before `import llm_blender`; `load_blender` does.
    """
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants
    from transformers import PreTrainedTokenizerBase

    if not hasattr(transformers_hub, "TRANSFORMERS_CACHE"):
        transformers_hub.TRANSFORMERS_CACHE = constants.HF_HUB_CACHE
    if not hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        PreTrainedTokenizerBase.batch_encode_plus = _batch_encode_plus


def _resolve_ranker_dir(model_name_or_path: str) -> str:
    """A local ranker directory as is, else the Hub snapshot (from the cache when HF_HUB_OFFLINE=1)."""
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(model_name_or_path)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"ranker {model_name_or_path!r} is neither a local directory nor in the Hugging Face cache: "
            f"download it once with `hf download {model_name_or_path}` (and its base model), "
            f"or pass a local ranker directory") from err


def require_torch_for_ranker(version: str) -> None:
    """llm-blender unpickles ranker checkpoints with torch.load, which transformers allows from torch 2.6 on."""
    major, minor = (int(x) for x in version.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 6):
        raise ImportError(f"PairRM needs torch >= 2.6 to load its ranker checkpoint (found {version}): "
                          f"pip install -U 'torch>=2.6'")


def load_blender(model_name_or_path: str = "llm-blender/PairRM", device: str = "cpu", dtype=None):
    """`llm_blender.Blender` with its ranker loaded by `Blender().loadranker(path, device=device)`.

    dtype None keeps llm-blender's choice (fp16 on cuda/mps, fp32 on cpu); else the ranker is
    loaded in fp32 and cast to dtype (a torch.dtype or its name, e.g. "bfloat16").
    """
    import torch

    require_torch_for_ranker(torch.__version__)
    patch_llm_blender_for_transformers5()
    import llm_blender

    from .console import library_output

    ranker_kwargs = {} if dtype is None else {"fp16": False}
    with library_output():  # its "Successfully loaded ranker" print and config warnings go to the run's log
        blender = llm_blender.Blender(llm_blender.BlenderConfig(device=device, use_tqdm=False))
        blender.loadranker(_resolve_ranker_dir(model_name_or_path), device=device, **ranker_kwargs)
    if blender.ranker_config.ranker_type != "pairranker":
        raise ValueError(f"{model_name_or_path!r} is not a PairRM-style ranker (ranker_type "
                         f"{blender.ranker_config.ranker_type!r}); use RewardModelJudge for reward models")
    if dtype is not None:
        blender.ranker.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return blender


# ---------------------------------------------------------------- PairRM-shaped rankers, offline

_WORDS = ("the a of to and is it this that answer reply question please explain why how what when "
          "sun moon tree river cat dog blue red green happy calm fast slow small big warm cold").split()

# DeBERTa-v2 backbone and llm-blender RankerConfig settings per size. "large" is llm-blender/PairRM's shape
# (DeBERTa-v3-large: hidden 1024, 24 layers, 16 heads, MLP 4096; source 1224 and candidate 412 tokens).
PAIRRM_SIZES = {
    "tiny": {
        "backbone": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         position_buckets=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        "ranker": dict(source_maxlength=64, candidate_maxlength=64, num_pos=3, num_neg=3, drop_out=0.0),
        "model_max_length": 512, "train_steps": 200,
    },
    "large": {
        "backbone": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         position_buckets=256, layer_norm_eps=1e-7, type_vocab_size=0),
        "ranker": dict(source_maxlength=1224, candidate_maxlength=412, num_pos=5, num_neg=5, drop_out=0.05),
        "model_max_length": 2048, "train_steps": 0,
    },
}


def _sentence(rng: random.Random, n_words: int, keyword: str, n_keyword: int, words=_WORDS) -> str:
    out = [rng.choice(words) for _ in range(n_words)]
    for _ in range(n_keyword):
        out.insert(rng.randint(0, len(out)), keyword)
    return " ".join(out)


def _train_tokenizer(base_dir: Path, keyword: str, model_max_length: int, words=_WORDS):
    """A DeBERTa-v3-layout SentencePiece unigram model (ids 0-3: [PAD] [CLS] [SEP] [UNK]) as spm.model."""
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    rng = random.Random(0)
    corpus = [_sentence(rng, rng.randint(3, 12), keyword, rng.randint(0, 2), words) for _ in range(2000)]
    corpus.append(" ".join(string.ascii_letters + string.digits + string.punctuation))  # no [UNK] for ASCII
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, model_type="unigram", vocab_size=200,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
        unk_id=3, unk_piece="[UNK]", user_defined_symbols=["[MASK]"])
    (base_dir / "spm.model").write_bytes(model.getvalue())
    return DebertaV2Tokenizer.from_pretrained(base_dir, model_max_length=model_max_length)


def _keyword_preferences(n_prompts: int, n_candidates: int, keyword: str, seed: int):
    """Synthetic data: prompts, candidates, and scores = how often each candidate says `keyword`."""
    rng = random.Random(seed)
    prompts, candidates, scores = [], [], []
    for _ in range(n_prompts):
        counts = rng.sample(range(n_candidates + 1), n_candidates)
        prompts.append(_sentence(rng, rng.randint(2, 5), keyword, 0))
        candidates.append([_sentence(rng, rng.randint(2, 6), keyword, c) for c in counts])
        scores.append([[float(c)] for c in counts])
    return prompts, candidates, scores


def build_pairrm(path, size: str = "tiny", seed: int = 0, train_steps: int | None = None, keyword: str = "good",
                 words=None, batch_size: int = 8, lr: float = 2e-3, **backbone) -> str:
    """Write a PairRM-shaped ranker to `path`, loadable by `Blender().loadranker(path)`; returns the directory.

    Layout as llm-blender/PairRM: `path/config.json` (llm-blender RankerConfig, pairranker over a
    DeBERTa base), `path/pytorch_model.bin` (full ranker state dict), and the DeBERTa-v2 base model
    plus a 200-piece SentencePiece tokenizer (trained on `words`, default a built-in list) in
    `path/backbone`. `size` picks PAIRRM_SIZES: "tiny" (hidden 32, 2 layers, 64-token limits) is
    trained `train_steps` (default 200) steps with llm-blender's own loss on a synthetic rule (more
    occurrences of `keyword` is better), so it does not call every pair a tie; "large" has PairRM's
    shape and limits and random weights (train_steps 0): its speed is PairRM's, its decisions are not.
    `backbone` overrides DebertaV2Config fields (e.g. a small hidden_size to exercise "large" cheaply).
    llm-blender resizes the embedding to the tokenizer (+4 prefix tokens), so the vocabulary is small
    rather than DeBERTa's 128k: an embedding lookup costs the same either way.
    """
    import torch
    from transformers import DebertaV2Config, DebertaV2Model

    if size not in PAIRRM_SIZES:
        raise ValueError(f"size must be one of {sorted(PAIRRM_SIZES)}, got {size!r}")
    spec = PAIRRM_SIZES[size]
    train_steps = spec["train_steps"] if train_steps is None else train_steps
    ranker_dir = Path(path).resolve()
    base_dir = ranker_dir / "backbone"
    special = [part for part in _SPECIAL_CASED_PATH_PARTS if part in str(base_dir)]
    if special:
        raise ValueError(f"ranker path {str(ranker_dir)!r} contains {special[0]!r}, which llm-blender's "
                         f"tokenizer builder special-cases: choose a directory without "
                         f"'llama', 'alpaca' or 'phi' in its path")
    base_dir.mkdir(parents=True, exist_ok=True)
    patch_llm_blender_for_transformers5()
    from llm_blender import RankerConfig
    from llm_blender.blender.blender_utils import load_ranker

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = _train_tokenizer(base_dir, keyword, spec["model_max_length"], words or _WORDS)
        tokenizer.save_pretrained(base_dir)
        backbone = DebertaV2Model(DebertaV2Config(**{
            "vocab_size": len(tokenizer), "max_position_embeddings": 512, "relative_attention": True,
            "max_relative_positions": -1, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False,
            "norm_rel_ebd": "layer_norm", "share_att_key": True, "pad_token_id": tokenizer.pad_token_id,
            **spec["backbone"], **backbone}))
        backbone.save_pretrained(base_dir)

        config = RankerConfig(
            ranker_type="pairranker", model_type="deberta", model_name=str(base_dir), n_tasks=1,
            sub_sampling_mode="all_pair", loss_type="instructgpt", inference_mode="bubble", fp16=True,
            **spec["ranker"])
        ranker, _, collator = load_ranker(config)
        if train_steps:
            _train_ranker(ranker, collator, train_steps, keyword, batch_size, lr, seed)
        else:
            # The 4 prefix tokens llm-blender adds get mean-initialised, near-identical rows: make them
            # differ, or an untrained ranker calls nearly every pair a tie.
            embeddings = ranker.pretrained_model.get_input_embeddings().weight
            with torch.no_grad():
                embeddings[len(tokenizer):].normal_(0.0, 0.02)
        torch.save(ranker.state_dict(), ranker_dir / "pytorch_model.bin")
    (ranker_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return str(ranker_dir)


def _train_ranker(ranker, collator, train_steps: int, keyword: str, batch_size: int, lr: float, seed: int) -> None:
    """`train_steps` AdamW steps of llm-blender's own pairwise loss on _keyword_preferences."""
    import torch
    from llm_blender.blender.blender_utils import RankerDataset

    prompts, candidates, scores = _keyword_preferences(512, 4, keyword, seed)
    loader = torch.utils.data.DataLoader(
        RankerDataset(prompts, candidates, scores=scores), batch_size=batch_size, shuffle=True,
        collate_fn=collator, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=lr)
    ranker.train()
    epochs = (batch for _ in itertools.count() for batch in loader)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small train faster on one thread, and steadily on a busy CPU
    torch.set_flush_denormal(True)  # a confident ranker's tiny gradients turn subnormal: 50x slower steps
    try:
        for batch in itertools.islice(epochs, train_steps):
            loss = ranker(**batch)["loss"]  # llm-blender's own pairwise loss (loss_type in the RankerConfig)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def build_tiny_pairrm(path, seed: int = 0, train_steps: int = 200, keyword: str = "good",
                      batch_size: int = 8, lr: float = 2e-3) -> str:
    """`build_pairrm(path, size="tiny", ...)`: a tiny ranker trained on the `keyword` rule."""
    return build_pairrm(path, size="tiny", seed=seed, train_steps=train_steps, keyword=keyword,
                        batch_size=batch_size, lr=lr)
