"""Encoders, recurrent cores and the RL² meta-policy: shapes, inputs, resets and step/sequence agreement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from meta_rl.config import CRITICS, ModelConfig
from meta_rl.cores import Core, EpisodicMemoryCore, make_core
from meta_rl.data import ImageDataset
from meta_rl.encoders import Conv4Encoder, MLPEncoder, SeedCNNEncoder, build_encoder, make_encoder
from meta_rl.envs import FewShotVectorEnv
from meta_rl.errors import ConfigError
from meta_rl.memory_read import VALUE_READ_EPS, IndexHead, action_counts, action_value_read
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import collect

CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------


def test_conv4_on_omniglot_shape() -> None:
    enc = make_encoder("conv4", (1, 28, 28))
    assert isinstance(enc, Conv4Encoder) and enc.out_dim == 64
    assert enc(torch.rand(5, 1, 28, 28)).shape == (5, 64)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == 64 and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 4
    group = make_encoder("conv4", (1, 28, 28), filters=16, norm="group")
    assert group.out_dim == 16 and sum(isinstance(m, nn.GroupNorm) for m in group.modules()) == 4
    # GroupNorm: an image's features do not depend on the rest of the batch.
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(group(x)[:1], group(x[:1]))


def test_seed_cnn_structure() -> None:
    enc = make_encoder("seed_cnn", (3, 32, 32))
    assert isinstance(enc, SeedCNNEncoder) and enc.out_dim == 1024
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 1024)
    leaves = [m for m in enc.modules() if not list(m.children())]
    kinds = [type(m) for m in leaves]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.ReLU]
    conv1, conv2 = leaves[0], leaves[3]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride) == (3, 32, (5, 5), (2, 2))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.stride) == (32, 64, (5, 5), (2, 2))
    assert leaves[2].kernel_size == 2 and leaves[5].kernel_size == 2
    # 32 -> conv/2 -> 16 -> pool -> 8 -> conv/2 -> 4 -> pool -> 2: 64 x 2 x 2 features into the dense layer.
    assert (leaves[7].in_features, leaves[7].out_features) == (256, 1024)


def test_mlp_encoder() -> None:
    enc = make_encoder("mlp", (1, 28, 28), hidden=(64, 32))
    assert isinstance(enc, MLPEncoder) and enc.out_dim == 32
    out = enc(torch.rand(7, 1, 28, 28))
    assert out.shape == (7, 32)
    assert (out < 0).any()  # the last layer is linear, not ReLU
    assert make_encoder("mlp", (10,), hidden=(8,))(torch.rand(3, 10)).shape == (3, 8)


def test_bad_encoders() -> None:
    with pytest.raises(ConfigError, match="encoder = 'resnet' is not a registered encoder; registered: cnn, conv4"):
        make_encoder("resnet", (1, 28, 28))
    with pytest.raises(ConfigError, match=r"encoder = 'conv4' needs \(C, H, W\) inputs, got shape \(784,\)"):
        make_encoder("conv4", (784,))
    with pytest.raises(ConfigError, match=r"encoder_kwargs \['width'\] do nothing for encoder = 'cnn', which takes "
                                          r"channels \(default \(32, 64, 64\)\)"):
        build_encoder("cnn", (1, 28, 28), hidden=[8], options={"width": 3})
    with pytest.raises(ValueError, match="too small"):
        make_encoder("conv4", (1, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        make_encoder("conv4", (1, 28, 28), norm="layer")
    with pytest.raises(ValueError, match="at least one layer"):
        MLPEncoder((4,), hidden=())


def test_seed_cnn_too_small_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_encoder("seed_cnn", (3, 4, 4))


# --------------------------------------------------------------------------------------------
# cores
# --------------------------------------------------------------------------------------------

T, B, E, U = 10, 4, 6, 5
CORE_NAMES = ("memory", "gru", "lstm")


def _core(name: str) -> Core:
    torch.manual_seed(0)
    options = {"key_dim": 4} if name == "memory" else {}
    return make_core(name, E, U, hidden=8, task_length=T, options=options).double()


def _state(core: Core | MetaPolicy, batch: int = B) -> tuple[torch.Tensor, ...]:
    """A core's (or a policy's) initial state in float64."""
    return tuple(s.double() if s.is_floating_point() else s for s in core.initial_state(batch, CPU))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(T, B, E, generator=g, dtype=torch.float64)
    u = torch.randn(T, B, U, generator=g, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[4, 1] = True  # task starts in the middle for some entries only
    starts[2, 2] = starts[5, 2] = starts[6, 2] = True  # and several times (a one-step task at 5)
    return e, u, starts


@pytest.mark.parametrize("name", CORE_NAMES)
@pytest.mark.parametrize("half", [3, 4, 7])
def test_core_split_sequence_continues_from_state(name: str, half: int) -> None:
    core = _core(name)
    e, u, starts = _inputs(1)
    whole, _ = core(e, u, starts, _state(core))
    first, state = core(e[:half], u[:half], starts[:half], _state(core))
    second, _ = core(e[half:], u[half:], starts[half:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_core_resets_at_task_starts(name: str) -> None:
    core = _core(name)
    e, u, starts = _inputs(2)
    out, _ = core(e, u, starts, _state(core))
    # Change every input of entry 1 before its start at t = 4, and of entry 0 (no start after t = 0).
    e2, u2 = e.clone(), u.clone()
    e2[:4, :2] += 1.0
    u2[:4, :2] -= 0.5
    out2, _ = core(e2, u2, starts, _state(core))
    torch.testing.assert_close(out2[4:, 1], out[4:, 1], atol=1e-12, rtol=0)  # after the start: no trace
    assert (out2[4:, 0] - out[4:, 0]).abs().max() > 1e-3  # without a start the past matters
    torch.testing.assert_close(out2[:, 2:], out[:, 2:], atol=0, rtol=0)  # other tasks untouched
    # The state given to the call is cleared too where the first step starts a task.
    _, carried = core(*_inputs(3), _state(core))
    out3, _ = core(e, u, starts, carried)
    torch.testing.assert_close(out3, out, atol=1e-12, rtol=0)
    no_start = starts.clone()
    no_start[0, 0] = False
    out4, _ = core(e, u, no_start, carried)
    assert (out4[:, 0] - out[:, 0]).abs().max() > 1e-3
    torch.testing.assert_close(out4[:, 1:], out[:, 1:], atol=1e-12, rtol=0)


def test_memory_core_retrieves_by_content() -> None:
    """The read at a repeated key returns the context stored with that key's first showing."""
    core = EpisodicMemoryCore(3, 4, hidden=4, key_dim=3, capacity=8).double()  # a core is a plain module too
    with torch.no_grad():
        core.key.weight.copy_(torch.eye(3, dtype=torch.float64))
        core.key.bias.zero_()
        core.log_beta.fill_(np.log(50.0))
    keys = torch.eye(3, dtype=torch.float64)
    # Steps show keys 0, 1, 2, 0; u_t carries a code for the observation shown at t - 1.
    e = keys[[0, 1, 2, 0]].unsqueeze(1)  # (4, 1, 3)
    u = torch.zeros(4, 1, 4, dtype=torch.float64)
    u[1, 0, 0] = u[2, 0, 1] = u[3, 0, 2] = 1.0  # codes 0, 1, 2 for the observations at 0, 1, 2
    starts = torch.tensor([[True], [False], [False], [False]])
    out, _ = core(e, u, starts, _state(core, 1))
    read = out[3, 0, 4:8]
    assert read.argmax().item() == 0 and read[0] > 0.9  # key 0 was stored with code 0
    assert out[0, 0, 4:8].abs().max() < 1e-9  # nothing stored yet at the first step


