"""Preference games on a finite response set: the exact picture behind SPPO.

A preference matrix P has P[i, j] = P(y_i ≻ y_j), P + Pᵀ = 1 and diagonal 1/2.
A policy is a probability vector π over the responses. Everything here is numpy.

    P(y ≻ π)          = (P @ π)[y]
    exploitability(π) = max_y P(y ≻ π) − 1/2          (0 exactly at a Nash policy)
    SPPO (exact)      : π_{t+1} ∝ π_t · exp(η · P @ π_t)    (multiplicative weights / Hedge)
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, minimize
from scipy.special import expit, logsumexp

__all__ = [
    "validate_preference", "validate_policy",
    "rock_paper_scissors", "weighted_cycle", "bradley_terry", "random_preference",
    "cyclic_tournament", "transitive_plus_cyclic",
    "win_probs", "exploitability", "exploitability_curve", "nash_equilibrium", "log_partition",
    "sppo_dynamics", "sppo_regression_step", "sampled_sppo_dynamics", "running_average",
    "iterative_dpo_dynamics", "fit_bradley_terry", "bradley_terry_argmax", "nash_md_dynamics",
    "cyclic_triple_share", "bradley_terry_distance",
    "freeze_step", "loglog_slope", "seed_runs", "mean_ci", "eta_sweep",
]


# ---------------------------------------------------------------- validation

def validate_preference(P, atol: float = 1e-6) -> np.ndarray:
    """Return P as a float array; ValueError unless square, finite, in [0, 1] and P + Pᵀ = 1."""
    P = np.asarray(P, dtype=float)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"preference matrix must be square (n×n), got shape {P.shape}")
    if P.shape[0] < 1:
        raise ValueError("preference matrix is empty: it needs at least one response")
    if not np.all(np.isfinite(P)):
        raise ValueError("preference matrix holds NaN or inf: every entry must be a probability")
    if P.min() < -atol or P.max() > 1 + atol:
        raise ValueError(
            f"preference matrix entries must lie in [0, 1], found min {P.min():.4g}, max {P.max():.4g}")
    err = np.abs(P + P.T - 1.0)
    if err.max() > atol:
        i, j = np.unravel_index(err.argmax(), err.shape)
        if i == j:
            raise ValueError(
                f"preference matrix diagonal must be 1/2 (a response ties with itself), "
                f"found P[{i},{i}] = {P[i, i]:.4g}")
        raise ValueError(
            f"preference matrix must satisfy P + Pᵀ = 1: P[{i},{j}] + P[{j},{i}] = "
            f"{P[i, j] + P[j, i]:.4g}")
    return P


def validate_policy(pi, n: int | None = None, atol: float = 1e-6) -> np.ndarray:
    """Return π as a float array; ValueError unless it is a probability vector (of length n)."""
    pi = np.asarray(pi, dtype=float)
    if pi.ndim != 1:
        raise ValueError(f"policy must be a 1-D probability vector, got shape {pi.shape}")
    if n is not None and pi.shape[0] != n:
        raise ValueError(f"policy has {pi.shape[0]} entries but the game has {n} responses")
    if not np.all(np.isfinite(pi)) or pi.min() < -atol or abs(pi.sum() - 1.0) > atol:
        raise ValueError(f"policy must be non-negative and sum to 1, got {np.round(pi, 6)}")
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


# ---------------------------------------------------------------- games

def weighted_cycle(a: float = 0.9, b: float = 0.5, c: float = 0.3) -> np.ndarray:
    """Weighted rock-paper-scissors: 0 beats 1 by margin a, 1 beats 2 by c, 2 beats 0 by b.

    P[0,1] = (1+a)/2, P[1,2] = (1+c)/2, P[2,0] = (1+b)/2. Each margin belongs to one pair in
    lexicographic order (a: {0,1}, b: {0,2}, c: {1,2}), and the Nash weight of each response is
    the margin of the match it does not play: π* ∝ (c, b, a).
    """
    for name, m in (("a", a), ("b", b), ("c", c)):
        if not 0 < m <= 1:
            raise ValueError(f"cycle margin {name} must lie in (0, 1], got {m}")
    P = np.full((3, 3), 0.5)
    for (w, l), m in (((0, 1), a), ((1, 2), c), ((2, 0), b)):
        P[w, l], P[l, w] = (1 + m) / 2, (1 - m) / 2
    return P


def rock_paper_scissors() -> np.ndarray:
    """Rock (0), paper (1), scissors (2): paper beats rock, scissors beat paper, rock beats scissors.

    Every win is certain (P ∈ {0, 1/2, 1}); the Nash is uniform and no response is safe.
    """
    return np.array([[0.5, 0.0, 1.0],
                     [1.0, 0.5, 0.0],
                     [0.0, 1.0, 0.5]])


def bradley_terry(scores) -> np.ndarray:
    """Transitive game from scalar rewards: P[i, j] = σ(s_i − s_j). Nash: the top response."""
    s = np.asarray(scores, dtype=float)
    return expit(s[:, None] - s[None, :])


def random_preference(n: int, seed: int = 0) -> np.ndarray:
    """Random game: P[i, j] = (1 + A[i, j])/2 with A skew-symmetric, A[i<j] ~ U(−1, 1)."""
    rng = np.random.default_rng(seed)
    A = np.triu(rng.uniform(-1, 1, size=(n, n)), k=1)
    return 0.5 + (A - A.T) / 2


def cyclic_tournament(n: int = 5) -> np.ndarray:
    """Rotational tournament on odd n: i beats the (n−1)/2 responses after it (mod n). Nash: uniform."""
    if n < 3 or n % 2 == 0:
        raise ValueError(f"cyclic_tournament needs an odd n >= 3, got {n}")
    P = np.full((n, n), 0.5)
    for i in range(n):
        for k in range(1, (n - 1) // 2 + 1):
            P[i, (i + k) % n], P[(i + k) % n, i] = 1.0, 0.0
    return P


def transitive_plus_cyclic(scores=(0.0, 0.3, 0.6, 0.9, 1.2), cycle_weight: float = 0.5) -> np.ndarray:
    """Mix of a Bradley–Terry game and a rotational cycle: (1 − w)·BT(scores) + w·cycle.

    w = 0 is purely transitive (Nash = best response), w = 1 purely cyclic (Nash uniform); in
    between the Nash is mixed and differs from what any reward model fitted to P would pick.
    """
    if not 0 <= cycle_weight <= 1:
        raise ValueError(f"cycle_weight must lie in [0, 1], got {cycle_weight}")
    scores = np.asarray(scores, dtype=float)
    return (1 - cycle_weight) * bradley_terry(scores) + cycle_weight * cyclic_tournament(len(scores))


# ---------------------------------------------------------------- solution concepts

def win_probs(P, pi) -> np.ndarray:
    """P(y ≻ π) for every response y: the vector P @ π."""
    P = np.asarray(P, dtype=float)
    return P @ np.asarray(pi, dtype=float)


def exploitability(P, pi) -> float:
    """max_y P(y ≻ π) − 1/2 ≥ 0, half the duality gap of (π, π); zero exactly at a Nash (von Neumann winner)."""
    return float(np.max(win_probs(P, pi)) - 0.5)


def exploitability_curve(P, traj) -> np.ndarray:
    """Exploitability of every row of a trajectory (T, n) at once: max over y of (traj @ Pᵀ) − 1/2."""
    return np.max(np.asarray(traj, dtype=float) @ np.asarray(P, dtype=float).T, axis=1) - 0.5


def nash_equilibrium(P) -> np.ndarray:
    """A von Neumann winner π*: argmin_π max_y (P π)_y, solved as a linear program (value 1/2).

    LP over (π, t): minimise t subject to P π ≤ t·1, Σ π = 1, π ≥ 0.
    """
    P = validate_preference(P)
    n = P.shape[0]
    c = np.r_[np.zeros(n), 1.0]
    A_ub = np.c_[P, -np.ones(n)]
    A_eq = np.r_[np.ones(n), 0.0][None, :]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0],
                  bounds=[(0, None)] * n + [(None, None)], method="highs")
    if not res.success:  # cannot happen for a valid P (the game always has a value); kept loud
        raise RuntimeError(f"linear program failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    return pi / pi.sum()


def log_partition(P, pi, eta: float) -> float:
    """log Z = log Σ_y π(y)·exp(η·P(y ≻ π)); SPPO replaces it by η/2 (exact when P(y ≻ π) ≡ 1/2)."""
    pi = np.asarray(pi, dtype=float)
    with np.errstate(divide="ignore"):
        return float(logsumexp(np.log(pi) + eta * win_probs(P, pi)))


# ---------------------------------------------------------------- SPPO dynamics

def _start(P, pi0):
    n = P.shape[0]
    pi0 = np.full(n, 1.0 / n) if pi0 is None else validate_policy(pi0, n)
    with np.errstate(divide="ignore"):
        return np.log(pi0)


def _trajectory(P, pi0, steps: int, step) -> np.ndarray:
    """Rows π_0..π_steps, where log π_{t+1} = step(log π_t, π_t) (step returns unnormalised log-weights)."""
    logp = _start(P, pi0)
    out = np.empty((steps + 1, P.shape[0]))
    out[0] = np.exp(logp)
    for t in range(steps):
        logp = _normalise(step(logp, out[t]))
        out[t + 1] = np.exp(logp)
    return out


def _normalise(logp):
    """log-softmax of a 1-D vector (numpy only: scipy's logsumexp costs 10× more per call here)."""
    m = logp.max()
    return logp - (m + np.log(np.exp(logp - m).sum()))


def sppo_dynamics(P, eta: float, steps: int, pi0=None) -> np.ndarray:
    """Exact SPPO / multiplicative weights: π_{t+1} ∝ π_t·exp(η·P π_t). Returns (steps+1, n).

    Computed on log-probabilities, so η·steps in the thousands neither overflows nor underflows.
    """
    P = validate_preference(P)
    return _trajectory(P, pi0, steps, lambda logp, pi: logp + eta * (P @ pi))


def sppo_regression_step(P, pi, eta: float) -> np.ndarray:
    """The policy that minimises the SPPO loss in expectation, over all policies on the support of π_t:

        argmin_π E_{y~π_t}[(log π(y) − log π_t(y) − η(P(y ≻ π_t) − ½))²].

    It equals the exact update π_t·exp(η·P π_t)/Z only when log Z = η/2; comparing the two shows
    what the η/2 approximation costs. Solved by L-BFGS over logits (no closed form exists).
    """
    P = validate_preference(P)
    pi = validate_policy(pi, P.shape[0])
    s = pi > 0
    w, log_t = pi[s], np.log(pi[s])
    target = log_t + eta * (win_probs(P, pi)[s] - 0.5)

    def loss(theta):
        logq = theta - logsumexp(theta)
        r = 2 * w * (logq - target)
        return w @ (logq - target) ** 2, r - np.exp(logq) * r.sum()

    theta = minimize(loss, target, jac=True, method="L-BFGS-B",
                     options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12}).x
    out = np.zeros_like(pi)
    out[s] = np.exp(theta - logsumexp(theta))
    return out


