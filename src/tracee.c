/*
 * Driving one stopped thread with ptrace (rdmig/tracee.h).
 *
 * Flow: PTRACE_SEIZE, PTRACE_INTERRUPT, wait for the PTRACE_EVENT_STOP. That stop
 * is taken inside get_signal(), on the way back to user space; the saved
 * registers are the ones the thread has there (an interrupted blocking syscall
 * shows rax = -ERESTART* and orig_rax = its number).
 *
 * Signals while we hold the thread. A signal dequeued before the interrupt took
 * effect shows up first as a signal-delivery-stop: its siginfo is kept, it is
 * suppressed (resumed with signal 0) and, once at the interrupt stop, queued
 * again into the thread by an injected rt_tgsigqueueinfo() (a process may queue
 * any siginfo to itself), so it is pending again exactly as before: a capture
 * sees it with PTRACE_PEEKSIGINFO and a release delivers it. While seized, every
 * blockable signal but SIGTRAP is blocked with PTRACE_SETSIGMASK, so no handler
 * runs and no signal-delivery-stop interrupts an injection; the thread's own mask
 * is kept here (get/set_sigmask read and change that copy) and put back at
 * release. A SIGSTOP (not blockable) that arrives during an injection is
 * suppressed and sent again at release.
 *
 * SIGTRAP. The kernel reports a single step by forcing a SIGTRAP on the thread,
 * and a forced signal that is blocked or ignored has its action reset to SIG_DFL
 * (force_sig_info_to_task): blocked, one injection would silently take away the
 * process's SIGTRAP handler (a Go runtime's, a debugger stub's) on the source and
 * in the restored process. So SIGTRAP stays unblocked while we hold the thread,
 * and while the process ignores it (SigIgn in /proc/PID/status, read at seize and
 * after every injected rt_sigaction of SIGTRAP, which itself goes this way: it
 * may have just set SIG_IGN) calls are injected with PTRACE_SYSCALL instead: two
 * stops a call, no signal. A SIGTRAP that is not our
 * step's report (si_code TRAP_BRKPT) is someone else's: it is held, not
 * delivered, given to the capture (rdmig_tracee_held_signals) and queued again
 * at release, blocked until the thread's own mask is back.
 *
 * Syscall restart. Injections leave the thread in a syscall-exit-stop. Were it
 * released from there, the kernel would not run its restart logic and the
 * thread would see -ERESTART* in rax. So release() first moves it back into an
 * interrupt stop (registers restored, PTRACE_INTERRUPT, PTRACE_CONT): released
 * from inside get_signal(), the kernel restarts the interrupted call as if we
 * had never been there, -ERESTART_RESTARTBLOCK (nanosleep) included, since no
 * injected call touches the restart block. (PTRACE_DETACH itself sets
 * TIF_SIGPENDING, which on 6.18 also sends a syscall-exit-stop through the
 * restart logic; the interrupt stop does not depend on that detail.)
 *
 * Threads. Seize takes every thread of the process: the main one first, then
 * whatever /proc/PID/task lists, each PTRACE_SEIZE + PTRACE_INTERRUPT and waited
 * for with waitpid(tid, __WALL), listing again until a pass finds no new tid
 * (a stopped thread cannot create one, and a clone() that was under way has
 * finished before its caller stops). A thread that exits meanwhile is dropped.
 * Everything above is per thread (saved registers, mask, suppressed signals,
 * syscall-exit-stop); the "current" thread (rdmig_tracee_select, the main one
 * by default) is the one injections run in and the register/xstate/mask calls
 * concern. The [vdso] syscall and the scratch area belong to the process.
 * rdmig_tracee_clone_thread() injects clone() with PTRACE_O_TRACECLONE, so the
 * new thread is ours from its first instruction, in a PTRACE_EVENT_STOP.
 * Release puts every thread back, then detaches them; kill reaps each thread
 * (a traced thread stays a zombie until its tracer waits for it).
 */
#define LOG_SUBSYS "tracee"
#include "rdmig/tracee.h"

#include "procfs.h"

#include "rdmig/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define TRACEE_PAGE 4096ul
#define TRACEE_SCRATCH_MAX (1ul << 20)
#define TRACEE_SCRATCH_MIN (64ul << 10)
/* The batch area after the callers' scratch: the code, then the table. */
#define TRACEE_BATCH_AREA TRACEE_PAGE
#define TRACEE_BATCH_ENTRY 64u /* nr, a0-a5, ret */
#define TRACEE_BATCH_TABLE 64u /* the code's room */
#define TRACEE_BATCH_MAX ((unsigned)((TRACEE_BATCH_AREA - TRACEE_BATCH_TABLE) / TRACEE_BATCH_ENTRY))
#define WANT_INT3 (-SIGTRAP) /* tracee_wait_for: the batch code's int3, not a step */
/* Room kept free around a scratch area placed among avoid ranges. */
#define TRACEE_SCRATCH_GUARD (1ul << 20)
#define TRACEE_SCRATCH_LOW (1ul << 30)
#define TRACEE_MAX_PENDING 4

struct tracee_range {
	uint64_t start, end;
};

struct tracee_thread {
	pid_t tid;
	bool seized;          /* PTRACE_SEIZE succeeded: detach at release */
	bool in_syscall_stop; /* left in a syscall-exit-stop by an injection */
	bool stop_pending;    /* a SIGSTOP was suppressed: send it again at release */
	bool regs_saved;      /* saved holds the registers of the interrupt stop */
	bool mask_changed;    /* the live mask is "all blocked", thread_mask is its own */
	bool pinned;          /* colocated: cpus is its own affinity, to put back */
	cpu_set_t cpus;
	uint64_t thread_mask;
	struct user_regs_struct saved;
	siginfo_t pending[TRACEE_MAX_PENDING]; /* suppressed at seize, to queue again */
	int npending;
	siginfo_t held[TRACEE_MAX_PENDING]; /* SIGTRAPs held until the release */
	unsigned nheld;
	bool trap_blocked; /* SIGTRAP blocked again (release): inject with PTRACE_SYSCALL */
};

struct rdmig_tracee {
	pid_t pid;
	unsigned flags;
	long opts;  /* the ptrace options every thread was seized with */
	int mem_fd; /* /proc/PID/mem, O_RDWR */
	bool dead;
	bool is_child; /* our own child: its exit status is left for our caller's waitpid */
	struct tracee_thread *th; /* th[0] is the main thread (tid == pid) */
	size_t nth, th_cap;
	size_t cur;          /* the thread injections run in */
	pid_t clone_tid;     /* set by a PTRACE_EVENT_CLONE seen during an injection */
	uint64_t syscall_ip; /* 0: none found */
	bool inflight;       /* rdmig_tracee_call_begin: the current thread runs a call */
	long inflight_nr;
	bool trap_ignored;       /* SIGTRAP is SIG_IGN: inject with PTRACE_SYSCALL (file comment) */
	int inflight_req;        /* PTRACE_SINGLESTEP, or PTRACE_SYSCALL while SIGTRAP is ignored */
	bool inflight_sets_trap; /* the call in flight sets SIGTRAP's action */
	uint64_t scratch_addr;
	size_t scratch_len; /* the callers' part; the batch area follows it */
	bool scratch_exec;  /* the mapping is executable: batches can run there */
	struct tracee_range *avoid;
	size_t navoid, avoid_cap;
	bool colocated; /* rdmig_tracee_colocate: our thread is pinned, own_cpus is its own */
	cpu_set_t own_cpus;
};

