"""Losses against independent hand computations (values and gradient signs)."""

from __future__ import annotations

import math

import pytest
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.losses import (
    ddpo_clip_loss,
    diffusion_dpo_loss,
    dpok_loss,
    normalise_rewards,
    trajectory_dpo_loss,
)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_trajectory_dpo_matches_hand_computation():
    # two pairs, one step each; differences inside and outside the clamp range
    logp_w = torch.tensor([0.05, 0.5])
    ref_w = torch.tensor([0.0, 0.0])
    logp_l = torch.tensor([-0.02, 0.0])
    ref_l = torch.tensor([0.0, 0.3])
    beta, eps = 2.0, 0.1
    out = trajectory_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta, eps)
    # pair 0: r_w = e^0.05 (in range), r_l = e^-0.02 (in range)
    t0 = -_logsig(beta * 0.05 - beta * -0.02)
    # pair 1: r_w = e^0.5 -> 1.1, r_l = e^-0.3 -> 0.9
    t1 = -_logsig(beta * math.log(1.1) - beta * math.log(0.9))
    assert out.loss.item() == pytest.approx((t0 + t1) / 2, rel=1e-6)
    assert out.margin.item() == pytest.approx(((0.05 + 0.02) + (0.5 + 0.3)) / 2, rel=1e-6)
    assert out.extra["clip_fraction"].item() == pytest.approx(0.5)


def test_trajectory_dpo_gradient_signs_inside_clamp():
    logp_w = torch.tensor([[0.01, -0.02]], requires_grad=True)
    logp_l = torch.tensor([[0.02, 0.01]], requires_grad=True)
    ref = torch.zeros(1, 2)
    out = trajectory_dpo_loss(logp_w, logp_l, ref, ref, beta=1.0, eps=0.1)
    out.loss.backward()
    assert (logp_w.grad < 0).all()  # raising the winner's log-prob lowers the loss
    assert (logp_l.grad > 0).all()  # raising the loser's raises it
    # hand gradient: d/dx -logsig(b(x_w - x_l)) = -b * sigmoid(-z) / N
    z = torch.tensor([0.01 - 0.02, -0.02 - 0.01])
    assert torch.allclose(logp_w.grad[0], -torch.sigmoid(-z) / 2)


def test_trajectory_dpo_no_gradient_outside_clamp_and_no_nan_on_overflow():
    logp_w = torch.tensor([200.0], requires_grad=True)
    out = trajectory_dpo_loss(logp_w, torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, 0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and logp_w.grad.item() == 0.0


def test_trajectory_dpo_rejects_mismatched_shapes():
    with pytest.raises(ConfigError):
        trajectory_dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 0.1, 0.1)


def test_diffusion_dpo_matches_hand_computation_and_signs():
    mw = torch.tensor([0.5, 1.0], requires_grad=True)
    ml = torch.tensor([0.7, 0.9], requires_grad=True)
    rw, rl = torch.tensor([0.6, 1.0]), torch.tensor([0.6, 1.3])
    beta = 10.0
    out = diffusion_dpo_loss(mw, rw, ml, rl, beta)
    d = [(0.5 - 0.6) - (0.7 - 0.6), (1.0 - 1.0) - (0.9 - 1.3)]
    expected = sum(-_logsig(-beta / 2 * x) for x in d) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.margin.item() == pytest.approx(-(d[0] + d[1]) / 2, abs=1e-6)
    out.loss.backward()
    assert (mw.grad > 0).all()  # a larger winner error raises the loss
    assert (ml.grad < 0).all()


def test_ddpo_clip_matches_ppo_clip():
    logp = torch.tensor([[0.0, 0.2], [0.0, -0.2]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -2.0])
    clip = 0.1
    out = ddpo_clip_loss(logp, old, adv, clip_range=clip)
    terms = []
    for i, a in enumerate([1.0, -2.0]):
        for j in range(2):
            r = math.exp(logp[i, j].item())
            terms.append(max(-a * r, -a * min(max(r, 1 - clip), 1 + clip)))
    assert out.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    out.loss.backward()
    # in-range steps (ratio 1): positive advantage -> negative grad (raise logp), negative -> positive
    assert logp.grad[0, 0] < 0 and logp.grad[1, 0] > 0
    # outside the clip range with the clipped term active: no gradient
    assert logp.grad[0, 1] == 0 and logp.grad[1, 1] == 0


def test_dpok_adds_weighted_kl():
    logp = torch.tensor([[0.3, -0.1]], requires_grad=True)
    old = logp.detach().clone()
    ref = torch.tensor([[0.1, 0.1]])
    adv = torch.tensor([1.0])
    base = ddpo_clip_loss(logp, old, adv).loss.item()
    out = dpok_loss(logp, old, ref, adv, kl_weight=0.5)
    k2 = 0.5 * ((0.2**2 + 0.2**2) / 2)
    assert out.loss.item() == pytest.approx(base + 0.5 * k2, rel=1e-5)
    assert out.extra["kl"].item() == pytest.approx(0.0, abs=1e-7)
    out.loss.backward()
    # the KL term pulls each step's log-prob toward the reference's
    pg_grad = -1.0 / 2
    assert logp.grad[0, 0].item() == pytest.approx(pg_grad + 0.5 * 0.2 / 2, rel=1e-5)
    assert logp.grad[0, 1].item() == pytest.approx(pg_grad - 0.5 * 0.2 / 2, rel=1e-5)


def test_normalise_rewards_per_prompt():
    adv = normalise_rewards([1.0, 3.0, 10.0, 20.0, 5.0], ["a", "a", "b", "b", "c"])
    assert torch.allclose(adv[:4], torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-6)
    # 'c' has one sample: batch statistics
    r = torch.tensor([1.0, 3.0, 10.0, 20.0, 5.0])
    assert adv[4].item() == pytest.approx(((5.0 - r.mean()) / r.std(correction=0)).item(), rel=1e-5)
    with pytest.raises(ConfigError):
        normalise_rewards([1.0], ["a", "b"])
