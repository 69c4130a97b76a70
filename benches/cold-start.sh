#!/usr/bin/env bash
# A newcomer's first run: wall time of the default `kiln train` with cold caches (an empty
# Mesa shader cache and kiln autotune cache, each run in fresh folders) against warm ones,
# side by side; then, where MNIST is at hand, the first MNIST epoch (784-256-128-10,
# batch 128, cold caches) against the later ones, over RUNS runs.
#
# Usage: benches/cold-start.sh [RUNS]   (RUNS per column, default 3; medians are printed)
#        MNIST=DIR benches/cold-start.sh (default ../shared/data/mnist when present)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
cargo build --release --quiet
bin="$PWD/target/release/kiln"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$tmp/xdg}"
mkdir -p "$XDG_RUNTIME_DIR"

# Runs kiln with its caches under $1 and the rest of the arguments; prints the wall seconds.
timed() {
    local caches="$1"
    shift
    local start end
    # Mesa makes its cache folder but not the folders above it.
    mkdir -p "$caches"
    start="$(date +%s.%N)"
    XDG_CACHE_HOME="$caches" MESA_SHADER_CACHE_DIR="$caches/mesa" KILN_CACHE_DIR="$caches/kiln" \
        "$bin" "$@" >"$tmp/last.log" 2>&1 || { cat "$tmp/last.log"; exit 1; }
    end="$(date +%s.%N)"
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f\n", b - a }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cold=() warm=()
timed "$tmp/warm" train --out "$tmp/run-warmup" >/dev/null
for i in $(seq "$runs"); do
    cold+=("$(timed "$tmp/cold$i" train --out "$tmp/run-cold$i")")
    warm+=("$(timed "$tmp/warm" train --out "$tmp/run-warm$i")")
done
c="$(printf '%s\n' "${cold[@]}" | median)"
w="$(printf '%s\n' "${warm[@]}" | median)"
echo "adapter: $("$bin" adapters 2>/dev/null | grep -m1 -i -E 'llvmpipe|vulkan|gl' || echo unknown)"
echo "default kiln train, wall seconds over $runs runs each"
echo "  cold caches: ${cold[*]}  (median $c)"
echo "  warm caches: ${warm[*]}  (median $w)"
awk -v c="$c" -v w="$w" 'BEGIN { printf "  cold / warm: %.2fx\n", c / w }'

mnist="${MNIST:-../shared/data/mnist}"
if [ -d "$mnist" ]; then
    # One run's ratio moves by a fifth or more from run to run on a shared 2-core machine,
    # so each of RUNS cold runs gives its own, and the median is the figure.
    echo "MNIST 784-256-128-10, batch 128, 3 epochs, cold caches: seconds per epoch, $runs runs"
    ratios=()
    for i in $(seq "$runs"); do
        timed "$tmp/mnist$i" train --data "mnist:$mnist" --layers 784,256,128,10 \
            --batch-size 128 --epochs 3 --out "$tmp/run-mnist$i" >/dev/null
        ratios+=("$(grep -E '^epoch' "$tmp/last.log" | sed -E 's/.* ([0-9.]+) s .*/\1/' | awk '
            { t[NR] = $1; line = line sprintf(" %s", $1) }
            END { later = 0; for (i = 2; i <= NR; i++) later += t[i];
                  printf "%.2f %s\n", t[1] / (later / (NR - 1)), line }')")
        echo "  run $i: epochs${ratios[-1]#* } s, first / later mean ${ratios[-1]%% *}x"
    done
    printf '%s\n' "${ratios[@]}" | awk '{ print $1 }' | median |
        awk '{ printf "  median first / later: %.2fx\n", $1 }'
else
    echo "MNIST: skipped, no data at $mnist (set MNIST=DIR)"
fi
