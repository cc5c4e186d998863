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
from cnn_jax.train._runfolder import (
    RUN_FILE,
    RunFolderError,
    checkpoint_steps,
    hold_run_folder,
    refuse_foreign_checkpoints,
    write_json,
)
from cnn_jax.train._sharding import make_mesh
from cnn_jax.train._signals import active_guard
from cnn_jax.train._step import Trainer, run_once
from cnn_jax.train._stream import ImageStream, load_image, normalize

# Below this much free space a new run is refused at start (its first files would fail).
MIN_FREE_BYTES = 64 * 1024


def create_model(
    name: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    width: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
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
        model = entry.build(
            num_classes, tuple(image_shape), rngs=nnx.Rngs(seed), width=width, dtype=compute
        )
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
    """The ``run.json`` record of a run folder (config, classes, input shape), validated:
    every key that ``evaluate``, ``predict``, ``export`` and ``--resume`` read has the
    type and size ``train`` writes, so an edited or damaged record fails here, in one
    line naming the file and the key."""
    import math  # (imported here: this function's checks are the only users)

    from cnn_jax._checks import MAX_SIZE
    from cnn_jax.train._stream import RECIPES

    path = os.path.join(out, RUN_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"missing file {path}: expected the run record written by 'cnn-jax train --out {out}'"
        )
    expected = f"malformed file {path}: expected the run record written by cnn-jax train"
    try:
        with open(path, "rb") as f:
            run = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError too
        raise CheckpointError(f"{expected} ({type(e).__name__}: {e})") from e

    def bad(key, rule, value):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise CheckpointError(f"{expected}; {key} must be {rule}, got {shown}")

    if not isinstance(run, dict):
        bad("the record", "a JSON object", run)
    for key in ("config", "model", "dataset", "num_classes", "image_shape", "class_names"):
        if key not in run:
            bad(f"{key!r}", "present", "no such key")
    if not isinstance(run["config"], dict):
        bad("'config'", "a JSON object of TrainConfig fields", run["config"])
    try:
        config = TrainConfig.from_dict(dict(run["config"], resume=False))
    except (ValueError, TypeError) as e:  # ConfigError, or a missing required field
        raise CheckpointError(
            f"{expected}; 'config' must hold a valid configuration ({type(e).__name__}: {e})"
        ) from e
    for key, want in (
        ("model", config.model_name),
        ("dataset", config.dataset),
        ("task", config.task),
    ):
        if key in run and run[key] != want:
            bad(f"{key!r}", f"the config's {want!r}", run[key])

    def count(value, low=1):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SIZE

    if not count(run["num_classes"]):
        bad("'num_classes'", "a positive int", run["num_classes"])
    shape = run["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(count, shape))):
        bad("'image_shape'", "[H, W, C], three positive ints", shape)
    names = run["class_names"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        bad("'class_names'", "a list of strings", names)
    if len(names) != run["num_classes"]:
        bad(
            "'class_names'",
            f"one name per class ({run['num_classes']} names, 'num_classes')",
            f"{len(names)} names",
        )
    record = run.get("input")
    if record is not None:
        numbers = lambda v: (
            isinstance(v, list)
            and len(v) == shape[2]  # noqa: E731
            and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v
            )
        )
        if not isinstance(record, dict) or record.get("recipe") not in RECIPES:
            bad("'input'", f"null or an object whose 'recipe' is one of {RECIPES}", record)
        if record.get("size") != shape:
            bad("'input' 'size'", f"the 'image_shape' {shape}", record.get("size"))
        for key in ("mean", "std"):
            value = record.get(key)
            if value is not None and not numbers(value):
                bad(
                    f"'input' {key!r}",
                    f"null or {shape[2]} finite numbers (one per channel)",
                    value,
                )
        if (record.get("mean") is None) != (record.get("std") is None) or (
            record.get("std") is not None and min(record["std"]) <= 0
        ):
            bad(
                "'input' 'mean' and 'std'",
                "both null or both given, std > 0",
                [record.get("mean"), record.get("std")],
            )
    run["config"] = config
    # run.json is how the run started; what resumes changed since (more epochs,
    # --on-bad-image skip, ...) is in the latest checkpoint's record.
    saved = _checkpointed_config(out)
    try:
        run["config"] = run["config"].replace(**{k: saved[k] for k in INHERITED if k in saved})
    except (ValueError, TypeError):
        pass  # a damaged record: the restore reports the checkpoint
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
    # read_run applies what earlier resumes changed (e.g. more --epochs): the run goes on
    # as it was last continued, not as it was started.
    config = read_run(out)["config"]
    for key, value in changes.items():
        current = config.model_name if key == "model" else getattr(config, key)
        if key not in RESUMABLE and current != value:
            raise CheckpointError(
                f"cannot resume {out} with {key}={value!r}: the run was started with "
                f"{key}={current!r} (in {os.path.join(out, RUN_FILE)}); only "
                f"{', '.join(k for k in RESUMABLE if k not in ('out', 'resume'))} may change "
                f"on --resume"
            )
    return config.replace(**dict(changes, out=out, resume=True))


# RESUMABLE fields a resume takes from the latest checkpoint when not given again (the
# per-machine ones -- devices, workers, quiet -- are not inherited).
INHERITED = (
    "epochs",
    "keep_checkpoints",
    "checkpoint_every",
    "eval_batch_size",
    "on_bad_image",
    "data_dir",
)


def _checkpointed_config(out: str) -> dict:
    """The config recorded in the latest checkpoint of ``out`` (``{}`` if none): read
    as plain JSON, without orbax; a damaged record is the restore's to report."""
    directory = os.path.join(out, "checkpoints")
    steps = checkpoint_steps(directory)
    if not steps:
        return {}
    try:
        with open(os.path.join(directory, str(steps[-1]), "meta", "metadata")) as f:
            saved = json.load(f).get("config")
    except (OSError, ValueError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def train_and_evaluate(config: TrainConfig, **fit_kwargs) -> History:
    """Load data, build the model, train it with :func:`fit`; the CLI's ``train``.

    With ``config.out`` set, ``run.json`` records the config and the data set's
    shape and class names so that ``evaluate``/``predict``/``--resume`` can rebuild
    the run. The folder is one transaction: everything is checked first (the flags,
    the data, the folder's state), then its lock is taken (a second writer is refused
    naming the holder), then ``run.json`` is written once, atomically, by a new run
    (a resume never rewrites it). A refused command leaves the folder as it was.
    """
    check_out_folder(config.out)
    refuse_foreign_checkpoints(config.out, config.resume)
    train, test = prepare_data(config)
    agree_across_processes(config, train, test)  # several processes: the same run, or none
    guard = active_guard()
    if guard is not None and guard.stop:  # interrupted while the data loaded
        print(f"{guard.name}: interrupted while loading the data; nothing written", file=sys.stderr)
        return History(
            interrupted=True, signal=guard.signal, summary={"epochs": 0, "interrupted": True}
        )
    if len(train) < config.batch_size:
        raise ConfigError(
            f"train: batch_size must be <= the number of training examples of "
            f"{config.dataset!r} ({len(train)}), got {config.batch_size}; pass "
            f"--batch-size {max(1, len(train))} or less"
        )
    config.check_input(train.num_classes, train.image_shape)  # before compiling or writing
    model = create_model(
        config.model_name,
        train.num_classes,
        train.image_shape,
        width=config.width,
        seed=config.seed,
        dtype=config.dtype,
    )
    with hold_run_folder(config.out):
        refuse_foreign_checkpoints(config.out, config.resume)  # again, under the lock
        if (
            config.out is not None
            and jax.process_index() == 0
            and not (config.resume and os.path.isfile(os.path.join(config.out, RUN_FILE)))
        ):
            run = {
                "config": dict(config.to_dict(), resume=False),
                "model": config.model_name,
                "dataset": config.dataset,
                "task": config.task,
                "num_classes": train.num_classes,
                "image_shape": list(train.image_shape),
                "class_names": train.class_names,
            }
            if isinstance(test, ImageStream):  # how predict must prepare an image
                run["input"] = test.input_record()
            write_json(os.path.join(config.out, RUN_FILE), run)
        return fit(
            model,
            train,
            test,
            config,
            flip=DATASETS[config.dataset].flip,
            run_info={"model": config.model_name, "dataset": config.dataset},
            **fit_kwargs,
        )


def check_out_folder(out: str | None):
    """Refuse, before any work, an ``out`` that is a file or cannot be written."""
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"train: out must be a folder, got {out!r}, an existing file")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        statvfs = os.statvfs(existing)
    except OSError:
        statvfs = None
    if statvfs is not None and statvfs.f_flag & os.ST_RDONLY:
        raise RunFolderError(
            f"train: out must be writable, got {out!r} ({existing} is on a read-only file system)"
        )
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"train: out must be writable, got {out!r} ({existing} is not a writable folder)"
        )
    if statvfs is None:
        return
    free = statvfs.f_bavail * statvfs.f_frsize
    if free < MIN_FREE_BYTES:
        raise RunFolderError(
            f"train: out needs free disk space, got {out!r} with "
            f"{free // 1024} KiB free on {existing}'s file system (a run "
            f"needs at least {MIN_FREE_BYTES // 1024} KiB); free some space "
            f"or pass another --out"
        )


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
        step = ckpt.best_step(strict=True) if which == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"load_run: no checkpoint in {ckpt.directory}")
        meta = ckpt.read_meta(step)
        model = create_model(
            config.model_name,
            run["num_classes"],
            tuple(run["image_shape"]),
            width=config.width,
            seed=config.seed,
            dtype=config.dtype,
        )
        trainer = Trainer(
            model, config, int(meta["steps_per_epoch"]), make_mesh(1), task=config.task
        )
        state, _ = ckpt.restore(
            step, trainer.initial_state(), expect={"model": run["model"], "dataset": run["dataset"]}
        )
    finally:
        ckpt.close()
    trainer.sync_model(state)
    model.eval()
    return model, dict(run, step=step)


def load_images(
    paths: list[str], image_shape: tuple[int, int, int], *, input: dict | None = None
) -> np.ndarray:
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
