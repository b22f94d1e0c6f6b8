/*
 * Tests of the uffd layer on this host's kernel: the wrappers, then the fault loop
 * serving this process (and, in one case, another process) from the memory page
 * source.
 *
 * Every page the source serves is unique (a hash of its source address per word),
 * so a page installed at the wrong place, twice, stale, or as zeros is caught by
 * comparing with the source image. Cases that must leave a thread blocked in a
 * fault (the source failing, the serving daemon killed) run the blocked part in a
 * child process that the test kills at the end.
 */
#include "helpers.h"

#include "memsource.h"
#include "pagestate.h"
#include "uffd.h"

#include "rdmig/log.h"
#include "rdmig/pager.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

#define PG 4096ul
#define MiB (1ul << 20)

/* ---- the page image ---------------------------------------------------- */

static inline uint64_t pat(uint64_t a)
{
	a ^= a >> 33;
	a *= 0xff51afd7ed558ccdull;
	a ^= a >> 33;
	a *= 0xc4ceb9fe1a85ec53ull;
	a ^= a >> 33;
	return a | 1; /* never zero: a zero word is always wrong */
}

/* The source's memory for source addresses [src, src+len). */
static void fill_image(uint8_t *img, uint64_t src, size_t len)
{
	uint64_t *w = (void *)img; /* page aligned */

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pat(src + i * 8);
}

/* Does the page at p hold the image of the source page at src? Without an image. */
static bool page_is(const uint8_t *p, uint64_t src)
{
	const volatile uint64_t *w = (const volatile void *)p;

	for (size_t i = 0; i < PG / 8; i++)
		if (w[i] != pat(src + i * 8))
			return false;
	return true;
}

