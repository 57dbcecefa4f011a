#!/usr/bin/env bash
# Interop test runner for the Apiary MQTT broker.
#
# Starts a broker on a free loopback port, runs the mosquitto-client tests and the
# paho-mqtt tests against it, and ends with a line "N passed, N failed".
#
#   bash interop/run.sh                                  # Apiary: $APIARY_BIN or target/debug/apiary
#   APIARY_BIN=target/release/apiary bash interop/run.sh
#   BROKER_CMD='bash interop/mosquitto_broker.sh' bash interop/run.sh   # reference run against mosquitto
#
# With BROKER_CMD the command runs via bash with PORT, DATA_DIR and WORK_DIR exported; readiness is
# the log line matching $READY_PATTERN if set, otherwise the port accepting connections.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
APIARY_BIN="${APIARY_BIN:-target/debug/apiary}"
BROKER_CMD="${BROKER_CMD:-}"
START_TIMEOUT="${START_TIMEOUT:-30}"

# Free loopback port (tiny race between close and broker bind; acceptable for tests).
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/apiary-interop.XXXXXX")
DATA_DIR="$WORK_DIR/data"
CONFIG="$WORK_DIR/config.xml"
LOG="$WORK_DIR/broker.log"
RESULTS="$WORK_DIR/results.txt"
mkdir -p "$DATA_DIR"
: >"$RESULTS"
export PORT DATA_DIR WORK_DIR
[[ -z "${KEEP_WORK_DIR:-}" ]] || echo "# work dir (kept): $WORK_DIR"

BROKER_PID=""
stop_broker() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    # give it 5 s to exit, then SIGKILL
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
cleanup() {
  stop_broker
  [[ -n "${KEEP_WORK_DIR:-}" ]] || rm -rf "$WORK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- start the broker -------------------------------------------------------------------------
if [[ -n "$BROKER_CMD" ]]; then
  READY_PATTERN="${READY_PATTERN:-}"
  echo "# broker: $BROKER_CMD (port $PORT)"
  bash -c "exec $BROKER_CMD" >"$LOG" 2>&1 &
else
  READY_PATTERN="${READY_PATTERN:-Started Apiary}"
  if [[ ! -x "$APIARY_BIN" ]]; then
    echo "apiary binary not found or not executable: $APIARY_BIN" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
  cat >"$CONFIG" <<EOF
<?xml version="1.0"?>
<hivemq>
  <listeners>
    <tcp-listener>
      <port>$PORT</port>
      <bind-address>$HOST</bind-address>
    </tcp-listener>
  </listeners>
  <persistence>
    <mode>file</mode>
  </persistence>
</hivemq>
EOF
  echo "# broker: $APIARY_BIN run --config $CONFIG --data-dir $DATA_DIR (port $PORT)"
  "$APIARY_BIN" run --config "$CONFIG" --data-dir "$DATA_DIR" >"$LOG" 2>&1 &
fi
BROKER_PID=$!

# Indent broker log lines and drop colour codes.
strip_ansi() { sed -e $'s/\x1b\\[[0-9;]*m//g' "$@"; }
show_log() { strip_ansi "$@" | sed 's/^/  | /'; }
port_open() { python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' "$HOST" "$PORT" 2>/dev/null; }

# Bounded wait for readiness (log line, or open port when no pattern is given).
ready=0
for _ in $(seq $((START_TIMEOUT * 10))); do
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
  if [[ -n "$READY_PATTERN" ]]; then
    grep -qE "$READY_PATTERN" "$LOG" && { ready=1; break; }
  else
    port_open && { ready=1; break; }
  fi
  sleep 0.1
done
if [[ $ready -ne 1 ]]; then
  echo "broker did not become ready within ${START_TIMEOUT}s (pattern: '${READY_PATTERN:-<port open>}'); log:" >&2
  show_log "$LOG" >&2 || true
  stop_broker
  echo "0 passed, 1 failed"
  exit 1
fi
# The log line may come just before the listener accepts; make sure the port is open.
for _ in $(seq 50); do port_open && break; sleep 0.1; done
if [[ -n "$READY_PATTERN" ]]; then echo "# broker ready: $(grep -m1 -E "$READY_PATTERN" "$LOG" | strip_ansi)"
else echo "# broker ready: port $PORT accepts connections"; fi

# --- run the suites -----------------------------------------------------------------------------
# Each suite prints "PASS name" / "FAIL name: reason" lines; a suite that exits non-zero without
# printing any FAIL line (a crash) counts as one failure.
run_suite() {
  local label=$1; shift
  local out="$WORK_DIR/$label.out" rc=0
  echo "# --- $label ---"
  "$@" 2>&1 | tee "$out" || rc=$?
  cat "$out" >>"$RESULTS"
  if [[ $rc -ne 0 ]] && ! grep -q '^FAIL ' "$out"; then
    echo "FAIL $label: suite exited with status $rc without reporting a failure" | tee -a "$RESULTS"
  fi
}

run_suite mosquitto bash interop/mosquitto_tests.sh "$HOST" "$PORT"
run_suite paho python3 -u interop/paho_tests.py "$HOST" "$PORT"

# The broker must have survived the whole run.
if kill -0 "$BROKER_PID" 2>/dev/null; then
  echo "PASS broker_alive_after_tests" | tee -a "$RESULTS"
else
  echo "FAIL broker_alive_after_tests: broker process exited during the tests; log tail:" | tee -a "$RESULTS"
  tail -n 30 "$LOG" | show_log
fi

stop_broker
if grep -q '^FAIL ' "$RESULTS"; then
  echo "# broker log tail:"; tail -n 40 "$LOG" | show_log
fi
passed=$(grep -c '^PASS ' "$RESULTS" || true)
failed=$(grep -c '^FAIL ' "$RESULTS" || true)
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
