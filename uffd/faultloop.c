/*
 * The fault loop: one thread serving the missing pages of a target process (and of
 * the children it forks) from a page source.
 *
 * Each turn:
 *   1. poll {control eventfd, source event fd, every served uffd};
 *   2. read every uffd's messages and dispatch on msg.event:
 *        PAGEFAULT  by page state: REMOTE -> queue a demand fetch (IN_FLIGHT);
 *                   IN_FLIGHT -> nothing (the kernel keeps the thread waiting until
 *                   the install wakes it: duplicate faults coalesce); ARENA -> copy
 *                   from the arena; ZERO, DISCARDED, untracked -> zero page;
 *                   INSTALLED -> zero page, which fails with EEXIST and wakes when
 *                   the page is there (a fault that raced its install), and is the
 *                   right answer when it is not (MADV_FREE reclaimed it, a
 *                   WIPEONFORK child);
 *        FORK       serve the child's new uffd with a copy of the parent's table;
 *        REMAP      move the pages' states (they keep their source addresses);
 *        REMOVE     DISCARDED: the page reads zero from now on, fetches in flight
 *                   for it are dropped when they land;
 *        UNMAP      forget the range;
 *   3. retry installs that met -EAGAIN (the kernel refuses installs while a
 *      fork/mremap/madvise/munmap event is queued and unread: step 2 read it);
 *   4. post queued demand fetches, then ask the prefetcher for pages while the
 *      source has room (demand always first);
 *   5. take finished fetches and install them (UFFDIO_COPY), unless the page left
 *      IN_FLIGHT meanwhile (then the data is dropped); repeat 4-5 while that
 *      frees room and posts more.
 *
 * Every fetch, queued or posted or landed, has a slot: the slot records which
 * process and address it is for, so events can cancel or retarget it, and a
 * completion is matched to its slot by index and generation. Failed fetches are
 * parked, their pages stay IN_FLIGHT and their threads blocked: the loop never
 * fills a page with zeros or stale data because the source failed.
 */
#define LOG_SUBSYS "uffd"
#include "pagestate.h"
#include "uffd.h"

#include "rdmig/log.h"
#include "rdmig/pager.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MSG_BATCH 64
#define DONE_BATCH 64
#define RUN_MAX 16 /* pages installed by one UFFDIO_COPY (64 KiB of 4 KiB pages) */
#define PREFETCH_CALLS_PER_TURN 256
#define ARENA_INSTALLS_PER_TURN 64
#define PROBE_INTERVAL_NS 1000000000ull
/* With a quiet start: prefetching starts this long after the loop when no
 * demand fault came (a process that sleeps still gets its pages). */
#define PREFETCH_IDLE_START_MS 20u
#define STALL_CHECK_NS 50000000ull
#define NIL UINT32_MAX

/* One process served: the target, or a child it forked. */
struct client {
	int uffd;
	struct rdmig_pagestate *ps;
	bool primary;
	int parent; /* index in l->clients of the process it was forked from; -1 */
};

enum slot_state {
	SLOT_FREE = 0,
	SLOT_QUEUED,  /* demand fetch waiting for room at the source (on the FIFO) */
	SLOT_POSTED,  /* fetch handed to the source */
	SLOT_LANDED,  /* data here, install met -EAGAIN: retried after events are read */
	SLOT_PARKED,  /* fetch failed: waits for rdmig_faultloop_retry() */
	SLOT_REFAULT, /* a zero/arena install met -EAGAIN: the fault is handled again */
	SLOT_HELD,    /* a fault on a HELD page: handled again when its part is released */
};

struct slot {
	uint8_t state;      /* enum slot_state */
	bool background;    /* a prefetch, not a demand fault */
	bool canceled;      /* POSTED, but its page is gone: drop the data */
	uint32_t gen;       /* matches completions to this use of the slot */
	uint32_t next;      /* FIFO / free-list link */
	int client;         /* index in l->clients */
	uint64_t addr, src; /* page in the client's mm, and where it comes from */
	uint64_t posted_ns;
	struct rdmig_fetch_done done; /* LANDED */
};

struct ready_req {
	uint64_t addr, len;
};

/* rdmig_faultloop_release() (bits), or, bits NULL, rdmig_faultloop_held_pages()
 * (data, mask; data NULL when every page reads zero) */
struct release_req {
	uint64_t src, pages;
	uint8_t *bits;
	uint8_t *data;
	uint32_t mask;
};

struct counters {
	_Atomic uint64_t faults, faults_fetched, faults_coalesced, faults_arena, faults_zero,
	    faults_raced, faults_held, held_pages_in, pages_held, prefetched, installed, dropped,
	    fetch_errors, retries, ev_fork, ev_remap, ev_remove, ev_unmap, inflight, children,
	    shared, pages_remote, pages_arena, pages_inflight, pages_installed, pages_total;
	_Atomic int source_status;
	_Atomic bool source_stalled, running;
};

struct rdmig_faultloop {
	struct rdmig_faultloop_opts o;
	unsigned page_size;
	int ctl_fd; /* eventfd: stop / retry requests */
	_Atomic bool stop_req, retry_req, ready_req, release_req;
	pthread_t thread;
	bool thread_started;

	struct client **clients; /* holes (NULL) where a child went */
	size_t nclients;
	bool pollset_dirty;
	struct pollfd *pfd;
	int *pfd_client; /* client index of each pollfd (-1: control/source) */
	size_t npfd;

	struct slot *slots;
	uint32_t nslots, free_head;
	uint32_t q_head, q_tail;    /* demand FIFO (QUEUED) */
	unsigned posted, posted_bg; /* outstanding at the source */
	uint64_t posts;             /* fetches handed to the source, ever */
	unsigned n_retry;           /* LANDED + REFAULT */
	unsigned n_parked;
	unsigned n_held; /* SLOT_HELD */

	void *bounce; /* one page: arena installs copy through it (see handle_fault) */

	pthread_mutex_t ready_mu; /* arena_ready() requests from other threads */
	struct ready_req *ready;
	size_t nready, ready_cap;
	struct release_req *rel; /* release() requests, under ready_mu too */
	size_t nrel, rel_cap;

