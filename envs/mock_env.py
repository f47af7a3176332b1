"""MockExposureEnv: analytic learning dynamics with a known optimal exposure, microseconds per step.

Same spaces and info keys as the real TeacherExposureEnv (see envs/spec.py), so any controller can be
unit-tested and benchmarked against it in milliseconds. Knows nothing of models or engines: a hidden
student competence evolves by closed-form rules that build in the paper's qualitative findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from atesd.progress import RewardSpec, grounded_change, window_reward_floats
from envs import spec

Variant = Literal["rising", "constant", "falling", "mix"]


@dataclass(frozen=True)
class MockConfig:
    """Constants of the mock dynamics; each default is set from a stated principle (class docstring)."""

    variant: Variant = field(default="rising", metadata={"help": "how the optimal exposure moves"})
    hold_steps: int = field(default=5, metadata={"help": "student updates per env step, H (>= 1)"})
    total_steps: int = field(
        default=500, metadata={"help": "student updates per episode, T (a multiple of hold_steps)"}
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
    signed_progress: bool = field(
        default=False, metadata={"help": "charge loss rises too (net-drop variant)"}
    )
    grounded_change: bool = field(
        default=True,
        metadata={
            "help": "the grounded term is the change of the window's mean grounded score since the "
            "previous window (pays for a student that got better); False: its level (the paper's)"
        },
    )
    target_competence: float = field(
        default=0.9, metadata={"help": "competence the oracle schedule reaches at T, in (0, 1)"}
    )
    width: float = field(default=0.25, metadata={"help": "width of the exposure sweet spot (> 0)"})
    trap_strength: float = field(
        default=1.0,
        metadata={
            "help": "dip bought by +0.4 overexposure, in units of the optimum's window progress (>= 0)"
        },
    )
    trap_revert: float = field(
        default=0.75, metadata={"help": "fraction of a dip that reverts within the next window, in [0, 1)"}
    )
    noise: float = field(default=0.002, metadata={"help": "std of the tracked-loss noise per update (>= 0)"})
    action: Literal["global", "per_band"] = field(
        default="global",
        metadata={
            "help": "global: one alpha; per_band: one alpha per difficulty group (mix: easy, hard; "
            "the other variants have one group, all)"
        },
    )

    def __post_init__(self) -> None:
        spec.check_field_types(self)
        checks = (
            *spec.window_checks(self.hold_steps, self.total_steps),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("lambda_gt", math.isfinite(self.lambda_gt) and self.lambda_gt >= 0, "finite and >= 0"),
            ("target_competence", 0 < self.target_competence < 1, "in (0, 1)"),
            ("width", math.isfinite(self.width) and self.width > 0, "finite and > 0"),
            (
                "trap_strength",
                math.isfinite(self.trap_strength) and self.trap_strength >= 0,
                "finite and >= 0",
            ),
            ("trap_revert", 0 <= self.trap_revert < 1, "in [0, 1)"),
            ("noise", math.isfinite(self.noise) and self.noise >= 0, "finite and >= 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        spec.check_action_kind(self.action)
        if self.variant not in ("rising", "constant", "falling", "mix"):
            raise ValueError(f"variant must be rising, constant, falling or mix; got {self.variant!r}")

    @property
    def reward_spec(self) -> RewardSpec:
        """H, gamma and the other facts of the reward that agents share with the env."""
        return RewardSpec.of(self)


LOSS_START, LOSS_FLOOR = 2.0, 0.5  # tracked loss at competence 0 and 1
OVER_CAP = 0.4  # overexposure beyond this buys no larger dip (the trap's calibration point)
MIX_OPTIMA, MIX_WEIGHTS = (0.8, 0.3), (0.5, 0.5)  # easy problems prefer high exposure, hard ones low
MIX_BANDS = ("easy", "hard")  # the mix variant's groups, as the per-band action names them
_GRID = np.linspace(0.0, 1.0, 101)


def optimum(variant: Variant, competence: float) -> float:
    """The best exposure of a single-difficulty variant at a competence."""
    if variant == "rising":
        return 0.3 + 0.5 * competence
    if variant == "falling":
        return 0.8 - 0.5 * competence
    return 0.5


class MockExposureEnv(gym.Env):
    """A student whose competence c in [0, 1) grows fastest at a known exposure.

    ## Description
    Each env step is one hold window of H student updates at exposure alpha. Per update the unlearnt
    room (1 - c) shrinks by exp(-rate * q(alpha)), q = exp(-(alpha - alpha*)^2 / (2 width^2)); the tracked
    loss (the probe NLL stand-in) is l = 0.5 + 1.5 (1 - c) - dip + noise. Built-in findings, with why:
    - **The best exposure rises as competence grows** (variant "rising", the default): alpha*(c) =
      0.3 + 0.5 c, from 0.3 to 0.8, where the paper's learned Beta drifts (mass around 0.7-0.8).
      "constant": alpha* = 0.5 (the paper's best fixed alpha); "falling": 0.8 - 0.5 c; "mix": two
      difficulty groups of equal weight with alpha* = 0.8 (easy) and 0.3 (hard), each with its own
      competence, so the best single alpha is a compromise that moves as the easy group saturates.
    - **Mismatch grows with alpha**: top-1 disagreement 0.05 + 0.3 alpha (+ noise); the distillation
      loss grows with alpha too, 0.1 + 0.6 alpha (1 - 0.5 c).
    - **A delayed-credit trap**: exposure above alpha* injects a transient dip into the tracked loss
      (the student briefly copies what the overexposed teacher shows): a sustained overexposure of
      +0.4 buys, within its window, a dip as large as the optimum's whole window progress at the same
      competence (`trap_strength` = 1), and 75% of any dip reverts within the next window
      (`trap_revert`), inside the paper's lookahead of L = 10 updates = 2 windows. Meanwhile q < 1
      slows real progress. A one-step progress reward (the window's progress term, and the paper's
      reward: lambda_gt 0.1, grounded level) therefore prefers overexposure, as the paper's
      immediate-reward controller was misled (52.22 vs OPSD 57.20); the default reward's grounded
      change at lambda_gt 30 does not (it peaks at alpha*), which is why it is the default. The
      revert, charged inside the lookahead, makes the discounted return prefer alpha* (its peak lies
      within alpha* + 0.15 from any exposure history; tests/test_mock_env.py checks it). The dip's
      feed saturates at +0.4 (`OVER_CAP`, the calibration point): the student can copy only so much
      of what it is shown. Without the cap a far-too-high exposure bought an ever larger dip whose
      unseen revert outweighed the lost progress, so from a history of overexposure the lookahead
      return peaked at alpha = 1. The paper's positive-drops-only progress never charges a loss
      *rise*, so part of the revert goes unseen (`signed_progress` charges it).
    - The pace: `rate` is set so that following alpha* exactly reaches `target_competence` (0.9) at T.
    Student confidence tracks competence (0.45 + 0.5 c); the grounded score is -3 (1 - c) - 0.05 (how
    far the current student is from the gold answer): both are state a controller can read.

    ## Action Space
    `Box(0, 1, (1,), float32)`: the exposure alpha of the next window. NaN, infinite or out-of-range
    actions raise ValueError (envs/spec.py states why). With `action="per_band"`: `Box(0, 1, (K,))`,
    one alpha per difficulty group, in the order of `env.bands` (mix: K = 2, `easy` with its optimum
    at 0.8 and `hard` at 0.3, so the best per-band action reaches both optima at once, which no single
    alpha can; the single-group variants: K = 1, `all`, the same dynamics as the global action). Each
    group learns at its own alpha, and each group's overexposure above its own optimum feeds the
    trap's dip, weighted by the group's unlearnt room.

    ## Observation Space
    `Box(6,)` float32, as in the real env:

    | index | name | range | meaning |
    |---|---|---|---|
    | 0 | progress | [0, 1] | updates done / T |
    | 1 | ema_alpha | [0, 1] | EMA of alpha (decay 0.9 per update) |
    | 2 | ema_loss | [-1, 1] | EMA of the distillation loss, squashed x / (1 + abs(x)) |
    | 3 | ema_mismatch | [0, 1] | EMA of the top-1 disagreement |
    | 4 | ema_probe_nll | [0, 4] | EMA of the tracked loss / its value at reset |
    | 5 | confidence | [0, 1] | EMA of the student's confidence |
    | 6.. | rollout_accuracy/<band> | [0, 1] | per-band action only: EMA of the group's competence |

    ## Rewards
    The window's discounted learning progress sum_j gamma^(j-1) max(0, l_(j-1) - l_j) (signed if
    `signed_progress`) plus lambda_gt (default 30) times the grounded term: by default
    (`grounded_change`) the rise of the window's discount-weighted mean grounded score over the
    previous window's (0 in the first), else that mean itself (the paper's form, with lambda_gt 0.1):
    `atesd.progress.window_reward` and `grounded_change` over the window's losses and scores.

    ## Starting State
    c = 0 (mix: both groups 0), no dip; `info` already holds `oracle_alpha` for the first decision.
    The EMAs start at fixed values, not at their first measurements: alpha, loss and mismatch at 0,
    the probe ratio at 1, confidence at 0.45 (its value at c = 0), the per-band competences at 0; so
    one window at alpha 1 gives ema_alpha 1 - 0.9^H (0.40951 at H = 5). The real env instead takes
    each statistic's first value as is (`atesd.stats.EMAStats`).

    ## Episode End
    `terminated` once T updates are done (T / H steps); never truncated.

    ## Arguments
    `gymnasium.make("atesd/MockExposure-v0", variant="mix", ...)`: any `MockConfig` field by keyword,
    or `cfg=MockConfig(...)`. `info["score"]` is the competence (mix: the groups' mean) and
    `info["oracle_alpha"]` the exposure that maximises real progress now (the oracle controller's
    target; it ignores the trap).
    """

    metadata = {"render_modes": []}
    scores_every_window = True  # info["score"] is measured at every step (a bank records each one)

    @property
    def reward_spec(self) -> RewardSpec:
        """The reward's H and gamma (and T, lambda_gt, signed): the one source controllers read."""
        return self.cfg.reward_spec

    def __init__(self, cfg: MockConfig | None = None, **overrides) -> None:
        self.cfg = spec.env_config(MockConfig, cfg, overrides, "MockExposureEnv")
        c = self.cfg
        self._groups = 2 if c.variant == "mix" else 1
        self.per_band = c.action == "per_band"
        self.bands: tuple[str, ...] = (MIX_BANDS if self._groups == 2 else ("all",)) if self.per_band else ()
        self.action_space = spec.action_space(len(self.bands) or 1)
        self.observation_space = spec.observation_space(self.bands)
        self.observation_names = spec.observation_names(self.bands)  # what each entry is, by name
        self.rate = -math.log(1 - c.target_competence) / c.total_steps  # oracle pace reaches the target at T
        self.rho = (1 - c.trap_revert) ** (1 / c.hold_steps)  # per-update decay of the dip
        window_drop = (LOSS_START - LOSS_FLOOR) * (1 - math.exp(-self.rate * c.hold_steps))
        accumulate = sum(self.rho**j for j in range(c.hold_steps))
        # injection per update per unit of overexposure and unit of room: +0.4 for a window buys
        # trap_strength x the optimum's window drop
        self.kappa = c.trap_strength * window_drop / (OVER_CAP * accumulate)

    # ---- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.rooms = [1.0] * self._groups
        self.dip = 0.0
        self.steps_done = 0
        self.grounded_prev: float | None = None  # the last window's mean grounded score (change form)
        self.loss_now = self._tracked(0.0)
        self.loss_start = self.loss_now
        self.ema = {"alpha": 0.0, "loss": 0.0, "mismatch": 0.0, "probe": 1.0, "confidence": 0.45}
        self.ema_bands = [0.0] * len(self.bands)
        return self._obs(), self._info(0.0, {}, [self.loss_now])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = hasattr(self, "steps_done")  # set by reset (or load_state_dict)
        spec.check_stepping(started, started and self.steps_done >= self.cfg.total_steps)
        if self.per_band:
            alphas = spec.check_alphas(action, len(self.bands))
        else:
            alphas = (spec.check_action(action),) * self._groups
        alpha = sum(alphas) / len(alphas)  # the mean exposure: what the shared statistics see
        c, H = self.cfg, self.cfg.hold_steps
        qs, over = self._quality(alphas)
        noise = self.np_random.normal(0.0, c.noise, H + 2) if c.noise > 0 else np.zeros(H + 2)
        losses, grounded = [self.loss_now], []
        for j in range(H):
            self.rooms = [room * math.exp(-self.rate * q) for room, q in zip(self.rooms, qs)]
            room = self._room()
            self.dip = self.dip * self.rho + self.kappa * room * over
            losses.append(self._tracked(float(noise[j])))
            grounded.append(-3.0 * room - 0.05)
        self.loss_now = losses[-1]
        self.steps_done += H
        terms = window_reward_floats(losses, grounded, c.gamma, c.lambda_gt, c.signed_progress)
        if c.grounded_change:
            terms = grounded_change(terms, self.grounded_prev, c.lambda_gt)
            self.grounded_prev = terms.pop("grounded_level")
        stats = self._update_ema(alpha, float(noise[H]), float(noise[H + 1]))
        info = self._info(list(alphas) if self.per_band else alpha, terms, losses) | stats
        return self._obs(), terms["reward"], self.steps_done >= c.total_steps, False, info

    def state_dict(self) -> dict:
        """The episode's state for a checkpoint (continue it with `load_state_dict` instead of `reset`)."""
        spec.check_started(hasattr(self, "steps_done"))
        return {
            "rooms": list(self.rooms), "dip": self.dip, "steps_done": self.steps_done,
            "loss_now": self.loss_now, "loss_start": self.loss_start, "ema": dict(self.ema),
            "ema_bands": list(self.ema_bands), "grounded_prev": self.grounded_prev,
            "np_random": self.np_random.bit_generator.state,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.rooms = [float(r) for r in state["rooms"]]
        self.dip, self.steps_done = float(state["dip"]), int(state["steps_done"])
        self.loss_now, self.loss_start = float(state["loss_now"]), float(state["loss_start"])
        self.ema = {k: float(v) for k, v in state["ema"].items()}
        self.ema_bands = [float(v) for v in state.get("ema_bands", [0.0] * len(self.bands))]
        prev = state.get("grounded_prev")
        self.grounded_prev = None if prev is None else float(prev)
        self.np_random.bit_generator.state = state["np_random"]

    # ---- dynamics -----------------------------------------------------------------------------
    def competence(self) -> float:
        return 1.0 - self._room()

    def _room(self) -> float:
        return sum(self.rooms) / len(self.rooms)  # equal group weights

    def _quality(self, alphas: tuple[float, ...]) -> tuple[list[float], float]:
        """q per group at its alpha, and the overexposure that feeds the trap: one alpha for all
        groups is over when above the oracle optimum; per-band alphas each above their group's own
        optimum, weighted by the group's share of the unlearnt room."""
        w2 = 2 * self.cfg.width**2
        optima = MIX_OPTIMA if self._groups == 2 else (optimum(self.cfg.variant, self.competence()),)
        qs = [math.exp(-((alpha - a) ** 2) / w2) for alpha, a in zip(alphas, optima)]
        if not self.per_band or self._groups == 1:
            return qs, min(max(0.0, alphas[0] - self.oracle_alpha()), OVER_CAP)
        total = sum(self.rooms)
        shares = [room / total if total > 0 else 1.0 / len(self.rooms) for room in self.rooms]
        return qs, sum(w * min(max(0.0, alpha - a), OVER_CAP) for w, alpha, a in zip(shares, alphas, optima))

    def oracle_alphas(self) -> list[float]:
        """The per-band action that maximises real progress now: each group's own optimum."""
        if self._groups == 1:
            return [optimum(self.cfg.variant, self.competence())]
        return list(MIX_OPTIMA)

    def oracle_alpha(self) -> float:
        """The exposure that maximises real progress now (the trap ignored)."""
        if self._groups == 1:
            return optimum(self.cfg.variant, self.competence())
        w2 = 2 * self.cfg.width**2
        gain = sum(room * np.exp(-((_GRID - a) ** 2) / w2) for room, a in zip(self.rooms, MIX_OPTIMA))
        return float(_GRID[int(np.argmax(gain))])

    def _tracked(self, noise: float) -> float:
        return LOSS_FLOOR + (LOSS_START - LOSS_FLOOR) * self._room() - self.dip + noise

    def _update_ema(self, alpha: float, noise_m: float, noise_c: float) -> dict[str, float]:
        """Window statistics and their EMAs (decay 0.9 per update, so 0.9^H per window)."""
        comp = self.competence()
        raw = {
            "alpha": alpha,
            "loss": 0.1 + 0.6 * alpha * (1 - 0.5 * comp),
            "mismatch": min(1.0, max(0.0, 0.05 + 0.3 * alpha + noise_m)),
            "probe": self.loss_now / self.loss_start,
            "confidence": min(1.0, max(0.0, 0.45 + 0.5 * comp + noise_c)),
        }
        keep = 0.9**self.cfg.hold_steps
        self.ema = {k: keep * self.ema[k] + (1 - keep) * v for k, v in raw.items()}
        if self.per_band:
            self.ema_bands = [
                keep * e + (1 - keep) * (1.0 - room) for e, room in zip(self.ema_bands, self.rooms)
            ]
        return {
            "stats/loss": raw["loss"],
            "stats/mismatch": raw["mismatch"],
            "stats/probe_nll": self.loss_now,
            "stats/confidence": raw["confidence"],
        }

    def _obs(self) -> np.ndarray:
        e = self.ema
        progress = self.steps_done / self.cfg.total_steps
        obs = spec.make_observation(
            progress, e["alpha"], e["loss"], e["mismatch"], e["probe"], e["confidence"]
        )
        return spec.with_bands(obs, self.ema_bands)

    def _info(self, alpha: float | list[float], terms: dict, losses: list[float]) -> dict:
        if self.per_band:
            alpha = alpha if isinstance(alpha, list) else [alpha] * len(self.bands)
        oracle = self.oracle_alphas() if self.per_band else self.oracle_alpha()
        bands = {"band_accuracy": [1.0 - room for room in self.rooms]} if self.per_band else {}
        return bands | {
            "alpha": alpha,
            "reward/progress": terms.get("progress", 0.0),
            "reward/grounded": terms.get("grounded", 0.0),
            "reward/total": terms.get("reward", 0.0),
            "stats/loss": math.nan,
            "stats/mismatch": math.nan,
            "stats/probe_nll": self.loss_now,
            "stats/confidence": math.nan,
            "losses": losses,
            "steps_done": self.steps_done,
            "score": self.competence(),
            "oracle_alpha": oracle,
            "dip": self.dip,
        }
