"""Every plot the recipes draw (matplotlib, Agg backend): a run's alpha, reward, accuracy and mismatch
from its logs, the benchmark's per-window curves, the fixed-exposure sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from atesd.logging import read_jsonl
from recipes import _faults as faults

PLOTS = ("alpha.png", "reward.png", "accuracy.png", "mismatch.png")  # what plot_run writes


def pyplot():
    """matplotlib's pyplot on the Agg backend, its config and font cache under ATESD_CACHE (not
    ~/.cache or ~/.config: runs write only under their run directory and the cache)."""
    import os

    from atesd.warmstart import default_cache_dir

    os.environ.setdefault("MPLCONFIGDIR", str(default_cache_dir() / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: Path) -> list[Path]:
    """plots/alpha.png, reward.png, accuracy.png, mismatch.png from the run's logs: one line per episode
    (none across a reset), a dotted rule between one episode's last window and the next one's first."""
    plt = pyplot()
    records = read_jsonl(run_dir / "metrics.jsonl")
    windows = [r for r in records if r["kind"] == "window"]
    scored = [r for r in records if r["kind"] in ("start", "window")]  # accuracy from window 0 on
    decisions = [r for r in read_jsonl(run_dir / "decisions.jsonl") if r["kind"] == "decision"]
    cfg = json.loads((run_dir / "config.json").read_text())
    title = f"{cfg['controller']} on {cfg['env']} (seed {cfg['seed']})"
    lambda_gt = cfg["mock"]["lambda_gt"] if cfg["env"] == "mock" else cfg["real"]["env"]["lambda_gt"]
    rules = episode_rules(windows)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        savefig_whole(fig, out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
        faults.hit("plot")

    save(alpha_figure(plt, decisions, windows, rules, title), "alpha.png")
    save(reward_figure(plt, windows, rules, title, lambda_gt), "reward.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    colors = band_colors(scored)
    bands = [b for b in colors if any(f"eval/accuracy/{b}" in w for w in windows)]
    if bands:
        for band in bands:
            by_episode(ax, scored, f"eval/accuracy/{band}", 100.0, color=colors[band], marker="o", label=band)
        ax.set(ylabel="greedy accuracy (%)")
    else:
        by_episode(ax, scored, "env/score", color="C0", label="competence (mock)")
        ax.set(ylabel="student competence")
    draw_rules(ax, rules)
    ax.set(xlabel="window (0: the warm-started student)", title=f"Accuracy per difficulty: {title}")
    ax.legend(loc="best", fontsize=8)
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    by_episode(ax, windows, "stats/mismatch", color="C3")
    draw_rules(ax, rules)
    ax.set(xlabel="window", ylabel="top-1 student-teacher mismatch", title=f"Mismatch: {title}")
    save(fig, "mismatch.png")
    return paths


def alpha_figure(plt, decisions: list[dict], windows: list[dict], rules: list[float], title: str):
    """The alpha used at each window, the controller's Beta (mean, 90% interval) where it logs one and
    the mock's optimum each window faced (`faced_optima`), in the alpha's colour; one panel per band
    under the per-band action, each series per episode."""
    from scipy.stats import beta as beta_dist

    alphas = _per_band(decisions, "alpha")  # (decisions, bands)
    bands = _band_names(windows, alphas.shape[1])
    one = len(bands) == 1
    fig, axes = plt.subplots(len(bands), 1, figsize=(8, 4 if one else 2.8 * len(bands)), sharex=True,
                             squeeze=False)  # fmt: skip
    x = np.array([d["window"] for d in decisions])
    episodes = np.array([d["episode"] for d in decisions])
    has_beta = bool(decisions) and "beta_a" in decisions[0]
    beta_a, beta_b = (_per_band(decisions, k) if has_beta else None for k in ("beta_a", "beta_b"))
    optima = faced_optima(decisions)
    colors = band_colors(windows)
    for i, (ax, band) in enumerate(zip(axes[:, 0], bands)):
        color, name = colors.get(band, f"C{i}"), "" if one else f" {band}"
        ax.plot(x, alphas[:, i], ".", color=color, label=f"alpha used{name}", zorder=3)
        beta_color = "C1" if one else color
        for j, episode in enumerate(dict.fromkeys(episodes.tolist()) if has_beta else ()):
            at = episodes == episode
            a, b = beta_a[at, i], beta_b[at, i]
            mean, low, high = a / (a + b), beta_dist.ppf(0.05, a, b), beta_dist.ppf(0.95, a, b)
            if at.sum() == 1:  # one decision in the episode: a line and a band of one x draw nothing
                ax.errorbar(x[at], mean, yerr=[mean - low, high - mean], fmt="o", color=beta_color, capsize=3,
                            label=None if j else f"Beta mean and 90% interval{name}")  # fmt: skip
                continue
            ax.plot(x[at], mean, color=beta_color, label=None if j else f"Beta mean{name}")
            ax.fill_between(x[at], low, high, color=beta_color, alpha=0.2 if one else 0.15, lw=0,
                            label=None if j else f"Beta 90% interval{name}")  # fmt: skip
        for j, (ox, oy) in enumerate(optima):
            ax.plot(ox, oy[:, i], "--", color=color, marker="o" if len(ox) == 1 else None,
                    label=None if j else f"optimal alpha{name} (mock)")  # fmt: skip
        draw_rules(ax, rules)
        ax.set(ylabel="exposure alpha" if one else f"alpha {band}", ylim=(-0.02, 1.02))
        ax.legend(loc="best", fontsize=8)
    axes[0, 0].set_title(f"Exposure: {title}")
    axes[-1, 0].set_xlabel("window (hold of H student updates)")
    return fig


def faced_optima(decisions: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The mock's optimum each window faced, one (windows, optima (n, bands)) pair per episode: window w's
    is the `oracle_alpha_after` of the decision at window w - 1 in the same episode. An episode's first
    window faced the reset's optimum, which the logs do not keep: it is left out, never filled in with the
    previous episode's last value; the run's last `oracle_alpha_after` faced no window."""
    series: dict[int, tuple[list, list]] = {}
    for prev, decision in zip(decisions, decisions[1:]):
        same = decision["episode"] == prev["episode"] and decision["window"] == prev["window"] + 1
        if same and "oracle_alpha_after" in prev:
            xs, ys = series.setdefault(decision["episode"], ([], []))
            xs.append(decision["window"])
            ys.append(np.reshape(prev["oracle_alpha_after"], -1))
    return [(np.array(xs), np.array(ys)) for xs, ys in series.values()]


