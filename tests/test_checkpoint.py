"""Checkpoints: round trip, retention, refusal of damaged or mismatched ones, resume,
Ctrl-C and non-finite loss through ``fit``."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.train import (
    Checkpointer,
    CheckpointError,
    Dataset,
    NonFiniteLossError,
    TrainConfig,
    fit,
    make_mesh,
)
from cnn_jax.train._step import Trainer


def _state(seed=0):
    k = jax.random.key(seed)
    return {
        "w": jax.random.normal(k, (3, 4)),
        "b": jnp.arange(4.0),
        "rng": jax.random.key(seed + 7),
        "step": jnp.asarray(seed, jnp.int32),
    }


def test_round_trip_keeps_values_dtypes_and_prng_keys(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"))
    state = _state(1)
    ckpt.save(5, state, {"model": "m"}, metric=0.5)
    restored, meta = ckpt.restore(5, _state(0), expect={"model": "m"})
    ckpt.close()
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert restored["step"].dtype == jnp.int32 and int(restored["step"]) == 1
    # The restored key draws the same numbers as the saved one.
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (3,)), jax.random.normal(state["rng"], (3,))
    )
    assert meta["model"] == "m" and meta["step"] == 5 and meta["metric"] == 0.5


def test_keeps_the_latest_few_and_the_best(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"), keep=2)
    for step, metric in [(1, 0.3), (2, 0.9), (3, 0.5), (4, 0.4), (5, None)]:
        ckpt.save(step, _state(), {}, metric=metric)
    assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2 and ckpt.latest_step() == 5
    ckpt.close()
    # A fresh manager on the same folder sees the same checkpoints and best.
    again = Checkpointer(str(tmp_path / "c"), keep=2)
    assert again.best_step() == 2
    again.close()


def test_mismatched_checkpoints_are_refused(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"))
    ckpt.save(1, _state(), {"model": "lenet5"})
    with pytest.raises(
        CheckpointError,
        match=r"was written for model 'lenet5', but this run "
        r"has model 'resnet18'",
    ):
        ckpt.restore(1, _state(), expect={"model": "resnet18"})
    wrong_shape = dict(_state(), w=jnp.zeros((3, 5)))
    with pytest.raises(
        CheckpointError,
        match=r"\['w'\] must have shape/dtype \[\[3, 5\], "
        r"'float32'\], got \[\[3, 4\], 'float32'\]",
    ):
        ckpt.restore(1, wrong_shape)
    extra = dict(_state(), extra=jnp.zeros(2))
    with pytest.raises(
        CheckpointError,
        match=r"state entries must be the same, got 1 missing "
        r"\(e.g. \[\"\['extra'\]\"\]\)",
    ):
        ckpt.restore(1, extra)
    ckpt.close()


def _data_files(step_dir):
    state_dir = os.path.join(step_dir, "state")
    return [
        os.path.join(r, f)
        for r, _, fs in os.walk(state_dir)
        for f in fs
        if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep or r.endswith(os.sep + "d")
    ]


def test_corrupt_checkpoints_are_refused(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"))
    ckpt.save(1, _state(), {})
    ckpt.save(2, _state(), {})
    files = _data_files(str(tmp_path / "c" / "1"))
    assert files
    for f in files:  # damage every array chunk of step 1
        data = bytearray(open(f, "rb").read())
        for i in range(len(data) // 2, len(data)):
            data[i] ^= 0xFF
        open(f, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint .*1 is corrupt"):
        ckpt.restore(1, _state())
    # A damaged JSON record is refused before any array is read.
    meta_file = tmp_path / "c" / "2" / "meta" / "metadata"
    meta_file.write_text("{not json")
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint .*2 is corrupt or unreadable: its "
        r"JSON record",
    ):
        ckpt.restore(2, _state())
    meta_file.write_text(json.dumps({"format": 999}))
    with pytest.raises(CheckpointError, match=r"not a cnn_jax checkpoint"):
        ckpt.read_meta(2)
    for f in files:
        os.remove(f)
    with pytest.raises(CheckpointError, match=r"1 is corrupt or unreadable: its arrays"):
        ckpt.restore(1, _state())
    ckpt.close()


def test_a_write_cut_off_never_shows_as_a_checkpoint(tmp_path):
    # orbax writes into a temporary folder and renames it when complete: a folder
    # left by a killed process is not a step.
    ckpt = Checkpointer(str(tmp_path / "c"))
    ckpt.save(1, _state(), {})
    ckpt.close()
    partial = tmp_path / "c" / "2.orbax-checkpoint-tmp-123"
    (partial / "state").mkdir(parents=True)
    again = Checkpointer(str(tmp_path / "c"))
    assert again.all_steps() == [1] and again.latest_step() == 1
    again.close()


def test_checkpointer_argument_error(tmp_path):
    with pytest.raises(ValueError, match=r"Checkpointer: keep must be an int >= 1, got 0"):
        Checkpointer(str(tmp_path), keep=0)


# ---------------------------------------------------------------- through fit


class Tiny(nnx.Module):
    """Conv -> BatchNorm -> ReLU -> dropout -> mean -> Linear: every kind of state."""

    def __init__(self, rngs, width=4):
        self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.fc = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(x.mean((1, 2))))


def _data(rng, n=48):
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].mean((1, 2, 3)) > 0).astype(np.int32) + (x[:, 3:].mean((1, 2, 3)) > 0)
    return Dataset(x, y.astype(np.int32), 3, "fake"), Dataset(
        x[:16], y[:16].astype(np.int32), 3, "fake"
    )


def _config(out, **kw):
    base = dict(
        epochs=2,
        batch_size=8,
        eval_batch_size=16,
        lr=1e-2,
        warmup=0.5,
        num_devices=1,
        quiet=True,
        out=None if out is None else str(out),
        keep_checkpoints=2,
        checkpoint_every=0.0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _leaves(model):
    return [
        np.asarray(x)
        for x in jax.tree.leaves(nnx.state(model))
        if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    ]


@pytest.mark.parametrize("stop_at", [4, 6])  # mid-epoch, and right at the epoch's end
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, rng, stop_at):
    train, test = _data(rng)  # 6 steps per epoch, 12 in all
    full = Tiny(nnx.Rngs(0))
    h_full = fit(full, train, test, _config(tmp_path / "full", augment=True))

    def ctrl_c(step):
        if step == stop_at:  # a real signal: the guard turns it into a stop after this step
            os.kill(os.getpid(), signal.SIGINT)

    part = Tiny(nnx.Rngs(0))
    h_part = fit(part, train, test, _config(tmp_path / "part", augment=True), on_step=ctrl_c)
    assert h_part.interrupted and h_part.step == stop_at and h_part.signal == signal.SIGINT
    assert stop_at in Checkpointer(str(tmp_path / "part" / "checkpoints")).all_steps()
    resumed = Tiny(nnx.Rngs(1))  # different init: everything must come from the checkpoint
    h_res = fit(resumed, train, test, _config(tmp_path / "part", augment=True, resume=True))
    assert not h_res.interrupted and h_res.step == 12
    for a, b in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in h_full.epochs] == [
        [r[k] for k in keys] for r in h_res.epochs
    ]
    with open(tmp_path / "part" / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, rng):
    train, test = _data(rng)

    def poison(step):
        if step == 6:  # end of epoch 1: every later batch is NaN
            train.images[:] = np.nan

    model = Tiny(nnx.Rngs(0))
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss became non-finite \(nan\) in epoch 2 .*"
        r"last good checkpoint is .*checkpoints/6",
    ):
        fit(model, train, test, _config(tmp_path / "nan"), on_step=poison)
    ckpt = Checkpointer(str(tmp_path / "nan" / "checkpoints"))
    assert ckpt.all_steps() == [6]
    trainer = Trainer(Tiny(nnx.Rngs(0)), _config(None), 6, make_mesh(1))
    carry, meta = ckpt.restore(6, trainer.initial_state())
    ckpt.close()
    assert meta["epoch"] == 1 and np.isfinite(meta["metric"]) and int(carry["step"]) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(carry["params"]))


def test_fit_refuses_damaged_or_foreign_checkpoint_on_resume(tmp_path, rng):
    train, test = _data(rng)
    fit(Tiny(nnx.Rngs(0)), train, test, _config(tmp_path / "run", epochs=1))
    with pytest.raises(
        CheckpointError,
        match=r"does not match this model: \['params'\]"
        r"\['bn'\]\['bias'\].* must have shape",
    ):
        fit(
            Tiny(nnx.Rngs(0), width=5),
            train,
            test,
            _config(tmp_path / "run", epochs=1, resume=True),
        )
    with pytest.raises(CheckpointError, match=r"out must not hold checkpoints unless resuming"):
        fit(Tiny(nnx.Rngs(0)), train, test, _config(tmp_path / "run", epochs=1))
    for f in _data_files(str(tmp_path / "run" / "checkpoints" / "6")):
        open(f, "wb").write(b"\0" * 7)
    with pytest.raises(CheckpointError, match=r"corrupt"):
        fit(Tiny(nnx.Rngs(0)), train, test, _config(tmp_path / "run", epochs=1, resume=True))