static bool page_is_zero(const uint8_t *p)
{
	const volatile uint64_t *w = (const volatile void *)p;

	for (size_t i = 0; i < PG / 8; i++)
		if (w[i])
			return false;
	return true;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t ns_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- events the loop reports ------------------------------------------- */

struct evlog {
	pthread_mutex_t mu;
	int n;
	struct rdmig_pager_event ev[64];
};

static void evlog_cb(void *arg, const struct rdmig_pager_event *ev)
{
	struct evlog *e = arg;

	pthread_mutex_lock(&e->mu);
	if (e->n < 64)
		e->ev[e->n++] = *ev;
	pthread_mutex_unlock(&e->mu);
}

static int evlog_count(struct evlog *e, enum rdmig_pager_event_type type)
{
	int n = 0;

	pthread_mutex_lock(&e->mu);
	for (int i = 0; i < e->n; i++)
		n += e->ev[i].type == type;
	pthread_mutex_unlock(&e->mu);
	return n;
}

static bool evlog_wait(struct evlog *e, enum rdmig_pager_event_type type, double timeout_s)
{
	double end = t_now_s() + timeout_s;

	while (t_now_s() < end) {
		if (evlog_count(e, type))
			return true;
		usleep(2000);
	}
	return false;
}

/* ---- one served region ------------------------------------------------- */

struct env {
	uint8_t *region; /* registered, served by the loop */
	uint8_t *image;  /* what the source serves for it */
	size_t len;
	int uffd;
	struct rdmig_page_source *src;
	struct rdmig_faultloop *loop;
	struct evlog ev;
};

struct env_opts {
	size_t len;
	struct rdmig_memsource_opts ms;
	struct rdmig_prefetcher prefetch;
	unsigned max_inflight;
	int fetch_timeout_ms;
	bool no_start;
	void (*on_held)(void *arg, uint64_t src); /* its arg is the env's evlog */
	unsigned prefetch_quiet_us;
};

static void env_fini(struct env *e)
{
	/* Every uffd reference goes before the memory: munmap of a registered range
	 * waits for its UNMAP event to be read, which a stopped loop never does. */
	rdmig_faultloop_destroy(e->loop);
	rdmig_source_destroy(e->src);
	if (e->uffd >= 0)
		close(e->uffd);
	if (e->region)
		munmap(e->region, e->len);
	if (e->image)
		munmap(e->image, e->len);
	pthread_mutex_destroy(&e->ev.mu);
	memset(e, 0, sizeof(*e));
	e->uffd = -1;
}

static int env_init(struct env *e, const struct env_opts *o)
{
	struct rdmig_faultloop_opts lo = {0};
	int ret;

	memset(e, 0, sizeof(*e));
	pthread_mutex_init(&e->ev.mu, NULL);
	e->uffd = -1;
	e->len = o->len;
	e->region = mmap(NULL, e->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	e->image = mmap(NULL, e->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (e->region == MAP_FAILED || e->image == MAP_FAILED) {
		e->region = e->region == MAP_FAILED ? NULL : e->region;
		e->image = e->image == MAP_FAILED ? NULL : e->image;
		ret = -ENOMEM;
		goto out;
	}
	fill_image(e->image, (uint64_t)(uintptr_t)e->region, e->len);
	ret = rdmig_memsource_create(&o->ms, &e->src);
	if (ret)
		goto out;
	ret = rdmig_memsource_add_region(e->src, (uint64_t)(uintptr_t)e->region, e->image, e->len);
	if (ret)
		goto out;
	e->uffd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (e->uffd < 0) {
		ret = e->uffd;
		goto out;
	}
	lo.uffd = e->uffd;
	lo.source = e->src;
	lo.own_mm = true;
	lo.max_inflight = o->max_inflight;
	lo.fetch_timeout_ms = o->fetch_timeout_ms;
	lo.prefetch = o->prefetch;
	lo.on_event = evlog_cb;
	lo.on_held = o->on_held;
	lo.prefetch_quiet_us = o->prefetch_quiet_us;
	lo.event_arg = &e->ev;
	ret = rdmig_faultloop_create(&lo, &e->loop);
	if (ret)
		goto out;
	ret = rdmig_faultloop_add_range(e->loop, (uint64_t)(uintptr_t)e->region, e->len,
	                                (uint64_t)(uintptr_t)e->region, RDMIG_PAGE_REMOTE, true);
	if (ret)
		goto out;
	if (!o->no_start)
		ret = rdmig_faultloop_start(e->loop);
out:
	if (ret)
		env_fini(e);
	return ret;
}

static struct rdmig_faultloop_stats stats(struct env *e)
{
	struct rdmig_faultloop_stats s;

	rdmig_faultloop_stats(e->loop, &s);
	return s;
}

/* Wait until cond(stats) holds, up to timeout_s. */
#define WAIT_STATS(e, timeout_s, cond)                                                             \
	({                                                                                         \
		double end_ = t_now_s() + (timeout_s);                                             \
		bool ok_ = false;                                                                  \
		while (t_now_s() < end_) {                                                         \
			struct rdmig_faultloop_stats s = stats(e);                                 \
			if (cond) {                                                                \
				ok_ = true;                                                        \
				break;                                                             \
			}                                                                          \
			usleep(1000);                                                              \
		}                                                                                  \
		ok_;                                                                               \
	})

/* In the child: check every page. Exit status: 0 good, 1 a wrong page, 2 a zero. */
static void child_verify(const struct env *e)
{
	for (size_t off = 0; off < e->len; off += PG)
		if (memcmp(e->region + off, e->image + off, PG))
			_exit(page_is_zero(e->region + off) ? 2 : 1);
	_exit(0);
}

/* ---- the wrappers ------------------------------------------------------ */

static void wrappers(void)
{
	struct rdmig_uffd_caps caps;
	uint8_t *m, *buf;
	uint64_t done = 0, ioctls = 0;
	int fd, z;

	T_OK(rdmig_uffd_probe(&caps));
	T_CHECK((caps.features & RDMIG_FAULTLOOP_FEATURES) == RDMIG_FAULTLOOP_FEATURES,
	        "the loop's events are offered (features %#llx)",
	        (unsigned long long)caps.features);
	T_CHECK(caps.features & UFFD_FEATURE_MOVE, "MOVE offered");
	T_CHECK(caps.features & UFFD_FEATURE_WP_ASYNC, "WP_ASYNC offered");
	T_CHECK(rdmig_uffd_open_api(0, 1ull << 60) == -EOPNOTSUPP, "unknown feature refused");

	fd = rdmig_uffd_open_api(0, UFFD_FEATURE_MOVE);
	T_CHECK(fd >= 0, "open: %s", strerror(-fd));
	if (fd < 0)
		return;
	T_CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "non-blocking");
	T_CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "close-on-exec");
	m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill_image(buf, 0x1000, 8 * PG);
	T_OK(rdmig_uffd_register(fd, (uint64_t)(uintptr_t)m, 16 * PG,
	                         RDMIG_UFFD_MISSING | RDMIG_UFFD_WP | RDMIG_UFFD_NOHUGEPAGE,
	                         &ioctls));
	T_CHECK(ioctls & (1ull << _UFFDIO_COPY), "COPY allowed on the range");
	T_CHECK(rdmig_uffd_register(fd, (uint64_t)(uintptr_t)m, 16 * PG, 0, NULL) == -EINVAL,
	        "no mode");

	/* page 2 first, then pages 0..3 in one call: stops at 2 with EEXIST */
	T_OK(rdmig_uffd_copy(fd, (uint64_t)(uintptr_t)m + 2 * PG, buf + 2 * PG, PG, 0, &done));
	T_CHECK(done == PG, "one page copied");
	int r = rdmig_uffd_copy(fd, (uint64_t)(uintptr_t)m, buf, 4 * PG, 0, &done);
	T_CHECK(r == -EEXIST && done == 2 * PG,
	        "partial copy continued up to the present page: "
	        "%d done %llu",
	        r, (unsigned long long)done);
	T_CHECK(page_is(m, 0x1000) && page_is(m + PG, 0x1000 + PG), "copied pages");
	T_CHECK(rdmig_uffd_policy(fd, (uint64_t)(uintptr_t)m, PG, -EEXIST) == RDMIG_UFFD_DONE,
	        "EEXIST -> woken, done");
	T_CHECK(rdmig_uffd_policy(fd, 0, PG, -EAGAIN) == RDMIG_UFFD_RETRY, "EAGAIN -> retry");
	T_CHECK(rdmig_uffd_policy(fd, 0, PG, -ESRCH) == RDMIG_UFFD_MM_GONE, "ESRCH -> gone");
	T_CHECK(rdmig_uffd_policy(fd, 0, PG, -ENOENT) == RDMIG_UFFD_RANGE_GONE, "ENOENT");

	T_OK(rdmig_uffd_zeropage(fd, (uint64_t)(uintptr_t)m + 4 * PG, 2 * PG, 0, &done));
	T_CHECK(done == 2 * PG && page_is_zero(m + 4 * PG) && page_is_zero(m + 5 * PG), "zeropage");
	T_CHECK(rdmig_uffd_zeropage(fd, (uint64_t)(uintptr_t)m + 4 * PG, PG, 0, NULL) == -EEXIST,
	        "zeropage on a present page");

	/* move a page of buf into the missing page 8 */
	T_OK(rdmig_uffd_move(fd, (uint64_t)(uintptr_t)m + 8 * PG, (uint64_t)(uintptr_t)buf + 6 * PG,
	                     PG, 0, &done));
	T_CHECK(page_is(m + 8 * PG, 0x1000 + 6 * PG), "moved page");
	T_CHECK(page_is_zero(buf + 6 * PG), "source of the move is a hole now");

	T_OK(rdmig_uffd_writeprotect(fd, (uint64_t)(uintptr_t)m, PG, true, 0));
	T_OK(rdmig_uffd_writeprotect(fd, (uint64_t)(uintptr_t)m, PG, false, 0));
	T_OK(rdmig_uffd_wake(fd, (uint64_t)(uintptr_t)m, 16 * PG));
	T_OK(rdmig_uffd_alive(fd, (uint64_t)(uintptr_t)m + 12 * PG));
	struct uffd_msg msg[4];
	T_CHECK(rdmig_uffd_read(fd, msg, 4) == 0, "no messages");
	T_OK(rdmig_uffd_unregister(fd, (uint64_t)(uintptr_t)m, 16 * PG));
	T_CHECK(page_is_zero(m + 12 * PG), "unregistered: a plain zero page");
	T_CHECK(rdmig_uffd_copy(fd, (uint64_t)(uintptr_t)m + 13 * PG, buf, PG, 0, NULL) == -ENOENT,
	        "copy outside registered ranges");
	close(fd);

	/* Why the pager's uffd is never USER_MODE_ONLY: kernel-mode faults (a read(2)
	 * into a missing page) are not sent to the handler, they fail. */
	fd = rdmig_uffd_open(RDMIG_UFFD_USER_ONLY);
	if (fd >= 0) {
		T_OK(rdmig_uffd_api(fd, 0, NULL));
		T_OK(rdmig_uffd_register(fd, (uint64_t)(uintptr_t)m, 16 * PG, RDMIG_UFFD_MISSING,
		                         NULL));
		z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
		ssize_t n = read(z, m + 15 * PG, PG);
		T_CHECK(n < 0 && errno == EFAULT,
		        "kernel fact: USER_MODE_ONLY turns a syscall's fault into EFAULT (got %zd)",
		        n);
		close(z);
		close(fd);
	}
	munmap(m, 16 * PG);
	munmap(buf, 8 * PG);
}

/* ---- touch orders ------------------------------------------------------ */

enum order { SEQ, STRIDED, RANDOM, ZIPF, NORDERS };
static const char *const order_names[] = {"sequential", "strided", "random", "zipfian"};

/* The page indices touched, in order: a permutation of all pages, except zipfian
 * (as many touches, drawn with s = 0.99 over a shuffled ranking: most repeat). */
static uint32_t *make_order(enum order o, uint32_t n)
{
	uint32_t *v = malloc(n * sizeof(*v));

	if (!v)
		return NULL;
	for (uint32_t i = 0; i < n; i++)
		v[i] = o == STRIDED ? (uint32_t)(((uint64_t)i * 17) % n) : i; /* n: power of 2 */
	if (o == RANDOM || o == ZIPF)
		for (uint32_t i = n - 1; i > 0; i--) {
			uint32_t j = (uint32_t)(rnd() % (i + 1)), t = v[i];
			v[i] = v[j];
			v[j] = t;
		}
	if (o == ZIPF) {
		double *cdf = malloc(n * sizeof(*cdf)), sum = 0;
		uint32_t *rank = v;

		v = malloc(n * sizeof(*v));
		if (!cdf || !v) {
			free(cdf);
			free(v);
			free(rank);
			return NULL;
		}
		for (uint32_t k = 0; k < n; k++)
			cdf[k] = (sum += 1.0 / pow((double)k + 1, 0.99));
		for (uint32_t i = 0; i < n; i++) {
			double u = (double)(rnd() >> 11) / 9007199254740992.0 * sum;
			uint32_t lo = 0, hi = n - 1;

			while (lo < hi) {
				uint32_t mid = (lo + hi) / 2;
				if (cdf[mid] < u)
					lo = mid + 1;
				else
					hi = mid;
			}
			v[i] = rank[lo];
		}
		free(cdf);
		free(rank);
	}
	return v;
}

struct toucher {
	pthread_t th;
	struct env *e;
	const uint32_t *order;
	uint32_t n, first, step;
	uint64_t bad, zero;
	uint64_t *lat_ns; /* optional: per-touch latency */
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	for (uint32_t i = t->first, k = 0; i < t->n; i += t->step, k++) {
		const uint8_t *p = t->e->region + (size_t)t->order[i] * PG;
		uint64_t t0 = t->lat_ns ? ns_now() : 0;
		volatile uint64_t first = *(const volatile uint64_t *)(const void *)p;

		(void)first;
		if (t->lat_ns)
			t->lat_ns[k] = ns_now() - t0;
		if (memcmp(p, t->e->image + (size_t)t->order[i] * PG, PG)) {
			t->bad++;
			t->zero += page_is_zero(p);
		}
	}
	return NULL;
}

static void run_order(enum order o, unsigned nthreads, size_t len)
{
	struct env_opts eo = {.len = len};
	struct toucher t[4];
	struct env e;
	uint32_t n = (uint32_t)(len / PG), *order;
	uint64_t bad = 0, zero = 0;
	double t0, dt;
	int ret;

	ret = env_init(&e, &eo);
	T_OK(ret);
	if (ret)
		return;
	order = make_order(o, n);
	if (!order) {
		T_CHECK(0, "out of memory");
		env_fini(&e);
		return;
	}
	t0 = t_now_s();
	for (unsigned k = 0; k < nthreads; k++) {
		t[k] =
		    (struct toucher){.e = &e, .order = order, .n = n, .first = k, .step = nthreads};
		pthread_create(&t[k].th, NULL, touch_main, &t[k]);
	}
	for (unsigned k = 0; k < nthreads; k++) {
		pthread_join(t[k].th, NULL);
		bad += t[k].bad;
		zero += t[k].zero;
	}
	dt = t_now_s() - t0;
	struct rdmig_faultloop_stats st = stats(&e);
	T_CHECK(bad == 0, "%s x%u: %llu pages wrong (%llu zero)", order_names[o], nthreads,
	        (unsigned long long)bad, (unsigned long long)zero);
	/* the rest of the region (zipfian leaves most of it) and everything again */
	T_CHECK(!memcmp(e.region, e.image, len), "%s x%u: region differs from the source",
	        order_names[o], nthreads);
	/* the loop counts an install just after the ioctl has woken the reader */
	WAIT_STATS(&e, 1, s.pages_installed == n);
	struct rdmig_faultloop_stats s2 = stats(&e);
	T_CHECK(s2.installed == n && s2.pages_installed == n,
	        "every page installed exactly once: %llu / %llu of %u",
	        (unsigned long long)s2.installed, (unsigned long long)s2.pages_installed, n);
	T_CHECK(s2.dropped == 0 && s2.fetch_errors == 0, "nothing dropped or failed");
	printf("# %-10s x%u %4zu MiB: %6.2f s, %5.1f us/page; faults %llu fetched %llu "
	       "coalesced %llu raced %llu\n",
	       order_names[o], nthreads, len / MiB, dt, dt * 1e6 / (double)n,
	       (unsigned long long)st.faults, (unsigned long long)st.faults_fetched,
	       (unsigned long long)st.faults_coalesced, (unsigned long long)st.faults_raced);
	free(order);
	env_fini(&e);
}

static void touch_orders_1_thread(void)
{
	for (enum order o = SEQ; o < NORDERS; o++)
		run_order(o, 1, 256 * MiB);
}

static void touch_orders_4_threads(void)
{
	for (enum order o = SEQ; o < NORDERS; o++)
		run_order(o, 4, 256 * MiB);
}

/* Installs that meet -EAGAIN (a mapping change under way) are retried later with
 * the page's state at that time: forced here on every third install, with faults
 * on fetched, arena and zero pages, and a discard and a fork in the middle. */
static void install_retries(void)
{
	const size_t len = 32 * MiB;
	struct env_opts eo = {.len = len, .no_start = true};
	struct toucher t[4];
	uint32_t n = (uint32_t)(len / PG), *order;
	uint64_t bad = 0;
	struct env e;
	int status = -1;

	setenv("RDMIG_INJECT_UFFD_EAGAIN", "3", 1);
	T_OK(env_init(&e, &eo));
	unsetenv("RDMIG_INJECT_UFFD_EAGAIN");
	if (!e.loop)
		return;
	T_OK(rdmig_faultloop_add_arena(e.loop, (uint64_t)(uintptr_t)e.region, len / 4, e.image));
	T_OK(rdmig_faultloop_set_state(e.loop, (uint64_t)(uintptr_t)e.region, len / 4,
	                               RDMIG_PAGE_ARENA));
	T_OK(rdmig_faultloop_set_state(e.loop, (uint64_t)(uintptr_t)e.region + len / 4, len / 4,
	                               RDMIG_PAGE_ZERO));
	/* the ZERO quarter reads zero: make the image say so */
	memset(e.image + len / 4, 0, len / 4);
	T_OK(rdmig_faultloop_start(e.loop));
	order = make_order(RANDOM, n);
	for (unsigned k = 0; k < 4; k++) {
		t[k] = (struct toucher){.e = &e, .order = order, .n = n / 2, .first = k, .step = 4};
		pthread_create(&t[k].th, NULL, touch_main, &t[k]);
	}
	for (unsigned k = 0; k < 4; k++) {
		pthread_join(t[k].th, NULL);
		bad += t[k].bad;
	}
	T_CHECK(bad == 0, "%llu pages wrong", (unsigned long long)bad);
	/* discard a stretch, then fork: the child checks everything */
	T_CHECK(madvise(e.region + len / 2, 64 * PG, MADV_DONTNEED) == 0, "madvise");
	memset(e.image + len / 2, 0, 64 * PG);
	pid_t pid = fork();
	if (pid == 0)
		child_verify(&e);
	waitpid(pid, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child (status %#x)", status);
	T_CHECK(!memcmp(e.region, e.image, len), "region");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.retries > 100, "installs retried: %llu", (unsigned long long)s.retries);
	free(order);
	env_fini(&e);
}

/* Many faulting threads are served at once: with every fetch taking 100 ms, four
 * threads touching ten pages each take about a second, not four, because their
 * fetches are in flight together. */
static void concurrent_faults(void)
{
	struct env_opts eo = {.len = 4 * MiB, .ms = {.delay_us = 100000}};
	struct toucher t[4];
	uint32_t order[40];
	unsigned peak = 0;
	uint64_t bad = 0;
	struct env e;
	double t0;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	for (uint32_t i = 0; i < 40; i++)
		order[i] = i * 7;
	t0 = t_now_s();
	for (unsigned k = 0; k < 4; k++) {
		t[k] = (struct toucher){.e = &e, .order = order, .n = 40, .first = k, .step = 4};
		pthread_create(&t[k].th, NULL, touch_main, &t[k]);
	}
	while (stats(&e).pages_installed < 40 && t_now_s() - t0 < 10) {
		unsigned o = rdmig_memsource_outstanding(e.src);

		peak = o > peak ? o : peak;
		usleep(5000);
	}
	for (unsigned k = 0; k < 4; k++) {
		pthread_join(t[k].th, NULL);
		bad += t[k].bad;
	}
	T_CHECK(bad == 0, "%llu pages wrong", (unsigned long long)bad);
	T_CHECK(peak >= 3, "fetches in flight together: at most %u", peak);
	printf("# 4 threads x 10 faults, 100 ms per fetch: %.2f s, up to %u fetches in flight\n",
	       t_now_s() - t0, peak);
	env_fini(&e);
}

/* ---- arena, zero pages, prefetch --------------------------------------- */

struct sweep {
	uint64_t cursor;
	_Atomic uint64_t faults_seen;
};

/* A minimal prefetcher: sweep REMOTE pages, then ARENA pages, in address order. */
static int sweep_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct sweep *sw = arg;

	if (rdmig_pagestate_next(ps, RDMIG_PAGE_REMOTE, sw->cursor, addr) == 1 ||
	    rdmig_pagestate_next(ps, RDMIG_PAGE_REMOTE, 0, addr) == 1 ||
	    rdmig_pagestate_next(ps, RDMIG_PAGE_ARENA, 0, addr) == 1) {
		sw->cursor = *addr + PG;
		return 1;
	}
	return 0;
}

static void sweep_fault(void *arg, uint64_t addr)
{
	struct sweep *sw = arg;

	atomic_fetch_add(&sw->faults_seen, 1);
}

static void arena_and_zero(void)
{
	const size_t len = 32 * MiB, q = len / 4;
	struct env_opts eo = {.len = len, .no_start = true};
	struct env e;
	uint64_t base;
	bool ok = true;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	base = (uint64_t)(uintptr_t)e.region;
	/* first quarter pushed to an arena (here: the image itself), second never touched */
	T_OK(rdmig_faultloop_add_arena(e.loop, base, q, e.image));
	T_OK(rdmig_faultloop_set_state(e.loop, base, q, RDMIG_PAGE_ARENA));
	T_OK(rdmig_faultloop_set_state(e.loop, base + q, q, RDMIG_PAGE_ZERO));
	T_CHECK(rdmig_faultloop_set_state(e.loop, base, PG, RDMIG_PAGE_IN_FLIGHT) == -EINVAL,
	        "only the loop starts fetches");
	T_OK(rdmig_faultloop_start(e.loop));
	for (size_t off = 0; off < len; off += PG) {
		bool want_zero = off >= q && off < 2 * q;

		if (want_zero ? !page_is_zero(e.region + off)
		              : memcmp(e.region + off, e.image + off, PG) != 0)
			ok = false;
	}
	T_CHECK(ok, "arena pages equal the source, zero pages are zero, the rest fetched");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(rdmig_memsource_fetches(e.src) == (len - 2 * q) / PG,
	        "fetched only the remote pages: %llu",
	        (unsigned long long)rdmig_memsource_fetches(e.src));
	T_CHECK(s.faults_arena == q / PG && s.faults_zero == q / PG, "arena %llu zero %llu",
	        (unsigned long long)s.faults_arena, (unsigned long long)s.faults_zero);
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 2), "all-local reported");
	env_fini(&e);
}

