/*
 * The process image codec (the struct and the limits are in rdmig/image.h).
 *
 * Layout. A 16-byte header {magic le32, version le32, total length le64 (the
 * whole buffer, header included)}, then records {tag le16, flags le16 (0 but for
 * VMA's RUNS),
 * length le32 (payload bytes), payload}. Every field is little-endian and is
 * written and read byte by byte. Records come in tag order (a tag never follows
 * a larger one); the ones marked "once" are required exactly once, the others
 * repeat (zero or more times) and fill their arrays in order. Counts are never
 * sent: they follow from the record length, which must match exactly. COW and
 * COW_AHEAD records are full batches but the last.
 *
 *  tag name        once  payload
 *   1  PROC        yes   pid i32, comm[16], umask u32, personality u32      (28)
 *   2  EXE         yes   path bytes, no NUL                                 (1..4096)
 *   3  CWD         yes   path bytes, no NUL                                 (1..4096)
 *   4  MM          yes   11 x u64 in struct rdmig_img_mm order              (88)
 *   5  AUXV        yes   raw auxv                                           (16*k <= 1024)
 *   6  CREDS       yes   uid[4] u32, gid[4] u32, cap_inh, cap_prm, cap_eff,
 *                        cap_bnd, cap_amb u64, no_new_privs u32, groups u32[]
 *                                                                           (76 + 4*ngroups)
 *   7  RLIMITS     yes   16 x {cur u64, max u64}                            (256)
 *   8  SIGACTIONS  yes   64 x {handler, flags, restorer, mask u64}          (2048)
 *   9  SIGINFO     yes   shared pending siginfo, 128 bytes each             (128*n)
 *  10  THREAD      1..   regs[27] u64, sigmask, altstack_sp, altstack_size u64,
 *                        altstack_flags, rseq_len u32, rseq_addr u64, rseq_sig u32,
 *                        tid i32, robust_head, robust_len, clear_child_tid,
 *                        tid_cache u64, comm[16], xstate_len, nsiginfo u32,
 *                        xstate, siginfo (128 each)              (320 + xstate + 128*n)
 *                        (1 to RDMIG_IMG_MAX_THREADS records, the main thread first)
 *  11  VDSO        yes   the source's [vdso] bytes                          (<= 64 KiB)
 *  12  FILE        no    dev, ino, size u64, mtime_sec i64, mtime_nsec u32,
 *                        mode u32, path bytes (no NUL)                      (40 + 1..4096)
 *  13  VMA         no    start, end, pgoff u64, prot, kind, flags, file u32,
 *                        touched bitmap (ceil(pages/8) bytes, or none)      (40 [+ bitmap])
 *                        or, with record flag RUNS (1), the touched pages as
 *                        runs {first page, pages u64}: ascending, apart, in
 *                        the vma, at least one                        (40 + 16*n)
 *                        (runs exactly when 16*n is less than the bitmap)
 *  14  FD          no    fd i32, kind, flags, cloexec u32, pos u64, file u32, 0 u32
 *                                                                           (32)
 *  15  COW         no    1..256 x {addr u64, page[4096]}                    (4104*n)
 *  16  COW_AHEAD   no    1..4096 x addr u64: written pages of private file
 *                        mappings whose bytes are the LAYOUT's               (8*n)
 *
 * Version 2 (threads): THREAD repeats, its reserved word became the tid, and it
 * gained tid_cache and comm; COW pages may lie in ANON vmas (never touched ones).
 * Version 3: a VMA's touched pages may come as runs (a dense 4 GiB process's
 * bitmap was 128 KiB of the freeze's send), whichever is smaller; the rseq
 * area's page(s) must be among the COW pages.
 * Version 4: COW_AHEAD. The written pages of private file mappings travel in
 * the LAYOUT while the process runs; the image names those whose bytes did not
 * change (the eager pages' rule accepts them there too).
 *
 * Decoding runs in three steps: a scan of the record framing (lengths inside
 * the buffer, flags zero, known tags in order, singletons once, counts under the
 * limits), which sizes the arrays, so no allocation is larger than what the
 * buffer itself carries; a parse of each record whose length must be exactly
 * what its tag and fields require; and check_image(), the semantic rules
 * (ranges, indices, ordering), which the encoder runs too, so that a source
 * never sends what its peer would refuse.
 */
#define LOG_SUBSYS "image"

#include "rdmig/image.h"
#include "rdmig/le.h"
#include "rdmig/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum img_tag {
	TAG_PROC = 1,
	TAG_EXE,
	TAG_CWD,
	TAG_MM,
	TAG_AUXV,
	TAG_CREDS,
	TAG_RLIMITS,
	TAG_SIGACTIONS,
	TAG_SIGINFO,
	TAG_THREAD,
	TAG_VDSO,
	TAG_FILE,
	TAG_VMA,
	TAG_FD,
	TAG_COW,
	TAG_COW_AHEAD,
	TAG_MAX = TAG_COW_AHEAD,
};

#define TAG_BIT(t) (1u << (t))
/* The singletons: tags PROC..VDSO but THREAD (which repeats, at least once). */
#define TAGS_ONCE ((TAG_BIT(TAG_VDSO + 1) - TAG_BIT(TAG_PROC)) & ~TAG_BIT(TAG_THREAD))
#define TAGS_REQUIRED (TAGS_ONCE | TAG_BIT(TAG_THREAD))

static const char *const tag_names[TAG_MAX + 1] = {
    "?",       "PROC",   "EXE",  "CWD",  "MM",  "AUXV", "CREDS", "RLIMITS",   "SIGACTIONS",
    "SIGINFO", "THREAD", "VDSO", "FILE", "VMA", "FD",   "COW",   "COW_AHEAD",
};

#define HDR_LEN 16u
#define REC_HDR_LEN 8u
#define PROC_LEN 28u
#define MM_LEN 88u
#define CREDS_FIXED_LEN 76u
#define RLIMITS_LEN (RDMIG_IMG_NRLIMIT * 16u)
#define SIGACTIONS_LEN (RDMIG_IMG_NSIG * 32u)
#define THREAD_FIXED_LEN (RDMIG_IMG_NREGS * 8u + 104u)
#define FILE_FIXED_LEN 40u
#define VMA_FIXED_LEN 40u
#define RUN_LEN 16u   /* a VMA's run of touched pages: first, count u64 */
#define REC_F_RUNS 1u /* VMA record flag: touched pages as runs */
#define FD_LEN 32u
#define COW_ENTRY_LEN (8u + RDMIG_IMG_PAGE)
#define COW_BATCH 256u
#define AHEAD_BATCH 4096u /* addresses per COW_AHEAD record */

_Static_assert(THREAD_FIXED_LEN == 320, "THREAD record layout");
_Static_assert(sizeof(((struct rdmig_image *)0)->comm) == 16, "comm is 16 bytes on the wire");
_Static_assert(TAG_MAX < 32, "tags fit a u32 bit set");
_Static_assert(offsetof(struct rdmig_img_cow_page, addr) == 0,
               "addr_index reads a COW page's address first");
/* A COW record's length fits its u32 field with room to spare. */
_Static_assert((uint64_t)COW_BATCH *COW_ENTRY_LEN < (1u << 24), "COW batch size");

#define PROT_ALL 0x7u /* PROT_READ | PROT_WRITE | PROT_EXEC */
#define NSEC_PER_SEC 1000000000u

/* ---- rules shared by the encoder and the decoder ---- */

static bool page_aligned(uint64_t v)
{
	return (v & (RDMIG_IMG_PAGE - 1)) == 0;
}

static uint64_t vma_pages(const struct rdmig_img_vma *v)
{
	return (v->end - v->start) / RDMIG_IMG_PAGE;
}

/* Bytes of a vma's touched bitmap (whole pages, one bit each). */
static uint64_t bitmap_len(const struct rdmig_img_vma *v)
{
	return (vma_pages(v) + 7) / 8;
}

/* A path goes into open(2) and into log lines: no NUL, no control characters
 * (bytes >= 0x80 are allowed: UTF-8 names exist). */
