#!/usr/bin/env python3
# Run INSIDE the rxe guest, in the background, while migrations run there:
# holds one per-task perf counter of each kind the source's call watch opens
# (src/callwatch.c: raw_syscalls/sys_enter, signal/signal_deliver) until it is
# killed.
#
# Why: the first such counter turns on static keys (the tracepoint's, perf's
# scheduler hooks) and the last one off, and the kernel patches its own text
# each time, with int3. Under multi-threaded TCG a vCPU then sometimes kept
# executing the int3 at syscall_trace_enter for good (CI: a 45 s soft lockup
# once; RCU stalls for 10 minutes until the guest's deadline once, both in
# rdma_migrate's read() on that path). While this holds its counters, the
# daemons' counters never flip those keys: the guest's code stays as it is.
# Nothing of the product changes; a counter that cannot be opened is said and
# the tests run as before.
import ctypes
import os
import signal
import subprocess
import sys

EVENTS = ("raw_syscalls/sys_enter", "signal/signal_deliver")
NR_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_TRACEPOINT = 2


def event_ids():
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            return [int(open(f"{root}/events/{e}/id").read()) for e in EVENTS]
        except OSError:
            pass
    # not mounted: read them from a tracefs mounted where nobody else sees it
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t tracefs nodev /sys/kernel/tracing && cd /sys/kernel/tracing/events && "
         + " && ".join(f"cat {e}/id" for e in EVENTS)],
        capture_output=True, text=True, check=True).stdout.split()
    return [int(x) for x in out]


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        ids = event_ids()
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"hold-perf-keys: no tracepoint ids ({e}); holding nothing", file=sys.stderr)
        return 0
    fds = []
    for name, ident in zip(EVENTS, ids):
        attr = (ctypes.c_uint8 * 128)()  # perf_event_attr: type, size, config, rest 0
        ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_TRACEPOINT
        ctypes.c_uint32.from_buffer(attr, 4).value = 128
        ctypes.c_uint64.from_buffer(attr, 8).value = ident
        fd = libc.syscall(NR_PERF_EVENT_OPEN, attr, 0, -1, -1, 0)
        if fd < 0:
            print(f"hold-perf-keys: {name}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            continue
        fds.append(fd)
    print(f"hold-perf-keys: holding {len(fds)} counters", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
