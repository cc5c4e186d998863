"""Importing PyTorch weights: a torch network's state_dict into cnn_jax, equal logits.

A LeNet-5 is written in PyTorch (``torch.nn``, names ``conv1`` ... ``fc3``), given
random weights, and copied into ``cj.models.LeNet5`` with
``cj.models.load_torch_state_dict`` (conv weights OIHW -> HWIO, linear weights
transposed, names matched; every key on both sides must match). Both networks then
map the same images (NCHW for torch, NHWC for cnn_jax) to the same logits, up to
float rounding. The same call loads torchvision's checkpoints into the zoo's
ResNets, VGGs, EfficientNet and ConvNeXt. Needs PyTorch (CPU build).

    python examples/14_import_pytorch_weights.py [--quick] [--out DIR]
"""

import _shared
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import cnn_jax as cj


class TorchLeNet5(nn.Module):
    """LeNet-5 in PyTorch, with the attribute names of ``cj.models.LeNet5`` (that is all
    ``load_torch_state_dict`` needs: weights are matched by name)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        for conv in (self.conv1, self.conv2):
            x = nn.functional.max_pool2d(torch.relu(conv(x)), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "14_import_pytorch_weights")
    torch.manual_seed(0)
    torch_model = TorchLeNet5().eval()
    model = cj.models.LeNet5(10, in_channels=1, rngs=_shared.rngs(1))
    cj.models.load_torch_state_dict(model, torch_model.state_dict())

    images = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(images)).numpy()
    ours = np.asarray(model(jnp.asarray(images.transpose(0, 2, 3, 1))))
    diff = float(np.abs(ours - theirs).max())
    print(f"max |logit difference| over {len(images)} images: {diff:.2e}")
    print("PyTorch :", np.round(theirs[0], 4))
    print("cnn_jax :", np.round(ours[0], 4))

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(theirs.ravel(), ours.ravel(), s=10)
    lim = np.abs(theirs).max() * 1.1
    ax.plot([-lim, lim], [-lim, lim], color="0.7", ls="--")
    ax.set(
        xlabel="PyTorch logits",
        ylabel="cnn_jax logits",
        title=f"same weights, max difference {diff:.1e}",
    )
    _shared.save(fig, args, "logits.png")
    return {"max_difference": diff}


if __name__ == "__main__":
    main()
