"""Classic policies for the Bernoulli bandits, played in batch on the env's own tasks and seeds.

Duan et al. 2016 (RL², Table 1) compare a meta-learner with these on
:class:`~meta_rl.envs.bandits.BernoulliBanditVectorEnv`: :func:`bandit_random`,
:func:`bandit_greedy`, :func:`bandit_epsilon_greedy`, :func:`bandit_thompson`,
:func:`bandit_ucb1`, :func:`bandit_gittins` (the Gittins index, :func:`gittins_table`) and
:func:`bandit_oracle` (knows the arms' probabilities). Each returns the total reward of every
trial, float64 (trials,) on the CPU (see :mod:`meta_rl.envs.baseline_harness` for the rounds and
seeding). :data:`BANDIT_BASELINES` names them for ``env.reference_returns``; the figures they give
are in :mod:`meta_rl.envs.task_baselines`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from meta_rl.envs.baseline_harness import Act, Learn, TrialEnv, check_run, play_trials
from meta_rl.envs.seeded_sampling import argmax_random, sample_beta

__all__ = [
    "BANDIT_BASELINES",
    "BanditEnv",
    "bandit_epsilon_greedy",
    "bandit_gittins",
    "bandit_greedy",
    "bandit_oracle",
    "bandit_random",
    "bandit_thompson",
    "bandit_ucb1",
    "default_gittins_gamma",
    "gittins_table",
]

_EXPECTED = "BernoulliBanditVectorEnv"


@runtime_checkable
class BanditEnv(TrialEnv, Protocol):
    """What the bandit policies read of an env (:class:`~meta_rl.envs.bandits.BernoulliBanditVectorEnv` has it)."""

    arms: int
    pulls: int

    def probabilities(self) -> torch.Tensor:
        """(B, arms) the current success probabilities (the oracle reads them)."""
        ...


class _Counts:
    """Per-arm successes and failures of B bandits."""

    def __init__(self, env: BanditEnv) -> None:
        self.wins = torch.zeros(env.num_envs, env.arms, device=env.device)  # (B, k)
        self.losses = torch.zeros_like(self.wins)
        self.rows = torch.arange(env.num_envs, device=env.device)

    def learn(self, t: int, obs: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, nxt: torch.Tensor) -> None:
        self.wins[self.rows, actions] += reward
        self.losses[self.rows, actions] += 1.0 - reward

    def posterior_mean(self) -> torch.Tensor:
        """(B, k) the Beta(1, 1) posterior means."""
        return (self.wins + 1.0) / (self.wins + self.losses + 2.0)


def _bandit(env: BanditEnv, seed: int, trials: int,
            policy: Callable[[int, _Counts, torch.Generator], torch.Tensor]) -> torch.Tensor:
    gen = check_run(env, BanditEnv, _EXPECTED, seed, trials)

    def begin() -> tuple[Act, Learn]:
        counts = _Counts(env)
        return (lambda t, obs: policy(t, counts, gen)), counts.learn

    return play_trials(env, seed, trials, begin)


def bandit_random(env: BanditEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random arms (expected total ``pulls / 2``)."""

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(env.arms, (env.num_envs,), generator=gen, device=env.device)

    return _bandit(env, seed, trials, policy)


