/*
 * Logging for every part of rdmig.
 *
 * Each .c file defines LOG_SUBSYS before including this header; the macros add
 * the subsystem, function and line, keep errno intact for the caller, and append
 * the newline themselves. Debug logs on the data path compile out unless the
 * build defines RDMIG_DEBUG_LOG, so the fault path pays nothing for them.
 *
 * Errors in rdmig: every int function returns 0 (or a count) on success and
 * -errno on failure. errno is read right after the libc call that failed and
 * turned into a return value there; backends translate their library's own
 * convention (ibverbs' positive errno, rdmacm's -1/errno, libfabric's -FI_E*)
 * at their border, so nothing above them sees anything else.
 */
#ifndef RDMIG_LOG_H
#define RDMIG_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum rdmig_log_level {
	RDMIG_LOG_ERR = 0,
	RDMIG_LOG_WARN = 1,
	RDMIG_LOG_INFO = 2,
	RDMIG_LOG_DEBUG = 3,
};

/* Messages above this level are dropped. Default: INFO, or $RDMIG_LOG_LEVEL. */
void rdmig_log_set_level(enum rdmig_log_level level);
enum rdmig_log_level rdmig_log_get_level(void);

/* A short tag ("src", "dst", a pid) printed on every line of this process. */
void rdmig_log_set_tag(const char *tag);

void rdmig_log_emit(enum rdmig_log_level level, const char *subsys, const char *func, int line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Laps: how long each step of a sequence took, gathered into one line
 * ("name 0.12, name 3.40" in ms) for a log message. Cheap enough to run always. */
struct rdmig_laps {
	uint64_t t0; /* CLOCK_MONOTONIC ns at the last mark */
	size_t at;
	char line[512];
};
void rdmig_laps_start(struct rdmig_laps *l);
void rdmig_laps_mark(struct rdmig_laps *l, const char *step);

#ifndef LOG_SUBSYS
#define LOG_SUBSYS "rdmig"
#endif

#define rdmig_log_at(lvl, ...)                                                                     \
	do {                                                                                       \
		if ((lvl) <= rdmig_log_get_level())                                                \
			rdmig_log_emit((lvl), LOG_SUBSYS, __func__, __LINE__, __VA_ARGS__);        \
	} while (0)

#define pr_err(...) rdmig_log_at(RDMIG_LOG_ERR, __VA_ARGS__)
#define pr_warn(...) rdmig_log_at(RDMIG_LOG_WARN, __VA_ARGS__)
#define pr_info(...) rdmig_log_at(RDMIG_LOG_INFO, __VA_ARGS__)
#ifdef RDMIG_DEBUG_LOG
#define pr_debug(...) rdmig_log_at(RDMIG_LOG_DEBUG, __VA_ARGS__)
#else
#define pr_debug(...)                                                                              \
	do {                                                                                       \
		if (0)                                                                             \
			rdmig_log_emit(RDMIG_LOG_DEBUG, LOG_SUBSYS, __func__, __LINE__,            \
			               __VA_ARGS__);                                               \
	} while (0)
#endif

#endif /* RDMIG_LOG_H */
