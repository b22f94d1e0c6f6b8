/*
 * The source's two connections, made on a thread of their own (src/connector.c)
 * while the main thread starts the tracking and runs the first copy. Making
 * them is mostly libfabric's start (its verbs provider reads /proc/kallsyms
 * twice even for tcp): 0.10-0.14 s of a 0.6 s migration at 256 MiB here, which
 * ran before anything else did.
 *
 * The thread owns both connections until rdmig_connector_join hands them over.
 * Once connected it waits for the layout (rdmig_connector_layout) and sends it
 * at once, so the destination builds its map while the first copy runs, as it
 * did when the layout went out before that copy on the main thread.
 */
#ifndef RDMIG_SRC_CONNECTOR_H
#define RDMIG_SRC_CONNECTOR_H

#include "rdmig/migrate.h"
#include "rdmig/transport.h"
#include "session.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rdmig_connector;

/* Start connecting to o->addr (control, then data), each opened with
 * session's SESSION; the destination takes the control one or says it serves
 * another migration. 0 / -errno (no thread). */
RDMIG_WUR int rdmig_connector_start(const struct rdmig_migrate_opts *o,
                                    const struct rdmig_session *session,
                                    struct rdmig_connector **out);

/* Hand over the encoded layout (malloc'd; owned from now on), sent as LAYOUT
 * chunks once the control connection is up. NULL: there is none to send; the
 * thread ends when connected. Call once, before the join. */
void rdmig_connector_layout(struct rdmig_connector *c, uint8_t *buf, size_t len);

/* Whether it failed already (the join says how): a void * for
 * rdmig_precopy_set_stop, which ends the first copy early then. Any thread. */
bool rdmig_connector_failed(void *c);

/* Wait for the thread (a connector never given a layout gives up sending one)
 * and take the connections it made: 0, or -errno. A failure with *data set
 * was the layout's send (both were connected); -EBUSY: the destination serves
 * another migration. why gets the destination's words when it refused us
 * ("" otherwise). The connections made are handed over either way, so the
 * caller can tell the destination. Frees c. */
RDMIG_WUR int rdmig_connector_join(struct rdmig_connector *c, struct rdmig_conn **conn,
                                   struct rdmig_conn **data, char *why, size_t cap);

#endif
