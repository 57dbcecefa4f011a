#!/usr/bin/env bash
# The heap profile behind scenario 4 (idle connections): runs the release broker under heaptrack,
# holds N idle connections with apiary-bench, stops the broker and prints the allocation sites
# that held the most memory at the peak, with bytes per connection.
#
#   bash scripts/profile-idle-memory.sh            # 15,000 connections
#   IDLE=2000 bash scripts/profile-idle-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE="${IDLE:-15000}"
PORT="${PORT:-18840}"
if ! command -v heaptrack >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bin apiary --bin apiary-bench
OUT="$CARGO_TARGET_DIR/profile-idle"
rm -rf "$OUT"
mkdir -p "$OUT/data" "$OUT/extensions"
cat >"$OUT/apiary.xml" <<XML
<hivemq>
  <listeners><tcp-listener><port>$PORT</port><bind-address>127.0.0.1</bind-address></tcp-listener></listeners>
  <persistence><mode>in-memory</mode></persistence>
</hivemq>
XML
APIARY_LOG=warn heaptrack -o "$OUT/apiary" "$CARGO_TARGET_DIR/release/apiary" run --config "$OUT/apiary.xml" \
  --data-dir "$OUT/data" --extensions-dir "$OUT/extensions" >"$OUT/heaptrack.log" 2>&1 &
wrapper=$!
broker=""
for _ in $(seq 100); do
  broker=$(pgrep -f "^$CARGO_TARGET_DIR/release/apiary run --config $OUT/apiary.xml" | head -1 || true)
  if [ -n "$broker" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
[ -n "$broker" ] || { echo "the broker did not start; see $OUT/heaptrack.log" >&2; exit 1; }
"$CARGO_TARGET_DIR/release/apiary-bench" --scenarios 4 --idle-connections "$IDLE" \
  --target "apiary=127.0.0.1:$PORT,pid=$broker"
kill -TERM "$broker"
wait "$wrapper" || true
# Peak memory by allocation site; each site named by its first frame in our code or in tokio's
# I/O driver, and divided by the number of connections.
heaptrack_print -f "$OUT"/apiary.*zst --print-peaks 1 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 --peak-limit 40 --sub-peak-limit 0 --merge-backtraces 0 2>/dev/null \
  | awk -v n="$IDLE" '
      function bytes(s) { m = 1; if (s ~ /K$/) m = 1e3; if (s ~ /M$/) m = 1e6; sub(/[KM]$/, "", s); return s * m }
      /peak memory consumed/ { if (site != "") add(); size = bytes($1); site = "" ; next }
      site == "" && /apiary::|tokio::runtime::io|hashbrown/ { site = $1; sub(/::h[0-9a-f]+$/, "", site) }
      function add() { total[site] += size }
      END { if (site != "") add(); for (s in total) if (total[s] / n >= 1) printf "%8.0f B/conn  %s\n", total[s] / n, s }' \
  | sort -rn
echo "profile: $OUT (heaptrack --analyze $OUT/apiary.*zst for the whole of it)"