#define CUR(t) (&(t)->th[(t)->cur])

/* A /proc stat file read into buf: what follows the comm (which may hold ')'),
 * from the space before field 3, or NULL. */
static const char *stat_after_comm(const char *path, char *buf, size_t cap)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	n = read(fd, buf, cap - 1);
	close(fd);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	return strrchr(buf, ')');
}

/* The parent of pid from /proc/PID/stat, or -1. */
static pid_t procfs_ppid(pid_t pid)
{
	char path[64], buf[512];
	const char *p;
	int ppid;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	p = stat_after_comm(path, buf, sizeof(buf));
	if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1)
		return -1;
	return ppid;
}

/* Whether the process ignores SIGTRAP (SigIgn of /proc/PID/status); true when
 * that cannot be read, the safe answer. */
static bool tracee_trap_ignored(pid_t pid)
{
	struct procfs_status st;
	bool ign;

	if (procfs_status(pid, &st))
		return true;
	ign = st.sig_ign >> (SIGTRAP - 1) & 1;
	procfs_status_free(&st);
	return ign;
}

/* At a SIGTRAP signal-delivery-stop that is not our step's report: keep its
 * siginfo (the kernel has dequeued it) for the capture and the release. */
static int tracee_hold_trap(struct rdmig_tracee *t)
{
	struct tracee_thread *th = &t->th[t->cur];

	if (th->nheld == TRACEE_MAX_PENDING) {
		pr_err("pid %d: more than %d SIGTRAPs sent to it while it was held", th->tid,
		       TRACEE_MAX_PENDING);
		return -EIO;
	}
	if (ptrace(PTRACE_GETSIGINFO, th->tid, NULL, &th->held[th->nheld]) < 0)
		return -errno;
	th->nheld++;
	pr_info("pid %d: a SIGTRAP sent to it while held is kept for after the release", th->tid);
	return 0;
}

static int tracee_wait(struct rdmig_tracee *t, int *status)
{
	pid_t tid = CUR(t)->tid;

	for (;;) {
		siginfo_t si = {0};
		pid_t r;

		/* Our own child's exit (the restored process, seized once more at the
		 * end) is only looked at: its status belongs to whoever waits for the
		 * process (rdma_migrate dst --wait), not to us. */
		if (t->is_child && tid == t->pid &&
		    waitid(P_PID, (id_t)tid, &si, WEXITED | WSTOPPED | __WALL | WNOWAIT) == 0 &&
		    (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED ||
		     si.si_code == CLD_DUMPED)) {
			pr_info("pid %d exited while traced; its status is left for its parent",
			        t->pid);
			t->dead = true;
			return -ESRCH;
		}
		r = waitpid(tid, status, __WALL);

		if (r == tid)
			break;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == ECHILD) {
			t->dead = true;
			return -ESRCH;
		}
		return r < 0 ? -errno : -EIO;
	}
	if (WIFEXITED(*status) || WIFSIGNALED(*status)) {
		pr_err("pid %d (thread %d) died while traced (%s %d)", t->pid, tid,
		       WIFEXITED(*status) ? "exit status" : "signal",
		       WIFEXITED(*status) ? WEXITSTATUS(*status) : WTERMSIG(*status));
		t->dead = true;
		return -ESRCH;
	}
	if (!WIFSTOPPED(*status))
		return -EIO;
	return 0;
}

static int tracee_ptrace(struct rdmig_tracee *t, int req, void *addr, void *data)
{
	if (ptrace((enum __ptrace_request)req, CUR(t)->tid, addr, data) < 0)
		return -errno;
	return 0;
}

/* After resuming with req (PTRACE_SINGLESTEP or PTRACE_CONT): wait for a stop
 * that want() accepts: stopped at status 'want_sig' when event is 0, or at an
 * event stop when want_event. Stops on the way are handled per the file comment
 * (and the thread resumed with req again). */
static int tracee_wait_for(struct rdmig_tracee *t, int req, int want_sig, bool want_event)
{
	int status, ret;

	for (;;) {
		ret = tracee_wait(t, &status);
		if (ret)
			return ret;
		int sig = WSTOPSIG(status), event = (unsigned)status >> 16;

		if (event == PTRACE_EVENT_STOP && want_event)
			return 0;
		if (!event && sig == SIGTRAP) {
			siginfo_t si;

			ret = tracee_ptrace(t, PTRACE_GETSIGINFO, NULL, &si);
			if (ret)
				return ret;
			if (want_sig == SIGTRAP && si.si_code == TRAP_BRKPT)
				return 0; /* our step's report */
			/* the batch code's int3; nobody else runs code in the
			 * thread, and a SIGTRAP sent with kill() is SI_USER */
			if (want_sig == WANT_INT3 && si.si_code == SI_KERNEL)
				return 0;
			ret = tracee_hold_trap(t);
			if (ret)
				return ret;
		} else if (!event && sig == want_sig) {
			return 0;
		} else if (event == PTRACE_EVENT_CLONE) {
			unsigned long msg = 0;

			ret = tracee_ptrace(t, PTRACE_GETEVENTMSG, NULL, &msg);
			if (ret)
				return ret;
			t->clone_tid = (pid_t)msg;
		} else if (!event && sig != (SIGTRAP | 0x80)) {
			/* Only an unblockable signal can get here. */
			if (sig == SIGSTOP)
				CUR(t)->stop_pending = true;
			else
				pr_warn("pid %d: signal %d suppressed during an injection", t->pid,
				        sig);
		} else if (!event) {
			pr_err("pid %d: unexpected syscall stop", t->pid);
			return -EIO;
		}
		/* a group-stop or our own interrupt stop: go on */
		ret = tracee_ptrace(t, req, NULL, NULL);
		if (ret)
			return ret;
	}
}

static int tracee_run_until(struct rdmig_tracee *t, int req, int want_sig, bool want_event)
{
	int ret = tracee_ptrace(t, req, NULL, NULL);

	return ret ? ret : tracee_wait_for(t, req, want_sig, want_event);
}

/* Set the registers for syscall nr and step over the [vdso]'s syscall
 * instruction: the thread runs from here until tracee_syscall_end() waits. */
static int tracee_syscall_begin(struct rdmig_tracee *t, long nr, const long args[6])
{
	struct tracee_thread *th = CUR(t);
	struct user_regs_struct r = th->saved;
	int err;

	if (t->dead)
		return -ESRCH;
	if (t->inflight)
		return -EBUSY;
	if (!t->syscall_ip)
		return -ENOENT;
	r.rax = (unsigned long long)nr;
	r.rdi = (unsigned long long)args[0];
	r.rsi = (unsigned long long)args[1];
	r.rdx = (unsigned long long)args[2];
	r.r10 = (unsigned long long)args[3];
	r.r8 = (unsigned long long)args[4];
	r.r9 = (unsigned long long)args[5];
	r.orig_rax = (unsigned long long)-1;
	r.rip = t->syscall_ip;
	err = tracee_ptrace(t, PTRACE_SETREGS, NULL, &r);
	if (err)
		return err;
	th->in_syscall_stop = true; /* from here on the registers need restoring */
	/* One single step over the syscall instruction: the kernel reports the step
	 * at the syscall's exit, one stop where PTRACE_SYSCALL takes two (entry and
	 * exit). Injections are most of the freeze's and the restore's cost. But
	 * the report is a forced SIGTRAP, which resets an ignored SIGTRAP's action
	 * (file comment): then PTRACE_SYSCALL. */
	t->inflight_req =
	    t->trap_ignored || th->trap_blocked || (nr == SYS_rt_sigaction && args[0] == SIGTRAP)
	        ? PTRACE_SYSCALL
	        : PTRACE_SINGLESTEP;
	err = tracee_ptrace(t, t->inflight_req, NULL, NULL);
	if (err)
		return err;
	t->inflight = true;
	t->inflight_nr = nr;
	t->inflight_sets_trap = nr == SYS_rt_sigaction && args[0] == SIGTRAP && args[1];
	return 0;
}

