/*
 * Tests of ptrace driving (src/tracee.c) and capture (src/capture.c) on real
 * forked processes: syscall injection, tracee memory, scratch, release with the
 * thread's blocking calls undisturbed; a capture checked field by field against
 * what the child set up; and the refusals of rdmig_capture_check.
 */
#include "helpers.h"

#include "rdmig/capture.h"
#include "rdmig/precopy.h"
#include "rdmig/tracee.h"

#include "../src/pagescan.h"
#include "../src/procfs.h"

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

/* Shared with forked children: the same addresses in parent and child. */
static volatile uint64_t g_counter;
static volatile uint64_t g_cmd;

/* Read exactly len bytes from fd within timeout_ms; 0 or -1. */
static int read_full(int fd, void *buf, size_t len, int timeout_ms)
{
	size_t done = 0;

	while (done < len) {
		struct pollfd p = {fd, POLLIN, 0};

		if (poll(&p, 1, timeout_ms) != 1)
			return -1;
		ssize_t n = read(fd, (char *)buf + done, len - done);

		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

/* waitpid with a deadline; the exit status, or -1 (child killed on timeout). */
static int wait_exit(pid_t pid, int timeout_ms)
{
	int status;

	for (int i = 0; i < timeout_ms; i++) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static char proc_state(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return '?';
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);

	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

static int tracer_of(pid_t pid)
{
	char path[64], line[256];
	int tracer = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "TracerPid: %d", &tracer) == 1)
			break;
	fclose(f);
	return tracer;
}

/* A child that counts and reports its counter through a pipe; exits with
 * g_cmd's value once that is set. */
static pid_t spawn_counter(int *rfd)
{
	int p[2];

	if (pipe(p))
		return -1;
	pid_t pid = fork();

	if (pid == 0) {
		close(p[0]);
		for (;;) {
			g_counter++;
			if (g_cmd)
				_exit((int)g_cmd);
			if (!(g_counter % 200000)) {
				uint64_t v = g_counter;

				if (write(p[1], &v, sizeof(v)) != sizeof(v))
					_exit(99);
			}
		}
	}
	close(p[1]);
	*rfd = p[0];
	return pid;
}

static void drain(int fd, uint64_t *last)
{
	uint64_t v;

	while (read_full(fd, &v, sizeof(v), 0) == 0)
		*last = v;
}

/* A counter child, its first value read, seized: its pid (<= 0: no child; *t
 * NULL: not seized, the caller kills it). */
static pid_t seize_counter(int *rfd, uint64_t *first, struct rdmig_tracee **t)
{
	pid_t pid = spawn_counter(rfd);

	T_CHECK(pid > 0, "fork");
	if (pid <= 0)
		return pid;
	T_CHECK(read_full(*rfd, first, sizeof(*first), 5000) == 0, "first counter");
	T_OK(rdmig_tracee_seize(pid, 0, t));
	return pid;
}

static void tracee_inject_loop(void)
{
	struct rdmig_tracee *t = NULL;
	int rfd = -1;
	uint64_t before = 0, after = 0, v = 0;
	pid_t pid = seize_counter(&rfd, &before, &t);
	long r;

	if (pid <= 0)
		return;
	if (!t)
		goto out_kill;
	T_CHECK(rdmig_tracee_pid(t) == pid, "pid");
	T_CHECK(proc_state(pid) == 't', "state %c while seized", proc_state(pid));

	/* getpid runs in the child */
	T_OK(rdmig_tracee_call(t, "getpid", &r, SYS_getpid, 0, 0, 0, 0, 0, 0));
	T_CHECK(r == pid, "getpid %ld, child %d", r, pid);
	/* an error comes back as -errno */
	T_CHECK(rdmig_tracee_call(t, "close(-1)", NULL, SYS_close, -1, 0, 0, 0, 0, 0) == -EBADF,
	        "close(-1)");
	/* in two halves: nothing else is driven while the call runs */
	r = 0;
	T_OK(rdmig_tracee_call_begin(t, "getpid", SYS_getpid, 0, 0, 0, 0, 0, 0));
	T_CHECK(rdmig_tracee_call(t, "getppid", NULL, SYS_getppid, 0, 0, 0, 0, 0, 0) == -EBUSY,
	        "a second call while one runs");
	T_CHECK(rdmig_tracee_select(t, 0) == -EBUSY, "select while a call runs");
	T_OK(rdmig_tracee_call_end(t, "getpid", &r));
	T_CHECK(r == pid, "getpid in two halves %ld, child %d", r, pid);
	T_CHECK(rdmig_tracee_call_end(t, "getpid", &r) == -EINVAL, "end without a call");
	T_OK(rdmig_tracee_call_begin(t, "close(-1)", SYS_close, -1, 0, 0, 0, 0, 0));
	T_CHECK(rdmig_tracee_call_end(t, "close(-1)", NULL) == -EBADF, "close(-1) in two halves");

	/* mmap / munmap, then memory through /proc/PID/mem */
	T_OK(rdmig_tracee_call(t, "mmap", &r, SYS_mmap, 0, 8192, PROT_READ,
	                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
	T_CHECK(r > 0 && !(r & 4095), "mmap %#lx", r);
	if (r > 0) {
		char buf[16] = "written by test", back[16] = {0};

		/* /proc/PID/mem writes even a read-only mapping */
		T_OK(rdmig_tracee_write(t, (uint64_t)r + 4000, buf, sizeof(buf)));
		T_OK(rdmig_tracee_read(t, (uint64_t)r + 4000, back, sizeof(back)));
		T_CHECK(!memcmp(buf, back, sizeof(buf)), "read back");
		T_OK(rdmig_tracee_call(t, "munmap", NULL, SYS_munmap, r, 8192, 0, 0, 0, 0));
		T_CHECK(rdmig_tracee_read(t, (uint64_t)r, back, 1) == -EFAULT, "unmapped read");
	}

	/* the child's own counter, at the same address as ours */
	T_OK(rdmig_tracee_read(t, (uint64_t)(uintptr_t)&g_counter, &v, sizeof(v)));
	T_CHECK(v >= before, "counter %lu >= %lu", (unsigned long)v, (unsigned long)before);

	/* scratch, plain and away from avoid ranges */
	uint64_t a = 0, b = 0;

	T_OK(rdmig_tracee_scratch(t, 100, &a));
	T_OK(rdmig_tracee_scratch(t, 200, &b));
	T_CHECK(a && a == b, "scratch reused %#lx %#lx", (unsigned long)a, (unsigned long)b);
	T_OK(rdmig_tracee_scratch_unmap(t));
	T_OK(rdmig_tracee_scratch_avoid(t, 1ull << 30, 1ull << 34));
	T_OK(rdmig_tracee_scratch(t, 300000, &a));
	T_CHECK(a >= (1ull << 34) && !(a & 4095), "scratch at %#lx", (unsigned long)a);
	T_OK(rdmig_tracee_write(t, a, "x", 1));
	{
		/* a range avoided later, over the scratch area: the area moves away */
		uint64_t was = a, c = 0;

		T_OK(rdmig_tracee_scratch_avoid(t, was, was + 4096));
		T_OK(rdmig_tracee_scratch(t, 300000, &c));
		T_CHECK(c && (c + 300000 <= was || c >= was + 4096),
		        "scratch at %#lx, over the range avoided at %#lx", (unsigned long)c,
		        (unsigned long)was);
	}
	T_CHECK(rdmig_tracee_scratch(t, (2u << 20), &a) == -EINVAL, "scratch over 1 MiB");

	/* released with a call left running: it is waited for, the child goes on */
	T_OK(rdmig_tracee_call_begin(t, "getpid", SYS_getpid, 0, 0, 0, 0, 0, 0));
	T_OK(rdmig_tracee_release(t, true)); /* unmaps the scratch itself */
	t = NULL;
	drain(rfd, &before);
	T_CHECK(read_full(rfd, &after, sizeof(after), 5000) == 0, "counter after release");
	T_CHECK(after > before, "counter continues: %lu then %lu", (unsigned long)before,
	        (unsigned long)after);

	/* release without resume leaves it stopped; SIGCONT lets it go on */
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		T_OK(rdmig_tracee_release(t, false));
		t = NULL;
		usleep(50000);
		T_CHECK(proc_state(pid) == 'T', "state %c after release(!resume)", proc_state(pid));
		drain(rfd, &before);
		kill(pid, SIGCONT);
		T_CHECK(read_full(rfd, &after, sizeof(after), 5000) == 0 && after > before,
		        "counter after SIGCONT");
	}

	/* a write into its memory changes what it does: exit with 42 */
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		uint64_t cmd = 42;

		T_OK(rdmig_tracee_write(t, (uint64_t)(uintptr_t)&g_cmd, &cmd, sizeof(cmd)));
		T_OK(rdmig_tracee_release(t, true));
		t = NULL;
	}
	T_CHECK(wait_exit(pid, 5000) == 42, "exit status 42");
	pid = -1;
out_kill:
	rdmig_tracee_kill(t);
	if (pid > 0)
		(void)wait_exit(pid, 0);
	close(rfd);
}

static volatile sig_atomic_t g_trap_code = 1000, g_trap_pid;

static void trap_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	g_trap_code = si->si_code;
	g_trap_pid = si->si_pid;
}

