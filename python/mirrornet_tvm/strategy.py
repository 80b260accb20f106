"""CPM strategies: what the Companion Partial Monitor reads, how wide it is, and what it costs in the TEE.

A :class:`Strategy` is plain data (JSON round-trip, see docs/architecture.md "The strategy JSON").
:func:`generate_strategies` enumerates a strategy space for a model and prunes what does not fit the
secure-memory budget; :func:`secure_memory` and :func:`cpm_cost` say what one strategy costs.

Default budget: a Raspberry Pi 3 running OP-TEE's ``plat-rpi3`` has about 8 MiB of secure DRAM for all
trusted applications together (code, data, heap, stacks, page tables); the CPM's TA may take half of it
(:mod:`mirrornet_tvm.tee.budget`, which checks the built TA against it). Of those 4 MiB the CPM's
weights, its activation arena and the tapped maps it copies in get :data:`DEFAULT_BUDGET_BYTES` = 3 MiB;
the rest is left for the TA's code, heap and stack and OP-TEE's loader. An ImageNet network needs that
room: a 1000-class classifier on a quarter of MobileNetV2's 1280 features alone is 1.25 MiB. The zoo's
CPMs take 60 to 130 KiB.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import StrategyError
from .util import atomic_write

WIDTH_RATIOS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
MERGES = ("add", "concat")
OUTPUTS = ("logits", "correction")
DEGRADATIONS = ("uniform", "adversarial", "fewshot")   # fewshot: mirrornet_tvm.degradation
ENUMERATED_DEGRADATIONS = ("uniform", "adversarial")   # what generate_strategies enumerates by default

DEFAULT_BUDGET_BYTES = 3 << 20
FLOAT_BYTES = 4

_FIELDS = ("taps", "width_ratio", "merge", "output", "degradation", "name")


def degradations_with(degradation: str | None) -> tuple:
    """The objectives ``generate_strategies`` enumerates by default, plus ``degradation`` if it is not one of
    them (so that `--auto --degradation fewshot` has candidates)."""
    return tuple(dict.fromkeys((*ENUMERATED_DEGRADATIONS, *((degradation,) if degradation else ()))))


def _ratio_label(ratio: float) -> str:
    return f"1/{round(1 / ratio)}"


@dataclass(frozen=True)
class Strategy:
    """One CPM configuration. ``taps`` are analysis tap names, ordered shallow to deep."""

    taps: tuple[str, ...]
    width_ratio: float
    merge: str = "add"
    output: str = "logits"
    degradation: str = "uniform"
    name: str = ""

    def __post_init__(self):
        taps = self.taps
        if isinstance(taps, str) or not isinstance(taps, (list, tuple)):
            raise StrategyError(f"strategy taps must be a list of tap names, got {taps!r}")
        if not taps:
            raise StrategyError("a strategy needs at least one tap (see `mirrornet inspect` for the names)")
        if not all(isinstance(t, str) and t for t in taps):
            raise StrategyError(f"strategy taps must be non-empty strings, got {list(taps)!r}")
        if len(set(taps)) != len(taps):
            raise StrategyError(f"strategy taps repeat a name: {list(taps)!r}")
        object.__setattr__(self, "taps", tuple(taps))
        try:
            ratio = float(self.width_ratio)
        except (TypeError, ValueError):
            raise StrategyError(f"width_ratio must be a number, got {self.width_ratio!r}") from None
        match = [r for r in WIDTH_RATIOS if math.isclose(ratio, r, rel_tol=1e-6)]
        if not match:
            allowed = ", ".join(f"{r} ({_ratio_label(r)})" for r in WIDTH_RATIOS)
            raise StrategyError(f"width_ratio {self.width_ratio!r} is not one of {allowed}")
        object.__setattr__(self, "width_ratio", match[0])
        for field, allowed in (("merge", MERGES), ("output", OUTPUTS), ("degradation", DEGRADATIONS)):
            if getattr(self, field) not in allowed:
                raise StrategyError(f"strategy {field} must be one of {', '.join(allowed)}, "
                                    f"got {getattr(self, field)!r}")
        if not isinstance(self.name, str):
            raise StrategyError(f"strategy name must be a string, got {self.name!r}")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        """A readable name that identifies the configuration, e.g. ``b2_relu+b5_maxpool-w8-add-logits-uniform``."""
        return (f"{'+'.join(self.taps)}-w{round(1 / self.width_ratio)}-{self.merge}-{self.output}"
                f"-{self.degradation}")

    def replace(self, **changes) -> "Strategy":
        """A copy with some fields changed (the name is regenerated unless given)."""
        changes.setdefault("name", "")
        return dataclasses.replace(self, **changes)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"taps": list(self.taps), "width_ratio": self.width_ratio, "merge": self.merge,
                "output": self.output, "degradation": self.degradation, "name": self.name}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data) -> "Strategy":
        if not isinstance(data, dict):
            raise StrategyError(f"a strategy must be a JSON object with keys {', '.join(_FIELDS)}; "
                                f"got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise StrategyError(f"unknown strategy key(s) {', '.join(unknown)}; "
                                f"allowed: {', '.join(_FIELDS)}")
        missing = [k for k in ("taps", "width_ratio") if k not in data]
        if missing:
            raise StrategyError(f"strategy is missing {', '.join(missing)}")
        return cls(**{k: data[k] for k in _FIELDS if k in data})

    @classmethod
    def from_json(cls, text: str) -> "Strategy":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StrategyError(f"strategy is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Strategy":
        path = Path(path)
        if not path.is_file():
            raise StrategyError(f"strategy file {path} does not exist; write one or use `--auto`")
        try:
            return cls.from_json(path.read_text())
        except StrategyError as err:
            raise StrategyError(f"{path}: {err}") from None

    def save(self, path) -> Path:
        return atomic_write(path, self.to_json())


@dataclass(frozen=True)
class SecureMemory:
    """Bytes the CPM needs inside the trusted application, by component, as the TA holds them.

    ``weights``: the ``static const`` arrays of the generated C (every CPM parameter as deployed,
    batch norm folded into the convolution before it). ``activations``: the generated C's static
    arena (every intermediate and kernel workspace, 64-byte aligned, placed by the emitter's
    planner), i.e. ``MIRRORNET_CPM_ARENA_BYTES``. ``taps``: the TA's copy of the tapped maps (and,
    for ``output == "correction"``, of the backbone logits), ``MIRRORNET_CPM_TAP_FLOATS`` floats.
    ``logits``: the TA's output buffer, ``MIRRORNET_CPM_NUM_CLASSES`` floats.
    See :func:`cpm_secure_memory` for how it is predicted from a CPM plan.
    """

    weights: int
    activations: int
    taps: int
    logits: int

    @property
    def arena(self) -> int:
        """The CPM's static arena (the same bytes as ``activations``)."""
        return self.activations

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.taps + self.logits

    def to_dict(self) -> dict:
        return {"weights": self.weights, "activations": self.activations, "taps": self.taps,
                "logits": self.logits, "total": self.total}


