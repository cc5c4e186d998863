"""Real ``cnn-jax train`` subprocesses for test_signals and test_multiprocess.

Two roles:

- For the tests: :func:`launch` / :func:`run` start ``python -m cnn_jax.cli`` with a
  controlled environment (simulated device count, shared compilation cache, this
  folder on ``PYTHONPATH``) and always under a timeout; :func:`wait_for` reads a
  process's stderr up to a marker line; :func:`shared_run` makes one reference run
  per test session, shared by the xdist workers; :func:`metrics` / :func:`summary`
  read a run folder.
- Inside a subprocess, via ``--import _run_helpers``: when ``$CNN_JAX_TEST_HOOKS``
  is set, hooks that pause the run at a chosen moment, print a marker line on stderr
  (``@@ step N``, ``@@ commit N``, ``@@ initial_state``) and wait, so that a test can
  send a signal at exactly that moment. The spec is a comma list of ``POINT=WAIT``:

  ``step=N``          before global train step N (this process's N-th batch) is fed
  ``commit=N``        inside orbax's save of checkpoint N, after every file is written
                      to the temporary folder and before it is renamed into place
  ``initial_state``   in ``Trainer.initial_state`` (before the training loop and its
                      signal handlers; a SIGINT there is a KeyboardInterrupt)
  ``preimport``       (no wait) printed as this module's import ends, i.e. just before
                      the CLI imports jax; alone, it installs nothing and imports no jax
  ``overlap``         (no wait) ``@@ overlap step N`` once, if a train batch is fed
                      while ``Checkpointer.save`` runs (on the writer thread)
  ``connect``         (no wait) ``@@ connect`` as the process starts joining its
                      multi-process job (the wait for the coordinator follows)

  ``WAIT`` is ``K`` (wait until the run's signal handler has seen K signals in all,
  at most 60 s) or ``Xs`` (sleep X seconds).

Nothing here imports jax at import time unless the hooks are asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOOKS_ENV = "CNN_JAX_TEST_HOOKS"
METRIC_KEYS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")

# The tiny run of both subprocess test modules: 256 digits, batch 64, so 4 steps per
# epoch and 8 in all; a checkpoint at every epoch end (steps 4 and 8).
TINY = (
    "--limit",
    "256",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--quiet",
    "--checkpoint-every",
    "0",
)
STEPS_PER_EPOCH = 4

# --------------------------------------------------------------------------- test side


def base_env(cache_dir: str, devices: int = 1, hooks: str | None = None) -> dict:
    """The environment of a subprocess: ``devices`` simulated CPU devices, the shared
    compilation cache, tests/ importable, hooks as given (never inherited)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["CNN_JAX_COMPILATION_CACHE"] = cache_dir
    env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT (see Proc.kill) dumps every thread's stack
    env.pop(HOOKS_ENV, None)
    if hooks:
        env[HOOKS_ENV] = hooks
    return env


def command(*args: str, hooks: bool = False) -> list[str]:
    """``python -m cnn_jax.cli [--import _run_helpers] ARGS``."""
    return [
        sys.executable,
        "-m",
        "cnn_jax.cli",
        *(["--import", "_run_helpers"] if hooks else []),
        *args,
    ]


