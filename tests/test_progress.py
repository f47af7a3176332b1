import math

import numpy as np
import pytest

from atesd.progress import (
    discounted_mean,
    discounted_progress,
    grounded_change,
    lookahead_returns,
    paper_return,
    window_reward,
    window_reward_floats,
)


def test_only_positive_drops_count_and_signed_variant_charges_reverts():
    losses = [2.0, 1.5, 1.7, 1.0]  # drops 0.5, -0.2, 0.7
    assert discounted_progress(losses, 0.9) == pytest.approx(0.5 + 0.81 * 0.7)
    assert discounted_progress(losses, 0.9, signed=True) == pytest.approx(0.5 - 0.9 * 0.2 + 0.81 * 0.7)
    # a transient dip that reverts is rewarded by the paper's form, netted out by the signed one
    dip = [1.0, 0.5, 1.0]
    assert discounted_progress(dip, 1.0) == pytest.approx(0.5)
    assert discounted_progress(dip, 1.0, signed=True) == pytest.approx(0.0)


def test_window_reward_terms():
    out = window_reward([1.0, 0.8, 0.9], [-2.0, -1.0], gamma=0.5, lambda_gt=0.1)
    assert out["progress"] == pytest.approx(0.2)
    assert out["grounded"] == pytest.approx((-2.0 - 0.5) / 1.5)
    assert out["reward"] == pytest.approx(0.2 + 0.1 * (-2.5 / 1.5))
    with pytest.raises(ValueError, match="H\\+1"):
        window_reward([1.0, 0.9], [0.0, 0.0], 0.9, 0.1)


def test_lookahead_returns_by_hand():
    r = [1.0, 2.0, 3.0, 4.0]
    g, complete = lookahead_returns(r, 0.5, 2)
    assert np.allclose(g, [1 + 1.0, 2 + 1.5, 3 + 2.0, 4.0])
    assert complete.tolist() == [True, True, True, False]
    g, complete = lookahead_returns([1.0, 2.0], 0.5, 4)  # a horizon past the end: truncated sums
    assert np.allclose(g, [2.0, 2.0]) and not complete.any()


def test_windowed_returns_equal_the_papers_step_level_progress():
    rng = np.random.default_rng(0)
    losses = list(np.cumsum(rng.normal(-0.01, 0.05, 21)) + 3)
    hold, lookahead, gamma = 5, 10, 0.9
    windows = [discounted_progress(losses[w * hold : (w + 1) * hold + 1], gamma) for w in range(4)]
    g, _ = lookahead_returns(windows, gamma**hold, lookahead // hold)
    for w in range(3):
        assert g[w] == pytest.approx(paper_return(losses, [0.0] * 20, w * hold, lookahead, gamma, 0.0))
    # no update measured g: the progress alone, as the env rewards such a window (it was NaN)
    for lam in (0.0, 0.3):
        assert paper_return(losses, [math.nan] * 20, 0, lookahead, gamma, lam) == pytest.approx(
            discounted_progress(losses[: lookahead + 1], gamma)
        )


def test_discounted_mean():
    assert discounted_mean([1.0, 3.0], 1.0) == 2.0
    assert math.isclose(discounted_mean([1.0, 3.0], 0.5), (1 + 1.5) / 1.5)
    assert math.isclose(discounted_mean([1.0, math.nan, 3.0], 0.5), (1 + 0.25 * 3) / 1.25)  # finite only
    assert math.isnan(discounted_mean([math.nan], 0.5))


def test_the_change_form_pays_the_rise_of_the_grounded_score_and_telescopes():
    first = grounded_change(window_reward([1.0, 0.8, 0.9], [-2.0, -1.0], 0.5, 3.0), None, 3.0)
    assert first["grounded"] == 0.0 and first["reward"] == pytest.approx(0.2)  # no previous window
    assert first["grounded_level"] == pytest.approx(-2.5 / 1.5)
    second = grounded_change(
        window_reward([0.9, 0.9, 0.9], [-1.0, -1.0], 0.5, 3.0), first["grounded_level"], 3.0
    )
    assert second["grounded"] == pytest.approx(-1.0 + 2.5 / 1.5) and second["progress"] == 0.0
    assert second["reward"] == pytest.approx(3.0 * second["grounded"])
    # over windows the changes sum to the last window's level minus the first's: a state that was good
    # before the decisions earns nothing by itself
    levels, prev, total = [-3.0, -2.0, -2.5, -1.0], None, 0.0
    for g in levels:
        terms = grounded_change({"progress": 0.0, "grounded": g, "reward": 0.0}, prev, 1.0)
        total, prev = total + terms["grounded"], terms["grounded_level"]
    assert total == pytest.approx(levels[-1] - levels[0])
    unmeasured = {"progress": 0.1, "grounded": math.nan, "reward": math.nan}  # engine.grounded off
    assert math.isnan(grounded_change(unmeasured, None, 1.0)["reward"])  # as the level form gives


@pytest.mark.parametrize("signed", [False, True])
def test_the_plain_float_window_reward_equals_the_numpy_one(signed):
    rng = np.random.default_rng(0)
    for _ in range(20):
        losses, grounded = rng.normal(1.0, 0.3, 6).tolist(), rng.normal(-2.0, 0.5, 5).tolist()
        fast = window_reward_floats(losses, grounded, 0.9, 0.3, signed)
        ref = window_reward(losses, grounded, 0.9, 0.3, signed)
        assert fast == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # an update that measured no grounded score is left out by both, and lambda_gt = 0 ignores g
    losses = [1.0, 0.9, 0.8]
    for grounded in ([math.nan, -2.0], [math.nan, math.nan]):
        for lam in (0.0, 0.3):
            fast = window_reward_floats(losses, grounded, 0.9, lam, signed)
            ref = window_reward(losses, grounded, 0.9, lam, signed)
            assert fast == pytest.approx(ref, rel=1e-12, abs=1e-12, nan_ok=True), (grounded, lam)
    assert window_reward_floats(losses, [math.nan, -2.0], 0.9, 0.0, signed)["reward"] == pytest.approx(0.19)
