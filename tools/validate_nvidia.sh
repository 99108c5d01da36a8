#!/usr/bin/env bash
# kiln on an NVIDIA GPU, in one command of under 10 minutes: the same kernels/*.hip sources
# through compat.h with nvcc, every declared op checked against the CPU backend (max error
# per kernel and case), the kernel maps of the tiny hip plan and GLM-5.2 at TP8 timed (GB/s,
# over the card's reported peak and over its copy bandwidth measured in the same run), and
# every golden fixture run end to end on the GPU backend against the CPU and HF.
#
#   tools/validate_nvidia.sh [KILN]
#
# KILN: a kiln binary built with `cargo build --release --features cuda` (it loads libcuda
# at start-up and links nothing CUDA, so it builds on any machine; carry it to an offline
# GPU box). Without it, the script builds one with cargo. Needs nvcc (CUDA toolkit; NVCC
# names another) and an NVIDIA driver. ARCH overrides the sm_ arch nvidia-smi reports;
# PLANS (default: the tiny hip plan and GLM-5.2 at TP8), REPS (default 20) and BUCKETS
# (default: each map row's smallest and largest) choose what the bench times.
# Everything it prints is also written under OUT (default ./validate-nvidia). Exit 0 when
# every kernel compiled, every op check passed and every fixture matched.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/validate-nvidia}
mkdir -p "$OUT/modules"
status=0
say() { printf '\n== %s\n' "$*" | tee -a "$OUT/report.txt"; }
fail() { echo "FAILED: $*" | tee -a "$OUT/report.txt"; status=1; }

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "no nvcc (set NVCC, or install the CUDA toolkit)" >&2; exit 2; }
if [ -z "${ARCH:-}" ]; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
    [ -n "$cap" ] || { echo "nvidia-smi reports no GPU (set ARCH to compile anyway)" >&2; exit 2; }
    ARCH=sm_${cap/./}
fi

: > "$OUT/report.txt"
say "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 | tee -a "$OUT/report.txt"
"$NVCC" --version | tail -2 | tee -a "$OUT/report.txt"

say "nvcc -cubin -arch=$ARCH: every kernels/*.hip through compat.h"
compile() {
    local src=$1 out=$2/modules/$(basename "${1%.hip}").cubin
    if "$3" -cubin -O3 -x cu -arch="$4" -I kernels "$src" -o "$out" 2> "$out.log"; then
        echo "ok      $src"
    else
        echo "FAILED  $src: $(grep -m3 error "$out.log" | tr '\n' ' ')"
        rm -f "$out"
    fi
}
export -f compile
ls kernels/*.hip | xargs -P "$(nproc)" -I{} bash -c 'compile "$@"' _ {} "$OUT" "$NVCC" "$ARCH" \
    | sort | tee "$OUT/nvcc.txt" | tee -a "$OUT/report.txt"
grep -q FAILED "$OUT/nvcc.txt" && fail "some kernels did not compile with nvcc"

KILN=${1:-}
if [ -z "$KILN" ]; then
    say "cargo build --release --features cuda"
    cargo build --release --features cuda 2>&1 | tail -3 || { echo "cannot build kiln here; pass a binary" >&2; exit 2; }
    KILN=target/release/kiln
fi
export KILN_CUDA_MODULES=$OUT/modules

say "kiln ops check: every declared op against the CPU backend"
timeout 240 "$KILN" ops check 2>&1 | tee "$OUT/ops_check.txt" | tee -a "$OUT/report.txt"
[ "${PIPESTATUS[0]}" = 0 ] || fail "kiln ops check"

for plan in ${PLANS:-plan/tiny-hip-gfx90a.toml plan/glm-5.2-mxfp4-mi355x-tp8.toml}; do
    say "kiln ops bench --plan $plan"
    timeout 120 "$KILN" ops bench --plan "$plan" --reps "${REPS:-20}" ${BUCKETS:+--buckets "$BUCKETS"} 2>&1 | tee -a "$OUT/ops_bench.txt" | tee -a "$OUT/report.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "kiln ops bench --plan $plan"
done

say "golden fixtures end to end: GPU backend vs CPU backend vs HF"
for dir in tests/fixtures/*/; do
    [ -f "$dir/config.json" ] || continue
    timeout 60 "$KILN" compare --weights "$dir" 2>&1 | tee -a "$OUT/compare.txt" | tee -a "$OUT/report.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "kiln compare --weights $dir"
done

say "$( [ $status = 0 ] && echo PASS || echo FAIL ) (full report: $OUT/report.txt)"
exit $status