static int tracee_syscall_end(struct rdmig_tracee *t, long *ret)
{
	struct user_regs_struct r;
	long nr = t->inflight_nr;
	int err;

	if (!t->inflight)
		return -EINVAL;
	t->inflight = false;
	if (t->inflight_req == PTRACE_SYSCALL) {
		/* the entry stop, then on to the exit stop */
		err = tracee_wait_for(t, PTRACE_SYSCALL, SIGTRAP | 0x80, false);
		if (!err)
			err = tracee_run_until(t, PTRACE_SYSCALL, SIGTRAP | 0x80, false);
	} else {
		err = tracee_wait_for(t, PTRACE_SINGLESTEP, SIGTRAP, false);
	}
	if (err)
		return err;
	err = tracee_ptrace(t, PTRACE_GETREGS, NULL, &r);
	if (err)
		return err;
	if (r.rip != t->syscall_ip + 2) {
		pr_err("pid %d: injected syscall %ld ended at rip %#llx, not after %#" PRIx64,
		       CUR(t)->tid, nr, r.rip, t->syscall_ip);
		return -EIO;
	}
	*ret = (long)r.rax;
	/* a new action for SIGTRAP decides how the next calls are injected */
	if (t->inflight_sets_trap)
		t->trap_ignored = tracee_trap_ignored(t->pid);
	/* The saved registers go back once, at release (or the next injection sets
	 * its own): not after every call. */
	return 0;
}

int rdmig_tracee_syscall(struct rdmig_tracee *t, long nr, const long args[6], long *ret)
{
	int err = tracee_syscall_begin(t, nr, args);

	return err ? err : tracee_syscall_end(t, ret);
}

/* What rdmig_tracee_call and _call_end give back: err from driving the thread,
 * else the call's own -errno, else 0 with *ret set; either failure logged. */
static int tracee_call_result(struct rdmig_tracee *t, const char *what, int err, long r, long *ret)
{
	if (err) {
		pr_err("pid %d: injecting %s failed: %s", CUR(t)->tid, what, strerror(-err));
		return err;
	}
	if (r < 0 && r >= -4095) {
		pr_err("pid %d: injected %s failed: %s", CUR(t)->tid, what, strerror((int)-r));
		return (int)r;
	}
	if (ret)
		*ret = r;
	return 0;
}

int rdmig_tracee_call_begin(struct rdmig_tracee *t, const char *what, long nr, long a0, long a1,
                            long a2, long a3, long a4, long a5)
{
	long args[6] = {a0, a1, a2, a3, a4, a5};
	int err = tracee_syscall_begin(t, nr, args);

	if (err)
		pr_err("pid %d: injecting %s failed: %s", CUR(t)->tid, what, strerror(-err));
	return err;
}

int rdmig_tracee_call_end(struct rdmig_tracee *t, const char *what, long *ret)
{
	long r = 0;
	int err = tracee_syscall_end(t, &r);

	return tracee_call_result(t, what, err, r, ret);
}

bool rdmig_tracee_call_running(const struct rdmig_tracee *t)
{
	siginfo_t si = {0};

	if (!t->inflight || t->dead)
		return false;
	/* WNOWAIT: the stop stays for tracee_wait. An error (the thread gone)
	 * says "stopped": _end finds out what happened. */
	if (waitid(P_PID, (id_t)CUR(t)->tid, &si, WSTOPPED | WEXITED | WNOHANG | WNOWAIT | __WALL) <
	    0)
		return false;
	return si.si_pid == 0;
}

int rdmig_tracee_call(struct rdmig_tracee *t, const char *what, long *ret, long nr, long a0,
                      long a1, long a2, long a3, long a4, long a5)
{
	long args[6] = {a0, a1, a2, a3, a4, a5}, r = 0;
	int err = rdmig_tracee_syscall(t, nr, args, &r);

	return tracee_call_result(t, what, err, r, ret);
}

/*
 * The batch code (x86_64, position-independent, no stack), copied to the start
 * of the batch area. rbx: the table, r12: how many entries; each entry is
 * {nr, a0, a1, a2, a3, a4, a5, ret}. It runs them in order and stops on its
 * int3 after the last one or after the first that returns -errno (1..4095):
 * then r12 still counts that one, so r12 is how many did not succeed.
 */
static const uint8_t batch_code[] = {
    0x4d, 0x85, 0xe4,                   /* 0x00 loop: test %r12,%r12 */
    0x74, 0x32,                         /* 0x03 jz done */
    0x48, 0x8b, 0x03,                   /* 0x05 mov (%rbx),%rax */
    0x48, 0x8b, 0x7b, 0x08,             /* 0x08 mov 8(%rbx),%rdi */
    0x48, 0x8b, 0x73, 0x10,             /* 0x0c mov 16(%rbx),%rsi */
    0x48, 0x8b, 0x53, 0x18,             /* 0x10 mov 24(%rbx),%rdx */
    0x4c, 0x8b, 0x53, 0x20,             /* 0x14 mov 32(%rbx),%r10 */
    0x4c, 0x8b, 0x43, 0x28,             /* 0x18 mov 40(%rbx),%r8 */
    0x4c, 0x8b, 0x4b, 0x30,             /* 0x1c mov 48(%rbx),%r9 */
    0x0f, 0x05,                         /* 0x20 syscall */
    0x48, 0x89, 0x43, 0x38,             /* 0x22 mov %rax,56(%rbx) */
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, /* 0x26 cmp $-4095,%rax */
    0x73, 0x09,                         /* 0x2c jae done */
    0x48, 0x83, 0xc3, 0x40,             /* 0x2e add $64,%rbx */
    0x49, 0xff, 0xcc,                   /* 0x32 dec %r12 */
    0xeb, 0xc9,                         /* 0x35 jmp loop */
    0xcc,                               /* 0x37 done: int3 */
};

/*
 * Up to TRACEE_BATCH_MAX calls in one resume: PTRACE_CONT into the batch code,
 * one stop at its int3, where each call alone costs a step and its stop (two
 * wake-ups, 20-50 us here). -ENOSYS where it cannot: SIGTRAP ignored or
 * blocked (int3 forces a SIGTRAP, which would reset the process's action, as a
 * step's report would: file comment) or no executable scratch. *ran: how many
 * ran, the last of them perhaps failed (its ret is -errno).
 */
