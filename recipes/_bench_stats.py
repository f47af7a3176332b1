"""The bench's statistics over unit records: a unit's score under `--score` (final, best, tail:K), each
episode's, and per (env, controller) the mean, 95% CI, Welch p-values against the baseline, regret
against the oracle and the degradation test over episodes; the mean curves with their CIs. It knows
nothing of envs, controllers or files: it reads the records that `run_unit` returns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from atesd.significance import finite_values, is_constant, mean_ci, paired_exact, paired_p, welch_p


def parse_score(text: str) -> tuple[str, int]:
    """`final`, `best` or `tail:K` (K >= 1) -> (kind, K); ValueError naming the choices otherwise."""
    kind, _, k = text.strip().partition(":")
    if kind in ("final", "best") and not k:
        return kind, 1
    if kind == "tail" and k.isdigit() and int(k) >= 1:
        return kind, int(k)
    raise ValueError(f"--score must be final, best or tail:K (K >= 1), got {text!r}")


def unit_score(unit: dict, score: str) -> float:
    """A unit's score under `score`: its final score, the best of its evaluations (OPSD's best
    checkpoint), or the mean of its last K evaluations (`unit["evals"]`: the last episode's
    evaluations, the final one included; on the mock every window's competence)."""
    evals = unit.get("evals")
    if evals is None:  # a unit recorded before `evals` existed: its curve's windows
        evals = unit["curve"][1:]
    return _scored(evals, unit["final"], score)


def _scored(evals: list, final: float, score: str) -> float:
    """One episode's score under `score` from its evaluations and final score (see `unit_score`)."""
    kind, k = parse_score(score)
    if kind == "final":
        return final
    evals = [v for v in evals if v is not None and math.isfinite(v)]  # an evaluation without a score
    if not evals:
        return final
    return float(max(evals)) if kind == "best" else float(np.mean(evals[-k:]))


def run_scores(unit: dict, score: str) -> list[float]:
    """Each episode's score under `score` (several episodes a unit, learned state kept): [] for a unit
    of one episode, or one recorded before each episode's evaluations were (`run_evals`) under a score
    other than final (its first run's score is then unknown: NaN, not the final score beside another)."""
    runs = unit.get("runs") or []
    if len(runs) < 2:
        return []
    if parse_score(score)[0] == "final":
        return list(runs)
    run_evals = unit.get("run_evals") or []
    if len(run_evals) != len(runs):
        return [math.nan] * len(runs)
    return [_scored(evals, final, score) for evals, final in zip(run_evals, runs, strict=True)]


def summarise(
    results: list[dict], baseline: str, score: str = "final"
) -> dict[str, dict[str, dict[str, Any]]]:
    """summary[env][controller]: n, mean, sd, 95% CI, Welch p vs `baseline` (two-sided, and one-sided
    `p_greater` for mean above the baseline's; NaN for itself), regret vs
    the oracle (mock env, oracle in the run; else NaN), mean alpha of the last episode, seconds per unit
    and the per-seed scores (`finals`, under `score`: see `unit_score`). Controllers keep their order
    of first appearance."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in results:
        groups.setdefault(r["env"], {}).setdefault(r["controller"], []).append(r)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for env, by_ctl in groups.items():
        finals = {
            ctl: [unit_score(r, score) for r in sorted(rs, key=lambda r: r["seed"])]
            for ctl, rs in by_ctl.items()
        }
        oracle = mean_ci(finals["oracle"])[0] if env == "mock" and "oracle" in finals else math.nan
        summary[env] = {}
        for ctl, rs in by_ctl.items():
            x = finite_values(finals[ctl])
            mean, low, high = mean_ci(x)
            ordered = sorted(rs, key=lambda r: r["seed"])
            scored = [run_scores(r, score) or [math.nan] for r in ordered]  # per seed, per episode
            if any(len(r.get("runs") or []) > 1 and math.isnan(s[0]) for r, s in zip(ordered, scored)):
                # a unit recorded before each episode's evaluations were (a resumed older bench): run 1
                # over the other seeds only would sit beside a mean over all of them, unsaid
                scored = [[math.nan] for _ in ordered]
            first, last = [s[0] for s in scored], [s[-1] for s in scored]
            tested = ctl != baseline and baseline in finals
            base = finite_values(finals[baseline]) if tested else np.array([])
            constant = tested and len(x) > 1 and len(base) > 1 and is_constant(x) and is_constant(base)
            summary[env][ctl] = {
                "n": len(x),
                "mean": mean,
                "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "p_value": welch_p(x, finals[baseline]) if tested else math.nan,
                "p_greater": welch_p(x, finals[baseline], "greater") if tested else math.nan,
                # both constant over seeds (fixed exposures, the oracle on the mock): no test, and the
                # difference of the means is exact
                "p_note": "both constant" if constant else "",
                "regret": oracle - mean,
                # several episodes a unit (learned state kept): the first's score (under `score`), and the
                # paired one-sided p that the last episode ends below the first (the learner degrades)
                "run1_mean": float(np.mean(finite_values(first))) if np.isfinite(first).any() else math.nan,
                "p_worse": paired_p(last, first, "less"),
                # every seed moved by the same from run 1 (a deterministic controller): no test, exact
                "p_worse_note": "constant difference" if paired_exact(last, first) else "",
                "alpha_mean": float(np.mean([r["alpha_mean"] for r in rs])),
                "seconds": float(np.mean([r["seconds"] for r in rs])),
                "seeds": [r["seed"] for r in sorted(rs, key=lambda r: r["seed"])],
                "finals": finals[ctl],
                "scored_by": "return" if any(r.get("scored_by") == "return" for r in rs) else "score",
            }
    return summary


def curve_bands(results: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """bands[env][controller]: per window of the last episode, from window 0 (its start) on, the mean
    score over seeds and its 95% CI (NaN where no seed has a finite score: the real env between
    evaluations)."""
    groups: dict[str, dict[str, list[list[float]]]] = {}
    for r in results:
        groups.setdefault(r["env"], {}).setdefault(r["controller"], []).append(r["curve"])
    bands: dict[str, dict[str, dict[str, list[float]]]] = {}
    for env, by_ctl in groups.items():
        bands[env] = {}
        for ctl, curves in by_ctl.items():
            width = max(len(c) for c in curves)
            grid = np.full((len(curves), width), np.nan)  # (seeds, windows)
            for i, c in enumerate(curves):
                grid[i, : len(c)] = c
            cols = [mean_ci(grid[:, w]) for w in range(width)]
            bands[env][ctl] = {key: [c[i] for c in cols] for i, key in enumerate(("mean", "low", "high"))}
    return bands
