"""The ``meta-rl`` command, in-process through ``meta_rl.cli.main`` and once through the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meta_rl.checkpoint import load_checkpoint
from meta_rl.cli import main
from meta_rl.train import CHECKPOINT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3  # instances per class: the only instance indices that exist
STEPS_PER_UPDATE = 4 * 3 * K


def train_args(dataset: str, updates: int) -> list[str]:
    return [
        "num_envs=4", "env_id=meta_rl/FewShot-v0", f"env_kwargs.dataset={dataset}", "env_kwargs.n_way=3",
        f"env_kwargs.instances_per_class={K}", "encoder_hidden=[16]", "hidden=8", "device=cpu",
        "eval_every=2", "eval_episodes=4", "log_every=1", f"total_env_steps={updates * STEPS_PER_UPDATE}",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def cli_run(proto_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for 2 updates through ``meta-rl train``."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--run-dir", str(run_dir), *train_args(proto_dataset, 2)]) == 0
    return run_dir


def test_train_writes_a_checkpoint_and_prints_json(proto_dataset: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--seed", "3", *train_args(proto_dataset, 1)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["updates"] == 1 and result["env_steps"] == STEPS_PER_UPDATE
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert ckpt["config"]["seed"] == 3 and ckpt["config"]["num_envs"] == 4
    assert ckpt["config"]["env_kwargs"] == {"dataset": proto_dataset, "n_way": 3, "instances_per_class": K}
    assert ckpt["config"]["encoder_hidden"] == [16]
    assert json.loads((run_dir / "config.json").read_text()) == ckpt["config"]
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


def test_train_from_a_config_file_with_overrides(proto_dataset: str, tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text('core = "gru"\nhidden = 12\n')
    run_dir = tmp_path / "run"
    assert main(["train", str(config), *train_args(proto_dataset, 1), "--run-dir", str(run_dir)]) == 0
    saved = load_checkpoint(run_dir / CHECKPOINT_NAME)["config"]
    assert saved["core"] == "gru" and saved["hidden"] == 8  # the command line wins over the file


def test_train_config_then_options_then_overrides(proto_dataset: str, tmp_path: Path) -> None:
    # README: meta-rl train [CONFIG] --run-dir DIR [--seed S] [--max-minutes M] [key=value ...]
    config = tmp_path / "exp.toml"
    config.write_text('core = "gru"\n')
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir), *train_args(proto_dataset, 1)]) == 0
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["config"]["core"] == "gru"


def test_eval_json(cli_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(cli_run), "--episodes", "20", "--json", "--split", "test", "--batch", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert {"accuracy_by_instance", "ci95", "episodes"} <= out.keys()
    assert out["episodes"] == 20
    assert list(out["accuracy_by_instance"]) == [str(k) for k in range(1, K + 1)]
    assert list(out["ci95"]) == [str(k) for k in range(1, K + 1)]
    assert all(0.0 <= a <= 1.0 for a in out["accuracy_by_instance"].values())
    assert all(c >= 0.0 for c in out["ci95"].values())
    # The same seed gives the same numbers.
    assert main(["eval", str(cli_run), "--episodes", "20", "--json", "--split", "test", "--batch", "8"]) == 0
    assert json.loads(capsys.readouterr().out) == out


def test_eval_table(cli_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(cli_run), "--episodes", "8", "--split", "val"]) == 0
    out = capsys.readouterr().out
    for column in ("1st", "2nd", "3rd", "5th", "10th"):
        assert column in out
    assert "MANN (Santoro 2016, Omniglot)" in out and "36.4" in out
    assert "meta-rl memory (val)" in out
    row = next(line for line in out.splitlines() if line.startswith("meta-rl memory (val)"))
    assert row.split()[-2:] == ["-", "-"]  # no 5th or 10th instance in 3-instance tasks
    assert "8 held-out tasks" in out


def test_bad_override_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--run-dir", str(tmp_path / "run"), "num_env=4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "meta-rl: error:" in err and "num_env" in err and "num_envs" in err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--run-dir", str(tmp_path / "run"), "gamma=2", "--no-progress"]) == 2
    assert "gamma must lie in [0, 1]" in capsys.readouterr().err
    assert main(["train", "num_envs=4", "--no-progress"]) == 2
    assert "--run-dir" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2


def test_resume_continues(
    cli_run: Path, tmp_path: Path, proto_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run, run_dir)
    capsys.readouterr()
    steps = f"total_env_steps={4 * STEPS_PER_UPDATE}"
    assert main(["train", "--resume", str(run_dir), steps, "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["updates"] == 4 and result["env_steps"] == 4 * STEPS_PER_UPDATE
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert ckpt["counters"] == {"update": 4, "env_steps": 4 * STEPS_PER_UPDATE}
    assert ckpt["config"]["env_kwargs"]["dataset"] == proto_dataset  # the saved config, not the defaults
    # A learning setting cannot change on resume; a config file cannot be given with --resume.
    assert main(["train", "--resume", str(run_dir), "learning_rate=0.5", "--no-progress"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main(["train", "default", "--resume", str(run_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    # A new run cannot start in a directory that holds one.
    assert main(["train", "--run-dir", str(run_dir), *train_args(proto_dataset, 1)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_train_help_groups_the_keys_by_section(capsys: pytest.CaptureFixture[str]) -> None:
    """``meta-rl train --help``: the keys most runs set first, then task, model, algorithm and run sections."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    first = out.index("most runs set only: env_id, env_module, env_kwargs, num_envs, encoder, core")
    sections = [out.index(f"\n{name}: ") for name in ("task", "model", "algorithm", "run")]
    assert first < sections[0] and sections == sorted(sections)
    assert sections[1] < out.index("  core_kwargs (") < sections[2] < out.index("  algo_kwargs (") < sections[3]


def test_console_script_help() -> None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("meta-rl", path=path)
    assert exe is not None, "the meta-rl console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "eval" in out.stdout and "usage: meta-rl" in out.stdout


def test_resume_override_back_to_the_default_value(proto_dataset: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "max_minutes=30", *train_args(proto_dataset, 1)]) == 0
    more = f"total_env_steps={2 * STEPS_PER_UPDATE}"
    assert main(["train", "--resume", str(run_dir), more, "max_minutes=0", "--no-progress"]) == 0
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["config"]["max_minutes"] == 0


def test_eval_scores_k_shot_queries(cli_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``meta-rl eval --shots K``: the run's agent on N-way K-shot tasks, scored on the queries only."""
    capsys.readouterr()
    assert main(["eval", str(cli_run), "--shots", "1", "--queries", "2", "--episodes", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shots"] == 1 and out["queries_per_class"] == 2 and out["episodes"] == 6 and out["n_way"] == 3
    assert 0.0 <= out["accuracy"] <= 1.0 and out["ci95"] >= 0.0
    assert main(["eval", str(cli_run), "--shots", "1", "--queries", "2", "--episodes", "6"]) == 0
    assert "3-way 1-shot query accuracy (memory core, test)" in capsys.readouterr().out
