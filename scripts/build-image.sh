#!/usr/bin/env bash
# `make image`: build localhost/orb8:<version> on this machine, where no
# container registry is reachable (see ../README or docs/deploying.md).
#
#   1. podman, mmdebstrap and runc from Debian, plus the containers.conf this
#      sandbox needs (no CAP_SYS_RESOURCE for ulimits);
#   2. a Debian bookworm root filesystem with python3-bpfcc, made by mmdebstrap
#      from the apt mirror, imported as localhost/orb8-base:bookworm (cached:
#      rebuilt only when missing);
#   3. `podman build` of ./Containerfile on top of it;
#   4. smoke test: `orb8 --version` in the image; its SBOM copied to build/.
#
# Elsewhere, `podman build -f Containerfile .` (or docker) does the same from
# debian:bookworm-slim.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/exporter/__init__.py")"
IMAGE="${IMAGE:-localhost/orb8:$VERSION}"
BASE="${BASE:-localhost/orb8-base:bookworm}"
log() { printf 'image: %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root"
    exit 1
fi

missing=()
for p in podman mmdebstrap runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# Without CAP_SYS_RESOURCE podman cannot apply its default ulimits; crun
# refuses the hybrid cgroup layout, so runc and the cgroupfs manager.
CONF=/etc/containers/containers.conf
if ! grep -qs '^default_ulimits = \[\]' "$CONF"; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n' >> "$CONF"
    log "wrote default_ulimits = [] to $CONF"
fi
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)

if ! "${PODMAN[@]}" image exists "$BASE"; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    log "building base $BASE with mmdebstrap"
    mmdebstrap --quiet --variant=apt --include=python3-bpfcc,python3-venv,ca-certificates \
        bookworm "$work/rootfs.tar"
    "${PODMAN[@]}" import --quiet "$work/rootfs.tar" "$BASE" >/dev/null
fi

log "building $IMAGE"
# Host network and the host's CA bundle: pip reaches PyPI the way the host
# does (here through a TLS-intercepting proxy whose CA only the host trusts).
CA=/etc/ssl/certs/ca-certificates.crt
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$REVISION" != unknown ]] && [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then
    REVISION="$REVISION-dirty"  # say so rather than claim a commit it is not
fi
"${PODMAN[@]}" build --quiet --network=host \
    --volume "$CA:/run/host-ca.crt:ro" --build-arg CA_BUNDLE=/run/host-ca.crt \
    --build-arg BASE="$BASE" --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    -t "$IMAGE" -f "$ROOT/Containerfile" "$ROOT" >/dev/null
got="$("${PODMAN[@]}" run --rm "$IMAGE" --version)"
[[ "$got" == "orb8 $VERSION" ]] || { log "smoke test: expected 'orb8 $VERSION', got '$got'"; exit 1; }
# The SBOM next to the image (it is inside too, /usr/share/doc/orb8/).
SBOM="$ROOT/build/$(basename "${IMAGE//:/-}").spdx.json"
mkdir -p "$ROOT/build"
"${PODMAN[@]}" run --rm --entrypoint cat "$IMAGE" /usr/share/doc/orb8/sbom.spdx.json > "$SBOM"
size="$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")"
log "built $IMAGE ($got, $((size / 1000000)) MB, revision $REVISION, SBOM $SBOM)"
