"""The config base shared by agents and baselines: one set of checks, one loader, floats saved as floats."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta_rl.baselines.maml import MAMLConfig
from meta_rl.baselines.protonet import ProtoNetConfig
from meta_rl.config import ConfigError, TrainConfig


@pytest.mark.parametrize("cls", [TrainConfig, ProtoNetConfig, MAMLConfig])
def test_an_int_for_a_float_key_is_saved_as_a_float(cls: type) -> None:
    cfg = cls.from_dict({"max_minutes": 3, "learning_rate": 1})
    assert type(cfg.to_dict()["max_minutes"]) is float and type(cfg.to_dict()["learning_rate"]) is float
    assert cfg.to_dict() == cls.from_dict({"max_minutes": 3.0, "learning_rate": 1.0}).to_dict()


@pytest.mark.parametrize(("cls", "key", "value", "message"), [
    (TrainConfig, "num_envs", 0, "num_envs must be >= 1, got 0."),
    (ProtoNetConfig, "meta_batch", 0, "meta_batch must be >= 1, got 0."),
    (TrainConfig, "eval_every", -1, "eval_every must be >= 0 (0 picks the default), got -1."),
    (TrainConfig, "gamma", 1.5, "gamma must lie in [0, 1], got 1.5."),
    (MAMLConfig, "learning_rate", 0.0, "learning_rate must be > 0, got 0.0."),
    (ProtoNetConfig, "max_minutes", -1.0, "max_minutes must be >= 0, got -1.0."),
    (TrainConfig, "core", "mamba", "core = 'mamba' is not a registered core; registered: gru, lstm, memory"),
    (MAMLConfig, "encoder", "vit", "encoder = 'vit' is not one of"),
    (ProtoNetConfig, "device", "tpu", "device = 'tpu'; use 'auto', 'cpu', 'cuda' or 'cuda:N'."),
])
def test_each_rule_names_the_key_and_what_is_allowed(cls: type, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_dict({key: value})
    assert message in str(info.value)


def test_unknown_keys_and_files_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_wya'\] in the overrides for the protonet baseline"):
        ProtoNetConfig.load(None, ["n_wya=3"])
    toml = tmp_path / "run.toml"
    toml.write_text("num_env = 4\n")
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) \['num_env'\] in {toml}; did you mean num_envs\?"):
        TrainConfig.load(toml)
    with pytest.raises(ConfigError, match=r"does not exist and not a shipped config\. Did you mean maml-5way1shot\?.*"
                                          r"protonet-5way1shot"):
        MAMLConfig.load(tmp_path / "maml-5way1shto.toml")
    with pytest.raises(ConfigError, match=r"baselines take no env_kwargs"):
        MAMLConfig.load(None, ["env_kwargs.n_way=3"])


def test_overrides_merge_tables_key_by_key(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[env_kwargs]\ndataset = "glyphs"\nn_way = 5\n')
    cfg = TrainConfig.load(toml, ["env_kwargs.n_way=20"])
    assert cfg.env_kwargs == {"dataset": "glyphs", "n_way": 20}
