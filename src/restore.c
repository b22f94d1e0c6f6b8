/*
 * Restore on the destination: the husk, and the order in which the image is
 * built into it (the steps themselves are in restore_mm.c and restore_task.c).
 *
 * Order, and why:
 *   seize the husk (tracee.c keeps every signal blocked while seized: a signal
 *   delivered between two injected calls would push a frame onto the stack);
 *   empty it (rseq unregistered first: the kernel writes into that area);
 *   move [vvar]/[vvar_vclock]/[vdso] (injection then runs from the moved vdso);
 *   PR_SET_MM_MAP with the new exe before any image vma exists: the kernel
 *   refuses a new exe_file while the old exe is mapped, and the image often maps
 *   the very same file (a daemon migrating its own kind);
 *   vmas; MADV_NOHUGEPAGE on anonymous ones, before anything writes there (under
 *   THP "always" one write fills a whole 2 MiB block with zeros the pager would
 *   never replace); the pages sent eagerly (private file pages, tid caches, rseq
 *   areas); rlimits (before descriptors: an fd number above the
 *   daemon's RLIMIT_NOFILE needs the image's limit); per-task settings,
 *   descriptors, handlers; the userfaultfd; pending signals (blocked, so queued
 *   only); credentials (every earlier step may need root); scratch unmapped;
 *   rseq registered by the very last injected call (registration makes the
 *   kernel write cpu_id into the area on every return to user mode, so the
 *   area's page came eagerly: written by the kernel, it would otherwise be
 *   present, zero around the area, and hide the real page from the pager);
 *   registers, xstate and the image's signal mask set in the stop.
 *
 * Threads (restore_task.c, rst_threads): after the credentials (they are per
 * thread in the kernel and a clone inherits its parent's), each further thread
 * is created by clone(CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM) injected in the
 * main thread and held from its first instruction (PTRACE_O_TRACECLONE); its
 * own robust list, clear_child_tid, alternate stack, name and pending signals
 * are set by calls injected IN it (each of those calls concerns the calling
 * thread only; a queued siginfo with si_code >= 0 may only be queued by the
 * thread itself). New threads get new tids: every thread's tid cache (glibc's
 * struct pthread tid, see capture.c; its page came eagerly with the COW pages)
 * is rewritten through /proc/PID/mem. Then, per thread, rseq is registered by
 * the last call injected in it, and its registers (with the same restart
 * rewrite as the main thread), xstate and mask are set. The restore's error
 * path kills the husk with every thread in it.
 */
#define LOG_SUBSYS "restore"

#include "restore_int.h"

#include "procfs.h"

#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

_Static_assert(sizeof(struct user_regs_struct) == RDMIG_IMG_NREGS * sizeof(uint64_t),
               "image registers are a struct user_regs_struct");

/* Kernel-internal restart codes a thread stopped inside a syscall shows in rax. */
#define K_ERESTARTSYS 512
#define K_ERESTARTNOINTR 513
#define K_ERESTARTNOHAND 514
#define K_ERESTART_RESTARTBLOCK 516

struct rdmig_husk {
	pid_t pid;
	struct rdmig_tracee *t;  /* seized and emptied by rdmig_husk_prepare, or NULL */
	struct rdmig_image *pre; /* the layout rdmig_husk_prebuild built, or NULL */
	/* the userfaultfd the prebuild made in the husk (its number there) and our
	 * copy of it; -1 when none */
	int uffd_in_proc, uffd;
	bool stdio_open[3]; /* the daemon's 0-2 at the fork: the husk's own */
};

static void free_pre(struct rdmig_image *pre)
{
	if (pre) {
		rdmig_image_free(pre);
		free(pre);
	}
}

int rst_fail(struct rst *r, int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pr_err("pid %d: %s", (int)r->pid, msg);
	if (r->whylen && !r->why[0])
		snprintf(r->why, r->whylen, "%s", msg);
	return err < 0 ? err : -EIO;
}

int rst_call(struct rst *r, const char *what, long *ret, long nr, long a0, long a1, long a2,
             long a3, long a4, long a5)
{
	int err = rdmig_tracee_call(r->t, what, ret, nr, a0, a1, a2, a3, a4, a5);

	if (err)
		return rst_fail(r, err, "%s in the process being restored failed: %s", what,
		                strerror(-err));
	return 0;
}