static int tracee_batch(struct rdmig_tracee *t, struct rdmig_tracee_call *c, unsigned k,
                        unsigned *ran)
{
	struct tracee_thread *th = CUR(t);
	uint64_t area[(TRACEE_BATCH_TABLE + TRACEE_BATCH_MAX * TRACEE_BATCH_ENTRY) / 8];
	struct user_regs_struct r;
	uint64_t base, at;
	int err;

	*ran = 0;
	if (t->dead)
		return -ESRCH;
	if (t->inflight)
		return -EBUSY;
	if (k > TRACEE_BATCH_MAX)
		return -EINVAL;
	if (t->trap_ignored || th->trap_blocked)
		return -ENOSYS;
	/* no room for a scratch area (avoid ranges) costs speed, not the calls */
	if ((!t->scratch_addr && rdmig_tracee_scratch(t, 1, &at)) || !t->scratch_exec)
		return -ENOSYS;
	base = t->scratch_addr + t->scratch_len;
	memset(area, 0, TRACEE_BATCH_TABLE);
	memcpy(area, batch_code, sizeof(batch_code));
	for (unsigned i = 0; i < k; i++) {
		uint64_t *e = &area[(TRACEE_BATCH_TABLE + i * TRACEE_BATCH_ENTRY) / 8];

		e[0] = (uint64_t)c[i].nr;
		for (unsigned j = 0; j < 6; j++)
			e[1 + j] = (uint64_t)c[i].a[j];
		e[7] = 0;
	}
	err = rdmig_tracee_write(t, base, area, TRACEE_BATCH_TABLE + k * TRACEE_BATCH_ENTRY);
	if (err)
		return err;
	r = th->saved;
	r.rip = base;
	r.rbx = base + TRACEE_BATCH_TABLE;
	r.r12 = k;
	r.orig_rax = (unsigned long long)-1; /* no syscall to restart */
	r.eflags &= ~0x100ull;               /* TF: run, do not step */
	err = tracee_ptrace(t, PTRACE_SETREGS, NULL, &r);
	if (err)
		return err;
	th->in_syscall_stop = true; /* the registers need restoring, as after a call */
	err = tracee_run_until(t, PTRACE_CONT, WANT_INT3, false);
	if (!err)
		err = tracee_ptrace(t, PTRACE_GETREGS, NULL, &r);
	if (err)
		return err;
	if (r.rip != base + sizeof(batch_code) || r.r12 > k) {
		pr_err("pid %d: injected calls stopped at rip %#llx with %llu left, not after "
		       "%#" PRIx64,
		       th->tid, r.rip, r.r12, base + sizeof(batch_code) - 1);
		return -EIO;
	}
	*ran = k - (unsigned)r.r12 + (r.r12 ? 1 : 0);
	err = rdmig_tracee_read(t, base + TRACEE_BATCH_TABLE, area, *ran * TRACEE_BATCH_ENTRY);
	if (err)
		return err;
	for (unsigned i = 0; i < *ran; i++)
		c[i].ret = (long)area[i * TRACEE_BATCH_ENTRY / 8 + 7];
	return 0;
}

/* Calls that go alone, by the one-call path: an action for SIGTRAP (the
 * batch's int3 would reset an SIG_IGN set inside the batch; the one-call path
 * reads the action again after it), a change to the mask, and anything that
 * could unmap or protect the batch area under the code that runs there. */
static bool batch_unsafe(const struct rdmig_tracee *t, const struct rdmig_tracee_call *c)
{
	uint64_t lo = t->scratch_addr, hi = lo + t->scratch_len + TRACEE_BATCH_AREA;
	uint64_t a = (uint64_t)c->a[0], len = (uint64_t)c->a[1];

	switch (c->nr) {
	case SYS_rt_sigaction:
		return c->a[0] == SIGTRAP;
	case SYS_rt_sigprocmask:
	case SYS_rt_sigreturn:
		return true;
	case SYS_mmap:
		if (!(c->a[3] & (MAP_FIXED | MAP_FIXED_NOREPLACE)))
			return false;
		__attribute__((fallthrough)); /* a fixed mapping: its range decides */
	case SYS_munmap:
	case SYS_mprotect:
	case SYS_mremap:
	case SYS_madvise:
		return !lo || (a < hi && (len > UINT64_MAX - a || a + len > lo));
	default:
		return false;
	}
}

int rdmig_tracee_calls(struct rdmig_tracee *t, struct rdmig_tracee_call *c, unsigned n,
                       unsigned *failed)
{
	unsigned done = 0;
	*failed = n;
	while (done < n) {
		unsigned k = n - done < TRACEE_BATCH_MAX ? n - done : TRACEE_BATCH_MAX, ran = 0;
		int err;

		for (unsigned i = 0; i < k; i++)
			if (batch_unsafe(t, &c[done + i])) {
				k = i ? i : 1; /* the ones before it, or it alone */
				break;
			}
		/* tracee_batch says -ENOSYS each time it cannot: cheap to ask */
		err = k == 1 ? -ENOSYS : tracee_batch(t, c + done, k, &ran);

		if (err == -ENOSYS) {
			ran = 1;
			err = rdmig_tracee_syscall(t, c[done].nr, c[done].a, &c[done].ret);
		}
		if (err) {
			*failed = done;
			pr_err("pid %d: injecting %s failed: %s", CUR(t)->tid, c[done].what,
			       strerror(-err));
			return err;
		}
		for (unsigned i = done; i < done + ran; i++)
			if (c[i].ret < 0 && c[i].ret >= -4095) {
				*failed = i;
				pr_err("pid %d: injected %s failed: %s", CUR(t)->tid, c[i].what,
				       strerror((int)-c[i].ret));
				return (int)c[i].ret;
			}
		done += ran;
	}
	return 0;
}

pid_t rdmig_tracee_pid(const struct rdmig_tracee *t)
{
	return t->pid;
}

