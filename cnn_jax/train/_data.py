"""Data sets from files the user already has; nothing is ever downloaded.

Every loader returns ``(train, test)`` :class:`Dataset` pairs of channels_last
float32 images scaled to ``[0, 1]`` (``(N, H, W, C)``) and int32 labels (``(N,)``,
or ``(N, H, W)`` per-pixel masks for the ``shapes`` segmentation set). A missing or
malformed file raises :class:`DatasetError` naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass, field

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A data set file is missing or not in the expected format."""


@dataclass
class Dataset:
    """Images and labels held in host memory.

    Attributes:
      images: ``(N, H, W, C)`` float32 in ``[0, 1]``.
      labels: ``(N,)`` int32 class ids, or ``(N, H, W)`` per-pixel class ids.
      num_classes: number of classes.
      name: the data set's name.
      class_names: one name per class.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)
    task: str = "classify"

    def __post_init__(self):
        if self.task not in ("classify", "segment"):
            raise DatasetError(
                f"{self.name}: task must be 'classify' or 'segment', got {self.task!r}"
            )
        want = 1 if self.task == "classify" else 3
        if self.labels.ndim != want:
            raise DatasetError(
                f"{self.name}: labels of a {self.task} data set must have {want} "
                f"dimension(s), got shape {self.labels.shape}"
            )
        if self.images.ndim != 4:
            raise DatasetError(
                f"{self.name}: images must be (N, H, W, C), got shape {self.images.shape}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise DatasetError(
                f"{self.name}: images and labels must have the same length, got "
                f"{self.images.shape[0]} images and {self.labels.shape[0]} labels"
            )
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])

    def take(self, n: int | None) -> Dataset:
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Dataset(
            self.images[:n],
            self.labels[:n],
            self.num_classes,
            self.name,
            self.class_names,
            self.task,
        )

    def resized(self, size: int | None) -> Dataset:
        """Images resized (bilinear) to ``size x size``; masks by nearest neighbour."""
        if size is None or self.images.shape[1:3] == (size, size):
            return self
        import jax

        n, _, _, c = self.images.shape
        # XLA aborts the interpreter (SIGABRT, not an exception) when it cannot allocate an
        # eager op's output, so the resized arrays must fit before jax sees them.
        planes = c + (1 if self.task == "segment" else 0)
        check_fits(
            n * size * size * planes * 4,
            f"{self.name}: {n} images resized to {size}x{size}",
            "pass a smaller --image-size",
        )
        images = np.asarray(jax.image.resize(self.images, (n, size, size, c), "linear"))
        labels = self.labels
        if self.task == "segment":
            labels = np.asarray(jax.image.resize(labels, (n, size, size), "nearest"))
        return Dataset(
            np.clip(images, 0.0, 1.0).astype(np.float32),
            labels,
            self.num_classes,
            self.name,
            self.class_names,
            self.task,
        )


def host_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, hint: str):
    """Refuse ``nbytes`` of host arrays when they exceed the machine's memory."""
    memory = host_memory()
    if memory is not None and nbytes > memory:
        raise DatasetError(
            f"{what} need {nbytes / 2**30:.1f} GiB of memory, more than this "
            f"machine's {memory / 2**30:.1f} GiB; {hint}"
        )


