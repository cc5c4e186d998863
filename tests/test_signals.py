"""SIGINT / SIGTERM sent to real ``cnn-jax train`` processes at chosen moments.

The contract (cnn_jax/cli.py, cnn_jax/train/_hooks.py): a signal during training
stops the run between two steps, saves its state and exits 130 (SIGINT) or 143
(SIGTERM); a signal while a checkpoint is written never interrupts the write;
``--resume`` then gives bit-identical per-epoch metrics to an uninterrupted run.

Each run is the tiny digits run of ``_run_helpers.TINY`` (4 steps per epoch, 2
epochs, a checkpoint at every epoch end). The moments are made exact by hooks that
the subprocess imports with ``--import _run_helpers``: the run prints a marker
(``@@ step 6``, ``@@ commit 4``, ...) and waits there until it has received the
signal, which the test sends when it reads the marker.
"""

import os
import signal
import time

import _run_helpers as h
import pytest

pytestmark = pytest.mark.filterwarnings(
    # orbax's tensorstore callbacks may reach a closed asyncio loop at garbage collection
    "ignore::pytest.PytestUnraisableExceptionWarning"
)

INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per-epoch metrics of the uninterrupted run (one run per session, shared)."""
    return h.metric_rows(h.reference(tmp_path_factory))


def interrupt(out, cache, hooks, signals, expected_exit):
    """Run TINY into ``out`` with ``hooks``; for each ``(marker, signum)`` wait for
    the marker on stderr and send the signal. Checks the exit status."""
    proc = h.launch(
        h.command("train", *h.TINY, "--out", str(out), hooks=True),
        h.base_env(cache, hooks=hooks),
        timeout=150,
    )
    try:
        for marker, signum in signals:
            proc.wait_for(marker)
            proc.signal(signum)
        proc.finish()
    finally:
        proc.kill()
    return h.check(proc, expected_exit)


def resume(out, cache):
    return h.check(
        h.run(
            h.command("train", "--out", str(out), "--resume", "--quiet"),
            h.base_env(cache),
            timeout=150,
        )
    )


def assert_no_traceback(proc):
    for text in (proc.stderr, proc.stdout):
        assert "Traceback" not in text, text
        assert "Exception ignored" not in text, text


def assert_clean_checkpoints(out, steps):
    """Exactly these finished steps and no orbax temporary folder."""
    assert h.checkpoint_steps(out) == [str(s) for s in steps]


def stop_line(proc, name, step):
    lines = [line for line in proc.stderr.splitlines() if f"{name}: stopped at step" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{name}: stopped at step {step}; saved ")
    assert (
        lines[0].rstrip().endswith(f"{os.sep}checkpoints{os.sep}{step} (continue with --resume)")
    ), lines[0]
    assert "--resume" in proc.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_mid_epoch_saves_that_step_and_resumes_exactly(tmp_path, cache, reference, signum):
    """SIGHUP (a closed terminal, many schedulers) stops a run as SIGINT does: 129."""
    out = tmp_path / "run"
    # Step 6 is the second step of epoch 2: the signal arrives while it is fed, it
    # runs, and the loop stops before step 7.
    proc = interrupt(out, cache, "step=6:1", [("@@ step 6", signum)], INTERRUPTED[signum])
    stop_line(proc, signal.Signals(signum).name, 6)
    assert_no_traceback(proc)
    assert_clean_checkpoints(out, [4, 6])
    assert h.metric_rows(out) == reference[:1]  # epoch 2 was not finished
    assert h.summary(out)["interrupted"] is True

    again = resume(out, cache)
    assert_no_traceback(again)
    assert h.metric_rows(out) == reference
    assert "8" in h.checkpoint_steps(out)
    assert h.summary(out)["interrupted"] is False and h.summary(out)["epochs"] == 2


def test_sigterm_after_an_epochs_last_step_resumes_exactly(tmp_path, cache, reference):
    out = tmp_path / "run"
    # Step 4 ends epoch 1: the run stops before evaluating it; the resume must
    # evaluate epoch 1 first, then train epoch 2.
    proc = interrupt(out, cache, "step=4:1", [("@@ step 4", signal.SIGTERM)], 143)
    stop_line(proc, "SIGTERM", 4)
    assert_no_traceback(proc)
    assert_clean_checkpoints(out, [4])
    assert h.metric_rows(out) == []

    again = resume(out, cache)
    assert_no_traceback(again)
    assert h.metric_rows(out) == reference


def test_sigint_while_a_checkpoint_is_committed(tmp_path, cache, reference):
    out = tmp_path / "run"
    # The epoch-1 checkpoint is written (in orbax's temporary folder, not yet renamed
    # into place) when SIGINT arrives; training meanwhile waits at step 6.
    proc = interrupt(out, cache, "step=6:1,commit=4:1", [("@@ commit 4", signal.SIGINT)], 130)
    stop_line(proc, "SIGINT", 6)
    assert_no_traceback(proc)
    assert not [
        line
        for line in proc.stderr.lower().splitlines()
        if "orbax" in line and not line.startswith("@@")
    ], proc.stderr
    assert_clean_checkpoints(out, [4, 6])
    h.verify_checkpoint(str(out), 4)  # the write that the signal met is whole

    again = resume(out, cache)
    assert_no_traceback(again)
    assert h.metric_rows(out) == reference


def test_second_sigint_during_the_interrupt_save(tmp_path, cache, reference):
    out = tmp_path / "run"
    proc = interrupt(
        out,
        cache,
        "step=6:1,commit=6:2",
        [("@@ step 6", signal.SIGINT), ("@@ commit 6", signal.SIGINT)],
        130,
    )
    assert "SIGINT: writing the checkpoint; it finishes first" in proc.stderr
    stop_line(proc, "SIGINT", 6)
    assert_no_traceback(proc)
    assert_clean_checkpoints(out, [4, 6])
    assert h.verify_checkpoint(str(out), 6)["interrupted"] is True
    assert h.metric_rows(out) == reference[:1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_final_checkpoint_is_committed(tmp_path, cache, reference, signum):
    """Training is over; the end-of-run checkpoint is still being written (2 s in
    orbax's commit) when the signal arrives. The write must finish, the run exit
    128 + signal and the folder be complete."""
    out = tmp_path / "run"
    proc = interrupt(out, cache, "commit=8:2s", [("@@ commit 8", signum)], INTERRUPTED[signum])
    assert_no_traceback(proc)
    assert_clean_checkpoints(out, [4, 8])
    assert h.metric_rows(out) == reference
    h.verify_checkpoint(str(out), 8)


def test_sigint_before_the_training_loop(tmp_path, cache):
    out = tmp_path / "run"
    # Data loaded, model built, run.json written, no step taken yet (outside the
    # loop's signal handlers: a KeyboardInterrupt).
    proc = interrupt(out, cache, "initial_state=1", [("@@ initial_state", signal.SIGINT)], 130)
    assert "interrupted" in proc.stderr
    assert_no_traceback(proc)
    assert h.checkpoint_steps(out) == []  # nothing half-written
    assert not (out / "metrics.jsonl").exists() or h.metric_rows(out) == []


def test_sigint_while_jax_is_imported(tmp_path, cache):
    """Ctrl-C in the first seconds of ``cnn-jax train`` (importing jax): exit 130
    with the one-line message, like any other moment outside the training loop."""
    out = tmp_path / "run"
    proc = h.launch(
        h.command("train", *h.TINY, "--out", str(out), hooks=True),
        h.base_env(cache, hooks="preimport"),
        timeout=150,
    )
    try:
        proc.wait_for("@@ preimport")
        time.sleep(0.5)  # inside `import jax` (over a second, more on a loaded machine)
        proc.signal(signal.SIGINT)
        proc.finish()
    finally:
        proc.kill()
    h.check(proc, 130)
    assert "interrupted" in proc.stderr
    assert_no_traceback(proc)
    assert h.checkpoint_steps(out) == []
