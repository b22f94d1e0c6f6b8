/*
 * The fault loop served over a real transport: the counterpart of test_uffd.c,
 * where the pages come from ANOTHER PROCESS by one-sided READs.
 *
 *   test_pager_tp --transport fabric|verbs [--provider tcp|verbs] [--addr A] [--mb N]
 *                 [--only CASE]
 *
 * A forked server (forked before this process touches any transport) holds the
 * mirror: N MiB (default 256) standing for a target's memory at source addresses
 * [SRC_BASE, SRC_BASE + N MiB), every 8-byte word a hash of its own source address
 * and never zero. For every connection it publishes the mirror as a small table of
 * regions (rdmig_mirror_publish) and keeps it registered until the client says
 * "bye". The client maps a lazy region, serves it with the fault loop over
 * rdmig_tpsource, and checks:
 *
 *   - page contents under every touch order (sequential, strided, random,
 *     zipfian), with 1 and 4 faulting threads, with the prefetcher
 *     (rdmig_prefetch behind the loop's hook) off and on; the loop's counters add
 *     up and no page is installed twice;
 *   - fork during post-copy, plain and with fetches in flight at the fork, the
 *     child checking every page;
 *   - madvise(DONTNEED) racing a prefetch (and a demand fetch) of the same page,
 *     held in flight on purpose, and a storm of discards racing a real sweep;
 *   - munmap and mremap while fetches for the affected pages are in flight;
 *   - the serving side killed midway (a second server, killed with SIGKILL) while
 *     a child process is faulting: its faults block, it never reads a wrong or
 *     zero word, and the loop reports the failure.
 *
 * "In flight on purpose": the loop's source is a gate wrapped around the
 * transport source. It passes everything through, except the completions of the
 * source addresses it is told to hold, which it keeps (the READ has landed in the
 * staging slot, the loop still sees the fetch outstanding) until the case opens it.
 * That turns each race the loop must win into a fixed order of events.
 *
 * Every wait is bounded and a watchdog ends a case that hangs. A transport that
 * cannot start is a failure, never a skip.
 */
#define LOG_SUBSYS "pager_tp"
#include "helpers.h"

#include "uffd.h"

#include "rdmig/log.h"
#include "rdmig/mirror.h"
#include "rdmig/pager.h"
#include "rdmig/prefetch.h"
#include "rdmig/tpsource.h"
#include "rdmig/transport.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

#define PG 4096ul
#define MiB (1ul << 20)
/* Where the mirror's first byte lives in the "target" on the source host. Any
 * page-aligned user address: nothing is mapped there, it is only a name. */
#define SRC_BASE 0x5a0000000000ull
/* The mirror is published as this many regions, so a fetch has to find its own. */
#define NREGIONS 3
/* The server that is killed serves a mirror this size at most. */
#define KILL_MB 64ul

struct server {
	pid_t pid;
	size_t len; /* its mirror */
	char hostport[128];
};

static struct {
	struct rdmig_tp_opts tp;
	const char *addr;
	size_t len; /* the main mirror */
	unsigned case_timeout_s;
	char dir[64], token[96];
	struct server main, victim;
} cfg;

/* ---- the page image ------------------------------------------------------ */

static inline uint64_t pat(uint64_t a)
{
	a ^= a >> 33;
	a *= 0xff51afd7ed558ccdull;
	a ^= a >> 33;
	a *= 0xc4ceb9fe1a85ec53ull;
	a ^= a >> 33;
	return a | 1; /* never zero: a zero word is always wrong */
}

/* 0: the page at p holds the source page src; 1: other data; 2: a zero word in it. */
static int page_check(const uint8_t *p, uint64_t src)
{
	const volatile uint64_t *w = (const volatile void *)p;
	int ret = 0;

	for (size_t i = 0; i < PG / 8; i++) {
		uint64_t v = w[i];

		if (!v)
			return 2;
		if (v != pat(src + i * 8))
			ret = 1;
	}
	return ret;
}

static bool page_is_zero(const uint8_t *p)
{
	const volatile uint64_t *w = (const volatile void *)p;

	for (size_t i = 0; i < PG / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* Pages of [p, p+len) that do not hold source [src, src+len); *zero: of them, with a
 * zero word. */
static uint64_t check_range(const uint8_t *p, uint64_t src, size_t len, uint64_t *zero)
{
	uint64_t bad = 0, z = 0;

	for (size_t off = 0; off < len; off += PG) {
		int r = page_check(p + off, src + off);

		bad += r != 0;
		z += r == 2;
	}
	if (zero)
		*zero = z;
	return bad;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int write_token(const char *path, const char *secret)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, secret, strlen(secret));
	close(fd);
	return n == (ssize_t)strlen(secret) ? 0 : -EIO;
}

/* ---- the server (the mirror's side) -------------------------------------- */

static void srv_session(struct rdmig_conn *c, uint8_t *mem, size_t len)
{
	struct rdmig_mirror_region r[NREGIONS];
	/* uneven pieces: the first ends off any power-of-two boundary */
	size_t cut[NREGIONS + 1] = {0, len / 8 + 3 * PG, len / 2, len};
	struct rdmig_mirror *m = NULL;
	char cmd[64];
	int n;

	n = rdmig_tp_recv(c, cmd, sizeof(cmd) - 1, 60000);
	if (n < 0)
		return;
	cmd[n] = '\0';
	if (strcmp(cmd, "mirror")) {
		pr_warn("server: unknown request '%s'", cmd);
		return;
	}
	for (int i = 0; i < NREGIONS; i++)
		r[i] = (struct rdmig_mirror_region){
		    .id = SRC_BASE + cut[i], .base = mem + cut[i], .len = cut[i + 1] - cut[i]};
	n = rdmig_mirror_publish(c, r, NREGIONS, &m);
	if (n < 0) {
		pr_err("server: publishing the mirror: %s", strerror(-n));
		return;
	}
	/* The client reads at will; our transport serves its READs meanwhile. We only
	 * wait for the end of the session (or the client's death). */
	while ((n = rdmig_tp_recv(c, cmd, sizeof(cmd) - 1, -1)) >= 0) {
		cmd[n] = '\0';
		if (!strcmp(cmd, "bye"))
			break;
	}
	rdmig_mirror_release(m);
}

static void server_main(struct rdmig_listener *l, uint8_t *mem, size_t len)
    __attribute__((noreturn));
static void server_main(struct rdmig_listener *l, uint8_t *mem, size_t len)
{
	for (;;) {
		struct rdmig_conn *c;
		int ret = rdmig_tp_accept(l, -1, &c);

		if (ret < 0) {
			pr_info("accept: %s", strerror(-ret));
			usleep(10000);
			continue;
		}
		srv_session(c, mem, len);
		rdmig_tp_close(c);
	}
}

/*
 * SIGKILL pid and reap it, waiting at most 10 s. A process that outlives SIGKILL
 * is stuck in the kernel (an RDMA teardown, a fault nobody wakes): say where,
 * rather than hang the suite on waitpid until the guest's timeout.
 */
static void kill_reap(pid_t pid)
{
	char path[64], wchan[64] = "?", state[64] = "?";
	double end;
	FILE *f;

	kill(pid, SIGKILL);
	for (end = t_now_s() + 10; t_now_s() < end; usleep(5000))
		if (waitpid(pid, NULL, WNOHANG) != 0)
			return;
	snprintf(path, sizeof(path), "/proc/%d/wchan", (int)pid);
	if ((f = fopen(path, "r"))) {
		if (!fgets(wchan, sizeof(wchan), f))
			strcpy(wchan, "?");
		fclose(f);
	}
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r"))) {
		while (fgets(state, sizeof(state), f) && strncmp(state, "State:", 6))
			;
		state[strcspn(state, "\n")] = 0;
		fclose(f);
	}
	fprintf(stderr,
	        "# pid %d still there 10 s after SIGKILL (%s, waiting in %s): left unreaped\n",
	        (int)pid, state, wchan);
}

/* Fork a server with a mirror of len bytes; its port comes back through a pipe once
 * the mirror is filled and it listens. */
static int start_server(struct server *s, size_t len, const char *tag)
{
	int pfd[2], port = -1;
	pid_t pid;

	if (pipe(pfd) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		struct rdmig_listener *l;
		uint64_t *w;
		char hp[128];
		int ret;

		/* never outlive the test, whatever happens to it */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(pfd[0]);
		rdmig_log_set_tag(tag);
		w = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (w == MAP_FAILED) {
			port = -ENOMEM;
		} else {
			for (size_t i = 0; i < len / 8; i++)
				w[i] = pat(SRC_BASE + i * 8);
			snprintf(hp, sizeof(hp), strchr(cfg.addr, ':') ? "[%s]:0" : "%s:0",
			         cfg.addr);
			ret = rdmig_tp_listen(&cfg.tp, hp, &l);
			port = ret < 0 ? ret : rdmig_tp_local_port(l);
		}
		if (write(pfd[1], &port, sizeof(port)) != sizeof(port) || port < 0)
			_exit(2);
		close(pfd[1]);
		server_main(l, (uint8_t *)w, len);
	}
	close(pfd[1]);
	if (read(pfd[0], &port, sizeof(port)) != sizeof(port))
		port = -EIO;
	close(pfd[0]);
	if (port <= 0) {
		fprintf(stderr, "the %s transport could not serve a mirror on %s: %s\n",
		        cfg.tp.transport, cfg.addr, strerror(port < 0 ? -port : EINVAL));
		kill_reap(pid);
		return port < 0 ? port : -EINVAL;
	}
	s->pid = pid;
	s->len = len;
	snprintf(s->hostport, sizeof(s->hostport), strchr(cfg.addr, ':') ? "[%s]:%d" : "%s:%d",
	         cfg.addr, port);
	return 0;
}

