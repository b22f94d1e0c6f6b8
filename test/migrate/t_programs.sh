#!/bin/bash
# Real programs nobody here wrote, each migrated mid-run and required to produce
# exactly the output of an unmigrated run; and every refusal of this version.
#   t_programs.sh [CASE...]    cases: python_heap held_{postcopy,late_postcopy,late_idle} python_heap_untracked python_heap_precopy
#                              python_heap_hybrid gzip_file py_threads_{postcopy,precopy,hybrid}
#                              forks_{postcopy,precopy,hybrid} postcopy_ops
#                              sparse_{postcopy,precopy,hybrid} writer_{postcopy,hybrid}
#                              handlers_{steady,flipping}
#                              refuse_socket refuse_huge_anon
#                              refuse_shm bad_token
#                              (default: all)
# Prints "ok NAME" / "not ok NAME: why" per case and "N passed, N failed".
. "$(dirname "$0")/lib.sh"

# run_migrated NAME OUTFILE SETTLE_LINES CMD...: runs CMD (stdout to OUTFILE, stdin
# /dev/null), migrates it once it printed SETTLE_LINES lines, waits for it to finish
# on the destination. Sets SRC_RC, DST_RC.
run_migrated() {
  local name=$1 out=$2 settle=$3; shift 3
  start_dst "$name" -- --wait || { SRC_RC=99; DST_RC=99; return; }
  (clean "$@") >"$out" </dev/null 2>"$T/$name.proc.err" &
  local pid=$!
  if ! wait_for_lines "$out" "$settle" 60; then
    echo "workload did not get going"; cat "$T/$name.proc.err"
    kill -9 "$pid"; SRC_RC=98; DST_RC=98; return
  fi
  migrate "$name" "$pid"
  wait_dst 300
  wait_proc "$pid" 300 # the original: killed by the source once all pages moved
}

check_migrated() { # NAME REF OUT
  local name=$1
  if [ "$SRC_RC" != 0 ] || [ "$DST_RC" != 0 ]; then
    fail "$name" "src exit $SRC_RC, dst exit $DST_RC"; show_logs "$name"; return
  fi
  if ! grep -q "exited with status 0" "$T/$name.dst.log"; then
    fail "$name" "the migrated process did not exit 0"; show_logs "$name"; return
  fi
  if ! cmp -s "$2" "$3"; then
    fail "$name" "output differs from an unmigrated run"
    diff "$2" "$3" | head -20; show_logs "$name"; return
  fi
  if [ -n "${EXTRA_CHECK:-}" ] && ! "$EXTRA_CHECK" "$name"; then return; fi
  grep -h "migrated\|runs here\|hybrid:" "$T/$name".*.log | sed 's/^/  # /'
  ok "$name"
}

# in_mode NAME MODE SETTLE_LINES CMD...: an unmigrated run of CMD, then one
# migrated with --mode MODE once it printed SETTLE_LINES lines; outputs compared.
in_mode() {
  local name=$1 mode=$2 settle=$3; shift 3
  "$@" >"$T/$name.ref" </dev/null || { fail "$name" "reference run failed"; return; }
  SRC_OPTS="--mode $mode ${SRC_OPTS:-}" run_migrated "$name" "$T/$name.out" "$settle" "$@"
  check_migrated "$name" "$T/$name.ref" "$T/$name.out"
}

# Sizes: RDMIG_HEAP_N objects, RDMIG_HEAP_STEPS steps (the soft-RoCE guest runs
# under emulation and uses smaller ones), RDMIG_GZ_LINES lines for gzip.
HEAP_ARGS=("${RDMIG_HEAP_N:-1500000}" "${RDMIG_HEAP_STEPS:-40}")
GZ_LINES=${RDMIG_GZ_LINES:-10000000}

