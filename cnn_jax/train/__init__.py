"""Training: data sets, augmentation, the jitted loop, checkpoints and sharding.

The ``cnn-jax`` command is a thin layer over these names::

    from cnn_jax.train import TrainConfig, train_and_evaluate
    history = train_and_evaluate(TrainConfig(epochs=5, out="runs/digits"))
"""

from cnn_jax.train._augment import augment as augment
from cnn_jax.train._augment import random_crop as random_crop
from cnn_jax.train._augment import random_flip as random_flip
from cnn_jax.train._checkpoint import Checkpointer as Checkpointer
from cnn_jax.train._checkpoint import CheckpointError as CheckpointError
from cnn_jax.train._config import DATASETS as DATASETS
from cnn_jax.train._config import MODELS as MODELS
from cnn_jax.train._config import TrainConfig as TrainConfig
from cnn_jax.train._data import Dataset as Dataset
from cnn_jax.train._data import DatasetError as DatasetError
from cnn_jax.train._data import load_cifar10 as load_cifar10
from cnn_jax.train._data import load_dataset as load_dataset
from cnn_jax.train._data import load_digits as load_digits
from cnn_jax.train._data import load_idx as load_idx
from cnn_jax.train._data import load_image_folder as load_image_folder
from cnn_jax.train._data import make_shapes as make_shapes
from cnn_jax.train._data import read_idx as read_idx
from cnn_jax.train._experiment import create_model as create_model
from cnn_jax.train._experiment import load_images as load_images
from cnn_jax.train._experiment import load_run as load_run
from cnn_jax.train._experiment import train_and_evaluate as train_and_evaluate
from cnn_jax.train._loop import History as History
from cnn_jax.train._loop import NonFiniteLossError as NonFiniteLossError
from cnn_jax.train._loop import evaluate as evaluate
from cnn_jax.train._loop import fit as fit
from cnn_jax.train._loop import make_optimizer as make_optimizer
from cnn_jax.train._loop import predict as predict
from cnn_jax.train._sharding import data_sharded as data_sharded
from cnn_jax.train._sharding import initialize_distributed as initialize_distributed
from cnn_jax.train._sharding import make_mesh as make_mesh
from cnn_jax.train._sharding import replicated as replicated
from cnn_jax.train._sharding import shard_batch as shard_batch

__all__ = [
    "augment", "Checkpointer", "CheckpointError", "create_model", "data_sharded", "DATASETS",
    "Dataset", "DatasetError", "evaluate", "fit", "History", "initialize_distributed",
    "load_cifar10", "load_dataset", "load_digits", "load_idx", "load_image_folder",
    "load_images", "load_run", "make_mesh", "make_optimizer", "make_shapes", "MODELS",
    "NonFiniteLossError", "predict", "random_crop", "random_flip", "read_idx", "replicated",
    "shard_batch", "TrainConfig", "train_and_evaluate",
]
