"""The embedded default task, "chain-then-bag": procedurally generated step-by-step arithmetic.

A problem is a *chain* of L single-digit operations applied left to right (one valid path), then a
*bag* of E digits to be added mod 10 in any order (many valid paths). The reference writes the
chain in order and the bag in a random order that the reference fixes, so the chain's intermediate
results are fully determined by the question while the bag's partial sums depend on an arbitrary
choice the student cannot know. That is the property that makes teacher exposure matter:
revealing chain steps hands the teacher information the student lacks (useful), revealing bag steps
hands it a path the student did not take (mismatch). See docs/TASK.md for the measured behaviour.

Example (L=3, E=3): question `Q6-0-8+6|475`, a reference `6-0=6;6-8=8;8+6=4;4+7=1;1+5=6;6+4=0;A0`.
This module knows nothing of tokenizers or models: it produces and grades text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from atesd.tasks.base import Problem, PromptFormat, Verdict

SYNTHETIC_FORMAT = PromptFormat(reference_open="<|ref|>", answer_open="<|ans|>", transition="<|go|>")
_STEP = re.compile(r"(\d)([+\-*])(\d)=(\d);")
_FINAL = re.compile(r"A(\d)$")
_OPS = {"+": lambda a, b: (a + b) % 10, "-": lambda a, b: (a - b) % 10, "*": lambda a, b: (a * b) % 10}


def band_name(chain: int, bag: int) -> str:
    """C<L> for chain only, B<E> for bag only, M<L><E> for mixed."""
    if bag == 0:
        return f"C{chain}"
    if chain == 0:
        return f"B{bag}"
    return f"M{chain}{bag}"


@dataclass(frozen=True)
class ChainBagConfig:
    """Knobs of the synthetic task (difficulty = lengths, composition = chain vs bag)."""

    chain_lengths: tuple[int, int] = field(
        default=(0, 6), metadata={"help": "training chain length L range, inclusive"}
    )
    bag_sizes: tuple[int, int] = field(
        default=(0, 4), metadata={"help": "training bag size E range, inclusive"}
    )
    min_steps: int = field(default=2, metadata={"help": "minimum L + E of a training problem"})
    ops: str = field(default="+-", metadata={"help": "chain operators, a subset of '+-*'"})
    bands: tuple[tuple[int, int], ...] = field(
        default=((6, 0), (0, 4), (4, 4), (6, 4)), metadata={"help": "(L, E) of each evaluation band"}
    )
    eval_size: int = field(default=256, metadata={"help": "problems per evaluation band (>= 1)"})
    probe_size: int = field(default=64, metadata={"help": "held-out references for the probe NLL (>= 1)"})
    eval_seed: int = field(default=1234, metadata={"help": "seed of the fixed evaluation and probe sets"})

    def __post_init__(self) -> None:
        if self.eval_seed < 0:  # numpy said "expected non-negative integer", naming no setting
            raise ValueError(f"eval_seed must be >= 0, got {self.eval_seed}")
        for name in ("chain_lengths", "bag_sizes"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 9:
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 9, got {(lo, hi)}")
        if self.min_steps < 1 or self.min_steps > self.chain_lengths[1] + self.bag_sizes[1]:
            raise ValueError(f"min_steps must be in [1, max L + max E], got {self.min_steps}")
        if not self.ops or any(op not in _OPS for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if not self.bands:
            raise ValueError("bands must name at least one (L, E) evaluation band")
        named: dict[str, tuple[int, int]] = {}
        for chain, bag in self.bands:
            if chain < 0 or bag < 0 or chain + bag < 1:
                raise ValueError(f"bands entries need L, E >= 0 and L + E >= 1, got {(chain, bag)}")
            name = band_name(chain, bag)
            if name in named:  # one would replace the other's problems in the evaluation sets
                raise ValueError(
                    f"bands {named[name]} and {(chain, bag)} share the evaluation band name {name}: drop one"
                )
            named[name] = (chain, bag)
        if self.eval_size < 1 or self.probe_size < 1:
            raise ValueError("eval_size and probe_size must be >= 1")


class ChainBagTask:
    """Chain-then-bag arithmetic; see the module docstring."""

    prompt_format = SYNTHETIC_FORMAT

    def __init__(self, cfg: ChainBagConfig | None = None) -> None:
        self.cfg = cfg or ChainBagConfig()
        self._held_out: set[str] = set()
        rng = np.random.default_rng(self.cfg.eval_seed)
        self._eval = {
            band_name(c, b): [self._make(rng, c, b) for _ in range(self.cfg.eval_size)]
            for c, b in self.cfg.bands
        }
        self._probe = self.sample(rng, self.cfg.probe_size)
        self._held_out = {p.question for ps in self._eval.values() for p in ps} | {
            p.question for p in self._probe
        }

    # ---- the per-band exposure's bands ----------------------------------------------------------
    def action_band(self, problem: Problem) -> str:
        """The evaluation band nearest the problem's shape (L, E) (squared distance; a tie goes to
        the band listed first): every training problem gets one of the evaluation bands' alphas."""
        chain, bag = len(problem.meta["ops"]), len(problem.meta["bag"])
        best = min(self.cfg.bands, key=lambda b: (b[0] - chain) ** 2 + (b[1] - bag) ** 2)
        return band_name(*best)

    # ---- generation -------------------------------------------------------------------------
    def _make(self, rng: np.random.Generator, chain: int, bag: int) -> Problem:
        start = int(rng.integers(10))
        ops = [self.cfg.ops[i] for i in rng.integers(len(self.cfg.ops), size=chain)]
        operands = [int(x) for x in rng.integers(10, size=chain)]
        digits = [int(x) for x in rng.integers(10, size=bag)]
        order = [digits[i] for i in rng.permutation(bag)]
        question = (
            f"Q{start}" + "".join(f"{o}{b}" for o, b in zip(ops, operands)) + "|" + "".join(map(str, digits))
        )
        steps, value = _chain_steps(start, ops, operands)
        bag_steps, value = _bag_steps(value, order)
        meta = {"start": start, "ops": ops, "operands": operands, "bag": digits}
        return Problem(
            question, tuple(steps + bag_steps), str(value), f"A{value}", band_name(chain, bag), meta
        )

    def sample(self, rng: np.random.Generator, n: int) -> list[Problem]:
        """Draw n training problems, L and E uniform in their ranges with L + E >= min_steps."""
        out: list[Problem] = []
        (c_lo, c_hi), (b_lo, b_hi) = self.cfg.chain_lengths, self.cfg.bag_sizes
        misses = 0  # draws in a row that were held out: a space the held-out sets cover would loop forever
        while len(out) < n:
            chain, bag = int(rng.integers(c_lo, c_hi + 1)), int(rng.integers(b_lo, b_hi + 1))
            if chain + bag < self.cfg.min_steps:
                continue
            problem = self._make(rng, chain, bag)
            if problem.question in self._held_out:
                misses += 1
                if misses > 10_000:
                    raise ValueError(
                        "the training ranges (chain_lengths, bag_sizes, min_steps) leave almost no question "
                        "outside the held-out evaluation and probe sets: widen them or lower eval_size"
                    )
                continue
            misses = 0
            out.append(problem)
        return out

    def eval_sets(self) -> dict[str, list[Problem]]:
        return self._eval

    def probe_set(self) -> list[Problem]:
        """Held-out problems whose reference solutions the probe NLL scores."""
        return self._probe

    # ---- grading ----------------------------------------------------------------------------
    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Correct iff the completion is a valid solution path (chain in order, the bag in ANY
        order, every partial result right) ending in the right answer."""
        match = _FINAL.search(completion)
        predicted = match.group(1) if match else None
        answer_ok = predicted == problem.answer
        body = completion[: match.start()] if match else completion
        valid = match is not None and self._path_valid(problem, body)
        return Verdict(
            correct=answer_ok and valid, answer_correct=answer_ok, path_valid=valid, predicted=predicted
        )

    def _path_valid(self, problem: Problem, body: str) -> bool:
        steps = _STEP.findall(body)
        if "".join(f"{a}{o}{b}={c};" for a, o, b, c in steps) != body:
            return False
        meta = problem.meta
        chain = list(zip(meta["ops"], meta["operands"]))
        if len(steps) != len(chain) + len(meta["bag"]):
            return False
        value, remaining = meta["start"], list(meta["bag"])
        for i, (a, o, b, c) in enumerate(steps):
            a, b, c = int(a), int(b), int(c)
            if i < len(chain):
                if (o, b) != chain[i]:
                    return False
            elif o != "+" or b not in remaining:
                return False
            else:
                remaining.remove(b)
            if a != value or c != _OPS[o](a, b):
                return False
            value = c
        return True

    def reasoning(self, completion: str) -> str:
        """The completion without its final answer (where the grounded score appends the gold one)."""
        match = re.search(r"A\d?$", completion)
        return completion[: match.start()] if match else completion

    # ---- controls and warm-start helpers ----------------------------------------------------
    def path_matched(self, problem: Problem, completion: str) -> Problem:
        """The same problem with its reference bag re-ordered to follow the completion's own bag
        order (as far as that names bag digits), partial sums recomputed: the path-matched control."""
        meta, chain = problem.meta, len(problem.meta["ops"])
        remaining, order = list(meta["bag"]), []
        for _, o, b, _ in _STEP.findall(completion)[chain:]:
            if o == "+" and int(b) in remaining:
                remaining.remove(int(b))
                order.append(int(b))
        ref_order = [int(s[2]) for s in problem.steps[chain:]]
        for d in order:
            ref_order.remove(d)
        chain_steps, value = list(problem.steps[:chain]), _chain_value(meta)
        bag_steps, value = _bag_steps(value, order + ref_order)
        return Problem(
            problem.question,
            tuple(chain_steps + bag_steps),
            problem.answer,
            problem.final,
            problem.band,
            meta,
        )

    def copy_variant(self, problem: Problem, rng: np.random.Generator) -> Problem:
        """The problem's reference with every result digit replaced by a random one (kept
        consistent from step to step): a solution that can only be produced by copying it."""
        value, steps = int(rng.integers(10)), []
        for step in problem.steps:
            nxt = int(rng.integers(10))
            steps.append(f"{value}{step[1]}{step[2]}={nxt};")
            value = nxt
        return Problem(problem.question, tuple(steps), str(value), f"A{value}", problem.band, problem.meta)


def _chain_steps(start: int, ops: list[str], operands: list[int]) -> tuple[list[str], int]:
    steps, value = [], start
    for o, b in zip(ops, operands):
        nxt = _OPS[o](value, b)
        steps.append(f"{value}{o}{b}={nxt};")
        value = nxt
    return steps, value


def _chain_value(meta: dict) -> int:
    return _chain_steps(meta["start"], meta["ops"], meta["operands"])[1]


def _bag_steps(value: int, order: list[int]) -> tuple[list[str], int]:
    steps = []
    for d in order:
        nxt = (value + d) % 10
        steps.append(f"{value}+{d}={nxt};")
        value = nxt
    return steps, value
