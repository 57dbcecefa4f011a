#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs the whole suite:
# unit and integration tests (cargo), then interop with mosquitto clients and paho-mqtt.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- set-up (idempotent) ---------------------------------------------------------------------
need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The DNS server of the docker-discovery tests (dnsmasq-base: the program only, no service on :53).
command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# WASM extensions (extensions/, sdk/) are built for this target by tests/extensions.rs.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# The S3-API server of the aws-discovery tests: s3s-fs checks every request's SigV4 signature.
# 0.14.1 is the newest that builds with this machine's rustc (1.95).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing s3s-fs (the S3 server the aws-discovery tests run)"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi
# The Python extension's build tool (tests/discovery_python.rs runs extensions/http-discovery-py/build.sh).
if [ "$(componentize-py --version 2>/dev/null)" != "componentize-py 0.25.1" ]; then
  python3 -m pip install -q -r extensions/http-discovery-py/requirements.txt
fi
if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  python3 -m pip install -q -r interop/requirements.txt
fi

# --- tests ------------------------------------------------------------------------------------
# One build: `cargo test` also builds target/debug/apiary (the tests run it), and a separate
# `cargo build` would compile wasmtime a second time with other dependency features.
mkdir -p target
# The sample extensions' own unit tests (each is a workspace of its own, built natively here).
for plugin in aws-discovery docker-discovery; do
  CARGO_TARGET_DIR=target/wasm-guests cargo test --quiet --manifest-path "extensions/$plugin/Cargo.toml"
done
cargo test --all-targets 2>&1 | tee target/cargo-test.log
APIARY_BIN=target/debug/apiary bash interop/run.sh
