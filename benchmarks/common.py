"""What every benchmark records beside its numbers: the hardware it ran on and the library versions."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "llm-blender")


def hardware(device: str = "cuda") -> str:
    """GPU name (spaces → dashes) when `device` is a GPU and one exists, else cpu-<arch>-<threads>threads."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device if ":" in str(device) else 0).replace(" ", "-")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def versions(packages=PACKAGES) -> dict:
    """Python and package versions (None where a package is not installed)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
