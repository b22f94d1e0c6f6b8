#!/bin/bash
# The failure-injection matrix: a real migration (python3 over a heap) with a
# failure injected at each named step of each side, and in the transport
# (rdmig/inject.h). What must hold, as a user would check it:
#   before the switch  src exits 1, dst exits 1, and the original finishes here
#                      with exactly the output of an unmigrated run;
#   a link lost after the switch, and back within --retry-s: the migration
#                      completes (both exit 0, output exactly the unmigrated one);
#   after the switch   the side that failed exits 3 with a message, the original
#                      is left stopped (never two copies running), and the output
#                      so far is a prefix of the right one: never a wrong line.
#   t_inject.sh [POINT...]   (default: all)
. "$(dirname "$0")/lib.sh"

HEAP_ARGS=(300000 30)
python3 "$HERE/heap.py" "${HEAP_ARGS[@]}" >"$T/ref" </dev/null

# one NAME SRC_ENV DST_ENV EXPECT: EXPECT is "rollback", "after", "recovered" or
# "complete" (a failure that costs only time: the prebuild of the husk, the watch
# on the process's calls, the tracking of file mappings, the answer to a held
# fault, which then waits for its part's walk), where a side must say
# what it could not do; a rollback with a SAYS entry must say that too
declare -A SAYS=(
  [dst.prebuild]="could not build the process's memory map ahead"
  [src.track_files]="private file mappings are not tracked"
  [src.early_calls]="its calls cannot be watched"
  [src.want_pages]="a fault on the destination waits for its part's walk"
  [tp.src.connect]="the source gave up before making its data connection"
)
one() {
  local name=$1 senv=$2 denv=$3 expect=$4
  start_dst "$name" env $denv -- --wait --timeout-ms 20000 --retry-s 3 || { fail "$name" "no destination"; return; }
  (clean python3 "$HERE/heap.py" "${HEAP_ARGS[@]}") >"$T/$name.out" </dev/null 2>"$T/$name.proc.err" &
  local pid=$!
  wait_for_lines "$T/$name.out" 3 60
  SRC_OPTS="--retry-s 3" migrate "$name" "$pid" env $senv
  if [ "$expect" = recovered ]; then
    wait "$pid" 2>/dev/null
    wait_dst 120
    local dpid
    if [ "$SRC_RC" != 0 ] || [ "$DST_RC" != 0 ] || ! grep -q "exited with status 0" "$T/$name.dst.log"; then
      fail "$name" "src exit $SRC_RC, dst exit $DST_RC (0 and 0 expected after the reconnection)"; show_logs "$name"; return
    fi
    if ! cmp -s "$T/ref" "$T/$name.out"; then
      fail "$name" "output differs from an unmigrated run"; show_logs "$name"; return
    fi
    if ! grep -q "reconnected" "$T/$name.src.log" || ! grep -q "is back" "$T/$name.dst.log"; then
      fail "$name" "the link did not break and come back"; show_logs "$name"; return
    fi
    grep -h "is back\|reconnected" "$T/$name".*.log | head -2 | sed 's/^/  # /'
    ok "$name"
    return
  fi
  if [ "$expect" = complete ]; then
    # a step that only costs time: the migration still completes, and says so
    wait "$pid" 2>/dev/null
    wait_dst 120
    if [ "$SRC_RC" != 0 ] || [ "$DST_RC" != 0 ] || ! grep -q "exited with status 0" "$T/$name.dst.log"; then
      fail "$name" "src exit $SRC_RC, dst exit $DST_RC (0 and 0 expected)"; show_logs "$name"; return
    fi
    if ! cmp -s "$T/ref" "$T/$name.out"; then
      fail "$name" "output differs from an unmigrated run"; show_logs "$name"; return
    fi
    if ! grep -q "${SAYS[$name]}" "$T/$name".*.log; then
      fail "$name" "no side said: ${SAYS[$name]}"; show_logs "$name"; return
    fi
    ok "$name"
    return
  fi
  if [ "$expect" = rollback ]; then
    if [ "$SRC_RC" != 1 ]; then
      # not rolled back: an original left stopped (a failure after the switch)
      # would never finish, and waiting for it would hang the whole matrix
      wait_dst 60
      local rpid
      rpid=$(sed -n 's/.*dst: pid \([0-9]*\) (pid [0-9]* on the source) runs here$/\1/p' \
        "$T/$name.dst.log" | head -1)
      kill -9 "$pid" ${rpid:+"$rpid"} 2>/dev/null
      wait "$pid" 2>/dev/null
      fail "$name" "src exit $SRC_RC, dst exit $DST_RC (1 and 1 expected: rolled back)"; show_logs "$name"; return
    fi
    wait "$pid"; local prc=$?
    wait_dst 60
    if [ "$SRC_RC" != 1 ] || [ "$DST_RC" != 1 ]; then
      fail "$name" "src exit $SRC_RC, dst exit $DST_RC (1 and 1 expected)"; show_logs "$name"; return
    fi
    if [ "$prc" != 0 ] || ! cmp -s "$T/ref" "$T/$name.out"; then
      fail "$name" "the original did not finish as if nothing happened (exit $prc)"; show_logs "$name"; return
    fi
    if [ -n "${SAYS[$name]:-}" ] && ! grep -q "${SAYS[$name]}" "$T/$name".*.log; then
      fail "$name" "no side said: ${SAYS[$name]}"; show_logs "$name"; return
    fi
    grep -h "rolled back\|aborted" "$T/$name".*.log | head -2 | sed 's/^/  # /'
    ok "$name"
    return
  fi
  # after the switch
  wait_dst 60
  local st dpid
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
  # the destination's process, blocked on its missing pages: killed by the test
  dpid=$(sed -n -e 's/.*dst: pid \([0-9]*\) (pid [0-9]* on the source) runs here$/\1/p' \
    -e 's/.* pid \([0-9]*\) waits on the pages.*/\1/p' "$T/$name.dst.log" | head -1)
  sleep 0.5
  local lines_a; lines_a=$(wc -l <"$T/$name.out")
  kill -9 "$pid" ${dpid:+"$dpid"} 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ "$SRC_RC" != 3 ] && [ "$DST_RC" != 3 ]; then
    fail "$name" "src exit $SRC_RC, dst exit $DST_RC (3 expected on the failing side)"; show_logs "$name"; return
  fi
  if [ "$st" != T ] && [ "$st" != t ]; then
    fail "$name" "the original is '$st', not stopped"; show_logs "$name"; return
  fi
  if ! head -n "$lines_a" "$T/ref" | cmp -s - "$T/$name.out"; then
    fail "$name" "the output is not a prefix of the right one: wrong data"; show_logs "$name"; return
  fi
  grep -h "failed after the switch\|STOPPED" "$T/$name".*.log | head -2 | cut -c1-150 | sed 's/^/  # /'
  ok "$name"
}

