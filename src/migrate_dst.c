/*
 * The destination side of a migration: `rdma_migrate dst --listen ADDR:PORT`.
 *
 *   LISTENING  the husk is forked (before any transport exists), waiting for a peer
 *   RECEIVING  two authenticated connections from the source: control (image and
 *              the switch messages, this thread) and data (the mirror's table and
 *              the one-sided READs, the pager's thread), so no connection is ever
 *              used by two threads
 *   RESTORING  the image is decoded and the process rebuilt in the husk
 *   READY      rebuilt, stopped, its pager running; READY sent, waiting for GO
 *   RUNNING    GO came: the process runs; its misses are fetched from the mirror
 *   DONE       every page is local (or the process ended): uffd released, DONE sent
 *   ABORTED    any failure before RUNNING: the half-built process is killed and the
 *              source told, so it resumes its original
 *   FAILED     the source was lost after RUNNING: the process waits on its missing
 *              pages (it keeps a copy of its userfaultfd: never zeros), reported
 */
#define LOG_SUBSYS "dst"
#include "rdmig/image.h"
#include "rdmig/inject.h"
#include "rdmig/log.h"
#include "rdmig/migrate.h"
#include "rdmig/mirror.h"
#include "rdmig/pager.h"
#include "rdmig/prefetch.h"
#include "rdmig/proto.h"
#include "rdmig/restore.h"
#include "rdmig/tpsource.h"

#include "arena.h"
#include "migrate_common.h"
#include "session.h"
#include "switchsrc.h"
#include "uffd.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096ull
#define SAMPLE_MS 50
#define WANTS_MAX 64             /* WANTs not sent yet; more are dropped (the walk gets there) */
#define SAMPLES_MAX 200000       /* about 2.8 hours of post-copy */
#define STATE_RESERVE (2u << 20) /* page states touched before the downtime: 8 GiB */
/* The prefetcher's quiet start (rdmig_faultloop_opts): from the resume to the
 * process's first completed touch, 256 MiB random writer here, 1.2-1.7 ms with
 * 1 ms, 0.9-1.3 with 3, 1.3-1.5 with 10, 2.2-4.3 with none; the time to every
 * page local did not change beyond the noise. */
#define PREFETCH_QUIET_US 3000u

enum dst_state {
	DST_LISTENING,
	DST_RECEIVING,
	DST_RESTORING,
	DST_READY,
	DST_RUNNING,
	DST_DONE,
	DST_ABORTED,
	DST_FAILED,
};

static const char *const dst_state_names[] = {"listening", "receiving", "restoring", "ready",
                                              "running",   "done",      "aborted",   "failed"};

struct dst {
	const struct rdmig_migrate_opts *o;
	enum dst_state state;
	struct rdmig_husk *husk;
	struct rdmig_spare spare; /* the pager's thread, made before the downtime */
	struct rdmig_listener *lis;
	struct rdmig_conn *ctl, *data;
	struct rdmig_conn *next_data; /* a reconnection's, until the switch takes it */
	struct rdmig_session session; /* the migration ours are of: its first SESSION */
	struct rdmig_region *regions;
	uint32_t nregions;
	/* pre-copy and hybrid: what was pulled before the switch */
	struct rdmig_arena *arena;
	bool stopcopy;          /* pre-copy: every page local before the process runs */
	uint64_t pages_at_stop; /* pre-copy: pages fetched while the process was stopped */
	struct rdmig_image img;
	struct rdmig_restored r;
	bool restored, resumed;
	bool got_layout; /* a LAYOUT came (at most one) */
	/* its written file pages: the image names those unchanged since
	 * (rdmig_image_fill_ahead), whether or not the prebuild worked */
	struct rdmig_img_cow_page *lay_cow;
	uint32_t nlay_cow;
	struct rdmig_page_source *src;       /* the current transport source */
	struct rdmig_page_source *pager_src; /* what the loop uses: src behind a switch */
	void *staging;                       /* the first source's, made ahead */
	uint64_t bytes_before;               /* read through sources replaced since */
	int reconnects;
	struct rdmig_prefetch *pf;
	const struct rdmig_pagestate *ps; /* for the prefetcher's is_remote */
	struct rdmig_faultloop *loop;
	int evfd;
	bool progress; /* a progress line on stderr (a terminal) */
	pthread_mutex_t mu;
	enum rdmig_pager_event_type last_ev; /* the most important one seen, under mu */
	int last_status;
	/* post-copy: vmas that came held wait for the source's PARTs (proto.h) */
	bool held;       /* some did: PARTs to come */
	bool parts_done; /* the last one came */
	uint32_t parts;  /* PART messages taken (again after a reconnection) */
	uint64_t t_released;
	uint64_t wants[WANTS_MAX]; /* source addresses faults wait on, under mu */
	unsigned nwants;
	uint64_t t_sampled;
	uint8_t *msg;
	uint64_t t_go, t_resume, t_local;
	/* this side's part of the downtime, on its own clock: image received,
	 * process built, READY sent, pager started (while GO is awaited), GO
	 * received */
	uint64_t t_received, t_built, t_readied, t_paged, t_gone;
	/* Post-copy over time, every SAMPLE_MS: for --stats-json and the progress line. */
	struct sample {
		uint64_t t_ns, faults, fetched, prefetched, installed, total;
	} * tl;
	size_t ntl, captl;
	char why[512];
};

/* The one place the state changes, logged; entering a state is also a named
 * fault-injection point ("dst.<state>", rdmig/inject.h). */
static int dst_set_state(struct dst *d, enum dst_state to)
{
	char point[32];

	pr_info("%s -> %s", dst_state_names[d->state], dst_state_names[to]);
	d->state = to;
	snprintf(point, sizeof(point), "dst.%s", dst_state_names[to]);
	return rdmig_inject(point);
}

/* ---- receiving ----------------------------------------------------------- */

/* The chunks of one encoded image (IMAGE or LAYOUT, the first one already
 * received in *first), decoded into img. */
static int recv_chunks(struct dst *d, const struct rdmig_msg *first, struct rdmig_image *img)
{
	uint8_t *buf = NULL;
	uint64_t total = 0, got = 0, t0 = rdmig_now_ns(), t1;
	struct rdmig_msg m = *first;
	int ret, step = d->o->timeout_ms > 0 ? d->o->timeout_ms : 60000;

	do {
		if (got && (ret = rdmig_expect(d->ctl, d->msg, first->type, step, &m)) < 0)
			goto out_free;
		if (!buf) {
			total = m.u.image.total;
			buf = malloc(total);
			if (!buf) {
				ret = -ENOMEM;
				goto out_free;
			}
		}
		/* chunks come in order and all announce the same total */
		if (m.u.image.total != total || m.u.image.offset != got) {
			pr_err("image chunk at %" PRIu64 " of %" PRIu64 " where %" PRIu64
			       " of %" PRIu64 " was due",
			       m.u.image.offset, m.u.image.total, got, total);
			ret = -EBADMSG;
			goto out_free;
		}
		memcpy(buf + got, m.u.image.data, m.u.image.len);
		got += m.u.image.len;
	} while (got < total);
	t1 = rdmig_now_ns();
	ret = rdmig_image_decode(buf, total, img);
	pr_info("%s of %" PRIu64 " bytes: received in %.2f ms, decoded in %.2f ms",
	        first->type == RDMIG_MSG_LAYOUT ? "layout" : "image", total,
	        (double)(t1 - t0) / 1e6, (double)(rdmig_now_ns() - t1) / 1e6);
	if (ret < 0)
		snprintf(d->why, sizeof(d->why), "the process %s from the source is malformed",
		         first->type == RDMIG_MSG_LAYOUT ? "layout" : "image");
out_free:
	free(buf);
	return ret;
}

