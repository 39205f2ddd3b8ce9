"""Recurrent cores of the meta-policy behind one protocol (:class:`Core`), looked up by name in :data:`CORES`.

``memory`` (an episodic key-value memory), ``gru``, ``lstm`` and ``transformer`` ship here; a user's
module adds its own with :func:`register_core` and names it with ``model_module``.
"""

from __future__ import annotations

from meta_rl.cores.base import CORES, Core, State, make_core, register_core
from meta_rl.cores.memory import EpisodicMemoryCore
from meta_rl.cores.rnn import GRUCore, LSTMCore, run_rnn
from meta_rl.cores.transformer import TransformerCore

__all__ = ["CORES", "Core", "EpisodicMemoryCore", "GRUCore", "LSTMCore", "State", "TransformerCore", "make_core",
           "register_core", "run_rnn"]
