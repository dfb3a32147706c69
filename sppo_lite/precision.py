"""The recipe's dtype rule as a check: small steps need fp32 master weights.

An optimizer step changes a weight w stored in bf16 only when the step is at least half the spacing of
bf16 numbers around w: 2^(⌊log2|w|⌋ − 8), i.e. 3.1e-5 for a weight of 0.01 (a typical magnitude in
a 7B model's linear layers; fp16: 3.8e-6). RMSprop's and Adam's steps are about lr per weight
(RMSprop without bias correction: at most 10·lr, in its first steps), so at the paper's lr 5e-7 a
full fine-tuning that updates 16-bit weights in place leaves them where they are.

Who keeps fp32 master weights for full fine-tuning with 16-bit weights:

    deepspeed  yes: bf16 / fp16 training keeps fp32 master weights in the optimizer, at any ZeRO stage
    fsdp       FSDP2 with mixed precision: accelerate upcasts the trainable weights to fp32 before
               sharding (bf16 is the compute dtype), so π_{t+1} is saved in fp32; FSDP1 or no mixed
               precision: no
    ddp/single no: the optimizer updates the 16-bit weights themselves

check_precision refuses the combinations that cannot move the weights, before any work, in one line.
LoRA / QLoRA are not concerned: PEFT keeps the adapter weights in fp32.
"""
from __future__ import annotations

import math
import os

from .engines import fsdp_version, training_engine

__all__ = ["TYPICAL_ABS_WEIGHT", "half_spacing", "smallest_step", "check_precision", "check_weight_precision"]

TYPICAL_ABS_WEIGHT = 0.01
_MANTISSA_BITS = {"bfloat16": 7, "float16": 10}
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def half_spacing(w: float, dtype: str = "bfloat16") -> float:
    """Half the distance between the 16-bit numbers around w: a smaller step rounds back to w."""
    return 2.0 ** (math.floor(math.log2(abs(w))) - _MANTISSA_BITS[dtype] - 1)


def smallest_step(dtype: str = "bfloat16") -> float:
    """The step a weight of TYPICAL_ABS_WEIGHT needs to move at all in `dtype` (bf16: 3.1e-5)."""
    return half_spacing(TYPICAL_ABS_WEIGHT, dtype)


def _gpu() -> tuple[bool, bool]:
    import torch

    on_gpu = torch.cuda.is_available()
    return on_gpu, on_gpu and torch.cuda.is_bf16_supported()


def _weights_dtype(dtype, gpu: bool, bf16_gpu: bool) -> str:
    """policy.dtype as the model will be loaded (None: modeling.pick_dtype's choice)."""
    if dtype is None or dtype == "auto":
        return ("bfloat16" if bf16_gpu else "float16") if gpu else "float32"
    name = str(dtype).replace("torch.", "")
    return _ALIASES.get(name, name)


def _mixed_precision(bf16, gpu: bool, bf16_gpu: bool) -> str:
    """train.bf16 as train_and_merge resolves it: "bf16", "fp16" or "no"."""
    if bf16 == "auto":
        return ("bf16" if bf16_gpu else "fp16") if gpu else "no"
    return "bf16" if bf16 else "no"


def check_weight_precision(mode: str, dtype, learning_rate: float, bf16="auto", engine: str | None = None,
                           gpu: bool | None = None, bf16_gpu: bool | None = None, env=None) -> None:
    """ValueError (one line: what is wrong, and the fix) when training cannot work as configured.

    engine: "deepspeed" | "fsdp" | "ddp" | "single"; None reads it from accelerate's environment.
    gpu / bf16_gpu: whether a (bf16-capable) GPU trains; None asks torch.
    """
    env = os.environ if env is None else env
    engine = engine or training_engine(env)
    if gpu is None:
        gpu, detected = _gpu()
        bf16_gpu = detected if bf16_gpu is None else bf16_gpu
    elif bf16_gpu is None:
        bf16_gpu = gpu
    bf16_gpu = bool(gpu and bf16_gpu)
    mixed = _mixed_precision(bf16, gpu, bf16_gpu)
    launched = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if engine == "deepspeed" and launched in ("bf16", "fp16") and mixed != launched:
        raise ValueError(f"the accelerate config trains DeepSpeed in {launched} but train.bf16={bf16!r} resolves to "
                         f"{mixed} here, a mismatch DeepSpeed refuses after generation: set train.bf16="
                         f"{'true' if launched == 'bf16' else 'auto'} or mixed_precision: 'no' in the accelerate config")
    weights = _weights_dtype(dtype, gpu, bf16_gpu)
    if mode != "full" or weights not in _MANTISSA_BITS:
        return
    if engine == "deepspeed":
        return  # fp32 master weights in the optimizer
    # The Trainer's mixed precision: train.bf16, else the launch's (TrainingArguments reads ACCELERATE_MIXED_PRECISION).
    if engine == "fsdp" and fsdp_version(env) == 2 and (mixed if mixed != "no" else launched) != "no":
        return  # accelerate upcasts the trainable weights to fp32 before fully_shard
    step = smallest_step(weights)
    if learning_rate >= step:
        return
    where = {"single": "one process", "ddp": "DDP", "fsdp": f"FSDP{fsdp_version(env)} without mixed precision"
             if fsdp_version(env) == 2 else "FSDP1"}[engine]
    raise ValueError(
        f"full fine-tuning of {weights} weights under {where} at lr {learning_rate:g}: the optimizer updates the "
        f"{weights} weights themselves and a weight of {TYPICAL_ABS_WEIGHT} moves only by steps >= {step:.1e}, so "
        f"training would not move them; set policy.dtype=float32 (train.bf16 still computes in bf16) or launch with "
        f"configs/accelerate/deepspeed_zero3.yaml, whose fp32 master weights take the small steps")


def check_precision(config: dict, engine: str | None = None, **kwargs) -> None:
    """check_weight_precision on a loop config (policy.mode, policy.dtype, train.learning_rate, train.bf16)."""
    policy, train = config["policy"], config["train"]
    check_weight_precision(policy["mode"], policy["dtype"], float(train["learning_rate"]), train.get("bf16", "auto"),
                           engine=engine, **kwargs)
