/*
 * Percentiles and histograms for the benchmarks. Percentiles are read off the
 * sorted samples (nearest rank), never averaged: a tail is what users feel.
 */
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double rank(const uint64_t *s, size_t n, double q)
{
	size_t i = (size_t)(q * (double)n);

	if (i >= n)
		i = n - 1;
	return (double)s[i] / 1000.0;
}

void lat_compute(uint64_t *ns, size_t n, struct lat_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (!n)
		return;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	st->n = n;
	st->min = (double)ns[0] / 1000.0;
	st->p50 = rank(ns, n, 0.50);
	st->p90 = rank(ns, n, 0.90);
	st->p99 = rank(ns, n, 0.99);
	st->max = (double)ns[n - 1] / 1000.0;
}

void lat_print_header(void)
{
	printf("%-34s %7s %9s %9s %9s %9s\n", "what", "n", "p50 us", "p90 us", "p99 us", "max us");
}

void lat_print_row(const char *label, const struct lat_stats *st)
{
	char p90[16] = "-"; /* not every baseline reports it */

	if (st->p90 >= 0)
		snprintf(p90, sizeof(p90), "%.1f", st->p90);
	printf("%-34s %7zu %9.1f %9s %9.1f %9.1f\n", label, st->n, st->p50, p90, st->p99, st->max);
}

void lat_print_histogram(const char *label, const uint64_t *s, size_t n)
{
	size_t counts[40] = {0}, most = 0;
	int lo = 39, hi = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t us = s[i] / 1000;
		int b = 0;

		while (us > 1 && b < 39) {
			us >>= 1;
			b++;
		}
		counts[b]++;
		if (b < lo)
			lo = b;
		if (b > hi)
			hi = b;
	}
	for (int b = lo; b <= hi; b++)
		if (counts[b] > most)
			most = counts[b];
	printf("histogram %s (us):\n", label);
	for (int b = lo; b <= hi && n; b++) {
		int bar = most ? (int)(counts[b] * 50 / most) : 0;

		printf("  %7llu-%-7llu %7zu |%.*s\n", b ? 1ull << b : 0ull, (1ull << (b + 1)) - 1,
		       counts[b], bar, "##################################################");
	}
}
