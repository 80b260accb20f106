"""MirrorNetPartition: backbone/cpm slices of hand-made combined models, errors, registration, pipeline."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from mirrornet_tvm.errors import ModelError, StrategyError
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.transform import (AttachMirrorNetMetadata, FoldWeightLayout, MirrorNetPartition,
                                     partition_spec)
from test_partition_models import (TAPS, Combined, export_combined, relax_module, sample_input,
                                   strategy_dict)

VARIANTS = [("add", "logits"), ("add", "correction"), ("concat", "logits"), ("concat", "correction")]


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """(merge, output) -> (strategy dict, imported Relax module) for each variant."""
    folder = tmp_path_factory.mktemp("combined")
    out = {}
    for merge, output in VARIANTS:
        s = strategy_dict(merge, output)
        proto = export_combined(Combined(merge, output), folder / f"{merge}_{output}.onnx", s)
        out[merge, output] = (s, relax_module(proto))
    out["onnx"] = folder
    return out


def _onnxruntime(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path)).run(None, {"input": x})


def _ops(func) -> list[str]:
    ops = []
    relax.analysis.post_order_visit(
        func.body, lambda e: ops.append(e.op.name) if isinstance(e, relax.Call)
        and isinstance(e.op, tvm.ir.Op) else None)
    return ops


def _run(mod):
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    x = tvm.runtime.tensor(sample_input(seed=3))
    main = [t.numpy() for t in vm["main"](x)]
    taps = vm["backbone"](x)
    return main, [t.numpy() for t in taps], vm["cpm"](*taps).numpy()


@pytest.mark.parametrize("merge,output", VARIANTS)
def test_backbone_then_cpm_equals_main_on_the_vm(combined, merge, output):
    strategy, mod = combined[merge, output]
    part = MirrorNetPartition(strategy)(mod)
    assert relax.analysis.check_well_formed(part)
    assert tvm_ffi.structural_equal(part["main"], mod["main"])  # main kept for reference checks

    backbone, cpm = part["backbone"], part["cpm"]
    assert [p.name for p in backbone.params] == ["input"]
    expected_params = list(TAPS) + (["backbone_logits"] if output == "correction" else [])
    assert [p.name for p in cpm.params] == expected_params
    assert len(backbone.ret_ty.fields) == len(expected_params)
    # Nothing the CPM owns is in the backbone: the backbone has its own two convolutions, and its
    # classifier (a matmul) only when the CPM needs backbone_logits; the CPM has its two.
    assert _ops(backbone).count("relax.nn.conv2d") == 2
    assert _ops(backbone).count("relax.matmul") == (1 if output == "correction" else 0)
    assert _ops(cpm).count("relax.nn.conv2d") == 2
    assert _ops(cpm).count("relax.concat") == (1 if merge == "concat" else 0)

    main, taps, logits = _run(part)
    # backbone outputs are main's tap outputs (and backbone_logits), cpm(taps) is main's logits
    want_taps = main[2:] + ([main[1]] if output == "correction" else [])
    for got, want in zip(taps, want_taps):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits, main[0], rtol=0, atol=1e-5)
    assert np.abs(main[0]).max() > 1e-3  # the comparison is not between zeros


def test_composes_in_sequential_and_shows_in_instruments(combined):
    strategy, mod = combined["add", "correction"]
    seen = []

    @tvm.instrument.pass_instrument
    class Recorder:
        def run_before_pass(self, _mod, info):
            seen.append(info.name)

    seq = tvm.transform.Sequential([
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
        tvm.relax.transform.MirrorNetPartition(strategy),
        relax.transform.DeadCodeElimination(["main", "backbone", "cpm"]),
    ])
    with tvm.transform.PassContext(opt_level=3, instruments=[Recorder()]):
        part = seq(mod)
    assert "MirrorNetPartition" in seen
    assert seen.index("FoldConstant") < seen.index("MirrorNetPartition")
    assert {"main", "backbone", "cpm"} <= {gv.name_hint for gv in part.get_global_vars()}
    main, taps, logits = _run(part)
    np.testing.assert_allclose(logits, main[0], rtol=0, atol=1e-5)


def test_bad_tap_lists_the_available_taps_and_leaves_the_module_unchanged(combined):
    strategy, mod = combined["add", "logits"]
    before = mod.script()
    bad = dict(strategy, taps=["b1_relu", "b9_nope"])
    with pytest.raises(StrategyError) as err:
        tvm.transform.Sequential([relax.transform.FoldConstant(), MirrorNetPartition(bad)])(mod)
    message = str(err.value)
    assert "b9_nope" in message and "b1_relu" in message and "b4_maxpool" in message
    assert "available taps" in message
    assert mod.script() == before
    assert [gv.name_hint for gv in mod.get_global_vars()] == ["main"]


def test_cpm_that_reads_a_non_tap_value_is_refused(tmp_path):
    s = strategy_dict("add", "logits")
    mod = relax_module(export_combined(Combined("add", "logits", leak=True), tmp_path / "leak.onnx", s))
    before = mod.script()
    with pytest.raises(StrategyError) as err:
        MirrorNetPartition(s)(mod)
    message = str(err.value)
    assert "reaches the model input 'input'" in message and "not a tap" in message
    assert "conv2d" in message  # the error shows the path of ops that leads there
    assert mod.script() == before


def test_strategy_that_disagrees_with_the_model_metadata(combined):
    strategy, mod = combined["add", "logits"]
    names = [str(n) for n in mod["main"].attrs["mirrornet.output_names"]]
    recorded = AttachMirrorNetMetadata(names, strategy)(mod)
    MirrorNetPartition(strategy)(recorded)  # the same strategy is fine
    with pytest.raises(StrategyError, match="output is 'correction' in the strategy but 'logits'"):
        MirrorNetPartition(dict(strategy, output="correction"))(recorded)
    with pytest.raises(StrategyError, match="taps"):
        MirrorNetPartition(dict(strategy, taps=["b4_maxpool", "b1_relu"]))(recorded)


def test_module_without_output_names_or_main(combined):
    strategy, mod = combined["add", "logits"]
    bare = mod.clone()
    bare["main"] = mod["main"].without_attr("mirrornet.output_names")
    with pytest.raises(StrategyError, match="AttachMirrorNetMetadata"):
        MirrorNetPartition(strategy)(bare)
    # names attached by hand make it work (a user who imported with from_onnx directly)
    names = ["logits", "backbone_logits", "tap:b1_relu", "tap:b4_maxpool"]
    part = tvm.transform.Sequential([AttachMirrorNetMetadata(names), MirrorNetPartition(strategy)])(bare)
    assert "cpm" in part
    short = AttachMirrorNetMetadata(names[:3])(bare)
    with pytest.raises(StrategyError, match="returns 4 value"):
        MirrorNetPartition(strategy)(short)
    renamed = tvm.IRModule({"other": mod["main"]})
    with pytest.raises(ModelError, match="no 'main'"):
        MirrorNetPartition(strategy)(renamed)


@pytest.mark.parametrize("bad, match", [
    ({"taps": []}, "non-empty list"),
    ({"taps": "b1_relu"}, "non-empty list"),
    ({"taps": ["b1_relu", "b1_relu"]}, "twice"),
    ({"taps": ["b1_relu"], "output": "probabilities"}, "'logits' or 'correction'"),
    ("{not json", "not valid JSON"),
])
def test_malformed_strategies_are_refused_when_the_pass_is_made(bad, match):
    with pytest.raises(StrategyError, match=match):
        MirrorNetPartition(bad)


def test_accepts_a_strategy_object_and_its_json():
    s = Strategy(taps=TAPS, width_ratio=0.25, merge="concat", output="correction")
    for form in (s, s.to_json(), s.to_dict()):
        spec = partition_spec(form)
        assert spec.taps == TAPS and spec.output == "correction"
        assert spec.cpm_params == TAPS + ("backbone_logits",)


def test_registered_under_tvm_relax_transform_on_import():
    code = ("import tvm, tvm.relax\n"
            "p = tvm.relax.transform.MirrorNetPartition({'taps': ['b1_relu']})\n"
            "assert isinstance(p, tvm.transform.Pass) and p.info.name == 'MirrorNetPartition'\n"
            "assert callable(tvm.relax.pipeline.PIPELINE_MAP['mirrornet'])\n"
            "from mirrornet_tvm.transform.mirrornet_partition import MirrorNetPartition\n"
            "assert tvm.relax.transform.MirrorNetPartition is MirrorNetPartition\n"
            "from mirrornet_tvm.transform.pipeline import mirrornet_pipeline\n"
            "assert tvm.relax.pipeline.PIPELINE_MAP['mirrornet'] is mirrornet_pipeline\n"
            "print('ok')\n")
    # mirrornet_tvm imported before TVM, after it, and a pass module importing TVM itself first
    for prelude in ("import mirrornet_tvm\n", "import tvm\nimport mirrornet_tvm\n",
                    "import mirrornet_tvm.build\n"):
        cmd = [sys.executable, "-W", "error::UserWarning", "-c", prelude + code]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"
    # and importing mirrornet_tvm alone does not import TVM (the CLI stays fast)
    done = subprocess.run([sys.executable, "-c", "import sys, mirrornet_tvm\nprint('tvm' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_registered_pipeline_partitions_and_lowers_only_the_backbone(combined, tmp_path):
    strategy, mod = combined["concat", "correction"]
    with tvm.target.Target({"kind": "llvm"}):
        out = relax.get_pipeline("mirrornet", strategy=strategy, dump_dir=tmp_path / "ir")(mod)
    backbone_ops = set(_ops(out["backbone"]))
    assert backbone_ops == {"relax.call_tir"}  # lowered to fused TIR kernels
    assert "relax.nn.conv2d" in _ops(out["cpm"])  # left high-level for the C code generator
    assert "relax.nn.conv2d" in _ops(out["main"])
    prims = [gv.name_hint for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and any("conv2d" in p for p in prims)
    dumps = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumps == ["01_imported.py", "02_partitioned.py", "03_backbone_lowered.py"]
    assert (tmp_path / "ir" / "02_partitioned.py").read_text().startswith("# Generated by mirrornet_tvm")
    main, taps, logits = _run(out)
    np.testing.assert_allclose(logits, main[0], rtol=0, atol=1e-5)
    want = _onnxruntime(combined["onnx"] / "concat_correction.onnx", sample_input(seed=3))
    np.testing.assert_allclose(logits, want[0], rtol=1e-5, atol=1e-5)


def test_fold_weight_layout_folds_importer_transposes_without_changing_results(combined):
    _, mod = combined["concat", "logits"]
    before = _ops(mod["main"])
    assert "relax.permute_dims" in before and "relax.reshape" in before
    folded = FoldWeightLayout()(mod)
    after = _ops(folded["main"])
    assert "relax.permute_dims" not in after
    assert after.count("relax.reshape") == 2  # the two flattens of activations stay
    vm = relax.VirtualMachine(tvm.compile(folded, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    x = sample_input(seed=5)
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]
    for g, w in zip(got, _onnxruntime(combined["onnx"] / "concat_logits.onnx", x)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
