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


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    connect_timeout: float = 120.0,
    heartbeat_timeout: float = 10.0,
) -> bool:
    """Join a multi-host job (JAX's distributed runtime) when asked to.

    What this adds to ``jax.distributed.initialize``:

    - Connecting has a deadline: no coordinator (or not every process) within
      ``connect_timeout`` seconds is a :class:`ConfigError`, and a SIGINT/SIGTERM
      during the wait ends it at once (the runtime's own wait, 5 minutes by
      default, ignores signals).
    - A dead peer is noticed in ``heartbeat_timeout`` seconds (see
      ``cnn_jax.train._agree``): this process prints one line on
      stderr and exits with status 1. Left to itself the runtime notices after 100 s
      and aborts with a C++ stack trace, and meanwhile a collective with the dead
      peer fails with a traceback.
    - JAX's preemption service is turned off: its notifier replaces the process's
      SIGTERM handler, so a scheduler's SIGTERM would be swallowed and the run would go
      on to the end. cnn_jax's loop handles SIGTERM itself and agrees on the stop step
      across processes.

    Args:
      coordinator: ``host:port`` of process 0.
      num_processes: total number of processes.
      process_id: this process's index.
      auto: let JAX find all three from the cluster environment (SLURM, Open MPI,
        Kubernetes, Cloud TPU); then the three must be None.
      connect_timeout: seconds to wait for the coordinator and every process.
      heartbeat_timeout: seconds without a sign of life after which a peer is dead.

    Returns:
      True when the job was joined, False when all three are None and ``auto`` is
      False (single host).

    Raises:
      ConfigError: a missing or out-of-range argument, ``auto`` outside a cluster,
        or no job to join within ``connect_timeout``.
    """
    from cnn_jax.train._config import ConfigError

    for name, value in (
        ("connect_timeout", connect_timeout),
        ("heartbeat_timeout", heartbeat_timeout),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise ConfigError(
                f"initialize_distributed: {name} must be a number of seconds in "
                f"(0, 1e6), got {value!r}"
            )
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if auto:
        if any(given):
            raise ConfigError(
                "initialize_distributed: --distributed finds the coordinator, "
                "the process count and the process id in the cluster's "
                "environment; do not also pass --coordinator, --num-processes "
                f"or --process-id (got coordinator={coordinator!r}, "
                f"num_processes={num_processes!r}, process_id={process_id!r})"
            )
        coordinator, num_processes, process_id, local_ids = _detect_cluster(connect_timeout)
    else:
        if not any(given):
            return False
        if not all(given):
            missing = [
                flag
                for flag, ok in zip(("--coordinator", "--num-processes", "--process-id"), given)
                if not ok
            ]
            raise ConfigError(
                "initialize_distributed: coordinator, num_processes and process_id must be "
                f"given together (missing {', '.join(missing)}), got "
                f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        local_ids = None
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError(
            f"initialize_distributed: num_processes must be an int >= 1, got "
            f"num_processes={num_processes!r}"
        )
    if (
        isinstance(process_id, bool)
        or not isinstance(process_id, int)
        or not 0 <= process_id < num_processes
    ):
        raise ConfigError(
            f"initialize_distributed: process_id must be in [0, num_processes), "
            f"got process_id={process_id!r}, num_processes={num_processes!r}"
        )
    if (
        not isinstance(coordinator, str)
        or coordinator.rpartition(":")[0] == ""
        or not coordinator.rpartition(":")[2].isdigit()
    ):
        raise ConfigError(
            f"initialize_distributed: coordinator must be HOST:PORT, got {coordinator!r}"
        )
    from cnn_jax.train import _agree

    jax.config.update("jax_enable_preemption_service", False)
    if local_ids:  # as jax.distributed.initialize does under SLURM/MPI on GPUs
        visible = ",".join(str(i) for i in local_ids)
        jax.config.update("jax_cuda_visible_devices", visible)
        jax.config.update("jax_rocm_visible_devices", visible)
    _agree.connect(
        coordinator,
        num_processes,
        process_id,
        connect_timeout=connect_timeout,
        heartbeat_timeout=heartbeat_timeout,
    )
    return True


def _detect_cluster(timeout: float):
    """``(coordinator, num_processes, process_id, local_device_ids)`` from the cluster's
    environment, as ``jax.distributed.initialize()`` finds them; ConfigError outside one."""
    from jax._src import clusters

    from cnn_jax.train._config import ConfigError

    found = [
        env
        for env in clusters.ClusterEnv._cluster_types
        if not env.opt_in_only_method and env.is_env_present()
    ]
    if not found:
        raise ConfigError(
            "--distributed: no cluster environment found (supported: SLURM, seen from "
            "SLURM_JOB_ID; Open MPI's mpirun, OMPI_MCA_orte_hnp_uri; Kubernetes indexed Jobs "
            "with the kubernetes package; Cloud TPU VMs); elsewhere pass --coordinator "
            "HOST:PORT --num-processes N --process-id I to every process"
        )
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, int(timeout)
    )


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices; None takes every device of every process.

    >>> dict(make_mesh(1).shape)
    {'data': 1}
    """
    devices = jax.devices()
    if num_devices is not None:
        if (
            isinstance(num_devices, bool)
            or not isinstance(num_devices, int)
            or not (1 <= num_devices <= len(devices))
        ):
            from cnn_jax.train._config import ConfigError

            raise ConfigError(
                f"make_mesh: num_devices must be an int in [1, {len(devices)}], got {num_devices!r}"
            )
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
    stops = sorted(
        idx[0].stop if idx[0].stop is not None else global_rows for idx in index_map.values()
    )
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
            raise ValueError(
                f"shard_batch: batch size must be divisible by the number of "
                f"devices ({size}), got {rows}"
            )
    if n_proc > 1:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                sharding, np.asarray(x), (x.shape[0] * n_proc, *x.shape[1:])
            ),
            batch,
        )
    return jax.device_put(batch, sharding)


def to_host(x) -> np.ndarray:
    """A replicated array as numpy, also when it spans other hosts' devices (multi-host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)
