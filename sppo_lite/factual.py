"""An independent signal beside the judge: short factual questions with known answers, scored by string match.

    items = load_factual()                         # data/factual_qa.jsonl: {"id", "question", "answers"}
    correct = score_answers(responses, items)      # 1 where an accepted answer appears as whole words
    compare_accuracy(correct_after, correct_before)  # paired: difference, bootstrap CI, exact McNemar p

The training judge never sees these questions or their answers, and none is in data/prompts.jsonl, so a
policy that learns to please the judge (warm words, short answers) gains nothing here; a hallucination
costs. The match is deliberately simple: case- and punctuation-blind, whole words, any accepted answer;
it can be fooled by an answer that lists several candidates, which the table of answers lets one see.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["load_factual", "normalise", "is_correct", "score_answers", "compare_accuracy", "factual_eval"]


def _default_file() -> Path:
    from .resources import PROJECT_ROOT

    return PROJECT_ROOT / "data" / "factual_qa.jsonl"




def load_factual(path=None) -> list[dict]:
    """The questions: one JSON object per line with "question" (text) and "answers" (accepted strings)."""
    path = Path(path) if path is not None else _default_file()
    if not path.is_file():
        raise ValueError(f"factual question file {path} does not exist")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n} is not JSON: {err.msg}") from None
        answers = item.get("answers")
        if not isinstance(item.get("question"), str) or not item["question"].strip() or not isinstance(answers, list) \
                or not answers or not all(isinstance(a, str) and normalise(a) for a in answers):
            raise ValueError(f"{path} line {n} needs a non-empty \"question\" and a list of non-empty \"answers\"")
        items.append({"id": item.get("id", f"line-{n}"), "question": item["question"], "answers": answers})
    if not items:
        raise ValueError(f"{path} holds no question")
    return items


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, spaces collapsed: 'São Paulo!' → 'sao paulo'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def is_correct(response: str, answers: Sequence[str]) -> bool:
    """Whether any accepted answer occurs in the response as whole words (after normalise)."""
    said = f" {normalise(response)} "
    return any(f" {normalise(a)} " in said for a in answers)


def score_answers(responses: Sequence[str], items: Sequence[dict]) -> np.ndarray:
    """1.0 / 0.0 per question: is_correct of each response against its item's answers."""
    if len(responses) != len(items):
        raise ValueError(f"{len(responses)} responses for {len(items)} questions: one response per question")
    return np.array([float(is_correct(r, it["answers"])) for r, it in zip(responses, items)])


def compare_accuracy(model_correct, baseline_correct, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two models on the same questions: accuracies, their difference with a paired
    bootstrap 95 % CI, and the exact McNemar p-value (a binomial test on the discordant questions, scipy)."""
    from scipy.stats import binomtest

    from .evaluate import bootstrap_ci

    a, b = np.asarray(model_correct, dtype=float), np.asarray(baseline_correct, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("compare_accuracy needs two equal-length, non-empty 0/1 arrays (same questions)")
    _, low, high = bootstrap_ci(lambda x, y: float(np.mean(x - y)), a, b, n_boot=n_boot, seed=seed)  # paired
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"accuracy": float(a.mean()), "baseline_accuracy": float(b.mean()), "difference": float(a.mean() - b.mean()),
            "difference_ci": [low, high],
            "only_model": only_a, "only_baseline": only_b, "mcnemar_p": float(p), "n": len(a)}


def factual_eval(run, out_dir, items=None, iterations=None, max_new_tokens: int = 64, batch_size: int = 8,
                 n_boot: int = 2000, seed: int = 0, device: str = "auto", log=print) -> dict:
    """Every finished iterate of a run (and the base, t = 0) on the factual questions, greedy, one answer each.

    Returns {"items", "iterations", "responses": {t: answers}, "correct": {t: 0/1 array}, "accuracy": {t: float},
    "vs_base": {t: compare_accuracy(t vs base)}}. Answers are cached under out_dir/responses/ (generate_for_models).
    """
    from .evaluation_run import generate_for_models

    items = load_factual() if items is None else list(items)
    questions = [it["question"] for it in items]
    answers = generate_for_models(run, questions, out_dir, iterations=iterations, n=1, temperature=0.0, top_p=1.0,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, device=device, log=log)
    responses = {t: [rs[0] for rs in per] for t, per in answers.items()}
    correct = {t: score_answers(rs, items) for t, rs in responses.items()}
    base = min(correct)
    return {"items": items, "iterations": sorted(correct), "responses": responses, "correct": correct,
            "accuracy": {t: float(c.mean()) for t, c in correct.items()},
            "vs_base": {t: compare_accuracy(c, correct[base], n_boot=n_boot, seed=seed) for t, c in correct.items()}}
