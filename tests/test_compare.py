"""sppo_lite.compare: three arms from one recipe, the sweep that picks a baseline's settings, the arms' evaluation."""
import numpy as np
import pytest

from shared import tiny_config
from sppo_lite import compare, judges, loop


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    config = tiny_config(tmp, **{"iterations": 2, "generation.max_new_tokens": 8, "train.beta": 0.1,
                                 "train.learning_rate": 1e-3})
    judge = judges.LengthJudge()
    evaluation, validation = compare.split_prompts(config, n_eval=6, n_validation=4)
    gen = dict(max_new_tokens=8, batch_size=4, seed=0)
    out = compare.run_comparison(config, tmp / "arms", validation, judge, betas=[0.1, 0.5], learning_rates=[1e-3],
                                 n_boot=50, log=lambda *a: None, **gen)
    result = compare.evaluate_arms(out["runs"], evaluation, judge, tmp / "arms" / "eval", n_boot=50,
                                   log=lambda *a: None, **gen)
    return config, out, result, evaluation, validation, judge


def test_the_evaluation_and_validation_prompts_are_disjoint_and_never_trained(made):
    config, _, _, evaluation, validation, _ = made
    trained = {p for t in (1, 2) for p in loop.iteration_prompts(config, t)[1]}
    assert len(evaluation) == 6 and len(validation) == 4
    assert not set(evaluation) & set(validation) and not (set(evaluation) | set(validation)) & trained
    with pytest.raises(ValueError, match="held-out prompts cannot give"):
        compare.split_prompts(config, n_eval=10_000)


def test_every_arm_trains_on_the_sppo_arms_iteration_one_rows(made):
    _, out, _, _, _, _ = made
    runs = out["runs"]
    assert [runs[a].config["train"]["loss_type"] for a in compare.ARMS] == ["sppo", "dpo", "ipo"]
    for arm in ("dpo", "ipo"):
        for stage, artifact in (("generate", "responses.parquet"), ("judge", "judgements.parquet"),
                                ("build", "sppo.parquet")):
            ours = runs[arm].stage_dir(1, stage) / artifact
            assert ours.read_bytes() == (runs["sppo"].stage_dir(1, stage) / artifact).read_bytes()
        # from iteration 2 on an arm samples its own π_2, not SPPO's
        assert loop.read_manifest(runs[arm].stage_dir(2, "generate"))["inputs"]["policy"] != \
            loop.read_manifest(runs["sppo"].stage_dir(2, "generate"))["inputs"]["policy"]
        steps = [loop.read_manifest(runs[a].stage_dir(1, "train"))["counts"]["steps"] for a in ("sppo", arm)]
        assert steps[0] == steps[1] > 0                       # the same optimizer-step budget


def test_each_baseline_runs_at_the_best_point_of_its_sweep(made):
    _, out, _, _, _, _ = made
    for arm in ("dpo", "ipo"):
        points = out["sweeps"][arm]
        assert [(p["beta"], p["learning_rate"]) for p in points] == [(0.1, 1e-3), (0.5, 1e-3)]
        assert all(0 <= p["win_rate_ci"][0] <= p["win_rate"] <= p["win_rate_ci"][1] <= 100 for p in points)
        best = max(points, key=lambda p: p["win_rate"])
        assert out["chosen"][arm] == best
        train = out["runs"][arm].config["train"]
        assert (train["beta"], train["learning_rate"]) == (best["beta"], best["learning_rate"])
    with pytest.raises(ValueError, match="no sweep points"):
        compare.best_point([])


