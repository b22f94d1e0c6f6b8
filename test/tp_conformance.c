/*
 * The transport conformance suite: one program, run against every backend.
 *
 *   tp_conformance --transport fabric --provider tcp [--addr 127.0.0.1] [--region-mb 1024]
 *                  [--cycles 1000] [--only CASE]
 *
 * The program forks a server (a child process, as the source daemon will be) that
 * listens on an ephemeral port and, for every authenticated connection, follows the
 * commands the client sends as control messages:
 *
 *   "region <bytes>"   map a region with a readable guard page on each side, fill it
 *                      with a known pattern, register it, answer with a REGIONS table
 *   "check <off> <len> <seed>"  verify the region holds the write pattern of <seed>
 *                      there, and that both guard pages are intact; answer "ok"/"bad …"
 *   "guards"           verify only the guard pages
 *   "dereg"            deregister the region, answer "ok"
 *   "stats"            answer "fds=<open fds> conns=<n> mrs=<n> guard_violations=<n>"
 *                      (regions released with a guard page changed)
 *   "bye"              deregister, close, wait for the next connection
 *
 * The client checks what a user of the transport relies on: data read is the data
 * there, data written lands where it was aimed and nowhere else, every bad access
 * fails with an error, an unauthenticated peer gets nothing, a dead peer fails every
 * outstanding operation within a bounded time, and a thousand connections leak
 * nothing. A transport that cannot start is a failure, never a skip.
 */
#define LOG_SUBSYS "conformance"
#include "helpers.h"

#include "auth.h"
#include "rdmig/log.h"
#include "rdmig/proto.h"
#include "rdmig/transport.h"
#include "tp_internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

T_DEFINE_STATE;

#define PAGE 4096u
#define GUARD_BYTE 0xEE
/* 64 slots, each big enough for the largest operation plus an unaligned start */
#define SLOT ((4u << 20) + 4096u)
#define CLIENT_BUF (64u * SLOT)

static struct {
	struct rdmig_tp_opts tp;
	const char *addr;
	size_t region_bytes;
	int cycles;
	char token[64], badtoken[64], hostport[128];
	pid_t server;
} cfg;

/* ---- patterns ------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Byte 'off' of the pattern 'seed': every byte of a region is known. */
static uint8_t pat(uint64_t seed, uint64_t off)
{
	return (uint8_t)(mix64((off >> 3) ^ (seed << 40)) >> (8 * (off & 7)));
}

static void fill(uint8_t *p, uint64_t off, size_t len, uint64_t seed)
{
	size_t i = 0;

	/* word at a time where aligned: a 1 GiB fill under TCG must not take minutes */
	for (; i < len && ((off + i) & 7); i++)
		p[i] = pat(seed, off + i);
	for (; i + 8 <= len; i += 8) {
		uint64_t w = mix64(((off + i) >> 3) ^ (seed << 40));

		memcpy(p + i, &w, 8);
	}
	for (; i < len; i++)
		p[i] = pat(seed, off + i);
}

/* Index of the first byte that differs from the pattern, or -1. */
static long long mismatch(const uint8_t *p, uint64_t off, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != pat(seed, off + i))
			return (long long)i;
	return -1;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

/* ---- the server ---------------------------------------------------------- */

struct srv_region {
	uint8_t *map; /* guard page, region, guard page */
	size_t len;
	struct rdmig_mr *mr;
};

/* Regions released with a guard byte changed: a write landed outside a region. */
static int guard_violations;

static int guards_intact(const struct srv_region *r);

static void srv_release(struct srv_region *r)
{
	if (r->map && !guards_intact(r))
		guard_violations++;
	if (r->mr) {
		if (rdmig_tp_mr_dereg(r->mr) < 0)
			pr_warn("server: deregistration failed");
		r->mr = NULL;
	}
	if (r->map) {
		munmap(r->map, r->len + 2 * PAGE);
		r->map = NULL;
	}
}

static int guards_intact(const struct srv_region *r)
{
	for (size_t i = 0; i < PAGE; i++)
		if (r->map[i] != GUARD_BYTE || r->map[PAGE + r->len + i] != GUARD_BYTE)
			return 0;
	return 1;
}

static int srv_reply(struct rdmig_conn *c, const char *text)
{
	return rdmig_tp_send(c, text, strlen(text));
}

static void srv_region(struct rdmig_conn *c, struct srv_region *r, size_t len)
{
	static uint8_t msg[RDMIG_MSG_MAX];
	struct rdmig_region reg = {.id = 1};
	int n;

	srv_release(r);
	r->map =
	    mmap(NULL, len + 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->map == MAP_FAILED) {
		r->map = NULL;
		srv_reply(c, "bad mmap");
		return;
	}
	r->len = len;
	memset(r->map, GUARD_BYTE, PAGE);
	memset(r->map + PAGE + len, GUARD_BYTE, PAGE);
	fill(r->map + PAGE, 0, len, 1);
	n = rdmig_tp_mr_reg(c, r->map + PAGE, len,
	                    RDMIG_ACCESS_REMOTE_READ | RDMIG_ACCESS_REMOTE_WRITE, &r->mr);
	if (n < 0) {
		char t[64];

		snprintf(t, sizeof(t), "bad register %d", n);
		srv_release(r);
		srv_reply(c, t);
		return;
	}
	rdmig_tp_mr_desc(r->mr, &reg.desc);
	n = rdmig_msg_encode_regions(msg, sizeof(msg), &reg, 1);
	if (n < 0 || rdmig_tp_send(c, msg, (size_t)n) < 0)
		pr_warn("server: cannot send the region table");
}

