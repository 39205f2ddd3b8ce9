"""Classic baselines for the bandit, tabular-MDP and CartPole tasks, played in batch on the same tasks and seeds.

Every baseline takes a constructed vector env, a seed and a number of trials; it plays
``ceil(trials / B)`` rounds of one trial per env, round i after ``env.reset(seed=seed + i)`` (as
:func:`meta_rl.evaluation.evaluate_task` seeds its batches), and returns the total reward of
every trial, float64 (trials,) on the CPU. The envs draw the same random numbers per step
whatever the actions, so one seed gives every baseline the same sequence of tasks, and
``reset(seed=...)`` with the split gives the same tasks a meta-learner is evaluated on. The
baselines' own randomness comes from a separate generator seeded from the same seed. Everything
runs as tensors over the B tasks (a Python loop over time steps only); none of them reads the
hidden task except the oracles (:func:`bandit_oracle`, :func:`mdp_value_iteration`).

Bandits (:class:`~meta_rl.envs.bandits.BernoulliBanditVectorEnv`, Duan et al. 2016, Table 1):
:func:`bandit_random`, :func:`bandit_greedy`, :func:`bandit_epsilon_greedy`,
:func:`bandit_thompson`, :func:`bandit_ucb1`, :func:`bandit_gittins` and :func:`bandit_oracle`.

Tabular MDPs (:class:`~meta_rl.envs.tabular_mdp.TabularMDPVectorEnv`, Table 2):
:func:`mdp_random`, :func:`mdp_value_iteration` (the known-MDP upper bound) and :func:`mdp_psrl`.

CartPole (:class:`~meta_rl.envs.cartpole.CartPoleTaskVectorEnv`): :func:`cartpole_random` and
:func:`cartpole_oracle` (LQR on the known physics, :func:`cartpole_lqr_gain`). Their trials end
at different times, so they return (trials, episodes_per_trial) returns per inner episode of
each env's first trial (see :func:`cartpole_random`). On ``meta_rl/CartPole-v0`` (2 inner
episodes of at most 100 steps, 2,000 test-split trials, seed 0) random pushes last 26.4 +- 0.6
and 26.6 +- 0.7 steps per inner episode and the oracle 100.0 and 100.0 (every episode).

:func:`mean_ci` gives the mean and a 95% interval of the returns. ``python -m
meta_rl.envs.task_baselines`` prints them all; with its defaults (2,000 test-split trials,
seed 0) it gave, against Duan et al.'s Table 1 (random / Gittins / Thompson / UCB1 / greedy):

* k=5, n=10: 5.0 / 6.7 / 5.8 / 5.7 / 6.7 (paper 5.0 / 6.6 / 5.7 / 6.7 / 6.6);
* k=5, n=100: 49.8 / 78.8 / 75.3 / 65.9 / 75.9 (paper 49.9 / 78.3 / 74.7 / 78.0 / 74.8);
* k=50, n=500: 250.4 / 463.7 / 426.0 / 313.3 / 409.5 (paper 249.6 / 463.7 / 427.2 / 457.6 / 402.8).

The textbook UCB1 (``c=2``) explores more than the paper's tuned one (see :func:`bandit_ucb1`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from meta_rl.contract import MetaVectorEnv
from meta_rl.envs.bandits import BernoulliBanditVectorEnv
from meta_rl.envs.cartpole import GRAVITY, TAU, CartPoleTaskVectorEnv
from meta_rl.envs.single import check_seed
from meta_rl.envs.tabular_mdp import TabularMDPVectorEnv

__all__ = [
    "BANDIT_BASELINES",
    "CONTROL_BASELINES",
    "MDP_BASELINES",
    "Summary",
    "bandit_epsilon_greedy",
    "bandit_gittins",
    "bandit_greedy",
    "bandit_oracle",
    "bandit_random",
    "bandit_thompson",
    "bandit_ucb1",
    "cartpole_linearization",
    "cartpole_lqr_gain",
    "cartpole_oracle",
    "cartpole_random",
    "default_gittins_gamma",
    "finite_horizon_q",
    "gittins_table",
    "mdp_psrl",
    "mdp_random",
    "mdp_value_iteration",
    "mean_ci",
    "sample_beta",
    "sample_gamma",
]

_POLICY_STREAM = 0x5EED  # keeps the baselines' generator apart from the env's for the same seed

# act(t, obs) -> actions (B,); learn(t, obs, actions, reward, next_obs) updates the statistics.
Act = Callable[[int, torch.Tensor], torch.Tensor]
Learn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class Summary(NamedTuple):
    """Mean of the per-trial returns and its 95% normal-approximation interval."""

    mean: float
    low: float
    high: float
    trials: int


def mean_ci(returns: torch.Tensor, z: float = 1.96) -> Summary:
    """Mean and ``mean +- z * std / sqrt(n)`` (z = 1.96: a 95% interval) of per-trial returns.

    Args:
        returns: (trials,) total rewards, at least one.
        z: the normal quantile of the interval.
    """
    x = returns.detach().double().flatten().cpu()
    if x.numel() == 0:
        raise ValueError("returns is empty; play at least one trial.")
    mean = float(x.mean())
    half = z * float(x.std()) / math.sqrt(x.numel()) if x.numel() > 1 else math.inf
    return Summary(mean, mean - half, mean + half, x.numel())


# -- sampling with an explicit generator (torch's Gamma / Beta draw from the global RNG) ---------


def _marsaglia_tsang(d: torch.Tensor, generator: torch.Generator, tries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tries`` parallel Marsaglia-Tsang proposals per entry: the first accepted value, and whether any was."""
    c = 1.0 / torch.sqrt(9.0 * d)
    shape = (tries, *d.shape)
    x = torch.randn(shape, generator=generator, device=d.device, dtype=d.dtype)  # (tries, ...)
    u = torch.rand(shape, generator=generator, device=d.device, dtype=d.dtype)
    v = (1.0 + c * x) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    value = d * v
    out, found = value[-1], ok[-1]
    for i in range(tries - 2, -1, -1):  # the earliest accepted proposal wins
        out = torch.where(ok[i], value[i], out)
        found = found | ok[i]
    return out, found