	bool source_failed, stalled, all_local_sent, prefetch_done, prefetch_more;
	uint64_t prefetch_from_ns; /* CLOCK_MONOTONIC: no prefetching before (quiet start) */
	uint64_t hints[RDMIG_FAULTLOOP_HINTS]; /* fetched first (rdmig_faultloop_hint) */
	unsigned nhints;
	bool hints_due;   /* fetch_hints() at the next turn: the first, or a release */
	bool demand_seen; /* the primary target's first demand fault came */
	int last_error;
	uint64_t last_probe_ns, last_stall_check_ns;
	/* Fault injection: every inject_eagain-th install fails with -EAGAIN as if a
	 * mapping change were under way ($RDMIG_INJECT_UFFD_EAGAIN=N, read at create),
	 * so tests run the deferred-install paths that real races reach rarely. */
	unsigned inject_eagain;
	unsigned retry_turns; /* turns in a row with installs waiting to be retried */
	uint64_t installs;
	struct counters c;
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define INC(field) atomic_fetch_add_explicit(&l->c.field, 1, memory_order_relaxed)

static void emit(struct rdmig_faultloop *l, enum rdmig_pager_event_type type, int status,
                 uint64_t addr, int uffd)
{
	struct rdmig_pager_event ev = {.type = type, .status = status, .addr = addr, .uffd = uffd};

	if (l->o.on_event)
		l->o.on_event(l->o.event_arg, &ev);
}

/* ---- slots ------------------------------------------------------------- */

/* Twice as many slots (256 the first time), all free. */
static int slots_grow(struct rdmig_faultloop *l)
{
	uint32_t n = l->nslots ? l->nslots * 2 : 256;
	struct slot *ns = realloc(l->slots, (size_t)n * sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	memset(ns + l->nslots, 0, (size_t)(n - l->nslots) * sizeof(*ns));
	for (uint32_t i = n; i-- > l->nslots;) {
		ns[i].next = l->free_head;
		l->free_head = i;
	}
	l->slots = ns;
	l->nslots = n;
	return 0;
}

static int slot_alloc(struct rdmig_faultloop *l, uint32_t *out)
{
	if (l->free_head == NIL) {
		int ret = slots_grow(l);

		if (ret)
			return ret;
	}
	*out = l->free_head;
	l->free_head = l->slots[*out].next;
	atomic_fetch_add_explicit(&l->c.inflight, 1, memory_order_relaxed);
	return 0;
}

static void slot_free(struct rdmig_faultloop *l, uint32_t i)
{
	struct slot *s = &l->slots[i];

	s->state = SLOT_FREE;
	s->gen++;
	s->canceled = false;
	s->next = l->free_head;
	l->free_head = i;
	atomic_fetch_sub_explicit(&l->c.inflight, 1, memory_order_relaxed);
}

static void fifo_push(struct rdmig_faultloop *l, uint32_t i)
{
	l->slots[i].next = NIL;
	if (l->q_tail == NIL)
		l->q_head = i;
	else
		l->slots[l->q_tail].next = i;
	l->q_tail = i;
}

static uint64_t slot_ctx(const struct rdmig_faultloop *l, uint32_t i)
{
	return (uint64_t)l->slots[i].gen << 32 | i;
}

/* Leave a slot whose page no longer wants it (discarded, unmapped, client gone).
 * A posted fetch cannot be taken back from the source: it is marked and dropped
 * when it lands. A queued one is marked and skipped when the FIFO reaches it. */
static void slot_cancel(struct rdmig_faultloop *l, uint32_t i)
{
	struct slot *s = &l->slots[i];

	switch (s->state) {
	case SLOT_POSTED:
	case SLOT_QUEUED:
		s->canceled = true;
		break;
	case SLOT_LANDED:
		rdmig_source_release(l->o.source, &s->done);
		INC(dropped);
		l->n_retry--;
		slot_free(l, i);
		break;
	case SLOT_REFAULT:
		l->n_retry--;
		slot_free(l, i);
		break;
	case SLOT_PARKED:
		l->n_parked--;
		slot_free(l, i);
		break;
	case SLOT_HELD:
		l->n_held--;
		slot_free(l, i);
		break;
	default:
		break;
	}
}

/* ---- clients ----------------------------------------------------------- */

static void publish_counts(struct rdmig_faultloop *l)
{
	struct rdmig_pagestate_counts pc;

	if (!l->clients[0])
		return;
	rdmig_pagestate_counts(l->clients[0]->ps, &pc);
	atomic_store_explicit(&l->c.pages_remote, pc.pages[RDMIG_PAGE_REMOTE],
	                      memory_order_relaxed);
	atomic_store_explicit(&l->c.pages_arena, pc.pages[RDMIG_PAGE_ARENA], memory_order_relaxed);
	atomic_store_explicit(&l->c.pages_inflight, pc.pages[RDMIG_PAGE_IN_FLIGHT],
	                      memory_order_relaxed);
	atomic_store_explicit(&l->c.pages_installed, pc.pages[RDMIG_PAGE_INSTALLED],
	                      memory_order_relaxed);
	atomic_store_explicit(&l->c.pages_held, pc.pages[RDMIG_PAGE_HELD], memory_order_relaxed);
	atomic_store_explicit(&l->c.pages_total, pc.total, memory_order_relaxed);
	if (!l->all_local_sent && pc.total && !pc.pages[RDMIG_PAGE_REMOTE] &&
	    !pc.pages[RDMIG_PAGE_ARENA] && !pc.pages[RDMIG_PAGE_IN_FLIGHT] &&
	    !pc.pages[RDMIG_PAGE_HELD]) {
		l->all_local_sent = true;
		pr_info("all %llu pages of the target are local", (unsigned long long)pc.total);
		emit(l, RDMIG_PAGER_ALL_LOCAL, 0, 0, l->clients[0]->uffd);
	}
}

static int client_add(struct rdmig_faultloop *l, int uffd, struct rdmig_pagestate *ps, bool primary,
                      int parent)
{
	struct client *c, **nc;
	int fl;

	/* The loop polls the fd; a blocking uffd makes poll(2) answer POLLERR. The flag
	 * lives on the shared file, so the target's copy turns non-blocking too, which
	 * it never notices (it never reads the fd). */
	fl = fcntl(uffd, F_GETFL);
	if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(uffd, F_SETFL, fl | O_NONBLOCK) < 0))
		return -errno;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	nc = realloc(l->clients, (l->nclients + 1) * sizeof(*nc));
	if (!nc) {
		free(c);
		return -ENOMEM;
	}
	l->clients = nc;
	c->uffd = uffd;
	c->ps = ps;
	c->primary = primary;
	c->parent = parent;
	l->clients[l->nclients++] = c;
	l->pollset_dirty = true;
	return 0;
}

static void client_free(struct client *c)
{
	if (!c)
		return;
	if (c->uffd >= 0)
		close(c->uffd);
	rdmig_pagestate_destroy(c->ps);
	free(c);
}

/* The process behind clients[ci] is gone (or cannot be served): drop it. */
static void client_gone(struct rdmig_faultloop *l, int ci)
{
	struct client *c = l->clients[ci];

	if (!c)
		return;
	for (uint32_t i = 0; i < l->nslots; i++)
		if (l->slots[i].state != SLOT_FREE && l->slots[i].client == ci)
			slot_cancel(l, i);
	if (c->primary) {
		/* a process that exits before all its pages came home: nothing wrong */
		pr_info("target's mm is gone (it exited or exec'd): no more faults to serve "
		        "for it");
		emit(l, RDMIG_PAGER_TARGET_GONE, -ESRCH, 0, c->uffd);
		/* Keep the primary's table for its counts; nothing will fault on it. */
		close(c->uffd);
		c->uffd = -1;
	} else {
		int uffd = c->uffd;

		pr_info("forked child (uffd %d) is gone", uffd);
		client_free(c);
		l->clients[ci] = NULL;
		/* the count first: whoever the event wakes reads it */
		atomic_fetch_sub_explicit(&l->c.children, 1, memory_order_relaxed);
		emit(l, RDMIG_PAGER_CHILD_GONE, 0, 0, uffd);
	}
	l->pollset_dirty = true;
}

/* ---- installing -------------------------------------------------------- */

enum install_kind { INSTALL_COPY, INSTALL_ZERO };

/* Install one page and apply the error policy. Returns the action. */
static enum rdmig_uffd_action install(struct rdmig_faultloop *l, int ci, enum install_kind kind,
                                      uint64_t addr, const void *data)
{
	struct client *c = l->clients[ci];
	int ret;

	/* Injection point: the -EAGAIN of a mapping change, on demand. */
	if (l->inject_eagain && ++l->installs % l->inject_eagain == 0)
		return rdmig_uffd_policy(c->uffd, addr, l->page_size, -EAGAIN);
	if (kind == INSTALL_COPY)
		ret = rdmig_uffd_copy(c->uffd, addr, data, l->page_size, 0, NULL);
	else
		ret = rdmig_uffd_zeropage(c->uffd, addr, l->page_size, 0, NULL);
	return rdmig_uffd_policy(c->uffd, addr, l->page_size, ret);
}

/* Park a fault to handle again after the pending events are read. */
static void refault_later(struct rdmig_faultloop *l, int ci, uint64_t addr)
{
	uint32_t i;

	if (slot_alloc(l, &i)) {
		/* Nowhere to remember it: the thread stays blocked until something wakes
		 * it, so say so loudly rather than losing it silently. */
		pr_err("out of memory: fault at %#llx not retried (thread stays blocked)",
		       (unsigned long long)addr);
		return;
	}
	l->slots[i].state = SLOT_REFAULT;
	l->slots[i].client = ci;
	l->slots[i].addr = addr;
	l->n_retry++;
	INC(retries);
}

static void fatal(struct rdmig_faultloop *l, int status, uint64_t addr, const char *what)
{
	pr_err("%s at %#llx: %s; the fault loop stops (blocked threads stay blocked)", what,
	       (unsigned long long)addr, strerror(-status));
	l->last_error = status;
	atomic_store(&l->stop_req, true);
	emit(l, RDMIG_PAGER_FATAL, status, addr, -1);
}

/* After an install: follow the policy's answer for the page at ref. Returns false
 * when the client was dropped (ref is stale then). */
static bool after_install(struct rdmig_faultloop *l, int ci, uint64_t addr,
                          const struct rdmig_page_ref *ref, enum rdmig_uffd_action a, bool *retry)
{
	struct client *c = l->clients[ci];

	*retry = false;
	switch (a) {
	case RDMIG_UFFD_DONE:
		if (ref)
			rdmig_pagestate_update(c->ps, ref, RDMIG_PAGE_INSTALLED);
		return true;
	case RDMIG_UFFD_RETRY:
		*retry = true;
		return true;
	case RDMIG_UFFD_RANGE_GONE:
		/* No registered mapping there (an UNMAP event is on its way): nobody can
		 * fault on it, so nothing waits. */
		pr_debug("install %#llx: range gone", (unsigned long long)addr);
		return true;
	case RDMIG_UFFD_MM_GONE:
		client_gone(l, ci);
		return false;
	case RDMIG_UFFD_FATAL:
	default:
		fatal(l, -EIO, addr, "install failed");
		return false;
	}
}

