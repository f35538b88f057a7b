"""Code verification: extract the response's code, run it against reference tests in the sandbox.

Test formats (``tests`` argument, else the record's ``tests``/``test``/``test_code``/``input_output``):

- **stdin/stdout pairs**: ``{"inputs": [...], "outputs": [...]}`` (APPS/TACO; also as a JSON
  string) or ``[{"input": ..., "output": ...}, ...]``. Each case is one sandboxed run; outputs are
  compared line by line after stripping trailing whitespace per line and trailing empty lines.
  Missing or extra lines fail. score = passed cases / cases. After two cases hit the time limit
  the remaining cases are not run (they count as failed).
- **assert style** (HumanEval): test code defining ``check(candidate)``; ``entry_point`` from the
  record, else the ``check(NAME)`` call in the tests, else the last function in the prompt. A
  response that defines the entry point runs after the prompt (so the prompt's imports and helpers
  exist); a response that does not (a bare completion) is appended to the prompt.
- **pytest files** (KodCode): the solution is module ``solution``; tests that do not import from
  it get ``from solution import *``. Test functions and ``Test*``/``unittest.TestCase`` methods are
  called by our own harness (fixtures: the file's own, ``tmp_path``, ``capsys``, ``monkeypatch``;
  ``parametrize``, ``skip``/``skipif``). score = passed tests / tests.

Reward hacking (assert and pytest styles; docs/verify-code.md): the verdict is decided by a
trusted supervisor process in the sandbox that holds the nonce and the reference tests (sent on
stdin, never written to a file); the solution runs in a separate process it starts, and what
crosses back is plain data or handles to the solution's objects (code_wire.py, code_remote.py).
Only tests defined in the reference file count.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from still.core import sandbox_zygote
from still.core.errors import StillError
from still.core.fields import TESTS_FALLBACKS
from still.core.sandbox import Limits, RunResult, Sandbox, get_sandbox
from still.core.sandbox_zygote import Zygote

CODE_VERDICTS = (
    "pass",
    "wrong_answer",
    "time_limit",
    "memory_limit",
    "output_limit",
    "runtime_error",
    "compile_error",
    "no_answer",
    "truncated",
    "error",
)
PYTHON_TAGS = {"python", "py", "python3", "py3", "python2"}
CPP_TAGS = {"cpp", "c++", "cc", "cxx", "hpp"}
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*)\Z", re.S | re.M)
# The trusted supervisor and what it needs, staged read-only in the box under still/.
_HARNESS_FILES = ("code_harness.py", "code_remote.py", "code_wire.py", "code_worker.py", "code_zygote.py")


def _boot(module: str, box_inside: str) -> str:
    """``python -c`` code that imports a staged module (from its bytecode) and runs its main().

    sys.path[0] would be the cwd (/tmp, writable by the solution): it is replaced first.
    """
    return f"import sys; sys.path[0] = {box_inside + '/still'!r}; import {module}; {module}.main()"


@functools.cache
def _harness_files() -> dict[str, bytes]:
    """The staged files: the four modules as sourceless bytecode (``NAME.pyc``, which Python
    imports when no ``NAME.py`` is next to it), compiled once per process instead of on every run;
    no ``__pycache__`` directory either (each directory costs a slow rmdir after a run)."""
    import py_compile

    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="still-pyc-") as tmp:
        for name in _HARNESS_FILES:
            compiled = os.path.join(tmp, name + "c")
            py_compile.compile(str(Path(__file__).with_name(name)), cfile=compiled, doraise=True)
            files[name + "c"] = Path(compiled).read_bytes()
    return files


MAX_TIME_LIMITS = 2  # stdin/stdout: stop running cases after this many time limits

# Python runs with -S (no site module: the .pth hooks of a venv, editable installs included, cost
# tens of ms per start), and the site-packages dirs are appended to sys.path instead, so installed
# packages (numpy, pytest, ...) stay importable. The launcher runs solution.py as __main__.
_LAUNCHER = """\
def _run():
    import sys
    sys.path.extend({site!r})
    path = {path!r}
    sys.argv[:] = [path]
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    g = sys.modules["__main__"].__dict__
    for k in list(g):
        if k not in ("__name__", "__builtins__", "__doc__", "__spec__", "__loader__", "__package__"):
            del g[k]
    g["__file__"] = path
    exec(code, g)


