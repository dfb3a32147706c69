"""What every benchmark records beside its numbers: the hardware it ran on and the library versions."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "llm-blender")


def hardware(device: str = "cuda") -> str:
    """GPU name (spaces → dashes) when `device` is a GPU and one exists, else cpu-<arch>-<threads>threads."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device if ":" in str(device) else 0).replace(" ", "-")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def processor() -> str:
    """The CPU's model name and its bf16 instructions (avx512_bf16, amx_bf16) as /proc/cpuinfo reports them,
    e.g. "AMD EPYC 9R14 (avx512_bf16)"; platform.processor() elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(bf16) if bf16 else 'no bf16 instructions'})"


def versions(packages=PACKAGES) -> dict:
    """Python and package versions (None where a package is not installed)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
