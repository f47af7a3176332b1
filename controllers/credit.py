"""Delayed credit shared by the controllers: a decision's return over the windows that follow it.

docs/METHOD.md §3. A decision (one alpha held for a window of H updates) is credited once its
lookahead of K = L / H windows has been observed; until then it is *pending*. Reads only the
`envs.spec` info keys of each step (`losses`, `reward/progress`, `reward/total`), so it knows nothing
of engines or models. The reward modes are the paper's ablations:

| mode | return of a decision |
|---|---|
| immediate | max(0, l_0 - l_1): the first update's drop of its window |
| short_delayed | its window's discounted progress |
| discounted | G_lp = sum_k d^k progress_k over K windows, d = gamma^H |
| discounted_grounded | G_lp + lambda_gt * G_gt, G_gt the discount-weighted mean grounded score |
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np

from atesd.progress import lookahead_returns
from controllers.base import whole

RewardMode = Literal["immediate", "short_delayed", "discounted", "discounted_grounded"]
REWARD_MODES = ("immediate", "short_delayed", "discounted", "discounted_grounded")


def credit_checks(
    reward_mode: str, hold_steps: int, lookahead_steps: int, gamma: float, finish_truncated: str
) -> tuple[tuple[str, bool, str], ...]:
    """(field, ok, rule) checks of the credit fields, for a config's `__post_init__`."""
    return (
        ("reward_mode", reward_mode in REWARD_MODES, f"one of {REWARD_MODES}"),
        ("hold_steps", whole(hold_steps) and hold_steps >= 1, "a whole number >= 1"),
        ("lookahead_steps",
         whole(lookahead_steps) and lookahead_steps >= hold_steps > 0 and lookahead_steps % hold_steps == 0,
         "a positive multiple of hold_steps"),
        ("gamma", 0 < gamma <= 1, "in (0, 1]"),
        ("finish_truncated", finish_truncated in ("drop", "truncate"), "drop or truncate"),
    )  # fmt: skip


def lookahead_windows(reward_mode: str, hold_steps: int, lookahead_steps: int) -> int:
    """K: windows a decision waits for (1 for the immediate and short-delayed modes)."""
    return lookahead_steps // hold_steps if reward_mode in ("discounted", "discounted_grounded") else 1


REFINING_KEYS = ("losses", "reward/progress", "reward/total")  # optional: the step reward is enough


def window_terms(info: dict, hold_steps: int, reward: float) -> list[float]:
    """[first-update drop, progress, total - progress] of one env step.

    From the info keys `REFINING_KEYS` where the env gives them (this package's envs: the tracked
    losses and the reward's terms, which the reward modes need apart); from the step `reward` alone
    where it gives none of them (any env with the exposure action space: every mode then credits
    the step reward, [reward, reward, 0]). ValueError when they are malformed, given in part, or
    disagree with the step reward.
    """
    present = [k for k in REFINING_KEYS if k in info]
    if not present:
        if not math.isfinite(float(reward)):
            raise ValueError(f"the step reward must be finite, got {reward}")
        return [float(reward), float(reward), 0.0]
    if len(present) != len(REFINING_KEYS):
        missing = [k for k in REFINING_KEYS if k not in info]
        raise ValueError(
            f"the env's info has {present} but not {missing}: give all of {list(REFINING_KEYS)} or none"
            " (then the step reward is credited)"
        )
    losses = np.asarray(info["losses"], dtype=np.float64)  # (H + 1,)
    if losses.shape != (hold_steps + 1,):
        raise ValueError(
            f"info['losses'] has {losses.size} values (a window of {losses.size - 1} updates), but the "
            f"controller's hold_steps is {hold_steps} (hold_steps + 1 = {hold_steps + 1} expected): give the "
            "controller the env's H (an env without reward_spec leaves the controller's own)"
        )
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"info['losses'] must be finite, got {losses.tolist()}")
    progress, total = float(info["reward/progress"]), float(info["reward/total"])
    if not (math.isfinite(progress) and math.isfinite(total)):
        raise ValueError(
            f"info['reward/progress'] and info['reward/total'] must be finite, got {progress}, {total}"
        )
    if abs(total - float(reward)) > 1e-6 * (1.0 + abs(total)):
        raise ValueError(
            f"the env's info['reward/total'] = {total} disagrees with its step reward {reward} (a reward "
            "wrapper?): the credit would learn from another reward than the env's"
        )
    grounded = info.get("reward/grounded")
    if grounded is not None and not math.isfinite(float(grounded)):
        # a window that measured no grounded score (every update skipped): no g to average, not g = 0
        return [max(0.0, float(losses[0] - losses[1])), progress, math.nan]
    return [max(0.0, float(losses[0] - losses[1])), progress, total - progress]


