/*
 * Shared by both sides of a migration (src/migrate_common.h).
 */
#define LOG_SUBSYS "migrate"
#include "migrate_common.h"

#include "rdmig/log.h"

#include <errno.h>
#include <string.h>
#include <time.h>

uint64_t rdmig_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int rdmig_expect(struct rdmig_conn *c, uint8_t *buf, uint16_t want, int timeout_ms,
                 struct rdmig_msg *m)
{
	int len, ret;

	memset(m, 0, sizeof(*m)); /* type 0: nothing came (callers tell ERROR apart) */
	len = rdmig_tp_recv(c, buf, RDMIG_MSG_MAX, timeout_ms);
	if (len < 0) {
		pr_err("waiting for %s: %s", rdmig_msg_type_name(want), strerror(-len));
		return len;
	}
	ret = rdmig_msg_decode(buf, (size_t)len, m);
	if (ret < 0) {
		pr_err("waiting for %s, got a malformed message (%s): closing the connection",
		       rdmig_msg_type_name(want), strerror(-ret));
		return ret;
	}
	if (m->type == RDMIG_MSG_ERROR) {
		pr_err("the peer gave up: %s (%s)", m->u.error.text, strerror(m->u.error.code));
		return -m->u.error.code;
	}
	if (m->type != want) {
		pr_err("expected %s, got %s: closing the connection", rdmig_msg_type_name(want),
		       rdmig_msg_type_name(m->type));
		return -EPROTO;
	}
	return 0;
}

void rdmig_send_error(struct rdmig_conn *c, int err, const char *text)
{
	uint8_t buf[RDMIG_HDR_LEN + 4 + RDMIG_ERRTEXT_MAX];
	int n = rdmig_msg_encode_error(buf, sizeof(buf), err ? err : -EIO, text);

	if (n > 0 && rdmig_tp_send(c, buf, (size_t)n) < 0)
		pr_debug("the peer is gone; it did not get our error");
}
