"""Convolution by hand, with numpy and with cnn_jax: and why deep learning's differs.

The first seed's example: f has a step (+1, -1) at positions 8-9, g = [0, 1, -1, 0]
has the same shape. The discrete convolution (f * g)[n] = sum_m f[m] g[n - m] is
computed with a double loop, with ``np.convolve`` and with
``cj.conv(..., padding="full", flip=True)``: all three agree. Without ``flip`` cnn_jax
(like PyTorch) computes the cross-correlation sum_m f[m + n] g[m], which is
``np.correlate``: the kernel is not flipped, so the response to the matching step is
reversed in sign and position. For a learned kernel the difference does not matter
(the network learns the flipped kernel), which is why CNNs skip the flip.

    python examples/01_convolution_by_hand.py [--quick] [--out DIR]
"""

import _shared
import matplotlib.pyplot as plt
import numpy as np

import cnn_jax as cj


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "01_convolution_by_hand")
    f = np.zeros(12)
    f[8], f[9] = 1.0, -1.0
    g = np.array([0.0, 1.0, -1.0, 0.0])

    # The seed's double loop over shifts, with zero margins so every index exists.
    by_hand = np.zeros(len(f) + len(g) - 1)
    for n in range(len(by_hand)):
        for m in range(len(f)):
            if 0 <= n - m < len(g):
                by_hand[n] += f[m] * g[n - m]
    numpy_conv = np.convolve(f, g)  # "full" mode: every overlap, length 12 + 4 - 1 = 15
    # cnn_jax: (N, C, L) and (O, I, K) in channels_first, like PyTorch's conv1d.
    x, k = f[None, None].astype(np.float32), g[None, None].astype(np.float32)
    cj_conv = np.asarray(cj.conv(x, k, padding="full", flip=True, layout="channels_first"))[0, 0]
    cj_corr = np.asarray(cj.conv(x, k, padding="full", layout="channels_first"))[0, 0]
    numpy_corr = np.correlate(f, g, mode="full")
    print("by hand       ", by_hand)
    print("np.convolve   ", numpy_conv)
    print("cj.conv flip  ", cj_conv)
    print("cj.conv       ", cj_corr, "(cross-correlation)")
    print("np.correlate  ", numpy_corr)

    fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
    for ax, (title, values) in zip(
        axes,
        [
            ("f and g", None),
            ("convolution (flip=True)", cj_conv),
            ("cross-correlation (default)", cj_corr),
        ],
    ):
        if values is None:
            ax.stem(f, linefmt="C0-", markerfmt="C0o", basefmt=" ", label="f")
            ax.stem(np.arange(len(g)), g, linefmt="C1-", markerfmt="C1s", basefmt=" ", label="g")
            ax.legend()
        else:
            ax.stem(values, basefmt=" ")
        ax.set_title(title)
    _shared.save(fig, args, "convolution.png")
    return {
        "hand_equals_numpy": bool(np.allclose(by_hand, numpy_conv)),
        "flip_equals_numpy": bool(np.allclose(cj_conv, numpy_conv, atol=1e-6)),
        "plain_equals_correlate": bool(np.allclose(cj_corr, numpy_corr, atol=1e-6)),
        "differ": bool(not np.allclose(cj_conv, cj_corr)),
    }


if __name__ == "__main__":
    main()
