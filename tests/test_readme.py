"""Every snippet in README.md runs as written, so the README cannot go stale.

Python blocks run in a fresh interpreter in a scratch folder (a block whose first
line is ``# NAME.py`` is written there as that file instead). ``cnn-jax`` lines run
through the CLI's ``main`` in the same folder, where small stand-ins of the data the
README points at (CIFAR-10 pickles, MNIST IDX files, an image folder, two photos)
are created first. ``train`` lines that start a run get tiny settings appended
(argparse keeps the last value of a flag); ``--resume`` lines run as written.
"""

import gzip
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
TINY = ["--limit", "64", "--epochs", "1", "--batch-size", "32", "--quiet"]
# Launched as two processes in the background: tests/test_multiprocess.py runs that.
NOT_IN_PROCESS = ("--coordinator", "--distributed")


def _commands():
    """The shell commands of the README, in order (continuations joined)."""
    commands = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                part = part.strip().rstrip("&").strip()
                if part:
                    commands.append(part)
    return commands


def _make_data(root, rng):
    from PIL import Image

    cifar = root / "data" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (16, 3072)).astype(np.uint8),
            b"labels": list(rng.integers(0, 10, 16)),
        }
        with open(cifar / name, "wb") as f:
            pickle.dump(batch, f)
    mnist = root / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name, shape in (
        ("train-images-idx3-ubyte", (64, 28, 28)),
        ("train-labels-idx1-ubyte", (64,)),
        ("t10k-images-idx3-ubyte", (16, 28, 28)),
        ("t10k-labels-idx1-ubyte", (16,)),
    ):
        high = 10 if len(shape) == 1 else 256
        array = rng.integers(0, high, shape).astype(np.uint8)
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *shape)
        with gzip.open(mnist / (name + ".gz"), "wb") as f:
            f.write(header + array.tobytes())
    for c in ("cats", "dogs"):
        (root / "data" / "photos" / c).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(
                root / "data" / "photos" / c / f"{i}.png"
            )
    for name in ("cat.png", "dog.png"):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)).save(root / name)


def test_the_readme_has_the_snippets_this_test_reads():
    langs = [lang for lang, _ in BLOCKS]
    assert langs.count("python") >= 4 and langs.count("bash") >= 4
    commands = _commands()
    assert "python -m pytest -q -n 2" in commands  # the README's test command
    assert sum(c.startswith("cnn-jax") for c in commands) >= 10


@pytest.mark.parametrize("index", [i for i, (lang, _) in enumerate(BLOCKS) if lang == "python"])
def test_python_blocks_run(index, tmp_path):
    body = BLOCKS[index][1]
    first = body.splitlines()[0]
    if re.fullmatch(r"# \w+\.py", first):  # a file the README asks the reader to write
        (tmp_path / first[2:]).write_text(body)
        compile(body, first[2:], "exec")
        return
    env = dict(os.environ, CNN_JAX_COMPILATION_CACHE="off", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", body],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"README block {index}:\n{body}\n{result.stderr[-3000:]}"


@pytest.fixture
def _registries():
    from cnn_jax.train import DATASETS, MODELS

    before = (dict(MODELS), dict(DATASETS))
    yield
    for table, saved in zip((MODELS, DATASETS), before):
        table.clear()
        table.update(saved)


def test_cli_lines_run(tmp_path, monkeypatch, rng, capsys, _registries):
    from cnn_jax.cli import main

    _make_data(tmp_path, rng)
    for lang, body in BLOCKS:  # files the README asks the reader to write (mynets.py)
        first = body.splitlines()[0] if lang == "python" else ""
        if re.fullmatch(r"# \w+\.py", first):
            (tmp_path / first[2:]).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    for command in _commands():
        argv = shlex.split(command)
        if argv[0] != "cnn-jax" or any(flag in argv for flag in NOT_IN_PROCESS):
            continue
        argv = argv[1:]
        if "train" in argv and "--resume" not in argv:
            argv += TINY
        code = main(argv)
        assert code == 0, f"{command!r} exited {code}: {capsys.readouterr().err[-2000:]}"
        ran.append(command)
    assert len(ran) >= 10
    out = capsys.readouterr().out
    assert "already complete" in out  # the --resume line after the 1-epoch run
    assert "cat.png\t" in out and "dog.png\t" in out  # predict printed a class per image
