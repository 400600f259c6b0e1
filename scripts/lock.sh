#!/usr/bin/env bash
# `make lock`: re-resolve the pinned, hashed dependency locks from
# pyproject.toml. Run it after changing a dependency there (or to take
# upstream fixes), review the diff, commit both files.
#
#   requirements.lock       what the image installs (runtime + the build
#                           backend, so orb8 builds without fetching anything);
#   requirements-test.lock  what `make setup` installs (the above + the test
#                           extra), constrained to the same versions.
#
# Both are resolved for CPython 3.11 (Debian bookworm's python3, the image's
# and CI's), universal across platforms, with every file's sha256: pip
# installs them with --require-hashes, so a changed file on the index fails
# the install instead of changing the build. The resolver is uv, pinned here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
UV_VERSION=0.13.9
cd "$ROOT"
mkdir -p build
if [[ ! -x build/lock-venv/bin/uv ]] || [[ "$(build/lock-venv/bin/uv --version)" != "uv $UV_VERSION"* ]]; then
    python3 -m venv build/lock-venv
    build/lock-venv/bin/pip install -q "uv==$UV_VERSION"
fi
build/lock-venv/bin/python - > build/build-system.in <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
compile() {
    build/lock-venv/bin/uv pip compile --quiet --native-tls --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command "make lock" pyproject.toml build/build-system.in "$@"
}
compile -o requirements.lock
compile --extra test --constraint requirements.lock -o requirements-test.lock
echo "lock: $(grep -c '==' requirements.lock) runtime, $(grep -c '==' requirements-test.lock) with tests" >&2
