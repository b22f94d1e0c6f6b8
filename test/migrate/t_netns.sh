#!/bin/bash
# Two hosts on one machine: the source and the destination each in a network
# namespace of their own, joined by a veth pair this test creates (addresses exist
# only inside those namespaces), and python3 migrated from one to the other over
# libfabric's tcp provider. The output must equal an unmigrated run's.
. "$(dirname "$0")/lib.sh"

NS_SRC=rdmig-src-$$ NS_DST=rdmig-dst-$$
ADDR_SRC=10.231.$(($$ % 250)).1 ADDR=10.231.$(($$ % 250)).2
net_down() { ip netns del "$NS_SRC" 2>/dev/null; ip netns del "$NS_DST" 2>/dev/null; }
trap 'net_down; cleanup' EXIT
command -v ip >/dev/null || { echo "not ok netns: no ip (iproute2)"; echo "0 passed, 1 failed"; exit 1; }
set -e
ip netns add "$NS_SRC"
ip netns add "$NS_DST"
ip link add "vs$$" type veth peer name "vd$$"
ip link set "vs$$" netns "$NS_SRC"
ip link set "vd$$" netns "$NS_DST"
ip -n "$NS_SRC" addr add "$ADDR_SRC/24" dev "vs$$"
ip -n "$NS_DST" addr add "$ADDR/24" dev "vd$$"
for ns in "$NS_SRC" "$NS_DST"; do ip -n "$ns" link set lo up; done
ip -n "$NS_SRC" link set "vs$$" up
ip -n "$NS_DST" link set "vd$$" up
set +e
echo "-- python_heap_two_hosts ($ADDR_SRC -> $ADDR)"
python3 "$HERE/heap.py" >"$T/heap.ref" </dev/null
start_dst netns ip netns exec "$NS_DST" -- --wait || { fail netns "no destination"; finish; exit; }
(clean ip netns exec "$NS_SRC" python3 "$HERE/heap.py") >"$T/heap.out" </dev/null 2>"$T/netns.proc.err" &
pid=$!
wait_for_lines "$T/heap.out" 5 60
migrate netns "$pid" ip netns exec "$NS_SRC"
wait_dst 300
wait_proc "$pid" 300
if [ "$SRC_RC" != 0 ] || [ "$DST_RC" != 0 ]; then
  fail python_heap_two_hosts "src exit $SRC_RC, dst exit $DST_RC"; show_logs netns
elif ! grep -q "exited with status 0" "$T/netns.dst.log"; then
  fail python_heap_two_hosts "the migrated process did not exit 0"; show_logs netns
elif ! cmp -s "$T/heap.ref" "$T/heap.out"; then
  fail python_heap_two_hosts "output differs"; diff "$T/heap.ref" "$T/heap.out" | head; show_logs netns
else
  grep -h "migrated\|runs here" "$T"/netns.*.log | sed 's/^/  # /'
  ok python_heap_two_hosts
fi
finish
