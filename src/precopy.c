/*
 * The source's mirror and its dirty tracking (rdmig/precopy.h).
 *
 * Flow:
 *   start   (target seized)  userfaultfd() injected into the target, taken with
 *                            pidfd_getfd, closed in the target; UFFDIO_API with
 *                            WP_ASYNC | WP_UNPOPULATED on our copy
 *   files   (target runs)    rdmig_precopy_track_files: the private file
 *                            mappings registered (WP) and their pages protected,
 *                            no mirror: the capture asks which of their written
 *                            pages changed since the layout read them
 *   round   (target runs)    for each anonymous range of /proc/PID/maps not yet
 *                            tracked: a mirror buffer (registered), UFFDIO_REGISTER
 *                            (WP), then PAGEMAP_SCAN protects the pages with data
 *                            and they are copied; tracked ranges: the pages
 *                            PAGEMAP_SCAN reports written are copied again (and
 *                            protected again in the same walk)
 *   final   (target frozen)  per ANON vma of the image: written or never-copied
 *                            pages with data are copied; a vma no tracked range
 *                            covers gets a buffer of its own, filled whole
 *   stop                     UFFDIO_UNREGISTER the ranges, close the uffd (which
 *                            unregisters the file mappings)
 *
 * Protect before copy: a write that lands after the protection and before the
 * copy is seen both by the copy and by the next scan, never by neither.
 */
#define LOG_SUBSYS "precopy"
#include "rdmig/precopy.h"

#include "rdmig/log.h"
#include "uffd.h"
#include "uffd_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define PG 4096ull
#define SCAN_VEC 512
#define COPY_CHUNK (1ull << 20)

struct range {
	uint64_t start, end; /* in the target */
	uint8_t *base;       /* mirror buffer, end - start bytes */
	uint8_t *copied;     /* one bit per page: holds a copy */
	uint32_t reg;        /* mirror registration */
	bool tracked;        /* registered for WP with our uffd */
	bool dense;          /* the buffer is in huge pages (mirror_buffer) */
};

/* A new dense range's buffer, faulted in by a thread of its own ahead of its
 * first copy (fill_ahead). */
struct ahead {
	pthread_t th;
	uint8_t *base;
	uint64_t len;
	_Atomic uint64_t done; /* bytes from base faulted in */
	atomic_bool stop;
};

/* How writes are tracked, best first. */
enum track {
	TRACK_WP_ASYNC,   /* 6.7+: a WP_ASYNC uffd and PAGEMAP_SCAN's PAGE_IS_WRITTEN */
	TRACK_SOFT_DIRTY, /* older kernels with CONFIG_MEM_SOFT_DIRTY: clear_refs + pagemap bit 55 */
	TRACK_NONE,       /* neither: every page with data is copied at the freeze */
};

struct rdmig_precopy {
	pid_t pid;
	enum track track;
	bool has_scan; /* PAGEMAP_SCAN exists; else pagemap entries are read one by one */
	int uffd;      /* ours; -1 when tracking is off */
	int pagemap;   /* /proc/PID/pagemap */
	int mem;       /* /proc/PID/mem, for pages process_vm_readv cannot reach */
	struct rdmig_mirror *mirror;
	struct range *r;
	uint32_t n, cap;
	struct rdmig_run *log; /* runs copied since the last take_runs */
	uint32_t nlog, caplog;
	bool log_oom;            /* a run could not be logged: take_runs fails */
	bool final;              /* in rdmig_precopy_final: every page must be read */
	bool (*stop)(void *arg); /* rdmig_precopy_set_stop */
	void *stop_arg;
	struct ahead *ahead; /* while track_new copies a dense range */
	struct rdmig_precopy_stats st;
};

/* ---- the target's anonymous ranges ---------------------------------------- */

/* Private anonymous ranges of /proc/PID/maps (what the capture calls ANON), or
 * with files, the private file mappings. *out is malloc'd pairs {start, end}. */
static int maps_ranges(pid_t pid, bool files, uint64_t **out, uint32_t *n)
{
	char path[64], line[4096 + 256];
	uint64_t *v = NULL;
	uint32_t cnt = 0, cap = 0;
	FILE *f;
	int ret = 0;

	*out = NULL;
	*n = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e, off, ino;
		char perms[8], dev[16];
		int pos = 0;
		const char *name;

		if (!strchr(line, '\n')) {
			ret = -EIO; /* a line longer than any path: not a maps line */
			break;
		}
		if (sscanf(line, "%llx-%llx %7s %llx %15s %llu %n", &s, &e, perms, &off, dev, &ino,
		           &pos) < 6 ||
		    s >= e || s % PG || e % PG || strlen(perms) != 4) {
			pr_err("cannot parse a line of %s: %s", path, line);
			ret = -EIO;
			break;
		}
		name = line + pos;
		if (perms[3] != 'p' || (ino != 0) != files)
			continue;
		/* %n ran past the blanks: an anonymous line's name is empty */
		if (!files && *name && *name != '\n' && strncmp(name, "[heap]", 6) &&
		    strncmp(name, "[stack]", 7) && strncmp(name, "[anon:", 6))
			continue; /* [vdso], [vvar], [vsyscall], ... */
		if (cnt + 2 > cap) {
			uint64_t *nv;

			cap = cap ? 2 * cap : 64;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				ret = -ENOMEM;
				break;
			}
			v = nv;
		}
		v[cnt++] = s;
		v[cnt++] = e;
	}
	fclose(f);
	if (ret < 0) {
		free(v);
		return ret;
	}
	*out = v;
	*n = cnt / 2;
	return 0;
}

