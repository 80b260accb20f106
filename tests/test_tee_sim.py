"""The MirrorNet TA in the host TEE simulator: answers against numpy, output policies, chunked taps,
the parameter contract (property-based, every type word and size), and TAs that crash, hang or overflow.

The CPM is the test fixture of tee_stand_in_cpm.py (a linear layer with known weights).
"""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrornet_tvm.errors import ArtifactError, TeeError, UsageError
from mirrornet_tvm.tee import teec
from mirrornet_tvm.tee.session import TeeSession
from mirrornet_tvm.tee.sources import repo_root
from tee_stand_in_cpm import (TRIGGER_CRASH, TRIGGER_FAIL, TRIGGER_HANG, TRIGGER_HEAP, TRIGGER_STACK,
                              packaged_stand_in)

ROOT = repo_root()
RUN, LOAD, INFO, HEAP = 1, 2, 0, 3


def _taps(n, floats, seed=0):
    return np.random.default_rng(seed).standard_normal((n, floats)).astype(np.float32)


@pytest.fixture(scope="module")
def logits(tmp_path_factory):
    build = tmp_path_factory.mktemp("logits") / "build"
    cpm, pk = packaged_stand_in(build, "logits", misbehave=True)
    return build, cpm, pk


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """Same CPM, but at most 100 bytes per invoke: 448 bytes of taps go in 5 LOAD_TAPS chunks."""
    build = tmp_path_factory.mktemp("chunked") / "build"
    cpm, pk = packaged_stand_in(build, "logits", shm_limit=192)
    return build, cpm, pk


@pytest.fixture(scope="module")
def session(logits):
    with TeeSession(logits[0]) as s:
        yield s


# ---- answers -------------------------------------------------------------------------------------------

def test_logits_match_the_reference_and_info_describes_the_cpm(logits, session):
    build, cpm, pk = logits
    info = session.info
    assert (info.policy, info.tap_sizes, info.num_classes) == ("logits", (72, 40), 10)
    assert info.output_bytes == 40 and info.max_invoke_bytes == 512 * 1024
    assert info.source_sha256 == pk.source_sha256 and len(info.source_sha256) == 64
    assert info.clock_resolution_ns == 1
    taps = _taps(32, cpm.tap_floats)
    res = session.run_many(taps)
    np.testing.assert_allclose(res.outputs, cpm.logits(taps), rtol=1e-5, atol=1e-5)
    assert len({r.tobytes() for r in res.outputs}) == 32
    assert (res.cpm_ns > 0).all() and (res.invoke_ns > res.cpm_ns).all()
    after = session.get_info()
    assert after.runs >= 32 and after.cpm_ns_total >= int(res.cpm_ns.sum())