def test_the_arms_evaluation_is_paired_and_consistent(made):
    _, _, result, evaluation, _, judge = made
    assert result["iterations"] == [0, 1, 2]
    base = result["responses"]["sppo"][0]
    for arm in compare.ARMS:
        assert result["responses"][arm][0] == base             # one π₀, answered once with the same seed
        assert result["vs_base"][arm][0]["win_rate"] == 50.0
        assert all(0.0 <= s <= 1.0 for s in result["cut_off"][arm].values())
        # the length judge's P is σ((len_a − len_b)/20): recompute one win rate by hand
        ys = result["responses"][arm][2]
        p = [1 / (1 + np.exp(-(len(a) - len(b)) / 20)) for a, b in zip(ys, base)]
        assert result["vs_base"][arm][2]["win_rate"] == pytest.approx(100 * np.mean(p))
    h = result["head_to_head"]
    assert sorted(h) == ["dpo_vs_ipo", "sppo_vs_dpo", "sppo_vs_ipo"] and sorted(h["sppo_vs_dpo"]) == [1, 2]
    a, b = result["responses"]["sppo"][2], result["responses"]["dpo"][2]
    p = [1 / (1 + np.exp(-(len(x) - len(y)) / 20)) for x, y in zip(a, b)]
    assert h["sppo_vs_dpo"][2]["win_rate"] == pytest.approx(100 * np.mean(p))
    summary = compare.summary(result)
    assert summary["vs_base"]["ipo"]["2"]["win_rate"] == pytest.approx(result["vs_base"]["ipo"][2]["win_rate"])


def test_the_average_policy_answers_with_a_uniformly_drawn_iterate():
    responses = {1: [f"a{i}" for i in range(4000)], 2: [f"b{i}" for i in range(4000)], 3: [f"c{i}" for i in range(4000)]}
    mix = compare.mixture_responses(responses, [1, 2, 3], seed=0)
    assert all(y[1:] == str(i) for i, y in enumerate(mix))  # prompt i gets one of its own answers
    shares = [np.mean([y[0] == c for y in mix]) for c in "abc"]
    np.testing.assert_allclose(shares, 1 / 3, atol=0.03)
    assert compare.mixture_responses(responses, [1, 2, 3], seed=0) == mix


def test_an_arm_is_one_of_the_three_losses():
    with pytest.raises(ValueError, match="an arm is one of sppo, dpo, ipo"):
        compare.arm_config(loop.DEFAULT_CONFIG, "kto")
    cfg = compare.arm_config(loop.DEFAULT_CONFIG, "ipo", beta=0.3, learning_rate=1e-4)
    assert (cfg["train"]["loss_type"], cfg["train"]["beta"], cfg["train"]["learning_rate"]) == ("ipo", 0.3, 1e-4)


def test_the_tuned_baselines_are_the_best_points_of_the_recorded_sweep_and_its_edges():
    """lr: the best point of the 3 × 3 sweep; β: the best at that lr of the sweep's pick and one step past its edge."""
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    record = json.loads(sorted(results.glob("smollm2_compare-seed0-fp32-*.json"))[0].read_text())  # the sweep ran in fp32
    edges = json.loads(sorted(results.glob("baseline_grid_edges-seed0-*.json"))[0].read_text())
    for arm in ("dpo", "ipo"):
        points = record["sweeps"][arm]
        assert len({p["beta"] for p in points}) >= 3 and len({p["learning_rate"] for p in points}) >= 3
        swept = max(points, key=lambda p: p["win_rate"])
        assert record["chosen"][arm] == {"beta": swept["beta"], "learning_rate": swept["learning_rate"]}
        betas = sorted({p["beta"] for p in points})
        past_edge = [p for p in edges["points"][arm] if p["beta"] not in betas]
        assert swept["beta"] in {p["beta"] for p in edges["points"][arm]} and past_edge  # the pick, re-scored, and beyond
        assert all(p["beta"] < betas[0] or p["beta"] > betas[-1] for p in past_edge)
        assert edges["verdicts"][arm]["chosen_beta"] == swept["beta"]
        assert all(p["learning_rate"] == swept["learning_rate"] for p in edges["points"][arm])
        best = max(edges["points"][arm], key=lambda p: p["win_rate"])
        assert compare.TUNED[arm] == {"beta": best["beta"], "learning_rate": swept["learning_rate"]}
