#!/bin/bash
# bench/migrate.sh: whole migrations of bench/mig_workload, measured.
#   bench/migrate.sh [BUILD_DIR]    env: SIZES (256M,1G,4G) PATTERNS (seq,random,zipf)
#                                        MODES (postcopy,precopy,hybrid) AFTER_S (1)
#                                        DIRTY_PCT (100) OUT (bench-out)
#                                        KEEP (set: keep the daemons' logs and
#                                        --stats-json files, path printed)
#                                        FLOOR (1; 0: do not measure the local
#                                        copies' floor before each run)
# For each size x pattern x mode: the workload fills its memory, runs, and is
# migrated over libfabric's tcp provider on loopback; it runs until AFTER_S seconds
# after the source is done (every page home), then SIGUSR1 ends it (a fixed run
# time ended the larger ones before their migration did). It measures its own pause
# across the switch (CLOCK_REALTIME between two consecutive touches: the last on the
# source to the first on the destination, which includes the fetch of the page that
# touch needed), its longest pause anywhere, and its throughput every 10 ms. Printed
# per run:
#   downtime     freeze on the source -> resume on the destination (the daemons)
#   pause        the switch as the workload itself saw it (target <= 5 ms)
#   maxgap       the longest gap it saw anywhere: on a machine with fewer cores than
#                busy threads, a time slice lost while the source copies can be
#                longer than the switch
#   total        rdma_migrate src from start to the destination's DONE
#   local        resume -> every page local on the destination
#   demand       demand faults (fetched), prefetch coverage (prefetched / pages fetched)
#   slowdown     the workload's throughput from resume to all-local against before
#   total/raw    total against bytes / raw READ bandwidth measured in this run
#                (bench/read_lat, 64 KiB at 16 in flight): the ratio, target <= 1.3
#   floor        the same bytes' two copies (mirror, install) made locally on fresh
#                memory just before the run (bench/copy_floor, below), and
#                total/floor: what the machine's memory allows, beside the transport
#   sent/mem     bytes that crossed the wire (pre-copy pulls and fetches) against the
#                memory with data: target <= 1.5 for pre-copy at DIRTY_PCT=1
# and a plot (PNG, gnuplot) of faults and throughput over time for each run.
# Timings never fail it; wrong data (the workload's page check) does.
set -uo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd) || exit 2
SIZES=${SIZES:-256M,1G,4G} PATTERNS=${PATTERNS:-seq,random,zipf} MODES=${MODES:-postcopy,precopy,hybrid}
AFTER_S=${AFTER_S:-1} OUT=${OUT:-bench-out}
mkdir -p "$OUT"
T=$(mktemp -d /tmp/rdmig-bench.XXXXXX)
if [ -n "${KEEP:-}" ]; then echo "## logs and stats kept in $T"; else trap 'rm -rf "$T"' EXIT; fi
head -c 32 /dev/urandom | base64 >"$T/token"; chmod 600 "$T/token"
rc=0

echo "## load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; $(uname -r)"
mb_of() { case $1 in *G) echo $((${1%G} * 1024)) ;; *M) echo "${1%M}" ;; *) echo "$1" ;; esac; }
# A virtual machine's host may back guest memory only when the guest first writes it
# and take freed memory back within seconds (free page reporting: on the machine
# this was written on, memory freed 2 s earlier was as slow to write again as memory
# never touched, 0.4-1.4 against ~20 GB/s). A migration writes twice its memory into
# fresh pages on one host: the mirror and the restored process's copy. So before
# each run, after 3 s for what the last run freed to go back to the host,
# bench/copy_floor makes those two copies locally with no transport (process_vm_readv
# into a huge-page buffer, UFFDIO_COPY in 64 KiB into a fresh 4 KiB region) and its
# time is printed beside the total as floor_s, with total/floor. Where the floor is
# above size / raw bandwidth, it, not the transport, bounds the total time; on
# hardware without a hypervisor it is the cost of zeroing and copying. FLOOR=0 skips
# it. Its memory, freed just before the workload starts, is what the workload fills.
floor() { # floor MB: prints the local copies' seconds, - when skipped, FAILED
  local out
  [ "${FLOOR:-1}" != 0 ] || { echo -; return; }
  sleep 3
  out=$("$build/bench/copy_floor" --mb "$1" 2>&1) || { echo FAILED; echo "$out" >&2; return; }
  awk '$1 == "floor" { print $9 }' <<<"$out"
}
echo "## raw one-sided READ bandwidth (bench/read_lat, fabric/tcp, 64 KiB, 16 in flight)"
bw=$("$build/bench/read_lat" --transport fabric --provider tcp --addr 127.0.0.1 2>/dev/null |
  awk '$1 == 65536 { print $2 }')
