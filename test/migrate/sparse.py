# A process that reserves 1 GiB and uses a little of it: one page of every
# other MiB at first, then, step by step, a page nowhere touched before and a
# rewrite of an old one. Each line's checksum reads two pages of every MiB,
# written or never touched (those must read zero), so one wrong page shows.
import mmap, sys, time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 60
MB = 1 << 20
m = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE)


def put(off, v):
    m[off:off + 8] = (v % (1 << 64)).to_bytes(8, "little")


def get(off):
    return int.from_bytes(m[off:off + 8], "little")


for i in range(0, 1024, 2):
    put(i * MB, i * 2654435761 + 1)
for step in range(steps):
    put((2 * (step % 512) + 1) * MB + 4096, step * 7919 + 1)
    k = 2 * ((step * 37) % 512) * MB
    put(k, get(k) * 31 + step)
    acc = 0
    for i in range(1024):
        for o in (i * MB, i * MB + 4096):
            acc = (acc * 1000003 + get(o)) % 2305843009213693951
    print(step, acc, flush=True)
    time.sleep(0.05)
print("done")
