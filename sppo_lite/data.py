"""Prompts in, SPPO training data out.

    load_prompts         prompt texts from a .jsonl / .json / .parquet file or a Hub dataset id
    iteration_split      the paper's disjoint thirds of the prompts, one per SPPO iteration
    probs_from_scores    M[i, j] = σ(s_i − s_j) from one judge score per response (official)
    win_rates            P̂(y_k ≻ π_t) = (1/K) Σ_j M[k, j], j = k included (it contributes ½)
    select_pairs         the official (argmax, argmin) pair, or every response with its win rate
    build_sppo_dataset   the official columns: prompt, chosen, rejected, chosen_probs(_win, _lose)
    encode_chat          prompt + response token ids through the tokenizer's chat template
    pad_chat_batch       a padded batch of encode_chat outputs with its response mask
    sequence_logps       Σ log π(response tokens | prompt) per sequence (shared with the trainer)
    add_reference_logps  ref_<column>_logps: the same sums under π_t, computed once

Official formulas (uclaml/SPPO, scripts/compute_prob.py), for K responses with scores s:
    M[i][j]           = 1 / (1 + exp(s_j − s_i))
    w, l              = argmax s, argmin s
    chosen_probs      = M[w][l]                 P(chosen ≻ rejected)
    chosen_probs_win  = (Σ_j M[w][j]) / K       chosen's win rate against the K samples
    chosen_probs_lose = (Σ_j M[l][j]) / K       rejected's win rate against the K samples
"""
from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from scipy.special import expit

from sppo_lite.game import validate_preference

__all__ = [
    "PROMPT_COLUMNS", "CHAT_COLUMNS",
    "load_prompts", "iteration_split", "probs_from_scores", "win_rates", "select_pairs",
    "chat_messages", "build_sppo_dataset", "read_parquet", "check_training_values", "check_unique_rows", "to_full_chats", "to_trl_rows",
    "encode_chat",
    "pad_chat_batch", "sequence_logps",
    "add_reference_logps",
]

logger = logging.getLogger(__name__)

# Prompt columns recognised, in order: our files, ultrafeedback_binarized and the SPPO iteration
# data use `prompt`; openbmb/UltraFeedback uses `instruction`.
PROMPT_COLUMNS = ("prompt", "instruction", "question")
# Columns holding chat-message lists whose last message is a response to score.
CHAT_COLUMNS = ("chosen", "rejected", "response")
_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

_MESSAGES = [{"content": datasets.Value("string"), "role": datasets.Value("string")}]  # list of messages
_PAIR_FEATURES = datasets.Features({
    "prompt": datasets.Value("string"), "chosen": _MESSAGES, "rejected": _MESSAGES,
    "chosen_probs": datasets.Value("float64"), "chosen_probs_win": datasets.Value("float64"),
    "chosen_probs_lose": datasets.Value("float64"),
})
_RESPONSE_FEATURES = datasets.Features({
    "prompt": datasets.Value("string"), "response": _MESSAGES, "win_prob": datasets.Value("float64"),
})


# ---------------------------------------------------------------- prompts

def load_prompts(source, split: str = "train", prompt_column: str | None = None,
                 limit: int | None = None) -> list[str]:
    """Unique, non-blank prompt texts in source order, from a local file or a Hub dataset id.

    `source`: a .jsonl / .json / .parquet file, or an id for `datasets.load_dataset` (e.g.
    "openbmb/UltraFeedback", "UCLA-AGI/data-mistral-7b-instruct-sppo-iter1", or
    "HuggingFaceH4/ultrafeedback_binarized" with split="train_prefs"; `split` applies to ids
    only). The column is `prompt_column`, else the first of PROMPT_COLUMNS present. Exact
    repeats are dropped (first kept) so that iteration_split's parts never share a prompt; blank
    prompts are dropped. `limit` keeps the first `limit` prompts after that.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    table = _load_table(str(source), split)
    column = _prompt_column(table.column_names, prompt_column, source)
    _check_missing(table, column, source)
    prompts, seen = [], set()
    for row, text in enumerate(table[column]):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"column {column!r} of {source} must hold text, but row {row} holds a "
                             f"{type(text).__name__}: pass prompt_column= naming a text column")
        if text and text.strip() and text not in seen:
            seen.add(text)
            prompts.append(text)
            if limit is not None and len(prompts) == limit:
                break
    if not prompts:
        raise ValueError(f"{source} has no prompts: column {column!r} is blank in every row")
    return prompts


def _load_table(source: str, split: str) -> datasets.Dataset:
    """The rows of a local file (by suffix) or of a Hub dataset split."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix not in _FILE_FORMATS:
            raise ValueError(f"unknown prompt file format {path.suffix!r} ({path.name}): "
                             f"use .jsonl, .json or .parquet")
        if path.stat().st_size == 0:
            raise ValueError(f"prompt file {path.name} is empty: write one "
                             f'{{"prompt": "..."}} object per line')
        try:
            table = datasets.load_dataset(_FILE_FORMATS[suffix], data_files=str(path), split="train")
        except Exception as err:  # datasets raises a long chain; one line says what to fix
            raise ValueError(f"could not read {path.name}: check that it is valid {suffix[1:]} "
                             f"({type(err).__name__})") from err
    elif suffix in _FILE_FORMATS or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"prompt file {source} does not exist: check the path")
    else:
        try:
            table = datasets.load_dataset(source, split=split)
        except ConnectionError as err:
            if not datasets.config.HF_HUB_OFFLINE:
                raise
            raise ValueError(f"dataset {source!r} is not in the local cache and the Hub is off "
                             f"(offline mode, HF_HUB_OFFLINE=1): pass a local .jsonl or .parquet "
                             f"file instead") from err
    if len(table) == 0:
        raise ValueError(f"{source} has no rows: it needs at least one prompt")
    return table


