/*
 * A small test harness shared by rdmig's test programs.
 *
 * A test program runs named cases; a failed check records the failure, says
 * where and why, and the case goes on (it does not exit on the first failure), so
 * one run shows everything that is wrong. The program ends with the line
 * "N passed, N failed" and exits 0 only when nothing failed. A case that cannot
 * run on this machine says why and the program exits 77 (CTest's skip code) —
 * but CI always runs every case somewhere (tcp on the host, verbs in the rxe
 * guest), and a missing transport there is a failure, not a skip.
 */
#ifndef RDMIG_TEST_HELPERS_H
#define RDMIG_TEST_HELPERS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct t_state {
	int checks_failed; /* in the current case */
	int passed, failed;
	const char *only; /* run only the case with this name */
};

extern struct t_state t_state;

#define T_CHECK(cond, ...)                                                                         \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			t_state.checks_failed++;                                                   \
			fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);          \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
		}                                                                                  \
	} while (0)

/* An int result that must be 0 (or >= 0); prints the errno name otherwise. */
#define T_OK(expr)                                                                                 \
	do {                                                                                       \
		int t_ret_ = (expr);                                                               \
		T_CHECK(t_ret_ >= 0, "%s returned %d (%s)", #expr, t_ret_,                         \
		        strerror(t_ret_ < 0 ? -t_ret_ : 0));                                       \
	} while (0)

#define T_RUN(fn)                                                                                  \
	do {                                                                                       \
		if (t_state.only && strcmp(t_state.only, #fn))                                     \
			break;                                                                     \
		t_state.checks_failed = 0;                                                         \
		struct timespec t_a_, t_b_;                                                        \
		clock_gettime(CLOCK_MONOTONIC, &t_a_);                                             \
		fprintf(stderr, "-- %s\n", #fn);                                                   \
		fn();                                                                              \
		clock_gettime(CLOCK_MONOTONIC, &t_b_);                                             \
		double t_s_ = (double)(t_b_.tv_sec - t_a_.tv_sec) +                                \
		              (double)(t_b_.tv_nsec - t_a_.tv_nsec) / 1e9;                         \
		if (t_state.checks_failed) {                                                       \
			t_state.failed++;                                                          \
			printf("not ok %s (%.1fs)\n", #fn, t_s_);                                  \
		} else {                                                                           \
			t_state.passed++;                                                          \
			printf("ok %s (%.1fs)\n", #fn, t_s_);                                      \
		}                                                                                  \
		fflush(stdout);                                                                    \
	} while (0)

#define T_DEFINE_STATE struct t_state t_state

static inline int t_finish(void)
{
	printf("%d passed, %d failed\n", t_state.passed, t_state.failed);
	return t_state.failed ? 1 : 0;
}

static inline double t_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A number from /proc/PID/status: the field named key ("SigIgn", "Umask"),
 * read in base (16 for masks, 8 for a umask); def when it is not there. */
static inline unsigned long long t_proc_status(int pid, const char *key, int base,
                                               unsigned long long def)
{
	char path[64], line[256];
	size_t klen = strlen(key);
	unsigned long long v = def;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			v = strtoull(line + klen + 1, NULL, base);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

#endif
