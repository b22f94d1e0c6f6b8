/*
 * The source's page walk after the resume (src/parts.c): post-copy without pulled
 * rounds captures the process without walking its anonymous mappings (they go
 * out held, rdmig/image.h's RDMIG_VMA_F_HELD), and walks and copies them here,
 * part by part, while the process already runs on the destination and its
 * faults on those pages wait. Each part walked is one PART message (proto.h).
 */
#ifndef RDMIG_SRC_PARTS_H
#define RDMIG_SRC_PARTS_H

#include "rdmig/image.h"
#include "rdmig/precopy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Pages per part: 64 MiB, about 0.1-0.4 ms of walk and one 2 KiB bitmap. */
#define RDMIG_PART_PAGES 16384u

struct rdmig_parts;

/* The parts of img's held vmas (none: *out NULL and 0). pid: the frozen
 * process, whose pagemap is read. img must outlive the object. */
int rdmig_parts_create(pid_t pid, struct rdmig_image *img, struct rdmig_parts **out);
void rdmig_parts_free(struct rdmig_parts *ps);

/* Walk the part holding source address addr next (a fault waits there). An
 * address outside every held part, or in one walked already, changes nothing. */
void rdmig_parts_want(struct rdmig_parts *ps, uint64_t addr);

/* Walk and copy the next part (wanted ones first, then in address order) and
 * encode its PART message into msg (cap bytes). Returns the message's length,
 * 0 when every part is walked, or -errno. */
int rdmig_parts_next(struct rdmig_parts *ps, struct rdmig_precopy *pc, uint8_t *msg, size_t cap);

/* The PART message of walked part i again (a destination that reconnected may
 * have lost it): its length, 0 past the last walked part, or -errno. */
int rdmig_parts_again(struct rdmig_parts *ps, uint32_t i, uint8_t *msg, size_t cap);

/* Parts walked, parts in all, walked first because a fault asked (WANT) or a
 * register pointed there, pages with data found, and the walk's time. */
struct rdmig_parts_stats {
	uint32_t walked, total, wanted, hinted;
	uint64_t pages, walk_ns;
};
void rdmig_parts_stats(const struct rdmig_parts *ps, struct rdmig_parts_stats *out);

#endif /* RDMIG_SRC_PARTS_H */
