"""Gymnasium environments of the exposure problem: the real one over a DistillEngine and a mock one.

Importing this package registers `atesd/TeacherExposure-v0` and `atesd/MockExposure-v0`.
"""

from gymnasium.envs.registration import register, registry

if "atesd/MockExposure-v0" not in registry:
    register(id="atesd/MockExposure-v0", entry_point="envs.mock_env:MockExposureEnv")
if "atesd/TeacherExposure-v0" not in registry:
    register(
        id="atesd/TeacherExposure-v0",
        entry_point="envs.exposure_env:TeacherExposureEnv",
        nondeterministic=True,
    )
