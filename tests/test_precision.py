"""The dtype rule of the paper recipe, as a check with numbers behind it.

At lr 5e-7 an optimizer step is far below bf16's resolution around a typical weight, so full
fine-tuning that updates bf16 weights in place (one process, DDP, FSDP without fp32 sharded weights)
leaves them where they are: sppo_lite.precision refuses that before any work. ZeRO-3 keeps fp32 master
weights: the same steps move them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sppo_lite.cli import main
from sppo_lite.data import add_reference_logps, build_sppo_dataset
from sppo_lite.engines import training_engine
from sppo_lite.loop import load_config
from sppo_lite.modeling import load_policy, save_tiny_policy
from sppo_lite.precision import check_precision, check_weight_precision, half_spacing, smallest_step
from sppo_lite.trainer import SPPOConfig, SPPOTrainer, train_and_merge

from shared import RESPONSES, SCORES
from shared import PROMPTS_4 as PROMPTS

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "configs" / "full-8gpu-mistral7b.yaml"
PAPER_LR = 5e-7
STEPS = 8
# RMSprop (the recipe's optimizer) at the paper's lr, constant, 8 steps of the 4 pairs.
TRAIN = {"learning_rate": PAPER_LR, "optim": "rmsprop", "lr_scheduler_type": "constant", "beta": 0.1,
         "num_train_epochs": STEPS, "max_length": 256, "max_prompt_length": 200, "logging_steps": 1}
LARGE = 2.0 ** -7  # |w| >= 0.0078: half of bf16's spacing there is 3.1e-5, above any RMSprop step of 10 * 5e-7


# ---------------------------------------------------------------- the check

def test_the_resolution_numbers():
    assert half_spacing(0.01) == 2.0 ** -15 == smallest_step("bfloat16")  # 3.05e-5
    assert half_spacing(0.01, "float16") == 2.0 ** -18 == smallest_step("float16")
    assert half_spacing(1.0) == 2.0 ** -8  # bf16 keeps 8 significant bits
    assert smallest_step("bfloat16") / PAPER_LR > 60  # the paper's lr is 61x below what a weight of 0.01 needs


def test_engine_comes_from_the_launch_variables():
    assert training_engine({}) == "single" and training_engine({"WORLD_SIZE": "2"}) == "ddp"
    assert training_engine({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "8"}) == "deepspeed"
    assert training_engine({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8"}) == "fsdp"


BF16_GPU = dict(gpu=True, bf16_gpu=True)


@pytest.mark.parametrize("engine, env", [
    ("deepspeed", {"ACCELERATE_MIXED_PRECISION": "bf16"}),                     # fp32 master weights
    ("fsdp", {"ACCELERATE_MIXED_PRECISION": "bf16", "FSDP_VERSION": "2"}),    # accelerate upcasts to fp32
])
def test_paper_recipe_is_accepted_where_fp32_master_weights_exist(engine, env):
    check_precision(load_config(PAPER), engine=engine, env=env, **BF16_GPU)


@pytest.mark.parametrize("engine, env, where", [
    ("ddp", {"ACCELERATE_MIXED_PRECISION": "no"}, "DDP"),
    ("single", {}, "one process"),
    ("fsdp", {"ACCELERATE_MIXED_PRECISION": "bf16", "FSDP_VERSION": "1"}, "FSDP1"),
])
def test_paper_recipe_with_bf16_weights_and_no_master_copy_is_refused(engine, env, where):
    with pytest.raises(ValueError) as err:
        check_precision(load_config(PAPER), engine=engine, env=env, **BF16_GPU)  # policy.dtype null → bf16 here
    message = str(err.value)
    assert "\n" not in message and where in message and "lr 5e-07" in message
    assert "policy.dtype=float32" in message and "deepspeed_zero3.yaml" in message  # the two fixes


def test_what_is_not_concerned_passes():
    config = load_config(PAPER)
    check_precision(config, engine="ddp", gpu=False, env={})  # CPU: dtype null loads float32
    check_precision(load_config(PAPER, ["policy.dtype=float32"]), engine="ddp", env={}, **BF16_GPU)
    check_precision(load_config(PAPER, ["policy.mode=lora"]), engine="ddp", env={}, **BF16_GPU)  # fp32 adapters
    check_precision(load_config(PAPER, ["train.learning_rate=1e-4"]), engine="ddp", env={}, **BF16_GPU)
    with pytest.raises(ValueError, match="float16"):  # a T4: dtype null is fp16, whose step is 3.8e-6
        check_precision(config, engine="ddp", env={}, gpu=True, bf16_gpu=False)


def test_deepspeed_precision_mismatch_is_caught_before_any_work():
    with pytest.raises(ValueError, match="train.bf16=true"):
        check_weight_precision("full", None, PAPER_LR, bf16=False, engine="deepspeed",
                               env={"ACCELERATE_MIXED_PRECISION": "bf16"}, gpu=False)


def test_cli_refuses_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["iterate", "--config", str(PAPER), "--output-dir", str(out), "--set", "policy.dtype=bfloat16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "policy.dtype=float32" in err
    assert not out.exists()  # nothing generated, downloaded or written
    # Stages that do not train are not held up by it (this one then fails on the model it cannot download).
    main(["generate", "--config", str(PAPER), "--output-dir", str(out), "--set", "policy.dtype=bfloat16"])
    assert "policy.dtype=float32" not in capsys.readouterr().err


def test_train_and_merge_refuses_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="would not move them"):  # not "does not exist": the check comes first
        train_and_merge(tmp_path / "no-such-model", tmp_path / "no-such.parquet", tmp_path / "out",
                        tmp_path / "checkpoints", dtype="bfloat16", learning_rate=PAPER_LR)


# ---------------------------------------------------------------- the numbers behind it

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny π_t on disk and its 4-pair SPPO dataset with reference log-probs."""
    root = tmp_path_factory.mktemp("precision")
    policy = save_tiny_policy(root / "policy")
    model, tokenizer = load_policy(policy)
    data = add_reference_logps(build_sppo_dataset(PROMPTS, RESPONSES, SCORES), model, tokenizer)
    data.to_parquet(str(root / "pairs.parquet"))
    return root, policy


