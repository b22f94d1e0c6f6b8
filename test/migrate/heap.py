# A computation over a large heap (about 150 MB of Python objects), printing a
# line per step. Its output depends on every element, so one wrong page shows.
#   heap.py [N [STEPS [SEED]]]: SEED changes the values, not where they lie
#   (two runs with ASLR off hold different data at the same addresses)
import sys, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500000
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
data = [(i * 2654435761 + seed) % 1000003 for i in range(n)]
table = {i: str(i * 7) for i in range(0, n, 5)}
for step in range(steps):
    for j in range(step % 97, n, 97):
        data[j] = (data[j] * 31 + step) % 1000003
    acc = 0
    for k in range(0, n, 3):
        acc = (acc * 1000003 + data[k]) % 2305843009213693951
    print(step, acc, len(table[(step * 5) % n]), flush=True)
    time.sleep(0.05)
print("done", sum(data) % 1000000007, sum(len(v) for v in table.values()))
