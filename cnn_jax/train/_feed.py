"""The device side of streamed input: batches of a plan, on the devices ahead of use.

:class:`StreamFeed` runs a :class:`~cnn_jax.train._stream.BatchPlan` with Grain
(``open_batches``) and, on one background thread, takes each host batch out of
shared memory, shards it over the ``data`` mesh (``shard_batch``: with several
processes, each passes its own rows) and turns its uint8 images into float32 on the
device (``/ 255``, then the recipe's mean/std, by table lookup), so that the next batch is already
on the devices while a step runs. The loop takes batches in the plan's order with
:meth:`StreamFeed.next`; an error in a worker (an unreadable file, a worker that
died) is raised there, in the training thread, with the file or the cause named.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.train._sharding import data_sharded, shard_batch
from cnn_jax.train._signals import active_guard
from cnn_jax.train._stream import (
    KINDS,
    BatchPlan,
    close_batches,
    lookup_table,
    open_batches,
    to_private,
    worker_error,
)

_END = object()
_POLL_S = 0.2


def _prepare(images, table):
    # uint8 -> float32 by table lookup: exactly the host's ``normalize`` (an XLA division
    # by 255 becomes a multiplication by its reciprocal, off in the last bit), and
    # faster than the arithmetic.
    return table[jnp.arange(table.shape[0]), images.astype(jnp.int32)]


class StreamFeed:
    """The batches of ``plan`` on the devices of ``mesh``, ``depth`` ahead of use.

    Args:
      plan: what to build, in order.
      mesh: the ``data`` mesh.
      workers: input worker processes (0: a thread of this process decodes).
      normalization: ``(mean, std)`` applied on the device after ``/ 255``, or None.
      depth: batches held on the devices ahead of the consumer.
    """

    def __init__(self, plan: BatchPlan, mesh, *, workers: int, normalization=None, depth: int = 2):
        self.plan, self.mesh, self.workers = plan, mesh, workers
        source = plan.train if plan.train is not None else plan.test
        self._table = lookup_table(normalization, source.channels)
        self._prepare = jax.jit(_prepare, out_shardings=data_sharded(mesh))
        self._bad: dict[str, set[int]] = {"train": set(), "eval": set()}
        self._lock = threading.Lock()
        self.wait_s = 0.0  # time the consumer waited for batches
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._closer: threading.Thread | None = None
        self._iterator = open_batches(plan, workers)
        self._thread = threading.Thread(target=self._run, name="cnn_jax-input", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- producer thread
    def _run(self):
        try:
            for host in self._iterator:
                if self._stop.is_set():
                    return
                host = {k: to_private(v) for k, v in host.items()}
                where = tuple(int(v) for v in host.pop("where"))
                self._note_bad(where, host.pop("bad"))
                batch = shard_batch(host, self.mesh)
                batch["image"] = self._prepare(batch["image"], self._table)
                if not self._put((where, batch)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(worker_error(e))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _note_bad(self, where, bad):
        kind = "train" if where[0] == KINDS["train"] else "eval"
        stream = self.plan.train if kind == "train" else self.plan.test
        for k in bad.tolist():
            with self._lock:
                new = k not in self._bad[kind]
                self._bad[kind].add(k)
            if new:
                print(f"skipped unreadable image {stream.path(k)}", file=sys.stderr, flush=True)

    def skipped(self) -> dict[str, list[int]]:
        """The indices of the unreadable files skipped so far, per kind (``"train"`` and
        ``"eval"``), sorted."""
        with self._lock:
            return {kind: sorted(found) for kind, found in self._bad.items()}

    # -------------------------------------------------------------- consumer
    def next(self, kind: str, epoch: int, i: int, *, interruptible: bool = False):
        """Batch ``i`` of ``kind`` (``"train"``/``"eval"``) of ``epoch``, the next one in
        the plan. With ``interruptible``, returns None if SIGINT/SIGTERM arrives while
        waiting (single-process runs: a stalled input must not make Ctrl-C wait)."""
        t0 = time.perf_counter()
        guard = active_guard() if interruptible else None
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if guard is not None and guard.stop:
                    self.wait_s += time.perf_counter() - t0
                    return None
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(
                        "StreamFeed: the input thread ended without a batch "
                        f"for {kind} batch {i} of epoch {epoch}"
                    ) from None
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        if item is _END:
            raise RuntimeError(
                f"StreamFeed: the plan ended before {kind} batch {i} of epoch {epoch}"
            )
        where, batch = item
        if where != (KINDS[kind], epoch, i):
            raise RuntimeError(
                f"StreamFeed: expected {kind} batch {i} of epoch {epoch}, the plan has {where}"
            )
        return batch

    def eval_pass(self, epoch: int):
        """The evaluation batches of ``epoch``, in order."""
        part = next(p for p in self.plan.parts if p.kind == "eval" and p.epoch == epoch)
        for i in range(part.count):
            yield self.next("eval", epoch, i)

    def eval_signature(self):
        """A stand-in with the shapes and dtypes of an evaluation batch's image and label
        arrays (``Trainer.compile_eval_early`` reads ``images``/``labels``)."""
        return types.SimpleNamespace(
            images=np.zeros((0, *self.plan.test.image_shape), np.float32),
            labels=np.zeros((0,), np.int32),
        )

    def close(self, *, wait: bool = True):
        """Stop the thread and the workers; batches not consumed are dropped. Stopping
        the worker processes takes a second or two (each finishes its batch and exits);
        with ``wait=False`` that happens on a thread, and :meth:`join` waits for it."""
        self._stop.set()
        if wait:
            self._shutdown()
        elif self._closer is None:
            self._closer = threading.Thread(
                target=self._shutdown, daemon=True, name="cnn_jax-input-close"
            )
            self._closer.start()

    def join(self):
        """Wait until a ``close(wait=False)`` has stopped everything."""
        if self._closer is not None:
            self._closer.join()

    def _shutdown(self):
        deadline = time.monotonic() + 60  # a batch in the making finishes first
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._drain()
            self._thread.join(_POLL_S)
        close_batches(self._iterator)
        self._thread.join(30)
        self._drain()

    def _drain(self):
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
