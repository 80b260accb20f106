"""``TeeSession``: the MirrorNet CPM TA's commands, spoken through the GP TEE Client API.

    with TeeSession("out/build") as tee:            # host simulator (default)
        print(tee.info.policy, tee.info.tap_floats)
        result = tee.run_many(taps)                 # (N, tap_floats) float32 -> CpmResult

``tee="optee"`` talks to a real OP-TEE through the board's ``libteec.so.1`` (the signed
``<uuid>.ta`` must be installed in ``/lib/optee_armtz``). Taps larger than the TA's per-invoke limit
go in LOAD_TAPS chunks followed by RUN_CPM; anything else is one RUN_CPM per image.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TeeError, UsageError
from ..util import read_json
from .abi import TaInfo, load_abi
from .sources import ta_template
from .teec import SUCCESS, Context, MemIn, MemOut, Teec, ValueIn, ValueOut, code_name


@dataclasses.dataclass(frozen=True)
class CpmResult:
    """The TA's answers for N images, and how long each took."""

    outputs: np.ndarray     # (N, num_classes) float32 for logits/probs; (N,) int32 for label
    cpm_ns: np.ndarray      # (N,) int64: the CPM's run time by the TA's own clock
    invoke_ns: np.ndarray   # (N,) int64: the client's round trip for the image (every invoke it took)
    policy: str
    clock_resolution_ns: int

    @property
    def transfer_ns(self) -> np.ndarray:
        """Round trip minus CPM time: crossing into the TEE and back, copying the taps."""
        return np.maximum(self.invoke_ns - self.cpm_ns, 0)


@dataclasses.dataclass(frozen=True)
class HeapStats:
    """The TA heap as libutils counts it (HEAP_STATS): bytes in use, peak in use, size, failed allocations."""

    in_use: int
    peak: int
    size: int
    failed_allocations: int


def _sim_ta_dir(build_dir: Path | None, manifest: dict | None) -> Path:
    if build_dir is None:
        raise UsageError("the host simulator needs the build folder (or ta_dir=) to find <uuid>.sim")
    rel = (manifest or {}).get("ta", {}).get("sim_ta")
    path = build_dir / rel if rel else build_dir / "sim"
    return path.parent if path.suffix == ".sim" else path


