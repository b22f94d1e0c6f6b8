/*
 * Restore on the destination (src/restore.c): a process rebuilt from an image
 * inside a husk, by injected syscalls.
 *
 * The husk is a child forked by the daemon at start-up, before any transport
 * exists, that does nothing but wait (rdmig_husk_spawn). The restore seizes it and
 *   1. drops everything the daemon left in it: rseq registration, every mapping
 *      but [vdso]/[vvar]*, every descriptor but 0-2, signal handlers;
 *   2. moves the husk's [vdso]/[vvar]/[vvar_vclock] to the recorded addresses
 *      (refused when the vdso's bytes or the special mappings' sizes differ);
 *   3. maps every vma at its recorded address: ANON as private anonymous memory
 *      (left empty: the pager fills it), file mappings from the same files after
 *      checking their identity (size and mtime; refused when they differ), and
 *      writes the copy-on-write pages of private file mappings;
 *   4. sets brk and the mm fields (PR_SET_MM_MAP, exe file included), reopens the
 *      descriptors at their offsets, restores handlers, alternate stack, rseq,
 *      robust list, clear_child_tid, personality, umask, cwd, rlimits, name,
 *      queues the pending signals;
 *   5. creates the userfaultfd inside the process (kept open there at a high fd,
 *      so a dead daemon can only block it, never feed it zeros), takes a copy with
 *      pidfd_getfd, applies MADV_NOHUGEPAGE to the ANON ranges;
 *   6. credentials last (groups, gids, uids, capabilities, no_new_privs), so the
 *      process never runs with more privilege than it had; then the other
 *      threads, cloned in the main one, each given its own robust list,
 *      clear_child_tid, alternate stack, name and pending signals, and every
 *      thread's cached tid (glibc) rewritten to its new tid;
 *   7. per thread: rseq, the registers (a syscall interrupted by the freeze is
 *      made to restart) and the signal mask; leaves every thread stopped until
 *      resume().
 *
 * Errors: 0 or -errno, with a sentence in `why` saying what failed and why (a
 * file that differs, a vdso that differs, an address already taken...).
 */
#ifndef RDMIG_RESTORE_H
#define RDMIG_RESTORE_H

#include "rdmig/image.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RDMIG_RESTORE_WUR __attribute__((warn_unused_result))

struct rdmig_husk;
struct rdmig_tracee;

/* Fork the husk. Call before any transport or thread exists in this process.
 * The husk dies with the daemon (PR_SET_PDEATHSIG). */
RDMIG_RESTORE_WUR int rdmig_husk_spawn(struct rdmig_husk **out);
pid_t rdmig_husk_pid(const struct rdmig_husk *h);
/* Optional, from the thread that will build: seize the husk and empty it now
 * (its mappings, descriptors and rseq registration are the daemon's and depend on
 * no image), so rdmig_restore_build() starts from an empty husk and that work
 * stays out of the downtime. On failure the husk is unusable: destroy it. */
RDMIG_RESTORE_WUR int rdmig_husk_prepare(struct rdmig_husk *h);
/* Optional, after rdmig_husk_prepare and before the freeze: build the memory map
 * of `layout` (rdmig_capture_layout: the process as it runs) into the husk now:
 * special mappings moved, exe and mm fields set, vmas mapped, MADV_NOHUGEPAGE.
 * Takes layout (zeroed on return, success or not). rdmig_restore_build() then
 * unmaps only what the image no longer has and maps only what it gained (or, if
 * the exe or a special mapping moved, empties the husk and builds from scratch).
 * On failure the husk is emptied again (usable, as after prepare) and why says
 * what failed; if even that fails the husk is killed and the build will say so. */
RDMIG_RESTORE_WUR int rdmig_husk_prebuild(struct rdmig_husk *h, struct rdmig_image *layout,
                                          char *why, size_t whylen);
/* Kill and reap a husk that will not be used (no build). Accepts NULL. */
void rdmig_husk_destroy(struct rdmig_husk *h);

struct rdmig_restore_opts {
	/* Where stdin/stdout/stderr that pointed at a terminal or pipe on the source
	 * go: a file path (opened O_RDONLY for 0; O_WRONLY|O_CREAT|O_APPEND for 1-2),
	 * or NULL for the daemon's own descriptor of that number. */
	const char *stdio_path[3];
};

struct rdmig_restored {
	pid_t pid;                   /* the process (the husk's pid) */
	int uffd;                    /* the daemon's copy of the process's userfaultfd, UFFDIO_API
			    * NOT yet done (the pager does it with its features) */
	int uffd_in_proc;            /* the number of the copy kept inside the process */
	struct rdmig_tracee *tracee; /* private to restore.c: held from build to
				      * resume (or abort), NULL after */
};

/* Build the process in the husk (consumed: on failure it is killed). On success
 * the process is stopped and traced, ready for rdmig_restore_resume(). */
RDMIG_RESTORE_WUR int rdmig_restore_build(struct rdmig_husk *h, const struct rdmig_image *img,
                                          const struct rdmig_restore_opts *o,
                                          struct rdmig_restored *out, char *why, size_t whylen);

/* Before resume: write len bytes at addr in the built process (through
 * /proc/PID/mem; works on read-only mappings). For tests and for filling pages
 * without a pager. 0, -ESRCH after resume, or -errno. */
RDMIG_RESTORE_WUR int rdmig_restore_write(struct rdmig_restored *r, uint64_t addr, const void *buf,
                                          size_t len);

/* Let it run: detach. After this the process is on its own (still our child). */
RDMIG_RESTORE_WUR int rdmig_restore_resume(struct rdmig_restored *r);

/* After post-copy: close the process's own copy of the userfaultfd (seize,
 * inject close, detach), once every range was unregistered. */
RDMIG_RESTORE_WUR int rdmig_restore_drop_uffd(struct rdmig_restored *r);

/* Before resume: kill the process being built (rollback). Closes r->uffd. */
void rdmig_restore_abort(struct rdmig_restored *r);

#endif /* RDMIG_RESTORE_H */
