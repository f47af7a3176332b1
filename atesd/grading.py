"""Grading a final answer against a gold one (the OPSD/ATESD evaluation protocol).

Owns answer extraction (the last `\\boxed{}`), string normalisation, and equivalence: math-verify with
the gold first, under our own thread-based timeout (atesd.timeouts), then a normalised string compare
as fallback. Knows nothing of tasks, models or prompts. math-verify (the `[eval]` extra) is imported
lazily; without it grading is the string compare alone, said once in the log.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from atesd.timeouts import _run_with_timeout

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[eval]'  (or: pip install math-verify)"
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\\\|\\[{}]|[{}]")  # a line break `\\`, an escaped brace `\{` (not a group), a brace


class MathVerifyMissing(ImportError):
    """math-verify was required (GradeConfig.math_verify="require") but is not installed."""

    def __init__(self) -> None:
        super().__init__(f"math-verify is required for this grading but is not installed: {INSTALL_HINT}")


@dataclass(frozen=True)
class GradeConfig:
    """How a prediction is graded."""

    timeout_s: float = field(
        default=5.0,
        metadata={
            "help": "give up on one math-verify check after this much of its own CPU time, or ten times "
            "as long on the clock (the string compare decides)"
        },
    )
    math_verify: Literal["auto", "require", "off"] = field(
        default="auto",
        metadata={
            "help": "auto: math-verify when installed, else the string compare; require: fail without "
            "it; off: string compare only"
        },
    )
    bare_answer_chars: int = field(
        default=64,
        metadata={
            "help": "a prediction with no \\boxed{} that is one line of at most this many characters is "
            "taken as a bare answer (0: never; MathTask grades a model's completions with 0, so a "
            "completion's answer is its last box)"
        },
    )
    max_answer_chars: int = field(
        default=1000, metadata={"help": "longer extracted answers skip math-verify (string compare only)"}
    )
    max_digits: int = field(
        default=10_000,
        metadata={
            "help": "answers whose exact evaluation could build integers of more decimal digits skip "
            "math-verify: big-integer arithmetic holds the GIL and no thread timeout can stop it"
        },
    )

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.math_verify not in ("auto", "require", "off"):
            raise ValueError(f"math_verify must be auto, require or off, got {self.math_verify!r}")
        for name in ("bare_answer_chars", "max_answer_chars", "max_digits"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Grade:
    """One graded prediction.

    method: "math_verify" when math-verify ran and decided (the string compare did not overturn a
    no), "string" when the normalised string compare decided, "timeout" when math-verify ran past
    timeout_s (the string compare decides), "no_answer" when nothing could be extracted.
    """

    correct: bool
    method: Literal["math_verify", "string", "timeout", "no_answer"]
    predicted: str | None


# ---- extraction -----------------------------------------------------------------------------
def last_boxed_span(text: str) -> tuple[int, int, int, int] | None:
    """(start of `\\boxed{`, start of content, end of content, end after `}`) of the last box whose
    braces close and that holds something, or None. `\\fbox{}` counts as a box; nested braces are
    matched; an empty box (a model repeating "put your answer in \\boxed{}") is passed over."""
    openers = list(_BOX_OPEN.finditer(text))
    if not openers:
        return None
    closing: dict[int, int] = {}  # position of each "{" that closes -> position of its "}"
    stack: list[int] = []
    for brace in _BRACE.finditer(text, openers[0].end() - 1):
        if brace.group().startswith("\\"):  # `\left\{` of a piecewise answer, `\\{`: no group
            continue
        if brace.group() == "{":
            stack.append(brace.start())
        elif stack:
            closing[stack.pop()] = brace.start()
    for opener in reversed(openers):
        end = closing.get(opener.end() - 1)
        if end is not None and text[opener.end() : end].strip():
            return opener.start(), opener.end(), end, end + 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}` in `text` (brace-matched), or None.

    A box left unclosed (a truncated completion) is passed over for the last one that closes.
    """
    span = last_boxed_span(text)
    return None if span is None else text[span[1] : span[2]]


def extract_answer(prediction: str, bare_answer_chars: int = 64) -> str | None:
    """The last boxed answer of `prediction`; with no box, the whole stripped prediction when it is
    one line of at most `bare_answer_chars` characters (a bare answer such as "42" or "$1/2$")."""
    boxed = last_boxed(prediction)
    if boxed is not None:
        return boxed.strip()
    if _BOX_OPEN.search(prediction):  # only empty or unclosed boxes: no answer, not a bare one
        return None
    bare = prediction.strip()
    if bare and "\n" not in bare and len(bare) <= bare_answer_chars:
        return bare
    return None


