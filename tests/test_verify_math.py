"""`still verify` for math, short answers and multiple choice (code is tested with the sandbox)."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import pytest
from conftest import data_file, run_still

from still.core.procpool import BACKSTOP
from still.core.verify_math import (
    MathChecker,
    MathConfig,
    answer_key,
    answer_region,
    exact_number,
    extract_answer,
    last_boxed,
)
from still.core.verify_mc import check_choice, extract_letter, gold_letter


@pytest.fixture(scope="module")
def checker():
    with MathChecker(MathConfig(timeout_s=2.0, workers=1)) as c:
        yield c


def boxed(answer: str) -> str:
    return f"<think>work it out</think>\nSo the answer is $\\boxed{{{answer}}}$."


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --------------------------------------------------------------------------------------------
# Extraction


def test_think_blocks():
    # R1-distill templates put "<think>" in the prompt: a lone "</think>" closes it.
    assert answer_region("reasoning... </think> final 5") == (" final 5", "")
    assert answer_region("<think>a</think> b </think> c")[0] == " c"
    assert answer_region("<think>still thinking")[0] is None
    assert answer_region("<think>a</think> b <think>again, cut off")[0] is None
    assert answer_region("no think block at all, Answer: 3")[0] == "no think block at all, Answer: 3"
    assert answer_region("</think>\\boxed{5}", finish_reason="length")[0] is None


def test_last_boxed_balanced_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed 5$") == "5"
    # A box cut off by truncation does not count; the last complete one does.
    assert last_boxed("\\boxed{3} and finally \\boxed{\\frac{1}{") == "3"
    assert last_boxed("nothing") is None


def test_extraction_order_and_fallbacks():
    assert extract_answer("The final answer is $\\frac{1}{2}$. I hope it is correct.") == (
        "\\frac{1}{2}",
        "final-answer",
    )
    assert extract_answer("blah\nAnswer: 42\n") == ("42", "answer-line")
    assert extract_answer("blah\n**Answer:** $x=3$") == ("x=3", "answer-line")
    assert extract_answer("Q: what?\nA: 17") == ("17", "answer-line")
    assert extract_answer("final step\nanswer: 9") == ("9", "answer-line")
    assert extract_answer("Note the ratio\na: b is 3") == (None, "")  # lower-case "a:" is prose
    assert extract_answer("Answer: 1\n\\boxed{2}") == ("2", "boxed")
    assert extract_answer("so we get 12 apples and 7 pears.") == (None, "")
    assert extract_answer("so we get 12 apples and 7 pears.", ("last-number",)) == ("7", "fallback:last-number")
    assert extract_answer("it is $x^2$ here", ("last-math",)) == ("x^2", "fallback:last-math")


def test_exact_numbers():
    assert exact_number(answer_key("023")) == exact_number(answer_key("23"))
    assert exact_number(answer_key("10,\\!080")).value == 10080
    assert exact_number(answer_key("\\dfrac{3}{4}")).value == Fraction(3, 4)
    assert exact_number(answer_key("-\\frac{35}{9}")).value == Fraction(-35, 9)
    assert exact_number(answer_key("1\\frac{4}{5}")).value == Fraction(9, 5)
    assert exact_number(answer_key(".35625")).value == Fraction("0.35625")
    assert exact_number(answer_key("x+1")) is None


# --------------------------------------------------------------------------------------------
# Equivalence


def test_hendrycks_math_equivalence_cases():
    """MATH's own is_equiv cases. Bare lists are sets by default (MATH asks for "all solutions,
    separated by commas" in any order); --ordered-lists reads them as MATH's string grader does."""
    rows = [json.loads(line) for line in data_file("verify/hendrycks_is_equiv_cases.jsonl").open()]
    order_cases = {(r["gold"], r["pred"]) for r in rows if r["test_function"].startswith("test_order")}
    order_cases |= {("0.1, 4, 2", "4, .1, 2")}
    for ordered in (False, True):
        with MathChecker(MathConfig(ordered_lists=ordered)) as checker:
            for row in rows:
                verdict = checker.check(row["gold"], boxed(row["pred"]))["verdict"]
                expected = "correct" if row["expected"] else "wrong"
                if not ordered and (row["gold"], row["pred"]) in order_cases:
                    # Same elements in another order: equal as sets unless they differ.
                    as_sets = sorted(row["gold"].replace(" ", "").split(",")) == sorted(
                        row["pred"].replace(" ", "").replace(".1", "0.1").split(",")
                    )
                    expected = "correct" if as_sets else "wrong"
                assert verdict == expected, (ordered, row, verdict)


def _benchmark_answers() -> list[str]:
    answers = []
    for name in ("math500", "aime24", "amc23"):
        for line in data_file(f"benchmarks/{name}.jsonl").open():
            answer = json.loads(line)["answer"]
            answers.append(str(int(answer)) if isinstance(answer, float) else str(answer))
    return answers


