#!/usr/bin/env bash
# The GPU pass in one call: every GPU suite of `python -m benchmarks` (whole networks
# first, then convolutions, transposed convolutions, pools; float32 and bfloat16;
# PyTorch channels_last + cuDNN, and torch.compile for ResNet-50) within 8 minutes,
# the results table printed last.
#
#   bash benchmarks/gpu.sh             # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu.sh --dry-run   # the same code path on a CPU, tiny shapes (~3 min)
#   bash benchmarks/gpu.sh --tf32      # extra flags go to python -m benchmarks
#
# Needs only what the GPU image has (jax with CUDA, flax, optax, torch, torchvision):
# cnn_jax runs from this checkout (PYTHONPATH, no `pip install -e .`), Equinox is timed
# if it happens to be importable and skipped otherwise, nothing is installed.
# Results: benchmarks/results/<gpu>-<date>.json and .md (the table printed at the end).
#
# Time: the run starts no new case after BUDGET_S seconds (each suite gets its share;
# skipped cases are listed as such), and is stopped with SIGINT at HARD_S seconds,
# which still writes and prints what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and PyTorch share the GPU: JAX allocates as it needs (no 75% up front), up to
# half of the memory; PyTorch's caching allocator has the rest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
export TF_CPP_MIN_LOG_LEVEL=2
BUDGET_S=${BUDGET_S:-320}
HARD_S=${HARD_S:-420}
SUITES=(--suite models --suite ops --suite transpose --suite pool)

if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  # The GPU plan (bf16 and f32, the GPU's peers and torch.compile of the networks) with
  # the quick plan's shapes, on whatever device this is: every GPU code path but CUDA's.
  exec timeout --signal=INT --kill-after=30 900 \
    python -m benchmarks --plan gpu --quick --torch-compile models "${SUITES[@]}" \
    --out "${TMPDIR:-/tmp}/cnn_jax_gpu_dry_run" "$@"
fi

# Preflight: fail in seconds, not minutes, on a machine that is not what we expect.
python - <<'EOF'
import sys
import jax
import torch
backend = jax.default_backend()
print(f"preflight: jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind}), "
      f"torch {torch.__version__} cuda={torch.cuda.is_available()}", flush=True)
if backend != "gpu":
    sys.exit("gpu.sh: JAX sees no GPU (backend %r); use --dry-run on a CPU" % backend)
if not torch.cuda.is_available():
    print("preflight: PyTorch has no CUDA: its columns will be CPU times", flush=True)
import cnn_jax, flax, optax  # noqa: E401,F401  (the checkout's cnn_jax imports)
EOF

exec timeout --signal=INT --kill-after=30 "$HARD_S" \
  python -m benchmarks "${SUITES[@]}" --budget-s "$BUDGET_S" "$@"
