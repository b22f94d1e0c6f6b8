/*
 * The background prefetcher's policy: which remote pages to fetch next while a
 * migrated process runs and faults the rest in on demand.
 *
 * The policy does no I/O. The fault loop tells it about demand faults (and, when
 * it can see them, touches of pages already installed) and asks it for the next
 * pages to fetch whenever it has room for more reads in flight. Demand fetches
 * always go first; the prefetcher only fills what is left.
 *
 * Order of what rdmig_prefetch_next() hands out:
 *   1. pages a retry asked for again (rdmig_prefetch_requeue);
 *   2. pages along a detected stride. Leap's detector (USENIX ATC 2020): a
 *      Boyer-Moore majority vote over the deltas of recent accesses, in a window
 *      that doubles until a majority shows; the depth along the trend doubles
 *      when the process catches up with it and halves when a fault breaks it.
 *      Leap sees every access; uffd shows only faults, so a fault k steps along
 *      the trend counts the k - 1 pages before it as seen, deltas of one sign
 *      sharing a factor stand for a stride when no majority shows, and faults
 *      inside the window that all land on multiples of g steps multiply the
 *      trend by g (the vote had found a divisor of the stride);
 *   3. pages near recent faults: a few sequential streams, each a window after
 *      its last fault (forward first, then a few pages back) that doubles each
 *      time the process faults at or past its end, so interleaved sequential
 *      streams are followed too;
 *   4. a sweep of everything else, from the last fault forward, wrapping, so that
 *      in the end every page of the ranges has been handed out or seen local.
 *
 * Contract with the caller:
 *   - is_remote(addr) is true while the page still has to come over the wire:
 *     not installed, not in flight, not known zero, not pushed to the local
 *     arena. The policy never hands out a page is_remote denies.
 *   - A page the callback has once called not remote is not asked about again: it
 *     must stay not remote (installed, zero, unmapped) or the caller fetches it
 *     itself. A prefetch that failed is given back with rdmig_prefetch_requeue.
 *   - A page next() hands out is in flight from then on (is_remote false).
 *   - next() returning 0 means there is nothing left, ever: every page of the
 *     ranges was handed out or found not remote (rdmig_prefetch_done is true),
 *     unless a later requeue gives one back.
 *
 * Cost: next() is O(max) amortised; over the whole run the sweep settles each
 * page once (a bitmap plus a union-find over 64-page chunks skips settled ones),
 * and each fault or touch opens at most depth_max + near_max stride/near
 * candidates. Memory: about 2 bits per page.
 *
 * Threading: none inside; the caller serialises calls on one object (the fault
 * loop's thread owns it).
 *
 * Errors: 0 (or a count) on success, -errno on failure.
 */
#ifndef RDMIG_PREFETCH_H
#define RDMIG_PREFETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef RDMIG_WUR
#define RDMIG_WUR __attribute__((warn_unused_result))
#endif

struct rdmig_prefetch;

/* One lazily served address range, [start, end), both page-aligned. */
struct rdmig_prefetch_range {
	uint64_t start;
	uint64_t end;
};

/* Turn parts of the policy off: baselines in tests and benchmarks. */
enum rdmig_prefetch_flags {
	RDMIG_PF_NO_STRIDE = 1u << 0, /* no trend detection */
	RDMIG_PF_NO_NEAR = 1u << 1,   /* no windows around faults */
};

struct rdmig_prefetch_cfg {
	uint64_t page_size; /* a power of two */
	/* Sorted by start, disjoint; copied at create. At least one. */
	const struct rdmig_prefetch_range *ranges;
	size_t nr_ranges;
	/* True while the page at addr still has to be fetched (see the contract). */
	bool (*is_remote)(void *arg, uint64_t addr);
	void *arg;
	/* Tuning; 0 picks the default in brackets. */
	unsigned history;       /* accesses the trend detector remembers [32], 4..1024 */
	unsigned depth_init;    /* pages along a new trend [8] */
	unsigned depth_max;     /* most pages along a trend ahead of the process [512] */
	unsigned near_forward;  /* pages after a new fault [16] */
	unsigned near_backward; /* pages before a new fault [4] */
	unsigned near_max;      /* most pages a stream's window grows to [256] */
	unsigned streams;       /* recent-fault streams remembered [4], at most 64 */
	unsigned flags;         /* enum rdmig_prefetch_flags */
};

struct rdmig_prefetch_stats {
	uint64_t pages;           /* pages in the ranges */
	uint64_t settled;         /* of those, handed out or seen not remote */
	uint64_t faults;          /* demand faults reported inside the ranges */
	uint64_t touches;         /* touches reported inside the ranges */
	uint64_t outside;         /* faults, touches, hints outside every range (ignored) */
	uint64_t issued;          /* pages next() handed out (a requeued page counts again) */
	uint64_t issued_stride;   /* ... of them along a detected stride */
	uint64_t issued_near;     /* ... near recent faults */
	uint64_t issued_sweep;    /* ... by the sweep */
	uint64_t issued_retry;    /* ... again after a requeue */
	uint64_t hits;            /* handed-out pages later touched or faulted on, as far as
				   * the caller reports touches (faults only: the late ones) */
	uint64_t inflight_faults; /* demand faults on a handed-out page not yet touched: late */
	uint64_t requeued;        /* rdmig_prefetch_requeue calls accepted */
	int64_t trend;            /* detected stride in pages, 0 when none */
	uint32_t depth;           /* current depth along the trend, pages */
};

/* Builds a policy over cfg->ranges. -EINVAL for a bad configuration (unsorted,
 * overlapping or unaligned ranges, an address at or above 2^60, no callback,
 * tuning out of its bounds), -E2BIG past 2^38 pages, -ENOMEM. */
RDMIG_WUR int rdmig_prefetch_create(const struct rdmig_prefetch_cfg *cfg,
                                    struct rdmig_prefetch **out);
/* Accepts NULL. */
void rdmig_prefetch_destroy(struct rdmig_prefetch *p);

/* A demand fault at addr (any address inside the page), including a fault on a
 * page already in flight. Feeds the trend detector and the near windows, and
 * moves the sweep to where the process is. Addresses outside the ranges are
 * counted and ignored. */
void rdmig_prefetch_on_fault(struct rdmig_prefetch *p, uint64_t addr);

/* The process touched an installed page without faulting (seen through access
 * bits, minor faults or a simulator). Optional: the policy works from faults
 * alone, but touches let a stride window slide instead of waiting for a fault. */
void rdmig_prefetch_on_touch(struct rdmig_prefetch *p, uint64_t addr);

/* Where the process is likely to start (its stack pointer, the page at its
 * program counter): anchors a near window and the sweep there, counting nothing. */
void rdmig_prefetch_hint(struct rdmig_prefetch *p, uint64_t addr);

/* Writes up to max page addresses to fetch, best first, and returns how many;
 * 0 when nothing is left (see the contract). -EINVAL for max < 0 or no array. */
RDMIG_WUR int rdmig_prefetch_next(struct rdmig_prefetch *p, uint64_t *addrs, int max);

/* A page next() handed out could not be fetched: hand it out again later (if it
 * is still remote then). -EINVAL outside the ranges, -ENOMEM. */
RDMIG_WUR int rdmig_prefetch_requeue(struct rdmig_prefetch *p, uint64_t addr);

/* True when next() has nothing left to hand out. */
bool rdmig_prefetch_done(const struct rdmig_prefetch *p);

void rdmig_prefetch_get_stats(const struct rdmig_prefetch *p, struct rdmig_prefetch_stats *st);

#endif /* RDMIG_PREFETCH_H */
