/*
 * The transport seam: everything rdmig moves between hosts goes through this.
 *
 * A transport gives
 *   - connections, made by host:port (listen/accept on one side, connect on the
 *     other), authenticated with a shared secret before the caller sees them;
 *   - memory registration, returning a small descriptor (struct rdmig_rdesc) that
 *     the owner sends to its peer so the peer can reach that memory;
 *   - one-sided READ and WRITE against a peer's descriptor, many outstanding,
 *     each completion carrying the caller's context back;
 *   - two-sided messages (send/recv) for control traffic;
 *   - a pollable fd, so a caller can sleep until completions or messages arrive.
 *
 * Backends: "verbs" (rdma/verbs.c: librdmacm + libibverbs RC QP) and "fabric"
 * (rdma/fabric.c: libfabric FI_EP_MSG + FI_RMA, tcp provider by default). A backend
 * fills a struct rdmig_transport_ops; callers use only the rdmig_tp_* functions
 * below, which check arguments, run the authentication handshake, and keep the
 * count of live objects that tests use to prove nothing leaks.
 *
 * Threading: a connection, its registrations and its completions are used by one
 * thread at a time (the caller serialises). The backend may run threads of its own
 * (libfabric's tcp provider needs one to serve a peer's one-sided operations while
 * the caller is busy elsewhere); callers never see them.
 *
 * Errors: 0 (or a count) on success, -errno on failure, never anything else.
 */
#ifndef RDMIG_TRANSPORT_H
#define RDMIG_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define RDMIG_WUR __attribute__((warn_unused_result))

struct rdmig_listener; /* a passive endpoint waiting for peers */
struct rdmig_conn;     /* a connected, authenticated endpoint */
struct rdmig_mr;       /* a local registration on one connection */

/* Largest control message send/recv carry (bytes). */
#define RDMIG_MSG_MAX 65536u
/* Most one-sided operations a connection keeps in flight; posts beyond it get -EAGAIN. */
#define RDMIG_MAX_OUTSTANDING 256u
/* Largest single one-sided operation (bytes). */
#define RDMIG_MAX_XFER (16u << 20)

enum rdmig_op {
	RDMIG_OP_READ = 1,
	RDMIG_OP_WRITE = 2,
};

/* Access the peer is granted to a registration (local access is always granted). */
enum rdmig_access {
	RDMIG_ACCESS_REMOTE_READ = 1u << 0,
	RDMIG_ACCESS_REMOTE_WRITE = 1u << 1,
};

/* What a peer needs to address a registration: sent to it as is (16+8 bytes). */
struct rdmig_rdesc {
	uint64_t addr; /* base the backend addresses the region by */
	uint64_t len;  /* length in bytes */
	uint64_t key;  /* remote key */
};

struct rdmig_completion {
	uint64_t ctx; /* the caller's context from the post */
	int status;   /* 0, or -errno: -EREMOTEIO (peer refused: bad key, out of
			* bounds), -ECONNRESET (connection lost), -ETIMEDOUT (peer silent
			* for op_timeout_ms), -ECANCELED (connection closed locally) */
	uint32_t op;  /* enum rdmig_op */
};

struct rdmig_tp_opts {
	const char *transport;    /* "fabric" (default) or "verbs" */
	const char *provider;     /* fabric: libfabric provider name ("tcp" default, "verbs");
				* verbs: ignored */
	const char *token_file;   /* shared secret both sides hold (mode 0600, >= 16 bytes) */
	int op_timeout_ms;        /* an outstanding operation with no word from the peer
				 * for this long fails the connection; 0 = 10000 */
	int handshake_timeout_ms; /* 0 = 5000 */
};

/* The ops table a backend provides. Every member must be set; a backend that
 * cannot do something returns -EOPNOTSUPP from it. Only the rdmig_tp_* wrappers
 * call these, after checking their arguments. */
struct rdmig_transport_ops {
	size_t size; /* sizeof(struct rdmig_transport_ops), checked at registration */
	const char *name;