static int recv_image(struct dst *d, const struct rdmig_msg *first)
{
	int ret = recv_chunks(d, first, &d->img);

	if (ret < 0)
		return ret;
	ret = rdmig_image_fill_ahead(&d->img, d->lay_cow, d->nlay_cow);
	if (ret < 0)
		snprintf(d->why, sizeof(d->why),
		         ret == -EBADMSG ? "the process image from the source names pages its "
		                           "layout did not carry"
		                         : "out of memory for the process image");
	free(d->lay_cow);
	d->lay_cow = NULL;
	d->nlay_cow = 0;
	return ret;
}

/* The running process's layout: built into the husk now, out of the downtime.
 * A prebuild that fails costs only its time (the husk is emptied again and the
 * build starts from scratch); a malformed or second layout ends the session. */
static int recv_layout(struct dst *d, const struct rdmig_msg *first)
{
	struct rdmig_image lay;
	char why[512];
	int ret;

	if (d->got_layout) {
		pr_err("a second LAYOUT from the source");
		return -EPROTO;
	}
	d->got_layout = true;
	ret = recv_chunks(d, first, &lay);
	if (ret < 0)
		return ret;
	if (lay.ncow) {
		d->lay_cow = malloc((size_t)lay.ncow * sizeof(*lay.cow));
		if (!d->lay_cow) {
			rdmig_image_free(&lay);
			return -ENOMEM;
		}
		memcpy(d->lay_cow, lay.cow, (size_t)lay.ncow * sizeof(*lay.cow));
		d->nlay_cow = lay.ncow;
	}
	ret = rdmig_inject("dst.prebuild");
	if (ret < 0) {
		rdmig_image_free(&lay);
		snprintf(why, sizeof(why), "injected failure");
	} else {
		ret = rdmig_husk_prebuild(d->husk, &lay, why, sizeof(why));
	}
	if (ret < 0)
		fprintf(stderr,
		        "rdma_migrate dst: could not build the process's memory map ahead of the "
		        "freeze (%s); it will be built inside the downtime\n",
		        why);
	return 0;
}

/* Until the image: pre-copy rounds (pulled into the arena as they come), the
 * final set of pages their pulls no longer stand for, then the image. The
 * mirror's final table comes later (recv_views): in post-copy the source sends
 * the image before its last copy, so the restore runs while that copy does. */
static int recv_process(struct dst *d)
{
	struct rdmig_msg m;
	int ret, step = d->o->timeout_ms > 0 ? d->o->timeout_ms : 60000;

	for (;;) {
		int len = rdmig_tp_recv(d->ctl, d->msg, RDMIG_MSG_MAX, step);

		if (len < 0)
			return len;
		ret = rdmig_msg_decode(d->msg, (size_t)len, &m);
		if (ret < 0)
			return ret;
		if (m.type == RDMIG_MSG_ERROR) {
			pr_err("the source gave up: %s", m.u.error.text);
			return -m.u.error.code;
		}
		if (m.type == RDMIG_MSG_IMAGE)
			break;
		if (m.type == RDMIG_MSG_LAYOUT) {
			ret = recv_layout(d, &m);
			if (ret < 0)
				return ret;
			continue;
		}
		if (m.type != RDMIG_MSG_RUNS) {
			pr_err("expected RUNS, LAYOUT or IMAGE, got %s",
			       rdmig_msg_type_name(m.type));
			return -EPROTO;
		}
		if (m.u.runs.flags & RDMIG_RUNS_FINAL) {
			if (d->arena)
				rdmig_arena_stale(d->arena, &m);
			d->stopcopy = m.u.runs.flags & RDMIG_RUNS_STOPCOPY;
			continue;
		}
		if (!d->arena) {
			struct rdmig_region *pre;
			uint32_t npre;

			ret = rdmig_mirror_recv_table(d->data, step, &pre, &npre);
			if (ret == 0)
				ret = rdmig_arena_create(d->data, pre, npre, &d->arena);
			free(pre);
			if (ret < 0)
				return ret;
		}
		ret = rdmig_arena_pull(d->arena, &m, step);
		if (ret == 0 && (m.u.runs.flags & RDMIG_RUNS_LAST)) {
			uint64_t v = m.u.runs.round;
			int n = rdmig_msg_encode_u64(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_ROUND_DONE,
			                             &v, 1);

			ret = n < 0 ? n : rdmig_tp_send(d->ctl, d->msg, (size_t)n);
		}
		if (ret < 0)
			return ret;
	}
	/* the arena's pulls are over; the pager makes its own source */
	rdmig_arena_drop_source(d->arena);
	return recv_image(d, &m);
}

/* The mirror's final table, on the data connection: the source sends it once its
 * last copy is in the mirror, so nothing reads the mirror before. A source that
 * gave up meanwhile closes the connection, which ends the wait. */
static int recv_views(struct dst *d)
{
	int step = d->o->timeout_ms > 0 ? d->o->timeout_ms : 60000;

	return rdmig_mirror_recv_table(d->data, step, &d->regions, &d->nregions);
}

/* ---- pre-copy: every page in place before the process runs ------------------ */

/* Through /proc/PID/mem, not process_vm_writev(): the latter honours the
 * mapping's protection, and a process has read-only and PROT_NONE pages with data
 * (a thread's stack guard an allocator had used, memory it mprotect()ed). */
static int write_run(struct dst *d, uint64_t addr, const void *data, size_t len)
{
	int ret = rdmig_restore_write(&d->r, addr, data, len);

	if (ret < 0)
		pr_err("writing %zu bytes at %#llx into the process failed: %s", len,
		       (unsigned long long)addr, strerror(-ret));
	return ret;
}

static bool touched(const struct rdmig_img_vma *v, uint64_t i);

static int write_page(void *arg, uint64_t addr, const void *data)
{
	return write_run(arg, addr, data, PG);
}

/* Stop and copy the rest: current arena pages are written into the stopped
 * process, the others fetched from the mirror now. No uffd range is registered. */
static int install_all(struct dst *d)
{
	struct rdmig_run *runs = NULL;
	uint32_t n = 0, cap = 0;
	int ret;

	ret = rdmig_tpsource_create(&(struct rdmig_tpsource_opts){.conn = d->data,
	                                                          .regions = d->regions,
	                                                          .nregions = d->nregions,
	                                                          .staging = d->staging},
	                            &d->src);
	for (uint32_t i = 0; ret == 0 && i < d->img.nvmas; i++) {
		const struct rdmig_img_vma *v = &d->img.vmas[i];

		if (v->kind != RDMIG_VMA_ANON || !v->touched)
			continue;
		for (uint64_t p = 0; ret == 0 && p < (v->end - v->start) / PG; p++) {
			uint64_t addr = v->start + p * PG;
			const uint8_t *page;

			if (!touched(v, p))
				continue;
			page = rdmig_arena_page(d->arena, addr);
			if (page) {
				/* a run of current pages, contiguous in the arena too: one write */
				uint64_t k = 1;

				while (p + k < (v->end - v->start) / PG && touched(v, p + k) &&
				       rdmig_arena_page(d->arena, addr + k * PG) == page + k * PG)
					k++;
				ret = write_run(d, addr, page, k * PG);
				p += k - 1;
				continue;
			}
			if (n && runs[n - 1].addr + runs[n - 1].pages * PG == addr) {
				runs[n - 1].pages++;
				continue;
			}
			if (n == cap) {
				struct rdmig_run *nr =
				    realloc(runs, (cap ? 2 * cap : 64) * sizeof(*nr));

				if (!nr) {
					ret = -ENOMEM;
					break;
				}
				runs = nr;
				cap = cap ? 2 * cap : 64;
			}
			runs[n++] = (struct rdmig_run){addr, 1};
		}
	}
	for (uint32_t i = 0; i < n; i++)
		d->pages_at_stop += runs[i].pages;
	if (ret == 0)
		ret = rdmig_fetch_runs(d->src, runs, n, write_page, d,
		                       d->o->timeout_ms > 0 ? d->o->timeout_ms : 60000);
	free(runs);
	return ret;
}