/* ---- copying ---------------------------------------------------------------- */

static void set_copied(struct range *r, uint64_t addr, uint64_t len)
{
	for (uint64_t a = addr; a < addr + len; a += PG) {
		uint64_t i = (a - r->start) / PG;

		r->copied[i / 8] |= (uint8_t)(1u << (i % 8));
	}
}

static bool is_copied(const struct range *r, uint64_t addr)
{
	uint64_t i = (addr - r->start) / PG;

	return r->copied[i / 8] & (1u << (i % 8));
}

/* Copy [addr, addr+len) of the target into r's buffer. process_vm_readv first;
 * what it cannot read (PROT_NONE, a page it raced with) through /proc/PID/mem,
 * which reads any mapping the process may read. */
static int log_run(struct rdmig_precopy *p, struct range *r, uint64_t addr, uint64_t len);

/* Copy [addr, addr+len) of the target into r's buffer, in 1 MiB pieces (one call
 * over a whole range holds the target's page-table locks against its own faults
 * for the whole copy). What process_vm_readv cannot read goes page by page, through
 * /proc/PID/mem when needed (PROT_NONE). While the target runs, a page neither can
 * read (seen here on transparent huge pages being write-protected) is left
 * uncopied: the freeze copies every page with data that was never copied. At the
 * freeze (p->final) such a page is an error. */
static int copy_run(struct rdmig_precopy *p, struct range *r, uint64_t addr, uint64_t len)
{
	uint8_t *dst = r->base + (addr - r->start);
	uint64_t done = 0, ok_from = 0;
	int ret;

	while (done < len) {
		uint64_t k = len - done > COPY_CHUNK ? COPY_CHUNK : len - done;
		struct iovec l = {dst + done, k}, rem = {(void *)(uintptr_t)(addr + done), k};
		ssize_t got;

		if (!p->final && p->stop && p->stop(p->stop_arg))
			return -ECANCELED;

		/* our pages first, in one call: faulting them in one by one inside
		 * the copy made it 3 times slower here (an old kernel without
		 * POPULATE_WRITE just faults as before); unless fill_ahead's thread
		 * did already */
		if (!p->ahead || p->ahead->base != r->base ||
		    atomic_load(&p->ahead->done) < (uint64_t)(dst + done + k - r->base))
			(void)madvise(dst + done, k, MADV_POPULATE_WRITE);
		got = process_vm_readv(p->pid, &l, 1, &rem, 1, 0);

		if (got == (ssize_t)k) {
			done += k;
			continue;
		}
		/* this piece page by page */
		for (uint64_t q = 0; q < k; q += PG) {
			uint64_t a = addr + done + q;
			struct iovec l1 = {dst + done + q, PG}, r1 = {(void *)(uintptr_t)a, PG};

			if (process_vm_readv(p->pid, &l1, 1, &r1, 1, 0) == (ssize_t)PG ||
			    pread(p->mem, dst + done + q, PG, (off_t)a) == (ssize_t)PG)
				continue;
			ret = -errno;
			if (p->final) {
				pr_err("cannot read the page at %#" PRIx64 " of pid %d: %s", a,
				       (int)p->pid, strerror(-ret));
				return ret ? ret : -EFAULT;
			}
			/* log what was copied before it; the freeze takes this page */
			if (a > addr + ok_from) {
				ret = log_run(p, r, addr + ok_from, a - (addr + ok_from));
				if (ret < 0)
					return ret;
			}
			ok_from = a + PG - addr;
			p->st.pages_skipped++;
		}
		done += k;
	}
	return ok_from < len ? log_run(p, r, addr + ok_from, len - ok_from) : 0;
}

static int log_run(struct rdmig_precopy *p, struct range *r, uint64_t addr, uint64_t len)
{
	set_copied(r, addr, len);
	if (p->nlog && p->log[p->nlog - 1].addr + p->log[p->nlog - 1].pages * PG == addr) {
		p->log[p->nlog - 1].pages += len / PG;
		return 0;
	}
	if (p->nlog == p->caplog) {
		uint32_t cap = p->caplog ? 2 * p->caplog : 256;
		struct rdmig_run *n = realloc(p->log, cap * sizeof(*n));

		if (!n) {
			p->log_oom = true;
			return 0;
		}
		p->log = n;
		p->caplog = cap;
	}
	p->log[p->nlog++] = (struct rdmig_run){addr, len / PG};
	return 0;
}

static int clear_soft_dirty(pid_t pid);

typedef int (*run_fn)(struct rdmig_precopy *, struct range *, uint64_t, uint64_t);

/* Without PAGEMAP_SCAN: the pagemap entries, 8 bytes a page. Pages with data
 * (present or swapped), and with mask PAGE_IS_WRITTEN only the soft-dirty ones. */
