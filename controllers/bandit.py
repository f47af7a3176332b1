"""Non-stationary multi-armed bandits over a fixed grid of exposures (arms), ignoring the observation.

Owns per-arm reward statistics and its own generator. Two kinds, both built for drifting rewards (the
best exposure moves as the student learns): discounted Gaussian Thompson sampling (every credited pull
decays all arms' statistics by `discount`: a pull dropped uncredited at an episode's end decays none)
and sliding-window UCB (Garivier & Moulines 2011, "On upper-confidence bound policies for switching
bandit problems": statistics over the last `window` pulls).
An arm is credited with the decision's delayed return (`controllers.credit`, the same reward modes
as beta_reinforce; by default the discounted, grounded return over the next L / H windows), once its
lookahead has passed; with `lookahead_steps = hold_steps` it is the env's step reward. Learning
progress shrinks as the student saturates, so an arm last pulled early would look better than one
pulled late for no reason of its own: each return is therefore detrended, minus an EMA of the run's
returns known when the arm was pulled (its own window's return never in it; `trend_decay`; 1 keeps
the run's first return as a constant baseline, which changes nothing; `reset` starts a new trend, as
progress is large again early in a new run).
The baseline follows the arms pulled, so detrending needs a memory that forgets (discount < 1, a
window shorter than the run): with an endless memory the arm pulled most drifts to 0 while the rest
keep old negative means, and the bandit locks in; set trend_decay = 1 there.
Rewards are in any units: exploration is measured in a reward scale sigma,
the pooled within-arm std of the rewards in the bandit's memory (discounted for Thompson, the window
for UCB), so one config works on the mock env and on the real env's ~1e-2 rewards, and decisions do
not change when rewards are rescaled. Arms never pulled (Thompson) or absent from the window (UCB)
are pulled first, in grid order (an arm whose return is still pending counts as tried); while the
reward scale is 0 (a run's first returns, credited 0), tied arms are drawn at random. An observed
action is credited to the nearest arm. Knows nothing of states or the engine.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import gymnasium as gym
import numpy as np

from controllers.base import PerBand, action_size, as_action, check_transition, whole
from controllers.credit import PendingDecisions, RewardMode, credit_checks

BanditKind = Literal["thompson", "ucb"]


@dataclass(frozen=True)
class BanditConfig:
    kind: BanditKind = field(
        default="thompson", metadata={"help": "thompson (discounted Gaussian) or ucb (sliding window)"}
    )
    arms: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0),
        metadata={"help": "the exposures to choose from, distinct, in [0, 1]"},
    )
    discount: float = field(
        default=0.95, metadata={"help": "thompson: per-credit decay of every arm's statistics, in (0, 1]"}
    )
    window: int = field(
        default=20, metadata={"help": "ucb: how many most recent pulls the statistics use, >= 1"}
    )
    ucb_c: float = field(
        default=0.5, metadata={"help": "ucb: exploration bonus coefficient, in reward scales sigma, >= 0"}
    )
    prior_mean: float = field(
        default=0.0, metadata={"help": "thompson: prior arm mean, in reward scales above the mean reward"}
    )
    prior_var: float = field(
        default=1.0, metadata={"help": "thompson: prior arm variance, in squared reward scales, > 0"}
    )
    reward_mode: RewardMode = field(
        default="discounted_grounded",
        metadata={"help": "arm reward: immediate | short_delayed | discounted | discounted_grounded"},
    )
    hold_steps: int = field(
        default=5,
        metadata={"help": "updates per env step, H: taken from the env; a different value is refused"},
    )
    lookahead_steps: int = field(default=10, metadata={"help": "lookahead L in updates, a multiple of H"})
    gamma: float = field(
        default=0.9,
        metadata={"help": "per-update discount: taken from the env; a different value is refused"},
    )
    finish_truncated: Literal["drop", "truncate"] = field(
        default="drop", metadata={"help": "decisions cut by the episode end: drop, or use the truncated sum"}
    )
    trend_decay: float = field(
        default=0.8,
        metadata={"help": "decay of the EMA of returns subtracted from each return, in (0, 1] (1 = off)"},
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the controller's generator (reset(seed) reseeds from both)"}
    )

    def __post_init__(self) -> None:
        credit = credit_checks(
            self.reward_mode, self.hold_steps, self.lookahead_steps, self.gamma, self.finish_truncated
        )
        for name, ok, rule in credit:
            if not ok:
                raise ValueError(f"BanditConfig.{name} must be {rule}, got {getattr(self, name)!r}")
        if self.kind not in get_args(BanditKind):
            raise ValueError(f"BanditConfig.kind must be one of {get_args(BanditKind)}, got {self.kind!r}")
        if len(self.arms) < 1 or len(set(self.arms)) != len(self.arms):
            raise ValueError(
                f"BanditConfig.arms must be a non-empty tuple of distinct alphas, got {self.arms}"
            )
        if not all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in self.arms):
            raise ValueError(f"BanditConfig.arms must all be in [0, 1], got {self.arms}")
        if not 0.0 < self.trend_decay <= 1.0:
            raise ValueError(f"BanditConfig.trend_decay must be in (0, 1], got {self.trend_decay}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"BanditConfig.discount must be in (0, 1], got {self.discount}")
        if not (whole(self.window) and self.window >= 1):
            raise ValueError(f"BanditConfig.window must be a whole number >= 1, got {self.window}")
        if not (math.isfinite(self.ucb_c) and self.ucb_c >= 0.0):
            raise ValueError(f"BanditConfig.ucb_c must be finite and >= 0, got {self.ucb_c}")
        if not math.isfinite(self.prior_mean):
            raise ValueError(f"BanditConfig.prior_mean must be finite, got {self.prior_mean}")
        if not (math.isfinite(self.prior_var) and self.prior_var > 0.0):
            raise ValueError(f"BanditConfig.prior_var must be finite and > 0, got {self.prior_var}")
        if not (whole(self.seed) and self.seed >= 0):
            raise ValueError(f"BanditConfig.seed must be a whole number >= 0, got {self.seed}")


def reward_scale(counts: np.ndarray, sums: np.ndarray, sq_sums: np.ndarray) -> float:
    """The noise scale of remembered rewards: the pooled within-arm standard deviation.

    Per-arm (weighted) counts n_a, sums s_a and sums of squares q_a give
    sigma^2 = sum_a (q_a - s_a^2 / n_a) / sum_a n_a. Before any arm has two distinct rewards this is 0,
    and the std of all remembered rewards (between-arm spread included) stands in for it.
    Scale-equivariant: multiplying every reward by k > 0 multiplies sigma by k.
    """
    total = float(counts.sum())
    if total <= 0.0:
        return 0.0
    tried = counts > 0
    within = float(np.sum(sq_sums[tried] - sums[tried] ** 2 / counts[tried]))
    if within <= 1e-12 * float(sq_sums.sum()):  # zero up to rounding: no arm has two distinct rewards yet
        within = float(sq_sums.sum()) - float(sums.sum()) ** 2 / total
    return math.sqrt(max(within, 0.0) / total)


def thompson_posterior(
    counts: np.ndarray, sums: np.ndarray, sq_sums: np.ndarray, prior_mean: float, prior_var: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian posterior of each arm's mean from discounted statistics, in the memory's reward scale.

    With sigma = `reward_scale(...)` and r_bar the mean remembered reward, an arm's prior is
    N(r_bar + prior_mean * sigma, prior_var * sigma^2) and its noise N(0, sigma^2); with precision
    p_a = 1 / prior_var + n_a: posterior mean = (mu0 / prior_var + s_a) / p_a, std = sigma / sqrt(p_a).

    Returns:
        (posterior means (K,), posterior stds (K,), sigma).
    """
    sigma = reward_scale(counts, sums, sq_sums)
    total = float(counts.sum())
    mu0 = (float(sums.sum()) / total if total > 0 else 0.0) + prior_mean * sigma
    precision = 1.0 / prior_var + counts  # (K,)
    return (mu0 / prior_var + sums) / precision, sigma / np.sqrt(precision), sigma