/* Hybrid: pages with a current copy in the arena are installed from there. */
static int use_arena(struct dst *d)
{
	uint64_t start, len;
	const void *base;
	int ret = 0;

	for (uint32_t i = 0; ret == 0 && !rdmig_arena_region(d->arena, i, &start, &len, &base); i++)
		ret = rdmig_faultloop_add_arena(d->loop, start, len, base);
	for (uint32_t i = 0; ret == 0 && i < d->img.nvmas; i++) {
		const struct rdmig_img_vma *v = &d->img.vmas[i];

		if (v->kind != RDMIG_VMA_ANON || !v->touched)
			continue;
		for (uint64_t p = 0; ret == 0 && p < (v->end - v->start) / PG;) {
			uint64_t k = 0;

			while (p + k < (v->end - v->start) / PG && touched(v, p + k) &&
			       rdmig_arena_page(d->arena, v->start + (p + k) * PG))
				k++;
			if (k)
				ret = rdmig_faultloop_set_state(d->loop, v->start + p * PG, k * PG,
				                                RDMIG_PAGE_ARENA);
			p += k ? k : 1;
		}
	}
	return ret;
}

/* ---- the pager ----------------------------------------------------------- */

static void on_event(void *arg, const struct rdmig_pager_event *ev)
{
	struct dst *d = arg;
	uint64_t one = 1;

	switch (ev->type) {
	case RDMIG_PAGER_SOURCE_FAILED:
	case RDMIG_PAGER_SOURCE_STALLED:
		fprintf(stderr,
		        "rdma_migrate dst: the source stopped serving pages (%s): the process "
		        "waits on its missing pages\n",
		        strerror(-ev->status));
		__attribute__((fallthrough)); /* and wake the main thread */
	case RDMIG_PAGER_ALL_LOCAL:
	case RDMIG_PAGER_TARGET_GONE:
	case RDMIG_PAGER_FATAL:
		pthread_mutex_lock(&d->mu);
		d->last_ev = ev->type;
		d->last_status = ev->status;
		pthread_mutex_unlock(&d->mu);
		if (write(d->evfd, &one, sizeof(one)) < 0)
			pr_err("cannot wake the main thread: %s", strerror(errno));
		break;
	default:
		break;
	}
}

/* The loop thread: a fault waits on a held page. The main thread sends the
 * WANT (it owns the control connection). */
static void on_held(void *arg, uint64_t src)
{
	struct dst *d = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&d->mu);
	if (d->nwants < WANTS_MAX)
		d->wants[d->nwants++] = src;
	pthread_mutex_unlock(&d->mu);
	if (write(d->evfd, &one, sizeof(one)) < 0)
		pr_err("cannot wake the main thread: %s", strerror(errno));
}

static bool pf_is_remote(void *arg, uint64_t addr)
{
	const struct dst *d = arg;

	enum rdmig_page_state st = d->ps ? rdmig_pagestate_get(d->ps, addr) : RDMIG_PAGE_UNTRACKED;

	/* an arena page still has to be installed: the loop copies it, no fetch */
	return st == RDMIG_PAGE_REMOTE || st == RDMIG_PAGE_ARENA;
}

static void pf_on_fault(void *arg, uint64_t addr)
{
	struct dst *d = arg;

	if (d->pf)
		rdmig_prefetch_on_fault(d->pf, addr);
}

static int pf_next(void *arg, const struct rdmig_pagestate *ps, uint64_t *addr)
{
	struct dst *d = arg;

	d->ps = ps;
	if (!d->pf)
		return -ENODATA; /* nothing to prefetch: stop asking */
	return rdmig_prefetch_next(d->pf, addr, 1);
}

static bool touched(const struct rdmig_img_vma *v, uint64_t i)
{
	return v->touched[i / 8] & (1u << (i % 8));
}

/* Register every ANON vma with data, pages with data REMOTE, the rest ZERO. A vma
 * without any page of data is left to the kernel: it reads zeros anyway. */
static int add_ranges(struct dst *d, struct rdmig_prefetch_range **pr, size_t *npr)
{
	struct rdmig_prefetch_range *ranges = calloc(d->img.nvmas + 1, sizeof(*ranges));
	size_t n = 0;
	int ret = 0;

	if (!ranges)
		return -ENOMEM;
	for (uint32_t i = 0; i < d->img.nvmas && ret == 0; i++) {
		const struct rdmig_img_vma *v = &d->img.vmas[i];
		uint64_t pages = (v->end - v->start) / PG;

		if (v->kind == RDMIG_VMA_ANON && (v->flags & RDMIG_VMA_F_HELD)) {
			/* which pages hold data comes later, part by part */
			ret = rdmig_faultloop_add_range(d->loop, v->start, v->end - v->start,
			                                v->start, RDMIG_PAGE_HELD, true);
			ranges[n++] = (struct rdmig_prefetch_range){v->start, v->end};
			d->held = true;
			continue;
		}
		if (v->kind != RDMIG_VMA_ANON || !v->touched)
			continue;
		ret = rdmig_faultloop_add_range(d->loop, v->start, v->end - v->start, v->start,
		                                RDMIG_PAGE_ZERO, true);
		for (uint64_t p = 0; p < pages && ret == 0;) {
			uint64_t k = rdmig_bitmap_run(v->touched, pages, p, true);

			if (k)
				ret = rdmig_faultloop_set_state(d->loop, v->start + p * PG, k * PG,
				                                RDMIG_PAGE_REMOTE);
			p += k ? k : rdmig_bitmap_run(v->touched, pages, p, false);
		}
		ranges[n++] = (struct rdmig_prefetch_range){v->start, v->end};
	}
	if (ret < 0) {
		free(ranges);
		return ret;
	}
	*pr = ranges;
	*npr = n;
	return 0;
}

