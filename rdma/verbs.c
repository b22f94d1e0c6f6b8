/*
 * The rdma-core backend of the transport: librdmacm sets a connection up, one
 * libibverbs RC queue pair carries everything after that.
 *
 * Each connection owns
 *   - an rdma_cm event channel of its own (an accepted id is migrated off the
 *     listener's), so DISCONNECTED and DEVICE_REMOVAL reach this connection only;
 *   - a protection domain of its own: registrations are per connection, and the
 *     caller registers only after the handshake, so a peer that has not proved
 *     the secret finds no key that works;
 *   - one CQ, with a completion channel, for both queues;
 *   - VERBS_NRECV pre-posted receive buffers and VERBS_NSEND send slots of
 *     RDMIG_MSG_MAX bytes, registered for local access only. As in fabric.c,
 *     a message is copied out of its receive buffer, which is posted again,
 *     as soon as its completion is polled (by recv, or by a send waiting for
 *     a slot), so two sides that both send without reading do not wait on
 *     each other's receive queues (they did: a burst of more than VERBS_NRECV
 *     messages each way stalled both until RC retries failed the
 *     connection). Only with VERBS_RXQ_MAX copies waiting (or no memory)
 *     does a message stay in its buffer until recv takes it: back-pressure
 *     on a peer that floods us, not a failure;
 *   - a table of one-sided operation slots: a READ/WRITE's wr_id names its slot,
 *     which keeps the caller's ctx until poll hands the completion over.
 *
 * Setup. connect: resolve address -> resolve route -> PD, CQ, QP, buffers ->
 * post receives -> rdma_connect -> ESTABLISHED. accept: CONNECT_REQUEST on the
 * listener's channel -> migrate the new id to a channel of its own -> PD, CQ, QP,
 * buffers -> post receives -> rdma_accept -> ESTABLISHED. READ depth (initiator
 * depth / responder resources) is the device maximum, clamped to what the peer
 * offers, so many READs can be in flight.
 *
 * Completions. Every CQE goes through verbs_handle_wc, whoever polled it: SEND
 * completions free a send slot, RECV completions queue a message for recv,
 * READ/WRITE completions queue for poll. event_fd is an epoll set of the
 * completion channel, the rdma_cm channel and an eventfd that is kept readable
 * while something waits in those queues, so a caller sleeping on it loses no
 * wakeup even when recv drained completions that poll will return, or the
 * reverse, and hears of a disconnect with nothing outstanding.
 *
 * Failure. The first error (an error CQE, DISCONNECTED, DEVICE_REMOVAL, an
 * operation with no progress for op_timeout_ms, an oversized message) moves the
 * QP to the error state and disconnects: the device flushes every posted WR, so
 * each outstanding operation still completes (-ECONNRESET, or -ETIMEDOUT), later
 * posts fail at once, and the peer hears of it. A peer that vanishes without a
 * word is caught by RC retries, bounded by a short ACK timeout.
 */
#define LOG_SUBSYS "verbs"
#include "rdmig/log.h"
#include "tp_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

enum {
	VERBS_NRECV = 8,
	VERBS_NSEND = 8,
	/* messages copied out before buffers are held instead (fabric.c's too) */
	VERBS_RXQ_MAX = 256,
	/* 4.096 us << 14 = 67 ms per try; after 1 + 6 tries a silent peer fails the
	 * QP in about 0.5 s on rxe (hardware may stretch each try up to 4x: ~2 s).
	 * Not 7 retries: rxe reads retry_cnt 7 as "retry for ever", like rnr_retry. */
	VERBS_ACK_TIMEOUT = 14,
	VERBS_RETRY_COUNT = 6,
	/* 7 = retry for ever: a peer slow to repost a receive is alive and busy; a
	 * dead one is caught by the ACK timeout above. */
	VERBS_RNR_RETRY = 7,
	VERBS_BACKLOG = 16,
	VERBS_POLL_BATCH = 32,
	/* An operation longer than the port's max_msg_sz goes out as several WRs
	 * (rxe: 8 MiB, below RDMIG_MAX_XFER); a port that would need more than this
	 * many gets -EMSGSIZE. */
	VERBS_MAX_PARTS = 16,
	/* A busy poller pays the syscalls of verbs_progress on its first empty poll,
	 * then on one empty poll in this many. */
	VERBS_IDLE_CHECK = 8,
	/* Resolve timeout when the caller gave none: rdma_cm's usual. */
	VERBS_RESOLVE_MS = 5000,
	VERBS_HANDSHAKE_MS = 5000,
};

/* The top half of a wr_id says which queue the WR came from, the bottom half
 * which buffer or slot. */
enum verbs_wr_kind {
	VERBS_WR_RECV = 1,
	VERBS_WR_SEND = 2,
	VERBS_WR_OP = 3,
};

/* epoll tags of the fds behind event_fd */
enum {
	VERBS_EV_CQ = 1,
	VERBS_EV_CM = 2,
	VERBS_EV_KICK = 3,
};

struct verbs_listener {
	struct rdmig_listener base;
	struct rdma_event_channel *ech;
	struct rdma_cm_id *id;
	int op_timeout_ms;
	int handshake_timeout_ms;
};

struct verbs_op {
	uint64_t ctx;
	uint32_t op;    /* enum rdmig_op */
	int status;     /* the first error among its WRs */
	unsigned parts; /* its WRs not yet completed */
};

struct verbs_msg {
	struct verbs_msg *next;
	uint32_t len;
	int buf;    /* the receive buffer it is still in, or -1: a copy */
	char *data; /* the copy's bytes, or the buffer's */
};

struct verbs_conn {
	struct rdmig_conn base;
	struct rdma_event_channel *ech;
	struct rdma_cm_id *id; /* owns the QP */
	struct ibv_pd *pd;
	struct ibv_comp_channel *cc;
	struct ibv_cq *cq;
	bool qp_created;
	bool connected; /* rdma_connect/rdma_accept went out: close must disconnect */
	int epfd;       /* what event_fd returns */
	int kickfd;     /* eventfd in epfd, readable while 'kicked' */
	bool kicked;
	int err; /* 0, or why the connection failed (-errno); sticks */
	int op_timeout_ms;
	uint32_t max_msg; /* the port's largest message: bound on one WR */

	char *recv_buf;
	struct ibv_mr *recv_mr;
	struct verbs_msg *rq_head, *rq_tail; /* received, not yet taken by recv */
	unsigned rq_count;
	struct verbs_msg rq_held[VERBS_NRECV]; /* messages left in their buffers */

