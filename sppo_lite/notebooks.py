"""Execute the project's notebooks with papermill: SMOKE in CI, full to refresh committed outputs."""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_paths() -> list[Path]:
    """The numbered notebooks (01_…, 02_…) in reading order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path, output_dir, smoke: bool = True, parameters: dict | None = None) -> dict:
    """Execute a notebook into output_dir/<name>/ (the executed copy, figures, summary.json).

    Returns the notebook's summary.json. The notebook runs with its own folder as working directory.
    """
    import papermill as pm

    path = Path(path)
    out = (Path(output_dir) / path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"SMOKE": smoke, "OUTPUT_DIR": str(out), **(parameters or {})}
    pm.execute_notebook(str(path), str(out / path.name), parameters=params, kernel_name="python3",
                        cwd=str(path.parent), progress_bar=False)
    summary = out / "summary.json"
    if not summary.exists():
        raise RuntimeError(f"{path.name} ran but wrote no summary.json into {out}")
    return json.loads(summary.read_text())


def refresh_notebook(path) -> None:
    """Execute a notebook in place with its own defaults (the full setting), keeping the outputs,
    so a reader on the web sees the figures without running anything."""
    import papermill as pm

    import nbformat

    path = Path(path)
    pm.execute_notebook(str(path), str(path), kernel_name="python3", cwd=str(path.parent),
                        progress_bar=False)
    nb = nbformat.read(path, as_version=4)  # keep where it ran out of the committed file
    for key in ("input_path", "output_path"):
        nb.metadata.get("papermill", {}).pop(key, None)
    nbformat.write(nb, path)
