"""Real math data as a Task: OPSD training rows, AIME/HMMT benchmarks, GSM8K, any JSONL by field names.

Owns the data config, loading a source (rows read by atesd.tasks.sources, each made a Problem by
atesd.tasks.rows) with its bad rows and band buckets, the held-out evaluation and probe sets, and
grading through atesd.grading. Knows nothing of tokenizers, models or exposure (exposure.py decides
what the teacher sees).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from atesd.exposure import MATH_FORMAT
from atesd.grading import GradeConfig, grade, last_boxed_span
from atesd.tasks.base import Problem, Verdict
from atesd.tasks.rows import SEPARATORS, resolve_fields, row_problem, segment
from atesd.tasks.sources import DATA_SUFFIXES, DATASETS, open_rows, strict_json

# segment (now atesd.tasks.rows') is imported from here too, as it always was
__all__ = [
    "STUDENT_INSTRUCTION", "Format", "MathDataConfig", "MathTask", "Segment", "load_benchmark",
    "load_problems", "segment",
]  # fmt: skip

logger = logging.getLogger(__name__)

# Appended to every question (after a blank line), so it is part of Problem.question: the student
# prompt is the question alone, and the teacher's prompt opens with the same text.
STUDENT_INSTRUCTION = "Solve the problem step by step, and write your final answer inside \\boxed{}."


_SKIPPED_KEPT = 20  # how many skipped line / row numbers a MathTask keeps
Format = Literal["auto", "opsd", "benchmark", "gsm8k", "fields"]
Segment = Literal["auto", "paragraph", "line", "sentence"]


@dataclass(frozen=True)
class MathDataConfig:
    """Where the problems come from, how rows read, and which rows are held out."""

    source: str = field(
        default="opsd",
        metadata={
            "help": "a .jsonl / .json (JSON Lines), .parquet, .csv, .tsv or .arrow file, a folder (a "
            "save_to_disk folder or one of data files), an HF dataset id (owner/name), or one of "
            f"{sorted(DATASETS)} (always that named source: write ./gsm8k for a local file or folder of "
            "that name)"
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder holding the named sources' files (read instead of the HF hub; must hold the "
            "file); named sources only"
        },
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "split of an HF dataset, a named source or a local folder (default: the named source's, "
            "else 'train'); not for a local file"
        },
    )
    hf_name: str | None = field(
        default=None,
        metadata={
            "help": "HF dataset config name (gsm8k: 'main'); not for a local file or save_to_disk folder"
        },
    )
    format: Format = field(
        default="auto",
        metadata={
            "help": "opsd: problem + solution (answer = its last \\boxed{}); benchmark: problem (or "
            "question) + answer; gsm8k: question + answer ending '#### N'; fields: the *_field names; "
            "auto: from the keys, or fields where question_field and solution_field / answer_field are given "
            "(a row's own solution / answer is still read where no *_field names it)"
        },
    )
    question_field: str | None = field(
        default=None, metadata={"help": "the question's field (fields format)"}
    )
    solution_field: str | None = field(default=None, metadata={"help": "the reference solution's field"})
    answer_field: str | None = field(
        default=None, metadata={"help": "the answer's field (default: the solution's last \\boxed{})"}
    )
    segment: Segment = field(
        default="auto",
        metadata={"help": "reference steps: paragraphs, lines or sentences (auto: gsm8k lines)"},
    )
    instruction: str = field(
        default=STUDENT_INSTRUCTION, metadata={"help": "appended to every question after a blank line"}
    )
    band: str | None = field(
        default=None,
        metadata={"help": "the one band's name when band_field is unset (default: the source's name)"},
    )
    band_field: str | None = field(
        default=None,
        metadata={
            "help": "a field naming each row's difficulty band (e.g. MATH's level): one evaluation set "
            "and, under real.env.action=per_band, one alpha per band (a row without it is a bad row)"
        },
    )
    band_buckets: int = field(
        default=0,
        metadata={
            "help": "> 0: band_field is numeric (a rating, the student's pass rate) and the bands are this "
            "many quantile buckets of its values over every loaded row, named q1[lo,hi) .. qK[lo,hi]; a "
            "value tied across edges (a pass rate of 0 on many rows) is a bucket of its own, so fewer "
            "may form (warned of)"
        },
    )
    max_rows: int = field(default=0, metadata={"help": "read at most this many usable rows (0: all)"})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "skip and count bad rows instead of failing on the first"}
    )
    eval_size: int = field(
        default=0,
        metadata={"help": "rows held out for evaluation, one set per band (-1: every row)"},
    )
    probe_size: int = field(default=64, metadata={"help": "rows with a reference held out for the probe NLL"})
    seed: int = field(default=0, metadata={"help": "seed of the shuffle that picks the held-out rows"})

    def __post_init__(self) -> None:
        if not self.source.strip():  # Path("") is the current folder: it was read as a folder of data files
            raise ValueError(
                f"source is empty: name a data file, a folder, an HF dataset id or one of {sorted(DATASETS)}"
            )
        if self.format not in ("auto", "opsd", "benchmark", "gsm8k", "fields"):
            raise ValueError(f"format must be auto, opsd, benchmark, gsm8k or fields, got {self.format!r}")
        if self.segment not in ("auto", *SEPARATORS):
            raise ValueError(f"segment must be auto, paragraph, line or sentence, got {self.segment!r}")
        if self.format == "fields" and not (
            self.question_field and (self.solution_field or self.answer_field)
        ):
            raise ValueError("format 'fields' needs question_field and solution_field and/or answer_field")
        if self.max_rows < 0 or self.probe_size < 0 or self.eval_size < -1:
            raise ValueError("max_rows and probe_size must be >= 0, eval_size >= -1")
        if self.band_buckets < 0:
            raise ValueError(f"band_buckets must be >= 0, got {self.band_buckets}")
        if self.band_buckets and not self.band_field:
            raise ValueError("band_buckets needs band_field: the numeric field whose values it buckets")
        if self.band and self.band_field:
            raise ValueError(
                f"band={self.band!r} names the one band of a source without band_field; with "
                f"band_field={self.band_field!r} the bands are that field's values: leave band unset"
            )

    @property
    def band_name(self) -> str:
        """The band of every row without band_field: `band`, else the source's name (a named source,
        a folder's name, a file's name without its data suffix, an HF id's name)."""
        if self.band:
            return self.band
        if self.source in DATASETS:
            return self.source
        path = Path(self.source).expanduser()
        if path.is_dir():
            return path.resolve().name
        name = path.name
        suffix = next((s for s in DATA_SUFFIXES if name.lower().endswith(s)), "")
        return name[: len(name) - len(suffix)] or name


