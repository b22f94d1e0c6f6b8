#!/bin/bash
# build.sh DIR [CMAKE ARGS...]: configure and build rdmig into DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}; shift || true
cmake -S . -B "$dir" -DRDMIG_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
