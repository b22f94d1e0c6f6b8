/*
 * Unit tests of the process image codec (src/image.c): a realistic image
 * round-trips field by field and byte for byte; every truncation and every
 * malformed image is refused, by the encoder (-EINVAL) when built as a struct
 * and by the decoder (-EBADMSG) when crafted as bytes, with a log line that says
 * what; flipped bytes are refused or decode to an image that keeps every
 * invariant.
 *
 * The record tags and payload offsets below are the wire format as image.c
 * documents it, written down again here on purpose: a change to the format
 * shows up as a failing test, not as a silent incompatibility with older peers.
 *
 * With RDMIG_IMAGE_SEEDS=DIR set, the program also writes fuzzing seeds for
 * test/fuzz/fuzz_image.c into DIR.
 */
#include "helpers.h"

#include "rdmig/image.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

T_DEFINE_STATE;

enum {
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
};

#define HDR_LEN 16u
#define PAGE RDMIG_IMG_PAGE
/* payload offsets */
#define VMA_START 0
#define VMA_END 8
#define VMA_PGOFF 16
#define VMA_PROT 24
#define VMA_KIND 28
#define VMA_FLAGS 32
#define VMA_FILE 36
#define VMA_FIXED 40u
#define FD_FD 0
#define FD_KIND 4
#define FD_FILE 24
#define FD_RESERVED 28
#define FILE_PATH 40
#define THREAD_TID 260
#define THREAD_TID_CACHE 288
#define THREAD_COMM 296
#define THREAD_XSTATE_LEN 312
#define THREAD_NSIGINFO 316
#define CREDS_FIXED 76u
#define COW_ENTRY (8u + PAGE)

/* ---- building images ---- */

static uint32_t rnd_state = 1;

static uint32_t rnd(void)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return rnd_state >> 8;
}

static void *filled(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);

	if (!p)
		abort();
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
	return p;
}

static char *dup_str(const char *s)
{
	char *d = strdup(s);

	if (!d)
		abort();
	return d;
}

static void add_vma(struct rdmig_image *img, uint64_t start, uint64_t end, uint32_t prot,
                    uint32_t kind, uint32_t flags, uint32_t file, uint64_t pgoff, bool bitmap)
{
	struct rdmig_img_vma *v = &img->vmas[img->nvmas++];
	uint64_t pages = (end - start) / PAGE;

	*v = (struct rdmig_img_vma){start, end, prot, kind, flags, file, pgoff, NULL, NULL};
	if (bitmap) {
		v->touched = filled((pages + 7) / 8);
		if (pages % 8)
			v->touched[pages / 8] &= (uint8_t)((1u << (pages % 8)) - 1);
	}
}

static void add_fd(struct rdmig_image *img, int32_t fd, uint32_t kind, uint32_t flags,
                   uint32_t cloexec, uint64_t pos, uint32_t file)
{
	img->fds[img->nfds++] = (struct rdmig_img_fd){fd, kind, flags, cloexec, pos, file};
}

static void add_file(struct rdmig_image *img, const char *path, uint32_t mode)
{
	struct rdmig_img_file *f = &img->files[img->nfiles];

	*f = (struct rdmig_img_file){dup_str(path),
	                             0x803,
	                             1000 + img->nfiles,
	                             4096u * rnd(),
	                             1700000000 + (int64_t)rnd(),
	                             rnd() % 1000000000u,
	                             mode};
	img->nfiles++;
}

/* The parts every image has: process, mm, creds, limits, signals, thread. */
static void build_base(struct rdmig_image *img)
{
	static const uint64_t auxv_keys[] = {33, 16, 6,  17, 3,  4,  5,  7,  8,  9,
	                                     11, 12, 13, 14, 23, 25, 26, 31, 15, 0};
	uint64_t *auxv;

	memset(img, 0, sizeof(*img));
	img->pid = 4242;
	memcpy(img->comm, "app-worker", 11);
	img->exe = dup_str("/usr/bin/app");
	img->cwd = dup_str("/home/user/work dir");
	img->umask = 022;
	img->personality = 0;
	img->mm =
	    (struct rdmig_img_mm){0x555555556000, 0x55555555a000, 0x55555555a000, 0x55555555b100,
	                          0x55555555c000, 0x55555557d000, 0x7fffffffe3a0, 0x7fffffffe6c1,
	                          0x7fffffffe6d0, 0x7fffffffe6d0, 0x7fffffffefe0};
	img->auxv_len = (uint32_t)(sizeof(auxv_keys) * 16 / sizeof(auxv_keys[0]));
	auxv = malloc(img->auxv_len);
	if (!auxv)
		abort();
	for (size_t i = 0; i < sizeof(auxv_keys) / sizeof(auxv_keys[0]); i++) {
		auxv[2 * i] = auxv_keys[i];
		auxv[2 * i + 1] = auxv_keys[i] ? 0x7ffff7fc5000 + i * 8 : 0;
	}
	img->auxv = (uint8_t *)auxv;
	for (int i = 0; i < 4; i++) {
		img->creds.uid[i] = 1000;
		img->creds.gid[i] = 1000 + (uint32_t)i;
	}
	img->creds.ngroups = 3;
	img->creds.groups = malloc(3 * sizeof(uint32_t));
	if (!img->creds.groups)
		abort();
	img->creds.groups[0] = 4;
	img->creds.groups[1] = 27;
	img->creds.groups[2] = 1000;
	img->creds.cap_bnd = 0x1ffffffffff;
	img->creds.no_new_privs = 1;
	for (uint32_t i = 0; i < RDMIG_IMG_NRLIMIT; i++) {
		img->rlim_max[i] = i % 3 ? UINT64_MAX : 4096u * (i + 1);
		img->rlim_cur[i] = img->rlim_max[i] == UINT64_MAX ? 8u << 20 : img->rlim_max[i];
	}
	for (uint32_t i = 0; i < RDMIG_IMG_NSIG; i++)
		img->sigactions[i] = (struct rdmig_img_sigaction){
		    i % 5 == 1 ? 0x555555557120 : i % 2, 0x04000000 | i, 0x7ffff7c42520,
		    (uint64_t)rnd() << 20};
	img->nsiginfo_shared = 2;
	img->siginfo_shared = filled(2 * RDMIG_IMG_SIGINFO);
	img->threads =
	    calloc(RDMIG_IMG_MAX_THREADS + 1, sizeof(*img->threads)); /* one past: tests */
	if (!img->threads)
		abort();
	img->nthreads = 1;
	img->threads[0].tid = img->pid;
	memcpy(img->threads[0].comm, img->comm, sizeof(img->comm));
	for (uint32_t i = 0; i < RDMIG_IMG_NREGS; i++)
		img->threads[0].regs[i] = ((uint64_t)rnd() << 32) | rnd();
	img->threads[0].xstate_len = 832;
	img->threads[0].xstate = filled(832);
	img->threads[0].sigmask = 1u << 13;
	img->threads[0].nsiginfo = 1;
	img->threads[0].siginfo = filled(RDMIG_IMG_SIGINFO);
	img->threads[0].altstack_sp = 0x7ffff7a10000;
	img->threads[0].altstack_size = 65536;
	img->threads[0].rseq_len = 32;
	img->threads[0].rseq_addr = 0x7ffff7f18960; /* in a page sent eagerly (build_image) */
	img->threads[0].rseq_sig = 0x53053053;
	img->threads[0].robust_head = 0x7ffff7d8f720;
	img->threads[0].robust_len = 24;
	img->threads[0].clear_child_tid = 0x7ffff7d8f710;
}

/* A process as capture would see it: a PIE with libc, heap, an arena, a locale
 * mapping, vvar/vdso and stack; stdio, two files and /dev/null; three written
 * pages in private file mappings. */
static void build_image(struct rdmig_image *img)
{
	const uint32_t R = 1, W = 2, X = 4, NONE = UINT32_MAX;

	rnd_state = 1;
	build_base(img);
	img->vdso_len = 8192;
	img->vdso = filled(8192);

	img->files = calloc(5, sizeof(*img->files));
	img->vmas = calloc(16, sizeof(*img->vmas));
	img->fds = calloc(8, sizeof(*img->fds));
	img->cow = calloc(4, sizeof(*img->cow));
	if (!img->files || !img->vmas || !img->fds || !img->cow)
		abort();
	/* two more threads; the second keeps its tid in a page sent eagerly */
	for (uint32_t t = 1; t < 3; t++) {
		struct rdmig_img_thread *th = &img->threads[t];

		th->tid = img->pid + 10 + (int32_t)t;
		snprintf(th->comm, sizeof(th->comm), "worker-%u", t);
		for (uint32_t i = 0; i < RDMIG_IMG_NREGS; i++)
			th->regs[i] = ((uint64_t)rnd() << 32) | rnd();
		th->xstate_len = 576;
		th->xstate = filled(576);
		th->sigmask = (uint64_t)rnd() << 7;
		th->altstack_flags = 2; /* SS_DISABLE */
		th->rseq_len = 32;
		th->rseq_addr = 0x7ffff7f18000 + 0x9a0 + t * 0x40;
		th->rseq_sig = 0x53053053;
		th->clear_child_tid = 0x7ffff7f182d0;
	}
	img->threads[2].nsiginfo = 2;
	img->threads[2].siginfo = filled(2 * RDMIG_IMG_SIGINFO);
	img->threads[2].tid_cache = 0x7ffff7f182d0;
	img->nthreads = 3;
	add_file(img, "/usr/bin/app", 0100755);
	add_file(img, "/usr/lib/x86_64-linux-gnu/libc.so.6", 0100755);
	add_file(img, "/usr/lib/locale/locale-archive", 0100644);
	add_file(img, "/dev/null", 020666);
	add_file(img, "/var/log/app/caf\xc3\xa9 ~log.txt", 0100640);

	add_vma(img, 0x555555554000, 0x555555556000, R, RDMIG_VMA_FILE_PRIVATE, 0, 0, 0, false);
	add_vma(img, 0x555555556000, 0x55555555a000, R | X, RDMIG_VMA_FILE_PRIVATE, 0, 0, 0x2000,
	        false);
	add_vma(img, 0x55555555a000, 0x55555555c000, R | W, RDMIG_VMA_FILE_PRIVATE, 0, 0, 0x6000,
	        false);
	add_vma(img, 0x55555555c000, 0x55555557d000, R | W, RDMIG_VMA_ANON, RDMIG_VMA_F_HEAP, NONE,
	        0, true); /* 33 pages: a partial last bitmap byte */
	add_vma(img, 0x7ffff7a00000, 0x7ffff7c00000, R | W, RDMIG_VMA_ANON, 0, NONE, 0, true);
	/* this one dense: two runs (pages 0-99, 200-511), which the encoder sends as
	 * runs, not as its bitmap */
	memset(img->vmas[4].touched, 0, 64);
	rdmig_bitmap_set(img->vmas[4].touched, 0, 100);
	rdmig_bitmap_set(img->vmas[4].touched, 200, 312);
	add_vma(img, 0x7ffff7c00000, 0x7ffff7d00000, R, RDMIG_VMA_FILE_SHARED_RO, 0, 2, 0, false);
	add_vma(img, 0x7ffff7d00000, 0x7ffff7d28000, R, RDMIG_VMA_FILE_PRIVATE, 0, 1, 0, false);
	add_vma(img, 0x7ffff7d28000, 0x7ffff7ebd000, R | X, RDMIG_VMA_FILE_PRIVATE, 0, 1, 0x28000,
	        false);
	add_vma(img, 0x7ffff7f14000, 0x7ffff7f18000, R | W, RDMIG_VMA_FILE_PRIVATE, 0, 1, 0x213000,
	        false);
	add_vma(img, 0x7ffff7f18000, 0x7ffff7f25000, R | W, RDMIG_VMA_ANON, 0, NONE, 0, false);
	add_vma(img, 0x7ffff7f30000, 0x7ffff7f31000, 0, RDMIG_VMA_ANON, 0, NONE, 0, true);
	add_vma(img, 0x7ffff7fbf000, 0x7ffff7fc1000, R, RDMIG_VMA_VVAR_VCLOCK, 0, NONE, 0, false);
	add_vma(img, 0x7ffff7fc1000, 0x7ffff7fc5000, R, RDMIG_VMA_VVAR, 0, NONE, 0, false);
	add_vma(img, 0x7ffff7fc5000, 0x7ffff7fc7000, R | X, RDMIG_VMA_VDSO, 0, NONE, 0, false);
	add_vma(img, 0x7ffffffde000, 0x7ffffffff000, R | W, RDMIG_VMA_ANON,
	        RDMIG_VMA_F_STACK | RDMIG_VMA_F_GROWSDOWN, NONE, 0, true);

	add_fd(img, 0, RDMIG_FD_STDIO, O_RDWR, 0, 0, NONE);
	add_fd(img, 1, RDMIG_FD_STDIO, O_WRONLY, 0, 0, NONE);
	add_fd(img, 2, RDMIG_FD_STDIO, O_WRONLY | O_APPEND, 0, 0, NONE);
	add_fd(img, 3, RDMIG_FD_FILE, O_WRONLY | O_APPEND, 1, 123456, 4);
	add_fd(img, 4, RDMIG_FD_DEVNULL, O_RDONLY, 1, 0, 3);
	add_fd(img, 7, RDMIG_FD_FILE, O_RDONLY, 0, 0x10000, 2);

	const uint64_t cow[4] = {0x55555555a000, 0x55555555b000, 0x7ffff7f16000, 0x7ffff7f18000};
	for (int i = 0; i < 4; i++) {
		uint8_t *data = filled(PAGE);

		img->cow[i].addr = cow[i];
		memcpy(img->cow[i].data, data, PAGE);
		free(data);
	}
	img->ncow = 4;
}