int rst_calls(struct rst *r, struct rdmig_tracee_call *c, unsigned n, unsigned *failed)
{
	unsigned at = n;
	int err = rdmig_tracee_calls(r->t, c, n, &at);

	if (failed)
		*failed = at;
	if (err && !failed)
		return rst_fail(r, err, "%s in the process being restored failed: %s",
		                at < n ? c[at].what : "a call", strerror(-err));
	return err;
}

int rst_to_scratch(struct rst *r, const void *buf, size_t len, uint64_t *addr)
{
	int err = rdmig_tracee_scratch(r->t, len, addr);

	if (!err)
		err = rdmig_tracee_write(r->t, *addr, buf, len);
	if (err)
		return rst_fail(r, err, "could not use scratch memory in the husk: %s",
		                strerror(-err));
	return 0;
}

/* Open path inside the process; *fd is its number there. */
int rst_open(struct rst *r, const char *path, int flags, int mode, int *fd)
{
	uint64_t at;
	long ret;
	int err;

	if ((err = rst_to_scratch(r, path, strlen(path) + 1, &at)))
		return err;
	err = rdmig_tracee_call(r->t, "openat", &ret, SYS_openat, AT_FDCWD, (long)at, flags, mode,
	                        0, 0);
	if (err)
		return rst_fail(r, err, "cannot open %s in the process being restored: %s", path,
		                strerror(-err));
	*fd = (int)ret;
	return 0;
}

void rst_close(struct rst *r, int fd)
{
	if (fd >= 0 && rdmig_tracee_call(r->t, "close", NULL, SYS_close, fd, 0, 0, 0, 0, 0))
		pr_warn("pid %d: could not close fd %d in the process", (int)r->pid, fd);
}

int rdmig_husk_spawn(struct rdmig_husk **out)
{
	struct rdmig_husk *h = calloc(1, sizeof(*h));
	pid_t parent = getpid();

	if (!h)
		return -ENOMEM;
	h->uffd = h->uffd_in_proc = -1;
	for (int fd = 0; fd <= 2; fd++)
		h->stdio_open[fd] = fcntl(fd, F_GETFD) >= 0;
	h->pid = fork();
	if (h->pid < 0) {
		int err = -errno;

		pr_err("fork of the husk failed: %s", strerror(errno));
		free(h);
		return err;
	}
	if (h->pid == 0) {
		/* The husk: nothing but waiting to be seized. It never returns into
		 * the daemon's code, so the daemon's stdio buffers are never flushed
		 * twice. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		/* Every action all-zero (SIG_DFL, no flags, no restorer: what the raw
		 * syscall sets, unlike signal()), so the restore sets only the image's
		 * non-default ones. */
		for (int sig = 1; sig <= 64; sig++) {
			static const uint64_t zero[4];

			if (sig != SIGKILL && sig != SIGSTOP)
				(void)syscall(SYS_rt_sigaction, sig, zero, NULL, 8);
		}
		for (;;)
			pause();
	}
	*out = h;
	return 0;
}

pid_t rdmig_husk_pid(const struct rdmig_husk *h)
{
	return h ? h->pid : -1;
}

int rdmig_husk_prepare(struct rdmig_husk *h)
{
	char why[512];
	struct rst r = {.why = why, .whylen = sizeof(why), .uffd_in_proc = -1, .uffd = -1};
	int err;

	if (!h || h->pid <= 0 || h->t)
		return -EINVAL;
	r.pid = h->pid;
	err = rdmig_tracee_seize(r.pid, RDMIG_TRACEE_EXITKILL, &r.t);
	if (err) {
		pr_err("could not seize the husk (pid %d): %s", (int)r.pid, strerror(-err));
		return err;
	}
	err = rst_clean_husk(&r);
	if (err) {
		rdmig_tracee_kill(r.t); /* and reaped: nothing left to destroy but h */
		h->pid = -1;
		return err;
	}
	h->t = r.t;
	return 0;
}