class TeeSession:
    """One session with the MirrorNet CPM TA."""

    def __init__(self, build_dir=None, *, tee: str = "sim", ta_dir=None, libteec=None,
                 timeout_s: float | None = 60.0, check_identity: bool = True):
        if tee not in ("sim", "optee"):
            raise UsageError(f"TeeSession speaks to tee='sim' or tee='optee', not {tee!r} "
                             "(QEMU runs go through mirrornet_tvm.tee.qemu)")
        self.build_dir = Path(build_dir) if build_dir is not None else None
        if self.build_dir is not None and not self.build_dir.is_dir():
            raise ArtifactError(f"build folder {self.build_dir} does not exist")
        manifest = None
        if self.build_dir is not None and (self.build_dir / "manifest.json").is_file():
            manifest = read_json(self.build_dir / "manifest.json")
        header = None
        if self.build_dir is not None:
            built = self.build_dir / "ta_build" / "include" / "mirrornet_ta.h"
            header = built if built.is_file() else None
        self.abi = load_abi(header or ta_template() / "include" / "mirrornet_ta.h")
        self.tee = tee
        self.teec = Teec(libteec if libteec is not None else tee)
        name = None
        if self.teec.is_simulator:
            name = str(Path(ta_dir) if ta_dir is not None else _sim_ta_dir(self.build_dir, manifest))
        self._context = Context(self.teec, name, timeout_s if self.teec.is_simulator else None)
        try:
            self._session = self._context.open_session(self.abi.uuid_fields())
        except BaseException:
            self._context.close()
            raise
        try:
            self.info = self.get_info()
            expected = (manifest or {}).get("ta", {}).get("source_sha256")
            if check_identity and expected and expected != self.info.source_sha256:
                raise TeeError(
                    f"the TA runs the CPM {self.info.source_sha256[:16]}..., but {self.build_dir} was "
                    f"packaged with {expected[:16]}...: install the build folder's TA (or re-run "
                    "`mirrornet package-ta`)"
                )
        except BaseException:
            self.close()
            raise
        self._out = MemOut(self.info.output_bytes)
        # one RUN_CPM per image when the taps fit one invoke: its operation is laid out once, over an input
        # buffer each image's taps are copied into and an output buffer read as the policy's type
        self._run_cpm = None
        self._tap_shape = (self.info.tap_floats,)
        self._out_typed = self._out.array.view("<i4" if self.info.policy == "label" else "<f4")
        if self.info.tap_floats * 4 <= self.info.max_invoke_bytes:
            self._run_cpm = self._session.prepare(
                self.abi.command("RUN_CPM"), [MemIn(np.zeros(self.info.tap_floats, "<f4")), self._out, ValueOut()])
            self._tap_in = self._run_cpm.input_array(0)

    # -- life cycle ---------------------------------------------------------------------------------
    def close(self):
        if getattr(self, "_session", None) is not None:
            self._session.close()
            self._session = None
        if getattr(self, "_context", None) is not None:
            self._context.close()
            self._context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- commands -----------------------------------------------------------------------------------
    def _check(self, res, what):
        if res.code != SUCCESS:
            raise self.teec.error(f"{what}", res.code, res.origin)
        return res

    def invoke(self, cmd, params=()):
        """Raw TEEC_InvokeCommand on this session (returns the code; never raises for a TA error)."""
        if self._session is None:
            raise TeeError("the TEE session is closed")
        return self._session.invoke(cmd, params)

    def prepare(self, cmd, params):
        """A ``teec.PreparedInvoke`` of ``cmd`` on this session (operation laid out once, reused)."""
        if self._session is None:
            raise TeeError("the TEE session is closed")
        return self._session.prepare(cmd, params)

    def get_info(self) -> TaInfo:
        res = self._check(self.invoke(self.abi.command("GET_INFO"), [MemOut(self.abi.info_bytes)]),
                          "GET_INFO")
        size, raw = res.outputs[0]
        return self.abi.parse_info(raw[:size])

    def heap_stats(self) -> HeapStats:
        """The TA heap's use so far (a debugging command: peak heap of the TA instance)."""
        res = self._check(self.invoke(self.abi.command("HEAP_STATS"), [ValueOut(), ValueOut()]), "HEAP_STATS")
        (in_use, peak), (size, failed) = res.outputs[0], res.outputs[1]
        return HeapStats(in_use, peak, size, failed)

    def _taps_2d(self, taps) -> np.ndarray:
        arr = np.asarray(taps)
        if arr.dtype.kind != "f":
            raise UsageError(f"taps must be floating point, got {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.info.tap_floats:
            raise UsageError(
                f"taps have shape {np.shape(taps)}, the TA expects (N, {self.info.tap_floats}) float32: "
                f"the CPM's taps {self.info.tap_sizes} concatenated in strategy order"
            )
        return np.ascontiguousarray(arr, dtype="<f4")

    def _run_row(self, row: np.ndarray):
        if self._run_cpm is not None:
            return self._run_prepared(row)
        total = row.nbytes
        limit = self.info.max_invoke_bytes
        run = self.abi.command("RUN_CPM")
        if total <= limit:
            res = self.invoke(run, [MemIn(row), self._out, ValueOut()])
        else:
            raw = row.view(np.uint8)
            load = self.abi.command("LOAD_TAPS")
            for off in range(0, total, limit):
                chunk = raw[off:off + limit]
                self._check(self.invoke(load, [MemIn(chunk), ValueIn(off, total)]), "LOAD_TAPS")
            res = self.invoke(run, [None, self._out, ValueOut()])
        self._check(res, "RUN_CPM")
        size, raw_out = res.outputs[1]
        if size != self.info.output_bytes:
            raise TeeError(f"RUN_CPM wrote {size} bytes, the TA's policy says {self.info.output_bytes}")
        a, b = res.outputs[2]
        return raw_out, (b << 32) | a

    def _invoke_prepared(self) -> int:
        """RUN_CPM on what ``self._tap_in`` holds; the answer is in ``self._out``. Returns the CPM's ns."""
        if self._session is None:
            raise TeeError("the TEE session is closed")
        run = self._run_cpm
        code = run()
        if code != SUCCESS:
            raise self.teec.error("RUN_CPM", code, run.origin)
        size = run.out_size(1)
        if size != self.info.output_bytes:
            raise TeeError(f"RUN_CPM wrote {size} bytes, the TA's policy says {self.info.output_bytes}")
        a, b = run.value(2)
        return (b << 32) | a

    def _run_prepared(self, row: np.ndarray):
        np.copyto(self._tap_in, row)
        ns = self._invoke_prepared()
        return self._out.array.tobytes(), ns

    def _decode(self, raw: bytes, n: int) -> np.ndarray:
        if self.info.policy == "label":
            return np.frombuffer(raw, "<i4").astype(np.int32).reshape(n)
        return np.frombuffer(raw, "<f4").astype(np.float32).reshape(n, self.info.num_classes)

    def run(self, taps):
        """One image: returns (output, cpm_ns).

        The per-image path of protected inference: a float array of the TA's tap length (what
        ``Backbone.taps`` returns) is copied straight into the prepared invoke's buffer, and the answer
        comes back as a copy of the output buffer, with no other Python work around the round trip.
        """
        if (self._run_cpm is not None and type(taps) is np.ndarray and taps.shape == self._tap_shape
                and taps.dtype.kind == "f"):
            np.copyto(self._tap_in, taps)
            ns = self._invoke_prepared()
            out = self._out_typed.copy()
            return (out[0] if self.info.policy == "label" else out), ns
        arr = self._taps_2d(taps)
        if arr.shape[0] != 1:
            raise UsageError("run() takes one image's taps; use run_many() for several")
        raw, ns = self._run_row(arr[0])
        return self._decode(raw, 1)[0], ns

    def run_many(self, taps, progress: bool = False) -> CpmResult:
        """Every row of ``taps`` (N, tap_floats) through the TA, one RUN_CPM (plus chunks) per row."""
        arr = self._taps_2d(taps)
        n = arr.shape[0]
        raws, cpm_ns, invoke_ns = [], np.zeros(n, np.int64), np.zeros(n, np.int64)
        rows = range(n)
        if progress:
            from tqdm import tqdm
            rows = tqdm(rows, desc=f"CPM in the TEE ({self.tee})", unit="img", file=sys.stderr, leave=False)
        for i in rows:
            t0 = time.perf_counter_ns()
            raw, ns = self._run_row(arr[i])
            invoke_ns[i] = time.perf_counter_ns() - t0
            cpm_ns[i] = ns
            raws.append(raw)
        return CpmResult(self._decode(b"".join(raws), n), cpm_ns, invoke_ns, self.info.policy,
                         self.info.clock_resolution_ns)


__all__ = ["TeeSession", "CpmResult", "HeapStats", "code_name"]