_run()
"""


@functools.cache
def site_dirs() -> tuple[str, ...]:
    """The interpreter's site-packages directories (what -S leaves out)."""
    import site

    return tuple(d for d in site.getsitepackages() if os.path.isdir(d))


@dataclass(frozen=True)
class CodeConfig:
    sandbox: str = "auto"  # auto | bwrap | unshare | none
    timeout_s: float = 6.0  # per test case (wall), CPU limit similar
    memory_mb: int = 1024
    language: str = "auto"  # auto | python | cpp
    max_output_bytes: int = 1 << 20


def _result(verdict: str, score: float, extracted: str | None, method: str, reason: str) -> dict[str, Any]:
    return {"verdict": verdict, "score": score, "extracted": extracted, "method": method, "reason": reason}


# ------------------------------------------------------------------------------------ extraction
def _language_of(tag: str) -> str | None:
    tag = tag.lower()
    if tag in PYTHON_TAGS:
        return "python"
    if tag in CPP_TAGS:
        return "cpp"
    return None


def _guess_language(code: str) -> str:
    if re.search(r"^\s*#\s*include\s*[<\"]", code, re.M) or re.search(r"\bint\s+main\s*\(", code):
        return "cpp"
    return "python"


def extract_code(response: str, language: str = "auto") -> tuple[str | None, str, str]:
    """(code, language, how) from a response; code is None when there is none.

    The answer part is what follows the last ``</think>``; a ``<think>`` that never closes means
    the reasoning was cut off, so there is no answer. In it: the last fenced block tagged with a
    code language (or untagged), else the whole answer when it is code itself.
    """
    text = response or ""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return None, language, "the reasoning never closes (no </think>): truncated, no answer"
    blocks = [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        m = _OPEN_FENCE.search(text)
        if m is not None:
            blocks = [(m.group(1), m.group(2))]
    candidates = []
    for tag, body in blocks:
        lang = _language_of(tag)
        if tag and lang is None:
            continue  # ```text, ```bash, ```json ...: not the solution
        if language != "auto" and lang is not None and lang != language:
            continue
        candidates.append((body, lang))
    if candidates:
        body, lang = candidates[-1]
        lang = lang or (language if language != "auto" else _guess_language(body))
        return body, lang, "last fenced block"
    if blocks:
        return None, language, "no code block in a supported language"
    stripped = text.strip()
    if not stripped:
        return None, language, "empty answer"
    lang = language if language != "auto" else _guess_language(stripped)
    if lang == "python":
        try:
            ast.parse(stripped)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None, lang, "no fenced code and the answer is not Python code"
    return stripped, lang, "unfenced answer"


# ---------------------------------------------------------------------------------- test formats
@dataclass
class _Spec:
    kind: str  # stdio | assert | pytest
    cases: list[tuple[str, str]] | None = None
    test_code: str = ""
    entry_point: str | None = None
    prompt: str = ""


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    return "" if value is None else str(value)


def _parse_tests(tests: Any, record: dict[str, Any]) -> _Spec | str:
    """The test spec, or a string saying why there is none."""
    if tests is None:
        for key in TESTS_FALLBACKS:
            if record.get(key) not in (None, "", [], {}):
                tests = record[key]
                break
        else:
            return "the record has no tests"
    if isinstance(tests, str) and tests.lstrip()[:1] in ("{", "["):
        try:
            tests = json.loads(tests)
        except ValueError:
            pass
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        if tests.get("fn_name"):
            return "call-based tests (fn_name) are not supported; give stdin/stdout or assert/pytest tests"
        ins, outs = tests["inputs"], tests["outputs"]
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs) or not ins:
            return "tests.inputs and tests.outputs must be non-empty lists of the same length"
        return _Spec("stdio", cases=[(_as_text(i), _as_text(o)) for i, o in zip(ins, outs, strict=True)])
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        cases = []
        for t in tests:
            if "input" not in t or "output" not in t:
                return "each stdin/stdout test needs 'input' and 'output'"
            cases.append((_as_text(t["input"]), _as_text(t["output"])))
        return _Spec("stdio", cases=cases)
    if isinstance(tests, dict) and isinstance(tests.get("test") or tests.get("test_code"), str):
        merged = {**record, **tests}
        return _parse_tests(tests.get("test") or tests.get("test_code"), merged)
    if not isinstance(tests, str) or not tests.strip():
        return f"unsupported tests value of type {type(tests).__name__}"
    code = tests
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None
    defines_check = tree is not None and any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    if defines_check:
        entry = record.get("entry_point")
        if not entry:
            calls = re.findall(r"^check\((\w+)\)\s*$", code, re.M)
            entry = calls[-1] if calls else None
        prompt = str(record.get("prompt") or "")
        if not entry and prompt:
            defs = re.findall(r"^def\s+(\w+)\s*\(", prompt, re.M)
            entry = defs[-1] if defs else None
        return _Spec("assert", test_code=code, entry_point=entry, prompt=prompt)
    return _Spec("pytest", test_code=code)


