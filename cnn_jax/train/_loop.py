"""The training loop: ``fit(model, train, test, config)`` and ``evaluate``.

The model is split once into a graph definition and its state (parameters, then
everything else: BatchNorm statistics and the model's RNG counters). One pure
train step on that state is jitted once and reused for every batch; it carries
the optimiser state, the epoch's running metric sums and the global step, so the
whole training state is one pytree (``carry``) that is checkpointed as is and
restored to continue bit-for-bit. Batches are sharded over a ``data`` mesh axis,
parameters replicated (see ``_sharding``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cnn_jax.train._augment import augment as augment_batch
from cnn_jax.train._checkpoint import Checkpointer, CheckpointError
from cnn_jax.train._config import TrainConfig
from cnn_jax.train._data import Dataset
from cnn_jax.train._sharding import make_mesh, replicate, shard_batch, to_host

# How often each jitted function was traced (a test checks: once per fit).
TRACE_COUNTS = {"train_step": 0, "eval_step": 0}

LOG_EVERY = 10  # steps between progress-bar refreshes (each one syncs with the device)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; training stopped."""


@dataclass
class History:
    """What :func:`fit` returns.

    Attributes:
      epochs: one dict per finished epoch (the lines of ``metrics.jsonl``).
      summary: the run's totals (the content of ``summary.json``).
      interrupted: True when Ctrl-C stopped the run (a checkpoint was saved).
      step: the global step reached.
      trace_counts: how many times the train and eval steps were traced.
    """

    epochs: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    interrupted: bool = False
    step: int = 0
    trace_counts: dict = field(default_factory=dict)


# ------------------------------------------------------------------ pieces


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The Optax optimiser and learning-rate schedule of ``config``.

    Linear warm-up over ``config.warmup`` epochs to ``config.lr``, then cosine decay
    to 0 or constant. Weight decay is decoupled (AdamW-style for both optimisers)
    and skips 1-D parameters (biases, BatchNorm scales and offsets).
    """
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = min(int(round(config.warmup * steps_per_epoch)), total - 1)
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, warmup_steps=warmup, decay_steps=total, end_value=0.0)
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, config.lr, max(warmup, 1)),
             optax.constant_schedule(config.lr)], [warmup])

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)

    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=0.9, nesterov=True))


def _loss_and_correct(logits, labels):
    """Summed cross entropy and number of correct argmax predictions."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, correct


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# Config fields the jitted steps depend on (everything else is host-side).
_STEP_FIELDS = ("epochs", "optimizer", "lr", "schedule", "warmup", "weight_decay", "augment",
                "dtype", "seed")
_STEP_CACHE: dict = {}


