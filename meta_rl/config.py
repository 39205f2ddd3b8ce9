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

from meta_rl.cores import CORES
from meta_rl.encoders import ENCODERS, PRECISIONS
from meta_rl.errors import ConfigError
from meta_rl.memory_read import ReadHeadConfig
from meta_rl.metric_writers import LOG_WRITERS
from meta_rl.registry import Registry

__all__ = [
    "ALGOS",
    "CRITICS",
    "SECTIONS",
    "AlgorithmConfig",
    "ConfigBase",
    "ConfigError",
    "ModelConfig",
    "RunConfig",
    "RunSettings",
    "TaskConfig",
    "TrainConfig",
    "available_devices",
    "check_cuda_graphs",
    "check_log_to",
    "check_part",
    "check_read_head",
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
    #: ``--help``'s sections: (title, the dataclass whose fields, inherited too, are its keys); none: one flat list.
    HELP_SECTIONS: ClassVar[tuple[tuple[str, type], ...]] = ()
    #: The keys ``--help`` names first.
    HELP_FIRST: ClassVar[tuple[str, ...]] = ()

    def validate(self: _Config) -> _Config:
        """Check every value; raise :class:`ConfigError` naming the key and what is allowed."""
        self._check_types()
        self._check_rules()
        self._check_choices()
        self.check()
        return self

    def _check_types(self) -> None:
        """Each value fits its field's type hint; numbers of float fields are saved as floats."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            check_type(f.name, value, hints[f.name])
            if _is(value, float) and float in _options(hints[f.name]):  # 0 and 0.0 mean the same: save one
                setattr(self, f.name, float(value))

    def _check_rules(self) -> None:
        """The numeric rules of the tables (``POSITIVE``, ...) and the encoder's layer sizes."""
        rules: list[tuple[tuple[str, ...], Any, str]] = [
            (self.POSITIVE, lambda v: v >= 1, "must be >= 1"),
            (self.DEFAULTED, lambda v: v >= 0, "must be >= 0 (0 picks the default)"),
            (self.UNIT_INTERVAL, lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]"),
            (self.STRICTLY_POSITIVE, lambda v: v > 0, "must be > 0"),
            (self.NON_NEGATIVE, lambda v: v >= 0, "must be >= 0"),
        ]
        for names, ok, rule in rules:
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, str) and not ok(value):  # a string: the type check names it
                    raise ConfigError(f"{name} {rule}, got {value}.")
        encoder_hidden = getattr(self, "encoder_hidden", [1])
        if not encoder_hidden or any(h < 1 for h in encoder_hidden):
            raise ConfigError(f"encoder_hidden must be a non-empty list of sizes >= 1, got {encoder_hidden}.")

    def _check_choices(self) -> None:
        """Keys whose value must be one of a few names (``CHOICES``), and the device's name."""
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not one of {list(allowed)}.")
        device = str(getattr(self, "device", "cpu"))
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"device = {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")

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
            except (RecursionError, ValueError) as exc:
                raise ConfigError(f"config file {p} cannot be read: {_toml_limit(exc)}.") from exc
            source = str(p)
        cls.merge(data, parse_overrides(overrides or []))
        if overrides:
            source = f"{source} + overrides" if path is not None else "the overrides"
        return cls.from_dict(data, source=source)


#: What the critic's value head reads: the policy's core (``shared``), its features without a value gradient
#: (``detached``) or a second core of the same kind (``separate``).
CRITICS = ("shared", "detached", "separate")
#: The algorithms ``algo`` names (:data:`meta_rl.algorithms.ALGORITHMS`).
ALGOS = ("reinforce", "ppo")


