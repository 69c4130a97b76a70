#!/usr/bin/env bash
# A first look at kiln on a machine with a GPU, in one run of at most 8 minutes: the
# adapters; the kernel and training tests on the adapter kiln picks; the matmul bench at
# N = 1024, 2048 and 4096 as GFLOP/s and as a share of the GPU's f32 peak; the train bench;
# and, where PyTorch with CUDA is installed, the train bench's 784-128-10 Adam workload in
# PyTorch eager as a baseline in the same run. It runs on lavapipe too (its own test).
#
#   benches/gpu-check.sh            # everything, within BUDGET_S (480 s), build included
#   benches/gpu-check.sh --quick    # without N = 4096 (about 3 minutes on lavapipe here)
#
# Env: PEAK_TFLOPS  the adapter's f32 peak in TFLOPS (else looked up by adapter name below;
#                   "n/a" when not found, as for lavapipe)
#      KILN_ADAPTER / KILN_BACKEND  which adapter kiln uses (by default discrete, then
#                   integrated, then software)
#      BUDGET_S     the whole run's limit in seconds (default 480)
#      PY           the python with torch for the baseline (default python3)
#      TORCH_DEVICE the baseline's device (default cuda; cpu runs it without CUDA, to test
#                   this script: its figures are then no GPU baseline)
#      OUT          where the logs go (default /tmp/kiln-gpu-check-DATE)
# Exits non-zero when a test fails or a step fails or runs out of time.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$arg' (--quick, --help)" >&2; exit 2 ;;
  esac
done
BUDGET_S=${BUDGET_S:-480}
PY=${PY:-python3}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
OUT=${OUT:-/tmp/kiln-gpu-check-$(date +%Y%m%d-%H%M%S)}
SIZES=1024,2048,4096
[ "$QUICK" = 1 ] && SIZES=1024,2048
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
mkdir -p "$OUT" || { echo "gpu-check.sh: cannot create OUT=$OUT" >&2; exit 2; }
command -v cargo >/dev/null || { echo "gpu-check.sh: 'cargo' not found on PATH" >&2; exit 2; }

START=$(date +%s)
FAILED=()
section() { printf '\n== %s  (%ds)\n' "$1" $(($(date +%s) - START)); }
# Seconds a step may take: at most $1, leaving $2 for the steps after it; 0 when none left.
allow() {
  local left=$((START + BUDGET_S - $(date +%s) - $2))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 5 ] && left=0
  echo "$left"
}
# Runs "$@" under a limit of $1 seconds, its output to the log file $2: shown as it comes
# when $3 is "show", its end shown on a failure when "quiet", nothing shown when "silent".
# Records a failure by the step's name $4.
step() {
  local limit=$1 log=$2 show=$3 name=$4 rc
  shift 4
  if [ "$limit" = 0 ]; then
    echo "   skipped: out of time (BUDGET_S=$BUDGET_S)"
    FAILED+=("$name (no time left)")
    return 1
  fi
  if [ "$show" = show ]; then
    timeout --kill-after=10 "$limit" "$@" 2>"$log.err" | tee "$log"
  else
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  fi
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "   timed out after ${limit}s (log: $log)"
    FAILED+=("$name (timed out)")
  elif [ "$rc" != 0 ] && [ "$show" != silent ]; then
    echo "   failed, exit $rc; the log's end ($log):"
    tail -n 15 "$log" "$log.err" 2>/dev/null | sed 's/^/   | /'
  fi
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] && FAILED+=("$name (exit $rc)")
  return "$rc"
}

# The f32 peak (non-tensor-core FP32 TFLOPS from the vendors' data sheets) of common GPUs,
# by a piece of the adapter's name; prints "TFLOPS label" or nothing.
peak_of() {
  local n=${1,,}
  case $n in
    *"h100 pcie"*) echo "51.2 H100 PCIe" ;;
    *"h100 nvl"*) echo "60.0 H100 NVL" ;;
    *h100*) echo "66.9 H100 SXM" ;;
    *"h200 nvl"*) echo "60.0 H200 NVL" ;;
    *h200*) echo "66.9 H200" ;;
    *a100*) echo "19.5 A100" ;;
    *"nvidia a10") echo "31.2 A10" ;;
    *l40s*) echo "91.6 L40S" ;;
    *l40*) echo "90.5 L40" ;;
    *"nvidia l4") echo "30.3 L4" ;;
    *t4) echo "8.1 T4" ;;
    *v100*pcie*) echo "14.0 V100 PCIe" ;;
    *v100*) echo "15.7 V100 SXM2" ;;
    *"rtx 6000 ada"*) echo "91.1 RTX 6000 Ada" ;;
    *"rtx a6000"*) echo "38.7 RTX A6000" ;;
    *"rtx 4090"*) echo "82.6 RTX 4090" ;;
    *"rtx 4080"*) echo "48.7 RTX 4080" ;;
    *"rtx 3090 ti"*) echo "40.0 RTX 3090 Ti" ;;
    *"rtx 3090"*) echo "35.6 RTX 3090" ;;
  esac
}