static void stop_server(struct server *s)
{
	if (s->pid > 0) {
		kill_reap(s->pid);
		s->pid = 0;
	}
}

/* ---- the client's session ------------------------------------------------ */

struct sess {
	struct rdmig_conn *c;
	struct rdmig_region *table;
	uint32_t n;
};

static void sess_close(struct sess *s)
{
	if (s->c) {
		(void)rdmig_tp_send(s->c, "bye", 3);
		rdmig_tp_close(s->c);
	}
	free(s->table);
	memset(s, 0, sizeof(*s));
}

/* Connect, ask for the mirror and check its table covers [SRC_BASE, +len). */
static int sess_open(struct sess *s, const struct server *srv, const struct rdmig_tp_opts *tp)
{
	uint64_t next = SRC_BASE;
	int ret;

	memset(s, 0, sizeof(*s));
	ret = rdmig_tp_connect(tp, srv->hostport, 10000, &s->c);
	if (ret < 0)
		return ret;
	ret = rdmig_tp_send(s->c, "mirror", 6);
	if (ret == 0)
		ret = rdmig_mirror_recv_table(s->c, 60000, &s->table, &s->n);
	if (ret < 0)
		goto out_close;
	/* the table as published: in order, contiguous, the whole mirror */
	for (uint32_t i = 0; i < s->n && ret == 0; i++) {
		if (s->table[i].id != next)
			ret = -EBADMSG;
		next += s->table[i].desc.len;
	}
	if (ret == 0 && (s->n != NREGIONS || next != SRC_BASE + srv->len))
		ret = -EBADMSG;
	if (ret == 0)
		return 0;
	fprintf(stderr, "  the mirror's table (%u regions) does not cover %zu MiB\n", s->n,
	        srv->len / MiB);
out_close:
	sess_close(s);
	return ret;
}

/* ---- a gate in front of the transport source ----------------------------- */

#define GATE_MAX RDMIG_MAX_OUTSTANDING

/* Wraps a page source: completions of source addresses in [lo, hi) are held, with
 * their data, until gate_open(). Its event fd is an epoll set of the inner source's
 * fd and its own eventfd, so the loop wakes when the gate opens. */
struct gate {
	struct rdmig_page_source base;
	struct rdmig_page_source *inner; /* not owned */
	int epfd, evfd;
	pthread_mutex_t mu;
	uint64_t lo, hi;
	/* sampling: also hold completions of the source pages whose index from
	 * sample_base is sample_phase modulo sample_stride, at most sample_cap at once,
	 * each until gate_let_go() (0 stride: off) */
	uint64_t sample_base;
	unsigned sample_stride, sample_phase, sample_cap, nsampled;
	struct rdmig_fetch_done held[GATE_MAX];
	bool sampled[GATE_MAX]; /* held[i] was taken by sampling, not by [lo, hi) */
	bool go[GATE_MAX];      /* ... and may go now */
	unsigned nheld;
	_Atomic unsigned held_now, held_ever;
	_Atomic uint64_t eagain; /* fetches the inner source refused for want of room */
};

static struct gate *to_gate(struct rdmig_page_source *s)
{
	return (struct gate *)(void *)s;
}

static int gate_fetch(struct rdmig_page_source *s, uint64_t addr, size_t len, uint64_t ctx)
{
	int ret = rdmig_source_fetch(to_gate(s)->inner, addr, len, ctx);

	if (ret == -EAGAIN)
		atomic_fetch_add(&to_gate(s)->eagain, 1);
	return ret;
}

/* Under g->mu: is a completion of this page-sized fetch one sampling holds? */
static bool gate_samples(const struct gate *g, uint64_t addr)
{
	uint64_t pg;

	if (!g->sample_stride || g->nsampled >= g->sample_cap || addr < g->sample_base)
		return false;
	pg = (addr - g->sample_base) / PG;
	return pg % g->sample_stride == g->sample_phase;
}

static int gate_poll(struct rdmig_page_source *s, struct rdmig_fetch_done *out, int max)
{
	struct gate *g = to_gate(s);
	struct rdmig_fetch_done tmp[64];
	uint64_t v;
	int k = 0;

	if (read(g->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return -errno;
	pthread_mutex_lock(&g->mu);
	/* what the gate no longer holds goes first */
	for (unsigned i = 0; i < g->nheld && k < max;) {
		if (g->sampled[i] ? !g->go[i]
		                  : g->held[i].addr >= g->lo && g->held[i].addr < g->hi) {
			i++;
			continue;
		}
		g->nsampled -= g->sampled[i];
		out[k++] = g->held[i];
		g->nheld--;
		g->held[i] = g->held[g->nheld];
		g->sampled[i] = g->sampled[g->nheld];
		g->go[i] = g->go[g->nheld];
	}
	atomic_store(&g->held_now, g->nheld);
	/* then the inner source, until it has nothing or out is full: its event fd
	 * fires once per batch, so nothing may be left behind in it */
	while (k < max) {
		int want = max - k < 64 ? max - k : 64;
		int n = rdmig_source_poll(g->inner, tmp, want);

		if (n < 0) {
			pthread_mutex_unlock(&g->mu);
			return k ? k : n;
		}
		for (int i = 0; i < n; i++) {
			bool ranged = tmp[i].addr >= g->lo && tmp[i].addr < g->hi;
			bool sample = !ranged && gate_samples(g, tmp[i].addr);

			if ((ranged || sample) && g->nheld < GATE_MAX) {
				g->sampled[g->nheld] = sample;
				g->go[g->nheld] = false;
				g->held[g->nheld++] = tmp[i];
				g->nsampled += sample;
				atomic_fetch_add(&g->held_ever, 1);
			} else {
				out[k++] = tmp[i];
			}
		}
		atomic_store(&g->held_now, g->nheld);
		if (n < want)
			break;
	}
	pthread_mutex_unlock(&g->mu);
	return k;
}

static void gate_release(struct rdmig_page_source *s, const struct rdmig_fetch_done *d)
{
	rdmig_source_release(to_gate(s)->inner, d);
}

static int gate_event_fd(struct rdmig_page_source *s)
{
	return to_gate(s)->epfd;
}

static void gate_destroy(struct rdmig_page_source *s)
{
	struct gate *g = to_gate(s);

	if (!g)
		return;
	if (g->epfd >= 0)
		close(g->epfd);
	if (g->evfd >= 0)
		close(g->evfd);
	pthread_mutex_destroy(&g->mu);
	free(g);
}

static const struct rdmig_page_source_ops gate_ops = {
    .size = sizeof(struct rdmig_page_source_ops),
    .name = "gate",
    .fetch = gate_fetch,
    .poll = gate_poll,
    .release = gate_release,
    .event_fd = gate_event_fd,
    .destroy = gate_destroy,
};

static int gate_create(struct rdmig_page_source *inner, struct gate **out)
{
	struct gate *g = calloc(1, sizeof(*g));
	int ret = -ENOMEM;

	*out = NULL;
	if (!g)
		return ret;
	g->base.ops = &gate_ops;
	g->inner = inner;
	g->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	g->epfd = epoll_create1(EPOLL_CLOEXEC);
	pthread_mutex_init(&g->mu, NULL);
	if (g->evfd < 0 || g->epfd < 0) {
		ret = -errno;
		goto out_destroy;
	}
	struct epoll_event e1 = {.events = EPOLLIN}, e2 = {.events = EPOLLIN};
	if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, rdmig_source_event_fd(inner), &e1) < 0 ||
	    epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->evfd, &e2) < 0) {
		ret = -errno;
		goto out_destroy;
	}
	*out = g;
	return 0;
out_destroy:
	gate_destroy(&g->base);
	return ret;
}

/* Hold the completions of source addresses [lo, hi) from now on. */
static void gate_hold(struct gate *g, uint64_t lo, uint64_t hi)
{
	pthread_mutex_lock(&g->mu);
	g->lo = lo;
	g->hi = hi;
	pthread_mutex_unlock(&g->mu);
}

static void gate_kick(struct gate *g)
{
	uint64_t one = 1;

	if (write(g->evfd, &one, sizeof(one)) < 0)
		pr_warn("gate eventfd: %s", strerror(errno));
}

/* Let everything through, including what was held, and stop sampling. */
static void gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->lo = g->hi = 0;
	g->sample_stride = 0;
	for (unsigned i = 0; i < g->nheld; i++)
		g->go[i] = true;
	pthread_mutex_unlock(&g->mu);
	gate_kick(g);
}

/* Hold, besides any range, the completions of every stride-th page from
 * base + phase pages, at most cap at once: READs that stay in flight, on purpose,
 * among those a real prefetcher issues. */