int rdmig_husk_prebuild(struct rdmig_husk *h, struct rdmig_image *layout, char *why, size_t whylen)
{
	static const struct rdmig_restore_opts no_opts;
	char ownwhy[512];
	struct rst r = {
	    .img = layout,
	    .o = &no_opts,
	    .why = why && whylen ? why : ownwhy,
	    .whylen = why && whylen ? whylen : sizeof(ownwhy),
	    .uffd_in_proc = -1,
	    .uffd = -1,
	};
	struct rdmig_laps laps;
	int err, cerr;

	r.why[0] = '\0';
	if (!h || !h->t || h->pre || !layout) {
		if (layout)
			rdmig_image_free(layout);
		return rst_fail(&r, -EINVAL, "no emptied husk to prebuild");
	}
	h->pre = malloc(sizeof(*h->pre));
	if (!h->pre) {
		rdmig_image_free(layout);
		return rst_fail(&r, -ENOMEM, "out of memory");
	}
	*h->pre = *layout; /* taken */
	memset(layout, 0, sizeof(*layout));
	r.img = h->pre;
	r.t = h->t;
	r.pid = h->pid;
	rdmig_laps_start(&laps);
	err = rdmig_tracee_colocate(r.t);
	if (err)
		pr_info("pid %d: injected calls not kept on one CPU: %s", (int)r.pid,
		        strerror(-err));
	/* the fresh build's order (top of this file), up to the pages; the scratch
	 * area stays (the build's avoid step moves it if the image needs its place) */
	if (!(err = rst_move_specials(&r)) && !(err = rst_avoid_layout(&r)) &&
	    !(err = rst_set_mm(&r)) && !(err = rst_map_vmas(&r)) && !(err = rst_nohugepage(&r)))
		err = rst_prewrite_pages(&r);
	/* Its userfaultfd too (two stops and two calls of ours, 0.27 ms of the
	 * restore here): it belongs to the husk's mm, which the build keeps. Only
	 * a speed-up: without it the build makes one. */
	if (!err && (cerr = rst_uffd_make(&r)) < 0) {
		pr_info("pid %d: no userfaultfd made ahead (%s): the restore makes it", (int)r.pid,
		        strerror(-cerr));
		r.why[0] = '\0'; /* not the prebuild's failure */
	}
	h->uffd = r.uffd;
	h->uffd_in_proc = r.uffd >= 0 ? r.uffd_in_proc : -1;
	(void)rdmig_tracee_uncolocate(r.t);
	if (!err) {
		rdmig_laps_mark(&laps, "prebuilt");
		pr_info("pid %d: husk prebuilt with %u vmas (ms): %s", (int)r.pid, h->pre->nvmas,
		        laps.line);
		return 0;
	}
	if (!r.why[0])
		rst_fail(&r, err, "prebuilding the husk failed: %s", strerror(-err));
	free_pre(h->pre);
	h->pre = NULL;
	r.img = NULL;
	if (h->uffd >= 0)
		close(h->uffd); /* the husk's own copy goes with the cleaning */
	h->uffd = h->uffd_in_proc = -1;
	/* back to an empty husk, or none */
	cerr = rst_clean_husk(&r);
	if (cerr) {
		pr_err("pid %d: the husk could not be emptied again: %s", (int)r.pid,
		       strerror(-cerr));
		rdmig_tracee_kill(h->t);
		h->t = NULL;
		h->pid = -1;
	}
	return err;
}

