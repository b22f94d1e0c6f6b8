/*
 * counter: a workload that visibly keeps counting across a migration.
 *
 *   counter [--mb N] [--ticks N] [--interval-ms N] [--touch-pages N]
 *
 * Allocates N MiB (default 64), fills every page with a pattern derived from its
 * index, then prints one line per tick:
 *     tick 12 sum 0x... gap_us 10012
 * where each tick rewrites --touch-pages pages (so pages keep changing during the
 * copy) and `sum` is a checksum of the whole buffer, so a single wrong or zero
 * page anywhere changes the line. gap_us is the CLOCK_REALTIME time since the
 * previous tick: across a migration the largest gap minus the interval is the
 * downtime as the process itself saw it. Exits 0 after --ticks ticks (default
 * 100), 1 if its own memory check failed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

int main(int argc, char **argv)
{
	long mb = 64, ticks = 100, interval_ms = 10, touch = 16;
	uint64_t *buf, npages, words, prev;

	for (int i = 1; i + 1 < argc; i += 2) {
		long v = strtol(argv[i + 1], NULL, 10);

		if (!strcmp(argv[i], "--mb"))
			mb = v;
		else if (!strcmp(argv[i], "--ticks"))
			ticks = v;
		else if (!strcmp(argv[i], "--interval-ms"))
			interval_ms = v;
		else if (!strcmp(argv[i], "--touch-pages"))
			touch = v;
		else {
			fprintf(stderr, "counter: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (mb <= 0 || ticks < 0 || interval_ms < 0 || touch < 0)
		return 2;
	npages = (uint64_t)mb * 256;
	words = npages * 512;
	buf = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	for (uint64_t w = 0; w < words; w++)
		buf[w] = mix(w + 1);
	setvbuf(stdout, NULL, _IOLBF, 0);
	prev = now_us();
	for (long t = 0; t < ticks; t++) {
		uint64_t sum = 0, now;
		struct timespec d = {interval_ms / 1000, (interval_ms % 1000) * 1000000};

		for (long k = 0; k < touch; k++) {
			uint64_t pg = mix((uint64_t)t * 1000003u + (uint64_t)k) % npages;

			buf[pg * 512 + (uint64_t)t % 512] += (uint64_t)t;
		}
		for (uint64_t w = 0; w < words; w += 8)
			sum = mix(sum ^ buf[w] ^ buf[w + 3]);
		now = now_us();
		printf("tick %ld sum %016llx gap_us %llu\n", t, (unsigned long long)sum,
		       (unsigned long long)(now - prev));
		prev = now;
		nanosleep(&d, NULL);
	}
	return 0;
}
