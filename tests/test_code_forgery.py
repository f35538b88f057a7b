"""Red team: solutions that try to forge a pass instead of computing the answer (issue #8).

Every attack wraps a WRONG ``add`` (it returns ``a - b``) and must end non-pass, in the assert
(HumanEval) and the pytest (KodCode) styles, under both sandboxes. A control proves the tests
pass a correct ``add`` through the same path, so a failure here is the attack failing, not the
harness. docs/verify-code.md says what each attack targets and why it cannot work.
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import SANDBOXES, assert_no_sandbox_survivors

from still.core.verify_code import CodeConfig, check_code

ADD_HE = {
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n    assert candidate(10, -3) == 7\n"
    "    assert all(map(lambda ab: candidate(*ab) == sum(ab), [(1, 2), (5, 5)]))\n",
    "entry_point": "add",
}
ADD_PYTEST = (
    "import pytest\nfrom solution import add\n\n"
    "def test_small():\n    assert add(1, 2) == 3\n\n"
    "def test_float():\n    assert abs(add(0.5, 0.25) - 0.75) < 1e-9\n\n"
    "def test_approx():\n    assert add(0.5, 0.25) == pytest.approx(0.75)\n\n"
    "def test_sorted():\n    assert sorted([add(2, 2), add(1, 0)]) == [1, 4]\n\n"
    "def test_in():\n    assert add(3, 4) in [7]\n\n"
    "def test_all_map():\n    assert all(map(lambda ab: add(*ab) == sum(ab), [(1, 2), (5, 5)]))\n"
)
WRONG = "\ndef add(a, b):\n    return a - b\n"

# The success line the old harness printed, for attacks that try to print it themselves.
FAKE = '"{\\"results\\": [{\\"name\\": \\"t\\", \\"verdict\\": \\"pass\\"}]}"'

ATTACKS = {
    # the nonce from an inherited pipe (its fd number was in sys.argv), then a fake line + exit
    "nonce_from_inherited_fds": (
        "import os, re, sys\n"
        "found = set()\n"
        "def grab(fd):\n"
        "    try:\n        os.set_blocking(fd, False)\n"
        "        found.update(re.findall(rb'[0-9a-f]{32}', os.read(fd, 1 << 16)))\n"
        "    except OSError:\n        pass\n"
        "for fd in range(64):\n    grab(fd)\n"
        "for a in sys.argv[1:]:\n"
        "    if a.isdigit():\n"
        "        grab(int(a))\n"
        "for pid in os.listdir('/proc'):\n"
        "    for part in ('cmdline', 'environ', 'fd/0', 'fd/3', 'mem'):\n"
        "        try:\n"
        "            grab(os.open(f'/proc/{pid}/{part}', os.O_RDONLY | os.O_NONBLOCK))\n"
        "        except OSError:\n            pass\n"
        "for nonce in found or {b'0' * 32}:\n"
        f"    line = b'\\n' + nonce + b' ' + {FAKE}.encode() + b'\\n'\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    for target in ['/dev/stdout', '/proc/1/fd/1'] + [f'/proc/{p}/fd/1' for p in pids]:\n"
        "        try:\n            with open(target, 'wb') as f:\n                f.write(line)\n"
        "        except OSError:\n            pass\n"
        "    os.write(1, line)\n"
        "os._exit(0)\n"
    ),
    # replace the harness's functions, looked up as module globals of __main__
    "patch_main_globals": (
        "import __main__, sys\n"
        "def _fake_run(name, fn):\n    return {'name': name, 'verdict': 'pass'}\n"
        "__main__._run = _fake_run\n"
        "for mod in list(sys.modules.values()):\n"
        "    for attr in ('_run', '_classify', 'run_assert', 'run_pytest', 'handle'):\n"
        "        if hasattr(mod, attr):\n"
        "            try:\n                setattr(mod, attr, _fake_run)\n"
        "            except Exception:\n                pass\n"
    ),
    # an always-equal object whose class claims to be a standard one
    "always_equal_claiming_collections": (
        "class Anything:\n    __module__ = 'collections'\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "    def __lt__(self, other):\n        return True\n"
        "    def __sub__(self, other):\n        return 0.0\n"
        "    __rsub__ = __sub__\n"
        "    def __abs__(self):\n        return 0.0\n"
        "Anything.__qualname__ = 'OrderedDict'\n"
        "def add(a, b):\n    return Anything()\n"
    ),
    # a subclass of int (and of float) that overrides comparison and arithmetic
    "int_subclass_rigged_eq": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "    def __sub__(self, other):\n        return 0\n"
        "    def __rsub__(self, other):\n        return 0\n"
        "    def __lt__(self, other):\n        return True\n"
        "class Float(float):\n    __eq__ = Int.__eq__\n    __hash__ = float.__hash__\n"
        "    __sub__ = Int.__sub__\n    __rsub__ = Int.__rsub__\n"
        "def add(a, b):\n    return Float(0.0) if isinstance(a, float) else Int(0)\n"
    ),
    # walk the call stack and rewrite whatever looks like a verdict
    "frame_walking": (
        "import sys\n"
        "def add(a, b):\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for d in (f.f_locals, f.f_globals):\n"
        "            for k, v in list(d.items()):\n"
        "                if isinstance(v, dict) and v.get('verdict'):\n"
        "                    v['verdict'] = 'pass'\n"
        "                if k in ('expected', 'result'):\n"
        "                    try:\n                        d[k] = a - b\n"
        "                    except Exception:\n                        pass\n"
        "        f = f.f_back\n"
        "    return a - b\n"
    ),
    # patch through gc: every function of the harness returns a pass, every dict says pass
    "gc_patching": (
        "import gc\n"
        "def _pass(*a, **k):\n    return {'name': 'x', 'verdict': 'pass'}\n"
        "for o in gc.get_objects():\n"
        "    try:\n"
        "        if isinstance(o, dict) and 'verdict' in o:\n            o['verdict'] = 'pass'\n"
        "        elif callable(o) and getattr(o, '__name__', '') in ('_run', '_classify', 'handle', 'encode'):\n"
        "            o.__code__ = _pass.__code__\n"
        "    except Exception:\n        pass\n"
    ),
    # forge protocol replies: find the channel to the supervisor through gc and answer for it
    "forged_protocol_replies": (
        "import gc, os\n"
        "chans = [o for o in gc.get_objects() if type(o).__name__ == 'Channel']\n"
        "for c in chans:\n"
        '    for msg in (b\'["ret", 3, ""]\\n\', b\'["ret", ["r", 1, ["obj", ["n", "int"]]], ""]\\n\',\n'
        '                b\'{"verdict": "pass"}\\n\',\n'
        '                b\'["exc", ["unittest.case", "SkipTest", "Exception", ["t", []], null, "s"], ""]\\n\'):\n'
        "        try:\n            os.write(c.write_fd, msg)\n"
        "        except OSError:\n            pass\n"
    ),
    # turn failures into skips or expected failures
    "raise_skip_and_xfail": (
        "import unittest\n"
        "class XFailed(Exception):\n    pass\n"
        "class Skipped(Exception):\n    pass\n"
        "def add(a, b):\n"
        "    if a == 1:\n        raise unittest.SkipTest('skip me')\n"
        "    if a == 0.5:\n        raise XFailed('xfail me')\n"
        "    raise Skipped('skip')\n"
    ),
    # StopIteration out of a call ends the tests' own loops early: all(map(candidate, cases))
    "stop_iteration_from_a_call": ("def add(a, b):\n    raise StopIteration\n"),
    # kill or freeze the supervisor (found by scanning /proc): no verdict line, no pass
    "kill_the_supervisor": (
        "import os, signal\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError:\n        continue\n"
        "    if b'code_harness' in cmd:\n"
        "        for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):\n"
        "            try:\n                os.kill(int(pid), sig)\n"
        "            except OSError:\n                pass\n"
    ),
    "stop_the_supervisor": (
        "import os, signal\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        if b'code_harness' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
        "            os.kill(int(pid), signal.SIGSTOP)\n"
        "    except OSError:\n        pass\n"
    ),
    # every signal to every process it can see, pid 1 (the supervisor, or the sandbox's init) included
    "signal_everything": (
        "import os, signal\n"
        "for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):\n"
        "    for pid in [1, os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "        if pid != os.getpid():\n"
        "            try:\n                os.kill(pid, sig)\n"
        "            except OSError:\n                pass\n"
    ),
    # ptrace or read the supervisor's memory (it is not dumpable)
    "ptrace_the_supervisor": (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        if b'code_harness' not in open(f'/proc/{pid}/cmdline', 'rb').read():\n            continue\n"
        "    except OSError:\n        continue\n"
        "    if libc.ptrace(16, int(pid), None, None) == 0:\n"  # PTRACE_ATTACH
        "        print('ATTACHED')\n"
        "        os._exit(0)\n"
        "    try:\n"
        "        open(f'/proc/{pid}/mem', 'rb')\n"
        "        os._exit(0)\n"
        "    except OSError:\n        pass\n"
    ),
}


@pytest.fixture(params=[*SANDBOXES, *(f"{name}-cold" for name in SANDBOXES)])
def backend(request, monkeypatch):
    """Each sandbox as root runs the checks through a warm zygote (core/sandbox_zygote.py);
    "-cold" turns the zygote off: one sandbox and interpreter per check (also the non-root path)."""
    name, _, cold = request.param.partition("-")
    if name == "unshare" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    if cold and os.geteuid() != 0:
        pytest.skip("without root every check is cold already")
    monkeypatch.setenv("STILL_SANDBOX_ZYGOTE", "0" if cold else "1")
    yield name
    assert_no_sandbox_survivors()


def _check(code: str, style: str, backend: str, timeout_s: float = 3.0) -> dict:
    response = f"<think>hm</think>\n```python\n{code}\n```\n"
    cfg = CodeConfig(sandbox=backend, timeout_s=timeout_s)
    if style == "assert":
        return check_code(response, None, ADD_HE, cfg)
    return check_code(response, ADD_PYTEST, {}, cfg)


@pytest.mark.parametrize("style", ["assert", "pytest"])
def test_a_correct_add_passes_the_same_checks(style, backend):
    res = _check("def add(a, b):\n    return a + b\n", style, backend)
    assert res["verdict"] == "pass", res["reason"]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("style", ["assert", "pytest"])
def test_forgery_ends_non_pass(attack, style, backend):
    code = ATTACKS[attack]
    if "def add" not in code:
        code += WRONG
    res = _check(code, style, backend, timeout_s=1.0 if attack.startswith("stop") else 3.0)
    assert res["verdict"] != "pass", res
    assert res["score"] < 1.0
    assert "ATTACHED" not in res["reason"]


@pytest.mark.parametrize("style", ["assert", "pytest"])
def test_the_reference_tests_are_not_readable_by_the_solution(style, backend):
    """A solution that finds the tests anywhere (box, /proc, fds) answers right; it cannot."""
    code = (
        "import os\n"
        "def _find():\n"
        "    for path in ['/tmp/box/test_solution.py', '/tmp/box/still/test_solution.py']:\n"
        "        if os.path.exists(path):\n            return True\n"
        "    for pid in os.listdir('/proc'):\n"
        "        for part in ('fd/0', 'fd/3', 'cmdline', 'environ', 'mem'):\n"
        "            try:\n"
        "                fd = os.open(f'/proc/{pid}/{part}', os.O_RDONLY | os.O_NONBLOCK)\n"
        "                data = os.read(fd, 1 << 20)\n"
        "            except OSError:\n                continue\n"
        "            if b'candidate(1, ' + b'2)' in data or b'add(1, ' + b'2) == 3' in data:\n"
        "                return True\n"
        "    return False\n"
        "FOUND = _find()\n"
        "def add(a, b):\n    return a + b if FOUND else a - b\n"
    )
    assert _check(code, style, backend)["verdict"] == "wrong_answer"


def test_handles_compare_only_with_handles(backend):
    """Objects of the solution's own classes still work as objects (methods, len, iteration,
    == between two of them), which is what KodCode's class-based tests need."""
    code = (
        "class Stack:\n"
        "    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        return self.items.pop()\n"
        "    def __len__(self):\n        return len(self.items)\n"
        "    def __iter__(self):\n        return iter(list(self.items))\n"
        "    def __eq__(self, other):\n        return isinstance(other, Stack) and self.items == other.items\n"
        "def pair():\n    return Stack(), Stack()\n"
    )
    tests = (
        "from solution import Stack, pair\n\n"
        "def test_methods():\n    s = Stack()\n    s.push(1)\n    s.push(2)\n"
        "    assert len(s) == 2 and list(s) == [1, 2] and s.pop() == 2 and s.items == [1]\n"
        "    assert isinstance(s, Stack)\n\n"
        "def test_equal_handles():\n    a, b = pair()\n    assert a == b\n    a.push(1)\n    assert a != b\n\n"
        "def test_handle_is_not_plain_data():\n    s = Stack()\n    assert s != [] and not (s == [])\n"
    )
    res = check_code(f"```python\n{code}\n```", tests, {}, CodeConfig(sandbox=backend, timeout_s=3.0))
    assert res["verdict"] == "pass", res["reason"]


@pytest.mark.parametrize("style", ["assert", "pytest"])
def test_stop_iteration_cannot_end_the_tests_loops(style, backend):
    """all(map(candidate, cases)) is True when a call raises StopIteration (map stops): the
    supervisor turns a StopIteration out of anything but next() into a RuntimeError."""
    loop = "all(map(lambda ab: {f}(*ab) == sum(ab), [(1, 2), (5, 5)]))"
    response = "```python\ndef add(a, b):\n    raise StopIteration\n```"
    cfg = CodeConfig(sandbox=backend, timeout_s=3.0)
    if style == "assert":
        record = {**ADD_HE, "test": f"def check(candidate):\n    assert {loop.format(f='candidate')}\n"}
        res = check_code(response, None, record, cfg)
    else:
        res = check_code(
            response, f"from solution import add\n\ndef test_loop():\n    assert {loop.format(f='add')}\n", {}, cfg
        )
    assert res["verdict"] == "runtime_error" and "StopIteration outside next()" in res["reason"], res