def reward_figure(plt, windows: list[dict], rules: list[float], title: str, lambda_gt: float):
    """The window's reward and its two terms, each on its own axis (the grounded term times lambda_gt
    dwarfs the progress): the total, the learning progress, the grounded term as logged."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    total = f"reward (total) = progress + lambda_gt x grounded, lambda_gt = {lambda_gt:g}"
    panels = (("env/reward", "C0", total, "total"),
              ("reward/progress", "C2", "learning progress", "progress"),
              ("reward/grounded", "C4", "grounded term (reward/grounded)", "grounded"))  # fmt: skip
    for ax, (key, color, label, ylabel) in zip(axes, panels):
        by_episode(ax, windows, key, color=color, label=label)
        draw_rules(ax, rules)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(ylabel=ylabel)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_title(f"Reward per window: {title}")
    axes[-1].set_xlabel("window")
    return fig


def by_episode(ax, records: list[dict], key: str, scale: float = 1.0, color: str = "C0", **kwargs) -> None:
    """Plot `key` against the window, one line per episode (no line across a reset), finite points only.
    A later episode's start record carries the previous episode's last window: it is drawn half a
    window on, on the rule between the two (`episode_rules`)."""
    episodes = sorted({r["episode"] for r in records})
    for i, episode in enumerate(episodes):
        rows = [r for r in records if r["episode"] == episode]
        pts = [(_x(r), scale * r[key]) for r in rows if r.get(key) is not None]
        if pts:
            style = kwargs if i == 0 else kwargs | {"label": None}
            if len(pts) == 1:  # a line of one point draws nothing (an episode of one window)
                style = {"marker": "o"} | style
            ax.plot(*zip(*pts), color=color, **style)


def episode_rules(windows: list[dict]) -> list[float]:
    """Where each later episode starts on the window axis: halfway between the last window of the
    episode before and its own first window."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for r in windows:
        e, w = r["episode"], r["window"]
        first[e], last[e] = min(first.get(e, w), w), max(last.get(e, w), w)
    episodes = sorted(first)
    return [(last[a] + first[b]) / 2 for a, b in zip(episodes, episodes[1:])]