@dataclass
class TaskConfig:
    """What to learn: the env and how many of its tasks run at once."""

    env_id: str = "meta_rl/Glyphs-5way-v0"
    """A gymnasium id with a ``vector_entry_point`` (the suite's ids, or one ``register_gym_task`` made)."""
    env_module: str = "meta_rl.envs"
    """Module imported before ``gymnasium.make_vec`` so that it registers ``env_id`` (your plug-in)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the env constructor (e.g. ``{n_way = 20}``); a key the env does not take is refused. A
    ``register_gym_task`` plug-in takes ``episodes_per_trial``, ``max_episode_steps``, ``vectorization`` (``async``:
    its envs in worker processes) and ``num_workers`` (default: one per CPU core)."""
    num_envs: int = 64
    """Tasks run in parallel (B)."""
    rollout_steps: int = 0
    """Steps per rollout; 0 uses the env's ``episode_length`` (one whole task per rollout)."""
    train_split: str = "train"
    """Split of classes the agent trains on (passed as ``split=`` where the env takes one)."""
    heldout_split: str = "val"
    """Split used for the held-out curves logged during training."""


@dataclass
class ModelConfig:
    """The policy: encoder → core → (memory-read head) → action and value heads.

    :class:`~meta_rl.policy.MetaPolicy` takes this section, so its defaults are the only ones."""

    encoder: str = "auto"
    """Observation encoder (a registered name): ``auto`` (``cnn`` for images, ``mlp`` for vectors), ``cnn`` (light
    strided conv net), ``conv4``, ``seed_cnn``, ``mlp``, or one your ``model_module`` registers."""
    core: str = "memory"
    """Recurrent core (a registered name): ``memory`` (episodic key-value memory), ``gru``, ``lstm``,
    ``transformer``, or one your ``model_module`` registers (README: "Bring your own core")."""
    hidden: int = 128
    """Hidden size of the core."""
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 256, 64])
    """Layer sizes of the MLP encoder; the last one is also the ``cnn`` encoder's output size."""
    model_module: str = ""
    """Module imported before the policy is built so that it registers your ``core`` or ``encoder``."""
    core_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the chosen core (``memory``: ``key_dim`` 64, ``capacity`` 0 = the task's length;
    ``transformer``: ``layers``, ``heads``, ...); an option the core does not take is refused."""
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the chosen encoder (``conv4``: ``filters`` 64, ``norm`` batch/group/none; ``cnn``:
    ``channels``); an option the encoder does not take is refused."""
    read_head: dict[str, Any] = field(default_factory=dict)
    """Settings of the memory-read head (:class:`~meta_rl.memory_read.ReadHeadConfig`: ``read_gain``,
    ``taken_gain``, ``value_read``, ``value_read_gain``, ``index_head``), built where the core offers named
    reads (``memory``) and actions are discrete; setting one where it is not built is refused. The run's
    saved config records what was built."""
    critic: str = "shared"
    """The critic's trunk: ``shared`` (the value head reads the policy's core and its loss trains it too, weighted
    by ``value_coef``), ``detached`` (the same features, no value gradient into the core or encoder) or
    ``separate`` (its own core of the same kind on the detached encoding, as sb3-contrib's RecurrentPPO
    does by default; twice the core's compute)."""
    encoder_precision: str = "auto"
    """Arithmetic of the encoder: ``float32``, ``bfloat16`` (autocast, any input: weights, gradients and
    features stay float32) or ``auto`` (bfloat16 for images on CPUs with AMX, float32 elsewhere)."""
    init_log_std: float = -0.5
    """Initial log σ of the Gaussian head (``Box`` actions)."""


