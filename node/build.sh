#!/usr/bin/env bash
# Builds the addon (cargo, release) and puts it beside index.js as sm.node.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -p sm-node
target=$(cd .. && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo ../target)
cp "$target/release/libsm_node.so" sm.node.tmp
mv sm.node.tmp sm.node
echo "built: node/sm.node"