# Without RDMIG_HOLD the source holds the walk out of the freeze from 2 GiB, or
# when its settling rounds did not converge: the last one copied 4096 pages or
# more (the freeze would copy about as many again). The heap is far below 2 GiB;
# whether python's writes outpace the rounds depends on the machine, so the
# check reads the last round's count (-v) and requires the decision that goes
# with it, and says which it was.
hold_rule() { # NAME
  local last
  last=$(sed -n 's/.*settling round [0-9]*: \([0-9]*\) pages.*/\1/p' "$T/$1.src.log" | tail -1)
  if [ -z "$last" ]; then
    fail "$1" "no settling round in the source's log"; show_logs "$1"; return 1
  fi
  if [ "$last" -ge 4096 ]; then
    walked "$1" || return 1
    echo "  # the last settling round copied $last pages: held, as the rule says"
  elif grep -q "parts of its memory walked outside the freeze" "$T/$1.src.log"; then
    fail "$1" "the walk was held although the rounds converged ($last pages)"; show_logs "$1"; return 1
  else
    echo "  # the last settling round copied $last pages: walked in the freeze, as the rule says"
  fi
}
python_heap() {
  SRC_OPTS=-v EXTRA_CHECK=hold_rule in_mode python_heap postcopy 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"
}
# writer.py rewrites its memory all the time (two threads): the rounds are
# least likely to converge for it.
writer_postcopy() {
  SRC_OPTS=-v EXTRA_CHECK=hold_rule in_mode writer_postcopy postcopy 5 python3 "$HERE/writer.py" \
    "${RDMIG_WRITER_SWEEPS:-400}"
}

# The fallback of kernels without asynchronous write tracking (before 6.7, or
# without soft-dirty): nothing is copied while the process runs, everything with
# data at the freeze, and no PAGEMAP_SCAN (pagemap entries are read instead).
# The walk outside the freeze (RDMIG_HOLD): the heap's vmas go out held and the
# source walks and copies them part by part. With "on" it begins in the
# capture's idle time and goes on while the destination restores (parts sent
# before GO); with "late" it begins only with the first fault's WANT after the
# resume, so the heap's pages wait on the destination until the source answers
# the WANT with the frozen process's pages, or their part comes.
walked() { # NAME
  if ! grep -q "parts of its memory walked outside the freeze" "$T/$1.src.log"; then
    fail "$1" "the source did not walk the held memory outside the freeze"; show_logs "$1"; return 1
  fi
}
walked_after() { # NAME
  if ! grep -q "parts of its memory walked outside the freeze, 0 of them sent before the switch" \
      "$T/$1.src.log"; then
    fail "$1" "the source did not walk the held memory after the switch"; show_logs "$1"; return 1
  fi
}
answered_after() { # NAME: a fault found its page held, and the source answered it
  walked_after "$1" || return 1
  if ! grep -q "[1-9][0-9]* faults answered from the process" "$T/$1.src.log"; then
    fail "$1" "no fault on a held page was answered with the process's pages"; show_logs "$1"; return 1
  fi
}
held_postcopy() {
  RDMIG_HOLD=on EXTRA_CHECK=walked in_mode held_postcopy postcopy 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"
}
held_late_postcopy() {
  RDMIG_HOLD=late EXTRA_CHECK=answered_after in_mode held_late_postcopy postcopy 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"
}

# "late" with a process asleep through the switch and longer (idle.py): no
# fault asks for a part, so the walk starts when its wait for one runs out.
# That is not a lost link: the source must not reconnect.
no_reconnect() { # NAME
  walked_after "$1" || return 1
  if grep -q "reconnected" "$T/$1.src.log"; then
    fail "$1" "the source took the end of its wait for a fault for a lost link"; show_logs "$1"; return 1
  fi
}
held_late_idle() {
  RDMIG_HOLD=late EXTRA_CHECK=no_reconnect SRC_OPTS="--retry-s 3" in_mode held_late_idle postcopy 1 \
    python3 "$HERE/idle.py" 1000000 4.5
}

python_heap_untracked() {
  RDMIG_TRACK=none in_mode python_heap_untracked postcopy 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"
}