static int scan_slow(struct rdmig_precopy *p, uint64_t start, uint64_t end, uint64_t mask,
                     run_fn fn, struct range *r, uint64_t *pages)
{
	uint64_t ent[512];

	for (uint64_t at = start; at < end;) {
		uint64_t n = (end - at) / PG, run = 0;
		ssize_t got;

		if (n > 512)
			n = 512;
		got = pread(p->pagemap, ent, n * 8, (off_t)(at / PG * 8));
		if (got != (ssize_t)(n * 8))
			return got < 0 ? -errno : -EIO;
		for (uint64_t i = 0; i <= n; i++) {
			bool want = i < n && (ent[i] >> 62 & 3) &&
			            (!(mask & PAGE_IS_WRITTEN) || (ent[i] >> 55 & 1));

			if (want) {
				run++;
				continue;
			}
			if (run) {
				uint64_t a = at + (i - run) * PG;

				if (pages)
					*pages += run;
				if (fn) {
					int ret = fn(p, r, a, run * PG);

					if (ret < 0)
						return ret;
				}
				run = 0;
			}
		}
		at += n * PG;
	}
	return 0;
}

static int flush_run(struct rdmig_precopy *p, struct range *r, run_fn fn, uint64_t start,
                     uint64_t len)
{
	return len && fn ? fn(p, r, start, len) : 0;
}

/* PAGEMAP_SCAN over [start, end): calls fn for each run of matching pages.
 * Returns 0 or -errno (-EPERM with CHECK_WPASYNC: a page not tracked). */
static int scan(struct rdmig_precopy *p, uint64_t start, uint64_t end, uint64_t flags,
                uint64_t mask, uint64_t anyof, run_fn fn, struct range *r, uint64_t *pages)
{
	struct page_region vec[SCAN_VEC];
	uint64_t run_start = 0, run_len = 0;

	if (!p->has_scan)
		return scan_slow(p, start, end, mask, fn, r, pages);

	while (start < end) {
		struct pm_scan_arg a = {
		    .size = sizeof(a),
		    .flags = flags,
		    .start = start,
		    .end = end,
		    .vec = (uint64_t)(uintptr_t)vec,
		    .vec_len = SCAN_VEC,
		    /* the shared zero page holds nothing to copy */
		    .category_inverted = PAGE_IS_PFNZERO,
		    .category_mask = mask | PAGE_IS_PFNZERO,
		    .category_anyof_mask = anyof,
		    .return_mask = mask | anyof,
		};
		long k = ioctl(p->pagemap, PAGEMAP_SCAN, &a);

		if (k < 0)
			return -errno;
		for (long i = 0; i < k; i++) {
			/* the kernel's answer is checked like any input */
			if (vec[i].start < start || vec[i].end > end ||
			    vec[i].start >= vec[i].end || vec[i].start % PG || vec[i].end % PG) {
				pr_err("PAGEMAP_SCAN returned a region outside the walk");
				return -EIO;
			}
			if (pages)
				*pages += (vec[i].end - vec[i].start) / PG;
			/* neighbours the kernel reports apart (other categories, page
			 * table boundaries) are copied as one run: one process_vm_readv
			 * per 4 pages made a 1 GiB copy take seconds */
			if (run_len && run_start + run_len == vec[i].start) {
				run_len += vec[i].end - vec[i].start;
				continue;
			}
			if (run_len && fn) {
				int ret = fn(p, r, run_start, run_len);

				if (ret < 0)
					return ret;
			}
			run_start = vec[i].start;
			run_len = vec[i].end - vec[i].start;
		}
		if (a.walk_end <= start || a.walk_end > end)
			return a.walk_end == end ? flush_run(p, r, fn, run_start, run_len) : -EIO;
		start = a.walk_end;
	}
	return flush_run(p, r, fn, run_start, run_len);
}

/* ---- tracking ------------------------------------------------------------ */

static struct range *find_range(struct rdmig_precopy *p, uint64_t start, uint64_t end)
{
	for (uint32_t i = 0; i < p->n; i++)
		if (p->r[i].start <= start && end <= p->r[i].end)
			return &p->r[i];
	return NULL;
}

static bool overlaps_any(struct rdmig_precopy *p, uint64_t start, uint64_t end)
{
	for (uint32_t i = 0; i < p->n; i++)
		if (p->r[i].start < end && start < p->r[i].end)
			return true;
	return false;
}

static int scan(struct rdmig_precopy *p, uint64_t start, uint64_t end, uint64_t flags,
                uint64_t mask, uint64_t anyof, run_fn fn, struct range *r, uint64_t *pages);

/* A mirror buffer of len bytes. Huge pages when the target's range is dense:
 * process_vm_readv into 4 KiB pages copied 0.2-0.7 GB/s here, into 2 MiB pages
 * 6-9 GB/s (the cost was our side's page walks, one per 4 KiB). A sparse range
 * keeps 4 KiB pages: one written page in a 2 MiB block would cost 2 MiB. */
static uint8_t *mirror_buffer(struct rdmig_precopy *p, uint64_t start, uint64_t end, bool *dense)
{
	const uint64_t huge = 2ull << 20, len = end - start;
	uint64_t present = 0;
	uint8_t *b, *a;

	*dense = false;
	if (len >= huge &&
	    scan(p, start, end, 0, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, NULL, NULL, &present) ==
	        0 &&
	    present * 2 * PG >= len) {
		b = mmap(NULL, len + huge, PROT_READ | PROT_WRITE,
		         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (b == MAP_FAILED)
			return NULL;
		/* aligned, so that every whole 2 MiB of the buffer can be one page */
		a = (uint8_t *)(((uintptr_t)b + huge - 1) & ~(uintptr_t)(huge - 1));
		if (a > b)
			munmap(b, (size_t)(a - b));
		if (a + len < b + len + huge)
			munmap(a + len, (size_t)(b + len + huge - (a + len)));
		if (madvise(a, len, MADV_HUGEPAGE) < 0)
			pr_debug("no huge pages for the mirror of %#" PRIx64 ": %s", start,
			         strerror(errno));
		*dense = true;
		return a;
	}
	b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
	         0);
	return b == MAP_FAILED ? NULL : b;
}

