/*
 * Restore, the task: rlimits, per-task settings, descriptors, signal handlers,
 * the in-process userfaultfd, pending signals, credentials, rseq.
 *
 * Descriptors are reopened by path with the recorded flags (creation and
 * truncation flags dropped: the file exists and holds data), moved to their
 * recorded number with dup3, positioned with lseek. A descriptor's file is only
 * checked to still be a regular file: a file being written changes size and
 * mtime all the time (mappings are checked strictly, in restore_mm.c).
 *
 * Credentials come last and the result is read back from /proc/PID/status:
 * the restored process must never hold more privilege than the image says.
 * Bounding-set capabilities are dropped while the husk is still root (that
 * needs CAP_SETPCAP); keep-caps carries permitted capabilities across the uid
 * switch when the image has any as a non-root user.
 */
#define LOG_SUBSYS "restore"

#include "restore_int.h"

#include "procfs.h"
#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define K_ROBUST_HEAD_LEN 24 /* sizeof(struct robust_list_head) */
#define K_SS_AUTODISARM (1u << 31)

struct k_sigaction { /* the kernel's struct sigaction on x86_64 */
	uint64_t handler, flags, restorer, mask;
};

struct k_stack { /* stack_t */
	uint64_t sp;
	int32_t flags;
	int32_t pad;
	uint64_t size;
};

static const char *const rlim_names[RDMIG_IMG_NRLIMIT] = {
    "CPU",     "FSIZE", "DATA",  "STACK",      "CORE",     "RSS",  "NPROC",  "NOFILE",
    "MEMLOCK", "AS",    "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
};

static void rlim_str(uint64_t v, char *buf, size_t cap)
{
	if (v == (uint64_t)RLIM_INFINITY)
		snprintf(buf, cap, "unlimited");
	else
		snprintf(buf, cap, "%" PRIu64, v);
}

/* From the daemon. A hard limit above ours needs CAP_SYS_RESOURCE, which the
 * daemon may lack: such a limit is lowered to what this host allows (never
 * raised above the image) and a warning says what was kept. */
int rst_rlimits(struct rst *r)
{
	const struct rdmig_image *img = r->img;

	for (int i = 0; i < (int)RDMIG_IMG_NRLIMIT; i++) {
		struct rlimit want = {img->rlim_cur[i], img->rlim_max[i]}, have, kept;
		char a[32], b[32], c[32], d[32];

		if (want.rlim_cur > want.rlim_max)
			return rst_fail(r, -EINVAL, "the image's RLIMIT_%s has soft above hard",
			                rlim_names[i]);
		if (!prlimit(r->pid, i, &want, NULL))
			continue;
		if (errno != EPERM)
			return rst_fail(r, -errno, "RLIMIT_%s could not be set: %s", rlim_names[i],
			                strerror(errno));
		if (prlimit(r->pid, i, NULL, &have) < 0)
			return rst_fail(r, -errno, "RLIMIT_%s could not be read: %s", rlim_names[i],
			                strerror(errno));
		kept.rlim_max = want.rlim_max < have.rlim_max ? want.rlim_max : have.rlim_max;
		kept.rlim_cur = want.rlim_cur < kept.rlim_max ? want.rlim_cur : kept.rlim_max;
		if (prlimit(r->pid, i, &kept, NULL) < 0)
			return rst_fail(r, -errno, "RLIMIT_%s could not be set even lowered: %s",
			                rlim_names[i], strerror(errno));
		rlim_str(want.rlim_cur, a, sizeof(a));
		rlim_str(want.rlim_max, b, sizeof(b));
		rlim_str(kept.rlim_cur, c, sizeof(c));
		rlim_str(kept.rlim_max, d, sizeof(d));
		pr_warn(
		    "pid %d: RLIMIT_%s %s/%s (soft/hard) cannot be raised that far here without "
		    "CAP_SYS_RESOURCE; kept %s/%s",
		    (int)r->pid, rlim_names[i], a, b, c, d);
	}
	return 0;
}

