"""A checker for ``gymnasium.vector.VectorEnv`` implementations (gymnasium only checks single envs).

It works for torch-native envs (tensor observations on a device) and numpy ones alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from meta_rl.env_contract import EnvCheckError, env_name, task_length

__all__ = ["EnvCheckError", "check_finite_actions", "check_vector_env"]


def check_finite_actions(
    env: Any, actions: torch.Tensor | np.ndarray, space: spaces.Space[Any], batched: bool = True
) -> None:
    """Refuse NaN / inf Box actions with a ValueError naming the env, the entry and the fix.

    Costs one ``isfinite(...).all()`` read (a single host sync for a CUDA tensor); the offending
    index is found only on failure.

    Args:
        env: the env stepped (its class name and gymnasium id go into the message).
        actions: the actions, (B, *space.shape) if ``batched`` else ``space.shape``.
        space: the single-env action space (a ``Box``).
        batched: axis 0 indexes the envs.
    """
    assert isinstance(space, spaces.Box), space
    finite = torch.isfinite(actions).all() if isinstance(actions, torch.Tensor) else np.isfinite(actions).all()
    if bool(finite):
        return
    arr = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
    index = tuple(int(k) for k in np.argwhere(~np.isfinite(arr))[0])
    component = index[1:] if batched else index
    where = [f"env {index[0]}"] if batched else []
    if component:
        where.append(f"component {component[0] if len(component) == 1 else component}")
    raise ValueError(
        f"{env_name(env)}: actions[{', '.join(map(str, index))}] is {arr[index]} ({', '.join(where)}); actions must be "
        f"finite values within the Box [{space.low[component]}, {space.high[component]}]. "
        "Check the policy's outputs; clip or sanitize the actions (e.g. torch.nan_to_num) before step()."
    )


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in _leaves(x[k])]
    if isinstance(x, (tuple, list)):
        return [leaf for v in x for leaf in _leaves(v)]
    return [x]


def _to_numpy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_numpy(v) for v in x)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _equal(a: Any, b: Any) -> bool:
    la, lb = _leaves(_to_numpy(a)), _leaves(_to_numpy(b))
    return len(la) == len(lb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb))


def _fail(rule: str, fix: str) -> EnvCheckError:
    return EnvCheckError(f"{rule}. Fix: {fix}")


def _sample_actions(env: VectorEnv, rng: np.random.Generator, like: Any) -> Any:
    """Random valid actions, as tensors on the env's device when the env speaks torch."""
    space = env.single_action_space
    seeds = rng.integers(0, 2**31 - 1, size=env.num_envs)
    acts = []
    for s in seeds:
        space.seed(int(s))
        acts.append(space.sample())
    batch = np.stack(acts)
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(batch, device=like.device)
    return batch


def _check_batch(name: str, x: Any, env: VectorEnv, dtype_kind: str, device: torch.device | None) -> None:
    arr = _to_numpy(x)
    if arr.shape != (env.num_envs,):
        raise _fail(f"{name} has shape {arr.shape}, expected ({env.num_envs},)", f"return one {name} per env")
    if dtype_kind == "bool" and arr.dtype != np.bool_:
        raise _fail(f"{name} has dtype {arr.dtype}, expected bool", f"return {name} as a bool array/tensor")
    if dtype_kind == "float" and not np.issubdtype(arr.dtype, np.floating):
        raise _fail(f"{name} has dtype {arr.dtype}, expected a float dtype", "return rewards as floats")
    if device is not None and isinstance(x, torch.Tensor) and x.device != device:
        raise _fail(f"{name} is on {x.device}, the observations on {device}", "keep every tensor on one device")


def _check_obs(obs: Any, env: VectorEnv, where: str) -> torch.device | None:
    leaves = _leaves(obs)
    devices = {leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor)}
    if len(devices) > 1:
        raise _fail(f"{where}: observation tensors are on several devices {devices}", "keep them on one")
    env_device = getattr(env, "device", None)
    if devices and env_device is not None and torch.device(env_device) not in devices:
        raise _fail(f"{where}: observations are on {devices} but env.device is {env_device}",
                    "create observations on env.device")
    np_obs = _to_numpy(obs)
    if not env.observation_space.contains(np_obs):
        spaces = env.observation_space
        raise _fail(f"{where}: the observation is not in env.observation_space {spaces}",
                    "check shapes, dtypes (e.g. uint8 images) and bounds")
    return next(iter(devices)) if devices else None


