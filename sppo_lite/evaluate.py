"""Did this SPPO iteration help? Win rates against a baseline, in the AlpacaEval 2.0 spirit.

Per prompt x a judge gives p(x) = P(y_model ≻ y_baseline | x) ∈ [0, 1] (a tie is ½). Win rates
are reported in percent (0–100), as AlpacaEval and the paper do; probabilities going in are fractions.

    win_rate                    WR = 100 · mean_x p(x)
    length_controlled_win_rate  logit p(x) ≈ θ + φ·tanh(Δ(x)/sd(Δ)), Δ = len_model − len_baseline;
                                LC = 100 · σ(θ): the win rate at equal lengths
    bootstrap_ci                percentile bootstrap over prompts, rows resampled jointly (scipy.stats)
    evaluate_against            judge model vs baseline on every prompt → WR, LC, CIs, lengths
    best_of_n                   each prompt's candidate with the highest row mean of the judge matrix
    results_table               ours beside the paper's AlpacaEval 2.0 numbers
    length_drift                mean / median response length per iteration

The LC model is AlpacaEval 2.0's GLM (Dubois et al., 2024, arXiv 2404.04475) without its
instruction-difficulty term and its regularisation toward gamed baselines, which need AlpacaEval's
own annotations: an intercept for the model's quality and a slope on the tanh of the standardised
length difference, fitted on the soft labels p by cross-entropy. The logistic regression is
hand-written (scipy.optimize, exact gradient and Hessian): no dependency of sppo-lite provides one.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import bootstrap

__all__ = [
    "PAPER_ALPACAEVAL", "PAPER_ALPACAEVAL_BASELINES", "PAPER_AVG_LENGTH", "LengthControlledFit",
    "win_rate", "length_controlled_win_rate", "bootstrap_ci", "evaluate_against", "best_of_n",
    "results_table", "length_drift",
]

# The paper's AlpacaEval 2.0 results (GPT-4-Turbo judge and baseline), in percent.
PAPER_ALPACAEVAL = {
    "Mistral-7B-Instruct-v0.2": {"lc_win_rate": 17.11, "win_rate": 14.72},
    "SPPO Iter1": {"lc_win_rate": 24.79, "win_rate": 23.51},
    "SPPO Iter2": {"lc_win_rate": 26.89, "win_rate": 27.62},
    "SPPO Iter3": {"lc_win_rate": 28.53, "win_rate": 31.02},
    "SPPO Iter3 (best-of-16)": {"lc_win_rate": 32.13, "win_rate": 34.94},
}
# The same table's baselines (Table 1 of arXiv 2405.00675v5): Snorkel's iterative DPO with PairRM, and the paper's
# own iterative DPO and IPO from the same base, prompts and PairRM, best vs worst of K, reference refreshed.
PAPER_ALPACAEVAL_BASELINES = {
    "Snorkel (Mistral-PairRM-DPO)": {"lc_win_rate": 26.39, "win_rate": 30.22},
    "DPO Iter1": {"lc_win_rate": 23.81, "win_rate": 20.44},
    "DPO Iter2": {"lc_win_rate": 24.23, "win_rate": 24.46},
    "DPO Iter3": {"lc_win_rate": 22.30, "win_rate": 23.39},
    "IPO Iter1": {"lc_win_rate": 23.78, "win_rate": 20.77},
    "IPO Iter2": {"lc_win_rate": 21.08, "win_rate": 23.38},
    "IPO Iter3": {"lc_win_rate": 20.06, "win_rate": 22.47},
}
# Average answer length in characters of every row above (the same table).
PAPER_AVG_LENGTH = {
    "Mistral-7B-Instruct-v0.2": 1676, "SPPO Iter1": 1855, "SPPO Iter2": 2019, "SPPO Iter3": 2163,
    "SPPO Iter3 (best-of-16)": 2174, "Snorkel (Mistral-PairRM-DPO)": 2736, "DPO Iter1": 1723, "DPO Iter2": 2028,
    "DPO Iter3": 2189, "IPO Iter1": 1693, "IPO Iter2": 2660, "IPO Iter3": 2760,
}


class LengthControlledFit(NamedTuple):
    """LC win rate (percent) and the fitted logit p ≈ intercept + length_coef·tanh(Δ/length_scale)."""

    lc_win_rate: float
    intercept: float
    length_coef: float
    length_scale: float


def _as_probabilities(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"win probabilities must be a non-empty 1-D array, one per prompt; got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("win probabilities must be finite and in [0, 1]: pass P(model ≻ baseline) per prompt")
    return p


def _as_lengths(lengths, n: int, name: str) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=float)
    if lengths.shape != (n,):
        raise ValueError(f"{name} has shape {lengths.shape} but there are {n} win probabilities: "
                         f"pass one length per prompt")
    if not np.all(np.isfinite(lengths)) or lengths.min() < 0:
        raise ValueError(f"{name} must be finite and non-negative")
    return lengths


def win_rate(p) -> float:
    """WR = 100 · (1/n) Σ_x p(x), p(x) = P(model ≻ baseline | x), ties counted as ½."""
    return 100.0 * float(_as_probabilities(p).mean())


def length_controlled_win_rate(p, len_model, len_baseline, ridge: float = 1e-4) -> LengthControlledFit:
    """LC = 100·σ(θ) where (θ, φ) minimise mean CE(p, σ(θ + φ·tanh(Δ/sd(Δ)))) + (ridge/2)·φ².

    Δ = len_model − len_baseline per prompt and sd its standard deviation over prompts (AlpacaEval's
    feature). At Δ = 0 the length term vanishes, so σ(θ) is every prompt's predicted preference at
    equal lengths and also their average. The small ridge on φ only keeps the fit finite when the
    judge is a hard step in length. When all Δ are equal, length and quality cannot be told apart:
    the feature is 0 and LC equals the raw win rate.
    """
    p = _as_probabilities(p)
    delta = (_as_lengths(len_model, p.size, "len_model")
             - _as_lengths(len_baseline, p.size, "len_baseline"))
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    scale = float(delta.std())
    x = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    X = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([0.0, ridge])

    def loss_and_grad(w):
        z = X @ w
        loss = np.mean(np.logaddexp(0.0, z) - p * z) + 0.5 * w @ penalty @ w
        return loss, X.T @ (expit(z) - p) / p.size + penalty @ w

    def hessian(w):
        s = expit(X @ w)
        return (X.T * (s * (1 - s))) @ X / p.size + penalty

    theta, phi = minimize(loss_and_grad, np.zeros(2), jac=True, hess=hessian, method="trust-exact",
                          options={"gtol": 1e-9}).x
    return LengthControlledFit(100.0 * float(expit(theta)), float(theta), float(phi), scale)


def bootstrap_ci(stat_fn: Callable[..., float], *arrays, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(stat(data), q_{α/2}, q_{1−α/2}) of stat over n_boot resamples of the prompts with replacement.

    `arrays` are 1-D, one value per prompt. scipy.stats.bootstrap(paired=True, method="percentile"):
    each resample draws prompt indices once and takes those rows of every array, so they stay aligned.
    """
    arrays = [np.asarray(a) for a in arrays]
    lengths = [len(a) if a.ndim else 0 for a in arrays]
    if not arrays or min(lengths) == 0 or len(set(lengths)) > 1:
        raise ValueError(f"bootstrap_ci got arrays of lengths {lengths}: give one or more non-empty arrays "
                         f"with one row per prompt each")
    if any(a.ndim != 1 for a in arrays):
        raise ValueError(f"bootstrap_ci got arrays of shapes {[a.shape for a in arrays]}: give 1-D arrays, "
                         f"one value per prompt")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    estimate = float(stat_fn(*arrays))
    if lengths[0] == 1:  # scipy asks for two rows; a single row only resamples to itself
        return estimate, estimate, estimate
    result = bootstrap(arrays, stat_fn, n_resamples=n_boot, paired=True, vectorized=False, method="percentile",
                       confidence_level=1 - alpha, rng=np.random.default_rng(seed))
    return estimate, float(result.confidence_interval.low), float(result.confidence_interval.high)