def _reformatted(answer: str) -> list[str]:
    spaced = answer.replace(",", ", ").replace("+", " + ").replace("=", " = ")
    variants = [
        boxed(answer),
        f"{answer} is what the steps give.</think>\n\nThe final answer is ${answer}$. I hope it is correct.",
        f"</think>Answer: ${spaced}$",
        boxed(answer.replace("\\frac", "\\dfrac")),
        f"plain response, no think block: \\boxed{{ {spaced} }}",
    ]
    if answer.isdigit():
        variants.append(boxed(answer.zfill(4)))
        variants.append(boxed(answer.lstrip("0") or "0"))
    return variants


def _perturbed(answer: str) -> str | None:
    number = exact_number(answer_key(answer))
    if number is not None:
        value = number.value + 1
        return str(value.numerator) if value.denominator == 1 else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    if any(t in answer for t in ("\\sqrt", "\\pi")) and not any(t in answer for t in (",", "=", "\\text", "\\le")):
        return f"{answer} + 1"
    return None


def test_every_benchmark_answer_equals_itself_reformatted_and_not_a_wrong_one():
    answers = _benchmark_answers()
    assert len(answers) == 570  # 500 + 30 + 40
    with MathChecker(MathConfig(timeout_s=5.0, workers=2)) as checker:
        jobs = []
        for answer in answers:
            for response in _reformatted(answer):
                jobs.append((answer, response, "correct"))
            wrong = _perturbed(answer)
            if wrong is not None:
                jobs.append((answer, boxed(wrong), "wrong"))
        pending = [(gold, want, checker.start(gold, response)) for gold, response, want in jobs]
        failures = []
        n_wrong = 0
        for gold, want, outcome in pending:
            if not isinstance(outcome, dict):
                while not outcome.done:
                    checker.pump(True)
                outcome = checker.finish(outcome)
            n_wrong += want == "wrong"
            if outcome["verdict"] != want:
                failures.append((gold, want, outcome))
    assert n_wrong > 450  # a perturbed wrong answer exists for most of them
    assert not failures, failures[:10]


ADVERSARIAL = [
    # math-verify 0.9.0 false positives (research notes, issues #14 and #60)
    ("3*x-1*y+13=0", "3x+4y+14=0"),
    ("1/2004!", "1/2006!"),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
    ("1/2^{99}", "1/2^{98}"),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"),
    ("1-\\frac1{\\mathrm e}", "1+\\frac1{\\mathrm e}"),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}"),
    ("\\pm 2", "2"),
    ("12:00", "1:00"),
    # relative tolerance on large integers (Qwen's rel_tol=1e-4) and tiny decimals
    ("123456", "123460"),
    ("1234567890123", "1234567890124"),
    ("123456", "1.2346\\times10^{5}"),
    ("0.0000672", "0.0000673"),
    ("\\frac13", "0.3333334"),
    ("\\frac{\\sqrt{3}}{3}", "0.58"),
]


@pytest.mark.parametrize("gold,pred", ADVERSARIAL)
def test_known_false_positives_are_wrong(checker, gold, pred):
    assert checker.check(gold, boxed(pred))["verdict"] == "wrong"


def test_unrelated_equation_as_bare_text_is_wrong(checker):
    # Read as bare text, math-verify takes the trailing "0" of each side; we parse the whole line.
    result = checker.check("3*x-1*y+13=0", "</think>\nAnswer: 3x+4y+14=0")
    assert result["verdict"] == "wrong" and result["extracted"] == "3x+4y+14=0"


