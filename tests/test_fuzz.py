"""A fixed sample of the differential fuzzer (``tests/fuzz.py``): cnn_jax against PyTorch
CPU in float64, values and VJPs for valid configs, raise-or-return for invalid ones.

Each config is one test id, so a failure names its index; replay it with
``python -m tests.fuzz --seed 2026 --only INDEX``.
"""

import pytest
from fuzz import _fmt, make_case, run_case

SEED = 2026
N_CONFIGS = 512


@pytest.mark.parametrize("index", range(N_CONFIGS))
def test_fuzz_config_matches_torch(index):
    case = make_case(SEED, index)
    result = run_case(case)
    assert result.status != "mismatch", f"{result.detail} | {_fmt(case.config)}"
