"""Model-Agnostic Meta-Learning (Finn et al. 2017), first- and second-order, with ``torch.func``.

The model is one of the agents' encoders with a linear head of N outputs, zero-initialised so
that every task starts from uniform predictions whatever its label permutation. The inner loop
takes ``steps`` plain gradient steps on the support loss through ``functional_call``; the outer
loop differentiates the query loss after adaptation with respect to the initial parameters,
``vmap``-ed over the tasks of a meta-batch. Second-order MAML differentiates through the inner
gradients; first-order MAML detaches them, so the meta-gradient is the query-loss gradient at the
adapted parameters.

Normalisation: ``conv4`` with batch norm is refused. Batch-norm running statistics are module
state that ``functional_call`` under ``vmap`` cannot keep per task, and batch statistics in
training mode would make a prediction depend on the other queries (transductive), which the
streaming protocol, one image at a time, cannot provide. MAML therefore uses ``conv_norm="group"``
(per-image statistics, no state) by default; ``"none"`` also works. The ``cnn``, ``seed_cnn`` and
``mlp`` encoders have no normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from meta_rl.baselines.config import BaselineConfig
from meta_rl.baselines.episodes import Episode
from meta_rl.baselines.learner import Baseline
from meta_rl.config import ConfigError
from meta_rl.encoders import make_encoder

__all__ = ["MAML", "MAMLConfig", "Params", "adapt", "adapted_outputs", "meta_gradient"]

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MAMLConfig(BaselineConfig):
    """MAML: the shared settings plus the inner loop."""

    kind: ClassVar[str] = "maml"

    conv_norm: str = "group"
    """conv4 normalisation; ``group`` or ``none`` (batch norm is refused, see the module docstring)."""
    inner_steps: int = 5
    """Inner gradient steps on the support set during meta-training."""
    inner_lr: float = 0.1
    """Inner-loop step size. Finn et al. take 0.4 on batch-normalised conv4 features; the unnormalised
    ``cnn`` encoder diverges there, and 5 steps of 0.1 train stably."""
    eval_inner_steps: int = 5
    """Inner steps when evaluating (K-shot and streaming)."""
    first_order: bool = True
    """First-order MAML (no gradient through the inner gradients); false for second-order."""
    feature_norm: bool = True
    """Standardise the encoder's features (LayerNorm without parameters) before the head. Without it the
    outer loop grows the features until the fixed-step inner loop diverges; batch norm does this job in
    Finn et al.'s conv4."""
    max_grad_norm: float = 1.0
    """Clip the meta-gradient to this global norm (0: no clipping)."""
    stream_max_support: int = 0
    """In the streaming protocol, adapt on at most the latest this many revealed images (0: all)."""
    stream_eval_episodes: int = 100
    """Streams evaluated by ``meta-rl eval`` (at most): MAML adapts afresh at every step of a stream,
    5 inner steps on up to T images for each of T steps, so streams cost far more than K-shot tasks."""

    POSITIVE: ClassVar[tuple[str, ...]] = (*BaselineConfig.POSITIVE, "inner_steps", "eval_inner_steps")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = (*BaselineConfig.NON_NEGATIVE, "stream_max_support")

    def check(self) -> None:
        super().check()
        if self.inner_lr <= 0:
            raise ConfigError(f"inner_lr must be > 0, got {self.inner_lr}.")
        if self.encoder == "conv4" and self.conv_norm == "batch":
            raise ConfigError(
                "MAML with encoder = 'conv4' cannot use conv_norm = 'batch': batch-norm running statistics "
                "are not per task under torch.func.vmap; set conv_norm = 'group' (default) or 'none'."
            )


def adapt(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
    loss_fn: LossFn = nn.functional.cross_entropy, first_order: bool = False,
) -> Params:
    """``steps`` gradient steps of ``loss_fn(model(x), y)`` from ``params``: θ ← θ - lr ∇θ L.

    Differentiable with respect to ``params`` (through the inner gradients unless ``first_order``).

    Args:
        model: the module whose forward ``functional_call`` runs (it should have no buffers).
        params: name -> tensor for every parameter of ``model``.
        x, y: one task's support inputs (M, ...) and targets (M, ...).
    """

    def support_loss(p: Params) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    for _ in range(steps):
        grads = grad(support_loss)(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: p - lr * grads[k] for k, p in params.items()}
    return params


def adapted_outputs(
    model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, *,
    steps: int, lr: float, loss_fn: LossFn = nn.functional.cross_entropy, first_order: bool = False,
) -> torch.Tensor:
    """Outputs (B, Q, ...) for the queries of B tasks, each after adapting ``params`` on its support set.

    Args:
        support_x: (B, M, ...), support_y: (B, M, ...), query_x: (B, Q, ...).
    """

    def one_task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        adapted = adapt(model, params, sx, sy, steps=steps, lr=lr, loss_fn=loss_fn, first_order=first_order)
        return functional_call(model, adapted, (qx,))

    return vmap(one_task)(support_x, support_y, query_x)


