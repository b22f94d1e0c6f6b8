/*
 * The serving side of post-copy paging (src/mirror.c): memory laid out like the
 * target's, registered on the connection, and its table sent to the peer, which
 * then reads what it needs with one-sided READs and never asks again. Also the
 * receiving side of that table.
 */
#ifndef RDMIG_MIRROR_H
#define RDMIG_MIRROR_H

#include "rdmig/proto.h"
#include "rdmig/transport.h"

struct rdmig_mirror_region {
	uint64_t id; /* the target address the first byte mirrors */
	void *base;  /* the mirror's memory in this process */
	size_t len;
};

struct rdmig_mirror;

/* Register every region (read-only to the peer) and send the table (REGIONS).
 * Nothing is sent unless every registration succeeded. */
RDMIG_WUR int rdmig_mirror_publish(struct rdmig_conn *c, const struct rdmig_mirror_region *r,
                                   uint32_t n, struct rdmig_mirror **out);
/* The same in two steps, for a mirror that is registered long before its final
 * table is known (the migration source registers while the target runs and
 * sends the table at the freeze): create, register buffers with add(), then send
 * a table of views, each a part of one registered buffer. */
struct rdmig_mirror_view {
	uint64_t id;     /* the target address the view's first byte mirrors */
	uint32_t reg;    /* index returned by rdmig_mirror_add */
	size_t off, len; /* inside that registration */
};
RDMIG_WUR int rdmig_mirror_create(struct rdmig_conn *c, struct rdmig_mirror **out);
RDMIG_WUR int rdmig_mirror_add(struct rdmig_mirror *m, void *base, size_t len, uint32_t *reg);
/* A mirror created with no connection (c NULL) only notes the buffers add()
 * is given; this registers them all on c, and later ones as they are added.
 * The source fills its mirror while its connections are still being made
 * (libfabric's start alone took 0.1 s here). -EALREADY when m has one. */
RDMIG_WUR int rdmig_mirror_attach(struct rdmig_mirror *m, struct rdmig_conn *c);
RDMIG_WUR int rdmig_mirror_send(struct rdmig_mirror *m, const struct rdmig_mirror_view *v,
                                uint32_t n);

/* Deregister everything: the peer's READs against it fail from now on. */
void rdmig_mirror_release(struct rdmig_mirror *m);

/* Wait for the peer's table; *out is malloc'd (free it), *n its length. */
RDMIG_WUR int rdmig_mirror_recv_table(struct rdmig_conn *c, int timeout_ms,
                                      struct rdmig_region **out, uint32_t *n);

#endif
