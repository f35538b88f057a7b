"""The OS sandbox: isolation (network, files, environment), limits and the process-tree kill.

Every attack must end in a non-pass result with the host unchanged and no process left behind.
No test sends traffic anywhere but the host's own 127.0.0.1 listener started here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import SANDBOXES, assert_no_sandbox_survivors, processes_with

from still.core import sandbox as sandbox_mod
from still.core.errors import StillError, UsageError
from still.core.sandbox import Limits, get_sandbox

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(scope="module", params=SANDBOXES)
def sb(request) -> sandbox_mod.Sandbox:
    """Every isolation check runs under both sandboxes (unshare is the fallback without bwrap)."""
    if request.param == "unshare" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    return get_sandbox(request.param)


@pytest.fixture(autouse=True)
def no_survivors():
    yield
    assert_no_sandbox_survivors()


def _survivors(marker: str) -> list[int]:
    return processes_with("cmdline", marker.encode())  # the marker is one argv item


def _assert_no_survivors(marker: str, wait_s: float = 2.0) -> None:
    deadline = time.monotonic() + wait_s
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _survivors(marker) == [], "processes from the sandbox are still alive"


def test_auto_picks_bwrap_here_and_is_cached():
    assert shutil.which("bwrap"), "CI installs bubblewrap (.ci/run)"
    first = get_sandbox("auto")
    assert first.backend == "bwrap"
    assert get_sandbox("auto") is first


def test_unknown_sandbox_is_a_usage_error():
    with pytest.raises(UsageError):
        get_sandbox("docker")


def test_network_namespace_has_only_loopback(sb):
    res = sb.run(["/bin/sh", "-c", "cat /proc/net/dev"], limits=Limits())
    assert res.exit_code == 0
    ifaces = [ln.split(":")[0].strip() for ln in res.stdout.decode().splitlines()[2:]]
    assert ifaces == ["lo"]


def test_host_loopback_listener_receives_nothing(sb):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port})); s.sendall(b'leak'); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', type(e).__name__)\n"
    )
    try:
        res = sb.run([PY, "-c", code], limits=Limits())
        assert b"BLOCKED" in res.stdout and b"CONNECTED" not in res.stdout
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_writes_outside_the_sandbox_do_not_reach_the_host(sb, tmp_path):
    marker = secrets.token_hex(8)
    targets = [ROOT / f"escape-{marker}", tmp_path / f"escape-{marker}", Path("/root") / f"escape-{marker}"]
    code = (
        "import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').write('x')\n"
        "        print('WROTE', p)\n    except OSError as e:\n        print('DENIED', p, e.errno)\n"
    )
    try:
        res = sb.run([PY, "-c", code, *map(str, targets)], limits=Limits())
        assert res.exit_code == 0, res.stderr
        for t in targets:
            assert not t.exists(), f"{t} appeared on the host"
        # The project dir is not even visible: only its venv (if any) is bound read-only.
        assert f"WROTE {ROOT}".encode() not in res.stdout
    finally:
        for t in targets:
            if t.exists():
                t.unlink()


def test_home_files_and_environment_secrets_are_not_visible(sb, monkeypatch):
    secret = "still-fake-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("STILL_FAKE_API_KEY", secret)
    home_file = Path.home() / f".still-test-secret-{secrets.token_hex(4)}"
    home_file.write_text(secret)
    code = (
        "import os, sys\n"
        "print(dict(os.environ))\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except OSError as e:\n"
        "        print('DENIED', e.errno)\n"
        "try:\n"
        "    print(os.listdir(os.path.dirname(sys.argv[1])))\n"
        "except OSError as e:\n"
        "    print('DENIED', e.errno)\n"
    )
    try:
        res = sb.run([PY, "-c", code, str(home_file), "/proc/1/environ"], limits=Limits())
        assert res.exit_code == 0, res.stderr
        assert secret.encode() not in res.stdout + res.stderr
        assert b"STILL_FAKE_API_KEY" not in res.stdout
        assert home_file.name.encode() not in res.stdout
    finally:
        home_file.unlink()


def test_code_runs_unprivileged_and_read_only(sb):
    code = "import os\nprint(os.getuid())\ntry:\n    open('/usr/pwned', 'w')\n"
    code += "except OSError as e:\n    print('ro', e.errno)\n"
    code += "try:\n    open('/etc/shadow').read()\n    print('SHADOW')\nexcept OSError:\n    pass\n"
    code += f"print('HOSTTREE' if os.path.exists({str(ROOT / 'tests')!r}) else 'hidden')\n"
    res = sb.run([PY, "-c", code], limits=Limits())
    assert b"SHADOW" not in res.stdout
    # only system and Python dirs are there (both backends, root or not)
    assert b"hidden" in res.stdout and b"HOSTTREE" not in res.stdout
    lines = res.stdout.decode().split()
    if os.geteuid() == 0:  # both sandboxes run root's code as a leased unprivileged uid
        uid = int(lines[0])
        assert sandbox_mod.SANDBOX_UID_BASE <= uid < sandbox_mod.SANDBOX_UID_BASE + sandbox_mod.SANDBOX_UID_SPAN
    assert "ro" in lines
    assert not Path("/usr/pwned").exists()


def test_fork_bomb_is_contained_and_leaves_no_process(sb):
    """The bomb hits the process limit (each process that is refused a fork says how many
    processes it sees), never gets past it, and the whole tree is gone after the deadline."""
    marker = "still-forkbomb-" + secrets.token_hex(6)
    code = (
        "import errno, os\nrefused = False\nwhile True:\n    try:\n        os.fork()\n"
        "    except OSError as e:\n        if not refused and e.errno == errno.EAGAIN:\n            refused = True\n"
        "            seen = sum(p.isdigit() for p in os.listdir('/proc'))\n"
        "            os.write(1, f'EAGAIN {seen}\\n'.encode())\n"
    )
    limits = Limits(wall_s=2.0, max_procs=16)
    res = sb.run([PY, "-c", code, marker], limits=limits)
    assert res.timed_out and not res.output_exceeded, res
    seen = [int(line.split()[1]) for line in res.stdout.decode().splitlines() if line.startswith("EAGAIN ")]
    assert seen, f"the process limit was never hit: {res.stdout[:200]!r} {res.stderr[-300:]!r}"
    # the bomb's processes plus the sandbox's own (init, and under unshare its shell)
    assert max(seen) <= limits.max_procs + 3, seen
    _assert_no_survivors(marker, wait_s=30.0)  # a bounded wait for the kernel's namespace kill


def test_a_leased_uid_has_no_process_left_when_the_run_returns(sb):
    """The uid goes back to the pool only once the run's namespace is gone: a fork bomb killed at
    its deadline must not leave dying processes to count against the next run's process limit."""
    if os.geteuid() != 0:
        pytest.skip("uids are leased for root callers only")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    for _ in range(2):
        res = sb.run([PY, "-c", code], limits=Limits(wall_s=1.0))
        assert res.timed_out
        base = sandbox_mod.SANDBOX_UID_BASE
        assert [p for p in range(4) if sandbox_mod._uid_processes(base + p)] == []
    res = sb.run(
        [PY, "-c", "import os\nfor _ in range(40):\n    os.fork() or os._exit(0)\nprint('forked')"], limits=Limits()
    )
    assert res.stdout == b"forked\n", res.stderr[-300:]