static void srv_session(struct rdmig_conn *c)
{
	struct srv_region r = {0};
	char cmd[256], out[256];

	for (;;) {
		int n = rdmig_tp_recv(c, cmd, sizeof(cmd) - 1, -1);
		unsigned long long a, b, s;

		if (n < 0)
			break;
		cmd[n] = '\0';
		if (sscanf(cmd, "region %llu", &a) == 1) {
			srv_region(c, &r, (size_t)a);
		} else if (sscanf(cmd, "check %llu %llu %llu", &a, &b, &s) == 3) {
			long long bad;

			if (!r.map || a > r.len || b > r.len - a)
				snprintf(out, sizeof(out), "bad range");
			else if (!guards_intact(&r))
				snprintf(out, sizeof(out), "bad guard pages overwritten");
			else if ((bad = mismatch(r.map + PAGE + a, a, (size_t)b, s)) >= 0)
				snprintf(out, sizeof(out), "bad byte %lld of the range", bad);
			else
				snprintf(out, sizeof(out), "ok");
			srv_reply(c, out);
		} else if (!strcmp(cmd, "guards")) {
			srv_reply(c, r.map && guards_intact(&r) ? "ok" : "bad guard pages");
		} else if (!strcmp(cmd, "dereg")) {
			if (r.mr) {
				int ret = rdmig_tp_mr_dereg(r.mr);

				r.mr = NULL;
				srv_reply(c, ret < 0 ? "bad dereg" : "ok");
			} else {
				srv_reply(c, "bad nothing registered");
			}
		} else if (!strcmp(cmd, "stats")) {
			struct rdmig_tp_counts k;

			rdmig_tp_counts(&k);
			snprintf(out, sizeof(out), "fds=%d conns=%ld mrs=%ld guard_violations=%d",
			         count_fds(), k.conns, k.mrs, guard_violations);
			srv_reply(c, out);
		} else if (!strcmp(cmd, "quiet")) {
			rdmig_tp_messages_only(c);
			srv_reply(c, "ok");
		} else if (sscanf(cmd, "echo %llu", &a) == 1) {
			snprintf(out, sizeof(out), "echo %llu", a);
			srv_reply(c, out);
		} else if (!strcmp(cmd, "bye")) {
			break;
		} else {
			srv_reply(c, "bad command");
		}
	}
	srv_release(&r);
	rdmig_tp_close(c);
}

static void server_main(struct rdmig_listener *l) __attribute__((noreturn));
static void server_main(struct rdmig_listener *l)
{
	rdmig_log_set_tag("server");
	for (;;) {
		struct rdmig_conn *c;
		int ret = rdmig_tp_accept(l, -1, &c);

		if (ret < 0) {
			/* a rejected peer is part of the tests; the listener carries on */
			pr_info("accept: %s", strerror(-ret));
			continue;
		}
		srv_session(c);
	}
}

/* Start (or restart) the server; the port is passed back through a pipe. */
static int start_server(void)
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
		char hp[128];
		int ret;

		close(pfd[0]);
		snprintf(hp, sizeof(hp), strchr(cfg.addr, ':') ? "[%s]:0" : "%s:0", cfg.addr);
		ret = rdmig_tp_listen(&cfg.tp, hp, &l);
		port = ret < 0 ? ret : rdmig_tp_local_port(l);
		if (write(pfd[1], &port, sizeof(port)) != sizeof(port) || port < 0)
			_exit(2);
		close(pfd[1]);
		server_main(l);
	}
	close(pfd[1]);
	if (read(pfd[0], &port, sizeof(port)) != sizeof(port))
		port = -EIO;
	close(pfd[0]);
	if (port <= 0) {
		fprintf(stderr, "the %s transport could not listen on %s: %s\n", cfg.tp.transport,
		        cfg.addr, strerror(port < 0 ? -port : EINVAL));
		waitpid(pid, NULL, 0);
		return port < 0 ? port : -EINVAL;
	}
	cfg.server = pid;
	snprintf(cfg.hostport, sizeof(cfg.hostport), strchr(cfg.addr, ':') ? "[%s]:%d" : "%s:%d",
	         cfg.addr, port);
	return 0;
}

static void stop_server(void)
{
	if (cfg.server > 0) {
		kill(cfg.server, SIGKILL);
		waitpid(cfg.server, NULL, 0);
		cfg.server = 0;
	}
}

/* ---- client side helpers ------------------------------------------------- */

struct client {
	struct rdmig_conn *c;
	uint8_t *buf;
	struct rdmig_mr *mr;
	struct rdmig_rdesc remote;
};