def bandit_greedy(env: BanditEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """The arm of highest Beta(1, 1) posterior mean ``(wins + 1) / (pulls + 2)``, ties at random.

    This is Duan et al.'s "greedy" (Thompson sampling with the posterior mean for the sample);
    untried arms score 1/2, so a failure moves on to an untried arm and a success stays.
    """

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return argmax_random(c.posterior_mean(), gen)

    return _bandit(env, seed, trials, policy)


def bandit_epsilon_greedy(
    env: BanditEnv, seed: int = 0, trials: int = 1000, eps: float = 0.1
) -> torch.Tensor:
    """With probability ``eps`` a random arm, else :func:`bandit_greedy`'s posterior-mean arm."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps!r}.")

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        greedy = argmax_random(c.posterior_mean(), gen)
        explore = torch.rand(env.num_envs, generator=gen, device=env.device) < eps
        uniform = torch.randint(env.arms, (env.num_envs,), generator=gen, device=env.device)
        return torch.where(explore, uniform, greedy)

    return _bandit(env, seed, trials, policy)


def bandit_thompson(env: BanditEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Thompson sampling: the arm of highest draw from its Beta(1 + wins, 1 + losses) posterior."""

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return sample_beta(c.wins + 1.0, c.losses + 1.0, gen).argmax(-1)

    return _bandit(env, seed, trials, policy)


def bandit_ucb1(
    env: BanditEnv, seed: int = 0, trials: int = 1000, c: float = 2.0, prior: bool = False
) -> torch.Tensor:
    """UCB1 (Auer et al. 2002): the arm maximising ``mean_i + sqrt(c ln t / n_i)``, ties at random.

    With ``prior=False`` (the textbook UCB1) the first ``arms`` pulls try arms 0, 1, ... once each
    (with ``pulls < arms`` only the first ``pulls`` arms are tried), then ``t`` is the number of
    pulls so far and ``mean_i`` the empirical mean. With ``prior=True`` every arm starts with one
    pseudo-success and one pseudo-failure (the Beta(1, 1) prior): ``mean_i`` is the posterior
    mean, ``n_i`` counts the pseudo-pulls and ``t`` is ``2 * arms`` plus the pulls so far.

    Args:
        c: the exploration constant (2: Auer's bound ``sqrt(2 ln t / n_i)``).
        prior: start from the Beta(1, 1) pseudo-counts instead of one pull of each arm.

    Duan et al.'s UCB1 figures need a tuned constant: ``prior=True, c=0.05`` gives 6.7 (k=5, n=10)
    and 78.5 (k=5, n=100) against their 6.7 and 78.0; the textbook ``c=2`` explores far more.
    """
    if not c >= 0:
        raise ValueError(f"c must be >= 0, got {c!r}.")
    first = torch.arange(env.arms, device=env.device).expand(env.num_envs, env.arms)  # (B, k)

    def policy(t: int, counts: _Counts, gen: torch.Generator) -> torch.Tensor:
        if not prior and t < env.arms:  # a host int: the initial round robin
            return first[:, t].contiguous()
        pseudo = 1.0 if prior else 0.0
        n = counts.wins + counts.losses + 2.0 * pseudo  # (B, k)
        total = t + 2.0 * pseudo * env.arms
        score = (counts.wins + pseudo) / n + torch.sqrt(c * math.log(total) / n)
        return argmax_random(score, gen)

    return _bandit(env, seed, trials, policy)


def default_gittins_gamma(pulls: int) -> float:
    """The discount used for the Gittins index on trials of ``pulls`` pulls: ``1 - 1 / pulls``.

    The Gittins index is Bayes-optimal for the infinite discounted problem; a discount whose
    effective horizon ``1 / (1 - gamma)`` equals the trial length is the usual stand-in for the
    finite-horizon one (Duan et al. tune the discount; see the module's reported figures).
    """
    return 1.0 - 1.0 / max(int(pulls), 2)


@functools.lru_cache(maxsize=16)
def gittins_table(pulls: int, gamma: float, grid: int = 2001, extra_depth: int | None = None) -> torch.Tensor:
    """Gittins indices of Bernoulli arms with a Beta(1, 1) prior, by calibration (retirement).

    ``table[s, f]`` is the index of an arm seen ``s`` successes and ``f`` failures (posterior
    Beta(1 + s, 1 + f)), for ``s + f <= pulls``: the per-step retirement reward ``lam`` at which
    retiring forever (worth ``lam / (1 - gamma)``) and pulling on, optimally stopping later, are
    equally good. One backward dynamic programme over the posterior states, run for a grid of
    ``grid`` values of ``lam`` in [0, 1] at once, gives for every state the advantage of pulling;
    the index is where that advantage (decreasing in ``lam``) crosses zero, found by linear
    interpolation between grid points. The programme is truncated ``extra_depth`` observations
    beyond ``pulls`` (default ``max(50, ceil(1 / (1 - gamma)))``, the effective horizon), where
    the posterior mean is taken as known, ``V = max(lam, mean) / (1 - gamma)``. The indices are
    accurate to about ``1 / (2 * grid)`` (for Beta(1, 1): 0.7029 at gamma = 0.9 and 0.8699 at
    0.99, as in Gittins' tables). Cached per arguments; ``pulls = 500`` takes about 20 s on one
    CPU core.

    Args:
        pulls: the largest ``s + f`` tabulated (the trial length).
        gamma: the discount, in (0, 1).
        grid: number of retirement rewards in [0, 1].
        extra_depth: observations beyond ``pulls`` before truncation.

    Returns:
        float64 (pulls + 1, pulls + 1), NaN where ``s + f > pulls``.
    """
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma!r}.")
    if pulls < 0 or grid < 3:
        raise ValueError(f"need pulls >= 0 and grid >= 3, got {pulls} and {grid}.")
    depth = pulls + (max(50, math.ceil(1.0 / (1.0 - gamma))) if extra_depth is None else int(extra_depth))
    lam = torch.linspace(0.0, 1.0, grid, dtype=torch.float64).unsqueeze(1)  # (L, 1)
    retire = lam / (1.0 - gamma)  # (L, 1)
    table = torch.full((pulls + 1, pulls + 1), math.nan, dtype=torch.float64)

    def mean(m: int) -> torch.Tensor:
        return (torch.arange(m + 1, dtype=torch.float64) + 1.0) / (m + 2.0)  # (m + 1,) over s = 0..m

    value = torch.maximum(lam, mean(depth)) / (1.0 - gamma)  # (L, depth + 1): V at s + f = depth
    for m in range(depth - 1, -1, -1):
        mu = mean(m)
        # From (s, f = m - s): success -> (s + 1, f), index s + 1 at level m + 1; failure -> index s.
        pull = mu * (1.0 + gamma * value[:, 1:]) + (1.0 - mu) * gamma * value[:, :-1]  # (L, m + 1)
        value = torch.maximum(pull, retire)
        if m <= pulls:
            adv = pull - retire  # (L, m + 1), strictly decreasing in lam
            j = (adv > 0).sum(0).clamp(1, grid - 1)  # (m + 1,): the first grid point with adv <= 0
            a0 = adv.gather(0, (j - 1).unsqueeze(0)).squeeze(0)
            a1 = adv.gather(0, j.unsqueeze(0)).squeeze(0)
            l0 = lam[j - 1, 0]
            step = 1.0 / (grid - 1)
            index = l0 + step * a0 / (a0 - a1)
            s = torch.arange(m + 1)
            table[s, m - s] = index
    return table


