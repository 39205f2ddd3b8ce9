"""The core protocol: every registered core keeps it, and the README's "Bring your own core" example plugs in."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from meta_rl.cli import main
from meta_rl.cores import CORES, Core, make_core
from meta_rl.errors import ConfigError
from meta_rl.train import CHECKPOINT_NAME

README = Path(__file__).resolve().parents[1] / "README.md"
T, B, E, U = 9, 3, 5, 4
CPU = torch.device("cpu")


def readme_core() -> str:
    """The Python block of the README's "Bring your own core" section."""
    section = README.read_text().split("## Bring your own core", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return str(code)


@pytest.fixture(scope="module")
def my_cores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The README's example written as the user's module ``my_cores`` and imported (it registers ``ema``)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_cores.py").write_text(readme_core())
    sys.path.insert(0, str(folder))
    import my_cores  # noqa: F401  (registers the core)

    yield "my_cores"
    sys.path.remove(str(folder))


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(T, B, E, generator=g, dtype=torch.float64)
    u = torch.randn(T, B, U, generator=g, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = starts[6, 2] = starts[7, 2] = True  # tasks start mid-sequence, one lasts a single step
    return e, u, starts


def _core(name: str) -> Core:
    torch.manual_seed(0)
    return make_core(name, E, U, hidden=8, task_length=T).double()


def _state(core: Core, batch: int = B) -> tuple[torch.Tensor, ...]:
    return tuple(s.double() if s.is_floating_point() else s for s in core.initial_state(batch, CPU))


@pytest.mark.parametrize("name", ["memory", "gru", "lstm", "transformer", "ema"])
def test_every_core_keeps_the_protocol(name: str, my_cores: str) -> None:
    """Step form equals sequence form; the state is batch-first, so a subset of tasks continues alike."""
    assert set(CORES.names()) >= {"memory", "gru", "lstm", "transformer", "ema"}  # the README's core registered
    core = _core(name)
    e, u, starts = _inputs()
    seq, seq_state = core(e, u, starts, _state(core))
    assert seq.shape == (T, B, core.out_dim)
    state, steps = _state(core), []
    for t in range(T):
        out, state = core(e[t : t + 1], u[t : t + 1], starts[t : t + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps), seq, atol=1e-10, rtol=0)
    assert all(s.shape[0] == B for s in seq_state)  # batch first
    more = _inputs()
    whole, _ = core(more[0], more[1], torch.zeros_like(starts), seq_state)
    after_steps, _ = core(more[0], more[1], torch.zeros_like(starts), state)  # both forms' states go on alike
    torch.testing.assert_close(after_steps, whole, atol=1e-10, rtol=0)
    tasks = torch.tensor([2, 0])
    picked = tuple(s[tasks] for s in seq_state)
    part, _ = core(more[0][:, tasks], more[1][:, tasks], torch.zeros_like(starts[:, tasks]), picked)
    torch.testing.assert_close(part, whole[:, tasks], atol=1e-10, rtol=0)


def test_a_core_option_it_does_not_take_is_refused(my_cores: str) -> None:
    assert CORES.options("ema") == {"decay": 0.9}
    with pytest.raises(ConfigError, match=r"core_kwargs \['key_dim'\] do nothing for core = 'ema', which takes decay"):
        make_core("ema", E, U, hidden=8, task_length=T, options={"key_dim": 4})
    with pytest.raises(ValueError, match="already registered"):
        CORES.register("gru")(type("Other", (Core,), {}))


def test_the_readme_core_trains_and_evaluates_from_the_command_line(
    my_cores: str, proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``core=ema model_module=my_cores`` trains; the saved run names the module, and an evaluation must too."""
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), "core=ema", f"model_module={my_cores}", "core_kwargs.decay=0.8",
            "env_id=meta_rl/FewShot-v0", f"env_kwargs.dataset={proto_dataset}", "env_kwargs.n_way=3",
            "env_kwargs.instances_per_class=2", "num_envs=4", "hidden=8", "encoder_hidden=[8]", "device=cpu",
            "total_env_steps=48", "eval_every=0", "--no-progress"]
    assert main(args) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["core"] == "ema" and saved["core_kwargs"] == {"decay": 0.8} and saved["read_head"] == {}
    assert (run_dir / CHECKPOINT_NAME).is_file()
    del sys.modules[my_cores]  # as in a new process: the checkpoint alone imports nothing
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "4", "--json"]) == 2  # a ConfigError: exit 2
    assert f"--model-module {my_cores}" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--episodes", "4", "--json", "--model-module", my_cores]) == 0


def test_a_user_encoder_plugs_in_through_the_registry() -> None:
    """``register_encoder``: a feature extractor of one's own, named as ``encoder``, with its options checked."""
    from gymnasium import spaces
    from torch import nn

    from meta_rl.config import ModelConfig, TrainConfig
    from meta_rl.encoders import ENCODERS, register_encoder
    from meta_rl.policy import MetaPolicy

    class Pool(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.out_dim = width
            self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.LazyLinear(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    @register_encoder("pool4")
    def pool4(input_shape: tuple[int, ...], *, hidden: list[int], width: int = 12) -> nn.Module:
        return Pool(width)

    assert "pool4" in ENCODERS and ENCODERS.options("pool4") == {"width": 12}
    TrainConfig(encoder="pool4", encoder_kwargs={"width": 6}).validate()
    with pytest.raises(ConfigError, match=r"encoder_kwargs \['depth'\] do nothing for encoder = 'pool4'"):
        TrainConfig(encoder="pool4", encoder_kwargs={"depth": 2}).validate()
    obs = spaces.Dict({"image": spaces.Box(0, 255, (1, 28, 28), np.uint8), "label": spaces.Discrete(4)})
    policy = MetaPolicy(obs, spaces.Discrete(3), ModelConfig(encoder="pool4", encoder_kwargs={"width": 6}, hidden=8),
                        task_length=5)
    embed = policy.encode(torch.randint(0, 255, (2, 3, 1, 28, 28), dtype=torch.uint8), (2, 3))
    assert embed.shape == (2, 3, 6) and policy.embed_dim == 6
