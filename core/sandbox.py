"""An OS-level sandbox for running untrusted code (model-written solutions and their tests).

Isolation comes from the kernel, not from Python-level guards (which untrusted Python can undo):

- **bwrap** (bubblewrap): new user/pid/net/ipc/uts/cgroup namespaces; a fresh root that holds only
  read-only binds of ``/usr``, ``/etc``, the library symlinks and the Python installation(s) in use,
  a fresh ``/dev`` and ``/proc``, and a size-capped tmpfs ``/tmp`` as the only writable place; the
  staged files are bound read-only at ``/tmp/box`` and an optional output dir read-write at
  ``/tmp/out``. ``$HOME``, ``/root``, ``/home``, ``/run`` (sockets), other sandboxes' files and the
  caller's data never appear. The environment is empty except PATH/HOME/LANG and a few
  determinism knobs. Inside the net namespace only ``lo`` exists, so nothing can reach the host's
  127.0.0.1 or any other address. When the caller is root, the code runs under a fresh
  unprivileged uid/gid per run (``setpriv``), with no capabilities and ``no_new_privs``, so it is
  not root on the host even if a namespace were escaped, and ``RLIMIT_NPROC`` applies (the kernel
  ignores it for uid 0) to this run alone.
- **unshare** (util-linux, fallback when bubblewrap is missing): net/pid/ipc/uts/mount
  namespaces (and a user namespace for an unprivileged caller); the same fresh root as bwrap
  (system and Python dirs read-only, fresh ``/dev``, ``/proc`` and size-capped ``/tmp``) built by a
  shell script, ``pivot_root`` into it, the host tree detached; capabilities are dropped (and, for
  root, the leased uid taken) before the code runs.
- For root callers, assert/pytest code checks run through a **warm zygote** per checking thread
  (``sandbox_zygote.py``, ``code_zygote.py``): started once in the backend's sandbox, it forks each
  run into fresh mount/pid/net/ipc/uts namespaces with a fresh ``/tmp`` and the same limits.
- **none**: no isolation at all, rlimits only; only when explicitly asked for, with a loud warning.

Limits (every backend): ``RLIMIT_CPU``, ``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (set inside the
new user namespace, so it counts only the sandbox's processes), ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
no core dumps, a wall-clock deadline, and a cap on captured stdout/stderr. At the deadline (or when
output overflows) the sandbox's first process is killed; it is the parent of the pid namespace,
whose init dies with it (``--die-with-parent``), and the kernel then kills every process left in
the namespace, daemons included.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from still.core.errors import StillError, UsageError

SANDBOX_CHOICES = ("auto", "bwrap", "unshare", "none")
# When the caller is root, each run gets its own unprivileged uid/gid from this range (no passwd
# entry, owns nothing on the host): RLIMIT_NPROC counts per uid, so concurrent sandboxes cannot
# use up each other's process budget, and the kernel never exempts them as it exempts root.
SANDBOX_UID_BASE = 3_000_000
SANDBOX_UID_SPAN = 1 << 20
# One lock file per uid in use: a run holds an exclusive flock on its uid's file for as long as it
# runs, so no two concurrent runs on this host (any process) ever share a uid.
UID_LOCK_DIR = "/run/still-sandbox-uids"


def _uid_lock_dir() -> str:
    for d in (UID_LOCK_DIR, os.path.join(tempfile.gettempdir(), f"still-sandbox-uids-{os.geteuid()}")):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        st = os.lstat(d)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            return d
    raise StillError("cannot create a private directory for sandbox uid locks (/run or the temp dir)")


@contextlib.contextmanager
def lease_uid() -> Iterator[int]:
    """An unprivileged uid no other running sandbox holds, for the duration of the block.

    Slots are tried from the lowest, so the lock files stay as few as the most runs at once.
    """
    lock_dir = _uid_lock_dir()
    for slot in range(SANDBOX_UID_SPAN):
        uid = SANDBOX_UID_BASE + slot
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise StillError("every sandbox uid is in use")


# Every sandboxed process of this still process carries STILL_SANDBOX=<this tag> in its environment,
# so whatever the uid scheme, a leftover can be found by scanning /proc (the tests do).
RUN_TAG = f"{os.getpid()}-{secrets.token_hex(6)}"
BOX = "/tmp/box"  # read-only staged files, inside the sandbox
OUT = "/tmp/out"  # optional read-write output dir, inside the sandbox
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
ZYGOTE_STASH = "/.still-stash"  # an empty mount point in a zygote's root (code_zygote.py)
_STDERR_KEEP = 64 * 1024

# Directories bound read-only into a bwrap sandbox (those that exist; symlinks are recreated).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run."""

    wall_s: float = 6.0
    cpu_s: float | None = None  # RLIMIT_CPU; defaults to wall_s
    memory_mb: int = 1024  # RLIMIT_AS
    max_procs: int = 64  # RLIMIT_NPROC (processes + threads)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 1 << 20  # stdout (and stderr) capture cap
    tmp_mb: int = 64  # size of the writable tmpfs /tmp


