"""SPPOTrainer as a TRL user calls it: argument order, model ids, peft_config, precompute_ref_log_probs, TRL's
explicit-prompt rows, and TRL's metric names with TRL's values on the same data."""
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel

from sppo_lite.data import add_reference_logps, build_sppo_dataset, to_full_chats, to_trl_rows
from sppo_lite.modeling import build_tiny_model, load_policy, save_tiny_policy
from sppo_lite.trainer import SPPOConfig, SPPOTrainer

from shared import BETA, RESPONSES, SCORES
from shared import PROMPTS_4 as PROMPTS


@pytest.fixture(scope="module")
def pairs():
    return build_sppo_dataset(PROMPTS, RESPONSES, SCORES)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy", seed=2)


def args(tmp_path, **overrides):
    return SPPOConfig(**{"output_dir": str(tmp_path), "beta": BETA, "learning_rate": 1e-2,
                         "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "logging_steps": 1,
                         "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "use_cpu": True,
                         "seed": 0, **overrides})


def explicit_prompt(pairs) -> Dataset:
    """The same pairs in TRL's explicit-prompt conversational form: prompt messages + assistant-only answers."""
    rows = to_trl_rows(pairs)
    assert rows["prompt"][0] == [{"role": "user", "content": PROMPTS[0]}]
    assert rows["chosen"][0] == [pairs["chosen"][0][-1]] and rows["chosen_probs_win"] == pairs["chosen_probs_win"]
    assert to_full_chats(rows)["chosen"] == pairs["chosen"]  # and back
    return rows


def test_trl_argument_order_and_a_model_folder(pairs, policy_dir, tmp_path):
    ref, tok = load_policy(policy_dir)
    # (model, ref_model, args, ...) as TRL; the model given by its folder, its tokenizer loaded with it
    trainer = SPPOTrainer(policy_dir, ref, args(tmp_path, reference="on_the_fly", max_steps=1,
                                                model_init_kwargs={"dtype": torch.float32}), train_dataset=pairs)
    assert trainer.ref_model is not None and trainer.processing_class.chat_template == tok.chat_template
    assert trainer.model.dtype == torch.float32
    metrics = trainer.evaluate(pairs)
    assert metrics["eval_logratio/chosen"] == pytest.approx(0.0, abs=1e-4)  # the same weights: Δ = 0


def test_peft_config_and_precomputed_reference_inside_the_trainer(pairs, policy_dir, tmp_path):
    base, tok = load_policy(policy_dir)
    expected = add_reference_logps(pairs, base, tok)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                             init_lora_weights=False)  # a non-zero adapter: the reference must switch it off
    model, _ = load_policy(policy_dir)
    trainer = SPPOTrainer(model.train(), args=args(tmp_path, max_steps=2, precompute_ref_log_probs=True),
                          train_dataset=pairs, processing_class=tok, peft_config=lora_config)
    assert isinstance(trainer.model, PeftModel)
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} and \
        all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.train()
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(torch.tensor(trainer.train_dataset[column]), torch.tensor(expected[column]),
                                   rtol=1e-5, atol=1e-4)