/* A mirror buffer for [start, end), registered. */
static int add_range(struct rdmig_precopy *p, uint64_t start, uint64_t end, struct range **out)
{
	struct range r = {.start = start, .end = end};
	uint64_t len = end - start;
	int ret;

	if (p->n == p->cap) {
		uint32_t cap = p->cap ? 2 * p->cap : 32;
		struct range *nr = realloc(p->r, cap * sizeof(*nr));

		if (!nr)
			return -ENOMEM;
		p->r = nr;
		p->cap = cap;
	}
	r.base = mirror_buffer(p, start, end, &r.dense);
	if (!r.base)
		return -errno;
	r.copied = calloc((len / PG + 7) / 8, 1);
	if (!r.copied) {
		ret = -ENOMEM;
		goto out_unmap;
	}
	ret = rdmig_mirror_add(p->mirror, r.base, len, &r.reg);
	if (ret < 0)
		goto out_free;
	p->r[p->n] = r;
	*out = &p->r[p->n++];
	return 0;
out_free:
	free(r.copied);
out_unmap:
	munmap(r.base, len);
	return ret;
}

/* Filling a new buffer costs more than copying into it: the mirror's first
 * copy ran at 0.46-0.61 GB/s on this VM (2 MiB pages its host backs only when
 * first written), and at 0.92-1.19 GB/s with a second thread faulting the
 * buffer in 2 MiB ahead of the copy (1 GiB, 4 alternating pairs, no
 * migration). On any host it takes the zeroing off the copying thread. Only a
 * dense range (its buffer in huge pages: at least half its pages have data, so
 * little is faulted in for nothing) of at least FILL_AHEAD_MIN, where the
 * thread's start is nothing beside the copy; RDMIG_FILL_AHEAD=off turns it off
 * (to measure it). */
#define FILL_AHEAD_MIN (32ull << 20)
#define FILL_AHEAD_STEP (2ull << 20)

static void *fill_ahead_run(void *arg)
{
	struct ahead *a = arg;

	for (uint64_t o = 0; o < a->len && !atomic_load(&a->stop); o += FILL_AHEAD_STEP) {
		uint64_t k = a->len - o < FILL_AHEAD_STEP ? a->len - o : FILL_AHEAD_STEP;

		(void)madvise(a->base + o, k, MADV_POPULATE_WRITE);
		atomic_store(&a->done, o + k);
	}
	return NULL;
}

static void fill_ahead_start(struct rdmig_precopy *p, struct range *r)
{
	const char *env = getenv("RDMIG_FILL_AHEAD");
	struct ahead *a;

	if (!r->dense || r->end - r->start < FILL_AHEAD_MIN || (env && !strcmp(env, "off")))
		return;
	a = calloc(1, sizeof(*a));
	if (!a)
		return;
	a->base = r->base;
	a->len = r->end - r->start;
	if (pthread_create(&a->th, NULL, fill_ahead_run, a) != 0) {
		free(a); /* the copy faults its buffer in itself, as before */
		return;
	}
	p->ahead = a;
}

static void fill_ahead_stop(struct rdmig_precopy *p)
{
	if (!p->ahead)
		return;
	atomic_store(&p->ahead->stop, true);
	pthread_join(p->ahead->th, NULL);
	free(p->ahead);
	p->ahead = NULL;
}

/* Register the range, then protect and copy what has data, in one walk.
 *
 * Only the pages with data are protected (PM_SCAN_WP_MATCHING), never the whole
 * range: WP_ASYNC turns WP_UNPOPULATED on, so protecting an empty page installs
 * a marker there, which the kernel builds page tables for, PAGEMAP_SCAN reports
 * as PAGE_IS_SWAPPED, and reading it (process_vm_readv) fills with a fresh page.
 * Protecting a whole 1 GiB mapping with 1 MiB in use made the process's RSS
 * grow to 1 GiB and all of it crossed the wire; ASan's 14 TiB shadow OOMed the
 * host. An empty page needs no protection: a write there makes a page that is
 * not protected, which the next scan reports as written. Each batch is
 * protected by the ioctl that reports it, before its runs are copied. */
static int track_new(struct rdmig_precopy *p, uint64_t start, uint64_t end)
{
	struct range *r;
	uint64_t flags = 0;
	int ret = add_range(p, start, end, &r);

	if (ret < 0)
		return ret;
	if (p->track == TRACK_NONE)
		return 0; /* nothing copied now: everything goes at the freeze */
	if (p->track == TRACK_WP_ASYNC) {
		ret = rdmig_uffd_register(p->uffd, start, end - start, RDMIG_UFFD_WP, NULL);
		r->tracked = ret == 0;
		if (r->tracked)
			flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
		if (ret < 0)
			pr_warn("range %#" PRIx64 "-%#" PRIx64 " cannot be tracked (%s): it is "
			        "copied again whole at the freeze",
			        start, end, strerror(-ret));
	}
	if (p->track == TRACK_SOFT_DIRTY)
		r->tracked = true; /* clear_refs at the round's start covers it */
	if (r->tracked)
		p->st.ranges_tracked++;
	else
		p->st.ranges_untracked++;
	fill_ahead_start(p, r);
	ret = scan(p, start, end, flags, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, copy_run, r,
	           &p->st.pages_copied);
	fill_ahead_stop(p);
	if (ret == -EPERM && flags) /* the mapping was replaced: the freeze copies it */
		ret = 0;
	return ret;
}