/* The least an image holds: no files, vmas, fds or written pages. */
static void build_minimal(struct rdmig_image *img)
{
	rnd_state = 7;
	build_base(img);
	free(img->threads[0].xstate);
	img->threads[0].xstate = NULL;
	img->threads[0].xstate_len = 0;
	img->threads[0].rseq_len = 0; /* no memory to hold an area */
	img->threads[0].rseq_addr = 0;
	img->threads[0].rseq_sig = 0;
}

/* A small image for the fuzzing seeds: one file, three vmas, one written page. */
static void build_small(struct rdmig_image *img)
{
	rnd_state = 3;
	build_base(img);
	img->files = calloc(1, sizeof(*img->files));
	img->vmas = calloc(3, sizeof(*img->vmas));
	img->fds = calloc(2, sizeof(*img->fds));
	img->cow = calloc(1, sizeof(*img->cow));
	if (!img->files || !img->vmas || !img->fds || !img->cow)
		abort();
	add_file(img, "/bin/x", 0100755);
	add_vma(img, 0x400000, 0x402000, 5, RDMIG_VMA_FILE_PRIVATE, 0, 0, 0, false);
	add_vma(img, 0x600000, 0x60a000, 3, RDMIG_VMA_ANON, RDMIG_VMA_F_HEAP, UINT32_MAX, 0, true);
	add_vma(img, 0x7ffff7fc5000, 0x7ffff7fc7000, 5, RDMIG_VMA_VDSO, 0, UINT32_MAX, 0, false);
	add_fd(img, 1, RDMIG_FD_STDIO, O_WRONLY, 0, 0, UINT32_MAX);
	add_fd(img, 5, RDMIG_FD_FILE, O_RDONLY, 1, 77, 0);
	img->cow[0].addr = 0x401000;
	memset(img->cow[0].data, 0xa5, PAGE);
	img->ncow = 1;
	img->threads[0].rseq_addr = 0x401fe0; /* in the written page */
}

/* ---- comparing and checking ---- */

#define DIFF(field)                                                                                \
	do {                                                                                       \
		if (a->field != b->field)                                                          \
			return #field;                                                             \
	} while (0)
#define DIFF_BYTES(pa, pb, n, name)                                                                \
	do {                                                                                       \
		if ((n) != 0 && ((!(pa) || !(pb)) || memcmp((pa), (pb), (n))))                     \
			return name;                                                               \
	} while (0)

static const char *diff_thread(const struct rdmig_img_thread *a, const struct rdmig_img_thread *b)
{
	for (uint32_t i = 0; i < RDMIG_IMG_NREGS; i++)
		DIFF(regs[i]);
	DIFF(xstate_len);
	DIFF_BYTES(a->xstate, b->xstate, a->xstate_len, "thread.xstate");
	DIFF(sigmask);
	DIFF(nsiginfo);
	DIFF_BYTES(a->siginfo, b->siginfo, (size_t)a->nsiginfo * RDMIG_IMG_SIGINFO,
	           "thread.siginfo");
	DIFF(altstack_sp);
	DIFF(altstack_size);
	DIFF(altstack_flags);
	DIFF(rseq_len);
	DIFF(rseq_addr);
	DIFF(rseq_sig);
	DIFF(robust_head);
	DIFF(robust_len);
	DIFF(clear_child_tid);
	DIFF(tid);
	DIFF(tid_cache);
	DIFF_BYTES(a->comm, b->comm, sizeof(a->comm), "thread.comm");
	return NULL;
}

static const char *diff_tables(const struct rdmig_image *a, const struct rdmig_image *b)
{
	DIFF(nfiles);
	for (uint32_t i = 0; i < a->nfiles; i++) {
		DIFF(files[i].dev);
		DIFF(files[i].ino);
		DIFF(files[i].size);
		DIFF(files[i].mtime_sec);
		DIFF(files[i].mtime_nsec);
		DIFF(files[i].mode);
		if (strcmp(a->files[i].path, b->files[i].path))
			return "files[i].path";
	}
	DIFF(nvmas);
	for (uint32_t i = 0; i < a->nvmas; i++) {
		const struct rdmig_img_vma *va = &a->vmas[i], *vb = &b->vmas[i];

		DIFF(vmas[i].start);
		DIFF(vmas[i].end);
		DIFF(vmas[i].prot);
		DIFF(vmas[i].kind);
		DIFF(vmas[i].flags);
		DIFF(vmas[i].file);
		DIFF(vmas[i].pgoff);
		if (!va->touched != !vb->touched)
			return "vmas[i].touched presence";
		DIFF_BYTES(va->touched, vb->touched,
		           va->touched ? ((va->end - va->start) / PAGE + 7) / 8 : 0,
		           "vmas[i].touched");
	}
	DIFF(nfds);
	for (uint32_t i = 0; i < a->nfds; i++) {
		DIFF(fds[i].fd);
		DIFF(fds[i].kind);
		DIFF(fds[i].flags);
		DIFF(fds[i].cloexec);
		DIFF(fds[i].pos);
		DIFF(fds[i].file);
	}
	DIFF(ncow);
	for (uint32_t i = 0; i < a->ncow; i++) {
		DIFF(cow[i].addr);
		DIFF_BYTES(a->cow[i].data, b->cow[i].data, PAGE, "cow[i].data");
	}
	DIFF(nahead);
	for (uint32_t i = 0; i < a->nahead; i++)
		DIFF(ahead[i]);
	return NULL;
}

/* The first field where a and b differ, or NULL. */
static const char *diff_image(const struct rdmig_image *a, const struct rdmig_image *b)
{
	const char *d;

	DIFF(pid);
	DIFF_BYTES(a->comm, b->comm, sizeof(a->comm), "comm");
	if (strcmp(a->exe, b->exe))
		return "exe";
	if (strcmp(a->cwd, b->cwd))
		return "cwd";
	DIFF(umask);
	DIFF(personality);
	DIFF_BYTES(&a->mm, &b->mm, sizeof(a->mm), "mm"); /* u64s only: no padding */
	DIFF(auxv_len);
	DIFF_BYTES(a->auxv, b->auxv, a->auxv_len, "auxv");
	for (int i = 0; i < 4; i++) {
		DIFF(creds.uid[i]);
		DIFF(creds.gid[i]);
	}
	DIFF(creds.ngroups);
	DIFF_BYTES(a->creds.groups, b->creds.groups, a->creds.ngroups * sizeof(uint32_t),
	           "creds.groups");
	DIFF(creds.cap_inh);
	DIFF(creds.cap_prm);
	DIFF(creds.cap_eff);
	DIFF(creds.cap_bnd);
	DIFF(creds.cap_amb);
	DIFF(creds.no_new_privs);
	for (uint32_t i = 0; i < RDMIG_IMG_NRLIMIT; i++) {
		DIFF(rlim_cur[i]);
		DIFF(rlim_max[i]);
	}
	DIFF_BYTES(a->sigactions, b->sigactions, sizeof(a->sigactions), "sigactions");
	DIFF(nsiginfo_shared);
	DIFF_BYTES(a->siginfo_shared, b->siginfo_shared,
	           (size_t)a->nsiginfo_shared * RDMIG_IMG_SIGINFO, "siginfo_shared");
	DIFF(nthreads);
	for (uint32_t i = 0; i < a->nthreads; i++) {
		d = diff_thread(&a->threads[i], &b->threads[i]);
		if (d)
			return d;
	}
	DIFF(vdso_len);
	DIFF_BYTES(a->vdso, b->vdso, a->vdso_len, "vdso");
	return diff_tables(a, b);
}

static bool path_ok(const char *s)
{
	size_t n = s ? strnlen(s, RDMIG_IMG_MAX_PATH + 1) : 0;

	if (n == 0 || n > RDMIG_IMG_MAX_PATH || s[0] != '/')
		return false;
	for (size_t i = 0; i < n; i++) {
		if ((uint8_t)s[i] < 0x20 || (uint8_t)s[i] == 0x7f)
			return false;
	}
	return true;
}

/* What a decoded image promises its users, checked without image.c's help.
 * NULL, or the first broken promise. */
