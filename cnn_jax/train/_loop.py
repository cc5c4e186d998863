"""The training loop: ``fit(model, train, test, config)``, ``evaluate`` and ``predict``.

``fit`` is a loop over steps; the side jobs (signals, checkpoints, metrics file,
progress bar, plots) are the small objects of ``_hooks`` called at defined points:
after each step (signal check, progress), after each epoch (evaluation, metrics
line, cadence checkpoint) and at the end (final checkpoint, summary, plots). The
jitted steps and the state layout are in ``_step``; batches are sharded over a
``data`` mesh axis, parameters replicated (``_sharding``).

Batches come from one of two sources with the same two calls (``order(epoch)``,
``train(order, i)``): :class:`_Batches` indexes an in-memory ``Dataset`` (no copy
but the rows of the batch), :class:`_StreamBatches` takes them from a
:class:`~cnn_jax.train._feed.StreamFeed` over an ``ImageStream`` (``_stream``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.train._config import ConfigError, TrainConfig
from cnn_jax.train._data import Dataset, epoch_order
from cnn_jax.train._hooks import Checkpointing, MetricsWriter, Progress, log
from cnn_jax.train._runfolder import (
    CheckpointError,
    hold_run_folder,
    refuse_foreign_checkpoints,
    write_json,
)
from cnn_jax.train._sharding import data_sharded, local_rows, make_mesh, shard_batch, to_host
from cnn_jax.train._signals import SignalGuard
from cnn_jax.train._step import TRACE_COUNTS, Trainer, make_optimizer, make_schedule
from cnn_jax.train._stream import BatchPlan, ImageStream, default_workers

__all__ = [
    "History",
    "NonFiniteLossError",
    "evaluate",
    "fit",
    "make_optimizer",
    "make_schedule",
    "predict",
    "TRACE_COUNTS",
]

LOG_EVERY = 10  # steps between progress-bar refreshes (each one syncs with the device)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; training stopped."""


@dataclass
class History:
    """What :func:`fit` returns.

    Attributes:
      epochs: one dict per finished epoch (the lines of ``metrics.jsonl``).
      summary: the run's totals (the content of ``summary.json``).
      interrupted: True when SIGINT/SIGTERM (or Ctrl-C) stopped the run; the state
        was saved when an out folder was given.
      signal: the signal number that stopped the run (``signal.SIGINT`` for a
        ``KeyboardInterrupt``), or None.
      already_complete: True when ``resume`` found the run finished: nothing was
        trained or written.
      step: the global step reached.
      trace_counts: how many times the train and eval steps were traced.
    """

    epochs: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    interrupted: bool = False
    signal: int | None = None
    already_complete: bool = False
    step: int = 0
    trace_counts: dict = field(default_factory=dict)


class _Batches:
    """This process's rows of the global batches of an in-memory data set."""

    def __init__(self, data: Dataset, batch_size: int, mesh, seed: int = 0):
        self.data, self.batch_size, self.mesh, self.seed = data, batch_size, mesh, seed
        self.rows = _rows(batch_size, mesh)

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch`` (``epoch_order``)."""
        return epoch_order(self.seed, epoch, len(self.data))

    def train(self, order: np.ndarray, i: int):
        """Batch ``i`` of an epoch whose example order is ``order``."""
        idx = order[i * self.batch_size : (i + 1) * self.batch_size][self.rows]
        return shard_batch(
            {
                "image": self.data.images[idx],
                "label": self.data.labels[idx],
                "index": idx.astype(np.int32),
            },
            self.mesh,
        )

    def eval(self):
        """Every example once, the last batch padded (``valid`` marks real rows)."""
        n = len(self.data)
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, start + self.batch_size)[self.rows]
            valid = (idx < n).astype(np.float32)
            idx = np.minimum(idx, n - 1)  # padding rows repeat the last example, weight 0
            yield shard_batch(
                {"image": self.data.images[idx], "label": self.data.labels[idx], "valid": valid},
                self.mesh,
            )


class _StreamBatches:
    """The training batches of a streamed data set, from a ``StreamFeed``: the same
    calls as :class:`_Batches` (the order lives in the workers; ``order`` is the
    epoch). ``train`` returns None when a signal arrives while it waits (one process)."""

    def __init__(self, feed):
        self.feed = feed
        self.interruptible = jax.process_count() == 1

    def order(self, epoch: int) -> int:
        return epoch

    def train(self, order: int, i: int):
        return self.feed.next("train", order, i, interruptible=self.interruptible)


def _compile_train_step(trainer, state, image_shape, batch_size: int):
    """Compile the train step for a stream's batches now, while the input workers start
    (seconds: each imports Grain and jax), instead of after the first batch arrives; the
    first step then finds the program in JAX's cache."""
    sharding = data_sharded(trainer.mesh)
    spec = {
        "image": jax.ShapeDtypeStruct((batch_size, *image_shape), np.float32, sharding=sharding),
        "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding),
        "index": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding),
    }
    trainer.train_step.lower(state, spec).compile()


