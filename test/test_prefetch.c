/*
 * Tests of the prefetch policy (src/prefetch.c): unit cases on its interface, then
 * a simulator that replays page-touch traces against it.
 *
 * The simulator's model: the process touches the pages of a trace one after
 * another, spending C per touch. A touch of a page not local is a fault: if the
 * page is remote it is a demand fault that costs D (the fetch, F of it, takes a
 * transfer slot first, ahead of any prefetch); if it is in flight the process
 * waits for it, at least W (trap and wake). K transfers can be in flight; each
 * takes F. The prefetcher fills every free slot from rdmig_prefetch_next. After
 * the trace the prefetcher runs until it has nothing left.
 *
 * Coverage: of the pages the trace touches, the fraction that were local or in
 * flight at their first touch. Every run also checks what a user would: every
 * remote page fetched exactly once (prefetch or demand), never a page that was
 * not remote, nothing outside the ranges, and the policy saying it is done.
 *
 * Traces: synthetic (sequential, strides 3, 16 and -7, uniform random, zipfian,
 * two interleaved streams, a pattern change) and three recorded with
 * userfaultfd from real loops (test/traces/NAME.trace; the format is in each
 * file's header). Pass --traces DIR if they are not next to this file.
 */
#include "helpers.h"

#include "rdmig/log.h"
#include "rdmig/prefetch.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

T_DEFINE_STATE;

#define PAGE 4096ull
#define NO_IDX ((size_t)-1)
#define MAX_RANGES 4
#define SIM_KMAX 64

/* ---- address layouts ---- */

struct layout {
	struct rdmig_prefetch_range r[MAX_RANGES];
	size_t first[MAX_RANGES];
	int nr;
	size_t npages;
};

/* ranges of the given page counts, each a 1 GiB hole after the one before */
static void lay_init(struct layout *l, int nr, const size_t *pages)
{
	uint64_t at = 0x7f0000000000ull;

	memset(l, 0, sizeof(*l));
	l->nr = nr;
	for (int i = 0; i < nr; i++) {
		l->r[i].start = at;
		l->r[i].end = at + pages[i] * PAGE;
		l->first[i] = l->npages;
		l->npages += pages[i];
		at = l->r[i].end + (1ull << 30);
	}
}

static size_t lay_idx(const struct layout *l, uint64_t addr)
{
	for (int i = 0; i < l->nr; i++)
		if (addr >= l->r[i].start && addr < l->r[i].end)
			return l->first[i] + (size_t)((addr - l->r[i].start) / PAGE);
	return NO_IDX;
}

static uint64_t lay_addr(const struct layout *l, size_t idx)
{
	int i = l->nr - 1;

	while (i > 0 && l->first[i] > idx)
		i--;
	return l->r[i].start + (idx - l->first[i]) * PAGE;
}

/* ---- a policy over a plain page-state array, for the unit cases ---- */

struct plain {
	struct layout lay;
	uint8_t *remote; /* 1: remote */
	size_t calls;    /* is_remote calls */
	size_t bad;      /* is_remote asked outside the ranges or unaligned */
};

static bool plain_is_remote(void *arg, uint64_t addr)
{
	struct plain *pl = arg;
	size_t idx = lay_idx(&pl->lay, addr);

	pl->calls++;
	if (idx == NO_IDX || addr % PAGE) {
		pl->bad++;
		return false;
	}
	return pl->remote[idx];
}

static int plain_create(struct plain *pl, int nr, const size_t *pages, unsigned flags,
                        struct rdmig_prefetch **p)
{
	struct rdmig_prefetch_cfg cfg = {
	    .page_size = PAGE,
	    .ranges = pl->lay.r,
	    .is_remote = plain_is_remote,
	    .arg = pl,
	    .flags = flags,
	};

	lay_init(&pl->lay, nr, pages);
	cfg.nr_ranges = (size_t)nr;
	pl->calls = pl->bad = 0;
	pl->remote = malloc(pl->lay.npages);
	if (!pl->remote)
		return -ENOMEM;
	memset(pl->remote, 1, pl->lay.npages);
	return rdmig_prefetch_create(&cfg, p);
}

/* Takes n pages from the policy and marks them in flight (not remote). */
static int plain_take(struct plain *pl, struct rdmig_prefetch *p, uint64_t *a, int n)
{
	int got = rdmig_prefetch_next(p, a, n);

	for (int i = 0; i < got; i++) {
		size_t idx = lay_idx(&pl->lay, a[i]);

		if (idx != NO_IDX)
			pl->remote[idx] = 0;
	}
	return got;
}

static uint64_t A0(const struct plain *pl, int64_t page)
{
	return pl->lay.r[0].start + (uint64_t)page * PAGE;
}

static void create_rejects_bad_config(void)
{
	struct rdmig_prefetch_range r[2] = {{0x10000, 0x20000}, {0x30000, 0x40000}};
	struct rdmig_prefetch_cfg c = {
	    .page_size = PAGE, .ranges = r, .nr_ranges = 2, .is_remote = plain_is_remote};
	struct rdmig_prefetch *p = NULL;

	/* each refusal below logs an error, on purpose */
	T_OK(rdmig_prefetch_create(&c, &p));
	rdmig_prefetch_destroy(p);

	c.page_size = 3000;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL && !p, "page size not a power of two");
	c.page_size = PAGE;
	c.is_remote = NULL;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "no callback");
	c.is_remote = plain_is_remote;
	c.nr_ranges = 0;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "no ranges");
	c.nr_ranges = 2;
	r[1].start = 0x18000;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "overlapping");
	r[1].start = 0x30000;
	r[0].end = 0x20800;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "unaligned");
	r[0].end = 0x20000;
	r[0].start = 0x20000;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "empty");
	r[0].start = 0x10000;
	c.depth_init = 64;
	c.depth_max = 32;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "depth_init above depth_max");
	c.depth_init = c.depth_max = 0;
	c.streams = 65;
	T_CHECK(rdmig_prefetch_create(&c, &p) == -EINVAL, "too many streams");
	c.streams = 0;
	r[1].end = 1ull << 51; /* 2^39 pages */
	T_CHECK(rdmig_prefetch_create(&c, &p) == -E2BIG, "too many pages");
	T_CHECK(rdmig_prefetch_create(NULL, &p) == -EINVAL, "no cfg");
}

