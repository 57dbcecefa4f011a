#!/usr/bin/env bash
# Reference broker for developing/validating the interop suite (not Apiary):
#   BROKER_CMD='bash interop/mosquitto_broker.sh' bash interop/run.sh
# Uses PORT and DATA_DIR exported by run.sh. Loopback only, anonymous, persistent sessions kept.
set -euo pipefail
conf="$DATA_DIR/mosquitto.conf"
cat >"$conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $DATA_DIR/
log_dest stdout
CONF
exec mosquitto -c "$conf"