def running_average(traj) -> np.ndarray:
    """Average policy: row t is the uniform mixture of rows 0..t (sample a random past iterate)."""
    traj = np.asarray(traj, dtype=float)
    return np.cumsum(traj, axis=0) / np.arange(1, len(traj) + 1)[:, None]


def _noisy_judge(P, rng, noise):
    """The judge's view of P: P + N(0, noise²) above the diagonal, mirrored, clipped to [0, 1]."""
    if noise <= 0:
        return P
    E = np.triu(rng.normal(0.0, noise, size=P.shape), k=1)
    return np.clip(P + E - E.T, 0.0, 1.0)


def _sample_win_rates(P, pi, K, rng, noise, include_self=True):
    """K samples from π and P̂(y_k ≻ π) = (1/K) Σ_j P(y_k ≻ y_j), j = k included (official),
    or (1/(K−1)) Σ_{j≠k} P(y_k ≻ y_j) (unbiased) with include_self=False."""
    ys = rng.choice(len(pi), size=K, p=pi)
    J = _noisy_judge(P, rng, noise)
    M = J[np.ix_(ys, ys)]
    if include_self:
        return ys, M.mean(axis=1)
    return ys, (M.sum(axis=1) - np.diag(M)) / (K - 1)


def sampled_sppo_dynamics(P, eta: float, steps: int, K: int = 5, pi0=None,
                          judge_noise: float = 0.0, select: str = "all", seed: int = 0,
                          include_self: bool = True, prompts: int = 1) -> np.ndarray:
    """SPPO as run on language models, on a tabular policy: only *sampled* responses move.

    Each step draws K responses from π_t, estimates P̂(y_k ≻ π_t) from the K×K judge matrix,
    and solves the SPPO regression on the sample: log π_{t+1}(y_k) = log π_t(y_k) + η(P̂_k − 1/2)
    (duplicates averaged), others unchanged, then renormalises. select="best_worst" trains only
    on argmax/argmin of P̂ as the official pipeline does.

    include_self=True is the official estimator (j = k contributes ½). Since
    P̂_incl − ½ = (K−1)/K · (P̂_excl − ½) sample by sample, it is the unbiased estimator (j ≠ k)
    run at the smaller step η·(K−1)/K. prompts > 1 draws that many independent groups of K
    per step (a language-model iteration over several prompts of one task): P̂ is computed
    within each group and every sampled response's move averages over all groups. Returns (steps+1, n).
    """
    P = validate_preference(P)
    if prompts < 1:
        raise ValueError(f"prompts must be at least 1, got {prompts}")
    if K < 2:
        raise ValueError(f"K must be at least 2 (a response needs opponents), got {K}")
    if select not in ("all", "best_worst"):
        raise ValueError(f"select must be 'all' or 'best_worst', got {select!r}")
    rng = np.random.default_rng(seed)

    def step(logp, pi):
        all_ys, all_phat = [], []
        for _ in range(prompts):
            ys, phat = _sample_win_rates(P, pi, K, rng, judge_noise, include_self)
            if select == "best_worst":
                keep = [int(np.argmax(phat)), int(np.argmin(phat))]
                ys, phat = ys[keep], phat[keep]
            all_ys.append(ys)
            all_phat.append(phat)
        ys, phat = np.concatenate(all_ys), np.concatenate(all_phat)
        counts = np.bincount(ys, minlength=len(logp))
        return logp + eta * np.bincount(ys, weights=phat - 0.5, minlength=len(logp)) / np.maximum(counts, 1)

    return _trajectory(P, pi0, steps, step)


