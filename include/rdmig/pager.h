/*
 * The post-copy pager: a fault loop that serves a process's missing pages, the
 * page-state table it keeps, the page sources that fill pages, and the prefetcher
 * hook.
 *
 *     target threads fault ──► uffd ──► fault loop ──► page source (fetch)
 *                                          ▲   │            │
 *                    prefetcher (next) ────┘   │◄── poll ───┘  (data in staging)
 *                                              └──► UFFDIO_COPY / ZEROPAGE / WAKE
 *
 * The loop does not know which transport fills a page: a page source (the RDMA
 * one on the destination, the memory one in uffd/memsource.c for tests and the
 * local floor) fetches "the target's memory as it was at the switch" by source
 * address and hands back staging memory the loop copies into place.
 *
 * Threading: the loop runs in its own thread. Ranges, states and arenas are set
 * up before rdmig_faultloop_start(); afterwards only the loop thread touches the
 * page-state table (the prefetcher's next() and on_fault() run in that thread),
 * and other threads use rdmig_faultloop_stats() / _retry() / _stop().
 *
 * Errors: 0 (or a count) or -errno, as everywhere in rdmig.
 */
#ifndef RDMIG_PAGER_H
#define RDMIG_PAGER_H

#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDMIG_PAGER_WUR __attribute__((warn_unused_result))

/* ---------------------------------------------------------------------------
 * Page states. One byte per page; the loop thread owns every transition.
 */
enum rdmig_page_state {
	RDMIG_PAGE_UNTRACKED = 0, /* not in any range (a lookup answer, never stored) */
	/* Must come from the page source. Set at setup; a fault or the prefetcher
	 * moves it to IN_FLIGHT. Never re-entered except by a fork's copy of an
	 * IN_FLIGHT page (the child's page is still missing). */
	RDMIG_PAGE_REMOTE,
	/* A clean copy is in a local arena (pre-copy push): installed by copy from
	 * there, no fetch. Set at setup. */
	RDMIG_PAGE_ARENA,
	/* A fetch is queued, posted, landed-but-not-installed, or failed and parked.
	 * Faults on it wait in the kernel (duplicate faults coalesce) until it is
	 * installed. Left by install (INSTALLED), REMOVE (DISCARDED), UNMAP. */
	RDMIG_PAGE_IN_FLIGHT,
	/* Present in the target. Final, except REMOVE (DISCARDED) and UNMAP. */
	RDMIG_PAGE_INSTALLED,
	/* Known never touched before the switch: installed as a zero page, no fetch. */
	RDMIG_PAGE_ZERO,
	/* madvise(DONTNEED/REMOVE) was seen: the page reads zero from now on; a fault
	 * gets a zero page; a fetch in flight for it is dropped when it lands. */
	RDMIG_PAGE_DISCARDED,
	/* Not known yet whether it holds data, or its source copy may be stale: the
	 * source restored the process before walking this part of its memory. Faults
	 * wait (no fetch, no zero page) until rdmig_faultloop_release() says which
	 * pages of the part hold data (-> REMOTE) and which not (-> ZERO). Set at
	 * setup; the prefetcher is not asked for pages while any page is HELD. */
	RDMIG_PAGE_HELD,
	RDMIG_PAGE_NSTATES
};

const char *rdmig_page_state_name(enum rdmig_page_state st);

/* A page-state table: the registered ranges of one address space (the target, or
 * one of its forked children), sorted, each with one state byte per page. Lookup
 * is a binary search over ranges plus an index: O(log ranges) + O(1). */
struct rdmig_pagestate;

struct rdmig_pagestate_counts {
	uint64_t pages[RDMIG_PAGE_NSTATES]; /* pages in each state ([UNTRACKED] is 0) */
	uint64_t total;                     /* pages tracked */
	uint64_t ranges;
};

/* The state of the page holding addr (RDMIG_PAGE_UNTRACKED outside every range). */
enum rdmig_page_state rdmig_pagestate_get(const struct rdmig_pagestate *ps, uint64_t addr);
/* The first page at or after `from` in state st: 1 and *addr set, or 0 when none.
 * A sweep calling it with the last answer + page size costs O(pages) in total. */
