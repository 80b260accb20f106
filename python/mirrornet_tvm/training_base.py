"""Base training: train a zoo model on a dataset with PyTorch and export it as ONNX.

The loop helpers are general and shared with joint training:

``fit(model, x, y, epochs, lr, batch_size, seed)``   Adam with a cosine learning-rate decay, shuffled
                                                      by a generator seeded with ``seed``
``evaluate(model, x, y, batch_size)``                 top-1 accuracy in [0, 1]
``predict(model, x, batch_size)``                     logits as a numpy array
``export_onnx(model, path)``                          static batch 1, input ``input``, output ``logits``

``train_base`` is what ``mirrornet train-base`` runs: load the data, build the model, fit, export, check
the ONNX file against PyTorch in onnxruntime, and write the JSON sidecar next to it.

Threads: on the two shared cores this project targets, one torch thread trained the zoo models 3-6x
faster than two (two threads contend with the other work on the machine), so ``train_base`` uses one
unless told otherwise. ``channels_last`` made a training step 1.1-1.8x faster (lenet 1.4-1.8x, vgg
1.5x, resnet 1.1-1.3x), so ``fit`` uses it by default.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, data, zoo
from .errors import MirrorNetError, ModelError, UsageError
from .util import atomic_path, sha256_file, write_json

DEFAULT_THREADS = 1
DEFAULT_LR = 2e-3
DEFAULT_BATCH_SIZE = 128
# Default epochs per model. lenet on Fashion-MNIST: 91.1% test accuracy after 4 epochs (91.7% after 6).
# The standard architectures (zoo.ALL_NAMES) default to 1 epoch: they are 3-150x larger (use --subset on a CPU).
DEFAULT_EPOCHS = {"lenet": 4, "vgg": 3, "resnet": 3, **{name: 1 for name in zoo.architectures.NAMES}}
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class EpochStats:
    """One epoch of ``fit``: mean training loss and accuracy, test accuracy when evaluated."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` did, epoch by epoch."""

    epochs: tuple[EpochStats, ...]
    seconds: float
    channels_last: bool

    @property
    def final_test_accuracy(self) -> float | None:
        return self.epochs[-1].test_accuracy if self.epochs else None


# --------------------------------------------------------------------------------------------------
# Loop helpers
# --------------------------------------------------------------------------------------------------


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default :data:`DEFAULT_THREADS`); returns the count used."""
    threads = DEFAULT_THREADS if threads is None else int(threads)
    if threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def _as_tensor(a, dtype) -> torch.Tensor:
    """A torch view of ``a`` without copying; the loader's arrays are read-only and never written here."""
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.asarray(a)).to(dtype)


def _check_xy(x, y) -> None:
    if len(x) != len(y):
        raise UsageError(f"{len(x)} images but {len(y)} labels; they must match one to one")
    if len(x) == 0:
        raise UsageError("no samples to train or evaluate on")


