"""Training: registries, data sets, augmentation, the jitted loop, checkpoints, sharding.

The ``cnn-jax`` command is a thin layer over these names::

    from cnn_jax.train import TrainConfig, train_and_evaluate
    history = train_and_evaluate(TrainConfig(epochs=5, out="runs/digits"))

Names are imported on first use (PEP 562), so ``import cnn_jax.train`` and the
registries cost no jax import; ``cnn-jax --help`` stays fast.
"""

import importlib

_EXPORTS = {
    "_augment": ("augment", "crop_offsets", "flip_draws", "random_crop", "random_flip"),
    "_checkpoint": ("Checkpointer", "CheckpointError"),
    "_cache": ("enable_compilation_cache",),
    "_config": ("ConfigError", "TrainConfig"),
    "_data": (
        "Dataset",
        "DatasetError",
        "load_cifar10",
        "load_dataset",
        "load_digits",
        "load_idx",
        "load_image_folder",
        "make_shapes",
        "read_idx",
    ),
    "_experiment": (
        "create_model",
        "load_images",
        "load_run",
        "prepare_data",
        "read_run",
        "resume_config",
        "train_and_evaluate",
    ),
    "_loop": (
        "History",
        "NonFiniteLossError",
        "evaluate",
        "fit",
        "make_optimizer",
        "make_schedule",
        "predict",
    ),
    "_registry": ("DATASETS", "MODELS", "register_dataset", "register_model"),
    "_runfolder": ("RunFolderError",),
    "_signals": ("SignalGuard",),
    "_sharding": (
        "data_sharded",
        "initialize_distributed",
        "local_rows",
        "make_mesh",
        "replicated",
        "shard_batch",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
