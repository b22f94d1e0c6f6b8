/*
 * Thin userfaultfd wrappers (see uffd.h): each converts errno right after the
 * call, and the multi-page operations continue partial progress themselves.
 */
#define LOG_SUBSYS "uffd"
#include "uffd.h"

#include "rdmig/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int rdmig_uffd_open(unsigned flags)
{
	int kflags = O_CLOEXEC | O_NONBLOCK;
	int fd, dev, err;

	if (flags & RDMIG_UFFD_USER_ONLY)
		kflags |= UFFD_USER_MODE_ONLY;
	fd = (int)syscall(SYS_userfaultfd, kflags);
	if (fd >= 0)
		return fd;
	err = -errno;
	if (err != -EPERM && err != -ENOSYS) {
		pr_err("userfaultfd(0x%x): %s", kflags, strerror(-err));
		return err;
	}
	/* An unprivileged caller may only create user-mode-only uffds through the
	 * syscall (vm.unprivileged_userfaultfd=0); the device node grants full ones
	 * to whoever may open it. */
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		int derr = -errno;

		pr_err("userfaultfd(2): %s; /dev/userfaultfd: %s", strerror(-err), strerror(-derr));
		return err;
	}
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, kflags);
	if (fd < 0)
		err = -errno;
	close(dev);
	if (fd < 0) {
		pr_err("USERFAULTFD_IOC_NEW: %s", strerror(-err));
		return err;
	}
	return fd;
}

static const char *const feature_names[] = {
    "PAGEFAULT_FLAG_WP",
    "EVENT_FORK",
    "EVENT_REMAP",
    "EVENT_REMOVE",
    "MISSING_HUGETLBFS",
    "MISSING_SHMEM",
    "EVENT_UNMAP",
    "SIGBUS",
    "THREAD_ID",
    "MINOR_HUGETLBFS",
    "MINOR_SHMEM",
    "EXACT_ADDRESS",
    "WP_HUGETLBFS_SHMEM",
    "WP_UNPOPULATED",
    "POISON",
    "WP_ASYNC",
    "MOVE",
};

const char *rdmig_uffd_features_str(uint64_t features, char *buf, size_t len)
{
	size_t n = 0;

	if (!len)
		return buf;
	buf[0] = '\0';
	for (unsigned i = 0; i < 64 && n < len; i++) {
		if (!(features & (1ull << i)))
			continue;
		int m;
		if (i < sizeof(feature_names) / sizeof(feature_names[0]))
			m = snprintf(buf + n, len - n, "%s%s", n ? "|" : "", feature_names[i]);
		else
			m = snprintf(buf + n, len - n, "%sbit%u", n ? "|" : "", i);
		if (m < 0)
			break;
		n += (size_t)m;
	}
	if (!features)
		snprintf(buf, len, "none");
	return buf;
}

/* What the kernel offers is a fact about the process, not state: probed once,
 * logged once, shared by every caller. */
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static struct rdmig_uffd_caps probe_caps;
static int probe_err;

static void probe_run(void)
{
	struct uffdio_api api = {.api = UFFD_API, .features = 0};
	char names[512];
	int fd;

	fd = rdmig_uffd_open(0);
	if (fd < 0) {
		probe_err = fd;
		return;
	}
	/* With no features requested the kernel answers with all it supports. */
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		probe_err = -errno;
		pr_err("UFFDIO_API probe: %s", strerror(-probe_err));
		close(fd);
		return;
	}
	close(fd);
	probe_caps.features = api.features;
	probe_caps.ioctls = api.ioctls;
	pr_info("userfaultfd features: %s",
	        rdmig_uffd_features_str(api.features, names, sizeof(names)));
}

int rdmig_uffd_probe(struct rdmig_uffd_caps *out)
{
	pthread_once(&probe_once, probe_run);
	if (probe_err)
		return probe_err;
	*out = probe_caps;
	return 0;
}

int rdmig_uffd_api(int fd, uint64_t want, uint64_t *ioctls)
{
	struct uffdio_api api = {.api = UFFD_API, .features = want};
	struct rdmig_uffd_caps caps;
	char names[512];
	int ret;

	ret = rdmig_uffd_probe(&caps);
	if (ret)
		return ret;
	if (want & ~caps.features) {
		pr_err("userfaultfd lacks %s",
		       rdmig_uffd_features_str(want & ~caps.features, names, sizeof(names)));
		return -EOPNOTSUPP;
	}
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		ret = -errno;
		pr_err("UFFDIO_API(%s): %s%s", rdmig_uffd_features_str(want, names, sizeof(names)),
		       strerror(-ret), ret == -EPERM ? " (EVENT_FORK needs CAP_SYS_PTRACE)" : "");
		return ret;
	}
	if (ioctls)
		*ioctls = api.ioctls;
	return 0;
}

