"""Every notebook runs headless in its SMOKE setting (papermill) and writes summary.json."""
import json

import pytest

from sppo_lite.notebooks import notebook_paths, run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_all_notebooks_are_found_and_parametrised():
    names = [p.name for p in notebook_paths()]
    assert names[:2] == ["01_game_theory_derivation.ipynb", "02_toy_nash_convergence.ipynb"]
    for p in notebook_paths():
        nb = json.loads(p.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{p.name} needs exactly one cell tagged 'parameters'"
        src = "".join(tagged[0]["source"])
        assert "SMOKE" in src and "OUTPUT_DIR" in src
        # Committed notebooks show their figures from a full run.
        images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"{p.name} is committed without outputs: run `make notebooks`"
        smoke_line = next(line for line in src.splitlines() if line.startswith("SMOKE"))
        assert smoke_line.split("#")[0].split("=")[1].strip() == "False", f"{p.name}: committed with SMOKE on"


def test_01_derivation(tmp_path):
    s = run_notebook(notebook_paths()[0], tmp_path)
    assert s["smoke"] is True
    assert s["bt_argmax_exploitability"] == pytest.approx(0.25)
    assert s["bt_fit_max_error"] > 0.1                       # no BT model fits a cycle
    assert s["tv_regression_vs_exact"]["0.01"] < 1e-6        # η/2 step exact to first order
    d = s["descent_directions"]
    assert d["dpo"]["-1,-1"] == pytest.approx(d["dpo"]["+1,+1"])  # DPO: gap only
    assert d["sppo"]["-1,-1"] != pytest.approx(d["sppo"]["+1,+1"])
    assert (tmp_path / "01_game_theory_derivation" / "gradient_fields.png").exists()


def test_02_toy_convergence(tmp_path):
    s = run_notebook(notebook_paths()[1], tmp_path)
    assert s["smoke"] is True and s["steps"] == 200
    assert s["exact_avg_exploitability"] < 0.05 < s["exact_last_exploitability"]
    assert s["baselines_final_exploitability"]["BT-reward argmax"] == pytest.approx(0.25)
    assert s["five_sppo_avg_exploitability"] < 0.5 * s["five_bt_argmax_exploitability"]
    for name in ("simplex_last_vs_average", "exploitability_loglog", "sampled_K", "baselines", "eta_sweep"):
        assert (tmp_path / "02_toy_nash_convergence" / f"{name}.png").exists()
