/*
 * The page source that fetches a target's pages from the source host's mirror
 * with one-sided READs (src/tpsource.c). The mirror side publishes its regions
 * with a REGIONS message; the fault loop on this side uses the source through
 * the page-source interface of rdmig/pager.h.
 */
#ifndef RDMIG_TPSOURCE_H
#define RDMIG_TPSOURCE_H

#include "rdmig/pager.h"
#include "rdmig/proto.h"
#include "rdmig/transport.h"

#include <stdbool.h>

struct rdmig_tpsource_opts {
	struct rdmig_conn *conn;            /* authenticated, not owned: outlives the source */
	const struct rdmig_region *regions; /* the peer's table: id = target address */
	uint32_t nregions;
	unsigned slots;   /* fetches in flight at most; 0: 128 (<= RDMIG_MAX_OUTSTANDING) */
	size_t slot_size; /* largest fetch; a multiple of 4096; 0: 64 KiB */
	/* NULL: the source maps its own staging. Else one from
	 * rdmig_tpsource_staging_new (default slots and slot size only), which the
	 * caller frees after the source is destroyed. */
	void *staging;
};

/* A staging buffer for a source with the default slots, its first slots (the only
 * ones in use, in practice) faulted in now. Made ahead, while the source host is
 * still copying, it keeps those page faults out of the process's first waits
 * after the switch. NULL when it cannot be mapped (the source maps its own). */
void *rdmig_tpsource_staging_new(void);
void rdmig_tpsource_staging_free(void *staging);

/* Copies and checks the table (overlapping or wrapping regions: -EBADMSG) and
 * registers the staging buffer on the connection. */
RDMIG_WUR int rdmig_tpsource_create(const struct rdmig_tpsource_opts *o,
                                    struct rdmig_page_source **out);
/* Is p inside this source's staging? (Which source a completion's data came from,
 * when a connection was replaced.) */
bool rdmig_tpsource_owns(struct rdmig_page_source *s, const void *p);
/* Its connection is going: deregister the staging now (before the connection is
 * closed); fetches fail with -ENOTCONN from now on, polls find nothing; releases
 * still work. */
void rdmig_tpsource_retire(struct rdmig_page_source *s);
/* Fetches completed successfully (neighbours share one READ) and their bytes. */
void rdmig_tpsource_stats(struct rdmig_page_source *s, uint64_t *fetches, uint64_t *bytes);

#endif