def meta_gradient(
    model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
    query_y: torch.Tensor, *, steps: int, lr: float, loss_fn: LossFn = nn.functional.cross_entropy,
    first_order: bool = False,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """The MAML meta-gradient of the mean query loss over B tasks with respect to the initial ``params``.

    Args:
        support_x: (B, M, ...), support_y: (B, M, ...), query_x: (B, Q, ...), query_y: (B, Q, ...).

    Returns:
        gradients (name -> tensor like ``params``), per-task query losses (B,), query outputs (B, Q, ...).
    """

    def one_task(p: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                 qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = adapt(model, p, sx, sy, steps=steps, lr=lr, loss_fn=loss_fn, first_order=first_order)
        out = functional_call(model, adapted, (qx,))
        return loss_fn(out, qy), out

    def objective(p: Params) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        losses, outs = vmap(one_task, in_dims=(None, 0, 0, 0, 0))(p, support_x, support_y, query_x, query_y)
        return losses.mean(), (losses.detach(), outs.detach())

    grads, (losses, outs) = grad(objective, has_aux=True)(params)
    return grads, losses, outs


class MAML(Baseline):
    """MAML on one of the agents' encoders, parameter-free feature standardisation (``feature_norm``) and a
    zero-initialised linear head of ``n_way`` outputs."""

    kind: ClassVar[str] = "maml"
    cfg: MAMLConfig

    def __init__(self, cfg: MAMLConfig, input_shape: tuple[int, int, int], device: torch.device) -> None:
        self.cfg = cfg
        encoder = make_encoder(cfg.encoder, input_shape, filters=cfg.conv_filters, hidden=cfg.encoder_hidden,
                               norm=cfg.conv_norm)
        head = nn.Linear(int(encoder.out_dim), cfg.n_way)  # type: ignore[arg-type]
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        norm: nn.Module = nn.LayerNorm(encoder.out_dim, elementwise_affine=False) if cfg.feature_norm else nn.Identity()
        self.model = nn.Sequential(encoder, norm, head).to(device)
        buffers = [name for name, _ in self.model.named_buffers()]
        if buffers:
            raise ConfigError(f"MAML needs a model without buffers, but it has {buffers}; use conv_norm='group'.")

    def _params(self) -> Params:
        return {k: v.detach() for k, v in self.model.named_parameters()}

    def compute_gradients(self, episode: Episode) -> dict[str, float]:
        cfg = self.cfg
        grads, losses, logits = meta_gradient(
            self.model, self._params(), episode.support_x, episode.support_y, episode.query_x, episode.query_y,
            steps=cfg.inner_steps, lr=cfg.inner_lr, first_order=cfg.first_order,
        )
        for name, p in self.model.named_parameters():
            p.grad = grads[name]
        accuracy = (logits.argmax(-1) == episode.query_y).float().mean()
        return {"loss": float(losses.mean()), "query_accuracy": float(accuracy)}

    def logits(self, episode: Episode) -> torch.Tensor:
        return adapted_outputs(self.model, self._params(), episode.support_x, episode.support_y, episode.query_x,
                               steps=self.cfg.eval_inner_steps, lr=self.cfg.inner_lr, first_order=True)

    def stream_scores(self, x: torch.Tensor, y: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """At step t adapt on steps < t (the latest ``stream_max_support``), then score image t.

        Novelty is ``-log p`` of the most likely revealed label under the adapted model.
        """
        if n_way != self.cfg.n_way:
            raise ValueError(f"this MAML model has {self.cfg.n_way} outputs; it cannot score {n_way}-way streams.")
        params = self._params()
        t_len = y.shape[1]
        cap = self.cfg.stream_max_support or t_len
        scores = []
        for t in range(t_len):
            query = x[:, t : t + 1]  # (B, 1, C, H, W)
            if t == 0:
                out = functional_call(self.model, params, (query.flatten(0, 1),)).unsqueeze(1)  # (B, 1, N)
            else:
                lo = max(0, t - cap)
                out = adapted_outputs(self.model, params, x[:, lo:t], y[:, lo:t], query,
                                      steps=self.cfg.eval_inner_steps, lr=self.cfg.inner_lr, first_order=True)
            scores.append(out[:, 0])
        logits = torch.stack(scores, 1)  # (B, T, N)
        onehot = nn.functional.one_hot(y, n_way)  # (B, T, N)
        revealed = (onehot.cumsum(1) - onehot) > 0  # (B, T, N)
        logp = logits.log_softmax(-1).masked_fill(~revealed, float("-inf"))  # (B, T, N)
        best = logp.amax(-1)  # (B, T)
        novelty = torch.where(torch.isfinite(best), -best, torch.full_like(best, float("inf")))
        return logits, novelty
