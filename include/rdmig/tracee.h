/*
 * A stopped process, every thread of it, driven with ptrace (src/tracee.c): the
 * capture on the source and the restore on the destination both work through it.
 *
 * Threads: seize takes all of them (thread 0 is the main one, tid == pid).
 * One of them is "current" (the main one unless rdmig_tracee_select() says
 * otherwise): injected syscalls run in it, and the saved registers, xstate and
 * signal mask calls concern it. Memory, scratch and the [vdso] syscall belong to
 * the process. Each description below of "the thread" holds per thread.
 *
 * Attach is PTRACE_SEIZE + PTRACE_INTERRUPT (no signal is sent, the process sees
 * nothing), waiting for the interrupt stop. The registers at that stop are saved
 * and put back by release(), so a capture that gives up leaves the thread exactly
 * as it found it, including a blocking syscall it was in (its -ERESTART* return is
 * restarted by the kernel on resume as if nothing happened).
 *
 * Syscall injection runs one syscall in the tracee: registers set to the call
 * (orig_rax = -1, so the kernel's restart logic never touches an injected call),
 * rip at a `syscall` instruction found in the tracee's [vdso], PTRACE_SYSCALL to
 * the entry stop and again to the exit stop, rax read back, registers restored.
 * No byte of the tracee's code is changed. After the [vdso] moves (restore), call
 * rdmig_tracee_find_syscall() again.
 *
 * Scratch memory: one anonymous mapping made in the tracee by an injected mmap on
 * first use (for structs an injected call reads or writes), unmapped by
 * rdmig_tracee_scratch_unmap() or release().
 *
 * Errors: 0 or -errno. A tracee that died or was killed gives -ESRCH.
 */
#ifndef RDMIG_TRACEE_H
#define RDMIG_TRACEE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>

#define RDMIG_TRACEE_WUR __attribute__((warn_unused_result))

struct rdmig_tracee;

/* rdmig_tracee_seize flags */
#define RDMIG_TRACEE_EXITKILL 0x1u /* the tracee dies with us (the husk; never the original) */

/* Seize every thread of pid, interrupt each, wait for the stops, save their
 * registers, find a syscall instruction in its [vdso]. -EPERM / -ESRCH as
 * ptrace says. */
RDMIG_TRACEE_WUR int rdmig_tracee_seize(pid_t pid, unsigned flags, struct rdmig_tracee **out);

pid_t rdmig_tracee_pid(const struct rdmig_tracee *t);

/* The threads held: their number, the tid of thread i (-1 past the end), and
 * which one is current (0 or -EINVAL). */
unsigned rdmig_tracee_nthreads(const struct rdmig_tracee *t);
pid_t rdmig_tracee_tid(const struct rdmig_tracee *t, unsigned i);
RDMIG_TRACEE_WUR int rdmig_tracee_select(struct rdmig_tracee *t, unsigned i);

/* Inject clone(flags, no stack, no tid pointers, no TLS) in the current thread
 * and hold the new thread too (it is stopped before its first instruction, with
 * the registers the clone gave it, its mask the current thread's): *idx is its
 * index. The caller sets its registers before it runs. */
RDMIG_TRACEE_WUR int rdmig_tracee_clone_thread(struct rdmig_tracee *t, unsigned long flags,
                                               unsigned *idx);

/* Run syscall nr with up to six arguments in the tracee. The function returns 0
 * when the call ran (its own result, -errno included, is in *ret) or -errno
 * when driving the tracee failed. */
RDMIG_TRACEE_WUR int rdmig_tracee_syscall(struct rdmig_tracee *t, long nr, const long args[6],
                                          long *ret);
/* Convenience: run it and return its result when it is an error (-errno), else 0
 * with *ret (may be NULL) set. Logs a failing call with its name. */
RDMIG_TRACEE_WUR int rdmig_tracee_call(struct rdmig_tracee *t, const char *what, long *ret, long nr,
                                       long a0, long a1, long a2, long a3, long a4, long a5);

/* One call of a batch: what names it in the log; ret is set for each call
 * that ran. */
struct rdmig_tracee_call {
	const char *what;
	long nr;
	long a[6];
	long ret;
};

/* Calls c[0..n) in the current thread, in order, as rdmig_tracee_call would
 * run each, but many in one resume: the thread runs a few instructions copied
 * into the area after its scratch (made executable), and stops once, not once
 * per call. Stops at the first call that fails: returns its -errno, or the
 * error from driving the thread, logged as rdmig_tracee_call does, with
 * *failed its index (calls after it are not run); 0 and *failed = n when all
 * ran. Arguments that point into the tracee must stay valid for the whole
 * batch (write them all to the scratch first); no call that makes or ends a
 * thread or a process (clone, fork, execve, exit). Where the code cannot run
 * (SIGTRAP ignored or blocked, no executable scratch) the calls go one by one:
 * the same results, slower. */
RDMIG_TRACEE_WUR int rdmig_tracee_calls(struct rdmig_tracee *t, struct rdmig_tracee_call *c,
                                        unsigned n, unsigned *failed);

