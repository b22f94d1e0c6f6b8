/*
 * The watch on the calls that change what only injected calls can read
 * (callwatch.h).
 *
 * Which calls are counted. Every call but those below, by number: a list of
 * calls that may be made freely is safer than a list of those that change the
 * state, since a call missing from it only costs speed (the freeze then asks
 * again). The numbers are the x86_64 ones, and raw_syscalls:sys_enter does not
 * say whether a call came through int 0x80, where numbers mean other calls; so
 * a number is on the list only if its i386 call changes nothing asked either
 * (64-bit 11, munmap, is i386's execve: counted; 186, gettid, is sigaltstack:
 * counted). Signal deliveries are counted apart: a handler that does not
 * return through rt_sigreturn (siglongjmp) may leave the alternate stack
 * disarmed (SS_AUTODISARM) or the handler reset (SA_RESETHAND) with no call.
 * A new thread comes from a counted call (clone, clone3).
 */
#define LOG_SUBSYS "callwatch"
#include "callwatch.h"

#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define EV_ENTER "raw_syscalls/sys_enter"
#define EV_DELIVER "signal/signal_deliver"

/* x86_64 number (i386 meaning of the same number): none changes the signal
 * handlers, brk, an alternate stack or clear_child_tid in either ABI. */
static const unsigned free_calls[] = {
    0,   /* read (restart_syscall) */
    1,   /* write (exit) */
    3,   /* close (read) */
    4,   /* stat (write) */
    5,   /* fstat (open) */
    7,   /* poll (waitpid) */
    8,   /* lseek (creat) */
    9,   /* mmap (link) */
    10,  /* mprotect (unlink) */
    16,  /* ioctl (lchown) */
    17,  /* pread64 (break) */
    18,  /* pwrite64 (oldstat) */
    19,  /* readv (lseek) */
    20,  /* writev (getpid) */
    21,  /* access (mount) */
    23,  /* select (setuid) */
    24,  /* sched_yield (getuid) */
    25,  /* mremap (stime) */
    28,  /* madvise (oldfstat) */
    35,  /* nanosleep (ftime) */
    39,  /* getpid (mkdir) */
    72,  /* fcntl (sigsuspend: the mask only, read by ptrace) */
    96,  /* gettimeofday (getpriority) */
    202, /* futex (getegid32) */
    219, /* restart_syscall (madvise): how a call our stop interrupted goes on */
    228, /* clock_gettime (fsetxattr) */
    230, /* clock_nanosleep (lgetxattr) */
    232, /* epoll_wait (listxattr) */
    257, /* openat (remap_file_pages) */
    262, /* newfstatat (timer_getoverrun) */
    270, /* pselect6 (tgkill: a delivery is counted apart) */
    271, /* ppoll (utimes) */
    281, /* epoll_pwait (mq_notify) */
    318, /* getrandom (getcpu) */
};

struct rdmig_callwatch {
	unsigned n;     /* counters open */
	int *fds;       /* n of them */
	uint64_t *base; /* their counts at the mark */
};

/* The decimal id in ROOT/events/EV/id; 0 or -errno. Only calls a forked child
 * of a threaded process may make (no allocation, no stdio). */
static int read_id(const char *root, const char *ev, long *id)
{
	char path[256], buf[24];
	size_t a = strlen(root), b = strlen(ev);
	ssize_t got;
	long v = 0;
	int fd;

	if (a + b + sizeof("/events//id") > sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, root, a);
	memcpy(path + a, "/events/", 8);
	memcpy(path + a + 8, ev, b);
	memcpy(path + a + 8 + b, "/id", 4);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	got = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (got <= 0)
		return -EIO;
	for (ssize_t i = 0; i < got && buf[i] != '\n'; i++) {
		if (buf[i] < '0' || buf[i] > '9' || v > 100000000)
			return -EIO;
		v = v * 10 + (buf[i] - '0');
	}
	if (v <= 0)
		return -EIO;
	*id = v;
	return 0;
}

static int ids_at(const char *root, long ids[2])
{
	int ret = read_id(root, EV_ENTER, &ids[0]);

	return ret ? ret : read_id(root, EV_DELIVER, &ids[1]);
}

/* tracefs not mounted: a child mounts it where nobody else sees it (its own
 * mount namespace) and reports the ids. */
