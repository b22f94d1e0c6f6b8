/*
 * Thin userfaultfd wrappers: one function per kernel operation, each returning
 * 0 (or a count) or -errno, never touching errno for the caller.
 *
 * The fault loop (faultloop.c) is the main user, but the engine uses the same
 * wrappers for dirty tracking on the source (WP_ASYNC) and for registering the
 * restored process's ranges on the destination. An fd may belong to another
 * process (taken with pidfd_getfd): every ioctl acts on the mm the uffd was
 * created in, while UFFDIO_COPY's source buffer is read from the caller's memory.
 *
 * Error policy lives in one place, rdmig_uffd_policy(): -EEXIST (the page is
 * already there) is answered with a wake, -EAGAIN (the mapping is changing: an
 * event is queued that the caller has not read yet) means "read events, then
 * retry", -ENOENT means the range is no longer registered, -ESRCH that the
 * target's mm is gone.
 */
#ifndef RDMIG_UFFD_H
#define RDMIG_UFFD_H

#include "uffd_compat.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDMIG_UFFD_WUR __attribute__((warn_unused_result))

/* rdmig_uffd_open flags */
enum {
	/*
	 * UFFD_USER_MODE_ONLY: faults the kernel takes on the process's behalf (a
	 * read(2) into a missing page, process_vm_readv, futex words) are NOT sent to
	 * the handler; they fail with EFAULT instead (measured on 6.18: read(2) into a
	 * registered missing page returns EFAULT). Fine for WP_ASYNC dirty tracking,
	 * wrong for post-copy paging, whose uffd must see every fault.
	 */
	RDMIG_UFFD_USER_ONLY = 1u << 0,
};

/* rdmig_uffd_register modes */
enum {
	RDMIG_UFFD_MISSING = 1u << 0, /* UFFDIO_REGISTER_MODE_MISSING */
	RDMIG_UFFD_WP = 1u << 1,      /* UFFDIO_REGISTER_MODE_WP */
	/* madvise(MADV_NOHUGEPAGE) the range first. Only valid when the uffd belongs to
	 * the caller's own mm: madvise acts on the caller. For another process the
	 * owner must apply it inside the target (an injected madvise, or
	 * PR_SET_THP_DISABLE in the husk): with THP a missing fault zeroes a 2 MiB
	 * page that UFFDIO_COPY then cannot use, and faults get slow. */
	RDMIG_UFFD_NOHUGEPAGE = 1u << 2,
};

/* copy / zeropage / move / writeprotect flags */
enum {
	RDMIG_UFFD_DONTWAKE = 1u << 0,       /* don't wake waiters; the caller wakes later */
	RDMIG_UFFD_COPY_WP = 1u << 1,        /* install write-protected (WP-registered ranges) */
	RDMIG_UFFD_MOVE_SRC_HOLES = 1u << 2, /* UFFDIO_MOVE: holes in src are not an error */
};

/* What the running kernel offers, probed once per process. */
struct rdmig_uffd_caps {
	uint64_t features; /* UFFD_FEATURE_* the API handshake accepts */
	uint64_t ioctls;   /* (1 << _UFFDIO_*) available on the fd */
	bool dev_node;     /* opened through /dev/userfaultfd (the syscall refused) */
};

/*
 * Open a userfaultfd, O_CLOEXEC | O_NONBLOCK (the loop polls it; a blocking uffd
 * makes poll(2) return POLLERR). Uses userfaultfd(2) and falls back to
 * /dev/userfaultfd's USERFAULTFD_IOC_NEW when the syscall is refused (an
 * unprivileged caller without USER_MODE_ONLY). Returns the fd or -errno.
 */
RDMIG_UFFD_WUR int rdmig_uffd_open(unsigned flags);

/* Probe the kernel once per process (on a throwaway fd: UFFDIO_API may be issued
 * only once per fd) and log what it offers once. */
RDMIG_UFFD_WUR int rdmig_uffd_probe(struct rdmig_uffd_caps *out);

/*
 * The UFFDIO_API handshake enabling exactly `want`. -EOPNOTSUPP (logged with the
 * missing feature names) when the kernel lacks some; -EPERM when it refuses one
 * (UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE). *ioctls (may be NULL) gets the
 * fd's ioctl mask.
 */
RDMIG_UFFD_WUR int rdmig_uffd_api(int fd, uint64_t want, uint64_t *ioctls);