	char *send_buf;
	struct ibv_mr *send_mr;
	uint32_t send_free[VERBS_NSEND];
	unsigned nsend_free;

	/* An op slot is free, in flight, or done and waiting in 'done' for poll; so
	 * 'done' never holds more than max_ops entries. op_wrs counts the send
	 * queue entries ops hold, never more than max_ops either. */
	unsigned max_ops, op_wrs;
	struct verbs_op ops[RDMIG_MAX_OUTSTANDING];
	uint16_t op_free[RDMIG_MAX_OUTSTANDING];
	unsigned nop_free;
	uint16_t done[RDMIG_MAX_OUTSTANDING];
	unsigned done_head, done_count;
	unsigned inflight; /* posted, CQE not yet seen */

	/* Stall detection for op_timeout_ms: progress_seq moves on every op CQE and
	 * when the first op goes out after an idle spell. */
	uint64_t progress_seq, stall_seq;
	int64_t stall_since_ms;
	unsigned idle_polls;
};

struct verbs_mr {
	struct rdmig_mr base;
	struct ibv_mr *mr;
};

static int64_t verbs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -1: no deadline */
static int64_t verbs_deadline(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : verbs_now_ms() + timeout_ms;
}

/* Milliseconds left before deadline, for poll(2): -1 = for ever, 0 = passed. */
static int verbs_remaining(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - verbs_now_ms();
	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

static int verbs_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static int verbs_getaddrinfo(const char *hostport, int flags, struct addrinfo **res)
{
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC,
	    .ai_socktype = SOCK_STREAM,
	    .ai_flags = flags | AI_NUMERICSERV,
	};
	char host[256], port[8];
	int ret;

	ret = rdmig_split_hostport(hostport, host, sizeof(host), port, sizeof(port));
	if (ret) {
		pr_err("bad address '%s' (want host:port or [v6]:port)", hostport);
		return ret;
	}
	ret = getaddrinfo(host, port, &hints, res);
	if (ret) {
		int err = ret == EAI_SYSTEM ? -errno : ret == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH;

		pr_err("%s: %s", hostport, gai_strerror(ret));
		return err;
	}
	return 0;
}

/* The errno an rdma_cm event stands for when it came instead of the one awaited. */
static int verbs_cm_errno(enum rdma_cm_event_type type, int status)
{
	switch (type) {
	case RDMA_CM_EVENT_REJECTED:
		/* status is an IB CM reject reason here, not an errno */
		return -ECONNREFUSED;
	case RDMA_CM_EVENT_ADDR_ERROR:
	case RDMA_CM_EVENT_ROUTE_ERROR:
	case RDMA_CM_EVENT_UNREACHABLE:
	case RDMA_CM_EVENT_CONNECT_ERROR:
		return status < 0 ? status : -EHOSTUNREACH;
	case RDMA_CM_EVENT_DEVICE_REMOVAL:
		return -ENODEV;
	default:
		return -ECONNABORTED;
	}
}

/* The next event on a channel whose fd is non-blocking, waiting until deadline.
 * The caller acks it. */
static int verbs_cm_next(struct rdma_event_channel *ech, int64_t deadline,
                         struct rdma_cm_event **ev)
{
	for (;;) {
		struct pollfd p = {.fd = ech->fd, .events = POLLIN};
		int left;

		if (rdma_get_cm_event(ech, ev) == 0)
			return 0;
		if (errno != EAGAIN && errno != EINTR) {
			int err = -errno;

			pr_err("rdma_get_cm_event: %s", strerror(-err));
			return err;
		}
		left = verbs_remaining(deadline);
		if (left == 0)
			return -ETIMEDOUT;
		if (poll(&p, 1, left) < 0 && errno != EINTR)
			return -errno;
	}
}

/* Wait for 'want' on a connection's own channel, where nothing else is expected:
 * any other event ends the wait with the errno it stands for. */
static int verbs_cm_expect(struct rdma_event_channel *ech, enum rdma_cm_event_type want,
                           int64_t deadline)
{
	enum rdma_cm_event_type got;
	struct rdma_cm_event *ev;
	int ret, status;

	ret = verbs_cm_next(ech, deadline, &ev);
	if (ret)
		return ret;
	got = ev->event;
	status = ev->status;
	rdma_ack_cm_event(ev);
	if (got == want)
		return 0;
	pr_debug("waiting for %s, got %s (status %d)", rdma_event_str(want), rdma_event_str(got),
	         status);
	return verbs_cm_errno(got, status);
}

/* First failure wins. Moving the QP to the error state makes the device flush
 * every posted WR, so each outstanding operation still gets its completion;
 * disconnecting tells the peer at once instead of leaving it to its retries.
 * 'lvl': a peer that hangs up is news (info), anything else is trouble (warn). */
static void verbs_fail(struct verbs_conn *c, int err, enum rdmig_log_level lvl, const char *why)
{
	struct ibv_qp_attr attr = {.qp_state = IBV_QPS_ERR};
	int ret;

	if (c->err)
		return;
	c->err = err;
	rdmig_log_at(lvl, "connection failed: %s (%s)", why, strerror(-err));
	ret = ibv_modify_qp(c->id->qp, &attr, IBV_QP_STATE);
	if (ret)
		pr_warn("moving the QP to the error state: %s", strerror(ret));
	if (c->connected) {
		c->connected = false;
		(void)rdma_disconnect(c->id);
	}
}

static int verbs_wc_errno(const struct verbs_conn *c, enum ibv_wc_status status)
{
	switch (status) {
	case IBV_WC_SUCCESS:
		return 0;
	case IBV_WC_REM_ACCESS_ERR:
	case IBV_WC_REM_INV_REQ_ERR:
	case IBV_WC_REM_OP_ERR:
		/* the peer's device refused: bad key, out of bounds, access */
		return -EREMOTEIO;
	case IBV_WC_LOC_PROT_ERR:
	case IBV_WC_LOC_LEN_ERR:
		return -EFAULT;
	case IBV_WC_WR_FLUSH_ERR:
		return c->err ? c->err : -ECONNRESET;
	default:
		/* RETRY_EXC_ERR, RNR_RETRY_EXC_ERR, fatal errors: the peer is gone */
		return -ECONNRESET;
	}
}

static int verbs_post_recv(struct verbs_conn *c, uint32_t idx);

