"""sppo_lite.evaluate: win rates, the length-controlled win rate and bootstrap CIs on synthetic
judgements whose true answer is known, and the judge-driven helpers with the LengthJudge rule judge."""
import numpy as np
import pytest
from scipy.special import expit, logit

from sppo_lite.evaluate import (
    PAPER_ALPACAEVAL, bootstrap_ci, best_of_n, evaluate_against, length_controlled_win_rate,
    length_drift, results_table, win_rate,
)
from sppo_lite.judges import LengthJudge

N = 600
TRUE_RATE = 0.65  # the model's quality edge: P(model ≻ baseline) at equal lengths


def lengths(seed: int, mean_diff: float, sd_diff: float = 100.0):
    """Baseline lengths ~ U(500, 1500) characters; the model's differ by Δ ~ N(mean_diff, sd_diff²)."""
    rng = np.random.default_rng(seed)
    len_baseline = rng.uniform(500, 1500, N)
    delta = rng.normal(mean_diff, sd_diff, N)
    return len_baseline + delta, len_baseline, delta


# ---------------------------------------------------------------- win rate

def test_win_rate_is_the_mean_probability_in_percent():
    assert win_rate([1.0, 0.0, 0.5, 0.75]) == pytest.approx(56.25)
    assert win_rate([0.5]) == pytest.approx(50.0)


# ---------------------------------------------------------------- length control

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judge_that_only_likes_length_gives_lc_near_half(seed):
    len_model, len_baseline, delta = lengths(seed, mean_diff=100.0)
    p = expit(delta / 25.0)  # longer wins, no quality difference
    fit = length_controlled_win_rate(p, len_model, len_baseline)
    assert win_rate(p) > 70
    assert abs(fit.lc_win_rate - 50.0) < 3
    assert fit.length_coef > 0 and fit.length_scale == pytest.approx(delta.std())


def test_quality_edge_without_length_difference_gives_lc_equal_to_raw():
    rng = np.random.default_rng(3)
    p = rng.beta(10 * TRUE_RATE, 10 * (1 - TRUE_RATE), N)  # per-prompt probabilities, mean 0.65
    same = rng.uniform(500, 1500, N)
    exact = length_controlled_win_rate(p, same, same)
    assert exact.lc_win_rate == pytest.approx(win_rate(p), abs=1e-6)
    assert exact.length_coef == 0.0
    unrelated = length_controlled_win_rate(p, same + rng.normal(0, 100, N), same)
    assert unrelated.lc_win_rate == pytest.approx(win_rate(p), abs=1.0)
    assert unrelated.lc_win_rate == pytest.approx(100 * TRUE_RATE, abs=3.0)


def test_lc_recovers_the_quality_rate_under_length_bias():
    len_model, len_baseline, delta = lengths(4, mean_diff=100.0)
    q = logit(TRUE_RATE)
    # Judge of exactly the LC model's form: recovered up to the tiny ridge.
    p_tanh = expit(q + 1.5 * np.tanh(delta / delta.std()))
    assert length_controlled_win_rate(p_tanh, len_model, len_baseline).lc_win_rate == pytest.approx(65.0, abs=0.3)
    # Judge linear in the raw length difference: the tanh model recovers it approximately.
    p_linear = expit(q + delta / 50.0)
    assert win_rate(p_linear) > 80
    assert length_controlled_win_rate(p_linear, len_model, len_baseline).lc_win_rate == pytest.approx(65.0, abs=3)


