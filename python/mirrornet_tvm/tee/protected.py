"""Protected inference: the backbone on the Relax VM (normal world), the CPM in the TA.

    run = protected_inference("out/build", x_test, y_test, tee="sim")
    print(run.accuracy, run.latency["backbone"].mean_ms)

Per image: ``backbone.so`` computes the tapped feature maps, they are concatenated in strategy order
and handed to the TA (one RUN_CPM, or LOAD_TAPS chunks then RUN_CPM), and the TA answers under its
output policy. Latency is split into backbone (the VM call, taps out as numpy), transfer (the TEE
round trip minus the CPM's own time: crossing worlds and copying the taps), and CPM (the TA's clock).
``tee="qemu"`` computes every image's taps first and runs them all in one boot of a real OP-TEE under
QEMU (``mirrornet_tvm.tee.qemu``): its accuracy is real, its timings are emulation (not reported).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TeeError, UsageError
from ..util import read_json

TEES = ("sim", "qemu", "optee")


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-image latency of one stage, in milliseconds."""

    mean_ms: float
    p95_ms: float

    @classmethod
    def from_ns(cls, ns) -> "LatencyStats":
        ns = np.asarray(ns, np.float64)
        return cls(float(ns.mean() / 1e6), float(np.percentile(ns, 95) / 1e6))


@dataclasses.dataclass(frozen=True)
class ProtectedRun:
    """Outcome of protected inference over a set of images."""

    build_dir: str
    tee: str
    policy: str
    images: int
    correct: int | None
    accuracy: float | None          # None without labels
    predictions: np.ndarray         # (N,) int64
    outputs: np.ndarray             # the TA's answers: (N, classes) float32 or (N,) int32
    latency: dict                   # stage -> LatencyStats: backbone, transfer, cpm, total (sim/optee)
    cpm_clock_resolution_ns: int | None
    note: str

    def to_dict(self) -> dict:
        return {
            "build_dir": self.build_dir, "tee": self.tee, "policy": self.policy, "images": self.images,
            "correct": self.correct, "accuracy": self.accuracy,
            "latency_ms": {k: dataclasses.asdict(v) for k, v in self.latency.items()},
            "cpm_clock_resolution_ns": self.cpm_clock_resolution_ns, "note": self.note,
        }


class Backbone:
    """The normal-world half: ``BUILD/backbone.so`` on the Relax VM, returning the concatenated taps."""

    def __init__(self, build_dir):
        import tvm
        from tvm import relax

        build_dir = Path(build_dir)
        lib_path = build_dir / "backbone.so"
        if not lib_path.is_file():
            raise ArtifactError(f"{lib_path} is missing: run `mirrornet compile` first")
        manifest = read_json(build_dir / "manifest.json") if (build_dir / "manifest.json").is_file() else {}
        self.entry = (manifest.get("backbone") or {}).get("entry", "backbone")
        shape = ((manifest.get("backbone") or {}).get("input") or {}).get("shape")
        self.input_shape = tuple(shape) if shape else None
        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            raise ArtifactError(f"cannot load {lib_path} on this machine ({err}); was it built for "
                                "another target? Rebuild with `mirrornet compile --target host`") from err
        self._tvm = tvm
        self.vm = relax.VirtualMachine(lib, tvm.cpu())
        self._fn = self.vm[self.entry]
        self._input = None  # the input tensor, reused while the image shape stays the same

    def taps(self, image: np.ndarray) -> np.ndarray:
        """One image (1, C, H, W) float32 -> every tap flattened and concatenated, float32.

        The image is copied into one input tensor kept across calls, and the VM's outputs are read
        through DLPack without a copy (a single tap comes back as a view of the VM's output tensor):
        per image that saves a tensor allocation and a copy of every tap, tens of microseconds.
        """
        arr = np.ascontiguousarray(image, np.float32)
        if self.input_shape is not None and arr.shape != self.input_shape:
            raise UsageError(f"the backbone takes one image of shape {self.input_shape}, got {arr.shape}")
        if self._input is None or tuple(self._input.shape) != arr.shape:
            self._input = self._tvm.runtime.tensor(arr)
        else:
            self._input.copyfrom(arr)
        out = self._fn(self._input)
        parts = [np.from_dlpack(p).reshape(-1) for p in ([out] if hasattr(out, "numpy") else out)]
        if any(p.dtype != np.float32 for p in parts):
            raise TeeError(f"backbone.so returns {[str(p.dtype) for p in parts]}, not float32 taps: rebuild it "
                           "with `mirrornet compile`")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _predictions(outputs: np.ndarray, policy: str) -> np.ndarray:
    return outputs.astype(np.int64) if policy == "label" else np.argmax(outputs, axis=1).astype(np.int64)