/* Receive buffer idx is free again: post it (not after a failure). */
static void verbs_repost(struct verbs_conn *c, uint32_t idx)
{
	int ret;

	if (c->err)
		return;
	ret = verbs_post_recv(c, idx);
	if (ret)
		verbs_fail(c, ret, RDMIG_LOG_WARN, "reposting a receive");
}

/* A message landed in receive buffer idx (see the file comment). One that
 * arrived before a failure is still delivered, then the error. */
static void verbs_queue_msg(struct verbs_conn *c, uint32_t idx, uint32_t len)
{
	char *src = c->recv_buf + (size_t)idx * RDMIG_MSG_MAX;
	struct verbs_msg *m = NULL;

	if (c->rq_count < VERBS_RXQ_MAX)
		m = malloc(sizeof(*m) + len);
	if (m) {
		m->buf = -1;
		m->data = (char *)(m + 1);
		memcpy(m->data, src, len);
		verbs_repost(c, idx);
	} else {
		m = &c->rq_held[idx];
		m->buf = (int)idx;
		m->data = src;
	}
	m->next = NULL;
	m->len = len;
	if (c->rq_tail)
		c->rq_tail->next = m;
	else
		c->rq_head = m;
	c->rq_tail = m;
	c->rq_count++;
}

/* recv is done with m: free the copy, or post its buffer again. */
static void verbs_msg_release(struct verbs_conn *c, struct verbs_msg *m)
{
	if (m->buf < 0)
		free(m);
	else
		verbs_repost(c, (uint32_t)m->buf);
}

static void verbs_handle_wc(struct verbs_conn *c, const struct ibv_wc *wc)
{
	uint32_t kind = (uint32_t)(wc->wr_id >> 32), idx = (uint32_t)wc->wr_id;

	/* Any error CQE, a flush included, means the QP is in the error state
	 * already: the responder side of a refused READ learns it only from the
	 * flush of its receives. */
	if (wc->status != IBV_WC_SUCCESS)
		verbs_fail(c, -ECONNRESET, RDMIG_LOG_WARN, ibv_wc_status_str(wc->status));

	switch (kind) {
	case VERBS_WR_RECV:
		if (idx >= VERBS_NRECV)
			break;
		if (wc->status == IBV_WC_SUCCESS)
			verbs_queue_msg(c, idx, wc->byte_len);
		return;
	case VERBS_WR_SEND:
		if (idx >= VERBS_NSEND)
			break;
		c->send_free[c->nsend_free++] = idx;
		return;
	case VERBS_WR_OP:
		if (idx >= c->max_ops || !c->ops[idx].parts)
			break;
		if (wc->status != IBV_WC_SUCCESS && !c->ops[idx].status)
			c->ops[idx].status = verbs_wc_errno(c, wc->status);
		c->op_wrs--;
		c->progress_seq++;
		if (--c->ops[idx].parts)
			return;
		c->done[(c->done_head + c->done_count++) % RDMIG_MAX_OUTSTANDING] = (uint16_t)idx;
		c->inflight--;
		return;
	}
	pr_err("completion with a wr_id that was never posted: %#llx",
	       (unsigned long long)wc->wr_id);
}

/* Take one batch of CQEs, or all there are. Returns how many. */
static int verbs_cq_drain(struct verbs_conn *c, bool all)
{
	struct ibv_wc wc[VERBS_POLL_BATCH];
	int n, total = 0;

	do {
		n = ibv_poll_cq(c->cq, VERBS_POLL_BATCH, wc);
		if (n < 0) {
			/* ibv_poll_cq's negative return carries no errno */
			verbs_fail(c, -EIO, RDMIG_LOG_WARN, "ibv_poll_cq");
			return total;
		}
		for (int i = 0; i < n; i++)
			verbs_handle_wc(c, &wc[i]);
		total += n;
	} while (all && n == VERBS_POLL_BATCH);
	return total;
}

/* Consume the completion events and re-arm the CQ. The caller polls the CQ empty
 * afterwards, so a CQE landing after that poll raises the channel again. */
static void verbs_cq_rearm(struct verbs_conn *c)
{
	struct ibv_cq *cq;
	void *cq_ctx;
	unsigned nev = 0;
	int ret;

	while (ibv_get_cq_event(c->cc, &cq, &cq_ctx) == 0)
		nev++;
	if (!nev)
		return;
	ibv_ack_cq_events(c->cq, nev);
	ret = ibv_req_notify_cq(c->cq, 0);
	if (ret)
		verbs_fail(c, -ret, RDMIG_LOG_WARN, "ibv_req_notify_cq");
}

static void verbs_cm_drain(struct verbs_conn *c)
{
	struct rdma_cm_event *ev;

	while (rdma_get_cm_event(c->ech, &ev) == 0) {
		enum rdma_cm_event_type type = ev->event;

		rdma_ack_cm_event(ev);
		switch (type) {
		case RDMA_CM_EVENT_DISCONNECTED:
			verbs_fail(c, -ECONNRESET, RDMIG_LOG_INFO, "peer disconnected");
			break;
		case RDMA_CM_EVENT_DEVICE_REMOVAL:
			verbs_fail(c, -ECONNRESET, RDMIG_LOG_WARN, "RDMA device removed");
			break;
		default:
			pr_debug("ignoring %s", rdma_event_str(type));
			break;
		}
	}
}

/* An operation with no completion for op_timeout_ms fails the connection: RC
 * retries catch a silent peer first, this catches whatever they do not. */
static void verbs_check_stall(struct verbs_conn *c)
{
	int64_t now;

	if (!c->inflight || c->err)
		return;
	now = verbs_now_ms();
	if (c->progress_seq != c->stall_seq || !c->stall_since_ms) {
		c->stall_seq = c->progress_seq;
		c->stall_since_ms = now;
		return;
	}
	if (now - c->stall_since_ms >= c->op_timeout_ms)
		verbs_fail(c, -ETIMEDOUT, RDMIG_LOG_WARN, "no completion within op_timeout_ms");
}

/* Everything that costs a syscall: rdma_cm events, completion events, then the CQ
 * polled empty and the stall check. Returning to the caller after this with
 * nothing found leaves the CQ armed. */
