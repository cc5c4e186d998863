"""Image folders streamed from disk: Grain worker processes decode and augment the batches.

An :class:`ImageStream` is the streamed counterpart of :class:`~cnn_jax.train.Dataset`:
one split's file names and labels (a few bytes per image) and its decoding recipe;
nothing is decoded up front, so a data set may be larger than memory.

A :class:`BatchPlan` lists, in order, every batch a run will consume: for each epoch
the training batches (from the resume step on), then one pass over the test set.
Batch ``k`` of a plan is a pure function of the plan:

- global training batch ``i`` of epoch ``e`` holds the examples
  ``epoch_order(seed, e, n)[i * B:(i + 1) * B]`` (the in-memory loader's order), and a
  process builds only its rows of it (``local_rows``);
- an example's random crop and flip draw from ``default_rng([seed, e, index])``.

Nothing depends on the worker count, the process count or where a run was stopped,
so a resumed run replays the same batches from its step alone, and a streamed
``folder`` is batch for batch the in-memory one (same decoding, same order, the same
on-device shifts and flips, which are keyed by ``index`` too).

:func:`open_batches` runs a plan with Grain: ``MapDataset.source(plan)
.to_iter_dataset().mp_prefetch()``; each of ``workers`` processes builds every
``workers``-th batch and hands it over in shared memory (``workers=0``: a thread of
this process builds them). Images travel as uint8; the feed (``_feed``) scales and
normalises them on the device. This module imports no jax (Grain does, in its
workers).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass

import numpy as np

from cnn_jax.train._data import Dataset, DatasetError, decode_image, epoch_order, split_image_folder

RECIPES = ("folder", "imagenet")
BAD_IMAGE_POLICIES = ("error", "skip")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
CROP_FRACTION = 0.875  # evaluation: resize the shorter side to size / 0.875, centre crop
MAX_DEFAULT_WORKERS = 16
SKIP_HINT = "pass --on-bad-image skip to skip unreadable images"


class InputWorkerError(DatasetError):
    """An input worker process died (killed, out of memory, a crash in a decoder)."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Input worker processes when ``--workers`` is not given: one per usable core (at
    most 16)."""
    return max(1, min(usable_cores(), MAX_DEFAULT_WORKERS))


_CAPPED: set = set()  # (asked, cores) already noted on stderr


def cap_workers(workers: int | None) -> int | None:
    """``workers`` capped at the usable cores: more processes than cores only add start-up
    time and memory (each imports jax and Grain), and a typo such as ``--workers 1000``
    must not fork a thousand. A cap is noted once on stderr; None and 0 pass."""
    if not workers:
        return workers
    cores = usable_cores()
    if workers <= cores:
        return workers
    if (workers, cores) not in _CAPPED:
        _CAPPED.add((workers, cores))
        print(
            f"note: --workers {workers} is more than the {cores} usable cores; using "
            f"{cores} input worker processes",
            file=sys.stderr,
        )
    return cores


# ---------------------------------------------------------------- crop boxes


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The ``(left, upper, right, lower)`` box of a random-resized crop (Szegedy et al.
    2015; torchvision's ``RandomResizedCrop.get_params``): an area fraction in
    ``scale`` and a log-uniform aspect ratio in ``ratio``, ten tries, else the
    centred crop of the nearest allowed ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_box(
    width: int, height: int, size: tuple[int, int], crop_fraction: float = CROP_FRACTION
) -> tuple[float, ...]:
    """The box of the evaluation crop, in the source image's pixels: torchvision's
    ``Resize(max(size) / crop_fraction)`` (the shorter side to 256 for 224, the longer
    in proportion, truncated) then ``CenterCrop(size)``, resampled once."""
    short = int(round(max(size) / crop_fraction))
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    top = int(round((new_h - size[0]) / 2))
    left = int(round((new_w - size[1]) / 2))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + size[1]) * sx, (top + size[0]) * sy)


# ---------------------------------------------------------------- the stream


@dataclass(frozen=True, eq=False)
class ImageStream:
    """One split of an image folder, read from disk batch by batch.

    Attributes:
      root: the folder the ``files`` are relative to.
      files: ``(N,)`` bytes, each file's path relative to ``root`` (compact: no
        Python string per image, and cheap to send to the worker processes).
      labels: ``(N,)`` int32 class ids.
      num_classes, name, class_names, task: as :class:`~cnn_jax.train.Dataset`'s.
      size: ``(H, W)`` of the images a batch holds.
      channels: 1 or 3.
      recipe: ``"folder"`` (resize the whole image; the train step shifts and flips
        on the device) or ``"imagenet"`` (random-resized crop and flip here for
        training, resize and centre crop for evaluation; ImageNet mean/std).
      split: ``"train"`` or ``"test"``.
      augment: whether a ``"train"`` split of the ``imagenet`` recipe is augmented.
      workers: input worker processes (None: :func:`default_workers`; 0: in-process;
        at most the usable cores, see :func:`cap_workers`).
      on_bad_image: ``"error"`` (stop, naming the file) or ``"skip"``.
      unread: the errors of the files that could not be read while the split was sized
        (:func:`stream_image_folder`); :meth:`with_options` raises the first under
        ``on_bad_image="error"``.
    """

    root: str
    files: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: list
    size: tuple
    channels: int
    recipe: str = "folder"
    split: str = "train"
    augment: bool = True
    workers: int | None = None
    on_bad_image: str = "error"
    task: str = "classify"
    unread: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "workers", cap_workers(self.workers))
        if self.recipe not in RECIPES:
            raise DatasetError(f"ImageStream: recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise DatasetError(
                f"ImageStream: on_bad_image must be one of "
                f"{BAD_IMAGE_POLICIES}, got {self.on_bad_image!r}"
            )
        if self.files.shape != self.labels.shape:
            raise DatasetError(
                f"{self.name}: files and labels must have the same length, "
                f"got {self.files.shape[0]} files and {self.labels.shape[0]} "
                f"labels"
            )

    def __len__(self) -> int:
        return int(self.files.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image as the model sees it."""
        return (int(self.size[0]), int(self.size[1]), int(self.channels))

    @property
    def augments_on_host(self) -> bool:
        """Whether batches are augmented here (then the train step must not augment)."""
        return self.recipe == "imagenet" and self.split == "train"

    @property
    def normalization(self) -> tuple[tuple, tuple] | None:
        """``(mean, std)`` per channel applied after scaling to ``[0, 1]``, or None."""
        return (IMAGENET_MEAN, IMAGENET_STD) if self.recipe == "imagenet" else None

    def replace(self, **changes) -> ImageStream:
        return dataclasses.replace(self, **changes)

    def take(self, n: int | None) -> ImageStream:
        """The first ``n`` files (all when ``n`` is None), like ``Dataset.take``."""
        if n is None or n >= len(self):
            return self
        return self.replace(files=self.files[:n], labels=self.labels[:n])

    def resized(self, size: int | None) -> ImageStream:
        """Batches of ``size x size`` images (the crop size for ``imagenet``)."""
        return self if size is None else self.replace(size=(size, size))

    def with_options(self, **options) -> ImageStream:
        """A copy with a run's reading options (``workers``, ``on_bad_image``,
        ``augment``). Under ``on_bad_image="error"`` a file that could not be read while
        the split was sized raises here, before a run starts."""
        out = self.replace(**options)
        if out.on_bad_image == "error" and out.unread:
            raise DatasetError(f"{out.unread[0]}; {SKIP_HINT}")
        return out

    def path(self, i: int) -> str:
        """The file of example ``i``."""
        return os.path.join(self.root, os.fsdecode(self.files[i]))

    def fingerprint(self) -> dict:
        """The file list's identity (count and SHA-1 of names and labels): a checkpoint
        records it, and a resume on a folder that changed since is refused."""
        h = hashlib.sha1(self.files.tobytes())
        h.update(self.labels.astype("<i4").tobytes())
        return {"files": len(self), "sha1": h.hexdigest()}

    def input_record(self) -> dict:
        """How evaluation prepares an image (``run.json``'s ``input``; predict reads it)."""
        norm = self.normalization
        return {
            "recipe": self.recipe,
            "size": list(self.image_shape),
            "mean": list(norm[0]) if norm else None,
            "std": list(norm[1]) if norm else None,
        }

    def load(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Example ``i`` as ``(H, W, C)`` uint8: the recipe's training transform when
        ``rng`` is given (``imagenet``: random-resized crop, flip), else its evaluation
        transform."""
        return load_image(self.path(i), self.recipe, self.size, self.channels, rng)

    def batches(
        self, batch_size: int, *, epoch: int = 0, seed: int = 0, workers: int | None = None
    ):
        """One epoch of host batches in a run's order, for loops of one's own.

        Yields ``{"image": (B, H, W, C) uint8, "label": (B,) int32, "index": (B,)
        int32}`` (the last partial batch dropped), built by ``workers`` processes
        (default: the stream's, else one per core), the ``train`` split augmented by
        its recipe. The workers stop when the generator ends or is closed.

        >>> train, _ = load_dataset("imagenet", "/data/imagenet")  # doctest: +SKIP
        >>> next(train.batches(256, workers=8))["image"].shape       # doctest: +SKIP
        (256, 224, 224, 3)
        """
        steps = len(self) // batch_size
        plan = BatchPlan(
            [Part("train", epoch, 0, steps)],
            train=self,
            seed=seed,
            batch_size=batch_size,
            rows=slice(0, batch_size),
        )
        workers = cap_workers(workers) if workers is not None else self.workers
        iterator = open_batches(plan, default_workers() if workers is None else workers)
        try:
            for batch in iterator:
                batch = {k: to_private(v) for k, v in batch.items()}
                del batch["where"], batch["bad"]
                yield batch
        finally:
            close_batches(iterator)

    def to_dataset(self) -> Dataset:
        """Every image decoded (evaluation transform) into an in-memory ``Dataset``, with
        the normalisation applied: for small sets and checks."""
        images = (
            np.stack([self.load(i) for i in range(len(self))])
            if len(self)
            else np.zeros((0, *self.image_shape), np.uint8)
        )
        return Dataset(
            normalize(images, self.normalization),
            self.labels.copy(),
            self.num_classes,
            self.name,
            list(self.class_names),
        )


def load_image(
    path: str, recipe: str, size, channels: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One file through a recipe's transform, as ``(H, W, C)`` uint8 (see
    :meth:`ImageStream.load`); predict uses it with ``rng=None``."""
    if recipe == "folder":
        return decode_image(path, tuple(size), channels)
    size = tuple(size)
    if rng is None:
        return decode_image(path, size, channels, box=lambda w, h: center_crop_box(w, h, size))
    image = decode_image(path, size, channels, box=lambda w, h: random_resized_crop_box(w, h, rng))
    return image[:, ::-1] if rng.random() < 0.5 else image


def normalize(images: np.ndarray, norm) -> np.ndarray:
    """uint8 images as float32 in ``[0, 1]``, then ``(x - mean) / std`` when ``norm``
    is given: on the host, what the feed does on the device."""
    x = images.astype(np.float32) / 255.0
    if norm is not None:
        x = (x - np.asarray(norm[0], np.float32)) / np.asarray(norm[1], np.float32)
    return x


def lookup_table(norm, channels: int) -> np.ndarray:
    """``(channels, 256)`` float32: ``table[c, v]`` is :func:`normalize` of value ``v`` in
    channel ``c`` (the device looks pixels up in it)."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)
    return np.ascontiguousarray(normalize(values, norm).T)


def stream_image_folder(
    data_dir: str,
    *,
    seed: int = 0,
    recipe: str = "folder",
    test_fraction: float = 0.2,
    image_size: int | None = None,
) -> tuple[ImageStream, ImageStream]:
    """An image folder as ``(train, test)`` streams (nothing decoded but one image).

    ``data_dir/train/<class>/*`` with ``data_dir/val/<class>/*`` or ``test/`` (the
    ImageNet layout), or ``data_dir/<class>/*`` split per class (see
    ``split_image_folder``). ``recipe="folder"`` sizes batches like the first readable
    training image (grey if it is grey); the files before it that could not be read are
    recorded in the train stream's ``unread`` (an error under ``on_bad_image="error"``,
    skipped under ``"skip"``). ``"imagenet"`` makes 224 x 224 RGB crops; ``image_size``
    (or ``--image-size`` through ``resized``) overrides.
    """
    train_files, test_files = split_image_folder(data_dir, test_fraction=test_fraction, seed=seed)
    classes = sorted(train_files)
    unread: list[str] = []
    if recipe == "folder":
        first = None
        for path in (p for c in classes for p in train_files[c]):
            try:
                first = decode_image(path)
                break
            except DatasetError as e:
                unread.append(str(e))
        if first is None:
            raise DatasetError(
                f"no readable image in {data_dir}: all {len(unread)} files of "
                f"the train split failed to decode; the first: {unread[0]}"
            )
        size, channels = tuple(first.shape[:2]), int(first.shape[2])
    else:
        size, channels = (IMAGENET_SIZE, IMAGENET_SIZE), 3
    if image_size is not None:
        size = (image_size, image_size)

    def build(split_files, split):
        names = [os.fsencode(os.path.relpath(p, data_dir)) for c in classes for p in split_files[c]]
        labels = np.asarray([k for k, c in enumerate(classes) for _ in split_files[c]], np.int32)
        return ImageStream(
            data_dir,
            np.asarray(names, dtype=np.bytes_).reshape(-1),
            labels,
            len(classes),
            recipe,
            classes,
            size,
            channels,
            recipe=recipe,
            split=split,
            unread=tuple(unread) if split == "train" else (),
        )

    return build(train_files, "train"), build(test_files, "test")


# ---------------------------------------------------------------- the plan of a run


@dataclass(frozen=True)
class Part:
    """``count`` consecutive batches of one kind, from batch ``first`` of ``epoch``."""

    kind: str  # "train" or "eval"
    epoch: int
    first: int
    count: int


KINDS = {"train": 0, "eval": 1}


class BatchPlan:
    """Every batch a run consumes, in order; ``plan[k]`` builds batch ``k`` (a
    ``Sequence``, Grain's random-access source).

    A training batch is ``{"image": (L, H, W, C) uint8, "label", "index"}``; an
    evaluation batch ``{"image", "label", "valid"}`` (``valid`` 0 on the padding rows
    after the last example and on unreadable files that were skipped). Both carry
    ``"where"`` = ``(kind, epoch, batch)`` and ``"bad"``, the indices of the files
    that could not be read and were skipped.

    Args:
      parts: the :class:`Part` s in order.
      train, test: the streams (either may be None when no part needs it).
      seed: the run's seed (order and augmentation).
      batch_size, rows: the global training batch and this process's rows of it.
      eval_batch_size, eval_rows: the same for evaluation batches.
    """

    def __init__(
        self,
        parts,
        *,
        train: ImageStream | None = None,
        test: ImageStream | None = None,
        seed: int = 0,
        batch_size: int = 1,
        rows: slice = slice(0, 1),
        eval_batch_size: int = 1,
        eval_rows: slice = slice(0, 1),
    ):
        self.parts = [p for p in parts if p.count > 0]
        self.train, self.test, self.seed = train, test, seed
        self.batch_size, self.rows = batch_size, (rows.start, rows.stop)
        self.eval_batch_size, self.eval_rows = eval_batch_size, (eval_rows.start, eval_rows.stop)
        self._ends = np.cumsum([p.count for p in self.parts]).tolist()
        self._orders: dict[int, np.ndarray] = {}

    @classmethod
    def for_run(
        cls,
        train: ImageStream,
        test: ImageStream | None,
        *,
        seed: int,
        batch_size: int,
        rows: slice,
        steps_per_epoch: int,
        start_step: int,
        epochs: int,
        eval_batch_size: int,
        eval_rows: slice,
        eval_first: bool = False,
    ) -> BatchPlan:
        """The batches of a run from ``start_step`` to the end of ``epochs``, each epoch's
        evaluation pass after its training batches (``eval_first``: the run stopped
        between an epoch's last step and its evaluation, which comes first)."""
        epoch, offset = divmod(start_step, steps_per_epoch)
        if eval_first:
            epoch, offset = epoch - 1, steps_per_epoch
        n_eval = -(-len(test) // eval_batch_size) if test is not None and len(test) else 0
        parts = []
        for e in range(epoch, epochs):
            parts.append(Part("train", e, offset, steps_per_epoch - offset))
            parts.append(Part("eval", e, 0, n_eval))
            offset = 0
        return cls(
            parts,
            train=train,
            test=test,
            seed=seed,
            batch_size=batch_size,
            rows=rows,
            eval_batch_size=eval_batch_size,
            eval_rows=eval_rows,
        )

    @classmethod
    def for_evaluation(
        cls, test: ImageStream, *, eval_batch_size: int, eval_rows: slice
    ) -> BatchPlan:
        """One pass over ``test``."""
        n_eval = -(-len(test) // eval_batch_size)
        return cls(
            [Part("eval", 0, 0, n_eval)],
            test=test,
            eval_batch_size=eval_batch_size,
            eval_rows=eval_rows,
        )

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __repr__(self) -> str:
        return f"BatchPlan({len(self)} batches, {self.parts[:2]}...)"

    def __getstate__(self):  # the orders are rebuilt where they are needed
        return dict(self.__dict__, _orders={})

    def locate(self, k: int) -> tuple[str, int, int]:
        """``(kind, epoch, batch)`` of batch ``k``."""
        j = bisect.bisect_right(self._ends, k)
        part = self.parts[j]
        start = self._ends[j] - part.count
        return part.kind, part.epoch, part.first + (k - start)

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(f"BatchPlan: batch must be in [0, {len(self)}), got {k}")
        kind, epoch, i = self.locate(k)
        batch = self._train(epoch, i) if kind == "train" else self._eval(i)
        batch["where"] = np.asarray([KINDS[kind], epoch, i], np.int64)
        return batch

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            self._orders.clear()  # one epoch at a time: memory stays one order
            order = self._orders[epoch] = epoch_order(self.seed, epoch, len(self.train))
        return order

    def _train(self, epoch: int, i: int) -> dict:
        stream = self.train
        start, stop = self.rows
        index = self._order(epoch)[i * self.batch_size + start : i * self.batch_size + stop]
        images = np.empty((len(index), *stream.image_shape), np.uint8)
        labels = np.empty((len(index),), np.int32)
        bad: list[int] = []
        host_augment = stream.augments_on_host and stream.augment
        for row, j in enumerate(index):
            rng = np.random.default_rng([self.seed, epoch, int(j)]) if host_augment else None
            k, images[row] = _read(stream, int(j), rng, bad, substitute=True)
            labels[row] = stream.labels[k]
        return {
            "image": images,
            "label": labels,
            "index": index.astype(np.int32),
            "bad": np.asarray(bad, np.int64),
        }

    def _eval(self, i: int) -> dict:
        stream = self.test
        n = len(stream)
        start, stop = self.eval_rows
        position = np.arange(i * self.eval_batch_size + start, i * self.eval_batch_size + stop)
        valid = (position < n).astype(np.float32)
        images = np.zeros((len(position), *stream.image_shape), np.uint8)
        labels = np.zeros((len(position),), np.int32)
        bad: list[int] = []
        for row, j in enumerate(position):
            if j >= n:  # padding: weight 0, nothing to decode
                continue
            k, image = _read(stream, int(j), None, bad, substitute=False)
            if k is None:
                valid[row] = 0.0
            else:
                images[row], labels[row] = image, stream.labels[k]
        return {"image": images, "label": labels, "valid": valid, "bad": np.asarray(bad, np.int64)}


def _read(stream: ImageStream, j: int, rng, bad: list, *, substitute: bool):
    """``(index, image)`` of example ``j``. An unreadable file raises (``on_bad_image``
    "error", naming it), or is recorded in ``bad`` and skipped: in training its place
    is taken by the next readable file of the data set (so that batches keep their
    size and the run stays a function of its step), in evaluation it gets weight 0
    (``(None, None)``)."""
    n = len(stream)
    for t in range(n):
        k = (j + t) % n
        try:
            return k, stream.load(k, rng)
        except DatasetError as e:
            if stream.on_bad_image == "error":
                raise DatasetError(f"{e}; {SKIP_HINT}") from None
            bad.append(k)
            if not substitute:
                return None, None
    raise DatasetError(
        f"no readable image in {stream.root}: all {n} files of the "
        f"{stream.split} split failed to decode"
    )


# ---------------------------------------------------------------- running a plan


def _grain_ready():
    """Grain reads absl flags; an application that never parsed them must say so."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _init_worker(index: int, count: int):
    """Runs first in each worker process. Ctrl-C and SIGTERM are the training process's
    to handle (it stops the workers itself); a worker whose parent died exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the trainer decides
    parent = os.getppid()

    def watch():
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cnn_jax-parent-watch", daemon=True).start()


def open_batches(plan: BatchPlan, workers: int, *, buffer: int = 2):
    """An iterator over ``plan``'s batches in order, built by ``workers`` processes
    (``0``: by one thread of this process), each at most ``buffer`` batches ahead.
    Close it (``.close()``) to stop the workers."""
    _grain_ready()
    import grain

    ds = grain.MapDataset.source(plan).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer)
    )
    if workers > 0:
        # Labels and indices travel pickled (a shared-memory segment per small array costs
        # more than the copy); Grain copies the images into shared memory. (A batch built
        # in shared memory directly would leak its segment when a worker stops with
        # batches it has not handed over.)
        ds = grain.experimental.WithOptionsIterDataset(
            ds, grain.experimental.DatasetOptions(min_shm_size=1 << 16)
        )
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
            worker_init_fn=_init_worker,
        )
    return iter(ds)


def to_private(leaf):
    """A leaf of a batch handed over by a worker, as an ordinary array: copied out of
    its shared-memory segment, which is unlinked at once. No shared-memory array
    outlives the batch, so none is left to Python's shutdown (where Grain's
    ``__del__`` would print ``'NoneType' object has no attribute 'mmap'``) and none
    is reported leaked by the resource tracker."""
    shm = getattr(leaf, "shm", None)
    if shm is None:
        return leaf
    out = np.array(leaf)
    shm.unlink()
    leaf._unlink_on_del = False  # Grain's flag: its __del__ then only closes the mapping
    return out


def close_batches(iterator):
    """Stop ``open_batches``'s workers, and wait until the shared memory of batches they
    had handed over but nobody consumed is unlinked (Grain unlinks on a thread: at
    interpreter exit, pending unlinks would be reported as leaks)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    from grain.python import SharedMemoryArray

    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)  # one thread, in order
    if pool is not None:
        pool.apply(lambda: None)


_WORKER_DIED = re.compile(r"terminated unexpectedly with exit code (-?\d+)")


def worker_error(error: BaseException) -> BaseException:
    """Grain's error for a worker that died, as an :class:`InputWorkerError` saying what
    happened; any other error unchanged."""
    match = _WORKER_DIED.search(str(error)) if isinstance(error, RuntimeError) else None
    if match is None:
        return error
    code = int(match.group(1))
    how = f"exit code {code}"
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    hint = (
        " (SIGKILL is what the out-of-memory killer sends: fewer --workers or a "
        "smaller --batch-size need less memory)"
        if code == -signal.SIGKILL
        else ""
    )
    return InputWorkerError(
        f"an input worker process died ({how}){hint}; the run cannot continue without "
        f"its batches: continue from the last checkpoint with --resume"
    )