int rst_task_misc(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	const struct rdmig_img_thread *th = &img->threads[0];
	size_t cwd_len = img->cwd ? strlen(img->cwd) + 1 : 0;
	char *buf;
	uint64_t at;
	unsigned failed = 0;
	int err;

	/* comm and the cwd side by side in the scratch: one batch reads both */
	buf = calloc(1, 16 + cwd_len);
	if (!buf)
		return rst_fail(r, -ENOMEM, "out of memory");
	memcpy(buf, img->comm, 15);
	if (cwd_len)
		memcpy(buf + 16, img->cwd, cwd_len);
	err = rst_to_scratch(r, buf, 16 + cwd_len, &at);
	free(buf);
	if (err)
		return err;
	/* The husk's robust list and clear_child_tid point into the daemon's TLS,
	 * which is gone: both are always replaced (with NULL when the image has none). */
	struct rdmig_tracee_call c[6] = {
	    RST_CALL("set_robust_list", SYS_set_robust_list, (long)th->robust_head,
	             th->robust_head ? (long)th->robust_len : K_ROBUST_HEAD_LEN),
	    RST_CALL("set_tid_address", SYS_set_tid_address, (long)th->clear_child_tid),
	    RST_CALL("personality", SYS_personality, img->personality),
	    RST_CALL("umask", SYS_umask, img->umask & 0777),
	    RST_CALL("prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME, (long)at),
	    RST_CALL("chdir", SYS_chdir, (long)(at + 16)), /* the last: not run without a cwd */
	};
	unsigned n = cwd_len ? 6 : 5;

	err = rst_calls(r, c, n, &failed);
	if (err && failed < n && c[failed].nr == SYS_chdir)
		return rst_fail(r, err, "the working directory %s is not usable here: %s", img->cwd,
		                strerror(-err));
	if (err)
		return rst_fail(r, err, "%s in the process being restored failed: %s",
		                failed < n ? c[failed].what : "a call", strerror(-err));
	return 0;
}

/*
 * The descriptors, as batches of calls (rdmig_tracee_calls: one resume for a
 * batch, where each call alone costs a stop, 20-50 us here). Each open's
 * number is known before it runs, so the lseek, dup3 and close after it can
 * name it in the same batch: the husk has only its own 0-2 that the image
 * does not replace (inherited at its fork) and the prebuilt userfaultfd open
 * (its cleaning closed the rest), and the kernel gives the lowest free number.
 * An open that gave another number fails the restore: its husk is killed,
 * nothing of it ran.
 */
#define FDS_BATCH 16 /* descriptors per batch, 4 calls each at most */
#define FDS_CALLS (FDS_BATCH * 4 + 4)
#define FDS_PATHS (48u << 10) /* their paths, together in the scratch area */
#define FD_NONE UINT32_MAX    /* a call for none of the image's entries */

struct fds_batch {
	struct rdmig_tracee_call c[FDS_CALLS];
	uint32_t of[FDS_CALLS]; /* the image's fd entry each call is for, or FD_NONE */
	int want[FDS_CALLS];    /* an openat's number ahead; -1 for the others */
	char paths[FDS_PATHS];  /* an openat's a[1] is its offset here until sent */
	size_t plen;
	unsigned n;
};

/* The model of the husk's open numbers: is fd open before entry i is placed?
 * Entries below i are open at their numbers (sorted: image.c checks). */
static bool fd_taken(const struct rst *r, const bool *replaced, uint32_t i, int fd)
{
	const struct rdmig_img_fd *fds = r->img->fds;
	uint32_t lo = 0, hi = i;

	if ((fd <= 2 && r->stdio_open[fd] && !replaced[fd]) || fd == r->uffd_in_proc)
		return true;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (fds[mid].fd == fd)
			return true;
		if (fds[mid].fd < fd)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static void fds_add(struct fds_batch *b, uint32_t of, int want, struct rdmig_tracee_call c)
{
	b->of[b->n] = of;
	b->want[b->n] = want;
	b->c[b->n++] = c;
}

/* Run what b holds (its paths first, into the scratch area) and check each
 * open's number. */
static int fds_run(struct rst *r, struct fds_batch *b)
{
	const struct rdmig_image *img = r->img;
	unsigned failed = b->n;
	uint64_t at = 0;
	int err;

	if (!b->n)
		return 0;
	if (b->plen && (err = rst_to_scratch(r, b->paths, b->plen, &at)))
		return err;
	for (unsigned i = 0; i < b->n; i++)
		if (b->c[i].nr == SYS_openat)
			b->c[i].a[1] += (long)at;
	err = rst_calls(r, b->c, b->n, &failed);
	if (err && failed < b->n && b->of[failed] != FD_NONE) {
		const struct rdmig_img_fd *f = &img->fds[b->of[failed]];

		if (b->c[failed].nr == SYS_openat)
			return rst_fail(
			    r, err, "cannot open %s (fd %d) in the process being restored: %s",
			    b->paths + (b->c[failed].a[1] - (long)at), (int)f->fd, strerror(-err));
		return rst_fail(r, err, "%s for fd %d in the process being restored failed: %s",
		                b->c[failed].what, (int)f->fd, strerror(-err));
	}
	if (err)
		return rst_fail(r, err, "%s in the process being restored failed: %s",
		                failed < b->n ? b->c[failed].what : "restoring the descriptors",
		                strerror(-err));
	for (unsigned i = 0; i < b->n; i++)
		if (b->want[i] >= 0 && b->c[i].ret != b->want[i])
			return rst_fail(
			    r, -EIO,
			    "opening fd %d's file in the process being restored gave number "
			    "%ld, not %d: its descriptors were not the ones expected",
			    (int)img->fds[b->of[i]].fd, b->c[i].ret, b->want[i]);
	b->n = 0;
	b->plen = 0;
	return 0;
}

/* Entry i, checked before its batch runs: its path and open flags,
 * or NULL for an inherited stdio descriptor that only needs its flag. */
static int fd_source(struct rst *r, uint32_t i, const char **path, int *flags)
{
	const struct rdmig_image *img = r->img;
	const struct rdmig_img_fd *f = &img->fds[i];
	const struct rdmig_img_file *file;
	struct stat st;

	*path = NULL;
	*flags = f->cloexec ? O_CLOEXEC : 0;
	if (f->kind == RDMIG_FD_STDIO) {
		if (f->fd < 0 || f->fd > 2)
			return rst_fail(r, -EINVAL,
			                "the image has a terminal/pipe descriptor %d; only 0-2 "
			                "can be connected here",
			                (int)f->fd);
		*path = r->o->stdio_path[f->fd];
		if (!*path && !r->stdio_open[f->fd])
			return rst_fail(
			    r, -EBADF,
			    "the process's fd %d was a terminal or pipe, and the daemon "
			    "has no fd %d to give it; pass a file for it",
			    (int)f->fd, (int)f->fd);
		*flags |= f->fd == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND;
		return 0;
	}
	if (f->kind != RDMIG_FD_FILE && f->kind != RDMIG_FD_DEVNULL)
		return rst_fail(r, -EINVAL, "fd %d has unknown kind %u", (int)f->fd, f->kind);
	if (f->file >= img->nfiles)
		return rst_fail(r, -EINVAL, "fd %d names file %u of %u", (int)f->fd, f->file,
		                img->nfiles);
	file = &img->files[f->file];
	if (f->kind == RDMIG_FD_FILE) {
		if (stat(file->path, &st) < 0)
			return rst_fail(r, -errno, "the file %s (fd %d) is missing here: %s",
			                file->path, (int)f->fd, strerror(errno));
		if (!S_ISREG(st.st_mode))
			return rst_fail(r, -EOPNOTSUPP,
			                "the file %s (fd %d) is not a regular file here",
			                file->path, (int)f->fd);
	}
	*path = file->path;
	/* the file exists and holds data: no creating or truncating it */
	*flags |= (int)(f->flags & ~(O_CREAT | O_TRUNC | O_EXCL | O_CLOEXEC));
	return 0;
}

int rst_fds(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	bool replaced[3] = {false, false, false}, has[3] = {false, false, false};
	struct fds_batch *b = malloc(sizeof(*b));
	int low = 0, err = 0;

	if (!b)
		return rst_fail(r, -ENOMEM, "out of memory");
	b->n = 0;
	b->plen = 0;
	for (uint32_t i = 0; i < img->nfds; i++) {
		const struct rdmig_img_fd *f = &img->fds[i];

		if (f->fd >= 0 && f->fd <= 2) {
			has[f->fd] = true;
			replaced[f->fd] = f->kind != RDMIG_FD_STDIO || r->o->stdio_path[f->fd];
		}
	}
	/* the husk's own 0-2 that the image's replace, closed first (in runs), so
	 * each open can land on its number */
	for (int lo = 0; lo <= 2; lo++) {
		int hi = lo;

		if (!replaced[lo] || !r->stdio_open[lo])
			continue;
		while (hi < 2 && replaced[hi + 1] && r->stdio_open[hi + 1])
			hi++;
		fds_add(b, FD_NONE, -1, RST_CALL("close_range(stdio)", SYS_close_range, lo, hi, 0));
		lo = hi;
	}
	for (uint32_t i = 0; i < img->nfds && !err; i++) {
		const struct rdmig_img_fd *f = &img->fds[i];
		const char *path;
		size_t len;
		int flags;

		while (fd_taken(r, replaced, i, low))
			low++;
		if ((err = fd_source(r, i, &path, &flags)))
			break;
		if (!path) {
			fds_add(b, i, -1,
			        RST_CALL("fcntl(F_SETFD)", SYS_fcntl, f->fd, F_SETFD,
			                 f->cloexec ? FD_CLOEXEC : 0));
			continue;
		}
		len = strlen(path) + 1;
		if ((b->n + 4 > FDS_CALLS || b->plen + len > FDS_PATHS) && (err = fds_run(r, b)))
			break;
		memcpy(b->paths + b->plen, path, len);
		fds_add(b, i, low,
		        RST_CALL("openat", SYS_openat, AT_FDCWD, (long)b->plen, flags, 0644));
		b->plen += len;
		if (f->kind == RDMIG_FD_FILE && f->pos) /* an open file is at 0 */
			fds_add(b, i, -1,
			        RST_CALL("lseek", SYS_lseek, low, (long)f->pos, SEEK_SET));
		if (low != f->fd) {
			fds_add(b, i, -1,
			        RST_CALL("dup3", SYS_dup3, low, f->fd, f->cloexec ? O_CLOEXEC : 0));
			fds_add(b, i, -1, RST_CALL("close", SYS_close, low));
		}
	}
	/* 0-2 closed on the source are closed here too */
	for (int fd = 0; fd <= 2 && !err; fd++)
		if (!has[fd] && r->stdio_open[fd]) {
			if (b->n + 1 > FDS_CALLS && (err = fds_run(r, b)))
				break;
			fds_add(b, FD_NONE, -1, RST_CALL("close", SYS_close, fd));
		}
	if (!err)
		err = fds_run(r, b);
	free(b);
	return err;
}

int rst_sigactions(struct rst *r)
{
	const struct rdmig_image *img = r->img;
	const struct rdmig_img_thread *th = &img->threads[0];
	/* every action, then the alternate stack, in one write to the scratch */
	struct {
		struct k_sigaction ka[RDMIG_IMG_NSIG];
		struct k_stack ss;
	} buf;
	struct rdmig_tracee_call c[RDMIG_IMG_NSIG + 1];
	char what[RDMIG_IMG_NSIG][24];
	unsigned n = 0;
	uint64_t at;
	int err;

	memset(&buf, 0, sizeof(buf));
	for (unsigned i = 0; i < RDMIG_IMG_NSIG; i++) {
		buf.ka[i].handler = img->sigactions[i].handler;
		buf.ka[i].flags = img->sigactions[i].flags;
		buf.ka[i].restorer = img->sigactions[i].restorer;
		buf.ka[i].mask = img->sigactions[i].mask;
	}
	if (th->altstack_flags & SS_DISABLE) {
		buf.ss.flags = SS_DISABLE;
	} else {
		buf.ss.sp = th->altstack_sp;
		buf.ss.size = th->altstack_size;
		buf.ss.flags =
		    (int32_t)(th->altstack_flags & K_SS_AUTODISARM); /* never SS_ONSTACK */
	}
	if ((err = rst_to_scratch(r, &buf, sizeof(buf), &at)))
		return err;
	/* The husk reset every action to all-zero when it was forked (restore.c):
	 * only the image's non-default ones need a call. */
	for (int sig = 1; sig <= (int)RDMIG_IMG_NSIG; sig++) {
		const struct rdmig_img_sigaction *a = &img->sigactions[sig - 1];

		if (sig == SIGKILL || sig == SIGSTOP ||
		    !(a->handler | a->flags | a->restorer | a->mask))
			continue;
		snprintf(what[n], sizeof(what[n]), "rt_sigaction(%d)", sig);
		c[n] = RST_CALL(what[n], SYS_rt_sigaction, sig,
		                (long)(at + (uint64_t)(sig - 1) * sizeof(buf.ka[0])), 0, 8);
		n++;
	}
	c[n++] =
	    RST_CALL("sigaltstack", SYS_sigaltstack, (long)(at + offsetof(__typeof__(buf), ss)));
	return rst_calls(r, c, n, NULL);
}

static bool image_has_fd(const struct rdmig_image *img, int fd)
{
	for (uint32_t i = 0; i < img->nfds; i++)
		if (img->fds[i].fd == fd)
			return true;
	return false;
}

/* Created inside the process (its mm is the one the uffd serves), kept there at
 * a high number so a dead daemon leaves faults blocked instead of unregistering
 * the ranges; the daemon takes its own copy with pidfd_getfd. No UFFDIO_API
 * here: the pager does it with the features it wants. No UFFD_USER_MODE_ONLY:
 * faults taken by the kernel (a read() into a lazy buffer, rseq's cpu_id
 * update) must reach the handler too. */
int rst_uffd_make(struct rst *r)
{
	struct rlimit nofile;
	long u0, num;
	int pidfd, err;

	if (prlimit(r->pid, RLIMIT_NOFILE, NULL, &nofile) < 0)
		return rst_fail(r, -errno, "cannot read the process's RLIMIT_NOFILE: %s",
		                strerror(errno));
	num = nofile.rlim_cur > 65536 ? 65535 : (long)nofile.rlim_cur - 1;
	while (num >= 3 && image_has_fd(r->img, (int)num))
		num--;
	if (num < 3)
		return rst_fail(r, -EMFILE,
		                "no descriptor number is free below the process's RLIMIT_NOFILE "
		                "(%llu) to keep its userfaultfd at",
		                (unsigned long long)nofile.rlim_cur);
	if ((err = rst_call(r, "userfaultfd", &u0, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK, 0, 0, 0,
	                    0, 0)))
		return err;
	if (u0 != num) {
		struct rdmig_tracee_call c[2] = {
		    RST_CALL("dup3(userfaultfd)", SYS_dup3, u0, num, O_CLOEXEC),
		    RST_CALL("close", SYS_close, u0),
		};

		unsigned failed = 0;

		err = rst_calls(r, c, 2, &failed);
		if (err && failed == 0) {
			rst_close(r, (int)u0);
			return rst_fail(r, err, "%s in the process being restored failed: %s",
			                c[0].what, strerror(-err));
		}
		/* a close that fails is only logged, as rst_close does */
		err = 0;
	}
	r->uffd_in_proc = (int)num;
	pidfd = (int)syscall(SYS_pidfd_open, r->pid, 0);
	if (pidfd < 0)
		return rst_fail(r, -errno, "pidfd_open of the husk failed: %s", strerror(errno));
	r->uffd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)num, 0);
	err = r->uffd < 0 ? -errno : 0;
	close(pidfd);
	if (err)
		return rst_fail(r, err, "pidfd_getfd of the process's userfaultfd failed: %s",
		                strerror(-err));
	return 0;
}