{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "kiln:    $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "host:    $(uname -sr), $(nproc) CPUs$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: / /')"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null) (1, 5, 15 min)"
  echo "mode:    $([ "$QUICK" = 1 ] && echo quick || echo full), budget ${BUDGET_S}s, logs in $OUT"
} | tee "$OUT/machine.txt"

section "building (release: the adapters example, the kernel and training tests, the benches)"
# The kernel tests: one per op in src/ops that has a test file of its name; then training.
TESTS=()
for f in src/ops/*.rs; do
  n=$(basename "$f" .rs)
  [ -f "tests/$n.rs" ] && TESTS+=("$n")
done
TESTS+=(train model_grads)
test_args=()
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
step "$(allow 600 120)" "$OUT/build.log" quiet build \
  bash -c 'cargo build --release --example adapters && cargo bench --no-run --bench matmul --bench train && cargo test --release --no-run "$@"' \
  build "${test_args[@]}" || { echo "gpu-check.sh: cannot go on without a build" >&2; exit 1; }
echo "   built in $(($(date +%s) - START))s"

section "adapters"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | sed 's/^/   /'
fi
step "$(allow 60 180)" "$OUT/adapters.log" show adapters \
  cargo run --release -q --example adapters
CHOSEN=$(sed -n 's/^chosen: //p' "$OUT/adapters.log")
[ -n "$CHOSEN" ] || { echo "gpu-check.sh: kiln found no adapter" >&2; exit 1; }
NAME=${CHOSEN% (*}
if [[ $CHOSEN == *", Cpu)" ]]; then
  echo "   NOTE: kiln runs on a software adapter: no GPU's figures follow."
  grep -v -q ' Cpu\]' <(grep '\[' "$OUT/adapters.log") &&
    echo "   A hardware adapter is listed: pick it with KILN_ADAPTER=NAME or KILN_BACKEND."
fi
if [ -n "${PEAK_TFLOPS:-}" ]; then
  PEAK=$PEAK_TFLOPS PEAK_FROM="PEAK_TFLOPS"
else
  read -r PEAK PEAK_FROM <<<"$(peak_of "$NAME")"
  PEAK_FROM=${PEAK_FROM:+table: $PEAK_FROM}
fi
if [ -n "${PEAK:-}" ]; then
  echo "f32 peak: $PEAK TFLOPS ($PEAK_FROM)"
else
  echo "f32 peak: n/a ('$NAME' is not in the table; PEAK_TFLOPS=X sets it)"
fi

section "kernel and training tests on $CHOSEN"
printf '   %-12s %-6s %-34s %s\n' binary result tests seconds
passed=0 failed=0 bad=0
for t in "${TESTS[@]}"; do
  t0=$(date +%s)
  step "$(allow 150 120)" "$OUT/test-$t.log" silent "test $t" \
    cargo test --release -q --test "$t"
  rc=$?
  line=$(grep 'test result:' "$OUT/test-$t.log" | tail -n 1)
  counts=$(sed -E 's/.*(ok|FAILED)\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\2 passed, \3 failed, \4 ignored/' <<<"$line")
  result=$([ "$rc" = 0 ] && echo ok || echo FAIL)
  [ "$rc" = 0 ] || bad=$((bad + 1))
  read -r p _ f _ <<<"${counts:-0 passed, 0 failed}"
  passed=$((passed + p)) failed=$((failed + f))
  printf '   %-12s %-6s %-34s %d\n' "$t" "$result" "${counts:-no result}" $(($(date +%s) - t0))
  if [ "$rc" != 0 ] && [ -n "$line" ]; then
    # libtest lists the failing tests after its last "failures:" line.
    awk '/^failures:$/ { n = NR } { l[NR] = $0 } END { for (i = n + 1; i <= NR && l[i] != ""; i++) print "      failed: " substr(l[i], 5) }' "$OUT/test-$t.log"
  elif [ "$rc" != 0 ]; then
    tail -n 5 "$OUT/test-$t.log" | sed 's/^/      | /'
  fi
done
echo "   $bad of ${#TESTS[@]} binaries failing; $passed tests passed, $failed failed (logs: $OUT/test-*.log)"

section "matmul, the automatic kernel, N = $SIZES (1st ms: the first call, tuning included)"
step "$(allow 150 90)" "$OUT/matmul.jsonl" quiet matmul \
  cargo bench -q --bench matmul -- --sizes "$SIZES" --json
awk -v peak="${PEAK:-}" '
  BEGIN { printf "   %6s %10s %10s %10s %10s %10s\n", "N", "kernel", "ms", "GFLOP/s", "of peak", "1st ms" }
  /^\{/ {
    n = $0; sub(/.*"n":/, "", n); sub(/,.*/, "", n)
    gf = $0; sub(/.*"gflops":/, "", gf); sub(/,.*/, "", gf)
    ms = $0; sub(/.*"ms":/, "", ms); sub(/,.*/, "", ms)
    k = $0; sub(/.*"kernel":"/, "", k); sub(/".*/, "", k)
    f = $0; sub(/.*"first_ms":/, "", f); sub(/[,}].*/, "", f)
    share = peak == "" ? "n/a" : sprintf("%.1f%%", gf / (peak * 1000) * 100)
    printf "   %6d %10s %10.3f %10.1f %10s %10.1f\n", n, k, ms, gf, share, f
  }' "$OUT/matmul.jsonl"

