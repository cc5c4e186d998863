"""The training loop: smoke step, one compilation, optimiser maths, bf16, outputs."""

import gc
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cnn_jax.train import (
    ConfigError,
    Dataset,
    TrainConfig,
    _hooks,
    _step,
    fit,
    make_optimizer,
    make_schedule,
)
from cnn_jax.train._sharding import make_mesh

SEEN_DTYPES = []


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()  # let orbax's leftovers go inside the test that made them


class Tiny(nnx.Module):
    """Conv -> BatchNorm -> ReLU -> dropout -> mean -> Linear."""

    def __init__(self, rngs, width=4, classes=3, dtype=None):
        self.conv = nnx.Conv(1, width, (3, 3), dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(width, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.fc = nnx.Linear(width, classes, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        SEEN_DTYPES.append(x.dtype)  # runs while tracing only
        x = nnx.relu(self.bn(self.conv(x)))
        SEEN_DTYPES.append(x.dtype)
        x = self.fc(self.drop(x.mean((1, 2))))
        SEEN_DTYPES.append(x.dtype)
        return x


def _data(rng, n=48, size=6):
    x = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    y = (x[:, : size // 2].mean((1, 2, 3)) > 0).astype(np.int32) + (
        x[:, size // 2 :].mean((1, 2, 3)) > 0
    )
    return (
        Dataset(x, y.astype(np.int32), 3, "fake"),
        Dataset(x[:16].copy(), y[:16].astype(np.int32), 3, "fake"),
    )


def _leaves(tree):
    return [
        np.asarray(x)
        for x in jax.tree.leaves(tree)
        if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    ]


def test_one_step_smoke_on_fake_data(rng):
    train, test = _data(rng, n=8)
    model = Tiny(nnx.Rngs(0))
    before = _leaves(nnx.state(model, nnx.Param))
    history = fit(model, train, test, TrainConfig.quick(batch_size=8, num_devices=1))
    assert history.step == 1 and len(history.epochs) == 1
    record = history.epochs[0]
    assert math.isfinite(record["train_loss"]) and 0 <= record["test_accuracy"] <= 1
    after = _leaves(nnx.state(model, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert model.bn.use_running_average  # left in eval mode
    assert history.summary["num_params"] == sum(a.size for a in after)


def test_train_step_traced_once_for_all_batches_and_epochs(rng):
    train, test = _data(rng)
    cfg = TrainConfig(
        epochs=3, batch_size=8, eval_batch_size=12, num_devices=1, quiet=True, lr=7e-3
    )  # a recipe no other test uses: nothing cached
    before = dict(_step.TRACE_COUNTS)
    history = fit(Tiny(nnx.Rngs(0)), train, test, cfg)
    assert history.step == 18  # 6 batches x 3 epochs
    # 18 train steps and 3 x 2 eval batches (16 examples padded to 12 + 12): one trace each.
    assert history.trace_counts == {"train_step": 1, "eval_step": 1}
    assert _step.TRACE_COUNTS["train_step"] - before["train_step"] == 1


def test_training_learns_and_batchnorm_statistics_move(rng):
    train, test = _data(rng, n=96)
    model = Tiny(nnx.Rngs(0), width=8)
    cfg = TrainConfig(
        epochs=4, batch_size=16, eval_batch_size=16, num_devices=1, quiet=True, lr=3e-2, warmup=0.0
    )
    history = fit(model, train, test, cfg)
    losses = [r["train_loss"] for r in history.epochs]
    assert losses[-1] < losses[0]
    assert not np.allclose(np.asarray(model.bn.mean[...]), 0.0)  # running stats updated
    # Eval mode uses the running statistics: the reported test accuracy is reproducible
    # from the returned model with a plain forward pass.
    logits = model(jnp.asarray(test.images))
    acc = float((np.argmax(np.asarray(logits), -1) == test.labels).mean())
    assert acc == pytest.approx(history.epochs[-1]["test_accuracy"])


def test_adamw_schedule_and_decay_match_hand_derivation():
    # Constant gradients make every Adam step exactly -lr_t * sign(g) (bias-corrected
    # m / sqrt(v) = 1), plus decoupled decay -lr_t * wd * p on matrices only.
    cfg = TrainConfig(
        epochs=2, lr=0.1, warmup=0.5, schedule="cosine", weight_decay=0.5, optimizer="adamw"
    )
    steps_per_epoch = 4  # total 8 steps, warm-up 2
    tx = make_optimizer(cfg, steps_per_epoch)
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    grads = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    state = tx.init(params)

    def lr(t):  # linear warm-up 0 -> 0.1 over 2 steps, then cosine to 0 over 6
        return 0.1 * t / 2 if t < 2 else 0.05 * (1 + math.cos(math.pi * (t - 2) / 6))

    w, b = 2.0, 2.0
    for t in range(8):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        w = w - lr(t) * (1.0 / (1.0 + 1e-8) + 0.5 * w)
        b = b - lr(t) * (1.0 / (1.0 + 1e-8))
        np.testing.assert_allclose(params["w"], w, rtol=1e-5)
        np.testing.assert_allclose(params["b"], b, rtol=1e-5)
        # The logged lr reads the optimiser's own schedule object.
        assert float(make_schedule(cfg, steps_per_epoch)(t)) == pytest.approx(lr(t))


def test_sgd_constant_schedule_matches_hand_derivation():
    # Nesterov momentum 0.9: trace_t = g + 0.9 trace_{t-1}; update = -lr (g + 0.9 trace_t).
    cfg = TrainConfig(
        epochs=1, lr=0.1, warmup=0.0, schedule="constant", weight_decay=0.0, optimizer="sgd"
    )
    tx = make_optimizer(cfg, 3)
    params = {"w": jnp.zeros((2, 2))}
    state = tx.init(params)
    trace, w = 0.0, 0.0
    for _ in range(3):
        updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
        params = optax.apply_updates(params, updates)
        trace = 1.0 + 0.9 * trace
        w -= 0.1 * (1.0 + 0.9 * trace)
        np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state(rng):
    train, test = _data(rng, n=16)
    model = Tiny(nnx.Rngs(0), dtype=jnp.bfloat16)
    SEEN_DTYPES.clear()
    cfg = TrainConfig.quick(batch_size=8, num_devices=1, dtype="bfloat16")
    batch = {
        "image": jnp.asarray(train.images[:8]),
        "label": jnp.asarray(train.labels[:8]),
        "index": jnp.arange(8),
    }
    trainer = _step.Trainer(model, cfg, 2, make_mesh(1))
    carry = trainer.train_step(trainer.initial_state(), batch)
    assert SEEN_DTYPES == [jnp.bfloat16] * 3  # input, features and logits all bf16
    for tree in (carry["params"], carry["opt_state"], carry["rest"]):
        for x in jax.tree.leaves(tree):
            if jnp.issubdtype(x.dtype, jnp.floating):
                assert x.dtype == jnp.float32
    assert np.isfinite(float(carry["sums"][0]))
    # The bf16 step follows the f32 step closely (same data, same init).
    model32 = Tiny(nnx.Rngs(0))
    t32 = _step.Trainer(model32, cfg.replace(dtype="float32"), 2, make_mesh(1))
    c32 = t32.train_step(t32.initial_state(), batch)
    np.testing.assert_allclose(float(carry["sums"][0]), float(c32["sums"][0]), rtol=3e-2)


def test_outputs_metrics_summary_and_plots(tmp_path, rng):
    train, test = _data(rng)
    cfg = TrainConfig(
        epochs=2, batch_size=8, num_devices=1, quiet=True, out=str(tmp_path), eval_batch_size=16
    )
    history = fit(Tiny(nnx.Rngs(0)), train, test, cfg, run_info={"model": "tiny"})
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == history.epochs
    summary = json.load(open(tmp_path / "summary.json"))
    for key in (
        "test_accuracy",
        "test_loss",
        "epochs",
        "train_time_s",
        "images_per_s",
        "model",
        "dataset",
        "num_params",
        "devices",
    ):
        assert key in summary
    assert summary["model"] == "tiny" and summary["dataset"] == "fake"
    assert summary["epochs"] == 2 and summary["devices"] == 1
    assert summary["test_accuracy"] == lines[-1]["test_accuracy"]
    for name in ("curves.png", "filters.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "quiet, tty, enabled", [(True, True, False), (False, False, False), (False, True, True)]
)
def test_progress_bar_only_on_a_terminal_and_not_quiet(monkeypatch, quiet, tty, enabled):
    # Both cases are forced, so the test holds under `pytest -s` in a terminal too.
    monkeypatch.setattr(_hooks.sys.stderr, "isatty", lambda: tty, raising=False)
    assert _hooks.Progress(quiet=quiet).enabled is enabled


def test_load_run_without_a_checkpoint_says_so(tmp_path):
    from cnn_jax.train import CheckpointError, load_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps(
            {
                "config": TrainConfig().to_dict(),
                "model": "digits_cnn",
                "dataset": "digits",
                "task": "classify",
                "num_classes": 10,
                "image_shape": [8, 8, 1],
                "class_names": [str(i) for i in range(10)],
            }
        )
    )
    with pytest.raises(CheckpointError, match=r"load_run: no checkpoint in .*checkpoints"):
        load_run(str(out))
    with pytest.raises(
        ValueError,
        match=r"load_run: which must be 'best' or 'latest', got "
        r"'first'",
    ):
        load_run(str(out), which="first")


def test_fit_errors(rng):
    train, test = _data(rng, n=8)
    with pytest.raises(
        ValueError,
        match=r"fit: batch_size must be divisible by the number of "
        r"devices \(8\), got 12",
    ):
        fit(Tiny(nnx.Rngs(0)), train, test, TrainConfig(batch_size=12, quiet=True))
    with pytest.raises(
        ValueError,
        match=r"fit: batch_size must be <= the number of training "
        r"examples of 'fake' \(8\), got 16; pass a smaller "
        r"--batch-size",
    ):
        fit(Tiny(nnx.Rngs(0)), train, test, TrainConfig(batch_size=16, num_devices=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "vgg"}, r"TrainConfig: model must be one of .*, got 'vgg'"),
        ({"dataset": "imagenet21k"}, r"TrainConfig: dataset must be one of .*, got 'imagenet21k'"),
        ({"optimizer": "lion"}, r"TrainConfig: optimizer must be one of .*, got 'lion'"),
        ({"schedule": "step"}, r"TrainConfig: schedule must be one of .*, got 'step'"),
        ({"dtype": "float16"}, r"TrainConfig: dtype must be one of .*, got 'float16'"),
        ({"epochs": 0}, r"TrainConfig: epochs \(--epochs\) must be a positive int, got 0"),
        (
            {"batch_size": 2.5},
            r"TrainConfig: batch_size \(--batch-size\) must be a positive int, got 2.5",
        ),
        (
            {"num_devices": 0},
            r"TrainConfig: num_devices \(--devices\) must be None or a positive int, got 0",
        ),
        ({"lr": 0.0}, r"TrainConfig: lr \(--lr\) must be > 0 and finite, got 0.0"),
        (
            {"warmup": -1.0},
            r"TrainConfig: warmup \(--warmup\) must be >= 0 epochs and finite, got -1.0",
        ),
        (
            {"weight_decay": -0.1},
            r"TrainConfig: weight_decay \(--weight-decay\) must be >= 0 and finite, got -0.1",
        ),
        ({"resume": True}, r"TrainConfig: resume must come with an out folder, got out=None"),
        ({"seed": -1}, r"TrainConfig: seed \(--seed\) must be an int >= 0, got -1"),
        ({"lr": float("nan")}, r"TrainConfig: lr \(--lr\) must be > 0 and finite, got nan"),
        (
            {"checkpoint_every": -1.0},
            r"TrainConfig: checkpoint_every \(--checkpoint-every\) must be >= 0 seconds",
        ),
        (
            {"dataset": "shapes", "model": "lenet5"},
            r"TrainConfig: model must suit the 'shapes' data set's task \(segment\), got 'lenet5' "
            r"\(task classify\); e.g. --model unet",
        ),
        (
            {"model": "unet"},
            r"model must suit the 'digits' data set's task \(classify\), got "
            r"'unet'",
        ),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_config_defaults_and_quick_variant():
    assert TrainConfig().model_name == "digits_cnn"
    assert TrainConfig(dataset="shapes").model_name == "unet"
    assert TrainConfig(dataset="mnist").model_name == "lenet5"
    assert TrainConfig(dataset="shapes").task == "segment"
    config = TrainConfig(epochs=3, out="x")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(
        ValueError,
        match=r"TrainConfig: fields must be among .*, got unknown "
        r"\['colour'\]",
    ):
        TrainConfig.from_dict(dict(config.to_dict(), colour="red"))
    quick = TrainConfig.quick(lr=0.5)
    assert quick.epochs == 1 and quick.quiet and quick.lr == 0.5 and quick.limit == 256


def test_filter_mosaic_places_each_scaled_kernel_in_its_tile():
    from cnn_jax.train._plots import filter_mosaic

    kernel = np.zeros((2, 2, 1, 3))
    kernel[..., 0, 0] = [[0.0, 2.0], [4.0, 8.0]]  # scaled to [0, 1] on its own
    kernel[..., 0, 1] = [[5.0, 5.0], [5.0, 5.0]]  # constant: all zeros after scaling
    kernel[..., 0, 2] = [[1.0, 0.0], [0.0, 1.0]]
    m = filter_mosaic(kernel)  # 3 kernels: a 2x2 grid of 2x2 tiles, 1-pixel white borders
    assert m.shape == (7, 7)
    np.testing.assert_allclose(m[1:3, 1:3], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(m[1:3, 4:6], 0.0, atol=1e-9)
    np.testing.assert_allclose(m[4:6, 1:3], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(m[4:6, 4:6], 1.0)  # the unused tile stays white
    np.testing.assert_array_equal(m[0], 1.0)