static int cl_open(struct client *cl, size_t region, size_t bufsize)
{
	static uint8_t msg[RDMIG_MSG_MAX];
	struct rdmig_msg m;
	struct rdmig_region reg;
	char cmd[64];
	int n;

	memset(cl, 0, sizeof(*cl));
	n = rdmig_tp_connect(&cfg.tp, cfg.hostport, 10000, &cl->c);
	if (n < 0)
		return n;
	cl->buf = mmap(NULL, bufsize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (cl->buf == MAP_FAILED) {
		cl->buf = NULL;
		return -ENOMEM;
	}
	n = rdmig_tp_mr_reg(cl->c, cl->buf, bufsize, 0, &cl->mr);
	if (n < 0)
		return n;
	if (!region)
		return 0;
	snprintf(cmd, sizeof(cmd), "region %zu", region);
	n = rdmig_tp_send(cl->c, cmd, strlen(cmd));
	if (n < 0)
		return n;
	n = rdmig_tp_recv(cl->c, msg, sizeof(msg), 120000);
	if (n < 0)
		return n;
	if (rdmig_msg_decode(msg, (size_t)n, &m) < 0 || m.type != RDMIG_MSG_REGIONS ||
	    m.u.regions.count != 1 || rdmig_msg_region(&m, 0, &reg) < 0) {
		fprintf(stderr, "  server answered '%.*s' instead of a region table\n", n, msg);
		return -EBADMSG;
	}
	cl->remote = reg.desc;
	return reg.desc.len == region ? 0 : -EBADMSG;
}

static void cl_close(struct client *cl, size_t bufsize)
{
	if (cl->c && cl->mr)
		(void)rdmig_tp_mr_dereg(cl->mr);
	if (cl->c) {
		rdmig_tp_send(cl->c, "bye", 3);
		rdmig_tp_close(cl->c);
	}
	if (cl->buf)
		munmap(cl->buf, bufsize);
	memset(cl, 0, sizeof(*cl));
}

/* Send a command, return the server's answer in out. */
static int cl_ask(struct client *cl, const char *cmd, char *out, size_t cap)
{
	int n = rdmig_tp_send(cl->c, cmd, strlen(cmd));

	if (n < 0)
		return n;
	n = rdmig_tp_recv(cl->c, out, cap - 1, 60000);
	if (n < 0)
		return n;
	out[n] = '\0';
	return 0;
}

/* Wait for exactly one completion. */
static int wait_one(struct rdmig_conn *c, struct rdmig_completion *comp, int timeout_ms)
{
	int n = rdmig_tp_wait(c, comp, 1, timeout_ms);

	return n < 0 ? n : n == 0 ? -ETIMEDOUT : 0;
}

static uint64_t rng_state = 0x1234567;

static uint64_t rnd(void)
{
	rng_state = mix64(rng_state);
	return rng_state;
}

/* ---- cases --------------------------------------------------------------- */

static const size_t sizes[] = {1, 3, 7, 64, 4095, 4096, 4097, 65536, 65537, 1u << 20, 4u << 20};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/*
 * READs at random (mostly unaligned) offsets across the whole region with 1, 4, 16
 * and 64 outstanding, every size from 1 B to 4 MiB; each result checked byte by
 * byte against the pattern the server wrote.
 */
static void read_random(void)
{
	static const int depths[] = {1, 4, 16, 64};
	struct client cl;
	int ret = cl_open(&cl, cfg.region_bytes, CLIENT_BUF);

	T_OK(ret);
	if (ret < 0)
		goto out;
	for (size_t d = 0; d < sizeof(depths) / sizeof(depths[0]); d++) {
		const int depth = depths[d];
		const size_t slot = SLOT; /* each of 64 slots owns SLOT bytes */
		uint64_t roff[64];
		size_t len[64];
		int inflight = 0, done = 0, total = depth * 12, posted = 0, errors = 0;
		/* completions may come in any order: a slot is reused only once free */
		int free_slots[64], nfree = depth;

		for (int i = 0; i < depth; i++)
			free_slots[i] = i;
		while (done < total) {
			while (posted < total && inflight < depth) {
				int s = free_slots[--nfree];

				len[s] = sizes[rnd() % NSIZES];
				roff[s] = rnd() % (cfg.region_bytes - len[s] + 1);
				/* land unaligned in the local buffer too */
				size_t loff = (size_t)s * slot + (rnd() % 64);
				memset(cl.buf + loff, 0, len[s]);
				ret = rdmig_tp_post_read(cl.c, cl.buf + loff, cl.mr, len[s],
				                         &cl.remote, roff[s],
				                         ((uint64_t)s << 32) | loff);
				T_OK(ret);
				if (ret < 0)
					goto out;
				posted++;
				inflight++;
			}
			struct rdmig_completion comp[64];
			int n = rdmig_tp_wait(cl.c, comp, 64, 30000);

			T_CHECK(n > 0, "no completion within 30 s (depth %d, %d in flight): %d",
			        depth, inflight, n);
			if (n <= 0)
				goto out;
			for (int i = 0; i < n; i++) {
				int s = (int)(comp[i].ctx >> 32);
				size_t loff = (size_t)(comp[i].ctx & 0xffffffff);
				long long bad;

				T_CHECK(comp[i].status == 0 && comp[i].op == RDMIG_OP_READ,
				        "read of %zu at %" PRIu64 " failed: %d", len[s], roff[s],
				        comp[i].status);
				free_slots[nfree++] = s;
				bad = mismatch(cl.buf + loff, roff[s], len[s], 1);
				if (bad >= 0 && errors++ < 5)
					T_CHECK(bad < 0,
					        "read of %zu bytes at offset %" PRIu64
					        " differs at byte %lld (depth %d)",
					        len[s], roff[s], bad, depth);
			}
			inflight -= n;
			done += n;
		}
	}
	/* the very first and the very last byte of the region */
	for (int end = 0; end < 2; end++) {
		struct rdmig_completion comp;
		uint64_t off = end ? cfg.region_bytes - 1 : 0;

		T_OK(rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 1, &cl.remote, off, 9));
		T_OK(wait_one(cl.c, &comp, 30000));
		T_CHECK(comp.status == 0 && cl.buf[0] == pat(1, off), "edge byte %" PRIu64, off);
	}
out:
	cl_close(&cl, CLIENT_BUF);
}