# A parent forking workers, in each mode: after the switch in post-copy (with the
# prefetcher off, so the workers read pages that are still remote: each child is
# served through the uffd the kernel hands the pager at fork, and must see its
# parent's data), and in the arena's modes. A freeze that lands while a worker
# lives is refused (live children are not migrated), so the source is simply
# tried again, as a user would.
# RDMIG_FORKS_STEPS: how long the parent lives (0.25 s a step and a fork): each
# try refused for a live worker costs a whole tracking and copy, and in pre-copy
# under emulation (the rxe guest) enough of them outlived 30 steps once.
forks_mode() { # MODE
  local mode=$1 name=${2:-forks_$1} args=("${RDMIG_FORKS_N:-300000}" "${RDMIG_FORKS_STEPS:-30}") try
  python3 "$HERE/forks.py" "${args[@]}" >"$T/$name.ref" </dev/null || { fail "$name" "reference run failed"; return; }
  (clean python3 "$HERE/forks.py" "${args[@]}") >"$T/$name.out" </dev/null 2>"$T/$name.proc.err" &
  local pid=$!
  if ! wait_for_lines "$T/$name.out" 3 60; then
    kill -9 "$pid" 2>/dev/null; fail "$name" "workload did not get going"; show_logs "$name"; return
  fi
  start_dst "$name" -- --wait --no-prefetch || { fail "$name" "no destination"; return; }
  for try in $(seq 1 20); do
    SRC_OPTS="--mode $mode" migrate "$name" "$pid"
    # a worker lived, or the parent held its pipe (between pipe() and its
    # close, a long window under emulation): refused before the freeze (exit 2,
    # the destination never heard of it) or rolled back at the freeze (exit 1,
    # the destination aborted)
    grep -qE "child process|is a pipe" "$T/$name.src.log" || break
    if [ "$SRC_RC" = 1 ]; then
      wait_dst 30
      start_dst "$name" -- --wait --no-prefetch || { fail "$name" "no destination"; return; }
    fi
    sleep 0.05
  done
  wait_dst 300
  wait_proc "$pid" 300
  check_migrated "$name" "$T/$name.ref" "$T/$name.out"
}
# Each worker reads most of the parent's heap. A page fetched for a worker goes
# into the parent too while the parent still lacks it, so the next worker
# inherits it: the heap crosses the link about once, not once per worker (before
# that, 30 workers read 321 MiB of a 17 MiB heap). Allowed: twice the pages with
# data, plus a MiB.
read_once() { # NAME
  local line data read
  line=$(grep -h "pid [0-9]* migrated:" "$T/$1.src.log")
  data=$(sed -n 's/.*pages with data [0-9]* (\([0-9.]*\) MiB).*/\1/p' <<<"$line")
  read=$(sed -n 's/.*, \([0-9.]*\) MiB read.*/\1/p' <<<"$line")
  if ! grep -q "[1-9][0-9]* pages fetched for a child went into its parent too" "$T/$1.dst.log"; then
    fail "$1" "no page a worker fetched went into its parent"; show_logs "$1"; return 1
  fi
  if [ -z "$data" ] || [ -z "$read" ] || ! awk -v r="$read" -v d="$data" 'BEGIN { exit !(r <= 2 * d + 1) }'; then
    fail "$1" "the workers read ${read:-?} MiB of a heap with ${data:-?} MiB of data"; show_logs "$1"; return 1
  fi
}
forks_postcopy() { EXTRA_CHECK=read_once forks_mode postcopy; }
forks_held() { RDMIG_HOLD=late EXTRA_CHECK=walked_after forks_mode postcopy forks_held; }
forks_precopy() { forks_mode precopy; }
forks_hybrid() { forks_mode hybrid; }

