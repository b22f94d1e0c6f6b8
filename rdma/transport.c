/*
 * The wrappers every caller of the transport uses (contract in
 * include/rdmig/transport.h). They pick the backend, check each argument before a
 * backend sees it, run the authentication handshake on every new connection
 * before handing it out, and count live objects so tests can prove nothing leaks.
 */
#define LOG_SUBSYS "transport"
#include "auth.h"
#include "tp_internal.h"

#include "rdmig/inject.h"
#include "rdmig/log.h"
#include "rdmig/proto.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_long live_listeners, live_conns, live_mrs;

static const struct rdmig_transport_ops *const backends[] = {
    &rdmig_fabric_ops,
    &rdmig_verbs_ops,
};

const struct rdmig_transport_ops *rdmig_tp_find(const char *name)
{
	if (!name || !*name)
		name = "fabric";
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
		if (backends[i]->size == sizeof(struct rdmig_transport_ops) &&
		    !strcmp(backends[i]->name, name))
			return backends[i];
	}
	return NULL;
}

static const struct rdmig_transport_ops *find_or_complain(const struct rdmig_tp_opts *o)
{
	const struct rdmig_transport_ops *ops = rdmig_tp_find(o->transport);

	if (!ops)
		pr_err("unknown transport '%s' (known: fabric, verbs)", o->transport);
	return ops;
}

int rdmig_tp_listen(const struct rdmig_tp_opts *o, const char *hostport,
                    struct rdmig_listener **out)
{
	const struct rdmig_transport_ops *ops = find_or_complain(o);
	struct rdmig_listener *l = NULL;
	int ret;

	*out = NULL;
	if (!ops)
		return -EINVAL;
	if (!o->token_file || strlen(o->token_file) >= sizeof(l->token_path)) {
		pr_err("listening needs a token file (--token-file)");
		return -EINVAL;
	}
	ret = ops->listen(o, hostport, &l);
	if (ret < 0)
		return ret;
	l->ops = ops;
	l->opts = *o;
	snprintf(l->token_path, sizeof(l->token_path), "%s", o->token_file);
	l->opts.token_file = l->token_path;
	atomic_fetch_add(&live_listeners, 1);
	*out = l;
	return 0;
}

int rdmig_tp_local_port(struct rdmig_listener *l)
{
	return l->ops->local_port(l);
}

/* How long one wait of accept_next lasts before it looks at its watch again:
 * what a peer that went away costs at most, against a wake-up per slice. */
#define WATCH_SLICE_MS 200

/* The backend's accept, in slices while watch stands (watch NULL: one wait). A
 * slice that ends without a peer consumed nothing: the listener's next event
 * waits for the next slice. */
static int accept_watching(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn *watch,
                           struct rdmig_conn **c)
{
	struct timespec ts;
	uint64_t end = 0;
	int ret;

	if (!watch || timeout_ms == 0)
		return l->ops->accept(l, timeout_ms, c);
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		end = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 +
		      (uint64_t)timeout_ms;
	}
	for (;;) {
		int slice = WATCH_SLICE_MS;

		if (end) {
			uint64_t now;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
			if (now >= end)
				return -ETIMEDOUT;
			if (end - now < (uint64_t)slice)
				slice = (int)(end - now);
		}
		ret = l->ops->accept(l, slice, c);
		if (ret != -ETIMEDOUT)
			return ret;
		ret = rdmig_tp_check(watch);
		if (ret < 0) {
			pr_info("the peer's first connection broke (%s) while its next one was "
			        "awaited",
			        strerror(-ret));
			return ret;
		}
	}
}

static int accept_common(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn *watch,
                         struct rdmig_conn **out)
{
	struct rdmig_conn *c = NULL;
	int ret;

	*out = NULL;
	ret = rdmig_inject_tp("accept");
	if (ret < 0)
		return ret;
	ret = accept_watching(l, timeout_ms, watch, &c);
	if (ret < 0)
		return ret;
	c->ops = l->ops;
	c->live_mrs = 0;
	c->injected = 0;
	atomic_store(&c->serve_until_ns, 0);
	atomic_fetch_add(&live_conns, 1);
	ret = rdmig_handshake(c, &l->opts, RDMIG_ROLE_LISTENER);
	if (ret < 0) {
		pr_warn("peer rejected during the handshake (%s); disconnected it", strerror(-ret));
		rdmig_tp_close(c);
		return ret == -EACCES ? -EACCES : ret;
	}
	*out = c;
	return 0;
}

