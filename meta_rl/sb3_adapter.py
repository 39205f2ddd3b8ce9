"""stable-baselines3 interop for :class:`~meta_rl.policy.MetaPolicy`: its ``predict`` and the RL² state it keeps.

SB3's loops (``evaluate_policy``) call ``predict(observation, state, episode_start, deterministic)``
with numpy arrays and never pass rewards; :func:`predict` keeps the previous action (and, with
:class:`RL2ObservationWrapper`, the previous reward) in an :class:`RL2State`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from meta_rl.cores import State

# The policy is typed Any here: meta_rl.policy imports this module (MetaPolicy.predict calls predict), and
# this module must not import it back.
MetaPolicy = Any

__all__ = ["PREV_REWARD_KEY", "RL2ObservationWrapper", "RL2State", "predict"]

PREV_REWARD_KEY = "prev_reward"
"""Observation entry added by :class:`RL2ObservationWrapper`; :meth:`MetaPolicy.predict` reads it."""


@dataclass
class RL2State:
    """The recurrent state :meth:`MetaPolicy.predict` returns and takes back (SB3's ``state``).

    RL² also feeds the previous action and reward, which SB3's ``evaluate_policy`` does not pass
    to ``predict``, so they travel in the state next to the core's own tensors.

    Attributes:
        core: the core's state for the B envs (tensors on the policy's device).
        prev_action: (B,) int64 or (B, A) float32, the last action of each env.
        prev_reward: (B,) float32, the last reward, where known (see :meth:`MetaPolicy.predict`).
        starts: (B,) bool, the next step is the first of a task (set before the first call).
    """

    core: State
    prev_action: np.ndarray
    prev_reward: np.ndarray
    starts: np.ndarray


class RL2ObservationWrapper(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """Adds the previous reward to a ``Dict`` observation as ``"prev_reward"`` (float32, shape (1,)).

    Wrap a single env with it before SB3's ``evaluate_policy`` (or any loop that only calls
    ``predict``) so that :meth:`MetaPolicy.predict` sees the previous reward, the one RL² input
    that SB3 never passes to ``predict``. The entry is 0 after ``reset``. The policy itself is
    built on (and trained with) the unwrapped observation space; ``predict`` drops the entry
    from the observation after reading it.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError(f"RL2ObservationWrapper needs a Dict observation space, got {env.observation_space}.")
        if PREV_REWARD_KEY in env.observation_space.spaces:
            raise ValueError(f"the observation already has a {PREV_REWARD_KEY!r} entry.")
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces,
             PREV_REWARD_KEY: spaces.Box(-np.inf, np.inf, (1,), np.float32)}
        )
        self._prev_reward = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._prev_reward = 0.0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._prev_reward = float(reward)
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, PREV_REWARD_KEY: np.array([self._prev_reward], dtype=np.float32)}


def _is_single(policy: MetaPolicy, observation: Any) -> bool:
    """Whether ``observation`` is one observation (no batch dimension)."""
    if isinstance(observation, dict):
        if policy.main_key is not None:
            value, space = observation[policy.main_key], policy.main_space
        elif policy.context_keys:
            value, space = observation[policy.context_keys[0]], policy.context_spaces[policy.context_keys[0]]
        else:
            return True
    else:
        value, space = observation, policy.main_space
    assert space is not None
    return bool(np.ndim(value) == len(space.shape or ()))


def predict(
    policy: MetaPolicy,
    observation: np.ndarray | dict[str, np.ndarray],
    state: RL2State | None = None,
    episode_start: np.ndarray | None = None,
    deterministic: bool = False,
) -> tuple[np.ndarray, RL2State]:
    """Actions for numpy observations, with stable-baselines3's ``predict`` signature.

    ``stable_baselines3.common.evaluation.evaluate_policy(policy, env)`` works on a MetaPolicy
    (whose ``predict`` method calls this): it passes back the returned ``state`` and sets
    ``episode_start`` where a new episode (task) began.

    Args:
        observation: one observation or a batch of B (for a ``Dict`` space, a dict of
            arrays). An extra ``"prev_reward"`` entry (see :class:`RL2ObservationWrapper`)
            gives the previous reward.
        state: what the previous call returned, or None to start fresh tasks.
        episode_start: (B,) bool, True where the env has just been reset: the core's memory
            and the previous action and reward are cleared there. None: no resets.
        deterministic: take the most likely action instead of sampling.

    Returns:
        actions ((B,) or (B, A); without the batch dimension for a single observation) and
        the new :class:`RL2State`.

    Note:
        SB3's loops do not pass rewards to ``predict``. The previous action is kept in the
        state; the previous reward is read from the observation's ``"prev_reward"`` entry
        when present (wrap the env with :class:`RL2ObservationWrapper`), and is fed as 0
        otherwise. With label feedback the revealed ``"label"`` carries the same
        information, so accuracy hardly suffers; with reward-only feedback use the wrapper.
    """
    single = _is_single(policy, observation)
    obs: dict[str, Any] | Any
    prev_reward_obs = None
    if isinstance(observation, dict):
        obs = dict(observation)
        prev_reward_obs = obs.pop(PREV_REWARD_KEY, None)
    else:
        obs = observation
    device = policy.value_head.weight.device

    def batched(x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x), device=device)
        return t.unsqueeze(0) if single else t

    if isinstance(obs, dict):
        obs_t: Any = {k: batched(v) for k, v in obs.items()}
    else:
        obs_t = batched(obs)
    main = policy.main_obs(obs_t)
    if main is not None:
        b = int(main.shape[0])
    else:
        b = int(next(iter(obs_t.values())).shape[0]) if isinstance(obs_t, dict) else 1
    if state is None:
        state = RL2State(
            policy.initial_state(b, device),
            np.zeros((b, *policy.head.shape), dtype=np.int64 if policy.head.dtype == torch.int64 else np.float32),
            np.zeros(b, dtype=np.float32),
            np.ones(b, dtype=bool),
        )
    starts = state.starts.copy()
    if episode_start is not None:
        starts |= np.asarray(episode_start, dtype=bool).reshape(b)
    prev_reward = state.prev_reward
    if prev_reward_obs is not None:
        prev_reward = np.asarray(prev_reward_obs, dtype=np.float32).reshape(b)

    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            starts_t = torch.as_tensor(starts, device=device)[None]  # (1, B)
            extras = {k: obs_t[k][None] for k in policy.context_keys}
            embed = policy.encode(None if main is None else main[None], (1, b))  # (1, B, E)
            context = policy.context(
                extras,
                torch.as_tensor(state.prev_action, device=device)[None],
                torch.as_tensor(prev_reward, device=device)[None],
                starts_t,
            )
            params, _, core = policy(embed, context, starts_t, state.core)
            action_t = policy.sample(params[0], None, deterministic)
    finally:
        policy.train(was_training)
    actions = action_t.cpu().numpy()
    new_state = RL2State(core, actions.copy(), np.zeros(b, dtype=np.float32), np.zeros(b, dtype=bool))
    return (actions[0] if single else actions), new_state
