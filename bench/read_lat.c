/*
 * bench/read_lat: one-sided READ latency and bandwidth of a transport, beside a
 * baseline measured in the same run.
 *
 *   read_lat --transport fabric --provider tcp [--addr 127.0.0.1]      baseline: TCP page server
 *   read_lat --transport verbs --addr $RDMIG_RXE_ADDR --baseline perftest   (in the rxe guest)
 *
 * A forked server registers a 64 MiB region (the source daemon's mirror, in small);
 * the client reads 4 KiB and 64 KiB from random page-aligned offsets with one
 * operation in flight (latency: p50/p90/p99/max and a histogram) and with 16 in
 * flight (bandwidth). The baseline is either a plain TCP request/response page
 * server measured the same way (for fabric/tcp), or perftest's ib_read_lat and
 * ib_read_bw on the same rxe device (for verbs), run by test/rxe/perftest-baseline.sh.
 * The last line is the ratio ours/baseline at p50 for 4 KiB.
 *
 * The machines this runs on are shared and noisy: read ratios, not absolutes.
 */
#define LOG_SUBSYS "read_lat"
#include "rdmig/log.h"
#include "rdmig/proto.h"
#include "rdmig/transport.h"
#include "stats.h"
#include "tcp_pagesrv.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define REGION (64u << 20)
#define LOCAL_BUF (4u << 20)
#define BW_DEPTH 16

struct opts {
	struct rdmig_tp_opts tp;
	const char *addr;
	const char *baseline; /* "tcp", "perftest", "none" */
	const char *perftest_cmd;
	int iters;
	int bw_ms;
};

struct result {
	struct lat_stats lat[2]; /* 4 KiB, 64 KiB */
	double bw_mbps[2];
	int have_bw;
};

static const size_t sizes[2] = {4096, 65536};

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void fill_region(uint8_t *p, size_t len)
{
	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t w = mix64(i >> 3);

		memcpy(p + i, &w, 8);
	}
}

/* The page-aligned offset of sample i (the same sequence for ours and baseline). */
static uint64_t offset_of(uint64_t i, size_t len)
{
	return (mix64(i * 7919 + 13) % ((REGION - len) / 4096)) * 4096;
}

/* ---- the transport under test ------------------------------------------- */

static void tp_server(const struct opts *o, struct rdmig_listener *l) __attribute__((noreturn));
static void tp_server(const struct opts *o, struct rdmig_listener *l)
{
	static uint8_t msg[RDMIG_MSG_MAX];
	struct rdmig_region reg = {.id = 1};
	struct rdmig_conn *c;
	struct rdmig_mr *mr;
	uint8_t *region;
	int n;

	(void)o;
	rdmig_log_set_tag("server");
	if (rdmig_tp_accept(l, 60000, &c) < 0)
		_exit(1);
	region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		_exit(1);
	fill_region(region, REGION);
	if (rdmig_tp_mr_reg(c, region, REGION, RDMIG_ACCESS_REMOTE_READ, &mr) < 0)
		_exit(1);
	rdmig_tp_mr_desc(mr, &reg.desc);
	n = rdmig_msg_encode_regions(msg, sizeof(msg), &reg, 1);
	if (n < 0 || rdmig_tp_send(c, msg, (size_t)n) < 0)
		_exit(1);
	/* serve until the client says goodbye or goes away */
	n = rdmig_tp_recv(c, msg, sizeof(msg), -1);
	(void)rdmig_tp_mr_dereg(mr);
	rdmig_tp_close(c);
	rdmig_tp_close_listener(l);
	munmap(region, REGION);
	_exit(0);
}

/* Spin on the completion queue: the benchmark measures the transport, not the
 * scheduler's wakeup. A stuck operation ends the run after 10 s. */
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

