"""The README's figures cannot drift: the main command runs here and must print what the README shows.

Runs `python recipes/run.py --controller beta_reinforce` exactly as the README says (default threads,
an empty cache, so the shipped warm start is what loads) and compares the README's shown block: every
summary row it shows (final score and per-band accuracy, with the start and the change) and the last
window's alpha, loss, reward and score. Times and paths are not compared. When a change moves the main
job deliberately, paste the new summary into the README in the same commit.

The run is deterministic for a given torch build and CPU instruction set (the thread count does not
change it), but another vector unit computes other floats: the README shows one block per CPU
capability in `BLOCKS`, the test compares the block of this machine's kind, and on a kind the README
does not show it skips, naming it.
"""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMAND = "python recipes/run.py --controller beta_reinforce"
TORCH, MACHINE = "2.13.0+cpu", "x86_64"  # as the README says
BLOCKS = {"AVX512": 0}  # torch CPU capability -> index of its code block in the README's section


def this_machine() -> dict[str, str]:
    import torch

    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def readme_block(capability: str = "AVX512") -> str:
    """The README's shown output for `capability`: a code block of its "What the main job does and shows"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### What the main job does and shows", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in section.split("```")[1::2] if "final_score" in b]
    return blocks[BLOCKS[capability]]


def table_rows(text: str) -> dict[str, str]:
    """{field: value} of every rich table row `│ field │ value │` in `text` (cells stripped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if line.strip().startswith("│") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def last_window(text: str) -> str:
    """`alpha .. loss .. reward .. score ..` of the last window line (no times)."""
    lines = [line for line in text.splitlines() if line.startswith("window ")]
    match = re.search(r"(alpha \S+ loss \S+ reward \S+ score \S+)", lines[-1])
    assert match, lines[-1]
    return match.group(1)


@pytest.mark.parametrize("capability", sorted(BLOCKS))
def test_the_readme_shows_what_the_readme_parses(capability):
    block = readme_block(capability)
    shown = table_rows(block)
    assert {"final_score", "accuracy/C6", "accuracy/B4", "accuracy/M44", "accuracy/M64"} <= set(shown)
    assert all("(start " in shown[k] for k in shown)  # the start and the change are part of what it shows
    assert last_window(block).startswith("alpha ")
    readme = (ROOT / "README.md").read_text()
    assert MAIN_COMMAND in readme
    assert f"torch {TORCH}" in readme and f"`{capability}`" in readme


@pytest.mark.slow
def test_the_main_command_prints_the_readmes_summary(tmp_path):
    here = this_machine()
    if (here["torch"], here["machine"]) != (TORCH, MACHINE) or here["cpu_capability"] not in BLOCKS:
        shown = f"torch {TORCH} on {MACHINE} with {sorted(BLOCKS)}"
        pytest.skip(f"the README shows {shown}; this machine is {here}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "ATESD_"))}
    env |= {"PYTHONPATH": str(ROOT), "ATESD_CACHE": str(tmp_path / "cache")}  # empty: the shipped weights
    cmd = [sys.executable, *MAIN_COMMAND.split()[1:], f"out_dir={tmp_path / 'runs'}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warm start: training" not in out.stderr, "the shipped warm start did not load"
    block, printed = readme_block(here["cpu_capability"]), table_rows(out.stdout)
    shown = table_rows(block)
    differ = {k: (v, printed.get(k)) for k, v in shown.items() if printed.get(k) != v}
    assert not differ, f"README shows != the main command prints (update the README if deliberate): {differ}"
    assert last_window(block) == last_window(out.stdout)