def linear_weights(state: dict) -> dict:
    """The decoder's projection matrices (every entry gets a gradient; unused embedding rows do not)."""
    return {k: v.float() for k, v in state.items() if "proj" in k}


def moved(before: dict, after: dict, only_large: bool = False) -> float:
    """Fraction of the entries whose value changed (only_large: among those with |w| >= 2^-7)."""
    changed = total = 0
    for k, w in before.items():
        mask = w.abs() >= LARGE if only_large else torch.ones_like(w, dtype=torch.bool)
        changed += ((after[k] != w) & mask).sum().item()
        total += mask.sum().item()
    return changed / total


def train_in_process(setup, dtype, tmp_path):
    """SPPOTrainer in this process (no precision check: this shows what it guards against)."""
    from datasets import Dataset

    root, policy = setup
    model, tokenizer = load_policy(policy, dtype=dtype)
    before = {k: v.detach().clone() for k, v in linear_weights(model.state_dict()).items()}
    model.train()
    args = SPPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, per_device_train_batch_size=4,
                      save_strategy="no", report_to=[], disable_tqdm=True, seed=0, **TRAIN)
    trainer = SPPOTrainer(model, args, train_dataset=Dataset.from_parquet(str(root / "pairs.parquet")),
                          processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == STEPS
    return before, linear_weights(model.state_dict())


def test_bf16_weights_do_not_move_at_the_papers_lr_and_fp32_weights_do(setup, tmp_path):
    before, after = train_in_process(setup, torch.bfloat16, tmp_path / "bf16")
    assert {w.dtype for w in after.values()} == {torch.float32}  # (upcast by linear_weights for comparison)
    # Not one weight of magnitude >= 2^-7 (70 % of them) moved in 8 steps; the 7.8 % that did are small ones.
    assert moved(before, after, only_large=True) == 0.0
    assert moved(before, after) < 0.15
    # The fix the refusal names: fp32 weights (bf16 autocast computes): every projection weight moves.
    before32, after32 = train_in_process(setup, torch.float32, tmp_path / "fp32")
    assert moved(before32, after32) > 0.99
    steps = torch.cat([(after32[k] - before32[k]).abs().flatten() for k in before32])
    assert steps.max().item() <= STEPS * 10 * PAPER_LR * 1.01  # RMSprop moves at most 10·lr per step ...
    assert steps.median().item() > STEPS * PAPER_LR / 4       # ... here 5.5·lr per step (median)


def test_zero3_fp32_master_weights_move_bf16_weights_at_the_papers_lr(setup, tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from test_engines import environment, free_port

    root, policy = setup
    options = {**TRAIN, "per_device_train_batch_size": 2, "bf16": True, "save_steps": STEPS, "seed": 0}
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()),
            "--config_file", str(REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
            str(REPO / "tests" / "launched_train.py"), policy, str(root / "pairs.parquet"), str(tmp_path / "model"),
            str(tmp_path / "checkpoints"), json.dumps(options)]
    done = subprocess.run(argv, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # TrainingArguments before the model: each process loaded empty parameter shells, ZeRO-3 then filled its shard.
    full = sum(v.numel() for v in load_file(str(Path(policy) / "model.safetensors")).values())
    for rank in (0, 1):
        loaded = json.loads((tmp_path / "checkpoints" / f"loaded-rank{rank}.json").read_text())
        assert loaded == {"held": 0, "whole": full}
    base = linear_weights(load_file(str(Path(policy) / "model.safetensors")))
    # ZeRO-3 trains bf16 weights (it loaded them sharded and cast them) ...
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    start = {k: w.to(torch.bfloat16).float() for k, w in base.items()}  # π_t as ZeRO-3 held it
    # ... while its optimizer holds fp32 master weights: every one of them moved, by 1 to 10 lr per step.
    master = linear_weights(get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "checkpoints" / f"checkpoint-{STEPS}")))
    assert moved(start, master) > 0.99
    steps = torch.cat([(master[k] - start[k]).abs().flatten() for k in start])
    assert steps.max().item() <= STEPS * 10 * PAPER_LR * 1.01 and steps.median().item() > STEPS * PAPER_LR / 4
    # The 16-bit π_{t+1} they hand on is the master rounded: large weights whose master crossed a rounding
    # boundary changed too (none can in pure bf16, test above).
    handed = linear_weights(saved)
    assert all(torch.equal(handed[k], master[k].to(torch.bfloat16).float()) for k in master)
    assert moved(start, handed, only_large=True) > 5e-4  # measured 1.4e-3 after 8 steps (pure bf16: 0)
