"""Data-parallel training on torch.distributed (2 CPU ranks, gloo, launched by torchrun), and the CUDA path.

The distributed test launches exactly the documented command,
``torchrun --standalone --nproc-per-node 2 -m meta_rl train --run-dir DIR key=value ...``,
with the synthetic prototype dataset registered in the workers by an ``env_module`` plug-in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny_runs
import torch
from env_checks import no_host_sync
from tiny_runs import NUM_ENVS, K  # 3-way, K instances per class: T = 9

from meta_rl.algorithms import make_algorithm
from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import TrainConfig
from meta_rl.distributed import param_digest, rank_seed
from meta_rl.rollout import Rollout, collect
from meta_rl.train import (
    CHECKPOINT_NAME,
    _task_seed,
    build_policy,
    make_vec_env,
    optimize,
    train,
)

CPU = torch.device("cpu")
TESTS = Path(__file__).resolve().parent
WORLD = 2

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import meta_rl.envs  # noqa: F401  (registers the env ids)
from conftest import PROTO_DATASET, make_prototype_splits
from meta_rl.data import register_dataset
register_dataset(PROTO_DATASET, make_prototype_splits())
"""


def tiny_config(dataset: str, **changes: Any) -> TrainConfig:
    """A tiny run of one update of both ranks, never evaluated, without advantage normalisation (a per-rank
    normalisation would differ from the combined batch's)."""
    return tiny_runs.tiny_config(dataset, WORLD, **{"normalize_advantages": False, "eval_every": 0,
                                                    "checkpoint_every": 1000, **changes})


def overrides(cfg: TrainConfig) -> list[str]:
    out = []
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):  # a table: one key=value per entry (env_kwargs.n_way=3)
            out += [f"{key}.{k}={json.dumps(v)}" for k, v in value.items()]
        else:
            out.append(f"{key}={json.dumps(value)}")  # JSON scalars and lists read as TOML
    return out


def cat_rollouts(policy: Any, parts: list[Rollout]) -> Rollout:
    """One rollout holding the tasks of ``parts`` side by side (batch dimension 1, last_value 0)."""

    def cat(xs: list[Any], dim: int = 1) -> Any:
        return None if xs[0] is None else torch.cat(xs, dim)

    fields = {f.name: [getattr(p, f.name) for p in parts] for f in dataclasses.fields(Rollout)}
    kw = {name: cat(xs) for name, xs in fields.items() if name not in ("extras", "last_value", "state0")}
    extras = {k: torch.cat([p.extras[k] for p in parts], 1) for k in parts[0].extras}
    last_value = torch.cat(fields["last_value"], 0)
    state0 = policy.initial_state(sum(p.rewards.shape[1] for p in parts), CPU)
    return Rollout(extras=extras, last_value=last_value, state0=state0, **kw)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_ranks_under_torchrun_match_one_process_and_resume(proto_dataset: str, tmp_path: Path) -> None:
    (tmp_path / "ddp_plugin.py").write_text(PLUGIN)
    cfg = tiny_config(proto_dataset, env_module="ddp_plugin")
    run_dir = tmp_path / "run"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", str(WORLD), "-m", "meta_rl", "train",
         "--run-dir", str(run_dir), "--no-progress", *overrides(cfg)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # only rank 0 reports
    assert results[0]["updates"] == 1 and results[0]["env_steps"] == WORLD * NUM_ENVS * 3 * K

    # (c) only rank 0 wrote to the run directory: event files of one process, one checkpoint, nothing else.
    names = sorted(p.name for p in run_dir.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    # all event files must come from one pid (rank 0's)
    assert events and len({n.split(".")[-2] for n in events}) == 1, names
    assert set(names) - set(events) <= {CHECKPOINT_NAME, "config.json", ".lock"}, names
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert ckpt["counters"] == {"update": 1, "env_steps": WORLD * NUM_ENVS * 3 * K}

    # (a) both ranks ended with bitwise identical parameters: each rank's digest, gathered by rank 0.
    ref_cfg = tiny_config(proto_dataset)
    vec = make_vec_env(ref_cfg, ref_cfg.train_split, NUM_ENVS, CPU)
    steps = vec.episode_length
    trained = build_policy(ref_cfg, vec, steps)
    trained.load_state_dict(ckpt["policy"])
    digests = ckpt["distributed"]["param_digests"]
    assert ckpt["distributed"]["world_size"] == WORLD
    assert digests == [param_digest(trained)] * WORLD
    # every rank's action generator is saved for resumption, and the ranks' streams differ
    by_rank = ckpt["rng"]["actions_by_rank"]
    assert len(by_rank) == WORLD and torch.equal(by_rank[0], ckpt["rng"]["actions"])
    assert not torch.equal(by_rank[0], by_rank[1])

    # (b) one process, one update on the union of both ranks' tasks and actions (rank r: tasks and
    # actions from rank_seed(seed, r)), as a single batch of WORLD * NUM_ENVS tasks.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref_cfg.seed)
        policy = build_policy(ref_cfg, vec, steps)
    optimizer = torch.optim.Adam(policy.parameters(), lr=ref_cfg.learning_rate)
    seeds = [rank_seed(ref_cfg.seed, rank) for rank in range(WORLD)]
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]

    def combined_update(update: int) -> None:
        parts = [collect(vec, policy, steps, gen, reset_seed=_task_seed(seed, update), embed_with_grad=True)
                 for seed, gen in zip(seeds, gens)]
        combined = cat_rollouts(policy, parts)
        assert combined.rewards.shape == (steps, WORLD * NUM_ENVS)
        optimize(policy, optimizer, make_algorithm(ref_cfg), combined, ref_cfg)

    combined_update(0)
    got = dict(trained.named_parameters())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), rtol=1e-4, atol=1e-6, msg=name)
    for rank in range(WORLD):  # each rank's generator state was saved where the reference's stands
        assert torch.equal(by_rank[rank], gens[rank].get_state())

    # Resume on 2 ranks for a second update: every rank restores its own generator, so the result
    # is the reference's second combined update.
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", str(WORLD), "-m", "meta_rl", "train",
         "--resume", str(run_dir), "--env-module", "ddp_plugin", "--no-progress",
         f"total_env_steps={2 * cfg.total_env_steps}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ckpt2 = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert ckpt2["counters"] == {"update": 2, "env_steps": 2 * WORLD * NUM_ENVS * 3 * K}
    combined_update(1)
    resumed = ckpt2["policy"]
    for name, p in policy.named_parameters():
        torch.testing.assert_close(resumed[name], p.detach(), rtol=1e-4, atol=1e-6, msg=name)
    assert len(set(ckpt2["distributed"]["param_digests"])) == 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref_cfg.seed)
        initial = build_policy(ref_cfg, vec, steps)
    assert param_digest(initial) != param_digest(trained)  # the update did move the parameters

