"""Every notebook runs headless in its SMOKE setting (papermill) and writes summary.json."""
import json
from pathlib import Path

import pytest

from sppo_lite.evaluate import PAPER_ALPACAEVAL
from sppo_lite.notebooks import GPU_NOTEBOOKS, notebook_paths, run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

# A notebook whose full run needs a GPU and hours (GPU_NOTEBOOKS: 04, 05) may be committed with the outputs of its
# SMOKE run, but then it must say so at the top, in these words; and it must not say so once real outputs replace
# them. Every other notebook is committed with the outputs of its full run.
SMOKE_OUTPUTS_NOTE = "The outputs shown below are from the CPU SMOKE run"


def notebook(prefix: str):
    return next(p for p in notebook_paths() if p.name.startswith(prefix))


def test_all_notebooks_are_found_and_parametrised():
    names = [p.name for p in notebook_paths()]
    assert names[:2] == ["01_game_theory_derivation.ipynb", "02_toy_nash_convergence.ipynb"]
    for p in notebook_paths():
        nb = json.loads(p.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{p.name} needs exactly one cell tagged 'parameters'"
        src = "".join(tagged[0]["source"])
        assert "SMOKE" in src and "OUTPUT_DIR" in src
        # Committed notebooks show their figures: from a full run, or from the SMOKE run if the top says so.
        images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"{p.name} is committed without outputs: run `make notebooks`"
        printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        first_markdown = "".join(next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"])
        said = SMOKE_OUTPUTS_NOTE in first_markdown.replace("**", "")
        ran_smoke = nb["metadata"].get("papermill", {}).get("parameters", {}).get("SMOKE") is True or \
            '"smoke": true' in printed
        assert not ran_smoke or p.name.startswith(GPU_NOTEBOOKS), f"{p.name} is committed with SMOKE outputs"
        assert said == ran_smoke, (f"{p.name}: its outputs are from the SMOKE run, so its first markdown cell must "
                                   f"say {SMOKE_OUTPUTS_NOTE!r}" if ran_smoke else
                                   f"{p.name}: says its outputs are from the SMOKE run, but they are not")
        assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), p.name
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
    assert s["frozen_seeds"]["DPO"] + s["frozen_seeds"]["IPO"] >= 1      # collapse shows even in 200 steps
    assert 3 <= min(s["lab_eta_window"]) <= max(s["lab_eta_window"]) <= 6  # the η window notebook 03 aims at
    for name in ("simplex_last_vs_average", "exploitability_loglog", "sampled_K", "baselines", "eta_sweep",
                 "eta_window_lab"):
        assert (tmp_path / "02_toy_nash_convergence" / f"{name}.png").exists()


@pytest.fixture(scope="module")
def smoke_04(tmp_path_factory):
    """Notebook 04 in SMOKE once: the CPU recipe made small, 2 LoRA SPPO iterations of SmolLM2-135M-Instruct
    judged by the sentiment judge."""
    out = tmp_path_factory.mktemp("notebooks")
    return out, run_notebook(notebook("04_"), out)


def test_04_sppo_on_smollm2(smoke_04):
    out, s = smoke_04
    assert s["smoke"] is True and s["mode"] == "lora" and s["model"] == "smollm2-135m-instruct"
    assert s["model_name"] == "SmolLM2-135M-Instruct" and s["judge_type"] == "sentiment"
    assert s["iterations"] == 2 and s["k"] == 3 and s["n_prompts"] == 6
    assert list(s["stages"]) == ["iter1", "iter2"]
    for stages in s["stages"].values():
        assert list(stages) == ["generate", "judge", "build", "train"]
        assert all(v["elapsed_s"] > 0 and v["peak_gpu_gib"] is None for v in stages.values())  # CPU: no GPU peak
    assert s["total_elapsed_s"] == pytest.approx(sum(v["elapsed_s"] for st in s["stages"].values() for v in st.values()),
                                                 abs=0.05)
    for t in ("iter1", "iter2"):
        train, wp, fit = s["train"][t], s["win_prob"][t], s["achieved_vs_target"][t]
        assert 2 <= train["steps"] <= 4 and train["train_loss"] > 0   # ≤ 6 pairs, batch 3, 2 epochs
        assert train["target_chosen"] > 0 > train["target_rejected"]  # (P̂ − ½)/β: best above ½, worst below
        assert wp["chosen_mean"] > 0.5 > wp["rejected_mean"] and 0.5 < wp["pair_mean"] <= 1 and 1 <= wp["pairs"] <= 6
        assert fit["responses"] == 2 * wp["pairs"] and fit["slope"] > 0 and fit["correlation"] > 0
    assert set(s["samples_per_iteration"]) == {"pi_0", "pi_1"}  # the samples of π₀ (iteration 1) and π_1 (iteration 2)
    nb_out = out / "04_qlora_sppo_mistral7b"
    for name in ("stage_costs", "training_curves", "win_probs", "achieved_vs_target"):
        assert (nb_out / f"{name}.png").exists()
    assert (nb_out / "run" / "iter2" / "train" / "model" / "config.json").exists()  # π_2, merged


def test_05_evaluation(smoke_04):
    out, _ = smoke_04
    s = run_notebook(notebook("05_"), out)  # RUN_DIR None: the run of 04 beside it
    assert s["smoke"] is True and s["iterations"] == [1, 2] and s["n_eval_prompts"] == 8
    assert s["model_name"] == "SmolLM2-135M-Instruct" and s["judge_type"] == "sentiment"
    assert not (out / "05_evaluation" / "smoke-run").exists()  # it evaluated 04's models, not a run of its own
    results = [*s["vs_base"].values(), *s["vs_previous"].values(), s["best_of_n"]["single"], s["best_of_n"]["best"]]
    assert len(results) == 3 + 2 + 2
    for r in results:
        for key in ("win_rate", "lc_win_rate"):
            low, high = r[key + "_ci"]
            assert 0 <= low <= r[key] + 1e-9 and r[key] <= high + 1e-9 and high <= 100
    base = s["vs_base"]["SmolLM2-135M-Instruct (base)"]
    assert base["win_rate"] == base["lc_win_rate"] == 50.0  # the base against itself
    assert s["vs_previous"]["SPPO iter 1 (SmolLM2-135M-Instruct)"] == s["vs_base"]["SPPO iter 1 (SmolLM2-135M-Instruct)"]
    # Rows are named after the model that ran; the paper's table is kept apart, as the paper's.
    assert [r["model"] for r in s["table"]] == ["SmolLM2-135M-Instruct (base)", "SPPO iter 1 (SmolLM2-135M-Instruct)",
                                                "SPPO iter 2 (SmolLM2-135M-Instruct)",
                                                "SPPO iter 2 (SmolLM2-135M-Instruct), best-of-3"]
    assert s["paper_table"] == PAPER_ALPACAEVAL
    assert s["best_of_n"]["chooser"] and s["best_of_n"]["scorer"]
    assert len(s["side_by_side"]) == 6 and all(r["before"] and r["prompt"] for r in s["side_by_side"])
    assert len(s["length_drift"]["heldout_mean_chars"]) == 3 and len(s["length_drift"]["train_samples_mean_chars"]) == 2
    for name in ("win_rates", "length_drift", "best_of_n", "compare_win_rates"):
        assert (out / "05_evaluation" / f"{name}.png").exists()
    # §6: SPPO, iterative DPO and IPO from one start under the committee judge, at the comparison's SMOKE size.
    c = s["compare"]
    assert c["iterations"] == 2 and c["n_prompts"] == 8 and sorted(c["verdicts"]) == ["dpo", "ipo"]
    assert set(c["verdicts"].values()) <= {"beats", "loses to", "is not told apart from"}
    assert c["steps"]["sppo"][0] == c["steps"]["dpo"][0] == c["steps"]["ipo"][0] > 0
    for arm in ("sppo", "dpo", "ipo"):
        assert c["vs_base"][arm]["0"]["win_rate"] == 50.0 and set(c["vs_base"][arm]) == {"0", "1", "2"}
        assert all(0 <= share <= 1 for share in c["cut_off"][arm].values())
        assert 0 <= c["factual"][arm]["accuracy"]["2"] <= 1
    assert sorted(c["head_to_head"]) == ["dpo_vs_ipo", "sppo_vs_dpo", "sppo_vs_ipo"]
    assert s["compare_intransitivity"]["sentiment"]["prompts_with_a_cycle"] == 0


def test_04_05_committed_outputs_name_the_model_that_ran():
    """Without CUDA, 04 and 05 are committed with the outputs of the CPU recipe: SmolLM2, never tiny random
    models, and no row of ours carries one of the paper's row names."""
    for prefix in ("04_", "05_"):
        nb = json.loads(notebook(prefix).read_text())
        first = "".join(nb["cells"][0]["source"])
        assert "SmolLM2-135M-Instruct" in first and "sentiment judge" in first and "not PairRM" in first
        printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        assert "SmolLM2" in printed and "tiny" not in printed.lower()
        text = json.dumps(nb)  # no path of the machine that ran it: the checkout, the home folder, the model cache
        assert str(Path(__file__).resolve().parent.parent) not in text and str(Path.home()) not in text
        assert ".cache" not in text
    nb = json.loads(notebook("05_").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    ours = printed.split("The paper's numbers")[0]
    assert "SPPO Iter" not in ours and "Mistral-7B-Instruct-v0.2 " not in ours.split("Ours")[-1]
