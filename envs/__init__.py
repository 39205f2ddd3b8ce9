"""Meta-RL environments, registered with gymnasium when this module is imported.

Ids (all label-feedback tasks on the glyph dataset unless named otherwise):

* ``meta_rl/Glyphs-5way-v0``: 5 classes x 10 instances, label revealed one step later (Santoro).
* ``meta_rl/Glyphs-5way-Reward-v0``: the same with only the correctness reward.
* ``meta_rl/Glyphs-5way-Active-v0``: 6 actions, the 6th asks for the label (Woodward & Finn).
* ``meta_rl/Glyphs-20way-v0``: 20 classes x 10 instances.
* ``meta_rl/Glyphs-5way-1shot-v0`` / ``meta_rl/Glyphs-5way-5shot-v0``: labelled shots, then queries.
* ``meta_rl/PointNav-v0``: 2-D navigation to a hidden goal, trials of 2 episodes of 20 steps
  (continuous actions; ``PointNavVectorEnv``).
* ``meta_rl/FewShot-v0``: the generic task; pass ``dataset=`` (for example ``"cifar:/data"``,
  ``"omniglot:/data"``, ``"fashion_mnist"`` or an ImageDataset) and any constructor argument.

``gymnasium.make(id)`` gives the single-task :class:`FewShotEnv`; ``gymnasium.make_vec(id,
num_envs=B, device="cuda")`` gives the torch-native :class:`FewShotVectorEnv`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from meta_rl.envs.classification import FEEDBACK_MODES, FewShotEnv, FewShotVectorEnv
from meta_rl.envs.point_nav import PointNavEnv, PointNavVectorEnv
from meta_rl.envs.single import SingleTaskEnv

__all__ = [
    "FEEDBACK_MODES",
    "REGISTERED_IDS",
    "FewShotEnv",
    "FewShotVectorEnv",
    "PointNavEnv",
    "PointNavVectorEnv",
    "SingleTaskEnv",
    "register_envs",
]

_ENTRY = "meta_rl.envs.classification:FewShotEnv"
_VECTOR_ENTRY = "meta_rl.envs.classification:FewShotVectorEnv"

_POINT_NAV = ("meta_rl.envs.point_nav:PointNavEnv", "meta_rl.envs.point_nav:PointNavVectorEnv")
_SPECS: dict[str, dict[str, Any]] = {
    "meta_rl/Glyphs-5way-v0": {"n_way": 5, "instances_per_class": 10, "feedback": "label"},
    "meta_rl/Glyphs-5way-Reward-v0": {"n_way": 5, "instances_per_class": 10, "feedback": "reward"},
    "meta_rl/Glyphs-5way-Active-v0": {"n_way": 5, "instances_per_class": 10, "feedback": "active"},
    "meta_rl/Glyphs-20way-v0": {"n_way": 20, "instances_per_class": 10, "feedback": "label"},
    "meta_rl/Glyphs-5way-1shot-v0": {"n_way": 5, "shots": 1, "queries_per_class": 5, "feedback": "label"},
    "meta_rl/Glyphs-5way-5shot-v0": {"n_way": 5, "shots": 5, "queries_per_class": 5, "feedback": "label"},
    "meta_rl/FewShot-v0": {},
    "meta_rl/PointNav-v0": {"episodes_per_trial": 2, "horizon": 20},
}
REGISTERED_IDS = tuple(_SPECS)


def register_envs() -> None:
    """Register every id above with gymnasium (safe to call more than once)."""
    for env_id, kwargs in _SPECS.items():
        if env_id in gym.registry:
            continue
        entry, vector_entry = _POINT_NAV if "PointNav" in env_id else (_ENTRY, _VECTOR_ENTRY)
        gym.register(env_id, entry_point=entry, vector_entry_point=vector_entry, kwargs=dict(kwargs))


register_envs()
