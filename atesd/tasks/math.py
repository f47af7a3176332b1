"""Real math data as a Task: OPSD training rows, AIME/HMMT benchmarks, GSM8K, any JSONL by field names.

Owns reading rows (a local JSONL, or an HF dataset through `datasets`, imported lazily), turning each
row into a Problem (the question plus the boxed-answer instruction, the reference split into steps,
the gold answer), the held-out evaluation and probe sets, and grading through atesd.grading. Knows
nothing of tokenizers, models or exposure (exposure.py decides what the teacher sees).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from atesd.exposure import MATH_FORMAT
from atesd.grading import GradeConfig, grade, last_boxed, last_boxed_span
from atesd.tasks.base import Problem, Verdict

logger = logging.getLogger(__name__)

# Appended to every question (after a blank line), so it is part of Problem.question: the student
# prompt is the question alone, and the teacher's prompt opens with the same text.
STUDENT_INSTRUCTION = "Solve the problem step by step, and write your final answer inside \\boxed{}."


class DataSource(NamedTuple):
    """A named data set: its HF dataset id and split, and its file name in a local data folder."""

    hf_id: str
    split: str
    file: str


BENCHMARKS: dict[str, DataSource] = {
    "aime24": DataSource("HuggingFaceH4/aime_2024", "train", "aime24.jsonl"),
    "aime25": DataSource("yentinglin/aime_2025", "train", "aime25.jsonl"),
    "hmmt25": DataSource("MathArena/hmmt_feb_2025", "train", "hmmt25.jsonl"),
}
DATASETS: dict[str, DataSource] = {
    **BENCHMARKS,
    "gsm8k": DataSource("openai/gsm8k", "train", "gsm8k_train.jsonl"),
    "gsm8k_test": DataSource("openai/gsm8k", "test", "gsm8k_test.jsonl"),
    "opsd": DataSource("siyanzhao/Openthoughts_math_30k_opsd", "train", "openthoughts_math_30k_opsd.jsonl"),
}
_HF_CONFIG_NAMES = {"openai/gsm8k": "main"}  # datasets that need a config name to load
_SEPARATORS = {
    "paragraph": re.compile(r"\n[ \t]*\n\s*"),
    "line": re.compile(r"\n\s*"),
    "sentence": re.compile(r"(?<=[.!?])\s+|\n\s*"),
}
_CALC = re.compile(r"<<[^<>]*>>")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")  # a source named so is a path
_NOT_JSONL = (".parquet", ".csv", ".tsv", ".arrow")
_GSM8K_FINAL = re.compile(r"^####\s*(.+?)\s*$")
_DEFAULT_FIELDS = {  # (question, solution, answer) fields; no answer field: the solution's last box
    "opsd": ("problem", "solution", None),
    "benchmark": ("problem", None, "answer"),
    "gsm8k": ("question", None, "answer"),
    "fields": (None, None, None),
}
Format = Literal["auto", "opsd", "benchmark", "gsm8k", "fields"]
Segment = Literal["auto", "paragraph", "line", "sentence"]


@dataclass(frozen=True)
class MathDataConfig:
    """Where the problems come from, how rows read, and which rows are held out."""

    source: str = field(
        default="opsd",
        metadata={"help": f"a .jsonl path, an HF dataset id (owner/name), or one of {sorted(DATASETS)}"},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder holding the named sources' files (read instead of the HF hub; must hold the file)"
        },
    )
    split: str | None = field(
        default=None, metadata={"help": "HF split (default: the named source's, else 'train')"}
    )
    hf_name: str | None = field(default=None, metadata={"help": "HF dataset config name (gsm8k: 'main')"})
    format: Format = field(
        default="auto",
        metadata={
            "help": "opsd: problem + solution (answer = its last \\boxed{}); benchmark: problem + answer; "
            "gsm8k: question + answer ending '#### N'; fields: the *_field names; auto: from the keys"
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
    band: str | None = field(default=None, metadata={"help": "evaluation band name (default: the source's)"})
    max_rows: int = field(default=0, metadata={"help": "read at most this many usable rows (0: all)"})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "skip and count bad rows instead of failing on the first"}
    )
    eval_size: int = field(
        default=0, metadata={"help": "rows held out as the evaluation band (-1: every row)"}
    )
    probe_size: int = field(default=64, metadata={"help": "rows with a reference held out for the probe NLL"})
    seed: int = field(default=0, metadata={"help": "seed of the shuffle that picks the held-out rows"})

    def __post_init__(self) -> None:
        if self.format not in ("auto", "opsd", "benchmark", "gsm8k", "fields"):
            raise ValueError(f"format must be auto, opsd, benchmark, gsm8k or fields, got {self.format!r}")
        if self.segment not in ("auto", *_SEPARATORS):
            raise ValueError(f"segment must be auto, paragraph, line or sentence, got {self.segment!r}")
        if self.format == "fields" and not (
            self.question_field and (self.solution_field or self.answer_field)
        ):
            raise ValueError("format 'fields' needs question_field and solution_field and/or answer_field")
        if self.max_rows < 0 or self.probe_size < 0 or self.eval_size < -1:
            raise ValueError("max_rows and probe_size must be >= 0, eval_size >= -1")

    @property
    def band_name(self) -> str:
        if self.band:
            return self.band
        if self.source in DATASETS:
            return self.source
        return Path(self.source).stem if self.source.endswith(".jsonl") else self.source.split("/")[-1]


class _Fields(NamedTuple):
    question: str
    solution: str | None
    answer: str | None
    gsm8k: bool
    per_row: bool = False  # auto: each row's own solution / answer fields (not the *_field overrides)


# ---- text ---------------------------------------------------------------------------------------
def segment(text: str, unit: Literal["paragraph", "line", "sentence"]) -> tuple[str, ...]:
    """`text` split into steps that keep their trailing separators ("".join(steps) == text, except
    that a text of whitespace alone has no steps); runs of whitespace never form a step of their own."""
    steps: list[str] = []
    start = 0
    for match in _SEPARATORS[unit].finditer(text):
        if text[start : match.end()].strip():
            steps.append(text[start : match.end()])
            start = match.end()
    tail = text[start:]
    if steps and not tail.strip():
        steps[-1] += tail
    elif tail.strip():
        steps.append(tail)
    return tuple(steps)


def _text(row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        raise ValueError(f"missing field {key!r} (fields: {', '.join(map(str, row))})")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"field {key!r} is not text: {value!r:.80}")
    if not str(value).strip():
        raise ValueError(f"field {key!r} is empty")
    return str(value)


def _reference_text(row: Mapping[str, Any], key: str) -> str:
    """A reference solution's text with Windows line ends (\\r\\n) made \\n, so that its paragraphs
    and lines segment as they do in any other file."""
    return _text(row, key).replace("\r\n", "\n")


def _resolve_fields(cfg: MathDataConfig, row: Mapping[str, Any]) -> _Fields:
    """The fields to read, from the format (auto: from this first row's keys; a problem row's
    solution and answer are then read from whichever of them each row has, see _row_fields) and
    the *_field overrides."""
    fmt = cfg.format if cfg.format != "auto" else _detect_format(row)
    question, solution, answer = _DEFAULT_FIELDS[fmt]
    per_row = cfg.format == "auto" and fmt != "gsm8k"
    if per_row:
        solution, answer = "solution", "answer"
    return _Fields(
        cfg.question_field or question,
        cfg.solution_field or solution,
        cfg.answer_field or answer,
        fmt == "gsm8k",
        per_row,
    )


def _row_fields(
    fields: _Fields, cfg: MathDataConfig, row: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """(solution field, answer field) of this row: the format's, or in auto format whichever of
    `solution` and `answer` the row has (an absent, null or blank field is not had; an answer field
    that is had gives the gold answer, else the solution's last \\boxed{} does)."""
    if not fields.per_row:
        return fields.solution, fields.answer

    def has(key: str) -> bool:
        value = row.get(key)
        return value is not None and not (isinstance(value, str) and not value.strip())

    solution = fields.solution if cfg.solution_field or has("solution") else None
    answer = fields.answer if cfg.answer_field or has("answer") else None
    if not (solution or answer):
        raise ValueError(f"no 'solution' or 'answer' field with text (fields: {', '.join(map(str, row))})")
    return solution, answer


def _detect_format(row: Mapping[str, Any]) -> str:
    if "question" in row and "####" in str(row.get("answer", "")):
        return "gsm8k"
    if "problem" in row and ("solution" in row or "answer" in row):
        return "opsd" if "solution" in row else "benchmark"
    raise ValueError(f"cannot tell the format from the fields {sorted(row)}: set format or the *_field names")


def _problem(row: Mapping[str, Any], fields: _Fields, cfg: MathDataConfig, meta: dict) -> Problem:
    """One row as a Problem; ValueError saying what is wrong with a bad row."""
    question = _text(row, fields.question).strip()
    if cfg.instruction:
        question += "\n\n" + cfg.instruction
    unit = cfg.segment if cfg.segment != "auto" else ("line" if fields.gsm8k else "paragraph")
    if fields.gsm8k:
        body, answer = _gsm8k_solution(_reference_text(row, fields.answer or "answer"))
        return Problem(question, segment(body, unit), answer, f"\\boxed{{{answer}}}", cfg.band_name, meta)
    solution_field, answer_field = _row_fields(fields, cfg, row)
    solution = _reference_text(row, solution_field) if solution_field else ""
    if answer_field:
        answer = _text(row, answer_field).strip()
    else:
        answer = (last_boxed(solution) or "").strip()
        if not answer:
            raise ValueError(f"no \\boxed{{}} answer in the solution field {solution_field!r}")
    span = last_boxed_span(solution)
    if not solution:
        body, final = "", f"\\boxed{{{answer}}}"
    elif span is None:  # a solution that never boxes its answer: the boxed answer goes on a new line
        body, final = solution if solution[-1].isspace() else solution + "\n", f"\\boxed{{{answer}}}"
    else:
        body, final = solution[: span[0]], solution[span[0] :]
    return Problem(question, segment(body, unit), answer, final, cfg.band_name, meta)


def _gsm8k_solution(text: str) -> tuple[str, str]:
    """(the solution lines with their <<calc>> annotations removed, the answer of the final '#### N'
    line with thousands separators removed)."""
    lines = text.rstrip().split("\n")
    final = _GSM8K_FINAL.match(lines[-1].strip())
    if final is None:
        raise ValueError("the answer field does not end with a '#### N' line")
    answer = final.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", answer):
        answer = answer.replace(",", "")
    return _CALC.sub("", "\n".join(lines[:-1]) + "\n" if len(lines) > 1 else ""), answer


# ---- reading --------------------------------------------------------------------------------
def local_file(source: str, known: DataSource, split: str | None) -> str:
    """The file in a data folder that holds `split` of a named source: its own, or the file of the
    named source with the same HF id and that split (gsm8k with split 'test': gsm8k_test.jsonl)."""
    if split is None or split == known.split:
        return known.file
    for other in DATASETS.values():
        if other.hf_id == known.hf_id and other.split == split:
            return other.file
    splits = sorted({d.split for d in DATASETS.values() if d.hf_id == known.hf_id})
    raise ValueError(
        f"{source}: split {split!r} is in no data_dir file (they hold split {', '.join(splits)}); leave "
        f"data_dir unset to read it from the Hugging Face hub, {known.hf_id}"
    )


def _resolve_source(cfg: MathDataConfig) -> Path | tuple[str, str | None, str]:
    """A local file, or (HF id, HF config name, split): a named source's file of cfg.split in
    data_dir (which must hold it when given: a mistyped folder never turns into a download), else a
    path (a name ending in a data file's extension is always one), else the named source's or the
    given HF id."""
    known = DATASETS.get(cfg.source)
    if known and cfg.data_dir:
        file = local_file(cfg.source, known, cfg.split)
        local = Path(cfg.data_dir).expanduser() / file
        if not local.is_file():
            raise FileNotFoundError(
                f"{cfg.source}: no {file} in data_dir {cfg.data_dir} (leave data_dir unset to read "
                f"it from the Hugging Face hub, {known.hf_id})"
            )
        return local
    path = Path(cfg.source).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() in _DATA_SUFFIXES:
        raise FileNotFoundError(f"no such data file: {path}")
    hf_id, split = (known.hf_id, known.split) if known else (cfg.source, "train")
    if known or re.fullmatch(r"[\w.-]+/[\w.-]+", cfg.source):
        return hf_id, cfg.hf_name or _HF_CONFIG_NAMES.get(hf_id), cfg.split or split
    raise ValueError(
        f"unknown data source {cfg.source!r}: give a .jsonl path, an HF dataset id (owner/name) "
        f"or one of {sorted(DATASETS)}"
    )


def _hf_rows(hf_id: str, name: str | None, split: str) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"loading the HF dataset {hf_id!r} needs the `datasets` package: pip install -e '.[eval]' "
            "(or give a local .jsonl path)"
        ) from exc
    return enumerate(datasets.load_dataset(hf_id, name, split=split), start=1)


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Non-blank lines as bytes: each is decoded (UTF-8) with its JSON, so an undecodable line is a bad
    row named by its line number, like any other. A file that is not JSON Lines (a .parquet or .csv
    file, a JSON array) is refused in one line."""
    only = "only JSON Lines (one JSON object a line, .jsonl) is read from a local file: convert it"
    if path.suffix.lower() in _NOT_JSONL:
        raise ValueError(f"{path}: a {path.suffix} file; {only}")
    with path.open("rb") as f:
        if f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise ValueError(f"{path}: a JSON array; {only}")
    return _lines(path)


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def strict_json(raw: str | bytes) -> Any:
    """One JSON row, refusing what json.loads lets through silently: a key given twice (it keeps the
    last), NaN / Infinity literals, numbers too large for a float (1e400 became the answer "inf") and
    strings with lone surrogates (which crash later, at tokenisation). ValueError saying which."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"the key {key!r} is given twice")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON (a non-standard literal)")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text} is too large for a float")
        return value

    row = json.loads(raw, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    _check_strings(row)
    return row


def _check_strings(node: Any) -> None:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"a string holds a lone surrogate (not Unicode text): {node!r:.60}") from None
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _check_strings(key)
            _check_strings(value)
    elif isinstance(node, list):
        for value in node:
            _check_strings(value)