/* Made by the prebuild (rst_uffd_make there) unless the image has a descriptor
 * at its number: then the fds step has put that descriptor there, which closed
 * the process's copy, and ours goes too. The number may then lie above the
 * image's RLIMIT_NOFILE (it was chosen under the husk's): a descriptor there
 * stays valid, and stays out of the process's way. */
int rst_uffd(struct rst *r)
{
	if (r->uffd >= 0 && !image_has_fd(r->img, r->uffd_in_proc))
		return 0;
	if (r->uffd >= 0) {
		close(r->uffd);
		r->uffd = r->uffd_in_proc = -1;
	}
	return rst_uffd_make(r);
}

static int queue_signals(struct rst *r, const uint8_t *info, uint32_t n, bool thread)
{
	uint64_t at;
	int err;

	if (!n)
		return 0;
	if ((err = rst_to_scratch(r, info, (size_t)n * RDMIG_IMG_SIGINFO, &at)))
		return err;
	for (uint32_t i = 0; i < n; i++) {
		int32_t signo;
		uint64_t p = at + (uint64_t)i * RDMIG_IMG_SIGINFO;

		memcpy(&signo, info + (size_t)i * RDMIG_IMG_SIGINFO, sizeof(signo));
		if (signo < 1 || signo > (int)RDMIG_IMG_NSIG)
			return rst_fail(r, -EINVAL, "a pending signal has number %d", (int)signo);
		err = thread ? rst_call(r, "rt_tgsigqueueinfo", NULL, SYS_rt_tgsigqueueinfo, r->pid,
		                        r->pid, signo, (long)p, 0, 0)
		             : rst_call(r, "rt_sigqueueinfo", NULL, SYS_rt_sigqueueinfo, r->pid,
		                        signo, (long)p, 0, 0, 0);
		if (err)
			return err;
	}
	return 0;
}

