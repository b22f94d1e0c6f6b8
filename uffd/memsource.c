/*
 * The memory page source (memsource.h).
 *
 * Each fetch takes a staging buffer (its index is the request's identity), goes on
 * a FIFO with the time it is due, and the worker copies it from the region and
 * moves it to the done FIFO when due, then signals an eventfd. With a constant
 * delay the FIFO is in due order, so one worker models any number of fetches in
 * flight at once.
 */
#define LOG_SUBSYS "memsrc"
#include "memsource.h"

#include "rdmig/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct ms_region {
	uint64_t addr, end;
	const uint8_t *data;
};

struct ms_req {
	uint64_t addr, ctx, seq, due_ns;
	size_t len;
	int status;
};

struct memsource {
	struct rdmig_page_source base; /* first: the generic handle */
	unsigned staging_n;
	size_t max_fetch;
	bool inline_completion;
	uint8_t *staging; /* staging_n * max_fetch bytes */
	size_t staging_bytes;
	struct ms_req *req; /* one per staging buffer */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t worker;
	bool worker_started, stop;
	int efd;

	/* all below under mu */
	uint32_t *free_slots;
	unsigned nfree;
	uint32_t *pend, *done; /* rings of staging_n entries */
	unsigned pend_head, pend_n, done_head, done_n;
	struct ms_region *regions;
	size_t nregions;
	uint64_t seq;
	uint64_t first[RDMIG_MEMSOURCE_LOGGED]; /* the first fetches' addresses, in order */
	unsigned outstanding;
	enum rdmig_memsource_inject mode;
	uint64_t after;
	int inject_status;
	unsigned delay_us;
};

