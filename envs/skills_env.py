"""SkillChainEnv: a second exposure env with other dynamics than the mock, kept to check controllers.

Controllers are tuned on the mock env; a controller tuned to the mock alone is found out here. The
same spaces, info keys and reward as the other exposure envs (envs/spec.py), microseconds per step,
but another mechanism: a chain of skills learnt in order, an exposure that reveals a prefix of the
chain, a memorisation dip whose revert outlasts the reward's lookahead, and a grounded score that,
in the paper's form, pays for exposure by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from atesd.progress import RewardSpec, grounded_change, window_reward_floats
from envs import spec

Profile = Literal["ramp", "wall", "forget"]
PROFILES = ("ramp", "wall", "forget")


@dataclass(frozen=True)
class SkillChainConfig:
    """Constants of the skill-chain dynamics (class docstring: what each does and why)."""

    profile: Profile = field(default="ramp", metadata={"help": "ramp, wall or forget (class docstring)"})
    skills: int = field(default=8, metadata={"help": "skills in the chain, N (>= 2)"})
    hold_steps: int = field(default=5, metadata={"help": "student updates per env step, H (>= 1)"})
    total_steps: int = field(
        default=200, metadata={"help": "student updates per episode, T (a multiple of hold_steps)"}
    )
    gamma: float = field(
        default=0.9, metadata={"help": "per-update discount of the window reward, in (0, 1]"}
    )
    lambda_gt: float = field(
        default=30.0,
        metadata={
            "help": "weight of the grounded score (>= 0; 0.1 for the paper's form: ours, it gives none)"
        },
    )
    signed_progress: bool = field(default=False, metadata={"help": "charge loss rises too (net drop)"})
    grounded_change: bool = field(
        default=True,
        metadata={
            "help": "the grounded term is the change of the window's mean grounded score since the "
            "previous window (pays for a student that got better); False: its level (the paper's)"
        },
    )
    grounded_by: Literal["teacher", "student"] = field(
        default="student",
        metadata={"help": "teacher: the paper's grounded score, which rises with alpha by itself; "
                  "student: the competence term alone (exposure-neutral)"},
    )  # fmt: skip
    rate: float = field(
        default=0.06, metadata={"help": "learning rate of a revealed, ready skill per update (> 0)"}
    )
    distraction: float = field(
        default=10.0, metadata={"help": "slow-down per revealed skill the student cannot reach yet (>= 0)"}
    )
    memorise: float = field(
        default=0.002, metadata={"help": "dip fed per unreachable revealed skill per update (>= 0)"}
    )
    memory: float = field(
        default=0.93,
        metadata={"help": "per-update persistence of the dip, in [0, 1) (0.93: half-life ~10 updates)"},
    )
    noise: float = field(
        default=0.01, metadata={"help": "scale of the heavy-tailed tracked-loss noise (>= 0)"}
    )
    learn_noise: float = field(
        default=0.3, metadata={"help": "sd of the log of each update's learning-rate factor (>= 0)"}
    )

    def __post_init__(self) -> None:
        spec.check_field_types(self)
        checks = (
            ("profile", self.profile in PROFILES, f"one of {PROFILES}"),
            ("skills", spec.is_whole(self.skills) and self.skills >= 2, "a whole number >= 2"),
            *spec.window_checks(self.hold_steps, self.total_steps),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("lambda_gt", math.isfinite(self.lambda_gt) and self.lambda_gt >= 0, "finite and >= 0"),
            ("grounded_by", self.grounded_by in ("teacher", "student"), "teacher or student"),
            ("rate", math.isfinite(self.rate) and self.rate > 0, "finite and > 0"),
            ("distraction", math.isfinite(self.distraction) and self.distraction >= 0, "finite and >= 0"),
            ("memorise", math.isfinite(self.memorise) and self.memorise >= 0, "finite and >= 0"),
            ("memory", 0 <= self.memory < 1, "in [0, 1)"),
            ("noise", math.isfinite(self.noise) and self.noise >= 0, "finite and >= 0"),
            ("learn_noise", math.isfinite(self.learn_noise) and self.learn_noise >= 0, "finite and >= 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def reward_spec(self) -> RewardSpec:
        return RewardSpec.of(self)


WALL_SKILL, WALL_HARDNESS = 4, 4.0  # "wall": the fifth skill learns 4x slower than the others
FORGET_RATE = 0.02  # "forget": per update, a skill not revealed loses this share of its mastery
SELF_RATE = 0.05  # a ready skill the teacher does not reveal still learns at this share of `rate`


class SkillChainEnv(gym.Env):
    """A student that learns a chain of N skills in order, from a teacher that reveals a prefix of it.

    ## Description
    A solution is a chain of N steps, each needing its own skill; the student's mastery of skill i is
    m_i in [0, 1] (at reset m = (0.9, 0.5, 0, ..., 0): the first steps half known). Exposure alpha
    reveals the first alpha N steps of the reference (step i revealed by r_i = clip(alpha N - i, 0, 1)).
    Skill i is *ready* to the degree m_(i-1) is mastered (m_(-1) = 1): the student can use a revealed
    step only once it reaches it. Per update
    - a ready revealed skill learns:
      m_i += rate / d_i (r_i ready_i + SELF_RATE ready_i (1 - r_i)) (1 - m_i) s, where d_i is its
      hardness and s = 1 / (1 + distraction u) slows all learning by the share
      u = sum_i r_i (1 - ready_i) / N of revealed steps the student cannot reach (a teacher far
      ahead of the student pulls its distribution toward steps the student cannot take);
    - the unreachable revealed steps are memorised instead: a dip in the tracked loss fed by
      memorise N u per update that persists by `memory` per update (0.93: half-life about 10 updates,
      so most of it reverts beyond the paper's lookahead of L = 10 updates);
    - each update's learning is scaled by a log-normal factor of mean 1 (`learn_noise` sd of its log:
      some batches teach more than others), so runs of one policy differ from seed to seed;
    - the tracked loss (probe NLL stand-in) is l = 0.4 + 1.6 (1 - c) - dip + noise, c = mean_i m_i, the
      noise Student-t with 3 degrees of freedom times `noise` (heavier tails than the mock's Gaussian).
    So the best exposure reveals the chain up to just past the student's frontier: it rises in steps
    as skills are mastered, unlike the mock's smooth alpha*(c). Under-exposure learns slowly (only
    SELF_RATE without the reference); over-exposure slows learning and buys a dip that the paper's
    positive-drops progress pays for and whose revert it mostly never sees.

    Profiles (`profile`):
    - "ramp": every skill equally hard (d_i = 1);
    - "wall": skill 4 is 4x harder: progress stalls at the wall, the best exposure waits there while
      any exposure past it buys dips;
    - "forget": a skill not revealed loses 2% of its mastery per update, so revealing the mastered
      prefix rehearses it and low exposure forgets.

    Statistics the controller reads: mismatch 0.05 + 0.5 u + 0.2 alpha (1 - c), distillation loss
    0.1 + 0.6 alpha (1 - c) + 0.5 u (both + noise), confidence 0.4 + 0.5 c. The grounded score: with
    `grounded_by="teacher"` (the paper's form) -2.5 (1 - c) + 0.2 alpha, a teacher shown more is
    surer of the gold answer by itself; with "student", -2.5 (1 - c) alone.

    ## Action Space
    `Box(0, 1, (1,), float32)`: the exposure alpha of the next window (global action only). NaN,
    infinite or out-of-range actions raise ValueError (envs/spec.py).

    ## Observation Space
    `Box(6,)` float32 with the exposure envs' six named statistics (`env.observation_names`):
    progress, ema_alpha, ema_loss (squashed), ema_mismatch, ema_probe_nll (relative to reset),
    confidence; EMAs with decay 0.9 per update.

    ## Rewards
    The window's discounted learning progress of the tracked loss plus lambda_gt (default 30) times
    the grounded term: by default the student's score (`grounded_by="student"`) and its rise over
    the previous window (`grounded_change`); the paper's form is `lambda_gt=0.1, grounded_by="teacher",
    grounded_change=False`. `atesd.progress.window_reward` and `grounded_change`, as in the other envs.

    ## Starting State
    m = (0.9, 0.5, 0, ...), no dip. The EMAs start at fixed values, not at their first measurements:
    alpha, loss and mismatch at 0, the probe ratio at 1, confidence at 0.4; so one window at alpha 1
    gives ema_alpha 1 - 0.9^H (0.40951 at H = 5). The real env instead takes each statistic's first
    value as is (`atesd.stats.EMAStats`).

    ## Episode End
    `terminated` once T updates are done (T / H steps); never truncated. `info["score"]` is the
    competence c (the mean mastery).

    ## Arguments
    `gymnasium.make("atesd/SkillChain-v0", profile="wall", ...)`: any `SkillChainConfig` field by
    keyword, or `cfg=SkillChainConfig(...)`; `atesd/SkillChain-ramp-v0`, `-wall-v0` and `-forget-v0`
    name the three profiles (for `bench.py --env ID`; `profile_env`), and take the same arguments.
    """

    metadata = {"render_modes": []}
    scores_every_window = True  # info["score"] is measured at every step (a bank records each one)

    def __init__(self, cfg: SkillChainConfig | None = None, **overrides) -> None:
        self.cfg = spec.env_config(SkillChainConfig, cfg, overrides, "SkillChainEnv")
        n = self.cfg.skills
        self.hardness = np.ones(n)
        if self.cfg.profile == "wall":
            self.hardness[min(WALL_SKILL, n - 1)] = WALL_HARDNESS
        self.forget = FORGET_RATE if self.cfg.profile == "forget" else 0.0
        self.action_space = spec.action_space(1)
        self.observation_space = spec.observation_space()
        self.observation_names = spec.observation_names()
        self.bands: tuple[str, ...] = ()

    @property
    def reward_spec(self) -> RewardSpec:
        """The reward's H and gamma (and T, lambda_gt, signed): the one source controllers read."""
        return self.cfg.reward_spec

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.mastery = np.zeros(self.cfg.skills)
        self.mastery[:2] = (0.9, 0.5)
        self.dip = 0.0
        self.steps_done = 0
        self.grounded_prev: float | None = None  # the last window's mean grounded score (change form)
        self.loss_now = self._tracked(0.0)
        self.loss_start = self.loss_now
        self.ema = {"alpha": 0.0, "loss": 0.0, "mismatch": 0.0, "probe": 1.0, "confidence": 0.4}
        info = dict.fromkeys(spec.INFO_KEYS, 0.0) | {"alpha": 0.0, "losses": [self.loss_now], "steps_done": 0}
        return self._obs(), info | {"score": self.competence()}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = hasattr(self, "steps_done")
        spec.check_stepping(started, started and self.steps_done >= self.cfg.total_steps)
        alpha = spec.check_action(action)
        c, n = self.cfg, self.cfg.skills
        reveal = np.clip(alpha * n - np.arange(n), 0.0, 1.0)
        noise = c.noise * self.np_random.standard_t(3, size=c.hold_steps + 2)
        luck = np.exp(c.learn_noise * self.np_random.standard_normal(c.hold_steps) - c.learn_noise**2 / 2)
        losses, grounded, unreach = [self.loss_now], [], 0.0
        for j in range(c.hold_steps):
            ready = np.concatenate(([1.0], self.mastery[:-1]))
            unreach = float(np.sum(reveal * (1.0 - ready))) / n
            slow = 1.0 / (1.0 + c.distraction * unreach)
            signal = ready * (reveal + SELF_RATE * (1.0 - reveal))
            self.mastery += luck[j] * c.rate / self.hardness * signal * (1.0 - self.mastery) * slow
            self.mastery -= self.forget * (1.0 - reveal) * self.mastery
            np.clip(self.mastery, 0.0, 1.0, out=self.mastery)  # luck * rate > 1 would overshoot 1
            self.dip = self.dip * c.memory + c.memorise * n * unreach
            losses.append(self._tracked(float(noise[j])))
            bonus = 0.2 * alpha if c.grounded_by == "teacher" else 0.0
            grounded.append(-2.5 * (1.0 - self.competence()) + bonus)
        self.loss_now = losses[-1]
        self.steps_done += c.hold_steps
        terms = window_reward_floats(losses, grounded, c.gamma, c.lambda_gt, c.signed_progress)
        if c.grounded_change:
            terms = grounded_change(terms, self.grounded_prev, c.lambda_gt)
            self.grounded_prev = terms.pop("grounded_level")
        room = 1.0 - self.competence()
        mismatch = 0.05 + 0.5 * unreach + 0.2 * alpha * room + float(noise[-2])
        loss = 0.1 + 0.6 * alpha * room + 0.5 * unreach + float(noise[-1])
        decay = 0.9**c.hold_steps
        confidence = 0.4 + 0.5 * (1.0 - room)
        probe = self.loss_now / self.loss_start
        for key, value in (("alpha", alpha), ("loss", loss), ("mismatch", mismatch),
                           ("probe", probe), ("confidence", confidence)):  # fmt: skip
            self.ema[key] = decay * self.ema[key] + (1 - decay) * value
        info = {
            "alpha": alpha,
            "reward/progress": terms["progress"],
            "reward/grounded": terms["grounded"],
            "reward/total": terms["reward"],
            "stats/loss": loss,
            "stats/mismatch": mismatch,
            "stats/probe_nll": self.loss_now,
            "stats/confidence": confidence,
            "losses": losses,
            "steps_done": self.steps_done,
            "score": self.competence(),
        }
        return self._obs(), terms["reward"], self.steps_done >= c.total_steps, False, info

    def competence(self) -> float:
        return float(np.mean(self.mastery))

    def _tracked(self, noise: float) -> float:
        return 0.4 + 1.6 * (1.0 - self.competence()) - self.dip + noise

    def _obs(self) -> np.ndarray:
        return spec.make_observation(
            progress=self.steps_done / self.cfg.total_steps,
            ema_alpha=self.ema["alpha"],
            ema_loss=self.ema["loss"],
            ema_mismatch=self.ema["mismatch"],
            probe_ratio=self.ema["probe"],
            confidence=self.ema["confidence"],
        )


def profile_env(id_profile: Profile, cfg: SkillChainConfig | None = None, **overrides) -> SkillChainEnv:
    """The env of `atesd/SkillChain-<id_profile>-v0`: that profile, with `cfg` or keyword overrides as
    `SkillChainEnv` takes them. A `cfg` or `profile=` naming another profile is refused (the id would
    silently have named the wrong env)."""
    given = cfg.profile if cfg is not None else overrides.get("profile", id_profile)
    if given != id_profile:
        raise ValueError(
            f"atesd/SkillChain-{id_profile}-v0 is the {id_profile!r} profile, but profile {given!r} was "
            "given: make atesd/SkillChain-v0 to choose the profile"
        )
    if cfg is None:
        overrides["profile"] = id_profile
    return SkillChainEnv(cfg, **overrides)
