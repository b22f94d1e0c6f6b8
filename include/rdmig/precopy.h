/*
 * The source's mirror of a running target's private anonymous memory, kept
 * filled while the target runs, and made exact at the freeze (src/precopy.c).
 *
 * Dirty tracking: a userfaultfd created INSIDE the target (one injected syscall;
 * the target's copy is closed again at once, ours keeps it alive) in WP_ASYNC +
 * WP_UNPOPULATED mode. Every anonymous range is registered for write-protect and
 * protected, then its present pages are copied into the mirror. The kernel
 * resolves the target's write faults by itself (WP_ASYNC: no thread of ours is
 * involved) and clears the protection of the page, so PAGEMAP_SCAN of
 * /proc/PID/pagemap with PAGE_IS_WRITTEN finds exactly the pages written since
 * their copy. At the freeze only those are copied again, plus every page with
 * data that was never copied (a safety net that costs nothing when tracking
 * works: a page is never sent stale).
 *
 * Pages the process never touched are never copied: the image's `touched`
 * bitmaps (present or swapped, not the shared zero page) say which pages the
 * destination must fetch; the rest it fills with zeros.
 *
 * Errors: 0 or -errno.
 */
#ifndef RDMIG_PRECOPY_H
#define RDMIG_PRECOPY_H

#include "rdmig/image.h"
#include "rdmig/mirror.h"
#include "rdmig/proto.h"
#include "rdmig/tracee.h"

#include <stdbool.h>
#include <stdint.h>

#define RDMIG_PRECOPY_WUR __attribute__((warn_unused_result))

struct rdmig_precopy;

struct rdmig_precopy_stats {
	uint64_t ranges_tracked;   /* registered for write-protect tracking */
	uint64_t ranges_untracked; /* could not be tracked: copied whole at the freeze */
	uint64_t pages_copied;     /* in the rounds while the target ran */
	uint64_t pages_first;      /* by the first round: the pages with data then */
	uint64_t pages_recopied;   /* at the freeze: written since their copy */
	uint64_t pages_late;       /* at the freeze: never copied before (new memory) */
	uint64_t pages_touched;    /* pages with data at the freeze (what the peer fetches) */
	uint64_t pages_skipped;    /* unreadable while the target ran: copied at the freeze */
	uint64_t rounds;
};

/* With t seized and interrupted: create the tracking uffd in the target (its own
 * copy is closed before this returns; the target's fd table is as it was). The
 * mirror's buffers are registered on m as they are made. */
RDMIG_PRECOPY_WUR int rdmig_precopy_start(struct rdmig_tracee *t, struct rdmig_mirror *m,
                                          struct rdmig_precopy **out);

/* While the target runs: track every anonymous range not tracked yet and copy
 * the pages written since the last round (every present page the first time).
 * -ECANCELED when the stop callback said so (checked every MiB copied). */
RDMIG_PRECOPY_WUR int rdmig_precopy_round(struct rdmig_precopy *p);

/* stop(arg), asked while a round copies, ends the round early when true: the
 * source's first copy of a large process takes seconds, and a destination that
 * could not be reached meanwhile should not wait for it. NULL: never stop. */
void rdmig_precopy_set_stop(struct rdmig_precopy *p, bool (*stop)(void *arg), void *arg);

/* Whether rounds after the first copy see what the target wrote since: only with
 * write-protect tracking (6.7+). Soft-dirty allows the first round only, and
 * later ones copy nothing. */
bool rdmig_precopy_sees_writes(const struct rdmig_precopy *p);

/* Register the target's private file mappings for write tracking too (no
 * mirror: nothing of them is copied) and protect their pages, so that at the
 * freeze PAGEMAP_SCAN tells which of their written pages changed since (see
 * rdmig_capture's `known`). Call before reading those pages for the layout.
 * A mapping that cannot be tracked is left untracked; 0 or -errno. */
RDMIG_PRECOPY_WUR int rdmig_precopy_track_files(struct rdmig_precopy *p);

/* The target is frozen and captured (img): copy what changed, and give the views
 * of the mirror that cover every ANON vma of img with data (malloc'd *views, *n).
 * A held vma (RDMIG_VMA_F_HELD: not walked yet) gets its view and its buffer but
 * no copy: rdmig_precopy_final_part copies it after its walk. */
RDMIG_PRECOPY_WUR int rdmig_precopy_final(struct rdmig_precopy *p, const struct rdmig_image *img,
                                          struct rdmig_mirror_view **views, uint32_t *n);
/* After rdmig_precopy_final, the target still frozen: the last copy of one walked
 * part of a held vma. part is a vma record for [start, end) inside it whose
 * touched (and written, or NULL when the walk could not say) bitmaps start at
 * part->start. */
RDMIG_PRECOPY_WUR int rdmig_precopy_final_part(struct rdmig_precopy *p,
                                               const struct rdmig_img_vma *part);

void rdmig_precopy_stats(const struct rdmig_precopy *p, struct rdmig_precopy_stats *out);

/* The runs of pages copied into the mirror since the last call (by rounds or the
 * freeze), in address order, each page once: malloc'd *runs (free it), *n. What a
 * pre-copy destination pulls after each round, and what it must not trust from
 * earlier rounds after the freeze. */
RDMIG_PRECOPY_WUR int rdmig_precopy_take_runs(struct rdmig_precopy *p, struct rdmig_run **runs,
                                              uint32_t *n);
/* Sort runs of 4 KiB pages by address and merge those that overlap or touch, in
 * place: each page once. Returns how many runs are left. */
uint32_t rdmig_runs_sort_merge(struct rdmig_run *runs, uint32_t n);
/* Register every buffer again, in the order they were first registered, on a new
 * connection's mirror (a reconnection after the switch): the same views hold. */
RDMIG_PRECOPY_WUR int rdmig_precopy_reregister(struct rdmig_precopy *p, struct rdmig_mirror *m);
/* Views of every tracked range's buffer (id = the range's start), for a peer that
 * pulls rounds before the freeze: malloc'd *v, *n. */
RDMIG_PRECOPY_WUR int rdmig_precopy_views(struct rdmig_precopy *p, struct rdmig_mirror_view **v,
                                          uint32_t *n);

/* Stop tracking: unregister every range from the target (which keeps running, or
 * is gone) and close the uffd. Call before releasing the mirror's memory. */
void rdmig_precopy_stop(struct rdmig_precopy *p);
/* Free the mirror's memory (after rdmig_mirror_release). Accepts NULL. */
void rdmig_precopy_free(struct rdmig_precopy *p);

#endif /* RDMIG_PRECOPY_H */