/* Queued while every signal is blocked: they stay pending until the image's mask
 * is set and the process runs. */
int rst_pending_signals(struct rst *r)
{
	int err = queue_signals(r, r->img->siginfo_shared, r->img->nsiginfo_shared, false);

	return err ? err
	           : queue_signals(r, r->img->threads[0].siginfo, r->img->threads[0].nsiginfo,
	                           true);
}

/* The husk's credentials as its kernel reports them (procfs_status: the groups
 * as the kernel prints them, sorted). */
static int read_status(struct rst *r, struct procfs_status *s)
{
	int err = procfs_status(r->pid, s);

	return err ? rst_fail(r, err, "cannot read the credentials in /proc/%d/status: %s",
	                      (int)r->pid, strerror(-err))
	           : 0;
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The image's supplementary groups (in the source kernel's order) against the
 * process's; -ENOMEM when they cannot be compared. */
static int same_groups(const struct procfs_status *s, const struct rdmig_img_creds *c, bool *same)
{
	uint32_t *g;

	*same = false;
	if (s->ngroups != c->ngroups)
		return 0;
	if (!c->ngroups) {
		*same = true;
		return 0;
	}
	g = malloc((size_t)c->ngroups * sizeof(*g));
	if (!g)
		return -ENOMEM;
	memcpy(g, c->groups, (size_t)c->ngroups * sizeof(*g));
	qsort(g, c->ngroups, sizeof(*g), u32_cmp);
	*same = !memcmp(g, s->groups, (size_t)c->ngroups * sizeof(*g));
	free(g);
	return 0;
}

