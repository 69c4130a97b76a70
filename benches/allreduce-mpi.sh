#!/usr/bin/env bash
# The MPI half of benches/allreduce.rs: all_reduce_mean of 1, 4 and 16 MiB of f32 across
# 2 processes on this machine (Open MPI over shared memory). Needs openmpi-bin and
# libopenmpi-dev (and libclang-dev to build the bindings). Usage: benches/allreduce-mpi.sh [ranks]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features mpi --example mpi_allreduce
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --oversubscribe -np "${1:-2}" target/release/examples/mpi_allreduce --bench
