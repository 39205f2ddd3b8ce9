"""The rollout's acting step on static buffers, replayed as a CUDA graph (``cuda_graphs``).

:func:`acting_step` is one step of the policy for B envs as a rollout takes it: the context, core and heads
(:meth:`~meta_rl.policy.MetaPolicy.step`, which also encodes the observation unless the rollout encoded the
whole image stream up front), the action sampled from a given noise, its log-probability and the value.
On a GPU that is a few hundred small kernels, and at small B launching them is most of a step's time.

:class:`GraphedStep` owns static buffers for the step's inputs (the observation's encoder part or its
encoding, its context entries, the previous action and reward, the task starts, the noise) and the core's
state. On CUDA it captures :func:`acting_step` once as a ``torch.cuda.CUDAGraph``; each :meth:`GraphedStep.step`
copies the inputs into the buffers and replays the graph, which writes the action, log-probability and value
into static outputs and the core's new state into its state buffers. The env's step stays outside. On the CPU
the same buffers are used and the step runs eagerly, so what the buffers do can be tested without a GPU.

Random numbers: the graph draws none. The rollout draws each step's noise from its seeded generator outside
(:meth:`~meta_rl.policy.MetaPolicy.noise`) and the graph takes it as an input, so a graphed rollout draws and
samples exactly what the eager one does.

What a graph replays: the kernels the step launched while it was captured, on the tensors it used then. The
optimizer, ``load_state_dict`` and the running statistics update the parameters and buffers in place, which the
replay sees; a step is captured afresh for each layout (B, the inputs' shapes and dtypes, with or without
noise, the modules and their training mode, the storage of every parameter and buffer), so a parameter moved
or replaced (``.to()``, assigning ``.data``) is captured again. A step that reads the host (``.item()``, a
branch on a tensor's value) cannot be captured: :class:`~meta_rl.errors.ConfigError` says so. A Python side
effect in a module's ``forward`` (a counter) happens at capture only.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from meta_rl.cores import State
from meta_rl.errors import ConfigError
from meta_rl.step_layouts import LayoutCache, layout_entries, module_tensors

if TYPE_CHECKING:
    from meta_rl.policy import MetaPolicy

__all__ = ["GraphedStep", "StepInputs", "StepOutputs", "acting_step", "graphed_step"]

#: Eager steps run on a side stream before a capture (lazy initialisation of cuBLAS/cuDNN must not be captured).
WARMUP_STEPS = 3


class StepInputs(NamedTuple):
    """What one acting step of B envs reads.

    Attributes:
        extras: the observation's context entries (``policy.context_keys``), (B, ...) each.
        prev_action: (B,) or (B, A). prev_reward: (B,). starts: (B,) bool, a task starts.
        state: the core's state before the step.
        noise: the sampling's draw (B, A) from :meth:`~meta_rl.policy.MetaPolicy.noise`; None: act by the mode.
        main: (B, *obs) the encoder's part of the observation, or None (``embed`` given, or no encoder input).
        embed: (B, E) its encoding made beforehand, or None.
    """

    extras: dict[str, torch.Tensor]
    prev_action: torch.Tensor
    prev_reward: torch.Tensor
    starts: torch.Tensor
    state: State
    noise: torch.Tensor | None
    main: torch.Tensor | None
    embed: torch.Tensor | None


class StepOutputs(NamedTuple):
    """What one acting step gives: ``action`` (B,) or (B, A), its ``log_prob`` (B,), the ``value`` (B,) and the
    core's new ``state``."""

    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    state: State


def acting_step(policy: MetaPolicy, x: StepInputs) -> StepOutputs:
    """One acting step of ``policy`` for B envs (call it without gradients)."""
    params, value, state = policy.step(x.extras, x.prev_action, x.prev_reward, x.starts, x.state, main=x.main,
                                       embed=x.embed)  # (B, A), (B,)
    action = policy.sample_from_noise(params, x.noise)
    return StepOutputs(action, policy.log_prob(params, action), value, state)


def _tensors(x: StepInputs) -> Iterator[torch.Tensor | None]:
    """The inputs' tensors in a fixed order (None where an optional input is absent)."""
    yield from x.extras.values()
    yield from (x.prev_action, x.prev_reward, x.starts)
    yield from x.state
    yield from (x.noise, x.main, x.embed)


def _shapes(x: StepInputs) -> list[tuple[tuple[int, ...], torch.dtype] | None]:
    return [None if t is None else (tuple(t.shape), t.dtype) for t in _tensors(x)]