/*
 * A page installed in a forked child from the source (fetched, or from the
 * arena), at addr in both (the fork copied the parent's layout), goes into the
 * parent too when the parent's page there is still REMOTE or ARENA for the same
 * source page: both would read exactly that data, the source page as it was at
 * the freeze (neither state is left once a page is written or dropped). Without
 * this a forked worker's reads left the parent's pages remote, and the next
 * worker, forked from it, fetched them all again: a test parent forking 80
 * readers of its 10 MiB heap read 324 MiB. Anything else the parent's page is
 * (fetched or in flight, zeroed, held, gone) or any failure of the copy leaves
 * it alone: the parent then gets it itself, as before.
 */
static void share_with_parent(struct rdmig_faultloop *l, int ci, uint64_t addr, uint64_t src,
                              const void *data)
{
	const struct client *c = l->clients[ci];
	struct client *p = c && c->parent >= 0 ? l->clients[c->parent] : NULL;
	struct rdmig_page_ref ref;

	if (!p || p->uffd < 0 || !rdmig_pagestate_lookup(p->ps, addr, &ref) || ref.src != src ||
	    (*ref.st != RDMIG_PAGE_REMOTE && *ref.st != RDMIG_PAGE_ARENA))
		return;
	if (rdmig_uffd_copy(p->uffd, addr, data, l->page_size, 0, NULL) < 0)
		return;
	rdmig_pagestate_update(p->ps, &ref, RDMIG_PAGE_INSTALLED);
	INC(shared);
}

/* ---- faults ------------------------------------------------------------ */

/* A slot for a demand fault of client ci at addr (source address src), in
 * state st. -ENOMEM is logged: the faulting thread stays blocked. */
static int fault_slot(struct rdmig_faultloop *l, int ci, uint64_t addr, uint64_t src,
                      enum slot_state st, uint32_t *out)
{
	uint32_t i;

	if (slot_alloc(l, &i)) {
		pr_err("out of memory: fault at %#llx not served (thread stays blocked)",
		       (unsigned long long)addr);
		return -ENOMEM;
	}
	l->slots[i].state = (uint8_t)st;
	l->slots[i].background = false;
	l->slots[i].client = ci;
	l->slots[i].addr = addr;
	l->slots[i].src = src;
	*out = i;
	return 0;
}

static void handle_fault(struct rdmig_faultloop *l, int ci, uint64_t addr, bool demand)
{
	struct client *c = l->clients[ci];
	struct rdmig_page_ref ref;
	enum rdmig_uffd_action a;
	const void *arena;
	bool retry;
	uint32_t i;

	if (!rdmig_pagestate_lookup(c->ps, addr, &ref)) {
		/* Registered but not tracked: memory that appeared after the switch in a
		 * registered VMA (an mremap that grew it). It has never had data. */
		if (demand)
			INC(faults_zero);
		a = install(l, ci, INSTALL_ZERO, addr, NULL);
		if (after_install(l, ci, addr, NULL, a, &retry) && retry)
			refault_later(l, ci, addr);
		return;
	}
	switch ((int)*ref.st) {
	case RDMIG_PAGE_REMOTE:
		if (fault_slot(l, ci, addr, ref.src, SLOT_QUEUED, &i))
			return;
		fifo_push(l, i);
		rdmig_pagestate_update(c->ps, &ref, RDMIG_PAGE_IN_FLIGHT);
		if (demand)
			INC(faults_fetched);
		break;
	case RDMIG_PAGE_IN_FLIGHT:
		if (demand)
			INC(faults_coalesced);
		break;
	case RDMIG_PAGE_HELD:
		/* The source has not said yet whether this page holds data, or its
		 * copy there may be older than the process's last write: neither a
		 * fetch nor a zero page is right. The thread waits in the kernel. */
		if (fault_slot(l, ci, addr, ref.src, SLOT_HELD, &i))
			return;
		l->n_held++;
		if (demand)
			INC(faults_held);
		if (l->o.on_held)
			l->o.on_held(l->o.event_arg, ref.src);
		break;
	case RDMIG_PAGE_ARENA:
		arena = rdmig_pagestate_arena(c->ps, ref.src);
		if (!arena) {
			fatal(l, -EFAULT, addr, "ARENA page without an arena");
			return;
		}
		if (demand)
			INC(faults_arena);
		/* Copy through a page the kernel read from a moment ago. Measured here
		 * (KVM-PVM guest, 6.18): UFFDIO_COPY from an arena page the kernel has not
		 * read before costs 7.7 us p50, from a recently used page 1.9 us, and a
		 * user-space memcpy into one first plus the ioctl 2.3 us. On bare metal
		 * the bounce costs a 4 KiB memcpy. */
		memcpy(l->bounce, arena, l->page_size);
		a = install(l, ci, INSTALL_COPY, addr, l->bounce);
		if (after_install(l, ci, addr, &ref, a, &retry) && retry)
			refault_later(l, ci, addr);
		else if (a == RDMIG_UFFD_DONE)
			share_with_parent(l, ci, addr, ref.src, l->bounce);
		break;
	case RDMIG_PAGE_ZERO:
	case RDMIG_PAGE_DISCARDED:
		if (demand)
			INC(faults_zero);
		a = install(l, ci, INSTALL_ZERO, addr, NULL);
		if (after_install(l, ci, addr, &ref, a, &retry) && retry)
			refault_later(l, ci, addr);
		break;
	case RDMIG_PAGE_INSTALLED:
	default:
		if (demand)
			INC(faults_raced);
		/* EEXIST (and a wake) when it is there; a zero page when it was freed
		 * behind our back, which is what the process would read anyway. */
		a = install(l, ci, INSTALL_ZERO, addr, NULL);
		if (after_install(l, ci, addr, NULL, a, &retry) && retry)
			refault_later(l, ci, addr);
		break;
	}
}

/* ---- events ------------------------------------------------------------ */

/* Cancel the slots of client ci in [start, end). Returns how many. */
static unsigned cancel_range(struct rdmig_faultloop *l, int ci, uint64_t start, uint64_t end)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < l->nslots; i++) {
		struct slot *s = &l->slots[i];

		if (s->state == SLOT_FREE || s->client != ci || s->canceled || s->addr < start ||
		    s->addr >= end)
			continue;
		slot_cancel(l, i);
		n++;
	}
	return n;
}

static void wake_range(struct rdmig_faultloop *l, int ci, uint64_t start, uint64_t end)
{
	int ret = rdmig_uffd_wake(l->clients[ci]->uffd, start, end - start);

	if (ret && ret != -ESRCH)
		pr_warn("wake %#llx-%#llx: %s", (unsigned long long)start, (unsigned long long)end,
		        strerror(-ret));
}

static void on_remove(struct rdmig_faultloop *l, int ci, uint64_t start, uint64_t end)
{
	struct client *c = l->clients[ci];

	INC(ev_remove);
	start &= ~(uint64_t)(l->page_size - 1);
	cancel_range(l, ci, start, end);
	rdmig_pagestate_set(c->ps, start, end - start, RDMIG_PAGE_DISCARDED);
	/* A thread may wait on a fault read before this event (faults are read
	 * first); it retries, finds the page DISCARDED and gets a zero page. */
	wake_range(l, ci, start, end);
	pr_debug("remove %#llx-%#llx", (unsigned long long)start, (unsigned long long)end);
}

static void on_unmap(struct rdmig_faultloop *l, int ci, uint64_t start, uint64_t end)
{
	struct client *c = l->clients[ci];
	int64_t n;

	INC(ev_unmap);
	cancel_range(l, ci, start, end);
	n = rdmig_pagestate_forget(c->ps, start, end - start);
	if (n < 0)
		fatal(l, (int)n, start, "forgetting an unmapped range");
	wake_range(l, ci, start, end);
	pr_debug("unmap %#llx-%#llx (%lld pages)", (unsigned long long)start,
	         (unsigned long long)end, (long long)n);
}

static void on_remap(struct rdmig_faultloop *l, int ci, uint64_t from, uint64_t to, uint64_t len)
{
	struct client *c = l->clients[ci];
	int64_t n;

	INC(ev_remap);
	/* Fetches for moved pages follow them: their data is still the right data
	 * (source addresses do not move), only the place to install changes. */
	for (uint32_t i = 0; i < l->nslots; i++) {
		struct slot *s = &l->slots[i];

		if (s->state != SLOT_FREE && s->client == ci && s->addr >= from &&
		    s->addr < from + len)
			s->addr = s->addr - from + to;
	}
	n = rdmig_pagestate_move(c->ps, from, to, len);
	if (n < 0)
		fatal(l, (int)n, from, "moving page states for mremap");
	/* Threads waiting at the old addresses retry and find out where they are. */
	wake_range(l, ci, from, from + len);
	pr_debug("remap %#llx -> %#llx +%#llx (%lld pages)", (unsigned long long)from,
	         (unsigned long long)to, (unsigned long long)len, (long long)n);
}

