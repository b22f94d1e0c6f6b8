/*
 * The page-state table (pagestate.h): sorted ranges, one state byte per page.
 *
 * Why not a list: the reference lazy-pages daemon keeps its bookkeeping in a sorted
 * linked list of IOVs that it walks and splits on every fault, and a random sweep
 * of 2 GiB takes it about 13 minutes here. Here a fault costs a binary search over
 * the ranges (a process has tens to a few thousand) and a byte index, so a sweep is
 * linear in the number of pages whatever the order. 4 GiB of memory is a 1 MiB
 * table.
 */
#define LOG_SUBSYS "uffd"
#include "pagestate.h"

#include "rdmig/log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct ps_range {
	uint64_t start, end; /* [start, end), page aligned */
	uint64_t src;        /* source address of start */
	uint8_t *st;         /* one byte per page */
	bool st_pooled;      /* st is a piece of the reserve: never freed */
};

struct ps_arena {
	uint64_t src, end;
	const uint8_t *base;
};

struct rdmig_pagestate {
	unsigned page_size, page_shift;
	struct ps_range *r; /* sorted by start, never overlapping */
	size_t nr, rcap;
	struct ps_arena *a; /* sorted by src */
	size_t na, acap;
	uint64_t counts[RDMIG_PAGE_NSTATES];
};

static const char *const state_names[RDMIG_PAGE_NSTATES] = {
    [RDMIG_PAGE_UNTRACKED] = "untracked", [RDMIG_PAGE_REMOTE] = "remote",
    [RDMIG_PAGE_ARENA] = "arena",         [RDMIG_PAGE_IN_FLIGHT] = "in-flight",
    [RDMIG_PAGE_INSTALLED] = "installed", [RDMIG_PAGE_ZERO] = "zero",
    [RDMIG_PAGE_DISCARDED] = "discarded", [RDMIG_PAGE_HELD] = "held",
};

const char *rdmig_page_state_name(enum rdmig_page_state st)
{
	return (unsigned)st < RDMIG_PAGE_NSTATES ? state_names[st] : "?";
}

/* The reserve (rdmig_pagestate_reserve): the destination sets up every range of
 * the process inside the downtime, and on this (shadow-paged) machine the first
 * touch of the state arrays was most of it: 1 MiB of states (4 GiB of memory)
 * took 4.5 ms, of which 0.02 ms is the memset itself once the pages are in
 * place. Pieces are handed out, never returned (a daemon makes its tables once). */
static struct {
	uint8_t *base;
	size_t len, used; /* used: atomic, may run past len (then nothing fits) */
} reserve;

int rdmig_pagestate_reserve(size_t bytes)
{
	uint8_t *b;

	if (reserve.base || !bytes)
		return -EINVAL;
	b = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return -errno;
	memset(b, 0, bytes); /* the touch is the point */
	reserve.len = bytes;
	reserve.base = b;
	return 0;
}

static uint8_t *st_alloc(uint64_t n, bool *pooled)
{
	*pooled = false;
	if (reserve.base && n <= reserve.len) {
		/* 8-byte aligned pieces, as malloc's: uncount reads 8 states at a time */
		size_t want = ((size_t)n + 7) & ~(size_t)7;
		size_t at = __atomic_fetch_add(&reserve.used, want, __ATOMIC_RELAXED);

		if (at <= reserve.len && want <= reserve.len - at) {
			*pooled = true;
			return reserve.base + at;
		}
	}
	return malloc((size_t)n);
}

static void st_free(uint8_t *st, bool pooled)
{
	if (!pooled)
		free(st);
}

static uint64_t range_pages(const struct rdmig_pagestate *ps, const struct ps_range *r)
{
	return (r->end - r->start) >> ps->page_shift;
}