# --------------------------------------------------------------------------------------------
# the meta-policy
# --------------------------------------------------------------------------------------------

N_WAY = 3


def image_space() -> spaces.Dict:
    return spaces.Dict({"image": spaces.Box(0, 255, (1, 28, 28), np.uint8), "label": spaces.Discrete(N_WAY + 1)})


READ_HEAD_KEYS = ("read_gain", "taken_gain", "value_read", "value_read_gain", "index_head")


def small_policy(obs_space: spaces.Space[Any], act_space: spaces.Space[Any], **kw: Any) -> MetaPolicy:
    """A small policy: ``kw`` sets ModelConfig fields, and the memory-read head's keys go to its table."""
    torch.manual_seed(0)
    read_head = {k: kw.pop(k) for k in READ_HEAD_KEYS if k in kw}
    core_kwargs = {"key_dim": 4} if kw.get("core", "memory") == "memory" else {}
    model = ModelConfig(**{"encoder_hidden": [16], "hidden": 8, "core_kwargs": core_kwargs, "read_head": read_head,
                           **kw})
    return MetaPolicy(obs_space, act_space, model, task_length=12)


def value_read(policy: MetaPolicy) -> bool:
    return policy.read_head is not None and policy.read_head.value_read


def index_head(policy: MetaPolicy) -> IndexHead | None:
    return None if policy.read_head is None else policy.read_head.index_head