@dataclass(frozen=True)
class RunResult:
    """What one sandboxed run did."""

    exit_code: int  # 128+N when killed by signal N (the shell convention bwrap follows)
    signal: int | None  # the signal that ended the program, if any
    stdout: bytes
    stderr: bytes  # the first 64 KiB
    timed_out: bool  # killed at the wall-clock deadline
    output_exceeded: bool  # killed because stdout or stderr passed max_output_bytes
    wall_s: float

    @property
    def cpu_limited(self) -> bool:
        """Ended by RLIMIT_CPU (SIGXCPU at the soft limit, SIGKILL at the hard one)."""
        return self.signal == signal.SIGXCPU


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _python_dirs() -> list[str]:
    """The directories the running Python needs (prefixes, venv), outside the system dirs."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
    }
    dirs = sorted(
        {os.path.realpath(p) for p in candidates if p}
        | {os.path.abspath(p) for p in candidates if p}  # a venv may be reached through a symlink
    )
    keep: list[str] = []
    for d in dirs:
        if any(d == s or d.startswith(s + "/") for s in ("/usr", "/bin", "/lib", "/etc")):
            continue
        if any(d.startswith(k + "/") for k in keep):
            continue
        if os.path.isdir(d):
            keep.append(d)
    return keep


@dataclass
class Sandbox:
    """A way to run argv under isolation and limits. Get one with :func:`get_sandbox`."""

    backend: str  # bwrap | unshare | none
    drop_to_uid: bool = False  # root caller: run the code as a fresh unprivileged uid
    python_dirs: list[str] = field(default_factory=_python_dirs)

    # --------------------------------------------------------------------------- command lines
    def _limit_argv(self, limits: Limits) -> list[str]:
        cpu = max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.wall_s))
        argv = [
            "prlimit",
            f"--cpu={cpu}:{cpu + 1}",
            f"--as={limits.memory_mb << 20}",
            f"--fsize={limits.file_size_mb << 20}",
            f"--nofile={limits.open_files}",
            f"--nproc={limits.max_procs}",
            "--core=0",
            "--",
        ]
        return argv

    def _env(self, home: str) -> dict[str, str]:
        return {
            "PATH": SANDBOX_PATH,
            "HOME": home,
            "STILL_SANDBOX": RUN_TAG,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }

    def _bwrap_argv(
        self, box_dir: str | None, out_dir: str | None, limits: Limits, uid: int | None, zygote: bool = False
    ) -> list[str]:
        argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.drop_to_uid:
            # Unprivileged caller: a user namespace is how bwrap gets to build the mounts; no more
            # namespaces may be created inside it.
            argv += ["--unshare-user", "--disable-userns"]
        argv += ["--die-with-parent", "--new-session", "--clearenv"]
        for key, value in self._env("/tmp").items():
            argv += ["--setenv", key, value]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
        made: set[str] = set()

        def bind_python_dir(d: str) -> None:
            for a in _ancestors(d):
                if a not in made and a != "/tmp" and not any(a == s or a.startswith(s + "/") for s in _SYSTEM_DIRS):
                    argv.extend(["--perms", "0755", "--dir", a])
                    made.add(a)
            argv.extend(["--ro-bind", d, d])

        # A Python (or venv) under /tmp is bound after the fresh tmpfs, which would cover it.
        under_tmp = [d for d in self.python_dirs if d == "/tmp" or d.startswith("/tmp/")]
        for d in self.python_dirs:
            if d not in under_tmp:
                bind_python_dir(d)
        argv += ["--dev", "/dev", "--proc", "/proc"]
        argv += ["--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
        made = {a for a in made if not a.startswith("/tmp/")}
        for d in under_tmp:
            bind_python_dir(d)
        if box_dir is not None:
            argv += ["--ro-bind", box_dir, BOX]
        if out_dir is not None:
            argv += ["--bind", out_dir, OUT]
        if zygote:
            argv += ["--dir", ZYGOTE_STASH]
        argv += ["--remount-ro", "/", "--chdir", "/tmp"]
        if zygote:
            # the warm zygote keeps root's capabilities to build each run's namespaces; every run
            # drops them (and becomes a leased uid) before any untrusted code (code_zygote.py)
            argv += ["--cap-add", "ALL", "--"]
        elif self.drop_to_uid:
            assert uid is not None
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--", *_setpriv(uid)]
        else:
            argv += ["--"]
        return argv

    def _unshare_argv(
        self, box_dir: str | None, out_dir: str | None, limits: Limits, uid: int | None, zygote: bool = False
    ) -> list[str]:
        lines = self._unshare_root_script(box_dir, out_dir, limits, zygote)
        # The shell stays pid 1 of the new pid namespace and runs the code in a session of its own:
        # the code is never pid 1 (whose getppid() is 0, so kill(getppid(), 9) would signal the
        # caller's whole process group, the host-side unshare included), and pid 1 ignores kills
        # from inside its namespace.
        drop = _setpriv(uid) if self.drop_to_uid and uid is not None else _setpriv(None)
        if zygote:
            drop = []  # see _bwrap_argv
        # (a background job's stdin would be /dev/null: hand it the real one through fd 3)
        lines += ["exec 3<&0", f'setsid {" ".join(drop)} -- "$@" 0<&3 3<&- &', "exec 3<&-", "wait $!", "exit $?"]
        env_args = [f"{k}={v}" for k, v in self._env("/tmp").items()]
        namespaces = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts"]
        if not self.drop_to_uid:
            namespaces = ["--user", "--map-root-user", *namespaces, "--mount-proc"]
        return ["env", "-i", *env_args, "unshare", *namespaces, "--", "/bin/sh", "-c", "\n".join(lines), "sandbox"]

    def _unshare_root_script(self, box_dir: str | None, out_dir: str | None, limits: Limits, zygote: bool) -> list[str]:
        """Build a fresh root holding only the system and Python dirs (read-only), a fresh /dev,
        /proc and size-capped /tmp, pivot into it and drop the old tree, as bwrap does. Run as
        real root, or as root of a new user namespace (an unprivileged caller): the same view.
        The code then runs with no capabilities (as a leased unprivileged uid for real root)."""
        root = next(d for d in ("/mnt", "/media", "/srv", "/opt", "/run") if os.path.isdir(d))

        def q(path: str) -> str:
            return "'" + path.replace("'", "'\\''") + "'"

        def bind_ro(src: str, dst: str) -> list[str]:
            return [
                f"mkdir -p {q(root + dst)}",
                f"mount --bind {q(src)} {q(root + dst)}",
                f"mount -o remount,bind,ro,nosuid,nodev {q(root + dst)}",
            ]

        lines = ["set -e", "umask 022", f"mount -t tmpfs -o size=4m,mode=755 tmpfs {q(root)}"]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                lines.append(f"ln -s {q(os.readlink(d))} {q(root + d)}")
            elif os.path.isdir(d):
                lines += bind_ro(d, d)
        # A Python (or venv) under /tmp is bound after the fresh tmpfs, which would cover it.
        under_tmp = [d for d in self.python_dirs if d == "/tmp" or d.startswith("/tmp/")]
        for d in self.python_dirs:
            if d not in under_tmp and not any(d == s or d.startswith(s + "/") for s in _SYSTEM_DIRS):
                lines += bind_ro(d, d)
        lines += [
            f"mkdir -p {q(root + '/proc')} {q(root + '/dev')} {q(root + '/tmp')} {q(root + '/.old')}",
            f"mount -t proc -o nosuid,nodev,noexec proc {q(root + '/proc')}",
            f"mount -t tmpfs -o size=1m,mode=755,nosuid,noexec tmpfs {q(root + '/dev')}",
        ]
        for dev in ("null", "zero", "full", "random", "urandom", "tty"):
            lines += [f"touch {q(root + '/dev/' + dev)}", f"mount --bind /dev/{dev} {q(root + '/dev/' + dev)}"]
        lines += [f"ln -s /proc/self/fd {q(root + '/dev/fd')}"]
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            lines.append(f"ln -s /proc/self/fd/{i} {q(root + '/dev/' + name)}")
        lines += [
            f"mkdir -p {q(root + '/dev/shm')}",
            f"mount -t tmpfs -o size={limits.tmp_mb}m,mode=1777,nosuid,nodev tmpfs {q(root + '/tmp')}",
        ]
        for d in under_tmp:
            lines += bind_ro(d, d)
        if box_dir is not None:
            lines += bind_ro(box_dir, BOX)
        if out_dir is not None:
            lines += [f"mkdir -p {q(root + OUT)}", f"mount --bind {q(out_dir)} {q(root + OUT)}"]
        if zygote:
            lines.append(f"mkdir -p {q(root + ZYGOTE_STASH)}")
        lines += [
            f"mount -o remount,bind,ro,nosuid,nodev {q(root)}",  # (bind: per-mount flags, as a user ns allows)
            f"cd {q(root)}",
            f"{q(shutil.which('pivot_root') or 'pivot_root')} . .old",
            "cd /",
            "umount -l /.old",
            "cd /tmp",
            "set +e",
        ]
        return lines

    def command(
        self, argv: Sequence[str], box_dir: str | None, out_dir: str | None, limits: Limits, uid: int | None = None
    ) -> list[str]:
        """The full command line that runs argv in this sandbox (``uid``: from :func:`lease_uid`,
        needed when the sandbox drops to an unprivileged uid)."""
        if self.drop_to_uid and uid is None:
            raise ValueError("this sandbox runs code as a leased uid: pass uid=")
        if self.backend == "bwrap":
            prefix = self._bwrap_argv(box_dir, out_dir, limits, uid)
        elif self.backend == "unshare":
            prefix = self._unshare_argv(box_dir, out_dir, limits, uid)
        else:
            prefix = []
        return [*prefix, *self._limit_argv(limits), *argv]

    def zygote_command(self, argv: Sequence[str], root_dir: str) -> list[str]:
        """The command line that starts a warm zygote (code_zygote.py) with ``root_dir`` at
        /tmp/box: the backend's view, but root keeps its capabilities and no limits apply yet."""
        if not (self.drop_to_uid and self.backend in ("bwrap", "unshare")):
            raise ValueError("a warm zygote needs a root caller and the bwrap or unshare backend")
        limits = Limits()
        if self.backend == "bwrap":
            return [*self._bwrap_argv(root_dir, None, limits, None, zygote=True), *argv]
        return [*self._unshare_argv(root_dir, None, limits, None, zygote=True), *argv]

    def inside(self, host_dir: str, role: str) -> str:
        """Where a staged host dir appears to the code (role: "box" or "out")."""
        if self.backend == "none":
            return host_dir
        return BOX if role == "box" else OUT

    # --------------------------------------------------------------------------------- running
    def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits,
        box_dir: str | None = None,
        out_dir: str | None = None,
        stdin: bytes | str | None = None,
        pass_fds: Iterable[int] = (),
    ) -> RunResult:
        """Run argv (paths as :meth:`inside` gives them) and capture its output under limits.

        ``stdin`` is bytes to feed or a host file path to read from; nothing means an empty input.
        """
        if self.backend == "none":
            _warn_unsandboxed()
        if box_dir is not None:
            os.chmod(box_dir, 0o755)
        if out_dir is not None:
            os.chmod(out_dir, 0o777)
        with contextlib.ExitStack() as stack:
            uid = stack.enter_context(lease_uid()) if self.drop_to_uid else None
            try:
                return self._run(
                    self.command(argv, box_dir, out_dir, limits, uid), limits, box_dir, out_dir, stdin, pass_fds
                )
            finally:
                if uid is not None:
                    # bwrap/unshare may return while the kernel still tears the namespace down:
                    # the uid goes back only once none of its processes is left, or the next run
                    # leasing it would start with their count against its RLIMIT_NPROC
                    _kill_uid(uid)

    def _run(
        self,
        cmd: list[str],
        limits: Limits,
        box_dir: str | None,
        out_dir: str | None,
        stdin: bytes | str | None,
        pass_fds: Iterable[int],
    ) -> RunResult:
        stdin_file = None
        stdin_data: bytes | None = None
        if isinstance(stdin, str):
            stdin_file = open(stdin, "rb")  # noqa: SIM115 - closed below
        else:
            # An empty pipe rather than /dev/null: EOF at once, whatever the host's /dev/null is.
            stdin_data = stdin if stdin is not None else b""
        env = self._env(out_dir or tempfile.gettempdir()) if self.backend == "none" else {}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=stdin_file if stdin_file is not None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env if self.backend == "none" else {"PATH": os.environ.get("PATH", SANDBOX_PATH)},
                cwd=out_dir if self.backend == "none" and out_dir else None,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
            )
        finally:
            if stdin_file is not None:
                stdin_file.close()
        deadline = start + limits.wall_s
        out, err, timed_out, exceeded = _collect(proc, stdin_data, deadline, limits.max_output_bytes)
        rc = proc.wait()
        wall = time.monotonic() - start
        if rc < 0:  # killed directly (our kill, or the none backend)
            sig: int | None = -rc
            rc = 128 - rc
        elif rc > 128 and rc - 128 < 65:
            sig = rc - 128
        else:
            sig = None
        return RunResult(rc, sig, out, err, timed_out, exceeded, wall)


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid:
                                found.append(int(entry))
                            break
            except (OSError, ValueError):
                continue
    return found


