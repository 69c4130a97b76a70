#!/usr/bin/env bash
# Runs kiln's benches and the peers' (../shared/peers: Burn, candle, JAX, plus our own Burn
# conv harness in benches/peers/burn-conv) on this machine in one go, and prints kiln / peer
# ratios for the shared workloads: matmul N x N, the 784-128-10 MLP with Adam at batch 32
# and 128, and the MNIST CNN's two conv layers at batch 128 (forward, forward+backward).
#
#   benches/compare.sh            # kiln + burn-wgpu (builds burn once: ~12-15 min on 2 cores)
#   PEERS_ALSO="ndarray flex candle jax" benches/compare.sh   # the CPU frameworks too, for context
#
# Env: PEERS (default ../shared/peers), WORK (writable copy of it, default /tmp/kiln-peers),
#      PEER_TARGET (cargo target dir shared by the Burn harnesses, default $WORK/target),
#      PY (python with jax+optax for the jax peer, default python3).
# Everything printed is also saved under $WORK/compare-<date>/ (summary.txt: the ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=${PEERS:-../shared/peers}
WORK=${WORK:-/tmp/kiln-peers}
PEER_TARGET=${PEER_TARGET:-$WORK/target}
PY=${PY:-python3}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

die() { echo "compare.sh: $*" >&2; exit 1; }
for tool in cargo python3; do
  command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
mkdir -p "$WORK" || die "cannot create WORK=$WORK"
if [ ! -d "$WORK/burn-bench" ]; then
  [ -d "$PEERS/burn-bench" ] || die "no burn-bench in PEERS=$PEERS (set PEERS to the peers folder)"
  cp -r "$PEERS"/. "$WORK"/
  chmod -R u+w "$WORK"
fi
out="$WORK/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "== results in $out" >&2

echo "== building kiln benches" >&2
cargo build --release --benches >&2
echo "== building burn-bench and burn-conv (target $PEER_TARGET)" >&2
(cd "$WORK/burn-bench" && CARGO_TARGET_DIR=$PEER_TARGET cargo build --release -j 2 >&2) ||
  die "building $WORK/burn-bench failed"
CARGO_TARGET_DIR=$PEER_TARGET cargo build --release -j 2 --locked \
  --manifest-path "$ROOT/benches/peers/burn-conv/Cargo.toml" >&2 ||
  die "building benches/peers/burn-conv failed"
BURN_BENCH=$PEER_TARGET/release/burn-bench
BURN_CONV=$PEER_TARGET/release/burn-conv
# Run the peers from $WORK: cubecl puts its autotune cache beside the nearest Cargo project
# above the working directory, and that should not be kiln's checkout.
peer() { (cd "$WORK" && "$@"); }

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load at start: $(uptime)"
} | tee "$out/load.txt" >&2
echo "== kiln" >&2
cargo bench --bench matmul -- --json | tee "$out/kiln.jsonl"
cargo bench --bench train -- --json | tee -a "$out/kiln.jsonl"
cargo bench --bench conv -- --json | tee -a "$out/kiln.jsonl"
echo "== burn wgpu" >&2
peer "$BURN_BENCH" wgpu all | tee "$out/peers.jsonl"
peer "$BURN_CONV" wgpu | tee -a "$out/peers.jsonl"
for p in ${PEERS_ALSO:-}; do
  echo "== $p" >&2
  case $p in
    ndarray) peer "$BURN_BENCH" ndarray all ;;
    flex) peer "$BURN_BENCH" flex all && peer "$BURN_CONV" flex ;;
    candle) (cd "$WORK/candle-bench" && cargo build --release -j 2 >&2) && peer "$WORK/candle-bench/target/release/candle-bench" all ;;
    jax) peer "$PY" "$WORK/jax-bench.py" all ;;
    *) die "unknown peer '$p' in PEERS_ALSO (ndarray, flex, candle, jax)" ;;
  esac | tee -a "$out/peers.jsonl"
done
echo "load at end: $(uptime)" | tee -a "$out/load.txt" >&2

python3 - "$out/kiln.jsonl" "$out/peers.jsonl" <<'PY' | tee "$out/summary.txt"
import json, sys
kiln = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peers = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
def key(r):
    if r["bench"] == "matmul":
        return ("matmul", r["n"])
    if r["bench"] == "conv":
        return ("conv", r["layer"], r["pass"])
    if r["bench"] == "mlp" and r.get("model", "784-128-10") == "784-128-10":
        return ("mlp", r["batch"])
    return None
def name(k):
    return {"matmul": lambda: f"matmul N={k[1]}", "mlp": lambda: f"mlp batch {k[1]}",
            "conv": lambda: f"{k[1]} {'fwd' if k[2] == 'forward' else 'fwd+bwd'}"}[k[0]]()
# kiln/peer is a throughput ratio everywhere: above 1 means kiln is faster.
unit = {"matmul": ("gflops", "GFLOP/s"), "mlp": ("samples_per_s", "samples/s"), "conv": ("gflops", "GFLOP/s")}
mine = {key(r): r for r in kiln if key(r)}
print(f"{'workload':<18}{'unit':>10}{'kiln':>10}{'peer':>18}{'peer value':>12}{'kiln/peer':>11}")
missing = []
for r in peers:
    k = key(r)
    if k is None or (k[0] == "conv" and k[2] not in ("forward", "forward_backward")):
        continue
    if k not in mine:
        missing.append(name(k))
        continue
    field, label = unit[k[0]]
    a, b = mine[k][field], r[field]
    extra = f"  ({mine[k]['ms']:.2f} vs {r['ms']:.2f} ms)" if k[0] == "conv" else ""
    d = 2 if k[0] == "conv" else 1
    print(f"{name(k):<18}{label:>10}{a:>10.{d}f}{r['lib'] + '/' + r['backend']:>18}{b:>12.{d}f}{a / b:>10.2f}x{extra}")
if missing:
    print("no kiln figure for: " + ", ".join(sorted(set(missing))))
print("kiln host CPU per training step (recording and submitting):")
for r in kiln:
    if r["bench"] == "mlp" and "host_us_per_step" in r:
        print(f"  {r['model']:<28} batch {r['batch']:>4}: {r['host_us_per_step']:7.1f} us, "
              f"{r['ms_per_step']:.2f} ms/step, {r['samples_per_s']:.0f} samples/s")
PY
echo "== saved: $out/{kiln,peers}.jsonl, load.txt, summary.txt" >&2
