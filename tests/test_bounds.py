"""Every input file and flag is bounded (issue 19): a value outside what the training path
can take is refused up front in one line naming the flag or the file, exit 1, nothing
written; never a traceback, never an interpreter abort.

Unit cases run in-process; the ``slow`` ones are real ``cnn-jax`` subprocesses, where a
user sees the line and the exit status. Fixtures are tiny: a few 8x8 PNGs, IDX files
written by hand.
"""

import json
import math
import os
import shutil
import struct
import zlib

import _run_helpers as h
import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax.train import (
    CheckpointError,
    ConfigError,
    Dataset,
    DatasetError,
    TrainConfig,
    _data,
    read_run,
)
from cnn_jax.train._config import MAX_IMAGE_SIZE, MAX_SEED, MAX_WIDTH
from cnn_jax.train._data import decode_image, split_image_folder
from cnn_jax.train._stream import ImageStream, stream_image_folder, usable_cores

# The streamed-folder runs: a two-conv model 4 channels wide, in-process decoding.
FOLDER = [
    "--dataset",
    "folder",
    "--model",
    "digits_cnn",
    "--width",
    "4",
    "--devices",
    "1",
    "--quiet",
    "--checkpoint-every",
    "0",
    "--epochs",
    "1",
    "--batch-size",
    "2",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return h.compilation_cache(tmp_path_factory)


def one_error_line(proc, *parts: str):
    """The run failed the way a user mistake must: exit 1, one line on stderr (holding
    ``parts``), no traceback."""
    h.check(proc, 1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- flags (TrainConfig)


def test_the_seed_bound_is_where_jax_stops_telling_seeds_apart():
    """The oracle is JAX itself: the largest seed allowed still has its own key, the
    next one would repeat seed 0's, and one above 2**63 - 1 is refused by JAX."""
    key = lambda s: np.asarray(jax.random.key_data(jax.random.key(s)))  # noqa: E731
    assert not np.array_equal(key(MAX_SEED), key(0))
    np.testing.assert_array_equal(key(MAX_SEED + 1), key(0))
    with pytest.raises(OverflowError):
        jax.random.key(2**63)
    assert TrainConfig(seed=MAX_SEED).seed == MAX_SEED
    for seed in (MAX_SEED + 1, 2**63):
        with pytest.raises(
            ConfigError,
            match=rf"seed \(--seed\) must be <= 2\*\*32 - 1 .*"
            rf"got {seed}$",
        ):
            TrainConfig(seed=seed)


INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("lr", INF, r"lr \(--lr\) must be > 0 and finite, got inf"),
        ("lr", NAN, r"lr \(--lr\) must be > 0 and finite, got nan"),
        ("lr", -INF, r"lr \(--lr\) must be > 0 and finite, got -inf"),
        ("warmup", INF, r"warmup \(--warmup\) must be >= 0 epochs and finite, got inf"),
        ("warmup", NAN, r"warmup \(--warmup\) must be >= 0 epochs and finite, got nan"),
        ("weight_decay", INF, r"weight_decay \(--weight-decay\) must be >= 0 and finite, got inf"),
        ("weight_decay", NAN, r"weight_decay \(--weight-decay\) must be >= 0 and finite, got nan"),
        (
            "checkpoint_every",
            NAN,
            r"checkpoint_every \(--checkpoint-every\) must be >= 0 seconds, "
            r"got nan",
        ),
        ("lr", "3e-3", r"lr \(--lr\) must be a number > 0 and finite, got '3e-3'"),
        ("lr", True, r"lr \(--lr\) must be a number > 0 and finite, got True"),
        ("warmup", None, r"warmup \(--warmup\) must be a number >= 0 epochs and finite, got None"),
        (
            "epochs",
            10**12,
            r"epochs \(--epochs\) must be <= 2\*\*31 - 1 \(the step counter is an "
            r"int32\), got 1000000000000",
        ),
        ("batch_size", 10**12, r"batch_size \(--batch-size\) must be <= 2\*\*31 - 1, got 10{12}"),
        ("eval_batch_size", 2**31, r"eval_batch_size \(--eval-batch-size\) must be <= 2\*\*31 - 1"),
        ("num_devices", 2**31, r"num_devices \(--devices\) must be <= 2\*\*31 - 1"),
        ("width", 10**9, rf"width \(--width\) must be <= {MAX_WIDTH}, got 1000000000"),
        (
            "image_size",
            100000,
            rf"image_size \(--image-size\) must be <= {MAX_IMAGE_SIZE} pixels a "
            rf"side, got 100000",
        ),
        ("image_size", 0, r"image_size \(--image-size\) must be None or a positive int, got 0"),
        ("workers", 2**31, r"workers \(--workers\) must be <= 2\*\*31 - 1"),
        ("workers", 1.0, r"workers \(--workers\) must be None or an int >= 0, got 1.0"),
        ("epochs", True, r"epochs \(--epochs\) must be a positive int, got True"),
        ("seed", 0.5, r"seed \(--seed\) must be an int >= 0, got 0.5"),
        ("augment", 1, r"augment \(--augment\) must be True or False, got 1"),
        ("quiet", "no", r"quiet \(--quiet\) must be True or False, got 'no'"),
        ("out", "", r"out \(--out\) must be None or a non-empty path, got ''"),
        ("data_dir", 3, r"data_dir \(--data-dir\) must be None or a non-empty path, got 3"),
    ],
)
def test_flags_out_of_range_are_refused_naming_the_flag(field, value, match):
    with pytest.raises(ConfigError, match=rf"^TrainConfig: {match}"):
        TrainConfig(**{field: value})


