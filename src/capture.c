/*
 * Capture on the source (rdmig/capture.h).
 *
 * rdmig_capture_check() reads /proc/PID only and refuses, with one sentence,
 * what this version cannot move. rdmig_capture() runs the same check again (the
 * process may have changed since), then, with the thread frozen:
 *   0. with the answers of the injected calls (step 3) asked at the tracking
 *      start and still holding (capture_calls.c: a watch on the process's
 *      calls says so), steps 1 and 3 are skipped: the process never runs
 *      inside the freeze;
 *   1. an injected getpid() is set going in the main thread, and while it runs:
 *   2. /proc: mm fields, credentials, umask, rlimits (prlimit), cwd, exe,
 *      personality, comm, auxv, the memory map with file identities, the vdso
 *      bytes, descriptors, and the pages (pagescan.c, big mappings split
 *      between helper threads): PAGEMAP_SCAN on /proc/PID/pagemap marks, per
 *      anonymous vma, the pages present or swapped that are not the shared zero
 *      page (the huge zero page included), and finds in private file mappings
 *      the pages that are anonymous copies (present or swapped, not file
 *      pages): those are read into img->cow; with hold_anon, no anonymous
 *      vma is walked here, and what is left of the getpid()'s time goes to
 *      the caller's idle work (the source walks held parts: parts.h);
 *   3. the getpid() is waited for; then, on one CPU with ours, injected calls
 *      through the scratch area (capture_calls.c): every signal's
 *      sigaction, the alternate stack, clear_child_tid (PR_GET_TID_ADDRESS),
 *      brk(0) (the scratch is mapped after the map was read and unmapped
 *      before the end, so it never shows in it);
 *   4. ptrace: registers (as saved at seize), xstate, signal mask, rseq,
 *      pending signals (thread and process), the robust list;
 *   5. the eager pages (tid caches, rseq areas, stack tops), read last.
 *
 * Why the getpid() first. The thread's first return to user mode after the
 * freeze is slow here: on a shadow-paging hypervisor (PVM, these machines) the
 * host re-syncs the entries the process changed since it last entered user
 * mode (each write-protect fault of the tracking changes one), 0.1-2.4 ms in
 * one call, where the next calls take 0.02 ms. That first return now runs on
 * the process's own CPU while we read /proc on ours. Nothing of the process
 * runs meanwhile but the kernel's entry and exit of getpid(), whose only write
 * to its memory is the rseq area's cpu fields (kernel-owned, rewritten when the
 * destination registers rseq; its page is also read last, as an eager page),
 * so what steps 2 and 5 read is what the frozen process holds.
 *
 * Threads. Every thread is seized (tracee.c); per thread: registers, xstate,
 * mask, pending signals, rseq, robust list (ptrace and get_robust_list by tid),
 * and, injected IN that thread (they answer for the calling thread only), the
 * alternate stack and clear_child_tid; its comm from /proc/PID/task/TID/comm.
 * The main thread is threads[0].
 *
 * The tid cache (a glibc dependency, glibc >= 2.25, checked on 2.36 x86_64).
 * glibc keeps each thread's tid in its struct pthread, which starts at the
 * thread pointer (fs_base); `tid` is at offset 0x2d0 there (pthread_self()->tid;
 * glibc >= 2.25 no longer caches the pid). pthread_kill, pthread_join's futex
 * (clear_child_tid points at that very field), error-checking and recursive
 * mutexes use it, so the restore must rewrite it with each thread's new tid.
 * The capture checks the layout instead of trusting it: the int at
 * fs_base + 0x2d0 must equal the thread's real tid, read through /proc/PID/mem;
 * then its address goes into the image and its page is sent eagerly (the
 * restore writes into it before the pager runs, and a page made present there
 * would hide the real one from the pager). A multi-threaded process where any
 * thread fails the check is refused: its runtime is not the glibc we know. A
 * single-threaded one is migrated as before, without a tid cache.
 *
 * File identities are stat()s of /proc/PID/map_files/S-E and /proc/PID/fd/N,
 * i.e. of what is really mapped or open, with the path from readlink of the
 * same link (no escaping to undo, unlike the maps text).
 */
#define LOG_SUBSYS "capture"
#include "rdmig/capture.h"

#include "capture_calls.h"
#include "pagescan.h"
#include "procfs.h"
#include "rdmig/log.h"
#include "uffd_compat.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <unistd.h>

#define DELETED_SUFFIX " (deleted)"

struct rseq_conf {
	uint64_t rseq_abi_pointer;
	uint32_t rseq_abi_size;
	uint32_t signature;
	uint32_t flags;
	uint32_t pad;
};

static int refuse(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
		pr_info("%s", why);
	}
	return -EOPNOTSUPP;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

static bool is_devnull_like(dev_t rdev)
{
	/* drivers/char/mem.c: null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9 */
	unsigned mi = minor(rdev);

	return major(rdev) == 1 && (mi == 3 || mi == 5 || mi == 7 || mi == 8 || mi == 9);
}

static bool is_tty(dev_t rdev)
{
	unsigned ma = major(rdev);

	/* ttys (4), /dev/tty and /dev/console (5:0, 5:1), pty slaves (136-143) */
	return ma == 4 || (ma == 5 && minor(rdev) <= 1) || (ma >= 136 && ma <= 143);
}

/*
 * What descriptor f is: *kind, and *st for FILE/DEVNULL; 1 when it was closed
 * meanwhile; -EOPNOTSUPP with a sentence for what cannot be moved.
 */
static int classify_fd(pid_t pid, const struct procfs_fd *f, uint32_t *kind, struct stat *st,
                       char *why, size_t whylen)
{
	const char *tg = f->target;
	char name[48];
	int ret;

	if (!strncmp(tg, "socket:", 7))
		return refuse(why, whylen,
		              "pid %d fd %d is a socket (%s); this version does not migrate "
		              "sockets: close it or run the process without it",
		              pid, f->fd, tg);
	if (!strncmp(tg, "pipe:", 5)) {
		if (f->fd <= 2) {
			*kind = RDMIG_FD_STDIO;
			return 0;
		}
		return refuse(why, whylen,
		              "pid %d fd %d is a pipe (%s); only stdin, stdout and stderr may "
		              "be pipes: close it first",
		              pid, f->fd, tg);
	}
	if (!strncmp(tg, "anon_inode:", 11))
		return refuse(why, whylen,
		              "pid %d fd %d is a special descriptor (%s); eventfd, signalfd, "
		              "timerfd, epoll, inotify, io_uring and the like are not migrated",
		              pid, f->fd, tg);
	if (tg[0] != '/')
		return refuse(why, whylen,
		              "pid %d fd %d is a special descriptor (%s) that cannot be reopened "
		              "by path",
		              pid, f->fd, tg);
	if (!strncmp(tg, "/memfd:", 7))
		return refuse(why, whylen,
		              "pid %d fd %d is a memfd (%s); shared memory is not migrated", pid,
		              f->fd, tg);
	snprintf(name, sizeof(name), "fd/%d", f->fd);
	ret = procfs_stat_link(pid, name, st);
	if (ret == -ENOENT)
		return 1;
	if (ret) {
		pr_err("pid %d fd %d (%s): stat failed: %s", pid, f->fd, tg, strerror(-ret));
		return ret;
	}
	if (S_ISREG(st->st_mode)) {
		if (st->st_nlink == 0 || ends_with(tg, DELETED_SUFFIX))
			return refuse(why, whylen,
			              "pid %d fd %d is a deleted file (%s); it cannot be reopened "
			              "on the destination",
			              pid, f->fd, tg);
		*kind = RDMIG_FD_FILE;
		return 0;
	}
	if (S_ISCHR(st->st_mode) && is_devnull_like(st->st_rdev)) {
		*kind = RDMIG_FD_DEVNULL;
		return 0;
	}
	if (f->fd <= 2 &&
	    ((S_ISCHR(st->st_mode) && is_tty(st->st_rdev)) || S_ISFIFO(st->st_mode))) {
		*kind = RDMIG_FD_STDIO;
		return 0;
	}
	if (S_ISDIR(st->st_mode))
		return refuse(why, whylen,
		              "pid %d fd %d is an open directory (%s); this version does not "
		              "migrate directory descriptors",
		              pid, f->fd, tg);
	if (S_ISFIFO(st->st_mode))
		return refuse(why, whylen,
		              "pid %d fd %d is a FIFO (%s); only stdin, stdout and stderr may be "
		              "pipes or FIFOs",
		              pid, f->fd, tg);
	if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
		return refuse(why, whylen,
		              "pid %d fd %d is a device (%s); only /dev/null, /dev/zero, "
		              "/dev/full, /dev/random, /dev/urandom (and a terminal on fds 0-2) "
		              "are migrated",
		              pid, f->fd, tg);
	return refuse(why, whylen, "pid %d fd %d (%s) is of a type this version cannot migrate",
	              pid, f->fd, tg);
}

