"""What meta-rl's trainer, rollouts and evaluation need to know about a task's vector env.

A :class:`MetaVectorEnv` is a torch-native gymnasium ``VectorEnv`` of B tasks that declares, as
class-level attributes in the manner of ``VectorEnv``'s own (``metadata``, ``num_envs``):

- ``episode_length``: the steps of one task (a whole trial), or None where tasks have no fixed length;
- ``episodes_per_trial``: the inner episodes of a task, reported per step in ``info["inner_episode"]``,
  or None where a task is one episode;
- ``request_action``: the action that asks for the true label (active classification), or None;
- ``reference_returns(trials, seed)``: the classic baselines' return per trial on the tasks an
  agent evaluated with the same seed meets (bandit indices, PSRL, a task-knowing oracle), where the env has them;
- ``episode_images()``: every image the current tasks will show, where they are known at reset
  (None otherwise), so a rollout can encode a whole task in one batched pass;
- ``dataset_name`` and ``dataset_hash``: the dataset its tasks are drawn from and the content hash of its
  images (:class:`HasDataset`), where it has one, so a checkpoint records what a run trained on and an
  evaluation or a resume on other content under the same name is refused (:func:`check_same_dataset`).

The parts are also protocols (:class:`HasEpisodeLength`, ...), so a plug-in ``VectorEnv`` that does not subclass
:class:`MetaVectorEnv` but has, say, an ``episode_length`` attribute is read the same way; an env
with none of them declares nothing (the functions below return 0 or None).

None of these choose a learning setting: the discount, the heads and their gains are the same for every env
(issue 32), so a user's plain ``gymnasium.Env`` is learned as the suite's tasks are. What an env declares here
sizes rollouts, speeds up encoding and feeds evaluation.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import torch
from gymnasium.vector import VectorEnv

from meta_rl.errors import ConfigError

__all__ = [
    "DatasetChangedError", "EnvCheckError", "HasDataset", "HasEpisodeLength", "HasReferenceReturns", "HasTrials",
    "KnowsImages", "MetaVectorEnv", "check_same_dataset", "dataset_record", "env_name", "known_images",
    "label_request_action", "reference_returns", "task_length", "trial_episodes",
]


class EnvCheckError(ValueError):
    """An env breaks the VectorEnv contract or its own declared spaces (an observation outside them, a NaN
    reward); the message names the env, the rule, the value and how to fix it.

    :mod:`meta_rl.envs.checker` raises it for what :func:`~meta_rl.envs.checker.check_vector_env` finds, and
    the trainer's rollouts and the gymnasium adapter for what they meet while training.
    """


def env_name(env: object) -> str:
    """``env``'s class name and, where it has a spec, its gymnasium id, for messages: ``"PointNav (meta_rl/...)"``."""
    spec = getattr(env, "spec", None)
    return type(env).__name__ + (f" ({spec.id})" if spec is not None else "")


@runtime_checkable
class HasEpisodeLength(Protocol):
    """Declares the steps of one task (None: no fixed length)."""

    episode_length: int | None


@runtime_checkable
class HasTrials(Protocol):
    """Declares the inner episodes of a task (reported per step in ``info["inner_episode"]``)."""

    episodes_per_trial: int | None


@runtime_checkable
class KnowsImages(Protocol):
    """Knows at reset every image its current tasks will show."""

    def episode_images(self) -> torch.Tensor | None: ...


@runtime_checkable
class HasReferenceReturns(Protocol):
    """Plays classic baselines on its own tasks."""

    def reference_returns(self, trials: int, seed: int) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class HasDataset(Protocol):
    """Draws its tasks from a dataset it names, with the content hash of that dataset's images (16 hex digits)."""

    dataset_name: str
    dataset_hash: str


class DatasetChangedError(ConfigError):
    """A run meets other content under the dataset name it trained on (other fonts, changed files)."""


class MetaVectorEnv(VectorEnv):
    """A vector env of B meta-learning tasks (see the module docstring for the attributes it declares)."""

    episode_length: int | None = None
    episodes_per_trial: int | None = None
    request_action: int | None = None
    device: torch.device = torch.device("cpu")

    def episode_images(self) -> torch.Tensor | None:
        """uint8 (B, T + 1, C, H, W): the images the current tasks will show, or None if not known ahead."""
        return None


def task_length(env: object) -> int:
    """Steps in one task of ``env`` (0: not declared)."""
    return int(env.episode_length or 0) if isinstance(env, HasEpisodeLength) else 0


def trial_episodes(env: object) -> int:
    """Inner episodes per task of ``env`` (0: not a multi-episode trial env)."""
    return int(env.episodes_per_trial or 0) if isinstance(env, HasTrials) else 0


def known_images(env: object) -> torch.Tensor | None:
    """The images ``env``'s current tasks will show, where it knows them at reset."""
    return env.episode_images() if isinstance(env, KnowsImages) else None


def label_request_action(env: object) -> int | None:
    """The action with which an agent asks ``env`` for the true label (None: the env has none)."""
    action = getattr(env, "request_action", None)
    return None if action is None else int(action)


def reference_returns(env: object, trials: int, seed: int) -> dict[str, torch.Tensor]:
    """Baseline name -> float64 (trials,) return per trial on ``env``'s tasks for ``seed`` ({} where it has none).

    The tasks are those :func:`meta_rl.evaluation.evaluate_task` meets with the same seed and
    ``num_envs``: batch i starts from ``env.reset(seed=seed + i)``.
    """
    return env.reference_returns(trials, seed) if isinstance(env, HasReferenceReturns) else {}


def dataset_record(env: object) -> dict[str, str] | None:
    """``{"name": ..., "hash": ...}`` of the dataset ``env``'s tasks come from (None where it declares none)."""
    name, digest = getattr(env, "dataset_name", None), getattr(env, "dataset_hash", None)
    if not isinstance(name, str) or not isinstance(digest, str):
        return None
    if not re.fullmatch(r"[0-9a-f]{16}", digest):
        raise EnvCheckError(f"{type(env).__name__}.dataset_hash = {digest!r}; a checkpoint records 16 lowercase hex "
                            "digits (meta_rl.data.content_hash gives them): return content_hash(...) of the data, "
                            "or no dataset_hash.")
    return {"name": name, "hash": digest}


def check_same_dataset(trained: dict[str, str] | None, env: object, *, run: str, fix: str) -> dict[str, str] | None:
    """Refuse ``env`` where its dataset has the name the run ``trained`` on but other content; return its record.

    Another dataset name is a deliberate change (say ``env_kwargs.dataset=fashion_mnist``) and passes,
    as does an env or a run with no record.

    Args:
        trained: the record (:func:`dataset_record`) the run's checkpoint holds, or None.
        env: the env the run is about to meet.
        run: the run, for the message (its checkpoint's path).
        fix: what the user can do, for the message.

    Raises:
        DatasetChangedError: naming the dataset, both hashes, the likely causes and ``fix``.
    """
    now = dataset_record(env)
    if trained is None or now is None or now["name"] != trained["name"] or now["hash"] == trained["hash"]:
        return now
    name = now["name"]
    raise DatasetChangedError(
        f"dataset {name!r} has content hash {now['hash']} here, but {run} was trained on {name!r} with content hash "
        f"{trained['hash']}: the same name holds other images (for 'glyphs-system', other fonts installed under "
        "/usr/share/fonts; for 'glyphs', another matplotlib's fonts; for a folder or file source, changed files; or "
        f"another env_kwargs.data_seed), so the results would not be comparable. {fix}"
    )