def _calls_check(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Name) and func.id == "check":
                return True
    return False


def _defines(code: str, name: str | None) -> bool:
    if not name:
        return False
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return bool(re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.M))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def assemble_humaneval(prompt: str, code: str, entry_point: str | None) -> str:
    """The program for a HumanEval-style task: prompt + full function, or prompt + completion."""
    if not prompt:
        return code
    if _defines(code, entry_point):
        return prompt.rstrip("\n") + "\n    pass\n\n" + code if _ends_open(prompt) else prompt + "\n\n" + code
    return prompt + code


def _ends_open(prompt: str) -> bool:
    """Whether the prompt ends in a def header with no body at all (then it needs a placeholder)."""
    try:
        ast.parse(prompt)
        return False
    except SyntaxError:
        try:
            ast.parse(prompt.rstrip("\n") + "\n    pass\n")
            return True
        except SyntaxError:
            return False


_IMPORTS_SOLUTION = re.compile(r"^\s*(from\s+solution\s+import|import\s+solution\b)", re.M)


def kodcode_test_file(test_code: str) -> str:
    """KodCode convention: tests that do not import from ``solution`` get ``from solution import *``."""
    if _IMPORTS_SOLUTION.search(test_code):
        return test_code
    lines = test_code.splitlines(keepends=True)
    insert_at = 0
    try:
        tree = ast.parse(test_code)
        for node in tree.body:
            is_docstring = (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            )
            if (isinstance(node, ast.ImportFrom) and node.module == "__future__") or (is_docstring and insert_at == 0):
                insert_at = node.end_lineno or insert_at
            else:
                break
    except SyntaxError:
        pass
    return "".join(lines[:insert_at]) + "from solution import *\n" + "".join(lines[insert_at:])


def _count_tests(code: str) -> int:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return 1
    n = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            n += 1
        elif isinstance(node, ast.ClassDef):
            n += sum(1 for i in node.body if isinstance(i, ast.FunctionDef) and i.name.startswith("test"))
    return max(1, n)