static const char *broken_invariant(const struct rdmig_image *img)
{
	if (!memchr(img->comm, 0, sizeof(img->comm)) || !path_ok(img->exe) || !path_ok(img->cwd))
		return "comm/exe/cwd";
	if (img->umask > 0777 || img->auxv_len % 16 || img->auxv_len > RDMIG_IMG_MAX_AUXV ||
	    !img->auxv != !img->auxv_len)
		return "umask/auxv";
	if (img->creds.ngroups > RDMIG_IMG_MAX_GROUPS || !img->creds.groups != !img->creds.ngroups)
		return "groups";
	if (img->nthreads < 1 || img->nthreads > RDMIG_IMG_MAX_THREADS || !img->threads ||
	    img->threads[0].tid != img->pid)
		return "threads";
	for (uint32_t i = 0; i < img->nthreads; i++) {
		const struct rdmig_img_thread *t = &img->threads[i];

		if (t->xstate_len > RDMIG_IMG_MAX_XSTATE || t->nsiginfo > RDMIG_IMG_MAX_SIGINFO ||
		    !t->xstate != !t->xstate_len || !t->siginfo != !t->nsiginfo ||
		    !memchr(t->comm, 0, sizeof(t->comm)) || t->tid <= 0)
			return "thread";
		for (uint32_t j = 0; j < i; j++) {
			if (img->threads[j].tid == t->tid)
				return "thread tids";
		}
	}
	if (img->nsiginfo_shared > RDMIG_IMG_MAX_SIGINFO || img->vdso_len > RDMIG_IMG_MAX_VDSO)
		return "thread/siginfo/vdso";
	if (img->nfiles > RDMIG_IMG_MAX_FILES || img->nvmas > RDMIG_IMG_MAX_VMAS ||
	    img->nfds > RDMIG_IMG_MAX_FDS || img->ncow > RDMIG_IMG_MAX_COW_PAGES)
		return "counts";
	for (uint32_t i = 0; i < img->nfiles; i++) {
		if (!path_ok(img->files[i].path))
			return "file path";
	}
	for (uint32_t i = 0; i < img->nvmas; i++) {
		const struct rdmig_img_vma *v = &img->vmas[i];
		bool file =
		    v->kind == RDMIG_VMA_FILE_PRIVATE || v->kind == RDMIG_VMA_FILE_SHARED_RO;

		if (v->start % PAGE || v->end % PAGE || v->start >= v->end ||
		    v->end > RDMIG_IMG_USER_END || (i && v->start < img->vmas[i - 1].end))
			return "vma range";
		if (v->kind < RDMIG_VMA_ANON || v->kind > RDMIG_VMA_KIND_MAX ||
		    (v->flags & ~RDMIG_VMA_F_ALL) || (v->prot & ~7u))
			return "vma kind/flags";
		if (file ? v->file >= img->nfiles || v->pgoff % PAGE : v->file != UINT32_MAX)
			return "vma file";
		if (v->touched && v->kind != RDMIG_VMA_ANON)
			return "vma bitmap";
		if (rdmig_image_vma_touched(v) > (v->end - v->start) / PAGE)
			return "vma touched count";
		if (rdmig_image_vma_at(img, v->start) != v ||
		    rdmig_image_vma_at(img, v->end - 1) != v)
			return "vma_at";
	}
	for (uint32_t i = 0; i < img->nfds; i++) {
		const struct rdmig_img_fd *f = &img->fds[i];

		if (f->fd < 0 || (i && f->fd <= img->fds[i - 1].fd))
			return "fd order";
		if (f->kind == RDMIG_FD_STDIO
		        ? f->fd > 2 || f->file != UINT32_MAX
		        : f->kind < RDMIG_FD_FILE || f->kind > RDMIG_FD_KIND_MAX ||
		              f->file >= img->nfiles)
			return "fd kind/file";
	}
	for (uint32_t i = 0; i < img->ncow; i++) {
		uint64_t a = img->cow[i].addr;
		bool inside = false;

		if (a % PAGE || (i && a <= img->cow[i - 1].addr))
			return "cow order";
		for (uint32_t j = 0; j < img->nvmas; j++) {
			const struct rdmig_img_vma *v = &img->vmas[j];
			uint64_t p = (a - v->start) / PAGE;

			if (a < v->start || a >= v->end)
				continue;
			inside |= v->kind == RDMIG_VMA_FILE_PRIVATE ||
			          (v->kind == RDMIG_VMA_ANON &&
			           !(v->touched && (v->touched[p / 8] >> (p % 8) & 1)));
		}
		if (!inside)
			return "cow outside a private file mapping or untouched anon memory";
	}
	return NULL;
}

/* ---- stderr capture: the decoder's log line says what it refused ---- */

struct capture {
	int saved;
	FILE *tmp;
};

static void capture_begin(struct capture *c)
{
	fflush(stderr);
	c->saved = dup(STDERR_FILENO);
	c->tmp = tmpfile();
	if (c->saved < 0 || !c->tmp || dup2(fileno(c->tmp), STDERR_FILENO) < 0)
		abort();
}

static void capture_end(struct capture *c, char *msg, size_t cap)
{
	size_t n;

	fflush(stderr);
	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	rewind(c->tmp);
	n = fread(msg, 1, cap - 1, c->tmp);
	msg[n] = '\0';
	fclose(c->tmp);
}

/* Quiet: thousands of refusals in a loop would flood the output. */
static int quiet_begin(void)
{
	int saved, null;

	fflush(stderr);
	saved = dup(STDERR_FILENO);
	null = open("/dev/null", O_WRONLY);
	if (saved < 0 || null < 0 || dup2(null, STDERR_FILENO) < 0)
		abort();
	close(null);
	return saved;
}

static void quiet_end(int saved)
{
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
}

static void expect_encode_refused(const struct rdmig_image *img, const char *what, const char *why)
{
	struct capture c;
	char msg[2048];
	uint8_t *buf = (uint8_t *)"unchanged";
	size_t len = 1;
	int ret;

	capture_begin(&c);
	ret = rdmig_image_encode(img, &buf, &len);
	capture_end(&c, msg, sizeof(msg));
	T_CHECK(ret == -EINVAL, "%s: encode returned %d", what, ret);
	T_CHECK(!buf && !len, "%s: output not cleared", what);
	T_CHECK(strstr(msg, why) && strstr(msg, " image "), "%s: log '%s' lacks '%s'", what, msg,
	        why);
	if (ret == 0)
		free(buf);
}

static bool all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++) {
		if (b[i])
			return false;
	}
	return true;
}

static void expect_decode_refused(const uint8_t *buf, size_t len, int want, const char *what,
                                  const char *why)
{
	struct rdmig_image img;
	struct capture c;
	char msg[2048];
	int ret;

	memset(&img, 0x5a, sizeof(img));
	capture_begin(&c);
	ret = rdmig_image_decode(buf, len, &img);
	capture_end(&c, msg, sizeof(msg));
	T_CHECK(ret == want, "%s: decode returned %d, want %d", what, ret, want);
	T_CHECK(all_zero(&img, sizeof(img)), "%s: image not zeroed", what);
	T_CHECK(strstr(msg, why) && strstr(msg, " image ") &&
	            strchr(msg, '\n') == msg + strlen(msg) - 1,
	        "%s: log '%s' lacks '%s' or is not one line", what, msg, why);
	if (ret == 0)
		rdmig_image_free(&img);
}

/* ---- editing encoded images record by record ---- */

struct wrec {
	uint16_t tag, flags;
	uint32_t len;
	uint8_t *p;
};

struct recs {
	size_t n, cap;
	struct wrec *r;
};

static uint16_t le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void set_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void set_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Insert count copies of a record before index at. */
static void recs_insert_n(struct recs *rs, size_t at, size_t count, uint16_t tag, uint32_t len,
                          const void *p)
{
	if (rs->n + count > rs->cap) {
		rs->cap = 2 * (rs->n + count);
		rs->r = realloc(rs->r, rs->cap * sizeof(*rs->r));
		if (!rs->r)
			abort();
	}
	memmove(&rs->r[at + count], &rs->r[at], (rs->n - at) * sizeof(*rs->r));
	for (size_t i = at; i < at + count; i++) {
		rs->r[i] = (struct wrec){tag, 0, len, calloc(1, len ? len : 1)};
		if (!rs->r[i].p)
			abort();
		if (p && len)
			memcpy(rs->r[i].p, p, len);
	}
	rs->n += count;
}

static void recs_insert(struct recs *rs, size_t at, uint16_t tag, uint32_t len, const void *p)
{
	recs_insert_n(rs, at, 1, tag, len, p);
}

static void recs_swap(struct recs *rs, size_t i, size_t j)
{
	struct wrec t = rs->r[i];

	rs->r[i] = rs->r[j];
	rs->r[j] = t;
}

/* Split a valid encoding (the caller's own) into records. */
static void recs_split(const uint8_t *buf, size_t len, struct recs *rs)
{
	memset(rs, 0, sizeof(*rs));
	for (size_t off = HDR_LEN; off < len;) {
		uint32_t rlen = le32(buf + off + 4);

		recs_insert(rs, rs->n, le16(buf + off), rlen, buf + off + 8);
		rs->r[rs->n - 1].flags = le16(buf + off + 2);
		off += 8 + rlen;
	}
}

static void recs_delete(struct recs *rs, size_t at)
{
	free(rs->r[at].p);
	memmove(&rs->r[at], &rs->r[at + 1], (rs->n - at - 1) * sizeof(*rs->r));
	rs->n--;
}

static void recs_free(struct recs *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		free(rs->r[i].p);
	free(rs->r);
	memset(rs, 0, sizeof(*rs));
}

/* Index of the nth record with this tag (aborts if there is none: a test bug). */
static size_t recs_find(const struct recs *rs, uint16_t tag, unsigned nth)
{
	for (size_t i = 0; i < rs->n; i++) {
		if (rs->r[i].tag == tag && nth-- == 0)
			return i;
	}
	abort();
}

static void recs_resize(struct recs *rs, size_t i, uint32_t len)
{
	rs->r[i].p = realloc(rs->r[i].p, len ? len : 1);
	if (!rs->r[i].p)
		abort();
	if (len > rs->r[i].len)
		memset(rs->r[i].p + rs->r[i].len, 0, len - rs->r[i].len);
	rs->r[i].len = len;
}

/* Header (with a correct total length) and records, into a malloc'd buffer. */
static uint8_t *recs_join(const struct recs *rs, size_t *len)
{
	size_t total = HDR_LEN, off = HDR_LEN;
	uint8_t *buf;

	for (size_t i = 0; i < rs->n; i++)
		total += 8 + (size_t)rs->r[i].len;
	buf = malloc(total);
	if (!buf)
		abort();
	set_le32(buf, RDMIG_IMG_MAGIC);
	set_le32(buf + 4, RDMIG_IMG_VERSION);
	set_le64(buf + 8, total);
	for (size_t i = 0; i < rs->n; i++) {
		buf[off] = (uint8_t)rs->r[i].tag;
		buf[off + 1] = (uint8_t)(rs->r[i].tag >> 8);
		buf[off + 2] = (uint8_t)rs->r[i].flags;
		buf[off + 3] = (uint8_t)(rs->r[i].flags >> 8);
		set_le32(buf + off + 4, rs->r[i].len);
		memcpy(buf + off + 8, rs->r[i].p, rs->r[i].len);
		off += 8 + rs->r[i].len;
	}
	*len = total;
	return buf;
}

