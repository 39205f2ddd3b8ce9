"""Plug any Gymnasium env into the meta-RL trainer: a task sampler plus trials of several episodes.

:class:`GymTaskVectorEnv` runs ``num_envs`` copies of an ordinary ``gymnasium.Env`` (through
``gymnasium.vector.SyncVectorEnv`` or worker processes, :mod:`meta_rl.envs.worker_pool`) and makes them look like the
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
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from meta_rl.env_contract import EnvCheckError, MetaVectorEnv
from meta_rl.envs.checker import check_finite_actions
from meta_rl.envs.task_vector_env import SPLIT_STREAMS, check_positive_int, check_seed, check_split, env_device
from meta_rl.envs.worker_pool import WorkerPoolVectorEnv, check_picklable, resolve_workers

__all__ = ["Baseline", "GymTaskVectorEnv", "TaskTrialEnv", "check_baselines", "register_gym_task"]

EnvFn = Callable[[], gym.Env]
TaskSampler = Callable[[gym.Env, np.random.Generator], None]
#: A baseline policy: ``fn(env, observation, rng) -> action``, called at every step of a trial (see
#: :meth:`GymTaskVectorEnv.reference_returns`).
Baseline = Callable[[gym.Env, Any, np.random.Generator], Any]

_TASK_STREAM = 0x7A5C  # keeps the task rng apart from the env's own np_random for the same seed
_BASELINE_STREAM = 0xBA5E  # a baseline's rng, apart from the task rng and the env's np_random for the same seed


class TaskTrialEnv(gym.Wrapper):
    """One env as a trial: ``episodes_per_trial`` episodes of one task, reported as one episode.

    ``reset()`` draws a new task with ``task_sampler(env, rng)`` (``rng`` seeded from the reset
    seed and the split), then resets the env. When an inner episode ends (the env terminates or
    truncates, or ``max_episode_steps`` pass) the env is reset with the same task and the step is
    not reported as done; after the last inner episode the step reports ``terminated=True``.
    Info: ``"inner_episode"`` (the index of the inner episode the step belonged to) and
    ``"episode_end"`` (True where an inner episode ended at this step).

    The spaces are the trainer's: a ``Discrete(n, start=s)`` (the action space, or the observation
    space or a ``Dict`` entry of it) becomes ``Discrete(n)``, so the policy's action ``i`` reaches the
    env as ``s + i`` and the env's observation ``s + i`` reaches the policy as ``i``. Action spaces the
    policy cannot act in (``MultiDiscrete``, ``MultiBinary``, a Box that is not 1-D or not bounded, ...)
    are refused here, with a ``TypeError`` naming the env. The observations of every reset and of the
    first trial's steps are checked against the env's declared ``observation_space`` (see
    :func:`observation_problem`); one that breaks it raises :class:`~meta_rl.env_contract.EnvCheckError`
    naming the env, the step, the observation and the space.

    It runs inside the vector env's workers, so sync and async vectorisation behave the same.
    """

    def __init__(
        self,
        env: gym.Env,
        task_sampler: TaskSampler,
        episodes_per_trial: int = 2,
        max_episode_steps: int | None = None,
        split: str = "train",
        *,
        env_id: str | None = None,
        index: int = 0,
    ) -> None:
        super().__init__(env)
        #: The env in messages: its gymnasium id (where registered) and its class.
        self.name = f"{env_id} ({type(env.unwrapped).__name__})" if env_id else type(env.unwrapped).__name__
        self.index = index
        #: The env's own observation space (``observation_space`` is the trainer's, see the class docstring).
        self.declared_observation_space = env.observation_space
        actions = trainer_action_space(env.action_space, self.name)
        self._action_start = int(env.action_space.start) if isinstance(env.action_space, spaces.Discrete) else 0
        if self._action_start:
            self.action_space = actions
        observations = zero_based(env.observation_space)
        self._shift = observations != env.observation_space
        if self._shift:
            self.observation_space = observations
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
        self._trial_t = 0  # steps since the task began
        self._checking = True  # every step's observation is checked until the first trial ends

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.task_rng = np.random.default_rng([int(seed), _TASK_STREAM, SPLIT_STREAMS[self.split]])
        self.task_sampler(self.env, self.task_rng)
        self.tasks_sampled += 1
        self._episode, self._t, self._trial_t = 0, 0, 0
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs, "reset()", True), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action + self._action_start if self._action_start
                                                                 else action)
        info = dict(info)
        info["inner_episode"] = self._episode
        self._t += 1
        self._trial_t += 1
        if self._checking or self._shift:
            obs = self._observe(obs, None, self._checking)
        end = bool(terminated or truncated or self._t >= self.max_episode_steps)
        info["episode_end"] = end
        if not end:
            return obs, reward, False, False, info
        self._episode += 1
        if self._episode >= self.episodes_per_trial:
            self._checking = False
            return obs, reward, True, False, info  # the trial (the task) ends; the vector env resets
        self._t = 0
        obs, _ = self.env.reset()  # the next inner episode of the same task
        return self._observe(obs, f"reset() for inner episode {self._episode}", True), reward, False, False, info

    def _observe(self, obs: Any, where: str | None, check: bool) -> Any:
        """``obs`` for the trainer (see the class docstring), after checking it against the declared space where
        ``check``; ``where`` it came from (None: the current step)."""
        if check:
            problem = observation_problem(obs, self.declared_observation_space)
            if problem is not None:
                where = where or f"step {self._trial_t} of its trial (inner episode {self._episode})"
                raise EnvCheckError(
                    f"{self.name}: env {self.index} returned an observation at {where} that {problem}; the declared "
                    f"observation_space is {self.declared_observation_space}. Fix: {_OBSERVATION_FIX}."
                )
        return shift_observation(obs, self.declared_observation_space) if self._shift else obs

    def play_trial(self, baseline: Baseline, seed: int, rng: np.random.Generator, name: str = "baseline") -> float:
        """The return of one trial of the task ``reset(seed=seed)`` draws, played by ``baseline`` (see
        :meth:`GymTaskVectorEnv.reference_returns`): it sees the env's own observations and gives actions of
        the env's own action space (a ``Discrete(n, start=s)`` action is ``s + i``).

        Raises:
            ValueError: ``baseline`` gave an action outside the env's action space (named by ``name``).
        """
        obs, _ = self.reset(seed=seed)
        space, total = self.env.action_space, 0.0
        while True:
            action = baseline(self.env, shift_observation(obs, self.declared_observation_space, back=True)
                              if self._shift else obs, rng)
            if isinstance(space, spaces.Box):
                action = np.asarray(action, dtype=space.dtype)
            if not space.contains(action):
                raise ValueError(f"{self.name}: baseline {name!r} returned the action {action!r} at step "
                                 f"{self._trial_t} of a trial, which is not in the env's action space {space}; "
                                 "return an action of the env's own action_space (e.g. env.action_space.sample()).")
            obs, reward, terminated, _, _ = self.step(action - self._action_start if self._action_start else action)
            total += float(reward)
            if terminated:  # the trial's end (a TaskTrialEnv never truncates)
                return total


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _make_trial_env(env_fn: EnvFn, task_sampler: TaskSampler, episodes_per_trial: int,
                    max_episode_steps: int | None, split: str, env_id: str | None, index: int = 0) -> TaskTrialEnv:
    return TaskTrialEnv(env_fn(), task_sampler, episodes_per_trial, max_episode_steps, split, env_id=env_id,
                        index=index)


_OBSERVATION_FIX = ("return observations of the declared space (its shape and dtype; finite numbers; ints within "
                    "range for Discrete) from reset() and step(), or declare the space the env returns")
_ACTION_FIXES = {
    spaces.MultiDiscrete: "wrap the env in a gymnasium.ActionWrapper whose action_space is one "
                          "Discrete(prod(nvec)) and whose action() decodes it with np.unravel_index",
    spaces.MultiBinary: "wrap the env in a gymnasium.ActionWrapper whose action_space is Discrete(2**n) "
                        "(or Discrete(n) for one bit at a time) and whose action() decodes it",
    spaces.Box: "declare a 1-D Box with finite bounds (flatten a shaped one in a gymnasium.ActionWrapper; "
                "give an unbounded one bounds such as Box(-1, 1, (d,)) and scale the action in step())",
}


def trainer_action_space(space: spaces.Space[Any], name: str) -> spaces.Space[Any]:
    """The action space the trainer's policy acts in for an env whose action space is ``space``.

    ``Discrete(n, start=s)`` becomes ``Discrete(n)`` (:class:`TaskTrialEnv` adds ``s``); a 1-D
    Box with finite bounds stays as it is.

    Raises:
        TypeError: any other space (the message names the env ``name``, the space and the fix).
    """
    if isinstance(space, spaces.Discrete):
        return spaces.Discrete(int(space.n)) if int(space.start) else space
    if isinstance(space, spaces.Box) and len(space.shape) == 1 and np.isfinite(space.low).all() \
            and np.isfinite(space.high).all():
        return space
    fix = _ACTION_FIXES.get(type(space), "wrap the env in a gymnasium.ActionWrapper whose action_space is a "
                                         "Discrete or a 1-D Box with finite bounds")
    raise TypeError(
        f"{name}: action space {space} is not supported: the trainer's policy acts in Discrete(n) (any start) or "
        f"a 1-D Box with finite bounds. Fix: {fix}."
    )


def zero_based(space: spaces.Space[Any]) -> spaces.Space[Any]:
    """``space`` with every ``Discrete(n, start=s)`` in it (itself or a ``Dict`` entry) made ``Discrete(n)``:
    the policy one-hot encodes Discrete observations as 0..n-1."""
    if isinstance(space, spaces.Discrete) and int(space.start):
        return spaces.Discrete(int(space.n))
    if isinstance(space, spaces.Dict):
        return spaces.Dict({key: zero_based(sub) for key, sub in space.spaces.items()})
    return space


def shift_observation(obs: Any, space: spaces.Space[Any], back: bool = False) -> Any:
    """An observation of ``space`` in the terms of :func:`zero_based` ``(space)``: Discrete values less their start
    (``back``: the other way, a zero-based observation in the terms of ``space``)."""
    if isinstance(space, spaces.Discrete):
        return obs + (space.start if back else -space.start) if int(space.start) else obs
    if isinstance(space, spaces.Dict) and isinstance(obs, dict):
        return {key: shift_observation(obs[key], sub, back) for key, sub in space.spaces.items()}
    return obs


def _show(x: Any) -> str:
    """A short description of an observation: its type, dtype, shape and (abbreviated) value."""
    arr = np.asarray(x)
    text = np.array2string(arr, threshold=8, edgeitems=2, max_line_width=120) if arr.dtype != object else repr(x)
    return f"{type(x).__name__} of dtype {arr.dtype} and shape {arr.shape}: {text[:200]}"


def _box_problem(obs: Any, space: spaces.Box) -> str | None:
    arr = np.asarray(obs)
    if arr.shape != space.shape:
        return f"has shape {arr.shape}, not the Box's {space.shape} ({_show(obs)})"
    if arr.dtype.kind not in "biuf":
        return f"is not numbers ({_show(obs)})"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return f"holds NaN or inf ({_show(obs)})"
    if space.dtype.kind in "biu" and not (np.can_cast(arr.dtype, space.dtype, "same_kind")
                                           and (arr >= space.low).all() and (arr <= space.high).all()):
        return f"does not fit the Box's {space.dtype} within [{space.low.min()}, {space.high.max()}] ({_show(obs)})"
    return None


def _discrete_problem(obs: Any, space: spaces.Discrete) -> str | None:
    arr = np.asarray(obs)
    whole = arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and bool(np.isfinite(arr).all())
                                       and bool((arr == np.round(arr)).all()))
    if arr.shape != () or not whole:
        return f"is not one integer ({_show(obs)})"
    start, n = int(space.start), int(space.n)
    return _outside(int(arr), space) if not start <= int(arr) < start + n else None


def _outside(value: int, space: spaces.Discrete) -> str:
    return f"is {value}, outside the Discrete's {int(space.start)}..{int(space.start) + int(space.n) - 1}"


def observation_problem(obs: Any, space: spaces.Space[Any]) -> str | None:
    """What in ``obs`` breaks ``space`` in a way the trainer would trip over or silently misread, as words
    (None: nothing).

    A Box observation must have the Box's shape, be numbers, be finite, and (integer Boxes, e.g. images) fit
    the dtype and bounds; a float Box's bounds are not enforced (the policy does not read them). A Discrete
    one must be one integer within ``start..start + n - 1``; a Dict one must have the Dict's keys and each
    entry fit its space. Other spaces: ``space.contains(obs)``.
    """
    if isinstance(space, spaces.Box):
        return _box_problem(obs, space)
    if isinstance(space, spaces.Discrete):
        return _discrete_problem(obs, space)
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            return f"has keys {keys}, not the Dict's {sorted(space.spaces)}"
        for key, sub in space.spaces.items():
            problem = observation_problem(obs[key], sub)
            if problem is not None:
                return f"{problem} (in entry {key!r})"
        return None
    return None if space.contains(obs) else f"is not in the space ({_show(obs)})"


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


def _first_bad(obs: Any, space: spaces.Space[Any]) -> tuple[tuple[str, ...], int, Any] | None:
    """The first entry of a batched observation the trainer cannot read, as (Dict keys, env, value): a NaN or
    inf float, or a Discrete value outside ``0..n-1`` (the trainer's spaces start at 0). None: all fine."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            bad = _first_bad(obs[key], sub)
            if bad is not None:
                return (key, *bad[0]), bad[1], bad[2]
        return None
    arr = np.asarray(obs)
    if isinstance(space, spaces.Discrete):
        ok = (arr >= 0) & (arr < space.n)
    elif arr.dtype.kind == "f":
        ok = np.isfinite(arr)
    else:
        return None
    if ok.all():
        return None
    index = tuple(int(k) for k in np.argwhere(~ok)[0])
    return (), index[0], arr[index]


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
    begins. The B envs run in a ``SyncVectorEnv`` (``vectorization="sync"``) or in ``num_workers``
    worker processes that each step their share of the envs in a loop (``"async"``,
    :class:`~meta_rl.envs.worker_pool.WorkerPoolVectorEnv`: the same results as sync for the same
    seeds and actions; then ``env_fn`` and ``task_sampler`` must be picklable, e.g. defined
    at module level); the trial logic (:class:`TaskTrialEnv`) runs next to each env, so the task
    sampler is called in the process that owns the env.

    ## Action Space
    ``env.action_space`` batched: a tensor (or numpy array) of shape (B, *shape) on ``device``;
    Box actions are clipped to the bounds (NaN / inf ones raise ``ValueError`` and leave the envs
    unchanged), Discrete ones must be integers. A ``Discrete(n, start=s)`` is offered as
    ``Discrete(n)``: action ``i`` reaches the env as ``s + i``. Only ``Discrete`` and 1-D Box
    spaces with finite bounds are taken (what the trainer's policy acts in); others raise
    ``TypeError`` naming the env and the fix.

    ## Observation Space
    ``env.observation_space`` batched (Box, Discrete, Dict, ...), as tensors on ``device`` with
    the space's dtypes; a ``Discrete(n, start=s)`` (or such a Dict entry) is offered as
    ``Discrete(n)``, the env's ``s + i`` as ``i``. The observations of every reset and of each
    env's first trial are checked against the env's declared space, and on every step the float
    ones must be finite and the Discrete ones in range: a breach raises
    :class:`~meta_rl.env_contract.EnvCheckError` naming the env, the step and the observation.

    ## Rewards
    The env's rewards, as a float32 tensor (B,). A NaN or inf reward raises
    :class:`~meta_rl.env_contract.EnvCheckError` naming the env, the step and the value.

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

    ## Baselines
    ``baselines={"random": fn, "oracle": fn}`` names policies that ``meta-rl eval`` (and
    :func:`meta_rl.env_contract.reference_returns`) plays beside the agent, on exactly the tasks
    the agent's evaluation meets for the same seed (:meth:`reference_returns`). A baseline is
    ``fn(env, observation, rng) -> action``, called at every step of a trial, across its inner
    episodes: ``env`` is your env (``env_fn()``'s, with the current task set by ``task_sampler``:
    read it through ``env.unwrapped``), ``observation`` the env's own (in its declared space),
    ``rng`` a numpy Generator seeded from the trial's seed, and the action one of the env's own
    ``action_space``. The trainer never reads them.

    Args:
        env_fn: builds one env.
        task_sampler: ``(env, rng) -> None``, makes ``env`` a new task.
        num_envs: B.
        episodes_per_trial: inner episodes per task.
        max_episode_steps: the longest inner episode; default: the env's ``spec.max_episode_steps``.
        vectorization: ``"sync"`` or ``"async"``.
        split: ``"train"``, ``"val"`` or ``"test"``: separate task streams for the same seed.
        device: where the tensors live.
        env_id: the gymnasium id, for messages (:func:`register_gym_task` passes it).
        num_workers: worker processes for ``vectorization="async"`` (default ``min(num_envs,
            os.cpu_count())``; more than ``num_envs`` runs one per env); refused with ``"sync"``.
        baselines: name -> baseline policy (see Baselines above), or None.
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
        env_id: str | None = None,
        num_workers: int | None = None,
        baselines: Mapping[str, Baseline] | None = None,
    ) -> None:
        _check_positive("num_envs", num_envs)
        _check_positive("episodes_per_trial", episodes_per_trial)
        if max_episode_steps is not None:
            _check_positive("max_episode_steps", max_episode_steps)
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}.")
        if vectorization == "sync" and num_workers is not None:
            raise ValueError(f"num_workers={num_workers!r} does nothing with vectorization='sync' (the envs run in "
                             "this process); set vectorization='async' to run them in worker processes, or drop "
                             "num_workers.")
        if vectorization == "async":
            resolve_workers(num_workers, num_envs)  # its type and value, before anything is built
        check_split(split)
        if not callable(env_fn) or not callable(task_sampler):
            raise TypeError("env_fn and task_sampler must be callables: env_fn() -> gym.Env, task_sampler(env, rng).")
        self.device = env_device(device)
        self.baselines = check_baselines(baselines)
        if max_episode_steps is None:  # read it from one env's spec (this also checks env_fn early)
            probe = _make_trial_env(env_fn, task_sampler, episodes_per_trial, None, split, env_id)
            max_episode_steps = probe.max_episode_steps
            probe.close()
        make = functools.partial(_make_trial_env, env_fn, task_sampler, episodes_per_trial, max_episode_steps, split,
                                 env_id)
        self._make_trial_env = make  # builds one more trial env of the same tasks (the baselines play in it)
        fns = [functools.partial(make, index=i) for i in range(num_envs)]
        self._vec: SyncVectorEnv | WorkerPoolVectorEnv
        if vectorization == "async":
            check_picklable({"env_fn": env_fn, "task_sampler": task_sampler})
            self._vec = WorkerPoolVectorEnv(fns, num_workers)
        else:
            self._vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        #: Worker processes running the envs (0: they run in this process).
        self.num_workers = self._vec.num_workers if isinstance(self._vec, WorkerPoolVectorEnv) else 0
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
        self._action_shape = (num_envs, *(self.single_action_space.shape or ()))
        self.name: str = self._vec.get_attr("name")[0]  # the env in messages (TaskTrialEnv.name)
        self._trial_t = np.zeros(num_envs, dtype=np.int64)  # each env's steps since its task began

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
        self._trial_t[:] = 0
        self._check_step(obs, np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=np.int64))
        return _to_torch(obs, self.device), {}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        obs, reward, terminated, truncated, vinfo = self._vec.step(self._check_actions(actions))
        done = np.asarray(terminated) | np.asarray(truncated)
        self._trial_t += 1
        inner = np.asarray(vinfo.get("inner_episode", np.zeros(self.num_envs)), dtype=np.int64).copy()
        end = np.asarray(vinfo.get("episode_end", np.zeros(self.num_envs)), dtype=bool).copy()
        info: dict[str, Any] = {}
        stepped = obs  # each env's observation from this step (the new trial's first one is checked at its reset)
        if done.any():  # the reset info replaced the step info of the envs that started a new trial
            final_info = vinfo["final_info"]
            inner[done] = np.asarray(final_info["inner_episode"])[done]
            end[done] = True
            stepped = _copy(obs)
            for i in np.flatnonzero(done):
                _put(stepped, int(i), vinfo["final_obs"][i])
            info["final_obs"] = _to_torch(stepped, self.device)
            info["_final_obs"] = torch.as_tensor(done, device=self.device)
        info["inner_episode"] = torch.as_tensor(inner, device=self.device)
        info["episode_end"] = torch.as_tensor(end, device=self.device)
        self._check_step(stepped, reward, inner)
        self._trial_t[done] = 0
        return (
            _to_torch(obs, self.device),
            torch.as_tensor(np.asarray(reward, dtype=np.float32), device=self.device),
            torch.as_tensor(np.asarray(terminated, dtype=bool), device=self.device),
            torch.as_tensor(np.asarray(truncated, dtype=bool), device=self.device),
            info,
        )

    def reference_returns(self, trials: int, seed: int) -> dict[str, torch.Tensor]:
        """Each of :attr:`baselines`' return per trial, float64 (trials,), on the tasks an agent's evaluation with
        ``seed`` meets ({} without baselines).

        Trial k is the task that :func:`meta_rl.evaluation.evaluate_task` gives env ``j = k % B`` of batch
        ``i = k // B``: ``reset(seed=seed + i)`` seeds that env, and so its task rng, with ``seed + i + j``.
        The baselines play it in one more env of this one's (``env_fn()``, the same split and trial structure),
        in this process, with a numpy Generator seeded from ``seed + i + j`` and the split.
        """
        check_positive_int("trials", trials)
        check_seed(seed)
        if not self.baselines:
            return {}
        seeds = [int(seed) + k // self.num_envs + k % self.num_envs for k in range(trials)]
        env = self._make_trial_env()
        try:
            return {name: torch.tensor([env.play_trial(fn, s, _baseline_rng(s, self.split), name) for s in seeds],
                                       dtype=torch.float64)
                    for name, fn in self.baselines.items()}
        finally:
            env.close()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every sub-env (a :class:`TaskTrialEnv`; its ``.env`` is yours)."""
        return self._vec.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self._vec.get_attr(name)

    def close_extras(self, **kwargs: Any) -> None:
        """Close the copies (``terminate=True``: abandon async workers, even one stuck in a step)."""
        self._vec.close(**kwargs)

    def _check_step(self, obs: Any, reward: np.ndarray, inner: np.ndarray) -> None:
        """Every step: finite rewards, finite float observations, Discrete ones in range (a few numpy reductions
        over the batch); else an :class:`EnvCheckError` naming the env, the step and the value."""
        reward = np.asarray(reward)
        if not np.isfinite(reward).all():
            i = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise self._error(i, inner, "a reward", f"is {reward[i]}; rewards must be finite numbers",
                              "make step() return finite rewards: guard its divisions, logs and overflows, or clip "
                              "them (e.g. np.nan_to_num in a gymnasium.RewardWrapper)")
        bad = _first_bad(obs, self.single_observation_space)
        if bad is None:
            return
        keys, i, value = bad
        declared = full = self._vec.get_attr("declared_observation_space")[0]  # read only on failure
        for key in keys:
            declared = declared[key]
        if isinstance(declared, spaces.Discrete):
            problem = _outside(value + declared.start, declared)
        else:
            problem = f"holds {value}, not a finite number"
        entry = "".join(f" (in entry {key!r})" for key in keys)
        raise self._error(i, inner, "an observation", f"{problem}{entry}; the declared observation_space is {full}",
                          _OBSERVATION_FIX)

    def _error(self, i: int, inner: np.ndarray, what: str, problem: str, fix: str) -> EnvCheckError:
        t = int(self._trial_t[i])
        when = "reset()" if t == 0 else f"step {t} of its trial (inner episode {int(inner[i])})"
        return EnvCheckError(f"{self.name}: env {i} returned {what} at {when} that {problem}. Fix: {fix}.")

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


def _baseline_rng(seed: int, split: str) -> np.random.Generator:
    """A baseline's numpy Generator for the trial reset with ``seed`` in ``split`` (no global RNG)."""
    return np.random.default_rng([int(seed), _BASELINE_STREAM, SPLIT_STREAMS[split]])


def check_baselines(baselines: Any) -> dict[str, Baseline]:
    """``baselines`` as a dict of name -> baseline policy ({} for None).

    Raises:
        TypeError: not a mapping of non-empty ``str`` names to callables ``fn(env, observation, rng) -> action``.
        ValueError: an empty mapping (it would add nothing; pass None).
    """
    if baselines is None:
        return {}
    fix = 'pass e.g. baselines={"random": lambda env, obs, rng: env.action_space.sample()}'
    if not isinstance(baselines, Mapping):
        raise TypeError(f"baselines must be a dict of name -> fn(env, observation, rng) -> action, got "
                        f"{type(baselines).__name__}; {fix}.")
    if not baselines:
        raise ValueError(f"baselines={{}} names no baseline and would add nothing; pass None, or {fix}.")
    for name, fn in baselines.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"baseline names must be non-empty strings, got {name!r}; {fix}.")
        if not callable(fn):
            raise TypeError(f"baseline {name!r} must be callable fn(env, observation, rng) -> action, got "
                            f"{type(fn).__name__}; {fix}.")
    return dict(baselines)


