"""The registries of trainable models and data sets: one source for the CLI and dispatch.

``MODELS`` and ``DATASETS`` map a command-line name to an entry that says how to
build the thing and what it is for. ``cnn-jax train --help`` lists their names and
help lines, ``TrainConfig`` checks against them, and ``train_and_evaluate`` builds
from them: adding a model or a data set is one file plus one ``register_*`` line.

Factories may be given as ``"module:attribute"`` strings so that importing this
module (and printing help) imports neither jax nor the models::

    from cnn_jax.train import register_model
    register_model("mynet", "mypackage.nets:MyNet", help="my network")
    # cnn-jax train --model mynet    (after importing the module that registers it)

A model factory is called as ``factory(num_classes, in_channels=C, rngs=rngs,
**entry.kwargs, **entry.adapt((H, W, C)), [width_arg=width], [dtype=dtype])``.
A data set loader is called as ``loader(data_dir, seed)`` and returns
``(train, test)`` :class:`~cnn_jax.train.Dataset` s (in memory) or image streams
(``cnn_jax.train._stream.ImageStream``: read from disk batch by batch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TASKS = ("classify", "segment")


def _resolve(target):
    """A callable, or the attribute named by a ``"module:attribute"`` string."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model.

    Attributes:
      name: the command-line name.
      factory: a callable or ``"module:attribute"`` (see the module docstring).
      task: ``"classify"`` (``(N, classes)`` logits) or ``"segment"`` (per pixel).
      input_size: a fixed input size ``S`` (images are resized to ``S x S``), or None.
      width_arg: the constructor argument that ``--width`` sets, or None.
      kwargs: fixed constructor arguments.
      adapt: ``(H, W, C) -> dict`` of constructor arguments that depend on the input.
      help: one line for ``--help``.
    """

    name: str
    factory: Any
    task: str = "classify"
    input_size: int | None = None
    width_arg: str | None = None
    kwargs: dict = field(default_factory=dict)
    adapt: Callable[[tuple], dict] | None = None
    help: str = ""

    def build(self, num_classes: int, image_shape, *, rngs, width=None, dtype=None):
        """The model for ``image_shape = (H, W, C)`` inputs."""
        kwargs = dict(self.kwargs, in_channels=image_shape[2], rngs=rngs)
        if self.adapt is not None:
            kwargs.update(self.adapt(tuple(image_shape)))
        if width is not None:
            if self.width_arg is None:
                raise ValueError(
                    f"create_model: width must be None for model {self.name!r} "
                    f"(it has no width argument), got {width!r}"
                )
            kwargs[self.width_arg] = width
        if dtype is not None:
            kwargs["dtype"] = dtype
        return _resolve(self.factory)(num_classes, **kwargs)


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one registered data set.

    Attributes:
      name: the command-line name.
      loader: ``(data_dir, seed) -> (train, test)``, a callable or ``"module:attr"``.
      task: ``"classify"`` or ``"segment"``.
      default_model: the model trained when ``--model`` is not given.
      needs_data_dir: whether ``--data-dir`` is required.
      flip: whether augmentation may mirror images (not for digits and letters).
      help: one line for ``--help``.
    """

    name: str
    loader: Any
    task: str = "classify"
    default_model: str = "simple_cnn"
    needs_data_dir: bool = False
    flip: bool = True
    help: str = ""

    def load(self, data_dir: str | None, seed: int):
        return _resolve(self.loader)(data_dir, seed)


MODELS: dict[str, ModelEntry] = {}
DATASETS: dict[str, DatasetEntry] = {}


def _check_name(name, kind: str, table: dict, replace: bool):
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_{kind}: name must be an identifier-like str, got {name!r}")
    if name in table and not replace:
        raise ValueError(
            f"register_{kind}: name must be new (or pass replace=True), got "
            f"{name!r}, already registered"
        )


def register_model(
    name: str,
    factory,
    *,
    task: str = "classify",
    input_size: int | None = None,
    width_arg: str | None = None,
    kwargs: dict | None = None,
    adapt: Callable | None = None,
    help: str = "",
    replace: bool = False,
) -> ModelEntry:
    """Make ``factory`` trainable as ``cnn-jax train --model NAME`` (see :class:`ModelEntry`)."""
    _check_name(name, "model", MODELS, replace)
    if task not in TASKS:
        raise ValueError(f"register_model: task must be one of {TASKS}, got {task!r}")
    entry = ModelEntry(name, factory, task, input_size, width_arg, dict(kwargs or {}), adapt, help)
    MODELS[name] = entry
    return entry


