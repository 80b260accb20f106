"""Joint training of backbone and CPM: the CPM learns to be right, the backbone alone learns to be useless.

Starting from the trained original weights, every step minimises

    CE(rectified, y) + lam * KL(uniform || softmax(backbone_logits))            (degradation "uniform")
                     + adv * mean_taps KL(uniform || softmax(attacker(tap)))    (degradation "adversarial")
                     + adv * mean_taps KL(uniform || softmax(thief(tap)))       (degradation "fewshot": a thief
                       with a small labelled pool, see mirrornet_tvm.degradation)
                     + distill * T^2 * KL(softmax(teacher / T) || softmax(rectified / T))

The adversarial attacker is a fresh linear classifier on each tapped map (the cheapest theft of the
features the CPM reads), trained alongside with its own optimiser on detached taps; the backbone is
pushed to make its prediction uniform. It costs authorized accuracy, since the features the CPM reads
must move: on the zoo VGG (tap ``b2_maxpool``, CPM 1/4, 10k images, 3 epochs) a fresh linear probe on
the tap, trained on 600 labelled images, fell from 84% (unprotected) to 74% / 72% / 67% with
``adv`` = 0.1 / 0.3 / 1.0 while the authorized accuracy fell from 88% (uniform) to 84% / 82% / 79%;
a smaller backbone learning rate (1e-4) kept the accuracy but not the damage. The default is 0.1. Every degradation term is a KL divergence to the uniform
distribution: bounded below by zero and minimised, never an unbounded negative cross-entropy, so long
runs stay stable. ``distill`` optionally adds knowledge distillation from the original model (the
teacher), which helps a narrow CPM reach the original accuracy.

The backbone's layers after the last tap serve no authorised purpose when the CPM completes the network
(``output == "logits"``). ``tail="reinit"`` (the default) re-initialises them randomly and freezes them,
zeroing the layer that produces the logits, so the stolen backbone's head holds nothing learned from the
task and its own prediction is exactly uniform by construction; the uniform term then has nothing to act
on and is skipped, and the backbone is run only as far as its last tap. ``tail="train"`` keeps the tail and trains it with the uniform term (the
original MirrorNet recipe, whose damage a thief can fine-tune away). The backbone's layers before the
last tap are fine-tuned with ``lr_backbone``; by default they stay frozen for ``uniform`` with a
re-initialised tail (nothing in the loss asks them to change, and training is several times faster) and
train at 5e-4 otherwise (the adversarial term acts on them).

Deterministic under a seed (single-threaded torch): the sample order of epoch ``e`` comes from a
generator seeded with ``(seed, e)``. A checkpoint is written atomically after every epoch and
``resume=True`` continues after the last completed one with the same result as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import degradation as extra_objectives
from .errors import ArtifactError, MirrorNetError, StrategyError, UsageError
from .mirror import MirrorNet
from .training_base import _as_tensor, _check_xy, predict
from .util import atomic_path

TAILS = ("train", "reinit")
DEFAULT_LR_BACKBONE = 5e-4
# What the adversarial objective trains with unless told otherwise (JointConfig.for_degradation). Measured on
# Fashion-MNIST (full training split, official test split; bench/security_table.py, three attack seeds):
# * distillation: LeNet b1_maxpool 1/4, 16 epochs, adv 0.1: authorized 80.65% without, 86.34% with
#   (``distill`` 1), both secure under the 1.05x rule at 60 and 600 stolen labels;
# * epochs: ResNet b3_add 1/4 (adv 0.1, distillation): 89.46% / 89.72% / 90.13% after 16 / 24 / 32 epochs
#   (original 90.88%), secure at every length; 32 epochs close 19% of the black-box to white-box gap at
#   6000 stolen labels. A weaker thief term for 24 epochs trades one for the other: ``adv`` 0.08 reached
#   90.17% (16% of the gap), 0.07 reached 90.34% but let fine-tuning close 26%.
OBJECTIVE_DEFAULTS = {"adversarial": {"epochs": 32, "distill": 1.0}}
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class JointConfig:
    """Hyper-parameters of joint training (recorded in the checkpoint and the artifact's metrics).

    The defaults (16 epochs, CPM learning rate 5e-3, cosine decay) were measured on Fashion-MNIST (full
    training split, official test split; points below the original model, before -> after, the former
    defaults being 8 epochs at 2e-3): zoo ResNet ``b1_add`` 1/4 2.49 -> 1.37 (5e-3 alone at 8 epochs:
    2.12), ``b3_add`` 1/4 1.61 -> 0.69; VGG ``b2_maxpool`` 1/4 0.80 -> 0.23; LeNet ``b2_relu`` 1/2
    -0.15 -> -0.16. The narrow CPMs were still underfitting after 8 epochs. Distillation from the
    original (``distill`` 1, temperature 4) made them worse: ResNet ``b3_add`` 1.61 -> 2.05 and
    ``b1_add`` 2.49 -> 3.17 (8 epochs), VGG ``b2_maxpool`` 1.28 -> 1.88 (4 epochs); it stays off.
    Those runs used the uniform objective. The adversarial objective, whose thief term moves the layers
    before the tap, trains longer and with distillation by default (OBJECTIVE_DEFAULTS, through
    :meth:`for_degradation`).
    """

    epochs: int = 16
    batch_size: int = 128
    lr_cpm: float = 5e-3
    lr_backbone: float | None = None   # None: 0 (frozen) for "uniform" with tail "reinit", else 5e-4
    lr_attacker: float = 2e-3
    lam: float = 1.0
    adv: float = 0.1
    distill: float = 0.0
    temperature: float = 4.0
    tail: str = "reinit"
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if int(self.epochs) < 0:
            raise UsageError(f"epochs must be at least 1 (or 0: build the combined model without training), "
                             f"got {self.epochs}")
        if int(self.batch_size) < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        for name in ("lr_cpm", "lr_attacker", "temperature"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UsageError(f"{name} must be a positive number, got {v}")
        for name in ("lr_backbone", "lam", "adv", "distill", "weight_decay"):
            v = getattr(self, name)
            if v is None and name == "lr_backbone":
                continue
            if not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"{name} must be a non-negative number, got {v}")
        if self.tail not in TAILS:
            raise UsageError(f"tail must be one of {', '.join(TAILS)}, got {self.tail!r}")

    @classmethod
    def for_degradation(cls, degradation: str, **overrides) -> "JointConfig":
        """The defaults for a degradation objective (OBJECTIVE_DEFAULTS over the class defaults), then
        ``overrides``: what `mirrornet protect` trains with when a setting is not given."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown training settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{**OBJECTIVE_DEFAULTS.get(degradation, {}), **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def backbone_lr(self, strategy) -> float:
        """The backbone's learning rate for ``strategy`` (resolving the default, see ``lr_backbone``)."""
        if self.lr_backbone is not None:
            return self.lr_backbone
        return 0.0 if (strategy.degradation == "uniform" and self.tail == "reinit") else DEFAULT_LR_BACKBONE


@dataclass(frozen=True)
class EpochRecord:
    """Training-set means of one epoch."""

    epoch: int
    loss: float
    rectified_ce: float
    degradation_kl: float | None  # KL(uniform || backbone prediction): 0 when the backbone is useless
    attacker_kl: float | None    # same for the simulated attacker's prediction (adversarial only)
    attacker_accuracy: float | None
    authorized_accuracy: float
    backbone_accuracy: float | None  # None when the backbone is not run past the taps (tail "reinit")
    seconds: float


@dataclass(frozen=True)
class JointResult:
    epochs: tuple
    seconds: float
    resumed_from: int            # epochs already done when this run started (0: fresh)

    def to_dict(self) -> dict:
        return {"epochs": [dataclasses.asdict(e) for e in self.epochs], "seconds": self.seconds,
                "resumed_from": self.resumed_from}


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------

def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(uniform || softmax(logits)): 0 exactly when the prediction is uniform, never negative."""
    logp = F.log_softmax(logits, dim=1)
    c = logits.shape[1]
    return (-math.log(c) - logp.mean(dim=1)).mean()


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's knowledge-distillation loss, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy divided by log(classes): 1 for a uniform prediction."""
    logp = F.log_softmax(logits, 1)
    return (-(logp.exp() * logp).sum(1) / math.log(logits.shape[1])).mean()


class TapAttacker(torch.nn.Module):
    """The simulated attacker: a linear classifier on each tapped map (flattened)."""

    def __init__(self, tap_shapes: dict, num_classes: int):
        super().__init__()
        self.names = list(tap_shapes)
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(int(np.prod(shape[1:])), num_classes) for shape in tap_shapes.values())

    def forward(self, taps: dict) -> list:
        return [head(torch.flatten(taps[name], 1)) for name, head in zip(self.names, self.heads)]


