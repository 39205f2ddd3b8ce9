"""Supervised baselines: ProtoNet logits, MAML's inner loop and meta-gradients by hand, learning on a
synthetic fixture, the streaming rule, and the ``baseline`` subcommand with its evaluation."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from meta_rl.baselines import (
    MAML,
    BaselineConfig,
    MAMLConfig,
    PixelNearestMean,
    ProtoNetConfig,
    adapt,
    calibrate_threshold,
    draw_episode,
    evaluate_kshot,
    load_baseline_config,
    meta_gradient,
    pixel_nn_accuracy,
    prototype_logits,
    prototypes,
    stream_predictions,
)
from meta_rl.baselines.cli import (
    add_baseline_parser,
    build_baseline,
    evaluate_baseline_run,
    is_baseline_run,
    load_baseline_run,
)
from meta_rl.baselines.training import CHECKPOINT_NAME, train_baseline
from meta_rl.checkpoint import load_checkpoint
from meta_rl.cli import main
from meta_rl.config import ConfigError
from meta_rl.data import EpisodeSampler, ImageDataset, load_splits, register_dataset, split_by_group

pytestmark = pytest.mark.usefixtures("one_thread")

mse = nn.functional.mse_loss


# --- ProtoNet ------------------------------------------------------------------------------------


def test_protonet_logits_are_minus_squared_distances_to_class_means() -> None:
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # (1, 3, 2): class 0 twice, class 1 once
    labels = torch.tensor([[0, 0, 1]])
    protos, counts = prototypes(support, labels, 2)
    assert torch.equal(protos, torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))
    assert torch.equal(counts, torch.tensor([[2.0, 1.0]]))
    query = torch.tensor([[[1.0, 1.0]]])  # (1, 1, 2)
    # to (1, 0): 0^2 + 1^2 = 1; to (0, 4): 1^2 + 3^2 = 10
    assert torch.equal(prototype_logits(query, protos), torch.tensor([[[-1.0, -10.0]]]))


def test_protonet_stream_scores_match_running_class_means() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 5, generator=g)  # (B, T, D): the floor's embedding is the identity
    y = torch.randint(0, 4, (3, 12), generator=g)
    scores, novelty = PixelNearestMean().stream_scores(x, y, 4)
    for b in range(3):
        assert math.isinf(float(novelty[b, 0]))
        for t in range(1, 12):
            dists = []
            for c in range(4):
                earlier = x[b, :t][y[b, :t] == c]
                if len(earlier):
                    d = ((x[b, t] - earlier.mean(0)) ** 2).sum()
                    assert float(scores[b, t, c]) == pytest.approx(-float(d), abs=1e-4)
                    dists.append(float(d))
            assert float(novelty[b, t]) == pytest.approx(min(dists), abs=1e-4)


# --- MAML on a tiny linear regression: f(x) = w x, L = mean (w x - y)^2 ---------------------------
# Support x = (1, 2), y = 2x: dL/dw = 2 mean(x (w x - y)) = 5 w - 10, so with lr 0.1 a step is
# w <- 0.5 w + 1: from w0 = 0.5, w1 = 1.25 and w2 = 1.625. Query x = 3, y = 3: Lq'(w) = 18 w - 18.
# dw_k/dw0 = 0.5^k, so the second-order meta-gradient is Lq'(w_k) 0.5^k and the first-order one Lq'(w_k).

LINEAR = nn.Linear(1, 1, bias=False)
W0 = {"weight": torch.tensor([[0.5]])}
SX, SY = torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]])
QX, QY = torch.tensor([[3.0]]), torch.tensor([[3.0]])


@pytest.mark.parametrize(("steps", "adapted"), [(1, 1.25), (2, 1.625)])
def test_maml_inner_loop_matches_hand_computed_steps(steps: int, adapted: float) -> None:
    for first_order in (False, True):
        w = adapt(LINEAR, W0, SX, SY, steps=steps, lr=0.1, loss_fn=mse, first_order=first_order)
        assert float(w["weight"]) == pytest.approx(adapted)


@pytest.mark.parametrize(("steps", "second", "first"), [(1, 4.5 * 0.5, 4.5), (2, 11.25 * 0.25, 11.25)])
def test_maml_meta_gradient_second_and_first_order(steps: int, second: float, first: float) -> None:
    for first_order, expected in ((False, second), (True, first)):
        grads, losses, outs = meta_gradient(LINEAR, W0, SX[None], SY[None], QX[None], QY[None], steps=steps,
                                            lr=0.1, loss_fn=mse, first_order=first_order)
        assert float(grads["weight"]) == pytest.approx(expected)
        w = 1.25 if steps == 1 else 1.625
        assert float(losses[0]) == pytest.approx((3 * w - 3) ** 2)
        assert float(outs[0, 0, 0]) == pytest.approx(3 * w)


def test_maml_meta_gradient_averages_tasks_under_vmap() -> None:
    # Task 2: support y = 0 (dL/dw = 5 w, w1 = 0.25), query (1, 1): Lq'(w1) = 2 (w1 - 1) = -1.5, dw1/dw0 = 0.5.
    sx = torch.stack([SX, SX])
    sy = torch.stack([SY, torch.zeros(2, 1)])
    qx = torch.stack([QX, torch.tensor([[1.0]])])
    qy = torch.stack([QY, torch.tensor([[1.0]])])
    grads, losses, _ = meta_gradient(LINEAR, W0, sx, sy, qx, qy, steps=1, lr=0.1, loss_fn=mse)
    assert float(grads["weight"]) == pytest.approx((2.25 + -1.5 * 0.5) / 2)
    assert losses.tolist() == pytest.approx([(3 * 1.25 - 3) ** 2, (0.25 - 1) ** 2])


def test_maml_refuses_batch_norm_and_zero_initialises_the_head() -> None:
    with pytest.raises(ConfigError, match="conv_norm"):
        MAMLConfig(encoder="conv4", conv_norm="batch").validate()
    maml = MAML(MAMLConfig(encoder="conv4", conv_filters=8, n_way=3).validate(), (1, 28, 28), torch.device("cpu"))
    head = maml.model[-1]
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert not head.weight.any() and not head.bias.any()


# --- the streaming rule -------------------------------------------------------------------------------


def test_stream_predictions_guess_an_unrevealed_label_for_novel_images() -> None:
    y = torch.tensor([[2, 0, 2, 1]])  # (1, T=4), 3-way
    scores = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [5.0, 0.0, 9.0], [9.0, 0.0, 1.0]]])
    novelty = torch.tensor([[math.inf, 5.0, 0.1, 3.0]])
    pred = stream_predictions(scores, novelty, y, 3, threshold=1.0)
    # t0: nothing revealed -> lowest label 0; t1: novel -> lowest unrevealed (0); t2: known, best revealed
    # among {2, 0} is 2; t3: novel -> lowest unrevealed is 1.
    assert pred.tolist() == [[0, 0, 2, 1]]
    assert stream_predictions(scores, novelty, y, 3, threshold=math.inf).tolist() == [[0, 2, 2, 0]]


def test_calibrated_threshold_separates_new_from_known_classes() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (50, 12), generator=g)  # (B, T): 6-way streams where classes recur early
    onehot = nn.functional.one_hot(y, 6)
    is_new = torch.gather(onehot.cumsum(1), 2, y.unsqueeze(-1)).squeeze(-1) == 1  # (B, T)
    scores = onehot.float()  # the true label always scores best among revealed ones
    novelty = torch.where(is_new, 2.0, 1.0) + 0.01 * torch.rand(y.shape, generator=g)
    threshold = calibrate_threshold(scores, novelty, y, 6)
    assert 1.01 < threshold < 2.0


# --- learning on an easy synthetic fixture --------------------------------------------------------

NOISY_HALF = "test-baselines-noisy-half"


def make_noisy_half_splits(num_classes: int = 60, images_per_class: int = 12, seed: int = 0) -> dict[str, ImageDataset]:
    """Faint random binary class patterns (+-10 pixel noise) in the top half of 1x28x28 images and
    uniform noise in the bottom half. Raw-pixel distances are swamped by the noisy half (the 5-way
    1-shot floor is about 0.5); a learner that learns to ignore it classifies almost perfectly."""
    g = torch.Generator().manual_seed(seed)
    protos = 100 + 40 * (torch.rand(num_classes, 1, 28, 28, generator=g) < 0.3).float()  # (C, 1, 28, 28)
    n = num_classes * images_per_class
    images = protos.repeat_interleave(images_per_class, 0) + torch.randint(-10, 11, (n, 1, 28, 28), generator=g)
    images[:, :, 14:] = torch.randint(0, 256, (n, 1, 14, 28), generator=g).float()  # (N, 1, 14, 28) noise
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    names = tuple(f"pattern{c:03d}" for c in range(num_classes))
    groups = tuple(f"group{c % 12}" for c in range(num_classes))
    return split_by_group(ImageDataset(images.clamp(0, 255).to(torch.uint8), labels, names, groups, "noisy-half"))


@pytest.fixture(scope="module")
def noisy_half() -> str:
    register_dataset(NOISY_HALF, make_noisy_half_splits())
    return NOISY_HALF


@pytest.mark.parametrize(("cls", "updates"), [(ProtoNetConfig, 60), (MAMLConfig, 100)])
def test_baselines_beat_the_raw_pixel_floor(cls: type[BaselineConfig], updates: int, noisy_half: str,
                                            tmp_path: Path) -> None:
    cfg = cls.from_dict(dict(dataset=noisy_half, n_way=5, shots=1, queries_per_class=5, meta_batch=8,
                             max_updates=updates, learning_rate=3e-3, encoder="cnn", encoder_hidden=[32],
                             eval_episodes=0, log_every=10), source="the test")
    result = train_baseline(cfg, build_baseline, tmp_path / "run", progress=False)
    assert result["updates"] == updates
    sampler = EpisodeSampler(load_splits(noisy_half)["test"], 5, shots=1, queries_per_class=5)
    floor = pixel_nn_accuracy(sampler, 200, seed=7)
    assert floor.accuracy < 0.65  # the noisy half dominates raw-pixel distances
    learned = evaluate_kshot(load_baseline_run(tmp_path / "run").logits, sampler, 200, seed=7)
    assert learned.accuracy > floor.accuracy + 0.12, (learned, floor)


def test_pixel_floor_is_one_nn_for_one_shot(proto_dataset: str) -> None:
    sampler = EpisodeSampler(load_splits(proto_dataset)["test"], 3, shots=1, queries_per_class=2)
    ep = draw_episode(sampler, 4, torch.Generator().manual_seed(0))
    logits = PixelNearestMean().logits(ep)  # (4, 6, 3)
    flat_s, flat_q = ep.support_x.flatten(2), ep.query_x.flatten(2)  # (4, 3, 784), (4, 6, 784)
    nn1 = ep.support_y.gather(1, torch.cdist(flat_q, flat_s).argmin(-1))  # (4, 6) label of the nearest image
    assert torch.equal(logits.argmax(-1), nn1)


# --- the command line ---------------------------------------------------------------------------------


def _cli_args(dataset: str) -> list[str]:
    return [f"dataset={dataset}", "n_way=3", "shots=1", "queries_per_class=2", "stream_instances=3",
            "encoder_hidden=[16]", "encoder=mlp", "meta_batch=4", "max_updates=3", "log_every=1", "eval_every=2",
            "eval_episodes=4", "calibration_episodes=8", "--no-progress"]


@pytest.fixture(scope="module")
def maml_run(proto_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("baseline") / "maml"
    assert main(["baseline", "maml", "--run-dir", str(run_dir), *_cli_args(proto_dataset), "inner_steps=2"]) == 0
    return run_dir


def test_baseline_command_writes_checkpoint_and_events(maml_run: Path) -> None:
    ckpt = load_checkpoint(maml_run / CHECKPOINT_NAME)
    assert ckpt["kind"] == "maml" and ckpt["config"]["inner_steps"] == 2 and ckpt["counters"]["update"] == 3
    assert {"format_version", "config", "policy", "optimizer", "counters", "rng"} <= ckpt.keys()
    assert any(p.name.startswith("events.out.tfevents") for p in maml_run.iterdir())
    assert is_baseline_run(maml_run)


def test_baseline_subparser_with_config_file(proto_dataset: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="meta-rl")
    add_baseline_parser(parser.add_subparsers(dest="command", required=True))
    config = tmp_path / "p.toml"
    config.write_text("train_n_way = 4\nlearning_rate = 0.01\n")
    run_dir = tmp_path / "proto"
    args = parser.parse_args(["baseline", "protonet", str(config), *_cli_args(proto_dataset), "--run-dir",
                              str(run_dir), "--seed", "5"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["updates"] == 3
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert ckpt["kind"] == "protonet"
    assert ckpt["config"]["train_n_way"] == 4 and ckpt["config"]["seed"] == 5 and ckpt["config"]["n_way"] == 3


def test_evaluate_baseline_run_json_and_table(maml_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert evaluate_baseline_run(maml_run, 12, "test", 0, True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert {"accuracy_by_instance", "ci95", "episodes", "kshot_accuracy", "kshot_ci95"} <= out.keys()
    assert out["episodes"] == 12 and list(out["accuracy_by_instance"]) == ["1", "2", "3"]
    assert 0.0 <= out["kshot_accuracy"] <= 1.0
    assert evaluate_baseline_run(maml_run, 12, "test", 0, False) == 0
    text = capsys.readouterr().out
    assert "3-way 1-shot query accuracy" in text and "raw-pixel 1-NN" in text and "MANN (Santoro" in text


def test_bad_config_key_errors_with_the_valid_keys(proto_dataset: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"unknown key.*inner_stepz.*did you mean inner_steps\?"):
        load_baseline_config(MAMLConfig, None, ["inner_stepz=3"])
    with pytest.raises(ConfigError, match=r"shots must be of type int"):
        load_baseline_config(ProtoNetConfig, None, ["shots=one"])
    assert main(["baseline", "protonet", "--run-dir", str(tmp_path / "x"), "inner_steps=2"]) == 2
    assert "unknown key(s) ['inner_steps']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["baseline", "maml", "--run-dir", str(tmp_path / "y"), "dataset=no-such-data"]) == 2
    assert "cannot load split 'train' of dataset = 'no-such-data'" in capsys.readouterr().err


def test_evaluating_an_unknown_split_errors(maml_run: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load split 'tset'"):
        evaluate_baseline_run(maml_run, 5, "tset", 0, True)


def test_evaluating_a_non_baseline_checkpoint_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not is_baseline_run(tmp_path)
