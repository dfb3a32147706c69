"""sppo_lite.game against hand-derived answers."""
import numpy as np
import pytest
from scipy.optimize import check_grad
from scipy.special import expit

from sppo_lite import game as g


# ---------------------------------------------------------------- validate_preference

@pytest.mark.parametrize("bad, message", [
    (np.full((2, 3), 0.5), "square"),
    (np.array([0.5, 0.5]), "square"),
    (np.zeros((0, 0)), "empty"),
    (np.array([[0.5, np.nan], [np.nan, 0.5]]), "NaN"),
    (np.array([[0.5, 1.5], [-0.5, 0.5]]), r"\[0, 1\]"),
    (np.array([[0.5, 0.7], [0.7, 0.5]]), r"P \+ Pᵀ = 1"),
    (np.array([[0.4, 0.5], [0.5, 0.6]]), "diagonal must be 1/2"),
])
def test_validate_preference_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        g.validate_preference(bad)


def test_validate_preference_accepts_games_and_tolerance():
    for P in (g.rock_paper_scissors(), g.weighted_cycle(), g.bradley_terry([0, 1, 2]),
              g.random_preference(7, seed=3), g.transitive_plus_cyclic()):
        assert np.array_equal(g.validate_preference(P), P)
    P = g.rock_paper_scissors() + 1e-9 * np.eye(3)
    g.validate_preference(P)  # within tolerance
    with pytest.raises(ValueError):
        g.validate_preference(P, atol=1e-12)


def test_policy_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        g.sppo_dynamics(g.rock_paper_scissors(), 1.0, 2, pi0=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="3 responses"):
        g.sppo_dynamics(g.rock_paper_scissors(), 1.0, 2, pi0=[0.5, 0.5])


# ---------------------------------------------------------------- constructors and Nash

@pytest.mark.parametrize("a, b, c", [(0.9, 0.5, 0.3), (1.0, 1.0, 1.0), (0.2, 0.6, 0.4), (0.1, 1.0, 0.5)])
def test_weighted_cycle_nash_is_proportional_to_c_b_a(a, b, c):
    P = g.weighted_cycle(a, b, c)
    assert P[0, 1] == pytest.approx((1 + a) / 2)   # 0 beats 1 by a
    assert P[1, 2] == pytest.approx((1 + c) / 2)   # 1 beats 2 by c
    assert P[2, 0] == pytest.approx((1 + b) / 2)   # 2 beats 0 by b
    expected = np.array([c, b, a]) / (a + b + c)
    pi = g.nash_equilibrium(P)
    np.testing.assert_allclose(pi, expected, atol=1e-7)
    # At the Nash every response wins exactly half the time against it.
    np.testing.assert_allclose(g.win_probs(P, pi), 0.5, atol=1e-7)


def test_weighted_cycle_rejects_bad_margins():
    with pytest.raises(ValueError, match="margin b"):
        g.weighted_cycle(0.5, 0.0, 0.5)


def test_rock_paper_scissors_is_the_classic_game():
    P = g.rock_paper_scissors()
    assert P[1, 0] == 1 and P[2, 1] == 1 and P[0, 2] == 1  # paper>rock, scissors>paper, rock>scissors
    np.testing.assert_allclose(g.nash_equilibrium(P), [1 / 3] * 3, atol=1e-9)
    assert g.exploitability(P, [1, 0, 0]) == pytest.approx(0.5)  # pure rock loses to paper surely


def test_bradley_terry_nash_is_the_top_item():
    scores = [0.3, 2.0, -1.0, 1.2]
    P = g.bradley_terry(scores)
    assert P[1, 0] == pytest.approx(expit(1.7))
    np.testing.assert_allclose(g.nash_equilibrium(P), [0, 1, 0, 0], atol=1e-9)


def test_cyclic_tournament_and_mix():
    P = g.cyclic_tournament(5)
    assert P[0, 1] == 1 and P[0, 2] == 1 and P[0, 3] == 0 and P[0, 4] == 0
    np.testing.assert_allclose(g.nash_equilibrium(P), [0.2] * 5, atol=1e-9)
    with pytest.raises(ValueError, match="odd"):
        g.cyclic_tournament(4)
    # Pure transitive end: Nash is the top score; mixed: the Nash has several responses.
    top = g.nash_equilibrium(g.transitive_plus_cyclic(cycle_weight=0.0))
    np.testing.assert_allclose(top, [0, 0, 0, 0, 1], atol=1e-9)
    mixed = g.nash_equilibrium(g.transitive_plus_cyclic(cycle_weight=0.5))
    assert (mixed > 1e-6).sum() >= 3


