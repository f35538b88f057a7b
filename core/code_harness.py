"""The test harness that runs INSIDE the sandbox (stdlib only; pytest only when the tests use it).

Not imported by still: verify_code copies this file into the read-only box as ``harness.py``,
next to ``solution.py`` (the model's code) and ``test_solution.py`` (the reference tests).

argv: harness.py MODE NONCE_FD PER_TEST_S ENTRY_POINT CALL_CHECK SITE_DIRS
  MODE assert: exec the tests in the solution's namespace (HumanEval); call check(ENTRY_POINT)
               when the tests define check() without calling it.
  MODE pytest: import test_solution (KodCode convention) and call every test function/method
               itself: no pytest runner the solution could patch.

Only after every test has run does it read the per-run nonce from NONCE_FD (a pipe the host wrote)
and print one line, ``NONCE <json>``. A solution that exits early, crashes the interpreter or
kills its parent never lets that line appear, so it cannot pass. Builtins, unittest and pytest are
snapshotted before the solution is imported and compared afterwards: a solution that patches them
fails.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import inspect
import io
import itertools
import json
import os
import signal
import sys
import tempfile
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

BOX = os.path.dirname(os.path.abspath(__file__))
SOLUTION_FILE = os.path.join(BOX, "solution.py")
TEST_FILE = os.path.join(BOX, "test_solution.py")


class TestTimeout(BaseException):
    """Raised by the per-test timer (an outer wall-clock limit catches C-level hangs)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise TestTimeout(f"test took longer than {PER_TEST_S} s")


PER_TEST_S = 6.0
_GUARDED: dict[str, dict[str, Any]] = {}


def _snapshot() -> dict[str, dict[str, Any]]:
    snap = {"builtins": dict(vars(builtins))}
    for name in ("unittest", "unittest.case", "pytest", "_pytest.python_api", "_pytest.outcomes"):
        mod = sys.modules.get(name)
        if mod is not None:
            snap[name] = dict(vars(mod))
            snap["sys.modules"] = {**snap.get("sys.modules", {}), name: mod}
    case = sys.modules.get("unittest.case")
    if case is not None:
        snap["TestCase"] = dict(vars(case.TestCase))
    return snap


def _tampered(snap: dict[str, dict[str, Any]]) -> str | None:
    for key, before in snap.items():
        if key == "sys.modules":
            now: dict[str, Any] = {n: sys.modules.get(n) for n in before}
        elif key == "TestCase":
            now = dict(vars(sys.modules["unittest.case"].TestCase))
        elif key == "builtins":
            now = dict(vars(builtins))
        else:
            mod = sys.modules.get(key)
            now = dict(vars(mod)) if mod is not None else {}
        changed = [k for k, v in before.items() if now.get(k, _MISSING) is not v]
        if changed:
            return f"{key} changed while the solution ran ({', '.join(sorted(changed)[:5])})"
    return None


_MISSING = object()


def _classify(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, AssertionError) or name in ("Failed", "DidNotRaise"):
        return "wrong_answer"
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, TestTimeout):
        return "time_limit"
    return "runtime_error"


