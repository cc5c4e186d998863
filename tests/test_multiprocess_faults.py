"""A multi-process ``cnn-jax train`` job under faults (jax.distributed on localhost):
processes started with different flags or data, a process killed mid-run, a
coordinator that never comes, a signal while waiting for it.

Each fault must end every surviving process with one line on stderr (no traceback,
no C++ stack trace) and a non-zero status, leave the last complete checkpoint
intact, and let a resume of the whole job finish the uninterrupted run.
"""

import os
import shutil
import signal
import time

import _run_helpers as h
import pytest
from test_multiprocess import _image_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NO_AUGMENT = ("--no-augment",)
TIMEOUT = 150
HEARTBEAT = 5  # --heartbeat-timeout of the killed-peer runs (the default is 10)
# The runtime's own noise that must never reach a user: a traceback, an absl fatal
# log and its stack, faulthandler's report of an abort.
NOISE = (
    "Traceback",
    "Check failure",
    "Fatal Python error",
    "terminate called",
    "coordination_service",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


def launch_job(args, per_process, cache, hooks=None):
    """Process i runs ``args + per_process[i]``; ``hooks[i]`` its hook spec."""
    port = h.free_port()
    hooks = hooks or [None] * len(per_process)
    return [
        h.launch(
            h.command(
                *args,
                *extra,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                str(len(per_process)),
                "--process-id",
                str(i),
                hooks=True,
            ),
            h.base_env(cache, 1, hooks=hooks[i]),
            TIMEOUT,
        )
        for i, extra in enumerate(per_process)
    ]


def message_lines(proc) -> list[str]:
    """stderr without the test markers and Gloo's connection notes."""
    return [
        line.rstrip("\n")
        for line in proc.stderr.splitlines(True)
        if line.strip() and not line.startswith(("@@ ", "[Gloo]"))
    ]


def report(procs, codes) -> str:
    return "\n".join(
        f"=== process {i}: exit {c}\n{p.stderr}" for i, (p, c) in enumerate(zip(procs, codes))
    )


def finish(procs) -> list[int]:
    try:
        return [p.finish() for p in procs]
    finally:
        for p in procs:
            p.kill()


# ------------------------------------------------------------------ agree or refuse


def test_processes_started_with_different_flags_all_refuse(tmp_path, cache):
    out = str(tmp_path / "run")
    procs = launch_job(
        ["train", *h.TINY, "--out", out], [(), ("--lr", "0.5", "--seed", "3")], cache
    )
    codes = finish(procs)
    want = (
        "cnn-jax train: error: process 1 was started with lr=0.5, process 0 with "
        "lr=0.003: every process of a job must be started with the same flags"
    )
    assert codes == [1, 1], report(procs, codes)
    for p in procs:
        assert message_lines(p) == [want], report(procs, codes)
    assert not os.path.exists(out)  # refused before anything was written


def test_processes_reading_different_data_all_refuse(tmp_path, cache):
    # --data-dir may differ between hosts (exempt); what it holds may not.
    a = _image_folder(str(tmp_path / "a"))
    b = str(tmp_path / "b")
    shutil.copytree(a, b)
    os.remove(os.path.join(b, "c", "11.png"))
    out = str(tmp_path / "run")
    args = [
        "train",
        "--dataset",
        "folder",
        "--model",
        "digits_cnn",
        "--width",
        "4",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--quiet",
        "--out",
        out,
    ]
    procs = launch_job(args, [("--data-dir", a), ("--data-dir", b)], cache)
    codes = finish(procs)
    assert codes == [1, 1], report(procs, codes)
    for p in procs:
        lines = message_lines(p)
        assert len(lines) == 1, report(procs, codes)
        # the folder splits 35 and 36 files into train and test examples alike; the
        # counts or the SHA-1s of the file lists differ
        assert lines[0].startswith(
            "cnn-jax train: error: process 1 read a different data set from process 0's ("
        ), lines
        assert lines[0].endswith("every process of a job must read the same data"), lines
    assert not os.path.exists(out)


# ------------------------------------------------------------------ a dead peer


@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator-killed", "worker-killed"])
def test_killed_peer_ends_the_job_in_one_line_and_the_checkpoint_resumes(
    tmp_path, tmp_path_factory, cache, victim
):
    """One process is killed (SIGKILL) while the other waits before step 6 (epoch 2's
    2nd batch); the survivor's next collective fails. It must exit 1 within the
    heartbeat timeout (plus this loaded machine's slack) with one line naming the
    dead process and the last complete checkpoint (epoch 1's, step 4), which a resume
    of both processes continues to the uninterrupted run's result."""
    reference = h.reference(tmp_path_factory, "reference-no-augment", NO_AUGMENT)
    out = str(tmp_path / "run")
    survivor = 1 - victim
    hooks = [None, None]
    hooks[survivor] = "step=6:2s"
    procs = launch_job(
        ["train", *h.TINY, *NO_AUGMENT, "--out", out, "--heartbeat-timeout", str(HEARTBEAT)],
        [(), ()],
        cache,
        hooks,
    )
    procs[survivor].wait_for("@@ step 6")
    procs[victim].p.kill()
    killed = time.monotonic()
    codes = finish(procs)
    elapsed = time.monotonic() - killed
    assert codes[victim] == -signal.SIGKILL
    assert codes[survivor] == 1, report(procs, codes)
    ckpt = os.path.join(out, "checkpoints", str(h.STEPS_PER_EPOCH))
    want = (
        f"cnn-jax train: error: process {victim} stopped responding (nothing heard from "
        f"it for {HEARTBEAT} s, --heartbeat-timeout); the last complete checkpoint is "
        f"{ckpt}: start every process again with --resume to continue from it"
    )
    assert message_lines(procs[survivor]) == [want], report(procs, codes)
    for word in NOISE:
        assert word not in procs[survivor].stderr, report(procs, codes)
    # Seconds, not the runtime's 100 s: 5 s of silence, 2 s of the hook's pause, and
    # this shared machine's slack.
    assert elapsed < HEARTBEAT + 25, elapsed
    assert h.checkpoint_steps(out)[0] == str(h.STEPS_PER_EPOCH)
    # (its arrays' SHA-1s are checked by the resume's restore)

    procs = h.run_processes(
        2, ["train", "--out", out, "--resume", "--quiet"], h.base_env(cache, 1), timeout=TIMEOUT
    )
    codes = [p.p.returncode for p in procs]
    assert codes == [0, 0], report(procs, codes)
    got, want_rows = h.metrics(out), h.metrics(reference)
    assert [(r["epoch"], r["step"], r["test_accuracy"]) for r in got] == [
        (r["epoch"], r["step"], r["test_accuracy"]) for r in want_rows
    ]
    for g, w in zip(got, want_rows):
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=1e-4)
        assert g["test_loss"] == pytest.approx(w["test_loss"], abs=1e-4)
    assert h.summary(out)["interrupted"] is False


