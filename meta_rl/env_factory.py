"""The env factory: ``env_id`` (and the module that registers it) to a torch-native VectorEnv.

The core builds envs only through Gymnasium's registry, so it never imports the environments
(:mod:`meta_rl.envs`); they register themselves, and plug-ins name their module in ``env_module``.
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import VectorEnv

from meta_rl.config import ConfigError, TrainConfig
from meta_rl.registry import import_plugin

__all__ = ["make_vec_env"]


def make_vec_env(cfg: TrainConfig, split: str, num_envs: int, device: torch.device) -> VectorEnv:
    """Build ``cfg.env_id`` as a torch-native VectorEnv on ``device`` with ``num_envs`` tasks.

    ``cfg.env_module`` is imported first so that it can register the id. ``split`` and
    ``device`` are passed where the env's constructor takes them.
    """
    if cfg.env_module:
        import_plugin(cfg.env_module, "env_module")
    try:
        spec = gym.spec(cfg.env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"env_id = {cfg.env_id!r} is not registered ({exc}); check env_id and env_module.") from exc
    if spec.vector_entry_point is None:
        raise ConfigError(
            f"env {cfg.env_id!r} has no vector_entry_point: the trainer needs a torch-native VectorEnv. "
            "Register one with gymnasium.register(..., vector_entry_point=...)."
        )
    entry = spec.vector_entry_point
    creator: Any = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    accepted = inspect.signature(creator).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        allowed = sorted(k for k in accepted if k not in ("self", "num_envs"))
        unknown = sorted(set(cfg.env_kwargs) - set(allowed))
        if unknown:
            raise ConfigError(
                f"env_kwargs {unknown} are not arguments of {cfg.env_id!r}; allowed keys are: {', '.join(allowed)}"
                + (" (set num_envs as a top-level key)." if "num_envs" in unknown else ".")
            )
    kwargs = dict(cfg.env_kwargs)
    if "split" in accepted:
        kwargs.setdefault("split", split)
    if "device" in accepted:
        kwargs.setdefault("device", device)
    try:
        env = gym.make_vec(cfg.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    except (ValueError, TypeError, gym.error.Error) as exc:  # the env's own checks: n_way, dataset, split, ...
        raise ConfigError(
            f"cannot create env {cfg.env_id!r} for split {split!r} with env_kwargs {cfg.env_kwargs}: {exc}"
        ) from exc
    return env
