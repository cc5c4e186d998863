"""Blocks against PyTorch references with torchvision's names (tests/_torchvision_ref.py).

Blocks get the PyTorch module's random weights and BatchNorm statistics and must give
its outputs in eval mode (running statistics) and in train mode (batch statistics,
with the running statistics updated as PyTorch's momentum=0.1 rule says).
"""

import _torchvision_ref as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _model_helpers import apply, from_torch
from flax import nnx

from cnn_jax.nn import BasicBlock, Bottleneck, Conv, InvertedResidual, Residual, SqueezeExcitation


def _to_cl(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _torch_out(module, x, train=False):
    module.train(train)
    with torch.no_grad():
        return np.transpose(module(torch.from_numpy(x)).numpy(), (0, 2, 3, 1))


def _close(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


class _TorchResidual(torch.nn.Module):
    def __init__(self, module, projection=None):
        super().__init__()
        self.module = module
        self.projection = projection

    def forward(self, x):
        return self.module(x) + (x if self.projection is None else self.projection(x))


def test_residual_identity_and_projection(rng):
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    t_id = ref.randomize_(_TorchResidual(torch.nn.Conv2d(4, 4, 3, padding=1)), seed=1)
    ours = from_torch(lambda: Residual(Conv(4, 4, 3, padding=1, rngs=nnx.Rngs(0))), t_id)
    _close(apply(ours, _to_cl(x)), _torch_out(t_id, x))

    t_proj = ref.randomize_(
        _TorchResidual(
            torch.nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.nn.Conv2d(4, 8, 1, stride=2)
        ),
        seed=2,
    )
    ours = from_torch(
        lambda: Residual(
            Conv(4, 8, 3, stride=2, padding=1, rngs=nnx.Rngs(0)),
            Conv(4, 8, 1, stride=2, rngs=nnx.Rngs(1)),
        ),
        t_proj,
    )
    _close(apply(ours, _to_cl(x)), _torch_out(t_proj, x))


def test_residual_adds_without_activation():
    # A module returning -x cancels the skip exactly: no ReLU after the addition.
    class Negate(nnx.Module):
        def __call__(self, x):
            return -x

    x = jnp.asarray(np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 2, 2, 4))
    np.testing.assert_array_equal(np.asarray(Residual(Negate())(x)), np.zeros((1, 2, 2, 4)))
    np.testing.assert_array_equal(np.asarray(Residual(Negate(), Negate())(x)), -2 * np.asarray(x))


@pytest.mark.parametrize(
    "ours, theirs, shape",
    [
        (
            lambda: BasicBlock(4, 4, rngs=nnx.Rngs(0)),
            lambda: ref.make_block(ref.BasicBlock, 4, 4),
            (2, 4, 6, 6),
        ),
        (
            lambda: BasicBlock(4, 8, stride=2, rngs=nnx.Rngs(0)),
            lambda: ref.make_block(ref.BasicBlock, 4, 8, stride=2),
            (2, 4, 7, 7),
        ),
        (
            lambda: Bottleneck(16, 4, rngs=nnx.Rngs(0)),
            lambda: ref.make_block(ref.Bottleneck, 16, 4),
            (2, 16, 6, 6),
        ),
        (
            lambda: Bottleneck(8, 4, stride=2, rngs=nnx.Rngs(0)),
            lambda: ref.make_block(ref.Bottleneck, 8, 4, stride=2),
            (2, 8, 6, 6),
        ),
        (
            lambda: SqueezeExcitation(8, 2, rngs=nnx.Rngs(0)),
            lambda: ref.SqueezeExcitation(8, 2),
            (2, 8, 5, 5),
        ),
        (
            lambda: InvertedResidual(8, 8, stride=1, expand_ratio=6, rngs=nnx.Rngs(0)),
            lambda: ref.InvertedResidual(8, 8, 1, 6),
            (2, 8, 6, 6),
        ),
        (
            lambda: InvertedResidual(8, 12, stride=2, expand_ratio=1, rngs=nnx.Rngs(0)),
            lambda: ref.InvertedResidual(8, 12, 2, 1),
            (2, 8, 7, 7),
        ),
    ],
)
def test_block_eval_matches_torch(rng, ours, theirs, shape):
    torch_block = ref.randomize_(theirs(), seed=3)
    block = from_torch(ours, torch_block)
    block.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    _close(apply(block, _to_cl(x)), _torch_out(torch_block, x))


def test_inverted_residual_with_squeeze_excitation_matches_torch(rng):
    torch_block = ref.InvertedResidual(8, 8, 1, 2)
    layers = list(torch_block.conv)  # expand, depthwise, project conv, project BN
    torch_block.conv = torch.nn.Sequential(
        layers[0], layers[1], ref.SqueezeExcitation(16, 4), layers[2], layers[3]
    )
    ref.randomize_(torch_block, seed=4)
    block = from_torch(
        lambda: InvertedResidual(8, 8, expand_ratio=2, se_ratio=0.25, rngs=nnx.Rngs(0)), torch_block
    )
    block.eval()
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    _close(apply(block, _to_cl(x)), _torch_out(torch_block, x))


def test_train_mode_uses_batch_stats_and_updates_running_stats(rng):
    torch_block = ref.randomize_(ref.make_block(ref.BasicBlock, 4, 8, stride=2), seed=5)
    old_mean = torch_block.bn1.running_mean.clone().numpy()
    old_var = torch_block.bn1.running_var.clone().numpy()
    block = from_torch(lambda: BasicBlock(4, 8, stride=2, rngs=nnx.Rngs(0)), torch_block)
    params_before = jax.tree.map(np.asarray, nnx.state(block, nnx.Param))
    block.train()
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    _close(apply(block, _to_cl(x)), _torch_out(torch_block, x, train=True))
    # Running mean: PyTorch's rule new = 0.9 * old + 0.1 * batch_mean, same in both.
    np.testing.assert_allclose(
        np.asarray(block.bn1.mean[...]), torch_block.bn1.running_mean.numpy(), rtol=1e-5, atol=1e-6
    )
    # Running var: PyTorch feeds the unbiased batch variance, Flax the biased one
    # (n = 3 * 3 * 3 positions per channel after the stride-2 conv).
    n = 3 * 3 * 3
    unbiased = (torch_block.bn1.running_var.numpy() - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(
        np.asarray(block.bn1.var[...]), 0.9 * old_var + 0.1 * unbiased * (n - 1) / n, rtol=1e-4
    )
    assert not np.allclose(np.asarray(block.bn1.mean[...]), old_mean)
    # Parameters are untouched by a forward pass; only the statistics move.
    params_after = jax.tree.map(np.asarray, nnx.state(block, nnx.Param))
    for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(params_after)):
        np.testing.assert_array_equal(a, b)


def test_eval_mode_is_per_example(rng):
    torch_block = ref.randomize_(ref.make_block(ref.BasicBlock, 4, 4), seed=6)
    block = from_torch(lambda: BasicBlock(4, 4, rngs=nnx.Rngs(0)), torch_block)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)).astype(np.float32))
    block.train()
    train_pair = apply(block, x)
    block.eval()
    mean = np.asarray(block.bn1.mean[...]).copy()
    both = apply(block, x)
    alone = apply(block, jnp.concatenate([x[:1], x[:1]]))
    # Eval: an example's output does not depend on the rest of the batch, stats frozen.
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(alone[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(block.bn1.mean[...]), mean)
    assert not np.allclose(np.asarray(train_pair), np.asarray(both), atol=1e-3)


def test_zero_init_residual_starts_as_identity_plus_relu(rng):
    # bn2's scale is 0 and its bias 0, so the residual branch adds exactly zero.
    block = BasicBlock(
        2, 2, zero_init_residual=True, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))
    )  # rbg: fast to compile
    np.testing.assert_array_equal(np.asarray(block.bn2.scale[...]), np.zeros(2))
    np.testing.assert_array_equal(np.asarray(block.bn1.scale[...]), np.ones(2))
    block.eval()
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(apply(block, jnp.asarray(x))), np.maximum(x, 0))


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_zero_init_residual_takes_only_bools(block):
    with pytest.raises(
        TypeError,
        match=rf"{block.__name__}: zero_init_residual must be a bool, "
        r"got 'no'",
    ):
        block(4, 4, zero_init_residual="no", rngs=nnx.Rngs(0))


