"""One data row as a Problem: which fields hold the question, the reference and the answer (the format,
from the config or the first row's keys), their text, the row's band, GSM8K's '#### N' final lines (in
any format's answer field: N is the gold answer), and the reference cut into steps (`segment`). Knows
nothing of where rows come from (atesd.tasks.sources), of held-out sets or band buckets
(atesd.tasks.math), nor of tokenizers or exposure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from atesd.grading import last_boxed, last_boxed_span
from atesd.tasks.base import Problem

if TYPE_CHECKING:
    from atesd.tasks.math import MathDataConfig

SEPARATORS = {
    "paragraph": re.compile(r"\n[ \t]*\n\s*"),
    "line": re.compile(r"\n\s*"),
    "sentence": re.compile(r"(?<=[.!?])\s+|\n\s*"),
}
_CALC = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"^####\s*(.+?)\s*$")
_DEFAULT_FIELDS = {  # (question, solution, answer) fields; no answer field: the solution's last box
    "opsd": ("problem", "solution", None),
    "benchmark": ("problem", None, "answer"),
    "gsm8k": ("question", None, "answer"),
    "fields": (None, None, None),
}


class Fields(NamedTuple):
    """Which fields of a row a problem is read from (no answer field: the solution's last box), and how."""

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
    for match in SEPARATORS[unit].finditer(text):
        if text[start : match.end()].strip():
            steps.append(text[start : match.end()])
            start = match.end()
    tail = text[start:]
    if steps and not tail.strip():
        steps[-1] += tail
    elif tail.strip():
        steps.append(tail)
    return tuple(steps)


def _missing(value: Any) -> bool:
    """None, or a float NaN: how a table (parquet, pandas, an HF dataset) stores a missing value."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _text(row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        raise ValueError(f"missing field {key!r} (fields: {', '.join(map(str, row))})")
    if _missing(row[key]):  # NaN was read as the text 'nan'
        raise ValueError(f"field {key!r} is null ({row[key]!r})")
    text = _value_text(row[key])
    if text is None:
        raise ValueError(f"field {key!r} is not text: {row[key]!r:.80}")
    if not text.strip():
        raise ValueError(f"field {key!r} is empty")
    return text


def _value_text(value: Any) -> str | None:
    """A text or number field's text (None for anything else). A float is written positionally:
    str() gave '5e-05' for 0.00005 and '2e+16' for 2e16, gold answers no boxed answer matched."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, float | np.floating):
        return np.format_float_positional(value, trim="-")
    if isinstance(value, str | int | np.integer):
        return str(value)
    return None


def _reference_text(row: Mapping[str, Any], key: str) -> str:
    """A reference solution's text with Windows line ends (\\r\\n) made \\n, so that its paragraphs
    and lines segment as they do in any other file."""
    return _text(row, key).replace("\r\n", "\n")


def resolve_fields(cfg: MathDataConfig, row: Mapping[str, Any]) -> Fields:
    """The fields to read, from the format (auto: the fields format where question_field and a
    solution or answer field are given, else from this first row's keys; a solution or answer that
    no *_field names is then read from whichever of `solution` and `answer` each row has, see
    _row_fields) and the *_field overrides."""
    fmt, question = cfg.format, None
    if fmt == "auto" and cfg.question_field and (cfg.solution_field or cfg.answer_field):
        fmt = "fields"
    elif fmt == "auto":
        fmt, question = _detect_format(cfg, row)
    default_question, solution, answer = _DEFAULT_FIELDS[fmt]
    # auto reads each row's own `solution` / `answer` where no *_field names them: naming the answer
    # field alone dropped every row's solution, the reference the teacher is shown
    per_row = cfg.format == "auto" and fmt != "gsm8k"
    if per_row:
        solution, answer = "solution", "answer"
    return Fields(
        cfg.question_field or question or default_question,
        cfg.solution_field or solution,
        cfg.answer_field or answer,
        fmt == "gsm8k",
        per_row,
    )


def _row_fields(fields: Fields, cfg: MathDataConfig, row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(solution field, answer field) of this row: the format's, or in auto format the named
    solution_field / answer_field and, for one not named, `solution` / `answer` where the row has it
    (an absent, null or blank field is not had; an answer field that is had gives the gold answer,
    else the solution's last \\boxed{} does)."""
    if not fields.per_row:
        return fields.solution, fields.answer

    def has(key: str) -> bool:
        value = row.get(key)
        return not _missing(value) and not (isinstance(value, str) and not value.strip())

    solution = fields.solution if cfg.solution_field or has("solution") else None
    answer = fields.answer if cfg.answer_field or has("answer") else None
    if not (solution or answer):
        raise ValueError(f"no 'solution' or 'answer' field with text (fields: {', '.join(map(str, row))})")
    return solution, answer


def _question_field(fields: Fields, cfg: MathDataConfig, row: Mapping[str, Any]) -> str:
    """The row's question field: the format's (or question_field's); where none is named, a row
    without the format's `problem` / `question` field may have the other (a file may mix the two)."""
    if cfg.question_field or fields.gsm8k or fields.question in row:
        return fields.question
    return next((k for k in ("problem", "question") if k in row), fields.question)


def _detect_format(cfg: MathDataConfig, row: Mapping[str, Any]) -> tuple[str, str]:
    """(format, question field) from a row's keys and the *_field names given: a `question` whose
    `answer` ends '#### N' is GSM8K; a `problem` (or `question`) with a `solution` or an `answer` is
    a problem row (opsd or benchmark)."""
    if "question" in row and "####" in str(row.get("answer", "")):
        return "gsm8k", "question"
    question = cfg.question_field or next((k for k in ("problem", "question") if k in row), None)
    solution = cfg.solution_field or "solution" in row
    if question and (solution or cfg.answer_field or "answer" in row):
        return ("opsd" if solution else "benchmark"), question
    raise ValueError(
        f"cannot tell the format from the fields {sorted(row)}: set format=fields with question_field "
        "and solution_field/answer_field"
    )


def row_problem(
    row: Mapping[str, Any], fields: Fields, cfg: MathDataConfig, meta: dict, band: str
) -> Problem:
    """One row as a Problem in `band`, or with band_field in its own band; ValueError saying what is
    wrong with a bad row."""
    if cfg.band_field:
        band = _row_band(row, cfg, meta)
    question = _text(row, _question_field(fields, cfg, row)).strip()
    if cfg.instruction:
        question += "\n\n" + cfg.instruction
    unit = cfg.segment if cfg.segment != "auto" else ("line" if fields.gsm8k else "paragraph")
    if fields.gsm8k:
        body, answer = _gsm8k_solution(_reference_text(row, fields.answer or "answer"))
        return Problem(question, segment(body, unit), answer, f"\\boxed{{{answer}}}", band, meta)
    solution_field, answer_field = _row_fields(fields, cfg, row)
    solution = _reference_text(row, solution_field) if solution_field else ""
    if answer_field:
        answer = _text(row, answer_field).strip()
        if _GSM8K_FINAL.match(answer.rsplit("\n", 1)[-1].strip()):  # GSM8K's worked answer, '... #### N'
            body, answer = _gsm8k_solution(_reference_text(row, answer_field))
            if not solution:  # its lines are the reference, as in the gsm8k format
                unit = cfg.segment if cfg.segment != "auto" else "line"
                return Problem(question, segment(body, unit), answer, f"\\boxed{{{answer}}}", band, meta)
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
    return Problem(question, segment(body, unit), answer, final, band, meta)


def _row_band(row: Mapping[str, Any], cfg: MathDataConfig, meta: dict) -> str:
    """The text of the row's band_field; with band_buckets its number too, in meta["band_value"]
    (the bands are then named once every row is read, see atesd.tasks.math._bucketed)."""
    key = cfg.band_field
    value = row.get(key)
    text = _value_text(value)
    if key not in row or _missing(value) or (text is not None and not text.strip()):
        how = "missing" if key not in row else "null" if _missing(value) else "blank"
        raise ValueError(f"the band field {key!r} (real.data.band_field) is {how} in this row")
    if text is None:
        raise ValueError(f"the band field {key!r} is not text or a number: {value!r:.80}")
    if cfg.band_buckets:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(
                f"the band field {key!r} holds {text.strip()!r:.40}, not a finite number: band_buckets needs "
                "numeric values (a rating, a pass rate); set band_buckets=0 to use the values as band names"
            )
        meta["band_value"] = number
    return text.strip()


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
