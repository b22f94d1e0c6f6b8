/*
 * Unit tests of the page-state table (uffd/pagestate.c): lookups, splits, moves,
 * the "next page in state S" iterator and fork copies, checked against a plain
 * per-page model under random operations; then a 4 GiB-sized table swept in
 * random order, with the time printed (no timing is a pass/fail criterion).
 */
#include "helpers.h"

#include "pagestate.h"

#include <errno.h>
#include <stdint.h>

T_DEFINE_STATE;

#define PG 4096ull

/* The reserve (first: the other cases then run with part of their arrays in
 * it, the rest from malloc, as a large process's would): arrays that fit come
 * from it, one that does not is allocated, and cutting, moving, forking and
 * destroying tables work the same on both (under ASan a free of a reserved
 * piece would abort). */
static void reserve(void)
{
	const uint64_t a = 0x100000000ull, b = 0x200000000ull;
	struct rdmig_pagestate *ps, *child = NULL;
	struct rdmig_pagestate_counts c;

	T_OK(rdmig_pagestate_reserve(256u << 10));
	T_CHECK(rdmig_pagestate_reserve(256u << 10) == -EINVAL, "a second reserve");
	T_OK(rdmig_pagestate_create(PG, &ps));
	if (!ps)
		return;
	T_OK(rdmig_pagestate_add(ps, a, 1000 * PG, a, RDMIG_PAGE_REMOTE));         /* fits */
	T_OK(rdmig_pagestate_add(ps, b, 300000 * PG, b, RDMIG_PAGE_ZERO));         /* does not */
	T_OK(rdmig_pagestate_add(ps, a + 2000 * PG, 64 * PG, a, RDMIG_PAGE_ZERO)); /* fits */
	T_CHECK(rdmig_pagestate_set(ps, a + 10 * PG, 5 * PG, RDMIG_PAGE_INSTALLED) == 5, "set");
	T_CHECK(rdmig_pagestate_get(ps, a + 12 * PG) == RDMIG_PAGE_INSTALLED &&
	            rdmig_pagestate_get(ps, a + 15 * PG) == RDMIG_PAGE_REMOTE &&
	            rdmig_pagestate_get(ps, b + 299999 * PG) == RDMIG_PAGE_ZERO,
	        "states");
	T_CHECK(rdmig_pagestate_forget(ps, a + 100 * PG, 10 * PG) == 10, "a hole"); /* split */
	T_CHECK(rdmig_pagestate_move(ps, a, a + 5000 * PG, 50 * PG) == 50, "move");
	T_CHECK(rdmig_pagestate_get(ps, a + 5012 * PG) == RDMIG_PAGE_INSTALLED, "moved state");
	T_CHECK(rdmig_pagestate_forget(ps, a + 2000 * PG, 64 * PG) == 64, "a whole range");
	T_OK(rdmig_pagestate_clone_for_fork(ps, &child));
	rdmig_pagestate_counts(ps, &c);
	T_CHECK(c.total == 1000 - 10 + 300000, "%llu pages tracked", /* the move keeps them */
	        (unsigned long long)c.total);
	T_CHECK(c.pages[RDMIG_PAGE_INSTALLED] == 5 && c.pages[RDMIG_PAGE_ZERO] == 300000,
	        "counts: %llu installed, %llu zero",
	        (unsigned long long)c.pages[RDMIG_PAGE_INSTALLED],
	        (unsigned long long)c.pages[RDMIG_PAGE_ZERO]);
	rdmig_pagestate_destroy(child);
	rdmig_pagestate_destroy(ps);
}

