"""One step of a meta-policy for B envs, traced once per input layout and run by TorchScript: SB3's ``predict``.

A step (encode the observation, build the RL² context, run the core and the heads) is a few hundred small
tensor operations; at B = 1, as SB3's ``evaluate_policy`` steps one env, nearly all of its time is Python
calling them one by one. :func:`policy_step` records the step once with ``torch.jit.trace`` for each layout
of inputs (B, the observation's entries, the state's shapes and dtypes, the policy's device and modules)
and replays the recording, which runs the same operations on the same parameters (shared, so training or
``load_state_dict`` after the trace is seen) without the Python in between. The replay runs without
TorchScript's optimising passes (no fusion), so it computes exactly what the eager step does.

A recording replays the operations the step ran when it was recorded: a branch on a tensor's value, or a
side effect in Python (a counter in a module's forward), is not replayed. The shipped parts (every module
class of ``meta_rl`` and ``torch``) branch only on shapes, which the layout fixes, so a policy made of them is
recorded; a policy with a module of another package (a core or encoder of yours) steps eagerly, as does a
layout whose recording fails or whose first outputs differ from the eager step's on the same inputs.
``torch.jit.trace`` is deprecated as of torch 2.13; where it is gone, recording fails and every step is eager.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import nn

from meta_rl.cores import State
from meta_rl.step_layouts import LayoutCache, layout_entries, module_tensors

__all__ = ["policy_step"]

# The policy is typed Any here: meta_rl.policy imports sb3_adapter, which imports this module.
MetaPolicy = Any

#: Recordings per policy (weakly keyed: a policy's recordings go with it), by input layout (None: step eagerly),
#: each with the modules and tensors its layout names.
_RECORDINGS: LayoutCache[torch.jit.ScriptModule | None] = weakref.WeakKeyDictionary()
#: Packages whose module classes record faithfully (they branch on shapes only; tests/test_sb3_predict.py).
_RECORDABLE = ("meta_rl.", "torch.")


class _Step(nn.Module):
    """The policy's step (:meth:`~meta_rl.policy.MetaPolicy.step`) as a module of flat tensor inputs, which
    ``torch.jit.trace`` takes.

    Inputs: ``prev_action`` (B, ...), ``prev_reward`` (B,), ``starts`` (B,), the observation's context entries
    (``policy.context_keys`` order), the encoder's part where there is one, then the core's state tensors.
    Outputs: the action distribution's parameters (B, A), then the core's new state tensors.
    """

    def __init__(self, policy: MetaPolicy, has_main: bool) -> None:
        super().__init__()
        self.policy = policy
        self.has_main = has_main

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        policy = self.policy
        prev_action, prev_reward, starts = inputs[:3]
        at = 3 + len(policy.context_keys)
        extras = dict(zip(policy.context_keys, inputs[3:at]))
        main = inputs[at] if self.has_main else None
        state = tuple(inputs[at + int(self.has_main):])
        params, _, core = policy.step(extras, prev_action, prev_reward, starts, state, main=main)
        return (params, *core)


def _layout(policy: MetaPolicy, modules: list[nn.Module], inputs: tuple[torch.Tensor, ...]
            ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What a recording is valid for (the input shapes and dtypes; the identity of the policy's modules, parameters
    and buffers; their device and dtype), and what that key names, to be kept alive with the recording (so that no
    other module or tensor can take an ``id`` of the key while it is in use; the policy itself is the cache's key)."""
    tensors = module_tensors(modules)
    weight = policy.value_head.weight
    key = (tuple((t.shape, t.dtype) for t in inputs), tuple(map(id, modules)), tuple(map(id, tensors)),
           weight.device, weight.dtype)
    return key, (modules[1:], tensors)


def _record(step: _Step, inputs: tuple[torch.Tensor, ...], modules: list[nn.Module]
            ) -> tuple[torch.jit.ScriptModule | None, tuple[torch.Tensor, ...]]:
    """The recording of ``step`` on ``inputs`` (None where it is not faithful) and the eager step's outputs."""
    eager = step(*inputs)
    if not all(type(m).__module__.startswith(_RECORDABLE) for m in modules):
        return None, eager
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape comparisons: the layout fixes them
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit; without it: eager
            recording = torch.jit.trace(step, inputs, check_trace=False)
        with torch.jit.optimized_execution(False):
            replayed = recording(*inputs)
    except Exception:  # whatever does not record runs eagerly
        return None, eager
    same = len(replayed) == len(eager) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(replayed, eager))
    return (recording if same else None), eager


def policy_step(policy: MetaPolicy, modules: list[nn.Module], prev_action: torch.Tensor, prev_reward: torch.Tensor,
                starts: torch.Tensor, extras: list[torch.Tensor], main: torch.Tensor | None,
                state: State) -> tuple[torch.Tensor, State]:
    """The action distribution's parameters (B, A) and the core's new state after one step of ``policy`` for B envs.

    Call it under ``torch.no_grad()`` with the policy in the mode it should step in (SB3's ``predict``: eval).

    Args:
        modules: ``list(policy.modules())`` (a recording is valid for these modules and their tensors).
        prev_action: (B,) or (B, A) the previous actions. prev_reward: (B,). starts: (B,) bool, a task starts.
        extras: the observation's context entries, (B, ...) each, in ``policy.context_keys`` order.
        main: (B, *obs) the encoder's part of the observation, or None.
        state: the core's state for the B envs.
    """
    inputs = (prev_action, prev_reward, starts, *extras, *(() if main is None else (main,)), *state)
    key, named = _layout(policy, modules, inputs)
    recordings = layout_entries(_RECORDINGS, policy, key)
    if key not in recordings:
        recording, out = _record(_Step(policy, main is not None), inputs, modules)
        recordings[key] = (recording, named)
    else:
        recording = recordings[key][0]
        if recording is None:
            out = _Step(policy, main is not None)(*inputs)
        else:
            with torch.jit.optimized_execution(False):
                out = recording(*inputs)
    return out[0], tuple(out[1:])
