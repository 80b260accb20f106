"""The GlobalPlatform TEE Client API through ctypes, over whichever libteec is present.

``Teec("sim")`` loads the host simulator's library (``<repo>/build/libmirrornet_teec_sim.so`` or
``$MIRRORNET_LIBTEEC``); ``Teec("optee")`` loads the board's ``libteec.so.1``. Only the fields the GP
specification defines are laid out here; each library's implementation-defined parts of TEEC_Context
and TEEC_Session are kept as generously sized opaque blocks.

Parameters of an invoke are given as ``ValueIn``/``ValueOut``/``ValueInOut``/``MemIn``/``MemOut``/
``MemInOut`` (temporary memory references) or ``None``; ``MemNull`` passes a NULL buffer with a size.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os

import numpy as np

from ..errors import TeeError
from .sources import simulator_library

NONE, VALUE_INPUT, VALUE_OUTPUT, VALUE_INOUT = 0x0, 0x1, 0x2, 0x3
MEMREF_TEMP_INPUT, MEMREF_TEMP_OUTPUT, MEMREF_TEMP_INOUT = 0x5, 0x6, 0x7
LOGIN_PUBLIC = 0

CODES = {
    0x00000000: "TEEC_SUCCESS",
    0xFFFF0000: "TEEC_ERROR_GENERIC",
    0xFFFF0001: "TEEC_ERROR_ACCESS_DENIED",
    0xFFFF0002: "TEEC_ERROR_CANCEL",
    0xFFFF0003: "TEEC_ERROR_ACCESS_CONFLICT",
    0xFFFF0004: "TEEC_ERROR_EXCESS_DATA",
    0xFFFF0005: "TEEC_ERROR_BAD_FORMAT",
    0xFFFF0006: "TEEC_ERROR_BAD_PARAMETERS",
    0xFFFF0007: "TEEC_ERROR_BAD_STATE",
    0xFFFF0008: "TEEC_ERROR_ITEM_NOT_FOUND",
    0xFFFF0009: "TEEC_ERROR_NOT_IMPLEMENTED",
    0xFFFF000A: "TEEC_ERROR_NOT_SUPPORTED",
    0xFFFF000B: "TEEC_ERROR_NO_DATA",
    0xFFFF000C: "TEEC_ERROR_OUT_OF_MEMORY",
    0xFFFF000D: "TEEC_ERROR_BUSY",
    0xFFFF000E: "TEEC_ERROR_COMMUNICATION",
    0xFFFF000F: "TEEC_ERROR_SECURITY",
    0xFFFF0010: "TEEC_ERROR_SHORT_BUFFER",
    0xFFFF0011: "TEEC_ERROR_EXTERNAL_CANCEL",
    0xFFFF3024: "TEEC_ERROR_TARGET_DEAD",
}
SUCCESS = 0
BAD_PARAMETERS, BAD_STATE, ITEM_NOT_FOUND = 0xFFFF0006, 0xFFFF0007, 0xFFFF0008
NOT_SUPPORTED, SHORT_BUFFER, TARGET_DEAD = 0xFFFF000A, 0xFFFF0010, 0xFFFF3024
ACCESS_DENIED, GENERIC = 0xFFFF0001, 0xFFFF0000
ORIGINS = {1: "api", 2: "comms", 3: "tee", 4: "trusted_app"}


def code_name(code: int) -> str:
    return CODES.get(code, f"0x{code:08x}")


class _Uuid(ctypes.Structure):
    _fields_ = [("timeLow", ctypes.c_uint32), ("timeMid", ctypes.c_uint16),
                ("timeHiAndVersion", ctypes.c_uint16), ("clockSeqAndNode", ctypes.c_uint8 * 8)]


class _TempRef(ctypes.Structure):
    _fields_ = [("buffer", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _RegRef(ctypes.Structure):
    _fields_ = [("parent", ctypes.c_void_p), ("size", ctypes.c_size_t), ("offset", ctypes.c_size_t)]


class _Value(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


class _Param(ctypes.Union):
    _fields_ = [("tmpref", _TempRef), ("memref", _RegRef), ("value", _Value)]


class _Operation(ctypes.Structure):
    _fields_ = [("started", ctypes.c_uint32), ("paramTypes", ctypes.c_uint32), ("params", _Param * 4),
                ("imp", ctypes.c_void_p), ("_room", ctypes.c_uint8 * 64)]


_OPAQUE = 256  # bytes for TEEC_Context / TEEC_Session: far above any libteec's implementation part


# ---- parameters --------------------------------------------------------------------------------------
@dataclasses.dataclass
class ValueIn:
    a: int = 0
    b: int = 0


@dataclasses.dataclass
class ValueOut:
    pass


@dataclasses.dataclass
class ValueInOut:
    a: int = 0
    b: int = 0


class _Mem:
    kind = NONE

    def __init__(self, data):
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = np.frombuffer(bytearray(data), np.uint8)
        arr = np.ascontiguousarray(data)
        self.array = arr
        self.nbytes = arr.nbytes


class MemIn(_Mem):
    """Temporary input memref over a copy-free view of ``data`` (bytes or a numpy array)."""
    kind = MEMREF_TEMP_INPUT


class MemInOut(_Mem):
    kind = MEMREF_TEMP_INOUT


class MemOut(_Mem):
    """Temporary output memref: ``MemOut(nbytes)`` or ``MemOut(writable numpy array)``."""
    kind = MEMREF_TEMP_OUTPUT

    def __init__(self, size_or_array):
        if isinstance(size_or_array, (int, np.integer)):
            size_or_array = np.zeros(int(size_or_array), np.uint8)
        super().__init__(size_or_array)


@dataclasses.dataclass
class MemNull:
    """A memref of the given TEEC type with a NULL buffer and ``size``."""
    kind: int
    size: int = 0


@dataclasses.dataclass(frozen=True)
class InvokeResult:
    code: int
    origin: int
    outputs: tuple       # per parameter: (a, b) for values, (size, bytes) for output memrefs, else None

    @property
    def ok(self) -> bool:
        return self.code == SUCCESS


# ---- the library -------------------------------------------------------------------------------------
class Teec:
    """A loaded libteec: ``Teec("sim")``, ``Teec("optee")`` or ``Teec(path)``."""

    def __init__(self, which="sim"):
        if which == "sim":
            path = str(simulator_library())
        elif which == "optee":
            path = os.environ.get("MIRRORNET_LIBTEEC") or "libteec.so.1"
        else:
            path = str(which)
        try:
            lib = ctypes.CDLL(path)
        except OSError as err:
            hint = ("install OP-TEE's client library (Debian: libteec1) on the board"
                    if which == "optee" else "run `make setup` to build the simulator")
            raise TeeError(f"cannot load libteec {path}: {err}; {hint}") from err
        self.path = path
        self.is_simulator = hasattr(lib, "mirrornet_teec_sim_last_error")
        c_void_p, c_uint32, c_char_p = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p
        lib.TEEC_InitializeContext.argtypes = [c_char_p, c_void_p]
        lib.TEEC_InitializeContext.restype = c_uint32
        lib.TEEC_FinalizeContext.argtypes = [c_void_p]
        lib.TEEC_FinalizeContext.restype = None
        lib.TEEC_OpenSession.argtypes = [c_void_p, c_void_p, ctypes.POINTER(_Uuid), c_uint32, c_void_p,
                                         ctypes.POINTER(_Operation), ctypes.POINTER(c_uint32)]
        lib.TEEC_OpenSession.restype = c_uint32
        lib.TEEC_CloseSession.argtypes = [c_void_p]
        lib.TEEC_CloseSession.restype = None
        lib.TEEC_InvokeCommand.argtypes = [c_void_p, c_uint32, ctypes.POINTER(_Operation),
                                           ctypes.POINTER(c_uint32)]
        lib.TEEC_InvokeCommand.restype = c_uint32
        if self.is_simulator:
            lib.mirrornet_teec_sim_last_error.argtypes = []
            lib.mirrornet_teec_sim_last_error.restype = c_char_p
            lib.mirrornet_teec_sim_set_timeout.argtypes = [c_void_p, ctypes.c_int]
            lib.mirrornet_teec_sim_set_timeout.restype = c_uint32
        self.lib = lib

    def last_error(self) -> str:
        if not self.is_simulator:
            return ""
        return (self.lib.mirrornet_teec_sim_last_error() or b"").decode(errors="replace")

    def error(self, what: str, code: int, origin: int | None = None) -> TeeError:
        detail = self.last_error()
        where = f", origin {ORIGINS.get(origin, origin)}" if origin is not None else ""
        hint = ""
        if code == TARGET_DEAD:
            hint = "; the TA died (crash, panic, stack overflow or timeout): open a new session"
        return TeeError(f"{what} failed: {code_name(code)}{where}{': ' + detail if detail else ''}{hint}",
                        code=code, origin=origin)


class Context:
    """TEEC_InitializeContext / TEEC_FinalizeContext."""

    def __init__(self, teec: Teec, name: str | None = None, timeout_s: float | None = None):
        self.teec = teec
        self._ctx = ctypes.create_string_buffer(_OPAQUE)
        res = teec.lib.TEEC_InitializeContext(name.encode() if name is not None else None, self._ctx)
        if res != SUCCESS:
            raise teec.error(f"TEEC_InitializeContext({name!r})", res)
        self._open = True
        if timeout_s is not None:
            if not teec.is_simulator:
                raise TeeError("a timeout can only be set for the host simulator's libteec")
            res = teec.lib.mirrornet_teec_sim_set_timeout(self._ctx, max(1, int(timeout_s * 1000)))
            if res != SUCCESS:
                raise teec.error("setting the simulator's timeout", res)

    def close(self):
        if self._open:
            self.teec.lib.TEEC_FinalizeContext(self._ctx)
            self._open = False

    def open_session(self, uuid_fields) -> "Session":
        return Session(self, uuid_fields)


class Session:
    """TEEC_OpenSession / TEEC_InvokeCommand / TEEC_CloseSession on one TA."""

    def __init__(self, context: Context, uuid_fields):
        self.context = context
        self.teec = context.teec
        self._sess = ctypes.create_string_buffer(_OPAQUE)
        time_low, time_mid, time_hi, node = uuid_fields
        uuid = _Uuid(time_low, time_mid, time_hi, (ctypes.c_uint8 * 8)(*node))
        origin = ctypes.c_uint32(0)
        res = self.teec.lib.TEEC_OpenSession(context._ctx, self._sess, ctypes.byref(uuid), LOGIN_PUBLIC,
                                             None, None, ctypes.byref(origin))
        if res != SUCCESS:
            raise self.teec.error("TEEC_OpenSession", res, origin.value)
        self._open = True
        self._op = _Operation()

    def close(self):
        if self._open:
            self.teec.lib.TEEC_CloseSession(self._sess)
            self._open = False

    def invoke(self, cmd: int, params=(None, None, None, None)) -> InvokeResult:
        """TEEC_InvokeCommand with up to four parameters; never raises for a TA's error code."""
        if not self._open:
            raise TeeError("the TEE session is closed")
        params = list(params) + [None] * (4 - len(params))
        op = self._op
        _fill_operation(op, params)
        origin = ctypes.c_uint32(0)
        code = self.teec.lib.TEEC_InvokeCommand(self._sess, cmd, ctypes.byref(op), ctypes.byref(origin))
        outputs = []
        for i, p in enumerate(params):
            if isinstance(p, (ValueOut, ValueInOut)):
                outputs.append((op.params[i].value.a, op.params[i].value.b))
            elif isinstance(p, (MemOut, MemInOut)):
                size = op.params[i].tmpref.size
                outputs.append((size, p.array.view(np.uint8).reshape(-1)[:min(size, p.nbytes)].tobytes()))
            elif isinstance(p, MemNull):
                outputs.append((op.params[i].tmpref.size, b""))
            else:
                outputs.append(None)
        return InvokeResult(code, origin.value, tuple(outputs))

    def prepare(self, cmd: int, params) -> "PreparedInvoke":
        """A command invoked many times with the same parameter kinds (see ``PreparedInvoke``)."""
        return PreparedInvoke(self, cmd, params)