/*
 * WRITEs of every size at random unaligned offsets, many outstanding; the server
 * then checks each written range holds exactly what was sent and its guard pages
 * are untouched.
 */
static void write_random(void)
{
	const size_t region = cfg.region_bytes < (256u << 20) ? cfg.region_bytes : (256u << 20);
	struct client cl;
	char ans[256], cmd[128];
	int ret = cl_open(&cl, region, CLIENT_BUF);

	T_OK(ret);
	if (ret < 0)
		goto out;
	for (int depth = 1; depth <= 64; depth *= 4) {
		/* disjoint targets: region split in 64 lanes, one write per lane */
		const uint64_t lane = region / 64;
		uint64_t roff[64];
		size_t len[64];
		uint64_t seed = 100 + (uint64_t)depth;

		for (int s = 0; s < depth; s++) {
			len[s] = sizes[rnd() % NSIZES];
			if (len[s] > lane)
				len[s] = lane; /* small regions: a write stays in its lane */
			roff[s] = (uint64_t)s * lane + rnd() % (lane - len[s] + 1);
			fill(cl.buf + (size_t)s * SLOT + 3, roff[s], len[s], seed);
			ret = rdmig_tp_post_write(cl.c, cl.buf + (size_t)s * SLOT + 3, cl.mr,
			                          len[s], &cl.remote, roff[s], (uint64_t)s);
			T_OK(ret);
			if (ret < 0)
				goto out;
		}
		for (int got = 0; got < depth;) {
			struct rdmig_completion comp[64];
			int n = rdmig_tp_wait(cl.c, comp, 64, 30000);

			T_CHECK(n > 0, "no write completion within 30 s: %d", n);
			if (n <= 0)
				goto out;
			for (int i = 0; i < n; i++)
				T_CHECK(comp[i].status == 0 && comp[i].op == RDMIG_OP_WRITE,
				        "write %" PRIu64 " failed: %d", comp[i].ctx,
				        comp[i].status);
			got += n;
		}
		for (int s = 0; s < depth; s++) {
			snprintf(cmd, sizeof(cmd), "check %" PRIu64 " %zu %" PRIu64, roff[s],
			         len[s], seed);
			T_OK(cl_ask(&cl, cmd, ans, sizeof(ans)));
			T_CHECK(!strcmp(ans, "ok"), "write of %zu at %" PRIu64 ": server says %s",
			        len[s], roff[s], ans);
		}
	}
out:
	cl_close(&cl, CLIENT_BUF);
}

/* A single op expected to fail; the connection may die with it (verbs does). */
static void expect_failure(struct client *cl, int write, uint64_t roff, size_t len,
                           const struct rdmig_rdesc *r, const char *what)
{
	struct rdmig_completion comp = {0};
	int ret = write ? rdmig_tp_post_write(cl->c, cl->buf, cl->mr, len, r, roff, 77)
	                : rdmig_tp_post_read(cl->c, cl->buf, cl->mr, len, r, roff, 77);

	if (ret < 0) /* refused at the post: fine, as long as it is an error */
		return;
	ret = wait_one(cl->c, &comp, 30000);
	T_CHECK(ret == 0, "%s: no completion within 30 s (%d)", what, ret);
	T_CHECK(comp.status < 0, "%s: %s succeeded", what, write ? "WRITE" : "READ");
	T_CHECK(comp.ctx == 77, "%s: wrong context back", what);
}

/*
 * Bad accesses: what the wrapper can see is refused before posting; forged
 * descriptors (wrong key, past either end) are refused by the peer's transport
 * and never change a byte outside the region; a deregistered region is gone.
 */
