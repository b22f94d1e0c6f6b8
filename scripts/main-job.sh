#!/bin/bash
# The README's first command: install, build, and run the main job on this one
# machine with the default transport (libfabric's tcp provider on loopback).
# Until the migration itself exists, the main job is the read-latency benchmark:
# one-sided READs against a plain TCP page server measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
exec build/bench/read_lat --transport fabric --provider tcp --addr 127.0.0.1 "$@"