static void expect_recs_refused(const struct recs *rs, const char *what, const char *why)
{
	size_t len;
	uint8_t *buf = recs_join(rs, &len);

	expect_decode_refused(buf, len, -EBADMSG, what, why);
	free(buf);
}

/* ---- cases ---- */

static void encode_ok(const struct rdmig_image *img, uint8_t **buf, size_t *len)
{
	int ret = rdmig_image_encode(img, buf, len);

	T_CHECK(ret == 0, "encode returned %d", ret);
	if (ret)
		abort(); /* nothing below can run */
}

static void roundtrip(void)
{
	struct rdmig_image img, got;
	uint8_t *buf, *again;
	size_t len, len2;
	const char *d;

	build_image(&img);
	encode_ok(&img, &buf, &len);
	T_CHECK(buf[0] == 'R' && buf[1] == 'D' && buf[2] == 'M' && buf[3] == 'I', "magic bytes");
	T_CHECK(le64(buf + 8) == len, "total length %" PRIu64 " vs %zu", le64(buf + 8), len);
	T_OK(rdmig_image_decode(buf, len, &got));
	d = diff_image(&img, &got);
	T_CHECK(!d, "decoded image differs in %s", d);
	d = broken_invariant(&got);
	T_CHECK(!d, "decoded image breaks %s", d);
	/* one encoding per image: the decoded image encodes to the same bytes */
	encode_ok(&got, &again, &len2);
	T_CHECK(len2 == len && !memcmp(buf, again, len), "re-encoding differs");
	free(again);

	/* the lookups users make */
	T_CHECK(rdmig_image_vma_at(&got, 0x55555555c000) == &got.vmas[3], "vma_at start");
	T_CHECK(rdmig_image_vma_at(&got, 0x55555557cfff) == &got.vmas[3], "vma_at end-1");
	T_CHECK(rdmig_image_vma_at(&got, 0x7ffff7f25000) == NULL, "vma_at gap");
	T_CHECK(rdmig_image_vma_at(&got, 0x1000) == NULL, "vma_at below");
	T_CHECK(rdmig_image_vma_at(&got, 0x7ffffffff000) == NULL, "vma_at above");
	T_CHECK(rdmig_image_vma_at(&got, 0x7ffffffdefff) == &got.vmas[14], "vma_at stack");
	for (uint32_t i = 0; i < got.nvmas; i++) {
		const struct rdmig_img_vma *v = &got.vmas[i];
		uint64_t pages = (v->end - v->start) / PAGE, n = 0;

		for (uint64_t p = 0; v->touched && p < pages; p++)
			n += (v->touched[p / 8] >> (p % 8)) & 1;
		T_CHECK(rdmig_image_vma_touched(v) == n, "vma %u touched %" PRIu64 " vs %" PRIu64,
		        i, rdmig_image_vma_touched(v), n);
	}
	T_CHECK(rdmig_image_vma_touched(&got.vmas[3]) > 0 &&
	            rdmig_image_vma_touched(&got.vmas[9]) == 0,
	        "touched counts");

	rdmig_image_free(&got);
	T_CHECK(all_zero(&got, sizeof(got)), "free leaves the image zeroed");
	rdmig_image_free(&got); /* twice is harmless */
	rdmig_image_free(&img);
	free(buf);
}

/* A held vma whose bits the source's walk has begun to fill (src/parts.c: in
 * the capture's idle time, before the image is sent) goes out without them:
 * its PART messages carry them. */
static void held_bits_not_sent(void)
{
	struct rdmig_image img, got;
	uint8_t *buf;
	size_t len;

	build_image(&img);
	T_CHECK(img.vmas[3].touched && rdmig_image_vma_touched(&img.vmas[3]) > 0,
	        "vma 3 has touched pages");
	img.vmas[3].flags |= RDMIG_VMA_F_HELD;
	encode_ok(&img, &buf, &len);
	T_OK(rdmig_image_decode(buf, len, &got));
	T_CHECK(got.nvmas == img.nvmas && (got.vmas[3].flags & RDMIG_VMA_F_HELD) &&
	            !got.vmas[3].touched && !got.vmas[3].written,
	        "the held vma arrives held, without bits");
	T_CHECK(img.vmas[3].touched && rdmig_image_vma_touched(&img.vmas[3]) > 0,
	        "the source keeps its bits");
	T_CHECK(got.vmas[4].start == img.vmas[4].start &&
	            rdmig_image_vma_touched(&got.vmas[4]) == rdmig_image_vma_touched(&img.vmas[4]),
	        "the other vmas as they were");
	rdmig_image_free(&got);
	rdmig_image_free(&img);
	free(buf);
}

static void roundtrip_edges(void)
{
	struct rdmig_image img, got;
	uint8_t *buf;
	size_t len;
	const char *d;

	/* no files, vmas, fds, pages; no xstate, vdso */
	build_minimal(&img);
	encode_ok(&img, &buf, &len);
	T_OK(rdmig_image_decode(buf, len, &got));
	d = diff_image(&img, &got);
	T_CHECK(!d, "minimal image differs in %s", d);
	T_CHECK(!got.vmas && !got.files && !got.fds && !got.cow && !got.vdso &&
	            !got.threads[0].xstate,
	        "empty tables are NULL");
	T_CHECK(rdmig_image_vma_at(&got, 0x400000) == NULL, "vma_at with no vmas");
	rdmig_image_free(&got);
	free(buf);
	rdmig_image_free(&img);

	/* 600 written pages: three COW records; limits at their maxima */
	build_small(&img);
	free(img.cow);
	img.cow = calloc(600, sizeof(*img.cow));
	img.vmas[0].end = 0x400000 + 600 * PAGE;
	img.vmas[1].start = 0x700000;
	img.vmas[1].end = 0x70a000;
	img.vmas[1].flags = RDMIG_VMA_F_STACK | RDMIG_VMA_F_GROWSDOWN;
	for (uint32_t i = 0; i < 600; i++) {
		img.cow[i].addr = 0x400000 + (uint64_t)i * PAGE;
		memset(img.cow[i].data, (int)i, PAGE);
	}
	img.ncow = 600;
	img.umask = 0777;
	img.auxv_len = RDMIG_IMG_MAX_AUXV;
	free(img.auxv);
	img.auxv = filled(RDMIG_IMG_MAX_AUXV);
	img.threads[0].xstate_len = RDMIG_IMG_MAX_XSTATE;
	free(img.threads[0].xstate);
	img.threads[0].xstate = filled(RDMIG_IMG_MAX_XSTATE);
	img.vdso_len = RDMIG_IMG_MAX_VDSO;
	img.vdso = filled(RDMIG_IMG_MAX_VDSO);
	free(img.files[0].path);
	img.files[0].path = malloc(RDMIG_IMG_MAX_PATH + 1);
	memset(img.files[0].path, 0xe9, RDMIG_IMG_MAX_PATH);
	img.files[0].path[0] = '/';
	img.files[0].path[RDMIG_IMG_MAX_PATH] = '\0';
	img.vmas[2] = (struct rdmig_img_vma){RDMIG_IMG_USER_END - 2 * PAGE,
	                                     RDMIG_IMG_USER_END,
	                                     1,
	                                     RDMIG_VMA_VDSO,
	                                     0,
	                                     UINT32_MAX,
	                                     0,
	                                     NULL,
	                                     NULL};
	img.fds[0].fd = 0;
	img.fds[1].fd = INT32_MAX;
	encode_ok(&img, &buf, &len);
	T_OK(rdmig_image_decode(buf, len, &got));
	d = diff_image(&img, &got);
	T_CHECK(!d, "large image differs in %s", d);
	d = broken_invariant(&got);
	T_CHECK(!d, "large image breaks %s", d);
	rdmig_image_free(&got);
	free(buf);
	rdmig_image_free(&img);
}

/* Every prefix is refused. With the total length patched to match, a prefix is
 * still refused unless it ends between records, and then what it decodes to
 * encodes back to exactly that prefix. */
static void truncations(void)
{
	struct rdmig_image img, got;
	uint8_t *buf, *cut, *again;
	size_t len, len2;
	int wrong = 0, ok_cuts = 0, quiet;

	build_image(&img);
	/* else only the whole image names their pages */
	img.threads[2].tid_cache = 0;
	for (uint32_t t = 0; t < img.nthreads; t++)
		img.threads[t].rseq_len = 0;
	encode_ok(&img, &buf, &len);
	cut = malloc(len);
	quiet = quiet_begin();
	/* the prefixes that end between records and hold every singleton */
	size_t valid_cuts = 0;
	for (size_t off = HDR_LEN, prev_tag = 0; off < len; off += 8 + le32(buf + off + 4)) {
		valid_cuts += prev_tag >= TAG_VDSO;
		prev_tag = le16(buf + off);
	}
	for (size_t n = 0; n < len; n++) {
		bool boundary = false;
		int ret;

		memcpy(cut, buf, n);
		ret = rdmig_image_decode(cut, n, &got);
		if (ret != -EBADMSG || !all_zero(&got, sizeof(got)))
			wrong++;
		if (ret == 0)
			rdmig_image_free(&got);
		if (n < HDR_LEN)
			continue;
		for (size_t off = HDR_LEN; off <= n; off += 8 + le32(buf + off + 4)) {
			if (off == n)
				boundary = true;
			if (off + 8 > n)
				break;
		}
		set_le64(cut + 8, n);
		ret = rdmig_image_decode(cut, n, &got);
		if (ret == 0) {
			ok_cuts++;
			if (!boundary || broken_invariant(&got) ||
			    rdmig_image_encode(&got, &again, &len2))
				wrong++;
			else if (len2 != n || memcmp(again, cut, n))
				wrong++, free(again);
			else
				free(again);
			rdmig_image_free(&got);
		} else if (ret != -EBADMSG) {
			wrong++;
		}
	}
	quiet_end(quiet);
	T_CHECK(wrong == 0, "%d of %zu truncations not refused as they should be", wrong, len);
	T_CHECK((size_t)ok_cuts == valid_cuts, "%d truncations decoded, %zu expected", ok_cuts,
	        valid_cuts);
	free(cut);
	free(buf);
	rdmig_image_free(&img);
}

/* Flip bits in every byte: each result is refused or decodes to an image that
 * keeps every invariant and encodes again. */
