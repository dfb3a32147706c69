"""The tiny-LM lab's pieces (the full lab runs as notebook 03's SMOKE test)."""
import numpy as np
import pytest

from sppo_lite import game, lab, loop


def test_sft_chats_follow_the_mix_and_use_the_markers():
    chats = lab.style_sft_chats(["p1", "p2"], (0.6, 0.3, 0.1), per_prompt=3000, seed=1)
    answers = [c[1]["content"] for c in chats]
    mix, unmarked = lab.style_mix(answers)
    np.testing.assert_allclose(mix, [0.6, 0.3, 0.1], atol=0.02)
    assert unmarked == 0
    assert abs(np.mean(["good" in a.split() for a in answers]) - 0.5) < 0.02
    with pytest.raises(ValueError, match="sum to 1"):
        lab.style_sft_chats(["p"], (0.5, 0.5, 0.5))


def test_style_mix_counts_unmarked_answers_apart():
    mix, unmarked = lab.style_mix(["Sure! x", "Well, y", "Well, z", "no marker"])
    np.testing.assert_allclose(mix, [1 / 3, 2 / 3, 0])
    assert unmarked == 0.25


def test_the_judge_plays_the_cycle_plus_quality():
    cfg = lab.lab_config("policy", "prompts.jsonl", quality_weight=0.2)
    judge = loop.make_judge(cfg)
    sure_good, well_plain = lab.style_response(0, True), lab.style_response(1, False)
    S = game.weighted_cycle()
    # (1 − w)·S[0, 1] + w·σ(1 − 0)
    expected = 0.8 * S[0, 1] + 0.2 / (1 + np.exp(-1.0))
    assert judge.win_matrix("x", [sure_good, well_plain])[0, 1] == pytest.approx(expected)


def test_payoff_keeps_the_nash():
    S = game.weighted_cycle()
    np.testing.assert_allclose(game.nash_equilibrium(lab.style_payoff(S, 0.2)), game.nash_equilibrium(S), atol=1e-8)


def test_lab_configs_differ_only_where_the_methods_do():
    sppo = lab.lab_config("policy", "prompts.jsonl", "sppo")
    dpo = lab.lab_config("policy", "prompts.jsonl", "dpo")
    ipo = lab.lab_config("policy", "prompts.jsonl", "ipo")
    assert (sppo["build"]["pair_mode"], dpo["build"]["pair_mode"], ipo["build"]["pair_mode"]) == ("all", "best_worst", "best_worst")
    assert (sppo["train"]["loss_type"], dpo["train"]["loss_type"], ipo["train"]["loss_type"]) == ("sppo", "dpo", "ipo")
    assert sppo["generation"] == dpo["generation"] == ipo["generation"] and sppo["judge"] == dpo["judge"] == ipo["judge"]
    assert sppo["generation"]["temperature"] == 1.0 and sppo["prompts"]["thirds"] is None
    with pytest.raises(ValueError, match="method"):
        lab.lab_config("policy", "prompts.jsonl", "kto")


