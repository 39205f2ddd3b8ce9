"""Plug any Gymnasium env into the meta-RL trainer: a task sampler plus trials of several episodes.

:class:`GymTaskVectorEnv` runs ``num_envs`` copies of an ordinary ``gymnasium.Env`` (through
``gymnasium.vector.SyncVectorEnv`` or ``AsyncVectorEnv``) and makes them look like the
torch-native vector envs of :mod:`meta_rl.envs`: tensors on a device, ``SAME_STEP`` autoreset,
and one *task* per trial of ``episodes_per_trial`` episodes. :func:`register_gym_task` gives it
a gymnasium id, so ``meta-rl train env_module=<your module> env_id=<your id>`` trains on it.

Example (``experiments/plug_in_pendulum.py``)::

    def sample_task(env, rng):  # a new pendulum for every trial
        env.unwrapped.m = rng.uniform(0.5, 2.0)
        env.unwrapped.l = rng.uniform(0.5, 2.0)

    register_gym_task("mine/Pendulum-v0", make_pendulum, sample_task, max_episode_steps=50)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from meta_rl.env_contract import MetaVectorEnv
from meta_rl.envs.checker import check_finite_actions
from meta_rl.envs.task_vector_env import SPLIT_STREAMS, check_split, env_device

__all__ = ["GymTaskVectorEnv", "TaskTrialEnv", "register_gym_task"]

EnvFn = Callable[[], gym.Env]
TaskSampler = Callable[[gym.Env, np.random.Generator], None]

_TASK_STREAM = 0x7A5C  # keeps the task rng apart from the env's own np_random for the same seed


class TaskTrialEnv(gym.Wrapper):
    """One env as a trial: ``episodes_per_trial`` episodes of one task, reported as one episode.

    ``reset()`` draws a new task with ``task_sampler(env, rng)`` (``rng`` seeded from the reset
    seed and the split), then resets the env. When an inner episode ends (the env terminates or
    truncates, or ``max_episode_steps`` pass) the env is reset with the same task and the step is
    not reported as done; after the last inner episode the step reports ``terminated=True``.
    Info: ``"inner_episode"`` (the index of the inner episode the step belonged to) and
    ``"episode_end"`` (True where an inner episode ended at this step).

    It runs inside the vector env's workers, so sync and async vectorisation behave the same.
    """

    def __init__(
        self,
        env: gym.Env,
        task_sampler: TaskSampler,
        episodes_per_trial: int = 2,
        max_episode_steps: int | None = None,
        split: str = "train",
    ) -> None:
        super().__init__(env)
        _check_positive("episodes_per_trial", episodes_per_trial)
        if max_episode_steps is None:
            max_episode_steps = env.spec.max_episode_steps if env.spec is not None else None
            if max_episode_steps is None:
                raise ValueError(
                    "max_episode_steps is needed: the env's spec has none; pass max_episode_steps=N."
                )
        _check_positive("max_episode_steps", max_episode_steps)
        check_split(split)
        if not callable(task_sampler):
            raise TypeError(f"task_sampler must be callable (env, rng) -> None, got {type(task_sampler).__name__}.")
        self.task_sampler = task_sampler
        self.episodes_per_trial = episodes_per_trial
        self.max_episode_steps = int(max_episode_steps)
        self.split = split
        self.task_rng = np.random.default_rng()
        self.tasks_sampled = 0
        self._episode = 0
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.task_rng = np.random.default_rng([int(seed), _TASK_STREAM, SPLIT_STREAMS[self.split]])
        self.task_sampler(self.env, self.task_rng)
        self.tasks_sampled += 1
        self._episode, self._t = 0, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["inner_episode"] = self._episode
        self._t += 1
        end = bool(terminated or truncated or self._t >= self.max_episode_steps)
        info["episode_end"] = end
        if not end:
            return obs, reward, False, False, info
        self._episode += 1
        if self._episode >= self.episodes_per_trial:
            return obs, reward, True, False, info  # the trial (the task) ends; the vector env resets
        self._t = 0
        obs, _ = self.env.reset()  # the next inner episode of the same task
        return obs, reward, False, False, info


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _make_trial_env(env_fn: EnvFn, task_sampler: TaskSampler, episodes_per_trial: int,
                    max_episode_steps: int | None, split: str) -> TaskTrialEnv:
    return TaskTrialEnv(env_fn(), task_sampler, episodes_per_trial, max_episode_steps, split)


def _to_torch(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: _to_torch(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to_torch(v, device) for v in x)
    return torch.as_tensor(np.asarray(x), device=device)


def _put(batch: Any, i: int, value: Any) -> None:
    """Write one env's (possibly nested) observation into row ``i`` of a batched numpy observation."""
    if isinstance(batch, dict):
        for k in batch:
            _put(batch[k], i, value[k])
    elif isinstance(batch, tuple):
        for b, v in zip(batch, value):
            _put(b, i, v)
    else:
        batch[i] = value


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_copy(v) for v in x)
    return np.array(x, copy=True)


