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
 * blockable signal is blocked with PTRACE_SETSIGMASK, so no handler runs and no
 * signal-delivery-stop interrupts an injection; the thread's own mask is kept
 * here (get/set_sigmask read and change that copy) and put back at release.
 * A SIGSTOP (not blockable) that arrives during an injection is suppressed and
 * sent again at release.
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
 */
#define LOG_SUBSYS "tracee"
#include "rdmig/tracee.h"

#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
/* Room kept free around a scratch area placed among avoid ranges. */
#define TRACEE_SCRATCH_GUARD (1ul << 20)
#define TRACEE_SCRATCH_LOW (1ul << 30)
#define TRACEE_MAX_PENDING 4

struct tracee_range {
	uint64_t start, end;
};

struct rdmig_tracee {
	pid_t pid;
	unsigned flags;
	int mem_fd; /* /proc/PID/mem, O_RDWR */
	bool dead;
	bool in_syscall_stop; /* left in a syscall-exit-stop by an injection */
	bool stop_pending;    /* a SIGSTOP was suppressed: send it again at release */
	bool regs_saved;      /* saved holds the registers of the interrupt stop */
	bool mask_changed;    /* the live mask is "all blocked", thread_mask is its own */
	uint64_t thread_mask;
	struct user_regs_struct saved;
	uint64_t syscall_ip; /* 0: none found */
	uint64_t scratch_addr;
	size_t scratch_len;
	struct tracee_range *avoid;
	size_t navoid, avoid_cap;
	siginfo_t pending[TRACEE_MAX_PENDING]; /* suppressed at seize, to queue again */
	int npending;
};