int rdmig_tracee_read(struct rdmig_tracee *t, uint64_t addr, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(t->mem_fd, (char *)buf + done, len - done, (off_t)(addr + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return (n < 0 && errno == ESRCH) ? -ESRCH : -EFAULT;
		done += (size_t)n;
	}
	return 0;
}

int rdmig_tracee_write(struct rdmig_tracee *t, uint64_t addr, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n =
		    pwrite(t->mem_fd, (const char *)buf + done, len - done, (off_t)(addr + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return (n < 0 && errno == ESRCH) ? -ESRCH : -EFAULT;
		done += (size_t)n;
	}
	return 0;
}

int rdmig_tracee_scratch_avoid(struct rdmig_tracee *t, uint64_t start, uint64_t end)
{
	if (start >= end)
		return 0;
	if (t->navoid == t->avoid_cap) {
		size_t cap = t->avoid_cap ? 2 * t->avoid_cap : 16;
		struct tracee_range *a = realloc(t->avoid, cap * sizeof(*a));

		if (!a) {
			/* An avoid range lost would let scratch land in the target's
			 * layout: make placement fail instead. */
			pr_err("out of memory recording an avoid range");
			t->navoid = SIZE_MAX;
			return -ENOMEM;
		}
		t->avoid = a;
		t->avoid_cap = cap;
	}
	if (t->navoid == SIZE_MAX)
		return -ENOMEM;
	t->avoid[t->navoid++] = (struct tracee_range){start, end};
	/* a scratch area placed before this range was known moves out of its way */
	if (t->scratch_addr && t->scratch_addr < end &&
	    start < t->scratch_addr + t->scratch_len + TRACEE_BATCH_AREA)
		return rdmig_tracee_scratch_unmap(t);
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	const struct tracee_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Add the tracee's current mappings to *rs (from /proc/PID/maps). */
static int tracee_read_maps(pid_t pid, struct tracee_range **rs, size_t *n, size_t *cap)
{
	char path[64], *line = NULL;
	size_t lcap = 0;
	FILE *f;
	int ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -ESRCH : -errno;
	while (getline(&line, &lcap, f) > 0) {
		unsigned long long s, e;

		if (sscanf(line, "%llx-%llx", &s, &e) != 2 || s >= e) {
			pr_err("pid %d: maps line does not parse: %.80s", pid, line);
			ret = -EIO;
			break;
		}
		if (*n == *cap) {
			size_t nc = *cap ? 2 * *cap : 64;
			struct tracee_range *a = realloc(*rs, nc * sizeof(*a));

			if (!a) {
				ret = -ENOMEM;
				break;
			}
			*rs = a;
			*cap = nc;
		}
		(*rs)[(*n)++] = (struct tracee_range){s, e};
	}
	free(line);
	fclose(f);
	return ret;
}

/* An address for len bytes outside the avoid ranges and the current map. */
static int tracee_pick_scratch_addr(struct rdmig_tracee *t, size_t len, uint64_t *addr)
{
	struct tracee_range *rs = NULL;
	size_t n = 0, cap = 0;
	int ret;

	if (t->navoid == SIZE_MAX)
		return -ENOMEM;
	ret = tracee_read_maps(t->pid, &rs, &n, &cap);
	if (ret)
		goto out_free;
	for (size_t i = 0; i < t->navoid; i++) {
		if (n == cap) {
			size_t nc = cap ? 2 * cap : 64;
			struct tracee_range *a = realloc(rs, nc * sizeof(*a));

			if (!a) {
				ret = -ENOMEM;
				goto out_free;
			}
			rs = a;
			cap = nc;
		}
		rs[n++] = t->avoid[i];
	}
	qsort(rs, n, sizeof(*rs), range_cmp);
	uint64_t cand = TRACEE_SCRATCH_LOW;

	for (size_t i = 0; i <= n; i++) {
		uint64_t next = i < n ? rs[i].start : 0x7f0000000000ull;

		if (next >= cand + len + TRACEE_SCRATCH_GUARD) {
			*addr = cand;
			goto out_free;
		}
		if (i < n && rs[i].end + TRACEE_SCRATCH_GUARD > cand)
			cand = (rs[i].end + TRACEE_SCRATCH_GUARD + TRACEE_PAGE - 1) &
			       ~(TRACEE_PAGE - 1);
	}
	ret = -ENOMEM;
out_free:
	free(rs);
	return ret;
}

int rdmig_tracee_scratch_unmap(struct rdmig_tracee *t)
{
	int ret;

	if (!t->scratch_addr)
		return 0;
	ret = rdmig_tracee_call(t, "munmap(scratch)", NULL, SYS_munmap, (long)t->scratch_addr,
	                        (long)(t->scratch_len + TRACEE_BATCH_AREA), 0, 0, 0, 0);
	if (ret)
		return ret;
	t->scratch_addr = 0;
	t->scratch_len = 0;
	return 0;
}

int rdmig_tracee_scratch(struct rdmig_tracee *t, size_t len, uint64_t *addr)
{
	uint64_t hint = 0;
	long flags = MAP_PRIVATE | MAP_ANONYMOUS, r;
	bool exec;
	int ret;

	if (len == 0 || len > TRACEE_SCRATCH_MAX)
		return -EINVAL;
	if (t->scratch_addr && t->scratch_len >= len) {
		*addr = t->scratch_addr;
		return 0;
	}
	ret = rdmig_tracee_scratch_unmap(t);
	if (ret)
		return ret;
	len = (len + TRACEE_PAGE - 1) & ~(TRACEE_PAGE - 1);
	if (len < TRACEE_SCRATCH_MIN)
		len = TRACEE_SCRATCH_MIN;
	if (t->navoid) {
		ret = tracee_pick_scratch_addr(t, len + TRACEE_BATCH_AREA, &hint);
		if (ret) {
			pr_err("pid %d: no room for %zu bytes of scratch outside the avoid ranges",
			       t->pid, len);
			return ret;
		}
		flags |= MAP_FIXED_NOREPLACE;
	}
	/* Executable for the batch code (rdmig_tracee_calls); where that is
	 * refused (an LSM's execmem rule), plain, and calls go one by one. */
	exec = true;
	ret = rdmig_tracee_call(t, "mmap(scratch)", &r, SYS_mmap, (long)hint,
	                        (long)(len + TRACEE_BATCH_AREA), PROT_READ | PROT_WRITE | PROT_EXEC,
	                        flags, -1, 0);
	if (ret == -EACCES || ret == -EPERM) {
		exec = false;
		ret = rdmig_tracee_call(t, "mmap(scratch)", &r, SYS_mmap, (long)hint,
		                        (long)(len + TRACEE_BATCH_AREA), PROT_READ | PROT_WRITE,
		                        flags, -1, 0);
	}
	if (ret)
		return ret;
	t->scratch_exec = exec;
	if (hint && (uint64_t)r != hint) {
		pr_err("pid %d: scratch mapped at %#lx, not at %#" PRIx64, t->pid, r, hint);
		t->scratch_addr = (uint64_t)r;
		t->scratch_len = len;
		if (rdmig_tracee_scratch_unmap(t) < 0)
			pr_warn("pid %d: misplaced scratch stays mapped", t->pid);
		return -EEXIST;
	}
	t->scratch_addr = (uint64_t)r;
	t->scratch_len = len;
	*addr = t->scratch_addr;
	return 0;
}

int rdmig_tracee_find_syscall(struct rdmig_tracee *t, uint64_t start, uint64_t end)
{
	uint8_t *buf;
	size_t len;
	int ret;

	if (start >= end || end - start > (1u << 20))
		return -EINVAL;
	len = (size_t)(end - start);
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	ret = rdmig_tracee_read(t, start, buf, len);
	if (ret)
		goto out_free;
	ret = -ENOENT;
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] == 0x0f && buf[i + 1] == 0x05) {
			t->syscall_ip = start + i;
			ret = 0;
			break;
		}
	}
out_free:
	free(buf);
	return ret;
}

/* The [vdso] range from /proc/PID/maps. */
static int tracee_find_vdso(pid_t pid, uint64_t *start, uint64_t *end)
{
	char path[64], line[512];
	FILE *f;
	int ret = -ENOENT;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -ESRCH : -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e;
		size_t l = strlen(line);

		if (l < 7 || strcmp(line + l - 7, "[vdso]\n"))
			continue;
		if (sscanf(line, "%llx-%llx", &s, &e) != 2 || s >= e) {
			ret = -EIO;
			break;
		}
		*start = s;
		*end = e;
		ret = 0;
		break;
	}
	fclose(f);
	return ret;
}

const struct user_regs_struct *rdmig_tracee_saved_regs(const struct rdmig_tracee *t)
{
	return &CUR(t)->saved;
}

void rdmig_tracee_set_saved_regs(struct rdmig_tracee *t, const struct user_regs_struct *regs)
{
	CUR(t)->saved = *regs;
}

unsigned rdmig_tracee_nthreads(const struct rdmig_tracee *t)
{
	return (unsigned)t->nth;
}

pid_t rdmig_tracee_tid(const struct rdmig_tracee *t, unsigned i)
{
	return i < t->nth ? t->th[i].tid : -1;
}

int rdmig_tracee_select(struct rdmig_tracee *t, unsigned i)
{
	if (t->inflight)
		return -EBUSY; /* the call left running is the current thread's */
	if (i >= t->nth)
		return -EINVAL;
	t->cur = i;
	return 0;
}