/* Pushes that land while the loop runs: no fetch for them afterwards. */
static void arena_ready_at_runtime(void)
{
	const size_t len = 8 * MiB;
	struct env_opts eo = {.len = len, .no_start = true};
	struct env e;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	T_OK(rdmig_faultloop_add_arena(e.loop, (uint64_t)(uintptr_t)e.region, len, e.image));
	T_OK(rdmig_faultloop_start(e.loop));
	T_CHECK(!memcmp(e.region, e.image, PG), "first page fetched");
	T_OK(rdmig_faultloop_arena_ready(e.loop, (uint64_t)(uintptr_t)e.region, len / 2));
	T_CHECK(WAIT_STATS(&e, 2, s.pages_arena == len / 2 / PG - 1), "marked ARENA");
	T_CHECK(!memcmp(e.region, e.image, len), "region");
	T_CHECK(rdmig_memsource_fetches(e.src) == len / 2 / PG + 1, "fetches: %llu",
	        (unsigned long long)rdmig_memsource_fetches(e.src));
	env_fini(&e);
}

static _Atomic uint64_t held_calls, held_last;

static uint64_t word_at(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void count_held(void *arg, uint64_t src)
{
	(void)arg;
	atomic_fetch_add(&held_calls, 1);
	atomic_store(&held_last, src);
}

struct one_touch {
	pthread_t th;
	const volatile uint64_t *p;
	uint64_t value;
	_Atomic pid_t tid;
	_Atomic bool done;
};

static void *one_touch_main(void *arg)
{
	struct one_touch *t = arg;

	atomic_store(&t->tid, (pid_t)syscall(SYS_gettid));
	t->value = *t->p;
	atomic_store(&t->done, true);
	return NULL;
}

/* Is t's thread blocked in a userfault (its wchan), within timeout_s? */
static bool waits_in_fault(struct one_touch *t, double timeout_s)
{
	double end = t_now_s() + timeout_s;

	while (t_now_s() < end) {
		char path[64], wchan[64] = "";
		pid_t tid = atomic_load(&t->tid);
		FILE *f;

		snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", (int)tid);
		if (tid && (f = fopen(path, "r"))) {
			if (!fgets(wchan, sizeof(wchan), f))
				wchan[0] = '\0';
			fclose(f);
			if (!strcmp(wchan, "handle_userfault"))
				return true;
		}
		usleep(1000);
	}
	return false;
}

/* HELD pages (the source has not walked them yet): a fault waits, neither
 * fetched nor zero-filled, in the target and in a child forked meanwhile, until
 * the release says which pages hold data (fetched) and which not (zero). */
static void held_until_released(void)
{
	const size_t len = 8 * MiB, half = len / 2, pages = len / PG;
	struct env_opts eo = {.len = len, .no_start = true, .on_held = count_held};
	uint8_t bits[8 * MiB / PG / 8], ones[sizeof(bits)];
	struct one_touch t1 = {0}, t2 = {0};
	struct env e;
	uint64_t base;
	int status = -1;
	bool ok = true;
	pid_t pid;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	base = (uint64_t)(uintptr_t)e.region;
	memset(bits, 0x55, sizeof(bits)); /* even pages hold data, odd ones do not */
	memset(ones, 0xff, sizeof(ones));
	T_OK(rdmig_faultloop_set_state(e.loop, base, len, RDMIG_PAGE_HELD));
	T_OK(rdmig_faultloop_start(e.loop));
	t1.p = (const volatile void *)(e.region + 4 * PG);
	t2.p = (const volatile void *)(e.region + half + 6 * PG);
	pthread_create(&t1.th, NULL, one_touch_main, &t1);
	pthread_create(&t2.th, NULL, one_touch_main, &t2);
	/* This process is its own monitor, unlike a migrated one: fork() holds
	 * glibc's malloc locks until the loop thread reads the fork event, so a loop
	 * thread still serving t1's or t2's fault (a slot table that grows) would
	 * wait on those locks and the fork on it. Fork once both faults are held. */
	T_CHECK(WAIT_STATS(&e, 5, s.faults_held >= 2), "both faults reached the loop");
	usleep(20000); /* and the loop is back in poll() */
	pid = fork();
	if (pid == 0) {
		/* the child's pages wait too, and come out as the parent's */
		for (size_t p = 0; p < pages; p++) {
			bool data = !(p % 2);

			if (data ? memcmp(e.region + p * PG, e.image + p * PG, PG)
			         : !page_is_zero(e.region + p * PG))
				_exit(data && page_is_zero(e.region + p * PG) ? 2 : 1);
		}
		_exit(0);
	}
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	usleep(200000);
	T_CHECK(!atomic_load(&t1.done) && !atomic_load(&t2.done), "faults on held pages wait");
	T_CHECK(rdmig_memsource_fetches(e.src) == 0, "nothing fetched while held");
	T_CHECK(atomic_load(&held_calls) >= 2, "the owner was told (%llu calls)",
	        (unsigned long long)atomic_load(&held_calls));
	T_CHECK(WAIT_STATS(&e, 2, s.pages_held == pages), "all held: %llu",
	        (unsigned long long)stats(&e).pages_held);
	T_CHECK(rdmig_faultloop_release(e.loop, base + 1, 8, bits) == -EINVAL, "unaligned");
	T_CHECK(rdmig_faultloop_release(e.loop, base, 0, bits) == -EINVAL, "empty");

	T_OK(rdmig_faultloop_release(e.loop, base, half / PG, bits));
	pthread_join(t1.th, NULL);
	T_CHECK(t1.value == word_at(e.image + 4 * PG), "released page with data");
	usleep(100000);
	T_CHECK(!atomic_load(&t2.done), "the other half still waits");
	/* released twice: pages no longer held do not change */
	T_OK(rdmig_faultloop_release(e.loop, base, half / PG, ones));
	T_OK(rdmig_faultloop_release(e.loop, base + half, half / PG, bits));
	pthread_join(t2.th, NULL);
	T_CHECK(t2.value == word_at(e.image + half + 6 * PG), "second half");
	for (size_t p = 0; p < pages; p++) {
		bool data = !(p % 2);

		if (data ? memcmp(e.region + p * PG, e.image + p * PG, PG)
		         : !page_is_zero(e.region + p * PG))
			ok = false;
	}
	T_CHECK(ok, "pages with data are the source's, the others zero");
	waitpid(pid, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	        "the child read every page right (status %#x: 1 wrong data, 2 zeros)", status);
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.faults_held >= 2 && s.pages_held == 0, "held faults %llu, held pages %llu",
	        (unsigned long long)s.faults_held, (unsigned long long)s.pages_held);
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 2), "all-local once nothing is held");
	env_fini(&e);
}

