/* The connection handshake and the token file (rdma/auth.c). Internal. */
#ifndef RDMIG_AUTH_H
#define RDMIG_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "tp_internal.h"

struct rdmig_token {
	uint8_t key[4096];
	size_t len;
};

/* Read the secret. Refuses a file others can read, a non-regular file, and one
 * shorter than 16 bytes. 0 or -errno, with the reason logged. */
int rdmig_token_load(const char *path, struct rdmig_token *tok);
void rdmig_token_wipe(struct rdmig_token *tok);

/* Run the handshake on a fresh connection as 'role' (enum rdmig_role).
 * 0: the peer proved the token. -EACCES: it did not (or refused ours).
 * -EPROTO, -EBADMSG, -EPROTONOSUPPORT, -ETIMEDOUT, -ECONNRESET otherwise. */
int rdmig_handshake(struct rdmig_conn *c, const struct rdmig_tp_opts *o, uint8_t role);

#endif
