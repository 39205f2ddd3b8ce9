"""``cuda_graphs``: the rollout's acting step on static buffers (:mod:`meta_rl.graphed_step`).

On the CPU the graphed step runs eagerly on its buffers, and a rollout through it equals the plain rollout bit
for bit (every core, Discrete and Box actions, sampled and deterministic, a task start inside the rollout, the
image stream encoded up front and step by step, the step reused by a later rollout); a CPU run refuses the
setting. On CUDA (skipped without one) the step is captured as a CUDA graph and replayed: its rollouts equal the
eager ones, and a tiny training run with ``cuda_graphs = true`` goes through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_synthetic_dataset
from env_checks import no_host_sync
from gymnasium.vector import VectorEnv
from tiny_runs import tiny_config

from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import ConfigError, ModelConfig, check_cuda_graphs
from meta_rl.envs.classification import FewShotVectorEnv
from meta_rl.envs.point_nav import PointNavVectorEnv
from meta_rl.graphed_step import _GRAPHS, StepInputs, graphed_step
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import Rollout, collect
from meta_rl.train import CHECKPOINT_NAME, train

pytestmark = pytest.mark.usefixtures("one_thread")

CORES = ("memory", "gru", "lstm", "transformer")
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def few_shot(device: str = "cpu") -> FewShotVectorEnv:
    """3 tasks of 3-way classification, 9 steps each: Discrete actions, image and label observations."""
    return FewShotVectorEnv(3, dataset=make_synthetic_dataset(num_classes=6, images_per_class=4), n_way=3,
                            instances_per_class=3, device=device)


def point_nav(device: str = "cpu") -> PointNavVectorEnv:
    """3 trials of two 4-step episodes: Box actions and observations."""
    return PointNavVectorEnv(3, episodes_per_trial=2, horizon=4, device=device)


ENVS = {"few_shot": few_shot, "point_nav": point_nav}


def small_policy(env: VectorEnv, core: str, device: str = "cpu") -> MetaPolicy:
    torch.manual_seed(0)
    core_kwargs = {"key_dim": 4} if core == "memory" else {}
    model = ModelConfig(encoder_hidden=[16], hidden=8, core=core, core_kwargs=core_kwargs)
    return MetaPolicy(env.single_observation_space, env.single_action_space, model, task_length=12).to(device)


def rollouts(env: VectorEnv, policy: MetaPolicy, steps: int, deterministic: bool, graphed: bool) -> list[Rollout]:
    """Two rollouts of ``steps`` steps from one generator (the second reuses the first's graphed step)."""
    generator = torch.Generator(device=policy.value_head.weight.device).manual_seed(3)
    return [collect(env, policy, steps, generator, reset_seed=seed, deterministic=deterministic, graphed=graphed)
            for seed in (7, 8)]


def fields(ro: Rollout) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in vars(ro).items() if isinstance(v, torch.Tensor)}
    out.update({f"state0[{i}]": s for i, s in enumerate(ro.state0)})
    out.update({f"extras[{k}]": v for k, v in ro.extras.items()})
    return out


def assert_same(graphed: list[Rollout], plain: list[Rollout]) -> None:
    for i, (g, p) in enumerate(zip(graphed, plain, strict=True)):
        a, b = fields(g), fields(p)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"rollout {i}: {name} differs"


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("env_name", sorted(ENVS))
@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "deterministic"])
def test_graphed_rollout_on_cpu_equals_the_plain_one(core: str, env_name: str, deterministic: bool) -> None:
    """Through the static buffers (run eagerly on the CPU) a rollout is the plain one, bit for bit; the steps span
    two tasks (a start inside the rollout), so the few-shot images are encoded step by step."""
    env = ENVS[env_name]()
    policy = small_policy(env, core)
    steps = 2 * env.episode_length
    plain = rollouts(env, policy, steps, deterministic, graphed=False)
    assert policy not in _GRAPHS
    graphed = rollouts(env, policy, steps, deterministic, graphed=True)
    assert len(_GRAPHS[policy]) == 1  # one step for the layout, reused by the second rollout
    assert plain[0].starts[env.episode_length].all()
    assert_same(graphed, plain)