static int start_pager(struct dst *d)
{
	struct rdmig_faultloop_opts lo = {0};
	struct rdmig_prefetch_range *ranges = NULL;
	struct rdmig_laps laps;
	size_t nranges = 0;
	int ret;

	/* inside the downtime: -v says where it goes */
	rdmig_laps_start(&laps);
	ret = rdmig_uffd_api(d->r.uffd, RDMIG_FAULTLOOP_FEATURES, NULL);
	if (ret < 0) {
		snprintf(d->why, sizeof(d->why),
		         "the destination's userfaultfd lacks the "
		         "features post-copy needs");
		return ret;
	}
	rdmig_laps_mark(&laps, "api");
	ret = rdmig_tpsource_create(&(struct rdmig_tpsource_opts){.conn = d->data,
	                                                          .regions = d->regions,
	                                                          .nregions = d->nregions,
	                                                          .staging = d->staging},
	                            &d->src);
	if (ret < 0)
		return ret;
	rdmig_laps_mark(&laps, "tpsource");
	lo.uffd = d->r.uffd;
	/* behind a switch, so a lost link can be replaced while the loop runs */
	ret = rdmig_switchsrc_create(d->src, &d->pager_src);
	if (ret < 0)
		return ret;
	lo.source = d->pager_src;
	lo.own_mm = false; /* the restore applied MADV_NOHUGEPAGE inside the process */
	lo.on_event = on_event;
	lo.on_held = on_held;
	lo.event_arg = d;
	lo.spawn = rdmig_spare_spawn;
	lo.spawn_arg = &d->spare;
	lo.prefetch_quiet_us = PREFETCH_QUIET_US;
	if (!d->o->no_prefetch)
		lo.prefetch =
		    (struct rdmig_prefetcher){.on_fault = pf_on_fault, .next = pf_next, .arg = d};
	ret = rdmig_faultloop_create(&lo, &d->loop);
	if (ret < 0)
		return ret;
	rdmig_laps_mark(&laps, "loop");
	ret = add_ranges(d, &ranges, &nranges);
	/* What the process touches first after the resume is most likely what its
	 * registers point at (a buffer in hand, the object a loop is on, the page
	 * it was writing); the loop fetches those before the resume, while the link
	 * is idle (the ones still REMOTE: not a stack page sent with the image, not
	 * a held one). Not with --no-prefetch: only what the process touches. */
	for (uint32_t t = 0; ret == 0 && !d->o->no_prefetch && t < d->img.nthreads; t++)
		for (uint32_t r = 0; ret == 0 && r < RDMIG_IMG_NREGS; r++)
			ret = rdmig_faultloop_hint(d->loop, d->img.threads[t].regs[r]);
	rdmig_laps_mark(&laps, "page states");
	if (ret == 0 && d->arena)
		ret = use_arena(d);
	if (ret == 0 && nranges && !d->o->no_prefetch)
		ret = rdmig_prefetch_create(&(struct rdmig_prefetch_cfg){.page_size = PG,
		                                                         .ranges = ranges,
		                                                         .nr_ranges = nranges,
		                                                         .is_remote = pf_is_remote,
		                                                         .arg = d},
		                            &d->pf);
	free(ranges);
	rdmig_laps_mark(&laps, "arena, prefetcher");
	if (ret == 0)
		ret = rdmig_faultloop_start(d->loop);
	rdmig_laps_mark(&laps, "start");
	pr_info("paging steps (ms): %s", laps.line);
	return ret;
}

/* ---- the end ------------------------------------------------------------- */

/* Wait for the pager to say every page is local, or that the process ended. */
/* One sample of the pager's counters; a progress line on a terminal. */
static void sample(struct dst *d, bool last)
{
	struct rdmig_faultloop_stats s;

	rdmig_faultloop_stats(d->loop, &s);
	if (d->ntl == d->captl && d->captl < SAMPLES_MAX) {
		size_t cap = d->captl ? 2 * d->captl : 256;
		struct sample *n = realloc(d->tl, cap * sizeof(*n));

		if (n) {
			d->tl = n;
			d->captl = cap;
		}
	}
	if (d->ntl < d->captl)
		d->tl[d->ntl++] = (struct sample){rdmig_now_ns() - d->t_resume,
		                                  s.faults,
		                                  s.faults_fetched,
		                                  s.prefetched,
		                                  s.pages_installed,
		                                  s.pages_total};
	if (d->progress) {
		double el = (double)(rdmig_now_ns() - d->t_resume) / 1e9;
		uint64_t left = s.pages_remote + s.pages_inflight;
		double rate = el > 0 ? (double)s.installed / el : 0;

		fprintf(stderr,
		        "\rpost-copy %6.1f s: %" PRIu64 " faults served (%" PRIu64
		        " fetched), %" PRIu64 " prefetched, %" PRIu64 " of %" PRIu64
		        " pages local, %.0f MiB/s, ETA %.1f s   %s",
		        el, s.faults, s.faults_fetched, s.prefetched, s.pages_installed,
		        s.pages_total, rate * 4096 / 1048576, rate > 0 ? (double)left / rate : 0.0,
		        last ? "\n" : "");
	}
}

static void close_old_data(void *arg)
{
	struct dst *d = arg;

	rdmig_tp_close(d->data);
	d->data = d->next_data;
	d->next_data = NULL;
}

/* Milliseconds left until deadline (rdmig_now_ns; 0: none, -1 returned). */
static int ms_left(uint64_t deadline)
{
	uint64_t now = rdmig_now_ns();

	if (!deadline)
		return -1;
	return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* How long a new connection has to say which migration it is of: its source
 * sends SESSION as soon as it is connected. */
#define SESSION_WAIT_MS 5000

/* c said it belongs to another migration, or nothing we could take: told (when
 * it can hear it) and closed. */
static void turn_away(struct rdmig_conn *c, int ret, unsigned flags, bool learn)
{
	if (ret == 0 && learn && (flags & RDMIG_SESSION_RETURNING)) {
		rdmig_send_error(c, ESRCH, RDMIG_SESSION_UNKNOWN_TEXT);
		fprintf(stderr, "rdma_migrate dst: turned away a source coming back to a "
		                "migration this destination never had\n");
	} else if (ret == 0) {
		rdmig_send_error(c, EBUSY, RDMIG_SESSION_BUSY_TEXT);
		fprintf(stderr, "rdma_migrate dst: turned away a source of another migration\n");
	} else {
		pr_warn("a new connection did not say which migration it is of (%s): closed",
		        strerror(-ret));
	}
	rdmig_tp_close(c);
}

/* Accept a connection of this migration within timeout_ms (-1: for ever): a
 * control one, or with watch (its control connection) the data one that goes
 * with it, the wait ending early if watch breaks (rdmig_tp_accept_next).
 * learn: the first source that starts a migration is ours (the first
 * connection of all); otherwise only d->session's is. A peer without the
 * token, another migration's source, and one coming back to a migration we
 * never had are turned away, and the wait goes on. *flags: its SESSION's. */
static int accept_own(struct dst *d, int timeout_ms, struct rdmig_conn *watch, bool learn,
                      struct rdmig_conn **out, unsigned *flags)
{
	uint64_t deadline = timeout_ms < 0 ? 0 : rdmig_now_ns() + (uint64_t)timeout_ms * 1000000;
	struct rdmig_session got;
	struct rdmig_conn *c;
	int ret;

	*out = NULL;
	*flags = 0;
	for (;;) {
		int left = ms_left(deadline);

		if (left == 0)
			return -ETIMEDOUT;
		ret = watch ? rdmig_tp_accept_next(d->lis, left, watch, &c)
		            : rdmig_tp_accept(d->lis, left, &c);
		if (ret == -EACCES) {
			fprintf(stderr, "rdma_migrate dst: turned away a peer that does not hold "
			                "the token\n");
			continue;
		}
		if (ret < 0)
			return ret;
		ret = rdmig_session_recv(c, SESSION_WAIT_MS, &got, flags);
		if (ret == 0 && (learn ? !(*flags & RDMIG_SESSION_RETURNING)
		                       : rdmig_session_eq(&got, &d->session)))
			break;
		turn_away(c, ret, *flags, learn);
	}
	if (learn)
		d->session = got;
	*out = c;
	return 0;
}

/* This migration's control connection (accept_own), its SESSION answered with
 * ours: the source waits for that before it goes on. */
static int accept_ctl(struct dst *d, int timeout_ms, bool learn, struct rdmig_conn **out)
{
	struct rdmig_conn *c;
	unsigned flags;
	int ret = accept_own(d, timeout_ms, NULL, learn, &c, &flags);

	if (ret == 0)
		ret = rdmig_session_send(c, &d->session, flags);
	if (ret < 0) {
		rdmig_tp_close(c);
		return ret;
	}
	/* messages only (the source's control connection says why) */
	rdmig_tp_messages_only(c);
	*out = c;
	return 0;
}

/* The data connection that goes with ctl (accept_own; no answer). */
static int accept_data(struct dst *d, struct rdmig_conn *ctl, int timeout_ms,
                       struct rdmig_conn **out)
{
	unsigned flags;

	return accept_own(d, timeout_ms, ctl, false, out, &flags);
}

/* The link to the source broke after the switch: wait up to --retry-s for it to
 * connect again (both connections), take its new mirror table, put a source on
 * the new data connection behind the loop's switch, and post the failed fetches
 * again. Meanwhile the process's faults wait. */
static int reconnect(struct dst *d, int why)
{
	int left = d->o->retry_ms, ret;
	uint64_t t0 = rdmig_now_ns(), fetches = 0, bytes = 0;
	struct rdmig_page_source *inner = NULL;
	struct rdmig_region *regions = NULL;
	struct rdmig_conn *ctl = NULL;
	uint32_t n = 0;

	if (!d->lis || left <= 0)
		return why;
	fprintf(stderr,
	        "rdma_migrate dst: lost the source (%s); waiting up to %d s for it to come "
	        "back, pid %d's faults wait meanwhile\n",
	        strerror(-why), left / 1000, (int)d->r.pid);
	/* the source sees its control connection go and reconnects */
	rdmig_tp_close(d->ctl);
	d->ctl = NULL;
	ret = accept_ctl(d, left, false, &ctl);
	left = d->o->retry_ms - (int)((rdmig_now_ns() - t0) / 1000000);
	if (ret == 0)
		ret = accept_data(d, ctl, left > 1000 ? left : 1000, &d->next_data);
	if (ret == 0)
		ret =
		    rdmig_mirror_recv_table(d->next_data, left > 1000 ? left : 1000, &regions, &n);
	if (ret == 0)
		ret = rdmig_tpsource_create(&(struct rdmig_tpsource_opts){.conn = d->next_data,
		                                                          .regions = regions,
		                                                          .nregions = n},
		                            &inner);
	if (ret == 0) {
		rdmig_tpsource_stats(d->src, &fetches, &bytes);
		ret = rdmig_switchsrc_swap(d->pager_src, inner, close_old_data, d);
	}
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate dst: the source did not come back within %d s: %s\n",
		        d->o->retry_ms / 1000, strerror(-ret));
		rdmig_source_destroy(inner);
		rdmig_tp_close(d->next_data);
		d->next_data = NULL;
		rdmig_tp_close(ctl);
		free(regions);
		return why;
	}
	d->bytes_before += bytes;
	d->src = inner;
	free(d->regions);
	d->regions = regions;
	d->nregions = n;
	d->ctl = ctl;
	d->reconnects++;
	pthread_mutex_lock(&d->mu);
	d->last_ev = 0;
	pthread_mutex_unlock(&d->mu);
	fprintf(stderr, "rdma_migrate dst: the source is back after %.1f s; fetching again\n",
	        (double)(rdmig_now_ns() - t0) / 1e9);
	return rdmig_faultloop_retry(d->loop);
}

