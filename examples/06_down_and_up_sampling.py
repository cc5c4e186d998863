"""Down- and up-sampling, as the first seed shows: stride, nearest upsampling, transposed conv.

A stride-2 convolution equals the stride-1 convolution keeping every second output
(``conv(x, stride=2) == conv(x)[::2]``). Nearest upsampling repeats each value
(``np.repeat``) to restore the length; a transposed convolution with the same kernel
and stride restores the shape too, with learned (here: the kernel's) values instead
of copies, but it does not invert the convolution. Uses the seed's f (a step at
8-9) and g = [0, 1, -1, 0] in 1-D, channels_first like PyTorch's Conv1d.

    python examples/06_down_and_up_sampling.py [--quick] [--out DIR]
"""

import _shared
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import cnn_jax as cj


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "06_down_and_up_sampling")
    f = jnp.zeros((1, 1, 12)).at[0, 0, 8].set(1.0).at[0, 0, 9].set(-1.0)  # (N, C, L)
    g = jnp.array([0.0, 1.0, -1.0, 0.0])[None, None]  # (C_out, C_in, K)
    cf = dict(layout="channels_first")
    full = cj.conv(f, g, **cf)  # stride 1: 12 - 4 + 1 = 9
    down = cj.conv(f, g, stride=2, **cf)  # stride 2: 5
    nearest = cj.upsample(down, 2, **cf)  # 10: each value twice
    # PyTorch's ConvTranspose1d weight is (C_in, C_out, K); output (5 - 1) * 2 + 4 = 12.
    restored = cj.conv_transpose(down, g, stride=2, **cf)
    for name, y in [
        ("f", f),
        ("stride 1", full),
        ("stride 2", down),
        ("nearest x2", nearest),
        ("transposed conv", restored),
    ]:
        print(f"{name:16s}{np.asarray(y)[0, 0]}")

    fig, axes = plt.subplots(5, 1, figsize=(7, 8), sharex=True)
    fig.subplots_adjust(hspace=0.6)
    for ax, (name, y) in zip(
        axes,
        [
            ("input f (12)", f),
            ("conv, stride 1 (9)", full),
            ("conv, stride 2 (5) = every 2nd", down),
            ("nearest upsampling x2 (10)", nearest),
            ("transposed conv, stride 2 (12)", restored),
        ],
    ):
        ax.stem(np.asarray(y)[0, 0], basefmt=" ")
        ax.set_title(name, fontsize=9)
    _shared.save(fig, args, "sampling.png")
    return {
        "stride_is_subsampling": bool(np.array_equal(np.asarray(down), np.asarray(full)[..., ::2])),
        "nearest_is_repeat": bool(
            np.array_equal(np.asarray(nearest), np.repeat(np.asarray(down), 2, axis=-1))
        ),
        "transposed_restores_length": restored.shape == f.shape,
        "transposed_is_not_inverse": bool(not np.allclose(np.asarray(restored), np.asarray(f))),
    }


if __name__ == "__main__":
    main()