def test_rl2_context_layout() -> None:
    policy = small_policy(image_space(), spaces.Discrete(N_WAY))
    assert policy.main_key == "image" and policy.context_keys == ["label"]
    assert policy.context_dim == (N_WAY + 1) + N_WAY + 2 + N_WAY
    obs = {"label": torch.tensor([[3, 1]])}  # (T=1, B=2): nothing revealed / label 1 revealed
    prev_a = torch.tensor([[2, 0]])
    prev_r = torch.tensor([[0.5, 1.0]])
    starts = torch.tensor([[True, False]])
    ctx = policy.context(obs, prev_a, prev_r, starts)
    assert ctx.shape == (1, 2, policy.context_dim)
    # Layout: revealed label one-hot (4), previous action one-hot (3), previous reward, start flag,
    # the reward credited to the previous action (3).
    torch.testing.assert_close(ctx[0, 1], torch.tensor([0, 1, 0, 0, 1, 0, 0, 1.0, 0, 1.0, 0, 0]))
    # At a task start the previous action and reward are zeroed; the flag is set.
    torch.testing.assert_close(ctx[0, 0], torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 1.0, 0, 0, 0]))


def test_credit_input_tells_which_action_earned_the_reward() -> None:
    """A reward of 0.5 after action 2 is credited to action 2 only; Box actions get no credit part."""
    policy = small_policy(image_space(), spaces.Discrete(N_WAY))
    ctx = policy.context({"label": torch.tensor([[3]])}, torch.tensor([[2]]), torch.tensor([[0.5]]),
                         torch.tensor([[False]]))
    torch.testing.assert_close(ctx[0, 0, -N_WAY:], torch.tensor([0, 0, 0.5]))
    box = small_policy(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2,), np.float32), core="gru")
    assert box.context_dim == 2 + 2


def test_image_obs_encoding_and_discrete_head() -> None:
    policy = small_policy(image_space(), spaces.Discrete(N_WAY), core="gru")
    assert policy.image_input and policy.discrete and policy.log_std is None
    images = torch.randint(0, 256, (5, 2, 1, 28, 28), dtype=torch.uint8)
    embed = policy.encode(images, (5, 2))
    assert embed.shape == (5, 2, 16)
    # uint8 images are scaled to [0, 1] before the encoder.
    torch.testing.assert_close(embed[0, 0], policy.encoder(images[0, :1].float() / 255)[0])
    starts = torch.zeros(5, 2, dtype=torch.bool)
    starts[0] = True
    ctx = policy.context({"label": torch.full((5, 2), N_WAY)}, torch.zeros(5, 2), torch.zeros(5, 2), starts)
    logits, values, _ = policy(embed, ctx, starts, policy.initial_state(2, CPU))
    assert logits.shape == (5, 2, N_WAY) and values.shape == (5, 2)
    actions = policy.sample(logits, torch.Generator().manual_seed(0))
    assert actions.shape == (5, 2) and ((actions >= 0) & (actions < N_WAY)).all()
    torch.testing.assert_close(policy.sample(logits, None, deterministic=True), logits.argmax(-1))
    assert policy.log_prob(logits, actions).shape == (5, 2) and policy.entropy(logits).shape == (5, 2)