int rdmig_tracee_get_xstate(struct rdmig_tracee *t, void *buf, size_t cap, size_t *len)
{
	struct iovec iov = {buf, cap};
	int ret = tracee_ptrace(t, PTRACE_GETREGSET, (void *)(uintptr_t)NT_X86_XSTATE, &iov);

	if (ret)
		return ret;
	*len = iov.iov_len;
	return 0;
}

int rdmig_tracee_set_xstate(struct rdmig_tracee *t, const void *buf, size_t len)
{
	struct iovec iov = {(void *)(uintptr_t)buf, len};

	return tracee_ptrace(t, PTRACE_SETREGSET, (void *)(uintptr_t)NT_X86_XSTATE, &iov);
}

int rdmig_tracee_get_sigmask(struct rdmig_tracee *t, uint64_t *mask)
{
	if (t->dead)
		return -ESRCH;
	*mask = CUR(t)->thread_mask;
	return 0;
}

int rdmig_tracee_set_sigmask(struct rdmig_tracee *t, uint64_t mask)
{
	if (t->dead)
		return -ESRCH;
	/* like the kernel, never block SIGKILL or SIGSTOP */
	CUR(t)->thread_mask = mask & ~((1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1)));
	return 0;
}

/* Queue the signals suppressed at seize into the thread again. */
/* Queue si into the current thread by an injected rt_tgsigqueueinfo() (a
 * process may queue any siginfo to itself), so it is pending exactly as it was. */
static int tracee_queue_self(struct rdmig_tracee *t, const siginfo_t *si)
{
	uint64_t a;
	int ret = rdmig_tracee_scratch(t, sizeof(*si), &a);

	if (!ret)
		ret = rdmig_tracee_write(t, a, si, sizeof(*si));
	if (!ret)
		ret = rdmig_tracee_call(t, "rt_tgsigqueueinfo", NULL, SYS_rt_tgsigqueueinfo, t->pid,
		                        CUR(t)->tid, si->si_signo, (long)a, 0, 0);
	return ret;
}

static int tracee_requeue(struct rdmig_tracee *t)
{
	struct tracee_thread *th = CUR(t);
	int ret;

	for (int i = 0; i < th->npending; i++) {
		ret = tracee_queue_self(t, &th->pending[i]);
		if (ret) {
			pr_err("pid %d: signal %d taken at seize could not be queued again",
			       th->tid, th->pending[i].si_signo);
			return ret;
		}
	}
	th->npending = 0;
	return 0;
}

/* At release: queue the held SIGTRAPs into the thread again, as they were
 * (a process may queue any siginfo to itself). SIGTRAP is blocked first, so they
 * stay pending until the thread's own mask and registers are back, and the
 * calls go with PTRACE_SYSCALL, whose stops force no SIGTRAP (file comment). */
static int tracee_requeue_held(struct rdmig_tracee *t)
{
	struct tracee_thread *th = CUR(t);
	uint64_t all = ~0ull;
	int ret;

	if (!th->nheld)
		return 0;
	ret = tracee_ptrace(t, PTRACE_SETSIGMASK, (void *)sizeof(uint64_t), &all);
	th->trap_blocked = !ret;
	for (unsigned i = 0; !ret && i < th->nheld; i++)
		ret = tracee_queue_self(t, &th->held[i]);
	if (ret)
		pr_err("pid %d: a SIGTRAP sent to it while it was held could not be queued again",
		       th->tid);
	th->nheld = 0;
	return ret;
}

/* Wait for the interrupt stop after PTRACE_SEIZE + PTRACE_INTERRUPT. */
static int tracee_wait_interrupt(struct rdmig_tracee *t)
{
	struct tracee_thread *th = CUR(t);
	int status, ret;

	for (;;) {
		ret = tracee_wait(t, &status);
		if (ret)
			return ret;
		int sig = WSTOPSIG(status), event = (unsigned)status >> 16;

		if (event == PTRACE_EVENT_STOP)
			return 0;
		if (event) {
			pr_err("pid %d: unexpected ptrace event %d at seize", th->tid, event);
			return -EIO;
		}
		/* a signal-delivery-stop for a signal dequeued before the interrupt */
		if (sig == SIGSTOP) {
			th->stop_pending = true;
		} else if (sig == SIGTRAP) {
			/* queued again it would be delivered at our first call: held */
			ret = tracee_hold_trap(t);
			if (ret)
				return ret;
		} else {
			if (th->npending == TRACEE_MAX_PENDING) {
				pr_err("pid %d: too many signal-delivery-stops at seize", th->tid);
				return -EIO;
			}
			ret = tracee_ptrace(t, PTRACE_GETSIGINFO, NULL, &th->pending[th->npending]);
			if (ret)
				return ret;
			th->npending++;
			pr_info("pid %d: signal %d was being delivered at seize; queued again",
			        th->tid, sig);
		}
		ret = tracee_ptrace(t, PTRACE_CONT, NULL, NULL);
		if (ret)
			return ret;
	}
}

/* Room for one more thread record (t->th may move). */
static int tracee_grow(struct rdmig_tracee *t)
{
	if (t->nth == t->th_cap) {
		size_t cap = t->th_cap ? 2 * t->th_cap : 8;
		struct tracee_thread *a = realloc(t->th, cap * sizeof(*a));

		if (!a)
			return -ENOMEM;
		t->th = a;
		t->th_cap = cap;
	}
	memset(&t->th[t->nth], 0, sizeof(t->th[0]));
	return 0;
}

/* At the interrupt stop of the current thread: save its registers and mask,
 * block every signal but SIGTRAP, queue again what was being delivered. */
static int tracee_take_state(struct rdmig_tracee *t)
{
	struct tracee_thread *th = CUR(t);
	uint64_t all = ~(1ull << (SIGTRAP - 1)); /* but SIGTRAP: see the file comment */
	int ret;

	ret = tracee_ptrace(t, PTRACE_GETREGS, NULL, &th->saved);
	if (ret)
		return ret;
	th->regs_saved = true;
	ret = tracee_ptrace(t, PTRACE_GETSIGMASK, (void *)sizeof(uint64_t), &th->thread_mask);
	if (ret)
		return ret;
	ret = tracee_ptrace(t, PTRACE_SETSIGMASK, (void *)sizeof(uint64_t), &all);
	if (ret)
		return ret;
	th->mask_changed = true;
	return 0;
}

/* Seize, interrupt and wait for one more thread (t->cur is left on it).
 * 1: it exited before we got it (dropped); 0; -errno. */
static int tracee_seize_one(struct rdmig_tracee *t, pid_t tid)
{
	int ret = tracee_grow(t);

	if (ret)
		return ret;
	t->th[t->nth].tid = tid;
	t->cur = t->nth++;
	if (ptrace(PTRACE_SEIZE, tid, NULL, (void *)t->opts) < 0) {
		ret = -errno;
		t->nth--;
		t->cur = 0;
		if (ret == -ESRCH && tid != t->pid)
			return 1;
		pr_err("PTRACE_SEIZE of pid %d (thread %d) failed: %s", t->pid, tid,
		       strerror(-ret));
		return ret;
	}
	CUR(t)->seized = true;
	if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) < 0)
		return -errno;
	ret = tracee_wait_interrupt(t);
	if (ret == -ESRCH && tid != t->pid) {
		/* exited while being seized: a zombie already reaped by the wait */
		t->dead = false;
		t->nth--;
		t->cur = 0;
		return 1;
	}
	return ret;
}