static void gate_sample(struct gate *g, uint64_t base, unsigned stride, unsigned phase,
                        unsigned cap)
{
	pthread_mutex_lock(&g->mu);
	g->sample_base = base;
	g->sample_stride = stride;
	g->sample_phase = phase;
	g->sample_cap = cap < GATE_MAX ? cap : GATE_MAX;
	pthread_mutex_unlock(&g->mu);
}

/* The source addresses of up to max sampled completions held now and not yet let
 * go (each reported once); the caller acts on them, then calls gate_let_go(). */
static unsigned gate_sampled_held(struct gate *g, uint64_t *addr, unsigned max)
{
	unsigned n = 0;

	pthread_mutex_lock(&g->mu);
	for (unsigned i = 0; i < g->nheld && n < max; i++)
		if (g->sampled[i] && !g->go[i])
			addr[n++] = g->held[i].addr;
	pthread_mutex_unlock(&g->mu);
	return n;
}

/* Let the sampled completions of these source addresses go. */
static void gate_let_go(struct gate *g, const uint64_t *addr, unsigned n)
{
	pthread_mutex_lock(&g->mu);
	for (unsigned i = 0; i < g->nheld; i++)
		for (unsigned j = 0; j < n; j++)
			if (g->sampled[i] && g->held[i].addr == addr[j])
				g->go[i] = true;
	pthread_mutex_unlock(&g->mu);
	gate_kick(g);
}

static unsigned gate_held(struct gate *g)
{
	return atomic_load(&g->held_now);
}

/* ---- events the loop reports --------------------------------------------- */

struct evlog {
	pthread_mutex_t mu;
	int n;
	struct rdmig_pager_event ev[256];
	double at[256];
};

static void evlog_cb(void *arg, const struct rdmig_pager_event *ev)
{
	struct evlog *e = arg;

	pthread_mutex_lock(&e->mu);
	if (e->n < 256) {
		e->at[e->n] = t_now_s();
		e->ev[e->n++] = *ev;
	}
	pthread_mutex_unlock(&e->mu);
}

/* How many events of this type; *first: the first one, when there is one. */
static int evlog_count(struct evlog *e, enum rdmig_pager_event_type type,
                       struct rdmig_pager_event *first, double *at)
{
	int n = 0;

	pthread_mutex_lock(&e->mu);
	for (int i = 0; i < e->n; i++) {
		if (e->ev[i].type != type)
			continue;
		if (!n && first)
			*first = e->ev[i];
		if (!n && at)
			*at = e->at[i];
		n++;
	}
	pthread_mutex_unlock(&e->mu);
	return n;
}

static bool evlog_wait(struct evlog *e, enum rdmig_pager_event_type type, double timeout_s)
{
	double end = t_now_s() + timeout_s;

	do {
		if (evlog_count(e, type, NULL, NULL))
			return true;
		usleep(2000);
	} while (t_now_s() < end);
	return false;
}

/* ---- the prefetch policy behind the loop's hook -------------------------- */

struct pf_adapter {
	struct rdmig_prefetch *p;
	const struct rdmig_pagestate *ps;
	_Atomic uint64_t last_issued; /* the page next() handed out last, 0 before */
};

static bool pf_is_remote(void *arg, uint64_t addr)
{
	const struct pf_adapter *a = arg;

	return rdmig_pagestate_get(a->ps, addr) == RDMIG_PAGE_REMOTE;
}

static void pf_on_fault(void *arg, uint64_t addr)
{
	rdmig_prefetch_on_fault(((struct pf_adapter *)arg)->p, addr);
}

static int pf_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct pf_adapter *a = arg;
	int r;

	a->ps = ps;
	r = rdmig_prefetch_next(a->p, addr, 1);
	if (r == 1)
		atomic_store(&a->last_issued, *addr);
	return r;
}

/* ---- a lazily served region ---------------------------------------------- */

struct lazy {
	uint8_t *base;
	size_t len;
	uint64_t src; /* source address of base */
	struct sess s;
	struct rdmig_page_source *tps;
	struct gate *gate;
	struct pf_adapter pf;
	struct rdmig_faultloop *loop;
	struct evlog ev;
};

struct lazy_opts {
	size_t len;
	uint64_t src_off;               /* offset of the region's first page in the mirror */
	bool prefetch;                  /* rdmig_prefetch behind the hook */
	struct rdmig_prefetcher custom; /* or this one */
	bool gate;                      /* completions pass through a gate */
	bool no_start;
};

static void lazy_close(struct lazy *z)
{
	/* The loop holds the last uffd references: it goes before the memory (munmap of
	 * a registered range waits for its UNMAP event to be read, which a stopped loop
	 * never does), and before its source. */
	rdmig_faultloop_destroy(z->loop);
	rdmig_prefetch_destroy(z->pf.p);
	if (z->gate)
		rdmig_source_destroy(&z->gate->base);
	rdmig_source_destroy(z->tps);
	sess_close(&z->s);
	if (z->base)
		munmap(z->base, z->len);
	pthread_mutex_destroy(&z->ev.mu);
	memset(z, 0, sizeof(*z));
}