def test_flags_are_stored_as_plain_json_values():
    """Ints for float fields, numpy scalars and paths are accepted and stored as the Python
    values run.json records; infinity for --checkpoint-every means "only the last one"."""
    import pathlib

    config = TrainConfig(
        lr=1,
        warmup=np.float32(0.5),
        epochs=np.int64(3),
        seed=MAX_SEED,
        quiet=np.bool_(True),
        out=pathlib.Path("runs") / "a",
        checkpoint_every=INF,
        image_size=MAX_IMAGE_SIZE,
        width=MAX_WIDTH,
    )
    values = {
        k: getattr(config, k)
        for k in ("lr", "warmup", "epochs", "quiet", "out", "checkpoint_every")
    }
    assert values == {
        "lr": 1.0,
        "warmup": 0.5,
        "epochs": 3,
        "quiet": True,
        "out": os.path.join("runs", "a"),
        "checkpoint_every": INF,
    }
    assert [type(v) for v in values.values()] == [float, float, int, bool, str, float]
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, part",
    [
        (["--seed", str(2**63)], "seed (--seed) must be <= 2**32 - 1"),
        (["--warmup", "inf"], "warmup (--warmup) must be >= 0 epochs and finite, got inf"),
        (["--lr", "inf"], "lr (--lr) must be > 0 and finite, got inf"),
        (["--weight-decay", "nan"], "weight_decay (--weight-decay) must be >= 0 and finite"),
        (["--epochs", str(10**12)], "epochs (--epochs) must be <= 2**31 - 1"),
        (["--image-size", "100000"], f"image_size (--image-size) must be <= {MAX_IMAGE_SIZE}"),
    ],
)
def test_cli_refuses_out_of_range_flags_in_one_line_writing_nothing(tmp_path, cache, flags, part):
    """``--image-size 100000`` aborted the interpreter (SIGABRT in XLA's allocator, while
    resizing the digits); ``--seed 2**63`` and ``--warmup inf`` were tracebacks after the
    run folder was written."""
    out = tmp_path / "run"
    proc = h.run(h.command("train", *h.TINY, *flags, "--out", str(out)), h.base_env(cache))
    one_error_line(proc, "cnn-jax train: error: TrainConfig: " + part)
    assert not out.exists()


# ---------------------------------------------------------------- fixtures