def protected_inference(build_dir, x, y=None, tee: str = "sim", progress: bool = True,
                        qemu_timeout: float = 600.0) -> ProtectedRun:
    """Run images ``x`` (N, C, H, W) through backbone + TA; ``y`` gives the accuracy."""
    from tqdm import tqdm

    if tee not in TEES:
        raise UsageError(f"--tee must be one of {', '.join(TEES)}, not {tee!r}")
    build_dir = Path(build_dir)
    if not (build_dir / "manifest.json").is_file():
        raise ArtifactError(f"{build_dir} is not a build folder (no manifest.json): run `mirrornet compile` "
                            "and `mirrornet package-ta` first")
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[0] < 1:
        raise UsageError(f"images must be (N, C, H, W) with N >= 1, got shape {x.shape}")
    if y is not None and len(y) != len(x):
        raise UsageError(f"{len(x)} images but {len(y)} labels")
    manifest = read_json(build_dir / "manifest.json")
    ta = manifest.get("ta")
    if not ta:
        raise ArtifactError(f"{build_dir} has no packaged TA: run `mirrornet package-ta {build_dir}` first")
    backbone = Backbone(build_dir)
    n = len(x)
    backbone_ns = np.zeros(n, np.int64)

    if tee == "qemu":
        from . import qemu

        rows = []
        for i in tqdm(range(n), desc="backbone (Relax VM)", unit="img", file=sys.stderr,
                      leave=False, disable=not progress):
            t0 = time.perf_counter_ns()
            rows.append(backbone.taps(x[i:i + 1]))
            backbone_ns[i] = time.perf_counter_ns() - t0
        taps = np.stack(rows)
        if taps.shape[1] != sum(ta["tap_sizes"]):
            raise TeeError(f"the backbone gives {taps.shape[1]} tap floats, the TA expects {sum(ta['tap_sizes'])}")
        result = qemu.run_cpm(build_dir, taps, timeout=qemu_timeout)
        outputs = np.asarray(result.outputs)
        latency = {"backbone": LatencyStats.from_ns(backbone_ns)}
        resolution, note = None, ("CPM ran in OP-TEE under QEMU (TCG emulation): latency of the TEE "
                                  "stages is not reported")
        policy = result.policy
    else:
        from .session import TeeSession

        invoke_ns, cpm_ns, total_ns = (np.zeros(n, np.int64) for _ in range(3))
        outs = []
        with TeeSession(build_dir, tee=tee) as session:
            expect = session.info.tap_floats
            for i in tqdm(range(n), desc=f"protected inference ({tee})", unit="img", file=sys.stderr,
                          leave=False, disable=not progress):
                t0 = time.perf_counter_ns()
                row = backbone.taps(x[i:i + 1])
                t1 = time.perf_counter_ns()
                if row.shape[0] != expect:
                    raise TeeError(f"the backbone gives {row.shape[0]} tap floats per image, the TA "
                                   f"expects {expect} ({session.info.tap_sizes}): backbone.so and the TA "
                                   "come from different builds")
                out, ns = session.run(row)
                t2 = time.perf_counter_ns()
                backbone_ns[i], invoke_ns[i], cpm_ns[i], total_ns[i] = t1 - t0, t2 - t1, ns, t2 - t0
                outs.append(out)
            policy, resolution = session.info.policy, session.info.clock_resolution_ns
        outputs = np.stack(outs)
        latency = {
            "backbone": LatencyStats.from_ns(backbone_ns),
            "transfer": LatencyStats.from_ns(np.maximum(invoke_ns - cpm_ns, 0)),
            "cpm": LatencyStats.from_ns(cpm_ns),
            "total": LatencyStats.from_ns(total_ns),
        }
        note = "" if resolution <= 1000 else (
            f"the TA's clock has {resolution / 1e6:g} ms resolution: the CPM mean is sound over many "
            "images, its p95 is coarse")
    predictions = _predictions(outputs, policy)
    correct = accuracy = None
    if y is not None:
        correct = int(np.sum(predictions == np.asarray(y)))
        accuracy = correct / n
    return ProtectedRun(str(build_dir), tee, policy, n, correct, accuracy, predictions, outputs, latency,
                        resolution, note)


def random_images(build_dir, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded standard-normal images of the build's input shape (for networks without a dataset)."""
    manifest_path = Path(build_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{build_dir} is not a build folder (no manifest.json): run `mirrornet compile` first")
    shape = ((read_json(manifest_path).get("backbone") or {}).get("input") or {}).get("shape")
    if not shape:
        raise ArtifactError(f"{manifest_path} does not record the backbone's input shape: rebuild with "
                            "`mirrornet compile`")
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape[1:])).astype(np.float32)


def reference_agreement(build_dir, x, run: ProtectedRun) -> dict:
    """How the protected outputs compare with the artifact's combined.onnx in onnxruntime on images ``x``."""
    import onnxruntime as ort

    from ..util import sha256_file

    source = read_json(Path(build_dir) / "manifest.json").get("generated_from") or {}
    path = Path(source.get("artifact", "")) / "combined.onnx"
    if not path.is_file() or sha256_file(path) != source.get("combined.onnx"):
        raise ArtifactError(f"the artifact this build came from ({path}) is gone or changed; it is needed to "
                            "check outputs on random images (or give --dataset)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(["logits"], {sess.get_inputs()[0].name: x[i:i + 1]})[0].reshape(1, -1)
                          for i in range(len(x))])
    want = _predictions(ref, "logits")
    same = int(np.sum(run.predictions == want))
    diff = float(np.abs(run.outputs - ref).max()) if run.policy != "label" else None
    scale = float(np.abs(ref).max())
    return {"reference": str(path), "images": len(x), "same_top1": same, "max_abs_diff": diff,
            "max_rel_diff": None if diff is None else diff / max(scale, np.finfo(np.float32).tiny),
            "reference_scale": scale}
