# A process that rewrites all of its 32 MiB buffer over and over: one byte of
# every page per sweep, the value depending on the sweep. Each line's checksum
# reads that byte of every page and one never written (zero), so one page
# missing a write, stale, or not zero where it should be shows.
# In hybrid mode it writes far more than an eighth of its memory while the
# first copy runs, so the source must go on as post-copy.
import sys, time

sweeps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
PAGES = 8192
buf = bytearray(PAGES * 4096)
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
print("done")
