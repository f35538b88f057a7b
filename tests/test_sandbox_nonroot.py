"""The sandbox and code verdicts as an unprivileged caller (uid 65534), under both backends.

The rest of the suite runs as root here, where both backends drop the code to a leased uid; an
unprivileged caller takes the other path: bwrap or unshare in a user namespace of its own, no
uid change, no warm zygote (docs/verify-code.md, "Without root"). These tests start a real
process as uid 65534 (``setpriv``), so they need root to start and are skipped without it.
What must hold there: only loopback, no writes outside the sandbox's own /tmp, the limits,
nothing left behind, and verdicts that cannot be forged; and where user namespaces are not
allowed, ``still verify`` refuses with one message naming what to do, exit code 1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import processes_with
from test_code_forgery import ADD_HE, ADD_PYTEST, ATTACKS, WRONG

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root (to become uid 65534) and setpriv"
)

# Runs as root: a private mount namespace where uid 65534 can reach the Python installation, the
# venv and the repository (a directory above one of them that others cannot enter, /root here, is
# covered by an empty 0755 tmpfs with the needed tree bound back); with "nouserns", also a user
# namespace whose own limit of user namespaces is 0, so nothing inside can create one. Then
# setpriv to 65534 and exec the command.
LAUNCHER = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
    MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
    no_userns, needed, cmd = sys.argv[1] == "1", sys.argv[2].split(":"), sys.argv[3:]

    def ok(rc, what):
        if rc != 0:
            sys.exit(f"launcher: {what}: {os.strerror(ctypes.get_errno())}")

    def mount(src, dst, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        ok(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok(libc.unshare(CLONE_NEWNS | (CLONE_NEWUSER if no_userns else 0)), "unshare")
        os.write(ready_w, b"x")
        os.read(go_r, 1)
        if no_userns:
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for d in needed:
            parts = d.strip("/").split("/")
            closed = next(("/" + "/".join(parts[:i]) for i in range(1, len(parts))
                           if not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001), None)
            if closed is None:
                continue
            stash = tempfile.mkdtemp()
            mount(d, stash, None, MS_BIND | MS_REC)
            mount("tmpfs", closed, "tmpfs", 0, "mode=755,size=1m")
            os.makedirs(d, 0o755, exist_ok=True)
            mount(stash, d, None, MS_MOVE)
        os.execvp("setpriv", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *cmd])
    os.read(ready_r, 1)
    if no_userns:  # identity maps: uid 65534 stays 65534 inside
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write("0 0 4294967295\\n")
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
    """
)


def _as_nobody(
    cmd: list[str], *, no_userns: bool = False, stdin: str = "", timeout: float = 300
) -> subprocess.CompletedProcess:
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(ROOT))})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, "1" if no_userns else "0", ":".join(needed), *cmd],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )


def _nobody_python(code: str, **kwargs) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", dir="/var/tmp", delete=False) as f:
        f.write(code)
    try:
        os.chmod(f.name, 0o644)
        res = _as_nobody([sys.executable, f.name], **kwargs)
    finally:
        os.unlink(f.name)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def can_become_nobody():
    res = _as_nobody([sys.executable, "-c", "import os, still.core.sandbox; print(os.getuid())"])
    if res.returncode != 0:
        pytest.skip(f"cannot run still as uid {NOBODY} here: {res.stderr[-300:]}")
    assert res.stdout.split() == [str(NOBODY)]