static void bad_input(void)
{
	const size_t region = 1u << 20;
	struct client cl;
	char ans[256];
	struct rdmig_rdesc r;
	int ret;

	/* the wrapper refuses what it can see is out of bounds, without posting */
	ret = cl_open(&cl, region, 1u << 20);
	T_OK(ret);
	if (ret == 0) {
		T_CHECK(rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 4096, &cl.remote, region - 4095,
		                           1) == -ERANGE,
		        "local bounds check (remote)");
		T_CHECK(rdmig_tp_post_read(cl.c, cl.buf + (1u << 20) - 10, cl.mr, 4096, &cl.remote,
		                           0, 1) == -ERANGE,
		        "local bounds check (local)");
		T_CHECK(rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 0, &cl.remote, 0, 1) == -EINVAL,
		        "zero length");
		T_CHECK(rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 1, &cl.remote, UINT64_MAX, 1) ==
		            -ERANGE,
		        "offset wrap");
	}
	cl_close(&cl, 1u << 20);

	/* Forged descriptors: the peer's transport must refuse them itself. */
	struct {
		const char *what;
		int write;
		int kind; /* 0 bad key, 1 past the end, 2 before the start */
	} cases[] = {
	    {"READ with a wrong key", 0, 0},
	    {"WRITE with a wrong key", 1, 0},
	    {"READ past the end of the region", 0, 1},
	    {"WRITE past the end of the region", 1, 1},
	    {"WRITE before the start of the region", 1, 2},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ret = cl_open(&cl, region, 1u << 20);
		T_OK(ret);
		if (ret < 0) {
			cl_close(&cl, 1u << 20);
			continue;
		}
		r = cl.remote;
		memset(cl.buf, 0x55, 1u << 20);
		if (cases[i].kind == 0) {
			r.key ^= 0x5a5a5a5a;
			expect_failure(&cl, cases[i].write, 0, 4096, &r, cases[i].what);
		} else if (cases[i].kind == 1) {
			r.len += 2 * PAGE; /* lie about the size to get past our own check */
			expect_failure(&cl, cases[i].write, region - 100, 4096, &r, cases[i].what);
		} else {
			r.addr -= PAGE;
			r.len += PAGE;
			expect_failure(&cl, cases[i].write, 0, 200, &r, cases[i].what);
		}
		/* The connection may be dead now (verbs kills the QP on an access error).
		 * Ask while it lives; either way the server checks the guard pages when the
		 * session ends, and a fresh connection asks it what it found. */
		ret = cl_ask(&cl, "guards", ans, sizeof(ans));
		if (ret == 0)
			T_CHECK(!strcmp(ans, "ok"), "%s: server says %s", cases[i].what, ans);
		cl_close(&cl, 1u << 20);
		ret = cl_open(&cl, 0, 4096);
		T_OK(ret);
		if (ret == 0) {
			T_OK(cl_ask(&cl, "stats", ans, sizeof(ans)));
			T_CHECK(strstr(ans, "guard_violations=0") != NULL, "%s: server %s",
			        cases[i].what, ans);
		}
		cl_close(&cl, 4096);
	}

	/* After deregistration the old descriptor reaches nothing. */
	ret = cl_open(&cl, region, 1u << 20);
	T_OK(ret);
	if (ret == 0) {
		struct rdmig_completion comp;

		T_OK(rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 4096, &cl.remote, 0, 5));
		T_OK(wait_one(cl.c, &comp, 30000));
		T_CHECK(comp.status == 0, "read before deregistration: %d", comp.status);
		T_OK(cl_ask(&cl, "dereg", ans, sizeof(ans)));
		T_CHECK(!strcmp(ans, "ok"), "dereg: %s", ans);
		expect_failure(&cl, 0, 0, 4096, &cl.remote, "READ after deregistration");
	}
	cl_close(&cl, 1u << 20);
}

/* Write a token file with the given secret, mode 0600. */
static int write_token(const char *path, const char *secret, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, secret, strlen(secret));
	fchmod(fd, mode);
	close(fd);
	return n == (ssize_t)strlen(secret) ? 0 : -EIO;
}

/*
 * Authentication: a peer with another secret is refused and gets nothing; a peer
 * speaking garbage, or nothing, is disconnected; the listener keeps serving the
 * honest ones. The raw peers use the backend's own connect, which skips our
 * handshake, to play the attacker.
 */
static void authentication(void)
{
	struct rdmig_tp_opts bad = cfg.tp;
	struct rdmig_conn *c = NULL;
	uint8_t buf[RDMIG_MSG_MAX];
	struct rdmig_msg m;
	int ret;

	bad.token_file = cfg.badtoken;
	ret = rdmig_tp_connect(&bad, cfg.hostport, 10000, &c);
	T_CHECK(ret == -EACCES, "wrong token: connect returned %d, want -EACCES", ret);
	if (c)
		rdmig_tp_close(c);

	/* a world-readable token is refused before anything is sent */
	char loose[96];
	snprintf(loose, sizeof(loose), "%s.loose", cfg.token);
	T_OK(write_token(loose, "0123456789abcdef0123", 0644));
	bad.token_file = loose;
	ret = rdmig_tp_connect(&bad, cfg.hostport, 10000, &c);
	T_CHECK(ret == -EPERM, "loose token: connect returned %d, want -EPERM", ret);
	unlink(loose);

	const struct rdmig_transport_ops *ops = rdmig_tp_find(cfg.tp.transport);

	/* garbage instead of HELLO: the server drops us, and says nothing useful */
	for (int variant = 0; variant < 4; variant++) {
		c = NULL;
		ret = ops->connect(&cfg.tp, cfg.hostport, 10000, &c);
		T_OK(ret);
		if (ret < 0)
			continue;
		c->ops = ops;
		int sent = 0;
		if (variant == 0) {
			memset(buf, 'A', 100);
			sent = rdmig_tp_send(c, buf, 100);
		} else if (variant == 1) {
			uint8_t nonce[RDMIG_NONCE_LEN] = {1};
			/* a valid HELLO, then an AUTH with a made-up MAC */
			int n = rdmig_msg_encode_hello(buf, sizeof(buf), PAGE, RDMIG_ROLE_CONNECTOR,
			                               nonce);
			sent = rdmig_tp_send(c, buf, (size_t)n);
			uint8_t mac[RDMIG_MAC_LEN] = {2};
			n = rdmig_msg_encode_auth(buf, sizeof(buf), mac);
			if (sent >= 0)
				sent = rdmig_tp_send(c, buf, (size_t)n);
		} else if (variant == 2) {
			/* a HELLO whose length field lies */
			uint8_t nonce[RDMIG_NONCE_LEN] = {3};
			int n = rdmig_msg_encode_hello(buf, sizeof(buf), PAGE, RDMIG_ROLE_CONNECTOR,
			                               nonce);
			buf[8] = 0xff;
			sent = rdmig_tp_send(c, buf, (size_t)n);
		} else {
			/* skip the proof: HELLO then straight to asking for memory */
			uint8_t nonce[RDMIG_NONCE_LEN] = {4};
			int n = rdmig_msg_encode_hello(buf, sizeof(buf), PAGE, RDMIG_ROLE_CONNECTOR,
			                               nonce);
			sent = rdmig_tp_send(c, buf, (size_t)n);
			if (sent >= 0)
				sent = rdmig_tp_send(c, "region 4096", 11);
		}
		T_OK(sent);
		/* Read what the server says until it hangs up: never a region table. */
		int hung_up = 0;
		double t0 = t_now_s();
		while (t_now_s() - t0 < 20) {
			int n = rdmig_tp_recv(c, buf, sizeof(buf), 20000);

			if (n < 0) {
				hung_up = n != -ETIMEDOUT;
				break;
			}
			ret = rdmig_msg_decode(buf, (size_t)n, &m);
			T_CHECK(ret == 0 &&
			            (m.type == RDMIG_MSG_HELLO || m.type == RDMIG_MSG_ERROR),
			        "unauthenticated peer (variant %d) received a %s", variant,
			        ret == 0 ? rdmig_msg_type_name(m.type) : "malformed message");
		}
		T_CHECK(hung_up, "server did not disconnect the unauthenticated peer (variant %d)",
		        variant);
		rdmig_tp_close(c);
	}

	/* the honest still get in */
	struct client cl;
	ret = cl_open(&cl, 4096, 4096);
	T_OK(ret);
	cl_close(&cl, 4096);
}

