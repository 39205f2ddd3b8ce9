"""Classic policies for the random tabular MDPs, played in batch on the env's own tasks and seeds.

Duan et al. 2016 (RL², Table 2) compare a meta-learner with these on
:class:`~meta_rl.envs.tabular_mdp.TabularMDPVectorEnv`: :func:`mdp_random`,
:func:`mdp_value_iteration` (the optimal policy of the known MDP, an upper bound, by
:func:`finite_horizon_q`) and :func:`mdp_psrl` (posterior sampling). Each returns the total
reward of every trial, float64 (trials,) on the CPU (see :mod:`meta_rl.envs.baseline_harness`
for the rounds and seeding). :data:`MDP_BASELINES` names them for ``env.reference_returns``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from meta_rl.env_contract import trial_episodes
from meta_rl.envs.baseline_harness import Act, Learn, TrialEnv, check_run, play_trials
from meta_rl.envs.seeded_sampling import sample_gamma

__all__ = ["MDP_BASELINES", "MDPEnv", "finite_horizon_q", "mdp_psrl", "mdp_random", "mdp_value_iteration"]

_EXPECTED = "TabularMDPVectorEnv"


@runtime_checkable
class MDPEnv(TrialEnv, Protocol):
    """What the MDP policies read of an env (:class:`~meta_rl.envs.tabular_mdp.TabularMDPVectorEnv` has it)."""

    states: int
    actions: int
    horizon: int
    episodes_per_trial: int | None

    def mdp(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current mean rewards (B, S, A) and transition probabilities (B, S, A, S) (value iteration reads them)."""
        ...


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


def _state(env: MDPEnv, obs: torch.Tensor) -> torch.Tensor:
    return obs[:, : env.states].argmax(-1)  # (B,) from the one-hot


def mdp_random(env: MDPEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random actions (expected total ``episode_length``, as the mean reward is 1)."""
    gen = check_run(env, MDPEnv, _EXPECTED, seed, trials)

    def begin() -> tuple[Act, Learn | None]:
        return (lambda t, obs: torch.randint(env.actions, (env.num_envs,), generator=gen, device=env.device)), None

    return play_trials(env, seed, trials, begin)


def mdp_value_iteration(
    env: MDPEnv, seed: int = 0, trials: int = 1000, exact: bool = False
) -> torch.Tensor:
    """The optimal policy of the true (hidden) MDP, by finite-horizon value iteration: the upper bound.

    The policy is played in the env (so the tasks are the same as the other baselines'); with
    ``exact=True`` each trial's return is replaced by its expectation,
    ``episodes_per_trial * max_a Q_H(0, a)``, which removes the reward and transition noise.
    """
    check_run(env, MDPEnv, _EXPECTED, seed, trials)
    rows = torch.arange(env.num_envs, device=env.device)
    expected: list[torch.Tensor] = []

    def begin() -> tuple[Act, Learn | None]:
        mu, transitions = env.mdp()
        q = finite_horizon_q(mu, transitions, env.horizon)  # (H, B, S, A)
        expected.append(trial_episodes(env) * q[-1, :, 0].max(-1).values.double())  # (B,)

        def act(t: int, obs: torch.Tensor) -> torch.Tensor:
            to_go = env.horizon - t % env.horizon
            return q[to_go - 1, rows, _state(env, obs)].argmax(-1)

        return act, None

    played = play_trials(env, seed, trials, begin)
    return torch.cat(expected)[:trials].cpu() if exact else played


def mdp_psrl(env: MDPEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Posterior sampling for RL (Osband et al. 2013), one posterior per trial.

    Priors match the task distribution: mean rewards ``mu(s, a) ~ Normal(1, 1)`` with known unit
    reward noise (posterior ``Normal((1 + sum r) / (1 + n), 1 / (1 + n))``) and transition rows
    ``Dirichlet(1 + counts)``. At the start of every inner episode an MDP is drawn from the
    posterior, planned by finite-horizon value iteration and followed greedily for the episode.
    The last transition of each inner episode is not seen (the observation is then the start
    state of the next one) and only matters past the horizon, so it is not counted.
    """
    gen = check_run(env, MDPEnv, _EXPECTED, seed, trials)
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

    return play_trials(env, seed, trials, begin)


MDP_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": mdp_random,
    "value_iteration": mdp_value_iteration,
    "psrl": mdp_psrl,
}