def draw_rules(ax, rules: list[float]) -> None:
    """A dotted rule where each later episode starts."""
    for x in rules:
        ax.axvline(x, color="grey", lw=0.8, ls=":")


def plot_curves(bands: dict, hold_steps: dict[str, int], seeds: int, path: Path) -> None:
    """Mean score per window with its 95% band, one line per controller, one panel per env."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    ylabels = {"mock": "score: competence", "real": "score: mean greedy accuracy over bands"}
    controllers = list(dict.fromkeys(ctl for by_ctl in bands.values() for ctl in by_ctl))
    fig, axes = plt.subplots(1, len(bands), figsize=(7 * len(bands), 4.5), squeeze=False)
    for ax, (env, by_ctl) in zip(axes[0], bands.items()):
        for ctl, band in by_ctl.items():
            mean, low, high = (np.asarray(band[k], dtype=np.float64) for k in ("mean", "low", "high"))
            x = np.arange(len(mean))  # window 0: where the episode started
            ok = np.isfinite(mean)
            color = f"C{controllers.index(ctl) % 10}"
            sparse = ok.sum() < 30
            ax.plot(x[ok], mean[ok], color=color, label=ctl, marker="o" if sparse else None, ms=3)
            banded = ok & np.isfinite(low) & np.isfinite(high)
            ax.fill_between(x[banded], low[banded], high[banded], color=color, alpha=0.2, lw=0)
        ax.set(
            xlabel=f"window (env step of H = {hold_steps[env]} student updates; 0: the start)"
            if hold_steps.get(env)
            else "env step (0: the start)",
            ylabel=ylabels.get(env, "score"),
            title=f"{env} env, last episode: mean and 95% CI over {seeds} seeds",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_whole(fig, path, dpi=110)
    plt.close(fig)


def savefig_whole(fig, path: Path, dpi: int) -> None:
    """`fig` saved as `path` whole or not at all (a temporary file renamed: a kill or a full disk
    while it draws leaves no half-written PNG; a full disk is one line naming the path)."""
    from atesd.state import writing

    tmp = path.with_name(f".tmp-{path.name}")
    with writing(path, cleanup=tmp):
        fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def band_colors(records: list[dict]) -> dict[str, str]:
    """One colour per band for every plot of a run: the action's bands first, in its order
    (`env/alpha/<band>`), then the evaluation's (`eval/accuracy/<band>`) in the order logged (alpha.png
    took the action's order and accuracy.png sorted names: B4 and C6 swapped colours between them)."""
    names: dict[str, None] = {}
    for prefix in ("env/alpha/", "eval/accuracy/"):
        for record in records:
            names |= dict.fromkeys(k.removeprefix(prefix) for k in record if k.startswith(prefix))
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _band_names(windows: list[dict], size: int) -> list[str]:
    """The names of the action's alphas: `alpha` for one, else the bands the window records name
    (`env/alpha/<band>`, in the action's order), or their indices."""
    if size == 1:
        return ["alpha"]
    names = [k.split("/", 2)[2] for k in (windows[0] if windows else {}) if k.startswith("env/alpha/")]
    return names if len(names) == size else [str(i) for i in range(size)]


def _x(record: dict) -> float:
    """A record's place on the window axis: its window; a later episode's start half a window on."""
    later_start = record["kind"] == "start" and record["window"] > 0
    return record["window"] + 0.5 if later_start else record["window"]


def _per_band(decisions: list[dict], key: str) -> np.ndarray:
    """`key` of every decision, one column per band: (decisions, bands)."""
    if not decisions:
        return np.zeros((0, 1))
    return np.array([np.reshape(d[key], -1) for d in decisions], dtype=np.float64).reshape(len(decisions), -1)
