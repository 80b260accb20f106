"""`mirrornet compile` end to end on tiny artifacts: build folder, manifest, numerics, errors, atomicity."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from mirrornet_tvm.cli import main as cli_main
from mirrornet_tvm.codegen import harness
from mirrornet_tvm.compile import compile_artifact, read_artifact
from mirrornet_tvm.errors import ArtifactError, UsageError
from mirrornet_tvm.util import sha256_file
from test_build import EM_AARCH64, elf_header
from test_partition_models import make_artifact, sample_input, strategy_dict


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("art") / "artifact"
    return make_artifact(folder, strategy=strategy_dict("concat", "correction"))


def test_compile_cli_end_to_end(artifact, tmp_path, capsys):
    build = tmp_path / "build"
    code, out, err = run_cli(["compile", str(artifact), "-o", str(build)], capsys)
    assert code == 0, err
    assert "untuned" in out and "B per inference" in out
    for phase in ("read artifact", "import to Relax", "partition", "build backbone", "generate CPM C"):
        assert phase in err  # progress per phase on stderr
    files = sorted(str(p.relative_to(build)) for p in build.rglob("*") if p.is_file())
    assert files == ["backbone.so", "cpm/math.h", "cpm/mirrornet_cpm.c", "cpm/mirrornet_cpm.h",
                     "manifest.json", "strategy.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["build"]  # the staging folder was renamed away

    m = json.loads((build / "manifest.json").read_text())
    assert m["generated_by"].startswith("mirrornet compile")
    assert m["generated_from"]["combined.onnx"] == sha256_file(artifact / "combined.onnx")
    assert m["generated_from"]["strategy.json"] == sha256_file(artifact / "strategy.json")
    assert m["tuning"] == "untuned" and m["backbone"]["tuning"] == "untuned"
    assert m["target"]["name"] == "host" and m["target"]["config"]["kind"] == "llvm"
    tap_floats = 4 * 16 * 16 + 8 * 4 * 4 + 10  # b1_relu, b4_maxpool, backbone_logits (correction)
    sizes = m["sizes"]
    assert sizes["tap_bytes_per_inference"] == 4 * tap_floats
    assert sizes["backbone_lib_bytes"] == (build / "backbone.so").stat().st_size
    assert sizes["cpm_code_bytes"] == (build / "cpm" / "mirrornet_cpm.c").stat().st_size
    assert sizes["cpm_weight_bytes"] > 0 and sizes["cpm_arena_bytes"] > 0
    assert [i["name"] for i in m["cpm"]["inputs"]] == ["b1_relu", "b4_maxpool", "backbone_logits"]
    assert [o["name"] for o in m["backbone"]["outputs"]] == ["tap:b1_relu", "tap:b4_maxpool",
                                                              "backbone_logits"]
    for name, info in m["files"].items():
        assert info["sha256"] == sha256_file(build / name)
    assert json.loads((build / "strategy.json").read_text())["taps"] == ["b1_relu", "b4_maxpool"]
    header = (build / "cpm" / "mirrornet_cpm.h").read_text()
    assert "MIRRORNET_CPM_NUM_TAPS" in header

    # Backbone (Relax VM, from backbone.so) then CPM (the generated C, gcc) == the combined model.
    x = sample_input(seed=11)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(build / "backbone.so")), tvm.cpu())
    taps = [t.numpy() for t in vm["backbone"](tvm.runtime.tensor(x))]
    exe = harness.build(build / "cpm", harness.native(), tmp_path / "cpm_exe")
    logits, _ = harness.run(exe, taps, 10, harness.native())
    want = ort.InferenceSession(str(artifact / "combined.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, want.reshape(-1), rtol=1e-4, atol=1e-4)


def test_compile_for_rpi3_and_recompile_replaces_the_build(artifact, tmp_path):
    build = tmp_path / "build"
    first = compile_artifact(artifact, build, progress=False)
    result = compile_artifact(artifact, build, target="rpi3", progress=False)
    assert result.manifest["target"]["name"] == "rpi3"
    assert result.manifest["target"]["cross_compiler"] == "aarch64-linux-gnu-gcc"
    assert elf_header(build / "backbone.so")["machine"] == EM_AARCH64
    assert first.manifest["files"]["cpm/mirrornet_cpm.c"] == result.manifest["files"]["cpm/mirrornet_cpm.c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no staging or old folder left


def test_missing_or_inconsistent_artifacts_say_what_to_do(artifact, tmp_path, capsys):
    code, _, err = run_cli(["compile", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")], capsys)
    assert code == 1 and "does not exist" in err and "mirrornet protect" in err
    assert "Traceback" not in err

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "combined.onnx").write_bytes((artifact / "combined.onnx").read_bytes())
    with pytest.raises(ArtifactError, match="no strategy.json"):
        read_artifact(partial)

    (partial / "strategy.json").write_text('{"taps": ["b1_relu"], "width_ratio": 3}')
    with pytest.raises(ArtifactError, match="invalid strategy"):
        read_artifact(partial)

    swapped = strategy_dict("concat", "correction", taps=("b4_maxpool", "b1_relu"))
    (partial / "strategy.json").write_text(json.dumps(swapped))
    with pytest.raises(ArtifactError, match="outputs"):
        read_artifact(partial)

    other = strategy_dict("concat", "logits")  # same taps, another output mode
    (partial / "strategy.json").write_text(json.dumps(other))
    with pytest.raises(ArtifactError, match="disagree on 'output'"):
        read_artifact(partial)

    (partial / "strategy.json").write_text((artifact / "strategy.json").read_text())
    (partial / "combined.onnx").write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="not a readable ONNX"):
        read_artifact(partial)

    proto = onnx.load(str(artifact / "combined.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(partial / "combined.onnx"))
    with pytest.raises(ArtifactError, match="no mirrornet.strategy metadata"):
        read_artifact(partial)


def test_a_failed_compile_keeps_the_previous_build_and_never_overwrites_other_folders(artifact, tmp_path):
    build = tmp_path / "build"
    compile_artifact(artifact, build, progress=False)
    before = {p.name: p.read_bytes() for p in build.iterdir() if p.is_file()}
    with pytest.raises(UsageError, match="rejects the target|neither a preset"):
        compile_artifact(artifact, build, target="pdp11", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "strategy.json").write_text((artifact / "strategy.json").read_text())
    (broken / "combined.onnx").write_bytes(b"\x00")
    with pytest.raises(ArtifactError):
        compile_artifact(broken, build, progress=False)
    assert {p.name: p.read_bytes() for p in build.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "build"]

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a previous build"):
        compile_artifact(artifact, mine, progress=False)
    assert (mine / "todo.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="must not be the artifact folder"):
        compile_artifact(artifact, artifact, progress=False)


def test_tutorial_script_runs_as_a_new_user_would_run_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tutorials" / "compile_script.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max |backbone -> cpm  -  main| = 0.0" in done.stdout
    assert "MirrorNetPartition" in done.stdout  # the pass shows in the timing instrument
    assert (tmp_path / "host" / "backbone.so").is_file() and (tmp_path / "cpm" / "mirrornet_cpm.c").is_file()
