"""What every classic baseline of the bandit, tabular-MDP and CartPole tasks shares: checks, seeding, trial loops.

A baseline plays ``ceil(trials / B)`` rounds of one trial per env, round i after
``env.reset(seed=seed + i)`` (as :func:`meta_rl.evaluation.evaluate_task` seeds its batches),
so with the same seed and ``num_envs`` it meets the tasks an agent was evaluated on. Its own
randomness comes from a generator seeded from the same seed on a separate stream
(:func:`check_run`). :func:`play_trials` returns the total reward of every trial,
:func:`play_inner_episodes` the return of each inner episode where trials end at different
times; :func:`mean_ci` summarises either.

The baselines name the envs they play by what they read (:class:`TrialEnv` and its extensions
in :mod:`~meta_rl.envs.bandit_baselines`, ...), not by class, so that the env modules can import
their baselines without the baselines importing them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from meta_rl.env_contract import task_length, trial_episodes
from meta_rl.envs.task_vector_env import check_seed

__all__ = [
    "POLICY_STREAM",
    "Act",
    "Learn",
    "Summary",
    "TrialEnv",
    "check_run",
    "mean_ci",
    "play_inner_episodes",
    "play_trials",
]

POLICY_STREAM = 0x5EED  # keeps the baselines' generator apart from the env's for the same seed

# act(t, obs) -> actions (B,); learn(t, obs, actions, reward, next_obs) updates the statistics.
Act = Callable[[int, torch.Tensor], torch.Tensor]
Learn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


@runtime_checkable
class TrialEnv(Protocol):
    """What the trial loops read of a task vector env: B tasks of ``episode_length`` steps on ``device``."""

    num_envs: int
    device: torch.device
    episode_length: int | None

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]: ...


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


def check_run(env: Any, kind: type[Any], expected: str, seed: int, trials: int) -> torch.Generator:
    """Check the arguments of a baseline; return its own generator, seeded from ``seed``.

    Args:
        env: the env to play; it must have what ``kind`` (a runtime-checkable protocol) lists.
        kind: what the baseline reads of the env.
        expected: the env class the baseline is written for, named in the error.
        seed: the seed of the rounds (a non-negative int).
        trials: trials to play (a positive int).
    """
    if not isinstance(env, kind):
        raise TypeError(f"env must be a {expected}, got {type(env).__name__}; build one, e.g. {expected}(64).")
    check_seed(seed)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}.")
    return torch.Generator(device=env.device).manual_seed((int(seed) + POLICY_STREAM) % 2**64)


def play_trials(env: TrialEnv, seed: int, trials: int, begin: Callable[[], tuple[Act, Learn | None]]) -> torch.Tensor:
    """Play whole trials, round i from ``env.reset(seed=seed + i)``; ``begin()`` is called at each trial start.

    For envs whose trials all last ``episode_length`` steps. Rounds are seeded as
    :func:`meta_rl.evaluation.evaluate_task` seeds its batches, so with the same seed and
    ``num_envs`` the baselines meet the tasks an agent was evaluated on.

    Returns:
        float64 (trials,) on the CPU, the total reward of every trial.
    """
    steps = task_length(env)
    totals = []
    for i in range(-(-trials // env.num_envs)):
        obs, _ = env.reset(seed=seed + i)
        act, learn = begin()
        total = torch.zeros(env.num_envs, dtype=torch.float64, device=env.device)
        for t in range(steps):
            actions = act(t, obs)
            next_obs, reward, _, _, info = env.step(actions)
            if learn is not None:  # the trial's own last observation, not the next trial's first
                learn(t, obs, actions, reward, info["final_obs"] if t == steps - 1 else next_obs)
            total += reward.double()
            obs = next_obs
        totals.append(total)
    return torch.cat(totals)[:trials].cpu()


def play_inner_episodes(env: TrialEnv, seed: int, trials: int, begin: Callable[[], Act]) -> torch.Tensor:
    """Returns per inner episode of ``trials`` whole trials: float64 (trials, episodes_per_trial) on the CPU.

    For envs whose trials end at different times (``info["inner_episode"]`` says which inner
    episode a step belongs to). Round i starts from ``env.reset(seed=seed + i)`` (as
    :func:`meta_rl.evaluation.evaluate_task` seeds its batches) and plays ``episode_length``
    steps, the longest a trial can last, so every env finishes its first trial; an env whose
    trial ended early has started its next task within the round, and those steps are not
    counted. ``begin()`` is called after each reset, with the round's tasks in place, and
    returns ``act(t, obs) -> actions``.
    """
    episodes = trial_episodes(env) or 1
    rounds = []
    for i in range(-(-trials // env.num_envs)):
        obs, _ = env.reset(seed=seed + i)
        act = begin()
        returns = torch.zeros(env.num_envs, episodes, dtype=torch.float64, device=env.device)  # (B, E)
        counting = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)  # (B,) in the first trial
        for t in range(task_length(env)):
            obs, reward, terminated, _, info = env.step(act(t, obs))
            onehot = torch.nn.functional.one_hot(info["inner_episode"], episodes)  # (B, E)
            returns += onehot * (reward.double() * counting).unsqueeze(-1)
            counting = counting & ~terminated
        rounds.append(returns)
    return torch.cat(rounds)[:trials].cpu()
