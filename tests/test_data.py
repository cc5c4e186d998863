"""Data loaders and augmentation, on tiny files the tests write themselves."""

import gzip
import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.train import (
    Dataset,
    DatasetError,
    TrainConfig,
    augment,
    crop_offsets,
    flip_draws,
    load_cifar10,
    load_dataset,
    load_digits,
    load_idx,
    load_image_folder,
    make_shapes,
    random_crop,
    random_flip,
    read_idx,
)

# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_real():
    from sklearn.datasets import load_digits as sk_digits

    train, test = load_digits()
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    raw = sk_digits()
    # Stratified: each class's share of the test set is its share of the whole, +-1.
    whole = np.bincount(raw.target, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels, minlength=10) - whole * 360 / 1797) <= 1)
    # Train and test partition the 1,797 real scans, labels attached correctly.
    both = np.concatenate([train.images, test.images])[..., 0] * 16
    lab = np.concatenate([train.labels, test.labels])
    key = {img.tobytes(): [] for img in raw.images.astype(np.float32)}
    for img, y in zip(raw.images.astype(np.float32), raw.target):
        key[img.tobytes()].append(y)
    for img, y in zip(both, lab):
        assert y in key[img.astype(np.float32).tobytes()]
    assert sorted(np.bincount(lab)) == sorted(whole)
    again, _ = load_digits()
    np.testing.assert_array_equal(again.images, train.images)


def test_bundled_digits_equal_scikit_learns_copy_and_the_anchors_split():
    # The oracle: the data and split that ../shared/anchors/*.py build with scikit-learn.
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    train, test = load_digits()
    np.testing.assert_array_equal(train.images, x_tr)
    np.testing.assert_array_equal(test.images, x_te)
    np.testing.assert_array_equal(train.labels, y_tr)
    np.testing.assert_array_equal(test.labels, y_te)


# ---------------------------------------------------------------- IDX


def _write_idx(path, array, *, gz=False, type_byte=0x08):
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def _mnist_dir(root, rng, *, gz, n_train=6, n_test=4):
    os.makedirs(root, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,)),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,)),
    }
    for name, arr in arrays.items():
        _write_idx(os.path.join(root, name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads_mnist_files(tmp_path, rng, gz):
    arrays = _mnist_dir(tmp_path, rng, gz=gz)
    train, test = load_dataset("mnist", str(tmp_path))
    assert train.images.shape == (6, 28, 28, 1) and test.images.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(
        train.images[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])
    fashion, _ = load_dataset("fashion_mnist", str(tmp_path))
    assert fashion.class_names[9] == "Ankle boot" and fashion.name == "fashion_mnist"


def test_idx_missing_file_is_named(tmp_path, rng):
    _mnist_dir(tmp_path, rng, gz=False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match=r"missing file .*t10k-labels-idx1-ubyte.*expected"):
        load_idx(str(tmp_path))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(b"\x01\x02\x08\x03" + b"\0" * 12), "bad magic number"),
        (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + b"\0" * 12), "type byte 0x0d"),
        (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + b"\0" * 4), r"1 dimension\(s\)"),
        (lambda p: p.write_bytes(b"\x00\x00\x08\x03\x00"), "header is truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "holding 4704 bytes"),
        # 0x0 images: 6 images of no pixels
        (
            lambda p: p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 6, 0, 0)),
            r"dimensions after the first are >= 1, the header says shape \(6, 0, 0\)",
        ),
        # 2**31 * 2**31 * 4 = 2**64 bytes: numpy's product wraps to 0, the empty data's length
        (
            lambda p: p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4)),
            r"holding 18446744073709551616 bytes for shape \(2147483648, 2147483648, 4\), got 0",
        ),
        (
            lambda p: p.write_bytes(
                b"\x00\x00\x08\x03" + struct.pack(">3I", *[2**32 - 1] * 3) + b"\0" * 10
            ),
            rf"holding {(2**32 - 1) ** 3} bytes for shape \(4294967295, 4294967295, 4294967295\), "
            rf"got 10",
        ),
        (lambda p: p.write_bytes(b"\x08\x00\x00\x03" + b"\0" * 12), "bad magic number"),
    ],
)
def test_idx_malformed_file_is_named(tmp_path, rng, corrupt, match):
    _mnist_dir(tmp_path, rng, gz=False, n_test=6)
    path = tmp_path / "train-images-idx3-ubyte"
    corrupt(path)
    with pytest.raises(DatasetError, match=rf"train-images-idx3-ubyte.*{match}"):
        load_idx(str(tmp_path))