static int run_ours(const struct opts *o, struct result *res)
{
	static uint8_t msg[RDMIG_MSG_MAX];
	struct rdmig_listener *l = NULL;
	struct rdmig_conn *c = NULL;
	struct rdmig_mr *mr = NULL;
	struct rdmig_region reg;
	struct rdmig_msg m;
	uint8_t *buf = NULL;
	uint64_t *ns = NULL;
	char hp[128];
	pid_t pid;
	int ret, port;

	/* The server listens in the child: nothing of the transport exists before the
	 * fork, so neither process inherits the other's library state. */
	int pfd[2];

	if (pipe(pfd) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close(pfd[0]);
		snprintf(hp, sizeof(hp), "%s:0", o->addr);
		ret = rdmig_tp_listen(&o->tp, hp, &l);
		port = ret < 0 ? ret : rdmig_tp_local_port(l);
		if (write(pfd[1], &port, sizeof(port)) != sizeof(port) || port < 0)
			_exit(1);
		close(pfd[1]);
		tp_server(o, l);
	}
	close(pfd[1]);
	if (read(pfd[0], &port, sizeof(port)) != sizeof(port))
		port = -EIO;
	close(pfd[0]);
	if (port < 0) {
		fprintf(stderr, "read_lat: the %s transport cannot listen on %s: %s\n",
		        o->tp.transport, o->addr, strerror(-port));
		ret = port;
		goto out_kill;
	}
	snprintf(hp, sizeof(hp), "%s:%d", o->addr, port);
	ret = rdmig_tp_connect(&o->tp, hp, 20000, &c);
	if (ret < 0)
		goto out_kill;
	ret = rdmig_tp_recv(c, msg, sizeof(msg), 60000);
	if (ret < 0)
		goto out_close;
	if (rdmig_msg_decode(msg, (size_t)ret, &m) < 0 || m.type != RDMIG_MSG_REGIONS ||
	    rdmig_msg_region(&m, 0, &reg) < 0) {
		ret = -EBADMSG;
		goto out_close;
	}
	buf = mmap(NULL, LOCAL_BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ns = calloc((size_t)o->iters, sizeof(*ns));
	if (buf == MAP_FAILED || !ns) {
		ret = -ENOMEM;
		goto out_close;
	}
	ret = rdmig_tp_mr_reg(c, buf, LOCAL_BUF, 0, &mr);
	if (ret < 0)
		goto out_close;

	for (int s = 0; s < 2; s++) {
		const size_t len = sizes[s];
		struct rdmig_completion comp[BW_DEPTH];

		for (int i = -200; i < o->iters; i++) { /* 200 warm-up reads */
			uint64_t off = offset_of((uint64_t)(i + 200), len), t0 = now_ns();

			ret = rdmig_tp_post_read(c, buf, mr, len, &reg.desc, off, 1);
			if (ret == 0)
				ret = wait_completion(c, comp, 1);
			if (ret > 0)
				ret = comp[0].status;
			if (ret < 0)
				goto out_dereg;
			if (i >= 0)
				ns[i] = now_ns() - t0;
			if (i == 0) {
				uint64_t want = mix64(off >> 3);

				if (memcmp(buf, &want, 8)) {
					fprintf(stderr, "read_lat: wrong data read\n");
					ret = -EIO;
					goto out_dereg;
				}
			}
		}
		lat_compute(ns, (size_t)o->iters, &res->lat[s]);
		lat_print_histogram(s ? "ours 64KiB" : "ours 4KiB", ns, (size_t)o->iters);

		/* bandwidth: BW_DEPTH reads always in flight for bw_ms */
		uint64_t t0 = now_ns(), bytes = 0, seq = 0;
		int inflight = 0;

		while (now_ns() - t0 < (uint64_t)o->bw_ms * 1000000ull || inflight) {
			while (inflight < BW_DEPTH &&
			       now_ns() - t0 < (uint64_t)o->bw_ms * 1000000ull) {
				ret = rdmig_tp_post_read(c, buf + (seq % BW_DEPTH) * 65536, mr, len,
				                         &reg.desc, offset_of(seq, len), seq);
				if (ret < 0)
					goto out_dereg;
				seq++;
				inflight++;
			}
			int n = wait_completion(c, comp, BW_DEPTH);

			if (n < 0) {
				ret = n;
				goto out_dereg;
			}
			for (int i = 0; i < n; i++) {
				if (comp[i].status < 0) {
					ret = comp[i].status;
					goto out_dereg;
				}
				bytes += len;
			}
			inflight -= n;
		}
		res->bw_mbps[s] = (double)bytes / ((double)(now_ns() - t0) / 1e9) / 1e6;
	}
	res->have_bw = 1;
	ret = 0;
out_dereg:
	(void)rdmig_tp_mr_dereg(mr);
out_close:
	if (ret < 0)
		fprintf(stderr, "read_lat: %s transport failed: %s\n", o->tp.transport,
		        strerror(-ret));
	if (c)
		rdmig_tp_send(c, "bye", 3);
	rdmig_tp_close(c);
out_kill:
	waitpid(pid, NULL, 0);
	if (buf && buf != MAP_FAILED)
		munmap(buf, LOCAL_BUF);
	free(ns);
	return ret;
}

/* ---- baselines ----------------------------------------------------------- */

static int run_tcp_baseline(const struct opts *o, struct result *res)
{
	uint8_t *buf = malloc(LOCAL_BUF);
	uint64_t *ns = calloc((size_t)o->iters, sizeof(*ns));
	pid_t pid = -1;
	int fd = -1, port, ret;

	if (!buf || !ns) {
		ret = -ENOMEM;
		goto out;
	}
	ret = tcp_pagesrv_start(o->addr, REGION, fill_region, &pid, &port);
	if (ret < 0)
		goto out;
	fd = tcp_pagesrv_connect(o->addr, port);
	if (fd < 0) {
		ret = fd;
		goto out;
	}
	for (int s = 0; s < 2; s++) {
		const size_t len = sizes[s];

		for (int i = -200; i < o->iters; i++) {
			uint64_t off = offset_of((uint64_t)(i + 200), len), t0 = now_ns();

			ret = tcp_page_request(fd, off, (uint32_t)len);
			if (ret == 0)
				ret = tcp_page_answer(fd, buf, len);
			if (ret < 0)
				goto out;
			if (i >= 0)
				ns[i] = now_ns() - t0;
		}
		lat_compute(ns, (size_t)o->iters, &res->lat[s]);
		lat_print_histogram(s ? "tcp page server 64KiB" : "tcp page server 4KiB", ns,
		                    (size_t)o->iters);

		uint64_t t0 = now_ns(), bytes = 0, seq = 0;
		int inflight = 0;

		while (now_ns() - t0 < (uint64_t)o->bw_ms * 1000000ull || inflight) {
			while (inflight < BW_DEPTH &&
			       now_ns() - t0 < (uint64_t)o->bw_ms * 1000000ull) {
				ret = tcp_page_request(fd, offset_of(seq++, len), (uint32_t)len);
				if (ret < 0)
					goto out;
				inflight++;
			}
			ret = tcp_page_answer(fd, buf, len);
			if (ret < 0)
				goto out;
			bytes += len;
			inflight--;
		}
		res->bw_mbps[s] = (double)bytes / ((double)(now_ns() - t0) / 1e9) / 1e6;
	}
	res->have_bw = 1;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	tcp_pagesrv_stop(pid);
	free(buf);
	free(ns);
	return ret;
}

/* The value of "key=" in a perftest-baseline line, or -1. */
static double field(const char *line, const char *key)
{
	size_t kl = strlen(key);

	for (const char *p = strstr(line, key); p; p = strstr(p + 1, key)) {
		if ((p == line || p[-1] == ' ') && p[kl] == '=')
			return strtod(p + kl + 1, NULL);
	}
	return -1;
}

/*
 * perftest on the same device, through test/rxe/perftest-baseline.sh, whose lines
 * look like "perftest read_lat 4096 iters=.. min_us=.. p50_us=.. p99_us=.. max_us=.."
 * and "perftest read_bw 4096 ... MBps=.." (perftest's MB is 2^20 bytes). perftest
 * reports no 90th percentile: that column stays empty for it.
 */
static int run_perftest_baseline(const struct opts *o, struct result *res)
{
	char line[1024];
	FILE *f = popen(o->perftest_cmd, "r");
	int got = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long size;
		int s;

		fputs(line, stdout);
		if (sscanf(line, "perftest read_lat %lu", &size) == 1) {
			s = size == 4096 ? 0 : size == 65536 ? 1 : -1;
			if (s < 0 || field(line, "p50_us") < 0)
				continue;
			res->lat[s] = (struct lat_stats){
			    .p50 = field(line, "p50_us"),
			    .p90 = -1,
			    .p99 = field(line, "p99_us"),
			    .max = field(line, "max_us"),
			    .min = field(line, "min_us"),
			    .n = (size_t)field(line, "iters"),
			};
			got |= 1 << s;
		} else if (sscanf(line, "perftest read_bw %lu", &size) == 1) {
			s = size == 4096 ? 0 : size == 65536 ? 1 : -1;
			if (s < 0 || field(line, "MBps") < 0)
				continue;
			res->bw_mbps[s] = field(line, "MBps") * 1.048576;
			got |= 4 << s;
		}
	}
	if (pclose(f) != 0 || (got & 3) != 3) {
		fprintf(stderr,
		        "read_lat: the perftest baseline (%s) failed or printed no latency\n",
		        o->perftest_cmd);
		return -EIO;
	}
	res->have_bw = (got & 12) == 12;
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: read_lat [--transport fabric|verbs] [--provider tcp|verbs] [--addr IPV4]\n"
	        "                [--token-file F] [--iters N] [--bw-ms MS]\n"
	        "                [--baseline tcp|perftest|none] [--perftest-cmd CMD]\n");
	exit(2);
}