@pytest.mark.parametrize("seed", range(5))
def test_lp_nash_has_zero_exploitability(seed):
    P = g.random_preference(8, seed=seed)
    pi = g.nash_equilibrium(P)
    assert pi.min() >= 0 and pi.sum() == pytest.approx(1)
    assert abs(g.exploitability(P, pi)) < 1e-8
    # ... and every other policy is exploitable at least as much.
    rng = np.random.default_rng(seed)
    for q in rng.dirichlet(np.ones(8), size=20):
        assert g.exploitability(P, q) >= -1e-12


def test_exploitability_by_hand():
    P = g.weighted_cycle(0.9, 0.5, 0.3)
    pi = np.array([0.6, 0.3, 0.1])
    # P(y0 ≻ π) = .5*.6 + .95*.3 + .25*.1; P(y1 ≻ π) = .05*.6 + .5*.3 + .65*.1; P(y2 ≻ π) = .75*.6 + .35*.3 + .5*.1
    expected = np.array([0.3 + 0.285 + 0.025, 0.03 + 0.15 + 0.065, 0.45 + 0.105 + 0.05])
    np.testing.assert_allclose(g.win_probs(P, pi), expected)
    assert g.exploitability(P, pi) == pytest.approx(0.61 - 0.5)  # y0 is the best reply


def test_log_partition_is_eta_over_two_at_nash_and_above_elsewhere():
    P = g.weighted_cycle()
    assert g.log_partition(P, g.nash_equilibrium(P), 7.0) == pytest.approx(3.5)
    pi = np.array([0.6, 0.3, 0.1])
    # E_π[P(y ≻ π)] = 1/2 always, so Jensen gives log Z ≥ η/2, with equality only when P(y ≻ π) is constant.
    assert pi @ g.win_probs(P, pi) == pytest.approx(0.5)
    for eta in (0.1, 1.0, 10.0):
        assert g.log_partition(P, pi, eta) > eta / 2


# ---------------------------------------------------------------- dynamics

def test_sppo_dynamics_equals_closed_form_for_a_few_steps():
    P, eta = g.weighted_cycle(), 2.0
    pi = np.array([0.6, 0.3, 0.1])
    traj = g.sppo_dynamics(P, eta, 3, pi0=pi)
    assert traj.shape == (4, 3)
    np.testing.assert_allclose(traj[0], pi)
    for t in range(3):
        w = pi * np.exp(eta * P @ pi)
        pi = w / w.sum()
        np.testing.assert_allclose(traj[t + 1], pi, rtol=1e-12)


def test_sppo_dynamics_first_step_by_hand():
    # Uniform start on a 2-response game P01 = 0.8: win rates (0.65, 0.35), weights ∝ exp(η·p).
    P = np.array([[0.5, 0.8], [0.2, 0.5]])
    step = g.sppo_dynamics(P, 1.0, 1)[1]
    e = np.exp([0.65, 0.35])
    np.testing.assert_allclose(step, e / e.sum())


def test_sppo_dynamics_is_stable_for_huge_eta_steps():
    traj = g.sppo_dynamics(g.bradley_terry([0, 1, 2]), eta=1000.0, steps=500)
    assert np.all(np.isfinite(traj))
    np.testing.assert_allclose(traj[-1], [0, 0, 1], atol=1e-12)  # transitive game: mass on the best


def test_average_iterate_converges_while_last_iterate_orbits_on_rps():
    P = g.rock_paper_scissors()
    traj = g.sppo_dynamics(P, eta=0.5, steps=4000, pi0=[0.6, 0.3, 0.1])
    last = np.array([g.exploitability(P, p) for p in traj])
    avg = np.array([g.exploitability(P, p) for p in g.running_average(traj)])
    assert avg[-1] < 0.02
    assert avg[-1] < 0.1 * avg[0]
    # The last iterate never settles: it stays far from Nash over the whole second half.
    assert last[2000:].min() > 0.1
    assert last[-1] >= last[0] - 1e-9  # discrete MW spirals outwards, it does not come in


