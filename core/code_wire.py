"""The wire between the trusted test supervisor and the solution process (stdlib only).

Copied into the sandbox next to code_harness.py, code_remote.py and code_worker.py; not imported
by still itself. What crosses is JSON (decoded by the C scanner of ``json``, which cannot run
code), one message per line. Values are plain data, rebuilt with exact type checks
(``type(x) is int``, never ``isinstance``), so a subclass with a rigged ``__eq__`` cannot cross:

- ``None``, ``bool``, ``int``, ``float``, ``str`` as JSON scalars;
- ``["l", [...]]`` list, ``["t", ...]`` tuple, ``["s", ...]`` set, ``["f", ...]`` frozenset,
  ``["d", [[k, v], ...]]`` dict, ``["b", hex]`` bytes, ``["y", hex]`` bytearray,
  ``["c", re, im]`` complex, ``["v", kind, payload]`` a few standard value types (deque, Counter,
  OrderedDict, defaultdict, Fraction, Decimal, date/datetime/timedelta, range);
- ``["n", name]`` a builtin (``len``, ``int``) and ``["g", module, qualname]`` a standard-library
  function or class by name;
- ``["r", id, description]`` an object of the solution process (a remote handle) and
  ``["h", id, kind]`` an object of the supervisor; each side keeps its own objects in a table and
  only ever receives ids.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import json
import operator
import os
import select
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # both processes pay for every import at each run: keep them few
    from collections.abc import Callable
    from typing import Any

MAX_LINE = 64 << 20  # bytes per message
MAX_DEPTH = 200


# The protocol operations either side may ask of the other's objects (by name, never a dunder).
PROTOCOL_OPS: dict[str, Callable[..., Any]] = {
    "len": len,
    "bool": bool,
    "str": str,
    "repr": repr,
    "hash": hash,
    "iter": iter,
    "next": next,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "contains": operator.contains,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
}


class WireError(Exception):
    """A message that is not well-formed plain data (from a broken or hostile peer)."""


class PeerGone(Exception):
    """The other process closed its end (it exited, crashed or was killed)."""


class PeerTimeout(Exception):
    """No answer before the deadline."""


_PLAIN = (type(None), bool, int, float, str)
_BUILTIN_NAMES: dict[int, str] = {
    id(v): k for k, v in vars(builtins).items() if not k.startswith("_") and (isinstance(v, type) or callable(v))
}
# Standard modules the supervisor never imports on the solution's say-so (side effects on import).
_NO_IMPORT = frozenset(
    "site this antigravity idlelib turtle turtledemo tkinter pydoc webbrowser readline rlcompleter code "
    "pdb trace cProfile profile test lib2to3 ensurepip venv".split()
)
_NUMPY_KINDS = "biufcUS"  # bool, ints, floats, complex, str, bytes: never object arrays
_FACTORIES = {"int": int, "list": list, "set": set, "str": str, "float": float, "dict": dict}


class Channel:
    """Line-delimited JSON over two pipe fds, with a deadline on reads."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.buf = bytearray()
        self.deadline: float | None = None

    def send(self, msg: Any) -> None:
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.write_fd, view)
                view = view[n:]
        except (BrokenPipeError, OSError) as exc:
            raise PeerGone(str(exc)) from None

    def receive(self) -> Any:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                try:
                    return json.loads(line)
                except (ValueError, RecursionError, MemoryError) as exc:
                    raise WireError(f"malformed message: {type(exc).__name__}") from None
            if len(self.buf) > MAX_LINE:
                raise WireError("message too long")
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout()
                ready, _, _ = select.select([self.read_fd], [], [], left)
                if not ready:
                    raise PeerTimeout()
            try:
                chunk = os.read(self.read_fd, 1 << 20)
            except OSError as exc:
                raise PeerGone(str(exc)) from None
            if not chunk:
                raise PeerGone("the other process ended")
            self.buf += chunk