/* A child whose SIGTRAP action is `how` (0: SIG_IGN, 1: a handler): reports
 * through rfd 'c' when the action changed, 'T' with si_code and si_pid when the
 * handler ran; exits 0 on a byte on its stdin-like pipe. */
static pid_t spawn_trapper(int how, int *rfd, int *wfd)
{
	int up[2], down[2];

	if (pipe(up) || pipe(down))
		return -1;
	pid_t pid = fork();

	if (pid == 0) {
		struct sigaction sa = {0}, now;

		close(up[0]);
		close(down[1]);
		fcntl(down[0], F_SETFL, O_NONBLOCK);
		if (how) {
			sa.sa_sigaction = trap_handler;
			sa.sa_flags = SA_SIGINFO;
		} else {
			sa.sa_handler = SIG_IGN;
		}
		if (sigaction(SIGTRAP, &sa, NULL))
			_exit(9);
		if (write(up[1], "r", 1) != 1)
			_exit(9);
		for (;;) {
			char c;

			usleep(1000);
			sigaction(SIGTRAP, NULL, &now);
			if (how ? now.sa_sigaction != trap_handler : now.sa_handler != SIG_IGN) {
				if (write(up[1], "c", 1) != 1)
					_exit(9);
				_exit(1);
			}
			if (g_trap_code != 1000) {
				int rep[2] = {g_trap_code, g_trap_pid};

				if (write(up[1], "T", 1) != 1 ||
				    write(up[1], rep, sizeof(rep)) != sizeof(rep))
					_exit(9);
				g_trap_code = 1000;
			}
			if (read(down[0], &c, 1) == 1)
				_exit(0);
		}
	}
	close(up[1]);
	close(down[0]);
	*rfd = up[0];
	*wfd = down[1];
	return pid;
}

/* Injected calls leave a SIGTRAP handler and an ignored SIGTRAP as they were
 * (the kernel resets a blocked or ignored action when it forces the step's
 * SIGTRAP); a SIGTRAP sent while the process is held is kept and delivered,
 * with its sender, after the release. */
static void tracee_keeps_sigtrap(void)
{
	for (int how = 0; how <= 1; how++) {
		struct rdmig_tracee *t = NULL;
		int rfd = -1, wfd = -1;
		char c = 0;
		long r = 0;
		pid_t pid = spawn_trapper(how, &rfd, &wfd);

		T_CHECK(pid > 0, "fork");
		if (pid <= 0)
			return;
		T_CHECK(read_full(rfd, &c, 1, 5000) == 0 && c == 'r', "child ready");
		T_OK(rdmig_tracee_seize(pid, 0, &t));
		if (t) {
			const siginfo_t *held = NULL;
			unsigned n = 9;

			if (how)
				T_OK(kill(pid, SIGTRAP)); /* while held: kept for after */
			T_OK(rdmig_tracee_call(t, "getpid", &r, SYS_getpid, 0, 0, 0, 0, 0, 0));
			T_CHECK(r == pid, "getpid %ld", r);
			T_OK(rdmig_tracee_call(t, "getppid", &r, SYS_getppid, 0, 0, 0, 0, 0, 0));
			{
				/* a batch stops on an int3 (a forced SIGTRAP) where
				 * SIGTRAP is handled, and goes one by one where ignored */
				struct rdmig_tracee_call b[3] = {
				    {.what = "getpid", .nr = SYS_getpid},
				    {.what = "getppid", .nr = SYS_getppid},
				    {.what = "getpid", .nr = SYS_getpid},
				};
				unsigned failed = 9;

				T_OK(rdmig_tracee_calls(t, b, 3, &failed));
				T_CHECK(failed == 3 && b[0].ret == pid && b[1].ret == getpid() &&
				            b[2].ret == pid,
				        "batch: failed %u, %ld %ld %ld", failed, b[0].ret, b[1].ret,
				        b[2].ret);
			}
			T_OK(rdmig_tracee_held_signals(t, 0, &held, &n));
			T_CHECK(n == (unsigned)how && (!n || (held[0].si_signo == SIGTRAP &&
			                                      held[0].si_code == SI_USER &&
			                                      held[0].si_pid == getpid())),
			        "%s: %u SIGTRAPs held", how ? "handler" : "ignored", n);
			T_OK(rdmig_tracee_release(t, true));
		}
		if (how) {
			int rep[2] = {0, 0};

			T_CHECK(read_full(rfd, &c, 1, 5000) == 0 && c == 'T' &&
			            read_full(rfd, rep, sizeof(rep), 5000) == 0,
			        "the held SIGTRAP reached the handler (got '%c')", c);
			T_CHECK(rep[0] == SI_USER && rep[1] == getpid(), "si_code %d si_pid %d",
			        rep[0], rep[1]);
		}
		T_CHECK(write(wfd, "q", 1) == 1, "tell the child to exit");
		T_CHECK(wait_exit(pid, 5000) == 0, "%s: SIGTRAP's action kept (child exit)",
		        how ? "handler" : "ignored");
		close(rfd);
		close(wfd);
	}
}

static bool sig_ignored(pid_t pid, int sig)
{
	return t_proc_status((int)pid, "SigIgn", 16, 0) >> (sig - 1) & 1;
}