static void flips(void)
{
	static const uint8_t masks[] = {0x01, 0x80, 0xff, 0x20};
	struct rdmig_image img, got;
	uint8_t *buf, *bad, *again;
	size_t len, len2;
	int wrong = 0, decoded = 0, quiet;
	size_t first_wrong = SIZE_MAX;

	build_image(&img);
	encode_ok(&img, &buf, &len);
	bad = malloc(len);
	memcpy(bad, buf, len);
	quiet = quiet_begin();
	for (size_t i = 0; i < len; i++) {
		for (size_t m = 0; m < sizeof(masks); m++) {
			int ret, want_fail;

			bad[i] ^= masks[m];
			ret = rdmig_image_decode(bad, len, &got);
			/* the header: magic and length always count, version too */
			want_fail = i < 4 || (i >= 8 && i < 16) ? -EBADMSG
			            : i < 8                     ? -EPROTONOSUPPORT
			                                        : 0;
			if (ret == 0) {
				decoded++;
				if (want_fail || broken_invariant(&got) ||
				    rdmig_image_encode(&got, &again, &len2)) {
					wrong++;
				} else {
					/* canonical: the same bytes come back */
					if (len2 != len || memcmp(again, bad, len))
						wrong++;
					free(again);
				}
				rdmig_image_free(&got);
			} else if ((want_fail && ret != want_fail) ||
			           (ret != -EBADMSG && ret != -EPROTONOSUPPORT) ||
			           !all_zero(&got, sizeof(got))) {
				wrong++;
			}
			if (wrong && first_wrong == SIZE_MAX)
				first_wrong = i;
			bad[i] ^= masks[m];
		}
	}
	quiet_end(quiet);
	T_CHECK(wrong == 0, "%d flips misjudged, first at byte %zu", wrong, first_wrong);
	T_CHECK(decoded > 0 && (size_t)decoded < len * sizeof(masks), "%d of %zu flips decoded",
	        decoded, len * sizeof(masks));
	free(bad);
	free(buf);
	rdmig_image_free(&img);
}

/* A realistic image broken one way, then given to the encoder. */
#define BAD_IMG(what, why, ...)                                                                    \
	do {                                                                                       \
		struct rdmig_image bad_;                                                           \
		build_image(&bad_);                                                                \
		{                                                                                  \
			struct rdmig_image *im = &bad_;                                            \
			__VA_ARGS__;                                                               \
		}                                                                                  \
		expect_encode_refused(&bad_, what, why);                                           \
		rdmig_image_free(&bad_);                                                           \
	} while (0)

/* Its valid encoding broken one way, record by record, then given to the decoder. */
#define BAD_REC(what, why, ...)                                                                    \
	do {                                                                                       \
		struct recs rs_;                                                                   \
		recs_split(good, good_len, &rs_);                                                  \
		{                                                                                  \
			struct recs *rs = &rs_;                                                    \
			__VA_ARGS__;                                                               \
		}                                                                                  \
		expect_recs_refused(&rs_, what, why);                                              \
		recs_free(&rs_);                                                                   \
	} while (0)

#define REC(tag, nth) (rs->r[recs_find(rs, (tag), (nth))])

static void replace_str(char **s, const char *v)
{
	free(*s);
	*s = v ? dup_str(v) : NULL;
}

/* A page named as the layout's, into an image / as a COW_AHEAD record at the
 * end (one address, or two when b is not 0). */
static void add_ahead(struct rdmig_image *img, uint64_t a)
{
	img->ahead = realloc(img->ahead, (img->nahead + 1) * sizeof(*img->ahead));
	if (!img->ahead)
		abort();
	img->ahead[img->nahead++] = a;
}

static void ahead_rec(struct recs *rs, uint64_t a, uint64_t b)
{
	uint8_t p[16];

	set_le64(p, a);
	set_le64(p + 8, b);
	recs_insert(rs, rs->n, TAG_COW_AHEAD, b ? 16 : 8, p);
}