@pytest.mark.parametrize("seed, labels", [(7, "soft"), (8, "hard")])
def test_lc_fit_matches_statsmodels_glm_on_the_same_features(seed, labels):
    """An independent fit of the same GLM: statsmodels' Binomial GLM (fractional responses allowed) on
    X = [1, tanh(Δ/sd(Δ))], by IRLS without a penalty and by its elastic net with the package's ridge."""
    import statsmodels.api as sm  # a dev requirement
    len_model, len_baseline, delta = lengths(seed, mean_diff=100.0)
    x = np.tanh(delta / delta.std())
    rng = np.random.default_rng(seed)
    z = logit(TRUE_RATE) + 1.5 * x + rng.normal(0.0, 0.5, N)  # the GLM's form plus per-prompt noise
    p = expit(z) if labels == "soft" else (rng.random(N) < expit(z)) * 1.0  # judge probabilities or 0/1 verdicts
    X = np.column_stack([np.ones(N), x])
    glm = sm.GLM(p, X, family=sm.families.Binomial()).fit(tol=1e-12)
    ours = length_controlled_win_rate(p, len_model, len_baseline, ridge=0.0)
    assert [ours.intercept, ours.length_coef] == pytest.approx(glm.params, abs=1e-6)  # both solvers: ~1e-8
    assert ours.lc_win_rate == pytest.approx(100 * expit(glm.params[0]), abs=1e-6)
    assert ours.length_scale == pytest.approx(delta.std())
    assert ours.length_coef == pytest.approx(1.5, abs=0.3) and ours.lc_win_rate == pytest.approx(65.0, abs=4)
    # The default ridge adds (1e-4/2)·φ² to the mean cross-entropy; statsmodels' elastic net with L1 weight 0
    # minimises −loglik/n + (α/2)·β², α per coefficient: the same objective, solved by another method.
    ridge = 1e-4
    penalised = sm.GLM(p, X, family=sm.families.Binomial()).fit_regularized(
        alpha=np.array([0.0, ridge]), L1_wt=0.0, cnvrg_tol=1e-12, maxiter=1000)
    fit = length_controlled_win_rate(p, len_model, len_baseline, ridge=ridge)
    assert [fit.intercept, fit.length_coef] == pytest.approx(penalised.params, abs=2e-5)
    assert abs(fit.length_coef) < abs(glm.params[1])  # the ridge shrinks φ ...
    assert fit.lc_win_rate == pytest.approx(ours.lc_win_rate, abs=0.1)  # ... and moves LC by < 0.1 points


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_interval_covers_the_true_rate_in_most_simulations():
    rng = np.random.default_rng(5)
    covered = 0
    for sim in range(100):
        p = rng.beta(3.0, 7.0, 200)  # true win rate 30 %
        estimate, low, high = bootstrap_ci(win_rate, p, n_boot=400, seed=sim)
        assert low <= estimate <= high
        covered += low <= 30.0 <= high
    assert covered >= 90


def test_bootstrap_resamples_rows_jointly_and_is_seeded():
    p = np.linspace(0.1, 0.9, 50)
    paired = bootstrap_ci(lambda a, b: float(np.mean(a - b)), p, p.copy(), n_boot=200)
    assert paired == (0.0, 0.0, 0.0)  # rows kept together: a − b is 0 in every resample
    assert bootstrap_ci(win_rate, p, n_boot=200, seed=1) == bootstrap_ci(win_rate, p, n_boot=200, seed=1)


def test_bootstrap_interval_agrees_with_a_hand_percentile_and_the_normal_interval():
    rng = np.random.default_rng(9)
    base = rng.beta(3.0, 7.0, 400)
    a, b = np.clip(base + rng.normal(0.02, 0.01, 400), 0, 1), base  # paired: a − b varies far less than a, b
    mean_diff = lambda x, y: float(np.mean(x - y))  # noqa: E731
    estimate, low, high = bootstrap_ci(mean_diff, a, b, n_boot=4000, seed=2)
    # Hand-written percentile bootstrap, other resamples: the same interval up to Monte-Carlo error.
    rows = np.random.default_rng(123).integers(0, 400, size=(4000, 400))
    hand_low, hand_high = np.quantile((a[rows] - b[rows]).mean(axis=1), [0.025, 0.975])
    # Normal interval of the mean of the paired differences: the mean of 400 rows is nearly normal.
    d = a - b
    half = 1.96 * d.std() / np.sqrt(len(d))
    assert estimate == pytest.approx(d.mean())
    for lo, hi in [(hand_low, hand_high), (d.mean() - half, d.mean() + half)]:
        assert low == pytest.approx(lo, abs=0.1 * half) and high == pytest.approx(hi, abs=0.1 * half)
    # Resampling a and b on their own would see their spread (sd ≈ 0.14, not 0.01): ten times wider.
    assert high - low < 0.1 * 2 * 1.96 * np.hypot(a.std(), b.std()) / np.sqrt(len(d))