static struct memsource *to_ms(struct rdmig_page_source *s)
{
	return (struct memsource *)s;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const struct ms_region *find_region(const struct memsource *m, uint64_t addr, size_t len)
{
	for (size_t i = 0; i < m->nregions; i++) {
		const struct ms_region *r = &m->regions[i];

		if (addr >= r->addr && addr < r->end && len <= r->end - addr)
			return r;
	}
	return NULL;
}

/* Decide a due request's fate and fill its staging. Called with mu held; returns
 * false when the request is held forever (stall injection). */
static bool complete_req(struct memsource *m, uint32_t slot)
{
	struct ms_req *q = &m->req[slot];
	const struct ms_region *r;

	if (m->mode == RDMIG_MEMSOURCE_STALL && q->seq >= m->after)
		return false;
	if (m->mode == RDMIG_MEMSOURCE_FAIL && q->seq >= m->after) {
		q->status = m->inject_status ? m->inject_status : -EIO;
		return true;
	}
	r = find_region(m, q->addr, q->len);
	if (!r) {
		q->status = -EFAULT; /* unmapped since the fetch was accepted: cannot happen */
		return true;
	}
	/* The regions are immutable, so the copy could run unlocked; a page is small
	 * enough that it does not matter. */
	memcpy(m->staging + (size_t)slot * m->max_fetch, r->data + (q->addr - r->addr), q->len);
	q->status = 0;
	return true;
}

static void push_done(struct memsource *m, uint32_t slot)
{
	m->done[(m->done_head + m->done_n) % m->staging_n] = slot;
	m->done_n++;
}

static void *worker_main(void *arg)
{
	struct memsource *m = arg;

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		if (!m->pend_n) {
			pthread_cond_wait(&m->cv, &m->mu);
			continue;
		}
		uint32_t slot = m->pend[m->pend_head];
		uint64_t now = mono_ns(), due = m->req[slot].due_ns;

		if (due > now) {
			struct timespec ts = {.tv_sec = (time_t)(due / 1000000000ull),
			                      .tv_nsec = (long)(due % 1000000000ull)};
			pthread_cond_timedwait(&m->cv, &m->mu, &ts);
			continue;
		}
		m->pend_head = (m->pend_head + 1) % m->staging_n;
		m->pend_n--;
		if (!complete_req(m, slot))
			continue; /* held: never answered */
		push_done(m, slot);
		/* Signal once per batch of due requests: only when no further one is due. */
		if (m->pend_n && m->req[m->pend[m->pend_head]].due_ns <= now)
			continue;
		pthread_mutex_unlock(&m->mu);
		uint64_t one = 1;
		ssize_t w = write(m->efd, &one, sizeof(one));
		(void)w; /* an eventfd write fails only on overflow: it is readable then */
		pthread_mutex_lock(&m->mu);
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

static int ms_fetch(struct rdmig_page_source *s, uint64_t addr, size_t len, uint64_t ctx)
{
	struct memsource *m = to_ms(s);
	struct ms_req *q;
	uint32_t slot;
	bool wake;

	if (!len || len > m->max_fetch)
		return -EINVAL;
	pthread_mutex_lock(&m->mu);
	if (!find_region(m, addr, len)) {
		pthread_mutex_unlock(&m->mu);
		pr_err("fetch %#llx+%zu: outside every region", (unsigned long long)addr, len);
		return -EFAULT;
	}
	if (!m->nfree) {
		pthread_mutex_unlock(&m->mu);
		return -EAGAIN;
	}
	slot = m->free_slots[--m->nfree];
	q = &m->req[slot];
	if (m->seq < RDMIG_MEMSOURCE_LOGGED)
		m->first[m->seq] = addr;
	*q = (struct ms_req){.addr = addr, .ctx = ctx, .len = len, .seq = m->seq++};
	m->outstanding++;
	if (m->inline_completion) {
		if (complete_req(m, slot))
			push_done(m, slot);
		pthread_mutex_unlock(&m->mu);
		return 0;
	}
	q->due_ns = mono_ns() + (uint64_t)m->delay_us * 1000u;
	wake = m->pend_n == 0;
	m->pend[(m->pend_head + m->pend_n) % m->staging_n] = slot;
	m->pend_n++;
	pthread_mutex_unlock(&m->mu);
	if (wake)
		pthread_cond_signal(&m->cv);
	return 0;
}

static int ms_poll(struct rdmig_page_source *s, struct rdmig_fetch_done *out, int max)
{
	struct memsource *m = to_ms(s);
	int n = 0;

	if (!m->inline_completion) {
		uint64_t v;
		ssize_t r = read(m->efd, &v, sizeof(v)); /* drain first: no lost wake-up */
		(void)r;
	}
	pthread_mutex_lock(&m->mu);
	while (n < max && m->done_n) {
		uint32_t slot = m->done[m->done_head];
		const struct ms_req *q = &m->req[slot];

		m->done_head = (m->done_head + 1) % m->staging_n;
		m->done_n--;
		out[n++] = (struct rdmig_fetch_done){
		    .ctx = q->ctx,
		    .addr = q->addr,
		    .len = q->len,
		    .status = q->status,
		    .data = m->staging + (size_t)slot * m->max_fetch,
		};
	}
	pthread_mutex_unlock(&m->mu);
	return n;
}

static void ms_release(struct rdmig_page_source *s, const struct rdmig_fetch_done *d)
{
	struct memsource *m = to_ms(s);
	size_t off = (size_t)((const uint8_t *)d->data - m->staging);

	if ((const uint8_t *)d->data < m->staging || off >= m->staging_bytes ||
	    off % m->max_fetch) {
		pr_err("release of foreign data %p", d->data);
		return;
	}
	pthread_mutex_lock(&m->mu);
	m->free_slots[m->nfree++] = (uint32_t)(off / m->max_fetch);
	m->outstanding--;
	pthread_mutex_unlock(&m->mu);
}

static int ms_event_fd(struct rdmig_page_source *s)
{
	return to_ms(s)->efd;
}

static void ms_destroy(struct rdmig_page_source *s)
{
	struct memsource *m = to_ms(s);

	if (!m)
		return;
	if (m->worker_started) {
		pthread_mutex_lock(&m->mu);
		m->stop = true;
		pthread_mutex_unlock(&m->mu);
		pthread_cond_signal(&m->cv);
		pthread_join(m->worker, NULL);
	}
	if (m->efd >= 0)
		close(m->efd);
	if (m->staging)
		munmap(m->staging, m->staging_bytes);
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->mu);
	free(m->req);
	free(m->free_slots);
	free(m->pend);
	free(m->done);
	free(m->regions);
	free(m);
}

static const struct rdmig_page_source_ops memsource_ops = {
    .size = sizeof(struct rdmig_page_source_ops),
    .name = "memory",
    .fetch = ms_fetch,
    .poll = ms_poll,
    .release = ms_release,
    .event_fd = ms_event_fd,
    .destroy = ms_destroy,
};

int rdmig_memsource_create(const struct rdmig_memsource_opts *o, struct rdmig_page_source **out)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	pthread_condattr_t ca;
	struct memsource *m;
	int ret;

