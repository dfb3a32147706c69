"""sppo_lite.losses: hand-computed values, official / TRL conventions, gradient structure."""
import math

import pytest
import torch

from sppo_lite import losses as L

# One fixed pair: policy and reference summed log-probs, chosen (c) and rejected (r).
PC, PR, RC, RR = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5])
# Δ_c = 1.0, Δ_r = -0.5, gap = 1.5


def test_sppo_loss_by_hand():
    beta = 0.5
    # target (0.8 − 0.5)/0.5 = 0.6; Δ = 1.0 → (0.4)² = 0.16
    assert L.sppo_loss(PC, RC, torch.tensor([0.8]), beta).item() == pytest.approx(0.16)
    # per-example, no reduction
    out = L.sppo_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.5]), 1.0)
    assert out.tolist() == [0.0, 1.0]


def test_sppo_loss_at_paper_beta_has_huge_scale():
    # β = 0.001: a win rate of 0.7 asks for Δ = 200; at Δ = 0 the loss is 4e4 (why β²·loss is logged).
    loss = L.sppo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.7]), 0.001)
    assert loss.item() == pytest.approx(200.0 ** 2, rel=1e-5)


def test_sppo_pair_loss_is_official_mean():
    beta = 0.5
    # Δ_c = 1, target_c = (0.7 − .5)/.5 = 0.4 → 0.36; Δ_r = −0.5, target_r = (0.3 − .5)/.5 = −0.4 → 0.01
    got = L.sppo_pair_loss(PC, PR, RC, RR, torch.tensor([0.7]), torch.tensor([0.3]), beta)
    assert got.item() == pytest.approx((0.36 + 0.01) / 2)


def test_sppo_single_by_hand():
    beta = 0.5
    # t = (0.9 − .5)/.5 = 0.8: (1 − 0.8)² = 0.04; (−0.5 + 0.8)² = 0.09 → mean 0.065
    got = L.sppo_single_loss(PC, PR, RC, RR, torch.tensor([0.9]), beta)
    assert got.item() == pytest.approx(0.065)


def test_sppo_hard_by_hand_and_twice_is_trl():
    beta = 0.5
    # t = 1: (1 − 1)² = 0; (−0.5 + 1)² = 0.25 → official mean 0.125, TRL's sum 0.25
    got = L.sppo_hard_loss(PC, PR, RC, RR, beta)
    assert got.item() == pytest.approx(0.125)
    trl_sum = (PC - RC - 0.5 / beta) ** 2 + (PR - RR + 0.5 / beta) ** 2
    assert (2 * got).item() == pytest.approx(trl_sum.item())
    # sppo_hard is sppo_single with P(y_c ≻ y_r) = 1.
    assert got.item() == pytest.approx(L.sppo_single_loss(PC, PR, RC, RR, torch.tensor([1.0]), beta).item())


def test_dpo_by_hand():
    beta = 0.1
    assert L.dpo_loss(PC, PR, RC, RR, beta).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))))
    # At zero gap DPO is log 2.
    z = torch.zeros(1)
    assert L.dpo_loss(z, z, z, z, 0.1).item() == pytest.approx(math.log(2))


def test_ipo_by_hand():
    beta = 0.5
    # gap 1.5 − 1/(2·0.5) = 0.5 → 0.25
    assert L.ipo_loss(PC, PR, RC, RR, beta).item() == pytest.approx(0.25)


def test_sppo_hard_minimiser_is_plus_minus_half_over_beta():
    beta = 0.01
    a = torch.tensor([0.5 / beta], requires_grad=True)
    b = torch.tensor([-0.5 / beta], requires_grad=True)
    loss = L.sppo_hard_loss(a, b, torch.zeros(1), torch.zeros(1), beta)
    loss.backward()
    assert loss.item() == 0 and a.grad.item() == 0 and b.grad.item() == 0


def test_gap_losses_ignore_a_common_shift_sppo_does_not():
    beta = 0.5
    p = torch.tensor([0.8])
    shift = 3.0
    for fn in (L.dpo_loss, L.ipo_loss):
        assert fn(PC + shift, PR + shift, RC, RR, beta).item() == pytest.approx(fn(PC, PR, RC, RR, beta).item())
    for fn in (lambda *a: L.sppo_single_loss(*a, p, beta), lambda *a: L.sppo_hard_loss(*a, beta)):
        assert fn(PC + shift, PR + shift, RC, RR).item() != pytest.approx(fn(PC, PR, RC, RR).item())


def test_gradients_sppo_separate_dpo_opposite():
    beta = 0.5
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    L.dpo_loss(pc, pr, RC, RR, beta).sum().backward()
    # DPO: equal and opposite pushes, whatever the levels.
    assert pc.grad.item() == pytest.approx(-pr.grad.item())
    assert pc.grad.item() < 0  # descent raises the chosen ...
    pc2, pr2 = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    # SPPO with chosen already above its target and rejected below its target: both gradients
    # pull each back to its own target (chosen *down*, rejected *up*) — DPO would do the reverse.
    L.sppo_pair_loss(pc2, pr2, RC, RR, torch.tensor([0.6]), torch.tensor([0.3]), beta).sum().backward()
    # Δ_c = 1 > target 0.2 → grad = (1 − 0.2)/1 = 0.8 ; Δ_r = −0.5 < target −0.4 → grad = −0.1
    assert pc2.grad.item() == pytest.approx(0.8)
    assert pr2.grad.item() == pytest.approx(-0.1)


@pytest.mark.parametrize("fn", [L.sppo_hard_loss, L.dpo_loss, L.ipo_loss])
def test_beta_must_be_positive(fn):
    with pytest.raises(ValueError, match="beta must be > 0"):
        fn(PC, PR, RC, RR, 0.0)


def test_names():
    assert L.LOSSES == ("sppo", "sppo_single", "sppo_hard", "dpo", "ipo")
