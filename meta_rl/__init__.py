"""meta-rl: meta-reinforcement learning on vision tasks."""

from __future__ import annotations

__version__ = "0.1.0"