/* Calls in one resume (rdmig_tracee_calls): results in order, the first
 * failure stops the rest, more than one batch's worth, state changed as the
 * calls say, and the process goes on after the release as before. */
static void tracee_batch(void)
{
	struct rdmig_tracee *t = NULL;
	int rfd = -1;
	uint64_t before = 0, after = 0;
	pid_t pid = seize_counter(&rfd, &before, &t);

	if (pid <= 0)
		return;
	if (!t)
		goto out_kill;
	{
		struct rdmig_tracee_call b[4] = {
		    {.what = "getpid", .nr = SYS_getpid},
		    {.what = "umask", .nr = SYS_umask, .a = {0027}},
		    {.what = "umask", .nr = SYS_umask, .a = {0077}},
		    {.what = "mmap",
		     .nr = SYS_mmap,
		     .a = {0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0}},
		};
		unsigned failed = 0;

		T_OK(rdmig_tracee_calls(t, b, 4, &failed));
		T_CHECK(failed == 4, "failed %u of 4", failed);
		T_CHECK(b[0].ret == pid, "getpid %ld, child %d", b[0].ret, pid);
		T_CHECK(b[2].ret == 0027, "the second umask saw the first's: %lo", b[2].ret);
		T_CHECK(b[3].ret > 0 && !(b[3].ret & 4095), "mmap %#lx", b[3].ret);
		if (b[3].ret > 0) {
			char back = 1;

			T_OK(rdmig_tracee_read(t, (uint64_t)b[3].ret, &back, 1));
			T_CHECK(back == 0, "the batch's mapping reads zero");
		}
	}
	{
		/* the first failure ends the batch; what follows is not run */
		struct rdmig_tracee_call b[3] = {
		    {.what = "umask", .nr = SYS_umask, .a = {0022}},
		    {.what = "close(-1)", .nr = SYS_close, .a = {-1}},
		    {.what = "umask", .nr = SYS_umask, .a = {0}, .ret = 12345},
		};
		unsigned failed = 0;

		T_CHECK(rdmig_tracee_calls(t, b, 3, &failed) == -EBADF,
		        "close(-1) fails the batch");
		T_CHECK(failed == 1 && b[0].ret == 0077 && b[1].ret == -EBADF && b[2].ret == 12345,
		        "failed %u, rets %lo %ld %ld", failed, b[0].ret, b[1].ret, b[2].ret);
	}
	{
		/* more than one area's worth: the calls go in several resumes */
		struct rdmig_tracee_call b[150];
		unsigned failed = 0, bad = 0;

		for (unsigned i = 0; i < 150; i++)
			b[i] = (struct rdmig_tracee_call){.what = "getppid", .nr = SYS_getppid};
		T_OK(rdmig_tracee_calls(t, b, 150, &failed));
		for (unsigned i = 0; i < 150; i++)
			bad += b[i].ret != getpid();
		T_CHECK(failed == 150 && !bad, "150 calls: failed %u, %u wrong", failed, bad);
	}
	{
		/* SIG_IGN for SIGTRAP set inside a batch: the batch's int3 must not
		 * reset it (that call goes alone, and the batches after it go one
		 * by one) */
		uint64_t ign[4] = {1 /* SIG_IGN */, 0, 0, 0}, at = 0;
		struct rdmig_tracee_call b[3] = {
		    {.what = "getpid", .nr = SYS_getpid},
		    {.what = "rt_sigaction(SIGTRAP)", .nr = SYS_rt_sigaction},
		    {.what = "getpid", .nr = SYS_getpid},
		};
		struct rdmig_tracee_call b2[2] = {
		    {.what = "getpid", .nr = SYS_getpid},
		    {.what = "getpid", .nr = SYS_getpid},
		};
		unsigned failed = 0;

		T_OK(rdmig_tracee_scratch(t, sizeof(ign), &at));
		T_OK(rdmig_tracee_write(t, at, ign, sizeof(ign)));
		b[1].a[0] = SIGTRAP;
		b[1].a[1] = (long)at;
		b[1].a[3] = 8;
		T_OK(rdmig_tracee_calls(t, b, 3, &failed));
		T_OK(rdmig_tracee_calls(t, b2, 2, &failed));
		T_CHECK(b[2].ret == pid && b2[1].ret == pid, "getpid %ld %ld", b[2].ret, b2[1].ret);
		T_CHECK(sig_ignored(pid, SIGTRAP), "SIGTRAP still ignored after the batches");
	}
	/* the state the batches left: umask 022 (the last that ran) */
	T_CHECK(t_proc_status((int)pid, "Umask", 8, 0777) == 0022, "umask %llo after the batches",
	        t_proc_status((int)pid, "Umask", 8, 0777));
	T_OK(rdmig_tracee_release(t, true));
	t = NULL;
	drain(rfd, &before);
	T_CHECK(read_full(rfd, &after, sizeof(after), 5000) == 0 && after > before,
	        "counter continues after the batches: %lu then %lu", (unsigned long)before,
	        (unsigned long)after);
out_kill:
	if (t)
		rdmig_tracee_kill(t);
	else
		kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(rfd);
}

/* A child blocked in read() keeps waiting and gets the data written later. */
static void tracee_blocked_read(void)
{
	struct rdmig_tracee *t = NULL;
	int in[2], out[2];
	char got[8] = {0};

	T_CHECK(!pipe(in) && !pipe(out), "pipes");
	pid_t pid = fork();

	if (pid == 0) {
		char buf[8] = {0};
		ssize_t n = read(in[0], buf, 5);

		if (n != 5 || write(out[1], buf, 5) != 5)
			_exit(1);
		_exit(0);
	}
	close(in[0]);
	close(out[1]);
	usleep(100000);
	T_CHECK(proc_state(pid) == 'S', "child sleeps (%c)", proc_state(pid));
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		const struct user_regs_struct *r = rdmig_tracee_saved_regs(t);
		long ret;

		T_CHECK(r->orig_rax == SYS_read && (long)r->rax == -512,
		        "interrupted read: orig_rax %lld rax %lld", r->orig_rax, r->rax);
		T_OK(rdmig_tracee_call(t, "getppid", &ret, SYS_getppid, 0, 0, 0, 0, 0, 0));
		T_CHECK(ret == getpid(), "getppid %ld", ret);
		uint64_t a;

		T_OK(rdmig_tracee_scratch(t, 10, &a));
		T_OK(rdmig_tracee_release(t, true));
	}
	usleep(100000);
	T_CHECK(write(in[1], "hello", 5) == 5, "write");
	T_CHECK(read_full(out[0], got, 5, 5000) == 0 && !memcmp(got, "hello", 5), "child read '%s'",
	        got);
	T_CHECK(wait_exit(pid, 5000) == 0, "child exit");
	close(in[1]);
	close(out[0]);
}

/* A child in nanosleep wakes on time, neither early nor with EINTR. */
/* Colocation pins both sides to one CPU for the injections and must leave
 * nothing changed: the process's own affinity (non-default where there are 3+
 * CPUs) and ours come back at release, ours at kill. Needs 2+ CPUs to see a
 * difference; with one it checks that nothing fails. */
