#!/bin/bash
# The README's first command: install, build, and run the main job on this one
# machine with the default transport (libfabric's tcp provider on loopback):
# a workload that keeps counting is live-migrated from a source daemon to a
# destination daemon, and both print their summary.
#   scripts/main-job.sh [MiB]     the workload's memory (default 256)
# The workload (build/test/counter) prints a line every 20 ms with a checksum of
# all its memory and the wall-clock gap since its previous line; its output file
# is followed here, so the count visibly goes on across the move.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-256}
scripts/install-deps.sh
scripts/build.sh build >/dev/null
T=$(mktemp -d /tmp/rdmig-main.XXXXXX)
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null; rm -rf "$T"' EXIT
head -c 32 /dev/urandom | base64 >"$T/token"
chmod 600 "$T/token"

echo "== destination: rdma_migrate dst --listen 127.0.0.1:0 (fabric/tcp)"
build/rdma_migrate dst --listen 127.0.0.1:0 --token-file "$T/token" --wait \
  --stats-json "$T/dst.json" 2>"$T/dst.err" >"$T/dst.out" &
dst=$!; pids+=("$dst")
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$T/dst.err")
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { cat "$T/dst.err"; exit 1; }

echo "== workload: counter with $mb MiB, a line every 20 ms"
# Only stdio goes to the workload: a descriptor inherited from whatever started
# this script (a pipe to a CI runner, say) is something this version refuses.
(for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
 exec build/test/counter --mb "$mb" --ticks 250 --interval-ms 20) >"$T/counter.out" </dev/null &
work=$!; pids+=("$work")
tail -n +1 -f "$T/counter.out" &
pids+=("$!")
while [ "$(wc -l <"$T/counter.out")" -lt 50 ]; do sleep 0.05; done

echo "== source: rdma_migrate src --pid $work --to 127.0.0.1:$port"
rc=0
build/rdma_migrate src --pid "$work" --to "127.0.0.1:$port" --token-file "$T/token" \
  --stats-json "$T/src.json" || rc=$?
wait "$dst" || rc=$?
wait "$work" 2>/dev/null || true   # the original, killed by the source at the end
sleep 0.1
echo "== summary"
cat "$T/dst.out"
grep -v '^\[' "$T/dst.err" || true
lines=$(wc -l <"$T/counter.out")
gap=$(awk '{ if ($6 > m) m = $6 } END { print m + 0 }' "$T/counter.out")
echo "workload: $lines of 250 lines, counting without a break in the sequence:" \
  "$(awk -v n=0 '$2 != n { bad = 1 } { n++ } END { print bad ? "NO" : "yes" }' "$T/counter.out");" \
  "longest gap between two lines $((gap / 1000)).$(( (gap % 1000) / 100 )) ms (20 ms expected)"
echo "stats (--stats-json):"; cat "$T/src.json" "$T/dst.json" 2>/dev/null || true
exit $rc