def test_running_average_by_hand():
    traj = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(g.running_average(traj), [[1, 0], [0.5, 0.5], [0.5, 0.5]])


def test_sampled_sppo_tracks_the_average_and_validates():
    P = g.weighted_cycle()
    start = [0.6, 0.3, 0.1]
    e0 = g.exploitability(P, start)
    final = []
    for seed in range(3):
        traj = g.sampled_sppo_dynamics(P, eta=1.0, steps=600, K=5, pi0=start, seed=seed)
        assert traj.shape == (601, 3)
        np.testing.assert_allclose(traj.sum(axis=1), 1.0)
        final.append(g.exploitability(P, g.running_average(traj)[-1]))
    assert max(final) < 0.3 * e0
    # Same seed, same run.
    a = g.sampled_sppo_dynamics(P, 1.0, 20, K=3, pi0=start, seed=7, judge_noise=0.1)
    b = g.sampled_sppo_dynamics(P, 1.0, 20, K=3, pi0=start, seed=7, judge_noise=0.1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="K must be at least 2"):
        g.sampled_sppo_dynamics(P, 1.0, 5, K=1)
    with pytest.raises(ValueError, match="select"):
        g.sampled_sppo_dynamics(P, 1.0, 5, select="best")


def test_sampled_sppo_step_by_hand_with_two_samples():
    # K = 2 samples of distinct responses: P̂ = row means of the 2×2 sub-matrix incl. diagonal.
    P = g.weighted_cycle(0.9, 0.5, 0.3)
    eta = 1.0
    traj = g.sampled_sppo_dynamics(P, eta, 1, K=2, seed=0)
    ys = np.random.default_rng(0).choice(3, size=2, p=np.full(3, 1 / 3))
    logp = np.log(np.full(3, 1 / 3))
    sub = P[np.ix_(ys, ys)].mean(axis=1)
    for y in np.unique(ys):
        logp[y] += eta * (sub[ys == y].mean() - 0.5)
    expected = np.exp(logp) / np.exp(logp).sum()
    np.testing.assert_allclose(traj[1], expected)


def test_iterative_dpo_keeps_moving_at_the_nash():
    # Start exactly at the Nash. SPPO's expected step is zero there; best-vs-worst DPO/IPO always
    # has a winner to push up and a loser to push down, so it walks away from the equilibrium.
    P = g.weighted_cycle()
    nash = g.nash_equilibrium(P)
    np.testing.assert_allclose(g.sppo_dynamics(P, 5.0, 50, pi0=nash)[-1], nash, atol=1e-9)
    for loss in ("dpo", "ipo"):
        for seed in range(3):
            traj = g.iterative_dpo_dynamics(P, beta=0.5, steps=50, K=5, pi0=nash, loss=loss, seed=seed)
            assert max(g.exploitability(P, p) for p in traj) > 0.25  # Nash itself: 0
    with pytest.raises(ValueError, match="loss"):
        g.iterative_dpo_dynamics(P, 0.5, 5, loss="kto")


def test_ipo_step_by_hand():
    # With K = 2 samples of two different responses, IPO moves their logits by ±1/(4β).
    P = np.array([[0.5, 0.9], [0.1, 0.5]])
    beta = 0.25
    for seed in range(20):
        ys = np.random.default_rng(seed).choice(2, size=2, p=[0.5, 0.5])
        if len(set(ys)) == 2:
            break
    traj = g.iterative_dpo_dynamics(P, beta=beta, steps=1, K=2, loss="ipo", seed=seed)
    logits = np.array([1 / (4 * beta), -1 / (4 * beta)])
    np.testing.assert_allclose(traj[1], np.exp(logits) / np.exp(logits).sum())


