# A parent that forks a worker per step; each worker reads a slice of the parent's
# large heap (after a migration: pages the destination may not have fetched yet,
# served to the child through the uffd the kernel gives the pager at fork) and
# reports a checksum through a pipe.
import os, sys, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
data = [(i * 2654435761) % 1000003 for i in range(n)]
for step in range(steps):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        s = sum(data[step % 13::13]) % 1000000007
        os.write(w, str(s).encode())
        os._exit(0)
    os.close(w)
    res = os.read(r, 100).decode()
    os.close(r)
    _, st = os.waitpid(pid, 0)
    print(step, res, st, flush=True)
    time.sleep(0.25)
print("done", sum(data) % 1000000007)
