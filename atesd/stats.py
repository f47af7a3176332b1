"""Typed statistics of a distillation step and a hold window, and the EMAs of the training state.

Plain containers and running averages; the engine fills them, envs and loggers read them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

STATE_KEYS = ("alpha", "loss", "mismatch", "probe_nll", "confidence")


@dataclass(frozen=True)
class StepStats:
    """What one student update measured (times in seconds)."""

    step: int
    alpha: float
    loss: float
    skipped: bool
    grad_norm: float
    num_tokens: int
    mismatch_top1: float
    divergence_mean: float
    divergence_p90: float
    divergence_p99: float
    confidence: float
    sampled_logprob: float
    grounded: float
    probe_nll: float
    rollout_accuracy: float
    rollout_s: float
    teacher_s: float
    update_s: float
    probe_s: float
    total_s: float
    band_accuracy: dict[str, float] = field(default_factory=dict)  # per-band alpha only: band -> solved

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.total_s if self.total_s > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        """Namespaced metric keys (student/*, time/*)."""
        d = asdict(self)
        bands = {f"student/rollout_accuracy/{b}": v for b, v in d.pop("band_accuracy").items()}
        times = {f"time/{k}": d.pop(k) for k in ("rollout_s", "teacher_s", "update_s", "probe_s", "total_s")}
        out = {f"student/{k}": v for k, v in d.items()}
        out["time/tokens_per_s"] = self.tokens_per_s
        return out | bands | times


@dataclass(frozen=True)
class WindowStats:
    """A hold window: alpha held for len(steps) updates (per band: the mean of the bands' alphas)."""

    alpha: float
    steps: list[StepStats]
    probe_before: float

    @property
    def losses(self) -> list[float]:
        """Tracked loss l_0..l_H: probe NLL before the window and after each update."""
        return [self.probe_before] + [s.probe_nll for s in self.steps]

    @property
    def grounded(self) -> list[float]:
        return [s.grounded for s in self.steps]

    def band_accuracy(self) -> dict[str, float]:
        """Per band, the mean rollout accuracy over the window's updates that drew the band."""
        bands: dict[str, list[float]] = {}
        for s in self.steps:
            for band, value in s.band_accuracy.items():
                bands.setdefault(band, []).append(value)
        return {band: float(np.mean(values)) for band, values in bands.items()}

    def mean(self, name: str) -> float:
        vals = [getattr(s, name) for s in self.steps]
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan


@dataclass
class EMAStats:
    """Exponential moving averages of the training-state statistics (first value taken as is)."""

    decay: float
    values: dict[str, float] = field(default_factory=dict)

    def update(self, step: StepStats) -> None:
        if step.skipped:
            return  # a skipped (non-finite) update never moves the training state
        fresh = {
            "alpha": step.alpha,
            "loss": step.loss,
            "mismatch": step.mismatch_top1,
            "probe_nll": step.probe_nll,
            "confidence": step.confidence,
        }
        for key, value in fresh.items():
            if not math.isfinite(value):
                continue
            old = self.values.get(key)
            self.values[key] = value if old is None else self.decay * old + (1 - self.decay) * value

    def state_dict(self) -> dict:
        return {"decay": self.decay, "values": dict(self.values)}

    def load_state_dict(self, state: dict) -> None:
        """The averages of `state`; the decay stays this one's (the config's: a state saved under
        another `engine.stats_decay` had replaced it, and the run's statistics moved at the old rate)."""
        self.values = dict(state["values"])
