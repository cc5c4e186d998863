"""Checkpoints with orbax-checkpoint: atomic, checksummed, the last few and the best kept.

A checkpoint holds the whole training state as one flat list of arrays (params,
BatchNorm statistics, the model's RNG state, optimiser state) plus a JSON record:
the global step, the data set and model it was written for, every leaf's tree
path, shape, dtype and SHA-1, and the epoch's metrics. orbax writes a step into a
temporary folder and renames it into place when complete, so a write cut off by a
crash or a kill never shows up as a checkpoint. Resuming checks the record against
the run before touching any array, and every restored array against its SHA-1, so a
checkpoint from another model or a damaged file is refused with
:class:`CheckpointError` instead of being half-loaded. Every process of a
multi-process run calls :meth:`Checkpointer.save` (orbax writes collectively).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.train._runfolder import CheckpointError, os_error_reason
from cnn_jax.train._sharding import to_host

__all__ = ["CheckpointError", "Checkpointer", "flatten_state"]

FORMAT_VERSION = 1


TRASH_PREFIX = ".deleting-"  # a step being deleted: not a step name, removed at start


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of an error, at most 200 characters (TensorStore's messages
    carry a multi-line spec dump)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}"


@contextlib.contextmanager
def _reading(path: str, what: str):
    """Turn any error of orbax/TensorStore reading checkpoint ``path`` into one short
    ``CheckpointError``: the step was deleted meanwhile (a run pruned it), or ``what``
    is damaged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
        if not os.path.isdir(path):
            raise CheckpointError(
                f"checkpoint {path} was deleted while it was read (the run training in "
                f"{os.path.dirname(path)} keeps only its latest checkpoints); run the "
                f"command again"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable: {what} could not be read "
            f"({_first_line(e)})"
        ) from e


class _QuietOrbaxErrors(logging.Filter):
    """Drops orbax's own ERROR logs (with their tracebacks): a failed save or restore
    is raised as one :class:`CheckpointError` that says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


_ORBAX_FILTER = _QuietOrbaxErrors()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def flatten_state(tree) -> tuple[list[str], list]:
    """Leaves of ``tree`` with their paths; typed PRNG keys become their raw data."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    leaves = [jax.random.key_data(x) if _is_key(x) else x for _, x in flat]
    return paths, leaves


def _digest(x) -> str:
    return hashlib.sha1(np.ascontiguousarray(to_host(x)).tobytes()).hexdigest()


def _leaf_record(x) -> list:
    return [list(x.shape), str(x.dtype)]