void rdmig_precopy_set_stop(struct rdmig_precopy *p, bool (*stop)(void *arg), void *arg)
{
	p->stop = stop;
	p->stop_arg = arg;
}

bool rdmig_precopy_sees_writes(const struct rdmig_precopy *p)
{
	return p->track == TRACK_WP_ASYNC;
}

int rdmig_precopy_round(struct rdmig_precopy *p)
{
	uint64_t *v;
	uint32_t n;
	int ret = maps_ranges(p->pid, false, &v, &n);

	if (ret < 0)
		return ret;
	if (p->track == TRACK_SOFT_DIRTY && p->st.rounds == 0) {
		/* Clear before copying: a write that races the copy stays soft-dirty
		 * and is copied again at the freeze. Later rounds would need the
		 * process stopped between reading the bits and clearing them, so with
		 * soft-dirty there is one round. */
		ret = clear_soft_dirty(p->pid);
		if (ret < 0) {
			free(v);
			return ret;
		}
	} else if (p->track != TRACK_WP_ASYNC && p->st.rounds > 0) {
		free(v);
		return 0;
	}
	p->st.rounds++;
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		uint64_t s = v[2 * i], e = v[2 * i + 1];
		struct range *r = find_range(p, s, e);

		if (r) {
			/* copy again what was written, protecting it again as we go */
			if (r->tracked && p->track == TRACK_WP_ASYNC)
				ret = scan(p, s, e, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
				           PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
				           copy_run, r, &p->st.pages_copied);
			if (ret == -EPERM) /* the mapping was replaced: the freeze copies it */
				ret = 0;
			continue;
		}
		if (overlaps_any(p, s, e))
			continue; /* grew or moved: copied at the freeze */
		ret = track_new(p, s, e);
	}
	free(v);
	if (p->st.rounds == 1)
		p->st.pages_first = p->st.pages_copied; /* every page with data, then */
	return ret;
}

static int clear_soft_dirty(pid_t pid)
{
	char path[64];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)pid);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "4", 1) != 1)
		ret = -errno;
	if (fd >= 0)
		close(fd);
	if (ret < 0)
		pr_err("clearing the soft-dirty bits of pid %d failed: %s", (int)pid,
		       strerror(-ret));
	return ret;
}

/* A kernel without CONFIG_MEM_SOFT_DIRTY accepts clear_refs "4" and never sets
 * the bit: trust soft-dirty only after seeing it work on a page of our own. */
static bool soft_dirty_works(void)
{
	volatile uint8_t *pg =
	    mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t ent = 0;
	bool ok = false;
	int fd;

	if (pg == MAP_FAILED)
		return false;
	pg[0] = 1;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && clear_soft_dirty(getpid()) == 0 &&
	    pread(fd, &ent, 8, (off_t)((uintptr_t)pg / PG * 8)) == 8 && !(ent >> 55 & 1)) {
		pg[0] = 2;
		ok = pread(fd, &ent, 8, (off_t)((uintptr_t)pg / PG * 8)) == 8 && (ent >> 55 & 1);
	}
	if (fd >= 0)
		close(fd);
	munmap((void *)pg, PG);
	return ok;
}

static bool probe_pagemap_scan(int pagemap)
{
	struct pm_scan_arg a = {.size = sizeof(a)}; /* an empty walk */

	return ioctl(pagemap, PAGEMAP_SCAN, &a) >= 0 || (errno != ENOTTY && errno != EINVAL);
}

int rdmig_precopy_track_files(struct rdmig_precopy *p)
{
	uint64_t *v, pages = 0;
	uint32_t n, tracked = 0;
	int ret;

	if (p->track != TRACK_WP_ASYNC)
		return 0;
	ret = maps_ranges(p->pid, true, &v, &n);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = v[2 * i], e = v[2 * i + 1];

		/* A mapping that cannot be registered (or is replaced meanwhile:
		 * -EPERM) is only not tracked: the capture then reads all of its
		 * written pages at the freeze, as without tracking. */
		if (rdmig_uffd_register(p->uffd, s, e - s, RDMIG_UFFD_WP, NULL) < 0)
			continue;
		ret = scan(p, s, e, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 0,
		           PAGE_IS_PRESENT | PAGE_IS_SWAPPED, NULL, NULL, &pages);
		if (ret == 0)
			tracked++;
		else if (ret != -EPERM)
			break;
		ret = 0;
	}
	free(v);
	if (ret == 0)
		pr_debug("%u of %u private file mappings tracked (%" PRIu64 " pages protected)",
		         tracked, n, pages);
	return ret;
}