static void tracee_colocate_puts_back(void)
{
	struct rdmig_tracee *t = NULL;
	cpu_set_t ours, child, now, now_child;
	int rfd = -1;
	uint64_t v = 0;
	long r;
	pid_t pid;

	T_OK(sched_getaffinity(0, sizeof(ours), &ours));
	pid = spawn_counter(&rfd);
	T_CHECK(pid > 0, "fork");
	if (pid <= 0)
		return;
	T_CHECK(read_full(rfd, &v, sizeof(v), 5000) == 0, "first counter");
	/* the child's own affinity: every CPU we have but the first where that
	 * leaves two or more (a set of one could not tell pinned from put back) */
	child = ours;
	if (CPU_COUNT(&ours) > 2)
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &child)) {
				CPU_CLR(c, &child);
				break;
			}
	T_OK(sched_setaffinity(pid, sizeof(child), &child));
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (!t)
		goto out_kill;
	T_OK(rdmig_tracee_colocate(t));
	T_OK(sched_getaffinity(0, sizeof(now), &now));
	T_OK(sched_getaffinity(pid, sizeof(now_child), &now_child));
	T_CHECK(CPU_COUNT(&now) == 1 && CPU_EQUAL(&now, &now_child),
	        "pinned together: ours %d cpus, its %d", CPU_COUNT(&now), CPU_COUNT(&now_child));
	T_OK(rdmig_tracee_call(t, "getpid", &r, SYS_getpid, 0, 0, 0, 0, 0, 0));
	T_CHECK(r == pid, "getpid %ld while colocated", r);
	T_OK(rdmig_tracee_release(t, true));
	t = NULL;
	T_OK(sched_getaffinity(0, sizeof(now), &now));
	T_OK(sched_getaffinity(pid, sizeof(now_child), &now_child));
	T_CHECK(CPU_EQUAL(&now, &ours), "our affinity back after release");
	T_CHECK(CPU_EQUAL(&now_child, &child), "its affinity back after release: %d cpus, was %d",
	        CPU_COUNT(&now_child), CPU_COUNT(&child));
	drain(rfd, &v);
	T_CHECK(read_full(rfd, &v, sizeof(v), 5000) == 0, "counter runs after release");

	/* kill: the process is gone, ours comes back */
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		T_OK(rdmig_tracee_colocate(t));
		rdmig_tracee_kill(t);
		t = NULL;
		T_OK(sched_getaffinity(0, sizeof(now), &now));
		T_CHECK(CPU_EQUAL(&now, &ours), "our affinity back after kill");
		pid = -1;
	}
out_kill:
	if (t)
		rdmig_tracee_kill(t);
	else if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	close(rfd);
}

static void tracee_blocked_sleep(void)
{
	struct rdmig_tracee *t = NULL;
	pid_t pid = fork();

	if (pid == 0) {
		struct timespec d = {0, 400 * 1000 * 1000}, rem;
		double a = t_now_s();

		if (nanosleep(&d, &rem))
			_exit(errno == EINTR ? 2 : 3);
		double s = t_now_s() - a;

		_exit(s < 0.39 ? 4 : s > 1.5 ? 5 : 0);
	}
	usleep(100000);
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		long ret;

		T_OK(rdmig_tracee_call(t, "getpid", &ret, SYS_getpid, 0, 0, 0, 0, 0, 0));
		T_OK(rdmig_tracee_release(t, true));
	}
	int st = wait_exit(pid, 5000);

	T_CHECK(st == 0, "child exit %d (2: EINTR, 4: early, 5: late)", st);
}

/* A signal sent while seized (blocked meanwhile) is delivered after release. */
static volatile sig_atomic_t g_got_usr1;
static void on_usr1(int sig)
{
	g_got_usr1 = sig;
}

static void tracee_signal_while_seized(void)
{
	struct rdmig_tracee *t = NULL;
	int p[2];
	char c = 0;

	T_CHECK(!pipe(p), "pipe");
	pid_t pid = fork();

	if (pid == 0) {
		signal(SIGUSR1, on_usr1);
		while (!g_got_usr1)
			pause();
		_exit(write(p[1], "u", 1) == 1 ? 0 : 1);
	}
	close(p[1]);
	usleep(100000);
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (t) {
		long ret;

		kill(pid, SIGUSR1);
		T_OK(rdmig_tracee_call(t, "getpid", &ret, SYS_getpid, 0, 0, 0, 0, 0, 0));
		T_CHECK(ret == pid, "getpid");
		T_OK(rdmig_tracee_release(t, true));
	}
	T_CHECK(read_full(p[0], &c, 1, 5000) == 0 && c == 'u', "handler ran");
	T_CHECK(wait_exit(pid, 5000) == 0, "child exit");
	close(p[0]);
}

static void tracee_kill_child(void)
{
	struct rdmig_tracee *t = NULL;
	int rfd = -1;
	pid_t pid = spawn_counter(&rfd);

	T_OK(rdmig_tracee_seize(pid, RDMIG_TRACEE_EXITKILL, &t));
	rdmig_tracee_kill(t);
	T_CHECK(waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD, "reaped");
	close(rfd);
}

/* ---- capture ---- */

#define CAP_MAP_PAGES 2047u
#define CAP_FILE_POS 12345
#define CAP_EXIT 33

static volatile uint64_t g_go;
static volatile sig_atomic_t g_cap_sig;

static void cap_handler(int sig)
{
	g_cap_sig = sig;
}

/* What the capture child reports on its stdout once it is set up. */
struct cap_info {
	uint64_t heap_base; /* page aligned, CAP_MAP_PAGES pages follow */
	uint64_t fmap;      /* the private file mapping (3 pages) */
	uint64_t altstack;
	int32_t fd;
	uint32_t pad;
};

static bool heap_written(uint32_t i)
{
	return i % 3 == 0;
}

static bool heap_read_only(uint32_t i)
{
	return i % 3 == 1 && i % 7 == 1;
}

static uint8_t cow_byte(uint32_t i)
{
	return (uint8_t)(i * 13 + 5);
}