def cpm_secure_memory(plan) -> SecureMemory:
    """Secure memory of the CPM of ``plan`` (a :class:`mirrornet_tvm.mirror.CpmPlan`) once compiled.

    Weights and arena are those the C generator will emit under the default CPM schedules,
    predicted without running TVM by :func:`mirrornet_tvm.codegen.arena_estimate.estimate_arena`
    (same kernels, same liveness and alignment rules, same placement code); ``mirrornet compile``
    reports the generated sizes next to this estimate.
    """
    from .codegen.arena_estimate import estimate_arena

    arena = estimate_arena(plan)
    taps = sum(math.prod(shape) for _, shape in plan.inputs) * FLOAT_BYTES
    return SecureMemory(weights=arena.weight_bytes, activations=arena.arena_bytes, taps=taps,
                        logits=plan.num_classes * FLOAT_BYTES)


@dataclass(frozen=True)
class CpmCost:
    """What one strategy costs: secure memory and the CPM's share of the original model's work."""

    strategy: Strategy
    memory: SecureMemory
    cpm_flops: int
    cpm_params: int
    model_flops: int
    model_params: int
    tap_resolution: float = 1.0   # spatial positions of the shallowest tap / the input's (0 for a flat tap)

    @property
    def flop_share(self) -> float:
        return self.cpm_flops / self.model_flops if self.model_flops else 0.0

    @property
    def param_share(self) -> float:
        return self.cpm_params / self.model_params if self.model_params else 0.0

    def to_dict(self) -> dict:
        return {"strategy": self.strategy.to_dict(), "secure_memory": self.memory.to_dict(),
                "cpm_flops": self.cpm_flops, "cpm_params": self.cpm_params,
                "model_flops": self.model_flops, "model_params": self.model_params,
                "flop_share": self.flop_share, "param_share": self.param_share,
                "tap_resolution": self.tap_resolution}


