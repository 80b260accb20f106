"""
Compile a MirrorNet-protected model with TVM
============================================

A protected model (``mirrornet protect``) is one ONNX graph holding two networks: the BackboneNet, which
runs in the normal world, and the CPM (Companion Partial Monitor), which reads some of the backbone's
feature maps ("taps") and rectifies its output inside an OP-TEE trusted application.

This script compiles such a model the way TVM compiles any model: import it into Relax, run passes,
build. The one MirrorNet-specific pass, ``MirrorNetPartition``, splits the combined ``main`` into
``backbone`` (input -> taps) and ``cpm`` (taps -> logits). The backbone becomes a shared library for the
Relax VM; the CPM becomes standalone C for the trusted application.

Run it as ``python tutorials/compile_script.py [ARTIFACT_DIR] [--out DIR]``. Without an artifact it
makes a small one from the model zoo (LeNet, untrained: this is about compiling, not accuracy).
"""

# %%
# Set up
# ------
# Importing ``mirrornet_tvm`` registers ``tvm.relax.transform.MirrorNetPartition`` and the
# ``"mirrornet"`` pipeline, so the passes below read like TVM's own.
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

import mirrornet_tvm
import tvm
from tvm import relax

parser = argparse.ArgumentParser(description="Compile a MirrorNet artifact step by step.")
parser.add_argument("artifact", nargs="?", help="artifact folder from `mirrornet protect`")
parser.add_argument("--out", default=None, help="folder for the outputs (default: a temporary one)")
args = parser.parse_args()
out = Path(args.out or tempfile.mkdtemp(prefix="mirrornet-tutorial-"))
out.mkdir(parents=True, exist_ok=True)

# %%
# Get a protected model
# ---------------------
# An artifact folder holds ``combined.onnx`` (outputs ``logits``, ``backbone_logits`` and one
# ``tap:<name>`` per tapped map) and ``strategy.json`` (which taps, how wide the CPM is). If none was
# given, make one as ``mirrornet protect`` would, minus the training.
from mirrornet_tvm.strategy import Strategy

if args.artifact:
    artifact = Path(args.artifact)
else:
    import torch

    from mirrornet_tvm import zoo
    from mirrornet_tvm.frontend import load_model
    from mirrornet_tvm.mirror import MirrorNet

    torch.manual_seed(0)
    graph = load_model(zoo.build("lenet"), input_shape=(1, 28, 28)).graph()
    artifact = out / "artifact"
    artifact.mkdir(exist_ok=True)
    made = Strategy(taps=("b1_maxpool", "b3_maxpool"), width_ratio=1 / 4, merge="add", output="correction")
    MirrorNet(graph, made).export_onnx(artifact / "combined.onnx", source="zoo lenet (tutorial)")
    made.save(artifact / "strategy.json")

strategy = Strategy.load(artifact / "strategy.json")
proto = onnx.load(str(artifact / "combined.onnx"))
print("strategy:", strategy.name)
print("outputs: ", [o.name for o in proto.graph.output])

# %%
# Import into Relax
# -----------------
# ``to_relax`` is ``tvm.relax.frontend.onnx.from_onnx`` plus checks, and it records the output names
# on ``main`` (attribute ``mirrornet.output_names``): the partition finds the taps by name.
from mirrornet_tvm.frontend import to_relax

mod = to_relax(proto)
mod["main"].show()

# %%
# Partition
# ---------
# ``MirrorNetPartition`` is a module pass: it composes with TVM's passes in a ``Sequential`` and shows
# up in pass instruments like any other. ``main`` is kept, unchanged, for reference checks.
seq = tvm.transform.Sequential(
    [
        relax.transform.DecomposeOpsForInference(),
        mirrornet_tvm.transform.FoldWeightLayout(),  # fold the importer's weight transposes
        relax.transform.MirrorNetPartition(strategy),
        relax.transform.DeadCodeElimination(["main", "backbone", "cpm"]),
    ]
)
timing = tvm.ir.instrument.PassTimingInstrument()
with tvm.transform.PassContext(opt_level=3, instruments=[timing]):
    mod = seq(mod)
    print(timing.render())
mod["backbone"].show()
mod["cpm"].show()

# %%
# Check the split
# ---------------
# Running ``backbone`` and then ``cpm`` must give what ``main`` gives. Compile the whole module for
# this machine and compare on a random image.
host = {"kind": "llvm", "mcpu": tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()}
vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target(host)), tvm.cpu())
image = tvm.runtime.tensor(np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32))
reference = vm["main"](image)[0].numpy()
taps = vm["backbone"](image)
rectified = vm["cpm"](*taps).numpy()
print("max |backbone -> cpm  -  main| =", float(np.abs(rectified - reference).max()))
assert np.allclose(rectified, reference, atol=1e-5)

# %%
# Build the backbone
# ------------------
# ``build_backbone`` extracts ``backbone``, lowers it and exports a shared library the Relax VM loads.
# For a Raspberry Pi 3 the same call cross-compiles (LLVM for Cortex-A53, linked by
# ``aarch64-linux-gnu-gcc``). Pass ``database=`` and ``tune_trials=`` to tune with MetaSchedule;
# without them the build says "untuned".
from mirrornet_tvm.build import build_backbone

built = build_backbone(mod, target="host", out=out / "host" / "backbone.so")
print(built.path, built.lib_bytes, "bytes,", built.tuning)
lib_vm = relax.VirtualMachine(tvm.runtime.load_module(built.path), tvm.cpu())
# (the library's kernels carry the default CPU schedule, which sums in another order: float rounding)
assert all(np.allclose(a.numpy(), b.numpy(), atol=1e-5) for a, b in zip(lib_vm["backbone"](image), taps))
if shutil.which("aarch64-linux-gnu-gcc"):
    pi = build_backbone(mod, target="rpi3", out=out / "rpi3" / "backbone.so")
    print(pi.path, pi.lib_bytes, "bytes, for", pi.target)

# %%
# Generate the CPM's C
# --------------------
# The CPM stays in high-level Relax until here; the code generator lowers it to plain C with one
# static arena and no libm, for the trusted application.
from mirrornet_tvm.codegen import generate_cpm_c

cpm = generate_cpm_c(mod, "cpm", out_dir=out / "cpm", source_desc="the compile tutorial")
print(f"{cpm.source}: {cpm.code_bytes} B of C, {cpm.weight_bytes} B of weights, {cpm.arena_bytes} B arena")
print((out / "cpm" / "mirrornet_cpm.h").read_text().split("#define", 1)[1][:200])

# %%
# All of it in one pipeline
# -------------------------
# The steps above are the registered ``"mirrornet"`` pipeline (which also lowers the backbone) and
# the ``mirrornet compile`` command, which writes a build folder with a manifest:
#
#   mirrornet compile ARTIFACT -o BUILD [--target rpi3] [--tune-trials 64 --database DB]
with tvm.target.Target(host):
    lowered = relax.get_pipeline("mirrornet", strategy=strategy)(to_relax(proto))
print("functions after the pipeline:", sorted(gv.name_hint for gv in lowered.get_global_vars())[:8], "...")
print("outputs in", out, file=sys.stderr)