static int lazy_open(struct lazy *z, const struct lazy_opts *o)
{
	struct rdmig_faultloop_opts lo = {0};
	struct rdmig_prefetch_range range;
	int uffd, ret;
	void *m;

	memset(z, 0, sizeof(*z));
	pthread_mutex_init(&z->ev.mu, NULL);
	z->len = o->len;
	z->src = SRC_BASE + o->src_off;
	ret = sess_open(&z->s, &cfg.main, &cfg.tp);
	if (ret < 0)
		goto out_close;
	ret = rdmig_tpsource_create(&(struct rdmig_tpsource_opts){.conn = z->s.c,
	                                                          .regions = z->s.table,
	                                                          .nregions = z->s.n},
	                            &z->tps);
	if (ret < 0)
		goto out_close;
	lo.source = z->tps;
	if (o->gate) {
		ret = gate_create(z->tps, &z->gate);
		if (ret < 0)
			goto out_close;
		lo.source = &z->gate->base;
	}
	m = mmap(NULL, z->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	         -1, 0);
	if (m == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	z->base = m;
	if (o->prefetch) {
		range = (struct rdmig_prefetch_range){.start = (uint64_t)(uintptr_t)m,
		                                      .end = (uint64_t)(uintptr_t)m + z->len};
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
	} else {
		lo.prefetch = o->custom;
	}
	uffd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (uffd < 0) {
		ret = uffd;
		goto out_close;
	}
	lo.uffd = uffd;
	lo.own_mm = true;
	/* a fetch the gate holds on purpose is not a stall to report */
	lo.fetch_timeout_ms = o->gate ? 600000 : 0;
	lo.on_event = evlog_cb;
	lo.event_arg = &z->ev;
	ret = rdmig_faultloop_create(&lo, &z->loop);
	close(uffd); /* the loop keeps its own */
	if (ret < 0)
		goto out_close;
	ret = rdmig_faultloop_add_range(z->loop, (uint64_t)(uintptr_t)m, z->len, z->src,
	                                RDMIG_PAGE_REMOTE, true);
	if (ret < 0)
		goto out_close;
	z->pf.ps = rdmig_faultloop_pagestate(z->loop);
	if (!o->no_start)
		ret = rdmig_faultloop_start(z->loop);
	if (ret == 0)
		return 0;
out_close:
	fprintf(stderr, "  setting up a lazy region of %zu MiB over %s: %s\n", o->len / MiB,
	        cfg.main.hostport, strerror(-ret));
	lazy_close(z);
	return ret;
}

static struct rdmig_faultloop_stats stats(struct lazy *z)
{
	struct rdmig_faultloop_stats s;

	rdmig_faultloop_stats(z->loop, &s);
	return s;
}

static uint64_t src_fetches(struct lazy *z, uint64_t *bytes)
{
	uint64_t f, b;

	rdmig_tpsource_stats(z->tps, &f, &b);
	if (bytes)
		*bytes = b;
	return f;
}

/* Wait until cond(s) holds, up to timeout_s. */
#define WAIT_STATS(z, timeout_s, cond)                                                             \
	({                                                                                         \
		double end_ = t_now_s() + (timeout_s);                                             \
		bool ok_ = false;                                                                  \
		for (;;) {                                                                         \
			struct rdmig_faultloop_stats s = stats(z);                                 \
			if (cond) {                                                                \
				ok_ = true;                                                        \
				break;                                                             \
			}                                                                          \
			if (t_now_s() >= end_)                                                     \
				break;                                                             \
			usleep(1000);                                                              \
		}                                                                                  \
		ok_;                                                                               \
	})

static bool wait_held(struct gate *g, unsigned n, double timeout_s)
{
	double end = t_now_s() + timeout_s;

	while (gate_held(g) < n && t_now_s() < end)
		usleep(1000);
	return gate_held(g) >= n;
}

/* Wait for ALL_LOCAL while the loop makes progress: false when it reported nothing
 * and installed nothing for stall_s (or after limit_s in all). */
static bool wait_all_local(struct lazy *z, double stall_s, double limit_s)
{
	double now = t_now_s(), end = now + limit_s, last_change = now;
	uint64_t last = UINT64_MAX;

	while (!evlog_count(&z->ev, RDMIG_PAGER_ALL_LOCAL, NULL, NULL)) {
		struct rdmig_faultloop_stats s = stats(z);
		uint64_t progress = s.installed + s.dropped + s.fetch_errors + s.faults;

		now = t_now_s();
		if (progress != last) {
			last = progress;
			last_change = now;
		}
		if (now - last_change > stall_s || now > end)
			return false;
		usleep(2000);
	}
	return true;
}

/* The counters of a quiet loop add up: every fault was served one way, every
 * install came from one fetch, and the source's READs are the installs plus the
 * dropped ones. */
static void check_accounting(struct lazy *z, const char *what)
{
	struct rdmig_faultloop_stats st;
	uint64_t bytes, f;

	/* an install is counted just after the ioctl woke the reader: let it finish */
	WAIT_STATS(z, 5, s.inflight == 0);
	st = stats(z);
	f = src_fetches(z, &bytes);
	T_CHECK(st.faults == st.faults_fetched + st.faults_coalesced + st.faults_raced +
	                         st.faults_zero + st.faults_arena,
	        "%s: faults %llu != fetched %llu + coalesced %llu + raced %llu + zero %llu", what,
	        (unsigned long long)st.faults, (unsigned long long)st.faults_fetched,
	        (unsigned long long)st.faults_coalesced, (unsigned long long)st.faults_raced,
	        (unsigned long long)st.faults_zero);
	T_CHECK(st.inflight == 0 && st.fetch_errors == 0, "%s: %llu in flight, %llu errors", what,
	        (unsigned long long)st.inflight, (unsigned long long)st.fetch_errors);
	T_CHECK(f == st.installed + st.dropped && bytes == f * PG,
	        "%s: the source READ %llu pages (%llu bytes), the loop installed %llu and "
	        "dropped %llu",
	        what, (unsigned long long)f, (unsigned long long)bytes,
	        (unsigned long long)st.installed, (unsigned long long)st.dropped);
}

/* After a failed check: where the pages of [addr, addr+len) that are not installed
 * are, and what state they are in: a snapshot, taken while the loop may run. */
static void describe_states(struct lazy *z, uint8_t *addr, size_t len)
{
	const struct rdmig_pagestate *ps = rdmig_faultloop_pagestate(z->loop);
	struct rdmig_faultloop_stats s = stats(z);
	unsigned shown = 0;

	for (size_t off = 0; off < len; off += PG) {
		enum rdmig_page_state st = rdmig_pagestate_get(ps, (uint64_t)(uintptr_t)addr + off);

		if (st != RDMIG_PAGE_INSTALLED && shown++ < 8)
			fprintf(stderr, "  page %zu of %zu: %s\n", off / PG, len / PG,
			        rdmig_page_state_name(st));
	}
	fprintf(stderr,
	        "  loop: faults %llu (fetched %llu coalesced %llu zero %llu raced %llu) "
	        "prefetched %llu installed %llu dropped %llu errors %llu retries %llu; pages "
	        "remote %llu in flight %llu installed %llu of %llu; %llu fetches in flight%s\n",
	        (unsigned long long)s.faults, (unsigned long long)s.faults_fetched,
	        (unsigned long long)s.faults_coalesced, (unsigned long long)s.faults_zero,
	        (unsigned long long)s.faults_raced, (unsigned long long)s.prefetched,
	        (unsigned long long)s.installed, (unsigned long long)s.dropped,
	        (unsigned long long)s.fetch_errors, (unsigned long long)s.retries,
	        (unsigned long long)s.pages_remote, (unsigned long long)s.pages_inflight,
	        (unsigned long long)s.pages_installed, (unsigned long long)s.pages_total,
	        (unsigned long long)s.inflight, z->gate ? "" : " (no gate)");
	if (z->gate)
		fprintf(stderr, "  gate: %u held now, %u ever, %llu fetches refused (-EAGAIN)\n",
		        gate_held(z->gate), atomic_load(&z->gate->held_ever),
		        (unsigned long long)atomic_load(&z->gate->eagain));
	if (z->pf.p) {
		struct rdmig_prefetch_stats p;

		rdmig_prefetch_get_stats(z->pf.p, &p);
		fprintf(stderr,
		        "  prefetch policy: %llu pages, %llu settled, %llu issued, done %d\n",
		        (unsigned long long)p.pages, (unsigned long long)p.settled,
		        (unsigned long long)p.issued, rdmig_prefetch_done(z->pf.p));
	}
}

static void no_leaks(void)
{
	struct rdmig_tp_counts k;

	rdmig_tp_counts(&k);
	T_CHECK(k.conns == 0 && k.mrs == 0 && k.listeners == 0,
	        "live transport objects after the case: %ld conns, %ld registrations, %ld "
	        "listeners",
	        k.conns, k.mrs, k.listeners);
}

/* Wait for a child up to timeout_s; kill it if it is still there. Its status, or -1. */
static int wait_child(pid_t pid, double timeout_s)
{
	double end = t_now_s() + timeout_s;
	int status;

	while (t_now_s() < end) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		usleep(5000);
	}
	kill_reap(pid);
	return -1;
}

/* ---- touch orders -------------------------------------------------------- */

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
	const uint8_t *base;
	uint64_t src;
	const uint32_t *order;
	uint32_t n, first, step;
	uint64_t bad, zero;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	for (uint32_t i = t->first; i < t->n; i += t->step) {
		size_t off = (size_t)t->order[i] * PG;
		int r = page_check(t->base + off, t->src + off);

		t->bad += r != 0;
		t->zero += r == 2;
	}
	return NULL;
}

static void run_order(enum order o, unsigned nthreads, bool prefetch)
{
	struct lazy_opts lo = {.len = cfg.main.len, .prefetch = prefetch};
	uint32_t n = (uint32_t)(lo.len / PG), *order;
	struct toucher t[4];
	uint64_t bad = 0, zero = 0;
	double t0, dt, local_s = -1;
	struct lazy z;
	char what[64];

	snprintf(what, sizeof(what), "%s x%u prefetch %s", order_names[o], nthreads,
	         prefetch ? "on" : "off");
	order = make_order(o, n);
	if (!order) {
		T_CHECK(0, "out of memory");
		return;
	}
	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "%s: no lazy region", what);
		free(order);
		return;
	}
	t0 = t_now_s();
	for (unsigned k = 0; k < nthreads; k++) {
		t[k] = (struct toucher){.base = z.base,
		                        .src = z.src,
		                        .order = order,
		                        .n = n,
		                        .first = k,
		                        .step = nthreads};
		pthread_create(&t[k].th, NULL, touch_main, &t[k]);
	}
	for (unsigned k = 0; k < nthreads; k++) {
		pthread_join(t[k].th, NULL);
		bad += t[k].bad;
		zero += t[k].zero;
	}
	dt = t_now_s() - t0;
	struct rdmig_faultloop_stats st = stats(&z);
	T_CHECK(bad == 0, "%s: %llu touched pages wrong (%llu with a zero word)", what,
	        (unsigned long long)bad, (unsigned long long)zero);
	if (prefetch) {
		if (!wait_all_local(&z, 10, 120)) {
			T_CHECK(0, "%s: all pages arrived", what);
			describe_states(&z, z.base, z.len);
		}
		(void)evlog_count(&z.ev, RDMIG_PAGER_ALL_LOCAL, NULL, &local_s);
		local_s -= t0;
	}
	/* the pages not touched (zipfian leaves most), and the touched ones again */
	bad = check_range(z.base, z.src, z.len, &zero);
	T_CHECK(bad == 0, "%s: %llu pages of the region wrong (%llu with a zero word)", what,
	        (unsigned long long)bad, (unsigned long long)zero);
	/* the loop counts an install just after the ioctl has woken the reader */
	WAIT_STATS(&z, 5, s.pages_installed == n && s.inflight == 0);
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.installed == n && s.pages_installed == n,
	        "%s: every page installed exactly once: %llu installs, %llu pages of %u", what,
	        (unsigned long long)s.installed, (unsigned long long)s.pages_installed, n);
	T_CHECK(s.dropped == 0 && s.fetch_errors == 0, "%s: %llu dropped, %llu failed", what,
	        (unsigned long long)s.dropped, (unsigned long long)s.fetch_errors);
	T_CHECK(s.faults_fetched + s.prefetched == s.installed,
	        "%s: installs %llu != demand fetches %llu + prefetches %llu", what,
	        (unsigned long long)s.installed, (unsigned long long)s.faults_fetched,
	        (unsigned long long)s.prefetched);
	if (!prefetch)
		T_CHECK(s.prefetched == 0 && s.faults_fetched == n,
		        "%s: no prefetcher, yet %llu prefetched, %llu demand fetches", what,
		        (unsigned long long)s.prefetched, (unsigned long long)s.faults_fetched);
	check_accounting(&z, what);
	printf("# %-30s %4zu MiB: touched in %6.2f s (%5.1f us/touch)", what, z.len / MiB, dt,
	       dt * 1e6 / (double)n);
	if (prefetch)
		printf(", all local at %6.2f s", local_s);
	printf("; faults %llu: fetched %llu coalesced %llu raced %llu; prefetched %llu\n",
	       (unsigned long long)st.faults, (unsigned long long)st.faults_fetched,
	       (unsigned long long)st.faults_coalesced, (unsigned long long)st.faults_raced,
	       (unsigned long long)st.prefetched);
	lazy_close(&z);
	free(order);
}