/* The child for capture_full: stdin/stdout are pipes to the parent. */
static void cap_child(const char *fpath, const char *mpath)
{
	struct cap_info info = {0};
	static char altstack[65536];
	struct sigaction sa;
	sigset_t set;
	int bad = 0;

	syscall(SYS_close_range, 3, ~0u, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = cap_handler;
	sa.sa_flags = SA_RESTART | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaddset(&sa.sa_mask, SIGHUP);
	if (sigaction(SIGUSR1, &sa, NULL))
		_exit(10);
	/* a SIGTRAP handler survives the injected calls (tracee.c) */
	if (sigaction(SIGTRAP, &sa, NULL))
		_exit(10);
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0};

	if (sigaltstack(&ss, NULL))
		_exit(11);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		_exit(12);
	kill(getpid(), SIGUSR2); /* pending, blocked */
	umask(027);

	char *p = malloc(8u << 20);

	if (!p)
		_exit(13);
	char *base = (char *)(((uintptr_t)p + 4095) & ~(uintptr_t)4095);

	/* no THP: a touched page must not bring 511 others with it */
	if (madvise(base, (size_t)CAP_MAP_PAGES * 4096, MADV_NOHUGEPAGE))
		_exit(14);
	for (uint32_t i = 0; i < CAP_MAP_PAGES; i++) {
		if (heap_written(i))
			base[(size_t)i * 4096 + 7] = (char)(i + 1);
		else if (heap_read_only(i))
			bad += *(volatile char *)(base + (size_t)i * 4096); /* the zero page */
	}
	int fd = open(fpath, O_RDWR | O_APPEND);

	if (fd < 0 || lseek(fd, CAP_FILE_POS, SEEK_SET) != CAP_FILE_POS)
		_exit(15);
	int mfd = open(mpath, O_RDONLY);

	if (mfd < 0)
		_exit(16);
	uint8_t *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);

	close(mfd);
	if (m == MAP_FAILED)
		_exit(17);
	for (uint32_t i = 0; i < 3 * 4096; i += 4096)
		bad += *(volatile uint8_t *)(m + i) != 'f'; /* file pages, present */
	for (uint32_t i = 0; i < 4096; i++)
		m[4096 + i] = cow_byte(i);
	info.heap_base = (uint64_t)(uintptr_t)base;
	info.fmap = (uint64_t)(uintptr_t)m;
	info.altstack = (uint64_t)(uintptr_t)altstack;
	info.fd = fd;
	if (bad || write(1, &info, sizeof(info)) != sizeof(info))
		_exit(18);
	while (!g_go)
		g_counter++; /* spins in the executable: rip is there at the freeze */

	/* after release: everything still as it was */
	for (uint32_t i = 0; i < CAP_MAP_PAGES; i += 3)
		if (base[(size_t)i * 4096 + 7] != (char)(i + 1))
			_exit(20);
	for (uint32_t i = 0; i < 4096; i++)
		if (m[4096 + i] != cow_byte(i))
			_exit(21);
	if (lseek(fd, 0, SEEK_CUR) != CAP_FILE_POS)
		_exit(22);
	if (umask(0) != 027)
		_exit(23);
	if (sigpending(&set) || !sigismember(&set, SIGUSR2))
		_exit(24);
	raise(SIGUSR1);
	if (g_cap_sig != SIGUSR1)
		_exit(25);
	_exit(CAP_EXIT);
}

/* Whether a read fault on private anonymous memory maps the shared zero page
 * here (two such pages with one PFN). Some kernels (this VM's) give each read
 * fault a page of its own: such a page is present and not the zero page, so it
 * is rightly marked touched. */
static bool zero_page_in_use(void)
{
	char *p = mmap(NULL, 2 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t e[2] = {0, 0};
	int fd;

	if (p == MAP_FAILED)
		return false;
	(void)*(volatile char *)p;
	(void)*(volatile char *)(p + 4096);
	fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd >= 0 && pread(fd, e, sizeof(e), (off_t)((uintptr_t)p / 4096 * 8)) != sizeof(e))
		e[0] = e[1] = 0;
	if (fd >= 0)
		close(fd);
	munmap(p, 2 * 4096);
	uint64_t pfn = (1ull << 55) - 1;

	return (e[0] >> 63) && (e[0] & pfn) && (e[0] & pfn) == (e[1] & pfn);
}

static bool bit(const uint8_t *bits, uint64_t i)
{
	return bits && (bits[i / 8] >> (i % 8)) & 1;
}

static void check_image(const struct rdmig_image *img, const struct cap_info *info,
                        const char *fpath, const char *mpath)
{
	const uint64_t b = 1;
	char exe[4096];
	struct stat st;

	/* signals */
	const struct rdmig_img_sigaction *a = &img->sigactions[SIGUSR1 - 1];

	T_CHECK(a->handler == (uint64_t)(uintptr_t)cap_handler, "handler %#lx",
	        (unsigned long)a->handler);
	T_CHECK((a->flags & SA_RESTART) && (a->flags & SA_ONSTACK), "flags %#lx",
	        (unsigned long)a->flags);
	T_CHECK(a->mask == ((b << (SIGUSR2 - 1)) | (b << (SIGHUP - 1))), "mask %#lx",
	        (unsigned long)a->mask);
	T_CHECK(img->sigactions[SIGUSR2 - 1].handler == 0, "SIGUSR2 default");
	T_CHECK(img->sigactions[SIGTRAP - 1].handler == (uint64_t)(uintptr_t)cap_handler,
	        "SIGTRAP handler %#lx after the injected calls",
	        (unsigned long)img->sigactions[SIGTRAP - 1].handler);
	T_CHECK(img->threads[0].sigmask == ((b << (SIGUSR2 - 1)) | (b << (SIGTERM - 1))),
	        "sigmask %#lx", (unsigned long)img->threads[0].sigmask);
	T_CHECK(img->threads[0].altstack_sp == info->altstack &&
	            img->threads[0].altstack_size == 65536 && img->threads[0].altstack_flags == 0,
	        "altstack %#lx %lu %u", (unsigned long)img->threads[0].altstack_sp,
	        (unsigned long)img->threads[0].altstack_size, img->threads[0].altstack_flags);
	bool usr2 = false;

	for (uint32_t i = 0; i < img->nsiginfo_shared; i++) {
		siginfo_t si;

		memcpy(&si, img->siginfo_shared + (size_t)i * RDMIG_IMG_SIGINFO, sizeof(si));
		usr2 |= si.si_signo == SIGUSR2;
	}
	T_CHECK(usr2, "SIGUSR2 pending (%u shared, %u thread)", img->nsiginfo_shared,
	        img->threads[0].nsiginfo);

	/* process */
	T_CHECK(img->umask == 027, "umask %o", img->umask);
	T_CHECK(!strcmp(img->comm, "test_capture"), "comm '%s'", img->comm);
	T_CHECK(img->threads[0].rseq_len != 0 && img->threads[0].rseq_addr, "rseq %u at %#lx",
	        img->threads[0].rseq_len, (unsigned long)img->threads[0].rseq_addr);
	T_CHECK(img->threads[0].xstate_len >= 512, "xstate %u", img->threads[0].xstate_len);
	T_CHECK(img->vdso_len > 0 && img->auxv_len >= 16, "vdso %u auxv %u", img->vdso_len,
	        img->auxv_len);
	T_CHECK(img->mm.brk >= img->mm.start_brk && img->mm.start_code < img->mm.end_code,
	        "mm fields");
	T_CHECK(img->creds.uid[0] == getuid() && img->creds.gid[0] == getgid(), "creds");
	T_CHECK(img->cwd && img->cwd[0] == '/', "cwd");
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	exe[n > 0 ? n : 0] = 0;
	T_CHECK(img->exe && !strcmp(img->exe, exe), "exe '%s'", img->exe ? img->exe : "");
	const struct rdmig_img_vma *v = rdmig_image_vma_at(img, img->threads[0].regs[16]);

	T_CHECK(v && v->kind == RDMIG_VMA_FILE_PRIVATE && v->file < img->nfiles &&
	            !strcmp(img->files[v->file].path, exe),
	        "rip %#lx not in the executable", (unsigned long)img->threads[0].regs[16]);

	/* touched pages */
	uint32_t wrong = 0;
	bool zp = zero_page_in_use();

	fprintf(stderr, "  read faults map the shared zero page: %s\n", zp ? "yes" : "no");

	for (uint32_t i = 0; i < CAP_MAP_PAGES; i++) {
		uint64_t addr = info->heap_base + (uint64_t)i * 4096;

		v = rdmig_image_vma_at(img, addr);
		if (!v || v->kind != RDMIG_VMA_ANON) {
			wrong++;
			continue;
		}
		bool t = bit(v->touched, (addr - v->start) / 4096);

		/* page 0 also holds malloc's chunk header */
		if (t != (heap_written(i) || i == 0 || (!zp && heap_read_only(i)))) {
			if (wrong++ < 5)
				fprintf(stderr, "  page %u: touched %d (written %d, read %d)\n", i,
				        t, heap_written(i), heap_read_only(i));
		}
	}
	T_CHECK(wrong == 0, "%u heap pages wrong", wrong);

	/* the private file mapping and its one written page */
	v = rdmig_image_vma_at(img, info->fmap);
	T_CHECK(v && v->kind == RDMIG_VMA_FILE_PRIVATE && v->start == info->fmap &&
	            v->end == info->fmap + 3 * 4096 && v->pgoff == 0 && v->file < img->nfiles &&
	            !strcmp(img->files[v->file].path, mpath),
	        "file mapping");
	uint32_t ncow = 0;

	for (uint32_t i = 0; i < img->ncow; i++) {
		const struct rdmig_img_cow_page *c = &img->cow[i];

		if (i)
			T_CHECK(c->addr > img->cow[i - 1].addr, "cow sorted");
		if (c->addr < info->fmap || c->addr >= info->fmap + 3 * 4096)
			continue;
		ncow++;
		T_CHECK(c->addr == info->fmap + 4096, "cow page at %#lx", (unsigned long)c->addr);
		bool same = true;

		for (uint32_t j = 0; j < 4096; j++)
			same &= c->data[j] == cow_byte(j);
		T_CHECK(same, "cow content");
	}
	T_CHECK(ncow == 1, "%u cow pages in the file mapping", ncow);
	if (v && v->file < img->nfiles && !stat(mpath, &st))
		T_CHECK(img->files[v->file].ino == st.st_ino &&
		            img->files[v->file].size == (uint64_t)st.st_size,
		        "mapped file identity");

	/* descriptors */
	const struct rdmig_img_fd *f = NULL;

	for (uint32_t i = 0; i < img->nfds; i++)
		if (img->fds[i].fd == info->fd)
			f = &img->fds[i];
	T_CHECK(f != NULL, "fd %d captured", info->fd);
	if (f) {
		T_CHECK(f->kind == RDMIG_FD_FILE && f->pos == CAP_FILE_POS, "fd kind %u pos %lu",
		        f->kind, (unsigned long)f->pos);
		T_CHECK((f->flags & O_APPEND) && (f->flags & O_ACCMODE) == O_RDWR && !f->cloexec,
		        "fd flags %#o", f->flags);
		T_CHECK(f->file < img->nfiles && !strcmp(img->files[f->file].path, fpath) &&
		            !stat(fpath, &st) && img->files[f->file].ino == st.st_ino,
		        "fd file");
	}
	T_CHECK(img->nfds >= 2 && img->fds[0].fd == 0 && img->fds[0].kind == RDMIG_FD_STDIO &&
	            img->fds[1].kind == RDMIG_FD_STDIO,
	        "stdin/stdout are stdio pipes");
	for (uint32_t i = 0; i < img->nfiles; i++)
		for (uint32_t j = i + 1; j < img->nfiles; j++)
			T_CHECK(strcmp(img->files[i].path, img->files[j].path) ||
			            img->files[i].ino != img->files[j].ino,
			        "file %u listed twice", j);
}

