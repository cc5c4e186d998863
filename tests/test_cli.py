"""The ``cnn-jax`` command end to end on tiny data (in process, plus one real launch)."""

import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax.cli import build_parser, main

# orbax's tensorstore callbacks may reach an already-closed asyncio loop during garbage
# collection ("Event loop is closed"); harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

TINY = ["--model", "lenet5", "--limit", "96", "--epochs", "2", "--batch-size", "32",
        "--devices", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    return out


def test_train_writes_every_output(digits_run, capsys):
    files = set(os.listdir(digits_run))
    assert {"run.json", "metrics.jsonl", "summary.json", "curves.png", "filters.png",
            "checkpoints"} <= files
    summary = json.load(open(os.path.join(digits_run, "summary.json")))
    assert summary["model"] == "lenet5" and summary["dataset"] == "digits"
    assert summary["epochs"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["num_params"] == 61706  # LeNet-5 on 32x32x1 (digits are resized)
    # 96 / 32 = 3 steps per epoch; both epochs' checkpoints kept (--keep 2).
    assert sorted(os.listdir(os.path.join(digits_run, "checkpoints"))) == ["3", "6"]


def test_evaluate_matches_the_training_summary(digits_run, capsys):
    assert main(["evaluate", "--out", digits_run, "--checkpoint", "latest"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.load(open(os.path.join(digits_run, "summary.json")))
    assert result["examples"] == 96 and result["step"] == 6
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


def test_predict_prints_a_class_per_image(digits_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        path = str(tmp_path / f"d{i}.png")
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(path)
    assert main(["predict", *paths, "--out", digits_run, "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(paths, lines):
        name, first, second = line.split("\t")
        assert name == path
        (c1, p1), (c2, p2) = first.split(), second.split()
        assert c1 in "0123456789" and c1 != c2 and 1.0 >= float(p1) >= float(p2) >= 0.0


def test_resume_continues_and_refuses_a_foreign_checkpoint(digits_run, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(digits_run, out)
    # Pretend the run stopped after epoch 1: drop the epoch-2 checkpoint and record.
    shutil.rmtree(os.path.join(out, "checkpoints", "6"))
    first = open(os.path.join(out, "metrics.jsonl")).read().splitlines()[0]
    open(os.path.join(out, "metrics.jsonl"), "w").write(first + "\n")
    assert main(["train", *TINY, "--out", out, "--resume"]) == 0
    ref = [json.loads(line) for line in open(os.path.join(digits_run, "metrics.jsonl"))]
    got = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    keys = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]
    capsys.readouterr()
    assert main(["train", *TINY, "--model", "simple_cnn", "--out", out, "--resume"]) == 1
    assert "does not match this run: model must be 'simple_cnn', got 'lenet5'" in \
        capsys.readouterr().err
    assert json.load(open(os.path.join(out, "run.json")))["model"] == "lenet5"  # untouched
    assert main(["train", *TINY, "--out", out]) == 1
    assert "pass resume=True (--resume)" in capsys.readouterr().err


def test_ctrl_c_saves_exits_cleanly_and_resumes(digits_run, tmp_path, monkeypatch, capsys):
    from cnn_jax.train import _loop

    real = _loop.shard_batch
    calls = []

    def ctrl_c_on_sixth_batch(*args):  # 3 train + 1 eval batch, then train 4, then Ctrl-C
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args)

    out = str(tmp_path / "interrupted")
    monkeypatch.setattr(_loop, "shard_batch", ctrl_c_on_sixth_batch)
    assert main(["train", *TINY, "--out", out]) == 130
    err = capsys.readouterr()
    assert "interrupted at step 4; saved checkpoint" in err.err
    assert "--resume" in err.out
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["3", "4"]
    monkeypatch.setattr(_loop, "shard_batch", real)
    assert main(["train", *TINY, "--out", out, "--resume"]) == 0
    ref = [json.loads(line) for line in open(os.path.join(digits_run, "metrics.jsonl"))]
    got = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    keys = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]


def test_summary_prints_the_layer_table(capsys):
    assert main(["summary", "--model", "lenet5", "--input-shape", "32,32,1"]) == 0
    text = capsys.readouterr().out
    assert "61,706" in text or "61706" in text


def test_user_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--quiet", "--out", str(tmp_path / "r")]) == 1
    assert "data_dir must be given for 'mnist'" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "m"), "--quiet",
                 "--out", str(tmp_path / "r2")]) == 1
    assert "missing file" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(tmp_path / "nothing")]) == 1
    assert "missing file" in capsys.readouterr().err
    assert main(["train", "--model", "unet", "--quiet", "--out", str(tmp_path / "r3")]) == 1
    assert "needs per-pixel labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["summary", "--model", "lenet5", "--input-shape", "32,32"])
    assert "--input-shape must be three positive ints H,W,C, got '32,32'" in \
        capsys.readouterr().err
    assert main([]) == 2


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "cnn_jax.cli", "train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--model", "--dataset", "--data-dir", "--epochs", "--batch-size",
                 "--optimizer", "--lr", "--schedule", "--warmup", "--weight-decay",
                 "--augment", "--dtype", "--seed", "--out", "--resume", "--quiet",
                 "--coordinator", "--num-processes", "--process-id"):
        assert flag in result.stdout