static void next_checks_args(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[1] = {8};
	uint64_t a[16];

	T_OK(plain_create(&pl, 1, pages, 0, &p));
	if (!p)
		return;
	T_CHECK(rdmig_prefetch_next(p, a, 0) == 0, "max 0");
	T_CHECK(rdmig_prefetch_next(p, a, -1) == -EINVAL, "max < 0");
	T_CHECK(rdmig_prefetch_next(p, NULL, 4) == -EINVAL, "no array");
	T_CHECK(plain_take(&pl, p, a, 16) == 8, "all 8 pages");
	T_CHECK(rdmig_prefetch_next(p, a, 16) == 0, "nothing left");
	T_CHECK(rdmig_prefetch_done(p), "done");
	rdmig_prefetch_destroy(p);
	rdmig_prefetch_destroy(NULL);
	free(pl.remote);
}

/* Faults along a stride: the next pages handed out follow it, in order. */
static void stride_comes_first(void)
{
	static const int64_t strides[] = {3, 16, -7};
	size_t pages[1] = {4096};

	for (unsigned s = 0; s < 3; s++) {
		struct plain pl;
		struct rdmig_prefetch *p = NULL;
		struct rdmig_prefetch_stats st;
		int64_t d = strides[s], base = d > 0 ? 100 : 3000;
		uint64_t a[8];

		T_OK(plain_create(&pl, 1, pages, 0, &p));
		if (!p)
			continue;
		for (int i = 0; i < 3; i++) {
			rdmig_prefetch_on_fault(p, A0(&pl, base + i * d) + 123);
			pl.remote[base + i * d] = 0;
		}
		T_CHECK(plain_take(&pl, p, a, 8) == 8, "8 pages");
		for (int i = 0; i < 8; i++)
			T_CHECK(a[i] == A0(&pl, base + (3 + i) * d),
			        "stride %lld: page %d is %#llx", (long long)d, i,
			        (unsigned long long)a[i]);
		rdmig_prefetch_get_stats(p, &st);
		T_CHECK(st.trend == d && st.issued_stride == 8, "trend %lld, %llu along it",
		        (long long)st.trend, (unsigned long long)st.issued_stride);
		rdmig_prefetch_destroy(p);
		free(pl.remote);
	}
}