def bandit_gittins(
    env: BanditEnv, seed: int = 0, trials: int = 1000, gamma: float | None = None
) -> torch.Tensor:
    """The arm of highest Gittins index (Beta(1, 1) prior, discount ``gamma``), ties at random.

    Args:
        gamma: the discount of the index; default :func:`default_gittins_gamma` of the trial length.
    """
    g = default_gittins_gamma(env.pulls) if gamma is None else float(gamma)
    table = gittins_table(env.pulls, g).to(env.device).nan_to_num(0.0)  # (n + 1, n + 1)
    flat = table.flatten()

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        index = flat[c.wins.long() * (env.pulls + 1) + c.losses.long()]  # (B, k)
        return argmax_random(index, gen)

    return _bandit(env, seed, trials, policy)


def bandit_oracle(env: BanditEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Always the best arm of the hidden probabilities (an upper bound; expected ``pulls * k / (k + 1)``)."""
    gen = check_run(env, BanditEnv, _EXPECTED, seed, trials)

    def begin() -> tuple[Act, Learn | None]:
        best = argmax_random(env.probabilities(), gen)  # the new trial's tasks are in place
        return (lambda t, obs: best), None

    return play_trials(env, seed, trials, begin)


BANDIT_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": bandit_random,
    "greedy": bandit_greedy,
    "epsilon_greedy": bandit_epsilon_greedy,
    "thompson": bandit_thompson,
    "ucb1": bandit_ucb1,
    "gittins": bandit_gittins,
    "oracle": bandit_oracle,
}