/*
 * The server dies with 64 READs outstanding: every one of them completes with an
 * error within a bounded time, and later posts fail instead of hanging.
 */
static void peer_death(void)
{
	const size_t region = 64u << 20;
	struct client cl;
	int ret = cl_open(&cl, region, CLIENT_BUF), inflight = 0, failed = 0, posted = 0;
	double t_kill = 0, t_last = 0;

	T_OK(ret);
	if (ret < 0)
		goto out;
	/*
	 * Keep 64 in flight, kill the server under them, and keep posting: operations
	 * already on the wire may still have been answered before the peer's memory
	 * went away, but from some point on every one must fail, and none may hang.
	 */
	double t0 = t_now_s();
	int killed = 0, post_failed = 0;
	while (1) {
		while (!post_failed && inflight < 64) {
			size_t len = 65536;
			uint64_t off = rnd() % (region - len);

			ret = rdmig_tp_post_read(cl.c, cl.buf + (size_t)(posted % 64) * len, cl.mr,
			                         len, &cl.remote, off, (uint64_t)posted);
			if (ret < 0) {
				post_failed = 1; /* the transport already knows the peer is gone */
				break;
			}
			posted++;
			inflight++;
		}
		if (!killed && t_now_s() - t0 > 0.5) {
			kill(cfg.server, SIGKILL);
			t_kill = t_now_s();
			killed = 1;
		}
		struct rdmig_completion comp[64];
		int n = rdmig_tp_wait(cl.c, comp, 64, 1000);

		if (n < 0)
			break;
		for (int i = 0; i < n; i++) {
			if (comp[i].status < 0)
				failed++;
			t_last = t_now_s();
		}
		inflight -= n;
		/* done once the dead peer has failed operations and none is left */
		if (killed && (failed > 0 || post_failed) && inflight == 0)
			break;
		if (killed && t_now_s() - t_kill > 60)
			break;
	}
	T_CHECK(killed, "never got to kill the server");
	T_CHECK(inflight == 0, "%d operations still outstanding %.1f s after the peer died",
	        inflight, t_now_s() - t_kill);
	T_CHECK(failed > 0 || post_failed,
	        "nothing failed within 60 s of the peer's death (%d posted)", posted);
	if (killed && inflight == 0)
		fprintf(stderr, "  all %d outstanding failed within %.2f s of the peer's death\n",
		        failed, t_last - t_kill);
	/* further use fails fast */
	ret = rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 4096, &cl.remote, 0, 1);
	if (ret == 0) {
		struct rdmig_completion comp;

		T_OK(wait_one(cl.c, &comp, 30000));
		T_CHECK(comp.status < 0, "a READ from a dead peer succeeded");
	}
	char buf[64];
	ret = rdmig_tp_recv(cl.c, buf, sizeof(buf), 30000);
	T_CHECK(ret == -ECONNRESET, "recv from a dead peer: %d", ret);
out:
	cl_close(&cl, CLIENT_BUF);
	waitpid(cfg.server, NULL, 0);
	cfg.server = 0;
	ret = start_server();
	T_OK(ret);
}

/*
 * A thousand connect / register / read / deregister / close cycles: afterwards both
 * processes hold the same fds as before and no registration or connection is live.
 */
static void cycles(void)
{
	struct rdmig_tp_counts k0, k1;
	struct client probe;
	char before[256] = "", after[256] = "";
	int fds0, fds1, ret;

	/* the server serves one connection at a time: ask it before and after */
	ret = cl_open(&probe, 0, 4096);
	T_OK(ret);
	if (ret < 0)
		goto out;
	T_OK(cl_ask(&probe, "stats", before, sizeof(before)));
	cl_close(&probe, 4096);
	rdmig_tp_counts(&k0);
	fds0 = count_fds();
	for (int i = 0; i < cfg.cycles; i++) {
		struct client cl;
		struct rdmig_completion comp;

		ret = cl_open(&cl, 65536, 65536);
		if (ret == 0)
			ret = rdmig_tp_post_read(cl.c, cl.buf, cl.mr, 65536, &cl.remote, 0, 1);
		if (ret == 0)
			ret = wait_one(cl.c, &comp, 30000);
		if (ret == 0 && (comp.status || mismatch(cl.buf, 0, 65536, 1) >= 0))
			ret = -EIO;
		cl_close(&cl, 65536);
		T_CHECK(ret == 0, "cycle %d: %s", i, strerror(-ret));
		if (ret)
			goto out;
	}
	fds1 = count_fds();
	rdmig_tp_counts(&k1);
	ret = cl_open(&probe, 0, 4096);
	T_OK(ret);
	if (ret < 0)
		goto out;
	T_OK(cl_ask(&probe, "stats", after, sizeof(after)));
	T_CHECK(fds1 == fds0, "client fds %d before, %d after %d cycles", fds0, fds1, cfg.cycles);
	T_CHECK(k1.conns == k0.conns && k1.mrs == k0.mrs,
	        "client live conns %ld -> %ld, registrations %ld -> %ld", k0.conns, k1.conns,
	        k0.mrs, k1.mrs);
	T_CHECK(!strcmp(before, after), "server before: '%s', after: '%s'", before, after);
	fprintf(stderr, "  %d cycles; client fds %d, server %s\n", cfg.cycles, fds1, after);
out:
	cl_close(&probe, 4096);
}

