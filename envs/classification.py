"""Few-shot image classification as meta-RL environments (Santoro et al. 2016; Woodward & Finn 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from meta_rl.data import EpisodeSampler, ImageDataset, content_hash, dataset_name, resolve_split
from meta_rl.env_contract import MetaVectorEnv
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.task_vector_env import check_discrete_actions, check_seed, env_device, same_step_autoreset

__all__ = ["CLASS_TRANSFORMS", "FEEDBACK_MODES", "FewShotEnv", "FewShotVectorEnv", "transform_images"]

#: The ``class_transforms`` settings: 1 (none), 4 (the quarter turns) or 8 (the quarter turns and their mirror
#: images: the symmetries of the square).
CLASS_TRANSFORMS = (1, 4, 8)

FEEDBACK_MODES = ("label", "reward", "active")
_DEFAULT_REWARDS: dict[str, tuple[float, float, float]] = {
    # (correct, incorrect, request)
    "label": (1.0, 0.0, 0.0),
    "reward": (1.0, 0.0, 0.0),
    "active": (1.0, -1.0, -0.05),
}


class FewShotVectorEnv(MetaVectorEnv):
    """B few-shot classification tasks stepped together as tensors on one device.

    ## Description
    Every episode is a new task: ``n_way`` classes are drawn from a split and given a fresh
    random label permutation, then a stream of their images is shown one per step. The agent
    answers each image with a label and must learn the labels from its own experience within
    the episode. In stream mode each class appears ``instances_per_class`` times in random
    order (Santoro et al. 2016); in shots mode ``shots`` labelled support images per class are
    followed by ``queries_per_class`` query images per class.

    ## Action Space
    ``Discrete(n_way)``: the label for the image shown; ``Discrete(n_way + 1)`` with
    ``feedback="active"``, where action ``n_way`` requests the true label (Woodward & Finn 2017).
    Actions are an integer tensor of shape (B,) on the env's device (numpy integer arrays
    are accepted and copied over).

    ## Observation Space
    A ``Dict`` batched over B:

    * ``"image"``: uint8 (C, H, W), the image to answer. After the last step it is blank.
    * ``"label"`` (``label`` and ``active`` feedback): ``Discrete(n_way + 1)``, the true label
      of the previous image, or ``n_way`` when none is revealed (the first step, a query step
      in shots mode, or a step without a request under ``active``).

    ## Rewards
    ``reward_correct`` for the right label, ``reward_incorrect`` for a wrong one and, with
    ``active`` feedback, ``reward_request`` for asking. Defaults: 1/0 for ``label`` and
    ``reward``, 1/-1/-0.05 for ``active``.

    ## Episode End
    Terminates after T steps (every image answered); never truncates. All B episodes have
    the same length and end together; the env then resets itself in the same step
    (``autoreset_mode`` SAME_STEP), returning the next task's first observation with the
    terminal one in ``info["final_obs"]``.

    ## Info
    Per step, for the image the action answered: ``"instance"`` (int64 (B,), 1 for the first
    time its class was shown in the episode, 2 for the second, ...), ``"label"`` (int64, its
    true label), ``"is_query"`` (bool).

    ## Class transforms (training data)
    With ``class_transforms`` = 4 or 8 on the ``train`` split, each task shows each of its classes turned by a
    random quarter turn (4), or by one of the 8 symmetries of the square (8), the same for all of that class's
    images in the task: a turned letter is a new class (Santoro et al. 2016 turned Omniglot's classes by quarter
    turns). The training classes then number up to 4 or 8 times as many, against an encoder that learns the
    training letters rather than letters (BENCHMARKS.md § "Where the GPU plateau comes from"). Held-out splits
    (``val``, ``test``) are always shown as they are, so their scores stay comparable with runs without it.

    ## Dataset identity
    ``dataset_name`` is the source string, the registered name, or the ImageDataset's name;
    ``dataset_hash`` the content hash of the whole dataset (every split, see
    :func:`meta_rl.data.content_hash`), taken when the env is built. A run's checkpoint records both,
    and evaluating it on other content under the same name is refused.

    Args:
        num_envs: B, the number of tasks run together.
        dataset: a source string (``"glyphs"``, ``"cifar:/path"``, ... see
            :mod:`meta_rl.data.sources`), a mapping of splits, or an ImageDataset.
        split: ``"train"``, ``"val"`` or ``"test"``.
        n_way: classes per task.
        instances_per_class: appearances of each class in stream mode.
        shots: support images per class (shots mode); None for stream mode.
        queries_per_class: query images per class in shots mode.
        feedback: ``"label"``, ``"reward"`` or ``"active"``.
        reward_correct, reward_incorrect, reward_request: rewards; None takes the mode's default.
        image_size: side of the images for sources that are resized.
        device: where every tensor lives.
        validate_actions: check that actions are in range (one host read per step);
            None checks on CPU, where it is free, and skips on CUDA to keep the step sync-free.
        data_seed: seed of the dataset's class split and rendering.
        class_transforms: 1, 4 or 8 symmetries of the square drawn per task and class on the train split (see
            "Class transforms"); 1 shows every image as it is.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int = 1,
        dataset: str | ImageDataset | Mapping[str, ImageDataset] = "glyphs",
        split: str = "train",
        n_way: int = 5,
        instances_per_class: int = 10,
        shots: int | None = None,
        queries_per_class: int = 1,
        feedback: str = "label",
        reward_correct: float | None = None,
        reward_incorrect: float | None = None,
        reward_request: float | None = None,
        image_size: int = 28,
        device: torch.device | str = "cpu",
        validate_actions: bool | None = None,
        data_seed: int = 0,
        render_mode: str | None = None,
        class_transforms: int = 1,
    ) -> None:
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback mode {feedback!r}; expected one of {FEEDBACK_MODES}.")
        if type(class_transforms) is not int or class_transforms not in CLASS_TRANSFORMS:
            raise ValueError(f"class_transforms must be one of {CLASS_TRANSFORMS} (none, quarter turns, quarter turns "
                             f"and mirror images), got {class_transforms!r}.")
        self.device = env_device(device, render_mode)
        data = resolve_split(dataset, split, image_size=image_size, seed=data_seed)
        self.dataset_name = dataset_name(dataset)
        #: The content hash of the dataset the tasks are drawn from (all its splits), 16 hex digits: taken now, with
        #: the data (a name registered again later names other data).
        self.dataset_hash = content_hash(dataset, image_size=image_size, seed=data_seed)
        self.sampler = EpisodeSampler(data, n_way, instances_per_class, shots, queries_per_class, self.device)
        self.num_envs = num_envs
        self.n_way = n_way
        self.feedback = feedback
        self.request_action = n_way if feedback == "active" else None  # the action that asks for the label
        self.split = split
        self.episode_length = self.sampler.episode_length
        defaults = _DEFAULT_REWARDS[feedback]
        self.reward_correct = defaults[0] if reward_correct is None else float(reward_correct)
        self.reward_incorrect = defaults[1] if reward_incorrect is None else float(reward_incorrect)
        self.reward_request = defaults[2] if reward_request is None else float(reward_request)
        self.validate_actions = self.device.type == "cpu" if validate_actions is None else validate_actions
        self.render_mode = None

        c, h, w = self.sampler.dataset.image_shape
        if class_transforms > 1 and h != w:
            raise ValueError(f"class_transforms = {class_transforms} turns images by quarter turns, which needs square "
                             f"images; this dataset's are {h}x{w}. Use class_transforms = 1 or a square image_size.")
        #: Symmetries drawn per task and class (1: none): the setting on the train split, 1 on held-out splits.
        self.class_transforms = class_transforms if split == "train" else 1
        single_obs: dict[str, spaces.Space[Any]] = {"image": spaces.Box(0, 255, (c, h, w), np.uint8)}
        if feedback != "reward":
            single_obs["label"] = spaces.Discrete(n_way + 1)
        self.single_observation_space = spaces.Dict(single_obs)
        self.single_action_space = spaces.Discrete(n_way + 1 if feedback == "active" else n_way)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        # The sampler's images, shared (never copied: many single envs share one dataset).
        self._images = self.sampler.dataset.images  # (num_images, C, H, W)
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()
        self._rows = torch.arange(num_envs, device=self.device)
        self._no_label = torch.full((num_envs,), n_way, dtype=torch.int64, device=self.device)
        self._t = 0  # step within the episode; identical for all B tasks (fixed length)
        self._episode = self.sampler.sample(num_envs, self._generator)
        self._transforms = torch.zeros((num_envs, n_way), dtype=torch.int64, device=self.device)  # (B, N)
        self._revealed = self._no_label.clone()

    # -- gymnasium API -------------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Start B new tasks. ``seed`` seeds the env's own torch.Generator (never global RNG)."""
        if isinstance(seed, list):
            if not seed or any(not isinstance(s, int) for s in seed):
                raise TypeError(f"seed must be an int, a non-empty list of ints or None, got {seed!r}.")
            seed = seed[0]
        check_seed(seed)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__} {options!r}.")
        if options:
            raise ValueError(
                f"reset() takes no options, got {sorted(options, key=repr)}; configure the task in the constructor."
            )
        if seed is not None:
            self._generator.manual_seed(int(seed))
        self._new_tasks()
        return self._observe(), {}

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Answer the shown images; see the class docstring for what comes back."""
        actions = self._check_actions(actions)
        t = self._t
        true = self._episode.labels[:, t]  # (B,)
        correct = actions == true
        reward = torch.where(correct, self.reward_correct, self.reward_incorrect)
        if self.feedback == "active":
            request = actions == self.n_way
            reward = torch.where(request, self.reward_request, reward)
            # Query steps in shots mode reveal nothing, requested or not.
            self._revealed = torch.where(request & ~self._episode.is_query[:, t], true, self._no_label)
        elif self.feedback == "label":
            self._revealed = torch.where(self._episode.is_query[:, t], self._no_label, true)
        info: dict[str, Any] = {
            "instance": self._episode.instance[:, t],
            "label": true,
            "is_query": self._episode.is_query[:, t],
        }
        self._t = t + 1
        done = self._t == self.episode_length  # a host int: no device read
        obs, terminated, truncated = same_step_autoreset(
            done, self.num_envs, self.device, self._observe, self._new_tasks, info
        )
        return obs, reward.to(torch.float32), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._images = self._images[:0]

    # -- extras for agents ---------------------------------------------------------------

    def episode_images(self) -> torch.Tensor:
        """uint8 (B, T + 1, C, H, W): every image the current tasks will show, known in advance.

        Position t is the image of step t; position T is the blank terminal image. Agents may
        encode the whole stream once per task instead of once per step.
        """
        shown = self._images[self._episode.image_index]  # (B, T, C, H, W)
        if self.class_transforms > 1:
            which = self._transforms.gather(1, self._episode.labels)  # (B, T)
            shown = transform_images(shown.flatten(0, 1), which.flatten()).view_as(shown)
        return torch.cat([shown, torch.zeros_like(shown[:, :1])], dim=1)  # (B, T + 1, C, H, W)

    def episode_labels(self) -> torch.Tensor:
        """int64 (B, T): the true label of every step of the current tasks.

        For oracles and analysis only: an agent that reads it is told the answers. Position t
        is the label of the image shown at step t, in ``[0, n_way)``.
        """
        return self._episode.labels.clone()

    @property
    def step_in_episode(self) -> int:
        """How many steps of the current tasks have been taken (0 right after a reset)."""
        return self._t

    # -- internals -----------------------------------------------------------------------

    def _new_tasks(self) -> None:
        self._episode = self.sampler.sample(self.num_envs, self._generator)
        if self.class_transforms > 1:
            shape = self._transforms.shape
            self._transforms = torch.randint(0, self.class_transforms, shape, generator=self._generator,
                                             device=self.device)
        self._revealed = self._no_label.clone()
        self._t = 0

    def _observe(self) -> dict[str, torch.Tensor]:
        if self._t == self.episode_length:  # after the last step: a blank image
            c, h, w = self._images.shape[1:]
            image = torch.zeros((self.num_envs, c, h, w), dtype=torch.uint8, device=self.device)
        else:
            image = self._images[self._episode.image_index[:, self._t]]  # (B, C, H, W)
            if self.class_transforms > 1:
                which = self._transforms[self._rows, self._episode.labels[:, self._t]]  # (B,)
                image = transform_images(image, which)
        obs = {"image": image}
        if self.feedback != "reward":
            obs["label"] = self._revealed
        return obs

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        n = int(self.single_action_space.n)  # type: ignore[attr-defined]
        return check_discrete_actions(self, actions, n, bool(self.validate_actions), noun="label")


def transform_images(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Each image turned by one symmetry of the square: (N, C, H, W) images (H = W), (N,) ``which`` in [0, 8).

    ``which`` = 4·m + k: k quarter turns counter-clockwise (``torch.rot90`` over H, W), after a left-right mirror
    image where m = 1. No host read: every symmetry is computed and the image's own kept.
    """
    out = images
    mirrored = images.flip(-1)
    for m, source in enumerate((images, mirrored)):
        for k in range(4):
            if m == 0 and k == 0:
                continue
            turned = torch.rot90(source, k, dims=(-2, -1))
            out = torch.where((which == 4 * m + k).view(-1, 1, 1, 1), turned, out)
    return out


class FewShotEnv(SingleTaskEnv):
    """One few-shot classification task at a time, with numpy observations, for ``gymnasium.make``.

    The same task as :class:`FewShotVectorEnv` (see its docstring for the spaces, rewards and
    episode end) with one environment on the CPU: observations are numpy arrays, actions ints.
    Stepping after the episode has ended raises; call ``reset()``.
    """

    vector_cls = FewShotVectorEnv