static void verbs_progress(struct verbs_conn *c)
{
	struct epoll_event ev[3];
	int n = epoll_wait(c->epfd, ev, 3, 0);

	for (int i = 0; i < n; i++) {
		if (ev[i].data.u32 == VERBS_EV_CM)
			verbs_cm_drain(c);
		else if (ev[i].data.u32 == VERBS_EV_CQ)
			verbs_cq_rearm(c);
	}
	(void)verbs_cq_drain(c, true);
	verbs_check_stall(c);
}

/* Keep event_fd readable while completions or messages wait inside: the CQ
 * event that announced them may have been consumed by the other call. Not for a
 * failed connection as such: its failure comes with flush CQEs or was returned,
 * and an fd that stays readable would make rdmig_tp_wait spin. Syscalls only
 * when this changes. */
static void verbs_kick_update(struct verbs_conn *c)
{
	bool want = c->done_count || c->rq_count;
	uint64_t v = 1;

	if (want == c->kicked)
		return;
	if (want) {
		if (write(c->kickfd, &v, sizeof(v)) == (ssize_t)sizeof(v))
			c->kicked = true;
	} else if (read(c->kickfd, &v, sizeof(v)) == (ssize_t)sizeof(v) || errno == EAGAIN) {
		c->kicked = false;
	}
}

/* Sleep until the CQ or the rdma_cm channel has news, or the deadline. Not on
 * epfd: its eventfd may be readable for completions that only poll takes. */
static int verbs_wait(struct verbs_conn *c, int64_t deadline)
{
	struct pollfd p[2] = {
	    {.fd = c->cc->fd, .events = POLLIN},
	    {.fd = c->ech->fd, .events = POLLIN},
	};
	int left = verbs_remaining(deadline);

	if (left == 0)
		return -ETIMEDOUT;
	if (poll(p, 2, left) < 0 && errno != EINTR)
		return -errno;
	return 0;
}

static int verbs_post_recv(struct verbs_conn *c, uint32_t idx)
{
	struct ibv_sge sge = {
	    .addr = (uintptr_t)(c->recv_buf + (size_t)idx * RDMIG_MSG_MAX),
	    .length = RDMIG_MSG_MAX,
	    .lkey = c->recv_mr->lkey,
	};
	struct ibv_recv_wr wr = {
	    .wr_id = (uint64_t)VERBS_WR_RECV << 32 | idx,
	    .sg_list = &sge,
	    .num_sge = 1,
	};
	struct ibv_recv_wr *bad;

	return -ibv_post_recv(c->id->qp, &wr, &bad);
}

static int verbs_conn_alloc(int op_timeout_ms, struct verbs_conn **out)
{
	struct verbs_conn *c = calloc(1, sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	c->epfd = -1;
	c->kickfd = -1;
	c->op_timeout_ms = op_timeout_ms;
	c->ech = rdma_create_event_channel();
	if (!c->ech) {
		ret = -errno;
		pr_err("rdma_create_event_channel: %s (no RDMA device or rdma_ucm module?)",
		       strerror(-ret));
		goto out_free;
	}
	ret = verbs_set_nonblock(c->ech->fd);
	if (ret)
		goto out_destroy_channel;
	*out = c;
	return 0;

out_destroy_channel:
	rdma_destroy_event_channel(c->ech);
out_free:
	free(c);
	return ret;
}

/* Undo whatever of a connection exists; takes a half-built one. rdma_cm and
 * ibverbs want the reverse order of creation, and every event retrieved from the
 * channels was acked when it was taken. */
static void verbs_conn_destroy(struct verbs_conn *c)
{
	int ret;

	if (c->connected)
		(void)rdma_disconnect(c->id);
	if (c->qp_created)
		rdma_destroy_qp(c->id);
	if (c->send_mr)
		(void)ibv_dereg_mr(c->send_mr);
	if (c->recv_mr)
		(void)ibv_dereg_mr(c->recv_mr);
	free(c->send_buf);
	free(c->recv_buf);
	while (c->rq_head) {
		struct verbs_msg *m = c->rq_head;

		c->rq_head = m->next;
		if (m->buf < 0)
			free(m);
	}
	if (c->cq) {
		ret = ibv_destroy_cq(c->cq);
		if (ret)
			pr_err("ibv_destroy_cq: %s", strerror(ret));
	}
	if (c->cc)
		(void)ibv_destroy_comp_channel(c->cc);
	if (c->pd) {
		ret = ibv_dealloc_pd(c->pd);
		if (ret)
			pr_err("ibv_dealloc_pd: %s (registrations left on the connection?)",
			       strerror(ret));
	}
	if (c->id)
		rdma_destroy_id(c->id);
	if (c->ech)
		rdma_destroy_event_channel(c->ech);
	if (c->epfd >= 0)
		close(c->epfd);
	if (c->kickfd >= 0)
		close(c->kickfd);
	free(c);
}

static int verbs_epoll_add(int epfd, int fd, uint32_t tag)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = tag};

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static int verbs_alloc_buffers(struct verbs_conn *c)
{
	size_t rsize = (size_t)VERBS_NRECV * RDMIG_MSG_MAX;
	size_t ssize = (size_t)VERBS_NSEND * RDMIG_MSG_MAX;
	void *p;
	int ret;

	ret = posix_memalign(&p, 4096, rsize);
	if (ret)
		return -ret;
	c->recv_buf = p;
	ret = posix_memalign(&p, 4096, ssize);
	if (ret)
		return -ret;
	c->send_buf = p;
	c->recv_mr = ibv_reg_mr(c->pd, c->recv_buf, rsize, IBV_ACCESS_LOCAL_WRITE);
	if (!c->recv_mr)
		return errno ? -errno : -ENOMEM;
	c->send_mr = ibv_reg_mr(c->pd, c->send_buf, ssize, 0);
	if (!c->send_mr)
		return errno ? -errno : -ENOMEM;
	return 0;
}

/* Build what the QP needs on the device c->id is bound to, post the receives, set
 * the retry policy, and fill in the connection parameters to offer (the device's
 * maxima; the passive side clamps them to the peer's). Failures leave the parts
 * for verbs_conn_destroy. */