def test_idx_bad_gzip_and_label_errors(tmp_path, rng):
    _mnist_dir(tmp_path, rng, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"cannot read .*train-labels-idx1-ubyte.gz"):
        load_idx(str(tmp_path))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5), gz=True)
    with pytest.raises(DatasetError, match="as many train labels as images, got 5 labels"):
        load_idx(str(tmp_path))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(6, 12), gz=True)
    with pytest.raises(DatasetError, match="expected classes 0..9, got 12"):
        load_idx(str(tmp_path))
    arr = read_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), 3)
    assert arr.shape == (4, 28, 28) and arr.dtype == np.uint8


def test_idx_with_no_test_images_is_refused(tmp_path, rng):
    """An empty split reported test accuracy NaN and exited 0."""
    _mnist_dir(tmp_path, rng, gz=False, n_test=0)
    with pytest.raises(
        DatasetError,
        match=r"^load_dataset: the test split of 'mnist' in .* must "
        r"hold at least one example, got none",
    ):
        load_dataset("mnist", str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10


def _cifar_dir(root, rng, n=3):
    os.makedirs(root, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    return batches


def test_cifar10_pickles_channels_last(tmp_path, rng):
    nested = tmp_path / "cifar-10-batches-py"
    batches = _cifar_dir(nested, rng)
    train, test = load_cifar10(str(tmp_path))  # the parent folder works too
    assert train.images.shape == (15, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
    data = batches["data_batch_2"][b"data"]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    i, y, x = 1, 5, 7
    for c in range(3):
        assert train.images[3 + i, y, x, c] == pytest.approx(data[i, c * 1024 + y * 32 + x] / 255)
    assert list(test.labels) == list(batches["test_batch"][b"labels"])
    assert train.class_names[0] == "airplane"
    train2, _ = load_dataset("cifar10", str(nested))
    np.testing.assert_array_equal(train2.images, train.images)


def test_cifar10_errors_name_the_file(tmp_path, rng):
    _cifar_dir(tmp_path, rng)
    os.remove(tmp_path / "data_batch_4")
    with pytest.raises(DatasetError, match=r"missing file .*data_batch_4: expected a CIFAR-10"):
        load_cifar10(str(tmp_path))
    (tmp_path / "data_batch_4").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match=r"malformed file .*data_batch_4: expected a CIFAR-10"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(DatasetError, match=r"data_batch_4.*got a list"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"pixels": 1}, f)
    with pytest.raises(DatasetError, match=r"data_batch_4.*keys are"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetError, match=r"data_batch_4.*data of shape \(2, 100\)"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(DatasetError, match=r"data_batch_4: expected labels 0..9, got 0..10"):
        load_cifar10(str(tmp_path))
    for batch, match in (
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": 5},
            r"labels of dtype int64 and shape \(\)",
        ),
        ({b"data": np.full((2, 3072), 0.5), b"labels": [0, 1]}, "data of dtype float64"),
        (
            {b"data": np.full((2, 3072), 300, np.int16), b"labels": [0, 1]},
            r"expected pixel values 0..255, got 300..300",
        ),
        ({b"data": [[1, 2], [3]], b"labels": [0, 1]}, "inhomogeneous"),
    ):
        with open(tmp_path / "data_batch_4", "wb") as f:
            pickle.dump(batch, f)
        with pytest.raises(DatasetError, match=rf"malformed file .*data_batch_4: .*{match}"):
            load_cifar10(str(tmp_path))


# ---------------------------------------------------------------- image folder


def _png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_split_and_train_test(tmp_path, rng):
    root = tmp_path / "flat"
    values = {"cat": 10, "dog": 200}
    for name, v in values.items():
        for i in range(5):
            _png(str(root / name / f"{i}.png"), np.full((6, 5, 3), v + i, np.uint8))
    train, test = load_image_folder(str(root), test_fraction=0.2, seed=0)
    assert train.class_names == ["cat", "dog"] and train.num_classes == 2
    assert len(train) == 8 and len(test) == 2 and sorted(test.labels) == [0, 1]
    assert train.images.shape[1:] == (6, 5, 3)
    for img, y in zip(train.images, train.labels):
        base = values[train.class_names[y]]
        assert base <= round(img[0, 0, 0] * 255) < base + 5
    # train/ and test/ sub-folders are used as given; grey images stay 1 channel, and
    # other sizes are resized to the first image's.
    root = tmp_path / "split"
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                size = (4, 4) if i == 0 else (8, 8)
                _png(
                    str(root / split / c / f"{i}.png"),
                    np.full(size, 255 if c == "b" else 0, np.uint8),
                )
    train, test = load_image_folder(str(root))
    assert train.images.shape == (6, 4, 4, 1) and test.images.shape == (4, 4, 4, 1)
    np.testing.assert_allclose(train.images[train.labels == 1], 1.0)
    np.testing.assert_allclose(test.images[test.labels == 0], 0.0)
    # --dataset folder streams the same files: nothing decoded until read, same images.
    streams = load_dataset("folder", str(root))
    assert [type(s).__name__ for s in streams] == ["ImageStream", "ImageStream"]
    for stream, data in zip(streams, (train, test)):
        assert (len(stream), stream.image_shape) == (len(data), data.image_shape)
        np.testing.assert_array_equal(stream.to_dataset().images, data.images)
        np.testing.assert_array_equal(stream.labels, data.labels)


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"malformed folder .*empty: expected one sub-folder"):
        load_image_folder(str(empty))
    (empty / "cls").mkdir()
    (empty / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"malformed folder .*cls: expected image files"):
        load_image_folder(str(empty))
    (empty / "cls" / "bad.png").write_bytes(b"definitely not a png")
    for name in ("a.png", "b.png"):  # three files, so that one is held out for testing
        _png(str(empty / "cls" / name), np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match=r"malformed file .*bad.png: expected an image"):
        load_image_folder(str(empty))
    root = tmp_path / "mismatch"
    _png(str(root / "train" / "a" / "0.png"), np.zeros((2, 2), np.uint8))
    _png(str(root / "test" / "b" / "0.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match=r"same class sub-folders in train/ and test/"):
        load_image_folder(str(root))


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(
        DatasetError, match=r"data_dir must be given for 'mnist' \(--data-dir\), got None"
    ):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="data_dir must be an existing folder, got"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="name must be one of .* got 'imagenet21k'"):
        load_dataset("imagenet21k")
    with pytest.raises(DatasetError, match=r"images must be \(N, H, W, C\), got shape \(3, 4\)"):
        Dataset(np.zeros((3, 4)), np.zeros(3), 2, "x")
    with pytest.raises(DatasetError, match="same length, got 3 images and 2 labels"):
        Dataset(np.zeros((3, 2, 2, 1)), np.zeros(2), 2, "x")
    with pytest.raises(
        DatasetError,
        match=r"x: labels of a segment data set must have 3 "
        r"dimension\(s\), got shape \(3,\)",
    ):
        Dataset(np.zeros((3, 2, 2, 1)), np.zeros(3), 2, "x", task="segment")
    with pytest.raises(DatasetError, match=r"x: task must be 'classify' or 'segment', got 'det'"):
        Dataset(np.zeros((3, 2, 2, 1)), np.zeros(3), 2, "x", task="det")


# ---------------------------------------------------------------- shapes


def test_shapes_masks_match_the_drawn_pixels():
    train, test = make_shapes(n_train=16, n_test=4, size=24, seed=1)
    assert train.images.shape == (16, 24, 24, 3) and train.labels.shape == (16, 24, 24)
    assert train.task == "segment" and train.class_names[3] == "triangle"
    assert set(np.unique(train.labels)) <= {0, 1, 2, 3} and len(np.unique(train.labels)) == 4
    # Background pixels are dark noise (< 0.15), shape pixels a colour in [0.4, 1].
    bg = train.labels == 0
    assert train.images[bg].max() < 0.15 and train.images[~bg].min() >= 0.4
    again, _ = make_shapes(n_train=16, n_test=4, size=24, seed=1)
    np.testing.assert_array_equal(again.labels, train.labels)
    small = train.resized(12)
    assert small.images.shape == (16, 12, 12, 3) and small.labels.dtype == np.int32


# ---------------------------------------------------------------- augmentation


def test_random_crop_is_a_shift_of_the_zero_padded_image(rng):
    x = rng.normal(size=(6, 5, 5, 2)).astype(np.float32)
    m = rng.integers(1, 4, (6, 5, 5)).astype(np.int32)
    out, out_m = jax.jit(lambda k, x, m: random_crop(k, x, 2, m))(jax.random.key(3), x, m)
    out, out_m = np.asarray(out), np.asarray(out_m)
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    mp = np.pad(m, ((0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(6):
        hits = [
            (a, b)
            for a in range(5)
            for b in range(5)
            if np.array_equal(xp[i, a : a + 5, b : b + 5], out[i])
        ]
        assert hits, f"image {i} is not a crop of its padded self"
        a, b = hits[0]
        np.testing.assert_array_equal(mp[i, a : a + 5, b : b + 5], out_m[i])
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between images
    np.testing.assert_array_equal(random_crop(jax.random.key(0), x, 0), x)


def test_random_flip_mirrors_images_and_masks_together(rng):
    x = rng.normal(size=(16, 3, 4, 1)).astype(np.float32)
    m = np.broadcast_to(np.arange(4, dtype=np.int32), (16, 3, 4))
    out, out_m = random_flip(jax.random.key(1), x, m)
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(np.asarray(out), x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(np.asarray(out), x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    for o, f in zip(np.asarray(out_m), flipped):
        np.testing.assert_array_equal(o[0], [3, 2, 1, 0] if f else [0, 1, 2, 3])
    y = augment(jax.random.key(2), jnp.asarray(x), crop_padding=1, flip=False)
    assert y.shape == x.shape


def test_shift_moves_content_by_the_drawn_offset_and_fills_with_zero(rng):
    # Oracle: numpy shifts by the offsets that crop_offsets reports.
    x = rng.uniform(0.5, 1.0, size=(5, 6, 6, 2)).astype(np.float32)  # no zeros inside
    m = rng.integers(1, 4, (5, 6, 6)).astype(np.int32)
    key, index = jax.random.key(7), jnp.asarray([10, 3, 99, 4, 0], jnp.int32)
    out, out_m = random_crop(key, x, 2, m, index=index)
    offsets = np.asarray(crop_offsets(key, 5, 2, index))
    assert offsets.min() >= 0 and offsets.max() <= 4
    for i, (dy, dx) in enumerate(offsets):
        sy, sx = 2 - dy, 2 - dx  # content moves down/right by (sy, sx)
        want = np.zeros_like(x[i])
        want_m = np.zeros_like(m[i])
        src_y = slice(max(0, -sy), 6 - max(0, sy))
        dst_y = slice(max(0, sy), 6 - max(0, -sy))
        src_x = slice(max(0, -sx), 6 - max(0, sx))
        dst_x = slice(max(0, sx), 6 - max(0, -sx))
        want[dst_y, dst_x] = x[i][src_y, src_x]
        want_m[dst_y, dst_x] = m[i][src_y, src_x]
        np.testing.assert_array_equal(np.asarray(out[i]), want)
        np.testing.assert_array_equal(np.asarray(out_m[i]), want_m)  # masks move exactly


def test_draws_depend_on_the_example_index_not_the_batch(rng):
    x = rng.normal(size=(8, 5, 5, 3)).astype(np.float32)
    key, index = jax.random.key(1), jnp.arange(100, 108, dtype=jnp.int32)
    whole = np.asarray(augment(key, x, crop_padding=1, flip=True, index=index))
    halves = [
        np.asarray(augment(key, x[s], crop_padding=1, flip=True, index=index[s]))
        for s in (slice(0, 3), slice(3, 8))
    ]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    flips = np.asarray(flip_draws(key, 8, index))
    assert flips.any() and not flips.all()


def test_the_train_step_never_flips_grey_images_and_augment_off_is_the_identity(rng):
    # A model that returns its (augmented) input's mean column profile exposes what
    # the step fed it; digits-like grey input must only ever be shifted, not mirrored.
    from cnn_jax.train._sharding import make_mesh
    from cnn_jax.train._step import Trainer

    seen = []

    class Probe(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jnp.zeros((2,)))

        def __call__(self, x):
            seen.append(x)
            return jnp.zeros((x.shape[0], 2)) + self.w[...][None, :]

    ramp = np.broadcast_to(
        np.arange(1.0, 9.0, dtype=np.float32)[None, None, :, None], (4, 8, 8, 1)
    ).copy()
    batch = {
        "image": jnp.asarray(ramp),
        "label": jnp.zeros((4,), jnp.int32),
        "index": jnp.arange(4, dtype=jnp.int32),
    }
    # The step's function run eagerly, so the probe sees real values.
    for augment_on in (True, False):
        cfg = TrainConfig(batch_size=4, num_devices=1, augment=augment_on, quiet=True)
        trainer = Trainer(Probe(nnx.Rngs(0)), cfg, 1, make_mesh(1), flip=True)
        state = trainer.initial_state()
        with jax.disable_jit():
            seen.clear()
            trainer._train_step(state, batch)
        fed = np.asarray(seen[-1])
        if not augment_on:
            np.testing.assert_array_equal(fed, ramp)
            continue
        for img in fed[..., 0]:
            row = img[4]  # a middle row: the ramp shifted by <= 1, zero-filled at one end
            nonzero = row[row != 0]
            assert np.all(np.diff(nonzero) == 1.0)  # increasing: never mirrored


def test_augment_errors():
    with pytest.raises(ValueError, match=r"random_crop: padding must be an int >= 0, got -1"):
        random_crop(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), -1)
    with pytest.raises(ValueError, match=r"random_crop: images must be \(N, H, W, C\)"):
        random_crop(jax.random.key(0), jnp.zeros((4, 4, 1)), 1)
    with pytest.raises(ValueError, match=r"random_flip: images must be \(N, H, W, C\)"):
        random_flip(jax.random.key(0), jnp.zeros((4, 4)))