int rdmig_precopy_start(struct rdmig_tracee *t, struct rdmig_mirror *m, struct rdmig_precopy **out)
{
	struct rdmig_precopy *p;
	const char *force;
	char path[64];
	long num = -1;
	int ret, pidfd = -1;

	*out = NULL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->pid = rdmig_tracee_pid(t);
	p->mirror = m;
	p->uffd = p->pagemap = p->mem = -1;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)p->pid);
	p->pagemap = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)p->pid);
	p->mem = open(path, O_RDONLY | O_CLOEXEC);
	if (p->pagemap < 0 || p->mem < 0) {
		ret = -errno;
		pr_err("cannot open %s: %s", path, strerror(-ret));
		goto out_free;
	}
	/* User-mode-only: the tracking uffd never sees a fault (WP_ASYNC resolves
	 * them in the kernel), and it lets the target create it whatever its
	 * privileges. */
	ret = rdmig_tracee_call(t, "userfaultfd", &num, SYS_userfaultfd,
	                        O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0);
	if (ret < 0)
		goto out_free;
	pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
	if (pidfd >= 0)
		p->uffd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)num, 0);
	ret = pidfd < 0 || p->uffd < 0 ? -errno : 0;
	if (pidfd >= 0)
		close(pidfd);
	/* The target's copy goes at once: its fd table is as it was. */
	if (rdmig_tracee_call(t, "close", NULL, SYS_close, num, 0, 0, 0, 0, 0) < 0 && ret == 0)
		ret = -EIO;
	if (ret < 0) {
		pr_err("cannot take the tracking userfaultfd from pid %d: %s", (int)p->pid,
		       strerror(-ret));
		goto out_free;
	}
	ret = rdmig_uffd_api(p->uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, NULL);
	p->has_scan = probe_pagemap_scan(p->pagemap);
	/* RDMIG_TRACK=softdirty|none: the fallbacks of older kernels, on demand
	 * (tests run them on a kernel that has the best one). */
	force = getenv("RDMIG_TRACK");
	if (force && (!strcmp(force, "softdirty") || !strcmp(force, "none"))) {
		pr_warn("RDMIG_TRACK=%s: not using WP_ASYNC tracking", force);
		ret = -EOPNOTSUPP;
		if (!strcmp(force, "none"))
			p->has_scan = false;
	}
	if (ret == 0 && p->has_scan) {
		p->track = TRACK_WP_ASYNC;
	} else {
		close(p->uffd);
		p->uffd = -1;
		p->track = soft_dirty_works() && !(force && !strcmp(force, "none"))
		               ? TRACK_SOFT_DIRTY
		               : TRACK_NONE;
		pr_warn("this kernel has no asynchronous write-protect tracking "
		        "(UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN, Linux 6.7): %s",
		        p->track == TRACK_SOFT_DIRTY
		            ? "tracking with soft-dirty bits instead"
		            : "no soft-dirty either: every page is copied while the process is "
		              "stopped, a longer downtime");
	}
	*out = p;
	return 0;
out_free:
	rdmig_precopy_stop(p);
	rdmig_precopy_free(p);
	return ret;
}

/* ---- the freeze -------------------------------------------------------------- */

/* The freeze's copies, gathered: the pages written since the last round are
 * scattered (a random writer's are one page a run), and one process_vm_readv
 * per page cost 4-6 us in a microbenchmark here (200 scattered pages), one call
 * for all of them under 1 us a page; the last copy of a 1 GiB random writer,
 * 3 alternating pairs: 8.4-9.5 -> 4.7-10 us a page. Only short runs are
 * gathered (a long one is its own call). A call that comes back short (a
 * PROT_NONE page: process_vm_readv honours the protection) is done again run by
 * run (copy_run: page by page, with /proc/PID/mem behind it), so a run is
 * logged only once it is copied. */
#define BATCH_RUNS 1024u        /* IOV_MAX */
#define BATCH_RUN_MAX (64 * PG) /* longer runs: copy_run */

struct batch {
	struct range *r;
	uint32_t n;
	uint64_t bytes;
	struct iovec l[BATCH_RUNS], rem[BATCH_RUNS];
};

static int batch_flush(struct rdmig_precopy *p, struct batch *b)
{
	uint32_t n = b->n;
	ssize_t got;
	int ret = 0;

	if (!n)
		return 0;
	b->n = 0;
	got = process_vm_readv(p->pid, b->l, n, b->rem, n, 0);
	if (got != (ssize_t)b->bytes)
		pr_info("pid %d: %u runs read %zd of %" PRIu64 " bytes in one call (%s): copied "
		        "run by run",
		        (int)p->pid, n, got, b->bytes, got < 0 ? strerror(errno) : "short");
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		uint64_t addr = (uint64_t)(uintptr_t)b->rem[i].iov_base, len = b->rem[i].iov_len;

		ret = got == (ssize_t)b->bytes ? log_run(p, b->r, addr, len)
		                               : copy_run(p, b->r, addr, len);
	}
	b->bytes = 0;
	return ret;
}

static int batch_add(struct rdmig_precopy *p, struct batch *b, struct range *r, uint64_t addr,
                     uint64_t len)
{
	int ret = 0;

	/* in order: the log of runs copied stays sorted */
	if (b->n && (b->r != r || b->n == BATCH_RUNS || len > BATCH_RUN_MAX))
		ret = batch_flush(p, b);
	if (ret < 0)
		return ret;
	if (len > BATCH_RUN_MAX)
		return copy_run(p, r, addr, len);
	b->r = r;
	b->l[b->n] = (struct iovec){r->base + (addr - r->start), len};
	b->rem[b->n] = (struct iovec){(void *)(uintptr_t)addr, len};
	b->n++;
	b->bytes += len;
	return 0;
}

