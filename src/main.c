/*
 * rdma_migrate: the command line. Parses options into struct rdmig_migrate_opts
 * and runs one side (rdmig/migrate.h); every option is in docs/rdma_migrate.1.
 */
#define LOG_SUBSYS "main"
#include "rdmig/inject.h"
#include "rdmig/log.h"
#include "rdmig/migrate.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RDMIG_VERSION "0.4"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: rdma_migrate dst --listen ADDR:PORT --token-file FILE [options]\n"
	        "       rdma_migrate src --pid PID --to ADDR:PORT --token-file FILE [options]\n"
	        "\n"
	        "Live-migrates a running process from this host (src) to another (dst) with\n"
	        "post-copy paging: the process stops for milliseconds and runs on the\n"
	        "destination before its memory has arrived; each page it touches first is\n"
	        "fetched with a one-sided RDMA READ.\n"
	        "\n"
	        "both sides:\n"
	        "  --transport fabric|verbs  fabric: libfabric (default); verbs: rdma-core\n"
	        "  --provider NAME           libfabric provider: tcp (default), verbs\n"
	        "  --token-file FILE         shared secret (mode 0600, >= 16 bytes), the same\n"
	        "                            on both hosts\n"
	        "  --timeout-ms N            connect and per-step waits (default 10000/60000)\n"
	        "  --stats-json FILE         write the summary as JSON\n"
	        "  --retry-s N               after the switch, wait N s for a lost link to come\n"
	        "                            back before declaring failure (default 30; 0: never)\n"
	        "  -v, --verbose             log every state change\n"
	        "dst:\n"
	        "  --listen ADDR:PORT        where the source connects\n"
	        "  --stdin/--stdout/--stderr FILE  where the process's terminal or pipe\n"
	        "                            stdio goes (default: this command's own)\n"
	        "  --wait                    after the migration, wait for the process to exit\n"
	        "  --no-prefetch             demand faults only\n"
	        "src:\n"
	        "  --pid PID                 the process to move (its threads too; see the man\n"
	        "                            page for what it must not hold)\n"
	        "  --to ADDR:PORT            the destination\n"
	        "  --mode postcopy|precopy|hybrid  (default postcopy; see the man page)\n"
	        "\n"
	        "exit: 0 migrated; 1 failed before the switch, the original runs on here;\n"
	        "      2 bad usage or a process this version refuses, nothing touched;\n"
	        "      3 failed after the switch (src: original left stopped)\n");
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

