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
# Two more cases bring a source that is not the destination's own (foreign:
# another migration's; returning: one coming back to a destination started
# anew): it is turned away, and no process gets another's pages.
#   t_inject.sh [POINT...]   (default: all)
. "$(dirname "$0")/lib.sh"

# (the soft-RoCE guest, under emulation, sets smaller ones: test/rxe/guest-inject.sh)
HEAP_ARGS=("${RDMIG_INJECT_HEAP_N:-300000}" "${RDMIG_INJECT_HEAP_STEPS:-30}")
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
    wait_proc "$pid" 120
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
    wait_proc "$pid" 120
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
    wait_proc "$pid" 120; local prc=$?
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

# A second migration's source reaching a destination whose own source is gone
# and may come back (--retry-s): it must be turned away, never taken for the
# returning source. Both processes run without ASLR and hold different values
# at the same addresses, so a destination that took the second source's mirror
# for its own would feed the first process the second one's pages. Must hold:
# the second source exits 1 saying the destination serves another migration,
# its original finishes here exactly as unmigrated; the destination says it
# turned a source away, and exits 3 when its own does not come back; the
# first process's output is a prefix of its right one.
foreign() {
  local name=foreign a=foreign.a b=foreign.b apid bpid dpid
  setarch -R python3 "$HERE/heap.py" "${HEAP_ARGS[@]}" 1 >"$T/ref.seed1" </dev/null
  # the destination's 40th READ fails: the link is lost after the switch
  start_dst "$name" env RDMIG_INJECT_TP=post_read:40 -- --wait --timeout-ms 20000 --retry-s 15 ||
    { fail "$name" "no destination"; return; }
  (clean setarch -R python3 "$HERE/heap.py" "${HEAP_ARGS[@]}") >"$T/$a.out" </dev/null 2>"$T/$a.proc.err" &
  apid=$!
  wait_for_lines "$T/$a.out" 3 60
  # its source does not wait for the destination to come back: it gives up (exit 3)
  SRC_OPTS="--retry-s 0" migrate "$a" "$apid"
  local i
  for i in $(seq 1 300); do grep -q "waiting up to" "$T/$name.dst.log" && break; sleep 0.1; done
  if ! grep -q "waiting up to" "$T/$name.dst.log"; then
    kill -9 "$apid" 2>/dev/null; wait "$apid" 2>/dev/null
    fail "$name" "the destination did not wait for its source (src exit $SRC_RC)"; show_logs "$name"; show_logs "$a"; return
  fi
  (clean setarch -R python3 "$HERE/heap.py" "${HEAP_ARGS[@]}" 1) >"$T/$b.out" </dev/null 2>"$T/$b.proc.err" &
  bpid=$!
  wait_for_lines "$T/$b.out" 3 60
  migrate "$b" "$bpid"
  local brc=$SRC_RC
  wait_proc "$bpid" 120; local prc=$?
  wait_dst 60
  dpid=$(sed -n -e 's/.*dst: pid \([0-9]*\) (pid [0-9]* on the source) runs here$/\1/p' \
    "$T/$name.dst.log" | head -1)
  local lines_a; lines_a=$(wc -l <"$T/$a.out")
  kill -9 "$apid" ${dpid:+"$dpid"} 2>/dev/null
  wait "$apid" 2>/dev/null
  if [ "$brc" != 1 ] || ! grep -q "serves another migration" "$T/$b.src.log"; then
    fail "$name" "the second source exited $brc without saying the destination serves another migration"
    show_logs "$b"; show_logs "$name"; return
  fi
  if [ "$prc" != 0 ] || ! cmp -s "$T/ref.seed1" "$T/$b.out"; then
    fail "$name" "the second original did not finish as if nothing happened (exit $prc)"; show_logs "$b"; return
  fi
  if ! grep -q "turned away a source of another migration" "$T/$name.dst.log" || [ "$DST_RC" != 3 ]; then
    fail "$name" "dst exit $DST_RC (3 expected), or it did not say it turned the second source away"
    show_logs "$name"; return
  fi
  if ! head -n "$lines_a" "$T/ref" | cmp -s - "$T/$a.out"; then
    fail "$name" "the first process's output is not a prefix of the right one: wrong data"; show_logs "$name"; return
  fi
  grep -h "turned away\|serves another" "$T/$name.dst.log" "$T/$b.src.log" | head -2 | cut -c1-150 | sed 's/^/  # /'
  ok "$name"
}

