/*
 * The libfabric backend of the transport (include/rdmig/transport.h): FI_EP_MSG
 * endpoints with FI_MSG | FI_RMA, the provider picked at run time from opts->provider
 * ("tcp" by default; "verbs" on an RNIC or soft-RoCE).
 *
 * Flow
 *   listen   fi_getinfo(host, port, FI_SOURCE) -> fabric -> EQ -> passive endpoint ->
 *            fi_listen.
 *   accept   FI_CONNREQ on the listener's EQ -> the connection's own fabric, domain, EQ,
 *            CQ and endpoint (registrations live in a domain, so one per connection keeps
 *            keys and teardown per connection) -> receive ring posted -> fi_accept ->
 *            FI_CONNECTED on the connection's EQ -> progress thread.
 *   connect  fi_getinfo(host, port) -> the same objects -> fi_connect -> FI_CONNECTED ->
 *            progress thread.
 *
 * Progress. The tcp provider moves bytes only while someone calls into it for that
 * endpoint: a peer's READ against our memory is served only then, and the caller may be
 * busy elsewhere for a long time. So every connection has a thread, and two drivers:
 *   - the caller, while it waits for its own ops: poll reaps the CQ itself (spinning
 *     for up to FABRIC_POLL_SPIN_NS), then the caller sleeps on event_fd, an epoll fd
 *     holding our eventfd and the CQ's wait fd, so it wakes on the connection's traffic
 *     with no thread in between. The thread stays parked meanwhile (FABRIC_YIELD_NS).
 *   - the caller, while it waits for a message or a send buffer: recv and send read the
 *     CQ before they wait (fabric_drive; send again every FABRIC_SEND_REDRIVE_NS), and a
 *     blocking recv on a connection of messages only sleeps on event_fd itself. On a
 *     busy host the thread can be off the CPU for milliseconds.
 *   - the thread, otherwise: it reaps into our queues (finished ops into the done ring,
 *     messages into the rx queue) and writes the eventfd; after traffic it keeps polling
 *     for FABRIC_THREAD_SPIN_NS, then sleeps on the CQ's and EQ's wait fds.
 * The spinning is what brings a 4 KiB read near a plain TCP request/response on this
 * 2-core machine: the tcp provider needs about twice TCP's time when both ends sleep
 * (measured 31-46 us against 18-24 us, and 14-19 us when both ends poll). Every
 * FABRIC_TICK_MS the thread also reads the EQ and checks op timeouts.
 *
 * One-sided ops. A post takes one of max_ops op slots; the slot's embedded fi_context2
 * is the libfabric context, so a completion leads straight back to the caller's ctx.
 * The slot stays taken until poll hands its completion out, so the done ring cannot
 * overflow and -EAGAIN from a post always means "poll first".
 *
 * Messages. FABRIC_NRX receive buffers of RDMIG_MSG_MAX stay posted. The thread copies
 * each message out and reposts the buffer at once: with the tcp provider a message that
 * finds no posted buffer stops the byte stream, and every one-sided op queued behind it.
 * Only when FABRIC_RXQ_MAX messages are already waiting does it keep the buffer
 * (unposted) in the queue instead. send copies into one of FABRIC_NTX send buffers.
 *
 * Failure. The connection goes UP -> BROKEN when the peer goes away (CQ errors when the
 * provider flushes, FI_SHUTDOWN on the EQ), when an op errors, when an op sees no word
 * from the peer for op_timeout_ms, or when a message does not fit the caller's buffer.
 * An op the peer refuses (unknown key, out of range) takes the connection with it on
 * both providers: the tcp provider's target drops the socket, so the op fails as
 * -ECONNRESET like every other; an RC QP goes to error on both ends, and verbs reports
 * the op itself as -EREMOTEIO. Breaking shuts the endpoint down first (the tcp provider
 * flushes inside fi_shutdown and stops touching our buffers), then fails every op still
 * in flight, so each outstanding op completes with an error within a tick of the
 * cause.
 *
 * Registrations honour the mr_mode the provider returns: FI_MR_LOCAL (descriptors for
 * local buffers, so the message buffers are registered too), FI_MR_VIRT_ADDR (the
 * published base is the virtual address, else 0 and the peer sends offsets),
 * FI_MR_PROV_KEY (the provider picks keys, else a per-domain counter does),
 * FI_MR_ENDPOINT (bind to the endpoint and enable) and FI_MR_ALLOCATED (callers only
 * register mapped memory).
 *
 * Locking. c->lock guards slots, queues and state. libfabric is called with or without
 * it held: the provider never calls back into us, so the order is always c->lock, then
 * the provider's locks. reap_lock, taken before c->lock, makes each read of the CQ and
 * the queueing of what it read one step, since the thread and a caller both read it.
 * The domain is FI_THREAD_SAFE because the thread reads the CQ while the caller posts.
 *
 * Errors: libfabric's -FI_E* become -errno in fabric_errno(), at this file's border.
 */
#define LOG_SUBSYS "fabric"

#include "tp_internal.h"
#include "rdmig/log.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

/* Nothing newer than the 1.5 semantics (mr_mode bits, provider-owned EQ error data) is
 * used; asking for 1.11 keeps the binary working on distributions that ship 1.11. */
#define FABRIC_API FI_VERSION(1, 11)

#define FABRIC_NRX 8u         /* receive buffers kept posted */
#define FABRIC_NTX 8u         /* send buffers */
#define FABRIC_RXQ_MAX 256u   /* messages copied out before buffers are held instead */
#define FABRIC_TICK_MS 50     /* how often the thread reads the EQ and checks op timeouts */
#define FABRIC_LINGER_MS 1000 /* close waits this long for sends still in the provider */
#define FABRIC_CQ_BATCH 32
#define FABRIC_CM_DATA 256 /* room for connection data after struct fi_eq_cm_entry */

/* A caller that finds nothing in poll while ops are in flight reads the CQ itself for
 * this long before it returns 0 (and the caller sleeps on event_fd): at one op in
 * flight the answer is usually 10-20 us away, and catching it here saves a wakeup. */
#define FABRIC_POLL_SPIN_NS 50000u
/* After traffic the thread keeps polling for this long before it sleeps again: a peer
 * that reads our memory page by page sends its next request within tens of us, and a
 * sleeping thread costs each of them a wakeup (about as much again as the read itself
 * on the tcp provider). */
#define FABRIC_THREAD_SPIN_NS 100000u
/* A send waiting for a send buffer (or for room in the provider's queue) reads the
 * CQ itself this often: the completions that free them need someone to read it. */
#define FABRIC_SEND_REDRIVE_NS 200000u
/* A sched_yield that takes longer than this means the core is contended. */
#define FABRIC_SPIN_PREEMPTED_NS 20000u
/* For this long after a poll that waited for ops, the caller is presumed to be driving
 * the connection (see fabric_caller_drives) and the thread stays parked. */
#define FABRIC_YIELD_NS 2000000u