def test_bfloat16_encoder_keeps_float32_parameters_and_features() -> None:
    """Under ``encoder_precision="bfloat16"`` the conv net computes in bfloat16 (autocast) but returns
    float32 features near the float32 ones, and its gradients land on float32 parameters."""
    exact = small_policy(image_space(), spaces.Discrete(N_WAY), encoder="cnn", encoder_precision="float32")
    half = small_policy(image_space(), spaces.Discrete(N_WAY), encoder="cnn", encoder_precision="bfloat16")
    images = torch.randint(0, 256, (4, 3, 1, 28, 28), dtype=torch.uint8)
    want, got = exact.encode(images, (4, 3)), half.encode(images, (4, 3))  # same seed, same weights
    assert got.dtype == torch.float32 and got.shape == want.shape == (4, 3, 16)
    assert not torch.equal(got, want)  # it did run in bfloat16 ...
    torch.testing.assert_close(got, want, atol=0.05 * want.abs().max().item(), rtol=0.05)  # ... to its precision
    got.square().sum().backward()
    grads = [p.grad for p in half.encoder.parameters()]  # type: ignore[union-attr]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_only_for_images_on_native_hardware(native: bool, monkeypatch: Any) -> None:
    monkeypatch.setattr("meta_rl.policy.native_bfloat16", lambda device: native)
    exact = small_policy(image_space(), spaces.Discrete(N_WAY), encoder="cnn", encoder_precision="float32")
    auto = small_policy(image_space(), spaces.Discrete(N_WAY), encoder="cnn", encoder_precision="auto")
    images = torch.randint(0, 256, (3, 2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(auto.encode(images, (3, 2)), exact.encode(images, (3, 2))) is not native
    vector = small_policy(spaces.Box(-1, 1, (5,), np.float32), spaces.Discrete(2), core="gru", encoder_precision="auto")
    plain = small_policy(spaces.Box(-1, 1, (5,), np.float32), spaces.Discrete(2), core="gru",
                         encoder_precision="float32")
    x = torch.randn(3, 2, 5)
    assert torch.equal(vector.encode(x, (3, 2)), plain.encode(x, (3, 2)))  # vectors: float32 everywhere
    # Meta tensors (memory estimates) have no autocast: float32, the larger bound, even when asked for bfloat16.
    forced = small_policy(image_space(), spaces.Discrete(N_WAY), encoder="cnn", encoder_precision="bfloat16")
    assert not forced._bfloat16(torch.device("meta")) and forced._bfloat16(CPU)


def test_bad_encoder_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"encoder_precision must be one of .*'fp16'.*use 'auto'"):
        small_policy(image_space(), spaces.Discrete(N_WAY), encoder_precision="fp16")


def test_box_actions_get_a_bounded_gaussian_head() -> None:
    act = spaces.Box(np.array([-1.0, 0.0], dtype=np.float32), np.array([1.0, 5.0], dtype=np.float32))
    obs = spaces.Box(-1.0, 1.0, (4,), np.float32)
    policy = small_policy(obs, act, core="lstm", init_log_std=-0.3)
    assert not policy.discrete and policy.main_key is None
    assert isinstance(policy.log_std, nn.Parameter) and policy.log_std.requires_grad
    assert any(p is policy.log_std for p in policy.parameters())
    torch.testing.assert_close(policy.log_std.detach(), torch.full((2,), -0.3))
    # Previous Box actions enter the context raw.
    assert policy.context_dim == 2 + 2
    x = torch.randn(6, 3, 4)
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[0] = True
    ctx = policy.context(x, torch.randn(6, 3, 2), torch.randn(6, 3), starts)
    mu, values, _ = policy(policy.encode(x, (6, 3)), ctx, starts, policy.initial_state(3, CPU))
    assert mu.shape == (6, 3, 2) and values.shape == (6, 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = policy.sample(mu * 20, g)  # far-out means: the squash must still bound them
        assert ((a >= policy.low) & (a <= policy.high)).all()
    a = policy.sample(mu, g)
    log_prob = policy.log_prob(mu, a)
    assert log_prob.shape == (6, 3) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert policy.log_std.grad is not None and policy.log_std.grad.abs().sum() > 0
    assert policy.entropy(mu).shape == (6, 3)


def test_unsupported_spaces() -> None:
    with pytest.raises(ValueError, match="must be bounded"):
        small_policy(spaces.Box(-1, 1, (3,)), spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ValueError, match="must be bounded"):
        half_open = spaces.Box(np.array([0.0, -np.inf], np.float32), np.array([1.0, 1.0], np.float32))
        small_policy(spaces.Box(-1, 1, (3,)), half_open)
    with pytest.raises(TypeError, match="observation space"):
        small_policy(spaces.MultiBinary(4), spaces.Discrete(2))
    with pytest.raises(TypeError, match="observation entry 'mask'"):
        small_policy(spaces.Dict({"image": image_space()["image"], "mask": spaces.MultiBinary(3)}), spaces.Discrete(2))
    with pytest.raises(TypeError, match="action space"):
        small_policy(spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([2, 2]))
    with pytest.raises(TypeError, match="action space"):
        small_policy(spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (2, 2)))


def test_discrete_and_context_only_observations() -> None:
    policy = small_policy(spaces.Discrete(5), spaces.Discrete(2), core="gru")
    embed = policy.encode(torch.tensor([[0, 4]]), (1, 2))
    assert embed.shape == (1, 2, 16)
    torch.testing.assert_close(embed[0, 1], policy.encoder(torch.eye(5)[4:5])[0])
    extras = spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "flag": spaces.Discrete(2)})
    policy = small_policy(extras, spaces.Discrete(2), core="gru")
    assert policy.encoder is None and policy.context_keys == ["flag", "pos"]
    obs = {"pos": torch.randn(3, 2, 2), "flag": torch.tensor([[0, 1]] * 3)}
    starts = torch.zeros(3, 2, dtype=torch.bool)
    ctx = policy.context(obs, torch.zeros(3, 2), torch.zeros(3, 2), starts)
    assert ctx.shape == (3, 2, 2 + 2 + 2 + 2 + 2)  # flag, pos, action, reward + start, credit
    torch.testing.assert_close(ctx[:, :, 2:4], obs["pos"])
    logits, _, _ = policy(policy.encode(None, (3, 2)), ctx, starts, policy.initial_state(2, CPU))
    assert logits.shape == (3, 2, 2)