def load_dataset(
    name: str, data_dir: str | None = None, *, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Load a registered data set (``cnn_jax.train.DATASETS``) as ``(train, test)``.

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
        ``"folder"``, ``"shapes"``, or one added with ``register_dataset``.
      data_dir: the folder with the files (mnist, fashion_mnist, cifar10, folder).
      seed: seeds the ``shapes`` generator and a folder's train/test split.

    Returns:
      ``(train, test)`` datasets.

    >>> train, test = load_dataset("digits")
    >>> train.images.shape[1:], len(test)
    ((8, 8, 1), 360)
    """
    from cnn_jax.train._registry import DATASETS

    if name not in DATASETS:
        raise DatasetError(f"load_dataset: name must be one of {tuple(DATASETS)}, got {name!r}")
    entry = DATASETS[name]
    if entry.needs_data_dir:
        if data_dir is None:
            raise DatasetError(
                f"load_dataset: data_dir must be given for {name!r} (--data-dir), got None"
            )
        if not os.path.isdir(data_dir):
            raise DatasetError(
                f"load_dataset: data_dir must be an existing folder, got {data_dir!r}"
            )
    train, test = entry.load(data_dir, seed)
    for split, data in (("training", train), ("test", test)):
        if len(data) == 0:  # an empty test split would report accuracy NaN
            where = f" in {data_dir}" if data_dir is not None else ""
            raise DatasetError(
                f"load_dataset: the {split} split of {name!r}{where} must hold "
                f"at least one example, got none"
            )
    return train, test


# Loaders in the registry's ``(data_dir, seed)`` form.
def digits_loader(data_dir, seed):
    return load_digits()


def mnist_loader(data_dir, seed):
    return load_idx(data_dir, name="mnist")


def fashion_mnist_loader(data_dir, seed):
    return load_idx(data_dir, name="fashion_mnist")


def cifar10_loader(data_dir, seed):
    return load_cifar10(data_dir)


def folder_loader(data_dir, seed):
    from cnn_jax.train._stream import stream_image_folder

    return stream_image_folder(data_dir, seed=seed)


def imagenet_loader(data_dir, seed):
    from cnn_jax.train._stream import stream_image_folder

    return stream_image_folder(data_dir, seed=seed, recipe="imagenet")


def shapes_loader(data_dir, seed):
    return make_shapes(seed=seed)


def load_digits() -> tuple[Dataset, Dataset]:
    """The 1,797 8x8 handwritten digits bundled with cnn_jax, a fixed stratified split.

    The same images as ``sklearn.datasets.load_digits`` and the split
    ``train_test_split(..., test_size=360, stratify=y, random_state=0)`` (1,437
    training and 360 test images, every class in proportion), stored in the package
    (``cnn_jax/train/data/digits.npz``) so that no scikit-learn import is needed.
    Pixel values 0..16 are scaled to ``[0, 1]``.
    """
    path = os.path.join(os.path.dirname(__file__), "data", "digits.npz")
    with np.load(path) as f:
        x = (f["images"].astype(np.float32) / 16.0)[..., None]
        y = f["labels"].astype(np.int32)
        train_index, test_index = f["train_index"], f["test_index"]
    names = [str(i) for i in range(10)]
    return (
        Dataset(x[train_index], y[train_index], 10, "digits", names),
        Dataset(x[test_index], y[test_index], 10, "digits", names),
    )


# ---------------------------------------------------------------- IDX (MNIST)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _find_file(data_dir: str, stem: str, what: str) -> str:
    for candidate in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"missing file {os.path.join(data_dir, stem)}[.gz]: expected {what}")


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) of unsigned bytes.

    The format: two zero bytes, a type byte (0x08 = uint8), the number of
    dimensions, then one big-endian uint32 per dimension, then the data. The header's
    sizes are checked against the data's length (in exact integers) before any array
    is made, and every dimension but the first must be at least 1.

    Args:
      path: the file.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      A uint8 array of the stored shape.
    """
    what = f"an IDX file of uint8 with {ndim} dimension(s)"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: expected {what} ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"malformed file {path}: expected {what}, bad magic number")
    if raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetError(
            f"malformed file {path}: expected {what}, got type byte "
            f"0x{raw[2]:02x} and {raw[3]} dimension(s)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"malformed file {path}: expected {what}, header is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if 0 in shape[1:]:
        raise DatasetError(
            f"malformed file {path}: expected {what} whose dimensions after "
            f"the first are >= 1, the header says shape {shape}"
        )
    size = math.prod(shape)  # exact: numpy's product would wrap around past 2**63
    if len(raw) - header != size:
        raise DatasetError(
            f"malformed file {path}: expected {what} holding {size} bytes "
            f"for shape {shape}, got {len(raw) - header}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_idx(data_dir: str, *, name: str = "mnist") -> tuple[Dataset, Dataset]:
    """MNIST or Fashion-MNIST from the four standard IDX files (``.gz`` or not)."""
    arrays = {
        key: read_idx(
            _find_file(data_dir, stem, f"the {name} {key.replace('_', ' ')}"),
            3 if key.endswith("images") else 1,
        )
        for key, stem in _IDX_FILES.items()
    }
    names = FASHION_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"malformed files in {data_dir}: expected as many {split} labels as images, "
                f"got {labels.shape[0]} labels and {images.shape[0]} images"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(
                f"malformed {split} labels in {data_dir}: expected classes 0..9, "
                f"got {int(labels.max())}"
            )
        out.append(
            Dataset(
                (images.astype(np.float32) / 255.0)[..., None],
                labels.astype(np.int32),
                10,
                name,
                names,
            )
        )
    return out[0], out[1]


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    what = "a CIFAR-10 python pickle batch (a dict with b'data' (N, 3072) uint8 and b'labels')"
    if not os.path.isfile(path):
        raise DatasetError(f"missing file {path}: expected {what}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(
            f"malformed file {path}: expected {what} ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(batch, dict):
        raise DatasetError(f"malformed file {path}: expected {what}, got a {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(
            f"malformed file {path}: expected {what}, keys are {sorted(map(repr, batch))}"
        )
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except (ValueError, TypeError) as e:  # ragged lists
        raise DatasetError(f"malformed file {path}: expected {what} ({e})") from e
    if data.dtype.kind not in "ui" or labels.dtype.kind not in "ui" or labels.ndim != 1:
        raise DatasetError(
            f"malformed file {path}: expected {what}, got data of dtype "
            f"{data.dtype} and labels of dtype {labels.dtype} and shape "
            f"{labels.shape}"
        )
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"malformed file {path}: expected {what}, got data of shape "
            f"{data.shape} and {labels.shape[0]} labels"
        )
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DatasetError(
            f"malformed file {path}: expected pixel values 0..255, got "
            f"{int(data.min())}..{int(data.max())}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(
            f"malformed file {path}: expected labels 0..9, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def load_cifar10(data_dir: str) -> tuple[Dataset, Dataset]:
    """CIFAR-10 from the python pickle batches (``data_batch_1..5``, ``test_batch``).

    ``data_dir`` may be the ``cifar-10-batches-py`` folder or its parent.
    """
    nested = os.path.join(data_dir, "cifar-10-batches-py")
    if os.path.isdir(nested):
        data_dir = nested
    train = [_read_cifar_batch(os.path.join(data_dir, f"data_batch_{i}")) for i in range(1, 6)]
    test = _read_cifar_batch(os.path.join(data_dir, "test_batch"))
    x_tr = np.concatenate([b[0] for b in train]).astype(np.float32) / 255.0
    y_tr = np.concatenate([b[1] for b in train])
    return (
        Dataset(x_tr, y_tr, 10, "cifar10", CIFAR10_CLASSES),
        Dataset(test[0].astype(np.float32) / 255.0, test[1], 10, "cifar10", CIFAR10_CLASSES),
    )


# ---------------------------------------------------------------- image folder


def decode_image(
    path: str,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """One image file as ``(H, W, C)`` uint8 (Pillow), the decoding every loader shares.

    Args:
      path: the image file.
      size: ``(H, W)`` to resize to (bilinear), or None.
      channels: 1 (grayscale) or 3 (RGB); None keeps grayscale as 1 and makes the
        rest RGB.
      box: ``(left, upper, right, lower)`` region of the image to resize to ``size``
        (a crop and a resize in one resampling), or None for the whole image. A
        callable ``box(width, height)`` returning one is also accepted.

    Raises:
      DatasetError: the file is missing or Pillow cannot read it (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if channels is None:
                channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
            img = img.convert("L" if channels == 1 else "RGB")
            if callable(box):
                box = box(*img.size)
            if size is not None and (box is not None or img.size != (size[1], size[0])):
                img = img.resize((size[1], size[0]), Image.BILINEAR, box=box)
            arr = np.asarray(img, np.uint8)
    except FileNotFoundError as e:
        raise DatasetError(f"missing file {path}: expected an image") from e
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as e:
        # SyntaxError: Pillow's plugins raise it for some truncated headers;
        # DecompressionBombError: more than twice Image.MAX_IMAGE_PIXELS (179M) pixels
        raise DatasetError(
            f"malformed file {path}: expected an image Pillow can read ({type(e).__name__}: {e})"
        ) from e
    return arr[..., None] if arr.ndim == 2 else arr


def read_image(
    path: str, size: tuple[int, int] | None = None, channels: int | None = None
) -> np.ndarray:
    """One image file as ``(H, W, C)`` float32 in ``[0, 1]`` (:func:`decode_image` / 255).

    Args:
      path: the image file.
      size: ``(H, W)`` to resize to (bilinear), or None.
      channels: 1 (grayscale) or 3 (RGB); None keeps grayscale as 1 and makes the
        rest RGB.
    """
    return decode_image(path, size, channels).astype(np.float32) / 255.0


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of ``epoch``: a function of ``(seed, epoch)`` only, so a resumed
    run, another device or process count, and a streamed copy of the same data set all
    see exactly the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _scan_classes(root: str) -> dict[str, list[str]]:
    classes = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    if not classes:
        raise DatasetError(
            f"malformed folder {root}: expected one sub-folder of images per class, found none"
        )
    out = {}
    for c in classes:
        files = sorted(
            os.path.join(root, c, f)
            for f in os.listdir(os.path.join(root, c))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise DatasetError(
                f"malformed folder {os.path.join(root, c)}: expected image files "
                f"({', '.join(IMAGE_EXTENSIONS)}), found none"
            )
        out[c] = files
    return out


def split_image_folder(
    data_dir: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_names: tuple[str, ...] = ("test", "val"),
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The files of an image folder as ``(train, test)`` dicts ``class -> sorted paths``.

    ``data_dir/train/<class>/*`` with ``data_dir/<test_name>/<class>/*`` (the first of
    ``test_names`` that exists) are used as given; otherwise ``data_dir/<class>/*`` is
    split per class (stratified), ``test_fraction`` held out, the split fixed by
    ``seed``.
    """
    train_dir = os.path.join(data_dir, "train")
    test_dir = next(
        (os.path.join(data_dir, t) for t in test_names if os.path.isdir(os.path.join(data_dir, t))),
        None,
    )
    if os.path.isdir(train_dir) and test_dir is not None:
        train_files, test_files = _scan_classes(train_dir), _scan_classes(test_dir)
        if sorted(train_files) != sorted(test_files):
            raise DatasetError(
                f"malformed folder {data_dir}: expected the same class "
                f"sub-folders in train/ and {os.path.basename(test_dir)}/, "
                f"got {sorted(train_files)} and {sorted(test_files)}"
            )
        return train_files, test_files
    files = _scan_classes(data_dir)
    rng = np.random.default_rng(seed)
    train_files, test_files = {}, {}
    for c, paths in files.items():
        order = rng.permutation(len(paths))
        n_test = int(round(len(paths) * test_fraction)) if len(paths) > 1 else 0
        test_files[c] = [paths[i] for i in sorted(order[:n_test])]
        train_files[c] = [paths[i] for i in sorted(order[n_test:])]
    if not any(test_files.values()):
        most = max(len(p) for p in files.values())
        raise DatasetError(
            f"malformed folder {data_dir}: expected enough images per class to hold out a "
            f"test split ({test_fraction:g} of each class, rounded), got at most {most} "
            f"image(s) per class, so none held out; add images, or give train/ and test/ "
            f"sub-folders"
        )
    return train_files, test_files


def load_image_folder(
    data_dir: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
) -> tuple[Dataset, Dataset]:
    """An image folder with one sub-folder per class, read into memory (Pillow).

    ``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (or ``val/``) when
    both exist; otherwise ``data_dir/<class>/*`` split per class (stratified) with
    ``test_fraction`` held out, the split fixed by ``seed``. Every image is
    resized to ``image_size`` (default: the first image's size); all are grayscale
    if the first one is, else RGB. ``--dataset folder`` streams the same images
    from disk instead (``cnn_jax.train._stream``), batch for batch the same.
    """
    train_files, test_files = split_image_folder(data_dir, test_fraction=test_fraction, seed=seed)
    classes = sorted(train_files)
    first_path = train_files[classes[0]][0]
    first = read_image(first_path)
    size = image_size or first.shape[:2]
    channels = first.shape[2]

    def build(split):
        images, labels = [], []
        for label, c in enumerate(classes):
            for p in split[c]:
                images.append(read_image(p, size, channels))
                labels.append(label)
        arr = np.stack(images) if images else np.zeros((0, *size, channels), np.float32)
        return Dataset(
            arr.astype(np.float32), np.asarray(labels, np.int32), len(classes), "folder", classes
        )

    return build(train_files), build(test_files)


# ---------------------------------------------------------------- shapes (segmentation)

SHAPES_CLASSES = ["background", "circle", "square", "triangle"]


def make_shapes(
    n_train: int = 512, n_test: int = 128, size: int = 32, *, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """A synthetic segmentation set: circles, squares and triangles with masks.

    Each RGB image holds one to three shapes of random colour on a noisy dark
    background; the mask gives every pixel its class (0 background, 1 circle,
    2 square, 3 triangle; later shapes cover earlier ones).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    def one():
        img = rng.uniform(0.0, 0.15, (size, size, 3)).astype(np.float32)
        mask = np.zeros((size, size), np.int32)
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(1, 4))
            r = rng.uniform(size * 0.12, size * 0.25)
            cy, cx = rng.uniform(r, size - r, 2)
            if kind == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif kind == 2:
                inside = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r * 0.8)
            else:  # upward triangle: below the two slanted edges, above the base
                top, base = cy - r, cy + r * 0.8
                half = (yy - top) / (base - top) * r
                inside = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
            img[inside] = rng.uniform(0.4, 1.0, 3)
            mask[inside] = kind
        return img, mask

    def build(n):
        pairs = [one() for _ in range(n)]
        return Dataset(
            np.stack([p[0] for p in pairs]),
            np.stack([p[1] for p in pairs]),
            len(SHAPES_CLASSES),
            "shapes",
            SHAPES_CLASSES,
            task="segment",
        )

    return build(n_train), build(n_test)