class Proc:
    """A running subprocess with line-wise access to its stderr (stdout collected)."""

    def __init__(self, args: list[str], env: dict, timeout: float):
        self.args, self.deadline = args, time.monotonic() + timeout
        self.p = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.err_lines: list[str] = []
        self.out_lines: list[str] = []
        self._lock = threading.Lock()
        self._new_line = threading.Condition(self._lock)
        self._readers = [
            threading.Thread(target=self._read, args=(s, l), daemon=True)
            for s, l in ((self.p.stderr, self.err_lines), (self.p.stdout, self.out_lines))
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, lines):
        for line in stream:
            with self._new_line:
                lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def wait_for(self, marker: str) -> str:
        """Block until a stderr line contains ``marker``; fail on exit or timeout."""
        seen = 0
        with self._new_line:
            while True:
                for line in self.err_lines[seen:]:
                    if marker in line:
                        return line
                seen = len(self.err_lines)
                if self.p.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"exited ({self.p.returncode}) before {marker!r}:\n" + self.stderr
                    )
                if self._remaining() <= 0:
                    self.kill()
                    raise AssertionError(f"timed out waiting for {marker!r}:\n" + self.stderr)
                self._new_line.wait(min(0.2, max(self._remaining(), 0.01)))

    def signal(self, signum: int):
        self.p.send_signal(signum)

    def finish(self) -> int:
        """Wait for the exit (killing it at the deadline); returns the exit status."""
        try:
            self.p.wait(timeout=max(self._remaining(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out: {' '.join(self.args)}\n" + self.stderr) from None
        for t in self._readers:
            t.join(10)
        return self.p.returncode

    def kill(self):
        """Stop a process still running: SIGABRT first, so that a hang shows where
        it hangs (faulthandler prints every thread's stack on stderr), then SIGKILL."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGABRT)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self.err_lines)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self.out_lines)


def launch(args: list[str], env: dict, timeout: float = 120) -> Proc:
    return Proc(args, env, timeout)


def run(args: list[str], env: dict, timeout: float = 120) -> Proc:
    """Run to the end; returns the finished :class:`Proc` (``.p.returncode``)."""
    proc = Proc(args, env, timeout)
    proc.finish()
    return proc


def check(proc: Proc, expected: int = 0) -> Proc:
    assert proc.p.returncode == expected, (
        f"exit {proc.p.returncode}, expected {expected}: {' '.join(proc.args)}\n"
        f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )
    return proc


def metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def metric_rows(out: str, keys=METRIC_KEYS) -> list[list]:
    return [[r[k] for k in keys] for r in metrics(out)]


def summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def checkpoint_steps(out: str) -> list[str]:
    """Every entry of ``out/checkpoints`` (finished steps and anything else)."""
    path = os.path.join(out, "checkpoints")
    return (
        sorted(os.listdir(path), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
        if os.path.isdir(path)
        else []
    )


def verify_checkpoint(out: str, step: int) -> dict:
    """Checkpoint ``step`` of run ``out`` is complete and intact: its JSON record reads,
    and every array it lists is there with the recorded SHA-1. Returns the record."""
    import hashlib

    import numpy as np
    import orbax.checkpoint as ocp

    from cnn_jax.train import Checkpointer

    ckpt = Checkpointer(os.path.join(out, "checkpoints"))
    try:
        meta = ckpt.read_meta(step)
    finally:
        ckpt.close()
    assert meta["step"] == step
    with ocp.StandardCheckpointer() as reader:
        arrays = reader.restore(os.path.join(out, "checkpoints", str(step), "state"))
    assert len(arrays) == len(meta["paths"]) == len(meta["sha1"])
    for i, (path, sha1) in enumerate(zip(meta["paths"], meta["sha1"])):
        data = np.ascontiguousarray(np.asarray(arrays[f"leaf_{i:05d}"]))
        assert hashlib.sha1(data.tobytes()).hexdigest() == sha1, f"step {step}: {path}"
    return meta


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def shared_dir(tmp_path_factory) -> str:
    """A folder shared by all xdist workers of this pytest session."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return str(base)


def shared_run(tmp_path_factory, name: str, make) -> str:
    """``make(out)`` once per pytest session (all xdist workers), under a file lock;
    returns ``out``. ``make`` must leave a complete run (``summary.json``)."""
    root = shared_dir(tmp_path_factory)
    out = os.path.join(root, name)
    with open(os.path.join(root, name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = os.path.join(root, name + ".done")
            if not os.path.exists(done):
                if os.path.exists(out):  # a failed attempt: start over
                    import shutil

                    shutil.rmtree(out)
                make(out)
                open(done, "w").close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def reference(tmp_path_factory, name: str = "reference", extra: tuple = ()) -> str:
    """The folder of one uninterrupted single-process ``train TINY EXTRA`` run, made once
    per pytest session and shared by every module and xdist worker that asks for it."""
    cache = compilation_cache(tmp_path_factory)

    def make(out):
        check(run(command("train", *TINY, *extra, "--out", out), base_env(cache), timeout=240))

    return shared_run(tmp_path_factory, name, make)


def run_processes(
    n: int, args: list[str], env: dict, timeout: float = 240, grace: float = 20, hooks: bool = False
) -> list[Proc]:
    """``n`` processes of one ``jax.distributed`` job on localhost, run to the end.

    When one exits with an error the others get ``grace`` seconds (they may hang in a
    collective), then are killed; all are killed at ``timeout``.
    """
    port = free_port()
    procs = [
        launch(
            command(
                *args,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                str(n),
                "--process-id",
                str(i),
                hooks=hooks,
            ),
            env,
            timeout,
        )
        for i in range(n)
    ]
    failed_at = None
    try:
        while any(p.p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.p.poll() not in (None, 0) for p in procs):
                failed_at = now
            if (failed_at is not None and now - failed_at > grace) or now > procs[0].deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            for t in p._readers:
                t.join(10)
    return procs


def compilation_cache(tmp_path_factory) -> str:
    path = os.path.join(shared_dir(tmp_path_factory), "jax-cache")
    os.makedirs(path, exist_ok=True)
    return path


# --------------------------------------------------------------------------- subprocess side

_SIGNALS_SEEN: list[int] = []


def _marker(text: str):
    print(f"@@ {text}", file=sys.stderr, flush=True)


def _wait(spec: str):
    if spec.endswith("s"):
        time.sleep(float(spec[:-1]))
        return
    deadline = time.monotonic() + 60
    while len(_SIGNALS_SEEN) < int(spec) and time.monotonic() < deadline:
        time.sleep(0.01)


def _install_hooks(spec: str):
    points = dict(
        item.split("=", 1) if "=" in item else (item, "") for item in spec.split(",") if item
    )
    unknown = set(points) - {"preimport", "step", "commit", "initial_state", "overlap", "connect"}
    if unknown:
        raise ValueError(f"{HOOKS_ENV}: unknown hook points {sorted(unknown)}")
    if "preimport" in points:
        # The last line before the CLI imports jax (this module is imported by --import
        # first); nothing below is installed without other points, so no jax here.
        _marker("preimport")
        if len(points) == 1:
            return
    from cnn_jax.train import _loop, _signals, _step

    real_handle = _signals.SignalGuard._handle

    def handle(self, signum, frame):  # counts the signals the run's guard receives
        _SIGNALS_SEEN.append(signum)
        return real_handle(self, signum, frame)

    _signals.SignalGuard._handle = handle

    if "step" in points:
        step_at, step_wait = points["step"].split(":")
        calls = [0]
        real_train = _loop._Batches.train

        def train(self, order, i):
            calls[0] += 1
            if calls[0] == int(step_at):
                _marker(f"step {step_at}")
                _wait(step_wait)
            return real_train(self, order, i)

        _loop._Batches.train = train

    if "overlap" in points:
        from cnn_jax.train import _checkpoint

        saving, fed, reported = threading.Event(), [0], []
        real_save = _checkpoint.Checkpointer.save
        inner_train = _loop._Batches.train

        def save(self, *args, **kwargs):
            saving.set()
            try:
                return real_save(self, *args, **kwargs)
            finally:
                saving.clear()

        def train_watched(self, order, i):
            fed[0] += 1
            if saving.is_set() and not reported:
                reported.append(fed[0])
                _marker(f"overlap step {fed[0]}")
            return inner_train(self, order, i)

        _checkpoint.Checkpointer.save = save
        _loop._Batches.train = train_watched

    if "commit" in points:
        commit_at, commit_wait = points["commit"].split(":")
        from orbax.checkpoint._src.path import atomicity

        real_commit = atomicity.on_commit_callback

        async def on_commit_callback(tmp_dir, *args, **kwargs):
            name = os.path.basename(str(tmp_dir.get_final()))
            if name == commit_at:
                _marker(f"commit {commit_at} tmp={os.path.basename(str(tmp_dir.get()))}")
                _wait(commit_wait)
            return await real_commit(tmp_dir, *args, **kwargs)

        atomicity.on_commit_callback = on_commit_callback

    if "connect" in points:
        from cnn_jax.train import _agree

        real_connect = _agree.connect

        def connect(*args, **kwargs):
            _marker("connect")
            return real_connect(*args, **kwargs)

        _agree.connect = connect

    if "initial_state" in points:
        init_wait = points["initial_state"]
        real_initial = _step.Trainer.initial_state

        def initial_state(self):
            _marker("initial_state")
            _wait(init_wait)
            return real_initial(self)

        _step.Trainer.initial_state = initial_state


if os.environ.get(HOOKS_ENV):
    _install_hooks(os.environ[HOOKS_ENV])
