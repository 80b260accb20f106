"""`mirrornet tune`: what it accepts, and one-line errors for what it does not."""
import json

import pytest

from mirrornet_tvm.cli import main
from mirrornet_tvm.emulator.tuning import default_out_dir, read_source


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_help_names_the_rpc_options(capsys):
    code, text = run(["tune", "--help"], capsys)
    assert code == 0 and "--rpc-tracker" in text and "--rpc-key" in text and "--trials" in text


@pytest.mark.parametrize("argv, message", [
    (["tune", "/nonexistent/model.onnx"], "does not exist"),
    (["tune", "{tmp}/notes.txt"], "is not an ONNX model"),
    (["tune", "{tmp}/empty"], "neither a build folder nor an artifact"),
    (["tune", "{tmp}/build"], "which is not there"),
    (["tune", "{tmp}/m.onnx", "--rpc-key", "k"], "--rpc-key needs --rpc-tracker"),
    (["tune", "{tmp}/m.onnx", "--rpc-tracker", "nohostport", "--rpc-key", "k"], "HOST:PORT"),
    (["tune", "{tmp}/m.onnx", "--rpc-tracker", "127.0.0.1:9"], "an RPC key is needed"),
    (["tune", "{tmp}/m.onnx", "--rpc-tracker", "127.0.0.1:1", "--rpc-key", "k"], "cannot reach the RPC tracker"),
    (["tune", "{tmp}/m.onnx", "--target", "rpi3"], "cannot run code for aarch64"),
    (["tune", "{tmp}/m.onnx", "--target", "bogus"], "neither a preset"),
])
def test_bad_input_fails_in_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "manifest.json").write_text(json.dumps({"generated_from": {"artifact": "/gone"}}))
    (tmp_path / "m.onnx").write_bytes(b"")
    code, text = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code != 0
    assert message in text, text
    assert "Traceback" not in text and text.count("\n") <= 2, text


def test_sources_and_default_output_folders(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "combined.onnx").write_bytes(b"x")
    (art / "backbone.onnx").write_bytes(b"x")
    (art / "strategy.json").write_text(json.dumps({"taps": ["b1_maxpool"], "width_ratio": 0.25}))
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({"generated_from": {"artifact": str(art)}}))
    src = read_source(build)
    assert src.kind == "build" and src.model_path == art / "backbone.onnx" and src.strategy.taps == ("b1_maxpool",)
    assert read_source(art).kind == "artifact"
    assert default_out_dir(build, "build") == build / "tuning"
    assert default_out_dir(art, "artifact") == tmp_path / "art-tuning"
    assert default_out_dir(tmp_path / "m.onnx", "onnx") == tmp_path / "m-tuning"