@pytest.mark.parametrize("core", CORE_NAMES)
def test_state_carries_across_episodes_of_a_trial(core: str) -> None:
    """A trial of three 3-step episodes on one task, then a new task: only the task start resets."""
    policy = small_policy(image_space(), spaces.Discrete(N_WAY), core=core).double()
    steps, batch = 12, 2
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(steps, batch, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, N_WAY + 1, (steps, batch), generator=g)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0] = True
    starts[9] = True  # the next task; the episode ends at t = 3 and 6 do not start tasks
    prev_a, prev_r = torch.randint(0, N_WAY, (steps, batch), generator=g), torch.rand(steps, batch, generator=g)

    def run(emb: torch.Tensor) -> torch.Tensor:
        ctx = policy.context({"label": labels}, prev_a, prev_r, starts).double()
        state = _state(policy, batch)
        logits, _, _ = policy(emb, ctx, starts, state)
        return logits

    base = run(embed)
    changed = embed.clone()
    changed[:3] += 1.0  # only the first episode of the trial
    out = run(changed)
    assert (out[3:9] - base[3:9]).abs().max() > 1e-4  # later episodes of the trial remember it
    torch.testing.assert_close(out[9:], base[9:], atol=1e-12, rtol=0)  # the next task does not


@pytest.mark.parametrize("core", CORE_NAMES)
def test_rollout_acting_matches_update_recompute(core: str, make_dataset: Any) -> None:
    """What the agent computed step by step while acting equals the whole-sequence recompute the
    update differentiates, so the policy gradient is taken at the behaviour policy."""
    data: ImageDataset = make_dataset(num_classes=6, images_per_class=4)
    env = FewShotVectorEnv(3, dataset=data, n_way=N_WAY, instances_per_class=3)
    policy = small_policy(env.single_observation_space, env.single_action_space, core=core)
    recorded: list[torch.Tensor] = []
    forward = policy.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        recorded.append(out[0].detach())
        return out

    policy.forward = spy  # type: ignore[method-assign]
    steps = 2 * env.episode_length  # two tasks in one rollout: a task start in the middle
    ro = collect(env, policy, steps, torch.Generator().manual_seed(0), reset_seed=5)
    del policy.forward
    acted = torch.cat(recorded[:steps])  # (T, B, A): the last call is the bootstrap value
    assert ro.starts[0].all() and ro.starts[env.episode_length].all() and ro.starts.sum() == 2 * 3
    assert (ro.prev_actions[0] == 0).all() and (ro.prev_rewards[0] == 0).all()
    torch.testing.assert_close(ro.prev_actions[1:], ro.actions[:-1])
    torch.testing.assert_close(ro.prev_rewards[1:], ro.rewards[:-1])
    # Label feedback: the label of step t's image is revealed at step t + 1 (within a task).
    inner = ~ro.starts[1:]
    assert torch.equal(ro.extras["label"][1:][inner], ro.labels[:-1][inner])
    assert (ro.extras["label"][ro.starts] == N_WAY).all()
    embed = policy.encode(ro.main, (steps, 3))
    ctx = policy.context(ro.extras, ro.prev_actions, ro.prev_rewards, ro.starts)
    params, _, _ = policy(embed, ctx, ro.starts, ro.state0, need_state=False)
    torch.testing.assert_close(params, acted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ro.correct(), ro.actions == ro.labels)
    assert torch.equal(ro.rewards, ro.correct().float())