static int ids_in_child(long ids[2])
{
	long out[3] = {-ENOENT, 0, 0};
	int p[2], status;
	pid_t c;
	ssize_t got;

	if (pipe2(p, O_CLOEXEC))
		return -errno;
	c = fork();
	if (c < 0) {
		int err = -errno;

		close(p[0]);
		close(p[1]);
		return err;
	}
	if (c == 0) {
		close(p[0]);
		if (unshare(CLONE_NEWNS))
			out[0] = -errno;
		else if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
			out[0] = -errno;
		else if (mount("tracefs", "/sys/kernel/tracing", "tracefs",
		               MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
			out[0] = -errno;
		else
			out[0] = ids_at("/sys/kernel/tracing", out + 1);
		_exit(write(p[1], out, sizeof(out)) == (ssize_t)sizeof(out) ? 0 : 1);
	}
	close(p[1]);
	do
		got = read(p[0], out, sizeof(out));
	while (got < 0 && errno == EINTR);
	close(p[0]);
	while (waitpid(c, &status, 0) < 0 && errno == EINTR)
		;
	if (got != (ssize_t)sizeof(out))
		return -EIO;
	if (out[0])
		return (int)out[0];
	ids[0] = out[1];
	ids[1] = out[2];
	return 0;
}

static int tracepoint_ids(long ids[2])
{
	if (ids_at("/sys/kernel/tracing", ids) == 0 ||
	    ids_at("/sys/kernel/debug/tracing", ids) == 0)
		return 0;
	return ids_in_child(ids);
}

/* "id != 0 && id != 1 && ...": the counted calls */
static int enter_filter(char *buf, size_t cap)
{
	size_t at = 0;

	for (size_t i = 0; i < sizeof(free_calls) / sizeof(free_calls[0]); i++) {
		int n = snprintf(buf + at, cap - at, "%sid != %u", i ? " && " : "", free_calls[i]);

		if (n < 0 || (size_t)n >= cap - at)
			return -ENOSPC;
		at += (size_t)n;
	}
	return 0;
}

static int open_counter(pid_t tid, long id, const char *filter)
{
	struct perf_event_attr a;
	int fd, err;

	memset(&a, 0, sizeof(a));
	a.type = PERF_TYPE_TRACEPOINT;
	a.size = sizeof(a);
	a.config = (uint64_t)id;
	a.disabled = 1; /* enabled once filtered */
	fd = (int)syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if ((filter && ioctl(fd, PERF_EVENT_IOC_SET_FILTER, filter) < 0) ||
	    ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int rdmig_callwatch_open(const pid_t *tids, unsigned n, struct rdmig_callwatch **out)
{
	struct rdmig_callwatch *w;
	char filter[1024];
	long ids[2];
	int ret;

	*out = NULL;
	if (n == 0)
		return -EINVAL;
	ret = tracepoint_ids(ids);
	if (ret)
		return ret;
	ret = enter_filter(filter, sizeof(filter));
	if (ret)
		return ret;
	w = calloc(1, sizeof(*w));
	if (w) {
		w->fds = calloc(2 * (size_t)n, sizeof(*w->fds));
		w->base = calloc(2 * (size_t)n, sizeof(*w->base));
	}
	if (!w || !w->fds || !w->base) {
		rdmig_callwatch_close(w);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < n; i++) {
		for (int k = 0; k < 2; k++) {
			int fd = open_counter(tids[i], ids[k], k == 0 ? filter : NULL);

			if (fd < 0) {
				pr_debug("tid %d: counter of %s: %s", (int)tids[i],
				         k == 0 ? EV_ENTER : EV_DELIVER, strerror(-fd));
				rdmig_callwatch_close(w);
				return fd;
			}
			w->fds[w->n++] = fd;
		}
	}
	*out = w;
	return 0;
}

static int count_of(int fd, uint64_t *count)
{
	ssize_t got = read(fd, count, sizeof(*count));

	if (got != (ssize_t)sizeof(*count))
		return got < 0 ? -errno : -EIO;
	return 0;
}

int rdmig_callwatch_mark(struct rdmig_callwatch *w)
{
	for (unsigned i = 0; i < w->n; i++) {
		int ret = count_of(w->fds[i], &w->base[i]);

		if (ret)
			return ret;
	}
	return 0;
}

int rdmig_callwatch_quiet(const struct rdmig_callwatch *w)
{
	for (unsigned i = 0; i < w->n; i++) {
		uint64_t count;
		int ret = count_of(w->fds[i], &count);

		if (ret)
			return ret;
		if (count != w->base[i])
			return 0;
	}
	return 1;
}

void rdmig_callwatch_close(struct rdmig_callwatch *w)
{
	if (!w)
		return;
	for (unsigned i = 0; i < w->n; i++)
		close(w->fds[i]);
	free(w->fds);
	free(w->base);
	free(w);
}
