/* The migration's id on every connection (session.h). */
#define LOG_SUBSYS "session"
#include "session.h"

#include "rdmig/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

/* Room for SESSION and for an ERROR with its longest text: anything longer on a
 * connection that must open with SESSION fails it (-EMSGSIZE), which is what
 * such a peer gets anyway. */
#define SESSION_BUF (RDMIG_HDR_LEN + 4 + RDMIG_ERRTEXT_MAX + 8)

int rdmig_session_new(struct rdmig_session *s)
{
	if (getrandom(s->id, sizeof(s->id), 0) != (ssize_t)sizeof(s->id))
		return errno ? -errno : -EIO;
	return 0;
}

int rdmig_session_send(struct rdmig_conn *c, const struct rdmig_session *s, unsigned flags)
{
	uint64_t v[3] = {s->id[0], s->id[1], flags};
	uint8_t buf[SESSION_BUF];
	int n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_SESSION, v, 3);

	return n < 0 ? n : rdmig_tp_send(c, buf, (size_t)n);
}

/* The next message, decoded: 0 / -errno. */
static int recv_one(struct rdmig_conn *c, uint8_t *buf, int timeout_ms, struct rdmig_msg *m)
{
	int len = rdmig_tp_recv(c, buf, SESSION_BUF, timeout_ms);

	if (len < 0)
		return len;
	return rdmig_msg_decode(buf, (size_t)len, m);
}

int rdmig_session_offer(struct rdmig_conn *c, const struct rdmig_session *s, unsigned flags,
                        int timeout_ms, char *why, size_t cap)
{
	uint8_t buf[SESSION_BUF];
	struct rdmig_msg m;
	int ret = rdmig_session_send(c, s, flags);

	if (ret == 0)
		ret = recv_one(c, buf, timeout_ms, &m);
	if (ret < 0)
		return ret;
	if (m.type == RDMIG_MSG_ERROR) {
		snprintf(why, cap, "%s", m.u.error.text);
		return m.u.error.code > 0 ? -(int)m.u.error.code : -EPROTO;
	}
	if (m.type != RDMIG_MSG_SESSION || m.u.u64[0] != s->id[0] || m.u.u64[1] != s->id[1]) {
		pr_err("the destination answered our SESSION with %s: closing the connection",
		       rdmig_msg_type_name(m.type));
		return -EPROTO;
	}
	return 0;
}

int rdmig_session_recv(struct rdmig_conn *c, int timeout_ms, struct rdmig_session *got,
                       unsigned *flags)
{
	uint8_t buf[SESSION_BUF];
	struct rdmig_msg m;
	int ret = recv_one(c, buf, timeout_ms, &m);

	if (ret < 0)
		return ret;
	if (m.type != RDMIG_MSG_SESSION) {
		pr_warn("a connection opened with %s, not SESSION", rdmig_msg_type_name(m.type));
		return -EPROTO;
	}
	got->id[0] = m.u.u64[0];
	got->id[1] = m.u.u64[1];
	*flags = (unsigned)m.u.u64[2];
	return 0;
}