def decision_return(windows: list[list[float]], reward_mode: str, window_discount: float) -> float:
    """The return of one decision from its windows' [drop, progress, total - progress] (1..K of them).

    immediate: max(0, l_0 - l_1) of its window; short_delayed: its window's progress; discounted:
    G_lp = sum_k d^k progress_k (`lookahead_returns`); discounted_grounded: G_lp + lambda_gt * G_gt,
    where lambda_gt * g_k = total_k - progress_k is read from the env (no lambda_gt here) and
    G_gt = sum_k d^k g_k / sum_k d^k is the discount-weighted mean over the windows, which equals the
    paper's mean over the L updates because each window's g is the env's discount-weighted mean.
    A window without a grounded score (NaN: its `reward/grounded` was not finite) is left out of that
    mean, as `atesd.progress.discounted_mean` leaves out an update without one; none: G_gt = 0.
    """
    arr = np.asarray(windows, dtype=np.float64)  # (n_windows, 3)
    if reward_mode == "immediate":
        return float(arr[0, 0])
    if reward_mode == "short_delayed":
        return float(arr[0, 1])
    d, n = window_discount, len(arr)
    g_lp = float(lookahead_returns(arr[:, 1], d, n)[0][0])
    if reward_mode == "discounted":
        return g_lp
    g = arr[:, 2]
    finite = np.isfinite(g)
    if finite.all():
        return g_lp + float(lookahead_returns(g, d, n)[0][0]) / float(np.sum(d ** np.arange(n)))
    if not finite.any():
        return g_lp
    w = d ** np.arange(n)
    return g_lp + float(np.sum(w[finite] * g[finite]) / np.sum(w[finite]))


class PendingDecisions:
    """Decisions waiting for their lookahead; `push` returns the ones whose return became known.

    A pending decision is a dict of the caller's fields plus `windows`; it is plain data (numpy
    arrays, floats), so `state_dict` round-trips through `atesd.state.save_state`.
    """

    def __init__(
        self,
        reward_mode: str,
        hold_steps: int,
        lookahead_steps: int,
        gamma: float,
        finish_truncated: str = "drop",
    ) -> None:
        self.reward_mode, self.hold_steps, self.finish_truncated = reward_mode, hold_steps, finish_truncated
        self.k = lookahead_windows(reward_mode, hold_steps, lookahead_steps)
        self.window_discount = gamma**hold_steps
        self.pending: list[dict[str, Any]] = []

    @classmethod
    def of(cls, cfg: Any) -> PendingDecisions:
        """From a config with the fields reward_mode, hold_steps, lookahead_steps, gamma, finish_truncated."""
        return cls(cfg.reward_mode, cfg.hold_steps, cfg.lookahead_steps, cfg.gamma, cfg.finish_truncated)

    def push(
        self, decision: dict[str, Any], info: dict, episode_end: bool, reward: float
    ) -> list[tuple[dict[str, Any], float]]:
        """Add `decision` (made before this step), credit this step's window (`window_terms` of its
        info and step `reward`) to every pending decision, and return (decision, return) for those
        finished: K windows seen, or cut by the episode end when `finish_truncated` is "truncate"
        ("drop" discards them)."""
        window = window_terms(info, self.hold_steps, reward)
        self.pending.append({**decision, "windows": []})
        for pending in self.pending:
            pending["windows"].append(window)
        done = [p for p in self.pending if len(p["windows"]) >= self.k]
        self.pending = [p for p in self.pending if len(p["windows"]) < self.k]
        if episode_end:
            done += self.pending if self.finish_truncated == "truncate" else []
            self.pending = []
        return [
            ({k: v for k, v in p.items() if k != "windows"},
             decision_return(p["windows"], self.reward_mode, self.window_discount))
            for p in done
        ]  # fmt: skip

    def clear(self) -> None:
        self.pending = []

    def state_dict(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pending)

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.pending = copy.deepcopy(state)