/* A PART: checked against the image (a part of one held vma, which is all the
 * source may release), then handed to the loop. */
static int take_part(struct dst *d, const struct rdmig_msg *m)
{
	uint64_t end = m->u.part.addr + (uint64_t)m->u.part.pages * PG;
	const struct rdmig_img_vma *v = rdmig_image_vma_at(&d->img, m->u.part.addr);
	int ret;

	if (!v || v->kind != RDMIG_VMA_ANON || !(v->flags & RDMIG_VMA_F_HELD) || end > v->end) {
		pr_err("the source released %#" PRIx64 "-%#" PRIx64
		       ", which is not part of a held mapping: closing the connection",
		       m->u.part.addr, end);
		return -EBADMSG;
	}
	ret = rdmig_faultloop_release(d->loop, m->u.part.addr, m->u.part.pages, m->u.part.bits);
	if (ret < 0)
		return ret;
	d->parts++;
	if ((m->u.part.flags & RDMIG_PART_LAST) && !d->parts_done) {
		d->parts_done = true;
		d->t_released = rdmig_now_ns();
		if (d->t_resume)
			pr_info("every held page released, %.2f ms after the resume (%u parts)",
			        (double)(d->t_released - d->t_resume) / 1e6, d->parts);
		else
			pr_info("every held page released before the resume (%u parts)", d->parts);
	}
	return 0;
}

/* PAGES, the source's answer to our WANTs: checked as a PART is (pages of one
 * held vma), then handed to the loop, which installs those still held. */
static int take_pages(struct dst *d, const struct rdmig_msg *m)
{
	uint64_t end = m->u.pages.addr + (uint64_t)m->u.pages.pages * PG;
	const struct rdmig_img_vma *v = rdmig_image_vma_at(&d->img, m->u.pages.addr);

	if (!v || v->kind != RDMIG_VMA_ANON || !(v->flags & RDMIG_VMA_F_HELD) || end > v->end) {
		pr_err("the source sent pages %#" PRIx64 "-%#" PRIx64
		       ", which are not part of a held mapping: closing the connection",
		       m->u.pages.addr, end);
		return -EBADMSG;
	}
	return rdmig_faultloop_held_pages(d->loop, m->u.pages.addr, m->u.pages.pages,
	                                  m->u.pages.mask, m->u.pages.data);
}

/* A PART before GO. One that cannot be taken (no pager, or one outside a held
 * mapping) fails the pager (*pret), which is told to the source after its GO,
 * as the ERROR that lets it resume its original. */
static void go_part(struct dst *d, const struct rdmig_msg *m, int *pret)
{
	int ret;

	if (*pret < 0)
		return; /* failing already: its ERROR goes after GO */
	ret = d->loop && d->held ? take_part(d, m) : -EPROTO;
	if (ret < 0) {
		if (ret == -EPROTO)
			pr_err("the source sent a PART for no held mapping");
		snprintf(d->why, sizeof(d->why),
		         "a part of the process's memory the source released could not be taken "
		         "(%s)",
		         strerror(-ret));
		*pret = ret;
	}
}

/* GO, taking the PARTs the source walked while we restored (a few sent while
 * we restored, the rest between our READY and its GO: parts.h): released
 * before the resume, their pages are never waited on. As rdmig_expect
 * otherwise. */
static int expect_go(struct dst *d, int timeout_ms, struct rdmig_msg *m, int *pret)
{
	for (;;) {
		int len = rdmig_recv_soon(d->ctl, d->msg, RDMIG_MSG_MAX, timeout_ms);

		if (len < 0 || rdmig_msg_decode(d->msg, (size_t)len, m) < 0 ||
		    m->type != RDMIG_MSG_PART)
			return rdmig_expect_got(d->msg, len, RDMIG_MSG_GO, m);
		go_part(d, m, pret);
	}
}

/* Everything on the control connection now: PARTs, and PAGES for our WANTs. A
 * link error is returned as it is (the caller reconnects); anything else that
 * came is -EPROTO. */
static int recv_parts(struct dst *d, bool *bad)
{
	struct rdmig_msg m;

	*bad = false;
	for (;;) {
		int n = rdmig_tp_recv(d->ctl, d->msg, RDMIG_MSG_MAX, 0);

		if (n == -EAGAIN)
			return 0;
		if (n < 0)
			return n;
		*bad = true;
		n = rdmig_msg_decode(d->msg, (size_t)n, &m);
		if (n < 0) {
			pr_err("a malformed message from the source (%s): closing the connection",
			       strerror(-n));
			return n;
		}
		if (m.type == RDMIG_MSG_ERROR) {
			pr_err("the source gave up: %s", m.u.error.text);
			return -m.u.error.code;
		}
		if (m.type != RDMIG_MSG_PART && m.type != RDMIG_MSG_PAGES) {
			pr_err("expected PART or PAGES, got %s: closing the connection",
			       rdmig_msg_type_name(m.type));
			return -EPROTO;
		}
		n = m.type == RDMIG_MSG_PART ? take_part(d, &m) : take_pages(d, &m);
		if (n < 0)
			return n;
		*bad = false;
	}
}

