"""Gymnasium environments of the exposure problem: the real one over a DistillEngine and a mock one.

Importing this package registers `atesd/TeacherExposure-v0`, `atesd/MockExposure-v0` and the held-out
`atesd/SkillChain-v0` (with `atesd/SkillChain-{ramp,wall,forget}-v0`, one id per profile).
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
if "atesd/SkillChain-v0" not in registry:  # the held-out env (envs/skills_env.py), one id per profile too
    register(id="atesd/SkillChain-v0", entry_point="envs.skills_env:SkillChainEnv")
    for _profile in ("ramp", "wall", "forget"):
        register(id=f"atesd/SkillChain-{_profile}-v0", entry_point="envs.skills_env:profile_env",
                 kwargs={"id_profile": _profile})  # fmt: skip
if "atesd/Surrogate-v0" not in registry:  # fitted to a bank of logged runs (envs/surrogate_env.py)
    register(id="atesd/Surrogate-v0", entry_point="envs.surrogate_env:SurrogateExposureEnv")
