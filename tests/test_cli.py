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