int rdmig_pagestate_create(unsigned page_size, struct rdmig_pagestate **out)
{
	struct rdmig_pagestate *ps;

	if (!page_size || (page_size & (page_size - 1)))
		return -EINVAL;
	ps = calloc(1, sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	ps->page_size = page_size;
	ps->page_shift = (unsigned)__builtin_ctz(page_size);
	*out = ps;
	return 0;
}

void rdmig_pagestate_destroy(struct rdmig_pagestate *ps)
{
	if (!ps)
		return;
	for (size_t i = 0; i < ps->nr; i++)
		st_free(ps->r[i].st, ps->r[i].st_pooled);
	free(ps->r);
	free(ps->a);
	free(ps);
}

unsigned rdmig_pagestate_page_size(const struct rdmig_pagestate *ps)
{
	return ps->page_size;
}

/* Index of the last range starting at or below addr, or -1. */
static ssize_t find_le(const struct rdmig_pagestate *ps, uint64_t addr)
{
	size_t lo = 0, hi = ps->nr;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ps->r[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ssize_t)lo - 1;
}

static const struct ps_range *find(const struct rdmig_pagestate *ps, uint64_t addr)
{
	ssize_t i = find_le(ps, addr);

	if (i < 0 || addr >= ps->r[i].end)
		return NULL;
	return &ps->r[i];
}

bool rdmig_pagestate_lookup(struct rdmig_pagestate *ps, uint64_t addr, struct rdmig_page_ref *ref)
{
	const struct ps_range *r = find(ps, addr);
	uint64_t idx;

	if (!r)
		return false;
	idx = (addr - r->start) >> ps->page_shift;
	ref->st = &r->st[idx];
	ref->src = r->src + (idx << ps->page_shift);
	return true;
}

enum rdmig_page_state rdmig_pagestate_get(const struct rdmig_pagestate *ps, uint64_t addr)
{
	const struct ps_range *r = find(ps, addr);

	if (!r)
		return RDMIG_PAGE_UNTRACKED;
	return (enum rdmig_page_state)r->st[(addr - r->start) >> ps->page_shift];
}

void rdmig_pagestate_update(struct rdmig_pagestate *ps, const struct rdmig_page_ref *ref,
                            enum rdmig_page_state st)
{
	ps->counts[*ref->st]--;
	ps->counts[st]++;
	*ref->st = (uint8_t)st;
}

void rdmig_pagestate_counts(const struct rdmig_pagestate *ps, struct rdmig_pagestate_counts *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned s = 0; s < RDMIG_PAGE_NSTATES; s++) {
		out->pages[s] = ps->counts[s];
		out->total += ps->counts[s];
	}
	out->ranges = ps->nr;
}

bool rdmig_pagestate_first(const struct rdmig_pagestate *ps, uint64_t *addr)
{
	if (!ps->nr)
		return false;
	*addr = ps->r[0].start;
	return true;
}

int rdmig_pagestate_next(const struct rdmig_pagestate *ps, enum rdmig_page_state st, uint64_t from,
                         uint64_t *addr)
{
	ssize_t i = find_le(ps, from);

	if (i < 0 || from >= ps->r[i].end) {
		i++; /* from is in a gap: start at the next range */
		from = 0;
	}
	for (; (size_t)i < ps->nr; i++, from = 0) {
		const struct ps_range *r = &ps->r[i];
		uint64_t idx = from > r->start ? (from - r->start) >> ps->page_shift : 0;
		uint64_t n = range_pages(ps, r);
		const uint8_t *hit = memchr(r->st + idx, (int)st, (size_t)(n - idx));

		if (hit) {
			*addr = r->start + ((uint64_t)(hit - r->st) << ps->page_shift);
			return 1;
		}
	}
	return 0;
}