ISOLATION = """
import json, os, socket, sys
from still.core import sandbox
from still.core.sandbox import Limits, get_sandbox
backend, port, outside = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sb = get_sandbox(backend)
PY = sys.executable
out = {"tag": sandbox.RUN_TAG, "uid": os.getuid(), "drop": sb.drop_to_uid}
# the caller itself can write the outside dir: the sandbox is what stops the code
open(os.path.join(outside, "caller"), "w").write("x")
probe = '''
import os, socket, sys
res = {"ifaces": [n for _, n in socket.if_nameindex()]}
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); res["connected"] = True
except OSError:
    res["connected"] = False
res["wrote"] = []
for path in (os.path.join(sys.argv[2], "escape"), "/var/tmp/escape-%d" % os.getpid(), "/usr/escape"):
    try:
        open(path, "w").write("x"); res["wrote"].append(path)
    except OSError:
        pass
open("/tmp/inside", "w").write("x")
res["tmp_ok"] = os.path.exists("/tmp/inside")
res["shadow"] = os.access("/etc/shadow", os.R_OK)
res["visible"] = [p for p in sys.argv[2:] if os.path.exists(p)]
print(__import__("json").dumps(res))
'''
# the caller's data (readable by it) must not be visible: only system and Python dirs are there
res = sb.run([PY, "-c", probe, str(port), outside, REPO_DATA], limits=Limits())
out["probe"] = json.loads(res.stdout.decode().splitlines()[-1]) if res.exit_code == 0 else res.stderr.decode()[-500:]
res = sb.run(["/bin/cat", "/proc/self/limits"], limits=Limits(wall_s=3.0, max_procs=32, memory_mb=256, file_size_mb=8))
out["limits"] = res.stdout.decode()
bomb = (
    "import errno, os\\nrefused = False\\nwhile True:\\n    try:\\n        os.fork()\\n"
    "    except OSError as e:\\n        if not refused and e.errno == errno.EAGAIN:\\n            refused = True\\n"
    "            os.write(1, f'EAGAIN {sum(p.isdigit() for p in os.listdir(\\"/proc\\"))}\\\\n'.encode())\\n"
)
res = sb.run([PY, "-c", bomb], limits=Limits(wall_s=2.0, max_procs=16))
refused = [int(ln.split()[1]) for ln in res.stdout.decode().splitlines() if ln.startswith("EAGAIN")]
out["bomb"] = [res.timed_out, refused]
res = sb.run([PY, "-c", "x = bytearray(1 << 30)"], limits=Limits(memory_mb=256))
out["memory"] = [res.exit_code, "MemoryError" in res.stderr.decode()]
# a sleeper spends no CPU time: only the deadline can end it
res = sb.run([PY, "-c", "import time; time.sleep(60)"], limits=Limits(wall_s=1.0))
out["deadline"] = [res.timed_out, res.cpu_limited, res.wall_s]
# a spinner reaches the CPU limit (wall_s by default) and the deadline together: either may end it
res = sb.run([PY, "-c", "while True: pass"], limits=Limits(wall_s=1.0))
out["spin"] = [res.timed_out or res.cpu_limited, res.wall_s]
daemon = (
    "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n        time.sleep(60)\\n"
    "    os._exit(0)\\nprint('parent done')\\n"
)
res = sb.run([PY, "-c", daemon], limits=Limits(wall_s=5.0))
out["daemon_parent"] = res.stdout.decode().strip()
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["bwrap", "unshare"])
def test_sandbox_holds_for_an_unprivileged_caller(backend, can_become_nobody):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    outside = tempfile.mkdtemp(prefix="still-nonroot-", dir="/var/tmp")
    os.chmod(outside, 0o777)  # writable by uid 65534 on the host
    try:
        code = ISOLATION.replace(
            "backend, port, outside = sys.argv[1], int(sys.argv[2]), sys.argv[3]",
            f"backend, port, outside = {backend!r}, {listener.getsockname()[1]}, {outside!r}\n"
            f"REPO_DATA = {str(ROOT / 'tests' / 'data')!r}",
        )
        out = _nobody_python(code)
        assert out["uid"] == NOBODY and out["drop"] is False  # the unprivileged path, no uid lease
        probe = out["probe"]
        assert isinstance(probe, dict), probe
        assert probe["ifaces"] == ["lo"] and probe["connected"] is False
        with pytest.raises(socket.timeout):
            listener.accept()
        assert probe["wrote"] == [] and probe["tmp_ok"] is True and probe["shadow"] is False
        assert probe["visible"] == [], probe["visible"]
        assert sorted(os.listdir(outside)) == ["caller"]  # the caller could write there; the code could not
        limits = {ln[:26].strip(): ln[26:].split()[:2] for ln in out["limits"].splitlines()[1:]}
        assert limits["Max processes"] == ["32", "32"] and limits["Max core file size"] == ["0", "0"]
        assert limits["Max address space"] == [str(256 << 20)] * 2
        assert limits["Max file size"] == [str(8 << 20)] * 2
        timed_out, refused = out["bomb"]
        assert timed_out and refused and max(refused) <= 16 + 3, out["bomb"]
        assert out["memory"][0] != 0 and out["memory"][1], out["memory"]
        timed_out, cpu_limited, wall_s = out["deadline"]
        assert timed_out and not cpu_limited and wall_s < 2.0, out["deadline"]
        limited, wall_s = out["spin"]
        assert limited and wall_s < 2.5, out["spin"]
        assert out["daemon_parent"] == "parent done"
        # nothing of that process's sandboxes is left, the daemon included
        assert processes_with("environ", f"STILL_SANDBOX={out['tag']}".encode()) == []
    finally:
        listener.close()
        shutil.rmtree(outside, ignore_errors=True)


VERDICTS = """
import json, sys
from still.core import sandbox
from still.core.verify_code import CodeConfig, check_code
backend, cases = sys.argv[1], json.loads(sys.stdin.read())
out = {"tag": sandbox.RUN_TAG, "results": {}}
for name, style, code in cases:
    response = f"<think>hm</think>\\n```python\\n{code}\\n```\\n"
    cfg = CodeConfig(sandbox=backend, timeout_s=3.0)
    res = check_code(response, None, HE, cfg) if style == "assert" else check_code(response, PYTEST, {}, cfg)
    out["results"][f"{name}/{style}"] = [res["verdict"], res["score"], res["method"]]
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["bwrap", "unshare"])
def test_verdicts_cannot_be_forged_by_an_unprivileged_callers_solutions(backend, can_become_nobody):
    cases = [["correct", style, "def add(a, b):\n    return a + b\n"] for style in ("assert", "pytest")]
    for name, attack in sorted(ATTACKS.items()):
        code = attack if "def add" in attack else attack + WRONG
        cases.append([name, "assert", code])
        if name in ("nonce_from_inherited_fds", "patch_main_globals", "kill_the_supervisor", "signal_everything"):
            cases.append([name, "pytest", code])
    code = VERDICTS.replace("backend, cases = sys.argv[1],", f"backend, cases = {backend!r},")
    code = code.replace("out = {", f"HE, PYTEST = {ADD_HE!r}, {ADD_PYTEST!r}\nout = {{", 1)
    with tempfile.NamedTemporaryFile("w", suffix=".py", dir="/var/tmp", delete=False) as f:
        f.write(code)
    try:
        os.chmod(f.name, 0o644)
        res = _as_nobody([sys.executable, f.name], stdin=json.dumps(cases))
    finally:
        os.unlink(f.name)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    results = out["results"]
    for style in ("assert", "pytest"):
        assert results.pop(f"correct/{style}")[:2] == ["pass", 1.0]  # the same path passes right code
    assert len(results) == len(cases) - 2
    forged = {k: v for k, v in results.items() if v[0] == "pass" or v[1] >= 1.0}
    assert forged == {}
    assert all(v[2].endswith("/" + backend) for v in results.values())
    assert processes_with("environ", f"STILL_SANDBOX={out['tag']}".encode()) == []


def test_refuses_with_one_message_and_exit_1_where_user_namespaces_are_not_allowed(can_become_nobody, tmp_path):
    """Without root and without user namespaces neither backend can isolate: verify says so and
    what to do, exit code 1, and runs nothing (no --sandbox none fallback behind the user's back)."""
    still = shutil.which("still", path=os.path.dirname(sys.executable)) or "still"
    record = {"response": "```python\nprint(1)\n```", "tests": {"inputs": [""], "outputs": ["1"]}}
    res = _as_nobody([still, "verify", "--mode", "code", "-"], no_userns=True, stdin=json.dumps(record) + "\n")
    assert res.returncode == 1, (res.returncode, res.stderr[-1000:])
    assert res.stdout == ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("still:")]
    assert len(errors) == 1, res.stderr
    message = errors[0]
    assert "cannot sandbox model-written code" in message and "bwrap" in message and "unshare" in message
    assert "user namespaces" in message and "--sandbox none" in message
    assert "Traceback" not in res.stderr