def _tap_resolution(graph, plan) -> float:
    """Spatial positions of the plan's shallowest tap over the model input's (1.0: full resolution)."""
    tap = plan.inputs[0][1]
    full = math.prod(graph.input_shape[2:])
    return math.prod(tap[2:]) / full if len(tap) > 2 and full else 0.0


def _graph_of(model):
    """Accept a front-end ``Model`` (with ``.graph()``) or a ``GraphNet``; a final Softmax is dropped."""
    graph = model.graph() if callable(getattr(model, "graph", None)) else model
    if not hasattr(graph, "nodes") or not hasattr(graph, "tensor_shapes"):
        raise StrategyError(f"expected a loaded model or a GraphNet, got {type(model).__name__}; "
                            "load it with mirrornet_tvm.frontend.load_model")
    from .mirror import strip_softmax

    return strip_softmax(graph)


def secure_memory(strategy: Strategy, model) -> SecureMemory:
    """Secure-memory bytes of ``strategy``'s CPM for ``model`` (see :class:`SecureMemory`)."""
    from .mirror import plan_cpm

    return plan_cpm(_graph_of(model), strategy).secure_memory()


def cpm_cost(strategy: Strategy, model) -> CpmCost:
    """Secure memory, FLOPs and parameters of ``strategy``'s CPM, with the original model's totals."""
    from .mirror import plan_cpm, model_totals

    graph = _graph_of(model)
    plan = plan_cpm(graph, strategy)
    flops, params = model_totals(graph)
    return CpmCost(strategy, plan.secure_memory(), plan.flops, plan.params, flops, params,
                   _tap_resolution(graph, plan))


_STAGE_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Add")


def _tap_sets(taps, max_taps: int) -> list[tuple[str, ...]]:
    """Single taps shallow to deep (each: the CPM completes the network from there), then combinations.

    Combinations (an early tap re-fed deeper down) are drawn from the stage outputs (pooling and
    residual-add taps) to keep the space at tens to a few hundred; from all taps when a model has fewer
    than two stage outputs.
    """
    names = [t.name for t in taps]
    sets: list[tuple[str, ...]] = [(n,) for n in names]
    pool = [t.name for t in taps if t.op in _STAGE_OPS]
    if len(pool) < 2:
        pool = names
    for k in range(2, max_taps + 1):
        sets.extend(itertools.combinations(pool, k))
    return sets


def generate_strategies(model, budget_bytes: int | None = DEFAULT_BUDGET_BYTES, *,
                        widths=WIDTH_RATIOS, merges=MERGES, outputs=OUTPUTS,
                        degradations=ENUMERATED_DEGRADATIONS, max_taps: int = 2,
                        max_flop_share: float | None = None, pruned: list | None = None) -> list[CpmCost]:
    """Enumerate CPM strategies for ``model`` and keep those within ``budget_bytes`` of secure memory.

    The space: tap sets (each single tap shallow to deep, then pairs), every width ratio, both merges
    (for multi-tap sets only: with one tap the merge is just the projection), both outputs and both
    degradation objectives. ``budget_bytes=None`` keeps everything; ``max_flop_share`` also prunes by the
    CPM's share of the model's FLOPs. Returns one :class:`CpmCost` per kept strategy, in enumeration order;
    a list given as ``pruned`` receives ``(structure name, reason)`` for every structure left out (all its
    degradation objectives with it).
    """
    from .analysis import candidate_taps
    from .mirror import model_totals, plan_cpm

    graph = _graph_of(model)
    taps = candidate_taps(graph)
    if not taps:
        raise StrategyError("the model has no candidate taps (no activation/pool/add cut point); "
                            "see `mirrornet inspect`")
    if max_taps < 1:
        raise StrategyError(f"max_taps must be at least 1, got {max_taps}")
    index = {t.name: (t.tensor, i) for i, t in enumerate(taps)}
    flops, params = model_totals(graph)
    kept: list[CpmCost] = []
    plans = {}
    for tap_set in _tap_sets(taps, max_taps):
        for width in widths:
            for merge in (merges if len(tap_set) > 1 else ("add",)):
                for output in outputs:
                    key = (tap_set, width, merge, output)
                    if key not in plans:
                        plans[key] = plan_cpm(graph, Strategy(tap_set, width, merge, output), taps=index)
                    plan = plans[key]
                    mem = plan.secure_memory()
                    why = None
                    if budget_bytes is not None and mem.total > budget_bytes:
                        why = (f"secure memory {mem.total / 1024:.0f} KiB over the {budget_bytes / 1024:.0f} KiB "
                               f"budget (weights {mem.weights / 1024:.0f}, activations {mem.activations / 1024:.0f}, "
                               f"taps {mem.taps / 1024:.0f} KiB)")
                    elif max_flop_share is not None and flops and plan.flops / flops > max_flop_share:
                        why = f"{plan.flops / flops:.1%} of the model's FLOPs, over {max_flop_share:.0%}"
                    if why:
                        if pruned is not None:
                            pruned.append((Strategy(tap_set, width, merge, output).name.rsplit("-", 1)[0], why))
                        continue
                    for degradation in degradations:
                        s = Strategy(tap_set, width, merge, output, degradation)
                        kept.append(CpmCost(s, mem, plan.flops, plan.params, flops, params,
                                            _tap_resolution(graph, plan)))
    return kept