@dataclass
class AlgorithmConfig:
    """How the policy learns: a loss over rollouts (REINFORCE with TD(λ)-learned advantages by default)."""

    algo: str = "reinforce"
    """``reinforce`` (REINFORCE with GAE(λ) advantages from a TD(λ) critic: one update per rollout) or ``ppo``
    (the clipped surrogate over ``algo_kwargs.epochs`` epochs of ``algo_kwargs.minibatches`` minibatches of tasks)."""
    gamma: float = 0.9
    """Discount of the critic's λ-returns and the policy's advantages, the same for every task: what an env
    declares chooses no setting (BENCHMARKS.md § "One learner, told nothing")."""
    learning_rate: float = 2e-3
    """Adam step size."""
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the algorithm (``ppo``: ``epochs`` 4, ``minibatches`` 4, ``clip_range`` 0.2); ``reinforce``
    takes none, and an option the algorithm does not take is refused."""
    gae_lambda: float = 0.95
    """λ of the policy's GAE(λ) advantages; 1 gives Monte-Carlo returns minus the baseline, 0 the one-step
    TD error."""
    value_lambda: float = 0.95
    """λ of the critic's TD(λ) target (may differ from ``gae_lambda``: a long target teaches the critic fast,
    short advantages keep the policy gradient's variance low)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    value_coef: float = 0.05
    """Weight of the critic loss. With a ``shared`` critic it sets how much the λ-return targets' gradient shapes
    the core the policy reads (BENCHMARKS.md § "The critic's share of the core")."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    normalize_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per update."""
    normalize_returns: bool = True
    """The critic learns its λ-return targets scaled by their running mean and σ (PopArt, van Hasselt
    et al. 2016, output-preserving), so the value loss keeps one scale whatever the task's rewards."""
    return_norm_rate: float = 0.01
    """Averaging rate of those running statistics (about 1 / rate updates)."""
    compile_update: bool = False
    """``torch.compile`` the update's loss: the policy's re-run over the rollout and the losses become compiled graphs,
    their backward pass compiled through AOTAutograd (the rollout, clipping and Adam's step stay eager; where the
    compiler cannot follow, e.g. ``nn.GRU``, that part runs eagerly between graphs). The first updates pay the compile
    time (tens of seconds on a CPU), and the losses and gradients then match the eager update's only to float
    tolerance, not bit for bit. Off until measured on a GPU (BENCHMARKS.md § "GPU"). Where torch.compile is
    unavailable or fails on the platform, the run stops with a ConfigError (set it false). May change when resuming."""


@dataclass
class RunSettings:
    """Where a training run computes and how often it logs, evaluates and checkpoints: what the agents'
    :class:`RunConfig` and the supervised baselines' config share."""

    seed: int = 0
    """Seed of parameters, tasks and (for the agents) action sampling."""
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
    max_minutes: float = 0.0
    """Stop training after this many minutes (0: no limit); the final held-out evaluation then gets a tenth of
    it more (at least 10 s), and logs and evaluations also follow the clock (20 and 10 over the run)."""


