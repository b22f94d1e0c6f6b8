/*
 * The logger behind include/rdmig/log.h: one line per message on stderr, with a
 * monotonic timestamp, the process tag, subsystem, function and line. A line is
 * formatted into one buffer and written with one write(2), so lines from the
 * threads of one process never interleave.
 */
#include "rdmig/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = -1;
static char log_tag[32];

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void rdmig_log_set_level(enum rdmig_log_level level)
{
	atomic_store(&log_level, (int)level);
}

enum rdmig_log_level rdmig_log_get_level(void)
{
	int l = atomic_load(&log_level);

	if (l < 0) {
		const char *env = getenv("RDMIG_LOG_LEVEL");

		l = RDMIG_LOG_INFO;
		if (env && *env >= '0' && *env <= '3')
			l = *env - '0';
		atomic_store(&log_level, l);
	}
	return (enum rdmig_log_level)l;
}

void rdmig_log_set_tag(const char *tag)
{
	snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "");
}

void rdmig_log_emit(enum rdmig_log_level level, const char *subsys, const char *func, int line,
                    const char *fmt, ...)
{
	int saved = errno;
	char buf[1024];
	struct timespec ts;
	va_list ap;
	int n;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	n = snprintf(buf, sizeof(buf), "[%5lld.%06ld] %s%s%s %s %s:%d: ", (long long)ts.tv_sec,
	             ts.tv_nsec / 1000, log_tag[0] ? log_tag : "", log_tag[0] ? " " : "",
	             level_names[level > RDMIG_LOG_DEBUG ? RDMIG_LOG_DEBUG : level], subsys, func,
	             line);
	if (n < 0)
		n = 0;
	if ((size_t)n < sizeof(buf)) {
		va_start(ap, fmt);
		int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += m;
	}
	if ((size_t)n >= sizeof(buf) - 1)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
	(void)w;
	errno = saved;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rdmig_laps_start(struct rdmig_laps *l)
{
	l->t0 = mono_ns();
	l->at = 0;
	l->line[0] = '\0';
}

void rdmig_laps_mark(struct rdmig_laps *l, const char *step)
{
	uint64_t t = mono_ns();
	int n;

	if (l->at < sizeof(l->line)) {
		n = snprintf(l->line + l->at, sizeof(l->line) - l->at, "%s%s %.2f",
		             l->at ? ", " : "", step, (double)(t - l->t0) / 1e6);
		if (n > 0)
			l->at += (size_t)n;
	}
	l->t0 = t;
}
