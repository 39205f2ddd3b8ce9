"""Batched rollouts of a meta-policy in a torch-native VectorEnv, shared by training and evaluation.

The step loop keeps everything on the env's device: actions are sampled on the device from
a seeded ``torch.Generator``, results go into preallocated tensors, and nothing is read back
to the host (no ``.item()``, no branching on tensor values).

Where the env refuses a step with a ``ValueError`` (say a NaN action of a Gaussian head), the rollout
looks back, on that failure path only, for a non-finite reward or observation the env gave earlier:
where there is one, the env's own output made the action NaN, and the error says so
(:class:`~meta_rl.env_contract.EnvCheckError` naming the env, the step and the quantity).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from gymnasium.vector import VectorEnv

from meta_rl.cores import State
from meta_rl.env_contract import EnvCheckError, env_name, known_images, task_length
from meta_rl.graphed_step import StepInputs, StepOutputs, acting_step, graphed_step
from meta_rl.policy import MetaPolicy

__all__ = ["Rollout", "collect"]


@dataclass(kw_only=True)
class Rollout:
    """T steps of B tasks, time-major.

    Attributes:
        main: (T, B, *obs) main observations (what the encoder reads), or None if the
            observation has no part for the encoder.
        embed: (T, B, E) encoder output for the whole rollout, computed once (with gradients
            when asked for), or None.
        extras: observation entries other than the main one, each (T, B, ...).
        actions: (T, B) or (T, B, A). prev_actions / prev_rewards: the RL² inputs (T, B, ...).
        rewards, dones: (T, B); dones marks the last step of a task.
        starts: (T, B) bool, the first step of a task.
        labels, instance: (T, B) the true label and its instance index where the env's info
            gives them (else -1 and 0).
        inner_episode: (T, B) the index of the episode within a multi-episode trial where the
            env's info gives it (``"inner_episode"``), else 0.
        log_probs: (T, B) log π(a_t|h_t) of the behaviour policy, as it acted.
        values: (T, B) the behaviour critic's V(s_t), as it acted.
        last_value: (B,) V(s_T) for bootstrapping.
        state0: the core state before the first step (batch on axis 0 of every tensor).
    """

    main: torch.Tensor | None
    embed: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    actions: torch.Tensor
    prev_actions: torch.Tensor
    prev_rewards: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    starts: torch.Tensor
    labels: torch.Tensor
    instance: torch.Tensor
    inner_episode: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    last_value: torch.Tensor
    state0: State

    def select(self, tasks: torch.Tensor | slice) -> Rollout:
        """The rollout of the tasks ``tasks`` indexes (a minibatch of tasks); the encoding is kept only
        where it was computed without a graph (a graph can be backpropagated once)."""

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x[:, tasks]

        embed = None if self.embed is None or self.embed.requires_grad else pick(self.embed)
        return Rollout(
            main=None if self.main is None else pick(self.main), embed=embed,
            extras={k: pick(v) for k, v in self.extras.items()}, actions=pick(self.actions),
            prev_actions=pick(self.prev_actions), prev_rewards=pick(self.prev_rewards), rewards=pick(self.rewards),
            dones=pick(self.dones), starts=pick(self.starts), labels=pick(self.labels), instance=pick(self.instance),
            inner_episode=pick(self.inner_episode), log_probs=pick(self.log_probs), values=pick(self.values),
            last_value=self.last_value[tasks], state0=tuple(s[tasks] for s in self.state0),
        )

    def correct(self) -> torch.Tensor:
        """(T, B) bool: the action equals the true label (False where no label is known)."""
        if self.actions.shape != self.labels.shape:  # continuous actions: nothing to compare
            return torch.zeros_like(self.labels, dtype=torch.bool)
        return (self.actions == self.labels) & (self.labels >= 0)


def _split(policy: MetaPolicy, obs: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    main = policy.main_obs(obs)
    extras = {k: obs[k] for k in policy.context_keys} if isinstance(obs, dict) else {}
    return main, extras


def _first_nonfinite(rewards: torch.Tensor, main: torch.Tensor | None,
                     extras: dict[str, torch.Tensor]) -> tuple[str, int, int, float] | None:
    """The earliest non-finite reward (T', B) or current observation the policy read, as (what, step, env, value),
    steps counted from 1 after reset (None: all finite). Reads the host: for failure paths only."""
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        t, i = (int(k) for k in torch.nonzero(bad)[0])
        return "a reward", t + 1, i, float(rewards[t, i])
    parts = {"an observation": main} if main is not None else {}
    parts.update({f"an observation (entry {key!r})": v for key, v in extras.items()})
    for what, x in parts.items():
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            index = torch.nonzero(~torch.isfinite(x))[0]
            return what, rewards.shape[0], int(index[0]), float(x[tuple(index)])
    return None


def _step(env: VectorEnv, action: torch.Tensor, rewards: torch.Tensor, main: torch.Tensor | None,
          extras: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``env.step(action)``; where the env refuses it, blame a non-finite reward or observation it gave before.

    Args:
        rewards: the rewards of the steps so far (t, B). main, extras: the observation the action answers.
    """
    try:
        return env.step(action)
    except ValueError as exc:
        culprit = _first_nonfinite(rewards, main, extras)
        if culprit is None:
            raise
        what, t, i, value = culprit
        when = "reset()" if t == 0 else f"step {t} after reset()"
        raise EnvCheckError(
            f"{env_name(env)}: env {i} returned {what} at {when} that is {value}, so the policy's next action was "
            f"not finite either and step() refused it ({exc}). Fix: make the env return finite rewards and "
            "observations (guard its divisions, logs and overflows, or clip them)."
        ) from exc


def collect(
    env: VectorEnv,
    policy: MetaPolicy,
    steps: int,
    generator: torch.Generator,
    *,
    reset_seed: int | None,
    deterministic: bool = False,
    embed_with_grad: bool = False,
    graphed: bool = False,
) -> Rollout:
    """Reset ``env`` with ``reset_seed``, then run ``steps`` steps of ``policy`` in it.

    Where the env knows its tasks' image streams in advance (``episode_images()``) and the
    rollout stays within one task, the encoder runs once on the whole stream; with
    ``embed_with_grad`` that encoding keeps its graph so the update can reuse it.

    Each step's sampling noise is drawn from ``generator`` (nothing where ``deterministic``: the mode), then the
    acting step (:func:`~meta_rl.graphed_step.acting_step`) runs. With ``graphed`` it runs as a
    :class:`~meta_rl.graphed_step.GraphedStep` (the ``cuda_graphs`` setting): replayed as a CUDA graph on CUDA,
    eagerly on its static buffers elsewhere; the rollout is the same either way.
    """
    obs, _ = env.reset(seed=reset_seed)
    device = policy.value_head.weight.device
    b = env.num_envs
    state0 = policy.initial_state(b, device)
    state = state0
    main, extras = _split(policy, obs)

    embed: torch.Tensor | None = None
    mains: torch.Tensor | None = None
    stream = known_images(env) if policy.image_input and 0 < steps <= task_length(env) else None
    if stream is not None:
        mains = stream[:, :steps].transpose(0, 1)  # (B, T+1, ...) -> (T, B, C, H, W): the images the task will show
        with torch.set_grad_enabled(embed_with_grad):
            embed = policy.encode(mains, (steps, b))  # (T, B, E)
    elif main is not None:
        mains = torch.empty((steps, *main.shape), dtype=main.dtype, device=device)  # (T, B, *obs)

    action_shape, action_dtype = policy.head.shape, policy.head.dtype
    extra_buf = {k: torch.empty((steps, *v.shape), dtype=v.dtype, device=device) for k, v in extras.items()}
    actions = torch.empty((steps, b, *action_shape), dtype=action_dtype, device=device)
    prev_actions = torch.empty_like(actions)
    prev_rewards = torch.empty(steps, b, device=device)
    rewards = torch.empty(steps, b, device=device)
    dones = torch.empty(steps, b, dtype=torch.bool, device=device)
    starts_buf = torch.empty(steps, b, dtype=torch.bool, device=device)
    labels = torch.full((steps, b), -1, dtype=torch.int64, device=device)
    instance = torch.zeros(steps, b, dtype=torch.int64, device=device)
    inner_episode = torch.zeros(steps, b, dtype=torch.int64, device=device)
    log_probs = torch.empty(steps, b, device=device)
    values = torch.empty(steps, b, device=device)

    prev_a = torch.zeros((b, *action_shape), dtype=action_dtype, device=device)
    prev_r = torch.zeros(b, device=device)
    starts = torch.ones(b, dtype=torch.bool, device=device)
    run: Callable[[StepInputs], StepOutputs] = functools.partial(acting_step, policy)
    with torch.no_grad():
        for t in range(steps):
            if embed is None and mains is not None and main is not None:
                mains[t] = main
            for k, v in extras.items():
                extra_buf[k][t] = v
            prev_actions[t], prev_rewards[t], starts_buf[t] = prev_a, prev_r, starts
            noise = None if deterministic else policy.noise(b, generator)  # (B, A)
            x = StepInputs(extras, prev_a, prev_r, starts, state, noise, main=None if embed is not None else main,
                           embed=None if embed is None else embed[t])
            if graphed and t == 0:
                run = graphed_step(policy, x).step
            actions[t], log_probs[t], values[t], state = run(x)
            action = actions[t]  # (the step's own output may be a buffer the next step overwrites)
            obs, reward, terminated, truncated, info = _step(env, action, rewards[:t], main, extras)
            main, extras = _split(policy, obs)
            done = terminated | truncated
            rewards[t], dones[t] = reward, done
            if "label" in info:
                labels[t] = info["label"]
            if "instance" in info:
                instance[t] = info["instance"]
            if "inner_episode" in info:
                inner_episode[t] = info["inner_episode"]
            prev_a, prev_r, starts = action, reward.float(), done
        _, last_value, _ = policy.step(extras, prev_a, prev_r, starts, state, main=main, need_state=False)
    return Rollout(
        main=mains, embed=embed, extras=extra_buf, actions=actions, prev_actions=prev_actions,
        prev_rewards=prev_rewards, rewards=rewards, dones=dones, starts=starts_buf, labels=labels, instance=instance,
        inner_episode=inner_episode, log_probs=log_probs, values=values, last_value=last_value, state0=state0,
    )
