"""The controller family: every exposure agent, by name, with its config dataclass.

`CONTROLLERS[name] = (ControllerClass, ConfigClass)`; a controller is built as
`ControllerClass(env.observation_space, env.action_space, ConfigClass(...))`. Adding a controller is
one file in this package plus one line here.
"""

from controllers.bandit import BanditConfig, BanditController
from controllers.beta_reinforce import BetaReinforceConfig, BetaReinforceController
from controllers.fixed import FixedConfig, FixedController
from controllers.hint import HintConfig, HintController
from controllers.oracle import OracleConfig, OracleController
from controllers.ppo import PPOConfig, PPOController
from controllers.random import RandomConfig, RandomController
from controllers.schedule import ScheduleConfig, ScheduleController

CONTROLLERS = {
    "fixed": (FixedController, FixedConfig),
    "random": (RandomController, RandomConfig),
    "schedule": (ScheduleController, ScheduleConfig),
    "hint": (HintController, HintConfig),
    "bandit": (BanditController, BanditConfig),
    "beta_reinforce": (BetaReinforceController, BetaReinforceConfig),
    "ppo": (PPOController, PPOConfig),
    "oracle": (OracleController, OracleConfig),
}
