"""`pip install .` is the package: a wheel built from the source files, installed into a fresh venv, runs a recipe.

The fresh venv gets only the wheel (`--no-deps`); its dependencies come from this environment's pinned
site-packages through a .pth line, which adds them to sys.path without running this environment's own
.pth hooks (so the editable checkout of sppo_lite is not visible there). `pip check` then proves the wheel's
declared requirements are met by that stack.
"""
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "sppo_lite", "configs", "data", "notebooks")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source files (the checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True)
    (found,) = (tmp / "dist").glob("sppo_lite-*.whl")
    return found


def test_the_wheel_holds_every_module_recipe_and_notebook(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sppo_lite").rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)
    shipped = {f"sppo_lite/share/{p.relative_to(ROOT).as_posix()}" for p in
               [*(ROOT / "configs").rglob("*.yaml"), ROOT / "data" / "prompts.jsonl", ROOT / "data" / "factual_qa.jsonl",
                *(ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")]}
    assert len(shipped) >= 10 and shipped <= names, sorted(shipped - names)
    assert not any("fixtures" in n or "__pycache__" in n for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    extras = {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"gpu", "colab", "lab", "notebooks", "pairrm", "full", "dev"} <= extras
    colab = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and 'extra == "colab"' in line]
    assert colab and all(name in " ".join(colab) for name in ("gpu", "lab"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; dependencies through a .pth line to this environment's site-packages."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    target = Path(subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True, text=True)
    (target / "_sppo_lite_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


CHECK_REQUIREMENTS = """
from importlib import metadata
from packaging.requirements import Requirement
for line in metadata.requires("sppo-lite"):
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            found = None
        if found is None or not req.specifier.contains(found, prereleases=True):
            print(req, "unmet:", found)
"""


def run_in(env: Path, cwd: Path, *argv, check=True) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
                   OMP_NUM_THREADS="1", PATH=f"{env / 'bin'}{os.pathsep}{environ.get('PATH', '')}")
    done = subprocess.run(list(argv), cwd=cwd, env=environ, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_installed_wheel_runs_a_shipped_recipe_from_any_folder(venv, tmp_path):
    python = str(venv / "bin" / "python")
    where = run_in(venv, tmp_path, python, "-c",
                   "import sppo_lite, sppo_lite.loop, sppo_lite.resources as r; print(sppo_lite.__file__); "
                   "print(r.PROJECT_ROOT); print(' '.join(r.recipe_names()))").stdout.split("\n")
    assert Path(where[0]).is_relative_to(venv) and not Path(where[0]).is_relative_to(ROOT)
    assert Path(where[1]) == Path(where[0]).parent / "share"
    assert {"cpu-tiny", "cpu-smollm2", "colab-qlora-mistral7b", "full-8gpu-mistral7b"} <= set(where[2].split())
    # The wheel's own requirements (not its extras) hold in the pinned stack.
    unmet = run_in(venv, tmp_path, python, "-c", CHECK_REQUIREMENTS).stdout.strip()
    assert unmet == "", unmet
    # The tiny recipe made smaller, by name and by the repository path the docs write, from an empty folder.
    small = ["--set", "iterations=1", "--set", "prompts.n_prompts=4", "--set", "generation.k=3",
             "--set", "generation.max_new_tokens=6"]
    done = run_in(venv, tmp_path, str(venv / "bin" / "sppo-lite"), "iterate", "--config", "cpu-tiny",
                  "--output-dir", "run", *small)
    assert (tmp_path / "run" / "iter1" / "train" / "model" / "model.safetensors").is_file(), done.stdout
    assert "1 iteration(s) complete" in done.stdout
    again = run_in(venv, tmp_path, str(venv / "bin" / "sppo-lite"), "iterate", "--config", "configs/cpu-tiny.yaml",
                   "--output-dir", "run", *small)
    assert again.stdout.count("done already") == 4
    # A starter folder of recipes and prompts to edit; a second copy into it is refused, nothing overwritten.
    run_in(venv, tmp_path, str(venv / "bin" / "sppo-lite"), "init", "mine")
    assert (tmp_path / "mine" / "configs" / "cpu-tiny.yaml").is_file()
    assert (tmp_path / "mine" / "data" / "prompts.jsonl").read_bytes() == (ROOT / "data" / "prompts.jsonl").read_bytes()
    refused = run_in(venv, tmp_path, str(venv / "bin" / "sppo-lite"), "init", "mine", check=False)
    assert refused.returncode == 2 and "exists already" in refused.stderr
