"""Export a trained run folder (``cnn-jax train --out RUN``): what ``cnn-jax export`` calls."""

from __future__ import annotations

import importlib
import json
import os

from flax import nnx

from cnn_jax.export._onnx import export_onnx
from cnn_jax.export._stablehlo import export_stablehlo
from cnn_jax.export._torch import export_torch
from cnn_jax.export._trace import check_batch

FORMATS = ("stablehlo", "onnx", "torch")
_FILE = {"stablehlo": "model.stablehlo", "onnx": "model.onnx", "torch": "model.pt"}
_NEEDS = {"stablehlo": (), "onnx": ("onnx",), "torch": ("safetensors", "torch")}


def export_run(
    out: str, format: str, *, batch: int | None = None, dest: str | None = None, which: str = "best"
) -> list[str]:
    """Export the model of a run folder in one format; returns the files written.

    Args:
      out: the run folder (``run.json`` and ``checkpoints/``), as for ``load_run``.
      format: ``"stablehlo"`` (``jax.export``), ``"onnx"`` or ``"torch"`` (a
        torchvision-named ``state_dict`` as ``.pt`` and ``.safetensors``).
      batch: a fixed batch size; None (default) exports a symbolic one. Only for
        ``"stablehlo"`` and ``"onnx"``.
      dest: the file to write (default ``OUT/export/model.stablehlo``, ``model.onnx``,
        ``model.pt``; for ``"torch"`` the ``.safetensors`` file goes beside it).
      which: ``"best"`` or ``"latest"`` checkpoint.

    The exported program takes the run's images as float32 ``(N, H, W, C)`` in
    ``[0, 1]`` (channels last, ``H, W, C`` from ``run.json``) and returns its logits
    (``(N, classes)``, or ``(N, H, W, classes)`` for segmentation runs). It computes
    in float32, also for a ``--dtype bfloat16`` run (whose parameters are float32).

    Raises:
      ValueError: an unknown ``format``, or a ``batch`` for ``"torch"``.
      CheckpointError: no run or no checkpoint in ``out``.
      ImportError: the packages of the format are missing.
      NotImplementedError: an op of the model that ONNX cannot express.
    """
    op = "export_run"
    if format not in FORMATS:
        raise ValueError(f"{op}: format must be one of {FORMATS}, got {format!r}")
    batch = check_batch(batch, op)
    if format == "torch" and batch is not None:
        raise ValueError(
            f"{op}: batch must be None for format 'torch' (weights have no "
            f"batch size), got {batch!r}"
        )
    for package in _NEEDS[format]:  # before loading the run: fail fast
        if importlib.util.find_spec(package) is None:
            raise ImportError(
                f"{op}: format {format!r} needs the {package} package; pip "
                f"install 'cnn-jax[export]'" + (" torch" if package == "torch" else "")
            )
    from cnn_jax.train import create_model, load_run

    model, run = load_run(out, which=which)
    shape, config = tuple(run["image_shape"]), run["config"]
    if config.dtype != "float32":
        # A bfloat16 run computes in bf16 on float32 parameters; the export computes in
        # float32 (ONNX's Conv has no bfloat16, and deployment wants the accuracy).
        exported = create_model(
            config.model_name, run["num_classes"], shape, width=config.width, seed=config.seed
        )
        nnx.update(exported, nnx.state(model))
        model = exported
    dest = dest or os.path.join(out, "export", _FILE[format])
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    if format == "stablehlo":
        export_stablehlo(model, shape, batch=batch, path=dest)
        return [dest]
    if format == "onnx":
        meta = {
            "cnn_jax.run_model": run["model"],
            "cnn_jax.dataset": run["dataset"],
            "cnn_jax.task": run["config"].task,
            "cnn_jax.input_range": "[0, 1]",
            "cnn_jax.class_names": json.dumps(run["class_names"]),
        }
        export_onnx(model, shape, batch=batch, path=dest, metadata=meta)
        return [dest]
    return list(export_torch(model, dest))
