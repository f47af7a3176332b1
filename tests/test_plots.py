"""recipes/_plots.py: what a run's plots draw, read off the matplotlib figures (their lines, rules,
fills and legends; never pixels), on synthetic logs laid out as recipes/run.py writes them and on a
short mock run."""

import json

import numpy as np
import pytest

import recipes.run as run
from atesd.logging import read_jsonl
from recipes import _plots

WINDOWS = 4  # per episode: the global windows are 1..4 then 5..8, episode 1's start record at window 4
RULE = WINDOWS + 0.5  # between episode 0's last window and episode 1's first
BANDS = ("easy", "hard")


def optimum_after(band: int, w: int) -> float:
    """The synthetic mock's optimum for the window after the episode's w-th (a reset starts it over)."""
    return 0.2 + 0.1 * band + 0.05 * w


def write_run(run_dir, per_band: bool, episodes: int = 2, bands=BANDS, evals: bool = False) -> None:
    """config.json, metrics.jsonl and decisions.jsonl with the records recipes/run.py logs (`evals`: each
    window's evaluation per band too, as the real env's)."""
    run_dir.mkdir()
    names = bands
    bands = bands if per_band else ("alpha",)
    metrics, decisions = [], []
    for e in range(episodes):
        metrics.append({"kind": "start", "episode": e, "window": e * WINDOWS, "update": 0, "env/score": 0.0})
        for w in range(1, WINDOWS + 1):
            gw = e * WINDOWS + w
            alpha = [0.1 * w + 0.05 * i for i in range(len(bands))]
            progress, grounded = 0.01 + 0.001 * w, 0.5 - 0.2 * w  # the total dwarfs the progress
            total = progress + 30.0 * grounded
            record = {"kind": "window", "episode": e, "window": gw, "update": 5 * gw,
                      "env/alpha": float(np.mean(alpha)), "env/reward": total, "reward/progress": progress,
                      "reward/grounded": grounded, "reward/total": total, "stats/mismatch": 0.2 + 0.01 * w,
                      "env/score": 0.1 * w}  # fmt: skip
            if per_band:
                record |= {f"env/alpha/{band}": a for band, a in zip(bands, alpha)}
            if evals:
                record |= {f"eval/accuracy/{band}": 0.1 * w + 0.01 * i for i, band in enumerate(names)}
            metrics.append(record)
            after = [optimum_after(i, w) for i in range(len(bands))]
            beta_a, beta_b = [2.0 + 0.1 * gw] * len(bands), [2.0 + 0.05 * i for i in range(len(bands))]
            one = not per_band
            decisions.append({"kind": "decision", "decision": gw - 1, "episode": e, "window": gw,
                              "alpha": alpha[0] if one else alpha, "reward/total": total,
                              "reward/progress": progress, "reward/grounded": grounded,
                              "beta_a": beta_a[0] if one else beta_a, "beta_b": beta_b[0] if one else beta_b,
                              "oracle_alpha_after": after[0] if one else after})  # fmt: skip
            decisions.append({"kind": "credit", "decision": gw - 1, "return": total, "advantage": 0.0})
    cfg = {"controller": "beta_reinforce", "env": "mock", "seed": 0, "mock": {"lambda_gt": 30.0}}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    for name, rows in (("metrics.jsonl", metrics), ("decisions.jsonl", decisions)):
        (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_run saves, by file name (kept instead of written)."""
    figures = {}
    monkeypatch.setattr(_plots, "savefig_whole", lambda fig, path, dpi: figures.__setitem__(path.name, fig))
    return figures


def plot(tmp_path, drawn, per_band: bool) -> dict:
    write_run(tmp_path / "run", per_band)
    _plots.plot_run(tmp_path / "run")
    assert sorted(drawn) == sorted(_plots.PLOTS)
    return drawn


def data_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_transform() is ax.transData]


def rules(ax) -> list[float]:
    """The x of each vertical rule (axvline: x in data, y in axes coordinates)."""
    return [
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if line.get_transform() is not ax.transData and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def alpha_points(ax, band: str) -> list:
    """The band's alpha-used points (the only series drawn with dots alone)."""
    return [line for line in data_lines(ax) if line.get_marker() == "." and band in line.get_label()]


def dashed_points(ax, color=None) -> set[tuple[int, float]]:
    """(window, value) of every dashed series (the mock's optimum), those of `color` only where given."""
    from matplotlib.colors import same_color

    lines = [line for line in data_lines(ax) if line.get_linestyle() == "--"]
    lines = [line for line in lines if color is None or same_color(line.get_color(), color)]
    return {
        (int(x), round(float(y), 9)) for line in lines for x, y in zip(line.get_xdata(), line.get_ydata())
    }


def faced(band: int) -> set[tuple[int, float]]:
    """The optimum each window faced that the logs keep: every window but an episode's first."""
    return {
        (e * WINDOWS + w, round(optimum_after(band, w - 1), 9))
        for e in range(2)
        for w in range(2, WINDOWS + 1)
    }


def test_alpha_draws_the_optimum_at_the_window_that_faced_it_never_across_a_reset(tmp_path, drawn):
    (ax,) = plot(tmp_path, drawn, per_band=False)["alpha.png"].axes
    assert dashed_points(ax) == faced(0)  # not at x + 1: episode 0's last value is not at window 5
    assert len([line for line in data_lines(ax) if line.get_linestyle() == "--"]) == 2  # one per episode


def test_alpha_per_band_optimum_in_its_alphas_colour_labelled_by_band(tmp_path, drawn):
    fig = plot(tmp_path, drawn, per_band=True)["alpha.png"]
    for i, band in enumerate(BANDS):
        (ax,) = [ax for ax in fig.axes if alpha_points(ax, band)]
        (points,) = alpha_points(ax, band)
        assert dashed_points(ax, points.get_color()) == faced(i)
        assert any("optimal" in text and band in text for text in legend_texts(ax))


def test_alpha_per_band_series_have_legend_entries_and_a_panel_each(tmp_path, drawn):
    fig = plot(tmp_path, drawn, per_band=True)["alpha.png"]
    texts = [text for ax in fig.axes if ax.get_legend() for text in legend_texts(ax)]
    for band in BANDS:
        for series in ("alpha", "Beta mean", "Beta 90% interval", "optimal alpha"):
            assert any(series in text and band in text for text in texts), (series, band, texts)
    for ax in fig.axes:  # no two bands' Beta intervals on one axis
        assert len({band for band in BANDS if alpha_points(ax, band)}) <= 1


def test_reward_draws_total_progress_and_grounded_each_on_its_own_axis(tmp_path, drawn):
    fig = plot(tmp_path, drawn, per_band=False)["reward.png"]
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "window"]
    found = {}
    for key in ("env/reward", "reward/progress", "reward/grounded"):
        want = sorted(round(r[key], 9) for r in records)
        for ax in fig.axes:
            got = sorted(round(float(y), 9) for line in data_lines(ax) for y in line.get_ydata())
            if got == want:
                found[key] = ax
    assert set(found) == {"env/reward", "reward/progress", "reward/grounded"}
    assert len({id(ax) for ax in found.values()}) == 3  # the progress is not flattened by the total
    total = legend_texts(found["env/reward"])
    assert any("progress + lambda_gt x grounded" in text for text in total), total