def window_ucb(
    arms: np.ndarray, rewards: np.ndarray, num_arms: int, t: int, window: int, c: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sliding-window UCB over the last pulls `arms` (int, (W,)) with `rewards` ((W,)).

    index_a = mean_a + c * sigma * sqrt(log(min(t, window)) / n_a), sigma = `reward_scale` of the window;
    an arm absent from the window has mean NaN and index +inf.

    Returns:
        (indices (K,), window means (K,), sigma).
    """
    counts = np.bincount(arms, minlength=num_arms).astype(np.float64)  # (K,)
    sums = np.bincount(arms, weights=rewards, minlength=num_arms)  # (K,)
    sq_sums = np.bincount(arms, weights=rewards**2, minlength=num_arms)  # (K,)
    sigma = reward_scale(counts, sums, sq_sums)
    present = counts > 0
    means = np.full(num_arms, np.nan)
    means[present] = sums[present] / counts[present]
    index = np.full(num_arms, np.inf)
    bonus = c * sigma * np.sqrt(math.log(max(min(t, window), 1)) / counts[present])
    index[present] = means[present] + bonus
    return index, means, sigma


class BanditController:
    """Discounted Thompson sampling or sliding-window UCB over `cfg.arms`."""

    def __new__(
        cls,
        observation_space: gym.spaces.Box | None = None,
        action_space: gym.spaces.Box | None = None,
        cfg: BanditConfig | None = None,
    ):
        """Under a per-band action (K alphas): K independent copies, one per band (`PerBand`). (The
        spaces default to None for copy and pickle, which call `__new__(cls)` alone.)"""
        if action_space is not None and action_size(action_space) > 1:
            return PerBand(cls, observation_space, action_space, cfg or BanditConfig())
        return super().__new__(cls)

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: BanditConfig | None = None
    ) -> None:
        self.cfg = cfg or BanditConfig()
        low, high = float(action_space.low[0]), float(action_space.high[0])
        if not all(low <= a <= high for a in self.cfg.arms):
            raise ValueError(
                f"BanditConfig.arms {self.cfg.arms} lie outside the action space [{low}, {high}]"
            )
        self.action_space = action_space
        self.arms = np.asarray(self.cfg.arms, dtype=np.float64)  # (K,)
        k = len(self.arms)
        self.rng = np.random.default_rng(self.cfg.seed)
        # Both memories are kept whatever the kind (a few floats); `choose_arm` reads its kind's one.
        self.pulls = np.zeros(k, dtype=np.int64)  # all-time pulls per arm
        self.counts = np.zeros(k)  # discounted pull counts, reward sums, squared-reward sums (thompson)
        self.sums = np.zeros(k)
        self.sq_sums = np.zeros(k)
        self.window: deque[tuple[int, float]] = deque(
            maxlen=self.cfg.window
        )  # last (arm, reward) pairs (ucb)
        self.credit = PendingDecisions.of(self.cfg)  # pulls whose return is not known yet {"arm"}
        self.trend: float | None = None  # EMA of the returns credited so far

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """A new run: drops pending pulls and the return trend (a run's learning curve starts afresh),
        reseeds the generator from (cfg.seed, seed) when `seed` is given (from `seed` alone it drew the
        env's own stream); arm statistics persist (they are learned)."""
        self.credit.clear()
        self.trend = None
        if seed is not None:
            self.rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, seed]))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The alpha of the chosen arm (the observation is ignored)."""
        return as_action(self.arms[self.choose_arm()], self.action_space)

    def choose_arm(self) -> int:
        """Index of the next arm: untried arms first, else a Thompson draw or the largest UCB index."""
        if self.cfg.kind == "thompson":
            if (self.pulls == 0).any():
                return int(np.flatnonzero(self.pulls == 0)[0])
            means, stds, sigma = thompson_posterior(
                self.counts, self.sums, self.sq_sums, self.cfg.prior_mean, self.cfg.prior_var
            )
            return self._best(means + stds * self.rng.standard_normal(len(self.arms)), sigma)
        index, _, sigma = self._window_ucb()
        # an arm absent from the window has index +inf and is pulled first, unless its return is pending
        waiting = [int(p["arm"]) for p in self.credit.pending]
        index[[a for a in waiting if index[a] == np.inf]] = -np.inf
        return self._best(index, sigma)

    def _best(self, values: np.ndarray, sigma: float) -> int:
        """The arm of the largest value, the first in grid order on a tie; while the reward scale
        `sigma` is still 0, a random one of the tied arms. A run's first pulls are credited 0 (no trend
        yet), so with a long lookahead every tried arm's mean is 0 and neither Thompson's spread nor
        UCB's bonus exists: the first arm would be pulled until some return differed."""
        best = np.flatnonzero(values == values.max())
        if sigma > 0 or len(best) == 1 or values.max() == np.inf:  # untried arms: in grid order
            return int(best[0])
        return int(self.rng.choice(best))

    def observe(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> dict[str, float]:
        """Books the pull of the arm nearest to `action`; credits every pull whose lookahead has passed
        with its return; reports the arm, reward scale and arm means."""
        check_transition(obs, reward, next_obs)
        arm = int(np.argmin(np.abs(self.arms - float(np.asarray(action).reshape(-1)[0]))))
        self.pulls[arm] += 1
        # the baseline is the trend when the pull was made: credited later, the trend would already
        # hold returns that its own window moved (a baseline that depends on the action)
        for pull, ret in self.credit.push(
            {"arm": arm, "baseline": self.trend}, info, terminated or truncated, reward
        ):
            self._credit(int(pull["arm"]), ret, pull.get("baseline"))
        if self.cfg.kind == "thompson":
            means, _, sigma = thompson_posterior(
                self.counts, self.sums, self.sq_sums, self.cfg.prior_mean, self.cfg.prior_var
            )
            means = np.where(self.pulls > 0, means, np.nan)
        else:
            _, means, sigma = self._window_ucb()
        metrics = {"controller/arm": float(arm), "controller/reward_scale": sigma}
        known = {f"controller/arm_mean_{i}": float(m) for i, m in enumerate(means) if math.isfinite(m)}
        return metrics | known

    def _credit(self, arm: int, ret: float, baseline: float | None) -> None:
        """Credit one return to `arm`, less the `baseline` (the return trend when the pull was made; a
        run's first pulls, made before any return was known, are credited 0), then move the trend
        (thompson: decay all statistics; ucb: slide the window)."""
        reward = ret - (ret if baseline is None else baseline)
        d = self.cfg.trend_decay
        self.trend = ret if self.trend is None else d * self.trend + (1.0 - d) * ret
        self.counts *= self.cfg.discount
        self.sums *= self.cfg.discount
        self.sq_sums *= self.cfg.discount
        self.counts[arm] += 1.0
        self.sums[arm] += reward
        self.sq_sums[arm] += reward**2
        self.window.append((arm, reward))

    def _window_ucb(self) -> tuple[np.ndarray, np.ndarray, float]:
        arms = np.array([a for a, _ in self.window], dtype=np.int64)
        rewards = np.array([r for _, r in self.window], dtype=np.float64)
        t = int(self.pulls.sum())
        return window_ucb(arms, rewards, len(self.arms), t, self.cfg.window, self.cfg.ucb_c)

    def pop_credits(self) -> list[dict[str, float]]:
        """No per-decision credit to report (returns are not rebuilt here)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "pulls": self.pulls.copy(),
            "counts": self.counts.copy(),
            "sums": self.sums.copy(),
            "sq_sums": self.sq_sums.copy(),
            "window_arms": np.array([a for a, _ in self.window], dtype=np.int64),
            "window_rewards": np.array([r for _, r in self.window], dtype=np.float64),
            "pending": self.credit.state_dict(),
            "trend": self.trend,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = len(self.arms)
        for name in ("pulls", "counts", "sums", "sq_sums"):
            if np.shape(state[name]) != (k,):
                raise ValueError(f"state '{name}' has shape {np.shape(state[name])}, expected ({k},)")
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.pulls = np.array(state["pulls"], dtype=np.int64)
        self.counts = np.array(state["counts"], dtype=np.float64)
        self.sums = np.array(state["sums"], dtype=np.float64)
        self.sq_sums = np.array(state["sq_sums"], dtype=np.float64)
        pairs = zip(np.asarray(state["window_arms"]).tolist(), np.asarray(state["window_rewards"]).tolist())
        self.window = deque(pairs, maxlen=self.cfg.window)
        self.credit.load_state_dict(state["pending"])
        self.trend = None if state["trend"] is None else float(state["trend"])