def test_explicit_prompt_rows_train_as_whole_chats(pairs, policy_dir, tmp_path):
    model, tok = load_policy(policy_dir)
    ref = add_reference_logps(pairs, model, tok)
    trl_rows = explicit_prompt(pairs)
    losses = []
    for data in (pairs, trl_rows):
        trainer = SPPOTrainer(build_tiny_model(tok, seed=7), args=args(tmp_path, max_steps=1,
                                                                       precompute_ref_log_probs=data is trl_rows),
                              train_dataset=data if data is trl_rows else ref, processing_class=tok)
        if data is trl_rows:  # the reference of these rows is π_t = the loaded policy: put its columns in
            trainer.train_dataset = trainer.train_dataset.add_column("ref_chosen_logps", ref["ref_chosen_logps"]) \
                .add_column("ref_rejected_logps", ref["ref_rejected_logps"])
        losses.append(trainer.train().training_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert trainer.train_dataset["chosen"][0][0] == {"role": "user", "content": PROMPTS[0]}


def test_metric_names_and_values_match_trl_dpo_trainer(pairs, policy_dir, tmp_path):
    """The same sppo_hard run in TRL's DPOTrainer and in SPPOTrainer: TRL's metrics carry over, same values.

    TRL's sppo_hard sums the two squared terms, sppo-lite averages them (the official code): loss ×2.
    """
    trl = pytest.importorskip("trl")
    model, tok = load_policy(policy_dir)
    trl_rows = explicit_prompt(pairs).select_columns(["prompt", "chosen", "rejected"])
    dpo = trl.DPOTrainer(model=model, args=trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), loss_type=["sppo_hard"], beta=BETA, max_steps=1, learning_rate=0.0,
        per_device_train_batch_size=4, logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
        precompute_ref_log_probs=True, max_length=1024),
        train_dataset=trl_rows, processing_class=tok)
    dpo.train()
    theirs = dpo.state.log_history[0]
    model, tok = load_policy(policy_dir)
    ours = SPPOTrainer(model, args=args(tmp_path / "ours", loss_type="sppo_hard", max_steps=1, learning_rate=0.0,
                                        precompute_ref_log_probs=True), train_dataset=trl_rows,
                       processing_class=tok)
    ours.train()
    mine = ours.state.log_history[0]
    shared = {"logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
              "rewards/accuracies"}
    assert shared <= set(theirs) and shared <= set(mine)
    for name in ("logps/chosen", "logps/rejected"):
        assert mine[name] == pytest.approx(theirs[name], rel=1e-4), name
    assert mine["loss"] == pytest.approx(theirs["loss"] / 2, rel=1e-4)


# ---------------------------------------------------------------- TRL 1.x options and defaults

def test_trl_1x_options_and_dpo_config_defaults(tmp_path):
    trl = pytest.importorskip("trl")
    ours = SPPOConfig(output_dir=str(tmp_path), use_cpu=True)
    theirs = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True)
    for name in ("learning_rate", "logging_steps", "activation_checkpointing", "disable_dropout",
                 "precompute_ref_log_probs", "precompute_ref_batch_size", "max_length"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert SPPOConfig(output_dir=str(tmp_path), loss_type=["sppo_hard"]).loss_type == "sppo_hard"
    with pytest.raises(ValueError, match="trains one loss, not TRL's weighted combinations"):
        SPPOConfig(output_dir=str(tmp_path), loss_type=["sppo", "dpo"])
    with pytest.raises(ValueError, match="truncation_mode must be one of keep_end, keep_start"):
        SPPOConfig(output_dir=str(tmp_path), truncation_mode="keep_middle")


def test_truncation_modes_keep_the_prompt_end_or_the_sequence_start(tokenizer):
    from sppo_lite.data import encode_chat

    chat = [{"role": "user", "content": "one two three four five six seven eight nine ten " * 3},
            {"role": "assistant", "content": "alpha beta gamma delta epsilon"}]
    whole = encode_chat(tokenizer, chat, max_length=4096, max_prompt_length=4000)
    n_prompt, ids = whole["prompt_length"], whole["input_ids"]
    end = encode_chat(tokenizer, chat, max_length=n_prompt, max_prompt_length=10)
    assert end["input_ids"] == ids[n_prompt - 10:n_prompt] + ids[n_prompt:2 * n_prompt - 10]
    start = encode_chat(tokenizer, chat, max_length=n_prompt + 3, max_prompt_length=10, truncation_mode="keep_start")
    assert start["input_ids"] == ids[:n_prompt + 3] and start["prompt_length"] == n_prompt


def test_disable_dropout_switches_off_lora_dropout_as_trl(pairs, policy_dir, tmp_path):
    model, tok = load_policy(policy_dir)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules="all-linear", task_type="CAUSAL_LM")
    dropouts = []
    for disable in (True, False):
        trainer = SPPOTrainer(load_policy(policy_dir)[0], args=args(tmp_path, disable_dropout=disable, max_steps=1,
                                                                    precompute_ref_log_probs=True),
                              train_dataset=pairs, processing_class=tok, peft_config=lora)
        dropouts.append({m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)})
    assert dropouts == [{0.0}, {0.3}]