def _check_missing(table, column: str, source) -> None:
    """One error for rows that lack the prompt column (a file mixing `prompt` and `question` keys, say)."""
    missing = [i for i, text in enumerate(table[column]) if text is None]
    if not missing:
        return
    others = [c for c in table.column_names if c != column and c in PROMPT_COLUMNS
              and any(table[c][i] is not None for i in missing)]
    hint = f" (they have {', '.join(repr(c) for c in others)} instead)" if others else ""
    raise ValueError(f"{source}: {len(missing)} row(s) have no {column!r} value{hint}, e.g. rows "
                     f"{', '.join(str(i) for i in missing[:5])}: give every row the same prompt key")


def _prompt_column(columns: list[str], prompt_column: str | None, source) -> str:
    if prompt_column is not None:
        if prompt_column not in columns:
            raise ValueError(f"{source} has no column {prompt_column!r}; columns found: "
                             f"{', '.join(columns)}")
        return prompt_column
    for name in PROMPT_COLUMNS:
        if name in columns:
            return name
    raise ValueError(f"{source} has no prompt column (looked for {', '.join(PROMPT_COLUMNS)}); "
                     f"columns found: {', '.join(columns)}; pass prompt_column= to pick one")


def iteration_split(prompts, iteration: int, n_iterations: int = 3, seed: int | None = 0) -> list:
    """The prompts of SPPO iteration `iteration` (1-based): part t of n disjoint, covering parts.

    The paper trains iteration t on the t-th third of UltraFeedback's prompts. Parts are
    consecutive slices (sizes differ by at most one, larger first) of the prompts shuffled with
    numpy's default_rng(seed); seed=None keeps the given order (contiguous blocks).
    """
    prompts = list(prompts)
    if not isinstance(n_iterations, int) or n_iterations < 1:
        raise ValueError(f"n_iterations must be a positive integer, got {n_iterations!r}")
    if not isinstance(iteration, int) or not 1 <= iteration <= n_iterations:
        raise ValueError(f"iteration must be an integer in 1..{n_iterations}, got {iteration!r}")
    if len(prompts) < n_iterations:
        raise ValueError(f"{len(prompts)} prompts cannot fill {n_iterations} non-empty parts: "
                         f"pass at least {n_iterations} prompts")
    n = len(prompts)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    return [prompts[i] for i in np.array_split(order, n_iterations)[iteration - 1]]


# ---------------------------------------------------------------- win probabilities

