"""SPPOTrainer on a tiny random Mistral built here (no download): losses against hand computations from
brute-force log-probs, the reference modes, learning toward the SPPO targets, LoRA / QLoRA, errors."""
import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainingArguments

from sppo_lite.data import add_reference_logps, build_sppo_dataset, encode_chat, sequence_logps
from sppo_lite.losses import LOSSES
from sppo_lite.modeling import build_tiny_model, load_policy, save_tiny_policy
from sppo_lite.trainer import SPPOConfig, SPPOTrainer, required_columns, train_sppo

from shared import BETA, RESPONSES, SCORES
from shared import PROMPTS_4 as PROMPTS


@pytest.fixture(scope="module")
def pairs():
    return build_sppo_dataset(PROMPTS, RESPONSES, SCORES)


@pytest.fixture(scope="module")
def pairs_ref(pairs, tokenizer):
    """The pairs with ref log-probs of the seed-0 tiny model, the π_t of these tests."""
    return add_reference_logps(pairs, build_tiny_model(tokenizer, seed=0), tokenizer)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


def config(tmp_path, **overrides):
    return SPPOConfig(**{"output_dir": str(tmp_path), "beta": BETA, "learning_rate": 1e-2,
                         "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                         "logging_steps": 1, "save_strategy": "no", "report_to": "none",
                         "disable_tqdm": True, "use_cpu": True, "seed": 0, **overrides})


def brute_force_logps(model, tokenizer, chats):
    """Σ over response tokens of log_softmax(full logits), one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for chat in chats:
            e = encode_chat(tokenizer, chat)
            ids = e["input_ids"]
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            out.append(sum(logp[t - 1, ids[t]].item() for t in range(e["prompt_length"], len(ids))))
    return torch.tensor(out, dtype=torch.float64)


def hand_loss(loss_type, dc, dr, rows, beta=BETA):
    """The batch-mean loss written out from its formula, on Δ_c, Δ_r and the rows' probabilities."""
    p_win, p_lose, p = (torch.tensor(col(rows, c), dtype=torch.float64)
                        for c in ("chosen_probs_win", "chosen_probs_lose", "chosen_probs"))
    if loss_type == "sppo":
        per_pair = 0.5 * ((dc - (p_win - 0.5) / beta) ** 2 + (dr - (p_lose - 0.5) / beta) ** 2)
    elif loss_type == "sppo_single":
        per_pair = 0.5 * ((dc - (p - 0.5) / beta) ** 2 + (dr + (p - 0.5) / beta) ** 2)
    elif loss_type == "sppo_hard":
        per_pair = 0.5 * ((dc - 0.5 / beta) ** 2 + (dr + 0.5 / beta) ** 2)
    elif loss_type == "dpo":
        per_pair = torch.log1p(torch.exp(-beta * (dc - dr)))
    else:
        per_pair = (dc - dr - 0.5 / beta) ** 2
    return per_pair.mean().item()


def col(dataset, name):
    return list(dataset[name])


def rows_of(dataset):
    return [dataset[i] for i in range(len(dataset))]


def policy_and_ref(trainer, dataset):
    """(logps, ref_logps) of the whole dataset as one batch, policy in eval mode."""
    trainer.model.eval()
    batch = trainer.data_collator(rows_of(dataset))
    with torch.no_grad():
        _, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    return out["logps"], out["ref_logps"]


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("loss_type", LOSSES)
def test_loss_matches_hand_computation_and_one_step_runs(loss_type, tokenizer, pairs_ref, tmp_path):
    model = build_tiny_model(tokenizer, seed=1)  # not π_t: Δ ≠ 0
    chats = col(pairs_ref, "chosen") + col(pairs_ref, "rejected")
    pc, pr = brute_force_logps(model, tokenizer, chats).chunk(2)
    dc = pc - torch.tensor(col(pairs_ref, "ref_chosen_logps"), dtype=torch.float64)
    dr = pr - torch.tensor(col(pairs_ref, "ref_rejected_logps"), dtype=torch.float64)

    trainer = SPPOTrainer(model, args=config(tmp_path, loss_type=loss_type, max_steps=1),
                          train_dataset=pairs_ref, processing_class=tokenizer)
    batch = trainer.data_collator(rows_of(pairs_ref))
    assert batch["input_ids"].shape[0] == 2 * len(pairs_ref)  # chosen and rejected in one forward
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
    assert loss == pytest.approx(hand_loss(loss_type, dc, dr, pairs_ref), rel=1e-4)

    before = model.lm_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, model.lm_head.weight)
    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(loss, rel=1e-4)
    assert logged["loss_scaled"] == pytest.approx(BETA ** 2 * loss, rel=1e-4)
    assert logged["logratio/chosen"] == pytest.approx(dc.mean().item(), rel=1e-4, abs=1e-3)
    assert logged["logratio/rejected"] == pytest.approx(dr.mean().item(), rel=1e-4, abs=1e-3)
    # TRL's names for TRL's quantities: rewards = β·Δ, accuracies = mean[Δ_c > Δ_r]
    assert logged["rewards/accuracies"] == pytest.approx((dc > dr).double().mean().item())
    assert logged["rewards/chosen"] == pytest.approx(BETA * dc.mean().item(), rel=1e-4, abs=1e-4)
    assert logged["rewards/margins"] == pytest.approx(BETA * (dc - dr).mean().item(), rel=1e-4, abs=1e-4)
    assert logged["logps/chosen"] == pytest.approx(pc.mean().item(), rel=1e-4)
    assert logged["win_prob/chosen"] == pytest.approx(sum(col(pairs_ref, "chosen_probs_win")) / 4, rel=1e-6)
    if loss_type == "sppo":
        target = (torch.tensor(col(pairs_ref, "chosen_probs_lose")) - 0.5) / BETA
        assert logged["target/rejected"] == pytest.approx(target.mean().item(), rel=1e-5)
    if loss_type == "sppo_hard":
        assert (logged["target/chosen"], logged["target/rejected"]) == pytest.approx((5.0, -5.0))
    if loss_type == "ipo":
        assert logged["target/margin"] == pytest.approx(5.0)