static void on_fork(struct rdmig_faultloop *l, int ci, int ufd)
{
	struct rdmig_pagestate *ps;
	int ret;

	INC(ev_fork);
	/* The table is exactly the parent's page tables at the fork: an install into
	 * the parent after the kernel copied them failed with -EAGAIN until this event
	 * was read, so INSTALLED pages are present in the child and the rest missing. */
	ret = rdmig_pagestate_clone_for_fork(l->clients[ci]->ps, &ps);
	if (!ret) {
		ret = client_add(l, ufd, ps, false, ci);
		if (ret)
			rdmig_pagestate_destroy(ps);
	}
	if (ret) {
		/* Closing the child's uffd would let it read zeros; keeping it open
		 * unserved blocks it. The second is the honest failure. */
		pr_err("cannot serve forked child (uffd %d): %s; its faults stay blocked", ufd,
		       strerror(-ret));
		return;
	}
	atomic_fetch_add_explicit(&l->c.children, 1, memory_order_relaxed);
	pr_info("serving forked child (uffd %d)", ufd);
	emit(l, RDMIG_PAGER_CHILD_ADDED, 0, 0, ufd);
}

/* Read and dispatch everything queued on client ci's uffd. */
static void drain_uffd(struct rdmig_faultloop *l, int ci)
{
	struct uffd_msg msg[MSG_BATCH];
	int n;

	do {
		if (!l->clients[ci] || l->clients[ci]->uffd < 0)
			return;
		n = rdmig_uffd_read(l->clients[ci]->uffd, msg, MSG_BATCH);
		if (n < 0) {
			pr_err("reading uffd %d: %s", l->clients[ci]->uffd, strerror(-n));
			client_gone(l, ci);
			return;
		}
		for (int k = 0; k < n && l->clients[ci] && l->clients[ci]->uffd >= 0; k++) {
			const struct uffd_msg *m = &msg[k];
			uint64_t addr;

			switch (m->event) {
			case UFFD_EVENT_PAGEFAULT:
				INC(faults);
				addr = m->arg.pagefault.address & ~(uint64_t)(l->page_size - 1);
				/* the quiet start runs from the first demand fault
				 * (unless the idle start ended it already) */
				if (!l->demand_seen && l->clients[ci]->primary) {
					l->demand_seen = true;
					if (l->prefetch_from_ns)
						l->prefetch_from_ns =
						    mono_ns() + l->o.prefetch_quiet_us * 1000ull;
				}
				if (l->clients[ci]->primary && l->o.prefetch.on_fault)
					l->o.prefetch.on_fault(l->o.prefetch.arg, addr);
				handle_fault(l, ci, addr, true);
				break;
			case UFFD_EVENT_FORK:
				on_fork(l, ci, (int)m->arg.fork.ufd);
				break;
			case UFFD_EVENT_REMAP:
				on_remap(l, ci, m->arg.remap.from, m->arg.remap.to,
				         m->arg.remap.len);
				break;
			case UFFD_EVENT_REMOVE:
				on_remove(l, ci, m->arg.remove.start, m->arg.remove.end);
				break;
			case UFFD_EVENT_UNMAP:
				on_unmap(l, ci, m->arg.remove.start, m->arg.remove.end);
				break;
			default:
				pr_warn("unknown uffd event %#x", m->event);
				break;
			}
		}
	} while (n == MSG_BATCH);
}

/* ---- fetching ---------------------------------------------------------- */

static void source_failed(struct rdmig_faultloop *l, uint32_t i, int status)
{
	struct slot *s = &l->slots[i];

	INC(fetch_errors);
	s->state = SLOT_PARKED;
	l->n_parked++;
	atomic_store(&l->c.source_status, status);
	if (!l->source_failed) {
		l->source_failed = true;
		pr_err("page source '%s' failed fetching %#llx for %#llx: %s; faulting threads "
		       "stay blocked until the source is repaired (rdmig_faultloop_retry)",
		       l->o.source->ops->name, (unsigned long long)s->src,
		       (unsigned long long)s->addr, strerror(-status));
		emit(l, RDMIG_PAGER_SOURCE_FAILED, status, s->addr, l->clients[s->client]->uffd);
	}
}

/* Hand slot i to the source. Returns 0, -EAGAIN (no room: leave it where it is),
 * or a failure already handled (the slot is parked). */
static int post(struct rdmig_faultloop *l, uint32_t i)
{
	struct slot *s = &l->slots[i];
	int ret = rdmig_source_fetch(l->o.source, s->src, l->page_size, slot_ctx(l, i));

	if (ret == -EAGAIN)
		return ret;
	if (ret) {
		source_failed(l, i, ret);
		return ret;
	}
	s->state = SLOT_POSTED;
	s->posted_ns = mono_ns();
	l->posted++;
	l->posts++;
	if (s->background)
		l->posted_bg++;
	return 0;
}

static void post_demand(struct rdmig_faultloop *l)
{
	while (l->q_head != NIL && l->posted < l->o.max_inflight) {
		uint32_t i = l->q_head;
		struct slot *s = &l->slots[i];

		if (s->canceled) {
			l->q_head = s->next;
			if (l->q_head == NIL)
				l->q_tail = NIL;
			slot_free(l, i);
			continue;
		}
		if (post(l, i) == -EAGAIN)
			break;
		l->q_head = s->next;
		if (l->q_head == NIL)
			l->q_tail = NIL;
	}
}

/* A landed slot whose page went in (or was dropped): count it, give the staging
 * back, free the slot. */
static void landed_done(struct rdmig_faultloop *l, uint32_t i, bool installed)
{
	struct slot *s = &l->slots[i];

	if (installed) {
		INC(installed);
		if (s->background)
			INC(prefetched);
	} else {
		INC(dropped);
	}
	if (s->state == SLOT_LANDED)
		l->n_retry--;
	rdmig_source_release(l->o.source, &s->done);
	slot_free(l, i);
}

static void install_landed(struct rdmig_faultloop *l, uint32_t i)
{
	struct slot *s = &l->slots[i];
	struct client *c = l->clients[s->client];
	struct rdmig_page_ref ref;
	enum rdmig_uffd_action a;
	bool retry;

	if (!c || c->uffd < 0 || !rdmig_pagestate_lookup(c->ps, s->addr, &ref) ||
	    *ref.st != RDMIG_PAGE_IN_FLIGHT) {
		/* Events cancel the slots of pages they change, so this is defensive:
		 * data for a page that is no longer waiting for it is never installed. */
		goto drop;
	}
	a = install(l, s->client, INSTALL_COPY, s->addr, s->done.data);
	if (!after_install(l, s->client, s->addr, &ref, a, &retry)) {
		/* client dropped: client_gone cancelled this slot unless it was POSTED */
		if (l->slots[i].state != SLOT_FREE)
			goto drop;
		return;
	}
	if (retry) {
		if (s->state != SLOT_LANDED) {
			s->state = SLOT_LANDED;
			l->n_retry++;
		}
		INC(retries);
		return;
	}
	/* not DONE: the range went away, nothing waits on it any more */
	if (a != RDMIG_UFFD_DONE)
		rdmig_pagestate_update(c->ps, &ref, RDMIG_PAGE_REMOTE);
	else
		share_with_parent(l, s->client, s->addr, s->src, s->done.data);
	landed_done(l, i, a == RDMIG_UFFD_DONE);
	return;

drop:
	landed_done(l, i, false);
}

/* Can slot i's landed page go in with the run ending at slot prev: the next page
 * of the same process, its data right after prev's in the source's staging? */
static bool run_extends(const struct rdmig_faultloop *l, uint32_t prev, uint32_t i)
{
	const struct slot *p = &l->slots[prev], *s = &l->slots[i];

	return s->client == p->client && s->addr == p->addr + l->page_size &&
	       s->done.len == l->page_size &&
	       (const uint8_t *)s->done.data == (const uint8_t *)p->done.data + l->page_size;
}

/* run[from, to) with one UFFDIO_COPY; in[j] set for each page that went in
 * (the ones after a failure go through the per-page path). */
static void install_part(struct rdmig_faultloop *l, struct client *c, const uint32_t *run,
                         unsigned from, unsigned to, bool *in)
{
	const struct slot *s = &l->slots[run[from < to ? from : 0]];
	uint64_t done = 0;

	if (from >= to)
		return;
	if (rdmig_uffd_copy(c->uffd, s->addr, s->done.data, (uint64_t)(to - from) * l->page_size, 0,
	                    &done) < 0)
		pr_debug("run of %u pages at %#llx: %llu bytes went in, the rest page by page",
		         to - from, (unsigned long long)s->addr, (unsigned long long)done);
	for (unsigned j = from; j < to && done >= l->page_size; j++, done -= l->page_size)
		in[j] = true;
}

