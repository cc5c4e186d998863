"""The pure train and eval steps, the optimiser and its schedule, and per-task metrics.

A model is split once into a graph definition and its state (parameters, then
everything else: BatchNorm statistics and the model's RNG counters). The training
state is one pytree::

    {"params", "rest", "opt_state", "sums": [loss, correct, count], "step"}

``train_step(state, batch) -> state`` is jitted once per :class:`Trainer` (no cache
outlives it) and donates its input state. ``batch`` holds ``image``, ``label`` and
``index`` (the examples' positions in the data set, which key their augmentation,
so a run does not depend on how a batch is split over devices). The task
(classify or segment) is a property of the data set and picks the loss; nothing
is decided from array ranks.
"""

from __future__ import annotations

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cnn_jax.train._augment import augment as augment_batch
from cnn_jax.train._config import TrainConfig
from cnn_jax.train._sharding import data_sharded, replicated

# How often each jitted function was traced (a test checks: once per fit).
TRACE_COUNTS = {"train_step": 0, "eval_step": 0}


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate at each step: linear warm-up over ``config.warmup`` epochs to
    ``config.lr``, then cosine decay to 0 or constant. The optimiser and the logged
    ``lr`` both read this one object."""
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = min(int(round(config.warmup * steps_per_epoch)), total - 1)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.lr, warmup_steps=warmup, decay_steps=total, end_value=0.0
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.lr, max(warmup, 1)), optax.constant_schedule(config.lr)],
        [warmup],
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The Optax optimiser of ``config`` on :func:`make_schedule`'s learning rate.

    Weight decay is decoupled (AdamW-style for both optimisers) and skips 1-D
    parameters (biases, BatchNorm scales and offsets).
    """
    schedule = make_schedule(config, steps_per_epoch)

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)

    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )


def task_metrics(task: str, logits, labels):
    """Per-example ``(loss_sum, correct, count)``: one of each per image for
    ``"classify"``, summed over the pixels of the image for ``"segment"``."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if task == "segment":
        axes = tuple(range(1, loss.ndim))
        return (
            loss.sum(axes),
            correct.sum(axes),
            jnp.full(loss.shape[:1], np.prod(loss.shape[1:]), jnp.float32),
        )
    return loss, correct, jnp.ones_like(loss)


# XLA options for programs that run once (initialisation): their speed does not
# matter, their compile time does (-O0 compiles LeNet-size inits about 3x faster).
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once(fn, *args):
    """``fn(*args)`` for a jitted ``fn`` that runs once, compiled at XLA's -O0.

    The persistent compilation cache applies as for any program. Falls back to the
    default options on a backend that does not take them.
    """
    lowered = fn.lower(*args)
    try:
        compiled = lowered.compile(compiler_options=RUN_ONCE_OPTIONS)
    except Exception:  # noqa: BLE001 - an option this backend does not know
        compiled = lowered.compile()
    return compiled(*args)


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


class Trainer:
    """The jitted steps and the state layout for one model, task and config.

    Args:
      model: the nnx model (its current parameters are the initial state).
      config: the :class:`TrainConfig` (optimiser, schedule, dtype, augmentation, seed).
      steps_per_epoch: steps in one epoch (for the schedule and the epoch of a step).
      mesh: the ``data`` mesh.
      task: ``"classify"`` or ``"segment"``.
      flip: whether augmentation may mirror images.
    """

    def __init__(
        self,
        model: nnx.Module,
        config: TrainConfig,
        steps_per_epoch: int,
        mesh,
        *,
        task: str = "classify",
        flip: bool = True,
    ):
        self.config = config
        self.mesh = mesh
        self.task = task
        self.flip = flip
        self.steps_per_epoch = steps_per_epoch
        self.compute_dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
        self.model = model
        model.eval()
        self.graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self.graphdef_train, params, rest = nnx.split(model, nnx.Param, ...)
        self.num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
        self.schedule = make_schedule(config, steps_per_epoch)
        self.tx = make_optimizer(config, steps_per_epoch)
        rep = replicated(mesh)
        self._params, self._rest = params, rest
        self.init_state = jax.jit(self._init_state, out_shardings=rep)
        self._lr = jax.jit(self.schedule)  # one program, not one per jnp op of the schedule
        self.train_step = jax.jit(self._train_step, donate_argnums=0, out_shardings=rep)
        self.eval_step = jax.jit(self._eval_step, out_shardings=rep)

    def initial_state(self):
        """The state before the first step, replicated over the mesh."""
        return run_once(self.init_state, self._params, self._rest)

    def zero_sums(self):
        """Fresh zero metric sums for a new epoch (a new buffer each time: the state's
        buffers are donated to the next step; a host transfer compiles nothing)."""
        return jax.device_put(np.zeros((3,), np.float32), replicated(self.mesh))

    def learning_rate(self, step: int) -> float:
        """The schedule's learning rate at ``step`` (what the optimiser used there)."""
        return float(self._lr(np.int32(step)))

    def _init_state(self, params, rest):
        return {
            "params": params,
            "rest": rest,
            "opt_state": self.tx.init(params),
            "sums": jnp.zeros((3,), jnp.float32),
            "step": jnp.zeros((), jnp.int32),
        }

    def _merge(self, graphdef, params, rest):
        # bf16: parameters are cast at use (gradients flow back to the f32 masters);
        # BatchNorm statistics stay f32, as layers built with dtype=bfloat16 expect.
        if self.compute_dtype != jnp.float32:
            params = _cast_floats(params, self.compute_dtype)
        return nnx.merge(graphdef, params, rest)

    def _augment(self, state, images, labels, index):
        cfg = self.config
        epoch = state["step"] // self.steps_per_epoch
        key = jax.random.fold_in(jax.random.key(cfg.seed), epoch)
        pad = 1 if images.shape[1] <= 16 else 4
        flip = self.flip and images.shape[-1] == 3
        if self.task == "segment":
            return augment_batch(key, images, labels, crop_padding=pad, flip=flip, index=index)
        return augment_batch(key, images, crop_padding=pad, flip=flip, index=index), labels

    def _train_step(self, state, batch):
        TRACE_COUNTS["train_step"] += 1  # runs only while tracing
        images, labels = batch["image"], batch["label"]
        if self.config.augment:
            images, labels = self._augment(state, images, labels, batch["index"])
        model = self._merge(self.graphdef_train, state["params"], state["rest"])

        def loss_fn(model):
            logits = model(images.astype(self.compute_dtype))
            loss, correct, count = task_metrics(self.task, logits, labels)
            return loss.sum() / count.sum(), (loss.sum(), correct.sum(), count.sum())

        # nnx.value_and_grad (not jax's) so BatchNorm may update its statistics in place.
        (_, sums), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        # Back to the stored dtypes: f32 gradients, statistics and parameters.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state["params"])
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, state["rest"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        return {
            "params": optax.apply_updates(state["params"], updates),
            "rest": new_rest,
            "opt_state": opt_state,
            "sums": state["sums"] + jnp.stack(sums),
            "step": state["step"] + 1,
        }

    def _eval_step(self, params, rest, batch):
        TRACE_COUNTS["eval_step"] += 1
        model = self._merge(self.graphdef_eval, params, rest)
        logits = model(batch["image"].astype(self.compute_dtype))
        loss, correct, count = task_metrics(self.task, logits, batch["label"])
        w = batch["valid"]
        return jnp.stack([(loss * w).sum(), (correct * w).sum(), (count * w).sum()])

    def compile_eval_early(self, state, batch_rows: int, data) -> None:
        """Trace the eval step for ``batch_rows``-row batches of ``data`` now and compile it
        on a background thread, while the first train step compiles on this one (XLA
        compiles without the GIL: on two cores the two compilations overlap)."""
        sharding = data_sharded(self.mesh)

        def spec(shape, dtype, sh):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

        batch = {
            "image": spec((batch_rows, *data.images.shape[1:]), data.images.dtype, sharding),
            "label": spec((batch_rows, *data.labels.shape[1:]), data.labels.dtype, sharding),
            "valid": spec((batch_rows,), np.float32, sharding),
        }
        params, rest = (
            jax.tree.map(lambda x: spec(x.shape, x.dtype, x.sharding), state[k])
            for k in ("params", "rest")
        )
        lowered = self.eval_step.lower(params, rest, batch)
        self._eval_signature = jax.tree.map(lambda x: (x.shape, x.dtype), batch)
        self._eval_compiled = concurrent.futures.ThreadPoolExecutor(1).submit(lowered.compile)

    def evaluate_batch(self, params, rest, batch):
        """``eval_step`` on one batch, through the early-compiled program when it fits."""
        future = getattr(self, "_eval_compiled", None)
        if (
            future is not None
            and jax.tree.map(lambda x: (x.shape, x.dtype), batch) == self._eval_signature
        ):
            return future.result()(params, rest, batch)
        return self.eval_step(params, rest, batch)

    def sync_model(self, state):
        """Write ``state``'s parameters and statistics back into the nnx model."""
        nnx.update(self.model, state["params"], state["rest"])