def test_bootstrap_of_the_lc_win_rate_brackets_its_estimate():
    len_model, len_baseline, delta = lengths(6, mean_diff=100.0)
    p = expit(logit(TRUE_RATE) + delta / 50.0)
    stat = lambda *a: length_controlled_win_rate(*a).lc_win_rate  # noqa: E731
    estimate, low, high = bootstrap_ci(stat, p, len_model, len_baseline, n_boot=60)
    assert low < estimate < high and high - low < 15


# ---------------------------------------------------------------- judge-driven helpers

def test_best_of_n_with_a_length_judge_picks_the_longest():
    candidates = [["short", "a much longer answer", "medium one"], ["bb", "b", "bbbb", "bbb"]]
    assert best_of_n(LengthJudge(), ["p1", "p2"], candidates) == ["a much longer answer", "bbbb"]
    assert best_of_n(LengthJudge(), ["p"], [["same", "size", "four"]]) == ["same"]  # first wins ties


def test_evaluate_against_with_a_length_judge():
    prompts = ["a", "b", "c", "d"]
    model = ["x" * 60, "x" * 40, "one two three", "x" * 40]
    baseline = ["y" * 20, "y" * 20, "uno dos tres!", "y" * 20]  # Δ = 40, 20, 0, 20 characters
    result = evaluate_against(LengthJudge(scale=20.0), prompts, model, baseline, n_boot=100)
    expected = expit(np.array([2.0, 1.0, 0.0, 1.0]))
    np.testing.assert_allclose(result["win_probs"], expected)
    assert result["win_rate"] == pytest.approx(100 * expected.mean())
    low, high = result["win_rate_ci"]
    assert low <= result["win_rate"] <= high
    assert result["n_prompts"] == 4
    assert result["mean_chars_model"] == pytest.approx((60 + 40 + 13 + 40) / 4)
    assert result["mean_char_diff"] == pytest.approx(20.0)
    assert result["mean_words_model"] == pytest.approx(1.5)
    assert result["mean_words_baseline"] == pytest.approx(1.5)


def test_evaluate_against_symmetric_lengths_give_even_rates():
    model = ["x" * 10, "x" * 30, "x" * 50, "x" * 50, "x" * 70]
    baseline = ["y" * 50, "y" * 50, "y" * 50, "y" * 30, "y" * 30]  # Δ = −40, −20, 0, 20, 40
    result = evaluate_against(LengthJudge(), list("abcde"), model, baseline, n_boot=50)
    assert result["win_rate"] == pytest.approx(50.0)
    assert result["lc_win_rate"] == pytest.approx(50.0, abs=1e-6)


# ---------------------------------------------------------------- reporting

def test_results_table_puts_ours_beside_the_papers():
    ours = {"Mistral-7B-Instruct-v0.2": {"lc_win_rate": 50.0, "win_rate": 50.0},
            "SPPO Iter1": {"lc_win_rate": 55.5, "win_rate": 58.25, "lc_win_rate_ci": (51.0, 60.0)},
            "SPPO Iter1 (QLoRA)": {"lc_win_rate": 54.0, "win_rate": 57.0}}
    records, text = results_table(ours)
    assert [r["model"] for r in records] == list(ours)
    assert records[1]["paper_lc_win_rate"] == 24.79 and records[1]["paper_win_rate"] == 23.51
    assert records[2]["paper_lc_win_rate"] is None
    lines = text.splitlines()
    assert lines[0].split()[0] == "model" and len(lines) == 4
    assert "55.50 [51.0, 60.0]" in lines[2] and "24.79" in lines[2] and "—" in lines[3]