# ---- the string fallback --------------------------------------------------------------------
_REMOVE = re.compile(
    r"\\?\$|\\[()\[\]]|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle|\\[!,;: ]|\\q?quad"
    r"|\^\s*\{?\s*\\circ\s*\}?|°"
)
_PERCENT = re.compile(r"\\?%")
_UNIT_SUFFIX = re.compile(r"^(.*[\d}])\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_LEADING_VAR = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?=(?=.)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS = re.compile(r"-?\d{1,3}(?:\s\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"(-?)(\d*)\.(\d+)")


_UNICODE_SQRT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]*\)|\{[^{}]*\})")
_VULGAR = re.compile(r"(?:(?<![\d.])(\d+))?\s*([\u00bc-\u00be\u2150-\u215e])")  # 2½: (2, ½)


def _vulgar(m: re.Match[str]) -> str:
    """A vulgar fraction as \\frac{a}{b}; a mixed number as one fraction (`2½` is \\frac{5}{2}, so
    `-2½` is -5/2, not -2 + 1/2; NFKC alone would read it 21/2)."""
    numerator, _, denominator = unicodedata.normalize("NFKC", m.group(2)).partition("\u2044")
    whole = m.group(1)
    if not whole:
        return f"\\frac{{{numerator}}}{{{denominator}}}"
    if len(whole) > 100:  # past what int() reads quickly (or at all): the sum, in parentheses
        return f"({whole}+\\frac{{{numerator}}}{{{denominator}}})"
    return f"\\frac{{{int(whole) * int(denominator) + int(numerator)}}}{{{denominator}}}"


def _script(char: str) -> str:
    """`^` for a superscript character (`²`, `⁻`, `ⁿ`, `⁽`, `ᵀ`...), `_` for a subscript (`₁`, `ₙ`),
    "" for any other: Unicode's own <super> and <sub> compatibility decompositions."""
    if char.isascii():
        return ""
    decomposition = unicodedata.decomposition(char)
    return "^" if decomposition.startswith("<super>") else "_" if decomposition.startswith("<sub>") else ""


def plain_math(text: str) -> str:
    """Unicode mathematics in the ASCII / LaTeX a grader reads: a run of superscripts as a power and
    one of subscripts as an index (`x²` -> `x^{2}`, `2ⁿ⁻¹` -> `2^{n-1}`, `x₁` -> `x_{1}`; not NFKC's
    `x2`, `2n-1`, `x1`), vulgar fractions and mixed numbers (`½` -> `\\frac{1}{2}`, `2½` ->
    `\\frac{5}{2}`), other compatibility forms by NFKC (fullwidth `３`), `√2` and `√(x+1)` as
    `\\sqrt{...}`, the minus sign U+2212 as `-`. ASCII text comes back unchanged."""
    if text.isascii():
        return text
    text = "".join(
        f"{kind}{{{unicodedata.normalize('NFKC', ''.join(run))}}}" if kind else "".join(run)
        for kind, run in itertools.groupby(text, _script)
    )
    text = _VULGAR.sub(_vulgar, text)
    text = unicodedata.normalize("NFKC", text).replace("\u2044", "/").replace("\u2212", "-")

    def root(m: re.Match[str]) -> str:
        inner = m.group(1)
        return "\\sqrt{" + (inner[1:-1] if inner[0] in "({" else inner) + "}"

    return _UNICODE_SQRT.sub(root, text)


