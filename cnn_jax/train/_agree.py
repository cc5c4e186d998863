"""The processes of a multi-process job agree or refuse, and a dead one is noticed.

Three guarantees on top of JAX's distributed runtime, all through its key-value
store on process 0 (no compiled collective):

- :func:`connect` joins the job with a deadline, and a SIGINT/SIGTERM during the
  wait ends it at once.
- :func:`agree_across_processes`: every process publishes its configuration and
  the fingerprint of its data; a difference stops all of them with one line naming
  the field and both values.
- A watchdog (two daemon threads): every process writes a counter every second
  and reads everyone's; a peer whose counter has not moved for ``heartbeat_timeout``
  seconds is dead, and this process prints one line (which peer, the last complete
  checkpoint) and exits with status 1. A collective that fails because a peer died
  (Gloo's "Connection reset by peer") ends the same way instead of in a traceback.

Why not the runtime's own heartbeat: on a missed heartbeat it calls a C++ callback
that aborts the process with a stack trace (a Python callback cannot be given: the
status it receives cannot be converted, and the conversion error aborts too), after
100 s by default, while the peers wait in a collective. It stays on as a backstop,
with a longer timeout than ours. A process that ends normally writes ``ended``
first, so that peers still finishing (process 0 writes the summary and plots) do
not take it for dead while it waits in the runtime's shutdown barrier.

Process 0 runs the runtime's coordination service in a child process
(:class:`_Service`): in process 0 itself, its death would take the service along, and
every other process's runtime client would abort at once with a C++ stack trace.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time

from cnn_jax.train._config import ConfigError
from cnn_jax.train._runfolder import checkpoint_steps
from cnn_jax.train._signals import active_guard

PREFIX = "cnn_jax"
# TrainConfig fields that may differ between the processes of one job: how a process
# shows progress, where its host keeps the data (the data's fingerprint is compared
# instead) and how many decoding workers its host runs (a run's batches do not depend
# on it). Everything else, ``out`` included (storage every process sees), must agree.
EXEMPT = ("quiet", "data_dir", "workers")
_MESSAGE = "cnn-jax train: error: "


@dataclasses.dataclass
class _Job:
    client: object = None
    process_id: int = 0
    num_processes: int = 1
    coordinator: str = ""
    heartbeat_timeout: float = 10.0
    out: str | None = None
    agreements: int = 0
    watch: _Watch | None = None


_JOB = _Job()
_EXIT = threading.Lock()  # the first report wins; a second waits for os._exit


def connect(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    connect_timeout: float,
    heartbeat_timeout: float,
):
    """``jax.distributed.initialize(coordinator, num_processes, process_id)``, with a
    deadline, signals, and the watchdog. The runtime's client and service are built as
    ``jax.distributed.initialize`` builds them (``jax._src.distributed.State``), since
    it has no way to bound the wait from Python or to leave it on a signal."""
    from jax._src import distributed
    from jax._src.lib import _jax

    state = distributed.global_state
    if state.client is not None:
        raise ConfigError("initialize_distributed: this process has already joined a job")
    backstop = int(max(100, 3 * heartbeat_timeout + 30))  # the runtime's C++ abort
    bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", "[::]:" + coordinator.rpartition(":")[2])
    deadline = time.monotonic() + connect_timeout
    guard = active_guard()
    service = None
    if process_id == 0:
        service = _Service(bind, num_processes, backstop, grace=2 * heartbeat_timeout + 5)
        service.wait_ready(deadline, guard, coordinator)
    try:
        client = _jax.get_distributed_runtime_client(
            coordinator,
            process_id,
            init_timeout=int(connect_timeout) + 30,
            heartbeat_timeout=backstop,
            shutdown_timeout=300,
            use_compression=True,
        )
    except Exception as e:
        _abandon(service)
        raise ConfigError(
            f"initialize_distributed: cannot start the distributed runtime at "
            f"{coordinator} ({type(e).__name__}: {e})"
        ) from e
    outcome: list = []
    done = threading.Event()

    def run():
        try:
            client.connect()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the waiting thread
            outcome.append(e)
        done.set()

    threading.Thread(target=run, name="cnn_jax-connect", daemon=True).start()
    who = (
        f"process 0 of {num_processes} (the coordinator, at {coordinator}) waited for "
        f"every process to connect"
        if process_id == 0
        else f"process {process_id} of {num_processes} could not join the job at {coordinator}"
    )
    while not done.wait(0.05):
        if guard is not None and guard.stop:
            _abandon(client, service)
            raise ConfigError(f"{guard.name} while connecting to {coordinator}")
        if time.monotonic() > deadline:
            _abandon(client, service)
            raise ConfigError(
                f"{who} for {connect_timeout:g} s (--connect-timeout): start all "
                f"{num_processes} processes with the same --coordinator, reachable from "
                f"every host"
            )
    if outcome[0] is not None:
        _abandon(client, service)
        raise ConfigError(
            f"{who}, and the connection failed ({type(outcome[0]).__name__}: {outcome[0]})"
        )
    state.coordinator_address, state.process_id = coordinator, process_id
    state.num_processes, state.service, state.client = num_processes, service, client
    _JOB.client, _JOB.process_id, _JOB.num_processes = client, process_id, num_processes
    _JOB.coordinator, _JOB.heartbeat_timeout = coordinator, heartbeat_timeout
    _JOB.watch = _Watch()
    previous_hook = sys.excepthook
    previous_thread_hook = threading.excepthook

    def excepthook(exc_type, exc, tb):
        _on_failure(exc)
        previous_hook(exc_type, exc, tb)

    def thread_hook(args):
        _on_failure(args.exc_value)
        previous_thread_hook(args)

    sys.excepthook, threading.excepthook = excepthook, thread_hook
    atexit.register(_ended)  # after jax's own atexit: runs before its shutdown


def _abandon(*objects):
    """Never destroy a runtime client that failed to connect: its C++ destructor logs
    pages of errors, or waits for a shutdown barrier that cannot pass."""
    for obj in objects:
        if isinstance(obj, _Service):
            obj.kill()
        elif obj is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


# The coordination service, run in a child process of process 0 (see _Service).
_SERVICE_CODE = """
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
from jaxlib import _jax
bind, n, heartbeat, grace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
try:
    service = _jax.get_distributed_runtime_service(bind, n, heartbeat_timeout=heartbeat,
                                                   shutdown_timeout=300)
