#!/usr/bin/env bash
# The main job: installs what is needed, builds the filter and starts a
# local mesh of real Envoy sidecars running it, the node agent, Prometheus
# and trace-driven load, printing the live per-chain view.
# Arguments go to `meshtune-lab up` (see `--help`), e.g. --duration 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meshtune/target}"
export MESHTUNE_ENVOY="${MESHTUNE_ENVOY:-${MESHTUNE_CACHE:-$HOME/.cache/meshtune}/envoy/envoy/_bin/envoy}"
echo "[quickstart] building the filter (wasm32-wasip1) and the lab"
cargo build --release --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter
cargo build -p meshtune-lab -p meshtune-agent
exec "$CARGO_TARGET_DIR/debug/meshtune-lab" up "$@"
