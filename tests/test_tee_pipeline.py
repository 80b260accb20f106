"""The TA on a real protected model, as a new user runs it: train-base, protect, compile, package-ta, run.

- `mirrornet run` (host simulator) prints the authorized accuracy and a latency split, and its answers
  equal the combined model's (onnxruntime) on the same real Fashion-MNIST test images;
- no CPM weight tensor is readable in any normal-world artifact: the backbone library and ONNX, the
  encrypted TA, the manifest, the C client and the simulator's client library (a scan for every CPM
  tensor, in the layout of the generated C and of the ONNX model, with the unencrypted builds as
  positive controls).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirrornet_tvm.errors import UsageError
from mirrornet_tvm.tee.abi import load_abi
from mirrornet_tvm.tee.sources import repo_root

ROOT = repo_root()
UUID = load_abi().uuid
N_IMAGES = 500


def _mirrornet(*args, cwd=None):
    exe = Path(sys.executable).with_name("mirrornet")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _step(*args):
    proc = _mirrornet(*args)
    if proc.returncode == 3 and "not built yet" in proc.stderr:
        pytest.skip(f"`mirrornet {args[0]}` is not built yet")
    assert proc.returncode == 0, f"mirrornet {' '.join(map(str, args))}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("tee-pipeline")
    _step("train-base", "--model", "lenet", "--dataset", "fashion-mnist", "--epochs", "1", "--subset", "300",
          "-q", "-o", d / "lenet.onnx")
    _step("protect", d / "lenet.onnx", "--dataset", "fashion-mnist", "--auto", "--epochs", "1", "--subset", "300",
          "-q", "-o", d / "artifact")
    _step("compile", d / "artifact", "-o", d / "build")
    try:
        from mirrornet_tvm.tee.devkit import find_devkit
        find_devkit()
        _step("package-ta", d / "build", "-q")
    except Exception as err:  # noqa: BLE001 - no dev kit on this machine: the simulator alone
        print(f"no dev kit ({err}); packaging for the simulator only")
        _step("package-ta", d / "build", "--sim-only", "-q")
    return d


def test_run_reports_accuracy_and_latency_equal_to_the_combined_model(pipeline):
    import onnxruntime as ort

    from mirrornet_tvm import data

    d = pipeline
    proc = _step("run", d / "build", "--dataset", "fashion-mnist", "--limit", N_IMAGES, "-q",
                 "--json", d / "run.json")
    out = proc.stdout
    assert f"{N_IMAGES} images, TEE sim" in out and "authorized accuracy:" in out
    for stage in ("backbone (Relax VM)", "transfer (TEE trip)", "CPM (TA clock)", "total"):
        assert stage in out
    res = json.loads((d / "run.json").read_text())
    lat = res["latency_ms"]
    assert all(lat[k]["mean_ms"] > 0 for k in ("backbone", "transfer", "cpm", "total"))
    assert lat["total"]["mean_ms"] >= lat["backbone"]["mean_ms"]
    # The reference: the combined ONNX model (backbone + CPM; output 0 is the rectified logits).
    x, y = data.load("fashion-mnist")[2:]
    sess = ort.InferenceSession(str(d / "artifact" / "combined.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(N_IMAGES)])
    expected = float(np.mean(np.argmax(logits, 1) == y[:N_IMAGES]))
    assert res["correct"] == round(expected * N_IMAGES)
    assert f"authorized accuracy: {expected:.2%}" in out


def test_protected_inference_outputs_match_onnxruntime(pipeline):
    import onnxruntime as ort

    from mirrornet_tvm import data
    from mirrornet_tvm.tee.protected import protected_inference

    d = pipeline
    x, y = data.load("fashion-mnist")[2:]
    run = protected_inference(d / "build", x[:64], y[:64], tee="sim", progress=False)
    sess = ort.InferenceSession(str(d / "artifact" / "combined.onnx"), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(64)])
    assert run.policy == "logits"
    np.testing.assert_allclose(run.outputs, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(run.predictions, ref.argmax(1))


def test_backbone_taps_match_onnxruntime_and_stay_valid_across_calls(pipeline):
    import onnxruntime as ort

    from mirrornet_tvm import data
    from mirrornet_tvm.tee.protected import Backbone

    d = pipeline
    x = data.load("fashion-mnist")[2][:6]
    backbone = Backbone(d / "build")
    kept = [backbone.taps(x[i:i + 1]) for i in range(len(x))]  # the input tensor is reused
    sess = ort.InferenceSession(str(d / "artifact" / "combined.onnx"), providers=["CPUExecutionProvider"])
    taps = [o.name for o in sess.get_outputs() if o.name.startswith("tap:")]
    for i, got in enumerate(kept):  # earlier answers were not overwritten by later calls
        ref = np.concatenate([t.ravel() for t in sess.run(taps, {"input": x[i:i + 1]})])
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match=r"one image of shape \(1, 1, 28, 28\), got \(2, 1, 28, 28\)"):
        backbone.taps(x[:2])


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 is not installed")
def test_run_in_optee_under_qemu_agrees_with_the_simulator(pipeline):
    d = pipeline
    if not json.loads((d / "build" / "manifest.json").read_text())["ta"]["signed_ta"]:
        pytest.skip("no signed TA (no OP-TEE dev kit on this machine)")
    n = 20
    proc = _mirrornet("run", d / "build", "--dataset", "fashion-mnist", "--tee", "qemu", "--limit", n, "-q",
                      "--json", d / "qemu.json")
    if proc.returncode != 0 and "not assembled" in proc.stderr:
        pytest.skip(f"OP-TEE QEMU environment missing: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "TEE qemu" in proc.stdout and "not reported" in proc.stdout
    from mirrornet_tvm import data
    from mirrornet_tvm.tee.protected import protected_inference

    x, y = data.load("fashion-mnist")[2:]
    sim = protected_inference(d / "build", x[:n], y[:n], tee="sim", progress=False)
    qemu_res = json.loads((d / "qemu.json").read_text())
    assert qemu_res["images"] == n and qemu_res["correct"] == sim.correct


def test_run_names_what_is_missing(pipeline, tmp_path):
    from mirrornet_tvm.errors import ArtifactError
    from mirrornet_tvm.tee.protected import protected_inference

    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ArtifactError, match="not a build folder"):
        protected_inference(tmp_path / "nothing", x, progress=False)
    unpackaged = tmp_path / "build"
    shutil.copytree(pipeline / "build", unpackaged)
    manifest = json.loads((unpackaged / "manifest.json").read_text())
    del manifest["ta"]
    (unpackaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="mirrornet package-ta"):
        protected_inference(unpackaged, x, progress=False)
    proc = _mirrornet("run", pipeline / "build", "--dataset", "cifar-11", "--limit", 2)
    assert proc.returncode == 1 and "unknown dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_optee_without_a_libteec_is_a_clear_error(pipeline):
    import ctypes.util

    from mirrornet_tvm.errors import TeeError
    from mirrornet_tvm.tee.session import TeeSession

    if ctypes.util.find_library("teec"):
        pytest.skip("this machine has a libteec")
    with pytest.raises(TeeError, match="cannot load libteec libteec.so.1.*libteec1"):
        TeeSession(pipeline / "build", tee="optee")


# ---- weight-leak scan -----------------------------------------------------------------------------------

def _c_weight_tensors(c_file: Path) -> dict:
    """Every `static const float NAME[N] = {...}` of the generated CPM, as float32 arrays."""
    text = c_file.read_text()
    tensors = {}
    for name, n, body in re.findall(r"static const float (\w+)\[(\d+)\]\s*=\s*\{(.*?)\};", text, re.S):
        values = []
        literal = r"mirrornet_f32\(0x[0-9a-fA-F]+u?\)|[-+]?0x[0-9a-fA-FpP.+-]+f?|[-+]?[\d.]+(?:[eE][-+]?\d+)?f?"
        for tok in re.findall(literal, body):
            if tok.startswith("mirrornet_f32"):
                bits = int(re.search(r"0x[0-9a-fA-F]+", tok).group(0), 16)
                values.append(np.array([bits], np.uint32).view(np.float32)[0])
            elif "0x" in tok:
                values.append(float.fromhex(tok.rstrip("f")))
            else:
                values.append(float(tok.rstrip("f")))
        arr = np.array(values, np.float32)
        assert arr.size == int(n), f"could not parse {name} ({arr.size} of {n} values)"
        tensors[f"c:{name}"] = arr
    return tensors


def _onnx_cpm_tensors(artifact: Path) -> dict:
    """The combined model's initializers that the backbone does not have: the CPM's own weights."""
    import onnx
    from onnx import numpy_helper

    backbone = {numpy_helper.to_array(t).tobytes()
                for t in onnx.load(str(artifact / "backbone.onnx")).graph.initializer}
    out = {}
    for t in onnx.load(str(artifact / "combined.onnx")).graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.tobytes() not in backbone:
            out[f"onnx:{t.name}"] = np.ascontiguousarray(arr, np.float32).ravel()
    return out


def _probes(tensors: dict) -> dict:
    """32-byte windows spread over every tensor with enough distinct values to be unmistakable."""
    probes = {}
    for name, arr in tensors.items():
        raw = arr.tobytes()
        if arr.size < 8 or len(np.unique(arr)) < 4:
            continue
        for off in range(0, max(1, len(raw) - 31), 512):
            probes[(name, off)] = raw[off:off + 32]
    return probes


def _leaks(path: Path, probes: dict) -> set:
    blob = path.read_bytes()
    return {name for (name, _), window in probes.items() if window in blob}


def _cross_client(tmp: Path):
    """src/client cross-compiled for the board against Debian's libteec (when the QEMU env has it)."""
    paths_file = ROOT / ".cache" / "optee" / "paths.json"
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if not gcc or not paths_file.is_file():
        return None
    paths = json.loads(paths_file.read_text())
    lib = Path(paths.get("libteec", "")) / "libteec.so.1"
    inc = Path(paths.get("teec_include", ""))
    if not lib.is_file() or not inc.is_dir():
        return None
    exe = tmp / "mirrornet_client.aarch64"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", exe, ROOT / "src" / "client" / "mirrornet_client.c",
                    f"-I{ROOT / 'ta' / 'include'}", f"-I{inc}", lib], check=True)
    return exe