static void basics(void)
{
	struct rdmig_pagestate *ps;
	struct rdmig_pagestate_counts c;
	struct rdmig_page_ref ref;
	uint64_t a;

	T_OK(rdmig_pagestate_create(PG, &ps));
	T_CHECK(rdmig_pagestate_create(3000, &(struct rdmig_pagestate *){0}) == -EINVAL,
	        "page size must be a power of two");
	T_OK(rdmig_pagestate_add(ps, 0x100000, 16 * PG, 0x900000, RDMIG_PAGE_REMOTE));
	T_OK(rdmig_pagestate_add(ps, 0x200000, 4 * PG, 0x200000, RDMIG_PAGE_ZERO));
	T_CHECK(rdmig_pagestate_add(ps, 0x10f000, 2 * PG, 0, RDMIG_PAGE_REMOTE) == -EEXIST,
	        "overlap at the end");
	T_CHECK(rdmig_pagestate_add(ps, 0xff000, 2 * PG, 0, RDMIG_PAGE_REMOTE) == -EEXIST,
	        "overlap at the start");
	T_CHECK(rdmig_pagestate_add(ps, 0x300001, PG, 0, RDMIG_PAGE_REMOTE) == -EINVAL,
	        "unaligned");
	T_CHECK(rdmig_pagestate_add(ps, 0x300000, 0, 0, RDMIG_PAGE_REMOTE) == -EINVAL, "empty");
	T_CHECK(rdmig_pagestate_add(ps, 0x300000, PG, 0, RDMIG_PAGE_UNTRACKED) == -EINVAL,
	        "untracked is not a state");

	T_CHECK(rdmig_pagestate_get(ps, 0x100000) == RDMIG_PAGE_REMOTE, "first page");
	T_CHECK(rdmig_pagestate_get(ps, 0x10ffff) == RDMIG_PAGE_REMOTE, "last byte");
	T_CHECK(rdmig_pagestate_get(ps, 0x110000) == RDMIG_PAGE_UNTRACKED, "past the end");
	T_CHECK(rdmig_pagestate_get(ps, 0xfffff) == RDMIG_PAGE_UNTRACKED, "before");
	T_CHECK(rdmig_pagestate_get(ps, 0x203000) == RDMIG_PAGE_ZERO, "second range");
	T_CHECK(rdmig_pagestate_lookup(ps, 0x105123, &ref), "lookup");
	T_CHECK(ref.src == 0x905000, "source address %#llx", (unsigned long long)ref.src);
	rdmig_pagestate_update(ps, &ref, RDMIG_PAGE_IN_FLIGHT);
	T_CHECK(rdmig_pagestate_get(ps, 0x105000) == RDMIG_PAGE_IN_FLIGHT, "update");

	rdmig_pagestate_counts(ps, &c);
	T_CHECK(c.total == 20 && c.ranges == 2, "total %llu ranges %llu",
	        (unsigned long long)c.total, (unsigned long long)c.ranges);
	T_CHECK(c.pages[RDMIG_PAGE_REMOTE] == 15 && c.pages[RDMIG_PAGE_IN_FLIGHT] == 1 &&
	            c.pages[RDMIG_PAGE_ZERO] == 4,
	        "counts");

	T_CHECK(rdmig_pagestate_next(ps, RDMIG_PAGE_IN_FLIGHT, 0, &a) == 1 && a == 0x105000,
	        "next in flight");
	T_CHECK(rdmig_pagestate_next(ps, RDMIG_PAGE_IN_FLIGHT, 0x106000, &a) == 0, "none after");
	T_CHECK(rdmig_pagestate_next(ps, RDMIG_PAGE_ZERO, 0x150000, &a) == 1 && a == 0x200000,
	        "next across a gap");
	T_CHECK(rdmig_pagestate_next(ps, RDMIG_PAGE_REMOTE, 0x105000, &a) == 1 && a == 0x106000,
	        "next skips other states");

	/* split in the middle: the tail keeps its source addresses */
	T_CHECK(rdmig_pagestate_forget(ps, 0x104000, 4 * PG) == 4, "forget 4");
	T_CHECK(rdmig_pagestate_get(ps, 0x105000) == RDMIG_PAGE_UNTRACKED, "hole");
	T_CHECK(rdmig_pagestate_lookup(ps, 0x108000, &ref) && ref.src == 0x908000, "tail src");
	T_CHECK(rdmig_pagestate_lookup(ps, 0x103000, &ref) && ref.src == 0x903000, "head src");
	rdmig_pagestate_counts(ps, &c);
	T_CHECK(c.total == 16 && c.ranges == 3 && c.pages[RDMIG_PAGE_IN_FLIGHT] == 0,
	        "after split: %llu pages %llu ranges", (unsigned long long)c.total,
	        (unsigned long long)c.ranges);

	/* move part of the tail elsewhere */
	T_CHECK(rdmig_pagestate_move(ps, 0x10a000, 0x500000, 3 * PG) == 3, "move");
	T_CHECK(rdmig_pagestate_lookup(ps, 0x501000, &ref) && ref.src == 0x90b000,
	        "moved page keeps its source");
	T_CHECK(rdmig_pagestate_get(ps, 0x10a000) == RDMIG_PAGE_UNTRACKED, "moved away");
	T_CHECK(rdmig_pagestate_set(ps, 0, UINT64_MAX, RDMIG_PAGE_INSTALLED) == 16, "set all");
	rdmig_pagestate_counts(ps, &c);
	T_CHECK(c.pages[RDMIG_PAGE_INSTALLED] == 16 && c.total == 16, "all installed");

	T_OK(rdmig_pagestate_add_arena(ps, 0x900000, 8 * PG, (void *)0x7000000));
	T_CHECK(rdmig_pagestate_add_arena(ps, 0x907000, PG, (void *)0x1000) == -EEXIST,
	        "arena overlap");
	T_CHECK(rdmig_pagestate_arena(ps, 0x902000) == (void *)0x7002000, "arena page");
	T_CHECK(rdmig_pagestate_arena(ps, 0x908000) == NULL, "past the arena");
	rdmig_pagestate_destroy(ps);
}

