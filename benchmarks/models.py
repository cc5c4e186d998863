"""The ``models`` suite: training steps of whole networks, cnn_jax against PyTorch.

One training step = forward, softmax cross-entropy, backward, and an SGD update
(momentum 0.9, Nesterov, weight decay 5e-4 on kernels only: ``cnn_jax.train``'s
``make_optimizer`` with ``optimizer="sgd"``, and ``torch.optim.SGD`` with the same
parameter groups). Data is one synthetic batch already on the device, so the input
pipeline is not timed. The JAX step is jitted with its state donated, as
``cnn_jax.train`` does; PyTorch runs channels_last, eagerly and (GPU) under
``torch.compile``; bfloat16 is cnn_jax's ``dtype=bfloat16`` models (float32
parameters and BatchNorm statistics) against ``torch.autocast(bfloat16)``.

Reported per step: time, images/s, and (from ``cnn_jax.summary``'s forward FLOPs,
training = 3 x forward) achieved FLOP/s and MFU against the matmul peak measured
in the same run.

Cases: CPU: ResNet-18 on CIFAR-size 32x32 images, MobileNetV2 and U-Net at small
sizes, float32; MobileNetV2 also with its depthwise layers routed through
``benchmarks/depthwise_prototype.py`` (column ``prototype``). GPU: ResNet-50 at 224x224 in bfloat16 (the 3,000 images/s target),
ResNet-18 (CIFAR), MobileNetV2 at 224 and U-Net at 256, bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from benchmarks import _peers as P
from benchmarks import _torch_models
from benchmarks._harness import Impl, jax_wait
from benchmarks._suite import run_guarded, time_case

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


@dataclasses.dataclass(frozen=True)
class ModelCase:
    key: str  # resnet18_cifar, resnet50, mobilenet_v2, unet
    batch: int
    hw: int
    dtype: str
    num_classes: int = 10
    width: dict = dataclasses.field(default_factory=dict)  # extra model arguments
    compile: bool = True  # time torch.compile too (when the run's torch_compile allows)

    @property
    def task(self) -> str:
        return "segment" if self.key == "unet" else "classify"

    def name(self) -> str:
        short = {"float32": "f32", "bfloat16": "bf16"}[self.dtype]
        extra = "".join(f"_{k}{v}" for k, v in self.width.items())
        return f"train_{self.key}{extra}_{self.batch}x{self.hw}x{self.hw}x3_{short}"


def cases(plan: str, quick: bool) -> list[ModelCase]:
    if quick:  # the whole-network code path with the smallest graph that still runs it
        dtype = "bfloat16" if plan == "gpu" else "float32"
        return [ModelCase("resnet10_cifar", 4, 16, dtype, width={"width": 8})]
    if plan == "gpu":
        # torch.compile costs a minute or more per network: the 8-minute GPU pass
        # affords it for ResNet-50 only.
        return [
            ModelCase("resnet50", 256, 224, "bfloat16", num_classes=1000),
            ModelCase("mobilenet_v2", 256, 224, "bfloat16", num_classes=1000, compile=False),
            ModelCase("resnet18_cifar", 512, 32, "bfloat16", compile=False),
            ModelCase(
                "unet",
                32,
                256,
                "bfloat16",
                num_classes=2,
                compile=False,
                width={"base_width": 64, "depth": 4},
            ),
        ]
    return [
        ModelCase("resnet18_cifar", 32, 32, "float32"),
        ModelCase("mobilenet_v2", 8, 128, "float32", num_classes=1000),
        ModelCase("unet", 4, 128, "float32", num_classes=2, width={"base_width": 16, "depth": 3}),
    ]


def _jax_model(c: ModelCase):
    """The cnn_jax model, its parameters initialised in one compiled program (at XLA's
    -O0, as ``cnn_jax.train.create_model`` does: op-by-op it takes tens of seconds)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnn_jax import models

    kw = dict(dtype=jnp.bfloat16 if c.dtype == "bfloat16" else None)
    if c.key == "resnet18_cifar":
        build = functools.partial(models.ResNet18, c.num_classes, small_input=True, **c.width)
    elif c.key == "resnet10_cifar":  # the quick run's: ResNet-18 with one block per stage
        build = functools.partial(
            models.ResNet, c.num_classes, stage_sizes=(1, 1, 1, 1), small_input=True, **c.width
        )
    elif c.key == "resnet50":
        build = functools.partial(models.ResNet50, c.num_classes, **c.width)
    elif c.key == "mobilenet_v2":
        build = functools.partial(models.MobileNetV2, c.num_classes, **c.width)
    else:
        build = functools.partial(models.UNet, c.num_classes, **c.width)
    graphdef = []

    def init():
        g, state = nnx.split(build(**kw, rngs=nnx.Rngs(0)))
        graphdef.append(g)
        return state

    lowered = jax.jit(init).lower()
    try:
        compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # noqa: BLE001 - a backend without that option
        compiled = lowered.compile()
    return nnx.merge(graphdef[0], compiled())