class GymTaskVectorEnv(MetaVectorEnv):
    """B copies of any gymnasium env, one task per trial of several episodes, as torch tensors.

    ## Description
    ``env_fn()`` builds one ordinary ``gymnasium.Env``; ``task_sampler(env, rng)`` changes it
    into a new task (for example sets ``env.unwrapped.m`` and ``.l`` of Pendulum from the numpy
    Generator ``rng``). A *trial* is ``episodes_per_trial`` episodes of the same task: between
    them the env is reset but the task stays, so an agent that remembers what it learnt about the
    task does better in the later episodes. For the gymnasium API one trial is one episode: the
    trainer keeps the agent's memory across the inner episodes and clears it only when a new task
    begins. The B envs run in a ``SyncVectorEnv`` (``vectorization="sync"``) or in worker
    processes (``"async"``; then ``env_fn`` and ``task_sampler`` must be picklable, e.g. defined
    at module level); the trial logic (:class:`TaskTrialEnv`) runs next to each env, so the task
    sampler is called in the process that owns the env.

    ## Action Space
    ``env.action_space`` batched: a tensor (or numpy array) of shape (B, *shape) on ``device``;
    Box actions are clipped to the bounds (NaN / inf ones raise ``ValueError`` and leave the envs
    unchanged), Discrete ones must be integers.

    ## Observation Space
    ``env.observation_space`` batched (Box, Discrete, Dict, ...), as tensors on ``device`` with
    the space's dtypes.

    ## Rewards
    The env's rewards, as a float32 tensor (B,).

    ## Episode End
    An inner episode ends when the env terminates or truncates or after ``max_episode_steps``
    steps; this is *not* reported as done (``info["episode_end"]`` marks it) and the env is reset
    with the same task. After the last inner episode the step reports ``terminated=True`` and the
    env starts a new trial with a new task in the same step (``SAME_STEP`` autoreset, the terminal
    observation in ``info["final_obs"]``); never truncates. ``episode_length = episodes_per_trial
    * max_episode_steps`` is the longest a trial can last and the trainer's default rollout
    length. Where episodes can end early (CartPole), trials have different lengths in different
    envs: an env whose trial ended early already runs its next task for the rest of the rollout
    (``meta_rl.evaluation.trial_returns`` counts each env's first trial only).

    ## Info
    ``"inner_episode"``: int64 (B,), the index (0, 1, ...) of the inner episode the step belonged
    to; ``"episode_end"``: bool (B,).

    ## Seeding
    ``reset(seed=s)`` seeds env i and its task rng with ``s + i`` (the task rng also with the
    split), so the same seed and actions give the same trajectories; later tasks continue those
    streams. ``reset()`` always draws new tasks for all B envs.

    Args:
        env_fn: builds one env.
        task_sampler: ``(env, rng) -> None``, makes ``env`` a new task.
        num_envs: B.
        episodes_per_trial: inner episodes per task.
        max_episode_steps: the longest inner episode; default: the env's ``spec.max_episode_steps``.
        vectorization: ``"sync"`` or ``"async"``.
        split: ``"train"``, ``"val"`` or ``"test"``: separate task streams for the same seed.
        device: where the tensors live.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        env_fn: EnvFn,
        task_sampler: TaskSampler,
        num_envs: int = 1,
        episodes_per_trial: int = 2,
        max_episode_steps: int | None = None,
        vectorization: str = "sync",
        split: str = "train",
        device: torch.device | str = "cpu",
    ) -> None:
        _check_positive("num_envs", num_envs)
        _check_positive("episodes_per_trial", episodes_per_trial)
        if max_episode_steps is not None:
            _check_positive("max_episode_steps", max_episode_steps)
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}.")
        check_split(split)
        if not callable(env_fn) or not callable(task_sampler):
            raise TypeError("env_fn and task_sampler must be callables: env_fn() -> gym.Env, task_sampler(env, rng).")
        self.device = env_device(device)
        if max_episode_steps is None:  # read it from one env's spec (this also checks env_fn early)
            probe = _make_trial_env(env_fn, task_sampler, episodes_per_trial, None, split)
            max_episode_steps = probe.max_episode_steps
            probe.close()
        make = functools.partial(_make_trial_env, env_fn, task_sampler, episodes_per_trial, max_episode_steps, split)
        fns = [make] * num_envs
        self._vec: SyncVectorEnv | AsyncVectorEnv
        if vectorization == "async":
            self._vec = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        else:
            self._vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.num_envs = num_envs
        self.episodes_per_trial = episodes_per_trial
        self.max_episode_steps = int(max_episode_steps)
        self.episode_length = episodes_per_trial * self.max_episode_steps
        self.vectorization = vectorization
        self.split = split
        self.render_mode = None
        self.single_observation_space = self._vec.single_observation_space
        self.single_action_space = self._vec.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        space = self.single_action_space
        if not isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
            raise TypeError(f"action space {space} is not supported; use Box, Discrete, MultiDiscrete or MultiBinary.")
        self._action_shape = (num_envs, *(space.shape or ()))

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """New tasks for all B envs; ``seed=s`` seeds env i with ``s + i``."""
        if seed is not None and not isinstance(seed, list):
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seed must be a non-negative int, a list of them or None, got {seed!r}.")
            seed = int(seed)
        if options:
            raise ValueError(f"reset() takes no options, got {sorted(options)}; configure tasks with task_sampler.")
        obs, _ = self._vec.reset(seed=seed)  # type: ignore[arg-type]  # both take a list of seeds
        return _to_torch(obs, self.device), {}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        obs, reward, terminated, truncated, vinfo = self._vec.step(self._check_actions(actions))
        done = np.asarray(terminated) | np.asarray(truncated)
        inner = np.asarray(vinfo.get("inner_episode", np.zeros(self.num_envs)), dtype=np.int64).copy()
        end = np.asarray(vinfo.get("episode_end", np.zeros(self.num_envs)), dtype=bool).copy()
        info: dict[str, Any] = {}
        if done.any():  # the reset info replaced the step info of the envs that started a new trial
            final_info = vinfo["final_info"]
            inner[done] = np.asarray(final_info["inner_episode"])[done]
            end[done] = True
            final = _copy(obs)
            for i in np.flatnonzero(done):
                _put(final, int(i), vinfo["final_obs"][i])
            info["final_obs"] = _to_torch(final, self.device)
            info["_final_obs"] = torch.as_tensor(done, device=self.device)
        info["inner_episode"] = torch.as_tensor(inner, device=self.device)
        info["episode_end"] = torch.as_tensor(end, device=self.device)
        return (
            _to_torch(obs, self.device),
            torch.as_tensor(np.asarray(reward, dtype=np.float32), device=self.device),
            torch.as_tensor(np.asarray(terminated, dtype=bool), device=self.device),
            torch.as_tensor(np.asarray(truncated, dtype=bool), device=self.device),
            info,
        )

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every sub-env (a :class:`TaskTrialEnv`; its ``.env`` is yours)."""
        return self._vec.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self._vec.get_attr(name)

    def close_extras(self, **kwargs: Any) -> None:
        self._vec.close()

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(actions, torch.Tensor):
            if actions.device != self.device:
                raise ValueError(
                    f"actions are on {actions.device} but the env runs on {self.device}; use .to(env.device)."
                )
            arr = actions.detach().cpu().numpy()
        elif isinstance(actions, np.ndarray):
            arr = actions
        else:
            raise TypeError(
                f"actions must be a torch.Tensor or numpy array of shape {self._action_shape}, "
                f"got {type(actions).__name__}."
            )
        if arr.shape != self._action_shape:
            raise ValueError(f"actions must have shape {self._action_shape}, got {tuple(arr.shape)}.")
        space = self.single_action_space
        if isinstance(space, spaces.Box):
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"actions for a Box space must be floats, got {arr.dtype}.")
            check_finite_actions(self, arr, space)  # before the sub-envs step: a refused step changes nothing
            return np.clip(arr, space.low, space.high).astype(space.dtype)
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise TypeError(f"actions for {space} must be integers, got {arr.dtype}.")
        return arr.astype(space.dtype)