/* The cases the brief names, each as a struct and as bytes. */
static void malformed(void)
{
	struct rdmig_image img;
	uint8_t *good;
	size_t good_len;

	build_image(&img);
	encode_ok(&img, &good, &good_len);
	rdmig_image_free(&img);

	/* overlapping and unsorted vmas (vma 9 has no bitmap: its length is free) */
	BAD_IMG("overlapping vmas", "overlaps", im->vmas[9].start = im->vmas[8].start + PAGE);
	BAD_REC("overlapping vmas", "overlaps",
	        set_le64(REC(TAG_VMA, 9).p + VMA_START, 0x7ffff7f15000));
	BAD_IMG("unsorted vmas", "overlaps", struct rdmig_img_vma t = im->vmas[5];
	        im->vmas[5] = im->vmas[6]; im->vmas[6] = t);
	BAD_REC("unsorted vmas", "overlaps",
	        recs_swap(rs, recs_find(rs, TAG_VMA, 5), recs_find(rs, TAG_VMA, 6)));
	BAD_IMG("unaligned vma", "bad range", im->vmas[9].end += 1);
	BAD_REC("unaligned vma", "bad range",
	        set_le64(REC(TAG_VMA, 9).p + VMA_END, 0x7ffff7f25001));
	BAD_IMG("empty vma", "bad range", im->vmas[9].end = im->vmas[9].start);
	BAD_REC("empty vma", "bad range", set_le64(REC(TAG_VMA, 9).p + VMA_END, 0x7ffff7f18000));
	BAD_IMG("vma above user space", "bad range", im->vmas[13].end = RDMIG_IMG_USER_END + PAGE);
	BAD_REC("vma above user space", "bad range",
	        set_le64(REC(TAG_VMA, 13).p + VMA_END, RDMIG_IMG_USER_END + PAGE));
	BAD_REC("wrapping vma", "bad range",
	        set_le64(REC(TAG_VMA, 13).p + VMA_END, 0xfffffffffffff000));

	/* kinds and flags */
	BAD_IMG("vma kind 0", "unknown kind", im->vmas[12].kind = 0);
	BAD_REC("vma kind 7", "unknown kind", set_le32(REC(TAG_VMA, 12).p + VMA_KIND, 7));
	BAD_IMG("vma prot", "bad prot", im->vmas[12].prot = 8);
	BAD_REC("vma prot", "bad prot", set_le32(REC(TAG_VMA, 12).p + VMA_PROT, 0x10));
	BAD_IMG("vma flags", "bad flags", im->vmas[9].flags = 0x10);
	/* the source's own held vma may have bits (its walk fills them): they are
	 * not sent (held_bits_not_sent); on the wire they are refused */
	BAD_REC("held vma with a bitmap", "touched bitmap on a held vma",
	        set_le32(REC(TAG_VMA, 3).p + VMA_FLAGS,
	                 le32(REC(TAG_VMA, 3).p + VMA_FLAGS) | RDMIG_VMA_F_HELD));
	BAD_IMG("held file vma", "bad flags", im->vmas[1].flags = RDMIG_VMA_F_HELD);
	BAD_REC("vma flags", "bad flags", set_le32(REC(TAG_VMA, 9).p + VMA_FLAGS, 0x80000000));
	BAD_IMG("heap and stack", "bad flags",
	        im->vmas[3].flags = RDMIG_VMA_F_HEAP | RDMIG_VMA_F_STACK);
	BAD_REC("stack flag on a file vma", "bad flags",
	        set_le32(REC(TAG_VMA, 1).p + VMA_FLAGS, RDMIG_VMA_F_STACK));

	/* file indices */
	BAD_IMG("vma file index", "file index", im->vmas[1].file = im->nfiles);
	BAD_REC("vma file index", "file index", set_le32(REC(TAG_VMA, 1).p + VMA_FILE, 5));
	BAD_IMG("anon vma with a file", "file index", im->vmas[9].file = 0);
	BAD_REC("vdso with a file", "file index", set_le32(REC(TAG_VMA, 13).p + VMA_FILE, 0));
	BAD_IMG("fd file index", "file index", im->fds[3].file = 99);
	BAD_REC("fd file index", "file index", set_le32(REC(TAG_FD, 4).p + FD_FILE, UINT32_MAX));
	BAD_IMG("stdio fd with a file", "stdio", im->fds[1].file = 0);
	BAD_REC("stdio fd with a file", "stdio", set_le32(REC(TAG_FD, 0).p + FD_FILE, 1));
	BAD_IMG("unaligned pgoff", "file offset", im->vmas[1].pgoff = 0x2001);
	BAD_REC("pgoff overflow", "file offset",
	        set_le64(REC(TAG_VMA, 1).p + VMA_PGOFF, 0xfffffffffffff000));

	/* descriptors */
	BAD_IMG("unsorted fds", "unsorted", struct rdmig_img_fd t = im->fds[3];
	        im->fds[3] = im->fds[4]; im->fds[4] = t);
	BAD_REC("unsorted fds", "unsorted",
	        recs_swap(rs, recs_find(rs, TAG_FD, 3), recs_find(rs, TAG_FD, 4)));
	BAD_IMG("repeated fd", "repeated", im->fds[4].fd = 3);
	BAD_REC("repeated fd", "repeated", set_le32(REC(TAG_FD, 4).p + FD_FD, 3));
	BAD_IMG("negative fd", "negative", im->fds[0].fd = -1);
	BAD_REC("negative fd", "negative", set_le32(REC(TAG_FD, 0).p + FD_FD, 0x80000000));
	BAD_IMG("stdio fd 5", "stdio", im->fds[5].kind = RDMIG_FD_STDIO; im->fds[5].fd = 5;
	        im->fds[5].file = UINT32_MAX);
	BAD_REC("stdio fd 7", "stdio", set_le32(REC(TAG_FD, 5).p + FD_KIND, RDMIG_FD_STDIO);
	        set_le32(REC(TAG_FD, 5).p + FD_FILE, UINT32_MAX));
	BAD_IMG("fd kind", "bad kind", im->fds[3].kind = 0);
	BAD_REC("fd kind", "bad kind", set_le32(REC(TAG_FD, 3).p + FD_KIND, 4));
	BAD_IMG("cloexec", "cloexec", im->fds[3].cloexec = 2);
	BAD_REC("fd reserved", "reserved", set_le32(REC(TAG_FD, 3).p + FD_RESERVED, 1));

	/* touched bitmaps */
	BAD_REC("bitmap one byte short", "touched bitmap",
	        recs_resize(rs, recs_find(rs, TAG_VMA, 3), VMA_FIXED + 4));
	BAD_REC("bitmap one byte long", "touched bitmap",
	        recs_resize(rs, recs_find(rs, TAG_VMA, 3), VMA_FIXED + 6));
	BAD_REC("bitmap on a file vma", "touched bitmap",
	        recs_resize(rs, recs_find(rs, TAG_VMA, 1), VMA_FIXED + 1));
	BAD_IMG("bitmap on a file vma", "touched bitmap", im->vmas[1].touched = filled(1));
	BAD_IMG("bitmap on vvar", "touched bitmap", im->vmas[12].touched = calloc(1, 1));
	BAD_IMG("bitmap bits past the end", "past the last page", im->vmas[3].touched[4] |= 0x02);
	BAD_REC("bitmap bits past the end", "past the last page",
	        REC(TAG_VMA, 3).p[VMA_FIXED + 4] |= 0x80);

	/* written pages */
	BAD_IMG("cow page in touched anon memory", "also marked touched",
	        im->cow[3].addr = 0x7ffffffde000;
	        im->vmas[14].touched[0] |= 1);
	BAD_REC("cow page in touched anon memory", "also marked touched",
	        set_le64(REC(TAG_COW, 0).p + 3 * COW_ENTRY, 0x7ffffffde000);
	        REC(TAG_VMA, 14).p[VMA_FIXED] |= 1);
	BAD_IMG("cow page in a shared mapping", "not in a private file mapping",
	        im->cow[2].addr = 0x7ffff7c01000);
	BAD_REC("cow page in a gap", "not in a private file mapping",
	        set_le64(REC(TAG_COW, 0).p + 2 * COW_ENTRY, 0x7ffff7f26000));
	BAD_IMG("unaligned cow page", "unaligned", im->cow[1].addr += 8);
	BAD_REC("repeated cow page", "repeated",
	        set_le64(REC(TAG_COW, 0).p + COW_ENTRY, 0x55555555a000));
	BAD_REC("empty COW record", "bad length", recs_insert(rs, rs->n, TAG_COW, 0, NULL));
	BAD_REC("COW record of a partial page", "bad length",
	        recs_resize(rs, recs_find(rs, TAG_COW, 0), 2 * COW_ENTRY + 1));
	BAD_REC("COW record over the batch size", "bad length",
	        recs_resize(rs, recs_find(rs, TAG_COW, 0), 257 * COW_ENTRY));

	/* pages named as the layout's (vma 8 is libc's data, pages 0x7ffff7f14000..;
	 * 0x7ffff7f16000 comes with its bytes) */
	BAD_IMG("layout page in anonymous memory", "not in a private file mapping",
	        add_ahead(im, 0x7ffff7f19000));
	BAD_REC("layout page in anonymous memory", "not in a private file mapping",
	        ahead_rec(rs, 0x7ffff7f19000, 0));
	BAD_REC("layout page in a gap", "not in a private file mapping",
	        ahead_rec(rs, 0x7ffff7f26000, 0));
	BAD_IMG("layout page also with its bytes", "also comes with its bytes",
	        add_ahead(im, 0x7ffff7f16000));
	BAD_REC("layout page also with its bytes", "also comes with its bytes",
	        ahead_rec(rs, 0x7ffff7f16000, 0));
	BAD_REC("unaligned layout page", "unaligned", ahead_rec(rs, 0x7ffff7f14008, 0));
	BAD_REC("unsorted layout pages", "unsorted", ahead_rec(rs, 0x7ffff7f15000, 0x7ffff7f14000));
	BAD_REC("repeated layout page", "repeated", ahead_rec(rs, 0x7ffff7f15000, 0x7ffff7f15000));
	BAD_REC("empty COW_AHEAD record", "bad length",
	        recs_insert(rs, rs->n, TAG_COW_AHEAD, 0, NULL));
	BAD_REC("COW_AHEAD record of a partial address", "bad length",
	        recs_insert(rs, rs->n, TAG_COW_AHEAD, 4, "abcd"));
	BAD_REC("COW_AHEAD record over the batch size", "bad length",
	        ahead_rec(rs, 0x7ffff7f14000, 0);
	        recs_resize(rs, rs->n - 1, 4097 * 8));
	BAD_REC("two partial COW_AHEAD records", "follows a partial one",
	        ahead_rec(rs, 0x7ffff7f14000, 0);
	        ahead_rec(rs, 0x7ffff7f15000, 0));
	BAD_REC("two partial COW records", "follows a partial one",
	        size_t at = recs_find(rs, TAG_COW, 0);
	        recs_insert(rs, at + 1, TAG_COW, COW_ENTRY, rs->r[at].p + 3 * COW_ENTRY);
	        recs_resize(rs, at, 3 * COW_ENTRY));
	BAD_REC("COW_AHEAD before COW", "out of order", ahead_rec(rs, 0x7ffff7f14000, 0);
	        recs_swap(rs, rs->n - 1, recs_find(rs, TAG_COW, 0)));

	/* paths */
	BAD_IMG("control char in a path", "control character",
	        replace_str(&im->files[4].path, "/var/log/a\nb"));
	BAD_REC("control char in a path", "control character",
	        REC(TAG_FILE, 4).p[FILE_PATH + 5] = 0x1b);
	BAD_IMG("DEL in exe", "control character", replace_str(&im->exe, "/usr/bin/a\x7f"));
	BAD_REC("NUL in exe", "control character", REC(TAG_EXE, 0).p[3] = 0);
	BAD_IMG("relative cwd", "absolute", replace_str(&im->cwd, "home/user"));
	BAD_REC("relative cwd", "absolute", REC(TAG_CWD, 0).p[0] = '.');
	BAD_REC("relative file", "absolute", REC(TAG_FILE, 0).p[FILE_PATH] = 'u');
	BAD_IMG("empty path", "length", replace_str(&im->files[0].path, ""));
	BAD_REC("empty exe", "path length", recs_resize(rs, recs_find(rs, TAG_EXE, 0), 0));
	BAD_REC("empty file path", "path length",
	        recs_resize(rs, recs_find(rs, TAG_FILE, 0), FILE_PATH));
	BAD_IMG("no exe", "exe is missing", replace_str(&im->exe, NULL));
	BAD_IMG("long path", "length", free(im->cwd); im->cwd = malloc(RDMIG_IMG_MAX_PATH + 2);
	        memset(im->cwd, 'a', RDMIG_IMG_MAX_PATH + 1); im->cwd[0] = '/';
	        im->cwd[RDMIG_IMG_MAX_PATH + 1] = 0);
	BAD_REC("long path", "path length", size_t i = recs_find(rs, TAG_CWD, 0);
	        recs_resize(rs, i, RDMIG_IMG_MAX_PATH + 1);
	        memset(rs->r[i].p, 'a', RDMIG_IMG_MAX_PATH + 1); rs->r[i].p[0] = '/');
	BAD_IMG("file mtime_nsec", "mtime_nsec", im->files[2].mtime_nsec = 1000000000);

	/* process scalars */
	BAD_IMG("comm without NUL", "comm", memset(im->comm, 'x', sizeof(im->comm)));
	BAD_REC("comm without NUL", "comm", memset(REC(TAG_PROC, 0).p + 4, 'x', 16));
	BAD_IMG("umask", "umask", im->umask = 01000);
	BAD_REC("umask", "umask", set_le32(REC(TAG_PROC, 0).p + 20, 0xffffffff));
	BAD_IMG("auxv length", "auxv", im->auxv_len = 24);
	BAD_REC("auxv length", "AUXV: bad length",
	        recs_resize(rs, recs_find(rs, TAG_AUXV, 0), REC(TAG_AUXV, 0).len + 8));
	BAD_REC("auxv too long", "AUXV: bad length",
	        recs_resize(rs, recs_find(rs, TAG_AUXV, 0), RDMIG_IMG_MAX_AUXV + 16));
	BAD_IMG("mm order", "mm: bad range", im->mm.brk = im->mm.start_brk - PAGE);
	BAD_REC("mm past user space", "mm: bad range",
	        set_le64(REC(TAG_MM, 0).p + 8, RDMIG_IMG_USER_END + 1));
	BAD_IMG("rlimit soft above hard", "above hard", im->rlim_cur[0] = im->rlim_max[0] + 1);
	BAD_IMG("no_new_privs 2", "no_new_privs", im->creds.no_new_privs = 2);
	BAD_IMG("vdso too big", "vdso", im->vdso_len = RDMIG_IMG_MAX_VDSO + 1);
	BAD_REC("vdso too big", "VDSO: bad length",
	        recs_resize(rs, recs_find(rs, TAG_VDSO, 0), RDMIG_IMG_MAX_VDSO + 1));
	BAD_IMG("xstate without data", "xstate", free(im->threads[0].xstate);
	        im->threads[0].xstate = NULL);
	BAD_IMG("main thread's tid", "must be the pid", im->threads[0].tid = 1);
	BAD_REC("main thread's tid", "must be the pid",
	        set_le32(REC(TAG_THREAD, 0).p + THREAD_TID, 4243));
	BAD_REC("main thread not first", "must be the pid",
	        recs_swap(rs, recs_find(rs, TAG_THREAD, 0), recs_find(rs, TAG_THREAD, 1)));
	BAD_IMG("negative tid", "tid", im->threads[1].tid = -5);
	BAD_IMG("repeated tid", "repeated", im->threads[2].tid = im->threads[1].tid);
	BAD_REC("repeated tid", "repeated", set_le32(REC(TAG_THREAD, 1).p + THREAD_TID, 4242));
	BAD_IMG("thread comm without NUL", "comm", memset(im->threads[1].comm, 'x', 16));
	BAD_REC("thread comm without NUL", "comm",
	        memset(REC(TAG_THREAD, 2).p + THREAD_COMM, 'x', 16));
	BAD_IMG("tid cache unaligned", "tid cache", im->threads[2].tid_cache += 2);
	BAD_IMG("tid cache page not sent", "tid cache", im->threads[1].tid_cache = 0x7ffff7f19000);
	BAD_IMG("rseq area unaligned", "rseq area", im->threads[1].rseq_addr += 8);
	BAD_IMG("rseq page not sent", "rseq area", im->threads[0].rseq_addr = 0x7ffff7f19000);
	BAD_IMG("rseq area past its page", "rseq area",
	        (im->threads[2].rseq_addr = 0x7ffff7f18fe0, im->threads[2].rseq_len = 64));
	BAD_IMG("rseq area too long", "rseq area", im->threads[2].rseq_len = 8192);
	BAD_REC("tid cache unmapped", "tid cache",
	        set_le64(REC(TAG_THREAD, 2).p + THREAD_TID_CACHE, 0x7ffff7f26000));
	BAD_IMG(
	    "no threads", "thread table", for (uint32_t k = 0; k < im->nthreads; k++) {
		    free(im->threads[k].xstate);
		    free(im->threads[k].siginfo);
	    } im->nthreads = 0);
	BAD_REC("thread length", "THREAD: bad length",
	        recs_resize(rs, recs_find(rs, TAG_THREAD, 0), REC(TAG_THREAD, 0).len + 1));
	BAD_REC("siginfo partial", "SIGINFO: bad length",
	        recs_resize(rs, recs_find(rs, TAG_SIGINFO, 0), 200));
	BAD_REC("proc length", "PROC: bad length", recs_resize(rs, recs_find(rs, TAG_PROC, 0), 27));
	BAD_REC("creds partial group", "CREDS: bad length",
	        recs_resize(rs, recs_find(rs, TAG_CREDS, 0), CREDS_FIXED + 3));
	free(good);
}

