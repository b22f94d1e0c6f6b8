/*
 * The prefetch policy behind include/rdmig/prefetch.h: what to fetch next while
 * the process faults the rest in on demand. No I/O here; the fault loop feeds
 * faults in and takes page addresses out.
 *
 * Three sources, asked in order, each handing out only pages not settled yet:
 *   stride  a trend found by majority vote over recent access deltas (Leap's
 *           detector), followed `depth` pages ahead of the last access on it;
 *   near    a few streams, one per recent fault, each a forward window that
 *           doubles whenever the process faults inside it or just past it
 *           (the window was too short), plus a few pages back;
 *   sweep   everything else, from the last fault forward, wrapping.
 *
 * "Settled" means handed out, or asked about and found not remote; the caller
 * promises such a page never needs the policy again (a failed fetch comes back
 * through requeue). A bitmap holds it, and a union-find over 64-page chunks
 * lets the sweep jump over settled chunks, so moving the sweep to each new
 * fault never rescans what is done and the whole run settles each page once.
 */
#define LOG_SUBSYS "prefetch"
#include "rdmig/prefetch.h"
#include "rdmig/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NO_PAGE ((size_t)-1)
/* Addresses (so page numbers and strides) stay below this: stride arithmetic,
 * a few strides either side of a page, cannot overflow int64. */
#define ADDR_LIMIT (1ull << 60)
#define VOTE_WINDOW 8u /* Leap's first detection window; doubled until the history */

struct pf_range {
	int64_t lo, hi; /* page numbers, [lo, hi) */
	size_t first;   /* index of page lo among all pages */
};

/* A sequential stream opened by a fault; streams[0] is the most recent. */
struct pf_stream {
	int64_t pn;        /* its last fault or touch */
	int64_t fwd;       /* next page forward to consider; the window ends at pn + win */
	int64_t bwd;       /* next page backward to consider */
	uint32_t win;      /* 0: slot unused */
	uint32_t bwd_left; /* backward pages still to consider */
};

struct rdmig_prefetch {
	bool (*is_remote)(void *arg, uint64_t addr);
	void *arg;
	unsigned shift, flags;
	unsigned history, depth_init, depth_max;
	unsigned near_forward, near_backward, near_max, nstreams;

	struct pf_range *ranges;
	size_t nr;
	int64_t pn_lo, pn_hi; /* bounds of all ranges */
	size_t npages, nchunks;

	uint64_t *done;       /* settled pages, one bit each */
	uint64_t *pending;    /* handed out, not touched yet: the next touch is a hit */
	uint32_t *next_chunk; /* union-find: first chunk >= i with an unsettled page */
	size_t sweep;         /* page index the sweep looks from */

	int64_t *hist; /* ring of recent accesses (page numbers) */
	unsigned hist_head, hist_n;

	/* Stride: candidates are anchor + k * trend for k = steps .. depth. */
	int64_t trend, anchor, front; /* front == anchor + steps * trend */
	uint32_t steps, depth, win_hits;
	int64_t refine_g;  /* gcd of the steps of faults inside the window */
	unsigned refine_n; /* how many such faults */

	struct pf_stream *streams;
	size_t *retry; /* page indexes given back by requeue */
	size_t retry_n, retry_cap;

	struct rdmig_prefetch_stats st;
};

static size_t pn_to_idx(const struct rdmig_prefetch *p, int64_t pn)
{
	size_t lo = 0, hi = p->nr;

	if (pn < p->pn_lo || pn >= p->pn_hi)
		return NO_PAGE;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->ranges[mid].lo <= pn)
			lo = mid;
		else
			hi = mid;
	}
	if (pn >= p->ranges[lo].hi)
		return NO_PAGE; /* a hole between two ranges */
	return p->ranges[lo].first + (size_t)(pn - p->ranges[lo].lo);
}

static int64_t idx_to_pn(const struct rdmig_prefetch *p, size_t idx)
{
	size_t lo = 0, hi = p->nr;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->ranges[mid].first <= idx)
			lo = mid;
		else
			hi = mid;
	}
	return p->ranges[lo].lo + (int64_t)(idx - p->ranges[lo].first);
}

static size_t addr_to_idx(const struct rdmig_prefetch *p, uint64_t addr, int64_t *pn)
{
	if (addr >= ADDR_LIMIT)
		return NO_PAGE;
	*pn = (int64_t)(addr >> p->shift);
	return pn_to_idx(p, *pn);
}

