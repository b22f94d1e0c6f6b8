# Shared by the migration tests (sourced). Each test is a real migration of a real
# process with the rdma_migrate binary: a destination daemon in the background, the
# source command in the foreground, and checks on what a user would look at: the
# process's own output, exit statuses, the messages.
#
# Environment: RDMIG_BUILD (default: build), RDMIG_MIG_TRANSPORT/PROVIDER
# (default fabric/tcp), RDMIG_MIG_ADDR (default 127.0.0.1).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=$(cd "${RDMIG_BUILD:-$ROOT/build}" && pwd) || { echo "no build dir"; exit 1; }
MIG=$BUILD/rdma_migrate
TRANSPORT=${RDMIG_MIG_TRANSPORT:-fabric}
PROVIDER=${RDMIG_MIG_PROVIDER:-tcp}
ADDR=${RDMIG_MIG_ADDR:-127.0.0.1}
T=$(mktemp -d "${TMPDIR:-/tmp}/rdmig-mig.XXXXXX")
head -c 32 /dev/urandom | base64 > "$T/token"
chmod 600 "$T/token"
PASSED=0 FAILED=0
BG_PIDS=()

cleanup() {
  for p in "${BG_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT

ok()   { echo "ok $1"; PASSED=$((PASSED + 1)); }
fail() { echo "not ok $1: $2"; FAILED=$((FAILED + 1)); }
finish() { echo "$PASSED passed, $FAILED failed"; [ "$FAILED" -eq 0 ]; }

# start_dst NAME [NETNS_PREFIX...] -- [dst options]: starts a destination daemon
# listening on an ephemeral port of $ADDR (on $DST_LISTEN_PORT when set); sets
# DST_PID and DST_PORT. Its output goes to $T/NAME.dst.log.
start_dst() {
  local name=$1; shift
  local pre=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pre+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  "${pre[@]}" "$MIG" dst --listen "$ADDR:${DST_LISTEN_PORT:-0}" --transport "$TRANSPORT" --provider "$PROVIDER" \
    --token-file "$T/token" "$@" >"$T/$name.dst.log" 2>&1 &
  DST_PID=$!
  BG_PIDS+=("$DST_PID")
  DST_PORT=
  for _ in $(seq 1 200); do
    DST_PORT=$(sed -n 's/.*listening on .* (port \([0-9]*\)).*/\1/p' "$T/$name.dst.log" | head -1)
    [ -n "$DST_PORT" ] && return 0
    kill -0 "$DST_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "destination did not start:"; cat "$T/$name.dst.log"
  return 1
}

# migrate NAME PID [NETNS_PREFIX...]: runs the source side (with $SRC_OPTS, e.g.
# "--mode hybrid"); sets SRC_RC. Output in $T/NAME.src.log.
migrate() {
  local name=$1 pid=$2; shift 2
  "$@" "$MIG" src --pid "$pid" --to "$ADDR:$DST_PORT" --transport "$TRANSPORT" \
    --provider "$PROVIDER" --token-file "$T/token" ${SRC_OPTS:-} >"$T/$name.src.log" 2>&1
  SRC_RC=$?
}

# wait_dst SECONDS: waits for the destination daemon; sets DST_RC (124: timeout).
wait_dst() {
  local i
  for i in $(seq 1 $(($1 * 10))); do
    kill -0 "$DST_PID" 2>/dev/null || { wait "$DST_PID"; DST_RC=$?; return 0; }
    sleep 0.1
  done
  kill -9 "$DST_PID" 2>/dev/null
  DST_RC=124
}

# wait_proc PID SECONDS: waits for a child process and returns its status; one
# still there after SECONDS (an original a failed migration left stopped) is
# killed, and 124 returned, so that a wrong outcome fails its case instead of
# hanging the whole script.
wait_proc() {
  local i
  for i in $(seq 1 $(($2 * 10))); do
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return $?; }
    sleep 0.1
  done
  echo "  # pid $1 still there after $2 s: killed"
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
  return 124
}

# wait_for_lines FILE N SECONDS: until FILE has at least N lines.
wait_for_lines() {
  local i
  for i in $(seq 1 $(($3 * 20))); do
    [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.05
  done
  return 1
}

# clean CMD...: exec CMD with only fds 0-2 (a test harness may leave others open,
# such as a pipe to its own runner, which this version rightly refuses to move).
clean() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec "$@"
}

show_logs() {
  local f
  for f in "$T/$1".*.log "$T/$1".proc.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  return 0
}
