"""atesd: adaptive teacher exposure for on-policy self-distillation.

The distillation engine and its parts (tasks, models, exposure, rollouts, losses, teachers).
It knows nothing of Gymnasium or controllers; `envs/` and `controllers/` build on it.
"""

__version__ = "0.1.0"
