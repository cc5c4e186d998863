"""The training configuration: one frozen dataclass, plus a quick/smoke variant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cnn_jax.ops._args import check_choice

MODELS = ("lenet5", "simple_cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "unet")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "folder", "shapes")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`cnn_jax.train.train_and_evaluate` and :func:`fit` need.

    The defaults are the ``cnn-jax train`` recipe: LeNet-5 on scikit-learn's digits
    (resized to 32x32), AdamW 5e-3 with cosine decay, batch 32, 20 epochs, random
    shifts: 98.6-99.2% test accuracy over seeds 0-4 in 7-16 s on a 2-core CPU.

    Attributes:
      model: one of ``MODELS``; None picks the data set's default (``lenet5``
        for classification, ``unet`` for ``shapes``).
      dataset: one of ``DATASETS``.
      data_dir: folder holding the data set's files (not used by digits/shapes).
      epochs: passes over the training set.
      batch_size: global batch size (split over all devices; must divide evenly).
      optimizer: ``"sgd"`` (momentum 0.9, Nesterov) or ``"adamw"``.
      lr: peak learning rate.
      schedule: ``"cosine"`` (decay to 0) or ``"constant"``, after ``warmup``.
      warmup: linear warm-up length in epochs (may be fractional).
      weight_decay: decoupled weight decay on kernels (not on biases or norms).
      augment: random crop (padding 4, or 1 for images <= 16 px) and, for natural
        images, horizontal flip, applied on device.
      dtype: compute dtype; ``"bfloat16"`` keeps params and optimiser state in f32.
      seed: seeds initialisation, data order, augmentation and dropout.
      out: output folder (checkpoints, metrics.jsonl, summary.json, plots);
        None writes nothing.
      resume: continue from the latest checkpoint in ``out``.
      quiet: no progress bar or log lines.
      keep_checkpoints: how many of the latest checkpoints to keep (the best is
        always kept as well).
      eval_batch_size: batch size for evaluation (padded, one compilation).
      num_devices: devices of the ``data`` mesh axis; None uses all local devices.
      image_size: resize inputs to ``image_size x image_size`` once, on load; None
        keeps the data set's size (LeNet-5 always gets 32).
      width: channel width of ``simple_cnn`` / base width of ``unet``; None keeps
        the model's default.
      limit: use only the first ``limit`` training and test examples (smoke runs).
    """

    model: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 5e-3
    schedule: str = "cosine"
    warmup: float = 1.0
    weight_decay: float = 5e-4
    augment: bool = True
    dtype: str = "float32"
    seed: int = 0
    out: str | None = None
    resume: bool = False
    quiet: bool = False
    keep_checkpoints: int = 2
    eval_batch_size: int = 512
    num_devices: int | None = None
    image_size: int | None = None
    width: int | None = None
    limit: int | None = None

    def __post_init__(self):
        op = "TrainConfig"
        if self.model is not None:
            check_choice(self.model, MODELS, "model", op)
        check_choice(self.dataset, DATASETS, "dataset", op)
        check_choice(self.optimizer, OPTIMIZERS, "optimizer", op)
        check_choice(self.schedule, SCHEDULES, "schedule", op)
        check_choice(self.dtype, DTYPES, "dtype", op)
        for name in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
        for name in ("num_devices", "image_size", "width", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{op}: {name} must be None or a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"{op}: lr must be > 0, got {self.lr!r}")
        if not self.warmup >= 0:
            raise ValueError(f"{op}: warmup must be >= 0 epochs, got {self.warmup!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"{op}: weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.resume and self.out is None:
            raise ValueError(f"{op}: resume must come with an out folder, got out=None")

    @property
    def model_name(self) -> str:
        """The model to build: ``model``, or the data set's default."""
        if self.model is not None:
            return self.model
        return "unet" if self.dataset == "shapes" else "lenet5"

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def quick(cls, **changes) -> TrainConfig:
        """A smoke-test variant: one epoch on 256 examples, a narrow model, no output.

        >>> TrainConfig.quick().epochs
        1
        """
        base = dict(epochs=1, batch_size=32, eval_batch_size=64, limit=256, width=8,
                    quiet=True, warmup=0.0, keep_checkpoints=1)
        base.update(changes)
        return cls(**base)