static int set_caps(struct rst *r, const struct rdmig_img_creds *c)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2] = {
	    {(uint32_t)c->cap_eff, (uint32_t)c->cap_prm, (uint32_t)c->cap_inh},
	    {(uint32_t)(c->cap_eff >> 32), (uint32_t)(c->cap_prm >> 32),
	     (uint32_t)(c->cap_inh >> 32)},
	};
	uint8_t buf[sizeof(hdr) + sizeof(data)];
	uint64_t at;
	int err;

	memcpy(buf, &hdr, sizeof(hdr));
	memcpy(buf + sizeof(hdr), data, sizeof(data));
	if ((err = rst_to_scratch(r, buf, sizeof(buf), &at)))
		return err;
	return rst_call(r, "capset", NULL, SYS_capset, (long)at, (long)(at + sizeof(hdr)), 0, 0, 0,
	                0);
}

static int check_creds(struct rst *r, const struct rdmig_img_creds *c)
{
	struct procfs_status s;
	bool groups_ok;
	int err = read_status(r, &s);

	if (err)
		return err;
	err = same_groups(&s, c, &groups_ok);
	if (err) {
		err = rst_fail(r, err, "out of memory");
	} else if (!groups_ok) {
		err = rst_fail(r, -EPERM,
		               "the supplementary groups set do not match the image's %u groups",
		               c->ngroups);
	} else if (memcmp(s.uid, c->uid, sizeof(s.uid)) || memcmp(s.gid, c->gid, sizeof(s.gid)) ||
	           s.cap_inh != c->cap_inh || s.cap_prm != c->cap_prm || s.cap_eff != c->cap_eff ||
	           s.cap_amb != c->cap_amb || (s.cap_bnd & ~c->cap_bnd) ||
	           s.no_new_privs < c->no_new_privs) {
		err = rst_fail(r, -EPERM,
		               "the credentials set do not match the image (uid %u/%u, caps "
		               "prm %#" PRIx64 " eff %#" PRIx64 " bnd %#" PRIx64
		               " here; uid %u/%u, prm %#" PRIx64 " eff %#" PRIx64 " bnd %#" PRIx64
		               " in the image)",
		               s.uid[0], s.uid[1], s.cap_prm, s.cap_eff, s.cap_bnd, c->uid[0],
		               c->uid[1], c->cap_prm, c->cap_eff, c->cap_bnd);
	} else {
		if (s.cap_bnd != c->cap_bnd)
			pr_warn("pid %d: bounding set %#" PRIx64
			        " kept smaller than the image's %#" PRIx64
			        " (this host does not grant the rest)",
			        (int)r->pid, s.cap_bnd, c->cap_bnd);
		if (s.no_new_privs && !c->no_new_privs)
			pr_warn("pid %d: no_new_privs stays set (inherited from the daemon)",
			        (int)r->pid);
	}
	procfs_status_free(&s);
	return err;
}