def resolve_global(module: str, qualname: str, *, import_new: bool) -> Any:
    """A module-level object by name; new modules are imported only from the standard library."""
    if type(module) is not str or type(qualname) is not str or module in ("__main__", "solution"):
        raise WireError("bad global name")
    mod = sys.modules.get(module)
    if mod is None:
        top = module.split(".")[0]
        stdlib = top in getattr(sys, "stdlib_module_names", ()) and top not in _NO_IMPORT
        if not import_new and (not stdlib or top.startswith("_")):
            raise WireError(f"module {module!r} is not available")
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            raise WireError(f"cannot import {module!r}: {exc}") from None
    obj: Any = mod
    for part in qualname.split("."):
        if part.startswith("_") and part not in ("__init__",):
            raise WireError("private global name")
        obj = getattr(obj, part)
    return obj


def global_name(obj: Any) -> tuple[str, str] | None:
    """(module, qualname) when obj is a function or class reachable by that name, not the solution's."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if type(module) is not str or type(qualname) is not str or module in ("__main__", "solution", "builtins"):
        return None
    if "<" in qualname or module.startswith(("code_", "test_solution")):
        return None
    mod = sys.modules.get(module)
    if mod is None:
        return None
    found: Any = mod
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
    except AttributeError:
        return None
    return (module, qualname) if found is obj else None


class Codec:
    """Encodes this side's values, decodes the peer's, with exact type checks both ways.

    ``own``/``peer`` are the ref tags of this side and the other (``"r"`` for the solution
    process, ``"h"`` for the supervisor). ``make_proxy(id, description)`` builds the local
    stand-in for a peer object; ``describe(obj)`` says what the peer needs to know about one of
    ours; ``import_new`` whether decoding may import standard-library modules by name.
    """

    def __init__(
        self,
        own: str,
        peer: str,
        make_proxy: Callable[[int, Any], Any],
        describe: Callable[[Any], Any],
        import_new: bool,
        first_id: int = 1,
    ) -> None:
        self.own, self.peer = own, peer
        self.make_proxy = make_proxy
        self.describe = describe
        self.import_new = import_new
        self.objects: dict[int, Any] = {}  # our id -> object (kept alive while the peer may use it)
        self.ids: dict[int, int] = {}  # id(object) -> our id
        self.proxies: dict[int, Any] = {}  # peer id -> proxy
        self.proxy_ids: dict[int, int] = {}  # id(proxy) -> peer id
        self.next_id = first_id

    # ------------------------------------------------------------------------------- encode
    def own_ref(self, obj: Any) -> list[Any]:
        key = id(obj)
        oid = self.ids.get(key)
        if oid is None:
            oid = self.next_id
            self.next_id += 1
            self.ids[key] = oid
            self.objects[oid] = obj
            return [self.own, oid, self.describe(obj)]
        return [self.own, oid]

    def encode(self, x: Any, depth: int = 0) -> Any:
        t = type(x)
        if t in _PLAIN:
            return x
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        d = depth + 1
        if t is list:
            return ["l", [self.encode(v, d) for v in x]]
        if t is tuple:
            return ["t", [self.encode(v, d) for v in x]]
        if t is dict:
            return ["d", [[self.encode(k, d), self.encode(v, d)] for k, v in x.items()]]
        if t is set or t is frozenset:
            return ["s" if t is set else "f", [self.encode(v, d) for v in x]]
        if t is bytes or t is bytearray:
            return ["b" if t is bytes else "y", bytes(x).hex()]
        if t is complex:
            return ["c", x.real, x.imag]
        value = self._encode_value(x, t, d)
        if value is not None:
            return value
        pid = self.proxy_ids.get(id(x))
        if pid is not None and self.proxies.get(pid) is x:
            return [self.peer, pid]
        name = _BUILTIN_NAMES.get(id(x))
        if name is not None and getattr(builtins, name, None) is x:
            return ["n", name]
        if isinstance(x, type) or callable(x):
            gname = global_name(x)
            if gname is not None:
                return ["g", *gname]
        return self.own_ref(x)

    def _encode_value(self, x: Any, t: type, d: int) -> Any:
        if t is collections.deque:
            return ["v", "deque", [[self.encode(v, d) for v in x], x.maxlen]]
        if t is collections.Counter or t is collections.OrderedDict:
            pairs = [[self.encode(k, d), self.encode(v, d)] for k, v in x.items()]
            return ["v", t.__name__, pairs]
        if t is collections.defaultdict:
            factory = x.default_factory
            fname = next((k for k, v in _FACTORIES.items() if v is factory), None)
            return ["v", "defaultdict", [fname, [[self.encode(k, d), self.encode(v, d)] for k, v in x.items()]]]
        # a value of these types exists only where its module was imported
        fractions, decimal, datetime = (sys.modules.get(m) for m in ("fractions", "decimal", "datetime"))
        if fractions is not None and t is fractions.Fraction:
            return ["v", "Fraction", [x.numerator, x.denominator]]
        if decimal is not None and t is decimal.Decimal:
            return ["v", "Decimal", str(x)]
        if datetime is not None and t is datetime.timedelta:
            return ["v", "timedelta", [x.days, x.seconds, x.microseconds]]
        if (
            datetime is not None
            and (t is datetime.datetime or t is datetime.date)
            and getattr(x, "tzinfo", None) is None
        ):
            return ["v", t.__name__, x.isoformat()]
        if t is range:
            return ["v", "range", [x.start, x.stop, x.step]]
        np = sys.modules.get("numpy")
        if np is not None and (t is np.ndarray or (issubclass(t, np.generic) and t is np.dtype(t).type)):
            if x.dtype.kind in _NUMPY_KINDS:
                kind = "ndarray" if t is np.ndarray else "npscalar"
                return ["v", kind, [x.dtype.str, list(x.shape), self.encode(x.tolist(), d)]]
        return None

    # ------------------------------------------------------------------------------- decode
    def decode(self, v: Any, depth: int = 0) -> Any:
        t = type(v)
        if t in _PLAIN:
            return v
        if t is not list or not v or type(v[0]) is not str or depth > MAX_DEPTH:
            raise WireError("not plain data")
        tag = v[0]
        d = depth + 1
        if tag in ("l", "t", "s", "f") and len(v) == 2 and type(v[1]) is list:
            items = [self.decode(i, d) for i in v[1]]
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            try:
                return set(items) if tag == "s" else frozenset(items)
            except TypeError:
                raise WireError("unhashable set member") from None
        if tag == "d" and len(v) == 2 and type(v[1]) is list:
            return dict(self._pairs(v[1], d))
        if tag in ("b", "y") and len(v) == 2 and type(v[1]) is str:
            try:
                raw = bytes.fromhex(v[1])
            except ValueError:
                raise WireError("bad hex") from None
            return raw if tag == "b" else bytearray(raw)
        if tag == "c" and len(v) == 3 and all(type(p) in (int, float) for p in v[1:]):
            return complex(v[1], v[2])
        if tag == "v" and len(v) == 3 and type(v[1]) is str:
            return self._decode_value(v[1], v[2], d)
        if tag == "n" and len(v) == 2 and type(v[1]) is str:
            if v[1].startswith("_") or not hasattr(builtins, v[1]):
                raise WireError("unknown builtin")
            return getattr(builtins, v[1])
        if tag == "g" and len(v) == 3:
            try:
                return resolve_global(v[1], v[2], import_new=self.import_new)
            except AttributeError:
                raise WireError("unknown global name") from None
        if tag == self.own and len(v) == 2 and type(v[1]) is int:
            if v[1] not in self.objects:
                raise WireError("unknown object id")
            return self.objects[v[1]]
        if tag == self.peer and len(v) in (2, 3) and type(v[1]) is int:
            proxy = self.proxies.get(v[1])
            if proxy is None:
                if len(v) != 3:
                    raise WireError("unknown peer object")
                proxy = self.make_proxy(v[1], v[2])
                self.proxies[v[1]] = proxy
                self.proxy_ids[id(proxy)] = v[1]
            return proxy
        raise WireError(f"unknown tag {tag[:20]!r}")

    def _pairs(self, pairs: Any, d: int) -> list[tuple[Any, Any]]:
        out = []
        for p in pairs:
            if type(p) is not list or len(p) != 2:
                raise WireError("bad pair")
            k = self.decode(p[0], d)
            try:
                hash(k)
            except TypeError:
                raise WireError("unhashable key") from None
            out.append((k, self.decode(p[1], d)))
        return out

    def _decode_value(self, kind: str, p: Any, d: int) -> Any:
        import datetime
        import decimal
        import fractions

        try:
            if kind == "deque" and type(p) is list and len(p) == 2 and type(p[0]) is list:
                maxlen = p[1] if type(p[1]) is int else None
                return collections.deque([self.decode(i, d) for i in p[0]], maxlen)
            if kind in ("Counter", "OrderedDict") and type(p) is list:
                cls = collections.Counter if kind == "Counter" else collections.OrderedDict
                return cls(self._pairs(p, d))
            if kind == "defaultdict" and type(p) is list and len(p) == 2 and type(p[1]) is list:
                factory = _FACTORIES.get(p[0]) if type(p[0]) is str else None
                return collections.defaultdict(factory, self._pairs(p[1], d))
            if kind == "Fraction" and type(p) is list and len(p) == 2 and all(type(i) is int for i in p):
                return fractions.Fraction(p[0], p[1])
            if kind == "Decimal" and type(p) is str and len(p) < 10000:
                return decimal.Decimal(p)
            if kind == "timedelta" and type(p) is list and len(p) == 3 and all(type(i) is int for i in p):
                return datetime.timedelta(days=p[0], seconds=p[1], microseconds=p[2])
            if kind == "datetime" and type(p) is str:
                return datetime.datetime.fromisoformat(p)
            if kind == "date" and type(p) is str:
                return datetime.date.fromisoformat(p)
            if kind == "range" and type(p) is list and len(p) == 3 and all(type(i) is int for i in p):
                return range(p[0], p[1], p[2])
            if kind in ("ndarray", "npscalar") and type(p) is list and len(p) == 3:
                return self._decode_numpy(kind, p, d)
        except (ValueError, TypeError, ArithmeticError, OverflowError):
            raise WireError(f"bad {kind}") from None
        raise WireError(f"unknown value kind {kind[:20]!r}")

    def _decode_numpy(self, kind: str, p: list[Any], d: int) -> Any:
        # Only where numpy is already loaded (the tests imported it), or the peer may import it.
        np = sys.modules.get("numpy")
        if np is None and self.import_new:
            np = importlib.import_module("numpy")
        dtype_str, shape, data = p
        if np is None or type(dtype_str) is not str or type(shape) is not list:
            raise WireError("numpy values need numpy")
        if not all(type(n) is int and n >= 0 for n in shape):
            raise WireError("bad shape")
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _NUMPY_KINDS:
            raise WireError("numpy dtype not allowed")
        value = self.decode(data, d)
        if kind == "npscalar":
            if type(value) not in _PLAIN and type(value) is not complex and type(value) is not bytes:
                raise WireError("bad numpy scalar")
            return dtype.type(value)
        arr = np.array(value, dtype=dtype)
        if arr.dtype.kind not in _NUMPY_KINDS:
            raise WireError("numpy dtype not allowed")
        return arr.reshape(shape)


def exception_info(exc: BaseException, codec: Codec) -> list[Any]:
    """How an exception crosses: [module, qualname, builtin base, args, class ref or None, text]."""
    cls = type(exc)
    base = next((c.__name__ for c in cls.__mro__ if c.__module__ == "builtins"), "Exception")
    try:
        args = codec.encode(exc.args)
    except Exception:
        args = ["t", [str(exc)[:2000]]]
    ref = codec.encode(cls) if cls.__module__ in ("solution", "__main__") else None
    return [str(cls.__module__), cls.__qualname__, base, args, ref, f"{cls.__name__}: {str(exc)[:500]}"]
