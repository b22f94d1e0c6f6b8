/*
 * Private to the restore (src/restore*.c): the state one rdmig_restore_build()
 * carries through its steps, and the helpers the step files share.
 *
 *   restore.c       the husk, the order of the steps, registers, resume/abort;
 *   restore_mm.c    emptying the husk, [vdso]/[vvar] moves, vmas, COW pages,
 *                   PR_SET_MM_MAP, MADV_NOHUGEPAGE;
 *   restore_task.c  descriptors, signals, rlimits, the in-process userfaultfd,
 *                   credentials, and the small per-task settings.
 */
#ifndef RDMIG_RESTORE_INT_H
#define RDMIG_RESTORE_INT_H

#include "rdmig/image.h"
#include "rdmig/restore.h"
#include "rdmig/tracee.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct rst {
	struct rdmig_tracee *t;
	pid_t pid;
	const struct rdmig_image *img;
	const struct rdmig_restore_opts *o;
	char *why; /* the first failure's sentence; never NULL inside the steps */
	size_t whylen;
	int uffd_in_proc;   /* -1 until created */
	int uffd;           /* the daemon's copy, -1 until taken */
	bool stdio_open[3]; /* which of 0-2 the husk has (inherited at its fork) */
	/* The layout rdmig_husk_prebuild built into the husk, when the build
	 * follows it (same exe and special mappings): rst_relayout instead of the
	 * specials and vmas steps, and rst_set_mm leaves the exe as it is. */
	const struct rdmig_image *pre;
	/* rst_relayout: kept[i] when the image's vma i is pre's, left in place
	 * (with the pages the prebuild wrote into it) */
	bool *kept;
};

/* Record the first failure as a sentence in r->why and log it; returns err. */
int rst_fail(struct rst *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Run one syscall in the process; a failing call becomes rst_fail("<what> in the
 * process being restored failed: <errno text>"). */
int rst_call(struct rst *r, const char *what, long *ret, long nr, long a0, long a1, long a2,
             long a3, long a4, long a5);

/* Several calls in one resume (rdmig_tracee_calls); a failing call becomes
 * rst_fail as in rst_call, unless failed is not NULL: then the caller words the
 * failure of call *failed itself (the error is returned, nothing recorded). */
int rst_calls(struct rst *r, struct rdmig_tracee_call *c, unsigned n, unsigned *failed);
/* One entry of such a batch: RST_CALL("umask", SYS_umask, 022) */
#define RST_CALL(name, num, ...)                                                                   \
	((struct rdmig_tracee_call){.what = (name), .nr = (num), .a = {__VA_ARGS__}})

/* Copy len bytes into the tracee's scratch area: *addr. */
int rst_to_scratch(struct rst *r, const void *buf, size_t len, uint64_t *addr);

/* Open path inside the process (*fd: the number there) / close one there (a
 * failure to close is only logged). */
int rst_open(struct rst *r, const char *path, int flags, int mode, int *fd);
void rst_close(struct rst *r, int fd);

/* restore_mm.c */
int rst_clean_husk(struct rst *r);
int rst_move_specials(struct rst *r);
int rst_avoid_layout(struct rst *r);
int rst_set_mm(struct rst *r);
int rst_map_vmas(struct rst *r);
/* True when the husk built from pre can follow img by vmas alone. */
bool rst_can_relayout(const struct rdmig_image *pre, const struct rdmig_image *img);
int rst_relayout(struct rst *r);
int rst_nohugepage(struct rst *r);
int rst_eager_pages(struct rst *r);
/* rdmig_husk_prebuild: the layout's written pages of private file mappings. */
int rst_prewrite_pages(struct rst *r);

/* restore_task.c */
int rst_rlimits(struct rst *r);
int rst_fds(struct rst *r);
int rst_task_misc(struct rst *r);
int rst_sigactions(struct rst *r);
/* The userfaultfd, made in the process (r->uffd_in_proc) and ours (r->uffd) */
int rst_uffd_make(struct rst *r);
/* The build's step: rst_uffd_make's, unless the prebuild made one that holds */
int rst_uffd(struct rst *r);
int rst_pending_signals(struct rst *r);
int rst_creds(struct rst *r);
int rst_threads(struct rst *r);
int rst_rseq(struct rst *r, unsigned thread);

#endif /* RDMIG_RESTORE_INT_H */