@dataclass
class RunConfig(RunSettings):
    """How long and where it runs, and what it writes."""

    total_env_steps: int = 50_000_000
    """Stop after this many env steps (summed over the B tasks)."""
    skip_nonfinite_updates: bool = False
    """On a NaN or inf loss or gradient, skip that update (counted as ``faults/skipped_updates``)
    instead of stopping the run. May be switched on when resuming a run that stopped on one."""
    step_timeout: float = 300.0
    """Seconds one env ``step`` or ``reset`` may take before the run stops with a checkpoint of its last
    update (0: wait for ever). A step still running 30 s past ``max_minutes`` stops the run the same way."""
    cuda_graphs: bool = False
    """Replay the policy's acting step as a CUDA graph while collecting training rollouts: the step (context, core,
    heads, sampling, log-prob, value; the encoder too where the rollout does not encode the task's images up front)
    is captured once per rollout shape as a ``torch.cuda.CUDAGraph`` and replayed each step on static buffers, one
    launch instead of hundreds; the env's step stays outside. The sampling noise is drawn from the run's generator
    outside the graph, so the actions are those of the eager step. Needs CUDA (``device=cuda``; a CPU run refuses
    it). Off by default until measured (BENCHMARKS.md § "GPU"). May change when resuming."""
    log_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where training means and held-out figures go, any of ``tensorboard`` (event files), ``csv`` (``progress.csv``,
    a row per log), ``jsonl`` (``progress.jsonl``, an object per log) and ``stdout`` (a table per log); on the
    command line ``log_to='["csv","jsonl"]'``. Only rank 0 writes. May change when resuming."""


#: The sections of :class:`TrainConfig`, in the order ``--help`` lists them.
SECTIONS: tuple[tuple[str, type], ...] = (
    ("task", TaskConfig), ("model", ModelConfig), ("algorithm", AlgorithmConfig), ("run", RunConfig),
)
#: The keys most runs set, listed first by ``--help``.
ESSENTIAL_KEYS = ("env_id", "env_module", "env_kwargs", "num_envs", "encoder", "core", "hidden", "algo", "gamma",
                  "learning_rate", "total_env_steps", "max_minutes", "seed", "device")


@dataclass
class TrainConfig(ConfigBase, RunConfig, AlgorithmConfig, ModelConfig, TaskConfig):
    """Everything a training run needs, in four sections (task, model, algorithm, run). Every field can be set in
    a TOML file or as ``key=value``."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "num_envs", "hidden", "total_env_steps", "log_every", "checkpoint_every",
    )
    DEFAULTED: ClassVar[tuple[str, ...]] = (
        "rollout_steps", "eval_every", "eval_episodes", "torch_threads",
    )
    UNIT_INTERVAL: ClassVar[tuple[str, ...]] = ("gamma", "gae_lambda", "value_lambda", "return_norm_rate")
    STRICTLY_POSITIVE: ClassVar[tuple[str, ...]] = ("learning_rate", "max_grad_norm")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("entropy_coef", "value_coef", "max_minutes", "step_timeout")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "encoder_precision": tuple(PRECISIONS), "critic": CRITICS, "algo": ALGOS,
    }
    HELP_SECTIONS: ClassVar[tuple[tuple[str, type], ...]] = SECTIONS
    HELP_FIRST: ClassVar[tuple[str, ...]] = ESSENTIAL_KEYS

    def _check_types(self) -> None:
        check_log_to(self.log_to)  # first: the generic type check would not name the writers
        super()._check_types()

    def check(self) -> None:
        if not -(2**63) <= self.seed < 2**63:  # what torch.Generator.manual_seed takes
            raise ConfigError(f"seed must lie in [-2**63, 2**63), got {self.seed}.")
        bad = [k for k, v in self.env_kwargs.items() if not _plain(v)]
        if bad:
            raise ConfigError(
                f"env_kwargs {bad} hold values that cannot be saved in a config (only str, int, float, bool, "
                "lists and tables); register in-memory data with meta_rl.data.register_dataset(name, splits) "
                "and pass dataset = name."
            )
        check_read_head(self.read_head)
        if not self.model_module:  # the registries hold every name there is: check names and options now
            check_part(CORES, self.core, self.core_kwargs)
            if self.encoder != "auto":
                check_part(ENCODERS, self.encoder, self.encoder_kwargs)
            elif self.encoder_kwargs:
                raise ConfigError(f"encoder_kwargs {sorted(self.encoder_kwargs)} need a named encoder, but encoder = "
                                  "'auto' picks one from the observation; name it (encoder=cnn or encoder=mlp).")


def check_part(registry: Registry[Any], name: str, options: dict[str, Any]) -> None:
    """``name`` is registered and takes ``options`` (:meth:`~meta_rl.registry.Registry.check_options`).

    Raises:
        ConfigError: an unknown name (with the registered ones) or an option the part does not take.
    """
    registry.check_options(name, options)


def check_log_to(value: Any) -> None:
    """``log_to`` is a non-empty list of distinct writer names (:data:`~meta_rl.metric_writers.LOG_WRITERS`).

    Raises:
        ConfigError: naming the value, the writers and how to write the list.
    """
    names = ", ".join(LOG_WRITERS)
    example = "log_to='[\"tensorboard\",\"csv\"]' on the command line, log_to = [\"tensorboard\", \"csv\"] in TOML"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"log_to must be a list of writer names ({names}), got {value!r}; write it as a list: "
                          f"{example}.")
    if not value:
        raise ConfigError(f"log_to = [] would log nothing; name at least one of {names} (the default is "
                          "[\"tensorboard\"]).")
    for name in value:
        if name not in LOG_WRITERS:
            close = did_you_mean(name, list(LOG_WRITERS))
            hint = f"; did you mean {close!r}?" if close else "."
            raise ConfigError(f"log_to names {name!r}, which is not a writer (the writers are {names}){hint}")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise ConfigError(f"log_to names {', '.join(repr(v) for v in twice)} more than once ({value!r}); name each "
                          "writer once.")


