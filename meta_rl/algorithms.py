"""The algorithms: a loss is an object with one method over a policy and a rollout.

:class:`Reinforce` (the default) is REINFORCE with advantages from a critic trained by TD(λ): GAE(λ)
advantages on the critic's values, the critic regressed on λ-returns. :class:`PPO` is the clipped
surrogate of Schulman et al. 2017 over several epochs of minibatches of tasks, using the behaviour
log-probabilities and values the rollout carries. Both return the scalar to minimise with the figures
to log; the trainer (:func:`meta_rl.train.optimize`) does the backward pass, the gradient averaging
over ranks, the clipping, the NaN guard and the optimizer step, once per minibatch. With ``compile_update`` it
calls the loss through :func:`compile_loss` (torch.compile) within :func:`compile_failures`.

The maths are pure tensor functions in :mod:`meta_rl.returns`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch

from meta_rl.config import AlgorithmConfig
from meta_rl.errors import ConfigError
from meta_rl.policy import MetaPolicy
from meta_rl.registry import Registry
from meta_rl.returns import explained_variance, first_trial_returns, gae, normalize, ppo_policy_loss, reinforce_losses
from meta_rl.rollout import Rollout

__all__ = [
    "ALGORITHMS", "PPO", "Algorithm", "LossFn", "Reinforce", "compile_failures", "compile_loss", "make_algorithm",
]

Stats = dict[str, torch.Tensor]
TermsFn = Callable[..., dict[str, torch.Tensor]]
#: An algorithm's loss: (policy, rollout) → (the loss to minimise, the figures to log).
LossFn = Callable[[MetaPolicy, Rollout], tuple[torch.Tensor, Stats]]


class Algorithm(ABC):
    """A loss over a policy and a rollout, with how many passes over a rollout it takes.

    Args:
        cfg: the algorithm section of the config (:class:`~meta_rl.config.AlgorithmConfig`).

    Attributes:
        epochs: passes over each rollout. minibatches: slices of its tasks per pass.
    """

    epochs = 1
    minibatches = 1

    def __init__(self, cfg: AlgorithmConfig) -> None:
        self.cfg, self.gamma = cfg, float(cfg.gamma)

    @abstractmethod
    def __call__(self, policy: MetaPolicy, ro: Rollout) -> tuple[torch.Tensor, Stats]:
        """The loss to minimise on ``ro`` (with gradients) and the figures to log (detached)."""

    # -- shared steps ----------------------------------------------------------------------

    def evaluate(self, policy: MetaPolicy, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy re-run on the rollout's inputs as one sequence: log π(a_t|h_t), entropy, V(s_t), each (T, B)."""
        steps, batch = ro.rewards.shape
        embed = ro.embed if ro.embed is not None else policy.encode(ro.main, (steps, batch))  # (T, B, E)
        context = policy.context(ro.extras, ro.prev_actions, ro.prev_rewards, ro.starts)  # (T, B, U)
        params, values, _ = policy(embed, context, ro.starts, ro.state0, need_state=False)  # (T, B, A), (T, B)
        return policy.log_prob(params, ro.actions), policy.entropy(params), values

    def targets(self, ro: Rollout, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE(λ) advantages and the critic's TD(λ) targets (with ``value_lambda``) from ``values`` (T, B)."""
        cfg, dones = self.cfg, ro.dones.float()
        advantages, returns = gae(ro.rewards, values.detach(), dones, ro.last_value, self.gamma, cfg.gae_lambda)
        if cfg.value_lambda != cfg.gae_lambda:  # the critic's TD(λ) target with its own λ
            returns = gae(ro.rewards, values.detach(), dones, ro.last_value, self.gamma, cfg.value_lambda)[1]
        return advantages, returns

    def combine(self, terms: Stats) -> torch.Tensor:
        """policy + value_coef · value − entropy_coef · entropy."""
        return terms["policy"] + self.cfg.value_coef * terms["value"] - self.cfg.entropy_coef * terms["entropy"]

    @staticmethod
    def stats(terms: Stats, loss: torch.Tensor, ro: Rollout, values: torch.Tensor, returns: torch.Tensor) -> Stats:
        """The figures an update logs (the critic's target moments feed its PopArt statistics, the mean reward
        the policy's credit baseline)."""
        return {
            "losses/policy": terms["policy"].detach(),
            "losses/value": terms["value"].detach(),
            "losses/total": loss.detach(),
            "losses/entropy": terms["entropy"].detach(),
            "losses/explained_variance": explained_variance(values.detach(), returns),
            "charts/return": first_trial_returns(ro.rewards, ro.dones).mean(),
            "losses/value_target_mean": returns.mean(),
            "losses/value_target_second": returns.square().mean(),
            "losses/reward_mean": ro.rewards.mean(),
        }


class Reinforce(Algorithm):
    """REINFORCE with TD(λ)-learned advantages (the default): one gradient step per rollout.

    Args:
        cfg: as :class:`Algorithm`.
        terms: the loss terms from log-probs, entropy, values, advantages and targets
            (:func:`meta_rl.returns.reinforce_losses`; tests inject faults through it).
    """

    def __init__(self, cfg: AlgorithmConfig, terms: TermsFn = reinforce_losses) -> None:
        super().__init__(cfg)
        self.terms = terms

    def __call__(self, policy: MetaPolicy, ro: Rollout) -> tuple[torch.Tensor, Stats]:
        log_probs, entropy, values = self.evaluate(policy, ro)  # (T, B) each
        advantages, returns = self.targets(ro, values)  # from this pass's values: the policy that acted
        adv = normalize(advantages) if self.cfg.normalize_advantages else advantages
        scale = policy.return_scale()  # the critic learns its targets in units of their running σ
        terms = self.terms(log_probs, entropy, values / scale, adv, returns / scale)
        loss = self.combine(terms)
        return loss, self.stats(terms, loss, ro, values, returns)


class PPO(Algorithm):
    """The clipped surrogate objective (Schulman et al. 2017) over epochs of minibatches of tasks.

    Advantages and targets come from the behaviour values the rollout carries; the ratio
    π(a|h) / π_old(a|h) uses its behaviour log-probs. With one epoch, one minibatch and a clip range
    that never binds, the policy gradient is REINFORCE's (``tests/test_algorithms.py``).

    Args:
        cfg: as :class:`Algorithm`.
        epochs: passes over each rollout.
        minibatches: slices of the rollout's tasks per pass (B must divide evenly).
        clip_range: ε of the clipped ratio.
    """

    def __init__(self, cfg: AlgorithmConfig, *, epochs: int = 4, minibatches: int = 4,
                 clip_range: float = 0.2) -> None:
        super().__init__(cfg)
        if epochs < 1 or minibatches < 1 or not clip_range > 0:
            raise ValueError(f"ppo needs epochs >= 1, minibatches >= 1 and clip_range > 0, got {epochs}, "
                             f"{minibatches}, {clip_range}; the defaults are 4, 4 and 0.2.")
        self.epochs, self.minibatches, self.clip_range = epochs, minibatches, clip_range

    def __call__(self, policy: MetaPolicy, ro: Rollout) -> tuple[torch.Tensor, Stats]:
        log_probs, entropy, values = self.evaluate(policy, ro)  # (T, B) each
        advantages, returns = self.targets(ro, ro.values)  # from the behaviour values
        adv = normalize(advantages) if self.cfg.normalize_advantages else advantages
        scale = policy.return_scale()
        terms = reinforce_losses(log_probs, entropy, values / scale, adv, returns / scale)
        terms["policy"] = ppo_policy_loss(log_probs, ro.log_probs, adv, self.clip_range)
        loss = self.combine(terms)
        return loss, self.stats(terms, loss, ro, values, returns)


AlgorithmFactory = Callable[..., Algorithm]
#: The algorithms ``algo`` names; their keyword-only arguments are the ``algo_kwargs`` options.
ALGORITHMS: Registry[AlgorithmFactory] = Registry("algorithm", "algo", "algo_kwargs")
ALGORITHMS.register("reinforce")(Reinforce)
ALGORITHMS.register("ppo")(PPO)


def make_algorithm(cfg: AlgorithmConfig, **fixed: Any) -> Algorithm:
    """The algorithm ``cfg.algo`` names, with ``cfg.algo_kwargs`` (an option it does not take is refused)."""
    return ALGORITHMS.build(cfg.algo, cfg, options=cfg.algo_kwargs, **fixed)


_EAGER = "set compile_update=false to train with the eager update (the default)"


def compile_loss(algorithm: Algorithm) -> LossFn:
    """``algorithm``'s loss under ``torch.compile`` (``compile_update``): the policy's re-run over the rollout and the
    losses become graphs, whose backward pass AOTAutograd compiles too. ``dynamic=False``: a run's rollouts keep one
    shape. Nothing is compiled until the first call (which pays the compile time); a graph break runs that part
    eagerly between graphs. Call it, and backpropagate its loss, within :func:`compile_failures`.

    Raises:
        ConfigError: torch.compile is unavailable on this platform (it refuses, e.g., a Python it does not support).
    """
    try:
        return torch.compile(algorithm.__call__, dynamic=False)
    except RuntimeError as exc:
        raise ConfigError(f"compile_update = true, but torch.compile is unavailable here ({exc}); {_EAGER}.") from exc


@contextlib.contextmanager
def compile_failures() -> Iterator[None]:
    """Where the compiler fails on a compiled loss's forward or backward pass (say inductor finds no working C++
    compiler on the CPU, or dynamo breaks), a :class:`ConfigError` that says so and how to turn it off; the errors of
    the computation itself pass through as they are.
    """
    from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError  # torch.compile imports it anyway

    try:
        yield
    except (BackendCompilerFailed, InternalTorchDynamoError) as exc:
        cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # what the compiler raised
        said = (str(cause).strip().splitlines() or [""])[0]
        raise ConfigError(f"compile_update = true, but torch.compile failed to compile the update on this platform "
                          f"({type(cause).__name__}: {said}); {_EAGER}.") from exc