static int reserve_ranges(struct rdmig_pagestate *ps, size_t n)
{
	struct ps_range *nr;
	size_t cap;

	if (ps->nr + n <= ps->rcap)
		return 0;
	cap = ps->rcap ? ps->rcap * 2 : 16;
	while (cap < ps->nr + n)
		cap *= 2;
	nr = realloc(ps->r, cap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	ps->r = nr;
	ps->rcap = cap;
	return 0;
}

/* Insert a range (states already counted by the caller) keeping the order. */
static int insert_range(struct rdmig_pagestate *ps, const struct ps_range *nr)
{
	ssize_t at = find_le(ps, nr->start) + 1;
	int ret = reserve_ranges(ps, 1);

	if (ret)
		return ret;
	memmove(&ps->r[at + 1], &ps->r[at], (ps->nr - (size_t)at) * sizeof(*nr));
	ps->r[at] = *nr;
	ps->nr++;
	return 0;
}

static bool overlaps(const struct rdmig_pagestate *ps, uint64_t start, uint64_t end)
{
	ssize_t i = find_le(ps, end - 1);

	return i >= 0 && ps->r[i].end > start;
}

static bool aligned(const struct rdmig_pagestate *ps, uint64_t addr, uint64_t len)
{
	uint64_t mask = ps->page_size - 1;

	return len && !(addr & mask) && !(len & mask) && addr + len > addr;
}

int rdmig_pagestate_add(struct rdmig_pagestate *ps, uint64_t addr, uint64_t len, uint64_t src,
                        enum rdmig_page_state st)
{
	struct ps_range nr = {.start = addr, .end = addr + len, .src = src};
	uint64_t n;
	int ret;

	if (!aligned(ps, addr, len) || (src & (ps->page_size - 1)) || st == RDMIG_PAGE_UNTRACKED ||
	    (unsigned)st >= RDMIG_PAGE_NSTATES)
		return -EINVAL;
	if (overlaps(ps, addr, addr + len))
		return -EEXIST;
	n = len >> ps->page_shift;
	nr.st = st_alloc(n, &nr.st_pooled);
	if (!nr.st)
		return -ENOMEM;
	memset(nr.st, (int)st, (size_t)n);
	ret = insert_range(ps, &nr);
	if (ret) {
		st_free(nr.st, nr.st_pooled);
		return ret;
	}
	ps->counts[st] += n;
	return 0;
}

/* By runs of one state, 8 bytes at a time where they can be: page by page, the
 * chain of counter updates made setting up 1 GiB of states cost ~0.2 ms of the
 * downtime (0.02 ms now, with the destination's bitmap walk by bytes). */
static void uncount(struct rdmig_pagestate *ps, const uint8_t *st, uint64_t n)
{
	for (uint64_t i = 0; i < n;) {
		uint64_t j = i + 1, w, all;

		all = 0x0101010101010101ull * st[i];
		while (j < n && j % 8)
			if (st[j] == st[i])
				j++;
			else
				break;
		if (j % 8 == 0)
			while (j + 8 <= n && (memcpy(&w, st + j, 8), w == all))
				j += 8;
		while (j < n && st[j] == st[i])
			j++;
		ps->counts[st[i]] -= j - i;
		i = j;
	}
}

/*
 * Cut [start, end) out of range i. May leave it whole (no overlap), shrink it,
 * delete it, or split it in two (the only case that allocates). Returns pages
 * removed or -ENOMEM. *removed_range tells the caller the array shifted.
 */
static int64_t cut_range(struct rdmig_pagestate *ps, size_t i, uint64_t start, uint64_t end,
                         bool *removed_range)
{
	struct ps_range *r = &ps->r[i];
	uint64_t a = start > r->start ? start : r->start;
	uint64_t b = end < r->end ? end : r->end;
	uint64_t ia, ib;

	*removed_range = false;
	if (a >= b)
		return 0;
	ia = (a - r->start) >> ps->page_shift;
	ib = (b - r->start) >> ps->page_shift;
	if (a > r->start && b < r->end) {
		/* a hole in the middle: the tail becomes a range of its own */
		struct ps_range tail = {
		    .start = b,
		    .end = r->end,
		    .src = r->src + (ib << ps->page_shift),
		};
		uint64_t tn = (r->end - b) >> ps->page_shift;
		int ret;

		tail.st = malloc((size_t)tn);
		if (!tail.st)
			return -ENOMEM;
		memcpy(tail.st, r->st + ib, (size_t)tn);
		uncount(ps, r->st + ia, ib - ia);
		r->end = a;
		ret = insert_range(ps, &tail); /* may move ps->r: r is stale after this */
		if (ret) {
			free(tail.st);
			return ret;
		}
		return (int64_t)(ib - ia);
	}
	uncount(ps, r->st + ia, ib - ia);
	if (a == r->start && b == r->end) {
		st_free(r->st, r->st_pooled);
		memmove(r, r + 1, (ps->nr - i - 1) * sizeof(*r));
		ps->nr--;
		*removed_range = true;
	} else if (a == r->start) {
		/* keep the tail */
		uint64_t tn = (r->end - b) >> ps->page_shift;

		memmove(r->st, r->st + ib, (size_t)tn);
		r->src += ib << ps->page_shift;
		r->start = b;
	} else {
		r->end = a; /* keep the head; the array keeps its length */
	}
	return (int64_t)(ib - ia);
}

int64_t rdmig_pagestate_forget(struct rdmig_pagestate *ps, uint64_t addr, uint64_t len)
{
	uint64_t end = addr + len;
	int64_t total = 0;
	ssize_t i;

	if (!len)
		return 0;
	if (end < addr)
		end = UINT64_MAX;
	i = find_le(ps, addr);
	if (i < 0)
		i = 0;
	while ((size_t)i < ps->nr && ps->r[i].start < end) {
		bool removed;
		int64_t n = cut_range(ps, (size_t)i, addr, end, &removed);

		if (n < 0)
			return n;
		total += n;
		if (!removed)
			i++;
	}
	return total;
}

int64_t rdmig_pagestate_set(struct rdmig_pagestate *ps, uint64_t addr, uint64_t len,
                            enum rdmig_page_state st)
{
	uint64_t end = addr + len;
	int64_t total = 0;
	ssize_t i;

	if ((unsigned)st >= RDMIG_PAGE_NSTATES || st == RDMIG_PAGE_UNTRACKED)
		return -EINVAL;
	if (end < addr)
		end = UINT64_MAX;
	i = find_le(ps, addr);
	if (i < 0)
		i = 0;
	for (; (size_t)i < ps->nr && ps->r[i].start < end; i++) {
		struct ps_range *r = &ps->r[i];
		uint64_t a = addr > r->start ? addr : r->start;
		uint64_t b = end < r->end ? end : r->end;

		if (a >= b)
			continue;
		uint64_t ia = (a - r->start) >> ps->page_shift;
		uint64_t ib = (b - r->start) >> ps->page_shift;

		uncount(ps, r->st + ia, ib - ia);
		memset(r->st + ia, (int)st, (size_t)(ib - ia));
		ps->counts[st] += ib - ia;
		total += (int64_t)(ib - ia);
	}
	return total;
}

/* eight state bytes in one word: st[j] is byte j (little-endian, as x86-64) */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the page states' word-wide release assumes a little-endian machine"
#endif
#define HELD_X8 (0x0101010101010101ull * RDMIG_PAGE_HELD)
#define REMOTE_X8 (0x0101010101010101ull * RDMIG_PAGE_REMOTE)
#define ZERO_X8 (0x0101010101010101ull * RDMIG_PAGE_ZERO)

int64_t rdmig_pagestate_release(struct rdmig_pagestate *ps, uint64_t src, uint64_t pages,
                                const uint8_t *bits)
{
	uint64_t end = src + (pages << ps->page_shift), remote = 0;
	int64_t total = 0;

	if ((src & (ps->page_size - 1)) || end < src)
		return -EINVAL;
	/* by source address: a range moved by mremap keeps fetching from where its
	 * pages were, so the part that names them may lie anywhere in the table */
	for (size_t i = 0; i < ps->nr; i++) {
		struct ps_range *r = &ps->r[i];
		uint64_t rend = r->src + (r->end - r->start);
		uint64_t a = src > r->src ? src : r->src, b = end < rend ? end : rend;

		for (; a < b;) {
			uint8_t *st = &r->st[(a - r->src) >> ps->page_shift];
			uint64_t k = (a - src) >> ps->page_shift;
			uint64_t eight;

			/* Eight pages of one bitmap byte, all HELD (a part's usual case),
			 * in one word: a 64 MiB part with random bits took 22 us page by
			 * page here (best of 50), 7 us this way; the loop does it while
			 * faults wait. */
			if (k % 8 == 0 && b - a >= 8ull * ps->page_size &&
			    (memcpy(&eight, st, 8), eight == HELD_X8)) {
				unsigned byte = bits[k / 8],
				         ones = (unsigned)__builtin_popcount(byte);
				/* bit j of the byte to 0x01 or 0 in byte j, then to 0xff or 0 */
				uint64_t t = byte * 0x0101010101010101ull & 0x8040201008040201ull;
				uint64_t m =
				    ((t + 0x7f7f7f7f7f7f7f7full) & 0x8080808080808080ull) >> 7;

				m *= 0xff;
				eight = (REMOTE_X8 & m) | (ZERO_X8 & ~m);
				memcpy(st, &eight, 8);
				remote += ones; /* the counts once, at the end */
				total += 8;
				a += 8ull * ps->page_size;
				continue;
			}
			a += ps->page_size;
			if (*st != RDMIG_PAGE_HELD)
				continue;
			enum rdmig_page_state to =
			    bits[k / 8] >> (k % 8) & 1 ? RDMIG_PAGE_REMOTE : RDMIG_PAGE_ZERO;

			remote += to == RDMIG_PAGE_REMOTE;
			*st = (uint8_t)to;
			total++;
		}
	}
	ps->counts[RDMIG_PAGE_HELD] -= (uint64_t)total;
	ps->counts[RDMIG_PAGE_REMOTE] += remote;
	ps->counts[RDMIG_PAGE_ZERO] += (uint64_t)total - remote;
	return total;
}

int64_t rdmig_pagestate_move(struct rdmig_pagestate *ps, uint64_t from, uint64_t to, uint64_t len)
{
	struct ps_range *moved = NULL;
	size_t nmoved = 0;
	int64_t total = 0, ret;
	uint64_t end = from + len;
	ssize_t i;

	if (!len || from == to)
		return 0;
	if (end < from || to + len < to)
		return -EINVAL;
	/* Copy out the tracked parts first: the source and destination may overlap. */
	i = find_le(ps, from);
	if (i < 0)
		i = 0;
	for (; (size_t)i < ps->nr && ps->r[i].start < end; i++) {
		const struct ps_range *r = &ps->r[i];
		uint64_t a = from > r->start ? from : r->start;
		uint64_t b = end < r->end ? end : r->end;

		if (a >= b)
			continue;
		struct ps_range *grown = realloc(moved, (nmoved + 1) * sizeof(*moved));
		if (!grown) {
			ret = -ENOMEM;
			goto out_free;
		}
		moved = grown;
		uint64_t ia = (a - r->start) >> ps->page_shift;
		uint64_t n = (b - a) >> ps->page_shift;
		struct ps_range *m = &moved[nmoved];

		m->start = to + (a - from);
		m->end = m->start + (b - a);
		m->src = r->src + (ia << ps->page_shift);
		m->st_pooled = false; /* malloc'd: moves are rare */
		m->st = malloc((size_t)n);
		if (!m->st) {
			ret = -ENOMEM;
			goto out_free;
		}
		memcpy(m->st, r->st + ia, (size_t)n);
		nmoved++;
	}
	ret = rdmig_pagestate_forget(ps, from, len);
	if (ret < 0)
		goto out_free;
	ret = rdmig_pagestate_forget(ps, to, len);
	if (ret < 0)
		goto out_free;
	for (size_t k = 0; k < nmoved; k++) {
		uint64_t n = (moved[k].end - moved[k].start) >> ps->page_shift;

		ret = insert_range(ps, &moved[k]);
		if (ret)
			goto out_free_from;
		for (uint64_t p = 0; p < n; p++)
			ps->counts[moved[k].st[p]]++;
		moved[k].st = NULL; /* owned by the table now */
		total += (int64_t)n;
	}
	free(moved);
	return total;

out_free_from:
	/* The pages left the table; whatever could not be re-inserted is lost, which
	 * the caller reports (it means the process's pages are no longer served). */
	pr_err("mremap %#llx -> %#llx: out of memory, %zu ranges lost", (unsigned long long)from,
	       (unsigned long long)to, nmoved);
out_free:
	for (size_t k = 0; k < nmoved; k++)
		free(moved[k].st);
	free(moved);
	return ret;
}

int rdmig_pagestate_clone_for_fork(const struct rdmig_pagestate *ps, struct rdmig_pagestate **out)
{
	struct rdmig_pagestate *c;
	int ret;

	ret = rdmig_pagestate_create(ps->page_size, &c);
	if (ret)
		return ret;
	c->r = calloc(ps->nr ? ps->nr : 1, sizeof(*c->r));
	c->a = calloc(ps->na ? ps->na : 1, sizeof(*c->a));
	if (!c->r || !c->a)
		goto out_destroy;
	c->rcap = ps->nr ? ps->nr : 1;
	c->acap = ps->na ? ps->na : 1;
	if (ps->na)
		memcpy(c->a, ps->a, ps->na * sizeof(*c->a));
	c->na = ps->na;
	for (size_t i = 0; i < ps->nr; i++) {
		const struct ps_range *r = &ps->r[i];
		uint64_t n = range_pages(ps, r);
		uint8_t *st = malloc((size_t)n);

		if (!st)
			goto out_destroy;
		for (uint64_t p = 0; p < n; p++) {
			/* The parent's fetch fills only the parent; in the child the page is
			 * still missing and comes from the source like any other. */
			st[p] = r->st[p] == RDMIG_PAGE_IN_FLIGHT ? RDMIG_PAGE_REMOTE : r->st[p];
			c->counts[st[p]]++;
		}
		c->r[i] = *r;
		c->r[i].st = st;
		c->r[i].st_pooled = false;
		c->nr++;
	}
	*out = c;
	return 0;

out_destroy:
	rdmig_pagestate_destroy(c);
	return -ENOMEM;
}

int rdmig_pagestate_add_arena(struct rdmig_pagestate *ps, uint64_t src, uint64_t len,
                              const void *base)
{
	size_t at = 0;

	if (!aligned(ps, src, len) || !base)
		return -EINVAL;
	while (at < ps->na && ps->a[at].src < src)
		at++;
	if ((at < ps->na && ps->a[at].src < src + len) || (at > 0 && ps->a[at - 1].end > src))
		return -EEXIST;
	if (ps->na == ps->acap) {
		size_t cap = ps->acap ? ps->acap * 2 : 4;
		struct ps_arena *na = realloc(ps->a, cap * sizeof(*na));

		if (!na)
			return -ENOMEM;
		ps->a = na;
		ps->acap = cap;
	}
	memmove(&ps->a[at + 1], &ps->a[at], (ps->na - at) * sizeof(*ps->a));
	ps->a[at] = (struct ps_arena){.src = src, .end = src + len, .base = base};
	ps->na++;
	return 0;
}

const void *rdmig_pagestate_arena(const struct rdmig_pagestate *ps, uint64_t src)
{
	size_t lo = 0, hi = ps->na;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ps->a[mid].src <= src)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || src >= ps->a[lo - 1].end)
		return NULL;
	return ps->a[lo - 1].base + (src - ps->a[lo - 1].src);
}