static void fork_copy(void)
{
	struct rdmig_pagestate *ps, *child;
	struct rdmig_pagestate_counts c;
	struct rdmig_page_ref ref;

	T_OK(rdmig_pagestate_create(PG, &ps));
	T_OK(rdmig_pagestate_add(ps, 0x100000, 8 * PG, 0x100000, RDMIG_PAGE_REMOTE));
	T_OK(rdmig_pagestate_add_arena(ps, 0x100000, 8 * PG, (void *)0x5000000));
	rdmig_pagestate_set(ps, 0x100000, PG, RDMIG_PAGE_IN_FLIGHT);
	rdmig_pagestate_set(ps, 0x101000, PG, RDMIG_PAGE_INSTALLED);
	rdmig_pagestate_set(ps, 0x102000, PG, RDMIG_PAGE_DISCARDED);
	T_OK(rdmig_pagestate_clone_for_fork(ps, &child));
	T_CHECK(rdmig_pagestate_get(child, 0x100000) == RDMIG_PAGE_REMOTE,
	        "in flight in the parent = remote in the child");
	T_CHECK(rdmig_pagestate_get(child, 0x101000) == RDMIG_PAGE_INSTALLED, "installed");
	T_CHECK(rdmig_pagestate_get(child, 0x102000) == RDMIG_PAGE_DISCARDED, "discarded");
	T_CHECK(rdmig_pagestate_arena(child, 0x103000) == (void *)0x5003000, "arena copied");
	rdmig_pagestate_counts(child, &c);
	T_CHECK(c.pages[RDMIG_PAGE_REMOTE] == 6 && c.total == 8, "child counts");
	/* independent afterwards */
	T_CHECK(rdmig_pagestate_lookup(child, 0x104000, &ref), "lookup");
	rdmig_pagestate_update(child, &ref, RDMIG_PAGE_INSTALLED);
	T_CHECK(rdmig_pagestate_get(ps, 0x104000) == RDMIG_PAGE_REMOTE, "parent unchanged");
	rdmig_pagestate_destroy(child);
	rdmig_pagestate_destroy(ps);
}

/* ---- random operations against a per-page model ---- */

#define MODEL_PAGES 2048
#define MODEL_BASE 0x40000000ull

