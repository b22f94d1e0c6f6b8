/*
 * The capture's page walk (pagescan.h). PAGEMAP_SCAN walks the page
 * tables under the mmap lock taken for reading, so walks of disjoint parts of
 * one mapping run side by side: 1 GiB took ~1.35 ms alone here and ~0.7 ms in
 * two halves. A mapping of SCAN_SPLIT or more is cut into pieces of
 * SCAN_PIECE, each a whole number of 8-page groups from the mapping's start,
 * so that no two threads write the same byte of a bitmap; the caller and the
 * helpers take the pieces in turn (struct scan_job).
 */
#define LOG_SUBSYS "capture"
#include "pagescan.h"

#include "rdmig/image.h"
#include "rdmig/log.h"
#include "uffd_compat.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define SCAN_THREADS 4            /* the caller and 3 helpers */
#define SCAN_SPLIT (256ull << 20) /* smaller mappings are walked by the caller alone */
#define SCAN_PIECE (64ull << 20)  /* ~0.08 ms of walk here; taking one is a mutex */
#define SCAN_MAX_PIECES 256u      /* beyond 8 GiB the pieces grow */
#define SCAN_GROUP (8ull * 4096)  /* a bitmap byte's pages */

/* Kernels before 6.7 have no PAGEMAP_SCAN: read the pagemap entries themselves
 * (bit 63 present, 62 swapped, 61 file page or shared anonymous). The zero page
 * is not told apart here: it is fetched as a page of zeros, which is harmless. */
static int scan_slow(int pm_fd, uint64_t base, uint64_t start, uint64_t end, bool anon_only,
                     uint8_t *bits, uint64_t *count)
{
	uint64_t ent[512];

	*count = 0;
	for (uint64_t at = start; at < end;) {
		uint64_t n = (end - at) / 4096;
		ssize_t got;

		if (n > 512)
			n = 512;
		got = pread(pm_fd, ent, n * 8, (off_t)(at / 4096 * 8));
		if (got != (ssize_t)(n * 8)) {
			int err = got < 0 ? -errno : -EIO;

			pr_err("reading the pagemap at %#" PRIx64 " failed: %s", at,
			       strerror(-err));
			return err;
		}
		for (uint64_t i = 0; i < n; i++) {
			uint64_t b = (at - base) / 4096 + i;

			if (!(ent[i] >> 62 & 3) || (anon_only && (ent[i] >> 61 & 1)))
				continue;
			bits[b / 8] |= (uint8_t)(1u << (b % 8));
			(*count)++;
		}
		at += n * 4096;
	}
	return 0;
}

/* One thread's part: [start, end) of the mapping at base (bits are base's). */
static int scan_one(int pm_fd, uint64_t base, uint64_t start, uint64_t end, bool anon_only,
                    uint8_t *bits, uint64_t *count, uint8_t *written, bool *written_known)
{
	struct page_region regs[256];
	struct pm_scan_arg a;
	uint64_t at = start;

	*count = 0;
	*written_known = written != NULL;
	while (at < end) {
		memset(&a, 0, sizeof(a));
		a.size = sizeof(a);
		a.start = at;
		a.end = end;
		a.vec = (uint64_t)(uintptr_t)regs;
		a.vec_len = sizeof(regs) / sizeof(regs[0]);
		a.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
		/* PAGE_IS_FILE only where it matters: asking for it makes the kernel
		 * look at every page's struct page (1 GiB took 5.1 ms here, 1.4 without) */
		a.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO |
		                (anon_only ? PAGE_IS_FILE : 0) | (written ? PAGE_IS_WRITTEN : 0);
		int n = ioctl(pm_fd, PAGEMAP_SCAN, &a);

		if (n < 0 && (errno == ENOTTY || errno == EINVAL) && at == start) {
			*written_known = false;
			return scan_slow(pm_fd, base, start, end, anon_only, bits, count);
		}
		if (n < 0) {
			int err = -errno;

			pr_err("PAGEMAP_SCAN of %#" PRIx64 "-%#" PRIx64 " failed: %s", at, end,
			       strerror(-err));
			return err;
		}
		for (int i = 0; i < n; i++) {
			const struct page_region *r = &regs[i];

			if (r->start < start || r->end > end || r->start >= r->end ||
			    (r->start | r->end) & 4095) {
				pr_err("PAGEMAP_SCAN returned a region outside the request");
				return -EIO;
			}
			if (r->categories & PAGE_IS_PFNZERO)
				continue;
			if (anon_only && (r->categories & PAGE_IS_FILE))
				continue;
			rdmig_bitmap_set(bits, (r->start - base) / 4096,
			                 (r->end - r->start) / 4096);
			if (written && (r->categories & PAGE_IS_WRITTEN))
				rdmig_bitmap_set(written, (r->start - base) / 4096,
				                 (r->end - r->start) / 4096);
			*count += (r->end - r->start) / 4096;
		}
		if (a.walk_end <= at || a.walk_end > end) {
			pr_err("PAGEMAP_SCAN made no progress at %#" PRIx64, at);
			return -EIO;
		}
		at = a.walk_end;
	}
	return 0;
}