static int make_file(char *path, char fill, size_t len)
{
	int fd = mkstemp(path);
	char buf[4096];

	if (fd < 0)
		return -1;
	memset(buf, fill, sizeof(buf));
	for (size_t done = 0; done < len; done += sizeof(buf))
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
			return -1;
	close(fd);
	return 0;
}

/* Every file mapping names its own file (one stat and readlink serve all the
 * mappings of one file in the capture: a library's are checked one by one). */
static void check_vma_files(pid_t pid, const struct rdmig_image *img)
{
	uint32_t most = 0, wrong = 0;

	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];
		char link[96], target[4096];
		struct stat st;
		uint32_t same = 0;
		ssize_t n;

		if (v->file == UINT32_MAX)
			continue;
		snprintf(link, sizeof(link), "/proc/%d/map_files/%lx-%lx", (int)pid,
		         (unsigned long)v->start, (unsigned long)v->end);
		n = readlink(link, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		if (n <= 0 || stat(link, &st) || strcmp(img->files[v->file].path, target) ||
		    img->files[v->file].ino != (uint64_t)st.st_ino ||
		    img->files[v->file].dev != (uint64_t)st.st_dev) {
			if (wrong++ < 3)
				fprintf(stderr, "  vma %#lx: file '%s', mapped '%s'\n",
				        (unsigned long)v->start, img->files[v->file].path, target);
		}
		for (uint32_t j = 0; j < img->nvmas; j++)
			same += img->vmas[j].file == v->file;
		most = same > most ? same : most;
	}
	T_CHECK(wrong == 0, "%u file mappings name another file", wrong);
	T_CHECK(most >= 3, "no file mapped three times or more (%u): a library's", most);
}

/* The page at each thread's stack pointer travels with the image (the first
 * thing a thread does on the destination is use it), holds what the stopped
 * thread has there, and is not also marked for fetching. */
static void check_stack_top(struct rdmig_tracee *t, const struct rdmig_image *img)
{
	static uint8_t now[4096];

	for (uint32_t i = 0; i < img->nthreads; i++) {
		uint64_t sp = img->threads[i].regs[offsetof(struct user_regs_struct, rsp) / 8];
		uint64_t pg = sp & ~4095ull;
		const struct rdmig_img_cow_page *c = NULL;
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, pg);

		for (uint32_t k = 0; k < img->ncow; k++)
			if (img->cow[k].addr == pg)
				c = &img->cow[k];
		T_CHECK(c != NULL, "thread %u: its stack page %#lx is not sent with the image", i,
		        (unsigned long)pg);
		T_CHECK(v && v->kind == RDMIG_VMA_ANON && !bit(v->touched, (pg - v->start) / 4096),
		        "thread %u: its stack page is also marked for fetching", i);
		if (!c)
			continue;
		T_OK(rdmig_tracee_read(t, pg, now, sizeof(now)));
		T_CHECK(!memcmp(c->data, now, sizeof(now)),
		        "thread %u: the stack page's copy differs from the process's", i);
	}
}