class _Trainer:
    """The jitted functions and state layout for one model and config."""

    def __init__(self, model: nnx.Module, config: TrainConfig, steps_per_epoch: int, mesh):
        self.config = config
        self.mesh = mesh
        self.compute_dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
        model.eval()
        self.graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self.graphdef_train, params, rest = nnx.split(model, nnx.Param, ...)
        self.model = model
        self.num_params = _count_params(params)
        self.tx = make_optimizer(config, steps_per_epoch)
        self.schedule_lr = None
        carry = {
            "params": params,
            "rest": rest,
            "opt_state": self.tx.init(params),
            "sums": jnp.zeros((3,), jnp.float32),  # loss sum, correct, count
            "step": jnp.zeros((), jnp.int32),
        }
        self.initial_carry = replicate(carry, mesh)
        # Reuse the jitted steps of an identical earlier run (same graph, same recipe), so
        # a resumed run, or evaluate after train in one process, compiles nothing new.
        key = (self.graphdef_train, self.graphdef_eval, steps_per_epoch,
               *(getattr(config, f) for f in _STEP_FIELDS))
        if key not in _STEP_CACHE:
            if len(_STEP_CACHE) >= 8:
                _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
            _STEP_CACHE[key] = (jax.jit(self._train_step), jax.jit(self._eval_step))
        self.train_step, self.eval_step = _STEP_CACHE[key]

    def _merge(self, graphdef, params, rest):
        # bf16: parameters are cast at use (gradients flow back to the f32 masters);
        # BatchNorm statistics stay f32, as layers built with dtype=bfloat16 expect.
        if self.compute_dtype != jnp.float32:
            params = _cast_floats(params, self.compute_dtype)
        return nnx.merge(graphdef, params, rest)

    def _train_step(self, carry, images, labels):
        TRACE_COUNTS["train_step"] += 1  # runs only while tracing
        cfg = self.config
        if cfg.augment:
            key = jax.random.fold_in(jax.random.key(cfg.seed), carry["step"])
            pad = 1 if images.shape[1] <= 16 else 4
            if labels.ndim == 3:
                images, labels = augment_batch(key, images, labels, crop_padding=pad, flip=True)
            else:  # no mirror for grey digits/letters: a mirrored 2 is not a 2
                images = augment_batch(key, images, crop_padding=pad,
                                       flip=images.shape[-1] == 3)
        model = self._merge(self.graphdef_train, carry["params"], carry["rest"])

        def loss_fn(model):
            logits = model(images.astype(self.compute_dtype))
            loss, correct = _loss_and_correct(logits, labels)
            return loss.mean(), (loss.sum(), correct.sum())

        # nnx.value_and_grad (not jax's) so BatchNorm may update its statistics in place.
        (_, (loss_sum, correct)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        # Back to the stored dtypes: f32 gradients, statistics and parameters.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, carry["params"])
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, carry["rest"])
        updates, opt_state = self.tx.update(grads, carry["opt_state"], carry["params"])
        params = optax.apply_updates(carry["params"], updates)
        count = jnp.float32(labels.size)
        sums = carry["sums"] + jnp.stack([loss_sum, correct, count])
        return {"params": params, "rest": new_rest, "opt_state": opt_state, "sums": sums,
                "step": carry["step"] + 1}

    def _eval_step(self, params, rest, images, labels, valid):
        TRACE_COUNTS["eval_step"] += 1
        model = self._merge(self.graphdef_eval, params, rest)
        logits = model(images.astype(self.compute_dtype))
        loss, correct = _loss_and_correct(logits, labels)
        w = valid.reshape(valid.shape + (1,) * (loss.ndim - 1)).astype(jnp.float32)
        w = jnp.broadcast_to(w, loss.shape)
        return jnp.stack([(loss * w).sum(), (correct * w).sum(), w.sum()])

    def evaluate(self, carry, data: Dataset, batch_size: int) -> dict:
        if len(data) == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        n_dev = self.mesh.shape["data"]
        batch_size = min(batch_size, -(-len(data) // n_dev) * n_dev)
        batch_size = -(-batch_size // n_dev) * n_dev
        total = jnp.zeros((3,), jnp.float32)
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size]
            y = data.labels[start:start + batch_size]
            valid = np.ones((batch_size,), np.float32)
            if len(x) < batch_size:  # pad the last batch: one shape, one compilation
                pad = batch_size - len(x)
                valid[len(x):] = 0.0
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
            x, y, valid = shard_batch((x, y, valid), self.mesh)
            total = total + self.eval_step(carry["params"], carry["rest"], x, y, valid)
        loss_sum, correct, count = (float(v) for v in to_host(total))
        return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}

    def sync_model(self, carry):
        """Write ``carry``'s parameters and statistics back into the nnx model."""
        nnx.update(self.model, carry["params"], carry["rest"])


# ------------------------------------------------------------------ fit


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of ``epoch``: a function of (seed, epoch) only, so resuming
    mid-run replays exactly the batches an uninterrupted run would see."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _progress(total: int, desc: str, quiet: bool):
    disable = quiet or not sys.stderr.isatty()
    if disable:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _read_metrics(path: str, upto_epoch: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["epoch"] <= upto_epoch]


def _write_metrics(path: str, records: list[dict]):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def fit(model: nnx.Module, train: Dataset, test: Dataset, config: TrainConfig, *,
        on_step: Callable[[int], None] | None = None, run_info: dict | None = None) -> History:
    """Train ``model`` on ``train``, evaluate on ``test`` after every epoch.

    Args:
      model: a flax.nnx module mapping ``(N, H, W, C)`` images to ``(N, classes)``
        logits (or ``(N, H, W, classes)`` for per-pixel labels). It is updated in
        place with the trained parameters and left in eval mode.
      train, test: :class:`Dataset` s.
      config: a :class:`TrainConfig` (epochs, batch size, optimiser, ...). With
        ``config.out`` set, writes ``checkpoints/``, ``metrics.jsonl``,
        ``summary.json``, ``curves.png`` and ``filters.png`` there.
      on_step: called with the global step after every train step (hooks, tests).
      run_info: extra entries for ``summary.json`` and the checkpoint record
        (``model``, ``dataset``, ...); mismatching ones refuse a resume.

    Returns:
      A :class:`History`.

    Raises:
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint stays.
      CheckpointError: ``config.resume`` found a damaged or mismatched checkpoint.

    Example::

        train, test = load_digits()
        model = LeNet5(10, in_channels=1, rngs=nnx.Rngs(0))
        history = fit(model, train.resized(32), test.resized(32), TrainConfig())
        history.summary["test_accuracy"]  # ~0.986
    """
    cfg = config
    run_info = dict(run_info or {})
    mesh = make_mesh(cfg.num_devices)
    n_dev = mesh.shape["data"]
    n_proc = jax.process_count()
    if cfg.batch_size % n_dev:
        raise ValueError(f"fit: batch_size must be divisible by the number of devices "
                         f"({n_dev}), got {cfg.batch_size}")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"fit: batch_size must be <= the number of training examples "
                         f"({len(train)}), got {cfg.batch_size}")
    trainer = _Trainer(model, cfg, steps_per_epoch, mesh)
    carry = trainer.initial_carry
    counts_before = dict(TRACE_COUNTS)
    history = History()
    info = {"model": run_info.get("model", type(model).__name__),
            "dataset": run_info.get("dataset", train.name), **run_info}
    ckpt_meta = {"model": info["model"], "dataset": info["dataset"],
                 "steps_per_epoch": steps_per_epoch, "seed": cfg.seed,
                 "batch_size": cfg.batch_size}

    out = cfg.out
    ckpt = None
    metrics_path = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        metrics_path = os.path.join(out, "metrics.jsonl")
        ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=cfg.keep_checkpoints)
        latest = ckpt.latest_step()
        if latest is not None and not cfg.resume:
            ckpt.close()
            raise CheckpointError(
                f"fit: out must not hold checkpoints unless resuming, got {out!r} with "
                f"checkpoints up to step {latest}; pass resume=True (--resume) or another out")
        if latest is not None:
            try:
                carry, _ = ckpt.restore(latest, carry, expect=ckpt_meta)
            except Exception:
                ckpt.close()
                raise
            carry = replicate(carry, mesh)
            history.epochs = _read_metrics(metrics_path, latest // steps_per_epoch)
            _log(cfg, f"resumed from {ckpt.directory}/{latest} (epoch "
                      f"{latest // steps_per_epoch}, step {latest})")
        elif cfg.resume:
            _log(cfg, f"no checkpoint in {ckpt.directory}; starting from scratch")
        if jax.process_index() == 0:
            _write_metrics(metrics_path, history.epochs)

    start_step = int(to_host(carry["step"]))
    start_epoch, offset = divmod(start_step, steps_per_epoch)
    if offset == 0 and start_step > 0 and float(to_host(carry["sums"])[2]) > 0:
        # Interrupted after an epoch's last step but before its evaluation: close it.
        start_epoch, offset = start_epoch - 1, steps_per_epoch
    local_bs = cfg.batch_size // n_proc
    pid = jax.process_index()
    train_seconds = 0.0
    timed_images = 0
    first_step_s = None
    t_fit = time.perf_counter()
    last_good = ckpt.latest_step() if ckpt else None

    def save(step, metric=None, **extra):
        nonlocal last_good
        if ckpt is None:
            return None
        path = ckpt.save(step, carry, dict(ckpt_meta, **extra), metric=metric)
        last_good = step
        return path

    try:
        for epoch in range(start_epoch, cfg.epochs):
            order = _epoch_order(cfg.seed, epoch, len(train))
            bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.quiet)
            if bar is not None:
                bar.update(offset)
            t_epoch = time.perf_counter()
            t_mark, images_mark = t_epoch, 0
            first_in_epoch = False
            for i in range(offset, steps_per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                idx = idx[pid * local_bs:(pid + 1) * local_bs]
                batch = shard_batch((train.images[idx], train.labels[idx]), mesh)
                t0 = time.perf_counter() if first_step_s is None else None
                carry = trainer.train_step(carry, *batch)
                if t0 is not None:  # the first step compiles: timed apart from the rest
                    jax.block_until_ready(carry["step"])
                    first_step_s = time.perf_counter() - t0
                    t_epoch = t_mark = time.perf_counter()
                    first_in_epoch = True
                images_mark += cfg.batch_size
                step = epoch * steps_per_epoch + i + 1
                if on_step is not None:
                    on_step(step)
                if (i + 1) % LOG_EVERY == 0 or i + 1 == steps_per_epoch:
                    sums = to_host(carry["sums"])
                    _check_finite(sums, epoch, step, last_good, ckpt)
                    if bar is not None:
                        now = time.perf_counter()
                        bar.update((i + 1) - bar.n)
                        bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}",
                                        acc=f"{sums[1] / sums[2]:.4f}",
                                        img_s=f"{images_mark / max(now - t_mark, 1e-9):.0f}")
                        t_mark, images_mark = now, 0
            sums = to_host(carry["sums"])
            _check_finite(sums, epoch, int(to_host(carry["step"])), last_good, ckpt)
            epoch_s = time.perf_counter() - t_epoch
            n_images = (steps_per_epoch - offset) * cfg.batch_size
            if first_in_epoch:
                n_images -= cfg.batch_size
            train_seconds += epoch_s
            timed_images += n_images
            if bar is not None:
                bar.close()
            test_metrics = trainer.evaluate(carry, test, cfg.eval_batch_size)
            record = {
                "epoch": epoch + 1,
                "step": int(to_host(carry["step"])),
                "train_loss": float(sums[0] / sums[2]),
                "train_accuracy": float(sums[1] / sums[2]),
                "test_loss": test_metrics["loss"],
                "test_accuracy": test_metrics["accuracy"],
                "lr": float(_current_lr(cfg, steps_per_epoch, int(to_host(carry["step"])))),
                "epoch_time_s": epoch_s,
                "images_per_s": n_images / max(epoch_s, 1e-9),
            }
            history.epochs.append(record)
            carry = dict(carry, sums=replicate(jnp.zeros((3,), jnp.float32), mesh))
            offset = 0
            if metrics_path is not None and jax.process_index() == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            save(int(to_host(carry["step"])), metric=record["test_accuracy"], epoch=epoch + 1)
            _log(cfg, f"epoch {epoch + 1}/{cfg.epochs}  train loss {record['train_loss']:.4f} "
                      f"acc {record['train_accuracy']:.4f}  test loss {record['test_loss']:.4f} "
                      f"acc {record['test_accuracy']:.4f}  {record['images_per_s']:.0f} img/s")
    except KeyboardInterrupt:
        history.interrupted = True
        step = int(to_host(carry["step"]))
        path = save(step, interrupted=True) if step != last_good else (
            os.path.join(ckpt.directory, str(step)) if ckpt else None)
        print(f"\ninterrupted at step {step}" + (
            f"; saved checkpoint {path} (continue with --resume)" if path else
            "; nothing saved (no out folder)"), file=sys.stderr)
    finally:
        if ckpt is not None:
            ckpt.close()

    trainer.sync_model(carry)
    model.eval()
    history.step = int(to_host(carry["step"]))
    history.trace_counts = {k: TRACE_COUNTS[k] - counts_before[k] for k in TRACE_COUNTS}
    last = history.epochs[-1] if history.epochs else {}
    history.summary = {
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "epochs": len(history.epochs),
        "train_time_s": time.perf_counter() - t_fit,
        "images_per_s": timed_images / train_seconds if train_seconds > 0 else None,
        "time_to_first_step_s": first_step_s,
        "model": info["model"],
        "dataset": info["dataset"],
        "num_params": trainer.num_params,
        "devices": n_dev,
        "device_kind": jax.devices()[0].device_kind,
        "dtype": cfg.dtype,
        "interrupted": history.interrupted,
        **{k: v for k, v in info.items() if k not in ("model", "dataset")},
    }
    if out is not None and jax.process_index() == 0:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(history.summary, f, indent=2)
        from cnn_jax.train._plots import plot_curves, plot_filters

        plot_curves(history.epochs, os.path.join(out, "curves.png"))
        plot_filters(model, os.path.join(out, "filters.png"))
    return history


