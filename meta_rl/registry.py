"""Registries of named parts (cores, encoders) that a user's module can extend.

A registry maps a name to a factory. ``meta-rl train core=NAME model_module=mypkg.cores`` imports
``mypkg.cores`` (which registers ``NAME``) before the policy is built; a saved run never imports a
module because its checkpoint names it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from meta_rl.errors import ConfigError

__all__ = ["Registry", "import_plugin"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Named factories of one kind of part.

    Args:
        kind: what the parts are, for messages (``"core"``).
        key: the config key that names one (``"core"``), and ``options_key`` the table of its options.
        supplied: keyword arguments the package passes itself (not options a user sets).
    """

    def __init__(self, kind: str, key: str, options_key: str, supplied: tuple[str, ...] = ()) -> None:
        self.kind, self.key, self.options_key, self.supplied = kind, key, options_key, supplied
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register a factory (a class or function) under ``name``.

        Raises:
            ValueError: ``name`` is taken by another factory.
        """

        def add(factory: F) -> F:
            old = self._factories.get(name)
            if old is not None and _where(old) != _where(factory):  # a module imported again registers anew
                raise ValueError(f"{self.kind} {name!r} is already registered ({old!r}); pick another name.")
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return list(self._factories)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._factories))

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> F:
        """The factory registered as ``name``.

        Raises:
            ConfigError: no such name; the message lists the registered ones and how to add one.
        """
        if name not in self._factories:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean {self.key}={close[0]}?" if close else ""
            raise ConfigError(
                f"{self.key} = {name!r} is not a registered {self.kind}; registered: {', '.join(self.names())}.{hint} "
                f"One of your own registers itself in a module you name with model_module=your.module."
            )
        return self._factories[name]

    def options(self, name: str) -> dict[str, Any]:
        """The keyword options ``name``'s factory takes in ``options_key``, with their defaults."""
        params = inspect.signature(self.get(name)).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in self.supplied}

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """Refuse options that ``name`` does not take: they would do nothing.

        Raises:
            ConfigError: the unknown keys, with the ones ``name`` takes.
        """
        known = self.options(name)
        unknown = sorted(set(options) - set(known))
        if unknown:
            takes = ", ".join(f"{k} (default {v!r})" for k, v in known.items()) or "no options"
            raise ConfigError(f"{self.options_key} {unknown} do nothing for {self.key} = {name!r}, "
                              f"which takes {takes}.")

    def build(self, name: str, *args: Any, options: dict[str, Any] | None = None, **fixed: Any) -> Any:
        """Build ``name`` from positional ``args``, the user's ``options`` and the ``fixed`` arguments the
        policy supplies (which the options may not override)."""
        options = dict(options or {})
        self.check_options(name, options)
        return self.get(name)(*args, **fixed, **options)


def _where(factory: Callable[..., Any]) -> tuple[str, str]:
    return getattr(factory, "__module__", ""), getattr(factory, "__qualname__", repr(factory))


def import_plugin(module: str, key: str) -> None:
    """Import the user's ``module`` (named by config key ``key``), which registers what it brings.

    Raises:
        ConfigError: it cannot be imported; the message names the key and the import error.
    """
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{key} = {module!r} cannot be imported ({exc}); fix the module name.") from exc
