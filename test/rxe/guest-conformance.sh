#!/bin/bash
# Run INSIDE the rxe guest (test/rxe/run-in-vm.sh): the transport conformance suite
# on rdma-core verbs and on libfabric's verbs provider, both over rxe0.
#   guest-conformance.sh PATH/TO/tp_conformance
set -uo pipefail
bin=$1
addr=${RDMIG_RXE_ADDR:?not in the rxe guest (run through test/rxe/run-in-vm.sh)}
rc=0
echo "== conformance: verbs on rxe0 ($addr)"
"$bin" --transport verbs --addr "$addr" --region-mb "${RDMIG_RXE_REGION_MB:-1024}" \
  --cycles "${RDMIG_RXE_CYCLES:-1000}" || rc=1
echo "== conformance: fabric/verbs on rxe0 ($addr)"
"$bin" --transport fabric --provider verbs --addr "$addr" --region-mb "${RDMIG_RXE_REGION_MB:-1024}" \
  --cycles "${RDMIG_RXE_CYCLES:-1000}" || rc=1
exit $rc
