"""A run directory is data: no module is imported because its checkpoint names one.

The attack from the issue: a run directory holding ``evilmod.py`` and a checkpoint whose config says
``env_module = "evilmod"`` (the checksum is unkeyed, so anyone can rewrite it). ``meta-rl eval .``
and ``meta-rl train --resume .`` must refuse it, naming the module and ``--env-module``, and run it
only when the user names the module.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta_rl.checkpoint import load_checkpoint, save_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.train import CHECKPOINT_NAME, load_run_config, train

pytestmark = pytest.mark.usefixtures("one_thread")

EVIL = "evilmod"
# Registers a small dataset (so the run is real) and leaves a mark where it ran.
EVIL_SOURCE = '''
import os
import torch

import meta_rl.envs  # noqa: F401
from meta_rl.data import ImageDataset, register_dataset, split_by_group

if os.environ.get("EVIL_MARK"):
    with open(os.environ["EVIL_MARK"], "a") as f:
        f.write("imported\\n")
_g = torch.Generator().manual_seed(0)
_protos = (torch.rand(24, 1, 28, 28, generator=_g) < 0.3).float() * 255
_images = (_protos.repeat_interleave(4, 0) + torch.randint(-20, 21, (96, 1, 28, 28), generator=_g)).clamp(0, 255)
_ds = ImageDataset(_images.to(torch.uint8), torch.arange(24).repeat_interleave(4), tuple(f"c{i}" for i in range(24)),
                   tuple(f"g{i % 8}" for i in range(24)), "evil")
register_dataset("evil-synthetic", split_by_group(_ds, (0.5, 0.25, 0.25)))
'''


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished run of a plug-in task whose module sits in the run directory itself."""
    root = tmp_path_factory.mktemp("evil")
    run_dir, src = root / "run", root / "src"  # trained from src; then the module is put in the run directory
    src.mkdir()
    (src / f"{EVIL}.py").write_text(EVIL_SOURCE)
    sys.path.insert(0, str(src))
    try:
        cfg = TrainConfig(env_id="meta_rl/FewShot-v0", env_module=EVIL,
                          env_kwargs={"dataset": "evil-synthetic", "n_way": 3, "instances_per_class": 2},
                          num_envs=2, encoder="mlp", encoder_hidden=[8], hidden=8, core_kwargs={"key_dim": 8},
                          total_env_steps=24, log_every=1, eval_every=0, checkpoint_every=1, device="cpu").validate()
        train(cfg, run_dir, progress=False)
    finally:
        sys.path.remove(str(src))
        sys.modules.pop(EVIL, None)
    (run_dir / f"{EVIL}.py").write_text(EVIL_SOURCE)
    yield run_dir


def cli(run_dir: Path, *args: str, mark: Path) -> subprocess.CompletedProcess[str]:
    """``python -m meta_rl.cli ARGS`` from inside the run directory (so ``evilmod`` is importable there)."""
    env = {**os.environ, "EVIL_MARK": str(mark), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "meta_rl.cli", *args], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=180)


def test_eval_refuses_a_module_named_only_by_the_checkpoint(evil_run: Path, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    proc = cli(evil_run, "eval", ".", "--episodes", "4", "--batch", "4", mark=mark)
    assert proc.returncode == 2, proc.stderr
    assert f"needs module '{EVIL}'" in proc.stderr and f"--env-module {EVIL}" in proc.stderr
    assert not mark.exists()  # the module never ran


def test_eval_runs_the_module_the_user_names(evil_run: Path, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    proc = cli(evil_run, "eval", ".", "--episodes", "4", "--batch", "4", "--json", "--env-module", EVIL, mark=mark)
    assert proc.returncode == 0, proc.stderr
    assert '"accuracy"' in proc.stdout
    assert mark.read_text() == "imported\n"


@pytest.mark.parametrize("how", [(), ("env_module=meta_rl.envs",)])
def test_resume_refuses_a_module_named_only_by_the_checkpoint(evil_run: Path, tmp_path: Path,
                                                             how: tuple[str, ...]) -> None:
    mark = tmp_path / "mark"
    proc = cli(evil_run, "train", "--resume", ".", *how, "--no-progress", mark=mark)
    if how:  # a trusted module named instead: nothing evil runs, and the dataset is then unknown
        assert proc.returncode == 2 and "evil-synthetic" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        assert f"needs module '{EVIL}'" in proc.stderr and f"--env-module {EVIL}" in proc.stderr
    assert not mark.exists()


@pytest.mark.parametrize("how", [("--env-module", EVIL), (f"env_module={EVIL}",)])
def test_resume_runs_the_module_the_user_names(evil_run: Path, tmp_path: Path, how: tuple[str, ...]) -> None:
    mark = tmp_path / "mark"
    proc = cli(evil_run, "train", "--resume", ".", *how, "--no-progress", mark=mark)
    assert proc.returncode == 0, proc.stderr
    assert mark.read_text() == "imported\n"


def rewrite_config(run_dir: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the run whose checkpoint config is rewritten (checksum recomputed, as an attacker can)."""
    out = tmp_path / "copy"
    out.mkdir()
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    ckpt["config"] = {**ckpt["config"], **changes}
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    return out


def test_env_id_module_prefix_is_not_imported(evil_run: Path, tmp_path: Path) -> None:
    """gymnasium imports the ``module:`` prefix of an id: the same rule applies to it."""
    copy = rewrite_config(evil_run, tmp_path, env_module="", env_id=f"{EVIL}:Evil-v0")
    with pytest.raises(ConfigError, match=rf"needs module '{EVIL}' .*--env-module {EVIL}"):
        load_run_config(copy)
    assert EVIL not in sys.modules


def test_meta_rl_envs_is_always_allowed(evil_run: Path, tmp_path: Path) -> None:
    copy = rewrite_config(evil_run, tmp_path, env_module="meta_rl.envs")
    cfg = load_run_config(copy)
    assert dataclasses.asdict(cfg)["env_module"] == "meta_rl.envs"