int rdmig_uffd_open_api(unsigned flags, uint64_t want)
{
	int fd = rdmig_uffd_open(flags);
	int ret;

	if (fd < 0)
		return fd;
	ret = rdmig_uffd_api(fd, want, NULL);
	if (ret) {
		close(fd);
		return ret;
	}
	return fd;
}

int rdmig_uffd_register(int fd, uint64_t addr, uint64_t len, unsigned mode, uint64_t *ioctls)
{
	struct uffdio_register reg = {.range = {.start = addr, .len = len}};
	int ret;

	if (mode & RDMIG_UFFD_MISSING)
		reg.mode |= UFFDIO_REGISTER_MODE_MISSING;
	if (mode & RDMIG_UFFD_WP)
		reg.mode |= UFFDIO_REGISTER_MODE_WP;
	if (!reg.mode)
		return -EINVAL;
	if ((mode & RDMIG_UFFD_NOHUGEPAGE) &&
	    madvise((void *)(uintptr_t)addr, (size_t)len, MADV_NOHUGEPAGE) < 0) {
		ret = -errno;
		pr_err("madvise(%#llx+%#llx, NOHUGEPAGE): %s", (unsigned long long)addr,
		       (unsigned long long)len, strerror(-ret));
		return ret;
	}
	if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
		ret = -errno;
		pr_err("UFFDIO_REGISTER %#llx+%#llx mode %#llx: %s", (unsigned long long)addr,
		       (unsigned long long)len, (unsigned long long)reg.mode, strerror(-ret));
		return ret;
	}
	if (ioctls)
		*ioctls = reg.ioctls;
	return 0;
}

int rdmig_uffd_unregister(int fd, uint64_t addr, uint64_t len)
{
	struct uffdio_range r = {.start = addr, .len = len};

	if (ioctl(fd, UFFDIO_UNREGISTER, &r) < 0)
		return -errno;
	return 0;
}

/*
 * The three filling ioctls report progress the same way: the field after mode
 * holds the bytes done (or a negated error), and the ioctl fails with EAGAIN when
 * it stopped early after doing some. Continue from there; stop with the error
 * when an attempt made no progress.
 */
enum fill_op { FILL_COPY, FILL_ZERO, FILL_MOVE };

static int fill(int fd, enum fill_op op, uint64_t dst, uint64_t src, uint64_t len, unsigned flags,
                uint64_t *done)
{
	uint64_t off = 0;
	int ret = 0;

	while (off < len) {
		int64_t got;
		int r;

		switch (op) {
		case FILL_COPY: {
			struct uffdio_copy c = {
			    .dst = dst + off, .src = src + off, .len = len - off};
			if (flags & RDMIG_UFFD_DONTWAKE)
				c.mode |= UFFDIO_COPY_MODE_DONTWAKE;
			if (flags & RDMIG_UFFD_COPY_WP)
				c.mode |= UFFDIO_COPY_MODE_WP;
			r = ioctl(fd, UFFDIO_COPY, &c);
			got = c.copy;
			break;
		}
		case FILL_ZERO: {
			struct uffdio_zeropage z = {
			    .range = {.start = dst + off, .len = len - off}};
			if (flags & RDMIG_UFFD_DONTWAKE)
				z.mode |= UFFDIO_ZEROPAGE_MODE_DONTWAKE;
			r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
			got = z.zeropage;
			break;
		}
		case FILL_MOVE:
		default: {
			struct uffdio_move m = {
			    .dst = dst + off, .src = src + off, .len = len - off};
			if (flags & RDMIG_UFFD_DONTWAKE)
				m.mode |= UFFDIO_MOVE_MODE_DONTWAKE;
			if (flags & RDMIG_UFFD_MOVE_SRC_HOLES)
				m.mode |= UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
			r = ioctl(fd, UFFDIO_MOVE, &m);
			got = m.move;
			break;
		}
		}
		if (r == 0) {
			off = len;
			break;
		}
		ret = -errno;
		if (got > 0) {
			/* partial: continue with the rest */
			off += (uint64_t)got;
			ret = 0;
			continue;
		}
		/* The field may hold the kernel's own error (more precise than errno when
		 * the ioctl's errno is the generic EAGAIN of a short count). */
		if (got < 0 && got != -EAGAIN)
			ret = (int)got;
		break;
	}
	if (done)
		*done = off;
	return ret;
}