def test_bradley_terry_fit_and_argmax():
    scores = np.array([0.0, 1.0, 2.5])
    np.testing.assert_allclose(g.fit_bradley_terry(g.bradley_terry(scores)), scores - scores.mean(), atol=1e-3)
    # A symmetric cycle has no best reward: the fit is flat and the argmax shares the mass.
    np.testing.assert_allclose(g.bradley_terry_argmax(g.rock_paper_scissors()), [1 / 3] * 3, atol=1e-9)
    # On the weighted cycle the reward model picks the best *average* response, which is not Nash.
    P = g.weighted_cycle(0.9, 0.5, 0.3)
    bt = g.bradley_terry_argmax(P)
    assert bt.max() == 1.0
    assert np.argmax(bt) == np.argmax(P.mean(axis=1))
    assert g.exploitability(P, bt) > 0.2


def test_bradley_terry_gradient_is_exact():
    # The analytic gradient used by fit_bradley_terry, checked against finite differences.
    P = g.random_preference(5, seed=1)
    off = ~np.eye(5, dtype=bool)

    def f(s):
        return -(P * np.log(expit(s[:, None] - s[None, :])))[off].sum()

    def grad(s):
        G = -P * (1 - expit(s[:, None] - s[None, :])) * off
        return G.sum(axis=1) - G.sum(axis=0)

    assert check_grad(f, grad, np.random.default_rng(0).normal(size=5)) < 1e-5


def test_nash_md_converges_in_the_last_iterate():
    P = g.rock_paper_scissors()
    start = [0.6, 0.3, 0.1]
    md = g.nash_md_dynamics(P, eta=0.5, steps=2000, tau=0.05, pi0=start)
    assert g.exploitability(P, md[-1]) < 1e-3  # uniform reference: the regularised Nash is the Nash
    assert np.abs(md[-1] - md[-2]).max() < 1e-6
    mw = g.nash_md_dynamics(P, eta=0.5, steps=2000, tau=0.0, pi0=start)
    np.testing.assert_allclose(mw, g.sppo_dynamics(P, 0.5, 2000, pi0=start))  # tau = 0 is MW
    # Non-uniform Nash: the regularised fixed point sits near it, and closer for smaller tau.
    W = g.weighted_cycle()
    gaps = [g.exploitability(W, g.nash_md_dynamics(W, 0.5, 3000, tau, pi0=start)[-1]) for tau in (0.2, 0.05)]
    assert gaps[1] < gaps[0] < 0.1
    with pytest.raises(ValueError, match="tau"):
        g.nash_md_dynamics(P, 0.5, 3, tau=1.0)


def test_sppo_regression_step_matches_exact_update_when_log_partition_is_eta_over_two():
    P = g.weighted_cycle()
    nash = g.nash_equilibrium(P)
    np.testing.assert_allclose(g.sppo_regression_step(P, nash, 1000.0), nash, atol=1e-9)
    pi = np.array([0.6, 0.3, 0.1])
    # Small η: log Z − η/2 = O(η²), and the regression optimum agrees with π_t·exp(ηPπ_t)/Z to O(η³).
    exact = g.sppo_dynamics(P, 0.01, 1, pi0=pi)[1]
    np.testing.assert_allclose(g.sppo_regression_step(P, pi, 0.01), exact, atol=1e-8)
    # Large η: the two differ visibly (the price of dropping log Z − η/2).
    tv = 0.5 * np.abs(g.sppo_regression_step(P, pi, 100.0) - g.sppo_dynamics(P, 100.0, 1, pi0=pi)[1]).sum()
    assert tv > 0.01
    # Responses outside the support stay at zero.
    out = g.sppo_regression_step(P, [0.5, 0.5, 0.0], 1.0)
    assert out[2] == 0 and out.sum() == pytest.approx(1)


def test_exploitability_curve_equals_pointwise():
    P = g.random_preference(4, seed=2)
    traj = g.sppo_dynamics(P, 1.0, 10)
    np.testing.assert_allclose(g.exploitability_curve(P, traj), [g.exploitability(P, p) for p in traj])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eta", [0.05, 0.5, 2.0])
def test_average_iterate_obeys_the_hedge_regret_bound(seed, eta):
    # Self-play Hedge: P(π_t ≻ π_t) = 1/2, so exploitability(π̄_T) = regret_T / T
    #   ≤ max_y log(1/π_0(y)) / (ηT) + η/8   (rewards in [0, 1]).
    P = g.random_preference(6, seed=seed)
    pi0 = np.random.default_rng(seed).dirichlet(np.ones(6))
    traj = g.sppo_dynamics(P, eta, 300, pi0=pi0)
    T = np.arange(1, 302)
    bound = np.log(1 / pi0.min()) / (eta * T) + eta / 8
    assert np.all(g.exploitability_curve(P, g.running_average(traj)) <= bound + 1e-12)