/* The source's answer to a held fault (rdmig_faultloop_held_pages): the pages
 * it names that are still HELD go in with its data, or as zero pages; nothing
 * is fetched for them, pages no longer HELD keep what they have, and the
 * part's release afterwards leaves them alone. The answer's data differs from
 * the memory source's on purpose, so it shows where a page came from. */
static void held_pages_answered(void)
{
	const size_t len = 8 * MiB, pages = len / PG;
	struct env_opts eo = {.len = len, .no_start = true, .on_held = count_held};
	static uint8_t answer[8 * PG], other[PG];
	uint8_t ones[8 * MiB / PG / 8];
	struct one_touch t1 = {0};
	struct env e;
	uint64_t base;
	bool ok = true;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	base = (uint64_t)(uintptr_t)e.region;
	memset(ones, 0xff, sizeof(ones));
	for (size_t i = 0; i < sizeof(answer); i++)
		answer[i] = (uint8_t)(0xa0 + i / PG);
	memset(other, 0x5a, sizeof(other));
	T_OK(rdmig_faultloop_set_state(e.loop, base, len, RDMIG_PAGE_HELD));
	T_OK(rdmig_faultloop_start(e.loop));
	T_CHECK(rdmig_faultloop_held_pages(e.loop, base + 1, 1, 0, NULL) == -EINVAL, "unaligned");
	T_CHECK(rdmig_faultloop_held_pages(e.loop, base, 0, 0, NULL) == -EINVAL, "no pages");
	T_CHECK(rdmig_faultloop_held_pages(e.loop, base, 33, 0, NULL) == -EINVAL, "33 pages");
	T_CHECK(rdmig_faultloop_held_pages(e.loop, base, 2, 4, answer) == -EINVAL,
	        "a mask bit past the pages");
	T_CHECK(rdmig_faultloop_held_pages(e.loop, base, 2, 1, NULL) == -EINVAL, "data missing");

	t1.p = (const volatile void *)(e.region + 4 * PG);
	pthread_create(&t1.th, NULL, one_touch_main, &t1);
	T_CHECK(WAIT_STATS(&e, 5, s.faults_held >= 1), "the fault reached the loop");
	/* pages 0-7, data for 2, 4 and 5 (three pages of it, in that order) */
	T_OK(rdmig_faultloop_held_pages(e.loop, base, 8, 0x34, answer));
	pthread_join(t1.th, NULL);
	T_CHECK(t1.value == word_at(answer + PG), "the waiting fault got the answer's page");
	T_CHECK(WAIT_STATS(&e, 2, s.held_pages_in == 8), "8 pages in: %llu",
	        (unsigned long long)stats(&e).held_pages_in);
	T_CHECK(rdmig_memsource_fetches(e.src) == 0, "nothing fetched");
	if (stats(&e).held_pages_in != 8) {
		/* a page still HELD would block this thread's read */
		env_fini(&e);
		return;
	}
	T_CHECK(!memcmp(e.region + 2 * PG, answer, PG) &&
	            !memcmp(e.region + 5 * PG, answer + 2 * PG, PG),
	        "its neighbours with data are in");
	T_CHECK(page_is_zero(e.region + 0 * PG) && page_is_zero(e.region + 7 * PG),
	        "those without read zero");
	/* again, other data: nothing is HELD there any more */
	T_OK(rdmig_faultloop_held_pages(e.loop, base + 4 * PG, 1, 1, other));
	usleep(50000);
	T_CHECK(word_at(e.region + 4 * PG) == word_at(answer + PG) && stats(&e).held_pages_in == 8,
	        "an answer for a page no longer held changes nothing");
	/* the release: the other pages from the source, these as they are */
	T_OK(rdmig_faultloop_release(e.loop, base, pages, ones));
	for (size_t p = 8; p < pages; p++)
		if (memcmp(e.region + p * PG, e.image + p * PG, PG))
			ok = false;
	T_CHECK(ok, "released pages are the source's");
	T_CHECK(!memcmp(e.region + 4 * PG, answer + PG, PG) && page_is_zero(e.region + 7 * PG),
	        "the release left the answered pages alone");
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 5), "all-local once nothing is held");
	env_fini(&e);
}

static void *touch_random_pages(void *arg)
{
	struct toucher *t = arg;

	for (uint32_t i = 0; i < t->n; i++) {
		uint32_t p = t->order[i];

		if (memcmp(t->e->region + (size_t)p * PG, t->e->image + (size_t)p * PG, PG))
			t->bad++;
	}
	return NULL;
}

static void prefetch_all_local(void)
{
	const size_t len = 64 * MiB;
	struct sweep sw = {0};
	struct env_opts eo = {
	    .len = len,
	    .no_start = true,
	    .ms = {.delay_us = 20},
	    .prefetch = {.on_fault = sweep_fault, .next = sweep_next, .arg = &sw},
	};
	struct toucher t = {0};
	struct env e;
	uint32_t n = (uint32_t)(len / PG);

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	/* an eighth in the arena: the prefetcher mixes arena installs with fetches */
	T_OK(rdmig_faultloop_add_arena(e.loop, (uint64_t)(uintptr_t)e.region, len / 8, e.image));
	T_OK(rdmig_faultloop_set_state(e.loop, (uint64_t)(uintptr_t)e.region, len / 8,
	                               RDMIG_PAGE_ARENA));
	t = (struct toucher){.e = &e, .order = make_order(RANDOM, n), .n = 2000};
	T_OK(rdmig_faultloop_start(e.loop));
	pthread_create(&t.th, NULL, touch_random_pages, &t);
	pthread_join(t.th, NULL);
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 20), "all pages arrived");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(t.bad == 0, "%llu demand-touched pages wrong", (unsigned long long)t.bad);
	T_CHECK(!memcmp(e.region, e.image, len), "region equals the source");
	T_CHECK(s.prefetched > 0 && s.pages_installed == n, "prefetched %llu, installed %llu",
	        (unsigned long long)s.prefetched, (unsigned long long)s.pages_installed);
	T_CHECK(atomic_load(&sw.faults_seen) > 0, "the prefetcher saw the faults");
	T_CHECK(s.faults == stats(&e).faults, "no faults after all pages were local");
	printf("# prefetch: %llu demand faults (%llu fetched, %llu coalesced, %llu raced), "
	       "%llu prefetched\n",
	       (unsigned long long)s.faults, (unsigned long long)s.faults_fetched,
	       (unsigned long long)s.faults_coalesced, (unsigned long long)s.faults_raced,
	       (unsigned long long)s.prefetched);
	free((void *)t.order);
	env_fini(&e);
}