	/* Bind and listen on host:port ("0.0.0.0:7471", "[::1]:7471"; port 0 picks one,
	 * see local_port). */
	int (*listen)(const struct rdmig_tp_opts *o, const char *hostport,
	              struct rdmig_listener **out);
	/* The port the listener is bound to (host order), or -errno. */
	int (*local_port)(struct rdmig_listener *l);
	/* Wait up to timeout_ms (-1: forever) for one peer and return it connected
	 * but not yet authenticated. -ETIMEDOUT when none came. */
	int (*accept)(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn **out);
	void (*close_listener)(struct rdmig_listener *l);

	/* Connect to host:port within timeout_ms; -ECONNREFUSED, -ETIMEDOUT, ... */
	int (*connect)(const struct rdmig_tp_opts *o, const char *hostport, int timeout_ms,
	               struct rdmig_conn **out);
	/* Tear down: outstanding operations are abandoned (their buffers must stay valid
	 * until this returns), registrations of this connection must already be gone. */
	void (*close)(struct rdmig_conn *c);

	/* Register [addr, addr+len) for this connection; the peer may access it as
	 * 'access' allows once it has the descriptor. */
	int (*mr_reg)(struct rdmig_conn *c, void *addr, size_t len, unsigned access,
	              struct rdmig_mr **out);
	/* After this returns the peer can no longer reach the memory: its operations
	 * against the old descriptor fail. */
	int (*mr_dereg)(struct rdmig_mr *mr);
	void (*mr_desc)(const struct rdmig_mr *mr, struct rdmig_rdesc *out);

	/* Start a one-sided READ of len bytes at remote offset roff of r into local
	 * (inside lmr), or a WRITE from local. Returns 0 once posted; the result comes
	 * later from poll with ctx. -EAGAIN: too many outstanding, poll first.
	 * Bounds are checked by the wrapper against r->len and lmr; the peer's
	 * transport enforces them again against its real registration. */
	int (*post_read)(struct rdmig_conn *c, void *local, struct rdmig_mr *lmr, size_t len,
	                 const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx);
	int (*post_write)(struct rdmig_conn *c, const void *local, struct rdmig_mr *lmr, size_t len,
	                  const struct rdmig_rdesc *r, uint64_t roff, uint64_t ctx);
	/* Take up to max finished operations, never blocking. Returns how many. */
	int (*poll)(struct rdmig_conn *c, struct rdmig_completion *out, int max);

	/* Send one control message (copied; len <= RDMIG_MSG_MAX). Returns once the
	 * message is handed to the transport; a lost connection shows up on recv. */
	int (*send)(struct rdmig_conn *c, const void *msg, size_t len);
	/* Receive one control message into buf, waiting up to timeout_ms (0: don't
	 * wait, -1: forever). Returns its length; -EAGAIN (timeout_ms == 0, none
	 * yet), -ETIMEDOUT, -EMSGSIZE (longer than cap: the connection is failed),
	 * -ECONNRESET (peer gone). */
	int (*recv)(struct rdmig_conn *c, void *buf, size_t cap, int timeout_ms);

	/* An fd that turns readable when poll or recv may have something. After it
	 * fires, call poll/recv until they return nothing, then sleep on it again. */
	int (*event_fd)(struct rdmig_conn *c);

	/* Optional (NULL: nothing to do): rdmig_tp_serve_soon() was called; wake
	 * whatever sleeps in the backend so it sees the new deadline. */
	void (*serve_soon)(struct rdmig_conn *c);

	/* Whether the connection still stands, looking at what the transport has
	 * heard without taking any message: 0, or the error that broke it
	 * (-ECONNRESET: the peer went). Messages that came stay for recv. */
	int (*check)(struct rdmig_conn *c);
};

/* The backends linked into this build. */
extern const struct rdmig_transport_ops rdmig_fabric_ops;
extern const struct rdmig_transport_ops rdmig_verbs_ops;

/* Find a backend by name ("fabric", "verbs"); NULL when unknown. */
const struct rdmig_transport_ops *rdmig_tp_find(const char *name);

/* Listen; connections accepted from it are authenticated with o->token_file. */
RDMIG_WUR int rdmig_tp_listen(const struct rdmig_tp_opts *o, const char *hostport,
                              struct rdmig_listener **out);
