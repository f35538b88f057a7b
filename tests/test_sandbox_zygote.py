"""The warm zygote (core/sandbox_zygote.py, core/code_zygote.py): each supervisor run is forked
into fresh namespaces, and nothing a run leaves behind reaches the next run on the same zygote.

Root only (the zygote exists only for root callers); every test runs under both sandboxes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest
from conftest import SANDBOXES, assert_no_sandbox_survivors

from still.core import sandbox_zygote
from still.core.sandbox import _python_dirs
from still.core.verify_code import CodeConfig, check_code

_PYTHON_UNDER_TMP = any(d == "/tmp" or d.startswith("/tmp/") for d in _python_dirs())
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the warm zygote is for root callers"),
    # sandbox_zygote.enabled() keeps one sandbox per run then (each run's fresh /tmp would cover it)
    pytest.mark.skipif(_PYTHON_UNDER_TMP, reason="Python lives under /tmp: the zygote is not used there"),
]


@pytest.fixture(params=SANDBOXES)
def backend(request, monkeypatch):
    if request.param == "unshare" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    monkeypatch.delenv("STILL_SANDBOX_ZYGOTE", raising=False)
    sandbox_zygote.close_zygotes()
    yield request.param
    assert_no_sandbox_survivors()
    sandbox_zygote.close_zygotes()
    assert_no_sandbox_survivors()  # nothing at all once the zygotes are closed


def _check(solution: str, test: str, backend: str, timeout_s: float = 6.0) -> dict:
    record = {"test": test, "entry_point": "probe"}
    return check_code(f"```python\n{solution}\n```", None, record, CodeConfig(sandbox=backend, timeout_s=timeout_s))


def _zygote_pid() -> int:
    """The host pid of this thread's zygote (the deepest of its infrastructure pids)."""
    pids = sandbox_zygote.infrastructure_pids()
    assert len(pids) >= 2, pids  # the sandbox's process(es) and the zygote itself

    def depth(pid: int) -> int:
        n = 0
        while pid in pids:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
            n += 1
        return n

    return max(pids, key=depth)


# where a run could leave files: everywhere writable (the walk of / stops two levels down)
TOPS = "('/tmp', '/dev', '/var/tmp', '/run', '/')"

LEAVE = """
import ctypes, os, socket, time
TOKEN = {token!r}
TOPS = {tops}
libc = ctypes.CDLL(None, use_errno=True)
written = []
for top in TOPS:
    for root, dirs, files in os.walk(top):
        if root.startswith(('/proc', '/sys')):
            dirs[:] = []
            continue
        try:
            with open(os.path.join(root, 'leftover-' + TOKEN), 'w') as f:
                f.write(TOKEN)
            written.append(root)
        except OSError:
            pass
        if root.count('/') >= (2 if top == '/' else 4):
            dirs[:] = []
shm = libc.shmget(0x5717, 4096, 0o1666)  # IPC_CREAT | 0666: outlives its creator in the ipc ns
msq = libc.msgget(0x5717, 0o1666)
if os.fork() == 0:  # a daemon holding an abstract socket
    os.setsid()
    if os.fork() == 0:
        s = socket.socket(socket.AF_UNIX)
        s.bind('\\0still-' + TOKEN)
        s.listen(1)
        time.sleep(600)
    os._exit(0)
time.sleep(0.2)

def probe():
    return [written != [], shm >= 0, msq >= 0]
"""

