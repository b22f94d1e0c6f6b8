#!/bin/bash
# Every backend's read latency beside its baseline, each measured in one run:
#   fabric/tcp on loopback here        vs a plain TCP page server
#   verbs and fabric/verbs on rxe0     vs perftest (ib_read_lat / ib_read_bw), in the guest
# Usage: bench/read-lat-all.sh [BUILD_DIR]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
echo "## load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo "## fabric/tcp on 127.0.0.1"
"$build/bench/read_lat" --transport fabric --provider tcp --addr 127.0.0.1
echo
echo "## in the soft-RoCE guest (qemu TCG; absolute numbers are the emulator's)"
test/rxe/run-in-vm.sh bash -c '
  set -e
  echo "## verbs on rxe0 ($RDMIG_RXE_ADDR)"
  "$0"/bench/read_lat --transport verbs --addr "$RDMIG_RXE_ADDR" --iters 2000 \
    --baseline perftest --perftest-cmd test/rxe/perftest-baseline.sh
  echo
  echo "## fabric/verbs on rxe0"
  "$0"/bench/read_lat --transport fabric --provider verbs --addr "$RDMIG_RXE_ADDR" --iters 2000 \
    --baseline perftest --perftest-cmd test/rxe/perftest-baseline.sh' "$build"
