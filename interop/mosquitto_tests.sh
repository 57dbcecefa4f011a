#!/usr/bin/env bash
# Interop tests using the mosquitto command-line clients (Debian package mosquitto-clients).
#   bash interop/mosquitto_tests.sh HOST PORT
# Prints "PASS name" or "FAIL name: reason" per test, then a summary; exits 1 if any failed.
# No `set -e`: each test checks its own exit codes and output.
set -uo pipefail

HOST=${1:?usage: mosquitto_tests.sh HOST PORT}
PORT=${2:?usage: mosquitto_tests.sh HOST PORT}
RUN_ID="$$-$RANDOM"                       # unique per run: topics and client ids never collide
PREFIX="apiary-interop/mosq/$RUN_ID"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/apiary-mosq.XXXXXX")
BG_PIDS=()
cleanup() {
  killwait "${BG_PIDS[@]}"
  rm -rf "$TMP"
}
trap cleanup EXIT

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }

# Arrays, not functions: a backgrounded function would run in a subshell and $! would not be the
# client's pid (SIGKILL must hit the client itself).
PUB=(mosquitto_pub -h "$HOST" -p "$PORT")
SUB=(mosquitto_sub -h "$HOST" -p "$PORT")
lines() { if [[ -f "$1" ]]; then wc -l <"$1"; else echo 0; fi; }
oneline() { tr '\n' '\\' <"$1" | head -c 300; }   # file content for a FAIL reason

# Publish (args = mosquitto_pub args) every 0.2 s until process $1 exits; at most 10 s.
# mosquitto_sub has no "subscribed" signal, so we keep publishing until it got one and quit (-C 1).
pub_until_exit() {
  local pid=$1; shift
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    "${PUB[@]}" "$@" >/dev/null 2>&1
    sleep 0.2
  done
  return 1
}

# Publish QoS 1 probes to topic $2 until file $1 (a subscriber's output) is non-empty, then wait
# until the last probe sent has arrived, so none is still in flight (probes sent before the
# subscription existed are legitimately dropped). At most 10 s + 5 s.
probe_until_received() {
  local out=$1 topic=$2 v=$3 n=0
  for _ in $(seq 50); do
    [[ -s "$out" ]] && break
    "${PUB[@]}" -V "$v" -q 1 -t "$topic" -m "probe-$n" >/dev/null 2>&1 && n=$((n + 1))
    sleep 0.2
  done
  [[ -s "$out" ]] || return 1
  for _ in $(seq 50); do
    grep -q "probe-$((n - 1))\$" "$out" && return 0
    sleep 0.1
  done
  return 1
}

# Kill background clients (SIGKILL) and reap them quietly.
killwait() {
  local p
  for p in "$@"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  return 0
}

