"""Training end to end on small in-memory datasets: it learns, it is reproducible, it resumes exactly,
it logs what it promises, every shipped config runs, and bad configs and checkpoints fail clearly."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from meta_rl.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from meta_rl.config import ConfigError, TrainConfig, load_config, parse_overrides
from meta_rl.data import ImageDataset
from meta_rl.evaluation import evaluate
from meta_rl.train import CHECKPOINT_NAME, HELDOUT_SEED, build_policy, make_vec_env, train, with_built_read_head

CPU = torch.device("cpu")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "meta_rl" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))

pytestmark = pytest.mark.usefixtures("one_thread")

# The shared tiny run: 3-way tasks, 3 instances per class (T = 9, so only instances 1..3 exist),
# 4 tasks per update, 6 updates.
K = 3
STEPS_PER_UPDATE = 4 * 3 * K
UPDATES = 6

Run = tuple[TrainConfig, Path, dict[str, Any]]  # config, run directory, train()'s result


def tiny_config(dataset: str, **changes: Any) -> TrainConfig:
    cfg = TrainConfig(
        env_id="meta_rl/FewShot-v0",
        env_kwargs={"dataset": dataset, "n_way": 3, "instances_per_class": K},
        num_envs=4,
        encoder_hidden=[16],
        hidden=8,
        core_kwargs={"key_dim": 8},
        total_env_steps=UPDATES * STEPS_PER_UPDATE,
        log_every=1,
        eval_every=2,
        eval_episodes=4,
        checkpoint_every=4,
        device="cpu",
    )
    return dataclasses.replace(cfg, **changes).validate()


@pytest.fixture(scope="module")
def tiny_run(proto_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One finished tiny run, shared read-only by the tests below (copy before changing it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(proto_dataset)
        run_dir = tmp_path_factory.mktemp("tiny_run")
        result = train(cfg, run_dir, progress=False)
    finally:
        torch.set_num_threads(before)
    return cfg, run_dir, result


def params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT_NAME)["policy"]


def assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def without_time(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "minutes"}


# --------------------------------------------------------------------------------------------
# it learns
# --------------------------------------------------------------------------------------------


def test_memory_agent_learns_what_no_memoryless_agent_can(offset_dataset: str, tmp_path: Path) -> None:
    """3-way tasks, 4 instances per class, labels permuted per task, held-out classes.

    At the 2nd instance of a class an agent without memory of the episode is right with
    probability 1/3 at most: the label of a class is a fresh random permutation in every task,
    and whether the previous image (whose label is revealed) shows the same class is independent
    of anything it sees now (P = 1/3 by symmetry). An agent that remembers the class's first
    image and its revealed label is always right. The classes are faint patterns under a large
    random brightness offset, so the untrained agent (whose memory matches raw brightness) is
    near chance and the encoder has to learn what makes a class.
    """
    cfg = TrainConfig(
        env_id="meta_rl/FewShot-v0",
        env_kwargs={"dataset": offset_dataset, "n_way": 3, "instances_per_class": 4},
        num_envs=32,
        encoder="mlp",
        encoder_hidden=[32],
        hidden=32,
        core_kwargs={"key_dim": 16},
        core="memory",
        gamma=0.0,  # the answer changes no later reward: the least variance for this short run (the default, 0.9,
        # reaches 0.78 at the 2nd instance after 500 updates and 0.64 after 750: BENCHMARKS.md § "One learner")
        total_env_steps=250 * 32 * 12,  # 250 updates, about 5 s of one CPU core
        log_every=1000,
        eval_every=10**6,  # evaluate once, at the end
        eval_episodes=200,
        checkpoint_every=10**6,
        device="cpu",
        seed=1,
    ).validate()
    env = make_vec_env(cfg, cfg.heldout_split, 100, CPU)
    torch.manual_seed(cfg.seed)  # the trainer's initial policy
    untrained = evaluate(env, build_policy(cfg, env, env.episode_length), 200, seed=HELDOUT_SEED)
    assert untrained.accuracy_by_instance[1] < 0.45  # chance is 1/3

    result = train(cfg, tmp_path / "run", progress=False)
    assert result["updates"] == 250
    # Memoryless bound 1/3; this seed reaches 0.85 at the 2nd instance (0.70-0.86 over seeds 1-6, 0.76-0.95 at the 4th).
    assert result["eval/accuracy_instance_2"] >= 0.75
    assert result["eval/accuracy_instance_4"] >= 0.75


# --------------------------------------------------------------------------------------------
# reproducibility and resumption
# --------------------------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(tiny_run: Run, tmp_path: Path) -> None:
    cfg, run_dir, result = tiny_run
    again = train(cfg, tmp_path / "again", progress=False)
    assert without_time(again) == without_time(result)
    assert_same_tree(params(tmp_path / "again"), params(run_dir))
    assert_same_tree(load_checkpoint(tmp_path / "again" / CHECKPOINT_NAME)["optimizer"],
                     load_checkpoint(run_dir / CHECKPOINT_NAME)["optimizer"])

    other = dataclasses.replace(cfg, seed=1)
    train(other, tmp_path / "other", progress=False)
    a, b = params(run_dir), params(tmp_path / "other")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(tiny_run: Run, tmp_path: Path) -> None:
    cfg, full_dir, full_result = tiny_run
    half = dataclasses.replace(cfg, total_env_steps=UPDATES // 2 * STEPS_PER_UPDATE)
    first = train(half, tmp_path, progress=False)
    assert first["updates"] == UPDATES // 2
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["counters"]["update"] == UPDATES // 2
    resumed = train(cfg, tmp_path, resume=True, progress=False)
    assert without_time(resumed) == without_time(full_result)
    mine, full = load_checkpoint(tmp_path / CHECKPOINT_NAME), load_checkpoint(full_dir / CHECKPOINT_NAME)
    assert mine["counters"] == full["counters"] == {"update": UPDATES, "env_steps": UPDATES * STEPS_PER_UPDATE}
    assert_same_tree(mine["policy"], full["policy"], "policy")
    assert_same_tree(mine["optimizer"], full["optimizer"], "optimizer")
    assert_same_tree(mine["rng"], full["rng"], "rng")
    # Resuming a finished run does nothing more.
    assert train(cfg, tmp_path, resume=True, progress=False)["updates"] == UPDATES


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------


def test_tensorboard_tags(tiny_run: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = tiny_run
    kinds = ("scalars", "images", "tensors", "histograms", "compressedHistograms", "audio")
    acc = EventAccumulator(str(run_dir), size_guidance=dict.fromkeys(kinds, 0))
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    expected = {"losses/policy", "losses/value", "losses/entropy", "losses/explained_variance", "charts/return",
                "charts/steps_per_second", "charts/accuracy", "eval/accuracy"}
    expected |= {f"eval/accuracy_instance_{k}" for k in range(1, K + 1)}
    expected |= {f"charts_by_instance/accuracy_{k}" for k in range(1, K + 1)}
    assert expected <= scalars, sorted(expected - scalars)
    # Only instances that exist in a task are logged (T = 3 x 3: no 4th instance of a class).
    assert not {f"eval/accuracy_instance_{K + 1}", f"charts_by_instance/accuracy_{K + 1}"} & scalars
    # The headline group holds the headline curves only (TensorBoard pages a group's cards, 12 at a time).
    assert {t for t in scalars if t.startswith("charts/")} == {"charts/return", "charts/accuracy",
                                                               "charts/steps_per_second"}
    # One training point per update (log_every = 1), at the env-step count.
    steps = [s.step for s in acc.Scalars("losses/policy")]
    assert steps == [STEPS_PER_UPDATE * (i + 1) for i in range(UPDATES)]
    assert all(s.value > 0 for s in acc.Scalars("charts/steps_per_second"))
    assert all(0.0 <= s.value <= 1.0 for k in range(1, K + 1) for s in acc.Scalars(f"eval/accuracy_instance_{k}"))
    assert {"eval/accuracy_by_instance", "images/episode_strip"} <= set(tags["images"])
    strip = acc.Images("images/episode_strip")[-1]
    assert strip.width > strip.height > 0
    # The config as text, and the hparams summary.
    assert "config/text_summary" in tags["tensors"]
    assert '"n_way": 3' in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert acc.PluginTagToContent("hparams")
    # The hparams' metrics are the eval/ curves themselves: no copy of them under another group.
    assert not {t for t in scalars if t.startswith("hparam")}, sorted(scalars)
    session = acc.PluginTagToContent("hparams")
    assert any(b"eval/accuracy" in content for content in session.values())


# --------------------------------------------------------------------------------------------
# every shipped config runs
# --------------------------------------------------------------------------------------------


def write_cifar10(folder: Path, per_class_train: int = 200, per_class_test: int = 12, classes: int = 10) -> Path:
    """A small CIFAR-10 python-pickle folder: batches.meta, data_batch_1..5, test_batch (bytes keys)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(classes)]
    with open(folder / "batches.meta", "wb") as f:
        meta = {b"label_names": names, b"num_cases_per_batch": per_class_train * classes // 5, b"num_vis": 3072}
        pickle.dump(meta, f)
    train_labels = rng.permutation(np.arange(per_class_train * classes) % classes)
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(train_labels, 5))}
    batches["test_batch"] = rng.permutation(np.arange(per_class_test * classes) % classes)
    for name, labels in batches.items():
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in labels],
            b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
            b"filenames": [b"img.png"] * len(labels),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