/* One case per order, thread count and prefetcher setting: each stays well inside a
 * minute at 256 MiB even when a demand fault costs 200 us. */
#define ORDER_CASE(name, o, nthreads, prefetch)                                                    \
	static void name(void)                                                                     \
	{                                                                                          \
		run_order(o, nthreads, prefetch);                                                  \
		no_leaks();                                                                        \
	}
ORDER_CASE(sequential_1_thread_prefetch_off, SEQ, 1, false)
ORDER_CASE(strided_1_thread_prefetch_off, STRIDED, 1, false)
ORDER_CASE(random_1_thread_prefetch_off, RANDOM, 1, false)
ORDER_CASE(zipfian_1_thread_prefetch_off, ZIPF, 1, false)
ORDER_CASE(sequential_4_threads_prefetch_off, SEQ, 4, false)
ORDER_CASE(strided_4_threads_prefetch_off, STRIDED, 4, false)
ORDER_CASE(random_4_threads_prefetch_off, RANDOM, 4, false)
ORDER_CASE(zipfian_4_threads_prefetch_off, ZIPF, 4, false)
ORDER_CASE(sequential_1_thread_prefetch_on, SEQ, 1, true)
ORDER_CASE(strided_1_thread_prefetch_on, STRIDED, 1, true)
ORDER_CASE(random_1_thread_prefetch_on, RANDOM, 1, true)
ORDER_CASE(zipfian_1_thread_prefetch_on, ZIPF, 1, true)
ORDER_CASE(sequential_4_threads_prefetch_on, SEQ, 4, true)
ORDER_CASE(strided_4_threads_prefetch_on, STRIDED, 4, true)
ORDER_CASE(random_4_threads_prefetch_on, RANDOM, 4, true)
ORDER_CASE(zipfian_4_threads_prefetch_on, ZIPF, 4, true)

/* ---- fork ---------------------------------------------------------------- */

/* fork() for the cases where this process serves its own memory: glibc's fork
 * takes process-wide locks (malloc's arenas, stdio's list, and whatever atfork
 * handlers the libraries registered) before the clone and holds them until it
 * returns, while the kernel holds the clone until this process's own fault
 * loop has read the UFFD_EVENT_FORK; a loop thread that needs one of those
 * locks first never reads it (pager_rxe hung so, in CI: the forking thread
 * in userfaultfd_event_wait_completion, the loop in a futex). The real
 * daemon never forks the process it serves. The raw clone takes no lock; the
 * child only reads memory and _exits. */
static pid_t fork_self_served(void)
{
	return (pid_t)syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0);
}

/* In a forked child: check every page of the region. Exit status: 0 good, 1 a
 * wrong page, 2 a zero word. No malloc, no stdio: other threads held their locks at
 * the fork. */
static void child_verify(const uint8_t *base, uint64_t src, size_t len) __attribute__((noreturn));
static void child_verify(const uint8_t *base, uint64_t src, size_t len)
{
	int worst = 0;

	for (size_t off = 0; off < len; off += PG) {
		int r = page_check(base + off, src + off);

		worst = r > worst ? r : worst;
	}
	_exit(worst);
}

static void fork_during_postcopy(void)
{
	struct lazy_opts lo = {.len = cfg.main.len < 64 * MiB ? cfg.main.len : 64 * MiB};
	uint64_t n = lo.len / PG;
	struct lazy z;
	int status;
	pid_t pid;

	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "no lazy region");
		return;
	}
	/* the parent has the first half before the fork, the child none of the rest */
	T_CHECK(check_range(z.base, z.src, z.len / 2, NULL) == 0, "parent's first half");
	pid = fork_self_served();
	if (pid == 0)
		child_verify(z.base, z.src, z.len);
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	/* the parent keeps faulting while the child does */
	T_CHECK(check_range(z.base + z.len / 2, z.src + z.len / 2, z.len / 4, NULL) == 0,
	        "parent's third quarter, faulted while the child faults");
	status = pid > 0 ? wait_child(pid, 240) : -1;
	T_CHECK(status == 0,
	        "child read every page correctly (status %#x: exit 1 wrong data, "
	        "2 zeros; -1 hung)",
	        status);
	T_CHECK(check_range(z.base, z.src, z.len, NULL) == 0, "parent's pages");
	T_CHECK(evlog_count(&z.ev, RDMIG_PAGER_CHILD_ADDED, NULL, NULL) == 1, "child served");
	T_CHECK(evlog_wait(&z.ev, RDMIG_PAGER_CHILD_GONE, 5), "child's exit noticed");
	WAIT_STATS(&z, 5, s.inflight == 0 && s.children == 0);
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.ev_fork == 1 && s.children == 0, "fork events %llu, children %llu",
	        (unsigned long long)s.ev_fork, (unsigned long long)s.children);
	/* Nothing was in flight at the fork: the child fetched exactly the second half,
	 * and what it fetched before the parent faulted went into the parent too (the
	 * last quarter at least: the parent waits for the child before reading it). */
	T_CHECK(s.installed + s.shared == n + n / 2 && s.shared >= n / 4 && s.shared <= n / 2 &&
	            s.pages_installed == n,
	        "installs %llu + shared into the parent %llu (want %llu: parent %llu + child "
	        "%llu, at least %llu shared), parent's pages %llu",
	        (unsigned long long)s.installed, (unsigned long long)s.shared,
	        (unsigned long long)(n + n / 2), (unsigned long long)n, (unsigned long long)(n / 2),
	        (unsigned long long)(n / 4), (unsigned long long)s.pages_installed);
	check_accounting(&z, "fork");
	lazy_close(&z);
	no_leaks();
}

struct one_touch {
	pthread_t th;
	const volatile uint64_t *p;
	uint64_t value;
	_Atomic bool done;
};

static void *one_touch_main(void *arg)
{
	struct one_touch *t = arg;

	t->value = *t->p;
	atomic_store(&t->done, true);
	return NULL;
}

/* Prefetches and a demand fetch of the second half are in flight (landed, held by the
 * gate) when the process forks: the child must fetch those pages itself, the
 * parent's land in the parent. */
static void fork_with_fetches_in_flight(void)
{
	struct lazy_opts lo = {.len = cfg.main.len < 64 * MiB ? cfg.main.len : 64 * MiB,
	                       .prefetch = true,
	                       .gate = true,
	                       .no_start = true};
	struct one_touch t = {0};
	struct lazy z;
	int status;
	pid_t pid;

	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "no lazy region");
		return;
	}
	gate_hold(z.gate, z.src + z.len / 2, z.src + z.len);
	T_OK(rdmig_faultloop_start(z.loop));
	/* a demand fault in the held half, then faults that lead the prefetcher there */
	size_t off = 3 * z.len / 4 + 5 * PG;
	t.p = (const volatile void *)(z.base + off);
	pthread_create(&t.th, NULL, one_touch_main, &t);
	T_CHECK(check_range(z.base, z.src, z.len / 8, NULL) == 0, "first eighth");
	T_CHECK(wait_held(z.gate, 16, 30), "fetches of the second half in flight: %u",
	        gate_held(z.gate));
	T_CHECK(!atomic_load(&t.done), "the demand fault in the held half waits");
	unsigned held = gate_held(z.gate);
	pid = fork_self_served();
	if (pid == 0)
		child_verify(z.base, z.src, z.len);
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	/* the child's fetches of the second half must pass */
	gate_open(z.gate);
	status = pid > 0 ? wait_child(pid, 240) : -1;
	T_CHECK(status == 0,
	        "child read every page correctly (status %#x: exit 1 wrong data, "
	        "2 zeros; -1 hung)",
	        status);
	pthread_join(t.th, NULL);
	T_CHECK(t.value == pat(z.src + off), "the parent's waiting thread got its page: %#llx",
	        (unsigned long long)t.value);
	if (!wait_all_local(&z, 10, 120)) {
		T_CHECK(0, "all the parent's pages arrived");
		describe_states(&z, z.base, z.len);
	}
	T_CHECK(check_range(z.base, z.src, z.len, NULL) == 0, "parent's pages");
	T_CHECK(evlog_wait(&z.ev, RDMIG_PAGER_CHILD_GONE, 5), "child's exit noticed");
	WAIT_STATS(&z, 5, s.inflight == 0 && s.children == 0);
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.ev_fork == 1 && s.dropped == 0, "fork events %llu, dropped %llu",
	        (unsigned long long)s.ev_fork, (unsigned long long)s.dropped);
	check_accounting(&z, "fork with fetches in flight");
	printf("# %u fetches held in flight at the fork; installs %llu for %zu parent pages\n",
	       held, (unsigned long long)s.installed, z.len / PG);
	lazy_close(&z);
	no_leaks();
}

/* ---- madvise(DONTNEED) racing fetches ------------------------------------ */

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

/* A prefetch, then a demand fetch, of a page that is discarded while its READ has
 * landed but not been installed: the late data must be dropped, the page must read
 * zero. Then a discarded installed page: zero, not fetched again. */