[ -n "$bw" ] || { echo "read_lat failed"; exit 1; }
echo "raw bandwidth: $bw MB/s"
echo
printf '%-6s %-7s %-9s %10s %10s %10s %9s %9s %9s %9s %9s %10s %9s %9s %11s\n' size pattern mode \
  downtime_ms pause_ms maxgap_ms total_s local_s demand prefetch% slowdown total/raw sent/mem \
  floor_s total/floor
IFS=, read -ra sizes <<<"$SIZES"; IFS=, read -ra pats <<<"$PATTERNS"; IFS=, read -ra modes <<<"$MODES"
for size in "${sizes[@]}"; do for pat in "${pats[@]}"; do for mode in "${modes[@]}"; do
  mb=$(mb_of "$size") tag=$size-$pat-$mode
  floor_s=$(floor "$mb")
  [ "$floor_s" != FAILED ] || { echo "$tag: copy_floor FAILED"; rc=1; floor_s=-; }
  "$build/rdma_migrate" dst --listen 127.0.0.1:0 --token-file "$T/token" --wait \
    --stats-json "$T/$tag.dst.json" >"$T/$tag.dst.out" 2>"$T/$tag.dst.err" &
  dst=$!
  port=
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$T/$tag.dst.err"); [ -n "$port" ] && break; sleep 0.05
  done
  (for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
   exec "$build/bench/mig_workload" --mb "$mb" --pattern "$pat" --seconds 1800 \
     --dirty-pct "${DIRTY_PCT:-100}") \
    >"$T/$tag.work" </dev/null 2>&1 &
  work=$!
  until grep -q '^t ' "$T/$tag.work" 2>/dev/null; do sleep 0.05; done
  sleep 1
  # bash reports the original's death (the source kills it at the end) as soon as
  # this foreground command returns, on the shell's stderr: silenced here only
  { "$build/rdma_migrate" src --pid "$work" --to "127.0.0.1:$port" --token-file "$T/token" \
    --mode "$mode" --stats-json "$T/$tag.src.json" >"$T/$tag.src.out" 2>"$T/$tag.src.err"
    src_rc=$?; } 2>/dev/null
  # the workload ends where it runs: here after a success, at the source after a
  # rollback (the destination then has nothing and exits by itself)
  newpid=$(sed -n 's/.*: pid \([0-9]*\) (pid [0-9]* on the source) runs here.*/\1/p' "$T/$tag.dst.err" | head -n 1)
  sleep "$AFTER_S"
  if [ "$src_rc" = 0 ] && [ -n "$newpid" ]; then kill -USR1 "$newpid" 2>/dev/null; else kill -USR1 "$work" 2>/dev/null; fi
  wait "$work" 2>/dev/null
  wait "$dst"; dst_rc=$?
  if [ $src_rc != 0 ] || [ $dst_rc != 0 ] || ! grep -q "exited with status 0" "$T/$tag.dst.out"; then
    echo "$tag: FAILED (src $src_rc, dst $dst_rc)"; tail -n 5 "$T/$tag".*.err "$T/$tag.work"; rc=1; continue
  fi
  grep -q '^check ok' "$T/$tag.work" || { echo "$tag: WRONG DATA"; grep check "$T/$tag.work"; rc=1; }
  python3 - "$T/$tag" "$bw" "$size" "$pat" "$mode" "$mb" "$OUT" "$floor_s" <<'PY' || rc=1