def normalise(answer: str, drop_variable: bool = True, keep_percent: bool = False) -> str:
    """A canonical string form of a final answer, for the string compare.

    Takes a whole-string box's content; drops $ (escaped or not) and math delimiters, \\left/\\right,
    spacing commands (\\! \\, \\; \\quad), \\displaystyle, degrees (^\\circ), percent signs, a trailing
    unit `\\text{...}` after a number, a trailing period and whitespace (one space stays between two
    digits unless it groups thousands: `2 3` is two numbers, `10 000` one); unwraps
    \\text{}/\\mathrm{}; drops a leading `x=` (unless `drop_variable` is false); \\dfrac/\\tfrac ->
    \\frac, \\frac12 and \\frac1{2} -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}, a one-character power or
    index braced (x^2 -> x^{2}, x_1 -> x_{1}), an integer a/b -> \\frac{a}{b}, a numerator's minus sign
    out front (-1/2 and \\frac{-1}{2} -> -\\frac{1}{2}); removes thousands separators of plain numbers
    (1,200; not a list written `1, 200`), a number's leading + and leading zeros (+5, 05 -> 5) and
    trailing decimal zeros (2.50 -> 2.5, 3.0 -> 3); strips braces around the whole answer (escaped
    braces `\\{ \\}` are characters, not groups). Unicode mathematics is first read by `plain_math`.
    """
    s = plain_math(answer).strip()
    span = last_boxed_span(s)
    if span is not None and span[0] == 0 and span[3] == len(s):
        s = s[span[1] : span[2]]
    s = s.replace("\u2212", "-").replace("{,}", ",")
    s = _REMOVE.sub("", s) if keep_percent else _PERCENT.sub("", _REMOVE.sub("", s))
    s = re.sub(r"\\[dt]frac", r"\\frac", s).strip()
    s = _UNIT_SUFFIX.sub(r"\1", s)
    s = _TEXT_WRAP.sub(r"\1", s)
    list_like = re.search(r",\s", s) is not None  # "1, 200" is two items, "1,200" one number
    if not _SPACED_THOUSANDS.fullmatch(s):  # "2 3" is two numbers, not 23 (but 10 000 is one)
        s = re.sub(r"(?<=\d)\s+(?=\d)", "\x00", s)
    s = re.sub(r"\s+", "", s).rstrip(".").replace("\x00", " ")
    if drop_variable:
        s = _LEADING_VAR.sub("", s)
    while _wrapped(s):
        s = s[1:-1]
    s = re.sub(r"^\+(?=[\d.])", "", s)  # +5 -> 5
    s = re.sub(r"(?<![\d.,])0+(?=\d)", "", s) if re.fullmatch(r"[-\d/.,]+", s) else s  # 05, 007/8, 033
    if _THOUSANDS.fullmatch(s) and not list_like:
        s = s.replace(",", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)  # \frac1{576}
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)  # \sqrt23 is \sqrt{2}3, as LaTeX reads it
    s = re.sub(r"(?<!\\)([\^_])([0-9A-Za-z])", r"\1{\2}", s)  # x^2 -> x^{2}, x^23 is x^{2}3 (LaTeX)
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)  # -1/576 -> -\frac{1}{576}
    s = re.sub(r"^\\frac\{-([^{}]*)\}", r"-\\frac{\1}", s)  # \frac{-1}{576} -> -\frac{1}{576}
    decimal = _DECIMAL.fullmatch(s)
    if decimal:
        sign, whole, frac = decimal.groups()
        frac, whole = frac.rstrip("0"), whole.lstrip("0")
        s = f"{sign}{whole or '0'}" + (f".{frac}" if frac else "")
    return s


def strings_equal(predicted: str, gold: str, keep_percent: bool = False) -> bool:
    """The string compare: equal normal forms; a leading `x=` is dropped only when the other side has
    no equation (`x=2` against `2`), so `x=2x+3` never equals `y=2x+3`. `keep_percent`: a percent sign
    is not dropped (`0.5\\%` is not 0.5)."""
    a = normalise(predicted, drop_variable=False, keep_percent=keep_percent)
    b = normalise(gold, drop_variable=False, keep_percent=keep_percent)
    if a == b:
        return True
    if ("=" in a) == ("=" in b):
        return False
    return normalise(predicted, keep_percent=keep_percent) == normalise(gold, keep_percent=keep_percent)


def _wrapped(s: str) -> bool:
    """`s` is one group in braces: `{...}` whose first brace closes at its end (`{x\\}`, whose last
    brace is escaped, and `{a}{b}` are not)."""
    braces = list(_BRACE.finditer(s))
    return (
        len(braces) >= 2
        and braces[0].group() == "{" and braces[0].start() == 0
        and braces[-1].group() == "}" and braces[-1].end() == len(s)
        and _balanced(s[1:-1])
    )  # fmt: skip


def _balanced(s: str) -> bool:
    depth = 0
    for brace in _BRACE.finditer(s):
        depth += {"{": 1, "}": -1}.get(brace.group(), 0)  # escaped braces and `\\` count 0
        if depth < 0:
            return False
    return depth == 0


# ---- math-verify ----------------------------------------------------------------------------
@functools.cache
def _math_verify_module() -> ModuleType | None:
    """math_verify, imported once; None (logged once) when it is not installed."""
    try:
        import math_verify
    except ImportError:
        logger.warning(
            "math-verify is not installed: grading by normalised string compare only (%s)", INSTALL_HINT
        )
        return None
    return math_verify


