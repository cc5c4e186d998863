"""Every script in examples/ runs in its --quick mode and shows what its docstring claims.

The examples are imported and their ``main(argv)`` called in-process (one jax import,
shared compilation caches), each in its own output folder; the checks are the
examples' claims, so an example cannot silently rot.
"""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = sorted(
    f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_")
)


def _run(name, tmp_path):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # for ``import _shared``
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", os.path.join(EXAMPLES, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and len(module.__doc__.strip().splitlines()) > 3, name
    out = tmp_path / name
    result = module.main(["--quick", "--out", str(out)])
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert pngs, f"{name} wrote no figure"
    return result


def _check_01(r):
    assert r == {
        "hand_equals_numpy": True,
        "flip_equals_numpy": True,
        "plain_equals_correlate": True,
        "differ": True,
    }


def _check_02(r):
    assert r == {
        "valid": 26,
        "same": 28,
        "full (padding 2)": 30,
        "full, stride 2": 15,
        "padding 1, stride 2": 14,
        "valid, dilation 2": 24,
    }


def _check_03(r):
    assert r["shape_kept"] and r["edges_sum_to_zero"] and r["blur_keeps_mean"]
    assert r["edge_response_small_on_flat_sky"]


def _check_04(r):
    assert len(r["losses"]) == 10 and r["losses"][-1] < r["losses"][0] / 100
    assert r["error"] < 0.1, r["kernel"]  # within 0.1 of [1, -1]


def _check_05(r):
    assert r["max"] == [[4, 5], [7, 8]] and r["avg"] == [[2, 3], [5, 6]]
    assert r["min"] == [[0, 1], [3, 4]]
    np.testing.assert_allclose(r["L2"][0][0], math.sqrt(0 + 1 + 9 + 16), rtol=1e-6)
    assert r["max 3x3/2, padding 1"] == [[5, 7], [13, 15]]
    assert r["global avg"] == [7.5, -7.5] and r["global max"] == [15, 0]
    assert np.shape(r["adaptive avg -> 3x3"]) == (3, 3)


def _check_06(r):
    assert all(r.values()), r


def _check_07(r):
    assert max(r.values()) < 1e-5, r


def _check_08(r):
    for name, (effective, theoretical) in r.items():
        assert 1 < effective <= theoretical, name


def _check_09(r):
    assert list(r["layers"].values()) == [5_152, 25_632, 128_032, 452_160, 803_600]
    assert r["zoo"]["LeNet5"][0] == 61_706 and r["zoo"]["ResNet18"][0] == 11_689_512


def _check_10(r):
    assert r["final_loss"]["plain"] > r["final_loss"]["residual"], r


def _check_11(r):
    assert r["mean_iou"] > 0.3 and r["losses"][-1] < r["losses"][0], r["mean_iou"]


def _check_12(r):
    assert r["completeness_error"] < 0.05 and r["cam_shape"] == (6, 16, 16)


def _check_13(r):
    std, sep = r["standard"], r["separable"]
    assert sep["params"] < std["params"] / 3 and sep["flops"] < std["flops"] / 3


def _check_14(r):
    assert r["max_difference"] < 1e-4


def _check_train_digits(r):
    assert r["epochs"] == 1 and 0 <= r["accuracy"] <= 1


CHECKS = {
    name: globals()[f"_check_{name.split('_')[0] if name[0].isdigit() else name}"]
    for name in SCRIPTS
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_and_shows_its_claim(name, tmp_path):
    CHECKS[name](_run(name, tmp_path))


def test_readme_lists_every_example():
    with open(os.path.join(EXAMPLES, "README.md")) as f:
        readme = f.read()
    for name in SCRIPTS:
        assert f"{name}.py" in readme, name
