"""The side jobs of the training loop, each a small object called at defined points.

- :class:`SignalGuard`: SIGINT/SIGTERM only set a flag; the loop checks it between
  steps and decides when to stop, save and exit (130 / 143). No signal ever lands
  inside a checkpoint write.
- :class:`Checkpointing`: when to save (a time cadence, the end, an interrupt), and
  the writing itself on a background thread, so training never waits for orbax
  (whose import is also done there, while the first step compiles).
- :class:`MetricsWriter` (``metrics.jsonl``), :class:`Progress` (tqdm), :func:`log`.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

import jax

from cnn_jax.train._checkpoint import Checkpointer
from cnn_jax.train._runfolder import RunFolderError, os_error_reason, write_lines


def log(quiet: bool, message: str):
    """One line on stderr from process 0, unless quiet."""
    if not quiet and jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class _Worker:
    """One background thread running jobs in order; the first error is re-raised
    in the caller at the next :meth:`submit` or :meth:`drain`."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cnn_jax-side-jobs", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e
            finally:
                self._jobs.task_done()

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job):
        self._raise()
        self._jobs.put(job)

    def drain(self):
        """Wait until every submitted job has run."""
        self._jobs.join()
        self._raise()

    def close(self):
        self._jobs.put(None)
        self._thread.join()


@jax.jit
def _copy(tree):
    """A copy of every leaf in one program (the state's buffers are donated to the next
    step, the snapshot must not be)."""
    return jax.tree.map(lambda x: x.copy(), tree)


class Checkpointing:
    """Saves the training state on a cadence, at the end and on interrupt.

    A save snapshots the state on device (a copy, so the next step may reuse the
    donated buffers) and hands it to a background thread that writes it with
    :class:`Checkpointer` (orbax; atomic: a step folder appears only when
    complete). With several processes every process saves (orbax writes one
    checkpoint collectively).

    Args:
      directory: the ``checkpoints`` folder.
      keep: latest checkpoints kept (the best by metric is kept as well).
      every: seconds between cadence saves (0: at every epoch end).
      meta: entries recorded with every checkpoint (model, data set, ...).
    """

    def __init__(self, directory: str, *, keep: int, every: float, meta: dict):
        self.directory = os.path.abspath(directory)
        self.every = every
        self.meta = meta
        self.last_saved: int | None = None
        self._last_time = time.monotonic()
        self._ckpt: Checkpointer | None = None
        self._worker = _Worker()
        self._worker.submit(lambda: self._open(keep))  # imports orbax off the main thread

    def _open(self, keep):
        self._ckpt = Checkpointer(self.directory, keep=keep)
        self._ckpt.clean_debris()  # what a killed run left (this run holds the folder)
        if jax.process_index() == 0:  # the plots drawn at the end: import them now too
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401

    @property
    def checkpointer(self) -> Checkpointer:
        """The open :class:`Checkpointer` (waits for pending writes)."""
        self._worker.drain()
        return self._ckpt

    def due(self) -> bool:
        """Whether the cadence asks for a save now. With several processes each has its
        own clock, and orbax's save is collective: they agree (any one due: all save),
        so call this where every process is (an epoch's end)."""
        due = time.monotonic() - self._last_time >= self.every
        if jax.process_count() == 1:
            return due
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(np.asarray(multihost_utils.process_allgather(np.int32(due))).any())

    def save(self, step: int, state, *, metric=None, **extra) -> str:
        """Queue a save of ``state`` as checkpoint ``step``; returns its folder."""
        snapshot = _copy(state)
        meta = dict(self.meta, **extra)
        self._worker.submit(lambda: self._ckpt.save(step, snapshot, meta, metric=metric))
        if jax.process_count() > 1:
            # orbax's multi-process save synchronises the processes with collectives of
            # its own: they must not interleave with the train steps' all-reduces.
            self._worker.drain()
        self.last_saved = step
        self._last_time = time.monotonic()
        return os.path.join(self.directory, str(step))

    def submit(self, job):
        """Run ``job()`` on the writer thread after the pending saves (e.g. plots)."""
        self._worker.submit(job)

    def wait(self):
        """Block until every queued save is on disk."""
        self._worker.drain()

    def close(self):
        """Finish the queued writes, then release the checkpointer."""
        try:
            self._worker.drain()
        finally:
            self._worker.close()
            if self._ckpt is not None:
                self._ckpt.close()


class MetricsWriter:
    """``metrics.jsonl``: one JSON line per finished epoch (process 0 writes).

    The file is a record for people and plots, not a source of truth: a resume takes
    the epochs' records from its checkpoint and rewrites the file from them,
    atomically, so a line lost or half-written in a crash is repaired, never trusted.
    """

    def __init__(self, path: str):
        self.path = path

    def read(self, upto_epoch: int) -> list[dict]:
        """The records of epochs ``<= upto_epoch`` in the file (lines that do not parse,
        e.g. one cut off by a crash, are left out)."""
        try:
            with open(self.path) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunFolderError(f"cannot read {self.path}: {os_error_reason(e)}") from e
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
        return [r for r in records if r["epoch"] <= upto_epoch]

    def reset(self, records: list[dict]):
        """Replace the file by ``records``, atomically (drops epochs a resume redoes)."""
        if jax.process_index() == 0:
            write_lines(self.path, [json.dumps(r) + "\n" for r in records])

    def repair(self, records: list[dict]):
        """Rewrite the file from ``records`` only where it differs from them."""
        if jax.process_index() == 0 and self.read(len(records)) != records:
            self.reset(records)

    def write(self, record: dict):
        if jax.process_index() == 0:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise RunFolderError(
                    f"cannot write {self.path}: {os_error_reason(e, self.path)}"
                ) from e


class Progress:
    """A tqdm bar per epoch on a terminal (off when quiet, piped or not process 0)."""

    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty() and jax.process_index() == 0
        self._bar = None

    def start(self, total: int, done: int, desc: str):
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=done, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix):
        if self._bar is not None:
            self._bar.update(n - self._bar.n)
            self._bar.set_postfix(**postfix)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
