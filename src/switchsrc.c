/*
 * A page source whose connection can be replaced while the fault loop runs
 * (src/switchsrc.h): the destination's answer to a link lost after the switch.
 *
 * The loop thread calls fetch/poll/release through here; the main thread, having
 * reconnected, installs a new inner source (on the new connection) with
 * rdmig_switchsrc_swap() and asks the loop to post its failed fetches again. A
 * mutex serialises the two threads, so the old connection is closed only when the
 * loop is not inside it. Old inner sources are kept until destroy: the loop may
 * still release staging it got from them, and that must land in their memory.
 * The loop sleeps on one epoll fd that holds the current inner source's event fd.
 */
#define LOG_SUBSYS "switchsrc"
#include "switchsrc.h"

#include "rdmig/log.h"
#include "rdmig/tpsource.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_OLD 64

struct switchsrc {
	struct rdmig_page_source base;
	pthread_mutex_t mu;
	struct rdmig_page_source *cur;
	struct rdmig_page_source *old[MAX_OLD];
	unsigned nold;
	int epfd, cur_fd;
};

static struct switchsrc *to_sw(struct rdmig_page_source *s)
{
	return (struct switchsrc *)(void *)s;
}

static int sw_fetch(struct rdmig_page_source *s, uint64_t addr, size_t len, uint64_t ctx)
{
	struct switchsrc *w = to_sw(s);
	int ret;

	pthread_mutex_lock(&w->mu);
	ret = rdmig_source_fetch(w->cur, addr, len, ctx);
	pthread_mutex_unlock(&w->mu);
	return ret;
}

static int sw_poll(struct rdmig_page_source *s, struct rdmig_fetch_done *out, int max)
{
	struct switchsrc *w = to_sw(s);
	int ret;

	pthread_mutex_lock(&w->mu);
	ret = rdmig_source_poll(w->cur, out, max);
	pthread_mutex_unlock(&w->mu);
	return ret;
}

/* Staging from an old source goes back to that source (it owns the memory). */
static void sw_release(struct rdmig_page_source *s, const struct rdmig_fetch_done *d)
{
	struct switchsrc *w = to_sw(s);

	pthread_mutex_lock(&w->mu);
	if (rdmig_tpsource_owns(w->cur, d->data)) {
		rdmig_source_release(w->cur, d);
	} else {
		for (unsigned i = 0; i < w->nold; i++)
			if (rdmig_tpsource_owns(w->old[i], d->data))
				rdmig_source_release(w->old[i], d);
	}
	pthread_mutex_unlock(&w->mu);
}

static int sw_event_fd(struct rdmig_page_source *s)
{
	return to_sw(s)->epfd;
}

static void sw_destroy(struct rdmig_page_source *s)
{
	struct switchsrc *w = to_sw(s);

	if (!w)
		return;
	rdmig_source_destroy(w->cur);
	for (unsigned i = 0; i < w->nold; i++)
		rdmig_source_destroy(w->old[i]);
	if (w->epfd >= 0)
		close(w->epfd);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

static const struct rdmig_page_source_ops switchsrc_ops = {
    .size = sizeof(struct rdmig_page_source_ops),
    .name = "transport",
    .fetch = sw_fetch,
    .poll = sw_poll,
    .release = sw_release,
    .event_fd = sw_event_fd,
    .destroy = sw_destroy,
};

int rdmig_switchsrc_create(struct rdmig_page_source *inner, struct rdmig_page_source **out)
{
	struct switchsrc *w = calloc(1, sizeof(*w));
	struct epoll_event ev = {.events = EPOLLIN};

	*out = NULL;
	if (!w)
		return -ENOMEM;
	w->base.ops = &switchsrc_ops;
	pthread_mutex_init(&w->mu, NULL);
	w->cur = inner;
	w->cur_fd = rdmig_source_event_fd(inner);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->cur_fd, &ev) < 0) {
		int err = -errno;

		w->cur = NULL; /* not ours on failure */
		sw_destroy(&w->base);
		return err;
	}
	*out = &w->base;
	return 0;
}

int rdmig_switchsrc_swap(struct rdmig_page_source *s, struct rdmig_page_source *inner,
                         void (*close_old)(void *arg), void *arg)
{
	struct switchsrc *w = to_sw(s);
	struct epoll_event ev = {.events = EPOLLIN};
	int fd = rdmig_source_event_fd(inner), ret = 0;

	pthread_mutex_lock(&w->mu);
	if (w->nold == MAX_OLD) {
		ret = -EMLINK;
		goto out_unlock;
	}
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		ret = -errno;
		goto out_unlock;
	}
	(void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->cur_fd, NULL);
	/* its registration goes before its connection; its memory stays for the
	 * staging the loop still holds */
	rdmig_tpsource_retire(w->cur);
	w->old[w->nold++] = w->cur;
	w->cur = inner;
	w->cur_fd = fd;
	/* the loop is outside the old connection now: it may be closed */
	if (close_old)
		close_old(arg);
out_unlock:
	pthread_mutex_unlock(&w->mu);
	return ret;
}
