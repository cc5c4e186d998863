"""Signals in a real 2-process ``cnn-jax train`` job (jax.distributed on localhost).

A scheduler's SIGTERM (or a user's Ctrl-C) rarely reaches every process of a job at
the same step. Each process's guard only sets a flag; the processes reduce the flag
at their sync points, so all of them stop after the same step, write one checkpoint
together, and exit 128 + their own signal (a process that got none exits as its
peer's). JAX's preemption service, which would swallow SIGTERM in a multi-process
job, is off. Resuming from that checkpoint must continue the uninterrupted run exactly.
"""

import signal

import _run_helpers as h
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

NO_AUGMENT = ("--no-augment",)
TIMEOUT = 150


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


def launch_job(args, hooks, cache):
    """One process per entry of ``hooks`` (that process's hook spec, or None)."""
    port = h.free_port()
    return [
        h.launch(
            h.command(
                *args,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                str(len(hooks)),
                "--process-id",
                str(i),
                hooks=True,
            ),
            h.base_env(cache, 1, hooks=spec),
            TIMEOUT,
        )
        for i, spec in enumerate(hooks)
    ]


def finish(procs):
    codes = []
    try:
        for p in procs:
            codes.append(p.finish())
    finally:
        for p in procs:
            p.kill()
    return codes


def assert_stopped_together(out, procs, codes, expected_codes, step):
    report = "\n".join(
        f"=== process {i}: exit {c}\n{p.stderr}" for i, (p, c) in enumerate(zip(procs, codes))
    )
    assert codes == expected_codes, report
    assert all("Traceback" not in p.stderr for p in procs), report
    assert f"stopped at step {step}; saved" in procs[0].stderr, report  # process 0 logs
    assert h.checkpoint_steps(out) == [str(step)]


def resume_and_compare(out, reference, cache):
    """Resume ``out`` with 2 processes to the end; every epoch's metrics must equal the
    uninterrupted single-process run's (losses up to the all-reduce's summation order)."""
    procs = h.run_processes(
        2, ["train", "--out", out, "--resume", "--quiet"], h.base_env(cache, 1), timeout=TIMEOUT
    )
    assert [p.p.returncode for p in procs] == [0, 0], "\n".join(p.stderr for p in procs)
    got, want = h.metrics(out), h.metrics(reference)
    assert [(r["epoch"], r["step"], r["test_accuracy"]) for r in got] == [
        (r["epoch"], r["step"], r["test_accuracy"]) for r in want
    ]
    for g, w in zip(got, want):
        assert g["train_loss"] == pytest.approx(w["train_loss"], abs=1e-4)
        assert g["test_loss"] == pytest.approx(w["test_loss"], abs=1e-4)
    assert h.summary(out)["interrupted"] is False


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, tmp_path_factory, cache):
    # Process 0 is signalled before its 2nd batch; process 1 never is. The next sync
    # point is the end of epoch 1 (step 4 of 4): both stop there, before evaluating it.
    reference = h.reference(tmp_path_factory, "reference-no-augment", NO_AUGMENT)
    out = str(tmp_path / "run")
    procs = launch_job(["train", *h.TINY, *NO_AUGMENT, "--out", out], ["step=2:1", None], cache)
    procs[0].wait_for("@@ step 2")
    procs[0].signal(signal.SIGTERM)
    codes = finish(procs)
    assert_stopped_together(out, procs, codes, [143, 143], h.STEPS_PER_EPOCH)
    resume_and_compare(out, reference, cache)


def test_different_signals_at_different_steps(tmp_path, tmp_path_factory, cache):
    # SIGINT reaches process 0 before step 6, SIGTERM reaches process 1 before step 7
    # (epoch 2's 2nd and 3rd batches): both stop at epoch 2's end, step 8, each exiting
    # with its own signal's status.
    reference = h.reference(tmp_path_factory, "reference-no-augment", NO_AUGMENT)
    out = str(tmp_path / "run")
    procs = launch_job(
        ["train", *h.TINY, *NO_AUGMENT, "--out", out], ["step=6:1", "step=7:1"], cache
    )
    procs[0].wait_for("@@ step 6")
    procs[0].signal(signal.SIGINT)
    procs[1].wait_for("@@ step 7")
    procs[1].signal(signal.SIGTERM)
    codes = finish(procs)
    # Epoch 1's checkpoint (step 4) is kept beside the interrupt's (step 8).
    report = "\n".join(
        f"=== process {i}: exit {c}\n{p.stderr}" for i, (p, c) in enumerate(zip(procs, codes))
    )
    assert codes == [130, 143], report
    assert "SIGINT: stopped at step 8; saved" in procs[0].stderr, report
    assert h.checkpoint_steps(out) == ["4", "8"]
    resume_and_compare(out, reference, cache)