/*
 * Install a run of landed pages, neighbours in the process and in the staging
 * memory (the source gathers neighbouring fetches into one READ), with one
 * UFFDIO_COPY: page by page it copied ~1 GB/s here against 3.1-3.7 GB/s in 64 KiB
 * (256 MiB, side by side), and that capped how fast pages came home. A run that
 * holds a page a fault asked for is split around it (install_part). Every page
 * must still be IN_FLIGHT; whatever the one copy did not install (a page that
 * left IN_FLIGHT, -EEXIST, -EAGAIN, ...) goes through the per-page path, which
 * owns the error policy.
 */
static void install_run(struct rdmig_faultloop *l, const uint32_t *run, unsigned n)
{
	const struct slot *first = &l->slots[run[0]];
	struct client *c = l->clients[first->client];
	struct rdmig_page_ref ref[RUN_MAX];
	bool in[RUN_MAX] = {false};

	if (n > 1 && !l->inject_eagain && c && c->uffd >= 0) {
		bool all_waiting = true;
		unsigned d = n;

		for (unsigned j = 0; j < n && all_waiting; j++)
			all_waiting =
			    rdmig_pagestate_lookup(c->ps, l->slots[run[j]].addr, &ref[j]) &&
			    *ref[j].st == RDMIG_PAGE_IN_FLIGHT;
		/* A page a fault asked for goes in first, alone: its thread runs
		 * while the rest of the run is copied (a 64 KiB copy into fresh
		 * pages took ~0.2 ms here, inside the first fault after the resume). */
		for (unsigned j = 0; j < n && d == n; j++)
			if (!l->slots[run[j]].background)
				d = j;
		if (all_waiting && d < n) {
			install_part(l, c, run, d, d + 1, in);
			install_part(l, c, run, 0, d, in);
			install_part(l, c, run, d + 1, n, in);
		} else if (all_waiting) {
			install_part(l, c, run, 0, n, in);
		}
	}
	for (unsigned j = 0; j < n; j++) {
		if (!in[j]) {
			install_landed(l, run[j]);
			continue;
		}
		rdmig_pagestate_update(c->ps, &ref[j], RDMIG_PAGE_INSTALLED);
		share_with_parent(l, first->client, l->slots[run[j]].addr, l->slots[run[j]].src,
		                  l->slots[run[j]].done.data);
		landed_done(l, run[j], true);
	}
}

static void take_completions(struct rdmig_faultloop *l)
{
	struct rdmig_fetch_done d[DONE_BATCH];
	uint32_t run[RUN_MAX];
	unsigned nrun = 0;
	int n;

	do {
		n = rdmig_source_poll(l->o.source, d, DONE_BATCH);
		for (int k = 0; k < n; k++) {
			uint32_t i = (uint32_t)d[k].ctx;
			struct slot *s;

			if (i >= l->nslots || slot_ctx(l, i) != d[k].ctx ||
			    l->slots[i].state != SLOT_POSTED) {
				pr_err("completion with unknown context %#llx dropped",
				       (unsigned long long)d[k].ctx);
				rdmig_source_release(l->o.source, &d[k]);
				continue;
			}
			s = &l->slots[i];
			l->posted--;
			if (s->background)
				l->posted_bg--;
			if (l->stalled || (l->source_failed && !d[k].status)) {
				if (!d[k].status) {
					pr_info("page source '%s' answers again",
					        l->o.source->ops->name);
					l->stalled = false;
					l->source_failed = l->n_parked > 0;
					atomic_store(&l->c.source_stalled, false);
					if (!l->source_failed)
						atomic_store(&l->c.source_status, 0);
					emit(l, RDMIG_PAGER_SOURCE_OK, 0, s->addr, -1);
				}
			}
			if (s->canceled) {
				rdmig_source_release(l->o.source, &d[k]);
				INC(dropped);
				slot_free(l, i);
				continue;
			}
			if (d[k].status) {
				rdmig_source_release(l->o.source, &d[k]);
				source_failed(l, i, d[k].status);
				continue;
			}
			s->done = d[k];
			if (nrun && (nrun == RUN_MAX || !run_extends(l, run[nrun - 1], i))) {
				install_run(l, run, nrun);
				nrun = 0;
			}
			run[nrun++] = i;
		}
		/* before the next poll: a run never waits on the source */
		if (nrun)
			install_run(l, run, nrun);
		nrun = 0;
	} while (n == DONE_BATCH);
}

static void retry_pending(struct rdmig_faultloop *l)
{
	for (uint32_t i = 0; i < l->nslots && l->n_retry; i++) {
		struct slot *s = &l->slots[i];

		if (s->state == SLOT_LANDED) {
			install_landed(l, i);
		} else if (s->state == SLOT_REFAULT) {
			int ci = s->client;
			uint64_t addr = s->addr;

			l->n_retry--;
			slot_free(l, i);
			if (l->clients[ci] && l->clients[ci]->uffd >= 0)
				handle_fault(l, ci, addr, false);
		}
	}
}

static void requeue_parked(struct rdmig_faultloop *l)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < l->nslots && l->n_parked; i++) {
		if (l->slots[i].state != SLOT_PARKED)
			continue;
		l->n_parked--;
		l->slots[i].state = SLOT_QUEUED;
		fifo_push(l, i); /* background ones too: a fault may wait on them now */
		n++;
	}
	/* source_failed stays until a fetch succeeds: that reports SOURCE_OK, and a
	 * fetch failing again does not report a second failure. */
	pr_info("retrying %u failed fetches", n);
}

/* Pages pushed to the arena while running: REMOTE -> ARENA where a copy exists. */
static void apply_arena_ready(struct rdmig_faultloop *l)
{
	struct client *c = l->clients[0];
	struct ready_req *req;
	size_t n;

	pthread_mutex_lock(&l->ready_mu);
	req = l->ready;
	n = l->nready;
	l->ready = NULL;
	l->nready = l->ready_cap = 0;
	pthread_mutex_unlock(&l->ready_mu);
	for (size_t k = 0; k < n && c; k++) {
		for (uint64_t a = req[k].addr; a < req[k].addr + req[k].len; a += l->page_size) {
			struct rdmig_page_ref ref;

			if (rdmig_pagestate_lookup(c->ps, a, &ref) &&
			    *ref.st == RDMIG_PAGE_REMOTE && rdmig_pagestate_arena(c->ps, ref.src))
				rdmig_pagestate_update(c->ps, &ref, RDMIG_PAGE_ARENA);
		}
	}
	free(req);
}

/* Does a held fault wait on a page of source addresses [src, end)? */
static bool waited_on(const struct rdmig_faultloop *l, uint64_t src, uint64_t end)
{
	for (uint32_t i = 0; i < l->nslots; i++)
		if (l->slots[i].state == SLOT_HELD && l->slots[i].src >= src &&
		    l->slots[i].src < end)
			return true;
	return false;
}

/* Page k's data in a held_pages request, NULL when it reads zero. */
static const void *page_data(const struct rdmig_faultloop *l, const struct release_req *r,
                             uint64_t k)
{
	uint32_t before = r->mask & ((1u << k) - 1u);

	return r->mask >> k & 1 ? r->data + (size_t)__builtin_popcount(before) * l->page_size
	                        : NULL;
}

/* One page of a held_pages request into client ci at addr, if that page is
 * still HELD and comes from source address src (data NULL: a zero page). True
 * when it went in. An install that must wait (-EAGAIN) leaves it HELD: the
 * part's release serves it. */
static bool held_install(struct rdmig_faultloop *l, int ci, uint64_t addr, uint64_t src,
                         const void *data)
{
	struct client *c = l->clients[ci];
	struct rdmig_page_ref ref;
	enum rdmig_uffd_action a;
	bool retry;

	if (!c || c->uffd < 0 || !rdmig_pagestate_lookup(c->ps, addr, &ref) || ref.src != src ||
	    *ref.st != RDMIG_PAGE_HELD)
		return false;
	a = install(l, ci, data ? INSTALL_COPY : INSTALL_ZERO, addr, data);
	if (!after_install(l, ci, addr, &ref, a, &retry) || a != RDMIG_UFFD_DONE)
		return false;
	INC(held_pages_in);
	return true;
}

/* The source's answer to held faults: the faults waiting on these pages first
 * (any client: a child, a page mremap moved), then the primary target's (client
 * 0's) pages where they were. The install wakes the waiting threads. */
static void apply_held_pages(struct rdmig_faultloop *l, const struct release_req *r)
{
	uint64_t end = r->src + r->pages * l->page_size;

	for (uint32_t i = 0; i < l->nslots && l->n_held; i++) {
		struct slot *s = &l->slots[i];
		uint64_t k;

		if (s->state != SLOT_HELD || s->src < r->src || s->src >= end)
			continue;
		k = (s->src - r->src) / l->page_size;
		if (!held_install(l, s->client, s->addr, s->src, page_data(l, r, k)))
			continue;
		l->n_held--;
		slot_free(l, i);
	}
	for (uint64_t k = 0; k < r->pages; k++) {
		uint64_t a = r->src + k * l->page_size;

		(void)held_install(l, 0, a, a, page_data(l, r, k));
	}
}

