"""The tutorials: generated from tutorials/make_notebooks.py, stripped of outputs, and executed top to bottom.

Each notebook runs in its own kernel with MIRRORNET_TUTORIAL_QUICK=1 (small data, few epochs) and its
outputs in a temporary folder shared by the four, in their reading order, so the later ones reuse the
artifact the first one protects (each also runs alone: it then makes its own).
"""
import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
ORDER = ["protect_a_model.ipynb", "compile_script.ipynb", "tune_against_a_board.ipynb", "attack_your_model.ipynb"]
CELL_TIMEOUT = 600


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebooks_are_generated_and_stripped():
    gen = _generator()
    assert sorted(gen.NOTEBOOKS) == sorted(ORDER)
    for name in ORDER:
        text = (TUTORIALS / name).read_text()
        assert text == gen.render(name), f"tutorials/{name} is out of date: run `make tutorials`"
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell is not parameters"
        assert "MIRRORNET_TUTORIAL_QUICK" in code[0].source
        for i, c in enumerate(code):   # every cell is valid Python (IPython magics aside)
            source = "\n".join(line for line in c.source.splitlines() if not line.startswith("%"))
            compile(source, f"{name} code cell {i}", "exec")


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorials")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_leftovers(out_root: Path) -> list:
    """Process groups the tune tutorial started and did not stop (it records their PIDs)."""
    pids_file = out_root / "tune" / "rpc_pids.json"
    if not pids_file.is_file():
        return []
    alive = [pid for pid in json.loads(pids_file.read_text()) if _alive(pid)]
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def _images(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("name", ORDER)
def test_tutorial_runs(name, out_root, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("MIRRORNET_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("MIRRORNET_TUTORIAL_OUT", str(out_root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{name} failed:\n{str(err)[-3000:]}")
    finally:
        leftovers = _stop_leftovers(out_root)
    seconds = time.perf_counter() - started
    print(f"{name}: {seconds:.0f} s")
    assert not leftovers, f"{name} left RPC processes running: {leftovers}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert _images(nb) >= 1, f"{name} drew no plot"
