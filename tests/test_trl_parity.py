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