def test_only_response_tokens_count_and_reach_the_lm_head(tokenizer, pairs_ref, tmp_path):
    model = build_tiny_model(tokenizer, seed=1).eval()
    trainer = SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs_ref, processing_class=tokenizer)
    chats = col(pairs_ref, "chosen") + col(pairs_ref, "rejected")
    batch = trainer.data_collator(rows_of(pairs_ref))
    encoded = [encode_chat(tokenizer, c) for c in chats]
    assert batch["response_mask"].sum(-1).tolist() == [len(e["input_ids"]) - e["prompt_length"] for e in encoded]

    seen = []
    hook = model.lm_head.register_forward_hook(lambda _, args, out: seen.append((args[0].shape, out.shape)))
    with torch.no_grad():
        logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    hook.remove()
    n = int(batch["response_mask"].sum())  # no (B, T, V) logits: the LM head sees the N response positions
    assert seen == [((n, model.config.hidden_size), (n, model.config.vocab_size))]
    torch.testing.assert_close(logps.double(), brute_force_logps(model, tokenizer, chats), rtol=1e-5, atol=1e-4)


def test_per_response_rows_train_the_per_response_loss(tokenizer, tmp_path):
    rows = add_reference_logps(build_sppo_dataset(PROMPTS[:2], RESPONSES[:2], SCORES[:2], pair_mode="all"),
                               build_tiny_model(tokenizer, seed=0), tokenizer)
    model = build_tiny_model(tokenizer, seed=1)
    delta = (brute_force_logps(model, tokenizer, col(rows, "response"))
             - torch.tensor(col(rows, "ref_response_logps"), dtype=torch.float64))
    target = (torch.tensor(col(rows, "win_prob"), dtype=torch.float64) - 0.5) / BETA
    trainer = SPPOTrainer(model, args=config(tmp_path, max_steps=1, per_device_train_batch_size=6),
                          train_dataset=rows, processing_class=tokenizer)
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer.data_collator(rows_of(rows))).item()
    assert loss == pytest.approx(((delta - target) ** 2).mean().item(), rel=1e-4)
    trainer.train()
    logged = trainer.state.log_history[0]  # the K win rates of a prompt average ½: mean target 0
    assert (logged["win_prob/response"], logged["target/response"]) == pytest.approx((0.5, 0.0), abs=1e-5)
    with pytest.raises(ValueError, match="per-response rows .* only loss_type='sppo'"):
        SPPOTrainer(model, args=config(tmp_path, loss_type="sppo_single"), train_dataset=rows, processing_class=tokenizer)


# ---------------------------------------------------------------- reference and learning

