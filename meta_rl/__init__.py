"""meta-rl: meta-reinforcement learning on vision tasks.

``meta_rl.load(run_dir)`` returns a trained agent (:class:`meta_rl.trained_agent.TrainedAgent`): its policy,
config and env factory. It is imported on first use, so ``import meta_rl`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TrainedAgent", "__version__", "load"]

if TYPE_CHECKING:
    from meta_rl.trained_agent import TrainedAgent, load


def __getattr__(name: str) -> Any:
    if name in ("load", "TrainedAgent"):
        from meta_rl import trained_agent

        return getattr(trained_agent, name)
    raise AttributeError(f"module 'meta_rl' has no attribute {name!r}")