# Wait (at most 10 s) until file $1 has a line exactly equal to $2.
wait_for_line() {
  for _ in $(seq 100); do
    grep -Fxq -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- pub/sub at QoS $2 with protocol $1; checks payload, delivered QoS and retain flag ----------
t_pubsub() {
  local v=$1 q=$2
  local name="mosq_${v}_pubsub_qos$q" t="$PREFIX/pubsub/$v/q$q" m="hello-$v-q$q-$RANDOM"
  local out="$TMP/$name.out" err="$TMP/$name.err"
  "${SUB[@]}" -V "$v" -q "$q" -t "$t" -C 1 -W 10 -F '%q|%r|%p' >"$out" 2>"$err" &
  local pid=$!; BG_PIDS+=("$pid")
  pub_until_exit "$pid" -V "$v" -q "$q" -t "$t" -m "$m"
  wait "$pid"; local rc=$?
  local want="$q|0|$m" got; got=$(head -n 1 "$out")
  if [[ $rc -eq 0 && "$got" == "$want" ]]; then pass "$name"
  else fail "$name" "expected 'qos|retain|payload' = '$want', got '$got' (sub exit $rc, stderr: $(oneline "$err"))"; fi
}

# --- retained: set, fetched by a new subscriber, cleared with an empty retained message ---------
t_retained() {
  local v=$1
  local name="mosq_${v}_retained" t="$PREFIX/retained/$v" m="retained-$v-$RANDOM"
  local err="$TMP/$name.err" got rc
  if ! "${PUB[@]}" -V "$v" -q 1 -r -t "$t" -m "$m" 2>"$err"; then
    fail "$name" "publishing the retained message failed: $(oneline "$err")"; return
  fi
  got=$("${SUB[@]}" -V "$v" -q 1 -t "$t" -C 1 -W 5 -F '%q|%r|%p' 2>"$err"); rc=$?
  if [[ "$got" != "1|1|$m" ]]; then
    fail "$name" "new subscriber expected retained 'qos|retain|payload' = '1|1|$m', got '$got' (exit $rc, stderr: $(oneline "$err"))"; return
  fi
  if ! "${PUB[@]}" -V "$v" -q 1 -r -n -t "$t" 2>"$err"; then
    fail "$name" "publishing the empty retained message (delete) failed: $(oneline "$err")"; return
  fi
  # After the delete a new subscriber must time out (exit 27) with nothing received.
  got=$("${SUB[@]}" -V "$v" -q 1 -t "$t" -W 2 -F '%q|%r|%p' 2>"$err"); rc=$?
  if [[ $rc -eq 27 && -z "$got" ]]; then pass "$name"
  else fail "$name" "after deleting with an empty retained publish, a new subscriber expected nothing for 2 s, got '$got' (exit $rc, stderr: $(oneline "$err"))"; fi
}

# --- will: a client killed with SIGKILL has its will published ---------------------------------
t_will() {
  local v=$1
  local name="mosq_${v}_will" wt="$PREFIX/will/$v/status" wp="gone-$v-$RANDOM"
  local pa="$PREFIX/will/$v/probe-a" pb="$PREFIX/will/$v/probe-b"
  local aout="$TMP/$name.a.out" bout="$TMP/$name.b.out"
  # Watcher: subscribed to the will topic and to its own probe topic (readiness check).
  "${SUB[@]}" -V "$v" -q 1 -t "$wt" -t "$pa" -W 30 -F '%t|%p' >"$aout" 2>"$TMP/$name.a.err" &
  local apid=$!; BG_PIDS+=("$apid")
  # Client that will die: connects with a will; subscribes to its own probe topic (readiness check).
  "${SUB[@]}" -V "$v" -q 1 -t "$pb" -W 30 --will-topic "$wt" --will-payload "$wp" --will-qos 1 \
    >"$bout" 2>"$TMP/$name.b.err" &
  local bpid=$!; BG_PIDS+=("$bpid")
  if ! probe_until_received "$aout" "$pa" "$v" || ! probe_until_received "$bout" "$pb" "$v"; then
    fail "$name" "watcher or will client never received its probe message (not connected/subscribed?)"
    killwait "$apid" "$bpid"; return
  fi
  kill -9 "$bpid"; wait "$bpid" 2>/dev/null      # abrupt: no DISCONNECT packet
  if wait_for_line "$aout" "$wt|$wp"; then pass "$name"
  else fail "$name" "will client (will-topic $wt, payload $wp, qos 1) was SIGKILLed; the watcher did not receive the will within 10 s (watcher got: $(grep -v '|probe-' "$aout" | oneline /dev/stdin))"; fi
  kill "$apid" 2>/dev/null; wait "$apid" 2>/dev/null
}

# --- offline queue: persistent session gets QoS 1 messages published while it was offline ------
t_offline() {
  local v=$1
  local name="mosq_${v}_offline_queue" id="apiary-mq-$v-$RUN_ID" t="$PREFIX/offline/$v"
  local out1="$TMP/$name.1.out" err="$TMP/$name.err"
  local extra=(); [[ $v == mqttv5 ]] && extra=(-x 300)      # v5: session expiry 300 s
  # Session 1: persistent subscribe, confirm via probes, then stop (SIGTERM -> clean DISCONNECT).
  "${SUB[@]}" -V "$v" -c -i "$id" -q 1 "${extra[@]}" -t "$t" -W 60 >"$out1" 2>"$TMP/$name.1.err" &
  local pid=$!; BG_PIDS+=("$pid")
  if ! probe_until_received "$out1" "$t" "$v"; then
    fail "$name" "first (persistent) session never received its probe messages"; killwait "$pid"; return
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
  # While offline: 3 QoS 1 messages.
  for i in 1 2 3; do
    if ! "${PUB[@]}" -V "$v" -q 1 -t "$t" -m "queued-$i" 2>"$err"; then
      fail "$name" "publishing queued-$i failed: $(oneline "$err")"; return
    fi
  done
  # Session 2: same client id, no clean session -> must receive the 3 queued messages in order.
  local got rc
  got=$("${SUB[@]}" -V "$v" -c -i "$id" -q 1 "${extra[@]}" -t "$t" -C 3 -W 10 2>"$err"); rc=$?
  local want=$'queued-1\nqueued-2\nqueued-3'
  if [[ $rc -eq 0 && "$got" == "$want" ]]; then pass "$name"
  else fail "$name" "reconnecting persistent session '$id' expected 'queued-1\\queued-2\\queued-3', got '$(printf '%s' "$got" | tr '\n' '\\')' (exit $rc, stderr: $(oneline "$err"))"; fi
}

for v in mqttv311 mqttv5; do
  for q in 0 1 2; do t_pubsub "$v" "$q"; done
  t_retained "$v"
  t_will "$v"
  t_offline "$v"
done

echo "mosquitto: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