def sample_gamma(alpha: torch.Tensor, generator: torch.Generator, tries: int = 8) -> torch.Tensor:
    """Gamma(alpha, 1) draws for ``alpha >= 1`` (Marsaglia & Tsang 2000) from ``generator``.

    Each proposal is accepted with probability above 0.95. Two proposals are tried for every
    entry, then ``tries`` more for the (few) entries that rejected both; an entry that rejects
    them all (probability below 1e-13) takes the proposal's mode ``alpha - 1/3``.
    """
    d = alpha - 1.0 / 3.0
    out, found = _marsaglia_tsang(d, generator, 2)
    missing = (~found).nonzero(as_tuple=True)  # one host read: the rejected entries
    if missing[0].numel():
        retry, retry_found = _marsaglia_tsang(d[missing], generator, tries)
        out[missing] = torch.where(retry_found, retry, d[missing])
    return out


def sample_beta(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Beta(a, b) draws for ``a, b >= 1`` as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b)."""
    x = sample_gamma(a, generator)
    y = sample_gamma(b, generator)
    return x / (x + y)


def _argmax_random(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Argmax over the last axis with ties broken uniformly at random: (..., k) -> (...,) int64."""
    best = scores == scores.max(-1, keepdim=True).values
    u = torch.rand(scores.shape, generator=generator, device=scores.device)
    return torch.where(best, u, -1.0).argmax(-1)


def _check_run(env: Any, cls: type[MetaVectorEnv], seed: int, trials: int) -> torch.Generator:
    """Check the arguments of a baseline; return its own generator, seeded from ``seed``."""
    if not isinstance(env, cls):
        raise TypeError(f"env must be a {cls.__name__}, got {type(env).__name__}; build one, e.g. {cls.__name__}(64).")
    check_seed(seed)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}.")
    return torch.Generator(device=env.device).manual_seed((int(seed) + _POLICY_STREAM) % 2**64)


