"""Streamed image folders (Grain workers): the in-memory batches, exact resume, bad files,
dead workers, evaluation, and a clean exit.

Folders are generated per test (a few dozen tiny images) and models are tiny, so
each run is dominated by compilation and, with ``--workers N``, by the workers'
start (each imports Grain and jax: seconds on two cores); worker counts stay at 0-2.
"""

import json
import os
import signal
import time

import _run_helpers as h
import numpy as np
import pytest
from PIL import Image

from cnn_jax.cli import main
from cnn_jax.train import (
    ConfigError,
    DatasetError,
    TrainConfig,
    _loop,
    create_model,
    evaluate,
    fit,
    load_dataset,
    load_image_folder,
)
from cnn_jax.train._experiment import load_images
from cnn_jax.train._feed import StreamFeed
from cnn_jax.train._sharding import make_mesh
from cnn_jax.train._stream import (
    BatchPlan,
    ImageStream,
    center_crop_box,
    random_resized_crop_box,
    stream_image_folder,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# What a clean run never prints: Grain's shared-memory arrays collected at interpreter
# shutdown print "'NoneType' object has no attribute 'mmap'"; segments never unlinked
# make the resource tracker warn about "leaked shared_memory objects".
NOISE = ("Traceback", "Exception ignored", "mmap", "leaked")
TINY = [
    "--model",
    "digits_cnn",
    "--width",
    "4",
    "--devices",
    "1",
    "--quiet",
    "--checkpoint-every",
    "0",
]


def make_folder(
    root, rng, *, layout="flat", classes=("a", "b", "c"), n=12, size=(12, 10), jpeg=False, bad=()
):
    """``root/<class>/i.png`` (``layout="flat"``) or ``root/{train,val}/<class>/...``
    (``"imagenet"``: ``n`` training and ``n // 3`` validation images per class, of
    varying sizes, JPEG when asked); ``bad`` lists relative paths to fill with bytes
    no decoder reads."""
    splits = {"": n} if layout == "flat" else {"train": n, "val": max(n // 3, 1)}
    for split, count in splits.items():
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(count):
                shape = size if layout == "flat" else tuple(rng.integers(18, 40, 2))
                image = Image.fromarray(rng.integers(0, 256, (*shape, 3)).astype(np.uint8))
                image.save(os.path.join(root, split, c, f"{i}.{'jpg' if jpeg else 'png'}"))
    for rel in bad:
        with open(os.path.join(root, rel), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    return str(root)


def host(batch) -> dict:
    return {k: np.asarray(v) for k, v in batch.items()}


def assert_clean(text: str):
    for word in NOISE:
        assert word not in text, text


# ---------------------------------------------------------------- the batches


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_batches_are_the_in_memory_ones(tmp_path, rng, workers):
    """Same files, same order (seed, epoch), same decoding: every training batch (from a
    resume step in the middle of an epoch on) and every evaluation batch equals the
    in-memory loader's, to the bit, whatever the worker count."""
    root = make_folder(tmp_path / "flat", rng)
    stream_train, stream_test = load_dataset("folder", root, seed=1)
    train, test = load_image_folder(root, seed=1)
    mesh = make_mesh(1)
    plan = BatchPlan.for_run(
        stream_train,
        stream_test,
        seed=3,
        batch_size=8,
        rows=slice(0, 8),
        steps_per_epoch=3,
        start_step=2,
        epochs=2,
        eval_batch_size=4,
        eval_rows=slice(0, 4),
    )
    memory = _loop._Batches(train, 8, mesh, seed=3)
    with StreamFeed(plan, mesh, workers=workers) as feed:
        for epoch, first in ((0, 2), (1, 0)):
            for i in range(first, 3):
                got, want = (
                    host(feed.next("train", epoch, i)),
                    host(memory.train(memory.order(epoch), i)),
                )
                assert got.keys() == want.keys()
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            evals = [host(b) for b in feed.eval_pass(epoch)]
            want = [host(b) for b in _loop._Batches(test, 4, mesh).eval()]
            assert len(evals) == len(want) == 2
            for got, ref in zip(evals, want):
                valid = ref["valid"] > 0
                np.testing.assert_array_equal(got["valid"], ref["valid"])
                np.testing.assert_array_equal(got["image"][valid], ref["image"][valid])
                np.testing.assert_array_equal(got["label"][valid], ref["label"][valid])


def test_a_plan_is_a_function_of_the_step_and_the_rows(tmp_path, rng):
    """Host augmentation (imagenet recipe) included: a plan that starts at step 5 holds
    the same batches as the tail of one that starts at 0, and two processes' rows
    concatenate to the single process's batch."""
    root = make_folder(tmp_path / "in", rng, layout="imagenet", classes=("x", "y"), n=8)
    train, test = (s.resized(16) for s in stream_image_folder(root, recipe="imagenet"))
    kw = dict(seed=7, steps_per_epoch=4, epochs=2, eval_batch_size=3)

    def plan(start, rows=slice(0, 4), eval_rows=slice(0, 3)):
        return BatchPlan.for_run(
            train, test, batch_size=4, rows=rows, start_step=start, eval_rows=eval_rows, **kw
        )

    full, resumed = plan(0), plan(5)  # 4 training and 2 evaluation batches per epoch
    assert len(full) == 2 * (4 + 2) and len(resumed) == 3 + 2
    tail = [full[k] for k in range(len(full) - len(resumed), len(full))]
    for a, b in zip(tail, (resumed[k] for k in range(len(resumed)))):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    halves = plan(0, slice(0, 2), slice(0, 1)), plan(0, slice(2, 4), slice(1, 3))
    for k in range(len(full)):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][k][key], halves[1][k][key]]), full[k][key]
            )
    # The crops are random (two epochs of one example differ) but a function of the seed.
    first = full[0]["image"]
    assert not np.array_equal(first, full[6]["image"])
    assert not np.array_equal(
        first,
        BatchPlan.for_run(
            train,
            test,
            batch_size=4,
            rows=slice(0, 4),
            start_step=0,
            eval_rows=slice(0, 3),
            **dict(kw, seed=8),
        )[0]["image"],
    )