int rst_creds(struct rst *r)
{
	const struct rdmig_img_creds *c = &r->img->creds;
	struct procfs_status s;
	bool keep = c->cap_prm && (c->uid[0] && c->uid[1] && c->uid[2]);
	bool groups_same, gid_same, uid_same, caps_same;
	uint64_t at, prm, bnd;
	int err;

	if ((err = read_status(r, &s)))
		return err;
	err = same_groups(&s, c, &groups_same);
	/* What the husk (the daemon's fork) has already is not set again: a call
	 * each inside the downtime, and a process that ran as the daemon's user
	 * (root, often) needs none of them. check_creds reads the result either
	 * way. */
	gid_same = !memcmp(s.gid, c->gid, sizeof(s.gid));
	uid_same = !memcmp(s.uid, c->uid, sizeof(s.uid));
	caps_same = uid_same && s.cap_inh == c->cap_inh && s.cap_prm == c->cap_prm &&
	            s.cap_eff == c->cap_eff;
	prm = s.cap_prm;
	bnd = s.cap_bnd;
	procfs_status_free(&s);
	if (err)
		return rst_fail(r, err, "out of memory");
	if (c->cap_prm & ~prm)
		return rst_fail(r, -EPERM,
		                "the process had capabilities %#" PRIx64
		                " that the daemon does not hold here; it would not get them back",
		                c->cap_prm & ~prm);
	/* Bounding set first: dropping needs CAP_SETPCAP, gone after the uid switch. */
	for (int cap = 0; cap < 64; cap++)
		if ((bnd >> cap & 1) && !(c->cap_bnd >> cap & 1) &&
		    (err = rst_call(r, "prctl(PR_CAPBSET_DROP)", NULL, SYS_prctl, PR_CAPBSET_DROP,
		                    cap, 0, 0, 0, 0)))
			return err;
	keep = keep && !uid_same;
	if (keep && (err = rst_call(r, "prctl(PR_SET_KEEPCAPS, 1)", NULL, SYS_prctl,
	                            PR_SET_KEEPCAPS, 1, 0, 0, 0, 0)))
		return err;
	if (c->ngroups && !groups_same) {
		if ((err =
		         rst_to_scratch(r, c->groups, (size_t)c->ngroups * sizeof(uint32_t), &at)))
			return err;
	} else {
		at = 0;
	}
	if ((!groups_same && (err = rst_call(r, "setgroups", NULL, SYS_setgroups, c->ngroups,
	                                     (long)at, 0, 0, 0, 0))) ||
	    (!gid_same && (err = rst_call(r, "setresgid", NULL, SYS_setresgid, c->gid[0], c->gid[1],
	                                  c->gid[2], 0, 0, 0))) ||
	    (!uid_same && (err = rst_call(r, "setresuid", NULL, SYS_setresuid, c->uid[0], c->uid[1],
	                                  c->uid[2], 0, 0, 0))) ||
	    (!gid_same &&
	     (err = rst_call(r, "setfsgid", NULL, SYS_setfsgid, c->gid[3], 0, 0, 0, 0, 0))) ||
	    (!uid_same &&
	     (err = rst_call(r, "setfsuid", NULL, SYS_setfsuid, c->uid[3], 0, 0, 0, 0, 0))) ||
	    (!caps_same && (err = set_caps(r, c))))
		return err;
	if (keep && (err = rst_call(r, "prctl(PR_SET_KEEPCAPS, 0)", NULL, SYS_prctl,
	                            PR_SET_KEEPCAPS, 0, 0, 0, 0, 0)))
		return err;
	{
		/* the ambient set, no_new_privs and the husk's PDEATHSIG (the restored
		 * process must outlive the daemon): one batch */
		struct rdmig_tracee_call b[2 + 64 + 1];
		unsigned n = 0;

		b[n++] = RST_CALL("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", SYS_prctl, PR_CAP_AMBIENT,
		                  PR_CAP_AMBIENT_CLEAR_ALL);
		for (int cap = 0; cap < 64; cap++)
			if (c->cap_amb >> cap & 1)
				b[n++] = RST_CALL("prctl(PR_CAP_AMBIENT_RAISE)", SYS_prctl,
				                  PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap);
		if (c->no_new_privs)
			b[n++] = RST_CALL("prctl(PR_SET_NO_NEW_PRIVS)", SYS_prctl,
			                  PR_SET_NO_NEW_PRIVS, 1);
		b[n++] = RST_CALL("prctl(PR_SET_PDEATHSIG, 0)", SYS_prctl, PR_SET_PDEATHSIG, 0);
		if ((err = rst_calls(r, b, n, NULL)))
			return err;
	}
	return check_creds(r, c);
}

