"""meta-rl: meta-reinforcement learning on vision tasks.

``meta_rl.load(run_dir)`` returns a trained agent (:class:`meta_rl.trained_agent.TrainedAgent`): its policy,
config and env factory. ``meta_rl.Callback``, ``meta_rl.StopOnThreshold`` and ``meta_rl.SaveBestCheckpoint`` hook
into training (:mod:`meta_rl.callbacks`). Each is imported on first use, so ``import meta_rl`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Callback", "RunView", "SaveBestCheckpoint", "StopOnThreshold", "TrainedAgent", "__version__", "load"]

if TYPE_CHECKING:
    from meta_rl.callbacks import Callback, RunView, SaveBestCheckpoint, StopOnThreshold
    from meta_rl.trained_agent import TrainedAgent, load


def __getattr__(name: str) -> Any:
    if name in ("load", "TrainedAgent"):
        from meta_rl import trained_agent

        return getattr(trained_agent, name)
    if name in ("Callback", "RunView", "SaveBestCheckpoint", "StopOnThreshold"):
        from meta_rl import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'meta_rl' has no attribute {name!r}")
