"""Judges: K responses to one prompt in, a K×K win-probability matrix out.

M[i, j] = P(y_i ≻ y_j | x), M + Mᵀ = 1, diagonal exactly 1/2. SPPO reads the win rate against
the current policy off it: P̂(y_k ≻ π_t) = (1/K) Σ_j M[k, j].

    PairRMJudge      PairRM via llm-blender: official Bradley–Terry scores or the full pairwise matrix
    RewardModelJudge any sequence-classification reward model, P_ij = σ(r_i − r_j)
    LengthJudge      longer wins, P_ij = σ((len_i − len_j)/scale)
    SentimentJudge   warm and short wins: VADER sentiment minus a per-word cost, Bradley–Terry
    CommitteeJudge   relevance to the prompt (an LM), warmth and concision vote; the majority can cycle
    CyclicStyleJudge styles found by marker strings play an intransitive game (rock-paper-scissors)
    MatrixJudge      a fixed preference matrix looked up by response label (tabular games)
"""
from __future__ import annotations

import itertools
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy.special import expit

from .game import bradley_terry, validate_preference, weighted_cycle

__all__ = [
    "Judge", "JudgeBase", "validate_win_matrix",
    "PairRMJudge", "RewardModelJudge", "LengthJudge", "SentimentJudge", "CommitteeJudge", "CyclicStyleJudge",
    "MatrixJudge",
]