def test_effective_eta_is_recovered_from_exact_dynamics():
    payoff = lab.style_payoff(game.weighted_cycle(), 0.2)
    mixes = game.sppo_dynamics(payoff, 6.0, 5, pi0=[0.6, 0.3, 0.1])
    eta, fitted = lab.fit_effective_eta(mixes, payoff)
    assert eta == pytest.approx(6.0, rel=0.03)
    np.testing.assert_allclose(fitted, mixes, atol=0.02)


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_03_smoke(tmp_path):
    from sppo_lite.notebooks import notebook_paths, run_notebook

    path = next(p for p in notebook_paths() if p.name.startswith("03_"))
    s = run_notebook(path, tmp_path)
    assert s["smoke"] is True and s["iterations"] == 2
    for key in ("sppo_exploitability", "sppo_avg_exploitability", "dpo_exploitability", "dpo_avg_exploitability",
                "exact_avg_exploitability", "sppo_mixes", "dpo_mixes"):
        assert len(s[key]) == 3, key
    # Both arms start from the same SFT policy and its same samples.
    assert s["sppo_mixes"][0] == s["dpo_mixes"][0]
    assert s["sppo_mixes"][0] == pytest.approx(s["exact_mixes"][0])   # the exact prediction starts where the LM does
    # broken answers count: the LM's start is at least as exploitable as the exact start with none
    assert s["sppo_exploitability"][0] >= s["exact_exploitability"][0] - 1e-12
    assert sum(s["optimizer_steps"]["SPPO"]) >= sum(s["optimizer_steps"]["DPO"]) > 0
    assert all(0 <= v <= 100 for v in s["sppo_win_rate_vs_start"] + s["dpo_win_rate_vs_start"])
    for name in ("style_mix_and_exploitability", "win_rate_vs_start", "logratio_moves"):
        assert (tmp_path / path.stem / f"{name}.png").exists()


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_03_full_at_another_seed(tmp_path):
    """The full setting at a seed other than the committed run's (0): every claim() of the notebook holds (~5 min).

    The baselines' grid is cut to its middle β (three learning rates each, so "the best learning rate lies inside
    the grid" is still a claim that can fail) to keep CI short; benchmarks/notebook_seeds.py runs the whole 3 × 3
    grid at seeds 0, 1, 2 (BENCHMARKS.md)."""
    from sppo_lite.notebooks import notebook_paths, run_notebook

    path = next(p for p in notebook_paths() if p.name.startswith("03_"))
    s = run_notebook(path, tmp_path, smoke=False, parameters={"SEED": 1, "SWEEP_BETAS": [0.5]})
    assert s["smoke"] is False and s["iterations"] == 20 and len(s["sppo_mixes"]) == 21
    assert [len(rows) for rows in s["sweep"].values()] == [3, 3]


def test_broken_answers_count_in_exploitability():
    G = lab.style_game_with_broken(game.weighted_cycle())
    assert G.shape == (4, 4) and G[3, :3].tolist() == [0, 0, 0] and G[:3, 3].tolist() == [1, 1, 1]
    np.testing.assert_allclose(game.nash_equilibrium(G)[:3], game.nash_equilibrium(game.weighted_cycle()), atol=1e-8)
    nash = game.nash_equilibrium(game.weighted_cycle())
    pi = lab.with_broken([nash], [0.5])[0]
    np.testing.assert_allclose(pi, [*(nash / 2), 0.5])
    # half the answers broken: every style wins ½ against the marked half and 1 against the broken half
    assert game.exploitability(G, pi) == pytest.approx(0.5 * 0.5 + 0.5 * 1 - 0.5)
    assert game.exploitability(G, lab.with_broken([nash], [0.0])[0]) == pytest.approx(0.0, abs=1e-9)


def test_dpo_arm_takes_as_many_optimizer_steps_as_sppo():
    for k in (4, 8):
        sppo = lab.lab_config("policy", "prompts.jsonl", "sppo", n_prompts=32, k=k)
        dpo = lab.lab_config("policy", "prompts.jsonl", "dpo", n_prompts=32, k=k)
        sppo_steps = 32 * k // sppo["train"]["per_device_train_batch_size"]
        dpo_steps = 32 // dpo["train"]["per_device_train_batch_size"]
        assert sppo_steps == dpo_steps
        assert sppo["train"]["disable_tqdm"] and dpo["train"]["disable_tqdm"]


def test_style_lows_by_hand():
    mixes = [[0.6, 0.3, 0.1], [0.8, 0.0, 0.2], [0.5, 0.1, 0.4], [0.2, 0.05, 0.75]]
    lows = lab.style_lows(mixes)
    assert [d["style"] for d in lows] == list(lab.MARKERS)
    assert lows[1] == {"style": "Well,", "low": 0.0, "at": 1, "regained": 0.1}
    assert lows[0]["at"] == 3 and lows[0]["regained"] == 0.2
    assert lows[2] == {"style": "Briefly:", "low": 0.1, "at": 0, "regained": 0.75}


def test_sft_seconds_reads_the_record(tmp_path):
    (tmp_path / ".complete").write_text('{"elapsed_s": 12.5}')
    assert lab.sft_seconds(tmp_path) == 12.5
    (tmp_path / ".complete").write_text("")  # a policy saved before the record existed
    assert lab.sft_seconds(tmp_path) is None
    assert lab.sft_seconds(tmp_path / "missing") is None
    nan = float("nan")
    lows = lab.style_lows([[0.6, 0.3, 0.1], [nan, nan, nan], [0.0, 0.5, 0.5]])  # iteration 1: every answer broken
    assert lows[0] == {"style": "Sure!", "low": 0.0, "at": 2, "regained": 0.0}
