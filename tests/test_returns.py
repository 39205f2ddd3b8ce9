"""GAE(λ), λ-returns and the REINFORCE losses against values worked out by hand (cf. SB3's test_gae.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_rl.returns import explained_variance, first_trial_returns, gae, normalize, reinforce_losses


def col(*xs: float) -> torch.Tensor:
    """A (T, 1) float64 tensor: one task of T steps."""
    return torch.tensor(xs, dtype=torch.float64).unsqueeze(1)


# One task, T = 3, no done: r = (1, 2, 3), V = (0.5, 1.0, 1.5), V(s_3) = 2, gamma = 0.9.
R3, V3, D3, LAST3 = col(1, 2, 3), col(0.5, 1.0, 1.5), col(0, 0, 0), torch.tensor([2.0], dtype=torch.float64)


def test_lambda_one_is_monte_carlo_return_minus_baseline() -> None:
    # G_2 = 3 + 0.9 * 2 = 4.8; G_1 = 2 + 0.9 * 4.8 = 6.32; G_0 = 1 + 0.9 * 6.32 = 6.688.
    adv, ret = gae(R3, V3, D3, LAST3, gamma=0.9, lam=1.0)
    torch.testing.assert_close(ret, col(6.688, 6.32, 4.8))
    torch.testing.assert_close(adv, col(6.688 - 0.5, 6.32 - 1.0, 4.8 - 1.5))


def test_lambda_zero_is_one_step_td_error() -> None:
    # delta_t = r_t + 0.9 V_{t+1} - V_t: 1 + 0.9 - 0.5, 2 + 1.35 - 1.0, 3 + 1.8 - 1.5.
    adv, ret = gae(R3, V3, D3, LAST3, gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv, col(1.4, 2.35, 3.3))
    torch.testing.assert_close(ret, col(1.9, 3.35, 4.8))  # r_t + 0.9 V_{t+1}: the TD(0) target


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_gamma_zero_gives_reward_minus_value(lam: float) -> None:
    rewards, values = col(1, 0, 1, 1), col(0.25, 0.5, -1.0, 2.0)
    adv, ret = gae(rewards, values, col(0, 1, 0, 0), torch.tensor([7.0], dtype=torch.float64), 0.0, lam)
    torch.testing.assert_close(adv, col(0.75, -0.5, 2.0, -1.0))
    torch.testing.assert_close(ret, rewards)


def test_done_in_the_middle_cuts_bootstrap_and_trace() -> None:
    # B = 2 tasks, T = 4, gamma = 0.5, lam = 0.5 (so gamma * lam = 0.25); task 0 ends at t = 1.
    rewards = torch.tensor([[1, 0], [0, 1], [2, 0], [1, 1]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0], [0.2, 0], [0.4, 0], [0.1, 0]], dtype=torch.float64)
    dones = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.float64)
    last = torch.tensor([0.8, 0.0], dtype=torch.float64)
    adv, ret = gae(rewards, values, dones, last, gamma=0.5, lam=0.5)
    # Task 0: delta_3 = 1 + 0.5 * 0.8 - 0.1 = 1.3; delta_2 = 2 + 0.5 * 0.1 - 0.4 = 1.65;
    # delta_1 = 0 - 0.2 (done: no bootstrap); delta_0 = 1 + 0.5 * 0.2 - 0.5 = 0.6.
    # A_3 = 1.3; A_2 = 1.65 + 0.25 * 1.3 = 1.975; A_1 = -0.2 (the trace stops); A_0 = 0.6 + 0.25 * -0.2 = 0.55.
    # Task 1 (V = 0): delta = r; A_3 = 1; A_2 = 0.25; A_1 = 1 + 0.0625; A_0 = 0.25 * 1.0625.
    expected = torch.tensor([[0.55, 0.265625], [-0.2, 1.0625], [1.975, 0.25], [1.3, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_done_on_last_step_ignores_last_value() -> None:
    dones = col(0, 0, 1)
    a1, r1 = gae(R3, V3, dones, torch.tensor([2.0], dtype=torch.float64), 0.9, 0.95)
    a2, _ = gae(R3, V3, dones, torch.tensor([1e6], dtype=torch.float64), 0.9, 0.95)
    torch.testing.assert_close(a1, a2)
    # Without the bootstrap: G_2 = 3, delta_2 = 3 - 1.5.
    assert a1[2, 0].item() == pytest.approx(1.5)
    assert r1[2, 0].item() == pytest.approx(3.0)


def test_bool_dones_and_float32() -> None:
    adv, ret = gae(R3.float(), V3.float(), D3.bool(), LAST3.float(), 0.9, 1.0)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(ret, col(6.688, 6.32, 4.8).float())


@pytest.mark.parametrize(("gamma", "lam"), [(1.5, 0.9), (-0.1, 0.9), (0.9, 1.01), (0.9, -1.0)])
def test_bad_gamma_or_lambda(gamma: float, lam: float) -> None:
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(R3, V3, D3, LAST3, gamma, lam)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        gae(R3, torch.zeros(3, 2, dtype=torch.float64), D3, LAST3, 0.9, 0.9)
    with pytest.raises(ValueError, match="shapes disagree"):
        gae(R3, V3, col(0, 0), LAST3, 0.9, 0.9)
    with pytest.raises(ValueError, match="shapes disagree"):
        gae(R3, V3, D3, torch.zeros(2, dtype=torch.float64), 0.9, 0.9)
    with pytest.raises(ValueError, match="shapes disagree"):
        gae(R3, V3, D3, torch.zeros((), dtype=torch.float64), 0.9, 0.9)


def test_reinforce_losses_by_hand_with_mask() -> None:
    log_probs = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], dtype=torch.float64, requires_grad=True)
    entropy = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[0.0, 2.0], [1.0, 5.0]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[1, 1], [0, 1]])  # step (1, 0) does not count
    out = reinforce_losses(log_probs, entropy, values, advantages, returns, weights)
    # policy: -(1 * -0.5 + -1 * -1.0 + 2 * -0.1) / 3; value: 0.5 * (1 + 0 + 1) / 3; entropy: (0.1 + 0.2 + 0.4) / 3.
    assert out["policy"].item() == pytest.approx(-0.1)
    assert out["value"].item() == pytest.approx(1 / 3)
    assert out["entropy"].item() == pytest.approx(0.7 / 3)
    (out["policy"] + out["value"]).backward()
    # Advantages and returns are targets: no gradient flows into them.
    assert advantages.grad is None and returns.grad is None
    torch.testing.assert_close(log_probs.grad, -advantages.detach() * weights / 3)
    torch.testing.assert_close(values.grad, (values.detach() - returns.detach()) * weights / 3)


def test_reinforce_losses_without_mask_are_means() -> None:
    log_probs = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    returns = torch.tensor([[0.0, 2.0], [1.0, 5.0]], dtype=torch.float64)
    out = reinforce_losses(log_probs, torch.full((2, 2), 0.5, dtype=torch.float64), values, adv, returns)
    assert out["policy"].item() == pytest.approx(-(-0.5 + 1.0 - 1.0 - 0.2) / 4)
    assert out["value"].item() == pytest.approx(0.5 * (1 + 0 + 4 + 1) / 4)
    assert out["entropy"].item() == pytest.approx(0.5)


def test_explained_variance() -> None:
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(16, 4, generator=g, dtype=torch.float64)
    assert explained_variance(returns.clone(), returns).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.0), returns).item() == pytest.approx(0.0, abs=1e-12)
    noisy = returns + 0.5 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    assert 0.0 < explained_variance(noisy, returns).item() < 1.0
    assert explained_variance(-returns, returns).item() < 0.0  # worse than a constant
    # Constant returns have no variance to explain: 0, not NaN.
    assert explained_variance(returns, torch.ones_like(returns)).item() == 0.0


def test_normalize() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, -4.0, 0.5]], dtype=torch.float64)
    y = normalize(x)
    assert y.shape == x.shape
    assert y.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert y.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    # An order-preserving affine map of x.
    torch.testing.assert_close(y, (x - x.mean()) / x.std(unbiased=False), atol=1e-6, rtol=0)
    assert torch.isfinite(normalize(torch.ones(5))).all()  # constant input: zeros, not NaN


def test_popart_first_update_takes_the_batch_moments_then_averages_at_the_rate() -> None:
    from meta_rl.returns import popart_stats, popart_std

    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    mean, second, count = popart_stats(zero, one, zero, torch.tensor(10.0), torch.tensor(104.0), rate=0.1)
    assert (mean.item(), second.item(), count.item()) == (10.0, 104.0, 1.0)
    assert popart_std(mean, second).item() == pytest.approx(2.0)  # sqrt(104 - 100)
    mean, second, _ = popart_stats(mean, second, count, torch.tensor(0.0), torch.tensor(4.0), rate=0.1)
    # beta = max(0.1, 1/2) = 0.5: the mean of the two batches
    assert (mean.item(), second.item()) == (5.0, 54.0)
    assert popart_std(torch.tensor(3.0), torch.tensor(9.0)).item() == pytest.approx(1e-3)  # the floor


def test_popart_update_keeps_every_predicted_value() -> None:
    from gymnasium import spaces

    from meta_rl.config import ModelConfig
    from meta_rl.policy import MetaPolicy

    torch.manual_seed(0)
    policy = MetaPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2),
                        ModelConfig(core="gru", hidden=8, encoder_hidden=[8]), task_length=5)
    embed = policy.encode(torch.randn(5, 4, 3), (5, 4))
    starts = torch.zeros(5, 4, dtype=torch.bool)
    ctx = policy.context(None, torch.zeros(5, 4, dtype=torch.long), torch.rand(5, 4), starts)
    before = policy(embed, ctx, starts, policy.initial_state(4, "cpu"), need_state=False)[1]
    policy.update_return_stats(torch.tensor(30.0), torch.tensor(1000.0), rate=0.01)
    after = policy(embed, ctx, starts, policy.initial_state(4, "cpu"), need_state=False)[1]
    assert policy.return_scale().item() == pytest.approx(10.0)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)


def test_first_trial_returns_stop_at_each_tasks_first_done() -> None:
    # Three envs, T = 5, a reward of 1 per step (CartPole's survival reward): env 0 ends its trial at
    # step 1 and starts another, env 1 at step 4, env 2 never (cut by the rollout): 2, 5 and 5 steps.
    rewards = torch.ones(5, 3)
    dones = torch.zeros(5, 3, dtype=torch.bool)
    dones[1, 0] = dones[3, 0] = dones[4, 1] = True
    torch.testing.assert_close(first_trial_returns(rewards, dones), torch.tensor([2.0, 5.0, 5.0]))
    # Varying rewards, done at step 2: 0.5 + -1 + 2 (the steps after it, 4 and 8, belong to the next task).
    torch.testing.assert_close(first_trial_returns(col(0.5, -1, 2, 4, 8), col(0, 0, 1, 0, 0)),
                               torch.tensor([1.5], dtype=torch.float64))