def _like(x: torch.Tensor) -> torch.Tensor:
    """A contiguous buffer of ``x``'s shape, dtype and device."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _like_optional(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else _like(x)


class GraphedStep:
    """:func:`acting_step` on static buffers: captured once as a CUDA graph and replayed on CUDA, eager elsewhere.

    Args:
        policy: the policy (held weakly: a graph kept for a policy does not keep it alive).
        example: inputs of the layout the buffers take (their values are not read here).
        capture: capture a CUDA graph at the first step (the buffers' device must be CUDA); else run eagerly.
    """

    def __init__(self, policy: MetaPolicy, example: StepInputs, capture: bool) -> None:
        self._policy = weakref.ref(policy)
        self.inputs = StepInputs(
            {k: _like(v) for k, v in example.extras.items()}, _like(example.prev_action), _like(example.prev_reward),
            _like(example.starts), tuple(map(_like, example.state)), _like_optional(example.noise),
            main=_like_optional(example.main), embed=_like_optional(example.embed),
        )
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: StepOutputs | None = None  # the static outputs, from the first step on

    @torch.no_grad()
    def step(self, x: StepInputs) -> StepOutputs:
        """Copy ``x`` into the buffers, run the step and return its outputs.

        The outputs are the step's static buffers, overwritten by the next step: copy what must outlive it. The
        returned state is the state buffer, which the next step takes without a copy where it is passed back.
        """
        for buffer, value in zip(_tensors(self.inputs), _tensors(x), strict=True):
            if buffer is None or value is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                if buffer is value:  # an optional input absent from both
                    continue
                raise ValueError(f"a graphed step for inputs {_shapes(self.inputs)} was given {_shapes(x)}; get the "
                                 "step for these inputs from graphed_step(policy, inputs).")
            if buffer is not value:
                buffer.copy_(value)
        if not self.capture:  # eagerly, into static outputs as a graph's
            out = self._run()
            if self.outputs is None:
                self.outputs = StepOutputs(out.action.clone(), out.log_prob.clone(), out.value.clone(), out.state)
            else:
                for static, new in zip(self.outputs[:3], out[:3]):
                    static.copy_(new)
            return self.outputs
        if self.graph is None:
            self.graph, self.outputs = self._capture()
        self.graph.replay()
        assert self.outputs is not None
        return self.outputs

    def _run(self) -> StepOutputs:
        """The step on the buffers, eagerly; the new state is written into the state buffers."""
        policy = self._policy()
        if policy is None:
            raise ReferenceError("the policy this graphed step was made for no longer exists.")
        out = acting_step(policy, self.inputs)
        if len(out.state) != len(self.inputs.state) or any(
                new.shape != old.shape or new.dtype != old.dtype for new, old in zip(out.state, self.inputs.state)):
            raise ConfigError(
                f"cuda_graphs needs a core whose state keeps its shapes and dtypes from step to step; core "
                f"{type(policy.core).__name__} took {[(tuple(s.shape), s.dtype) for s in self.inputs.state]} and gave "
                f"{[(tuple(s.shape), s.dtype) for s in out.state]}. Set cuda_graphs=false for this core.")
        for old, new in zip(self.inputs.state, out.state):
            old.copy_(new)
        return out._replace(state=self.inputs.state)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, StepOutputs]:
        """Warm up on a side stream, then capture :meth:`_run` from the state the buffers hold now."""
        device = self.inputs.starts.device
        saved = [s.clone() for s in self.inputs.state]  # the warm-up steps advance the state: restored after each

        def restore() -> None:
            for s, v in zip(self.inputs.state, saved):
                s.copy_(v)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._run()
                restore()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:  # thread_local: CUDA calls of other threads (a logger's, a watchdog's) do not break the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self._run()
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise ConfigError(
                f"cuda_graphs: the policy's acting step could not be captured as a CUDA graph ({exc}). A part of it "
                "reads the host while it runs (.item(), .tolist(), a branch on a tensor's value) or makes a CPU "
                "tensor; make that part stay on the device, or set cuda_graphs=false.") from exc
        return graph, outputs


#: Graphed steps per policy (weakly keyed), by layout, each with the modules and tensors its layout names.
_GRAPHS: LayoutCache[GraphedStep] = weakref.WeakKeyDictionary()


def _layout(policy: MetaPolicy, x: StepInputs) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What a graph is valid for (the inputs' shapes and dtypes, which optional inputs there are, the extras' keys;
    the policy's modules and their training mode; the identity and storage of their parameters and buffers; the
    device), and what that key names, kept alive with the graph (no other module or storage can then take an
    ``id`` or address of the key; the policy itself is the cache's key)."""
    modules: list[nn.Module] = list(policy.modules())
    tensors = module_tensors(modules)
    inputs = tuple(None if t is None else (t.shape, t.dtype) for t in _tensors(x))
    key = (inputs, tuple(x.extras), tuple(map(id, modules)), tuple(m.training for m in modules),
           tuple((id(t), t.data_ptr()) for t in tensors), policy.value_head.weight.device)
    return key, (modules[1:], [t.detach() for t in tensors])  # detached aliases keep the storages captured


def graphed_step(policy: MetaPolicy, x: StepInputs) -> GraphedStep:
    """The :class:`GraphedStep` of ``policy`` for inputs laid out as ``x`` (made on first use, kept with the policy):
    captured as a CUDA graph where the policy is on CUDA, eager on static buffers elsewhere."""
    key, named = _layout(policy, x)
    graphs = layout_entries(_GRAPHS, policy, key)
    if key not in graphs:
        graphs[key] = (GraphedStep(policy, x, capture=policy.value_head.weight.device.type == "cuda"), named)
    return graphs[key][0]