# ------------------------------------------------------------------ connecting


def alone(tmp_path, port, process_id, *extra, hooks=False):
    """The command of one process of a 2-process job whose peer never comes."""
    return h.command(
        "train",
        *h.TINY,
        "--out",
        str(tmp_path / "run"),
        "--coordinator",
        f"localhost:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(process_id),
        *extra,
        hooks=hooks,
    )


@pytest.mark.parametrize("process_id", [0, 1], ids=["no-peer", "no-coordinator"])
def test_a_job_that_never_assembles_times_out(tmp_path, cache, process_id):
    """Alone: process 1 finds no coordinator, process 0 (the coordinator) no peer."""
    port = h.free_port()
    proc = h.run(
        alone(tmp_path, port, process_id, "--connect-timeout", "3"), h.base_env(cache), timeout=60
    )  # far below the runtime's 300 s
    assert proc.p.returncode == 1, proc.stderr
    lines = message_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"cnn-jax train: error: process {process_id} of 2 "), lines
    assert f"localhost:{port}" in lines[0] and "for 3 s (--connect-timeout)" in lines[0]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("process_id", [0, 1], ids=["coordinator", "worker"])
def test_sigterm_while_waiting_for_the_job_ends_the_process_at_once(tmp_path, cache, process_id):
    port = h.free_port()
    proc = h.launch(
        alone(tmp_path, port, process_id, hooks=True),
        h.base_env(cache, hooks="connect"),
        timeout=60,
    )
    try:
        proc.wait_for("@@ connect")
        time.sleep(1)  # inside the wait (the default --connect-timeout is 120 s)
        proc.signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.finish()
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert code == 143, proc.stderr
    assert message_lines(proc) == ["cnn-jax: interrupted (SIGTERM)"], proc.stderr
    assert elapsed < 5, elapsed
    assert not os.path.exists(tmp_path / "run")