def _rows(batch_size: int, mesh) -> slice:
    """This process's rows of a global batch (all of them in a single-process run)."""
    return local_rows(batch_size, mesh) if jax.process_count() > 1 else slice(0, batch_size)


def _eval_batch_size(requested: int, n: int, n_dev: int) -> int:
    """``requested`` rounded up to the device count, but no larger than the data needs."""
    size = min(requested, -(-n // n_dev) * n_dev)
    return max(-(-size // n_dev) * n_dev, n_dev)


def _evaluate(trainer: Trainer, state, data, batch_size: int, batches=None) -> dict:
    """Loss and accuracy over ``data``: its in-memory batches, or ``batches`` (a
    stream's evaluation pass)."""
    if len(data) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    if batches is None:
        n_dev = trainer.mesh.shape["data"]
        batches = _Batches(
            data, _eval_batch_size(batch_size, len(data), n_dev), trainer.mesh
        ).eval()
    total = np.zeros((3,), np.float64)  # summed on the host: no extra program to compile
    for batch in batches:
        total += to_host(trainer.evaluate_batch(state["params"], state["rest"], batch))
    loss_sum, correct, count = (float(v) for v in total)
    return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}


def _open_feed(train, test, cfg, mesh, *, start_step=0, steps_per_epoch=1, eval_first=False):
    """A ``StreamFeed`` for a run (``train`` given) or one evaluation of ``test``."""
    from cnn_jax.train._feed import StreamFeed

    n_dev = mesh.shape["data"]
    eval_rows = 0
    if test is not None and len(test):
        eval_rows = _eval_batch_size(cfg.eval_batch_size, len(test), n_dev)
    if train is None:
        plan = BatchPlan.for_evaluation(
            test, eval_batch_size=eval_rows, eval_rows=_rows(eval_rows, mesh)
        )
    else:
        plan = BatchPlan.for_run(
            train,
            test,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            rows=_rows(cfg.batch_size, mesh),
            steps_per_epoch=steps_per_epoch,
            start_step=start_step,
            epochs=cfg.epochs,
            eval_batch_size=max(eval_rows, 1),
            eval_rows=_rows(max(eval_rows, 1), mesh),
            eval_first=eval_first,
        )
    source = train if train is not None else test
    workers = default_workers() if source.workers is None else source.workers
    return StreamFeed(
        plan,
        mesh,
        workers=workers,
        normalization=(test if test is not None else train).normalization,
    )


def _check_finite(sums, epoch: int, step: int, ckpt: Checkpointing | None):
    if not np.isfinite(sums[0]):
        last = ckpt.last_saved if ckpt is not None else None
        where = (
            f"the last good checkpoint is {ckpt.directory}/{last}"
            if last is not None
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"training stopped: the loss became non-finite ({sums[0]}) in epoch {epoch + 1} "
            f"by step {step}; {where}. Lower --lr or use --dtype float32."
        )


def _check_sizes(cfg: TrainConfig, n_train: int, n_dev: int, what: str) -> int:
    if cfg.batch_size % n_dev:
        raise ConfigError(
            f"fit: batch_size must be divisible by the number of devices "
            f"({n_dev}), got {cfg.batch_size}"
        )
    steps = n_train // cfg.batch_size
    if steps < 1:
        raise ConfigError(
            f"fit: batch_size must be <= the number of training examples of {what} "
            f"({n_train}), got {cfg.batch_size}; pass a smaller --batch-size"
        )
    return steps


def fit(
    model: nnx.Module,
    train: Dataset | ImageStream,
    test: Dataset | ImageStream,
    config: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    run_info: dict | None = None,
    flip: bool = True,
) -> History:
    """Train ``model`` on ``train``, evaluate on ``test`` after every epoch.

    Args:
      model: a flax.nnx module mapping ``(N, H, W, C)`` images to ``(N, classes)``
        logits (``train.task == "classify"``) or ``(N, H, W, classes)`` (``"segment"``).
        It is updated in place with the trained parameters and left in eval mode.
      train, test: :class:`Dataset` s, or ``ImageStream`` s read from disk batch by
        batch (``load_dataset("folder", ...)``), with ``config.workers`` processes
        decoding and ``config.on_bad_image`` deciding what an unreadable file does.
      config: a :class:`TrainConfig`. With ``config.out`` set, writes
        ``checkpoints/``, ``metrics.jsonl``, ``summary.json``, ``curves.png`` and
        ``filters.png`` there; ``config.resume`` continues from its latest checkpoint.
      on_step: called with the global step after every train step (hooks, tests).
      run_info: extra entries for ``summary.json`` and the checkpoint record
        (``model``, ``dataset``, ...); mismatching ones refuse a resume.
      flip: whether augmentation may mirror images (RGB only; off for digits).

    Returns:
      A :class:`History`. SIGINT/SIGTERM stop the run between two steps: the state
      is saved and ``history.interrupted`` is set (the CLI exits 130/143).

    Raises:
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint stays.
      CheckpointError: ``config.resume`` found a damaged or mismatched checkpoint, or
        ``out`` holds checkpoints and ``resume`` is off.

    Example::

        train, test = load_digits()
        model = DigitsCNN(10, in_channels=1, rngs=nnx.Rngs(0))
        history = fit(model, train, test, TrainConfig(), flip=False)
        history.summary["test_accuracy"]  # ~0.99
    """
    cfg = config
    info = {"model": type(model).__name__, "dataset": train.name, **(run_info or {})}
    mesh = make_mesh(cfg.num_devices)
    n_dev = mesh.shape["data"]
    steps_per_epoch = _check_sizes(cfg, len(train), n_dev, repr(train.name))
    # Recorded in every checkpoint: what a resume checks, and the config it continues.
    meta = {
        "model": info["model"],
        "dataset": info["dataset"],
        "steps_per_epoch": steps_per_epoch,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "config": dict(cfg.to_dict(), resume=False),
    }
    trainer_cfg = cfg
    if isinstance(train, ImageStream):
        options = dict(workers=cfg.workers, on_bad_image=cfg.on_bad_image)
        train = train.with_options(augment=cfg.augment, **options)
        test = test.with_options(**options) if isinstance(test, ImageStream) else test
        meta["data"] = train.fingerprint()  # a resume must read the same files
        if train.augments_on_host:  # the workers crop and flip; the step must not shift
            trainer_cfg = cfg.replace(augment=False)
    with hold_run_folder(cfg.out):  # one writer per run folder (re-entrant)
        return _fit_in_folder(model, train, test, cfg, trainer_cfg, meta, info, on_step, flip)


def _fit_in_folder(model, train, test, cfg, trainer_cfg, meta, info, on_step, flip):
    history = History()
    metrics = ckpt = None
    if cfg.out is not None:
        refuse_foreign_checkpoints(cfg.out, cfg.resume, "fit")
        metrics = MetricsWriter(os.path.join(cfg.out, "metrics.jsonl"))
        ckpt = Checkpointing(
            os.path.join(cfg.out, "checkpoints"),
            keep=cfg.keep_checkpoints,
            every=cfg.checkpoint_every,
            meta=meta,
        )
    feeds = []  # streamed input that _run opened
    with SignalGuard() as guard:  # until the last checkpoint is on disk
        try:
            trainer = Trainer(
                model,
                trainer_cfg,
                meta["steps_per_epoch"],
                make_mesh(cfg.num_devices),
                task=train.task,
                flip=flip,
            )
            state = trainer.initial_state()
            if ckpt is not None:
                state = _restore(
                    ckpt,
                    state,
                    cfg,
                    history,
                    metrics,
                    trainer.steps_per_epoch,
                    cfg.epochs * trainer.steps_per_epoch,
                )
                if history.already_complete:
                    return history
            history = _run(
                trainer,
                state,
                train,
                test,
                cfg,
                history,
                ckpt,
                metrics,
                info,
                on_step,
                guard,
                feeds,
            )
        finally:
            if ckpt is not None:
                guard.saving = True
                ckpt.close()
                guard.saving = False
            for feed in feeds:  # input workers stop while the last checkpoint is written
                feed.join()
        history.signal = guard.signal
        return history


def _restore(ckpt, state, cfg, history, metrics, steps_per_epoch, total_steps):
    """The latest checkpoint's state (on resume), and the metrics of its epochs."""
    latest = ckpt.checkpointer.latest_step()
    if latest is None:
        if cfg.resume:
            log(False, f"no checkpoint in {ckpt.directory}; starting from scratch")
        metrics.reset([])
        return state
    data = ckpt.meta.get("data")
    saved = ckpt.checkpointer.read_meta(latest).get("data") if data else None
    if saved is not None and saved != data:
        raise CheckpointError(
            f"checkpoint {ckpt.directory}/{latest} was written for other image files "
            f"({saved['files']} files, SHA-1 {saved['sha1'][:12]}), but the data set now has "
            f"{data['files']} (SHA-1 {data['sha1'][:12]}): resuming would not replay the same "
            f"batches; restore the folder's files or start a new run"
        )
    state, meta = ckpt.checkpointer.restore(
        latest,
        state,
        expect={k: ckpt.meta[k] for k in ("model", "dataset", "steps_per_epoch", "batch_size")},
    )
    ckpt.last_saved = latest
    epochs_done = latest // steps_per_epoch
    if "history" in meta:  # the epochs' records as of this checkpoint: trusted over the file
        history.epochs = [r for r in meta["history"] if r["epoch"] <= epochs_done]
    else:  # a checkpoint of an earlier version
        history.epochs = metrics.read(epochs_done)
    if latest >= total_steps and len(history.epochs) >= cfg.epochs:
        history.already_complete = True
        history.step = latest
        history.summary = {"epochs": len(history.epochs)}
        metrics.repair(history.epochs)  # e.g. a last line lost in a crash: nothing retrains
        return state
    metrics.reset(history.epochs)
    log(cfg.quiet, f"resumed from {ckpt.directory}/{latest} (epoch {epochs_done}, step {latest})")
    return state


def _agreed_stop(guard, multi: bool) -> bool:
    """Whether to stop now. With several processes, all must stop at the same step, so
    the flag is reduced over them (a collective: only called where every process is)."""
    if not multi:
        return guard.stop
    from jax.experimental import multihost_utils

    signals = np.asarray(multihost_utils.process_allgather(np.int32(guard.signal or 0)))
    if guard.signal is None and signals.any():  # stop as the peer that was signalled
        guard.signal = int(signals[signals > 0][0])
    return bool(signals.any())


def _run(trainer, state, train, test, cfg, history, ckpt, metrics, info, on_step, guard, feeds):
    steps_per_epoch = trainer.steps_per_epoch
    counts_before = dict(TRACE_COUNTS)
    start_step = int(to_host(state["step"]))
    start_epoch, offset = divmod(start_step, steps_per_epoch)
    if offset == 0 and start_step > 0 and float(to_host(state["sums"])[2]) > 0:
        # Stopped after an epoch's last step but before its evaluation: close it first.
        start_epoch, offset = start_epoch - 1, steps_per_epoch
    feed = None
    if isinstance(train, ImageStream):  # workers start building batches now
        feed = _open_feed(
            train,
            test,
            cfg,
            trainer.mesh,
            start_step=start_step,
            steps_per_epoch=steps_per_epoch,
            eval_first=offset == steps_per_epoch,
        )
        feeds.append(feed)
        batches = _StreamBatches(feed)
        _compile_train_step(trainer, state, train.image_shape, cfg.batch_size)
    else:
        batches = _Batches(train, cfg.batch_size, trainer.mesh, cfg.seed)
    if len(test):
        n_dev = trainer.mesh.shape["data"]
        trainer.compile_eval_early(
            state,
            _eval_batch_size(cfg.eval_batch_size, len(test), n_dev),
            test if feed is None else feed.eval_signature(),
        )
    progress = Progress(cfg.quiet)
    chrono = {"train_s": 0.0, "images": 0, "first_step_s": None, "wait_before_s": 0.0}
    t_fit = time.perf_counter()
    step = start_step
    multi = jax.process_count() > 1
    stop = False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            order = batches.order(epoch)
            progress.start(steps_per_epoch, offset, f"epoch {epoch + 1}/{cfg.epochs}")
            t_epoch, timed = time.perf_counter(), 0
            for i in range(offset, steps_per_epoch):
                # Single process: checked every step; several: at the sync points.
                if (not multi or (i - offset) % LOG_EVERY == 0) and _agreed_stop(guard, multi):
                    stop = True
                    break
                t0 = time.perf_counter()
                batch = batches.train(order, i)
                if batch is None:  # a signal arrived while the input was late
                    stop = True
                    break
                state = trainer.train_step(state, batch)
                step = epoch * steps_per_epoch + i + 1
                if chrono["first_step_s"] is None:  # it compiled: timed apart
                    jax.block_until_ready(state["step"])
                    chrono["first_step_s"] = time.perf_counter() - t0
                    chrono["wait_before_s"] = feed.wait_s if feed is not None else 0.0
                    t_epoch = time.perf_counter()
                else:
                    timed += 1
                if on_step is not None:
                    on_step(step)
                if (i + 1) % LOG_EVERY == 0 or i + 1 == steps_per_epoch:
                    sums = to_host(state["sums"])
                    _check_finite(sums, epoch, step, ckpt)
                    progress.update(
                        i + 1, loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.4f}"
                    )
            progress.close()
            if stop or _agreed_stop(guard, multi):
                stop = True
                break
            sums = to_host(state["sums"])
            _check_finite(sums, epoch, step, ckpt)
            epoch_s = time.perf_counter() - t_epoch
            chrono["train_s"] += epoch_s
            chrono["images"] += timed * cfg.batch_size
            test_metrics = _evaluate(
                trainer,
                state,
                test,
                cfg.eval_batch_size,
                None if feed is None else feed.eval_pass(epoch),
            )
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(sums[0] / sums[2]),
                "train_accuracy": float(sums[1] / sums[2]),
                "test_loss": test_metrics["loss"],
                "test_accuracy": test_metrics["accuracy"],
                "lr": trainer.learning_rate(step),
                "epoch_time_s": epoch_s,
                "images_per_s": timed * cfg.batch_size / max(epoch_s, 1e-9),
            }
            history.epochs.append(record)
            state = dict(state, sums=trainer.zero_sums())
            offset = 0
            if metrics is not None:
                metrics.write(record)
            last = epoch + 1 == cfg.epochs
            if ckpt is not None and (last or ckpt.due()):
                ckpt.save(
                    step,
                    state,
                    metric=record["test_accuracy"],
                    epoch=epoch + 1,
                    history=list(history.epochs),
                )
            log(
                cfg.quiet,
                f"epoch {epoch + 1}/{cfg.epochs}  train loss "
                f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
                f"  test loss {record['test_loss']:.4f} acc "
                f"{record['test_accuracy']:.4f}  "
                f"{record['images_per_s']:.0f} img/s",
            )
    except KeyboardInterrupt:  # Ctrl-C raised by code the guard does not cover
        guard.signal, stop = signal.SIGINT, True
    finally:
        progress.close()
        if feed is not None:
            feed.close(wait=False)  # fit joins it after the last checkpoint
    if feed is not None:
        chrono["input"] = _input_summary(feed, chrono, multi)
    if stop:
        history.interrupted = True
        history.signal = guard.signal or signal.SIGINT
        step = int(to_host(state["step"]))
        name = signal.Signals(history.signal).name
        if step == start_step and (
            ckpt is None or ckpt.last_saved is None or ckpt.last_saved == step
        ):
            log(False, f"\n{name}: interrupted before the first step; nothing to save")
        else:
            guard.saving = True
            saved = None
            if ckpt is not None:
                saved = (
                    os.path.join(ckpt.directory, str(step))
                    if ckpt.last_saved == step
                    else ckpt.save(step, state, interrupted=True, history=list(history.epochs))
                )
                ckpt.wait()
            guard.saving = False
            log(
                False,
                f"\n{name}: stopped at step {step}; "
                + (
                    f"saved {saved} (continue with --resume)"
                    if saved
                    else "nothing saved (no out folder)"
                ),
            )
    trainer.sync_model(state)
    model = trainer.model
    model.eval()
    history.step = int(to_host(state["step"]))
    history.trace_counts = {k: TRACE_COUNTS[k] - counts_before[k] for k in TRACE_COUNTS}
    history.summary = _summary(history, chrono, time.perf_counter() - t_fit, trainer, info, cfg)
    if cfg.out is not None and jax.process_index() == 0:
        write_json(os.path.join(cfg.out, "summary.json"), history.summary)
        if ckpt is not None:
            ckpt.submit(lambda: _plots(history.epochs, model, cfg.out))
        else:
            _plots(history.epochs, model, cfg.out)
    return history


def _input_summary(feed, chrono, multi: bool) -> dict:
    """The summary's lines on streamed input: workers, the time the steps waited for
    batches (after the first), and the unreadable files skipped (over all processes)."""
    bad = feed.skipped()
    if multi:  # every process saw other files: the union (collectives, all processes)
        from jax.experimental import multihost_utils

        for kind, found in bad.items():
            counts = np.asarray(multihost_utils.process_allgather(np.int64(len(found))))
            width = int(counts.max())
            if width:
                padded = np.full((width,), -1, np.int64)
                padded[: len(found)] = found
                every = np.asarray(multihost_utils.process_allgather(padded)).ravel()
                bad[kind] = sorted(set(every[every >= 0].tolist()))
    plan = feed.plan
    files = [plan.train.path(k) for k in bad["train"]] + [plan.test.path(k) for k in bad["eval"]]
    return {
        "input_workers": feed.workers,
        "input_wait_s": max(feed.wait_s - chrono["wait_before_s"], 0.0),
        "skipped_images": len(files),
        "skipped_files": files[:20],
    }


def _summary(history, chrono, fit_s, trainer, info, cfg) -> dict:
    last = history.epochs[-1] if history.epochs else {}
    return {
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "epochs": len(history.epochs),
        "train_time_s": fit_s,
        "images_per_s": chrono["images"] / chrono["train_s"] if chrono["train_s"] else None,
        "time_to_first_step_s": chrono["first_step_s"],
        "model": info["model"],
        "dataset": info["dataset"],
        "num_params": trainer.num_params,
        "devices": trainer.mesh.shape["data"],
        "processes": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "dtype": cfg.dtype,
        "interrupted": history.interrupted,
        **chrono.get("input", {}),
        **{k: v for k, v in info.items() if k not in ("model", "dataset")},
    }


def _plots(epochs, model, out):
    from cnn_jax.train._plots import plot_curves, plot_filters

    plot_curves(epochs, os.path.join(out, "curves.png"))
    plot_filters(model, os.path.join(out, "filters.png"))


def evaluate(
    model: nnx.Module,
    data: Dataset | ImageStream,
    *,
    batch_size: int = 512,
    num_devices: int | None = None,
    dtype: str = "float32",
) -> dict:
    """Loss and accuracy of ``model`` (in eval mode) on ``data``.

    ``data`` may be an ``ImageStream``: its images are read in one pass by its
    ``workers`` (unreadable files stop the evaluation or, with ``on_bad_image="skip"``,
    are left out and counted).

    Returns:
      ``{"loss": float, "accuracy": float}``: mean cross entropy and accuracy per
      image (``"classify"``) or per pixel (``"segment"``); for a stream also
      ``"skipped_images"``.
    """
    cfg = TrainConfig(
        batch_size=1, eval_batch_size=batch_size, num_devices=num_devices, dtype=dtype, quiet=True
    )
    mesh = make_mesh(num_devices)
    trainer = Trainer(model, cfg, 1, mesh, task=data.task)
    model.eval()
    if not isinstance(data, ImageStream) or len(data) == 0:
        return _evaluate(trainer, trainer.initial_state(), data, batch_size)
    feed = _open_feed(None, data, cfg, mesh)
    try:
        result = _evaluate(trainer, trainer.initial_state(), data, batch_size, feed.eval_pass(0))
    finally:
        feed.close()
    return dict(result, skipped_images=len(feed.skipped()["eval"]))


_PREDICT_FNS: dict = {}


def predict(model: nnx.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of ``model`` (eval mode) for ``(N, H, W, C)`` images.

    Batches are padded to ``min(batch_size, N)`` rows, so every call with the same
    model and shapes reuses one compiled program.

    Returns:
      ``(N, classes)`` (or per pixel ``(N, H, W, classes)``) softmax probabilities.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    fn = _PREDICT_FNS.get(graphdef)
    if fn is None:
        if len(_PREDICT_FNS) >= 8:  # a few models' programs, not every model ever seen
            _PREDICT_FNS.pop(next(iter(_PREDICT_FNS)))
        fn = _PREDICT_FNS[graphdef] = jax.jit(
            lambda state, x: jax.nn.softmax(nnx.merge(graphdef, state)(x).astype(jnp.float32), -1)
        )
    images = np.asarray(images, np.float32)
    size = max(1, min(batch_size, len(images)))
    out = []
    for start in range(0, len(images), size):
        x = images[start : start + size]
        n = len(x)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(fn(state, x))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