POSITIVE = [
    ("\\dfrac{\\pi}{2}", "pi/2"),  # math-verify #69: bare text read as LaTeX
    ("-2\\pi", "-2*pi"),
    ("023", "23"),
    ("1\\pm\\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
    ("x=5", "5"),
    ("\\frac13", "0.333333"),
    ("\\frac{\\sqrt{3}}{3}", "0.57735"),
    ("3\\sqrt{13}", "\\sqrt{117}"),
    ("10,\\!080", "10080"),
    ("\\text{Evelyn}", "Evelyn"),
    ("1-\\frac{1}{e}", "1-e^{-1}"),
]


@pytest.mark.parametrize("gold,pred", POSITIVE)
def test_equivalent_forms_are_correct(checker, gold, pred):
    assert checker.check(gold, boxed(pred))["verdict"] == "correct"


def test_truncated_and_no_answer(checker):
    assert checker.check("5", "<think>long reasoning that never")["verdict"] == "truncated"
    result = checker.check("5", "</think>\\boxed{5}", finish_reason="length")
    assert result["verdict"] == "truncated" and result["score"] == 0.0
    assert checker.check("5", "</think>I could not solve it.")["verdict"] == "no_answer"
    # A plain response without any think block is a normal answer.
    assert checker.check("5", "Easy: \\boxed{5}")["verdict"] == "correct"
    # The answer is read after </think>, not from the reasoning.
    assert checker.check("5", "try \\boxed{5}? no.</think>\\boxed{6}")["verdict"] == "wrong"


def test_hanging_comparisons_time_out_within_the_cap():
    cap = 1.0
    cases = [
        # (reference, answer, verdicts allowed): equal huge powers hang math-verify/SymPy.
        ("10^{10^{6}}", "10^{1000000}", {"timeout"}),
        ("9^{9^{9}}", "3^{2\\cdot 9^{9}}", {"timeout"}),
        # A power tower: the numeric probe may tell it from 3 in time; either way within the cap.
        ("2^{2^{2^{2^{2^{2}}}}}", "3", {"timeout", "wrong"}),
    ]
    with MathChecker(MathConfig(timeout_s=cap)) as checker:
        assert checker.check("1", boxed("1.0"))["verdict"] == "correct"  # fast path
        assert checker.check("\\frac{1}{2}", boxed("\\sin(\\pi/6)"))["verdict"] == "correct"  # worker ready
        for gold, pred, allowed in cases:
            started = time.monotonic()
            pending = checker.start(gold, boxed(pred))
            assert not isinstance(pending, dict)
            while not pending.done:
                checker.pump(True)
            elapsed = time.monotonic() - started
            result = checker.finish(pending)
            assert result["verdict"] in allowed, result
            # the cap is CPU time; wall time stretches only when the machine is loaded
            assert pending.task.seconds <= BACKSTOP * cap + 0.3, pending.task.seconds
            assert elapsed <= BACKSTOP * cap + 0.3, elapsed
        # A fresh worker takes over after a kill.
        assert checker.check("\\frac{1}{2}", boxed("\\cos(\\pi/3)"))["verdict"] == "correct"


# --------------------------------------------------------------------------------------------
# Multiple choice


def test_gold_letter_forms():
    choices = ["3", "4", "5", "6"]
    assert gold_letter(2, choices) == "C"
    assert gold_letter("c", choices) == "C"
    assert gold_letter("(B)", choices) == "B"
    assert gold_letter("6", choices) == "D"
    assert gold_letter(7, choices) is None


@pytest.mark.parametrize(
    "text,letter",
    [
        ("Answer: C", "C"),
        ("So the answer is (B).", "B"),
        ("The correct answer is **D**", "D"),
        ("the final answer is $\\boxed{A}$", "A"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("Comparing them all...\n(B)", "B"),
        ("Comparing them all...\nC) 42 apples", "C"),
        ("The answer is (c)", "C"),
        ("Therefore, the answer is: **(B) 12 apples**", "B"),
        ("Answer: $\\text{D}$", "D"),
        ("I first thought A, but the answer is D.", "D"),
    ],
)
def test_anchored_letters(text, letter):
    assert extract_letter(text, "ABCD")[0] == letter


@pytest.mark.parametrize(
    "text",
    [
        "This is a",
        "The answer is a prime number",
        "We eliminated option C because it is a trap",
        "Answer A to the question would be wrong, so think again",
        "I think it is B or C, hard to say",
    ],
)
def test_letters_in_prose_are_not_answers(text):
    assert extract_letter(text, "ABCD")[0] is None


def test_check_choice_verdicts():
    choices = ["red", "green", "blue", "black"]
    assert check_choice("</think>Answer: B", 1, choices)["verdict"] == "correct"
    assert check_choice("</think>Answer: B", "C", choices)["verdict"] == "wrong"
    assert check_choice("</think>Answer: E", "C", choices)["verdict"] == "no_answer"  # not a choice
    assert check_choice("</think>so it is a", 0, choices)["verdict"] == "no_answer"
    assert check_choice("<think>hmm", 0, choices)["verdict"] == "truncated"
    assert check_choice("Answer: A", 9, choices)["verdict"] == "error"


# --------------------------------------------------------------------------------------------
# The command


MIXED = [
    {"id": "a", "answer": "023", "response": "</think>\\boxed{23}"},
    {"id": "b", "answer": "\\frac{\\pi}{2}", "response": "</think>Answer: pi/2"},
    {"id": "c", "answer": "1/2^{99}", "response": "</think>\\boxed{1/2^{98}}"},
    {"id": "d", "answer": "5", "response": "<think>never closed"},
    {"id": "e", "answer": 2, "choices": ["x", "y", "z"], "response": "</think>The answer is (C)."},
    {"id": "f", "answer": "A", "choices": ["x", "y", "z"], "response": "</think>It is a"},
    {"id": "g", "answer": "x^2+1", "response": "</think>\\boxed{1+x^2}"},
    {"id": "h", "answer": 27.0, "response": "\\boxed{27}"},
    {"id": "i", "answer": "\\sqrt{2}", "response": "</think>\\boxed{1.415}"},  # 1.414 is sqrt 2 rounded
    {"id": "j", "answer": "(1,2]", "response": "</think>\\boxed{(1, 2]}", "finish_reason": "stop"},
]


def test_cli_annotates_in_order_and_counts_verdicts():
    res = run_still("verify", stdin=_jsonl(MIXED))
    out = [json.loads(line) for line in res.lines()]
    assert [r["id"] for r in out] == [r["id"] for r in MIXED]
    verdicts = {r["id"]: r["verify"]["verdict"] for r in out}
    assert verdicts == {
        "a": "correct",
        "b": "correct",
        "c": "wrong",
        "d": "truncated",
        "e": "correct",
        "f": "no_answer",
        "g": "correct",
        "h": "correct",
        "i": "wrong",
        "j": "correct",
    }
    for r in out:
        assert set(r["verify"]) == {"verdict", "score", "extracted", "method", "reason"}
        assert r["verify"]["score"] == (1.0 if r["verify"]["verdict"] == "correct" else 0.0)
    assert "verdicts: correct 6, no_answer 1, truncated 1, wrong 2" in res.stderr


def test_workers_give_identical_output():
    rows = []
    for i in range(6):
        for rec in MIXED:
            rows.append({**rec, "id": f"{rec['id']}{i}", "answer": rec["answer"]})
    rows.insert(7, {"id": "hang", "answer": "10^{10^{6}}", "response": "\\boxed{10^{1000000}}"})
    data = _jsonl(rows)
    # A generous cap: verdicts of records near the cap depend on machine load, not on the worker count.
    one = run_still("verify --workers 1 --timeout 3", stdin=data)
    two = run_still("verify --workers 2 --timeout 3", stdin=data)
    assert one.stdout == two.stdout
    assert json.loads(one.lines()[7])["verify"]["verdict"] == "timeout"


def test_exit_status_and_fields():
    good = _jsonl([{"ref": "4", "out": {"text": "</think>\\boxed{4}"}}])
    assert run_still("verify -q --exit-status --answer-field ref --response-field out.text", stdin=good).code == 0
    bad = _jsonl([{"answer": "4", "response": "\\boxed{5}"}])
    res = run_still("verify -q --exit-status", stdin=bad, code=1)
    assert json.loads(res.stdout)["verify"]["verdict"] == "wrong"
    assert run_still("verify -q", stdin=bad).code == 0


def test_bad_input_and_usage_errors():
    res = run_still("verify", stdin='{"response": "\\\\boxed{1}"}\n', code=3)
    assert "<stdin>:1: no answer field (answer)" in res.stderr and "Traceback" not in res.stderr
    res = run_still("verify", stdin='{"answer": "1", "response": \n', code=3)
    assert "<stdin>:1: invalid JSON" in res.stderr
    res = run_still("verify", stdin='{"answer": "1"}\n', code=3)
    assert "no response field" in res.stderr
    run_still("verify --fallback first-number", stdin="", code=2)
    run_still("verify --timeout 0", stdin="", code=2)
    res = run_still("verify --mode mc", stdin='{"answer": "A", "choices": "ABCD", "response": "A"}\n', code=3)
    assert "choices must be a list" in res.stderr


def test_help():
    res = run_still("verify --help")
    for option in ("--timeout", "--workers", "--fallback", "--mode", "--exit-status", "--sandbox", "--answer-field"):
        assert option in res.out


def test_pool_kills_hung_workers_and_survives_crashes():
    from still.core.procpool import KillablePool

    with KillablePool("time:sleep", workers=2, timeout_s=0.5) as pool:
        tasks = [pool.submit(x) for x in (0.0, 30.0, 0.01, 30.0)]
        while not all(t.done for t in tasks):
            pool.pump(True)
        assert [t.status for t in tasks] == ["ok", "timeout", "ok", "timeout"]
        # sleeping uses no CPU: the wall-clock backstop (BACKSTOP x the CPU cap, >= cap + 2 s) ends it
        assert all(t.seconds <= 2.5 + 0.5 for t in tasks)
    with KillablePool("builtins:eval", workers=1, timeout_s=5) as pool:
        crash = pool.submit("__import__('os')._exit(3)")
        after = pool.submit("2 + 2")  # runs in the fresh worker that replaces the dead one
        while not (crash.done and after.done):
            pool.pump(True)
        assert crash.status == "error" and "exit code 3" in crash.error
        assert (after.status, after.result) == ("ok", 4)
