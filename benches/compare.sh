#!/usr/bin/env bash
# Runs kiln's benches and the peers' (../shared/peers: Burn, candle, JAX) on this machine
# in one go, and prints kiln / peer ratios for the shared workloads (matmul N x N, the
# 784-128-10 MLP with Adam at batch 32 and 128).
#
#   benches/compare.sh            # kiln + burn-wgpu (builds burn-bench once: ~12 min on 2 cores)
#   PEERS_ALSO="ndarray flex candle jax" benches/compare.sh   # the CPU frameworks too, for context
#
# Env: PEERS (default ../shared/peers), WORK (writable copy of it, default /tmp/kiln-peers),
#      PY (python with jax+optax for the jax peer, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-../shared/peers}
WORK=${WORK:-/tmp/kiln-peers}
PY=${PY:-python3}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
mkdir -p "$WORK"
[ -d "$WORK/burn-bench" ] || cp -r "$PEERS"/. "$WORK"/
out="$WORK/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

echo "== building" >&2
cargo build --release --benches >&2
(cd "$WORK/burn-bench" && cargo build --release -j 2 >&2)

echo "== kiln" >&2
cargo bench --bench matmul -- --json | tee "$out/kiln.jsonl"
cargo bench --bench train -- --json | tee -a "$out/kiln.jsonl"
echo "== burn wgpu" >&2
"$WORK/burn-bench/target/release/burn-bench" wgpu all | tee "$out/peers.jsonl"
for p in ${PEERS_ALSO:-}; do
  echo "== $p" >&2
  case $p in
    ndarray|flex) "$WORK/burn-bench/target/release/burn-bench" "$p" all ;;
    candle) (cd "$WORK/candle-bench" && cargo build --release -j 2 >&2) && "$WORK/candle-bench/target/release/candle-bench" all ;;
    jax) "$PY" "$WORK/jax-bench.py" all ;;
  esac | tee -a "$out/peers.jsonl"
done

python3 - "$out/kiln.jsonl" "$out/peers.jsonl" <<'PY'
import json, sys
kiln = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peers = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
def key(r):
    if r["bench"] == "matmul":
        return ("matmul", r["n"])
    if r.get("model", "784-128-10") == "784-128-10":
        return ("mlp", r["batch"])
    return None
mine = {key(r): r for r in kiln if key(r)}
print(f"{'workload':<22}{'kiln':>12}{'peer':>26}{'peer value':>12}{'kiln/peer':>11}")
for r in peers:
    k = key(r)
    if k not in mine:
        continue
    field = "gflops" if k[0] == "matmul" else "samples_per_s"
    a, b = mine[k][field], r[field]
    name = f"matmul N={k[1]}" if k[0] == "matmul" else f"mlp batch {k[1]}"
    print(f"{name:<22}{a:>12.1f}{r['lib'] + '/' + r['backend']:>26}{b:>12.1f}{a / b:>10.2f}x")
PY
