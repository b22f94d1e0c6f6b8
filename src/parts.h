/*
 * The source's page walk outside the freeze (src/parts.c): post-copy without
 * pulled rounds captures the process without walking its anonymous mappings
 * (they go out held, rdmig/image.h's RDMIG_VMA_F_HELD), and walks and copies
 * them here, part by part, from the moment the image is sent: while the
 * destination restores, and after the resume while the process runs there and
 * its faults on pages not released yet wait. Each part walked is one PART
 * message (proto.h).
 */
#ifndef RDMIG_SRC_PARTS_H
#define RDMIG_SRC_PARTS_H

#include "rdmig/image.h"
#include "rdmig/precopy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Pages per part: 64 MiB, about 0.1-0.4 ms of walk and one 2 KiB bitmap. */
#define RDMIG_PART_PAGES 16384u
/* Pages per step of a part's walk: 256 KiB, the finest grain at which a walk
 * can stop to look at the connection. A part's walk copies the pages written
 * since their last copy, which for a process that writes faster than the
 * settling rounds copy is most of them (32 MiB of a 64 MiB part: 10-30 ms on
 * memory slow to write); walked whole, a READY or a WANT that came meanwhile
 * waited that long, and 4 MiB steps still cost the switch 1-2 ms here. A
 * multiple of 8 (a bitmap byte). */
#define RDMIG_PART_STEP_PAGES 64u

struct rdmig_parts;

/* The parts of img's held vmas (none: *out NULL and 0). pid: the frozen
 * process, whose pagemap is read. img must outlive the object; its vmas must
 * not change. */
int rdmig_parts_create(pid_t pid, struct rdmig_image *img, struct rdmig_parts **out);
void rdmig_parts_free(struct rdmig_parts *ps);

/* The capture is complete (rdmig_parts_create may run inside it, in its idle
 * time, before the threads' registers and the eager pages are in img): the
 * parts the registers point into go first, and the eager pages (the restore
 * writes them) lose their touched bits in the parts walked already. */
void rdmig_parts_captured(struct rdmig_parts *ps);

/* Walk the part holding source address addr next (a fault waits there). An
 * address outside every held part, or in one walked already, changes nothing. */
void rdmig_parts_want(struct rdmig_parts *ps, uint64_t addr);

/* The PAGES answer to a WANT for source address addr, encoded into msg (cap
 * bytes): the RDMIG_PAGES_MAX-page window holding addr (within its mapping), read
 * from the frozen process itself, not from the mirror (whose copy may be older),
 * pages not present there sent as zero. Its length; 0 when addr is in no held
 * part or in one sent already (its PART answered); -errno when the process could
 * not be read. */
int rdmig_parts_pages(struct rdmig_parts *ps, uint64_t addr, uint8_t *msg, size_t cap);

/* Whether a part a fault asked for (or the registers named) waits to be walked. */
bool rdmig_parts_wanted(struct rdmig_parts *ps);

/* Walk and copy the next RDMIG_PART_STEP_PAGES of the parts (the part begun
 * first, then wanted ones, then in address order), and further steps of the
 * same part while budget_ns have not passed. Returns 1 when a step was
 * walked, 0 when every part is, or -errno. A part is walked with its last
 * step; a walked part waits for rdmig_parts_take: the walk runs ahead of what
 * may be sent (before the switch, the destination reads nothing until its
 * pager runs). */
int rdmig_parts_walk(struct rdmig_parts *ps, struct rdmig_precopy *pc, uint64_t budget_ns);

/* The PART message of the oldest walked part not taken yet, encoded into msg
 * (cap bytes) and counted as sent: its length, 0 when none waits, or -errno.
 * The one that completes the walk carries RDMIG_PART_LAST. */
int rdmig_parts_take(struct rdmig_parts *ps, uint8_t *msg, size_t cap);

/* The PART message of taken part i again (a destination that reconnected may
 * have lost it): its length, 0 past the last taken part, or -errno. */
int rdmig_parts_again(struct rdmig_parts *ps, uint32_t i, uint8_t *msg, size_t cap);

/* Parts walked, taken (sent), in all, walked first because a fault asked
 * (WANT) or a register pointed there, pages with data found, and the walk's
 * time. */
struct rdmig_parts_stats {
	uint32_t walked, taken, total, wanted, hinted, answered;
	uint64_t pages, walk_ns;
};
void rdmig_parts_stats(const struct rdmig_parts *ps, struct rdmig_parts_stats *out);

#endif /* RDMIG_SRC_PARTS_H */
