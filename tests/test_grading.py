"""atesd.grading: last-box extraction, the string fallback, math-verify (gold first) on the real
AIME/HMMT answers, the thread-based timeout, and grading without math-verify."""

import concurrent.futures
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from atesd import grading, timeouts
from atesd.grading import GradeConfig, MathVerifyMissing, grade, last_boxed, normalise, require_math_verify

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH_FILES = ("aime24.jsonl", "aime25.jsonl", "hmmt25.jsonl")
# sympy's integrator does not finish on this within 90 s (measured: killed at 90 s, 214 MB), in pure
# Python, so a thread timeout can stop it
SLOW = "\\boxed{\\int_{0}^{1} e^{x^{3}}\\sin(x^{2})\\cos(x^{5}) dx}"


def needs_math_verify():
    return pytest.importorskip("math_verify", reason="math-verify is the optional extra [eval]")


def gold_answers() -> list[str]:
    if not all((DATA / f).is_file() for f in BENCH_FILES):
        pytest.skip(f"the benchmark files {BENCH_FILES} are not in {DATA} (shared data absent)")
    return [json.loads(line)["answer"] for f in BENCH_FILES for line in (DATA / f).read_text().splitlines()]


@pytest.fixture
def no_math_verify(monkeypatch):
    """math_verify made unimportable, and the cached import forgotten before and after."""
    grading._math_verify_module.cache_clear()
    monkeypatch.setitem(sys.modules, "math_verify", None)
    yield
    grading._math_verify_module.cache_clear()


def test_last_boxed_by_hand():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2} and finally \\boxed{ {3}^{4} }") == " {3}^{4} "
    assert last_boxed("\\boxed{\\sqrt{\\frac{95}{24}}} x") == "\\sqrt{\\frac{95}{24}}"
    assert last_boxed("the answer is \\fbox{7}") == "7"
    assert last_boxed("no box here, 42") is None
    assert last_boxed("\\boxed{5} and a truncated \\boxed{\\frac{1}{") == "5"  # the last box that closes
    assert last_boxed("\\boxed {12}") == "12"
    # escaped braces are characters, not groups: a piecewise answer's `\left\{` does not leave it open
    piecewise = "\\left\\{\\begin{array}{ll} 1 & x>0 \\\\ 0 & x \\le 0\\end{array}\\right."
    assert last_boxed(f"$f(x)=\\boxed{{{piecewise}}}$") == piecewise
    assert last_boxed("\\boxed{\\text{\\{}7}") == "\\text{\\{}7"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed{a\\\\{b}}") == "a\\\\{b}"  # `\\` is a line break, then a group


