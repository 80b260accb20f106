"""The "mirrornet" compilation pipeline: the combined model in, backbone lowered + CPM partitioned out.

    mod = mirrornet_tvm.frontend.to_relax(...)            # or from_onnx + AttachMirrorNetMetadata
    with target:
        mod = tvm.relax.get_pipeline("mirrornet", strategy=strategy)(mod)
    # mod["backbone"]: lowered for the Relax VM (build.build_backbone compiles and exports it)
    # mod["cpm"]:      high-level Relax for the C code generator (codegen.generate_cpm_c)
    # mod["main"]:     the combined model, unchanged, for reference checks

Run it under ``with target:`` (and ``with database:`` to apply tuned schedules to the backbone).
"""
from __future__ import annotations

import tvm
from tvm import relax

from .apply_database import ApplyTuningDatabase
from .dump_ir import DumpIR
from .fold_weight_layout import FoldWeightLayout
from .log_phase import LogPhase
from .lower_function import LowerFunction
from .mirrornet_partition import MirrorNetPartition

PIPELINE_NAME = "mirrornet"


def backbone_lowering_passes(database=None) -> list:
    """Phase 3's passes: Relax ops -> fused TIR PrimFuncs (TVM's "zero" pipeline), then tuned schedules."""
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        ApplyTuningDatabase(database),
    ]


def mirrornet_pipeline(strategy, *, database=None, dump_dir=None, verbose: bool = False):
    """The whole compilation as phases, in order. ``strategy``: a Strategy, dict or strategy JSON."""
    partition = MirrorNetPartition(strategy)  # validates the strategy now, not halfway through

    @tvm.transform.module_pass(opt_level=0, name="MirrorNetPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        seq = tvm.transform.Sequential(
            [
                # Phase 1. Clean up the imported graph: decompose inference-only ops (batch norm),
                # fold the weight transposes/reshapes the ONNX importer writes (in numpy: Relax's
                # FoldConstant compiles each one), canonicalize bindings. Every function keeps its
                # outputs, so main's output names stay valid.
                LogPhase("phase 1/3: clean up the imported graph", verbose),
                relax.transform.DecomposeOpsForInference(),
                FoldWeightLayout(),
                relax.transform.CanonicalizeBindings(),
                DumpIR(dump_dir, 1, "imported"),
                # Phase 2. Partition: backbone(input) -> taps [+ backbone_logits], cpm(taps) -> logits.
                # main stays as it was, for reference checks.
                LogPhase("phase 2/3: partition into backbone and cpm", verbose),
                partition,
                DumpIR(dump_dir, 2, "partitioned"),
                # Phase 3. Lower the backbone alone to fused TIR for the Relax VM, with tuned schedules
                # when a MetaSchedule database is given or current. Building and exporting the
                # library is build.build_backbone's job.
                LogPhase("phase 3/3: lower the backbone to TIR", verbose),
                LowerFunction("backbone", backbone_lowering_passes(database)),
                DumpIR(dump_dir, 3, "backbone_lowered"),
                # Phase 4 (outside this pipeline). The CPM stays in high-level Relax: the C code
                # generator (codegen.generate_cpm_c) lowers it to standalone C for the trusted app.
            ],
            name="mirrornet",
        )
        return seq(mod)

    return _pipeline


def register() -> None:
    """Register the pipeline as ``tvm.relax.get_pipeline("mirrornet", strategy=...)``.

    Replaces the stand-in that ``mirrornet_tvm.transform`` installs when TVM is imported.
    """
    from tvm.relax import pipeline as relax_pipeline

    if relax_pipeline.PIPELINE_MAP.get(PIPELINE_NAME) is not mirrornet_pipeline:
        relax_pipeline.PIPELINE_MAP.pop(PIPELINE_NAME, None)
        relax.register_pipeline(PIPELINE_NAME)(mirrornet_pipeline)


register()