# What a process does to memory post-copy still owes it (postcopy_ops.py): a
# signal whose handler reads the heap, madvise(DONTNEED), mremap, munmap and a new
# mapping, a fork whose child reads pages never fetched. The destination runs
# without prefetching, so those operations meet remote pages. The test holds the
# process until it runs on the destination (a go file), then sends SIGUSR1 until
# it is handled; the reference run gets the same.
send_usr1_until() { # PID OUTFILE
  local i
  for i in $(seq 1 600); do
    grep -q '^signal' "$2" 2>/dev/null && return 0
    kill -USR1 "$1" 2>/dev/null
    sleep 0.05
  done
  return 1
}
postcopy_ops() {
  local name=postcopy_ops mb=${RDMIG_OPS_MB:-64} rpid pid mig dpid= i
  (clean python3 "$HERE/postcopy_ops.py" "$T/ops.go.ref" "$mb") >"$T/ops.ref" </dev/null 2>"$T/ops.ref.err" &
  rpid=$!
  if ! wait_for_lines "$T/ops.ref" 1 60; then kill -9 "$rpid"; fail "$name" "reference run did not start"; return; fi
  touch "$T/ops.go.ref"
  send_usr1_until "$rpid" "$T/ops.ref"
  wait "$rpid" || { fail "$name" "reference run failed"; cat "$T/ops.ref.err"; return; }
  start_dst "$name" -- --wait --no-prefetch || { fail "$name" "no destination"; return; }
  (clean python3 "$HERE/postcopy_ops.py" "$T/ops.go" "$mb") >"$T/ops.out" </dev/null 2>"$T/$name.proc.err" &
  pid=$!
  if ! wait_for_lines "$T/ops.out" 1 60; then kill -9 "$pid"; fail "$name" "workload did not start"; return; fi
  # the source returns once every page moved: in the background, while the
  # process is driven here
  (migrate "$name" "$pid"; echo "$SRC_RC" >"$T/$name.src.rc") &
  mig=$!
  for i in $(seq 1 1200); do
    dpid=$(sed -n 's/.*pid \([0-9]*\) (pid [0-9]* on the source) runs here.*/\1/p' "$T/$name.dst.log" | head -1)
    [ -n "$dpid" ] && break
    kill -0 "$mig" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$dpid" ]; then
    wait "$mig"; kill -9 "$pid" 2>/dev/null
    fail "$name" "the process never ran on the destination"; show_logs "$name"; return
  fi
  touch "$T/ops.go"
  send_usr1_until "$dpid" "$T/ops.out" || echo "  # SIGUSR1 never handled on the destination"
  wait_dst 300
  wait "$mig"
  SRC_RC=$(cat "$T/$name.src.rc" 2>/dev/null || echo 99)
  wait_proc "$pid" 300
  check_migrated "$name" "$T/ops.ref" "$T/ops.out"
}

# The other modes: pre-copy rounds pulled into the destination's arena, then
# every page in place before the process runs (precopy) or the rest on demand
# (hybrid).
# 1 GiB reserved, a few MiB used: only the pages with data may move (the
# tracking once protected whole ranges, which filled every page of them).
sparse_mode() { # MODE
  local name=sparse_$1 n args=("$HERE/sparse.py" "${RDMIG_SPARSE_STEPS:-60}")
  python3 "${args[@]}" >"$T/$name.ref" </dev/null || { fail "$name" "reference run failed"; return; }
  SRC_OPTS="--mode $1" run_migrated "$name" "$T/$name.out" 5 python3 "${args[@]}"
  n=$(sed -n 's/.*pages with data \([0-9]*\) .*/\1/p' "$T/$name.src.log" | head -1)
  if [ -z "$n" ] || [ "$n" -gt 16384 ]; then
    fail "$name" "${n:-no} pages with data for a process using a few MiB of its 1 GiB"
    show_logs "$name"; return
  fi
  check_migrated "$name" "$T/$name.ref" "$T/$name.out"
}
sparse_postcopy() { sparse_mode postcopy; }
sparse_precopy() { sparse_mode precopy; }

