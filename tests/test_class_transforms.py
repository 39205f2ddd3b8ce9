"""Class transforms of the few-shot env's training split: each task turns each class by one symmetry of the square."""

from __future__ import annotations

import pytest
import torch

from meta_rl.data import ImageDataset
from meta_rl.envs import FewShotVectorEnv
from meta_rl.envs.classification import transform_images

B = 6


def _env(dataset: ImageDataset, **kwargs: object) -> FewShotVectorEnv:
    return FewShotVectorEnv(num_envs=B, dataset=dataset, instances_per_class=4, **kwargs)  # type: ignore[arg-type]


def test_each_symmetry_against_torch_by_hand() -> None:
    image = torch.arange(9, dtype=torch.uint8).view(1, 1, 3, 3)  # no symmetry of its own: 8 distinct images
    expected = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    expected += [torch.rot90(image.flip(-1), k, dims=(-2, -1)) for k in range(4)]
    out = transform_images(image.expand(8, 1, 3, 3), torch.arange(8))
    for which in range(8):
        assert torch.equal(out[which], expected[which][0]), which
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(transform_images(image, torch.tensor([4]))[0, 0], torch.tensor([[2, 1, 0], [5, 4, 3], [8, 7, 6]],
                                                                                   dtype=torch.uint8))


def _symmetry(raw: torch.Tensor, shown: torch.Tensor) -> int:
    """The symmetry that turns ``raw`` (C, H, W) into ``shown`` (the lowest, where several do)."""
    for which in range(8):
        if torch.equal(transform_images(raw[None], torch.tensor([which]))[0], shown):
            return which
    raise AssertionError("the shown image is no symmetry of the sampled one")


@pytest.mark.parametrize("transforms", [4, 8])
def test_one_symmetry_per_task_and_class_on_the_train_split(synthetic: ImageDataset, transforms: int) -> None:
    env = _env(synthetic, class_transforms=transforms)
    obs, _ = env.reset(seed=3)
    stream = env.episode_images()  # (B, T + 1, C, H, W)
    raw = env._images[env._episode.image_index]  # the sampled images, untransformed
    labels = env._episode.labels
    seen: dict[tuple[int, int], int] = {}
    for t in range(env.episode_length):
        assert torch.equal(obs["image"], stream[:, t])  # the stream and the steps show the same images
        for b in range(B):
            which = _symmetry(raw[b, t], obs["image"][b])
            assert which < transforms
            assert seen.setdefault((b, int(labels[b, t])), which) == which  # one symmetry per task and class
        obs, *_ = env.step(labels[:, t])
    assert len(set(seen.values())) > 1  # drawn, not fixed


def test_held_out_splits_show_their_images_as_they_are(synthetic: ImageDataset) -> None:
    plain, turned = _env(synthetic, split="val"), _env(synthetic, split="val", class_transforms=8)
    assert turned.class_transforms == 1
    a, _ = plain.reset(seed=5)
    b, _ = turned.reset(seed=5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(plain.episode_images(), turned.episode_images())


def test_without_transforms_the_tasks_are_unchanged(synthetic: ImageDataset) -> None:
    """The default draws no extra random numbers: the same seed gives the same tasks as before the option."""
    env = _env(synthetic)
    obs, _ = env.reset(seed=9)
    raw = env._images[env._episode.image_index[:, 0]]
    assert torch.equal(obs["image"], raw)


@pytest.mark.parametrize("bad", [0, 2, 3, 16, True, 4.0])
def test_a_setting_outside_1_4_8_is_refused(synthetic: ImageDataset, bad: object) -> None:
    with pytest.raises(ValueError, match=r"class_transforms must be one of \(1, 4, 8\)"):
        _env(synthetic, class_transforms=bad)


def test_non_square_images_are_refused(synthetic: ImageDataset) -> None:
    wide = ImageDataset(synthetic.images[..., :20], synthetic.labels, synthetic.class_names, synthetic.groups, "wide")
    with pytest.raises(ValueError, match="needs square images; this dataset's are 28x20"):
        _env({"train": wide, "val": wide, "test": wide}, class_transforms=4)
