/*
 * The capture's injected calls (capture_calls.h), and their early version.
 *
 * Why early. Inside the freeze, an injected call makes the frozen thread
 * return to user mode, and the first such return is slow on a shadow-paging
 * hypervisor (capture.c's file comment): 1-2.5 ms for a 256 MiB-1 GiB process
 * in sched traces here, and with the injections themselves (~0.3 ms) the
 * largest part of the freeze after the page walk. None of what they read
 * changes unless the process makes one of a few calls (or takes a signal), so
 * the source asks once at the tracking start's stop, which injects calls
 * already, and watches from then on (callwatch.h). At the freeze, if the
 * watch saw nothing, the thread list is the same and /proc's SigCgt | SigIgn
 * too, those answers are used and nothing is injected; otherwise the freeze
 * asks again, as before.
 */
#define LOG_SUBSYS "capture"
#include "capture_calls.h"

#include "callwatch.h"
#include "procfs.h"
#include "rdmig/log.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define KSIGACTION_SIZE 32u /* handler, flags, restorer, mask */
#define SCRATCH_SIGACT 0u
#define SCRATCH_ALTSTACK (RDMIG_IMG_NSIG * KSIGACTION_SIZE)
#define SCRATCH_TIDADDR (SCRATCH_ALTSTACK + 24u)
#define SCRATCH_LEN (SCRATCH_TIDADDR + 8u)

struct rdmig_capture_early {
	struct capture_calls c;
	uint64_t set_sigs;
	struct rdmig_callwatch *watch;
	bool used;
};

void capture_calls_free(struct capture_calls *c)
{
	free(c->threads);
	memset(c, 0, sizeof(*c));
}

int capture_calls_ask(struct rdmig_tracee *t, uint64_t set_sigs, struct capture_calls *c)
{
	uint8_t buf[SCRATCH_LEN];
	uint64_t s;
	long brk;
	int ret, ret2;
	/* Injections cost: ask only about signals with a handler or ignored, and
	 * SIGCHLD, whose flags matter even at SIG_DFL. The others are SIG_DFL
	 * with no flags: left zero. */
	uint64_t ask = set_sigs | (1ull << (SIGCHLD - 1));

	memset(c, 0, sizeof(*c));
	c->nthreads = rdmig_tracee_nthreads(t);
	c->threads = calloc(c->nthreads ? c->nthreads : 1, sizeof(*c->threads));
	if (!c->threads)
		return -ENOMEM;
	ret = rdmig_tracee_scratch(t, SCRATCH_LEN, &s);
	if (ret)
		return ret;
	memset(buf, 0, sizeof(buf));
	ret = rdmig_tracee_write(t, s, buf, sizeof(buf));
	for (unsigned sig = 1; !ret && sig <= RDMIG_IMG_NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP || !(ask >> (sig - 1) & 1))
			continue;
		ret = rdmig_tracee_call(t, "rt_sigaction", NULL, SYS_rt_sigaction, sig, 0,
		                        (long)(s + SCRATCH_SIGACT + (sig - 1) * KSIGACTION_SIZE), 8,
		                        0, 0);
	}
	if (!ret)
		ret = rdmig_tracee_call(t, "brk(0)", &brk, SYS_brk, 0, 0, 0, 0, 0, 0);
	if (!ret)
		ret = rdmig_tracee_read(t, s, buf, sizeof(buf));
	/* the alternate stack and clear_child_tid of each thread, asked in it */
	for (unsigned i = 0; !ret && i < c->nthreads; i++) {
		uint8_t tb[SCRATCH_LEN - SCRATCH_ALTSTACK];
		struct capture_calls_thread *th = &c->threads[i];

		th->tid = rdmig_tracee_tid(t, i);
		ret = rdmig_tracee_select(t, i);
		if (!ret)
			ret = rdmig_tracee_call(t, "sigaltstack", NULL, SYS_sigaltstack, 0,
			                        (long)(s + SCRATCH_ALTSTACK), 0, 0, 0, 0);
		if (!ret)
			ret = rdmig_tracee_call(t, "prctl(PR_GET_TID_ADDRESS)", NULL, SYS_prctl,
			                        PR_GET_TID_ADDRESS, (long)(s + SCRATCH_TIDADDR), 0,
			                        0, 0, 0);
		if (!ret)
			ret = rdmig_tracee_read(t, s + SCRATCH_ALTSTACK, tb, sizeof(tb));
		if (ret)
			break;
		/* stack_t: ss_sp u64, ss_flags i32 (+4 padding), ss_size u64 */
		th->altstack_sp = capture_le64(tb);
		th->altstack_flags = (uint32_t)capture_le64(tb + 8);
		th->altstack_size = capture_le64(tb + 16);
		th->clear_child_tid = capture_le64(tb + SCRATCH_TIDADDR - SCRATCH_ALTSTACK);
	}
	if (rdmig_tracee_select(t, 0) && !ret)
		ret = -EIO;
	ret2 = rdmig_tracee_scratch_unmap(t);
	if (ret)
		return ret;
	if (ret2)
		return ret2;
	for (unsigned i = 0; i < RDMIG_IMG_NSIG; i++) {
		const uint8_t *p = buf + SCRATCH_SIGACT + i * KSIGACTION_SIZE;

		c->sigactions[i] = (struct rdmig_img_sigaction){
		    .handler = capture_le64(p),
		    .flags = capture_le64(p + 8),
		    .restorer = capture_le64(p + 16),
		    .mask = capture_le64(p + 24),
		};
	}
	c->brk = (uint64_t)brk;
	return 0;
}

