"""The training configuration: one frozen dataclass, the single source of the CLI's flags.

Every field carries its help text in ``metadata``; ``cnn-jax train`` makes one flag
per field from it (``--batch-size`` from ``batch_size``), with the field's default
shown, so a new option is one field here. ``run.json`` is :meth:`TrainConfig.to_dict`.
Every field is range-checked and normalised to a plain Python value when a config is
made, so no flag reaches the training path unchecked. This module imports no jax
(only :meth:`TrainConfig.check_input` does, when called): ``cnn-jax --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
from dataclasses import dataclass, field

from cnn_jax._checks import MAX_SIZE
from cnn_jax.train import _registry

OPTIMIZERS = ("sgd", "adamw")
BAD_IMAGE_POLICIES = ("error", "skip")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")

# Fields that may differ between a run and its --resume (everything else must match).
RESUMABLE = (
    "epochs",
    "data_dir",
    "out",
    "resume",
    "quiet",
    "keep_checkpoints",
    "checkpoint_every",
    "eval_batch_size",
    "num_devices",
    "workers",
    "on_bad_image",
)


# Bounds of the flags, checked before anything is loaded or written.
# A seed must be < 2**32: without x64 JAX keeps a seed's low 32 bits only
# (``jax.random.key(2**32)`` is ``key(0)``) and refuses one above 2**63 - 1, so a larger
# seed would silently repeat a smaller one's initialisation.
MAX_SEED = 2**32 - 1
# The largest --image-size: 16.8M pixels an image, 4096 x 4096 (XLA aborted the
# interpreter on --image-size 100000; a batch of 64 RGB images of this size is 3.2 GB).
MAX_IMAGE_SIZE = 4096
# The largest --width (the built-in models' defaults are 16 to 64 channels).
MAX_WIDTH = 4096


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

    model: str | None = _field(
        None, "architecture (default: the data set's default model)", choices="models"
    )
    dataset: str = _field("digits", "data set", choices="datasets")
    data_dir: str | None = _field(
        None, "folder with the data set's files (mnist, fashion_mnist, cifar10, folder)"
    )
    epochs: int = _field(15, "passes over the training set")
    batch_size: int = _field(64, "global batch size (split over all devices)")
    optimizer: str = _field("adamw", "adamw, or sgd (momentum 0.9, Nesterov)", choices=OPTIMIZERS)
    lr: float = _field(3e-3, "peak learning rate")
    schedule: str = _field(
        "cosine", "after warm-up: cosine decay to 0, or constant", choices=SCHEDULES
    )
    warmup: float = _field(1.0, "linear warm-up, in epochs (may be fractional)")
    weight_decay: float = _field(1e-4, "decoupled weight decay on kernels (not biases/norms)")
    augment: bool = _field(
        True,
        "random shifts (1 px for images <= 16 px, else 4 px; "
        "zero fill) and, for RGB sets, horizontal flips",
    )
    dtype: str = _field(
        "float32", "compute dtype (params and optimiser state stay float32)", choices=DTYPES
    )
    seed: int = _field(
        0, "seeds initialisation, data order, augmentation and dropout (0 to 2**32 - 1)"
    )
    out: str | None = _field(None, "output folder (default: runs/MODEL-DATASET-TIME)")
    resume: bool = _field(
        False,
        "continue the run in --out from its latest checkpoint, "
        "with the configuration in its run.json",
    )
    quiet: bool = _field(False, "no progress bar or per-epoch lines")
    keep_checkpoints: int = _field(2, "latest checkpoints to keep (the best is kept too)")
    checkpoint_every: float = _field(
        300.0,
        "seconds between checkpoints (written at an "
        "epoch's end; 0: every epoch; inf: none but the "
        "last); always at the end and on interrupt",
    )
    eval_batch_size: int = _field(512, "evaluation batch size")
    num_devices: int | None = _field(None, "devices to use (default: all)", flag="--devices")
    image_size: int | None = _field(
        None,
        "resize inputs to SIZE x SIZE, at most "
        f"{MAX_IMAGE_SIZE} (default: the data set's size, "
        "or the model's fixed size)",
    )
    width: int | None = _field(
        None,
        "channel width of models that have one "
        f"(digits_cnn, simple_cnn, unet), at most {MAX_WIDTH}",
    )
    limit: int | None = _field(None, "use only the first N train and test examples")
    workers: int | None = _field(
        None,
        "processes decoding and augmenting streamed images "
        "(folder, imagenet); 0: in this process; more than "
        "the usable cores are capped to them (default: one "
        "per core, at most 16)",
    )
    on_bad_image: str = _field(
        "error",
        "an unreadable image in a streamed data set: stop "
        "the run naming the file (error), or skip it and "
        "count it in summary.json (skip)",
        choices=BAD_IMAGE_POLICIES,
    )

    def __post_init__(self):
        op = "TrainConfig"
        if self.model is not None and self.model not in _registry.MODELS:
            raise ConfigError(
                f"{op}: model must be one of {tuple(_registry.MODELS)}, got {self.model!r}"
            )
        if self.dataset not in _registry.DATASETS:
            raise ConfigError(
                f"{op}: dataset must be one of {tuple(_registry.DATASETS)}, got {self.dataset!r}"
            )
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("dtype", DTYPES),
            ("on_bad_image", BAD_IMAGE_POLICIES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{op}: {name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        # (field, optional, smallest, largest): largest None is unbounded
        for name, optional, low, high in (
            ("epochs", False, 1, MAX_SIZE),
            ("batch_size", False, 1, MAX_SIZE),
            ("eval_batch_size", False, 1, MAX_SIZE),
            ("keep_checkpoints", False, 1, None),
            ("num_devices", True, 1, MAX_SIZE),
            ("image_size", True, 1, MAX_IMAGE_SIZE),
            ("width", True, 1, MAX_WIDTH),
            ("limit", True, 1, None),
            ("seed", False, 0, MAX_SEED),
            ("workers", True, 0, MAX_SIZE),
        ):
            self._set(
                name,
                _check_int(getattr(self, name), name, op, optional=optional, low=low, high=high),
            )
        # (field, smallest, whether the smallest is allowed, whether inf is allowed, unit)
        for name, low, closed, inf_ok, unit in (
            ("lr", 0.0, False, False, ""),
            ("warmup", 0.0, True, False, " epochs"),
            ("weight_decay", 0.0, True, False, ""),
            ("checkpoint_every", 0.0, True, True, " seconds"),
        ):
            self._set(
                name,
                _check_float(
                    getattr(self, name), name, op, low=low, closed=closed, inf_ok=inf_ok, unit=unit
                ),
            )
        for name in ("augment", "resume", "quiet"):
            self._set(name, _check_bool(getattr(self, name), name, op))
        for name in ("data_dir", "out"):
            self._set(name, _check_path(getattr(self, name), name, op))
        if self.resume and self.out is None:
            raise ConfigError(f"{op}: resume must come with an out folder, got out=None")
        model = _registry.MODELS[self.model_name]
        task = _registry.DATASETS[self.dataset].task
        if model.task != task:
            raise ConfigError(
                f"{op}: model must suit the {self.dataset!r} data set's task ({task}), got "
                f"{self.model_name!r} (task {model.task}); e.g. --model "
                f"{_registry.DATASETS[self.dataset].default_model}"
            )

    def _set(self, name: str, value):
        """Store the normalised value (a Python int, float, bool or str) on the frozen
        instance, so that ``run.json`` holds plain JSON values."""
        object.__setattr__(self, name, value)

    @property
    def model_name(self) -> str:
        """The model to build: ``model``, or the data set's default."""
        return self.model or _registry.DATASETS[self.dataset].default_model

    @property
    def task(self) -> str:
        """The data set's task: ``"classify"`` or ``"segment"``."""
        return _registry.DATASETS[self.dataset].task

    def check_input(self, num_classes: int, image_shape) -> None:
        """Refuse, before anything is compiled or written, inputs the model cannot take
        (smaller than its pools allow, an odd size where it needs an even one) and a
        model whose training state cannot fit in this machine's memory.

        Traces the model's construction and its forward on one ``image_shape`` image
        with shapes only (``jax.eval_shape``: no parameter is made).

        Args:
          num_classes: classes of the data set.
          image_shape: ``(H, W, C)`` of the images the model will see (after resizing).

        Raises:
          ConfigError: naming the model, the size, the model's own rule and a size it
            takes (``--image-size``); or the memory the parameters need.
        """
        h, w, c = (int(v) for v in image_shape)
        problem = _model_problem(self, num_classes, (h, w, c))
        if isinstance(problem, Exception):
            fits = next(
                (
                    s
                    for s in (2**k for k in range(1, 13))
                    if s > max(h, w)
                    and not isinstance(_model_problem(self, num_classes, (s, s, c)), Exception)
                ),
                None,
            )
            hint = (
                f"; it takes {fits}x{fits}: pass --image-size {fits} (or larger images)"
                if fits is not None
                else ""
            )
            raise ConfigError(
                f"train: model {self.model_name!r} does not take the data set's "
                f"{h}x{w}x{c} images ({problem}){hint}"
            )
        from cnn_jax.train._data import host_memory

        # float32 parameters, their gradients, and the optimiser's moments (AdamW: 2,
        # SGD with momentum: 1), all held at once in a step.
        copies = 4 if self.optimizer == "adamw" else 3
        need, memory = problem * 4 * copies, host_memory()
        if memory is not None and need > memory:
            raise ConfigError(
                f"train: model {self.model_name!r}"
                f"{'' if self.width is None else f' at --width {self.width}'} has "
                f"{problem:,} parameters, whose training state ({copies} float32 copies, "
                f"{need / 2**30:.1f} GiB) exceeds this machine's {memory / 2**30:.1f} GiB of "
                f"memory; pass a smaller --width or another --model"
            )

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
            raise ConfigError(
                f"TrainConfig: fields must be among {sorted(names)}, got unknown {unknown}"
            )
        return cls(**record)

    @classmethod
    def quick(cls, **changes) -> TrainConfig:
        """A smoke-test variant: one epoch on 256 examples, a narrow model, no output.

        >>> TrainConfig.quick().epochs
        1
        """
        base = dict(
            epochs=1,
            batch_size=32,
            eval_batch_size=64,
            limit=256,
            width=8,
            quiet=True,
            warmup=0.0,
            keep_checkpoints=1,
        )
        base.update(changes)
        return cls(**base)


