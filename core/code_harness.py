"""The trusted test supervisor that runs INSIDE the sandbox (stdlib only; pytest when the tests use it).

Not imported by still: verify_code copies it, with code_wire.py, code_remote.py and
code_worker.py, into the read-only box under ``still/``; the model's code is ``solution.py``
next to that folder.

argv: python -c "...; import code_harness; code_harness.main()" SITE_DIRS
(everything else arrives on stdin, as one JSON object)
  nonce        the per-run secret that marks the verdict line
  mode         "assert" (HumanEval: check(candidate)) or "pytest" (KodCode test file)
  tests        the reference test code (never written where the solution could read it)
  prompt       assert mode: the task's prompt, executed HERE so its helpers are trusted
  entry_point, call_check, per_test_s, site

The verdict is decided in this process, which the solution cannot reach: the solution runs in a
separate process (code_worker.py) started after the nonce and the tests have been read and
stdin closed, with nothing inherited but two pipes; this process is not dumpable (no ptrace, no
/proc/PID/mem, fd or environ for the solution) and blocks every signal it can, so the solution
can only kill or stop it, which loses the verdict line and fails the run. What crosses back is
plain data or handles (code_wire.py, code_remote.py). The tests run here, against stand-ins.
"""

from __future__ import annotations

import _signal
import io
import json
import os
import sys
import time
import types
from typing import TYPE_CHECKING

# inspect, ast, tempfile... are imported where pytest mode needs them: every import here is paid
# on each run of an assert-style check.
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

import code_remote
from code_remote import Peer, SolutionFailed, contains_handles

HERE = os.path.dirname(os.path.abspath(__file__))
BOX = os.path.dirname(HERE)
TEST_FILE = os.path.join(BOX, "test_solution.py")  # a name for tracebacks: the file never exists
PER_TEST_S = 6.0
TEST_CODE = ""


def _outcome(kind: str) -> tuple[type, ...]:
    """pytest's and unittest's outcome classes, by identity (never by a name the solution picks)."""
    found: list[type] = []
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is not None:
        name = {"skip": "Skipped", "xfail": "XFailed", "fail": "Failed"}[kind]
        found.append(getattr(outcomes, name))
    case = sys.modules.get("unittest.case")
    if kind == "skip" and case is not None:
        found.append(case.SkipTest)
    return tuple(c for c in found if isinstance(c, type))


def _classify(exc: BaseException) -> str:
    if isinstance(exc, SolutionFailed):
        return str(exc.verdict)
    if isinstance(exc, AssertionError) or isinstance(exc, _outcome("fail")):
        return "wrong_answer"
    if isinstance(exc, MemoryError):
        return "memory_limit"
    return "runtime_error"


def _short(exc: BaseException) -> str:
    if isinstance(exc, SolutionFailed):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[-500:]


