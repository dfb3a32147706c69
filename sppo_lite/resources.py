"""The files sppo-lite ships beside its code: recipes (configs/), the prompt set (data/prompts.jsonl), notebooks.

    PROJECT_ROOT     the folder that holds configs/, data/ and notebooks/
    recipe_path      "cpu-tiny", "configs/cpu-tiny.yaml" or any YAML path → the file to read
    recipe_names     the shipped recipes, by name
    copy_starter     configs/ and data/prompts.jsonl copied into a folder of one's own, to edit

In a checkout PROJECT_ROOT is the repository itself; in an installed wheel it is sppo_lite/share/, where
pyproject.toml maps the same three folders (package data), so relative paths inside them
(`../data/prompts.jsonl` in a recipe, `../configs/…` in a notebook) hold in both.
"""
from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["PROJECT_ROOT", "recipe_path", "recipe_names", "copy_starter"]

_PACKAGE = Path(__file__).resolve().parent


def _project_root() -> Path:
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout
    return _PACKAGE / "share"


PROJECT_ROOT = _project_root()


def recipe_names() -> list[str]:
    """The shipped recipes: configs/*.yaml by stem (cpu-tiny, cpu-smollm2, colab-qlora-mistral7b, ...)."""
    return sorted(p.stem for p in (PROJECT_ROOT / "configs").glob("*.yaml"))


def recipe_path(path) -> Path:
    """A recipe to read: the file when it exists, else a shipped recipe by name ("cpu-tiny") or by its
    repository path ("configs/cpu-tiny.yaml", as the docs write it) from any working directory."""
    given = Path(path)
    if given.is_file():
        return given
    candidates = [] if given.is_absolute() else [PROJECT_ROOT / given]
    if not given.is_absolute() and given.parent == Path("."):  # a bare name: cpu-tiny or cpu-tiny.yaml
        candidates.insert(0, PROJECT_ROOT / "configs" / (given.name if given.suffix == ".yaml" else f"{given.name}.yaml"))
    for candidate in candidates:  # a folder named like a recipe (an --output-dir cpu-tiny) does not hide it
        if candidate.is_file():
            return candidate
    if given.is_dir():
        raise ValueError(f"config file {path} does not exist (it is a folder): give a YAML file")
    raise ValueError(f"config file {path} does not exist; give a YAML path or a shipped recipe name: "
                     f"{', '.join(recipe_names())}")


def copy_starter(folder) -> list[Path]:
    """configs/ (recipes and accelerate configs) and data/prompts.jsonl copied into `folder`; nothing is overwritten."""
    folder = Path(folder)
    sources = [p for p in sorted((PROJECT_ROOT / "configs").rglob("*.yaml"))] + [PROJECT_ROOT / "data" / "prompts.jsonl"]
    targets = [folder / p.relative_to(PROJECT_ROOT) for p in sources]
    existing = [t for t in targets if t.exists()]
    if existing:
        raise ValueError(f"{existing[0]} exists already: choose an empty folder (nothing was copied)")
    for src, dst in zip(sources, targets):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return targets
