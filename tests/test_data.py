"""sppo_lite.data: prompt loading, iteration split, official win-probability columns, SPPO dataset,
sequence log-probabilities on a tiny random Mistral built here (no download)."""
import json
import logging
import math
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from sppo_lite.data import (
    add_reference_logps, build_sppo_dataset, encode_chat, iteration_split, load_prompts,
    pad_chat_batch, probs_from_scores, select_pairs, sequence_logps, win_rates,
)

DATA = Path(__file__).resolve().parents[1] / "data"
LN3 = math.log(3.0)


# ---------------------------------------------------------------- probabilities

def test_probs_from_scores_matches_sigmoid_of_differences():
    M = probs_from_scores([0.0, LN3])
    assert M == pytest.approx(np.array([[0.5, 0.25], [0.75, 0.5]]))
    batch = probs_from_scores([[0.0, LN3], [LN3, 0.0]])
    assert batch.shape == (2, 2, 2)
    np.testing.assert_allclose(batch[0], M)
    np.testing.assert_allclose(batch[1], M.T)


def test_probs_from_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        probs_from_scores([0.0, np.nan])
    with pytest.raises(ValueError, match="shape"):
        probs_from_scores(np.zeros((2, 2, 2)))


M3 = np.array([[0.5, 1.0, 0.9],
               [0.0, 0.5, 0.7],
               [0.1, 0.3, 0.5]])


def test_win_rates_are_row_means_with_the_diagonal():
    np.testing.assert_allclose(win_rates(M3), [2.4 / 3, 1.2 / 3, 0.9 / 3])
    batch = np.stack([M3, M3.T])
    np.testing.assert_allclose(win_rates(batch), [win_rates(M3), win_rates(M3.T)])


def test_win_rates_validates_each_matrix():
    bad = M3.copy()
    bad[0, 1] = 0.8
    with pytest.raises(ValueError, match="P \\+ Pᵀ = 1"):
        win_rates(bad)
    with pytest.raises(ValueError, match="matrix 1 of the batch"):
        win_rates(np.stack([M3, bad]))
    with pytest.raises(ValueError, match="K×K or a batch"):
        win_rates([0.5, 0.5])


# Worked example, official compute_prob: s = (0, ln 3, −ln 3), K = 3.
#   M = [[.5, .25, .75], [.75, .5, .9], [.25, .1, .5]]     (σ(ln 3) = 3/4, σ(2 ln 3) = 9/10)
#   chosen = argmax s = 1, rejected = argmin s = 2, chosen_probs = M[1, 2] = 0.9,
#   chosen_probs_win = (.75 + .5 + .9)/3 = 2.15/3, chosen_probs_lose = (.25 + .1 + .5)/3 = .85/3
SCORES = [0.0, LN3, -LN3]
OFFICIAL = {"chosen_index": 1, "rejected_index": 2, "chosen_probs": 0.9,
            "chosen_probs_win": 2.15 / 3, "chosen_probs_lose": 0.85 / 3}


def test_select_pairs_best_worst_reproduces_the_official_columns():
    (row,) = select_pairs(SCORES)
    assert row == pytest.approx(OFFICIAL)
    (from_matrix,) = select_pairs(probs_from_scores(SCORES))
    assert from_matrix == pytest.approx(OFFICIAL)


def test_select_pairs_all_gives_every_response_its_win_rate():
    rows = select_pairs(SCORES, mode="all")
    assert [r["response_index"] for r in rows] == [0, 1, 2]
    assert [r["win_prob"] for r in rows] == pytest.approx([0.5, 2.15 / 3, 0.85 / 3])


def test_select_pairs_ties_pick_the_first_index_twice_like_the_official_code():
    (row,) = select_pairs([1.0, 1.0, 1.0])
    assert (row["chosen_index"], row["rejected_index"]) == (0, 0)
    assert row["chosen_probs"] == row["chosen_probs_win"] == row["chosen_probs_lose"] == 0.5


def test_select_pairs_errors():
    with pytest.raises(ValueError, match="mode must be"):
        select_pairs(SCORES, mode="pairs")
    with pytest.raises(ValueError, match="at least 2 responses"):
        select_pairs([1.0])
    with pytest.raises(ValueError, match="K scores or a K×K"):
        select_pairs(np.zeros((2, 3, 3)))


# ---------------------------------------------------------------- SPPO dataset

def chat(prompt, response):
    return [{"content": prompt, "role": "user"}, {"content": response, "role": "assistant"}]