/* Hinted pages (what the frozen registers point at) are fetched as the loop
 * starts, before any fault; a fault on one then costs no fetch. Addresses
 * outside the ranges and pages not REMOTE are skipped. */
static void hints_fetched_first(void)
{
	const size_t len = 8 * MiB;
	struct env_opts eo = {.len = len, .no_start = true};
	uint8_t bits[2];
	struct env e;
	uint64_t base;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	base = (uint64_t)(uintptr_t)e.region;
	T_OK(rdmig_faultloop_set_state(e.loop, (uint64_t)(uintptr_t)e.region + 7 * PG, PG,
	                               RDMIG_PAGE_ZERO));
	T_OK(rdmig_faultloop_hint(e.loop, (uint64_t)(uintptr_t)e.region + 5 * PG + 100));
	T_OK(rdmig_faultloop_hint(e.loop, (uint64_t)(uintptr_t)e.region + 9 * PG));
	T_OK(rdmig_faultloop_hint(e.loop, (uint64_t)(uintptr_t)e.region + 7 * PG));
	T_OK(rdmig_faultloop_hint(e.loop, (uint64_t)(uintptr_t)e.region + len + PG));
	T_OK(rdmig_faultloop_hint(e.loop, 0));
	T_OK(rdmig_faultloop_set_state(e.loop, base + 16 * PG, 16 * PG, RDMIG_PAGE_HELD));
	T_OK(rdmig_faultloop_hint(e.loop, base + 20 * PG));
	T_OK(rdmig_faultloop_start(e.loop));
	/* A fault at once, on a page not hinted: the hinted fetches go out before
	 * the loop first reads its uffd (it sleeps until an event, and the
	 * process's first fault must not be what sends them), so they come first
	 * whatever the timing. */
	T_CHECK(((volatile uint8_t *)e.region)[3 * PG + 1] == e.image[3 * PG + 1],
	        "a page not hinted, touched at once: the source's data");
	T_CHECK(rdmig_memsource_fetches(e.src) == 3, "three fetches: %llu",
	        (unsigned long long)rdmig_memsource_fetches(e.src));
	{
		uint64_t f0 = rdmig_memsource_fetched(e.src, 0),
		         f1 = rdmig_memsource_fetched(e.src, 1);

		T_CHECK(((f0 == base + 5 * PG && f1 == base + 9 * PG) ||
		         (f0 == base + 9 * PG && f1 == base + 5 * PG)) &&
		            rdmig_memsource_fetched(e.src, 2) == base + 3 * PG,
		        "the hinted pages asked for before the fault's: %#llx %#llx %#llx",
		        (unsigned long long)f0, (unsigned long long)f1,
		        (unsigned long long)rdmig_memsource_fetched(e.src, 2));
	}
	T_CHECK(rdmig_faultloop_hint(e.loop, (uint64_t)(uintptr_t)e.region) == -EBUSY,
	        "no hints once started");
	T_CHECK(WAIT_STATS(&e, 5, s.installed == 3), "both hinted pages installed untouched: %llu",
	        (unsigned long long)stats(&e).installed);
	T_CHECK(rdmig_memsource_fetches(e.src) == 3, "three fetches: %llu",
	        (unsigned long long)rdmig_memsource_fetches(e.src));
	T_CHECK(!memcmp(e.region + 5 * PG, e.image + 5 * PG, PG) &&
	            !memcmp(e.region + 9 * PG, e.image + 9 * PG, PG),
	        "hinted pages hold the source's data");
	T_CHECK(page_is_zero(e.region + 7 * PG), "a ZERO page hinted stays zero");
	T_CHECK(rdmig_memsource_fetches(e.src) == 3, "no fetch for a hinted page's fault");
	T_CHECK(stats(&e).faults_raced == 0 && stats(&e).faults_zero == 1,
	        "the hinted pages were in place before their touch");
	/* a HELD one: fetched once its part is released, still untouched */
	T_CHECK(stats(&e).installed == 3 && rdmig_memsource_fetches(e.src) == 3,
	        "the held hinted page waits for its release");
	memset(bits, 0xff, sizeof(bits));
	T_OK(rdmig_faultloop_release(e.loop, base + 16 * PG, 16, bits));
	T_CHECK(WAIT_STATS(&e, 5, s.installed == 4), "the held hinted page fetched at its release");
	T_CHECK(rdmig_memsource_fetches(e.src) == 4 && stats(&e).faults == 2,
	        "fetched untouched: %llu fetches, %llu faults",
	        (unsigned long long)rdmig_memsource_fetches(e.src),
	        (unsigned long long)stats(&e).faults);
	T_CHECK(!memcmp(e.region + 20 * PG, e.image + 20 * PG, PG), "with the source's data");
	T_CHECK(rdmig_memsource_fetches(e.src) == 4, "no fetch at its touch");
	env_fini(&e);
}

/* The quiet start: no prefetching until prefetch_quiet_us after the first
 * demand fault, then all of it; and a process that never faults gets its
 * pages anyway (PREFETCH_IDLE_START_MS after the start, not the quiet time). */
static void prefetch_quiet_start(void)
{
	const size_t len = 16 * MiB;
	struct sweep sw = {0};
	struct env_opts eo = {
	    .len = len,
	    .no_start = true,
	    .prefetch = {.on_fault = sweep_fault, .next = sweep_next, .arg = &sw},
	    .prefetch_quiet_us = 1500000,
	};
	struct one_touch t = {0};
	struct env e;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	/* the fault is there before the loop's first turn: no idle start first */
	t.p = (const volatile void *)(e.region + 3 * PG);
	pthread_create(&t.th, NULL, one_touch_main, &t);
	T_CHECK(waits_in_fault(&t, 5), "the toucher waits in its fault");
	T_OK(rdmig_faultloop_start(e.loop));
	pthread_join(t.th, NULL);
	T_CHECK(t.value == word_at(e.image + 3 * PG), "the demand fault was served at once");
	usleep(300000);
	T_CHECK(stats(&e).prefetched == 0, "nothing prefetched during the quiet start (%llu)",
	        (unsigned long long)stats(&e).prefetched);
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 20), "prefetching after it: all local");
	T_CHECK(stats(&e).prefetched == len / PG - 1, "prefetched %llu",
	        (unsigned long long)stats(&e).prefetched);
	T_CHECK(!memcmp(e.region, e.image, len), "region equals the source");
	env_fini(&e);

	/* no fault at all: the idle start, long before the 100 s quiet time */
	sw = (struct sweep){0};
	eo.prefetch_quiet_us = 100000000;
	eo.no_start = false;
	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_ALL_LOCAL, 20), "all local without a fault");
	T_CHECK(stats(&e).faults == 0 && !memcmp(e.region, e.image, len),
	        "the prefetcher brought every page");
	env_fini(&e);
}

/* ---- fork -------------------------------------------------------------- */

static void fork_during_postcopy(void)
{
	struct env_opts eo = {.len = 64 * MiB};
	struct env e;
	int status = -1;
	pid_t pid;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	/* the parent has the first half before the fork, the child none of the rest */
	T_CHECK(!memcmp(e.region, e.image, e.len / 2), "parent's first half");
	pid = fork();
	if (pid == 0)
		child_verify(&e);
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	/* the parent keeps faulting while the child does */
	T_CHECK(!memcmp(e.region + e.len / 2, e.image + e.len / 2, e.len / 4),
	        "parent's third quarter after the fork");
	waitpid(pid, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	        "child read every page correctly (status %#x: 1 wrong data, 2 zeros)", status);
	T_CHECK(!memcmp(e.region, e.image, e.len), "parent's pages");
	T_CHECK(evlog_count(&e.ev, RDMIG_PAGER_CHILD_ADDED) == 1, "child served");
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_CHILD_GONE, 3), "child's exit noticed");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.ev_fork == 1 && s.children == 0, "fork events %llu, children %llu",
	        (unsigned long long)s.ev_fork, (unsigned long long)s.children);
	env_fini(&e);
}

/* Fork a child that reads every page and exits; its wait status (-1: no fork). */
static int fork_and_verify(const struct env *e)
{
	int status = -1;
	pid_t pid = fork();

	if (pid == 0)
		child_verify(e);
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	if (pid > 0)
		waitpid(pid, &status, 0);
	return status;
}

/* What a forked child fetches goes into the parent too (the pages the parent
 * still lacked): the parent then reads them without a fault, and its next child
 * inherits them. A page the parent had before the fork is not fetched again. */
