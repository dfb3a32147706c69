"""Full fine-tuning under DeepSpeed ZeRO-3 and FSDP2, launched as a user launches the paper recipe:

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes N \
        -m sppo_lite.cli iterate --config RECIPE --output-dir D

(the argv `sppo-lite reproduce --gpus N` runs, from sppo_lite.reproduce.accelerate_command), with the
committed accelerate configs, on CPU: accelerate starts the processes through torchrun and they talk
over gloo. Two processes are compared with one at the same global batch (2 × 2 vs 1 × 4 pairs).

What differs from GPUs here: the device (DeepSpeed's CPU accelerator, which compiles its
shared-memory communication op with g++ on first use), the gloo backend instead of NCCL, and for FSDP
one step accelerate does not take on CPU (sppo_lite.engines.fsdp_on_cpu).

Training uses plain SGD at lr 0.1: its step is the gradient clipped to norm 1 (the Trainer's default,
as in the recipe), so a process's share of the batch lost or counted twice, or a clipping norm taken
per shard instead of over the whole model, would turn the step; RMSprop / Adam normalise every entry,
which would hide much of that and turn the bf16 rounding of near-zero gradients into full-size sign flips.

Tolerances, from the measured differences (2 vs 1 process, 8 SGD steps, bf16 compute on both sides,
gradient checkpointing on as in the recipe):
    ZeRO-3 (bf16 weights + fp32 master, saved in bf16): first-step loss equal to 1e-6 (same weights,
      same batch); train_loss 1.1e-3 apart (relative); the weights differ by 4.3 % of the update's norm,
      at most one bf16 step (2.4e-4): rounding of the reduced gradients and of the saved weights.
    FSDP2 (fp32 sharded weights, bf16 compute, saved in fp32): first-step loss equal; train_loss 6.2e-3
      apart; the weights by 1.0 % of the update's norm.
The tests allow 3-5x those (train_loss 5e-3 / 2e-2, weights 15 % / 3.5 %).
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sppo_lite import loop
from sppo_lite.reproduce import accelerate_command

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = REPO / "configs" / "accelerate"
STEPS = 8  # 8 pairs, global batch 4, 4 epochs
CONFIG = {
    "seed": 3, "iterations": 2,
    "policy": {"model": "tiny", "device": "cpu", "mode": "full"},
    "prompts": {"source": str(REPO / "data" / "prompts.jsonl"), "n_prompts": 8},
    "generation": {"k": 3, "max_new_tokens": 6, "batch_size": 4, "shard_size": 2},
    "judge": {"type": "length", "device": "cpu", "shard_size": 2},
    "build": {"ref_batch_size": 4},
    # bf16: both accelerate configs say mixed_precision bf16 (DeepSpeed refuses a mismatch).
    "train": {"max_length": 256, "max_prompt_length": 200, "beta": 0.1, "learning_rate": 0.1, "optim": "sgd",
              "warmup_steps": 0, "per_device_train_batch_size": 4, "bf16": True, "gradient_checkpointing": True,
              "num_train_epochs": 4, "logging_steps": 1, "save_steps": 2},
}
STAGES = ("generate", "judge", "build", "train")

pytestmark = pytest.mark.slow
needs_deepspeed = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("deepspeed"),
    reason="deepspeed is not installed (pip install -r requirements/cpu.txt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(engine: str, processes: int, config: Path, out: Path, *extra) -> list[str]:
    """`accelerate launch --config_file configs/accelerate/<engine>.yaml --num_processes N -m sppo_lite.cli iterate`."""
    argv = accelerate_command(config, out, processes, ACCELERATE / f"{engine}.yaml") + list(extra)
    argv[3:3] = ["--main_process_port", str(free_port())]  # after `-m accelerate.commands.launch`
    return argv


def environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(engine, processes, config, out, *extra) -> str:
    done = subprocess.run(launch_argv(engine, processes, config, out, *extra), cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def manifests(out: Path, t: int = 1) -> dict:
    return {s: json.loads((out / f"iter{t}" / s / "manifest.json").read_text()) for s in STAGES}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def norm(tensors: dict) -> float:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in tensors.values())).item()


def step_losses(out: Path, t: int = 1) -> list[float]:
    history = json.loads((out / f"iter{t}" / "train" / "log_history.json").read_text())
    return [row["loss"] for row in history if "loss" in row]


def one_and_two(engine: str, tmp_path_factory):
    """The same recipe launched with 1 process (batch 4) and with 2 processes (batch 2 each, both iterations)."""
    root = tmp_path_factory.mktemp(engine)
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    launch(engine, 1, config, root / "one", "--iterations", "1")
    launch(engine, 2, config, root / "two", "--set", "train.per_device_train_batch_size=2")
    return root


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    return one_and_two("deepspeed_zero3", tmp_path_factory)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    return one_and_two("fsdp", tmp_path_factory)


def check_two_match_one(root: Path, saved_dtype, loss_rtol: float, weight_rtol: float):
    one, two = manifests(root / "one"), manifests(root / "two")
    # Generation, judging and the reference log-probs were sharded over the processes: the same data.
    for stage in ("generate", "judge", "build"):
        assert one[stage]["artifact_hash"] == two[stage]["artifact_hash"], stage
    assert one["train"]["world_size"] == 1 and two["train"]["world_size"] == 2
    # Step 1 sees the same weights and the same 4 pairs: the same loss; then the runs agree within rounding.
    first, second = step_losses(root / "one"), step_losses(root / "two")
    assert len(first) == len(second) == STEPS
    assert second[0] == pytest.approx(first[0], rel=1e-5)
    assert two["train"]["counts"]["metrics"]["train_loss"] == pytest.approx(
        one["train"]["counts"]["metrics"]["train_loss"], rel=loss_rtol)
    base = weights(root / "one" / "base" / "tiny-policy")
    a, b = weights(root / "one" / "iter1" / "train" / "model"), weights(root / "two" / "iter1" / "train" / "model")
    update = norm({k: a[k] - base[k] for k in a})
    assert update > 0.05                                   # training really moved the weights (measured ~0.09) ...
    assert norm({k: a[k] - b[k] for k in a}) < weight_rtol * update   # ... and both launches the same way

    # π_{t+1} is one plain model folder: config, one safetensors file in 16 (ZeRO-3) or 32 (FSDP) bits ...
    model_dir = root / "two" / "iter1" / "train" / "model"
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert {p.name for p in model_dir.glob("*.safetensors")} == {"model.safetensors"}
    assert not list(model_dir.glob("global_step*")) and not list(model_dir.glob("pytorch_model*"))
    assert {v.dtype for v in load_file(str(model_dir / "model.safetensors")).values()} == {saved_dtype}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    assert all(p.numel() > 0 for p in model.parameters())  # whole, not the empty shards of a ZeRO-3 load
    # ... that the second iteration, in the same launch, generated from and trained on.
    it2 = manifests(root / "two", t=2)
    assert it2["generate"]["counts"]["policy"] == loop.content_hash(model_dir)  # π_2, by its content
    assert it2["train"]["counts"]["steps"] > 0
    c = weights(root / "two" / "iter2" / "train" / "model")
    assert norm({k: c[k] - b[k] for k in b}) > 0.05


@needs_deepspeed
def test_zero3_two_processes_match_one_and_hand_off_a_plain_model(zero3):
    check_two_match_one(zero3, torch.bfloat16, loss_rtol=5e-3, weight_rtol=0.15)


def test_fsdp2_two_processes_match_one_and_hand_off_a_plain_model(fsdp):
    check_two_match_one(fsdp, torch.float32, loss_rtol=0.02, weight_rtol=0.035)


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher and the training processes it started (torchrun puts them in their own sessions)."""
    import psutil

    parent = psutil.Process(pid)
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@needs_deepspeed
def test_kill_during_zero3_training_resumes_from_its_checkpoint_to_the_same_weights(zero3):
    import time

    config, out = zero3 / "recipe.yaml", zero3 / "killed"
    argv = launch_argv("deepspeed_zero3", 2, config, out, "--iterations", "1",
                       "--set", "train.per_device_train_batch_size=2")
    checkpoints = out / "iter1" / "train.partial" / "checkpoints"
    with open(zero3 / "killed.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():
                kill_tree(proc.pid)  # as a preempted machine: no process gets to clean up
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    assert proc.returncode != 0, "training finished before the kill"
    assert not (out / "iter1" / "train" / "manifest.json").exists()

    # The same command again: finished stages are skipped, training resumes from the newest complete checkpoint.
    resumed = launch_argv("deepspeed_zero3", 2, config, out, "--iterations", "1",
                          "--set", "train.per_device_train_batch_size=2", "-v")  # -v: the Trainer's logs printed
    done = subprocess.run(resumed, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "iter1/build: done already" in done.stdout
    assert not checkpoints.parent.exists()  # the finished stage removed its checkpoints
    steps_run = len(re.findall(r"\{'loss': ", done.stdout + done.stderr))
    assert 0 < steps_run <= STEPS - 2  # it trained only what was left after the checkpoint
    # Bitwise the weights of the uninterrupted 2-process run: same data order, RNG, optimizer and ZeRO-3 shards.
    a, b = weights(out / "iter1" / "train" / "model"), weights(zero3 / "two" / "iter1" / "train" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The manifest's train_loss covers all 8 steps, not only those run after the resume.
    assert manifests(out)["train"]["counts"]["metrics"]["train_loss"] == pytest.approx(
        manifests(zero3 / "two")["train"]["counts"]["metrics"]["train_loss"], rel=1e-6)
