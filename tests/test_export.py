"""cnn_jax.export: StableHLO, ONNX and PyTorch weights give the model's own logits back.

Models get random weights and BatchNorm statistics from a PyTorch reference with
torchvision's names (tests/_torchvision_ref.py, the U-Net's twin there too), so the
exported files are checked against two independent computations: cnn_jax's logits
(StableHLO deserialized and run by jax alone, ONNX run by onnxruntime, both at batch
1 and 3 from one symbolic-batch export) and PyTorch's (the reference loaded with the
exported state_dict).
"""

import functools
import json
import os
import subprocess
import sys

import _torchvision_ref as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _model_helpers import apply, from_torch
from flax import nnx

from cnn_jax import models
from cnn_jax import nn as cj_nn
from cnn_jax.cli import EXPORT_FORMATS, main
from cnn_jax.export import (
    FORMATS,
    export_onnx,
    export_run,
    export_stablehlo,
    export_torch,
    load_stablehlo,
)
from cnn_jax.models import load_torch_state_dict, save_torch_state_dict
from cnn_jax.models._digits import DigitsCNN
from cnn_jax.train import TrainConfig, load_run
from cnn_jax.train._checkpoint import CheckpointError

ort = pytest.importorskip("onnxruntime")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


# name: (PyTorch reference, cnn_jax twin, (H, W, C)); reduced widths keep them small.
CASES = {
    "lenet5": (
        lambda: ref.LeNet5(10, in_channels=1),
        lambda: models.LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)),
        (32, 32, 1),
    ),
    "resnet18": (
        lambda: ref.ResNet(ref.BasicBlock, (2, 2, 2, 2), num_classes=7, width=8),
        lambda: models.ResNet18(7, width=8, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "mobilenet_v2": (
        lambda: ref.MobileNetV2(5, width_mult=0.25),
        lambda: models.MobileNetV2(5, width_mult=0.25, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "unet": (
        lambda: ref.UNet(3, 2, 4, 2),
        lambda: models.UNet(3, in_channels=2, base_width=4, depth=2, rngs=nnx.Rngs(0)),
        (16, 16, 2),
    ),
}


@functools.cache
def case(name):
    """``(torch model, cnn_jax model, input (3, H, W, C), cnn_jax logits)``, built once."""
    make_torch, make_ours, shape = CASES[name]
    torch_model = ref.randomize_(make_torch(), seed=5).eval()
    model = from_torch(make_ours, torch_model)
    model.eval()
    x = np.random.default_rng(1).uniform(0, 1, (3, *shape)).astype(np.float32)
    return torch_model, model, x, np.asarray(apply(model, jnp.asarray(x)))


def assert_close(ours, theirs, tol=1e-4):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-2  # the logits are not trivially small
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * scale)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


# ---------------------------------------------------------------- StableHLO


@pytest.mark.parametrize("name", CASES)
def test_stablehlo_round_trip_at_batch_1_and_3(name, tmp_path):
    _, model, x, logits = case(name)
    path = str(tmp_path / "model.stablehlo")
    exported = export_stablehlo(model, x.shape[1:], path=path)
    assert str(exported.in_avals[0].shape[0]) == "N"  # one artifact, any batch size
    restored = jax.export.deserialize(bytearray(open(path, "rb").read()))
    for n in (1, 3):
        assert_close(restored.call(x[:n]), logits[:n])


def test_stablehlo_runs_in_a_process_without_cnn_jax(tmp_path):
    _, model, x, logits = case("lenet5")
    export_stablehlo(model, x.shape[1:], path=str(tmp_path / "model.stablehlo"))
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, jax, numpy as np\n"
        "exp = jax.export.deserialize(bytearray(open('model.stablehlo', 'rb').read()))\n"
        "np.save('y.npy', np.asarray(exp.call(np.load('x.npy'))))\n"
        "assert not any(m.startswith('cnn_jax') for m in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    assert_close(np.load(tmp_path / "y.npy"), logits)


def test_stablehlo_fixed_batch_and_load_helper(tmp_path):
    _, model, x, logits = case("lenet5")
    path = str(tmp_path / "m.stablehlo")
    exported = export_stablehlo(model, (32, 32, 1), batch=3, path=path)
    assert exported.in_avals[0].shape == (3, 32, 32, 1)
    assert exported.out_avals[0].shape == (3, 10)
    assert_close(load_stablehlo(path).call(x), logits)


# ---------------------------------------------------------------- ONNX


def onnx_run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


@pytest.mark.parametrize("name", CASES)
def test_onnx_round_trip_at_batch_1_and_3(name, tmp_path):
    import onnx

    _, model, x, logits = case(name)
    path = str(tmp_path / "model.onnx")
    export_onnx(model, x.shape[1:], path=path)
    proto = onnx.load(path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", *x.shape[1:]]
    assert {p.key: p.value for p in proto.metadata_props}["cnn_jax.input_layout"] == "NHWC"
    for n in (1, 3):
        assert_close(onnx_run(proto, x[:n]), logits[:n])


def test_onnx_fixed_batch():
    _, model, x, logits = case("resnet18")
    proto = export_onnx(model, x.shape[1:], batch=3)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert_close(onnx_run(proto, x), logits)


# The rest of the zoo converts too, checked against its PyTorch twin (no XLA compile).
ZOO = {
    "resnet50": (
        lambda: ref.ResNet(ref.Bottleneck, (3, 4, 6, 3), num_classes=5, width=4, small_input=True),
        lambda: models.ResNet50(5, width=4, small_input=True, rngs=nnx.Rngs(0)),
        (16, 16, 3),
    ),
    "alexnet": (
        lambda: ref.AlexNet(6, width=8, hidden=32),
        lambda: models.AlexNet(6, width=8, hidden=32, rngs=nnx.Rngs(0)),
        (67, 67, 3),
    ),
    "vgg11_bn": (
        lambda: ref.VGG("A", batch_norm=True, num_classes=6, width=4, hidden=16),
        lambda: models.VGG11BN(6, width=4, hidden=16, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "efficientnet": (
        lambda: ref.EfficientNet(6, width_mult=0.25, depth_mult=0.5),
        lambda: models.EfficientNet(6, width_mult=0.25, depth_mult=0.5, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "convnext": (
        lambda: ref.ConvNeXt((1, 1, 2, 1), (8, 16, 32, 64), num_classes=6),
        lambda: models.ConvNeXt(6, depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
}


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_exports_to_onnx(name):
    make_torch, make_ours, shape = ZOO[name]
    torch_model = ref.randomize_(make_torch(), seed=6).eval()
    model = from_torch(make_ours, torch_model)
    x = np.random.default_rng(3).uniform(0, 1, (2, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(nchw(x)).numpy()
    assert_close(onnx_run(export_onnx(model, shape), x), expected)


def test_simple_cnn_exports_to_onnx():  # no PyTorch twin: against cnn_jax itself
    model = nnx.eval_shape(lambda: models.SimpleCNN(5, width=4, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(2)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Param, nnx.BatchStat)):
            shape, low = node.get_value().shape, -0.3
            if path[-1] in ("var", "scale"):
                low = 0.5
            elif path[-1] == "kernel":
                low = -((3 / np.prod(shape[:-1])) ** 0.5)
            node.set_value(
                jnp.asarray(rng.uniform(low, abs(low) + 0.3 * (low > 0), shape), jnp.float32)
            )
    model.eval()
    x = np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    assert_close(onnx_run(export_onnx(model, (16, 16, 3)), x), apply(model, jnp.asarray(x)))


# ---------------------------------------------------------------- PyTorch weights


@pytest.mark.parametrize("name", CASES)
def test_pytorch_loads_the_exported_state_dict(name):
    torch_model, model, x, logits = case(name)
    state = save_torch_state_dict(model)
    expected = torch_model.state_dict()
    assert list(state) == list(expected) or set(state) == set(expected)
    assert all(state[k].shape == tuple(expected[k].shape) for k in expected)
    fresh = CASES[name][0]().eval()  # default init: only the exported weights make it match
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        out = fresh(nchw(x)).numpy()
    if out.ndim == 4:  # segmentation: (N, C, H, W) -> channels last
        out = np.transpose(out, (0, 2, 3, 1))
    assert_close(out, logits)


@pytest.mark.parametrize("name", CASES)
def test_load_of_save_is_the_identity(name):
    _, model, _, _ = case(name)
    other = nnx.eval_shape(CASES[name][1])
    load_torch_state_dict(other, save_torch_state_dict(model))
    ours = jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))
    theirs = jax.tree.leaves(nnx.state(other, nnx.Param, nnx.BatchStat))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_torch_writes_pt_and_safetensors(tmp_path):
    _, model, _, _ = case("resnet18")
    pt, st = export_torch(model, str(tmp_path / "weights.pt"))
    assert (pt, st) == (str(tmp_path / "weights.pt"), str(tmp_path / "weights.safetensors"))
    state = save_torch_state_dict(model)
    loaded_pt = torch.load(pt, weights_only=True)
    loaded_st = safetensors_numpy.load_file(st)
    assert set(loaded_pt) == set(loaded_st) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(loaded_pt[k].numpy(), v)
        np.testing.assert_array_equal(loaded_st[k], v)
    assert loaded_pt["bn1.num_batches_tracked"].dtype == torch.int64


class _Scaled(nnx.Module):
    """A layer with its own PyTorch mapping: a ``(C, 1, 1)`` tensor held as ``(C,)``."""

    def __init__(self, inverse: bool):
        self.gamma = nnx.Param(jnp.arange(4.0))
        self.inverse = inverse

    def torch_weights(self):
        entry = ("gamma", "gamma", lambda w: w.reshape(-1))
        return [entry + (lambda v: v.reshape(-1, 1, 1),)] if self.inverse else [entry]


class _Doubling(_Scaled):
    def torch_weights(self):
        return [("gamma", "gamma", lambda w: 2 * w)]


def test_save_torch_state_dict_custom_mappings_and_errors():
    state = save_torch_state_dict(_Scaled(inverse=True))
    assert state["gamma"].shape == (4, 1, 1)
    other = _Scaled(inverse=True)
    other.gamma.set_value(jnp.zeros(4))
    load_torch_state_dict(other, state)  # the 4-item entry loads too
    np.testing.assert_array_equal(np.asarray(other.gamma.get_value()), np.arange(4.0))
    assert save_torch_state_dict(_Scaled(inverse=False))["gamma"].shape == (4,)
    with pytest.raises(ValueError, match="must be an axis permutation or come with its inverse"):
        save_torch_state_dict(_Doubling(inverse=False))

    class Unknown(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))

    with pytest.raises(ValueError, match=r"must have a PyTorch counterpart, but \['w'\]"):
        save_torch_state_dict(Unknown())
    with pytest.raises(TypeError, match="model must be an nnx.Module, got dict"):
        save_torch_state_dict({})


# ---------------------------------------------------------------- inference mode, errors


def test_export_uses_eval_mode_and_leaves_the_model_as_it_was():
    _, model, x, logits = case("mobilenet_v2")  # BatchNorm and dropout
    model.train()
    try:
        proto = export_onnx(model, x.shape[1:])
        assert model.features.layers[0].layers[1].use_running_average is False
    finally:
        model.eval()
    assert_close(onnx_run(proto, x), logits)


class _CumMax(nnx.Module):
    def __call__(self, x):
        return jax.lax.cummax(x, axis=1)


class _Net(nnx.Module):
    def __init__(self):
        self.conv = cj_nn.Conv(1, 2, 3, rngs=nnx.Rngs(0))
        self.mix = _CumMax()

    def __call__(self, x):
        return self.mix(self.conv(x))


def test_an_op_onnx_cannot_express_names_the_op_and_the_layer():
    call = _CumMax.__dict__["__call__"]
    with pytest.raises(
        NotImplementedError,
        match=r"export_onnx: jax op 'cummax' in layer 'mix' cannot be expressed",
    ):
        export_onnx(_Net(), (8, 8, 1))
    assert _CumMax.__dict__["__call__"] is call  # the tracing scopes are undone
    assert cj_nn.Conv.__call__.__name__ == "__call__"


def test_bad_arguments_raise_with_the_rule():
    model = _Net()
    with pytest.raises(
        ValueError,
        match=r"input_shape must be \(H, W, C\), three positive "
        r"ints, got \(8, 8\)",
    ):
        export_onnx(model, (8, 8))
    with pytest.raises(ValueError, match="batch must be None .* or a positive int, got 0"):
        export_stablehlo(model, (8, 8, 1), batch=0)
    with pytest.raises(ValueError, match="batch must be None .* got True"):
        export_stablehlo(model, (8, 8, 1), batch=True)
    with pytest.raises(TypeError, match="export_stablehlo: model must be an nnx.Module"):
        export_stablehlo(lambda x: x, (8, 8, 1))
    with pytest.raises(
        ValueError,
        match=r"format must be one of \('stablehlo', 'onnx', "
        r"'torch'\), got 'tflite'",
    ):
        export_run("runs/x", "tflite")
    with pytest.raises(ValueError, match="batch must be None for format 'torch'"):
        export_run("runs/x", "torch", batch=2)
    assert FORMATS == EXPORT_FORMATS  # the CLI's copy (it imports no jax for --help)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "run")
    assert (
        main(
            [
                "train",
                "--limit",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--quiet",
                "--devices",
                "1",
                "--out",
                out,
            ]
        )
        == 0
    )
    return out


def test_cli_exports_a_run_in_every_format(digits_run, capsys):
    model, run = load_run(digits_run)
    x = np.random.default_rng(4).uniform(0, 1, (3, *run["image_shape"])).astype(np.float32)
    logits = np.asarray(apply(model, jnp.asarray(x)))
    for fmt in FORMATS:
        assert main(["export", "--out", digits_run, "--format", fmt]) == 0
    lines = capsys.readouterr().out.splitlines()
    export = os.path.join(digits_run, "export")
    assert lines == [
        f"wrote {export}/model.stablehlo (any batch size)",
        f"wrote {export}/model.onnx (any batch size)",
        f"wrote {export}/model.pt",
        f"wrote {export}/model.safetensors",
    ]
    assert_close(load_stablehlo(f"{export}/model.stablehlo").call(x), logits)
    import onnx

    proto = onnx.load(f"{export}/model.onnx")
    assert_close(onnx_run(proto, x), logits)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["cnn_jax.class_names"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    other = nnx.eval_shape(
        lambda: DigitsCNN(10, in_channels=1, input_size=(8, 8), rngs=nnx.Rngs(0))
    )
    load_torch_state_dict(other, torch.load(f"{export}/model.pt", weights_only=True))
    assert_close(apply(other, jnp.asarray(x)), logits)
    dest = os.path.join(digits_run, "fixed.onnx")
    assert (
        main(["export", "--out", digits_run, "--format", "onnx", "--batch", "3", "--dest", dest])
        == 0
    )
    assert capsys.readouterr().out == f"wrote {dest} (batch 3)\n"
    assert_close(onnx_run(onnx.load(dest), x), logits)


def test_cli_errors_are_one_line(tmp_path, capsys):
    def err(argv):
        """The one-line message of a user error (exit status 1, no traceback)."""
        assert main(argv) == 1
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and "Traceback" not in text, text
        return text

    assert "missing file" in err(["export", "--out", str(tmp_path / "none"), "--format", "onnx"])
    empty = tmp_path / "empty"  # a run record, but training never saved a checkpoint
    empty.mkdir()
    record = {
        "config": TrainConfig(out=str(empty)).to_dict(),
        "model": "digits_cnn",
        "dataset": "digits",
        "task": "classify",
        "num_classes": 10,
        "image_shape": [8, 8, 1],
        "class_names": [str(i) for i in range(10)],
    }
    (empty / "run.json").write_text(json.dumps(record))
    assert "no checkpoint in" in err(["export", "--out", str(empty), "--format", "stablehlo"])
    assert "--batch applies to --format stablehlo and onnx" in err(
        ["export", "--out", str(empty), "--format", "torch", "--batch", "2"]
    )
    with pytest.raises(SystemExit, match="2"):  # argparse: a command-line syntax error
        main(["export", "--out", str(empty), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_run(str(empty), "onnx")
