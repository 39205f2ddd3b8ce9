from meta_rl.envs.bandit_baselines import BanditEnv
from meta_rl.envs.bandits import BernoulliBanditVectorEnv, DependentBanditVectorEnv
from meta_rl.envs.cartpole import CartPoleTaskVectorEnv
from meta_rl.envs.cartpole_baselines import CartPoleEnv
from meta_rl.envs.mdp_baselines import MDPEnv
from meta_rl.envs.tabular_mdp import TabularMDPVectorEnv

a: BanditEnv = BernoulliBanditVectorEnv()
b: BanditEnv = DependentBanditVectorEnv()
c: MDPEnv = TabularMDPVectorEnv()
d: CartPoleEnv = CartPoleTaskVectorEnv()
e: MDPEnv = CartPoleTaskVectorEnv()  # should fail
print(isinstance(a, BanditEnv), isinstance(c, BanditEnv), isinstance(c, MDPEnv), isinstance(d, CartPoleEnv), isinstance(d, MDPEnv), isinstance(a, CartPoleEnv), isinstance(c, CartPoleEnv))
