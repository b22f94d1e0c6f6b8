/*
 * The page-state table's full interface (include/rdmig/pager.h has the read-only
 * part the prefetcher uses). Only the fault loop and tests change a table.
 *
 * A table is a sorted array of ranges; each range has a source address (where its
 * first page lives in the source: ranges moved by mremap keep fetching from where
 * their pages were at the switch) and one state byte per page. Events split,
 * drop and move ranges; that is O(ranges + pages moved) and rare, while the
 * per-fault lookup is a binary search and an index.
 */
#ifndef RDMIG_UFFD_PAGESTATE_H
#define RDMIG_UFFD_PAGESTATE_H

#include "rdmig/pager.h"

#include <stdbool.h>
#include <stdint.h>

/* A page found by lookup: valid until the table's ranges change. */
struct rdmig_page_ref {
	uint8_t *st;  /* its state byte */
	uint64_t src; /* its source address */
};

RDMIG_PAGER_WUR int rdmig_pagestate_create(unsigned page_size, struct rdmig_pagestate **out);
void rdmig_pagestate_destroy(struct rdmig_pagestate *ps);
/* A copy for a forked child: same ranges, states and arenas, but IN_FLIGHT pages
 * become REMOTE (the parent's fetch will fill only the parent). */
RDMIG_PAGER_WUR int rdmig_pagestate_clone_for_fork(const struct rdmig_pagestate *ps,
                                                   struct rdmig_pagestate **out);

/* Track [addr, addr+len) with every page in state st. -EEXIST if it overlaps a
 * tracked range, -EINVAL if unaligned or empty. */
RDMIG_PAGER_WUR int rdmig_pagestate_add(struct rdmig_pagestate *ps, uint64_t addr, uint64_t len,
                                        uint64_t src, enum rdmig_page_state st);
/* Stop tracking [addr, addr+len) (ranges are cut as needed). Returns the number
 * of pages forgotten, or -errno (-ENOMEM when a split cannot allocate). */
RDMIG_PAGER_WUR int64_t rdmig_pagestate_forget(struct rdmig_pagestate *ps, uint64_t addr,
                                               uint64_t len);
/* mremap: the tracked pages of [from, from+len) now live at [to, to+len), with
 * their states and source addresses. Whatever was tracked at the destination is
 * forgotten first. Returns pages moved or -errno. */
RDMIG_PAGER_WUR int64_t rdmig_pagestate_move(struct rdmig_pagestate *ps, uint64_t from, uint64_t to,
                                             uint64_t len);
/* Set every tracked page of [addr, addr+len) to st. Returns pages set. */
int64_t rdmig_pagestate_set(struct rdmig_pagestate *ps, uint64_t addr, uint64_t len,
                            enum rdmig_page_state st);

/* The source has walked source pages [src, src + pages*page_size): every HELD
 * page of that source range, in any range of the table, becomes REMOTE where bit
 * (k of byte k/8, page k of the part) is set and ZERO where not; pages in other
 * states are left alone (releasing twice changes nothing). Returns pages
 * released or -EINVAL (unaligned, wraps). */
int64_t rdmig_pagestate_release(struct rdmig_pagestate *ps, uint64_t src, uint64_t pages,
                                const uint8_t *bits);

/* Find the page holding addr: true and *ref filled, false when untracked. */
bool rdmig_pagestate_lookup(struct rdmig_pagestate *ps, uint64_t addr, struct rdmig_page_ref *ref);
/* Change one looked-up page's state, keeping the counts. */
void rdmig_pagestate_update(struct rdmig_pagestate *ps, const struct rdmig_page_ref *ref,
                            enum rdmig_page_state st);

/* The lowest tracked address: true and *addr set, false when nothing is tracked. */
bool rdmig_pagestate_first(const struct rdmig_pagestate *ps, uint64_t *addr);

/* Clean copies of source pages [src, src+len) at base (not owned). -EEXIST on overlap. */
RDMIG_PAGER_WUR int rdmig_pagestate_add_arena(struct rdmig_pagestate *ps, uint64_t src,
                                              uint64_t len, const void *base);
/* The arena copy of the source page at src, or NULL. */
const void *rdmig_pagestate_arena(const struct rdmig_pagestate *ps, uint64_t src);

#endif /* RDMIG_UFFD_PAGESTATE_H */