static bool path_byte_ok(uint8_t c)
{
	return c >= 0x20 && c != 0x7f;
}

static int check_path(const char *s, const char *what)
{
	size_t n;

	if (!s) {
		pr_err("%s is missing", what);
		return -1;
	}
	n = strnlen(s, RDMIG_IMG_MAX_PATH + 1);
	if (n == 0 || n > RDMIG_IMG_MAX_PATH) {
		pr_err("%s: length %zu outside 1..%u", what, n, RDMIG_IMG_MAX_PATH);
		return -1;
	}
	if (s[0] != '/') {
		pr_err("%s: not an absolute path", what);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (!path_byte_ok((uint8_t)s[i])) {
			pr_err("%s: control character 0x%02x at byte %zu", what, (uint8_t)s[i], i);
			return -1;
		}
	}
	return 0;
}

static int check_range(uint64_t start, uint64_t end, const char *what, uint32_t i)
{
	if (!page_aligned(start) || !page_aligned(end) || start >= end ||
	    end > RDMIG_IMG_USER_END) {
		pr_err("%s %u: bad range [%#" PRIx64 ", %#" PRIx64 ")", what, i, start, end);
		return -1;
	}
	return 0;
}

const struct rdmig_img_vma *rdmig_image_vma_at(const struct rdmig_image *img, uint64_t addr)
{
	uint32_t lo = 0, hi = img->nvmas;

	/* the first vma whose end is above addr */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (img->vmas[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < img->nvmas && img->vmas[lo].start <= addr)
		return &img->vmas[lo];
	return NULL;
}

uint64_t rdmig_image_vma_touched(const struct rdmig_img_vma *v)
{
	uint64_t pages, n = 0, i = 0;

	if (!v->touched || v->end <= v->start)
		return 0;
	pages = vma_pages(v);
	for (uint64_t w; i + 8 <= pages / 8; i += 8) { /* 64 bits at a time */
		memcpy(&w, v->touched + i, sizeof(w));
		n += (uint64_t)__builtin_popcountll(w);
	}
	for (; i < pages / 8; i++)
		n += (uint64_t)__builtin_popcount(v->touched[i]);
	if (pages % 8)
		n +=
		    (uint64_t)__builtin_popcount(v->touched[pages / 8] & ((1u << (pages % 8)) - 1));
	return n;
}

uint64_t rdmig_bitmap_run(const uint8_t *bits, uint64_t nbits, uint64_t at, bool set)
{
	const uint64_t all = set ? ~(uint64_t)0 : 0;
	uint64_t q = at;

	/* Bit by bit to a byte boundary, then 64 bits at a time (a 4 GiB mapping's
	 * bitmap is 128 KiB, walked several times inside the freeze), then bit by
	 * bit again where the run ends. Bit i is bit i % 8 of byte i / 8 on any
	 * host, so a word read byte-wise in memory order is compared with all-ones
	 * or all-zeros only, never bit-indexed. */
#define BIT(i) ((bits[(i) / 8] >> ((i) % 8) & 1) == set)
	while (q < nbits && q % 8 && BIT(q))
		q++;
	if (q < nbits && q % 8 == 0) {
		for (uint64_t w; q + 64 <= nbits; q += 64) {
			memcpy(&w, bits + q / 8, sizeof(w)); /* no alignment assumed */
			if (w != all)
				break;
		}
		while (q + 8 <= nbits && bits[q / 8] == (uint8_t)all)
			q += 8;
	}
	while (q < nbits && BIT(q))
		q++;
#undef BIT
	return q - at;
}

void rdmig_bitmap_set(uint8_t *bits, uint64_t first, uint64_t n)
{
	for (; n && first % 8; first++, n--)
		bits[first / 8] |= (uint8_t)(1u << (first % 8));
	if (n >= 8) {
		memset(bits + first / 8, 0xff, n / 8);
		first += n / 8 * 8;
		n %= 8;
	}
	for (; n; first++, n--)
		bits[first / 8] |= (uint8_t)(1u << (first % 8));
}

static int check_mm(const struct rdmig_img_mm *mm)
{
	const uint64_t pairs[5][2] = {
	    {mm->start_code, mm->end_code}, {mm->start_data, mm->end_data},
	    {mm->start_brk, mm->brk},       {mm->arg_start, mm->arg_end},
	    {mm->env_start, mm->env_end},
	};

	/* PR_SET_MM_MAP's own rules, so that a bad map fails here, with a reason */
	for (int i = 0; i < 5; i++) {
		if (pairs[i][0] > pairs[i][1] || pairs[i][1] > RDMIG_IMG_USER_END) {
			pr_err("mm: bad range %d [%#" PRIx64 ", %#" PRIx64 "]", i, pairs[i][0],
			       pairs[i][1]);
			return -1;
		}
	}
	if (mm->start_stack > RDMIG_IMG_USER_END) {
		pr_err("mm: start_stack %#" PRIx64 " outside user space", mm->start_stack);
		return -1;
	}
	return 0;
}

static int check_thread(const struct rdmig_image *img, uint32_t i)
{
	const struct rdmig_img_thread *t = &img->threads[i];

	if (t->xstate_len > RDMIG_IMG_MAX_XSTATE || (t->xstate_len && !t->xstate)) {
		pr_err("thread %u: bad xstate (%u bytes)", i, t->xstate_len);
		return -1;
	}
	if (t->nsiginfo > RDMIG_IMG_MAX_SIGINFO || (t->nsiginfo && !t->siginfo)) {
		pr_err("thread %u: bad siginfo list (%u)", i, t->nsiginfo);
		return -1;
	}
	if (!memchr(t->comm, '\0', sizeof(t->comm))) {
		pr_err("thread %u: comm is not NUL-terminated", i);
		return -1;
	}
	if (t->tid <= 0 || (i == 0 && t->tid != img->pid)) {
		pr_err("thread %u: tid %" PRId32 " (the main thread's must be the pid %" PRId32 ")",
		       i, t->tid, img->pid);
		return -1;
	}
	for (uint32_t j = 0; j < i; j++) {
		if (img->threads[j].tid == t->tid) {
			pr_err("thread %u: tid %" PRId32 " repeated", i, t->tid);
			return -1;
		}
	}
	return 0;
}

/* The index of addr among n sorted addresses, each the first u64 of an element
 * of `size` bytes (COW pages, or the bare addresses of COW_AHEAD), or n. */
static uint32_t addr_index(const void *base, uint32_t n, size_t size, uint64_t addr)
{
	uint32_t lo = 0, hi = n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		uint64_t at;

		memcpy(&at, (const uint8_t *)base + (size_t)mid * size, sizeof(at));
		if (at == addr)
			return mid;
		if (at < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return n;
}

const struct rdmig_img_cow_page *rdmig_image_cow_find(const struct rdmig_img_cow_page *lay,
                                                      uint32_t nlay, uint64_t addr)
{
	uint32_t i = addr_index(lay, nlay, sizeof(*lay), addr);

	return i < nlay ? &lay[i] : NULL;
}

static bool ahead_at(const struct rdmig_image *img, uint64_t page)
{
	return addr_index(img->ahead, img->nahead, sizeof(*img->ahead), page) < img->nahead;
}

/* Sent eagerly: with its bytes, or named as the layout's. */
static bool cow_page_at(const struct rdmig_image *img, uint64_t page)
{
	return rdmig_image_cow_find(img->cow, img->ncow, page) || ahead_at(img, page);
}

/* After vmas and COW pages are checked: a tid cache is an aligned int, an rseq
 * area an aligned block of at most a page (the kernel's own rules are checked
 * at registration); the pages of both travel eagerly. */
static int check_eager(const struct rdmig_image *img, uint32_t i)
{
	const uint64_t pmask = ~(uint64_t)(RDMIG_IMG_PAGE - 1);
	const struct rdmig_img_thread *th = &img->threads[i];
	uint64_t a = th->tid_cache, r = th->rseq_addr, rlen = th->rseq_len;

	if (a && (a % 4 || !rdmig_image_vma_at(img, a) || !cow_page_at(img, a & pmask))) {
		pr_err("thread %u: tid cache at %#" PRIx64
		       " unaligned, unmapped or its page not sent",
		       i, a);
		return -1;
	}
	if (!rlen)
		return 0;
	if (r % 32 || rlen > RDMIG_IMG_PAGE || r > UINT64_MAX - rlen ||
	    !rdmig_image_vma_at(img, r) || !cow_page_at(img, r & pmask) ||
	    !cow_page_at(img, (r + rlen - 1) & pmask)) {
		pr_err("thread %u: rseq area at %#" PRIx64 "+%" PRIu64
		       " unaligned, too long, unmapped or its page not sent",
		       i, r, rlen);
		return -1;
	}
	return 0;
}

static int check_files(const struct rdmig_image *img)
{
	char what[32];

	if (img->nfiles > RDMIG_IMG_MAX_FILES || (img->nfiles && !img->files)) {
		pr_err("bad file table (%u)", img->nfiles);
		return -1;
	}
	for (uint32_t i = 0; i < img->nfiles; i++) {
		snprintf(what, sizeof(what), "file %u", i);
		if (check_path(img->files[i].path, what))
			return -1;
		if (img->files[i].mtime_nsec >= NSEC_PER_SEC) {
			pr_err("file %u: mtime_nsec %u", i, img->files[i].mtime_nsec);
			return -1;
		}
	}
	return 0;
}

/* wire: a decoded image. The source's own (encoding) may have bitmaps on held
 * vmas, filled by its walk; they are not sent. */
static int check_vma(const struct rdmig_image *img, uint32_t i, bool wire)
{
	const struct rdmig_img_vma *v = &img->vmas[i];
	bool is_file = v->kind == RDMIG_VMA_FILE_PRIVATE || v->kind == RDMIG_VMA_FILE_SHARED_RO;

	if (check_range(v->start, v->end, "vma", i))
		return -1;
	if (i > 0 && v->start < img->vmas[i - 1].end) {
		pr_err("vma %u at %#" PRIx64 " overlaps or precedes vma %u ending at %#" PRIx64, i,
		       v->start, i - 1, img->vmas[i - 1].end);
		return -1;
	}
	if (v->kind < RDMIG_VMA_ANON || v->kind > RDMIG_VMA_KIND_MAX) {
		pr_err("vma %u: unknown kind %u", i, v->kind);
		return -1;
	}
	if (v->prot & ~PROT_ALL) {
		pr_err("vma %u: bad prot %#x", i, v->prot);
		return -1;
	}
	/* [heap] and [stack] are anonymous, and not both */
	if ((v->flags & ~RDMIG_VMA_F_ALL) || (v->flags && v->kind != RDMIG_VMA_ANON) ||
	    ((v->flags & RDMIG_VMA_F_HEAP) && (v->flags & RDMIG_VMA_F_STACK))) {
		pr_err("vma %u: bad flags %#x for kind %u", i, v->flags, v->kind);
		return -1;
	}
	if (is_file) {
		if (v->file >= img->nfiles) {
			pr_err("vma %u: file index %u, %u files", i, v->file, img->nfiles);
			return -1;
		}
		if (!page_aligned(v->pgoff) || v->pgoff > UINT64_MAX - (v->end - v->start)) {
			pr_err("vma %u: bad file offset %#" PRIx64, i, v->pgoff);
			return -1;
		}
	} else if (v->file != UINT32_MAX) {
		pr_err("vma %u: file index %u on a vma of kind %u", i, v->file, v->kind);
		return -1;
	}
	if (v->touched && (v->flags & RDMIG_VMA_F_HELD)) {
		if (!wire)
			return 0;
		pr_err("vma %u: touched bitmap on a held vma", i);
		return -1;
	}
	if (v->touched) {
		uint64_t pages = vma_pages(v);

		if (v->kind != RDMIG_VMA_ANON) {
			pr_err("vma %u: touched bitmap on a vma of kind %u", i, v->kind);
			return -1;
		}
		/* bits past the last page are zero: one encoding per image */
		if ((pages % 8) && (v->touched[pages / 8] >> (pages % 8))) {
			pr_err("vma %u: touched bits set past the last page", i);
			return -1;
		}
	}
	return 0;
}

static int check_fd(const struct rdmig_image *img, uint32_t i)
{
	const struct rdmig_img_fd *f = &img->fds[i];

	if (f->fd < 0 || (i > 0 && f->fd <= img->fds[i - 1].fd)) {
		pr_err("fd entry %u: fd %" PRId32 " negative, unsorted or repeated", i, f->fd);
		return -1;
	}
	if (f->kind < RDMIG_FD_FILE || f->kind > RDMIG_FD_KIND_MAX || f->cloexec > 1) {
		pr_err("fd %" PRId32 ": bad kind %u or cloexec %u", f->fd, f->kind, f->cloexec);
		return -1;
	}
	if (f->kind == RDMIG_FD_STDIO) {
		if (f->fd > 2 || f->file != UINT32_MAX) {
			pr_err("fd %" PRId32 ": stdio kind with file %u", f->fd, f->file);
			return -1;
		}
	} else if (f->file >= img->nfiles) {
		pr_err("fd %" PRId32 ": file index %u, %u files", f->fd, f->file, img->nfiles);
		return -1;
	}
	return 0;
}

static int check_cow(const struct rdmig_image *img, uint32_t i)
{
	uint64_t a = img->cow[i].addr;
	const struct rdmig_img_vma *v;

	if (!page_aligned(a) || (i > 0 && a <= img->cow[i - 1].addr)) {
		pr_err("cow page %u at %#" PRIx64 ": unaligned, unsorted or repeated", i, a);
		return -1;
	}
	v = rdmig_image_vma_at(img, a);
	if (v && v->kind == RDMIG_VMA_ANON) {
		uint64_t p = (a - v->start) / RDMIG_IMG_PAGE;

		/* one source per page: an eager ANON page is never also fetched (a held
		 * vma's bits, the source's walk's, are cleared there too:
		 * rdmig_capture_walk_part, rdmig_parts_captured) */
		if (v->touched && (v->touched[p / 8] >> (p % 8) & 1)) {
			pr_err("cow page %u at %#" PRIx64 " is also marked touched", i, a);
			return -1;
		}
		return 0;
	}
	if (!v || v->kind != RDMIG_VMA_FILE_PRIVATE) {
		pr_err("cow page %u at %#" PRIx64
		       " is not in a private file mapping or anonymous memory",
		       i, a);
		return -1;
	}
	return 0;
}

static int check_ahead(const struct rdmig_image *img, uint32_t i)
{
	uint64_t a = img->ahead[i];
	const struct rdmig_img_vma *v = rdmig_image_vma_at(img, a);

	if (!page_aligned(a) || (i > 0 && a <= img->ahead[i - 1])) {
		pr_err("layout page %u at %#" PRIx64 ": unaligned, unsorted or repeated", i, a);
		return -1;
	}
	if (!v || v->kind != RDMIG_VMA_FILE_PRIVATE) {
		pr_err("layout page %u at %#" PRIx64 " is not in a private file mapping", i, a);
		return -1;
	}
	if (rdmig_image_cow_find(img->cow, img->ncow, a)) {
		pr_err("layout page %u at %#" PRIx64 " also comes with its bytes", i, a);
		return -1;
	}
	return 0;
}

/* Every rule the decoder enforces past the framing. Logs one line and returns -1
 * on the first violation. */
static int check_image(const struct rdmig_image *img, bool wire)
{
	if (!memchr(img->comm, '\0', sizeof(img->comm))) {
		pr_err("comm is not NUL-terminated");
		return -1;
	}
	if (check_path(img->exe, "exe") || check_path(img->cwd, "cwd"))
		return -1;
	if (img->umask > 0777) {
		pr_err("umask %#o", img->umask);
		return -1;
	}
	if (check_mm(&img->mm))
		return -1;
	if (img->auxv_len > RDMIG_IMG_MAX_AUXV || img->auxv_len % 16 ||
	    (img->auxv_len && !img->auxv)) {
		pr_err("bad auxv (%u bytes)", img->auxv_len);
		return -1;
	}
	if (img->creds.ngroups > RDMIG_IMG_MAX_GROUPS ||
	    (img->creds.ngroups && !img->creds.groups) || img->creds.no_new_privs > 1) {
		pr_err("creds: bad groups (%u) or no_new_privs %u", img->creds.ngroups,
		       img->creds.no_new_privs);
		return -1;
	}
	for (uint32_t i = 0; i < RDMIG_IMG_NRLIMIT; i++) {
		if (img->rlim_cur[i] > img->rlim_max[i]) {
			pr_err("rlimit %u: soft %#" PRIx64 " above hard %#" PRIx64, i,
			       img->rlim_cur[i], img->rlim_max[i]);
			return -1;
		}
	}
	if (img->nsiginfo_shared > RDMIG_IMG_MAX_SIGINFO ||
	    (img->nsiginfo_shared && !img->siginfo_shared)) {
		pr_err("bad shared siginfo list (%u)", img->nsiginfo_shared);
		return -1;
	}
	if (img->nthreads < 1 || img->nthreads > RDMIG_IMG_MAX_THREADS || !img->threads) {
		pr_err("bad thread table (%u)", img->nthreads);
		return -1;
	}
	for (uint32_t i = 0; i < img->nthreads; i++) {
		if (check_thread(img, i))
			return -1;
	}
	if (img->vdso_len > RDMIG_IMG_MAX_VDSO || (img->vdso_len && !img->vdso)) {
		pr_err("bad vdso (%u bytes)", img->vdso_len);
		return -1;
	}
	if (check_files(img))
		return -1;
	if (img->nvmas > RDMIG_IMG_MAX_VMAS || (img->nvmas && !img->vmas)) {
		pr_err("bad vma table (%u)", img->nvmas);
		return -1;
	}
	for (uint32_t i = 0; i < img->nvmas; i++) {
		if (check_vma(img, i, wire))
			return -1;
	}
	if (img->nfds > RDMIG_IMG_MAX_FDS || (img->nfds && !img->fds)) {
		pr_err("bad fd table (%u)", img->nfds);
		return -1;
	}
	for (uint32_t i = 0; i < img->nfds; i++) {
		if (check_fd(img, i))
			return -1;
	}
	if (img->ncow > RDMIG_IMG_MAX_COW_PAGES || (img->ncow && !img->cow)) {
		pr_err("bad cow page list (%u)", img->ncow);
		return -1;
	}
	for (uint32_t i = 0; i < img->ncow; i++) {
		if (check_cow(img, i))
			return -1;
	}
	if (img->nahead > RDMIG_IMG_MAX_COW_PAGES - img->ncow || (img->nahead && !img->ahead)) {
		pr_err("bad layout page list (%u, with %u cow pages)", img->nahead, img->ncow);
		return -1;
	}
	for (uint32_t i = 0; i < img->nahead; i++) {
		if (check_ahead(img, i))
			return -1;
	}
	for (uint32_t i = 0; i < img->nthreads; i++) {
		if (check_eager(img, i))
			return -1;
	}
	return 0;
}

void rdmig_image_free(struct rdmig_image *img)
{
	if (!img)
		return;
	free(img->exe);
	free(img->cwd);
	free(img->auxv);
	free(img->creds.groups);
	free(img->siginfo_shared);
	if (img->threads) {
		for (uint32_t i = 0; i < img->nthreads; i++) {
			free(img->threads[i].xstate);
			free(img->threads[i].siginfo);
		}
	}
	free(img->threads);
	free(img->vdso);
	if (img->vmas) {
		for (uint32_t i = 0; i < img->nvmas; i++) {
			free(img->vmas[i].touched);
			free(img->vmas[i].written);
		}
	}
	free(img->vmas);
	if (img->files) {
		for (uint32_t i = 0; i < img->nfiles; i++)
			free(img->files[i].path);
	}
	free(img->files);
	free(img->fds);
	free(img->cow);
	free(img->ahead);
	memset(img, 0, sizeof(*img));
}

/* ---- encoder ---- */

/* A writer that only counts when p is NULL, so the same code sizes the buffer
 * and then fills it. */
struct writer {
	uint8_t *p;
	uint64_t off;
	bool overflow;
};

static uint8_t *w_take(struct writer *w, uint64_t n)
{
	uint8_t *at = w->p ? w->p + w->off : NULL;

	if (__builtin_add_overflow(w->off, n, &w->off))
		w->overflow = true;
	return at;
}

static void w_bytes(struct writer *w, const void *src, uint64_t n)
{
	uint8_t *at = w_take(w, n);

	if (at && n)
		memcpy(at, src, n);
}

static void w_u16(struct writer *w, uint16_t v)
{
	uint8_t *at = w_take(w, 2);

	if (at)
		put_le16(at, v);
}

static void w_u32(struct writer *w, uint32_t v)
{
	uint8_t *at = w_take(w, 4);

	if (at)
		put_le32(at, v);
}

static void w_u64(struct writer *w, uint64_t v)
{
	uint8_t *at = w_take(w, 8);

	if (at)
		put_le64(at, v);
}

/* len fits: the filling pass runs only once the whole image is known to stay
 * under RDMIG_IMG_MAX_BYTES. */
static void w_rec_flags(struct writer *w, enum img_tag tag, uint16_t flags, uint64_t len)
{
	w_u16(w, (uint16_t)tag);
	w_u16(w, flags);
	w_u32(w, (uint32_t)len);
}

static void w_rec(struct writer *w, enum img_tag tag, uint64_t len)
{
	w_rec_flags(w, tag, 0, len);
}

/* The runs of v's touched pages: counted, and written when w is given. */
static uint64_t touched_runs(struct writer *w, const struct rdmig_img_vma *v)
{
	uint64_t pages = vma_pages(v), n = 0;

	for (uint64_t p = rdmig_bitmap_run(v->touched, pages, 0, false); p < pages;) {
		uint64_t k = rdmig_bitmap_run(v->touched, pages, p, true);

		if (w) {
			w_u64(w, p);
			w_u64(w, k);
		}
		n++;
		p += k;
		p += rdmig_bitmap_run(v->touched, pages, p, false);
	}
	return n;
}

static void w_path_rec(struct writer *w, enum img_tag tag, const char *path)
{
	size_t n = strlen(path);

	w_rec(w, tag, n);
	w_bytes(w, path, n);
}

static void emit_thread(struct writer *w, const struct rdmig_img_thread *t)
{
	w_rec(w, TAG_THREAD,
	      THREAD_FIXED_LEN + (uint64_t)t->xstate_len +
	          (uint64_t)t->nsiginfo * RDMIG_IMG_SIGINFO);
	for (uint32_t i = 0; i < RDMIG_IMG_NREGS; i++)
		w_u64(w, t->regs[i]);
	w_u64(w, t->sigmask);
	w_u64(w, t->altstack_sp);
	w_u64(w, t->altstack_size);
	w_u32(w, t->altstack_flags);
	w_u32(w, t->rseq_len);
	w_u64(w, t->rseq_addr);
	w_u32(w, t->rseq_sig);
	w_u32(w, (uint32_t)t->tid);
	w_u64(w, t->robust_head);
	w_u64(w, t->robust_len);
	w_u64(w, t->clear_child_tid);
	w_u64(w, t->tid_cache);
	w_bytes(w, t->comm, sizeof(t->comm));
	w_u32(w, t->xstate_len);
	w_u32(w, t->nsiginfo);
	w_bytes(w, t->xstate, t->xstate_len);
	w_bytes(w, t->siginfo, (uint64_t)t->nsiginfo * RDMIG_IMG_SIGINFO);
}

static void emit_files_vmas_fds(struct writer *w, const struct rdmig_image *img)
{
	for (uint32_t i = 0; i < img->nfiles; i++) {
		const struct rdmig_img_file *f = &img->files[i];
		size_t n = strlen(f->path);

		w_rec(w, TAG_FILE, FILE_FIXED_LEN + (uint64_t)n);
		w_u64(w, f->dev);
		w_u64(w, f->ino);
		w_u64(w, f->size);
		w_u64(w, (uint64_t)f->mtime_sec);
		w_u32(w, f->mtime_nsec);
		w_u32(w, f->mode);
		w_bytes(w, f->path, n);
	}
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];
		struct rdmig_img_vma held = *v;
		uint64_t blen, nruns;
		bool runs;

		if (v->flags & RDMIG_VMA_F_HELD) {
			held.touched = NULL; /* the source's walk fills them; PARTs carry them */
			v = &held;
		}
		blen = v->touched ? bitmap_len(v) : 0;
		nruns = v->touched ? touched_runs(NULL, v) : 0;
		runs = nruns && nruns * RUN_LEN < blen;

		w_rec_flags(w, TAG_VMA, runs ? REC_F_RUNS : 0,
		            VMA_FIXED_LEN + (runs ? nruns * RUN_LEN : blen));
		w_u64(w, v->start);
		w_u64(w, v->end);
		w_u64(w, v->pgoff);
		w_u32(w, v->prot);
		w_u32(w, v->kind);
		w_u32(w, v->flags);
		w_u32(w, v->file);
		if (runs)
			touched_runs(w, v);
		else
			w_bytes(w, v->touched, blen);
	}
	for (uint32_t i = 0; i < img->nfds; i++) {
		const struct rdmig_img_fd *f = &img->fds[i];

		w_rec(w, TAG_FD, FD_LEN);
		w_u32(w, (uint32_t)f->fd);
		w_u32(w, f->kind);
		w_u32(w, f->flags);
		w_u32(w, f->cloexec);
		w_u64(w, f->pos);
		w_u32(w, f->file);
		w_u32(w, 0);
	}
}