# ---------------------------------------------------------------- baselines

def iterative_dpo_dynamics(P, beta: float, steps: int, K: int = 5, pi0=None, loss: str = "dpo",
                           lr: float = 1.0, inner_steps: int = 1, judge_noise: float = 0.0,
                           seed: int = 0) -> np.ndarray:
    """Iterative DPO / IPO on a tabular softmax policy: each step, best vs worst of K samples.

    The pair (y_w, y_l) = (argmax, argmin) of P̂ among K samples from π_t; reference = π_t.
    DPO: `inner_steps` gradient steps (rate lr) on −log σ(β·gap); IPO: the exact minimiser of
    (gap − 1/(2β))², i.e. logits of y_w and y_l pushed ±1/(4β). gap = Δ_w − Δ_l. Both only see the
    pair's *gap*, never how good either response is against π_t. Returns (steps+1, n).
    """
    P = validate_preference(P)
    if loss not in ("dpo", "ipo"):
        raise ValueError(f"loss must be 'dpo' or 'ipo', got {loss!r}")
    rng = np.random.default_rng(seed)

    def step(logp, pi):
        ys, phat = _sample_win_rates(P, pi, K, rng, judge_noise)
        w, l = ys[int(np.argmax(phat))], ys[int(np.argmin(phat))]
        logp = logp.copy()
        if w == l:
            return logp
        if loss == "ipo":
            push = 1 / (4 * beta)
        else:
            push, gap = 0.0, 0.0
            for _ in range(inner_steps):
                g = lr * beta * expit(-beta * gap)  # lr·(−∂loss/∂logit_w) = lr·∂loss/∂logit_l
                push, gap = push + g, gap + 2 * g
        logp[w] += push
        logp[l] -= push
        return logp

    return _trajectory(P, pi0, steps, step)