section "train bench (cargo bench --bench train)"
step "$(allow 150 60)" "$OUT/train.txt" show "train bench" \
  cargo bench -q --bench train

section "PyTorch eager baseline: the train bench's workload"
if [ "$TORCH_DEVICE" = cuda ]; then
  probe='import torch; assert torch.cuda.is_available(), "torch.cuda.is_available() is False"'
else
  probe='import torch'
fi
if ! why=$("$PY" -c "$probe" 2>&1); then
  echo "   skipped: no PyTorch with $TORCH_DEVICE for $PY ($(tail -n 1 <<<"$why"))"
else
  [ "$TORCH_DEVICE" = cuda ] || echo "   NOTE: on $TORCH_DEVICE (TORCH_DEVICE), not a GPU baseline"
  step "$(allow 150 0)" "$OUT/torch.txt" show pytorch "$PY" - "$TORCH_DEVICE" <<'PY'
# The train bench's workload (benches/train.rs) in PyTorch eager: 2048 samples of 784
# values from splitmix64 (seed 42), labels from a fixed random teacher; ReLU MLPs with
# glorot-uniform weights and Adam (lr 1e-3, eps 1e-8, as kiln's), sparse categorical
# cross-entropy, batches in order; 20 warm-up steps, then the median of 3 timed runs of 200
# steps or more, synchronized.
import sys, time
import torch

dev = torch.device(sys.argv[1])
M = (1 << 64) - 1
state = 42
def next_f32():
    global state
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return ((z ^ (z >> 31)) >> 40) * (1.0 / (1 << 24))
n = 2048
x = torch.tensor([next_f32() for _ in range(n * 784)], dtype=torch.float64).view(n, 784)
t = torch.tensor([next_f32() * 2.0 - 1.0 for _ in range(784 * 10)], dtype=torch.float64).view(784, 10)
y = ((x - 0.5) @ t).argmax(dim=1)
x, y = x.float().to(dev), y.to(dev)

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
print(f"torch {torch.__version__} on {name}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
print(f"{'mlp':<28}{'batch':>6}{'samples/s':>12}{'ms/step':>10}  loss")
for layers, batch in [((128, 10), 32), ((128, 10), 128), ((128, 10), 512), ((256, 128, 10), 128)]:
    torch.manual_seed(1)
    mods, width = [], 784
    for i, units in enumerate(layers):
        dense = torch.nn.Linear(width, units)
        torch.nn.init.xavier_uniform_(dense.weight)  # kiln's dense: glorot-uniform, zero bias
        torch.nn.init.zeros_(dense.bias)
        mods.append(dense)
        if i + 1 < len(layers):
            mods.append(torch.nn.ReLU())
        width = units
    model = torch.nn.Sequential(*mods).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps_per_epoch = -(-n // batch)
    def fit(epochs):
        for _ in range(epochs):
            total = 0.0
            for i in range(0, n, batch):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[i:i + batch]), y[i:i + batch])
                loss.backward()
                opt.step()
                total = total + loss.detach()
        return float(total) / steps_per_epoch
    first = fit(-(-20 // steps_per_epoch))
    sync()
    epochs = max(-(-200 // steps_per_epoch), 1)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        last = fit(epochs)
        sync()
        rates.append(epochs * n / (time.perf_counter() - start))
    sps = sorted(rates)[1]
    model_name = "-".join(["784"] + [str(u) for u in layers])
    print(f"{model_name:<28}{batch:>6}{sps:>12.0f}{batch / sps * 1e3:>10.2f}  {first:.3f} -> {last:.3f}", flush=True)
PY
  # kiln / PyTorch, per workload both ran (throughput: above 1, kiln is faster).
  awk '{ file = FILENAME == ARGV[1] ? 1 : 2 }
    $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9.]+$/ { v[file, $1 " batch " $2] = $3; if (file == 2) order[++n] = $1 " batch " $2 }
    END {
      if (n) printf "   %-28s %12s %12s %10s\n", "kiln / PyTorch", "kiln", "PyTorch", "ratio"
      for (i = 1; i <= n; i++) { k = order[i]
        if ((1, k) in v) printf "   %-28s %12.0f %12.0f %9.2fx\n", k, v[1, k], v[2, k], v[1, k] / v[2, k] }
    }' "$OUT/train.txt" "$OUT/torch.txt"
fi

section "done"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf '   FAILED: %s\n' "${FAILED[@]}"
  echo "   logs: $OUT"
  exit 1
fi
echo "   all steps passed in $(($(date +%s) - START))s; logs: $OUT"
