"""stable-baselines3 interop for :class:`~meta_rl.policy.MetaPolicy`: its ``predict`` and the RL² state it keeps.

SB3's loops (``evaluate_policy``) call ``predict(observation, state, episode_start, deterministic)``
with numpy arrays and never pass rewards; :func:`predict` keeps the previous action (and, with
:class:`RL2ObservationWrapper`, the previous reward) in an :class:`RL2State`.

One ``predict`` call is one step of the policy for B envs, the same computation as a step of the trainer's
batched rollout (:func:`meta_rl.rollout.collect`), recorded once and replayed by TorchScript
(:mod:`meta_rl.traced_step`: at B = 1 Python's calls were most of a step's time); the core's state travels in
the :class:`RL2State`, and the eval mode is set by flipping the ``training`` flags of the modules that are in
training mode (not by ``policy.eval()`` / ``policy.train()``, which walk and set every module twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from meta_rl.cores import State
from meta_rl.traced_step import policy_step

# The policy is typed Any here: meta_rl.policy imports this module (MetaPolicy.predict calls predict), and
# this module must not import it back.
MetaPolicy = Any

__all__ = ["OBSERVATION_KEY", "PREV_REWARD_KEY", "RL2ObservationWrapper", "RL2State", "predict"]

PREV_REWARD_KEY = "prev_reward"
"""Observation entry added by :class:`RL2ObservationWrapper`; :meth:`MetaPolicy.predict` reads it."""
OBSERVATION_KEY = "observation"
"""Where :class:`RL2ObservationWrapper` puts a non-``Dict`` observation (``Box``, ``Discrete``, ...)."""


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


class RL2ObservationWrapper(gym.ObservationWrapper[dict[str, Any], Any, Any]):
    """Adds the previous reward to any observation as ``"prev_reward"`` (float32, shape (1,)).

    Wrap a single env with it before SB3's ``evaluate_policy`` (or any loop that only calls
    ``predict``) so that :meth:`MetaPolicy.predict` sees the previous reward, the one RL² input
    that SB3 never passes to ``predict``. The entry is 0 after ``reset``. A ``Dict`` observation gets
    the entry beside its own; any other (``Box``, ``Discrete``, ...) becomes ``{"observation": obs,
    "prev_reward": r}``. The policy itself is built on (and trained with) the env's own observation
    space; ``predict`` reads the entry and passes on the rest.

    Raises:
        ValueError: a ``Dict`` observation that already has a ``"prev_reward"`` entry.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        reward = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        space = env.observation_space
        self._dict = isinstance(space, spaces.Dict)
        if isinstance(space, spaces.Dict):
            if PREV_REWARD_KEY in space.spaces:
                raise ValueError(f"the observation already has a {PREV_REWARD_KEY!r} entry ({space}); rename the "
                                 "env's entry, since this wrapper adds the previous reward under that key.")
            self.observation_space = spaces.Dict({**space.spaces, PREV_REWARD_KEY: reward})
        else:
            self.observation_space = spaces.Dict({OBSERVATION_KEY: space, PREV_REWARD_KEY: reward})
        self._prev_reward = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._prev_reward = 0.0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._prev_reward = float(reward)
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: Any) -> dict[str, Any]:
        reward = np.array([self._prev_reward], dtype=np.float32)
        if self._dict:
            return {**observation, PREV_REWARD_KEY: reward}
        return {OBSERVATION_KEY: observation, PREV_REWARD_KEY: reward}


def _unwrap(policy: MetaPolicy, observation: Any) -> tuple[Any, Any]:
    """The observation in the policy's own space and the ``"prev_reward"`` entry (None where absent)."""
    if not isinstance(observation, dict):
        return observation, None
    obs = dict(observation)
    prev_reward = obs.pop(PREV_REWARD_KEY, None)
    if policy.dict_observation:
        return obs, prev_reward
    if set(obs) != {OBSERVATION_KEY}:
        raise ValueError(
            f"the policy was built on a {type(policy.main_space).__name__} observation space, but predict got a dict "
            f"with keys {sorted(observation)}; pass the observation itself, or the dict RL2ObservationWrapper makes "
            f"({OBSERVATION_KEY!r} and {PREV_REWARD_KEY!r})."
        )
    return obs[OBSERVATION_KEY], prev_reward


def _is_single(policy: MetaPolicy, observation: Any) -> bool:
    """Whether ``observation`` (in the policy's own space) is one observation (no batch dimension)."""
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