# ---------------------------------------------------------------------------------------- output
def normalise_output(text: str) -> list[str]:
    """Lines with trailing whitespace stripped, trailing empty lines dropped."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def compare_output(got: str, expected: str) -> str | None:
    """None when equal, else where they first differ (missing and extra lines count)."""
    g, e = normalise_output(got), normalise_output(expected)
    for i, (a, b) in enumerate(zip(g, e, strict=False)):
        if a != b:
            return f"line {i + 1}: expected {b[:60]!r}, got {a[:60]!r}"
    if len(g) < len(e):
        return f"output has {len(g)} lines, expected {len(e)} (missing lines)"
    if len(g) > len(e):
        return f"output has {len(g)} lines, expected {len(e)} (extra lines)"
    return None


def _failure_verdict(res: RunResult) -> str:
    """The verdict of a run that did not finish normally (or finished with a non-zero exit)."""
    if res.output_exceeded:
        return "output_limit"
    if res.timed_out or res.cpu_limited:
        return "time_limit"
    err = res.stderr.decode("utf-8", "replace")
    if res.signal == signal.SIGXFSZ or "File too large" in err:  # RLIMIT_FSIZE (Python gets EFBIG)
        return "output_limit"
    if "MemoryError" in err or "std::bad_alloc" in err or "Cannot allocate memory" in err:
        return "memory_limit"
    return "runtime_error"


def _stderr_tail(res: RunResult) -> str:
    lines = [ln for ln in res.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _describe(res: RunResult, verdict: str) -> str:
    if verdict == "time_limit":
        return f"time limit ({res.wall_s:.1f} s)"
    if verdict == "output_limit":
        return "output limit exceeded"
    tail = _stderr_tail(res)
    code = f"exit code {res.exit_code}" if res.signal is None else f"killed by signal {res.signal}"
    return f"{verdict.replace('_', ' ')} ({code}){': ' + tail if tail else ''}"


# ----------------------------------------------------------------------------------------- runs
def _limits(config: CodeConfig, wall_s: float | None = None) -> Limits:
    wall = wall_s if wall_s is not None else config.timeout_s
    return Limits(wall_s=wall, cpu_s=wall, memory_mb=config.memory_mb, max_output_bytes=config.max_output_bytes)


def _write(path: str, text: str | bytes) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def _digest(box: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(box):
        for name in sorted(files):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, box)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _run_stdio(sb: Sandbox, argv: list[str], box: str, spec: _Spec, config: CodeConfig) -> tuple[str, float, str]:
    assert spec.cases is not None
    passed = 0
    ran = 0
    first_fail: tuple[str, str] | None = None
    time_limits = 0
    total = len(spec.cases)
    for i, (stdin, expected) in enumerate(spec.cases):
        if time_limits >= MAX_TIME_LIMITS:
            break
        ran += 1
        in_path = os.path.join(box, f"input{i}.txt")
        _write(in_path, stdin)
        res = sb.run(argv, limits=_limits(config), box_dir=box, stdin=in_path)
        os.unlink(in_path)
        if res.exit_code == 0 and not res.timed_out and not res.output_exceeded:
            diff = compare_output(res.stdout.decode("utf-8", "replace"), expected)
            if diff is None:
                passed += 1
                continue
            verdict, why = "wrong_answer", f"wrong answer: {diff}"
        else:
            verdict = _failure_verdict(res)
            why = _describe(res, verdict)
            time_limits += verdict == "time_limit"
        if first_fail is None:
            first_fail = (verdict, f"case {i + 1}: {why}")
    if first_fail is None:
        return "pass", 1.0, f"{passed}/{total} cases passed"
    not_run = f"; {total - ran} cases not run after {MAX_TIME_LIMITS} time limits" if ran < total else ""
    return first_fail[0], passed / total, f"{passed}/{total} cases passed; {first_fail[1]}{not_run}"


def _run_harness(
    sb: Sandbox, box: str, spec: _Spec, config: CodeConfig, zygote: Zygote | None
) -> tuple[str, float, str]:
    """Run the trusted supervisor (code_harness.py) on the tests; the solution runs in its own process.

    The nonce and the reference tests go in on stdin, which the supervisor reads to the end before
    the solution process exists: neither is ever in a file, fd or argv the solution can reach.
    """
    n_tests = _count_tests(spec.test_code) if spec.kind == "pytest" else 1
    # One limit per test inside the harness; the outer wall clock covers them all plus start-up.
    wall = min(max(config.timeout_s, 60.0), config.timeout_s * n_tests) + 2.0
    nonce = secrets.token_hex(16)
    call_check = spec.kind == "assert" and not _calls_check(spec.test_code) and bool(spec.entry_point)
    prompt = spec.prompt
    if prompt and _ends_open(prompt):
        prompt = prompt.rstrip("\n") + "\n    pass\n"
    request = {
        "nonce": nonce,
        "mode": spec.kind,
        "tests": spec.test_code if spec.kind == "assert" else kodcode_test_file(spec.test_code),
        "prompt": prompt,
        "entry_point": spec.entry_point,
        "call_check": call_check,
        "per_test_s": config.timeout_s,
    }
    argv = [
        sys.executable,
        "-S",
        "-B",
        "-c",
        _boot("code_harness", sb.inside(box, "box")),
        os.pathsep.join(site_dirs()),
    ]
    stdin = json.dumps(request).encode()
    if zygote is not None:
        before = _digest(box)
        # pytest mode imports these on every run: the zygote imports them once instead
        preload = ["inspect", "ast", "unittest", *(["pytest"] if "pytest" in spec.test_code else [])]
        preload = preload if spec.kind == "pytest" else []
        try:
            res = zygote.run(argv[-1:], limits=_limits(config, wall), box_dir=box, stdin=stdin, preload=preload)
        except sandbox_zygote.ZygoteGone:
            zygote = None  # (the next check starts a fresh one) this one gets a sandbox of its own
        except sandbox_zygote.RunSetupFailed as exc:
            return "error", 0.0, f"the sandbox could not be set up for this run: {exc}"
    if zygote is None:
        for name, data in _harness_files().items():
            _write(os.path.join(box, "still", name), data)
        before = _digest(box)
        res = sb.run(argv, limits=_limits(config, wall), box_dir=box, stdin=stdin)
    if _digest(box) != before:
        return "error", 0.0, "the staged files changed during the run (sandbox breach?): not trusted"
    summary = None
    marker = nonce + " "
    for line in reversed(res.stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(marker):
            try:
                summary = json.loads(line[len(marker) :])
            except ValueError:
                summary = None
            break
    if summary is None or res.output_exceeded:
        verdict = _failure_verdict(res)
        if verdict == "runtime_error":
            why = (
                f"the test supervisor ended without a verdict (exit code {res.exit_code}"
                f"{'' if res.signal is None else f', signal {res.signal}'}): it was killed or crashed"
            )
            tail = _stderr_tail(res)
            why += f"; {tail}" if tail else ""
        else:
            why = _describe(res, verdict)
        return verdict, 0.0, why
    results = [r for r in summary.get("results", []) if isinstance(r, dict)]
    if not results:
        return "error", 0.0, "no tests were collected from the reference tests"
    passed = sum(1 for r in results if r.get("verdict") == "pass")
    failed = [r for r in results if r.get("verdict") != "pass"]
    if not failed:
        return "pass", 1.0, f"{passed}/{len(results)} tests passed"
    first = failed[0]
    verdict = str(first.get("verdict"))
    if verdict not in CODE_VERDICTS:
        verdict = "runtime_error"
    why = f"{passed}/{len(results)} tests passed; {first.get('name')}: {first.get('error', verdict)}"
    return verdict, passed / len(results), why[:1000]


def _compile_cpp(sb: Sandbox, box: str, out: str, config: CodeConfig) -> RunResult | None:
    """Compile solution.cpp in the sandbox into OUT/solution; None when g++ is missing."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    argv = [gxx, "-std=c++17", "-O2", "-pipe", "-o", f"{sb.inside(out, 'out')}/solution"]
    argv.append(f"{sb.inside(box, 'box')}/solution.cpp")
    limits = Limits(wall_s=max(30.0, config.timeout_s), memory_mb=max(2048, config.memory_mb), file_size_mb=64)
    return sb.run(argv, limits=limits, box_dir=box, out_dir=out)


