#!/usr/bin/env bash
# kiln's character-level GPT against a JAX/optax reference of the same model (issue 21):
# examples/gpt_reference.rs builds the GPT with a fixed seed, writes its initial weights
# and every batch's window starts, trains on the GPU (lavapipe here); then
# benches/gpt_jax/gpt_jax.py trains the same model from the same weights on the same
# batches on the CPU. Prints the validation loss at each evaluation point for both, their
# difference, and training and generation tokens/s side by side; exits 1 when the final
# validation losses differ by more than TOLERANCE.
#
# Usage: benches/gpt-jax.sh [ITERS]   (default 2000: nanoGPT's CPU configuration)
# Env: OUT (results folder, default target/gpt-jax-ITERS), PY (default python3),
#      TOLERANCE (default 0.05), EXTRA (more gpt_reference options, e.g. "--chars 20000").
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${1:-2000}"
out="${OUT:-target/gpt-jax-$iters}"
py="${PY:-python3}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" "$out"

# The install step: JAX's CPU wheels, optax, NumPy and safetensors, when any is missing.
deps() { "$py" -c "import jax, optax, numpy, safetensors" >/dev/null 2>&1; }
if ! deps; then
    echo "gpt-jax: installing benches/gpt_jax/requirements.txt" >&2
    "$py" -m pip install --quiet -r benches/gpt_jax/requirements.txt \
        || "$py" -m pip install --quiet --break-system-packages -r benches/gpt_jax/requirements.txt
    deps || { echo "gpt-jax: jax/optax/numpy/safetensors still cannot be imported" >&2; exit 1; }
fi

cargo build --release --quiet --example gpt_reference
# Six evaluation points, as examples/shakespeare_gpt.rs.
every=$(( iters / 6 > 0 ? iters / 6 : 1 ))
# shellcheck disable=SC2086
target/release/examples/gpt_reference "$out" --iters "$iters" --eval-every "$every" ${EXTRA:-}
"$py" benches/gpt_jax/gpt_jax.py "$out" --tolerance "${TOLERANCE:-0.05}"
