"""Using meta-rl the way SB3 / CleanRL users expect: a one-line load, a CLI that explains itself,
named configs that ship, evaluation on another dataset, honest progress and readable pictures."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import meta_rl
from meta_rl.baselines.maml import MAMLConfig
from meta_rl.cli import main
from meta_rl.config import ConfigError, TrainConfig, field_docs, load_config, named_configs
from meta_rl.data.sources import FASHION_MNIST_DIR
from meta_rl.evaluation import REFERENCE_ROWS, TABLE_INSTANCES, first_instance_limit, santoro_table, summarize
from meta_rl.lifecycle import budget_steps, clock_text
from meta_rl.spaces import space_from_dict, space_to_dict
from meta_rl.tensorboard_figures import accuracy_figure, episode_strip

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HAS_FASHION = FASHION_MNIST_DIR.is_dir()
TINY = ["num_envs=4", "total_env_steps=600", "eval_every=0", "log_every=1", "encoder=mlp", "encoder_hidden=[32]",
        "hidden=32", "core_kwargs.key_dim=16", "torch_threads=1"]


def readme_block(heading: str, lang: str) -> str:
    """The first ``lang`` code block after ``heading`` in the README."""
    after = README[README.index(heading):]
    match = re.search(rf"```{lang}\n(.*?)```", after, re.S)
    assert match, f"no {lang} block after {heading!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run of the default task, at ``runs/default`` under a scratch folder."""
    root = tmp_path_factory.mktemp("usability")
    out = root / "runs" / "default"
    assert main(["train", "--run-dir", str(out), "--no-progress", *TINY]) == 0
    return out


@pytest.fixture
def in_folder(run_dir: Path) -> Iterator[Path]:
    """Work in the folder that holds ``runs/default`` (as the README's examples do)."""
    cwd = os.getcwd()
    os.chdir(run_dir.parents[1])
    try:
        yield run_dir.parents[1]
    finally:
        os.chdir(cwd)


# --------------------------------------------------------------------------------------------
# load in one line
# --------------------------------------------------------------------------------------------


def test_load_returns_a_ready_agent(run_dir: Path) -> None:
    agent = meta_rl.load(run_dir, device="cpu")
    assert isinstance(agent, meta_rl.TrainedAgent)
    assert agent.config.env_id == "meta_rl/Glyphs-5way-v0" and agent.config.hidden == 32
    assert not agent.policy.training and agent.steps == 50
    assert all(p.device.type == "cpu" for p in agent.policy.parameters())
    env = agent.make_env("test", 3)
    assert env.num_envs == 3 and env.single_action_space == spaces.Discrete(5)
    env.close()
    # The CLI's evaluation and the agent's are the same numbers for the same seed.
    res = agent.evaluate(episodes=20, seed=5)
    assert len(res.accuracy_by_instance) == 10 and 0.0 <= res.accuracy <= 1.0
    assert agent.evaluate(episodes=20, seed=5).accuracy_by_instance == res.accuracy_by_instance


def test_load_rebuilds_the_policy_without_an_env(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import meta_rl.trained_agent

    def no_env(*args: object, **kwargs: object) -> None:
        raise AssertionError("load built an env")

    monkeypatch.setattr(meta_rl.trained_agent, "make_vec_env", no_env)
    agent = meta_rl.load(run_dir)
    with torch.no_grad():
        params = agent.policy.state_dict()
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["policy"]
    assert all(torch.equal(params[k], saved[k]) for k in saved)


def test_load_errors_name_the_fix(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"device = 'mps'.*CPU or CUDA; this machine has cpu"):
        meta_rl.load(run_dir, device="mps")
    with pytest.raises(ConfigError, match=r"\['hidden'\] describe the trained policy.*env_kwargs"):
        meta_rl.load(run_dir, overrides=["hidden=8"])
    with pytest.raises(ValueError, match=r"changes the task.s action space from Discrete\(5\) to Discrete\(3\)"
                                         r".*not n_way"):
        meta_rl.load(run_dir, overrides=["env_kwargs.n_way=3"])
    with pytest.raises(ValueError, match=r"does not exist; train first"):
        meta_rl.load(tmp_path)


def test_readme_use_a_trained_agent_runs(in_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_block("### Use a trained agent", "python")
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    if not HAS_FASHION:
        pytest.skip(f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR}); apt-get install dataset-fashion-mnist")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    values = [float(x) for x in re.findall(r"[0-9.]+", printed)]
    assert len(values) == 10 and all(0.0 <= v <= 1.0 for v in values)


def test_spaces_round_trip() -> None:
    for space in [
        spaces.Box(0, 255, (1, 28, 28), np.uint8),
        spaces.Box(np.array([-1.0, -2.0], dtype=np.float32), np.array([1.0, np.inf], dtype=np.float32)),
        spaces.Discrete(6, start=1),
        spaces.MultiDiscrete([3, 4]),
        spaces.MultiBinary(5),
        spaces.Dict({"image": spaces.Box(0, 255, (3, 8, 8), np.uint8), "label": spaces.Discrete(6)}),
    ]:
        record = space_to_dict(space)
        assert record is not None
        assert space_from_dict(record) == space, space
    assert space_to_dict(spaces.Text(5)) is None
    with pytest.raises(ValueError, match="not a space record"):
        space_from_dict({"type": "Graph"})


# --------------------------------------------------------------------------------------------
# the CLI explains itself
# --------------------------------------------------------------------------------------------


def test_train_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f"{f.name} (" in text, f.name
        assert " ".join(docs[f.name].split())[:40] in text, f.name
    assert "learning_rate (float, default 0.002)" in text and "num_envs (int, default 64)" in text
    assert "named configs: active, conv4, default, gru" in text


def test_typos_get_a_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--run-dir", str(tmp_path / "a"), "num_env=32"]) == 2
    assert "did you mean num_envs?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "b"), "--learning-rate", "3e-4"])
    assert exit_info.value.code == 2
    assert "did you mean learning_rate=3e-4?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--run-dir", str(tmp_path / "c"), "--num_envs=8"])
    assert "did you mean num_envs=8?" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"meta-rl {meta_rl.__version__}"


