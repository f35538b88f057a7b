"""The warm zygote: a trusted process that forks each code check into fresh namespaces (stdlib only).

Not imported by still: staged read-only with the other harness modules and started once per
checking thread by still.core.sandbox_zygote, inside the backend's sandbox (bwrap or the unshare
root), as root with its capabilities (it needs them to build each run's namespaces). It imports
the supervisor (code_harness.py and what it needs) ONCE; each run then costs a few forks instead
of a sandbox set-up, an interpreter start and the imports.

argv: python -c "...; import code_harness; import code_zygote; code_zygote.main()" SITE_DIRS SOCKET_FD

The zygote never holds a secret: a request (one datagram on the SOCKET_FD socketpair, with three
fds) names the run's box, its leased uid and its limits; the nonce and the reference tests go from
the host straight to the run's supervisor through the stdin pipe it is handed, which the zygote
never reads. Per run:

  zygote --fork--> run monitor: new mount, pid, net, ipc and uts namespaces; a fresh size-capped
                   tmpfs /tmp (and /dev/shm), the run's box bound read-only at /tmp/box, every
                   other box and the zygote's own /tmp detached; then
          --fork--> supervisor, pid 1 of the new pid namespace: a fresh /proc, the rlimits, every
                   capability and the bounding set dropped, the leased uid (which also makes it
                   non-dumpable), no_new_privs, stdin/stdout/stderr the host's pipes, nothing else
                   open; then code_harness.main(), which forks the solution process as before.

The supervisor being pid 1 means: nothing in the run can kill or stop it (the kernel drops
SIGKILL/SIGSTOP sent to a namespace's init from inside), the solution's getppid() leads only to
it, and when it exits the kernel kills everything left in the namespace. Nothing a run leaves
behind reaches the next one: its files were on its own tmpfs mounts, its processes, IPC objects
and sockets died with its namespaces, and the zygote's memory never saw any of it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

BOX = "/tmp/box"  # the zygote's own staged files here; each run's box at the same place
RUNS = BOX + "/runs"  # the boxes of runs, staged by the host (only the zygote's view has them)
STASH = "/.still-stash"  # an empty mount point where a run's box waits while /tmp is replaced
EXIT_SETUP = 71  # a run's namespaces or drop failed (the host reports it as a sandbox error)
SETUP_FAILED = "still sandbox: setting up the run failed"  # the same in sandbox_zygote.py

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)), f"mount {target}")


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0), f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_privileges(uid: int, last_cap: int) -> None:
    """Become ``uid`` with no capability in any set, no way to regain one, not dumpable."""
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears the permitted and effective sets, and dumpable
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
        raise OSError("the uid drop did not take")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:")) and int(line.split()[1], 16):
                raise OSError(f"capabilities left after the drop: {line.strip()}")


def _set_limits(limits: dict[str, int]) -> None:
    cpu = limits["cpu_s"]
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2),
        (resource.RLIMIT_FSIZE, (limits["file_size_mb"] << 20,) * 2),
        (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
        (resource.RLIMIT_NPROC, (limits["max_procs"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)


def _fail(stderr_fd: int, exc: BaseException) -> NoReturn:
    try:
        os.write(stderr_fd, f"{SETUP_FAILED}: {exc}\n".encode())
    finally:
        os._exit(EXIT_SETUP)


def _only_fds(keep: list[int]) -> None:
    """Close every fd but ``keep``."""
    top = 3
    for fd in sorted(keep):
        os.closerange(top, fd)
        top = fd + 1
    os.closerange(top, 1 << 16)


def _monitor(req: dict[str, Any], fds: list[int], zygote: int, last_cap: int) -> NoReturn:
    """The run's monitor (forked from the zygote): build the namespaces, fork the supervisor, wait."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote:
            os._exit(EXIT_SETUP)
        os.setsid()  # the zygote kills the run with killpg(monitor): the supervisor is in the group
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        _only_fds([0, 1, 2])
        name = str(req["box"])
        if not name.isdigit():
            raise ValueError("bad box name")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount(f"{RUNS}/{name}", STASH, None, MS_BIND)
        # the supervisor's modules (for a fresh solution interpreter after a crash): the zygote's
        # own read-only copies, on the empty still/ the host made in the box, instead of a copy
        _mount(f"{BOX}/still", f"{STASH}/still", None, MS_BIND)
        _mount(None, f"{STASH}/still", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        _umount("/tmp")  # the zygote's /tmp: its staged files and every other run's box
        limits = req["limits"]
        tmpfs = f"size={int(limits['tmp_mb'])}m,mode=1777"
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
        os.mkdir(BOX, 0o755)
        _mount(STASH, BOX, None, MS_MOVE)
        _mount(None, BOX, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        if os.path.isdir("/dev/shm"):
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
        life_r, life_w = os.pipe()
        pid = os.fork()
    except BaseException as exc:
        _fail(2, exc)
    if pid == 0:
        os.close(life_w)
        _supervisor(req, life_r, last_cap)
    code = EXIT_SETUP
    try:
        os.close(life_r)
        for fd in (0, 1, 2):
            os.close(fd)  # only the supervisor holds the pipes: the host sees EOF when the run is over
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    finally:
        os._exit(128 - code if code < 0 else code)


def _supervisor(req: dict[str, Any], life_r: int, last_cap: int) -> NoReturn:
    """Pid 1 of the run's pid namespace: finish the sandbox, drop to the leased uid, run the harness."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([life_r], [], [], 0)[0]:
            os._exit(EXIT_SETUP)  # the monitor died before the line above: die with it
        os.close(life_r)
        _umount("/proc")
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _set_limits(req["limits"])
        _drop_privileges(int(req["uid"]), last_cap)
        os.chdir("/tmp")
        argv = req["argv"]
        if type(argv) is not list or not all(type(a) is str for a in argv):
            raise ValueError("bad argv")
        sys.argv = ["-c", *argv]
        import code_harness
    except BaseException as exc:
        _fail(2, exc)
    try:
        code_harness.main()  # ends in os._exit()
    except BaseException:
        import traceback

        os.write(2, traceback.format_exc()[-2000:].encode())
    finally:
        os._exit(70)  # never back into the zygote's loop in this process


def _wait_run(sock: socket.socket, pid: int, run: Any) -> int:
    """Wait for the run's monitor, killing the run when the host asks (or goes away)."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready = select.select([sock.fileno(), pidfd], [], [])[0]
            if pidfd in ready:
                break
            msg = sock.recv(4096)
            if not msg or json.loads(msg) == {"op": "kill", "id": run}:
                os.killpg(pid, signal.SIGKILL)
                if not msg:
                    os.waitpid(pid, 0)
                    os._exit(0)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main() -> None:
    site = [d for d in sys.argv[1].split(os.pathsep) if d]
    sys.path.extend(site)
    sock = socket.socket(fileno=int(sys.argv[2]))
    zygote = os.getpid()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    # What every run imports anyway, imported once here.
    import code_harness  # noqa: F401
    import code_worker  # noqa: F401

    preloaded: set[str] = set()
    sock.send(json.dumps({"ready": True}).encode())
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
        if not msg:
            os._exit(0)
        req = json.loads(msg)
        if req.get("op") != "run":
            for fd in fds:
                os.close(fd)
            continue  # a kill that crossed the end of its run
        for module in req.get("preload", []):
            if module not in preloaded:
                preloaded.add(module)
                try:
                    __import__(str(module))  # a trusted installed package (pytest): once, not per run
                except Exception:
                    pass
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"id": req.get("id"), "exit": EXIT_SETUP}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            try:
                _monitor(req, fds, zygote, last_cap)
            finally:
                os._exit(EXIT_SETUP)  # never back into this loop in the child
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"id": req.get("id"), "exit": _wait_run(sock, pid, req.get("id"))}).encode())