import json, sys
base, bw, size, pat, mode, mb, out, floor = sys.argv[1:]
s = json.load(open(base + ".src.json")); d = json.load(open(base + ".dst.json"))
work = open(base + ".work").read().split("\n")
ts = [(int(l.split()[1]), int(l.split()[3])) for l in work if l.startswith("t ")]
gap = next(int(l.split()[1]) for l in work if l.startswith("gap "))
sw = next(l.split() for l in work if l.startswith("switch "))
if len(sw) < 4:
    sys.exit("the workload never saw its pid change: no switch")
sw_ns, sw_at = int(sw[1]), int(sw[3])
resume_ns = s["downtime_ns"]  # relative; absolute resume below
fetched = d["fetched"]; pre = d["prefetched"]
cover = 100.0 * pre / (pre + fetched) if pre + fetched else 100.0
# throughput before the migration and between resume and all-local
tl = d["timeline"]
all_local_ms = d["all_local_ns"] / 1e6
# the workload's 10 ms samples: the first one after the switch, then rates
i_gap = next((i for i in range(1, len(ts)) if ts[i][0] >= sw_at), len(ts) - 1)
def rate(a, b):
    if b <= a: return 0.0
    return (ts[b][1] - ts[a][1]) / ((ts[b][0] - ts[a][0]) / 1e9)
before = rate(max(0, i_gap - 50), i_gap - 1)
t_res = ts[i_gap][0]
j = i_gap
while j < len(ts) - 1 and ts[j][0] - t_res < all_local_ms * 1e6: j += 1
during = rate(i_gap, j) if j > i_gap else rate(i_gap, min(len(ts)-1, i_gap+5))
slow = before / during if during > 0 else float("inf")
data_mb = d["bytes_read"] / 1e6
ideal = data_mb / float(bw)
total = s["total_ns"] / 1e9
# what crossed the wire (rounds pulled into the arena, then fetches) per byte of
# memory with data at the freeze
sent = d["bytes_read"] / (s["pages_touched"] * 4096.0) if s["pages_touched"] else 0
# the floor was measured for the whole size; the run moved the pages with data
floor_run = float(floor) * s["pages_touched"] * 4096.0 / (int(mb) << 20) if floor != "-" else 0
print("%-6s %-7s %-9s %10.2f %10.2f %10.2f %9.3f %9.3f %9d %8.1f%% %8.2fx %9.2fx %8.2fx %9s %11s" % (
    size, pat, mode, s["downtime_ns"] / 1e6, sw_ns / 1e6, gap / 1e6, total, all_local_ms / 1e3,
    fetched, cover, slow, total / ideal if ideal > 0 else 0, sent,
    "%.3f" % floor_run if floor_run else "-", "%.2fx" % (total / floor_run) if floor_run else "-"))
with open("%s/%s-%s-%s.dat" % (out, size, pat, mode), "w") as f:
    f.write("# ms_after_resume faults prefetched ops_per_s\n")
    k = i_gap
    for row in tl:
        t_ms = row[0]
        while k < len(ts) - 1 and (ts[k][0] - t_res) / 1e6 < t_ms: k += 1
        r = rate(max(i_gap, k - 5), k) if k > i_gap else 0
        f.write("%.1f %d %d %.0f\n" % (t_ms, row[1], row[3], r))
PY
  if command -v gnuplot >/dev/null; then
    gnuplot <<GP 2>/dev/null
set terminal pngcairo size 900,500
set output "$OUT/$tag.png"
set title "$size $pat $mode: after resume"
set xlabel "ms after resume"
set ylabel "pages"
set y2label "workload ops/s"
set y2tics
set key left top
plot "$OUT/$tag.dat" using 1:2 with lines title "demand faults", \
     "$OUT/$tag.dat" using 1:3 with lines title "prefetched", \
     "$OUT/$tag.dat" using 1:4 axes x1y2 with lines title "throughput"
GP
  fi
done; done; done
echo
echo "plots and data: $OUT/*.png $OUT/*.dat"
exit $rc
