/*
 * bench/fault_lat: what a post-copy page fault costs and how fast a lazily served
 * region becomes local, beside the baselines that bound it, all measured in one run.
 *
 *   fault_lat [--transport fabric --provider tcp --addr 127.0.0.1] [--sizes 256M,1G,4G]
 *   fault_lat --transport verbs --addr $RDMIG_RXE_ADDR --sizes 64M,256M   (rxe guest)
 *
 * A server, forked before any transport exists, serves one session per size: it
 * maps N bytes, writes a pattern of the source address into every word (the
 * mirror), and publishes them with rdmig_mirror_publish. In each session the client
 *   1. measures the raw one-sided READ on the same connection: 4 KiB with one in
 *      flight, spinning on completions (as bench/read_lat does), and bandwidth with
 *      64 KiB READs (the baseline of the all-local target) and with 4 KiB READs at
 *      the loop's prefetch depth (what page-sized fetches can reach). Bandwidth is
 *      measured again after the sweeps and the better of the two is the baseline:
 *      on a shared machine one second of it can be several times too low, which
 *      would flatter the paging;
 *   2. measures the local uffd floor: the same fault loop served by the memory
 *      source in inline mode, i.e. a fault resolved by a memcpy and UFFDIO_COPY;
 *      and, to read the prefetch-on touch latencies against, the first touch of a
 *      present page: one the kernel populated, and one UFFDIO_COPY installed (what
 *      a prefetched page costs at best; measured on the PVM host: 0.3 us and about
 *      5 us, in the TCG guest both about 2 us: the difference is the hypervisor's,
 *      not the loop's);
 *   3. measures demand faults: a fresh lazy mapping (MAP_NORESERVE) served by the
 *      fault loop and the transport page source with the prefetcher off, touched at
 *      random distinct pages by 1 and by 4 threads: every touch is a fault;
 *   4. sweeps fresh lazy mappings with the prefetcher on, in sequential, strided,
 *      random and zipfian order with 1 and 4 threads: touch latency, demand faults
 *      against pages touched (prefetch coverage), and the time from the first
 *      touch until the loop reports every page local, against N / raw bandwidth.
 * The lazy mapping's pages come from the mirror through add_range's source address,
 * so the mapping can land anywhere.
 *
 * Every touch checks the page's first word; afterwards every touched page (after a
 * sweep: the whole region) is compared word by word with the pattern. Wrong data or
 * any error makes the exit status non-zero; timings never do: the machines are
 * shared and noisy, read ratios, not absolutes.
 */
#define LOG_SUBSYS "fault_lat"
#include "memsource.h"
#include "uffd.h"

#include "rdmig/log.h"
#include "rdmig/mirror.h"
#include "rdmig/pager.h"
#include "rdmig/prefetch.h"
#include "rdmig/tpsource.h"
#include "rdmig/transport.h"
#include "stats.h"

#include <endian.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ull
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define MAX_SIZES 8
#define MAX_THREADS 16
/* Where the mirror's first byte lives in the "source" process: any page-aligned user
 * address; the client maps its lazy copy wherever mmap puts it. */
#define MIRROR_SRC 0x7e0000000000ull
#define FLOOR_LEN (64 * MiB)
#define WARM_PAGES 200 /* demand faults before the timed ones: connection and caches warm */
#define RAW_WARM 200
#define BW4K_DEPTH 64 /* the loop's prefetch depth: max_inflight 128, half background */
#define RAW_BUF (2 * MiB)

/* ---- options ----------------------------------------------------------- */

enum order { ORD_SEQ, ORD_STRIDED, ORD_RANDOM, ORD_ZIPF, NORDERS };
static const char *const order_names[NORDERS] = {"sequential", "strided", "random", "zipfian"};

struct opts {
	struct rdmig_tp_opts tp;
	const char *addr;
	uint64_t sizes[MAX_SIZES];
	int nsizes;
	unsigned threads[2];
	int nthreads;
	unsigned orders;       /* bit per enum order */
	unsigned demand_pages; /* timed demand faults per run */
	unsigned stride;       /* pages, strided order */
	unsigned zipf_touches; /* touches of the zipfian order */
	int iters;             /* raw READ latency samples */
	int bw_ms;             /* each bandwidth measurement */
	int bw_depth;          /* 64 KiB READs in flight */
	int timeout_s;         /* a sweep not all local by then is an error */
	uint64_t seed;
	bool all_histograms;
};

/* ---- the page pattern -------------------------------------------------- */

#define PAT_K 0x9e3779b97f4a7c15ull

/* The word at source address a (a multiple of 8): unique per word (an odd multiplier
 * is a bijection) and never zero (odd), so a page installed at the wrong place, stale
 * or zero-filled never passes. Consecutive words differ by 8 * PAT_K, so filling and
 * checking cost an add per word. */
static inline uint64_t pat(uint64_t a)
{
	return (a | 1) * PAT_K;
}

static void fill_pattern(uint8_t *p, uint64_t src, size_t len)
{
	uint64_t w = pat(src);

	for (size_t i = 0; i < len; i += 8, w += 8 * PAT_K)
		memcpy(p + i, &w, 8);
}

/* Pages in [p, p+len) that differ from the pattern of src (the first few logged). */
static uint64_t check_pattern(const uint8_t *p, uint64_t src, size_t len, const char *what)
{
	uint64_t bad = 0;

	for (size_t off = 0; off < len; off += PG) {
		uint64_t w = pat(src + off), v;
		bool ok = true;

		for (size_t i = 0; i < PG; i += 8, w += 8 * PAT_K) {
			memcpy(&v, p + off + i, 8);
			ok &= v == w;
		}
		if (!ok && bad++ < 4)
			fprintf(stderr, "fault_lat: %s: wrong data in the page of source %#llx\n",
			        what, (unsigned long long)(src + off));
	}
	return bad;
}

/*
 * Map len bytes (a multiple of 2 MiB) at a 2 MiB boundary. Where THP is "always" (the
 * rxe guest's Debian kernel), an unaligned mapping merged with an anonymous
 * neighbour gets present pages from a huge page faulted in for the neighbour, before
 * or even after it is registered: those pages never fault, and would read zeros
 * (measured there: up to 300 of the first 512 pages of a 64 MiB mapping). With both
 * ends aligned, every huge page lies wholly on one side.
 */
static void *map_aligned(size_t len, int extra_flags)
{
	const size_t align = 2 * MiB;
	uint8_t *p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
	size_t head;

	if (p == MAP_FAILED)
		return p;
	head = (align - (uintptr_t)p % align) % align;
	if (head)
		munmap(p, head);
	if (align - head)
		munmap(p + head + len, align - head);
	return p + head;
}

/* ---- random numbers and touch orders ----------------------------------- */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rng_below(struct rng *r, uint64_t n)
{
	return rng_next(r) % n;
}

