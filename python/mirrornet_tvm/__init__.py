"""mirrornet-tvm: protect a DNN on an ARM TrustZone device with MirrorNet, compiled by Apache TVM.

The package reads like the mission:

    data / frontend / zoo      load a dataset and a model (ONNX or PyTorch)
    analysis / strategy        candidate taps and CPM strategies
    emulator                   predict each strategy's latency and secure memory
    mirror / training          build the CPM branch and train backbone + CPM jointly
    transform                  MirrorNetPartition and the compilation pipeline (Relax passes)
    build / codegen            backbone on the Relax VM, CPM as standalone C
    tee                        package the OP-TEE TA, run it (simulator, QEMU, board)
    attack                     security evaluation (illegal use, model stealing)
"""
__version__ = "0.1.0"

from .errors import MirrorNetError  # noqa: F401
from . import transform  # noqa: F401,E402  (cheap: registers tvm.relax.transform.MirrorNetPartition once TVM loads)