def _current_lr(cfg: TrainConfig, steps_per_epoch: int, step: int) -> float:
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = min(int(round(cfg.warmup * steps_per_epoch)), total - 1)
    if warmup and step < warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * frac))


def _check_finite(sums, epoch, step, last_good, ckpt):
    if not np.isfinite(sums[0]):
        where = (f"the last good checkpoint is {ckpt.directory}/{last_good}" if last_good
                 is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training stopped: the loss became non-finite ({sums[0]}) in epoch {epoch + 1} "
            f"by step {step}; {where}. Lower --lr or use --dtype float32.")


def _log(cfg: TrainConfig, message: str):
    if not cfg.quiet and jax.process_index() == 0:
        print(message, file=sys.stderr)


def evaluate(model: nnx.Module, data: Dataset, *, batch_size: int = 512,
             num_devices: int | None = None, dtype: str = "float32") -> dict:
    """Loss and accuracy of ``model`` (in eval mode) on ``data``.

    Returns:
      ``{"loss": float, "accuracy": float}`` (per-pixel for segmentation).
    """
    cfg = TrainConfig(batch_size=1, eval_batch_size=batch_size, num_devices=num_devices,
                      dtype=dtype, quiet=True)
    mesh = make_mesh(num_devices)
    trainer = _Trainer(model, cfg, 1, mesh)
    model.eval()
    return trainer.evaluate(trainer.initial_carry, data, batch_size)


def predict(model: nnx.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of ``model`` (eval mode) for ``(N, H, W, C)`` images.

    Returns:
      ``(N, classes)`` (or per pixel ``(N, H, W, classes)``) softmax probabilities.
    """
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def probs(state, x):
        return jax.nn.softmax(nnx.merge(graphdef, state)(x).astype(jnp.float32), -1)

    out = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float32)
        n = len(x)
        if n < batch_size and len(images) > batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(probs(state, x))[:n])
    return np.concatenate(out)