/* The faults waiting on held pages, told to the source: it walks their parts
 * first. */
static int send_wants(struct dst *d)
{
	uint64_t w[WANTS_MAX];
	unsigned n;
	int ret = 0;

	pthread_mutex_lock(&d->mu);
	n = d->nwants;
	memcpy(w, d->wants, n * sizeof(*w));
	d->nwants = 0;
	pthread_mutex_unlock(&d->mu);
	for (unsigned i = 0; i < n && ret == 0 && !d->parts_done; i++) {
		int len = rdmig_msg_encode_u64(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_WANT, &w[i], 1);

		ret = len < 0 ? len : rdmig_tp_send(d->ctl, d->msg, (size_t)len);
	}
	return ret;
}

static int wait_all_local(struct dst *d)
{
	for (;;) {
		struct pollfd pfd[2] = {{.fd = d->evfd, .events = POLLIN},
		                        {.fd = -1, .events = POLLIN}};
		enum rdmig_pager_event_type ev;
		uint64_t v;
		bool bad;
		int st, ret, k;

		if (d->held && !d->parts_done)
			pfd[1].fd = rdmig_tp_event_fd(d->ctl);
		k = poll(pfd, 2, SAMPLE_MS);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (rdmig_now_ns() - d->t_sampled >= SAMPLE_MS * 1000000ull) {
			d->t_sampled = rdmig_now_ns();
			sample(d, false);
		}
		if (d->held && !d->parts_done) {
			ret = pfd[1].revents ? recv_parts(d, &bad) : 0;
			if (ret == 0)
				ret = send_wants(d);
			else if (bad)
				return ret; /* not the link's failure: the source's */
			/* the link: its faults wait (never zeros) while it comes back */
			if (ret < 0 && (ret = reconnect(d, ret)) < 0)
				return ret;
		}
		if (!pfd[0].revents)
			continue;
		if (read(d->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			return -errno;
		pthread_mutex_lock(&d->mu);
		ev = d->last_ev;
		st = d->last_status;
		pthread_mutex_unlock(&d->mu);
		switch (ev) {
		case RDMIG_PAGER_ALL_LOCAL:
		case RDMIG_PAGER_TARGET_GONE:
			sample(d, true);
			return 0;
		case RDMIG_PAGER_FATAL:
			return st ? st : -EIO;
		case RDMIG_PAGER_SOURCE_FAILED:
			/* the pages it still needs cannot come now: faults wait (never
			 * zeros) while the source gets the time to come back */
			ret = reconnect(d, st ? st : -ECONNRESET);
			if (ret < 0)
				return ret;
			break;
		default:
			break; /* stalled: keep waiting, it may recover */
		}
	}
}

/* Every page is local: hand the ranges back to the kernel and close the
 * process's own copy of the uffd, so nothing of ours is left in it. */
static int release_uffd(struct dst *d)
{
	int ret = 0;

	rdmig_faultloop_stop(d->loop);
	for (uint32_t i = 0; d->loop && i < d->img.nvmas; i++) {
		const struct rdmig_img_vma *v = &d->img.vmas[i];

		if (v->kind == RDMIG_VMA_ANON && (v->touched || (v->flags & RDMIG_VMA_F_HELD)) &&
		    rdmig_uffd_unregister(d->r.uffd, v->start, v->end - v->start) < 0)
			pr_debug("range %#" PRIx64 " is gone already", v->start);
	}
	if (kill(d->r.pid, 0) == 0)
		ret = rdmig_restore_drop_uffd(&d->r);
	return ret;
}

static void summary(struct dst *d, const struct rdmig_faultloop_stats *s, uint64_t bytes)
{
	uint64_t demand = s->faults_fetched, pre = s->prefetched;
	double cover = demand + pre ? 100.0 * (double)pre / (double)(demand + pre) : 100.0;

	printf("rdma_migrate dst: pid %d (pid %d on the source) runs here: downtime %.3f ms, "
	       "all pages local %.3f s after resume; %" PRIu64 " faults (%" PRIu64
	       " fetched on demand, %" PRIu64 " zero, %" PRIu64 " coalesced), %" PRIu64
	       " prefetched: prefetch coverage %.1f%%; %.1f MiB read\n",
	       (int)d->r.pid, (int)d->img.pid, (double)(d->t_resume - d->t_go) / 1e6,
	       (double)(d->t_local - d->t_resume) / 1e9, s->faults, demand, s->faults_zero,
	       s->faults_coalesced, pre, cover, (double)bytes / 1048576.0);
	printf("rdma_migrate dst: downtime here: restore %.2f, ready %.2f, wait for GO %.2f "
	       "(start paging %.2f of it), resume %.2f ms\n",
	       (double)(d->t_built - d->t_received) / 1e6,
	       (double)(d->t_readied - d->t_built) / 1e6, (double)(d->t_gone - d->t_readied) / 1e6,
	       (double)(d->t_paged - d->t_readied) / 1e6, (double)(d->t_resume - d->t_gone) / 1e6);
	if (s->ev_fork)
		printf("rdma_migrate dst: %" PRIu64 " forks served; %" PRIu64
		       " pages fetched for a child went into its parent too\n",
		       s->ev_fork, s->shared);
	fflush(stdout);
	if (d->o->stats_json) {
		FILE *f = fopen(d->o->stats_json, "we");

		if (!f) {
			pr_err("cannot write %s: %s", d->o->stats_json, strerror(errno));
			return;
		}
		fprintf(
		    f,
		    "{\"side\":\"dst\",\"pid\":%d,\"source_pid\":%d,\"resume_after_go_ns\":%" PRIu64
		    ",\"all_local_ns\":%" PRIu64 ",\"faults\":%" PRIu64 ",\"fetched\":%" PRIu64
		    ",\"zero\":%" PRIu64 ",\"coalesced\":%" PRIu64 ",\"prefetched\":%" PRIu64
		    ",\"bytes_read\":%" PRIu64 ",\"downtime_phases_ns\":{\"restore\":%" PRIu64
		    ",\"ready\":%" PRIu64 ",\"wait_go\":%" PRIu64 ",\"resume\":%" PRIu64
		    "},\"start_paging_ns\":%" PRIu64 ",\"held_faults\":%" PRIu64
		    ",\"held_pages_answered\":%" PRIu64 ",\"released_ns\":%" PRId64
		    ",\"forks\":%" PRIu64 ",\"shared_with_parent\":%" PRIu64,
		    (int)d->r.pid, (int)d->img.pid, d->t_resume - d->t_go, d->t_local - d->t_resume,
		    s->faults, demand, s->faults_zero, s->faults_coalesced, pre, bytes,
		    d->t_built - d->t_received, d->t_readied - d->t_built, d->t_gone - d->t_readied,
		    d->t_resume - d->t_gone, d->t_paged - d->t_readied, s->faults_held,
		    s->held_pages_in, d->t_released ? (int64_t)(d->t_released - d->t_resume) : 0,
		    s->ev_fork, s->shared);
		/* the timeline: [ms after resume, faults, fetched, prefetched, local, total] */
		fprintf(f, ",\"timeline\":[");
		for (size_t i = 0; i < d->ntl; i++)
			fprintf(f,
			        "%s[%.1f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
			        "]",
			        i ? "," : "", (double)d->tl[i].t_ns / 1e6, d->tl[i].faults,
			        d->tl[i].fetched, d->tl[i].prefetched, d->tl[i].installed,
			        d->tl[i].total);
		fprintf(f, "]}\n");
		fclose(f);
	}
}

static int abort_restore(struct dst *d, const char *what, int err)
{
	fprintf(stderr, "rdma_migrate dst: %s: %s\n", what, d->why[0] ? d->why : strerror(-err));
	if (d->ctl)
		rdmig_send_error(d->ctl, err, d->why[0] ? d->why : what);
	rdmig_faultloop_destroy(d->loop);
	d->loop = NULL;
	if (d->restored)
		rdmig_restore_abort(&d->r);
	d->restored = false;
	(void)dst_set_state(d, DST_ABORTED);
	fprintf(stderr, "rdma_migrate dst: aborted: nothing runs here; the source keeps its "
	                "process\n");
	return RDMIG_EXIT_ROLLED_BACK;
}

static int done_again(struct dst *d, const uint64_t *v, int len)
{
	struct rdmig_conn *ctl = NULL, *data = NULL;
	struct rdmig_region *regions = NULL;
	struct rdmig_msg m;
	uint32_t nr;
	int ret, wait = d->o->retry_ms > 1000 ? d->o->retry_ms : 1000;

	ret = accept_ctl(d, wait, false, &ctl);
	if (ret == 0)
		ret = accept_data(d, ctl, wait, &data);
	if (ret == 0)
		ret = rdmig_mirror_recv_table(data, wait, &regions, &nr); /* not needed now */
	if (ret == 0) {
		/* d->msg was reused by the receive that failed: encode DONE again */
		len = rdmig_msg_encode_u64(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_DONE, v, 4);
		ret = len < 0 ? len : rdmig_tp_send(ctl, d->msg, (size_t)len);
	}
	if (ret == 0)
		ret = rdmig_expect_past(ctl, d->msg, RDMIG_MSG_BYE, RDMIG_MSG_PART, 10000, &m);
	free(regions);
	rdmig_tp_close(data);
	rdmig_tp_close(ctl);
	return ret;
}

static int finish(struct dst *d)
{
	struct rdmig_faultloop_stats s;
	uint64_t fetches = 0, bytes = 0, v[4];
	struct rdmig_msg m;
	int ret, n;

	/* pre-copy: everything was in place before the process ran */
	ret = d->stopcopy ? 0 : wait_all_local(d);
	if (ret < 0) {
		(void)dst_set_state(d, DST_FAILED);
		fprintf(stderr,
		        "rdma_migrate dst: the migration failed after the switch: %s. pid %d "
		        "waits on the pages it has not got yet (it never reads wrong data); its "
		        "source process is held stopped\n",
		        strerror(-ret), (int)d->r.pid);
		return RDMIG_EXIT_FAILED;
	}
	d->t_local = rdmig_now_ns();
	memset(&s, 0, sizeof(s));
	if (d->loop)
		rdmig_faultloop_stats(d->loop, &s);
	if (d->src)
		rdmig_tpsource_stats(d->src, &fetches, &bytes);
	bytes += d->bytes_before;
	if (d->stopcopy)
		s.faults_fetched = d->pages_at_stop; /* fetched, on no fault: before the run */
	bytes += rdmig_arena_pulled(d->arena) * PG;
	ret = release_uffd(d);
	if (ret < 0)
		pr_warn("could not close the process's userfaultfd: %s", strerror(-ret));
	v[0] = s.faults;
	v[1] = s.faults_fetched;
	v[2] = s.prefetched;
	v[3] = bytes;
	n = rdmig_msg_encode_u64(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_DONE, v, 4);
	ret = n < 0 ? n : rdmig_tp_send(d->ctl, d->msg, (size_t)n);
	if (ret == 0)
		ret = rdmig_expect_past(d->ctl, d->msg, RDMIG_MSG_BYE, RDMIG_MSG_PART, 10000, &m);
	if (ret < 0 && ret != -ETIMEDOUT && d->lis) {
		/* The link broke around our DONE: a source that reconnects gets it again,
		 * so it does not take a finished migration for a failed one. */
		ret = done_again(d, v, n);
	}
	if (ret < 0)
		pr_warn("the source did not acknowledge DONE (%s): it may hold its original "
		        "stopped; the process here has every page",
		        strerror(-ret));
	(void)dst_set_state(d, DST_DONE);
	summary(d, &s, bytes);
	return RDMIG_EXIT_OK;
}

static int run(struct dst *d)
{
	const struct rdmig_migrate_opts *o = d->o;
	int ret, pret, step = o->timeout_ms > 0 ? o->timeout_ms : 60000;
	struct rdmig_restore_opts ro = {.stdio_path = {o->stdio[0], o->stdio[1], o->stdio[2]}};
	struct rdmig_msg m;

	/* The husk is forked before any transport exists: it must carry nothing of
	 * ours (no registrations, no threads). */
	ret = rdmig_husk_spawn(&d->husk);
	/* emptied now, not inside the downtime */
	if (ret == 0)
		ret = rdmig_husk_prepare(d->husk);
	if (ret < 0) {
		fprintf(stderr,
		        "rdma_migrate dst: cannot start or empty the husk process the migrated "
		        "one is built in: %s\n",
		        strerror(-ret));
		return RDMIG_EXIT_ROLLED_BACK;
	}
	/* The page states of 8 GiB of the process's memory, touched now rather than
	 * inside the downtime (2 MiB; a bigger process allocates the rest then). */
	ret = rdmig_pagestate_reserve(STATE_RESERVE);
	if (ret < 0)
		pr_warn("no page-state reserve (%s): its setup will take longer", strerror(-ret));
	ret = rdmig_tp_listen(&o->tp, o->addr, &d->lis);
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate dst: cannot listen on %s: %s\n", o->addr,
		        strerror(-ret));
		return RDMIG_EXIT_USAGE;
	}
	fprintf(stderr, "rdma_migrate dst: listening on %s (port %d)\n", o->addr,
	        rdmig_tp_local_port(d->lis));
	ret = dst_set_state(d, DST_LISTENING);
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate dst: %s\n", strerror(-ret));
		return RDMIG_EXIT_ROLLED_BACK;
	}
	/* The first source to connect is ours. Its data connection follows at
	 * once; a source that fails or is stopped in between closes the control
	 * one, which ends the wait. */
	ret = accept_ctl(d, -1, true, &d->ctl);
	if (ret == 0)
		ret = accept_data(d, d->ctl, step, &d->data);
	if (ret < 0 && d->ctl && rdmig_tp_check(d->ctl) < 0) {
		struct rdmig_msg em;
		int len = rdmig_tp_recv(d->ctl, d->msg, RDMIG_MSG_MAX, 0);

		/* the ERROR a source that gave up sent before closing, when it came */
		if (len > 0 && rdmig_msg_decode(d->msg, (size_t)len, &em) == 0 &&
		    em.type == RDMIG_MSG_ERROR)
			fprintf(stderr,
			        "rdma_migrate dst: the source gave up before making its data "
			        "connection: %s; nothing was restored here\n",
			        em.u.error.text);
		else
			fprintf(stderr,
			        "rdma_migrate dst: the source went away before making its data "
			        "connection (%s): it failed or was stopped; nothing was restored "
			        "here, its log says why\n",
			        strerror(-ret));
		return RDMIG_EXIT_ROLLED_BACK;
	}
	if (ret < 0) {
		fprintf(stderr, "rdma_migrate dst: accepting the source failed: %s\n",
		        strerror(-ret));
		return RDMIG_EXIT_ROLLED_BACK;
	}
	/* The fetches' staging, faulted in now, while the source copies: not during
	 * the first fetches, which the process waits for. Without it (no memory)
	 * the page source maps its own. */
	d->staging = rdmig_tpsource_staging_new();
	/* what the image's decode and the restore allocate, resident before they do
	 * (whether or not a layout comes ahead) */
	rdmig_heap_warm(8u << 20);
	if (rdmig_spare_start(&d->spare) < 0)
		pr_info("no thread made ahead for the pager: it makes its own at the switch");
	/* kept open after the switch, for a source that has to reconnect */
	if (o->retry_ms <= 0) {
		rdmig_tp_close_listener(d->lis);
		d->lis = NULL;
	}
	ret = dst_set_state(d, DST_RECEIVING);
	if (ret == 0)
		ret = recv_process(d);
	if (ret < 0)
		return abort_restore(d, "receiving the process failed", ret);
	d->t_received = rdmig_now_ns();

	ret = dst_set_state(d, DST_RESTORING);
	if (ret < 0)
		return abort_restore(d, "cannot restore the process", ret);
	ret = rdmig_restore_build(d->husk, &d->img, &ro, &d->r, d->why, sizeof(d->why));
	d->husk = NULL; /* consumed */
	if (ret < 0)
		return abort_restore(d, "cannot restore the process", ret);
	d->t_built = rdmig_now_ns();
	d->restored = true;
	ret = recv_views(d);
	if (ret < 0)
		return abort_restore(d, "receiving the process failed", ret);
	ret = dst_set_state(d, DST_READY);
	if (ret == 0) {
		int n = rdmig_msg_encode_empty(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_READY);

		ret = n < 0 ? n : rdmig_tp_send(d->ctl, d->msg, (size_t)n);
	}
	if (ret < 0)
		return abort_restore(d, "cannot tell the source the process is ready", ret);
	d->t_readied = rdmig_now_ns();
	/* The pager starts while the source commits (~0.6 ms of the downtime off
	 * the GO round trip): nothing runs here before GO, and a pager that did not
	 * start is told to the source after its GO, as the ERROR that lets a
	 * committed source resume its original (an ERROR before GO would meet a
	 * source still sending it, which parks the original instead). */
	pret = rdmig_inject("dst.pager");
	if (pret == 0)
		pret = d->stopcopy ? install_all(d) : start_pager(d);
	d->t_paged = rdmig_now_ns();
	ret = expect_go(d, step, &m, &pret);
	if (ret < 0)
		return abort_restore(d, "the source did not commit", ret);
	if (pret < 0)
		return abort_restore(d, "cannot start serving the process's memory", pret);
	d->t_go = m.u.u64[0];
	d->t_gone = rdmig_now_ns();
	ret = rdmig_inject("dst.resume");
	if (ret == 0)
		ret = rdmig_restore_resume(&d->r);
	if (ret < 0) {
		/* Nothing ran here: kill what was built and say so plainly, so the
		 * committed source knows it may resume its original. */
		snprintf(d->why, sizeof(d->why),
		         "the destination could not resume the process "
		         "(%s); it was killed there without running",
		         strerror(-ret));
		return abort_restore(d, "cannot resume the restored process", ret);
	}
	d->resumed = true;
	d->t_resume = rdmig_now_ns();
	{
		uint64_t v[2] = {(uint64_t)d->r.pid, d->t_resume};
		int n = rdmig_msg_encode_u64(d->msg, RDMIG_MSG_MAX, RDMIG_MSG_RUNNING, v, 2);

		ret = n < 0 ? n : rdmig_tp_send(d->ctl, d->msg, (size_t)n);
		if (ret < 0)
			pr_warn("the source did not get RUNNING: %s", strerror(-ret));
	}
	ret = dst_set_state(d, DST_RUNNING);
	if (ret < 0) {
		/* after the switch: the process runs and waits on what it lacks */
		(void)dst_set_state(d, DST_FAILED);
		fprintf(stderr,
		        "rdma_migrate dst: failed after the switch (%s): pid %d waits on the "
		        "pages it has not got (never reads wrong data)\n",
		        strerror(-ret), (int)d->r.pid);
		return RDMIG_EXIT_FAILED;
	}
	fprintf(stderr, "rdma_migrate dst: pid %d (pid %d on the source) runs here\n",
	        (int)d->r.pid, (int)d->img.pid);
	return finish(d);
}