	if (o->inline_completion && o->delay_us)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->base.ops = &memsource_ops;
	m->efd = -1;
	m->staging_n = o->staging ? o->staging : 256;
	m->max_fetch = o->max_fetch ? (o->max_fetch + page - 1) / page * page : page;
	m->inline_completion = o->inline_completion;
	m->delay_us = o->delay_us;
	pthread_mutex_init(&m->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&m->cv, &ca);
	pthread_condattr_destroy(&ca);

	m->staging_bytes = (size_t)m->staging_n * m->max_fetch;
	m->staging = mmap(NULL, m->staging_bytes, PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m->staging == MAP_FAILED) {
		m->staging = NULL;
		ret = -ENOMEM;
		goto out_destroy;
	}
	m->req = calloc(m->staging_n, sizeof(*m->req));
	m->free_slots = calloc(m->staging_n, sizeof(*m->free_slots));
	m->pend = calloc(m->staging_n, sizeof(*m->pend));
	m->done = calloc(m->staging_n, sizeof(*m->done));
	if (!m->req || !m->free_slots || !m->pend || !m->done) {
		ret = -ENOMEM;
		goto out_destroy;
	}
	for (unsigned i = 0; i < m->staging_n; i++)
		m->free_slots[m->nfree++] = m->staging_n - 1 - i;
	m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->efd < 0) {
		ret = -errno;
		goto out_destroy;
	}
	if (!m->inline_completion) {
		ret = -pthread_create(&m->worker, NULL, worker_main, m);
		if (ret)
			goto out_destroy;
		m->worker_started = true;
	}
	*out = &m->base;
	return 0;

out_destroy:
	ms_destroy(&m->base);
	return ret;
}

int rdmig_memsource_add_region(struct rdmig_page_source *s, uint64_t addr, const void *data,
                               uint64_t len)
{
	struct memsource *m = to_ms(s);
	struct ms_region *nr;

	if (!len || addr + len < addr)
		return -EINVAL;
	pthread_mutex_lock(&m->mu);
	nr = realloc(m->regions, (m->nregions + 1) * sizeof(*nr));
	if (!nr) {
		pthread_mutex_unlock(&m->mu);
		return -ENOMEM;
	}
	m->regions = nr;
	m->regions[m->nregions++] = (struct ms_region){addr, addr + len, data};
	pthread_mutex_unlock(&m->mu);
	return 0;
}

void rdmig_memsource_inject(struct rdmig_page_source *s, enum rdmig_memsource_inject mode,
                            uint64_t after, int status)
{
	struct memsource *m = to_ms(s);

	pthread_mutex_lock(&m->mu);
	m->mode = mode;
	m->after = after;
	m->inject_status = status;
	pthread_mutex_unlock(&m->mu);
	pthread_cond_signal(&m->cv);
}

void rdmig_memsource_set_delay(struct rdmig_page_source *s, unsigned delay_us)
{
	struct memsource *m = to_ms(s);

	pthread_mutex_lock(&m->mu);
	m->delay_us = delay_us;
	pthread_mutex_unlock(&m->mu);
}

uint64_t rdmig_memsource_fetches(struct rdmig_page_source *s)
{
	struct memsource *m = to_ms(s);
	uint64_t n;

	pthread_mutex_lock(&m->mu);
	n = m->seq;
	pthread_mutex_unlock(&m->mu);
	return n;
}

uint64_t rdmig_memsource_fetched(struct rdmig_page_source *s, unsigned i)
{
	struct memsource *m = to_ms(s);
	uint64_t addr = UINT64_MAX;

	pthread_mutex_lock(&m->mu);
	if (i < RDMIG_MEMSOURCE_LOGGED && i < m->seq)
		addr = m->first[i];
	pthread_mutex_unlock(&m->mu);
	return addr;
}

unsigned rdmig_memsource_outstanding(struct rdmig_page_source *s)
{
	struct memsource *m = to_ms(s);
	unsigned n;

	pthread_mutex_lock(&m->mu);
	n = m->outstanding;
	pthread_mutex_unlock(&m->mu);
	return n;
}
