/*
 * Publishing a mirror and receiving its table (rdmig/mirror.h). The table is one
 * REGIONS message, so it is bounded by RDMIG_REGIONS_MAX entries; a larger map is
 * refused here rather than split, until a target needs it.
 */
#define LOG_SUBSYS "mirror"
#include "rdmig/mirror.h"

#include "rdmig/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct rdmig_mirror {
	uint32_t n;
	struct rdmig_mr *mrs[];
};

void rdmig_mirror_release(struct rdmig_mirror *m)
{
	if (!m)
		return;
	for (uint32_t i = 0; i < m->n; i++)
		if (m->mrs[i] && rdmig_tp_mr_dereg(m->mrs[i]) < 0)
			pr_warn("deregistering mirror region %u failed", i);
	free(m);
}

int rdmig_mirror_publish(struct rdmig_conn *c, const struct rdmig_mirror_region *r, uint32_t n,
                         struct rdmig_mirror **out)
{
	struct rdmig_region *table = NULL;
	struct rdmig_mirror *m;
	uint8_t *msg = NULL;
	int ret, len;

	*out = NULL;
	if (n == 0 || n > RDMIG_REGIONS_MAX) {
		pr_err("a mirror of %u regions does not fit one table (at most %u)", n,
		       RDMIG_REGIONS_MAX);
		return -E2BIG;
	}
	m = calloc(1, sizeof(*m) + n * sizeof(m->mrs[0]));
	table = calloc(n, sizeof(*table));
	msg = malloc(RDMIG_MSG_MAX);
	if (!m || !table || !msg) {
		ret = -ENOMEM;
		goto out_release;
	}
	m->n = n;
	for (uint32_t i = 0; i < n; i++) {
		ret = rdmig_tp_mr_reg(c, r[i].base, r[i].len, RDMIG_ACCESS_REMOTE_READ, &m->mrs[i]);
		if (ret < 0) {
			pr_err("cannot register mirror region %u (%zu bytes): %s", i, r[i].len,
			       strerror(-ret));
			goto out_release;
		}
		table[i].id = r[i].id;
		rdmig_tp_mr_desc(m->mrs[i], &table[i].desc);
	}
	len = rdmig_msg_encode_regions(msg, RDMIG_MSG_MAX, table, n);
	if (len < 0) {
		ret = len;
		goto out_release;
	}
	ret = rdmig_tp_send(c, msg, (size_t)len);
	if (ret < 0)
		goto out_release;
	*out = m;
	m = NULL;
out_release:
	rdmig_mirror_release(m);
	free(table);
	free(msg);
	return ret;
}

int rdmig_mirror_recv_table(struct rdmig_conn *c, int timeout_ms, struct rdmig_region **out,
                            uint32_t *n)
{
	struct rdmig_region *t;
	struct rdmig_msg m;
	uint8_t *msg;
	int ret, len;

	*out = NULL;
	*n = 0;
	msg = malloc(RDMIG_MSG_MAX);
	if (!msg)
		return -ENOMEM;
	len = rdmig_tp_recv(c, msg, RDMIG_MSG_MAX, timeout_ms);
	if (len < 0) {
		ret = len;
		goto out_free;
	}
	ret = rdmig_msg_decode(msg, (size_t)len, &m);
	if (ret < 0 || (m.type != RDMIG_MSG_REGIONS && m.type != RDMIG_MSG_ERROR)) {
		pr_err("expected the mirror's region table, got %s",
		       ret < 0 ? "a malformed message" : rdmig_msg_type_name(m.type));
		ret = -EBADMSG;
		goto out_free;
	}
	if (m.type == RDMIG_MSG_ERROR) {
		pr_err("the peer could not publish its mirror: %s", m.u.error.text);
		ret = -m.u.error.code;
		goto out_free;
	}
	t = calloc(m.u.regions.count ? m.u.regions.count : 1, sizeof(*t));
	if (!t) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (uint32_t i = 0; i < m.u.regions.count; i++)
		(void)rdmig_msg_region(&m, i, &t[i]); /* i < count: cannot fail */
	*out = t;
	*n = m.u.regions.count;
	ret = 0;
out_free:
	free(msg);
	return ret;
}