@pytest.mark.parametrize("per_band", [False, True])
def test_every_plot_rules_between_episodes_and_joins_none(tmp_path, drawn, per_band):
    for name, fig in plot(tmp_path, drawn, per_band).items():
        for ax in fig.axes:
            assert rules(ax) == [RULE], name
            joined = [
                line for line in data_lines(ax) if line.get_linestyle() != "None"
            ]  # points alone join none
            for line in joined:  # each line lies on one side of the rule (a start on it)
                x = np.asarray(line.get_xdata(), dtype=np.float64)
                assert (x <= RULE).all() or (x >= RULE).all(), (name, line.get_label(), x)
            for fill in ax.collections:  # Beta intervals
                x = np.concatenate([path.vertices[:, 0] for path in fill.get_paths()])
                assert (x <= RULE).all() or (x >= RULE).all(), (name, x)


def test_accuracy_puts_a_later_episodes_start_on_the_rule_after_the_last_window(tmp_path, drawn):
    (ax,) = plot(tmp_path, drawn, per_band=False)["accuracy.png"].axes
    first, second = sorted(data_lines(ax), key=lambda line: line.get_xdata()[0])
    assert list(first.get_xdata()) == [0, 1, 2, 3, 4]
    assert list(second.get_xdata()) == [RULE, 5, 6, 7, 8]  # episode 1's start: window 4's record
    assert second.get_ydata()[0] == 0.0