def cyclic_triple_share(P) -> float:
    """The share of triples {i, j, k} whose three matches form a cycle (i ≻ j ≻ k ≻ i, either way round), with
    a match decided by P_ij > ½; 0 for every Bradley–Terry matrix, nan with fewer than 3 responses."""
    P = validate_preference(P)
    n = P.shape[0]
    if n < 3:
        return float("nan")
    wins = P > 0.5
    cycles = total = 0
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                total += 1
                cycles += (wins[i, j] and wins[j, k] and wins[k, i]) or (wins[j, i] and wins[k, j] and wins[i, k])
    return cycles / total


def bradley_terry_distance(P) -> float:
    """How far P is from every Bradley–Terry matrix: max_ij |P_ij − σ(s_i − s_j)| at the best BT fit s."""
    P = validate_preference(P)
    return float(np.abs(P - bradley_terry(fit_bradley_terry(P))).max())


def fit_bradley_terry(P) -> np.ndarray:
    """Reward scores s (mean 0) maximising Σ_{i≠j} P_ij·log σ(s_i − s_j): the best BT fit to P."""
    P = validate_preference(P)
    n = P.shape[0]
    off = ~np.eye(n, dtype=bool)

    def nll(s):
        d = s[:, None] - s[None, :]
        sig = expit(d)
        f = -(P * np.log(np.clip(sig, 1e-300, None)))[off].sum() + 1e-6 * s @ s
        G = -P * (1 - sig) * off  # ∂f/∂d_ij, each ordered pair on its own
        return f, G.sum(axis=1) - G.sum(axis=0) + 2e-6 * s

    s = minimize(nll, np.zeros(n), jac=True, method="L-BFGS-B").x
    return s - s.mean()


