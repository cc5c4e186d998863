"""Data parallelism on 8 simulated CPU devices (conftest sets the XLA flag)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.train import (
    Dataset,
    TrainConfig,
    data_sharded,
    fit,
    initialize_distributed,
    local_rows,
    make_mesh,
    replicated,
    shard_batch,
)
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
    cfg = TrainConfig(
        batch_size=16, num_devices=num_devices, lr=1e-2, warmup=0.0, augment=True, quiet=True
    )
    trainer = Trainer(model, cfg, n_steps, make_mesh(num_devices))
    carry = trainer.initial_state()
    for i in range(n_steps):
        rows = slice(16 * i, 16 * (i + 1))
        batch = shard_batch(
            {
                "image": images[rows],
                "label": labels[rows],
                "index": np.arange(16 * i, 16 * (i + 1), dtype=np.int32),
            },
            trainer.mesh,
        )
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
        cfg = TrainConfig(
            epochs=2,
            batch_size=16,
            eval_batch_size=16,
            num_devices=n,
            lr=1e-2,
            warmup=0.0,
            augment=True,
            seed=3,
            quiet=True,
        )
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
    with pytest.raises(
        ValueError,
        match=r"make_mesh: num_devices must be an int in \[1, 8\], "
        r"got 9",
    ):
        make_mesh(9)
    with pytest.raises(
        ValueError,
        match=r"shard_batch: batch size must be divisible by the "
        r"number of devices \(8\), got 6",
    ):
        shard_batch(np.zeros((6, 2)), make_mesh())
    with pytest.raises(
        ValueError,
        match=r"initialize_distributed: coordinator, num_processes "
        r"and process_id must be given together",
    ):
        initialize_distributed("localhost:1234")
    with pytest.raises(
        ValueError,
        match=r"process_id must be in \[0, num_processes\), got "
        r"process_id=2, num_processes=2",
    ):
        initialize_distributed("localhost:1234", 2, 2)


# ----------------------------------------------------------------- multi-process flags

CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "OMPI_MCA_orte_hnp_uri",
    "KUBERNETES_SERVICE_HOST",
    "TPU_SKIP_MDS_QUERY",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--coordinator", "localhost:1234"],
            "initialize_distributed: coordinator, num_processes and process_id must be given "
            "together (missing --num-processes, --process-id), got coordinator='localhost:1234', "
            "num_processes=None, process_id=None",
        ),
        (
            ["--process-id", "1"],
            "initialize_distributed: coordinator, num_processes and process_id must be given "
            "together (missing --coordinator, --num-processes), got coordinator=None, "
            "num_processes=None, process_id=1",
        ),
        (
            ["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "5"],
            "initialize_distributed: process_id must be in [0, num_processes), got process_id=5, "
            "num_processes=2",
        ),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "initialize_distributed: coordinator must be HOST:PORT, got 'localhost'",
        ),
        (
            ["--distributed"],
            "--distributed: no cluster environment found (supported: SLURM, seen from "
            "SLURM_JOB_ID; Open MPI's mpirun, OMPI_MCA_orte_hnp_uri; Kubernetes indexed Jobs with "
            "the kubernetes package; Cloud TPU VMs); elsewhere pass --coordinator HOST:PORT "
            "--num-processes N --process-id I to every process",
        ),
        (
            ["--distributed", "--process-id", "0"],
            "initialize_distributed: --distributed finds the coordinator, the process count and "
            "the process id in the cluster's environment; do not also pass --coordinator, "
            "--num-processes or --process-id (got coordinator=None, num_processes=None, "
            "process_id=0)",
        ),
    ],
    ids=[
        "coordinator-only",
        "process-id-only",
        "id-out-of-range",
        "no-port",
        "distributed-outside-a-cluster",
        "distributed-and-flags",
    ],
)
def test_multi_process_flag_errors_are_one_line(tmp_path, capsys, monkeypatch, flags, message):
    from cnn_jax.cli import main

    for name in CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *flags]) == 1
    assert capsys.readouterr().err == f"cnn-jax train: error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--connect-timeout", "--heartbeat-timeout"])
def test_timeouts_must_be_positive(flag, capsys):
    from cnn_jax.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", flag, "0"])
    assert e.value.code == 2
    assert f"{flag}: must be a positive float, got '0'" in capsys.readouterr().err


def test_initialize_distributed_timeouts_are_checked():
    with pytest.raises(
        ValueError,
        match=r"initialize_distributed: heartbeat_timeout must be "
        r"a number of seconds in \(0, 1e6\), got nan",
    ):
        initialize_distributed("localhost:1", 2, 0, heartbeat_timeout=float("nan"))


# ----------------------------------------------------------------- config agreement


class _Store:
    """The runtime client's key-value store, in memory."""

    def __init__(self):
        self.data = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        assert allow_overwrite or key not in self.data
        self.data[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
        if key in self.data:
            return self.data[key]
        raise RuntimeError("DEADLINE_EXCEEDED")


class _Ended:
    def __init__(self, ended):
        self.ended = set(ended)


def _agree_as_two_processes(monkeypatch, config0, config1, data0, data1):
    """Process 1 publishes (and finds that process 0 ended), then process 0 compares:
    the errors each raises, with the real protocol on an in-memory store."""
    from cnn_jax.train import _agree

    store = _Store()
    errors = []
    for pid, config, data, ended in ((1, config1, data1, {0}), (0, config0, data0, set())):
        monkeypatch.setattr(
            _agree,
            "_JOB",
            _agree._Job(client=store, process_id=pid, num_processes=2, watch=_Ended(ended)),
        )
        try:
            _agree.agree_across_processes(config, *data)
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    return errors


def _digits(n, value=0.5):
    images = np.full((n, 8, 8, 1), value, np.float32)
    return Dataset(images, np.arange(n, dtype=np.int32) % 3, 3, "fake")


def test_processes_started_differently_are_refused_naming_the_first_field(monkeypatch):
    data = (_digits(8), _digits(4))
    errors = _agree_as_two_processes(
        monkeypatch, TrainConfig(out="r"), TrainConfig(out="r", lr=0.5, seed=3), data, data
    )
    assert errors == [
        "process 0 ended before comparing its flags with the other processes' (see its error)",
        "process 1 was started with lr=0.5, process 0 with lr=0.003: every process of a job "
        "must be started with the same flags",
    ]
    errors = _agree_as_two_processes(
        monkeypatch, TrainConfig(out="a"), TrainConfig(out="b"), data, data
    )
    assert errors[1] == (
        "process 1 was started with out='b', process 0 with out='a': every "
        "process of a job must be started with the same flags"
    )


def test_exempt_fields_may_differ_but_the_data_may_not(monkeypatch):
    data = (_digits(8), _digits(4))
    errors = _agree_as_two_processes(
        monkeypatch,
        TrainConfig(out="r"),
        TrainConfig(out="r", quiet=True, workers=3, data_dir="/elsewhere"),
        data,
        data,
    )
    assert errors[1] is None
    # one pixel value of one training image differs
    other = _digits(8)
    other.images[5, 2, 3, 0] = 0.25
    errors = _agree_as_two_processes(
        monkeypatch, TrainConfig(), TrainConfig(), data, (other, data[1])
    )
    assert errors[1].startswith(
        "process 1 read a different data set from process 0's (8 "
        "examples of shape (8, 8, 1), SHA-1 "
    )
    assert errors[1].endswith(": every process of a job must read the same data")


def test_one_process_agrees_with_itself():
    from cnn_jax.train._agree import agree_across_processes

    assert agree_across_processes(TrainConfig(lr=0.5), _digits(4)) is None