def load_problems(cfg: MathDataConfig) -> tuple[list[Problem], int]:
    """Every usable row of cfg's source (up to max_rows) as Problems, and how many bad rows were
    skipped. A bad row (invalid JSON, a missing field, no answer, no band) raises ValueError naming
    the file and its 1-based line (a table, folder or HF dataset: row), unless cfg.skip_bad_rows."""
    problems, skipped = _load(cfg)
    return problems, len(skipped)


def _load(cfg: MathDataConfig) -> tuple[list[Problem], list[int]]:
    """load_problems, with the numbers of the lines (rows) skipped."""
    where, unit, rows = open_rows(cfg)
    band = cfg.band_name
    problems: list[Problem] = []
    skipped: list[int] = []
    fields = None
    for lineno, raw in rows:
        try:
            row = strict_json(raw) if isinstance(raw, (str, bytes)) else raw  # bytes: UTF-8 or a ValueError
            if not isinstance(row, Mapping):
                raise ValueError(f"not a JSON object: {raw!r:.80}")
            fields = fields or resolve_fields(cfg, row)
            problems.append(row_problem(row, fields, cfg, {"source": where, unit: lineno}, band))
        except ValueError as exc:  # json.JSONDecodeError is one
            if not cfg.skip_bad_rows:
                raise ValueError(f"{where}, {unit} {lineno}: {exc}") from exc
            skipped.append(lineno)
        if cfg.max_rows and len(problems) >= cfg.max_rows:
            break
    if skipped:
        logger.warning("skipped %d bad rows of %s", len(skipped), where)
    if not problems:
        raise ValueError(f"{where}: no usable rows")
    if cfg.band_buckets:
        problems = _bucketed(problems, cfg.band_buckets, f"{where}: band_field {cfg.band_field!r}")
    return problems, skipped