def test_sigint_in_a_streamed_run_resumes_with_identical_batches(
    tmp_path, rng, monkeypatch, capsys
):
    """The imagenet recipe (random-resized crops and flips in the workers): stopped by
    SIGINT in the middle of epoch 2, resumed with another worker count, the run sees
    exactly the batches of an uninterrupted run from there on and ends with the same
    metrics and checkpoint."""
    root = make_folder(tmp_path / "in", rng, layout="imagenet", classes=("x", "y"), n=8, jpeg=True)
    flags = [
        "train",
        "--dataset",
        "imagenet",
        "--data-dir",
        root,
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--schedule",
        "constant",
        *TINY,
    ]
    seen, real = [], _loop._StreamBatches.train

    def recording(self, order, i, stop_at=None):
        batch = real(self, order, i)
        if batch is not None:
            seen.append(((order, i), host(batch)))
        if len(seen) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return batch

    ref = str(tmp_path / "ref")
    monkeypatch.setattr(_loop._StreamBatches, "train", recording)
    assert main([*flags, "--workers", "0", "--out", ref]) == 0
    reference = list(seen)
    assert [where for where, _ in reference] == [(e, i) for e in (0, 1) for i in range(4)]

    seen.clear()
    out = str(tmp_path / "run")
    monkeypatch.setattr(
        _loop._StreamBatches, "train", lambda self, order, i: recording(self, order, i, stop_at=6)
    )
    assert main([*flags, "--workers", "0", "--out", out]) == 130
    assert "SIGINT: stopped at step 6; saved" in capsys.readouterr().err
    seen.clear()
    monkeypatch.setattr(_loop._StreamBatches, "train", recording)
    assert main(["train", "--out", out, "--resume", "--workers", "1"]) == 0
    assert [where for where, _ in seen] == [(1, 2), (1, 3)]
    for (where, got), (_, want) in zip(seen, reference[6:]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{where} {key}")
    assert h.metric_rows(out) == h.metric_rows(ref)
    record = h.verify_checkpoint(out, 8)
    assert record["sha1"] == h.verify_checkpoint(ref, 8)["sha1"]
    assert record["data"] == {"files": 16, "sha1": record["data"]["sha1"]}


class _SlowPlan(BatchPlan):
    """Batches that take seconds each: an input that cannot keep up."""

    def __getitem__(self, k):
        time.sleep(3.0)
        return super().__getitem__(k)


def test_a_signal_while_the_input_is_late_stops_the_wait(tmp_path, rng):
    """Single process: a step waiting for a batch gives up as soon as SIGINT arrives (the
    loop then stops and saves), instead of waiting for the input."""
    from cnn_jax.train._signals import SignalGuard

    root = make_folder(tmp_path / "flat", rng, n=4)
    train, test = load_dataset("folder", root)
    plan = _SlowPlan.for_run(
        train,
        test,
        seed=0,
        batch_size=4,
        rows=slice(0, 4),
        steps_per_epoch=2,
        start_step=0,
        epochs=1,
        eval_batch_size=3,
        eval_rows=slice(0, 3),
    )
    with SignalGuard() as guard:
        feed = StreamFeed(plan, make_mesh(1), workers=0)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            t0 = time.monotonic()
            assert feed.next("train", 0, 0, interruptible=True) is None
            assert time.monotonic() - t0 < 2.0 and guard.stop
        finally:
            feed.close()


def test_resume_refuses_a_folder_whose_files_changed(tmp_path, rng, capsys):
    root = make_folder(tmp_path / "flat", rng, n=6)
    out = str(tmp_path / "run")
    flags = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        root,
        "--batch-size",
        "6",
        "--workers",
        "0",
        *TINY,
    ]
    assert main([*flags, "--epochs", "1", "--out", out]) == 0
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(os.path.join(root, "a", "new.png"))
    assert main(["train", "--out", out, "--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "was written for other image files (15 files" in err
    assert "now has 16" in err and "would not replay the same batches" in err


# ---------------------------------------------------------------- evaluation


def test_fit_evaluate_and_predict_on_streams(tmp_path, rng):
    """fit compiles its step once; evaluate over a stream equals evaluate over the same
    images in memory; predict's preprocessing (the run's input record) is evaluation's."""
    root = make_folder(tmp_path / "in", rng, layout="imagenet", classes=("x", "y"), n=6)
    train, test = (s.resized(16) for s in stream_image_folder(root, recipe="imagenet"))
    model = create_model("digits_cnn", 2, train.image_shape, width=4)
    history = fit(
        model,
        train,
        test,
        TrainConfig(
            dataset="imagenet",
            batch_size=4,
            epochs=1,
            workers=0,
            quiet=True,
            num_devices=1,
            eval_batch_size=3,
        ),
    )
    assert history.trace_counts == {"train_step": 1, "eval_step": 1}
    summary = history.summary
    assert (summary["input_workers"], summary["skipped_images"]) == (0, 0)
    assert summary["input_wait_s"] >= 0
    streamed = evaluate(model, test.with_options(workers=0), batch_size=4, num_devices=1)
    in_memory = evaluate(model, test.to_dataset(), batch_size=4, num_devices=1)
    assert streamed == dict(in_memory, skipped_images=0)
    assert streamed["accuracy"] == summary["test_accuracy"]
    paths = [test.path(i) for i in range(len(test))]
    np.testing.assert_array_equal(
        load_images(paths, test.image_shape, input=test.input_record()), test.to_dataset().images
    )


# ---------------------------------------------------------------- failures


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


def test_a_bad_image_stops_the_run_naming_it_or_is_skipped_and_counted(tmp_path, rng, cache):
    """Subprocesses with one worker each: an unreadable file in the stream ends the run
    with one line naming it (exit 1); with --on-bad-image skip the run completes, says
    which files it skipped and counts them in summary.json, and `cnn-jax evaluate`
    reads the stream too. Nothing is printed at exit (shared memory released)."""
    root = make_folder(
        tmp_path / "split", rng, layout="imagenet", n=8, bad=("train/a/5.png", "val/b/1.png")
    )
    flags = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        root,
        "--batch-size",
        "6",
        "--epochs",
        "2",
        "--workers",
        "1",
        *TINY,
    ]
    out = str(tmp_path / "run")
    proc = h.run(h.command(*flags, "--out", out), h.base_env(cache), timeout=150)
    h.check(proc, 1)
    bad, bad_test = (
        os.path.join(root, *rel.split("/")) for rel in ("train/a/5.png", "val/b/1.png")
    )
    assert proc.stderr.strip().splitlines()[-1] == (
        f"cnn-jax train: error: malformed file {bad}: expected an image Pillow can read "
        f"(UnidentifiedImageError: cannot identify image file {bad!r}); pass "
        f"--on-bad-image skip to skip unreadable images"
    ), proc.stderr
    assert_clean(proc.stderr)

    proc = h.check(
        h.run(
            h.command("train", "--out", out, "--resume", "--on-bad-image", "skip"),
            h.base_env(cache),
            timeout=150,
        )
    )
    assert_clean(proc.stderr + proc.stdout)
    assert proc.stderr.count(f"skipped unreadable image {bad}") == 1
    assert proc.stderr.count(f"skipped unreadable image {bad_test}") == 1
    summary = h.summary(out)
    assert (summary["skipped_images"], summary["skipped_files"]) == (2, [bad, bad_test])
    assert summary["epochs"] == 2 and summary["input_workers"] == 1

    proc = h.check(h.run(h.command("evaluate", "--out", out), h.base_env(cache), timeout=150))
    assert json.loads(proc.stdout)["test_accuracy"] == summary["test_accuracy"]
    assert_clean(proc.stderr)


def _worker_of(pid: int):
    import psutil

    for child in psutil.Process(pid).children():
        if "spawn_main" in " ".join(child.cmdline()):
            return child
    return None


def test_a_dead_worker_ends_the_run_with_a_clear_error(tmp_path, rng, cache):
    """A worker killed (SIGKILL, as the out-of-memory killer does) ends the run: one line
    saying so, exit 1, well inside the timeout (no hang)."""
    root = make_folder(tmp_path / "flat", rng, n=8)
    proc = h.launch(
        h.command(
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            root,
            "--batch-size",
            "6",
            "--epochs",
            "500",
            "--workers",
            "1",
            *TINY,
            "--out",
            str(tmp_path / "run"),
        ),
        h.base_env(cache),
        timeout=150,
    )
    try:
        deadline = time.monotonic() + 100
        worker = None
        while worker is None and time.monotonic() < deadline and proc.p.poll() is None:
            worker = _worker_of(proc.p.pid)
            time.sleep(0.2)
        assert worker is not None, proc.stderr
        time.sleep(1.0)  # let it get to work
        killed = time.monotonic()
        worker.kill()
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 1, proc.stderr
    assert time.monotonic() - killed < 30
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "cnn-jax train: error: an input worker process died (killed by "
        "SIGKILL) (SIGKILL is what the out-of-memory killer sends"
    ), last
    assert "continue from the last checkpoint with --resume" in last
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- recipes and errors


def test_crop_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(8, 300, 2))
        left, top, right, bottom = random_resized_crop_box(w, h, rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
    # Inside the scale and ratio ranges when a try succeeds (a square image always can).
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(100, 100, rng)
        cw, ch = right - left, bottom - top
        assert 0.07 <= cw * ch / 1e4 <= 1.0 and 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05
    # Ten failed tries (a very wide image): the centred crop of the widest allowed ratio.
    assert random_resized_crop_box(400, 10, np.random.default_rng(0), scale=(1.0, 1.0)) == (
        193,
        0,
        206,
        10,
    )
    # Evaluation: Resize(256) then CenterCrop(224) of a 500 x 375 image is the box
    # (left 58, top 16) of the 341 x 256 resized image, in source pixels.
    box = center_crop_box(500, 375, (224, 224))
    np.testing.assert_allclose(
        box, [58 * 500 / 341, 16 * 375 / 256, 282 * 500 / 341, 240 * 375 / 256]
    )


def test_the_imagenet_recipe_decodes_rgb_crops(tmp_path, rng):
    root = make_folder(tmp_path / "in", rng, layout="imagenet", classes=("x", "y"), n=3)
    train, test = stream_image_folder(root, recipe="imagenet")
    assert (train.image_shape, len(train), len(test), train.class_names) == (
        (224, 224, 3),
        6,
        2,
        ["x", "y"],
    )
    assert train.augments_on_host and not test.augments_on_host
    assert test.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = test.resized(16).to_dataset().images
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
    assert images.min() < -1.0 and images.max() > 1.5  # normalised, not in [0, 1]
    os.makedirs(os.path.join(root, "val", "z"))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(root, "val", "z", "0.png"))
    with pytest.raises(DatasetError, match=r"same class sub-folders in train/ and val/"):
        stream_image_folder(root, recipe="imagenet")


