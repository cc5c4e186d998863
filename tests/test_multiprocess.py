"""``cnn-jax train`` as a real multi-process job (jax.distributed on localhost, Gloo
CPU collectives) against the single-process run with the same global batch.

Data order is a function of (seed, epoch) and augmentation is keyed by each
example's index, so splitting the global batch over 2 processes (x 1 or 2 simulated
devices each) must give the single-process run's metrics, up to the summation order
of the gradient all-reduce. Checkpoints are written by all processes together; one
written by 2 processes must resume in 1. A streamed image folder (Grain workers, each
process reading only its rows of every batch) gives the same run as well.
"""

import os

import _run_helpers as h
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

NO_AUGMENT = ("--no-augment",)
# A learning rate that does not depend on --epochs, so that "1 epoch, then --resume
# --epochs 2" is the same run as "2 epochs" (the default cosine schedule and its
# warm-up are stretched over all epochs).
CONSTANT_LR = ("--schedule", "constant", "--warmup", "0")
TOL = 1e-4
TIMEOUT = 120  # a healthy 2-process run takes 15-35 s here; a deadlock is killed at this


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


def assert_same_run(out, ref, *, processes, devices):
    """metrics.jsonl and summary.json of ``out`` equal ``ref``'s: steps and accuracies
    exactly, losses within TOL."""
    got, want = h.metrics(out), h.metrics(ref)
    assert [(r["epoch"], r["step"]) for r in got] == [(r["epoch"], r["step"]) for r in want]
    for g, w in zip(got, want):
        for key in ("train_accuracy", "test_accuracy"):
            assert g[key] == w[key], (key, g, w)
        for key in ("train_loss", "test_loss"):
            assert g[key] == pytest.approx(w[key], abs=TOL), (key, g, w)
    s, r = h.summary(out), h.summary(ref)
    assert s["test_accuracy"] == r["test_accuracy"]
    assert s["test_loss"] == pytest.approx(r["test_loss"], abs=TOL)
    assert (s["epochs"], s["interrupted"]) == (r["epochs"], False)
    assert (s["processes"], s["devices"]) == (processes, devices)


def assert_no_overlap(procs):
    """No process fed a train step while its writer thread was inside a (collective)
    checkpoint save: orbax's barriers are device collectives (an all-gather over every
    device), and launched from a second thread they may interleave with the train
    step's all-reduce in a different order on each device or process: a deadlock."""
    for i, p in enumerate(procs):
        overlaps = [line for line in p.stderr.splitlines() if line.startswith("@@ overlap")]
        assert not overlaps, (
            f"process {i}: a train step ran during a collective checkpoint write: {overlaps}"
        )


def check_job(procs):
    """Every process exited 0 without a traceback (else show them all)."""
    if any(p.p.returncode != 0 or "Traceback" in p.stderr for p in procs):
        raise AssertionError(
            "\n".join(
                f"=== process {i}: exit {p.p.returncode}: {' '.join(p.args)}\n--- stdout\n"
                f"{p.stdout}--- stderr\n{p.stderr}"
                for i, p in enumerate(procs)
            )
        )
    return procs


@pytest.mark.parametrize("devices", [1, 2], ids=["2x1dev", "2x2dev"])
def test_two_processes_match_one(tmp_path, tmp_path_factory, cache, devices):
    """2 processes x 1 device without augmentation; 2 x 2 with it (the default)."""
    extra = NO_AUGMENT if devices == 1 else ()
    ref = h.reference(tmp_path_factory, "reference-no-augment" if extra else "reference", extra)
    out = str(tmp_path / "run")
    procs = check_job(
        h.run_processes(
            2,
            ["train", *h.TINY, *extra, "--out", out],
            h.base_env(cache, devices, hooks="overlap"),
            timeout=TIMEOUT,
            hooks=True,
        )
    )
    assert_same_run(out, ref, processes=2, devices=2 * devices)
    assert h.checkpoint_steps(out) == ["4", "8"]  # written once, collectively
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert len(f.read().splitlines()) == 2  # by process 0 only
    assert {"curves.png", "filters.png", "run.json"} <= set(os.listdir(out))
    assert_no_overlap(procs)


def test_resume_in_one_process_from_a_two_process_checkpoint(tmp_path, tmp_path_factory, cache):
    flags = (*NO_AUGMENT, *CONSTANT_LR)
    ref = h.reference(tmp_path_factory, "reference-constant-lr", flags)
    out = str(tmp_path / "run")
    check_job(
        h.run_processes(
            2,
            ["train", *h.TINY, *flags, "--epochs", "1", "--out", out],
            h.base_env(cache, 1),
            timeout=TIMEOUT,
        )
    )
    assert h.checkpoint_steps(out) == ["4"]
    assert h.summary(out)["processes"] == 2

    proc = h.check(
        h.run(
            h.command("train", "--out", out, "--resume", "--epochs", "2", "--quiet"),
            h.base_env(cache, 1),
            timeout=150,
        )
    )
    assert "Traceback" not in proc.stderr
    assert h.checkpoint_steps(out) == ["4", "8"]
    assert_same_run(out, ref, processes=1, devices=1)


def _image_folder(root):
    """36 small PNGs in three class folders, the same for every call."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)).save(
                os.path.join(root, c, f"{i}.png")
            )
    return root


STREAM = (
    "--dataset",
    "folder",
    "--model",
    "digits_cnn",
    "--width",
    "4",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "8",
    "--epochs",
    "2",
    "--quiet",
    "--checkpoint-every",
    "0",
)


def test_two_processes_stream_an_image_folder_like_one(tmp_path, tmp_path_factory, cache):
    """The folder is streamed: one process decoding in a thread (--workers 0) against two
    processes, each with its own Grain worker process building only its rows."""
    folder = _image_folder(str(tmp_path / "images"))

    def make(out):
        h.check(
            h.run(
                h.command("train", *STREAM, "--data-dir", folder, "--workers", "0", "--out", out),
                h.base_env(cache),
                timeout=240,
            )
        )

    ref = h.shared_run(tmp_path_factory, "reference-stream", make)
    out = str(tmp_path / "run")
    procs = check_job(
        h.run_processes(
            2,
            ["train", *STREAM, "--data-dir", folder, "--workers", "1", "--out", out],
            h.base_env(cache, 1),
            timeout=TIMEOUT + 60,
        )
    )
    # (+60 s: each process first starts a worker, which imports Grain and jax)
    assert_same_run(out, ref, processes=2, devices=2)
    assert h.checkpoint_steps(out) == ["3", "6"]
    for p in procs:
        for word in ("Exception ignored", "mmap", "leaked"):
            assert word not in p.stderr, p.stderr
