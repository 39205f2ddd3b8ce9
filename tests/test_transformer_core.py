"""The causal Transformer core: step/sequence agreement, task cuts, causality, batch-first state, registry, grads."""

from __future__ import annotations

import pytest
import torch

from meta_rl.cores import CORES, TransformerCore, make_core
from meta_rl.cores.base import State
from meta_rl.errors import ConfigError

E, U, HIDDEN, TASK = 5, 4, 16, 20
STEPS, BATCH = 12, 3


def assert_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float64 rounding (atol 1e-10)."""
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0.0)


def make(max_len: int = 0) -> TransformerCore:
    """A small float64 core (2 layers, 2 heads) with fixed weights."""
    torch.manual_seed(0)
    return TransformerCore(E, U, hidden=HIDDEN, task_length=TASK, layers=2, heads=2, max_len=max_len).double()


def inputs(steps: int = STEPS, batch: int = BATCH, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (T, B, E) embeddings and (T, B, U) contexts in float64."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(steps, batch, E, generator=g, dtype=torch.float64),
            torch.randn(steps, batch, U, generator=g, dtype=torch.float64))


def task_starts(steps: int = STEPS) -> torch.Tensor:
    """(T, 3): element 0 starts at step 0 only; 1 at 0 and mid-sequence (5); 2 continues, then starts at 7 and 8."""
    starts = torch.zeros(steps, BATCH, dtype=torch.bool)
    starts[0, 0] = starts[0, 1] = starts[5, 1] = True
    starts[7, 2] = starts[8, 2] = True
    return starts


def setup(max_len: int = 0) -> tuple[TransformerCore, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The core and inputs most tests use: ``make(max_len)``, ``inputs()`` and ``task_starts()``."""
    core = make(max_len)
    return (core, *inputs(), task_starts())


def fresh(core: TransformerCore) -> State:
    """An empty state for BATCH elements on the CPU."""
    return core.initial_state(BATCH, torch.device("cpu"))


def step_by_step(core: TransformerCore, e: torch.Tensor, u: torch.Tensor, starts: torch.Tensor,
                 state: State) -> tuple[torch.Tensor, State]:
    """Feed the steps one at a time (the acting form), carrying the state."""
    outs = []
    for t in range(e.shape[0]):
        out, state = core(e[t : t + 1], u[t : t + 1], starts[t : t + 1], state)
        outs.append(out)
    return torch.cat(outs), state


def valid_cache(state: State, capacity: int) -> list[torch.Tensor]:
    """The cache entries that hold steps of the current task (slot j < min(count, capacity))."""
    keys, values, count = state
    ok = torch.arange(capacity).view(1, -1) < count.clamp(max=capacity).view(-1, 1)  # (B, C)
    return [keys.transpose(1, 2)[ok], values.transpose(1, 2)[ok]]


@pytest.mark.parametrize("max_len", [0, 4])
def test_step_form_equals_sequence_form(max_len: int) -> None:
    """max_len = 0: tasks fit the cache; max_len = 4: they overflow it (a 4-step sliding window in both forms)."""
    core, e, u, starts = setup(max_len)
    with torch.no_grad():
        seq, seq_state = core(e, u, starts, fresh(core))
        step, step_state = step_by_step(core, e, u, starts, fresh(core))
    assert seq.shape == (STEPS, BATCH, HIDDEN) and seq.dtype == torch.float64
    assert_exact(step, seq)
    assert torch.equal(seq_state[2], step_state[2]) and seq_state[2].tolist() == [12, 7, 4]
    for a, b in zip(valid_cache(seq_state, core.capacity), valid_cache(step_state, core.capacity)):
        assert_exact(a, b)


@pytest.mark.parametrize("max_len", [0, 4])
def test_two_calls_equal_one(max_len: int) -> None:
    core = make(max_len=max_len)
    e, u = inputs(steps=18)
    starts = task_starts(steps=18)
    starts[14, 0] = True
    with torch.no_grad():
        whole, whole_state = core(e, u, starts, fresh(core))
        first, state = core(e[:6], u[:6], starts[:6], fresh(core))
        second, state = core(e[6:], u[6:], starts[6:], state)
        # The state after both calls continues like the state after one.
        e2, u2 = inputs(steps=5, seed=2)
        starts2 = torch.zeros(5, BATCH, dtype=torch.bool)
        after_whole, _ = core(e2, u2, starts2, whole_state)
        after_split, _ = core(e2, u2, starts2, state)
    assert_exact(torch.cat([first, second]), whole)
    assert_exact(after_split, after_whole)
    assert torch.equal(state[2], whole_state[2])