# Hybrid's rule: pull only when at most an eighth of the memory was written
# during the first copy. The source's summary names the way it went, as the user
# reads it (checked before "ok", through check_migrated's EXTRA_CHECK). Kernels
# before 6.7 track with soft-dirty bits, which see no write after the first
# copy: there hybrid says so and makes its one pull whatever the process does
# (the rxe guest runs 6.1).
cannot_tell() { grep -q "hybrid: this kernel's tracking cannot tell .*: one pre-copy round" "$T/$1.src.log"; }
pulled_rounds() { # NAME
  if ! { cannot_tell "$1" ||
         grep -q "hybrid: .* pages written during the first copy: pre-copy rounds" "$T/$1.src.log"; } ||
     ! grep -q "rounds pulled by the destination" "$T/$1.src.log"; then
    fail "$1" "hybrid should have pulled pre-copy rounds"; show_logs "$1"; return 1
  fi
}
went_postcopy() { # NAME
  if cannot_tell "$1"; then
    grep -q "rounds pulled by the destination" "$T/$1.src.log" && return 0
    fail "$1" "hybrid said it would make its one pull, and did not"; show_logs "$1"; return 1
  fi
  if ! grep -q "hybrid: .* pages written during the first copy: post-copy" "$T/$1.src.log" ||
     grep -q "rounds pulled" "$T/$1.src.log"; then
    fail "$1" "hybrid should have gone on as post-copy, pulling nothing"; show_logs "$1"; return 1
  fi
}
# Barely writing (a page a step): hybrid pulls, and the arena's pages come home
# without a fetch.
sparse_hybrid() { EXTRA_CHECK=pulled_rounds sparse_mode hybrid; }
# Rewriting all its memory: more than an eighth written during the first copy.
writer_hybrid() {
  EXTRA_CHECK=went_postcopy in_mode writer_hybrid hybrid 5 python3 "$HERE/writer.py" \
    "${RDMIG_WRITER_SWEEPS:-400}"
}

