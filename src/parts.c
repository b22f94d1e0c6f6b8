/*
 * The source's page walk outside the freeze (parts.h).
 *
 * Why: the capture's walk of the anonymous mappings (which pages hold data,
 * which were written since the last round) was the one part of the freeze that
 * grows with the process: ~1.4 ms per GiB here, 5-7 ms of a 4 GiB process's
 * 11-21 ms. Done outside the capture, a part at a time, the freeze no longer
 * depends on the size: the walk starts once the image is sent and runs while
 * the destination restores (where the source would only wait for READY), then
 * on after the resume; the price is that a fault on a page not released yet
 * waits for its part's walk and copy (0.1-0.4 ms for 64 MiB), and the part a
 * fault waits on is walked next (WANT).
 *
 * The process stays frozen here until the destination has every page, so the
 * walk sees exactly what the freeze would have seen.
 */
#define LOG_SUBSYS "src"
#include "parts.h"

#include "rdmig/capture.h"
#include "rdmig/log.h"
#include "rdmig/proto.h"

#include "migrate_common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define PG 4096u

struct part {
	uint32_t vma; /* index in img->vmas */
	uint64_t start, end;
	uint64_t next; /* walked up to here (a step at a time) */
	bool walked, wanted, taken;
};

struct rdmig_parts {
	struct rdmig_image *img;
	pid_t pid;
	int pm_fd;
	uint8_t *window; /* RDMIG_PAGES_MAX pages: a PAGES answer's data */
	struct part *p;
	uint32_t n;
	uint32_t *order; /* walked parts, in the order they were walked (and taken) */
	uint32_t walked, taken, cursor, nwanted;
	uint32_t busy;  /* the part begun and not walked to its end, or UINT32_MAX */
	uint32_t *want; /* wanted parts not walked yet, oldest first */
	uint32_t want_head;
	uint32_t hinted;   /* of the wanted, those the registers named */
	uint32_t answered; /* WANTs answered with PAGES */
	uint64_t pages, walk_ns;
};

int rdmig_parts_create(pid_t pid, struct rdmig_image *img, struct rdmig_parts **out)
{
	struct rdmig_parts *ps;
	char path[64];
	uint32_t n = 0;

	*out = NULL;
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];

		if (v->kind == RDMIG_VMA_ANON && (v->flags & RDMIG_VMA_F_HELD))
			n += (uint32_t)(((v->end - v->start) / PG + RDMIG_PART_PAGES - 1) /
			                RDMIG_PART_PAGES);
	}
	if (!n)
		return 0;
	ps = calloc(1, sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	ps->img = img;
	ps->pid = pid;
	ps->busy = UINT32_MAX;
	ps->window = malloc((size_t)RDMIG_PAGES_MAX * PG);
	ps->p = calloc(n, sizeof(*ps->p));
	ps->order = calloc(n, sizeof(*ps->order));
	ps->want = calloc(n, sizeof(*ps->want));
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	ps->pm_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (!ps->p || !ps->order || !ps->want || !ps->window || ps->pm_fd < 0) {
		int err = ps->pm_fd < 0 ? -errno : -ENOMEM;

		rdmig_parts_free(ps);
		return err;
	}
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];

		if (v->kind != RDMIG_VMA_ANON || !(v->flags & RDMIG_VMA_F_HELD))
			continue;
		for (uint64_t a = v->start; a < v->end; a += (uint64_t)RDMIG_PART_PAGES * PG) {
			uint64_t e = a + (uint64_t)RDMIG_PART_PAGES * PG;

			ps->p[ps->n++] = (struct part){
			    .vma = i, .start = a, .end = e < v->end ? e : v->end, .next = a};
		}
	}
	*out = ps;
	return 0;
}

void rdmig_parts_captured(struct rdmig_parts *ps)
{
	const struct rdmig_image *img;

	if (!ps)
		return;
	img = ps->img;
	/* What the process touches first after the resume is most likely what its
	 * registers point at (the stack, a buffer in hand, the object a loop is
	 * on): those parts go first, before any fault asks for them. */
	for (uint32_t t = 0; t < img->nthreads; t++)
		for (uint32_t r = 0; r < RDMIG_IMG_NREGS; r++)
			rdmig_parts_want(ps, img->threads[t].regs[r]);
	ps->hinted = ps->nwanted;
	/* as rdmig_capture_walk_part does for the eager pages it knows of, in what
	 * was walked (whole parts, and the steps of the one begun) */
	for (uint32_t i = 0; i < ps->n; i++) {
		const struct part *p = &ps->p[i];
		struct rdmig_img_vma *v = &img->vmas[p->vma];

		if (p->next == p->start)
			continue;
		for (uint32_t k = 0; k < img->ncow; k++) {
			uint64_t a = img->cow[k].addr, pg = (a - v->start) / PG;

			if (a < p->start || a >= p->next || !(v->touched[pg / 8] >> (pg % 8) & 1))
				continue;
			v->touched[pg / 8] &= (uint8_t) ~(1u << (pg % 8));
			ps->pages--;
		}
	}
}

