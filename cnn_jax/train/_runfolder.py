"""The run folder as one transaction: one writer at a time, atomic files, faults named.

- :func:`run_lock`: ``OUT/lock`` held with ``fcntl.flock`` (exclusive, non-blocking)
  by the one command that writes the folder (``cnn-jax train``, ``fit(..., out=)``).
  The OS releases it when the process ends, however it ends, so a lock is never
  stale; a second writer is refused naming the holder's pid and host. Readers
  (``evaluate``, ``predict``, ``export``) take no lock: every file they read is
  replaced atomically, and checkpoints appear by orbax's rename.
- :func:`write_json`: a temporary file, ``fsync``, ``os.replace`` -- a crash leaves
  the old file or the new one, never half of one.
- :func:`os_error_reason`: what a failed write means in words (a full disk, a
  read-only file system, a permission), for one-line errors.
- :func:`refuse_foreign_checkpoints`: a new run never starts over checkpoints.
- :func:`hold_run_folder`: the lock for a job of several processes (process 0 holds it).

No jax here: the command checks the folder before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket

LOCK_FILE = "lock"
RUN_FILE = "run.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or was written for a different run."""


class RunFolderError(ValueError):
    """The run folder cannot be used: another command writes it, or the file system
    refused a write (full, read-only, no permission). The CLI prints it in one line."""


def os_error_reason(error: BaseException, path: str | None = None) -> str:
    """Words for why a write failed, found in ``error`` or its causes (orbax and
    TensorStore wrap the OS error: ``RESOURCE_EXHAUSTED`` is a full disk)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ENOSPC:
                return _full(path)
            if seen.errno == errno.EROFS:
                return "the file system is read-only"
            if seen.errno in (errno.EACCES, errno.EPERM):
                return "permission denied"
            if seen.errno == errno.EDQUOT:
                return "the disk quota is exceeded"
            return seen.strerror or str(seen)
        text = str(seen)
        if "RESOURCE_EXHAUSTED" in text or "No space left" in text:
            return _full(path)
        if "Read-only file system" in text:
            return "the file system is read-only"
        if "Permission denied" in text:
            return "permission denied"
        seen = seen.__cause__ or seen.__context__
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0][:200] if first else ''}"


def _full(path: str | None) -> str:
    if path is None:
        return "the disk is full"
    folder = path
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder or ".").free
    except OSError:
        return "the disk is full"
    return f"the disk is full ({free // 1024} KiB free)"


def write_json(path: str, record, *, indent: int | None = 2):
    """Write ``record`` as JSON to ``path`` atomically (temporary file, fsync, rename).

    Raises:
      RunFolderError: the file system refused the write (the old file stays).
    """
    write_lines(path, [json.dumps(record, indent=indent)])


def write_lines(path: str, lines: list[str]):
    """Replace ``path`` by ``lines`` atomically (temporary file, fsync, rename).

    Raises:
      RunFolderError: the file system refused the write (the old file stays).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise RunFolderError(f"cannot write {path}: {os_error_reason(e, path)}") from e


def checkpoint_steps(directory: str) -> list[int]:
    """Finished checkpoint steps in ``directory`` (orbax renames a step's folder into
    place when complete), without importing orbax."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def refuse_foreign_checkpoints(out: str | None, resume: bool, op: str = "train"):
    """A run that does not resume must not start in a folder holding checkpoints
    (it would mix two runs' files); checked before anything is written."""
    if out is None or resume:
        return
    steps = checkpoint_steps(os.path.join(out, "checkpoints"))
    if steps:
        raise CheckpointError(
            f"{op}: out must not hold checkpoints unless resuming, got {out!r} with "
            f"checkpoints up to step {steps[-1]}; continue it with --resume, or pass "
            f"another --out"
        )


_HELD: dict[str, list] = {}  # real path of a lock file -> [fd, depth] held by this process


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text or "an unknown process"


@contextlib.contextmanager
def run_lock(out: str):
    """Hold ``out``'s lock for the duration of the ``with`` (re-entrant in a process).

    Creates ``out`` if needed (the one write before the lock: an empty folder).

    Raises:
      RunFolderError: another process holds the lock, or the folder cannot be made.
    """
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create the run folder {out}: {os_error_reason(e, out)}"
        ) from e
    path = os.path.realpath(os.path.join(out, LOCK_FILE))
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(
            f"cannot create the lock file {path}: {os_error_reason(e, path)}"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderError(f"cannot lock {path}: {os_error_reason(e, path)}") from e
        raise RunFolderError(
            f"{out} is in use: another cnn-jax train ({_holder(path)}) is writing it; "
            f"wait for it to finish, or pass another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError:
        pass  # the lock holds without its note (e.g. a full disk: the run reports that)
    _HELD[path] = [fd, 1]
    try:
        yield
    except BaseException:
        # Refused before writing anything (e.g. a full disk at the first file): leave
        # no folder behind that the command made.
        with contextlib.suppress(OSError):
            if created and os.listdir(out) == [LOCK_FILE]:
                shutil.rmtree(out)
        raise
    finally:
        _HELD[path][1] -= 1
        if _HELD[path][1] == 0:
            del _HELD[path]
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def hold_run_folder(out: str | None):
    """``out``'s lock (:func:`run_lock`) for the ``with``, taken by process 0 of a job
    (its peers write the same folder collectively); every process learns whether it
    was taken, so a refused job stops as one. No-op without ``out``."""
    if out is None:
        yield
        return
    import jax

    if jax.process_count() == 1:
        with run_lock(out):
            yield
        return
    with contextlib.ExitStack() as stack:
        error = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(run_lock(out))
            except RunFolderError as e:
                error = e
        import numpy as np
        from jax.experimental import multihost_utils

        refused = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is not None:
            raise error
        if refused.any():
            raise RunFolderError(
                f"{out}: process 0 could not take the run folder's lock "
                f"(another cnn-jax train is writing it); see its message"
            )
        yield