/* total: the counting pass's result (0 while counting) */
static void emit(struct writer *w, const struct rdmig_image *img, uint64_t total)
{
	const struct rdmig_img_creds *c = &img->creds;
	const struct rdmig_img_mm *mm = &img->mm;

	w_u32(w, RDMIG_IMG_MAGIC);
	w_u32(w, RDMIG_IMG_VERSION);
	w_u64(w, total);

	w_rec(w, TAG_PROC, PROC_LEN);
	w_u32(w, (uint32_t)img->pid);
	w_bytes(w, img->comm, sizeof(img->comm));
	w_u32(w, img->umask);
	w_u32(w, img->personality);
	w_path_rec(w, TAG_EXE, img->exe);
	w_path_rec(w, TAG_CWD, img->cwd);

	w_rec(w, TAG_MM, MM_LEN);
	w_u64(w, mm->start_code);
	w_u64(w, mm->end_code);
	w_u64(w, mm->start_data);
	w_u64(w, mm->end_data);
	w_u64(w, mm->start_brk);
	w_u64(w, mm->brk);
	w_u64(w, mm->start_stack);
	w_u64(w, mm->arg_start);
	w_u64(w, mm->arg_end);
	w_u64(w, mm->env_start);
	w_u64(w, mm->env_end);

	w_rec(w, TAG_AUXV, img->auxv_len);
	w_bytes(w, img->auxv, img->auxv_len);

	w_rec(w, TAG_CREDS, CREDS_FIXED_LEN + 4ull * c->ngroups);
	for (int i = 0; i < 4; i++)
		w_u32(w, c->uid[i]);
	for (int i = 0; i < 4; i++)
		w_u32(w, c->gid[i]);
	w_u64(w, c->cap_inh);
	w_u64(w, c->cap_prm);
	w_u64(w, c->cap_eff);
	w_u64(w, c->cap_bnd);
	w_u64(w, c->cap_amb);
	w_u32(w, c->no_new_privs);
	for (uint32_t i = 0; i < c->ngroups; i++)
		w_u32(w, c->groups[i]);

	w_rec(w, TAG_RLIMITS, RLIMITS_LEN);
	for (uint32_t i = 0; i < RDMIG_IMG_NRLIMIT; i++) {
		w_u64(w, img->rlim_cur[i]);
		w_u64(w, img->rlim_max[i]);
	}
	w_rec(w, TAG_SIGACTIONS, SIGACTIONS_LEN);
	for (uint32_t i = 0; i < RDMIG_IMG_NSIG; i++) {
		w_u64(w, img->sigactions[i].handler);
		w_u64(w, img->sigactions[i].flags);
		w_u64(w, img->sigactions[i].restorer);
		w_u64(w, img->sigactions[i].mask);
	}
	w_rec(w, TAG_SIGINFO, (uint64_t)img->nsiginfo_shared * RDMIG_IMG_SIGINFO);
	w_bytes(w, img->siginfo_shared, (uint64_t)img->nsiginfo_shared * RDMIG_IMG_SIGINFO);
	for (uint32_t i = 0; i < img->nthreads; i++)
		emit_thread(w, &img->threads[i]);
	w_rec(w, TAG_VDSO, img->vdso_len);
	w_bytes(w, img->vdso, img->vdso_len);

	emit_files_vmas_fds(w, img);
	for (uint32_t i = 0; i < img->ncow; i += COW_BATCH) {
		uint32_t n = img->ncow - i < COW_BATCH ? img->ncow - i : COW_BATCH;

		w_rec(w, TAG_COW, (uint64_t)n * COW_ENTRY_LEN);
		for (uint32_t j = i; j < i + n; j++) {
			w_u64(w, img->cow[j].addr);
			w_bytes(w, img->cow[j].data, RDMIG_IMG_PAGE);
		}
	}
	for (uint32_t i = 0; i < img->nahead; i += AHEAD_BATCH) {
		uint32_t n = img->nahead - i < AHEAD_BATCH ? img->nahead - i : AHEAD_BATCH;

		w_rec(w, TAG_COW_AHEAD, (uint64_t)n * 8);
		for (uint32_t j = i; j < i + n; j++)
			w_u64(w, img->ahead[j]);
	}
}

