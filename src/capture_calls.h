/*
 * What only the process itself can say, asked by calls injected into it
 * (src/capture_calls.c): its signal handlers and brk, and each thread's
 * alternate stack and clear_child_tid. Asked inside the freeze, or once
 * earlier with a watch that says whether the answers still hold
 * (rdmig/capture.h's rdmig_capture_early).
 */
#ifndef RDMIG_CAPTURE_CALLS_H
#define RDMIG_CAPTURE_CALLS_H

#include "rdmig/capture.h"
#include "rdmig/image.h"
#include "rdmig/tracee.h"

#include <stdint.h>
#include <string.h>

/* A u64 the tracee wrote (x86_64 only: host order is the tracee's). */
static inline uint64_t capture_le64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

struct capture_calls_thread {
	int32_t tid;
	uint32_t altstack_flags;
	uint64_t altstack_sp, altstack_size, clear_child_tid;
};

struct capture_calls {
	struct rdmig_img_sigaction sigactions[RDMIG_IMG_NSIG];
	uint64_t brk;
	unsigned nthreads;
	struct capture_calls_thread *threads; /* in the tracee's order */
};

/* Ask every thread of t (seized, interrupted). set_sigs: SigCgt | SigIgn from
 * /proc: only those signals (and SIGCHLD) are asked; the others are SIG_DFL
 * with no flags. 0 or -errno; c is complete only on 0 (free it either way). */
int capture_calls_ask(struct rdmig_tracee *t, uint64_t set_sigs, struct capture_calls *c);
void capture_calls_free(struct capture_calls *c);

/* Copy c into img (its threads matched by tid). -ESRCH when a thread of img is
 * not in c. */
int capture_calls_apply(const struct capture_calls *c, struct rdmig_image *img);

/* The early answers for the frozen t, when they still hold: the same threads,
 * the same signals set (set_sigs), and the watch saw nothing. NULL otherwise
 * (said at info level). */
const struct capture_calls *capture_early_valid(struct rdmig_capture_early *e,
                                                const struct rdmig_tracee *t);
/* Once capture_proc has read set_sigs: do they still match? (SA_RESETHAND
 * needs no call: a delivery resets it, counted by the watch, but this is
 * cheaper to be sure of.) Marks e used when they do. */
bool capture_early_sigs_match(struct rdmig_capture_early *e, uint64_t set_sigs);

#endif
