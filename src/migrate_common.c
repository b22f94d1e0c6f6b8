/*
 * Shared by both sides of a migration (src/migrate_common.h).
 */
#define LOG_SUBSYS "migrate"
#include "migrate_common.h"

#include "rdmig/log.h"

#include <errno.h>
#include <malloc.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t rdmig_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int rdmig_expect(struct rdmig_conn *c, uint8_t *buf, uint16_t want, int timeout_ms,
                 struct rdmig_msg *m)
{
	return rdmig_expect_past(c, buf, want, 0, timeout_ms, m);
}

int rdmig_expect_past(struct rdmig_conn *c, uint8_t *buf, uint16_t want, uint16_t skip,
                      int timeout_ms, struct rdmig_msg *m)
{
	int ret;

	for (;;) {
		int len = rdmig_tp_recv(c, buf, RDMIG_MSG_MAX, timeout_ms);

		/* a message of type skip is passed over quietly */
		if (skip && len >= 0 && rdmig_msg_decode(buf, (size_t)len, m) == 0 &&
		    m->type == skip && want != skip)
			continue;
		ret = rdmig_expect_got(buf, len, want, m);
		return ret;
	}
}

int rdmig_expect_got(const uint8_t *buf, int len, uint16_t want, struct rdmig_msg *m)
{
	int ret;

	memset(m, 0, sizeof(*m)); /* type 0: nothing came (callers tell ERROR apart) */
	if (len < 0) {
		pr_err("waiting for %s: %s", rdmig_msg_type_name(want), strerror(-len));
		return len;
	}
	ret = rdmig_msg_decode(buf, (size_t)len, m);
	if (ret < 0) {
		pr_err("waiting for %s, got a malformed message (%s): closing the connection",
		       rdmig_msg_type_name(want), strerror(-ret));
		return ret;
	}
	if (m->type == RDMIG_MSG_ERROR) {
		pr_err("the peer gave up: %s (%s)", m->u.error.text, strerror(m->u.error.code));
		return -m->u.error.code;
	}
	if (m->type != want) {
		pr_err("expected %s, got %s: closing the connection", rdmig_msg_type_name(want),
		       rdmig_msg_type_name(m->type));
		return -EPROTO;
	}
	return 0;
}

void rdmig_send_error(struct rdmig_conn *c, int err, const char *text)
{
	uint8_t buf[RDMIG_HDR_LEN + 4 + RDMIG_ERRTEXT_MAX];
	int n = rdmig_msg_encode_error(buf, sizeof(buf), err ? err : -EIO, text);

	if (n > 0 && rdmig_tp_send(c, buf, (size_t)n) < 0)
		pr_debug("the peer is gone; it did not get our error");
}

int rdmig_send_chunks(struct rdmig_conn *c, uint8_t *msg, uint16_t type, const uint8_t *buf,
                      size_t len)
{
	int ret = 0;

	for (size_t off = 0; off < len && ret >= 0;) {
		uint32_t k = len - off > RDMIG_IMAGE_CHUNK_MAX ? RDMIG_IMAGE_CHUNK_MAX
		                                               : (uint32_t)(len - off);
		int n = rdmig_msg_encode_chunk(msg, RDMIG_MSG_MAX, type, len, off, buf + off, k);

		ret = n < 0 ? n : rdmig_tp_send(c, msg, (size_t)n);
		off += k;
	}
	return ret < 0 ? ret : 0;
}

/* Inside the downtime both sides allocate (the capture's arrays, the image's
 * buffer, the decoder's, the restore's), and the top of the heap had never been
 * touched: a page fault per page, 12-40 us each under this machine's shadow
 * paging, ~100 of them in the source's freeze for a 1 GiB process (a trace of
 * its page faults). glibc is told to serve up to HEAP_MMAP_MAX from the heap and
 * to keep up to HEAP_TRIM_MAX of free top (the daemon may keep that much more
 * memory), then one block is touched page by page and freed: it merges into the
 * top, resident, where later allocations are carved from. Another allocator (a
 * sanitizer's) refuses mallopt: then nothing is done. */
#define HEAP_MMAP_MAX (16u << 20)
#define HEAP_TRIM_MAX (64u << 20)