def _kill_uid(uid: int, timeout_s: float = 10.0) -> None:
    """Kill what is left of a leased uid's processes and wait until none is (root only)."""
    deadline = time.monotonic() + timeout_s
    while pids := _uid_processes(uid):
        if time.monotonic() > deadline:
            raise StillError(f"sandbox processes of uid {uid} would not die: {pids[:10]}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _setpriv(uid: int | None) -> list[str]:
    """Drop every capability (and, given a uid, become it) before exec'ing the code."""
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    return ["setpriv", *ids, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        # The session holds bwrap/unshare (or, with none, the program and what did not call setsid).
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _collect(
    proc: subprocess.Popen[bytes], stdin_data: bytes | None, deadline: float, max_bytes: int
) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF, the deadline or the output cap; kill on the last two."""
    assert proc.stdout is not None and proc.stderr is not None
    stdin_fd = None
    if proc.stdin is not None:
        stdin_fd = os.dup(proc.stdin.fileno())  # pump closes it when fed
        proc.stdin.close()
    try:
        out, err, timed_out, exceeded = pump(
            stdin_fd,
            proc.stdout.fileno(),
            proc.stderr.fileno(),
            stdin_data,
            deadline,
            max_bytes,
            lambda: _kill(proc),
        )
        if not (timed_out or exceeded):
            # Pipes closed; the program should be gone. Give it what is left of the deadline.
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 0.05)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc)
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return out, err, timed_out, exceeded


def pump(
    stdin_fd: int | None,
    stdout_fd: int,
    stderr_fd: int,
    stdin_data: bytes | None,
    deadline: float,
    max_bytes: int,
    kill: Callable[[], None],
) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin, read stdout/stderr until EOF, the deadline or the output cap; ``kill`` on the
    last two. stdin_fd is closed here (EOF once fed); the caller closes the other two."""
    out = bytearray()
    err = bytearray()
    err_total = 0
    timed_out = exceeded = False
    sel = selectors.DefaultSelector()
    sel.register(stdout_fd, selectors.EVENT_READ, "out")
    sel.register(stderr_fd, selectors.EVENT_READ, "err")
    pending = memoryview(stdin_data) if stdin_data is not None else None
    if stdin_fd is not None:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE, "in")
    try:
        while len(sel.get_map()) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                kill()
                break
            for key, _ in sel.select(remaining):
                if key.data == "in":
                    assert stdin_fd is not None and pending is not None
                    try:
                        n = os.write(stdin_fd, pending[:65536])
                        pending = pending[n:]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BlockingIOError):
                            continue
                        pending = pending[:0]
                    if len(pending) == 0:
                        sel.unregister(stdin_fd)
                        os.close(stdin_fd)
                        stdin_fd = None
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "out":
                    out += chunk
                    size = len(out)
                else:
                    err_total += len(chunk)
                    if len(err) < _STDERR_KEEP:
                        err += chunk[: _STDERR_KEEP - len(err)]
                    size = err_total
                if size > max_bytes:
                    exceeded = True
                    kill()
                    del out[max_bytes:]
                    break
            if exceeded:
                break
    finally:
        sel.close()
        if stdin_fd is not None:
            os.close(stdin_fd)
    return bytes(out), bytes(err), timed_out, exceeded