def test_build_sppo_dataset_official_schema_and_values():
    ds = build_sppo_dataset(["q"], [["a", "b", "c"]], [SCORES])
    assert ds.column_names == ["prompt", "chosen", "rejected", "chosen_probs",
                               "chosen_probs_win", "chosen_probs_lose"]
    row = ds[0]
    assert row["prompt"] == "q"
    assert row["chosen"] == chat("q", "b") and row["rejected"] == chat("q", "c")
    assert row["chosen_probs"] == pytest.approx(0.9)
    assert row["chosen_probs_win"] == pytest.approx(2.15 / 3)
    assert row["chosen_probs_lose"] == pytest.approx(0.85 / 3)


def test_build_sppo_dataset_matches_the_fixture_written_from_the_official_formulas():
    # Row 0 of the fixture: five responses with these made-up PairRM-style scores.
    prompt = "Give me one tip for keeping basil alive indoors."
    responses = ["Put it on a sunny windowsill and water when the top soil is dry.",
                 "Basil likes light.", "Water it every hour.",
                 "Keep it warm, bright and pinch off flower buds.", "Plants are nice."]
    built = build_sppo_dataset([prompt], [responses], [[1.2, -0.3, -2.0, 1.9, -1.1]])
    fixture = datasets.Dataset.from_parquet(str(DATA / "fixtures" / "sppo_iteration.parquet"))
    assert built.features == fixture.features
    for name, value in built[0].items():
        expected = fixture[0][name]
        assert value == (pytest.approx(expected) if isinstance(value, float) else expected)