int rdmig_pagestate_next(const struct rdmig_pagestate *ps, enum rdmig_page_state st, uint64_t from,
                         uint64_t *addr);
void rdmig_pagestate_counts(const struct rdmig_pagestate *ps, struct rdmig_pagestate_counts *out);
unsigned rdmig_pagestate_page_size(const struct rdmig_pagestate *ps);

/* Touch `bytes` of memory now, for the state arrays of tables made later (one
 * byte per page: 1 MiB covers 4 GiB of ranges), so that setting up a table
 * writes memory already in place instead of first-touching it. Tables made
 * during the downtime are why (uffd/pagestate.c says what it cost). Once per
 * process, before any table exists; arrays that do not fit are allocated as
 * usual. 0 or -errno. */
int rdmig_pagestate_reserve(size_t bytes);

/* ---------------------------------------------------------------------------
 * Page sources.
 */
struct rdmig_page_source;

struct rdmig_fetch_done {
	uint64_t ctx;  /* the caller's context from fetch() */
	uint64_t addr; /* source address fetched */
	size_t len;
	int status;       /* 0, or -errno: the data is not valid */
	const void *data; /* len bytes in staging memory owned by the source until release() */
};

/* A source fills a table of these (designated initialisers; every member set). */
struct rdmig_page_source_ops {
	size_t size; /* sizeof(struct rdmig_page_source_ops) */
	const char *name;
	/* Start fetching [addr, addr+len) of the target's memory as it was at the
	 * switch (addr is a source address: the page's address in the target before
	 * any post-switch mremap). Returns 0 once started; the result comes from
	 * poll() with ctx. -EAGAIN when no staging space or transport slot is free:
	 * the loop tries again after a poll() returned something. Any other -errno is
	 * a failure of this fetch (reported like a failed completion). */
	int (*fetch)(struct rdmig_page_source *s, uint64_t addr, size_t len, uint64_t ctx);
	/* Take up to max finished fetches without blocking; returns how many. Every
	 * successful fetch() completes exactly once (status < 0 on failure). With
	 * max 0 (out may be NULL): only send what fetch() gathered; what completed
	 * may stay here without event_fd saying so, for the next poll(), which
	 * the caller makes before it waits on event_fd. */
	int (*poll)(struct rdmig_page_source *s, struct rdmig_fetch_done *out, int max);
	/* The loop is done with d->data (installed or dropped): reuse the staging. */
	void (*release)(struct rdmig_page_source *s, const struct rdmig_fetch_done *d);
	/* An fd that turns readable when poll() may have something. The loop also
	 * calls poll() right after posting fetches, so a source that completes
	 * inside fetch() need not signal it. */
	int (*event_fd)(struct rdmig_page_source *s);
	/* Free the source. Fetches still outstanding are abandoned; the loop using it
	 * must be destroyed first. */
	void (*destroy)(struct rdmig_page_source *s);
};

/* Every source starts with this (first member), so a pointer to it is a pointer
 * to the source; the rest of the source's struct is private to its file. */
struct rdmig_page_source {
	const struct rdmig_page_source_ops *ops;
};

RDMIG_PAGER_WUR static inline int rdmig_source_fetch(struct rdmig_page_source *s, uint64_t addr,
                                                     size_t len, uint64_t ctx)
{
	return s->ops->fetch(s, addr, len, ctx);
}

static inline int rdmig_source_poll(struct rdmig_page_source *s, struct rdmig_fetch_done *out,
                                    int max)
{
	return s->ops->poll(s, out, max);
}

static inline void rdmig_source_release(struct rdmig_page_source *s,
                                        const struct rdmig_fetch_done *d)
{
	s->ops->release(s, d);
}

static inline int rdmig_source_event_fd(struct rdmig_page_source *s)
{
	return s->ops->event_fd(s);
}