static int verbs_conn_setup(struct verbs_conn *c, struct rdma_conn_param *param)
{
	struct ibv_context *ctx = c->id->verbs;
	uint8_t ack_timeout = VERBS_ACK_TIMEOUT;
	struct ibv_qp_init_attr qpa;
	struct ibv_device_attr dev;
	struct ibv_port_attr port;
	unsigned send_wr;
	int ret;

	ret = ibv_query_device(ctx, &dev);
	if (ret) {
		pr_err("ibv_query_device: %s", strerror(ret));
		return -ret;
	}
	ret = ibv_query_port(ctx, c->id->port_num, &port);
	if (ret) {
		pr_err("ibv_query_port: %s", strerror(ret));
		return -ret;
	}
	/* 0 would be a driver bug; treat it as "no limit below ours" */
	c->max_msg = port.max_msg_sz ? port.max_msg_sz : RDMIG_MAX_XFER;

	/* Room for every op slot and every send slot; a smaller device gets fewer
	 * op slots, and posts beyond them see -EAGAIN. */
	send_wr = RDMIG_MAX_OUTSTANDING + VERBS_NSEND;
	if (dev.max_qp_wr > 0 && send_wr > (unsigned)dev.max_qp_wr)
		send_wr = (unsigned)dev.max_qp_wr;
	if (send_wr <= VERBS_NSEND) {
		pr_err("device allows only %d WRs per queue", dev.max_qp_wr);
		return -ENOSPC;
	}
	c->max_ops = send_wr - VERBS_NSEND;

	c->pd = ibv_alloc_pd(ctx);
	if (!c->pd) {
		ret = errno ? -errno : -ENOMEM;
		pr_err("ibv_alloc_pd: %s", strerror(-ret));
		return ret;
	}
	c->cc = ibv_create_comp_channel(ctx);
	if (!c->cc) {
		ret = errno ? -errno : -ENOMEM;
		pr_err("ibv_create_comp_channel: %s", strerror(-ret));
		return ret;
	}
	ret = verbs_set_nonblock(c->cc->fd);
	if (ret)
		return ret;
	/* One CQE per WR at most: signalled sends and ops, plus receives. */
	c->cq = ibv_create_cq(ctx, (int)(send_wr + VERBS_NRECV), c, c->cc, 0);
	if (!c->cq) {
		ret = errno ? -errno : -ENOMEM;
		pr_err("ibv_create_cq: %s", strerror(-ret));
		return ret;
	}
	ret = ibv_req_notify_cq(c->cq, 0);
	if (ret) {
		pr_err("ibv_req_notify_cq: %s", strerror(ret));
		return -ret;
	}

	memset(&qpa, 0, sizeof(qpa));
	qpa.send_cq = c->cq;
	qpa.recv_cq = c->cq;
	qpa.qp_type = IBV_QPT_RC;
	qpa.cap.max_send_wr = send_wr;
	qpa.cap.max_recv_wr = VERBS_NRECV;
	qpa.cap.max_send_sge = 1;
	qpa.cap.max_recv_sge = 1;
	if (rdma_create_qp(c->id, c->pd, &qpa)) {
		ret = -errno;
		pr_err("rdma_create_qp: %s", strerror(-ret));
		return ret;
	}
	c->qp_created = true;

	ret = verbs_alloc_buffers(c);
	if (ret) {
		pr_err("control buffers: %s%s", strerror(-ret),
		       ret == -ENOMEM ? " (RLIMIT_MEMLOCK too low?)" : "");
		return ret;
	}
	for (unsigned i = 0; i < VERBS_NSEND; i++)
		c->send_free[i] = i;
	c->nsend_free = VERBS_NSEND;
	for (unsigned i = 0; i < c->max_ops; i++)
		c->op_free[i] = (uint16_t)(c->max_ops - 1 - i);
	c->nop_free = c->max_ops;
	/* Receives go up before the connection does: the peer may send the moment
	 * it sees ESTABLISHED. */
	for (uint32_t i = 0; i < VERBS_NRECV; i++) {
		ret = verbs_post_recv(c, i);
		if (ret) {
			pr_err("ibv_post_recv: %s", strerror(-ret));
			return ret;
		}
	}

	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0)
		return -errno;
	c->kickfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->kickfd < 0)
		return -errno;
	ret = verbs_epoll_add(c->epfd, c->cc->fd, VERBS_EV_CQ);
	if (!ret)
		ret = verbs_epoll_add(c->epfd, c->ech->fd, VERBS_EV_CM);
	if (!ret)
		ret = verbs_epoll_add(c->epfd, c->kickfd, VERBS_EV_KICK);
	if (ret)
		return ret;

	/* The kernel applies this when rdma_cm moves the QP to RTS. Old kernels lack
	 * it: then RC retries keep the CM's default and a silent peer takes longer. */
	if (rdma_set_option(c->id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &ack_timeout,
	                    sizeof(ack_timeout)))
		pr_warn("rdma_set_option(ACK_TIMEOUT): %s; a silent peer takes longer to notice",
		        strerror(errno));

	memset(param, 0, sizeof(*param));
	param->responder_resources = (uint8_t)(dev.max_qp_rd_atom > 255 ? 255 : dev.max_qp_rd_atom);
	param->initiator_depth =
	    (uint8_t)(dev.max_qp_init_rd_atom > 255 ? 255 : dev.max_qp_init_rd_atom);
	param->retry_count = VERBS_RETRY_COUNT;
	param->rnr_retry_count = VERBS_RNR_RETRY;
	return 0;
}

/* What the QP ended up with after rdma_cm's transitions (the ACK timeout and
 * READ depth are negotiated, not simply set): queried only at debug level. */
static void verbs_log_qp(struct verbs_conn *c, const char *side)
{
	struct ibv_qp_init_attr init;
	struct ibv_qp_attr a;

	if (rdmig_log_get_level() < RDMIG_LOG_DEBUG)
		return;
	if (ibv_query_qp(c->id->qp, &a,
	                 IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
	                     IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_MAX_DEST_RD_ATOMIC,
	                 &init))
		return;
	pr_debug("%s: qp %u ack timeout %u retry %u rnr %u rd_atomic %u dest_rd_atomic %u "
	         "max_send_wr %u max_msg %u",
	         side, c->id->qp->qp_num, a.timeout, a.retry_cnt, a.rnr_retry, a.max_rd_atomic,
	         a.max_dest_rd_atomic, init.cap.max_send_wr, c->max_msg);
}

static int verbs_listen(const struct rdmig_tp_opts *o, const char *hostport,
                        struct rdmig_listener **out)
{
	struct verbs_listener *l;
	struct addrinfo *ai;
	int ret;

