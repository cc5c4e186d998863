"""Data parallelism on 8 simulated CPU devices (conftest sets the XLA flag)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.train import (Dataset, TrainConfig, data_sharded, fit, initialize_distributed,
                           local_rows, make_mesh, replicated, shard_batch)
from cnn_jax.train._loop import _evaluate
from cnn_jax.train._step import Trainer


class Tiny(nnx.Module):
    def __init__(self, rngs, in_channels=1):
        # No bias before BatchNorm: its true gradient is 0 and Adam would amplify rounding.
        self.conv = nnx.Conv(in_channels, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))


def _steps(num_devices, images, labels, n_steps=3):
    model = Tiny(nnx.Rngs(0))
    cfg = TrainConfig(batch_size=16, num_devices=num_devices, lr=1e-2, warmup=0.0,
                      augment=True, quiet=True)
    trainer = Trainer(model, cfg, n_steps, make_mesh(num_devices))
    carry = trainer.initial_state()
    for i in range(n_steps):
        rows = slice(16 * i, 16 * (i + 1))
        batch = shard_batch({"image": images[rows], "label": labels[rows],
                             "index": np.arange(16 * i, 16 * (i + 1), dtype=np.int32)},
                            trainer.mesh)
        carry = trainer.train_step(carry, batch)
    return trainer, carry, batch


def test_sharded_step_equals_single_device_step(rng):
    assert len(jax.devices()) == 8
    images = rng.normal(size=(48, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 48).astype(np.int32)
    t8, c8, batch8 = _steps(8, images, labels)
    t1, c1, _ = _steps(1, images, labels)
    # The batch really is split 2 rows per device; the parameters are full copies.
    assert batch8["image"].sharding.is_equivalent_to(data_sharded(t8.mesh), 4)
    assert {s.data.shape[0] for s in batch8["image"].addressable_shards} == {2}
    kernel = c8["params"]["conv"]["kernel"][...]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.is_fully_replicated
    # Same maths: BatchNorm statistics and gradients are over the global batch.
    for a, b in zip(jax.tree.leaves(c8["params"]), jax.tree.leaves(c1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    for a, b in zip(jax.tree.leaves(c8["rest"]), jax.tree.leaves(c1["rest"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(c8["sums"]), np.asarray(c1["sums"]), rtol=1e-5)
    # Evaluation pads a ragged last batch and shards it too.
    data = Dataset(images[:13], labels[:13], 3, "fake")
    e8 = _evaluate(t8, c8, data, 8)
    e1 = _evaluate(t1, c1, data, 8)
    assert e8["accuracy"] == pytest.approx(e1["accuracy"])
    assert e8["loss"] == pytest.approx(e1["loss"], rel=1e-5)


def test_same_seed_same_run_on_1_and_8_devices_with_augmentation(rng):
    # Augmentation draws per example from (seed, epoch, example index), so splitting
    # the batch over devices changes nothing but float summation order.
    images = rng.normal(size=(64, 6, 6, 3)).astype(np.float32)  # RGB: shifts and flips
    labels = rng.integers(0, 3, 64).astype(np.int32)
    train = Dataset(images[:48], labels[:48], 3, "fake")
    test = Dataset(images[48:], labels[48:], 3, "fake")
    runs = []
    for n in (1, 8):
        cfg = TrainConfig(epochs=2, batch_size=16, eval_batch_size=16, num_devices=n, lr=1e-2,
                          warmup=0.0, augment=True, seed=3, quiet=True)
        runs.append(fit(Tiny(nnx.Rngs(0), in_channels=3), train, test, cfg).epochs)
    for r1, r8 in zip(*runs):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert r8[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-6), key


def test_local_rows_of_a_single_process_are_the_whole_batch():
    assert local_rows(16, make_mesh()) == slice(0, 16)
    assert local_rows(4, make_mesh(2)) == slice(0, 4)


def test_mesh_and_batch_helpers():
    mesh = make_mesh()
    assert mesh.shape == {"data": 8} and mesh.axis_names == ("data",)
    assert make_mesh(2).shape == {"data": 2}
    x = shard_batch(np.arange(16.0).reshape(8, 2), mesh)
    np.testing.assert_array_equal(np.asarray(x), np.arange(16.0).reshape(8, 2))
    r = jax.device_put(jnp.ones(3), replicated(mesh))
    assert r.sharding.is_fully_replicated
    assert initialize_distributed() is False  # single host: nothing to do


def test_sharding_errors():
    with pytest.raises(ValueError, match=r"make_mesh: num_devices must be an int in \[1, 8\], "
                                         r"got 9"):
        make_mesh(9)
    with pytest.raises(ValueError, match=r"shard_batch: batch size must be divisible by the "
                                         r"number of devices \(8\), got 6"):
        shard_batch(np.zeros((6, 2)), make_mesh())
    with pytest.raises(ValueError, match=r"initialize_distributed: coordinator, num_processes "
                                         r"and process_id must be given together"):
        initialize_distributed("localhost:1234")
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\), got "
                                         r"process_id=2, num_processes=2"):
        initialize_distributed("localhost:1234", 2, 2)