def register_dataset(
    name: str,
    loader,
    *,
    task: str = "classify",
    default_model: str = "simple_cnn",
    needs_data_dir: bool = False,
    flip: bool = True,
    help: str = "",
    replace: bool = False,
) -> DatasetEntry:
    """Make ``loader`` trainable as ``cnn-jax train --dataset NAME`` (see :class:`DatasetEntry`)."""
    _check_name(name, "dataset", DATASETS, replace)
    if task not in TASKS:
        raise ValueError(f"register_dataset: task must be one of {TASKS}, got {task!r}")
    entry = DatasetEntry(name, loader, task, default_model, needs_data_dir, flip, help)
    DATASETS[name] = entry
    return entry


def _small_input(shape) -> dict:
    return {"small_input": max(shape[:2]) <= 64}


def _input_size(shape) -> dict:
    return {"input_size": tuple(shape[:2])}


# ---------------------------------------------------------------- built-in models

_M = "cnn_jax.models:"
register_model(
    "digits_cnn",
    "cnn_jax.models._digits:DigitsCNN",
    width_arg="width",
    adapt=_input_size,
    help="two 3x3 convs, max pool, linear: the default digits recipe (any size)",
)
register_model(
    "lenet5", _M + "LeNet5", input_size=32, help="LeNet-5 (LeCun et al. 1998) on 32x32 inputs"
)
register_model(
    "simple_cnn",
    _M + "SimpleCNN",
    width_arg="width",
    help="ten conv-BN-ReLU layers, three pools (inputs >= 8x8)",
)
for _depth in (18, 34, 50):
    register_model(
        f"resnet{_depth}",
        f"{_M}ResNet{_depth}",
        adapt=_small_input,
        help=f"ResNet-{_depth} (CIFAR stem for inputs <= 64 px)",
    )
register_model(
    "resnext50_32x4d",
    _M + "ResNeXt50_32x4d",
    adapt=_small_input,
    help="ResNeXt-50 32x4d (CIFAR stem for inputs <= 64 px)",
)
register_model(
    "wide_resnet50_2",
    _M + "WideResNet50_2",
    adapt=_small_input,
    help="Wide ResNet-50-2 (CIFAR stem for inputs <= 64 px)",
)
register_model("mobilenet_v2", _M + "MobileNetV2", help="MobileNetV2 (inputs >= 32x32)")
register_model("efficientnet_b0", _M + "EfficientNetB0", help="EfficientNet-B0 (any size)")
register_model("convnext_tiny", _M + "ConvNeXtTiny", help="ConvNeXt-T (inputs >= 32x32)")
register_model(
    "alexnet",
    _M + "AlexNet",
    input_size=64,
    width_arg="width",
    kwargs={"hidden": 512},
    help="AlexNet, 512-wide classifier; inputs resized to 64x64",
)
for _name, _cls in (
    ("vgg11", "VGG11"),
    ("vgg11_bn", "VGG11BN"),
    ("vgg16", "VGG16"),
    ("vgg16_bn", "VGG16BN"),
):
    register_model(
        _name,
        _M + _cls,
        width_arg="width",
        kwargs={"hidden": 512},
        help=f"{_cls.replace('BN', ' with BatchNorm')}, 512-wide classifier (inputs >= 32x32)",
    )
register_model(
    "unet",
    _M + "UNet",
    task="segment",
    width_arg="base_width",
    help="U-Net for per-pixel classes (sides divisible by 16)",
)

# ---------------------------------------------------------------- built-in data sets

_D = "cnn_jax.train._data:"
register_dataset(
    "digits",
    _D + "digits_loader",
    default_model="digits_cnn",
    flip=False,
    help="scikit-learn's 1,797 8x8 handwritten digits (bundled, no download)",
)
register_dataset(
    "mnist",
    _D + "mnist_loader",
    default_model="lenet5",
    needs_data_dir=True,
    flip=False,
    help="MNIST IDX files (.gz or not) in --data-dir",
)
register_dataset(
    "fashion_mnist",
    _D + "fashion_mnist_loader",
    default_model="lenet5",
    needs_data_dir=True,
    help="Fashion-MNIST IDX files in --data-dir",
)
register_dataset(
    "cifar10",
    _D + "cifar10_loader",
    default_model="resnet18",
    needs_data_dir=True,
    help="CIFAR-10 python pickle batches in --data-dir",
)
register_dataset(
    "folder",
    _D + "folder_loader",
    needs_data_dir=True,
    help="--data-dir/<class>/* images (or train/ and test/ or val/ sub-folders), "
    "streamed from disk",
)
register_dataset(
    "imagenet",
    _D + "imagenet_loader",
    default_model="resnet50",
    needs_data_dir=True,
    help="ImageNet layout (--data-dir/train/<class>/*, val/<class>/*), streamed: "
    "random-resized crops and flips, 224 px, ImageNet mean/std",
)
register_dataset(
    "shapes",
    _D + "shapes_loader",
    task="segment",
    default_model="unet",
    help="synthetic circles/squares/triangles with per-pixel masks",
)