/* The last call injected in each thread (see restore.c): registration makes
 * the kernel write cpu_id into the area on the thread's next return to user
 * mode, which is the resume. */
int rst_rseq(struct rst *r, unsigned i)
{
	const struct rdmig_img_thread *th = &r->img->threads[i];
	int err;

	if (!th->rseq_len)
		return 0;
	if ((err = rdmig_tracee_select(r->t, i)))
		return rst_fail(r, err, "thread %u of the image is not held", i);
	return rst_call(r, "rseq(register)", NULL, SYS_rseq, (long)th->rseq_addr, th->rseq_len, 0,
	                th->rseq_sig, 0, 0);
}

#define THREAD_CLONE_FLAGS                                                                         \
	(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)

/* Thread i (held, current): what belongs to it alone, each call injected in it. */
static int thread_settings(struct rst *r, unsigned i)
{
	const struct rdmig_img_thread *th = &r->img->threads[i];
	struct k_stack ss = {0};
	char comm[16];
	uint64_t at;
	int err;

	if ((err = rst_call(r, "set_robust_list", NULL, SYS_set_robust_list, (long)th->robust_head,
	                    th->robust_head ? (long)th->robust_len : K_ROBUST_HEAD_LEN, 0, 0, 0,
	                    0)) ||
	    (err = rst_call(r, "set_tid_address", NULL, SYS_set_tid_address,
	                    (long)th->clear_child_tid, 0, 0, 0, 0, 0)))
		return err;
	if (th->altstack_flags & SS_DISABLE) {
		ss.flags = SS_DISABLE;
	} else {
		ss.sp = th->altstack_sp;
		ss.size = th->altstack_size;
		ss.flags = (int32_t)(th->altstack_flags & K_SS_AUTODISARM);
	}
	if ((err = rst_to_scratch(r, &ss, sizeof(ss), &at)) ||
	    (err = rst_call(r, "sigaltstack", NULL, SYS_sigaltstack, (long)at, 0, 0, 0, 0, 0)))
		return err;
	memcpy(comm, th->comm, sizeof(comm));
	comm[sizeof(comm) - 1] = '\0';
	if ((err = rst_to_scratch(r, comm, sizeof(comm), &at)) ||
	    (err = rst_call(r, "prctl(PR_SET_NAME)", NULL, SYS_prctl, PR_SET_NAME, (long)at, 0, 0,
	                    0, 0)))
		return err;
	return queue_signals(r, th->siginfo, th->nsiginfo, true);
}

