/*
 * Connecting on a thread of its own (connector.h). Its states, under mu:
 * CONNECTING -> WAITING (connected, no layout handed yet) -> SENDING -> DONE,
 * or -> DONE at once on a failure or when the main thread gives up the layout.
 */
#define LOG_SUBSYS "connect"
#include "connector.h"

#include "migrate_common.h"
#include "rdmig/log.h"
#include "rdmig/proto.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rdmig_connector {
	const struct rdmig_migrate_opts *o;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool handed;  /* rdmig_connector_layout ran (or the join gave up on it) */
	uint8_t *lay; /* what it handed, NULL: nothing to send */
	size_t lay_len;
	struct rdmig_conn *conn, *data;
	struct rdmig_session session;
	char why[RDMIG_ERRTEXT_MAX + 1]; /* a destination's refusal, in its words */
	int ret;
	atomic_bool failed; /* ret is set: the only field read before the join */
};

static void *run(void *arg)
{
	struct rdmig_connector *c = arg;
	const struct rdmig_migrate_opts *o = c->o;
	int tmo = o->timeout_ms > 0 ? o->timeout_ms : 10000;
	uint64_t t0 = rdmig_now_ns();
	int ret;

	/* Two connections: the destination's pager thread owns the data one, its
	 * main thread the control one (a connection is used by one thread at a
	 * time). */
	ret = rdmig_tp_connect(&o->tp, o->addr, tmo, &c->conn);
	/* The control connection carries messages only: the destination READs the
	 * mirror through the data one. Without the hint, fabric's progress thread
	 * polled on for 0.1 ms after every message (GO, RUNNING, each PART after
	 * the resume), CPU time the destination's first faults wanted on a
	 * two-CPU machine (256 MiB random writer, 8 alternating pairs: the pause
	 * the process saw, median 5.86 against 6.37 ms). */
	if (ret == 0)
		rdmig_tp_messages_only(c->conn);
	/* which migration both are of: a destination that serves another one
	 * says so here, before anything of ours is sent */
	if (ret == 0)
		ret = rdmig_session_offer(c->conn, &c->session, 0, tmo, c->why, sizeof(c->why));
	if (ret == 0)
		ret = rdmig_tp_connect(&o->tp, o->addr, tmo, &c->data);
	if (ret == 0) {
		ret = rdmig_session_send(c->data, &c->session, 0);
		if (ret < 0) { /* not the layout's failure, as a data connection would say */
			rdmig_tp_close(c->data);
			c->data = NULL;
		}
	}
	if (ret < 0) {
		c->ret = ret;
		atomic_store(&c->failed, true);
		return NULL;
	}
	pr_info("both connections made in %.1f ms", (double)(rdmig_now_ns() - t0) / 1e6);
	pthread_mutex_lock(&c->mu);
	while (!c->handed)
		pthread_cond_wait(&c->cv, &c->mu);
	pthread_mutex_unlock(&c->mu);
	/* handed is never unset: lay and lay_len are the main thread's no more */
	if (c->lay) {
		uint8_t *msg = malloc(RDMIG_MSG_MAX);

		ret = msg ? rdmig_send_chunks(c->conn, msg, RDMIG_MSG_LAYOUT, c->lay, c->lay_len)
		          : -ENOMEM;
		free(msg);
		if (ret < 0) {
			c->ret = ret;
			atomic_store(&c->failed, true);
		} else {
			pr_debug("layout sent (%zu bytes)", c->lay_len);
		}
	}
	return NULL;
}

int rdmig_connector_start(const struct rdmig_migrate_opts *o, const struct rdmig_session *session,
                          struct rdmig_connector **out)
{
	struct rdmig_connector *c = calloc(1, sizeof(*c));
	int ret;

	*out = NULL;
	if (!c)
		return -ENOMEM;
	c->o = o;
	c->session = *session;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	ret = -pthread_create(&c->thread, NULL, run, c);
	if (ret < 0) {
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		free(c);
		return ret;
	}
	*out = c;
	return 0;
}

void rdmig_connector_layout(struct rdmig_connector *c, uint8_t *buf, size_t len)
{
	pthread_mutex_lock(&c->mu);
	if (c->handed) {
		pthread_mutex_unlock(&c->mu);
		free(buf);
		return;
	}
	c->lay = buf;
	c->lay_len = len;
	c->handed = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

bool rdmig_connector_failed(void *c)
{
	return atomic_load(&((struct rdmig_connector *)c)->failed);
}

int rdmig_connector_join(struct rdmig_connector *c, struct rdmig_conn **conn,
                         struct rdmig_conn **data, char *why, size_t cap)
{
	int ret;

	/* nothing more will come: a thread still waiting for the layout ends */
	rdmig_connector_layout(c, NULL, 0);
	pthread_join(c->thread, NULL);
	*conn = c->conn;
	*data = c->data;
	snprintf(why, cap, "%s", c->why);
	ret = c->ret;
	free(c->lay);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
	return ret;
}