int rdmig_image_encode(const struct rdmig_image *img, uint8_t **out, size_t *len)
{
	struct writer w = {0};
	uint64_t size;

	*out = NULL;
	*len = 0;
	if (check_image(img, false))
		return -EINVAL;
	emit(&w, img, 0);
	size = w.off;
	if (w.overflow || size > RDMIG_IMG_MAX_BYTES) {
		pr_err("image of %" PRIu64 " bytes is larger than the limit (%u)", size,
		       RDMIG_IMG_MAX_BYTES);
		return -EINVAL;
	}
	w.p = malloc(size);
	if (!w.p)
		return -ENOMEM;
	w.off = 0;
	emit(&w, img, size);
	if (w.off != size) {
		/* the two passes disagree: a bug here, not in the image */
		pr_err("encoder wrote %" PRIu64 " of %" PRIu64 " bytes", w.off, size);
		free(w.p);
		return -EINVAL;
	}
	*out = w.p;
	*len = (size_t)size;
	return 0;
}

/* ---- decoder ---- */

/* A record whose framing scan_records() has checked. */
struct rec {
	enum img_tag tag;
	uint16_t flags;
	const uint8_t *p;
	uint32_t len;
};

/* A reader over one record's payload. The parsers check the exact length before
 * reading, so running short means a bug here; it still never reads past the end. */