def _short(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip()
    return text[-500:]


def _run(name: str, fn: Callable[[], Any]) -> dict[str, Any]:
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_TEST_S)
    try:
        fn()
        verdict: dict[str, Any] = {"name": name, "verdict": "pass"}
    except BaseException as exc:  # SystemExit included: a test that exits has not passed
        kind = type(exc).__name__
        if kind in ("Skipped", "SkipTest"):
            verdict = {"name": name, "verdict": "skipped"}
        elif kind == "XFailed":
            verdict = {"name": name, "verdict": "pass"}
        else:
            verdict = {"name": name, "verdict": _classify(exc), "error": _short(exc)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return verdict


# ----------------------------------------------------------------------------------- assert mode
# Dunders through which a returned object could make a comparison in the tests succeed whatever
# its value ("always equal" objects, a subtraction that is always 0, a truthiness that lies).
_RIGGABLE = frozenset(
    "__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __bool__ __len__ __contains__ __hash__ __sub__ __rsub__ "
    "__abs__ __float__ __int__ __index__ __round__ __iter__ __getitem__".split()
)


class RiggedResult(AssertionError):
    """The candidate returned an object of its own class that overrides comparisons."""


def _rigged(value: Any, depth: int = 0) -> str | None:
    for klass in type(value).__mro__:
        if getattr(klass, "__module__", None) == "solution":
            hooks = sorted(_RIGGABLE & set(vars(klass)))
            if hooks:
                return f"returned a {type(value).__name__} whose class overrides {', '.join(hooks[:3])}"
    if depth < 3:
        items: Any = ()
        if isinstance(value, (list, tuple, set, frozenset)):
            items = value
        elif isinstance(value, dict):
            items = itertools.chain(value.keys(), value.values())
        for item in itertools.islice(items, 10000):
            found = _rigged(item, depth + 1)
            if found:
                return found
    return None


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The entry point, checked on every return: HumanEval answers are plain values."""

    def candidate(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        problem = _rigged(result)
        if problem:
            raise RiggedResult(problem)
        return result

    return candidate


def _load_module(name: str, path: str) -> Any:
    """Import the file at ``path`` as module ``name`` (registered, so tests can import it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_assert(entry_point: str | None, call_check: bool) -> list[dict[str, Any]]:
    holder: dict[str, Any] = {}

    def load() -> None:
        holder["ns"] = dict(vars(_load_module("solution", SOLUTION_FILE)))

    snap = _snapshot()
    loaded = _run("import solution", load)
    if loaded["verdict"] != "pass":
        loaded["name"] = "check"
        return [loaded]
    problem = _tampered(snap)
    if problem:
        return [{"name": "check", "verdict": "runtime_error", "error": problem}]

    def test() -> None:
        ns = holder["ns"]
        ns["__name__"] = "__still_tests__"
        if entry_point and callable(ns.get(entry_point)):
            ns[entry_point] = _guarded(ns[entry_point])
        with open(TEST_FILE, encoding="utf-8") as f:
            code = compile(f.read(), TEST_FILE, "exec")
        exec(code, ns)
        if call_check:
            if entry_point not in ns:
                raise NameError(f"the solution does not define {entry_point!r}")
            ns["check"](ns[entry_point])

    result = _run("check", test)
    problem = _tampered(snap)
    if problem:
        result = {"name": "check", "verdict": "runtime_error", "error": problem}
    return [result]


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
    try:
        with open(TEST_FILE, encoding="utf-8") as f:
            tree = ast.parse(f.read())
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


def run_pytest() -> list[dict[str, Any]]:
    with open(TEST_FILE, encoding="utf-8", errors="replace") as f:
        uses_pytest = "pytest" in f.read()
    if uses_pytest:  # imported before the solution, so a solution that patches it is caught
        try:
            import pytest  # noqa: F401
        except ImportError:
            pass
    import unittest  # noqa: F401

    snap = _snapshot()
    holder: dict[str, Any] = {}

    def load() -> None:
        holder["module"] = _load_module("test_solution", TEST_FILE)

    loaded = _run("import", load)
    problem = _tampered(snap)
    if loaded["verdict"] != "pass" or problem:
        error = problem or loaded.get("error", "")
        verdict = "runtime_error" if problem else loaded["verdict"]
        return [{"name": n, "verdict": verdict, "error": error} for n in _declared_tests()]
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
            problem = _tampered(snap)
            if problem:
                result = {"name": label, "verdict": "runtime_error", "error": problem}
            if result["verdict"] != "skipped":
                results.append(result)
    return results


def main() -> None:
    global PER_TEST_S
    mode, nonce_fd, per_test = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    entry_point = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    call_check = len(sys.argv) > 5 and sys.argv[5] == "1"
    PER_TEST_S = per_test
    sys.path.insert(0, BOX)
    if len(sys.argv) > 6:  # run with -S: site-packages come last, as site would add them
        sys.path.extend(d for d in sys.argv[6].split(os.pathsep) if d)
    results = run_assert(entry_point, call_check) if mode == "assert" else run_pytest()
    # Every test has run: only now is the nonce read and printed.
    nonce = os.read(nonce_fd, 256).decode("ascii", "replace").strip()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    line = "\n" + nonce + " " + json.dumps({"results": results}) + "\n"
    os.write(1, line.encode("utf-8", "replace"))
    os._exit(0)


if __name__ == "__main__":
    main()