def test_memory_read_of_a_label_starts_voting_for_that_action() -> None:
    """``read_gain``: the memory core's read of revealed label j adds to action j's logit at init."""
    plain = small_policy(image_space(), spaces.Discrete(N_WAY), read_gain=0.0)
    prior = small_policy(image_space(), spaces.Discrete(N_WAY), read_gain=2.5)
    expected = torch.zeros_like(plain.policy_head.weight)
    hidden = 8  # the read follows the controller's hidden state; its first entries are the label one-hot
    expected[torch.arange(N_WAY), hidden + torch.arange(N_WAY)] = 2.5
    torch.testing.assert_close(prior.policy_head.weight - plain.policy_head.weight, expected)
    # Only where there is a memory read: elsewhere the setting would do nothing, and is refused.
    for core in ("gru", "lstm", "transformer"):
        with pytest.raises(ConfigError, match=r"read_head \['read_gain'\] does nothing here.*core = '" + core):
            small_policy(image_space(), spaces.Discrete(N_WAY), core=core, read_gain=2.5)
    no_label = spaces.Dict({"image": image_space()["image"]})
    a = small_policy(no_label, spaces.Discrete(N_WAY), read_gain=0.0)
    b = small_policy(no_label, spaces.Discrete(N_WAY), read_gain=2.5)
    label_read = hidden + torch.arange(N_WAY)  # without a label the read starts with the previous action instead
    assert not torch.equal(a.policy_head.weight, b.policy_head.weight)  # the credit vote (test_task_eval.py)
    assert not torch.equal(b.policy_head.weight[torch.arange(N_WAY), label_read] - 2.5,
                           a.policy_head.weight[torch.arange(N_WAY), label_read])


def test_action_value_read_is_each_actions_mean_reward() -> None:
    """Four stored steps read with weight 1/4 each: actions 0, 0, 1, 0 earning 1, 0, 1, 1."""
    taken = torch.tensor([0.75, 0.25, 0.0])  # Σ w [a = j]
    credit = torch.tensor([0.5, 0.25, 0.0])  # Σ w [a = j] r
    eps = VALUE_READ_EPS
    expected = torch.tensor([0.5 / (0.75 + eps), 0.25 / (0.25 + eps), 0.0,  # mean rewards: 2/3 → 0.666, 1, untaken 0
                             0.75 / (0.75 + eps), 0.25 / (0.25 + eps), 0.0])  # taken there: 1, 1, 0
    torch.testing.assert_close(action_value_read(taken, credit), expected)
    assert abs(float(action_value_read(taken, credit)[0]) - 2 / 3) < 2e-3
    grad_in = taken.clone().requires_grad_()
    assert not action_value_read(grad_in, credit).requires_grad  # statistics of the read: no gradient


def test_value_read_feeds_the_heads_only_with_memory_and_discrete_actions() -> None:
    no_label = spaces.Dict({"image": image_space()["image"]})
    on = small_policy(no_label, spaces.Discrete(N_WAY), value_read=True, index_head=False)
    off = small_policy(no_label, spaces.Discrete(N_WAY), index_head=False)
    assert value_read(on) and not value_read(off)
    assert on.policy_head.in_features == off.policy_head.in_features + 2 * N_WAY
    assert on.value_head.in_features == on.policy_head.in_features
    # The vote prior: mean reward of action j for j's logit, "taken" against it (an untaken action sits between).
    mean = on.core.out_dim + torch.arange(N_WAY)
    tried = mean + N_WAY
    rows = torch.arange(N_WAY)
    plain = small_policy(no_label, spaces.Discrete(N_WAY), read_gain=0.0, taken_gain=0.0, value_read=True,
                         value_read_gain=0.0, index_head=False)
    for gain in (0.0, 3.0):
        voted = small_policy(no_label, spaces.Discrete(N_WAY), value_read=True, value_read_gain=gain, index_head=False)
        delta = voted.policy_head.weight - plain.policy_head.weight
        torch.testing.assert_close(delta[rows, mean], torch.full((N_WAY,), gain))
        torch.testing.assert_close(delta[rows, tried], torch.full((N_WAY,), -gain / 2))
        core_part = slice(0, on.core.out_dim)  # the credit vote on the memory's read is the same whatever this gain
        torch.testing.assert_close(voted.policy_head.weight[:, core_part], on.policy_head.weight[:, core_part])
    for core in ("gru", "lstm"):
        with pytest.raises(ConfigError, match="does nothing here"):
            small_policy(no_label, spaces.Discrete(N_WAY), core=core, value_read=True, index_head=False)
    with pytest.raises(ConfigError, match=r"does nothing here.*Discrete actions \(the action space is Box"):
        small_policy(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2,), np.float32), value_read=True,
                     index_head=False)
    # Forward on a short sequence gives heads of the right shapes.
    t, b = 3, 2
    img = torch.randint(0, 256, (t, b, *no_label["image"].shape), dtype=torch.uint8)
    embed = on.encode(img, (t, b))
    ctx = on.context({}, torch.zeros(t, b, dtype=torch.long), torch.ones(t, b), torch.zeros(t, b, dtype=torch.bool))
    logits, values, _ = on(embed, ctx, torch.zeros(t, b, dtype=torch.bool), on.initial_state(b, "cpu"))
    assert logits.shape == (t, b, N_WAY) and values.shape == (t, b)