RDMIG_WUR int rdmig_tp_local_port(struct rdmig_listener *l);
/* Accept one peer and authenticate it. A peer that fails the handshake is
 * disconnected and -EACCES returned (the listener stays usable). */
RDMIG_WUR int rdmig_tp_accept(struct rdmig_listener *l, int timeout_ms, struct rdmig_conn **out);
/* The same, for a second connection of a peer already connected on watch: the
 * wait ends early, with watch's error, once watch breaks (a peer that went
 * away between its two connects is not waited for until timeout_ms). Counted as
 * one accept by fault injection. */
RDMIG_WUR int rdmig_tp_accept_next(struct rdmig_listener *l, int timeout_ms,
                                   struct rdmig_conn *watch, struct rdmig_conn **out);
void rdmig_tp_close_listener(struct rdmig_listener *l);
/* Connect and authenticate; -EACCES when the peer does not prove the secret. */
RDMIG_WUR int rdmig_tp_connect(const struct rdmig_tp_opts *o, const char *hostport, int timeout_ms,
                               struct rdmig_conn **out);
void rdmig_tp_close(struct rdmig_conn *c);

RDMIG_WUR int rdmig_tp_mr_reg(struct rdmig_conn *c, void *addr, size_t len, unsigned access,
                              struct rdmig_mr **out);
int rdmig_tp_mr_dereg(struct rdmig_mr *mr);
void rdmig_tp_mr_desc(const struct rdmig_mr *mr, struct rdmig_rdesc *out);

RDMIG_WUR int rdmig_tp_post_read(struct rdmig_conn *c, void *local, struct rdmig_mr *lmr,
                                 size_t len, const struct rdmig_rdesc *r, uint64_t roff,
                                 uint64_t ctx);
RDMIG_WUR int rdmig_tp_post_write(struct rdmig_conn *c, const void *local, struct rdmig_mr *lmr,
                                  size_t len, const struct rdmig_rdesc *r, uint64_t roff,
                                  uint64_t ctx);
RDMIG_WUR int rdmig_tp_poll(struct rdmig_conn *c, struct rdmig_completion *out, int max);
/* Wait up to timeout_ms for at least one completion; returns how many were taken. */
RDMIG_WUR int rdmig_tp_wait(struct rdmig_conn *c, struct rdmig_completion *out, int max,
                            int timeout_ms);
int rdmig_tp_send(struct rdmig_conn *c, const void *msg, size_t len);
RDMIG_WUR int rdmig_tp_recv(struct rdmig_conn *c, void *buf, size_t cap, int timeout_ms);
int rdmig_tp_event_fd(struct rdmig_conn *c);
/* Whether c still stands (its ops' check): 0 or the error that broke it; never
 * takes a message. */
int rdmig_tp_check(struct rdmig_conn *c);
/* The peer only exchanges messages on c: it never reads or writes memory
 * registered here. A hint for the backend, off by default: fabric's progress
 * thread then no longer polls on after traffic (it does so to serve a peer's
 * READs without a wake-up each; after each message it only burned a CPU). Any
 * thread, any time. */
void rdmig_tp_messages_only(struct rdmig_conn *c);
/* The peer is about to read or write memory registered here (a resumed
 * process's first faults): for the next ms milliseconds, serve it without
 * sleeping between its operations. A hint: fabric's progress thread polls,
 * yielding, until then (or until it finds its CPU wanted elsewhere), where it
 * would sleep until the first operation woke it (0.25-0.5 ms on this guest when
 * its vCPU had gone idle). Any thread, any time; verbs serves in hardware. */
void rdmig_tp_serve_soon(struct rdmig_conn *c, int ms);
const char *rdmig_tp_name(const struct rdmig_conn *c);

/* Live objects made through these wrappers in this process (tests use these to
 * prove that nothing leaks). */
struct rdmig_tp_counts {
	long listeners, conns, mrs;
};
void rdmig_tp_counts(struct rdmig_tp_counts *out);

#endif /* RDMIG_TRANSPORT_H */
