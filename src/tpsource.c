/*
 * The page source on the transport: the destination's fault loop asks for pages
 * of the target "as they were at the switch", and this file fetches them with
 * one-sided READs from the source's registered mirror.
 *
 * The source side publishes a table of regions (rdmig/proto.h REGIONS: each
 * region's id is the target address its first byte mirrors). A fetch finds its
 * region by binary search, takes a staging slot of a buffer registered on the
 * same connection, and posts a READ whose context is the slot; the completion
 * hands the slot's bytes to the loop, which copies them into place and releases
 * the slot. Many fetches are in flight at once (as many as there are slots and
 * the transport allows). Fetches of neighbouring pages asked for one after the
 * other share one READ (up to a slot): each still completes on its own, and the
 * slot is reused once every one of them is released. Used by one thread, the
 * loop's.
 */
#define LOG_SUBSYS "tpsource"
#include "rdmig/tpsource.h"

#include "rdmig/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

enum slot_state {
	SLOT_FREE = 0, /* on the free stack */
	SLOT_OPEN,     /* gathering contiguous fetches; not posted yet */
	SLOT_POSTED,   /* READ outstanding */
	SLOT_DONE,     /* completion in hand: its fetches are handed to the loop one by
			* one, staging in use until each is released */
};

/* Fetches that follow one another in the source are gathered into one READ of up
 * to a slot (64 KiB): page-sized READs reach about an eighth of the bandwidth of
 * 64 KiB ones here, and the prefetcher asks for runs of neighbours. */
#define MAX_SUB 16
#define DEFAULT_SLOTS 128u
#define DEFAULT_SLOT_SIZE 65536u
/* Slots whose staging is faulted in when it is mapped (staging_map). */
#define PREFAULT_SLOTS 32u

struct slot {
	uint64_t ctx[MAX_SUB]; /* the loop's contexts, one per page-sized fetch */
	uint64_t addr;         /* source address of the first */
	size_t len, sub_len;   /* bytes in all; of each fetch */
	const struct rdmig_region *r;
	int status;
	uint8_t nsub, emitted, released;
	uint8_t state; /* enum slot_state */
};

struct tpsource {
	struct rdmig_page_source base;
	struct rdmig_conn *conn;
	struct rdmig_region *regions; /* sorted by id, non-overlapping */
	uint32_t nregions;
	uint8_t *staging;
	size_t staging_len, slot_size;
	bool own_staging; /* else the caller's (rdmig_tpsource_staging_new) */
	struct rdmig_mr *mr;
	struct slot *slots;
	uint32_t *free_slots; /* a stack of free slot indices */
	uint32_t nslots, nfree;
	uint32_t open;  /* the slot gathering fetches, or NONE */
	uint32_t *emit; /* DONE slots with fetches not yet handed out (FIFO) */
	uint32_t emit_head, emit_n;
	uint64_t fetches, bytes;
	bool retired; /* its connection is gone: nothing more is posted or polled */
};

#define NONE UINT32_MAX

static struct tpsource *to_tps(struct rdmig_page_source *s)
{
	return (struct tpsource *)(void *)s;
}