# ---------------------------------------------------------------------------------------------------
# Tail
# ---------------------------------------------------------------------------------------------------

def tail_modules(net: MirrorNet) -> list:
    """Keys of the backbone's weighted layers after the last tap (unused by the authorised path)."""
    g = net.backbone
    nodes = g.subgraph(net.plan.tap_tensors[-1], net.plan.logits_tensor)
    return [n.module for n in nodes if n.module is not None]


def _output_layers(net: MirrorNet) -> list:
    """Keys of the weighted layers that produce the backbone's logits: the last Gemm/MatMul/Conv before
    them and any bias added after it."""
    g, keys = net.backbone, []
    node = g.producer(net.plan.logits_tensor)
    while node is not None and node.outputs[0] != net.plan.tap_tensors[-1]:
        if node.module is not None:
            keys.append(node.module)
            if node.op in ("Gemm", "MatMul", "Conv"):
                break
        node = g.producer(node.inputs[0]) if node.inputs else None
    return keys


def reinit_tail(net: MirrorNet, seed: int) -> list:
    """Re-initialise the tail layers randomly (seeded) and freeze them; returns their keys.

    The layer producing the logits is zeroed rather than randomised, so the backbone's own prediction is
    exactly uniform for every input: a random head over trained features still leans toward some classes
    (16% test accuracy was measured with a random VGG tail), a zero one cannot. A thief fine-tuning the
    stolen backbone starts that layer from zero, as from a common initialisation.
    """
    if net.strategy.output != "logits":
        raise StrategyError("tail='reinit' needs output 'logits': with 'correction' the backbone's "
                            "logits are part of the authorised output; use tail='train'")
    keys = tail_modules(net)
    zeroed = set(_output_layers(net))
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed + 7919)
    try:
        with torch.no_grad():
            for key in keys:
                m = net.backbone.layers[key]
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                for p in m.parameters():
                    if key in zeroed or not hasattr(m, "reset_parameters"):
                        p.zero_()
                    p.requires_grad_(False)
    finally:
        torch.set_rng_state(gen_state)
    return keys


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