def auto_pool(costs: list[CpmCost], *, max_flop_share: float = 0.05, min_width: float = 0.25,
              degradation: str = "uniform") -> list[CpmCost]:
    """The strategies :func:`auto_select` chooses among (its floors; the emulator picks from these too).

    When no CPM ``min_width`` wide qualifies (an ImageNet network's classifier head can take the whole
    secure-memory budget at 1/4), the floor halves, down to 1/16.
    """
    widths = [min_width] + [w for w in (min_width / 2, min_width / 4) if w >= 1 / 16 - 1e-9]
    for floor in widths:
        pool = [c for c in costs if len(c.strategy.taps) == 1 and c.strategy.output == "logits"
                and c.strategy.degradation == degradation and c.flop_share <= max_flop_share
                and c.strategy.width_ratio >= floor - 1e-9]
        if pool:
            break
    downsampled = [c for c in pool if c.tap_resolution < 1.0]
    return downsampled or pool


def auto_select(costs: list[CpmCost], *, max_flop_share: float = 0.05, min_width: float = 0.25,
                degradation: str = "uniform") -> CpmCost:
    """Pick a strategy by secure memory and FLOPs alone (no latency model, no accuracy model).

    Rule: among single-tap strategies whose CPM completes the network (``output == "logits"``) with the
    given degradation, at least ``min_width`` wide and at most ``max_flop_share`` of the model's FLOPs,
    take the one with the shallowest tap (the less of the network the normal world holds, the less a
    thief gets), then the widest CPM (accuracy), then the least secure memory; but pass over taps at the
    input's full spatial resolution whenever a tap after the network's first downsampling qualifies.

    Why: a CPM entered at full resolution pays for its entry projection and first convolution at the
    input's resolution, so the FLOP share leaves it a narrow entry (4 channels for the zoo ResNet's
    ``b1_add``) that loses what the tap holds. Measured on Fashion-MNIST (full training split, official
    test split, the default joint training): the zoo ResNet's ``b1_add`` 1/4 (28x28, 4.3% of FLOPs)
    ended 1.37 points below the original, its ``b3_add`` 1/4 (14x14, 2.4% of FLOPs) 0.69 below; an
    8-channel entry for ``b1_add`` (5.6% of FLOPs, over the share) recovered only 0.65 of the 2.49
    points it lost with the former 8-epoch training. The zoo VGG (``b2_maxpool``, 14x14) and LeNet
    (``b2_relu``, 10x10) picks are past their first pooling already and unchanged. ``min_width`` keeps
    the CPM wide enough to come near the original accuracy: the zoo VGG's 1/8-wide mirror from
    ``b0_relu`` ended 4.4 points below the original (8 epochs). Deeper taps trade theft resistance for
    accuracy (see bench/protect_zoo.py and bench/security_table.py).
    """
    pool = auto_pool(costs, max_flop_share=max_flop_share, min_width=min_width, degradation=degradation)
    if not pool:
        raise StrategyError(f"no single-tap strategy of width >= 1/16 within {max_flop_share:.0%} of the "
                            "model's FLOPs fits the secure-memory budget; raise --budget-kib or give --strategy")
    order = {}
    for c in costs:
        order.setdefault(c.strategy.taps[0], len(order))
    return min(pool, key=lambda c: (order[c.strategy.taps[0]], -c.strategy.width_ratio, c.memory.total))