static bool tracee_has(const struct rdmig_tracee *t, pid_t tid)
{
	for (size_t i = 0; i < t->nth; i++)
		if (t->th[i].tid == tid)
			return true;
	return false;
}

/* Seize every thread /proc/PID/task lists, until a pass finds none new. */
static int tracee_seize_rest(struct rdmig_tracee *t)
{
	char path[64];
	bool more = true;
	int ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", t->pid);
	while (more && !ret) {
		DIR *d = opendir(path);
		struct dirent *e;

		if (!d)
			return errno == ENOENT ? -ESRCH : -errno;
		more = false;
		while (!ret && (e = readdir(d))) {
			char *end;
			long tid = strtol(e->d_name, &end, 10);

			if (e->d_name[0] < '1' || e->d_name[0] > '9' || *end || tid <= 0 ||
			    tracee_has(t, (pid_t)tid))
				continue;
			ret = tracee_seize_one(t, (pid_t)tid);
			if (ret == 0)
				ret = tracee_take_state(t);
			if (ret == 1)
				ret = 0;
			more = true;
		}
		closedir(d);
	}
	t->cur = 0;
	return ret;
}

int rdmig_tracee_seize(pid_t pid, unsigned flags, struct rdmig_tracee **out)
{
	struct rdmig_tracee *t;
	char path[64];
	uint64_t vs = 0, ve = 0;
	int ret;

	*out = NULL;
	if (flags & ~RDMIG_TRACEE_EXITKILL)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->pid = pid;
	t->is_child = procfs_ppid(pid) == getpid();
	t->flags = flags;
	t->mem_fd = -1;
	t->opts = PTRACE_O_TRACESYSGOOD;
	if (flags & RDMIG_TRACEE_EXITKILL)
		t->opts |= PTRACE_O_EXITKILL;
	ret = tracee_seize_one(t, pid);
	if (ret) {
		if (!t->nth) {
			free(t->th);
			free(t);
			return ret;
		}
		goto out_detach;
	}
	ret = tracee_take_state(t);
	if (!ret)
		ret = tracee_seize_rest(t);
	if (ret)
		goto out_detach;
	t->trap_ignored = tracee_trap_ignored(pid);
	snprintf(path, sizeof(path), "/proc/%d/mem", pid);
	t->mem_fd = open(path, O_RDWR | O_CLOEXEC);
	if (t->mem_fd < 0) {
		ret = -errno;
		pr_err("opening %s failed: %s", path, strerror(-ret));
		goto out_detach;
	}
	ret = tracee_find_vdso(pid, &vs, &ve);
	if (!ret)
		ret = rdmig_tracee_find_syscall(t, vs, ve);
	if (ret) {
		pr_err("pid %d: no syscall instruction found in its [vdso]: %s", pid,
		       strerror(-ret));
		goto out_detach;
	}
	for (size_t i = 0; i < t->nth && !ret; i++) {
		t->cur = i;
		ret = tracee_requeue(t);
	}
	t->cur = 0;
	if (ret)
		goto out_detach;
	if (t->nth > 1)
		pr_info("pid %d: seized with %zu threads", pid, t->nth);
	*out = t;
	return 0;
out_detach:
	if (rdmig_tracee_release(t, true) < 0)
		pr_warn("pid %d: release after a failed seize failed", pid);
	return ret;
}

int rdmig_tracee_clone_thread(struct rdmig_tracee *t, unsigned long flags, unsigned *idx)
{
	long args[6] = {(long)flags, 0, 0, 0, 0, 0}, r = 0;
	pid_t tid;
	int ret, ret2;

	if (t->dead)
		return -ESRCH;
	ret = tracee_grow(t);
	if (ret)
		return ret;
	ret = tracee_ptrace(t, PTRACE_SETOPTIONS, NULL, (void *)(t->opts | PTRACE_O_TRACECLONE));
	if (ret)
		return ret;
	t->clone_tid = 0;
	/* No stack (the thread shares the caller's rsp until its registers are
	 * set, and never runs before that); no TLS, no tid pointers: set later. */
	ret = rdmig_tracee_syscall(t, SYS_clone, args, &r);
	ret2 = tracee_ptrace(t, PTRACE_SETOPTIONS, NULL, (void *)t->opts);
	if (!ret && r < 0)
		ret = (int)r;
	if (!ret && (!t->clone_tid || t->clone_tid != (pid_t)r)) {
		pr_err("pid %d: clone returned %ld, the clone event said %d", t->pid, r,
		       (int)t->clone_tid);
		ret = -EIO;
	}
	if (ret) {
		pr_err("pid %d: injected clone failed: %s", t->pid, strerror(-ret));
		return ret;
	}
	if (ret2)
		return ret2;
	tid = (pid_t)r;
	/* Auto-attached (seized, since we seized its parent): it stops with
	 * PTRACE_EVENT_STOP before its first user instruction. */
	size_t parent = t->cur;

	t->th[t->nth] = (struct tracee_thread){.tid = tid, .seized = true};
	t->cur = t->nth++;
	for (;;) {
		int status;

		ret = tracee_wait(t, &status);
		if (ret)
			break;
		if ((unsigned)status >> 16 == PTRACE_EVENT_STOP)
			break;
		pr_warn("pid %d: new thread %d stopped with status %#x; going on", t->pid, tid,
		        status);
		ret = tracee_ptrace(t, PTRACE_CONT, NULL, NULL);
		if (ret)
			break;
	}
	if (!ret) {
		/* its live mask is its parent's (all blocked); its own is the parent's own */
		ret = tracee_ptrace(t, PTRACE_GETREGS, NULL, &CUR(t)->saved);
		CUR(t)->regs_saved = !ret;
		CUR(t)->thread_mask = t->th[parent].thread_mask;
		CUR(t)->mask_changed = true;
		/* it inherited its parent's pinned affinity; its own is the parent's own */
		CUR(t)->pinned = t->th[parent].pinned;
		CUR(t)->cpus = t->th[parent].cpus;
	}
	*idx = (unsigned)t->cur;
	t->cur = parent;
	return ret;
}

/* Why: an injected call is two wake-ups (ours of the thread, its trap's of us).
 * Across CPUs each one is an IPI into an idle (virtual) CPU: 0.08-0.3 ms a call
 * here, against 0.02-0.03 ms when both stay on one CPU. Pinning only our side
 * does not hold: the scheduler moves the tracee to the idle CPU at each resume
 * (seen in a sched trace), so both sides are pinned, and both put back.
 * Measured at 256 MiB, 6 alternating runs: the destination's restore 4.5 -> 3.2
 * ms and the source's capture 3.4 -> 2.5 ms (medians).
 * The CPU is ours: a stopped thread moves there when it next wakes, for nothing,
 * where moving ourselves to its CPU took the migration thread (the capture's
 * injections 0.66 -> 0.42 ms, medians of 6 alternating runs). */
int rdmig_tracee_colocate(struct rdmig_tracee *t)
{
	cpu_set_t one;
	int cpu = sched_getcpu(), ret = 0;

	if (t->dead)
		return -ESRCH;
	if (t->colocated)
		return 0;
	if (cpu < 0)
		return -errno;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_getaffinity(0, sizeof(t->own_cpus), &t->own_cpus) < 0)
		return -errno;
	for (size_t i = 0; i < t->nth && !ret; i++) {
		struct tracee_thread *th = &t->th[i];

		if (!th->seized)
			continue;
		if (sched_getaffinity(th->tid, sizeof(th->cpus), &th->cpus) < 0 ||
		    sched_setaffinity(th->tid, sizeof(one), &one) < 0)
			ret = -errno;
		else
			th->pinned = true;
	}
	if (!ret && sched_setaffinity(0, sizeof(one), &one) < 0)
		ret = -errno;
	t->colocated = true; /* from here on uncolocate knows what to put back */
	if (ret) {
		(void)rdmig_tracee_uncolocate(t);
		return ret;
	}
	return 0;
}