/* Parts the source has walked: HELD -> REMOTE or ZERO in every client, then the
 * faults that waited on them are handled again (by source address: a page moved
 * by mremap keeps its source address, and a child's pages have the parent's). */
static void apply_release(struct rdmig_faultloop *l)
{
	struct release_req *req;
	size_t n;

	pthread_mutex_lock(&l->ready_mu);
	req = l->rel;
	n = l->nrel;
	l->rel = NULL;
	l->nrel = l->rel_cap = 0;
	pthread_mutex_unlock(&l->ready_mu);
	/* The source's answers to held faults before any release */
	for (size_t k = 0; k < n; k++)
		if (!req[k].bits)
			apply_held_pages(l, &req[k]);
	/* Parts a fault waits on first: the source walks a wanted part next, but
	 * the parts it sent before that one are often still queued here. */
	for (size_t k = 0, front = 0; k < n && l->n_held; k++) {
		if (!req[k].bits ||
		    !waited_on(l, req[k].src, req[k].src + req[k].pages * l->page_size))
			continue;
		struct release_req tmp = req[front];

		req[front++] = req[k];
		req[k] = tmp;
	}
	for (size_t k = 0; k < n; k++) {
		uint64_t end = req[k].src + req[k].pages * l->page_size;

		if (!req[k].bits) {
			free(req[k].data);
			continue;
		}
		for (size_t ci = 0; ci < l->nclients; ci++)
			if (l->clients[ci] &&
			    rdmig_pagestate_release(l->clients[ci]->ps, req[k].src, req[k].pages,
			                            req[k].bits) < 0)
				fatal(l, -EINVAL, req[k].src, "releasing held pages");
		for (uint32_t i = 0; i < l->nslots && l->n_held; i++) {
			struct slot *s = &l->slots[i];
			int ci = s->client;
			uint64_t addr = s->addr;

			if (s->state != SLOT_HELD || s->src < req[k].src || s->src >= end)
				continue;
			l->n_held--;
			slot_free(l, i);
			if (l->clients[ci] && l->clients[ci]->uffd >= 0)
				handle_fault(l, ci, addr, true);
		}
		free(req[k].bits);
	}
	free(req);
}

/* A background fetch of the primary target's REMOTE page at addr. 0, or
 * nonzero when no more can go now (then stop asking for more). */
static int fetch_background(struct rdmig_faultloop *l, struct rdmig_page_ref *ref, uint64_t addr)
{
	uint32_t i;
	int r;

	if (slot_alloc(l, &i))
		return -ENOMEM;
	l->slots[i] = (struct slot){.state = SLOT_QUEUED,
	                            .background = true,
	                            .gen = l->slots[i].gen,
	                            .client = 0,
	                            .addr = addr,
	                            .src = ref->src};
	r = post(l, i);
	/* The policy hands each page out once: a page the source has no room for
	 * now must not be dropped (it would stay REMOTE until a demand fault, and
	 * ALL_LOCAL would never come). It waits in the FIFO, in flight, and is
	 * posted as soon as a slot frees. */
	rdmig_pagestate_update(l->clients[0]->ps, ref, RDMIG_PAGE_IN_FLIGHT);
	if (r == -EAGAIN)
		fifo_push(l, i);
	return r; /* other than -EAGAIN: parked, the source failed */
}

static void prefetch(struct rdmig_faultloop *l)
{
	struct client *c = l->clients[0];
	unsigned calls = 0, arena_installs = 0;

	l->prefetch_more = false;
	if (!l->o.prefetch.next || l->prefetch_done || !c || c->uffd < 0 || l->source_failed)
		return;
	/* The quiet start. Right after the resume the process faults on what it
	 * works on, and each of those faults is part of the pause it sees. A
	 * prefetcher started at once filled the link and, on a machine where both
	 * daemons and the process share two CPUs, the CPUs: from the resume to the
	 * process's first completed touch took 2.0-4.5 ms with it against 1.1-1.5
	 * without (256 MiB random writer, this machine). poll_timeout() wakes the
	 * loop when the time comes. */
	if (l->prefetch_from_ns) {
		if (mono_ns() < l->prefetch_from_ns)
			return;
		l->prefetch_from_ns = 0; /* over */
	}
	/* The policy asks about each page once (prefetch.h): a HELD page it saw as
	 * not remote would never be asked about again once released. The source
	 * releases every part within milliseconds of the resume. */
	{
		struct rdmig_pagestate_counts pc;

		rdmig_pagestate_counts(c->ps, &pc);
		if (pc.pages[RDMIG_PAGE_HELD])
			return;
	}
	while (l->q_head == NIL && l->posted < l->o.max_inflight &&
	       l->posted_bg < l->o.max_background) {
		struct rdmig_page_ref ref;
		uint64_t addr;
		int r;

		if (calls++ == PREFETCH_CALLS_PER_TURN ||
		    arena_installs == ARENA_INSTALLS_PER_TURN) {
			l->prefetch_more = true; /* come back at once, after serving faults */
			return;
		}
		r = l->o.prefetch.next(l->o.prefetch.arg, c->ps, &addr);
		if (r < 0) {
			pr_info("prefetcher finished: %s", strerror(-r));
			l->prefetch_done = true;
			return;
		}
		if (r == 0)
			return;
		addr &= ~(uint64_t)(l->page_size - 1);
		if (!rdmig_pagestate_lookup(c->ps, addr, &ref))
			continue;
		if (*ref.st == RDMIG_PAGE_ARENA) {
			arena_installs++;
			handle_fault(l, 0, addr, false);
			if (rdmig_pagestate_get(c->ps, addr) == RDMIG_PAGE_INSTALLED)
				INC(prefetched);
			if (!l->clients[0] || l->clients[0]->uffd < 0)
				return;
			continue;
		}
		if (*ref.st != RDMIG_PAGE_REMOTE)
			continue;
		if (fetch_background(l, &ref, addr))
			return;
	}
}

/* The hinted pages, at the start, ahead of everything (see the hint's
 * contract), and again after each release: a HELD one is kept until its part
 * is released (the source walks the parts the registers point into first),
 * any other that is not REMOTE is dropped. */
static void fetch_hints(struct rdmig_faultloop *l)
{
	struct client *c = l->clients[0];
	unsigned kept = 0, k;

	l->hints_due = false;
	for (k = 0; k < l->nhints && c && c->uffd >= 0; k++) {
		struct rdmig_page_ref ref;

		if (!rdmig_pagestate_lookup(c->ps, l->hints[k], &ref))
			continue;
		if (*ref.st == RDMIG_PAGE_HELD)
			l->hints[kept++] = l->hints[k];
		else if (*ref.st == RDMIG_PAGE_REMOTE && fetch_background(l, &ref, l->hints[k]))
			break; /* no room, or the source failed: the rest as they come */
	}
	l->nhints = k < l->nhints ? 0 : kept;
}

/* ---- housekeeping ------------------------------------------------------ */

static void check_stalls(struct rdmig_faultloop *l, uint64_t now)
{
	uint64_t limit = (uint64_t)l->o.fetch_timeout_ms * 1000000ull;

	if (l->stalled || !l->posted)
		return;
	for (uint32_t i = 0; i < l->nslots; i++) {
		const struct slot *s = &l->slots[i];

		if (s->state != SLOT_POSTED || now - s->posted_ns < limit)
			continue;
		l->stalled = true;
		atomic_store(&l->c.source_stalled, true);
		pr_err("page source '%s' has not answered a fetch of %#llx for %d ms; faulting "
		       "threads stay blocked",
		       l->o.source->ops->name, (unsigned long long)s->src, l->o.fetch_timeout_ms);
		emit(l, RDMIG_PAGER_SOURCE_STALLED, -ETIMEDOUT, s->addr,
		     l->clients[s->client] ? l->clients[s->client]->uffd : -1);
		return;
	}
}

/* The kernel sends nothing when a process exits: ask each one whether its mm is
 * still there. */
static void probe_clients(struct rdmig_faultloop *l)
{
	for (size_t ci = 0; ci < l->nclients; ci++) {
		struct client *c = l->clients[ci];
		uint64_t addr;

		if (!c || c->uffd < 0 || !rdmig_pagestate_first(c->ps, &addr))
			continue;
		if (rdmig_uffd_alive(c->uffd, addr) == -ESRCH)
			client_gone(l, (int)ci);
	}
}