void rdmig_parts_free(struct rdmig_parts *ps)
{
	if (!ps)
		return;
	if (ps->pm_fd >= 0)
		close(ps->pm_fd);
	free(ps->p);
	free(ps->order);
	free(ps->want);
	free(ps->window);
	free(ps);
}

/* The part holding addr, or UINT32_MAX. */
static uint32_t part_at(const struct rdmig_parts *ps, uint64_t addr)
{
	uint32_t lo = 0, hi = ps->n;

	/* parts are in address order: vmas are, and so are the parts of each */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (ps->p[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == ps->n || addr < ps->p[lo].start ? UINT32_MAX : lo;
}

void rdmig_parts_want(struct rdmig_parts *ps, uint64_t addr)
{
	uint32_t i = part_at(ps, addr);

	if (i == UINT32_MAX || ps->p[i].walked || ps->p[i].wanted)
		return;
	ps->p[i].wanted = true;
	ps->want[ps->nwanted++] = i;
}

/*
 * Why answer with the pages themselves: a fault on a held page used to wait
 * for the WANT to reach the source, the walk of its whole part (64 MiB, 0.1-1
 * ms on a shared CPU), the PART's way back, and then a READ of the mirror: 1.4-
 * 2.5 ms per held fault in a trace of a 4 GiB random writer, most of the first
 * touch after the resume. The frozen process holds the page as it was at the
 * freeze (nothing runs it until the end), so the source reads the fault's
 * window from there and sends it at once; the part's walk and release still
 * follow, for the pages nobody asked for.
 */
int rdmig_parts_pages(struct rdmig_parts *ps, uint64_t addr, uint8_t *msg, size_t cap)
{
	uint64_t pm[RDMIG_PAGES_MAX], start, end, lo, hi;
	const struct rdmig_img_vma *v;
	struct iovec liov[RDMIG_PAGES_MAX], riov[RDMIG_PAGES_MAX];
	uint32_t i, pages, mask = 0, n = 0;
	ssize_t got;

	if (!ps || (i = part_at(ps, addr)) == UINT32_MAX || ps->p[i].taken)
		return 0;
	v = &ps->img->vmas[ps->p[i].vma];
	start = addr & ~((uint64_t)RDMIG_PAGES_MAX * PG - 1);
	end = start + (uint64_t)RDMIG_PAGES_MAX * PG;
	lo = start < v->start ? v->start : start;
	hi = end > v->end ? v->end : end;
	pages = (uint32_t)((hi - lo) / PG);
	got = pread(ps->pm_fd, pm, pages * sizeof(*pm), (off_t)(lo / PG * sizeof(*pm)));
	if (got != (ssize_t)(pages * sizeof(*pm)))
		return got < 0 ? -errno : -EIO;
	/* present or swapped: data (reading it swaps it in); otherwise never
	 * written, or dropped: zero, and not read (a read would map the zero page
	 * into the walk's view) */
	for (uint32_t k = 0; k < pages; k++) {
		if (!(pm[k] >> 62 & 3))
			continue;
		mask |= 1u << k;
		liov[n] = (struct iovec){ps->window + (size_t)n * PG, PG};
		riov[n] = (struct iovec){(void *)(uintptr_t)(lo + (uint64_t)k * PG), PG};
		n++;
	}
	if (n) {
		got = process_vm_readv(ps->pid, liov, n, riov, n, 0);
		if (got != (ssize_t)n * PG)
			return got < 0 ? -errno : -EIO;
	}
	ps->answered++;
	return rdmig_msg_encode_pages(msg, cap, lo, pages, mask, ps->window);
}

static int encode(struct rdmig_parts *ps, uint32_t i, bool last, uint8_t *msg, size_t cap)
{
	const struct part *p = &ps->p[i];
	const struct rdmig_img_vma *v = &ps->img->vmas[p->vma];
	uint64_t off = (p->start - v->start) / PG;
	uint32_t pages = (uint32_t)((p->end - p->start) / PG);

	return rdmig_msg_encode_part(msg, cap, p->start, pages, last ? RDMIG_PART_LAST : 0u,
	                             v->touched + off / 8);
}

/* One step of part i's walk: [next, next + RDMIG_PART_STEP_PAGES) */
static int walk(struct rdmig_parts *ps, struct rdmig_precopy *pc, uint32_t i)
{
	struct part *p = &ps->p[i];
	struct rdmig_img_vma *v = &ps->img->vmas[p->vma], sub;
	uint64_t start = p->next, off = (start - v->start) / PG, t0 = rdmig_now_ns();
	uint64_t end = p->end - start > (uint64_t)RDMIG_PART_STEP_PAGES * PG
	                   ? start + (uint64_t)RDMIG_PART_STEP_PAGES * PG
	                   : p->end;
	bool known = false;
	int64_t n = rdmig_capture_walk_part(ps->pm_fd, ps->img, v, start, end, &known);
	int ret;

	if (n < 0)
		return (int)n;
	/* the step as a vma of its own, its bitmaps where its pages' bits are */
	sub = *v;
	sub.start = start;
	sub.end = end;
	sub.touched = v->touched + off / 8;
	sub.written = known ? v->written + off / 8 : NULL;
	ret = rdmig_precopy_final_part(pc, &sub);
	if (ret < 0)
		return ret;
	p->next = end;
	ps->busy = end < p->end ? i : UINT32_MAX;
	if (end == p->end) {
		p->walked = true;
		ps->order[ps->walked++] = i;
	}
	ps->pages += (uint64_t)n;
	ps->walk_ns += rdmig_now_ns() - t0;
	return 0;
}

bool rdmig_parts_wanted(struct rdmig_parts *ps)
{
	/* the ones walked meanwhile (in address order) leave the queue here */
	while (ps && ps->want_head < ps->nwanted && ps->p[ps->want[ps->want_head]].walked)
		ps->want_head++;
	return ps && ps->want_head < ps->nwanted;
}

int rdmig_parts_walk(struct rdmig_parts *ps, struct rdmig_precopy *pc, uint64_t budget_ns)
{
	uint64_t t0;
	uint32_t i;
	int ret;

	if (!ps || ps->walked == ps->n)
		return 0;
	/* the part begun goes on: the rest of a wanted part is wanted too, and a
	 * part left half-walked would make faults there wait longest */
	i = ps->busy;
	if (i == UINT32_MAX && rdmig_parts_wanted(ps))
		i = ps->want[ps->want_head++];
	while (i == UINT32_MAX && ps->cursor < ps->n) {
		if (!ps->p[ps->cursor].walked)
			i = ps->cursor;
		ps->cursor++;
	}
	if (i == UINT32_MAX)
		return -EIO; /* walked < n, yet every part is walked: a bug */
	/* Only the part begun goes on within the call: the next one is chosen by
	 * what the caller read meanwhile (a WANT), or not walked yet at all (the
	 * quiet start after GO walks wanted parts only). */
	t0 = rdmig_now_ns();
	do
		ret = walk(ps, pc, i);
	while (ret == 0 && ps->busy == i && rdmig_now_ns() - t0 < budget_ns);
	if (ret < 0) {
		pr_err("walking %#" PRIx64 "-%#" PRIx64 " failed: %s", ps->p[i].start, ps->p[i].end,
		       strerror(-ret));
		return ret;
	}
	return 1;
}

int rdmig_parts_take(struct rdmig_parts *ps, uint8_t *msg, size_t cap)
{
	int n;

	if (!ps || ps->taken == ps->walked)
		return 0;
	n = encode(ps, ps->order[ps->taken], ps->taken + 1 == ps->n, msg, cap);
	if (n > 0)
		ps->p[ps->order[ps->taken++]].taken = true;
	return n;
}

int rdmig_parts_again(struct rdmig_parts *ps, uint32_t i, uint8_t *msg, size_t cap)
{
	if (!ps || i >= ps->taken)
		return 0;
	return encode(ps, ps->order[i], i + 1 == ps->n, msg, cap);
}

void rdmig_parts_stats(const struct rdmig_parts *ps, struct rdmig_parts_stats *out)
{
	*out = (struct rdmig_parts_stats){0};
	if (!ps)
		return;
	*out = (struct rdmig_parts_stats){.walked = ps->walked,
	                                  .taken = ps->taken,
	                                  .total = ps->n,
	                                  .wanted = ps->nwanted - ps->hinted,
	                                  .hinted = ps->hinted,
	                                  .answered = ps->answered,
	                                  .pages = ps->pages,
	                                  .walk_ns = ps->walk_ns};
}