int rdmig_uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len, unsigned flags,
                    uint64_t *done)
{
	return fill(fd, FILL_COPY, dst, (uint64_t)(uintptr_t)src, len, flags, done);
}

int rdmig_uffd_zeropage(int fd, uint64_t dst, uint64_t len, unsigned flags, uint64_t *done)
{
	return fill(fd, FILL_ZERO, dst, 0, len, flags, done);
}

int rdmig_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len, unsigned flags,
                    uint64_t *done)
{
	return fill(fd, FILL_MOVE, dst, src, len, flags, done);
}

int rdmig_uffd_wake(int fd, uint64_t addr, uint64_t len)
{
	struct uffdio_range r = {.start = addr, .len = len};

	if (ioctl(fd, UFFDIO_WAKE, &r) < 0)
		return -errno;
	return 0;
}

int rdmig_uffd_writeprotect(int fd, uint64_t addr, uint64_t len, bool wp, unsigned flags)
{
	struct uffdio_writeprotect w = {.range = {.start = addr, .len = len}};

	if (wp)
		w.mode |= UFFDIO_WRITEPROTECT_MODE_WP;
	if (flags & RDMIG_UFFD_DONTWAKE)
		w.mode |= UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
	if (ioctl(fd, UFFDIO_WRITEPROTECT, &w) < 0)
		return -errno;
	return 0;
}

int rdmig_uffd_alive(int fd, uint64_t addr)
{
	int ret = rdmig_uffd_writeprotect(fd, addr, 4096, false, RDMIG_UFFD_DONTWAKE);

	return ret == -ESRCH ? -ESRCH : 0;
}

int rdmig_uffd_read(int fd, struct uffd_msg *msgs, int max)
{
	ssize_t n = read(fd, msgs, sizeof(*msgs) * (size_t)max);

	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return -errno;
	}
	if (n % (ssize_t)sizeof(*msgs)) {
		pr_err("short uffd read: %zd bytes", n);
		return -EIO;
	}
	return (int)(n / (ssize_t)sizeof(*msgs));
}

enum rdmig_uffd_action rdmig_uffd_policy(int fd, uint64_t addr, uint64_t len, int ret)
{
	switch (ret) {
	case 0:
		return RDMIG_UFFD_DONE;
	case -EEXIST:
		/* Already present: someone may still wait on a fault raised before it
		 * arrived. A wake on a range nobody waits on costs a spinlock. */
		ret = rdmig_uffd_wake(fd, addr, len);
		if (ret && ret != -ESRCH)
			pr_warn("wake %#llx+%#llx: %s", (unsigned long long)addr,
			        (unsigned long long)len, strerror(-ret));
		return ret == -ESRCH ? RDMIG_UFFD_MM_GONE : RDMIG_UFFD_DONE;
	case -EAGAIN:
		/* mmap_changing: a fork/mremap/madvise/munmap event is queued (or being
		 * finished); it must be read before the install can succeed. */
		return RDMIG_UFFD_RETRY;
	case -ENOMEM:
		/* Page allocation failed in the target's mm: transient or not, zero-filling
		 * is never an answer; try again later. */
		pr_warn("install %#llx: out of memory, will retry", (unsigned long long)addr);
		return RDMIG_UFFD_RETRY;
	case -ENOENT:
		return RDMIG_UFFD_RANGE_GONE;
	case -ESRCH:
		return RDMIG_UFFD_MM_GONE;
	default:
		pr_err("install %#llx+%#llx: %s", (unsigned long long)addr, (unsigned long long)len,
		       strerror(-ret));
		return RDMIG_UFFD_FATAL;
	}
}

const char *rdmig_uffd_event_name(unsigned event)
{
	switch (event) {
	case UFFD_EVENT_PAGEFAULT:
		return "PAGEFAULT";
	case UFFD_EVENT_FORK:
		return "FORK";
	case UFFD_EVENT_REMAP:
		return "REMAP";
	case UFFD_EVENT_REMOVE:
		return "REMOVE";
	case UFFD_EVENT_UNMAP:
		return "UNMAP";
	default:
		return "?";
	}
}