int rdmig_tp_accept(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn **out)
{
	return accept_common(l, timeout_ms, NULL, out);
}

int rdmig_tp_accept_next(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn *watch,
                         struct rdmig_conn **out)
{
	return accept_common(l, timeout_ms, watch, out);
}

void rdmig_tp_close_listener(struct rdmig_listener *l)
{
	if (!l)
		return;
	l->ops->close_listener(l);
	atomic_fetch_sub(&live_listeners, 1);
}

int rdmig_tp_connect(const struct rdmig_tp_opts *o, const char *hostport, int timeout_ms,
                     struct rdmig_conn **out)
{
	const struct rdmig_transport_ops *ops = find_or_complain(o);
	struct rdmig_conn *c = NULL;
	int ret;

	*out = NULL;
	if (!ops)
		return -EINVAL;
	if (!o->token_file) {
		pr_err("connecting needs a token file (--token-file)");
		return -EINVAL;
	}
	ret = rdmig_inject_tp("connect");
	if (ret < 0)
		return ret;
	ret = ops->connect(o, hostport, timeout_ms, &c);
	if (ret < 0)
		return ret;
	c->ops = ops;
	c->live_mrs = 0;
	c->injected = 0;
	atomic_store(&c->serve_until_ns, 0);
	atomic_fetch_add(&live_conns, 1);
	ret = rdmig_handshake(c, o, RDMIG_ROLE_CONNECTOR);
	if (ret < 0) {
		rdmig_tp_close(c);
		return ret;
	}
	*out = c;
	return 0;
}

void rdmig_tp_close(struct rdmig_conn *c)
{
	if (!c)
		return;
	if (c->live_mrs)
		pr_warn("closing a connection with %ld registrations still live", c->live_mrs);
	c->ops->close(c);
	atomic_fetch_sub(&live_conns, 1);
}

/* The transport decorator of fault injection: the Nth call of op fails, and a
 * failed one-sided operation takes its connection down, as on a real link. */
static int inject(struct rdmig_conn *c, const char *op, int fails_conn)
{
	if (c->injected)
		return -ECONNRESET;
	if (rdmig_inject_tp(op) < 0) {
		c->injected = fails_conn;
		return -EIO;
	}
	return 0;
}

int rdmig_tp_mr_reg(struct rdmig_conn *c, void *addr, size_t len, unsigned access,
                    struct rdmig_mr **out)
{
	struct rdmig_mr *mr = NULL;
	int ret;

	*out = NULL;
	if (!addr || !len || (uintptr_t)addr + len < (uintptr_t)addr ||
	    (access & ~(unsigned)(RDMIG_ACCESS_REMOTE_READ | RDMIG_ACCESS_REMOTE_WRITE)))
		return -EINVAL;
	ret = inject(c, "mr_reg", 0);
	if (ret == 0)
		ret = c->ops->mr_reg(c, addr, len, access, &mr);
	if (ret < 0)
		return ret;
	mr->ops = c->ops;
	mr->conn = c;
	c->live_mrs++;
	atomic_fetch_add(&live_mrs, 1);
	*out = mr;
	return 0;
}

int rdmig_tp_mr_dereg(struct rdmig_mr *mr)
{
	struct rdmig_conn *c;
	int ret;

	if (!mr)
		return 0;
	c = mr->conn;
	ret = mr->ops->mr_dereg(mr);
	/* The registration is gone even when the library complained about it. */
	c->live_mrs--;
	atomic_fetch_sub(&live_mrs, 1);
	return ret;
}

void rdmig_tp_mr_desc(const struct rdmig_mr *mr, struct rdmig_rdesc *out)
{
	mr->ops->mr_desc(mr, out);
}

/* Both ends of an operation inside their regions, no wrap-around. */
static int check_xfer(struct rdmig_conn *c, const void *local, const struct rdmig_mr *lmr,
                      size_t len, const struct rdmig_rdesc *r, uint64_t roff)
{
	uintptr_t l = (uintptr_t)local, base;

	if (!lmr || lmr->conn != c || !r || len == 0 || len > RDMIG_MAX_XFER)
		return -EINVAL;
	base = (uintptr_t)lmr->addr;
	if (l < base || l - base > lmr->len || len > lmr->len - (l - base))
		return -ERANGE;
	if (roff > r->len || len > r->len - roff)
		return -ERANGE;
	return 0;
}