def test_block_shapes_and_names():
    block = nnx.eval_shape(
        lambda: InvertedResidual(8, 16, stride=2, expand_ratio=6, rngs=nnx.Rngs(0))
    )
    assert block.conv.layers[1].layers[0].groups == 48  # depthwise
    assert not block.use_res_connect
    y = nnx.eval_shape(lambda b, x: b(x), block, jax.ShapeDtypeStruct((1, 9, 9, 8), jnp.float32))
    assert y.shape == (1, 5, 5, 16)
    assert BasicBlock.expansion == 1 and Bottleneck.expansion == 4


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda r: InvertedResidual(8, 8, stride=3, rngs=r),
            ValueError,
            r"InvertedResidual: stride must be 1 or 2, got 3",
        ),
        (
            lambda r: InvertedResidual(8, 8, expand_ratio=0.5, rngs=r),
            ValueError,
            r"InvertedResidual: expand_ratio must be a number >= 1, got 0.5",
        ),
        (
            lambda r: InvertedResidual(8, 8, se_ratio=2.0, rngs=r),
            ValueError,
            r"InvertedResidual: se_ratio must be in \(0, 1\] or None, got 2.0",
        ),
        (
            lambda r: InvertedResidual(8.0, 8, rngs=r),
            TypeError,
            r"InvertedResidual: in_features must be an int, got 8.0",
        ),
        (
            lambda r: BasicBlock(4, 0, rngs=r),
            ValueError,
            r"BasicBlock: features must be >= 1, got 0",
        ),
        (
            lambda r: BasicBlock(4, 4, stride="2", rngs=r),
            TypeError,
            r"BasicBlock: stride must be an int, got '2'",
        ),
        (
            lambda r: Bottleneck(4, 4, groups=1.5, rngs=r),
            TypeError,
            r"Bottleneck: groups must be an int, got 1.5",
        ),
        (
            lambda r: SqueezeExcitation(4, 2, activation="relu", rngs=r),
            TypeError,
            r"SqueezeExcitation: activation must be callable, got 'relu'",
        ),
        (
            lambda r: SqueezeExcitation(4, 0, rngs=r),
            ValueError,
            r"SqueezeExcitation: squeeze_features must be >= 1, got 0",
        ),
        (lambda r: Residual("conv"), TypeError, r"Residual: module must be a callable nnx.Module"),
        (
            lambda r: Residual(Conv(2, 2, 1, rngs=r), projection=3),
            TypeError,
            r"Residual: projection must be a callable nnx.Module or None, got 3",
        ),
    ],
)
def test_constructor_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(nnx.Rngs(0))


def test_call_errors():
    x = jax.ShapeDtypeStruct((1, 4, 4, 4), jnp.float32)
    mismatch = nnx.eval_shape(lambda: Residual(Conv(4, 8, 1, rngs=nnx.Rngs(0))))
    with pytest.raises(
        ValueError,
        match=r"Residual: module output shape must equal the skip "
        r"path's shape \(pass a projection\), got "
        r"\(1, 4, 4, 8\) and \(1, 4, 4, 4\)",
    ):
        nnx.eval_shape(lambda b, x: b(x), mismatch, x)
    se = nnx.eval_shape(lambda: SqueezeExcitation(4, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError,
        match=r"SqueezeExcitation: x must be \(N, H, W, C\), got "
        r"x.shape=\(1, 4, 4\)",
    ):
        nnx.eval_shape(lambda b, x: b(x), se, jax.ShapeDtypeStruct((1, 4, 4), jnp.float32))