struct reader {
	const uint8_t *p;
	uint32_t left;
	bool short_read;
};

static const uint8_t *r_take(struct reader *r, uint32_t n)
{
	const uint8_t *at = r->p;

	if (n > r->left) {
		r->short_read = true;
		r->left = 0;
		return NULL;
	}
	r->p += n;
	r->left -= n;
	return at;
}

static uint32_t r_u32(struct reader *r)
{
	const uint8_t *at = r_take(r, 4);

	return at ? get_le32(at) : 0;
}

static uint64_t r_u64(struct reader *r)
{
	const uint8_t *at = r_take(r, 8);

	return at ? get_le64(at) : 0;
}

static void r_bytes(struct reader *r, void *dst, uint32_t n)
{
	const uint8_t *at = r_take(r, n);

	if (at && n)
		memcpy(dst, at, n);
}

/* A copy of the reader's next n bytes (NULL for none); -ENOMEM only. */
static int r_dup(struct reader *r, uint32_t n, uint8_t **out)
{
	*out = NULL;
	if (n == 0)
		return 0;
	*out = malloc(n);
	if (!*out)
		return -ENOMEM;
	r_bytes(r, *out, n);
	return 0;
}

static int bad_len(const struct rec *rc)
{
	pr_err("record %s: bad length %u", tag_names[rc->tag], rc->len);
	return -EBADMSG;
}