int rdmig_tp_post_read(struct rdmig_conn *c, void *local, struct rdmig_mr *lmr, size_t len,
                       const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	int ret = check_xfer(c, local, lmr, len, r, roff);

	if (ret == 0)
		ret = inject(c, "post_read", 1);
	return ret < 0 ? ret : c->ops->post_read(c, local, lmr, len, r, roff, ctx);
}

int rdmig_tp_post_write(struct rdmig_conn *c, const void *local, struct rdmig_mr *lmr, size_t len,
                        const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	int ret = check_xfer(c, local, lmr, len, r, roff);

	if (ret == 0)
		ret = inject(c, "post_write", 1);
	return ret < 0 ? ret : c->ops->post_write(c, local, lmr, len, r, roff, ctx);
}

int rdmig_tp_poll(struct rdmig_conn *c, struct rdmig_completion *out, int max)
{
	if (max <= 0)
		return -EINVAL;
	return c->ops->poll(c, out, max);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int rdmig_tp_wait(struct rdmig_conn *c, struct rdmig_completion *out, int max, int timeout_ms)
{
	long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct pollfd pfd = {.fd = c->ops->event_fd(c), .events = POLLIN};

	for (;;) {
		int n = rdmig_tp_poll(c, out, max);
		int wait;

		if (n != 0)
			return n;
		if (deadline >= 0) {
			long long left = deadline - now_ms();

			if (left <= 0)
				return 0;
			wait = (int)left;
		} else {
			wait = -1;
		}
		if (poll(&pfd, 1, wait) < 0 && errno != EINTR)
			return -errno;
	}
}

int rdmig_tp_send(struct rdmig_conn *c, const void *msg, size_t len)
{
	int ret;

	if (!msg || len == 0 || len > RDMIG_MSG_MAX)
		return -EINVAL;
	ret = inject(c, "send", 1);
	return ret < 0 ? ret : c->ops->send(c, msg, len);
}

int rdmig_tp_recv(struct rdmig_conn *c, void *buf, size_t cap, int timeout_ms)
{
	int ret;

	if (!buf || cap == 0)
		return -EINVAL;
	/* A wait is counted before it starts; a look (timeout 0) only when it
	 * found something, which is then lost as on a dying link: how often a
	 * side looks depends on timing (rdmig_recv_soon looks until READY or GO
	 * comes), what it waits for and receives does not. */
	if (timeout_ms != 0) {
		ret = inject(c, "recv", 1);
		return ret < 0 ? ret : c->ops->recv(c, buf, cap, timeout_ms);
	}
	if (c->injected)
		return -ECONNRESET;
	ret = c->ops->recv(c, buf, cap, 0);
	if (ret == -EAGAIN)
		return ret;
	return inject(c, "recv", 1) < 0 ? -EIO : ret;
}

int rdmig_tp_event_fd(struct rdmig_conn *c)
{
	return c->ops->event_fd(c);
}

int rdmig_tp_check(struct rdmig_conn *c)
{
	if (c->injected)
		return -ECONNRESET;
	return c->ops->check(c);
}

void rdmig_tp_messages_only(struct rdmig_conn *c)
{
	atomic_store(&c->messages_only, true);
}

void rdmig_tp_serve_soon(struct rdmig_conn *c, int ms)
{
	struct timespec ts;

	if (!c || ms <= 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	atomic_store(&c->serve_until_ns, (uint64_t)ts.tv_sec * 1000000000ull +
	                                     (uint64_t)ts.tv_nsec + (uint64_t)ms * 1000000ull);
	if (c->ops->size > offsetof(struct rdmig_transport_ops, serve_soon) && c->ops->serve_soon)
		c->ops->serve_soon(c);
}

const char *rdmig_tp_name(const struct rdmig_conn *c)
{
	return c->ops->name;
}

void rdmig_tp_counts(struct rdmig_tp_counts *out)
{
	out->listeners = atomic_load(&live_listeners);
	out->conns = atomic_load(&live_conns);
	out->mrs = atomic_load(&live_mrs);
}
