# Worker threads computing deterministic results, for the multi-threaded
# migration test: 4 persistent worker threads take jobs from a queue (hash
# chains and a little heap churn), the main thread prints each round's results
# in a fixed order. The output depends only on the arguments.
#   python3 threads.py ROUNDS CHAIN
import hashlib
import queue
import sys
import threading

ROUNDS, CHAIN, WORKERS = int(sys.argv[1]), int(sys.argv[2]), 4
jobs, results = queue.Queue(), queue.Queue()


def worker(k):
    keep = []
    while True:
        job = jobs.get()
        if job is None:
            return
        r, w = job
        h = hashlib.sha256(b"%d/%d" % (r, w)).digest()
        for i in range(CHAIN):
            h = hashlib.sha256(h).digest()
            if i % 64 == 0:
                keep.append(bytes(h) * 8)
        keep = keep[-256:]
        results.put((r, w, h.hex(), threading.get_native_id() > 0))


threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
for t in threads:
    t.start()
for r in range(ROUNDS):
    for w in range(WORKERS):
        jobs.put((r, w))
    got = sorted(results.get() for _ in range(WORKERS))
    for rr, w, h, ok in got:
        print(rr, w, h, ok, flush=True)
for _ in threads:
    jobs.put(None)
for t in threads:
    t.join()
print("joined", len(threads), flush=True)
