"""Code verification: extraction, the three test formats, verdicts, reward-hacking defences and
the positive controls (HumanEval canonical solutions, KodCode's labelled trials)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SANDBOXES, assert_no_sandbox_survivors

from still.core.verify_code import (
    CodeConfig,
    assemble_humaneval,
    check_code,
    compare_output,
    extract_code,
    kodcode_test_file,
)

DATA = Path(__file__).resolve().parent / "data"
CFG = CodeConfig(timeout_s=3.0)

ADD_IO = {"inputs": ["1 2\n", "5 7\n", "-1 1\n"], "outputs": ["3\n", "12\n", "0\n"]}
ADD_HE = {
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n",
    "entry_point": "add",
}
ADD_PYTEST = (
    "import pytest\nfrom solution import add\n\n"
    "def test_small():\n    assert add(1, 2) == 3\n\n"
    "@pytest.mark.parametrize('a,b,c', [(2, 2, 4), (0, 0, 0)])\n"
    "def test_param(a, b, c):\n    assert add(a, b) == c\n\n"
    "def test_raises():\n    with pytest.raises(TypeError):\n        add(1, None)\n"
)


@pytest.fixture(autouse=True)
def no_survivors():
    """Every check leaves no process behind (fork bombs, daemons, timeouts included)."""
    yield
    assert_no_sandbox_survivors()


_BACKEND: list[str] = []


@pytest.fixture(params=SANDBOXES)
def backend(request):
    """The red-team checks run under both sandboxes (verdict() picks it up)."""
    if request.param == "unshare" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    _BACKEND.append(request.param)
    yield request.param
    _BACKEND.clear()


def py(code: str) -> str:
    return f"<think>let me think</think>\nHere is my solution.\n```python\n{code}\n```\n"


def verdict(code: str, tests, record=None, config=CFG) -> dict:
    if _BACKEND and config.sandbox == "auto":
        config = dataclasses.replace(config, sandbox=_BACKEND[0])
    res = check_code(py(code), tests, record or {}, config)
    if _BACKEND and res["method"].count("/") == 2:
        assert res["method"].endswith("/" + _BACKEND[0])
    return res


# ---------------------------------------------------------------------------------- extraction
def test_extracts_last_code_block_after_think():
    resp = (
        "<think>draft:\n```python\nprint('draft')\n```\n</think>\nFinal:\n```python\nprint(1)\n```\n"
        "Example output:\n```text\n1\n```\n"
    )
    code, lang, _ = extract_code(resp)
    assert code.strip() == "print(1)" and lang == "python"


def test_unclosed_think_is_truncated():
    res = check_code("<think>```python\nprint(3)\n```", ADD_IO, {}, CFG)
    assert res["verdict"] == "truncated" and "reasoning never closes" in res["reason"]


def test_response_opening_with_closed_think_only():
    code, _, _ = extract_code("reasoning without opening tag</think>\n```py\nprint(2)\n```")
    assert code.strip() == "print(2)"


def test_unfenced_code_and_prose():
    assert extract_code("a, b = map(int, input().split())\nprint(a + b)")[0] is not None
    assert extract_code("I could not solve this problem, sorry.")[0] is None
    assert check_code("No code here, just words.", ADD_IO, {}, CFG)["verdict"] == "no_answer"


def test_cpp_detected_by_tag_and_content():
    assert extract_code("```cpp\nint main(){}\n```")[1] == "cpp"
    assert extract_code("```\n#include <cstdio>\nint main(){}\n```")[1] == "cpp"


def test_output_comparison_is_strict_on_lines():
    assert compare_output("3  \n4\n\n\n", "3\n4") is None
    assert compare_output("3\r\n4\r\n", "3\n4\n") is None
    assert "missing" in compare_output("3\n", "3\n4\n")
    assert "extra" in compare_output("3\n4\n5\n", "3\n4\n")
    assert "line 2" in compare_output("3\n5\n", "3\n4\n")


def test_kodcode_convention_prepends_star_import_only_when_needed():
    assert kodcode_test_file("def test_a():\n    assert f()\n").startswith("from solution import *\n")
    explicit = "from solution import f\n\ndef test_a():\n    assert f()\n"
    assert kodcode_test_file(explicit) == explicit
    fut = "from __future__ import annotations\ndef test_a():\n    pass\n"
    assert kodcode_test_file(fut).splitlines()[:2] == ["from __future__ import annotations", "from solution import *"]


def test_humaneval_assembly_accepts_full_function_or_completion():
    prompt = ADD_HE["prompt"]
    assert "def add" in assemble_humaneval(prompt, "    return a + b\n", "add")
    full = assemble_humaneval(prompt, "def add(a, b):\n    return a + b\n", "add")
    assert full.count("def add") == 2  # the prompt's stub, then the response's definition wins


# ------------------------------------------------------------------------------ stdin / stdout
def test_stdio_pass_and_partial_score():
    ok = verdict("a, b = map(int, input().split())\nprint(a + b)", ADD_IO)
    assert ok["verdict"] == "pass" and ok["score"] == 1.0 and ok["method"].startswith("stdio/python/")
    partial = verdict("a, b = map(int, input().split())\nprint(a + b if a > 0 else 99)", ADD_IO)
    assert partial["verdict"] == "wrong_answer" and partial["score"] == pytest.approx(2 / 3)


def test_stdio_list_of_pairs_and_json_string():
    tests = [{"input": "4\n", "output": "16\n"}, {"input": "3\n", "output": "9"}]
    assert verdict("n = int(input())\nprint(n * n)", tests)["verdict"] == "pass"
    assert verdict("n = int(input())\nprint(n * n)", json.dumps(tests))["verdict"] == "pass"


def test_extra_or_missing_output_lines_fail():
    extra = verdict("a, b = map(int, input().split())\nprint(a + b)\nprint('debug')", ADD_IO)
    assert extra["verdict"] == "wrong_answer" and extra["score"] == 0.0
    two = {"inputs": ["1\n"], "outputs": ["1\n2\n"]}
    assert verdict("print(1)", two)["verdict"] == "wrong_answer"


def test_runtime_error_and_compile_error():
    assert verdict("raise ValueError('boom')", ADD_IO)["verdict"] == "runtime_error"
    res = verdict("def f(:\n    pass", ADD_IO)
    assert res["verdict"] == "compile_error" and "SyntaxError" in res["reason"]


def test_time_limit_stops_after_two_cases():
    many = {"inputs": ["1\n"] * 5, "outputs": ["1\n"] * 5}
    res = verdict("while True:\n    pass", many, config=CodeConfig(timeout_s=1.0))
    assert res["verdict"] == "time_limit" and res["score"] == 0.0
    assert "not run" in res["reason"]


# ------------------------------------------------------------------------------- red team (code)
ONE_CASE = {"inputs": ["1 2\n"], "outputs": ["3\n"]}


def test_red_team_fork_bomb(backend):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    res = verdict(code, ONE_CASE, config=CodeConfig(timeout_s=2.0))
    assert res["verdict"] == "time_limit"


def test_red_team_ten_gigabytes(backend):
    res = verdict("x = bytearray(10 * 1024**3)\nprint(3)", ADD_IO)
    assert res["verdict"] == "memory_limit"


def test_red_team_huge_file_is_output_limit(backend):
    res = verdict("open('/tmp/big', 'wb').write(b'x' * (20 << 20))\nprint(3)", ONE_CASE)
    assert res["verdict"] == "output_limit"


def test_red_team_infinite_print(backend):
    res = verdict("while True:\n    print('spam' * 100)", ADD_IO)
    assert res["verdict"] == "output_limit"


def test_red_team_sys_exit_before_the_asserts(backend):
    res = verdict("import sys\nsys.exit(0)\ndef add(a, b):\n    return 0", None, ADD_HE)
    assert res["verdict"] != "pass" and res["score"] == 0.0


def test_red_team_exit_inside_the_candidate(backend):
    res = verdict("def add(a, b):\n    import sys\n    sys.exit(0)", None, ADD_HE)
    assert res["verdict"] == "runtime_error"


def test_red_team_os_exit(backend):
    res = verdict("import os\nos._exit(0)", ADD_PYTEST)
    assert res["verdict"] == "runtime_error" and "solution process ended" in res["reason"]
    res = verdict("def add(a, b):\n    import os\n    os._exit(0)", None, ADD_HE)
    assert res["verdict"] == "runtime_error"


def test_red_team_ctypes_exit_and_kill_parent(backend):
    res = verdict("import ctypes\nctypes.CDLL(None)._exit(0)", ADD_PYTEST)
    assert res["verdict"] == "runtime_error"
    code = "import ctypes, os, signal\nlibc = ctypes.CDLL(None)\nlibc.kill(os.getppid(), 9)\nlibc.kill(1, 9)\n"
    res = verdict(code + "def add(a, b):\n    return 0", ADD_PYTEST)
    assert res["verdict"] == "wrong_answer"


def test_red_team_patched_builtins(backend):
    code = "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 3"
    res = verdict(code, None, ADD_HE)
    # the checks run in another process: the patch reaches only the solution's own builtins
    assert res["verdict"] == "wrong_answer" and "AssertionError" in res["reason"]


def test_red_team_patched_pytest(backend):
    code = (
        "import contextlib, pytest\n"
        "pytest.raises = lambda *a, **k: contextlib.nullcontext()\n"
        "def add(a, b):\n    return 3\n"
    )
    res = verdict(code, ADD_PYTEST)
    # pytest.raises is the tests' own (a patch in the solution process does not reach it)
    assert res["verdict"] == "wrong_answer" and res["reason"].startswith("1/4 tests passed")


def test_red_team_patched_unittest(backend):
    tests = "import unittest\nfrom solution import add\n\nclass TestAdd(unittest.TestCase):\n"
    tests += "    def test_add(self):\n        self.assertEqual(add(1, 2), 3)\n"
    code = "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\ndef add(a, b):\n    return 0"
    res = verdict(code, tests)
    assert res["verdict"] == "wrong_answer" and "0 != 3" in res["reason"]
    assert verdict("def add(a, b):\n    return a + b", tests)["verdict"] == "pass"


def test_red_team_model_written_tests_do_not_count(backend):
    code = "def add(a, b):\n    return 0\n\ndef test_mine():\n    assert True\n\n"
    code += "class TestMine:\n    def test_x(self):\n        pass"
    res = verdict(code, ADD_PYTEST)
    # Only the 4 reference tests count (add(0, 0) == 0 happens to hold); the model's 2 tests do not.
    assert res["verdict"] == "wrong_answer" and res["reason"].startswith("1/4 tests passed")


def test_red_team_cannot_rewrite_the_reference_tests(backend):
    code = (
        "for p in ('/tmp/box/test_solution.py', '/tmp/box/harness.py'):\n"
        "    try:\n        open(p, 'w').write('def test_ok():\\n    pass\\n')\n"
        "    except OSError:\n        pass\n"
        "def add(a, b):\n    return 0"
    )
    assert verdict(code, ADD_PYTEST)["verdict"] == "wrong_answer"


def test_red_team_fake_success_line_without_the_nonce(backend):
    code = 'print(\'\\n\' + \'f\' * 32 + \' {"results": [{"name": "t", "verdict": "pass"}]}\')\nimport os\nos._exit(0)'
    assert verdict(code, ADD_PYTEST)["verdict"] == "runtime_error"


def test_red_team_reads_home_and_environment(backend, monkeypatch):
    secret = "still-fake-secret-" + secrets.token_hex(6)
    monkeypatch.setenv("STILL_FAKE_TOKEN", secret)
    home_file = Path.home() / f".still-code-secret-{secrets.token_hex(4)}"
    home_file.write_text(secret)
    try:
        code = (
            "import os\nleak = os.environ.get('STILL_FAKE_TOKEN', '')\n"
            f"try:\n    leak += open({str(home_file)!r}).read()\nexcept OSError:\n    pass\n"
            "print(leak or 'nothing')"
        )
        res = verdict(code, {"inputs": [""], "outputs": [secret]})
        assert res["verdict"] == "wrong_answer" and "nothing" in res["reason"]
    finally:
        home_file.unlink()


def test_pytest_features_fixtures_classes_capsys():
    tests = (
        "import pytest\n\n"
        "@pytest.fixture\ndef numbers():\n    yield [1, 2, 3]\n\n"
        "def test_fixture(numbers):\n    assert add(*numbers[:2]) == 3\n\n"
        "def test_capsys(capsys):\n    print(add(2, 3))\n    assert capsys.readouterr().out == '5\\n'\n\n"
        "def test_tmp(tmp_path):\n    (tmp_path / 'f').write_text('x')\n"
        "    assert (tmp_path / 'f').read_text() == 'x'\n\n"
        "class TestAdd:\n    def setup_method(self, method):\n        self.base = 10\n\n"
        "    def test_base(self):\n        assert add(self.base, 1) == 11\n\n"
        "@pytest.mark.skip(reason='not today')\ndef test_skipped():\n    assert False\n"
    )
    res = verdict("def add(a, b):\n    return a + b", tests)
    assert res["verdict"] == "pass" and res["reason"].startswith("4/4"), res["reason"]


# -------------------------------------------------------------------------------------- C++
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
CPP_ADD = '#include <cstdio>\nint main(){long a,b;scanf("%ld %ld",&a,&b);printf("%ld\\n",a+b);}\n'


@needs_gxx
def test_cpp_pass_wrong_and_compile_error():
    ok = check_code(f"```cpp\n{CPP_ADD}```", ADD_IO, {}, CFG)
    assert ok["verdict"] == "pass" and ok["method"].startswith("stdio/cpp/")
    wrong = check_code(f"```cpp\n{CPP_ADD.replace('a+b', 'a-b')}```", ADD_IO, {}, CFG)
    assert wrong["verdict"] == "wrong_answer"
    bad = check_code("```cpp\nint main( { return 0 }\n```", ADD_IO, {}, CFG)
    assert bad["verdict"] == "compile_error"


@needs_gxx
def test_cpp_memory_and_time_limits():
    alloc = "#include <vector>\n#include <cstdio>\n"
    alloc += 'int main(){std::vector<char> v(10000000000ULL, 1); printf("%d", v[5]);}\n'
    assert check_code(f"```cpp\n{alloc}```", ADD_IO, {}, CFG)["verdict"] == "memory_limit"
    spin = "int main(){volatile long x=0; for(;;) x++;}\n"
    res = check_code(f"```cpp\n{spin}```", ADD_IO, {}, CodeConfig(timeout_s=1.0))
    assert res["verdict"] == "time_limit"


# -------------------------------------------------------------------------- positive controls
def test_all_humaneval_canonical_solutions_pass():
    rows = [json.loads(line) for line in (DATA / "code" / "humaneval.jsonl").read_text().splitlines()]
    assert len(rows) == 164

    def one(row: dict) -> tuple[str, dict]:
        # The canonical solution is a completion of the prompt, as HumanEval defines it.
        return row["task_id"], check_code(py(row["prompt"] + row["canonical_solution"]), None, row, CodeConfig())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, rows))
    failed = [(tid, r["verdict"], r["reason"]) for tid, r in results if r["verdict"] != "pass"]
    assert failed == []
    # A broken completion of the same prompts fails: the tests really run.
    broken = check_code(py(rows[0]["prompt"] + "    return None\n"), None, rows[0], CodeConfig())
    assert broken["verdict"] == "wrong_answer"


@pytest.mark.slow
def test_kodcode_trials_agree_with_their_labels():
    questions = json.loads((DATA / "code" / "kodcode_algorithm_demo.json").read_text())
    trials = [(q["question_id"], name, t) for q in questions for name, t in q["trials"].items()]

    def one(job: tuple[str, str, dict]) -> tuple[str, str, str, dict]:
        qid, name, trial = job
        return (
            qid,
            name,
            trial["test_result"],
            check_code(py(trial["solution_code"]), trial["test_code"], {}, CodeConfig()),
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, trials))
    labels = {label for _, _, label, _ in results}
    assert labels == {"Pass", "Fail", "Fail - Timed Out"}
    disagree = [
        (qid, name, label, r["verdict"], r["reason"])
        for qid, name, label, r in results
        if (r["verdict"] == "pass") != (label == "Pass")  # "Fail" and "Fail - Timed Out" are failures
    ]
    assert disagree == [], disagree
    assert len(results) == 93


@pytest.mark.parametrize("backend", ["unshare", "none"])
def test_other_backends_run_the_same_checks(backend):
    if backend == "unshare" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    cfg = CodeConfig(sandbox=backend, timeout_s=3.0)
    ok = check_code(py("def add(a, b):\n    return a + b"), ADD_PYTEST, {}, cfg)
    assert ok["verdict"] == "pass" and ok["method"] == f"pytest/python/{backend}"
    assert check_code(py("import os\nos._exit(0)"), ADD_PYTEST, {}, cfg)["verdict"] == "runtime_error"
    assert check_code(py("print(sum(map(int, input().split())))"), ADD_IO, {}, cfg)["verdict"] == "pass"


def test_red_team_always_equal_objects_fail_humaneval(backend):
    always = "class Anything:\n    def __eq__(self, other):\n        return True\n\n"
    res = verdict(always + "def add(a, b):\n    return Anything()", None, ADD_HE)
    assert res["verdict"] == "wrong_answer" and "Anything object of its own, not plain data" in res["reason"]
    zero = "class Zero(float):\n    def __sub__(self, other):\n        return 0.0\n\n"
    res = verdict(zero + "def add(a, b):\n    return [Zero(0)][0] if a < 1 else a + b", None, ADD_HE)
    assert res["verdict"] == "wrong_answer"


def test_async_tests_run_and_yield_tests_fail():
    tests = "import asyncio\n\nasync def test_async():\n    await asyncio.sleep(0)\n    assert add(1, 2) == 3\n"
    assert verdict("def add(a, b):\n    return a + b", tests)["verdict"] == "pass"
    assert verdict("def add(a, b):\n    return 0", tests)["verdict"] == "wrong_answer"
    yields = "def test_gen():\n    yield add(1, 2) == 3\n"
    assert verdict("def add(a, b):\n    return a + b", yields)["verdict"] == "runtime_error"