/*
 * A connection both sides mark messages-only (rdmig_tp_messages_only: no
 * polling after traffic, a wake-up per message) still delivers every message:
 * 300 round trips, then 64 sent back to back, every answer in order.
 */
static void messages_only(void)
{
	struct client cl;
	char out[64], want[64];

	T_OK(cl_open(&cl, 0, 4096));
	if (!cl.c)
		return;
	rdmig_tp_messages_only(cl.c);
	T_OK(cl_ask(&cl, "quiet", out, sizeof(out)));
	T_CHECK(!strcmp(out, "ok"), "the server marked its side: '%s'", out);
	for (unsigned i = 0; i < 300; i++) {
		char cmd[32];

		snprintf(cmd, sizeof(cmd), "echo %u", i);
		if (cl_ask(&cl, cmd, out, sizeof(out)) || strcmp(out, cmd)) {
			T_CHECK(0, "round trip %u answered '%s'", i, out);
			break;
		}
	}
	for (unsigned i = 0; i < 64; i++) {
		snprintf(want, sizeof(want), "echo %u", 1000 + i);
		T_OK(rdmig_tp_send(cl.c, want, strlen(want)));
	}
	for (unsigned i = 0; i < 64; i++) {
		int n = rdmig_tp_recv(cl.c, out, sizeof(out) - 1, 60000);

		snprintf(want, sizeof(want), "echo %u", 1000 + i);
		if (n < 0 || (out[n] = '\0', strcmp(out, want))) {
			T_CHECK(0, "answer %u of a burst: %s", i, n < 0 ? strerror(-n) : out);
			break;
		}
	}
	cl_close(&cl, 4096);
}

/* The child's side of watched_accept: two connections, then (after the parent's
 * go, a byte on the pipe) a third that it drops without the fourth. */
static void watched_child(int go) __attribute__((noreturn));
static void watched_child(int go)
{
	struct rdmig_conn *c1 = NULL, *c2 = NULL, *c3 = NULL;
	char hostport[128], b;
	int port;

	rdmig_log_set_tag("peer");
	if (read(go, &port, sizeof(port)) != sizeof(port) || port <= 0)
		_exit(2);
	snprintf(hostport, sizeof(hostport), strchr(cfg.addr, ':') ? "[%s]:%d" : "%s:%d", cfg.addr,
	         port);
	if (rdmig_tp_connect(&cfg.tp, hostport, 10000, &c1) < 0 || rdmig_tp_send(c1, "m1", 2) < 0 ||
	    rdmig_tp_connect(&cfg.tp, hostport, 10000, &c2) < 0 || rdmig_tp_send(c2, "m2", 2) < 0)
		_exit(3);
	if (read(go, &b, 1) != 1)
		_exit(4);
	rdmig_tp_close(c2);
	rdmig_tp_close(c1);
	if (rdmig_tp_connect(&cfg.tp, hostport, 10000, &c3) < 0)
		_exit(5);
	/* the parent's accept is done with its handshake before this is closed */
	if (read(go, &b, 1) != 1)
		_exit(6);
	rdmig_tp_close(c3);
	_exit(0);
}

/*
 * A listener awaiting a peer's second connection (rdmig_tp_accept_next): it gets
 * it while the first stands, and stops waiting once the first breaks, long
 * before its timeout. rdmig_tp_check looks without taking a message.
 */