void rdmig_heap_warm(size_t bytes)
{
	static bool kept, refused;
	volatile uint8_t *p;

	if (refused || bytes > HEAP_MMAP_MAX)
		return;
	if (!kept) {
		if (!mallopt(M_MMAP_THRESHOLD, (int)HEAP_MMAP_MAX) ||
		    !mallopt(M_TRIM_THRESHOLD, (int)HEAP_TRIM_MAX)) {
			refused = true;
			return;
		}
		kept = true;
	}
	p = malloc(bytes);
	if (!p)
		return;
	for (size_t i = 0; i < bytes; i += 4096)
		p[i] = 0;
	free((void *)p);
}

static void *spare_main(void *arg)
{
	struct rdmig_spare *sp = arg;
	void *(*fn)(void *);
	void *fn_arg;

	/* glibc gives a thread its own malloc arena at its first malloc (an mmap,
	 * an mprotect, the faults of its first chunks): now, not in the job */
	{
		void *volatile warm = malloc(1); /* volatile: not elided with the free */

		free(warm);
	}
	pthread_mutex_lock(&sp->mu);
	while (!sp->handed && !sp->quit)
		pthread_cond_wait(&sp->cv, &sp->mu);
	fn = sp->handed ? sp->fn : NULL;
	fn_arg = sp->arg;
	pthread_mutex_unlock(&sp->mu);
	return fn ? fn(fn_arg) : NULL;
}

int rdmig_spare_start(struct rdmig_spare *sp)
{
	int err;

	*sp = (struct rdmig_spare){0};
	pthread_mutex_init(&sp->mu, NULL);
	pthread_cond_init(&sp->cv, NULL);
	err = pthread_create(&sp->th, NULL, spare_main, sp);
	if (err) {
		pthread_cond_destroy(&sp->cv);
		pthread_mutex_destroy(&sp->mu);
		*sp = (struct rdmig_spare){0};
		return -err;
	}
	sp->started = true;
	return 0;
}

int rdmig_spare_spawn(void *arg, pthread_t *th, void *(*fn)(void *), void *fn_arg)
{
	struct rdmig_spare *sp = arg;

	if (!sp || !sp->started || sp->handed)
		return -pthread_create(th, NULL, fn, fn_arg);
	pthread_mutex_lock(&sp->mu);
	sp->fn = fn;
	sp->arg = fn_arg;
	sp->handed = true;
	/* no wait for it to take the job: it reads fn under mu, whenever it runs */
	pthread_cond_signal(&sp->cv);
	pthread_mutex_unlock(&sp->mu);
	*th = sp->th;
	return 0;
}

void rdmig_spare_stop(struct rdmig_spare *sp)
{
	if (!sp->started)
		return;
	if (!sp->handed) {
		pthread_mutex_lock(&sp->mu);
		sp->quit = true;
		pthread_cond_signal(&sp->cv);
		pthread_mutex_unlock(&sp->mu);
		pthread_join(sp->th, NULL);
	}
	pthread_cond_destroy(&sp->cv);
	pthread_mutex_destroy(&sp->mu);
	sp->started = false;
}

int rdmig_recv_soon(struct rdmig_conn *c, uint8_t *buf, size_t cap, int timeout_ms)
{
	static int spin = -1; /* RDMIG_SPIN, read once */
	uint64_t start = rdmig_now_ns();
	int len;

	if (spin < 0) {
		const char *env = getenv("RDMIG_SPIN");

		spin = !(env && !strcmp(env, "off"));
	}
	for (;;) {
		uint64_t spent;

		len = rdmig_tp_recv(c, buf, cap, 0);
		if (len != -EAGAIN || timeout_ms == 0)
			return len;
		spent = rdmig_now_ns() - start;
		if (!spin || spent >= RDMIG_SPIN_NS)
			break;
		if (timeout_ms > 0 && spent >= (uint64_t)timeout_ms * 1000000)
			return -ETIMEDOUT;
		/* the peer may need this CPU to send it: let it in */
		sched_yield();
	}
	if (timeout_ms > 0) {
		uint64_t spent_ms = (rdmig_now_ns() - start) / 1000000;

		timeout_ms = spent_ms >= (uint64_t)timeout_ms ? 1 : timeout_ms - (int)spent_ms;
	}
	return rdmig_tp_recv(c, buf, cap, timeout_ms);
}
