"""Tests of the few-shot environments, their registration and the vector-env checker."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_checks import no_host_sync
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from meta_rl.data import ImageDataset
from meta_rl.envs import FEEDBACK_MODES, REGISTERED_IDS, FewShotEnv, FewShotVectorEnv, SingleTaskEnv
from meta_rl.envs.checker import EnvCheckError, check_vector_env

B = 8
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


def _env(dataset: ImageDataset, num_envs: int = B, **kwargs: Any) -> FewShotVectorEnv:
    kwargs.setdefault("instances_per_class", 4)
    return FewShotVectorEnv(num_envs=num_envs, dataset=dataset, **kwargs)


def _oracle(env: FewShotVectorEnv) -> torch.Tensor:
    """The true label of the image shown now."""
    return env._episode.labels[:, env.step_in_episode]


def _rollout(env: FewShotVectorEnv, seed: int | None, steps: int, action_seed: int = 0) -> list[Any]:
    """Reset with ``seed`` and take ``steps`` fixed random actions; the observations and rewards."""
    obs, _ = env.reset(seed=seed)
    g = torch.Generator().manual_seed(action_seed)
    n = int(env.single_action_space.n)
    trace: list[Any] = [obs]
    for _ in range(steps):
        obs, reward, *_ = env.step(torch.randint(0, n, (env.num_envs,), generator=g))
        trace.append((obs, reward))
    return trace


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(torch.equal(a, b))


# -- spaces, dtypes, devices ---------------------------------------------------------------


@pytest.mark.parametrize("feedback", FEEDBACK_MODES)
def test_spaces_are_batched_single_spaces(synthetic: ImageDataset, feedback: str) -> None:
    env = _env(synthetic, n_way=5, feedback=feedback)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.observation_space == batch_space(env.single_observation_space, B)
    assert env.action_space == batch_space(env.single_action_space, B)
    single = env.single_observation_space
    assert isinstance(single, spaces.Dict)
    assert single["image"] == spaces.Box(0, 255, (1, 28, 28), np.uint8)
    if feedback == "reward":
        assert "label" not in single.spaces
    else:
        assert single["label"] == spaces.Discrete(6)
    assert env.single_action_space == spaces.Discrete(6 if feedback == "active" else 5)


@pytest.mark.parametrize("feedback", FEEDBACK_MODES)
def test_obs_dtypes_and_device(synthetic: ImageDataset, feedback: str) -> None:
    env = _env(synthetic, feedback=feedback)
    obs, info = env.reset(seed=0)
    assert isinstance(info, dict)
    assert obs["image"].dtype == torch.uint8 and obs["image"].shape == (B, 1, 28, 28)
    assert obs["image"].device == env.device
    if feedback == "reward":
        assert set(obs) == {"image"}
    else:
        assert obs["label"].dtype == torch.int64 and obs["label"].device == env.device
    obs, reward, terminated, truncated, info = env.step(torch.zeros(B, dtype=torch.int64))
    assert reward.dtype == torch.float32 and reward.shape == (B,) and reward.device == env.device
    assert terminated.dtype == truncated.dtype == torch.bool
    assert info["instance"].dtype == info["label"].dtype == torch.int64
    assert info["is_query"].dtype == torch.bool
    assert env.observation_space.contains({k: v.numpy() for k, v in obs.items()})


# -- rewards and feedback ------------------------------------------------------------------


@pytest.mark.parametrize("feedback", FEEDBACK_MODES)
def test_oracle_always_correct_and_wrong_always_incorrect(synthetic: ImageDataset, feedback: str) -> None:
    env = _env(synthetic, feedback=feedback)
    env.reset(seed=1)
    for _ in range(2 * env.episode_length):
        _, reward, *_ = env.step(_oracle(env))
        assert torch.all(reward == env.reward_correct)
    for _ in range(2 * env.episode_length):
        _, reward, *_ = env.step((_oracle(env) + 1) % env.n_way)
        assert torch.all(reward == env.reward_incorrect)
    assert env.reward_correct != env.reward_incorrect


def test_custom_reward_values(synthetic: ImageDataset) -> None:
    env = _env(synthetic, feedback="active", reward_correct=2.5, reward_incorrect=-0.5, reward_request=-0.25)
    env.reset(seed=2)
    mask = torch.arange(B) % 3
    true = _oracle(env)
    actions = torch.where(mask == 0, true, torch.where(mask == 1, (true + 1) % 5, 5))
    _, reward, *_ = env.step(actions)
    expected = torch.tensor([2.5, -0.5, -0.25]).repeat(B)[:B]
    assert torch.equal(reward, expected)


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [("label", (1.0, 0.0, 0.0)), ("reward", (1.0, 0.0, 0.0)), ("active", (1.0, -1.0, -0.05))],
)
def test_default_rewards(synthetic: ImageDataset, feedback: str, expected: tuple[float, ...]) -> None:
    """The documented defaults: 1/0 for label and reward feedback, 1/-1/-0.05 for active."""
    env = _env(synthetic, feedback=feedback)
    assert (env.reward_correct, env.reward_incorrect, env.reward_request) == expected


def test_label_feedback_reveals_previous_label(synthetic: ImageDataset) -> None:
    env = _env(synthetic, n_way=5, feedback="label")
    obs, _ = env.reset(seed=3)
    t_len = env.episode_length
    for _ in range(2):
        assert torch.all(obs["label"] == 5)  # nothing revealed at the first step
        for t in range(t_len):
            true = _oracle(env).clone()
            obs, _, _, _, info = env.step(torch.zeros(B, dtype=torch.int64))  # answers don't matter
            assert torch.equal(info["label"], true)
            if t < t_len - 1:
                assert torch.equal(obs["label"], true)
            else:
                assert torch.equal(info["final_obs"]["label"], true)


def test_reward_feedback_hides_labels(synthetic: ImageDataset) -> None:
    env = _env(synthetic, feedback="reward")
    obs, _ = env.reset(seed=4)
    assert "label" not in obs
    for _ in range(env.episode_length):
        obs, _, terminated, _, info = env.step(_oracle(env))
        assert "label" not in obs
    assert terminated.all() and "label" not in info["final_obs"]


def test_active_feedback_request_reveals_label(synthetic: ImageDataset) -> None:
    env = _env(synthetic, n_way=5, feedback="active")
    obs, _ = env.reset(seed=5)
    assert torch.all(obs["label"] == 5)
    request = torch.arange(B) % 2 == 0
    for t in range(env.episode_length - 1):
        request = ~request  # alternate which envs ask
        true = _oracle(env).clone()
        actions = torch.where(request, 5, true)
        obs, reward, *_ = env.step(actions)
        assert torch.all(reward[request] == env.reward_request), t
        assert torch.all(reward[~request] == env.reward_correct), t
        assert torch.equal(obs["label"][request], true[request])
        assert torch.all(obs["label"][~request] == 5)


@pytest.mark.parametrize("feedback", ["label", "active"])
def test_shots_mode_queries_reveal_nothing(synthetic: ImageDataset, feedback: str) -> None:
    n, shots, queries = 5, 2, 3
    env = _env(synthetic, n_way=n, shots=shots, queries_per_class=queries, feedback=feedback)
    obs, _ = env.reset(seed=6)
    support = n * shots
    for t in range(env.episode_length - 1):
        true = _oracle(env).clone()
        actions = torch.full((B,), n) if feedback == "active" else true  # active: always ask
        obs, _, _, _, info = env.step(actions)
        assert torch.all(info["is_query"] == (t >= support)), t
        if t < support:
            assert torch.equal(obs["label"], true), t
        else:
            assert torch.all(obs["label"] == n), t


def test_info_instance_counts(synthetic: ImageDataset) -> None:
    env = _env(synthetic, n_way=5, instances_per_class=6)
    env.reset(seed=7)
    for _ in range(2):
        seen = torch.zeros(B, 5, dtype=torch.int64)
        for _ in range(env.episode_length):
            expected = env._episode.instance[:, env.step_in_episode].clone()
            _, _, _, _, info = env.step(_oracle(env))
            seen[torch.arange(B), info["label"]] += 1
            assert torch.equal(info["instance"], seen[torch.arange(B), info["label"]])
            assert torch.equal(info["instance"], expected)
        assert torch.all(seen == 6)


# -- episode end, autoreset, images --------------------------------------------------------


def test_episode_ends_after_t_steps_with_new_task(synthetic: ImageDataset) -> None:
    env = _env(synthetic, n_way=5, instances_per_class=3)
    obs, _ = env.reset(seed=8)
    t_len = env.episode_length
    assert t_len == 15
    for _ in range(3):
        old_classes = env._episode.classes.clone()
        old_images = env.episode_images().clone()
        for t in range(t_len):
            assert env.step_in_episode == t
            obs, _, terminated, truncated, info = env.step(_oracle(env))
            assert not truncated.any()
            if t < t_len - 1:
                assert not terminated.any() and "final_obs" not in info
        assert terminated.all()
        assert env.step_in_episode == 0
        final = info["final_obs"]
        assert torch.all(final["image"] == 0)  # blank terminal image
        assert final["image"].shape == (B, 1, 28, 28)
        assert bool(info["_final_obs"].all())
        # The returned obs is the first of a new task.
        assert torch.all(obs["label"] == 5)
        assert not torch.equal(env._episode.classes, old_classes)
        assert not torch.equal(env.episode_images(), old_images)
        assert torch.equal(obs["image"], env.episode_images()[:, 0])


def test_episode_images_match_shown_images(synthetic: ImageDataset) -> None:
    env = _env(synthetic, n_way=5)
    obs, _ = env.reset(seed=9)
    images = env.episode_images()
    episode = env._episode
    t_len = env.episode_length
    assert images.shape == (B, t_len + 1, 1, 28, 28) and images.dtype == torch.uint8
    shown = [obs["image"]]
    for _ in range(t_len):
        obs, _, _, _, info = env.step(_oracle(env))
        shown.append(obs["image"])
    shown[-1] = info["final_obs"]["image"]
    assert torch.equal(torch.stack(shown, 1), images)
    # The images shown come from the classes behind the labels.
    rows = images[:, :t_len, 0, 0, 0].long() * 256 + images[:, :t_len, 0, 0, 1].long()  # conftest encoding
    assert torch.equal(rows, episode.image_index)
    assert torch.equal(synthetic.labels[rows], torch.gather(episode.classes, 1, episode.labels))


def test_numpy_actions_accepted(synthetic: ImageDataset) -> None:
    env = _env(synthetic)
    env.reset(seed=10)
    _, reward, *_ = env.step(_oracle(env).numpy().astype(np.int32))
    assert torch.all(reward == 1.0)


# -- seeding -------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [None, 2])
def test_reset_seed_determinism(synthetic: ImageDataset, shots: int | None) -> None:
    env = _env(synthetic, feedback="active", shots=shots)
    steps = 2 * env.episode_length + 3
    a = _rollout(env, 11, steps)
    b = _rollout(env, 11, steps)  # same env, reseeded
    c = _rollout(_env(synthetic, feedback="active", shots=shots), 11, steps)  # a fresh env
    d = _rollout(env, 12, steps)
    assert _same(a, b) and _same(a, c)
    assert not _same(a[0], d[0])
    # List seeds use their first entry, as gymnasium's vector API allows.
    e = _rollout(env, [11, 99], steps)  # type: ignore[arg-type]
    assert _same(a, e)


def test_env_never_touches_global_rng(synthetic: ImageDataset) -> None:
    state = torch.random.get_rng_state()
    env = _env(synthetic)
    _rollout(env, 13, 2 * env.episode_length)
    assert torch.equal(torch.random.get_rng_state(), state)


# -- bad input -----------------------------------------------------------------------------


@pytest.fixture
def env5(synthetic: ImageDataset) -> Iterator[FewShotVectorEnv]:
    env = _env(synthetic, n_way=5)
    env.reset(seed=0)
    yield env
    env.close()


def test_action_out_of_range(env5: FewShotVectorEnv) -> None:
    for bad in (5, -1):
        actions = torch.zeros(B, dtype=torch.int64)
        actions[3] = bad
        with pytest.raises(ValueError, match=rf"actions \[{bad}\] are out of range; valid labels are 0\.\.4"):
            env5.step(actions)


def _re_tuple(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_action_wrong_shape(env5: FewShotVectorEnv) -> None:
    for shape in ((B + 1,), (B, 1), ()):
        with pytest.raises(ValueError, match=rf"shape \({B},\).*got {_re_tuple(shape)}"):
            env5.step(torch.zeros(shape, dtype=torch.int64))


def test_action_float_dtype(env5: FewShotVectorEnv) -> None:
    with pytest.raises(TypeError, match=r"torch\.float32.*actions\.long\(\)"):
        env5.step(torch.zeros(B))
    with pytest.raises(TypeError, match=r"float64.*astype\(np\.int64\)"):
        env5.step(np.zeros(B))
    with pytest.raises(TypeError, match=r"torch\.bool"):
        env5.step(torch.zeros(B, dtype=torch.bool))


def test_action_wrong_device(env5: FewShotVectorEnv) -> None:
    with pytest.raises(ValueError, match=r"on meta but the env runs on cpu.*actions\.to\('cpu'\)"):
        env5.step(torch.zeros(B, dtype=torch.int64, device="meta"))


def test_action_python_list(env5: FewShotVectorEnv) -> None:
    with pytest.raises(TypeError, match=r"got list.*torch\.as_tensor"):
        env5.step([0] * B)


def test_unknown_feedback_mode(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"unknown feedback mode 'labels'.*'label', 'reward', 'active'"):
        _env(synthetic, feedback="labels")


def test_n_way_larger_than_classes(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"n_way=41 .*n_way <= 40"):
        _env(synthetic, n_way=41)


def test_too_few_instances_per_class(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"class 'class000'.*needs 13 per class.*lower instances_per_class"):
        _env(synthetic, instances_per_class=13)
    with pytest.raises(ValueError, match=r"needs 13 per class"):
        _env(synthetic, shots=5, queries_per_class=8)


def test_unknown_dataset_source() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset source 'nope'.*glyphs"):
        FewShotVectorEnv(dataset="nope")
    with pytest.raises(ValueError, match=r"needs a path.*cifar:/path"):
        FewShotVectorEnv(dataset="cifar")


def test_missing_dataset_path() -> None:
    with pytest.raises(ValueError, match="/nonexistent"):
        FewShotVectorEnv(dataset="cifar:/nonexistent")


def test_bad_split(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'training'"):
        FewShotVectorEnv(dataset={"train": synthetic}, split="training")


@pytest.mark.parametrize("num_envs", [0, -3, True, 2.0])
def test_bad_num_envs(synthetic: ImageDataset, num_envs: Any) -> None:
    with pytest.raises(ValueError, match=r"num_envs must be a positive int"):
        FewShotVectorEnv(num_envs=num_envs, dataset=synthetic)


def test_bad_reset_options_and_seed(env5: FewShotVectorEnv) -> None:
    with pytest.raises(ValueError, match=r"no options, got \['n_way'\].*constructor"):
        env5.reset(options={"n_way": 3})
    with pytest.raises(ValueError, match=r"non-negative int, got -1"):
        env5.reset(seed=-1)
    env5.reset(options={})  # empty options are fine


def test_single_env_step_before_reset_and_after_end(synthetic: ImageDataset) -> None:
    env = FewShotEnv(dataset=synthetic, instances_per_class=2)
    with pytest.raises(ValueError, match=r"call reset\(\)"):
        env.step(0)
    env.reset(seed=0)
    for _ in range(env.episode_length):
        obs, _, terminated, _, _ = env.step(0)
    assert terminated and not obs["image"].any()
    with pytest.raises(ValueError, match=r"call reset\(\)"):
        env.step(0)
    env.reset()
    with pytest.raises(TypeError, match=r"int label, got float"):
        env.step(0.0)
    with pytest.raises(ValueError, match=r"out of range"):
        env.step(5)


def test_single_env_rejects_vector_kwargs(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"use FewShotVectorEnv"):
        FewShotEnv(dataset=synthetic, num_envs=4)


# -- single-env checkers -------------------------------------------------------------------


def _check_single(env: gym.Env[Any, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # image-size and render-mode notes
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize(
    "kwargs",
    [{"feedback": f} for f in FEEDBACK_MODES] + [{"shots": 2, "queries_per_class": 3}],
    ids=[*FEEDBACK_MODES, "shots"],
)
def test_single_env_passes_checkers(synthetic: ImageDataset, kwargs: dict[str, Any]) -> None:
    env = FewShotEnv(dataset=synthetic, **kwargs)
    _check_single(env)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(obs["image"], np.ndarray) and obs["image"].dtype == np.uint8


def test_single_env_matches_vector_env(synthetic: ImageDataset) -> None:
    """FewShotEnv is FewShotVectorEnv(num_envs=1) with numpy observations."""
    single = FewShotEnv(dataset=synthetic, instances_per_class=3, feedback="active")
    vec = _env(synthetic, num_envs=1, instances_per_class=3, feedback="active")
    obs, _ = single.reset(seed=14)
    vobs, _ = vec.reset(seed=14)
    for t in range(single.episode_length):
        assert np.array_equal(obs["image"], vobs["image"][0].numpy())
        assert obs["label"] == int(vobs["label"][0])
        action = t % 6
        obs, reward, terminated, _, info = single.step(action)
        vobs, vreward, vterm, _, vinfo = vec.step(torch.tensor([action]))
        assert reward == float(vreward[0]) and terminated == bool(vterm[0])
        assert info["instance"] == int(vinfo["instance"][0]) and info["label"] == int(vinfo["label"][0])
    assert terminated
    assert np.array_equal(obs["image"], vinfo["final_obs"]["image"][0].numpy())


@pytest.mark.parametrize("env_id", REGISTERED_IDS)
def test_registered_single_env_passes_checkers(glyph_splits: dict[str, ImageDataset], env_id: str) -> None:
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, SingleTaskEnv)
    _check_single(env)
    env.close()


def test_gym_make_glyphs_5way(glyph_splits: dict[str, ImageDataset]) -> None:
    import meta_rl.envs  # noqa: F401  (registers the ids)

    env = gym.make("meta_rl/Glyphs-5way-v0")
    assert env.spec is not None and env.spec.id == "meta_rl/Glyphs-5way-v0"
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.action_space == spaces.Discrete(5)
    assert obs["image"].shape == glyph_splits["train"].image_shape
    _, reward, terminated, truncated, _ = env.step(0)
    assert reward in (0.0, 1.0) and not terminated and not truncated
    vec = gym.make_vec("meta_rl/Glyphs-5way-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(vec, FewShotVectorEnv) and vec.num_envs == 3 and vec.episode_length == 50


def test_generic_id_takes_dataset(synthetic: ImageDataset) -> None:
    env = gym.make("meta_rl/FewShot-v0", dataset=synthetic, n_way=3, instances_per_class=2)
    assert env.action_space == spaces.Discrete(3)
    assert env.unwrapped.episode_length == 6  # type: ignore[attr-defined]
    vec = gym.make_vec("meta_rl/FewShot-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       dataset=synthetic, n_way=3, device="cpu")
    obs, _ = vec.reset(seed=0)
    assert obs["image"].shape == (2, 1, 28, 28)


# -- vector checker ------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", REGISTERED_IDS)
def test_registered_vector_env_passes_checker(glyph_splits: dict[str, ImageDataset], env_id: str) -> None:
    check_vector_env(lambda: gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point"))


@pytest.mark.parametrize("shots", [None, 2], ids=["stream", "shots"])
@pytest.mark.parametrize("feedback", FEEDBACK_MODES)
def test_vector_env_passes_checker(synthetic: ImageDataset, feedback: str, shots: int | None) -> None:
    check_vector_env(lambda: _env(synthetic, num_envs=4, feedback=feedback, shots=shots))


class ToyVectorEnv(VectorEnv):
    """A minimal correct torch VectorEnv: guess a hidden target, 3-step episodes."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012
    episode_length = 3

    def __init__(self, num_envs: int = 4) -> None:
        self.num_envs = num_envs
        self.device = torch.device("cpu")
        self.single_observation_space = spaces.Box(0, 255, (4,), np.uint8)
        self.single_action_space = spaces.Discrete(3)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._generator = torch.Generator()
        self._seed = 0
        self._t = 0

    def _reseed(self, seed: int) -> None:
        self._seed = seed
        self._generator.manual_seed(seed)

    def _randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self._generator)

    def _new_task(self) -> None:
        self._frames = self._randint(256, (self.num_envs, self.episode_length + 1, 4)).to(torch.uint8)
        self._target = self._randint(3, (self.num_envs,))
        self._t = 0

    def _observe(self) -> torch.Tensor:
        return self._frames[:, self._t]

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if seed is not None:
            self._reseed(seed)
        self._new_task()
        return self._observe(), {}

    def step(self, actions: Any) -> StepResult:
        reward = (torch.as_tensor(actions) == self._target).float()
        self._t += 1
        done = self._t == self.episode_length
        terminated = torch.full((self.num_envs,), done)
        info: dict[str, Any] = {}
        obs = self._observe()
        if done:
            info["final_obs"] = obs
            self._new_task()
            obs = self._observe()
        return obs, reward, terminated, torch.zeros_like(terminated), info


