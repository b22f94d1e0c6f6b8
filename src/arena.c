/*
 * The destination's pre-copy arena and the run fetcher (src/arena.h).
 *
 * A page's copy is current when it was pulled in a round and no later round, no
 * settling round (hybrid) and not the freeze copied it again: each round's RUNS
 * are pulled as they come (setting the bit), FINAL RUNS (one set per settling
 * round, one at the freeze) clear it. The source starts a round's copies only
 * after the destination said ROUND_DONE for the one before, so a pull never reads
 * a mirror page while it is being rewritten.
 */
#define LOG_SUBSYS "arena"
#include "arena.h"

#include "rdmig/log.h"
#include "rdmig/tpsource.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PG 4096ull

struct region {
	uint64_t start, len;
	uint8_t *base;
	uint8_t *valid; /* one bit per page */
};

struct rdmig_arena {
	struct rdmig_page_source *src;
	struct region *r; /* sorted by start */
	uint32_t n;
	uint64_t pulled;
};

static struct region *find(const struct rdmig_arena *a, uint64_t addr)
{
	uint32_t lo = 0, hi = a->n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (a->r[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || addr - a->r[lo - 1].start >= a->r[lo - 1].len)
		return NULL;
	return &a->r[lo - 1];
}

static int cmp_start(const void *x, const void *y)
{
	const struct region *a = x, *b = y;

	return a->start < b->start ? -1 : a->start > b->start;
}

int rdmig_arena_create(struct rdmig_conn *data, const struct rdmig_region *pre, uint32_t n,
                       struct rdmig_arena **out)
{
	struct rdmig_arena *a = calloc(1, sizeof(*a));
	int ret;

