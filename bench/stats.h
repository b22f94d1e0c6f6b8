/* Latency samples and how the benchmarks print them (bench/stats.c). */
#ifndef RDMIG_BENCH_STATS_H
#define RDMIG_BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

struct lat_stats {
	double p50, p90, p99, max, min; /* microseconds */
	size_t n;
};

/* Sort the samples (nanoseconds) in place and fill st. */
void lat_compute(uint64_t *ns, size_t n, struct lat_stats *st);
/* One table row: "label  n  p50  p90  p99  max" (microseconds). */
void lat_print_header(void);
void lat_print_row(const char *label, const struct lat_stats *st);
/* A log2 histogram of sorted samples, one line per bucket with a bar. */
void lat_print_histogram(const char *label, const uint64_t *sorted_ns, size_t n);
uint64_t now_ns(void);

#endif
