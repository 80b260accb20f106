"""What the evaluation attacks: the stolen backbone, its taps, and the unprotected original for reference.

A :class:`Victim` is built from an artifact folder (``mirrornet protect``'s output, see
docs/architecture.md) or from models in memory (the protect step can check a MirrorNet before it writes
anything). The thief holds ``backbone.onnx`` (the normal world's part, its weights included) and sees the
tapped feature maps; ``original.onnx`` is used only for the white-box reference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ArtifactError, MirrorNetError
from ..graph import GraphNet
from ..mirror import strip_softmax, tap_index
from ..strategy import Strategy
from ..util import read_json, sha256_file

REQUIRED_FILES = ("original.onnx", "backbone.onnx", "strategy.json")


@dataclass(frozen=True)
class Victim:
    """The backbone as stolen, the tapped tensors by tap name, and the original model.

    ``taps`` maps tap name -> backbone tensor name, in strategy order. ``metrics`` is the artifact's
    metrics.json (empty for models in memory); ``hashes`` identifies the files (for caches and reports).
    """

    backbone: GraphNet
    original: GraphNet
    taps: dict
    strategy: Strategy | None = None
    source: str = "models in memory"
    metrics: dict = field(default_factory=dict, hash=False, compare=False)
    hashes: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_artifact(cls, artifact_dir) -> "Victim":
        """Load ``ARTIFACT/backbone.onnx``, ``original.onnx`` and ``strategy.json`` (metrics.json if there)."""
        folder = Path(artifact_dir)
        if not folder.is_dir():
            raise ArtifactError(f"{folder} is not an artifact folder; make one with `mirrornet protect MODEL "
                                f"--dataset NAME --auto -o {folder}`")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            present = sorted(p.name for p in folder.iterdir())
            raise ArtifactError(f"{folder} lacks {', '.join(missing)} (it holds: {', '.join(present) or 'nothing'}); "
                                "it is not a finished `mirrornet protect` artifact: rerun protect (with --resume)")
        strategy = Strategy.load(folder / "strategy.json")
        backbone = _load_graph(folder / "backbone.onnx")
        original = _load_graph(folder / "original.onnx")
        metrics = {}
        if (folder / "metrics.json").is_file():
            try:
                metrics = read_json(folder / "metrics.json")
            except ValueError as err:
                raise ArtifactError(f"{folder / 'metrics.json'} is not valid JSON ({err}); rerun `mirrornet "
                                    "protect`") from None
        hashes = {name: sha256_file(folder / name) for name in ("original.onnx", "backbone.onnx")}
        return cls.from_models(backbone, original, strategy, source=str(folder), metrics=metrics, hashes=hashes)

    @classmethod
    def from_models(cls, backbone, original, strategy: Strategy, *, source: str = "models in memory",
                    metrics: dict | None = None, hashes: dict | None = None) -> "Victim":
        """A victim from GraphNets (or a MirrorNet for ``backbone``: its backbone is taken, copied)."""
        backbone = getattr(backbone, "backbone", backbone)
        for what, g in (("backbone", backbone), ("original", original)):
            if not isinstance(g, GraphNet):
                raise MirrorNetError(f"the {what} must be a GraphNet (mirrornet_tvm.graph), got {type(g).__name__}")
        backbone = strip_softmax(copy.deepcopy(backbone)).eval()
        original = strip_softmax(copy.deepcopy(original)).eval()
        if backbone.input_shape != original.input_shape or backbone.num_classes != original.num_classes:
            raise ArtifactError(f"the backbone ({backbone.input_shape} -> {backbone.num_classes} classes) and the "
                                f"original ({original.input_shape} -> {original.num_classes}) do not belong together")
        index = tap_index(backbone)
        unknown = [t for t in strategy.taps if t not in index]
        if unknown:
            raise ArtifactError(f"the strategy's tap(s) {', '.join(unknown)} are not taps of the backbone "
                                f"(its taps: {', '.join(index) or 'none'}); the artifact is inconsistent: rerun protect")
        taps = {name: index[name][0] for name in strategy.taps}
        return cls(backbone, original, taps, strategy, source, dict(metrics or {}), dict(hashes or {}))

    @property
    def input_shape(self) -> tuple:
        return tuple(self.backbone.input_shape[1:])

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes


def _load_graph(path: Path) -> GraphNet:
    from ..frontend import check_onnx

    try:
        proto = check_onnx(path)
    except MirrorNetError as err:
        raise ArtifactError(f"{err} (in the artifact; rerun `mirrornet protect`)") from None
    return GraphNet.from_onnx(proto)


def random_like(graph: GraphNet, seed: int) -> GraphNet:
    """The same architecture with every weight freshly initialised (seeded): nothing stolen.

    Each weighted layer is reset with PyTorch's default initialiser; batch-norm statistics are reset; a
    constant bias operand is zeroed.
    """
    fresh = copy.deepcopy(graph)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for key, module in fresh.layers.items():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                elif hasattr(module, "value"):
                    module.value.zero_()
                else:
                    raise MirrorNetError(f"layer {key} ({type(module).__name__}) cannot be re-initialised")
                for p in module.parameters():
                    p.requires_grad_(True)
    finally:
        torch.set_rng_state(state)
    return fresh.eval()
