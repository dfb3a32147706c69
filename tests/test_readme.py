"""The README's Python example runs as written (in an empty folder), and its quickstart names real recipes."""
import re
from pathlib import Path

from sppo_lite import loop
from sppo_lite.resources import recipe_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_python_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    manifest = loop.read_manifest(tmp_path / "runs" / "mine" / "iter1" / "train")
    assert manifest["counts"]["weight_change"]["changed_tensors"] > 0


def test_the_quickstart_recipes_and_commands_exist():
    named = set(re.findall(r"--config ([\w-]+)", README))
    assert named and named <= set(recipe_names())
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link
    assert "CPU_TINY_TIME" not in README