def test_setsid_daemon_is_killed_with_the_sandbox(sb):
    marker = "still-daemon-" + secrets.token_hex(6)
    code = (
        "import os, subprocess, sys\n"
        "log = open('/tmp/daemon.log', 'w')\n"  # not /dev/null: the test should not depend on the host's
        "subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]],\n"
        "                 start_new_session=True, stdin=log, stdout=log, stderr=log)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]])\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    res = sb.run([PY, "-c", code, marker], limits=Limits(wall_s=5.0))
    assert b"parent done" in res.stdout
    _assert_no_survivors(marker)


def test_deadline_kills_a_sleeping_program_promptly(sb):
    # A sleeper spends no CPU time, so only the wall-clock deadline can end it.
    marker = "still-sleep-" + secrets.token_hex(6)
    res = sb.run([PY, "-c", "import time; time.sleep(60)", marker], limits=Limits(wall_s=1.0))
    assert res.timed_out and not res.cpu_limited
    assert res.wall_s < 2.0  # deadline + kill + reap, with slack for a loaded CI box
    _assert_no_survivors(marker)


def test_a_busy_loop_ends_at_the_first_limit_it_reaches(sb):
    # RLIMIT_CPU defaults to wall_s, so a single-threaded spinner reaches the CPU limit and the
    # deadline at about the same moment: which one ends it depends on the scheduler (a loaded CI box
    # wakes the parent late). Either is a time limit to the verdicts; neither may be late.
    marker = "still-spin-" + secrets.token_hex(6)
    res = sb.run([PY, "-c", "while True: pass", marker], limits=Limits(wall_s=1.0))
    assert res.timed_out or res.cpu_limited, res
    assert res.wall_s < 2.5  # the CPU limit's soft signal can come a scheduler tick after 1 s of CPU
    _assert_no_survivors(marker)


def test_rlimits_apply_inside(sb):
    res = sb.run(["/bin/cat", "/proc/self/limits"], limits=Limits(wall_s=3.0))
    soft = {}
    for line in res.stdout.decode().splitlines()[1:]:
        name, values = line[:26].strip(), line[26:].split()
        soft[name] = values[0]
    assert soft["Max cpu time"] == "3"
    assert soft["Max address space"] == str(1 << 30)
    assert soft["Max processes"] == "64"
    assert soft["Max file size"] == str(16 << 20)
    assert soft["Max open files"] == "256"
    assert soft["Max core file size"] == "0"


def test_huge_allocation_fails_inside(sb):
    res = sb.run([PY, "-c", "x = bytearray(10 * 1024**3)"], limits=Limits())
    assert res.exit_code != 0
    assert b"MemoryError" in res.stderr


def test_infinite_output_is_cut_at_the_cap(sb):
    marker = "still-spam-" + secrets.token_hex(6)
    res = sb.run([PY, "-c", "while True: print('spam' * 100)", marker], limits=Limits(max_output_bytes=1 << 16))
    assert res.output_exceeded
    assert len(res.stdout) == 1 << 16
    _assert_no_survivors(marker)


def test_writes_inside_tmp_work_and_disappear(sb):
    marker = "still-tmp-" + secrets.token_hex(6)
    code = f"open('/tmp/{marker}', 'w').write('x'); print(open('/tmp/{marker}').read())"
    res = sb.run([PY, "-c", code], limits=Limits())
    assert res.stdout.strip() == b"x"
    assert not Path(f"/tmp/{marker}").exists()


def test_unshare_backend_isolates_the_host_tree_too(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare missing")
    ush = get_sandbox("unshare")
    secret_home = Path.home() / f".still-test-secret-{secrets.token_hex(4)}"
    secret_home.write_text("hidden")
    # a visible host directory outside /tmp (inside, /tmp is a fresh writable tmpfs)
    base = Path("/usr/local") if str(ROOT).startswith("/tmp/") else ROOT
    target = base / f"escape-{secrets.token_hex(6)}"
    code = (
        "import sys\nprint(open('/proc/net/dev').read())\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except OSError as e:\n"
        "        print('DENIED', e.errno)\n"
        f"try:\n    open({str(target)!r}, 'w')\nexcept OSError as e:\n    print('RO', e.errno)\n"
    )
    try:
        res = ush.run([PY, "-c", code, str(secret_home)], limits=Limits())
        out = res.stdout.decode()
        ifaces = [ln.split(":")[0].strip() for ln in out.splitlines()[2:] if ":" in ln and "|" not in ln]
        assert ifaces == ["lo"]
        assert "hidden" not in out
        assert "RO" in out
        assert not target.exists()
    finally:
        secret_home.unlink()
        if target.exists():
            target.unlink()


def test_refuses_with_advice_when_nothing_can_sandbox(monkeypatch):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    get_sandbox.cache_clear()
    try:
        with pytest.raises(StillError) as info:
            get_sandbox("auto")
        text = str(info.value)
        assert "bubblewrap" in text and "unprivileged_userns" in text and "--sandbox none" in text
    finally:
        get_sandbox.cache_clear()


def test_none_backend_warns_loudly(capsys, monkeypatch):
    monkeypatch.setattr(sandbox_mod, "_warned", False)
    res = get_sandbox("none").run([PY, "-c", "print('hi')"], limits=Limits())
    assert res.stdout.strip() == b"hi"
    assert "WITHOUT isolation" in capsys.readouterr().err


def test_kill_parent_and_init_leave_the_run_intact(sb):
    """The code is never pid 1: kill(getppid(), 9) and kill(1, 9) land on the namespace's init,
    which ignores them (under unshare the code once was pid 1, getppid() was 0 and kill(0, 9)
    killed the caller's process group, the host-side unshare included)."""
    code = "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.kill(os.getppid(), 9)\nlibc.kill(1, 9)\n"
    code += "print('alive', os.getpid() != 1)"
    res = sb.run([PY, "-c", code], limits=Limits())
    assert res.exit_code == 0 and res.stdout.split() == [b"alive", b"True"], res


def test_root_runs_get_distinct_uids_while_they_overlap():
    """Leased uids: concurrent runs never share one (RLIMIT_NPROC is per uid)."""
    with sandbox_mod.lease_uid() as a, sandbox_mod.lease_uid() as b:
        assert a != b
        with sandbox_mod.lease_uid() as c:
            assert c not in (a, b)
    with sandbox_mod.lease_uid() as again:
        assert again == min(a, b, c)  # released slots are reused: the lock files stay few
