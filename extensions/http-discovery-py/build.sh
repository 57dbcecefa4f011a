#!/usr/bin/env bash
# Builds the HTTP Registry Discovery extension into a WebAssembly component.
#
#   bash build.sh [OUTPUT]     # default: ./http-discovery-py.wasm
#
# Needs componentize-py (pinned in requirements.txt): python3 -m pip install -r requirements.txt
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/../../wit"
out="${1:-$here/http-discovery-py.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

want="$(sed -n 's/^componentize-py==//p' "$here/requirements.txt")"
if ! have="$(componentize-py --version 2>/dev/null)"; then
  echo "componentize-py not found: python3 -m pip install -r $here/requirements.txt" >&2
  exit 1
fi
if [ "$have" != "componentize-py $want" ]; then
  echo "warning: $have, but requirements.txt pins $want" >&2
fi

mkdir -p "$(dirname "$out")"
# Build in a scratch folder, so that only app.py (and no stray .py files or caches) is bundled.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/app.py" "$work/"
cd "$work"
componentize-py -d "$wit" -w discovery componentize app -p "$work" -o "$work/out.wasm"
mv "$work/out.wasm" "$out"