def _bucketed(problems: list[Problem], k: int, what: str) -> list[Problem]:
    """The problems with their bands the k quantile buckets of meta["band_value"] (edges from every
    problem, so held-out and training rows share them), named so that they sort in order and say
    their range: q1[0.00,0.25) .. q4[0.75,1.00]. Where values tie (pass rates: many rows at 0), a value
    at several edges is a bucket of its own, q1[0.00,0.00], the next one open there, q2(0.00,0.33), and
    buckets no value falls in are dropped, so fewer than k may form (warned of): merely dropping the
    empty buckets refused k=4 on pass rates. Equal values always share a bucket; one bucket holding
    every row is refused."""
    values = np.array([p.meta["band_value"] for p in problems])
    raw = np.quantile(values, np.linspace(0, 1, k + 1))
    edges, repeats = np.unique(raw, return_counts=True)
    tied = repeats > 1
    last = len(edges) - 1
    # bucket keys, in order: (j, 0) the tied edge j alone; (j, 1) the values between edges j and j + 1
    # (at edge j too where it is not tied; at the last edge too, where it is not tied, as (last - 1, 1))
    at = np.searchsorted(edges, values, side="right") - 1
    on_edge = values == edges[at]
    keys = [
        (j, 0) if on and tied[j] else (min(j, last - 1), 1) for j, on in zip(at.tolist(), on_edge.tolist())
    ]
    formed = sorted(set(keys))
    if len(formed) < min(k, 2):
        raise ValueError(
            f"{what}: its {len(values)} values ({len(np.unique(values))} distinct) form one band, not "
            f"band_buckets={k} quantile buckets: bucket a field whose values differ, or set band_buckets=0"
        )
    if len(formed) < k:
        logger.warning(
            "%s: band_buckets=%d asked, %d formed: its %d values (%d distinct) tie at quantile edges (a "
            "tied value is one bucket) or leave buckets empty",
            what,
            k,
            len(formed),
            len(values),
            len(np.unique(values)),
        )
    # integers as they are; else 2 decimals, or more where 2 would print two edges alike
    distinct = (d for d in range(2, 7) if len({f"{e:.{d}f}" for e in edges}) == len(edges))
    digits = 0 if np.all(edges == np.round(edges)) else next(distinct, 6)
    width = len(str(len(formed)))

    def name(i: int, key: tuple[int, int]) -> str:
        j, between = key
        lo, hi = edges[j], edges[j + between]
        left = "(" if between and tied[j] else "["
        right = "]" if not between or (j + 1 == last and not tied[last]) else ")"
        return f"q{i + 1:0{width}d}{left}{lo:.{digits}f},{hi:.{digits}f}{right}"

    names = {key: name(i, key) for i, key in enumerate(formed)}
    return [replace(p, band=names[key]) for p, key in zip(problems, keys)]