static void capture_full(void)
{
	char fpath[] = "/tmp/rdmig-cap-fd-XXXXXX", mpath[] = "/tmp/rdmig-cap-map-XXXXXX";
	struct rdmig_tracee *t = NULL;
	struct rdmig_image img;
	struct cap_info info;
	char why[256] = "";
	int cmd[2], res[2];

	memset(&img, 0, sizeof(img));
	T_CHECK(!make_file(fpath, 'd', 16384) && !make_file(mpath, 'f', 3 * 4096), "files");
	T_CHECK(!pipe(cmd) && !pipe(res), "pipes");
	pid_t pid = fork();

	if (pid == 0) {
		if (dup2(cmd[0], 0) < 0 || dup2(res[1], 1) < 0)
			_exit(9);
		cap_child(fpath, mpath);
	}
	close(cmd[0]);
	close(res[1]);
	if (read_full(res[0], &info, sizeof(info), 5000)) {
		T_CHECK(0, "child not ready (exit %d)", wait_exit(pid, 100));
		goto out;
	}
	T_OK(rdmig_capture_check(pid, why, sizeof(why)));
	usleep(100000); /* into its spin loop, past the write() */
	T_OK(rdmig_tracee_seize(pid, 0, &t));
	if (!t)
		goto out_kill;
	double t0 = t_now_s();
	int ret = rdmig_capture(t, &img, NULL, why, sizeof(why));

	T_CHECK(ret == 0, "capture %d (%s) why '%s'", ret, strerror(-ret), why);
	fprintf(stderr, "  capture took %.1f ms\n", (t_now_s() - t0) * 1e3);
	if (!ret) {
		char line[512];
		uint8_t *enc = NULL;
		size_t len = 0;

		rdmig_image_describe(&img, line, sizeof(line));
		fprintf(stderr, "  %s\n", line);
		check_image(&img, &info, fpath, mpath);
		check_vma_files(pid, &img);
		check_stack_top(t, &img);
		/* the codec takes what the capture produced, unless the bitmaps alone
		 * pass its size limit (an ASan build's shadow is terabytes of
		 * sparse anonymous memory) */
		uint64_t bitmap_bytes = 0;

		for (uint32_t i = 0; i < img.nvmas; i++)
			if (img.vmas[i].touched)
				bitmap_bytes += (img.vmas[i].end - img.vmas[i].start) / 4096 / 8;
		if (bitmap_bytes < RDMIG_IMG_MAX_BYTES / 2) {
			T_OK(rdmig_image_encode(&img, &enc, &len));
			free(enc);
		} else {
			fprintf(stderr, "  encode not tried: %lu MiB of touched bitmaps\n",
			        (unsigned long)(bitmap_bytes >> 20));
		}
	}
	rdmig_image_free(&img);
	uint64_t go = 1;

	T_OK(rdmig_tracee_write(t, (uint64_t)(uintptr_t)&g_go, &go, sizeof(go)));
	T_OK(rdmig_tracee_release(t, true));
	t = NULL;
	int st = wait_exit(pid, 10000);

	T_CHECK(st == CAP_EXIT, "child exit %d after release", st);
	pid = -1;
out_kill:
	rdmig_tracee_kill(t);
	if (pid > 0)
		(void)wait_exit(pid, 0);
out:
	close(cmd[1]);
	close(res[0]);
	unlink(fpath);
	unlink(mpath);
}

/* ---- the page walk split between threads ---- */

static bool bit_at(const uint8_t *b, uint64_t i)
{
	return b[i / 8] >> (i % 8) & 1;
}

/* A 1 GiB mapping walked alone and by the helpers: both must find the same
 * pages, every page written (on both sides of every place a split can fall,
 * the first and the last page) and none never touched. A page only read maps
 * the zero page, which the walk leaves out, but not always here (a guest's
 * kernel may give it a page of its own), so it may be either. */
static void pagescan_split(void)
{
	const uint64_t len = 1ull << 30, pages = len / 4096;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *want = calloc(pages / 8, 1), *read = calloc(pages / 8, 1),
	        *alone = calloc(pages / 8, 1), *bits = calloc(pages / 8, 1),
	        *written = calloc(pages / 8, 1);
	uint64_t nwant = 0, seed = 42, count_alone = 0;
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	T_CHECK(m != MAP_FAILED && want && read && alone && bits && written && pm >= 0, "set-up");
	if (m == MAP_FAILED || !want || !read || !alone || !bits || !written || pm < 0)
		goto out;
	T_OK(madvise(m, len, MADV_NOHUGEPAGE));
	/* around every split of 2, 3 and 4 parts (8-page groups), and at random */
	for (unsigned n = 2; n <= 4; n++) {
		uint64_t piece = (pages / n + 7) / 8 * 8;

		for (unsigned k = 1; k < n; k++)
			for (int d = -9; d <= 9; d++)
				rdmig_bitmap_set(want, k * piece + (uint64_t)d, 1);
	}
	/* around every piece the caller and the helpers take (32 and 64 MiB) */
	for (uint64_t k = 8192; k < pages; k += 8192)
		for (int d = -9; d <= 9; d++)
			rdmig_bitmap_set(want, k + (uint64_t)d, 1);
	rdmig_bitmap_set(want, 0, 1);
	rdmig_bitmap_set(want, pages - 1, 1);
	for (int i = 0; i < 4000; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		rdmig_bitmap_set(want, (seed >> 20) % pages, 1);
	}
	for (uint64_t i = 0; i < pages; i++) {
		if (bit_at(want, i)) {
			m[i * 4096] = 1;
			nwant++;
		} else if (i % 997 == 0) {
			T_CHECK(((volatile uint8_t *)m)[i * 4096] == 0, "a page never written");
			rdmig_bitmap_set(read, i, 1);
		}
	}
	rdmig_pagescan_helpers_stop();
	for (int round = 0; round < 2; round++) {
		const char *how = round ? "helpers" : "alone";
		uint64_t count = 0, extra = 0, missed = 0;
		bool known = false;

		if (round == 1) {
			int cpus = get_nprocs(), h = rdmig_pagescan_helpers_start();

			T_CHECK(h == (cpus > 4 ? 3 : cpus - 1), "%d helpers on %d CPUs", h, cpus);
		}
		memset(bits, 0, pages / 8);
		memset(written, 0, pages / 8);
		T_OK(rdmig_pagescan(pm, (uint64_t)(uintptr_t)m, (uint64_t)(uintptr_t)m + len, false,
		                    bits, &count, written, &known));
		for (uint64_t i = 0; i < pages; i++) {
			missed += bit_at(want, i) && !bit_at(bits, i);
			extra += bit_at(bits, i) && !bit_at(want, i) && !bit_at(read, i);
		}
		T_CHECK(missed == 0 && extra == 0 && count >= nwant,
		        "%s: %llu written pages missed, %llu never touched found, %llu found "
		        "(%llu written)",
		        how, (unsigned long long)missed, (unsigned long long)extra,
		        (unsigned long long)count, (unsigned long long)nwant);
		/* nothing write-protects them: every page with data is written */
		T_CHECK(known && !memcmp(written, bits, pages / 8), "%s: the written pages", how);
		if (round == 0) {
			memcpy(alone, bits, pages / 8);
			count_alone = count;
		} else {
			T_CHECK(count == count_alone && !memcmp(bits, alone, pages / 8),
			        "helpers and alone differ: %llu and %llu pages",
			        (unsigned long long)count, (unsigned long long)count_alone);
		}
	}
	rdmig_pagescan_helpers_stop();
	rdmig_pagescan_helpers_stop(); /* twice: idempotent */
out:
	if (pm >= 0)
		close(pm);
	if (m != MAP_FAILED)
		munmap(m, len);
	free(want);
	free(read);
	free(alone);
	free(bits);
	free(written);
}

/* ---- refusals ---- */

enum refuse_mode { REF_SOCKET, REF_PIPE, REF_SHARED_ANON };

