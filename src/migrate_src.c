/*
 * The source side of a migration: `rdma_migrate src --pid PID --to ADDR:PORT`.
 *
 *   CHECKED    the process is one this version can move (nothing touched yet)
 *   CONNECTED  the destination proved the shared secret
 *   TRACKING   mirror registered and filled while the process runs; writes tracked
 *   FROZEN     the process is stopped; image captured; changed pages copied again
 *   SENT       mirror table and image sent; waiting for the destination's READY
 *   COMMITTED  GO sent: from here on the original never runs again here
 *   SERVING    the process runs on the destination; its misses READ our mirror
 *   DONE       the destination has every page: original killed, mirror freed
 *   ROLLED_BACK  any failure up to SENT: tracking undone, the original resumed
 *   PARKED     a failure after COMMITTED: the original is left stopped (SIGSTOP)
 *
 * Before COMMITTED every failure rolls back. After it, the original must not run
 * again (its copy may be running on the destination), so it is held stopped by a
 * queued SIGSTOP that survives even this daemon's death.
 */
#define LOG_SUBSYS "src"
#include "rdmig/capture.h"
#include "rdmig/image.h"
#include "rdmig/inject.h"
#include "rdmig/log.h"
#include "rdmig/migrate.h"
#include "rdmig/mirror.h"
#include "rdmig/precopy.h"
#include "rdmig/proto.h"
#include "rdmig/tracee.h"

#include "connector.h"
#include "migrate_common.h"
#include "pagescan.h"
#include "parts.h"
#include "procfs.h"
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum src_state {
	SRC_INIT,
	SRC_CHECKED,
	SRC_TRACKING, /* the connections are made meanwhile (connector.h) */
	SRC_CONNECTED,
	SRC_FROZEN,
	SRC_SENT,
	SRC_COMMITTED,
	SRC_SERVING,
	SRC_DONE,
	SRC_ROLLED_BACK,
	SRC_PARKED,
};

static const char *const src_state_names[] = {
    "init",      "checked", "tracking", "connected",   "frozen", "sent",
    "committed", "serving", "done",     "rolled-back", "parked",
};

struct src {
	const struct rdmig_migrate_opts *o;
	enum src_state state;
	struct rdmig_conn *conn;      /* control: image and the switch messages */
	struct rdmig_conn *data;      /* the mirror's registrations and table */
	struct rdmig_connector *cn;   /* making those two, until joined */
	struct rdmig_session session; /* sent first on each connection we make */
	struct rdmig_tracee *t;
	struct rdmig_mirror *mirror;
	struct rdmig_precopy *pc;
	struct rdmig_image img;
	/* the written pages of private file mappings the LAYOUT carried: the image
	 * names those still the same instead of sending them again */
	struct rdmig_img_cow_page *lay_cow;
	uint32_t nlay_cow;
	uint8_t *msg;
	uint64_t t_start, t_freeze, t_resume, t_done; /* realtime ns */
	/* inside the downtime, for its breakdown: seized, captured, last pages
	 * copied, image sent, READY received */
	uint64_t t_seized, t_captured, t_copied, t_sent, t_ready;
	uint64_t ns_image; /* post-copy: sending the image, between capture and last copy */
	uint64_t image_bytes;
	struct rdmig_mirror_view *views; /* the mirror's final table */
	uint32_t nviews;
	/* post-copy: the anonymous mappings walked outside the freeze (parts.h) */
	struct rdmig_parts *parts;
	/* the injected calls' answers asked at the tracking start (capture.h) */
	struct rdmig_capture_early *early;
	uint32_t parts_ahead; /* sent before GO */
	bool walk_late;       /* RDMIG_HOLD=late: no walk before the first WANT */
	uint64_t quiet_until; /* the walk's quiet start after GO: only wanted parts */
	bool want_warned;     /* a WANT could not be answered (said once) */
	bool finalized;       /* rdmig_precopy_final ran in the capture's idle time */
	int idle_err;         /* what failed there */
	uint64_t t_released;  /* realtime ns: the last part sent */
	int reconnects;
	uint32_t rounds;       /* pre-copy rounds the destination pulled (0: none,
	                        * post-copy from here on, as a hybrid may decide) */
	uint64_t precopy_sent; /* pages it pulled in them */
	uint64_t settle_last;  /* pages the last settling round copied again */
	/* hybrid's rule: pages of the first copy, of those written meanwhile, and
	 * whether the tracking could tell (hybrid_line says it) */
	uint64_t hybrid_first, hybrid_written;
	bool hybrid_known;
	uint64_t done[4]; /* DONE: faults, fetched, prefetched, bytes */
	char why[512];
};

/* The one place the state changes, logged; entering a state is also a named
 * fault-injection point ("src.<state>", rdmig/inject.h). */
static int src_set_state(struct src *s, enum src_state to)
{
	char point[32];

	pr_info("%s -> %s", src_state_names[s->state], src_state_names[to]);
	s->state = to;
	snprintf(point, sizeof(point), "src.%s", src_state_names[to]);
	return rdmig_inject(point);
}

static void log_precopy(struct src *s, const char *when)
{
	struct rdmig_precopy_stats ps;

	rdmig_precopy_stats(s->pc, &ps);
	pr_info("%s: %" PRIu64 " ranges tracked, %" PRIu64 " untracked; pages copied %" PRIu64
	        ", recopied %" PRIu64 ", late %" PRIu64 ", with data %" PRIu64,
	        when, ps.ranges_tracked, ps.ranges_untracked, ps.pages_copied, ps.pages_recopied,
	        ps.pages_late, ps.pages_touched);
}

/* The runs copied since the last call, to the destination: several RUNS messages
 * for one round, the last flagged. */
static int send_runs(struct src *s, uint32_t round, uint32_t flags, uint64_t *pages)
{
	struct rdmig_run *runs;
	uint32_t n, at = 0;
	int ret = rdmig_precopy_take_runs(s->pc, &runs, &n);

	if (ret < 0)
		return ret;
	*pages = 0;
	for (uint32_t i = 0; i < n; i++)
		*pages += runs[i].pages;
	do {
		uint32_t k = n - at > RDMIG_RUNS_MAX ? RDMIG_RUNS_MAX : n - at;
		int len = rdmig_msg_encode_runs(s->msg, RDMIG_MSG_MAX, round,
		                                flags | (at + k == n ? RDMIG_RUNS_LAST : 0u),
		                                runs + at, k);

		ret = len < 0 ? len : rdmig_tp_send(s->conn, s->msg, (size_t)len);
		at += k;
	} while (ret == 0 && at < n);
	free(runs);
	return ret;
}

/*
 * Pre-copy rounds (precopy and hybrid modes), after the first copy: each round's
 * copies go to the destination as RUNS and it pulls them into its arena; the next
 * round starts once it has (ROUND_DONE), so a pull never reads a page being
 * rewritten. When to stop:
 *   precopy  the dirty set is small (<= 1% of the pages with data, or 256 pages),
 *            or stopped shrinking (a round copied >= 90% of the one before), or
 *            one more round would take the data sent past 1.4x the memory, or 30
 *            rounds: then the freeze copies the rest;
 *   hybrid   (when hybrid_worth_pulling said to pull at all) as soon as a
 *            round fails to halve the one before (pre-copy stops
 *            paying off: the pages still being written are the hot ones, better
 *            fetched on demand after the switch), or the set is small, or 5 rounds.
 */
/* How long the destination may take to pull a round of `pages`: the step
 * timeout plus 1 s per 16 MiB. A fixed 60 s failed the 4 GiB random-access
 * rounds here (page-sized READs, a new arena page each), with the destination
 * busy pulling all along; a dead one is seen by the transport anyway. */
