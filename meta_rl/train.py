"""Training: REINFORCE with TD(λ)-learned advantages for a recurrent meta-policy, batched over B tasks.

Reads top to bottom: build the env and the policy, (resume,) then loop: collect a rollout of
B tasks, update, log, evaluate on held-out tasks, checkpoint.
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import VectorEnv
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from meta_rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.evaluation import MAX_INSTANCE, accuracy_by_instance, evaluate
from meta_rl.monitoring import accuracy_figure, episode_strip
from meta_rl.policy import MetaPolicy
from meta_rl.returns import explained_variance, gae, normalize, reinforce_losses
from meta_rl.rollout import Rollout, collect

__all__ = [
    "CHECKPOINT_NAME",
    "build_policy",
    "make_vec_env",
    "reinforce_update",
    "resolve_device",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
# Keys that may differ between a run and its resumption: how long it runs, not what it learns.
RESUMABLE_KEYS = ("total_env_steps", "max_minutes", "device", "torch_threads")
HELDOUT_SEED = 1_000_000


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available here; use device='cpu' or 'auto'.")
    return device


def make_vec_env(cfg: TrainConfig, split: str, num_envs: int, device: torch.device) -> VectorEnv:
    """Build ``cfg.env_id`` as a torch-native VectorEnv on ``device`` with ``num_envs`` tasks.

    ``cfg.env_module`` is imported first so that it can register the id. ``split`` and
    ``device`` are passed where the env's constructor takes them.
    """
    if cfg.env_module:
        try:
            importlib.import_module(cfg.env_module)
        except ImportError as exc:
            raise ConfigError(
                f"env_module = {cfg.env_module!r} cannot be imported ({exc}); fix the module name."
            ) from exc
    try:
        spec = gym.spec(cfg.env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"env_id = {cfg.env_id!r} is not registered ({exc}); check env_id and env_module.") from exc
    if spec.vector_entry_point is None:
        raise ConfigError(
            f"env {cfg.env_id!r} has no vector_entry_point: the trainer needs a torch-native VectorEnv. "
            "Register one with gymnasium.register(..., vector_entry_point=...)."
        )
    entry = spec.vector_entry_point
    creator: Any = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    accepted = inspect.signature(creator).parameters
    kwargs = dict(cfg.env_kwargs)
    if "split" in accepted:
        kwargs.setdefault("split", split)
    if "device" in accepted:
        kwargs.setdefault("device", device)
    env = gym.make_vec(cfg.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    return env


def build_policy(cfg: TrainConfig, env: VectorEnv, steps: int) -> MetaPolicy:
    return MetaPolicy(
        env.single_observation_space,
        env.single_action_space,
        encoder=cfg.encoder,
        core=cfg.core,
        hidden=cfg.hidden,
        encoder_hidden=cfg.encoder_hidden,
        conv_filters=cfg.conv_filters,
        conv_norm=cfg.conv_norm,
        key_dim=cfg.key_dim,
        memory_capacity=cfg.memory_capacity or steps,
        read_gain=cfg.read_gain,
        taken_gain=cfg.taken_gain,
    )


def reinforce_update(
    policy: MetaPolicy, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """One REINFORCE step on a rollout: GAE(λ) advantages from the critic, TD(λ) critic targets."""
    steps, batch = ro.rewards.shape
    embed = ro.embed if ro.embed is not None else policy.encode(ro.main, (steps, batch))  # (T, B, E)
    context = policy.context(ro.extras, ro.prev_actions, ro.prev_rewards, ro.starts)  # (T, B, U)
    params, values, _ = policy(embed, context, ro.starts, ro.state0, need_state=False)  # (T, B, A), (T, B)
    advantages, returns = gae(ro.rewards, values.detach(), ro.dones.float(), ro.last_value, cfg.gamma, cfg.gae_lambda)
    log_probs = policy.log_prob(params, ro.actions)  # (T, B)
    entropy = policy.entropy(params)  # (T, B)
    adv = normalize(advantages) if cfg.normalize_advantages else advantages
    losses = reinforce_losses(log_probs, entropy, values, adv, returns)
    loss = losses["policy"] + cfg.value_coef * losses["value"] - cfg.entropy_coef * losses["entropy"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return {
        "loss/policy": losses["policy"].detach(),
        "loss/value": losses["value"].detach(),
        "loss/total": loss.detach(),
        "policy/entropy": losses["entropy"].detach(),
        "policy/grad_norm": grad_norm.detach(),
        "critic/explained_variance": explained_variance(values.detach(), returns),
        "charts/return": ro.rewards.sum(0).mean(),
    }


def _task_seed(seed: int, update: int) -> int:
    return (seed * 1_000_003 + update) % (2**31 - 1)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS and saved.get(k) != v]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise CheckpointError(
            f"checkpoint {path} was trained with another config ({diffs}); resume with the saved config "
            f"(only {', '.join(RESUMABLE_KEYS)} may change) or start a new run directory."
        )


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run directory's checkpoint was trained with."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    return TrainConfig.from_dict(ckpt["config"], source=str(Path(run_dir) / CHECKPOINT_NAME))


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` writing TensorBoard logs and checkpoints to ``run_dir``; returns final figures.

    With ``resume`` the run continues from ``run_dir/checkpoint.pt``: parameters, optimizer,
    counters and RNG states, so on CPU it ends exactly where an uninterrupted run would.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not resume and ckpt_path.exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a checkpoint; resume it with --resume {run_dir} "
            "or choose a new --run-dir."
        )
    device = resolve_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    # --- env and policy -------------------------------------------------------------------
    env = make_vec_env(cfg, cfg.train_split, cfg.num_envs, device)
    steps = cfg.rollout_steps or int(getattr(env, "episode_length", 0))
    if steps < 1:
        raise ConfigError(f"env {cfg.env_id!r} has no episode_length; set rollout_steps to the length of a task.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg, env, steps).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    update, env_steps = 0, 0

    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        _check_resumable(ckpt["config"], cfg, ckpt_path)
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["rng"]["actions"].cpu())  # generator states live on the host
        update, env_steps = int(ckpt["counters"]["update"]), int(ckpt["counters"]["env_steps"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    writer = SummaryWriter(str(run_dir), purge_step=env_steps if resume else None)
    if not resume:
        writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```", 0)

    heldout_env = None
    if cfg.eval_every and cfg.eval_episodes:
        heldout_env = make_vec_env(cfg, cfg.heldout_split, min(cfg.eval_episodes, 256), device)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "config": cfg.to_dict(),
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "counters": {"update": update, "env_steps": env_steps},
            "rng": {"actions": generator.get_state()},
        })

    def held_out_eval() -> dict[str, float]:
        assert heldout_env is not None
        res = evaluate(heldout_env, policy, cfg.eval_episodes, seed=HELDOUT_SEED, steps=steps)
        for k, acc in enumerate(res.accuracy_by_instance, start=1):
            writer.add_scalar(f"heldout/accuracy_instance_{k}", acc, env_steps)
        writer.add_scalar("heldout/accuracy", res.accuracy, env_steps)
        writer.add_figure("heldout/accuracy_by_instance", accuracy_figure(
            {"held-out": (res.accuracy_by_instance, res.ci95)}), env_steps)
        return {f"heldout/accuracy_instance_{k}": a for k, a in enumerate(res.accuracy_by_instance, start=1)}

    # --- loop -----------------------------------------------------------------------------
    hits = torch.zeros(MAX_INSTANCE, device=device)
    counts = torch.zeros(MAX_INSTANCE, device=device)
    sums: dict[str, torch.Tensor] = {}
    started = time.monotonic()
    last_log_time, last_log_steps = started, env_steps
    final: dict[str, float] = {}
    bar = tqdm(total=cfg.total_env_steps, initial=env_steps, unit="step", unit_scale=True, disable=not progress,
               mininterval=2.0)
    ro: Rollout | None = None
    policy.train()
    while env_steps < cfg.total_env_steps:
        if cfg.max_minutes and time.monotonic() - started >= cfg.max_minutes * 60:
            break
        ro = collect(env, policy, steps, generator, reset_seed=_task_seed(cfg.seed, update), embed_with_grad=True)
        stats = reinforce_update(policy, optimizer, ro, cfg)
        h, c = accuracy_by_instance(ro.correct(), ro.instance)  # (B, K) each
        hits += h.sum(0)
        counts += c.sum(0)
        for key, value in stats.items():
            sums[key] = sums.get(key, torch.zeros((), device=device)) + value
        update += 1
        env_steps += steps * cfg.num_envs
        bar.update(steps * cfg.num_envs)

        if update % cfg.log_every == 0:
            now = time.monotonic()
            means = {k: float(v) / cfg.log_every for k, v in sums.items()}
            for key, mean in means.items():
                writer.add_scalar(key, mean, env_steps)
            accuracy = (hits / counts.clamp_min(1)).tolist()
            for k, acc in enumerate(accuracy, start=1):
                if counts[k - 1] > 0:
                    writer.add_scalar(f"train/accuracy_instance_{k}", acc, env_steps)
            writer.add_scalar("charts/steps_per_second", (env_steps - last_log_steps) / max(now - last_log_time, 1e-9),
                              env_steps)
            overall = float(hits.sum() / counts.sum().clamp_min(1))
            bar.set_postfix(ret=f"{means['charts/return']:.1f}", acc=f"{overall:.2f}")
            hits.zero_()
            counts.zero_()
            sums.clear()
            last_log_time, last_log_steps = now, env_steps
        if heldout_env is not None and update % cfg.eval_every == 0:
            final = held_out_eval()
            _log_strip(writer, ro, env_steps)
        if update % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    if heldout_env is not None:
        final = held_out_eval()
        if ro is not None:
            _log_strip(writer, ro, env_steps)
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in cfg.to_dict().items()}
    writer.add_hparams(hparams, {f"hparam/{k.split('/')[-1]}": v for k, v in final.items()} or {"hparam/none": 0.0},
                       run_name=".", global_step=env_steps)
    writer.close()
    return {"updates": update, "env_steps": env_steps, "minutes": (time.monotonic() - started) / 60, **final}


def _log_strip(writer: SummaryWriter, ro: Rollout, env_steps: int) -> None:
    """Log the first task of a rollout as a strip of its images with the true and chosen labels."""
    if ro.main is None or ro.main.ndim != 5 or not bool((ro.labels[:, 0] >= 0).all()):
        return
    writer.add_image("episode/strip", episode_strip(ro.main[:, 0], ro.labels[:, 0], ro.actions[:, 0]), env_steps)
