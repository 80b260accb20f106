"""The attacks, each a thief's training run with the learning rate chosen on its own held-out data.

``finetune``    the stolen backbone, every layer trained on the budget (the standard model-stealing attack)
``probe:<tap>`` a fresh linear classifier on one tapped feature map, the stolen backbone frozen
``blackbox``    the same architecture from random initialisation: what the budget is worth without theft
``whitebox``    the unprotected original fine-tuned on the budget: what full theft would give

Controls (optional, not judged by the rule; they say what a probe's result is made of):

``control:random:<tap>``    the same linear probe on the same tap of a randomly initialised backbone: what a
                            linear classifier on such features gets with nothing stolen
``control:original:<tap>``  the same probe on the unprotected original's tap: what it gets with no protection
``control:pixels``          a linear classifier on the raw pixels: what the budget gives with no network at all

Every attack is trained the same way (:func:`train_with_lr_search`): for each learning rate, train on the fit
part of the budget and score the held-out part; take the best held-out accuracy (ties: lower held-out loss,
then the earlier rate); retrain from the same starting point on the whole budget with that rate. The thief
then holds two models trained at that rate and keeps the retrained one unless it diverged or scores lower on
the whole budget than the validated one (Adam at the largest rate can collapse a network to one class on one
sample order and not on another; a thief sees that on its own data). Training (:func:`train`) follows
:func:`mirrornet_tvm.training_base.fit`: Adam with weight decay 1e-4, a cosine decay of the learning rate to
zero, the sample order drawn from a generator seeded with the seed. (``fit`` itself cannot train a GraphNet:
it calls ``Module.to``, which GraphNet's own ``_apply`` shadows.) A learning rate whose training diverges
scores zero on the held-out part.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..graph import GraphNet
from ..errors import MirrorNetError
from ..training_base import _as_tensor, predict

STEALING = "finetune"
BLACKBOX = "blackbox"
WHITEBOX = "whitebox"
ILLEGAL = "illegal"
PROBE_PREFIX = "probe:"
CONTROL_RANDOM = "control:random:"
CONTROL_ORIGINAL = "control:original:"
CONTROL_PIXELS = "control:pixels"


@dataclass(frozen=True)
class TrainSpec:
    """How every attack trains: learning rates tried, epochs, batch size, seed (sample order)."""

    lrs: tuple
    epochs: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class Trained:
    """One attack's outcome before it is scored on the test split."""

    model: torch.nn.Module
    lr: float
    val_accuracy: dict     # lr -> held-out accuracy
    val_loss: dict         # lr -> held-out cross-entropy
    seconds: float
    retrained: bool = True  # False: the retrain on the whole budget fell below ``model``, the validated one


class TapProbe(torch.nn.Module):
    """A linear classifier on one flattened tapped map of a frozen backbone (kept in eval mode)."""

    def __init__(self, backbone: GraphNet, tensor: str, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.tensor = tensor
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        features = int(np.prod(backbone.tensor_shapes[tensor][1:]))
        self.head = torch.nn.Linear(features, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()   # frozen: batch-norm statistics stay the stolen ones
        return self

    def forward(self, x):
        with torch.no_grad():
            _, t = self.backbone(x, return_tensors=(self.tensor,))
        return self.head(torch.flatten(t[self.tensor], 1))


def make_pixel_probe(input_shape, num_classes: int, seed: int) -> torch.nn.Module:
    """A linear classifier on the flattened image (initialised under ``seed``)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes))
    finally:
        torch.set_rng_state(state)


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with every parameter trainable (a thief trains whatever it copied)."""
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def make_probe(backbone: GraphNet, tensor: str, num_classes: int, seed: int) -> TapProbe:
    """A fresh probe (head initialised under ``seed``) on a frozen copy of ``backbone``."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TapProbe(copy.deepcopy(backbone), tensor, num_classes)
    finally:
        torch.set_rng_state(state)


def train(model: torch.nn.Module, x, y, epochs: int, lr: float, batch_size: int, seed: int,
          weight_decay: float = 1e-4) -> bool:
    """Train ``model`` in place on ``(x, y)`` with cross-entropy; False if the loss stopped being finite."""
    xt, yt = _as_tensor(x, torch.float32), _as_tensor(y, torch.int64)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps = math.ceil(len(xt) / batch_size)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    try:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(xt), generator=gen)
            for k in range(steps):
                idx = order[k * batch_size:(k + 1) * batch_size]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                if not torch.isfinite(loss):
                    return False
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        model.eval()
    return True


def _val_scores(model, x, y) -> tuple[float, float]:
    logits = torch.from_numpy(predict(model, x))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return float((logits.argmax(1) == yt).float().mean()), float(F.cross_entropy(logits, yt))


def train_with_lr_search(start: torch.nn.Module, fit_xy, val_xy, all_xy, spec: TrainSpec,
                         on_step=None) -> Trained:
    """Train copies of ``start``: one per learning rate on ``fit_xy``, pick on ``val_xy``, retrain on ``all_xy``.

    ``start`` is never modified. ``on_step()`` is called after each of the ``len(lrs) + 1`` trainings.
    """
    t0 = time.perf_counter()
    val_acc, val_loss, fitted = {}, {}, {}
    for lr in spec.lrs:
        m = copy.deepcopy(start)
        if train(m, fit_xy[0], fit_xy[1], spec.epochs, lr, spec.batch_size, spec.seed):
            val_acc[lr], val_loss[lr] = _val_scores(m, *val_xy)
            fitted[lr] = m
        else:
            val_acc[lr], val_loss[lr] = 0.0, math.inf
        if on_step:
            on_step()
    if not fitted:
        raise MirrorNetError(f"training diverged at every learning rate ({', '.join(f'{lr:g}' for lr in spec.lrs)}); "
                             "give smaller --lrs")
    best = min(spec.lrs, key=lambda lr: (-val_acc[lr], val_loss[lr], spec.lrs.index(lr)))
    final = copy.deepcopy(start)
    ok = train(final, all_xy[0], all_xy[1], spec.epochs, best, spec.batch_size, spec.seed)
    if on_step:
        on_step()
    if ok and _val_scores(final, *all_xy)[0] >= _val_scores(fitted[best], *all_xy)[0]:
        return Trained(final, best, val_acc, val_loss, time.perf_counter() - t0)
    return Trained(fitted[best], best, val_acc, val_loss, time.perf_counter() - t0, retrained=False)
