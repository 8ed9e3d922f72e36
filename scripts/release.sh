#!/usr/bin/env bash
# Builds meshtune's two images and pushes them to REGISTRY with TAG:
#   REGISTRY/meshtune-agent:TAG   the agent, one static binary on an empty base
#                                 (entrypoint /usr/local/bin/meshtune-agent, user 65532)
#   REGISTRY/meshtune-filter:TAG  the proxy-wasm filter as Istio's WasmPlugin pulls it:
#                                 one layer holding plugin.wasm (the Wasm image
#                                 spec's "compat" variant, OCI media types)
# Tools: umoci (builds OCI image layouts) and skopeo (pushes them), both from
# Debian's packages (`apt-get install -y umoci skopeo`); no container daemon.
#
# Usage: scripts/release.sh [options] REGISTRY TAG
#   --out DIR            where the OCI layouts go (default: $CARGO_TARGET_DIR/images, or target/images)
#   --no-push            build and check the images, push nothing
#   --agent-bin FILE     a static agent binary already built (default: built here,
#                        release profile, `cargo rustc ... -C target-feature=+crt-static`)
#   --filter-wasm FILE   the filter already built (default: built here, wasm32-wasip1 release)
#   --tls-verify BOOL    passed to skopeo for the registry (default true)
# Then point the manifests at REGISTRY and TAG in manifests/images/kustomization.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[release] %s\n' "$*"; }
die() { printf '[release] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

target="${CARGO_TARGET_DIR:-target}"
out="$target/images"
push=1
agent_bin=""
filter_wasm=""
tls_verify=true
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --no-push) push=0; shift ;;
        --agent-bin) agent_bin="${2:?--agent-bin needs a file}"; shift 2 ;;
        --filter-wasm) filter_wasm="${2:?--filter-wasm needs a file}"; shift 2 ;;
        --tls-verify) tls_verify="${2:?--tls-verify needs true or false}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) args+=("$1"); shift ;;
    esac
done
[ "${#args[@]}" -eq 2 ] || { usage >&2; die "give REGISTRY and TAG (e.g. ghcr.io/you 0.1.0)"; }
registry="${args[0]%/}"
tag="${args[1]}"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "TAG '$tag' is not a valid image tag"

for tool in umoci skopeo readelf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install -y umoci skopeo binutils"
done

if [ -z "$agent_bin" ]; then
    say "building the agent as a static binary (release profile)"
    # Only the final link changes (static glibc, stripped): the dependencies'
    # build is the same as every other release build's.
    cargo rustc --release --locked -p meshtune-agent --bin meshtune-agent -- \
        -C target-feature=+crt-static -C strip=debuginfo
    agent_bin="$target/release/meshtune-agent"
fi
if [ -z "$filter_wasm" ]; then
    say "building the filter (wasm32-wasip1, release)"
    cargo build --release --locked --target wasm32-wasip1 -p meshtune-filter
    filter_wasm="$target/wasm32-wasip1/release/meshtune_filter.wasm"
fi
[ -f "$agent_bin" ] || die "agent binary $agent_bin not found"
[ -f "$filter_wasm" ] || die "filter $filter_wasm not found"
# The agent's image has no libraries: the binary must need none.
if readelf -l "$agent_bin" | grep -q 'program interpreter'; then
    die "$agent_bin is dynamically linked; build it with -C target-feature=+crt-static (see --help)"
fi
[ "$(head -c 4 "$filter_wasm" | od -An -tx1 | tr -d ' ')" = "0061736d" ] || die "$filter_wasm is not a Wasm module"

mkdir -p "$out"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"

# A fresh OCI layout at $out/NAME holding one empty image tagged $tag.
new_image() {
    local dir="$out/$1"
    rm -rf "$dir"
    umoci init --layout "$dir"
    umoci new --image "$dir:$tag"
}

# Adds one layer holding FILE at PATH (its directories 0755, owned by root,
# the file's mode kept; times set to the commit's, so a rebuild of the same
# commit gives the same layer). The tar is GNU tar's, added verbatim.
add_file_layer() {
    local image="$1" file="$2" path="$3" what="$4"
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/$(dirname "$path")"
    cp "$file" "$root/$path"
    chmod 0755 "$root/$(dirname "$path")"
    local top="${path%%/*}"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$created" \
        -C "$root" -cf "$root.tar" "$top"
    umoci raw add-layer --image "$image" --history.created_by "meshtune release.sh: $what" "$root.tar"
    rm -rf "$root" "$root.tar"
}

say "image meshtune-agent:$tag <- $agent_bin"
new_image meshtune-agent
agent="$out/meshtune-agent:$tag"
add_file_layer "$agent" "$agent_bin" usr/local/bin/meshtune-agent "the agent binary"
umoci config --image "$agent" \
    --config.entrypoint /usr/local/bin/meshtune-agent \
    --config.cmd run \
    --config.user 65532:65532 \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=meshtune-agent" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --history.created_by "meshtune release.sh: entrypoint and user"

say "image meshtune-filter:$tag <- $filter_wasm"
new_image meshtune-filter
filter="$out/meshtune-filter:$tag"
add_file_layer "$filter" "$filter_wasm" plugin.wasm "plugin.wasm"
umoci config --image "$filter" \
    --manifest.annotation "module.wasm.image/variant=compat" \
    --config.label "org.opencontainers.image.title=meshtune-filter" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --history.created_by "meshtune release.sh: Wasm image spec, compat variant"

for name in meshtune-agent meshtune-filter; do
    umoci gc --layout "$out/$name"
    say "$name: $(skopeo inspect --format '{{.Digest}} {{len .Layers}} layer(s)' "oci:$out/$name:$tag")"
done

if [ "$push" -eq 1 ]; then
    for name in meshtune-agent meshtune-filter; do
        say "pushing $registry/$name:$tag"
        skopeo copy --dest-tls-verify="$tls_verify" "oci:$out/$name:$tag" "docker://$registry/$name:$tag"
    done
    say "pushed. Point the manifests at them in manifests/images/kustomization.yaml:"
    say "  newName: $registry/meshtune-agent   newTag: \"$tag\""
    say "  newName: $registry/meshtune-filter  newTag: \"$tag\""
else
    say "not pushed (--no-push); OCI layouts in $out"
fi