/* The file of the mapping classified last: a library's 4 or 5 mappings are
 * one file, which needs one stat and one readlink of a map_files link (~20 us
 * each here, inside the freeze), not one per mapping. Keyed on the maps line's
 * own device and inode, which are the mapped file's whatever the link's stat
 * says (overlayfs). */
struct map_file_cache {
	bool valid;
	uint32_t dev_major, dev_minor;
	uint64_t ino;
	struct stat st;
	char *path; /* when one was asked for */
};

static void map_file_cache_free(struct map_file_cache *c)
{
	free(c->path);
	memset(c, 0, sizeof(*c));
}

static bool map_file_cache_hit(const struct map_file_cache *c, const struct procfs_map *m,
                               bool want_path)
{
	return c && c->valid && m->ino && c->dev_major == m->dev_major &&
	       c->dev_minor == m->dev_minor && c->ino == m->ino && (!want_path || c->path);
}

/* What a maps line is (kind and flags, or *skip); FILE_* also stat the mapped
 * file into *st (path from readlink into *path when path is not NULL);
 * cache, when given, serves the mappings of the same file after the first. */
static int classify_map(pid_t pid, const struct procfs_map *m, uint32_t *kind, uint32_t *flags,
                        bool *skip, struct stat *st, char **path, struct map_file_cache *cache,
                        char *why, size_t whylen)
{
	const char *n = m->name;
	char link[80];
	bool hit;
	int ret;

	*kind = RDMIG_VMA_ANON;
	*flags = 0;
	*skip = false;
	if (!n || !strncmp(n, "[anon:", 6)) {
		if (m->shared)
			return refuse(why, whylen,
			              "pid %d has shared anonymous memory at %#" PRIx64 "-%#" PRIx64
			              "; shared memory is not migrated",
			              pid, m->start, m->end);
		return 0;
	}
	if (n[0] == '[') {
		if (!strcmp(n, "[heap]"))
			*flags = RDMIG_VMA_F_HEAP;
		else if (!strcmp(n, "[stack]"))
			*flags = RDMIG_VMA_F_STACK | RDMIG_VMA_F_GROWSDOWN;
		else if (!strcmp(n, "[vdso]"))
			*kind = RDMIG_VMA_VDSO;
		else if (!strcmp(n, "[vvar]"))
			*kind = RDMIG_VMA_VVAR;
		else if (!strcmp(n, "[vvar_vclock]"))
			*kind = RDMIG_VMA_VVAR_VCLOCK;
		else if (!strcmp(n, "[vsyscall]"))
			*skip = true;
		else if (!strncmp(n, "[anon_shmem:", 12))
			return refuse(why, whylen,
			              "pid %d has shared memory %s at %#" PRIx64
			              "; shared memory is not migrated",
			              pid, n, m->start);
		else
			return refuse(why, whylen,
			              "pid %d has a special mapping %s at %#" PRIx64
			              " that this version does not know",
			              pid, n, m->start);
		if (m->shared)
			return refuse(why, whylen, "pid %d: %s at %#" PRIx64 " is shared", pid, n,
			              m->start);
		return 0;
	}
	if (n[0] != '/')
		return refuse(why, whylen,
		              "pid %d has a special mapping (%s) at %#" PRIx64
		              "; this version migrates memory and regular files only",
		              pid, n, m->start);
	if (!strncmp(n, "/SYSV", 5))
		return refuse(why, whylen,
		              "pid %d has System V shared memory attached at %#" PRIx64
		              " (%s); shared memory is not migrated",
		              pid, m->start, n);
	if (!strncmp(n, "/memfd:", 7))
		return refuse(why, whylen,
		              "pid %d maps a memfd (%s) at %#" PRIx64 "; shared memory is not "
		              "migrated",
		              pid, n, m->start);
	if (m->shared && !strcmp(n, "/dev/zero" DELETED_SUFFIX))
		return refuse(why, whylen,
		              "pid %d has shared anonymous memory at %#" PRIx64 "-%#" PRIx64
		              " (MAP_SHARED|MAP_ANONYMOUS); shared memory is not migrated",
		              pid, m->start, m->end);
	if (ends_with(n, DELETED_SUFFIX))
		return refuse(why, whylen,
		              "pid %d maps a deleted file (%s) at %#" PRIx64
		              "; it cannot be mapped again on the destination",
		              pid, n, m->start);
	if (m->shared && (m->prot & PROT_WRITE))
		return refuse(why, whylen,
		              "pid %d has a writable shared mapping of %s at %#" PRIx64
		              "; writable shared file mappings are not migrated",
		              pid, n, m->start);
	snprintf(link, sizeof(link), "map_files/%" PRIx64 "-%" PRIx64, m->start, m->end);
	hit = map_file_cache_hit(cache, m, path != NULL);
	if (hit)
		*st = cache->st;
	ret = hit ? 0 : procfs_stat_link(pid, link, st);
	if (ret == -ENOENT) {
		*skip = true; /* unmapped meanwhile (the check runs on a live process) */
		return 0;
	}
	if (ret) {
		pr_err("pid %d: stat of %s (%s) failed: %s", pid, link, n, strerror(-ret));
		return ret;
	}
	if (!S_ISREG(st->st_mode)) {
		if (!m->shared && S_ISCHR(st->st_mode) && major(st->st_rdev) == 1 &&
		    minor(st->st_rdev) == 5)
			return 0; /* private /dev/zero: anonymous memory */
		return refuse(why, whylen,
		              "pid %d maps %s at %#" PRIx64 ", which is not a regular file; "
		              "device and special mappings are not migrated",
		              pid, n, m->start);
	}
	if (st->st_nlink == 0)
		return refuse(why, whylen,
		              "pid %d maps a deleted file (%s) at %#" PRIx64
		              "; it cannot be mapped again on the destination",
		              pid, n, m->start);
	*kind = m->shared ? RDMIG_VMA_FILE_SHARED_RO : RDMIG_VMA_FILE_PRIVATE;
	if (path && hit) {
		*path = strdup(cache->path);
		return *path ? 0 : -ENOMEM;
	}
	if (path) {
		ret = procfs_readlink(pid, link, path);
		if (ret)
			return ret;
		if ((*path)[0] != '/' || ends_with(*path, DELETED_SUFFIX)) {
			pr_err("pid %d: %s links to '%s'", pid, link, *path);
			free(*path);
			*path = NULL;
			return -EIO;
		}
	}
	if (cache && !hit) {
		map_file_cache_free(cache);
		*cache = (struct map_file_cache){.valid = true,
		                                 .dev_major = m->dev_major,
		                                 .dev_minor = m->dev_minor,
		                                 .ino = m->ino,
		                                 .st = *st};
		if (path && !(cache->path = strdup(*path)))
			cache->valid = false; /* no copy: the next one asks again */
	}
	return 0;
}

