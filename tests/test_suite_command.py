"""``python experiments/suite.py`` end to end on a tiny budget: every family trains, is evaluated and gets a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import import_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_suite_runs_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = import_script("suite")

    tasks = "bandit-k5-n10,mdp-n10,cartpole,glyphs-reward,glyphs-active"
    assert suite.main(["--tasks", tasks, "--steps", "600", "--minutes", "0", "--trials", "16",
                       "--out", str(tmp_path / "s"), "num_envs=4", "hidden=8", "encoder_hidden=[8]"]) == 0
    rows = {r["task"]: r for r in json.loads((tmp_path / "s" / "suite.json").read_text())["rows"]}
    assert list(rows) == tasks.split(",")
    assert set(rows["bandit-k5-n10"]["baselines"]) >= {"random", "gittins", "thompson", "ucb1", "oracle"}
    assert set(rows["mdp-n10"]["baselines"]) == {"random", "value_iteration", "psrl"}
    assert set(rows["cartpole"]["baselines"]) == {"random", "oracle"}
    assert len(rows["cartpole"]["return_by_episode"]) == 2
    assert len(rows["glyphs-reward"]["oracle_by_instance"]) == 10 and "share_of_oracle" in rows["glyphs-reward"]
    assert "request_rate_by_instance" in rows["glyphs-active"]
    table = (tmp_path / "s" / "suite.md").read_text()
    assert table.count("\n") == 2 + 5 and "| bandit-k5-n10 |" in table and "RL² 6.7" in table
    assert "| glyphs-reward |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown task"):
        suite.main(["--tasks", "nope", "--steps", "10"])
    with pytest.raises(SystemExit, match="exists"):
        suite.main(["--tasks", "bandit-k5-n10", "--steps", "10", "--out", str(tmp_path / "s")])


def test_episode_change_is_reported_with_its_paired_interval() -> None:
    """ep 2 - ep 1 carries the paired interval of the per-task change, not episode 2's own interval."""
    suite = import_script("suite")

    two = {"return_per_trial": 3.0, "return_per_trial_ci95": 0.5, "return_by_episode": {"1": 1.0, "2": 2.0},
           "ci95": {"1": 0.4, "2": 0.9}, "improvement": 1.0, "improvement_ci95": 0.12}
    assert suite._cell(two) == "3.00 ± 0.50; by episode 1.0 / 2.0 (ep 2 - ep 1 +1.00 ± 0.12)"
    three = {**two, "return_by_episode": {"1": 1.0, "2": 1.5, "3": 2.5}, "ci95": {"1": 0.4, "2": 0.9, "3": 1.0},
             "improvement": 1.5, "improvement_ci95": 0.2}
    assert suite._cell(three).endswith("(ep 2 - ep 1 +0.50; last - 1st +1.50 ± 0.20)")


def test_undeclared_tasks_declare_only_spaces_and_trials(tmp_path: Path) -> None:
    """``--undeclared``: the learner is told what a plug-in tells it (spaces and trial structure), and the run is
    scored on the task itself, with its baselines."""
    import gymnasium as gym
    import torch

    from meta_rl.env_contract import known_images, label_request_action, task_length
    from meta_rl.envs.undeclared import UndeclaredVectorEnv, register_undeclared

    name = register_undeclared("meta_rl/Bandit-k5-n10-v0")
    assert name == "meta_rl/Undeclared-Bandit-k5-n10-v0" == register_undeclared("meta_rl/Bandit-k5-n10-v0")
    env = gym.make_vec(name, num_envs=3, vectorization_mode="vector_entry_point", split="val")
    assert isinstance(env, UndeclaredVectorEnv) and env.env.split == "val"  # type: ignore[attr-defined]
    assert task_length(env) == 10 and known_images(env) is None and label_request_action(env) is None
    declared = gym.make_vec("meta_rl/Bandit-k5-n10-v0", num_envs=3, vectorization_mode="vector_entry_point",
                            split="val")
    a, b = env.reset(seed=4)[0], declared.reset(seed=4)[0]
    assert torch.equal(a, b)  # the same tasks, unchanged
    suite = import_script("suite")
    assert suite.main(["--tasks", "bandit-k5-n10,glyphs-label", "--steps", "400", "--minutes", "0", "--trials", "8",
                       "--undeclared", "--out", str(tmp_path / "u"), "num_envs=4", "hidden=8",
                       "encoder_hidden=[8]"]) == 0
    out = json.loads((tmp_path / "u" / "suite.json").read_text())
    assert out["undeclared"] is True
    rows = {r["task"]: r for r in out["rows"]}
    assert "gittins" in rows["bandit-k5-n10"]["baselines"] and len(rows["glyphs-label"]["accuracy_by_instance"]) == 10
    saved = json.loads((tmp_path / "u" / "bandit-k5-n10" / "config.json").read_text())
    assert saved["env_id"] == name and saved["read_head"]["index_head"] is True  # told nothing, built the same


def test_compare_trains_each_task_both_ways_and_they_agree(tmp_path: Path) -> None:
    """``--compare``: the same env steps as registered and told nothing give the same scores, the learner reading
    no declaration; without ``--steps`` it is refused (a time budget would give the two runs different steps)."""
    suite = import_script("suite")
    tiny = ["num_envs=4", "hidden=8", "encoder_hidden=[8]", "core_kwargs.key_dim=4"]
    with pytest.raises(SystemExit, match="--compare trains each task both ways at the same env steps"):
        suite.main(["--tasks", "bandit-k5-n10", "--compare", "--minutes", "1", "--out", str(tmp_path / "t"), *tiny])
    assert suite.main(["--tasks", "bandit-k5-n10,mdp-n10", "--steps", "2000", "--minutes", "0", "--trials", "16",
                       "--compare", "--out", str(tmp_path / "c"), *tiny]) == 0
    out = json.loads((tmp_path / "c" / "suite.json").read_text())
    for declared, undeclared in out["pairs"]:
        assert declared["env_steps"] == undeclared["env_steps"] > 0
        assert declared["return_per_trial"] == undeclared["return_per_trial"]
    assert "| declared (as registered) | undeclared (told nothing) |" in (tmp_path / "c" / "suite.md").read_text()