def require_math_verify() -> ModuleType:
    """math_verify, or MathVerifyMissing with the install hint (for callers that need it)."""
    module = _math_verify_module()
    if module is None:
        raise MathVerifyMissing()
    return module


def _math_verify_equal(mv: ModuleType, gold: str, predicted: str, cfg: GradeConfig) -> bool | None:
    """math-verify's verdict, gold first, with its signal-based timeouts off (they only work on the
    main thread); None when an answer is too large to evaluate safely (see GradeConfig.max_digits)."""
    parsed_gold = mv.parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    parsed_pred = mv.parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
    if not all(
        _log10_size(e) <= cfg.max_digits for e in [*parsed_gold, *parsed_pred] if not isinstance(e, str)
    ):
        return None
    return bool(mv.verify(parsed_gold, parsed_pred, timeout_seconds=None))


def _log10_size(expr: Any) -> float:
    """An upper bound on the decimal digits of the exact numbers evaluating a parsed (unevaluated)
    sympy expression can build; inf when astronomically large (power towers, huge factorials)."""
    from sympy import Number, Pow, binomial, factorial, factorial2, subfactorial

    if isinstance(expr, Number):
        if expr.is_Rational:
            return math.log10(max(abs(int(expr.p)), int(expr.q), 1))
        magnitude = abs(float(expr)) if expr.is_finite else 0.0  # a Float; oo and nan are small
        return math.log10(magnitude) if magnitude > 1 else 0.0
    sizes = [_log10_size(a) for a in getattr(expr, "args", ()) if not isinstance(a, str)]
    if not sizes:
        return 0.0
    if isinstance(expr, Pow):
        return sizes[0] * _pow10(sizes[1]) if sizes[0] > 0 else 0.0
    if isinstance(expr, factorial | factorial2 | subfactorial | binomial):
        n = _pow10(sizes[0])
        return n * math.log10(max(n, 1.0)) if math.isfinite(n) else math.inf
    return sum(sizes)


def _pow10(x: float) -> float:
    return math.inf if x > 300 else 10.0**x


# ---- the grade ------------------------------------------------------------------------------
def grade(prediction: str, gold: str, cfg: GradeConfig | None = None) -> Grade:
    """Grade a prediction (a completion or a bare answer) against a gold answer.

    The predicted answer is the last `\\boxed{}` of `prediction` (or a short bare answer, see
    GradeConfig.bare_answer_chars). `gold` may be bare or boxed. math-verify checks
    verify(parse(gold), parse(pred)) in a worker thread, given up after cfg.timeout_s of its CPU time
    (method "timeout"; the abandoned thread is stopped at its next bytecode but may run on briefly);
    when it says no, times out, is unavailable or is skipped, the normalised strings are compared. Safe to
    call from any thread. (math-verify logs once that its own signal timeouts are off: this timeout
    replaces them.)
    """
    cfg = cfg or GradeConfig()
    predicted = extract_answer(prediction, cfg.bare_answer_chars)
    if predicted is None:
        return Grade(False, "no_answer", None)
    predicted = plain_math(predicted)
    gold_answer = last_boxed(gold)
    gold_answer = plain_math(gold.strip() if gold_answer is None else gold_answer.strip())
    string_equal = strings_equal(predicted, gold_answer)
    mv = None if cfg.math_verify == "off" else _math_verify_module()
    if mv is None and cfg.math_verify == "require":
        raise MathVerifyMissing()
    if mv is None or len(predicted) > cfg.max_answer_chars:
        return Grade(string_equal, "string", predicted)
    try:
        verdict = _run_with_timeout(
            lambda: _math_verify_equal(mv, gold_answer, predicted, cfg), cfg.timeout_s
        )
    except concurrent.futures.TimeoutError:  # the string compare, already made, still stands
        return Grade(string_equal, "timeout", predicted)
    except Exception:  # a math-verify failure is not the caller's: fall back to the strings
        logger.debug("math-verify failed on %r vs %r", predicted[:200], gold_answer[:200], exc_info=True)
        verdict = None
    if verdict:
        return Grade(True, "math_verify", predicted)
    if verdict is not None and string_equal:  # a definite no is overturned only with the percent sign
        string_equal = strings_equal(predicted, gold_answer, keep_percent=True)  # kept: 0.5\% is not 0.5
    return Grade(string_equal, "string" if string_equal or verdict is None else "math_verify", predicted)
