"""The ``cnn-jax`` command end to end on tiny data, each output against an independent
computation (numpy on the restored model), every user error as one line."""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.cli import build_parser, main
from cnn_jax.train import MODELS, load_images, load_run, register_model
from cnn_jax.train._experiment import prepare_data

TINY = [
    "--limit",
    "96",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--devices",
    "1",
    "--quiet",
    "--checkpoint-every",
    "0",
]
KEYS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    return out


def _records(out):
    return [[r[k] for k in KEYS] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))]


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_train_writes_every_output(digits_run):
    files = set(os.listdir(digits_run))
    assert {
        "run.json",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "filters.png",
        "checkpoints",
    } <= files
    summary = json.load(open(os.path.join(digits_run, "summary.json")))
    assert summary["model"] == "digits_cnn" and summary["dataset"] == "digits"
    assert summary["epochs"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    # DigitsCNN on 8x8x1, width 32, by hand: conv1 9*1*32+32, conv2 9*32*64+64,
    # fc (4*4*64)*10+10.
    assert summary["num_params"] == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (1024 * 10 + 10)
    # 96 / 32 = 3 steps per epoch; --checkpoint-every 0 saves both epochs (--keep 2).
    assert sorted(os.listdir(os.path.join(digits_run, "checkpoints"))) == ["3", "6"]
    run = json.load(open(os.path.join(digits_run, "run.json")))
    assert run["config"]["epochs"] == 2 and run["config"]["resume"] is False
    assert run["task"] == "classify" and run["image_shape"] == [8, 8, 1]


def test_evaluate_equals_a_numpy_computation_on_the_restored_model(digits_run, capsys):
    assert main(["evaluate", "--out", digits_run, "--checkpoint", "latest"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, run = load_run(digits_run, which="latest")
    _, test = prepare_data(run["config"])
    logits = np.asarray(model(jnp.asarray(test.images)), np.float64)
    p = _softmax(logits)
    loss = -np.log(p[np.arange(len(test)), test.labels]).mean()
    acc = (logits.argmax(-1) == test.labels).mean()
    assert result["examples"] == 96 and result["step"] == 6
    assert result["test_accuracy"] == pytest.approx(acc)
    assert result["test_loss"] == pytest.approx(loss, rel=1e-5)
    # and the epoch record the training loop wrote agrees with both
    assert _records(digits_run)[-1][5] == pytest.approx(acc)


def test_predict_prints_softmax_of_the_eval_mode_model(digits_run, tmp_path, capsys):
    from PIL import Image

    train, _ = prepare_data(load_run(digits_run)[1]["config"])
    paths = []
    for i in range(3):
        path = str(tmp_path / f"d{i}.png")
        Image.fromarray((train.images[i, ..., 0] * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    assert main(["predict", *paths, "--out", digits_run, "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    model, run = load_run(digits_run)
    images = load_images(paths, tuple(run["image_shape"]))
    want = _softmax(np.asarray(model(jnp.asarray(images)), np.float64))
    assert len(lines) == 3
    for path, line, p in zip(paths, lines, want):
        name, first, second = line.split("\t")
        order = np.argsort(-p, kind="stable")
        assert name == path
        assert first.split() == [str(order[0]), f"{p[order[0]]:.4f}"]
        assert second.split() == [str(order[1]), f"{p[order[1]]:.4f}"]


def test_predict_pads_the_last_batch_and_compiles_once(digits_run):
    from cnn_jax.train import predict

    model, _ = load_run(digits_run)
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
    want = _softmax(np.asarray(model(jnp.asarray(x)), np.float64))
    np.testing.assert_allclose(predict(model, x, batch_size=2), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(model, x[:1], batch_size=2), want[:1], rtol=1e-5, atol=1e-6)


def test_resume_takes_the_config_from_run_json_and_continues(digits_run, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(digits_run, out)
    # Pretend the run stopped after epoch 1: drop the epoch-2 checkpoint and record.
    shutil.rmtree(os.path.join(out, "checkpoints", "6"))
    first = open(os.path.join(out, "metrics.jsonl")).read().splitlines()[0]
    open(os.path.join(out, "metrics.jsonl"), "w").write(first + "\n")
    assert main(["train", "--out", out, "--resume"]) == 0  # every flag from run.json
    assert _records(out) == _records(digits_run)
    # Raising --epochs continues a finished run; the first two epochs stay as they were.
    assert main(["train", "--out", out, "--resume", "--epochs", "3", "--quiet"]) == 0
    assert _records(out)[:2] == _records(digits_run) and len(_records(out)) == 3


def test_resume_of_a_finished_run_leaves_it_untouched(digits_run, capsys):
    before = {
        name: open(os.path.join(digits_run, name), "rb").read()
        for name in ("summary.json", "metrics.jsonl", "run.json")
    }
    capsys.readouterr()
    assert main(["train", "--out", digits_run, "--resume"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"{digits_run}: already complete (2 epochs); raise --epochs to continue"
    )
    for name, data in before.items():
        assert open(os.path.join(digits_run, name), "rb").read() == data, name
    assert sorted(os.listdir(os.path.join(digits_run, "checkpoints"))) == ["3", "6"]


def test_resume_refuses_a_flag_that_would_make_another_run(digits_run, capsys):
    assert main(["train", "--out", digits_run, "--resume", "--model", "lenet5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnn-jax train: error: cannot resume")
    assert "with model='lenet5': the run was started with model='digits_cnn'" in err
    assert main(["train", "--out", digits_run, "--resume", "--lr", "0.1"]) == 1
    assert "with lr=0.1: the run was started with lr=0.003" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", digits_run]) == 1
    assert "continue it with --resume, or pass another --out" in capsys.readouterr().err


def test_sigint_saves_exits_130_and_resumes_identically(digits_run, tmp_path, monkeypatch, capsys):
    from cnn_jax.train import _loop

    real = _loop._Batches.train
    calls = []

    def signal_on_fifth_batch(self, order, i):
        calls.append(1)
        if len(calls) == 5:  # epoch 2, step 5: the guard stops after it
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, order, i)

    out = str(tmp_path / "interrupted")
    monkeypatch.setattr(_loop._Batches, "train", signal_on_fifth_batch)
    assert main(["train", *TINY, "--out", out]) == 130
    captured = capsys.readouterr()
    assert "SIGINT: stopped at step 5; saved" in captured.err
    assert f"continue with: cnn-jax train --out {out} --resume" in captured.out
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["3", "5"]
    monkeypatch.setattr(_loop._Batches, "train", real)
    assert main(["train", "--out", out, "--resume"]) == 0
    assert _records(out) == _records(digits_run)


class _Registered(nnx.Module):
    """A model defined in a test: one conv, global mean, linear."""

    def __init__(self, num_classes, *, in_channels, rngs):
        self.conv = nnx.Conv(in_channels, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.conv(x)).mean((1, 2)))


def test_a_registered_model_trains_from_the_cli(tmp_path, capsys):
    register_model("test_registered", _Registered, help="a model registered by a test")
    try:
        out = str(tmp_path / "reg")
        assert main(["train", *TINY, "--model", "test_registered", "--out", out]) == 0
        summary = json.load(open(os.path.join(out, "summary.json")))
        assert summary["model"] == "test_registered"
        assert summary["num_params"] == 9 * 4 + 4 + 4 * 10 + 10
        train_help = build_parser()._subparsers._group_actions[0].choices["train"]
        assert "test_registered a model registered by a test" in " ".join(
            train_help.format_help().split()
        )
    finally:
        MODELS.pop("test_registered")


def test_help_shows_every_default_and_the_registries():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    text = " ".join(text.split())  # argparse wraps lines to the terminal's width
    for flag, default in (
        ("--epochs", "15"),
        ("--batch-size", "64"),
        ("--optimizer", "adamw"),
        ("--schedule", "cosine"),
        ("--seed", "0"),
        ("--lr", "0.003"),
        ("--augment", "True"),
        ("--dtype", "float32"),
        ("--devices", "None"),
    ):
        assert flag in text
        assert f"(default: {default})" in text, flag
    for entry in MODELS.values():
        assert f" {entry.name} {entry.help}" in text
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "folder", "shapes"):
        assert f" {name} " in text


def test_segmentation_end_to_end_with_a_numpy_oracle(tmp_path, capsys):
    out = str(tmp_path / "seg")
    assert (
        main(
            [
                "train",
                "--dataset",
                "shapes",
                "--limit",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--width",
                "4",
                "--devices",
                "1",
                "--quiet",
                "--out",
                out,
            ]
        )
        == 0
    )
    model, run = load_run(out, which="latest")
    _, test = prepare_data(run["config"])
    logits = np.asarray(model(jnp.asarray(test.images)), np.float64)  # (N, H, W, 4)
    p = _softmax(logits)
    labels = test.labels
    n, h, w = labels.shape
    loss = -np.log(
        p[
            np.arange(n)[:, None, None],
            np.arange(h)[None, :, None],
            np.arange(w)[None, None, :],
            labels,
        ]
    ).mean()
    acc = (logits.argmax(-1) == labels).mean()
    record = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
    assert record["test_loss"] == pytest.approx(loss, rel=1e-4)
    assert record["test_accuracy"] == pytest.approx(acc)
    assert main(["predict", "x.png", "--out", out]) == 1
    assert (
        "predict: the run must be a classifier, got a segment run (unet on shapes)"
        in capsys.readouterr().err
    )


_SUMMARY_SHAPES = {"digits_cnn": "8,8,1", "lenet5": "32,32,1", "alexnet": "64,64,3"}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_summary_of_every_registered_model(model, capsys):
    shape = _SUMMARY_SHAPES.get(model, "32,32,3")
    assert main(["summary", "--model", model, "--input-shape", shape, "--num-classes", "7"]) == 0
    text = capsys.readouterr().out
    assert "7" in text and "total" in text.lower()


def test_user_errors_are_one_line_and_exit_1(tmp_path, capsys):
    def err(argv, code=1):
        assert main(argv) == code
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and "Traceback" not in text, text
        return text

    assert "data_dir must be given for 'mnist' (--data-dir)" in err(
        ["train", "--dataset", "mnist", "--quiet", "--out", str(tmp_path / "r")]
    )
    (tmp_path / "m").mkdir()
    assert "missing file" in err(
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "m"),
            "--quiet",
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    assert "missing file" in err(["evaluate", "--out", str(tmp_path / "nothing")])
    assert "model must suit the 'digits' data set's task (classify), got 'unet'" in err(
        ["train", "--model", "unet", "--quiet", "--out", str(tmp_path / "r3")]
    )
    assert "model must suit the 'shapes' data set's task (segment), got 'lenet5'" in err(
        ["train", "--dataset", "shapes", "--model", "lenet5", "--out", str(tmp_path / "r4")]
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert f"out must be a folder, got {str(afile)!r}, an existing file" in err(
        ["train", "--out", str(afile)]
    )
    assert "out must be writable" in err(["train", "--out", str(afile / "sub")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{")
    assert "malformed file" in err(["evaluate", "--out", str(bad)])
    assert "malformed file" in err(["train", "--out", str(bad), "--resume"])
    assert "missing file" in err(["train", "--out", str(tmp_path / "none"), "--resume"])
    assert "does not suit model 'lenet5'" in err(
        ["summary", "--model", "lenet5", "--input-shape", "8,8,1"]
    )
    assert "num_devices must be an int in [1, 8], got 9" in err(
        ["train", "--devices", "9", "--quiet", "--out", str(tmp_path / "r5")]
    )
    assert main([]) == 2


def test_a_small_folder_data_set_names_the_fix_and_leaves_nothing(tmp_path, capsys):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(
                tmp_path / "data" / c / f"{i}.png"
            )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "folder",
                "--data-dir",
                str(tmp_path / "data"),
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert (
        "batch_size must be <= the number of training examples of 'folder' (8), got 64; "
        "pass --batch-size 8 or less"
    ) in capsys.readouterr().err
    assert not out.exists()  # nothing written, no run.json left behind


def test_resume_without_a_checkpoint_says_so_even_when_quiet(digits_run, tmp_path, capsys):
    out = str(tmp_path / "nockpt")
    os.makedirs(out)
    shutil.copy(os.path.join(digits_run, "run.json"), out)
    assert main(["train", "--out", out, "--resume", "--quiet", "--epochs", "1"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err


def test_syntax_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["summary", "--model", "lenet5", "--input-shape", "32,32"])
    assert e.value.code == 2
    assert "--input-shape must be three positive ints H,W,C, got '32,32'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "vgg"])
    assert e.value.code == 2 and "invalid choice: 'vgg'" in capsys.readouterr().err


def test_a_bug_inside_the_library_keeps_its_traceback(monkeypatch, tmp_path):
    from cnn_jax.train import _experiment

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(_experiment, "create_model", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", *TINY, "--out", str(tmp_path / "bug")])


def test_help_imports_no_jax():
    code = (
        "import sys; from cnn_jax.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)\n"
        "assert 'orbax' not in sys.modules and 'sklearn' not in sys.modules\n"
        "assert 'matplotlib' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--batch-size" in result.stdout
