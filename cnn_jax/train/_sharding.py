"""Data parallelism with JAX's own SPMD: one ``data`` mesh axis over all devices.

Batches are split along their first axis over the ``data`` axis; parameters,
optimiser state and BatchNorm statistics are replicated. XLA inserts the
gradient all-reduce, so the same step runs on 1 CPU, 8 GPUs or a TPU pod slice.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> bool:
    """Join a multi-host job via ``jax.distributed.initialize`` when asked to.

    JAX's preemption service is turned off first: its notifier replaces the process's
    SIGTERM handler, so a scheduler's SIGTERM would be swallowed and the run would go
    on to the end. cnn_jax's loop handles SIGTERM itself and agrees on the stop step
    across processes.

    Args:
      coordinator: ``host:port`` of process 0.
      num_processes: total number of processes.
      process_id: this process's index.
      auto: let JAX find all three from the cluster environment (SLURM, Open MPI,
        Kubernetes, ...); then the three must be None.

    Returns:
      True when ``jax.distributed.initialize`` was called, False when all three are
      None and ``auto`` is False (single host).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if auto:
        if any(given):
            raise ValueError("initialize_distributed: auto=True finds coordinator, "
                             "num_processes and process_id itself; got "
                             f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
                             f"process_id={process_id!r}")
        jax.config.update("jax_enable_preemption_service", False)
        jax.distributed.initialize()
        return True
    if not any(given):
        return False
    if not all(given):
        raise ValueError(
            "initialize_distributed: coordinator, num_processes and process_id must be given "
            f"together, got coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"initialize_distributed: process_id must be in [0, num_processes), "
                         f"got process_id={process_id!r}, num_processes={num_processes!r}")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices; None takes every device of every process.

    >>> dict(make_mesh(1).shape)
    {'data': 1}
    """
    devices = jax.devices()
    if num_devices is not None:
        if isinstance(num_devices, bool) or not isinstance(num_devices, int) or not (
                1 <= num_devices <= len(devices)):
            from cnn_jax.train._config import ConfigError

            raise ConfigError(f"make_mesh: num_devices must be an int in [1, {len(devices)}], "
                             f"got {num_devices!r}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: its first axis split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def local_rows(global_rows: int, mesh: Mesh) -> slice:
    """The rows of a ``global_rows`` batch that this process feeds: its devices' shards.

    A 1-D ``data`` mesh splits a batch into equal contiguous blocks, one per device
    in mesh order; a process's devices are adjacent there (``jax.devices()`` lists
    them process by process), so its rows are one contiguous slice.
    """
    index_map = data_sharded(mesh).addressable_devices_indices_map((global_rows,))
    starts = sorted(idx[0].start or 0 for idx in index_map.values())
    stops = sorted(idx[0].stop if idx[0].stop is not None else global_rows
                   for idx in index_map.values())
    if not starts:
        return slice(0, 0)
    return slice(starts[0], stops[-1])


def shard_batch(batch, mesh: Mesh):
    """Make each array of ``batch`` one global array split along axis 0 over ``data``.

    Single process: ``batch`` is the whole batch. Several processes
    (``jax.distributed``): each passes only its own rows of the global batch
    (:func:`local_rows` of it), and they are joined with
    ``jax.make_array_from_process_local_data`` into one global array.

    Args:
      batch: a pytree of host arrays with equal leading size.
      mesh: from :func:`make_mesh`.
    """
    sharding = data_sharded(mesh)
    size = mesh.shape[DATA_AXIS]
    n_proc = jax.process_count()
    for leaf in jax.tree.leaves(batch):
        rows = leaf.shape[0] * n_proc
        if rows % size:
            raise ValueError(f"shard_batch: batch size must be divisible by the number of "
                             f"devices ({size}), got {rows}")
    if n_proc > 1:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                sharding, np.asarray(x), (x.shape[0] * n_proc, *x.shape[1:])), batch)
    return jax.device_put(batch, sharding)


def to_host(x) -> np.ndarray:
    """A replicated array as numpy, also when it spans other hosts' devices (multi-host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)
