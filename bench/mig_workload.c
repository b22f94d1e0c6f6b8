/*
 * mig_workload: the process bench/migrate.sh migrates. It measures itself.
 *
 *   mig_workload --mb N --pattern seq|random|zipf --seconds S [--dirty-pct P]
 *
 * Allocates N MiB and writes every page, prints "ready", then for S seconds, or
 * until SIGUSR1 (bench/migrate.sh sends it once the migration is over), touches
 * pages in the given order (reading a word and writing one: every page it
 * touches is dirtied), reading CLOCK_REALTIME between touches. Every 10 ms it
 * prints "t <realtime_ns> ops <n>" (throughput over time). --dirty-pct limits
 * writes to that share of the pages per second (the rest is read), for the
 * pre-copy convergence workload. At the end it prints
 *     switch <ns> at <realtime_ns> the pause across the migration: the last touch
 *                                  on the source to the first on the destination
 *                                  ("switch none" if it never moved)
 *     gap <ns> at <realtime_ns>    the longest pause between two touches anywhere
 *     check ok|BAD <n>             every page still holds what was written
 * The switch is the pause after which getpid() answers another pid (the process
 * gets a new one on the destination): it spans the freeze, the restore and the
 * fetch of the first page touched after it. The longest pause may be another
 * one: on a machine with fewer cores than busy threads, the scheduler's time
 * slices while the source copies are longer than the switch.
 * Both hosts here share one clock (realtime, as the design notes require).
 */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PG 4096u

static volatile sig_atomic_t stop;

static void on_usr1(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Zipf(0.99) over n items by inverse transform on a precomputed CDF sample. */
static uint64_t zipf(uint64_t *s, uint64_t n, const double *cdf, unsigned steps)
{
	double u = (double)(rng(s) >> 11) / 9007199254740992.0;
	unsigned lo = 0, hi = steps - 1;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;

		if (cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* the bucket's pages, spread so hot pages are not neighbours */
	return ((uint64_t)lo * n / steps + rng(s) % (n / steps + 1)) * 2654435761u % n;
}

int main(int argc, char **argv)
{
	const char *pattern = "seq";
	long mb = 256, seconds = 10, dirty_pct = 100;
	uint64_t *buf, npages, seed = 88172645463325252ull, ops = 0, pos = 0;
	uint64_t t0, last, next_print, gap = 0, gap_at = 0, bad = 0, wbudget = 0, wtick;
	uint64_t sw = 0, sw_at = 0;
	const long pid0 = syscall(SYS_getpid);
	double *cdf = NULL;
	unsigned steps = 4096;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mb"))
			mb = strtol(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--pattern"))
			pattern = argv[i + 1];
		else if (!strcmp(argv[i], "--seconds"))
			seconds = strtol(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--dirty-pct"))
			dirty_pct = strtol(argv[i + 1], NULL, 10);
		else {
			fprintf(stderr, "mig_workload: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (mb <= 0 || seconds <= 0 || dirty_pct < 0 || dirty_pct > 100)
		return 2;
	npages = (uint64_t)mb * (1u << 20) / PG;
	buf = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	/* Each page checks itself: word 0 is its index, word 1 counts its writes,
	 * word 2 is ~word 1. A page zero-filled or stale by a whole page fails. */
	for (uint64_t p = 0; p < npages; p++) {
		buf[p * 512] = p;
		buf[p * 512 + 1] = 0;
		buf[p * 512 + 2] = ~0ull;
	}
	if (!strcmp(pattern, "zipf")) {
		double sum = 0, run = 0;

		cdf = malloc(steps * sizeof(*cdf));
		if (!cdf)
			return 1;
		for (unsigned k = 0; k < steps; k++)
			sum += 1.0 / pow(k + 1, 0.99);
		for (unsigned k = 0; k < steps; k++) {
			run += 1.0 / pow(k + 1, 0.99) / sum;
			cdf[k] = run;
		}
	} else if (strcmp(pattern, "seq") && strcmp(pattern, "random")) {
		fprintf(stderr, "mig_workload: --pattern seq|random|zipf\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (signal(SIGUSR1, on_usr1) == SIG_ERR)
		return 1;
	printf("ready %llu pages\n", (unsigned long long)npages);
	t0 = last = now_ns();
	next_print = t0 + 10000000;
	/* writes allowed per millisecond for --dirty-pct */
	wtick = t0;
	while (!stop && last - t0 < (uint64_t)seconds * 1000000000u) {
		uint64_t p, now;

		if (pattern[0] == 's')
			p = pos++ % npages;
		else if (pattern[0] == 'r')
			p = rng(&seed) % npages;
		else
			p = zipf(&seed, npages, cdf, steps);
		if (buf[p * 512] != p || buf[p * 512 + 2] != ~buf[p * 512 + 1])
			bad++;
		now = now_ns();
		if (now - wtick >= 1000000) {
			/* refill the write budget every ms: dirty_pct% of the pages a second */
			wbudget = npages * (uint64_t)dirty_pct / 100 / 1000 + 1;
			wtick = now;
		}
		if (dirty_pct == 100 || wbudget) {
			buf[p * 512 + 1]++;
			buf[p * 512 + 2] = ~buf[p * 512 + 1];
			if (wbudget)
				wbudget--;
		}
		ops++;
		/* Only after a pause: a syscall per touch would slow the touches (and
		 * glibc's getpid() may not ask the kernel). If the call itself took
		 * longer than the pause before it, the process was frozen inside it
		 * (seen once in ~40 runs: a 0.2 ms pause, then the getpid ran on the
		 * destination); the pause across the switch is then the next one. */
		if (now - last > 200000 && !sw_at && syscall(SYS_getpid) != pid0 &&
		    now_ns() - now < now - last) {
			sw = now - last;
			sw_at = now;
		}
		if (now - last > gap) {
			gap = now - last;
			gap_at = now;
		}
		last = now;
		if (now >= next_print) {
			printf("t %llu ops %llu\n", (unsigned long long)now,
			       (unsigned long long)ops);
			next_print = now + 10000000;
		}
	}
	for (uint64_t p = 0; p < npages; p++)
		if (buf[p * 512] != p || buf[p * 512 + 2] != ~buf[p * 512 + 1])
			bad++;
	if (sw_at)
		printf("switch %llu at %llu\n", (unsigned long long)sw, (unsigned long long)sw_at);
	else
		printf("switch none\n");
	printf("gap %llu at %llu\n", (unsigned long long)gap, (unsigned long long)gap_at);
	printf("check %s %llu\n", bad ? "BAD" : "ok", (unsigned long long)bad);
	return bad ? 1 : 0;
}
