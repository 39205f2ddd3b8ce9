"""The core protocol: what every recurrent core of the meta-policy gives, and the registry that names them.

A core maps time-major inputs to features, clearing its state where a task starts::

    features, state = core(embed, context, starts, state)

* ``embed``: (T, B, E) the observation embedding (the encoder's output).
* ``context``: (T, B, U) the RL² context: revealed label, previous action and reward, task-start flag.
* ``starts``: (T, B) bool, True at the first step of a task: the state is cleared before it.
* ``state``: a tuple of tensors from :meth:`Core.initial_state` or a previous call, each with the
  batch on axis 0, so ``tuple(s[idx] for s in state)`` picks tasks.
* ``features``: (T, B, ``out_dim``).

Calling it on a whole sequence equals calling it one step at a time (the step form is what a
rollout runs, the sequence form what the update runs); ``tests/test_cores.py`` checks that for
every registered core. Parts built on top of a core (the memory-read head) read its named outputs
(:meth:`Core.output_layout`), never column numbers worked out elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from meta_rl.registry import Registry

__all__ = ["CORES", "Core", "State", "make_core", "register_core"]

State = tuple[torch.Tensor, ...]


class Core(nn.Module, ABC):
    """A recurrent core (see the module docstring for the contract).

    A subclass is built as ``Core(embed_dim, context_dim, *, hidden, task_length, outputs, **options)``:
    ``hidden`` is the config's size of the core, ``task_length`` the steps of one task (a memory can size
    itself from it), ``outputs`` the optional named outputs a part built on top asks for (a core that has
    none ignores it), and ``options`` the config's ``core_kwargs``, which must be keyword-only arguments
    with defaults.

    Attributes:
        out_dim: the size of the features.
    """

    out_dim: int

    @abstractmethod
    def initial_state(self, batch: int, device: torch.device) -> State:
        """The state before a task's first step: a tuple of tensors, each (batch, ...)."""

    @abstractmethod
    def forward(
        self, embed: torch.Tensor, context: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """(T, B, E), (T, B, U), (T, B) and a state -> features (T, B, out_dim) and the state after step T.

        With ``need_state=False`` the caller does not use the returned state (a core may skip computing it).
        """

    def output_layout(self) -> dict[str, slice]:
        """Named column ranges of the features; a plain core has one, ``features``."""
        return {"features": slice(0, self.out_dim)}


CoreFactory = Callable[..., Core]
#: The registered cores, by name: ``memory``, ``gru``, ``lstm``, ``transformer`` and any a user's module adds.
CORES: Registry[CoreFactory] = Registry("core", "core", "core_kwargs", supplied=("hidden", "task_length", "outputs"))


def register_core(name: str) -> Callable[[CoreFactory], CoreFactory]:
    """Decorator: make a :class:`Core` subclass available as ``core=name``."""
    return CORES.register(name)


def make_core(
    name: str, embed_dim: int, context_dim: int, *, hidden: int, task_length: int, outputs: Sequence[str] = (),
    options: dict[str, object] | None = None,
) -> Core:
    """Build the core registered as ``name``.

    ``outputs`` are requests: a core adds those it offers and ignores the rest, and the part that asked checks
    :meth:`Core.output_layout`.

    Raises:
        ConfigError: an unknown name or option.
        TypeError: the factory built something that is not a :class:`Core`.
    """
    core = CORES.build(name, embed_dim, context_dim, hidden=hidden, task_length=task_length, outputs=tuple(outputs),
                       options=options)
    if not isinstance(core, Core):
        raise TypeError(f"core {name!r} built a {type(core).__name__}, not a meta_rl.cores.Core; subclass Core.")
    return core