def test_build_sppo_dataset_skips_pairs_with_the_same_text(caplog):
    with caplog.at_level(logging.WARNING, logger="sppo_lite.data"):
        ds = build_sppo_dataset(["tied", "dup", "ok"], [["x", "y"], ["same", "same"], ["u", "v"]],
                                [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert ds["prompt"] == ["ok"]
    assert "skipped 2 of 3 prompts" in caplog.text
    empty = build_sppo_dataset(["tied"], [["x", "y"]], [[0.0, 0.0]])
    assert len(empty) == 0 and "chosen_probs_win" in empty.column_names


def test_build_sppo_dataset_all_mode_has_one_row_per_response():
    ds = build_sppo_dataset(["q"], [["a", "b", "c"]], [probs_from_scores(SCORES)], pair_mode="all")
    assert ds.column_names == ["prompt", "response", "win_prob"]
    assert ds["response"] == [chat("q", r) for r in "abc"]
    assert ds["win_prob"] == pytest.approx([0.5, 2.15 / 3, 0.85 / 3])


def test_build_sppo_dataset_errors():
    with pytest.raises(ValueError, match="one entry per prompt"):
        build_sppo_dataset(["q", "r"], [["a", "b"]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="has 2 responses but its judgement covers 3"):
        build_sppo_dataset(["q"], [["a", "b"]], [SCORES])
    with pytest.raises(ValueError, match="must be strings"):
        build_sppo_dataset(["q"], [["a", None]], [[0.0, 1.0]])


# ---------------------------------------------------------------- iteration split

PROMPTS = [f"prompt {i}" for i in range(10)]


def test_iteration_split_disjoint_covering_and_deterministic():
    parts = [iteration_split(PROMPTS, t) for t in (1, 2, 3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(sum(parts, [])) == sorted(PROMPTS)
    assert parts == [iteration_split(PROMPTS, t) for t in (1, 2, 3)]
    assert parts != [iteration_split(PROMPTS, t, seed=1) for t in (1, 2, 3)]
    assert iteration_split(PROMPTS, 2, seed=None) == PROMPTS[4:7]


def test_iteration_split_errors():
    with pytest.raises(ValueError, match="iteration must be an integer in 1..3"):
        iteration_split(PROMPTS, 0)
    with pytest.raises(ValueError, match="cannot fill 3"):
        iteration_split(PROMPTS[:2], 1)
    with pytest.raises(ValueError, match="n_iterations"):
        iteration_split(PROMPTS, 1, n_iterations=0)


# ---------------------------------------------------------------- loading prompts

def test_project_prompt_set():
    prompts = load_prompts(DATA / "prompts.jsonl")
    assert len(prompts) >= 200
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert load_prompts(DATA / "prompts.jsonl", limit=5) == prompts[:5]


def test_ultrafeedback_fixture_uses_instruction_and_drops_repeats():
    prompts = load_prompts(DATA / "fixtures" / "ultrafeedback.jsonl")
    assert prompts == ["Suggest three names for a small neighbourhood café.",
                       "How many minutes are there in three and a half hours?",
                       "Write a one-sentence reminder to water the garden."]


def test_sppo_fixture_parquet_and_our_output_load_alike(tmp_path):
    assert load_prompts(DATA / "fixtures" / "sppo_iteration.parquet") == [
        "Give me one tip for keeping basil alive indoors.", "What is 15 percent of 80?",
        "Name a bird that cannot fly."]
    path = tmp_path / "train.parquet"
    build_sppo_dataset(["q1", "q2"], [["a", "b"], ["c", "d"]], [[0.0, 1.0], [1.0, 0.0]]).to_parquet(str(path))
    assert load_prompts(path) == ["q1", "q2"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_blank_prompts_dropped_and_prompt_column_chosen(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "text": "x"}, {"prompt": " ", "text": "y"},
                                              {"prompt": "a", "text": "z"}])
    assert load_prompts(path) == ["a"]
    assert load_prompts(path, prompt_column="text") == ["x", "y", "z"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "p.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="unknown prompt file format '.csv'"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"\n')
    with pytest.raises(ValueError, match="could not read broken.jsonl"):
        load_prompts(tmp_path / "broken.jsonl")
    path = write_jsonl(tmp_path / "cols.jsonl", [{"text": "a", "id": 1}])
    with pytest.raises(ValueError, match="no prompt column .*columns found: text, id"):
        load_prompts(path)
    with pytest.raises(ValueError, match="no column 'query'; columns found: text, id"):
        load_prompts(path, prompt_column="query")
    with pytest.raises(ValueError, match="must hold text"):
        load_prompts(path, prompt_column="id")
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": ""}, {"prompt": "  "}])
    with pytest.raises(ValueError, match="has no prompts"):
        load_prompts(blank)
    with pytest.raises(ValueError, match="limit"):
        load_prompts(blank, limit=0)


def test_uncached_hub_id_offline_says_pass_a_local_file(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline mode.*pass a local .jsonl or .parquet"):
        load_prompts("sppo-lite-tests/not-a-cached-dataset")


# ---------------------------------------------------------------- sequence log-probs

WORDS = "why is the sky blue cat dog sat on a mat tell me about birds can fly not yes no one two".split()


@pytest.fixture(scope="module")
def tiny():
    """A word-level tokenizer with a chat template and a 1-layer random Mistral over its vocabulary."""
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{{ bos_token + ' ' }}{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' </s> ' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}")
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                           max_position_embeddings=64, initializer_range=0.5)
    return tokenizer, MistralForCausalLM(config).eval()


CHATS = [chat("why is the sky blue", "the sky is blue"),
         chat("tell me about birds", "birds can fly"),
         chat("cat", "a cat sat on a mat not a dog")]


def brute_force_logps(model, encoded):
    """Σ over response tokens of log_softmax(model(prefix))[token], one unpadded prefix at a time."""
    out = []
    with torch.no_grad():
        for e in encoded:
            ids = e["input_ids"]
            total = 0.0
            for t in range(e["prompt_length"], len(ids)):
                logits = model(torch.tensor([ids[:t]])).logits[0, -1]
                total += logits.log_softmax(-1)[ids[t]].item()
            out.append(total)
    return torch.tensor(out)


def test_encode_chat_splits_prompt_and_response_at_the_template(tiny):
    tokenizer, _ = tiny
    e = encode_chat(tokenizer, CHATS[0])
    ids = tokenizer.convert_ids_to_tokens(e["input_ids"])
    assert ids[:e["prompt_length"]] == ["<s>", "<|user|>", "why", "is", "the", "sky", "blue", "</s>",
                                        "<|assistant|>"]
    assert ids[e["prompt_length"]:] == ["the", "sky", "is", "blue", "</s>"]
    cut = encode_chat(tokenizer, CHATS[0], max_length=6, max_prompt_length=4)
    assert cut == {"input_ids": e["input_ids"][5:9] + e["input_ids"][9:11], "prompt_length": 4}


def test_encode_chat_errors(tiny):
    tokenizer, _ = tiny
    with pytest.raises(ValueError, match="max_prompt_length"):
        encode_chat(tokenizer, CHATS[0], max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="assistant response"):
        encode_chat(tokenizer, CHATS[0][:1])


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logps_matches_brute_force_with_padding(tiny, side):
    tokenizer, model = tiny
    tokenizer.padding_side = side
    encoded = [encode_chat(tokenizer, c) for c in CHATS]
    batch = pad_chat_batch(encoded, tokenizer)
    response_lengths = [len(e["input_ids"]) - e["prompt_length"] for e in encoded]
    assert batch["response_mask"].sum(-1).tolist() == response_lengths
    with torch.no_grad():
        got = sequence_logps(model, **batch)
    torch.testing.assert_close(got, brute_force_logps(model, encoded), rtol=1e-5, atol=1e-4)
    tokenizer.padding_side = "right"


def test_sequence_logps_ignores_extra_padding_and_is_differentiable(tiny):
    tokenizer, model = tiny
    batch = pad_chat_batch([encode_chat(tokenizer, c) for c in CHATS], tokenizer)
    padded = {k: torch.nn.functional.pad(v, (0, 3), value=0) for k, v in batch.items()}
    padded["input_ids"][:, -3:] = tokenizer.pad_token_id
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, **padded), sequence_logps(model, **batch))
    sequence_logps(model, **batch).sum().backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad()
    none = dict(batch, response_mask=torch.zeros_like(batch["response_mask"]))
    assert sequence_logps(model, **none).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="first token"):
        sequence_logps(model, **dict(batch, response_mask=torch.ones_like(batch["response_mask"])))


def test_add_reference_logps_fills_the_pair_columns(tiny):
    tokenizer, model = tiny
    ds = build_sppo_dataset([c[0]["content"] for c in CHATS],
                            [[c[1]["content"], "no"] for c in CHATS], [[1.0, 0.0]] * 3)
    model.train()
    out = add_reference_logps(ds, model, tokenizer, batch_size=2)
    assert model.training
    model.eval()
    assert out.column_names[-2:] == ["ref_chosen_logps", "ref_rejected_logps"]
    expected = brute_force_logps(model, [encode_chat(tokenizer, c) for c in CHATS])
    torch.testing.assert_close(torch.tensor(out["ref_chosen_logps"]), expected, rtol=1e-5, atol=1e-4)
    again = add_reference_logps(out, model, tokenizer, batch_size=3)
    assert again.column_names == out.column_names
    np.testing.assert_allclose(again["ref_rejected_logps"], out["ref_rejected_logps"], rtol=1e-5, atol=1e-5)


def test_add_reference_logps_under_bf16_autocast_is_close_to_fp32_but_not_equal(tiny):
    """build.bf16: the same sums up to bf16 rounding of the matmuls (autocast really on), weights untouched."""
    tokenizer, model = tiny
    ds = build_sppo_dataset([c[0]["content"] for c in CHATS],
                            [[c[1]["content"], "no"] for c in CHATS], [[1.0, 0.0]] * 3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = np.array(add_reference_logps(ds, model, tokenizer, batch_size=2)["ref_chosen_logps"])
    bf16 = np.array(add_reference_logps(ds, model, tokenizer, batch_size=2, bf16=True)["ref_chosen_logps"])
    assert np.isfinite(bf16).all() and not np.array_equal(bf16, fp32)
    assert np.abs(bf16 - fp32).max() < 0.02 * np.abs(fp32).max()  # rounding, not another model
    assert all(torch.equal(v, model.state_dict()[k]) and v.dtype == torch.float32 for k, v in weights.items())


def test_add_reference_logps_response_column_and_errors(tiny):
    tokenizer, model = tiny
    ds = build_sppo_dataset(["cat"], [["a cat", "a dog"]], [[0.0, 1.0]], pair_mode="all")
    assert add_reference_logps(ds, model, tokenizer).column_names[-1] == "ref_response_logps"
    with pytest.raises(ValueError, match="no chat column .*columns found: prompt"):
        add_reference_logps(ds.select_columns(["prompt"]), model, tokenizer)
    tokenizer.pad_token = None
    try:
        with pytest.raises(ValueError, match="no pad token"):
            add_reference_logps(ds, model, tokenizer)
    finally:
        tokenizer.pad_token = "<pad>"


def test_unfinished_sample_gets_no_end_of_turn(tmp_path):
    from sppo_lite.modeling import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    chat = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there"}]
    done = encode_chat(tok, chat)
    cut = encode_chat(tok, chat, finished=False)
    assert done["prompt_length"] == cut["prompt_length"]
    assert done["input_ids"][-1] == tok.eos_token_id        # Mistral's template closes the turn with </s>
    assert cut["input_ids"] == done["input_ids"][:-1]        # a cut sample is scored without it
    # build_sppo_dataset carries the flags into columns that add_reference_logps and the trainer read.
    ds = build_sppo_dataset(["p"], [["long answer", "short"]], [[1.0, 0.0]], finished=[[False, True]])
    assert ds[0]["chosen_finished"] is False and ds[0]["rejected_finished"] is True
    ds_all = build_sppo_dataset(["p"], [["a", "b"]], [[1.0, 0.0]], pair_mode="all", finished=[[True, False]])
    assert ds_all["response_finished"] == [True, False]
    with pytest.raises(ValueError, match="one list of flags per prompt"):
        build_sppo_dataset(["p"], [["a", "b"]], [[1.0, 0.0]], finished=[])
