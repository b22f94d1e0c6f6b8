/*
 * A watch on a process's calls that change what the capture can only learn by
 * injected calls (src/callwatch.c): its signal handlers, brk, and each
 * thread's alternate stack and clear_child_tid. Those are asked once at the
 * tracking start's stop; if, at the freeze, the watch saw none of those calls
 * and no signal delivered, the answers still hold and the freeze need not make
 * the process run at all (capture.c says why that matters).
 *
 * It counts, per thread, with perf tracepoint counters: raw_syscalls:sys_enter
 * for every call but a list of ones known not to change those things, and
 * signal:signal_deliver. Nothing is added to the process; the counters go
 * when closed. Needs root (or CAP_PERFMON) and a kernel with those
 * tracepoints; tracefs is mounted in a private mount namespace of a short-lived
 * child when it is not mounted already (their ids are only listed there).
 */
#ifndef RDMIG_CALLWATCH_H
#define RDMIG_CALLWATCH_H

#include <sys/types.h>

struct rdmig_callwatch;

/* Watch the threads tids[0..n), stopped, so that nothing they do is missed
 * between the caller's last look and the start (the thread list as it is then
 * is the caller's to keep: a new thread comes from a counted call). 0 or
 * -errno: -ENOENT without the tracepoints, -EACCES/-EPERM without the right,
 * others from perf. */
__attribute__((warn_unused_result)) int rdmig_callwatch_open(const pid_t *tids, unsigned n,
                                                             struct rdmig_callwatch **out);

/* Take the counts as they are now as the watch's start (calls the caller made
 * the threads make, injected, after the open). 0 or -errno. */
__attribute__((warn_unused_result)) int rdmig_callwatch_mark(struct rdmig_callwatch *w);

/* 1 when none of the watched threads made a counted call or took a signal
 * since the open (or the mark), 0 when one did, -errno when a counter cannot
 * be read (the caller must then assume 0). */
__attribute__((warn_unused_result)) int rdmig_callwatch_quiet(const struct rdmig_callwatch *w);

/* Accepts NULL. */
void rdmig_callwatch_close(struct rdmig_callwatch *w);

#endif
