# What a process does to its memory while post-copy still owes it pages: a signal
# whose handler reads the heap (its frame is pushed onto a stack page that may be
# remote), madvise(DONTNEED), mremap, munmap followed by a new mapping, and a fork
# whose child reads pages its parent never fetched; a page it keeps PROT_NONE
# between writes; and a private mapping of a file whose pages it writes before
# and while it is migrated (the file itself must not change). Every result is printed, so a migrated run must print exactly
# what an unmigrated one does.
#   postcopy_ops.py GO_FILE [MiB]
# Prints "ready", then waits (silently) for GO_FILE to exist: the test creates it
# once the process runs on the destination. Then it waits for SIGUSR1, which the
# test sends until "signal" is printed.
import ctypes, hashlib, mmap, os, signal, sys, time

go, mb = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64
PG = 4096
PRIV = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def page(seed, i):
    return (b"%06d%010d" % (seed, i)) * (PG // 16)


def region(pages, seed):
    m = mmap.mmap(-1, pages * PG, flags=PRIV)
    for i in range(pages):
        m[i * PG:(i + 1) * PG] = page(seed, i)
    return m


def wrong_pages(m, seed, lo, hi):
    return sum(m[i * PG:(i + 1) * PG] != page(seed, i) for i in range(lo, hi))


def zero_pages_wrong(m, lo, hi):
    z = bytes(PG)
    return sum(m[i * PG:(i + 1) * PG] != z for i in range(lo, hi))


n = mb * 256  # pages in A
a = region(n, 1)
b = region(n // 4, 2)
c = region(n // 4, 3)
data = [(i * 2654435761) % 1000003 for i in range(mb * 4096)]
got = []


def on_usr1(sig, frame):
    got.append(sum(data[7::97]) % 1000000007)


signal.signal(signal.SIGUSR1, on_usr1)

# A page the process keeps PROT_NONE but for the moment it writes it, every ms
# while it waits: at the freeze it was most likely written since the last copy,
# which the source cannot read with process_vm_readv (the mapping's protection
# applies) and must read through /proc/PID/mem.
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
guard = mmap.mmap(-1, PG, flags=PRIV)
guard_at = ctypes.addressof(ctypes.c_char.from_buffer(guard))
guard_n = 0


def guard_protect(prot):
    if libc.mprotect(guard_at, PG, prot) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")


def guard_write():
    global guard_n
    guard_n += 1
    guard_protect(mmap.PROT_READ | mmap.PROT_WRITE)
    guard[:] = page(9, guard_n)
    guard_protect(0)


# A private file mapping: written pages are the process's own copies, which the
# source reads once for the layout it sends ahead and, at the freeze, again only
# where they were written since. Pages 0-7 are written before "ready" (then read
# by the layout); page 3 is written again every ms and page 5 every 50 ms while
# the process waits, i.e. after the layout read them.
FP = 32
fpath = go + ".map"
with open(fpath, "wb") as f:
    for i in range(FP):
        f.write(page(5, i))
ffd = os.open(fpath, os.O_RDWR)
fm = mmap.mmap(ffd, FP * PG, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(8):
    fm[i * PG:(i + 1) * PG] = page(6, i)
f3 = f5 = 0


def fmap_expected(i):
    if i == 3 and f3:
        return page(7, f3)
    if i == 5 and f5:
        return page(8, f5)
    return page(6, i) if i < 8 else page(5, i)


guard_write()
print("ready", flush=True)
while not os.path.exists(go):
    guard_write()
    f3 += 1
    fm[3 * PG:4 * PG] = page(7, f3)
    if f3 % 50 == 0:
        f5 += 1
        fm[5 * PG:6 * PG] = page(8, f5)
    time.sleep(0.001)
guard_protect(mmap.PROT_READ | mmap.PROT_WRITE)
print("guard page wrong", int(guard[:] != page(9, guard_n)), flush=True)
print("file mapping wrong", sum(fm[i * PG:(i + 1) * PG] != fmap_expected(i) for i in range(FP)),
      "file wrong", sum(os.pread(ffd, PG, i * PG) != page(5, i) for i in range(FP)), flush=True)

# 1. a signal, handled while the heap is remote
while not got:
    time.sleep(0.01)
print("signal", got[0], flush=True)

# 2. madvise(DONTNEED): the first quarter of A reads zero, the rest its data
a.madvise(mmap.MADV_DONTNEED, 0, n // 4 * PG)
print("A dontneed: zero-part wrong", zero_pages_wrong(a, 0, n // 4),
      "kept-part wrong", wrong_pages(a, 1, n // 4, n // 2), flush=True)

# 3. mremap: B doubled (it may move); its pages keep their data, the new half is zero
nb = n // 4
b.resize(2 * nb * PG)
print("B mremap: old wrong", wrong_pages(b, 2, 0, nb), "new wrong",
      zero_pages_wrong(b, nb, 2 * nb), flush=True)

# 4. munmap C unread, map D of the same size (often at the same address): zero
c.close()
d = mmap.mmap(-1, nb * PG, flags=PRIV)
print("D after munmap: wrong", zero_pages_wrong(d, 0, nb), flush=True)

# 5. fork: the child reads the second half of A, never touched by its parent
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, b"%d %s" % (wrong_pages(a, 1, n // 2, n),
                            hashlib.sha256(a[n // 2 * PG:]).hexdigest()[:16].encode()))
    os._exit(0)
os.close(w)
res = os.read(r, 200).decode()
os.close(r)
_, st = os.waitpid(pid, 0)
print("child: wrong, digest", res, "status", st, flush=True)
print("data", sum(data) % 1000000007, flush=True)
print("done", flush=True)