def test_normalise_by_hand():
    assert normalise("$\\dfrac{1}{2}$.") == normalise("\\frac12") == "\\frac{1}{2}"
    assert normalise("1/2") == "\\frac{1}{2}"
    assert normalise("x = 1{,}080") == normalise("1,080") == "1080"
    assert normalise("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalise("90^\\circ") == normalise("90^{\\circ}") == "90"
    assert normalise("10\\text{ cm}") == "10" and normalise("\\text{east}") == "east"
    assert normalise("2.50") == "2.5" and normalise("3.0") == "3" and normalise(".5") == "0.5"
    assert normalise("\\boxed{9 \\sqrt{15}}") == "9\\sqrt{15}"
    assert normalise("50\\%") == "50" and normalise("\\!1\\,000") == "1000"
    assert normalise("\\$18") == normalise("$18$") == "18"  # GSM8K's money answers
    assert normalise("1, 200") == "1,200" != normalise("1,200")  # a list of two, not a thousand
    assert normalise("\\dfrac1{576}") == normalise("1/576") == "\\frac{1}{576}"
    assert normalise("-1/576") == normalise("\\frac{-1}{576}") == normalise("-\\frac{1}{576}")
    assert normalise("+5") == normalise("05") == "5" and normalise("033") == "33" != normalise("3")
    assert normalise("0") == "0" and normalise("-007") == "-7" and normalise("00.50") == "0.5"
    assert normalise("{\\{x}") == "\\{x"  # the outer braces go, the escaped one stays
    # a leading + and leading zeros go before the fraction and thousands forms are made
    assert normalise("+1/2") == "\\frac{1}{2}" and normalise("007/8") == "\\frac{7}{8}"
    assert (
        normalise("+1,200") == "1200" and normalise("1,005") == "1005" and normalise("2,000.50") == "2000.5"
    )
    assert normalise("{x\\}") == "{x\\}" and normalise("{a}{b}") == "{a}{b}"  # not one group in braces


def test_extraction_rules():
    result = grade("after much work: \\boxed{42}. Done.", "42")
    assert result.correct and result.predicted == "42"
    assert grade("42", "\\boxed{42}").correct  # a bare prediction, a boxed gold
    long_text = "I think the answer is probably 42 but I am not sure about that at all, honestly"
    assert grade(long_text, "42") == grading.Grade(False, "no_answer", None)
    assert grade("line one\n42", "42").method == "no_answer"
    assert not grade("42", "42", GradeConfig(bare_answer_chars=0)).correct


def test_every_benchmark_gold_in_equivalent_forms_is_correct():
    needs_math_verify()
    for gold in gold_answers():
        forms = [
            gold,
            f"Putting it together, the answer is $\\boxed{{{gold}}}$. Done.",
            f"$ {gold} $",
            f"\\boxed{{ {gold.replace(' ', '')} }}",
            f"\\boxed{{{gold.replace('frac', 'dfrac')}}} is what we get",
        ]
        for pred in forms:
            result = grade(pred, gold)
            assert result.correct and result.method == "math_verify", (gold, pred, result)


def test_equivalent_but_differently_written_answers():
    needs_math_verify()
    pairs = [
        ("\\frac{1}{576}", "1/576"),
        ("\\frac{1}{576}", "\\boxed{\\frac{2}{1152}}"),
        ("9\\sqrt{15}", "\\boxed{9 \\sqrt{15}}"),
        ("9\\sqrt{15}", "\\boxed{\\sqrt{1215}}"),
        ("\\frac{9 \\sqrt{23}}{23}", "\\boxed{\\frac{9}{\\sqrt{23}}}"),
        (
            "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
            "\\boxed{\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}}",
        ),
        ("2^{25} \\cdot 26!", "\\boxed{26! \\cdot 2^{25}}"),
        ("73", "so the answer is $\\boxed{073}$"),
        ("1080", "\\boxed{1,080}"),
        ("204", "\\boxed{x = 204}"),
    ]
    for gold, pred in pairs:
        assert grade(pred, gold).correct, (gold, pred)


def perturbed(gold: str) -> list[str]:
    """Answers that differ from gold: +1, a changed digit, an inverted fraction."""
    out = [f"{gold}+1" if not gold.lstrip("-").isdigit() else str(int(gold) + 1)]
    digit = re.search(r"[1-8]", gold)
    if digit:
        out.append(gold[: digit.start()] + str(int(digit.group()) + 1) + gold[digit.end() :])
    frac = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", gold)
    if frac:
        out.append(f"\\frac{{{frac.group(2)}}}{{{frac.group(1)}}}")
    return out


def test_every_benchmark_gold_perturbed_is_wrong():
    needs_math_verify()
    for gold in gold_answers():
        for wrong in perturbed(gold):
            result = grade(f"The answer is \\boxed{{{wrong}}}.", gold)
            assert not result.correct, (gold, wrong, result)
    assert not grade(
        "\\boxed{\\frac{-1+\\sqrt{17}}{2}}", "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}"
    ).correct


def test_grading_from_several_threads_matches_serial():
    needs_math_verify()
    golds = gold_answers()
    jobs = [(f"\\boxed{{{g}}}", g) for g in golds] + [(f"\\boxed{{{perturbed(g)[0]}}}", g) for g in golds]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: grade(*job).correct, jobs))
    assert threaded == [True] * len(golds) + [False] * len(golds)


