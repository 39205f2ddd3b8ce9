"""``compile_update``: the update's loss under torch.compile matches the eager one, trains, checkpoints and resumes,
and a platform where torch.compile is unavailable or fails is told so with the way to turn it off.

Compiling on a CPU is slow (about 25 s for the first graph of a process on a cold inductor cache): every test here
uses one tiny config, a GRU core (fewer graphs than the memory core), on 4 bandit tasks of 10 pulls, so the module
compiles its graphs once (the module-scoped run) and the other compiled calls find them in inductor's cache.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo

from meta_rl.algorithms import Algorithm, compile_loss, make_algorithm
from meta_rl.config import TrainConfig
from meta_rl.distributed import World
from meta_rl.env_contract import task_length
from meta_rl.errors import ConfigError
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import Rollout, collect
from meta_rl.train import CHECKPOINT_NAME, build_policy, gradients, make_vec_env, train

PULLS, TASKS = 10, 4  # Bandit-k5-n10: a task is 10 pulls
STEPS_PER_UPDATE = PULLS * TASKS
#: A compiled update agrees with the eager one to float32 rounding: inductor fuses and reorders the arithmetic.
RTOL, ATOL = 1e-4, 1e-6


def _config(**changes: Any) -> TrainConfig:
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", num_envs=TASKS, encoder="mlp", encoder_hidden=[8], core="gru",
                      hidden=8, total_env_steps=2 * STEPS_PER_UPDATE, log_every=1, eval_every=0, log_to=["csv"],
                      device="cpu", torch_threads=1, compile_update=True)
    return dataclasses.replace(cfg, **changes).validate()


def _graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    """A 2-update run with ``compile_update = true``: its directory, its result and the graphs it compiled."""
    run_dir = tmp_path_factory.mktemp("compiled") / "run"
    before = _graphs()
    result = train(_config(), run_dir, progress=False)
    return run_dir, result, _graphs() - before


def _one_update(cfg: TrainConfig) -> tuple[MetaPolicy, torch.optim.Optimizer, Algorithm, Rollout]:
    """A policy, its Adam, the algorithm and a rollout of the run's shape (the policy re-encodes it in the loss)."""
    env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, torch.device("cpu"))
    try:
        steps = task_length(env)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            policy = build_policy(cfg, env, steps)
        ro = collect(env, policy, steps, torch.Generator().manual_seed(0), reset_seed=0)
    finally:
        env.close()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    return policy, optimizer, make_algorithm(cfg), dataclasses.replace(ro, embed=None)


def test_a_compiled_run_trains_checkpoints_and_resumes(compiled_run: tuple[Path, dict[str, Any], int]) -> None:
    run_dir, result, graphs = compiled_run
    assert graphs >= 1  # the run's updates went through torch.compile
    assert result["updates"] == 2 and result["env_steps"] == 2 * STEPS_PER_UPDATE
    assert (run_dir / CHECKPOINT_NAME).is_file()
    assert json.loads((run_dir / "config.json").read_text())["compile_update"] is True
    # Resumed compiled, then eagerly: the switch changes how the loss is computed, not what is learned.
    resumed = train(_config(total_env_steps=3 * STEPS_PER_UPDATE), run_dir, resume=True, progress=False)
    assert resumed["updates"] == 3
    eager = train(_config(total_env_steps=4 * STEPS_PER_UPDATE, compile_update=False), run_dir, resume=True,
                  progress=False)
    assert eager["updates"] == 4 and eager["env_steps"] == 4 * STEPS_PER_UPDATE
    saved = torch.load(run_dir / CHECKPOINT_NAME, weights_only=False)
    assert all(bool(torch.isfinite(p).all()) for p in saved["policy"].values() if p.is_floating_point())


def test_a_compiled_update_matches_the_eager_one(compiled_run: tuple[Path, dict[str, Any], int]) -> None:
    """The same rollout and parameters: loss, figures and clipped gradients agree within RTOL, ATOL."""
    cfg = _config()
    policy, optimizer, algorithm, ro = _one_update(cfg)
    eager = gradients(policy, optimizer, algorithm, ro, cfg, World())
    eager_grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    assert any(bool(g.abs().sum() > 0) for g in eager_grads)
    loss_fn = compile_loss(algorithm)
    assert type(loss_fn(policy, ro)[0].grad_fn).__name__ == "CompiledFunctionBackward"  # AOTAutograd's graph
    compiled = gradients(policy, optimizer, algorithm, ro, cfg, World(), loss_fn)
    compiled_grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    assert compiled.keys() == eager.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=RTOL, atol=ATOL, msg=key)
    assert len(compiled_grads) == len(eager_grads)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("value", ["yes", 1])
def test_compile_update_takes_a_bool(value: object) -> None:
    with pytest.raises(ConfigError, match=rf"compile_update must be of type bool, got \w+ {value!r}"):
        _config(compile_update=value)
    with pytest.raises(ConfigError, match="compile_update must be of type bool"):
        TrainConfig.load(overrides=[f"compile_update={value}"])


def test_where_torch_compile_is_unavailable_the_run_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    def unavailable(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        raise RuntimeError("Python 3.15+ not yet supported for torch.compile")  # what torch.compile says there

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.raises(ConfigError, match=r"compile_update = true, but torch.compile is unavailable here \(Python "
                                          r"3.15\+ not yet supported for torch.compile\); set compile_update=false"):
        train(_config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    assert train(_config(compile_update=False, total_env_steps=STEPS_PER_UPDATE), tmp_path / "eager",
                 progress=False)["updates"] == 1  # the way out the message names


def test_a_compiler_that_fails_stops_the_update_with_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Say inductor finds no C++ compiler: dynamo's BackendCompilerFailed becomes a ConfigError naming the switch."""
    def no_compiler(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        raise RuntimeError("no working C++ compiler found")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: real(fn, backend=no_compiler, **options))
    cfg = _config()
    policy, optimizer, algorithm, ro = _one_update(cfg)
    with pytest.raises(ConfigError, match=r"compile_update = true, but torch.compile failed to compile the update on "
                                          r"this platform \(.*no working C\+\+ compiler found.*\); set "
                                          r"compile_update=false"):
        gradients(policy, optimizer, algorithm, ro, cfg, World(), compile_loss(algorithm))
    assert all(p.grad is None for p in policy.parameters())  # nothing half done
