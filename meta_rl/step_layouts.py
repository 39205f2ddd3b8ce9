"""Per-policy caches of a policy step made for one input layout: SB3's recorded step (:mod:`meta_rl.traced_step`)
and the rollout's CUDA graph (:mod:`meta_rl.graphed_step`) keep theirs the same way.

A cache maps a policy (weakly: its entries go with it) to its entries by layout key, each entry ``(made, named)``:
what was made for the layout, and the objects whose ``id`` the key holds, kept alive with it so that no other module
or tensor can take such an ``id`` while the entry is in use.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["MAX_LAYOUTS", "LayoutCache", "layout_entries", "module_tensors"]

T = TypeVar("T")
LayoutCache = weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[T, Any]]]
#: Layouts kept per policy: a new layout beyond these starts the policy's entries afresh.
MAX_LAYOUTS = 8


def layout_entries(cache: LayoutCache[T], policy: Any, key: tuple[Any, ...]) -> dict[tuple[Any, ...], tuple[T, Any]]:
    """``policy``'s entries in ``cache``, emptied first where ``key`` is new and :data:`MAX_LAYOUTS` are there."""
    entries = cache.setdefault(policy, {})
    if key not in entries and len(entries) >= MAX_LAYOUTS:
        entries.clear()
    return entries


def module_tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Every parameter and buffer each module holds itself (not its children's), in order."""
    return [t for m in modules for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
