"""The training configuration: one frozen dataclass, the single source of the CLI's flags.

Every field carries its help text in ``metadata``; ``cnn-jax train`` makes one flag
per field from it (``--batch-size`` from ``batch_size``), with the field's default
shown, so a new option is one field here. ``run.json`` is :meth:`TrainConfig.to_dict`.
This module imports no jax: ``cnn-jax --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cnn_jax.train import _registry

OPTIMIZERS = ("sgd", "adamw")
BAD_IMAGE_POLICIES = ("error", "skip")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")

# Fields that may differ between a run and its --resume (everything else must match).
RESUMABLE = ("epochs", "data_dir", "out", "resume", "quiet", "keep_checkpoints",
             "checkpoint_every", "eval_batch_size", "num_devices", "workers", "on_bad_image")


class ConfigError(ValueError):
    """A configuration value a user gave is not allowed (the CLI prints it in one line)."""


def _field(default, help: str, **cli):
    return field(default=default, metadata=dict(help=help, **cli))


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`~cnn_jax.train.train_and_evaluate` and :func:`~cnn_jax.train.fit` need.

    The defaults are the ``cnn-jax train`` recipe, chosen by measurement
    (``benchmarks/train.py``): a two-conv CNN on scikit-learn's 8x8 digits at their
    native size, random one-pixel shifts, AdamW 3e-3 with one warm-up epoch and
    cosine decay, batch 64, 15 epochs. Each field's ``metadata["help"]`` says what
    it does (``cnn-jax train --help`` prints them).
    """

    model: str | None = _field(None, "architecture (default: the data set's default model)",
                               choices="models")
    dataset: str = _field("digits", "data set", choices="datasets")
    data_dir: str | None = _field(None, "folder with the data set's files "
                                        "(mnist, fashion_mnist, cifar10, folder)")
    epochs: int = _field(15, "passes over the training set")
    batch_size: int = _field(64, "global batch size (split over all devices)")
    optimizer: str = _field("adamw", "adamw, or sgd (momentum 0.9, Nesterov)",
                            choices=OPTIMIZERS)
    lr: float = _field(3e-3, "peak learning rate")
    schedule: str = _field("cosine", "after warm-up: cosine decay to 0, or constant",
                           choices=SCHEDULES)
    warmup: float = _field(1.0, "linear warm-up, in epochs (may be fractional)")
    weight_decay: float = _field(1e-4, "decoupled weight decay on kernels (not biases/norms)")
    augment: bool = _field(True, "random shifts (1 px for images <= 16 px, else 4 px; "
                                 "zero fill) and, for RGB sets, horizontal flips")
    dtype: str = _field("float32", "compute dtype (params and optimiser state stay float32)",
                        choices=DTYPES)
    seed: int = _field(0, "seeds initialisation, data order, augmentation and dropout")
    out: str | None = _field(None, "output folder (default: runs/MODEL-DATASET-TIME)")
    resume: bool = _field(False, "continue the run in --out from its latest checkpoint, "
                                 "with the configuration in its run.json")
    quiet: bool = _field(False, "no progress bar or per-epoch lines")
    keep_checkpoints: int = _field(2, "latest checkpoints to keep (the best is kept too)")
    checkpoint_every: float = _field(300.0, "seconds between checkpoints (written at an "
                                            "epoch's end; 0: every epoch); always at the end "
                                            "and on interrupt")
    eval_batch_size: int = _field(512, "evaluation batch size")
    num_devices: int | None = _field(None, "devices to use (default: all)", flag="--devices")
    image_size: int | None = _field(None, "resize inputs to SIZE x SIZE (default: the data "
                                          "set's size, or the model's fixed size)")
    width: int | None = _field(None, "channel width of models that have one "
                                     "(digits_cnn, simple_cnn, unet)")
    limit: int | None = _field(None, "use only the first N train and test examples")
    workers: int | None = _field(None, "processes decoding and augmenting streamed images "
                                       "(folder, imagenet); 0: in this process (default: "
                                       "one per core, at most 16)")
    on_bad_image: str = _field("error", "an unreadable image in a streamed data set: stop "
                                        "the run naming the file (error), or skip it and "
                                        "count it in summary.json (skip)",
                               choices=BAD_IMAGE_POLICIES)

    def __post_init__(self):
        op = "TrainConfig"
        if self.model is not None and self.model not in _registry.MODELS:
            raise ConfigError(f"{op}: model must be one of {tuple(_registry.MODELS)}, "
                             f"got {self.model!r}")
        if self.dataset not in _registry.DATASETS:
            raise ConfigError(f"{op}: dataset must be one of {tuple(_registry.DATASETS)}, "
                             f"got {self.dataset!r}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("dtype", DTYPES), ("on_bad_image", BAD_IMAGE_POLICIES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{op}: {name} must be one of {choices}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
            _check_int(getattr(self, name), name, op, optional=False)
        for name in ("num_devices", "image_size", "width", "limit"):
            _check_int(getattr(self, name), name, op, optional=True)
        for name in ("seed", "workers"):
            value = getattr(self, name)
            if (value is None and name == "workers") or (
                    not isinstance(value, bool) and isinstance(value, int) and value >= 0):
                continue
            rule = "None or an int >= 0" if name == "workers" else "an int >= 0"
            raise ConfigError(f"{op}: {name} must be {rule}, got {value!r}")
        for name, rule, ok in (("lr", "be > 0", self.lr > 0),
                               ("warmup", "be >= 0 epochs", self.warmup >= 0),
                               ("weight_decay", "be >= 0", self.weight_decay >= 0),
                               ("checkpoint_every", "be >= 0 seconds",
                                self.checkpoint_every >= 0)):
            if not ok:  # also catches NaN
                raise ConfigError(f"{op}: {name} must {rule}, got {getattr(self, name)!r}")
        if self.resume and self.out is None:
            raise ConfigError(f"{op}: resume must come with an out folder, got out=None")
        model = _registry.MODELS[self.model_name]
        task = _registry.DATASETS[self.dataset].task
        if model.task != task:
            raise ConfigError(
                f"{op}: model must suit the {self.dataset!r} data set's task ({task}), got "
                f"{self.model_name!r} (task {model.task}); e.g. --model "
                f"{_registry.DATASETS[self.dataset].default_model}")

    @property
    def model_name(self) -> str:
        """The model to build: ``model``, or the data set's default."""
        return self.model or _registry.DATASETS[self.dataset].default_model

    @property
    def task(self) -> str:
        """The data set's task: ``"classify"`` or ``"segment"``."""
        return _registry.DATASETS[self.dataset].task

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON form written to ``run.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> TrainConfig:
        """The config recorded in ``run.json`` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ConfigError(f"TrainConfig: fields must be among {sorted(names)}, got "
                             f"unknown {unknown}")
        return cls(**record)

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


def _check_int(value, name: str, op: str, *, optional: bool):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        rule = "None or a positive int" if optional else "a positive int"
        raise ConfigError(f"{op}: {name} must be {rule}, got {value!r}")
