"""Advantages, TD(λ) returns and the REINFORCE / critic losses, as pure tensor functions.

Time-major tensors throughout: shape (T, B) for T steps of B tasks.
"""

from __future__ import annotations

import torch

__all__ = [
    "explained_variance", "first_trial_returns", "gae", "normalize", "popart_preserve", "popart_stats", "popart_std",
    "ppo_policy_loss", "reinforce_losses", "running_average",
]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) and TD(λ) returns.

    ``delta_t = r_t + γ V(s_{t+1}) (1 - done_t) - V(s_t)``, ``A_t = delta_t + γ λ (1 - done_t) A_{t+1}``.
    With λ = 1, ``A_t`` is the Monte-Carlo return minus the baseline ``V(s_t)``; with λ = 0 it is
    the one-step TD error. The critic's regression target is the λ-return ``A_t + V(s_t)``.

    Args:
        rewards: (T, B) reward after the action at step t.
        values: (T, B) critic value V(s_t).
        dones: (T, B) 1 where the task ended at step t (no bootstrap across it).
        last_value: (B,) V(s_T), the value of the state after the last step.
        gamma: discount in [0, 1].
        lam: λ in [0, 1].

    Returns:
        advantages (T, B) and λ-returns (T, B).
    """
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}.")
    if rewards.shape != values.shape or rewards.shape != dones.shape or last_value.shape != rewards.shape[1:]:
        raise ValueError(
            f"shapes disagree: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, dones "
            f"{tuple(dones.shape)}, last_value {tuple(last_value.shape)}; expected (T, B) x3 and (B,)."
        )
    not_done = 1.0 - dones.to(values.dtype)  # (T, B)
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)])  # (T, B): V(s_{t+1})
    deltas = rewards + gamma * next_values * not_done - values  # (T, B)
    advantages = torch.empty_like(values)
    running = torch.zeros_like(last_value)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def first_trial_returns(rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Each task's return over its first trial in the rollout: the rewards up to and including its first done.

    A rollout starts a new task in every env, and an env whose trial ends early (a pole fallen twice)
    starts the next task within the same rollout; summing all T rewards would add that next task's
    steps. Where an env has no done, its whole rollout is counted (a trial cut by the rollout).

    Args:
        rewards: (T, B) rewards. dones: (T, B) bool or 0/1, the last step of a task.

    Returns:
        (B,) the first trial's return of each env.
    """
    ended = dones.to(torch.int64)  # (T, B)
    before_first_end = ended.cumsum(0) - ended == 0  # (T, B): no done before step t (step t itself may be one)
    return (rewards * before_first_end).sum(0)


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over all entries."""
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """``1 - Var[returns - values] / Var[returns]``: 1 is a perfect critic, 0 a constant one."""
    var = returns.var(unbiased=False)
    return torch.where(var > 0, 1.0 - (returns - values).var(unbiased=False) / var, torch.zeros_like(var))


def reinforce_losses(
    log_probs: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """REINFORCE with a learned baseline: policy, critic and entropy terms.

    ``policy = -mean(A_t log π(a_t|h_t))`` with the advantages held constant,
    ``value = 0.5 mean((V(s_t) - G^λ_t)^2)``, ``entropy = mean(H[π(.|h_t)])``.

    Args:
        log_probs, entropy, values: (T, B), carrying gradients.
        advantages, returns: (T, B) targets (detached here).
        weights: optional (T, B) mask, 1 where a step counts.
    """
    adv = advantages.detach()
    ret = returns.detach()
    w = torch.ones_like(adv) if weights is None else weights.to(adv.dtype)
    total = w.sum().clamp_min(1.0)
    return {
        "policy": -(adv * log_probs * w).sum() / total,
        "value": 0.5 * (((values - ret) ** 2) * w).sum() / total,
        "entropy": (entropy * w).sum() / total,
    }


def ppo_policy_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float,
) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017), to minimise.

    ``-mean(min(ρ_t A_t, clip(ρ_t, 1 - ε, 1 + ε) A_t))`` with ``ρ_t = π(a_t|h_t) / π_old(a_t|h_t)``. At
    ρ = 1 its gradient is REINFORCE's, ``-mean(A_t ∇ log π(a_t|h_t))``.

    Args:
        log_probs: (T, B) log π(a_t|h_t), carrying gradients. old_log_probs: (T, B) the behaviour policy's.
        advantages: (T, B), held constant. clip_range: ε.
    """
    ratio = torch.exp(log_probs - old_log_probs.detach())  # (T, B)
    adv = advantages.detach()
    return -torch.min(ratio * adv, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * adv).mean()


def running_average(average: torch.Tensor, count: torch.Tensor, batch: torch.Tensor, rate: float) -> torch.Tensor:
    """``a <- (1 - β) a + β x`` with ``β = max(rate, 1 / (count + 1))``: the first update takes the batch's value
    as it is, later ones average over about ``1 / rate`` updates.

    Args:
        average: the running value (any shape); count: scalar updates so far.
        batch: this update's value (``average``'s shape). rate: the averaging rate once ``1 / (count + 1)`` is below it.
    """
    beta = torch.clamp(1.0 / (count + 1.0), min=rate)
    return (1 - beta) * average + beta * batch


def popart_stats(
    mean: torch.Tensor, second: torch.Tensor, count: torch.Tensor, batch_mean: torch.Tensor,
    batch_second: torch.Tensor, rate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running first and second moments of the critic's targets (van Hasselt et al. 2016, PopArt), each a
    :func:`running_average`.

    Args:
        mean, second: scalar running E[G] and E[G²]; count: scalar updates so far.
        batch_mean, batch_second: this update's E[G] and E[G²] over its (T, B) targets.
        rate: the averaging rate once ``1 / (count + 1)`` falls below it.

    Returns:
        The new mean, second moment and count.
    """
    return (running_average(mean, count, batch_mean, rate), running_average(second, count, batch_second, rate),
            count + 1)


def popart_std(mean: torch.Tensor, second: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """σ = sqrt(E[G²] - E[G]²), at least ``floor`` (a task whose returns never vary)."""
    return (second - mean**2).clamp_min(floor**2).sqrt()


def popart_preserve(
    weight: torch.Tensor, bias: torch.Tensor, old: tuple[torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value-head weights after the statistics move from ``old`` to ``new`` (each (μ, σ)) such that
    ``μ + σ (w·f + b)`` is unchanged for every feature ``f``: ``w' = w σ/σ'``, ``b' = (σ b + μ - μ')/σ'``."""
    (mu, sigma), (mu2, sigma2) = old, new
    return weight * sigma / sigma2, (sigma * bias + mu - mu2) / sigma2
