"""From a config to a trained run folder, and back: what the ``cnn-jax`` command calls.

``train_and_evaluate(config)`` looks the model and data set up in the registries,
loads the data, builds the model (initialised under one ``jit``), records the run
in ``run.json`` and calls :func:`fit`. ``resume_config(out, **changes)`` reads a
run's configuration back for ``--resume``; ``load_run(out)`` rebuilds the model and
restores its best (or latest) checkpoint, for ``evaluate`` and ``predict``.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.train._agree import agree_across_processes
from cnn_jax.train._checkpoint import Checkpointer, CheckpointError
from cnn_jax.train._config import RESUMABLE, ConfigError, TrainConfig
from cnn_jax.train._data import Dataset, load_dataset
from cnn_jax.train._loop import History, fit
from cnn_jax.train._registry import DATASETS, MODELS
from cnn_jax.train._sharding import make_mesh
from cnn_jax.train._signals import active_guard
from cnn_jax.train._step import Trainer, run_once
from cnn_jax.train._stream import ImageStream, load_image, normalize

RUN_FILE = "run.json"


def create_model(name: str, num_classes: int, image_shape: tuple[int, int, int], *,
                 width: int | None = None, seed: int = 0, dtype: str = "float32"
                 ) -> nnx.Module:
    """Build a registered model (``cnn_jax.train.MODELS``) by its command-line name.

    Parameters are initialised in one compiled program (not one per initialiser).

    Args:
      name: a key of ``MODELS`` (``digits_cnn``, ``lenet5``, ``resnet18``, ...).
      num_classes: classes (per pixel for segmentation models).
      image_shape: ``(H, W, C)`` of the inputs.
      width: the model's width argument (None: the model's default).
      seed: initialisation seed (``nnx.Rngs(seed)``; dropout uses the same Rngs).
      dtype: compute dtype of the layers (``"bfloat16"``: bf16 compute, f32 params).

    >>> create_model("lenet5", 10, (32, 32, 1)).fc3.out_features
    10
    """
    if name not in MODELS:
        raise ConfigError(f"create_model: name must be one of {tuple(MODELS)}, got {name!r}")
    entry = MODELS[name]
    compute = None if dtype == "float32" else jnp.dtype(dtype)

    graphdef = []

    def init():
        model = entry.build(num_classes, tuple(image_shape), rngs=nnx.Rngs(seed), width=width,
                            dtype=compute)
        g, state = nnx.split(model)
        graphdef.append(g)  # static structure, no tracers
        return state

    state = run_once(jax.jit(init))
    return nnx.merge(graphdef[0], state)


def prepare_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The config's data set, subset by ``limit`` and resized as the model needs.

    Streamed sets (``folder``, ``imagenet``) come back as ``ImageStream`` s that read
    with the config's ``workers`` and ``on_bad_image``; nothing is decoded yet.
    """
    train, test = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    size = MODELS[config.model_name].input_size or config.image_size
    train, test = train.take(config.limit), test.take(config.limit)
    train, test = train.resized(size), test.resized(size)
    if isinstance(train, ImageStream):
        options = dict(workers=config.workers, on_bad_image=config.on_bad_image)
        train, test = train.with_options(**options), test.with_options(**options)
    return train, test


def read_run(out: str) -> dict:
    """The ``run.json`` record of a run folder (config, classes, input shape)."""
    path = os.path.join(out, RUN_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"missing file {path}: expected the run record written by "
                              f"'cnn-jax train --out {out}'")
    try:
        with open(path) as f:
            run = json.load(f)
        run["config"] = TrainConfig.from_dict(dict(run["config"], resume=False))
        for key in ("num_classes", "image_shape", "class_names"):
            run[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"malformed file {path}: expected the run record written by "
                              f"cnn-jax train ({type(e).__name__}: {e})") from e
    return run


def resume_config(out: str, **changes) -> TrainConfig:
    """The configuration of the run in ``out``, for ``--resume``.

    Args:
      out: the run folder.
      **changes: fields given again on the command line. Those in ``RESUMABLE``
        (``epochs``, ``quiet``, ``num_devices``, checkpoint cadence, ...) override the
        run's; any other must equal the run's value.

    Raises:
      CheckpointError: no ``run.json``, a malformed one, or a change that would make
        a different run.
    """
    config = read_run(out)["config"]
    for key, value in changes.items():
        current = config.model_name if key == "model" else getattr(config, key)
        if key not in RESUMABLE and current != value:
            raise CheckpointError(
                f"cannot resume {out} with {key}={value!r}: the run was started with "
                f"{key}={current!r} (in {os.path.join(out, RUN_FILE)}); only "
                f"{', '.join(k for k in RESUMABLE if k not in ('out', 'resume'))} may change "
                f"on --resume")
    return config.replace(**dict(changes, out=out, resume=True))