@runtime_checkable
class Judge(Protocol):
    """Anything that turns responses to a prompt into a K×K matrix M[i, j] = P(y_i ≻ y_j)."""

    def win_matrix(self, prompt: str, responses: list[str]) -> np.ndarray: ...

    def win_matrices(self, prompts: Sequence[str],
                     responses_per_prompt: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


def _describe(index: int, prompt: str) -> str:
    short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
    return f"prompt {index} ({short!r})"


def validate_win_matrix(M, n_responses: int, prompt: str = "", index: int = 0) -> np.ndarray:
    """M as a float array with diagonal set to exactly 1/2; one ValueError naming the prompt otherwise."""
    M = np.asarray(M, dtype=float)
    if M.shape != (n_responses, n_responses):
        raise ValueError(f"judge returned a matrix of shape {M.shape} for {_describe(index, prompt)} "
                         f"with {n_responses} responses: it must be {n_responses}×{n_responses}")
    try:
        M = validate_preference(M)
    except ValueError as err:
        raise ValueError(
            f"judge returned a bad preference matrix for {_describe(index, prompt)}: {err}") from None
    np.fill_diagonal(M, 0.5)
    return M


class JudgeBase:
    """Shared front end: checks the inputs, calls `_judge` once for all prompts, validates every matrix.

    Subclasses implement `_judge(prompts, responses_per_prompt) -> list of K×K arrays`.
    """

    def win_matrix(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """The K×K matrix M[i, j] = P(responses[i] ≻ responses[j] | prompt)."""
        return self.win_matrices([prompt], [responses])[0]

    def win_matrices(self, prompts: Sequence[str],
                     responses_per_prompt: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One win matrix per prompt, judged in batches across prompts."""
        if isinstance(prompts, str) or any(isinstance(rs, str) for rs in responses_per_prompt):
            raise ValueError("win_matrices takes a list of prompts and one list of responses per prompt; "
                             "for a single prompt use win_matrix(prompt, responses)")
        prompts, responses = list(prompts), [list(rs) for rs in responses_per_prompt]
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} response lists: "
                             f"pass one list of responses per prompt")
        for k, (prompt, rs) in enumerate(zip(prompts, responses)):
            if not rs or not all(isinstance(r, str) for r in rs) or not isinstance(prompt, str):
                raise ValueError(f"{_describe(k, str(prompt))} needs a string prompt and a non-empty "
                                 f"list of string responses")
        if not prompts:
            return []
        matrices = self._judge(prompts, responses)
        if len(matrices) != len(prompts):
            raise ValueError(f"judge returned {len(matrices)} matrices for {len(prompts)} prompts")
        return [validate_win_matrix(M, len(rs), prompt, k)
                for k, (M, prompt, rs) in enumerate(zip(matrices, prompts, responses))]

    def _judge(self, prompts: list[str], responses: list[list[str]]) -> list[np.ndarray]:
        raise NotImplementedError


# ---------------------------------------------------------------- rule judges

class LengthJudge(JudgeBase):
    """Longer wins: P_ij = σ((len_i − len_j)/scale), lengths in characters."""

    def __init__(self, scale: float = 20.0):
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale

    def _judge(self, prompts, responses):
        return [bradley_terry(np.array([len(r) for r in rs]) / self.scale) for rs in responses]


class SentimentJudge(JudgeBase):
    """Warm and short wins: s(y) = VADER compound(y) − words(y)/words_per_point, P_ij = σ((s_i − s_j)/scale).

    A lab judge with a real, readable preference on real text, offline and cheap on a CPU (vaderSentiment,
    a maintained lexicon-and-rules sentiment scorer; no model). What it rewards: positive, friendly wording
    (compound ∈ [−1, 1]) at a cost of 1/words_per_point per word, so a 60-word answer must be one point
    warmer than a one-word one to tie. How it can be exploited: length first — compound grows with every
    positive word, so without the cost long gushing answers win; with it, short effusive ones ("Great
    question! Happy to help!") do; it ignores correctness and the prompt entirely. It is transitive: one
    score per response, so P is a Bradley–Terry matrix and its Nash equilibrium is the top-scored response.
    """

    def __init__(self, words_per_point: float = 60.0, scale: float = 0.1):
        if not words_per_point > 0 or not scale > 0:
            raise ValueError(f"words_per_point and scale must be positive, got {words_per_point} and {scale}")
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.words_per_point, self.scale = words_per_point, scale

    def score(self, response: str) -> float:
        """s(y) = compound(y) − words(y)/words_per_point."""
        return self.analyzer.polarity_scores(response)["compound"] - len(response.split()) / self.words_per_point

    def _judge(self, prompts, responses):
        return [bradley_terry(np.array([self.score(r) for r in rs]) / self.scale) for rs in responses]


class CommitteeJudge(JudgeBase):
    """Three criteria vote on every pair and the majority decides: P_ij = σ(γ·Σ_c sign(s_c(y_i) − s_c(y_j))).

    The criteria, each a score per response (a difference below its tolerance is a tie, no vote):
      relevance  (log p(y | x) − log p(y | no prompt)) / tokens(y) under a causal LM (SmolLM2 by default): how much
                 more likely the prompt makes the answer. Rewards answers about what was asked; exploited by
                 restating the question, or by answers so generic that the prompt changes little but stays positive.
      warmth     VADER compound sentiment in [−1, 1]. Rewards friendly wording; exploited by gushing ("Great
                 question! Happy to help!") whatever the content.
      concision  −words(y). Rewards short answers; exploited by answering in one word, or not at all.
    With three voters, a pair decided 2–1 gets σ(γ) (0.82 at γ = 1.5) and a unanimous one σ(3γ) (0.99). Votes of
    different criteria can disagree in a circle — A more relevant than B, B warmer than C, C shorter than A, each
    carried by a majority — so the judge can be intransitive, unlike a reward model (SentimentJudge is the
    transitive contrast). `game.cyclic_triple_share` and `game.bradley_terry_distance` measure how much, per
    prompt; on 32 prompts × 6 of SmolLM2's own samples 1.6 % of response triples cycle and 6 of the 32 prompts
    have at least one cycle (benchmarks/judge_intransitivity.py, BENCHMARKS.md). It reads no correctness: a
    fluent wrong answer that is on topic, warm and short wins.
    """

    CRITERIA = ("relevance", "warmth", "concision")

    def __init__(self, model="smollm2-135m-instruct", gamma: float = 1.5, tolerances=(0.05, 0.05, 0.5),
                 batch_size: int = 8, device: str = "cpu", dtype="float32"):
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        if len(tolerances) != 3 or min(tolerances) < 0:
            raise ValueError(f"tolerances must be three numbers >= 0 (relevance, warmth, concision), got {tolerances}")
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        from .modeling import load_policy

        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            self.model, self.tokenizer = load_policy(str(model), dtype=dtype)
        else:
            self.model, self.tokenizer = model
        self.model.to(device).eval()
        self.analyzer = SentimentIntensityAnalyzer()
        self.gamma, self.tolerances, self.batch_size, self.device = gamma, tuple(tolerances), batch_size, device
        self._cache: dict[tuple[str, str], tuple[float, float, float]] = {}  # (prompt, response) → its 3 scores

    def relevance(self, prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per response, (log p(y | x) − log p(y | empty prompt)) / tokens(y) under the LM, in nats per token."""
        import torch

        from .data import encode_chat, pad_chat_batch, sequence_logps

        rows = [(x, y) for x, ys in zip(prompts, responses) for y in ys]
        encoded = {}
        for key, user in (("with", lambda x: x), ("without", lambda x: "")):
            encoded[key] = [encode_chat(self.tokenizer, [{"role": "user", "content": user(x)},
                                                         {"role": "assistant", "content": y}],
                                        max_length=1 << 30, max_prompt_length=(1 << 30) - 1)  # nothing cut: both
                            for x, y in rows]                                       # sums cover the same tokens
        sums = {}
        with torch.no_grad():
            for key, items in encoded.items():
                parts = []
                for a in range(0, len(items), self.batch_size):
                    batch = pad_chat_batch(items[a:a + self.batch_size], self.tokenizer)
                    parts.append(sequence_logps(self.model, **{k: v.to(self.device) for k, v in batch.items()}).cpu())
                sums[key] = torch.cat(parts).double().numpy() if parts else np.zeros(0)
        tokens = np.array([max(len(e["input_ids"]) - e["prompt_length"], 1) for e in encoded["with"]], dtype=float)
        flat = (sums["with"] - sums["without"]) / tokens
        out, start = [], 0
        for ys in responses:
            out.append(flat[start:start + len(ys)])
            start += len(ys)
        return out

    def scores(self, prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per prompt, a K×3 array: relevance, warmth, concision of each response.

        Each score depends on its (prompt, response) alone, so it is computed once and kept: judging the same
        answers again in other pairings (evaluation's many head-to-heads) costs no LM pass.
        """
        todo = sorted({(x, y) for x, ys in zip(prompts, responses) for y in ys} - self._cache.keys())
        if todo:
            relevance = self.relevance([x for x, _ in todo], [[y] for _, y in todo])
            for (x, y), (rel,) in zip(todo, relevance):
                self._cache[x, y] = (float(rel), self.analyzer.polarity_scores(y)["compound"], -float(len(y.split())))
        return [np.array([self._cache[x, y] for y in ys], dtype=float).reshape(len(ys), 3)
                for x, ys in zip(prompts, responses)]

    def _judge(self, prompts, responses):
        out = []
        for s in self.scores(prompts, responses):
            diff = s[:, None, :] - s[None, :, :]                        # K×K×3 score differences
            votes = np.sign(diff) * (np.abs(diff) > np.asarray(self.tolerances))
            out.append(expit(self.gamma * votes.sum(axis=2)))
        return out


class MatrixJudge(JudgeBase):
    """Tabular game as a judge: response y is the label of arm a(y), and M_ij = P[a(y_i), a(y_j)].

    Labels default to "0", "1", ..., so a policy over the n arms can be judged by arm index.
    """

    def __init__(self, P, labels: Sequence[str] | None = None):
        self.P = validate_preference(P)
        self.labels = [str(i) for i in range(len(self.P))] if labels is None else list(labels)
        if len(self.labels) != len(self.P):
            raise ValueError(f"MatrixJudge got {len(self.labels)} labels for a "
                             f"{len(self.P)}×{len(self.P)} matrix: give one label per arm")

    def arm(self, response: str) -> int:
        """Index of the arm whose label equals the response (surrounding whitespace ignored)."""
        try:
            return self.labels.index(response.strip())
        except ValueError:
            raise ValueError(
                f"response {response!r} is not one of the MatrixJudge labels {self.labels}") from None

    def _judge(self, prompts, responses):
        return [self.P[np.ix_(arms, arms)] for arms in ([self.arm(r) for r in rs] for rs in responses)]


class CyclicStyleJudge(JudgeBase):
    """Styles play a fixed game, quality breaks ties: P_ij = (1 − w)·S[s_i, s_j] + w·σ(q_i − q_j).

    The style s(y) is the marker that appears earliest in y (list order breaks ties). S defaults
    to `game.weighted_cycle()` (0 beats 1 beats 2 beats 0), an intransitive game no reward model
    can represent. With a `quality` function q (str → float), w = quality_weight; without, w = 0.
    A response with no marker loses to every marked one (P = 0) and plays unmarked ones on quality.
    """

    def __init__(self, markers: Sequence[str], style_matrix=None,
                 quality: Callable[[str], float] | None = None, quality_weight: float = 0.2):
        self.markers = list(markers)
        S = weighted_cycle() if style_matrix is None else validate_preference(style_matrix)
        if len(S) != len(self.markers):
            raise ValueError(f"style_matrix is {len(S)}×{len(S)} but there are {len(self.markers)} markers: "
                             f"give one marker per style")
        if not 0 <= quality_weight <= 1:
            raise ValueError(f"quality_weight must lie in [0, 1], got {quality_weight}")
        n = len(S)
        # The unmarked style is row/column n: it loses to every marker style and ties itself.
        self.style_matrix = np.full((n + 1, n + 1), 0.5)
        self.style_matrix[:n, :n] = S
        self.style_matrix[n, :n], self.style_matrix[:n, n] = 0.0, 1.0
        self.quality = quality
        self.quality_weight = quality_weight if quality is not None else 0.0

    def style(self, response: str) -> int | None:
        """Index of the marker that appears first in the response, None when there is none."""
        found = [(response.find(m), k) for k, m in enumerate(self.markers) if m in response]
        return min(found)[1] if found else None

    def _matrix(self, responses: list[str]) -> np.ndarray:
        n = len(self.markers)
        s = np.array([n if (k := self.style(r)) is None else k for r in responses])
        S = self.style_matrix[np.ix_(s, s)]
        if self.quality is None:
            return S
        q = np.array([self.quality(r) for r in responses], dtype=float)
        M = (1 - self.quality_weight) * S + self.quality_weight * bradley_terry(q)
        unmarked = s == n
        one_unmarked = unmarked[:, None] != unmarked[None, :]
        M[one_unmarked] = S[one_unmarked]
        return M

    def _judge(self, prompts, responses):
        return [self._matrix(rs) for rs in responses]


# ---------------------------------------------------------------- model judges

class RewardModelJudge(JudgeBase):
    """Bradley–Terry from a scalar reward model: P_ij = σ(r_i − r_j), r = model(prompt, response).

    Any AutoModelForSequenceClassification with num_labels=1. The input is the tokenizer's chat
    template over [user: prompt, assistant: response] when it has one, else the (prompt, response)
    text pair with the tokenizer's own separator. All (prompt, response) pairs go through the
    model in batches of `batch_size`.
    """

    def __init__(self, model_name_or_path: str, device: str = "cpu", batch_size: int = 8, dtype=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device, self.batch_size = device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        kwargs = {} if dtype is None else {"dtype": dtype}
        self.model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, **kwargs)
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_name_or_path!r} has num_labels={self.model.config.num_labels}; "
                             f"a reward model gives one score per response (num_labels=1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()

    def _encode(self, prompts: list[str], responses: list[str]):
        from .data import chat_messages

        tok = self.tokenizer
        if tok.chat_template:
            texts = [tok.apply_chat_template(chat_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
            return tok(texts, add_special_tokens=False, padding=True, truncation=True, return_tensors="pt")
        return tok(prompts, responses, padding=True, truncation=True, return_tensors="pt")

    def rewards(self, prompts: list[str], responses: list[str]):
        """Scalar reward of each (prompt, response) pair, as a float64 array."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                stop = start + self.batch_size
                batch = self._encode(prompts[start:stop], responses[start:stop])
                logits = self.model(**batch.to(self.device)).logits
                out.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(out).astype(float)

    def _judge(self, prompts, responses):
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        r = self.rewards(flat_prompts, [y for rs in responses for y in rs])
        ends = np.cumsum([len(rs) for rs in responses])
        return [bradley_terry(chunk) for chunk in np.split(r, ends[:-1])]


class PairRMJudge(JudgeBase):
    """PairRM (llm-blender) as a judge; ℓ(a, b) is its logit that a, shown first, beats b.

    mode="official": the SPPO scripts' step. `Blender.rank(return_scores=True)` gives
        s_i = (1/K) Σ_j [ℓ(i, j) − ℓ(j, i)], and P_ij = σ(s_i − s_j): a Bradley–Terry projection.
    mode="pairwise": the full matrix from `Blender.compare` on each pair i < j in both orders,
        P_ij = σ((ℓ(i, j) − ℓ(j, i))/2); keeps any intransitivity PairRM expresses.
    Both run K(K−1) ranker passes per prompt, batched across prompts (`batch_size` sequences per
    forward pass; the official script used 1). For parity with the official pipeline, pass the
    prompt as the policy's chat template renders it up to the assistant turn.
    """

    MODES = ("pairwise", "official")

    def __init__(self, model_name_or_path: str = "llm-blender/PairRM", mode: str = "pairwise",
                 device: str = "cpu", batch_size: int = 16, dtype=None):
        from .pairrm import load_blender

        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.batch_size = mode, batch_size
        self.blender = load_blender(model_name_or_path, device=device, dtype=dtype)

    def _judge(self, prompts, responses):
        judge = self._official if self.mode == "official" else self._pairwise
        return judge(prompts, responses)

    def _official(self, prompts, responses):
        matrices = [None] * len(prompts)
        for K in sorted({len(rs) for rs in responses}):  # Blender.rank needs the same K within a call
            idx = [n for n, rs in enumerate(responses) if len(rs) == K]
            scores = self.blender.rank([prompts[n] for n in idx], [responses[n] for n in idx],
                                       return_scores=True, batch_size=self.batch_size, disable_tqdm=True)
            for n, s in zip(idx, scores):
                matrices[n] = bradley_terry(s)
        return matrices

    def _pairwise(self, prompts, responses):
        matrices = [np.full((len(rs), len(rs)), 0.5) for rs in responses]
        pairs = [(n, i, j) for n, rs in enumerate(responses)
                 for i, j in itertools.combinations(range(len(rs)), 2)]
        if not pairs:
            return matrices
        # Default compare mode "[A,B]+[B,A]" returns ℓ(a, b) − ℓ(b, a) for each pair.
        diffs = self.blender.compare(
            [prompts[n] for n, _, _ in pairs], [responses[n][i] for n, i, _ in pairs],
            [responses[n][j] for n, _, j in pairs], batch_size=self.batch_size, return_logits=True,
            disable_tqdm=True)
        for (n, i, j), d in zip(pairs, np.asarray(diffs, dtype=float)):
            matrices[n][i, j] = expit(d / 2)
            matrices[n][j, i] = 1.0 - matrices[n][i, j]
        return matrices
