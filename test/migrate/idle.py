# A process that sleeps through its migration: it fills a heap, says so, sleeps
# (the migration happens meanwhile), then prints what the heap holds. After the
# switch it touches nothing for the whole sleep.
import sys, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 4.5
data = [(i * 2654435761) % 1000003 for i in range(n)]
print("filled", flush=True)
time.sleep(secs)
print("sum", sum(data) % 1000000007, flush=True)
