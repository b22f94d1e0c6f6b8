/*
 * Fault injection from the environment (rdmig/inject.h). The parsed settings are
 * read-only after the first call (pthread_once); the per-op call counters are
 * atomics, since the pager thread and the main thread both use the transport.
 */
#define LOG_SUBSYS "inject"
#include "rdmig/inject.h"

#include "rdmig/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_POINTS 16

const char *const rdmig_inject_points[] = {
    /* source: states, then steps */
    "src.checked", "src.connected", "src.tracking", "src.frozen", "src.sent", "src.committed",
    "src.serving", "src.capture", "src.final_copy", "src.track_files", "src.part",
    "src.early_calls", "src.want_pages",
    /* destination */
    "dst.listening", "dst.receiving", "dst.prebuild", "dst.restoring", "dst.pager", "dst.ready",
    "dst.resume", "dst.running", NULL};

static const char *const tp_ops[] = {"connect",    "accept", "mr_reg", "post_read",
                                     "post_write", "send",   "recv",   NULL};

static struct {
	char names[MAX_POINTS][32];
	int err[MAX_POINTS];
	int n;
	long tp_nth[8]; /* per tp_ops entry; 0: never */
	atomic_long tp_calls[8];
	int any;
} cfg;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void parse(void)
{
	const char *pts = getenv("RDMIG_INJECT"), *tp = getenv("RDMIG_INJECT_TP");
	char buf[512], *save = NULL;

	if (pts && strlen(pts) < sizeof(buf)) {
		strcpy(buf, pts);
		for (char *t = strtok_r(buf, ",", &save); t && cfg.n < MAX_POINTS;
		     t = strtok_r(NULL, ",", &save)) {
			char *eq = strchr(t, '=');
			int e = EIO;

			if (eq) {
				*eq = '\0';
				e = atoi(eq + 1);
				if (e <= 0 || e > 4095)
					e = EIO;
			}
			snprintf(cfg.names[cfg.n], sizeof(cfg.names[0]), "%s", t);
			cfg.err[cfg.n++] = e;
		}
	}
	if (tp && strlen(tp) < sizeof(buf)) {
		strcpy(buf, tp);
		for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			char *colon = strchr(t, ':');

			if (!colon)
				continue;
			*colon = '\0';
			for (int i = 0; tp_ops[i]; i++)
				if (!strcmp(t, tp_ops[i]))
					cfg.tp_nth[i] = atol(colon + 1);
		}
	}
	cfg.any = cfg.n > 0 || tp;
}

int rdmig_inject(const char *point)
{
	pthread_once(&once, parse);
	if (!cfg.any)
		return 0;
	for (int i = 0; i < cfg.n; i++) {
		if (!strcmp(cfg.names[i], point)) {
			pr_warn("fault injection: %s fails with %s", point, strerror(cfg.err[i]));
			return -cfg.err[i];
		}
	}
	return 0;
}

int rdmig_inject_tp(const char *op)
{
	pthread_once(&once, parse);
	if (!cfg.any)
		return 0;
	for (int i = 0; tp_ops[i]; i++) {
		if (strcmp(op, tp_ops[i]) || !cfg.tp_nth[i])
			continue;
		if (atomic_fetch_add(&cfg.tp_calls[i], 1) + 1 == cfg.tp_nth[i]) {
			pr_warn("fault injection: call %ld of %s fails", cfg.tp_nth[i], op);
			return -EIO;
		}
	}
	return 0;
}