def _bandit_policy(**kw: Any) -> MetaPolicy:
    """A memory policy on a bandit-like task: one constant observation, discrete actions, rewards only."""
    return small_policy(spaces.Box(0.0, 1.0, (1,), np.float32), spaces.Discrete(3), **kw).double()


def _bandit_inputs(policy: MetaPolicy, actions: list[int], rewards: list[float]) -> tuple[torch.Tensor, ...]:
    """One task (B = 1) whose steps see the same observation, having pulled ``actions`` for ``rewards``."""
    steps = len(actions) + 1
    embed = torch.randn(1, 1, policy.embed_dim, dtype=torch.float64).expand(steps, 1, -1)  # (T, 1, E): one observation
    starts = torch.zeros(steps, 1, dtype=torch.bool)
    starts[0] = True
    prev_a = torch.tensor([0, *actions]).view(steps, 1)  # step t sees the action and reward of step t - 1
    prev_r = torch.tensor([0.0, *rewards], dtype=torch.float64).view(steps, 1)
    return embed, policy.context({}, prev_a, prev_r, starts).double(), starts


def test_action_counts_are_hand_counted_pulls_where_every_step_matches() -> None:
    """Pulls 0, 2, 0, 0, 1 of a bandit: after them each arm was taken 3, 1 and 1 times."""
    policy = _bandit_policy(index_head=True)
    assert isinstance(policy.core, EpisodicMemoryCore)
    embed, ctx, starts = _bandit_inputs(policy, [0, 2, 0, 0, 1], [1.0, 0.0, 0.0, 1.0, 1.0])
    feats, _ = policy.core(embed, ctx, starts, _state(policy.core, 1))  # (T, 1, F)
    layout = policy.core.output_layout()
    assert policy.read_head is not None
    taken, credit = policy.read_head.taken, policy.read_head.credit
    counts = action_counts(feats[..., taken], feats[..., layout["mass"]])  # (T, 1, A)
    hand = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [2, 0, 1], [3, 0, 1], [3, 1, 1]], dtype=torch.float64)
    torch.testing.assert_close(counts[:, 0], torch.log1p(hand), atol=1e-9, rtol=0)
    means = action_value_read(feats[..., taken], feats[..., credit])[-1, 0, :3]  # arm 0 paid 2 of 3, arm 2 0 of 1
    # (within the value read's eps: arm 1's one pull reads 0.2 / (0.2 + 1e-3))
    torch.testing.assert_close(means, torch.tensor([2 / 3, 1.0, 0.0], dtype=torch.float64), atol=6e-3, rtol=0)


def test_index_head_starts_silent_and_scores_every_action_with_one_rule() -> None:
    with_head, without = _bandit_policy(index_head=True), _bandit_policy(value_read=True, index_head=False)
    assert value_read(with_head) and index_head(with_head) is not None and index_head(without) is None
    assert with_head.policy_head.in_features == without.policy_head.in_features  # the counts go to the index head
    embed, ctx, starts = _bandit_inputs(with_head, [0, 2, 0], [1.0, 0.0, 1.0])
    logits, _, _ = with_head(embed, ctx, starts, _state(with_head, 1))
    head = index_head(with_head)
    assert head is not None
    stats = torch.zeros(*logits.shape, IndexHead.STATS, dtype=torch.float64)  # (T, 1, A, 3)
    assert torch.equal(head(stats, torch.randn(*logits.shape[:2], 8, dtype=torch.float64)), torch.zeros_like(logits))
    # Equivariance: permuting the actions' statistics permutes the head's output the same way.
    torch.nn.init.normal_(head.mlp[2].weight)
    stats = torch.randn(4, 2, 3, IndexHead.STATS, dtype=torch.float64)
    ctrl = torch.randn(4, 2, 8, dtype=torch.float64)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(head(stats[:, :, perm], ctrl), head(stats, ctrl)[:, :, perm])


