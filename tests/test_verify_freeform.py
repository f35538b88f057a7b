"""`still verify` on answers that are not (only) boxed: free-form classes, --strict, hostile text.

tests/data/verify/freeform_cases.jsonl holds our own cases per class (the response is the answer,
"final answer" sentences, several boxes, number formats, sets/intervals/relations, matrices and
rounded decimals, anchored answers written as prose, also in other languages). Each class must
agree with the expected verdicts at least as often as calling math-verify's ``parse`` + ``verify``
naively does.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import pytest
from conftest import data_file, run_still
from test_verify_math import ADVERSARIAL

from still.core.answer_extract import (
    MV_REGION_CAP,
    REGION_CAP,
    answer_line,
    answer_region,
    boxed_group,
    extract_answer,
    final_answer,
    sentence,
)
from still.core.answer_normalise import answer_key, fast_compare, has_percent
from still.core.verify_math import MathChecker, MathConfig, gold_answer

CASES = [json.loads(line) for line in data_file("verify/freeform_cases.jsonl").open()]


@pytest.fixture(scope="module")
def verdicts() -> list[dict]:
    with MathChecker(MathConfig(timeout_s=5.0)) as checker:
        return [checker.check(case["gold"], case["response"]) for case in CASES]


def test_every_class_has_several_cases_both_ways():
    by_class = defaultdict(list)
    for case in CASES:
        by_class[case["class"]].append(case["expected"])
    assert len(by_class) == 7
    for name, expected in by_class.items():
        assert len(expected) >= 8 and 0 in expected and 1 in expected, name


def test_freeform_cases_get_the_expected_verdict(verdicts):
    wrong = [
        (case, result)
        for case, result in zip(CASES, verdicts, strict=True)
        if (result["verdict"] == "correct") != bool(case["expected"])
    ]
    assert not wrong, wrong


def test_no_class_agrees_less_than_naive_math_verify(verdicts):
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    try:
        agree_still: dict[str, int] = defaultdict(int)
        agree_mv: dict[str, int] = defaultdict(int)
        for case, result in zip(CASES, verdicts, strict=True):
            expected = bool(case["expected"])
            agree_still[case["class"]] += (result["verdict"] == "correct") == expected
            agree_mv[case["class"]] += bool(verify(parse(f"${case['gold']}$"), parse(case["response"]))) == expected
    finally:
        logging.disable(logging.NOTSET)
    for name in agree_mv:
        assert agree_still[name] >= agree_mv[name], (name, agree_still[name], agree_mv[name])
    assert sum(agree_still.values()) > sum(agree_mv.values())  # the rounded decimals, at least


def test_unboxed_answers_are_read_by_default_and_not_with_strict():
    bare = [("-5", "-5"), ("[0,1)", "$[0,1)$"), ("1000.99", "so the area is 1,000.99m²"), ("28\\%", "28 percent")]
    with MathChecker(MathConfig()) as checker:
        for gold, response in bare:
            assert checker.check(gold, response)["verdict"] == "correct", (gold, response)
    with MathChecker(MathConfig(strict=True)) as strict:
        for gold, response in bare:
            result = strict.check(gold, response)
            assert result["verdict"] == "no_answer" and "--strict" in result["reason"], result
        # Anchored forms still count under --strict.
        assert strict.check("34", "Final Answer: The largest $n$ is 34.")["verdict"] == "correct"
        assert strict.check("(1,2),(2,1)", "\\boxed{(1, 2)}, \\boxed{(2, 1)}")["verdict"] == "correct"
        assert strict.worker_calls == 0  # both equal after normalisation: no math-verify needed


def test_nothing_readable_is_no_answer_and_the_method_says_math_verify():
    with MathChecker(MathConfig()) as checker:
        result = checker.check("5", "</think>I could not solve it.")
        assert result["verdict"] == "no_answer" and result["method"] == "math-verify/math-verify"
        result = checker.check("2/3", "so the probability that Alice wins is 2/3. <|im_start|>user\nthanks, 5")
        assert (result["verdict"], result["extracted"]) == ("correct", "2/3")


def test_known_false_positives_stay_wrong_in_every_answer_format():
    """The adversarial pairs, written the ways the default extraction reads: never ``correct``."""
    formats = (
        "So we get ${}$.",
        "{}",
        "Final Answer: The final answer is ${}$. I hope it is correct.",
        "Answer: {}",
        "\\boxed{{{}}} and \\boxed{{{}}}",
    )
    with MathChecker(MathConfig()) as checker:
        for gold, pred in ADVERSARIAL:
            for shape in formats:
                response = shape.format(pred, pred)
                result = checker.check(gold, response)
                assert result["verdict"] != "correct", (gold, response, result)


def test_cli_strict_flag():
    rows = [{"answer": "-5", "response": "-5"}, {"answer": "7", "response": "\\boxed{7}"}]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    default = [json.loads(line)["verify"]["verdict"] for line in run_still("verify -q", stdin=data).lines()]
    strict = [json.loads(line)["verify"]["verdict"] for line in run_still("verify -q --strict", stdin=data).lines()]
    assert default == ["correct", "correct"] and strict == ["no_answer", "correct"]
    assert "--strict" in run_still("verify --help").out


# --------------------------------------------------------------------------------------------
# Extraction rules


def test_final_answer_sentences():
    assert final_answer("Final Answer: The final answer is $14{,}916$. I hope it is correct.") == "14{,}916"
    assert final_answer("The final answer is 7.78") == "7.78"
    assert final_answer("Final Answer: The largest $n$ is 34.") == "34"
    assert final_answer("The final answer is 3. Then n=4 gives 5.") == "3"
    assert final_answer("final answer: $(2, 3)$, by substitution.") == "(2, 3)"
    assert final_answer("The final answer is $x \\in [1, 2.5]$. Done") == "x \\in [1, 2.5]"
    assert final_answer("no anchor here") is None
    assert final_answer("**Final Answer:**\n$$\\frac{1}{2}$$") == "\\frac{1}{2}"
    assert final_answer("The final answer is $28$ percent.") == "$28$ percent"
    assert answer_line("work\nAnswer: 42. The reason is above.") == "42"
    assert sentence("$a. b$ c. d") == "$a. b$ c"
    assert sentence("1.5 and more\nnext line") == "1.5 and more"


def test_chat_tokens_end_the_answer_region():
    assert answer_region("The answer is $2$.<|im_end|>\n<|im_start|>user\n3")[0] == "The answer is $2$."
    assert answer_region("</think>5<|eot_id|>6")[0] == "5"
    # A token at the very start does not leave an empty region.
    assert answer_region("<|im_start|>assistant 5")[0] == "<|im_start|>assistant 5"


def test_box_groups():
    assert boxed_group("\\boxed{(1, 2)}, \\boxed{(2, 1)}") == ["(1, 2)", "(2, 1)"]
    assert boxed_group("$\\boxed{k = 45}$ and $\\boxed{n = 2}$.") == ["k = 45", "n = 2"]
    assert boxed_group("$x=\\boxed{3}, y=\\boxed{4}$") == ["3", "4"]
    assert boxed_group("we get \\boxed{3}. Adding two gives \\boxed{5}") == ["5"]  # an intermediate result
    assert boxed_group("\\boxed{5} \\boxed{5}") == ["5"]
    assert boxed_group("\\boxed{\\boxed{2}}") == ["\\boxed{2}"]
    assert extract_answer("\\boxed{1}, \\boxed{2}") == ("1, 2", "boxed-list")


def test_reference_that_is_a_worked_solution():
    solution = "Since $x<2$, $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\\boxed{2-2p}$."
    assert gold_answer(solution) == "2-2p"
    prose = "We compute the area step by step and simplify. " * 3 + "Final Answer: The final answer is $28\\%$."
    assert gold_answer(prose) == "28\\%"
    assert gold_answer("x^2+1") == "x^2+1"
    with MathChecker(MathConfig()) as checker:
        assert checker.check(solution, "</think>The answer is $\\boxed{-2p+2}$")["verdict"] == "correct"


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        ("7425000", "7,425,000", True),
        ("1000", "1 000", True),
        ("14916", "14{,}916", True),
        ("1000.99", "$1,000.99", True),
        ("1000.99", "1,000.99€", True),
        ("1000.99", "€1,000.99", True),
        ("0.4", ".4", True),
        ("1000.99", "1000,99", True),
        ("0.111", "0,111", True),
        ("1000", "1000,99", None),  # a decimal comma only against a decimal: "1000,99" may be a list
        ("111", "0,111", None),
        ("28\\%", "28 percent", True),
        ("28\\%", "28pct", True),
        ("0.28", "28 %", True),
        ("0.28", "28", False),
        ("28\\%", "29 percent", False),
        ("1000.98", "1,000.99", False),
    ],
)
def test_number_formats_on_the_fast_path(gold, pred, expected):
    equal, _, _ = fast_compare(answer_key(gold), answer_key(pred), has_percent(gold), has_percent(pred))
    assert equal is expected


# --------------------------------------------------------------------------------------------
# Hostile text: bounded, one pass (issue #8)

HOSTILE = {
    "20,000 \\boxed{": "\\boxed{" * 20_000,
    "Answer: a + spaces": "Answer: a" + " " * 20_000,
    "final answer + spaces": "The final answer is a" + " " * 200_000,
    "unclosed braces": "\\fbox{" + "{" * 100_000,
    "many anchors": "final answer is " * 20_000 + "Answer: 1\n" * 20_000,
    "math openers": "\\(" * 50_000 + "$" * 50_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_is_read_in_bounded_work(name):
    text = HOSTILE[name]
    region, _ = answer_region(text)
    assert region is not None and len(region) <= REGION_CAP < len(text)
    answer, _ = extract_answer(region, ("last-number", "last-math", "last-line"))
    assert answer is None or len(answer) <= REGION_CAP


@pytest.mark.timeout(120)
def test_hostile_text_through_the_checker_ends_within_the_cap():
    with MathChecker(MathConfig(timeout_s=2.0)) as checker:
        for text in HOSTILE.values():
            result = checker.check("1", text)
            assert result["verdict"] in {"wrong", "no_answer", "correct", "timeout"}, result
            assert result["extracted"] is None or len(result["extracted"]) <= MV_REGION_CAP + REGION_CAP


def test_freeform_output_is_identical_for_any_worker_count():
    cases = CASES[::2]  # every class, half the cases: two CLI runs stay short
    rows = [{"id": i, "answer": case["gold"], "response": case["response"]} for i, case in enumerate(cases)]
    rows.insert(5, {"id": "hostile", "answer": "1", "response": HOSTILE["math openers"]})
    data = "".join(json.dumps(r) + "\n" for r in rows)
    one = run_still("verify -q --workers 1 --timeout 5", stdin=data)
    three = run_still("verify -q --workers 3 --timeout 5", stdin=data)
    assert one.stdout == three.stdout
    verdicts = [json.loads(line)["verify"]["verdict"] for line in one.lines()]
    assert verdicts.count("correct") == sum(case["expected"] for case in cases)
