"""Per-example preference losses on sequence log-probabilities. Pure tensor functions, no reduction.

Arguments are summed token log-probs of whole responses: `pc`/`pr` the policy's on the chosen /
rejected response, `rc`/`rr` the reference's (π_t, the policy that generated the data).
Δ = policy − reference is the log-ratio each loss acts on; β = 1/η.

    sppo        (Δ − (p − ½)/β)²                                    one response, its own target
    sppo_single ½[(Δ_c − (p − ½)/β)² + (Δ_r + (p − ½)/β)²]           p = P(y_c ≻ y_r)
    sppo_hard   ½[(Δ_c − 1/(2β))² + (Δ_r + 1/(2β))²]                 p ≡ 1
    dpo         −log σ(β(Δ_c − Δ_r))
    ipo         (Δ_c − Δ_r − 1/(2β))²

SPPO's losses pin Δ_c and Δ_r to targets *separately*; DPO and IPO only see the gap Δ_c − Δ_r,
so adding the same amount to both leaves them unchanged.
"""
from __future__ import annotations

import torch.nn.functional as F

__all__ = ["sppo_loss", "sppo_single_loss", "sppo_hard_loss", "dpo_loss", "ipo_loss",
           "sppo_pair_loss", "LOSSES"]


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (beta = 1/eta), got {beta}")


def sppo_loss(policy_logps, ref_logps, win_prob, beta: float):
    """SPPO regression (Δ − (p − ½)/β)², p = P̂(y ≻ π_t): the log-ratio of y tracks its win rate."""
    _check_beta(beta)
    return (policy_logps - ref_logps - (win_prob - 0.5) / beta) ** 2


def sppo_pair_loss(pc, pr, rc, rr, p_win, p_lose, beta: float):
    """Official `sppo` on a (chosen, rejected) pair: mean of the two responses' sppo_loss.

    p_win / p_lose are each response's estimated win rate against π_t (`chosen_probs_win` /
    `chosen_probs_lose` in the official data).
    """
    return 0.5 * (sppo_loss(pc, rc, p_win, beta) + sppo_loss(pr, rr, p_lose, beta))


def sppo_single_loss(pc, pr, rc, rr, p_pair, beta: float):
    """Official `sppo_single`: targets ±(P(y_c ≻ y_r) − ½)/β from the pair's own preference."""
    _check_beta(beta)
    t = (p_pair - 0.5) / beta
    return 0.5 * ((pc - rc - t) ** 2 + (pr - rr + t) ** 2)


def sppo_hard_loss(pc, pr, rc, rr, beta: float):
    """Hard-label SPPO: winner's P = 1, loser's 0, so targets ±1/(2β); averaged over the pair.

    This is the official averaging convention. TRL's `loss_type="sppo_hard"` *sums* the two
    squared terms, i.e. it is exactly twice this value (same minimiser, doubled gradient).
    """
    _check_beta(beta)
    t = 0.5 / beta
    return 0.5 * ((pc - rc - t) ** 2 + (pr - rr + t) ** 2)


def dpo_loss(pc, pr, rc, rr, beta: float):
    """DPO: −log σ(β·((pc − rc) − (pr − rr))); depends on the gap only."""
    _check_beta(beta)
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def ipo_loss(pc, pr, rc, rr, beta: float):
    """IPO: ((pc − rc) − (pr − rr) − 1/(2β))²; the gap is regressed to 1/(2β)."""
    _check_beta(beta)
    return ((pc - rc) - (pr - rr) - 0.5 / beta) ** 2


# Names of the losses, as the trainer's `loss_type` accepts them.
LOSSES = ("sppo", "sppo_single", "sppo_hard", "dpo", "ipo")
