"""Every input file and flag is bounded (issue 19): a value outside what the training path
can take is refused up front in one line naming the flag or the file, exit 1, nothing
written; never a traceback, never an interpreter abort.

Unit cases run in-process; the ``slow`` ones are real ``cnn-jax`` subprocesses, where a
user sees the line and the exit status. Fixtures are tiny: a few 8x8 PNGs, IDX files
written by hand.
"""

import math
import os

import jax
import numpy as np
import pytest

import _run_helpers as h
from cnn_jax.train import ConfigError, TrainConfig
from cnn_jax.train._config import MAX_IMAGE_SIZE, MAX_SEED, MAX_WIDTH


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
        with pytest.raises(ConfigError, match=rf"seed \(--seed\) must be <= 2\*\*32 - 1 .*"
                                              rf"got {seed}$"):
            TrainConfig(seed=seed)


INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("field, value, match", [
    ("lr", INF, r"lr \(--lr\) must be > 0 and finite, got inf"),
    ("lr", NAN, r"lr \(--lr\) must be > 0 and finite, got nan"),
    ("lr", -INF, r"lr \(--lr\) must be > 0 and finite, got -inf"),
    ("warmup", INF, r"warmup \(--warmup\) must be >= 0 epochs and finite, got inf"),
    ("warmup", NAN, r"warmup \(--warmup\) must be >= 0 epochs and finite, got nan"),
    ("weight_decay", INF, r"weight_decay \(--weight-decay\) must be >= 0 and finite, got inf"),
    ("weight_decay", NAN, r"weight_decay \(--weight-decay\) must be >= 0 and finite, got nan"),
    ("checkpoint_every", NAN, r"checkpoint_every \(--checkpoint-every\) must be >= 0 seconds, "
                              r"got nan"),
    ("lr", "3e-3", r"lr \(--lr\) must be a number > 0 and finite, got '3e-3'"),
    ("lr", True, r"lr \(--lr\) must be a number > 0 and finite, got True"),
    ("warmup", None, r"warmup \(--warmup\) must be a number >= 0 epochs and finite, got None"),
    ("epochs", 10**12, r"epochs \(--epochs\) must be <= 2\*\*31 - 1 \(the step counter is an "
                       r"int32\), got 1000000000000"),
    ("batch_size", 10**12, r"batch_size \(--batch-size\) must be <= 2\*\*31 - 1, got 10{12}"),
    ("eval_batch_size", 2**31, r"eval_batch_size \(--eval-batch-size\) must be <= 2\*\*31 - 1"),
    ("num_devices", 2**31, r"num_devices \(--devices\) must be <= 2\*\*31 - 1"),
    ("width", 10**9, rf"width \(--width\) must be <= {MAX_WIDTH}, got 1000000000"),
    ("image_size", 100000, rf"image_size \(--image-size\) must be <= {MAX_IMAGE_SIZE} pixels a "
                           rf"side, got 100000"),
    ("image_size", 0, r"image_size \(--image-size\) must be None or a positive int, got 0"),
    ("workers", 2**31, r"workers \(--workers\) must be <= 2\*\*31 - 1"),
    ("workers", 1.0, r"workers \(--workers\) must be None or an int >= 0, got 1.0"),
    ("epochs", True, r"epochs \(--epochs\) must be a positive int, got True"),
    ("seed", 0.5, r"seed \(--seed\) must be an int >= 0, got 0.5"),
    ("augment", 1, r"augment \(--augment\) must be True or False, got 1"),
    ("quiet", "no", r"quiet \(--quiet\) must be True or False, got 'no'"),
    ("out", "", r"out \(--out\) must be None or a non-empty path, got ''"),
    ("data_dir", 3, r"data_dir \(--data-dir\) must be None or a non-empty path, got 3"),
])
def test_flags_out_of_range_are_refused_naming_the_flag(field, value, match):
    with pytest.raises(ConfigError, match=rf"^TrainConfig: {match}"):
        TrainConfig(**{field: value})


def test_flags_are_stored_as_plain_json_values():
    """Ints for float fields, numpy scalars and paths are accepted and stored as the Python
    values run.json records; infinity for --checkpoint-every means "only the last one"."""
    import pathlib

    config = TrainConfig(lr=1, warmup=np.float32(0.5), epochs=np.int64(3), seed=MAX_SEED,
                         quiet=np.bool_(True), out=pathlib.Path("runs") / "a",
                         checkpoint_every=INF, image_size=MAX_IMAGE_SIZE, width=MAX_WIDTH)
    values = {k: getattr(config, k) for k in ("lr", "warmup", "epochs", "quiet", "out",
                                              "checkpoint_every")}
    assert values == {"lr": 1.0, "warmup": 0.5, "epochs": 3, "quiet": True,
                      "out": os.path.join("runs", "a"), "checkpoint_every": INF}
    assert [type(v) for v in values.values()] == [float, float, int, bool, str, float]
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.slow
@pytest.mark.parametrize("flags, part", [
    (["--seed", str(2**63)], "seed (--seed) must be <= 2**32 - 1"),
    (["--warmup", "inf"], "warmup (--warmup) must be >= 0 epochs and finite, got inf"),
    (["--lr", "inf"], "lr (--lr) must be > 0 and finite, got inf"),
    (["--weight-decay", "nan"], "weight_decay (--weight-decay) must be >= 0 and finite"),
    (["--epochs", str(10**12)], "epochs (--epochs) must be <= 2**31 - 1"),
    (["--image-size", "100000"], f"image_size (--image-size) must be <= {MAX_IMAGE_SIZE}"),
])
def test_cli_refuses_out_of_range_flags_in_one_line_writing_nothing(tmp_path, cache, flags,
                                                                    part):
    """``--image-size 100000`` aborted the interpreter (SIGABRT in XLA's allocator, while
    resizing the digits); ``--seed 2**63`` and ``--warmup inf`` were tracebacks after the
    run folder was written."""
    out = tmp_path / "run"
    proc = h.run(h.command("train", *h.TINY, *flags, "--out", str(out)), h.base_env(cache))
    one_error_line(proc, "cnn-jax train: error: TrainConfig: " + part)
    assert not out.exists()
