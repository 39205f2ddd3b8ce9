"""Meta-RL environments, registered with gymnasium when this module is imported.

Ids (all label-feedback tasks on the glyph dataset unless named otherwise):

* ``meta_rl/Glyphs-5way-v0``: 5 classes x 10 instances, label revealed one step later (Santoro).
* ``meta_rl/Glyphs-5way-Reward-v0``: the same with only the correctness reward.
* ``meta_rl/Glyphs-5way-Active-v0``: 6 actions, the 6th asks for the label (Woodward & Finn).
* ``meta_rl/Glyphs-20way-v0``: 20 classes x 10 instances.
* ``meta_rl/Glyphs-5way-1shot-v0`` / ``meta_rl/Glyphs-5way-5shot-v0``: labelled shots, then queries.
* ``meta_rl/PointNav-v0``: 2-D navigation to a hidden goal, trials of 2 episodes of 20 steps
  (continuous actions; ``PointNavVectorEnv``).
* ``meta_rl/Bandit-k{5,10,50}-n{10,100,500}-v0`` (e.g. ``meta_rl/Bandit-k5-n100-v0``): Bernoulli
  bandits with k arms, p_i ~ U(0, 1), trials of n pulls (Duan et al. 2016, Table 1;
  ``BernoulliBanditVectorEnv``).
* ``meta_rl/DependentBandit-v0``: two arms paying with p and 1 - p, trials of 100 pulls
  (Wang et al. 2016; ``DependentBanditVectorEnv``).
* ``meta_rl/TabularMDP-n{10,25,50}-v0``: random MDPs of 10 states and 5 actions, trials of n
  episodes of 10 steps (Duan et al. 2016, Table 2; ``TabularMDPVectorEnv``).
* ``meta_rl/CartPole-v0``: CartPole with pole length, masses, force and actuator sign (+-1) drawn
  per task, trials of 2 episodes of at most 100 steps (``CartPoleTaskVectorEnv``).
* ``meta_rl/FewShot-v0``: the generic task; pass ``dataset=`` (for example ``"glyphs-system"``, ``"cifar:/data"``,
  ``"omniglot:/data"``, ``"fashion_mnist"`` or an ImageDataset) and any constructor argument.

``gymnasium.make(id)`` gives the single-task env (:class:`FewShotEnv` for the glyph ids);
``gymnasium.make_vec(id, num_envs=B, device="cuda")`` gives the torch-native vector env
(:class:`FewShotVectorEnv` for the glyph ids).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from meta_rl.envs.bandits import (
    BernoulliBanditEnv,
    BernoulliBanditVectorEnv,
    DependentBanditEnv,
    DependentBanditVectorEnv,
)
from meta_rl.envs.cartpole import CartPoleTaskEnv, CartPoleTaskVectorEnv
from meta_rl.envs.classification import FEEDBACK_MODES, FewShotEnv, FewShotVectorEnv
from meta_rl.envs.gym_tasks import register_gym_task
from meta_rl.envs.point_nav import PointNavEnv, PointNavVectorEnv
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv

__all__ = [
    "FEEDBACK_MODES",
    "REGISTERED_IDS",
    "BernoulliBanditEnv",
    "BernoulliBanditVectorEnv",
    "CartPoleTaskEnv",
    "CartPoleTaskVectorEnv",
    "DependentBanditEnv",
    "DependentBanditVectorEnv",
    "FewShotEnv",
    "FewShotVectorEnv",
    "PointNavEnv",
    "PointNavVectorEnv",
    "SingleTaskEnv",
    "TabularMDPEnv",
    "TabularMDPVectorEnv",
    "register_envs",
    "register_gym_task",
]

_FEW_SHOT = ("meta_rl.envs.classification:FewShotEnv", "meta_rl.envs.classification:FewShotVectorEnv")
_POINT_NAV = ("meta_rl.envs.point_nav:PointNavEnv", "meta_rl.envs.point_nav:PointNavVectorEnv")
_BANDIT = ("meta_rl.envs.bandits:BernoulliBanditEnv", "meta_rl.envs.bandits:BernoulliBanditVectorEnv")
_DEPENDENT_BANDIT = ("meta_rl.envs.bandits:DependentBanditEnv", "meta_rl.envs.bandits:DependentBanditVectorEnv")
_CARTPOLE = ("meta_rl.envs.cartpole:CartPoleTaskEnv", "meta_rl.envs.cartpole:CartPoleTaskVectorEnv")
_TABULAR_MDP = ("meta_rl.envs.tabular_mdp:TabularMDPEnv", "meta_rl.envs.tabular_mdp:TabularMDPVectorEnv")

# id -> (entry_point, vector_entry_point, kwargs)
_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "meta_rl/Glyphs-5way-v0": (*_FEW_SHOT, {"n_way": 5, "instances_per_class": 10, "feedback": "label"}),
    "meta_rl/Glyphs-5way-Reward-v0": (*_FEW_SHOT, {"n_way": 5, "instances_per_class": 10, "feedback": "reward"}),
    "meta_rl/Glyphs-5way-Active-v0": (*_FEW_SHOT, {"n_way": 5, "instances_per_class": 10, "feedback": "active"}),
    "meta_rl/Glyphs-20way-v0": (*_FEW_SHOT, {"n_way": 20, "instances_per_class": 10, "feedback": "label"}),
    "meta_rl/Glyphs-5way-1shot-v0": (
        *_FEW_SHOT, {"n_way": 5, "shots": 1, "queries_per_class": 5, "feedback": "label"}
    ),
    "meta_rl/Glyphs-5way-5shot-v0": (
        *_FEW_SHOT, {"n_way": 5, "shots": 5, "queries_per_class": 5, "feedback": "label"}
    ),
    "meta_rl/FewShot-v0": (*_FEW_SHOT, {}),
    "meta_rl/PointNav-v0": (*_POINT_NAV, {"episodes_per_trial": 2, "horizon": 20}),
    **{
        f"meta_rl/Bandit-k{arms}-n{pulls}-v0": (*_BANDIT, {"arms": arms, "pulls": pulls})
        for pulls in (10, 100, 500)
        for arms in (5, 10, 50)
    },
    "meta_rl/DependentBandit-v0": (*_DEPENDENT_BANDIT, {"pulls": 100}),
    **{
        f"meta_rl/TabularMDP-n{episodes}-v0": (
            *_TABULAR_MDP, {"states": 10, "actions": 5, "horizon": 10, "episodes_per_trial": episodes}
        )
        for episodes in (10, 25, 50)
    },
    "meta_rl/CartPole-v0": (*_CARTPOLE, {"episodes_per_trial": 2, "max_episode_steps": 100}),
}
REGISTERED_IDS = tuple(_SPECS)


def register_envs() -> None:
    """Register every id above with gymnasium (safe to call more than once)."""
    for env_id, (entry, vector_entry, kwargs) in _SPECS.items():
        if env_id in gym.registry:
            continue
        gym.register(env_id, entry_point=entry, vector_entry_point=vector_entry, kwargs=dict(kwargs))


register_envs()