#define FABRIC_MR_MODES                                                                            \
	(FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

enum fabric_ctx_kind {
	FABRIC_CTX_OP = 1, /* a one-sided op slot */
	FABRIC_CTX_RX,     /* a receive buffer */
	FABRIC_CTX_TX,     /* a send buffer */
};

/* What every libfabric context points at. fi_context2 comes first: providers that ask
 * for FI_CONTEXT/FI_CONTEXT2 own that space while the operation is in flight. */
struct fabric_ctx {
	struct fi_context2 fi;
	uint16_t kind;
	uint16_t idx;
};

enum fabric_op_state {
	FABRIC_OP_FREE,     /* on the free stack */
	FABRIC_OP_INFLIGHT, /* posted; the provider owns it until it completes or we break */
	FABRIC_OP_DONE,     /* status set, on the done ring until poll hands it out */
};

struct fabric_op {
	struct fabric_ctx ctx;
	enum fabric_op_state state;
	int status;
	uint32_t op;
	uint64_t user_ctx;
	uint64_t posted_ns;
};

/* A received message waiting for recv: either copied (buf < 0, data points just past
 * the node) or still in receive buffer buf, which is reposted once recv takes it. */
struct fabric_rxmsg {
	struct fabric_rxmsg *next;
	size_t len;
	int buf;
	unsigned char *data;
};

/*
 * Connection states; every change goes through fabric_set_state_locked().
 *   SETUP   made by connect/accept in the caller's thread; resources open, the peer not
 *           yet connected, no progress thread. Next: UP, or destroyed.
 *   UP      connected; the caller posts and sends, the thread completes. Either thread
 *           may move it to BROKEN.
 *   BROKEN  failed: posts and sends refused with c->err, the endpoint shut down, every op
 *           in flight failed. Queued completions and messages are still handed out.
 *           Only close follows.
 */
enum fabric_state {
	FABRIC_SETUP,
	FABRIC_UP,
	FABRIC_BROKEN,
};

static const char *const fabric_state_names[] = {
    [FABRIC_SETUP] = "setup",
    [FABRIC_UP] = "up",
    [FABRIC_BROKEN] = "broken",
};

struct fabric_listener {
	struct rdmig_listener base;
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_eq *eq;
	struct fid_pep *pep;
	int port;
	char provider[64];
	int op_timeout_ms;
	int handshake_timeout_ms;
};

struct fabric_conn {
	struct rdmig_conn base;

	/* Set up before the thread starts; read-only afterwards unless noted. */
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_eq *eq;
	struct fid_cq *cq;
	struct fid_ep *ep;
	struct fid_mr *buf_mr; /* message buffers, only under FI_MR_LOCAL */
	void *buf_desc;
	unsigned char *bufs; /* FABRIC_NRX receive, then FABRIC_NTX send buffers */
	uint64_t mr_mode;
	bool verbs; /* prov_errno of a CQ error is an ibv_wc_status */
	unsigned max_ops;
	int op_timeout_ms;
	uint64_t next_key; /* caller's thread only */
	int efd;
	int kick_fd; /* eventfd: rdmig_tp_serve_soon wakes the sleeping thread */
	int cq_fd;   /* the CQ's wait fd (FI_WAIT_FD), or -1: the thread sleeps in fi_cq_sread */
	int eq_fd;   /* the EQ's wait fd, or -1: the EQ is only read every tick */
	int epfd;    /* what event_fd returns: efd and cq_fd together, or -1 (then efd) */
	bool thread_spins; /* the provider needs software progress for the peer's ops */
	pthread_t thread;
	bool thread_started;

	atomic_bool stop;
	_Atomic uint64_t caller_seen_ns; /* when poll last waited for ops, or 0 */
	atomic_uint ndone; /* done_len, for a spinning poll to read without the lock */

	pthread_mutex_t lock;
	pthread_mutex_t reap_lock; /* one reader of the CQ at a time: see fabric_reap */
	pthread_cond_t cond;       /* rx queue grew, a send buffer came free, state changed */
	pthread_cond_t park_cond;  /* the caller stopped driving, or close */

	/* Under lock. */
	enum fabric_state state;
	int err; /* what posts, sends and recvs return once BROKEN */
	bool efd_signalled;
	bool thread_parked;
	uint64_t last_heard_ns; /* last completion of any kind: the peer was alive then */
	unsigned inflight;
	unsigned nfree;
	unsigned done_head, done_len;
	unsigned tx_inflight;
	struct fabric_rxmsg *rxq_head, *rxq_tail;
	unsigned rxq_len;
	uint16_t free_ops[RDMIG_MAX_OUTSTANDING];
	uint16_t done[RDMIG_MAX_OUTSTANDING];
	struct fabric_op ops[RDMIG_MAX_OUTSTANDING];
	bool tx_busy[FABRIC_NTX];
	struct fabric_ctx rx_ctx[FABRIC_NRX];
	struct fabric_ctx tx_ctx[FABRIC_NTX];
	struct fabric_rxmsg rx_held[FABRIC_NRX];
};

struct fabric_mr {
	struct rdmig_mr base;
	struct fid_mr *mr;
	struct rdmig_rdesc rdesc;
};

static struct fabric_conn *fabric_conn_of(struct rdmig_conn *bc)
{
	return rdmig_container_of(bc, struct fabric_conn, base);
}

static struct fabric_listener *fabric_listener_of(struct rdmig_listener *bl)
{
	return rdmig_container_of(bl, struct fabric_listener, base);
}

static struct fabric_mr *fabric_mr_of(struct rdmig_mr *bm)
{
	return rdmig_container_of(bm, struct fabric_mr, base);
}

static const struct fabric_mr *fabric_mr_of_const(const struct rdmig_mr *bm)
{
	return rdmig_container_of(bm, const struct fabric_mr, base);
}

/* libfabric returns -FI_E*. Below FI_ERRNO_OFFSET those are errno values by definition
 * (fi_errno.h); above it they are libfabric's own and get the nearest errno. */
static int fabric_errno(ssize_t ret)
{
	int e;

	if (ret >= 0)
		return 0;
	e = ret < -INT_MAX ? FI_EOTHER : (int)-ret;
	if (e < FI_ERRNO_OFFSET)
		return -e;
	switch (e) {
	case FI_ETRUNC:
	case FI_ETOOSMALL:
		return -EMSGSIZE;
	case FI_ENOKEY:
		return -ENOKEY;
	case FI_EBADFLAGS:
		return -EINVAL;
	case FI_EOPBADSTATE:
		return -ENOTCONN;
	case FI_ENORX:
		return -ENOBUFS;
	default:
		return -EIO;
	}
}

static uint64_t fabric_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* timeout_ms < 0: no deadline (0). */
static uint64_t fabric_deadline(int timeout_ms)
{
	return timeout_ms < 0 ? 0 : fabric_now_ns() + (uint64_t)timeout_ms * NS_PER_MS;
}

/* What is left of a deadline in whole ms for libfabric's timeouts: -1 for none, at
 * least 1 while any time is left, 0 once it has passed. */
static int fabric_remaining_ms(uint64_t deadline_ns)
{
	uint64_t now;

	if (!deadline_ns)
		return -1;
	now = fabric_now_ns();
	if (now >= deadline_ns)
		return 0;
	return (int)((deadline_ns - now + NS_PER_MS - 1) / NS_PER_MS);
}

/* Sleep on c->cond until signalled or deadline_ns (0: none). c->lock held. -ETIMEDOUT
 * once the deadline has passed; callers re-check their condition either way. */
static int fabric_cond_wait(struct fabric_conn *c, uint64_t deadline_ns)
{
	struct timespec ts;

	if (!deadline_ns) {
		pthread_cond_wait(&c->cond, &c->lock);
		return 0;
	}
	if (fabric_now_ns() >= deadline_ns)
		return -ETIMEDOUT;
	ts.tv_sec = (time_t)(deadline_ns / NS_PER_S);
	ts.tv_nsec = (long)(deadline_ns % NS_PER_S);
	return pthread_cond_timedwait(&c->cond, &c->lock, &ts) == ETIMEDOUT ? -ETIMEDOUT : 0;
}

/* Wake whoever waits: recv/send on the condition, the caller's event loop on the
 * eventfd. The eventfd is written only when not already readable, so a busy connection
 * costs one write per batch the caller drains, not one per completion. c->lock held. */
static void fabric_signal_locked(struct fabric_conn *c)
{
	uint64_t one = 1;

	pthread_cond_broadcast(&c->cond);
	if (c->efd_signalled)
		return;
	if (write(c->efd, &one, sizeof(one)) == (ssize_t)sizeof(one))
		c->efd_signalled = true;
}

/* Make the eventfd quiet again once both queues are empty. Checked under the same lock
 * the producers push under, so an item queued after this re-signals and no wakeup is
 * lost; with either queue non-empty the fd stays readable for the other consumer.
 * c->lock held. */
static void fabric_rearm_locked(struct fabric_conn *c)
{
	uint64_t v;

	if (!c->efd_signalled || c->done_len || c->rxq_head)
		return;
	if (read(c->efd, &v, sizeof(v)) == (ssize_t)sizeof(v) || errno == EAGAIN)
		c->efd_signalled = false;
}

static bool fabric_set_state_locked(struct fabric_conn *c, enum fabric_state from,
                                    enum fabric_state to, const char *why)
{
	if (c->state != from)
		return false;
	if (to == FABRIC_BROKEN)
		pr_info("conn %p: %s -> %s: %s", (void *)c, fabric_state_names[from],
		        fabric_state_names[to], why);
	else
		pr_debug("conn %p: %s -> %s: %s", (void *)c, fabric_state_names[from],
		         fabric_state_names[to], why);
	c->state = to;
	return true;
}

/* Move an in-flight op to the done ring with its status. c->lock held. */
static void fabric_op_finish_locked(struct fabric_conn *c, struct fabric_op *op, int status)
{
	op->status = status;
	op->state = FABRIC_OP_DONE;
	c->done[(c->done_head + c->done_len) % RDMIG_MAX_OUTSTANDING] = op->ctx.idx;
	c->done_len++;
	atomic_store_explicit(&c->ndone, c->done_len, memory_order_relaxed);
	c->inflight--;
}

/*
 * UP -> BROKEN. The endpoint is shut down before the in-flight ops are failed: the tcp
 * provider flushes its queues inside fi_shutdown, so once the caller sees an op fail the
 * provider no longer writes into that op's buffer. Late completions for the failed slots
 * are ignored (the slots are DONE, and a BROKEN connection never reuses a slot for a
 * new post). c->lock held.
 */
static void fabric_break_locked(struct fabric_conn *c, int err, int op_status, const char *why)
{
	ssize_t ret;
	unsigned i;

	if (!fabric_set_state_locked(c, FABRIC_UP, FABRIC_BROKEN, why))
		return;
	c->err = err;
	ret = fi_shutdown(c->ep, 0);
	if (ret && ret != -FI_ENOTCONN)
		pr_debug("fi_shutdown: %s", fi_strerror((int)-ret));
	for (i = 0; i < c->max_ops; i++)
		if (c->ops[i].state == FABRIC_OP_INFLIGHT)
			fabric_op_finish_locked(c, &c->ops[i], op_status);
	fabric_signal_locked(c);
}

static int fabric_post_recv_locked(struct fabric_conn *c, unsigned idx)
{
	ssize_t ret;

	ret = fi_recv(c->ep, c->bufs + (size_t)idx * RDMIG_MSG_MAX, RDMIG_MSG_MAX, c->buf_desc,
	              FI_ADDR_UNSPEC, &c->rx_ctx[idx].fi);
	if (ret) {
		pr_err("fi_recv: %s", fi_strerror((int)-ret));
		return fabric_errno(ret);
	}
	return 0;
}

/* A message landed in receive buffer idx: queue it for recv. c->lock held. */
static void fabric_rx_arrived_locked(struct fabric_conn *c, unsigned idx, size_t len)
{
	unsigned char *src = c->bufs + (size_t)idx * RDMIG_MSG_MAX;
	struct fabric_rxmsg *m = NULL;

	if (c->rxq_len < FABRIC_RXQ_MAX)
		m = malloc(sizeof(*m) + len);
	if (m) {
		m->buf = -1;
		m->data = (unsigned char *)(m + 1);
		memcpy(m->data, src, len);
		if (c->state == FABRIC_UP && fabric_post_recv_locked(c, idx))
			fabric_break_locked(c, -ECONNRESET, -ECONNRESET, "cannot repost a receive");
	} else {
		m = &c->rx_held[idx];
		m->buf = (int)idx;
		m->data = src;
	}
	m->len = len;
	m->next = NULL;
	if (c->rxq_tail)
		c->rxq_tail->next = m;
	else
		c->rxq_head = m;
	c->rxq_tail = m;
	c->rxq_len++;
}

/* recv is done with m: free the copy, or give its buffer back to the provider. */
static void fabric_rxmsg_release_locked(struct fabric_conn *c, struct fabric_rxmsg *m)
{
	if (m->buf < 0) {
		free(m);
		return;
	}
	if (c->state == FABRIC_UP && fabric_post_recv_locked(c, (unsigned)m->buf))
		fabric_break_locked(c, -ECONNRESET, -ECONNRESET, "cannot repost a receive");
}

/* Turn successful CQ entries into our queues. Either thread may call this; when the
 * caller reaps inside poll (by_caller), finished ops go out in that same call, so only
 * messages need the eventfd. */
static void fabric_complete(struct fabric_conn *c, const struct fi_cq_msg_entry *ent, size_t n,
                            bool by_caller)
{
	bool wake = false;
	size_t i;

	pthread_mutex_lock(&c->lock);
	c->last_heard_ns = fabric_now_ns();
	for (i = 0; i < n; i++) {
		const struct fabric_ctx *x = ent[i].op_context;

		if (!x)
			continue;
		switch (x->kind) {
		case FABRIC_CTX_OP:
			if (c->ops[x->idx].state == FABRIC_OP_INFLIGHT) {
				fabric_op_finish_locked(c, &c->ops[x->idx], 0);
				wake |= !by_caller;
			}
			break;
		case FABRIC_CTX_RX:
			fabric_rx_arrived_locked(c, x->idx, ent[i].len);
			wake = true;
			break;
		case FABRIC_CTX_TX:
			c->tx_busy[x->idx] = false;
			c->tx_inflight--;
			pthread_cond_broadcast(&c->cond);
			break;
		default:
			break;
		}
	}
	if (wake)
		fabric_signal_locked(c);
	pthread_mutex_unlock(&c->lock);
}

/* The first error that made a verbs op fail: the work completion status tells a
 * refusal by the peer from a peer that is gone. */
static int fabric_verbs_status(int wc_status)
{
	switch (wc_status) {
	case IBV_WC_REM_ACCESS_ERR:
	case IBV_WC_REM_INV_REQ_ERR:
	case IBV_WC_REM_OP_ERR:
		return -EREMOTEIO;
	case IBV_WC_LOC_PROT_ERR:
	case IBV_WC_LOC_LEN_ERR:
	case IBV_WC_LOC_QP_OP_ERR:
	case IBV_WC_MW_BIND_ERR:
		return -EIO;
	default: /* flush, retry exceeded, RNR retry exceeded, fatal */
		return -ECONNRESET;
	}
}

/* Map a failed one-sided op. The tcp provider answers an access it refuses (unknown
 * key, out of range, no permission) by dropping the connection, so there every op fails
 * FI_ECANCELED; FI_EIO/FI_EACCES/FI_EINVAL are what providers that do report refusals
 * per op use. */
static int fabric_op_status(const struct fabric_conn *c, const struct fi_cq_err_entry *e)
{
	switch (e->err) {
	case FI_EIO:
		return c->verbs ? fabric_verbs_status(e->prov_errno) : -EREMOTEIO;
	case FI_EACCES:
	case FI_EPERM:
	case FI_EINVAL:
	case FI_ENOKEY:
	case FI_EREMOTEIO:
	case FI_EFAULT:
		return -EREMOTEIO;
	case FI_ETIMEDOUT:
		return -ETIMEDOUT;
	default: /* FI_ECANCELED (flushed), FI_ECONNRESET, FI_ENOTCONN, FI_EPIPE, ... */
		return -ECONNRESET;
	}
}

/* Read one CQ error entry and act on it. Either thread may call this; when both saw
 * -FI_EAVAIL only one gets the entry. */
static void fabric_complete_error(struct fabric_conn *c)
{
	struct fi_cq_err_entry e;
	const struct fabric_ctx *x;
	ssize_t ret;

	memset(&e, 0, sizeof(e));
	ret = fi_cq_readerr(c->cq, &e, 0);
	if (ret != 1)
		return;
	x = e.op_context;

	pthread_mutex_lock(&c->lock);
	if (c->state == FABRIC_UP)
		pr_debug("completion error: %s (prov_errno %d), kind %d", fi_strerror(e.err),
		         e.prov_errno, x ? x->kind : 0);
	if (x && x->kind == FABRIC_CTX_OP) {
		struct fabric_op *op = &c->ops[x->idx];

		if (op->state == FABRIC_OP_INFLIGHT)
			fabric_op_finish_locked(c, op, fabric_op_status(c, &e));
		fabric_break_locked(c, -ECONNRESET, -ECONNRESET, "a one-sided op failed");
	} else if (x && x->kind == FABRIC_CTX_TX) {
		c->tx_busy[x->idx] = false;
		c->tx_inflight--;
		fabric_break_locked(c, -ECONNRESET, -ECONNRESET, "a send failed");
	} else {
		/* A receive fails only when the provider flushes it (peer gone) or a message
		 * was larger than RDMIG_MSG_MAX. */
		fabric_break_locked(c, -ECONNRESET, -ECONNRESET,
		                    e.err == FI_ECANCELED ? "peer gone" : "a receive failed");
	}
	fabric_signal_locked(c);
	pthread_mutex_unlock(&c->lock);
}

/* Read the CQ once without sleeping. Returns whether anything was read. The thread
 * and a caller may both read it: reap_lock keeps each read and the queueing of what
 * it read together, or two readers could queue two messages in the wrong order.
 * Without c->lock (taken after reap_lock). */
static bool fabric_reap(struct fabric_conn *c, bool by_caller)
{
	struct fi_cq_msg_entry ent[FABRIC_CQ_BATCH];
	bool got = true;
	ssize_t n;

	pthread_mutex_lock(&c->reap_lock);
	n = fi_cq_read(c->cq, ent, FABRIC_CQ_BATCH);
	if (n > 0)
		fabric_complete(c, ent, (size_t)n, by_caller);
	else if (n == -FI_EAVAIL)
		fabric_complete_error(c);
	else
		got = false;
	pthread_mutex_unlock(&c->reap_lock);
	return got;
}

/* A caller about to wait for a message or a send buffer reads the CQ itself first
 * (a few batches): the thread may be off the CPU for milliseconds on a busy host,
 * and a wait that only it can end lasts as long (seen: a send waiting 4.2 ms for
 * a send buffer whose completion sat in the CQ while the migration's threads and
 * the process it serves shared two CPUs). Without c->lock; wakes every waiter. */
static void fabric_drive(struct fabric_conn *c)
{
	/* without a wait fd the thread reads the CQ while it sleeps (fabric_sleep),
	 * outside reap_lock: left to it, as before */
	for (int i = 0; c->cq_fd >= 0 && i < 4 && fabric_reap(c, false); i++)
		;
}

/* fabric_drive from under c->lock (dropped meanwhile: reap_lock comes first). */
static void fabric_drive_locked(struct fabric_conn *c)
{
	pthread_mutex_unlock(&c->lock);
	fabric_drive(c);
	pthread_mutex_lock(&c->lock);
}

/* Arm the provider's wait fd before a caller of recv sleeps on event_fd (its own
 * loop's, or ours below), as poll does: a few tries, reaping what makes it refuse
 * (whatever that brings wakes event_fd: by_caller false). Without c->lock. */
static void fabric_arm(struct fabric_conn *c)
{
	struct fid *fid = &c->cq->fid;

	for (int tries = 0; c->cq_fd >= 0 && tries < 4; tries++) {
		if (fi_trywait(c->fabric, &fid, 1) != -FI_EAGAIN)
			break;
		(void)fabric_reap(c, false);
	}
}

/* The thread's slow duties: EQ events and op timeouts. */
static void fabric_housekeeping(struct fabric_conn *c, uint64_t now)
{
	union {
		struct fi_eq_cm_entry cm;
		unsigned char raw[sizeof(struct fi_eq_cm_entry) + FABRIC_CM_DATA];
	} ev;
	uint32_t event;
	ssize_t n;

	while ((n = fi_eq_read(c->eq, &event, &ev, sizeof(ev), 0)) != -FI_EAGAIN) {
		/* Completions that came before the disconnect carry the precise status of
		 * the op that caused it (verbs: the peer's refusal, then its DREQ). */
		for (int i = 0; i < 8 && fabric_reap(c, false); i++)
			;
		if (n == -FI_EAVAIL) {
			struct fi_eq_err_entry e;

			memset(&e, 0, sizeof(e));
			(void)fi_eq_readerr(c->eq, &e, 0);
			pthread_mutex_lock(&c->lock);
			fabric_break_locked(c, -ECONNRESET, -ECONNRESET,
			                    "connection error on the event queue");
			pthread_mutex_unlock(&c->lock);
		} else if (n < 0) {
			pr_warn("fi_eq_read: %s", fi_strerror((int)-n));
			break;
		} else if (event == FI_SHUTDOWN) {
			pthread_mutex_lock(&c->lock);
			fabric_break_locked(c, -ECONNRESET, -ECONNRESET, "peer disconnected");
			pthread_mutex_unlock(&c->lock);
		}
	}

	pthread_mutex_lock(&c->lock);
	if (c->state == FABRIC_UP && c->inflight) {
		uint64_t quiet_since = UINT64_MAX;
		unsigned i;

		for (i = 0; i < c->max_ops; i++)
			if (c->ops[i].state == FABRIC_OP_INFLIGHT &&
			    c->ops[i].posted_ns < quiet_since)
				quiet_since = c->ops[i].posted_ns;
		if (c->last_heard_ns > quiet_since)
			quiet_since = c->last_heard_ns;
		if (now > quiet_since && now - quiet_since > (uint64_t)c->op_timeout_ms * NS_PER_MS)
			fabric_break_locked(c, -ETIMEDOUT, -ETIMEDOUT,
			                    "no word from the peer within op_timeout_ms");
	}
	pthread_mutex_unlock(&c->lock);
}

/*
 * One turn of a spin loop. The spinners (the thread, the caller in poll, the peer's)
 * share two cores with everything else. Without the yield, one that lands on the core
 * its peer needs holds it for a whole slice (p50 150-180 us measured against about
 * 20 us with it). And when the yield comes back late, something else wanted the core
 * (another process's work): then spinning only delays us, because a thread that sleeps
 * is let in ahead of such work when it wakes, and a spinner is not. Returns whether to
 * keep spinning.
 */
static bool fabric_spin_yield(void)
{
	uint64_t t = fabric_now_ns();

	sched_yield();
	return fabric_now_ns() - t < FABRIC_SPIN_PREEMPTED_NS;
}

/*
 * Who drives the connection. While the caller waits for its own ops it does: poll
 * reaps the CQ itself, spinning for up to FABRIC_POLL_SPIN_NS, and the caller then
 * sleeps on event_fd, which contains the CQ's wait fd and so wakes on the connection's
 * traffic directly. For FABRIC_YIELD_NS after such a poll the thread stays parked
 * instead of waking on the same socket and competing for the same two cores. The rest
 * of the time the thread drives. Returns until when the caller drives, or 0.
 */
static uint64_t fabric_caller_drives(struct fabric_conn *c, uint64_t now)
{
	uint64_t w = atomic_load(&c->caller_seen_ns);

	/* w can be a little ahead of now: the caller stamped it after our clock read */
	return w && (now < w || now - w < FABRIC_YIELD_NS) ? w + FABRIC_YIELD_NS : 0;
}

static void fabric_park(struct fabric_conn *c, uint64_t until)
{
	struct timespec ts = {.tv_sec = (time_t)(until / NS_PER_S),
	                      .tv_nsec = (long)(until % NS_PER_S)};

	pthread_mutex_lock(&c->lock);
	c->thread_parked = true;
	while (fabric_caller_drives(c, fabric_now_ns()) && !atomic_load(&c->stop))
		if (pthread_cond_timedwait(&c->park_cond, &c->lock, &ts) == ETIMEDOUT)
			break;
	c->thread_parked = false;
	pthread_mutex_unlock(&c->lock);
}

/* The caller is about to block where the connection's traffic does not wake it (recv,
 * send): the thread must drive from now on. c->lock held. */
static void fabric_unpark_locked(struct fabric_conn *c)
{
	atomic_store(&c->caller_seen_ns, 0);
	if (c->thread_parked)
		pthread_cond_signal(&c->park_cond);
}

/* Is there traffic on the CQ's wait fd right now? Used while spinning: the tcp provider
 * serves a peer's READ without any completion here, so the fd is the only sign of it. */
static bool fabric_peek(struct fabric_conn *c)
{
	struct pollfd p = {.fd = c->cq_fd, .events = POLLIN};

	return poll(&p, 1, 0) > 0;
}

/* Block until the provider has something or FABRIC_TICK_MS passes. Returns whether
 * the CQ side woke us (traffic); *eq_ready: the EQ has an event. */
static bool fabric_sleep(struct fabric_conn *c, bool *eq_ready)
{
	struct fid *fids[2] = {&c->cq->fid, &c->eq->fid};
	struct pollfd p[3] = {{.fd = c->cq_fd, .events = POLLIN},
	                      {.fd = c->kick_fd, .events = POLLIN},
	                      {.fd = c->eq_fd, .events = POLLIN}};
	int nfds = c->eq_fd >= 0 ? 3 : 2, nfids = c->eq_fd >= 0 ? 2 : 1;
	int ret;

	if (c->cq_fd < 0) {
		/* No wait fd from this provider: let it sleep for us. */
		struct fi_cq_msg_entry ent[FABRIC_CQ_BATCH];
		ssize_t n = fi_cq_sread(c->cq, ent, FABRIC_CQ_BATCH, NULL, FABRIC_TICK_MS);

		/* Not under reap_lock (a poll would wait for this sleep): recv and send
		 * leave such a CQ to the thread (fabric_drive), so no message is read
		 * here and by a caller at once. */
		if (n > 0)
			fabric_complete(c, ent, (size_t)n, false);
		else if (n == -FI_EAVAIL)
			fabric_complete_error(c);
		return n > 0 || n == -FI_EAVAIL;
	}
	/* Arms the wait objects, or says something is already there. */
	ret = fi_trywait(c->fabric, fids, nfids);
	if (ret == -FI_EAGAIN)
		return true;
	if (ret) {
		struct timespec tick = {.tv_nsec = FABRIC_TICK_MS * (long)NS_PER_MS};

		pr_warn("fi_trywait: %s", fi_strerror(-ret));
		nanosleep(&tick, NULL);
		return false;
	}
	if (poll(p, (nfds_t)nfds, FABRIC_TICK_MS) <= 0)
		return false;
	*eq_ready = nfds > 2 && p[2].revents;
	if (p[1].revents) {
		uint64_t v;

		/* rdmig_tp_serve_soon: the loop looks at the deadline again */
		if (read(c->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			pr_debug("reading the kick eventfd: %s", strerror(errno));
		return true;
	}
	return p[0].revents != 0;
}

static void fabric_serve_soon(struct rdmig_conn *bc)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	uint64_t one = 1;

	if (write(c->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_debug("writing the kick eventfd: %s", strerror(errno));
}

/* The progress thread: park while the caller drives; otherwise reap, keep polling for
 * FABRIC_THREAD_SPIN_NS after traffic, and sleep on the provider's wait fds. */
static void *fabric_progress_main(void *arg)
{
	struct fabric_conn *c = arg;
	uint64_t next_tick = 0, spin_until = 0, now, until, serve_until;
	bool eq_ready = false, spins;

	while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
		now = fabric_now_ns();
		/* Timeouts and the EQ are the thread's job also while the caller drives: a
		 * caller polling in a loop must still see its ops fail. */
		if (eq_ready || now >= next_tick) {
			fabric_housekeeping(c, now);
			next_tick = now + (uint64_t)FABRIC_TICK_MS * NS_PER_MS;
			eq_ready = false;
		}
		until = fabric_caller_drives(c, now);
		if (until) {
			fabric_park(c, until < next_tick ? until : next_tick);
			continue;
		}
		/* a connection of messages only has no peer op to serve between our
		 * calls: a wake-up per message is cheaper than a CPU spinning */
		spins = c->thread_spins && !atomic_load(&c->base.messages_only);
		if (fabric_reap(c, false) && spins)
			spin_until = now + FABRIC_THREAD_SPIN_NS;
		/* rdmig_tp_serve_soon: the peer's operations are due, poll till then */
		serve_until = atomic_load(&c->base.serve_until_ns);
		if (c->thread_spins && now < serve_until && spin_until < serve_until)
			spin_until = serve_until;
		if (now < spin_until) {
			if (fabric_peek(c) && spin_until < now + FABRIC_THREAD_SPIN_NS)
				spin_until = now + FABRIC_THREAD_SPIN_NS;
			if (!fabric_spin_yield()) {
				/* the CPU is wanted elsewhere: sleep, and forget the hint */
				spin_until = 0;
				atomic_compare_exchange_strong(&c->base.serve_until_ns,
				                               &serve_until, 0);
			}
			continue;
		}
		if (fabric_sleep(c, &eq_ready) && spins)
			spin_until = fabric_now_ns() + FABRIC_THREAD_SPIN_NS;
	}
	return NULL;
}

/*
 * The verbs provider caches registrations: fi_close on a cached MR keeps the rkey
 * valid, and the peer could go on reading memory we deregistered (seen on rxe). The
 * cache is configured only from the environment, read once when libfabric initialises,
 * so it is turned off before our first call into libfabric. Registrations here are few
 * and long-lived; the cache would buy nothing.
 */
static pthread_once_t fabric_env_once = PTHREAD_ONCE_INIT;

static void fabric_env_init(void)
{
	if (setenv("FI_MR_CACHE_MAX_COUNT", "0", 1))
		pr_warn("cannot disable libfabric's registration cache: %s", strerror(errno));
}

static struct fi_info *fabric_hints(const char *provider)
{
	struct fi_info *h;

	pthread_once(&fabric_env_once, fabric_env_init);
	h = fi_allocinfo();
	if (!h)
		return NULL;
	h->caps = FI_MSG | FI_RMA;
	h->mode = FI_CONTEXT | FI_CONTEXT2; /* every context we pass has the room */
	h->ep_attr->type = FI_EP_MSG;
	h->domain_attr->mr_mode = FABRIC_MR_MODES;
	h->domain_attr->threading = FI_THREAD_SAFE;
	h->tx_attr->size = RDMIG_MAX_OUTSTANDING + FABRIC_NTX;
	h->fabric_attr->prov_name = strdup(provider && *provider ? provider : "tcp");
	if (!h->fabric_attr->prov_name) {
		fi_freeinfo(h);
		return NULL;
	}
	return h;
}

static struct fabric_conn *fabric_conn_alloc(int op_timeout_ms)
{
	struct fabric_conn *c = calloc(1, sizeof(*c));
	pthread_condattr_t ca;
	unsigned i;

	if (!c)
		return NULL;
	c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	c->kick_fd = c->efd < 0 ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->kick_fd < 0) {
		pr_err("eventfd: %s", strerror(errno));
		if (c->efd >= 0)
			close(c->efd);
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->reap_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_cond_init(&c->park_cond, &ca);
	pthread_condattr_destroy(&ca);
	c->cq_fd = -1;
	c->eq_fd = -1;
	c->epfd = -1;
	c->state = FABRIC_SETUP;
	c->err = -ENOTCONN;
	c->op_timeout_ms = op_timeout_ms;
	c->next_key = 1;
	for (i = 0; i < RDMIG_MAX_OUTSTANDING; i++) {
		c->ops[i].ctx.kind = FABRIC_CTX_OP;
		c->ops[i].ctx.idx = (uint16_t)i;
	}
	for (i = 0; i < FABRIC_NRX; i++) {
		c->rx_ctx[i].kind = FABRIC_CTX_RX;
		c->rx_ctx[i].idx = (uint16_t)i;
	}
	for (i = 0; i < FABRIC_NTX; i++) {
		c->tx_ctx[i].kind = FABRIC_CTX_TX;
		c->tx_ctx[i].idx = (uint16_t)i;
	}
	return c;
}

static void fabric_close_fid(struct fid *fid, const char *what)
{
	int ret = fi_close(fid);

	if (ret)
		pr_warn("closing the %s: %s", what, fi_strerror(-ret));
}

/* Tear down a connection in any state, half-built included. */
static void fabric_conn_destroy(struct fabric_conn *c)
{
	struct fabric_rxmsg *m, *next;

	if (c->thread_started) {
		uint64_t deadline = fabric_deadline(FABRIC_LINGER_MS);

		/* Let sends the caller already returned from reach the wire. */
		pthread_mutex_lock(&c->lock);
		fabric_unpark_locked(c);
		while (c->state == FABRIC_UP && c->tx_inflight)
			if (fabric_cond_wait(c, deadline))
				break;
		pthread_mutex_unlock(&c->lock);

		atomic_store_explicit(&c->stop, true, memory_order_release);
		pthread_mutex_lock(&c->lock);
		fabric_unpark_locked(c);
		pthread_mutex_unlock(&c->lock);
		fi_cq_signal(c->cq); /* wakes a thread asleep in poll or fi_cq_sread */
		pthread_join(c->thread, NULL);
	}
	if (c->ep) {
		/* A clean disconnect: the peer sees FI_SHUTDOWN, not a reset. */
		if (c->state == FABRIC_UP)
			(void)fi_shutdown(c->ep, 0);
		fabric_close_fid(&c->ep->fid, "endpoint");
	}
	if (c->buf_mr)
		fabric_close_fid(&c->buf_mr->fid, "message buffer registration");
	if (c->cq)
		fabric_close_fid(&c->cq->fid, "completion queue");
	if (c->eq)
		fabric_close_fid(&c->eq->fid, "event queue");
	if (c->domain)
		fabric_close_fid(&c->domain->fid, "domain");
	if (c->fabric)
		fabric_close_fid(&c->fabric->fid, "fabric");
	if (c->info)
		fi_freeinfo(c->info);
	for (m = c->rxq_head; m; m = next) {
		next = m->next;
		if (m->buf < 0)
			free(m);
	}
	free(c->bufs);
	if (c->epfd >= 0)
		close(c->epfd);
	close(c->efd);
	close(c->kick_fd);
	pthread_cond_destroy(&c->park_cond);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->reap_lock);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* event_fd: our eventfd (queued completions and messages) and the CQ's wait fd (the
 * connection's traffic, so a caller asleep on it wakes without the thread). */
static int fabric_make_epfd(struct fabric_conn *c)
{
	struct epoll_event ev = {.events = EPOLLIN};

	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0) {
		pr_err("epoll_create1: %s", strerror(errno));
		return -errno;
	}
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->efd, &ev) ||
	    epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->cq_fd, &ev)) {
		pr_err("epoll_ctl: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

/* Open the connection's objects from info (which c now owns, also on failure) and post
 * the receive ring, so the peer's first message finds a buffer. On failure the caller
 * destroys c. */
static int fabric_conn_open(struct fabric_conn *c, struct fi_info *info)
{
	/* Wait fds let the thread see traffic that completes nothing here (a peer's READ
	 * served by the tcp provider) and sleep on the EQ too; fi_cq_sread hides both. */
	struct fi_eq_attr eq_attr = {.wait_obj = FI_WAIT_FD};
	struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_MSG, .wait_obj = FI_WAIT_FD};
	size_t tx_size = info->tx_attr ? info->tx_attr->size : 0;
	size_t nbufs = FABRIC_NRX + FABRIC_NTX;
	unsigned i;
	int ret;

	c->info = info;
	c->mr_mode = info->domain_attr->mr_mode;
	c->verbs = info->fabric_attr->prov_name && !strcmp(info->fabric_attr->prov_name, "verbs");
	/* An RNIC serves the peer's ops itself; spinning would only burn a core. */
	c->thread_spins = !c->verbs;
	/* Sends share the provider's transmit queue with one-sided ops. */
	c->max_ops = RDMIG_MAX_OUTSTANDING;
	if (tx_size > FABRIC_NTX && tx_size - FABRIC_NTX < c->max_ops)
		c->max_ops = (unsigned)(tx_size - FABRIC_NTX);
	for (i = 0; i < c->max_ops; i++)
		c->free_ops[i] = (uint16_t)(c->max_ops - 1 - i);
	c->nfree = c->max_ops;

	ret = fi_fabric(info->fabric_attr, &c->fabric, NULL);
	if (ret) {
		pr_err("fi_fabric: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	ret = fi_domain(c->fabric, info, &c->domain, NULL);
	if (ret) {
		pr_err("fi_domain: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	ret = fi_eq_open(c->fabric, &eq_attr, &c->eq, NULL);
	if (ret == -FI_ENOSYS || ret == -FI_EINVAL) {
		eq_attr.wait_obj = FI_WAIT_UNSPEC;
		ret = fi_eq_open(c->fabric, &eq_attr, &c->eq, NULL);
	}
	if (ret) {
		pr_err("fi_eq_open: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	/* Room for everything the endpoint can have in flight: the verbs provider sets
	 * aside rx_attr->size entries for receives and refuses sends (-FI_EAGAIN) once
	 * the rest is used up. */
	cq_attr.size = tx_size + (info->rx_attr ? info->rx_attr->size : 0);
	if (cq_attr.size < c->max_ops + FABRIC_NTX + FABRIC_NRX)
		cq_attr.size = c->max_ops + FABRIC_NTX + FABRIC_NRX;
	ret = fi_cq_open(c->domain, &cq_attr, &c->cq, NULL);
	if (ret == -FI_ENOSYS || ret == -FI_EINVAL) {
		cq_attr.wait_obj = FI_WAIT_UNSPEC;
		ret = fi_cq_open(c->domain, &cq_attr, &c->cq, NULL);
	}
	if (ret) {
		pr_err("fi_cq_open: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	if (cq_attr.wait_obj != FI_WAIT_FD || fi_control(&c->cq->fid, FI_GETWAIT, &c->cq_fd))
		c->cq_fd = -1;
	if (c->cq_fd < 0 || eq_attr.wait_obj != FI_WAIT_FD ||
	    fi_control(&c->eq->fid, FI_GETWAIT, &c->eq_fd))
		c->eq_fd = -1;
	if (c->cq_fd >= 0) {
		ret = fabric_make_epfd(c);
		if (ret)
			return ret;
	}
	ret = fi_endpoint(c->domain, info, &c->ep, NULL);
	if (ret) {
		pr_err("fi_endpoint: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	ret = fi_ep_bind(c->ep, &c->eq->fid, 0);
	if (!ret)
		ret = fi_ep_bind(c->ep, &c->cq->fid, FI_TRANSMIT | FI_RECV);
	if (!ret)
		ret = fi_enable(c->ep);
	if (ret) {
		pr_err("binding and enabling the endpoint: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}

	c->bufs = malloc(nbufs * RDMIG_MSG_MAX);
	if (!c->bufs)
		return -ENOMEM;
	if (c->mr_mode & FI_MR_LOCAL) {
		ret = fi_mr_reg(c->domain, c->bufs, nbufs * RDMIG_MSG_MAX, FI_SEND | FI_RECV, 0,
		                c->next_key++, 0, &c->buf_mr, NULL);
		if (!ret && (c->mr_mode & FI_MR_ENDPOINT)) {
			ret = fi_mr_bind(c->buf_mr, &c->ep->fid, 0);
			if (!ret)
				ret = fi_mr_enable(c->buf_mr);
		}
		if (ret) {
			pr_err("registering the message buffers: %s", fi_strerror(-ret));
			return fabric_errno(ret);
		}
		c->buf_desc = fi_mr_desc(c->buf_mr);
	}
	pthread_mutex_lock(&c->lock);
	for (i = 0, ret = 0; i < FABRIC_NRX && !ret; i++)
		ret = fabric_post_recv_locked(c, i);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* Wait for FI_CONNECTED on the connection's EQ. */
static int fabric_wait_connected(struct fabric_conn *c, int timeout_ms)
{
	uint64_t deadline = fabric_deadline(timeout_ms);
	union {
		struct fi_eq_cm_entry cm;
		unsigned char raw[sizeof(struct fi_eq_cm_entry) + FABRIC_CM_DATA];
	} ev;
	uint32_t event;
	ssize_t n;

	for (;;) {
		int left = fabric_remaining_ms(deadline);

		if (left == 0)
			return -ETIMEDOUT;
		n = fi_eq_sread(c->eq, &event, &ev, sizeof(ev), left, 0);
		if (n >= 0) {
			if (event == FI_CONNECTED)
				return 0;
			if (event == FI_SHUTDOWN)
				return -ECONNRESET;
			continue;
		}
		if (n == -FI_EAVAIL) {
			struct fi_eq_err_entry e;

			memset(&e, 0, sizeof(e));
			if (fi_eq_readerr(c->eq, &e, 0) < 0)
				return -EIO;
			pr_debug("connection failed: %s", fi_strerror(e.err));
			return e.err ? fabric_errno(-(ssize_t)e.err) : -ECONNREFUSED;
		}
		if (n != -FI_EAGAIN && n != -FI_ETIMEDOUT && n != -FI_EINTR)
			return fabric_errno(n);
	}
}

/* SETUP -> UP and start the progress thread, with every signal blocked in it so the
 * process's handlers keep running on the threads that expect them. */
static int fabric_conn_start(struct fabric_conn *c)
{
	sigset_t all, old;
	int ret;

	pthread_mutex_lock(&c->lock);
	fabric_set_state_locked(c, FABRIC_SETUP, FABRIC_UP, "connected");
	c->err = 0;
	c->last_heard_ns = fabric_now_ns();
	pthread_mutex_unlock(&c->lock);

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(&c->thread, NULL, fabric_progress_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		pr_err("pthread_create: %s", strerror(ret));
		return -ret;
	}
	c->thread_started = true;
	pthread_setname_np(c->thread, "rdmig-fabric");
	return 0;
}

static int fabric_listen(const struct rdmig_tp_opts *o, const char *hostport,
                         struct rdmig_listener **out)
{
	struct fi_eq_attr eq_attr = {.wait_obj = FI_WAIT_UNSPEC};
	const char *provider = o && o->provider && *o->provider ? o->provider : "tcp";
	struct sockaddr_storage ss;
	size_t sslen = sizeof(ss);
	struct fabric_listener *l;
	struct fi_info *hints;
	char host[256], port[16];
	int ret;

	ret = rdmig_split_hostport(hostport, host, sizeof(host), port, sizeof(port));
	if (ret)
		return ret;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	snprintf(l->provider, sizeof(l->provider), "%s", provider);
	l->op_timeout_ms = rdmig_opts_op_timeout(o);
	l->handshake_timeout_ms = o && o->handshake_timeout_ms > 0 ? o->handshake_timeout_ms : 5000;

	hints = fabric_hints(provider);
	if (!hints) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = fi_getinfo(FABRIC_API, host, port, FI_SOURCE, hints, &l->info);
	fi_freeinfo(hints);
	if (ret) {
		pr_err("no %s provider for %s: %s", provider, hostport, fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_free;
	}
	ret = fi_fabric(l->info->fabric_attr, &l->fabric, NULL);
	if (ret) {
		pr_err("fi_fabric: %s", fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_freeinfo;
	}
	ret = fi_eq_open(l->fabric, &eq_attr, &l->eq, NULL);
	if (ret) {
		pr_err("fi_eq_open: %s", fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_close_fabric;
	}
	ret = fi_passive_ep(l->fabric, l->info, &l->pep, NULL);
	if (ret) {
		pr_err("fi_passive_ep on %s: %s", hostport, fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_close_eq;
	}
	ret = fi_pep_bind(l->pep, &l->eq->fid, 0);
	if (!ret)
		ret = fi_listen(l->pep);
	if (ret) {
		pr_err("listening on %s: %s", hostport, fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_close_pep;
	}
	ret = fi_getname(&l->pep->fid, &ss, &sslen);
	if (ret) {
		pr_err("fi_getname: %s", fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_close_pep;
	}
	if (ss.ss_family == AF_INET)
		l->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		l->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		l->port = -EAFNOSUPPORT;
	pr_debug("listening on %s (port %d) with %s", hostport, l->port, provider);
	*out = &l->base;
	return 0;

out_close_pep:
	fabric_close_fid(&l->pep->fid, "passive endpoint");
out_close_eq:
	fabric_close_fid(&l->eq->fid, "event queue");
out_close_fabric:
	fabric_close_fid(&l->fabric->fid, "fabric");
out_freeinfo:
	fi_freeinfo(l->info);
out_free:
	free(l);
	return ret;
}

static int fabric_local_port(struct rdmig_listener *bl)
{
	return fabric_listener_of(bl)->port;
}

static int fabric_accept(struct rdmig_listener *bl, int timeout_ms, struct rdmig_conn **out)
{
	struct fabric_listener *l = fabric_listener_of(bl);
	uint64_t deadline = fabric_deadline(timeout_ms);
	union {
		struct fi_eq_cm_entry cm;
		unsigned char raw[sizeof(struct fi_eq_cm_entry) + FABRIC_CM_DATA];
	} ev;
	struct fabric_conn *c;
	uint32_t event;
	ssize_t n;
	int ret;

	for (;;) {
		int left = fabric_remaining_ms(deadline);

		if (left == 0)
			return -ETIMEDOUT;
		n = fi_eq_sread(l->eq, &event, &ev, sizeof(ev), left, 0);
		if (n >= 0 && event == FI_CONNREQ)
			break;
		if (n == -FI_EAVAIL) {
			struct fi_eq_err_entry e;

			memset(&e, 0, sizeof(e));
			if (fi_eq_readerr(l->eq, &e, 0) >= 0)
				pr_warn("listener event error: %s", fi_strerror(e.err));
			continue;
		}
		if (n < 0 && n != -FI_EAGAIN && n != -FI_ETIMEDOUT && n != -FI_EINTR)
			return fabric_errno(n);
	}

	c = fabric_conn_alloc(l->op_timeout_ms);
	if (!c) {
		(void)fi_reject(l->pep, ev.cm.info->handle, NULL, 0);
		fi_freeinfo(ev.cm.info);
		return -ENOMEM;
	}
	ret = fabric_conn_open(c, ev.cm.info);
	if (ret)
		goto out_reject;
	ret = fi_accept(c->ep, NULL, 0);
	if (ret) {
		pr_err("fi_accept: %s", fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_destroy;
	}
	ret = fabric_wait_connected(c, l->handshake_timeout_ms);
	if (ret) {
		pr_warn("accepted peer did not connect: %s", strerror(-ret));
		goto out_destroy;
	}
	ret = fabric_conn_start(c);
	if (ret)
		goto out_destroy;
	*out = &c->base;
	return 0;

out_reject:
	/* Once an endpoint exists it owns the request; closing it turns the peer away. */
	if (!c->ep)
		(void)fi_reject(l->pep, ev.cm.info->handle, NULL, 0);
out_destroy:
	fabric_conn_destroy(c);
	return ret;
}

static void fabric_close_listener(struct rdmig_listener *bl)
{
	struct fabric_listener *l = fabric_listener_of(bl);

	fabric_close_fid(&l->pep->fid, "passive endpoint");
	fabric_close_fid(&l->eq->fid, "event queue");
	fabric_close_fid(&l->fabric->fid, "fabric");
	fi_freeinfo(l->info);
	free(l);
}

static int fabric_connect(const struct rdmig_tp_opts *o, const char *hostport, int timeout_ms,
                          struct rdmig_conn **out)
{
	const char *provider = o && o->provider && *o->provider ? o->provider : "tcp";
	struct fabric_conn *c;
	struct fi_info *hints, *info;
	char host[256], port[16];
	int ret;

	ret = rdmig_split_hostport(hostport, host, sizeof(host), port, sizeof(port));
	if (ret)
		return ret;
	hints = fabric_hints(provider);
	if (!hints)
		return -ENOMEM;
	ret = fi_getinfo(FABRIC_API, host, port, 0, hints, &info);
	fi_freeinfo(hints);
	if (ret) {
		pr_err("no %s provider reaches %s: %s", provider, hostport, fi_strerror(-ret));
		return fabric_errno(ret);
	}
	c = fabric_conn_alloc(rdmig_opts_op_timeout(o));
	if (!c) {
		fi_freeinfo(info);
		return -ENOMEM;
	}
	ret = fabric_conn_open(c, info);
	if (ret)
		goto out_destroy;
	ret = fi_connect(c->ep, info->dest_addr, NULL, 0);
	if (ret) {
		pr_debug("fi_connect %s: %s", hostport, fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_destroy;
	}
	ret = fabric_wait_connected(c, timeout_ms);
	if (ret) {
		pr_debug("connecting to %s: %s", hostport, strerror(-ret));
		goto out_destroy;
	}
	ret = fabric_conn_start(c);
	if (ret)
		goto out_destroy;
	*out = &c->base;
	return 0;

out_destroy:
	fabric_conn_destroy(c);
	return ret;
}

static void fabric_close(struct rdmig_conn *bc)
{
	fabric_conn_destroy(fabric_conn_of(bc));
}

static int fabric_mr_reg(struct rdmig_conn *bc, void *addr, size_t len, unsigned access,
                         struct rdmig_mr **out)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	uint64_t acc = FI_READ | FI_WRITE;
	struct fabric_mr *m;
	uint64_t key;
	int ret;

	if (access & RDMIG_ACCESS_REMOTE_READ)
		acc |= FI_REMOTE_READ;
	if (access & RDMIG_ACCESS_REMOTE_WRITE)
		acc |= FI_REMOTE_WRITE;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	/* Without FI_MR_PROV_KEY the key we ask for must be unique in the domain, which is
	 * this connection's alone. */
	key = (c->mr_mode & FI_MR_PROV_KEY) ? 0 : c->next_key++;
	ret = fi_mr_reg(c->domain, addr, len, acc, 0, key, 0, &m->mr, NULL);
	if (ret) {
		pr_err("fi_mr_reg of %zu bytes: %s", len, fi_strerror(-ret));
		ret = fabric_errno(ret);
		goto out_free;
	}
	if (c->mr_mode & FI_MR_ENDPOINT) {
		ret = fi_mr_bind(m->mr, &c->ep->fid, 0);
		if (!ret)
			ret = fi_mr_enable(m->mr);
		if (ret) {
			pr_err("binding the registration to the endpoint: %s", fi_strerror(-ret));
			ret = fabric_errno(ret);
			goto out_close_mr;
		}
	}
	key = fi_mr_key(m->mr);
	if (key == FI_KEY_NOTAVAIL) {
		/* FI_MR_RAW keys do not fit a 64-bit descriptor; we never ask for them. */
		pr_err("provider gives no 64-bit key");
		ret = -EOPNOTSUPP;
		goto out_close_mr;
	}
	/* The peer addresses the region at rdesc.addr + offset: the virtual address under
	 * FI_MR_VIRT_ADDR, an offset from the start otherwise. */
	m->rdesc.addr = (c->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)addr : 0;
	m->rdesc.len = len;
	m->rdesc.key = key;
	m->base.addr = addr;
	m->base.len = len;
	m->base.access = access;
	*out = &m->base;
	return 0;

out_close_mr:
	fabric_close_fid(&m->mr->fid, "registration");
out_free:
	free(m);
	return ret;
}

static int fabric_mr_dereg(struct rdmig_mr *bm)
{
	struct fabric_mr *m = fabric_mr_of(bm);
	int ret = fi_close(&m->mr->fid);

	if (ret) {
		pr_err("closing a registration: %s", fi_strerror(-ret));
		return fabric_errno(ret);
	}
	free(m);
	return 0;
}

static void fabric_mr_desc(const struct rdmig_mr *bm, struct rdmig_rdesc *out)
{
	*out = fabric_mr_of_const(bm)->rdesc;
}

/* A WRITE completes once the target has placed the data, not once it left here: the
 * tcp provider otherwise reports success as soon as the bytes are in the socket, and a
 * write the target refuses (bad key, out of range) would look like it had worked. */
static ssize_t fabric_write(struct fabric_conn *c, void *local, size_t len, void *desc,
                            uint64_t raddr, uint64_t key, void *context)
{
	struct iovec iov = {.iov_base = local, .iov_len = len};
	struct fi_rma_iov rma = {.addr = raddr, .len = len, .key = key};
	struct fi_msg_rma msg = {
	    .msg_iov = &iov,
	    .desc = &desc,
	    .iov_count = 1,
	    .addr = FI_ADDR_UNSPEC,
	    .rma_iov = &rma,
	    .rma_iov_count = 1,
	    .context = context,
	};

	return fi_writemsg(c->ep, &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE);
}

/* Take a slot and hand the op to the provider. The lock is held across fi_read/fi_write
 * so that a break cannot fail the slot between the two and leave a post that both
 * returned an error and completed. */
static int fabric_post(struct fabric_conn *c, uint32_t op, void *local, struct rdmig_mr *lmr,
                       size_t len, const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	void *desc = NULL;
	struct fabric_op *slot;
	ssize_t fret;
	int ret = 0;

	if (lmr)
		desc = fi_mr_desc(fabric_mr_of(lmr)->mr);
	else if (c->mr_mode & FI_MR_LOCAL)
		return -EINVAL;

	pthread_mutex_lock(&c->lock);
	if (c->state != FABRIC_UP) {
		ret = c->err;
		goto out_unlock;
	}
	if (!c->nfree) {
		ret = -EAGAIN;
		goto out_unlock;
	}
	slot = &c->ops[c->free_ops[--c->nfree]];
	slot->state = FABRIC_OP_INFLIGHT;
	slot->op = op;
	slot->user_ctx = ctx;
	slot->status = 0;
	slot->posted_ns = fabric_now_ns();
	c->inflight++;
	if (op == RDMIG_OP_READ)
		fret = fi_read(c->ep, local, len, desc, FI_ADDR_UNSPEC, r->addr + roff, r->key,
		               &slot->ctx.fi);
	else
		fret = fabric_write(c, local, len, desc, r->addr + roff, r->key, &slot->ctx.fi);
	if (fret) {
		slot->state = FABRIC_OP_FREE;
		c->free_ops[c->nfree++] = slot->ctx.idx;
		c->inflight--;
		ret = fabric_errno(fret);
	}
out_unlock:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static int fabric_post_read(struct rdmig_conn *bc, void *local, struct rdmig_mr *lmr, size_t len,
                            const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	return fabric_post(fabric_conn_of(bc), RDMIG_OP_READ, local, lmr, len, r, roff, ctx);
}

static int fabric_post_write(struct rdmig_conn *bc, const void *local, struct rdmig_mr *lmr,
                             size_t len, const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	/* fi_write only reads the buffer; the cast is for the shared helper. */
	return fabric_post(fabric_conn_of(bc), RDMIG_OP_WRITE, (void *)(uintptr_t)local, lmr, len,
	                   r, roff, ctx);
}

/* Hand out up to max finished ops. *waiting: nothing ready but ops in flight. */
static int fabric_take(struct fabric_conn *c, struct rdmig_completion *out, int max, bool *waiting)
{
	int n = 0;

	pthread_mutex_lock(&c->lock);
	while (n < max && c->done_len) {
		struct fabric_op *op = &c->ops[c->done[c->done_head]];

		c->done_head = (c->done_head + 1) % RDMIG_MAX_OUTSTANDING;
		c->done_len--;
		atomic_store_explicit(&c->ndone, c->done_len, memory_order_relaxed);
		out[n].ctx = op->user_ctx;
		out[n].status = op->status;
		out[n].op = op->op;
		op->state = FABRIC_OP_FREE;
		c->free_ops[c->nfree++] = op->ctx.idx;
		n++;
	}
	fabric_rearm_locked(c);
	*waiting = !n && c->inflight && c->state == FABRIC_UP;
	pthread_mutex_unlock(&c->lock);
	return n;
}

static int fabric_poll(struct rdmig_conn *bc, struct rdmig_completion *out, int max)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	struct fid *fid = &c->cq->fid;
	uint64_t until;
	bool waiting;
	int n, tries;

	n = fabric_take(c, out, max, &waiting);
	if (n)
		return n;
	/* event_fd may have woken the caller on raw traffic: progress it here. */
	if (fabric_reap(c, true))
		n = fabric_take(c, out, max, &waiting);
	if (n || !waiting)
		goto out_arm;

	/* The caller drives (see fabric_caller_drives): spin, then let it sleep. */
	until = fabric_now_ns();
	atomic_store(&c->caller_seen_ns, until);
	until += FABRIC_POLL_SPIN_NS;
	do {
		if (fabric_reap(c, true) || atomic_load_explicit(&c->ndone, memory_order_relaxed)) {
			n = fabric_take(c, out, max, &waiting);
			if (n || !waiting)
				return n;
		}
		if (!fabric_spin_yield())
			break;
	} while (fabric_now_ns() < until);

out_arm:
	/* Arm the provider's wait fd before the caller sleeps on event_fd, and clear its
	 * signal, or event_fd would stay readable. A few tries only: with every receive
	 * buffer held (FABRIC_RXQ_MAX messages unread) the provider keeps data it cannot
	 * deliver, and the caller must go and recv. */
	for (tries = 0; !n && c->cq_fd >= 0 && tries < 4; tries++) {
		if (fi_trywait(c->fabric, &fid, 1) != -FI_EAGAIN)
			break;
		if (fabric_reap(c, true))
			n = fabric_take(c, out, max, &waiting);
	}
	return n;
}

static int fabric_send(struct rdmig_conn *bc, const void *msg, size_t len)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	uint64_t deadline = fabric_deadline(c->op_timeout_ms);
	bool expired = false, driven = false;
	unsigned char *buf;
	unsigned slot = 0;
	ssize_t fret;
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		uint64_t until;

		if (c->state != FABRIC_UP) {
			ret = c->err;
			goto out_unlock;
		}
		for (slot = 0; slot < FABRIC_NTX && c->tx_busy[slot]; slot++)
			;
		if (slot < FABRIC_NTX)
			break;
		if (expired) {
			fabric_break_locked(c, -ETIMEDOUT, -ETIMEDOUT,
			                    "no send buffer came free within op_timeout_ms");
			ret = -ETIMEDOUT;
			goto out_unlock;
		}
		if (!driven) {
			/* a send's completion frees its buffer: read them ourselves */
			fabric_drive_locked(c);
			driven = true;
			continue;
		}
		fabric_unpark_locked(c); /* the thread completes sends while we wait */
		/* and we read the CQ again every FABRIC_SEND_REDRIVE_NS meanwhile */
		until = fabric_now_ns() + FABRIC_SEND_REDRIVE_NS;
		(void)fabric_cond_wait(c, deadline && deadline < until ? deadline : until);
		expired = deadline && fabric_now_ns() >= deadline;
		driven = false;
	}
	c->tx_busy[slot] = true;
	c->tx_inflight++;
	buf = c->bufs + (size_t)(FABRIC_NRX + slot) * RDMIG_MSG_MAX;
	memcpy(buf, msg, len);
	for (;;) {
		uint64_t retry;

		fret = fi_send(c->ep, buf, len, c->buf_desc, FI_ADDR_UNSPEC, &c->tx_ctx[slot].fi);
		if (fret != -FI_EAGAIN || c->state != FABRIC_UP)
			break;
		/* The provider's transmit queue (or the verbs provider's credits) ran out:
		 * wait a little for ops to finish and try again. */
		fabric_drive_locked(c);
		retry = fabric_now_ns() + FABRIC_SEND_REDRIVE_NS;
		if (deadline && retry > deadline) {
			fabric_break_locked(c, -ETIMEDOUT, -ETIMEDOUT,
			                    "transmit queue stayed full for op_timeout_ms");
			break;
		}
		fabric_unpark_locked(c);
		(void)fabric_cond_wait(c, retry);
	}
	if (fret) {
		c->tx_busy[slot] = false;
		c->tx_inflight--;
		ret = c->state == FABRIC_UP ? fabric_errno(fret) : c->err;
	}
out_unlock:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* A caller of recv on a connection of messages only sleeps on event_fd itself,
 * until deadline (0: none) or for FABRIC_TICK_MS at most: the CQ's wait fd in it
 * wakes it on the message, with no thread in between (the thread wakes too, and
 * whoever reads the CQ first queues the message). c->lock held, dropped while it
 * sleeps. */
static void fabric_caller_sleep_locked(struct fabric_conn *c, uint64_t deadline)
{
	struct pollfd p = {.fd = c->epfd, .events = POLLIN};
	uint64_t now = fabric_now_ns();
	int ms = FABRIC_TICK_MS;

	if (deadline && deadline <= now)
		ms = 0;
	else if (deadline && deadline - now < (uint64_t)ms * NS_PER_MS)
		ms = (int)((deadline - now + NS_PER_MS - 1) / NS_PER_MS);
	fabric_rearm_locked(c);
	pthread_mutex_unlock(&c->lock);
	fabric_arm(c);
	(void)poll(&p, 1, ms);
	pthread_mutex_lock(&c->lock);
}

static int fabric_recv(struct rdmig_conn *bc, void *buf, size_t cap, int timeout_ms)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	uint64_t deadline = fabric_deadline(timeout_ms);
	struct fabric_rxmsg *m;
	bool expired = false, driven = false, arm = false;
	int ret;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		if (c->rxq_head)
			break;
		if (c->state != FABRIC_UP) {
			ret = c->err;
			goto out_rearm;
		}
		if (!driven) {
			fabric_drive_locked(c);
			driven = true;
			continue;
		}
		if (timeout_ms == 0) {
			/* the caller sleeps on event_fd next: arm it (see fabric_arm) */
			ret = -EAGAIN;
			arm = true;
			goto out_rearm;
		}
		if (expired) {
			ret = -ETIMEDOUT;
			goto out_rearm;
		}
		fabric_unpark_locked(c);
		if (atomic_load(&c->base.messages_only) && c->epfd >= 0) {
			fabric_caller_sleep_locked(c, deadline);
			expired = deadline && fabric_now_ns() >= deadline;
			driven = false;
		} else {
			expired = fabric_cond_wait(c, deadline) != 0;
		}
	}
	m = c->rxq_head;
	c->rxq_head = m->next;
	if (!c->rxq_head)
		c->rxq_tail = NULL;
	c->rxq_len--;
	if (m->len > cap) {
		ret = -EMSGSIZE;
		fabric_rxmsg_release_locked(c, m);
		fabric_break_locked(c, -ECONNRESET, -ECANCELED,
		                    "a message was larger than the caller's buffer");
		goto out_rearm;
	}
	memcpy(buf, m->data, m->len);
	ret = (int)m->len;
	fabric_rxmsg_release_locked(c, m);
out_rearm:
	fabric_rearm_locked(c);
	pthread_mutex_unlock(&c->lock);
	if (arm)
		fabric_arm(c);
	return ret;
}

/* The thread breaks the connection on the EQ's FI_SHUTDOWN and on a flushed
 * receive; what sits in the CQ is read here first, as recv would. */
static int fabric_check(struct rdmig_conn *bc)
{
	struct fabric_conn *c = fabric_conn_of(bc);
	int ret;

	pthread_mutex_lock(&c->lock);
	if (c->state == FABRIC_UP)
		fabric_drive_locked(c);
	ret = c->state == FABRIC_UP ? 0 : c->err;
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static int fabric_event_fd(struct rdmig_conn *bc)
{
	struct fabric_conn *c = fabric_conn_of(bc);

	return c->epfd >= 0 ? c->epfd : c->efd;
}

const struct rdmig_transport_ops rdmig_fabric_ops = {
    .size = sizeof(struct rdmig_transport_ops),
    .name = "fabric",
    .listen = fabric_listen,
    .local_port = fabric_local_port,
    .accept = fabric_accept,
    .close_listener = fabric_close_listener,
    .connect = fabric_connect,
    .close = fabric_close,
    .mr_reg = fabric_mr_reg,
    .mr_dereg = fabric_mr_dereg,
    .mr_desc = fabric_mr_desc,
    .post_read = fabric_post_read,
    .post_write = fabric_post_write,
    .poll = fabric_poll,
    .send = fabric_send,
    .recv = fabric_recv,
    .event_fd = fabric_event_fd,
    .check = fabric_check,
    .serve_soon = fabric_serve_soon,
};
