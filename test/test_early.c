/*
 * The injected calls' answers asked at the tracking start (rdmig_capture_early,
 * src/capture_calls.c) and the watch that says whether they still hold
 * (src/callwatch.c), on real child processes:
 *   watch_counts        each call that changes a signal handler, brk, an
 *                       alternate stack or clear_child_tid, a new thread and a
 *                       signal taken are seen; calls that change none are not;
 *   early_matches_fresh a capture with the early answers equals one that asks
 *                       in the freeze, and says it used them;
 *   early_stale_*       a handler changed, a thread made, or a signal taken
 *                       after the early answers: the freeze asks again and the
 *                       image has the new state.
 * Needs root (perf tracepoint counters, ptrace), as the migration does; a
 * machine where the watch cannot open fails here, since the early path would
 * then never run.
 */
#include "helpers.h"

#include "callwatch.h"
#include "rdmig/capture.h"
#include "rdmig/tracee.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

static void handler_a(int sig)
{
	(void)sig;
}

static void handler_b(int sig)
{
	(void)sig;
}

static void *idle_thread(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static char g_altstack[65536];
static pthread_t g_thread;

/* The child: commands on fd 0, one byte each, an ack byte on fd 1 after each.
 * It sits in read() between them (read and write are calls the watch lets
 * pass). */
static void child_main(void)
{
	struct sigaction sa;
	stack_t ss = {.ss_sp = g_altstack, .ss_size = sizeof(g_altstack)};
	char c;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler_a;
	sa.sa_flags = SA_RESTART | SA_ONSTACK;
	if (sigaction(SIGUSR1, &sa, NULL) || sigaltstack(&ss, NULL))
		_exit(10);
	if (write(1, "r", 1) != 1)
		_exit(11);
	while (read(0, &c, 1) == 1) {
		switch (c) {
		case 'g': /* calls that change nothing asked */
			(void)syscall(SYS_getpid);
			(void)syscall(SYS_futex, &c, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
			usleep(1000);
			break;
		case 'h':
			sa.sa_handler = handler_b;
			if (sigaction(SIGUSR1, &sa, NULL))
				_exit(12);
			break;
		case 'a':
			ss.ss_size = sizeof(g_altstack) / 2;
			if (sigaltstack(&ss, NULL))
				_exit(13);
			break;
		case 'b':
			if (sbrk(4096) == (void *)-1)
				_exit(14);
			break;
		case 's':
			(void)syscall(SYS_set_tid_address, NULL);
			break;
		case 't':
			if (pthread_create(&g_thread, NULL, idle_thread, NULL))
				_exit(15);
			break;
		case 'k': /* taken by handler_a, delivered by the parent before */
			break;
		default:
			_exit(16);
		}
		if (write(1, "k", 1) != 1)
			_exit(17);
	}
	_exit(0);
}

struct kid {
	pid_t pid;
	int cmd, ack; /* ours */
};

static int kid_start(struct kid *k)
{
	int cmd[2], ack[2];
	char c;

	if (pipe(cmd) || pipe(ack))
		return -errno;
	k->pid = fork();
	if (k->pid < 0)
		return -errno;
	if (k->pid == 0) {
		if (dup2(cmd[0], 0) < 0 || dup2(ack[1], 1) < 0)
			_exit(9);
		syscall(SYS_close_range, 3, ~0u, 0); /* the capture refuses other pipes */
		child_main();
	}
	close(cmd[0]);
	close(ack[1]);
	k->cmd = cmd[1];
	k->ack = ack[0];
	return read(k->ack, &c, 1) == 1 && c == 'r' ? 0 : -EIO;
}

static int kid_do(struct kid *k, char c)
{
	char a;

	if (write(k->cmd, &c, 1) != 1 || read(k->ack, &a, 1) != 1 || a != 'k')
		return -EIO;
	return 0;
}

static int kid_end(struct kid *k)
{
	int st;

	close(k->cmd);
	close(k->ack);
	if (waitpid(k->pid, &st, 0) != k->pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void kill_kid(struct kid *k)
{
	kill(k->pid, SIGKILL);
	(void)kid_end(k);
}

static void watch_counts(void)
{
	/* command, whether the watch must see it */
	static const struct {
		char c;
		int seen;
		const char *what;
	} cases[] = {
	    {'g', 0, "getpid, futex, nanosleep"},
	    {'h', 1, "rt_sigaction"},
	    {'a', 1, "sigaltstack"},
	    {'b', 1, "brk"},
	    {'s', 1, "set_tid_address"},
	    {'t', 1, "a new thread"},
	    {'k', 1, "a signal taken"},
	};
	struct kid k;

	T_OK(kid_start(&k));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct rdmig_callwatch *w = NULL;
		int ret = rdmig_callwatch_open(&k.pid, 1, &w);

		T_CHECK(ret == 0, "the watch cannot open: %s", strerror(-ret));
		if (ret)
			break;
		T_CHECK(rdmig_callwatch_quiet(w) == 1, "%s: not quiet before", cases[i].what);
		if (cases[i].c == 'k')
			kill(k.pid, SIGUSR1);
		T_OK(kid_do(&k, cases[i].c));
		ret = rdmig_callwatch_quiet(w);
		T_CHECK(ret == !cases[i].seen, "%s: quiet %d", cases[i].what, ret);
		/* the mark starts it again */
		T_OK(rdmig_callwatch_mark(w));
		T_CHECK(rdmig_callwatch_quiet(w) == 1, "%s: not quiet after the mark",
		        cases[i].what);
		rdmig_callwatch_close(w);
	}
	T_CHECK(kid_end(&k) == 0, "child exit");
}

/* Seize k, ask early, let it run and do cmd (0: nothing), seize it again and
 * capture with the early answers into img; *used: whether they were used. */
static int capture_after(struct kid *k, char cmd, int sig_first, struct rdmig_image *img,
                         bool *used)
{
	struct rdmig_capture_early *e = NULL;
	struct rdmig_tracee *t = NULL;
	char why[256] = "";
	int ret;

	ret = rdmig_tracee_seize(k->pid, 0, &t);
	if (ret)
		return ret;
	ret = rdmig_capture_early_start(t, &e);
	if (!ret)
		ret = rdmig_capture_early_ask(e, t);
	if (rdmig_tracee_release(t, true) && !ret)
		ret = -EIO;
	t = NULL;
	if (!ret && sig_first)
		kill(k->pid, sig_first);
	if (!ret && cmd)
		ret = kid_do(k, cmd);
	if (!ret)
		ret = rdmig_tracee_seize(k->pid, 0, &t);
	if (!ret) {
		memset(img, 0, sizeof(*img));
		ret = rdmig_capture(t, img, &(struct rdmig_capture_known){.early = e}, why,
		                    sizeof(why));
		if (ret)
			fprintf(stderr, "  capture: %s %s\n", strerror(-ret), why);
		*used = rdmig_capture_early_used(e);
		if (rdmig_tracee_release(t, true) && !ret)
			ret = -EIO;
	}
	rdmig_capture_early_free(e);
	return ret;
}

static int capture_fresh(struct kid *k, struct rdmig_image *img)
{
	struct rdmig_tracee *t = NULL;
	char why[256] = "";
	int ret = rdmig_tracee_seize(k->pid, 0, &t);

	if (ret)
		return ret;
	memset(img, 0, sizeof(*img));
	ret = rdmig_capture(t, img, NULL, why, sizeof(why));
	if (rdmig_tracee_release(t, true) && !ret)
		ret = -EIO;
	return ret;
}

static void early_matches_fresh(void)
{
	struct rdmig_image a, b;
	bool used = false;
	struct kid k;

	T_OK(kid_start(&k));
	/* calls that change nothing asked, then one capture each way */
	T_OK(capture_after(&k, 'g', 0, &a, &used));
	T_CHECK(used, "the early answers were not used");
	T_OK(capture_fresh(&k, &b));
	T_CHECK(!memcmp(a.sigactions, b.sigactions, sizeof(a.sigactions)),
	        "signal actions differ from those asked in the freeze");
	T_CHECK(a.sigactions[SIGUSR1 - 1].handler == (uint64_t)(uintptr_t)handler_a,
	        "SIGUSR1's handler %#llx", (unsigned long long)a.sigactions[SIGUSR1 - 1].handler);
	T_CHECK(a.mm.brk == b.mm.brk && a.mm.brk != 0, "brk %#llx against %#llx",
	        (unsigned long long)a.mm.brk, (unsigned long long)b.mm.brk);
	T_CHECK(a.nthreads == 1 && b.nthreads == 1, "threads %u %u", a.nthreads, b.nthreads);
	if (a.nthreads == 1 && b.nthreads == 1) {
		T_CHECK(a.threads[0].altstack_sp == (uint64_t)(uintptr_t)g_altstack &&
		            a.threads[0].altstack_sp == b.threads[0].altstack_sp &&
		            a.threads[0].altstack_size == b.threads[0].altstack_size &&
		            a.threads[0].altstack_flags == b.threads[0].altstack_flags,
		        "alternate stack");
		T_CHECK(a.threads[0].clear_child_tid == b.threads[0].clear_child_tid,
		        "clear_child_tid %#llx against %#llx",
		        (unsigned long long)a.threads[0].clear_child_tid,
		        (unsigned long long)b.threads[0].clear_child_tid);
	}
	rdmig_image_free(&a);
	rdmig_image_free(&b);
	T_CHECK(kid_end(&k) == 0, "child exit");
}

/* After cmd (and sig), the early answers are not used and the image has what
 * the process has now. */
static void stale_case(char cmd, int sig, const char *what)
{
	struct rdmig_image img;
	bool used = true;
	struct kid k;

	if (kid_start(&k)) {
		T_CHECK(0, "child");
		return;
	}
	int ret = capture_after(&k, cmd, sig, &img, &used);

	T_CHECK(ret == 0, "%s: capture %s", what, strerror(-ret));
	if (ret) {
		kill_kid(&k);
		return;
	}
	T_CHECK(!used, "%s: the early answers were used", what);
	if (cmd == 'h')
		T_CHECK(img.sigactions[SIGUSR1 - 1].handler == (uint64_t)(uintptr_t)handler_b,
		        "the handler set after the early answers is not in the image");
	if (cmd == 'a')
		T_CHECK(img.threads[0].altstack_size == sizeof(g_altstack) / 2,
		        "the alternate stack set after the early answers is not in the image");
	if (cmd == 't')
		T_CHECK(img.nthreads == 2, "threads %u", img.nthreads);
	rdmig_image_free(&img);
	if (cmd == 't')
		kill_kid(&k); /* its thread never ends */
	else
		T_CHECK(kid_end(&k) == 0, "child exit");
}

static void early_stale_handler(void)
{
	stale_case('h', 0, "rt_sigaction");
}

static void early_stale_altstack(void)
{
	stale_case('a', 0, "sigaltstack");
}

static void early_stale_thread(void)
{
	stale_case('t', 0, "a new thread");
}

static void early_stale_signal(void)
{
	stale_case('k', SIGUSR1, "a signal taken");
}

int main(int argc, char **argv)
{
	t_state.only = argc > 1 ? argv[1] : NULL;
	T_RUN(watch_counts);
	T_RUN(early_matches_fresh);
	T_RUN(early_stale_handler);
	T_RUN(early_stale_altstack);
	T_RUN(early_stale_thread);
	T_RUN(early_stale_signal);
	return t_finish();
}