static void fork_child_shares_with_parent(void)
{
	struct env_opts eo = {.len = 8 * MiB};
	struct rdmig_faultloop_stats s;
	struct env e;
	uint64_t n, faults;
	int status;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	n = e.len / PG;
	T_CHECK(word_at(e.region) == word_at(e.image), "parent's first page");
	status = fork_and_verify(&e);
	T_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	        "first child read every page correctly (status %#x)", status);
	s = stats(&e);
	T_CHECK(s.faults_fetched == n && s.shared == n - 1,
	        "every page fetched once (%llu of %llu), all but the first given to the "
	        "parent (%llu)",
	        (unsigned long long)s.faults_fetched, (unsigned long long)n,
	        (unsigned long long)s.shared);
	faults = s.faults;
	T_CHECK(!memcmp(e.region, e.image, e.len), "parent's pages");
	status = fork_and_verify(&e);
	T_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	        "second child read every page correctly (status %#x)", status);
	s = stats(&e);
	T_CHECK(s.faults == faults && s.faults_fetched == n,
	        "neither the parent nor its second child faulted (faults %llu -> %llu)",
	        (unsigned long long)faults, (unsigned long long)s.faults);
	T_CHECK(s.pages_remote == 0 && s.pages_installed == n, "parent's pages all local (%llu)",
	        (unsigned long long)s.pages_installed);
	env_fini(&e);
}

/* A page in flight in the parent at the fork is fetched again for the child. */
static void fork_with_fetch_in_flight(void)
{
	struct env_opts eo = {.len = 4 * MiB, .ms = {.delay_us = 200000}};
	struct one_touch t = {0};
	struct env e;
	int status = -1;
	pid_t pid;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	t.p = (const volatile void *)(e.region + 5 * PG);
	pthread_create(&t.th, NULL, one_touch_main, &t);
	T_CHECK(WAIT_STATS(&e, 2, s.pages_inflight == 1), "fetch in flight");
	rdmig_memsource_set_delay(e.src, 0);
	pid = fork();
	if (pid == 0)
		child_verify(&e);
	waitpid(pid, &status, 0);
	pthread_join(t.th, NULL);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child's pages (status %#x)",
	        status);
	T_CHECK(t.value == pat((uint64_t)(uintptr_t)(e.region + 5 * PG)), "parent's page");
	env_fini(&e);
}

/* ---- madvise(DONTNEED) racing a fetch ---------------------------------- */

static void dontneed_racing_fetch(void)
{
	struct env_opts eo = {.len = 4 * MiB, .ms = {.delay_us = 200000}};
	struct one_touch t = {0};
	struct env e;
	uint8_t *p;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	p = e.region + 7 * PG;
	t.p = (const volatile void *)p;
	pthread_create(&t.th, NULL, one_touch_main, &t);
	T_CHECK(WAIT_STATS(&e, 2, s.pages_inflight == 1), "fetch in flight");
	/* the fetch lands ~200 ms from now, well after the REMOVE is read */
	T_CHECK(madvise(p, PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	pthread_join(t.th, NULL);
	T_CHECK(t.value == 0 || t.value == pat((uint64_t)(uintptr_t)p),
	        "the racing reader saw zero or the page's data, nothing else: %#llx",
	        (unsigned long long)t.value);
	T_CHECK(WAIT_STATS(&e, 2, s.dropped == 1), "the late fetch was dropped");
	T_CHECK(page_is_zero(p), "the discarded page reads zero after the fetch landed");
	T_CHECK(rdmig_pagestate_get(rdmig_faultloop_pagestate(e.loop), (uint64_t)(uintptr_t)p) ==
	            RDMIG_PAGE_INSTALLED,
	        "a zero page installed");
	/* discard an installed page too: it must read zero, not be fetched again */
	T_CHECK(page_is(e.region + 9 * PG, (uint64_t)(uintptr_t)(e.region + 9 * PG)), "page 9");
	T_CHECK(madvise(e.region + 9 * PG, PG, MADV_DONTNEED) == 0, "madvise");
	T_CHECK(page_is_zero(e.region + 9 * PG), "discarded installed page reads zero");
	T_CHECK(page_is(e.region + 8 * PG, (uint64_t)(uintptr_t)(e.region + 8 * PG)),
	        "neighbour unaffected");
	T_CHECK(WAIT_STATS(&e, 1, s.ev_remove == 2 && s.installed == 2),
	        "two remove events, two pages fetched and installed");
	env_fini(&e);
}

struct one_shot {
	uint64_t addr;
	bool given;
};

static int one_shot_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct one_shot *o = arg;

	if (o->given)
		return 0;
	o->given = true;
	*addr = o->addr;
	return 1;
}

static void dontneed_racing_prefetch(void)
{
	struct one_shot os = {0};
	struct env_opts eo = {.len = 4 * MiB,
	                      .ms = {.delay_us = 200000},
	                      .no_start = true,
	                      .prefetch = {.next = one_shot_next, .arg = &os}};
	struct env e;
	uint8_t *p;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	p = e.region + 11 * PG;
	os.addr = (uint64_t)(uintptr_t)p;
	T_OK(rdmig_faultloop_start(e.loop));
	T_CHECK(WAIT_STATS(&e, 2, s.pages_inflight == 1), "prefetch in flight");
	T_CHECK(madvise(p, PG, MADV_DONTNEED) == 0, "madvise");
	T_CHECK(WAIT_STATS(&e, 2, s.dropped == 1), "the late prefetch was dropped");
	T_CHECK(page_is_zero(p), "page reads zero");
	T_CHECK(stats(&e).prefetched == 0, "nothing counted as prefetched");
	env_fini(&e);
}

/* ---- munmap / mremap --------------------------------------------------- */

struct sweep_range {
	uint64_t start, end, cursor;
	_Atomic bool on;
};

static int range_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct sweep_range *r = arg;

	if (!atomic_load(&r->on) ||
	    rdmig_pagestate_next(ps, RDMIG_PAGE_REMOTE, r->cursor, addr) != 1 || *addr >= r->end)
		return 0;
	r->cursor = *addr + PG;
	return 1;
}

static void munmap_during_postcopy(void)
{
	const size_t len = 64 * MiB;
	struct sweep_range sr = {0};
	struct env_opts eo = {.len = len,
	                      .no_start = true,
	                      .ms = {.delay_us = 200000},
	                      .prefetch = {.next = range_next, .arg = &sr}};
	struct env e;
	uint8_t *hole;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	hole = e.region + len / 4;
	/* prefetches in flight inside the range about to go */
	sr.start = sr.cursor = (uint64_t)(uintptr_t)hole;
	sr.end = sr.start + len / 2;
	atomic_store(&sr.on, true);
	T_OK(rdmig_faultloop_start(e.loop));
	T_CHECK(WAIT_STATS(&e, 2, s.pages_inflight >= 8), "prefetches in flight");
	T_CHECK(munmap(hole, len / 2) == 0, "munmap: %s", strerror(errno));
	rdmig_memsource_set_delay(e.src, 0);
	T_CHECK(WAIT_STATS(&e, 3, s.pages_total == len / 2 / PG), "the range is forgotten");
	/* a new mapping in the hole is not ours: no late fetch may land in it */
	uint8_t *fresh = mmap(hole, len / 2, PROT_READ | PROT_WRITE,
	                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	T_CHECK(fresh == hole, "remap the hole");
	T_CHECK(WAIT_STATS(&e, 3, s.inflight == 0), "every late fetch landed");
	bool zero = true;
	for (size_t off = 0; off < len / 2 && fresh == hole; off += PG)
		zero &= page_is_zero(fresh + off);
	T_CHECK(zero, "the new mapping reads zero");
	T_CHECK(!memcmp(e.region, e.image, len / 4), "pages before the hole");
	T_CHECK(!memcmp(e.region + 3 * len / 4, e.image + 3 * len / 4, len / 4),
	        "pages after the hole");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.ev_unmap >= 1 && s.dropped >= 8, "unmap events %llu, dropped %llu",
	        (unsigned long long)s.ev_unmap, (unsigned long long)s.dropped);
	env_fini(&e);
	if (fresh == hole)
		munmap(fresh, len / 2);
}

static void mremap_during_postcopy(void)
{
	const size_t len = 16 * MiB;
	struct sweep_range sr = {0};
	struct env_opts eo = {
	    .len = len, .no_start = true, .prefetch = {.next = range_next, .arg = &sr}};
	uint64_t base, src_mid;
	uint8_t *dst, *mid, *moved, *grown;
	struct env e;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	base = (uint64_t)(uintptr_t)e.region;
	mid = e.region + len / 4;
	src_mid = (uint64_t)(uintptr_t)mid;
	/* prefetches in flight inside the part that moves */
	sr.start = sr.cursor = src_mid + len / 8;
	sr.end = src_mid + len / 4;
	/* somewhere to move to */
	dst = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_OK(rdmig_faultloop_start(e.loop));
	/* some pages of the middle half installed before the move */
	T_CHECK(!memcmp(mid, e.image + len / 4, len / 8), "touched before the move");
	rdmig_memsource_set_delay(e.src, 100000);
	atomic_store(&sr.on, true);
	rdmig_faultloop_wake(e.loop);
	T_CHECK(WAIT_STATS(&e, 2, s.pages_inflight >= 8), "prefetches in flight");
	moved = mremap(mid, len / 2, len / 2, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	rdmig_memsource_set_delay(e.src, 0);
	T_CHECK(moved == dst, "mremap: %s", strerror(errno));
	if (moved != dst) {
		env_fini(&e);
		return;
	}
	/* every moved page holds what was at its old address at the switch */
	T_CHECK(!memcmp(moved, e.image + len / 4, len / 2), "moved pages");
	T_CHECK(rdmig_pagestate_get(rdmig_faultloop_pagestate(e.loop), src_mid) ==
	            RDMIG_PAGE_UNTRACKED,
	        "old place untracked");
	/* grow the last quarter of the region while moving it: the new tail is zero */
	grown = mremap(e.region + 3 * len / 4, len / 4, len / 2, MREMAP_MAYMOVE | MREMAP_FIXED,
	               dst + len);
	T_CHECK(grown == dst + len, "mremap grow: %s", strerror(errno));
	if (grown == dst + len) {
		T_CHECK(!memcmp(grown, e.image + 3 * len / 4, len / 4), "grown range's old pages");
		bool zero = true;
		for (size_t off = len / 4; off < len / 2; off += PG)
			zero &= page_is_zero(grown + off);
		T_CHECK(zero, "grown part reads zero");
	}
	T_CHECK(!memcmp(e.region, e.image, len / 4), "the part that stayed");
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.ev_remap == 2, "remap events %llu", (unsigned long long)s.ev_remap);
	T_CHECK(s.dropped == 0, "no fetch dropped: in-flight ones followed their pages (%llu)",
	        (unsigned long long)s.dropped);
	(void)base;
	env_fini(&e);
	/* the region now lives at dst */
	munmap(dst, 2 * len);
}