/* Counts past the limits, and records in the wrong number or order. */
static void huge_and_framing(void)
{
	struct rdmig_image img;
	uint8_t *good, *buf;
	size_t good_len;

	build_image(&img);
	encode_ok(&img, &good, &good_len);
	rdmig_image_free(&img);

	BAD_IMG("too many groups", "bad groups", im->creds.ngroups = RDMIG_IMG_MAX_GROUPS + 1;
	        free(im->creds.groups);
	        im->creds.groups = calloc(RDMIG_IMG_MAX_GROUPS + 1, sizeof(uint32_t)));
	BAD_REC("too many groups", "groups", size_t i = recs_find(rs, TAG_CREDS, 0);
	        recs_resize(rs, i, CREDS_FIXED + 4 * (RDMIG_IMG_MAX_GROUPS + 1)));
	BAD_IMG("too many thread siginfo", "siginfo",
	        im->threads[0].nsiginfo = RDMIG_IMG_MAX_SIGINFO + 1;
	        free(im->threads[0].siginfo);
	        im->threads[0].siginfo = calloc(RDMIG_IMG_MAX_SIGINFO + 1, RDMIG_IMG_SIGINFO));
	BAD_REC("huge thread siginfo count", "over the limit",
	        set_le32(REC(TAG_THREAD, 0).p + THREAD_NSIGINFO, UINT32_MAX));
	BAD_REC("siginfo count vs length", "THREAD: bad length",
	        set_le32(REC(TAG_THREAD, 0).p + THREAD_NSIGINFO, 2));
	BAD_REC("huge xstate", "over the limit",
	        set_le32(REC(TAG_THREAD, 0).p + THREAD_XSTATE_LEN, RDMIG_IMG_MAX_XSTATE + 1));
	BAD_IMG("huge xstate", "xstate", im->threads[0].xstate_len = RDMIG_IMG_MAX_XSTATE + 1;
	        free(im->threads[0].xstate);
	        im->threads[0].xstate = filled(RDMIG_IMG_MAX_XSTATE + 1));
	BAD_IMG("too many shared siginfo", "siginfo",
	        im->nsiginfo_shared = RDMIG_IMG_MAX_SIGINFO + 1;
	        free(im->siginfo_shared);
	        im->siginfo_shared = calloc(RDMIG_IMG_MAX_SIGINFO + 1, RDMIG_IMG_SIGINFO));
	BAD_REC("too many shared siginfo", "SIGINFO: bad length",
	        recs_resize(rs, recs_find(rs, TAG_SIGINFO, 0),
	                    (RDMIG_IMG_MAX_SIGINFO + 1) * RDMIG_IMG_SIGINFO));

	/* tables one past their limit, each entry valid on its own */
	BAD_IMG("too many vmas", "vma table",
	        for (uint32_t k = 0; k < im->nvmas; k++) free(im->vmas[k].touched);
	        free(im->vmas); im->vmas = calloc(RDMIG_IMG_MAX_VMAS + 1, sizeof(*im->vmas));
	        im->nvmas = RDMIG_IMG_MAX_VMAS + 1;
	        for (uint32_t k = 0; k < im->nvmas; k++) im->vmas[k] =
	            (struct rdmig_img_vma){0x10000000 + 2ull * k * PAGE,
	                                   0x10001000 + 2ull * k * PAGE, 3, RDMIG_VMA_ANON, 0,
	                                   UINT32_MAX, 0, NULL, NULL};
	        im->ncow = 0);
	BAD_REC("too many vmas", "more than 65530 vmas", size_t at = recs_find(rs, TAG_VMA, 0);
	        recs_insert_n(rs, at, RDMIG_IMG_MAX_VMAS + 1, TAG_VMA, VMA_FIXED, rs->r[at].p));
	BAD_IMG("too many files", "file table", im->nfiles = RDMIG_IMG_MAX_FILES + 1;
	        im->files = realloc(im->files, (RDMIG_IMG_MAX_FILES + 1) * sizeof(*im->files));
	        memset(im->files + 5, 0, (RDMIG_IMG_MAX_FILES - 4) * sizeof(*im->files)));
	BAD_REC(
	    "too many files", "more than 65536 files", size_t at = recs_find(rs, TAG_FILE, 0);
	    recs_insert_n(rs, at, RDMIG_IMG_MAX_FILES + 1, TAG_FILE, rs->r[at].len, rs->r[at].p));
	BAD_IMG("too many fds", "fd table", im->nfds = RDMIG_IMG_MAX_FDS + 1;
	        im->fds = realloc(im->fds, (RDMIG_IMG_MAX_FDS + 1) * sizeof(*im->fds)));
	BAD_REC("too many fds", "more than 65536 fds", size_t at = recs_find(rs, TAG_FD, 5);
	        recs_insert_n(rs, at + 1, RDMIG_IMG_MAX_FDS + 1, TAG_FD, 32, rs->r[at].p));

	/* framing */
	BAD_REC("unknown tag", "unknown record tag", recs_insert(rs, rs->n, 17, 4, "abcd"));
	BAD_REC("tag 0", "unknown record tag", recs_insert(rs, 0, 0, 0, NULL));
	BAD_REC("record flags", "flags", REC(TAG_MM, 0).flags = 1);
	/* touched pages as runs (vma 4: {0, 100}, {200, 312}) */
	{
		struct recs chk;
		const struct wrec *v3, *v4;

		recs_split(good, good_len, &chk);
		v3 = &chk.r[recs_find(&chk, TAG_VMA, 3)];
		v4 = &chk.r[recs_find(&chk, TAG_VMA, 4)];
		T_CHECK(v4->flags == 1 && v4->len == 40 + 32 && v3->flags == 0,
		        "vma 4 not sent as two runs, or vma 3 not as a bitmap");
		recs_free(&chk);
	}
	BAD_REC("runs flag on a bitmap", "bytes of runs", REC(TAG_VMA, 3).flags = 1);
	/* one encoding per image: runs only where they are smaller than the bitmap */
	BAD_REC("runs where the bitmap is smaller", "where the bitmap takes",
	        size_t i = recs_find(rs, TAG_VMA, 3);
	        recs_resize(rs, i, 40 + 16); rs->r[i].flags = 1; set_le64(rs->r[i].p + 40, 0);
	        set_le64(rs->r[i].p + 48, 1));
	BAD_REC("bitmap where the runs are smaller", "runs take fewer",
	        size_t i = recs_find(rs, TAG_VMA, 4);
	        recs_resize(rs, i, 40 + 64); rs->r[i].flags = 0; memset(rs->r[i].p + 40, 0, 64);
	        rdmig_bitmap_set(rs->r[i].p + 40, 0, 100);
	        rdmig_bitmap_set(rs->r[i].p + 40, 200, 312));
	BAD_REC("runs cut", "bytes of runs", REC(TAG_VMA, 4).len -= 8);
	BAD_REC("run next to the one before", "out of order",
	        set_le64(REC(TAG_VMA, 4).p + 40 + 16, 100));
	BAD_REC("runs out of order", "out of order", set_le64(REC(TAG_VMA, 4).p + 40 + 16, 50));
	BAD_REC("run past the vma", "past the vma", set_le64(REC(TAG_VMA, 4).p + 40 + 24, 313));
	BAD_REC("empty run", "empty", set_le64(REC(TAG_VMA, 4).p + 40 + 8, 0));
	BAD_REC("run starting past the vma", "past the vma",
	        set_le64(REC(TAG_VMA, 4).p + 40 + 16, 512));
	BAD_REC("missing MM", "record MM missing", recs_delete(rs, recs_find(rs, TAG_MM, 0)));
	BAD_REC("missing THREAD", "record THREAD missing",
	        for (int k = 0; k < 3; k++) recs_delete(rs, recs_find(rs, TAG_THREAD, 0)));
	BAD_REC("missing VDSO", "record VDSO missing", recs_delete(rs, recs_find(rs, TAG_VDSO, 0)));
	BAD_REC("two identical THREAD records", "repeated", size_t i = recs_find(rs, TAG_THREAD, 0);
	        recs_insert(rs, i, TAG_THREAD, rs->r[i].len, rs->r[i].p));
	BAD_REC("too many threads", "more than 1024 threads",
	        size_t at = recs_find(rs, TAG_THREAD, 2);
	        recs_insert_n(rs, at + 1, RDMIG_IMG_MAX_THREADS, TAG_THREAD, rs->r[at].len,
	                      rs->r[at].p));
	BAD_IMG("too many threads", "thread table", im->nthreads = RDMIG_IMG_MAX_THREADS + 1);
	BAD_REC("two PROC records", "repeated",
	        recs_insert(rs, 0, TAG_PROC, 28, REC(TAG_PROC, 0).p));
	BAD_REC("FILE after VMA", "out of order",
	        recs_swap(rs, recs_find(rs, TAG_FILE, 4), recs_find(rs, TAG_VMA, 0)));
	BAD_REC("CWD before EXE", "out of order",
	        recs_swap(rs, recs_find(rs, TAG_EXE, 0), recs_find(rs, TAG_CWD, 0)));

	/* an image past RDMIG_IMG_MAX_BYTES: a bitmap of 257 MiB (calloc'd: never
	 * touched, the encoder refuses it before reading it) */
	build_minimal(&img);
	img.vmas = calloc(1, sizeof(*img.vmas));
	img.vmas[0] =
	    (struct rdmig_img_vma){0x100000000000,
	                           0x100000000000 + (RDMIG_IMG_MAX_BYTES + (1ull << 20)) * 8 * PAGE,
	                           3,
	                           RDMIG_VMA_ANON,
	                           0,
	                           UINT32_MAX,
	                           0,
	                           calloc(RDMIG_IMG_MAX_BYTES + (1u << 20), 1),
	                           NULL};
	img.nvmas = 1;
	T_CHECK(img.vmas[0].touched, "calloc");
	expect_encode_refused(&img, "image too large", "larger than the limit");
	rdmig_image_free(&img);

	/* the header */
	buf = malloc(good_len + 3);
	memcpy(buf, good, good_len);
	expect_decode_refused(buf, good_len - 1, -EBADMSG, "total longer than the buffer",
	                      "length");
	memset(buf + good_len, 0, 3);
	expect_decode_refused(buf, good_len + 3, -EBADMSG, "bytes past the total", "length");
	set_le64(buf + 8, good_len + 3);
	expect_decode_refused(buf, good_len + 3, -EBADMSG, "trailing partial record", "cut short");
	memcpy(buf, good, good_len);
	set_le64(buf + 8, (uint64_t)1 << 63);
	expect_decode_refused(buf, good_len, -EBADMSG, "huge total", "length");
	set_le64(buf + 8, good_len);
	set_le32(buf + HDR_LEN + 4, 0xfffffff0);
	expect_decode_refused(buf, good_len, -EBADMSG, "record past the end", "past the end");
	memcpy(buf, good, good_len);
	buf[0] = 'X';
	expect_decode_refused(buf, good_len, -EBADMSG, "wrong magic", "magic");
	memcpy(buf, good, good_len);
	set_le32(buf + 4, 5);
	expect_decode_refused(buf, good_len, -EPROTONOSUPPORT, "version 5", "version 5");
	set_le32(buf + 4, 3); /* no COW_AHEAD */
	expect_decode_refused(buf, good_len, -EPROTONOSUPPORT, "version 3", "version 3");
	set_le32(buf + 4, 2); /* touched pages as bitmaps only, rseq pages not sent */
	expect_decode_refused(buf, good_len, -EPROTONOSUPPORT, "version 2", "version 2");
	set_le32(buf + 4, 1); /* single-threaded images from before */
	expect_decode_refused(buf, good_len, -EPROTONOSUPPORT, "version 1", "version 1");
	set_le32(buf + 4, 0);
	expect_decode_refused(buf, good_len, -EPROTONOSUPPORT, "version 0", "version 0");
	expect_decode_refused(buf, 15, -EBADMSG, "short header", "shorter than the header");
	expect_decode_refused(NULL, 0, -EBADMSG, "no buffer", "shorter than the header");
	/* a header alone misses every record */
	memcpy(buf, good, HDR_LEN);
	set_le64(buf + 8, HDR_LEN);
	expect_decode_refused(buf, HDR_LEN, -EBADMSG, "no records", "record PROC missing");
	free(buf);
	free(good);
}