static int round_wait_ms(int step, uint64_t pages)
{
	uint64_t ms = (uint64_t)step + pages * 4096 / (16u << 20) * 1000;

	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static int precopy_rounds(struct src *s)
{
	const struct rdmig_migrate_opts *o = s->o;
	struct rdmig_mirror_view *views;
	uint64_t prev = 0, cur = 0, sent = 0, total = 1;
	uint32_t nviews, round = 1;
	struct rdmig_msg m;
	int ret, step = o->timeout_ms > 0 ? o->timeout_ms : 60000;

	ret = rdmig_precopy_views(s->pc, &views, &nviews);
	if (ret < 0)
		return ret;
	ret = nviews ? rdmig_mirror_send(s->mirror, views, nviews) : -ENODATA;
	free(views);
	for (; ret == 0; round++) {
		ret = send_runs(s, round, 0, &cur);
		if (ret == 0)
			ret = rdmig_expect(s->conn, s->msg, RDMIG_MSG_ROUND_DONE,
			                   round_wait_ms(step, cur), &m);
		if (ret == 0 && m.u.u64[0] != round)
			ret = -EPROTO;
		if (ret < 0)
			break;
		if (round == 1)
			total = cur ? cur : 1;
		sent += cur;
		pr_info("pre-copy round %u: %" PRIu64 " pages (%" PRIu64 " sent, %" PRIu64
		        " pages with data)",
		        round, cur, sent, total);
		if (isatty(STDERR_FILENO))
			fprintf(stderr,
			        "\rpre-copy round %u: %" PRIu64 " pages dirty, %.1f MiB sent   ",
			        round, cur, (double)sent * 4096 / 1048576);
		if (round > 1 && (cur <= 256 || cur * 100 <= total)) {
			break; /* converged */
		} else if (o->mode == RDMIG_MODE_HYBRID) {
			if (round > 1 && (cur * 2 > prev || round >= 5))
				break;
		} else if (round > 1 && (cur * 10 >= prev * 9 || round >= 30 ||
		                         (sent + cur) * 10 > total * 14)) {
			break;
		}
		prev = cur;
		ret = rdmig_precopy_round(s->pc);
	}
	if (isatty(STDERR_FILENO))
		fputc('\n', stderr);
	s->rounds = round;
	s->precopy_sent = sent;
	return ret;
}

/*
 * Post-copy and hybrid: the pages written while the last copy ran (the first
 * one, or hybrid's last pulled round) are copied again at the freeze, inside the
 * downtime. Copying them again while the process still runs (into the mirror
 * only: no pull) leaves the freeze just what was written during the last,
 * shorter round. Rounds go on while each copies at most half of the one before
 * and more than 256 pages (about what the freeze copies in a fraction of a
 * millisecond), at most 8: a process that writes faster than we copy does not
 * converge, and more rounds would only cost CPU.
 *
 * After pulls (hybrid) each round's runs then go to the destination as FINAL runs:
 * its arena's copies of those pages are stale and it fetches them after the
 * switch. Without these rounds hybrid froze right after its last pull, and a
 * process writing all its memory had the freeze copy everything written during
 * that pull (256 MiB random writer: 16.5 thousand pages, a 31 ms downtime against
 * post-copy's 5.5).
 */
static int settle_rounds(struct src *s)
{
	struct rdmig_precopy_stats st;
	uint64_t prev = UINT64_MAX;

	for (int i = 0; i < 8; i++) {
		uint64_t before, cur, sent;
		int ret;

		rdmig_precopy_stats(s->pc, &st);
		before = st.pages_copied;
		ret = rdmig_precopy_round(s->pc);
		if (ret == 0 && s->rounds)
			ret = send_runs(s, s->rounds + 1, RDMIG_RUNS_FINAL, &sent);
		if (ret < 0)
			return ret;
		rdmig_precopy_stats(s->pc, &st);
		cur = st.pages_copied - before;
		pr_info("settling round %d: %" PRIu64 " pages written since copied again", i + 1,
		        cur);
		s->settle_last = cur;
		if (cur <= 256 || cur * 2 > prev)
			break;
		prev = cur;
	}
	return 0;
}

/*
 * Hybrid's rule, before any pull: pre-copy pays off for memory that stays as it
 * was once pulled. A first copy-again into the mirror (a settling round) says
 * how much the process wrote while the first copy ran. A pull takes longer than
 * that copy (1.5-3x here), so a process that wrote an eighth of its pages
 * meanwhile dirties far more of them during the pull: measured here, processes
 * writing all their memory (sequential, random, zipfian) wrote 24-48% during
 * the first copy and 47-82% during the first pull, and hybrid then sent ~2x the
 * memory and took 2.5-3x post-copy's total time for the same downtime; one
 * writing 1% of its pages a second wrote 0.1%. Above an eighth, hybrid goes on
 * as post-copy; otherwise the rounds (precopy_rounds) pull what stays put and
 * stop once a round fails to halve the one before.
 */
/* What hybrid's rule went by and where it went, for the log and the summary. */
static void hybrid_line(const struct src *s, bool pull, char *buf, size_t len)
{
	if (!s->hybrid_known)
		snprintf(buf, len,
		         "hybrid: this kernel's tracking cannot tell what was written "
		         "during the first copy: one pre-copy round, then post-copy");
	else
		snprintf(buf, len,
		         "hybrid: %" PRIu64 " of %" PRIu64
		         " pages written during the first copy: %s",
		         s->hybrid_written, s->hybrid_first,
		         pull ? "pre-copy rounds, then post-copy"
		              : "post-copy (more than an eighth: pulls would not stay current)");
}

static int hybrid_worth_pulling(struct src *s, bool *pull)
{
	struct rdmig_precopy_stats st;
	char line[160];
	int ret;

	rdmig_precopy_stats(s->pc, &st);
	s->hybrid_first = st.pages_copied;
	/* without it no round after the first copy sees a write: nothing to go
	 * by, and the one pull there can be is what hybrid always did there */
	s->hybrid_known = rdmig_precopy_sees_writes(s->pc);
	*pull = true;
	if (s->hybrid_known) {
		ret = rdmig_precopy_round(s->pc);
		if (ret < 0)
			return ret;
		rdmig_precopy_stats(s->pc, &st);
		s->hybrid_written = st.pages_copied - s->hybrid_first;
		*pull = s->hybrid_written * 8 <= s->hybrid_first;
	}
	hybrid_line(s, *pull, line, sizeof(line));
	pr_info("%s", line);
	return 0;
}

/* Nanoseconds the process's main thread has spent on a CPU (/proc/PID/schedstat),
 * or 0 when it cannot be read. */
static uint64_t cpu_ns(pid_t pid)
{
	char *buf = NULL, *end;
	uint64_t v = 0;
	size_t len;

	if (procfs_read(pid, "schedstat", 256, &buf, &len) == 0 && len) {
		v = strtoull(buf, &end, 10);
		if (end == buf || (*end != ' ' && *end != '\n'))
			v = 0;
	}
	free(buf);
	return v;
}

/* Until the process has been on a CPU since the last round, at most WARM_MS.
 *
 * Each round write-protects the pages it copied. On a shadow-paging hypervisor
 * (this project's machines: PVM) the process's first return to user mode after
 * that pays for the host's re-sync of those entries: 0.1-2.4 ms here. A process
 * that slept through the round would pay it all in the capture's first injected
 * call (started ahead of the capture's /proc reads, capture.c, which hides what
 * they take); once it has run, it pays only for its own writes since. One that
 * sleeps longer than WARM_MS is frozen anyway. What it writes meanwhile goes in
 * the last copy.
 *
 * A process found running or runnable (state R) is not waited for that way:
 * /proc/PID/schedstat moves only at a tick (4 ms), during which it dirtied
 * pages for the last copy (256 MiB random writer, 6 alternating pairs: pages
 * the freeze copied 65-184 -> 51-79, last copy 0.83 -> 0.37 ms, downtime 8.1 ->
 * 7.65 ms, medians, against freezing it at once). It is frozen at its first
 * write fault instead (RUN_WAIT_MS). */
#define WARM_MS 25
/* A running process (state R) is frozen once it has written to a page after the
 * last round (a write to a page the round protected is a minor fault, counted in
 * /proc/PID/stat), at most this long after it: the first return to user mode
 * after a round can stall it on this hypervisor (15-33 ms seen at 1-4 GiB,
 * rare), and a freeze during that stall counted the stall in the pause across
 * the switch (the last touch on the source long before the freeze). Waiting for
 * the write lets the stall end on the source while the process still runs; what
 * it writes meanwhile (a few pages: the poll is 50 us) goes in the last copy. A
 * process that runs without writing is frozen after RUN_WAIT_MS, having run. */
#define RUN_WAIT_MS 40
/* Heap made resident for the freeze (rdmig_heap_warm): the capture and the image
 * of a 1 GiB process allocate ~0.5 MiB inside it; one with many threads and
 * mappings, more. */
#define HEAP_WARM (8u << 20)

static void let_it_run(struct src *s)
{
	uint64_t t0 = rdmig_now_ns(), was = cpu_ns(s->o->pid);
	struct procfs_stat st;

	if (!was || procfs_stat(s->o->pid, &st))
		return;
	if (st.state == 'R') {
		/* Running, or in its return to user mode: wait for a write fault. */
		uint64_t flt = st.minflt;

		while (rdmig_now_ns() - t0 < RUN_WAIT_MS * 1000000ull) {
			usleep(50);
			if (procfs_stat(s->o->pid, &st) || st.minflt != flt) {
				pr_info("pid %d wrote %.2f ms after the last round", (int)s->o->pid,
				        (double)(rdmig_now_ns() - t0) / 1e6);
				return;
			}
		}
		pr_info("pid %d is running and did not write within %d ms of the last round",
		        (int)s->o->pid, RUN_WAIT_MS);
		return;
	}
	while (rdmig_now_ns() - t0 < WARM_MS * 1000000ull) {
		usleep(200);
		if (cpu_ns(s->o->pid) != was) {
			pr_info("pid %d ran %.1f ms after the last round", (int)s->o->pid,
			        (double)(rdmig_now_ns() - t0) / 1e6);
			return;
		}
	}
	pr_info("pid %d did not run within %d ms of the last round", (int)s->o->pid, WARM_MS);
}

/* The image, in IMAGE chunks. */
static int send_image(struct src *s)
{
	uint8_t *buf;
	size_t len;
	int ret;

	/* the pages the layout carried and the process has not written since (a
	 * library's data, mostly): 57 of 80 KB of a small process's image, each
	 * also a page the destination then writes inside the downtime */
	if (s->nlay_cow && !s->img.nahead) {
		ret = rdmig_image_mark_ahead(&s->img, s->lay_cow, s->nlay_cow);
		if (ret < 0) {
			pr_err("cannot compare the image with the layout: %s", strerror(-ret));
			return ret;
		}
		pr_info("pid %d: %d written file pages as the layout sent them, %u changed or new",
		        (int)s->o->pid, ret, s->img.ncow);
	}
	ret = rdmig_image_encode(&s->img, &buf, &len);

	if (ret < 0) {
		pr_err("cannot encode the image: %s", strerror(-ret));
		return ret;
	}
	s->image_bytes = len;
	ret = rdmig_send_chunks(s->conn, s->msg, RDMIG_MSG_IMAGE, buf, len);
	free(buf);
	return ret;
}

/* The process's map as it runs, so the destination builds it before the freeze
 * (rdmig_husk_prebuild): encoded and handed to the connector, which sends it as
 * soon as it is connected. Only a speed-up: a layout that cannot be read is
 * skipped; a send that fails is the connection's failure (at the join).
 * RDMIG_PREBUILD=off skips it (to measure what it saves). */
static void hand_layout(struct src *s)
{
	const char *env = getenv("RDMIG_PREBUILD");
	struct rdmig_image lay;
	uint8_t *buf = NULL;
	size_t len = 0;
	char why[256] = "";
	int ret;

	if (env && !strcmp(env, "off"))
		goto out_hand;
	ret = rdmig_capture_layout(s->o->pid, &lay, why, sizeof(why));
	if (ret < 0) {
		pr_info("pid %d: no layout sent ahead (%s)", (int)s->o->pid,
		        why[0] ? why : strerror(-ret));
		goto out_hand;
	}
	/* The brk asked at the tracking start: the prebuild then sets the mm the
	 * freeze's image most often has, and the restore skips that step. */
	(void)rdmig_capture_early_brk(s->early, &lay.mm.brk);
	ret = rdmig_image_encode(&lay, &buf, &len);
	if (ret < 0) {
		pr_info("pid %d: no layout sent ahead (cannot encode it: %s)", (int)s->o->pid,
		        strerror(-ret));
		buf = NULL;
	} else {
		pr_info("pid %d: layout to send ahead (%zu bytes, %u written file pages)",
		        (int)s->o->pid, len, lay.ncow);
		/* kept for the freeze: the destination has these bytes by then (a
		 * failed send fails the join, and the migration with it) */
		s->lay_cow = lay.cow;
		s->nlay_cow = lay.ncow;
		lay.cow = NULL;
		lay.ncow = 0;
	}
	rdmig_image_free(&lay);
out_hand:
	rdmig_connector_layout(s->cn, buf, len);
}

/* Take the connections from the connector: 0, or -errno (with say, s->why
 * then says why). */
static int connect_join(struct src *s, bool say)
{
	uint64_t t0 = rdmig_now_ns();
	int ret;

	if (!s->cn)
		return 0;
	char said[RDMIG_ERRTEXT_MAX + 1];

	ret = rdmig_connector_join(s->cn, &s->conn, &s->data, said, sizeof(said));
	s->cn = NULL;
	/* what the connector saved is the time it took less this wait */
	if (ret == 0)
		pr_info("connected; the first copy waited %.1f ms for it",
		        (double)(rdmig_now_ns() - t0) / 1e6);
	if (ret < 0 && !say)
		return ret;
	if (ret < 0 && said[0])
		snprintf(s->why, sizeof(s->why), "the destination at %s refused the migration: %s",
		         s->o->addr, said);
	else if (ret < 0 && s->data) /* both connected: the layout's send failed */
		snprintf(s->why, sizeof(s->why), "cannot send the process's layout to %s: %s",
		         s->o->addr, strerror(-ret));
	else if (ret < 0)
		snprintf(s->why, sizeof(s->why), "cannot connect to %s: %s%s", s->o->addr,
		         strerror(-ret),
		         ret == -EACCES ? " (the two sides' token files differ)" : "");
	return ret;
}

/* Undo everything before the commit: the original runs as if nothing happened. */
static int rollback(struct src *s, const char *what, int err)
{
	/* with the connections, if they were being made: the destination is told */
	if (s->cn)
		(void)connect_join(s, false);
	if (kill(s->o->pid, 0) < 0 && errno == ESRCH) {
		/* whatever failed, the real cause is this: say it in those words */
		fprintf(stderr,
		        "rdma_migrate src: pid %d exited during the migration (%s: %s); "
		        "nothing to roll back\n",
		        (int)s->o->pid, what, strerror(-err));
		if (s->conn)
			rdmig_send_error(s->conn, ESRCH, "the process exited on the source");
		rdmig_precopy_stop(s->pc);
		rdmig_tracee_kill(s->t);
		s->t = NULL;
		(void)src_set_state(s, SRC_ROLLED_BACK);
		return RDMIG_EXIT_ROLLED_BACK;
	}
	if (s->state >= SRC_COMMITTED)
		pr_info("rolling back after the commit: the destination confirmed nothing ran");
	fprintf(stderr, "rdma_migrate src: %s: %s\n", what, s->why[0] ? s->why : strerror(-err));
	if (s->conn)
		rdmig_send_error(s->conn, err, s->why[0] ? s->why : what);
	rdmig_precopy_stop(s->pc);
	if (s->t && rdmig_tracee_release(s->t, true) < 0)
		pr_err("could not resume pid %d cleanly", (int)s->o->pid);
	s->t = NULL;
	(void)src_set_state(s, SRC_ROLLED_BACK);
	fprintf(stderr, "rdma_migrate src: rolled back: pid %d keeps running here, unchanged\n",
	        (int)s->o->pid);
	return RDMIG_EXIT_ROLLED_BACK;
}

/* After the commit: never resume the original; leave it stopped for a person. */
static int park(struct src *s, const char *what, int err)
{
	fprintf(stderr, "rdma_migrate src: %s: %s\n", what, strerror(-err));
	if (s->t && rdmig_tracee_release(s->t, false) < 0)
		pr_err("could not leave pid %d stopped", (int)s->o->pid);
	s->t = NULL;
	(void)src_set_state(s, SRC_PARKED);
	fprintf(stderr,
	        "rdma_migrate src: the migration failed after the switch. pid %d is left "
	        "STOPPED here: its copy on the destination may be running or blocked. If "
	        "the destination's process is gone, resume the original with `kill -CONT "
	        "%d`; otherwise kill it.\n",
	        (int)s->o->pid, (int)s->o->pid);
	return RDMIG_EXIT_FAILED;
}

static void summary(struct src *s)
{
	struct rdmig_precopy_stats ps = {0};

	if (s->pc)
		rdmig_precopy_stats(s->pc, &ps);
	if (s->o->mode == RDMIG_MODE_HYBRID) {
		char line[160];

		hybrid_line(s, s->rounds > 0, line, sizeof(line));
		printf("rdma_migrate src: %s\n", line);
	}
	if (s->rounds)
		printf("rdma_migrate src: pre-copy: %u rounds pulled by the destination, %" PRIu64
		       " pages (%.1f MiB)\n",
		       s->rounds, s->precopy_sent, (double)s->precopy_sent * 4096 / 1048576);
	printf("rdma_migrate src: pid %d migrated: downtime %.3f ms, total %.3f s; "
	       "image %" PRIu64 " B; pages with data %" PRIu64 " (%.1f MiB), copied while "
	       "running %" PRIu64 ", again %s %" PRIu64 " (+%" PRIu64 " new); destination: %" PRIu64
	       " faults, %" PRIu64 " fetched on demand, %" PRIu64 " prefetched, %.1f MiB read\n",
	       (int)s->o->pid, (double)(s->t_resume - s->t_freeze) / 1e6,
	       (double)(s->t_done - s->t_start) / 1e9, s->image_bytes, ps.pages_touched,
	       (double)ps.pages_touched * 4096 / 1048576.0, ps.pages_copied,
	       s->parts ? "part by part outside the freeze" : "at the freeze", ps.pages_recopied,
	       ps.pages_late, s->done[0], s->done[1], s->done[2], (double)s->done[3] / 1048576.0);
	/* where the downtime went: stop every thread, capture, copy what was written
	 * since the last round, send the table and image, the destination's restore
	 * (until READY), and the commit (GO until the destination's resume) */
	uint64_t ph[6] = {s->t_seized - s->t_freeze,
	                  s->t_captured - s->t_seized,
	                  s->t_copied - s->t_captured - s->ns_image,
	                  s->t_sent - s->t_copied + s->ns_image,
	                  s->t_ready - s->t_sent,
	                  s->t_resume - s->t_ready};
	printf("rdma_migrate src: downtime: stop %.2f, capture %.2f, last copy %.2f, send %.2f, "
	       "destination restore %.2f, commit %.2f ms\n",
	       (double)ph[0] / 1e6, (double)ph[1] / 1e6, (double)ph[2] / 1e6, (double)ph[3] / 1e6,
	       (double)ph[4] / 1e6, (double)ph[5] / 1e6);
	fflush(stdout);
	if (s->o->stats_json) {
		FILE *f = fopen(s->o->stats_json, "we");
		/* what hybrid's rule went by; -1 where it had nothing (not hybrid, or a
		 * kernel whose tracking cannot tell) */
		int64_t hybrid_written = s->o->mode == RDMIG_MODE_HYBRID && s->hybrid_known
		                             ? (int64_t)s->hybrid_written
		                             : -1;

		if (!f) {
			pr_err("cannot write %s: %s", s->o->stats_json, strerror(errno));
			return;
		}
		fprintf(f,
		        "{\"side\":\"src\",\"pid\":%d,\"downtime_ns\":%" PRIu64
		        ",\"freeze_at_ns\":%" PRIu64 ",\"resume_at_ns\":%" PRIu64
		        ",\"total_ns\":%" PRIu64 ",\"image_bytes\":%" PRIu64
		        ",\"pages_touched\":%" PRIu64 ",\"pages_copied\":%" PRIu64
		        ",\"pages_recopied\":%" PRIu64 ",\"pages_late\":%" PRIu64
		        ",\"faults\":%" PRIu64 ",\"fetched\":%" PRIu64 ",\"prefetched\":%" PRIu64
		        ",\"bytes_read\":%" PRIu64 ",\"rounds\":%u,\"precopy_pages\":%" PRIu64
		        ",\"hybrid_written\":%" PRId64 ",\"calls_asked_early\":%s"
		        ",\"downtime_phases_ns\":{\"stop\":%" PRIu64 ",\"capture\":%" PRIu64
		        ",\"last_copy\":%" PRIu64 ",\"send\":%" PRIu64 ",\"restore\":%" PRIu64
		        ",\"commit\":%" PRIu64 "}}\n",
		        (int)s->o->pid, s->t_resume - s->t_freeze, s->t_freeze, s->t_resume,
		        s->t_done - s->t_start, s->image_bytes, ps.pages_touched, ps.pages_copied,
		        ps.pages_recopied, ps.pages_late, s->done[0], s->done[1], s->done[2],
		        s->done[3], s->rounds, s->precopy_sent, hybrid_written,
		        rdmig_capture_early_used(s->early) ? "true" : "false", ph[0], ph[1], ph[2],
		        ph[3], ph[4], ph[5]);
		fclose(f);
	}
}

/* The link broke while serving: the mirror's memory is kept, its registrations
 * (they belong to the old connection) go, and the destination is connected again
 * until --retry-s runs out; the same buffers are registered on the new data
 * connection in the same order, so the same views describe them. */
static int reconnect(struct src *s, int why)
{
	const struct rdmig_migrate_opts *o = s->o;
	char said[RDMIG_ERRTEXT_MAX + 1] = "";
	uint64_t t0 = rdmig_now_ns();
	int ret = why;

	if (o->retry_ms <= 0)
		return why;
	fprintf(stderr,
	        "rdma_migrate src: lost the destination (%s); trying to reconnect for up to "
	        "%d s (pid %d stays stopped)\n",
	        strerror(-why), o->retry_ms / 1000, (int)o->pid);
	rdmig_mirror_release(s->mirror);
	s->mirror = NULL;
	rdmig_tp_close(s->data);
	rdmig_tp_close(s->conn);
	s->data = s->conn = NULL;
	while ((rdmig_now_ns() - t0) / 1000000 < (uint64_t)o->retry_ms) {
		ret = rdmig_tp_connect(&o->tp, o->addr, 1000, &s->conn);
		if (ret == 0) {
			rdmig_tp_messages_only(s->conn);
			ret = rdmig_session_offer(s->conn, &s->session, RDMIG_SESSION_RETURNING,
			                          1000, said, sizeof(said));
		}
		if (ret == -EBUSY || ret == -ESRCH) {
			/* another migration's destination, or one started anew (ours,
			 * and the process it held, are gone): waiting cannot help */
			fprintf(stderr,
			        "rdma_migrate src: %s refused to take us back: %s; giving up\n",
			        o->addr, said);
			rdmig_tp_close(s->conn);
			s->conn = NULL;
			return ret;
		}
		if (ret == 0)
			ret = rdmig_tp_connect(&o->tp, o->addr, 1000, &s->data);
		if (ret == 0)
			ret = rdmig_session_send(s->data, &s->session, RDMIG_SESSION_RETURNING);
		if (ret == 0)
			ret = rdmig_mirror_create(s->data, &s->mirror);
		if (ret == 0)
			ret = rdmig_precopy_reregister(s->pc, s->mirror);
		if (ret == 0)
			ret = rdmig_mirror_send(s->mirror, s->views, s->nviews);
		/* the parts it may not have had: releasing one twice changes nothing */
		for (uint32_t i = 0; ret == 0; i++) {
			int n = rdmig_parts_again(s->parts, i, s->msg, RDMIG_MSG_MAX);

			if (n <= 0) {
				ret = n;
				break;
			}
			ret = rdmig_tp_send(s->conn, s->msg, (size_t)n);
		}
		if (ret == 0) {
			s->reconnects++;
			fprintf(stderr,
			        "rdma_migrate src: reconnected after %.1f s; serving again\n",
			        (double)(rdmig_now_ns() - t0) / 1e9);
			return 0;
		}
		rdmig_mirror_release(s->mirror);
		s->mirror = NULL;
		rdmig_tp_close(s->data);
		rdmig_tp_close(s->conn);
		s->data = s->conn = NULL;
		usleep(200000);
	}
	fprintf(stderr, "rdma_migrate src: the destination did not come back within %d s\n",
	        o->retry_ms / 1000);
	return ret < 0 ? ret : -ETIMEDOUT;
}

/* Parts sent before READY at most: the destination reads none until its
 * pager runs, and a verbs connection has 8 receive buffers (verbs.c); a sender
 * past them waits, and would read READY late. What was walked beyond goes
 * between READY and GO. */
#define PARTS_AHEAD 6u
/* How long the data connection serves without sleeping after GO: the first
 * faults come within a millisecond of it, the prefetcher's stream after. */
#define SERVE_SOON_MS 10

/* How long one call of the walk goes on before this thread looks at the
 * connection again. Until the quiet start after GO ends, what comes is READY
 * (the downtime waits on it) or the first faults' WANTs (the process waits):
 * 4 MiB steps, 1-2 ms on this machine's memory, made the pause the workload
 * saw 4.3 ms (median) at 256 MiB, 8.5 at worst, against 2.9 and 3.7 with
 * this (8 alternating pairs). Later, looking and yielding as often cost
 * the walk CPU time that the held faults wait for: 200 us all along left
 * every page local later at 1 GiB (8 pairs in 9). */
#define WALK_SOON_NS 200000ull
#define WALK_STEADY_NS 1000000ull

/* Walk and copy for a while (above): 1, 0 when every part is walked, or
 * -errno (a walk or a copy that fails has nothing to retry). */
static int walk_one(struct src *s)
{
	int n = rdmig_inject("src.part");
	bool soon = !s->quiet_until || rdmig_now_ns() < s->quiet_until; /* 0 before GO */

	if (n == 0)
		n = rdmig_parts_walk(s->parts, s->pc, soon ? WALK_SOON_NS : WALK_STEADY_NS);
	/* The walk is a run of CPU-bound parts; between two, the threads that serve
	 * the destination (its restore before the switch; its READs and WANTs
	 * after) get the CPU at once rather than at the scheduler's next tick. */
	sched_yield();
	return n;
}

/* Send the walked parts not sent yet, until upto are sent in all. */
static int send_parts(struct src *s, uint32_t upto)
{
	for (;;) {
		struct rdmig_parts_stats st;
		int n;

		rdmig_parts_stats(s->parts, &st);
		if (st.taken >= upto)
			return 0;
		n = rdmig_parts_take(s->parts, s->msg, RDMIG_MSG_MAX);
		if (n <= 0)
			return n;
		if (st.taken + 1 == st.total)
			s->t_released = rdmig_now_ns(); /* the last part's, about to be sent */
		n = rdmig_tp_send(s->conn, s->msg, (size_t)n);
		if (n < 0)
			return n;
	}
}

/* want (READY, or RUNNING after GO), walking parts while it comes: the
 * destination restores the process (1-2 ms), or resumes it, while the source
 * would only wait. Walked parts are sent until upto are out. As rdmig_expect
 * otherwise; *walk_err set when a walk failed. */
static int expect_walking(struct src *s, uint16_t want, uint32_t upto, int timeout_ms,
                          struct rdmig_msg *m, bool *walk_err)
{
	bool stepped = false;

	*walk_err = false;
	for (;;) {
		struct rdmig_parts_stats st;
		bool more;
		int n, len;

		rdmig_parts_stats(s->parts, &st);
		more = st.walked < st.total && !s->walk_late &&
		       (rdmig_now_ns() >= s->quiet_until || rdmig_parts_wanted(s->parts));
		/* Before READY a step is walked before the first look: a small process
		 * is restored in ~0.3 ms, and READY could be there before this thread
		 * (which may have lost the CPU since the image went) looked, leaving
		 * the whole walk for after the switch, where a walk that fails can no
		 * longer roll back (src.part in the injection matrix hung on an
		 * original left stopped, 3 runs in 8 here). One step costs the
		 * downtime 0.1-0.4 ms at most, and only then. */
		if (more && want == RDMIG_MSG_READY && !stepped) {
			stepped = true;
			len = -EAGAIN;
		} else
			/* READY comes within the downtime: asked for without sleeping */
			len = more ? rdmig_tp_recv(s->conn, s->msg, RDMIG_MSG_MAX, 0)
			      : want == RDMIG_MSG_READY
			          ? rdmig_recv_soon(s->conn, s->msg, RDMIG_MSG_MAX, timeout_ms)
			          : rdmig_tp_recv(s->conn, s->msg, RDMIG_MSG_MAX, timeout_ms);
		if (len != -EAGAIN || !more)
			return rdmig_expect_got(s->msg, len, want, m);
		n = walk_one(s);
		if (n < 0) {
			*walk_err = true;
			return n;
		}
		n = send_parts(s, upto);
		if (n < 0) {
			memset(m, 0, sizeof(*m));
			pr_err("waiting for %s: %s", rdmig_msg_type_name(want), strerror(-n));
			return n;
		}
	}
}

/* A fault waits on the held page at addr: its window, read from the frozen
 * process, goes at once (parts.c says why), and its part is walked next. An
 * answer that cannot be made is only a slower fault: the walk releases the
 * page. 0, or the send's -errno. */
static int answer_want(struct src *s, uint64_t addr)
{
	int n = rdmig_inject("src.want_pages");

	rdmig_parts_want(s->parts, addr);
	if (n == 0)
		n = rdmig_parts_pages(s->parts, addr, s->msg, RDMIG_MSG_MAX);
	if (n < 0) {
		if (!s->want_warned)
			pr_warn("pid %d: a fault on the destination waits for its part's walk: "
			        "reading the page it wants failed (%s)",
			        (int)s->o->pid, strerror(-n));
		s->want_warned = true;
		return 0;
	}
	return n ? rdmig_tp_send(s->conn, s->msg, (size_t)n) : 0;
}

/* RDMIG_HOLD=late waits this long after the resume for the first WANT before
 * it walks: the tests need a fault that finds its page held, and a process
 * that sleeps through the resume would otherwise find every part walked. */
#define LATE_WAIT_MS 3000
/* The held walk's quiet start after GO (switch_over). */
#define WALK_QUIET_MS 3

static int release_parts(struct src *s, struct rdmig_msg *m)
{
	uint64_t late_until = s->walk_late ? rdmig_now_ns() + LATE_WAIT_MS * 1000000ull : 0;

	m->type = 0;
	for (;;) {
		int n = 0, ret;

		/* What the destination said, WANTs first: without waiting when a part
		 * may be walked; waiting until one may (the late walk's first WANT, the
		 * end of the quiet start or a WANT in it) otherwise. */
		for (;;) {
			uint64_t now = rdmig_now_ns();
			uint64_t until = late_until                     ? late_until
			                 : rdmig_parts_wanted(s->parts) ? 0
			                                                : s->quiet_until;
			int wait_ms = now < until ? (int)((until - now) / 1000000) + 1 : 0;

			ret = rdmig_tp_recv(s->conn, s->msg, RDMIG_MSG_MAX, wait_ms);
			/* a wait that ran out is the walk's start, not a lost link */
			if (ret == -EAGAIN || (wait_ms && ret == -ETIMEDOUT)) {
				late_until = 0;
				ret = 0;
				break;
			}
			if (ret >= 0)
				ret = rdmig_msg_decode(s->msg, (size_t)ret, m);
			if (ret < 0)
				break;
			if (m->type == RDMIG_MSG_DONE)
				return 0;
			if (m->type == RDMIG_MSG_ERROR) {
				pr_err("the destination gave up: %s", m->u.error.text);
				return -m->u.error.code;
			}
			if (m->type != RDMIG_MSG_WANT) {
				pr_err("the destination sent %s while its pages were released",
				       rdmig_msg_type_name(m->type));
				return -EPROTO;
			}
			late_until = 0; /* asked: the walk begins with its part */
			ret = answer_want(s, m->u.u64[0]);
			if (ret < 0)
				break;
		}
		m->type = 0;
		if (ret == 0) {
			n = walk_one(s);
			if (n < 0)
				return n;
			ret = send_parts(s, UINT32_MAX);
			if (ret == 0 && n == 0)
				break;
		}
		if (ret < 0 && (ret = reconnect(s, ret)) < 0)
			return ret;
	}
	if (s->parts) {
		struct rdmig_parts_stats st;

		rdmig_parts_stats(s->parts, &st);
		fprintf(stderr,
		        "rdma_migrate src: pid %d: %u parts of its memory walked outside the "
		        "freeze, %u of them sent before the switch (first: %u its registers "
		        "pointed at, %u its faults asked for; %u faults answered from the "
		        "process), %" PRIu64
		        " pages with data, walk and copy %.2f ms, the last sent %.2f ms after "
		        "the resume (negative: before it)\n",
		        (int)s->o->pid, st.walked, s->parts_ahead, st.hinted, st.wanted,
		        st.answered, st.pages, (double)st.walk_ns / 1e6,
		        ((double)s->t_released - (double)s->t_resume) / 1e6);
	}
	return 0;
}

/* From SENT to the end. */
static int switch_over(struct src *s)
{
	struct rdmig_msg m;
	bool walk_err;
	int ret, step = s->o->timeout_ms > 0 ? s->o->timeout_ms : 60000;

	/* the parts walked meanwhile count for nothing if this rolls back */
	ret = expect_walking(s, RDMIG_MSG_READY, PARTS_AHEAD, step, &m, &walk_err);
	if (ret < 0)
		return rollback(s,
		                walk_err ? "walking the process's memory failed"
		                         : "the destination could not restore the process",
		                ret);
	s->t_ready = rdmig_now_ns();
	/* What was walked beyond PARTS_AHEAD goes before GO: the destination reads
	 * it now and releases it before the resume. Sent after GO, it was taken
	 * after the resume, while the process's first faults wanted the CPU; and a
	 * destination that took what came after GO before resuming waited on each
	 * part walked meanwhile (1 GiB: downtime 10-12 ms in 3 of 8 runs). */
	ret = send_parts(s, UINT32_MAX);
	if (ret < 0)
		return rollback(s, "lost the destination before the switch", ret);
	{
		struct rdmig_parts_stats st;

		rdmig_parts_stats(s->parts, &st);
		s->parts_ahead = st.taken;
	}
	/* The commit. A queued SIGSTOP keeps the original stopped even if this daemon
	 * dies from here on: ptrace's detach on our exit would otherwise let it run
	 * next to its copy. */
	if (kill(s->o->pid, SIGSTOP) < 0)
		return rollback(s, "cannot hold the original stopped", -errno);
	/* the resumed process's first faults READ the mirror right after GO */
	rdmig_tp_serve_soon(s->data, SERVE_SOON_MS);
	/* The walk's quiet start: for WALK_QUIET_MS the parts left go only where a
	 * fault asks (a WANT: its pages at once, its part next). The walk is CPU
	 * work on this thread, which answers the WANTs, and each part it sends is
	 * work for the destination's threads, while the resumed process's first
	 * faults wait on exactly those threads. */
	s->quiet_until = rdmig_now_ns() + WALK_QUIET_MS * 1000000ull;
	{
		uint64_t v = s->t_freeze;
		int n = rdmig_msg_encode_u64(s->msg, RDMIG_MSG_MAX, RDMIG_MSG_GO, &v, 1);

		ret = n < 0 ? n : rdmig_tp_send(s->conn, s->msg, (size_t)n);
	}
	if (src_set_state(s, SRC_COMMITTED) < 0 && ret == 0)
		ret = -EIO;
	if (ret < 0)
		return park(s, "lost the destination while committing", ret);
	ret = expect_walking(s, RDMIG_MSG_RUNNING, UINT32_MAX, step, &m, &walk_err);
	if (walk_err)
		return park(s, "walking the process's memory after the resume failed", ret);
	if (ret < 0 && m.type == RDMIG_MSG_ERROR) {
		/* The destination says, explicitly, that nothing ran there: the original
		 * may run again. SIGCONT discards the SIGSTOP queued at the commit. */
		if (kill(s->o->pid, SIGCONT) == 0)
			return rollback(s, "the destination could not start the process", ret);
	}
	if (ret < 0)
		return park(s, "the destination did not confirm the process runs", ret);
	s->t_resume = m.u.u64[1];
	/* Writes need no tracking any more: the original stays stopped until the end.
	 * The tracking stays registered until the original is killed, though:
	 * unregistering walks every tracked page table (3-4 ms for 64 MiB here, ~20 ms
	 * for 1 GiB), which took a CPU from the destination's first faults; once the
	 * original is gone there is nothing left to walk. The page walk's helper
	 * threads stay too (idle; stopped at the end): joining them here, right
	 * after the resume, took CPU from the destination's first faults (256 MiB
	 * random writer, 16 alternating pairs: the pause the process saw, median
	 * 5.4 against 5.8 ms). The held walk walks 64 MiB parts, which they do
	 * not split. */
	fprintf(stderr,
	        "rdma_migrate src: pid %d runs on the destination as pid %" PRIu64
	        " (downtime %.3f ms); serving its memory\n",
	        (int)s->o->pid, m.u.u64[0], (double)(s->t_resume - s->t_freeze) / 1e6);
	ret = src_set_state(s, SRC_SERVING);
	if (ret < 0)
		return park(s, "serving the process's memory failed", ret);
	ret = release_parts(s, &m);
	if (ret < 0)
		return park(s, "walking the process's memory after the resume failed", ret);
	/* Serving is one-sided: the destination READs the mirror, the transport's
	 * own progress serves it; this thread only waits for the end. */
	for (; m.type != RDMIG_MSG_DONE;) {
		/* a WANT sent before our last PART arrived there is answered already */
		ret = rdmig_expect_past(s->conn, s->msg, RDMIG_MSG_DONE, RDMIG_MSG_WANT, -1, &m);
		/* a link lost (not an explicit ERROR) is given --retry-s to come back */
		if (ret == 0 || m.type == RDMIG_MSG_ERROR || reconnect(s, ret) < 0)
			break;
	}
	if (ret < 0)
		return park(s, "lost the destination while it still needed pages", ret);
	memcpy(s->done, m.u.u64, sizeof(s->done));
	s->t_done = rdmig_now_ns();
	rdmig_tracee_kill(s->t);
	s->t = NULL;
	rdmig_precopy_stop(s->pc); /* its ranges died with the original: no walk */
	{
		int n = rdmig_msg_encode_empty(s->msg, RDMIG_MSG_MAX, RDMIG_MSG_BYE);

		if (n > 0 && rdmig_tp_send(s->conn, s->msg, (size_t)n) < 0)
			pr_warn("the destination left before our BYE");
	}
	(void)src_set_state(s, SRC_DONE);
	summary(s);
	return RDMIG_EXIT_OK;
}

/* Post-copy walks the anonymous mappings outside the freeze (parts.h) when the
 * walk inside it would cost more than it hides: the walk grows with the pages
 * that hold data (~1.4 ms per GiB here); inside the freeze it overlaps the
 * frozen thread's first return to user mode (0.2-1.5 ms here: capture.c), and
 * outside it begins in what is left of that wait, goes on while the
 * destination restores, and what is not walked by GO makes faults wait (a
 * WANT's round trip and one part's walk). Measured here, alternating pairs
 * (design.md, "The walk outside the freeze"): at 256 MiB held lost (random
 * writer, 16 pairs: pause median 6.88 against 6.58 ms, the same downtime, the
 * first touch later); at 1 GiB the downtime was shorter held for every pattern
 * but the pause was not (one build, held against RDMIG_HOLD=off: seq 6.00
 * against 6.24 ms, random 7.16 against 7.68, zipf 8.37 against 7.52, the
 * first touch 2.0 against 1.2 ms); at 4 GiB the walk in the freeze is ~6 ms
 * of it. Hence from HOLD_MIN_PAGES with data (the first round's count).
 * And below it when the settling rounds did not converge: the freeze then
 * copies again about what the last one did, and HOLD_MIN_LAST pages cost the
 * freeze milliseconds on any memory (a 1 GiB random writer on memory slow to
 * write, its last round 232 thousand pages: the last copy 98 ms of a 103 ms
 * downtime, against 5-17 ms held). RDMIG_HOLD=on|off|late decides instead
 * ("late": no walk before the first fault's WANT after the resume, the
 * tests' way to a walk that fails after the switch and to a fault that finds
 * its page held). Not after pulled
 * rounds: the destination's arena copies of what the freeze copies again must
 * be named before the image (RUNS_FINAL), which needs the walk. */
#define HOLD_MIN_PAGES (2ull << 30 >> 12) /* 2 GiB */
#define HOLD_MIN_LAST (16ull << 20 >> 12) /* 16 MiB: ~4 ms at 4 GB/s */

static bool hold_anon(struct src *s)
{
	const char *env = getenv("RDMIG_HOLD");
	struct rdmig_precopy_stats st;

	if (s->o->mode == RDMIG_MODE_PRECOPY || s->rounds || (env && !strcmp(env, "off")))
		return false;
	if (env && !strcmp(env, "late")) {
		s->walk_late = true; /* the tests' way to a walk that fails after GO */
		return true;
	}
	if (env && !strcmp(env, "on"))
		return true;
	rdmig_precopy_stats(s->pc, &st);
	if (st.pages_first >= HOLD_MIN_PAGES)
		return true;
	if (s->settle_last >= HOLD_MIN_LAST) {
		pr_info("pid %d: the settling rounds did not converge (%" PRIu64
		        " pages in the last): the walk goes outside the freeze",
		        (int)s->o->pid, s->settle_last);
		return true;
	}
	return false;
}

/* The capture's idle time (rdmig_capture_known.idle): while the frozen
 * thread's first return to user mode lasts, the held walk begins (the last
 * copy's views first, which it needs). The main thread's registers as saved
 * at the seize say which parts it will want first; the other threads' are
 * read later. */
static int walk_idle(void *arg, struct rdmig_image *img)
{
	struct src *s = arg;
	int ret;

	if (s->idle_err || s->walk_late)
		return 0;
	if (!s->finalized) {
		ret = rdmig_precopy_final(s->pc, img, &s->views, &s->nviews);
		if (ret == 0)
			ret = rdmig_parts_create(s->o->pid, img, &s->parts);
		if (ret < 0) {
			s->idle_err = ret;
			return ret;
		}
		s->finalized = true;
		if (s->parts) {
			const struct user_regs_struct *r = rdmig_tracee_saved_regs(s->t);
			const unsigned long long *reg = (const unsigned long long *)r;

			for (size_t i = 0; i < sizeof(*r) / sizeof(*reg); i++)
				rdmig_parts_want(s->parts, reg[i]);
		}
	}
	ret = rdmig_inject("src.part");
	if (ret == 0)
		ret = rdmig_parts_walk(s->parts, s->pc, WALK_SOON_NS);
	if (ret < 0)
		s->idle_err = ret;
	return ret;
}

static int run(struct src *s)
{
	const struct rdmig_migrate_opts *o = s->o;
	struct rdmig_mirror_view *views = NULL;
	uint32_t nviews = 0;
	bool pull, hold;
	int ret, err;

	s->t_start = rdmig_now_ns();
	ret = rdmig_capture_check(o->pid, s->why, sizeof(s->why));
	if (ret == 0)
		ret = rdmig_capture_check_wire(o->pid, s->why, sizeof(s->why));
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate src: cannot migrate pid %d: %s\n", (int)o->pid,
		        s->why[0] ? s->why : strerror(-ret));
		fprintf(stderr, "rdma_migrate src: nothing was done; pid %d keeps running\n",
		        (int)o->pid);
		return RDMIG_EXIT_USAGE;
	}
	ret = src_set_state(s, SRC_CHECKED);
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate src: %s; nothing was done, pid %d keeps running\n",
		        strerror(-ret), (int)o->pid);
		return RDMIG_EXIT_ROLLED_BACK;
	}
	ret = rdmig_session_new(&s->session);
	if (ret == 0)
		ret = rdmig_connector_start(o, &s->session, &s->cn);
	if (ret < 0) {
		fprintf(stderr,
		        "rdma_migrate src: cannot start connecting: %s; nothing was done, "
		        "pid %d keeps running\n",
		        strerror(-ret), (int)o->pid);
		return RDMIG_EXIT_ROLLED_BACK;
	}

	/* Tracking starts with one short stop (the tracking uffd is made inside the
	 * process); the copy itself runs while the process runs. The mirror is
	 * registered once the connections are made. */
	ret = rdmig_mirror_create(NULL, &s->mirror);
	if (ret == 0)
		ret = rdmig_tracee_seize(o->pid, 0, &s->t);
	if (ret < 0)
		return rollback(s, "cannot attach to the process", ret);
	ret = rdmig_precopy_start(s->t, s->mirror, &s->pc);
	if (ret < 0)
		return rollback(s, "cannot start tracking the process's writes", ret);
	rdmig_precopy_set_stop(s->pc, rdmig_connector_failed, s->cn);
	/* What the freeze would ask by injected calls, asked in this stop and
	 * watched from here: if nothing changes it, the freeze need not make the
	 * process run (src/capture_calls.c). Without the watch, the freeze asks. */
	if ((err = rdmig_inject("src.early_calls")) < 0 ||
	    (err = rdmig_capture_early_start(s->t, &s->early)) < 0)
		pr_warn("pid %d: its calls cannot be watched (%s): its signal handlers and "
		        "stacks are asked inside the freeze, a longer downtime",
		        (int)o->pid, strerror(-err));
	else if ((ret = rdmig_capture_early_ask(s->early, s->t)) < 0)
		return rollback(s, "cannot read the process's signal handlers", ret);
	ret = rdmig_tracee_release(s->t, true);
	s->t = NULL;
	if (ret < 0)
		return rollback(s, "cannot let the process run while its memory is copied", ret);
	ret = src_set_state(s, SRC_TRACKING);
	if (ret < 0)
		return rollback(s, "cannot start the migration", ret);
	/* Before the layout reads their written pages: the freeze then reads only
	 * those written since (0.3-0.5 ms of reading for ~17 pages here). Only a
	 * speed-up: what is not tracked is read at the freeze, as before. */
	if ((err = rdmig_inject("src.track_files")) < 0 ||
	    (err = rdmig_precopy_track_files(s->pc)) < 0)
		pr_warn("pid %d: its private file mappings are not tracked (%s): their written "
		        "pages are all read again at the freeze",
		        (int)o->pid, strerror(-err));
	/* first, so the destination builds the map while the first round copies */
	hand_layout(s);
	/* Now, not just before the freeze: there, touching 8 MiB of fresh pages
	 * (up to 20 ms here) let the process dirty pages after the last round, which
	 * the freeze's last copy then took (1 -> 5-10 ms in 3 runs). */
	rdmig_heap_warm(HEAP_WARM);
	ret = rdmig_precopy_round(s->pc);
	if (ret < 0 && ret != -ECANCELED)
		return rollback(s, "copying the process's memory failed", ret);
	/* -ECANCELED: the connector failed, which the join says */
	rdmig_precopy_set_stop(s->pc, NULL, NULL);
	err = connect_join(s, true);
	if (err < 0)
		return rollback(s, "the migration did not start", err);
	if (ret < 0)
		return rollback(s, "copying the process's memory failed", ret);
	ret = rdmig_mirror_attach(s->mirror, s->data);
	if (ret < 0)
		return rollback(s, "cannot register the process's copy for the destination", ret);
	ret = src_set_state(s, SRC_CONNECTED);
	if (ret < 0)
		return rollback(s, "cannot start the migration", ret);
	log_precopy(s, "copied while running");
	pull = o->mode == RDMIG_MODE_PRECOPY;
	if (o->mode == RDMIG_MODE_HYBRID && (ret = hybrid_worth_pulling(s, &pull)) < 0)
		return rollback(s, "copying the process's memory failed", ret);
	if (pull) {
		ret = precopy_rounds(s);
		if (ret < 0)
			return rollback(s, "the pre-copy rounds failed", ret);
	}
	/* not in pre-copy: its freeze fetches every stale page before the process
	 * runs, so copying them earlier would not shorten it */
	if (o->mode != RDMIG_MODE_PRECOPY) {
		ret = settle_rounds(s);
		if (ret < 0)
			return rollback(s, "copying the process's memory failed", ret);
	}
	/* the capture's page walk splits big mappings between these (starting
	 * one inside the freeze would cost what it saves) */
	{
		int helpers = rdmig_pagescan_helpers_start();

		if (helpers > 0)
			pr_info("pid %d: the page walk has %d helper threads", (int)o->pid,
			        helpers);
	}
	let_it_run(s);
	hold = hold_anon(s);

	/* The freeze: downtime runs from here to the destination's resume. */
	s->t_freeze = rdmig_now_ns();
	ret = rdmig_tracee_seize(o->pid, 0, &s->t);
	if (ret < 0)
		return rollback(s, "cannot stop the process", ret);
	s->t_seized = rdmig_now_ns();
	ret = src_set_state(s, SRC_FROZEN);
	if (ret == 0)
		ret = rdmig_inject("src.capture");
	if (ret == 0)
		ret = rdmig_capture(s->t, &s->img,
		                    &(struct rdmig_capture_known){.pages = s->lay_cow,
		                                                  .n = s->nlay_cow,
		                                                  .early = s->early,
		                                                  .hold_anon = hold,
		                                                  .idle = walk_idle,
		                                                  .idle_arg = s},
		                    s->why, sizeof(s->why));
	if (ret < 0)
		return rollback(s, "cannot capture the process", ret);
	if (s->idle_err)
		return rollback(s, "walking the process's memory failed", s->idle_err);
	if (hold && !s->parts)
		ret = rdmig_parts_create(o->pid, &s->img, &s->parts);
	if (ret < 0)
		return rollback(s, "cannot capture the process", ret);
	rdmig_parts_captured(s->parts);
	s->t_captured = rdmig_now_ns();
	if (!s->rounds) {
		/* The image does not depend on the last copy: the destination restores
		 * while we copy (it reads no page before the table, sent after). After
		 * pulls (pre-copy rounds) the last copy's runs must precede the image. */
		ret = send_image(s);
		if (ret < 0)
			return rollback(s, "cannot send the process to the destination", ret);
		s->ns_image = rdmig_now_ns() - s->t_captured;
	}
	ret = rdmig_inject("src.final_copy");
	if (ret == 0 && s->finalized) {
		views = s->views; /* made in the capture's idle time */
		nviews = s->nviews;
		s->views = NULL;
	} else if (ret == 0) {
		ret = rdmig_precopy_final(s->pc, &s->img, &views, &nviews);
	}
	if (ret < 0)
		return rollback(s, "copying the last changed pages failed", ret);
	s->t_copied = rdmig_now_ns();
	log_precopy(s, "at the freeze");
	if (s->rounds) {
		uint64_t fpages;

		ret = send_runs(s, s->rounds + 1,
		                RDMIG_RUNS_FINAL |
		                    (o->mode == RDMIG_MODE_PRECOPY ? RDMIG_RUNS_STOPCOPY : 0u),
		                &fpages);
		if (ret < 0) {
			free(views);
			return rollback(s, "cannot send the process to the destination", ret);
		}
	}
	ret = nviews ? rdmig_mirror_send(s->mirror, views, nviews) : 0;
	/* kept: a destination that reconnects after the switch gets them again */
	s->views = views;
	s->nviews = nviews;
	if (ret == 0 && s->rounds)
		ret = send_image(s);
	if (ret < 0)
		return rollback(s, "cannot send the process to the destination", ret);
	s->t_sent = rdmig_now_ns();
	ret = src_set_state(s, SRC_SENT);
	if (ret < 0)
		return rollback(s, "the switch failed", ret);
	return switch_over(s);
}

int rdmig_src_run(const struct rdmig_migrate_opts *o)
{
	struct src s = {.o = o};
	int rc;

	rdmig_log_set_tag("src");
	s.msg = malloc(RDMIG_MSG_MAX);
	if (!s.msg)
		return RDMIG_EXIT_ROLLED_BACK;
	rc = run(&s);
	if (s.cn) /* only a path that returned before a rollback: no one to tell */
		(void)connect_join(&s, false);
	/* The mirror goes only when no one can need it any more: after DONE, after a
	 * rollback, or when the destination is gone. */
	rdmig_mirror_release(s.mirror);
	rdmig_pagescan_helpers_stop();
	rdmig_precopy_stop(s.pc);
	rdmig_precopy_free(s.pc);
	rdmig_image_free(&s.img);
	free(s.lay_cow);
	free(s.views);
	rdmig_parts_free(s.parts);
	rdmig_capture_early_free(s.early);
	if (s.t)
		(void)rdmig_tracee_release(s.t, s.state < SRC_COMMITTED);
	rdmig_tp_close(s.data);
	rdmig_tp_close(s.conn);
	free(s.msg);
	return rc;
}