/* ---- the source failing ------------------------------------------------- */

/* The first `after` fetches succeed, then every fetch fails: the faulting thread
 * blocks (no zeros), the loop says so, and retry() after a repair finishes the job. */
static void source_fails_then_recovers(void)
{
	const uint32_t after = 100;
	struct env_opts eo = {.len = 8 * MiB};
	struct toucher t;
	uint32_t n = (uint32_t)(eo.len / PG), *order;
	struct env e;

	T_OK(env_init(&e, &eo));
	if (!e.loop)
		return;
	order = make_order(SEQ, n);
	rdmig_memsource_inject(e.src, RDMIG_MEMSOURCE_FAIL, after, -ECONNRESET);
	t = (struct toucher){.e = &e, .order = order, .n = n, .step = 1};
	pthread_create(&t.th, NULL, touch_main, &t);
	T_CHECK(evlog_wait(&e.ev, RDMIG_PAGER_SOURCE_FAILED, 3), "failure reported");
	usleep(1500 * 1000);
	struct rdmig_faultloop_stats s = stats(&e);
	T_CHECK(s.installed == after && s.pages_inflight == 1,
	        "the thread is blocked on page %u: installed %llu, in flight %llu", after,
	        (unsigned long long)s.installed, (unsigned long long)s.pages_inflight);
	T_CHECK(s.source_status == -ECONNRESET, "status %d", s.source_status);
	T_CHECK(t.bad == 0, "no wrong page before the failure");
	/* the owner repairs the source and asks again */
	rdmig_memsource_inject(e.src, RDMIG_MEMSOURCE_HEALTHY, 0, 0);
	T_OK(rdmig_faultloop_retry(e.loop));
	pthread_join(t.th, NULL);
	T_CHECK(t.bad == 0, "%llu pages wrong after recovery", (unsigned long long)t.bad);
	T_CHECK(!memcmp(e.region, e.image, eo.len), "region");
	T_CHECK(evlog_count(&e.ev, RDMIG_PAGER_SOURCE_OK) == 1, "recovery reported");
	free(order);
	env_fini(&e);
}

struct shared_progress {
	_Atomic uint64_t verified, bad, zero;
	_Atomic int failed, stalled, ready;
	_Atomic int status;
	uint64_t region;
	int uffd;
};

static void progress_event(void *arg, const struct rdmig_pager_event *ev)
{
	struct shared_progress *sp = arg;

	if (ev->type == RDMIG_PAGER_SOURCE_FAILED) {
		atomic_store(&sp->status, ev->status);
		atomic_store(&sp->failed, 1);
	}
	if (ev->type == RDMIG_PAGER_SOURCE_STALLED)
		atomic_store(&sp->stalled, 1);
}

/* Child process: serve and touch a region with an injected fault; never returns. */
static void failing_child(struct shared_progress *sp, enum rdmig_memsource_inject mode,
                          uint64_t after)
{
	struct env_opts eo = {.len = 8 * MiB, .no_start = true, .fetch_timeout_ms = 300};
	struct env e;

	if (env_init(&e, &eo))
		_exit(3);
	/* the event callback goes to shared memory the parent reads */
	rdmig_faultloop_destroy(e.loop);
	struct rdmig_faultloop_opts lo = {.uffd = e.uffd,
	                                  .source = e.src,
	                                  .own_mm = true,
	                                  .fetch_timeout_ms = 300,
	                                  .on_event = progress_event,
	                                  .event_arg = sp};
	if (rdmig_faultloop_create(&lo, &e.loop) ||
	    rdmig_faultloop_add_range(e.loop, (uint64_t)(uintptr_t)e.region, e.len,
	                              (uint64_t)(uintptr_t)e.region, RDMIG_PAGE_REMOTE, false) ||
	    rdmig_faultloop_start(e.loop))
		_exit(4);
	rdmig_memsource_inject(e.src, mode, after, -EIO);
	atomic_store(&sp->ready, 1);
	for (size_t off = 0; off < e.len; off += PG) {
		if (memcmp(e.region + off, e.image + off, PG)) {
			atomic_fetch_add(&sp->bad, 1);
			if (page_is_zero(e.region + off))
				atomic_fetch_add(&sp->zero, 1);
		}
		atomic_fetch_add(&sp->verified, 1);
	}
	_exit(0); /* reached only if the faults were not blocked */
}

static void source_fails_faults_block(enum rdmig_memsource_inject mode)
{
	const uint64_t after = 300;
	struct shared_progress *sp;
	int status;
	pid_t pid;

	sp = mmap(NULL, sizeof(*sp), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T_CHECK(sp != MAP_FAILED, "mmap");
	if (sp == MAP_FAILED)
		return;
	pid = fork();
	if (pid == 0)
		failing_child(sp, mode, after);
	double end = t_now_s() + 5;
	while (t_now_s() < end && !(mode == RDMIG_MEMSOURCE_FAIL ? atomic_load(&sp->failed)
	                                                         : atomic_load(&sp->stalled)))
		usleep(2000);
	T_CHECK(mode == RDMIG_MEMSOURCE_FAIL ? atomic_load(&sp->failed) : atomic_load(&sp->stalled),
	        "the loop reported the %s", mode == RDMIG_MEMSOURCE_FAIL ? "failure" : "stall");
	uint64_t v0 = atomic_load(&sp->verified);
	usleep(2000 * 1000);
	uint64_t v1 = atomic_load(&sp->verified);
	T_CHECK(v0 == after && v1 == after,
	        "the faulting thread is blocked at page %llu for 2 s (verified %llu then %llu)",
	        (unsigned long long)after, (unsigned long long)v0, (unsigned long long)v1);
	T_CHECK(atomic_load(&sp->bad) == 0 && atomic_load(&sp->zero) == 0,
	        "no wrong page, no zeros (%llu wrong, %llu zero)",
	        (unsigned long long)atomic_load(&sp->bad),
	        (unsigned long long)atomic_load(&sp->zero));
	if (mode == RDMIG_MEMSOURCE_FAIL)
		T_CHECK(atomic_load(&sp->status) == -EIO, "status %d", atomic_load(&sp->status));
	T_CHECK(waitpid(pid, &status, WNOHANG) == 0, "the child is still there (blocked)");
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	munmap(sp, sizeof(*sp));
}

static void source_fails_faults_block_fail(void)
{
	source_fails_faults_block(RDMIG_MEMSOURCE_FAIL);
}

static void source_stops_answering(void)
{
	source_fails_faults_block(RDMIG_MEMSOURCE_STALL);
}

/* ---- serving another process; the serving daemon killed ---------------- */

/* The target: makes its uffd, maps and registers nothing else, touches its pages
 * once the daemon serves them, counting right, wrong and zero pages. */
static void target_main(struct shared_progress *sp, size_t len, bool keep_uffd)
{
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);

	if (m == MAP_FAILED || fd < 0)
		_exit(3);
	/* The daemon registers the range through the fd; THP is the target's to turn off. */
	if (madvise(m, len, MADV_NOHUGEPAGE))
		_exit(3);
	sp->region = (uint64_t)(uintptr_t)m;
	sp->uffd = fd;
	atomic_store(&sp->ready, 1);
	while (atomic_load(&sp->ready) != 2) /* the daemon has its copy and serves */
		usleep(1000);
	if (!keep_uffd)
		close(fd);
	for (size_t off = 0; off < len; off += PG) {
		if (!page_is(m + off, (uint64_t)(uintptr_t)m + off)) {
			atomic_fetch_add(&sp->bad, 1);
			if (page_is_zero(m + off))
				atomic_fetch_add(&sp->zero, 1);
		}
		atomic_fetch_add(&sp->verified, 1);
	}
	_exit(0);
}

static void daemon_main(struct shared_progress *sp, pid_t target, size_t len)
{
	struct rdmig_memsource_opts mo = {.delay_us = 100};
	struct rdmig_page_source *src;
	struct rdmig_faultloop *loop;
	uint8_t *img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int pidfd, fd;

	while (!atomic_load(&sp->ready))
		usleep(1000);
	/* The destination daemon's way to the restored process's uffd. */
	pidfd = (int)syscall(SYS_pidfd_open, target, 0);
	fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, sp->uffd, 0);
	if (fd < 0 || img == MAP_FAILED)
		_exit(3);
	fill_image(img, sp->region, len);
	struct rdmig_faultloop_opts lo = {.uffd = fd, .own_mm = false};
	if (rdmig_memsource_create(&mo, &src) ||
	    rdmig_memsource_add_region(src, sp->region, img, len))
		_exit(4);
	lo.source = src;
	if (rdmig_faultloop_create(&lo, &loop) ||
	    rdmig_faultloop_add_range(loop, sp->region, len, sp->region, RDMIG_PAGE_REMOTE, true) ||
	    rdmig_faultloop_start(loop))
		_exit(5);
	close(fd);
	atomic_store(&sp->ready, 2);
	for (;;)
		pause();
}