_warned = False


def _warn_unsandboxed() -> None:
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(
            "still: WARNING: --sandbox none runs model-written code WITHOUT isolation: it can read your "
            "files and secrets, use the network and leave processes behind. Use it only on a throwaway "
            "machine or inside a container.\n"
        )
        sys.stderr.flush()


def _probe(sb: Sandbox) -> str | None:
    """Run a trivial command in the sandbox; None when it works, else what went wrong."""
    tools = {"bwrap": ["bwrap", "prlimit"], "unshare": ["unshare", "setpriv", "setsid", "prlimit"]}.get(sb.backend, [])
    if sb.backend == "unshare" and sb.drop_to_uid:
        tools.append("pivot_root")
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if sb.drop_to_uid and shutil.which("setpriv") is None:
        return "setpriv is not installed"
    with tempfile.TemporaryDirectory(prefix="still-probe-") as box:
        try:
            res = sb.run(["/bin/sh", "-c", "cat /proc/net/dev"], limits=Limits(wall_s=10.0), box_dir=box)
        except OSError as exc:
            return str(exc)
    if res.exit_code != 0:
        return (res.stderr.decode(errors="replace").strip() or f"exit code {res.exit_code}")[:300]
    ifaces = [ln.split(":")[0].strip() for ln in res.stdout.decode(errors="replace").splitlines()[2:]]
    if ifaces != ["lo"]:
        return f"network not isolated (interfaces: {ifaces})"
    return None