def predict(model: torch.nn.Module, x, batch_size: int = 512, channels_last: bool = False) -> np.ndarray:
    """Logits of ``model`` on every image of ``x`` (evaluation mode, no gradients), as float32 numpy."""
    xt = _as_tensor(x, torch.float32)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(xt), batch_size):
                xb = xt[start : start + batch_size]
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                out.append(model(xb).float())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def evaluate(model: torch.nn.Module, x, y, batch_size: int = 512, channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in [0, 1]."""
    _check_xy(x, y)
    logits = predict(model, x, batch_size, channels_last)
    return float((logits.argmax(1) == np.asarray(y)).mean())


def fit(
    model: torch.nn.Module,
    x,
    y,
    epochs: int,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
    *,
    eval_data=None,
    channels_last: bool = True,
    weight_decay: float = 1e-4,
    loss_fn=F.cross_entropy,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` in place on ``(x, y)`` with Adam and a cosine learning-rate decay to zero.

    The order of samples comes from a generator seeded with ``seed``, so the same model, data and seed
    give the same weights. ``eval_data=(x_test, y_test)`` reports test accuracy after every epoch.
    ``loss_fn(logits, labels)`` may be replaced (joint training). Progress goes to stderr.
    """
    _check_xy(x, y)
    if epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"learning rate must be a positive number, got {lr}")
    xt, yt = _as_tensor(x, torch.float32), _as_tensor(y, torch.int64)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    stats: list[EpochStats] = []
    t_start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            order = torch.randperm(len(xt), generator=gen)
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(range(steps_per_epoch), desc=f"{desc} {epoch}/{epochs}", unit="step",
                       file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True)
            for step in bar:
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb = xt[idx].contiguous(memory_format=memory_format)
                yb = yt[idx]
                logits = model(xb)
                loss = loss_fn(logits, yb)
                if not torch.isfinite(loss):
                    raise MirrorNetError(
                        f"training diverged (loss {loss.item()}) at epoch {epoch}, step {step + 1}; lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.close()
            test_acc = None
            if eval_data is not None:
                test_acc = evaluate(model, eval_data[0], eval_data[1], channels_last=channels_last)
            stats.append(EpochStats(epoch, loss_sum / seen, correct / seen, test_acc, time.perf_counter() - t_epoch))
            if progress:
                line = f"{desc} epoch {epoch}/{epochs}: loss {loss_sum / seen:.4f}, train accuracy {correct / seen:.2%}"
                if test_acc is not None:
                    line += f", test accuracy {test_acc:.2%}"
                tqdm.write(f"{line} ({stats[-1].seconds:.1f} s)", file=sys.stderr)
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.eval()
    return FitResult(tuple(stats), time.perf_counter() - t_start, channels_last)


# --------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------


def export_onnx(model: torch.nn.Module, path, in_shape=None, metadata: dict | None = None) -> Path:
    """Export ``model`` to ONNX atomically: static batch 1, input ``input``, output ``logits``, opset 17.

    ``in_shape`` (C, H, W) defaults to the zoo model's ``in_shape``. ``metadata`` becomes the file's
    ``metadata_props`` (strings).
    """
    import onnx

    in_shape = tuple(in_shape or getattr(model, "in_shape", ()) or ())
    if len(in_shape) != 3:
        raise ModelError("export_onnx needs the input shape (C, H, W): pass in_shape=")
    was_training = model.training
    model.eval()
    dummy = torch.zeros((1, *in_shape), dtype=torch.float32)
    path = Path(path)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (dummy,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"], do_constant_folding=True,
            )
            proto = onnx.load(str(tmp))
            for key, value in (metadata or {}).items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = str(key), str(value)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
    return path


def onnx_max_abs_diff(model: torch.nn.Module, path, x) -> float:
    """Largest |onnxruntime - PyTorch| over the images ``x`` (one at a time: the file has batch 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ref = predict(model, x)
    got = np.concatenate([sess.run(["logits"], {"input": np.ascontiguousarray(xi[None], np.float32)})[0] for xi in x])
    return float(np.abs(got - ref).max())


# --------------------------------------------------------------------------------------------------
# train-base
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainBaseResult:
    """What ``train_base`` produced; also the content of the JSON sidecar ``OUT.onnx.json``."""

    model: str
    dataset: str
    in_shape: tuple[int, int, int]
    num_classes: int
    parameters: int
    epochs: int
    subset: int | None
    seed: int
    lr: float
    batch_size: int
    threads: int
    channels_last: bool
    train_samples: int
    test_samples: int
    test_accuracy: float
    epoch_test_accuracy: tuple[float, ...]
    train_seconds: float
    onnx: str
    onnx_sha256: str
    onnx_max_abs_diff: float

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["in_shape"] = list(self.in_shape)
        d["epoch_test_accuracy"] = list(self.epoch_test_accuracy)
        return {"generated_by": f"mirrornet train-base (mirrornet-tvm {__version__})", **d}


def _dataset_label(dataset: str) -> str:
    return dataset if dataset in data.NAMES else Path(dataset).name


def train_base(
    model_name: str,
    dataset: str,
    out,
    epochs: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    in_shape=None,
    threads: int | None = None,
    progress: bool = True,
) -> TrainBaseResult:
    """Train zoo model ``model_name`` on ``dataset``, write ``out`` (ONNX) and ``out.json`` (sidecar)."""
    if model_name not in zoo.ALL_NAMES:
        raise ModelError(f"unknown zoo model '{model_name}': choose one of {', '.join(zoo.ALL_NAMES)}")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"output {out} is a folder; give a file name such as {out / 'model.onnx'}")
    epochs = DEFAULT_EPOCHS[model_name] if epochs is None else int(epochs)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    threads = set_threads(threads)
    x_train, y_train, x_test, y_test = data.load(dataset, subset=subset)
    data_shape = tuple(int(d) for d in x_train.shape[1:])
    if in_shape is not None and tuple(in_shape) != data_shape:
        rgb = f"; for 3x32x32 use --dataset {dataset}-rgb" if f"{dataset}-rgb" in data.NAMES else ""
        raise UsageError(
            f"--in-shape {'x'.join(map(str, in_shape))} does not match dataset '{dataset}', whose images are "
            f"{'x'.join(map(str, data_shape))}{rgb}"
        )
    classes = max(data.num_classes(y_train), 2)
    torch.manual_seed(seed)
    model = zoo.build(model_name, data_shape, classes)
    label = _dataset_label(dataset)
    if progress:
        print(
            f"training {model_name} ({zoo.count_parameters(model):,} parameters) on {label}: "
            f"{len(x_train)} training / {len(x_test)} test images, {epochs} epoch(s), seed {seed}, "
            f"{threads} thread(s)",
            file=sys.stderr,
        )
    result = fit(model, x_train, y_train, epochs, lr, batch_size, seed, progress,
                 eval_data=(x_test, y_test), desc=model_name)
    test_acc = result.final_test_accuracy
    metadata = {
        "mirrornet.generated_by": f"mirrornet train-base (mirrornet-tvm {__version__})",
        "mirrornet.source": f"zoo model {model_name} trained on {label} "
        f"({len(x_train)} images, {epochs} epochs, seed {seed})",
        "mirrornet.test_accuracy": f"{test_acc:.4f}",
    }
    export_onnx(model, out, data_shape, metadata)
    diff = onnx_max_abs_diff(model, out, x_test[:16])
    if diff > ONNX_TOLERANCE:
        raise ModelError(
            f"{out}: onnxruntime differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g}); the export is wrong"
        )
    res = TrainBaseResult(
        model=model_name, dataset=label, in_shape=data_shape, num_classes=classes,
        parameters=zoo.count_parameters(model), epochs=epochs, subset=subset, seed=seed, lr=lr,
        batch_size=batch_size, threads=threads, channels_last=result.channels_last,
        train_samples=len(x_train), test_samples=len(x_test), test_accuracy=test_acc,
        epoch_test_accuracy=tuple(e.test_accuracy for e in result.epochs), train_seconds=round(result.seconds, 2),
        onnx=out.name, onnx_sha256=sha256_file(out), onnx_max_abs_diff=diff,
    )
    write_json(Path(f"{out}.json"), res.to_json())
    return res