static inline void rdmig_source_destroy(struct rdmig_page_source *s)
{
	if (s)
		s->ops->destroy(s);
}

/* ---------------------------------------------------------------------------
 * Prefetcher hook (the policy lives elsewhere). Both run in the loop thread.
 */
struct rdmig_prefetcher {
	/* Every page fault of the primary target (page-aligned address), before it
	 * is served. May be NULL. */
	void (*on_fault)(void *arg, uint64_t addr);
	/* Asked when the source has spare capacity and no demand fault is waiting
	 * (demand always goes first). Return 1 with *addr set to a page to bring in,
	 * 0 when there is nothing now (asked again after the next event, or after
	 * rdmig_faultloop_wake()), -errno to stop asking for good. A REMOTE page is
	 * fetched, an ARENA page is copied from the arena, any other page is
	 * skipped. May be NULL. */
	int (*next)(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr);
	void *arg;
};

/* ---------------------------------------------------------------------------
 * The fault loop.
 */
struct rdmig_faultloop;

/* The uffd features the loop needs; enable them in the UFFDIO_API handshake.
 * Each one guards against wrong data: without FORK a child reads zeros where the
 * parent had data, without REMAP an mremap'd range loses its registration and
 * reads zeros, without REMOVE a discarded page would be refetched with stale data,
 * without UNMAP the table would outlive the mapping. */
#define RDMIG_FAULTLOOP_FEATURES                                                                   \
	((uint64_t)(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |                           \
	            UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP))

enum rdmig_pager_event_type {
	/* A fetch failed (status). Its page stays IN_FLIGHT: the threads faulting on
	 * it stay blocked, nothing is zero-filled, until rdmig_faultloop_retry().
	 * Reported once per change from healthy to failed. */
	RDMIG_PAGER_SOURCE_FAILED = 1,
	/* A fetch has been outstanding longer than fetch_timeout_ms (addr). */
	RDMIG_PAGER_SOURCE_STALLED,
	/* After FAILED or STALLED: fetches complete again. */
	RDMIG_PAGER_SOURCE_OK,
	/* The target forked: the child's uffd (uffd) is served from now on. */
	RDMIG_PAGER_CHILD_ADDED,
	/* A forked child exited or exec'd (uffd). */
	RDMIG_PAGER_CHILD_GONE,
	/* The primary target's mm is gone (it exited). */
	RDMIG_PAGER_TARGET_GONE,
	/* No page of the primary target is REMOTE, ARENA or IN_FLIGHT any more. */
	RDMIG_PAGER_ALL_LOCAL,
	/* An error the loop cannot handle (status); the loop thread has ended. */
	RDMIG_PAGER_FATAL,
};

struct rdmig_pager_event {
	enum rdmig_pager_event_type type;
	int status;    /* -errno where it applies */
	uint64_t addr; /* a page it concerns, where it applies */
	int uffd;      /* the loop's fd for the process it concerns */
};