def probs_from_scores(scores) -> np.ndarray:
    """M[i, j] = σ(s_i − s_j) = 1/(1 + exp(s_j − s_i)), the official compute_prob step.

    One judge score per response (PairRM `rank(return_scores=True)`) becomes a Bradley–Terry
    matrix (game.bradley_terry, batched). (K,) → (K, K); (B, K) → (B, K, K).
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim not in (1, 2) or s.shape[-1] < 1:
        raise ValueError(f"scores must be (K,) or a batch (B, K) with K >= 1, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or inf: every response needs a finite judge score")
    return expit(s[..., :, None] - s[..., None, :])


def win_rates(M) -> np.ndarray:
    """P̂(y_k ≻ π_t) = (1/K) Σ_j M[k, j], diagonal ½ included (official chosen_probs_win).

    (K, K) → (K,); a batch (B, K, K) → (B, K). Each matrix must satisfy M + Mᵀ = 1.
    """
    M = np.asarray(M, dtype=float)
    if M.ndim == 2:
        validate_preference(M)
    elif M.ndim == 3:
        for b, m in enumerate(M):
            try:
                validate_preference(m)
            except ValueError as err:
                raise ValueError(f"matrix {b} of the batch: {err}") from None
    else:
        raise ValueError(f"win matrix must be K×K or a batch B×K×K, got shape {M.shape}")
    return M.mean(axis=-1)


def select_pairs(scores_or_matrix, mode: str = "best_worst") -> list[dict]:
    """The training rows of one prompt: response indices and their win-probability targets.

    K scores are ranked by score with M = probs_from_scores(scores) (official); a K×K win matrix M
    is ranked by its win rates P̂. w, l = argmax, argmin of the ranking (first index on ties, so
    all-tied responses give w = l = 0, as in the official code).
      "best_worst" → [{chosen_index: w, rejected_index: l, chosen_probs: M[w, l],
                       chosen_probs_win: P̂_w, chosen_probs_lose: P̂_l}]
      "all"        → [{response_index: k, win_prob: P̂_k} for k in 0..K−1]   (per-response sppo_loss)
    """
    if mode not in ("best_worst", "all"):
        raise ValueError(f"mode must be 'best_worst' or 'all', got {mode!r}")
    x = np.asarray(scores_or_matrix, dtype=float)
    if x.ndim not in (1, 2):
        raise ValueError(f"pass K scores or a K×K win matrix for one prompt, got shape {x.shape}")
    M = probs_from_scores(x) if x.ndim == 1 else validate_preference(x)
    if M.shape[0] < 2:
        raise ValueError(f"a prompt needs at least 2 responses to compare, got {M.shape[0]}")
    rates = win_rates(M)
    ranking = x if x.ndim == 1 else rates
    if mode == "all":
        return [{"response_index": k, "win_prob": float(r)} for k, r in enumerate(rates)]
    w, l = int(np.argmax(ranking)), int(np.argmin(ranking))
    return [{"chosen_index": w, "rejected_index": l, "chosen_probs": float(M[w, l]),
             "chosen_probs_win": float(rates[w]), "chosen_probs_lose": float(rates[l])}]


# ---------------------------------------------------------------- SPPO dataset

def chat_messages(prompt: str, response: str) -> list[dict]:
    """The official message list: the user's prompt, then the assistant's response."""
    return [{"content": prompt, "role": "user"}, {"content": response, "role": "assistant"}]


def build_sppo_dataset(prompts, responses, matrices, pair_mode: str = "best_worst",
                       finished=None, prompt_ids=None) -> datasets.Dataset:
    """SPPO training data in the official schema, from K judged responses per prompt.

    prompts[i]: text; responses[i]: its K sampled responses; matrices[i]: their K×K win matrix or
    K judge scores (see select_pairs). Columns, with chat lists [user: prompt, assistant: response]:
      "best_worst" → prompt, chosen, rejected, chosen_probs, chosen_probs_win, chosen_probs_lose
      "all"        → prompt, response, win_prob          (K rows per prompt)
    A best_worst pair whose chosen and rejected texts are equal (all scores tied, where the
    official code trains a response against itself, or duplicate samples) is skipped: it states
    no preference. The skipped count, len(prompts) − len(dataset), is logged. finished[i] (K bools,
    optional: whether each sample ended by itself) adds <chat>_finished columns, which encode_chat
    reads so that a sample cut at max_new_tokens gets no end-of-turn. prompt_ids (optional, one per
    prompt) adds a prompt_id column (and response_index for "all"), so a repeated row can be told
    from two prompts that share a text (check_training_values refuses the first).
    """
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError(f"prompt_ids must have one id per prompt, got {len(prompt_ids)} for {len(prompts)}")
    if not len(prompts) == len(responses) == len(matrices):
        raise ValueError(f"prompts, responses and matrices must have one entry per prompt, got "
                         f"{len(prompts)}, {len(responses)} and {len(matrices)}")
    if finished is not None and len(finished) != len(prompts):
        raise ValueError(f"finished must have one list of flags per prompt, got {len(finished)} for {len(prompts)}")
    rows = []
    for i, (prompt, candidates, judged) in enumerate(zip(prompts, responses, matrices)):
        done = [True] * len(candidates) if finished is None else list(finished[i])
        if not isinstance(prompt, str) or not all(isinstance(c, str) for c in candidates):
            raise ValueError(f"prompt {i} and its responses must be strings")
        k = np.shape(judged)[0] if np.ndim(judged) else 0
        if k != len(candidates):
            raise ValueError(f"prompt {i} has {len(candidates)} responses but its judgement covers "
                             f"{k}: pass one score or matrix row per response")
        for sel in select_pairs(judged, mode=pair_mode):
            key = {} if prompt_ids is None else {"prompt_id": int(prompt_ids[i])}
            if pair_mode == "all":
                rows.append({**key, "response_index": sel["response_index"], "prompt": prompt, "win_prob": sel["win_prob"],
                             "response": chat_messages(prompt, candidates[sel["response_index"]]),
                             "response_finished": done[sel["response_index"]]})
            elif candidates[sel["chosen_index"]] != candidates[sel["rejected_index"]]:
                rows.append({**sel, **key, "prompt": prompt,
                             "chosen": chat_messages(prompt, candidates[sel["chosen_index"]]),
                             "rejected": chat_messages(prompt, candidates[sel["rejected_index"]]),
                             "chosen_finished": done[sel["chosen_index"]],
                             "rejected_finished": done[sel["rejected_index"]]})
    features = _RESPONSE_FEATURES if pair_mode == "all" else _PAIR_FEATURES
    if finished is not None:
        features = datasets.Features({**features, **{f"{c}_finished": datasets.Value("bool") for c in
                                                       (("response",) if pair_mode == "all" else ("chosen", "rejected"))}})
    if prompt_ids is not None:
        keys = {"prompt_id": datasets.Value("int64")}
        if pair_mode == "all":
            keys["response_index"] = datasets.Value("int64")
        features = datasets.Features({**keys, **features})
    if pair_mode == "best_worst" and len(rows) < len(prompts):
        logger.warning("skipped %d of %d prompts whose chosen and rejected responses are the same "
                       "text (tied judge scores or duplicate samples)", len(prompts) - len(rows),
                       len(prompts))
    return datasets.Dataset.from_dict({name: [r[name] for r in rows] for name in features},
                                      features=features)


def _messages(value, role: str) -> list[dict]:
    """A message list from a message list or a plain string (TRL's standard format)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def to_full_chats(dataset: datasets.Dataset) -> datasets.Dataset:
    """Rows in TRL's preference formats → the full chats sppo-lite trains on.

    TRL's explicit-prompt rows hold `prompt` (a string or messages) and assistant-only `chosen` /
    `rejected` (strings or messages); sppo-lite's rows (build_sppo_dataset) hold whole chats, user turn
    first. Rows already in sppo-lite's form are returned unchanged; otherwise each chat column becomes
    prompt messages + its answer, and `prompt` stays.
    """
    chats = [c for c in CHAT_COLUMNS if c in dataset.column_names]
    if not chats or len(dataset) == 0:
        return dataset
    first = dataset[0][chats[0]]
    if not isinstance(first, str) and any(m["role"] != "assistant" for m in first):
        return dataset  # whole chats already
    if "prompt" not in dataset.column_names:
        raise ValueError(f"column {chats[0]} holds only the answer but there is no prompt column: add `prompt` "
                         f"(TRL's explicit-prompt format) or store whole chats, user turn first")

    def whole(row):
        prompt = _messages(row["prompt"], "user")
        return {c: prompt + _messages(row[c], "assistant") for c in chats}

    return dataset.map(whole, desc="prompt + answer → chats")


def to_trl_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    """sppo-lite's whole-chat rows → TRL's explicit-prompt conversational rows (the inverse of to_full_chats).

    `prompt` becomes the messages before the answer, each chat column its last (assistant) message only;
    the other columns (win probabilities, ...) stay.
    """
    chats = [c for c in CHAT_COLUMNS if c in dataset.column_names]
    if not chats or len(dataset) == 0 or all(m["role"] == "assistant" for m in dataset[0][chats[0]]):
        return dataset

    def split(row):
        return {"prompt": row[chats[0]][:-1], **{c: row[c][-1:] for c in chats}}

    return dataset.map(split, desc="chats → prompt + answer")


# Columns a training row may hold, and the values each must lie in.
PROBABILITY_COLUMNS = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose", "win_prob")
REFERENCE_COLUMNS = tuple(f"ref_{c}_logps" for c in CHAT_COLUMNS)


def read_parquet(path, fix: str) -> datasets.Dataset:
    """A parquet file as an in-memory Dataset (pyarrow: an empty file is 0 rows, not an error); one ValueError
    naming the file and `fix` (what to do about it) when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return datasets.Dataset(pq.read_table(str(path)))
    except Exception as err:  # pyarrow's and the OS's errors alike: none of them names the file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} cannot be read ({first}): {fix}") from None


def check_unique_rows(dataset, name: str = "dataset") -> None:
    """A build stage's dataset holds each prompt_id once (best_worst) or each (prompt_id, response_index) once
    (all): one ValueError naming the repeated rows otherwise. Datasets without those columns pass."""
    columns = getattr(dataset, "column_names", None) or []
    if "prompt_id" not in columns:
        return
    keys = list(zip(dataset["prompt_id"], dataset["response_index"])) if "response_index" in columns \
        else list(dataset["prompt_id"])
    if len(set(keys)) == len(keys):
        return
    seen, repeated = set(), []
    for i, key in enumerate(keys):
        if key in seen:
            repeated.append(i)
        seen.add(key)
    raise ValueError(f"{name}: {len(repeated)} row(s) repeat an earlier row's prompt_id"
                     f"{' and response_index' if 'response_index' in columns else ''} (rows "
                     f"{', '.join(map(str, repeated[:5]))}): rebuild it (sppo-lite build --force) "
                     f"instead of training on it")


def check_training_values(dataset, name: str = "dataset") -> None:
    """Raise one ValueError naming the column and rows when a win probability is not a finite number in
    [0, 1] or a reference log-probability is not finite and <= 0: nothing else is trained on."""
    columns = getattr(dataset, "column_names", None) or []
    for column in columns:
        if column in PROBABILITY_COLUMNS:
            values = np.asarray(dataset[column], dtype=float)
            bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)))
            allowed = "finite probabilities in [0, 1]"
        elif column in REFERENCE_COLUMNS:
            values = np.asarray(dataset[column], dtype=float)
            bad = np.flatnonzero(~(np.isfinite(values) & (values <= 1e-3)))  # a log-probability is <= 0
            allowed = "finite log-probabilities (<= 0)"
        else:
            continue
        if len(bad):
            shown = ", ".join(f"{i} ({values[i]:g})" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise ValueError(f"{name}: column {column} must hold {allowed}, but {len(bad)} row(s) do not: {shown}; "
                             f"rebuild it (sppo-lite build --force) instead of training on it")


# ---------------------------------------------------------------- sequence log-probabilities

TRUNCATION_MODES = ("keep_end", "keep_start")


def encode_chat(tokenizer, messages, max_length: int = 1024, max_prompt_length: int = 512,
                finished: bool = True, truncation_mode: str = "keep_end") -> dict:
    """Token ids of a chat whose last message is the response: {"input_ids", "prompt_length"}.

    prompt = chat template of messages[:-1] with the generation prompt (what the policy was sampled
    from); response = the rest of the templated full chat (end-of-turn tokens included). The two
    are tokenized separately without extra special tokens, as TRL's DPO trainer does. Past
    max_length, truncation_mode "keep_end" (the official SPPO code's, TRL 0.x's) keeps the prompt's last
    max_prompt_length tokens and then cuts the response; "keep_start" (TRL 1.x's) keeps the first
    max_length tokens of the whole sequence (max_prompt_length is not used).
    finished=False (a sample cut at max_new_tokens) drops what the template adds after the
    response's text (Mistral: </s>): the policy never ended it, so it is not scored as if it had.
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length "
                         f"({max_length}) to leave room for the response")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("a chat to score needs prompt message(s) followed by an assistant "
                         f"response, got roles {[m['role'] for m in messages]}")
    prompt_text = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False,
                                                add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the tokenizer's chat template does not render the prompt (with generation "
                         "prompt) as a prefix of the full chat: use a template where it does")
    response_text = full_text[len(prompt_text):]
    if not finished:
        content = messages[-1]["content"]
        end = response_text.find(content)
        if end < 0:
            raise ValueError("the chat template changes the response's text, so its end-of-turn cannot be "
                             "removed for an unfinished sample: use a template that copies the content")
        response_text = response_text[: end + len(content)]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise ValueError("the chat template renders the prompt to no tokens: the response needs a "
                         "prompt token to be conditioned on")
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {', '.join(TRUNCATION_MODES)}, got {truncation_mode!r}")
    if len(prompt_ids) + len(response_ids) > max_length:
        if truncation_mode == "keep_end":
            prompt_ids = prompt_ids[-max_prompt_length:]
        else:
            prompt_ids = prompt_ids[:max_length - 1]  # keep_start, leaving at least one response token
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return {"input_ids": prompt_ids + response_ids, "prompt_length": len(prompt_ids)}


