#!/bin/bash
# Run INSIDE the rxe guest (test/rxe/run-in-vm.sh): the fault loop served over a real
# transport, on rdma-core verbs and on libfabric's verbs provider, both over rxe0.
#   guest-pager.sh PATH/TO/test_pager_tp
# The guest runs under TCG, where a demand fault that sleeps costs milliseconds (a
# wakeup per step), so the mirror is 16 MiB unless RDMIG_PAGER_MB says otherwise
# (run-in-vm.sh does not pass RDMIG_RXE_* variables into the guest).
set -uo pipefail
bin=$1
addr=${RDMIG_RXE_ADDR:?not in the rxe guest (run through test/rxe/run-in-vm.sh)}
mb=${RDMIG_PAGER_MB:-16}
rc=0
echo "== pager: verbs on rxe0 ($addr), $mb MiB"
"$bin" --transport verbs --addr "$addr" --mb "$mb" || rc=1
echo "== pager: fabric/verbs on rxe0 ($addr), $mb MiB"
"$bin" --transport fabric --provider verbs --addr "$addr" --mb "$mb" || rc=1
exit $rc