/* Thread tid of c; at i first: the tracee lists threads in /proc's order at
 * each seize, so it is nearly always there (a search per thread would be
 * quadratic inside the freeze, for up to 1024 threads). */
static const struct capture_calls_thread *find_thread(const struct capture_calls *c, unsigned i,
                                                      int32_t tid)
{
	if (i < c->nthreads && c->threads[i].tid == tid)
		return &c->threads[i];
	for (unsigned k = 0; k < c->nthreads; k++)
		if (c->threads[k].tid == tid)
			return &c->threads[k];
	return NULL;
}

int capture_calls_apply(const struct capture_calls *c, struct rdmig_image *img)
{
	for (unsigned i = 0; i < img->nthreads; i++) {
		struct rdmig_img_thread *th = &img->threads[i];
		const struct capture_calls_thread *ct = find_thread(c, i, th->tid);

		if (!ct)
			return -ESRCH;
		th->altstack_sp = ct->altstack_sp;
		th->altstack_flags = ct->altstack_flags;
		th->altstack_size = ct->altstack_size;
		th->clear_child_tid = ct->clear_child_tid;
	}
	memcpy(img->sigactions, c->sigactions, sizeof(img->sigactions));
	img->mm.brk = c->brk;
	return 0;
}

int rdmig_capture_early_start(struct rdmig_tracee *t, struct rdmig_capture_early **out)
{
	unsigned n = rdmig_tracee_nthreads(t);
	struct rdmig_capture_early *e;
	pid_t *tids;
	int ret;

	*out = NULL;
	e = calloc(1, sizeof(*e));
	tids = calloc(n ? n : 1, sizeof(*tids));
	if (!e || !tids) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (unsigned i = 0; i < n; i++)
		tids[i] = rdmig_tracee_tid(t, i);
	ret = rdmig_callwatch_open(tids, n, &e->watch);
	if (ret)
		goto out_free;
	free(tids);
	*out = e;
	return 0;
out_free:
	free(tids);
	rdmig_capture_early_free(e);
	return ret;
}

int rdmig_capture_early_ask(struct rdmig_capture_early *e, struct rdmig_tracee *t)
{
	struct procfs_status sta;
	int ret;

	ret = procfs_status(rdmig_tracee_pid(t), &sta);
	if (ret)
		return ret;
	e->set_sigs = sta.sig_cgt | sta.sig_ign;
	procfs_status_free(&sta);
	ret = capture_calls_ask(t, e->set_sigs, &e->c);
	/* the injections made the very calls the watch counts: it starts after
	 * them, the threads still stopped */
	if (!ret)
		ret = rdmig_callwatch_mark(e->watch);
	if (ret) {
		/* answers half asked are never used */
		rdmig_callwatch_close(e->watch);
		e->watch = NULL;
	}
	return ret;
}

void rdmig_capture_early_free(struct rdmig_capture_early *e)
{
	if (!e)
		return;
	rdmig_callwatch_close(e->watch);
	capture_calls_free(&e->c);
	free(e);
}

bool rdmig_capture_early_used(const struct rdmig_capture_early *e)
{
	return e && e->used;
}

bool rdmig_capture_early_brk(const struct rdmig_capture_early *e, uint64_t *brk)
{
	if (!e || !e->c.nthreads)
		return false;
	*brk = e->c.brk;
	return true;
}

const struct capture_calls *capture_early_valid(struct rdmig_capture_early *e,
                                                const struct rdmig_tracee *t)
{
	pid_t pid = rdmig_tracee_pid(t);
	unsigned n = rdmig_tracee_nthreads(t);
	int quiet;

	e->used = false;
	if (!e->watch)
		return NULL;
	if (n != e->c.nthreads) {
		pr_info("pid %d: %u threads now, %u at the tracking start: its handlers and "
		        "stacks are asked again",
		        (int)pid, n, e->c.nthreads);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++)
		if (!find_thread(&e->c, i, rdmig_tracee_tid(t, i))) {
			pr_info("pid %d: thread %d is new: its handlers and stacks are asked again",
			        (int)pid, (int)rdmig_tracee_tid(t, i));
			return NULL;
		}
	quiet = rdmig_callwatch_quiet(e->watch);
	if (quiet != 1) {
		pr_info("pid %d: %s since the tracking start: its handlers and stacks are asked "
		        "again",
		        (int)pid,
		        quiet == 0 ? "it made a call that may change them or took a signal"
		                   : "the watch on its calls cannot be read");
		return NULL;
	}
	return &e->c;
}

bool capture_early_sigs_match(struct rdmig_capture_early *e, uint64_t set_sigs)
{
	if (set_sigs != e->set_sigs) {
		pr_info("its signals with a handler changed since the tracking start: asked again");
		return false;
	}
	e->used = true;
	return true;
}