static void shuffle(uint32_t *v, uint32_t n, struct rng *r)
{
	for (uint32_t i = n - 1; n && i > 0; i--) {
		uint32_t j = (uint32_t)rng_below(r, (uint64_t)i + 1), t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
}

/*
 * The page indices touched, in order, *count of them. Sequential, strided (every
 * stride-th page, then the next offset: a permutation in stride passes) and random
 * (a permutation) touch every page once; zipfian draws zipf_touches pages with
 * s = 0.99 over a shuffled ranking, so a few pages take most touches and most pages
 * none (the sweep brings those).
 */
static uint32_t *make_order(enum order ord, uint32_t n, const struct opts *o, struct rng *r,
                            size_t *count)
{
	uint32_t per = n / o->stride, *v = malloc((size_t)n * sizeof(*v)), *z = NULL;
	double *cdf = NULL, sum = 0;
	size_t m;

	if (!v)
		return NULL;
	for (uint32_t i = 0; i < n; i++)
		v[i] = ord == ORD_STRIDED ? (i % per) * o->stride + i / per : i;
	*count = n;
	if (ord == ORD_RANDOM || ord == ORD_ZIPF)
		shuffle(v, n, r);
	if (ord != ORD_ZIPF)
		return v;

	m = o->zipf_touches;
	cdf = malloc((size_t)n * sizeof(*cdf));
	z = malloc(m * sizeof(*z));
	if (!cdf || !z)
		goto out_free;
	for (uint32_t k = 0; k < n; k++)
		cdf[k] = (sum += 1.0 / pow((double)k + 1, 0.99));
	for (size_t i = 0; i < m; i++) {
		double u = (double)(rng_next(r) >> 11) / 9007199254740992.0 * sum;
		uint32_t lo = 0, hi = n - 1;

		while (lo < hi) {
			uint32_t mid = lo + (hi - lo) / 2;

			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		z[i] = v[lo]; /* v: the rank -> page shuffle */
	}
	*count = m;
	free(cdf);
	free(v);
	return z;
out_free:
	free(cdf);
	free(z);
	free(v);
	return NULL;
}

static uint64_t count_distinct(const uint32_t *v, size_t count, uint32_t n)
{
	uint64_t *bits = calloc(((size_t)n + 63) / 64, sizeof(*bits)), d = 0;

	if (!bits)
		return count; /* only a report: an upper bound will do */
	for (size_t i = 0; i < count; i++) {
		uint64_t b = 1ull << (v[i] % 64);

		d += !(bits[v[i] / 64] & b);
		bits[v[i] / 64] |= b;
	}
	free(bits);
	return d;
}

/* ---- the server (a forked child: the mirror's side) -------------------- */

/* The client's request at the start of a session, and its end. Little-endian on
 * the wire; the server checks every field before it maps anything. */
#define FL_MAGIC 0x464c4154u /* "FLAT" */
enum fl_op {
	FL_OP_MIRROR = 1, /* map size bytes of pattern for source address src, publish */
	FL_OP_NEXT = 2,   /* this session is over; another connection follows */
	FL_OP_QUIT = 3,   /* this session is over; exit */
};
struct fl_req {
	uint32_t magic;
	uint32_t op;
	uint64_t size;
	uint64_t src;
};
_Static_assert(sizeof(struct fl_req) == 24, "fl_req is a wire format");

static int send_req(struct rdmig_conn *c, enum fl_op op, uint64_t size, uint64_t src)
{
	struct fl_req q = {.magic = htole32(FL_MAGIC),
	                   .op = htole32((uint32_t)op),
	                   .size = htole64(size),
	                   .src = htole64(src)};

	return rdmig_tp_send(c, &q, sizeof(q));
}

static int recv_req(struct rdmig_conn *c, int timeout_ms, struct fl_req *q)
{
	int n = rdmig_tp_recv(c, q, sizeof(*q), timeout_ms);

	if (n < 0)
		return n;
	if (n != (int)sizeof(*q) || le32toh(q->magic) != FL_MAGIC)
		return -EBADMSG;
	q->op = le32toh(q->op);
	q->size = le64toh(q->size);
	q->src = le64toh(q->src);
	return 0;
}

/* One session: 1 when the client said QUIT, 0 when another follows, or -errno. */
static int serve_session(struct rdmig_conn *c)
{
	struct rdmig_mirror *m = NULL;
	struct fl_req q;
	uint8_t *mem;
	int ret;

	ret = recv_req(c, 60000, &q);
	if (ret < 0)
		return ret;
	if (q.op != FL_OP_MIRROR || !q.size || q.size % PG || q.size > (1ull << 40) || q.src % PG ||
	    q.src + q.size < q.src || q.src + q.size > (1ull << 47))
		return -EBADMSG;
	mem = mmap(NULL, q.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	fill_pattern(mem, q.src, q.size);
	ret = rdmig_mirror_publish(
	    c, &(struct rdmig_mirror_region){.id = q.src, .base = mem, .len = q.size}, 1, &m);
	if (ret < 0)
		goto out_unmap;
	/* The client reads at will; the transport serves its READs meanwhile. */
	ret = recv_req(c, -1, &q);
	if (ret == 0)
		ret = q.op == FL_OP_QUIT ? 1 : q.op == FL_OP_NEXT ? 0 : -EBADMSG;
	rdmig_mirror_release(m);
out_unmap:
	munmap(mem, q.size);
	return ret;
}

static void server_main(struct rdmig_listener *l) __attribute__((noreturn));
static void server_main(struct rdmig_listener *l)
{
	struct rdmig_conn *c;
	int ret;

	rdmig_log_set_tag("server");
	for (;;) {
		ret = rdmig_tp_accept(l, 120000, &c);
		if (ret < 0)
			break;
		ret = serve_session(c);
		rdmig_tp_close(c);
		if (ret != 0)
			break;
	}
	if (ret < 0)
		pr_err("serving the mirror: %s", strerror(-ret));
	rdmig_tp_close_listener(l);
	_exit(ret < 0 ? 1 : 0);
}

/* Fork the server before this process touches any transport (neither side then
 * inherits the other's library state); its port comes back through a pipe. */
static int server_start(const struct opts *o, pid_t *pid, int *port)
{
	struct rdmig_listener *l;
	char hp[128];
	int pfd[2], ret;

	if (pipe(pfd) < 0)
		return -errno;
	*pid = fork();
	if (*pid < 0) {
		ret = -errno;
		close(pfd[0]);
		close(pfd[1]);
		return ret;
	}
	if (*pid == 0) {
		close(pfd[0]);
		snprintf(hp, sizeof(hp), "%s:0", o->addr);
		ret = rdmig_tp_listen(&o->tp, hp, &l);
		*port = ret < 0 ? ret : rdmig_tp_local_port(l);
		if (write(pfd[1], port, sizeof(*port)) != sizeof(*port) || *port < 0)
			_exit(1);
		close(pfd[1]);
		server_main(l);
	}
	close(pfd[1]);
	if (read(pfd[0], port, sizeof(*port)) != sizeof(*port))
		*port = -EIO;
	close(pfd[0]);
	return *port < 0 ? *port : 0;
}

/* ---- raw one-sided READs ------------------------------------------------ */

/* Spin on the completion queue: this is the transport's own cost, without the
 * scheduler's wakeup. A stuck operation fails after 10 s. */
static int wait_completion(struct rdmig_conn *c, struct rdmig_completion *comp, int max)
{
	uint64_t start = now_ns();

	for (;;) {
		int n = rdmig_tp_poll(c, comp, max);

		if (n != 0)
			return n;
		if (now_ns() - start > 10000000000ull)
			return -ETIMEDOUT;
	}
}

struct raw_result {
	struct lat_stats read4k;
	double bw64_mbps[2], bw4k_mbps[2]; /* before and after the sweeps */
};

static double best(const double v[2])
{
	return v[0] > v[1] ? v[0] : v[1];
}

/* READs of len bytes with depth in flight for ms, each into its own slot of buf; the
 * first word of every completed read is checked. */
static int raw_bandwidth(struct rdmig_conn *c, struct rdmig_mr *mr, uint8_t *buf,
                         const struct rdmig_region *reg, size_t len, int depth, int ms,
                         struct rng *r, double *mbps)
{
	uint64_t offs[64], t0 = now_ns(), end = t0 + (uint64_t)ms * 1000000ull, bytes = 0;
	struct rdmig_completion comp[64];
	uint64_t pages = (reg->desc.len - len) / PG + 1;
	int inflight = 0, n, ret;
	uint32_t slot;

	if (depth > 64 || (size_t)depth * len > RAW_BUF)
		return -EINVAL;
	for (slot = 0; slot < (uint32_t)depth; slot++) {
		offs[slot] = rng_below(r, pages) * PG;
		ret =
		    rdmig_tp_post_read(c, buf + slot * len, mr, len, &reg->desc, offs[slot], slot);
		if (ret < 0)
			return ret;
		inflight++;
	}
	while (inflight) {
		n = wait_completion(c, comp, depth);
		if (n < 0)
			return n;
		for (int k = 0; k < n; k++) {
			uint64_t v;

			slot = (uint32_t)comp[k].ctx;
			inflight--;
			if (comp[k].status < 0)
				return comp[k].status;
			memcpy(&v, buf + slot * len, 8);
			if (v != pat(reg->id + offs[slot])) {
				fprintf(stderr, "fault_lat: raw READ: wrong data at %#llx\n",
				        (unsigned long long)(reg->id + offs[slot]));
				return -EIO;
			}
			bytes += len;
			if (now_ns() >= end)
				continue; /* draining */
			offs[slot] = rng_below(r, pages) * PG;
			ret = rdmig_tp_post_read(c, buf + slot * len, mr, len, &reg->desc,
			                         offs[slot], slot);
			if (ret < 0)
				return ret;
			inflight++;
		}
	}
	*mbps = (double)bytes / ((double)(now_ns() - t0) / 1e9) / 1e6;
	return 0;
}

/* Latency (pass 0 only) and bandwidth into res's slot for pass 0 or 1, with a buffer
 * of its own registered on c. */
static int raw_measure(const struct opts *o, struct rdmig_conn *c, const struct rdmig_region *reg,
                       int pass, struct rng *r, struct raw_result *res)
{
	const uint64_t pages = reg->desc.len / PG;
	struct rdmig_completion comp;
	struct rdmig_mr *mr = NULL;
	uint64_t *ns = NULL;
	uint8_t *buf;
	int ret;

	buf = mmap(NULL, RAW_BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return -errno;
	ns = calloc((size_t)o->iters, sizeof(*ns));
	if (!ns) {
		ret = -ENOMEM;
		goto out_unmap;
	}
	ret = rdmig_tp_mr_reg(c, buf, RAW_BUF, 0, &mr);
	if (ret < 0)
		goto out_free;
	for (int i = -RAW_WARM; pass == 0 && i < o->iters; i++) {
		uint64_t off = rng_below(r, pages) * PG, t0 = now_ns();

		ret = rdmig_tp_post_read(c, buf, mr, PG, &reg->desc, off, 1);
		if (ret == 0)
			ret = wait_completion(c, &comp, 1);
		if (ret > 0)
			ret = comp.status;
		if (ret < 0)
			goto out_dereg;
		if (i >= 0)
			ns[i] = now_ns() - t0;
		if (check_pattern(buf, reg->id + off, PG, "raw READ")) {
			ret = -EIO;
			goto out_dereg;
		}
	}
	if (pass == 0) {
		lat_compute(ns, (size_t)o->iters, &res->read4k);
		lat_print_histogram("raw READ 4KiB, 1 in flight", ns, (size_t)o->iters);
	}
	ret =
	    raw_bandwidth(c, mr, buf, reg, 65536, o->bw_depth, o->bw_ms, r, &res->bw64_mbps[pass]);
	if (ret == 0)
		ret = raw_bandwidth(c, mr, buf, reg, PG, BW4K_DEPTH, o->bw_ms, r,
		                    &res->bw4k_mbps[pass]);
out_dereg:
	if (rdmig_tp_mr_dereg(mr) < 0 && ret == 0)
		ret = -EIO;
out_free:
	free(ns);
out_unmap:
	munmap(buf, RAW_BUF);
	if (ret < 0)
		fprintf(stderr, "fault_lat: raw READ measurement failed: %s\n", strerror(-ret));
	return ret;
}

/* ---- a lazily served region -------------------------------------------- */

/* The prefetch policy behind the loop's hook. The loop hands next() its table; the
 * policy's is_remote() asks that table, so it is saved first (and set before the
 * loop starts, for on_fault). */
struct pf_adapter {
	struct rdmig_prefetch *p;
	const struct rdmig_pagestate *ps;
};

static bool pf_is_remote(void *arg, uint64_t addr)
{
	const struct pf_adapter *a = arg;

	return rdmig_pagestate_get(a->ps, addr) == RDMIG_PAGE_REMOTE;
}

static void pf_on_fault(void *arg, uint64_t addr)
{
	struct pf_adapter *a = arg;

	rdmig_prefetch_on_fault(a->p, addr);
}

static int pf_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct pf_adapter *a = arg;

	a->ps = ps;
	return rdmig_prefetch_next(a->p, addr, 1);
}

/* What the loop reported, written in its thread, read by the main thread. */
struct loop_events {
	_Atomic uint64_t all_local_ns;
	_Atomic int failed; /* the status of a SOURCE_FAILED or FATAL */
	_Atomic int stalled;
};

static void on_event(void *arg, const struct rdmig_pager_event *ev)
{
	struct loop_events *e = arg;
	int zero = 0;

	switch (ev->type) {
	case RDMIG_PAGER_ALL_LOCAL:
		atomic_store(&e->all_local_ns, now_ns());
		break;
	case RDMIG_PAGER_SOURCE_FAILED:
	case RDMIG_PAGER_FATAL:
		atomic_compare_exchange_strong(&e->failed, &zero, ev->status ? ev->status : -EIO);
		break;
	case RDMIG_PAGER_SOURCE_STALLED:
		atomic_fetch_add(&e->stalled, 1);
		break;
	default:
		break;
	}
}

struct lazy {
	uint8_t *base;
	size_t len;
	uint64_t src; /* source address of base */
	struct rdmig_page_source *source;
	struct rdmig_faultloop *loop;
	struct pf_adapter pf;
	struct loop_events ev;
};

/* Undo lazy_open, whatever part of it was done. The loop (holding the only uffd
 * references) goes before the memory: munmap of a registered range waits for its
 * UNMAP event to be read, which a stopped loop never does. */
static void lazy_close(struct lazy *z)
{
	rdmig_faultloop_destroy(z->loop);
	rdmig_prefetch_destroy(z->pf.p);
	rdmig_source_destroy(z->source);
	if (z->base)
		munmap(z->base, z->len);
	memset(z, 0, sizeof(*z));
}

/* Map len bytes lazily, served from source (owned from now on, even on failure)
 * for source addresses [src, src+len); with prefetch, the policy runs in the loop. */
static int lazy_open(struct lazy *z, size_t len, uint64_t src, struct rdmig_page_source *source,
                     bool prefetch)
{
	struct rdmig_faultloop_opts lo = {0};
	struct rdmig_prefetch_range range;
	void *m;
	int uffd, ret;

	memset(z, 0, sizeof(*z));
	z->source = source;
	z->len = len;
	z->src = src;
	m = map_aligned(len, MAP_NORESERVE);
	if (m == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	z->base = m;
	if (prefetch) {
		range = (struct rdmig_prefetch_range){.start = (uint64_t)(uintptr_t)m,
		                                      .end = (uint64_t)(uintptr_t)m + len};
		ret = rdmig_prefetch_create(&(struct rdmig_prefetch_cfg){.page_size = PG,
		                                                         .ranges = &range,
		                                                         .nr_ranges = 1,
		                                                         .is_remote = pf_is_remote,
		                                                         .arg = &z->pf},
		                            &z->pf.p);
		if (ret < 0)
			goto out_close;
		lo.prefetch = (struct rdmig_prefetcher){
		    .on_fault = pf_on_fault, .next = pf_next, .arg = &z->pf};
	}
	uffd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (uffd < 0) {
		ret = uffd;
		goto out_close;
	}
	lo.uffd = uffd;
	lo.source = source;
	lo.own_mm = true;
	lo.on_event = on_event;
	lo.event_arg = &z->ev;
	ret = rdmig_faultloop_create(&lo, &z->loop);
	/* The loop keeps its own dup: with ours closed, destroying the loop releases the
	 * last reference, which is what wakes threads stuck in a fault on the error
	 * path. */
	close(uffd);
	if (ret < 0)
		goto out_close;
	ret = rdmig_faultloop_add_range(z->loop, (uint64_t)(uintptr_t)m, len, src,
	                                RDMIG_PAGE_REMOTE, true);
	if (ret < 0)
		goto out_close;
	z->pf.ps = rdmig_faultloop_pagestate(z->loop);
	return 0;
out_close:
	fprintf(stderr, "fault_lat: setting up a lazy region of %llu MiB: %s\n",
	        (unsigned long long)(len / MiB), strerror(-ret));
	lazy_close(z);
	return ret;
}

/* ---- touching ----------------------------------------------------------- */

/* Holds the touch threads until the loop runs, so the clock starts at the first
 * touch; or sends them home untouched when the loop cannot start. */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int state; /* 0 wait, 1 go, -1 cancelled */
};

static void gate_open(struct gate *g, int state)
{
	pthread_mutex_lock(&g->mu);
	g->state = state;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

static int gate_wait(struct gate *g)
{
	int st;

	pthread_mutex_lock(&g->mu);
	while (!g->state)
		pthread_cond_wait(&g->cv, &g->mu);
	st = g->state;
	pthread_mutex_unlock(&g->mu);
	return st;
}

struct toucher {
	pthread_t th;
	const struct lazy *z;
	const uint32_t *pages; /* this thread's part of the order */
	size_t n;
	uint64_t *ns; /* n latencies */
	struct gate *go;
	uint64_t bad;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	if (gate_wait(t->go) < 0)
		return NULL;
	for (size_t k = 0; k < t->n; k++) {
		uint64_t off = (uint64_t)t->pages[k] * PG, t0 = now_ns();
		uint64_t w = *(const volatile uint64_t *)(const void *)(t->z->base + off);

		t->ns[k] = now_ns() - t0;
		t->bad += w != pat(t->z->src + off);
	}
	return NULL;
}

struct touch_out {
	uint64_t t0_ns, end_ns; /* barrier released, last thread done */
	uint64_t bad;           /* touches whose first word was wrong */
};

/*
 * Touch order[0..n) with nthreads threads, each taking a contiguous part (for
 * sequential order that makes nthreads streams, which is what the policy's stream
 * tracking is for), recording every touch's latency in ns[]. Starts the loop if it
 * is not running yet, just before the threads go. A loop that reports a failure, or
 * threads still blocked at the deadline, end the run: the loop is destroyed, which
 * wakes them (they then read zeros, counted as bad), and -EIO / -ETIMEDOUT returned.
 */
static int touch(struct lazy *z, const uint32_t *order, size_t n, unsigned nthreads, uint64_t *ns,
                 bool start_loop, int timeout_s, struct touch_out *out)
{
	struct gate go = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
	struct toucher t[MAX_THREADS];
	unsigned started = 0, joined = 0;
	uint64_t deadline;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	for (unsigned k = 0; k < nthreads; k++) {
		size_t a = n * k / nthreads, b = n * (k + 1) / nthreads;

		t[k] = (struct toucher){
		    .z = z, .pages = order + a, .n = b - a, .ns = ns + a, .go = &go};
		ret = -pthread_create(&t[k].th, NULL, touch_main, &t[k]);
		if (ret < 0) {
			fprintf(stderr, "fault_lat: starting touch threads: %s\n", strerror(-ret));
			break;
		}
		started++;
	}
	if (ret == 0 && start_loop) {
		ret = rdmig_faultloop_start(z->loop);
		if (ret < 0)
			fprintf(stderr, "fault_lat: starting the fault loop: %s\n", strerror(-ret));
	}
	/* With nobody to serve their faults the threads must not touch anything. */
	out->t0_ns = now_ns();
	gate_open(&go, ret < 0 ? -1 : 1);
	if (ret < 0) {
		for (unsigned k = 0; k < started; k++)
			pthread_join(t[k].th, NULL);
		return ret;
	}
	deadline = out->t0_ns + (uint64_t)timeout_s * 1000000000ull;
	while (joined < nthreads) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_timedjoin_np(t[joined].th, NULL, &ts) == 0) {
			out->bad += t[joined].bad;
			joined++;
			continue;
		}
		if (ret == 0 && atomic_load(&z->ev.failed))
			ret = -EIO;
		if (ret == 0 && now_ns() > deadline)
			ret = -ETIMEDOUT;
		if (ret < 0 && z->loop) {
			fprintf(stderr,
			        "fault_lat: %s; tearing the loop down to release the touch "
			        "threads\n",
			        ret == -EIO ? "the page source failed" : "touch threads blocked");
			rdmig_faultloop_destroy(z->loop);
			z->loop = NULL;
		}
	}
	out->end_ns = now_ns();
	return ret;
}

/* Wait for the loop's ALL_LOCAL; its time, 0 on failure or timeout. */
static uint64_t wait_all_local(struct lazy *z, uint64_t deadline)
{
	uint64_t t;

	while (!(t = atomic_load(&z->ev.all_local_ns))) {
		if (atomic_load(&z->ev.failed) || now_ns() > deadline)
			return 0;
		usleep(500);
	}
	return t;
}

/* Compare every page in the list with the pattern (all of them local by now). */
static uint64_t check_listed(const struct lazy *z, const uint32_t *pages, size_t n,
                             const char *what)
{
	uint64_t bad = 0;

	for (size_t k = 0; k < n; k++) {
		uint64_t off = (uint64_t)pages[k] * PG;

		bad += check_pattern(z->base + off, z->src + off, PG, what);
	}
	return bad;
}

/* ---- the measurements --------------------------------------------------- */

struct sweep_result {
	bool done;
	int stalls; /* fetches the loop reported unanswered for its fetch timeout */
	struct lat_stats lat;
	uint64_t touches, distinct;
	struct rdmig_faultloop_stats ls;
	struct rdmig_prefetch_stats ps;
	double touch_s, local_s;
};

struct size_result {
	uint64_t size;
	bool done;
	struct raw_result raw;
	struct lat_stats floor, present[2]; /* populated, UFFDIO_COPY-installed */
	struct lat_stats demand[2];
	int demand_stalls;
	struct sweep_result sweep[NORDERS][2];
};

/*
 * Demand faults with no prefetcher: WARM_PAGES untimed faults, then demand_pages
 * timed ones by nthreads threads, all at distinct random pages, each one a fault.
 * source is owned from here on.
 */
static int demand_run(const struct opts *o, struct rdmig_page_source *source, size_t len,
                      uint64_t src, unsigned nthreads, struct rng *r, struct lat_stats *st,
                      int *stalls, const char *label)
{
	uint32_t n = (uint32_t)(len / PG), *perm = NULL;
	size_t warm = WARM_PAGES, d = o->demand_pages;
	struct rdmig_faultloop_stats ls;
	struct touch_out to;
	uint64_t *ns = NULL, bad;
	struct lazy z;
	int ret;

	if (warm + d > n)
		d = n > warm ? n - warm : 0;
	ret = lazy_open(&z, len, src, source, false);
	if (ret < 0)
		return ret;
	perm = malloc((size_t)n * sizeof(*perm));
	ns = calloc(warm + d ? warm + d : 1, sizeof(*ns));
	if (!perm || !ns || !d) {
		ret = d ? -ENOMEM : -EINVAL;
		goto out_close;
	}
	for (uint32_t i = 0; i < n; i++)
		perm[i] = i;
	shuffle(perm, n, r);
	ret = touch(&z, perm, warm, 1, ns, true, o->timeout_s, &to);
	bad = to.bad;
	if (ret == 0) {
		ret = touch(&z, perm + warm, d, nthreads, ns, false, o->timeout_s, &to);
		bad += to.bad;
	}
	*stalls += atomic_load(&z.ev.stalled);
	if (ret < 0)
		goto out_close;
	rdmig_faultloop_stats(z.loop, &ls);
	bad += check_listed(&z, perm, warm + d, label);
	if (bad || ls.faults < warm + d) {
		/* every touch was of a distinct missing page: fewer faults than touches means
		 * a page was present that nobody fetched */
		fprintf(stderr,
		        "fault_lat: %s: %llu pages with wrong data, %llu faults for %zu "
		        "first touches\n",
		        label, (unsigned long long)bad, (unsigned long long)ls.faults, warm + d);
		ret = -EIO;
		goto out_close;
	}
	lat_compute(ns, d, st);
	if (nthreads == 1 || o->all_histograms)
		lat_print_histogram(label, ns, d);
out_close:
	lazy_close(&z);
	free(perm);
	free(ns);
	return ret;
}

static int tpsource_for(struct rdmig_conn *c, const struct rdmig_region *table, uint32_t ntable,
                        struct rdmig_page_source **out)
{
	int ret = rdmig_tpsource_create(
	    &(struct rdmig_tpsource_opts){.conn = c, .regions = table, .nregions = ntable}, out);

	if (ret < 0)
		fprintf(stderr, "fault_lat: transport page source: %s\n", strerror(-ret));
	return ret;
}

/* The local floor: the same loop, a source that costs a memcpy (inline completion). */
static int floor_run(const struct opts *o, uint64_t size, struct rng *r, struct lat_stats *st)
{
	size_t len = size < FLOOR_LEN ? size : FLOOR_LEN;
	struct rdmig_page_source *s = NULL;
	int stalls = 0;
	uint8_t *img;
	int ret;

	img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (img == MAP_FAILED)
		return -errno;
	fill_pattern(img, MIRROR_SRC, len);
	ret = rdmig_memsource_create(&(struct rdmig_memsource_opts){.inline_completion = true}, &s);
	if (ret == 0)
		ret = rdmig_memsource_add_region(s, MIRROR_SRC, img, len);
	if (ret < 0) {
		rdmig_source_destroy(s);
		goto out_unmap;
	}
	ret = demand_run(o, s, len, MIRROR_SRC, 1, r, st, &stalls, "local uffd floor x1");
out_unmap:
	munmap(img, len);
	if (ret < 0)
		fprintf(stderr, "fault_lat: local floor: %s\n", strerror(-ret));
	return ret;
}

/*
 * First touches of random present pages, no fault: only the TLB, the page walk and
 * whatever the hypervisor adds. The pages are 4 KiB like the loop's installs, made
 * present either by the kernel (MADV_POPULATE_WRITE) or by UFFDIO_COPY from a buffer,
 * as the loop installs a prefetched page.
 */
static int present_run(const struct opts *o, bool by_uffd_copy, struct rng *r, struct lat_stats *st)
{
	uint32_t n = (uint32_t)(FLOOR_LEN / PG), *perm = NULL;
	struct lazy z = {.len = FLOOR_LEN, .src = MIRROR_SRC};
	uint8_t *img = MAP_FAILED;
	struct touch_out to;
	uint64_t *ns = NULL;
	int ret, uffd = -1;
	void *m;

	m = map_aligned(FLOOR_LEN, 0);
	if (m == MAP_FAILED)
		return -errno;
	z.base = m;
	perm = malloc((size_t)n * sizeof(*perm));
	ns = calloc(o->demand_pages, sizeof(*ns));
	if (!perm || !ns) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!by_uffd_copy) {
		if (madvise(m, FLOOR_LEN, MADV_NOHUGEPAGE) < 0 ||
		    madvise(m, FLOOR_LEN, 23 /* MADV_POPULATE_WRITE, Linux 5.14 */) < 0) {
			ret = -errno;
			goto out_free;
		}
		fill_pattern(m, MIRROR_SRC, FLOOR_LEN);
	} else {
		/* registered before anything else is mapped or written (see map_aligned) */
		ret = uffd = rdmig_uffd_open_api(0, 0);
		if (ret >= 0)
			ret = rdmig_uffd_register(uffd, (uint64_t)(uintptr_t)m, FLOOR_LEN,
			                          RDMIG_UFFD_MISSING | RDMIG_UFFD_NOHUGEPAGE, NULL);
		if (ret < 0)
			goto out_close_uffd;
		img = mmap(NULL, FLOOR_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		           0);
		if (img == MAP_FAILED) {
			ret = -errno;
			goto out_close_uffd;
		}
		fill_pattern(img, MIRROR_SRC, FLOOR_LEN);
		ret = rdmig_uffd_copy(uffd, (uint64_t)(uintptr_t)m, img, FLOOR_LEN, 0, NULL);
		if (ret < 0)
			goto out_close_uffd;
	}
	for (uint32_t i = 0; i < n; i++)
		perm[i] = i;
	shuffle(perm, n, r);
	ret = touch(&z, perm, o->demand_pages < n ? o->demand_pages : n, 1, ns, false, o->timeout_s,
	            &to);
	if (ret == 0 && to.bad)
		ret = -EIO;
	if (ret == 0)
		lat_compute(ns, o->demand_pages < n ? o->demand_pages : n, st);
out_close_uffd:
	if (uffd >= 0)
		close(uffd);
	if (img != MAP_FAILED)
		munmap(img, FLOOR_LEN);
out_free:
	free(perm);
	free(ns);
	munmap(m, FLOOR_LEN);
	if (ret < 0)
		fprintf(stderr, "fault_lat: present-page touches: %s\n", strerror(-ret));
	return ret;
}

/* A fresh lazy region with the prefetcher, touched in one order by nthreads. */
static int sweep_run(const struct opts *o, struct rdmig_conn *c, const struct rdmig_region *table,
                     uint32_t ntable, uint64_t size, enum order ord, unsigned nthreads,
                     struct rng *r, struct sweep_result *res)
{
	uint32_t n = (uint32_t)(size / PG), *order = NULL;
	struct rdmig_page_source *s;
	uint64_t *ns = NULL, bad, t_local, faults_after;
	struct rdmig_faultloop_stats after;
	struct touch_out to;
	char label[64];
	struct lazy z;
	size_t count;
	int ret;

	snprintf(label, sizeof(label), "%s x%u prefetch on", order_names[ord], nthreads);
	ret = tpsource_for(c, table, ntable, &s);
	if (ret < 0)
		return ret;
	ret = lazy_open(&z, size, MIRROR_SRC, s, true);
	if (ret < 0)
		return ret;
	order = make_order(ord, n, o, r, &count);
	ns = order ? calloc(count, sizeof(*ns)) : NULL;
	if (!ns) {
		ret = -ENOMEM;
		goto out_close;
	}
	ret = touch(&z, order, count, nthreads, ns, true, o->timeout_s, &to);
	if (ret < 0)
		goto out_close;
	t_local = wait_all_local(&z, to.t0_ns + (uint64_t)o->timeout_s * 1000000000ull);
	res->stalls = atomic_load(&z.ev.stalled);
	rdmig_faultloop_stats(z.loop, &res->ls);
	if (!t_local) {
		fprintf(stderr,
		        "fault_lat: %s: not all local after %d s (remote %llu, in flight %llu)\n",
		        label, o->timeout_s, (unsigned long long)res->ls.pages_remote,
		        (unsigned long long)res->ls.pages_inflight);
		ret = atomic_load(&z.ev.failed) ? -EIO : -ETIMEDOUT;
		goto out_close;
	}
	/* Every page is local: the whole region must equal the mirror, and reading it
	 * must not fault any more. */
	bad = to.bad + check_pattern(z.base, z.src, size, label);
	rdmig_faultloop_stats(z.loop, &after);
	faults_after = after.faults - res->ls.faults;
	rdmig_faultloop_stop(z.loop); /* the policy's counters belong to the loop thread */
	rdmig_prefetch_get_stats(z.pf.p, &res->ps);
	if (bad || faults_after) {
		fprintf(stderr,
		        "fault_lat: %s: %llu pages with wrong data, %llu faults after "
		        "all pages were reported local\n",
		        label, (unsigned long long)bad, (unsigned long long)faults_after);
		ret = -EIO;
		goto out_close;
	}
	res->touches = count;
	res->distinct = count_distinct(order, count, n);
	res->touch_s = (double)(to.end_ns - to.t0_ns) / 1e9;
	res->local_s = (double)(t_local - to.t0_ns) / 1e9;
	lat_compute(ns, count, &res->lat);
	if (o->all_histograms)
		lat_print_histogram(label, ns, count);
	res->done = true;
out_close:
	lazy_close(&z);
	free(order);
	free(ns);
	return ret;
}

/* ---- one session per size ----------------------------------------------- */

static int run_size(const struct opts *o, int port, bool last, struct rng *r,
                    struct size_result *res)
{
	struct rdmig_region *table = NULL;
	struct rdmig_page_source *s;
	struct rdmig_conn *c = NULL;
	uint32_t ntable = 0;
	char hp[128], label[64];
	int ret;

	snprintf(hp, sizeof(hp), "%s:%d", o->addr, port);
	ret = rdmig_tp_connect(&o->tp, hp, 20000, &c);
	if (ret < 0) {
		fprintf(stderr, "fault_lat: connecting to %s: %s\n", hp, strerror(-ret));
		return ret;
	}
	ret = send_req(c, FL_OP_MIRROR, res->size, MIRROR_SRC);
	if (ret == 0)
		ret = rdmig_mirror_recv_table(c, 600000, &table, &ntable);
	if (ret == 0 &&
	    (ntable != 1 || table[0].id != MIRROR_SRC || table[0].desc.len != res->size))
		ret = -EBADMSG;
	if (ret < 0) {
		fprintf(stderr, "fault_lat: the mirror of %llu MiB: %s\n",
		        (unsigned long long)(res->size / MiB), strerror(-ret));
		goto out_close;
	}

	ret = raw_measure(o, c, &table[0], 0, r, &res->raw);
	if (ret < 0)
		goto out_close;
	ret = floor_run(o, res->size, r, &res->floor);
	if (ret == 0)
		ret = present_run(o, false, r, &res->present[0]);
	if (ret == 0)
		ret = present_run(o, true, r, &res->present[1]);
	if (ret < 0)
		goto out_close;
	for (int t = 0; t < o->nthreads; t++) {
		snprintf(label, sizeof(label), "demand fault x%u prefetch off", o->threads[t]);
		ret = tpsource_for(c, table, ntable, &s);
		if (ret == 0)
			ret = demand_run(o, s, res->size, MIRROR_SRC, o->threads[t], r,
			                 &res->demand[t], &res->demand_stalls, label);
		if (ret < 0)
			goto out_close;
	}
	for (enum order ord = 0; ord < NORDERS; ord++) {
		if (!(o->orders & (1u << ord)))
			continue;
		for (int t = 0; t < o->nthreads; t++) {
			ret = sweep_run(o, c, table, ntable, res->size, ord, o->threads[t], r,
			                &res->sweep[ord][t]);
			if (ret < 0)
				goto out_close;
			printf("  %s x%u done: all local after %.2f s\n", order_names[ord],
			       o->threads[t], res->sweep[ord][t].local_s);
			fflush(stdout);
		}
	}
	ret = raw_measure(o, c, &table[0], 1, r, &res->raw);
	if (ret < 0)
		goto out_close;
	res->done = true;
out_close:
	/* Tell the server whether to wait for another session; a failed run kills it. */
	if (ret == 0)
		ret = send_req(c, last ? FL_OP_QUIT : FL_OP_NEXT, 0, 0);
	rdmig_tp_close(c);
	free(table);
	return ret;
}

/* ---- output ------------------------------------------------------------- */

static double ratio_target(const struct size_result *s)
{
	return s->demand[0].p50 / (s->raw.read4k.p50 + s->floor.p50);
}

/* Share of the distinct pages touched that were local before their first touch: every
 * fault is a page that was not (fetched on demand, or a prefetch still in flight). Two
 * threads faulting on one page count twice, so this can only err low. */
static double coverage(const struct sweep_result *w)
{
	uint64_t late = w->ls.faults < w->distinct ? w->ls.faults : w->distinct;

	return w->distinct ? 100.0 * (double)(w->distinct - late) / (double)w->distinct : 0.0;
}

static double size_over_bw(const struct size_result *s, double mbps)
{
	return mbps > 0 ? (double)s->size / (mbps * 1e6) : 0.0;
}

static void print_size(const struct opts *o, const struct size_result *s)
{
	char label[64];

	printf("\n-- %llu MiB: latency --\n", (unsigned long long)(s->size / MiB));
	lat_print_header();
	lat_print_row("raw READ 4KiB, 1 in flight", &s->raw.read4k);
	lat_print_row("local uffd floor x1", &s->floor);
	lat_print_row("first touch, kernel-populated page", &s->present[0]);
	lat_print_row("first touch, UFFDIO_COPY'd page", &s->present[1]);
	for (int t = 0; t < o->nthreads; t++) {
		snprintf(label, sizeof(label), "demand fault x%u (prefetch off)", o->threads[t]);
		lat_print_row(label, &s->demand[t]);
	}
	for (enum order ord = 0; ord < NORDERS; ord++)
		for (int t = 0; t < o->nthreads; t++) {
			if (!s->sweep[ord][t].done)
				continue;
			snprintf(label, sizeof(label), "touch %s x%u (prefetch on)",
			         order_names[ord], o->threads[t]);
			lat_print_row(label, &s->sweep[ord][t].lat);
		}
	printf("raw bandwidth (before / after the sweeps): 64KiB x%d in flight %.1f / %.1f MB/s, "
	       "4KiB x%d in flight %.1f / %.1f MB/s\n",
	       o->bw_depth, s->raw.bw64_mbps[0], s->raw.bw64_mbps[1], BW4K_DEPTH,
	       s->raw.bw4k_mbps[0], s->raw.bw4k_mbps[1]);
	if (s->demand_stalls)
		printf("demand runs: %d fetches unanswered past the loop's fetch timeout\n",
		       s->demand_stalls);

	printf("\n-- %llu MiB: paging with the prefetcher --\n",
	       (unsigned long long)(s->size / MiB));
	printf("%-10s %3s %8s %8s %7s %7s %7s %6s %8s %7s %8s %8s %8s %6s %6s %6s\n", "order",
	       "thr", "touches", "distinct", "faults", "fetched", "coalesc", "raced", "prefetch",
	       "covered", "touch s", "local s", "N/bw64 s", "x bw64", "x bw4k", "stalls");
	for (enum order ord = 0; ord < NORDERS; ord++)
		for (int t = 0; t < o->nthreads; t++) {
			const struct sweep_result *w = &s->sweep[ord][t];
			double b64 = size_over_bw(s, best(s->raw.bw64_mbps)),
			       b4 = size_over_bw(s, best(s->raw.bw4k_mbps));

			if (!w->done)
				continue;
			printf("%-10s %3u %8llu %8llu %7llu %7llu %7llu %6llu %8llu %6.1f%% %8.2f "
			       "%8.2f %8.2f %6.2f %6.2f %6d\n",
			       order_names[ord], o->threads[t], (unsigned long long)w->touches,
			       (unsigned long long)w->distinct, (unsigned long long)w->ls.faults,
			       (unsigned long long)w->ls.faults_fetched,
			       (unsigned long long)w->ls.faults_coalesced,
			       (unsigned long long)w->ls.faults_raced,
			       (unsigned long long)w->ls.prefetched, coverage(w), w->touch_s,
			       w->local_s, b64, b64 > 0 ? w->local_s / b64 : 0.0,
			       b4 > 0 ? w->local_s / b4 : 0.0, w->stalls);
		}
	printf("%-10s %3s %8s %8s %8s %8s %8s %8s %8s %6s\n", "policy", "thr", "issued", "stride",
	       "near", "sweep", "hits", "late", "requeued", "trend");
	for (enum order ord = 0; ord < NORDERS; ord++)
		for (int t = 0; t < o->nthreads; t++) {
			const struct rdmig_prefetch_stats *p = &s->sweep[ord][t].ps;

			if (!s->sweep[ord][t].done)
				continue;
			printf("%-10s %3u %8llu %8llu %8llu %8llu %8llu %8llu %8llu %6lld\n",
			       order_names[ord], o->threads[t], (unsigned long long)p->issued,
			       (unsigned long long)p->issued_stride,
			       (unsigned long long)p->issued_near,
			       (unsigned long long)p->issued_sweep, (unsigned long long)p->hits,
			       (unsigned long long)p->inflight_faults,
			       (unsigned long long)p->requeued, (long long)p->trend);
		}
	printf("ratio %llu MiB: demand fault p50 %.1f us / (raw READ p50 %.1f + floor p50 %.1f = "
	       "%.1f us) = %.2f (target <= 1.3)\n",
	       (unsigned long long)(s->size / MiB), s->demand[0].p50, s->raw.read4k.p50,
	       s->floor.p50, s->raw.read4k.p50 + s->floor.p50, ratio_target(s));
	fflush(stdout);
}

static void loadavg(char *buf, size_t cap)
{
	FILE *f = fopen("/proc/loadavg", "r");

	snprintf(buf, cap, "?");
	if (f) {
		if (fgets(buf, (int)cap, f))
			buf[strcspn(buf, "\n")] = 0;
		fclose(f);
	}
}

/* The size the summary quotes: 1 GiB when measured (the targets are stated
 * there), else the largest. */
static int key_size(const struct opts *o, const struct size_result *res)
{
	int k = -1;

	for (int i = 0; i < o->nsizes; i++) {
		if (!res[i].done)
			continue;
		if (res[i].size == GiB)
			return i;
		if (k < 0 || res[i].size > res[k].size)
			k = i;
	}
	return k;
}

static void print_summary(const struct opts *o, const struct size_result *res, bool ok)
{
	const int seq = ORD_SEQ, rnd = ORD_RANDOM;
	int k = key_size(o, res), first = -1;
	char load[128];

	printf("\n-- targets, side by side --\n");
	printf("fault p50 / (raw READ p50 + floor p50), target <= 1.3:");
	for (int i = 0; i < o->nsizes; i++)
		if (res[i].done)
			printf("  %lluM %.2f", (unsigned long long)(res[i].size / MiB),
			       ratio_target(&res[i]));
	printf("\nsequential sweep, pages local before their touch, target >= 90%%:");
	for (int i = 0; i < o->nsizes; i++)
		for (int t = 0; t < o->nthreads; t++)
			if (res[i].done && res[i].sweep[seq][t].done)
				printf("  %lluM x%u %.1f%%",
				       (unsigned long long)(res[i].size / MiB), o->threads[t],
				       coverage(&res[i].sweep[seq][t]));
	printf("\nrandom sweep, time to all local / (N / raw 64KiB bandwidth), target <= 1.5 at "
	       "1 GiB:");
	for (int i = 0; i < o->nsizes; i++)
		for (int t = 0; t < o->nthreads; t++)
			if (res[i].done && res[i].sweep[rnd][t].done)
				printf("  %lluM x%u %.2f", (unsigned long long)(res[i].size / MiB),
				       o->threads[t],
				       res[i].sweep[rnd][t].local_s /
				           size_over_bw(&res[i], best(res[i].raw.bw64_mbps)));
	printf("\ngrowth, time to all local per GiB (s/GiB; linear = flat):\n");
	for (enum order ord = 0; ord < NORDERS; ord++)
		for (int t = 0; t < o->nthreads; t++) {
			bool any = false;

			for (int i = 0; i < o->nsizes; i++) {
				const struct sweep_result *w = &res[i].sweep[ord][t];

				if (!res[i].done || !w->done)
					continue;
				if (!any)
					printf("  %-10s x%u:", order_names[ord], o->threads[t]);
				any = true;
				printf("  %lluM %.2f", (unsigned long long)(res[i].size / MiB),
				       w->local_s / ((double)res[i].size / GiB));
			}
			if (any)
				printf("\n");
		}
	loadavg(load, sizeof(load));
	printf("load at the end: %s\n", load);

	for (int i = 0; i < o->nsizes && first < 0; i++)
		if (res[i].done)
			first = i;
	printf("summary: %s", ok ? "data OK" : "FAILED");
	if (k >= 0) {
		const struct size_result *s = &res[k];

		printf(", at %lluM: fault/(read+floor) p50 %.2f (<=1.3)",
		       (unsigned long long)(s->size / MiB), ratio_target(s));
		if (s->sweep[seq][0].done)
			printf(", seq coverage %.1f%% (>=90%%)", coverage(&s->sweep[seq][0]));
		if (s->sweep[rnd][0].done)
			printf(", random all-local %.2fx N/bw (<=1.5)",
			       s->sweep[rnd][0].local_s / size_over_bw(s, best(s->raw.bw64_mbps)));
		if (first >= 0 && first != k && s->sweep[rnd][0].done &&
		    res[first].sweep[rnd][0].done)
			printf(", random per-byte time %lluM/%lluM %.2f (linear: 1)",
			       (unsigned long long)(s->size / MiB),
			       (unsigned long long)(res[first].size / MiB),
			       (s->sweep[rnd][0].local_s / (double)s->size) /
			           (res[first].sweep[rnd][0].local_s / (double)res[first].size));
	}
	printf("\n");
}

/* ---- main --------------------------------------------------------------- */

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr,
	        "usage: fault_lat [--transport fabric|verbs] [--provider tcp|verbs] [--addr IPV4]\n"
	        "                 [--token-file F] [--sizes 256M,1G,4G] [--threads 1,4]\n"
	        "                 [--orders sequential,strided,random,zipfian]\n"
	        "                 [--demand-pages N] [--stride PAGES] [--zipf-touches N]\n"
	        "                 [--iters N] [--bw-ms MS] [--bw-depth N] [--timeout-s S]\n"
	        "                 [--seed N] [--all-histograms]\n");
	exit(2);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 10);

	switch (*end) {
	case 'G':
	case 'g':
		v <<= 30;
		end++;
		break;
	case 'M':
	case 'm':
		v <<= 20;
		end++;
		break;
	case 'K':
	case 'k':
		v <<= 10;
		end++;
		break;
	default:
		break;
	}
	return *end ? 0 : v;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	/* a flag steps one argument, an option with a value two */
	for (int i = 1; i < argc;) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char buf[256], *save = NULL, *tok;

		if (!strcmp(a, "--all-histograms")) {
			o->all_histograms = true;
			i++;
			continue;
		}
		if (!v)
			usage();
		i += 2;
		if (!strcmp(a, "--transport")) {
			o->tp.transport = v;
		} else if (!strcmp(a, "--provider")) {
			o->tp.provider = v;
		} else if (!strcmp(a, "--addr")) {
			o->addr = v;
		} else if (!strcmp(a, "--token-file")) {
			o->tp.token_file = v;
		} else if (!strcmp(a, "--sizes") || !strcmp(a, "--threads") ||
		           !strcmp(a, "--orders")) {
			snprintf(buf, sizeof(buf), "%s", v);
			if (a[2] == 's')
				o->nsizes = 0;
			else if (a[2] == 't')
				o->nthreads = 0;
			else
				o->orders = 0;
			for (tok = strtok_r(buf, ",", &save); tok;
			     tok = strtok_r(NULL, ",", &save)) {
				if (a[2] == 's') {
					if (o->nsizes == MAX_SIZES)
						usage();
					o->sizes[o->nsizes++] = parse_size(tok);
				} else if (a[2] == 't') {
					if (o->nthreads == 2)
						usage();
					o->threads[o->nthreads++] = (unsigned)atoi(tok);
				} else {
					enum order ord = 0;

					while (ord < NORDERS && strncmp(order_names[ord], tok, 3))
						ord++;
					if (ord == NORDERS)
						usage();
					o->orders |= 1u << ord;
				}
			}
		} else if (!strcmp(a, "--demand-pages")) {
			o->demand_pages = (unsigned)atoi(v);
		} else if (!strcmp(a, "--stride")) {
			o->stride = (unsigned)atoi(v);
		} else if (!strcmp(a, "--zipf-touches")) {
			o->zipf_touches = (unsigned)atoi(v);
		} else if (!strcmp(a, "--iters")) {
			o->iters = atoi(v);
		} else if (!strcmp(a, "--bw-ms")) {
			o->bw_ms = atoi(v);
		} else if (!strcmp(a, "--bw-depth")) {
			o->bw_depth = atoi(v);
		} else if (!strcmp(a, "--timeout-s")) {
			o->timeout_s = atoi(v);
		} else if (!strcmp(a, "--seed")) {
			o->seed = strtoull(v, NULL, 0);
		} else {
			usage();
		}
	}
	if (o->iters < 100 || o->bw_ms < 100 || o->bw_depth < 1 || o->bw_depth > 32 ||
	    o->demand_pages < 100 || o->stride < 2 || o->zipf_touches < 1 || o->timeout_s < 1 ||
	    !o->nsizes || !o->nthreads || !o->orders)
		usage();
	for (int t = 0; t < o->nthreads; t++)
		if (o->threads[t] < 1 || o->threads[t] > MAX_THREADS)
			usage();
	for (int i = 0; i < o->nsizes; i++)
		/* whole stride passes and huge-page blocks (map_aligned); the floor and the
		 * raw READs want a few MiB */
		if (o->sizes[i] < 4 * MiB || o->sizes[i] % (o->stride * PG) ||
		    o->sizes[i] % (2 * MiB) || o->sizes[i] / PG > UINT32_MAX)
			usage();
}