/* A live child of any of pid's threads (/proc/PID/task/TID/children), 0 when
 * none, -errno when it cannot be read. */
static int first_child(pid_t pid)
{
	char path[96], buf[64];
	struct dirent *de;
	int child = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return -errno;
	while (!child && (de = readdir(d))) {
		FILE *f;

		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.20s/children", (int)pid, de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue; /* the thread exited meanwhile */
		if (fscanf(f, "%63s", buf) == 1)
			child = atoi(buf);
		fclose(f);
	}
	closedir(d);
	return child;
}

/* The check. seized: rdmig_capture runs it inside the freeze, so TracerPid may
 * be us, and the descriptors and mappings are left to capture_fds and
 * capture_maps, which classify each one again with the same refusals (reading
 * and classifying them twice cost ~0.3 ms of the downtime). */
static int check(pid_t pid, bool seized, char *why, size_t whylen)
{
	struct procfs_status sta;
	struct procfs_stat stt;
	struct procfs_fd *fds = NULL;
	struct procfs_map *maps = NULL;
	struct map_file_cache fc = {0};
	size_t nfds = 0, nmaps = 0;
	uint32_t ntasks;
	char *root = NULL;
	int ret;

	if (why && whylen)
		why[0] = '\0';
	ret = procfs_stat(pid, &stt);
	if (ret)
		return ret;
	if (stt.flags & PROCFS_PF_KTHREAD)
		return refuse(why, whylen, "pid %d is a kernel thread", pid);
	ret = procfs_status(pid, &sta);
	if (ret)
		return ret;
	if (sta.state == 'Z' || sta.state == 'X') {
		ret = refuse(why, whylen, "pid %d is a zombie (it has exited)", pid);
		goto out_free;
	}
	ret = procfs_task_count(pid, &ntasks);
	if (ret)
		goto out_free;
	if (ntasks > RDMIG_IMG_MAX_THREADS || sta.threads > RDMIG_IMG_MAX_THREADS) {
		ret = refuse(why, whylen, "pid %d has %u threads; at most %u can be migrated", pid,
		             ntasks, RDMIG_IMG_MAX_THREADS);
		goto out_free;
	}
	if (sta.tracer && !(seized && (sta.tracer == getpid() || sta.tracer == gettid()))) {
		ret = refuse(why, whylen,
		             "pid %d is being traced by pid %d (a debugger?); detach it first", pid,
		             sta.tracer);
		goto out_free;
	}
	ret = first_child(pid);
	if (ret != 0) {
		if (ret > 0)
			ret = refuse(why, whylen,
			             "pid %d has a child process (pid %d); this version migrates "
			             "a process without live children (they would be left "
			             "behind): wait until they have exited",
			             pid, ret);
		goto out_free;
	}
	if (sta.seccomp) {
		ret = refuse(why, whylen,
		             "pid %d runs under seccomp (mode %u); seccomp filters are not "
		             "migrated",
		             pid, sta.seccomp);
		goto out_free;
	}
	ret = procfs_readlink(pid, "root", &root);
	if (ret)
		goto out_free;
	if (strcmp(root, "/")) {
		ret = refuse(why, whylen,
		             "pid %d runs with root directory %s (chroot or container); only / "
		             "is supported",
		             pid, root);
		goto out_free;
	}
	free(root);
	ret = procfs_readlink(pid, "cwd", &root);
	if (ret)
		goto out_free;
	if (ends_with(root, DELETED_SUFFIX)) {
		ret = refuse(why, whylen,
		             "pid %d works in a deleted directory (%s); it cannot be entered on "
		             "the destination",
		             pid, root);
		goto out_free;
	}
	ret = 0;
	if (seized)
		goto out_free;
	ret = procfs_fds(pid, &fds, &nfds);
	if (ret)
		goto out_free;
	for (size_t i = 0; i < nfds; i++) {
		uint32_t kind;
		struct stat st;

		ret = classify_fd(pid, &fds[i], &kind, &st, why, whylen);
		if (ret < 0)
			goto out_free;
	}
	ret = procfs_maps(pid, &maps, &nmaps);
	if (ret)
		goto out_free;
	for (size_t i = 0; i < nmaps; i++) {
		uint32_t kind, flags;
		bool skip;
		struct stat st;

		ret =
		    classify_map(pid, &maps[i], &kind, &flags, &skip, &st, NULL, &fc, why, whylen);
		if (ret)
			goto out_free;
	}
	ret = 0;
out_free:
	map_file_cache_free(&fc);
	procfs_maps_free(maps, nmaps);
	procfs_fds_free(fds, nfds);
	free(root);
	procfs_status_free(&sta);
	return ret;
}

int rdmig_capture_check_wire(pid_t pid, char *why, size_t whylen)
{
	const uint64_t max = RDMIG_IMG_MAX_TOUCHED_BYTES * 8 * RDMIG_IMG_PAGE;
	struct procfs_map *maps = NULL;
	size_t n = 0;
	int ret = procfs_maps(pid, &maps, &n);

	for (size_t i = 0; i < n && !ret; i++) {
		const struct procfs_map *m = &maps[i];

		/* the image's page bitmaps (and the destination's page states) grow
		 * with a mapping's size, not with what it uses */
		if (!m->shared && (!m->name || m->name[0] != '/') && m->end - m->start > max)
			ret = refuse(why, whylen,
			             "pid %d has a private anonymous mapping of %" PRIu64
			             " GiB at %#" PRIx64 " (a sanitizer's shadow memory?); this "
			             "version moves mappings of at most %" PRIu64 " GiB",
			             pid, (m->end - m->start) >> 30, m->start, max >> 30);
	}
	procfs_maps_free(maps, n);
	return ret;
}

int rdmig_capture_check(pid_t pid, char *why, size_t whylen)
{
	return check(pid, false, why, whylen);
}

/* ---- capture: ptrace ---- */

static int peek_siginfo(pid_t pid, unsigned flags, uint8_t **out, uint32_t *n)
{
	struct __ptrace_peeksiginfo_args a = {0, flags, 32};
	uint8_t *buf = NULL;
	uint32_t cnt = 0;

	*out = NULL;
	*n = 0;
	for (;;) {
		uint8_t *nb = realloc(buf, (cnt + 32) * RDMIG_IMG_SIGINFO);

		if (!nb) {
			free(buf);
			return -ENOMEM;
		}
		buf = nb;
		a.off = cnt;
		long r = ptrace(PTRACE_PEEKSIGINFO, pid, &a, buf + (size_t)cnt * RDMIG_IMG_SIGINFO);

		if (r < 0) {
			int err = -errno;

			free(buf);
			pr_err("pid %d: PTRACE_PEEKSIGINFO failed: %s", pid, strerror(-err));
			return err;
		}
		cnt += (uint32_t)r;
		if (cnt > RDMIG_IMG_MAX_SIGINFO) {
			free(buf);
			pr_err("pid %d: more than %u queued signals", pid, RDMIG_IMG_MAX_SIGINFO);
			return -E2BIG;
		}
		if (r < 32)
			break;
	}
	if (!cnt) {
		free(buf);
		buf = NULL;
	}
	*out = buf;
	*n = cnt;
	return 0;
}

