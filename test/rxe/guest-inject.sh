#!/bin/bash
# Run INSIDE the rxe guest (test/rxe/run-in-vm.sh): the failure-injection matrix
# (test/migrate/t_inject.sh, every case) over rdma-core verbs on rxe0, source
# and destination daemons both in the guest.
#   guest-inject.sh BUILD_DIR
# The guest runs under TCG: the heap is smaller than on the host, so that the
# originals a rollback leaves running finish in seconds.
set -uo pipefail
build=$1
: "${RDMIG_RXE_ADDR:?not in the rxe guest (run through test/rxe/run-in-vm.sh)}"
here=$(cd "$(dirname "$0")/.." && pwd)
export RDMIG_BUILD=$build RDMIG_MIG_ADDR=$RDMIG_RXE_ADDR RDMIG_MIG_TRANSPORT=verbs
export RDMIG_INJECT_HEAP_N=${RDMIG_INJECT_HEAP_N:-150000}
export RDMIG_INJECT_HEAP_STEPS=${RDMIG_INJECT_HEAP_STEPS:-20}
echo "== failure injection: verbs on rxe0 ($RDMIG_RXE_ADDR)"
# the kernel's static keys held on while the call watches come and go (why:
# hold-perf-keys.py)
python3 "$here/rxe/hold-perf-keys.py" & holder=$!
"$here/migrate/t_inject.sh"; rc=$?
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
exit $rc
