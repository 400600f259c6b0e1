#!/usr/bin/env bash
# What each part of the image costs, unpacked (the table in
# docs/deploying.md#the-image):  bash scripts/image-sizes.sh [IMAGE]
set -euo pipefail
IMAGE="${1:-localhost/orb8:$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$(dirname "$0")/../exporter/__init__.py")}"
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
"${PODMAN[@]}" run --rm --entrypoint sh "$IMAGE" -c '
L=/usr/lib/$(ls /usr/lib | grep -- -linux-gnu | head -1)
S=$(echo /opt/orb8/lib/python3*/site-packages)
kb() { du -x --apparent-size -sck "$@" 2>/dev/null | tail -1 | cut -f1; }
row() { printf "%s\t%s\n" "$(kb $2)" "$1"; }
row "LLVM (libLLVM)" "$L/libLLVM-*"
row "clang (libclang-cpp)" "/usr/lib/llvm-*"
row "libbcc, libbpf, libelf" "$L/libbcc* $L/libbpf* $L/libelf* /usr/lib/python3/dist-packages/bcc"
row "libz3 stub" "$L/libz3*"
row "ICU (libicuuc + data stub), libxml2" "$L/libicu* $L/libxml2*"
row "Python 3.11 (interpreter, standard library + its zip, bytecode)" "/usr/bin/python3.11 $L/libpython3.11* /usr/lib/python3.11 /usr/lib/python311.zip"
row "numpy (+ the OpenBLAS it loads)" "$S/numpy $S/numpy.libs $S/numpy-*"
row "grpcio" "$S/grpc $S/grpcio-*"
row "protobuf, OpenTelemetry" "$S/google $S/protobuf-* $S/opentelemetry* $S/googleapis*"
row "pure-Python packages, one zip (kubernetes client, pydantic, requests, ...)" "$S/pure-python.zip"
row "other Python packages (pydantic-core, PyYAML, certifi, ...) and metadata" "$(ls -d $S/* | grep -vE "/(numpy|grpc|google|protobuf|opentelemetry|googleapis|pure-python.zip|exporter|orb8)[^/]*$")"
row "orb8" "$S/exporter $S/orb8-*"
row "kernel headers fallback" "/usr/lib/orb8"
row "libstdc++, libc, other libraries" "$(ls -d $L/* | grep -vE "/(libLLVM|libbcc|libbpf|libelf|libz3|libicu|libxml2|libpython3)[^/]*$")"
row "shell and base tools (bash, coreutils, dpkg, ...)" "$(ls -d /usr/bin/* /usr/sbin/* | grep -v python3)"
row "/etc, /var (dpkg database), /usr/share" "/etc /var /usr/share"
printf "%s\ttotal\n" "$(du -x --apparent-size -sk / | cut -f1)"
' | awk -F'\t' '{ printf "| %s | %.1f MB |\n", $2, $1 * 1024 / 1e6 }'