static void watched_accept(void)
{
	struct rdmig_conn *c1 = NULL, *c2 = NULL, *c3 = NULL, *c4 = NULL;
	struct rdmig_listener *l = NULL;
	char hp[128], buf[16];
	int pfd[2], ret, st = 0, port = -1;
	pid_t pid;

	ret = pipe(pfd) < 0 ? -errno : 0;
	T_OK(ret);
	if (ret < 0)
		return;
	pid = fork();
	if (pid == 0) {
		/* A new program, not a fork that goes on: the device contexts rdma_cm
		 * opened for the earlier cases belong to this process's memory, and a
		 * forked child's verbs calls on them are refused (EPERM). */
		char fd[16];

		close(pfd[1]);
		snprintf(fd, sizeof(fd), "%d", pfd[0]);
		execl("/proc/self/exe", "tp_conformance", "--transport", cfg.tp.transport,
		      "--provider", cfg.tp.provider ? cfg.tp.provider : "", "--addr", cfg.addr,
		      "--token-file", cfg.token, "--peer-fd", fd, (char *)NULL);
		_exit(7);
	}
	close(pfd[0]);
	T_CHECK(pid > 0, "fork: %s", strerror(errno));
	if (pid < 0) {
		close(pfd[1]);
		return;
	}
	snprintf(hp, sizeof(hp), strchr(cfg.addr, ':') ? "[%s]:0" : "%s:0", cfg.addr);
	T_OK(ret = rdmig_tp_listen(&cfg.tp, hp, &l));
	if (ret == 0)
		port = rdmig_tp_local_port(l);
	/* a port of -1 ends the child at once */
	T_OK(write(pfd[1], &port, sizeof(port)) == sizeof(port) ? 0 : -EIO);
	if (ret < 0 || port <= 0)
		goto out;
	T_OK(ret = rdmig_tp_accept(l, 20000, &c1));
	if (ret < 0)
		goto out;
	/* m1 comes meanwhile: looking does not take it */
	for (int i = 0; i < 5; i++) {
		ret = rdmig_tp_check(c1);
		T_CHECK(ret == 0, "check %d of a standing connection: %s", i, strerror(-ret));
		usleep(20000);
	}
	T_OK(ret = rdmig_tp_accept_next(l, 20000, c1, &c2));
	if (ret < 0)
		goto out;
	ret = rdmig_tp_recv(c1, buf, sizeof(buf), 10000);
	T_CHECK(ret == 2 && !memcmp(buf, "m1", 2), "the first connection's message: %d", ret);
	ret = rdmig_tp_recv(c2, buf, sizeof(buf), 10000);
	T_CHECK(ret == 2 && !memcmp(buf, "m2", 2), "the second connection's message: %d", ret);
	T_OK(write(pfd[1], "g", 1) == 1 ? 0 : -EIO);
	T_OK(ret = rdmig_tp_accept(l, 20000, &c3));
	if (ret < 0)
		goto out;
	T_OK(write(pfd[1], "g", 1) == 1 ? 0 : -EIO);
	/* the peer drops c3 and never makes a fourth: without the watch this
	 * would wait the whole 60 s */
	ret = rdmig_tp_accept_next(l, 60000, c3, &c4);
	T_CHECK(ret < 0 && ret != -ETIMEDOUT,
	        "awaiting the second connection of a peer that went: %s, want its error",
	        ret < 0 ? strerror(-ret) : "a connection");
	ret = rdmig_tp_check(c3);
	T_CHECK(ret < 0, "check of a connection whose peer went: %d", ret);
out:
	close(pfd[1]);
	if (pid > 0)
		waitpid(pid, &st, 0);
	T_CHECK(pid > 0 && WIFEXITED(st) && (WEXITSTATUS(st) == 0 || port <= 0),
	        "the peer's side failed (status 0x%x)", st);
	rdmig_tp_close(c4);
	rdmig_tp_close(c3);
	rdmig_tp_close(c2);
	rdmig_tp_close(c1);
	rdmig_tp_close_listener(l);
}

static void usage(void)
{
	fprintf(stderr, "usage: tp_conformance --transport fabric|verbs [--provider P] [--addr A]\n"
	                "                      [--region-mb N] [--cycles N] [--only CASE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	char dir[] = "/tmp/rdmig-conf.XXXXXX";
	int ret, peer_fd = -1;

	cfg.tp.transport = "fabric";
	cfg.addr = "127.0.0.1";
	cfg.region_bytes = 1024u << 20;
	cfg.cycles = 1000;
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
		else if (!strcmp(a, "--region-mb"))
			cfg.region_bytes = (size_t)strtoul(v, NULL, 10) << 20;
		else if (!strcmp(a, "--cycles"))
			cfg.cycles = atoi(v);
		else if (!strcmp(a, "--only"))
			t_state.only = v;
		else if (!strcmp(a, "--token-file")) /* internal: watched_accept's peer */
			snprintf(cfg.token, sizeof(cfg.token), "%s", v);
		else if (!strcmp(a, "--peer-fd"))
			peer_fd = atoi(v);
		else
			usage();
	}
	if (cfg.region_bytes < (8u << 20))
		usage();
	if (peer_fd >= 0) {
		if (cfg.tp.provider && !*cfg.tp.provider)
			cfg.tp.provider = NULL;
		cfg.tp.token_file = cfg.token;
		watched_child(peer_fd);
	}
	signal(SIGPIPE, SIG_IGN);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(cfg.token, sizeof(cfg.token), "%s/token", dir);
	snprintf(cfg.badtoken, sizeof(cfg.badtoken), "%s/badtoken", dir);
	if (write_token(cfg.token, "conformance-secret-0123456789", 0600) < 0 ||
	    write_token(cfg.badtoken, "some-other-secret-9876543210", 0600) < 0) {
		perror("token");
		return 1;
	}
	cfg.tp.token_file = cfg.token;
	printf("transport %s provider %s addr %s region %zu MiB\n", cfg.tp.transport,
	       cfg.tp.provider ? cfg.tp.provider : "-", cfg.addr, cfg.region_bytes >> 20);
	ret = start_server();
	if (ret < 0) {
		/* no transport here is a failure: CI must run the real path */
		printf("not ok start_server\n0 passed, 1 failed\n");
		return 1;
	}
	T_RUN(read_random);
	T_RUN(write_random);
	T_RUN(bad_input);
	T_RUN(messages_only);
	T_RUN(watched_accept);
	T_RUN(authentication);
	T_RUN(cycles);
	T_RUN(peer_death);
	stop_server();
	unlink(cfg.token);
	unlink(cfg.badtoken);
	rmdir(dir);
	return t_finish();
}