struct rdmig_faultloop_opts {
	/* The target's uffd, UFFDIO_API done with (at least) RDMIG_FAULTLOOP_FEATURES.
	 * The loop works on its own dup; the caller may close this one.
	 *
	 * Keep a copy in the target. When the last reference to a uffd goes (this
	 * daemon dies and nobody else holds it), the kernel unregisters every range
	 * and wakes the waiting threads, and they read zeros where their data should
	 * be. The loop cannot prevent that from here; the owner must leave a copy of
	 * the fd open inside the target process (the restore creates the uffd there:
	 * keep that fd open in the target after pidfd_getfd), so a dead daemon means
	 * blocked faults, never wrong data. Forked children's uffds exist only in this
	 * process (the kernel hands them to the reader of the FORK event), so a child
	 * of the target is exposed to this until its pages are all local. */
	int uffd;
	struct rdmig_page_source *source; /* not owned */
	/* The uffd belongs to this process's own mm (tests, benchmarks): ranges get
	 * MADV_NOHUGEPAGE from the loop. Otherwise the owner must have applied it
	 * inside the target. */
	bool own_mm;
	unsigned max_inflight;   /* fetches posted at once; 0: 128 */
	unsigned max_background; /* of which prefetches at most; 0: max_inflight / 2 */
	int fetch_timeout_ms;    /* report a fetch outstanding this long; 0: 5000 */
	struct rdmig_prefetcher prefetch;
	/* 0: prefetching starts at once. Otherwise it starts this long after the
	 * primary target's first demand fault, or 20 ms after the start if no
	 * fault came by then: the process's first faults after the resume have
	 * the link and the CPUs to themselves (see prefetch() in faultloop.c). */
	unsigned prefetch_quiet_us;
	/* Called in the loop thread; must not call rdmig_faultloop_stop(). May be NULL. */
	void (*on_event)(void *arg, const struct rdmig_pager_event *ev);
	void *event_arg;
	/* Called in the loop thread when a fault waits on a HELD page (src: the
	 * page's source address), so the owner can ask for its part first. Must not
	 * block. May be NULL. */
	void (*on_held)(void *arg, uint64_t src);
	/* Starts the loop's thread, fn(arg), joinable, its handle in *th; 0 /
	 * -errno. NULL: pthread_create. A daemon hands over a thread it made
	 * before the downtime (rdmig_spare_spawn): creating one at start() is
	 * inside it. */
	int (*spawn)(void *spawn_arg, pthread_t *th, void *(*fn)(void *), void *arg);
	void *spawn_arg;
};

struct rdmig_faultloop_stats {
	uint64_t faults;           /* PAGEFAULT messages read (all processes) */
	uint64_t faults_fetched;   /* ... that started a fetch */
	uint64_t faults_coalesced; /* ... on a page already in flight */
	uint64_t faults_arena;     /* ... served from the arena */
	uint64_t faults_zero;      /* ... served with a zero page (ZERO, DISCARDED, untracked) */
	uint64_t faults_raced;     /* ... on a page already installed (woken) */
	uint64_t faults_held;      /* ... that waited for their page's release (HELD) */
	uint64_t held_pages_in;    /* HELD pages installed from rdmig_faultloop_held_pages() */
	uint64_t prefetched;       /* pages brought in by the prefetcher (fetch or arena) */
	uint64_t installed;        /* pages copied in from the source */
	uint64_t dropped;          /* fetched data thrown away (page discarded / unmapped) */
	uint64_t fetch_errors;     /* failed fetches */
	uint64_t retries;          /* installs retried after -EAGAIN */
	uint64_t ev_fork, ev_remap, ev_remove, ev_unmap;
	uint64_t shared;   /* pages fetched for a forked child installed in its parent too */
	uint64_t inflight; /* fetches queued, posted, landed or parked now */
	uint64_t children; /* forked children served now */
	/* The primary target's page counts. */
	uint64_t pages_remote, pages_arena, pages_inflight, pages_installed, pages_held,
	    pages_total;
	int source_status; /* 0, or the last fetch error while failed */
	bool source_stalled;
	bool running;
};

RDMIG_PAGER_WUR int rdmig_faultloop_create(const struct rdmig_faultloop_opts *o,
                                           struct rdmig_faultloop **out);

/*
 * Before start: register [addr, addr+len) (page aligned) with the uffd for
 * missing faults and track it with every page in `initial` (REMOTE, ZERO,
 * INSTALLED ...). src is where the range's first page lives in the source
 * (normally addr itself). With register_range false the range is only tracked
 * (the owner registered it).
 */
RDMIG_PAGER_WUR int rdmig_faultloop_add_range(struct rdmig_faultloop *l, uint64_t addr,
                                              uint64_t len, uint64_t src,
                                              enum rdmig_page_state initial, bool register_range);
/* Before start: set the state of the tracked pages in [addr, addr+len). */
RDMIG_PAGER_WUR int rdmig_faultloop_set_state(struct rdmig_faultloop *l, uint64_t addr,
                                              uint64_t len, enum rdmig_page_state st);
