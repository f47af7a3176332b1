"""recipes/branch_alpha.py: its arguments and its paired summary (the runs themselves: BENCHMARKS)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import branch_alpha  # noqa: E402


def test_seeds_and_alphas_parse_like_bench():
    assert branch_alpha.seed_list("3") == [0, 1, 2]
    assert branch_alpha.seed_list("100-102") == [100, 101, 102]
    with pytest.raises(SystemExit, match="empty"):
        branch_alpha.seed_list("5-4")
    assert branch_alpha.floats("0.5,1") == [0.5, 1.0]
    with pytest.raises(SystemExit, match=r"\[0, 1\]"):
        branch_alpha.floats("0.5,1.5")


def test_the_summary_is_paired_against_the_base_branch():
    def run(start, after):
        return {"stages": {0: {"start": start, "after": dict(zip((0.5, 0.75), after))}}}

    # alpha 0.5 beats 0.75 by exactly 0.1 and 0.2 in two seeds whose starts differ a lot
    runs = [run(0.2, (0.5, 0.4)), run(0.6, (0.9, 0.7))]
    rows = {r["alpha"]: r for r in branch_alpha.summarise(runs, 0.75, [0.5, 0.75], [0])}
    assert rows[0.5]["vs_base"] == pytest.approx(0.15) and rows[0.75]["vs_base"] == 0
    assert rows[0.5]["gain"] == pytest.approx(0.3) and rows[0.5]["n"] == 2
    assert 0 < rows[0.5]["p_better"] < 0.5  # one-sided paired t: better than the base
    assert rows[0.75]["p_better"] != rows[0.75]["p_better"]  # the base against itself: NaN