python_heap_precopy() { in_mode python_heap_precopy precopy 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"; }
python_heap_hybrid() { in_mode python_heap_hybrid hybrid 5 python3 "$HERE/heap.py" "${HEAP_ARGS[@]}"; }
# gzip streaming into a file: its input and output are regular files at offsets
# that move while it runs.
gzip_file() {
  seq 1 "$GZ_LINES" >"$T/gz.in"
  gzip -9 -n -c <"$T/gz.in" >"$T/gz.ref" || { fail gzip_file "reference run failed"; return; }
  start_dst gzip_file -- --wait || { fail gzip_file "no destination"; return; }
  (clean gzip -9 -n -c) <"$T/gz.in" >"$T/gz.out" 2>"$T/gzip_file.proc.err" &
  local pid=$!
  sleep 0.7
  if ! kill -0 "$pid" 2>/dev/null; then fail gzip_file "gzip finished before the migration: make the input larger"; return; fi
  migrate gzip_file "$pid"
  wait_dst 300
  wait_proc "$pid" 300
  check_migrated gzip_file "$T/gz.ref" "$T/gz.out"
  gzip -t "$T/gz.out" 2>/dev/null || echo "  # gzip -t: the migrated output is not a valid gzip file"
}

# python3 with 4 worker threads (5 threads in all) computing hash chains, the
# main thread printing each round in a fixed order: every thread migrates while
# it works or waits on a lock; the output must equal an unmigrated run's.
# (xz -T4 cannot serve here: it keeps a self-pipe, which is refused.)
THREADS_ARGS=("${RDMIG_THREADS_ROUNDS:-300}" "${RDMIG_THREADS_CHAIN:-40000}")
py_threads_mode() { in_mode "py_threads_$1" "$1" 8 python3 "$HERE/threads.py" "${THREADS_ARGS[@]}"; }
py_threads_postcopy() { py_threads_mode postcopy; }
py_threads_precopy() { py_threads_mode precopy; }
py_threads_hybrid() { py_threads_mode hybrid; }

# Signal handlers and an alternate stack across the switch (test/workloads/
# handlers.c). The source asks for them at its start and uses those answers at
# the freeze unless a watch on the process's calls saw them change
# (src/capture_calls.c): a steady process must have had its answers used, one
# that swaps its SIGUSR1 handler every tick (and raises it before each swap, so
# a stale handler after the switch would print) must have had them asked again.
early_used() { # NAME true|false
  local got
  got=$(sed -n 's/.*"calls_asked_early":\([a-z]*\).*/\1/p' "$T/$1.src.json")
  [ "$got" = "$2" ] && return 0
  fail "$1" "calls_asked_early is '$got', not $2"; show_logs "$1"; return 1
}
handlers_mode() { # NAME FLIP EXPECT
  local name=$1
  EARLY=$3
  SRC_OPTS="--stats-json $T/$name.src.json" EXTRA_CHECK=early_check \
    in_mode "$name" postcopy 10 "$BUILD/test/handlers" 150 "$2"
}
early_check() { early_used "$1" "$EARLY"; }
handlers_steady() { handlers_mode handlers_steady 0 true; }
handlers_flipping() { handlers_mode handlers_flipping 1 false; }

# refuse NAME WHAT-REGEX PYTHON-CODE: the source must refuse before touching the
# process (exit 2, a message naming the thing), and the process must finish with
# the same output as if nothing had happened.
refuse() {
  local name=$1 what=$2 code=$3
  local prog="import sys,time
$code
for i in range(30):
    print(i, flush=True); time.sleep(0.02)
print('end', flush=True)"
  python3 -c "$prog" >"$T/$name.ref" </dev/null
  start_dst "$name" -- || { fail "$name" "no destination"; return; }
  (clean python3 -c "$prog") >"$T/$name.out" </dev/null 2>"$T/$name.proc.err" &
  local pid=$!
  wait_for_lines "$T/$name.out" 3 30
  migrate "$name" "$pid"
  wait "$pid"; local prc=$?
  kill "$DST_PID" 2>/dev/null
  if [ "$SRC_RC" != 2 ]; then fail "$name" "src exit $SRC_RC, expected 2"; show_logs "$name"; return; fi
  if ! grep -Eqi "$what" "$T/$name.src.log"; then fail "$name" "message does not name '$what'"; show_logs "$name"; return; fi
  if [ "$prc" != 0 ] || ! cmp -s "$T/$name.ref" "$T/$name.out"; then
    fail "$name" "the process was disturbed (exit $prc)"; show_logs "$name"; return
  fi
  sed 's/^/  # /' "$T/$name.src.log" | head -3
  ok "$name"
}

refuse_socket() { refuse refuse_socket "socket" "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)"; }
refuse_shm() { refuse refuse_shm "shared" "import mmap
m = mmap.mmap(-1, 1 << 20); m[0:4] = b'abcd'"; }
refuse_huge_anon() { refuse refuse_huge_anon "mapping of 9216 GiB" "import mmap
m = mmap.mmap(-1, 9 << 40, flags=mmap.MAP_PRIVATE | 0x4000); m[0:4] = b'abcd'"; }

# A peer without the token gets nothing; the process is untouched.
bad_token() {
  start_dst bad_token -- || { fail bad_token "no destination"; return; }
  (clean sleep 30) </dev/null >/dev/null 2>&1 &
  local pid=$! good=$T/token
  head -c 32 /dev/urandom | base64 >"$T/token2"; chmod 600 "$T/token2"
  "$MIG" src --pid "$pid" --to "$ADDR:$DST_PORT" --transport "$TRANSPORT" --provider "$PROVIDER" \
    --token-file "$T/token2" >"$T/bad_token.src.log" 2>&1
  local rc=$?
  local st; st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
  kill "$pid" "$DST_PID" 2>/dev/null
  if [ "$rc" != 1 ] || ! grep -qi "token" "$T/bad_token.src.log"; then
    fail bad_token "src exit $rc"; show_logs bad_token; return
  fi
  if [ "$st" != S ] && [ "$st" != R ]; then fail bad_token "process state '$st' after the refusal"; return; fi
  if ! grep -qi "turned away" "$T/bad_token.dst.log"; then fail bad_token "dst did not report it"; show_logs bad_token; return; fi
  ok bad_token
}

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(python_heap held_postcopy held_late_postcopy held_late_idle python_heap_untracked python_heap_precopy python_heap_hybrid
  gzip_file py_threads_postcopy py_threads_precopy py_threads_hybrid
  forks_postcopy forks_held forks_precopy forks_hybrid postcopy_ops sparse_postcopy sparse_precopy
  sparse_hybrid writer_postcopy writer_hybrid handlers_steady handlers_flipping refuse_socket refuse_shm refuse_huge_anon bad_token)
for c in "${cases[@]}"; do echo "-- $c"; "$c"; done
finish
