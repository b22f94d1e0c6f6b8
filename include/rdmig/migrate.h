/*
 * The two sides of a migration, as the rdma_migrate command runs them
 * (src/migrate_src.c, src/migrate_dst.c; the message flow is in rdmig/proto.h).
 *
 * Each side is one state machine; every transition goes through one function
 * that checks the old state and logs the change. Exit statuses (both sides):
 */
#ifndef RDMIG_MIGRATE_H
#define RDMIG_MIGRATE_H

#include "rdmig/transport.h"

#include <stdbool.h>
#include <sys/types.h>

enum rdmig_exit {
	RDMIG_EXIT_OK = 0,          /* migrated: the process runs on the destination, every
				    * page is local, the original is gone */
	RDMIG_EXIT_ROLLED_BACK = 1, /* failed before the switch: the original runs on
				     * the source as if nothing happened */
	RDMIG_EXIT_USAGE = 2,       /* bad options, or a process this version refuses:
				    * nothing was touched */
	RDMIG_EXIT_FAILED = 3,      /* failed after the switch: see the message. The
				    * source leaves the original stopped (never two
				    * copies running); the destination's process waits
				    * on its missing pages (never wrong data) */
};

/* src --mode */
enum rdmig_mode {
	RDMIG_MODE_POSTCOPY = 0, /* freeze after one copy; the destination pages on demand */
	RDMIG_MODE_PRECOPY,      /* rounds until the dirty set converges, then every page
				  * reaches the destination before the process runs */
	RDMIG_MODE_HYBRID,       /* pre-copy rounds into the destination's arena while
				  * they pay off, then post-copy for what is left */
};

struct rdmig_migrate_opts {
	struct rdmig_tp_opts tp;
	const char *addr;       /* src: --to; dst: --listen */
	pid_t pid;              /* src */
	enum rdmig_mode mode;   /* src */
	const char *stdio[3];   /* dst: --stdin/--stdout/--stderr (NULL: the daemon's own) */
	const char *stats_json; /* both: write the summary here as JSON (NULL: none) */
	bool wait;              /* dst: after the migration, wait for the process to exit and
			     * report its status */
	bool no_prefetch;       /* dst: demand faults only */
	int timeout_ms;         /* connect/accept and each step's wait; 0: defaults */
	int retry_ms;           /* after the switch, how long a lost link is waited for (the
				 * source reconnects, the destination's faults wait); 0: never */
};

/* Run one side; returns an enum rdmig_exit. */
int rdmig_src_run(const struct rdmig_migrate_opts *o);
int rdmig_dst_run(const struct rdmig_migrate_opts *o);

#endif /* RDMIG_MIGRATE_H */
