"""Classic policies for the CartPole tasks, played in batch on the env's own tasks and seeds.

On :class:`~meta_rl.envs.cartpole.CartPoleTaskVectorEnv`: :func:`cartpole_random` (uniformly
random pushes) and :func:`cartpole_oracle` (knows the task: LQR on its true physics,
:func:`cartpole_lqr_gain`, an upper bound). Trials end at different times, so each returns the
return of every inner episode of each env's first trial, float64 (trials, episodes_per_trial)
on the CPU (see :func:`meta_rl.envs.baseline_harness.play_inner_episodes`).
:data:`CONTROL_BASELINES` names them for ``env.reference_returns``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from meta_rl.envs.baseline_harness import Act, TrialEnv, check_run, play_inner_episodes
from meta_rl.envs.cartpole_physics import cartpole_linearization

__all__ = ["CONTROL_BASELINES", "CartPoleEnv", "cartpole_lqr_gain", "cartpole_oracle", "cartpole_random"]

_EXPECTED = "CartPoleTaskVectorEnv"


@runtime_checkable
class CartPoleEnv(TrialEnv, Protocol):
    """What the CartPole policies read of an env (:class:`~meta_rl.envs.cartpole.CartPoleTaskVectorEnv` has it)."""

    episodes_per_trial: int | None

    def tasks(self) -> dict[str, torch.Tensor]:
        """The current physics and actuator signs, (B,) tensors (the oracle reads them)."""
        ...


def cartpole_lqr_gain(
    tasks: dict[str, torch.Tensor],
    q: tuple[float, float, float, float] = (1.0, 1.0, 10.0, 1.0),
    r: float = 0.01,
    tol: float = 1e-12,
    max_iter: int = 64,
) -> torch.Tensor:
    """The infinite-horizon discrete LQR gain of every task's linearised cart-pole, batched.

    Minimises ``sum_t s_t' Q s_t + r F_t^2`` for ``s' = A s + B F`` (:func:`cartpole_linearization`).
    ``P``, the solution of the discrete Riccati equation ``P = Q + A'PA - A'PB (r + B'PB)^-1 B'PA``,
    is found by iterating the Riccati recursion in its doubling form (the structure-preserving
    doubling algorithm, Chu, Fan & Lin 2005): iteration k gives the cost-to-go of ``2^k`` steps,
    so it converges in a few dozen iterations where the plain recursion needs thousands (the
    slowest closed-loop modes of these tasks decay by about 2% a step). It stops when the largest
    change of an entry of ``P`` is below ``tol`` times its largest entry (one host read per
    iteration). The gain is ``K = (r + B'PB)^-1 B'PA`` and the control ``F = -K s``.

    Args:
        tasks: (N,) tensors ``length``, ``masspole`` and ``masscart``.
        q: the diagonal of ``Q`` over (x, x_dot, theta, theta_dot), positive.
        r: the weight of the squared force, positive.
        tol: relative convergence tolerance.
        max_iter: the most doubling iterations (``2^max_iter`` Riccati steps).

    Returns:
        float64 (N, 4) ``K``.
    """
    if not r > 0 or len(q) != 4 or not all(w > 0 for w in q):
        raise ValueError(f"need r > 0 and four positive weights q, got r={r!r}, q={q!r}.")
    a, b = cartpole_linearization(tasks)
    bm = b.unsqueeze(-1)  # (N, 4, 1)
    eye = torch.eye(4, dtype=torch.float64, device=a.device)
    a_k = a
    g_k = bm @ bm.transpose(1, 2) / r  # (N, 4, 4) B R^-1 B'
    h_k = torch.diag(torch.tensor(q, dtype=torch.float64, device=a.device)).expand_as(a).clone()  # -> P
    for _ in range(max_iter):
        w = torch.linalg.solve(eye + g_k @ h_k, a_k)  # (I + G H)^-1 A
        h_next = h_k + a_k.transpose(1, 2) @ h_k @ w
        h_next = 0.5 * (h_next + h_next.transpose(1, 2))  # symmetric against rounding
        g_k = g_k + a_k @ torch.linalg.solve(eye + g_k @ h_k, g_k) @ a_k.transpose(1, 2)
        g_k = 0.5 * (g_k + g_k.transpose(1, 2))
        a_k = a_k @ w
        done = bool(((h_next - h_k).abs().amax((1, 2)) <= tol * h_next.abs().amax((1, 2))).all())
        h_k = h_next
        if done:
            break
    bpa = bm.transpose(1, 2) @ h_k @ a  # (N, 1, 4)
    return (bpa / (r + bm.transpose(1, 2) @ h_k @ bm)).squeeze(1)  # (N, 4)


def cartpole_random(env: CartPoleEnv, seed: int = 0, trials: int = 1000) -> torch.Tensor:
    """Uniformly random pushes: float64 (trials, episodes_per_trial), the return of each inner episode.

    Like every CartPole baseline it plays ``ceil(trials / B)`` rounds of ``episode_length`` steps,
    round i from ``env.reset(seed=seed + i)``, and counts each env's first trial only.
    """
    gen = check_run(env, CartPoleEnv, _EXPECTED, seed, trials)

    def begin() -> Act:
        return lambda t, obs: torch.randint(2, (env.num_envs,), generator=gen, device=env.device)

    return play_inner_episodes(env, seed, trials, begin)


def cartpole_oracle(
    env: CartPoleEnv, seed: int = 0, trials: int = 1000, q: tuple[float, float, float, float] = (
        1.0, 1.0, 10.0, 1.0), r: float = 0.01
) -> torch.Tensor:
    """Knows the task: bang-bang pushes that follow the LQR force of the task's true physics (an upper bound).

    At each trial start the gain ``K`` of :func:`cartpole_lqr_gain` is computed from
    ``env.tasks()``; each step pushes with the action whose force ``sign * force_mag * (+-1)``
    has the sign of the LQR force ``-K s``. Returns float64 (trials, episodes_per_trial), the
    return of each inner episode (see :func:`cartpole_random`).
    """
    check_run(env, CartPoleEnv, _EXPECTED, seed, trials)

    def begin() -> Act:
        tasks = env.tasks()  # the round's tasks; steps after an env's first trial are not counted
        gain = cartpole_lqr_gain(tasks, q, r)  # (B, 4)
        sign = tasks["sign"].double()

        def act(t: int, obs: torch.Tensor) -> torch.Tensor:
            force = -(gain * obs[:, :4].double()).sum(-1)  # (B,) the LQR force
            return (force * sign > 0).long()  # action 1 pushes with +sign * force_mag

        return act

    return play_inner_episodes(env, seed, trials, begin)


CONTROL_BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "random": cartpole_random,
    "oracle": cartpole_oracle,
}