struct model {
	uint8_t st[MODEL_PAGES];
	uint64_t src[MODEL_PAGES];
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int model_compare(struct rdmig_pagestate *ps, const struct model *m)
{
	struct rdmig_pagestate_counts c;
	uint64_t counts[RDMIG_PAGE_NSTATES] = {0};
	int bad = 0;

	for (unsigned p = 0; p < MODEL_PAGES; p++) {
		uint64_t addr = MODEL_BASE + p * PG;
		struct rdmig_page_ref ref;
		bool found = rdmig_pagestate_lookup(ps, addr + (rnd() % PG), &ref);

		counts[m->st[p]]++;
		if (found != (m->st[p] != 0) ||
		    (found && (*ref.st != m->st[p] || ref.src != m->src[p])))
			bad++;
	}
	rdmig_pagestate_counts(ps, &c);
	for (unsigned s = 1; s < RDMIG_PAGE_NSTATES; s++)
		if (c.pages[s] != counts[s])
			bad++;
	/* the iterator finds exactly the model's pages of each state, in order */
	for (unsigned s = 1; s < RDMIG_PAGE_NSTATES; s++) {
		uint64_t from = 0, a;
		unsigned p = 0;

		while (rdmig_pagestate_next(ps, (enum rdmig_page_state)s, from, &a) == 1) {
			while (p < MODEL_PAGES && m->st[p] != s)
				p++;
			if (p == MODEL_PAGES || a != MODEL_BASE + p * PG) {
				bad++;
				break;
			}
			p++;
			from = a + PG;
		}
		while (p < MODEL_PAGES && m->st[p] != s)
			p++;
		if (p != MODEL_PAGES)
			bad++;
	}
	return bad;
}

static void random_model(void)
{
	static struct model m;
	struct rdmig_pagestate *ps;
	int bad = 0;

	memset(&m, 0, sizeof(m));
	T_OK(rdmig_pagestate_create(PG, &ps));
	for (int op = 0; op < 20000 && !bad; op++) {
		unsigned p = (unsigned)(rnd() % MODEL_PAGES);
		unsigned n = 1 + (unsigned)(rnd() % 64);
		uint64_t addr = MODEL_BASE + p * PG;
		unsigned st = 1 + (unsigned)(rnd() % (RDMIG_PAGE_NSTATES - 1));

		if (p + n > MODEL_PAGES)
			n = MODEL_PAGES - p;
		switch (rnd() % 5) {
		case 0:
		case 1: { /* add */
			bool free_ = true;
			uint64_t src = 0x7000000000ull + (rnd() % 1000) * PG;

			for (unsigned i = 0; i < n; i++)
				free_ &= m.st[p + i] == 0;
			int r =
			    rdmig_pagestate_add(ps, addr, n * PG, src, (enum rdmig_page_state)st);
			if (r != (free_ ? 0 : -EEXIST))
				bad++;
			if (free_)
				for (unsigned i = 0; i < n; i++) {
					m.st[p + i] = (uint8_t)st;
					m.src[p + i] = src + i * PG;
				}
			break;
		}
		case 2: { /* forget */
			int64_t want = 0;

			for (unsigned i = 0; i < n; i++)
				want += m.st[p + i] != 0, m.st[p + i] = 0;
			if (rdmig_pagestate_forget(ps, addr, n * PG) != want)
				bad++;
			break;
		}
		case 3: { /* set */
			int64_t want = 0;

			for (unsigned i = 0; i < n; i++)
				if (m.st[p + i])
					m.st[p + i] = (uint8_t)st, want++;
			if (rdmig_pagestate_set(ps, addr, n * PG, (enum rdmig_page_state)st) !=
			    want)
				bad++;
			break;
		}
		default: { /* move, source and destination apart as mremap has them */
			unsigned q = (unsigned)(rnd() % MODEL_PAGES);
			static struct model tmp;
			int64_t want = 0;

			if (q + n > MODEL_PAGES || (q < p + n && p < q + n))
				break;
			memcpy(&tmp, &m, sizeof(m));
			for (unsigned i = 0; i < n; i++) {
				m.st[q + i] = tmp.st[p + i];
				m.src[q + i] = tmp.src[p + i];
				want += tmp.st[p + i] != 0;
				m.st[p + i] = 0;
			}
			if (rdmig_pagestate_move(ps, addr, MODEL_BASE + q * PG, n * PG) != want)
				bad++;
			break;
		}
		}
		if (op % 97 == 0)
			bad += model_compare(ps, &m);
	}
	bad += model_compare(ps, &m);
	T_CHECK(bad == 0, "%d differences from the model", bad);
	rdmig_pagestate_destroy(ps);
}

/* ---- a 4 GiB table ---- */

static void big_table(void)
{
	const uint64_t pages = (4ull << 30) / PG; /* 1 Mi pages */
	const unsigned nranges = 1000;
	struct rdmig_pagestate *ps;
	struct rdmig_pagestate_counts c;
	uint64_t *starts, *perm, placed = 0, base = 0x10000000000ull;
	double t0, t_lookup, t_sweep, t_next;
	uint64_t misses = 0, a, found = 0;

	T_OK(rdmig_pagestate_create(PG, &ps));
	starts = calloc(nranges + 1, sizeof(*starts));
	perm = malloc(pages * sizeof(*perm));
	if (!starts || !perm) {
		T_CHECK(0, "out of memory");
		free(starts);
		free(perm);
		rdmig_pagestate_destroy(ps);
		return;
	}
	/* ranges of random sizes with gaps between them, pages in total */
	for (unsigned r = 0; r < nranges; r++) {
		uint64_t left = pages - placed;
		uint64_t n = r == nranges - 1 ? left : 1 + rnd() % (2 * left / (nranges - r));

		if (n > left - (nranges - 1 - r))
			n = left - (nranges - 1 - r);
		starts[r] = base;
		T_OK(rdmig_pagestate_add(ps, base, n * PG, base, RDMIG_PAGE_REMOTE));
		for (uint64_t i = 0; i < n; i++)
			perm[placed + i] = base + i * PG;
		placed += n;
		base += (n + 1 + rnd() % 16) * PG;
	}
	for (uint64_t i = pages - 1; i > 0; i--) {
		uint64_t j = rnd() % (i + 1), t = perm[i];

		perm[i] = perm[j];
		perm[j] = t;
	}

	t0 = t_now_s();
	for (uint64_t i = 0; i < pages; i++)
		if (rdmig_pagestate_get(ps, perm[i] + 123) != RDMIG_PAGE_REMOTE)
			misses++;
	t_lookup = t_now_s() - t0;

	/* the fault loop's work per page, in random order: REMOTE -> IN_FLIGHT -> INSTALLED */
	t0 = t_now_s();
	for (uint64_t i = 0; i < pages; i++) {
		struct rdmig_page_ref ref;

		if (!rdmig_pagestate_lookup(ps, perm[i], &ref) || *ref.st != RDMIG_PAGE_REMOTE) {
			misses++;
			continue;
		}
		rdmig_pagestate_update(ps, &ref, RDMIG_PAGE_IN_FLIGHT);
		if (!rdmig_pagestate_lookup(ps, perm[i], &ref)) {
			misses++;
			continue;
		}
		rdmig_pagestate_update(ps, &ref, RDMIG_PAGE_INSTALLED);
	}
	t_sweep = t_now_s() - t0;
	rdmig_pagestate_counts(ps, &c);
	T_CHECK(misses == 0, "%llu lookups missed", (unsigned long long)misses);
	T_CHECK(c.pages[RDMIG_PAGE_INSTALLED] == pages && c.total == pages,
	        "installed %llu of %llu", (unsigned long long)c.pages[RDMIG_PAGE_INSTALLED],
	        (unsigned long long)pages);

	/* a prefetcher's sweep with next(): every page once, in address order */
	rdmig_pagestate_set(ps, 0, UINT64_MAX, RDMIG_PAGE_REMOTE);
	t0 = t_now_s();
	for (uint64_t from = 0; rdmig_pagestate_next(ps, RDMIG_PAGE_REMOTE, from, &a) == 1;
	     from = a + PG)
		found++;
	t_next = t_now_s() - t0;
	T_CHECK(found == pages, "next() found %llu of %llu", (unsigned long long)found,
	        (unsigned long long)pages);

	printf(
	    "# 4 GiB table (%llu pages, %u ranges): random lookup %.0f ns, random "
	    "fetch+install bookkeeping %.0f ns/page (%.2f s for all), next() sweep %.1f ns/page\n",
	    (unsigned long long)pages, nranges, t_lookup / (double)pages * 1e9,
	    t_sweep / (double)pages * 1e9, t_sweep, t_next / (double)pages * 1e9);
	free(starts);
	free(perm);
	rdmig_pagestate_destroy(ps);
}

/* Release by source address: a range moved by mremap is found where it went,
 * only HELD pages change, and a second release changes nothing. */
static void release_held(void)
{
	struct rdmig_pagestate *ps, *child;
	struct rdmig_pagestate_counts c;
	const uint64_t A = 0x10000000, B = 0x50000000;
	uint8_t bits[2] = {0x05, 0x80}; /* pages 0, 2 and 15 hold data */
	uint8_t ones[2] = {0xff, 0xff};

	T_OK(rdmig_pagestate_create(PG, &ps));
	T_OK(rdmig_pagestate_add(ps, A, 16 * PG, A, RDMIG_PAGE_HELD));
	T_CHECK(rdmig_pagestate_set(ps, A + 3 * PG, PG, RDMIG_PAGE_DISCARDED) == 1, "discard");
	/* pages 8..15 moved to B, keeping their source addresses */
	T_CHECK(rdmig_pagestate_move(ps, A + 8 * PG, B, 8 * PG) == 8, "move");
	T_OK(rdmig_pagestate_clone_for_fork(ps, &child));
	T_CHECK(rdmig_pagestate_release(ps, A + 1, 1, bits) == -EINVAL, "unaligned");
	T_CHECK(rdmig_pagestate_release(ps, A, 16, bits) == 15, "15 held pages released");
	T_CHECK(rdmig_pagestate_get(ps, A) == RDMIG_PAGE_REMOTE &&
	            rdmig_pagestate_get(ps, A + PG) == RDMIG_PAGE_ZERO &&
	            rdmig_pagestate_get(ps, A + 2 * PG) == RDMIG_PAGE_REMOTE,
	        "by the bits");
	T_CHECK(rdmig_pagestate_get(ps, A + 3 * PG) == RDMIG_PAGE_DISCARDED, "discarded stays");
	T_CHECK(rdmig_pagestate_get(ps, B + 7 * PG) == RDMIG_PAGE_REMOTE &&
	            rdmig_pagestate_get(ps, B) == RDMIG_PAGE_ZERO,
	        "the moved pages found by their source address");
	T_CHECK(rdmig_pagestate_release(ps, A, 16, ones) == 0, "a second release changes nothing");
	rdmig_pagestate_counts(ps, &c);
	T_CHECK(c.pages[RDMIG_PAGE_HELD] == 0 && c.pages[RDMIG_PAGE_REMOTE] == 3 &&
	            c.pages[RDMIG_PAGE_ZERO] == 12 && c.total == 16,
	        "counts: held %llu remote %llu zero %llu",
	        (unsigned long long)c.pages[RDMIG_PAGE_HELD],
	        (unsigned long long)c.pages[RDMIG_PAGE_REMOTE],
	        (unsigned long long)c.pages[RDMIG_PAGE_ZERO]);
	rdmig_pagestate_counts(child, &c);
	T_CHECK(c.pages[RDMIG_PAGE_HELD] == 15, "a child's copy stays held until its own release");
	T_CHECK(rdmig_pagestate_release(child, A + 8 * PG, 8, ones + 1) == 8, "the child's half");
	rdmig_pagestate_destroy(child);
	rdmig_pagestate_destroy(ps);
}

/* A release of many pages with random bits, over pages of every state, where
 * the range's state bytes and the part's bitmap are not aligned alike (a part
 * that starts 3 pages into its range, a range moved by mremap in two pieces):
 * every page must end as releasing it alone would leave it. */
static void release_random(void)
{
	enum { N = 4096 };
	const uint64_t A = 0x20000000, B = 0x60000000, S = A + 3 * PG;
	static uint8_t bits[N / 8], want[N + 3];
	struct rdmig_pagestate *ps;
	struct rdmig_pagestate_counts c;
	uint64_t seed = 0x9e3779b97f4a7c15ull, n[RDMIG_PAGE_NSTATES] = {0};
	int64_t released = 0;

	T_OK(rdmig_pagestate_create(PG, &ps));
	T_OK(rdmig_pagestate_add(ps, A, (N + 3) * (uint64_t)PG, A, RDMIG_PAGE_HELD));
	for (unsigned i = 0; i < N / 8; i++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		/* all ones, all zeros, or mixed */
		bits[i] = i % 5 == 0 ? 0xff : i % 5 == 1 ? 0 : (uint8_t)seed;
	}
	for (unsigned p = 0; p < N + 3; p++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		want[p] = RDMIG_PAGE_HELD;
		/* one page in 16 already something else, and now and then a run */
		if (seed % 16 == 0 || (p / 64) % 9 == 4) {
			enum rdmig_page_state o = seed % 3 == 0   ? RDMIG_PAGE_INSTALLED
			                          : seed % 3 == 1 ? RDMIG_PAGE_DISCARDED
			                                          : RDMIG_PAGE_ZERO;

			T_CHECK(rdmig_pagestate_set(ps, A + p * (uint64_t)PG, PG, o) == 1, "set");
			want[p] = (uint8_t)o;
		}
	}
	/* pages from 1000 on moved away (source addresses kept): two ranges */
	T_CHECK(rdmig_pagestate_move(ps, A + 1000 * (uint64_t)PG, B,
	                             (N + 3 - 1000) * (uint64_t)PG) == N + 3 - 1000,
	        "move");
	/* the model: page by page */
	for (unsigned k = 0; k < N; k++) {
		if (want[k + 3] != RDMIG_PAGE_HELD)
			continue;
		want[k + 3] = bits[k / 8] >> (k % 8) & 1 ? RDMIG_PAGE_REMOTE : RDMIG_PAGE_ZERO;
		released++;
	}
	for (unsigned p = 0; p < N + 3; p++)
		n[want[p]]++;
	T_CHECK(rdmig_pagestate_release(ps, S, N, bits) == released, "%lld pages released",
	        (long long)released);
	for (unsigned p = 0; p < N + 3; p++) {
		uint64_t at = p < 1000 ? A + p * (uint64_t)PG : B + (p - 1000) * (uint64_t)PG;

		if (rdmig_pagestate_get(ps, at) != want[p]) {
			T_CHECK(false, "page %u: state %d, expected %d", p,
			        (int)rdmig_pagestate_get(ps, at), (int)want[p]);
			break;
		}
	}
	rdmig_pagestate_counts(ps, &c);
	for (int st = 0; st < RDMIG_PAGE_NSTATES; st++)
		T_CHECK(c.pages[st] == n[st], "state %d: %llu pages counted, %llu there", st,
		        (unsigned long long)c.pages[st], (unsigned long long)n[st]);
	T_CHECK(rdmig_pagestate_release(ps, S, N, bits) == 0, "a second release changes nothing");
	rdmig_pagestate_destroy(ps);
}

int main(int argc, char **argv)
{
	t_state.only = argc > 1 ? argv[1] : NULL;
	T_RUN(reserve);
	T_RUN(basics);
	T_RUN(fork_copy);
	T_RUN(release_held);
	T_RUN(release_random);
	T_RUN(random_model);
	T_RUN(big_table);
	if (t_state.only && !t_state.passed && !t_state.failed) {
		fprintf(stderr, "no case named %s\n", t_state.only);
		return 1;
	}
	return t_finish();
}