def check_vector_env(
    make_env: Callable[[], VectorEnv],
    *,
    steps: int | None = None,
    seed: int = 123,
) -> None:
    """Check a VectorEnv against the contract gymnasium's vector API documents.

    Checks: batched spaces match the single spaces (``batch_space``); ``metadata`` declares
    ``autoreset_mode``; observations lie in the space with the declared dtypes; rewards,
    terminations and truncations have shape (num_envs,) and the right dtypes; all tensors share
    the env's device; ``reset(seed=s)`` is deterministic (two envs, same seed, same actions give
    the same trajectories) and different seeds differ; autoreset follows the declared mode; the
    task changes between episodes (a second episode under the same actions differs).

    Args:
        make_env: builds a fresh env each call (the check needs two).
        steps: how many steps to roll; default: enough for two episodes where the env has an
            ``episode_length`` attribute, else 200.
        seed: the seed used for the runs.

    Raises:
        EnvCheckError: naming the broken rule and the fix.
    """
    env = make_env()
    mode = _check_declarations(env)
    episode_length = task_length(env) or None
    n_steps = steps if steps is not None else (2 * episode_length + 1 if episode_length else 200)
    first = _rollout(env, seed, seed, n_steps, mode)
    env.close()
    second_env = make_env()
    second = _rollout(second_env, seed, seed, n_steps, mode)
    if not all(_equal(a, b) for a, b in zip(first, second)):
        raise _fail("two envs reset with the same seed and given the same actions diverged",
                    "draw all randomness from a generator seeded in reset(seed=...), never global RNG")
    other = _rollout(second_env, seed + 1, seed, n_steps, mode)
    if _equal(first[0], other[0]) and _equal(first[1:], other[1:]):
        raise _fail("reset(seed=s) and reset(seed=s+1) gave identical trajectories", "use the seed in reset()")
    _check_new_tasks(first, episode_length, n_steps)
    second_env.close()


def _check_declarations(env: Any) -> AutoresetMode:
    """The env is a VectorEnv declaring its autoreset mode, with batched spaces from ``batch_space``."""
    if not isinstance(env, VectorEnv):
        raise _fail(f"make_env returned {type(env).__name__}, not a gymnasium.vector.VectorEnv",
                    "subclass gymnasium.vector.VectorEnv")
    mode = env.metadata.get("autoreset_mode")
    if not isinstance(mode, AutoresetMode):
        raise _fail(f"metadata['autoreset_mode'] is {mode!r}", "declare an AutoresetMode in the class metadata")
    for what, single, batched in (
        ("observation", env.single_observation_space, env.observation_space),
        ("action", env.single_action_space, env.action_space),
    ):
        expected = batch_space(single, env.num_envs)
        if expected != batched:
            raise _fail(f"{what}_space {batched} is not batch_space(single_{what}_space, num_envs) = {expected}",
                        f"set self.{what}_space = batch_space(self.single_{what}_space, num_envs)")
    return mode


def _rollout(e: VectorEnv, reset_seed: int, action_seed: int, n_steps: int, mode: AutoresetMode) -> list[Any]:
    """[obs0, (obs, reward, terminated, truncated) per step] under seeded random actions, each step checked."""
    obs, info = e.reset(seed=reset_seed)
    if not isinstance(info, dict):
        raise _fail(f"reset() returned info of type {type(info).__name__}", "return a dict")
    device = _check_obs(obs, e, "reset()")
    rng = np.random.default_rng(action_seed)
    trace: list[Any] = [obs]
    for i in range(n_steps):
        actions = _sample_actions(e, rng, _leaves(obs)[0])
        obs, reward, terminated, truncated, info = e.step(actions)
        device = _check_obs(obs, e, f"step {i}") or device
        _check_step(e, reward, terminated, truncated, info, device, mode)
        trace.append((obs, reward, terminated, truncated))
        if (_to_numpy(terminated) | _to_numpy(truncated)).all():
            # Replay the same action stream in the next episode, so that the new-task check
            # compares episodes that differ only by the task.
            rng = np.random.default_rng(action_seed)
    return trace


def _check_step(e: VectorEnv, reward: Any, terminated: Any, truncated: Any, info: Any, device: torch.device | None,
                mode: AutoresetMode) -> None:
    _check_batch("reward", reward, e, "float", device)
    _check_batch("terminated", terminated, e, "bool", device)
    _check_batch("truncated", truncated, e, "bool", device)
    if not isinstance(info, dict):
        raise _fail(f"step() returned info of type {type(info).__name__}", "return a dict")
    done = _to_numpy(terminated) | _to_numpy(truncated)
    if done.any() and mode == AutoresetMode.SAME_STEP and "final_obs" not in info:
        raise _fail("an episode ended under SAME_STEP autoreset but info has no 'final_obs'",
                    "put the terminal observation in info['final_obs'] and reset in the same step")


def _check_new_tasks(trace: list[Any], episode_length: int | None, n_steps: int) -> None:
    """Episodes end within ``episode_length``, and two consecutive ones under the same actions differ."""
    ends = [i for i, item in enumerate(trace[1:], start=1) if _to_numpy(item[2]).any() or _to_numpy(item[3]).any()]
    if episode_length and not ends:
        raise _fail(f"no episode ended within {n_steps} steps although episode_length={episode_length}",
                    "terminate or truncate episodes after episode_length steps")
    if len(ends) >= 2 and episode_length:
        ep1 = trace[1 : ends[0] + 1]
        ep2 = trace[ends[0] + 1 : ends[1] + 1]
        if _equal([x[0] for x in ep1], [x[0] for x in ep2]) and _equal([x[1] for x in ep1], [x[1] for x in ep2]):
            raise _fail("two consecutive episodes showed the same observations and rewards",
                        "sample a new task at every reset")


def check_registered_vector_env(env_id: str, num_envs: int = 4, **kwargs: Any) -> None:
    """Run :func:`check_vector_env` on ``gymnasium.make_vec(env_id, num_envs, **kwargs)``."""

    def make() -> VectorEnv:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)

    check_vector_env(make)