class IgnoresSeed(ToyVectorEnv):
    """Draws from the global torch RNG, seeded from the clock."""

    def _reseed(self, seed: int) -> None:
        torch.manual_seed(time.time_ns())

    def _randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape)


class WrongDtype(ToyVectorEnv):
    def _observe(self) -> torch.Tensor:
        return super()._observe().float()


class SameTask(ToyVectorEnv):
    """Reseeds at every episode, so every episode is the same task."""

    def _new_task(self) -> None:
        self._generator.manual_seed(self._seed)
        super()._new_task()


class NoAutoresetMode(ToyVectorEnv):
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012


class UnbatchedSpace(ToyVectorEnv):
    def __init__(self, num_envs: int = 4) -> None:
        super().__init__(num_envs)
        self.observation_space = self.single_observation_space


class NoFinalObs(ToyVectorEnv):
    def step(self, actions: Any) -> StepResult:
        obs, reward, terminated, truncated, info = super().step(actions)
        info.pop("final_obs", None)
        return obs, reward, terminated, truncated, info


def test_checker_passes_correct_toy_env() -> None:
    check_vector_env(ToyVectorEnv)


@pytest.mark.parametrize(
    ("env_cls", "pattern"),
    [
        (IgnoresSeed, r"same seed.*diverged.*never global RNG"),
        (WrongDtype, r"not in env\.observation_space.*uint8"),
        (SameTask, r"consecutive episodes showed the same.*new task"),
        (NoAutoresetMode, r"autoreset_mode.*None.*AutoresetMode"),
        (UnbatchedSpace, r"observation_space .* is not batch_space"),
        (NoFinalObs, r"no 'final_obs'"),
    ],
)
def test_checker_catches_broken_env(env_cls: type[ToyVectorEnv], pattern: str) -> None:
    with torch.random.fork_rng(devices=[]), pytest.raises(EnvCheckError, match=pattern):
        check_vector_env(env_cls)