static int tracee_wait(struct rdmig_tracee *t, int *status)
{
	for (;;) {
		pid_t r = waitpid(t->pid, status, __WALL);

		if (r == t->pid)
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
		pr_err("pid %d died while traced (%s %d)", t->pid,
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
	if (ptrace((enum __ptrace_request)req, t->pid, addr, data) < 0)
		return -errno;
	return 0;
}

/* Resume with req (PTRACE_SYSCALL or PTRACE_CONT) until a stop that want()
 * accepts: stopped at status 'want_sig' when event is 0, or at an event stop
 * when want_event. Stops on the way are handled per the file comment. */
static int tracee_run_until(struct rdmig_tracee *t, int req, int want_sig, bool want_event)
{
	int status, ret;

	ret = tracee_ptrace(t, req, NULL, NULL);
	if (ret)
		return ret;
	for (;;) {
		ret = tracee_wait(t, &status);
		if (ret)
			return ret;
		int sig = WSTOPSIG(status), event = (unsigned)status >> 16;

		if (event == PTRACE_EVENT_STOP && want_event)
			return 0;
		if (!event && sig == want_sig)
			return 0;
		if (!event && sig != (SIGTRAP | 0x80)) {
			/* Only an unblockable signal can get here. */
			if (sig == SIGSTOP)
				t->stop_pending = true;
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

int rdmig_tracee_syscall(struct rdmig_tracee *t, long nr, const long args[6], long *ret)
{
	struct user_regs_struct r = t->saved;
	int err;

	if (t->dead)
		return -ESRCH;
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
	t->in_syscall_stop = true; /* from here on the registers need restoring */
	/* One single step over the syscall instruction: the kernel reports the step
	 * at the syscall's exit, one stop where PTRACE_SYSCALL takes two (entry and
	 * exit). Injections are most of the freeze's and the restore's cost. */
	err = tracee_run_until(t, PTRACE_SINGLESTEP, SIGTRAP, false);
	if (err)
		return err;
	err = tracee_ptrace(t, PTRACE_GETREGS, NULL, &r);
	if (err)
		return err;
	if (r.rip != t->syscall_ip + 2) {
		pr_err("pid %d: injected syscall %ld ended at rip %#llx, not after %#" PRIx64,
		       t->pid, nr, r.rip, t->syscall_ip);
		return -EIO;
	}
	*ret = (long)r.rax;
	/* The saved registers go back once, at release (or the next injection sets
	 * its own): not after every call. */
	return 0;
}

int rdmig_tracee_call(struct rdmig_tracee *t, const char *what, long *ret, long nr, long a0,
                      long a1, long a2, long a3, long a4, long a5)
{
	long args[6] = {a0, a1, a2, a3, a4, a5}, r;
	int err = rdmig_tracee_syscall(t, nr, args, &r);

	if (err) {
		pr_err("pid %d: injecting %s failed: %s", t->pid, what, strerror(-err));
		return err;
	}
	if (r < 0 && r >= -4095) {
		pr_err("pid %d: injected %s failed: %s", t->pid, what, strerror((int)-r));
		return (int)r;
	}
	if (ret)
		*ret = r;
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

void rdmig_tracee_scratch_avoid(struct rdmig_tracee *t, uint64_t start, uint64_t end)
{
	if (start >= end)
		return;
	if (t->navoid == t->avoid_cap) {
		size_t cap = t->avoid_cap ? 2 * t->avoid_cap : 16;
		struct tracee_range *a = realloc(t->avoid, cap * sizeof(*a));

		if (!a) {
			/* An avoid range lost would let scratch land in the target's
			 * layout: make placement fail instead. */
			pr_err("out of memory recording an avoid range");
			t->navoid = SIZE_MAX;
			return;
		}
		t->avoid = a;
		t->avoid_cap = cap;
	}
	if (t->navoid == SIZE_MAX)
		return;
	t->avoid[t->navoid++] = (struct tracee_range){start, end};
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
	                        (long)t->scratch_len, 0, 0, 0, 0);
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
		ret = tracee_pick_scratch_addr(t, len, &hint);
		if (ret) {
			pr_err("pid %d: no room for %zu bytes of scratch outside the avoid ranges",
			       t->pid, len);
			return ret;
		}
		flags |= MAP_FIXED_NOREPLACE;
	}
	ret = rdmig_tracee_call(t, "mmap(scratch)", &r, SYS_mmap, (long)hint, (long)len,
	                        PROT_READ | PROT_WRITE, flags, -1, 0);
	if (ret)
		return ret;
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
	return &t->saved;
}

void rdmig_tracee_set_saved_regs(struct rdmig_tracee *t, const struct user_regs_struct *regs)
{
	t->saved = *regs;
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
	*mask = t->thread_mask;
	return 0;
}

int rdmig_tracee_set_sigmask(struct rdmig_tracee *t, uint64_t mask)
{
	if (t->dead)
		return -ESRCH;
	/* like the kernel, never block SIGKILL or SIGSTOP */
	t->thread_mask = mask & ~((1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1)));
	return 0;
}

/* Queue the signals suppressed at seize into the thread again. */
static int tracee_requeue(struct rdmig_tracee *t)
{
	uint64_t a;
	int ret;

	for (int i = 0; i < t->npending; i++) {
		siginfo_t *si = &t->pending[i];

		ret = rdmig_tracee_scratch(t, sizeof(*si), &a);
		if (!ret)
			ret = rdmig_tracee_write(t, a, si, sizeof(*si));
		if (!ret)
			ret = rdmig_tracee_call(t, "rt_tgsigqueueinfo", NULL, SYS_rt_tgsigqueueinfo,
			                        t->pid, t->pid, si->si_signo, (long)a, 0, 0);
		if (ret) {
			pr_err("pid %d: signal %d taken at seize could not be queued again", t->pid,
			       si->si_signo);
			return ret;
		}
	}
	t->npending = 0;
	return 0;
}

/* Wait for the interrupt stop after PTRACE_SEIZE + PTRACE_INTERRUPT. */
static int tracee_wait_interrupt(struct rdmig_tracee *t)
{
	int status, ret;

	for (;;) {
		ret = tracee_wait(t, &status);
		if (ret)
			return ret;
		int sig = WSTOPSIG(status), event = (unsigned)status >> 16;

		if (event == PTRACE_EVENT_STOP)
			return 0;
		if (event) {
			pr_err("pid %d: unexpected ptrace event %d at seize", t->pid, event);
			return -EIO;
		}
		/* a signal-delivery-stop for a signal dequeued before the interrupt */
		if (sig == SIGSTOP) {
			t->stop_pending = true;
		} else {
			if (t->npending == TRACEE_MAX_PENDING) {
				pr_err("pid %d: too many signal-delivery-stops at seize", t->pid);
				return -EIO;
			}
			ret = tracee_ptrace(t, PTRACE_GETSIGINFO, NULL, &t->pending[t->npending]);
			if (ret)
				return ret;
			t->npending++;
			pr_info("pid %d: signal %d was being delivered at seize; queued again",
			        t->pid, sig);
		}
		ret = tracee_ptrace(t, PTRACE_CONT, NULL, NULL);
		if (ret)
			return ret;
	}
}

int rdmig_tracee_seize(pid_t pid, unsigned flags, struct rdmig_tracee **out)
{
	struct rdmig_tracee *t;
	char path[64];
	long opts = PTRACE_O_TRACESYSGOOD;
	uint64_t vs = 0, ve = 0, all = ~0ull;
	int ret;

	*out = NULL;
	if (flags & ~RDMIG_TRACEE_EXITKILL)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->pid = pid;
	t->flags = flags;
	t->mem_fd = -1;
	if (flags & RDMIG_TRACEE_EXITKILL)
		opts |= PTRACE_O_EXITKILL;
	if (ptrace(PTRACE_SEIZE, pid, NULL, (void *)opts) < 0) {
		ret = -errno;
		pr_err("PTRACE_SEIZE of pid %d failed: %s", pid, strerror(-ret));
		goto out_free;
	}
	if (ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) < 0) {
		ret = -errno;
		goto out_detach;
	}
	ret = tracee_wait_interrupt(t);
	if (ret)
		goto out_detach;
	ret = tracee_ptrace(t, PTRACE_GETREGS, NULL, &t->saved);
	if (ret)
		goto out_detach;
	t->regs_saved = true;
	ret = tracee_ptrace(t, PTRACE_GETSIGMASK, (void *)sizeof(uint64_t), &t->thread_mask);
	if (ret)
		goto out_detach;
	ret = tracee_ptrace(t, PTRACE_SETSIGMASK, (void *)sizeof(uint64_t), &all);
	if (ret)
		goto out_detach;
	t->mask_changed = true;
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
	ret = tracee_requeue(t);
	if (ret)
		goto out_detach;
	*out = t;
	return 0;
out_detach:
	if (rdmig_tracee_release(t, true) < 0)
		pr_warn("pid %d: release after a failed seize failed", pid);
	return ret;
out_free:
	free(t);
	return ret;
}

/* Move a thread left in a syscall-exit-stop back into an interrupt stop, so a
 * release restarts its interrupted syscall (see the file comment). */
static int tracee_back_to_interrupt(struct rdmig_tracee *t)
{
	int ret;

	ret = tracee_ptrace(t, PTRACE_SETREGS, NULL, &t->saved);
	if (ret)
		return ret;
	ret = tracee_ptrace(t, PTRACE_INTERRUPT, NULL, NULL);
	if (ret)
		return ret;
	ret = tracee_run_until(t, PTRACE_CONT, -1, true);
	if (ret)
		return ret;
	t->in_syscall_stop = false;
	return 0;
}

int rdmig_tracee_release(struct rdmig_tracee *t, bool resume)
{
	int ret = 0, r;

	if (!t)
		return 0;
	if (t->dead) {
		ret = -ESRCH;
		goto out_free;
	}
	r = tracee_requeue(t); /* only when seize failed half-way */
	if (r && !ret)
		ret = r;
	r = rdmig_tracee_scratch_unmap(t);
	if (r && !ret)
		ret = r;
	if (t->in_syscall_stop) {
		r = tracee_back_to_interrupt(t);
		if (r && !ret)
			ret = r;
	}
	if (t->regs_saved) {
		r = tracee_ptrace(t, PTRACE_SETREGS, NULL, &t->saved);
		if (r && !ret)
			ret = r;
	}
	if (t->mask_changed) {
		r = tracee_ptrace(t, PTRACE_SETSIGMASK, (void *)sizeof(uint64_t), &t->thread_mask);
		if (r && !ret)
			ret = r;
	}
	if ((!resume || t->stop_pending) && kill(t->pid, SIGSTOP) < 0) {
		r = -errno;
		if (!ret)
			ret = r;
	}
	if (ptrace(PTRACE_DETACH, t->pid, NULL, NULL) < 0) {
		r = -errno;
		pr_err("PTRACE_DETACH of pid %d failed: %s", t->pid, strerror(-r));
		if (!ret)
			ret = r;
	}
out_free:
	if (t->mem_fd >= 0)
		close(t->mem_fd);
	free(t->avoid);
	free(t);
	return ret;
}

void rdmig_tracee_kill(struct rdmig_tracee *t)
{
	int status;

	if (!t)
		return;
	if (!t->dead) {
		if (kill(t->pid, SIGKILL) < 0 && errno != ESRCH)
			pr_warn("killing pid %d failed: %s", t->pid, strerror(errno));
		for (;;) {
			pid_t r = waitpid(t->pid, &status, __WALL);

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0 || WIFEXITED(status) || WIFSIGNALED(status))
				break;
		}
	}
	if (t->mem_fd >= 0)
		close(t->mem_fd);
	free(t->avoid);
	free(t);
}