_HOW_TO_ENABLE = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) and "
    "allow unprivileged user namespaces (sysctl -w kernel.unprivileged_userns_clone=1 on older Debian; "
    "on Ubuntu 23.10+ sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile "
    "for bwrap; user.max_user_namespaces must be above 0; in Docker run with --security-opt "
    "seccomp=unconfined or use a VM). "
    "To run code without isolation anyway (unsafe), pass --sandbox none"
)


@functools.cache
def get_sandbox(kind: str = "auto") -> Sandbox:
    """The sandbox for ``kind`` (auto|bwrap|unshare|none), checked once per process.

    ``auto`` tries bwrap, then unshare; when neither works it refuses with what to install or
    enable. An explicitly named backend that does not work is an error too.
    """
    if kind not in SANDBOX_CHOICES:
        raise UsageError(f"unknown sandbox {kind!r}; choose one of {', '.join(SANDBOX_CHOICES)}")
    if kind == "none":
        return Sandbox("none")
    root = os.geteuid() == 0
    tried: list[str] = []
    for backend in ("bwrap", "unshare") if kind == "auto" else (kind,):
        sb = Sandbox(backend, drop_to_uid=root)
        problem = _probe(sb)
        if problem is None:
            return sb
        tried.append(f"{backend}: {problem}")
    raise StillError(
        "cannot sandbox model-written code on this host (" + "; ".join(tried) + "). To fix: " + _HOW_TO_ENABLE
    )


def setup_overhead_ms(sb: Sandbox, runs: int = 20) -> float:
    """Median extra wall time of running /bin/true in the sandbox versus directly, in ms."""
    limits = Limits(wall_s=10.0)

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    def one(cmd: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    direct = median([one(["/bin/true"]) for _ in range(runs)])
    with tempfile.TemporaryDirectory(prefix="still-bench-") as box:
        os.chmod(box, 0o755)
        with lease_uid() as uid:
            boxed = median([one(sb.command(["/bin/true"], box, None, limits, uid)) for _ in range(runs)])
    return max(0.0, boxed - direct) * 1000.0
