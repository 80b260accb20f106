"""Performance Emulator accuracy: predicted vs measured protected latency on held-out strategies.

For each zoo model (untrained weights: latency does not depend on their values):

1. strategies of distinct CPM structure are drawn from the model's strategy space and split into a
   calibration set and a held-out set. By default the draw is stratified by what sets a strategy's
   latency (the backbone slice it runs, the CPM's width): a plain random draw lands mostly on
   strategies that run the whole backbone, whose latencies differ by less than the measurement's
   own noise, where no ranking can be told from chance (``--sampling random`` shows it);
2. the cost model is trained on a random kernel corpus plus the kernels of the calibration strategies
   only (backbone slices as TVM code, CPMs as the TEE simulator's C), all measured on this machine;
3. every strategy is compiled, packaged for the host TEE simulator and run (protected inference:
   backbone on the Relax VM, CPM in the simulated TA); each stage's time is its minimum over the images;
4. the stage models are calibrated on the calibration set, and the held-out set is predicted.

Printed: per held-out strategy the measured and predicted latency; per model the Spearman rank
correlation (target >= 0.9) and the median absolute percentage error (target <= 15%) of the total,
the measurement's Spearman against itself (first half of the timing rounds against the second half),
a FLOPs-only baseline's Spearman (latency fitted as a linear function of backbone and CPM FLOPs on the
same calibration set), the selection regret (measured latency of the strategy the emulator picks
among the held-out ones over the best measured, target <= 5%) and the time to emulate the model's
whole strategy space once the cost model exists. Backbones are untuned: ``build_backbone`` gives their
kernels its default CPU schedule, and the emulator predicts those kernels.

    .venv/bin/python bench/emulator_accuracy.py [--models lenet,vgg,resnet] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm is imported: one core, as in the TEE

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from mirrornet_tvm import frontend, zoo  # noqa: E402
from mirrornet_tvm.emulator import calibration as cal_mod  # noqa: E402
from mirrornet_tvm.emulator import corpus, harness  # noqa: E402
from mirrornet_tvm.emulator.cost_model import CostModel  # noqa: E402
from mirrornet_tvm.emulator.emulate import Emulator, select  # noqa: E402
from mirrornet_tvm.emulator.protected_runs import best_of, build_all, time_rounds  # noqa: E402
from mirrornet_tvm.emulator.strategy_kernels import ModelKernels  # noqa: E402
from mirrornet_tvm.emulator.targets import host_target, target_dict  # noqa: E402
from mirrornet_tvm.emulator.tuning import sample_strategies  # noqa: E402
from mirrornet_tvm.machine import describe  # noqa: E402
from mirrornet_tvm.strategy import generate_strategies  # noqa: E402
from mirrornet_tvm.util import write_json  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{describe(python=False)} | load {load:.1f}"


def flops_baseline(cal_rows, eval_rows):
    """Fit measured total = a * backbone FLOPs + b * CPM FLOPs + c on calibration; predict held-out."""
    from scipy.optimize import nnls

    a = np.array([[r["backbone_flops"], r["cpm_flops"], 1.0] for r in cal_rows])
    y = np.array([r["measured_s"] for r in cal_rows])
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1
    coef, _ = nnls(a / norms, y)
    coef = coef / norms
    return np.array([coef[0] * r["backbone_flops"] + coef[1] * r["cpm_flops"] + coef[2] for r in eval_rows])


def run_model(name: str, args, records: Path, work: Path, target) -> dict:
    model = frontend.load_model(zoo.build(name))
    mk = ModelKernels(model, target)
    space = generate_strategies(mk.graph, budget_bytes=None)
    picked = sample_strategies(space, args.calibration + args.heldout, seed=args.seed,
                               stratify=args.sampling == "stratified")
    cal_set, eval_set = picked[:args.calibration], picked[args.calibration:]
    print(f"\n== {name}: {len(space)} strategies in the space; {len(cal_set)} for calibration, "
          f"{len(eval_set)} held out", flush=True)

    # cost model: corpus + calibration strategies' kernels only
    # (the corpus scheduled as build_backbone schedules untuned kernels, and as the CPM's C runs)
    rand = corpus.random_kernels(args.corpus, seed=args.seed)
    tvm_kernels = corpus.scheduled_like_backbone(rand, target, mk.cache) + \
        [k for c in cal_set for k in mk.backbone(c.strategy)]
    c_kernels = corpus.scheduled_like_cpm(rand, target, mk.cache) + [k for c in cal_set for k in mk.cpm(c.strategy)[0]]
    meas = harness.measure(tvm_kernels, target, records=records, flavour="tvm") + \
        harness.measure(c_kernels, target, records=records, flavour="c-O2")
    held_keys = {k.key for c in eval_set for k in mk.backbone(c.strategy)} | \
        {k.key for c in eval_set for k in mk.cpm(c.strategy)[0]}
    train_keys = {k.key for k in tvm_kernels} | {k.key for k in c_kernels}
    cm = CostModel(target)
    cm.fit_measurements(meas)
    emu = Emulator(cm, target, cal_mod.Calibration(tee="sim"))

    # measured protected inference
    rng = np.random.default_rng(args.seed)
    shape = tuple(int(d) for d in model.input_shape)
    x = rng.random((args.images,) + shape[1:], dtype=np.float32)
    builds = build_all(model, picked, work / name, target=target)
    per_round = time_rounds(builds, x, rounds=args.rounds)
    measured = {t.name: t for t in (best_of(r[i] for r in per_round) for i in range(len(builds)))}
    # the measurement's own repeatability: the first half of the rounds against the second half
    half = max(1, args.rounds // 2)
    first = {t.name: t for t in (best_of(r[i] for r in per_round[:half]) for i in range(len(builds)))}
    second = {t.name: t for t in (best_of(r[i] for r in per_round[half:] or per_round[:half])
                                  for i in range(len(builds)))}

    # calibration on the calibration set
    samples = []
    for c in cal_set:
        s, sk, t = c.strategy, mk.of(c.strategy), measured[c.strategy.name]
        samples.append(cal_mod.Sample(
            s.name, emu.kernels_total(sk.backbone, "tvm"), sum(k.calls for k in sk.backbone), sk.backbone_out_bytes,
            emu.kernels_total(sk.cpm, emu.cpm_flavour), sum(k.calls for k in sk.cpm), sk.tee_in_bytes,
            sk.tee_out_bytes, t.backbone_s, t.cpm_s, t.transfer_s))
    cal = cal_mod.fit(samples, tee="sim")
    emu = Emulator(cm, target, cal)

    def row(c, est):
        t = measured[c.strategy.name]
        return {"strategy": c.strategy.name, "measured_s": t.total_s, "predicted_s": est.total_s,
                "measured": {"backbone": t.backbone_s, "cpm": t.cpm_s, "transfer": t.transfer_s},
                "predicted": {"backbone": est.backbone_s, "cpm": est.cpm_s, "transfer": est.transfer_s},
                "backbone_flops": sum(k.flops * k.calls for k in mk.backbone(c.strategy)),
                "cpm_flops": c.cpm_flops}

    cal_rows = [row(c, e) for c, e in zip(cal_set, emu.emulate(cal_set, model, progress=False))]
    eval_est = emu.emulate(eval_set, model, progress=False)
    rows = [row(c, e) for c, e in zip(eval_set, eval_est)]
    pred = np.array([r["predicted_s"] for r in rows])
    meas_tot = np.array([r["measured_s"] for r in rows])
    ape = np.abs(pred - meas_tot) / meas_tot
    rho = float(spearmanr(pred, meas_tot)[0])
    rho_flops = float(spearmanr(flops_baseline(cal_rows, rows), meas_tot)[0])
    names = [c.strategy.name for c in eval_set]
    rho_noise = float(spearmanr([first[n].total_s for n in names], [second[n].total_s for n in names])[0])
    pick = select(eval_est)
    regret = measured[pick.name].total_s / meas_tot.min() - 1.0

    # emulation speed on the whole space, with a fresh emulator (nothing memoised)
    fresh = Emulator(cm, target, cal)
    t0 = time.perf_counter()
    fresh.emulate(space, model, progress=False)
    emulate_s = time.perf_counter() - t0

    w = max(len(r["strategy"]) for r in rows)
    print(f"{'held-out strategy':<{w}}  {'measured ms':>11}  {'predicted ms':>12}  {'error':>7}   "
          f"(backbone / CPM / transfer, measured -> predicted, ms)")
    for r, e in zip(rows, ape):
        m, p = r["measured"], r["predicted"]
        print(f"{r['strategy']:<{w}}  {r['measured_s'] * 1e3:>11.3f}  {r['predicted_s'] * 1e3:>12.3f}  "
              f"{100 * e:>6.1f}%   {m['backbone'] * 1e3:.3f}->{p['backbone'] * 1e3:.3f} / "
              f"{m['cpm'] * 1e3:.3f}->{p['cpm'] * 1e3:.3f} / {m['transfer'] * 1e3:.3f}->{p['transfer'] * 1e3:.3f}")
    unseen = len(held_keys - train_keys)
    summary = {
        "model": name, "strategies_in_space": len(space), "calibration": len(cal_set), "heldout": len(eval_set),
        "spearman": rho, "mdape": float(np.median(ape)), "flops_spearman": rho_flops,
        "measurement_spearman": rho_noise, "sampling": args.sampling,
        "selected": pick.name, "selection_regret": float(regret),
        "emulate_space_s": emulate_s, "heldout_kernels_unseen_in_training": unseen,
        "heldout_kernels": len(held_keys), "calibration_fit": cal.to_dict(), "rows": rows,
    }
    print(f"{name}: Spearman {rho:.3f} (FLOPs-only {rho_flops:.3f}; measurement vs itself {rho_noise:.3f}), "
          f"median abs. error {100 * np.median(ape):.1f}%, "
          f"selection regret {100 * regret:.1f}% ({pick.name}), emulating all {len(space)} strategies "
          f"{emulate_s:.1f} s; {unseen} of {len(held_keys)} held-out kernels never measured", flush=True)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet,vgg,resnet")
    p.add_argument("--calibration", type=int, default=6, help="strategies to calibrate on")
    p.add_argument("--heldout", type=int, default=16, help="held-out strategies")
    p.add_argument("--corpus", type=int, default=150, help="random corpus kernels")
    p.add_argument("--images", type=int, default=60, help="images per protected run")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds over all strategies")
    p.add_argument("--sampling", choices=("stratified", "random"), default="stratified",
                   help="held-out strategies: one per (backbone slice, CPM width) group, or at random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="lenet only, fewer strategies and kernels")
    p.add_argument("--work", default=str(ROOT / "out" / "bench" / "emulator"),
                   help="builds and measurement records (reused by the next run)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.calibration, args.heldout, args.corpus, args.rounds = "lenet", 4, 6, 60, 3
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    target = host_target()
    print(f"machine: {machine()}")
    print(f"target: {target_dict(target)}; TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}; untuned backbones (default CPU schedule)")
    results = [run_model(m.strip(), args, work / "measurements.jsonl", work / "builds", target)
               for m in args.models.split(",") if m.strip()]
    print(f"\nheld-out sampling: {args.sampling}; 'repeat' = Spearman of the measurement against itself "
          "(first half of the timing rounds vs second half): how far the measured ranking is from noise")
    print("model    Spearman  (FLOPs-only)  (repeat)  median |err|  selection regret  emulate space")
    for r in results:
        print(f"{r['model']:<8} {r['spearman']:>8.3f}  ({r['flops_spearman']:>10.3f})  ({r['measurement_spearman']:>6.3f})"
              f"  {100 * r['mdape']:>11.1f}%  {100 * r['selection_regret']:>15.1f}%  "
              f"{r['emulate_space_s']:>6.1f} s / {r['strategies_in_space']}")
    print("targets: Spearman >= 0.9, median |err| <= 15%, regret <= 5%, space in seconds")
    if args.json:
        write_json(args.json, {"generated_by": "bench/emulator_accuracy.py", "machine": machine(),
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