def test_no_cpm_weight_is_readable_in_any_normal_world_artifact(pipeline, tmp_path):
    d = pipeline
    build = d / "build"
    tensors = {**_c_weight_tensors(build / "cpm" / "mirrornet_cpm.c"), **_onnx_cpm_tensors(d / "artifact")}
    assert len([n for n in tensors if n.startswith("c:")]) >= 4 and any(n.startswith("onnx:") for n in tensors)
    probes = _probes(tensors)
    assert len(probes) >= 8

    # Positive controls: the scan does find the weights where they are meant to be in the clear.
    assert _leaks(build / "sim" / f"{UUID}.sim", probes), "scan found nothing in the simulator's TA"
    elf = build / "ta_build" / "out" / f"{UUID}.elf"
    if elf.exists():
        assert _leaks(elf, probes), "scan found nothing in the unencrypted TA ELF"

    # Everything a thief finds in the normal world: every file of the build folder except the CPM
    # sources, the TA build tree and the simulator's TA (development outputs, not deployed), plus the
    # backbone ONNX, the clients and the simulator's client library.
    scanned = [p for p in build.rglob("*") if p.is_file()
               and p.relative_to(build).parts[0] not in ("cpm", "ta_build", "sim")]
    scanned += [d / "artifact" / "backbone.onnx", ROOT / "build" / "mirrornet_client",
                ROOT / "build" / "libmirrornet_teec_sim.so"]
    cross = _cross_client(tmp_path)
    if cross is not None:
        scanned.append(cross)
    names = {p.name for p in scanned}
    assert "backbone.so" in names and "manifest.json" in names
    manifest = json.loads((build / "manifest.json").read_text())
    if manifest["ta"]["signed_ta"]:
        assert manifest["ta"]["encrypted"] and f"{UUID}.ta" in names
    found = {str(p): sorted(_leaks(p, probes)) for p in scanned}
    assert not any(found.values()), {k: v for k, v in found.items() if v}