	ret = verbs_getaddrinfo(hostport, AI_PASSIVE, &ai);
	if (ret)
		return ret;
	l = calloc(1, sizeof(*l));
	if (!l) {
		ret = -ENOMEM;
		goto out_free_ai;
	}
	l->op_timeout_ms = rdmig_opts_op_timeout(o);
	l->handshake_timeout_ms =
	    o && o->handshake_timeout_ms > 0 ? o->handshake_timeout_ms : VERBS_HANDSHAKE_MS;
	l->ech = rdma_create_event_channel();
	if (!l->ech) {
		ret = -errno;
		pr_err("rdma_create_event_channel: %s (no RDMA device or rdma_ucm module?)",
		       strerror(-ret));
		goto out_free_listener;
	}
	ret = verbs_set_nonblock(l->ech->fd);
	if (ret)
		goto out_destroy_channel;
	if (rdma_create_id(l->ech, &l->id, l, RDMA_PS_TCP)) {
		ret = -errno;
		pr_err("rdma_create_id: %s", strerror(-ret));
		goto out_destroy_channel;
	}
	if (rdma_bind_addr(l->id, ai->ai_addr)) {
		ret = -errno;
		pr_err("binding %s: %s", hostport, strerror(-ret));
		goto out_destroy_id;
	}
	if (rdma_listen(l->id, VERBS_BACKLOG)) {
		ret = -errno;
		pr_err("listening on %s: %s", hostport, strerror(-ret));
		goto out_destroy_id;
	}
	freeaddrinfo(ai);
	*out = &l->base;
	return 0;

out_destroy_id:
	rdma_destroy_id(l->id);
out_destroy_channel:
	rdma_destroy_event_channel(l->ech);
out_free_listener:
	free(l);
out_free_ai:
	freeaddrinfo(ai);
	return ret;
}

static int verbs_local_port(struct rdmig_listener *base)
{
	struct verbs_listener *l = rdmig_container_of(base, struct verbs_listener, base);

	return ntohs(rdma_get_src_port(l->id));
}

/* Take one connection request. 0: connected; -errno: a local failure (the peer
 * is rejected); 1: the peer went away before the connection was up, wait for the
 * next one. */
static int verbs_accept_one(struct verbs_listener *l, struct rdma_cm_id *child,
                            const struct rdma_conn_param *peer, struct rdmig_conn **out)
{
	struct rdma_conn_param param;
	struct verbs_conn *c;
	int ret;

	ret = verbs_conn_alloc(l->op_timeout_ms, &c);
	if (ret)
		goto out_reject_child;
	/* Its own channel: its DISCONNECTED must not wait in the listener's. */
	if (rdma_migrate_id(child, c->ech)) {
		ret = -errno;
		pr_err("rdma_migrate_id: %s", strerror(-ret));
		goto out_destroy_conn;
	}
	c->id = child;
	child->context = c;
	ret = verbs_conn_setup(c, &param);
	if (ret)
		goto out_reject_conn;
	/* Never promise more READ depth than the other side can take. */
	if (param.responder_resources > peer->initiator_depth)
		param.responder_resources = peer->initiator_depth;
	if (param.initiator_depth > peer->responder_resources)
		param.initiator_depth = peer->responder_resources;
	if (rdma_accept(c->id, &param)) {
		pr_warn("rdma_accept: %s", strerror(errno));
		verbs_conn_destroy(c);
		return 1;
	}
	c->connected = true;
	ret = verbs_cm_expect(c->ech, RDMA_CM_EVENT_ESTABLISHED,
	                      verbs_deadline(l->handshake_timeout_ms));
	if (ret) {
		pr_warn("peer did not complete the connection: %s", strerror(-ret));
		verbs_conn_destroy(c);
		return 1;
	}
	verbs_log_qp(c, "accepted");
	*out = &c->base;
	return 0;

out_reject_conn:
	(void)rdma_reject(c->id, NULL, 0);
	verbs_conn_destroy(c); /* destroys child with it */
	return ret;
out_destroy_conn:
	verbs_conn_destroy(c);
out_reject_child:
	(void)rdma_reject(child, NULL, 0);
	rdma_destroy_id(child);
	return ret;
}

/* Once a request is taken, its establishment gets handshake_timeout_ms of its
 * own, even past the caller's timeout: it takes one round trip. */
static int verbs_accept(struct rdmig_listener *base, int timeout_ms, struct rdmig_conn **out)
{
	struct verbs_listener *l = rdmig_container_of(base, struct verbs_listener, base);
	int64_t deadline = verbs_deadline(timeout_ms);

	for (;;) {
		struct rdma_conn_param peer;
		struct rdma_cm_event *ev;
		struct rdma_cm_id *child;
		int ret;

		ret = verbs_cm_next(l->ech, deadline, &ev);
		if (ret)
			return ret;
		if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
			pr_debug("listener: ignoring %s", rdma_event_str(ev->event));
			rdma_ack_cm_event(ev);
			continue;
		}
		child = ev->id;
		peer = ev->param.conn; /* private data is not used, so the copy may outlive it */
		rdma_ack_cm_event(ev);
		ret = verbs_accept_one(l, child, &peer, out);
		if (ret <= 0)
			return ret;
	}
}

static void verbs_close_listener(struct rdmig_listener *base)
{
	struct verbs_listener *l = rdmig_container_of(base, struct verbs_listener, base);

	rdma_destroy_id(l->id);
	rdma_destroy_event_channel(l->ech);
	free(l);
}

/* rdma_cm's own timeout for a resolve step: what is left of ours. */
static int verbs_resolve_ms(int64_t deadline)
{
	int left = verbs_remaining(deadline);

	return left < 0 ? VERBS_RESOLVE_MS : left == 0 ? 1 : left;
}

static int verbs_connect(const struct rdmig_tp_opts *o, const char *hostport, int timeout_ms,
                         struct rdmig_conn **out)
{
	int64_t deadline = verbs_deadline(timeout_ms);
	struct rdma_conn_param param;
	struct verbs_conn *c;
	struct addrinfo *ai;
	int ret;

