#!/bin/bash
# perftest-baseline.sh [-v] -- what raw RDMA READs cost on this rxe0: the
# baseline for rdmig's read-latency benchmark.  Runs perftest's ib_read_lat and
# ib_read_bw (server and client in this machine, over $RDMIG_RXE_DEV to
# $RDMIG_RXE_ADDR) and prints one line per measurement on stdout:
#
#   perftest env dev=rxe0 addr=10.233.0.1 gid_index=1 active_mtu=4096 ncpu=2 kernel=... perftest=...
#   perftest read_lat 4096 iters=1000 min_us=… p50_us=… avg_us=… p99_us=… p999_us=… max_us=… stdev_us=…
#   perftest read_bw 65536 iters=1000 qps=1 outs=16 tx_depth=16 MBps=… peak_MBps=… Mpps=…
#
# p50_us is perftest's t_typical (the median); MBps is perftest's "BW average"
# whose MB is 2^20 bytes.  A measurement that failed prints
# `perftest <test> <size> error=<why>` (its raw output goes to stderr) and
# makes the exit status 1.  -v copies perftest's raw output to stderr.
#
# Meant to run INSIDE the soft-RoCE guest (test/rxe/run-in-vm.sh sets
# RDMIG_RXE_DEV/ADDR there); run on a host without RDMIG_RXE_ADDR set, it
# re-runs itself in the guest.  On a machine with a real RDMA device, set
# RDMIG_RXE_DEV and RDMIG_RXE_ADDR (that device's IPv4) to run it natively.
# Needs the Debian package perftest.
#
# Env: RDMIG_PERFTEST_ITERS (1000), RDMIG_PERFTEST_LAT_SIZES ("4096 65536"),
#      RDMIG_PERFTEST_BW_SIZES ("4096 65536"), RDMIG_PERFTEST_OUTS (16: the
#      RDMA READs in flight per QP, ib_read_bw -o; the send queue depth -t matches).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERBOSE=0
[ "${1:-}" = -v ] && { VERBOSE=1; shift; }
[ $# = 0 ] || { echo "usage: $0 [-v]" >&2; exit 2; }

if [ -z "${RDMIG_RXE_ADDR:-}" ] && [ -z "${RDMIG_RXE_GUEST:-}" ]; then
  if [ $VERBOSE = 1 ]; then exec "$HERE/run-in-vm.sh" "$HERE/perftest-baseline.sh" -v; fi
  exec "$HERE/run-in-vm.sh" "$HERE/perftest-baseline.sh"
fi
DEV=${RDMIG_RXE_DEV:-rxe0}
ADDR=${RDMIG_RXE_ADDR:?RDMIG_RXE_ADDR is not set: run this via test/rxe/run-in-vm.sh}
ITERS=${RDMIG_PERFTEST_ITERS:-1000}
LAT_SIZES=${RDMIG_PERFTEST_LAT_SIZES-4096 65536}   # set empty to skip
BW_SIZES=${RDMIG_PERFTEST_BW_SIZES-4096 65536}
OUTS=${RDMIG_PERFTEST_OUTS:-16}
for t in ib_read_lat ib_read_bw; do
  command -v $t >/dev/null || { echo "perftest-baseline: $t not found; install Debian package 'perftest'" >&2; exit 1; }
done
command -v ss >/dev/null || { echo "perftest-baseline: ss not found; install Debian package 'iproute2'" >&2; exit 1; }

# GID of our IPv4 address (RoCE v2, IPv4-mapped); perftest's default index 0
# is the IPv6 link-local GID, which would also work but is not what rdmig uses.
gid_index() {
  local hex g
  hex=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${ADDR//./ } 2>/dev/null) || { echo 0; return; }
  for g in /sys/class/infiniband/"$DEV"/ports/1/gids/*; do
    [ "$(cat "$g" 2>/dev/null)" = "$hex" ] && { echo "${g##*/}"; return; }
  done
  echo 0
}
GID=$(gid_index)
LOG=$(mktemp -d "${TMPDIR:-/tmp}/perftest-baseline.XXXXXX") || exit 1
trap 'rm -rf "$LOG"' EXIT
RC=0
PORT=18600

# run_pair NAME ARGS... : server and client of one perftest; the client's
# output ends in $LOG/client.  Returns non-zero (and says why) on failure.
run_pair() {
  local tool=$1; shift
  local common=(-d "$DEV" -i 1 -x "$GID" -F -p "$PORT" "$@") spid
  timeout 300 "$tool" "${common[@]}" >"$LOG/server" 2>&1 & spid=$!
  # Start the client only once the server listens on its TCP port (it
  # exchanges QP numbers over TCP first); a guess like `sleep 1` is flaky under TCG.
  for _ in $(seq 300); do
    ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  timeout 300 "$tool" "${common[@]}" "$ADDR" >"$LOG/client" 2>&1; local crc=$?
  wait "$spid"; local src=$?
  PORT=$((PORT + 1))
  if [ $VERBOSE = 1 ] || [ $crc != 0 ] || [ $src != 0 ]; then
    { echo "---- $tool $* : server (rc $src)"; cat "$LOG/server"; echo "---- client (rc $crc)"; cat "$LOG/client"; } >&2
  fi
  [ $crc = 0 ] || { WHY="client_rc_$crc"; return 1; }
  [ $src = 0 ] || { WHY="server_rc_$src"; return 1; }
}

# results NAME... : the row under perftest's "#bytes" header as NAME=value
# pairs, column names taken from the header ("99%" "percentile[usec]" and
# "BW" "average[MB/sec]" are one column each).
results() {
  awk '
    /^ *#bytes/ { n = 0
      for (i = 1; i <= NF; i++) {
        t = $i
        if ((t ~ /%$/ || t == "BW") && i < NF) { i++; t = t " " $i }
        col[++n] = t }
      getline; for (i = 1; i <= n && i <= NF; i++) print col[i] "\t" $i; exit }' "$LOG/client"
}
col() { awk -F'\t' -v k="$1" '$1 == k {print $2; exit}' <<<"$2"; }