/* A throw-away token, so the benchmark runs with nothing set up (as read_lat). */
static int make_token(char *path, size_t cap)
{
	uint8_t rnd[32];
	char hex[65];
	int fd;

	snprintf(path, cap, "/tmp/rdmig-bench-token.XXXXXX");
	fd = mkstemp(path);
	if (fd < 0)
		return -errno;
	if (getentropy(rnd, sizeof(rnd)) < 0) {
		close(fd);
		return -EIO;
	}
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	if (write(fd, hex, 64) != 64) {
		close(fd);
		return -EIO;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {
	    .tp = {.transport = "fabric", .provider = "tcp"},
	    .addr = "127.0.0.1",
	    .sizes = {256 * MiB, GiB, 4 * GiB},
	    .nsizes = 3,
	    .threads = {1, 4},
	    .nthreads = 2,
	    .orders = (1u << NORDERS) - 1,
	    .demand_pages = 4000,
	    .stride = 16,
	    .zipf_touches = 200000,
	    .iters = 5000,
	    .bw_ms = 1000,
	    .bw_depth = 32,
	    .timeout_s = 600,
	    .seed = 0x243f6a8885a308d3ull,
	};
	static struct size_result res[MAX_SIZES];
	char token[64] = "", load[128];
	struct rng r;
	pid_t server = -1;
	int port, ret = 0, status = 0;
	bool ok;

	parse_args(argc, argv, &o);
	r.s = o.seed;
	/* The loop logs every all-local at info level: one line per run is noise here. */
	if (!getenv("RDMIG_LOG_LEVEL"))
		rdmig_log_set_level(RDMIG_LOG_WARN);
	if (!strcmp(o.tp.transport, "verbs"))
		o.tp.provider = NULL;
	if (!o.tp.token_file) {
		if (make_token(token, sizeof(token)) < 0) {
			perror("fault_lat: token");
			return 1;
		}
		o.tp.token_file = token;
	}
	signal(SIGPIPE, SIG_IGN);

	loadavg(load, sizeof(load));
	printf("fault_lat: transport %s%s%s, %s; load %s (%ld cores)\n", o.tp.transport,
	       o.tp.provider ? "/" : "", o.tp.provider ? o.tp.provider : "", o.addr, load,
	       sysconf(_SC_NPROCESSORS_ONLN));
	printf("sizes:");
	for (int i = 0; i < o.nsizes; i++)
		printf(" %lluM", (unsigned long long)(o.sizes[i] / MiB));
	printf("; %u demand faults per run after %u warm-up, stride %u pages, %u zipfian touches "
	       "(s=0.99); raw READ %d samples, bandwidth %d ms\n",
	       o.demand_pages, WARM_PAGES, o.stride, o.zipf_touches, o.iters, o.bw_ms);
	fflush(stdout);

	ret = server_start(&o, &server, &port);
	if (ret < 0) {
		fprintf(stderr, "fault_lat: the %s transport cannot listen on %s: %s\n",
		        o.tp.transport, o.addr, strerror(-ret));
		goto out_wait;
	}
	for (int i = 0; i < o.nsizes; i++) {
		res[i].size = o.sizes[i];
		printf("\n== %llu MiB ==\n", (unsigned long long)(o.sizes[i] / MiB));
		fflush(stdout);
		ret = run_size(&o, port, i == o.nsizes - 1, &r, &res[i]);
		if (ret < 0)
			break;
		print_size(&o, &res[i]);
	}
out_wait:
	if (server > 0) {
		/* after a failure the server may wait for a session that never comes */
		if (ret < 0)
			kill(server, SIGKILL);
		if (waitpid(server, &status, 0) == server && ret == 0 &&
		    !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
			fprintf(stderr, "fault_lat: the server failed (status %#x)\n", status);
			ret = -EIO;
		}
	}
	if (token[0])
		unlink(token);
	ok = ret == 0;
	print_summary(&o, res, ok);
	return ok ? 0 : 1;
}
