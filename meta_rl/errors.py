"""The error a bad setting raises, shared by the config, the registries and the parts they build."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it and the allowed values."""