static int parse_path(const uint8_t *p, uint32_t n, char **out, const char *what)
{
	if (n == 0 || n > RDMIG_IMG_MAX_PATH) {
		pr_err("%s: path length %u outside 1..%u", what, n, RDMIG_IMG_MAX_PATH);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (!path_byte_ok(p[i])) {
			pr_err("%s: control character 0x%02x at byte %u", what, p[i], i);
			return -EBADMSG;
		}
	}
	*out = malloc((size_t)n + 1);
	if (!*out)
		return -ENOMEM;
	memcpy(*out, p, n);
	(*out)[n] = '\0';
	return 0;
}

static int parse_creds(const struct rec *rc, struct reader *r, struct rdmig_img_creds *c)
{
	uint32_t n;

	if (rc->len < CREDS_FIXED_LEN || (rc->len - CREDS_FIXED_LEN) % 4)
		return bad_len(rc);
	n = (rc->len - CREDS_FIXED_LEN) / 4;
	if (n > RDMIG_IMG_MAX_GROUPS) {
		pr_err("creds: %u groups, limit %u", n, RDMIG_IMG_MAX_GROUPS);
		return -EBADMSG;
	}
	for (int i = 0; i < 4; i++)
		c->uid[i] = r_u32(r);
	for (int i = 0; i < 4; i++)
		c->gid[i] = r_u32(r);
	c->cap_inh = r_u64(r);
	c->cap_prm = r_u64(r);
	c->cap_eff = r_u64(r);
	c->cap_bnd = r_u64(r);
	c->cap_amb = r_u64(r);
	c->no_new_privs = r_u32(r);
	if (n) {
		c->groups = calloc(n, sizeof(*c->groups));
		if (!c->groups)
			return -ENOMEM;
	}
	c->ngroups = n;
	for (uint32_t i = 0; i < n; i++)
		c->groups[i] = r_u32(r);
	return 0;
}

static int parse_thread(const struct rec *rc, struct reader *r, struct rdmig_img_thread *t)
{
	uint32_t xlen, nsi;
	int ret;

	if (rc->len < THREAD_FIXED_LEN)
		return bad_len(rc);
	for (uint32_t i = 0; i < RDMIG_IMG_NREGS; i++)
		t->regs[i] = r_u64(r);
	t->sigmask = r_u64(r);
	t->altstack_sp = r_u64(r);
	t->altstack_size = r_u64(r);
	t->altstack_flags = r_u32(r);
	t->rseq_len = r_u32(r);
	t->rseq_addr = r_u64(r);
	t->rseq_sig = r_u32(r);
	t->tid = (int32_t)r_u32(r);
	t->robust_head = r_u64(r);
	t->robust_len = r_u64(r);
	t->clear_child_tid = r_u64(r);
	t->tid_cache = r_u64(r);
	r_bytes(r, t->comm, sizeof(t->comm));
	xlen = r_u32(r);
	nsi = r_u32(r);
	if (xlen > RDMIG_IMG_MAX_XSTATE || nsi > RDMIG_IMG_MAX_SIGINFO) {
		pr_err("thread: xstate of %u bytes or %u siginfo over the limit", xlen, nsi);
		return -EBADMSG;
	}
	/* both bounded above: no overflow */
	if (rc->len != THREAD_FIXED_LEN + xlen + nsi * RDMIG_IMG_SIGINFO)
		return bad_len(rc);
	ret = r_dup(r, xlen, &t->xstate);
	if (ret)
		return ret;
	t->xstate_len = xlen;
	ret = r_dup(r, nsi * RDMIG_IMG_SIGINFO, &t->siginfo);
	if (ret)
		return ret;
	t->nsiginfo = nsi;
	return 0;
}

static int parse_file(const struct rec *rc, struct reader *r, struct rdmig_img_file *f, uint32_t i)
{
	char what[32];

	if (rc->len < FILE_FIXED_LEN)
		return bad_len(rc);
	f->dev = r_u64(r);
	f->ino = r_u64(r);
	f->size = r_u64(r);
	f->mtime_sec = (int64_t)r_u64(r);
	f->mtime_nsec = r_u32(r);
	f->mode = r_u32(r);
	snprintf(what, sizeof(what), "file %u", i);
	return parse_path(r->p, rc->len - FILE_FIXED_LEN, &f->path, what);
}

/* Touched pages as runs: each at least one page, in the vma, after the one
 * before with a gap (the encoder's form; anything else is refused). */
static int parse_runs(const struct rec *rc, struct reader *r, struct rdmig_img_vma *v, uint32_t i)
{
	uint32_t rl = rc->len - VMA_FIXED_LEN;
	uint64_t pages = vma_pages(v), next = 0;

	if (rl == 0 || rl % RUN_LEN) {
		pr_err("vma %u: %u bytes of runs", i, rl);
		return -EBADMSG;
	}
	v->touched = calloc(bitmap_len(v), 1);
	if (!v->touched)
		return -ENOMEM;
	for (uint32_t k = 0; k < rl / RUN_LEN; k++) {
		uint64_t first = r_u64(r), n = r_u64(r);

		if (n == 0 || first < next || first >= pages || n > pages - first) {
			pr_err("vma %u: run %u (%" PRIu64 "+%" PRIu64
			       ") empty, out of order, next to the one before or past the "
			       "vma's %" PRIu64 " pages",
			       i, k, first, n, pages);
			return -EBADMSG;
		}
		rdmig_bitmap_set(v->touched, first, n);
		next = first + n + 1;
	}
	return 0;
}

static int parse_vma(const struct rec *rc, struct reader *r, struct rdmig_img_vma *v, uint32_t i,
                     uint64_t *bitmap_bytes)
{
	uint64_t nruns;
	uint32_t blen;
	int err;

	if (rc->len < VMA_FIXED_LEN)
		return bad_len(rc);
	v->start = r_u64(r);
	v->end = r_u64(r);
	v->pgoff = r_u64(r);
	v->prot = r_u32(r);
	v->kind = r_u32(r);
	v->flags = r_u32(r);
	v->file = r_u32(r);
	/* the range first: the bitmap's length follows from it */
	if (check_range(v->start, v->end, "vma", i))
		return -EBADMSG;
	if (rc->len > VMA_FIXED_LEN) {
		*bitmap_bytes += bitmap_len(v);
		if (*bitmap_bytes > RDMIG_IMG_MAX_TOUCHED_BYTES) {
			pr_err("vma %u: touched bitmaps past %llu bytes in all", i,
			       (unsigned long long)RDMIG_IMG_MAX_TOUCHED_BYTES);
			return -EBADMSG;
		}
	}
	if (rc->flags & REC_F_RUNS) {
		/* runs only where they are smaller than the bitmap (the encoder's
		 * choice): one encoding per image */
		if (rc->len - VMA_FIXED_LEN >= bitmap_len(v)) {
			pr_err("vma %u: %u bytes of runs where the bitmap takes %" PRIu64, i,
			       rc->len - VMA_FIXED_LEN, bitmap_len(v));
			return -EBADMSG;
		}
		return parse_runs(rc, r, v, i);
	}
	blen = rc->len - VMA_FIXED_LEN;
	if (blen && blen != bitmap_len(v)) {
		pr_err("vma %u: touched bitmap of %u bytes for %" PRIu64 " pages", i, blen,
		       vma_pages(v));
		return -EBADMSG;
	}
	err = r_dup(r, blen, &v->touched);
	if (err || !blen)
		return err;
	nruns = touched_runs(NULL, v);
	if (nruns && nruns * RUN_LEN < blen) {
		pr_err("vma %u: touched bitmap of %u bytes where its %" PRIu64 " runs take fewer",
		       i, blen, nruns);
		return -EBADMSG;
	}
	return 0;
}