declare -A CASES=(
  [src.connected]="RDMIG_INJECT=src.connected||rollback"
  [src.tracking]="RDMIG_INJECT=src.tracking||rollback"
  [src.frozen]="RDMIG_INJECT=src.frozen||rollback"
  [src.capture]="RDMIG_INJECT=src.capture||rollback"
  [src.final_copy]="RDMIG_INJECT=src.final_copy||rollback"
  [src.track_files]="RDMIG_INJECT=src.track_files||complete"
  [src.early_calls]="RDMIG_INJECT=src.early_calls||complete"
  [src.sent]="RDMIG_INJECT=src.sent||rollback"
  [dst.receiving]="|RDMIG_INJECT=dst.receiving|rollback"
  [dst.prebuild]="|RDMIG_INJECT=dst.prebuild|complete"
  [dst.restoring]="|RDMIG_INJECT=dst.restoring|rollback"
  [dst.pager]="|RDMIG_INJECT=dst.pager|rollback"
  [dst.ready]="|RDMIG_INJECT=dst.ready|rollback"
  [dst.resume]="|RDMIG_INJECT=dst.resume|rollback"
  [tp.src.mr_reg]="RDMIG_INJECT_TP=mr_reg:2||rollback"
  [tp.src.connect]="RDMIG_INJECT_TP=connect:2||rollback"
  [tp.src.send]="RDMIG_INJECT_TP=send:12||rollback"
  [tp.dst.recv]="|RDMIG_INJECT_TP=recv:9|rollback"
  [src.committed]="RDMIG_INJECT=src.committed||after"
  [src.serving]="RDMIG_INJECT=src.serving||after"
  [src.part]="RDMIG_HOLD=on RDMIG_INJECT=src.part||rollback"
  [src.part_late]="RDMIG_HOLD=late RDMIG_INJECT=src.part||after"
  [src.want_pages]="RDMIG_HOLD=late RDMIG_INJECT=src.want_pages||complete"
  [dst.running]="|RDMIG_INJECT=dst.running|after"
  [tp.dst.post_read]="|RDMIG_INJECT_TP=post_read:40|recovered"
  [tp.src.recv]="RDMIG_INJECT_TP=recv:3||recovered"
)
ORDER=(src.connected src.tracking src.track_files src.early_calls src.frozen src.capture src.final_copy src.sent dst.receiving
       dst.prebuild dst.restoring dst.pager dst.ready dst.resume tp.src.mr_reg tp.src.connect tp.src.send
       tp.dst.recv
       src.part src.committed src.serving src.part_late src.want_pages dst.running tp.dst.post_read
       tp.src.recv)
sel=("$@")
[ ${#sel[@]} -gt 0 ] || sel=("${ORDER[@]}")
for c in "${sel[@]}"; do
  IFS='|' read -r senv denv expect <<<"${CASES[$c]}"
  echo "-- $c ($expect)"
  one "$c" "$senv" "$denv" "$expect"
done
finish