/* Rewrite each thread's tid cache with its new tid (the page is present: it was
 * written with the COW pages). */
static int rewrite_tid_caches(struct rst *r)
{
	for (unsigned i = 0; i < r->img->nthreads; i++) {
		const struct rdmig_img_thread *th = &r->img->threads[i];
		int32_t old = 0, tid = (int32_t)rdmig_tracee_tid(r->t, i);
		int err;

		if (!th->tid_cache)
			continue;
		err = rdmig_tracee_read(r->t, th->tid_cache, &old, sizeof(old));
		if (!err && old != th->tid)
			return rst_fail(r, -EINVAL,
			                "thread %d's tid cache at %#" PRIx64
			                " holds %d, not its tid",
			                (int)th->tid, th->tid_cache, (int)old);
		if (!err)
			err = rdmig_tracee_write(r->t, th->tid_cache, &tid, sizeof(tid));
		if (err)
			return rst_fail(r, err, "rewriting thread %d's tid cache failed: %s",
			                (int)th->tid, strerror(-err));
		pr_debug("thread %d is thread %d here", (int)th->tid, (int)tid);
	}
	return 0;
}

int rst_threads(struct rst *r)
{
	int err;

	for (unsigned i = 1; i < r->img->nthreads; i++) {
		unsigned idx = 0;

		if ((err = rdmig_tracee_select(r->t, 0)))
			return rst_fail(r, err, "the main thread is not held");
		err = rdmig_tracee_clone_thread(r->t, THREAD_CLONE_FLAGS, &idx);
		if (err)
			return rst_fail(r, err, "creating thread %u of %u failed: %s", i,
			                r->img->nthreads, strerror(-err));
		if (idx != i)
			return rst_fail(r, -EIO, "thread %u was held as %u", i, idx);
		if ((err = rdmig_tracee_select(r->t, i)) || (err = thread_settings(r, i)))
			return err;
	}
	if ((err = rdmig_tracee_select(r->t, 0)))
		return rst_fail(r, err, "the main thread is not held");
	return rewrite_tid_caches(r);
}