/* RDMIG_IMAGE_SEEDS=DIR: seeds for test/fuzz/fuzz_image.c. */
static int write_file(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
	char path[4096];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return -errno;
	n = fwrite(buf, 1, len, f);
	if (fclose(f) || n != len)
		return -EIO;
	return 0;
}

static void make_seeds(const char *dir)
{
	struct rdmig_image img;
	uint8_t *buf;
	size_t len;

	build_minimal(&img);
	encode_ok(&img, &buf, &len);
	T_OK(write_file(dir, "minimal", buf, len));
	free(buf);
	rdmig_image_free(&img);

	build_small(&img);
	encode_ok(&img, &buf, &len);
	T_OK(write_file(dir, "small", buf, len));
	/* near misses: a cow page in anon memory, an overlapping vma, a cut record */
	size_t cow_at = len - COW_ENTRY;
	set_le64(buf + cow_at, 0x600000);
	T_OK(write_file(dir, "small_cow_in_anon", buf, len));
	set_le64(buf + cow_at, 0x401000);
	for (size_t off = HDR_LEN; off < len; off += 8 + le32(buf + off + 4)) {
		if (le16(buf + off) == TAG_VMA && le64(buf + off + 8) == 0x600000) {
			set_le64(buf + off + 8, 0x401000);
			T_OK(write_file(dir, "small_overlap", buf, len));
			set_le64(buf + off + 8, 0x600000);
		}
	}
	set_le64(buf + 8, len - 100);
	T_OK(write_file(dir, "small_cut", buf, len - 100));
	free(buf);
	/* a heap of 256 pages, 200 of them touched: they go as one run */
	free(img.vmas[1].touched);
	img.vmas[1].end = 0x700000;
	img.vmas[1].touched = calloc(32, 1);
	T_CHECK(img.vmas[1].touched, "calloc");
	rdmig_bitmap_set(img.vmas[1].touched, 0, 200);
	encode_ok(&img, &buf, &len);
	T_OK(write_file(dir, "small_runs", buf, len));
	free(buf);
	/* its written page named as the layout's (a COW_AHEAD record, no COW) */
	img.ncow = 0;
	add_ahead(&img, 0x401000);
	encode_ok(&img, &buf, &len);
	T_OK(write_file(dir, "small_ahead", buf, len));
	free(buf);
	rdmig_image_free(&img);
}

static void write_seeds(void)
{
	const char *dir = getenv("RDMIG_IMAGE_SEEDS");

	if (dir)
		make_seeds(dir);
}

/* The committed seeds (test/CMakeLists.txt passes their folder) are the ones this
 * build writes: a format change that left them behind would leave the fuzzer
 * starting from inputs the decoder refuses at their header (the version 4 bump
 * did, until this check). */
static void seeds_current(void)
{
	const char *have = getenv("RDMIG_IMAGE_SEEDS_COMMITTED");
	char dir[] = "/tmp/rdmig-seeds-XXXXXX", cmd[8192];

	if (!have) {
		printf("  (RDMIG_IMAGE_SEEDS_COMMITTED not set: nothing to compare)\n");
		return;
	}
	if (!mkdtemp(dir)) {
		T_CHECK(false, "mkdtemp: %s", strerror(errno));
		return;
	}
	make_seeds(dir);
	snprintf(cmd, sizeof(cmd), "diff -r '%s' '%s' >&2", have, dir);
	T_CHECK(system(cmd) == 0,
	        "the committed seeds in %s are not this build's: regenerate them with "
	        "RDMIG_IMAGE_SEEDS=%s test_image",
	        have, have);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	T_CHECK(system(cmd) == 0, "removing %s", dir);
}

/* The written file pages the layout carried: the source names those unchanged
 * (mark), the destination gets their bytes back from its copy of the layout
 * (fill), and the image it restores is the one the source captured. */
static void layout_pages(void)
{
	struct rdmig_image img, full, got, bad;
	struct rdmig_img_cow_page lay[4];
	uint8_t *buf, *fullbuf;
	size_t len, fulllen;
	const char *d;
	int ret;

	build_image(&full);
	build_image(&img);
	encode_ok(&full, &fullbuf, &fulllen);
	/* the layout: libc's page 0x7ffff7f16000 and the app's 0x55555555a000 as
	 * they are now, 0x55555555b000 as it was before the process wrote it,
	 * 0x7ffff7f14000 dropped since; the tid cache's ANON page 0x7ffff7f18000
	 * with the same bytes (never named: anonymous pages are not the layout's) */
	memset(lay, 0, sizeof(lay));
	lay[0] = img.cow[0];
	lay[1] = img.cow[1];
	lay[1].data[100] ^= 1;
	lay[2].addr = 0x7ffff7f14000;
	memset(lay[2].data, 7, PAGE);
	lay[3] = img.cow[2];
	ret = rdmig_image_mark_ahead(&img, lay, 4);
	T_CHECK(ret == 2, "mark moved %d pages, want 2", ret);
	T_CHECK(img.nahead == 2 && img.ahead[0] == 0x55555555a000 && img.ahead[1] == 0x7ffff7f16000,
	        "ahead: %u pages", img.nahead);
	T_CHECK(img.ncow == 2 && img.cow[0].addr == 0x55555555b000 &&
	            img.cow[1].addr == 0x7ffff7f18000 &&
	            !memcmp(img.cow[0].data, full.cow[1].data, PAGE),
	        "cow after mark: %u pages", img.ncow);
	T_CHECK(rdmig_image_mark_ahead(&img, lay, 4) == -EINVAL, "a second mark");

	encode_ok(&img, &buf, &len);
	/* two COW entries fewer, one COW_AHEAD record of two addresses more */
	T_CHECK(fulllen - len == 2 * (8 + PAGE) - (8 + 2 * 8), "%zu bytes named against %zu sent",
	        len, fulllen);
	T_OK(rdmig_image_decode(buf, len, &got));
	d = diff_image(&img, &got);
	T_CHECK(!d, "decoded image differs in %s", d);

	/* a layout without one of them: refused, the image unchanged */
	T_OK(rdmig_image_decode(buf, len, &bad));
	T_CHECK(rdmig_image_fill_ahead(&bad, lay + 1, 3) == -EBADMSG, "fill without 0x...a000");
	T_CHECK(bad.nahead == 2 && bad.ncow == 2, "a refused fill changed the image");
	T_CHECK(rdmig_image_fill_ahead(&bad, NULL, 0) == -EBADMSG, "fill without a layout");
	rdmig_image_free(&bad);

	T_OK(rdmig_image_fill_ahead(&got, lay, 4));
	T_CHECK(!got.nahead && !got.ahead && got.ncow == 4, "after fill: %u ahead, %u cow",
	        got.nahead, got.ncow);
	d = diff_image(&full, &got);
	T_CHECK(!d, "filled image differs from the captured one in %s", d);
	for (uint32_t i = 0; i < got.ncow; i++)
		T_CHECK(got.cow[i].ahead == (i == 0 || i == 2), "page %u ahead %d", i,
		        got.cow[i].ahead);
	/* filled: as if the bytes had come (an encoding equal to the full one) */
	free(buf);
	encode_ok(&got, &buf, &len);
	T_CHECK(len == fulllen && !memcmp(buf, fullbuf, len), "filled image encodes otherwise");
	T_OK(rdmig_image_fill_ahead(&got, lay, 4)); /* nothing left to fill */
	T_CHECK(got.ncow == 4, "a second fill changed the image");

	free(buf);
	free(fullbuf);
	rdmig_image_free(&got);
	rdmig_image_free(&img);
	rdmig_image_free(&full);
}

/* rdmig_bitmap_run and rdmig_image_vma_touched against bit-by-bit counts: bitmaps of runs of every length
 * around the 8- and 64-bit steps (and random ones), at every start bit, from a
 * buffer at every byte alignment, with nbits cutting a run short; and bits past
 * nbits set, which must never be counted. */
static uint64_t run_ref(const uint8_t *bits, uint64_t nbits, uint64_t at, bool set)
{
	uint64_t q = at;

	while (q < nbits && ((bits[q / 8] >> (q % 8) & 1) == set))
		q++;
	return q - at;
}

static void bitmap_runs(void)
{
	struct rdmig_img_vma v = {.kind = RDMIG_VMA_ANON};
	static const unsigned lens[] = {1, 7, 8, 9, 56, 63, 64, 65, 127, 128, 129, 200, 300};
	uint8_t store[96 + 8];
	unsigned bad = 0;

	for (unsigned shape = 0; shape < 40; shape++) {
		for (unsigned align = 0; align < 8; align++) {
			uint8_t *bits = store + align;
			uint64_t nbits = 96 * 8 - rnd() % 70, b = 0;
			bool set = shape & 1;

			memset(store, 0, sizeof(store));
			/* runs of the listed lengths (random ones in later shapes),
			 * alternating, from bit 0 or a random bit */
			for (unsigned i = shape % 3 ? rnd() % 13 : 0; b < 96 * 8; i++) {
				uint64_t len =
				    shape < 20 ? lens[(i + shape) % 13] : 1 + rnd() % 150;

				if (set)
					rdmig_bitmap_set(bits, b,
					                 len > 96 * 8 - b ? 96 * 8 - b : len);
				b += len;
				set = !set;
			}
			for (uint64_t at = 0; at <= nbits; at++)
				for (int want = 0; want < 2; want++)
					if (rdmig_bitmap_run(bits, nbits, at, want) !=
					    run_ref(bits, nbits, at, want))
						bad++;
			/* the touched count, over the same bits */
			uint64_t want = 0;
			for (uint64_t i = 0; i < nbits; i++)
				want += bits[i / 8] >> (i % 8) & 1;
			v.start = 0x10000000;
			v.end = v.start + nbits * 4096;
			v.touched = bits;
			T_CHECK(rdmig_image_vma_touched(&v) == want,
			        "touched %" PRIu64 " pages, %" PRIu64 " set",
			        rdmig_image_vma_touched(&v), want);
		}
	}
	T_CHECK(bad == 0, "%u runs counted wrong", bad);
}

int main(int argc, char **argv)
{
	t_state.only = argc > 1 ? argv[1] : NULL;
	T_RUN(roundtrip);
	T_RUN(layout_pages);
	T_RUN(held_bits_not_sent);
	T_RUN(roundtrip_edges);
	T_RUN(truncations);
	T_RUN(flips);
	T_RUN(malformed);
	T_RUN(huge_and_framing);
	T_RUN(bitmap_runs);
	T_RUN(write_seeds);
	T_RUN(seeds_current);
	return t_finish();
}