@contextlib.contextmanager
def _evaluating(policy: nn.Module) -> Iterator[list[nn.Module]]:
    """``policy`` in eval mode inside the block, each module's own mode restored after it; yields its modules.

    Only the ``training`` flags of the modules in training mode are set (``policy.eval()`` and ``policy.train()``
    would go through ``nn.Module.__setattr__`` for every module twice). Where such a module overrides
    ``train()`` (it may do more than set its flag), ``policy.eval()`` and its ``train()`` are called instead.
    """
    every = list(policy.modules())
    modules = [m for m in every if m.training]
    if not modules:
        yield every
        return
    if any(type(m).train is not nn.Module.train for m in modules):
        policy.eval()
        try:
            yield every
        finally:  # their own train(), then every flag as it was (train() also sets the children's)
            for m in modules:
                if type(m).train is not nn.Module.train:
                    m.train()
            for m in every:
                object.__setattr__(m, "training", False)
            for m in modules:
                object.__setattr__(m, "training", True)
        return
    for m in modules:
        object.__setattr__(m, "training", False)
    try:
        yield every
    finally:
        for m in modules:
            object.__setattr__(m, "training", True)


def _fresh_state(policy: MetaPolicy, b: int, device: torch.device) -> RL2State:
    action_dtype = np.int64 if policy.head.dtype == torch.int64 else np.float32
    return RL2State(policy.initial_state(b, device), np.zeros((b, *policy.head.shape), dtype=action_dtype),
                    np.zeros(b, dtype=np.float32), np.ones(b, dtype=bool))


def _tensors(obs: Any, single: bool, device: torch.device) -> Any:
    """Numpy observations as tensors on ``device`` with a batch dimension."""
    if isinstance(obs, dict):
        return {k: _tensors(v, single, device) for k, v in obs.items()}
    t = torch.as_tensor(np.asarray(obs), device=device)
    return t.unsqueeze(0) if single else t


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
    ``episode_start`` where a new episode (task) began. One call is one step of the trainer's
    rollout (:func:`meta_rl.rollout.collect`) for these B envs: the same actions for the same inputs.

    Args:
        observation: one observation or a batch of B, in the policy's own observation space (for a ``Dict``
            space, a dict of arrays), or what :class:`RL2ObservationWrapper` makes of one: an extra
            ``"prev_reward"`` entry gives the previous reward (and a non-``Dict`` observation comes as
            ``"observation"``).
        state: what the previous call returned, or None to start fresh tasks.
        episode_start: (B,) bool, True where the env has just been reset: the core's memory
            and the previous action and reward are cleared there. None: no resets.
        deterministic: take the most likely action instead of sampling.

    Returns:
        actions ((B,) or (B, A); without the batch dimension for a single observation) and
        the new :class:`RL2State`.

    Raises:
        ValueError: a dict observation for a policy built on a non-``Dict`` space, without the wrapper's keys.

    Note:
        SB3's loops do not pass rewards to ``predict``. The previous action is kept in the
        state; the previous reward is read from the observation's ``"prev_reward"`` entry
        when present (wrap the env with :class:`RL2ObservationWrapper`), and is fed as 0
        otherwise. With label feedback the revealed ``"label"`` carries the same
        information, so accuracy hardly suffers; with reward-only feedback use the wrapper.
    """
    obs, prev_reward_obs = _unwrap(policy, observation)
    single = _is_single(policy, obs)
    device = policy.value_head.weight.device
    obs_t = _tensors(obs, single, device)
    main = policy.main_obs(obs_t)
    if main is not None:
        b = int(main.shape[0])
    else:
        b = int(next(iter(obs_t.values())).shape[0]) if isinstance(obs_t, dict) else 1
    if state is None:
        state = _fresh_state(policy, b, device)
    starts = state.starts if episode_start is None else state.starts | np.asarray(episode_start, dtype=bool).reshape(b)
    prev_reward = state.prev_reward if prev_reward_obs is None else np.asarray(prev_reward_obs, np.float32).reshape(b)
    with _evaluating(policy) as modules, torch.no_grad():
        params, core = policy_step(
            policy, modules, torch.as_tensor(state.prev_action, device=device),
            torch.as_tensor(prev_reward, device=device), torch.as_tensor(starts, device=device),
            [obs_t[k] for k in policy.context_keys], main, state.core)
        actions = policy.sample(params, None, deterministic).cpu().numpy()
    new_state = RL2State(core, actions.copy(), np.zeros(b, dtype=np.float32), np.zeros(b, dtype=bool))
    return (actions[0] if single else actions), new_state