enum {
	OPT_TRANSPORT = 256,
	OPT_PROVIDER,
	OPT_TOKEN,
	OPT_TIMEOUT,
	OPT_STATS,
	OPT_LISTEN,
	OPT_STDIN,
	OPT_STDOUT,
	OPT_STDERR,
	OPT_WAIT,
	OPT_NO_PREFETCH,
	OPT_PID,
	OPT_TO,
	OPT_MODE,
	OPT_RETRY,
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"transport", required_argument, NULL, OPT_TRANSPORT},
	    {"provider", required_argument, NULL, OPT_PROVIDER},
	    {"token-file", required_argument, NULL, OPT_TOKEN},
	    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
	    {"stats-json", required_argument, NULL, OPT_STATS},
	    {"listen", required_argument, NULL, OPT_LISTEN},
	    {"stdin", required_argument, NULL, OPT_STDIN},
	    {"stdout", required_argument, NULL, OPT_STDOUT},
	    {"stderr", required_argument, NULL, OPT_STDERR},
	    {"wait", no_argument, NULL, OPT_WAIT},
	    {"no-prefetch", no_argument, NULL, OPT_NO_PREFETCH},
	    {"pid", required_argument, NULL, OPT_PID},
	    {"to", required_argument, NULL, OPT_TO},
	    {"mode", required_argument, NULL, OPT_MODE},
	    {"retry-s", required_argument, NULL, OPT_RETRY},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	struct rdmig_migrate_opts o = {.tp = {.transport = "fabric", .provider = "tcp"},
	                               .retry_ms = 30000};
	const char *side;
	bool is_src;
	long v;
	int c;

	if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "--inject-points")) {
		for (int i = 0; rdmig_inject_points[i]; i++)
			puts(rdmig_inject_points[i]);
		return 0;
	}
	if (argc >= 2 && (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version"))) {
		printf("rdma_migrate %s\n", RDMIG_VERSION);
		return 0;
	}
	if (argc < 2 || (strcmp(argv[1], "src") && strcmp(argv[1], "dst"))) {
		usage(stderr);
		return RDMIG_EXIT_USAGE;
	}
	/* State changes are INFO: shown with -v (or RDMIG_LOG_LEVEL), not by default. */
	if (!getenv("RDMIG_LOG_LEVEL"))
		rdmig_log_set_level(RDMIG_LOG_WARN);
	side = argv[1];
	is_src = !strcmp(side, "src");
	optind = 2;
	while ((c = getopt_long(argc, argv, "vhV", opts, NULL)) != -1) {
		switch (c) {
		case OPT_TRANSPORT:
			if (strcmp(optarg, "fabric") && strcmp(optarg, "verbs")) {
				fprintf(stderr, "rdma_migrate: --transport is fabric or verbs\n");
				return RDMIG_EXIT_USAGE;
			}
			o.tp.transport = optarg;
			break;
		case OPT_PROVIDER:
			o.tp.provider = optarg;
			break;
		case OPT_TOKEN:
			o.tp.token_file = optarg;
			break;
		case OPT_TIMEOUT:
			if (parse_int(optarg, 1, INT_MAX, &v) < 0) {
				fprintf(stderr,
				        "rdma_migrate: --timeout-ms wants a positive number\n");
				return RDMIG_EXIT_USAGE;
			}
			o.timeout_ms = (int)v;
			break;
		case OPT_STATS:
			o.stats_json = optarg;
			break;
		case OPT_LISTEN:
		case OPT_TO:
			o.addr = optarg;
			break;
		case OPT_STDIN:
		case OPT_STDOUT:
		case OPT_STDERR:
			o.stdio[c - OPT_STDIN] = optarg;
			break;
		case OPT_WAIT:
			o.wait = true;
			break;
		case OPT_NO_PREFETCH:
			o.no_prefetch = true;
			break;
		case OPT_RETRY:
			if (parse_int(optarg, 0, 86400, &v) < 0) {
				fprintf(stderr,
				        "rdma_migrate: --retry-s wants seconds (0..86400)\n");
				return RDMIG_EXIT_USAGE;
			}
			o.retry_ms = (int)v * 1000;
			break;
		case OPT_MODE:
			if (!strcmp(optarg, "postcopy"))
				o.mode = RDMIG_MODE_POSTCOPY;
			else if (!strcmp(optarg, "precopy"))
				o.mode = RDMIG_MODE_PRECOPY;
			else if (!strcmp(optarg, "hybrid"))
				o.mode = RDMIG_MODE_HYBRID;
			else {
				fprintf(stderr,
				        "rdma_migrate: --mode is postcopy, precopy or hybrid\n");
				return RDMIG_EXIT_USAGE;
			}
			break;
		case OPT_PID:
			if (parse_int(optarg, 1, INT_MAX, &v) < 0) {
				fprintf(stderr, "rdma_migrate: --pid wants a process id\n");
				return RDMIG_EXIT_USAGE;
			}
			o.pid = (pid_t)v;
			break;
		case 'v':
			rdmig_log_set_level(RDMIG_LOG_INFO);
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("rdma_migrate %s\n", RDMIG_VERSION);
			return 0;
		default:
			usage(stderr);
			return RDMIG_EXIT_USAGE;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "rdma_migrate %s: unexpected argument '%s'\n", side, argv[optind]);
		return RDMIG_EXIT_USAGE;
	}
	if (!o.tp.token_file) {
		fprintf(stderr,
		        "rdma_migrate %s: --token-file is required: both hosts must hold "
		        "the same secret (e.g. head -c 32 /dev/urandom | base64 > token; "
		        "chmod 600 token)\n",
		        side);
		return RDMIG_EXIT_USAGE;
	}
	if (is_src && (!o.pid || !o.addr)) {
		fprintf(stderr, "rdma_migrate src: --pid and --to are required\n");
		return RDMIG_EXIT_USAGE;
	}
	if (!is_src && !o.addr) {
		fprintf(stderr, "rdma_migrate dst: --listen is required\n");
		return RDMIG_EXIT_USAGE;
	}
	if (!is_src && o.mode != RDMIG_MODE_POSTCOPY) {
		fprintf(stderr, "rdma_migrate dst: --mode is a source option (the destination "
		                "follows the source)\n");
		return RDMIG_EXIT_USAGE;
	}
	if (is_src && (o.wait || o.no_prefetch || o.stdio[0] || o.stdio[1] || o.stdio[2])) {
		fprintf(stderr, "rdma_migrate src: --wait, --no-prefetch and --stdin/--stdout/"
		                "--stderr are destination options\n");
		return RDMIG_EXIT_USAGE;
	}
	/* A peer that vanishes must show up as an error on the next call, not kill us
	 * halfway through a rollback. */
	signal(SIGPIPE, SIG_IGN);
	return is_src ? rdmig_src_run(&o) : rdmig_dst_run(&o);
}