/* The same call in two halves: _begin sets it going in the current thread and
 * returns while the thread runs it; _end waits for it and gives its result as
 * rdmig_tracee_call does. Between the two, only /proc reads and memory reads of
 * the tracee are allowed (no other call, no ptrace request, no select); release
 * waits for a call left running. For work to do while the thread's first
 * return to user mode is slow (see capture.c). */
RDMIG_TRACEE_WUR int rdmig_tracee_call_begin(struct rdmig_tracee *t, const char *what, long nr,
                                             long a0, long a1, long a2, long a3, long a4, long a5);
RDMIG_TRACEE_WUR int rdmig_tracee_call_end(struct rdmig_tracee *t, const char *what, long *ret);
/* Whether the call set going by _begin may still be running: false once its
 * thread has stopped (for the call's end, or for anything else _end will deal
 * with), or when no call is in flight. Only looks (the stop is left for _end). */
bool rdmig_tracee_call_running(const struct rdmig_tracee *t);

/* Thread i's SIGTRAPs sent by someone else while we held it (tracee.c): the
 * kernel dequeued them, so PTRACE_PEEKSIGINFO does not list them; release queues
 * them again. *si stays valid until the next call on t. */
RDMIG_TRACEE_WUR int rdmig_tracee_held_signals(const struct rdmig_tracee *t, unsigned i,
                                               const siginfo_t **si, unsigned *n);

/* Read/write the tracee's memory through /proc/PID/mem (works on read-only and
 * PROT_NONE mappings; a write to a private file mapping breaks COW as a
 * debugger's does). Short transfers are errors (-EFAULT). */
RDMIG_TRACEE_WUR int rdmig_tracee_read(struct rdmig_tracee *t, uint64_t addr, void *buf,
                                       size_t len);
RDMIG_TRACEE_WUR int rdmig_tracee_write(struct rdmig_tracee *t, uint64_t addr, const void *buf,
                                        size_t len);

/* A scratch area of at least len bytes (<= 1 MiB) in the tracee: *addr. The same
 * area is reused by later calls (grown when needed). */
RDMIG_TRACEE_WUR int rdmig_tracee_scratch(struct rdmig_tracee *t, size_t len, uint64_t *addr);
/* Unmap the scratch area now (before the tracee's map is read, for instance). */
RDMIG_TRACEE_WUR int rdmig_tracee_scratch_unmap(struct rdmig_tracee *t);
/* Avoid [start, end) when placing scratch (the restore's target layout); a
 * scratch area already there is unmapped (the next use maps one elsewhere).
 * 0 or -errno. */
RDMIG_TRACEE_WUR int rdmig_tracee_scratch_avoid(struct rdmig_tracee *t, uint64_t start,
                                                uint64_t end);

/* Search [start, end) of the tracee (normally its [vdso]) for a syscall
 * instruction and use it for injection from now on; 0 or -ENOENT. Seize does
 * this with the [vdso] of /proc/PID/maps. */
RDMIG_TRACEE_WUR int rdmig_tracee_find_syscall(struct rdmig_tracee *t, uint64_t start,
                                               uint64_t end);

/* The registers saved at seize (what release() puts back), and a way to replace
 * them (the restore sets the target's registers this way). */
const struct user_regs_struct *rdmig_tracee_saved_regs(const struct rdmig_tracee *t);
void rdmig_tracee_set_saved_regs(struct rdmig_tracee *t, const struct user_regs_struct *regs);

/* Registers and state of the stopped thread, read and written directly.
 * The signal mask is the thread's own: while seized, every blockable signal is
 * held blocked (so no handler runs and no signal interrupts an injection);
 * get/set_sigmask read and change the mask that release() puts back. */
RDMIG_TRACEE_WUR int rdmig_tracee_get_xstate(struct rdmig_tracee *t, void *buf, size_t cap,
                                             size_t *len);
RDMIG_TRACEE_WUR int rdmig_tracee_set_xstate(struct rdmig_tracee *t, const void *buf, size_t len);
RDMIG_TRACEE_WUR int rdmig_tracee_get_sigmask(struct rdmig_tracee *t, uint64_t *mask);
RDMIG_TRACEE_WUR int rdmig_tracee_set_sigmask(struct rdmig_tracee *t, uint64_t mask);

/* Pin the calling thread and every thread of the tracee (and any it clones
 * later) to the CPU we run on, so injected calls do not cross CPUs; the
 * affinities they had go back at uncolocate(), release() or kill() (ours).
 * A speed-up only: on failure (say, a cpuset that lacks our CPU) nothing stays
 * changed and the caller goes on. */
RDMIG_TRACEE_WUR int rdmig_tracee_colocate(struct rdmig_tracee *t);
int rdmig_tracee_uncolocate(struct rdmig_tracee *t);

/* Put every thread's saved registers back (after unmapping scratch) and detach
 * them all (the main thread last).
 * resume: the thread continues. !resume: it is left stopped (SIGSTOP queued
 * before detaching), for a process that must never run again here but whose fate
 * a person decides. Accepts NULL. Returns 0 or the first error (the tracee is
 * detached or gone either way). */
int rdmig_tracee_release(struct rdmig_tracee *t, bool resume);
/* Kill the tracee (SIGKILL), reap its threads (and itself if it is our child),
 * free t. Accepts NULL. */
void rdmig_tracee_kill(struct rdmig_tracee *t);

#endif /* RDMIG_TRACEE_H */