def burn(seconds: float) -> None:
    """Keep a core busy for `seconds` of this thread's CPU time (a check that computes)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_timeout_leaves_the_string_compare_standing(monkeypatch):
    needs_math_verify()
    monkeypatch.setattr(grading, "_math_verify_equal", lambda *args: burn(0.3))
    cfg = GradeConfig(timeout_s=0.05)
    assert grade("\\boxed{\\$42}", "42", cfg) == grading.Grade(True, "timeout", "\\$42")
    assert grade("\\boxed{41}", "42", cfg) == grading.Grade(False, "timeout", "41")


def test_pathological_answer_times_out_from_a_worker_thread():
    needs_math_verify()
    cfg = GradeConfig(timeout_s=1.0)
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(grade, SLOW, "103", cfg).result(timeout=30)
    elapsed = time.perf_counter() - start
    assert result.method == "timeout" and not result.correct
    # timeout_s of the check's own CPU time: on a busy machine that is longer on the clock, up to 10x
    assert elapsed < cfg.timeout_s * timeouts._WALL_FACTOR + 2.0, elapsed
    deadline = time.perf_counter() + 5.0  # the abandoned check is stopped, not left computing
    while any(t.name == "atesd-grade" for t in threading.enumerate()) and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "atesd-grade" for t in threading.enumerate())


def test_astronomical_numbers_are_screened_not_computed():
    """9^(9^9) would be one C-level big-integer power holding the GIL for minutes: no thread timeout
    could stop it, so such answers never reach math-verify."""
    needs_math_verify()
    for huge in ("9^{9^{9}}", "(10^{7})!", "2^{2^{2^{2^{2}}}}"):
        start = time.perf_counter()
        result = grade(f"\\boxed{{{huge}}}", "103")
        assert result == grading.Grade(False, "string", huge)
        assert time.perf_counter() - start < 2.0
    assert grade("\\boxed{2^{16}}", "65536").correct  # modest powers still go through math-verify


def test_without_math_verify_the_string_compare_decides(no_math_verify, caplog):
    with caplog.at_level("WARNING", logger="atesd.grading"):
        assert grade("so \\boxed{1/576}.", "\\frac{1}{576}") == grading.Grade(True, "string", "1/576")
        assert grade("\\boxed{9 \\sqrt{15}}", "9\\sqrt{15}").correct
        assert not grade("\\boxed{0.5}", "\\frac{1}{2}").correct  # what only math-verify would see
        assert grade("\\boxed{\\dfrac1{2}}", "\\frac{1}{2}").correct
        assert grade("\\boxed{-1/576}", "-\\frac{1}{576}").correct
    warnings = [r.getMessage() for r in caplog.records if "math-verify is not installed" in r.getMessage()]
    assert len(warnings) == 1 and "[eval]" in warnings[0]  # said once, naming the extra
    with pytest.raises(MathVerifyMissing, match=r"\[eval\]"):
        grade("\\boxed{1}", "1", GradeConfig(math_verify="require"))
    with pytest.raises(MathVerifyMissing):
        require_math_verify()


def test_config_is_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        GradeConfig(timeout_s=0)
    with pytest.raises(ValueError, match="math_verify"):
        GradeConfig(math_verify="maybe")


def test_an_abandoned_check_that_swallows_the_stop_is_stopped_by_the_resend():
    """The stop can land where Python swallows it (a weakref callback, a __del__: CI saw "Exception
    ignored in WeakKeyDictionary.remove"); the reaper sends it again until the check ends."""
    from atesd.timeouts import _run_with_timeout

    swallowed = []

    def stubborn():
        while True:
            try:
                burn(0.01)
            except BaseException:
                if len(swallowed) < 3:  # swallowed three times, as a callback would
                    swallowed.append(1)
                    continue
                raise

    with pytest.raises(concurrent.futures.TimeoutError):
        _run_with_timeout(stubborn, 0.2)
    deadline = time.perf_counter() + 5.0
    while (
        any(t.name.startswith("atesd-grade") for t in threading.enumerate())
        and time.perf_counter() < deadline
    ):
        time.sleep(0.02)  # the check, then its reaper, which ends a moment after it
    assert len(swallowed) == 3
    assert not any(t.name.startswith("atesd-grade") for t in threading.enumerate())


def test_the_limit_is_the_checks_own_cpu_time_not_the_clock():
    """On the clock, a check's verdict followed the machine's load: one that took 0.35 s on an idle
    core timed out at 1 s on a core shared with four busy processes. A check kept off the CPU for
    3x its limit (here asleep, as a thread waiting for a core) now finishes; one that computes is still
    stopped near its limit, and one that never ends on the clock is stopped at 10x."""
    from atesd.timeouts import _run_with_timeout

    if timeouts._own_cpu_clock() is None:
        pytest.skip("no per-thread CPU clock here: the limit is on the clock")

    def waits() -> str:
        time.sleep(0.3)
        return "done"

    assert _run_with_timeout(waits, 0.1) == "done"
    start = time.perf_counter()
    with pytest.raises(concurrent.futures.TimeoutError):
        _run_with_timeout(lambda: burn(5.0), 0.1)
    assert time.perf_counter() - start < 0.1 * timeouts._WALL_FACTOR + 0.5
    start = time.perf_counter()
    with pytest.raises(concurrent.futures.TimeoutError):
        _run_with_timeout(lambda: time.sleep(1.5), 0.1)
    assert 0.1 * timeouts._WALL_FACTOR <= time.perf_counter() - start < 0.1 * timeouts._WALL_FACTOR + 0.5


@pytest.mark.parametrize("math_verify", ["auto", "off"])
def test_a_different_left_hand_side_is_wrong_and_a_bare_value_still_matches(math_verify):
    """The string compare once dropped any single-letter left-hand side and overturned math-verify's
    no: x = 2x + 3 against y = 2x + 3 was graded correct."""
    if math_verify == "auto":
        needs_math_verify()
    cfg = GradeConfig(math_verify=math_verify)
    assert not grade("\\boxed{x = 2x + 3}", "y = 2x + 3", cfg).correct
    assert not grade("\\boxed{a = 5}", "b = 5", cfg).correct
    for predicted, gold in (("x=2", "2"), ("2", "x = 2"), ("y=2x+3", "y = 2x + 3"), ("k = \\frac12", "1/2")):
        assert grade(f"\\boxed{{{predicted}}}", gold, cfg).correct, (predicted, gold)


def test_an_empty_box_is_no_answer_and_hides_no_real_one():
    """A model that repeats the instruction ("put your final answer in \\boxed{}") after answering:
    its empty box was the answer (wrong, counted well-formatted, and a maj@n vote)."""
    said = "So the answer is \\boxed{42}. (I put my final answer inside \\boxed{} as asked.)"
    assert grade(said, "42") == grading.Grade(True, "math_verify", "42")
    for text in ("Final answer: \\boxed{}", "\\boxed{ }", "\\boxed{4"):  # empty or unclosed: no answer
        assert grade(text, "4") == grading.Grade(False, "no_answer", None)
    assert last_boxed("\\boxed{3} and \\fbox{}") == "3"


def test_the_string_compare_overturns_no_definite_no_by_a_dropped_percent_or_a_misread_root():
    """\\sqrt23 is \\sqrt{2}3 in LaTeX (it matched \\sqrt{23} and 3\\sqrt{2} both); 0.5\\% is not 0.5,
    though without math-verify the string compare still drops percent signs."""
    assert normalise("\\sqrt23") == "\\sqrt{2}3" and normalise("\\sqrt{23}") == "\\sqrt{23}"
    assert (
        not grade("\\boxed{\\sqrt23}", "\\sqrt{23}").correct
        and grade("\\boxed{\\sqrt23}", "3\\sqrt{2}").correct
    )
    assert not grade("\\boxed{0.5\\%}", "0.5").correct and grade("\\boxed{0.5\\%}", "0.005").correct
    assert grade("\\boxed{50\\%}", "50").correct


@pytest.mark.parametrize("math_verify", ["auto", "off"])
@pytest.mark.parametrize(
    ("gold", "prediction", "correct"),
    [
        ("３", "\\boxed{3}", True),  # fullwidth digits
        ("½", "\\boxed{\\frac{1}{2}}", True),
        ("2½", "\\boxed{\\frac{5}{2}}", True),  # a mixed number is 2 + 1/2, not NFKC's 21/2
        ("2√2", "\\boxed{2\\sqrt{2}}", True),
        ("x²+1", "\\boxed{x^{2}+1}", True),  # a superscript is a power, not NFKC's x2
        ("½", "\\boxed{\\frac{1}{3}}", False),
        ("x²", "\\boxed{x2}", False),
    ],
)
def test_unicode_mathematics_in_a_gold_answer_grades_as_its_latex(gold, prediction, correct, math_verify):
    """Gold answers written in Unicode (`３`, `½`, `2√2`, `x²`) were graded wrong against the same
    answer in LaTeX, by math-verify and the string compare alike."""
    from atesd.grading import GradeConfig, grade

    assert grade(prediction, gold, GradeConfig(math_verify=math_verify)).correct is correct


@pytest.mark.parametrize("math_verify", ["auto", "off"])
@pytest.mark.parametrize(
    ("prediction", "gold", "correct"),
    [
        ("−2½", "-\\frac{5}{2}", True),  # a negative mixed number is -(2 + 1/2): it was -2 + 1/2
        ("-2½", "-5/2", True),
        ("−2½", "-3/2", False),
        ("2½", "5/2", True),
        ("1 ½", "3/2", True),
        ("x²", "x^2", True),
        ("x₁", "x_1", True),
        ("2ⁿ", "2^n", True),
        ("2ⁿ⁻¹", "2^{n-1}", True),
        ("a₁₀", "a_{10}", True),
        ("Aᵀ", "A^T", True),
        ("2ⁿ", "2n", False),  # a superscript letter is a power, not NFKC's plain letter
        ("2ⁿ", "2 n", False),
        ("2ⁿ-1", "2n-1", False),
        ("x₁+x₂", "x1+x2", False),  # a subscript is an index
        ("log₂8", "log28", False),
        ("a⁺", "a+", False),
        ("e⁽ⁱπ⁾", "e(iπ)", False),
    ],
)
def test_unicode_superscripts_subscripts_and_mixed_numbers_keep_their_meaning(
    prediction, gold, correct, math_verify
):
    """NFKC flattened every superscript and subscript but digits and `⁻` (`2ⁿ` was `2n`, `x₁` was
    `x1`), and a mixed number after a minus sign lost its sign (`−2½` was -2 + 1/2 = -3/2)."""
    cfg = GradeConfig(math_verify=math_verify)
    assert grade(f"The answer is \\boxed{{{prediction}}}.", gold, cfg).correct is correct
    assert grade(f"\\boxed{{{gold}}}", prediction, cfg).correct is correct  # Unicode in the gold


@pytest.mark.parametrize(
    ("unicode", "plain"),
    [
        ("2ⁿ", "2n"),
        ("2ⁿ-1", "2n-1"),
        ("x₁+x₂", "x1+x2"),
        ("log₂8", "log28"),
        ("a⁺", "a+"),
        ("e⁽ⁱπ⁾", "e(iπ)"),
        ("x²", "x2"),
        ("−2½", "-3/2"),
        ("−2½", "-2+\\frac{1}{2}"),
    ],
)
def test_normalise_keeps_different_unicode_answers_apart(unicode, plain):
    """normalise is also the majority-vote key: answers that differ must not share one."""
    assert normalise(unicode) != normalise(plain)


def test_plain_math_by_hand():
    assert grading.plain_math("x²+y₁₀") == "x^{2}+y_{10}"
    assert grading.plain_math("2ⁿ⁻¹") == "2^{n-1}"  # a run of superscripts is one power
    assert grading.plain_math("e⁽ⁱπ⁾") == "e^{(i}π^{)}"  # π has no superscript: never e(iπ)
    assert grading.plain_math("−2½") == "-\\frac{5}{2}" and grading.plain_math("12¾") == "\\frac{51}{4}"
    assert grading.plain_math("x+½") == "x+\\frac{1}{2}" and grading.plain_math("２½") == "\\frac{5}{2}"
    assert grading.plain_math("1" * 200 + "½") == "(" + "1" * 200 + "+\\frac{1}{2})"  # past int()'s reach
    assert normalise("−2½") == normalise("-5/2") == "-\\frac{5}{2}"
    assert normalise("2ⁿ") == normalise("2^n") == normalise("2^{n}") == "2^{n}"
    assert normalise("x₁") == normalise("x_1") == "x_{1}"
    assert normalise("x^23") == "x^{2}3"  # as LaTeX reads it, not x^{23}
    for text in ("x^2+1", "\\frac{1}{2}", "2n-1", "a_1", "\\sqrt{2}", "-5/2", "e^{i\\pi}"):
        assert grading.plain_math(text) is text  # ASCII text comes back unchanged


def test_a_space_between_digits_separates_numbers_unless_it_groups_thousands():
    """The string fallback deleted all whitespace, so `\\boxed{2 3}` matched 23 against math-verify's
    no; `10 000` is still ten thousand."""
    assert not grade("\\boxed{2 3}", "23").correct and not grade("\\boxed{3 1/2}", "31/2").correct
    assert grade("\\boxed{10 000}", "10000").correct and grade("\\boxed{-1 234.5}", "-1234.5").correct
    assert grade("\\boxed{2 3}", "2 3").correct  # the same two numbers
