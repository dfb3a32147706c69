"""The factual-accuracy signal: string matching by hand, the shipped questions, paired comparison numbers."""
import json

import numpy as np
import pytest

from sppo_lite import factual


def test_matching_by_hand():
    assert factual.is_correct("The capital of France is Paris.", ["Paris"])
    assert factual.is_correct("It's PARIS!", ["paris"])
    assert not factual.is_correct("Parisian cafés are lovely.", ["Paris"])  # whole words only
    assert factual.is_correct("Água: H₂O", ["H₂O"]) and factual.normalise("São Paulo!") == "sao paulo"
    assert factual.is_correct("A spider has eight legs.", ["8", "eight"])
    assert not factual.is_correct("A spider has six legs.", ["8", "eight"])
    assert factual.is_correct("It is New Delhi.", ["New Delhi", "Delhi"])


def test_shipped_questions_are_valid_and_held_out():
    items = factual.load_factual()
    assert len(items) == 61 and len({it["id"] for it in items}) == 61
    from sppo_lite.data import load_prompts
    from sppo_lite.resources import PROJECT_ROOT

    prompts = {p.strip().lower() for p in load_prompts(PROJECT_ROOT / "data" / "prompts.jsonl")}
    assert not prompts & {it["question"].strip().lower() for it in items}  # no iteration trains on them


def test_bad_files_are_refused(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "Q?", "answers": []}\n')
    with pytest.raises(ValueError, match="line 1 needs"):
        factual.load_factual(f)
    f.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        factual.load_factual(f)
    with pytest.raises(ValueError, match="does not exist"):
        factual.load_factual(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="one response per question"):
        factual.score_answers(["a"], [{"question": "q", "answers": ["a"]}] * 2)


def test_paired_comparison_by_hand():
    after = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 1], dtype=float)   # 7 / 10
    before = np.array([1, 0, 1, 0, 0, 0, 1, 1, 0, 1], dtype=float)  # 5 / 10
    c = factual.compare_accuracy(after, before, n_boot=4000)
    assert (c["accuracy"], c["baseline_accuracy"], c["difference"]) == (0.7, 0.5, pytest.approx(0.2))
    assert (c["only_model"], c["only_baseline"]) == (2, 0)
    assert c["mcnemar_p"] == pytest.approx(0.5)  # two-sided exact binomial: 2 of 2 discordant, p = 2 · 0.5²
    lo, hi = c["difference_ci"]
    assert lo == 0.0 and 0.4 <= hi <= 0.5  # only the 2 discordant questions move it: Bin(10, 0.2)/10, 97.5 % ≈ 0.5
    same = factual.compare_accuracy(before, before)
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