@pytest.mark.parametrize("core", CORES)
def test_graphed_rollout_with_the_image_stream_encoded_up_front_equals_the_plain_one(core: str) -> None:
    """Within one task the few-shot images are encoded once, before the steps: the graphed step takes the encoding."""
    env = few_shot()
    policy = small_policy(env, core)
    steps = env.episode_length
    plain = rollouts(env, policy, steps, False, graphed=False)
    graphed = rollouts(env, policy, steps, False, graphed=True)
    assert graphed[0].embed is not None
    ((step, _),) = _GRAPHS[policy].values()
    assert step.inputs.embed is not None and step.inputs.main is None
    assert_same(graphed, plain)


def test_a_graphed_step_is_made_per_layout() -> None:
    """Another batch, the mode instead of samples, eval mode or a parameter's new storage each get their own step;
    the same layout reuses it."""
    env = point_nav()
    policy = small_policy(env, "gru")
    steps = env.episode_length
    generator = torch.Generator().manual_seed(0)
    collect(env, policy, steps, generator, reset_seed=0, graphed=True)
    collect(env, policy, steps, generator, reset_seed=1, graphed=True)
    assert len(_GRAPHS[policy]) == 1
    collect(env, policy, steps, generator, reset_seed=1, graphed=True, deterministic=True)
    assert len(_GRAPHS[policy]) == 2
    collect(PointNavVectorEnv(2, episodes_per_trial=2, horizon=4), policy, steps, generator, reset_seed=0, graphed=True)
    assert len(_GRAPHS[policy]) == 3
    policy.eval()
    collect(env, policy, steps, generator, reset_seed=0, graphed=True)
    assert len(_GRAPHS[policy]) == 4
    policy.value_head.weight.data = policy.value_head.weight.data.clone()  # the old storage: no longer the policy's
    plain = collect(env, policy, steps, torch.Generator().manual_seed(5), reset_seed=2)
    graphed = collect(env, policy, steps, torch.Generator().manual_seed(5), reset_seed=2, graphed=True)
    assert len(_GRAPHS[policy]) == 5
    assert_same([graphed], [plain])


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_sampling_from_drawn_noise_is_sampling_from_the_generator(env_name: str) -> None:
    """The noise a rollout draws for the graph, then the sample from it, is what sampling from the generator gives
    (Discrete: Gumbel-max of a uniform draw; Box: the squashed Gaussian of a normal draw); no noise: the mode."""
    env = ENVS[env_name]()
    policy = small_policy(env, "gru")
    params = torch.randn(64, policy.action_dim)
    drawn = policy.sample_from_noise(params, policy.noise(64, torch.Generator().manual_seed(1)))
    assert torch.equal(drawn, policy.sample(params, torch.Generator().manual_seed(1)))
    assert not torch.equal(drawn, policy.sample(params, torch.Generator().manual_seed(2)))
    assert torch.equal(policy.sample_from_noise(params, None), policy.sample(params, None, deterministic=True))


def example(policy: MetaPolicy, env: VectorEnv, state: tuple[torch.Tensor, ...]) -> StepInputs:
    obs, _ = env.reset(seed=0)
    b = env.num_envs
    return StepInputs({}, torch.zeros(b, policy.action_dim), torch.zeros(b), torch.ones(b, dtype=torch.bool), state,
                      policy.noise(b, torch.Generator().manual_seed(0)), main=obs, embed=None)


def test_a_graphed_step_refuses_inputs_of_another_layout() -> None:
    env = point_nav()
    policy = small_policy(env, "gru")
    x = example(policy, env, policy.initial_state(env.num_envs, "cpu"))
    step = graphed_step(policy, x)
    step.step(x)
    with pytest.raises(ValueError, match=r"graphed step for inputs .* was given .*graphed_step\(policy, inputs\)"):
        step.step(x._replace(noise=None))
    with pytest.raises(ValueError, match="was given"):
        step.step(x._replace(prev_reward=torch.zeros(1)))
    with pytest.raises(ValueError, match="float64"):
        step.step(x._replace(prev_reward=x.prev_reward.double()))


