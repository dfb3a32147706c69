"""The `sppo-lite` command: toy demo output, config files, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sppo_lite import cli, game

REPO = Path(__file__).resolve().parent.parent


def test_toy_writes_figure_and_summary(tmp_path, capsys):
    assert cli.main(["toy", "--steps", "300", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "toy_nash.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    np.testing.assert_allclose(summary["nash"], np.array([0.3, 0.5, 0.9]) / 1.7, atol=1e-8)
    assert summary["SPPO average iterate"] < summary["SPPO last iterate"]
    assert summary["SPPO average iterate"] < 0.05
    assert summary["Bradley–Terry argmax"] == pytest.approx(0.25)
    assert "Nash by LP" in capsys.readouterr().out


def test_toy_config_gives_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("a: 0.2\nb: 0.6\nc: 0.4\nsteps: 20\n")
    assert cli.main(["toy", "--config", str(cfg), "--steps", "10", "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    np.testing.assert_allclose(summary["nash"], game.nash_equilibrium(game.weighted_cycle(0.2, 0.6, 0.4)))
    assert summary["steps"] == 10


def test_shipped_toy_config_is_valid(tmp_path):
    assert cli.main(["toy", "--config", str(REPO / "configs" / "toy.yaml"), "--steps", "5",
                     "--output-dir", str(tmp_path)]) == 0


@pytest.mark.parametrize("args, message", [
    (["toy", "--a", "1.5"], "cycle margin a must lie in (0, 1]"),
    (["toy", "--config", "missing.yaml"], "does not exist"),
])
def test_errors_are_one_line(args, message, tmp_path, capsys):
    assert cli.main(args + ["--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("etta: 3\n")
    assert cli.main(["toy", "--config", str(cfg)]) == 2
    assert "unknown option(s) etta" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "sppo_lite.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "toy" in out.stdout and "notebooks" in out.stdout


def test_toy_table_fits_80_columns_and_names_every_method(tmp_path, capsys):
    assert cli.main(["toy", "--steps", "20", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("Exploitability"))
    table = out[start + 1:start + 1 + 2 + 4]  # two header lines, steps 0, 1, 10, 20
    assert max(len(line) for line in table) <= 80
    assert table[0].split() == ["SPPO", "SPPO", "iter.", "DPO", "BT"]
    assert table[1].split() == ["step", "last", "average", "best/worst", "argmax"]
    assert [row.split()[0] for row in table[2:]] == ["0", "1", "10", "20"]


def test_version_and_help_at_every_level(capsys):
    from sppo_lite import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sppo-lite {__version__}"
    parser = cli.build_parser()
    top = parser.format_help()
    assert "Exit codes: 0 done; 2 a problem with the input" in top
    assert "\n    sppo-lite iterate --config F --output-dir D" in top  # the usage table keeps its lines
    for name, sub in parser.subcommands.items():
        text = sub.format_help()
        assert text.startswith(f"usage: sppo-lite {name}") and "options:" in text
    assert "\n  sppo-lite iterate --config configs/cpu-tiny.yaml" in parser.subcommands["iterate"].format_help()


def test_interrupt_is_exit_130_with_how_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_toy", interrupted)  # build_parser binds the command at call time
    assert cli.main(["toy"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_colab_links_follow_the_repository_in_pyproject(tmp_path):
    import re
    import shutil

    from sppo_lite.notebooks import colab_link, fill_repository_links, notebook_paths, repository_url

    url = repository_url()
    assert url.startswith("https://github.com/") and "<" not in url
    for path in notebook_paths():
        text = path.read_text()
        for link in re.findall(r"https://colab\.research\.google\.com/github/[^)\s\\\"]+", text):
            assert link == colab_link(path.name), path.name
        for repo in re.findall(r'REPO_URL = \\"([^\\"]+)\\"', text):
            assert repo == url, path.name
    nb4 = next(p for p in notebook_paths() if p.name.startswith("04_"))
    assert colab_link(nb4.name) in nb4.read_text()
    copy = tmp_path / nb4.name
    shutil.copy(nb4, copy)
    copy.write_text(copy.read_text().replace(url, "https://github.com/someone/old-name"))
    assert fill_repository_links(copy) and copy.read_text() == nb4.read_text()


def test_keys_lists_every_key_and_shows_a_recipe(capsys):
    import yaml

    assert cli.main(["keys"]) == 0
    reference = capsys.readouterr().out
    assert "| `generation.k` | `5` | an integer >= 2" in reference and "`train.activation_checkpointing`" in reference
    assert cli.main(["keys", "--config", "cpu-tiny", "--set", "generation.k=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["generation"]["k"] == 3 and shown["policy"]["model"] == "tiny"
    assert cli.main(["keys", "--config", "cpu-tiny", "--set", "generation.k=1"]) == 2
    assert "generation.k must be an integer >= 2" in capsys.readouterr().err
