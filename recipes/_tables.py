"""The benchmark's result table: rows with CIs and p-values, printed with rich (plain lines off a
terminal), written as CSV; JSON-safe copies of the summary."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_FIELDS = (
    "n", "mean", "sd", "ci_low", "ci_high", "p_value", "p_greater", "regret", "alpha_mean", "seconds",
    "run1_mean", "p_worse", "p_note", "p_worse_note",
)  # fmt: skip


SCORE_WORDS = {
    "final": "final score of the last episode",
    "best": "best evaluation of the last episode",
    "tail": "mean of the last {k} evaluations (all, where a run has fewer) of the last episode",
}


def score_words(score: str) -> str:
    kind, _, k = score.partition(":")
    return SCORE_WORDS.get(kind, score).format(k=k)


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _fmt_p(value: float) -> str:
    """A p-value in two significant digits, more where two would round it across 0.05 (0.0496 was
    printed `0.05`, as 0.0504 was)."""
    if value is None or not math.isfinite(value):
        return "-"
    for digits in (2, 3, 4, 6):
        text = format(value, f".{digits}g")
        if (float(text) < 0.05) == (value < 0.05):
            return text
    return repr(value)


def runs_shown(summary: dict) -> bool:
    """Units ran several episodes: the table shows the first's mean and the degradation test too."""
    return any(
        math.isfinite(s.get("run1_mean", math.nan)) for by_ctl in summary.values() for s in by_ctl.values()
    )


def columns(summary: dict) -> tuple[str, ...]:
    return COLUMNS + (RUN_COLUMNS if runs_shown(summary) else ())


def table_rows(summary: dict, baseline: str) -> list[list[str]]:
    """Printable rows, best mean first within each env."""
    rows, runs = [], runs_shown(summary)
    for env, by_ctl in summary.items():
        ranked = sorted(
            by_ctl.items(), key=lambda kv: -kv[1]["mean"] if math.isfinite(kv[1]["mean"]) else math.inf
        )
        for ctl, s in ranked:
            ci = f"[{_fmt(s['ci_low'], '.4f')}, {_fmt(s['ci_high'], '.4f')}]"
            name = f"{ctl} (baseline)" if ctl == baseline else ctl
            rows.append([env, name, str(s["n"]), _fmt(s["mean"], ".4f"), ci, _fmt(s["sd"], ".4f"),
                         *_p_cells(s), _fmt(s["regret"], ".4f"),
                         _fmt(s["alpha_mean"], ".3f"),
                         _fmt(s["seconds"], ".3f")])  # fmt: skip
            if runs:
                rows[-1] += [
                    _fmt(s.get("run1_mean", math.nan), ".4f"),
                    "sd 0" if s.get("p_worse_note") else _fmt_p(s.get("p_worse", math.nan)),
                ]
    return rows


def _p_cells(s: dict) -> list[str]:
    """The two p cells: "sd 0" where both samples are constant (no test: the means' difference is exact)."""
    if s.get("p_note") == "both constant":
        return ["sd 0", "sd 0"]
    return [_fmt_p(s["p_value"]), _fmt_p(s["p_greater"])]


COLUMNS = (
    "env", "controller", "n", "mean", "95% CI", "sd", "p (Welch)", "p (>)", "regret", "mean alpha", "s/unit"
)  # fmt: skip
RUN_COLUMNS = ("run 1", "p (worse)")  # several episodes a unit: run 1's final mean, paired p(last < run 1)


def print_table(summary: dict, baseline: str, console: Any = None, score: str = "final") -> None:
    """A rich table on a terminal; plain aligned lines otherwise (logs, CI, files)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = table_rows(summary, baseline)
    caption = (
        f"{score_words(score)}; p: Welch t-test against {baseline} (two-sided; >: one-sided, "
        "mean above the baseline's)"
    )
    if any(math.isfinite(s.get("regret", math.nan)) for by_ctl in summary.values() for s in by_ctl.values()):
        caption += "; regret: oracle mean - mean (mock env)"  # only where an oracle ran
    returns = [
        env for env, by_ctl in summary.items() if any(s.get("scored_by") == "return" for s in by_ctl.values())
    ]
    if returns:
        caption += f"; on {', '.join(returns)} (no score in its info): the episode's undiscounted return"
    if any(s.get("p_note") for by_ctl in summary.values() for s in by_ctl.values()):
        caption += "; sd 0: both constant over the seeds, no test (the difference of the means is exact)"
    cols = columns(summary)
    if len(cols) > len(COLUMNS):
        first = score_words(score).replace("of the last episode", "of the first episode")
        caption += f"; run 1: {first} (mean over seeds); p (worse): paired one-sided, last < run 1"
        if any(s.get("p_worse_note") for by_ctl in summary.values() for s in by_ctl.values()):
            caption += " (sd 0: every seed changed by the same, none for a deterministic one: no test, exact)"
    if console.is_terminal:
        table = Table(title="bench", caption=caption)
        for i, col in enumerate(cols):
            table.add_column(col, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for row in (list(cols), *rows):
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    print(caption)


def write_csv(summary: dict, path: Path) -> None:
    """One row per (env, controller): the summary fields (empty where not defined)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["env", "controller", *SUMMARY_FIELDS])
        for env, by_ctl in summary.items():
            for ctl, s in by_ctl.items():
                values = [s[k] for k in SUMMARY_FIELDS]
                writer.writerow([env, ctl, *("" if _is_nan(v) else v for v in values)])


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def json_safe(node: Any) -> Any:
    """NaN and infinities -> None (strict JSON), recursively."""
    if isinstance(node, dict):
        return {k: json_safe(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [json_safe(v) for v in node]
    if isinstance(node, (float, np.floating)):
        return float(node) if math.isfinite(node) else None
    if isinstance(node, np.integer):
        return int(node)
    return node