@pytest.fixture(scope="module")
def cifar_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "cifar:" + str(write_cifar10(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"))


def test_experiment_configs_are_found() -> None:
    assert len(CONFIGS) >= 6 and (CONFIG_DIR / "default.toml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_experiment_config_runs_one_update(path: Path, proto_dataset: str, cifar_source: str, tmp_path: Path) -> None:
    shipped = load_config(path)
    classification = "PointNav" not in shipped.env_id
    source = cifar_source if shipped.encoder == "seed_cnn" else proto_dataset
    overrides = [
        "num_envs=2", "total_env_steps=1", "hidden=8", "encoder_hidden=[16]",
        "log_every=1", "eval_every=1", "eval_episodes=2", "checkpoint_every=1", "device=cpu",
    ]
    overrides += ["core_kwargs.key_dim=8"] if shipped.core == "memory" else []
    overrides += ["encoder_kwargs.filters=4"] if shipped.encoder == "conv4" else []
    if classification:
        overrides.append(f"env_kwargs.dataset={source}")
    cfg = load_config(path, overrides)
    assert cfg.env_id == shipped.env_id and cfg.core == shipped.core and cfg.encoder == shipped.encoder
    assert {k: v for k, v in cfg.env_kwargs.items() if k != "dataset"} == {
        k: v for k, v in shipped.env_kwargs.items() if k != "dataset"
    }
    probe = make_vec_env(cfg, cfg.train_split, 1, CPU)
    result = train(cfg, tmp_path, progress=False)
    assert result["updates"] == 1
    assert result["env_steps"] == cfg.num_envs * (cfg.rollout_steps or probe.episode_length)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    steps = cfg.rollout_steps or probe.episode_length
    assert ckpt["config"] == with_built_read_head(cfg, probe, steps).to_dict()  # what was built is recorded
    assert ckpt["counters"] == {"update": 1, "env_steps": result["env_steps"]}
    if classification:
        assert 0.0 <= result["eval/accuracy_instance_1"] <= 1.0


# --------------------------------------------------------------------------------------------
# bad configs
# --------------------------------------------------------------------------------------------


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num_env'\].*did you mean num_envs\?"):
        load_config(None, ["num_env=3"])
    toml = tmp_path / "bad.toml"
    toml.write_text('lerning_rate = 0.1\nenv_id = "meta_rl/Glyphs-5way-v0"\n')
    with pytest.raises(ConfigError, match=r"lerning_rate.*bad\.toml.*learning_rate"):
        load_config(toml)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_envs=many"], "num_envs must be of type int"),
        (["num_envs=2.5"], "num_envs must be of type int"),
        (["num_envs=true"], "num_envs must be of type int"),
        (["gamma=high"], "gamma must be of type float, got str 'high'"),
        (["gamma=[0.9]"], "gamma must be of type float, got list"),
        (["encoder_hidden=[64, 'x']"], "encoder_hidden must be a list of int"),
        (["env_kwargs=3"], "env_kwargs must be a table/dict"),
        (["num_envs=-1"], r"num_envs must be >= 1"),
        (["hidden=0"], r"hidden must be >= 1"),
        (["rollout_steps=-2"], r"rollout_steps must be >= 0"),
        (["encoder_hidden=[64, 0]"], "encoder_hidden must be a non-empty list"),
        (["encoder_hidden=[]"], "encoder_hidden must be a non-empty list"),
        (["gamma=1.5"], r"gamma must lie in \[0, 1\]"),
        (["gae_lambda=-0.1"], r"gae_lambda must lie in \[0, 1\]"),
        (["learning_rate=0"], "learning_rate must be > 0"),
        (["entropy_coef=-0.01"], "entropy_coef must be >= 0"),
        (["core=mamba"], r"core = 'mamba' is not a registered core; registered: gru, lstm, memory, transformer"),
        (["encoder=resnet"], r"encoder = 'resnet' is not a registered encoder; registered: cnn, conv4, seed_cnn, mlp"),
        (["core_kwargs.key=8"], r"core_kwargs \['key'\] do nothing for core = 'memory', which takes key_dim"),
        (["core=gru", "core_kwargs.key_dim=8"], r"core_kwargs \['key_dim'\] do nothing for core = 'gru'"),
        (["algo=sac"], r"algo = 'sac' is not one of \['reinforce', 'ppo'\]"),
        (["device=tpu"], "device = 'tpu'"),
        (["num_envs"], "must look like key=value"),
    ],
)
def test_bad_values(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_env_kwargs_must_be_serialisable(synthetic: ImageDataset) -> None:
    with pytest.raises(ConfigError, match=r"env_kwargs \['dataset'\].*register_dataset"):
        TrainConfig(env_kwargs={"dataset": synthetic}).validate()
    with pytest.raises(ConfigError, match="env_kwargs"):
        TrainConfig(env_kwargs={"n_way": 5, "extra": {"fn": print}}).validate()
    TrainConfig(env_kwargs={"dataset": "glyphs", "n_way": 5, "nested": {"a": [1, 2.5, "x"]}}).validate()


def test_config_files_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("num_envs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    assert parse_overrides(["learning_rate=1e-3", "encoder_hidden=[8, 4]", "env_kwargs.n_way=20", "core=gru",
                            "normalize_advantages=false"]) == {
        "learning_rate": 1e-3, "encoder_hidden": [8, 4], "env_kwargs": {"n_way": 20}, "core": "gru",
        "normalize_advantages": False,
    }
    # An env_kwargs override joins the file's env_kwargs instead of replacing them.
    cfg = load_config("seed_cnn_cifar", ["env_kwargs.dataset=cifar:/data"])
    assert cfg.env_kwargs == {"dataset": "cifar:/data", "n_way": 5, "instances_per_class": 10}
    assert load_config(None, []) == TrainConfig()


def test_bad_env_settings(proto_dataset: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not registered"):
        train(tiny_config(proto_dataset, env_id="meta_rl/Nope-v0"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="cannot be imported"):
        train(tiny_config(proto_dataset, env_module="no_such_module_xyz"), tmp_path / "b", progress=False)


# --------------------------------------------------------------------------------------------
# bad checkpoints
# --------------------------------------------------------------------------------------------


def test_damaged_checkpoints(tiny_run: Run, tmp_path: Path) -> None:
    _, run_dir, _ = tiny_run
    good = (run_dir / CHECKPOINT_NAME).read_bytes()
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    data = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    for key in ("policy", "optimizer", "rng", "format_version"):
        torch.save({k: v for k, v in data.items() if k != key}, path)
        with pytest.raises(CheckpointError, match=f"lacks \\['{key}'\\]"):
            load_checkpoint(path)
    torch.save({**data, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a meta-rl checkpoint"):
        load_checkpoint(path)
    # The atomic writer leaves a complete, loadable file and no temporary files behind.
    save_checkpoint(path, {k: v for k, v in data.items() if k != "format_version"})
    assert load_checkpoint(path)["counters"] == data["counters"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_resume_needs_the_same_learning_config(tiny_run: Run, tmp_path: Path) -> None:
    cfg, run_dir, _ = tiny_run
    shutil.copy(run_dir / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    for change in ({"learning_rate": 0.01}, {"hidden": 16}, {"seed": 3},
                   {"env_kwargs": {**cfg.env_kwargs, "n_way": 2}}):
        with pytest.raises(CheckpointError, match=f"another config.*{next(iter(change))}"):
            train(dataclasses.replace(cfg, **change), tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)
    # Nothing was written by the refused attempts.
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_new_run_refuses_a_directory_with_a_checkpoint(tiny_run: Run) -> None:
    cfg, run_dir, _ = tiny_run
    before = (run_dir / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a checkpoint.*--resume"):
        train(cfg, run_dir, progress=False)
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == before


def test_the_saved_config_records_the_read_head_built_and_a_resume_must_match_it(
    proto_dataset: str, tmp_path: Path
) -> None:
    """The memory-read head's settings are saved as built; changing one refuses the resume."""
    from meta_rl.trained_agent import load

    cfg = tiny_config(proto_dataset, total_env_steps=2 * STEPS_PER_UPDATE, eval_every=0)
    train(cfg, tmp_path, progress=False)
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["config"]["read_head"]
    assert saved == {"read_gain": 5.0, "taken_gain": 2.0, "value_read": False, "value_read_gain": 5.0,
                     "index_head": True}
    policy = load(tmp_path).policy
    assert policy.read_head is not None and policy.read_head.index_head is not None
    with pytest.raises(CheckpointError, match=r"read_head: .*'value_read': False.* -> .*'value_read': True"):
        train(tiny_config(proto_dataset, read_head={"value_read": True}, total_env_steps=4 * STEPS_PER_UPDATE,
                          eval_every=0), tmp_path, progress=False, resume=True)
    train(dataclasses.replace(cfg, total_env_steps=4 * STEPS_PER_UPDATE), tmp_path, progress=False, resume=True)


def test_encoder_precision_is_a_compute_setting_that_a_resume_may_change(tiny_run: Run, tmp_path: Path) -> None:
    """A resume may switch the encoder's arithmetic (like ``device``) and records the new setting, and an evaluation
    may choose it."""
    from meta_rl.trained_agent import load

    cfg, run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for precision in ("bfloat16", "float32"):
        more = dataclasses.replace(cfg, encoder_precision=precision,
                                   total_env_steps=load_checkpoint(run / CHECKPOINT_NAME)["counters"]["env_steps"]
                                   + STEPS_PER_UPDATE)
        result = train(more, run, resume=True, progress=False)
        assert result["env_steps"] == more.total_env_steps
        assert load_checkpoint(run / CHECKPOINT_NAME)["config"]["encoder_precision"] == precision
    assert load(run).policy.encoder_precision == "float32"
    assert load(run, overrides=["encoder_precision=bfloat16"]).policy.encoder_precision == "bfloat16"
