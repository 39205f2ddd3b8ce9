"""The training configuration: a typed dataclass, loaded from TOML files and ``key=value`` overrides."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import math
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import torch

from meta_rl.cores import CORES, CRITICS
from meta_rl.encoders import ENCODERS, PRECISIONS

__all__ = [
    "LEGACY_DEFAULTS",
    "ConfigBase",
    "ConfigError",
    "TrainConfig",
    "available_devices",
    "check_type",
    "config_help",
    "did_you_mean",
    "field_docs",
    "load_config",
    "named_configs",
    "parse_overrides",
    "resolve_config",
    "resolve_device",
]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it and the allowed values."""


_Config = TypeVar("_Config", bound="ConfigBase")


class ConfigBase:
    """What every config shares: typed fields checked against tables of rules, a dict round trip, and
    loading from TOML with ``key=value`` overrides. Subclasses are dataclasses that fill the tables
    and add their own checks in :meth:`check`.
    """

    #: Keys that must be >= 1.
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    #: Keys that must be >= 0, where 0 picks a default.
    DEFAULTED: ClassVar[tuple[str, ...]] = ()
    #: Keys that must lie in [0, 1].
    UNIT_INTERVAL: ClassVar[tuple[str, ...]] = ()
    #: Keys that must be > 0.
    STRICTLY_POSITIVE: ClassVar[tuple[str, ...]] = ()
    #: Keys that must be >= 0.
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()
    #: Keys whose value must be one of the given strings.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: An example config, for the message when a file is missing.
    EXAMPLE: ClassVar[str] = "default"
    #: The folder of ``meta_rl/configs`` that holds this kind's named configs.
    NAMED: ClassVar[str] = ""

    def validate(self: _Config) -> _Config:
        """Check every value; raise :class:`ConfigError` naming the key and what is allowed."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            check_type(f.name, value, hints[f.name])
            if _is(value, float) and float in _options(hints[f.name]):  # 0 and 0.0 mean the same: save one
                setattr(self, f.name, float(value))
        rules: list[tuple[tuple[str, ...], Any, str]] = [
            (self.POSITIVE, lambda v: v >= 1, "must be >= 1"),
            (self.DEFAULTED, lambda v: v >= 0, "must be >= 0 (0 picks the default)"),
            (self.UNIT_INTERVAL, lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]"),
            (self.STRICTLY_POSITIVE, lambda v: v > 0, "must be > 0"),
            (self.NON_NEGATIVE, lambda v: v >= 0, "must be >= 0"),
        ]
        for names, ok, rule in rules:
            for name in names:
                if isinstance(getattr(self, name), str):  # a named setting (gamma = "auto"): check() vets the name
                    continue
                if not ok(getattr(self, name)):
                    raise ConfigError(f"{name} {rule}, got {getattr(self, name)}.")
        encoder_hidden = getattr(self, "encoder_hidden", [1])
        if not encoder_hidden or any(h < 1 for h in encoder_hidden):
            raise ConfigError(f"encoder_hidden must be a non-empty list of sizes >= 1, got {encoder_hidden}.")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not one of {list(allowed)}.")
        device = str(getattr(self, "device", "cpu"))
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"device = {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
        self.check()
        return self

    def check(self) -> None:
        """Checks beyond the tables (none here)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_toml(self) -> str:
        """The config as TOML that :meth:`load` reads back to an equal config (tables for dict fields)."""
        lines: list[str] = []
        tables: list[str] = []
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                tables += [f"[{key}]"] + [f"{k} = {json.dumps(v)}" for k, v in value.items()]
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines + tables) + "\n"

    @classmethod
    def describe(cls, source: str) -> str:
        """Where a config came from, for messages."""
        return source

    @classmethod
    def from_dict(cls: type[_Config], data: dict[str, Any], source: str = "config") -> _Config:
        """Build and validate; an unknown key is an error that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            close = {k: did_you_mean(k, valid) for k in unknown}
            hint = (f"did you mean {', '.join(str(c) for c in close.values() if c)}?" if all(close.values())
                    else f"valid keys are: {', '.join(sorted(valid))}.")
            raise ConfigError(f"unknown key(s) {unknown} in {cls.describe(source)}; {hint} `--help` lists every key "
                              "with its type, default and meaning.")
        return cls(**data).validate()

    @classmethod
    def merge(cls, data: dict[str, Any], over: dict[str, Any]) -> None:
        """Apply parsed overrides ``over`` to the file's ``data`` (tables are merged key by key)."""
        for key, value in over.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value

    @classmethod
    def load(cls: type[_Config], path: str | Path | None = None, overrides: list[str] | None = None) -> _Config:
        """Load a TOML file (None: the defaults), apply ``key=value`` overrides and validate."""
        data: dict[str, Any] = {}
        source = "the defaults"
        if path is not None:
            p = resolve_config(path, cls.NAMED, cls.EXAMPLE)
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {p} is not valid TOML: {exc}.") from exc
            source = str(p)
        cls.merge(data, parse_overrides(overrides or []))
        if overrides:
            source = f"{source} + overrides" if path is not None else "the overrides"
        return cls.from_dict(data, source=source)