except Exception as e:
    print(f"error {type(e).__name__}: {e}", flush=True)
    os._exit(1)
print("ready", flush=True)
if sys.stdin.readline().strip() == "stop":
    service.shutdown()
else:
    time.sleep(grace)
os._exit(0)
"""


class _Service:
    """JAX's coordination service in a child process of process 0, in place of
    ``jax.distributed``'s in-process one.

    In process 0 itself, a process 0 that dies takes the service with it, and every
    other process's runtime client then aborts at once with a C++ stack trace. In a
    child, the service outlives a killed process 0 by ``grace`` seconds (it learns of
    the death from its stdin's end), so that the others' watchdogs notice the silence
    and exit with one line first. It ignores SIGINT/SIGTERM/SIGHUP (a Ctrl-C reaches
    the whole process group; process 0 handles the signal for the job) and stops when
    ``jax.distributed.shutdown`` calls :meth:`shutdown`, after every client has left.
    """

    def __init__(self, bind: str, num_processes: int, heartbeat: int, grace: float):
        import subprocess

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVICE_CODE,
                bind,
                str(num_processes),
                str(heartbeat),
                str(grace),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def wait_ready(self, deadline: float, guard, coordinator: str):
        import select

        stdout = self.proc.stdout
        assert stdout is not None  # Popen(stdout=PIPE)
        while True:
            ready, _, _ = select.select([stdout], [], [], 0.05)
            if ready:
                line = stdout.readline().strip()
                if line == "ready":
                    return
                self.kill()
                raise ConfigError(
                    f"initialize_distributed: cannot start the coordination "
                    f"service at {coordinator} ({line or 'it exited'})"
                )
            if guard is not None and guard.stop:
                self.kill()
                raise ConfigError(f"{guard.name} while connecting to {coordinator}")
            if time.monotonic() > deadline:
                self.kill()
                raise ConfigError(
                    "initialize_distributed: the coordination service did not "
                    "start by the --connect-timeout"
                )

    def shutdown(self):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(60)
        except Exception:  # noqa: BLE001 - gone already, or stuck: killed below
            pass
        self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Watch:
    """Heartbeats through the key-value store: a writer/reader thread (RPCs) and a
    monitor thread (clock only, so a hung RPC is noticed too)."""

    def __init__(self):
        now = time.monotonic()
        self.interval = min(1.0, _JOB.heartbeat_timeout / 5)
        peers = [q for q in range(_JOB.num_processes) if q != _JOB.process_id]
        self.heard = {q: now for q in peers}
        self.values: dict[int, str] = {}
        self.ended: set[int] = set()
        self.answered = now
        self.closing = self.off = False
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=target, name=f"cnn_jax-{target.__name__[1:]}", daemon=True)
            for target in (self._beat, self._monitor)
        ]
        for t in self.threads:
            t.start()

    def stop(self):
        """End both threads. Before the interpreter's finalization: a daemon thread
        that comes back from a C++ call after it has begun is unwound by force, and
        the bindings' C++ frames turn that into an abort."""
        self.off = True
        for t in self.threads:
            t.join(5)

    def _beat(self):
        client, me, count = _JOB.client, _JOB.process_id, 0
        while not self.off:
            count += 1
            try:
                client.key_value_set(f"{PREFIX}/alive/{me}", str(count), allow_overwrite=True)
                alive = client.key_value_dir_get(f"{PREFIX}/alive/")
                ended = client.key_value_dir_get(f"{PREFIX}/ended/")
            except Exception:  # noqa: BLE001 - the monitor judges the silence
                if self.closing:  # our own runtime client has shut down
                    self.off = True
                time.sleep(self.interval)
                continue
            now = time.monotonic()
            with self.lock:
                self.answered = now
                for key, value in alive:
                    q = int(key.rsplit("/", 1)[1])
                    if q in self.heard and self.values.get(q) != value:
                        self.values[q], self.heard[q] = value, now
                self.ended.update(int(key.rsplit("/", 1)[1]) for key, _ in ended)
            time.sleep(self.interval)

    def _monitor(self):
        timeout = _JOB.heartbeat_timeout
        while not self.off:
            time.sleep(min(0.2, self.interval))
            now = time.monotonic()
            with self.lock:
                if self.off:
                    return
                if now - self.answered > timeout and not self.closing:
                    reason = (
                        f"process 0, the coordinator at {_JOB.coordinator}, stopped "
                        f"responding (no answer for {timeout:g} s, --heartbeat-timeout)"
                    )
                else:
                    dead = [
                        q
                        for q, t in self.heard.items()
                        if q not in self.ended and now - t > timeout
                    ]
                    if not dead:
                        continue
                    reason = (
                        f"process {dead[0]} stopped responding (nothing heard from it "
                        f"for {timeout:g} s, --heartbeat-timeout)"
                    )
            peer_lost(reason)


def peer_lost(reason: str):
    """Print ``reason`` and what to do now in one line, and end the process (status 1).

    ``os._exit``: the main thread may be inside a collective that never returns, and
    an orderly exit would wait in the runtime's shutdown barrier for the dead peer.
    """
    _EXIT.acquire()
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    print(f"{_MESSAGE}{reason}; {_checkpoint_note()}", file=sys.stderr, flush=True)
    os._exit(1)


def _checkpoint_note() -> str:
    if _JOB.out is None:
        return "start every process again"
    folder = os.path.join(_JOB.out, "checkpoints")
    try:
        steps = checkpoint_steps(folder)
    except OSError:
        steps = []
    if not steps:
        return f"no checkpoint was complete in {folder}: start every process again"
    return (
        f"the last complete checkpoint is {os.path.join(folder, str(steps[-1]))}: start "
        f"every process again with --resume to continue from it"
    )


_PEER_FAILURE = (
    "Gloo",
    "Connection reset by peer",
    "Connection closed by peer",
    "heartbeat timeout",
    "coordination service",
)


def _on_failure(exc: BaseException | None):
    """An exception that reached the top: if a collective failed because a peer died,
    let the watchdog name the peer (it will within the heartbeat timeout), else say
    so in one line; other exceptions go on to the usual traceback."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (RuntimeError, ValueError)) and any(
            word in str(exc) for word in _PEER_FAILURE
        ):
            time.sleep(_JOB.heartbeat_timeout + 2 * min(1.0, _JOB.heartbeat_timeout / 5))
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            peer_lost(
                f"a collective operation with the other processes failed ({first[:200]}): "
                f"a process of the job died"
            )
        exc = exc.__cause__ or exc.__context__


def _ended():
    """At exit: tell the peers that this process ended on purpose."""
    watch = _JOB.watch
    if watch is None:
        return
    with watch.lock:
        watch.closing = True
    try:
        _JOB.client.key_value_set(f"{PREFIX}/ended/{_JOB.process_id}", "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - best effort: the runtime is going away
        pass
    watch.stop()  # the peers now ignore this process's silence


def data_fingerprint(*datasets) -> list:
    """What identifies the data of a run: per split, its size, shapes and classes, and
    for a streamed set its file list's SHA-1, for an in-memory one its arrays' SHA-1."""
    from cnn_jax.train._stream import ImageStream

    prints = []
    for data in datasets:
        record = {
            "examples": len(data),
            "image_shape": list(data.image_shape),
            "num_classes": data.num_classes,
        }
        if isinstance(data, ImageStream):
            record.update(data.fingerprint())
        else:
            import numpy as np

            h = hashlib.sha1()
            for array in (data.images, data.labels):
                array = np.ascontiguousarray(array)
                h.update(f"{array.dtype.str}{array.shape}".encode())
                h.update(array.tobytes())
            record["sha1"] = h.hexdigest()
        prints.append(record)
    return prints


def agree_across_processes(config, *datasets):
    """Refuse a job whose processes were started differently.

    Every process publishes its :class:`~cnn_jax.train.TrainConfig` (less ``EXEMPT``)
    and :func:`data_fingerprint` of ``datasets`` (computed only with several
    processes), then compares each process's with process 0's. A no-op with one
    process. Also records ``config.out`` for the watchdog's message.

    Raises:
      ConfigError: on every process alike, naming the first field that differs and
        both values; or when a peer ended (e.g. refused its own flags) before
        publishing, or a signal arrived while waiting.
    """
    _JOB.out = config.out
    if _JOB.client is None or _JOB.num_processes == 1:
        return
    client, me, n = _JOB.client, _JOB.process_id, _JOB.num_processes
    round_ = _JOB.agreements
    _JOB.agreements += 1
    record = {k: v for k, v in config.to_dict().items() if k not in EXEMPT}
    record["data set"] = data_fingerprint(*datasets)
    client.key_value_set(f"{PREFIX}/agree/{round_}/{me}", json.dumps(record))
    guard = active_guard()
    records = {}
    for q in range(n):
        key = f"{PREFIX}/agree/{round_}/{q}"
        while True:
            try:
                records[q] = json.loads(client.blocking_key_value_get(key, 500))
                break
            except Exception:  # noqa: BLE001 - not there yet (a timeout)
                pass
            if guard is not None and guard.stop:
                raise ConfigError(f"{guard.name} while the processes compared flags")
            watch = _JOB.watch
            if watch is not None and q in watch.ended:
                raise ConfigError(
                    f"process {q} ended before comparing its flags with "
                    f"the other processes' (see its error)"
                )
    for q in range(1, n):
        for field, mine in records[0].items():
            theirs = records[q].get(field)
            if theirs == mine:
                continue
            if field == "data set":
                raise ConfigError(
                    f"process {q} read a different data set from process 0's "
                    f"({_describe(theirs)} against {_describe(mine)}): every process of a "
                    f"job must read the same data"
                )
            raise ConfigError(
                f"process {q} was started with {field}={theirs!r}, process 0 with "
                f"{field}={mine!r}: every process of a job must be started with the same "
                f"flags"
            )


def _describe(prints: list) -> str:
    return "; ".join(
        f"{p['examples']} examples of shape {tuple(p['image_shape'])}, SHA-1 {p['sha1'][:12]}"
        for p in prints
    )