/* SIGTRAPs sent to the thread while we held it: the kernel dequeued them at a
 * stop of ours (tracee.c), so PEEKSIGINFO misses them; they are pending all the
 * same, after the ones it lists. */
static int add_held_signals(struct rdmig_tracee *t, unsigned i, struct rdmig_img_thread *th)
{
	const siginfo_t *held;
	unsigned n;
	uint8_t *nb;
	int ret = rdmig_tracee_held_signals(t, i, &held, &n);

	if (ret || !n)
		return ret;
	_Static_assert(sizeof(siginfo_t) == RDMIG_IMG_SIGINFO, "siginfo_t");
	if (th->nsiginfo + n > RDMIG_IMG_MAX_SIGINFO)
		return -E2BIG;
	nb = realloc(th->siginfo, (size_t)(th->nsiginfo + n) * RDMIG_IMG_SIGINFO);
	if (!nb)
		return -ENOMEM;
	memcpy(nb + (size_t)th->nsiginfo * RDMIG_IMG_SIGINFO, held, (size_t)n * RDMIG_IMG_SIGINFO);
	th->siginfo = nb;
	th->nsiginfo += n;
	return 0;
}

static int capture_ptrace_thread(struct rdmig_tracee *t, struct rdmig_image *img, unsigned i)
{
	pid_t pid = rdmig_tracee_tid(t, i);
	struct rdmig_img_thread *th = &img->threads[i];
	struct rseq_conf rc = {0};
	size_t xlen = 0;
	long head = 0;
	size_t rlen = 0;
	int ret;

	_Static_assert(sizeof(struct user_regs_struct) == RDMIG_IMG_NREGS * 8, "user_regs_struct");
	memcpy(th->regs, rdmig_tracee_saved_regs(t), sizeof(th->regs));
	th->xstate = malloc(RDMIG_IMG_MAX_XSTATE);
	if (!th->xstate)
		return -ENOMEM;
	ret = rdmig_tracee_get_xstate(t, th->xstate, RDMIG_IMG_MAX_XSTATE, &xlen);
	if (ret) {
		pr_err("pid %d: reading xstate failed: %s", pid, strerror(-ret));
		return ret;
	}
	th->xstate_len = (uint32_t)xlen;
	ret = rdmig_tracee_get_sigmask(t, &th->sigmask);
	if (ret)
		return ret;
	if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, (void *)sizeof(rc), &rc) < 0) {
		ret = -errno;
		pr_err("pid %d: PTRACE_GET_RSEQ_CONFIGURATION failed: %s", pid, strerror(-ret));
		return ret;
	}
	if (rc.rseq_abi_pointer) {
		th->rseq_addr = rc.rseq_abi_pointer;
		th->rseq_len = rc.rseq_abi_size;
		th->rseq_sig = rc.signature;
	}
	ret = peek_siginfo(pid, 0, &th->siginfo, &th->nsiginfo);
	if (ret)
		return ret;
	ret = add_held_signals(t, i, th);
	if (ret)
		return ret;
	if (i == 0) {
		ret = peek_siginfo(pid, PTRACE_PEEKSIGINFO_SHARED, &img->siginfo_shared,
		                   &img->nsiginfo_shared);
		if (ret)
			return ret;
	}
	if (syscall(SYS_get_robust_list, pid, &head, &rlen) < 0) {
		ret = -errno;
		pr_err("pid %d: get_robust_list failed: %s", pid, strerror(-ret));
		return ret;
	}
	th->robust_head = (uint64_t)head;
	th->robust_len = head ? rlen : 0;
	return 0;
}

#define GLIBC_PTHREAD_TID_OFFSET 0x2d0u /* offsetof(struct pthread, tid), glibc 2.36 x86_64 */

/* Each thread's registers and state; its tid cache when the layout checks out
 * (see the file comment). */
static int capture_ptrace(struct rdmig_tracee *t, struct rdmig_image *img, char *why, size_t whylen)
{
	int ret = 0;

	for (unsigned i = 0; !ret && i < img->nthreads; i++) {
		struct rdmig_img_thread *th = &img->threads[i];
		uint64_t fs, a;
		int32_t v = 0;

		ret = rdmig_tracee_select(t, i);
		if (!ret)
			ret = capture_ptrace_thread(t, img, i);
		if (ret)
			break;
		fs = th->regs[offsetof(struct user_regs_struct, fs_base) / 8];
		a = fs + GLIBC_PTHREAD_TID_OFFSET;
		if (fs && a > fs && !rdmig_tracee_read(t, a, &v, sizeof(v)) && v == th->tid)
			th->tid_cache = a;
		else if (img->nthreads > 1)
			ret =
			    refuse(why, whylen,
			           "pid %d: thread %d does not keep its tid where glibc 2.36 does "
			           "(fs_base %#" PRIx64 " + %#x holds %d): not a glibc thread "
			           "layout this version can migrate",
			           img->pid, th->tid, fs, GLIBC_PTHREAD_TID_OFFSET, (int)v);
	}
	if (rdmig_tracee_select(t, 0) && !ret)
		ret = -EIO;
	return ret;
}

/* Each thread's comm, from /proc/PID/task/TID/comm. */
static int capture_thread_names(pid_t pid, struct rdmig_image *img)
{
	for (uint32_t i = 0; i < img->nthreads; i++) {
		char what[64], *buf = NULL;
		size_t len = 0;
		int ret;

		snprintf(what, sizeof(what), "task/%d/comm", (int)img->threads[i].tid);
		ret = procfs_read(pid, what, 64, &buf, &len);
		if (ret)
			return ret;
		if (len == 0 || len > sizeof(img->threads[i].comm) || buf[len - 1] != '\n') {
			pr_err("pid %d: %s of %zu bytes does not parse", pid, what, len);
			free(buf);
			return -EIO;
		}
		memcpy(img->threads[i].comm, buf, len - 1);
		img->threads[i].comm[len - 1] = '\0';
		free(buf);
	}
	return 0;
}

