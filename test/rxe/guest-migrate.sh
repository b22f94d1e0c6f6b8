#!/bin/bash
# Run INSIDE the rxe guest (test/rxe/run-in-vm.sh): real programs migrated over
# rdma-core verbs on rxe0 (source and destination daemons both in the guest, the
# mirror pinned there: the host's 8 MiB memlock limit does not apply).
#   guest-migrate.sh BUILD_DIR
# The guest runs under TCG, so the workloads are smaller than on the host.
set -uo pipefail
build=$1
: "${RDMIG_RXE_ADDR:?not in the rxe guest (run through test/rxe/run-in-vm.sh)}"
here=$(cd "$(dirname "$0")/.." && pwd)
export RDMIG_BUILD=$build RDMIG_MIG_ADDR=$RDMIG_RXE_ADDR
export RDMIG_HEAP_N=${RDMIG_HEAP_N:-200000} RDMIG_HEAP_STEPS=${RDMIG_HEAP_STEPS:-20}
export RDMIG_GZ_LINES=${RDMIG_GZ_LINES:-2000000}
export RDMIG_THREADS_ROUNDS=${RDMIG_THREADS_ROUNDS:-100} RDMIG_THREADS_CHAIN=${RDMIG_THREADS_CHAIN:-5000}
export RDMIG_WRITER_SWEEPS=${RDMIG_WRITER_SWEEPS:-60}
export RDMIG_FORKS_N=${RDMIG_FORKS_N:-100000} RDMIG_FORKS_STEPS=${RDMIG_FORKS_STEPS:-80}
export RDMIG_OPS_MB=${RDMIG_OPS_MB:-16}
echo "== migration: verbs on rxe0 ($RDMIG_RXE_ADDR)"
# the kernel's static keys held on while the call watches come and go (why:
# hold-perf-keys.py)
python3 "$here/rxe/hold-perf-keys.py" & holder=$!
trap 'kill "$holder" 2>/dev/null' EXIT
# First the restore's round trips: this guest's kernel runs THP "always" (the
# host's: "madvise"), and they check that after a build nothing but the eagerly
# sent pages is present: one write into a range that may hold a huge page used
# to fill 2 MiB with zeros the pager never replaced (a threaded python resumed
# with a zeroed stack and returned to address 0).
# (through a pipe: the guest's stdout is a virtio-serial device, which the
# capture refuses in the workloads that inherit it)
"$build/test/test_restore" 2>&1 | cat || exit 1
# held_postcopy, held_late_postcopy: the walk outside the freeze, on verbs and
# with soft-dirty tracking (its parts copied by the soft-dirty bits): parts sent
# while the destination restores (verbs' receive buffers not read until its
# pager runs), and after the resume.
# writer_hybrid: Debian 12's kernel tracks with soft-dirty bits, so hybrid must
# say it cannot tell what was written and make its one pull (sparse_hybrid, the
# rule's other side, needs 6.7's tracking; its process also ends before a copy
# of its 1 GiB under emulation).
RDMIG_MIG_TRANSPORT=verbs "$here/migrate/t_programs.sh" python_heap held_postcopy held_late_postcopy python_heap_precopy python_heap_hybrid \
  gzip_file py_threads_postcopy py_threads_precopy py_threads_hybrid forks_postcopy forks_precopy forks_hybrid postcopy_ops \
  writer_hybrid
