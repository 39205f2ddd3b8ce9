"""The NaN/inf guard: no non-finite loss, gradient or parameter is ever stepped on or checkpointed.

On the CPU the verdict is read every update, before the optimizer steps ("eager"). On an
accelerator that read would be a host sync per update: the verdict then stays on the device and
is read at the next log or checkpoint (both sync anyway), unless updates are to be skipped, which
needs the verdict before the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GRAD_NORM", "LOSSES", "NonFiniteError", "NonFiniteGuard", "eager_by_default"]

#: The agent's losses checked every update (named before the gradients when diagnosing) and its gradient norm.
LOSSES = ("losses/policy", "losses/value", "losses/entropy")
GRAD_NORM = "losses/grad_norm"


class NonFiniteError(FloatingPointError):
    """A loss, gradient or parameter became NaN or inf; the bad state was not checkpointed."""

    def __init__(self, message: str, quantity: str, update: int, env_steps: int) -> None:
        super().__init__(message)
        self.quantity, self.update, self.env_steps = quantity, update, env_steps


def eager_by_default(device: torch.device, skip_nonfinite_updates: bool) -> bool:
    """Whether the guard reads its verdict to the host every update (see the module docstring)."""
    return device.type == "cpu" or skip_nonfinite_updates


def _first_bad(t: torch.Tensor) -> str:
    bad = t.detach()[~torch.isfinite(t.detach())]
    return str(float(bad[0])) if bad.numel() else "nan or inf"


class NonFiniteGuard:
    """Checks each update's losses, gradient norm and parameters; skips or stops on a non-finite one.

    Args:
        module: the model whose parameters (and gradients) are checked.
        eager: read the verdict every update (else keep it on the device until :meth:`check_deferred`).
        skip: skip a bad update instead of stopping (needs ``eager``); a bad parameter always stops.
        steps_per_update: env steps per update, to place an update in the run.
        kept: what is still intact, for the message (e.g. the last good checkpoint).
        losses: the keys of the loss terms in the stats checked every update.
        grad_norm: the key of the gradient norm in those stats (None: the model's gradients are not norm-checked).
        fix: what to tell the user to change. unit: what ``steps_per_update`` counts.
    """

    def __init__(self, module: torch.nn.Module, *, eager: bool, skip: bool, steps_per_update: int,
                 kept: Callable[[], str], device: torch.device, losses: tuple[str, ...] = LOSSES,
                 grad_norm: str | None = GRAD_NORM,
                 fix: str = "Lower learning_rate or max_grad_norm, check the env's rewards, or set "
                            "skip_nonfinite_updates=true to skip such updates.", unit: str = "env step") -> None:
        self.module, self.eager, self.skip = module, eager, skip
        self.steps_per_update, self.kept, self.fix, self.unit = steps_per_update, kept, fix, unit
        self.losses, self.grad_norm = losses, grad_norm
        self.guarded = (*losses, grad_norm) if grad_norm else losses
        self.skipped = 0
        # Deferred verdict: the first update whose check failed (-1: none) and its flags.
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._first_flags = torch.ones(len(self.guarded) + 1, dtype=torch.bool, device=device)

    def flags(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """bool (len(guarded) + 1,) on the device: each guarded quantity, then all parameters, is finite."""
        params = torch.stack([torch.isfinite(p).all() for p in self.module.parameters()]).all()
        return torch.stack([*(torch.isfinite(stats[k]).all() for k in self.guarded), params])

    def admit(self, stats: dict[str, torch.Tensor], flags: torch.Tensor, update: int) -> bool:
        """Whether the optimizer may step for ``update`` (1-based) given its (all-rank) ``flags``.

        Raises:
            NonFiniteError: eager, and the update is bad and may not be skipped.
        """
        if not self.eager:
            newly = (self._first_bad < 0) & ~flags.all()
            self._first_bad = torch.where(newly, update, self._first_bad)
            self._first_flags = torch.where(newly, flags, self._first_flags)
            return True
        if bool(flags.all()):  # the one host read per update (free on the CPU)
            return True
        quantity, value = self.diagnose(stats, flags)
        if not self.skip or quantity.startswith("parameter"):
            raise self.error(quantity, value, update)
        self.skipped += 1
        return False

    def check_deferred(self) -> None:
        """Raise for the first bad update since the start, if the verdict was deferred."""
        if self.eager:
            return
        bad_update = int(self._first_bad)  # a host read, done only where the loop syncs anyway
        if bad_update >= 0:
            quantity, value = self.diagnose(None, self._first_flags)
            raise self.error(quantity, value, bad_update)

    def check_parameters(self, update: int) -> None:
        """Before a checkpoint: the deferred verdict, then every parameter finite."""
        self.check_deferred()
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.module.parameters()]).all()):
            quantity, value = self.diagnose(None, None)
            raise self.error(quantity, value, update)

    def diagnose(self, stats: dict[str, torch.Tensor] | None, flags: torch.Tensor | None) -> tuple[str, str]:
        """Name the first non-finite quantity and its value (only on the failure path: it reads the host).

        ``stats`` None and ``flags`` given: a deferred verdict, named from the flags of that update
        (the parameters have moved on since). Both None: only the parameters are examined.
        """
        if stats is None and flags is not None:
            bad = [name for name, ok in zip((*self.guarded, "parameters"), flags.tolist()) if not ok]
            return " and ".join(bad) or "a guarded quantity", "nan or inf"
        for name, p in self.module.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return f"parameter {name}", _first_bad(p)
        if stats is not None:
            for key in self.losses:
                if not bool(torch.isfinite(stats[key]).all()):
                    return key, _first_bad(stats[key])
            for name, p in self.module.named_parameters():
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    return f"gradient of {name}", _first_bad(p.grad)
            if self.grad_norm and not bool(torch.isfinite(stats[self.grad_norm]).all()):
                return self.grad_norm, _first_bad(stats[self.grad_norm])
        return "a guarded quantity", "nan or inf"

    def error(self, quantity: str, value: str, update: int) -> NonFiniteError:
        at_steps = update * self.steps_per_update
        return NonFiniteError(
            f"{quantity} is {value} at update {update} ({self.unit} {at_steps}); training stopped and {self.kept()}: "
            f"the bad state was not saved. {self.fix}",
            quantity, update, at_steps,
        )