FIND = """
import os, socket
TOKEN = {token!r}
TOPS = {tops}
found = []
own = os.path.join('/tmp', 'mine-' + TOKEN)
open(own, 'w').write('x')  # the scan must find this one: it can see a file when there is one
seen_own = False
for top in TOPS:
    for root, dirs, files in os.walk(top):
        if root.startswith(('/proc', '/sys')):
            dirs[:] = []
            continue
        for name in files:
            if TOKEN in name and name.startswith('leftover-'):
                found.append(os.path.join(root, name))
            seen_own = seen_own or os.path.join(root, name) == own
        if root.count('/') >= (2 if top == '/' else 4):
            dirs[:] = []
for table in ('shm', 'msg'):
    with open('/proc/sysvipc/' + table) as f:
        if any(line.split()[0] == str(0x5717) for line in f.readlines()[1:]):
            found.append('sysv ' + table)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect('\\0still-' + TOKEN)
    found.append('abstract socket')
except OSError:
    pass
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
if pids[0] != 1 or len(pids) > 4:
    found.append(f'processes {{pids}}')

def probe():
    return found if seen_own else ['the scan cannot see files']
"""


def test_a_run_cannot_see_what_the_previous_run_on_the_same_zygote_left(backend):
    token = secrets.token_hex(6)
    left = _check(
        LEAVE.format(token=token, tops=TOPS),
        "def check(candidate):\n    assert candidate() == [True, True, True]\n",
        backend,
    )
    assert left["verdict"] == "pass", left  # it did write files and create IPC objects and a daemon
    zygote = _zygote_pid()
    found = _check(
        FIND.format(token=token, tops=TOPS),
        "def check(candidate):\n    found = candidate()\n    assert found == [], found\n",
        backend,
    )
    assert _zygote_pid() == zygote, "both runs must come from the same warm zygote"
    assert found["verdict"] == "pass", found["reason"]


def test_the_next_run_is_clean_even_after_a_run_was_killed_at_its_deadline(backend):
    token = secrets.token_hex(6)
    looping = LEAVE.format(token=token, tops=TOPS).replace("time.sleep(0.2)", "while True:\n    pass")
    killed = _check(looping, "def check(candidate):\n    assert candidate()\n", backend, timeout_s=1.5)
    assert killed["verdict"] == "time_limit", killed
    zygote = _zygote_pid()
    found = _check(
        FIND.format(token=token, tops=TOPS),
        "def check(candidate):\n    found = candidate()\n    assert found == [], found\n",
        backend,
    )
    assert _zygote_pid() == zygote
    assert found["verdict"] == "pass", found["reason"]


STATUS = """
import os, socket
def field(pid, name):
    with open(f'/proc/{pid}/status') as f:
        return next(line.split()[1:] for line in f if line.startswith(name + ':'))
me, sup = os.getpid(), 1
INFO = {
    'uid': field(me, 'Uid'), 'sup_uid': field(sup, 'Uid'), 'gid': field(me, 'Gid'),
    'caps': [field(me, c)[0] for c in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')],
    'sup_caps': [field(sup, c)[0] for c in ('CapPrm', 'CapEff', 'CapBnd')],
    'nnp': field(me, 'NoNewPrivs'), 'sup_nnp': field(sup, 'NoNewPrivs'),
    'ifaces': [n for _, n in socket.if_nameindex()],
    'mem': open('/proc/1/mem', 'rb').read(1) if os.access('/proc/1/mem', os.R_OK) else None,
}
def probe():
    return INFO
"""


def test_a_run_is_pid_1_of_its_namespaces_as_a_leased_uid_without_capabilities(backend):
    test = (
        "def check(candidate):\n    info = candidate()\n"
        "    uid = info['uid'][0]\n"
        "    assert uid != '0' and info['uid'] == [uid] * 4 and info['gid'] == [uid] * 4, info\n"
        "    assert info['sup_uid'] == info['uid'], info\n"
        "    assert set(info['caps']) == {'0000000000000000'}, info\n"
        "    assert set(info['sup_caps']) == {'0000000000000000'}, info\n"
        "    assert info['nnp'] == ['1'] and info['sup_nnp'] == ['1'], info\n"
        "    assert info['ifaces'] == ['lo'] and info['mem'] is None, info\n"
    )
    res = _check(STATUS, test, backend)
    assert res["verdict"] == "pass", res["reason"]