kver=$(uname -r)
pver=$(ib_read_lat -V 2>/dev/null | awk '/[Vv]ersion/{print $NF; exit}')
mtu=$(ibv_devinfo -d "$DEV" 2>/dev/null | awk '/active_mtu/{print $2; exit}')
echo "perftest env dev=$DEV addr=$ADDR gid_index=$GID active_mtu=${mtu:-?} ncpu=$(nproc) kernel=$kver perftest=${pver:-?}"

for s in $LAT_SIZES; do
  WHY=
  if run_pair ib_read_lat -s "$s" -n "$ITERS" && r=$(results) && [ -n "$(col 't_typical[usec]' "$r")" ]; then
    echo "perftest read_lat $s iters=$ITERS min_us=$(col 't_min[usec]' "$r") p50_us=$(col 't_typical[usec]' "$r")" \
         "avg_us=$(col 't_avg[usec]' "$r") p99_us=$(col '99% percentile[usec]' "$r")" \
         "p999_us=$(col '99.9% percentile[usec]' "$r") max_us=$(col 't_max[usec]' "$r") stdev_us=$(col 't_stdev[usec]' "$r")"
  else
    echo "perftest read_lat $s error=${WHY:-unparsed_output}"; RC=1
    [ -n "$WHY" ] || cat "$LOG/client" >&2
  fi
done
for s in $BW_SIZES; do
  WHY=
  if run_pair ib_read_bw -s "$s" -n "$ITERS" -q 1 -o "$OUTS" -t "$OUTS" && r=$(results) &&
     [ -n "$(col 'BW average[MB/sec]' "$r")" ]; then
    echo "perftest read_bw $s iters=$ITERS qps=1 outs=$OUTS tx_depth=$OUTS MBps=$(col 'BW average[MB/sec]' "$r")" \
         "peak_MBps=$(col 'BW peak[MB/sec]' "$r") Mpps=$(col 'MsgRate[Mpps]' "$r")"
  else
    echo "perftest read_bw $s error=${WHY:-unparsed_output}"; RC=1
    [ -n "$WHY" ] || cat "$LOG/client" >&2
  fi
done
exit $RC