def _run(name: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run one test; a solution process that died or hung during it decides the verdict."""
    peer = code_remote.PEER
    if peer is not None:
        peer.deadline = time.monotonic() + PER_TEST_S
        if peer.generation > 0 and (peer.failure is not None or peer.chan is None):
            try:
                peer.start()  # a fresh solution process after a crash or a time limit
            except BaseException as exc:
                return {"name": name, "verdict": _classify(exc), "error": _short(exc)}
    try:
        fn()
        verdict: dict[str, Any] = {"name": name, "verdict": "pass"}
    except BaseException as exc:  # SystemExit included: a test that exits has not passed
        if isinstance(exc, _outcome("skip")):
            verdict = {"name": name, "verdict": "skipped"}
        elif isinstance(exc, _outcome("xfail")):
            verdict = {"name": name, "verdict": "pass"}
        else:
            verdict = {"name": name, "verdict": _classify(exc), "error": _short(exc)}
    if peer is not None and peer.failure is not None:
        # the test may have caught what the solution's death raised: it still did not pass
        verdict = {"name": name, "verdict": peer.failure.verdict, "error": str(peer.failure)}
    return verdict


# ----------------------------------------------------------------------------------- assert mode
class RiggedResult(AssertionError):
    """The candidate returned one of its own objects where HumanEval expects plain data."""


def _guarded(remote: Any) -> Callable[..., Any]:
    """The entry point as the tests call it: a call into the solution process, plain data back."""

    def candidate(*args: Any, **kwargs: Any) -> Any:
        result = remote(*args, **kwargs)
        found = contains_handles(result)
        if found:
            raise RiggedResult(f"returned a {found} object of its own, not plain data")
        return result

    return candidate


def run_assert(prompt: str, entry_point: str | None, call_check: bool, peer: Peer) -> list[dict[str, Any]]:
    holder: dict[str, Any] = {}

    def load() -> None:
        holder["exports"] = peer.start()

    loaded = _run("import solution", load)
    if loaded["verdict"] != "pass":
        loaded["name"] = "check"
        return [loaded]

    def test() -> None:
        ns: dict[str, Any] = {"__name__": "__still_tests__"}
        if prompt:
            try:  # the prompt's helpers (poly, encode_cyclic...) are the dataset's: run them here
                exec(compile(prompt, os.path.join(BOX, "prompt.py"), "exec"), ns)
            except Exception:
                pass
        exports = holder["exports"]
        if entry_point and entry_point in exports:
            ns[entry_point] = _guarded(exports[entry_point])
        elif entry_point:
            ns.pop(entry_point, None)
        exec(compile(TEST_CODE, TEST_FILE, "exec"), ns)
        if call_check:
            if not entry_point or entry_point not in ns:
                raise NameError(f"the solution does not define {entry_point!r}")
            ns["check"](ns[entry_point])

    return [_run("check", test)]


# ----------------------------------------------------------------------------------- pytest mode
# ----------------------------------------------------------------------------------- pytest mode
class _Capture:
    """A minimal capsys/capfd: swaps sys.stdout/sys.stderr for buffers."""

    def __init__(self) -> None:
        self._out = io.StringIO()
        self._err = io.StringIO()
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._out, self._err

    def readouterr(self) -> Any:
        from collections import namedtuple

        capture_result = namedtuple("capture_result", ["out", "err"])
        result = capture_result(self._out.getvalue(), self._err.getvalue())
        self._out.seek(0)
        self._out.truncate()
        self._err.seek(0)
        self._err.truncate()
        return result

    def disabled(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def close(self) -> None:
        sys.stdout, sys.stderr = self._saved


def _fixture_function(obj: Any) -> tuple[Callable[..., Any], bool] | None:
    """(function, autouse) when obj is a pytest fixture (old and new pytest), else None."""
    getter = getattr(obj, "_get_wrapped_function", None)
    marker = getattr(obj, "_fixture_function_marker", None) or getattr(obj, "_pytestfixturefunction", None)
    if getter is not None and marker is not None:
        return getter(), bool(getattr(marker, "autouse", False))
    if marker is not None:
        return getattr(obj, "__wrapped__", obj), bool(getattr(marker, "autouse", False))
    return None


class _Resolver:
    def __init__(self, fixtures: dict[str, tuple[Callable[..., Any], bool]]) -> None:
        self.fixtures = fixtures
        self.cache: dict[str, Any] = {}
        self.teardown: list[Callable[[], Any]] = []

    def value(self, name: str) -> Any:
        import inspect
        import tempfile

        if name in self.cache:
            return self.cache[name]
        if name in self.fixtures:
            value = self.call(self.fixtures[name][0], {})
            if inspect.isgenerator(value):
                gen = value
                value = next(gen)
                self.teardown.append(lambda: next(gen, None))
        elif name in ("tmp_path", "tmpdir", "tmp_path_factory"):
            import pathlib

            value = pathlib.Path(tempfile.mkdtemp(dir=os.environ.get("HOME", "/tmp")))
        elif name in ("capsys", "capfd", "capsysbinary"):
            cap = _Capture()
            self.teardown.append(cap.close)
            value = cap
        elif name == "monkeypatch":
            import pytest

            mp = pytest.MonkeyPatch()
            self.teardown.append(mp.undo)
            value = mp
        elif name == "request":
            value = types.SimpleNamespace(param=None, node=None, config=None)
        else:
            raise LookupError(f"fixture {name!r} not found")
        self.cache[name] = value
        return value

    def call(self, fn: Callable[..., Any], given: dict[str, Any]) -> Any:
        import inspect

        kwargs = {}
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if pname in given:
                kwargs[pname] = given[pname]
            elif param.default is not param.empty and pname not in self.fixtures:
                continue
            else:
                kwargs[pname] = self.value(pname)
        return fn(**kwargs)

    def close(self) -> None:
        for fn in reversed(self.teardown):
            try:
                fn()
            except BaseException:
                pass


def _marks(*objs: Any) -> list[Any]:
    found: list[Any] = []
    for obj in objs:
        marks = getattr(obj, "pytestmark", [])
        found.extend(marks if isinstance(marks, list) else [marks])
    return found


def _param_sets(marks: list[Any]) -> list[dict[str, Any]]:
    combos: list[list[dict[str, Any]]] = []
    for mark in marks:
        if getattr(mark, "name", "") != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        sets = []
        for v in values:
            if hasattr(v, "marks") and isinstance(getattr(v, "values", None), tuple):
                vals = v.values  # pytest.param(...)
            elif len(names) == 1:
                vals = (v,)
            else:
                vals = tuple(v)
            sets.append(dict(zip(names, vals, strict=False)))
        combos.append(sets)
    if not combos:
        return [{}]
    import itertools

    return [dict(kv for d in prod for kv in d.items()) for prod in itertools.product(*combos)]


def _skipped(marks: list[Any]) -> bool:
    for mark in marks:
        name = getattr(mark, "name", "")
        if name == "skip":
            return True
        if name == "skipif" and mark.args and bool(mark.args[0]) and not isinstance(mark.args[0], str):
            return True
    return False


def _collect(module: types.ModuleType) -> Iterator[tuple[str, Callable[[_Resolver, dict[str, Any]], Any], list[Any]]]:
    """(name, runner, marks) for every test defined in the test file itself, in file order."""
    import inspect

    for name, obj in list(vars(module).items()):
        if inspect.isfunction(obj) and name.startswith("test") and obj.__code__.co_filename == TEST_FILE:
            yield name, _function_runner(obj), _marks(obj)
        elif inspect.isclass(obj) and getattr(obj, "__module__", None) == module.__name__:
            import unittest

            is_case = issubclass(obj, unittest.TestCase)
            if not (is_case or name.startswith("Test")):
                continue
            for meth_name, meth in list(vars(obj).items()):
                if not (meth_name.startswith("test") and inspect.isfunction(meth)):
                    continue
                yield f"{name}.{meth_name}", _method_runner(obj, meth_name, is_case), _marks(obj, meth)


def _function_runner(fn: Callable[..., Any]) -> Callable[[_Resolver, dict[str, Any]], Any]:
    def run(r: _Resolver, given: dict[str, Any]) -> Any:
        return _settle(r.call(fn, given))

    return run


def _settle(result: Any) -> Any:
    """Run an async test to completion; refuse yield tests (pytest removed them)."""
    import inspect

    if inspect.iscoroutine(result):
        import asyncio

        return asyncio.run(result)
    if inspect.isgenerator(result):
        result.close()
        raise TypeError("yield tests are not supported (pytest removed them in 4.0)")
    return result


def _method_runner(cls: type, meth_name: str, is_case: bool) -> Callable[[_Resolver, dict[str, Any]], Any]:
    def run(r: _Resolver, given: dict[str, Any]) -> None:
        if is_case:
            inst = cls(meth_name)
            if hasattr(cls, "setUpClass"):
                cls.setUpClass()
            inst.setUp()
            try:
                getattr(inst, meth_name)()
            finally:
                inst.tearDown()
                if hasattr(cls, "tearDownClass"):
                    cls.tearDownClass()
            return
        inst = cls()
        method = getattr(inst, meth_name)
        for hook in ("setup_class",):
            if hasattr(cls, hook):
                getattr(cls, hook)()
        if hasattr(inst, "setup_method"):
            r.call(inst.setup_method, {"method": method})
        elif hasattr(inst, "setup"):
            inst.setup()
        try:
            _settle(r.call(method, given))
        finally:
            if hasattr(inst, "teardown_method"):
                r.call(inst.teardown_method, {"method": method})
            elif hasattr(inst, "teardown"):
                inst.teardown()

    return run


def _declared_tests() -> list[str]:
    """Test names from the file's syntax, for reporting when the module cannot even be imported."""
    import ast

    try:
        tree = ast.parse(TEST_CODE)
    except (SyntaxError, ValueError):
        return ["test_solution"]
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    names.append(f"{node.name}.{item.name}")
    return names or ["test_solution"]


def run_pytest(peer: Peer) -> list[dict[str, Any]]:
    if "pytest" in TEST_CODE:
        try:
            import pytest  # noqa: F401
        except ImportError:
            pass
    import unittest  # noqa: F401

    holder: dict[str, Any] = {}

    def load() -> None:
        exports = peer.start()
        solution = types.ModuleType("solution")
        solution.__dict__.update(exports)
        solution.__all__ = list(exports)  # type: ignore[attr-defined]
        sys.modules["solution"] = solution
        module = types.ModuleType("test_solution")
        module.__file__ = TEST_FILE
        sys.modules["test_solution"] = module
        exec(compile(TEST_CODE, TEST_FILE, "exec"), module.__dict__)
        holder["module"] = module

    loaded = _run("import", load)
    if loaded["verdict"] != "pass":
        return [{"name": n, "verdict": loaded["verdict"], "error": loaded.get("error", "")} for n in _declared_tests()]
    module = holder["module"]
    fixtures: dict[str, tuple[Callable[..., Any], bool]] = {}
    for name, obj in vars(module).items():
        fx = _fixture_function(obj)
        if fx is not None:
            marker = getattr(obj, "_fixture_function_marker", None)
            fixtures[getattr(marker, "name", None) or getattr(obj, "name", None) or name] = fx
    results: list[dict[str, Any]] = []
    for name, runner, marks in list(_collect(module)):
        if _skipped(marks):
            continue
        for i, given in enumerate(_param_sets(marks)):
            label = name if not given else f"{name}[{i}]"
            resolver = _Resolver(fixtures)

            def one(runner: Any = runner, resolver: _Resolver = resolver, given: dict[str, Any] = given) -> None:
                try:
                    for fx_name, (_, autouse) in fixtures.items():
                        if autouse:
                            resolver.value(fx_name)
                    runner(resolver, given)
                finally:
                    resolver.close()

            result = _run(label, one)
            if result["verdict"] != "skipped":
                results.append(result)
    return results


class _Discard(io.TextIOBase):
    """sys.stdout/sys.stderr of the supervisor outside capsys: the real fd 1 carries the verdict only."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return len(s)


def _harden() -> None:
    """No ptrace, /proc/PID/mem, fd or environ for the solution; no signal but KILL/STOP lands."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals() - {_signal.SIGKILL, _signal.SIGSTOP})
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    except (OSError, AttributeError) as exc:
        os.write(2, f"still harness: cannot make the supervisor undumpable: {exc}\n".encode())
        os._exit(70)


def main() -> None:
    global PER_TEST_S, TEST_CODE
    _harden()
    site = [d for d in sys.argv[1].split(os.pathsep) if d] if len(sys.argv) > 1 else []
    sys.path.extend(site)
    boot_worker = f"import sys; sys.path[0] = {HERE!r}; import code_worker; code_worker.main()"
    peer = code_remote.PEER = Peer(BOX, site, boot_worker)
    peer.prefork()  # before any secret is read
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    spec = json.loads(b"".join(chunks))
    nonce = str(spec.pop("nonce"))
    verdict_fd = os.dup(1)
    sink = os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 1)
    os.close(sink)
    sys.stdout = sys.stderr = _Discard()
    sys.set_int_max_str_digits(0)
    PER_TEST_S = float(spec["per_test_s"])
    TEST_CODE = str(spec["tests"])
    try:
        if spec["mode"] == "assert":
            results = run_assert(
                str(spec.get("prompt") or ""), spec.get("entry_point"), bool(spec.get("call_check")), peer
            )
        else:
            results = run_pytest(peer)
    finally:
        peer.stop()
    line = "\n" + nonce + " " + json.dumps({"results": results}) + "\n"
    os.write(verdict_fd, line.encode("utf-8", "replace"))
    os._exit(0)


if __name__ == "__main__":
    main()