def flag_of(name: str) -> str:
    """The ``cnn-jax train`` flag of a field (``--batch-size`` for ``batch_size``)."""
    spec = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(name)
    flag = spec.metadata.get("flag") if spec is not None else None
    return flag or "--" + name.replace("_", "-")


def _named(name: str) -> str:
    return f"{name} ({flag_of(name)})"


def _check_int(value, name: str, op: str, *, optional: bool, low: int = 1, high: int | None = None):
    """A whole number in ``[low, high]`` (numpy ints pass, as Python ints; bools and floats
    fail), or None when ``optional``."""
    if optional and value is None:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        rule = f"None or {kind}" if optional else kind
        raise ConfigError(f"{op}: {_named(name)} must be {rule}, got {value!r}")
    if high is not None and number > high:
        limit = "2**31 - 1" if high == MAX_SIZE else "2**32 - 1" if high == MAX_SEED else high
        why = {
            "seed": " (JAX keeps 32 bits of a seed)",
            "epochs": " (the step counter is an int32)",
            "image_size": " pixels a side",
        }.get(name, "")
        raise ConfigError(f"{op}: {_named(name)} must be <= {limit}{why}, got {value!r}")
    return int(number)


def _check_float(
    value, name: str, op: str, *, low: float, closed: bool, inf_ok: bool, unit: str
) -> float:
    """A real number (ints pass, as floats; bools and strings fail) above ``low``
    (``closed``: or equal), finite unless ``inf_ok``; NaN always fails."""
    rule = f"be {'>=' if closed else '>'} {low:g}{unit}"
    if not inf_ok:
        rule += " and finite"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{op}: {_named(name)} must be a number {rule[3:]}, got {value!r}")
    number = float(value)
    if not (number >= low if closed else number > low) or (  # also catches NaN
        math.isinf(number) and not inf_ok
    ):
        raise ConfigError(f"{op}: {_named(name)} must {rule}, got {value!r}")
    return number


def _check_bool(value, name: str, op: str) -> bool:
    """True or False (numpy bools pass, as Python bools; 1 or "yes" fail)."""
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if not isinstance(value, bool) and not numpy_bool:
        raise ConfigError(f"{op}: {_named(name)} must be True or False, got {value!r}")
    return bool(value)


def _check_path(value, name: str, op: str) -> str | None:
    """None, or a non-empty path (``os.PathLike`` passes, as a str)."""
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{op}: {_named(name)} must be None or a non-empty path, got {value!r}")
    return path


def _model_problem(config: TrainConfig, num_classes: int, image_shape: tuple):
    """The parameter count of ``config``'s model on ``image_shape`` images, or the
    ``ValueError``/``TypeError`` its construction or forward raises (shapes only)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    entry = _registry.MODELS[config.model_name]

    def forward(x):
        model = entry.build(num_classes, image_shape, rngs=nnx.Rngs(0), width=config.width)
        model.eval()
        return model(x), nnx.state(model, nnx.Param)

    try:
        _, params = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except (ValueError, TypeError) as e:
        return e
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
