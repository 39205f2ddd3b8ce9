"""The cart-pole's equations of motion (gymnasium's ``CartPole-v1``, Barto et al. 1983), batched over tasks.

:func:`euler_step` is what :class:`~meta_rl.envs.cartpole.CartPoleTaskVectorEnv` steps;
:func:`cartpole_linearization` is that step linearised about the upright rest state, from which
the LQR oracle of :mod:`meta_rl.envs.cartpole_baselines` computes its gains.
"""

from __future__ import annotations

import torch

__all__ = ["GRAVITY", "TAU", "cartpole_linearization", "euler_step"]

GRAVITY = 9.8
TAU = 0.02  # seconds per step (explicit Euler)


def euler_step(state: torch.Tensor, force: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
    """One explicit Euler step of gymnasium's cart-pole equations, batched: (B, 4) -> (B, 4)."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    length, masspole = task["length"], task["masspole"]
    total_mass = masspole + task["masscart"]
    polemass_length = masspole * length
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + polemass_length * theta_dot.square() * sintheta) / total_mass
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * costheta.square() / total_mass)
    )
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    return torch.stack(
        [x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc], dim=-1
    )


def cartpole_linearization(tasks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cart-pole's one-step dynamics linearised about the upright rest state, per task.

    With ``s = (x, x_dot, theta, theta_dot)`` and ``F`` the force on the cart (newtons, before
    the actuator sign: the env applies ``sign * force_mag`` for action 1), the env's Euler step
    is ``s' ~ A s + B F`` near ``s = 0``: ``A = I + tau * A_c`` and ``B = tau * B_c`` for the
    Jacobians ``A_c``, ``B_c`` of the continuous equations (gymnasium's) at rest.

    Args:
        tasks: (N,) tensors ``length``, ``masspole`` and ``masscart`` (as ``env.tasks()`` gives them).

    Returns:
        float64 ``A`` (N, 4, 4) and ``B`` (N, 4).
    """
    length, masspole = tasks["length"].double(), tasks["masspole"].double()
    total = masspole + tasks["masscart"].double()
    denom = length * (4.0 / 3.0 - masspole / total)  # the thetaacc denominator at theta = 0
    theta_theta = GRAVITY / denom  # d thetaacc / d theta
    theta_force = -1.0 / (total * denom)  # d thetaacc / d F
    x_theta = -masspole * length * theta_theta / total  # d xacc / d theta
    x_force = 1.0 / total - masspole * length * theta_force / total  # d xacc / d F
    n = length.shape[0]
    a = torch.eye(4, dtype=torch.float64, device=length.device).repeat(n, 1, 1)  # (N, 4, 4)
    a[:, 0, 1] = TAU
    a[:, 1, 2] = TAU * x_theta
    a[:, 2, 3] = TAU
    a[:, 3, 2] = TAU * theta_theta
    b = torch.zeros(n, 4, dtype=torch.float64, device=length.device)
    b[:, 1] = TAU * x_force
    b[:, 3] = TAU * theta_force
    return a, b
