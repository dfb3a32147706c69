"""Which training engine a launch asks for, and FSDP on CPU.

`accelerate launch --config_file configs/accelerate/<name>.yaml` tells every process its engine through
environment variables (ACCELERATE_USE_DEEPSPEED, ACCELERATE_USE_FSDP, FSDP_VERSION,
ACCELERATE_MIXED_PRECISION, ...); the Trainer reads them when it builds its Accelerator.

    training_engine()   "deepspeed" | "fsdp" | "ddp" | "single", from those variables and WORLD_SIZE
    fsdp_on_cpu()       lets accelerate build FSDP where it has no GPU (tests, CPU machines)

On CPU, accelerate 1.15 never picks FSDP: its process state is MULTI_CPU, and AcceleratorState only
turns a multi-*device* state into FSDP, so the Trainer wraps the model in DDP and silently ignores the
FSDP config. torch's own FSDP2 (`fully_shard`) shards and trains on CPU with gloo, so under an FSDP
launch without a GPU, `fsdp_on_cpu` gives accelerate's process state the type it has on GPUs
(MULTI_GPU; the device stays the CPU) before the Accelerator is built. With a GPU, or outside an FSDP
launch, it does nothing: GPU runs take accelerate's own path.
"""
from __future__ import annotations

import os

__all__ = ["ENGINES", "training_engine", "fsdp_version", "fsdp_on_cpu"]

ENGINES = ("single", "ddp", "fsdp", "deepspeed")


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def training_engine(env=None) -> str:
    """The engine this process trains under, as accelerate launch (or torchrun) set the environment."""
    env = os.environ if env is None else env
    if _flag(env.get("ACCELERATE_USE_DEEPSPEED", "false")):
        return "deepspeed"
    if _flag(env.get("ACCELERATE_USE_FSDP", "false")):
        return "fsdp"
    return "ddp" if int(env.get("WORLD_SIZE", 1)) > 1 else "single"


def fsdp_version(env=None) -> int:
    """FSDP_VERSION as accelerate launch sets it from fsdp_config.fsdp_version (accelerate's default: 1)."""
    env = os.environ if env is None else env
    return int(env.get("FSDP_VERSION", 1))


def fsdp_on_cpu() -> bool:
    """Before the Trainer builds its Accelerator: FSDP instead of a silent DDP under a CPU FSDP launch.

    Sets the process state's type to MULTI_GPU, as it is on GPUs (the device stays the CPU), so that
    AcceleratorState picks FSDP from the launch's variables. Returns whether it changed anything.
    """
    import torch

    if training_engine() != "fsdp" or torch.cuda.is_available():
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()  # TrainingArguments created it (gloo process group, CPU device)
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return True
