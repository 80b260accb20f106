"""libFuzzer on the TA's invoke handler (src/fuzz/fuzz_invoke.c, clang -fsanitize=fuzzer,address,undefined).

The TA as `mirrornet package-ta` assembles it (around the stand-in CPM) is fuzzed for a bounded time;
then a copy with one planted out-of-bounds read shows that the harness does catch such a bug.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from mirrornet_tvm.tee.sources import repo_root
from tee_stand_in_cpm import packaged_stand_in

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang (libFuzzer) is not installed")

FUZZ_SECONDS = 20


def _build_fuzzer(ta_build: Path, work: Path) -> Path:
    build = work / "cmake"
    subprocess.run(["cmake", "-S", repo_root(), "-B", build, "-DCMAKE_C_COMPILER=clang",
                    "-DCMAKE_BUILD_TYPE=Debug", f"-DMIRRORNET_FUZZ_TA_DIR={ta_build}"],
                   check=True, capture_output=True)
    proc = subprocess.run(["cmake", "--build", build, "--target", "mirrornet_fuzz_invoke"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build / "mirrornet_fuzz_invoke"


def _fuzz(exe: Path, work: Path, seconds: int):
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    # Invokes carry buffers of up to a few MB: ASan's default 256 MB quarantine of freed blocks plus
    # its shadow pushes RSS past 1 GB without any leak (live heap stays ~25 MB), so bound the
    # quarantine and leave the RSS limit room above it. A real leak still trips the limit.
    env = dict(os.environ, ASAN_OPTIONS="quarantine_size_mb=32:detect_leaks=1")
    # libFuzzer reads its peak RSS (getrusage), and Linux carries the peak of the process that started it
    # across fork and exec: this test process's own peak (gigabytes late in a full test run) counts as the
    # fuzzer's. The 2 GB allowance is on top of it.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return subprocess.run([exe, f"-max_total_time={seconds}", "-seed=1", f"-rss_limit_mb={inherited_mb + 2048}",
                           f"-artifact_prefix={work}/", str(corpus)],
                          capture_output=True, text=True, timeout=seconds + 120, env=env)


@pytest.fixture(scope="module")
def ta_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("fuzz") / "build"
    packaged_stand_in(build, "logits")   # taps fit one invoke: direct RUN_CPM and LOAD_TAPS both reachable
    return build / "ta_build"


def test_fuzzing_the_invoke_handler_finds_nothing(ta_build, tmp_path):
    exe = _build_fuzzer(ta_build, tmp_path)
    proc = _fuzz(exe, tmp_path, FUZZ_SECONDS)
    log = proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Done" in log and "ERROR" not in log
    runs = int(log.rsplit("Done ", 1)[1].split()[0])
    assert runs > 1000, f"only {runs} fuzz runs in {FUZZ_SECONDS} s"
    # The fuzzer reached the deep paths: every command succeeded many times, RUN_CPM both on taps it
    # was given and on taps assembled by LOAD_TAPS chunks; and it kept inputs beyond the trivial ones.
    counts = dict(kv.split("=") for kv in log.split("mirrornet_fuzz: successes ", 1)[1].split()[:4])
    assert min(int(v) for v in counts.values()) > 10, counts
    assert len(list((tmp_path / "corpus").iterdir())) > 20


def test_the_harness_catches_a_planted_out_of_bounds_read(ta_build, tmp_path):
    broken = tmp_path / "ta_build"
    shutil.copytree(ta_build, broken)
    src = broken / "mirrornet_ta.c"
    text = src.read_text()
    line = "TEE_MemMove((uint8_t *)taps_buf + offset, params[0].memref.buffer, size);"
    planted = text.replace(line, line + "\n\tlogits_buf[0] = ((volatile uint8_t *)params[0].memref.buffer)[size];")
    assert planted != text
    src.write_text(planted)
    exe = _build_fuzzer(broken, tmp_path)
    proc = _fuzz(exe, tmp_path, 60)
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr
