"""Execute the project's notebooks with papermill: SMOKE in CI, full to refresh committed outputs."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .resources import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"  # the checkout's, or the installed wheel's copy


def repository_url() -> str:
    """The project's repository, from [project.urls] Repository in pyproject.toml (its one source)."""
    import tomllib

    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"].rstrip("/")
    from importlib import metadata  # an installed wheel: the same line, from the package's metadata

    urls = dict(u.split(", ", 1) for u in metadata.metadata("sppo-lite").get_all("Project-URL") or [])
    return urls["Repository"].rstrip("/")


def colab_link(notebook: str, url: str | None = None) -> str:
    """The Colab address that opens `notebook` (a file name in notebooks/) from the repository's main branch."""
    url = url or repository_url()
    owner_repo = url.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook}"


def fill_repository_links(path) -> bool:
    """Point a notebook's Colab badge and REPO_URL at repository_url(); True when the file changed."""
    import re

    path = Path(path)
    text = path.read_text()
    url = repository_url()
    new = re.sub(r"https://colab\.research\.google\.com/github/[^)\s\\\"]+/blob/main/notebooks/[\w.]+\.ipynb",
                 colab_link(path.name, url), text)
    new = re.sub(r'REPO_URL = \\"https://github\.com/[^\\"]+\\"', f'REPO_URL = \\"{url}\\"', new)
    if new != text:
        path.write_text(new)
    return new != text


def notebook_paths() -> list[Path]:
    """The numbered notebooks (01_…, 02_…) in reading order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


@contextlib.contextmanager
def _inline_figures():
    """Keep MPLBACKEND (the Makefile and CI set Agg) away from the kernel: with it, plt.show() in a notebook
    displays nothing and the executed notebook has no figures."""
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved


def run_notebook(path, output_dir, smoke: bool = True, parameters: dict | None = None) -> dict:
    """Execute a notebook into output_dir/<name>/ (the executed copy, figures, summary.json).

    Returns the notebook's summary.json. The notebook runs with its own folder as working directory. An OUTPUT_DIR
    among `parameters` moves the notebook's own outputs (summary.json included) there, e.g. to reuse finished runs.
    """
    import papermill as pm

    path = Path(path)
    out = (Path(output_dir) / path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"SMOKE": smoke, "OUTPUT_DIR": str(out), **(parameters or {})}
    with _inline_figures():
        pm.execute_notebook(str(path), str(out / path.name), parameters=params, kernel_name="python3",
                            cwd=str(path.parent), progress_bar=False)
    summary = Path(params["OUTPUT_DIR"]) / "summary.json"
    if not summary.is_absolute():
        summary = path.parent / summary
    if not summary.exists():
        raise RuntimeError(f"{path.name} ran but wrote no summary.json into {summary.parent}")
    return json.loads(summary.read_text())


# Notebooks whose full setting is a GPU run (QLoRA on Mistral-7B and its evaluation). On a machine without CUDA
# their full setting is the CPU recipe instead (configs/cpu-smollm2.yaml: SmolLM2-135M-Instruct and the sentiment
# judge, ~20 min), and their first markdown cell says what ran. They may also be committed with the outputs of their
# SMOKE run, if their first markdown cell says so (tests/test_notebooks.py holds them to it).
GPU_NOTEBOOKS = ("04_", "05_")


def refresh_notebook(path, smoke: bool | None = None) -> bool:
    """Execute a notebook in place with its own defaults (the full setting), keeping the outputs,
    so a reader on the web sees the figures without running anything.

    smoke=None (or False) runs the full setting — for GPU_NOTEBOOKS on a machine without CUDA, the CPU
    recipe; smoke=True injects SMOKE = True. The committed file keeps its own parameters cell (SMOKE = False):
    the injected cell, where it ran and the progress-bar widgets (saved as their first, 0 % frame) are dropped.
    Returns whether it ran in SMOKE.
    """
    import papermill as pm

    import nbformat

    path = Path(path)
    smoke = bool(smoke)
    with _inline_figures():
        pm.execute_notebook(str(path), str(path), parameters={"SMOKE": True} if smoke else None,
                            kernel_name="python3", cwd=str(path.parent), progress_bar=False)
    nb = nbformat.read(path, as_version=4)  # keep where it ran out of the committed file
    for key in ("input_path", "output_path"):
        nb.metadata.get("papermill", {}).pop(key, None)
    nb.metadata.setdefault("papermill", {})["parameters"] = {"SMOKE": True} if smoke else {}  # what this run injected
    nb.metadata.pop("widgets", None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    nbformat.write(nb, path)
    return smoke