class Checkpointer:
    """Save and restore training state in ``directory`` (one sub-folder per step).

    Args:
      directory: where the checkpoints live (created if needed).
      keep: how many of the latest checkpoints to keep; the one with the best
        ``metric`` (highest) is kept as well.

    Example::

        ckpt = Checkpointer("runs/x/checkpoints")
        ckpt.save(10, state, {"model": "lenet5"}, metric=0.97)
        state, meta = ckpt.restore(ckpt.latest_step(), state, expect={"model": "lenet5"})
    """

    def __init__(self, directory: str, *, keep: int = 2):
        import orbax.checkpoint as ocp

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
        self._ocp = ocp
        logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # once: filters are a set
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, create=True, enable_async_checkpointing=False
            ),
        )
        self._metrics: dict[int, float | None] = {}

    # -------------------------------------------------------------- queries
    def all_steps(self) -> list[int]:
        """Steps with a finished checkpoint, oldest first (orbax renames a step's
        temporary folder into place only once every file is written)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step, or None when there is no checkpoint."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        """The JSON record of ``step``."""
        ocp = self._ocp
        path = os.path.join(self.directory, str(step))
        with _reading(path, "its JSON record"):
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta["meta"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or not a cnn_jax checkpoint: "
                f"expected a record with format {FORMAT_VERSION}"
            )
        return meta

    def best_step(self, *, strict: bool = False) -> int | None:
        """The kept step with the highest metric, or None when none has one.

        Args:
          strict: refuse (``CheckpointError``) when a kept step's record is unreadable,
            since that step might be the best (``evaluate`` must not silently report an
            older one). Pruning during training is not strict: it keeps such a step.
        """
        self._load_metrics(strict)
        scored = [(m, s) for s, m in self._metrics.items() if m is not None]
        return max(scored)[1] if scored else None

    def _load_metrics(self, strict: bool = False):
        for step in self.all_steps():
            if step not in self._metrics:
                try:
                    self._metrics[step] = self.read_meta(step).get("metric")
                except CheckpointError as e:
                    if strict:
                        raise CheckpointError(
                            f"cannot tell which checkpoint is best: {e}; pass --checkpoint "
                            f"latest, or remove that step's folder"
                        ) from None
                    self._metrics[step] = None

    # -------------------------------------------------------------- save / restore
    def save(self, step: int, state, meta: dict, *, metric: float | None = None) -> str:
        """Write ``state`` (any pytree of arrays) and ``meta`` as checkpoint ``step``.

        Then delete every checkpoint that is neither among the ``keep`` latest nor
        the best by ``metric``.

        Returns:
          The checkpoint's folder.
        """
        ocp = self._ocp
        paths, leaves = flatten_state(state)
        record = dict(
            meta,
            format=FORMAT_VERSION,
            step=int(step),
            metric=metric,
            paths=paths,
            leaves=[_leaf_record(x) for x in leaves],
            sha1=[_digest(x) for x in leaves],
        )
        arrays = {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}
        path = os.path.join(self.directory, str(step))
        if step in self._manager.all_steps():
            self._delete(step)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record)
                ),
            )
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
            self.clean_debris()
            latest = self.latest_step()
            kept = (
                f"the last complete checkpoint, {self.directory}/{latest}, is intact"
                if latest is not None and latest != step
                else "no complete checkpoint"
            )
            raise CheckpointError(
                f"could not write checkpoint {path}: {os_error_reason(e, self.directory)}; {kept}"
            ) from e
        self._metrics[int(step)] = metric
        self._prune()
        return path

    def _delete(self, step: int):
        """Delete a step so that a kill at any moment leaves it whole or gone: its
        folder is first renamed out of the steps' names (atomic), then removed."""
        if jax.process_count() > 1:  # orbax's delete is collective across processes
            self._manager.delete(step)
            return
        path = os.path.join(self.directory, str(step))
        trash = os.path.join(self.directory, f"{TRASH_PREFIX}{step}-{os.getpid()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            pass
        self._manager.reload()
        shutil.rmtree(trash, ignore_errors=True)

    def clean_debris(self):
        """Remove what a killed process left: half-deleted steps and orbax's temporary
        folders of unfinished saves (only the run folder's lock holder calls this)."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if name.startswith(TRASH_PREFIX) or ".orbax-checkpoint-tmp" in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def _prune(self):
        steps = self.all_steps()
        keep = set(steps[-self.keep :])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for step in steps:
            if step not in keep:
                self._delete(step)
                self._metrics.pop(step, None)

    def restore(self, step: int, target, *, expect: dict | None = None):
        """Restore checkpoint ``step`` into the structure, shapes and shardings of ``target``.

        Args:
          step: which checkpoint.
          target: a pytree like the saved state (e.g. the freshly initialised one).
          expect: entries the JSON record must hold with equal values (e.g.
            ``{"model": "lenet5"}``); a difference is refused.

        Returns:
          ``(state, meta)``: ``state`` with ``target``'s structure.

        Raises:
          CheckpointError: the checkpoint is unreadable, damaged, or does not
            match ``target`` / ``expect``.
        """
        ocp = self._ocp
        path = os.path.join(self.directory, str(step))
        meta = self.read_meta(step)
        for key, value in (expect or {}).items():
            if meta.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {path} was written for {key} {meta.get(key)!r}, but this "
                    f"run has {key} {value!r}"
                )
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        paths = [jax.tree_util.keystr(p) for p, _ in flat]
        targets = [x for _, x in flat]
        if meta.get("paths") != paths:
            saved = meta.get("paths") or []
            missing = sorted(set(paths) - set(saved))
            extra = sorted(set(saved) - set(paths))
            raise CheckpointError(
                f"checkpoint {path} does not match this model: state entries must be the same, "
                f"got {len(missing)} missing (e.g. {missing[:3]}) and {len(extra)} unexpected "
                f"(e.g. {extra[:3]})"
            )
        abstract, mismatched = {}, []
        for i, (p, x) in enumerate(zip(paths, targets)):
            data = jax.random.key_data(x) if _is_key(x) else x
            if meta["leaves"][i] != _leaf_record(data):
                mismatched.append((not p.startswith("['params']"), p, data, i))
            abstract[f"leaf_{i:05d}"] = jax.ShapeDtypeStruct(
                data.shape, data.dtype, sharding=getattr(data, "sharding", None)
            )
        if mismatched:  # name a parameter rather than an optimiser slot when possible
            _, p, data, i = min(mismatched, key=lambda m: (m[0], m[3]))
            raise CheckpointError(
                f"checkpoint {path} does not match this model: {p} must have shape/dtype "
                f"{_leaf_record(data)}, got {meta['leaves'][i]} ({len(mismatched)} "
                f"entries differ)"
            )
        with _reading(path, "its arrays"):
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        leaves = []
        for i, (p, x) in enumerate(zip(paths, targets)):
            arr = restored[f"leaf_{i:05d}"]
            if _digest(arr) != meta["sha1"][i]:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: the data of {p} does not "
                    f"match its recorded SHA-1"
                )
            if _is_key(x):
                arr = jax.random.wrap_key_data(arr, impl=jax.random.key_impl(x))
            leaves.append(arr)
        return jax.tree_util.tree_unflatten(treedef, leaves), meta

    def close(self):
        """Finish pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