static void dontneed_racing_prefetch(void)
{
	struct one_shot os = {0};
	struct lazy_opts lo = {.len = 4 * MiB,
	                       .gate = true,
	                       .no_start = true,
	                       .custom = {.next = one_shot_next, .arg = &os}};
	struct one_touch t = {0};
	struct lazy z;
	uint8_t *p, *q;

	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "no lazy region");
		return;
	}
	p = z.base + 11 * PG;
	os.addr = (uint64_t)(uintptr_t)p;
	gate_hold(z.gate, z.src + 11 * PG, z.src + 12 * PG);
	T_OK(rdmig_faultloop_start(z.loop));
	T_CHECK(wait_held(z.gate, 1, 10), "the prefetch's READ landed and is held");
	T_CHECK(WAIT_STATS(&z, 2, s.pages_inflight == 1), "the page is in flight");
	T_CHECK(madvise(p, PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	gate_open(z.gate);
	T_CHECK(WAIT_STATS(&z, 10, s.dropped == 1 && s.inflight == 0),
	        "the late prefetch was dropped");
	T_CHECK(page_is_zero(p), "the discarded page reads zero after its prefetch landed");
	T_CHECK(stats(&z).prefetched == 0, "nothing counted as prefetched");

	/* a demand fetch of page 7, discarded under the waiting thread */
	q = z.base + 7 * PG;
	gate_hold(z.gate, z.src + 7 * PG, z.src + 8 * PG);
	t.p = (const volatile void *)q;
	pthread_create(&t.th, NULL, one_touch_main, &t);
	T_CHECK(wait_held(z.gate, 1, 10), "the demand READ landed and is held");
	T_CHECK(!atomic_load(&t.done), "the faulting thread waits");
	T_CHECK(madvise(q, PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	pthread_join(t.th, NULL);
	T_CHECK(t.value == 0, "the thread waiting on the discarded page read zero: %#llx",
	        (unsigned long long)t.value);
	gate_open(z.gate);
	T_CHECK(WAIT_STATS(&z, 10, s.dropped == 2 && s.inflight == 0),
	        "the late demand fetch was dropped");
	T_CHECK(page_is_zero(q), "the discarded page reads zero after its fetch landed");
	T_CHECK(page_check(z.base + 8 * PG, z.src + 8 * PG) == 0, "neighbour unaffected");

	/* an installed page discarded: zero, and not fetched again */
	T_CHECK(page_check(z.base + 9 * PG, z.src + 9 * PG) == 0, "page 9");
	uint64_t f0 = src_fetches(&z, NULL);
	T_CHECK(madvise(z.base + 9 * PG, PG, MADV_DONTNEED) == 0, "madvise");
	T_CHECK(page_is_zero(z.base + 9 * PG), "discarded installed page reads zero");
	T_CHECK(src_fetches(&z, NULL) == f0, "... and was not fetched again");
	T_CHECK(WAIT_STATS(&z, 2, s.ev_remove == 3), "three remove events");
	check_accounting(&z, "dontneed");
	lazy_close(&z);
	no_leaks();
}

/* Discards racing a real sweep: each step faults a page (which steers the policy)
 * and at once discards the pages the prefetcher handed out last, often while their
 * READs are in flight. That meeting is left to chance only in part: the gate holds
 * the READs of some pages the prefetcher issues (every 32nd from the 16th, which the
 * storm never touches), and each step discards those while they are held, so late
 * fetches are certain to meet discards. A discarded page must read zero at once and
 * forever after, everything else its data. */
static void discard(struct lazy *z, uint8_t *gone, uint32_t k, uint64_t *discards, uint64_t *early)
{
	uint8_t *p = z->base + (size_t)k * PG;

	if (madvise(p, PG, MADV_DONTNEED)) {
		T_CHECK(0, "madvise: %s", strerror(errno));
		return;
	}
	(*discards)++;
	gone[k] = 1;
	*early += !page_is_zero(p);
}

#define STORM_STRIDE 32u
#define STORM_PHASE 16u

/* Discard the pages whose READs the gate holds by sampling, then let those READs
 * land: each must be dropped. Returns how many were discarded. */
static unsigned discard_held(struct lazy *z, uint8_t *gone, uint32_t n, uint64_t *discards,
                             uint64_t *early)
{
	uint64_t addr[16];
	unsigned h = gate_sampled_held(z->gate, addr, 16), done = 0;

	for (unsigned j = 0; j < h; j++) {
		uint32_t k = (uint32_t)((addr[j] - z->src) / PG);

		if (k < n && !gone[k]) {
			discard(z, gone, k, discards, early);
			done++;
		}
	}
	if (h)
		gate_let_go(z->gate, addr, h);
	return done;
}

static void dontneed_storm(void)
{
	struct lazy_opts lo = {.len = cfg.main.len < 64 * MiB ? cfg.main.len : 64 * MiB,
	                       .prefetch = true,
	                       .gate = true};
	uint32_t n = (uint32_t)(lo.len / PG);
	uint64_t bad = 0, early = 0, discards = 0, held_discards = 0;
	uint8_t *gone;
	struct lazy z;

	gone = calloc(n, 1);
	if (!gone || lazy_open(&z, &lo)) {
		free(gone);
		T_CHECK(0, "no lazy region");
		return;
	}
	gate_sample(z.gate, z.src, STORM_STRIDE, STORM_PHASE, 8);
	for (uint32_t i = 0; i < n; i += STORM_STRIDE) {
		uint8_t *p = z.base + (size_t)i * PG;

		bad += gone[i] ? !page_is_zero(p) : page_check(p, z.src + (size_t)i * PG) != 0;
		if (i + 1 < n)
			discard(&z, gone, i + 1, &discards, &early);
		for (int k = 0; k < 3; k++) {
			uint64_t a = atomic_load(&z.pf.last_issued);
			uint32_t pg = (uint32_t)((a - (uint64_t)(uintptr_t)z.base) / PG);

			if (a >= (uint64_t)(uintptr_t)z.base && pg < n && !gone[pg])
				discard(&z, gone, pg, &discards, &early);
		}
		held_discards += discard_held(&z, gone, n, &discards, &early);
	}
	/* the sweep reaches the sampled pages the steps did not: meet one of them, at
	 * least, while it is held */
	for (double end = t_now_s() + 60; !held_discards && t_now_s() < end; usleep(1000))
		held_discards += discard_held(&z, gone, n, &discards, &early);
	gate_open(z.gate);
	T_CHECK(held_discards > 0, "no sampled READ was held to be discarded in flight");
	T_CHECK(bad == 0 && early == 0,
	        "during the storm: %llu pages wrong, %llu discarded pages not zero",
	        (unsigned long long)bad, (unsigned long long)early);
	if (!wait_all_local(&z, 10, 120)) {
		T_CHECK(0, "all pages arrived");
		describe_states(&z, z.base, z.len);
	}
	T_CHECK(WAIT_STATS(&z, 10, s.inflight == 0), "every fetch landed");
	bad = early = 0;
	for (uint32_t k = 0; k < n; k++) {
		const uint8_t *p = z.base + (size_t)k * PG;

		if (gone[k])
			early += !page_is_zero(p);
		else
			bad += page_check(p, z.src + (size_t)k * PG) != 0;
	}
	T_CHECK(bad == 0 && early == 0,
	        "after the sweep: %llu pages wrong, %llu discarded pages not zero",
	        (unsigned long long)bad, (unsigned long long)early);
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.ev_remove == discards, "remove events %llu for %llu discards",
	        (unsigned long long)s.ev_remove, (unsigned long long)discards);
	/* every discard of a held READ is a late fetch the loop had to drop */
	T_CHECK(s.dropped >= held_discards,
	        "%llu late fetches dropped for %llu held READs discarded",
	        (unsigned long long)s.dropped, (unsigned long long)held_discards);
	check_accounting(&z, "storm");
	printf("# %llu discards racing the sweep (%llu of READs held in flight): %llu late fetches "
	       "dropped, %llu prefetched\n",
	       (unsigned long long)discards, (unsigned long long)held_discards,
	       (unsigned long long)s.dropped, (unsigned long long)s.prefetched);
	lazy_close(&z);
	free(gone);
	no_leaks();
}

/* ---- munmap / mremap ----------------------------------------------------- */

struct sweep_range {
	uint64_t end, cursor;
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
	struct sweep_range sr = {0};
	struct lazy_opts lo = {.len = cfg.main.len < 64 * MiB ? cfg.main.len : 64 * MiB,
	                       .gate = true,
	                       .no_start = true,
	                       .custom = {.next = range_next, .arg = &sr}};
	struct lazy z;
	uint8_t *hole, *fresh;
	size_t len;

	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "no lazy region");
		return;
	}
	len = z.len;
	hole = z.base + len / 4;
	/* prefetches in flight (landed, held) inside the range about to go */
	sr.cursor = (uint64_t)(uintptr_t)hole;
	sr.end = sr.cursor + len / 2;
	atomic_store(&sr.on, true);
	gate_hold(z.gate, z.src + len / 4, z.src + 3 * len / 4);
	T_OK(rdmig_faultloop_start(z.loop));
	T_CHECK(wait_held(z.gate, 16, 10), "prefetches in flight: %u", gate_held(z.gate));
	unsigned held = gate_held(z.gate);
	T_CHECK(munmap(hole, len / 2) == 0, "munmap: %s", strerror(errno));
	T_CHECK(WAIT_STATS(&z, 5, s.pages_total == len / 2 / PG), "the range is forgotten");
	/* a new mapping in the hole is not ours: no late fetch may land in it */
	fresh = mmap(hole, len / 2, PROT_READ | PROT_WRITE,
	             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	T_CHECK(fresh == hole, "map the hole again");
	gate_open(z.gate);
	T_CHECK(WAIT_STATS(&z, 10, s.inflight == 0), "every late fetch landed");
	bool zero = true;
	for (size_t off = 0; off < len / 2 && fresh == hole; off += PG)
		zero &= page_is_zero(fresh + off);
	T_CHECK(zero, "the new mapping reads zero");
	T_CHECK(check_range(z.base, z.src, len / 4, NULL) == 0, "pages before the hole");
	T_CHECK(check_range(z.base + 3 * len / 4, z.src + 3 * len / 4, len / 4, NULL) == 0,
	        "pages after the hole");
	WAIT_STATS(&z, 5, s.inflight == 0 && s.pages_installed == len / 2 / PG);
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.ev_unmap >= 1 && s.dropped >= held, "unmap events %llu, dropped %llu of %u held",
	        (unsigned long long)s.ev_unmap, (unsigned long long)s.dropped, held);
	T_CHECK(s.installed == len / 2 / PG && s.pages_installed == len / 2 / PG,
	        "installed %llu, the rest of the region has %llu pages",
	        (unsigned long long)s.installed, (unsigned long long)s.pages_installed);
	if (s.pages_installed != len / 2 / PG) {
		describe_states(&z, z.base, len / 4);
		describe_states(&z, z.base + 3 * len / 4, len / 4);
	}
	check_accounting(&z, "munmap");
	lazy_close(&z);
	if (fresh == hole)
		munmap(fresh, len / 2);
	no_leaks();
}