def check_read_head(table: dict[str, Any]) -> ReadHeadConfig:
    """The ``read_head`` table as settings, each key and value checked.

    Raises:
        ConfigError: an unknown key (with a did-you-mean), a value of the wrong type or a negative gain.
    """
    hints = typing.get_type_hints(ReadHeadConfig)
    for key, value in table.items():
        if key not in hints:
            close = did_you_mean(key, list(hints))
            hint = f"did you mean read_head.{close}?" if close else f"it takes {', '.join(hints)}."
            raise ConfigError(f"read_head has no key {key!r}; {hint}")
        check_type(f"read_head.{key}", value, hints[key])
        if key.endswith("gain") and value < 0:
            raise ConfigError(f"read_head.{key} must be >= 0, got {value}.")
    return ReadHeadConfig(**table)


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
    if name in named and p.parent == Path("."):
        return named[name]  # "gru" and "gru.toml" name the shipped file
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
    """Every key of a config with its type, default and docstring, for ``--help``: the keys most runs set first,
    then every key by section where the config has sections (task, model, algorithm, run)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def entry(name: str) -> list[str]:
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = getattr(hints[name], "__name__", str(hints[name]))
        if typing.get_origin(hints[name]) is not None:
            kind = str(hints[name]).replace("typing.", "")
        return [f"  {name} ({kind}, default {json.dumps(default)})",
                *textwrap.wrap(docs.get(name, ""), 96, initial_indent=" " * 6, subsequent_indent=" " * 6)]

    lines = ["config keys (set them as key=value, or in a TOML file):"]
    if cls.HELP_FIRST:
        lines += textwrap.wrap(f"most runs set only: {', '.join(cls.HELP_FIRST)}", 100, initial_indent="  ",
                               subsequent_indent="    ")
    sections = cls.HELP_SECTIONS or (("", cls),)
    for title, section in sections:
        declared = {f.name for f in dataclasses.fields(section)} if title else set(fields)
        names = [n for n in fields if n in declared]
        if title:
            lines += ["", f"{title}: {(section.__doc__ or '').splitlines()[0]}"]
        for name in names:
            lines += entry(name)
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


def check_cuda_graphs(cuda_graphs: bool, device: torch.device, setting: str) -> None:
    """Refuse ``cuda_graphs`` where the run's ``device`` (resolved from the ``device`` setting) is not CUDA.

    Raises:
        ConfigError: ``cuda_graphs`` is on and ``device`` is not a CUDA device.
    """
    if cuda_graphs and device.type != "cuda":
        raise ConfigError(
            f"cuda_graphs = true replays the acting step as a CUDA graph, but this run's device is {device} (device = "
            f"{setting!r}; this machine has {', '.join(available_devices())}): it would do nothing. Use device=cuda "
            "on a machine with a GPU, or cuda_graphs=false.")


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


def _toml_limit(exc: BaseException) -> str:
    """What a TOML value broke that is not TOML syntax: Python's nesting depth or its longest integer."""
    if isinstance(exc, RecursionError):
        return ("its arrays or tables nest too deeply for the parser (Python's recursion limit); no setting nests "
                "more than two levels: flatten the value")
    return f"{exc} (no setting takes a number that long: write a smaller one)"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as TOML (``3``, ``1e-3``, ``true``, ``[64, 64]``,
    ``{n_way = 20}``), else kept as plain strings. ``env_kwargs.n_way=20`` sets one key of a table."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. num_envs=32.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        except (RecursionError, ValueError) as exc:
            raise ConfigError(f"override {key!r} cannot be read: {_toml_limit(exc)}.") from exc
        table, dot, inner = key.partition(".")
        if dot and inner:  # a key of a table: env_kwargs.n_way=20, core_kwargs.key_dim=32, read_head.read_gain=0
            out.setdefault(table, {})[inner] = value
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a TOML config (None: the defaults), apply overrides and validate (:meth:`ConfigBase.load`)."""
    return TrainConfig.load(path, overrides)
