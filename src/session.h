/*
 * Which migration a connection belongs to (src/session.c). The source draws a
 * random id when it starts and sends it first on every connection it makes,
 * the first ones and those it makes again after a lost link. The destination
 * learns it from its first control connection and from then on takes only
 * connections that carry it.
 *
 * Authentication says a peer holds the token, not that it is the source of
 * this migration: two sources sharing a token can reach one destination. One
 * that waited for its own source to come back (--retry-s) took the first
 * source to connect for it, and fed its process the other one's pages (seen:
 * the process killed by SIGSEGV). Pairing the data connection with the
 * control one needs the same check.
 */
#ifndef RDMIG_SRC_SESSION_H
#define RDMIG_SRC_SESSION_H

#include "rdmig/proto.h"
#include "rdmig/transport.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rdmig_session {
	uint64_t id[2];
};

/* What the destination says to the source of another migration, and to a
 * source coming back to a destination that never had its migration (one
 * started anew on the same port). */
#define RDMIG_SESSION_BUSY_TEXT "this destination serves another migration"
#define RDMIG_SESSION_UNKNOWN_TEXT                                                                 \
	"this destination has no migration to take back (was it started anew?)"

/* A new random id. 0 / -errno. */
RDMIG_WUR int rdmig_session_new(struct rdmig_session *s);

static inline bool rdmig_session_eq(const struct rdmig_session *a, const struct rdmig_session *b)
{
	return a->id[0] == b->id[0] && a->id[1] == b->id[1];
}

/* SESSION on c with flags (RDMIG_SESSION_RETURNING: a source coming back
 * after a lost link): the source's on a data connection (no answer comes), the
 * destination's answer taking a control connection. 0 / -errno. */
RDMIG_WUR int rdmig_session_send(struct rdmig_conn *c, const struct rdmig_session *s,
                                 unsigned flags);

/* Source, on a control connection: SESSION, then the destination's answer
 * within timeout_ms. 0: taken. -EBUSY: it serves another migration; -ESRCH:
 * it has none to take back (their words in why). Another -errno: the
 * connection failed or the answer was wrong. */
RDMIG_WUR int rdmig_session_offer(struct rdmig_conn *c, const struct rdmig_session *s,
                                  unsigned flags, int timeout_ms, char *why, size_t cap);

/* Destination: the first message on c, which must be SESSION, within
 * timeout_ms: its id and flags. 0 / -errno (-EPROTO: something else came). */
RDMIG_WUR int rdmig_session_recv(struct rdmig_conn *c, int timeout_ms, struct rdmig_session *got,
                                 unsigned *flags);

#endif
