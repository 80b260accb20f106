"""``mirrornet protect``: turn a trained model into a MirrorNet and write the artifact folder.

    ARTIFACT/original.onnx    the model as given
    ARTIFACT/combined.onnx    backbone + CPM: outputs logits, backbone_logits, tap:<name>...
    ARTIFACT/backbone.onnx    the backbone alone (what a thief copies off the device)
    ARTIFACT/strategy.json
    ARTIFACT/metrics.json     accuracies, CPM FLOP/parameter share, secure memory, training record
    ARTIFACT/checkpoint.pt    joint-training checkpoint (``resume=True`` continues from it)

Accuracies are measured on the dataset's real test split, in PyTorch, and the combined ONNX file is
checked against PyTorch in onnxruntime on test images before the artifact is declared done. With
``epochs=0`` nothing is trained and the dataset may be left out: the artifact is the untrained split (the
original backbone, the CPM its initial slice), for compile and latency work on networks without a dataset
at their input size; its metrics hold no accuracy.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, data
from .errors import ArtifactError, ModelError, StrategyError, UsageError
from .frontend import load_model
from .graph import GraphNet
from .mirror import MirrorNet, strip_softmax
from .strategy import (DEFAULT_BUDGET_BYTES, Strategy, auto_pool, auto_select, cpm_cost, degradations_with,
                       generate_strategies)
from .training import JointConfig, evaluate_mirrornet, train_joint
from .training_base import evaluate, set_threads
from .util import atomic_write, read_json, sha256_file, write_json

ARTIFACT_FILES = ("original.onnx", "combined.onnx", "backbone.onnx", "strategy.json", "metrics.json")
AUTO_FLOP_SHARE = 0.05
ONNX_CHECK_IMAGES = 32
UNTRAINED_CHECK_IMAGES = 4  # random images that check the export of a model built with epochs=0
FLOOR_CANDIDATES = 3        # strategies --auto --security-floor tries at most
ONNX_TOLERANCE = 1e-4    # of the outputs' scale, max(1, |output|): see _onnx_check
AUTO_NOTE = ("chosen by secure memory and FLOPs alone (no performance emulator: give --tuning DIR from "
             "`mirrornet tune` to choose by predicted latency): the shallowest single tap whose CPM, at least "
             "1/4 wide (1/8 or 1/16 when none that wide fits), completes the network within {share:.0%} of the "
             "model's FLOPs, past the input's full resolution when such a tap qualifies")
# Issue targets the report checks each artifact against.
TARGETS = {"authorized_drop_points": 1.0, "illegal_max": 0.15, "flop_share_max": 0.05}


@dataclass(frozen=True)
class ProtectResult:
    out_dir: Path
    metrics: dict


def _say(progress: bool, msg: str):
    if progress:
        print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StrategyChoice:
    """The strategy to use, how it was chosen (a sentence), and the emulator's ranking when it chose."""

    strategy: Strategy
    how: str
    emulation: dict | None = None   # the Performance Emulator's record (None: given, or the rule alone)


