# A process that rewrites all of its 32 MiB buffer over and over: one byte of
# every page per sweep, the value depending on the sweep. Each line's checksum
# reads that byte of every page and one never written (zero), so one page
# missing a write, stale, or not zero where it should be shows.
# In hybrid mode it writes far more than an eighth of its memory while the
# first copy runs, so the source must go on as post-copy. The sweeps alone did
# not always (one pass of writes is ~3 ms of a ~20 ms cycle: a short first copy
# saw 10-11% written), so a second thread rewrites a second buffer all the
# time; the last line checks that buffer too.
import sys, threading, time

sweeps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
PAGES = 8192
buf = bytearray(PAGES * 4096)
scribbled = bytearray(PAGES * 4096)


def scribble():
    while True:
        for p in range(PAGES):
            scribbled[p * 4096 + 7] = 1


threading.Thread(target=scribble, daemon=True).start()
for s in range(sweeps):
    v = (s * 37 + 11) % 251
    for p in range(PAGES):
        buf[p * 4096 + (p % 4096)] = (v + p) % 256
    acc = 0
    for p in range(PAGES):
        o = p * 4096 + (p % 4096)
        acc = (acc * 257 + buf[o] + 7 * buf[o ^ 1]) % 2305843009213693951
    print(s, acc, flush=True)
    time.sleep(0.01)
print("done", sum(scribbled[p * 4096 + 7] for p in range(PAGES)))