static void refusal(enum refuse_mode mode, const char *expect)
{
	int cmd[2], res[2], fds[2];
	char why[256] = "", c = 0;

	T_CHECK(!pipe(cmd) && !pipe(res), "pipes");
	pid_t pid = fork();

	if (pid == 0) {
		if (dup2(cmd[0], 0) < 0 || dup2(res[1], 1) < 0)
			_exit(9);
		syscall(SYS_close_range, 3, ~0u, 0);
		switch (mode) {
		case REF_SOCKET:
			if (socket(AF_INET, SOCK_STREAM, 0) < 0)
				_exit(10);
			break;
		case REF_PIPE:
			if (pipe(fds))
				_exit(10);
			break;
		case REF_SHARED_ANON:
			if (mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			         -1, 0) == MAP_FAILED)
				_exit(10);
			break;
		}
		if (write(1, "r", 1) != 1 || read(0, &c, 1) != 1 || c != 'q')
			_exit(11);
		_exit(7);
	}
	close(cmd[0]);
	close(res[1]);
	T_CHECK(read_full(res[0], &c, 1, 5000) == 0 && c == 'r', "child ready");
	int ret = rdmig_capture_check(pid, why, sizeof(why));

	T_CHECK(ret == -EOPNOTSUPP, "check returned %d", ret);
	T_CHECK(strstr(why, expect) != NULL, "why '%s' lacks '%s'", why, expect);
	fprintf(stderr, "  refused: %s\n", why);
	/* untouched: not traced, not stopped, and it carries on */
	char state = proc_state(pid);

	T_CHECK(state == 'S' || state == 'R', "state %c", state);
	T_CHECK(tracer_of(pid) == 0, "traced by %d", tracer_of(pid));
	T_CHECK(write(cmd[1], "q", 1) == 1, "go");
	T_CHECK(wait_exit(pid, 5000) == 7, "child exit");
	close(cmd[1]);
	close(res[0]);
}

static void refuse_socket(void)
{
	refusal(REF_SOCKET, "fd 3 is a socket");
}

static void refuse_pipe(void)
{
	refusal(REF_PIPE, "fd 3 is a pipe");
}

static void refuse_shared_anon(void)
{
	refusal(REF_SHARED_ANON, "shared anonymous memory");
}

/* A plain process passes the check, whatever its name holds (stat's comm is
 * parsed up to the last ')'). */
static void check_accepts_odd_comm(void)
{
	int cmd[2], res[2];
	char why[256] = "", c = 0;

	T_CHECK(!pipe(cmd) && !pipe(res), "pipes");
	pid_t pid = fork();

	if (pid == 0) {
		if (dup2(cmd[0], 0) < 0 || dup2(res[1], 1) < 0)
			_exit(9);
		syscall(SYS_close_range, 3, ~0u, 0);
		prctl(PR_SET_NAME, "a) b (c) 1 2");
		if (write(1, "r", 1) != 1 || read(0, &c, 1) != 1)
			_exit(11);
		_exit(7);
	}
	close(cmd[0]);
	close(res[1]);
	T_CHECK(read_full(res[0], &c, 1, 5000) == 0 && c == 'r', "child ready");
	T_OK(rdmig_capture_check(pid, why, sizeof(why)));
	T_CHECK(why[0] == '\0', "why '%s'", why);
	T_CHECK(rdmig_capture_check(getpid() + 1000000, why, sizeof(why)) == -ESRCH,
	        "no such process");
	T_CHECK(write(cmd[1], "q", 1) == 1, "go");
	T_CHECK(wait_exit(pid, 5000) == 7, "child exit");
	close(cmd[1]);
	close(res[0]);
}

/* /proc/PID/limits (the fallback when prlimit may not read another user's
 * limits) says what getrlimit says. */
static void procfs_limits_match(void)
{
	uint64_t cur[RDMIG_IMG_NRLIMIT], max[RDMIG_IMG_NRLIMIT];
	struct rlimit rl;

	T_OK(procfs_limits(getpid(), cur, max));
	for (int r = 0; r < (int)RDMIG_IMG_NRLIMIT; r++) {
		T_CHECK(!getrlimit((enum __rlimit_resource)r, &rl) && rl.rlim_cur == cur[r] &&
		            rl.rlim_max == max[r],
		        "resource %d: %lu/%lu vs %lu/%lu", r, (unsigned long)cur[r],
		        (unsigned long)max[r], (unsigned long)rl.rlim_cur,
		        (unsigned long)rl.rlim_max);
	}
}

/* rdmig_runs_sort_merge: random runs in a small space (so they overlap, touch
 * and repeat), shuffled or in address order, cover the same pages after as
 * before, sorted, each page once. */
static void runs_sort_merge(void)
{
	enum { SPACE = 512, N = 200 };
	const uint64_t base = 0x7f0000000000ull;
	struct rdmig_run runs[N];
	uint8_t want[SPACE], got[SPACE];

	srand(7);
	for (int trial = 0; trial < 200; trial++) {
		uint32_t n = (uint32_t)(rand() % N), k;

		memset(want, 0, sizeof(want));
		memset(got, 0, sizeof(got));
		for (uint32_t i = 0; i < n; i++) {
			/* every fourth trial in address order (one round's runs come
			 * so, and take no sort), still overlapping and touching */
			uint64_t first = trial % 4 == 3 ? (i ? (runs[i - 1].addr - base) / 4096 +
			                                           (uint64_t)(rand() % 3)
			                                     : 0)
			                                : (uint64_t)(rand() % SPACE),
			         pages = 1 + (uint64_t)(rand() % (trial % 2 ? 3 : 40));

			if (first >= SPACE)
				first = SPACE - 1;

			if (first + pages > SPACE)
				pages = SPACE - first;
			runs[i] = (struct rdmig_run){base + first * 4096, pages};
			memset(want + first, 1, pages);
		}
		k = rdmig_runs_sort_merge(runs, n);
		T_CHECK(k <= n, "trial %d: %u runs from %u", trial, k, n);
		for (uint32_t i = 0; i < k; i++) {
			uint64_t first = (runs[i].addr - base) / 4096;

			T_CHECK(runs[i].pages >= 1 && first + runs[i].pages <= SPACE,
			        "trial %d: run %u out of the space", trial, i);
			if (i)
				T_CHECK(
				    runs[i].addr > runs[i - 1].addr + runs[i - 1].pages * 4096,
				    "trial %d: runs %u and %u overlap, touch or are out of order",
				    trial, i - 1, i);
			for (uint64_t p = 0; p < runs[i].pages && first + p < SPACE; p++) {
				T_CHECK(!got[first + p], "trial %d: page %" PRIu64 " twice", trial,
				        first + p);
				got[first + p] = 1;
			}
		}
		T_CHECK(!memcmp(want, got, sizeof(want)), "trial %d: pages differ", trial);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1)
		t_state.only = argv[1];
	signal(SIGPIPE, SIG_IGN);
	T_RUN(tracee_inject_loop);
	T_RUN(tracee_keeps_sigtrap);
	T_RUN(tracee_batch);
	T_RUN(tracee_colocate_puts_back);
	T_RUN(tracee_blocked_read);
	T_RUN(tracee_blocked_sleep);
	T_RUN(tracee_signal_while_seized);
	T_RUN(tracee_kill_child);
	T_RUN(capture_full);
	T_RUN(pagescan_split);
	T_RUN(procfs_limits_match);
	T_RUN(runs_sort_merge);
	T_RUN(check_accepts_odd_comm);
	T_RUN(refuse_socket);
	T_RUN(refuse_pipe);
	T_RUN(refuse_shared_anon);
	return t_finish();
}
