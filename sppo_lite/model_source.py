"""Where a model comes from, decided once: tiny (built locally), named (shipped in a PyPI package), a folder, a Hub id.

    source = resolve_model("smollm2-135m-instruct")   # ModelSource(kind="named", label="SmolLM2-135M-Instruct")
    source.path()                                     # a folder or a cached Hub id that from_pretrained reads

A run resolves its policy and its judge's model once (loop.Run) and everything downstream asks the
ModelSource (kind, path, identity, label) instead of comparing model names. Bad names fail here, in one
line, before any work: a named model whose package is not installed, a folder that holds no model, a Hub
id that is not one, or one that is not in the local cache while offline mode is on.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelSource", "resolve_model", "display_name", "KINDS"]

KINDS = ("tiny", "named", "folder", "hub")


@dataclass(frozen=True)
class ModelSource:
    """A model as given (`name`) and what it is: kind ∈ KINDS, and a readable label for tables and cards."""
    name: str
    kind: str
    label: str

    def path(self) -> str:
        """What from_pretrained reads: the named model's converted folder, the folder, or the Hub id (cached)."""
        if self.kind == "tiny":
            raise ValueError("the tiny model is built by the run (loop.Run.base_model), it has no path of its own: "
                             "save one with sppo_lite.modeling.save_tiny_policy and pass its folder")
        if self.kind == "named":
            from .modeling import named_model_dir

            return named_model_dir(self.name)
        return self.name

    def identity(self, folder: str | None = None) -> str:
        """The model as fingerprints see it: "tiny"; a folder (a named model's, or `folder`) by its content; a Hub
        id by its id."""
        from .loop.artifacts import model_identity

        if self.kind == "tiny":
            return "tiny"
        return model_identity(folder or self.path())


def display_name(name: str) -> str:
    """A readable name: a named model's label, "tiny random Mistral", a Hub id's or a folder's last part."""
    from .modeling import NAMED_MODELS

    if name in NAMED_MODELS:
        return NAMED_MODELS[name].get("label", name)
    if name == "tiny":
        return "tiny random Mistral"
    return Path(str(name).rstrip("/")).name


def resolve_model(name) -> ModelSource:
    """Decide what `name` is (tiny, a named model, a model folder, a Hub id) and check it can be loaded; one
    ValueError or FileNotFoundError that says what to fix, before any work."""
    import huggingface_hub

    from .modeling import NAMED_MODELS

    name = str(name).strip()
    if not name:
        raise ValueError("a model name is empty: give a Hub id, a model folder, a named model or tiny")
    if name == "tiny":
        return ModelSource(name, "tiny", display_name(name))
    if name in NAMED_MODELS:
        spec = NAMED_MODELS[name]
        if importlib.util.find_spec(spec["package"]) is None:
            raise FileNotFoundError(f"the named model {name!r} comes in the PyPI package {spec['package']}, which is "
                                    f"not installed: {spec['install']}")
        return ModelSource(name, "named", display_name(name))
    if os.path.isdir(name):
        folder = Path(name)
        if not any((folder / f).is_file() for f in ("config.json", "adapter_config.json")) and not any(
                any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin")):
            raise FileNotFoundError(f"{name} is a folder but holds no model (no config.json, no weights): give a "
                                    f"folder saved with save_pretrained")
        return ModelSource(name, "folder", display_name(name))
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except Exception:  # HFValidationError: a path that does not exist, or a malformed id
        raise FileNotFoundError(f"{name!r} is neither a model folder (no such folder) nor a Hub model id "
                                f"(namespace/name), nor one of the named models {', '.join(NAMED_MODELS)} or tiny") from None
    if huggingface_hub.is_offline_mode():
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            raise FileNotFoundError(
                f"{name!r} is not a local folder and the model is not in the local Hugging Face cache, and offline "
                "mode is on (HF_HUB_OFFLINE=1): pass a local folder saved with save_pretrained, or go online once "
                "(unset HF_HUB_OFFLINE) to download it")
    return ModelSource(name, "hub", display_name(name))
