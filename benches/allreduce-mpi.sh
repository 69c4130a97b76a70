#!/usr/bin/env bash
# The MPI half of benches/allreduce.rs and benches/replicas.rs across 2 processes on this
# machine (Open MPI over shared memory): all_reduce_mean of 1, 4 and 16 MiB of f32, then
# data-parallel epochs of 784-256-128-10 and the MNIST CNN with the gradients exchanged
# in one all-reduce after the backward pass and in buckets during it, against ranks that
# exchange nothing. Needs openmpi-bin and libopenmpi-dev (and libclang-dev to build the
# bindings). Usage: benches/allreduce-mpi.sh [ranks] [--train-only]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features mpi --example mpi_allreduce
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ranks="${1:-2}"
if [ "${2:-}" != "--train-only" ]; then
    mpirun --oversubscribe -np "$ranks" target/release/examples/mpi_allreduce --bench
fi
mpirun --oversubscribe -np "$ranks" target/release/examples/mpi_allreduce --train-bench