def train_and_evaluate(config: TrainConfig, **fit_kwargs) -> History:
    """Load data, build the model, train it with :func:`fit`; the CLI's ``train``.

    With ``config.out`` set, ``run.json`` records the config and the data set's
    shape and class names so that ``evaluate``/``predict``/``--resume`` can rebuild
    the run. Nothing is written before the data has loaded and the batch fits.
    """
    check_out_folder(config.out)
    train, test = prepare_data(config)
    agree_across_processes(config, train, test)  # several processes: the same run, or none
    guard = active_guard()
    if guard is not None and guard.stop:  # interrupted while the data loaded
        print(f"{guard.name}: interrupted while loading the data; nothing written",
              file=sys.stderr)
        return History(interrupted=True, signal=guard.signal,
                       summary={"epochs": 0, "interrupted": True})
    if len(train) < config.batch_size:
        raise ConfigError(
            f"train: batch_size must be <= the number of training examples of "
            f"{config.dataset!r} ({len(train)}), got {config.batch_size}; pass "
            f"--batch-size {max(1, len(train))} or less")
    model = create_model(config.model_name, train.num_classes, train.image_shape,
                         width=config.width, seed=config.seed, dtype=config.dtype)
    if config.out is not None and jax.process_index() == 0:
        os.makedirs(config.out, exist_ok=True)
        run = {"config": dict(config.to_dict(), resume=False), "model": config.model_name,
               "dataset": config.dataset, "task": config.task,
               "num_classes": train.num_classes, "image_shape": list(train.image_shape),
               "class_names": train.class_names}
        if isinstance(test, ImageStream):  # how predict must prepare an image
            run["input"] = test.input_record()
        tmp = os.path.join(config.out, RUN_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(run, f, indent=2)
        os.replace(tmp, os.path.join(config.out, RUN_FILE))
    return fit(model, train, test, config, flip=DATASETS[config.dataset].flip,
               run_info={"model": config.model_name, "dataset": config.dataset}, **fit_kwargs)


def check_out_folder(out: str | None):
    """Refuse, before any work, an ``out`` that is a file or cannot be written."""
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"train: out must be a folder, got {out!r}, an existing file")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train: out must be writable, got {out!r} ({existing} is not a "
                          f"writable folder)")


def load_run(out: str, *, which: str = "best") -> tuple[nnx.Module, dict]:
    """Rebuild a trained model from a run folder written by :func:`train_and_evaluate`.

    Args:
      out: the run folder (holding ``run.json`` and ``checkpoints/``).
      which: ``"best"`` (highest test accuracy) or ``"latest"`` checkpoint.

    Returns:
      ``(model, run)``: the model in eval mode with the checkpoint's weights, and
      the ``run.json`` record (``"config"`` as a :class:`TrainConfig`, ``"step"`` added).
    """
    if which not in ("best", "latest"):
        raise ValueError(f"load_run: which must be 'best' or 'latest', got {which!r}")
    run = read_run(out)
    config = run["config"]
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=config.keep_checkpoints)
    try:
        step = ckpt.best_step() if which == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"load_run: no checkpoint in {ckpt.directory}")
        meta = ckpt.read_meta(step)
        model = create_model(config.model_name, run["num_classes"], tuple(run["image_shape"]),
                             width=config.width, seed=config.seed, dtype=config.dtype)
        trainer = Trainer(model, config, int(meta["steps_per_epoch"]), make_mesh(1),
                          task=config.task)
        state, _ = ckpt.restore(step, trainer.initial_state(),
                                expect={"model": run["model"], "dataset": run["dataset"]})
    finally:
        ckpt.close()
    trainer.sync_model(state)
    model.eval()
    return model, dict(run, step=step)


def load_images(paths: list[str], image_shape: tuple[int, int, int], *,
                input: dict | None = None) -> np.ndarray:
    """Image files as the ``(N, H, W, C)`` float32 batch a run's model takes.

    Args:
      paths: the files.
      image_shape: ``(H, W, C)`` of the run's inputs.
      input: the run's ``run.json`` ``"input"`` record (streamed data sets): its
        evaluation transform (``imagenet``: resize the shorter side, centre crop) and
        normalisation (mean/std). None: the whole image resized, in ``[0, 1]``.
    """
    h, w, c = image_shape
    recipe = (input or {}).get("recipe", "folder")
    norm = (input["mean"], input["std"]) if input and input.get("mean") else None
    return normalize(np.stack([load_image(p, recipe, (h, w), c) for p in paths]), norm)