def _prototype_depthwise_conv(x, kernel, bias=None, **options):
    """``cj.conv``'s signature; depthwise 2-D channels_last convolutions (groups == C,
    no dilation, zero padding given as ints) go to ``benchmarks.depthwise_prototype``."""
    import cnn_jax as cj
    from benchmarks.depthwise_prototype import depthwise_conv

    c, pad = x.shape[-1], options["padding"]
    if (
        options["layout"] == "channels_last"
        and x.ndim == 4
        and options["groups"] == c
        and kernel.shape[2:] == (1, c)
        and set(options["dilation"]) == {1}
        and options["padding_mode"] == "zeros"
        and not options["flip"]
        and not isinstance(pad, str)
    ):
        y = depthwise_conv(x, kernel, options["stride"], pad)
        return y if bias is None else y + bias
    return cj.conv(x, kernel, bias, **options)


def _use_prototype_depthwise(model) -> int:
    """Route the depthwise layers of ``model`` through the prototype (a benchmark-only
    patch of those layer instances); returns how many were routed."""
    from flax import nnx

    from cnn_jax.nn import Conv

    count = 0
    for _, module in nnx.iter_graph(model):
        if (
            isinstance(module, Conv)
            and module.groups > 1
            and module.groups == module.in_features == module.out_features
        ):
            module._operation = _prototype_depthwise_conv
            count += 1
    return count


def _torch_model(c: ModelCase):
    if c.key == "resnet10_cifar":  # hand-written: torchvision's ResNet has no width
        ref = _torch_models._ref()
        return (
            ref.ResNet(
                ref.BasicBlock, (1, 1, 1, 1), num_classes=c.num_classes, small_input=True, **c.width
            ),
            "tests/_torchvision_ref.py",
        )
    if c.key == "resnet18_cifar":
        return _torch_models.resnet(18, c.num_classes, small_input=True)
    if c.key == "resnet50":
        return _torch_models.resnet(50, c.num_classes)
    if c.key == "mobilenet_v2":
        return _torch_models.mobilenet_v2(c.num_classes, **c.width)
    return _torch_models.unet(c.num_classes, 3, c.width["base_width"], c.width["depth"])


