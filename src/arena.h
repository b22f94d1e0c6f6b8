/*
 * The destination's arena (src/arena.c): pages pulled from the source's mirror
 * before the switch, in the pre-copy and hybrid modes, laid out like the source's
 * tracked ranges, with one bit per page saying the copy is current. After the
 * switch the fault loop installs current pages from here without a fetch
 * (hybrid), or they are written into the process before it runs (pre-copy).
 *
 * Also the one helper both modes use to fetch runs of pages through a page
 * source and hand each page to a callback.
 *
 * Used by the destination's main thread only, before the pager starts.
 */
#ifndef RDMIG_ARENA_H
#define RDMIG_ARENA_H

#include "rdmig/pager.h"
#include "rdmig/proto.h"
#include "rdmig/transport.h"

#include <stdbool.h>
#include <stdint.h>

struct rdmig_arena;

/* Buffers for every region of the pre-copy table and a page source to pull with. */
RDMIG_WUR int rdmig_arena_create(struct rdmig_conn *data, const struct rdmig_region *pre,
                                 uint32_t n, struct rdmig_arena **out);
/* Pull the pages of one RUNS message (a round) into the arena. */
RDMIG_WUR int rdmig_arena_pull(struct rdmig_arena *a, const struct rdmig_msg *runs, int timeout_ms);
/* A FINAL RUNS message: those pages changed after their last pull. */
void rdmig_arena_stale(struct rdmig_arena *a, const struct rdmig_msg *runs);
/* The current copy of the page at addr, or NULL. */
const uint8_t *rdmig_arena_page(const struct rdmig_arena *a, uint64_t addr);
/* Region i: [*start, *start + *len) at *base; 0, or -ENOENT past the last. */
int rdmig_arena_region(const struct rdmig_arena *a, uint32_t i, uint64_t *start, uint64_t *len,
                       const void **base);
/* Pages pulled in all (a page pulled twice counts twice). */
uint64_t rdmig_arena_pulled(const struct rdmig_arena *a);
/* The pull source goes (the pager makes its own on the same connection). */
void rdmig_arena_drop_source(struct rdmig_arena *a);
/* Its connection is going: its source's registration goes now (pulls still
 * outstanding land in the source's staging until the connection is closed,
 * which destroy frees after). Harmless twice, or without a source. */
void rdmig_arena_retire(struct rdmig_arena *a);
void rdmig_arena_destroy(struct rdmig_arena *a);

/* Fetch every page of runs through src, calling fn(arg, addr, data) for each as it
 * lands (data: one page, valid during the call). Waits up to timeout_ms for each
 * completion. 0, or the first failure (-errno). */
typedef int (*rdmig_page_fn)(void *arg, uint64_t addr, const void *data);
RDMIG_WUR int rdmig_fetch_runs(struct rdmig_page_source *src, const struct rdmig_run *runs,
                               uint32_t n, rdmig_page_fn fn, void *arg, int timeout_ms);

#endif