/* A throw-away token, so the benchmark runs with nothing set up. */
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
	struct opts o = {.addr = "127.0.0.1", .iters = 5000, .bw_ms = 2000};
	struct result ours = {0}, base = {0};
	char token[64] = "", label[64];
	const char *bname = NULL;
	int ret;

	o.tp.transport = "fabric";
	/* options come in pairs: name, value */
	for (int i = 1; i < argc; i += 2) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v)
			usage();
		if (!strcmp(a, "--transport"))
			o.tp.transport = v;
		else if (!strcmp(a, "--provider"))
			o.tp.provider = v;
		else if (!strcmp(a, "--addr"))
			o.addr = v;
		else if (!strcmp(a, "--token-file"))
			o.tp.token_file = v;
		else if (!strcmp(a, "--iters"))
			o.iters = atoi(v);
		else if (!strcmp(a, "--bw-ms"))
			o.bw_ms = atoi(v);
		else if (!strcmp(a, "--baseline"))
			o.baseline = v;
		else if (!strcmp(a, "--perftest-cmd"))
			o.perftest_cmd = v;
		else
			usage();
	}
	if (o.iters < 100 || o.bw_ms < 100)
		usage();
	if (!o.baseline)
		o.baseline = !strcmp(o.tp.transport, "verbs") ? "perftest" : "tcp";
	if (!strcmp(o.baseline, "perftest") && !o.perftest_cmd)
		o.perftest_cmd = "test/rxe/perftest-baseline.sh";
	if (!o.tp.token_file) {
		if (make_token(token, sizeof(token)) < 0) {
			perror("read_lat: token");
			return 1;
		}
		o.tp.token_file = token;
	}
	signal(SIGPIPE, SIG_IGN);

	printf("read_lat: transport %s%s%s, %s, %d samples per size, bandwidth at %d in flight\n",
	       o.tp.transport, o.tp.provider ? "/" : "", o.tp.provider ? o.tp.provider : "", o.addr,
	       o.iters, BW_DEPTH);
	fflush(stdout);
	ret = run_ours(&o, &ours);
	if (ret == 0) {
		if (!strcmp(o.baseline, "tcp")) {
			bname = "tcp page server";
			ret = run_tcp_baseline(&o, &base);
		} else if (!strcmp(o.baseline, "perftest")) {
			bname = "perftest";
			ret = run_perftest_baseline(&o, &base);
		} else {
			bname = NULL;
		}
	}
	if (token[0])
		unlink(token);
	if (ret < 0)
		return 1;

	printf("\n");
	lat_print_header();
	for (int s = 0; s < 2; s++) {
		snprintf(label, sizeof(label), "%s %s READ %zuKiB", o.tp.transport,
		         o.tp.provider ? o.tp.provider : "", sizes[s] >> 10);
		lat_print_row(label, &ours.lat[s]);
		if (bname) {
			snprintf(label, sizeof(label), "%s %zuKiB", bname, sizes[s] >> 10);
			lat_print_row(label, &base.lat[s]);
		}
	}
	printf("\n%-34s %12s %12s\n", "bandwidth (16 in flight)", "ours MB/s", "baseline MB/s");
	for (int s = 0; s < 2; s++)
		printf("%-34zu %12.1f %12.1f\n", sizes[s], ours.bw_mbps[s],
		       base.have_bw ? base.bw_mbps[s] : 0.0);
	if (!bname)
		return 0;
	double r64 = ours.lat[1].p50 / base.lat[1].p50, r4 = ours.lat[0].p50 / base.lat[0].p50;
	const double target = !strcmp(o.tp.transport, "verbs") ? 1.1 : 1.2;

	printf("ratio p50 64KiB ours/%s: %.2f\n", bname, r64);
	printf("ratio p50 4KiB ours/%s: %.2f (target <= %.1f)\n", bname, r4, target);
	return 0;
}