def bradley_terry_argmax(P, tol: float = 1e-6) -> np.ndarray:
    """The policy an RLHF pipeline converges to as β → 0: all mass on argmax of the fitted BT reward.

    Ties (within tol) share the mass, so a perfectly symmetric cycle gives the uniform policy.
    """
    s = fit_bradley_terry(P)
    top = s >= s.max() - tol
    return top / top.sum()


def nash_md_dynamics(P, eta: float, steps: int, tau: float, pi_ref=None, pi0=None) -> np.ndarray:
    """Nash-MD (Munos et al., 2023): regularised self-play that converges in the *last* iterate.

    π_mix ∝ π_t^{1−τ}·π_ref^τ (geometric mixture toward the reference), then
    π_{t+1} ∝ π_mix·exp(η·P π_mix). Its fixed point is the Nash of the KL-regularised game, which
    tends to the Nash of P as τ → 0. tau = 0 is plain multiplicative weights on P. Returns (steps+1, n).
    """
    P = validate_preference(P)
    if not 0 <= tau < 1:
        raise ValueError(f"tau must lie in [0, 1), got {tau}")
    n = P.shape[0]
    log_ref = np.log(np.full(n, 1.0 / n) if pi_ref is None else validate_policy(pi_ref, n))

    def step(logp, pi):
        log_mix = _normalise((1 - tau) * logp + tau * log_ref)
        return log_mix + eta * (P @ np.exp(log_mix))

    return _trajectory(P, pi0, steps, step)


# ---------------------------------------------------------------- reading many runs