def pad_chat_batch(encoded: list[dict], tokenizer) -> dict:
    """Pad encode_chat outputs (tokenizer.pad, on its padding side) and mark the response tokens.

    response_mask = real tokens past the first prompt_length real tokens of each row.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token = "
                         "tokenizer.eos_token (padding is masked out)")
    batch = tokenizer.pad({"input_ids": [e["input_ids"] for e in encoded]}, return_tensors="pt")
    prompt_length = torch.tensor([e["prompt_length"] for e in encoded])
    real = batch["attention_mask"].bool()
    batch["response_mask"] = real & (batch["attention_mask"].cumsum(-1) > prompt_length[:, None])
    return dict(batch)


def sequence_logps(model, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """Σ_t log π(x_t | x_<t) over the response positions t of each row: shape (B,), float32.

    Position ids follow the attention mask, so left and right padding give the same sums. The LM
    head sees only the N hidden states that predict response tokens, so the model returns (N, V)
    logits, never (B, T, V); their log_softmax is taken in float32. Works on plain, PEFT-wrapped and
    accelerate-wrapped (DDP / DeepSpeed / FSDP) causal LMs. Differentiable: the trainer calls it on
    the policy, add_reference_logps under no_grad.
    """
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("response_mask marks a first token: a response token needs at least one "
                         "prompt token before it")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    rows, cols = response_mask[:, 1:].nonzero(as_tuple=True)  # hidden state at cols predicts token cols + 1
    # Hand-written: transformers' logits_to_keep keeps whole columns, not per-row positions. A
    # pre-hook on the output embedding gathers the rows inside the model's own forward, so the
    # wrappers' forward hooks (DDP sync, ZeRO-3 / FSDP parameter gathering) still run around it.
    head = extract_model_from_parallel(model).get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _, args: (args[0][rows, cols], *args[1:]))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits
    finally:
        hook.remove()
    token_logps = (logits.float().log_softmax(-1)
                   .gather(-1, input_ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1))
    return torch.zeros(input_ids.shape[0], dtype=torch.float32,
                       device=token_logps.device).index_add(0, rows, token_logps)


def add_reference_logps(dataset: datasets.Dataset, model, tokenizer, batch_size: int = 8,
                        max_length: int = 1024, max_prompt_length: int = 512,
                        truncation_mode: str = "keep_end", bf16: bool = False) -> datasets.Dataset:
    """Add ref_<c>_logps = Σ log π_t(response | prompt) for each chat column c present.

    c ∈ CHAT_COLUMNS (chosen, rejected → ref_chosen_logps, ref_rejected_logps; response →
    ref_response_logps). Texts go through encode_chat; computed in eval mode under torch.no_grad,
    batch_size rows at a time (bf16: under generation.bf16_autocast). An existing ref column is recomputed.
    """
    from .generation import bf16_autocast

    columns = [c for c in CHAT_COLUMNS if c in dataset.column_names]
    if not columns:
        raise ValueError(f"dataset has no chat column to score (looked for {', '.join(CHAT_COLUMNS)}); "
                         f"columns found: {', '.join(dataset.column_names)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for column in columns:
            done = dataset[f"{column}_finished"] if f"{column}_finished" in dataset.column_names else None
            encoded = [encode_chat(tokenizer, chat, max_length, max_prompt_length,
                                   finished=True if done is None else done[i], truncation_mode=truncation_mode)
                       for i, chat in enumerate(dataset[column])]
            sums = []
            with torch.no_grad(), bf16_autocast(model, bf16):
                for start in range(0, len(encoded), batch_size):
                    batch = pad_chat_batch(encoded[start:start + batch_size], tokenizer)
                    sums.append(sequence_logps(model, **{k: v.to(device) for k, v in batch.items()}).cpu())
            name = f"ref_{column}_logps"
            if name in dataset.column_names:
                dataset = dataset.remove_columns(name)
            dataset = dataset.add_column(name, torch.cat(sums).tolist() if sums else [])
    finally:
        model.train(was_training)
    return dataset