def _lc_rate(p, len_model, len_baseline) -> float:
    return length_controlled_win_rate(p, len_model, len_baseline).lc_win_rate


def evaluate_against(judge, prompts: Sequence[str], model_responses: Sequence[str],
                     baseline_responses: Sequence[str], n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> dict:
    """Judge [model, baseline] per prompt, p = M[0, 1], and report WR and LC with bootstrap CIs.

    Lengths are characters (as AlpacaEval) for the LC fit; whitespace words are reported beside
    them. M + Mᵀ = 1 is enforced by every Judge, so an order-aware judge (PairRM compares both
    orders) is already symmetrised in M[0, 1].
    """
    if any(isinstance(texts, str) for texts in (prompts, model_responses, baseline_responses)):
        raise ValueError("evaluate_against takes lists: prompts, model_responses and baseline_responses")
    prompts, model_responses = list(prompts), list(model_responses)
    baseline_responses = list(baseline_responses)
    if not prompts or not len(prompts) == len(model_responses) == len(baseline_responses):
        raise ValueError(f"got {len(prompts)} prompts, {len(model_responses)} model responses and "
                         f"{len(baseline_responses)} baseline responses: give one of each per prompt")
    matrices = judge.win_matrices(prompts, [[m, b] for m, b in zip(model_responses, baseline_responses)])
    p = np.array([M[0, 1] for M in matrices])
    chars_model = np.array([len(r) for r in model_responses], dtype=float)
    chars_baseline = np.array([len(r) for r in baseline_responses], dtype=float)
    fit = length_controlled_win_rate(p, chars_model, chars_baseline)
    boot = dict(n_boot=n_boot, alpha=alpha, seed=seed)
    wr, *wr_ci = bootstrap_ci(win_rate, p, **boot)
    _, *lc_ci = bootstrap_ci(_lc_rate, p, chars_model, chars_baseline, **boot)
    return {
        "n_prompts": len(prompts),
        "win_rate": wr,
        "win_rate_ci": tuple(wr_ci),
        "lc_win_rate": fit.lc_win_rate,
        "lc_win_rate_ci": tuple(lc_ci),
        "length_coef": fit.length_coef,
        "mean_chars_model": float(chars_model.mean()),
        "mean_chars_baseline": float(chars_baseline.mean()),
        "mean_char_diff": float((chars_model - chars_baseline).mean()),
        "mean_words_model": float(np.mean([len(r.split()) for r in model_responses])),
        "mean_words_baseline": float(np.mean([len(r.split()) for r in baseline_responses])),
        "win_probs": p,
    }


def best_of_n(judge, prompts: Sequence[str], candidates_per_prompt: Sequence[Sequence[str]]) -> list[str]:
    """Per prompt, y* = argmax_i (1/K) Σ_j M[i, j]: the candidate that beats the others most (first wins ties)."""
    matrices = judge.win_matrices(prompts, candidates_per_prompt)
    return [list(cands)[int(np.argmax(M.mean(axis=1)))]
            for M, cands in zip(matrices, candidates_per_prompt)]


def _cell(value, ci=None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if ci is None else f"{value:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def results_table(rows: Mapping[str, Mapping]) -> tuple[list[dict], str]:
    """The paper's table (model × LC WR / WR), ours beside the paper's where the row label matches.

    rows maps a label to a result with "lc_win_rate" and "win_rate" (evaluate_against's dict will do;
    its CIs are shown when present). Labels that are keys of PAPER_ALPACAEVAL get the paper's numbers.
    Ours are measured against our own baseline and judge, the paper's against GPT-4-Turbo: compare
    the trend across iterations, not the levels. Returns (records, formatted text).
    """
    if not rows:
        raise ValueError("results_table needs at least one row: map a label to a result with "
                         "lc_win_rate and win_rate")
    records = []
    for label, result in rows.items():
        missing = {"lc_win_rate", "win_rate"} - set(result)
        if missing:
            raise ValueError(f"row {label!r} lacks {sorted(missing)}: pass evaluate_against's result")
        paper = PAPER_ALPACAEVAL.get(label, {})
        records.append({
            "model": label,
            "lc_win_rate": float(result["lc_win_rate"]), "lc_win_rate_ci": result.get("lc_win_rate_ci"),
            "win_rate": float(result["win_rate"]), "win_rate_ci": result.get("win_rate_ci"),
            "paper_lc_win_rate": paper.get("lc_win_rate"), "paper_win_rate": paper.get("win_rate"),
        })
    header = ["model", "LC WR (ours)", "WR (ours)", "LC WR (paper)", "WR (paper)"]
    lines = [[r["model"], _cell(r["lc_win_rate"], r["lc_win_rate_ci"]),
              _cell(r["win_rate"], r["win_rate_ci"]), _cell(r["paper_lc_win_rate"]), _cell(r["paper_win_rate"])]
             for r in records]
    widths = [max(len(row[k]) for row in [header, *lines]) for k in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                               for k, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in [header, *lines])
    return records, text


def length_drift(lengths_per_iteration: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """mean_t = (1/n_t) Σ len and median_t of the response lengths at each iteration t."""
    arrays = [np.asarray(lengths, dtype=float) for lengths in lengths_per_iteration]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("length_drift needs one non-empty list of response lengths per iteration")
    return {"mean": np.array([a.mean() for a in arrays]), "median": np.array([np.median(a) for a in arrays])}