/* Path halving keeps the union-find walks short; total cost is near-linear. */
static size_t chunk_find(struct rdmig_prefetch *p, size_t c)
{
	while (p->next_chunk[c] != c) {
		p->next_chunk[c] = p->next_chunk[p->next_chunk[c]];
		c = p->next_chunk[c];
	}
	return c;
}

/* Marks a page settled; false if it already was. */
static bool settle(struct rdmig_prefetch *p, size_t idx)
{
	size_t c = idx >> 6;
	uint64_t bit = 1ull << (idx & 63);

	if (p->done[c] & bit)
		return false;
	p->done[c] |= bit;
	p->st.settled++;
	if (p->done[c] == ~0ull)
		p->next_chunk[c] = (uint32_t)(c + 1);
	return true;
}

/* A touch or fault on a page the prefetcher handed out: it was worth fetching. */
static bool take_pending(struct rdmig_prefetch *p, size_t idx)
{
	uint64_t bit = 1ull << (idx & 63);

	if (!(p->pending[idx >> 6] & bit))
		return false;
	p->pending[idx >> 6] &= ~bit;
	p->st.hits++;
	return true;
}

static void hand_out(struct rdmig_prefetch *p, size_t idx, int64_t pn, uint64_t *addrs, int *n)
{
	p->pending[idx >> 6] |= 1ull << (idx & 63);
	p->st.issued++;
	addrs[(*n)++] = (uint64_t)pn << p->shift;
}

/* Settles pn and hands it out if it is still remote. */
static bool offer(struct rdmig_prefetch *p, int64_t pn, uint64_t *addrs, int *n)
{
	size_t idx = pn_to_idx(p, pn);

	if (idx == NO_PAGE || !settle(p, idx))
		return false;
	if (!p->is_remote(p->arg, (uint64_t)pn << p->shift))
		return false;
	hand_out(p, idx, pn, addrs, n);
	return true;
}

/* ---- stride: Leap's majority-vote trend detector ---- */

static void hist_push(struct rdmig_prefetch *p, int64_t pn)
{
	p->hist[p->hist_head] = pn;
	p->hist_head = (p->hist_head + 1) % p->history;
	if (p->hist_n < p->history)
		p->hist_n++;
}

/* Delta j back from the newest access (j = 0: the newest delta). */
static int64_t hist_delta(const struct rdmig_prefetch *p, unsigned j)
{
	unsigned h = p->history;
	unsigned a = (p->hist_head + 2 * h - 1 - j) % h;
	unsigned b = (p->hist_head + 2 * h - 2 - j) % h;

	return p->hist[a] - p->hist[b];
}