_zygote_warned = False


def _warm_zygote(sb: Sandbox) -> Zygote | None:
    """This thread's warm zygote for supervisor runs, when the host allows one (sandbox_zygote.py);
    when it cannot start, say so once and give every check its own sandbox."""
    global _zygote_warned
    if not sandbox_zygote.enabled(sb) or _zygote_warned:
        return None
    try:
        return sandbox_zygote.zygote_for(sb, _harness_files(), site_dirs())
    except StillError as exc:
        _zygote_warned = True
        sys.stderr.write(f"still: {exc}; every code check starts its own sandbox instead (slower)\n")
        return None


def check_code(response_text: str, tests: Any, record: dict[str, Any], config: CodeConfig) -> dict[str, Any]:
    """Verify one response's code against reference tests; see the module docstring.

    Returns ``{"verdict", "score", "extracted", "method", "reason"}``. Raises StillError when the
    host cannot sandbox (and ``config.sandbox`` is not ``none``).
    """
    code, language, how = extract_code(response_text, config.language)
    spec = _parse_tests(tests, record)
    kind = spec.kind if isinstance(spec, _Spec) else "code"
    if code is None:
        # a reasoning block that never closes was cut off: truncated, as for math answers
        verdict = "truncated" if "never closes" in how else "no_answer"
        return _result(verdict, 0.0, None, f"{kind}/{language}", how)
    method = f"{kind}/{language}"
    if isinstance(spec, str):
        return _result("error", 0.0, code, method, spec)
    if language == "cpp" and spec.kind != "stdio":
        return _result("error", 0.0, code, method, "C++ is checked with stdin/stdout tests only")
    sb = get_sandbox(config.sandbox)
    method = f"{kind}/{language}/{sb.backend}"
    zygote = _warm_zygote(sb) if language == "python" and spec.kind != "stdio" else None
    with zygote.box() if zygote is not None else tempfile.TemporaryDirectory(prefix="still-code-") as work:
        box = work if language == "python" else os.path.join(work, "box")  # C++ also needs out/
        if box != work:
            os.mkdir(box)
        if language == "python":
            program = assemble_humaneval(spec.prompt, code, spec.entry_point) if spec.kind == "assert" else code
            try:
                ast.parse(program)
            except SyntaxError as exc:
                return _result("compile_error", 0.0, code, method, f"SyntaxError: {exc.msg} (line {exc.lineno})")
            except (ValueError, RecursionError, MemoryError) as exc:
                return _result("compile_error", 0.0, code, method, f"{type(exc).__name__}: cannot parse")
            _write(os.path.join(box, "solution.py"), program)
            if spec.kind == "stdio":
                inside = sb.inside(box, "box")
                _write(os.path.join(box, "launch.py"), _LAUNCHER.format(site=site_dirs(), path=f"{inside}/solution.py"))
                argv = [sys.executable, "-S", "-B", f"{inside}/launch.py"]
                verdict, score, reason = _run_stdio(sb, argv, box, spec, config)
            else:
                os.mkdir(os.path.join(box, "still"))  # (a zygote's run gets its modules bound there)
                verdict, score, reason = _run_harness(sb, box, spec, config, zygote)
        else:
            out = os.path.join(work, "out")
            os.mkdir(out)
            _write(os.path.join(box, "solution.cpp"), code)
            compiled = _compile_cpp(sb, box, out, config)
            if compiled is None:
                return _result("error", 0.0, code, method, "g++ is not installed: cannot check C++")
            if compiled.exit_code != 0 or not os.path.exists(os.path.join(out, "solution")):
                first = compiled.stderr.decode("utf-8", "replace").strip().splitlines()[:3]
                why = "; ".join(first)[:500] or _describe(compiled, _failure_verdict(compiled))
                return _result("compile_error", 0.0, code, method, why)
            shutil.copy(os.path.join(out, "solution"), os.path.join(box, "solution"))
            os.chmod(os.path.join(box, "solution"), 0o755)
            argv = [f"{sb.inside(box, 'box')}/solution"]
            verdict, score, reason = _run_stdio(sb, argv, box, spec, config)
    return _result(verdict, round(score, 6), code, method, reason)
