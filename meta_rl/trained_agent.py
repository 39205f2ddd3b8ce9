"""Load a trained run in one line: ``agent = meta_rl.load("runs/default")``.

:func:`load` reads a run directory's checkpoint and returns a :class:`TrainedAgent`: the policy
with its weights on the chosen device (in eval mode), the config it was trained with, and a
factory for its env (:meth:`TrainedAgent.make_env`), so that scoring it is one more line::

    agent = meta_rl.load("runs/default", device="cpu")
    result = agent.evaluate(episodes=500)                      # held-out test classes
    other = agent.evaluate(episodes=500, dataset="fashion_mnist")  # another dataset, same policy

The checkpoint records the dataset the run trained on and its content hash; an env whose dataset has
that name but other content (another machine's fonts, changed files) is refused unless
``allow_dataset_change=True``.

The policy is rebuilt from the spaces the checkpoint records; a checkpoint written before they
were recorded builds a one-task env to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gymnasium.vector import VectorEnv

from meta_rl.checkpoint import (
    CheckpointError,
    check_state_shapes,
    load_checkpoint,
    load_state,
    read_counters,
    read_dataset,
)
from meta_rl.config import ConfigError, TrainConfig, parse_overrides, resolve_device
from meta_rl.env_contract import check_same_dataset, task_length
from meta_rl.env_factory import make_vec_env
from meta_rl.evaluation import HeldOutResult, evaluate_task
from meta_rl.lifecycle import BEST_NAME, CHECKPOINT_NAME
from meta_rl.policy import MetaPolicy
from meta_rl.spaces import space_from_dict
from meta_rl.train import load_run_config, policy_for_spaces

__all__ = ["TrainedAgent", "load"]

#: What an evaluation may change: the run's task, and where and in what arithmetic the policy computes;
#: everything else describes the policy it trained.
TASK_KEYS = ("env_id", "env_module", "env_kwargs", "heldout_split", "train_split", "device", "encoder_precision")
#: The checkpoints of a run :func:`load` reads: the last one (what ``--resume`` continues) and the best held-out
#: evaluation's (written by :class:`meta_rl.callbacks.SaveBestCheckpoint`).
CHECKPOINTS = {"last": CHECKPOINT_NAME, "best": BEST_NAME}


@dataclass
class TrainedAgent:
    """A trained policy with what it needs to act.

    Attributes:
        policy: the :class:`~meta_rl.policy.MetaPolicy` with the run's weights, on ``device``, in eval mode.
        config: the run's :class:`~meta_rl.config.TrainConfig` (with any task overrides applied).
        steps: the length of one rollout (one task) the policy was built for.
        device: where the policy lives.
        checkpoint: the checkpoint's counters, config and the dataset it trained on
            (``checkpoint["counters"]["env_steps"]``, ``checkpoint["dataset"]``: ``{"name", "hash"}`` or None).
        path: the checkpoint's path.
    """

    policy: MetaPolicy
    config: TrainConfig
    steps: int
    device: torch.device
    checkpoint: dict[str, Any]
    path: Path

    def make_env(self, split: str = "test", num_envs: int = 1, *, allow_dataset_change: bool = False,
                 **env_kwargs: Any) -> VectorEnv:
        """The run's env (``env_kwargs`` change its settings, e.g. ``dataset="fashion_mnist"``) on the agent's
        device, ``num_envs`` tasks of ``split``.

        Raises:
            DatasetChangedError: the env's dataset has the name the run trained on but another content hash
                (other fonts or files), unless ``allow_dataset_change``.
        """
        cfg = self.config
        if env_kwargs:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "env_kwargs": {**cfg.env_kwargs, **env_kwargs}},
                                        source="make_env's keyword arguments")
        env = make_vec_env(cfg, split, num_envs, self.device)
        try:
            check_task_length(self, env)
            if not allow_dataset_change:
                check_same_dataset(self.checkpoint["dataset"], env, run=f"the run in {self.path.parent}",
                                   fix="Evaluate it on the data it trained on (the machine or files it used), or "
                                       "accept the change: meta-rl eval --allow-dataset-change, or "
                                       "allow_dataset_change=True in Python.")
        except (CheckpointError, ConfigError):
            env.close()
            raise
        return env

    def evaluate(self, episodes: int = 1000, *, split: str = "test", seed: int = 12345, batch: int = 250,
                 allow_dataset_change: bool = False, **env_kwargs: Any) -> HeldOutResult:
        """Accuracy by instance (classification) or return per trial (other tasks) on ``episodes`` new tasks.

        The result's common view (:class:`~meta_rl.evaluation.HeldOutResult`: ``score``, ``tasks``, ``scalars()``,
        ``table()``, ``to_json()``) is the same for every task; its type adds the task's own detail.
        ``allow_dataset_change`` scores the run on a dataset of its training name with other content (see
        :meth:`make_env`)."""
        env = self.make_env(split, min(batch, episodes), allow_dataset_change=allow_dataset_change, **env_kwargs)
        try:
            return evaluate_task(env, self.policy, episodes, seed=seed, steps=self.steps)
        finally:
            env.close()


def _recorded_spaces(recorded: dict[str, Any], cfg: TrainConfig, path: Path) -> tuple[Any, Any, int]:
    """The observation and action spaces and the task length a checkpoint records, checked.

    Raises:
        CheckpointError: a record is malformed, or its length disagrees with the config's ``rollout_steps``.
    """
    try:
        obs_space, act_space = space_from_dict(recorded["observation"]), space_from_dict(recorded["action"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {path} records malformed spaces ({type(exc).__name__}: {exc}); it is "
                              "damaged or was edited: restore it from a backup or retrain.") from exc
    steps = recorded.get("steps")
    if type(steps) is not int or steps < 1 or (cfg.rollout_steps and steps != cfg.rollout_steps):
        want = f"rollout_steps = {cfg.rollout_steps}" if cfg.rollout_steps else "a whole number >= 1"
        raise CheckpointError(f"checkpoint {path} records a task length of {steps!r} steps, expected {want}; it is "
                              "damaged or was edited: restore it from a backup or retrain.")
    return obs_space, act_space, steps


def _check_same_spaces(recorded: dict[str, Any], obs_space: Any, act_space: Any, over: dict[str, Any],
                       path: Path) -> None:
    """Raise a CheckpointError naming the space that evaluation ``over``rides changed from the trained one's."""
    for what, new in (("action", act_space), ("observation", obs_space)):
        try:
            old = space_from_dict(recorded[what])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # a malformed record: the weights' shapes are checked below
        if old != new:
            raise CheckpointError(
                f"{over} changes the task's {what} space from {old} to {new}, but the policy in {path} was trained "
                f"for {old}. Evaluate with settings that keep the spaces (e.g. env_kwargs.dataset, not n_way), or "
                "train a run on the new task."
            )