static bool bit(const uint8_t *bm, uint64_t i)
{
	return bm && (bm[i / 8] & (1u << (i % 8)));
}

static uint64_t word_at(const uint8_t *bm, uint64_t i)
{
	uint64_t w;

	memcpy(&w, bm + i / 8, sizeof(w)); /* bits in memory order: x86_64 only */
	return w;
}

/* Copy the image's touched pages of [v] that were never copied. Inside the
 * freeze: 64 pages a step where none of them needs a copy (page by page, 4 GiB
 * took ~2 ms here to find nothing). */
static int copy_uncopied(struct rdmig_precopy *p, struct batch *b, struct range *r,
                         const struct rdmig_img_vma *v)
{
	uint64_t npages = (v->end - v->start) / PG, off = (v->start - r->start) / PG;

	for (uint64_t i = 0; i < npages;) {
		uint64_t a = v->start + i * PG, k = 0;

		if (i % 64 == 0 && npages - i >= 64) {
			uint64_t t = word_at(v->touched, i);

			/* the copied bits line up with the touched ones where the vma
			 * starts a multiple of 64 pages into its range (mostly at 0) */
			if (!t || (off % 64 == 0 && !(t & ~word_at(r->copied, off + i)))) {
				i += 64;
				continue;
			}
		}

		while (i + k < npages && bit(v->touched, i + k) && !is_copied(r, a + k * PG))
			k++;
		if (k) {
			int ret = batch_add(p, b, r, a, k * PG);

			if (ret < 0)
				return ret;
			p->st.pages_late += k;
			i += k;
		} else {
			i++;
		}
	}
	return 0;
}

/* The pages the capture's own scan found written (image.h, written): the same
 * answer a second scan here would give, the process being frozen between the
 * two, without its page-table walk (~1 ms per GiB here). A vma no longer
 * registered for tracking (replaced since) shows every page written, as
 * PM_SCAN_CHECK_WPASYNC's -EPERM below leads to copying all of it. */
static int copy_written(struct rdmig_precopy *p, struct batch *b, struct range *r,
                        const struct rdmig_img_vma *v)
{
	uint64_t npages = (v->end - v->start) / PG;

	for (uint64_t i = 0; i < npages;) {
		uint64_t k = rdmig_bitmap_run(v->written, npages, i, true);

		if (k) {
			int ret = batch_add(p, b, r, v->start + i * PG, k * PG);

			if (ret < 0)
				return ret;
			p->st.pages_recopied += k;
			i += k;
		} else {
			i += rdmig_bitmap_run(v->written, npages, i, false);
		}
	}
	return 0;
}

/* The last copy of one vma (or one part of a held one, rdmig_precopy_final_part)
 * into its range r: what was written since its copy, then what was never copied. */
static int final_copy(struct rdmig_precopy *p, struct batch *b, struct range *r,
                      const struct rdmig_img_vma *vm)
{
	int ret = 0;

	if (r->tracked && p->track == TRACK_SOFT_DIRTY) {
		ret = scan_slow(p, vm->start, vm->end, PAGE_IS_WRITTEN, copy_run, r,
		                &p->st.pages_recopied);
	} else if (r->tracked && vm->written) {
		ret = copy_written(p, b, r, vm);
	} else if (r->tracked) {
		ret = scan(p, vm->start, vm->end, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN,
		           PAGE_IS_PRESENT | PAGE_IS_SWAPPED, copy_run, r, &p->st.pages_recopied);
		if (ret == -EPERM) {
			/* replaced since: no longer tracked, so copy all of it */
			memset(r->copied, 0, ((r->end - r->start) / PG + 7) / 8);
			ret = 0;
		}
	} else {
		memset(r->copied, 0, ((r->end - r->start) / PG + 7) / 8);
	}
	/* the written pages logged (copied) first: the uncopied ones are what is left */
	if (ret == 0)
		ret = batch_flush(p, b);
	if (ret == 0)
		ret = copy_uncopied(p, b, r, vm);
	if (ret == 0)
		ret = batch_flush(p, b);
	return ret;
}

int rdmig_precopy_final(struct rdmig_precopy *p, const struct rdmig_image *img,
                        struct rdmig_mirror_view **views, uint32_t *n)
{
	struct rdmig_mirror_view *v;
	struct batch *b;
	uint32_t cnt = 0;
	int ret = 0;

	*views = NULL;
	*n = 0;
	p->final = true;
	v = calloc(img->nvmas ? img->nvmas : 1, sizeof(*v));
	b = calloc(1, sizeof(*b));
	if (!v || !b) {
		free(v);
		free(b);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < img->nvmas && ret == 0; i++) {
		const struct rdmig_img_vma *vm = &img->vmas[i];
		bool held = vm->flags & RDMIG_VMA_F_HELD;
		struct range *r;

		if (vm->kind != RDMIG_VMA_ANON)
			continue;
		p->st.pages_touched += rdmig_image_vma_touched(vm);
		if (!vm->touched && !held)
			continue; /* nothing to fetch: no view needed */
		r = find_range(p, vm->start, vm->end);
		if (!r) {
			/* new since the last round, or it grew: a buffer of its own */
			ret = add_range(p, vm->start, vm->end, &r);
			if (ret < 0)
				break;
		}
		/* a held vma is copied part by part after its walk */
		if (!held)
			ret = final_copy(p, b, r, vm);
		v[cnt++] = (struct rdmig_mirror_view){.id = vm->start,
		                                      .reg = r->reg,
		                                      .off = vm->start - r->start,
		                                      .len = vm->end - vm->start};
	}
	free(b);
	if (ret < 0) {
		free(v);
		return ret;
	}
	*views = v;
	*n = cnt;
	return 0;
}

