#!/bin/bash
# Post-copy fault latency on every transport, each run printing its own baselines
# (raw READ, local uffd floor, raw bandwidth) measured in the same run:
#   fabric/tcp on loopback here                  sizes $FAULT_LAT_HOST_SIZES  (256M,1G,4G)
#   verbs and fabric/verbs on rxe0, in the guest sizes $FAULT_LAT_GUEST_SIZES (64M,256M:
#                                                the guest has 3 GiB of RAM and holds
#                                                both the mirror and the lazy copy)
# Usage: bench/fault-lat-all.sh [BUILD_DIR] [extra fault_lat args for every run]
#   (after scripts/build.sh). Exit status: non-zero when any run failed or saw wrong
#   data; timings never fail it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
build=$(cd "${1:-build}" && pwd) || exit 2
shift || true
host_sizes=${FAULT_LAT_HOST_SIZES:-256M,1G,4G}
guest_sizes=${FAULT_LAT_GUEST_SIZES:-64M,256M}
# Two transports under TCG emulation take far longer than the harness's default.
export RDMIG_RXE_TIMEOUT=${RDMIG_RXE_TIMEOUT:-3600}
rc=0

echo "## load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo "## fabric/tcp on 127.0.0.1"
"$build/bench/fault_lat" --transport fabric --provider tcp --addr 127.0.0.1 \
  --sizes "$host_sizes" "$@" || rc=1
echo
echo "## in the soft-RoCE guest (qemu TCG; absolute numbers are the emulator's)"
# shellcheck disable=SC2016 # expanded by the guest's shell
test/rxe/run-in-vm.sh bash -c '
  build=$1 sizes=$2; shift 2
  rc=0
  echo "## load in the guest: $(cut -d" " -f1-3 /proc/loadavg), $(nproc) vCPUs"
  echo "## verbs on rxe0 ($RDMIG_RXE_ADDR)"
  "$build"/bench/fault_lat --transport verbs --addr "$RDMIG_RXE_ADDR" --sizes "$sizes" \
    --iters 2000 "$@" || rc=1
  echo
  echo "## fabric/verbs on rxe0"
  "$build"/bench/fault_lat --transport fabric --provider verbs --addr "$RDMIG_RXE_ADDR" \
    --sizes "$sizes" --iters 2000 "$@" || rc=1
  exit $rc' fault-lat-guest "$build" "$guest_sizes" "$@" || rc=1
exit $rc