def test_the_zygote_never_holds_the_nonce_or_the_reference_tests(backend):
    secret = "expected_" + secrets.token_hex(8)
    test = f"def check(candidate):\n    assert candidate() == {secret!r}\n"
    res = _check(f"def probe():\n    return {secret[:9]!r} + {secret[9:]!r}", test, backend)
    assert res["verdict"] == "pass", res
    zygote = _zygote_pid()
    memory = bytearray()
    with open(f"/proc/{zygote}/maps") as maps, open(f"/proc/{zygote}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                memory += mem.read(end - start)
            except OSError:
                continue
    assert b"code_zygote.main()" in memory  # the scan sees the zygote's memory
    assert secret.encode() not in memory


def test_a_dead_zygote_is_replaced(backend):
    ok = "def probe():\n    return 1\n"
    test = "def check(candidate):\n    assert candidate() == 1\n"
    assert _check(ok, test, backend)["verdict"] == "pass"
    first = _zygote_pid()
    os.kill(first, 9)
    deadline = time.monotonic() + 10
    while any(z.alive() for z in sandbox_zygote._registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _check(ok, test, backend)["verdict"] == "pass"
    assert _zygote_pid() != first


def test_a_run_whose_sandbox_cannot_be_built_is_a_sandbox_error_and_the_zygote_goes_on(backend):
    from still.core.sandbox import Limits, get_sandbox
    from still.core.verify_code import _harness_files, site_dirs

    zygote = sandbox_zygote.zygote_for(get_sandbox(backend), _harness_files(), site_dirs())
    with zygote.box() as box:
        shutil.rmtree(box)  # the run's box is gone: binding it fails before anything runs
        with pytest.raises(sandbox_zygote.RunSetupFailed, match="setting up the run failed"):
            zygote.run([""], limits=Limits(), box_dir=box, stdin=b"{}")
        os.mkdir(box)
    ok = _check("def probe():\n    return 1\n", "def check(candidate):\n    assert candidate() == 1\n", backend)
    assert ok["verdict"] == "pass" and sandbox_zygote._local.zygote is zygote


def test_a_threads_zygote_ends_with_the_thread(backend):
    import threading

    zygotes = []

    def work() -> None:
        assert (
            _check("def probe():\n    return 1\n", "def check(candidate):\n    assert candidate() == 1\n", backend)[
                "verdict"
            ]
            == "pass"
        )
        zygotes.append(sandbox_zygote._local.zygote)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(zygotes) == 1
    deadline = time.monotonic() + 10
    while zygotes[0].alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not zygotes[0].alive()


def test_after_a_crash_the_next_test_gets_a_fresh_solution_interpreter(backend):
    """The restart execs the supervisor's modules from /tmp/box/still, which a zygote's run gets
    bound read-only from the zygote's own copies (nothing is staged per run)."""
    solution = "import os\ndef add(a, b):\n    if a < 0:\n        os._exit(3)\n    return a + b\n"
    tests = (
        "from solution import add\n\ndef test_crash():\n    assert add(-1, 1) == 0\n\n"
        "def test_fine():\n    assert add(2, 3) == 5\n\ndef test_fine_too():\n    assert add(1, 1) == 2\n"
    )
    res = check_code(f"```python\n{solution}```", tests, {}, CodeConfig(sandbox=backend))
    assert res["verdict"] == "runtime_error" and res["score"] == pytest.approx(2 / 3), res


def test_no_process_of_the_leased_uid_is_left_when_a_killed_run_returns(backend):
    from still.core import sandbox as sandbox_mod

    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = _check(bomb + "def probe():\n    return 1\n", "def check(candidate):\n    assert candidate()\n", backend, 1.0)
    assert res["verdict"] == "time_limit", res
    base = sandbox_mod.SANDBOX_UID_BASE
    assert [p for p in range(4) if sandbox_mod._uid_processes(base + p)] == []