def load_problems(cfg: MathDataConfig) -> tuple[list[Problem], int]:
    """Every usable row of cfg's source (up to max_rows) as Problems, and how many bad rows were
    skipped. A bad row (invalid JSON, a missing field, no answer) raises ValueError naming the file
    and its 1-based line (HF: row), unless cfg.skip_bad_rows."""
    source = _resolve_source(cfg)
    if isinstance(source, Path):
        where, unit, rows = str(source), "line", _file_rows(source)
    else:
        where, unit, rows = f"{source[0]}[{source[2]}]", "row", _hf_rows(*source)
    problems: list[Problem] = []
    skipped, fields = 0, None
    for lineno, raw in rows:
        try:
            row = strict_json(raw) if isinstance(raw, (str, bytes)) else raw  # bytes: UTF-8 or a ValueError
            if not isinstance(row, Mapping):
                raise ValueError(f"not a JSON object: {raw!r:.80}")
            fields = fields or _resolve_fields(cfg, row)
            problems.append(_problem(row, fields, cfg, {"source": where, unit: lineno}))
        except ValueError as exc:  # json.JSONDecodeError is one
            if not cfg.skip_bad_rows:
                raise ValueError(f"{where}, {unit} {lineno}: {exc}") from exc
            skipped += 1
        if cfg.max_rows and len(problems) >= cfg.max_rows:
            break
    if skipped:
        logger.warning("skipped %d bad rows of %s", skipped, where)
    if not problems:
        raise ValueError(f"{where}: no usable rows")
    return problems, skipped


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
    ) -> None:
        self.train = list(train)
        self._evals = {band: list(problems) for band, problems in evals.items()}
        self._probe = [p for p in probe if p.steps]
        # a completion's answer is its last box: a one-line completion without one is not an answer
        # (the bare-answer rule is for answer-only inputs, not for a model's output)
        self.grade_cfg = grade_cfg or GradeConfig(bare_answer_chars=0)
        self.skipped = skipped  # bad rows skipped while loading

    @classmethod
    def from_config(cls, cfg: MathDataConfig, grade_cfg: GradeConfig | None = None) -> MathTask:
        """cfg's rows: eval_size of them (chosen by a seeded shuffle, kept in file order) form the
        evaluation band, then probe_size rows with a reference the probe set, the rest the training
        pool. Unless eval_size is -1 (every row evaluated, no training), held-out sets that leave no
        row for training are refused, and ones that take more than half the rows are warned of."""
        problems, skipped = load_problems(cfg)
        order = np.random.default_rng(cfg.seed).permutation(len(problems))
        n_eval = len(problems) if cfg.eval_size == -1 else min(cfg.eval_size, len(problems))
        held = set(order[:n_eval].tolist())
        probe = [int(i) for i in order[n_eval:] if problems[i].steps][: cfg.probe_size]
        held_out = held | set(probe)
        evals = {cfg.band_name: [problems[i] for i in sorted(held)]} if held else {}
        train = [p for i, p in enumerate(problems) if i not in held_out]
        if cfg.eval_size != -1 and len(held_out) * 2 > len(problems):
            counts = (
                f"eval_size={cfg.eval_size} and probe_size={cfg.probe_size} hold out {n_eval} and "
                f"{len(probe)} of the {len(problems)} usable rows of {cfg.band_name}"
            )
            if not train:
                raise ValueError(f"{counts}, leaving none for training: lower eval_size or probe_size")
            logger.warning("%s, leaving %d for training", counts, len(train))
        return cls(train, evals, [problems[i] for i in probe], grade_cfg, skipped)

    def sample(self, rng: np.random.Generator, n: int) -> list[Problem]:
        """n training problems drawn uniformly (without replacement when the pool is large enough)."""
        if not self.train:
            raise ValueError("this task has no training problems: every row is held out (eval_size)")
        idx = rng.choice(len(self.train), size=n, replace=n > len(self.train))
        return [self.train[int(i)] for i in idx]

    def eval_sets(self) -> dict[str, list[Problem]]:
        return self._evals

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


def load_benchmark(
    name_or_path: str, data_dir: str | Path | None = None, grade_cfg: GradeConfig | None = None
) -> MathTask:
    """A benchmark as an evaluation-only MathTask (every row in one band, no training pool): a name
    in BENCHMARKS (or DATASETS) read from data_dir/<file> when data_dir is given, else from its HF
    id; or a .jsonl path; or an HF dataset id."""
    cfg = MathDataConfig(
        source=name_or_path, data_dir=None if data_dir is None else str(data_dir), eval_size=-1
    )
    return MathTask.from_config(cfg, grade_cfg)