static int parse_fd(const struct rec *rc, struct reader *r, struct rdmig_img_fd *f)
{
	if (rc->len != FD_LEN)
		return bad_len(rc);
	f->fd = (int32_t)r_u32(r);
	f->kind = r_u32(r);
	f->flags = r_u32(r);
	f->cloexec = r_u32(r);
	f->pos = r_u64(r);
	f->file = r_u32(r);
	if (r_u32(r) != 0) {
		pr_err("fd %" PRId32 ": reserved field not zero", f->fd);
		return -EBADMSG;
	}
	return 0;
}

static void parse_mm(struct reader *r, struct rdmig_img_mm *mm)
{
	mm->start_code = r_u64(r);
	mm->end_code = r_u64(r);
	mm->start_data = r_u64(r);
	mm->end_data = r_u64(r);
	mm->start_brk = r_u64(r);
	mm->brk = r_u64(r);
	mm->start_stack = r_u64(r);
	mm->arg_start = r_u64(r);
	mm->arg_end = r_u64(r);
	mm->env_start = r_u64(r);
	mm->env_end = r_u64(r);
}

static void parse_proc(struct reader *r, struct rdmig_image *img)
{
	img->pid = (int32_t)r_u32(r);
	r_bytes(r, img->comm, sizeof(img->comm));
	img->umask = r_u32(r);
	img->personality = r_u32(r);
}

static void parse_rlimits(struct reader *r, struct rdmig_image *img)
{
	for (uint32_t i = 0; i < RDMIG_IMG_NRLIMIT; i++) {
		img->rlim_cur[i] = r_u64(r);
		img->rlim_max[i] = r_u64(r);
	}
}

static void parse_sigactions(struct reader *r, struct rdmig_image *img)
{
	for (uint32_t i = 0; i < RDMIG_IMG_NSIG; i++) {
		img->sigactions[i].handler = r_u64(r);
		img->sigactions[i].flags = r_u64(r);
		img->sigactions[i].restorer = r_u64(r);
		img->sigactions[i].mask = r_u64(r);
	}
}

/* The singletons: one per image, each with a length fixed or bounded by its tag. */
static int parse_single(const struct rec *rc, struct reader *r, struct rdmig_image *img)
{
	switch (rc->tag) {
	case TAG_PROC:
		if (rc->len != PROC_LEN)
			return bad_len(rc);
		parse_proc(r, img);
		return 0;
	case TAG_EXE:
		return parse_path(rc->p, rc->len, &img->exe, "exe");
	case TAG_CWD:
		return parse_path(rc->p, rc->len, &img->cwd, "cwd");
	case TAG_MM:
		if (rc->len != MM_LEN)
			return bad_len(rc);
		parse_mm(r, &img->mm);
		return 0;
	case TAG_AUXV:
		if (rc->len % 16 || rc->len > RDMIG_IMG_MAX_AUXV)
			return bad_len(rc);
		img->auxv_len = rc->len; /* freed by length-blind code if the copy fails */
		return r_dup(r, rc->len, &img->auxv);
	case TAG_CREDS:
		return parse_creds(rc, r, &img->creds);
	case TAG_RLIMITS:
		if (rc->len != RLIMITS_LEN)
			return bad_len(rc);
		parse_rlimits(r, img);
		return 0;
	case TAG_SIGACTIONS:
		if (rc->len != SIGACTIONS_LEN)
			return bad_len(rc);
		parse_sigactions(r, img);
		return 0;
	case TAG_SIGINFO:
		if (rc->len % RDMIG_IMG_SIGINFO ||
		    rc->len / RDMIG_IMG_SIGINFO > RDMIG_IMG_MAX_SIGINFO)
			return bad_len(rc);
		img->nsiginfo_shared = rc->len / RDMIG_IMG_SIGINFO;
		return r_dup(r, rc->len, &img->siginfo_shared);
	case TAG_VDSO:
		if (rc->len > RDMIG_IMG_MAX_VDSO)
			return bad_len(rc);
		img->vdso_len = rc->len;
		return r_dup(r, rc->len, &img->vdso);
	default:
		return bad_len(rc);
	}
}

struct counts {
	uint32_t threads, files, vmas, fds, cow, ahead;
};

static int count_up(uint32_t *n, uint32_t add, uint32_t max, const char *what)
{
	if (add > max - *n) {
		pr_err("more than %u %s", max, what);
		return -EBADMSG;
	}
	*n += add;
	return 0;
}

/* Check the framing of the records in p[0..len) and count the repeated ones. */
static int scan_records(const uint8_t *p, size_t len, struct counts *c)
{
	uint32_t seen = 0, missing;
	unsigned prev = 0;
	size_t off = 0;
	int ret = 0;
	/* COW and COW_AHEAD come in full batches but the last (one encoding per
	 * image: the encoder would merge two partial ones) */
	bool cow_partial = false, ahead_partial = false;

	while (off < len) {
		size_t at = HDR_LEN + off; /* for messages: offset in the image */
		unsigned tag;
		uint32_t rlen;

		if (len - off < REC_HDR_LEN) {
			pr_err("record header at offset %zu cut short", at);
			return -EBADMSG;
		}
		tag = get_le16(p + off);
		rlen = get_le32(p + off + 4);
		if (tag == 0 || tag > TAG_MAX) {
			pr_err("unknown record tag %u at offset %zu", tag, at);
			return -EBADMSG;
		}
		if (get_le16(p + off + 2) != 0 &&
		    (tag != TAG_VMA || get_le16(p + off + 2) != REC_F_RUNS)) {
			pr_err("record %s at offset %zu: flags %#x", tag_names[tag], at,
			       get_le16(p + off + 2));
			return -EBADMSG;
		}
		if (rlen > len - off - REC_HDR_LEN) {
			pr_err("record %s at offset %zu: %u bytes run past the end", tag_names[tag],
			       at, rlen);
			return -EBADMSG;
		}
		if (tag < prev || ((TAGS_ONCE & TAG_BIT(tag)) && (seen & TAG_BIT(tag)))) {
			pr_err("record %s at offset %zu: out of order or repeated", tag_names[tag],
			       at);
			return -EBADMSG;
		}
		seen |= TAG_BIT(tag);
		prev = tag;
		switch (tag) {
		case TAG_THREAD:
			ret = count_up(&c->threads, 1, RDMIG_IMG_MAX_THREADS, "threads");
			break;
		case TAG_FILE:
			ret = count_up(&c->files, 1, RDMIG_IMG_MAX_FILES, "files");
			break;
		case TAG_VMA:
			ret = count_up(&c->vmas, 1, RDMIG_IMG_MAX_VMAS, "vmas");
			break;
		case TAG_FD:
			ret = count_up(&c->fds, 1, RDMIG_IMG_MAX_FDS, "fds");
			break;
		case TAG_COW:
			if (rlen == 0 || rlen % COW_ENTRY_LEN || rlen / COW_ENTRY_LEN > COW_BATCH) {
				pr_err("record COW at offset %zu: bad length %u", at, rlen);
				return -EBADMSG;
			}
			if (cow_partial) {
				pr_err("record COW at offset %zu follows a partial one", at);
				return -EBADMSG;
			}
			cow_partial = rlen / COW_ENTRY_LEN < COW_BATCH;
			ret = count_up(&c->cow, rlen / COW_ENTRY_LEN, RDMIG_IMG_MAX_COW_PAGES,
			               "cow pages");
			break;
		case TAG_COW_AHEAD:
			if (rlen == 0 || rlen % 8 || rlen / 8 > AHEAD_BATCH) {
				pr_err("record COW_AHEAD at offset %zu: bad length %u", at, rlen);
				return -EBADMSG;
			}
			if (ahead_partial) {
				pr_err("record COW_AHEAD at offset %zu follows a partial one", at);
				return -EBADMSG;
			}
			ahead_partial = rlen / 8 < AHEAD_BATCH;
			ret =
			    count_up(&c->ahead, rlen / 8, RDMIG_IMG_MAX_COW_PAGES, "layout pages");
			break;
		default:
			break;
		}
		if (ret)
			return ret;
		off += REC_HDR_LEN + rlen;
	}
	missing = TAGS_REQUIRED & ~seen;
	if (missing) {
		pr_err("record %s missing", tag_names[__builtin_ctz(missing)]);
		return -EBADMSG;
	}
	return 0;
}