	*out = NULL;
	if (!a)
		return -ENOMEM;
	a->r = calloc(n ? n : 1, sizeof(*a->r));
	if (!a->r) {
		ret = -ENOMEM;
		goto out_destroy;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct region *r = &a->r[a->n];

		if (pre[i].id % PG || pre[i].desc.len % PG || !pre[i].desc.len) {
			pr_err("a pre-copy region that is not whole pages");
			ret = -EBADMSG;
			goto out_destroy;
		}
		r->start = pre[i].id;
		r->len = pre[i].desc.len;
		r->base = mmap(NULL, r->len, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (r->base == MAP_FAILED) {
			r->base = NULL;
			ret = -ENOMEM;
			goto out_destroy;
		}
		a->n++;
		r->valid = calloc((r->len / PG + 7) / 8, 1);
		if (!r->valid) {
			ret = -ENOMEM;
			goto out_destroy;
		}
	}
	qsort(a->r, a->n, sizeof(*a->r), cmp_start);
	/* the source's table checks overlap and wrap-around (tpsource.c) */
	ret = rdmig_tpsource_create(
	    &(struct rdmig_tpsource_opts){.conn = data, .regions = pre, .nregions = n}, &a->src);
	if (ret < 0)
		goto out_destroy;
	*out = a;
	return 0;
out_destroy:
	rdmig_arena_destroy(a);
	return ret;
}

static int into_arena(void *arg, uint64_t addr, const void *data)
{
	struct rdmig_arena *a = arg;
	struct region *r = find(a, addr);
	uint64_t i;

	if (!r) {
		pr_err("a pulled page at %#llx lies outside the arena", (unsigned long long)addr);
		return -EFAULT;
	}
	i = (addr - r->start) / PG;
	memcpy(r->base + i * PG, data, PG);
	r->valid[i / 8] |= (uint8_t)(1u << (i % 8));
	a->pulled++;
	return 0;
}

int rdmig_arena_pull(struct rdmig_arena *a, const struct rdmig_msg *m, int timeout_ms)
{
	struct rdmig_run *runs;
	int ret;

	if (!a->src)
		return -EINVAL;
	runs = calloc(m->u.runs.n ? m->u.runs.n : 1, sizeof(*runs));
	if (!runs)
		return -ENOMEM;
	for (uint32_t i = 0; i < m->u.runs.n; i++)
		(void)rdmig_msg_run(m, i, &runs[i]); /* i < n: cannot fail */
	ret = rdmig_fetch_runs(a->src, runs, m->u.runs.n, into_arena, a, timeout_ms);
	free(runs);
	return ret;
}

void rdmig_arena_stale(struct rdmig_arena *a, const struct rdmig_msg *m)
{
	for (uint32_t i = 0; i < m->u.runs.n; i++) {
		struct rdmig_run run;

		(void)rdmig_msg_run(m, i, &run);
		for (uint64_t p = 0; p < run.pages; p++) {
			uint64_t addr = run.addr + p * PG;
			struct region *r = find(a, addr);

			if (r) {
				uint64_t k = (addr - r->start) / PG;

				r->valid[k / 8] &= (uint8_t) ~(1u << (k % 8));
			}
		}
	}
}

const uint8_t *rdmig_arena_page(const struct rdmig_arena *a, uint64_t addr)
{
	const struct region *r = a ? find(a, addr) : NULL;
	uint64_t i;

	if (!r)
		return NULL;
	i = (addr - r->start) / PG;
	return (r->valid[i / 8] & (1u << (i % 8))) ? r->base + i * PG : NULL;
}

int rdmig_arena_region(const struct rdmig_arena *a, uint32_t i, uint64_t *start, uint64_t *len,
                       const void **base)
{
	if (!a || i >= a->n)
		return -ENOENT;
	*start = a->r[i].start;
	*len = a->r[i].len;
	*base = a->r[i].base;
	return 0;
}

uint64_t rdmig_arena_pulled(const struct rdmig_arena *a)
{
	return a ? a->pulled : 0;
}

void rdmig_arena_drop_source(struct rdmig_arena *a)
{
	if (a) {
		rdmig_source_destroy(a->src);
		a->src = NULL;
	}
}

void rdmig_arena_retire(struct rdmig_arena *a)
{
	if (a && a->src)
		rdmig_tpsource_retire(a->src);
}

void rdmig_arena_destroy(struct rdmig_arena *a)
{
	if (!a)
		return;
	rdmig_arena_drop_source(a);
	for (uint32_t i = 0; i < a->n; i++) {
		munmap(a->r[i].base, a->r[i].len);
		free(a->r[i].valid);
	}
	free(a->r);
	free(a);
}

/* Take what has landed; wait up to timeout_ms for something when *outstanding. */
static int drain(struct rdmig_page_source *src, uint64_t *outstanding, rdmig_page_fn fn, void *arg,
                 int timeout_ms, bool wait)
{
	struct rdmig_fetch_done done[64];
	int n, ret = 0;

	for (;;) {
		n = rdmig_source_poll(src, done, 64);
		if (n < 0)
			return n;
		for (int i = 0; i < n; i++) {
			if (done[i].status < 0 && ret == 0)
				ret = done[i].status;
			if (done[i].status == 0 && ret == 0)
				ret = fn(arg, done[i].addr, done[i].data);
			rdmig_source_release(src, &done[i]);
			(*outstanding)--;
		}
		if (ret < 0 || n > 0 || !wait || !*outstanding)
			return ret;
		struct pollfd pfd = {.fd = rdmig_source_event_fd(src), .events = POLLIN};
		int k = poll(&pfd, 1, timeout_ms);

		if (k == 0) {
			pr_err("no page arrived for %d ms", timeout_ms);
			return -ETIMEDOUT;
		}
		if (k < 0 && errno != EINTR)
			return -errno;
	}
}

int rdmig_fetch_runs(struct rdmig_page_source *src, const struct rdmig_run *runs, uint32_t n,
                     rdmig_page_fn fn, void *arg, int timeout_ms)
{
	uint64_t outstanding = 0;
	int ret = 0;

	for (uint32_t i = 0; i < n && ret == 0; i++) {
		for (uint64_t p = 0; p < runs[i].pages && ret == 0;) {
			uint64_t addr = runs[i].addr + p * PG;

			ret = rdmig_source_fetch(src, addr, PG, addr);
			if (ret == -EAGAIN) {
				/* no room: take what landed, waiting for it if need be */
				ret = drain(src, &outstanding, fn, arg, timeout_ms, true);
				continue;
			}
			if (ret == 0) {
				outstanding++;
				p++;
				/* now and then take what landed, but not after every page:
				 * a poll posts the source's open batch, and neighbours
				 * should share a READ */
				if (outstanding % 64 == 0)
					ret = drain(src, &outstanding, fn, arg, timeout_ms, false);
			}
		}
	}
	while (ret == 0 && outstanding)
		ret = drain(src, &outstanding, fn, arg, timeout_ms, true);
	if (ret < 0 && outstanding) {
		/* the source is failed; what it still owes is abandoned with it */
		pr_err("%llu fetches abandoned: %s", (unsigned long long)outstanding,
		       strerror(-ret));
	}
	return ret;
}