/* Before start: pages of source addresses [src, src+len) have clean copies at
 * base (laid out like the source); mark the pages ARENA with _set_state. The
 * memory must stay valid and unchanged until the loop is destroyed. */
RDMIG_PAGER_WUR int rdmig_faultloop_add_arena(struct rdmig_faultloop *l, uint64_t src, uint64_t len,
                                              const void *base);
/* Before start: fetch the page at addr (the primary target's) when the loop
 * starts (its thread posts the fetch first thing, before it first reads a
 * fault, ahead of the prefetcher and its quiet start) if it is REMOTE then, or as soon as a release makes it REMOTE if it
 * is HELD. For the pages the frozen threads' registers point into: the loop
 * starts before the process resumes, the link is idle until its first fault,
 * and those pages are where it resumes work. At most RDMIG_FAULTLOOP_HINTS;
 * more are ignored. 0 or -EBUSY. */
#define RDMIG_FAULTLOOP_HINTS 64
RDMIG_PAGER_WUR int rdmig_faultloop_hint(struct rdmig_faultloop *l, uint64_t addr);
/* Any thread, while running (or before start): the source has walked source
 * addresses [src, src + pages*page_size) and copied what changed there; its HELD
 * pages, in the target and in every forked child, become REMOTE where bit k
 * (of byte k/8) is set and ZERO where not, and the faults waiting on them are
 * served. bits is copied. Idempotent. 0, -EINVAL or -ENOMEM. */
RDMIG_PAGER_WUR int rdmig_faultloop_release(struct rdmig_faultloop *l, uint64_t src, uint64_t pages,
                                            const uint8_t *bits);
/* Any thread, while running: source pages [src, src + pages*page_size) as the
 * frozen process holds them (1..32 pages): page k holds the next page_size bytes
 * of data where bit k of mask is set, and reads zero where not. Those still HELD
 * are installed where a fault waits on one (in any client) and in the primary
 * target at their source address (where no mremap moved them); the others stay
 * HELD until their release, which leaves the installed ones as they are. The
 * source's answer to a held fault, ahead of its part's walk. data is copied.
 * 0, -EINVAL or -ENOMEM. */
RDMIG_PAGER_WUR int rdmig_faultloop_held_pages(struct rdmig_faultloop *l, uint64_t src,
                                               uint32_t pages, uint32_t mask, const void *data);
/* Any thread, while running: the primary target's pages in [addr, addr+len) that
 * are still REMOTE now have clean copies in an arena added before start (a push
 * that landed during post-copy). The next turn marks them ARENA, so a fault
 * installs them without a fetch. Forked children keep fetching theirs. */
RDMIG_PAGER_WUR int rdmig_faultloop_arena_ready(struct rdmig_faultloop *l, uint64_t addr,
                                                uint64_t len);
/* The primary target's table, valid until destroy. Read it only from the loop
 * thread (the prefetcher's callbacks) or while the loop is not running. */
const struct rdmig_pagestate *rdmig_faultloop_pagestate(struct rdmig_faultloop *l);

RDMIG_PAGER_WUR int rdmig_faultloop_start(struct rdmig_faultloop *l);
/* Stop the loop thread and wait for it. Faults that are waiting stay waiting (the
 * loop's uffd stays open until destroy). Safe to call twice. */
void rdmig_faultloop_stop(struct rdmig_faultloop *l);
/* Stops if running, closes the loop's uffds, frees everything. Destroy the loop
 * before its source. */
void rdmig_faultloop_destroy(struct rdmig_faultloop *l);
/* Any thread: post again the fetches that failed (after the owner repaired the
 * source, e.g. reconnected). */
int rdmig_faultloop_retry(struct rdmig_faultloop *l);
/* Any thread: run a turn of the loop now, e.g. because the prefetcher has work
 * after answering "nothing now". */
void rdmig_faultloop_wake(struct rdmig_faultloop *l);
/* Any thread: a snapshot of the counters. */
void rdmig_faultloop_stats(struct rdmig_faultloop *l, struct rdmig_faultloop_stats *out);

#endif /* RDMIG_PAGER_H */