def _jax_step(model, c: ModelCase):
    """``(step, state)``: the jitted, state-donating training step of ``cnn_jax.train``'s
    shape (parameters and the rest split once; BatchNorm statistics updated)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from cnn_jax.train import TrainConfig, make_optimizer

    config = TrainConfig(
        optimizer="sgd", lr=LR, weight_decay=WEIGHT_DECAY, schedule="constant", warmup=0.0, epochs=1
    )
    tx = make_optimizer(config, steps_per_epoch=1000)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    compute = jnp.bfloat16 if c.dtype == "bfloat16" else jnp.float32

    def step(state, images, labels):
        params, rest, opt_state = state
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            logits = model(images.astype(compute)).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        # nnx.value_and_grad (not jax's), so BatchNorm may update its statistics in place.
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        new_rest = nnx.split(model, nnx.Param, ...)[2]
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_rest, opt_state), loss

    state = (params, rest, tx.init(params))
    return jax.jit(step, donate_argnums=0), state


def _torch_step(ctx, model, c: ModelCase, x, y, compiled: bool):
    torch = ctx.torch
    model = model.to(ctx.torch_device).to(memory_format=torch.channels_last).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
    )
    forward = torch.compile(model) if compiled else model
    device_type = "cuda" if ctx.torch_device == "cuda" else "cpu"
    bf16 = c.dtype == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def run(ctx) -> list[dict]:
    rows = []
    for case in cases(ctx.plan, ctx.quick):
        if case.dtype not in ctx.dtypes:
            continue
        rows += run_guarded(ctx, "models", case.name(), lambda case=case: _run_case(ctx, case))
    return rows


def _run_case(ctx, c: ModelCase) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import cnn_jax as cj

    base = {"suite": "models", "case": c.name(), "what": c.key, "dtype": c.dtype}
    if ctx.time_left() <= 0:
        ctx.log(f"  {c.name():<44} skipped: time budget spent")
        return [
            dict(
                base,
                **{"pass": "train step"},
                impls={},
                ratios={},
                skipped="time budget of the run spent",
            )
        ]
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(c.batch, c.hw, c.hw, 3)).astype(np.float32)
    label_shape = (c.batch, c.hw, c.hw) if c.task == "segment" else (c.batch,)
    labels = rng.integers(0, c.num_classes, label_shape).astype(np.int32)

    model = _jax_model(c)
    summary = cj.summary(model, (c.hw, c.hw, 3))
    step, state = _jax_step(model, c)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    holder = {"state": state}

    def jax_run():
        holder["state"], loss = step(holder["state"], x, y)
        holder.setdefault("first_loss", loss)
        return loss

    impls = [Impl("cnn_jax", jax_run, jax_wait)]
    info = {"params_cnn_jax": summary.total_params, "forward_flops_per_image": summary.total_flops}
    if c.key == "mobilenet_v2" and ctx.plan == "cpu":  # the same network, prototype depthwise
        proto = _jax_model(c)
        info["prototype_depthwise_layers"] = _use_prototype_depthwise(proto)
        pstep, pstate = _jax_step(proto, c)
        pholder = {"state": pstate}

        def proto_run():
            pholder["state"], loss = pstep(pholder["state"], x, y)
            pholder.setdefault("first_loss", loss)
            return loss

        impls.append(Impl("prototype", proto_run, jax_wait))
    if ctx.torch is not None:
        torch = ctx.torch
        tmodel, source = _torch_model(c)
        info["params_torch"] = sum(p.numel() for p in tmodel.parameters())
        info["torch_model"] = source
        tx = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(ctx.torch_device)
        tx = tx.contiguous(memory_format=torch.channels_last)
        ty = torch.from_numpy(labels.astype(np.int64)).to(ctx.torch_device)
        wait = (
            (lambda _: torch.cuda.synchronize()) if ctx.torch_device == "cuda" else (lambda _: None)
        )
        if ctx.torch_device == "cpu":
            for n in ctx.torch_threads:
                impls.append(
                    Impl(
                        f"torch@{n}",
                        _torch_step(ctx, tmodel, c, tx, ty, False),
                        wait,
                        before=lambda n=n: torch.set_num_threads(n),
                    )
                )
        else:
            impls.append(Impl("torch", _torch_step(ctx, tmodel, c, tx, ty, False), wait))
        if ctx.torch_compile == "all" or (ctx.torch_compile == "models" and c.compile):
            torch._dynamo.reset()
            tmodel2, _ = _torch_model(c)
            tmodel2.load_state_dict(tmodel.state_dict())
            impls.append(
                Impl(
                    "torch_compile",
                    _torch_step(ctx, tmodel2, c, tx, ty, True),
                    wait,
                    before=P.all_threads(ctx),
                )
            )
    flops = 3 * summary.total_flops * c.batch
    ctx.log(
        f"  {c.name()}: {summary.total_params:,} parameters (PyTorch twin "
        f"{info.get('params_torch', 0):,}), {summary.total_flops / 1e9:.2f} GFLOP forward "
        f"per image"
    )
    rows = time_case(ctx, base, {"train step": impls}, flops={"train step": flops}, items=c.batch)
    if "prototype_depthwise_layers" in info and "first_loss" in pholder:
        # Same initial parameters and batch: the first steps' losses must agree.
        info["prototype_first_loss_rel_err"] = abs(
            float(pholder["first_loss"]) / float(holder["first_loss"]) - 1
        )
    rows[0].update(info)
    holder.clear()  # the train state (jax_run still holds the dict, so no del)
    del impls
    jax.clear_caches()
    if ctx.torch is not None and ctx.torch_device == "cuda":
        ctx.torch.cuda.empty_cache()  # the next network's PyTorch twin starts from free memory
    return rows
