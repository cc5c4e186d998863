"""From a config to a trained run folder, and back: what the ``cnn-jax`` command calls.

``train_and_evaluate(config)`` loads the data, builds the model, records the run
in ``run.json`` and calls :func:`fit`. ``load_run(out)`` rebuilds the model from
``run.json`` and restores its best (or latest) checkpoint, for ``evaluate`` and
``predict``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.train._checkpoint import Checkpointer, CheckpointError
from cnn_jax.train._config import TrainConfig
from cnn_jax.train._data import Dataset, load_dataset
from cnn_jax.train._loop import History, _Trainer, fit
from cnn_jax.train._sharding import make_mesh

# Models that need a fixed input size get it here (LeNet-5: the classic 32x32).
MODEL_INPUT_SIZE = {"lenet5": 32}


def _model_classes() -> dict:
    from cnn_jax import models

    return {
        "lenet5": models.LeNet5, "simple_cnn": models.SimpleCNN, "resnet18": models.ResNet18,
        "resnet34": models.ResNet34, "resnet50": models.ResNet50,
        "mobilenet_v2": models.MobileNetV2, "unet": models.UNet,
    }


def create_model(name: str, num_classes: int, image_shape: tuple[int, int, int], *,
                 width: int | None = None, seed: int = 0, dtype: str = "float32"
                 ) -> nnx.Module:
    """Build a model of :mod:`cnn_jax.models` by its command-line name.

    Args:
      name: ``lenet5``, ``simple_cnn``, ``resnet18/34/50``, ``mobilenet_v2`` or ``unet``.
      num_classes: classes (per pixel for ``unet``).
      image_shape: ``(H, W, C)`` of the inputs.
      width: ``simple_cnn`` width / ``unet`` base width (None: the model's default).
      seed: initialisation seed (``nnx.Rngs(seed)``; dropout uses the same Rngs).
      dtype: compute dtype of the layers (``"bfloat16"``: bf16 compute, f32 params).

    >>> create_model("lenet5", 10, (32, 32, 1)).fc3.out_features
    10
    """
    classes = _model_classes()
    if name not in classes:
        raise ValueError(f"create_model: name must be one of {tuple(classes)}, got {name!r}")
    cls = classes[name]
    h, w, c = image_shape
    kwargs = {"in_channels": c}
    # nnx.Module classes hide their arguments behind the metaclass: read __init__. The
    # ResNet variants are factories forwarding **kwargs to ResNet: read ResNet's.
    if not isinstance(cls, type):
        from cnn_jax.models import ResNet

        cls_args = ResNet if name.startswith("resnet") else cls
    else:
        cls_args = cls
    params = inspect.signature(cls_args.__init__ if isinstance(cls_args, type)
                               else cls_args).parameters
    if "input_size" in params:
        kwargs["input_size"] = (h, w)
    if "small_input" in params:
        kwargs["small_input"] = max(h, w) <= 64
    if "dtype" in params and dtype != "float32":
        kwargs["dtype"] = jnp.dtype(dtype)
    if width is not None:
        for key in ("width", "base_width"):
            if key in params:
                kwargs[key] = width
    return cls(num_classes, **kwargs, rngs=nnx.Rngs(seed))


def prepare_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The config's data set, subset by ``limit`` and resized as the model needs."""
    train, test = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    size = MODEL_INPUT_SIZE.get(config.model_name, config.image_size)
    train, test = train.take(config.limit), test.take(config.limit)
    return train.resized(size), test.resized(size)


def train_and_evaluate(config: TrainConfig, **fit_kwargs) -> History:
    """Load data, build the model, train it with :func:`fit`; the CLI's ``train``.

    With ``config.out`` set, ``run.json`` records the config and the data set's
    shape and class names so ``evaluate``/``predict`` can rebuild the model.
    """
    if config.model_name == "unet" and config.dataset != "shapes":
        raise ValueError(f"train_and_evaluate: model 'unet' needs per-pixel labels "
                         f"(dataset 'shapes'), got dataset {config.dataset!r}")
    if config.dataset == "shapes" and config.model_name != "unet":
        raise ValueError(f"train_and_evaluate: dataset 'shapes' is segmentation and needs "
                         f"model 'unet', got model {config.model_name!r}")
    _check_out_folder(config)
    train, test = prepare_data(config)
    model = create_model(config.model_name, train.num_classes, train.image_shape,
                         width=config.width, seed=config.seed, dtype=config.dtype)
    run = {"config": dataclasses.asdict(config), "model": config.model_name,
           "dataset": config.dataset, "num_classes": train.num_classes,
           "image_shape": list(train.image_shape), "class_names": train.class_names}
    if config.out is not None and jax.process_index() == 0:
        os.makedirs(config.out, exist_ok=True)
        with open(os.path.join(config.out, "run.json"), "w") as f:
            json.dump(run, f, indent=2)
    return fit(model, train, test, config,
               run_info={"model": config.model_name, "dataset": config.dataset}, **fit_kwargs)


def _check_out_folder(config: TrainConfig):
    """Refuse, before anything is overwritten, to mix two runs in one folder."""
    if config.out is None:
        return
    ckpt_dir = os.path.join(config.out, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    if has_ckpt and not config.resume:
        raise CheckpointError(
            f"train_and_evaluate: out must not hold checkpoints unless resuming, got "
            f"{config.out!r}; pass resume=True (--resume) or another out")
    run_path = os.path.join(config.out, "run.json")
    if config.resume and os.path.isfile(run_path):
        try:
            with open(run_path) as f:
                run = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"malformed file {run_path}: expected the run record written "
                                  f"by cnn-jax train ({e})") from e
        for key, value in (("model", config.model_name), ("dataset", config.dataset)):
            if run.get(key) != value:
                raise CheckpointError(
                    f"checkpoint in {config.out} does not match this run: {key} must be "
                    f"{value!r}, got {run.get(key)!r} in {run_path}")


def load_run(out: str, *, which: str = "best") -> tuple[nnx.Module, dict]:
    """Rebuild a trained model from a run folder written by :func:`train_and_evaluate`.

    Args:
      out: the run folder (holding ``run.json`` and ``checkpoints/``).
      which: ``"best"`` (highest test accuracy) or ``"latest"`` checkpoint.

    Returns:
      ``(model, run)``: the model in eval mode with the checkpoint's weights, and
      the ``run.json`` record (with ``"step"`` added).
    """
    run_path = os.path.join(out, "run.json")
    if not os.path.isfile(run_path):
        raise CheckpointError(f"load_run: missing file {run_path}: expected the run record "
                              f"written by 'cnn-jax train --out {out}'")
    try:
        with open(run_path) as f:
            run = json.load(f)
        config = TrainConfig(**dict(run["config"], resume=False, out=None, quiet=True))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"load_run: malformed file {run_path}: expected the run record "
                              f"written by cnn-jax train ({e})") from e
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=config.keep_checkpoints)
    try:
        step = ckpt.best_step() if which == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"load_run: no checkpoint in {ckpt.directory}")
        meta = ckpt.read_meta(step)
        model = create_model(config.model_name, run["num_classes"], tuple(run["image_shape"]),
                             width=config.width, seed=config.seed, dtype=config.dtype)
        trainer = _Trainer(model, config, int(meta["steps_per_epoch"]), make_mesh(1))
        carry, _ = ckpt.restore(step, trainer.initial_carry,
                                expect={"model": run["model"], "dataset": run["dataset"]})
    finally:
        ckpt.close()
    trainer.sync_model(carry)
    model.eval()
    return model, dict(run, step=step)


def load_images(paths: list[str], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Image files as a ``(N, H, W, C)`` batch in ``[0, 1]``, resized to ``image_shape``."""
    from cnn_jax.train._data import read_image

    h, w, c = image_shape
    return np.stack([read_image(p, (h, w), c) for p in paths])