def test_stream_and_option_errors(tmp_path, capsys):
    files = np.asarray([b"a.png"])
    with pytest.raises(DatasetError, match="recipe must be one of .* got 'coco'"):
        ImageStream("r", files, np.zeros(1, np.int32), 1, "x", ["a"], (4, 4), 3, recipe="coco")
    with pytest.raises(DatasetError, match="on_bad_image must be one of .* got 'ignore'"):
        ImageStream(
            "r", files, np.zeros(1, np.int32), 1, "x", ["a"], (4, 4), 3, on_bad_image="ignore"
        )
    with pytest.raises(DatasetError, match="same length, got 1 files and 2 labels"):
        ImageStream("r", files, np.zeros(2, np.int32), 1, "x", ["a"], (4, 4), 3)
    with pytest.raises(
        ConfigError, match=r"workers \(--workers\) must be None or an int >= 0, got -1"
    ):
        TrainConfig(workers=-1)
    with pytest.raises(ConfigError, match=r"on_bad_image must be one of \('error', 'skip'\)"):
        TrainConfig(on_bad_image="ignore")
    with pytest.raises(SystemExit):
        main(["train", "--on-bad-image", "ignore"])
    assert "invalid choice: 'ignore'" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="missing file .*nope.png: expected an image"):
        ImageStream(
            str(tmp_path),
            np.asarray([b"nope.png"]),
            np.zeros(1, np.int32),
            1,
            "x",
            ["a"],
            (4, 4),
            3,
        ).load(0)