class PreparedInvoke:
    """One command whose TEEC_Operation is laid out once; each call only swaps the input buffer.

    ``session.invoke`` builds the operation and the result objects anew on every call (tens of
    microseconds of Python); protected inference sends one RUN_CPM per image, so its per-image path
    reuses the operation: ``set_input(i, array)`` points memref ``i`` at an array (kept alive until the
    next call), ``__call__()`` invokes and returns the TEEC code, then ``origin``, ``out_size(i)`` and
    ``value(i)`` read what the TA wrote. The output memrefs are the arrays given at preparation.
    """

    def __init__(self, session: Session, cmd: int, params):
        self.session = session
        self.cmd = cmd
        self.params = list(params) + [None] * (4 - len(params))
        self._op = _Operation()
        _fill_operation(self._op, self.params)
        self._origin = ctypes.c_uint32(0)
        self._invoke = session.teec.lib.TEEC_InvokeCommand
        self._args = (session._sess, cmd, ctypes.byref(self._op), ctypes.byref(self._origin))  # noqa: SLF001
        # views into the operation's parameters, made once: ctypes builds a new view on every attribute
        # access of a nested structure, a few hundred nanoseconds each on the per-image path
        self._refs = [self._op.params[i].tmpref for i in range(4)]
        self._values = [self._op.params[i].value for i in range(4)]
        self._outs = [(self._refs[i], p.nbytes) for i, p in enumerate(self.params) if isinstance(p, (MemOut, MemInOut))]
        self._keep = [None] * 4

    def set_input(self, i: int, array: np.ndarray) -> None:
        """Point input memref ``i`` at ``array`` (C-contiguous; not copied, not modified)."""
        if not isinstance(self.params[i], MemIn):
            raise TypeError(f"parameter {i} of this invoke is {self.params[i]!r}, not an input memref")
        if not array.flags.c_contiguous:
            raise ValueError("an input memref needs a C-contiguous array")
        ref = self._refs[i]
        ref.buffer = array.ctypes.data
        ref.size = array.nbytes
        self._keep[i] = array

    def input_array(self, i: int) -> np.ndarray:
        """The array input memref ``i`` points at: writing into it (``np.copyto``) changes what the next
        call sends, without re-pointing the memref (re-pointing costs a microsecond or two of Python)."""
        if not isinstance(self.params[i], MemIn):
            raise TypeError(f"parameter {i} of this invoke is {self.params[i]!r}, not an input memref")
        return self._keep[i] if self._keep[i] is not None else self.params[i].array

    def __call__(self) -> int:
        if not self.session._open:  # noqa: SLF001
            raise TeeError("the TEE session is closed")
        for ref, nbytes in self._outs:  # the TA shrinks (or, when short, grows) the size: reset it
            ref.size = nbytes
        return self._invoke(*self._args)

    @property
    def origin(self) -> int:
        return self._origin.value

    def out_size(self, i: int) -> int:
        return self._refs[i].size

    def value(self, i: int) -> tuple[int, int]:
        v = self._values[i]
        return v.a, v.b