def test_index_head_acts_step_by_step_as_it_recomputes() -> None:
    policy = _bandit_policy(index_head=True)
    head = index_head(policy)
    assert head is not None
    torch.nn.init.normal_(head.mlp[2].weight)  # make its term matter
    embed, ctx, starts = _bandit_inputs(policy, [1, 1, 0, 2, 0, 1], [0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    logits, _, _ = policy(embed, ctx, starts, _state(policy, 1))
    state, step_logits = _state(policy, 1), []
    for t in range(embed.shape[0]):
        lg, _, state = policy(embed[t : t + 1], ctx[t : t + 1], starts[t : t + 1], state)
        step_logits.append(lg)
    torch.testing.assert_close(torch.cat(step_logits), logits, atol=1e-10, rtol=0)


def test_index_head_needs_the_memory_and_discrete_actions() -> None:
    """Set where it cannot be built, the index head is refused; the policy records what it built."""
    for core in ("gru", "lstm"):
        with pytest.raises(ConfigError, match=r"read_head \['index_head'\] does nothing here"):
            _bandit_policy(core=core, index_head=True)
    with pytest.raises(ConfigError, match="does nothing here"):
        small_policy(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2,), np.float32), index_head=True)
    assert _bandit_policy(index_head=True).read_head_settings["index_head"] is True
    assert _bandit_policy(core="gru").read_head_settings == {}  # nothing built, nothing recorded


# --------------------------------------------------------------------------------------------
# the critic's trunk
# --------------------------------------------------------------------------------------------


def _label_inputs(policy: MetaPolicy, steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    embed = torch.randn(steps, batch, 16, generator=g, dtype=torch.float64)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0], starts[4, 1] = True, True  # a second task starts mid-sequence in one column
    labels = torch.randint(0, N_WAY + 1, (steps, batch), generator=g)
    prev_a, prev_r = torch.randint(0, N_WAY, (steps, batch), generator=g), torch.rand(steps, batch, generator=g)
    return embed, policy.context({"label": labels}, prev_a, prev_r, starts).double(), starts


@pytest.mark.parametrize("core", CORE_NAMES)
def test_separate_critic_acts_step_by_step_as_it_recomputes(core: str) -> None:
    """The separate critic's state travels with the policy's: values and logits computed one step at a time
    equal the whole-sequence recompute, so the bootstrap value and the update's baseline agree."""
    policy = small_policy(image_space(), spaces.Discrete(N_WAY), core=core, critic="separate").double()
    steps, batch = 7, 2
    embed, ctx, starts = _label_inputs(policy, steps, batch)
    logits, values, _ = policy(embed, ctx, starts, _state(policy, batch))
    state, step_logits, step_values = _state(policy, batch), [], []
    for t in range(steps):
        lg, v, state = policy(embed[t : t + 1], ctx[t : t + 1], starts[t : t + 1], state)
        step_logits.append(lg)
        step_values.append(v)
    torch.testing.assert_close(torch.cat(step_logits), logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.cat(step_values), values, atol=1e-10, rtol=0)
    assert len(state) == 2 * len(policy.core.initial_state(1, CPU))  # the policy's state, then the critic's


@pytest.mark.parametrize("critic", CRITICS)
def test_value_gradient_reaches_the_policy_core_only_when_shared(critic: str) -> None:
    policy = small_policy(image_space(), spaces.Discrete(N_WAY), critic=critic).double()
    embed, ctx, starts = _label_inputs(policy, 5, 2)
    embed.requires_grad_(True)
    _, values, _ = policy(embed, ctx, starts, _state(policy, 2), need_state=False)
    values.sum().backward()
    core_grad = sum(float(p.grad.abs().sum()) for p in policy.core.parameters() if p.grad is not None)
    assert (core_grad > 0) == (critic == "shared")
    assert policy.value_head.weight.grad is not None and policy.value_head.weight.grad.abs().sum() > 0
    # Only the shared critic trains the encoder through the value loss.
    assert (embed.grad is not None and bool(embed.grad.abs().sum() > 0)) == (critic == "shared")
    if critic == "separate":
        assert policy.critic_core is not None
        assert sum(float(p.grad.abs().sum()) for p in policy.critic_core.parameters() if p.grad is not None) > 0


def test_unknown_critic_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"critic must be one of .*'separate'.*got 'twin'"):
        small_policy(image_space(), spaces.Discrete(N_WAY), critic="twin")