def register_gym_task(env_id: str, env_fn: EnvFn, task_sampler: TaskSampler, **defaults: Any) -> None:
    """Register ``env_id`` with gymnasium as a :class:`GymTaskVectorEnv` of ``env_fn`` and ``task_sampler``.

    ``defaults`` are constructor arguments (``episodes_per_trial``, ``max_episode_steps``,
    ``vectorization``); ``gymnasium.make_vec(env_id, num_envs=B, vectorization_mode=
    "vector_entry_point", device=...)`` or the trainer (``env_module`` = the module that calls
    this, ``env_id``) builds it, and ``gymnasium.make(env_id)`` gives one trial env with numpy
    observations. For ``vectorization="async"`` define ``env_fn`` and ``task_sampler`` at module
    level. Registering the same id again replaces it.
    """
    allowed = {"episodes_per_trial", "max_episode_steps", "vectorization", "split", "device"}
    unknown = sorted(set(defaults) - allowed)
    if unknown:
        raise TypeError(f"unknown defaults {unknown}; allowed are {sorted(allowed)}.")
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(
        id=env_id,
        entry_point=functools.partial(_single_trial_env, env_fn, task_sampler),
        vector_entry_point=functools.partial(GymTaskVectorEnv, env_fn, task_sampler),
        kwargs=defaults,
    )


def _single_trial_env(env_fn: EnvFn, task_sampler: TaskSampler, episodes_per_trial: int = 2,
                      max_episode_steps: int | None = None, split: str = "train", **_: Any) -> TaskTrialEnv:
    return TaskTrialEnv(env_fn(), task_sampler, episodes_per_trial, max_episode_steps, split)