def freeze_step(traj, threshold: float = 0.99) -> int | None:
    """The step from which the policy stays frozen on one response (max π > threshold on that same
    response until the end), or None when the last row is not frozen.

    A frozen policy loses exploration: with sampled win rates all K samples are the same response,
    every P̂ is ½ and the update vanishes, so it stays there.
    """
    traj = np.asarray(traj, dtype=float)
    top = traj.argmax(axis=1)
    frozen = (traj.max(axis=1) > threshold) & (top == top[-1])
    if not frozen[-1]:
        return None
    t = len(traj) - 1
    while t > 0 and frozen[t - 1]:
        t -= 1
    return int(t)


def loglog_slope(curve, t0: int, t1: int) -> float:
    """Least-squares slope of log curve[t] against log t for t0 ≤ t ≤ t1 (−1 for a 1/t curve)."""
    if not 1 <= t0 < t1 < len(curve):
        raise ValueError(f"need 1 <= t0 < t1 < {len(curve)}, got t0={t0}, t1={t1}")
    t = np.arange(t0, t1 + 1)
    v = np.asarray(curve, dtype=float)[t0:t1 + 1]
    if np.any(v <= 0):
        raise ValueError("loglog_slope needs a positive curve")
    return float(np.polyfit(np.log(t), np.log(v), 1)[0])


def seed_runs(dynamics, seeds) -> np.ndarray:
    """Stack dynamics(seed=s) for every seed s: an array (len(seeds), steps+1, n)."""
    return np.stack([np.asarray(dynamics(seed=int(s)), dtype=float) for s in seeds])


def mean_ci(values, axis: int = 0, z: float = 1.96):
    """(mean, low, high): the mean over `axis` with a normal 95 % interval, mean ± z·sd/√n."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    half = z * values.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, mean - half, mean + half


def eta_sweep(P, etas, steps: int, pi0=None, K: int = 5, seeds=range(8), prompts: int = 1,
              include_self: bool = True, threshold: float = 0.99) -> dict:
    """Exact and sampled SPPO at every η: exploitability of the final average and last iterate, and how
    many sampled runs end frozen on one response (freeze_step). Arrays are indexed like `etas`:

    exact_avg, exact_last : (E,)          the exact dynamics
    sampled_avg, sampled_last : (E, S)    every seed of the sampled dynamics
    frozen : (E, S) bool                  the sampled run ends frozen (max π > threshold)
    avg_ratio : (E, S)                    sampled average's exploitability at the end / at the start
    avg_falling : (E, S) bool             the sampled average's exploitability falls over the last step
    """
    P = validate_preference(P)
    etas = np.asarray(etas, dtype=float)
    seeds = list(seeds)
    out = {"etas": etas, "exact_avg": np.empty(len(etas)), "exact_last": np.empty(len(etas))}
    for key in ("sampled_avg", "sampled_last", "avg_ratio"):
        out[key] = np.empty((len(etas), len(seeds)))
    out["frozen"] = np.zeros((len(etas), len(seeds)), dtype=bool)
    out["avg_falling"] = np.zeros((len(etas), len(seeds)), dtype=bool)
    for i, eta in enumerate(etas):
        exact = sppo_dynamics(P, eta, steps, pi0=pi0)
        out["exact_avg"][i] = exploitability(P, running_average(exact)[-1])
        out["exact_last"][i] = exploitability(P, exact[-1])
        for j, s in enumerate(seeds):
            tr = sampled_sppo_dynamics(P, eta, steps, K=K, pi0=pi0, seed=s, prompts=prompts,
                                       include_self=include_self)
            avg = exploitability_curve(P, running_average(tr))
            out["sampled_avg"][i, j], out["sampled_last"][i, j] = avg[-1], exploitability(P, tr[-1])
            out["avg_ratio"][i, j] = avg[-1] / avg[0]
            out["avg_falling"][i, j] = avg[-1] < avg[-2]
            out["frozen"][i, j] = freeze_step(tr, threshold) is not None
    return out