static void daemon_killed(bool keep_uffd)
{
	const size_t len = 64 * MiB;
	struct shared_progress *sp;
	pid_t target, daemon_pid;
	int status;

	sp = mmap(NULL, sizeof(*sp), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T_CHECK(sp != MAP_FAILED, "mmap");
	if (sp == MAP_FAILED)
		return;
	target = fork();
	if (target == 0)
		target_main(sp, len, keep_uffd);
	daemon_pid = fork();
	if (daemon_pid == 0)
		daemon_main(sp, target, len);
	double end = t_now_s() + 10;
	while (t_now_s() < end && atomic_load(&sp->verified) < 1000)
		usleep(1000);
	T_CHECK(atomic_load(&sp->verified) >= 1000, "served another process (%llu pages)",
	        (unsigned long long)atomic_load(&sp->verified));
	kill(daemon_pid, SIGKILL);
	waitpid(daemon_pid, &status, 0);
	uint64_t v0 = atomic_load(&sp->verified);
	usleep(1500 * 1000);
	uint64_t v1 = atomic_load(&sp->verified);
	if (keep_uffd) {
		T_CHECK(v1 == v0 && v1 < len / PG,
		        "with the target's copy of the uffd its faults block (%llu then %llu)",
		        (unsigned long long)v0, (unsigned long long)v1);
		T_CHECK(atomic_load(&sp->bad) == 0, "no wrong page, no zero (%llu)",
		        (unsigned long long)atomic_load(&sp->bad));
		T_CHECK(waitpid(target, &status, WNOHANG) == 0, "the target is blocked");
		kill(target, SIGKILL);
	} else {
		/* Without it the kernel unregisters the ranges when the daemon dies and the
		 * target reads zeros: the kernel fact the "keep a copy" rule is for. */
		T_CHECK(atomic_load(&sp->zero) > 0 &&
		            atomic_load(&sp->zero) == atomic_load(&sp->bad),
		        "kernel fact: without the target's copy it reads zeros (%llu zero pages)",
		        (unsigned long long)atomic_load(&sp->zero));
	}
	waitpid(target, &status, 0);
	munmap(sp, sizeof(*sp));
}

/* This process serves another one's uffd (taken with pidfd_getfd, registered
 * through it) until that process exits, and notices the exit. */
static void foreign_target_exits(void)
{
	const size_t len = 16 * MiB;
	struct rdmig_memsource_opts mo = {0};
	struct rdmig_page_source *src = NULL;
	struct rdmig_faultloop *loop = NULL;
	struct shared_progress *sp;
	struct evlog ev = {.mu = PTHREAD_MUTEX_INITIALIZER};
	uint8_t *img;
	int pidfd = -1, fd = -1, status = -1;
	pid_t target;

	sp = mmap(NULL, sizeof(*sp), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_CHECK(sp != MAP_FAILED && img != MAP_FAILED, "mmap");
	if (sp == MAP_FAILED || img == MAP_FAILED)
		return;
	target = fork();
	if (target == 0)
		target_main(sp, len, true);
	while (!atomic_load(&sp->ready))
		usleep(1000);
	pidfd = (int)syscall(SYS_pidfd_open, target, 0);
	fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, sp->uffd, 0);
	T_CHECK(fd >= 0, "pidfd_getfd: %s", strerror(errno));
	fill_image(img, sp->region, len);
	struct rdmig_faultloop_opts lo = {.uffd = fd, .on_event = evlog_cb, .event_arg = &ev};
	T_OK(rdmig_memsource_create(&mo, &src));
	if (fd >= 0 && src) {
		T_OK(rdmig_memsource_add_region(src, sp->region, img, len));
		lo.source = src;
		T_OK(rdmig_faultloop_create(&lo, &loop));
	}
	if (loop) {
		T_OK(rdmig_faultloop_add_range(loop, sp->region, len, sp->region, RDMIG_PAGE_REMOTE,
		                               true));
		T_OK(rdmig_faultloop_start(loop));
	}
	atomic_store(&sp->ready, 2);
	waitpid(target, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "target status %#x", status);
	T_CHECK(atomic_load(&sp->verified) == len / PG && atomic_load(&sp->bad) == 0,
	        "target read %llu pages, %llu wrong",
	        (unsigned long long)atomic_load(&sp->verified),
	        (unsigned long long)atomic_load(&sp->bad));
	T_CHECK(evlog_wait(&ev, RDMIG_PAGER_ALL_LOCAL, 2), "all local");
	T_CHECK(evlog_wait(&ev, RDMIG_PAGER_TARGET_GONE, 3), "the target's exit noticed");
	rdmig_faultloop_destroy(loop);
	rdmig_source_destroy(src);
	if (fd >= 0)
		close(fd);
	if (pidfd >= 0)
		close(pidfd);
	munmap(img, len);
	munmap(sp, sizeof(*sp));
}

static void daemon_killed_target_keeps_uffd(void)
{
	daemon_killed(true);
}

static void daemon_killed_without_target_copy(void)
{
	daemon_killed(false);
}

/* ---- fault latency with the memory source (the local uffd floor) -------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void print_lat(const char *label, uint64_t *ns, size_t n)
{
	qsort(ns, n, sizeof(*ns), cmp_u64);
	printf("# %-34s n=%zu p50 %6.2f  p90 %6.2f  p99 %7.2f  max %8.2f us\n", label, n,
	       (double)ns[n / 2] / 1e3, (double)ns[n * 9 / 10] / 1e3,
	       (double)ns[n * 99 / 100] / 1e3, (double)ns[n - 1] / 1e3);
}

static void lat_run(const char *label, bool inline_src, bool arena)
{
	const size_t len = 64 * MiB;
	uint32_t n = (uint32_t)(len / PG);
	struct env_opts eo = {
	    .len = len, .no_start = true, .ms = {.inline_completion = inline_src}};
	struct toucher t = {0};
	struct env e;

	if (env_init(&e, &eo)) {
		T_CHECK(0, "env");
		return;
	}
	if (arena) {
		T_OK(
		    rdmig_faultloop_add_arena(e.loop, (uint64_t)(uintptr_t)e.region, len, e.image));
		T_OK(rdmig_faultloop_set_state(e.loop, (uint64_t)(uintptr_t)e.region, len,
		                               RDMIG_PAGE_ARENA));
	}
	T_OK(rdmig_faultloop_start(e.loop));
	t = (struct toucher){.e = &e, .order = make_order(SEQ, n), .n = n, .step = 1};
	t.lat_ns = malloc(n * sizeof(*t.lat_ns));
	touch_main(&t);
	T_CHECK(t.bad == 0, "%s: %llu wrong pages", label, (unsigned long long)t.bad);
	print_lat(label, t.lat_ns, n);
	free(t.lat_ns);
	free((void *)t.order);
	env_fini(&e);
}

static void fault_latency(void)
{
	const size_t len = 64 * MiB;
	uint32_t n = (uint32_t)(len / PG);
	uint64_t *ns = malloc(n * sizeof(*ns));
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	madvise(m, len, MADV_NOHUGEPAGE);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t t0 = ns_now();
		m[(size_t)i * PG] = 1; /* write: a read would map the shared zero page */
		ns[i] = ns_now() - t0;
	}
	print_lat("plain first-touch write (no uffd)", ns, n);
	munmap(m, len);
	free(ns);
	lat_run("uffd, memsource inline (floor)", true, false);
	lat_run("uffd, memsource worker thread", false, false);
	lat_run("uffd, from the arena", false, true);
}

int main(int argc, char **argv)
{
	int fd;

	t_state.only = argc > 1 ? argv[1] : NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (fd < 0) {
		printf("SKIP: userfaultfd with fork/remap/remove/unmap events unavailable: %s "
		       "(EVENT_FORK needs CAP_SYS_PTRACE)\n",
		       strerror(-fd));
		return 77;
	}
	close(fd);
	T_RUN(wrappers);
	T_RUN(touch_orders_1_thread);
	T_RUN(touch_orders_4_threads);
	T_RUN(install_retries);
	T_RUN(concurrent_faults);
	T_RUN(arena_and_zero);
	T_RUN(arena_ready_at_runtime);
	T_RUN(held_until_released);
	T_RUN(held_pages_answered);
	T_RUN(hints_fetched_first);
	T_RUN(prefetch_quiet_start);
	T_RUN(prefetch_all_local);
	T_RUN(fork_during_postcopy);
	T_RUN(fork_with_fetch_in_flight);
	T_RUN(fork_child_shares_with_parent);
	T_RUN(dontneed_racing_fetch);
	T_RUN(dontneed_racing_prefetch);
	T_RUN(munmap_during_postcopy);
	T_RUN(mremap_during_postcopy);
	T_RUN(source_fails_then_recovers);
	T_RUN(source_fails_faults_block_fail);
	T_RUN(source_stops_answering);
	T_RUN(foreign_target_exits);
	T_RUN(daemon_killed_target_keeps_uffd);
	T_RUN(daemon_killed_without_target_copy);
	T_RUN(fault_latency);
	if (t_state.only && !t_state.passed && !t_state.failed) {
		fprintf(stderr, "no case named %s\n", t_state.only);
		return 1;
	}
	return t_finish();
}