def choose_strategy(graph, strategy=None, auto: bool = False, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                    degradation: str | None = None, *, tuning=None, model=None,
                    progress: bool = False) -> StrategyChoice:
    """The strategy to use and how it was chosen.

    ``auto`` without ``tuning``: the rule of :func:`~mirrornet_tvm.strategy.auto_select`. With
    ``tuning`` (a `mirrornet tune` folder) and ``model`` (the loaded model): among the strategies that
    rule accepts (its floors), the one the Performance Emulator predicts fastest.
    """
    if (strategy is None) == (not auto):
        raise UsageError("give exactly one of --strategy FILE or --auto")
    if tuning is not None and not auto:
        raise UsageError("--tuning DIR is for --auto (the emulator chooses the strategy); drop it when giving "
                         "--strategy")
    if strategy is not None:
        s = strategy if isinstance(strategy, Strategy) else Strategy.load(strategy)
        if degradation:
            s = s.replace(degradation=degradation)
        return StrategyChoice(s, f"given ({strategy if not isinstance(strategy, Strategy) else 'by the caller'})")
    costs = generate_strategies(graph, budget_bytes, degradations=degradations_with(degradation))
    if tuning is None:
        pick = auto_select(costs, max_flop_share=AUTO_FLOP_SHARE, degradation=degradation or "uniform")
        return StrategyChoice(pick.strategy, "auto: " + AUTO_NOTE.format(share=AUTO_FLOP_SHARE))
    if model is None:
        raise UsageError("choosing with the emulator needs the model (its kernels): pass model=load_model(...)")
    from .emulator.selection import load_tuning, rank_space, selection_note

    ranking = rank_space(model, costs, load_tuning(tuning), budget_bytes=budget_bytes,
                         max_flop_share=AUTO_FLOP_SHARE, degradation=degradation or "uniform", progress=progress)
    how = selection_note(ranking)  # StrategyError when nothing meets the floors
    e = ranking.selected
    emulation = {"tuning": ranking.emulator, "floors": ranking.floors, "budget_bytes": budget_bytes,
                 "strategies_emulated": len(ranking.estimates), "eligible": len(ranking.eligible),
                 "rank_among_all": 1 + ranking.estimates.index(e), "on_pareto_front": ranking.on_front(e),
                 "predicted_ms": {"total": e.total_s * 1e3, "backbone": e.backbone_s * 1e3,
                                  "cpm": e.cpm_s * 1e3, "transfer": e.transfer_s * 1e3},
                 "invokes": e.invokes, "emulation_seconds": round(ranking.seconds, 3)}
    return StrategyChoice({c.strategy.name: c.strategy for c in costs}[e.name], how, emulation)


def _check_data(graph: GraphNet, x_train, y_train, dataset: str):
    want = tuple(graph.input_shape[1:])
    got = tuple(x_train.shape[1:])
    if want != got:
        raise UsageError(f"the model takes {'x'.join(map(str, want))} images but dataset '{dataset}' has "
                         f"{'x'.join(map(str, got))}; pick the matching dataset (e.g. fashion-mnist-rgb for 3x32x32)")
    classes = int(np.max(y_train)) + 1
    if classes > graph.num_classes:
        raise UsageError(f"dataset '{dataset}' has {classes} classes but the model outputs {graph.num_classes}")


