/*
 * What both sides of a migration share (src/migrate_common.c): the clock for
 * downtime, receiving one expected control message, a heap ready for the
 * downtime.
 */
#ifndef RDMIG_MIGRATE_COMMON_H
#define RDMIG_MIGRATE_COMMON_H

#include "rdmig/proto.h"
#include "rdmig/transport.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CLOCK_REALTIME in ns: downtime spans two hosts, whose monotonic clocks differ. */
uint64_t rdmig_now_ns(void);

/* Wait up to timeout_ms (-1: forever) for a message of type `want` into buf
 * (RDMIG_MSG_MAX bytes), decoded into *m. An ERROR from the peer is logged with
 * its text and returned as -code; a malformed message -EBADMSG; another type
 * -EPROTO. The caller closes the connection on any error. */
RDMIG_WUR int rdmig_expect(struct rdmig_conn *c, uint8_t *buf, uint16_t want, int timeout_ms,
                           struct rdmig_msg *m);
/* The same, passing over messages of type skip that may still be on their way
 * (a PART or a WANT sent before the peer learnt it was no longer needed). */
RDMIG_WUR int rdmig_expect_past(struct rdmig_conn *c, uint8_t *buf, uint16_t want, uint16_t skip,
                                int timeout_ms, struct rdmig_msg *m);
/* rdmig_expect's checks on a message received already (len: its length, or the
 * receive's -errno). */
RDMIG_WUR int rdmig_expect_got(const uint8_t *buf, int len, uint16_t want, struct rdmig_msg *m);

/* rdmig_tp_recv for a message due within the downtime (READY, GO): asks
 * without sleeping, yielding between asks, for up to RDMIG_SPIN_NS (the
 * environment's RDMIG_SPIN=off: not at all), then sleeps as rdmig_tp_recv does
 * for the rest of timeout_ms. On this PVM guest a thread that sleeps wakes
 * 0.25-0.5 ms after its message when its vCPU went idle (design.md). */
#define RDMIG_SPIN_NS (5ull * 1000 * 1000)
RDMIG_WUR int rdmig_recv_soon(struct rdmig_conn *c, uint8_t *buf, size_t cap, int timeout_ms);

/* Send len bytes of buf as chunk messages of type (IMAGE, LAYOUT), each
 * encoded into msg (RDMIG_MSG_MAX bytes). 0 / -errno. */
RDMIG_WUR int rdmig_send_chunks(struct rdmig_conn *c, uint8_t *msg, uint16_t type,
                                const uint8_t *buf, size_t len);

/* Tell the peer why we give up (best effort). */
void rdmig_send_error(struct rdmig_conn *c, int err, const char *text);

/* Make `bytes` at the top of the heap resident and keep the heap from shrinking:
 * called well before the downtime, so that what is allocated inside it does not
 * fault in fresh pages one by one. */
void rdmig_heap_warm(size_t bytes);

/* A thread made well before the downtime for one job inside it: creating one
 * there (its stack's mmap and guard, the clone) cost the destination's pager
 * start 0.12-0.17 ms here, and its first malloc (its own arena) more. The
 * thread waits until rdmig_spare_spawn hands it a function, then runs it and
 * ends as a thread of pthread_create would: the caller joins it. It has the
 * signal mask its starter had. */
struct rdmig_spare {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t th;
	void *(*fn)(void *);
	void *arg;
	bool started, handed, quit;
};
/* 0 / -errno; a spare that did not start is not an error for spawn (it makes
 * a thread then). */
RDMIG_WUR int rdmig_spare_start(struct rdmig_spare *sp);
/* Run fn(arg) on the spare thread, its handle in *th for pthread_join; when
 * there is none left (never started, or handed already), on a new thread.
 * 0 / -errno. The signature of rdmig_faultloop_opts.spawn. */
RDMIG_WUR int rdmig_spare_spawn(void *sp, pthread_t *th, void *(*fn)(void *), void *arg);
/* A spare never handed out ends here; one handed out must have been joined by
 * its taker first. Safe on a zeroed or never-started spare. */
void rdmig_spare_stop(struct rdmig_spare *sp);

#endif