/* The region holding [addr, addr+len) whole, or NULL. */
static const struct rdmig_region *find_region(const struct tpsource *t, uint64_t addr, size_t len)
{
	uint32_t lo = 0, hi = t->nregions;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (t->regions[mid].id <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const struct rdmig_region *r = &t->regions[lo - 1];
	uint64_t off = addr - r->id;

	if (off >= r->desc.len || len > r->desc.len - off)
		return NULL;
	return r;
}

static void emit_push(struct tpsource *t, uint32_t i)
{
	t->emit[(t->emit_head + t->emit_n++) % t->nslots] = i;
}

/* Post the open slot. -EAGAIN leaves it open (posted at the next poll); any other
 * failure completes its fetches with that status. */
static int post_open(struct tpsource *t)
{
	uint32_t i = t->open;
	struct slot *sl;
	int ret;

	if (i == NONE)
		return 0;
	sl = &t->slots[i];
	ret = rdmig_tp_post_read(t->conn, t->staging + (size_t)i * t->slot_size, t->mr, sl->len,
	                         &sl->r->desc, sl->addr - sl->r->id, i);
	if (ret == -EAGAIN)
		return ret;
	t->open = NONE;
	if (ret < 0) {
		sl->state = SLOT_DONE;
		sl->status = ret;
		emit_push(t, i);
		return ret;
	}
	sl->state = SLOT_POSTED;
	return 0;
}

static int tps_fetch(struct rdmig_page_source *s, uint64_t addr, size_t len, uint64_t ctx)
{
	struct tpsource *t = to_tps(s);
	const struct rdmig_region *r;
	struct slot *o;
	uint32_t i;

	if (len == 0 || len > t->slot_size)
		return -EINVAL;
	if (t->retired)
		return -ENOTCONN;
	r = find_region(t, addr, len);
	if (!r) {
		/* The loop only asks for what it was told is remote: a miss here means
		 * the mirror does not cover the target's map, which must never be
		 * papered over with zeros. */
		pr_err("no mirror region holds [0x%llx, +%zu)", (unsigned long long)addr, len);
		return -EFAULT;
	}
	o = t->open != NONE ? &t->slots[t->open] : NULL;
	if (o && o->r == r && o->addr + o->len == addr && o->sub_len == len && o->nsub < MAX_SUB &&
	    o->len + len <= t->slot_size) {
		o->ctx[o->nsub++] = ctx;
		o->len += len;
		return 0;
	}
	if (o && post_open(t) == -EAGAIN)
		return -EAGAIN; /* the transport is full: the open slot waits for a poll */
	if (!t->nfree)
		return -EAGAIN;
	i = t->free_slots[--t->nfree];
	t->slots[i] = (struct slot){.ctx = {ctx},
	                            .addr = addr,
	                            .len = len,
	                            .sub_len = len,
	                            .r = r,
	                            .nsub = 1,
	                            .state = SLOT_OPEN};
	t->open = i;
	return 0;
}

/* Hand out the fetches of completed slots, in order, up to max. */
static int emit(struct tpsource *t, struct rdmig_fetch_done *out, int max)
{
	int k = 0;

	while (k < max && t->emit_n) {
		uint32_t i = t->emit[t->emit_head];
		struct slot *sl = &t->slots[i];

		while (k < max && sl->emitted < sl->nsub) {
			size_t off = (size_t)sl->emitted * sl->sub_len;

			out[k++] = (struct rdmig_fetch_done){
			    .ctx = sl->ctx[sl->emitted],
			    .addr = sl->addr + off,
			    .len = sl->sub_len,
			    .status = sl->status,
			    .data = t->staging + (size_t)i * t->slot_size + off,
			};
			sl->emitted++;
		}
		if (sl->emitted == sl->nsub) {
			t->emit_head = (t->emit_head + 1) % t->nslots;
			t->emit_n--;
		}
	}
	return k;
}

/* A completion whose context names no outstanding READ (a broken backend, not the
 * peer) is logged and skipped: the others taken in the same batch still go to the
 * loop, which ignores a negative return, so failing the batch would strand their
 * pages in flight for good. */
static int tps_poll(struct rdmig_page_source *s, struct rdmig_fetch_done *out, int max)
{
	struct tpsource *t = to_tps(s);
	struct rdmig_completion comp[64];
	int ret;

	if (t->retired)
		return 0;
	/* what fetch() gathered goes out now: the loop polls right after posting */
	(void)post_open(t);
	for (;;) {
		int n = rdmig_tp_poll(t->conn, comp, 64);

		if (n < 0) {
			int k = emit(t, out, max);

			return k ? k : n;
		}
		for (int j = 0; j < n; j++) {
			uint64_t i = comp[j].ctx;
			struct slot *sl;

			if (i >= t->nslots || t->slots[i].state != SLOT_POSTED) {
				pr_err("completion for slot %llu, which has no READ outstanding: "
				       "dropped",
				       (unsigned long long)i);
				continue;
			}
			sl = &t->slots[i];
			sl->state = SLOT_DONE;
			sl->status = comp[j].status;
			if (comp[j].status == 0) {
				t->bytes += sl->len;
				t->fetches += sl->nsub;
			}
			emit_push(t, (uint32_t)i);
		}
		if (n < 64)
			break;
	}
	ret = emit(t, out, max);
	/* a slot the transport had no room for earlier may fit now */
	(void)post_open(t);
	return ret;
}

static void tps_release(struct rdmig_page_source *s, const struct rdmig_fetch_done *d)
{
	struct tpsource *t = to_tps(s);
	size_t off = (size_t)((const uint8_t *)d->data - t->staging);
	uint32_t i = (uint32_t)(off / t->slot_size);
	struct slot *sl = i < t->nslots ? &t->slots[i] : NULL;

	if (!sl || sl->state != SLOT_DONE || (off % t->slot_size) % sl->sub_len ||
	    sl->released >= sl->emitted) {
		pr_err("release of staging that is not ours, or released twice");
		return;
	}
	if (++sl->released == sl->nsub) {
		sl->state = SLOT_FREE;
		t->free_slots[t->nfree++] = i;
	}
}

static int tps_event_fd(struct rdmig_page_source *s)
{
	return rdmig_tp_event_fd(to_tps(s)->conn);
}

static void tps_destroy(struct rdmig_page_source *s)
{
	struct tpsource *t = to_tps(s);

	if (!t)
		return;
	if (t->mr && rdmig_tp_mr_dereg(t->mr) < 0)
		pr_warn("deregistering the staging buffer failed");
	if (t->own_staging)
		munmap(t->staging, t->staging_len);
	free(t->slots);
	free(t->free_slots);
	free(t->emit);
	free(t->regions);
	free(t);
}

static const struct rdmig_page_source_ops tpsource_ops = {
    .size = sizeof(struct rdmig_page_source_ops),
    .name = "transport",
    .fetch = tps_fetch,
    .poll = tps_poll,
    .release = tps_release,
    .event_fd = tps_event_fd,
    .destroy = tps_destroy,
};

static int cmp_region(const void *a, const void *b)
{
	const struct rdmig_region *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

/* Slots go out lowest first and come back to the top of the free stack, so the
 * first few are all that are ever used (at most 20 of 128 for 1 GiB of random
 * faults here, 9 for a sequential sweep). Their pages are faulted in here, in one
 * call: left to the first fetches, each 4 KiB page of a slot faulted in while
 * the process waited for its first pages after the resume (1.7 ms for its first
 * fetch here). An old kernel without POPULATE_WRITE faults them as before. */
static uint8_t *staging_map(size_t len, size_t slot_size)
{
	size_t pre = (size_t)PREFAULT_SLOTS * slot_size;
	uint8_t *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (b == MAP_FAILED)
		return NULL;
	(void)madvise(b, pre < len ? pre : len, MADV_POPULATE_WRITE);
	return b;
}

void *rdmig_tpsource_staging_new(void)
{
	return staging_map((size_t)DEFAULT_SLOTS * DEFAULT_SLOT_SIZE, DEFAULT_SLOT_SIZE);
}

void rdmig_tpsource_staging_free(void *staging)
{
	if (staging)
		munmap(staging, (size_t)DEFAULT_SLOTS * DEFAULT_SLOT_SIZE);
}

int rdmig_tpsource_create(const struct rdmig_tpsource_opts *o, struct rdmig_page_source **out)
{
	struct tpsource *t;
	int ret;

	*out = NULL;
	if (!o->conn || !o->nregions || o->nregions > RDMIG_REGIONS_MAX)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->base.ops = &tpsource_ops;
	t->conn = o->conn;
	t->nslots = o->slots ? o->slots : DEFAULT_SLOTS;
	t->slot_size = o->slot_size ? o->slot_size : DEFAULT_SLOT_SIZE;
	if (t->nslots > RDMIG_MAX_OUTSTANDING || t->slot_size % 4096 ||
	    t->slot_size > RDMIG_MAX_XFER) {
		ret = -EINVAL;
		goto out_free;
	}
	/* The table comes from the peer: sorted here, then checked for overlap and
	 * wrap-around, so a lookup can never land in the wrong region. */
	t->regions = calloc(o->nregions, sizeof(*t->regions));
	if (!t->regions) {
		ret = -ENOMEM;
		goto out_free;
	}
	memcpy(t->regions, o->regions, o->nregions * sizeof(*t->regions));
	t->nregions = o->nregions;
	qsort(t->regions, t->nregions, sizeof(*t->regions), cmp_region);
	for (uint32_t i = 0; i < t->nregions; i++) {
		const struct rdmig_region *r = &t->regions[i];

		if (!r->desc.len || r->id + r->desc.len < r->id ||
		    (i + 1 < t->nregions && r->id + r->desc.len > t->regions[i + 1].id)) {
			pr_err(
			    "the peer's region table has an empty, wrapping or overlapping entry");
			ret = -EBADMSG;
			goto out_free;
		}
	}
	t->slots = calloc(t->nslots, sizeof(*t->slots));
	t->free_slots = calloc(t->nslots, sizeof(*t->free_slots));
	t->emit = calloc(t->nslots, sizeof(*t->emit));
	t->open = NONE;
	if (!t->slots || !t->free_slots || !t->emit) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (uint32_t i = 0; i < t->nslots; i++)
		t->free_slots[i] = t->nslots - 1 - i;
	t->nfree = t->nslots;
	t->staging_len = (size_t)t->nslots * t->slot_size;
	if (o->staging) {
		if (o->slots || o->slot_size) {
			ret = -EINVAL; /* a made-ahead staging has the default size */
			goto out_free;
		}
		t->staging = o->staging;
	} else {
		t->staging = staging_map(t->staging_len, t->slot_size);
		if (!t->staging) {
			ret = -ENOMEM;
			goto out_free;
		}
		t->own_staging = true;
	}
	ret = rdmig_tp_mr_reg(t->conn, t->staging, t->staging_len, 0, &t->mr);
	if (ret < 0) {
		pr_err("cannot register %zu bytes of staging: %s", t->staging_len, strerror(-ret));
		goto out_free;
	}
	*out = &t->base;
	return 0;
out_free:
	tps_destroy(&t->base);
	return ret;
}

bool rdmig_tpsource_owns(struct rdmig_page_source *s, const void *p)
{
	struct tpsource *t = to_tps(s);
	const uint8_t *b = p;

	return t->staging && b >= t->staging && b < t->staging + t->staging_len;
}

void rdmig_tpsource_retire(struct rdmig_page_source *s)
{
	struct tpsource *t = to_tps(s);

	if (t->mr && rdmig_tp_mr_dereg(t->mr) < 0)
		pr_warn("deregistering the staging buffer failed");
	t->mr = NULL;
	t->retired = true;
	t->open = NONE;
}

void rdmig_tpsource_stats(struct rdmig_page_source *s, uint64_t *fetches, uint64_t *bytes)
{
	struct tpsource *t = to_tps(s);

	*fetches = t->fetches;
	*bytes = t->bytes;
}