/* One mapping's walk, cut in pieces the caller and the helpers take in turn:
 * whoever is on a CPU takes the next one, so a helper that the freeze's first
 * injected call keeps off its CPU (capture.c) leaves its share to the caller
 * instead of making it wait. Everything here is under pool.mu but the walks. */
struct scan_job {
	int pm_fd;
	uint64_t base, end, piece;
	bool anon_only;
	uint8_t *bits, *written;
	unsigned npieces, next, done;
	uint64_t count;
	bool known;
	int ret;
};

/* The helpers wait for a new generation; `use` keeps one walk at a time. */
static struct {
	pthread_mutex_t use, mu;
	pthread_cond_t work, done;
	unsigned n;
	bool quit;
	uint64_t gen;
	struct scan_job *cur; /* NULL once its pieces are all done */
	pthread_t th[SCAN_THREADS - 1];
	pid_t tid[SCAN_THREADS - 1];      /* for their affinity; 0 until known */
	cpu_set_t cpus[SCAN_THREADS - 1]; /* each one's own, as it started */
	bool cpus_known[SCAN_THREADS - 1];
	int away_from; /* the CPU the helpers are kept off, -1 none */
} pool = {
    .use = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

/* Take and walk pieces of pool.cur until none is left; called and returns
 * with pool.mu held. */
static void take_pieces(void)
{
	struct scan_job *j = pool.cur;

	while (j && j->next < j->npieces) {
		uint64_t s = j->base + (uint64_t)j->next++ * j->piece, e = s + j->piece, count = 0;
		bool known = false;
		int ret;

		if (e > j->end)
			e = j->end;
		pthread_mutex_unlock(&pool.mu);
		ret = scan_one(j->pm_fd, j->base, s, e, j->anon_only, j->bits, &count, j->written,
		               &known);
		pthread_mutex_lock(&pool.mu);
		j->count += count;
		j->known = j->known && known;
		if (ret && !j->ret)
			j->ret = ret;
		if (++j->done == j->npieces)
			pthread_cond_signal(&pool.done);
	}
}

static void *helper(void *arg)
{
	unsigned me = (unsigned)(uintptr_t)arg;
	uint64_t seen = 0;

	pthread_mutex_lock(&pool.mu);
	pool.cpus_known[me] = sched_getaffinity(0, sizeof(pool.cpus[me]), &pool.cpus[me]) == 0;
	pool.tid[me] = gettid();
	pthread_cond_broadcast(&pool.done); /* helpers_start waits for the tids */
	for (;;) {
		while (!pool.quit && pool.gen == seen)
			pthread_cond_wait(&pool.work, &pool.mu);
		if (pool.quit)
			break;
		seen = pool.gen;
		take_pieces(); /* a late helper finds none left, or no job at all */
	}
	pthread_mutex_unlock(&pool.mu);
	return NULL;
}
int rdmig_pagescan_helpers_start(void)
{
	int cpus = get_nprocs();
	unsigned want = cpus > 1 ? (unsigned)cpus - 1 : 0;
	sigset_t all, old;

	if (pool.n)
		return (int)pool.n;
	if (want > SCAN_THREADS - 1)
		want = SCAN_THREADS - 1;
	/* signals are for the daemon's own thread: the helpers block them all */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pool.quit = false;
	while (pool.n < want) {
		int err = pthread_create(&pool.th[pool.n], NULL, helper, (void *)(uintptr_t)pool.n);

		if (err) {
			pr_info("page walk helper %u not started: %s", pool.n, strerror(err));
			break;
		}
		pool.n++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_lock(&pool.mu);
	for (unsigned i = 0; i < pool.n; i++)
		while (!pool.tid[i])
			pthread_cond_wait(&pool.done, &pool.mu);
	pool.away_from = -1;
	pthread_mutex_unlock(&pool.mu);
	return (int)pool.n;
}

void rdmig_pagescan_helpers_stop(void)
{
	if (!pool.n)
		return;
	pthread_mutex_lock(&pool.mu);
	pool.quit = true;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.mu);
	for (unsigned i = 0; i < pool.n; i++) {
		pthread_join(pool.th[i], NULL);
		pool.tid[i] = 0;
		pool.cpus_known[i] = false;
	}
	pool.n = 0;
}

/*
 * Keep the helpers off the caller's CPU. A sched trace of a 1 GiB freeze
 * showed the helper woken on the capture's CPU, where it preempted the caller
 * and walked while the caller waited, the other CPU idle: two threads, one
 * CPU's walk (1.6-2 ms against ~0.7 for two halves on two CPUs). Done only
 * when the caller's CPU changed since the last walk; a helper whose own
 * affinity is that one CPU is left as it is. Called with pool.mu held.
 */
static void helpers_away_from(int cpu)
{
	if (cpu < 0 || cpu == pool.away_from || cpu >= CPU_SETSIZE)
		return;
	for (unsigned i = 0; i < pool.n; i++) {
		cpu_set_t set = pool.cpus[i];

		if (!pool.cpus_known[i])
			continue;
		CPU_CLR(cpu, &set);
		if (!CPU_COUNT(&set))
			set = pool.cpus[i];
		/* a failure costs only the speed-up: the helper walks where it is */
		if (sched_setaffinity(pool.tid[i], sizeof(set), &set) < 0)
			pr_debug("page walk helper %u stays where it was: %s", i, strerror(errno));
	}
	pool.away_from = cpu;
}

int rdmig_pagescan(int pm_fd, uint64_t start, uint64_t end, bool anon_only, uint8_t *bits,
                   uint64_t *count, uint8_t *written, bool *written_known)
{
	/* helpers reach it only through pool.cur, cleared before we return */
	struct scan_job job;
	uint64_t len = end - start, piece = SCAN_PIECE;
	int ret;

	if (!pool.n || len < SCAN_SPLIT)
		return scan_one(pm_fd, start, start, end, anon_only, bits, count, written,
		                written_known);
	/* at most SCAN_MAX_PIECES, each whole 8-page groups from the start */
	if (len / piece > SCAN_MAX_PIECES)
		piece = (len / SCAN_MAX_PIECES + SCAN_GROUP - 1) / SCAN_GROUP * SCAN_GROUP;
	pthread_mutex_lock(&pool.use);
	pthread_mutex_lock(&pool.mu);
	job = (struct scan_job){
	    .pm_fd = pm_fd,
	    .base = start,
	    .end = end,
	    .piece = piece,
	    .anon_only = anon_only,
	    .bits = bits,
	    .written = written,
	    .npieces = (unsigned)((len + piece - 1) / piece),
	    .known = true,
	};
	helpers_away_from(sched_getcpu());
	pool.cur = &job;
	pool.gen++;
	pthread_cond_broadcast(&pool.work);
	take_pieces();
	while (job.done < job.npieces)
		pthread_cond_wait(&pool.done, &pool.mu);
	pool.cur = NULL;
	*count = job.count;
	*written_known = job.known;
	ret = job.ret;
	pthread_mutex_unlock(&pool.mu);
	pthread_mutex_unlock(&pool.use);
	return ret;
}