def test_tasks_are_cut() -> None:
    """A previous task's inputs, in this call or in the state, do not reach the steps after a task start."""
    core, e, u, starts = setup()
    with torch.no_grad():
        out, _ = core(e, u, starts, fresh(core))
        e2, u2 = e.clone(), u.clone()
        e2[:5, 1] += 3.0  # element 1's first task (steps 0-4)
        u2[:8, 2] -= 2.0  # element 2's tasks before its start at step 8
        out2, _ = core(e2, u2, starts, fresh(core))
        # A state full of another task's steps is ignored where the call begins with a start.
        _, busy = core(*inputs(seed=3), torch.zeros(STEPS, BATCH, dtype=torch.bool), fresh(core))
        out3, _ = core(e, u, starts, busy)
    assert not torch.allclose(out2[:5, 1], out[:5, 1])
    assert_exact(out2[5:, 1], out[5:, 1])
    assert_exact(out2[8:, 2], out[8:, 2])
    assert_exact(out2[:, 0], out[:, 0])
    assert_exact(out3[:, :2], out[:, :2])  # elements 0 and 1 start at step 0
    assert_exact(out3[7:, 2], out[7:, 2])  # element 2 continued the busy state until 7
    assert not torch.allclose(out3[:7, 2], out[:7, 2])


def test_causal() -> None:
    core, e, u, starts = setup()
    state = fresh(core)
    with torch.no_grad():
        out, _ = core(e, u, starts, state)
        e2 = e.clone()
        e2[6] += 1.0
        out2, _ = core(e2, u, starts, state)
    assert torch.equal(out2[:6], out[:6])
    assert not torch.allclose(out2[6], out[6])
    assert not torch.allclose(out2[7:, 0], out[7:, 0])  # a later step of the same task sees it


def test_state_has_batch_first() -> None:
    core, e, u, starts = setup()
    with torch.no_grad():
        _, state = core(e[:7], u[:7], starts[:7], fresh(core))
        assert all(s.shape[0] == BATCH for s in state)
        full, _ = core(e[7:], u[7:], starts[7:], state)
        idx = torch.tensor([2, 0])
        part, _ = core(e[7:, idx], u[7:, idx], starts[7:, idx], tuple(s[idx] for s in state))
    assert_exact(part, full[:, idx])


def test_built_through_the_registry() -> None:
    assert "transformer" in CORES
    assert CORES.options("transformer") == {"layers": 2, "heads": 4, "ff_mult": 2, "max_len": 0}
    core = make_core("transformer", E, U, hidden=HIDDEN, task_length=TASK, options={"layers": 1, "heads": 2})
    assert isinstance(core, TransformerCore) and core.out_dim == HIDDEN
    assert (core.layers, core.heads, core.capacity) == (1, 2, TASK)
    assert core.output_layout() == {"features": slice(0, HIDDEN)}
    state = core.initial_state(2, torch.device("cpu"))
    assert [s.shape for s in state] == [(2, 1, TASK, 2, 8), (2, 1, TASK, 2, 8), (2,)]
    out, _ = core(torch.randn(3, 2, E), torch.randn(3, 2, U), torch.ones(3, 2, dtype=torch.bool), state)
    assert out.shape == (3, 2, HIDDEN) and out.dtype == torch.float32
    with pytest.raises(ConfigError, match="window"):
        make_core("transformer", E, U, hidden=HIDDEN, task_length=TASK, options={"window": 3})
    with pytest.raises(ValueError, match="max_len"):
        make_core("transformer", E, U, hidden=HIDDEN, task_length=0)
    with pytest.raises(ValueError, match="even"):
        make_core("transformer", E, U, hidden=HIDDEN, task_length=TASK, options={"heads": 16})


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    core = TransformerCore(E, U, hidden=HIDDEN, task_length=TASK, layers=2, heads=2)
    e, u = (x.float() for x in inputs())
    out, _ = core(e, u, task_starts(), fresh(core), need_state=False)
    out.pow(2).sum().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_need_state_false_and_meta_shapes() -> None:
    core, e, u, starts = setup()
    state = fresh(core)
    with torch.no_grad():
        out, _ = core(e, u, starts, state)
        lazy, same = core(e, u, starts, state, need_state=False)
    assert torch.equal(lazy, out) and same is state
    meta = torch.device("meta")
    shaped = TransformerCore(E, U, hidden=HIDDEN, task_length=TASK, heads=2).to(meta)
    out, new = shaped(torch.empty(STEPS, BATCH, E, device=meta), torch.empty(STEPS, BATCH, U, device=meta),
                      torch.empty(STEPS, BATCH, dtype=torch.bool, device=meta), shaped.initial_state(BATCH, meta))
    assert out.shape == (STEPS, BATCH, HIDDEN) and out.is_meta
    assert [s.shape for s in new] == [s.shape for s in shaped.initial_state(BATCH, meta)]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    core, e, u, starts = setup()
    with torch.no_grad():
        out, _ = core(e, u, starts, fresh(core))
        gpu = core.cuda()
        dev = torch.device("cuda")
        seq, _ = gpu(e.cuda(), u.cuda(), starts.cuda(), gpu.initial_state(BATCH, dev))
        step, _ = step_by_step(gpu, e.cuda(), u.cuda(), starts.cuda(), gpu.initial_state(BATCH, dev))
    torch.testing.assert_close(seq.cpu(), out, atol=1e-9, rtol=0.0)
    torch.testing.assert_close(step.cpu(), out, atol=1e-9, rtol=0.0)