/* open + api in one; returns the fd or -errno (nothing left open on failure). */
RDMIG_UFFD_WUR int rdmig_uffd_open_api(unsigned flags, uint64_t want);

/* Register [addr, addr+len) (page aligned) with RDMIG_UFFD_* modes. *ioctls (may
 * be NULL) gets the range ioctls allowed there. */
RDMIG_UFFD_WUR int rdmig_uffd_register(int fd, uint64_t addr, uint64_t len, unsigned mode,
                                       uint64_t *ioctls);
RDMIG_UFFD_WUR int rdmig_uffd_unregister(int fd, uint64_t addr, uint64_t len);

/*
 * UFFDIO_COPY len bytes from src (caller's memory) to dst (the uffd's mm).
 * A partial copy is continued from where it stopped; *done (may be NULL) says how
 * many bytes went in, also on failure. Returns 0, -EEXIST (a page at dst is
 * already present; pages before it were copied), -EAGAIN (the target's mappings
 * are changing and nothing more could be copied: an event is queued on the uffd,
 * and retrying before it is read can spin forever when the caller is the reader,
 * so the wrapper does not retry this itself), -ENOENT (dst no longer registered),
 * -ESRCH (the target's mm is gone), or another -errno.
 */
RDMIG_UFFD_WUR int rdmig_uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len,
                                   unsigned flags, uint64_t *done);
/* UFFDIO_ZEROPAGE: same contract as rdmig_uffd_copy. */
RDMIG_UFFD_WUR int rdmig_uffd_zeropage(int fd, uint64_t dst, uint64_t len, unsigned flags,
                                       uint64_t *done);
/* UFFDIO_MOVE (src and dst both in the uffd's mm): same contract. */
RDMIG_UFFD_WUR int rdmig_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len, unsigned flags,
                                   uint64_t *done);
/* Wake threads waiting on faults in [addr, addr+len). */
RDMIG_UFFD_WUR int rdmig_uffd_wake(int fd, uint64_t addr, uint64_t len);
/* Set (wp) or clear write protection on a WP-registered range. */
RDMIG_UFFD_WUR int rdmig_uffd_writeprotect(int fd, uint64_t addr, uint64_t len, bool wp,
                                           unsigned flags);

/*
 * Is the uffd's mm still alive? 0 when it is, -ESRCH when it has exited (or
 * exec'd). The kernel sends no event when a process exits, so a handler serving
 * forked children finds the dead ones by asking: UFFDIO_WRITEPROTECT clearing
 * protection on one page takes a reference on the mm first and fails with ESRCH
 * when that is gone; on a live MISSING-only range it changes nothing (-ENOENT).
 * Do not use on ranges registered for WP whose protection matters.
 */
RDMIG_UFFD_WUR int rdmig_uffd_alive(int fd, uint64_t addr);

/* Read up to max messages without blocking. Returns how many (0: none), or -errno. */
RDMIG_UFFD_WUR int rdmig_uffd_read(int fd, struct uffd_msg *msgs, int max);

/* What to do with the result of copy / zeropage / move. */
enum rdmig_uffd_action {
	RDMIG_UFFD_DONE = 0,   /* installed, or was already there (waiters woken) */
	RDMIG_UFFD_RETRY,      /* mappings changing or memory short: read events, retry later */
	RDMIG_UFFD_RANGE_GONE, /* not registered there any more (an UNMAP is coming): drop */
	RDMIG_UFFD_MM_GONE,    /* the target's mm is gone: drop everything of this uffd */
	RDMIG_UFFD_FATAL,      /* a bug (bad address, bad fd): report */
};

/*
 * The one place that decides what an install result means. For -EEXIST it wakes
 * [addr, addr+len) (a thread may be waiting on a fault that raced with the page
 * arriving). Logs what is not routine.
 */
enum rdmig_uffd_action rdmig_uffd_policy(int fd, uint64_t addr, uint64_t len, int ret);

/* "PAGEFAULT", "FORK", ... for logs. */
const char *rdmig_uffd_event_name(unsigned event);
/* Feature bits as names ("EVENT_FORK|EVENT_REMAP|..."), into buf. */
const char *rdmig_uffd_features_str(uint64_t features, char *buf, size_t len);

#endif /* RDMIG_UFFD_H */
