#!/usr/bin/env bash
# Apiary vs mosquitto, side by side, on this machine: builds the release binaries, then for each
# scenario starts a fresh mosquitto and a fresh Apiary with equivalent settings on loopback ports,
# runs apiary-bench against both, and stops them. Prints the merged table at the end and keeps
# everything in target/bench/ (results.json, table.txt, per-scenario JSON, broker logs).
#
#   bash scripts/bench.sh                      # every scenario, full size (a few minutes)
#   bash scripts/bench.sh --quick              # small counts, ~1 s per figure
#   SCENARIOS=1,3 bash scripts/bench.sh        # some scenarios; other flags go to apiary-bench
#
# Equivalent settings: anonymous clients; mosquitto's max_inflight_messages = Apiary's
# server-receive-maximum (INFLIGHT, 10 by default, HiveMQ's default) and the receive maximum the
# bench clients announce; queues far larger than the bench ever fills (it keeps subscribers at most
# a few hundred messages behind); TCP_NODELAY on both (Apiary always sets it). Scenario 6 runs
# Apiary with <persistence><mode>file</mode> and mosquitto with `persistence true`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="${BENCH_OUT:-$CARGO_TARGET_DIR/bench}"
SCENARIOS="${SCENARIOS:-1,2,3,4,5,6}"
INFLIGHT="${INFLIGHT:-10}"
APIARY_PORT="${APIARY_PORT:-18830}"
MOSQUITTO_PORT="${MOSQUITTO_PORT:-18831}"
MOSQUITTO="${MOSQUITTO:-/usr/sbin/mosquitto}"

[ -x "$MOSQUITTO" ] || { echo "mosquitto not found at $MOSQUITTO (apt-get install mosquitto)" >&2; exit 1; }
cargo build --release --bin apiary --bin apiary-bench
APIARY="$CARGO_TARGET_DIR/release/apiary"
BENCH="$CARGO_TARGET_DIR/release/apiary-bench"

rm -rf "$OUT"
mkdir -p "$OUT"
APIARY_PID=""
MOSQUITTO_PID=""

stop_brokers() {
    for pid in $APIARY_PID $MOSQUITTO_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $APIARY_PID $MOSQUITTO_PID; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    APIARY_PID=""
    MOSQUITTO_PID=""
}
trap stop_brokers EXIT

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
    return 1
}

# start_brokers SCENARIO: fresh data folders and configs for that scenario.
start_brokers() {
    local dir="$OUT/s$1" mode=in-memory persist=false
    if [ "$1" = 6 ]; then mode=file persist=true; fi
    mkdir -p "$dir/apiary-data" "$dir/mosquitto-data"
    cat >"$dir/apiary.xml" <<EOF
<hivemq>
  <listeners><tcp-listener><port>$APIARY_PORT</port><bind-address>127.0.0.1</bind-address></tcp-listener></listeners>
  <mqtt>
    <receive-maximum><server-receive-maximum>$INFLIGHT</server-receive-maximum></receive-maximum>
    <queued-messages><max-queue-size>1000</max-queue-size></queued-messages>
  </mqtt>
  <persistence><mode>$mode</mode></persistence>
</hivemq>
EOF
    cat >"$dir/mosquitto.conf" <<EOF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
max_inflight_messages $INFLIGHT
max_queued_messages 1000000
max_connections -1
set_tcp_nodelay true
persistence $persist
persistence_location $dir/mosquitto-data/
log_dest stderr
log_type error
log_type warning
user root
EOF
    APIARY_LOG=warn "$APIARY" run --config "$dir/apiary.xml" --data-dir "$dir/apiary-data" \
        --extensions-dir "$dir/extensions" >"$dir/apiary.log" 2>&1 &
    APIARY_PID=$!
    "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
    MOSQUITTO_PID=$!
    wait_port "$APIARY_PORT"
    wait_port "$MOSQUITTO_PORT"
}

status=0
IFS=, read -ra list <<<"$SCENARIOS"
for s in "${list[@]}"; do
    start_brokers "$s"
    notes=()
    if [ "$s" = 6 ]; then
        notes+=(--note "scenario 6: Apiary commits every message to disk (redb, group commit) before acknowledging it; mosquitto with 'persistence true' only saves its in-memory database periodically (autosave_interval, 1800 s by default) and on exit, so it does not have every acknowledged message on disk.")
    fi
    "$BENCH" --scenarios "$s" \
        --target "apiary=127.0.0.1:$APIARY_PORT,pid=$APIARY_PID" \
        --target "mosquitto=127.0.0.1:$MOSQUITTO_PORT,pid=$MOSQUITTO_PID" \
        --inflight "$INFLIGHT" --json "$OUT/s$s.json" "${notes[@]}" "$@" >"$OUT/s$s.txt" || status=1
    stop_brokers
done

echo
"$BENCH" report "$OUT"/s*.json --json "$OUT/results.json" | tee "$OUT/table.txt"
echo "results: $OUT/results.json, $OUT/table.txt"
exit "$status"