int rdmig_precopy_final_part(struct rdmig_precopy *p, const struct rdmig_img_vma *part)
{
	struct range *r = NULL;
	struct batch *b;
	int ret;

	/* The range the vma's view names: the newest that holds the part. A vma
	 * that grew or moved since its last round got a range of its own at the
	 * freeze, after the old one, which may still hold this part; rounds never
	 * add ranges that overlap. */
	for (uint32_t i = p->n; i-- > 0 && !r;)
		if (p->r[i].start <= part->start && part->end <= p->r[i].end)
			r = &p->r[i];

	if (!r || !p->final)
		return -EINVAL; /* rdmig_precopy_final made a range for every held vma */
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	p->st.pages_touched += rdmig_image_vma_touched(part);
	ret = final_copy(p, b, r, part);
	free(b);
	return ret;
}

static int run_cmp(const void *a, const void *b)
{
	const struct rdmig_run *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

uint32_t rdmig_runs_sort_merge(struct rdmig_run *runs, uint32_t n)
{
	uint32_t k = 0, i = 1;

	/* one round's runs come in address order: no sort for them (the freeze's
	 * FINAL runs are taken inside the downtime) */
	while (i < n && runs[i - 1].addr <= runs[i].addr)
		i++;
	if (i < n)
		qsort(runs, n, sizeof(*runs), run_cmp);
	for (i = 0; i < n; i++) {
		struct rdmig_run *last = k ? &runs[k - 1] : NULL;
		uint64_t end = runs[i].addr + runs[i].pages * PG;

		if (last && runs[i].addr <= last->addr + last->pages * PG) {
			if (end > last->addr + last->pages * PG)
				last->pages = (end - last->addr) / PG;
			continue;
		}
		runs[k++] = runs[i];
	}
	return k;
}

int rdmig_precopy_take_runs(struct rdmig_precopy *p, struct rdmig_run **runs, uint32_t *n)
{
	if (p->log_oom)
		return -ENOMEM; /* a copy we cannot name must not look clean to the peer */
	/* Two rounds since the last call (hybrid's first look, then its first
	 * pull) name many pages twice: they were pulled twice, 31 thousand of 97
	 * thousand at 256 MiB. */
	p->nlog = rdmig_runs_sort_merge(p->log, p->nlog);
	*runs = p->log;
	*n = p->nlog;
	p->log = NULL;
	p->nlog = p->caplog = 0;
	return 0;
}

int rdmig_precopy_reregister(struct rdmig_precopy *p, struct rdmig_mirror *m)
{
	for (uint32_t i = 0; i < p->n; i++) {
		uint32_t reg;
		int ret = rdmig_mirror_add(m, p->r[i].base, p->r[i].end - p->r[i].start, &reg);

		if (ret < 0)
			return ret;
		if (reg != p->r[i].reg) {
			pr_err("mirror registration %u came back as %u", p->r[i].reg, reg);
			return -EIO;
		}
	}
	p->mirror = m;
	return 0;
}

int rdmig_precopy_views(struct rdmig_precopy *p, struct rdmig_mirror_view **v, uint32_t *n)
{
	struct rdmig_mirror_view *out = calloc(p->n ? p->n : 1, sizeof(*out));

	if (!out)
		return -ENOMEM;
	for (uint32_t i = 0; i < p->n; i++)
		out[i] = (struct rdmig_mirror_view){.id = p->r[i].start,
		                                    .reg = p->r[i].reg,
		                                    .off = 0,
		                                    .len = p->r[i].end - p->r[i].start};
	*v = out;
	*n = p->n;
	return 0;
}

void rdmig_precopy_stats(const struct rdmig_precopy *p, struct rdmig_precopy_stats *out)
{
	*out = p->st;
}

void rdmig_precopy_stop(struct rdmig_precopy *p)
{
	if (!p)
		return;
	if (p->uffd >= 0) {
		for (uint32_t i = 0; i < p->n; i++)
			if (p->r[i].tracked &&
			    rdmig_uffd_unregister(p->uffd, p->r[i].start,
			                          p->r[i].end - p->r[i].start) < 0)
				pr_debug("range %#" PRIx64 " was gone already", p->r[i].start);
		close(p->uffd);
		p->uffd = -1;
	}
	if (p->pagemap >= 0)
		close(p->pagemap);
	if (p->mem >= 0)
		close(p->mem);
	p->pagemap = p->mem = -1;
}

void rdmig_precopy_free(struct rdmig_precopy *p)
{
	if (!p)
		return;
	for (uint32_t i = 0; i < p->n; i++) {
		munmap(p->r[i].base, p->r[i].end - p->r[i].start);
		free(p->r[i].copied);
	}
	free(p->r);
	free(p->log);
	free(p);
}