	ret = verbs_getaddrinfo(hostport, 0, &ai);
	if (ret)
		return ret;
	ret = verbs_conn_alloc(rdmig_opts_op_timeout(o), &c);
	if (ret)
		goto out_free_ai;
	if (rdma_create_id(c->ech, &c->id, c, RDMA_PS_TCP)) {
		ret = -errno;
		pr_err("rdma_create_id: %s", strerror(-ret));
		goto out_destroy_conn;
	}
	if (rdma_resolve_addr(c->id, NULL, ai->ai_addr, verbs_resolve_ms(deadline))) {
		ret = -errno;
		goto out_log;
	}
	ret = verbs_cm_expect(c->ech, RDMA_CM_EVENT_ADDR_RESOLVED, deadline);
	if (ret)
		goto out_log;
	if (rdma_resolve_route(c->id, verbs_resolve_ms(deadline))) {
		ret = -errno;
		goto out_log;
	}
	ret = verbs_cm_expect(c->ech, RDMA_CM_EVENT_ROUTE_RESOLVED, deadline);
	if (ret)
		goto out_log;
	ret = verbs_conn_setup(c, &param);
	if (ret)
		goto out_destroy_conn;
	if (rdma_connect(c->id, &param)) {
		ret = -errno;
		goto out_log;
	}
	c->connected = true;
	ret = verbs_cm_expect(c->ech, RDMA_CM_EVENT_ESTABLISHED, deadline);
	if (ret)
		goto out_log;
	verbs_log_qp(c, "connected");
	freeaddrinfo(ai);
	*out = &c->base;
	return 0;

out_log:
	pr_warn("connecting to %s: %s", hostport, strerror(-ret));
out_destroy_conn:
	verbs_conn_destroy(c);
out_free_ai:
	freeaddrinfo(ai);
	return ret;
}

static void verbs_close(struct rdmig_conn *base)
{
	verbs_conn_destroy(rdmig_container_of(base, struct verbs_conn, base));
}

static int verbs_mr_reg(struct rdmig_conn *base, void *addr, size_t len, unsigned access,
                        struct rdmig_mr **out)
{
	struct verbs_conn *c = rdmig_container_of(base, struct verbs_conn, base);
	int flags = IBV_ACCESS_LOCAL_WRITE; /* READs land in local registrations */
	struct verbs_mr *vm;
	int ret;

	if (access & RDMIG_ACCESS_REMOTE_READ)
		flags |= IBV_ACCESS_REMOTE_READ;
	if (access & RDMIG_ACCESS_REMOTE_WRITE)
		flags |= IBV_ACCESS_REMOTE_WRITE;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->mr = ibv_reg_mr(c->pd, addr, len, flags);
	if (!vm->mr) {
		ret = errno ? -errno : -ENOMEM;
		pr_err("registering %zu bytes: %s%s", len, strerror(-ret),
		       ret == -ENOMEM ? " (RLIMIT_MEMLOCK too low?)" : "");
		free(vm);
		return ret;
	}
	vm->base.addr = addr;
	vm->base.len = len;
	vm->base.access = access;
	*out = &vm->base;
	return 0;
}

/* The device invalidates the rkey in ibv_dereg_mr: a peer's operation with it
 * fails with a remote access error from then on. */
static int verbs_mr_dereg(struct rdmig_mr *base)
{
	struct verbs_mr *vm = rdmig_container_of(base, struct verbs_mr, base);
	int ret = ibv_dereg_mr(vm->mr);

	if (ret)
		pr_err("ibv_dereg_mr: %s", strerror(ret));
	free(vm); /* the wrapper counts it gone either way */
	return -ret;
}

static void verbs_mr_desc(const struct rdmig_mr *base, struct rdmig_rdesc *out)
{
	const struct verbs_mr *vm = rdmig_container_of(base, const struct verbs_mr, base);

	out->addr = (uintptr_t)vm->base.addr;
	out->len = vm->base.len;
	out->key = vm->mr->rkey;
}

static int verbs_post(struct verbs_conn *c, enum ibv_wr_opcode opcode, uint32_t op, char *local,
                      struct rdmig_mr *lmr, size_t len, const struct rdmig_rdesc *r, uint64_t roff,
                      uint64_t ctx)
{
	struct verbs_mr *vm = rdmig_container_of(lmr, struct verbs_mr, base);
	struct ibv_send_wr wr[VERBS_MAX_PARTS], *bad = NULL;
	struct ibv_sge sge[VERBS_MAX_PARTS];
	size_t parts = len ? (len - 1) / c->max_msg + 1 : 1;
	uint16_t idx;
	int ret;

	if (c->err)
		return c->err;
	if (parts > VERBS_MAX_PARTS)
		return -EMSGSIZE;
	if (r->key > UINT32_MAX)
		return -EINVAL;
	if (!c->nop_free || c->op_wrs + parts > c->max_ops)
		return -EAGAIN;
	idx = c->op_free[--c->nop_free];
	c->ops[idx].ctx = ctx;
	c->ops[idx].op = op;
	c->ops[idx].status = 0;
	for (size_t i = 0; i < parts; i++) {
		size_t at = i * c->max_msg, n = len - at < c->max_msg ? len - at : c->max_msg;

		sge[i].addr = (uintptr_t)(local + at);
		sge[i].length = (uint32_t)n;
		sge[i].lkey = vm->mr->lkey;
		memset(&wr[i], 0, sizeof(wr[i]));
		wr[i].wr_id = (uint64_t)VERBS_WR_OP << 32 | idx;
		wr[i].next = i + 1 < parts ? &wr[i + 1] : NULL;
		wr[i].sg_list = &sge[i];
		wr[i].num_sge = n ? 1 : 0;
		wr[i].opcode = opcode;
		wr[i].send_flags = IBV_SEND_SIGNALED;
		wr[i].wr.rdma.remote_addr = r->addr + roff + at;
		wr[i].wr.rdma.rkey = (uint32_t)r->key;
	}
	ret = ibv_post_send(c->id->qp, wr, &bad);
	if (ret) {
		size_t posted = bad ? (size_t)(bad - wr) : 0;

		pr_warn("ibv_post_send: %s", strerror(ret));
		if (!posted) {
			c->op_free[c->nop_free++] = idx;
			return -ret;
		}
		/* Half of it is out: fail the connection, so those parts flush and
		 * the op completes, with this error. */
		c->ops[idx].status = -ret;
		parts = posted;
		verbs_fail(c, -ECONNRESET, RDMIG_LOG_WARN, "a split operation half posted");
	}
	c->ops[idx].parts = (unsigned)parts;
	c->op_wrs += (unsigned)parts;
	if (c->inflight++ == 0)
		c->progress_seq++; /* the stall clock starts at this post */
	return 0;
}

static int verbs_post_read(struct rdmig_conn *base, void *local, struct rdmig_mr *lmr, size_t len,
                           const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	return verbs_post(rdmig_container_of(base, struct verbs_conn, base), IBV_WR_RDMA_READ,
	                  RDMIG_OP_READ, local, lmr, len, r, roff, ctx);
}

