"""The benchmark command runs, and what it writes can be trusted.

``python -m benchmarks --quick`` runs once (a subprocess, about a minute on 2 cores):
its JSON must have every suite and every case of the quick plan, each with finite
positive times and ratios, and every peer must have computed the same forward
values as cnn_jax; ``--compare`` of that file with itself must print ratios of 1.00,
through ``python -m benchmarks`` and through ``cnn-jax bench``. The depthwise
prototype measured there is checked against ``cj.depthwise_conv`` here.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax as cj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmarks/ is not part of the installed package

from benchmarks import models, ops, pool, transpose  # noqa: E402
from benchmarks.depthwise_prototype import depthwise_conv  # noqa: E402

SUITE_CASES = {
    "ops": ops.cases("cpu", True),
    "pool": pool.cases("cpu", True),
    "transpose": transpose.cases("cpu", True),
}


def _env():
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")


def test_quick_run(tmp_path, capsys, monkeypatch):
    """One test, so that the one-minute run happens once even when xdist spreads the
    tests of this file over workers."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("*.json")
    run = (path, json.loads(path.read_text()), proc.stdout)
    _has_every_suite_and_case(run)
    _times_and_ratios_are_finite_and_positive(run)
    _every_peer_computes_the_same_forward_values(run)
    _models_twins_have_the_same_parameter_count(run)
    _compare_with_itself_is_all_ones(run, capsys, monkeypatch)


def _has_every_suite_and_case(quick_run):
    path, results, stdout = quick_run
    assert path.name.startswith("cpu-")
    assert set(results["suites"]) == {"ops", "pool", "transpose", "models", "train"}
    for suite, cases in SUITE_CASES.items():
        names = [r["case"] for r in results["suites"][suite]]
        expected = [c.name("float32") for c in cases for _ in ("fwd", "fwd+bwd")]
        assert names == expected, suite
        assert [r["pass"] for r in results["suites"][suite]] == ["fwd", "fwd+bwd"] * len(cases)
    model_names = [r["case"] for r in results["suites"]["models"]]
    assert model_names == [c.name() for c in models.cases("cpu", True)]
    assert [r["case"][:15] for r in results["suites"]["train"]] == ["train_fit_lenet"]
    assert results["records"]["train"]["help"]["help_s"] > 0
    env = results["environment"]
    assert env["jax"] == jax.__version__ and env["platform"] == "cpu" and env["torch"]
    assert results["peaks"]["float32"]["flops"] > 0
    assert "## Targets" in stdout and stdout.rstrip().endswith("in this run**")


def _times_and_ratios_are_finite_and_positive(quick_run):
    _, results, _ = quick_run
    peers = {
        "ops": {"cnn_jax", "lax", "flax", "torch", "prototype"},
        "pool": {"cnn_jax", "lax", "flax", "torch"},
        "transpose": {"cnn_jax", "lax", "flax", "torch"},
        "models": {"cnn_jax", "torch"},
        "train": {"cnn_jax", "torch"},
    }
    for suite, rows in results["suites"].items():
        for row in rows:
            assert not row.get("skipped"), row["case"]
            impls = row["impls"]
            assert peers[suite] - {"prototype"} <= set(impls), (row["case"], impls)
            for name, t in impls.items():
                assert "error" not in t, (row["case"], name, t)
                for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms"):
                    assert math.isfinite(t[key]) and t[key] > 0, (row["case"], name, key)
                assert t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]
            others = set(impls) - {"cnn_jax"}
            assert {f"cnn_jax/{o}" for o in others} <= set(row["ratios"])
            for key, r in row["ratios"].items():
                assert math.isfinite(r["ratio"]) and r["ratio"] > 0, (row["case"], key)
                assert r["lo"] <= r["ratio"] <= r["hi"]
                assert r["verdict"] in ("faster", "slower", "parity", "single run")
    dw = [r for r in results["suites"]["ops"] if r["case"].startswith("dwconv")]
    assert dw and all("prototype/torch" in r["ratios"] for r in dw)


def _every_peer_computes_the_same_forward_values(quick_run):
    _, results, _ = quick_run
    checked = 0
    for suite in ("ops", "pool", "transpose"):
        for row in results["suites"][suite]:
            for name, t in row["impls"].items():
                if "rel_err_vs_cnn_jax" in t:
                    assert t["rel_err_vs_cnn_jax"] < 1e-4, (row["case"], name)
                    checked += 1
    assert checked >= 3 * sum(len(c) for c in SUITE_CASES.values())


def _models_twins_have_the_same_parameter_count(quick_run):
    _, results, _ = quick_run
    for row in results["suites"]["models"]:
        assert row["params_cnn_jax"] == row["params_torch"], row["case"]
        assert row["impls"]["cnn_jax"]["items_per_s"] > 0


def _compare_lines(text):
    return [line for line in text.splitlines() if line.startswith("| ") and "B/A" not in line]


def _compare_with_itself_is_all_ones(quick_run, capsys, monkeypatch):
    path, results, _ = quick_run
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--compare", str(path), str(path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = _compare_lines(proc.stdout)
    timings = sum(len(r["impls"]) for rows in results["suites"].values() for r in rows)
    assert len(lines) == timings
    assert all(line.split("|")[-2].strip() in ("~1.00", "1.00?") for line in lines), lines[:5]
    assert "geometric mean" in proc.stdout and ": 1.00 (" in proc.stdout
    # The same through the cnn-jax command (in-process: --compare imports no jax).
    from cnn_jax.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["bench", "--compare", str(path), str(path)]) == 0
    assert _compare_lines(capsys.readouterr().out) == lines


def test_cnn_jax_bench_outside_a_checkout_names_python_m_benchmarks(tmp_path, monkeypatch, capsys):
    from cnn_jax.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != ROOT])
    monkeypatch.delitem(sys.modules, "benchmarks", raising=False)
    monkeypatch.delitem(sys.modules, "benchmarks._cli", raising=False)
    assert main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnn-jax bench: error: ") and "python -m benchmarks" in err


def test_cnn_jax_bench_help_imports_no_jax():
    code = (
        "import sys\nfrom cnn_jax.cli import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "python -m benchmarks" in proc.stdout and "--compare" in proc.stdout


@pytest.mark.parametrize(
    "shape,k,stride,padding",
    [
        ((2, 9, 11, 5), 3, 1, 1),
        ((2, 9, 11, 5), 3, 2, 1),
        ((1, 8, 8, 3), 5, 2, 2),
        ((1, 7, 6, 4), 5, 1, 2),
        ((2, 10, 9, 3), 3, (2, 1), ((0, 1), (2, 0))),
        ((1, 6, 6, 2), 2, 2, 0),
        ((1, 5, 5, 2), 1, 3, 0),
    ],
)
def test_depthwise_prototype_equals_cnn_jax_values_and_gradients(shape, k, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
    ref = lambda x, w: cj.depthwise_conv(x, w, stride=stride, padding=padding)  # noqa: E731
    new = lambda x, w: depthwise_conv(x, w, stride=stride, padding=padding)  # noqa: E731
    y_ref, pull_ref = jax.vjp(ref, x, w)
    y_new, pull_new = jax.vjp(jax.jit(new), x, w)
    np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    for got, want in zip(pull_new(ct), pull_ref(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_prototype_refuses_a_kernel_that_is_not_depthwise():
    with pytest.raises(ValueError, match=r"depthwise_conv: kernel must be \(kh, kw, 1, C=3\)"):
        depthwise_conv(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 3)))