static void mremap_during_postcopy(void)
{
	const size_t len = 16 * MiB;
	struct sweep_range sr = {0};
	struct lazy_opts lo = {.len = len,
	                       .src_off = cfg.main.len - len, /* the mirror's last region */
	                       .gate = true,
	                       .no_start = true,
	                       .custom = {.next = range_next, .arg = &sr}};
	uint8_t *dst, *mid, *moved, *grown;
	struct lazy z;

	if (lazy_open(&z, &lo)) {
		T_CHECK(0, "no lazy region");
		return;
	}
	mid = z.base + len / 4;
	/* somewhere to move to */
	dst = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_CHECK(dst != MAP_FAILED, "mmap");
	if (dst == MAP_FAILED) {
		lazy_close(&z);
		return;
	}
	T_OK(rdmig_faultloop_start(z.loop));
	/* some pages of the middle half installed before the move */
	T_CHECK(check_range(mid, z.src + len / 4, len / 8, NULL) == 0, "touched before the move");
	/* prefetches in flight (landed, held) inside the part that moves */
	sr.cursor = (uint64_t)(uintptr_t)mid + len / 8;
	sr.end = (uint64_t)(uintptr_t)mid + len / 4;
	gate_hold(z.gate, z.src + len / 4 + len / 8, z.src + len / 2);
	atomic_store(&sr.on, true);
	rdmig_faultloop_wake(z.loop);
	T_CHECK(wait_held(z.gate, 16, 10), "prefetches in flight: %u", gate_held(z.gate));
	moved = mremap(mid, len / 2, len / 2, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	T_CHECK(moved == dst, "mremap: %s", strerror(errno));
	gate_open(z.gate);
	if (moved != dst) {
		lazy_close(&z);
		munmap(dst, 2 * len);
		return;
	}
	/* every moved page holds what was at its old address at the switch */
	T_CHECK(check_range(moved, z.src + len / 4, len / 2, NULL) == 0, "moved pages");
	T_CHECK(rdmig_pagestate_get(rdmig_faultloop_pagestate(z.loop), (uint64_t)(uintptr_t)mid) ==
	            RDMIG_PAGE_UNTRACKED,
	        "old place untracked");
	/* grow the last quarter of the region while moving it: the new tail is zero */
	grown = mremap(z.base + 3 * len / 4, len / 4, len / 2, MREMAP_MAYMOVE | MREMAP_FIXED,
	               dst + len);
	T_CHECK(grown == dst + len, "mremap grow: %s", strerror(errno));
	if (grown == dst + len) {
		T_CHECK(check_range(grown, z.src + 3 * len / 4, len / 4, NULL) == 0,
		        "grown range's old pages");
		bool zero = true;
		for (size_t off = len / 4; off < len / 2; off += PG)
			zero &= page_is_zero(grown + off);
		T_CHECK(zero, "grown part reads zero");
	}
	T_CHECK(check_range(z.base, z.src, len / 4, NULL) == 0, "the part that stayed");
	T_CHECK(WAIT_STATS(&z, 10, s.inflight == 0), "every fetch landed");
	struct rdmig_faultloop_stats s = stats(&z);
	T_CHECK(s.ev_remap == 2, "remap events %llu", (unsigned long long)s.ev_remap);
	T_CHECK(s.dropped == 0, "no fetch dropped: in-flight ones followed their pages (%llu)",
	        (unsigned long long)s.dropped);
	T_CHECK(s.installed == len / PG && s.pages_installed == len / PG,
	        "each page installed once: %llu installs, %llu pages",
	        (unsigned long long)s.installed, (unsigned long long)s.pages_installed);
	check_accounting(&z, "mremap");
	lazy_close(&z);
	/* the region now lives at dst */
	munmap(dst, 2 * len);
	no_leaks();
}

/* ---- the serving side killed midway ------------------------------------- */

struct progress {
	_Atomic uint64_t verified, bad, zero;
	_Atomic int ready; /* 1: region and uffd published; 2: served */
	uint64_t region;
	int uffd;
};

/* The target: a separate process, as a restored one is. It makes its uffd (and keeps
 * it: a dead daemon must mean blocked faults, not zeros), and two threads touch every
 * page at a steady pace, counting. */
struct target_thread {
	pthread_t th;
	struct progress *sp;
	const uint8_t *m;
	size_t from, to;
};

static void *target_touch(void *arg)
{
	struct target_thread *t = arg;

	for (size_t off = t->from; off < t->to; off += PG) {
		int r = page_check(t->m + off, SRC_BASE + off);

		if (r)
			atomic_fetch_add(&t->sp->bad, 1);
		if (r == 2)
			atomic_fetch_add(&t->sp->zero, 1);
		atomic_fetch_add(&t->sp->verified, 1);
		usleep(100);
	}
	return NULL;
}

static void target_main(struct progress *sp, size_t len) __attribute__((noreturn));
static void target_main(struct progress *sp, size_t len)
{
	struct target_thread t[2];
	uint8_t *m;
	int fd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (m == MAP_FAILED || fd < 0 || madvise(m, len, MADV_NOHUGEPAGE))
		_exit(3);
	sp->region = (uint64_t)(uintptr_t)m;
	sp->uffd = fd;
	atomic_store(&sp->ready, 1);
	while (atomic_load(&sp->ready) != 2)
		usleep(1000);
	for (int k = 0; k < 2; k++) {
		t[k] = (struct target_thread){
		    .sp = sp, .m = m, .from = k * len / 2, .to = (k + 1) * len / 2};
		pthread_create(&t[k].th, NULL, target_touch, &t[k]);
	}
	for (int k = 0; k < 2; k++)
		pthread_join(t[k].th, NULL);
	_exit(0); /* reached only if the faults were never blocked */
}

static void server_killed(void)
{
	struct rdmig_tp_opts tp = cfg.tp;
	struct rdmig_page_source *tps = NULL;
	struct rdmig_faultloop *loop = NULL;
	struct evlog ev = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rdmig_pager_event fe = {0};
	const size_t len = cfg.victim.len;
	struct progress *sp;
	struct sess s = {0};
	int pidfd = -1, fd = -1, ret, status;
	double t_kill = 0, t_ev = 0;
	pid_t target;

	if (cfg.victim.pid <= 0) {
		T_CHECK(0, "no server to kill");
		return;
	}
	/* a dead peer must fail the connection within this, whatever the backend notices */
	tp.op_timeout_ms = 3000;
	sp = mmap(NULL, sizeof(*sp), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sp == MAP_FAILED) {
		T_CHECK(0, "mmap");
		return;
	}
	target = fork();
	if (target == 0)
		target_main(sp, len);
	T_CHECK(target > 0, "fork: %s", strerror(errno));
	if (target < 0)
		goto out_unmap;
	ret = sess_open(&s, &cfg.victim, &tp);
	T_OK(ret);
	if (ret == 0)
		T_OK(ret = rdmig_tpsource_create(&(struct rdmig_tpsource_opts){.conn = s.c,
		                                                               .regions = s.table,
		                                                               .nregions = s.n},
		                                 &tps));
	for (double end = t_now_s() + 10; !atomic_load(&sp->ready) && t_now_s() < end;)
		usleep(1000);
	T_CHECK(atomic_load(&sp->ready) == 1, "the target is ready");
	if (ret < 0 || atomic_load(&sp->ready) != 1)
		goto out_kill;
	/* the destination daemon's way to the restored process's uffd */
	pidfd = (int)syscall(SYS_pidfd_open, target, 0);
	fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, sp->uffd, 0);
	T_CHECK(fd >= 0, "pidfd_getfd: %s", strerror(errno));
	if (fd < 0)
		goto out_kill;
	T_OK(ret = rdmig_faultloop_create(&(struct rdmig_faultloop_opts){.uffd = fd,
	                                                                 .source = tps,
	                                                                 .fetch_timeout_ms = 1000,
	                                                                 .on_event = evlog_cb,
	                                                                 .event_arg = &ev},
	                                  &loop));
	if (ret == 0)
		T_OK(ret = rdmig_faultloop_add_range(loop, sp->region, len, SRC_BASE,
		                                     RDMIG_PAGE_REMOTE, true));
	if (ret == 0)
		T_OK(ret = rdmig_faultloop_start(loop));
	if (ret < 0)
		goto out_kill;
	atomic_store(&sp->ready, 2);
	/* midway: the target is faulting at a steady pace when the server dies */
	for (double end = t_now_s() + 30; atomic_load(&sp->verified) < 1000 && t_now_s() < end;)
		usleep(1000);
	uint64_t v_kill = atomic_load(&sp->verified);
	T_CHECK(v_kill >= 1000 && v_kill < len / PG, "served the target before the kill: %llu",
	        (unsigned long long)v_kill);
	t_kill = t_now_s();
	kill(cfg.victim.pid, SIGKILL);
	waitpid(cfg.victim.pid, NULL, 0);
	cfg.victim.pid = 0;
	T_CHECK(evlog_wait(&ev, RDMIG_PAGER_SOURCE_FAILED, 20),
	        "the loop reported the source's failure");
	if (evlog_count(&ev, RDMIG_PAGER_SOURCE_FAILED, &fe, &t_ev))
		T_CHECK(fe.status < 0 && fe.addr >= sp->region && fe.addr < sp->region + len,
		        "the failure names an error and a page of the target: %d (%s) at %#llx",
		        fe.status, strerror(-fe.status), (unsigned long long)fe.addr);
	/* the target's threads are blocked: no progress, nothing wrong, never a zero */
	uint64_t v0 = atomic_load(&sp->verified);
	usleep(3000 * 1000);
	uint64_t v1 = atomic_load(&sp->verified);
	T_CHECK(v1 == v0 && v1 < len / PG,
	        "the target's faults block (verified %llu, 3 s later %llu, of %zu)",
	        (unsigned long long)v0, (unsigned long long)v1, len / PG);
	T_CHECK(atomic_load(&sp->bad) == 0 && atomic_load(&sp->zero) == 0,
	        "no wrong page, no zero word (%llu wrong, %llu with zeros)",
	        (unsigned long long)atomic_load(&sp->bad),
	        (unsigned long long)atomic_load(&sp->zero));
	T_CHECK(waitpid(target, &status, WNOHANG) == 0, "the target is still there, blocked");
	struct rdmig_faultloop_stats st;
	rdmig_faultloop_stats(loop, &st);
	T_CHECK(st.running && st.source_status < 0 && st.fetch_errors >= 1 &&
	            st.pages_inflight >= 1,
	        "the loop runs, source status %d, %llu failed fetches, %llu pages waiting",
	        st.source_status, (unsigned long long)st.fetch_errors,
	        (unsigned long long)st.pages_inflight);
	printf("# server killed after %llu pages: failure reported %.2f s later (%s), "
	       "target blocked at %llu of %zu pages\n",
	       (unsigned long long)v_kill, t_ev - t_kill, strerror(-fe.status),
	       (unsigned long long)v1, len / PG);
out_kill:
	kill(target, SIGKILL);
	waitpid(target, &status, 0);
	rdmig_faultloop_destroy(loop);
	rdmig_source_destroy(tps);
	sess_close(&s);
	if (fd >= 0)
		close(fd);
	if (pidfd >= 0)
		close(pidfd);
out_unmap:
	munmap(sp, sizeof(*sp));
	no_leaks();
}