def register_gym_task(env_id: str, env_fn: EnvFn, task_sampler: TaskSampler, *,
                      baselines: Mapping[str, Baseline] | None = None, **defaults: Any) -> None:
    """Register ``env_id`` with gymnasium as a :class:`GymTaskVectorEnv` of ``env_fn`` and ``task_sampler``.

    ``defaults`` are constructor arguments (``episodes_per_trial``, ``max_episode_steps``,
    ``vectorization``); ``gymnasium.make_vec(env_id, num_envs=B, vectorization_mode=
    "vector_entry_point", device=...)`` or the trainer (``env_module`` = the module that calls
    this, ``env_id``) builds it, and ``gymnasium.make(env_id)`` gives one trial env with numpy
    observations. ``baselines`` (name -> ``fn(env, observation, rng) -> action``, see
    :class:`GymTaskVectorEnv`) are played beside the agent by ``meta-rl eval``, on the same tasks.
    For ``vectorization="async"`` define ``env_fn`` and ``task_sampler`` at module level.
    Registering the same id again replaces it.

    ``num_workers`` is a default too, and a config's ``env_kwargs`` override any of them:
    ``meta-rl train ... env_kwargs.vectorization=async env_kwargs.num_workers=2``.

    Raises:
        TypeError: an unknown default, or ``baselines`` that is not a dict of names to callables.
    """
    allowed = {"episodes_per_trial", "max_episode_steps", "vectorization", "num_workers", "split", "device"}
    unknown = sorted(set(defaults) - allowed)
    if unknown:
        raise TypeError(f"unknown defaults {unknown}; allowed are {sorted(allowed)}.")
    checked = check_baselines(baselines) or None
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(
        id=env_id,
        entry_point=functools.partial(_single_trial_env, env_fn, task_sampler, env_id=env_id),
        vector_entry_point=functools.partial(GymTaskVectorEnv, env_fn, task_sampler, env_id=env_id,
                                             baselines=checked),
        kwargs=defaults,
    )


def _single_trial_env(env_fn: EnvFn, task_sampler: TaskSampler, episodes_per_trial: int = 2,
                      max_episode_steps: int | None = None, split: str = "train", env_id: str | None = None,
                      **_: Any) -> TaskTrialEnv:
    return TaskTrialEnv(env_fn(), task_sampler, episodes_per_trial, max_episode_steps, split, env_id=env_id)