def test_precomputed_equals_on_the_fly_reference(tokenizer, pairs, pairs_ref, policy_dir, tmp_path):
    base, tok = load_policy(policy_dir)
    precomputed = add_reference_logps(pairs, base, tok)
    ref_columns = torch.tensor(col(precomputed, "ref_chosen_logps") + col(precomputed, "ref_rejected_logps"))

    lora, _ = load_policy(policy_dir, mode="lora")
    trainer = SPPOTrainer(lora, args=config(tmp_path, reference="on_the_fly", max_steps=3), train_dataset=pairs,
                          eval_dataset=pairs, processing_class=tok)
    logps, ref_logps = policy_and_ref(trainer, pairs)
    torch.testing.assert_close(ref_logps, ref_columns, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logps, ref_logps)  # a fresh adapter: π_θ = π_t, Δ = 0
    metrics = trainer.evaluate()
    assert metrics["eval_logratio/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["eval_loss"] == pytest.approx(hand_loss("sppo", torch.zeros(4), torch.zeros(4), pairs), rel=1e-4)

    trainer.train()
    logps, ref_logps = policy_and_ref(trainer, pairs)
    torch.testing.assert_close(ref_logps, ref_columns, rtol=1e-5, atol=1e-4)  # still the base model
    assert not torch.allclose(logps, ref_logps, atol=1e-2)
    with pytest.raises(ValueError, match="adapter is already trained"):
        SPPOTrainer(lora, args=config(tmp_path, reference="on_the_fly"), train_dataset=pairs, processing_class=tok)

    # Full fine-tuning: a separate reference model gives the same numbers.
    full = SPPOTrainer(build_tiny_model(tokenizer, seed=1), args=config(tmp_path, reference="on_the_fly"),
                       train_dataset=pairs, processing_class=tokenizer, ref_model=build_tiny_model(tokenizer, seed=0))
    _, ref_logps = policy_and_ref(full, pairs)
    ref_columns = torch.tensor(col(pairs_ref, "ref_chosen_logps") + col(pairs_ref, "ref_rejected_logps"))
    torch.testing.assert_close(ref_logps, ref_columns, rtol=1e-5, atol=1e-4)


def test_sppo_steps_move_log_ratios_toward_their_targets(tokenizer, pairs_ref, tmp_path):
    trainer = SPPOTrainer(build_tiny_model(tokenizer, seed=0), args=config(tmp_path, max_steps=12, learning_rate=5e-3),
                          train_dataset=pairs_ref, processing_class=tokenizer)
    target = torch.tensor(col(pairs_ref, "chosen_probs_win") + col(pairs_ref, "chosen_probs_lose")) / BETA - 0.5 / BETA
    logps, ref_logps = policy_and_ref(trainer, pairs_ref)
    error_before = (logps - ref_logps - target).abs().mean()
    trainer.train()
    logps, ref_logps = policy_and_ref(trainer, pairs_ref)
    dc, dr = (logps - ref_logps).chunk(2)
    assert (dc > 0).all() and (dr < 0).all()  # chosen up, rejected down: targets are ±1.8 to ±3.1 here
    assert (logps - ref_logps - target).abs().mean() < 0.2 * error_before  # each Δ near its own target


# ---------------------------------------------------------------- LoRA and QLoRA

def repacked_for_cpu_inference(model):
    """Linear4bit layers that bitsandbytes turned into its CPU inference format (no backward)."""
    return [m for m in model.modules()
            if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def test_qlora_steps_run_on_cpu(policy_dir, pairs, tmp_path):
    model, tok = load_policy(policy_dir, mode="qlora")
    assert getattr(model, "is_loaded_in_4bit", False)
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer = SPPOTrainer(model, args=config(tmp_path, reference="on_the_fly", max_steps=2),
                          train_dataset=pairs, eval_dataset=pairs, processing_class=tok)
    assert trainer.evaluate()["eval_logratio/chosen"] == pytest.approx(0.0, abs=1e-4)
    trainer.train()
    assert not repacked_for_cpu_inference(model)  # evaluation and the reference ran in eval mode
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    changed = [n for n, p in model.named_parameters() if n in lora_b and not torch.equal(p, lora_b[n])]
    assert len(changed) == len(lora_b) > 0


def test_qlora_reference_logps_then_training_is_safe(policy_dir, pairs, tmp_path):
    # load_policy switches bitsandbytes' CPU repacking off, so the natural flow works.
    model, tok = load_policy(policy_dir, mode="qlora")
    pairs_ref = add_reference_logps(pairs, model, tok)  # an eval-mode no-grad forward
    assert not repacked_for_cpu_inference(model)
    SPPOTrainer(model.train(), args=config(tmp_path, max_steps=1), train_dataset=pairs_ref, processing_class=tok).train()


def test_qlora_model_repacked_for_cpu_inference_is_refused(policy_dir, pairs, tmp_path):
    model, tok = load_policy(policy_dir, mode="qlora")
    for module in model.modules():  # what a 4-bit model loaded without load_policy does
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    pairs_ref = add_reference_logps(pairs, model, tok)
    if not repacked_for_cpu_inference(model):
        pytest.skip("bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16")
    with pytest.raises(ValueError, match="repacked this 4-bit model .* reload it"):
        SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs_ref, processing_class=tok)


def test_lora_adapter_saved_and_reloaded_gives_the_same_logps(policy_dir, pairs, tmp_path):
    model, tok = load_policy(policy_dir, mode="lora")
    out = tmp_path / "adapter"
    metrics = train_sppo(model, tok, pairs, out, reference="on_the_fly", beta=BETA, learning_rate=1e-2,
                         max_steps=2, per_device_train_batch_size=4, report_to="none", save_strategy="no",
                         disable_tqdm=True, use_cpu=True)
    assert metrics["train_loss"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()  # the adapter only

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(policy_dir), out).eval()
    trainer = SPPOTrainer(model.eval(), args=config(tmp_path), train_dataset=add_reference_logps(pairs, reloaded, tok),
                          processing_class=tok)
    batch = trainer.data_collator(rows_of(pairs))
    seqs = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")}
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(reloaded, **seqs), sequence_logps(model, **seqs))
        with reloaded.disable_adapter():
            assert not torch.allclose(sequence_logps(reloaded, **seqs), sequence_logps(model, **seqs), atol=1e-3)