def test_official_win_rate_estimate_is_the_unbiased_one_at_a_smaller_step():
    # P̂_incl − ½ = (K−1)/K · (P̂_excl − ½) sample by sample, so the official estimator at η is the unbiased
    # one at η·(K−1)/K: the two trajectories coincide when they draw the same samples (same seed).
    P = g.weighted_cycle()
    for K in (2, 5):
        official = g.sampled_sppo_dynamics(P, 0.6, 30, K=K, pi0=[0.6, 0.3, 0.1], seed=3)
        unbiased = g.sampled_sppo_dynamics(P, 0.6 * (K - 1) / K, 30, K=K, pi0=[0.6, 0.3, 0.1], seed=3,
                                              include_self=False)
        np.testing.assert_allclose(official, unbiased, atol=1e-12)


def test_sampled_sppo_with_many_prompts_approaches_the_exact_step():
    # 2000 groups of K = 8 per step: the averaged move is the exact MW step at η·(K−1)/K to about 1e-2.
    P = g.weighted_cycle()
    pi0 = np.array([0.6, 0.3, 0.1])
    sampled = g.sampled_sppo_dynamics(P, 2.0, 1, K=8, pi0=pi0, prompts=2000, seed=0)[1]
    exact = g.sppo_dynamics(P, 2.0 * 7 / 8, 1, pi0=pi0)[1]
    np.testing.assert_allclose(sampled, exact, atol=0.01)
    with pytest.raises(ValueError, match="prompts"):
        g.sampled_sppo_dynamics(P, 1.0, 1, prompts=0)


def test_freeze_step_by_hand():
    traj = np.array([[0.5, 0.3, 0.2], [0.995, 0.003, 0.002], [0.4, 0.3, 0.3],
                     [0.002, 0.993, 0.005], [0.001, 0.998, 0.001]])
    assert g.freeze_step(traj) == 3                 # frozen on y1 from step 3, not the earlier visit to y0
    assert g.freeze_step(traj[:3]) is None          # ends unfrozen
    assert g.freeze_step(traj, threshold=0.995) == 4
    # A one-response policy with K samples never moves again: sampled SPPO from a frozen start stays put.
    frozen = g.sampled_sppo_dynamics(g.weighted_cycle(), 5.0, 50, K=5, pi0=[1.0, 0.0, 0.0], seed=0)
    assert g.freeze_step(frozen) == 0


def test_loglog_slope_recovers_power_laws():
    t = np.arange(1, 501, dtype=float)
    curve = np.r_[1.0, 3.0 / t]
    assert g.loglog_slope(curve, 10, 500) == pytest.approx(-1.0)
    assert g.loglog_slope(np.r_[1.0, t ** -0.5], 1, 499) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        g.loglog_slope(curve, 0, 10)


def test_mean_ci_by_hand():
    values = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, lo, hi = g.mean_ci(values)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    np.testing.assert_allclose(hi - mean, [1.96 * 2.0 / np.sqrt(3), 0.0])  # sd 2 (ddof 1) over 3 seeds
    np.testing.assert_allclose(mean - lo, hi - mean)
    runs = g.seed_runs(lambda seed: np.full((4, 3), seed), [0, 1])
    assert runs.shape == (2, 4, 3) and runs[1, 0, 0] == 1


def test_eta_sweep_shows_small_steps_converge_and_huge_steps_freeze():
    P = g.weighted_cycle()
    r = g.eta_sweep(P, [0.2, 1000.0], 300, pi0=[0.6, 0.3, 0.1], K=5, seeds=range(4))
    assert r["sampled_avg"].shape == (2, 4) and r["frozen"].dtype == bool
    assert not r["frozen"][0].any() and r["avg_ratio"][0].max() < 0.7 and r["avg_falling"][0].all()
    assert r["frozen"][1].all()                        # η = 1000: every seed freezes on one response
    assert r["exact_avg"][0] < 0.05 and r["exact_avg"][1] < 0.05  # the exact average does not freeze
