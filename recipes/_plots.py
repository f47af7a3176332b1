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
    """plots/alpha.png, reward.png, accuracy.png, mismatch.png from the run's logs."""
    plt = pyplot()
    from scipy.stats import beta as beta_dist

    records = read_jsonl(run_dir / "metrics.jsonl")
    windows = [r for r in records if r["kind"] == "window"]
    scored = [r for r in records if r["kind"] in ("start", "window")]  # accuracy from window 0 on
    decisions = [r for r in read_jsonl(run_dir / "decisions.jsonl") if r["kind"] == "decision"]
    cfg = json.loads((run_dir / "config.json").read_text())
    title = f"{cfg['controller']} on {cfg['env']} (seed {cfg['seed']})"
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    x = np.array([d["window"] for d in decisions])
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        savefig_whole(fig, out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
        faults.hit("plot")

    fig, ax = plt.subplots(figsize=(8, 4))
    alphas = np.array([np.reshape(d["alpha"], -1) for d in decisions]).reshape(len(decisions), -1)
    bands = _band_names(windows, alphas.shape[1])
    for i, band in enumerate(bands):  # one colour per band under the per-band action
        label = "alpha used" if len(bands) == 1 else f"alpha {band}"
        color = f"C{0 if len(bands) == 1 else i}"
        ax.plot(x, alphas[:, i], "." if len(bands) == 1 else ".-", color=color, label=label, zorder=3)
        if decisions and "beta_a" in decisions[0]:
            a = np.array([np.reshape(d["beta_a"], -1)[i] for d in decisions])
            b = np.array([np.reshape(d["beta_b"], -1)[i] for d in decisions])
            beta_color = "C1" if len(bands) == 1 else color
            ax.plot(x, a / (a + b), color=beta_color, label="Beta mean" if len(bands) == 1 else None)
            ax.fill_between(x, beta_dist.ppf(0.05, a, b), beta_dist.ppf(0.95, a, b), color=beta_color,
                            alpha=0.2 if len(bands) == 1 else 0.1,
                            label="Beta 90% interval" if len(bands) == 1 else None)  # fmt: skip
    if decisions and "oracle_alpha_after" in decisions[0]:  # the optimum each decision faced
        oracle = np.array([np.reshape(d["oracle_alpha_after"], -1) for d in decisions]).reshape(
            len(decisions), -1
        )
        for i in range(oracle.shape[1]):
            ax.plot(x + 1, oracle[:, i], "--", color="k", label="optimal alpha (mock)" if i == 0 else None)
    ax.set(xlabel="window (hold of H student updates)", ylabel="exposure alpha", ylim=(-0.02, 1.02),
           title=f"Exposure: {title}")  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    save(fig, "alpha.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    by_episode(ax, windows, "env/reward", color="C0", label="reward (total)")
    by_episode(ax, windows, "reward/progress", color="C2", alpha=0.7, label="learning progress")
    ax.set(xlabel="window", ylabel="reward per window", title=f"Reward: {title}")
    ax.legend(loc="best", fontsize=8)
    save(fig, "reward.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    bands = sorted({k for w in windows for k in w if k.startswith("eval/accuracy/")})
    if bands:
        for band in bands:
            label = band.removeprefix("eval/accuracy/")
            by_episode(ax, scored, band, 100.0, color=f"C{bands.index(band)}", marker="o", label=label)
        ax.set(ylabel="greedy accuracy (%)")
    else:
        by_episode(ax, scored, "env/score", color="C0", label="competence (mock)")
        ax.set(ylabel="student competence")
    ax.set(xlabel="window (0: the warm-started student)", title=f"Accuracy per difficulty: {title}")
    ax.legend(loc="best", fontsize=8)
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    by_episode(ax, windows, "stats/mismatch", color="C3")
    ax.set(xlabel="window", ylabel="top-1 student-teacher mismatch", title=f"Mismatch: {title}")
    save(fig, "mismatch.png")
    return paths


def by_episode(ax, records: list[dict], key: str, scale: float = 1.0, color: str = "C0", **kwargs) -> None:
    """Plot `key` against the window, one line per episode (no line across a reset), finite points only;
    a dotted rule marks where each later episode starts."""
    episodes = sorted({r["episode"] for r in records})
    for i, episode in enumerate(episodes):
        rows = [r for r in records if r["episode"] == episode]
        pts = [(r["window"], scale * r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), color=color, **(kwargs if i == 0 else kwargs | {"label": None}))
        if i > 0:
            ax.axvline(rows[0]["window"] - 0.5, color="grey", lw=0.8, ls=":")


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


def _band_names(windows: list[dict], size: int) -> list[str]:
    """The names of the action's alphas: `alpha` for one, else the bands the window records name
    (`env/alpha/<band>`, in the action's order), or their indices."""
    if size == 1:
        return ["alpha"]
    names = [k.split("/", 2)[2] for k in (windows[0] if windows else {}) if k.startswith("env/alpha/")]
    return names if len(names) == size else [str(i) for i in range(size)]