/* A trend still wins a majority with other faults mixed in; then noise loses it. */
static void majority_vote_tolerates_noise(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	struct rdmig_prefetch_stats st;
	size_t pages[1] = {1 << 16};
	int64_t at = 1000;

	T_OK(plain_create(&pl, 1, pages, RDMIG_PF_NO_NEAR, &p));
	if (!p)
		return;
	/* 5, 5, 5, then one stray and back on track: deltas 5 keep the majority */
	for (int i = 0; i < 12; i++) {
		if (i % 4 == 3) {
			rdmig_prefetch_on_fault(p, A0(&pl, 50000 + i));
			rdmig_prefetch_on_fault(p, A0(&pl, at));
		} else {
			at += 5;
			rdmig_prefetch_on_fault(p, A0(&pl, at));
		}
	}
	rdmig_prefetch_get_stats(p, &st);
	T_CHECK(st.trend == 5, "trend %lld", (long long)st.trend);
	for (int i = 0; i < 40; i++)
		rdmig_prefetch_on_fault(p, A0(&pl, (int64_t)((i * 7919u * 104729u) % 60000u)));
	rdmig_prefetch_get_stats(p, &st);
	T_CHECK(st.trend == 0, "random faults leave trend %lld", (long long)st.trend);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

/* No trend: the window after the fault first, then a few pages before it. */
static void near_window_forward_first(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[1] = {1024};
	uint64_t a[32];
	int n;

	T_OK(plain_create(&pl, 1, pages, 0, &p));
	if (!p)
		return;
	rdmig_prefetch_on_fault(p, A0(&pl, 500));
	pl.remote[500] = 0;
	pl.remote[503] = 0; /* already here (pushed, say): skipped */
	n = plain_take(&pl, p, a, 20);
	T_CHECK(n == 20, "%d pages", n);
	for (int i = 0, pg = 501; i < 15; i++, pg++) {
		pg += pg == 503;
		T_CHECK(a[i] == A0(&pl, pg), "forward %d: %#llx", i, (unsigned long long)a[i]);
	}
	for (int i = 0; i < 4; i++)
		T_CHECK(a[15 + i] == A0(&pl, 499 - i), "backward %d", i);
	/* then the sweep, from the fault forward, past the window */
	T_CHECK(a[19] == A0(&pl, 517), "sweep starts after the window: %#llx",
	        (unsigned long long)a[19]);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

/* Two streams faulting in turn keep a window each, and the windows grow. */
static void near_streams_grow(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[1] = {8192};
	uint64_t a[64];
	int n, in_a = 0, in_b = 0;

	T_OK(plain_create(&pl, 1, pages, RDMIG_PF_NO_STRIDE, &p));
	if (!p)
		return;
	rdmig_prefetch_on_fault(p, A0(&pl, 0));
	rdmig_prefetch_on_fault(p, A0(&pl, 4000));
	/* both streams ran past their 16-page windows */
	rdmig_prefetch_on_fault(p, A0(&pl, 17));
	rdmig_prefetch_on_fault(p, A0(&pl, 4017));
	n = rdmig_prefetch_next(p, a, 64);
	T_CHECK(n == 64, "%d", n);
	for (int i = 0; i < n; i++) {
		size_t idx = lay_idx(&pl.lay, a[i]);

		in_a += idx > 17 && idx <= 17 + 32;
		in_b += idx > 4017 && idx <= 4017 + 32;
	}
	T_CHECK(in_a == 32 && in_b == 32, "doubled windows: %d after stream a, %d after b", in_a,
	        in_b);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

/* The sweep wraps from where the process is, skips what is not remote, ends. */
static void sweep_covers_everything_once(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[3] = {1000, 3, 2049}, seen_n = 0;
	uint8_t *seen;
	uint64_t a[7];
	int n, bad = 0;

	T_OK(plain_create(&pl, 3, pages, 0, &p));
	if (!p)
		return;
	seen = calloc(pl.lay.npages, 1);
	for (size_t i = 0; i < pl.lay.npages; i += 3)
		pl.remote[i] = 0; /* a third local already */
	rdmig_prefetch_on_fault(p, lay_addr(&pl.lay, 1001));
	pl.remote[1001] = 0;
	while ((n = plain_take(&pl, p, a, 7)) > 0) {
		for (int i = 0; i < n; i++) {
			size_t idx = lay_idx(&pl.lay, a[i]);

			if (idx == NO_IDX || seen[idx] || idx % 3 == 0 || idx == 1001)
				bad++;
			else
				seen[idx] = 1, seen_n++;
		}
	}
	T_CHECK(!bad && !pl.bad, "%d bad pages handed out, %zu bad questions", bad, pl.bad);
	T_CHECK(seen_n == pl.lay.npages - (pl.lay.npages + 2) / 3 - 1, "%zu handed out", seen_n);
	T_CHECK(pl.calls <= pl.lay.npages, "%zu questions for %zu pages", pl.calls, pl.lay.npages);
	T_CHECK(rdmig_prefetch_done(p), "done");
	free(seen);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

/*
 * 4 GiB of pages, a random fault before each small next(): the work is bounded by
 * the pages, not by pages x calls. Each page is asked about at most once.
 */
static void sweep_cost_is_linear(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[2] = {3u << 18, 1u << 18}, handed = 0, calls = 0;
	uint64_t a[4], x = 12345;
	double t0 = t_now_s();
	int n;

	T_OK(plain_create(&pl, 2, pages, 0, &p));
	if (!p)
		return;
	do {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		size_t idx = (size_t)(x >> 33) % pl.lay.npages;

		if (pl.remote[idx]) {
			rdmig_prefetch_on_fault(p, lay_addr(&pl.lay, idx));
			pl.remote[idx] = 0;
		}
		n = plain_take(&pl, p, a, 4);
		handed += (size_t)n;
		calls++;
	} while (n > 0);
	double dt = t_now_s() - t0;
	T_CHECK(pl.calls <= pl.lay.npages, "%zu questions for %zu pages", pl.calls, pl.lay.npages);
	T_CHECK(rdmig_prefetch_done(p), "done after %zu pages", handed);
	fprintf(stderr, "  %zu pages, %zu calls: %.0f ns per call with a fault before it\n",
	        pl.lay.npages, calls, dt * 1e9 / (double)calls);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

static void counters_count(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	struct rdmig_prefetch_stats st;
	size_t pages[1] = {64};
	uint64_t a[4];

	T_OK(plain_create(&pl, 1, pages, 0, &p));
	if (!p)
		return;
	T_CHECK(plain_take(&pl, p, a, 4) == 4, "4 pages");
	rdmig_prefetch_on_fault(p, a[0]); /* in flight when the process got there */
	rdmig_prefetch_on_touch(p, a[1]);
	rdmig_prefetch_on_touch(p, a[1]); /* a second touch is not a second hit */
	rdmig_prefetch_on_touch(p, A0(&pl, 40));
	rdmig_prefetch_on_fault(p, 0x1000); /* outside */
	rdmig_prefetch_on_touch(p, ~0ull);
	rdmig_prefetch_get_stats(p, &st);
	T_CHECK(st.issued == 4 && st.hits == 2 && st.inflight_faults == 1,
	        "issued %llu hits %llu late %llu", (unsigned long long)st.issued,
	        (unsigned long long)st.hits, (unsigned long long)st.inflight_faults);
	T_CHECK(st.faults == 1 && st.touches == 3 && st.outside == 2,
	        "faults %llu touches %llu outside %llu", (unsigned long long)st.faults,
	        (unsigned long long)st.touches, (unsigned long long)st.outside);
	T_CHECK(st.pages == 64, "pages %llu", (unsigned long long)st.pages);
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

static void requeue_hands_out_again(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[1] = {16};
	uint64_t a[16];

	T_OK(plain_create(&pl, 1, pages, 0, &p));
	if (!p)
		return;
	T_CHECK(plain_take(&pl, p, a, 16) == 16 && rdmig_prefetch_done(p), "all handed out");
	/* two reads failed; the fault loop put the pages back to remote */
	pl.remote[3] = pl.remote[9] = 1;
	T_OK(rdmig_prefetch_requeue(p, A0(&pl, 3)));
	T_OK(rdmig_prefetch_requeue(p, A0(&pl, 9)));
	T_CHECK(rdmig_prefetch_requeue(p, 0x1000) == -EINVAL, "outside");
	T_CHECK(!rdmig_prefetch_done(p), "not done with two to retry");
	T_CHECK(plain_take(&pl, p, a, 16) == 2, "the two again");
	T_CHECK((a[0] == A0(&pl, 9) && a[1] == A0(&pl, 3)) ||
	            (a[0] == A0(&pl, 3) && a[1] == A0(&pl, 9)),
	        "pages 3 and 9");
	T_CHECK(rdmig_prefetch_done(p) && rdmig_prefetch_next(p, a, 16) == 0, "done again");
	/* requeued twice before the next call: handed out once */
	pl.remote[5] = 1;
	T_OK(rdmig_prefetch_requeue(p, A0(&pl, 5)));
	T_OK(rdmig_prefetch_requeue(p, A0(&pl, 5)));
	T_CHECK(plain_take(&pl, p, a, 16) == 1 && a[0] == A0(&pl, 5), "page 5 once");
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

static void hint_anchors_the_sweep(void)
{
	struct plain pl;
	struct rdmig_prefetch *p = NULL;
	size_t pages[1] = {4096};
	uint64_t a[1];

	T_OK(plain_create(&pl, 1, pages, RDMIG_PF_NO_NEAR, &p));
	if (!p)
		return;
	rdmig_prefetch_hint(p, A0(&pl, 3000) + 5);
	T_CHECK(plain_take(&pl, p, a, 1) == 1 && a[0] == A0(&pl, 3000), "starts at the hint");
	rdmig_prefetch_destroy(p);
	free(pl.remote);
}

/* ---- the simulator ---- */

struct model {
	double D, F, W, C;
	int K;
	bool touches;     /* report touches of local pages with on_touch */
	bool no_prefetch; /* baseline: demand faults only */
	bool linear;      /* baseline: prefetch in address order, blind to faults */
	unsigned flags;   /* policy flags */
};

struct result {
	size_t first, covered_local, covered_flight; /* first touches */
	size_t first2, covered2;                     /* from the split on */
	size_t demand, prefetched;
	size_t bad, dup, missing, fetched_pushed;
	bool done;
	double t_split, t_trace, t_all; /* when the split came, the trace ended, all was local */
	struct rdmig_prefetch_stats st;
};

enum { PG_REMOTE, PG_FLIGHT, PG_LOCAL };

struct sim_slot {
	size_t idx;
	double done;
	bool busy;
};

struct sim {
	const struct layout *lay;
	const struct model *m;
	struct rdmig_prefetch *p;
	uint8_t *state, *fetches, *touched;
	int *slot_of;
	struct sim_slot slot[SIM_KMAX];
	size_t linear; /* the linear baseline's cursor */
	double t;
	struct result *res;
};

static bool sim_is_remote(void *arg, uint64_t addr)
{
	struct sim *s = arg;
	size_t idx = lay_idx(s->lay, addr);

	if (idx == NO_IDX || addr % PAGE) {
		s->res->bad++;
		return false;
	}
	return s->state[idx] == PG_REMOTE;
}

static void sim_start(struct sim *s, int k, size_t idx, double t)
{
	s->slot[k].idx = idx;
	s->slot[k].done = t + s->m->F;
	s->slot[k].busy = true;
	s->state[idx] = PG_FLIGHT;
	s->slot_of[idx] = k;
	if (s->fetches[idx] < 255)
		s->fetches[idx]++;
}

static void sim_fill(struct sim *s, double t)
{
	uint64_t a[SIM_KMAX];
	int nfree = 0, n, k = 0;

	if (s->m->no_prefetch)
		return;
	for (int i = 0; i < s->m->K; i++)
		nfree += !s->slot[i].busy;
	if (!nfree)
		return;
	if (s->m->linear) {
		for (n = 0; n < nfree && s->linear < s->lay->npages; s->linear++)
			if (s->state[s->linear] == PG_REMOTE)
				a[n++] = lay_addr(s->lay, s->linear);
	} else {
		n = rdmig_prefetch_next(s->p, a, nfree);
	}
	if (n < 0 || n > nfree) {
		s->res->bad++;
		return;
	}
	for (int i = 0; i < n; i++) {
		size_t idx = lay_idx(s->lay, a[i]);

		if (idx == NO_IDX || a[i] % PAGE || s->state[idx] != PG_REMOTE) {
			s->res->bad++;
			continue;
		}
		while (s->slot[k].busy)
			k++;
		sim_start(s, k, idx, t);
		s->res->prefetched++;
	}
}

static int sim_earliest(const struct sim *s)
{
	int best = -1;

	for (int k = 0; k < s->m->K; k++)
		if (s->slot[k].busy && (best < 0 || s->slot[k].done < s->slot[best].done))
			best = k;
	return best;
}

static void sim_complete(struct sim *s, int k)
{
	s->state[s->slot[k].idx] = PG_LOCAL;
	s->slot_of[s->slot[k].idx] = -1;
	s->slot[k].busy = false;
}

/* Runs the transfers due by time T, refilling slots as they free. */
static void sim_advance(struct sim *s, double T)
{
	int k;

	while ((k = sim_earliest(s)) >= 0 && s->slot[k].done <= T) {
		double at = s->slot[k].done;

		sim_complete(s, k);
		sim_fill(s, at);
	}
	sim_fill(s, T);
}

static void sim_touch(struct sim *s, size_t idx, bool after_split)
{
	const struct model *m = s->m;
	uint64_t addr = lay_addr(s->lay, idx);
	bool first = !s->touched[idx];
	double start, resume;
	int k;

	sim_advance(s, s->t);
	if (first) {
		s->touched[idx] = 1;
		s->res->first++;
		s->res->first2 += after_split;
		if (s->state[idx] != PG_REMOTE)
			s->res->covered2 += after_split;
	}
	switch (s->state[idx]) {
	case PG_LOCAL:
		s->res->covered_local += first;
		if (m->touches)
			rdmig_prefetch_on_touch(s->p, addr);
		s->t += m->C;
		break;
	case PG_FLIGHT:
		s->res->covered_flight += first;
		rdmig_prefetch_on_fault(s->p, addr);
		k = s->slot_of[idx];
		resume = s->slot[k].done > s->t + m->W ? s->slot[k].done : s->t + m->W;
		sim_advance(s, resume);
		s->t = resume + m->C;
		break;
	default:
		s->res->demand++;
		rdmig_prefetch_on_fault(s->p, addr);
		/* demand goes first: a free slot, else the first one to free up */
		start = s->t;
		for (k = 0; k < m->K && s->slot[k].busy; k++)
			;
		if (k == m->K) {
			k = sim_earliest(s);
			start = s->slot[k].done;
			sim_complete(s, k);
		}
		sim_start(s, k, idx, start);
		sim_fill(s, s->t);
		resume = start + m->D;
		sim_advance(s, resume);
		s->t = resume + m->C;
		break;
	}
}

/*
 * Replays trace (page indexes) under model m. Pages with preset[i] set start
 * local (pushed before the switch, or known zero). Touches from index split on
 * are also counted apart (coverage2).
 */
static int sim_run(const struct layout *lay, const size_t *trace, size_t n, size_t split,
                   const uint8_t *preset, const struct model *m, struct result *res)
{
	struct rdmig_prefetch_cfg cfg = {
	    .page_size = PAGE,
	    .ranges = lay->r,
	    .nr_ranges = (size_t)lay->nr,
	    .is_remote = sim_is_remote,
	    .flags = m->flags,
	};
	struct sim s = {.lay = lay, .m = m, .res = res};
	size_t np = lay->npages;
	uint64_t a[4];
	int ret, k;

	memset(res, 0, sizeof(*res));
	if (m->K > SIM_KMAX)
		return -EINVAL;
	cfg.arg = &s;
	s.state = calloc(np, 1);
	s.fetches = calloc(np, 1);
	s.touched = calloc(np, 1);
	s.slot_of = calloc(np, sizeof(*s.slot_of));
	ret = -ENOMEM;
	if (!s.state || !s.fetches || !s.touched || !s.slot_of)
		goto out;
	for (size_t i = 0; i < np; i++)
		s.state[i] = preset && preset[i] ? PG_LOCAL : PG_REMOTE;
	ret = rdmig_prefetch_create(&cfg, &s.p);
	if (ret)
		goto out;

	for (size_t i = 0; i < n; i++) {
		if (i == split)
			res->t_split = s.t;
		sim_touch(&s, trace[i], i >= split);
	}
	res->t_trace = s.t;
	/* the prefetcher finishes the rest */
	sim_fill(&s, s.t);
	while ((k = sim_earliest(&s)) >= 0) {
		s.t = s.slot[k].done;
		sim_complete(&s, k);
		sim_fill(&s, s.t);
	}
	res->t_all = s.t;

	for (size_t i = 0; i < np; i++) {
		if (preset && preset[i])
			res->fetched_pushed += s.fetches[i];
		else if (s.fetches[i] > 1)
			res->dup++;
		else if (!s.fetches[i] && !m->no_prefetch)
			res->missing++;
	}
	res->done = m->linear || (rdmig_prefetch_done(s.p) && rdmig_prefetch_next(s.p, a, 4) == 0);
	rdmig_prefetch_get_stats(s.p, &res->st);
	rdmig_prefetch_destroy(s.p);
out:
	free(s.slot_of);
	free(s.touched);
	free(s.fetches);
	free(s.state);
	return ret;
}

static double cov(const struct result *r)
{
	return r->first ? (double)(r->covered_local + r->covered_flight) / (double)r->first : 0;
}

static double cov2(const struct result *r)
{
	return r->first2 ? (double)r->covered2 / (double)r->first2 : 0;
}

/*
 * The model the assertions use: a demand fault costs D = 100, a page fetch F = D/4,
 * 16 in flight, a fault on a page in flight at least W = F. The process spends
 * C = D/100 per touch, about what a loop streaming through memory spends on a
 * 4 KiB page (~0.3 us) against a remote fault here (~30 us): the process can
 * outrun the link (0.64 pages per unit), so order matters. Each trace also
 * prints its coverage for C = 0.25, 5 and 25.
 */
static const struct model base_model = {.D = 100, .F = 25, .W = 25, .C = 1, .K = 16};

/* The user-visible invariants, for any run. */
static void check_invariants(const char *name, const struct result *r, const struct model *m)
{
	T_CHECK(!r->bad, "%s: %zu pages handed out that were not remote or not in the ranges", name,
	        r->bad);
	T_CHECK(!r->dup, "%s: %zu pages fetched more than once", name, r->dup);
	T_CHECK(!r->fetched_pushed, "%s: %zu pushed pages fetched", name, r->fetched_pushed);
	if (m->no_prefetch)
		return;
	T_CHECK(!r->missing, "%s: %zu pages never fetched", name, r->missing);
	T_CHECK(r->done, "%s: policy not done at the end", name);
	T_CHECK(m->linear || r->st.issued == r->prefetched, "%s: issued %llu, fetched %zu", name,
	        (unsigned long long)r->st.issued, r->prefetched);
	T_CHECK(r->st.hits <= r->st.issued, "%s: more hits than prefetches", name);
}

struct trace_report {
	struct result full;   /* the policy, told of faults only */
	struct result touch;  /* the policy, told of every touch too */
	struct result sweep;  /* the policy's sweep alone (no stride, no near) */
	struct result linear; /* prefetch in address order */
	struct result none;   /* demand faults only */
};

static double local_share(const struct result *r)
{
	return r->first ? (double)r->covered_local / (double)r->first : 0;
}

/*
 * Runs one trace under the policy and the baselines, checks the invariants of
 * each run, and prints what a reader compares: coverage, faults, where the
 * prefetches came from, and time against the baselines. Then coverage of the
 * policy against the linear baseline for a process slower and faster per touch.
 */
static void run_trace(const char *name, const struct layout *lay, const size_t *trace, size_t n,
                      size_t split, const uint8_t *preset, const struct model *base,
                      struct trace_report *rep)
{
	struct {
		struct result *res;
		bool touches, linear, none;
		unsigned flags;
	} runs[] = {
	    {&rep->full, false, false, false, 0},
	    {&rep->touch, true, false, false, 0},
	    {&rep->sweep, false, false, false, RDMIG_PF_NO_STRIDE | RDMIG_PF_NO_NEAR},
	    {&rep->linear, false, true, false, 0},
	    {&rep->none, false, false, true, 0},
	};
	static const double per_touch[] = {0.25, 5, 25};
	const struct result *f = &rep->full;

	for (unsigned i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		struct model m = *base;

		m.touches = runs[i].touches;
		m.linear = runs[i].linear;
		m.no_prefetch = runs[i].none;
		m.flags = runs[i].flags;
		T_OK(sim_run(lay, trace, n, split, preset, &m, runs[i].res));
		check_invariants(name, runs[i].res, &m);
	}
	printf("# %s: %zu pages touched of %zu | coverage %.1f%% (local %.1f%%), with touches "
	       "%.1f%% (hits %llu), sweep only %.1f%%, linear %.1f%% (local %.1f%%), none %.1f%%\n",
	       name, f->first, lay->npages, 100 * cov(f), 100 * local_share(f),
	       100 * cov(&rep->touch), (unsigned long long)rep->touch.st.hits,
	       100 * cov(&rep->sweep), 100 * cov(&rep->linear), 100 * local_share(&rep->linear),
	       100 * cov(&rep->none));
	printf("#   faults %zu (linear %zu, none %zu), %llu on late prefetches | handed out: "
	       "stride %llu near %llu sweep %llu, hits %llu | trace time %.2fx linear, "
	       "%.2fx none | all local %.2fx linear\n",
	       f->demand, rep->linear.demand, rep->none.demand,
	       (unsigned long long)f->st.inflight_faults, (unsigned long long)f->st.issued_stride,
	       (unsigned long long)f->st.issued_near, (unsigned long long)f->st.issued_sweep,
	       (unsigned long long)f->st.hits, f->t_trace / rep->linear.t_trace,
	       f->t_trace / rep->none.t_trace, f->t_all / rep->linear.t_all);
	printf("#   per touch C:");
	for (unsigned i = 0; i < sizeof(per_touch) / sizeof(per_touch[0]); i++) {
		struct model m = *base;
		struct result pol, lin;

		m.C = per_touch[i];
		T_OK(sim_run(lay, trace, n, split, preset, &m, &pol));
		check_invariants(name, &pol, &m);
		m.linear = true;
		T_OK(sim_run(lay, trace, n, split, preset, &m, &lin));
		printf(" | %g: %.1f%% local %.1f%%, time %.2fx (linear %.1f%% local %.1f%%)", m.C,
		       100 * cov(&pol), 100 * local_share(&pol), pol.t_trace / lin.t_trace,
		       100 * cov(&lin), 100 * local_share(&lin));
	}
	printf("\n");
	fflush(stdout);
}

/* ---- traces ---- */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) / 9007199254740992.0;
}

/* The synthetic layout: a 768 MiB range and a 256 MiB one, a hole between. */
#define A_PAGES (192u << 10)

static void synth_layout(struct layout *l)
{
	static const size_t pages[2] = {A_PAGES, 64u << 10};

	lay_init(l, 2, pages);
}

static size_t gen_stride(size_t *t, int64_t from, int64_t step, int64_t lo, int64_t hi)
{
	size_t n = 0;

	for (int64_t pg = from; pg >= lo && pg < hi; pg += step)
		t[n++] = (size_t)pg;
	return n;
}

static void sim_sequential(void)
{
	struct layout l;
	struct trace_report r;
	size_t *t;

	synth_layout(&l);
	t = malloc(l.npages * sizeof(*t));
	for (size_t i = 0; i < l.npages; i++)
		t[i] = i; /* both ranges, across the hole */
	run_trace("sequential", &l, t, l.npages, l.npages, NULL, &base_model, &r);
	T_CHECK(cov(&r.full) >= 0.90, "coverage %.3f", cov(&r.full));
	T_CHECK(cov(&r.touch) >= 0.90, "coverage with touches %.3f", cov(&r.touch));
	free(t);
}

/* Strides over the first range: followed, so the process hardly waits. */
static void one_stride(const char *name, int64_t step)
{
	struct layout l;
	struct trace_report r;
	size_t *t, n;

	synth_layout(&l);
	t = malloc(l.npages * sizeof(*t));
	n = gen_stride(t, step > 0 ? 0 : A_PAGES - 1, step, 0, A_PAGES);
	run_trace(name, &l, t, n, n, NULL, &base_model, &r);
	T_CHECK(cov(&r.full) >= 0.90, "%s: coverage %.3f", name, cov(&r.full));
	T_CHECK(cov(&r.touch) >= 0.90, "%s: coverage with touches %.3f", name, cov(&r.touch));
	T_CHECK(r.full.t_trace <= 1.05 * r.linear.t_trace, "%s: trace took %.0f, linear %.0f", name,
	        r.full.t_trace, r.linear.t_trace);
	/* one page in 16, or going down: a sweep cannot keep up, the trend must be found */
	if (step < 0 || step >= 16)
		T_CHECK(r.full.st.issued_stride * 2 >= n && r.full.demand * 50 <= n,
		        "%s: %llu of %zu pages along the trend, %zu faults", name,
		        (unsigned long long)r.full.st.issued_stride, n, r.full.demand);
	free(t);
}

static void sim_stride3(void)
{
	one_stride("stride 3", 3);
}

static void sim_stride16(void)
{
	one_stride("stride 16", 16);
}

static void sim_stride_neg7(void)
{
	one_stride("stride -7", -7);
}

/* Random and zipfian: nothing to predict; the policy must not cost more than
 * prefetching in address order (same coverage give or take, no slower), and
 * still fetch every page once. */
static void check_no_worse_than_linear(const char *name, const struct trace_report *r)
{
	T_CHECK(cov(&r->full) >= cov(&r->linear) - 0.02, "%s: coverage %.3f, linear %.3f", name,
	        cov(&r->full), cov(&r->linear));
	T_CHECK(r->full.t_trace <= 1.05 * r->linear.t_trace, "%s: trace took %.0f, linear %.0f",
	        name, r->full.t_trace, r->linear.t_trace);
	T_CHECK(r->full.t_all <= 1.05 * r->linear.t_all, "%s: all local at %.0f, linear %.0f", name,
	        r->full.t_all, r->linear.t_all);
}

static void sim_random(void)
{
	struct layout l;
	struct trace_report r;
	struct rng g = {1};
	size_t *t, n;

	synth_layout(&l);
	n = l.npages / 2;
	t = malloc(n * sizeof(*t));
	for (size_t i = 0; i < n; i++)
		t[i] = (size_t)(rng_next(&g) % l.npages);
	run_trace("random", &l, t, n, n, NULL, &base_model, &r);
	check_no_worse_than_linear("random", &r);
	free(t);
}

static void sim_zipf(void)
{
	struct layout l;
	struct trace_report r;
	struct rng g = {2};
	size_t *t, *perm, n, np;
	double *cdf, sum = 0;

	synth_layout(&l);
	np = l.npages;
	n = np / 2;
	t = malloc(n * sizeof(*t));
	perm = malloc(np * sizeof(*perm));
	cdf = malloc(np * sizeof(*cdf));
	for (size_t i = 0; i < np; i++) {
		sum += 1.0 / pow((double)(i + 1), 0.99);
		cdf[i] = sum;
		perm[i] = i;
	}
	/* hot pages scattered over the ranges, as a heap's are */
	for (size_t i = np - 1; i > 0; i--) {
		size_t j = (size_t)(rng_next(&g) % (i + 1)), x = perm[i];

		perm[i] = perm[j];
		perm[j] = x;
	}
	for (size_t i = 0; i < n; i++) {
		double u = rng_unit(&g) * sum;
		size_t lo = 0, hi = np - 1;

		while (lo < hi) {
			size_t mid = (lo + hi) / 2;

			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		t[i] = perm[lo];
	}
	run_trace("zipf 0.99", &l, t, n, n, NULL, &base_model, &r);
	check_no_worse_than_linear("zipf", &r);
	free(cdf);
	free(perm);
	free(t);
}

static void sim_two_streams(void)
{
	struct layout l;
	struct trace_report r;
	size_t *t, n = 0, half = A_PAGES / 2;

	synth_layout(&l);
	t = malloc(A_PAGES * sizeof(*t));
	for (size_t i = 0; i < half; i++) {
		t[n++] = i;
		t[n++] = half + i;
	}
	run_trace("two streams", &l, t, n, n, NULL, &base_model, &r);
	T_CHECK(cov(&r.full) >= 0.90, "coverage %.3f", cov(&r.full));
	T_CHECK(cov(&r.touch) >= 0.90, "coverage with touches %.3f", cov(&r.touch));
	free(t);
}

/* Sequential over one half, then stride 16 over the other: the trend follows. */
static void sim_phase_change(void)
{
	struct layout l;
	struct trace_report r;
	size_t *t, n, split, half = A_PAGES / 2;

	synth_layout(&l);
	t = malloc(A_PAGES * sizeof(*t));
	split = gen_stride(t, 0, 1, 0, (int64_t)half);
	n = split + gen_stride(t + split, (int64_t)half, 16, (int64_t)half, A_PAGES);
	run_trace("phase change", &l, t, n, split, NULL, &base_model, &r);
	printf("#   after the change: cover %.1f%% (touches %.1f%%, sweep %.1f%%), time to the "
	       "change %.2fx linear, after it %.2fx\n",
	       100 * cov2(&r.full), 100 * cov2(&r.touch), 100 * cov2(&r.sweep),
	       r.full.t_split / r.linear.t_split,
	       (r.full.t_trace - r.full.t_split) / (r.linear.t_trace - r.linear.t_split));
	T_CHECK(cov(&r.full) >= 0.90, "coverage %.3f", cov(&r.full));
	T_CHECK(cov2(&r.full) >= 0.85, "coverage after the change %.3f", cov2(&r.full));
	T_CHECK(cov2(&r.touch) >= 0.85, "coverage after the change, touches %.3f", cov2(&r.touch));
	free(t);
}

/* Pages pushed before the switch and known-zero pages are never fetched. */
static void sim_precopy_pushes(void)
{
	struct layout l;
	struct trace_report r;
	struct rng g = {3};
	size_t *t;
	uint8_t *preset;

	synth_layout(&l);
	t = malloc(l.npages * sizeof(*t));
	preset = calloc(l.npages, 1);
	for (size_t i = 0; i < l.npages; i++) {
		t[i] = i;
		preset[i] = rng_next(&g) % 10 < 3; /* 30% pushed */
	}
	memset(preset + A_PAGES, 1, 4096); /* the first 16 MiB of the second range: zero */
	run_trace("pushed 30%", &l, t, l.npages, l.npages, preset, &base_model, &r);
	T_CHECK(cov(&r.full) >= 0.90, "coverage %.3f", cov(&r.full));
	free(preset);
	free(t);
}

/* ---- recorded traces ---- */

static int load_trace(const char *path, size_t **out, size_t *n, size_t *npages)
{
	FILE *f = fopen(path, "r");
	char line[256];
	size_t cap = 0, *t = NULL;

	*n = *npages = 0;
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long first, count;
		long long step;
		int k;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "pages %llu", &first) == 1) {
			*npages = (size_t)first;
			continue;
		}
		k = sscanf(line, "%llu %lld %llu", &first, &step, &count);
		if (k == 1) {
			step = 1;
			count = 1;
		} else if (k != 3) {
			continue;
		}
		for (unsigned long long i = 0; i < count; i++) {
			long long pg = (long long)first + (long long)i * step;

			if (pg < 0 || (size_t)pg >= *npages)
				goto bad;
			if (*n == cap) {
				size_t *nt;

				cap = cap ? 2 * cap : 4096;
				nt = realloc(t, cap * sizeof(*t));
				if (!nt)
					goto bad;
				t = nt;
			}
			t[(*n)++] = (size_t)pg;
		}
	}
	fclose(f);
	*out = t;
	return *n ? 0 : -ENODATA;
bad:
	fclose(f);
	free(t);
	return -EBADMSG;
}

static const char *trace_dir(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++)
		if (!strcmp(argv[i], "--traces"))
			return argv[i + 1];
	return NULL;
}

/* Where the recorded traces are: set once by main, read by the cases below. */
static const char *traces_dir;

static void one_recorded(const char *file, double min_cover)
{
	char path[4096];
	struct layout l;
	struct trace_report r;
	size_t *t = NULL, n, np;
	int ret;

	snprintf(path, sizeof(path), "%s/%s", traces_dir, file);
	ret = load_trace(path, &t, &n, &np);
	T_CHECK(!ret, "%s: %s", path, strerror(-ret));
	if (ret)
		return;
	lay_init(&l, 1, &np);
	run_trace(file, &l, t, n, n, NULL, &base_model, &r);
	T_CHECK(cov(&r.full) >= min_cover, "%s: coverage %.3f", file, cov(&r.full));
	check_no_worse_than_linear(file, &r);
	free(t);
}

/* a column walk (stride 2 pages) interleaved with a row walk */
static void sim_recorded_transpose(void)
{
	one_recorded("transpose.trace", 0.90);
}

/* three sequential streams in turn */
static void sim_recorded_merge(void)
{
	one_recorded("merge.trace", 0.90);
}

/* a sequential stream interleaved with random probes */
static void sim_recorded_hashbuild(void)
{
	one_recorded("hashbuild.trace", 0.0);
}

int main(int argc, char **argv)
{
	char here[4096];

	traces_dir = trace_dir(argc, argv);
	if (!traces_dir) {
		/* the traces sit next to this source file */
		const char *slash = strrchr(__FILE__, '/');

		snprintf(here, sizeof(here), "%.*s/traces", slash ? (int)(slash - __FILE__) : 1,
		         slash ? __FILE__ : ".");
		traces_dir = here;
	}
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--only") && i + 1 < argc)
			t_state.only = argv[i + 1];

	T_RUN(create_rejects_bad_config);
	T_RUN(next_checks_args);
	T_RUN(stride_comes_first);
	T_RUN(majority_vote_tolerates_noise);
	T_RUN(near_window_forward_first);
	T_RUN(near_streams_grow);
	T_RUN(sweep_covers_everything_once);
	T_RUN(sweep_cost_is_linear);
	T_RUN(counters_count);
	T_RUN(requeue_hands_out_again);
	T_RUN(hint_anchors_the_sweep);

	printf("# model: fault D=%.0f, fetch F=%.0f, %d in flight, wait on in-flight >= %.0f, "
	       "%.0f per touch\n",
	       base_model.D, base_model.F, base_model.K, base_model.W, base_model.C);
	T_RUN(sim_sequential);
	T_RUN(sim_stride3);
	T_RUN(sim_stride16);
	T_RUN(sim_stride_neg7);
	T_RUN(sim_random);
	T_RUN(sim_zipf);
	T_RUN(sim_two_streams);
	T_RUN(sim_phase_change);
	T_RUN(sim_precopy_pushes);
	T_RUN(sim_recorded_transpose);
	T_RUN(sim_recorded_merge);
	T_RUN(sim_recorded_hashbuild);
	return t_finish();
}