def _save_checkpoint(path, state: dict):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no checkpoint at {path}; run without --resume to start fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file
        raise ArtifactError(f"checkpoint {path} is unreadable ({err}); delete it and start fresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not a mirrornet joint-training checkpoint (format "
                            f"{CHECKPOINT_FORMAT}); delete it and start fresh")
    return state


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------

def _param_groups(net: MirrorNet, cfg: JointConfig):
    bb = [p for p in net.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(net.cpm.parameters()), "lr": cfg.lr_cpm}]
    if bb:
        groups.append({"params": bb, "lr": cfg.backbone_lr(net.strategy)})
    return groups


def train_joint(net: MirrorNet, x, y, config: JointConfig = JointConfig(), *, teacher=None,
                checkpoint=None, resume: bool = False, progress: bool = True,
                on_epoch_end=None) -> JointResult:
    """Train ``net`` (backbone + CPM) in place on ``(x, y)``; see the module docstring.

    ``teacher`` (the original model, any module returning logits) is needed when ``config.distill > 0``.
    ``checkpoint``: file written atomically after every epoch; with ``resume=True`` training restarts
    after the last epoch it holds (the net must be built the same way, the config must match).
    ``on_epoch_end(record)`` is called after each epoch's checkpoint is written.
    """
    cfg = config
    _check_xy(x, y)
    if cfg.distill > 0 and teacher is None:
        raise UsageError("distill > 0 needs the original model as teacher")
    if resume and checkpoint is None:
        raise UsageError("resume needs a checkpoint path")
    xt, yt = _as_tensor(x, torch.float32), _as_tensor(y, torch.int64)
    strategy = net.strategy
    adversarial = strategy.degradation == "adversarial"
    frozen = cfg.backbone_lr(strategy) == 0
    full_forward = cfg.tail == "train"     # the backbone's own logits are needed for the uniform term
    if frozen and adversarial:
        raise UsageError("the adversarial degradation trains the backbone against the tap attacker: "
                         "lr_backbone must be positive")
    if frozen and cfg.tail != "reinit":
        raise UsageError("with lr_backbone 0 and tail 'train' nothing degrades the backbone (illegal use would "
                         "equal the original accuracy): use tail 'reinit' or a positive lr_backbone")
    torch.manual_seed(cfg.seed)
    if cfg.tail == "reinit":
        reinit_tail(net, cfg.seed)
    if frozen:
        for p in net.backbone.parameters():
            p.requires_grad_(False)
    tap_shapes = {name: net.backbone.tensor_shapes[t] for name, t in zip(strategy.taps, net.plan.tap_tensors)}
    attacker = TapAttacker(tap_shapes, net.plan.num_classes) if adversarial else None
    extra = extra_objectives.make_objective(strategy, net, xt, yt, cfg.seed, backbone_lr=cfg.backbone_lr(strategy))
    opt = torch.optim.Adam(_param_groups(net, cfg), weight_decay=cfg.weight_decay)
    opt_att = torch.optim.Adam(attacker.parameters(), lr=cfg.lr_attacker) if attacker else None
    steps_per_epoch = math.ceil(len(xt) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    teacher_logits = None
    if cfg.distill > 0:
        teacher_logits = torch.from_numpy(predict(teacher, xt, batch_size=512))

    history: list[EpochRecord] = []
    start_epoch = 0
    if resume and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        if state["config"] != cfg.to_dict() or state["strategy"] != strategy.to_dict():
            raise ArtifactError(f"checkpoint {checkpoint} was written with another configuration or "
                                "strategy; resume with the same options or delete it")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if attacker is not None:
            attacker.load_state_dict(state["attacker"])
            opt_att.load_state_dict(state["attacker_optimizer"])
        torch.set_rng_state(state["rng"])
        history = [EpochRecord(**e) for e in state["history"]]
        start_epoch = state["epoch"]
    elif resume and progress:
        tqdm.write(f"no checkpoint at {checkpoint} yet: starting from epoch 1", file=sys.stderr)

    t0 = time.perf_counter()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        net.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        order = torch.randperm(len(xt), generator=gen)
        sums = dict(loss=0.0, ce=0.0, deg=0.0, akl=0.0, acc=0, bacc=0, aacc=0, n=0)
        bar = tqdm(range(steps_per_epoch), desc=f"joint {epoch}/{cfg.epochs}", unit="step", file=sys.stderr,
                   disable=not progress, leave=False, dynamic_ncols=True)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb, yb = xt[idx], yt[idx]
            if not full_forward:
                # the tail is random and frozen and the CPM does not read the backbone's logits: run the
                # backbone only as far as the last tap (without gradients when nothing in it trains)
                with torch.no_grad() if frozen else contextlib.nullcontext():
                    tap_list = net.tap_forward(xb)
                rect = net.cpm(tap_list)
                taps = dict(zip(strategy.taps, tap_list))
                ce = F.cross_entropy(rect, yb)
                deg = None
                loss = ce
            else:
                rect, bl, taps = net(xb)
                ce = F.cross_entropy(rect, yb)
                deg = uniform_kl(bl)
                loss = ce + cfg.lam * deg
            akl = None
            if attacker is not None:
                akl = torch.stack([uniform_kl(a) for a in attacker(taps)]).mean()
                loss = loss + cfg.adv * akl
            if extra is not None:      # degradation objectives of mirrornet_tvm.degradation (e.g. fewshot)
                loss = loss + cfg.adv * extra.penalty(net, taps, yb)
            if teacher_logits is not None:
                loss = loss + cfg.distill * distillation(rect, teacher_logits[idx], cfg.temperature)
            if not torch.isfinite(loss):
                raise MirrorNetError(f"joint training diverged (loss {loss.item()}) at epoch {epoch}, step "
                                     f"{step + 1}; lower the learning rates")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = len(idx)
            if attacker is not None:
                opt_att.zero_grad(set_to_none=True)
                alogits = attacker({k: v.detach() for k, v in taps.items()})
                F.cross_entropy(torch.cat(alogits), yb.repeat(len(alogits))).backward()
                opt_att.step()
                sums["akl"] += akl.item() * n
                sums["aacc"] += int((torch.stack([a.detach() for a in alogits]).softmax(2).mean(0)
                                     .argmax(1) == yb).sum())
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            if deg is not None:
                sums["deg"] += deg.item() * n
                sums["bacc"] += int((bl.detach().argmax(1) == yb).sum())
            sums["acc"] += int((rect.detach().argmax(1) == yb).sum())
            sums["n"] += n
            if step % 20 == 0:
                m = sums["n"]
                post = {"ce": f"{sums['ce'] / m:.3f}", "auth": f"{sums['acc'] / m:.3f}"}
                if full_forward:
                    post["backbone"] = f"{sums['bacc'] / m:.3f}"
                bar.set_postfix(post)
        bar.close()
        m = sums["n"]
        rec = EpochRecord(epoch, sums["loss"] / m, sums["ce"] / m, sums["deg"] / m if full_forward else None,
                          sums["akl"] / m if attacker else None, sums["aacc"] / m if attacker else None,
                          sums["acc"] / m, sums["bacc"] / m if full_forward else None,
                          round(time.perf_counter() - t_epoch, 2))
        history.append(rec)
        if checkpoint is not None:
            state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "config": cfg.to_dict(),
                     "strategy": strategy.to_dict(), "net": net.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                     "history": [dataclasses.asdict(e) for e in history]}
            if attacker is not None:
                state["attacker"] = attacker.state_dict()
                state["attacker_optimizer"] = opt_att.state_dict()
            _save_checkpoint(checkpoint, state)
        if progress:
            line = (f"joint epoch {epoch}/{cfg.epochs}: rectified CE {rec.rectified_ce:.4f}, authorized "
                    f"{rec.authorized_accuracy:.2%}")
            if rec.backbone_accuracy is not None:
                line += f", backbone alone {rec.backbone_accuracy:.2%}"
            if attacker is not None:
                line += f", tap attacker {rec.attacker_accuracy:.2%}"
            tqdm.write(f"{line} (train set, {rec.seconds:.1f} s)", file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(rec)
    net.eval()
    return JointResult(tuple(history), round(time.perf_counter() - t0, 2), start_epoch)


@torch.no_grad()
def evaluate_mirrornet(net: MirrorNet, x, y, batch_size: int = 512) -> dict:
    """Authorized (rectified) and illegal-use (backbone alone) top-1 accuracy on ``(x, y)``."""
    _check_xy(x, y)
    xt, yt = _as_tensor(x, torch.float32), _as_tensor(y, torch.int64)
    was = net.training
    net.eval()
    auth = ill = 0
    try:
        for s in range(0, len(xt), batch_size):
            rect, bl, _ = net(xt[s:s + batch_size])
            yb = yt[s:s + batch_size]
            auth += int((rect.argmax(1) == yb).sum())
            ill += int((bl.argmax(1) == yb).sum())
    finally:
        net.train(was)
    return {"authorized": auth / len(xt), "illegal": ill / len(xt)}