void rdmig_husk_destroy(struct rdmig_husk *h)
{
	if (!h)
		return;
	free_pre(h->pre);
	if (h->uffd >= 0)
		close(h->uffd);
	if (h->t) {
		rdmig_tracee_kill(h->t);
	} else if (h->pid > 0) {
		kill(h->pid, SIGKILL);
		while (waitpid(h->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	free(h);
}

/* A thread's registers made ready to run: a syscall interrupted by the freeze
 * restarts (or returns EINTR where its restart block cannot cross hosts). */
static void prepare_regs(const struct rdmig_img_thread *th, struct user_regs_struct *regs)
{
	memcpy(regs, th->regs, sizeof(*regs));
	if ((long)regs->orig_rax >= 0) {
		switch ((long)regs->rax) {
		case -K_ERESTARTSYS:
		case -K_ERESTARTNOINTR:
		case -K_ERESTARTNOHAND:
			regs->rax = regs->orig_rax;
			regs->rip -= 2; /* back onto the 2-byte syscall instruction */
			break;
		case -K_ERESTART_RESTARTBLOCK:
			regs->rax = (unsigned long long)-EINTR;
			break;
		default:
			break;
		}
	}
	regs->orig_rax = (unsigned long long)-1;
}

static int set_thread_state(struct rst *r, unsigned i)
{
	const struct rdmig_img_thread *th = &r->img->threads[i];
	struct user_regs_struct regs;
	int err;

	if ((err = rdmig_tracee_select(r->t, i)))
		return rst_fail(r, err, "thread %u of the image is not held", i);
	prepare_regs(th, &regs);
	if (th->xstate_len) {
		err = rdmig_tracee_set_xstate(r->t, th->xstate, th->xstate_len);
		if (err)
			return rst_fail(
			    r, err,
			    "the FPU/vector state (%u bytes of xstate) could not be set: "
			    "%s; the destination CPU may lack a feature the source "
			    "used",
			    th->xstate_len, strerror(-err));
	}
	err = rdmig_tracee_set_sigmask(r->t, th->sigmask);
	if (err)
		return rst_fail(r, err, "the signal mask could not be set: %s", strerror(-err));
	rdmig_tracee_set_saved_regs(r->t, &regs);
	return 0;
}

/* The steps in their order (see the top of this file), each timed: the restore
 * is inside the downtime, and -v shows where it goes. */
enum { FRESH = 1, PREBUILT = 2, BOTH = 3 }; /* which builds run a step */

static const struct rst_step {
	const char *name;
	int (*fn)(struct rst *r);
	int when;
} rst_steps[] = {
    {"clean husk", rst_clean_husk, FRESH},
    {"vdso/vvar", rst_move_specials, FRESH},
    {"layout", rst_avoid_layout, BOTH}, /* the image's ranges, kept free of scratch */
    {"relayout", rst_relayout, PREBUILT},
    {"mm", rst_set_mm, BOTH},
    {"vmas", rst_map_vmas, FRESH},
    {"nohugepage", rst_nohugepage, FRESH},
    {"eager pages", rst_eager_pages, BOTH},
    {"rlimits", rst_rlimits, BOTH},
    {"task", rst_task_misc, BOTH},
    {"fds", rst_fds, BOTH},
    {"sigactions", rst_sigactions, BOTH},
    {"uffd", rst_uffd, BOTH},
    {"pending signals", rst_pending_signals, BOTH},
    {"creds", rst_creds, BOTH},
    {"threads", rst_threads, BOTH},
};

/* From step `first` on: 1 for a husk rdmig_husk_prepare() emptied already; a
 * prebuilt husk (r->pre) runs the PREBUILT steps instead of the FRESH ones. */
static int build_steps(struct rst *r, size_t first)
{
	int when = r->pre ? PREBUILT : FRESH;
	struct rdmig_laps laps;
	int err;

	/* Signals stay blocked while seized (tracee.c), so nothing is delivered
	 * between injected calls; the image's mask is set last. */
	rdmig_laps_start(&laps);
	for (size_t i = first; i < sizeof(rst_steps) / sizeof(rst_steps[0]); i++) {
		if (!(rst_steps[i].when & when))
			continue;
		err = rst_steps[i].fn(r);
		if (err)
			return err;
		rdmig_laps_mark(&laps, rst_steps[i].name);
	}
	err = rdmig_tracee_scratch_unmap(r->t);
	if (err)
		return rst_fail(r, err, "could not unmap the scratch area: %s", strerror(-err));
	for (unsigned i = 0; i < r->img->nthreads; i++) {
		if ((err = rst_rseq(r, i)) || (err = set_thread_state(r, i)))
			return err;
	}
	rdmig_laps_mark(&laps, "registers");
	pr_info("pid %d: restore steps (ms): %s", (int)r->pid, laps.line);
	return rdmig_tracee_select(r->t, 0);
}

int rdmig_restore_build(struct rdmig_husk *h, const struct rdmig_image *img,
                        const struct rdmig_restore_opts *o, struct rdmig_restored *out, char *why,
                        size_t whylen)
{
	static const struct rdmig_restore_opts no_opts;
	char ownwhy[512];
	struct rst r = {
	    .img = img,
	    .o = o ? o : &no_opts,
	    .why = why && whylen ? why : ownwhy,
	    .whylen = why && whylen ? whylen : sizeof(ownwhy),
	    .uffd_in_proc = -1,
	    .uffd = -1,
	};
	struct rdmig_image *pre;
	int pre_uffd, pre_uffd_in_proc;
	bool prepared;
	int err;

	r.why[0] = '\0';
	out->pid = -1;
	out->uffd = -1;
	out->uffd_in_proc = -1;
	out->tracee = NULL;
	if (!h || h->pid <= 0) {
		free(h);
		return rst_fail(&r, -EINVAL, "no husk to restore into (it could not be emptied)");
	}
	r.pid = h->pid;
	r.t = h->t;
	pre = h->pre;
	pre_uffd = h->uffd;
	pre_uffd_in_proc = h->uffd_in_proc;
	memcpy(r.stdio_open, h->stdio_open, sizeof(r.stdio_open));
	prepared = h->t != NULL;
	h->pid = -1; /* consumed: from here on the husk is r's (or out's) */
	free(h);

	err = prepared ? 0 : rdmig_tracee_seize(r.pid, RDMIG_TRACEE_EXITKILL, &r.t);
	if (err) {
		rst_fail(&r, err, "could not seize the husk (pid %d): %s", (int)r.pid,
		         strerror(-err));
		kill(r.pid, SIGKILL);
		while (waitpid(r.pid, NULL, 0) < 0 && errno == EINTR)
			;
		return err;
	}
	/* Injected calls on one CPU with ours (tracee.c says why); the threads get
	 * the husk's affinity (ours at its fork) back before they ever run. */
	err = rdmig_tracee_colocate(r.t);
	if (err)
		pr_info("pid %d: injected calls not kept on one CPU: %s", (int)r.pid,
		        strerror(-err));
	err = 0;
	if (pre && rst_can_relayout(pre, img)) {
		r.pre = pre;
		r.uffd = pre_uffd;
		r.uffd_in_proc = pre_uffd_in_proc;
		pre_uffd = -1;
	} else if (pre) {
		/* the exe or a special mapping moved: start again from an empty husk */
		pr_info("pid %d: the process's exe or special mappings changed since the "
		        "prebuild: building from an empty husk",
		        (int)r.pid);
		err = rst_clean_husk(&r);
	}
	if (pre_uffd >= 0)
		close(pre_uffd); /* the husk's copy went with the cleaning */
	if (!err)
		err = build_steps(&r, prepared ? 1 : 0);
	free(r.kept);
	r.kept = NULL;
	r.pre = NULL;
	free_pre(pre);
	if (!err)
		(void)rdmig_tracee_uncolocate(r.t); /* a failure is logged: a speed-up's */
	if (err) {
		if (r.uffd >= 0)
			close(r.uffd);
		rdmig_tracee_kill(r.t);
		return err;
	}
	out->pid = r.pid;
	out->uffd = r.uffd;
	out->uffd_in_proc = r.uffd_in_proc;
	out->tracee = r.t;
	pr_info("pid %d: restored from source pid %d (%u vmas, %u fds, %u threads), stopped",
	        (int)r.pid, (int)img->pid, img->nvmas, img->nfds, img->nthreads);
	return 0;
}

int rdmig_restore_write(struct rdmig_restored *r, uint64_t addr, const void *buf, size_t len)
{
	if (!r->tracee)
		return -ESRCH;
	return rdmig_tracee_write(r->tracee, addr, buf, len);
}

int rdmig_restore_resume(struct rdmig_restored *r)
{
	int err;

	if (!r->tracee)
		return -EINVAL;
	err = rdmig_tracee_release(r->tracee, true);
	r->tracee = NULL;
	if (err)
		pr_err("pid %d: resume failed: %s", (int)r->pid, strerror(-err));
	return err;
}

/* Is pid exiting or gone? Its descriptors then close with it. */
static bool exiting(pid_t pid)
{
	struct procfs_stat st;

	return procfs_stat(pid, &st) < 0 || st.state == 'Z' || st.state == 'X' ||
	       (st.flags & PROCFS_PF_EXITING);
}

int rdmig_restore_drop_uffd(struct rdmig_restored *r)
{
	struct rdmig_tracee *t;
	int err, rerr;

	if (r->uffd_in_proc < 0)
		return 0;
	/* A process that is exiting (its last pages often come home as it exits,
	 * its mm going first) cannot be seized (EPERM) and needs nothing closed.
	 * Asked before and, for one that starts exiting meanwhile, after. */
	if (exiting(r->pid) || ((err = rdmig_tracee_seize(r->pid, 0, &t)) && exiting(r->pid))) {
		pr_debug("pid %d is exiting: its userfaultfd closes with it", (int)r->pid);
		r->uffd_in_proc = -1;
		return 0;
	}
	if (err) {
		pr_err("pid %d: could not seize to close its userfaultfd: %s", (int)r->pid,
		       strerror(-err));
		return err;
	}
	err = rdmig_tracee_call(t, "close(userfaultfd)", NULL, SYS_close, r->uffd_in_proc, 0, 0, 0,
	                        0, 0);
	rerr = rdmig_tracee_release(t, true);
	if (!err)
		r->uffd_in_proc = -1;
	return err ? err : rerr;
}

void rdmig_restore_abort(struct rdmig_restored *r)
{
	if (r->tracee) {
		rdmig_tracee_kill(r->tracee);
		r->tracee = NULL;
		r->pid = -1;
	}
	if (r->uffd >= 0) {
		close(r->uffd);
		r->uffd = -1;
	}
}