def test_a_two_episode_per_band_mock_run_draws_what_it_logged(tmp_path, drawn):
    args = ["--controller", "beta_reinforce", "--env", "mock", "mock.total_steps=15", "episodes=2",
            "mock.action=per_band", "mock.variant=mix", f"out_dir={tmp_path}"]  # fmt: skip
    run_dir = run.main(args)
    assert sorted(drawn) == sorted(_plots.PLOTS)
    decisions = [d for d in read_jsonl(run_dir / "decisions.jsonl") if d["kind"] == "decision"]
    assert [d["window"] for d in decisions] == [1, 2, 3, 4, 5, 6]
    for name, fig in drawn.items():
        for ax in fig.axes:
            assert rules(ax) == [3.5], name
    fig = drawn["alpha.png"]
    for i, band in enumerate(BANDS):
        (ax,) = [ax for ax in fig.axes if alpha_points(ax, band)]
        (points,) = alpha_points(ax, band)
        want = {(d["window"], round(prev["oracle_alpha_after"][i], 9))
                for prev, d in zip(decisions, decisions[1:]) if d["episode"] == prev["episode"]}  # fmt: skip
        assert dashed_points(ax, points.get_color()) == want
        assert {w for w, _ in want} == {2, 3, 5, 6}  # an episode's first window: its optimum is not logged


def test_a_band_has_one_colour_in_the_alpha_and_the_accuracy_plot(tmp_path, drawn):
    """alpha.png coloured the bands in the action's order and accuracy.png in sorted order: with the
    action's bands not sorted (the embedded task's C6, B4, ...), the two plots swapped their colours."""
    from matplotlib.colors import same_color

    write_run(tmp_path / "run", per_band=True, bands=("hard", "easy"), evals=True)
    _plots.plot_run(tmp_path / "run")
    (accuracy,) = drawn["accuracy.png"].axes
    for band in ("hard", "easy"):
        (ax,) = [ax for ax in drawn["alpha.png"].axes if alpha_points(ax, band)]
        (points,) = alpha_points(ax, band)
        lines = [line for line in data_lines(accuracy) if line.get_label() == band]
        assert lines and same_color(lines[0].get_color(), points.get_color()), band


def test_an_episode_of_one_window_is_drawn(tmp_path, drawn):
    """A line of one point draws nothing: with one window per episode reward.png and mismatch.png were
    empty axes with a legend, and alpha.png lost its Beta mean and interval."""
    write_run(tmp_path / "run", per_band=False)
    for name in ("metrics.jsonl", "decisions.jsonl"):  # keep each episode's first window alone
        path = tmp_path / "run" / name
        rows = [r for r in read_jsonl(path) if r["kind"] not in ("window", "decision", "credit")
                or (r["window"] if "window" in r else r["decision"] + 1) % WINDOWS == 1]  # fmt: skip
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _plots.plot_run(tmp_path / "run")
    for name in ("reward.png", "mismatch.png"):
        for ax in drawn[name].axes:
            assert [line.get_marker() for line in data_lines(ax) if len(line.get_xdata()) == 1] == ["o", "o"]
    (ax,) = drawn["alpha.png"].axes
    assert len(ax.containers) == 2  # an error bar per episode: the Beta mean and its 90% interval