static int cow_cmp(const void *a, const void *b)
{
	const struct rdmig_img_cow_page *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* Pages the restore or the kernel writes before the pager runs go eagerly (COW
 * list): the tid caches (rewritten with the new tids) and the rseq areas (the
 * kernel writes cpu_id there as soon as rseq is registered). A page made present
 * any other way would hide the real one from the pager forever. An ANON one is
 * no longer marked touched: the restore writes it whole, the pager never
 * fetches it. */
static int add_eager_page(struct rdmig_tracee *t, struct rdmig_image *img, uint64_t addr,
                          const char *what, int tid, uint32_t *added)
{
	uint64_t pg = addr & ~(uint64_t)(RDMIG_IMG_PAGE - 1);
	const struct rdmig_img_vma *cv;
	struct rdmig_img_vma *v;
	struct rdmig_img_cow_page *n;
	int ret;

	for (uint32_t k = 0; k < img->ncow; k++)
		if (img->cow[k].addr == pg)
			return 0;
	cv = rdmig_image_vma_at(img, pg);
	if (!cv || (cv->kind != RDMIG_VMA_ANON && cv->kind != RDMIG_VMA_FILE_PRIVATE)) {
		pr_err("pid %d: thread %d keeps its %s at %#" PRIx64 " outside private memory",
		       img->pid, tid, what, addr);
		return -EOPNOTSUPP;
	}
	v = &img->vmas[cv - img->vmas];
	n = realloc(img->cow, (img->ncow + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	img->cow = n;
	n[img->ncow].addr = pg;
	n[img->ncow].ahead = false;
	ret = rdmig_tracee_read(t, pg, n[img->ncow].data, RDMIG_IMG_PAGE);
	if (ret)
		return ret;
	img->ncow++;
	(*added)++;
	if (v->kind == RDMIG_VMA_ANON && v->touched) {
		uint64_t p = (pg - v->start) / RDMIG_IMG_PAGE;

		v->touched[p / 8] &= (uint8_t) ~(1u << (p % 8));
	}
	return 0;
}

static int open_proc(pid_t pid, const char *name, int *fd);

/* Is the page at addr an ANON page with data on the source? In a held vma
 * (not walked yet) the one page is walked here; *pm_fd is opened on first use. */
static bool anon_touched(const struct rdmig_image *img, uint64_t addr, int *pm_fd)
{
	const struct rdmig_img_vma *v = rdmig_image_vma_at(img, addr);
	uint64_t p;

	if (v && v->kind == RDMIG_VMA_ANON && (v->flags & RDMIG_VMA_F_HELD)) {
		uint8_t bit = 0;
		uint64_t count = 0;
		bool known;

		if (*pm_fd < 0 && open_proc(img->pid, "pagemap", pm_fd))
			return true; /* cannot tell: sending the page eagerly is always right */
		return rdmig_pagescan(*pm_fd, addr, addr + RDMIG_IMG_PAGE, false, &bit, &count,
		                      NULL, &known) < 0 ||
		       count;
	}
	if (!v || v->kind != RDMIG_VMA_ANON || !v->touched)
		return false;
	p = (addr - v->start) / RDMIG_IMG_PAGE;
	return v->touched[p / 8] >> (p % 8) & 1;
}

/* The top of each thread's stack: the first thing a thread does when it runs on
 * the destination is return, push or spill there, and a fetch of that page, right
 * at the resume while the prefetcher fills the link, took 1.5-2.5 ms here (the
 * workload's pause across the switch). First pass: the page at the stack pointer
 * and the one below it (the red zone, a call: a printf() needed more than the
 * 864 bytes left below one thread's stack pointer in its page). Second pass: the pages
 * above it, where the callers' frames are that the thread returns into (a
 * thread frozen inside a call faulted on its caller's page two pages up, 0.3 ms
 * after its first fetch, in one run in three). Only pages that hold data; at
 * most EAGER_STACK_PAGES in all (every page is in the image the downtime
 * carries), the first threads first (the leader: the one that runs the
 * program's main loop in most programs), so a process with thousands of
 * threads does not make its image that much bigger. */
#define EAGER_STACK_PAGES 48u
#define EAGER_STACK_BELOW 4096u /* the page below the stack pointer's, always */
#define EAGER_STACK_ABOVE 4u    /* pages above the stack pointer's */

static int eager_stack_page(struct rdmig_tracee *t, struct rdmig_image *img, uint32_t i,
                            uint64_t pg, int *pm_fd, uint32_t *n, uint32_t *added)
{
	if (*n >= EAGER_STACK_PAGES || !anon_touched(img, pg, pm_fd))
		return 0;
	(*n)++;
	return add_eager_page(t, img, pg, "stack top", img->threads[i].tid, added);
}

static int capture_eager_stacks(struct rdmig_tracee *t, struct rdmig_image *img, uint32_t *added)
{
	const uint64_t pmask = ~(uint64_t)(RDMIG_IMG_PAGE - 1);
	uint32_t n = 0;
	int ret = 0, pm_fd = -1;

	for (uint32_t i = 0; i < img->nthreads && !ret; i++) {
		uint64_t sp = img->threads[i].regs[offsetof(struct user_regs_struct, rsp) / 8];

		if (sp < EAGER_STACK_BELOW)
			continue;
		ret = eager_stack_page(t, img, i, sp & pmask, &pm_fd, &n, added);
		if (!ret && ((sp - EAGER_STACK_BELOW) & pmask) != (sp & pmask))
			ret = eager_stack_page(t, img, i, (sp - EAGER_STACK_BELOW) & pmask, &pm_fd,
			                       &n, added);
	}
	for (uint32_t i = 0; i < img->nthreads && !ret; i++) {
		uint64_t sp = img->threads[i].regs[offsetof(struct user_regs_struct, rsp) / 8];
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, sp);

		/* within the stack's mapping: above its end is another mapping */
		for (uint64_t k = 1, pg = (sp & pmask) + RDMIG_IMG_PAGE;
		     v && k <= EAGER_STACK_ABOVE && pg < v->end && !ret; k++, pg += RDMIG_IMG_PAGE)
			ret = eager_stack_page(t, img, i, pg, &pm_fd, &n, added);
	}
	if (pm_fd >= 0)
		close(pm_fd);
	return ret;
}

int64_t rdmig_capture_walk_part(int pm_fd, const struct rdmig_image *img, struct rdmig_img_vma *v,
                                uint64_t start, uint64_t end, bool *written_known)
{
	uint64_t pages = (v->end - v->start) / RDMIG_IMG_PAGE, off, count = 0;
	int ret;

	off = (start - v->start) / RDMIG_IMG_PAGE;
	if (v->kind != RDMIG_VMA_ANON || start < v->start || end > v->end || start >= end ||
	    (start | end) % RDMIG_IMG_PAGE || off % 8)
		return -EINVAL;
	if (!v->touched)
		v->touched = calloc((pages + 7) / 8, 1);
	if (!v->written)
		v->written = calloc((pages + 7) / 8, 1);
	if (!v->touched || !v->written)
		return -ENOMEM;
	ret = rdmig_pagescan(pm_fd, start, end, false, v->touched + off / 8, &count,
	                     v->written + off / 8, written_known);
	if (ret < 0)
		return ret;
	/* the restore wrote these whole (add_eager_page): never fetched */
	for (uint32_t k = 0; k < img->ncow; k++) {
		uint64_t a = img->cow[k].addr, p = (a - v->start) / RDMIG_IMG_PAGE;

		if (a < start || a >= end || !(v->touched[p / 8] >> (p % 8) & 1))
			continue;
		v->touched[p / 8] &= (uint8_t) ~(1u << (p % 8));
		count--;
	}
	return (int64_t)count;
}

static int capture_eager_pages(struct rdmig_tracee *t, struct rdmig_image *img)
{
	uint32_t added = 0;
	int ret = 0;

	for (uint32_t i = 0; i < img->nthreads && !ret; i++) {
		const struct rdmig_img_thread *th = &img->threads[i];

		if (th->tid_cache)
			ret = add_eager_page(t, img, th->tid_cache, "tid", th->tid, &added);
		/* both ends: an area is 32-byte aligned, but its length is the
		 * runtime's to choose */
		if (!ret && th->rseq_len)
			ret = add_eager_page(t, img, th->rseq_addr, "rseq area", th->tid, &added);
		if (!ret && th->rseq_len)
			ret = add_eager_page(t, img, th->rseq_addr + th->rseq_len - 1, "rseq area",
			                     th->tid, &added);
	}
	if (!ret)
		ret = capture_eager_stacks(t, img, &added);
	if (added)
		qsort(img->cow, img->ncow, sizeof(*img->cow), cow_cmp);
	return ret;
}

/* ---- capture: /proc ---- */

/* *set_sigs: the signals with a handler or ignored (SigCgt | SigIgn), for
 * capture_injected. */
static int capture_proc(pid_t pid, struct rdmig_image *img, uint64_t *set_sigs)
{
	struct procfs_status sta;
	struct procfs_stat stt;
	char *buf = NULL;
	size_t len;
	int ret;

	ret = procfs_stat(pid, &stt);
	if (ret)
		return ret;
	stt.mm.brk = img->mm.brk;
	img->mm = stt.mm;
	ret = procfs_status(pid, &sta);
	if (ret)
		return ret;
	memcpy(img->creds.uid, sta.uid, sizeof(sta.uid));
	memcpy(img->creds.gid, sta.gid, sizeof(sta.gid));
	img->creds.ngroups = sta.ngroups;
	img->creds.groups = sta.groups;
	sta.groups = NULL;
	img->creds.cap_inh = sta.cap_inh;
	img->creds.cap_prm = sta.cap_prm;
	img->creds.cap_eff = sta.cap_eff;
	img->creds.cap_bnd = sta.cap_bnd;
	img->creds.cap_amb = sta.cap_amb;
	img->creds.no_new_privs = sta.no_new_privs;
	img->umask = sta.umask;
	*set_sigs = sta.sig_cgt | sta.sig_ign;
	procfs_status_free(&sta);

	for (int r = 0; r < (int)RDMIG_IMG_NRLIMIT; r++) {
		struct rlimit rl;

		if (prlimit(pid, (enum __rlimit_resource)r, NULL, &rl) == 0) {
			img->rlim_cur[r] = rl.rlim_cur;
			img->rlim_max[r] = rl.rlim_max;
			continue;
		}
		ret = -errno;
		if (ret != -EPERM) {
			pr_err("pid %d: prlimit(%d) failed: %s", pid, r, strerror(-ret));
			return ret;
		}
		/* reading another user's limits with prlimit() needs CAP_SYS_RESOURCE,
		 * which these hosts' root lacks; /proc/PID/limits needs no capability */
		ret = procfs_limits(pid, img->rlim_cur, img->rlim_max);
		if (ret)
			return ret;
		break;
	}
	ret = procfs_readlink(pid, "cwd", &img->cwd);
	if (!ret && (img->cwd[0] != '/' || ends_with(img->cwd, DELETED_SUFFIX))) {
		pr_err("pid %d: cwd '%s' is not a path that exists", pid, img->cwd);
		ret = -EIO;
	}
	if (!ret)
		ret = procfs_readlink(pid, "exe", &img->exe);
	if (!ret && img->exe[0] != '/') {
		pr_err("pid %d: exe '%s' is not a path", pid, img->exe);
		ret = -EIO;
	}
	if (!ret)
		ret = procfs_personality(pid, &img->personality);
	if (ret)
		return ret;

	ret = procfs_read(pid, "comm", 64, &buf, &len);
	if (ret)
		return ret;
	if (len == 0 || len > sizeof(img->comm) || buf[len - 1] != '\n') {
		pr_err("pid %d: comm of %zu bytes does not parse", pid, len);
		free(buf);
		return -EIO;
	}
	memcpy(img->comm, buf, len - 1);
	img->comm[len - 1] = '\0';
	free(buf);

	ret = procfs_read(pid, "auxv", RDMIG_IMG_MAX_AUXV, &buf, &len);
	if (ret)
		return ret;
	if (len < 16 || len % 16 || capture_le64((uint8_t *)buf + len - 16) != 0) {
		pr_err("pid %d: auxv of %zu bytes does not end with AT_NULL", pid, len);
		free(buf);
		return -EIO;
	}
	img->auxv = (uint8_t *)buf;
	img->auxv_len = (uint32_t)len;
	return 0;
}

/* ---- capture: memory map, pages, descriptors ---- */

/* The index of the file (dedup by dev, ino and path), added when new. */
static int file_index(struct rdmig_image *img, uint32_t *cap, const char *path,
                      const struct stat *st, uint32_t *idx)
{
	for (uint32_t i = 0; i < img->nfiles; i++) {
		const struct rdmig_img_file *f = &img->files[i];

		if (f->dev == st->st_dev && f->ino == st->st_ino && !strcmp(f->path, path)) {
			*idx = i;
			return 0;
		}
	}
	if (img->nfiles >= RDMIG_IMG_MAX_FILES)
		return -E2BIG;
	if (strlen(path) > RDMIG_IMG_MAX_PATH) {
		pr_err("path longer than %u bytes: %.80s...", RDMIG_IMG_MAX_PATH, path);
		return -ENAMETOOLONG;
	}
	if (img->nfiles == *cap) {
		uint32_t nc = *cap ? 2 * *cap : 16;
		struct rdmig_img_file *nf = realloc(img->files, nc * sizeof(*nf));

		if (!nf)
			return -ENOMEM;
		img->files = nf;
		*cap = nc;
	}
	struct rdmig_img_file *f = &img->files[img->nfiles];

	*f = (struct rdmig_img_file){
	    .path = strdup(path),
	    .dev = (uint64_t)st->st_dev,
	    .ino = (uint64_t)st->st_ino,
	    .size = (uint64_t)st->st_size,
	    .mtime_sec = (int64_t)st->st_mtim.tv_sec,
	    .mtime_nsec = (uint32_t)st->st_mtim.tv_nsec,
	    .mode = (uint32_t)st->st_mode,
	};
	if (!f->path)
		return -ENOMEM;
	*idx = img->nfiles++;
	return 0;
}

/* The page at addr among the known ones (sorted by address), or NULL. */
static const struct rdmig_img_cow_page *known_page(const struct rdmig_capture_known *kn,
                                                   uint64_t addr)
{
	uint32_t lo = 0, hi = kn->n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (kn->pages[mid].addr == addr)
			return &kn->pages[mid];
		if (kn->pages[mid].addr < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Is every vma of [start, end) still registered for write tracking with the
 * tracking uffd (WP_ASYNC)? A mapping replaced or moved since
 * rdmig_precopy_track_files is not: its PAGEMAP_SCAN entries say nothing of
 * writes since. PM_SCAN_CHECK_WPASYNC refuses (-EPERM) a range that is not, and
 * one page of output is enough to ask. */
static bool still_tracked(int pm_fd, uint64_t start, uint64_t end)
{
	struct page_region r;
	struct pm_scan_arg a = {
	    .size = sizeof(a),
	    .flags = PM_SCAN_CHECK_WPASYNC,
	    .start = start,
	    .end = end,
	    .vec = (uint64_t)(uintptr_t)&r,
	    .vec_len = 1,
	    .max_pages = 1,
	    .return_mask = PAGE_IS_WRITTEN,
	};

	return ioctl(pm_fd, PAGEMAP_SCAN, &a) >= 0;
}

/* Copy the anonymous pages of a private file mapping into img->cow: through
 * the tracee, or (t NULL, the layout of a process that runs) from mem_fd, where
 * a page that cannot be read is left out (it travels with the image). With
 * written (the mapping still tracked, see rdmig_capture), a page not written
 * since the known ones were read is taken from them. */
static int capture_cow(struct rdmig_tracee *t, int mem_fd, struct rdmig_image *img, uint32_t *cap,
                       const struct rdmig_img_vma *v, const uint8_t *bits, const uint8_t *written,
                       const struct rdmig_capture_known *kn, uint32_t *taken)
{
	uint64_t pages = (v->end - v->start) / 4096;

	for (uint64_t i = 0; i < pages; i++) {
		if (!(bits[i / 8] & (1u << (i % 8))))
			continue;
		if (img->ncow >= RDMIG_IMG_MAX_COW_PAGES) {
			pr_err("more than %u written pages in private file mappings",
			       RDMIG_IMG_MAX_COW_PAGES);
			return -E2BIG;
		}
		if (img->ncow == *cap) {
			uint32_t nc = *cap ? 2 * *cap : 16;
			struct rdmig_img_cow_page *n = realloc(img->cow, nc * sizeof(*n));

			if (!n)
				return -ENOMEM;
			img->cow = n;
			*cap = nc;
		}
		struct rdmig_img_cow_page *c = &img->cow[img->ncow];

		c->addr = v->start + i * 4096;
		c->ahead = false;
		if (written && !(written[i / 8] & (1u << (i % 8)))) {
			const struct rdmig_img_cow_page *k = known_page(kn, c->addr);

			if (k) {
				memcpy(c->data, k->data, sizeof(c->data));
				img->ncow++;
				(*taken)++;
				continue;
			}
		}
		if (!t) {
			if (pread(mem_fd, c->data, sizeof(c->data), (off_t)c->addr) ==
			    (ssize_t)sizeof(c->data))
				img->ncow++;
			continue;
		}
		int ret = rdmig_tracee_read(t, c->addr, c->data, sizeof(c->data));

		if (ret) {
			pr_err("reading the written page at %#" PRIx64 " failed: %s", c->addr,
			       strerror(-ret));
			return ret;
		}
		img->ncow++;
	}
	return 0;
}

/* The vdso's bytes: through the tracee, or mem_fd (/proc/PID/mem) for a process
 * that runs. */
static int read_vdso(struct rdmig_tracee *t, int mem_fd, uint64_t addr, void *buf, size_t len)
{
	ssize_t n;

	if (t)
		return rdmig_tracee_read(t, addr, buf, len);
	n = pread(mem_fd, buf, len, (off_t)addr);
	return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

/* /proc/PID/<name>, read-only: *fd, or -errno (logged). */
static int open_proc(pid_t pid, const char *name, int *fd)
{
	char path[64];
	int ret;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd >= 0)
		return 0;
	ret = -errno;
	pr_err("opening %s failed: %s", path, strerror(-ret));
	return ret;
}

/* With t NULL (rdmig_capture_layout): the map, its files, and the written pages
 * of private file mappings as they are now (the source compares them at the
 * freeze and sends only those that changed); no anonymous pages. */
static int capture_maps(pid_t pid, struct rdmig_tracee *t, struct rdmig_image *img,
                        const struct rdmig_capture_known *kn, uint32_t *files_cap, char *why,
                        size_t whylen)
{
	struct procfs_map *maps = NULL;
	struct map_file_cache fc = {0};
	size_t nmaps = 0;
	uint32_t cow_cap = 0, taken = 0;
	uint8_t *bits = NULL, *written = NULL;
	int pm_fd, mem_fd = -1, ret;

	ret = open_proc(pid, "pagemap", &pm_fd);
	if (ret)
		return ret;
	if (!t && (ret = open_proc(pid, "mem", &mem_fd)))
		goto out_close;
	ret = procfs_maps(pid, &maps, &nmaps);
	if (ret)
		goto out_close;
	if (nmaps > RDMIG_IMG_MAX_VMAS) {
		pr_err("pid %d has %zu mappings, more than %u", pid, nmaps, RDMIG_IMG_MAX_VMAS);
		ret = -E2BIG;
		goto out_free;
	}
	img->vmas = calloc(nmaps ? nmaps : 1, sizeof(*img->vmas));
	if (!img->vmas) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (size_t i = 0; i < nmaps; i++) {
		const struct procfs_map *m = &maps[i];
		struct rdmig_img_vma *v = &img->vmas[img->nvmas];
		uint32_t kind, flags;
		bool skip;
		struct stat st;
		char *fpath = NULL;

		ret = classify_map(pid, m, &kind, &flags, &skip, &st, &fpath, &fc, why, whylen);
		if (ret)
			goto out_free;
		if (skip)
			continue;
		if (m->end > RDMIG_IMG_USER_END) {
			pr_err("pid %d: mapping %#" PRIx64 "-%#" PRIx64 " beyond user space", pid,
			       m->start, m->end);
			free(fpath);
			ret = -EIO;
			goto out_free;
		}
		*v = (struct rdmig_img_vma){
		    .start = m->start,
		    .end = m->end,
		    .prot = m->prot,
		    .kind = kind,
		    .flags = flags,
		    .file = UINT32_MAX,
		};
		img->nvmas++;
		if (fpath) {
			v->pgoff = m->pgoff;
			ret = file_index(img, files_cap, fpath, &st, &v->file);
			free(fpath);
			if (ret)
				goto out_free;
		}
		if (kind == RDMIG_VMA_VDSO) {
			uint64_t len = m->end - m->start;

			if (len > RDMIG_IMG_MAX_VDSO || img->vdso) {
				pr_err("pid %d: [vdso] of %" PRIu64 " bytes, or two", pid, len);
				ret = -EIO;
				goto out_free;
			}
			img->vdso = malloc(len);
			if (!img->vdso) {
				ret = -ENOMEM;
				goto out_free;
			}
			img->vdso_len = (uint32_t)len;
			ret = read_vdso(t, mem_fd, m->start, img->vdso, len);
			if (ret)
				goto out_free;
		}
		if (kind != RDMIG_VMA_FILE_PRIVATE && (!t || kind != RDMIG_VMA_ANON))
			continue;
		if (kind == RDMIG_VMA_ANON && kn && kn->hold_anon) {
			v->flags |= RDMIG_VMA_F_HELD; /* walked after the resume */
			continue;
		}
		uint64_t pages = (m->end - m->start) / 4096, count;

		bool known = false;

		/* written for a private file mapping only where known pages may
		 * spare reading it */
		bool want_written = kind == RDMIG_VMA_ANON || (t && kn && kn->n);

		bits = calloc((pages + 7) / 8, 1);
		if (want_written)
			written = calloc((pages + 7) / 8, 1);
		if (!bits || (want_written && !written)) {
			ret = -ENOMEM;
			goto out_free;
		}
		ret = rdmig_pagescan(pm_fd, m->start, m->end, kind == RDMIG_VMA_FILE_PRIVATE, bits,
		                     &count, written, &known);
		if (ret)
			goto out_free;
		if (kind == RDMIG_VMA_FILE_PRIVATE) {
			bool use =
			    written && known && count && still_tracked(pm_fd, m->start, m->end);

			ret = capture_cow(t, mem_fd, img, &cow_cap, v, bits, use ? written : NULL,
			                  kn, &taken);
			if (ret)
				goto out_free;
		} else if (count) {
			v->touched = bits;
			bits = NULL;
			if (known) {
				v->written = written;
				written = NULL;
			}
		}
		free(bits);
		bits = NULL;
		free(written);
		written = NULL;
	}
	if (t && kn && kn->n)
		pr_info("pid %d: %u of %u written file pages not written since the layout read "
		        "them: not read again",
		        pid, taken, img->ncow);
	ret = 0;
out_free:
	free(bits);
	free(written);
	map_file_cache_free(&fc);
	procfs_maps_free(maps, nmaps);
out_close:
	if (mem_fd >= 0)
		close(mem_fd);
	if (pm_fd >= 0)
		close(pm_fd);
	return ret;
}

static int capture_fds(pid_t pid, struct rdmig_image *img, uint32_t *files_cap, char *why,
                       size_t whylen)
{
	struct procfs_fd *fds = NULL;
	size_t nfds = 0;
	int ret;

	ret = procfs_fds(pid, &fds, &nfds);
	if (ret)
		return ret;
	img->fds = calloc(nfds ? nfds : 1, sizeof(*img->fds));
	if (!img->fds) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (size_t i = 0; i < nfds; i++) {
		const struct procfs_fd *f = &fds[i];
		struct rdmig_img_fd *d = &img->fds[img->nfds];
		struct stat st;
		uint32_t kind;

		ret = classify_fd(pid, f, &kind, &st, why, whylen);
		if (ret < 0)
			goto out_free;
		if (ret == 1) {
			/* the process is frozen: a descriptor cannot vanish */
			pr_err("pid %d fd %d vanished during the capture", pid, f->fd);
			ret = -EIO;
			goto out_free;
		}
		*d = (struct rdmig_img_fd){
		    .fd = f->fd,
		    .kind = kind,
		    .flags = f->flags,
		    .cloexec = !!(f->flags & O_CLOEXEC),
		    .pos = kind == RDMIG_FD_FILE ? f->pos : 0,
		    .file = UINT32_MAX,
		};
		if (kind != RDMIG_FD_STDIO) {
			ret = file_index(img, files_cap, f->target, &st, &d->file);
			if (ret)
				goto out_free;
		}
		img->nfds++;
	}
	ret = 0;
out_free:
	procfs_fds_free(fds, nfds);
	return ret;
}

int rdmig_capture(struct rdmig_tracee *t, struct rdmig_image *img,
                  const struct rdmig_capture_known *known, char *why, size_t whylen)
{
	pid_t pid = rdmig_tracee_pid(t);
	uint32_t files_cap = 0;
	struct rdmig_laps laps;
	uint64_t set_sigs = 0;
	const struct capture_calls *early;
	struct capture_calls asked = {0};
	bool begun = false;
	long self = 0;
	int ret, ret2, err;

	rdmig_laps_start(&laps);
	memset(img, 0, sizeof(*img));
	ret = check(pid, true, why, whylen);
	if (ret)
		return ret;
	img->pid = pid;
	img->nthreads = rdmig_tracee_nthreads(t);
	if (img->nthreads < 1 || img->nthreads > RDMIG_IMG_MAX_THREADS ||
	    rdmig_tracee_tid(t, 0) != pid) {
		ret = refuse(why, whylen, "pid %d: %u threads held, at most %u can be migrated",
		             pid, img->nthreads, RDMIG_IMG_MAX_THREADS);
		img->nthreads = 0;
		goto out_free_image;
	}
	img->threads = calloc(img->nthreads, sizeof(*img->threads));
	if (!img->threads) {
		img->nthreads = 0;
		ret = -ENOMEM;
		goto out_free_image;
	}
	for (unsigned i = 0; i < img->nthreads; i++)
		img->threads[i].tid = rdmig_tracee_tid(t, i);
	rdmig_laps_mark(&laps, "check");
	/* Answers asked at the tracking start that still hold: nothing to inject,
	 * and the thread need not run at all. */
	early = known && known->early ? capture_early_valid(known->early, t) : NULL;
	/* Otherwise the thread's first return to user mode after the freeze costs
	 * what the host makes it cost (see the file comment): it runs a getpid()
	 * on its own CPU while we read /proc here, and the injections that need
	 * their answers come after. */
	if (!early) {
		ret = rdmig_tracee_call_begin(t, "getpid", SYS_getpid, 0, 0, 0, 0, 0, 0);
		if (ret)
			goto out_free_image;
		begun = true;
	}
	ret = capture_proc(pid, img, &set_sigs);
	if (!ret)
		ret = capture_thread_names(pid, img);
	rdmig_laps_mark(&laps, "proc");
	if (!ret && early && !capture_early_sigs_match(known->early, set_sigs))
		early = NULL; /* asked below, without the getpid's head start */
	if (!ret)
		ret = capture_maps(pid, t, img, known, &files_cap, why, whylen);
	rdmig_laps_mark(&laps, "maps");
	if (!ret)
		ret = capture_fds(pid, img, &files_cap, why, whylen);
	rdmig_laps_mark(&laps, "fds");
	/* what is left of the wait, for the caller's work (the held walk) */
	if (!ret && begun && known && known->hold_anon && known->idle) {
		while (rdmig_tracee_call_running(t) && known->idle(known->idle_arg, img) > 0)
			;
		rdmig_laps_mark(&laps, "idle");
	}
	if (begun) {
		ret2 = rdmig_tracee_call_end(t, "getpid", &self);
		if (!ret && !ret2 && self != pid) {
			pr_err("pid %d: an injected getpid() answered %ld", pid, self);
			ret2 = -EIO;
		}
		rdmig_laps_mark(&laps, "resumed");
		if (!ret)
			ret = ret2;
	}
	if (ret)
		goto out_free_image;
	if (early) {
		ret = capture_calls_apply(early, img);
		if (!ret)
			ret = capture_ptrace(t, img, why, whylen);
	} else {
		/* Injected calls on one CPU with ours: two wake-ups each (tracee.c). */
		err = rdmig_tracee_colocate(t);
		if (err)
			pr_info("pid %d: injected calls not kept on one CPU: %s", pid,
			        strerror(-err));
		ret = capture_calls_ask(t, set_sigs, &asked);
		if (!ret)
			ret = capture_calls_apply(&asked, img);
		capture_calls_free(&asked);
		if (!ret)
			ret = capture_ptrace(t, img, why, whylen);
		(void)rdmig_tracee_uncolocate(t); /* a failure is logged: a speed-up's */
	}
	if (ret)
		goto out_free_image;
	rdmig_laps_mark(&laps, early ? "ptrace" : "injected");
	ret = capture_eager_pages(t, img);
	if (ret)
		goto out_free_image;
	rdmig_laps_mark(&laps, "eager");
	if (rdmig_log_get_level() >= RDMIG_LOG_INFO) {
		char line[512];

		rdmig_image_describe(img, line, sizeof(line));
		pr_info("%s", line);
		pr_info("pid %d: capture steps (ms): %s", pid, laps.line);
	}
	return 0;
out_free_image:
	rdmig_image_free(img);
	return ret;
}

int rdmig_capture_layout(pid_t pid, struct rdmig_image *img, char *why, size_t whylen)
{
	uint32_t files_cap = 0;
	uint64_t set_sigs; /* the layout has no signal actions */
	int ret;

	memset(img, 0, sizeof(*img));
	ret = check(pid, false, why, whylen);
	if (ret)
		return ret;
	img->pid = pid;
	/* the placeholder thread the codec requires: the main thread's tid only */
	img->threads = calloc(1, sizeof(*img->threads));
	if (!img->threads)
		return -ENOMEM;
	img->nthreads = 1;
	img->threads[0].tid = pid;
	ret = capture_proc(pid, img, &set_sigs);
	if (ret)
		goto out_free_image;
	/* brk needs a call in the process; the map's heap is what the prebuild needs */
	img->mm.brk = img->mm.start_brk;
	ret = capture_maps(pid, NULL, img, NULL, &files_cap, why, whylen);
	if (ret)
		goto out_free_image;
	return 0;
out_free_image:
	rdmig_image_free(img);
	return ret;
}

void rdmig_image_describe(const struct rdmig_image *img, char *buf, size_t cap)
{
	uint32_t anon = 0, file = 0, other = 0;
	uint64_t touched = 0, vm = 0;

	if (!cap)
		return;
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];

		vm += v->end - v->start;
		if (v->kind == RDMIG_VMA_ANON) {
			anon++;
			touched += rdmig_image_vma_touched(v);
		} else if (v->kind == RDMIG_VMA_FILE_PRIVATE ||
		           v->kind == RDMIG_VMA_FILE_SHARED_RO) {
			file++;
		} else {
			other++;
		}
	}
	snprintf(buf, cap,
	         "pid %" PRId32 " (%s): vmas %u (anon %u, %" PRIu64 " MiB touched; file %u; "
	         "special %u; %" PRIu64 " MiB mapped), cow pages %u, files %u, fds %u, "
	         "signals pending %u+%u, rseq %s, xstate %u bytes, vdso %u bytes, threads %u",
	         img->pid, img->comm, img->nvmas, anon, touched * RDMIG_IMG_PAGE >> 20, file, other,
	         vm >> 20, img->ncow, img->nfiles, img->nfds, img->threads[0].nsiginfo,
	         img->nsiginfo_shared, img->threads[0].rseq_len ? "yes" : "no",
	         img->threads[0].xstate_len, img->vdso_len, img->nthreads);
}