# ---------------------------------------------------------------- errors

def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="loss_type must be one of sppo, sppo_single, sppo_hard, dpo, ipo"):
        config(tmp_path, loss_type="kto")
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="beta must be > 0"):
            config(tmp_path, beta=beta)
    with pytest.raises(ValueError, match="reference must be one of precomputed, on_the_fly"):
        config(tmp_path, reference="model")
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        config(tmp_path, max_length=512, max_prompt_length=512)
    with pytest.raises(ValueError, match="remove_unused_columns must be False"):
        config(tmp_path, remove_unused_columns=True)


def test_missing_columns_and_bad_reference_errors(tokenizer, pairs, pairs_ref, tmp_path):
    model = build_tiny_model(tokenizer)
    with pytest.raises(ValueError, match="lacks column.* ref_chosen_logps, ref_rejected_logps .*"
                                         "add_reference_logps .*reference='on_the_fly'"):
        SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(ValueError, match="eval_dataset lacks column.* chosen_probs_win"):
        SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs_ref, processing_class=tokenizer,
                    eval_dataset=pairs_ref.remove_columns("chosen_probs_win"))
    assert required_columns(pairs.column_names, "dpo", "on_the_fly") == ["chosen", "rejected"]
    assert required_columns(pairs.column_names, "sppo_single", "precomputed") == [
        "chosen", "rejected", "chosen_probs", "ref_chosen_logps", "ref_rejected_logps"]
    with pytest.raises(ValueError, match="needs a LoRA / QLoRA .* or ref_model="):
        SPPOTrainer(model, args=config(tmp_path, reference="on_the_fly"), train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(ValueError, match="ref_model is only used with reference='on_the_fly'"):
        SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs_ref, processing_class=tokenizer, ref_model=model)
    with pytest.raises(ValueError, match="args must be an SPPOConfig"):
        SPPOTrainer(model, TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                    train_dataset=pairs_ref, processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs processing_class=<tokenizer>"):
        SPPOTrainer(model, args=config(tmp_path), train_dataset=pairs_ref)


def test_gradient_checkpointing_really_recomputes_in_training(policy_dir, pairs, tmp_path):
    # With checkpointing on, a decoder layer's insides run twice per training step (once more in the
    # backward pass); without, once. Counting calls proves it is on during training, not just flagged.
    # (transformers 5 checkpoints the layer's forward, so hooks on the layer itself fire once, and torch stops
    # recomputing early once it has what the backward needs: watch the layer's first projection.)
    counts = {}
    for on in (False, True):
        model, tok = load_policy(policy_dir, mode="lora", lora_r=4, gradient_checkpointing=on)
        calls = []
        model.base_model.model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
        SPPOTrainer(model.train(), args=config(tmp_path, reference="on_the_fly", max_steps=1, per_device_train_batch_size=2,
                                              activation_checkpointing=False),
                    train_dataset=pairs.select(range(2)), processing_class=tok).train()
        counts[on] = len(calls)
    # on_the_fly adds one no-grad reference forward per step, which is never recomputed.
    assert counts[False] == 2 and counts[True] == 3


def test_collator_scores_cut_samples_without_end_of_turn(tokenizer):
    from sppo_lite.trainer import SPPOCollator

    row = {"chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there"}],
           "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there"}],
           "chosen_finished": False, "rejected_finished": True}
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batch = SPPOCollator(tokenizer)([row])
    chosen, rejected = batch["response_mask"].sum(dim=1).tolist()
    assert rejected == chosen + 1  # the same text, but only the finished one is scored with its </s>