/* ---- main ---------------------------------------------------------------- */

static const char *current_case = "setup";

static void on_alarm(int sig)
{
	static const char msg[] = "watchdog: the case did not finish in time: ";

	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0 ||
	    write(2, current_case, strlen(current_case)) < 0 || write(2, "\n", 1) < 0)
		_exit(1);
	_exit(1); /* the servers and targets die with us (PDEATHSIG) */
}

#define RUN(fn)                                                                                    \
	do {                                                                                       \
		current_case = #fn;                                                                \
		alarm(cfg.case_timeout_s);                                                         \
		T_RUN(fn);                                                                         \
		alarm(0);                                                                          \
	} while (0)

static void usage(void)
{
	fprintf(stderr,
	        "usage: test_pager_tp --transport fabric|verbs [--provider tcp|verbs] [--addr A]\n"
	        "                     [--mb N (>= 16, a power of two)] [--only CASE]\n"
	        "                     [--case-timeout S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned long mb = 256;
	int fd, ret;

	cfg.tp.transport = NULL;
	cfg.addr = "127.0.0.1";
	cfg.case_timeout_s = 300;
	/* options come in pairs: name, value */
	for (int i = 1; i < argc; i += 2) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v)
			usage();
		if (!strcmp(a, "--transport"))
			cfg.tp.transport = v;
		else if (!strcmp(a, "--provider"))
			cfg.tp.provider = v;
		else if (!strcmp(a, "--addr"))
			cfg.addr = v;
		else if (!strcmp(a, "--mb"))
			mb = strtoul(v, NULL, 10);
		else if (!strcmp(a, "--only"))
			t_state.only = v;
		else if (!strcmp(a, "--case-timeout"))
			cfg.case_timeout_s = (unsigned)strtoul(v, NULL, 10);
		else
			usage();
	}
	/* power of two: the strided order is a permutation only then */
	if (!cfg.tp.transport || mb < 16 || (mb & (mb - 1)) || mb > (1ul << 20))
		usage();
	cfg.len = mb * MiB;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	fd = rdmig_uffd_open_api(0, RDMIG_FAULTLOOP_FEATURES);
	if (fd < 0) {
		printf("SKIP: userfaultfd with fork/remap/remove/unmap events unavailable: %s "
		       "(EVENT_FORK needs CAP_SYS_PTRACE)\n",
		       strerror(-fd));
		return 77;
	}
	close(fd);
	snprintf(cfg.dir, sizeof(cfg.dir), "/tmp/rdmig-pager.XXXXXX");
	if (!mkdtemp(cfg.dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(cfg.token, sizeof(cfg.token), "%s/token", cfg.dir);
	if (write_token(cfg.token, "pager-tp-secret-0123456789abcdef") < 0) {
		perror("token");
		return 1;
	}
	cfg.tp.token_file = cfg.token;
	printf("transport %s provider %s addr %s mirror %lu MiB\n", cfg.tp.transport,
	       cfg.tp.provider ? cfg.tp.provider : "-", cfg.addr, mb);
	/* Both servers are forked before this process touches any transport. */
	alarm(cfg.case_timeout_s);
	ret = start_server(&cfg.main, cfg.len, "server");
	if (ret == 0 && (!t_state.only || !strcmp(t_state.only, "server_killed")))
		ret = start_server(&cfg.victim, cfg.len < KILL_MB * MiB ? cfg.len : KILL_MB * MiB,
		                   "victim");
	alarm(0);
	if (ret < 0) {
		/* no transport here is a failure: CI must run the real path */
		printf("not ok start_server\n0 passed, 1 failed\n");
		stop_server(&cfg.main);
		unlink(cfg.token);
		rmdir(cfg.dir);
		return 1;
	}
	RUN(sequential_1_thread_prefetch_off);
	RUN(strided_1_thread_prefetch_off);
	RUN(random_1_thread_prefetch_off);
	RUN(zipfian_1_thread_prefetch_off);
	RUN(sequential_4_threads_prefetch_off);
	RUN(strided_4_threads_prefetch_off);
	RUN(random_4_threads_prefetch_off);
	RUN(zipfian_4_threads_prefetch_off);
	RUN(sequential_1_thread_prefetch_on);
	RUN(strided_1_thread_prefetch_on);
	RUN(random_1_thread_prefetch_on);
	RUN(zipfian_1_thread_prefetch_on);
	RUN(sequential_4_threads_prefetch_on);
	RUN(strided_4_threads_prefetch_on);
	RUN(random_4_threads_prefetch_on);
	RUN(zipfian_4_threads_prefetch_on);
	RUN(fork_during_postcopy);
	RUN(fork_with_fetches_in_flight);
	RUN(dontneed_racing_prefetch);
	RUN(dontneed_storm);
	RUN(munmap_during_postcopy);
	RUN(mremap_during_postcopy);
	RUN(server_killed);
	/* the teardown is bounded too: the watchdog names it */
	current_case = "teardown";
	alarm(cfg.case_timeout_s);
	stop_server(&cfg.main);
	stop_server(&cfg.victim);
	alarm(0);
	unlink(cfg.token);
	rmdir(cfg.dir);
	if (t_state.only && !t_state.passed && !t_state.failed) {
		fprintf(stderr, "no case named %s\n", t_state.only);
		return 1;
	}
	return t_finish();
}
