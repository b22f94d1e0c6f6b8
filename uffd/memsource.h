/*
 * A page source serving pages from buffers in this process: the test double for
 * the transport-backed source, and the "local floor" of the fault benchmarks.
 *
 * Fetches complete on a worker thread after an optional delay (each fetch is due
 * delay_us after it was posted; many are outstanding at once, as on a network),
 * or inside fetch() itself in inline mode. Injected faults: after the first N
 * fetches, every further fetch fails with a status, or is never answered.
 */
#ifndef RDMIG_UFFD_MEMSOURCE_H
#define RDMIG_UFFD_MEMSOURCE_H

#include "rdmig/pager.h"

#include <stdbool.h>
#include <stdint.h>

struct rdmig_memsource_opts {
	unsigned staging;  /* fetches outstanding at once (staging buffers); 0: 256 */
	size_t max_fetch;  /* largest fetch in bytes; 0: one page */
	unsigned delay_us; /* completion delay of every fetch */
	/* Complete inside fetch(), no worker thread (delay_us must be 0): what the
	 * loop costs with a source that costs nothing but a memcpy. */
	bool inline_completion;
};

enum rdmig_memsource_inject {
	RDMIG_MEMSOURCE_HEALTHY = 0,
	RDMIG_MEMSOURCE_FAIL,  /* fetches after the first N complete with a status */
	RDMIG_MEMSOURCE_STALL, /* fetches after the first N never complete */
};

RDMIG_PAGER_WUR int rdmig_memsource_create(const struct rdmig_memsource_opts *o,
                                           struct rdmig_page_source **out);
/* Serve source addresses [addr, addr+len) from data (not copied: must stay valid
 * until destroy). */
RDMIG_PAGER_WUR int rdmig_memsource_add_region(struct rdmig_page_source *s, uint64_t addr,
                                               const void *data, uint64_t len);
/* From now on, fetches numbered >= after (counting every fetch accepted since
 * creation, from 0) fail with status (-EIO if 0) or stall. */
void rdmig_memsource_inject(struct rdmig_page_source *s, enum rdmig_memsource_inject mode,
                            uint64_t after, int status);
void rdmig_memsource_set_delay(struct rdmig_page_source *s, unsigned delay_us);
/* Fetches accepted so far, and how many of them are still outstanding. */
uint64_t rdmig_memsource_fetches(struct rdmig_page_source *s);
unsigned rdmig_memsource_outstanding(struct rdmig_page_source *s);
/* The source address of the i-th fetch accepted (from 0), for the first
 * RDMIG_MEMSOURCE_LOGGED; UINT64_MAX for one not made (or not logged). */
#define RDMIG_MEMSOURCE_LOGGED 64u
uint64_t rdmig_memsource_fetched(struct rdmig_page_source *s, unsigned i);

#endif /* RDMIG_UFFD_MEMSOURCE_H */