LEGACY_DEFAULTS: dict[str, Any] = {"value_read": False, "value_read_gain": 5.0, "encoder_precision": "float32",
                                   "critic": "shared", "index_head": False}
"""Config keys added after checkpoints were written, with the value that rebuilds those checkpoints'
policies: a saved config without the key is read with this value, not the new default."""


@dataclass
class TrainConfig(ConfigBase):
    """Everything a training run needs. Every field can be set in a TOML file or as ``key=value``."""

    # --- task -----------------------------------------------------------------------------
    env_id: str = "meta_rl/Glyphs-5way-v0"
    """A gymnasium id with a ``vector_entry_point`` (or any id, run through SyncVectorEnv)."""
    env_module: str = "meta_rl.envs"
    """Module imported before ``gymnasium.make_vec`` so that it registers ``env_id`` (your plug-in)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the env constructor (e.g. ``{n_way = 20}``)."""
    train_split: str = "train"
    """Split of classes the agent trains on (passed as ``split=`` where the env takes one)."""
    heldout_split: str = "val"
    """Split used for the held-out curves logged during training."""
    num_envs: int = 64
    """Tasks run in parallel (B)."""
    rollout_steps: int = 0
    """Steps per rollout; 0 uses the env's ``episode_length`` (one whole task per rollout)."""

    # --- model ----------------------------------------------------------------------------
    encoder: str = "auto"
    """Observation encoder: ``auto`` (``cnn`` for images, ``mlp`` for vectors), ``cnn`` (light strided conv
    net), ``conv4``, ``seed_cnn`` or ``mlp``."""
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 256, 64])
    """Layer sizes of the MLP encoder; the last one is also the ``cnn`` encoder's output size."""
    conv_filters: int = 64
    """Filters of each conv4 block."""
    conv_norm: str = "batch"
    """conv4 normalisation: ``batch``, ``group`` or ``none``."""
    encoder_precision: str = "auto"
    """Arithmetic of the encoder: ``float32``, ``bfloat16`` (autocast, any input: weights, gradients and
    features stay float32) or ``auto`` (bfloat16 for images on CPUs with AMX, where it was measured to pay;
    float32 elsewhere)."""
    core: str = "memory"
    """Recurrent core: ``memory`` (episodic key-value memory), ``gru`` or ``lstm``."""
    hidden: int = 128
    """Hidden size of the core."""
    key_dim: int = 64
    """Key size of the episodic memory."""
    memory_capacity: int = 0
    """Memory slots; 0 uses the rollout length."""
    read_gain: float = 5.0
    """Initial weight from the memory's read of a revealed label (or, where no label is revealed, of the reward
    an action earned: the credit input) to the same action's logit."""
    taken_gain: float = 2.0
    """Initial negative weight from the tally of a revealed label (or, without labels, from the read of an action
    taken and left unrewarded) to the same action's logit."""
    value_read: bool = False
    """With the memory core and discrete actions, also give the heads each action's mean reward over the
    similar stored steps (the read of its credit over the read of its being taken) and whether it was
    taken there: a per-action value estimate that the softmax read's fractions give only as a ratio."""
    value_read_gain: float = 5.0
    """With ``value_read``, the initial weight from an action's mean reward to its logit, and half of it against
    the action having been tried among the similar steps; 0 leaves the heads' use of the value read to learning."""
    index_head: bool | str = "auto"
    """With the memory core and discrete actions, add to each action's logit a term from one small network shared
    by all actions (:class:`~meta_rl.policy.IndexHead`), computed from that action's statistics among the similar
    stored steps: its mean reward, whether it was tried and how often (the value read's, which this switches on,
    and a count). An exploring policy is such an index (Gittins, UCB: mean reward plus a bonus that shrinks with
    the count), learned once for every action instead of once per action. ``auto``: on where the env declares
    ``fixed_length`` tasks (a budget of steps: bandits, MDPs, active classification) and is not ``myopic``
    (classification with label or reward feedback, where the likeliest answer is also the most informative, so
    there is no exploring to value); off elsewhere (CartPole, plug-ins), where it slowed or stalled learning.
    The run's saved config records the choice."""
    critic: str = "shared"
    """The critic's trunk: ``shared`` (the value head reads the policy's core and its loss trains it too, weighted
    by ``value_coef``), ``detached`` (the same features, no value gradient into the core or encoder) or
    ``separate`` (its own core of the same kind on the detached encoding, as sb3-contrib's RecurrentPPO
    does by default; twice the core's compute). ``shared`` was the only one that learned CartPole."""

    # --- algorithm: REINFORCE with TD(λ)-learned advantages --------------------------------
    gamma: float | str = "auto"
    """Discount, or ``auto``, which reads what the env declares: 0 where it is ``myopic`` (classification with
    label or reward feedback, where the likeliest answer is also the most informative, so each action is scored
    by its own reward with the least variance); 0.9 where every task lasts its full length whatever the agent
    does (``fixed_length``: bandits, MDPs, PointNav), about ten steps of lookahead, enough to value what an
    action teaches; 0.99 where actions can end a task early (a pole that falls, a goal reached) or the env
    declares nothing (a plug-in), since only a long horizon sees an end coming. A resumed run keeps the
    discount it was trained with. BENCHMARKS.md has the measurements behind the rule."""
    gae_lambda: float = 0.95
    """λ of the policy's GAE(λ) advantages; 1 gives Monte-Carlo returns minus the baseline, 0 the one-step
    TD error."""
    value_lambda: float = 0.95
    """λ of the critic's TD(λ) target (may differ from ``gae_lambda``: a long target teaches the critic fast,
    short advantages keep the policy gradient's variance low)."""
    learning_rate: float = 2e-3
    """Adam step size (2e-3 was level with or better than 1e-3 on 11 of the suite's 13 tasks; BENCHMARKS.md)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    value_coef: float = 0.05
    """Weight of the critic loss. With a ``shared`` critic it sets how much the λ-return targets' gradient shapes
    the core the policy reads: at 0.5 it swamped the policy gradient wherever γ > 0 (a tabular MDP trained
    at γ = 0.99 stayed near random), at 0.05 the critic still learns (Adam scales its head's steps) and the
    γ = 0 rows are level. BENCHMARKS.md § "The critic's share of the core" has the measurements."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    normalize_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per update."""
    normalize_returns: bool = True
    """The critic learns its λ-return targets scaled by their running mean and σ (PopArt, van Hasselt
    et al. 2016, output-preserving), so the value loss keeps one scale whatever the task's rewards."""
    return_norm_rate: float = 0.01
    """Averaging rate of those running statistics (about 1 / rate updates)."""

    # --- run ------------------------------------------------------------------------------
    total_env_steps: int = 50_000_000
    """Stop after this many env steps (summed over the B tasks)."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training (0: no limit)."""
    seed: int = 0
    """Seed of parameters, tasks and action sampling."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present)."""
    torch_threads: int = 0
    """CPU threads for torch (0: leave torch's default)."""
    log_every: int = 20
    """Log training scalars every this many updates."""
    eval_every: int = 100
    """Evaluate on held-out tasks every this many updates (0: never)."""
    eval_episodes: int = 256
    """Held-out tasks per evaluation during training."""
    checkpoint_every: int = 200
    """Write a checkpoint every this many updates (and always at the end)."""
    skip_nonfinite_updates: bool = False
    """On a NaN or inf loss or gradient, skip that update (counted as ``faults/skipped_updates``)
    instead of stopping the run. May be switched on when resuming a run that stopped on one."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "num_envs", "hidden", "key_dim", "conv_filters", "total_env_steps", "log_every", "checkpoint_every",
    )
    DEFAULTED: ClassVar[tuple[str, ...]] = (
        "rollout_steps", "memory_capacity", "eval_every", "eval_episodes", "torch_threads",
    )
    UNIT_INTERVAL: ClassVar[tuple[str, ...]] = ("gamma", "gae_lambda", "value_lambda", "return_norm_rate")
    STRICTLY_POSITIVE: ClassVar[tuple[str, ...]] = ("learning_rate", "max_grad_norm")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("entropy_coef", "value_coef", "max_minutes", "read_gain", "taken_gain",
                                               "value_read_gain")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "encoder": tuple(ENCODERS), "core": tuple(CORES), "conv_norm": ("batch", "group", "none"),
        "encoder_precision": tuple(PRECISIONS), "critic": CRITICS,
    }

    def check(self) -> None:
        if isinstance(self.index_head, str) and self.index_head != "auto":
            raise ConfigError(f"index_head must be true, false or 'auto', got {self.index_head!r}; use index_head=auto "
                              "(on for fixed-length tasks that are not myopic) or index_head=false.")
        if isinstance(self.gamma, str) and self.gamma != "auto":  # a number was checked with UNIT_INTERVAL
            raise ConfigError(f"gamma must be 'auto' or a number in [0, 1], got {self.gamma!r}; use gamma=auto "
                              "(the rule in `--help`), gamma=0 (myopic) or, e.g., gamma=0.99.")
        if not -(2**63) <= self.seed < 2**63:  # what torch.Generator.manual_seed takes
            raise ConfigError(f"seed must lie in [-2**63, 2**63), got {self.seed}.")
        bad = [k for k, v in self.env_kwargs.items() if not _plain(v)]
        if bad:
            raise ConfigError(
                f"env_kwargs {bad} hold values that cannot be saved in a config (only str, int, float, bool, "
                "lists and tables); register in-memory data with meta_rl.data.register_dataset(name, splits) "
                "and pass dataset = name."
            )


def named_configs(folder: str = "") -> dict[str, Path]:
    """The configs shipped in the package (``meta_rl/configs/FOLDER/*.toml``), by name (the file's stem)."""
    root = Path(str(resources.files("meta_rl") / "configs" / folder))
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def resolve_config(path: str | Path, folder: str = "", example: str = "default") -> Path:
    """A config file: ``path`` itself where it exists, else the shipped config of that name.

    Raises:
        ConfigError: neither a file nor a shipped name; the message lists the names.
    """
    p = Path(path)
    if p.is_file():
        return p
    named = named_configs(folder)
    name = p.name.removesuffix(".toml")
    if name in named and (p.parent == Path(".") or p.parent.name in ("experiments", "configs", "baselines")):
        return named[name]  # "gru", "gru.toml" (and the old experiments/gru.toml) name the shipped file
    close = did_you_mean(name, list(named))
    hint = f" Did you mean {close}?" if close else ""
    what = "config file {} does not exist" if p.suffix == ".toml" or len(p.parts) > 1 else "config {!r} is not a file"
    raise ConfigError(
        f"{what.format(str(path))} and not a shipped config.{hint} Pass an existing .toml file or one of the "
        f"names {', '.join(named)} (for example {example})."
    )


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The choice closest to ``word`` (for "did you mean" hints), or None when none is close."""
    close = difflib.get_close_matches(word.replace("-", "_").lower(), choices, n=1, cutoff=0.6)
    return close[0] if close else None


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings of a dataclass's fields (the string literal under each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (frozen app): no docs
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_help(cls: type[ConfigBase]) -> str:
    """Every key of a config with its type, default and docstring, for ``--help``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines = ["config keys (set them as key=value, or in a TOML file):"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
        if typing.get_origin(hints[f.name]) is not None:
            kind = str(hints[f.name]).replace("typing.", "")
        lines.append(f"  {f.name} ({kind}, default {json.dumps(default)})")
        lines += textwrap.wrap(docs.get(f.name, ""), 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    """The torch device a ``device`` setting names (``auto``: CUDA when present).

    Raises:
        ConfigError: the name is not a device, or names one this machine lacks; the message says what is here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device = {name!r} is not a device name; this machine has {', '.join(here)}.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available here; this machine has {', '.join(here)} "
                          "(use device='cpu' or 'auto').")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device = {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                          f"{', '.join(here)}.")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device = {name!r}: meta-rl runs on the CPU or CUDA; this machine has {', '.join(here)}.")
    return device


def available_devices() -> list[str]:
    """The devices meta-rl can use here: ``cpu`` and each ``cuda:N``."""
    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0))]


def check_type(name: str, value: Any, hint: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits the type hint of config field ``name``."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        options = _options(hint)
        if not any(_is(value, t) for t in options):
            names = " or ".join(t.__name__ for t in options)
            raise ConfigError(f"{name} must be of type {names}, got {type(value).__name__} {value!r}.")
        return
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(_is(v, inner) for v in value):
            raise ConfigError(f"{name} must be a list of {inner.__name__}, got {value!r}.")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table/dict, got {value!r}.")
        return
    if not _is(value, hint):
        raise ConfigError(f"{name} must be of type {hint.__name__}, got {type(value).__name__} {value!r}.")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _options(hint: Any) -> tuple[Any, ...]:
    """The types a field's hint allows: each member of a union (``float | str``), else the hint itself."""
    return typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)


def _is(value: Any, typ: type) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as TOML (``3``, ``1e-3``, ``true``, ``[64, 64]``,
    ``{n_way = 20}``), else kept as plain strings. ``env_kwargs.n_way=20`` sets one env kwarg."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. num_envs=32.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if key.startswith("env_kwargs."):
            out.setdefault("env_kwargs", {})[key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a TOML config (None: the defaults), apply overrides and validate (:meth:`ConfigBase.load`)."""
    return TrainConfig.load(path, overrides)