def test_a_core_whose_state_changes_dtype_is_refused() -> None:
    """The state buffers keep their shapes and dtypes: a core that gives another (here: the transformer's int64
    step count for the int32 one it was given) is refused, naming it and the fix."""
    env = point_nav()
    policy = small_policy(env, "transformer")
    keys, values, count = policy.initial_state(env.num_envs, "cpu")
    x = example(policy, env, (keys, values, count.int()))
    with pytest.raises(ConfigError, match=r"cuda_graphs needs a core whose state keeps .*TransformerCore.*int32.*"
                                          r"int64.*cuda_graphs=false"):
        graphed_step(policy, x).step(x)


def test_a_cpu_run_refuses_cuda_graphs(proto_dataset: str, tmp_path: Path) -> None:
    """A CPU run with cuda_graphs = true is refused before it writes anything, naming the device and the fix."""
    cfg = tiny_config(proto_dataset, 1, cuda_graphs=True)
    with pytest.raises(ConfigError, match=r"cuda_graphs = true .* device is cpu \(device = 'cpu'.*device=cuda.*"
                                          r"cuda_graphs=false"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"device is cpu \(device = 'auto'"):  # where auto finds no CUDA
        check_cuda_graphs(True, torch.device("cpu"), "auto")
    check_cuda_graphs(False, torch.device("cpu"), "cpu")


def test_training_passes_cuda_graphs_to_the_collector(proto_dataset: str, tmp_path: Path) -> None:
    """The trainer collects with ``graphed`` as the config says (off by default)."""
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Rollout:
        seen.append(kwargs["graphed"])
        return collect(*args, **kwargs)

    train(tiny_config(proto_dataset, 2, eval_every=0), tmp_path, progress=False, collector=spy)
    assert seen == [False, False]


@needs_cuda[0]
@needs_cuda[1]
@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_cuda_graphed_rollout_equals_the_eager_one(core: str, env_name: str) -> None:
    """On CUDA the captured, replayed step gives the eager step's rollouts (same seed): integer and boolean parts
    exactly, floats to float32 precision (the kernels are the same; cuBLAS promises bitwise equality only per
    stream)."""
    env = ENVS[env_name]("cuda")
    policy = small_policy(env, core, "cuda")
    for steps in (env.episode_length, 2 * env.episode_length):
        for deterministic in (False, True):
            eager = rollouts(env, policy, steps, deterministic, graphed=False)
            graphed = rollouts(env, policy, steps, deterministic, graphed=True)
            for g, e in zip(graphed, eager, strict=True):
                a, b = fields(g), fields(e)
                for name in a:
                    if a[name].is_floating_point():
                        torch.testing.assert_close(a[name], b[name], msg=name)
                    else:
                        assert torch.equal(a[name], b[name]), name
    assert _GRAPHS[policy] and all(step.graph is not None for step, _ in _GRAPHS[policy].values())


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_graphed_rollout_never_syncs_with_the_host() -> None:
    """Once captured, a graphed rollout (noise drawn, inputs copied in, the graph replayed) never waits for the
    device: ``set_sync_debug_mode("error")`` turns any host sync into an error."""
    env = few_shot("cuda")
    policy = small_policy(env, "memory", "cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    steps = 2 * env.episode_length  # images encoded step by step, inside the graph
    collect(env, policy, steps, generator, reset_seed=0, graphed=True)  # the capture synchronises, once
    with no_host_sync():
        ro = collect(env, policy, steps, generator, reset_seed=1, graphed=True)
    assert ro.actions.device.type == "cuda" and len(_GRAPHS[policy]) == 1


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_training_with_cuda_graphs_runs(proto_dataset: str, tmp_path: Path) -> None:
    """A tiny run on CUDA with cuda_graphs = true collects through a captured graph and ends with finite parameters."""
    seen: list[Any] = []

    def spy(env: VectorEnv, policy: MetaPolicy, *args: Any, **kwargs: Any) -> Rollout:
        seen.append((kwargs["graphed"], policy))
        return collect(env, policy, *args, **kwargs)

    updates = 3
    cfg = tiny_config(proto_dataset, updates, device="cuda", cuda_graphs=True, eval_every=0)
    train(cfg, tmp_path, progress=False, collector=spy)
    assert [g for g, _ in seen] == [True] * updates
    assert all(s.graph is not None for s, _ in _GRAPHS[seen[0][1]].values())
    params = load_checkpoint(tmp_path / CHECKPOINT_NAME)["policy"]
    assert all(torch.isfinite(v).all() for v in params.values() if v.is_floating_point())