def _play(env: Any, seed: int, trials: int, begin: Callable[[], tuple[Act, Learn | None]]) -> torch.Tensor:
    """Play whole trials, round i from ``env.reset(seed=seed + i)``; ``begin()`` is called at each trial start.

    Rounds are seeded as :func:`meta_rl.evaluation.evaluate_task` seeds its batches, so with the
    same seed and ``num_envs`` the baselines meet the tasks an agent was evaluated on.
    """
    totals = []
    for i in range(-(-trials // env.num_envs)):
        obs, _ = env.reset(seed=seed + i)
        act, learn = begin()
        total = torch.zeros(env.num_envs, dtype=torch.float64, device=env.device)
        for t in range(env.episode_length):
            actions = act(t, obs)
            next_obs, reward, _, _, info = env.step(actions)
            if learn is not None:  # the trial's own last observation, not the next trial's first
                learn(t, obs, actions, reward, info["final_obs"] if t == env.episode_length - 1 else next_obs)
            total += reward.double()
            obs = next_obs
        totals.append(total)
    return torch.cat(totals)[:trials].cpu()


# -- bandits -----------------------------------------------------------------------------------


class _Counts:
    """Per-arm successes and failures of B bandits."""

    def __init__(self, env: BernoulliBanditVectorEnv) -> None:
        self.wins = torch.zeros(env.num_envs, env.arms, device=env.device)  # (B, k)
        self.losses = torch.zeros_like(self.wins)
        self.rows = torch.arange(env.num_envs, device=env.device)

    def learn(self, t: int, obs: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, nxt: torch.Tensor) -> None:
        self.wins[self.rows, actions] += reward
        self.losses[self.rows, actions] += 1.0 - reward

    def posterior_mean(self) -> torch.Tensor:
        """(B, k) the Beta(1, 1) posterior means."""
        return (self.wins + 1.0) / (self.wins + self.losses + 2.0)


def _bandit(env: BernoulliBanditVectorEnv, seed: int, trials: int,
            policy: Callable[[int, _Counts, torch.Generator], torch.Tensor]) -> torch.Tensor:
    gen = _check_run(env, BernoulliBanditVectorEnv, seed, trials)

    def begin() -> tuple[Act, Learn]:
        counts = _Counts(env)
        return (lambda t, obs: policy(t, counts, gen)), counts.learn

    return _play(env, seed, trials, begin)


def bandit_random(env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random arms (expected total ``pulls / 2``)."""

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(env.arms, (env.num_envs,), generator=gen, device=env.device)

    return _bandit(env, seed, trials, policy)


def bandit_greedy(env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """The arm of highest Beta(1, 1) posterior mean ``(wins + 1) / (pulls + 2)``, ties at random.

    This is Duan et al.'s "greedy" (Thompson sampling with the posterior mean for the sample);
    untried arms score 1/2, so a failure moves on to an untried arm and a success stays.
    """

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return _argmax_random(c.posterior_mean(), gen)

    return _bandit(env, seed, trials, policy)


def bandit_epsilon_greedy(
    env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000, eps: float = 0.1
) -> torch.Tensor:
    """With probability ``eps`` a random arm, else :func:`bandit_greedy`'s posterior-mean arm."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps!r}.")

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        greedy = _argmax_random(c.posterior_mean(), gen)
        explore = torch.rand(env.num_envs, generator=gen, device=env.device) < eps
        uniform = torch.randint(env.arms, (env.num_envs,), generator=gen, device=env.device)
        return torch.where(explore, uniform, greedy)

    return _bandit(env, seed, trials, policy)


def bandit_thompson(env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Thompson sampling: the arm of highest draw from its Beta(1 + wins, 1 + losses) posterior."""

    def policy(t: int, c: _Counts, gen: torch.Generator) -> torch.Tensor:
        return sample_beta(c.wins + 1.0, c.losses + 1.0, gen).argmax(-1)

    return _bandit(env, seed, trials, policy)


def bandit_ucb1(
    env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000, c: float = 2.0, prior: bool = False
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
        return _argmax_random(score, gen)

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
    env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000, gamma: float | None = None
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
        return _argmax_random(index, gen)

    return _bandit(env, seed, trials, policy)


def bandit_oracle(env: BernoulliBanditVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Always the best arm of the hidden probabilities (an upper bound; expected ``pulls * k / (k + 1)``)."""
    gen = _check_run(env, BernoulliBanditVectorEnv, seed, trials)

    def begin() -> tuple[Act, Learn | None]:
        best = _argmax_random(env.probabilities(), gen)  # the new trial's tasks are in place
        return (lambda t, obs: best), None

    return _play(env, seed, trials, begin)


# -- tabular MDPs --------------------------------------------------------------------------------


def finite_horizon_q(mu: torch.Tensor, transitions: torch.Tensor, horizon: int) -> torch.Tensor:
    """Optimal finite-horizon Q-values by backward induction.

    Args:
        mu: (B, S, A) mean rewards.
        transitions: (B, S, A, S) next-state probabilities.
        horizon: steps per episode.

    Returns:
        (horizon, B, S, A): ``q[h]`` is the optimal Q with ``h + 1`` steps to go.
    """
    qs = []
    value = torch.zeros(mu.shape[:2], dtype=mu.dtype, device=mu.device)  # (B, S)
    for _ in range(horizon):
        q = mu + torch.einsum("bsat,bt->bsa", transitions, value)  # (B, S, A)
        value = q.max(-1).values
        qs.append(q)
    return torch.stack(qs)


def _state(env: TabularMDPVectorEnv, obs: torch.Tensor) -> torch.Tensor:
    return obs[:, : env.states].argmax(-1)  # (B,) from the one-hot


def mdp_random(env: TabularMDPVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random actions (expected total ``episode_length``, as the mean reward is 1)."""
    gen = _check_run(env, TabularMDPVectorEnv, seed, trials)

    def begin() -> tuple[Act, Learn | None]:
        return (lambda t, obs: torch.randint(env.actions, (env.num_envs,), generator=gen, device=env.device)), None

    return _play(env, seed, trials, begin)


def mdp_value_iteration(
    env: TabularMDPVectorEnv, seed: int = 0, trials: int = 1000, exact: bool = False
) -> torch.Tensor:
    """The optimal policy of the true (hidden) MDP, by finite-horizon value iteration: the upper bound.

    The policy is played in the env (so the tasks are the same as the other baselines'); with
    ``exact=True`` each trial's return is replaced by its expectation,
    ``episodes_per_trial * max_a Q_H(0, a)``, which removes the reward and transition noise.
    """
    _check_run(env, TabularMDPVectorEnv, seed, trials)
    rows = torch.arange(env.num_envs, device=env.device)
    expected: list[torch.Tensor] = []

    def begin() -> tuple[Act, Learn | None]:
        mu, transitions = env.mdp()
        q = finite_horizon_q(mu, transitions, env.horizon)  # (H, B, S, A)
        expected.append(env.episodes_per_trial * q[-1, :, 0].max(-1).values.double())  # (B,)

        def act(t: int, obs: torch.Tensor) -> torch.Tensor:
            to_go = env.horizon - t % env.horizon
            return q[to_go - 1, rows, _state(env, obs)].argmax(-1)

        return act, None

    played = _play(env, seed, trials, begin)
    return torch.cat(expected)[:trials].cpu() if exact else played


def mdp_psrl(env: TabularMDPVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Posterior sampling for RL (Osband et al. 2013), one posterior per trial.

    Priors match the task distribution: mean rewards ``mu(s, a) ~ Normal(1, 1)`` with known unit
    reward noise (posterior ``Normal((1 + sum r) / (1 + n), 1 / (1 + n))``) and transition rows
    ``Dirichlet(1 + counts)``. At the start of every inner episode an MDP is drawn from the
    posterior, planned by finite-horizon value iteration and followed greedily for the episode.
    The last transition of each inner episode is not seen (the observation is then the start
    state of the next one) and only matters past the horizon, so it is not counted.
    """
    gen = _check_run(env, TabularMDPVectorEnv, seed, trials)
    rows = torch.arange(env.num_envs, device=env.device)
    shape = (env.num_envs, env.states, env.actions)

    def begin() -> tuple[Act, Learn]:
        n = torch.zeros(shape, dtype=torch.float64, device=env.device)  # (B, S, A) visits
        total = torch.zeros_like(n)  # (B, S, A) reward sums
        counts = torch.zeros((*shape, env.states), dtype=torch.float64, device=env.device)  # (B, S, A, S)
        plan: list[torch.Tensor] = []

        def act(t: int, obs: torch.Tensor) -> torch.Tensor:
            k = t % env.horizon
            if k == 0:  # a host int: a new inner episode, a new posterior sample
                precision = 1.0 + n
                noise = torch.randn(shape, generator=gen, device=env.device, dtype=torch.float64)
                mu = (1.0 + total) / precision + noise / precision.sqrt()
                p = sample_gamma(1.0 + counts, gen)
                p = p / p.sum(-1, keepdim=True)
                plan[:] = [finite_horizon_q(mu, p, env.horizon)]
            return plan[0][env.horizon - k - 1, rows, _state(env, obs)].argmax(-1)

        def learn(t: int, obs: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, nxt: torch.Tensor) -> None:
            s = _state(env, obs)
            n[rows, s, actions] += 1.0
            total[rows, s, actions] += reward.double()
            if (t + 1) % env.horizon:  # a host int: the next state is seen
                counts[rows, s, actions, _state(env, nxt)] += 1.0

        return act, learn

    return _play(env, seed, trials, begin)


# -- CartPole ------------------------------------------------------------------------------------


def cartpole_linearization(tasks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cart-pole's one-step dynamics linearised about the upright rest state, per task.

    With ``s = (x, x_dot, theta, theta_dot)`` and ``F`` the force on the cart (newtons, before
    the actuator sign: the env applies ``sign * force_mag`` for action 1), the env's Euler step
    is ``s' ~ A s + B F`` near ``s = 0``: ``A = I + tau * A_c`` and ``B = tau * B_c`` for the
    Jacobians ``A_c``, ``B_c`` of the continuous equations (gymnasium's) at rest.

    Args:
        tasks: (N,) tensors ``length``, ``masspole`` and ``masscart`` (as ``env.tasks()`` gives them).

    Returns:
        float64 ``A`` (N, 4, 4) and ``B`` (N, 4).
    """
    length, masspole = tasks["length"].double(), tasks["masspole"].double()
    total = masspole + tasks["masscart"].double()
    denom = length * (4.0 / 3.0 - masspole / total)  # the thetaacc denominator at theta = 0
    theta_theta = GRAVITY / denom  # d thetaacc / d theta
    theta_force = -1.0 / (total * denom)  # d thetaacc / d F
    x_theta = -masspole * length * theta_theta / total  # d xacc / d theta
    x_force = 1.0 / total - masspole * length * theta_force / total  # d xacc / d F
    n = length.shape[0]
    a = torch.eye(4, dtype=torch.float64, device=length.device).repeat(n, 1, 1)  # (N, 4, 4)
    a[:, 0, 1] = TAU
    a[:, 1, 2] = TAU * x_theta
    a[:, 2, 3] = TAU
    a[:, 3, 2] = TAU * theta_theta
    b = torch.zeros(n, 4, dtype=torch.float64, device=length.device)
    b[:, 1] = TAU * x_force
    b[:, 3] = TAU * theta_force
    return a, b


def cartpole_lqr_gain(
    tasks: dict[str, torch.Tensor],
    q: tuple[float, float, float, float] = (1.0, 1.0, 10.0, 1.0),
    r: float = 0.01,
    tol: float = 1e-12,
    max_iter: int = 64,
) -> torch.Tensor:
    """The infinite-horizon discrete LQR gain of every task's linearised cart-pole, batched.

    Minimises ``sum_t s_t' Q s_t + r F_t^2`` for ``s' = A s + B F`` (:func:`cartpole_linearization`).
    ``P``, the solution of the discrete Riccati equation ``P = Q + A'PA - A'PB (r + B'PB)^-1 B'PA``,
    is found by iterating the Riccati recursion in its doubling form (the structure-preserving
    doubling algorithm, Chu, Fan & Lin 2005): iteration k gives the cost-to-go of ``2^k`` steps,
    so it converges in a few dozen iterations where the plain recursion needs thousands (the
    slowest closed-loop modes of these tasks decay by about 2% a step). It stops when the largest
    change of an entry of ``P`` is below ``tol`` times its largest entry (one host read per
    iteration). The gain is ``K = (r + B'PB)^-1 B'PA`` and the control ``F = -K s``.

    Args:
        tasks: (N,) tensors ``length``, ``masspole`` and ``masscart``.
        q: the diagonal of ``Q`` over (x, x_dot, theta, theta_dot), positive.
        r: the weight of the squared force, positive.
        tol: relative convergence tolerance.
        max_iter: the most doubling iterations (``2^max_iter`` Riccati steps).

    Returns:
        float64 (N, 4) ``K``.
    """
    if not r > 0 or len(q) != 4 or not all(w > 0 for w in q):
        raise ValueError(f"need r > 0 and four positive weights q, got r={r!r}, q={q!r}.")
    a, b = cartpole_linearization(tasks)
    bm = b.unsqueeze(-1)  # (N, 4, 1)
    eye = torch.eye(4, dtype=torch.float64, device=a.device)
    a_k = a
    g_k = bm @ bm.transpose(1, 2) / r  # (N, 4, 4) B R^-1 B'
    h_k = torch.diag(torch.tensor(q, dtype=torch.float64, device=a.device)).expand_as(a).clone()  # -> P
    for _ in range(max_iter):
        w = torch.linalg.solve(eye + g_k @ h_k, a_k)  # (I + G H)^-1 A
        h_next = h_k + a_k.transpose(1, 2) @ h_k @ w
        h_next = 0.5 * (h_next + h_next.transpose(1, 2))  # symmetric against rounding
        g_k = g_k + a_k @ torch.linalg.solve(eye + g_k @ h_k, g_k) @ a_k.transpose(1, 2)
        g_k = 0.5 * (g_k + g_k.transpose(1, 2))
        a_k = a_k @ w
        done = bool(((h_next - h_k).abs().amax((1, 2)) <= tol * h_next.abs().amax((1, 2))).all())
        h_k = h_next
        if done:
            break
    bpa = bm.transpose(1, 2) @ h_k @ a  # (N, 1, 4)
    return (bpa / (r + bm.transpose(1, 2) @ h_k @ bm)).squeeze(1)  # (N, 4)


def _play_trials(env: CartPoleTaskVectorEnv, seed: int, trials: int, begin: Callable[[], Act]) -> torch.Tensor:
    """Returns per inner episode of ``trials`` whole trials: float64 (trials, episodes_per_trial) on the CPU.

    Round i starts from ``env.reset(seed=seed + i)`` (as :func:`meta_rl.evaluation.evaluate_task`
    seeds its batches) and plays ``episode_length`` steps, the longest a trial can last, so every
    env finishes its first trial; an env whose trial ended early has started its next task within
    the round, and those steps are not counted. ``begin()`` is called after each reset, with the round's tasks
    in place, and returns ``act(t, obs) -> actions``.
    """
    episodes = int(env.episodes_per_trial or 1)
    rounds = []
    for i in range(-(-trials // env.num_envs)):
        obs, _ = env.reset(seed=seed + i)
        act = begin()
        returns = torch.zeros(env.num_envs, episodes, dtype=torch.float64, device=env.device)  # (B, E)
        counting = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)  # (B,) in the first trial
        for t in range(env.episode_length):
            obs, reward, terminated, _, info = env.step(act(t, obs))
            onehot = torch.nn.functional.one_hot(info["inner_episode"], episodes)  # (B, E)
            returns += onehot * (reward.double() * counting).unsqueeze(-1)
            counting = counting & ~terminated
        rounds.append(returns)
    return torch.cat(rounds)[:trials].cpu()


def cartpole_random(env: CartPoleTaskVectorEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random pushes: float64 (trials, episodes_per_trial), the return of each inner episode.

    Like every CartPole baseline it plays ``ceil(trials / B)`` rounds of ``episode_length`` steps,
    round i from ``env.reset(seed=seed + i)``, and counts each env's first trial only.
    """
    gen = _check_run(env, CartPoleTaskVectorEnv, seed, trials)

    def begin() -> Act:
        return lambda t, obs: torch.randint(2, (env.num_envs,), generator=gen, device=env.device)

    return _play_trials(env, seed, trials, begin)


def cartpole_oracle(
    env: CartPoleTaskVectorEnv, seed: int = 0, trials: int = 1000, q: tuple[float, float, float, float] = (
        1.0, 1.0, 10.0, 1.0), r: float = 0.01
) -> torch.Tensor:
    """Knows the task: bang-bang pushes that follow the LQR force of the task's true physics (an upper bound).

    At each trial start the gain ``K`` of :func:`cartpole_lqr_gain` is computed from
    ``env.tasks()``; each step pushes with the action whose force ``sign * force_mag * (+-1)``
    has the sign of the LQR force ``-K s``. Returns float64 (trials, episodes_per_trial), the
    return of each inner episode (see :func:`cartpole_random`).
    """
    _check_run(env, CartPoleTaskVectorEnv, seed, trials)

    def begin() -> Act:
        tasks = env.tasks()  # the round's tasks; steps after an env's first trial are not counted
        gain = cartpole_lqr_gain(tasks, q, r)  # (B, 4)
        sign = tasks["sign"].double()

        def act(t: int, obs: torch.Tensor) -> torch.Tensor:
            force = -(gain * obs[:, :4].double()).sum(-1)  # (B,) the LQR force
            return (force * sign > 0).long()  # action 1 pushes with +sign * force_mag

        return act

    return _play_trials(env, seed, trials, begin)


BANDIT_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": bandit_random,
    "greedy": bandit_greedy,
    "epsilon_greedy": bandit_epsilon_greedy,
    "thompson": bandit_thompson,
    "ucb1": bandit_ucb1,
    "gittins": bandit_gittins,
    "oracle": bandit_oracle,
}
MDP_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": mdp_random,
    "value_iteration": mdp_value_iteration,
    "psrl": mdp_psrl,
}
CONTROL_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": cartpole_random,
    "oracle": cartpole_oracle,
}


def main(argv: list[str] | None = None) -> None:
    """Print every baseline on every registered bandit, MDP and CartPole setting (``python -m
    meta_rl.envs.task_baselines``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-envs", type=int, default=1000)
    parser.add_argument("--only", choices=["bandits", "mdps", "control"], default=None)
    args = parser.parse_args(argv)
    if args.only in (None, "bandits"):
        for pulls in (10, 100, 500):
            for arms in (5, 10, 50):
                bandit = BernoulliBanditVectorEnv(args.num_envs, arms=arms, pulls=pulls, split=args.split)
                row = {name: mean_ci(f(bandit, args.seed, args.trials)) for name, f in BANDIT_BASELINES.items()}
                print(f"bandit n={pulls} k={arms}: " + ", ".join(
                    f"{name} {s.mean:.1f} +- {s.high - s.mean:.1f}" for name, s in row.items()), flush=True)
    if args.only in (None, "mdps"):
        for episodes in (10, 25, 50):
            mdp = TabularMDPVectorEnv(args.num_envs, episodes_per_trial=episodes, split=args.split)
            row = {name: mean_ci(f(mdp, args.seed, args.trials)) for name, f in MDP_BASELINES.items()}
            print(f"tabular MDP n={episodes}: " + ", ".join(
                f"{name} {s.mean:.1f} +- {s.high - s.mean:.1f}" for name, s in row.items()), flush=True)
    if args.only in (None, "control"):
        cartpole = CartPoleTaskVectorEnv(args.num_envs, episodes_per_trial=2, max_episode_steps=100, split=args.split)
        for name, f in CONTROL_BASELINES.items():
            per_episode = f(cartpole, args.seed, args.trials)  # (trials, E)
            cells = [mean_ci(per_episode[:, k]) for k in range(per_episode.shape[1])]
            print(f"cartpole {name} by inner episode: " + ", ".join(
                f"ep{k + 1} {s.mean:.1f} +- {s.high - s.mean:.1f}" for k, s in enumerate(cells)), flush=True)


if __name__ == "__main__":
    main()