static int rebuild_pollset(struct rdmig_faultloop *l)
{
	size_t n = 2;
	struct pollfd *p;
	int *pc;

	for (size_t i = 0; i < l->nclients; i++)
		if (l->clients[i] && l->clients[i]->uffd >= 0)
			n++;
	p = realloc(l->pfd, n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	l->pfd = p;
	pc = realloc(l->pfd_client, n * sizeof(*pc));
	if (!pc)
		return -ENOMEM;
	l->pfd_client = pc;
	p[0] = (struct pollfd){.fd = l->ctl_fd, .events = POLLIN};
	p[1] = (struct pollfd){.fd = rdmig_source_event_fd(l->o.source), .events = POLLIN};
	pc[0] = pc[1] = -1;
	n = 2;
	for (size_t i = 0; i < l->nclients; i++) {
		if (!l->clients[i] || l->clients[i]->uffd < 0)
			continue;
		p[n] = (struct pollfd){.fd = l->clients[i]->uffd, .events = POLLIN};
		pc[n++] = (int)i;
	}
	l->npfd = n;
	l->pollset_dirty = false;
	return 0;
}

static int poll_timeout(struct rdmig_faultloop *l)
{
	if (l->prefetch_more)
		return 0;
	if (!l->n_retry) {
		l->retry_turns = 0;
	} else {
		/* mmap_changing clears when the thread that caused the event resumes
		 * after we read it: usually microseconds. Yield the CPU to it a few
		 * times before sleeping a millisecond per try. */
		if (l->retry_turns++ < 4) {
			sched_yield();
			return 0;
		}
		return 1;
	}
	int t = l->posted && !l->stalled ? 100 : (int)(PROBE_INTERVAL_NS / 1000000u);

	if (l->prefetch_from_ns && !l->prefetch_done && l->o.prefetch.next) {
		/* the quiet start's end, in whole milliseconds rounded up (never a
		 * busy turn); once it has passed, one turn at once and no more */
		uint64_t now = mono_ns();

		if (now >= l->prefetch_from_ns) {
			l->prefetch_from_ns = 0;
			t = 0;
		} else if ((l->prefetch_from_ns - now + 999999) / 1000000 < (uint64_t)t) {
			t = (int)((l->prefetch_from_ns - now + 999999) / 1000000);
		}
	}
	return t;
}

static void *loop_main(void *arg)
{
	struct rdmig_faultloop *l = arg;

	/* named for top -H and perf, like fabric's threads */
	(void)prctl(PR_SET_NAME, "rdmig-pager", 0, 0, 0);
	/* glibc gives a thread its own malloc arena at its first malloc (an mmap, an
	 * mprotect and the page faults of its first chunks: 0.3-0.8 ms here). Now,
	 * while the process is still stopped, rather than inside its first fault (a
	 * thread made ahead, rdmig_faultloop_opts.spawn, has made it already). */
	{
		void *volatile warm = malloc(1); /* volatile: not elided with the free */

		free(warm);
	}
	/* The hinted pages first, before the first poll(), which waits until the
	 * process's first fault (often on a hinted page). Not in start(): posting
	 * them there cost the destination's main thread 0.12-0.28 ms here before
	 * it could take GO; here they go out while it resumes the process. The
	 * take sends what the source gathered. */
	if (l->hints_due)
		fetch_hints(l);
	take_completions(l);

	while (!atomic_load(&l->stop_req)) {
		bool src_ready;
		uint64_t now;
		int n;

		if (l->pollset_dirty && rebuild_pollset(l)) {
			fatal(l, -ENOMEM, 0, "building the poll set");
			break;
		}
		n = poll(l->pfd, l->npfd, poll_timeout(l));
		if (n < 0 && errno != EINTR) {
			fatal(l, -errno, 0, "poll");
			break;
		}
		if (l->pfd[0].revents) {
			uint64_t v;
			ssize_t r = read(l->ctl_fd, &v, sizeof(v));
			(void)r;
			if (atomic_load(&l->stop_req))
				break;
			if (atomic_exchange(&l->retry_req, false))
				requeue_parked(l);
			if (atomic_exchange(&l->ready_req, false))
				apply_arena_ready(l);
			if (atomic_exchange(&l->release_req, false)) {
				apply_release(l);
				l->hints_due = l->nhints > 0;
			}
		}
		/* Every uffd, every turn: the loop is the only reader, and an install can
		 * only succeed once the events blocking it are read. */
		for (size_t k = 2; k < l->npfd; k++)
			if (l->pfd[k].revents)
				drain_uffd(l, l->pfd_client[k]);
		if (l->n_retry)
			retry_pending(l);
		/* Post, then take completions: when the source signalled, or when
		 * something was posted (a source may complete inside fetch()). Taking
		 * completions frees room, so go round while that posts more. */
		src_ready = l->pfd[1].revents != 0;
		for (int round = 0; round < 8; round++) {
			uint64_t before = l->posts;

			post_demand(l);
			if (l->hints_due)
				fetch_hints(l);
			prefetch(l);
			if (!src_ready && l->posts == before)
				break;
			take_completions(l);
			src_ready = false;
			/* prefetch() stopped at its turn's budget: read the faults before
			 * more of it. Going round here let a hybrid destination install
			 * up to 8 x 64 arena pages (~15 us each here) while the process's
			 * first faults after the switch waited. */
			if (l->prefetch_more)
				break;
		}
		publish_counts(l);

		now = mono_ns();
		if (now - l->last_stall_check_ns >= STALL_CHECK_NS) {
			l->last_stall_check_ns = now;
			check_stalls(l, now);
		}
		if (now - l->last_probe_ns >= PROBE_INTERVAL_NS) {
			l->last_probe_ns = now;
			probe_clients(l);
		}
	}
	publish_counts(l);
	atomic_store(&l->c.running, false);
	return NULL;
}

/* ---- public ------------------------------------------------------------ */

int rdmig_faultloop_create(const struct rdmig_faultloop_opts *o, struct rdmig_faultloop **out)
{
	struct rdmig_pagestate *ps = NULL;
	struct rdmig_faultloop *l;
	int ret, fd = -1;

	if (!o->source || o->uffd < 0 || !o->source->ops ||
	    o->source->ops->size != sizeof(struct rdmig_page_source_ops))
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->o = *o;
	l->ctl_fd = -1;
	l->free_head = l->q_head = l->q_tail = NIL;
	l->page_size = (unsigned)sysconf(_SC_PAGESIZE);
	const char *inj = getenv("RDMIG_INJECT_UFFD_EAGAIN");
	if (inj && atoi(inj) > 0) {
		l->inject_eagain = (unsigned)atoi(inj);
		pr_warn("fault injection: every %u-th install fails with EAGAIN", l->inject_eagain);
	}
	if (!l->o.max_inflight)
		l->o.max_inflight = 128;
	if (!l->o.max_background || l->o.max_background > l->o.max_inflight)
		l->o.max_background = l->o.max_inflight / 2 ? l->o.max_inflight / 2 : 1;
	if (l->o.fetch_timeout_ms <= 0)
		l->o.fetch_timeout_ms = 5000;
	pthread_mutex_init(&l->ready_mu, NULL);
	l->bounce = aligned_alloc(l->page_size, l->page_size);
	/* the first slots now, not at the first fault the process waits on */
	if (!l->bounce || slots_grow(l)) {
		ret = -ENOMEM;
		goto out_destroy;
	}
	l->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->ctl_fd < 0) {
		ret = -errno;
		goto out_destroy;
	}
	/* Our own reference to the uffd: the caller may close theirs. See the note on
	 * rdmig_faultloop_opts.uffd for why the target must keep one too. */
	fd = fcntl(o->uffd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		goto out_destroy;
	}
	ret = rdmig_pagestate_create(l->page_size, &ps);
	if (ret)
		goto out_close_fd;
	ret = client_add(l, fd, ps, true, -1);
	if (ret)
		goto out_free_ps;
	*out = l;
	return 0;

out_free_ps:
	rdmig_pagestate_destroy(ps);
out_close_fd:
	close(fd);
out_destroy:
	rdmig_faultloop_destroy(l);
	return ret;
}

int rdmig_faultloop_add_range(struct rdmig_faultloop *l, uint64_t addr, uint64_t len, uint64_t src,
                              enum rdmig_page_state initial, bool register_range)
{
	struct client *c = l->clients[0];
	int ret;

	if (l->thread_started)
		return -EBUSY;
	ret = rdmig_pagestate_add(c->ps, addr, len, src, initial);
	if (ret) {
		pr_err("tracking %#llx+%#llx: %s", (unsigned long long)addr,
		       (unsigned long long)len, strerror(-ret));
		return ret;
	}
	if (!register_range)
		return 0;
	ret = rdmig_uffd_register(c->uffd, addr, len,
	                          RDMIG_UFFD_MISSING | (l->o.own_mm ? RDMIG_UFFD_NOHUGEPAGE : 0),
	                          NULL);
	if (ret) {
		int64_t n = rdmig_pagestate_forget(c->ps, addr, len);
		(void)n; /* a whole range: no split, cannot fail */
	}
	return ret;
}