def check_task_length(agent: TrainedAgent, env: VectorEnv) -> None:
    """Raise a CheckpointError if ``env``'s tasks are not as long as the agent's policy was built for.

    The length a checkpoint records sizes the policy's memory and every rollout of an evaluation: a
    length that disagrees with the env's would score a cut-short task, or allocate for a longer one.
    """
    length = task_length(env)
    if not agent.config.rollout_steps and length > 0 and length != agent.steps:
        raise CheckpointError(
            f"the checkpoint records tasks of {agent.steps} steps, but {agent.config.env_id!r} runs tasks of "
            f"{length} steps; the checkpoint is damaged or was edited (or the env changed since training): "
            "restore it from a backup or retrain."
        )


def load(run_dir: str | Path, device: str | torch.device | None = None, *, env_module: str | None = None,
         model_module: str | None = None, overrides: list[str] | dict[str, Any] | None = None,
         checkpoint: str = "last") -> TrainedAgent:
    """The trained agent in ``run_dir`` (written by ``meta-rl train``), ready to act on ``device``.

    Args:
        run_dir: the run directory (its ``checkpoint.pt``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default: the run's own setting.
        env_module: the plug-in module that registers the run's env, if it has one (meta-rl never imports a
            module because a checkpoint names it).
        model_module: the module that registers the run's own core or encoder, if it has one (likewise).
        overrides: changes to the task (``["env_kwargs.dataset=fashion_mnist"]`` or a dict); the keys the
            policy's architecture depends on cannot change.
        checkpoint: ``"last"`` (``checkpoint.pt``) or ``"best"`` (``best.pt``: the best held-out evaluation's, which
            :class:`~meta_rl.callbacks.SaveBestCheckpoint` writes).

    Raises:
        CheckpointError: no readable checkpoint in ``run_dir``, or its weights do not fit the task.
        ConfigError: a bad device, override or ``checkpoint``, or a plug-in module not named.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint = {checkpoint!r}; use 'last' ({CHECKPOINT_NAME}, the run's latest) or 'best' "
                          f"({BEST_NAME}, the best held-out evaluation's, written by SaveBestCheckpoint).")
    path = run_dir / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.exists() and (run_dir / CHECKPOINT_NAME).is_file():
        raise CheckpointError(f"run {run_dir} has no {BEST_NAME}: a run writes it when trained with the "
                              "SaveBestCheckpoint callback (meta_rl.train.train(..., callbacks=[SaveBestCheckpoint()]))"
                              f"; load its last checkpoint with checkpoint='last'.")
    cfg = load_run_config(run_dir, env_module=env_module, model_module=model_module, checkpoint_name=path.name)
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    fixed = sorted(set(over) - set(TASK_KEYS))
    if fixed:
        raise ConfigError(
            f"{fixed} describe the trained policy and cannot change at evaluation; only the task may: "
            f"{', '.join(TASK_KEYS)} (for example env_kwargs.dataset=fashion_mnist)."
        )
    if over:
        data = cfg.to_dict()
        if "env_kwargs" in over:
            over["env_kwargs"] = {**data["env_kwargs"], **over["env_kwargs"]}
        cfg = TrainConfig.from_dict({**data, **over}, source="the evaluation overrides")
    torch_device = resolve_device(str(device) if device is not None else cfg.device)
    ckpt = load_checkpoint(path, map_location=torch_device)
    read_counters(ckpt, path)
    recorded = ckpt.get("spaces")
    if isinstance(recorded, dict) and not over:
        obs_space, act_space, steps = _recorded_spaces(recorded, cfg, path)
    else:  # an older checkpoint, or a changed task: its spaces come from a one-task env
        probe = make_vec_env(cfg, cfg.heldout_split, 1, torch_device)
        obs_space, act_space = probe.single_observation_space, probe.single_action_space
        steps = cfg.rollout_steps or task_length(probe)
        probe.close()
        if isinstance(recorded, dict):
            _check_same_spaces(recorded, obs_space, act_space, over, path)
    try:  # the weights must fit the model the records describe before that model is allocated
        with torch.device("meta"):
            check_state_shapes(policy_for_spaces(cfg, obs_space, act_space, steps), ckpt["policy"], path, "policy")
    except CheckpointError as exc:
        if not over:
            raise
        raise CheckpointError(
            f"the weights in {path} do not fit the task after {over}: {exc} Change only settings that keep the "
            "observation and action spaces (e.g. the dataset, not n_way)."
        ) from exc
    policy = policy_for_spaces(cfg, obs_space, act_space, steps).to(torch_device)
    load_state(policy, ckpt["policy"], path, "policy")
    policy.eval()
    return TrainedAgent(policy=policy, config=cfg, steps=steps, device=torch_device, path=path,
                        checkpoint={"counters": ckpt["counters"], "config": ckpt["config"],
                                    "dataset": read_dataset(ckpt, path)})