def test_probability_and_label_policies(tmp_path, logits):
    _, cpm, _ = logits
    taps = _taps(16, cpm.tap_floats, seed=1)
    ref = cpm.logits(taps).astype(np.float64)
    soft = np.exp(ref - ref.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    packaged_stand_in(tmp_path / "probs", "probs")
    with TeeSession(tmp_path / "probs") as s:
        assert s.info.policy == "probs"
        probs = s.run_many(taps).outputs
    np.testing.assert_allclose(probs, soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    packaged_stand_in(tmp_path / "label", "label")
    with TeeSession(tmp_path / "label") as s:
        assert s.info.policy == "label" and s.info.output_bytes == 4
        labels = s.run_many(taps).outputs
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref.argmax(1))


def test_one_image_run_answers_as_run_many_does(tmp_path, logits, session):
    _, cpm, _ = logits
    taps = _taps(6, cpm.tap_floats, seed=4)
    many = session.run_many(taps).outputs
    outs = [session.run(row)[0] for row in taps]  # the prepared per-image path
    for out, want in zip(outs, many):  # each answer is its own array, not a view of the next call's buffer
        assert out.dtype == np.float32 and out.shape == (10,)
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(session.run(taps[2].astype(np.float64))[0], many[2])  # cast as run_many does
    np.testing.assert_array_equal(session.run(taps[3][None, :])[0], many[3])  # (1, N) takes the general path
    with pytest.raises(UsageError, match="expects"):
        session.run(taps[0][:-1])
    with pytest.raises(UsageError, match="floating point"):
        session.run(taps[0].astype(np.int32))
    packaged_stand_in(tmp_path / "label", "label")
    with TeeSession(tmp_path / "label") as s:
        labels = [s.run(row)[0] for row in taps]
        np.testing.assert_array_equal(labels, s.run_many(taps).outputs)
        assert all(isinstance(v, np.int32) for v in labels)


def test_chunked_taps_give_the_same_answers(logits, chunked, session):
    taps = _taps(8, logits[1].tap_floats, seed=2)
    with TeeSession(chunked[0]) as s:
        assert s.info.max_invoke_bytes == 192
        got = s.run_many(taps).outputs
    np.testing.assert_array_equal(got, session.run_many(taps).outputs)


def test_a_prepared_invoke_answers_as_a_fresh_invoke_does(logits):
    _, cpm, _ = logits
    taps = _taps(4, cpm.tap_floats, seed=3)
    with TeeSession(logits[0]) as s:
        out = np.zeros(OUT_BYTES, np.uint8)
        run = s.prepare(RUN, [teec.MemIn(np.zeros(cpm.tap_floats, np.float32)), teec.MemOut(out), teec.ValueOut()])
        for row in taps:
            run.set_input(0, row)
            assert run() == teec.SUCCESS and run.out_size(1) == OUT_BYTES
            a, b = run.value(2)
            assert (b << 32) | a > 0  # the CPM's time by the TA's clock
            fresh = s.invoke(RUN, [teec.MemIn(row), teec.MemOut(OUT_BYTES), teec.ValueOut()])
            assert fresh.ok and out.tobytes() == fresh.outputs[1][1]
        np.testing.assert_array_equal(s.run_many(taps).outputs[-1], out.view(np.float32))
        run.set_input(0, taps[0][:-1])  # one float short: the TA refuses, the session lives on
        assert run() == teec.BAD_PARAMETERS and run.origin == 4
        run.set_input(0, taps[0])
        assert run() == teec.SUCCESS
        np.testing.assert_allclose(out.view(np.float32), cpm.logits(taps[:1])[0], rtol=1e-5, atol=1e-5)
        short = s.prepare(RUN, [teec.MemIn(taps[0]), teec.MemOut(OUT_BYTES - 1), teec.ValueOut()])
        for _ in range(2):  # the size the TA asks for is not kept as the buffer's size for the next call
            assert short() == teec.SHORT_BUFFER and short.out_size(1) == OUT_BYTES
        with pytest.raises(TypeError, match="not an input memref"):
            run.set_input(1, taps[0])
        with pytest.raises(ValueError, match="C-contiguous"):
            run.set_input(0, np.zeros((2, cpm.tap_floats), np.float32)[:, 0])
    with pytest.raises(TeeError, match="closed"):
        run()


def test_bad_taps_shape_is_a_usage_error(session):
    with pytest.raises(UsageError, match=r"\(N, 112\)"):
        session.run_many(np.zeros((2, 111), np.float32))
    with pytest.raises(UsageError, match="floating point"):
        session.run_many(np.zeros((2, 112), np.int32))


# ---- the parameter contract, property-based ------------------------------------------------------------

KINDS = ["none", "vin", "vout", "vinout", "min", "mout", "minout", "null_in", "null_out"]
TYPE_OF = {"none": 0, "vin": 1, "vout": 2, "vinout": 3, "min": 5, "mout": 6, "minout": 7,
           "null_in": 5, "null_out": 6}
TAP_BYTES, OUT_BYTES, INFO_BYTES = 448, 40, 192


def _param(kind, size, value):
    if kind == "none":
        return None
    if kind == "vin":
        return teec.ValueIn(*value)
    if kind == "vout":
        return teec.ValueOut()
    if kind == "vinout":
        return teec.ValueInOut(*value)
    if kind == "min":
        return teec.MemIn(np.full(size, 7, np.uint8))
    if kind == "mout":
        return teec.MemOut(size)
    if kind == "minout":
        return teec.MemInOut(np.zeros(size, np.uint8))
    return teec.MemNull(TYPE_OF[kind], size)


def _expected(cmd, kinds, sizes, values, loaded):
    """The TA's contract (ta/include/mirrornet_ta.h) as an oracle: (code, size written back to param 0/1)."""
    types = [TYPE_OF[k] for k in kinds]
    null = [k.startswith("null") for k in kinds]
    if cmd == INFO:
        if types != [6, 0, 0, 0]:
            return teec.BAD_PARAMETERS, None
        if sizes[0] < INFO_BYTES:
            return teec.SHORT_BUFFER, INFO_BYTES
        return (teec.BAD_PARAMETERS, None) if null[0] else (teec.SUCCESS, INFO_BYTES)
    if cmd == RUN:
        if types[0] not in (5, 0) or types[1] != 6 or types[2] not in (2, 0) or types[3] != 0:
            return teec.BAD_PARAMETERS, None
        if types[0] == 5:
            if sizes[0] != TAP_BYTES:
                return teec.BAD_PARAMETERS, None
            if null[0]:
                return teec.BAD_PARAMETERS, None
        elif loaded != TAP_BYTES:
            return teec.BAD_STATE, None
        if sizes[1] < OUT_BYTES:
            return teec.SHORT_BUFFER, OUT_BYTES
        return (teec.BAD_PARAMETERS, None) if null[1] else (teec.SUCCESS, OUT_BYTES)
    if cmd == LOAD:
        if types != [5, 1, 0, 0]:
            return teec.BAD_PARAMETERS, None
        off, total = values[1]
        if total != TAP_BYTES or sizes[0] == 0 or sizes[0] > 512 * 1024:
            return teec.BAD_PARAMETERS, None
        if off > TAP_BYTES or sizes[0] > TAP_BYTES - off:
            return teec.BAD_PARAMETERS, None
        if off != 0 and off != loaded:
            return teec.BAD_STATE, None
        return (teec.BAD_PARAMETERS, None) if null[0] else (teec.SUCCESS, None)
    if cmd == HEAP:
        return (teec.SUCCESS, None) if types == [2, 2, 0, 0] else (teec.BAD_PARAMETERS, None)
    return teec.NOT_SUPPORTED, None


_sizes = st.sampled_from([0, 1, 3, 4, 39, 40, 41, 191, 192, 193, 447, 448, 449, 1000])
_values = st.tuples(st.sampled_from([0, 4, 100, 447, 448, 449, 2**32 - 4]),
                    st.sampled_from([0, 447, 448, 449, 2**32 - 1]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from([INFO, RUN, LOAD, HEAP, 4, 0x7FFF]),
       kinds=st.lists(st.sampled_from(KINDS), min_size=4, max_size=4),
       sizes=st.lists(_sizes, min_size=4, max_size=4),
       values=st.lists(_values, min_size=4, max_size=4))
def test_every_invoke_is_answered_as_the_contract_says(session, cmd, kinds, sizes, values):
    # Start from a known state: no taps loaded (a RUN with loaded taps is covered below).
    session.invoke(LOAD, [teec.MemIn(np.zeros(4, np.uint8)), teec.ValueIn(0, TAP_BYTES)])
    loaded = 4
    params = [_param(k, s, v) for k, s, v in zip(kinds, sizes, values)]
    res = session.invoke(cmd, params)
    code, size = _expected(cmd, kinds, sizes, values, loaded)
    assert res.code == code, (teec.code_name(res.code), teec.code_name(code))
    assert res.origin == 4  # the TA itself answered, it did not die
    if size is not None:
        slot = 0 if cmd == INFO else 1
        assert res.outputs[slot][0] == size
    if cmd == RUN and code == teec.SUCCESS and kinds[2] == "vout":
        a, b = res.outputs[2]
        assert (b << 32 | a) > 0


VALID = {  # a valid invoke of each command: (kinds, sizes, values)
    INFO: (["mout", "none", "none", "none"], [INFO_BYTES, 0, 0, 0], [(0, 0)] * 4),
    RUN: (["min", "mout", "vout", "none"], [TAP_BYTES, OUT_BYTES, 0, 0], [(0, 0)] * 4),
    LOAD: (["min", "vin", "none", "none"], [100, 0, 0, 0], [(0, 0), (0, TAP_BYTES), (0, 0), (0, 0)]),
    HEAP: (["vout", "vout", "none", "none"], [0, 0, 0, 0], [(0, 0)] * 4),
}


def test_every_single_deviation_from_a_valid_invoke(session):
    """Each valid invoke with one slot changed: every other type, sizes off by one, zero, NULL buffers."""
    checked = 0
    for cmd, (kinds0, sizes0, values0) in VALID.items():
        variants = [(kinds0, sizes0, values0)]
        for slot in range(4):
            for kind in KINDS:
                for size in (0, 1, sizes0[slot] - 1, sizes0[slot], sizes0[slot] + 1):
                    if size < 0:
                        continue
                    kinds, sizes = list(kinds0), list(sizes0)
                    kinds[slot], sizes[slot] = kind, size
                    variants.append((kinds, sizes, values0))
        if cmd == LOAD:
            for value in [(1, TAP_BYTES), (0, TAP_BYTES - 1), (0, TAP_BYTES + 1), (TAP_BYTES - 99, TAP_BYTES),
                          (TAP_BYTES - 100, TAP_BYTES), (2**32 - 1, TAP_BYTES)]:
                variants.append((kinds0, sizes0, [(0, 0), value, (0, 0), (0, 0)]))
        for kinds, sizes, values in variants:
            session.invoke(LOAD, [teec.MemIn(np.zeros(4, np.uint8)), teec.ValueIn(0, TAP_BYTES)])
            res = session.invoke(cmd, [_param(k, s, v) for k, s, v in zip(kinds, sizes, values)])
            code, size = _expected(cmd, kinds, sizes, values, 4)
            assert (res.code, res.origin) == (code, 4), (cmd, kinds, sizes, values, teec.code_name(res.code))
            if size is not None:
                assert res.outputs[0 if cmd == INFO else 1][0] == size
            checked += 1
    assert checked > 400
    # The valid ones did succeed, and the session is still healthy.
    assert session.run(np.zeros(112, np.float32))[0].shape == (10,)


def test_load_taps_sequence_rules(session, logits):
    cpm = logits[1]
    taps = _taps(1, cpm.tap_floats, seed=3)[0]
    raw = taps.view(np.uint8)
    out = teec.MemOut(OUT_BYTES)

    def load(off, n, total=TAP_BYTES):
        return session.invoke(LOAD, [teec.MemIn(raw[off:off + n]), teec.ValueIn(off, total)]).code

    assert load(0, 100) == teec.SUCCESS
    assert load(200, 100) == teec.BAD_STATE           # a gap
    assert load(0, 100, total=444) == teec.BAD_PARAMETERS
    assert load(100, 348) == teec.SUCCESS             # complete now
    res = session.invoke(RUN, [None, out, teec.ValueOut()])
    assert res.code == teec.SUCCESS
    np.testing.assert_allclose(np.frombuffer(res.outputs[1][1], "<f4"), cpm.logits(taps[None])[0], rtol=1e-5,
                               atol=1e-5)
    # The run consumed the taps: a second RUN without loading is refused.
    assert session.invoke(RUN, [None, out, teec.ValueOut()]).code == teec.BAD_STATE
    # Restarting at offset 0 discards a partial set.
    assert load(0, 200) == teec.SUCCESS and load(0, 448) == teec.SUCCESS
    assert session.invoke(RUN, [None, out]).code == teec.SUCCESS


# ---- TAs that die --------------------------------------------------------------------------------------

def _trigger(cpm, value):
    taps = np.zeros(cpm.tap_floats, np.float32)
    taps[0] = value
    return taps


@pytest.mark.parametrize("trigger, why", [(TRIGGER_CRASH, "signal 11"), (TRIGGER_STACK, "signal 11")])
def test_a_crashing_ta_is_a_clear_error_and_the_session_stays_dead(logits, capfd, trigger, why):
    build, cpm, _ = logits
    with TeeSession(build) as s:
        t0 = time.monotonic()
        with pytest.raises(TeeError, match=why) as err:
            s.run(_trigger(cpm, trigger))
        assert time.monotonic() - t0 < 10
        assert err.value.code == teec.TARGET_DEAD
        with pytest.raises(TeeError, match="TARGET_DEAD") as again:
            s.run(np.zeros(cpm.tap_floats, np.float32))
        assert "dead" in str(again.value)
    if trigger == TRIGGER_STACK:
        assert "stack overflow" in capfd.readouterr().err
    with TeeSession(build) as s:  # a new session gets a new instance
        np.testing.assert_allclose(s.run(np.ones(cpm.tap_floats, np.float32))[0],
                                   cpm.logits(np.ones((1, cpm.tap_floats)))[0], rtol=1e-5, atol=1e-5)


def test_a_hanging_ta_times_out_instead_of_hanging(logits):
    build, cpm, _ = logits
    with TeeSession(build, timeout_s=1.0) as s:
        t0 = time.monotonic()
        with pytest.raises(TeeError, match="did not answer within 1000 ms") as err:
            s.run(_trigger(cpm, TRIGGER_HANG))
        assert err.value.code == teec.TARGET_DEAD
        assert time.monotonic() - t0 < 8


def test_cpm_errors_and_heap_exhaustion_are_error_codes_not_deaths(logits):
    build, cpm, _ = logits
    with TeeSession(build) as s:
        for trigger in (TRIGGER_FAIL, TRIGGER_HEAP):   # 64 MiB TEE_Malloc > TA_DATA_SIZE: NULL, then error
            with pytest.raises(TeeError, match="TEEC_ERROR_GENERIC") as err:
                s.run(_trigger(cpm, trigger))
            assert err.value.code == teec.GENERIC and err.value.origin == 4
        assert s.run(np.zeros(cpm.tap_floats, np.float32))[0].shape == (10,)


def test_heap_stats_report_the_ta_heap_and_its_failed_allocations(tmp_path):
    cpm, pk = packaged_stand_in(tmp_path / "heap", "logits", misbehave=True)
    with TeeSession(tmp_path / "heap") as s:
        before = s.heap_stats()
        assert 0 < before.size <= pk.data_size and before.failed_allocations == 0
        assert 0 <= before.in_use <= before.peak <= before.size
        with pytest.raises(TeeError):
            s.run(_trigger(cpm, TRIGGER_HEAP))  # asks for 64 MiB: refused and counted
        after = s.heap_stats()
        assert after.failed_allocations == 1 and after.in_use == before.in_use and after.peak == before.peak
        res = s.invoke(s.abi.command("HEAP_STATS"), [teec.ValueOut()])  # wrong parameter types
        assert res.code == teec.BAD_PARAMETERS and res.origin == 4


def test_missing_ta_and_wrong_folder_are_clear_errors(tmp_path, logits):
    with pytest.raises(TeeError, match="no simulated TA"):
        TeeSession(logits[0], ta_dir=tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        TeeSession(tmp_path / "nowhere")


# ---- the C client and registered shared memory ----------------------------------------------------------

def test_c_client_runs_the_ta_on_a_taps_file(tmp_path, chunked):
    build, cpm, _ = chunked
    client = ROOT / "build" / "mirrornet_client"
    sim_dir = str(build / "sim")
    taps = _taps(5, cpm.tap_floats, seed=4)
    taps.astype("<f4").tofile(tmp_path / "taps.bin")
    proc = subprocess.run([client, "--context", sim_dir, tmp_path / "taps.bin", tmp_path / "out.bin"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "5 records" in proc.stderr
    out = np.fromfile(tmp_path / "out.bin", "<f4").reshape(5, 10)
    np.testing.assert_allclose(out, cpm.logits(taps), rtol=1e-5, atol=1e-5)
    info = subprocess.run([client, "--context", sim_dir, "--info"], capture_output=True, text=True, timeout=60)
    assert "tap_sizes=72,40" in info.stdout and "max_invoke_bytes=192" in info.stdout
    (tmp_path / "bad.bin").write_bytes(b"\0" * 447)
    bad = subprocess.run([client, "--context", sim_dir, tmp_path / "bad.bin", tmp_path / "o.bin"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a positive multiple" in bad.stderr
    assert not (tmp_path / "o.bin").exists() and not (tmp_path / "o.bin.tmp").exists()


REGISTERED_C = r"""
#include <stdio.h>
#include <string.h>
#include <tee_client_api.h>
#include <mirrornet_ta.h>
int main(int argc, char **argv)
{
	TEEC_Context ctx; TEEC_Session s; TEEC_SharedMemory in, out; TEEC_Operation op;
	TEEC_UUID uuid = TA_MIRRORNET_UUID; uint32_t origin; float taps[112]; int i;
	if (TEEC_InitializeContext(argv[1], &ctx) || TEEC_OpenSession(&ctx, &s, &uuid, TEEC_LOGIN_PUBLIC,
	    NULL, NULL, &origin)) return 10;
	for (i = 0; i < 112; i++) taps[i] = (float)(i % 7) - 2.0f;
	in.buffer = taps; in.size = sizeof(taps) + 64; in.flags = TEEC_MEM_INPUT;   /* larger than the taps */
	out.size = 64; out.flags = TEEC_MEM_OUTPUT;
	if (TEEC_RegisterSharedMemory(&ctx, &in) || TEEC_AllocateSharedMemory(&ctx, &out)) return 11;
	memset(&op, 0, sizeof(op));
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_PARTIAL_INPUT, TEEC_MEMREF_WHOLE, TEEC_NONE, TEEC_NONE);
	op.params[0].memref.parent = &in; op.params[0].memref.offset = 0; op.params[0].memref.size = sizeof(taps);
	op.params[1].memref.parent = &out;
	TEEC_Result r = TEEC_InvokeCommand(&s, MIRRORNET_TA_CMD_RUN_CPM, &op, &origin);
	printf("run 0x%08x %zu", r, op.params[1].memref.size);
	for (i = 0; i < 10; i++) printf(" %.9g", ((float *)out.buffer)[i]);
	op.params[0].memref.offset = 100; /* beyond the block: refused by the library, never sent */
	r = TEEC_InvokeCommand(&s, MIRRORNET_TA_CMD_RUN_CPM, &op, &origin);
	printf("\nbad 0x%08x %u\n", r, origin);
	TEEC_ReleaseSharedMemory(&out); TEEC_ReleaseSharedMemory(&in);
	TEEC_CloseSession(&s); TEEC_FinalizeContext(&ctx);
	return 0;
}
"""


def test_registered_shared_memory(tmp_path, logits):
    build, cpm, _ = logits
    src = tmp_path / "reg.c"
    src.write_text(REGISTERED_C)
    exe = tmp_path / "reg"
    subprocess.run(["cc", "-o", exe, src, f"-I{ROOT / 'src/libteec_sim/include'}", f"-I{ROOT / 'ta/include'}",
                    f"-L{ROOT / 'build'}", "-lmirrornet_teec_sim", f"-Wl,-rpath,{ROOT / 'build'}"], check=True)
    proc = subprocess.run([exe, str(build / "sim")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run, bad = proc.stdout.splitlines()
    fields = run.split()
    assert fields[1] == "0x00000000" and fields[2] == "40"
    taps = (np.arange(112) % 7 - 2).astype(np.float32)
    np.testing.assert_allclose(np.array(fields[3:], np.float32), cpm.logits(taps[None])[0], rtol=1e-5, atol=1e-5)
    assert bad.split()[1:] == ["0xffff0006", "1"]   # BAD_PARAMETERS, origin API


def _ta_processes():
    """PIDs of this process's children that run a simulator TA (<uuid>.sim)."""
    import os
    from pathlib import Path as P

    me = os.getpid()
    found = []
    for d in P("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and cmd.endswith(".sim"):
            found.append(int(d.name))
    return found


def test_the_ta_process_follows_the_callers_cpu(logits):
    """A real TEE runs the TA on the caller's core; the simulator pins its TA process to the CPU the caller
    invoked from, so that a round trip wakes no other core."""
    import os

    _, cpm, _ = logits
    others = set(_ta_processes())          # sessions other tests keep open
    with TeeSession(logits[0]) as s:
        mine = set(_ta_processes()) - others
        assert len(mine) == 1, mine
        pid = mine.pop()
        s.run(_taps(1, cpm.tap_floats)[0])
        allowed = os.sched_getaffinity(pid)
        assert len(allowed) == 1 and allowed <= os.sched_getaffinity(0)


# ---- the transport: shared area and socket --------------------------------------------------------------

AREA_BYTES = 1 << 20   # the client library's default shared area per session


def _stats(path):
    return {k: int(v) for k, v in (kv.split("=") for kv in path.read_text().split())}


@pytest.mark.parametrize("area", [None, "0", "5000"])
def test_invokes_take_the_shared_area_and_larger_ones_the_socket(tmp_path, monkeypatch, logits, area):
    """Every request that fits in the session's shared area goes through it (the TA host counts them),
    a larger one over the socket, with the same answers; MIRRORNET_TEE_SIM_AREA_BYTES=0 turns the area off."""
    _, cpm, _ = logits
    stats = tmp_path / "stats"
    monkeypatch.setenv("MIRRORNET_TEE_SIM_STATS", str(stats))
    if area is not None:
        monkeypatch.setenv("MIRRORNET_TEE_SIM_AREA_BYTES", area)
    cap = {None: AREA_BYTES, "0": 0, "5000": 8192}[area] - 64   # whole pages, less the area's head
    taps = _taps(20, cpm.tap_floats, seed=5)
    with TeeSession(logits[0]) as s:
        small = s.run_many(taps).outputs
        info = s.invoke(INFO, [teec.MemOut(INFO_BYTES)])
        big_out = cap + 1 if cap > 0 else 2 * AREA_BYTES   # one byte more than the area holds
        large = [s.invoke(RUN, [teec.MemIn(row), teec.MemOut(big_out), teec.ValueOut()]) for row in taps[:5]]
        big_info = s.invoke(INFO, [teec.MemOut(big_out)])
        refused = s.invoke(LOAD, [teec.MemIn(np.zeros(2 * AREA_BYTES, np.uint8)), teec.ValueIn(0, TAP_BYTES)])
        after = s.run(taps[0])[0]
        abi = s.abi
    np.testing.assert_allclose(small, cpm.logits(taps), rtol=1e-5, atol=1e-5)
    for res, want in zip(large, small[:5]):   # the same answers as through the area
        assert res.ok and res.outputs[1][0] == OUT_BYTES
        assert res.outputs[1][1][:OUT_BYTES] == want.astype(np.float32).tobytes()
    assert big_info.ok and big_info.outputs[0][0] == INFO_BYTES
    first, second = (abi.parse_info(r.outputs[0][1][:INFO_BYTES]) for r in (info, big_info))
    assert (second.source_sha256, second.tap_sizes) == (first.source_sha256, first.tap_sizes)
    assert second.runs == first.runs + len(large)
    assert (refused.code, refused.origin) == (teec.BAD_PARAMETERS, 4)   # 2 MiB > the TA's 512 kB limit
    np.testing.assert_array_equal(after, small[0])
    counts = _stats(stats)
    large_requests = len(large) + 2
    if cap > 0:   # the session opens over the socket; the large requests follow it there
        assert counts["socket_requests"] == 1 + large_requests
        assert counts["area_requests"] >= 20 + 1 + 1 + 1   # 20 runs, GET_INFO, the last run, the close
    else:
        assert counts["area_requests"] == 0 and counts["socket_requests"] >= 20 + large_requests


def test_a_bad_area_size_is_a_clear_error(monkeypatch, logits):
    monkeypatch.setenv("MIRRORNET_TEE_SIM_AREA_BYTES", "lots")
    with pytest.raises(TeeError, match="MIRRORNET_TEE_SIM_AREA_BYTES=lots"):
        TeeSession(logits[0])


def test_a_ta_killed_mid_call_is_noticed_long_before_the_timeout(logits):
    """A TA process that dies without a word (SIGKILL, no fault handler) while the client waits on the
    area's futex: the client notices through the socket, within a fraction of a second."""
    import signal
    import threading

    _, cpm, _ = logits
    others = set(_ta_processes())
    with TeeSession(logits[0], timeout_s=30.0) as s:
        pid = (set(_ta_processes()) - others).pop()
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(TeeError, match="signal 9") as err:
            s.run(_trigger(cpm, TRIGGER_HANG))
        killer.join()
        assert err.value.code == teec.TARGET_DEAD
        assert time.monotonic() - t0 < 5


CLIENT_SCRIPT = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
from mirrornet_tvm.tee.session import TeeSession
import numpy as np
from test_tee_sim import _ta_processes
s = TeeSession({build!r})
s.run(np.zeros(112, np.float32))
print(_ta_processes()[0], flush=True)
time.sleep(600)
"""


def test_the_ta_process_ends_when_its_client_goes_away(tmp_path, logits):
    """A client killed with its session open: the TA process, waiting on the area's futex, sees the socket
    close and exits (no orphan left waiting)."""
    import signal
    import sys
    from pathlib import Path as P

    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT.format(tests=str(P(__file__).parent), build=str(logits[0])))
    client = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(client.stdout.readline())
        assert P(f"/proc/{pid}").exists()
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = P(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":   # exited; whoever adopted it has not reaped it yet
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the TA process outlived its client by 5 s")


SWITCH_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "tee_sim_switch.h"
static struct tee_sim_stack host, ta;
static unsigned char stack[16384] __attribute__((aligned(16)));
static volatile long rounds;
static volatile uintptr_t where;
static double acc = 1.0;
static void entry(void)
{
	volatile char here;
	for (;;) {
		where = (uintptr_t)&here;
		rounds++;
		acc = acc * 0.5 + 1.0;
		tee_sim_stack_switch(&ta, &host);
	}
}
int main(int argc, char **argv)
{
	long n = atol(argv[1]), i;
	long a = n * 3, b = n * 5, c = n * 7, d = n * 11, e = n * 13, f = n * 17;   /* live across every switch */
	double x = n * 0.5, y = n * 0.25, z = n * 0.125;
	if (tee_sim_stack_start(&ta, stack, sizeof(stack), entry))
		return 2;
	for (i = 0; i < n; i++) {
		tee_sim_stack_switch(&host, &ta);
		if (a != n * 3 || b != n * 5 || c != n * 7 || d != n * 11 || e != n * 13 || f != n * 17 ||
		    x != n * 0.5 || y != n * 0.25 || z != n * 0.125)
			return puts("clobbered"), 1;
		if (where < (uintptr_t)stack || where >= (uintptr_t)stack + sizeof(stack))
			return puts("not on the TA stack"), 1;
	}
	printf("%ld %.3f\n", rounds, acc);
	return 0;
}
"""


def _switch_builds():
    import shutil

    yield pytest.param("native", ["cc"], [], id="native")
    yield pytest.param("ucontext", ["cc", "-DTEE_SIM_UCONTEXT"], [], id="ucontext")
    if shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"):
        yield pytest.param("aarch64", ["aarch64-linux-gnu-gcc"], ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
                           id="aarch64-qemu")


@pytest.mark.parametrize("name, cc, runner", list(_switch_builds()))
def test_the_ta_stack_switch_keeps_the_callers_registers(tmp_path, name, cc, runner):
    """The TA host enters the TA's stack without swapcontext's system calls (x86-64 and AArch64 assembly,
    ucontext elsewhere): values live across a switch survive it, and the entry point runs on the TA stack."""
    src = tmp_path / "switch.c"
    src.write_text(SWITCH_C)
    exe = tmp_path / f"switch-{name}"
    subprocess.run([*cc, "-O2", "-Wall", "-Werror", f"-I{ROOT / 'src/tee_sim'}", "-o", exe, src], check=True)
    proc = subprocess.run([*runner, exe, "1000"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["1000", "2.000"]


# ---- what the TA sees of the shared area ----------------------------------------------------------------

PROBE_TA_C = r"""
/* A TA that reports what it sees of its input memref: where it is, and what it holds before and after
 * the client has had the chance to change the shared area. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <tee_internal_api.h>

TEE_Result TA_CreateEntryPoint(void) { return TEE_SUCCESS; }
void TA_DestroyEntryPoint(void) {}
TEE_Result TA_OpenSessionEntryPoint(uint32_t t, TEE_Param p[TEE_NUM_PARAMS], void **s)
{
	(void)t; (void)p; (void)s;
	return TEE_SUCCESS;
}
void TA_CloseSessionEntryPoint(void *s) { (void)s; }

static uint32_t digest(const volatile uint8_t *b, size_t n)
{
	uint32_t h = 2166136261u;
	while (n--)
		h = (h ^ *b++) * 16777619u;
	return h;
}

TEE_Result TA_InvokeCommandEntryPoint(void *s, uint32_t cmd, uint32_t t, TEE_Param p[TEE_NUM_PARAMS])
{
	const volatile uint8_t *b = p[0].memref.buffer;
	size_t n = p[0].memref.size;
	const char *changed = getenv("PROBE_TA_CHANGED");
	int i;

	(void)s; (void)t;
	if (cmd == 0) {
		p[1].value.a = digest(b, n);
		/* Tell the client it may now change the area, and wait until it did. */
		close(open(getenv("PROBE_TA_TOOK"), O_CREAT | O_WRONLY, 0644));
		for (i = 0; i < 10000 && access(changed, F_OK) != 0; i++)
			usleep(1000);
		p[1].value.b = digest(b, n);
		p[2].value.a = (uint32_t)(uintptr_t)b;
		p[2].value.b = (uint32_t)((uintptr_t)b >> 32);
		return TEE_SUCCESS;
	}
	if (cmd == 1) { /* one byte past the end */
		p[1].value.a = b[n];
		return TEE_SUCCESS;
	}
	return TEE_ERROR_NOT_SUPPORTED;
}
"""

PROBE_CLIENT_C = r"""
/* Against the TA above: what the TA sees of a memref while the normal world rewrites the shared area. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <tee_client_api.h>
#include "tee_sim_protocol.h"

static uint8_t *area_lo, *area_hi;

static void *change_area(void *arg)
{
	int i;

	(void)arg;
	for (i = 0; i < 10000 && access(getenv("PROBE_TA_TOOK"), F_OK) != 0; i++)
		usleep(1000);
	/* everything after the request header: the input memref's bytes as the client library put them */
	memset(area_lo + sizeof(struct tee_sim_area_head) + sizeof(struct tee_sim_request), 0xEE,
	       4096);
	close(open(getenv("PROBE_TA_CHANGED"), O_CREAT | O_WRONLY, 0644));
	return NULL;
}

int main(int argc, char **argv)
{
	TEEC_Context ctx; TEEC_Session s; TEEC_Operation op; uint32_t origin; TEEC_Result r;
	TEEC_UUID uuid = { 0x11111111, 0x2222, 0x3333, { 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55 } };
	static uint8_t buf[4096]; char line[512]; FILE *maps; pthread_t th; int i; uintptr_t where;

	if (TEEC_InitializeContext(argv[1], &ctx) || TEEC_OpenSession(&ctx, &s, &uuid, TEEC_LOGIN_PUBLIC, NULL, NULL, &origin))
		return 10;
	maps = fopen("/proc/self/maps", "r");
	while (fgets(line, sizeof(line), maps))
		if (strstr(line, "mirrornet-tee-sim-area")) {
			unsigned long lo, hi;
			sscanf(line, "%lx-%lx", &lo, &hi);
			area_lo = (uint8_t *)lo; area_hi = (uint8_t *)hi;
		}
	fclose(maps);
	if (!area_lo)
		return puts("no shared area"), 11;
	for (i = 0; i < 4096; i++)
		buf[i] = (uint8_t)(i * 7);
	memset(&op, 0, sizeof(op));
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_VALUE_OUTPUT, TEEC_VALUE_OUTPUT, TEEC_NONE);
	op.params[0].tmpref.buffer = buf; op.params[0].tmpref.size = 1000;
	pthread_create(&th, NULL, change_area, NULL);
	r = TEEC_InvokeCommand(&s, 0, &op, &origin);
	pthread_join(th, NULL);
	where = (uintptr_t)op.params[2].value.a | (uintptr_t)op.params[2].value.b << 32;
	printf("seen 0x%08x %08x %08x in_area %d page_end %d\n", r, op.params[1].value.a, op.params[1].value.b,
	       where >= (uintptr_t)area_lo && where < (uintptr_t)area_hi, (int)((where + 1000) % 4096 == 0));
	{ uint32_t h = 2166136261u; for (i = 0; i < 1000; i++) h = (h ^ buf[i]) * 16777619u; printf("sent %08x\n", h); }
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_VALUE_OUTPUT, TEEC_NONE, TEEC_NONE);
	r = TEEC_InvokeCommand(&s, 1, &op, &origin);
	printf("past_end 0x%08x %u\n", r, origin);
	TEEC_CloseSession(&s); TEEC_FinalizeContext(&ctx);
	return 0;
}
"""


def test_the_ta_sees_a_private_copy_of_the_shared_area(tmp_path):
    """A probe TA built with the simulator's TA host: its input memref is not in the shared area but a
    private copy ending at a guard page, the normal world rewriting the area while the TA runs changes
    nothing the TA reads, and reading one byte past the memref kills the instance."""
    sim = ROOT / "src" / "tee_sim"
    (tmp_path / "user_ta_header_defines.h").write_text("#define TA_STACK_SIZE 8192\n#define TA_DATA_SIZE 16384\n")
    (tmp_path / "probe_ta.c").write_text(PROBE_TA_C)
    (tmp_path / "client.c").write_text(PROBE_CLIENT_C)
    subprocess.run(["cc", "-O2", f"-I{sim / 'include'}", f"-I{sim}", f"-I{tmp_path}", tmp_path / "probe_ta.c",
                    sim / "ta_host.c", sim / "tee_api.c", "-o", tmp_path / "11111111-2222-3333-4444-555555555555.sim"],
                   check=True, capture_output=True)
    subprocess.run(["cc", "-O2", f"-I{ROOT / 'src/libteec_sim/include'}", f"-I{sim}", tmp_path / "client.c",
                    "-o", tmp_path / "client", f"-L{ROOT / 'build'}", "-lmirrornet_teec_sim",
                    f"-Wl,-rpath,{ROOT / 'build'}", "-lpthread"], check=True, capture_output=True)
    env = dict(os.environ, PROBE_TA_TOOK=str(tmp_path / "took"), PROBE_TA_CHANGED=str(tmp_path / "changed"))
    env.pop("MIRRORNET_TEE_SIM_AREA_BYTES", None)
    proc = subprocess.run([tmp_path / "client", tmp_path], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen, sent, past = proc.stdout.splitlines()
    _, code, before, after, _, in_area, _, page_end = seen.split()
    assert (tmp_path / "changed").exists()                    # the area was rewritten during the call
    assert code == "0x00000000" and before == after == sent.split()[1]
    assert (in_area, page_end) == ("0", "1")
    assert past.split()[1:] == [f"0x{teec.TARGET_DEAD:08x}", "3"]   # origin TEE: the instance died
    assert "crashed (SIGSEGV)" in proc.stderr