def test_rank_zero_keeps_the_single_process_seed_stream() -> None:
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8
    assert all(0 <= rank_seed(-5, r) < 2**63 for r in range(1, 4))


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------

needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _to(ro: Rollout, device: torch.device) -> Rollout:
    moved = {f.name: getattr(ro, f.name) for f in dataclasses.fields(Rollout)}
    for name, value in moved.items():
        if isinstance(value, torch.Tensor):
            moved[name] = value.detach().to(device)
        elif isinstance(value, dict):
            moved[name] = {k: v.to(device) for k, v in value.items()}
        elif isinstance(value, tuple):
            moved[name] = tuple(v.to(device) for v in value)
    moved["embed"] = None  # recomputed by the update from ``main`` on the target device
    return Rollout(**moved)


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_update_matches_cpu(proto_dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rollout (collected on the CPU), updated on the CPU and on CUDA, gives the same parameters.

    The envs draw tasks and actions from a torch.Generator on their own device, and CUDA's
    generators give other streams than the CPU's, so whole runs on the two devices see different
    tasks; the comparison is of the training math on identical data, over 3 updates. cuDNN runs
    fp32 convolutions in TF32 by default on Ampere and later (10-bit mantissa): measured on an
    H200, the first conv's weights then differ by more than 1e-4 after 3 updates, so the test
    compares in full fp32, on the CPU too (``encoder_precision="auto"`` is bfloat16 on CPUs with AMX).
    """
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = tiny_config(proto_dataset, encoder_precision="float32")
    cuda = torch.device("cuda")
    vec = make_vec_env(cfg, cfg.train_split, NUM_ENVS, CPU)
    steps = vec.episode_length
    torch.manual_seed(cfg.seed)
    cpu_policy = build_policy(cfg, vec, steps)
    gpu_policy = build_policy(cfg, vec, steps).to(cuda)
    gpu_policy.load_state_dict(cpu_policy.state_dict())
    cpu_opt = torch.optim.Adam(cpu_policy.parameters(), lr=cfg.learning_rate)
    gpu_opt = torch.optim.Adam(gpu_policy.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    for update in range(3):
        ro = collect(vec, cpu_policy, steps, gen, reset_seed=_task_seed(cfg.seed, update))
        optimize(cpu_policy, cpu_opt, make_algorithm(cfg), _to(ro, CPU), cfg)
        optimize(gpu_policy, gpu_opt, make_algorithm(cfg), _to(ro, cuda), cfg)
    for name, p in cpu_policy.named_parameters():
        torch.testing.assert_close(dict(gpu_policy.named_parameters())[name].detach().cpu(), p.detach(),
                                   rtol=1e-4, atol=1e-4, msg=name)


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_training_runs_and_is_reproducible(proto_dataset: str, tmp_path: Path) -> None:
    """A short run on CUDA ends with finite parameters, the same (within atol 1e-4) on a second run."""
    cfg = tiny_config(proto_dataset, device="cuda", total_env_steps=3 * NUM_ENVS * 3 * K, eval_every=3,
                      eval_episodes=4)
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, a, progress=False)
    train(cfg, b, progress=False)
    pa, pb = (load_checkpoint(d / CHECKPOINT_NAME)["policy"] for d in (a, b))
    for name in pa:
        assert torch.isfinite(pa[name].float()).all(), name
        torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=1e-4, msg=name)


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_rollout_step_loop_never_syncs_with_the_host(proto_dataset: str) -> None:
    """``set_sync_debug_mode("error")`` turns any host sync in ``collect`` (``.item()``, a host read,
    a data-dependent shape) into an error."""
    cfg = tiny_config(proto_dataset)
    cuda = torch.device("cuda")
    vec = make_vec_env(cfg, cfg.train_split, NUM_ENVS, cuda)
    steps = vec.episode_length
    policy = build_policy(cfg, vec, steps).to(cuda)
    gen = torch.Generator(device=cuda).manual_seed(0)
    collect(vec, policy, steps, gen, reset_seed=0)  # warm-up: lazy initialisation may sync once
    # reset() seeds the env's generator from a host int (a host-to-device copy, not a sync); run
    # the whole collect, reset included, under the check.
    with no_host_sync():
        ro = collect(vec, policy, steps, gen, reset_seed=1, embed_with_grad=True)
    assert ro.actions.device.type == "cuda" and ro.rewards.shape == (steps, NUM_ENVS)