def png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def bomb_png(path, side=15000):
    """A valid 1-bit PNG of ``side`` x ``side`` pixels (225M for 15000, above twice
    Pillow's ``MAX_IMAGE_PIXELS``), written by hand: 30 kB on disk."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = (b"\0" * (1 + (side + 7) // 8)) * side  # filter byte 0, then black pixels
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b"")
        )
    return str(path)


def split_folder(root, rng, *, size=8, n_train=3, bad_first=None):
    """``root/{train,test}/{a,b}/i.png`` (``n_train`` and 1 images per class), RGB
    ``size`` x ``size``; ``bad_first(path)`` writes ``train/a/0.png`` instead."""
    for split, n in (("train", n_train), ("test", 1)):
        for c in ("a", "b"):
            for i in range(n):
                path = os.path.join(root, split, c, f"{i}.png")
                if bad_first is not None and (split, c, i) == ("train", "a", 0):
                    bad_first(path)
                else:
                    png(path, rng.integers(0, 256, (size, size, 3)).astype(np.uint8))
    return str(root)


# ---------------------------------------------------------------- images


def test_a_decompression_bomb_is_a_bad_image_naming_the_file(tmp_path):
    path = bomb_png(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError):  # the oracle: Pillow's own limit
        Image.open(path)
    with pytest.raises(
        DatasetError,
        match=rf"^malformed file {path}: expected an image Pillow "
        rf"can read \(DecompressionBombError: .*225000000 "
        rf"pixels",
    ):
        decode_image(path)


@pytest.mark.parametrize("bad", ["garbage", "bomb"])
def test_a_bad_first_image_sizes_the_stream_from_the_next_and_is_skippable(tmp_path, rng, bad):
    def write(path):
        if bad == "bomb":
            return bomb_png(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"not an image")

    root = split_folder(tmp_path, rng, size=6, bad_first=write)
    train, test = stream_image_folder(root)
    assert train.image_shape == (6, 6, 3) == test.image_shape
    assert len(train.unread) == 1 and "train/a/0.png" in train.unread[0] and not test.unread
    with pytest.raises(
        DatasetError,
        match=r"^malformed file .*train/a/0.png: expected an "
        r"image .*; pass --on-bad-image skip to skip ",
    ):
        train.with_options(on_bad_image="error")
    skipping = train.with_options(on_bad_image="skip", workers=0)
    assert skipping.on_bad_image == "skip" and len(skipping) == 6
    with pytest.raises(DatasetError, match="train/a/0.png"):  # reading it still fails
        skipping.load(0)
    np.testing.assert_array_equal(skipping.load(1), decode_image(skipping.path(1)))


def test_a_folder_with_no_readable_image_is_refused(tmp_path, rng):
    root = tmp_path / "x"
    for c in ("a", "b"):
        for i in range(3):
            os.makedirs(root / c, exist_ok=True)
            (root / c / f"{i}.png").write_bytes(b"no")
    with pytest.raises(
        DatasetError,
        match=r"^no readable image in .*: all 4 files of the train "
        r"split failed to decode; the first: malformed file",
    ):
        stream_image_folder(str(root))


def test_workers_are_capped_at_the_usable_cores_with_one_note(capsys):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores() == cores
    files, labels = np.asarray([b"a.png"]), np.zeros(1, np.int32)
    make = lambda workers: ImageStream(
        "r",
        files,
        labels,
        1,
        "x",
        ["a"],
        (4, 4),
        3,  # noqa
        workers=workers,
    )
    for workers in (None, 0, 1, cores):
        assert make(workers).workers == workers
    assert capsys.readouterr().err == ""
    stream = make(1000)
    assert stream.workers == cores and stream.take(1).replace(split="test").workers == cores
    assert make(1000).workers == cores
    assert capsys.readouterr().err == (
        f"note: --workers 1000 is more than the {cores} usable "
        f"cores; using {cores} input worker processes\n"
    )


# ---------------------------------------------------------------- sizes


def test_an_in_memory_resize_must_fit_in_memory(monkeypatch):
    """XLA aborts the interpreter when an eager op's output cannot be allocated (digits at
    --image-size 100000), so the resized arrays are checked first."""
    data = Dataset(np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int32), 10, "toy")
    monkeypatch.setattr(_data, "host_memory", lambda: 2**20)
    assert data.resized(64).images.shape == (4, 64, 64, 1)  # 4 * 64 * 64 * 4 B = 64 KiB
    with pytest.raises(
        DatasetError,
        match=r"^toy: 4 images resized to 1024x1024 need 0.0 GiB "
        r"of memory, more than this machine's 0.0 GiB; pass "
        r"a smaller --image-size",
    ):
        data.resized(1024)  # 16 MiB


@pytest.mark.parametrize(
    "model, shape, rule, fits",
    [
        ("simple_cnn", (4, 4, 3), r"SimpleCNN: x must be \(N, H, W, C\) with H, W >= 8", 8),
        ("digits_cnn", (7, 7, 1), r"DigitsCNN: input_size must be even and >= 2", 8),
        ("vgg11", (16, 16, 3), r"VGG: x must be \(N, H, W, C\) with H, W >= 32", 32),
    ],
)
def test_an_image_smaller_than_the_model_takes_is_refused_before_compiling(
    model, shape, rule, fits
):
    h_, w_, c = shape
    with pytest.raises(
        ConfigError,
        match=rf"^train: model '{model}' does not take the data "
        rf"set's {h_}x{w_}x{c} images \({rule}.*\); it takes "
        rf"{fits}x{fits}: pass --image-size {fits}",
    ):
        TrainConfig(model=model, width=4 if model != "vgg11" else None).check_input(10, shape)
    TrainConfig(model=model, width=4 if model != "vgg11" else None).check_input(10, (fits, fits, c))


def test_a_model_whose_training_state_exceeds_memory_is_refused(monkeypatch):
    # digits_cnn on 8x8x1, 10 classes: conv 1->32 (288 + 32), conv 32->64 (18432 + 64),
    # linear 4*4*64 -> 10 (10240 + 10): 29,066 float32 parameters; AdamW holds 4 copies.
    need = 29066 * 4 * 4
    monkeypatch.setattr(_data, "host_memory", lambda: need)
    TrainConfig().check_input(10, (8, 8, 1))
    monkeypatch.setattr(_data, "host_memory", lambda: need - 1)
    with pytest.raises(
        ConfigError,
        match=r"^train: model 'digits_cnn' has 29,066 parameters, "
        r"whose training state \(4 float32 copies",
    ):
        TrainConfig().check_input(10, (8, 8, 1))
    with pytest.raises(ConfigError, match=r"'digits_cnn' at --width 64 has"):
        TrainConfig(width=64).check_input(10, (8, 8, 1))


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("per_class", [1, 2])
def test_a_folder_split_that_holds_out_nothing_is_refused(tmp_path, rng, per_class):
    """One or two images per class round to no test image: the run reported accuracy
    NaN and exited 0."""
    for c in ("a", "b", "c"):
        for i in range(per_class):
            png(str(tmp_path / c / f"{i}.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(
        DatasetError,
        match=rf"^malformed folder {tmp_path}: expected enough "
        rf"images per class to hold out a test split \(0.2 "
        rf"of each class, rounded\), got at most "
        rf"{per_class} image\(s\) per class",
    ):
        split_image_folder(str(tmp_path))
    png(str(tmp_path / "a" / "9.png"), np.zeros((4, 4), np.uint8))
    png(str(tmp_path / "a" / "8.png"), np.zeros((4, 4), np.uint8))
    train, test = split_image_folder(str(tmp_path))  # a: 3 or 4 images, 1 held out
    assert [len(test[c]) for c in "abc"] == [1, 0, 0]


# ---------------------------------------------------------------- run.json


def _run_record(out, **changes):
    """A run.json as ``train`` writes it, for a 2-class folder run on 8x8 RGB images."""
    config = TrainConfig(dataset="folder", data_dir="data", out=str(out))
    run = {
        "config": dict(config.to_dict(), resume=False),
        "model": config.model_name,
        "dataset": "folder",
        "task": "classify",
        "num_classes": 2,
        "image_shape": [8, 8, 3],
        "class_names": ["a", "b"],
        "input": {"recipe": "folder", "size": [8, 8, 3], "mean": None, "std": None},
    }
    run.update(changes)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({k: v for k, v in run.items() if v is not DROP}, f)
    return run


DROP = object()


def test_read_run_reads_the_record_train_writes(tmp_path):
    _run_record(tmp_path)
    run = read_run(str(tmp_path))
    assert run["config"].model_name == "simple_cnn" and run["image_shape"] == [8, 8, 3]
    _run_record(tmp_path, input=DROP, task=DROP)  # older records have neither
    assert read_run(str(tmp_path))["num_classes"] == 2


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_classes": DROP}, r"'num_classes' must be present, got 'no such key'"),
        ({"num_classes": "ten"}, r"'num_classes' must be a positive int, got 'ten'"),
        ({"num_classes": True}, r"'num_classes' must be a positive int, got True"),
        ({"num_classes": 0}, r"'num_classes' must be a positive int, got 0"),
        (
            {"class_names": ["a"]},
            r"'class_names' must be one name per class \(2 names, "
            r"'num_classes'\), got '1 names'",
        ),
        ({"class_names": "ab"}, r"'class_names' must be a list of strings, got 'ab'"),
        ({"class_names": ["a", 2]}, r"'class_names' must be a list of strings"),
        (
            {"image_shape": [8, 8]},
            r"'image_shape' must be \[H, W, C\], three positive ints, got "
            r"\[8, 8\]",
        ),
        ({"image_shape": [8, 8, 0]}, r"'image_shape' must be \[H, W, C\]"),
        ({"image_shape": [8, 8, 2.5]}, r"'image_shape' must be \[H, W, C\]"),
        ({"model": "resnet18"}, r"'model' must be the config's 'simple_cnn', got 'resnet18'"),
        ({"dataset": 3}, r"'dataset' must be the config's 'folder', got 3"),
        ({"config": DROP}, r"'config' must be present"),
        ({"config": [1]}, r"'config' must be a JSON object of TrainConfig fields, got \[1\]"),
        (
            {"config": {"lr": "fast"}},
            r"'config' must hold a valid configuration \(ConfigError: "
            r"TrainConfig: lr \(--lr\) must be a number",
        ),
        (
            {"config": {"speed": 1}},
            r"'config' must hold a valid configuration .*unknown "
            r"\['speed'\]",
        ),
        (
            {"input": {"recipe": "coco"}},
            r"'input' must be null or an object whose 'recipe' is one "
            r"of \('folder', 'imagenet'\)",
        ),
        (
            {"input": {"recipe": "folder", "size": [4, 4, 3]}},
            r"'input' 'size' must be the "
            r"'image_shape' \[8, 8, 3\]",
        ),
        (
            {
                "input": {
                    "recipe": "imagenet",
                    "size": [8, 8, 3],
                    "mean": [0.5] * 3,
                    "std": [0.2, 0],
                }
            },
            r"'input' 'std' must be null or 3 finite numbers",
        ),
        (
            {
                "input": {
                    "recipe": "imagenet",
                    "size": [8, 8, 3],
                    "mean": [0.5] * 3,
                    "std": [0.2, 0, 1],
                }
            },
            r"'input' 'mean' and 'std' must be both null or both given, std > 0",
        ),
    ],
)
def test_an_edited_run_record_is_refused_naming_the_file_and_the_key(tmp_path, changes, match):
    _run_record(tmp_path, **changes)
    path = os.path.join(tmp_path, "run.json")
    with pytest.raises(
        CheckpointError,
        match=rf"^malformed file {path}: expected the run "
        rf"record written by cnn-jax train; {match}",
    ):
        read_run(str(tmp_path))


@pytest.mark.parametrize(
    "text, match",
    [
        (b'{"config": {', r"\(JSONDecodeError: "),
        (
            b"[1, 2]",
            r"; the record must be a JSON "
            r"object, got \[1, 2\]",
        ),
        (b"\xff\xfe", r"\(UnicodeDecodeError: "),
    ],
)
def test_a_damaged_run_record_is_refused_in_one_line(tmp_path, text, match):
    (tmp_path / "run.json").write_bytes(text)
    with pytest.raises(
        CheckpointError,
        match=rf"^malformed file .*run.json: expected the run "
        rf"record written by cnn-jax train.*{match}",
    ):
        read_run(str(tmp_path))


# ---------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_bad_first_image_and_a_decompression_bomb(tmp_path, rng, cache):
    """A 15000x15000 PNG as the first training file: a traceback from Pillow before, and
    --on-bad-image skip could not skip it (it was decoded up front for the size). Now the
    default policy refuses it in one line before anything is written, and skip trains."""
    root = split_folder(tmp_path / "data", rng, bad_first=bomb_png)
    bomb = os.path.join(root, "train", "a", "0.png")
    out = tmp_path / "run"
    proc = h.run(
        h.command("train", *FOLDER, "--data-dir", root, "--workers", "0", "--out", str(out)),
        h.base_env(cache),
        timeout=240,
    )
    one_error_line(
        proc,
        f"cnn-jax train: error: malformed file {bomb}: expected an image",
        "DecompressionBombError",
        "; pass --on-bad-image skip to skip unreadable",
    )
    assert not out.exists()
    proc = h.check(
        h.run(
            h.command(
                "train",
                *FOLDER,
                "--data-dir",
                root,
                "--workers",
                "0",
                "--on-bad-image",
                "skip",
                "--out",
                str(out),
            ),
            h.base_env(cache),
            timeout=240,
        )
    )
    assert f"skipped unreadable image {bomb}" in proc.stderr
    summary = h.summary(str(out))
    assert summary["skipped_files"] == [bomb] and summary["epochs"] == 1


@pytest.mark.slow
def test_cli_caps_workers_at_the_usable_cores_with_a_note(tmp_path, rng, cache):
    root = split_folder(tmp_path / "data", rng)
    out = tmp_path / "run"
    proc = h.check(
        h.run(
            h.command("train", *FOLDER, "--data-dir", root, "--workers", "1000", "--out", str(out)),
            h.base_env(cache),
            timeout=300,
        )
    )
    cores = usable_cores()  # the subprocess inherits this process's affinity
    assert (
        f"note: --workers 1000 is more than the {cores} usable cores; using {cores} input "
        f"worker processes"
    ) in proc.stderr.splitlines()
    assert h.summary(str(out))["input_workers"] == cores


@pytest.mark.slow
@pytest.mark.parametrize("case", ["too_small", "one_per_class"])
def test_cli_refuses_a_folder_the_model_cannot_use(tmp_path, rng, cache, case):
    """4x4 images for a model that needs 8x8 were a traceback from the first train step
    (after run.json was written); one image per class gave test accuracy NaN, exit 0."""
    root = tmp_path / "data"
    if case == "too_small":
        split_folder(root, rng, size=4)
        flags, parts = (
            ["--model", "simple_cnn"],
            [
                "cnn-jax train: error: train: model 'simple_cnn' does not take the data set's "
                "4x4x3 images (SimpleCNN: x must be (N, H, W, C) with H, W >= 8",
                "it takes 8x8: pass --image-size 8",
            ],
        )
    else:
        for c in ("a", "b"):
            png(str(root / c / "0.png"), rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
        flags, parts = (
            ["--batch-size", "1"],
            [
                f"cnn-jax train: error: malformed folder {root}: expected enough images per class "
                f"to hold out a test split"
            ],
        )
    out = tmp_path / "run"
    proc = h.run(
        h.command(
            "train", *FOLDER, *flags, "--data-dir", str(root), "--workers", "0", "--out", str(out)
        ),
        h.base_env(cache),
        timeout=240,
    )
    one_error_line(proc, *parts)
    assert not out.exists()


@pytest.mark.slow
def test_cli_refuses_an_idx_header_whose_size_wraps_around(tmp_path, rng, cache):
    """2**31 x 2**31 x 4 bytes wrap numpy's int64 product to 0, the data's length: a
    reshape traceback before."""
    root = tmp_path / "mnist"
    os.makedirs(root)
    shapes = {
        "train-images-idx3-ubyte": (2**31, 2**31, 4),
        "train-labels-idx1-ubyte": (4,),
        "t10k-images-idx3-ubyte": (2, 28, 28),
        "t10k-labels-idx1-ubyte": (2,),
    }
    for name, shape in shapes.items():
        data = b"" if name.startswith("train-images") else bytes(math.prod(shape))
        (root / name).write_bytes(
            bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data
        )
    out = tmp_path / "run"
    proc = h.run(
        h.command(
            "train", "--dataset", "mnist", "--data-dir", str(root), *h.TINY, "--out", str(out)
        ),
        h.base_env(cache),
    )
    one_error_line(
        proc,
        f"malformed file {root / 'train-images-idx3-ubyte'}: expected an IDX "
        f"file of uint8 with 3 dimension(s) holding 18446744073709551616 bytes "
        f"for shape (2147483648, 2147483648, 4), got 0",
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The session's reference run (digits, 2 epochs, checkpoints at both ends)."""
    return h.reference(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize(
    "edit, part",
    [
        (lambda r: r.pop("num_classes"), "'num_classes' must be present"),
        (lambda r: r.update(num_classes="ten"), "'num_classes' must be a positive int, got 'ten'"),
        (
            lambda r: r.update(class_names=r["class_names"][:3]),
            "'class_names' must be one name per class (10 names, 'num_classes'), got '3 names'",
        ),
        (lambda r: r.update(image_shape=[8, 8]), "'image_shape' must be [H, W, C]"),
    ],
)
def test_cli_an_edited_run_record_is_one_line(tmp_path, trained, cache, command, edit, part):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    path = out / "run.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    image = tmp_path / "x.png"
    png(str(image), np.zeros((8, 8), np.uint8))
    args = [command, "--out", str(out)] + ([str(image)] if command == "predict" else [])
    proc = h.run(h.command(*args), h.base_env(cache))
    one_error_line(
        proc,
        f"cnn-jax {command}: error: malformed file {path}: expected the run "
        f"record written by cnn-jax train; {part}",
    )


@pytest.mark.slow
def test_cli_resume_after_a_half_written_metrics_line(tmp_path, trained, cache):
    """A crash mid-write leaves metrics.jsonl's last line cut inside its JSON; --resume with
    more epochs must go on (exit 0) and leave a well-formed file, one row per epoch.
    (The lead's MetricsWriter rewrite makes this pass: a resume no longer trusts the file.)"""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    path = out / "metrics.jsonl"
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text.rstrip("\n")) - len(last) // 2])  # cut mid-line
    proc = h.check(
        h.run(
            h.command("train", "--out", str(out), "--resume", "--epochs", "3"),
            h.base_env(cache),
            timeout=240,
        )
    )
    assert "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_cli_checkpoint_every_inf_means_only_the_last_checkpoint(tmp_path, cache):
    """Infinity is a meaningful --checkpoint-every (no time-based saves), so it is allowed:
    the run saves its last step only, and run.json (where json writes Infinity) reads
    back."""
    assert h.TINY[-2:] == ("--checkpoint-every", "0")
    out = tmp_path / "run"
    h.check(
        h.run(
            h.command("train", *h.TINY[:-2], "--checkpoint-every", "inf", "--out", str(out)),
            h.base_env(cache),
            timeout=240,
        )
    )
    assert [s for s in h.checkpoint_steps(str(out)) if s.isdigit()] == [str(2 * h.STEPS_PER_EPOCH)]
    assert read_run(str(out))["config"].checkpoint_every == INF