int rdmig_tracee_uncolocate(struct rdmig_tracee *t)
{
	int ret = 0;

	if (!t->colocated)
		return 0;
	for (size_t i = 0; i < t->nth; i++) {
		struct tracee_thread *th = &t->th[i];

		if (!th->pinned)
			continue;
		/* a thread that is gone has no affinity left to mend */
		if (sched_setaffinity(th->tid, sizeof(th->cpus), &th->cpus) < 0 && errno != ESRCH &&
		    !ret)
			ret = -errno;
		th->pinned = false;
	}
	if (sched_setaffinity(0, sizeof(t->own_cpus), &t->own_cpus) < 0 && !ret)
		ret = -errno;
	t->colocated = false;
	if (ret)
		pr_warn("pid %d: putting CPU affinities back failed: %s", t->pid, strerror(-ret));
	return ret;
}

/* Move a thread left in a syscall-exit-stop back into an interrupt stop, so a
 * release restarts its interrupted syscall (see the file comment). */
static int tracee_back_to_interrupt(struct rdmig_tracee *t)
{
	int ret;

	ret = tracee_ptrace(t, PTRACE_SETREGS, NULL, &CUR(t)->saved);
	if (ret)
		return ret;
	ret = tracee_ptrace(t, PTRACE_INTERRUPT, NULL, NULL);
	if (ret)
		return ret;
	ret = tracee_run_until(t, PTRACE_CONT, -1, true);
	if (ret)
		return ret;
	CUR(t)->in_syscall_stop = false;
	return 0;
}

/* Put the current thread's registers and mask back (it stays stopped). */
static int tracee_restore_thread(struct rdmig_tracee *t)
{
	struct tracee_thread *th = CUR(t);
	int ret = 0, r;

	if (!th->seized)
		return 0;
	if (th->in_syscall_stop) {
		r = tracee_back_to_interrupt(t);
		if (r && !ret)
			ret = r;
	}
	if (th->regs_saved) {
		r = tracee_ptrace(t, PTRACE_SETREGS, NULL, &th->saved);
		if (r && !ret)
			ret = r;
	}
	if (th->mask_changed) {
		r = tracee_ptrace(t, PTRACE_SETSIGMASK, (void *)sizeof(uint64_t), &th->thread_mask);
		if (r && !ret)
			ret = r;
	}
	return ret;
}

/* A SIGTRAP held during the release's own last stops (after the held ones were
 * queued again): sent from outside once detached. Another process may only
 * queue a negative si_code: it arrives as SI_QUEUE with its sender's pid, uid
 * and value. */
static int tracee_send_held(pid_t pid, struct tracee_thread *th)
{
	int ret = 0;

	for (unsigned i = 0; i < th->nheld; i++) {
		siginfo_t si = th->held[i];

		if (si.si_code >= 0 || si.si_code == SI_TKILL)
			si.si_code = SI_QUEUE;
		if (syscall(SYS_rt_tgsigqueueinfo, pid, th->tid, SIGTRAP, &si) < 0 && !ret) {
			ret = -errno;
			pr_err("pid %d: a SIGTRAP held while it was stopped could not be sent "
			       "again: %s",
			       th->tid, strerror(-ret));
		}
	}
	th->nheld = 0;
	return ret;
}

int rdmig_tracee_held_signals(const struct rdmig_tracee *t, unsigned i, const siginfo_t **si,
                              unsigned *n)
{
	if (i >= t->nth)
		return -EINVAL;
	*si = t->th[i].held;
	*n = t->th[i].nheld;
	return 0;
}

static void tracee_free(struct rdmig_tracee *t)
{
	if (t->mem_fd >= 0)
		close(t->mem_fd);
	free(t->th);
	free(t->avoid);
	free(t);
}

int rdmig_tracee_release(struct rdmig_tracee *t, bool resume)
{
	bool stop = !resume;
	int ret = 0, r;

	if (!t)
		return 0;
	if (t->inflight) {
		long ignored;

		ret = tracee_syscall_end(t, &ignored); /* a call left running stops first */
	}
	if (t->dead) {
		ret = -ESRCH;
		goto out_free;
	}
	r = rdmig_tracee_uncolocate(t);
	if (r && !ret)
		ret = r;
	for (size_t i = 0; i < t->nth; i++) {
		t->cur = i;
		r = t->th[i].seized ? tracee_requeue(t) : 0; /* only when seize failed half-way */
		if (r && !ret)
			ret = r;
		r = t->th[i].seized ? tracee_requeue_held(t) : 0;
		if (r && !ret)
			ret = r;
	}
	t->cur = 0;
	if (t->nth && t->th[0].seized) {
		r = rdmig_tracee_scratch_unmap(t);
		if (r && !ret)
			ret = r;
	}
	for (size_t i = 0; i < t->nth; i++) {
		t->cur = i;
		r = tracee_restore_thread(t);
		if (r && !ret)
			ret = r;
		stop |= t->th[i].stop_pending;
	}
	if (stop && kill(t->pid, SIGSTOP) < 0) {
		r = -errno;
		if (!ret)
			ret = r;
	}
	/* the main thread last: until then no thread of the process runs its code
	 * while another one is still being put back */
	for (size_t n = t->nth; n > 0; n--) {
		struct tracee_thread *th = &t->th[n - 1];

		if (th->seized && ptrace(PTRACE_DETACH, th->tid, NULL, NULL) < 0) {
			r = -errno;
			pr_err("PTRACE_DETACH of pid %d (thread %d) failed: %s", t->pid, th->tid,
			       strerror(-r));
			if (!ret)
				ret = r;
		}
	}
	for (size_t i = 0; i < t->nth; i++) {
		r = tracee_send_held(t->pid, &t->th[i]);
		if (r && !ret)
			ret = r;
	}
out_free:
	if (t->colocated && sched_setaffinity(0, sizeof(t->own_cpus), &t->own_cpus) < 0)
		pr_warn("putting our CPU affinity back failed: %s", strerror(errno));
	tracee_free(t);
	return ret;
}

static void tracee_reap(pid_t tid)
{
	int status;

	for (;;) {
		pid_t r = waitpid(tid, &status, __WALL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || WIFEXITED(status) || WIFSIGNALED(status))
			break;
	}
}

void rdmig_tracee_kill(struct rdmig_tracee *t)
{
	if (!t)
		return;
	/* the tracee's affinity dies with it; ours is put back */
	if (t->colocated && sched_setaffinity(0, sizeof(t->own_cpus), &t->own_cpus) < 0)
		pr_warn("putting our CPU affinity back failed: %s", strerror(errno));
	if (!t->dead) {
		if (kill(t->pid, SIGKILL) < 0 && errno != ESRCH)
			pr_warn("killing pid %d failed: %s", t->pid, strerror(errno));
		/* the other threads first: the leader is reported only after them */
		for (size_t i = 1; i < t->nth; i++)
			if (t->th[i].seized)
				tracee_reap(t->th[i].tid);
		tracee_reap(t->pid);
	}
	tracee_free(t);
}