static int alloc_tables(struct rdmig_image *img, const struct counts *c)
{
	/* each element comes from at least its own record: the sizes are bounded by
	 * the buffer */
	if (c->threads && !(img->threads = calloc(c->threads, sizeof(*img->threads))))
		return -ENOMEM;
	if (c->files && !(img->files = calloc(c->files, sizeof(*img->files))))
		return -ENOMEM;
	if (c->vmas && !(img->vmas = calloc(c->vmas, sizeof(*img->vmas))))
		return -ENOMEM;
	if (c->fds && !(img->fds = calloc(c->fds, sizeof(*img->fds))))
		return -ENOMEM;
	if (c->cow && !(img->cow = calloc(c->cow, sizeof(*img->cow))))
		return -ENOMEM;
	if (c->ahead && !(img->ahead = calloc(c->ahead, sizeof(*img->ahead))))
		return -ENOMEM;
	return 0;
}

/* The repeated records, each appended to its table (sized by scan_records). */
static int parse_repeated(const struct rec *rc, struct reader *r, struct rdmig_image *img,
                          uint64_t *bitmap_bytes)
{
	uint32_t i;

	switch (rc->tag) {
	case TAG_THREAD:
		i = img->nthreads++;
		return parse_thread(rc, r, &img->threads[i]);
	case TAG_FILE:
		/* counted before parsing, so that a half-parsed entry is freed too */
		i = img->nfiles++;
		return parse_file(rc, r, &img->files[i], i);
	case TAG_VMA:
		i = img->nvmas++;
		return parse_vma(rc, r, &img->vmas[i], i, bitmap_bytes);
	case TAG_FD:
		return parse_fd(rc, r, &img->fds[img->nfds++]);
	case TAG_COW:
		for (i = 0; i < rc->len / COW_ENTRY_LEN; i++) {
			struct rdmig_img_cow_page *pg = &img->cow[img->ncow++];

			pg->addr = r_u64(r);
			r_bytes(r, pg->data, RDMIG_IMG_PAGE);
		}
		return 0;
	case TAG_COW_AHEAD:
		for (i = 0; i < rc->len / 8; i++)
			img->ahead[img->nahead++] = r_u64(r);
		return 0;
	default:
		return parse_single(rc, r, img);
	}
}

static int parse_records(const uint8_t *p, size_t len, struct rdmig_image *img)
{
	uint64_t bitmap_bytes = 0;
	size_t off = 0;

	while (off < len) {
		struct rec rc = {
		    .tag = (enum img_tag)get_le16(p + off),
		    .flags = get_le16(p + off + 2),
		    .p = p + off + REC_HDR_LEN,
		    .len = get_le32(p + off + 4),
		};
		struct reader r = {.p = rc.p, .left = rc.len};
		int ret = parse_repeated(&rc, &r, img, &bitmap_bytes);

		if (ret)
			return ret;
		if (r.short_read) {
			pr_err("record %s: read past its %u bytes", tag_names[rc.tag], rc.len);
			return -EBADMSG;
		}
		off += REC_HDR_LEN + rc.len;
	}
	return 0;
}

int rdmig_image_decode(const uint8_t *buf, size_t len, struct rdmig_image *img)
{
	struct counts c = {0};
	uint64_t total;
	int ret;

	memset(img, 0, sizeof(*img));
	if (!buf || len < HDR_LEN) {
		pr_err("%zu bytes: shorter than the header", len);
		return -EBADMSG;
	}
	if (get_le32(buf) != RDMIG_IMG_MAGIC) {
		pr_err("bad magic %#x", get_le32(buf));
		return -EBADMSG;
	}
	if (get_le32(buf + 4) != RDMIG_IMG_VERSION) {
		pr_err("version %u, this build reads %u", get_le32(buf + 4), RDMIG_IMG_VERSION);
		return -EPROTONOSUPPORT;
	}
	total = get_le64(buf + 8);
	if (total != len || len > RDMIG_IMG_MAX_BYTES) {
		pr_err("image length %" PRIu64 " in the header, %zu received (limit %u)", total,
		       len, RDMIG_IMG_MAX_BYTES);
		return -EBADMSG;
	}
	ret = scan_records(buf + HDR_LEN, len - HDR_LEN, &c);
	if (ret)
		return ret;
	ret = alloc_tables(img, &c);
	if (ret)
		goto out_free;
	ret = parse_records(buf + HDR_LEN, len - HDR_LEN, img);
	if (ret)
		goto out_free;
	if (check_image(img, true)) {
		ret = -EBADMSG;
		goto out_free;
	}
	return 0;

out_free:
	rdmig_image_free(img);
	return ret;
}

/* ---- the layout's written pages (COW_AHEAD) ---- */

int rdmig_image_mark_ahead(struct rdmig_image *img, const struct rdmig_img_cow_page *lay,
                           uint32_t nlay)
{
	uint32_t same = 0, kept = 0, n = 0;
	uint64_t *ahead;
	bool *is_same;

	if (img->nahead)
		return -EINVAL; /* marked once: ahead stays sorted */
	if (!nlay || !img->ncow)
		return 0;
	is_same = calloc(img->ncow, sizeof(*is_same));
	if (!is_same)
		return -ENOMEM;
	for (uint32_t i = 0; i < img->ncow; i++) {
		const struct rdmig_img_cow_page *c = &img->cow[i], *l;
		const struct rdmig_img_vma *v = rdmig_image_vma_at(img, c->addr);

		/* anonymous eager pages never travel with the layout */
		if (!v || v->kind != RDMIG_VMA_FILE_PRIVATE)
			continue;
		l = rdmig_image_cow_find(lay, nlay, c->addr);
		if (l && !memcmp(l->data, c->data, RDMIG_IMG_PAGE)) {
			is_same[i] = true;
			same++;
		}
	}
	if (!same) {
		free(is_same);
		return 0;
	}
	ahead = malloc((size_t)same * sizeof(*ahead));
	if (!ahead) {
		free(is_same);
		return -ENOMEM;
	}
	/* both stay sorted: ahead takes cow's pages in cow's order */
	for (uint32_t i = 0; i < img->ncow; i++) {
		if (is_same[i])
			ahead[n++] = img->cow[i].addr;
		else if (kept++ != i)
			img->cow[kept - 1] = img->cow[i];
	}
	img->ahead = ahead;
	img->nahead = n;
	img->ncow = kept;
	free(is_same);
	return (int)same;
}

int rdmig_image_fill_ahead(struct rdmig_image *img, const struct rdmig_img_cow_page *lay,
                           uint32_t nlay)
{
	struct rdmig_img_cow_page *cow;
	uint32_t i, j, k;

	if (!img->nahead)
		return 0;
	for (i = 0; i < img->nahead; i++) {
		if (!rdmig_image_cow_find(lay, nlay, img->ahead[i])) {
			pr_err("the image names the page at %#" PRIx64
			       " as sent with the layout, which did not carry it",
			       img->ahead[i]);
			return -EBADMSG;
		}
	}
	cow = realloc(img->cow, ((size_t)img->ncow + img->nahead) * sizeof(*cow));
	if (!cow)
		return -ENOMEM;
	img->cow = cow;
	/* merge from the top down, in place: both lists ascend and are disjoint
	 * (check_image) */
	i = img->ncow;
	j = img->nahead;
	k = img->ncow + img->nahead;
	while (j > 0) {
		if (i > 0 && cow[i - 1].addr > img->ahead[j - 1]) {
			cow[--k] = cow[--i];
		} else {
			const struct rdmig_img_cow_page *l =
			    rdmig_image_cow_find(lay, nlay, img->ahead[--j]);

			cow[--k].addr = l->addr;
			cow[k].ahead = true;
			memcpy(cow[k].data, l->data, RDMIG_IMG_PAGE);
		}
	}
	img->ncow += img->nahead;
	free(img->ahead);
	img->ahead = NULL;
	img->nahead = 0;
	return 0;
}
