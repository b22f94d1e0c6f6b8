/*
 * Which pages of a mapping hold data (src/pagescan.c): the capture's walk of
 * /proc/PID/pagemap at the freeze, the one part of the freeze that grows with
 * the process's memory.
 */
#ifndef RDMIG_PAGESCAN_H
#define RDMIG_PAGESCAN_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Mark in bits (bit i: page start + i*4096, zeroed by the caller) the pages of
 * [start, end) with data of their own: present or swapped, not the zero page,
 * and, with anon_only, not file pages; *count is how many. With written (same
 * layout), also those of them PAGEMAP_SCAN calls written (no uffd-wp bit:
 * written since write-tracking protected them, or never tracked);
 * *written_known is false when the kernel could not say (no PAGEMAP_SCAN,
 * before 6.7: the pagemap entries are read instead). pm_fd: /proc/PID/pagemap.
 * A mapping of 256 MiB or more is split between the helpers, when they run.
 * Returns 0 or -errno.
 */
int rdmig_pagescan(int pm_fd, uint64_t start, uint64_t end, bool anon_only, uint8_t *bits,
                   uint64_t *count, uint8_t *written, bool *written_known);

/*
 * Helper threads for rdmig_pagescan, started ahead of the freeze: starting a
 * thread costs about as much here as it would save on a walk of 1 GiB (~0.5 ms
 * in a PVM guest); handing a part to a waiting one is a condition variable's
 * wake-up. One per CPU but one, at
 * most 3; they block every signal and wait on a condition variable, and each
 * walk keeps them off the CPU of the thread that asked for it. Returns how
 * many run (0 on one CPU, or when none could start: the walk goes alone). Start
 * and stop from one thread; stop is idempotent and joins them.
 */
int rdmig_pagescan_helpers_start(void);
void rdmig_pagescan_helpers_stop(void);

#endif
