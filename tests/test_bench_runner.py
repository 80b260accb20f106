"""bench/run_all.py: the steps it knows, resuming, failures, the tables file, and its onnxruntime peer."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run_all(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)   # dataclasses look their module up while defining
    spec.loader.exec_module(mod)
    return mod


def test_every_step_names_a_bench_script(run_all):
    names = [s.name for s in run_all.STEPS]
    assert len(names) == len(set(names))
    for step in run_all.STEPS:
        assert (ROOT / "bench" / step.script).is_file(), step.script
        for quick in (False, True):
            cmd = step.command(quick, Path("/tmp/w"))
            assert cmd[0] == sys.executable and Path(cmd[1]).is_file()


def test_list_prints_every_step_and_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--list",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "machine:" in proc.stderr
    for name in ("protect_zoo", "security_table", "protected_latency", "onnxruntime_peer", "cpm_c_latency",
                 "compile_time", "emulator_accuracy", "qemu_measurements"):
        assert name in proc.stdout
    assert not list(tmp_path.glob("*.json"))


def test_unknown_step_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--only", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown step(s) nope" in proc.stderr


def test_table_of_keeps_the_table_after_the_last_machine_line(run_all):
    out = "report of a command\nmachine: old\nmore\nmachine: x86\nmodel a b\nlenet 1 2\n"
    assert run_all.table_of(out) == "machine: x86\nmodel a b\nlenet 1 2"
    assert run_all.table_of("# Title\n| a |\n") == "# Title\n| a |"
    assert run_all.table_of("no marker\nat all") == "no marker\nat all"


def _fake_root(tmp_path, body: str) -> Path:
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "fake.py").write_text(body)
    return root


def test_a_step_runs_once_is_kept_and_reruns_with_force(run_all, tmp_path, monkeypatch):
    counter = tmp_path / "runs.txt"
    root = _fake_root(tmp_path, f"""
import sys
from pathlib import Path
p = Path({str(counter)!r}); p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))
print("progress of a command")
print("machine: test")
print("model x", " ".join(sys.argv[1:]))
""")
    monkeypatch.setattr(run_all, "ROOT", root)
    step = run_all.Step("fake", "fake.py", "a fake table", full=("--full",), quick=("--small",))
    out = tmp_path / "out"
    out.mkdir()
    first = run_all.run_step(step, True, out, force=False, timeout=60)
    assert first["exit_code"] == 0 and first["size"] == "quick" and "machine" in first
    assert (out / "fake.txt").read_text().endswith("model x --small\n")
    again = run_all.run_step(step, True, out, force=False, timeout=60)
    assert counter.read_text() == "1" and again["finished"] == first["finished"]
    run_all.run_step(step, True, out, force=True, timeout=60)
    assert counter.read_text() == "2"
    text = run_all.render_tables([(step, json.loads((out / "fake.json").read_text()))], out, quick=True)
    assert "## fake: a fake table" in text and "machine: test\nmodel x --small" in text
    assert "progress of a command" not in text


def test_a_failing_step_is_recorded_and_retried(run_all, tmp_path, monkeypatch):
    root = _fake_root(tmp_path, "import sys\nprint('half a table')\nsys.exit(3)\n")
    monkeypatch.setattr(run_all, "ROOT", root)
    step = run_all.Step("broken", "fake.py", "a failing table")
    out = tmp_path / "out"
    out.mkdir()
    rec = run_all.run_step(step, False, out, force=False, timeout=60)
    assert rec["exit_code"] == 3
    assert not (out / "broken.txt").exists() and "half a table" in (out / "broken.failed.txt").read_text()
    (root / "bench" / "fake.py").write_text("print('machine: m')\nprint('fixed')\n")
    rec = run_all.run_step(step, False, out, force=False, timeout=60)   # a failure is not kept
    assert rec["exit_code"] == 0 and (out / "broken.txt").read_text() == "machine: m\nfixed\n"


def test_the_onnxruntime_peer_measures_both_runtimes():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--peer", "--models", "lenet",
                           "--images", "4", "--rounds", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine:") and "cores" in lines[0]
    row = next(line for line in lines if line.startswith("lenet"))
    ort_ms, naive_ms, default_ms, r1, r2, r3 = row.split()[1:]
    assert min(float(ort_ms), float(naive_ms), float(default_ms)) > 0
    assert all(r.endswith("x") and float(r[:-1]) > 0 for r in (r1, r2, r3))
