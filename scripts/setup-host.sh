#!/usr/bin/env bash
# Prepares this host for orb8 and its tests. Idempotent: every step checks
# before it acts, so `make run` and `make test` can call it every time.
#
#   - Debian packages: BCC (python3-bpfcc, bpfcc-tools), bpftool, kernel
#     headers, and the real Prometheus/Alertmanager/iperf3/tmux the tests use;
#   - kernel headers for the running kernel, or the distribution's headers
#     linked in as a fallback (see README "Requirements" and docs/deploying.md);
#   - tracefs mounted at /sys/kernel/tracing;
#   - a virtualenv at .venv with orb8 installed and `import bcc` working.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
log() { printf 'setup: %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root (loads eBPF programs, installs packages)"
    exit 1
fi

PACKAGES=(python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 iproute2 iperf3
          prometheus prometheus-alertmanager gcc libc6-dev python3-venv tmux)
if [[ "$(uname -m)" == "aarch64" ]]; then
    PACKAGES=("${PACKAGES[@]/linux-headers-amd64/linux-headers-arm64}")
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # policy-rc.d keeps the packaged prometheus services from starting.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

# Kernel headers: BCC looks in /lib/modules/$(uname -r)/{build,source}. When
# the running kernel has no headers package (custom/cloud kernels), link the
# newest distribution headers. Probes only use UAPI layouts, which are stable
# across versions, so this is safe for orb8 (not for arbitrary BCC tools).
KREL="$(uname -r)"
MODDIR="/lib/modules/$KREL"
if [[ ! -e "$MODDIR/build/include" && ! -e /sys/kernel/kheaders.tar.xz ]]; then
    arch_dir="$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-arm64 2>/dev/null | sort -V | tail -1 || true)"
    if [[ -z "$arch_dir" ]]; then
        log "no kernel headers found for $KREL and no distribution headers in /usr/src"
        exit 1
    fi
    common_dir="${arch_dir%-*}-common"
    mkdir -p "$MODDIR"
    ln -sfn "$arch_dir" "$MODDIR/build"
    ln -sfn "$common_dir" "$MODDIR/source"
    log "linked distribution headers $arch_dir (+ $common_dir) for kernel $KREL"
fi

if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs tracefs /sys/kernel/tracing
    log "mounted tracefs at /sys/kernel/tracing"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# bcc is a pure-Python ctypes wrapper over libbcc, so the distribution's
# module works from any Python 3; link just that package, not all of
# dist-packages.
BCC_DIR=/usr/lib/python3/dist-packages/bcc
if [[ ! -e "$SITE/bcc" ]]; then
    ln -sfn "$BCC_DIR" "$SITE/bcc"
fi
# Dependencies exactly as locked (requirements-test.lock, `make lock`), hash
# checked; then orb8 itself, editable, with the locked build backend.
STAMP="$VENV/.orb8-installed"
LOCK="$ROOT/requirements-test.lock"
if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" || "$LOCK" -nt "$STAMP" ]]; then
    log "installing orb8 and its locked dependencies into $VENV"
    "$VENV/bin/pip" install -q --require-hashes -r "$LOCK"
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT"
    touch "$STAMP"
fi
"$VENV/bin/python" -c 'import bcc' || { log "import bcc failed in $VENV"; exit 1; }