def _fill_operation(op: _Operation, params) -> None:
    """Zero ``op`` and lay ``params`` (four entries, ``None`` for unused) out in it."""
    ctypes.memset(ctypes.byref(op), 0, ctypes.sizeof(op))
    types = 0
    for i, p in enumerate(params):
        if p is None:
            kind = NONE
        elif isinstance(p, (ValueIn, ValueInOut)):
            kind = VALUE_INPUT if isinstance(p, ValueIn) else VALUE_INOUT
            op.params[i].value.a, op.params[i].value.b = p.a & 0xFFFFFFFF, p.b & 0xFFFFFFFF
        elif isinstance(p, ValueOut):
            kind = VALUE_OUTPUT
        elif isinstance(p, _Mem):
            kind = p.kind
            op.params[i].tmpref.buffer = p.array.ctypes.data
            op.params[i].tmpref.size = p.nbytes
        elif isinstance(p, MemNull):
            kind = p.kind
            op.params[i].tmpref.buffer = None
            op.params[i].tmpref.size = p.size
        else:
            raise TypeError(f"parameter {i}: {p!r} is not a TEEC parameter")
        types |= kind << (4 * i)
    op.paramTypes = types


__all__ = ["Teec", "Context", "Session", "PreparedInvoke", "InvokeResult", "ValueIn", "ValueOut", "ValueInOut", "MemIn",
           "MemOut", "MemInOut", "MemNull", "code_name"]