static void wait_process(struct dst *d)
{
	int st;

	fprintf(stderr, "rdma_migrate dst: waiting for pid %d to exit\n", (int)d->r.pid);
	while (waitpid(d->r.pid, &st, 0) < 0) {
		if (errno != EINTR) {
			pr_err("waitpid %d: %s", (int)d->r.pid, strerror(errno));
			return;
		}
	}
	if (WIFEXITED(st))
		printf("rdma_migrate dst: pid %d exited with status %d\n", (int)d->r.pid,
		       WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		printf("rdma_migrate dst: pid %d was killed by signal %d\n", (int)d->r.pid,
		       WTERMSIG(st));
	fflush(stdout);
}

int rdmig_dst_run(const struct rdmig_migrate_opts *o)
{
	struct dst d = {.o = o, .evfd = -1, .r = {.uffd = -1, .uffd_in_proc = -1}};
	int rc;

	rdmig_log_set_tag("dst");
	pthread_mutex_init(&d.mu, NULL);
	d.progress = isatty(STDERR_FILENO);
	d.msg = malloc(RDMIG_MSG_MAX);
	d.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!d.msg || d.evfd < 0) {
		free(d.msg);
		return RDMIG_EXIT_ROLLED_BACK;
	}
	rc = run(&d);
	if (rc == RDMIG_EXIT_OK && o->wait)
		wait_process(&d);
	/* After a failure past the switch the process keeps its own copy of the uffd:
	 * with our loop gone its faults on missing pages wait, they never read zeros. */
	rdmig_faultloop_destroy(d.loop);
	rdmig_spare_stop(&d.spare); /* after the loop that may have joined it */
	if (d.r.uffd >= 0 && d.restored)
		close(d.r.uffd);
	rdmig_prefetch_destroy(d.pf);
	/* A READ still outstanding (a hinted fetch when the switch failed, a pull
	 * abandoned) writes into its staging until the data connection is closed:
	 * as at a reconnection (switchsrc.c), the registrations go first, then the
	 * connection, then the memory. A SEGV in fabric's thread (signals blocked:
	 * no sanitizer report) when the staging went first. */
	if (d.src)
		rdmig_tpsource_retire(d.src);
	rdmig_arena_retire(d.arena);
	rdmig_tp_close(d.data);
	d.data = NULL;
	if (d.pager_src)
		rdmig_source_destroy(d.pager_src); /* owns src and those it replaced */
	else
		rdmig_source_destroy(d.src);
	rdmig_tpsource_staging_free(d.staging); /* after the source that used it */
	rdmig_arena_destroy(d.arena);
	free(d.regions);
	rdmig_image_free(&d.img);
	free(d.lay_cow);
	rdmig_husk_destroy(d.husk);
	rdmig_tp_close(d.data);
	rdmig_tp_close(d.ctl);
	rdmig_tp_close_listener(d.lis);
	close(d.evfd);
	free(d.msg);
	free(d.tl);
	pthread_mutex_destroy(&d.mu);
	return rc;
}
