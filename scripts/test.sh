#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), checks
# formatting and lints (native and wasm32-wasip1), builds the filter, and
# runs every test, including the end-to-end ones with real Envoy sidecars
# and a real Prometheus server.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Keep the build cache outside the clone so fresh clones build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meshtune/target}"
export MESHTUNE_ENVOY="${MESHTUNE_ENVOY:-${MESHTUNE_CACHE:-$HOME/.cache/meshtune}/envoy/envoy/_bin/envoy}"

step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "clippy (native)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "clippy (wasm32-wasip1)"
cargo clippy --target wasm32-wasip1 --locked -p meshtune-filter-core -p meshtune-filter -p meshtune-noop-filter -- -D warnings
step "build the filter and the no-op filter (wasm32-wasip1, release)"
cargo build --release --locked --target wasm32-wasip1 -p meshtune-filter -p meshtune-noop-filter
ls -l "$CARGO_TARGET_DIR/wasm32-wasip1/release/"meshtune_*.wasm
step "the agent as a static binary, for the images' test (scripts/release.sh builds it in release)"
cargo rustc --locked -p meshtune-agent --bin meshtune-agent -- -C target-feature=+crt-static -C strip=debuginfo
mkdir -p "$CARGO_TARGET_DIR/images"
cp "$CARGO_TARGET_DIR/debug/meshtune-agent" "$CARGO_TARGET_DIR/images/meshtune-agent-static"
step "tests"
# One test at a time: the end-to-end tests each run a mesh of Envoy sidecars.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