class FrozenTask(FewShotVectorEnv):
    """A FewShotVectorEnv that shows the same task in every episode after a reset."""

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        self._frozen_seed = seed if seed is not None else 0
        return super().reset(seed=seed, options=options)

    def _new_tasks(self) -> None:
        self._generator.manual_seed(getattr(self, "_frozen_seed", 0))
        super()._new_tasks()


@pytest.mark.parametrize("feedback", FEEDBACK_MODES)
def test_checker_catches_frozen_few_shot_task(synthetic: ImageDataset, feedback: str) -> None:
    with pytest.raises(EnvCheckError, match=r"consecutive episodes showed the same"):
        check_vector_env(lambda: FrozenTask(4, dataset=synthetic, instances_per_class=3, feedback=feedback))


def test_checker_rejects_non_vector_env(synthetic: ImageDataset) -> None:
    with pytest.raises(EnvCheckError, match=r"not a gymnasium\.vector\.VectorEnv"):
        check_vector_env(lambda: FewShotEnv(dataset=synthetic))


# -- CUDA ----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_loop_has_no_host_sync(synthetic: ImageDataset) -> None:
    env = _env(synthetic, num_envs=64, feedback="active", device="cuda")
    assert env.validate_actions is False
    obs, _ = env.reset(seed=0)
    n = int(env.single_action_space.n)
    actions = torch.randint(0, n, (2 * env.episode_length, 64), device="cuda")
    total = torch.zeros((), device="cuda")
    with no_host_sync():
        for t in range(2 * env.episode_length):
            obs, reward, terminated, _, info = env.step(actions[t])
            total += reward.sum()
    assert obs["image"].device.type == "cuda" and reward.device.type == "cuda"
    assert "final_obs" in info and bool(terminated.all())
    assert torch.isfinite(total).item()