int rdmig_faultloop_set_state(struct rdmig_faultloop *l, uint64_t addr, uint64_t len,
                              enum rdmig_page_state st)
{
	int64_t n;

	if (l->thread_started)
		return -EBUSY;
	if (st == RDMIG_PAGE_IN_FLIGHT)
		return -EINVAL; /* only the loop makes fetches */
	n = rdmig_pagestate_set(l->clients[0]->ps, addr, len, st);
	return n < 0 ? (int)n : 0;
}

int rdmig_faultloop_add_arena(struct rdmig_faultloop *l, uint64_t src, uint64_t len,
                              const void *base)
{
	if (l->thread_started)
		return -EBUSY;
	return rdmig_pagestate_add_arena(l->clients[0]->ps, src, len, base);
}

int rdmig_faultloop_hint(struct rdmig_faultloop *l, uint64_t addr)
{
	if (l->thread_started)
		return -EBUSY;
	if (l->nhints < RDMIG_FAULTLOOP_HINTS)
		l->hints[l->nhints++] = addr & ~(uint64_t)(l->page_size - 1);
	l->hints_due = true;
	return 0;
}

const struct rdmig_pagestate *rdmig_faultloop_pagestate(struct rdmig_faultloop *l)
{
	return l->clients[0]->ps;
}

int rdmig_faultloop_start(struct rdmig_faultloop *l)
{
	int ret;

	if (l->thread_started)
		return -EBUSY;
	ret = rebuild_pollset(l);
	if (ret)
		return ret;
	publish_counts(l);
	l->last_probe_ns = mono_ns();
	if (l->o.prefetch_quiet_us)
		l->prefetch_from_ns = l->last_probe_ns + PREFETCH_IDLE_START_MS * 1000000ull;
	atomic_store(&l->c.running, true);
	ret = l->o.spawn ? l->o.spawn(l->o.spawn_arg, &l->thread, loop_main, l)
	                 : -pthread_create(&l->thread, NULL, loop_main, l);
	if (ret) {
		atomic_store(&l->c.running, false);
		return ret;
	}
	l->thread_started = true;
	return 0;
}

static void kick(struct rdmig_faultloop *l)
{
	uint64_t one = 1;
	ssize_t r = write(l->ctl_fd, &one, sizeof(one));

	(void)r; /* fails only on counter overflow, when it is readable anyway */
}

void rdmig_faultloop_stop(struct rdmig_faultloop *l)
{
	if (!l || !l->thread_started)
		return;
	atomic_store(&l->stop_req, true);
	kick(l);
	pthread_join(l->thread, NULL);
	l->thread_started = false;
}

int rdmig_faultloop_arena_ready(struct rdmig_faultloop *l, uint64_t addr, uint64_t len)
{
	uint64_t mask = l->page_size - 1;
	int ret = 0;

	if ((addr & mask) || (len & mask) || !len)
		return -EINVAL;
	pthread_mutex_lock(&l->ready_mu);
	if (l->nready == l->ready_cap) {
		size_t cap = l->ready_cap ? l->ready_cap * 2 : 16;
		struct ready_req *nr = realloc(l->ready, cap * sizeof(*nr));

		if (!nr) {
			ret = -ENOMEM;
			goto out_unlock;
		}
		l->ready = nr;
		l->ready_cap = cap;
	}
	l->ready[l->nready++] = (struct ready_req){addr, len};
out_unlock:
	pthread_mutex_unlock(&l->ready_mu);
	if (!ret) {
		atomic_store(&l->ready_req, true);
		kick(l);
	}
	return ret;
}

/* Queue r for the loop (its buffers are the loop's from here on, freed here
 * on failure) and wake it. 0 or -ENOMEM. */
static int rel_push(struct rdmig_faultloop *l, struct release_req r)
{
	int ret = 0;

	pthread_mutex_lock(&l->ready_mu);
	if (l->nrel == l->rel_cap) {
		size_t cap = l->rel_cap ? l->rel_cap * 2 : 16;
		struct release_req *nr = realloc(l->rel, cap * sizeof(*nr));

		if (!nr) {
			ret = -ENOMEM;
			goto out_unlock;
		}
		l->rel = nr;
		l->rel_cap = cap;
	}
	l->rel[l->nrel++] = r;
out_unlock:
	pthread_mutex_unlock(&l->ready_mu);
	if (ret) {
		free(r.bits);
		free(r.data);
		return ret;
	}
	atomic_store(&l->release_req, true);
	kick(l);
	return 0;
}

int rdmig_faultloop_release(struct rdmig_faultloop *l, uint64_t src, uint64_t pages,
                            const uint8_t *bits)
{
	uint64_t mask = l->page_size - 1;
	uint8_t *copy;

	if ((src & mask) || !pages || pages > (UINT64_MAX - src) / l->page_size || !bits)
		return -EINVAL;
	copy = malloc((size_t)((pages + 7) / 8));
	if (!copy)
		return -ENOMEM;
	memcpy(copy, bits, (size_t)((pages + 7) / 8));
	return rel_push(l, (struct release_req){.src = src, .pages = pages, .bits = copy});
}

int rdmig_faultloop_held_pages(struct rdmig_faultloop *l, uint64_t src, uint32_t pages,
                               uint32_t mask, const void *data)
{
	size_t len = (size_t)__builtin_popcount(mask) * l->page_size;
	uint8_t *copy = NULL;

	if ((src & (l->page_size - 1)) || !pages || pages > 32 || (pages < 32 && mask >> pages) ||
	    pages > (UINT64_MAX - src) / l->page_size || (len && !data))
		return -EINVAL;
	if (len && !(copy = malloc(len)))
		return -ENOMEM;
	if (len)
		memcpy(copy, data, len);
	return rel_push(
	    l, (struct release_req){.src = src, .pages = pages, .data = copy, .mask = mask});
}

void rdmig_faultloop_wake(struct rdmig_faultloop *l)
{
	kick(l);
}

int rdmig_faultloop_retry(struct rdmig_faultloop *l)
{
	atomic_store(&l->retry_req, true);
	kick(l);
	return 0;
}

void rdmig_faultloop_destroy(struct rdmig_faultloop *l)
{
	if (!l)
		return;
	rdmig_faultloop_stop(l);
	/* Landed data goes back to the source; posted fetches are the source's to
	 * abandon when it is destroyed. */
	for (uint32_t i = 0; i < l->nslots; i++)
		if (l->slots[i].state == SLOT_LANDED)
			rdmig_source_release(l->o.source, &l->slots[i].done);
	for (size_t i = 0; i < l->nclients; i++)
		client_free(l->clients[i]);
	free(l->clients);
	free(l->slots);
	free(l->pfd);
	free(l->pfd_client);
	free(l->bounce);
	free(l->ready);
	for (size_t i = 0; i < l->nrel; i++) {
		free(l->rel[i].bits);
		free(l->rel[i].data);
	}
	free(l->rel);
	pthread_mutex_destroy(&l->ready_mu);
	if (l->ctl_fd >= 0)
		close(l->ctl_fd);
	free(l);
}

#define LOAD(field) atomic_load_explicit(&l->c.field, memory_order_relaxed)

void rdmig_faultloop_stats(struct rdmig_faultloop *l, struct rdmig_faultloop_stats *out)
{
	*out = (struct rdmig_faultloop_stats){
	    .faults = LOAD(faults),
	    .faults_fetched = LOAD(faults_fetched),
	    .faults_coalesced = LOAD(faults_coalesced),
	    .faults_arena = LOAD(faults_arena),
	    .faults_zero = LOAD(faults_zero),
	    .faults_raced = LOAD(faults_raced),
	    .faults_held = LOAD(faults_held),
	    .held_pages_in = LOAD(held_pages_in),
	    .prefetched = LOAD(prefetched),
	    .installed = LOAD(installed),
	    .dropped = LOAD(dropped),
	    .fetch_errors = LOAD(fetch_errors),
	    .retries = LOAD(retries),
	    .ev_fork = LOAD(ev_fork),
	    .shared = LOAD(shared),
	    .ev_remap = LOAD(ev_remap),
	    .ev_remove = LOAD(ev_remove),
	    .ev_unmap = LOAD(ev_unmap),
	    .inflight = LOAD(inflight),
	    .children = LOAD(children),
	    .pages_remote = LOAD(pages_remote),
	    .pages_arena = LOAD(pages_arena),
	    .pages_inflight = LOAD(pages_inflight),
	    .pages_installed = LOAD(pages_installed),
	    .pages_held = LOAD(pages_held),
	    .pages_total = LOAD(pages_total),
	    .source_status = atomic_load(&l->c.source_status),
	    .source_stalled = atomic_load(&l->c.source_stalled),
	    .running = atomic_load(&l->c.running),
	};
}