static int verbs_post_write(struct rdmig_conn *base, const void *local, struct rdmig_mr *lmr,
                            size_t len, const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx)
{
	/* ibv_sge has no const; the device only reads a WRITE's source */
	return verbs_post(rdmig_container_of(base, struct verbs_conn, base), IBV_WR_RDMA_WRITE,
	                  RDMIG_OP_WRITE, (char *)(uintptr_t)local, lmr, len, r, roff, ctx);
}

static int verbs_take_done(struct verbs_conn *c, struct rdmig_completion *out, int max)
{
	int n = 0;

	while (n < max && c->done_count) {
		uint16_t idx = c->done[c->done_head];

		c->done_head = (c->done_head + 1) % RDMIG_MAX_OUTSTANDING;
		c->done_count--;
		out[n].ctx = c->ops[idx].ctx;
		out[n].status = c->ops[idx].status;
		out[n].op = c->ops[idx].op;
		n++;
		c->op_free[c->nop_free++] = idx;
	}
	return n;
}

/* Fast path: one ibv_poll_cq, no syscall. Only an empty poll pays for
 * verbs_progress: always the first after a non-empty one (the caller is likely
 * about to sleep, and must find the CQ armed), then one in VERBS_IDLE_CHECK. */
static int verbs_poll(struct rdmig_conn *base, struct rdmig_completion *out, int max)
{
	struct verbs_conn *c = rdmig_container_of(base, struct verbs_conn, base);
	int n;

	if (c->done_count < (unsigned)max)
		(void)verbs_cq_drain(c, false);
	n = verbs_take_done(c, out, max);
	if (n == 0 && c->idle_polls++ % VERBS_IDLE_CHECK == 0) {
		verbs_progress(c);
		n = verbs_take_done(c, out, max);
	}
	if (n)
		c->idle_polls = 0;
	verbs_kick_update(c);
	return n;
}

/* A send slot is held until its CQE; with none free, wait for one up to
 * op_timeout_ms (a peer that never reposts receives keeps them all). */
static int verbs_send(struct rdmig_conn *base, const void *msg, size_t len)
{
	struct verbs_conn *c = rdmig_container_of(base, struct verbs_conn, base);
	int64_t deadline = verbs_deadline(c->op_timeout_ms);
	struct ibv_send_wr wr, *bad;
	struct ibv_sge sge;
	uint32_t idx;
	int ret = 0;

	if (len > RDMIG_MSG_MAX)
		return -EMSGSIZE;
	while (!c->nsend_free && !c->err) {
		verbs_progress(c);
		if (c->nsend_free || c->err)
			break;
		ret = verbs_wait(c, deadline);
		if (ret)
			goto out;
	}
	if (c->err) {
		ret = c->err;
		goto out;
	}
	idx = c->send_free[--c->nsend_free];
	memcpy(c->send_buf + (size_t)idx * RDMIG_MSG_MAX, msg, len);
	sge.addr = (uintptr_t)(c->send_buf + (size_t)idx * RDMIG_MSG_MAX);
	sge.length = (uint32_t)len;
	sge.lkey = c->send_mr->lkey;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = (uint64_t)VERBS_WR_SEND << 32 | idx;
	wr.sg_list = &sge;
	wr.num_sge = len ? 1 : 0;
	wr.opcode = IBV_WR_SEND;
	wr.send_flags = IBV_SEND_SIGNALED;
	ret = -ibv_post_send(c->id->qp, &wr, &bad);
	if (ret) {
		c->send_free[c->nsend_free++] = idx;
		pr_warn("ibv_post_send: %s", strerror(-ret));
	}
out:
	verbs_kick_update(c);
	return ret;
}

static int verbs_take_msg(struct verbs_conn *c, void *buf, size_t cap)
{
	struct verbs_msg *m = c->rq_head;
	uint32_t len = m->len;

	c->rq_head = m->next;
	if (!c->rq_head)
		c->rq_tail = NULL;
	c->rq_count--;
	if (len > cap) {
		verbs_fail(c, -ECONNRESET, RDMIG_LOG_WARN, "message longer than the buffer");
		verbs_msg_release(c, m);
		return -EMSGSIZE;
	}
	memcpy(buf, m->data, len);
	verbs_msg_release(c, m);
	return (int)len;
}

/* Messages that arrived before a failure are still delivered, then the error. */
static int verbs_recv(struct rdmig_conn *base, void *buf, size_t cap, int timeout_ms)
{
	struct verbs_conn *c = rdmig_container_of(base, struct verbs_conn, base);
	int64_t deadline = verbs_deadline(timeout_ms);
	int ret;

	for (;;) {
		if (c->rq_count) {
			ret = verbs_take_msg(c, buf, cap);
			break;
		}
		if (c->err) {
			ret = c->err;
			break;
		}
		verbs_progress(c);
		if (c->rq_count || c->err)
			continue;
		if (timeout_ms == 0) {
			ret = -EAGAIN;
			break;
		}
		ret = verbs_wait(c, deadline);
		if (ret)
			break;
	}
	verbs_kick_update(c);
	return ret;
}

/* DISCONNECTED waits on the connection's own rdma_cm channel until progress
 * reads it; messages it finds stay queued for recv. */
static int verbs_check(struct rdmig_conn *base)
{
	struct verbs_conn *c = rdmig_container_of(base, struct verbs_conn, base);

	if (!c->err)
		verbs_progress(c);
	verbs_kick_update(c);
	return c->err;
}

static int verbs_event_fd(struct rdmig_conn *base)
{
	return rdmig_container_of(base, struct verbs_conn, base)->epfd;
}

const struct rdmig_transport_ops rdmig_verbs_ops = {
    .size = sizeof(struct rdmig_transport_ops),
    .name = "verbs",
    .listen = verbs_listen,
    .local_port = verbs_local_port,
    .accept = verbs_accept,
    .close_listener = verbs_close_listener,
    .connect = verbs_connect,
    .close = verbs_close,
    .mr_reg = verbs_mr_reg,
    .mr_dereg = verbs_mr_dereg,
    .mr_desc = verbs_mr_desc,
    .post_read = verbs_post_read,
    .post_write = verbs_post_write,
    .poll = verbs_poll,
    .send = verbs_send,
    .recv = verbs_recv,
    .event_fd = verbs_event_fd,
    .check = verbs_check,
};