# ---- the task -------------------------------------------------------------------------------
class MathTask:
    """Math problems with references, graded by their final boxed answer (atesd.grading).

    Build one from a config (`MathTask.from_config`, `load_benchmark`) or from Problem lists, e.g. to
    train on one source and evaluate on others: `MathTask(train.train, {**a.eval_sets(),
    **b.eval_sets()}, train.probe_set())`.
    """

    prompt_format = MATH_FORMAT

    def __init__(
        self,
        train: Sequence[Problem],
        evals: Mapping[str, Sequence[Problem]],
        probe: Sequence[Problem] = (),
        grade_cfg: GradeConfig | None = None,
        skipped: int = 0,
        skipped_lines: Sequence[int] = (),
    ) -> None:
        self.train = list(train)
        self._evals = {band: list(problems) for band, problems in evals.items()}
        self._probe = [p for p in probe if p.steps]
        # a completion's answer is its last box: a one-line completion without one is not an answer
        # (the bare-answer rule is for answer-only inputs, not for a model's output)
        self.grade_cfg = grade_cfg or GradeConfig(bare_answer_chars=0)
        self.skipped = skipped  # bad rows skipped while loading
        self.skipped_lines = list(skipped_lines)[:_SKIPPED_KEPT]  # the first of their line (row) numbers

    @classmethod
    def from_config(cls, cfg: MathDataConfig, grade_cfg: GradeConfig | None = None) -> MathTask:
        """cfg's rows: eval_size of them (chosen by a seeded shuffle, kept in file order) form the
        evaluation sets (one per band), then probe_size rows with a reference the probe set, the rest
        the training pool, less every row that repeats a held-out question (whitespace aside).
        Unless eval_size is -1 (every row evaluated, no training), held-out sets that leave no row
        for training are refused, and ones that leave less than half the rows are warned of."""
        problems, skipped = _load(cfg)
        order = np.random.default_rng(cfg.seed).permutation(len(problems))
        n_eval = len(problems) if cfg.eval_size == -1 else min(cfg.eval_size, len(problems))
        held = set(order[:n_eval].tolist())
        probe = [int(i) for i in order[n_eval:] if problems[i].steps][: cfg.probe_size]
        held_out = held | set(probe)
        held_questions = {_question_key(problems[i]) for i in held_out}
        train = [
            p for i, p in enumerate(problems) if i not in held_out and _question_key(p) not in held_questions
        ]
        repeats = len(problems) - len(held_out) - len(train)
        if repeats:
            logger.warning(
                "%d rows of %s repeat the question of a held-out (evaluation or probe) row: left out of "
                "training",
                repeats,
                cfg.band_name,
            )
        evaluated = [problems[i] for i in sorted(held)]
        twice = len(evaluated) - len({_question_key(p) for p in evaluated})
        if twice:
            logger.warning(
                "%d of the %d evaluation rows of %s repeat the question of another evaluation row (each "
                "is still evaluated)",
                twice,
                len(evaluated),
                cfg.band_name,
            )
        bands = sorted({p.band for p in evaluated})
        evals = {band: [p for p in evaluated if p.band == band] for band in bands}
        if cfg.eval_size != -1 and len(train) * 2 < len(problems):  # none, or under half
            counts = (
                f"eval_size={cfg.eval_size} and probe_size={cfg.probe_size} hold out {n_eval} and "
                f"{len(probe)} of the {len(problems)} usable rows of {cfg.band_name}"
            )
            if repeats:
                counts += f" ({repeats} more repeat their questions)"
            if not train:
                raise ValueError(f"{counts}, leaving none for training: lower eval_size or probe_size")
            logger.warning("%s, leaving %d for training", counts, len(train))
        if cfg.band_field and evals:
            unevaluated = sorted({p.band for p in train} - set(evals))
            if unevaluated:
                logger.warning(
                    "bands of %s with training rows but no evaluation row (each still has its alpha under "
                    "the per-band action; raise eval_size to evaluate them): %s",
                    cfg.band_name,
                    ", ".join(unevaluated),
                )
        return cls(train, evals, [problems[i] for i in probe], grade_cfg, len(skipped), skipped)

    def sample(self, rng: np.random.Generator, n: int) -> list[Problem]:
        """n training problems drawn uniformly (without replacement when the pool is large enough)."""
        if not self.train:
            raise ValueError("this task has no training problems: every row is held out (eval_size)")
        idx = rng.choice(len(self.train), size=n, replace=n > len(self.train))
        return [self.train[int(i)] for i in idx]

    def eval_sets(self) -> dict[str, list[Problem]]:
        """The held-out evaluation problems per band (from a config: in sorted band order)."""
        return self._evals

    def action_bands(self) -> tuple[str, ...]:
        """The bands a per-band exposure gives one alpha each: the training problems' and the
        evaluation sets', sorted (a band with training rows but no evaluation row still needs an
        alpha: its training problems take it by their own band, atesd.tasks.base.action_band)."""
        return tuple(sorted({p.band for p in self.train} | set(self._evals)))

    def probe_set(self) -> list[Problem]:
        """Held-out problems with non-empty references (the probe NLL scores their solutions)."""
        return self._probe

    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Graded by the completion's last boxed answer; path_valid means an answer was extracted
        (there is no notion of a valid reasoning path here)."""
        g = grade(completion, problem.answer, self.grade_cfg)
        return Verdict(
            correct=g.correct,
            answer_correct=g.correct,
            path_valid=g.predicted is not None,
            predicted=g.predicted,
            method=g.method,
        )

    def reasoning(self, completion: str) -> str:
        """The completion cut before its last box (where the grounded score appends problem.final)."""
        span = last_boxed_span(completion)
        return completion if span is None else completion[: span[0]]

    def path_matched(self, problem: Problem, completion: str) -> Problem:
        raise NotImplementedError(
            "MathTask has no notion of a solution path to re-order the reference along, so the "
            "path-matched control is not available: use engine.exposure.reference=own or other"
        )


def _question_key(problem: Problem) -> str:
    """A question with its runs of whitespace made one space: what makes two rows the same problem."""
    return " ".join(problem.question.split())


def load_benchmark(
    name_or_path: str, data_dir: str | Path | None = None, grade_cfg: GradeConfig | None = None
) -> MathTask:
    """A benchmark as an evaluation-only MathTask (every row evaluated, in one band, no training
    pool): a name in BENCHMARKS (or DATASETS) read from data_dir/<file> when data_dir is given, else
    from its HF id; or a data file or folder; or an HF dataset id."""
    cfg = MathDataConfig(
        source=name_or_path, data_dir=None if data_dir is None else str(data_dir), eval_size=-1
    )
    return MathTask.from_config(cfg, grade_cfg)