def _onnx_check(path, net: MirrorNet, x) -> tuple[float, float]:
    """Largest difference between combined.onnx in onnxruntime and the PyTorch model on images ``x``:
    (absolute, relative to the output's scale). The relative figure divides each output's difference by
    max(1, its largest magnitude): float32 rounding grows with the logits, and a backbone trained to
    be wrong can end with logits in the tens."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    net.eval()
    worst = worst_rel = 0.0
    with torch.no_grad():
        for xi in x:
            xi = np.ascontiguousarray(xi[None], dtype=np.float32)
            logits, bl = sess.run(["logits", "backbone_logits"], {"input": xi})
            rect, tbl, _ = net(torch.from_numpy(xi))
            for got, ref in ((logits, rect.numpy()), (bl, tbl.numpy())):
                d = float(np.abs(got - ref).max())
                worst = max(worst, d)
                worst_rel = max(worst_rel, d / max(1.0, float(np.abs(ref).max())))
    return worst, worst_rel


def training_config(config: JointConfig | dict | None, degradation: str) -> JointConfig:
    """``config`` as given, or the defaults of ``degradation`` with the settings of a dict over them."""
    if isinstance(config, JointConfig):
        return config
    if config is not None and not isinstance(config, dict):
        raise UsageError("config must be a JointConfig, a dict of its settings or None, "
                         f"got {type(config).__name__}")
    return JointConfig.for_degradation(degradation, **(config or {}))


def protect(model_path, dataset: str | None, out_dir, *, strategy=None, auto: bool = False,
            config: JointConfig | dict | None = None, subset: int | None = None,
            budget_bytes: int = DEFAULT_BUDGET_BYTES, degradation: str | None = None, tuning=None,
            resume: bool = False, force: bool = False, threads: int | None = None,
            progress: bool = True, command: str | None = None, security_floor=None,
            floor_candidates: int = FLOOR_CANDIDATES, input_shape=None) -> ProtectResult:
    """Protect the ONNX model at ``model_path`` (see the module docstring); returns the metrics.

    ``input_shape`` (C, H, W) fixes dynamic input dimensions (:func:`~mirrornet_tvm.frontend.load_model`);
    ``original.onnx`` is then the model with that shape.

    ``security_floor`` (a :class:`~mirrornet_tvm.attack.floor.SecurityFloor`): attack the protected model
    (:func:`~mirrornet_tvm.attack.security_check`) and record the verdict in ``metrics["security"]``. With
    ``auto``, the candidates of the ``--auto`` rule are tried in its order (at most ``floor_candidates``)
    until one meets the floor; :class:`StrategyError` when none does (the artifact then holds the last
    one tried, its metrics saying so). With a given strategy, a miss is recorded, not raised.

    ``config``: a :class:`JointConfig` is used as given; a dict (or None) holds settings over the defaults of
    the chosen strategy's degradation objective (:meth:`JointConfig.for_degradation`).
    """
    if security_floor is not None:
        return _protect_with_floor(model_path, dataset, out_dir, security_floor, floor_candidates,
                                   strategy=strategy, auto=auto, config=config, subset=subset,
                                   budget_bytes=budget_bytes, degradation=degradation, tuning=tuning,
                                   resume=resume, force=force, threads=threads, progress=progress,
                                   command=command, input_shape=input_shape)
    t_start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder; give a folder for the artifact")
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not (resume or force):
        raise ArtifactError(f"{out} already holds a training checkpoint: pass --resume to continue it or "
                            "--force to start over")
    if force and ckpt.exists():
        ckpt.unlink()
    threads = set_threads(threads)
    model = load_model(model_path, input_shape)
    original = strip_softmax(model.graph())
    choice = choose_strategy(original, strategy, auto, budget_bytes, degradation, tuning=tuning, model=model,
                             progress=progress)
    s, how = choice.strategy, choice.how
    cost = cpm_cost(s, original)   # validates the taps against the model
    config = training_config(config, s.degradation)
    if progress:
        _say(True, f"strategy {s.name}: {how}")
        _say(True, f"CPM: {cost.flop_share:.2%} of the model's FLOPs, {cost.param_share:.2%} of its parameters, "
                   f"{cost.memory.total / 1024:.1f} KiB of secure memory")
    untrained = config.epochs == 0
    if dataset is None and not untrained:
        raise UsageError("give --dataset to train on, or --epochs 0 to build the combined model without training "
                         "(for compile and latency work: such a model is not protected)")
    if dataset is not None:
        x_train, y_train, x_test, y_test = data.load(dataset, subset=subset)
        _check_data(original, x_train, y_train, dataset)
        original_acc = evaluate(original, x_test, y_test)
        _say(progress, f"original model: {original_acc:.2%} test accuracy on {dataset} ({len(x_test)} images)")
    else:   # check the export on seeded random images of the model's input shape
        x_train = y_train = y_test = None
        x_test = np.random.default_rng(config.seed).standard_normal(
            (UNTRAINED_CHECK_IMAGES,) + tuple(original.input_shape[1:])).astype(np.float32)
    torch.manual_seed(config.seed)
    backbone = strip_softmax(GraphNet.from_onnx(model.proto))
    net = MirrorNet(backbone, s)
    out.mkdir(parents=True, exist_ok=True)
    lr_bb = config.backbone_lr(s)
    if untrained:
        _say(progress, "no training (--epochs 0): the CPM is its initial slice of the backbone and the backbone "
                       "is the original; the combined model is for compile and latency work, not protected")
        result = None
    else:
        _say(progress, f"joint training: {len(x_train)} images, {config.epochs} epoch(s), seed {config.seed}, "
                       f"{threads} thread(s), degradation {s.degradation}, tail {config.tail}, backbone "
                       + (f"lr {lr_bb:g}" if lr_bb else "frozen before the last tap"))
        result = train_joint(net, x_train, y_train, config, teacher=original if config.distill > 0 else None,
                             checkpoint=ckpt, resume=resume, progress=progress)
    acc = evaluate_mirrornet(net, x_test, y_test) if dataset is not None else None

    src = Path(model_path)
    atomic_write(out / "original.onnx",
                 src.read_bytes() if input_shape is None else model.proto.SerializeToString())
    net.export_onnx(out / "combined.onnx", source=f"{src.name} (sha256 {sha256_file(src)[:16]})")
    net.export_backbone(out / "backbone.onnx")
    s.save(out / "strategy.json")
    diff, rel = _onnx_check(out / "combined.onnx", net, x_test[:ONNX_CHECK_IMAGES])
    if rel > ONNX_TOLERANCE:
        raise ModelError(f"{out / 'combined.onnx'} differs from the trained PyTorch model by {diff:.2e} "
                         f"({rel:.2e} of the outputs' scale) in "
                         f"onnxruntime (> {ONNX_TOLERANCE:g} of the scale); the export is wrong")
    accuracy = None if acc is None else {
        "original": original_acc, "authorized": acc["authorized"], "illegal": acc["illegal"],
        "authorized_drop_points": round(100 * (original_acc - acc["authorized"]), 3),
        "gap_points": round(100 * (acc["authorized"] - acc["illegal"]), 3)}
    metrics = {
        "generated_by": f"mirrornet protect (mirrornet-tvm {__version__})",
        "command": command or "mirrornet_tvm.protect.protect(...)",
        "model": {"source": str(src), "sha256": sha256_file(src), "flops": cost.model_flops,
                  "params": cost.model_params, "input_shape": list(original.input_shape),
                  "num_classes": original.num_classes},
        "dataset": None if dataset is None else {
            "name": dataset, "subset": subset, "train_images": len(x_train), "test_images": len(x_test),
            "split": "official test split"},
        "accuracy": accuracy,
        "cpm": {"flops": cost.cpm_flops, "params": cost.cpm_params, "flop_share": cost.flop_share,
                "param_share": cost.param_share, "ops": len(net.plan.ops)},
        "secure_memory": dict(cost.memory.to_dict(), budget=budget_bytes),
        "strategy": s.to_dict(),
        "strategy_selection": how,
        "strategy_emulation": choice.emulation,
        "training": {"config": config.to_dict(), "seed": config.seed, "epochs": config.epochs,
                     "trained": not untrained, "lr_backbone": config.backbone_lr(s),
                     "threads": threads, "history": [] if result is None else result.to_dict()["epochs"],
                     "resumed_from_epoch": None if result is None else result.resumed_from,
                     "seconds": 0.0 if result is None else result.seconds},
        "onnx_check": {"images": min(ONNX_CHECK_IMAGES, len(x_test)),
                       "inputs": "test images" if dataset is not None else "seeded random images",
                       "max_abs_diff": diff, "max_rel_diff": rel, "tolerance": ONNX_TOLERANCE},
        "wall_seconds": None,
    }
    metrics["targets"] = check_targets(metrics)
    metrics["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "metrics.json", metrics)
    if acc is None:
        _say(progress, f"untrained combined model written to {out}")
    else:
        _say(progress, f"authorized {acc['authorized']:.2%} (original {original_acc:.2%}), illegal use "
                       f"{acc['illegal']:.2%}; artifact written to {out}")
    return ProtectResult(out, metrics)


def _protect_with_floor(model_path, dataset, out_dir, floor, floor_candidates, *, strategy, auto, budget_bytes,
                        degradation, tuning, force, progress, **kw) -> ProtectResult:
    if floor_candidates < 1:
        raise UsageError(f"floor_candidates must be at least 1, got {floor_candidates}")
    if auto and tuning is None:   # the rule's pick first, then the rest of its pool, shallow to deep
        graph = strip_softmax(load_model(model_path, kw.get("input_shape")).graph())
        costs = generate_strategies(graph, budget_bytes, degradations=degradations_with(degradation))
        first = auto_select(costs, max_flop_share=AUTO_FLOP_SHARE, degradation=degradation or "uniform")
        pool = auto_pool(costs, max_flop_share=AUTO_FLOP_SHARE, degradation=degradation or "uniform")
        candidates = [first.strategy] + [c.strategy for c in pool if c.strategy != first.strategy]
        candidates = candidates[:floor_candidates]
    else:                         # a given strategy, or the emulator's single choice
        candidates = [strategy]
    from .attack.floor import first_secure

    results, checked = [], []   # the ProtectResult of each candidate protected, in order; those attacked
    attack_t0 = []              # when each candidate's attack began

    def protect_one(s):
        results.append(protect(model_path, dataset, out_dir, strategy=s, auto=s is None, tuning=tuning,
                               budget_bytes=budget_bytes, degradation=degradation, force=force or bool(results),
                               progress=progress, **kw))
        _say(progress, f"security floor: attacking {results[-1].metrics['strategy']['name']} ({floor.describe()})")
        attack_t0.append(time.perf_counter())
        return Path(out_dir)

    def record(choice):   # the verdict into this candidate's metrics, with every candidate's so far
        result, met = results[-1], floor.met_by(choice.report)
        checked.append(result)
        tried = [{"strategy": r.metrics["strategy"]["name"], "met": floor.met_by(rep),
                  "failures": [] if floor.met_by(rep) else floor.failures(rep)}
                 for r, (_, rep) in zip(results, choice.tried)]
        result.metrics["security"] = {"floor": floor.describe(), "met": met, "failures": tried[-1]["failures"],
                                      "report": choice.report.to_dict(), "strategies_tried": tried,
                                      "wall_seconds": round(time.perf_counter() - attack_t0[-1], 1)}
        if len(candidates) > 1:
            result.metrics["strategy_selection"] += (f"; security floor {'met' if met else 'NOT met'} by "
                                                     f"candidate {len(results)} of {len(candidates)} in the rule's order")
        write_json(Path(out_dir) / "metrics.json", result.metrics)
        _say(progress, f"security floor {'met' if met else 'NOT met'} by {tried[-1]['strategy']}"
                       + ("" if met else f": {tried[-1]['failures'][0]}"))

    try:
        first_secure(candidates, protect_one, floor, dataset, progress=progress, on_checked=record)
    except StrategyError:
        if len(checked) != len(candidates):   # protect's own error: the floor's verdict comes after them all
            raise
        if not (auto and tuning is None):   # one strategy, given or emulated: its metrics say NOT met
            return results[-1]
        tried = results[-1].metrics["security"]["strategies_tried"]
        raise StrategyError(
            f"none of the {len(tried)} strategies tried meets the security floor ({floor.describe()}): "
            + "; ".join(f"{d['strategy']}: {d['failures'][0]}" for d in tried)
            + f". {out_dir} holds the last one, its metrics say so. Try --floor-candidates N, the adversarial "
              "degradation objective, or a strategy with a shallower tap (--strategy)") from None
    return results[-1]


def check_targets(metrics: dict) -> dict:
    """Each target of the protection (see :data:`TARGETS`) with its value and whether it is met."""
    a, c, m = metrics["accuracy"], metrics["cpm"], metrics["secure_memory"]
    t = TARGETS
    none = {"value": None, "met": None}   # no accuracy without a dataset (epochs=0)
    return {
        "authorized_within_1_point": none if a is None else {
            "value": a["authorized_drop_points"], "met": a["authorized_drop_points"] <= t["authorized_drop_points"]},
        "illegal_at_most_15_percent": none if a is None else {"value": a["illegal"],
                                                               "met": a["illegal"] <= t["illegal_max"]},
        "cpm_flops_at_most_5_percent": {"value": c["flop_share"], "met": c["flop_share"] <= t["flop_share_max"]},
        "secure_memory_within_budget": {"value": m["total"], "met": m["total"] <= m.get("budget", DEFAULT_BUDGET_BYTES)},
    }


def load_metrics(artifact_dir) -> dict:
    """The metrics of an artifact folder (ArtifactError naming what is missing)."""
    folder = Path(artifact_dir)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder; make one with `mirrornet protect`")
    path = folder / "metrics.json"
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise ArtifactError(f"{folder} has no metrics.json (it holds: {', '.join(present) or 'nothing'}); "
                            "the protect run did not finish: rerun it with --resume")
    try:
        metrics = read_json(path)
    except ValueError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); rerun `mirrornet protect`") from None
    for key in ("accuracy", "cpm", "secure_memory", "strategy"):
        if key not in metrics:
            raise ArtifactError(f"{path} lacks '{key}': it was not written by mirrornet protect")
    return metrics


__all__ = ["protect", "choose_strategy", "StrategyChoice", "load_metrics", "check_targets", "ProtectResult",
           "ARTIFACT_FILES"]