# A source that lost its destination after the switch and reconnects to one
# started anew on the same port (the old one gone, and with it what it held)
# is refused at once, never taken for the start of a new migration: it exits 3
# saying so, before its --retry-s is up, and leaves its original stopped; the
# new destination says it turned it away and goes on waiting for a migration
# of its own.
returning() {
  local name=returning pid port dpid st
  start_dst "$name" env RDMIG_INJECT=dst.running -- --timeout-ms 20000 --retry-s 3 ||
    { fail "$name" "no destination"; return; }
  port=$DST_PORT
  (clean python3 "$HERE/heap.py" "${HEAP_ARGS[@]}") >"$T/$name.out" </dev/null 2>"$T/$name.proc.err" &
  pid=$!
  wait_for_lines "$T/$name.out" 3 60
  (SRC_OPTS="--retry-s 60" migrate "$name" "$pid"; exit "$SRC_RC") &
  local mig=$!
  # the first destination fails once the process runs there, and exits 3
  wait_dst 60
  dpid=$(sed -n 's/.* pid \([0-9]*\) waits on the pages.*/\1/p' "$T/$name.dst.log" | head -1)
  mv "$T/$name.dst.log" "$T/$name.first.dst.log"
  if [ "$DST_RC" != 3 ]; then
    kill -9 "$pid" ${dpid:+"$dpid"} "$mig" 2>/dev/null; wait "$mig" 2>/dev/null
    fail "$name" "the first destination exited $DST_RC, not 3"; show_logs "$name.first"; return
  fi
  DST_LISTEN_PORT=$port start_dst "$name" -- --timeout-ms 20000 ||
    { kill -9 "$pid" ${dpid:+"$dpid"} "$mig" 2>/dev/null; fail "$name" "no second destination on port $port"; return; }
  wait_proc "$mig" 50
  local rc=$?
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
  sleep 0.3
  local alive=no
  kill -0 "$DST_PID" 2>/dev/null && alive=yes
  kill -9 "$pid" ${dpid:+"$dpid"} "$DST_PID" 2>/dev/null
  wait "$pid" 2>/dev/null
  wait "$DST_PID" 2>/dev/null
  if [ "$rc" != 3 ] || ! grep -q "has no migration to take back" "$T/$name.src.log"; then
    fail "$name" "the source exited $rc without saying the new destination has no migration to take back"
    show_logs "$name"; return
  fi
  if ! grep -q "turned away a source coming back" "$T/$name.dst.log" || [ "$alive" != yes ]; then
    fail "$name" "the new destination did not turn the source away and go on listening (alive: $alive)"
    show_logs "$name"; return
  fi
  if [ "$st" != T ] && [ "$st" != t ]; then
    fail "$name" "the original is '$st', not stopped"; show_logs "$name"; return
  fi
  grep -h "turned away\|take back" "$T/$name.dst.log" "$T/$name.src.log" | head -2 | cut -c1-150 | sed 's/^/  # /'
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
  [tp.src.send]="RDMIG_INJECT_TP=send:14||rollback"
  [tp.dst.recv]="|RDMIG_INJECT_TP=recv:11|rollback"
  [src.committed]="RDMIG_INJECT=src.committed||after"
  [src.serving]="RDMIG_INJECT=src.serving||after"
  [src.part]="RDMIG_HOLD=on RDMIG_INJECT=src.part||rollback"
  [src.part_late]="RDMIG_HOLD=late RDMIG_INJECT=src.part||after"
  [src.want_pages]="RDMIG_HOLD=late RDMIG_INJECT=src.want_pages||complete"
  [dst.running]="|RDMIG_INJECT=dst.running|after"
  [tp.dst.post_read]="|RDMIG_INJECT_TP=post_read:40|recovered"
  [tp.src.recv]="RDMIG_INJECT_TP=recv:4||recovered"
  [foreign]="special"
  [returning]="special"
)
ORDER=(src.connected src.tracking src.track_files src.early_calls src.frozen src.capture src.final_copy src.sent dst.receiving
       dst.prebuild dst.restoring dst.pager dst.ready dst.resume tp.src.mr_reg tp.src.connect tp.src.send
       tp.dst.recv
       src.part src.committed src.serving src.part_late src.want_pages dst.running tp.dst.post_read
       tp.src.recv foreign returning)
sel=("$@")
[ ${#sel[@]} -gt 0 ] || sel=("${ORDER[@]}")
for c in "${sel[@]}"; do
  if [ "${CASES[$c]:-}" = special ]; then echo "-- $c"; "$c"; continue; fi
  IFS='|' read -r senv denv expect <<<"${CASES[$c]}"
  echo "-- $c ($expect)"
  one "$c" "$senv" "$denv" "$expect"
done
finish