static int64_t gcd64(int64_t a, int64_t b)
{
	while (b) {
		int64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/*
 * Without a majority the faults may still all lie on one stride: the pages
 * between them were brought in by the near windows or the sweep, so the
 * process faults only now and then, at varying multiples of its stride (uffd
 * shows no hits). Recent deltas of one sign that share a factor g >= 2 are
 * taken as stride g. (Deltas of 1 are left to the near windows.)
 */
static int64_t common_stride(const struct rdmig_prefetch *p, unsigned w)
{
	int64_t first = hist_delta(p, 0), g = 0;

	if (w < 3)
		return 0;
	for (unsigned j = 0; j < w; j++) {
		int64_t d = hist_delta(p, j);

		if (!d || (d > 0) != (first > 0))
			return 0;
		g = gcd64(g, d > 0 ? d : -d);
	}
	return g < 2 ? 0 : first > 0 ? g : -g;
}

/*
 * Boyer-Moore majority vote over the latest w deltas, w starting small so that a
 * new pattern wins quickly and doubling up to the whole history so that an
 * older, noisier trend is still found. A majority needs more than half the
 * window and at least two votes (one delta is not yet a trend).
 */
static int64_t find_trend(const struct rdmig_prefetch *p)
{
	unsigned nd = p->hist_n ? p->hist_n - 1 : 0;
	unsigned w = nd < VOTE_WINDOW ? nd : VOTE_WINDOW;

	if (nd < 2)
		return 0;
	for (;;) {
		int64_t cand = 0;
		unsigned votes = 0, count = 0;

		for (unsigned j = 0; j < w; j++) {
			int64_t d = hist_delta(p, j);

			if (!votes) {
				cand = d;
				votes = 1;
			} else if (d == cand) {
				votes++;
			} else {
				votes--;
			}
		}
		for (unsigned j = 0; j < w; j++)
			count += hist_delta(p, j) == cand;
		if (cand && count >= 2 && count * 2 > w)
			return cand;
		if (w == nd)
			break;
		w = 2 * w < nd ? 2 * w : nd;
	}
	return common_stride(p, nd < VOTE_WINDOW ? nd : VOTE_WINDOW);
}

static void stride_restart(struct rdmig_prefetch *p, int64_t pn)
{
	p->anchor = pn;
	p->steps = 1;
	p->front = pn + p->trend;
	p->win_hits = 0;
	p->refine_g = 0;
	p->refine_n = 0;
}

/*
 * Faults inside the window that all land a multiple of g steps along it say the
 * real stride is g times the trend: the vote settled on a divisor (say 2 for a
 * stride of 16) and the pages in between are fetched for nothing. Faults that
 * land anywhere in the window bring the gcd to 1 and stop this. Faults at the
 * window's end do not count: at depth d they say d + 1 whatever the stride.
 */
static bool stride_refine(struct rdmig_prefetch *p, int64_t pn, int64_t s)
{
	if (s >= (int64_t)p->steps)
		return false;
	p->refine_g = gcd64(p->refine_g, s);
	if (++p->refine_n < 3 || p->refine_g < 2 ||
	    (p->trend > 0 ? p->trend : -p->trend) > (p->pn_hi - p->pn_lo) / p->refine_g)
		return false;
	pr_debug("trend %lld refined to %lld at page %lld", (long long)p->trend,
	         (long long)(p->trend * p->refine_g), (long long)pn);
	p->trend *= p->refine_g;
	/* the history restarts on the new trend, or the old votes bring it back */
	p->hist_n = 0;
	for (int k = 2; k >= 0; k--)
		hist_push(p, pn - k * p->trend);
	stride_restart(p, pn);
	return true;
}

static uint32_t halve_depth(const struct rdmig_prefetch *p)
{
	return p->depth / 2 > p->depth_init ? p->depth / 2 : p->depth_init;
}

static uint32_t double_depth(const struct rdmig_prefetch *p)
{
	return p->depth * 2 < p->depth_max ? p->depth * 2 : p->depth_max;
}

/*
 * Where pn lies on the current trend: the number of steps from the anchor when it
 * is on the trend within the window or just past it, else 0.
 */
static int64_t trend_steps(const struct rdmig_prefetch *p, int64_t pn)
{
	int64_t off = pn - p->anchor, s;

	if (!p->trend || off % p->trend)
		return 0;
	s = off / p->trend;
	return s >= 1 && s <= (int64_t)p->depth + 1 ? s : 0;
}

static void stride_access(struct rdmig_prefetch *p, int64_t pn, bool fault)
{
	int64_t d, s;

	if (p->flags & RDMIG_PF_NO_STRIDE)
		return;
	if (p->hist_n && p->hist[(p->hist_head + p->history - 1) % p->history] == pn)
		return; /* a repeat says nothing new */
	s = trend_steps(p, pn);
	/*
	 * A fault s steps along the trend means the process walked through the
	 * pages we fetched on it without faulting. Leap sees those accesses (its
	 * hits still go through the fault path); uffd does not, so record them as
	 * if seen, or the deltas between faults would grow with our own depth and
	 * the vote would lose the trend we are following.
	 */
	for (int64_t k = s > p->history ? s - p->history : 1; k < s; k++)
		hist_push(p, p->anchor + k * p->trend);
	hist_push(p, pn);
	d = find_trend(p);
	if (!d) {
		if (p->trend) {
			pr_debug("trend %lld lost at page %lld", (long long)p->trend,
			         (long long)pn);
			p->trend = 0;
			p->depth = halve_depth(p);
		}
		return;
	}
	if (d != p->trend) {
		pr_debug("trend %lld at page %lld", (long long)d, (long long)pn);
		p->trend = d;
		p->depth = halve_depth(p);
		stride_restart(p, pn);
		return;
	}
	if (s) {
		if (fault && stride_refine(p, pn, s))
			return;
		/*
		 * A fault on the trend means the process caught up with the window
		 * (or the pages were late): go deeper. Touches are hits; Leap sizes
		 * its window by the hits since the last prefetch, so double once
		 * half the window has been used.
		 */
		if (fault) {
			p->depth = double_depth(p);
			p->win_hits = 0;
		} else if (++p->win_hits * 2 >= p->depth) {
			p->depth = double_depth(p);
			p->win_hits = 0;
		}
		p->anchor = pn;
		if (s < (int64_t)p->steps) {
			p->steps -= (uint32_t)s;
		} else {
			p->steps = 1;
			p->front = pn + d;
		}
	} else if (fault) {
		/* off the trend: a miss; shrink as Leap does, by half at most */
		p->depth = halve_depth(p);
		stride_restart(p, pn);
	}
}

static void stride_next(struct rdmig_prefetch *p, uint64_t *addrs, int *n, int max)
{
	if (!p->trend)
		return;
	while (*n < max && p->steps <= p->depth) {
		int64_t pn = p->front;

		if (pn < p->pn_lo || pn >= p->pn_hi) {
			p->steps = p->depth + 1; /* ran off the ranges */
			break;
		}
		p->front += p->trend;
		p->steps++;
		if (offer(p, pn, addrs, n))
			p->st.issued_stride++;
	}
}

/* ---- near: windows after recent faults ---- */

static void stream_to_front(struct rdmig_prefetch *p, unsigned i)
{
	struct pf_stream s = p->streams[i];

	memmove(&p->streams[1], &p->streams[0], i * sizeof(s));
	p->streams[0] = s;
}

static void stream_open(struct rdmig_prefetch *p, int64_t pn)
{
	struct pf_stream *s;

	/* the least recent slot goes */
	stream_to_front(p, p->nstreams - 1);
	s = &p->streams[0];
	s->pn = pn;
	s->fwd = pn + 1;
	s->bwd = pn - 1;
	s->win = p->near_forward;
	s->bwd_left = p->near_backward;
}

static void near_access(struct rdmig_prefetch *p, int64_t pn, bool fault)
{
	if (p->flags & RDMIG_PF_NO_NEAR)
		return;
	for (unsigned i = 0; i < p->nstreams; i++) {
		struct pf_stream *s = &p->streams[i];

		if (!s->win)
			break;
		if (pn == s->pn) {
			stream_to_front(p, i);
			return;
		}
		if (s->pn < pn && pn <= s->pn + s->win + 1) {
			/* a fault inside the window or just past it: it was too short */
			if (fault)
				s->win = s->win * 2 < p->near_max ? s->win * 2 : p->near_max;
			s->pn = pn;
			if (s->fwd <= pn)
				s->fwd = pn + 1;
			stream_to_front(p, i);
			return;
		}
	}
	if (fault)
		stream_open(p, pn);
}

static void near_next(struct rdmig_prefetch *p, uint64_t *addrs, int *n, int max)
{
	/* forward windows of all streams before any backward one */
	for (unsigned i = 0; i < p->nstreams && *n < max && p->streams[i].win; i++) {
		struct pf_stream *s = &p->streams[i];

		while (*n < max && s->fwd <= s->pn + s->win) {
			int64_t pn = s->fwd++;

			if (pn >= p->pn_hi) {
				s->fwd = s->pn + s->win + 1;
				break;
			}
			if (offer(p, pn, addrs, n))
				p->st.issued_near++;
		}
	}
	for (unsigned i = 0; i < p->nstreams && *n < max && p->streams[i].win; i++) {
		struct pf_stream *s = &p->streams[i];

		while (*n < max && s->bwd_left) {
			int64_t pn = s->bwd--;

			s->bwd_left--;
			if (pn < p->pn_lo) {
				s->bwd_left = 0;
				break;
			}
			if (offer(p, pn, addrs, n))
				p->st.issued_near++;
		}
	}
}

/* ---- sweep ---- */

/* The first unsettled page at or after the cursor, wrapping. Needs one to exist. */
static size_t sweep_find(struct rdmig_prefetch *p)
{
	size_t idx = p->sweep;

	for (;;) {
		size_t c = idx >> 6;
		uint64_t free = ~p->done[c] & (~0ull << (idx & 63));

		if (free)
			return (c << 6) + (size_t)__builtin_ctzll(free);
		c = chunk_find(p, c + 1);
		if (c == p->nchunks)
			c = chunk_find(p, 0);
		idx = c << 6;
	}
}

static void sweep_next(struct rdmig_prefetch *p, uint64_t *addrs, int *n, int max)
{
	while (*n < max && p->st.settled < p->npages) {
		size_t idx = sweep_find(p);
		int64_t pn = idx_to_pn(p, idx);

		p->sweep = idx;
		settle(p, idx);
		if (p->is_remote(p->arg, (uint64_t)pn << p->shift)) {
			hand_out(p, idx, pn, addrs, n);
			p->st.issued_sweep++;
		}
	}
}

/* ---- the interface ---- */

void rdmig_prefetch_on_fault(struct rdmig_prefetch *p, uint64_t addr)
{
	int64_t pn;
	size_t idx = addr_to_idx(p, addr, &pn);

	if (idx == NO_PAGE) {
		p->st.outside++;
		return;
	}
	p->st.faults++;
	if (take_pending(p, idx))
		p->st.inflight_faults++;
	/* the caller fetches it now, if nobody is already */
	settle(p, idx);
	stride_access(p, pn, true);
	near_access(p, pn, true);
	/* the process is stuck here: the rest of the sweep starts from here */
	p->sweep = idx;
}

void rdmig_prefetch_on_touch(struct rdmig_prefetch *p, uint64_t addr)
{
	int64_t pn;
	size_t idx = addr_to_idx(p, addr, &pn);

	if (idx == NO_PAGE) {
		p->st.outside++;
		return;
	}
	p->st.touches++;
	take_pending(p, idx);
	settle(p, idx);
	stride_access(p, pn, false);
	near_access(p, pn, false);
}

void rdmig_prefetch_hint(struct rdmig_prefetch *p, uint64_t addr)
{
	int64_t pn;
	size_t idx = addr_to_idx(p, addr, &pn);

	if (idx == NO_PAGE) {
		p->st.outside++;
		return;
	}
	if (!(p->flags & RDMIG_PF_NO_NEAR))
		stream_open(p, pn);
	p->sweep = idx;
}

int rdmig_prefetch_next(struct rdmig_prefetch *p, uint64_t *addrs, int max)
{
	int n = 0;

	if (!addrs || max < 0)
		return -EINVAL;
	while (n < max && p->retry_n) {
		size_t idx = p->retry[--p->retry_n];
		int64_t pn = idx_to_pn(p, idx);

		/* pending: requeued twice and already handed out again in this call */
		if (p->pending[idx >> 6] & (1ull << (idx & 63)))
			continue;
		if (p->is_remote(p->arg, (uint64_t)pn << p->shift)) {
			hand_out(p, idx, pn, addrs, &n);
			p->st.issued_retry++;
		}
	}
	stride_next(p, addrs, &n, max);
	near_next(p, addrs, &n, max);
	sweep_next(p, addrs, &n, max);
	return n;
}

int rdmig_prefetch_requeue(struct rdmig_prefetch *p, uint64_t addr)
{
	int64_t pn;
	size_t idx = addr_to_idx(p, addr, &pn);

	if (idx == NO_PAGE)
		return -EINVAL;
	if (p->retry_n == p->retry_cap) {
		size_t cap = p->retry_cap ? 2 * p->retry_cap : 64;
		size_t *r = realloc(p->retry, cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		p->retry = r;
		p->retry_cap = cap;
	}
	/* settled, so the sweep does not find it too: the retry list has it */
	settle(p, idx);
	p->pending[idx >> 6] &= ~(1ull << (idx & 63));
	p->retry[p->retry_n++] = idx;
	p->st.requeued++;
	return 0;
}

bool rdmig_prefetch_done(const struct rdmig_prefetch *p)
{
	return p->st.settled == p->npages && !p->retry_n;
}

void rdmig_prefetch_get_stats(const struct rdmig_prefetch *p, struct rdmig_prefetch_stats *st)
{
	*st = p->st;
	st->trend = p->trend;
	st->depth = p->depth;
}

void rdmig_prefetch_destroy(struct rdmig_prefetch *p)
{
	if (!p)
		return;
	free(p->retry);
	free(p->streams);
	free(p->hist);
	free(p->next_chunk);
	free(p->pending);
	free(p->done);
	free(p->ranges);
	free(p);
}

static unsigned or_default(unsigned v, unsigned def)
{
	return v ? v : def;
}

static int check_cfg(const struct rdmig_prefetch_cfg *c)
{
	uint64_t mask;

	if (!c->is_remote || !c->ranges || !c->nr_ranges) {
		pr_err("no callback or no ranges");
		return -EINVAL;
	}
	if (!c->page_size || (c->page_size & (c->page_size - 1))) {
		pr_err("page size %llu is not a power of two", (unsigned long long)c->page_size);
		return -EINVAL;
	}
	mask = c->page_size - 1;
	for (size_t i = 0; i < c->nr_ranges; i++) {
		const struct rdmig_prefetch_range *r = &c->ranges[i];

		if (r->start >= r->end || (r->start & mask) || (r->end & mask) ||
		    r->end > ADDR_LIMIT || (i && r->start < c->ranges[i - 1].end)) {
			pr_err(
			    "range %zu [%#llx, %#llx) is empty, unaligned, unsorted or overlapping",
			    i, (unsigned long long)r->start, (unsigned long long)r->end);
			return -EINVAL;
		}
	}
	return 0;
}

int rdmig_prefetch_create(const struct rdmig_prefetch_cfg *cfg, struct rdmig_prefetch **out)
{
	struct rdmig_prefetch *p = NULL;
	size_t total = 0;
	int ret;

	if (!cfg || !out)
		return -EINVAL;
	*out = NULL;
	ret = check_cfg(cfg);
	if (ret)
		return ret;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->is_remote = cfg->is_remote;
	p->arg = cfg->arg;
	p->shift = (unsigned)__builtin_ctzll(cfg->page_size);
	p->flags = cfg->flags;
	p->history = or_default(cfg->history, 32);
	p->depth_init = or_default(cfg->depth_init, 8);
	p->depth_max = or_default(cfg->depth_max, 512);
	p->near_forward = or_default(cfg->near_forward, 16);
	p->near_backward = or_default(cfg->near_backward, 4);
	p->near_max = or_default(cfg->near_max, 256);
	p->nstreams = or_default(cfg->streams, 4);
	if (p->history < 4 || p->history > 1024 || p->nstreams > 64 ||
	    p->depth_init > p->depth_max || p->near_forward > p->near_max ||
	    p->depth_max > (1u << 30) || p->near_max > (1u << 30)) {
		pr_err("tuning out of bounds: history %u, depth %u..%u, near %u..%u, streams %u",
		       p->history, p->depth_init, p->depth_max, p->near_forward, p->near_max,
		       p->nstreams);
		ret = -EINVAL;
		goto out_free;
	}
	p->depth = p->depth_init;

	p->nr = cfg->nr_ranges;
	p->ranges = calloc(p->nr, sizeof(*p->ranges));
	if (!p->ranges)
		goto out_nomem;
	for (size_t i = 0; i < p->nr; i++) {
		p->ranges[i].lo = (int64_t)(cfg->ranges[i].start >> p->shift);
		p->ranges[i].hi = (int64_t)(cfg->ranges[i].end >> p->shift);
		p->ranges[i].first = total;
		total += (size_t)(p->ranges[i].hi - p->ranges[i].lo);
	}
	p->pn_lo = p->ranges[0].lo;
	p->pn_hi = p->ranges[p->nr - 1].hi;
	/* chunk numbers are 32-bit */
	if (total > (1ull << 38)) {
		pr_err("%zu pages is more than this policy indexes", total);
		ret = -E2BIG;
		goto out_free;
	}
	p->npages = total;
	p->st.pages = total;
	p->nchunks = (total + 63) / 64;

	p->done = calloc(p->nchunks, sizeof(*p->done));
	p->pending = calloc(p->nchunks, sizeof(*p->pending));
	p->next_chunk = calloc(p->nchunks + 1, sizeof(*p->next_chunk));
	p->hist = calloc(p->history, sizeof(*p->hist));
	p->streams = calloc(p->nstreams, sizeof(*p->streams));
	if (!p->done || !p->pending || !p->next_chunk || !p->hist || !p->streams)
		goto out_nomem;
	for (size_t c = 0; c <= p->nchunks; c++)
		p->next_chunk[c] = (uint32_t)c;
	/* the tail of the last chunk holds no pages: settled from the start, uncounted */
	if (total & 63)
		p->done[p->nchunks - 1] = ~0ull << (total & 63);

	pr_debug("%zu pages in %zu ranges, page size %llu", total, p->nr,
	         (unsigned long long)cfg->page_size);
	*out = p;
	return 0;

out_nomem:
	ret = -ENOMEM;
out_free:
	rdmig_prefetch_destroy(p);
	return ret;
}
