#!/usr/bin/env bash
# Usage: fuzz/run.sh TARGET SECONDS [extra libFuzzer args...]
#
# Runs one cargo-fuzz target for SECONDS with a single job, using fuzz/corpus/TARGET (grown,
# gitignored) plus fuzz/seeds/TARGET (committed) as corpora and fuzz/dicts/TARGET.dict if present.
# Crashes land in fuzz/artifacts/TARGET/. The libFuzzer log is kept as fuzz/artifacts/TARGET/last.log.
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default /work/fuzz-target, outside the main build)
#   SANITIZER         address | none | ... (default none: the crate is #![forbid(unsafe_code)]
#                     and ASan roughly halves throughput)
#   APIARY_FUZZ_STRICT=1  decode target: also fail on the two documented lossy round trips
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer args...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/fuzz-target}
# cargo-fuzz passes -Z flags to rustc; this lets a stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

mkdir -p "corpus/$target" "artifacts/$target"
args=(-max_total_time="$seconds" -jobs=1 -workers=1 -print_final_stats=1)
if [[ -f "dicts/$target.dict" ]]; then
    args+=(-dict="dicts/$target.dict")
fi

# With -jobs, libFuzzer writes the worker's output to fuzz-0.log in the working directory.
rm -f fuzz-0.log
status=0
cargo fuzz run --sanitizer "${SANITIZER:-none}" "$target" "corpus/$target" "seeds/$target" \
    -- "${args[@]}" "$@" || status=$?
if [[ -f fuzz-0.log ]]; then
    mv fuzz-0.log "artifacts/$target/last.log"
    grep -E '^(#[0-9]+|Done|stat::|==[0-9]+==|SUMMARY|thread .* panicked)' "artifacts/$target/last.log" | tail -n 25
fi
ls "artifacts/$target" | grep -v '^last.log$' | sed "s|^|artifact: $here/artifacts/$target/|" || true
exit "$status"