def test_precompute_ref_batch_size_is_used(pairs, policy_dir, tmp_path, monkeypatch):
    import sppo_lite.data as data

    seen, real = [], data.add_reference_logps
    monkeypatch.setattr(data, "add_reference_logps", lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k))
    model, tok = load_policy(policy_dir)
    for own in (3, None):
        SPPOTrainer(load_policy(policy_dir)[0], args=args(tmp_path, max_steps=1, precompute_ref_log_probs=True,
                                                          precompute_ref_batch_size=own, per_device_train_batch_size=2),
                    train_dataset=pairs, processing_class=tok).train()
    assert seen == [3, 2]  # its own, else the train batch size (TRL's rule)


def test_a_model_card_with_tags(pairs, policy_dir, tmp_path):
    model, tok = load_policy(policy_dir)
    trainer = SPPOTrainer(model, args=args(tmp_path, loss_type="sppo_hard", max_steps=1, precompute_ref_log_probs=True),
                          train_dataset=pairs, processing_class=tok)
    trainer.create_model_card(dataset_name="my/pairs")
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and "- sppo-lite\n" in text and "- sppo_hard\n" in text and "my/pairs" in text
    assert str(tmp_path) not in text and "β = 0.1" in text


def test_ipo_sums_the_log_ratios_where_trl_averages_them_per_token(pairs, policy_dir, tmp_path):
    """The documented difference, measured: on the same pairs and models, sppo-lite's ipo loss is
    mean((Δ_c − Δ_r − 1/(2β))²) with Δ summed over the response tokens; TRL's divides each Δ by its length."""
    trl = pytest.importorskip("trl")
    from sppo_lite.data import encode_chat

    policy, tok = load_policy(policy_dir)
    ref = build_tiny_model(tok, seed=11)  # another model as the reference: Δ ≠ 0
    scored = add_reference_logps(pairs, ref, tok)
    mine = add_reference_logps(pairs, policy, tok)
    dc = torch.tensor(mine["ref_chosen_logps"]) - torch.tensor(scored["ref_chosen_logps"])
    dr = torch.tensor(mine["ref_rejected_logps"]) - torch.tensor(scored["ref_rejected_logps"])
    lengths = {c: torch.tensor([float(len(e["input_ids"]) - e["prompt_length"]) for e in
                                (encode_chat(tok, chat) for chat in pairs[c])]) for c in ("chosen", "rejected")}
    summed = float(((dc - dr - 0.5 / BETA) ** 2).mean())
    averaged = float(((dc / lengths["chosen"] - dr / lengths["rejected"] - 0.5 / BETA) ** 2).mean())

    ours = SPPOTrainer(load_policy(policy_dir)[0], args=args(tmp_path / "ours", loss_type="ipo", max_steps=1,
                                                             learning_rate=0.0), train_dataset=scored,
                       processing_class=tok)
    ours.train()
    trl_rows = explicit_prompt(pairs).select_columns(["prompt", "chosen", "rejected"])
    dpo = trl.DPOTrainer(model=load_policy(policy_dir)[0], ref_model=ref, args=trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), loss_type=["ipo"], beta=BETA, max_steps=1, learning_rate=0.0,
        per_device_train_batch_size=4, logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
        max_length=1024), train_dataset=trl_rows, processing_class=tok)
    dpo.train()
    assert ours.state.log_history[0]["loss"] == pytest.approx(summed, rel=1e-4)
    assert dpo.state.log_history[0]["loss"] == pytest.approx(averaged, rel=1e-3)
    assert abs(summed - averaged) > 0.05 * averaged


def test_an_explicit_gradient_checkpointing_wins_over_the_default(tmp_path):
    assert SPPOConfig(output_dir=str(tmp_path), use_cpu=True).activation_checkpointing is True
    off = SPPOConfig(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=False)
    assert off.activation_checkpointing is False and off.gradient_checkpointing is False


def test_peft_config_on_a_4bit_bf16_model_keeps_bf16_and_trains(pairs, policy_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})
    tok = load_policy(policy_dir)[1]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SPPOTrainer(model, args=args(tmp_path, max_steps=2, precompute_ref_log_probs=True,
                                           gradient_checkpointing=True),
                          train_dataset=pairs, processing_class=tok, peft_config=lora)
    norms = {p.dtype for n, p in trainer.model.named_parameters() if "norm" in n}
    assert norms == {torch.bfloat16}  # no fp32 upcast under bf16 compute (TRL leaves them too)
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert trainer.model.base_model.model.is_activation_checkpointing  # turned on by Trainer.train
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