def test_named_configs_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no experiments/ or meta_rl/configs/ here
    assert {"default", "gru", "lstm", "active", "conv4"} <= set(named_configs())
    assert load_config("gru").core == "gru" and load_config("active.toml").env_id.endswith("Active-v0")
    assert MAMLConfig.load("maml-5way1shot").shots == 1
    with pytest.raises(ConfigError, match=r"config 'gur' is not a file and not a shipped config\. Did you mean gru\?"):
        load_config("gur")
    (tmp_path / "mine.toml").write_text("core = 'lstm'\n")
    assert load_config("mine.toml").core == "lstm"  # files still work


def test_named_configs_ship_in_the_wheel(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No matching distribution" in proc.stderr:
        pytest.skip(f"cannot fetch the build backend: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("meta_rl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in named_configs():
        assert f"meta_rl/configs/{name}.toml" in names
    for name in named_configs("baselines"):
        assert f"meta_rl/configs/baselines/{name}.toml" in names


def test_eval_on_another_dataset_as_the_readme_shows(in_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = readme_block("Evaluate on another dataset", "bash").strip()
    argv = shlex.split(line)
    assert argv[:3] == ["meta-rl", "eval", "runs/default"]
    if not HAS_FASHION:
        pytest.skip(f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR}); apt-get install dataset-fashion-mnist")
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    assert "evaluated with env_kwargs.dataset=fashion_mnist" in out
    assert re.search(r"meta-rl memory \(test\)\s+[0-9.]+±", out)


def test_eval_overrides_change_the_task(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another setting that keeps the spaces: fewer instances per class, so shorter episodes.
    assert main(["eval", str(run_dir), "env_kwargs.instances_per_class=4", "--episodes", "20", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"accuracy_by_instance"' in out and len(re.findall(r'"\d+":', out.split('"ci95"')[0])) == 4
    assert main(["eval", str(run_dir), "hidden=8"]) == 2
    assert "describe the trained policy" in capsys.readouterr().err


def test_eval_validates_the_device(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run_dir), "--device", "mps"]) == 2
    err = capsys.readouterr().err
    assert "mps" in err and "this machine has cpu" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_env_device_errors_say_what_is_here() -> None:
    import meta_rl.envs  # noqa: F401

    for env_id in ("meta_rl/Glyphs-5way-v0", "meta_rl/Bandit-k5-n10-v0", "meta_rl/CartPole-v0"):
        with pytest.raises(ValueError, match=r"CUDA is not available here; the devices here are cpu"):
            gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", device="cuda")
    with pytest.raises(ValueError, match=r"'mps'.*CPU or CUDA"):
        gym.make_vec("meta_rl/PointNav-v0", num_envs=2, vectorization_mode="vector_entry_point", device="mps")


# --------------------------------------------------------------------------------------------
# honest progress and logs
# --------------------------------------------------------------------------------------------


def test_progress_total_follows_the_budget_that_stops_the_run() -> None:
    # 1,000 steps/s, 10 minutes of which 2 are gone: the time limit stops at 100k + 480k steps, not at 50M.
    assert budget_steps(100_000, 50_000_000, 10.0, 2.0, 1000.0) == 580_000
    assert budget_steps(100_000, 200_000, 10.0, 2.0, 1000.0) == 200_000  # the step budget comes first
    assert budget_steps(100_000, 50_000_000, 0.0, 2.0, 1000.0) == 50_000_000  # no time limit
    assert budget_steps(100_000, 50_000_000, 10.0, 12.0, 1000.0) == 100_000  # out of time: stops now
    assert [clock_text(m) for m in (0.5, 1.9995, 10.02)] == ["0:30.0", "2:00.0", "10:01.2"]  # never 1:60.0


def test_headless_runs_print_a_line_per_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.pop("META_RL_PROGRESS", None)
    over = [x for x in TINY if not x.startswith("log_every")] + ["log_every=2"]
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--no-progress", *over]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("meta-rl | ")]
    assert len(lines) == 1, captured.err  # 3 updates of 4 x 50 steps, a line every 2nd
    assert re.fullmatch(r"meta-rl \| update 2 \| steps 400/600 \| \S+ steps/s \| \d+:\d\d\.\d \| return [0-9.]+ "
                        r"\| accuracy [0-9.]+", lines[0]), lines[0]
    assert os.environ.get("META_RL_PROGRESS") == "0"  # what the glyph build reads: its bars stay off too
    assert "%|" not in captured.err  # no tqdm bar was drawn


# --------------------------------------------------------------------------------------------
# pictures people read, and the right reference rows
# --------------------------------------------------------------------------------------------


def test_episode_strip_is_upscaled_and_labelled() -> None:
    images = torch.full((20, 1, 28, 28), 128, dtype=torch.uint8)
    true = torch.arange(20) % 5
    right = episode_strip(images, true, true)
    wrong = episode_strip(images, true, (true + 1) % 5)
    assert right.dtype == torch.uint8 and right.shape[0] == 3
    assert right.shape[2] >= 10 * 3 * 28 and right.shape[1] >= 2 * 3 * 28  # two rows of 84-px tiles
    green = (right[1] > 120) & (right[0] < 80) & (right[2] < 100)
    red = (wrong[0] > 180) & (wrong[1] < 80) & (wrong[2] < 80)
    assert int(green.sum()) > 20 * 300 and int(red.sum()) > 20 * 300  # every tile framed
    assert not bool(((right[0] > 180) & (right[1] < 80)).any())  # no red where all are right
    # The captions are drawn digits: other chosen labels give other pixels.
    other = episode_strip(images, true, (true + 2) % 5)
    assert not torch.equal(wrong, other)


def test_accuracy_figure_marks_chance_limit_and_references() -> None:
    fig = accuracy_figure({"held-out": ([0.3] + [0.9] * 9, [0.02] * 10)}, n_way=5, references=REFERENCE_ROWS)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "chance (1/5)" in labels and "1st-instance limit (45.7%)" in labels
    assert all(name in labels for name in REFERENCE_ROWS)
    mann = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("MANN"))
    assert list(mann.get_xdata()) == list(TABLE_INSTANCES)
    assert np.allclose(mann.get_ydata(), np.array([36.4, 82.8, 91.0, 92.6, 94.9, 98.1]) / 100)
    chance = next(line for line in fig.axes[0].get_lines() if line.get_label() == "chance (1/5)")
    assert np.allclose(chance.get_ydata(), 0.2)


def test_reference_rows_follow_santoro_table_1() -> None:
    assert TABLE_INSTANCES == (1, 2, 3, 4, 5, 10)
    assert REFERENCE_ROWS["human (Santoro 2016, Omniglot)"] == (34.5, 57.3, 70.1, 71.8, 81.4, 92.4)
    assert REFERENCE_ROWS["LSTM (Santoro 2016, Omniglot)"] == (24.4, 49.5, 55.3, 61.0, 63.6, 62.5)
    assert REFERENCE_ROWS["MANN (Santoro 2016, Omniglot)"] == (36.4, 82.8, 91.0, 92.6, 94.9, 98.1)
    assert first_instance_limit(5) == pytest.approx(0.4567, abs=1e-4)
    hits = torch.ones(4, 10)
    table = santoro_table(summarize(hits, torch.ones(4, 10)))
    header, _, ours, *rest = table.splitlines()
    assert header.split()[1:] == ["1st", "2nd", "3rd", "4th", "5th", "10th"]
    assert ours.split()[-6:] == ["100.0±0.0"] * 6
    mann = next(row for row in rest if row.startswith("MANN"))
    assert mann.split()[-6:] == ["36.4", "82.8", "91.0", "92.6", "94.9", "98.1"]