def test_paper_numbers_rise_with_every_iteration():
    rows = ["Mistral-7B-Instruct-v0.2", "SPPO Iter1", "SPPO Iter2", "SPPO Iter3", "SPPO Iter3 (best-of-16)"]
    assert list(PAPER_ALPACAEVAL) == rows
    lc = [PAPER_ALPACAEVAL[r]["lc_win_rate"] for r in rows]
    assert lc == sorted(lc) and PAPER_ALPACAEVAL["SPPO Iter3"] == {"lc_win_rate": 28.53, "win_rate": 31.02}


def test_length_drift_per_iteration():
    drift = length_drift([[100, 200, 600], [300, 300], [1000]])
    np.testing.assert_allclose(drift["mean"], [300.0, 300.0, 1000.0])
    np.testing.assert_allclose(drift["median"], [200.0, 300.0, 1000.0])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call, match", [
    (lambda: win_rate([]), "non-empty"),
    (lambda: win_rate([[0.5, 0.5]]), "1-D"),
    (lambda: win_rate([0.2, 1.2]), r"\[0, 1\]"),
    (lambda: win_rate([0.2, np.nan]), "finite"),
    (lambda: length_controlled_win_rate([0.5, 0.6], [1, 2, 3], [1, 2]), "len_model has shape"),
    (lambda: length_controlled_win_rate([0.5, 0.6], [1, 2], [1, -2]), "non-negative"),
    (lambda: length_controlled_win_rate([0.5, 0.6], [1, 2], [1, 2], ridge=-1), "ridge"),
    (lambda: bootstrap_ci(win_rate, [0.5, 0.6], [1, 2, 3]), "lengths"),
    (lambda: bootstrap_ci(win_rate, []), "non-empty"),
    (lambda: bootstrap_ci(win_rate), "non-empty"),
    (lambda: bootstrap_ci(win_rate, [0.5], alpha=1.5), "alpha"),
    (lambda: bootstrap_ci(win_rate, [[0.5, 0.6], [0.1, 0.2]]), "1-D"),
    (lambda: evaluate_against(LengthJudge(), ["a", "b"], ["x", "y"], ["z"]), "one of each per prompt"),
    (lambda: evaluate_against(LengthJudge(), [], [], []), "one of each per prompt"),
    (lambda: evaluate_against(LengthJudge(), "a", "x", "y"), "takes lists"),
    (lambda: best_of_n(LengthJudge(), ["a", "b"], [["x", "y"]]), "2 prompts but 1 response lists"),
    (lambda: results_table({}), "at least one row"),
    (lambda: results_table({"SPPO Iter1": {"win_rate": 30.0}}), "lc_win_rate"),
    (lambda: length_drift([[1, 2], []]), "non-empty"),
])
def test_bad_inputs_raise_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_papers_baselines_and_lengths_read_as_its_table():
    from sppo_lite.evaluate import PAPER_ALPACAEVAL_BASELINES, PAPER_AVG_LENGTH
    from sppo_lite.evaluation_run import paper_comparison_text

    assert PAPER_ALPACAEVAL_BASELINES["DPO Iter3"] == {"lc_win_rate": 22.30, "win_rate": 23.39}
    assert PAPER_ALPACAEVAL_BASELINES["IPO Iter3"] == {"lc_win_rate": 20.06, "win_rate": 22.47}
    assert set(PAPER_AVG_LENGTH) == set(PAPER_ALPACAEVAL) | set(PAPER_ALPACAEVAL_BASELINES)
    lines = paper_comparison_text().splitlines()
    assert len(lines) == 1 + 11 and lines[1].split()[0] == "Mistral-7B-Instruct-v0.2"
    sppo3 = next(line for line in lines if line.startswith("SPPO Iter3"))
    assert sppo3.split()[2:] == ["28.53", "31.02", "+2.49", "2163"]  # WR − LC = 31.02 − 28.53
