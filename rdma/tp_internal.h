/*
 * What the transport wrappers (rdma/transport.c) and the backends share, and no
 * one else sees. A backend's own connection, listener and registration structs
 * start with these bases, so the wrappers can find the ops table and check bounds
 * without knowing the backend:
 *
 *     struct fabric_conn { struct rdmig_conn base; ...fabric's own state... };
 *
 * The backend fills base.addr/len/access of a registration; the wrappers fill
 * base.ops (and base.conn) after a successful call.
 */
#ifndef RDMIG_TP_INTERNAL_H
#define RDMIG_TP_INTERNAL_H

#include "rdmig/transport.h"

#include <stdatomic.h>

struct rdmig_listener {
	const struct rdmig_transport_ops *ops;
	struct rdmig_tp_opts opts; /* copy; token_file points into token_path */
	char token_path[4096];
};

struct rdmig_conn {
	const struct rdmig_transport_ops *ops;
	long live_mrs; /* registrations of this connection not yet deregistered */
	int injected;  /* fault injection failed this connection: -ECONNRESET from now on */
	atomic_bool messages_only;       /* rdmig_tp_messages_only() */
	_Atomic uint64_t serve_until_ns; /* rdmig_tp_serve_soon(), CLOCK_MONOTONIC */
};

struct rdmig_mr {
	const struct rdmig_transport_ops *ops;
	struct rdmig_conn *conn;
	void *addr;
	size_t len;
	unsigned access;
};

#define rdmig_container_of(ptr, type, member)                                                      \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* op_timeout_ms with its default applied */
static inline int rdmig_opts_op_timeout(const struct rdmig_tp_opts *o)
{
	return o && o->op_timeout_ms > 0 ? o->op_timeout_ms : 10000;
}

/* Split "host:port" / "[v6]:port" into host and port. 0 or -EINVAL. */
int rdmig_split_hostport(const char *hostport, char *host, size_t hostcap, char *port,
                         size_t portcap);

#endif /* RDMIG_TP_INTERNAL_H */
