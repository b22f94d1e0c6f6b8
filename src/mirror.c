/*
 * Publishing a mirror and receiving its table (rdmig/mirror.h). The table is one
 * REGIONS message, so it is bounded by RDMIG_REGIONS_MAX entries; a larger map is
 * refused here rather than split, until a target needs it.
 *
 * A table entry is a view: a target address and a descriptor for part of one
 * registration. Both backends address a registration as desc.addr + offset, so
 * the descriptor of a part is the registration's with addr moved and len cut.
 */
#define LOG_SUBSYS "mirror"
#include "rdmig/mirror.h"

#include "rdmig/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct rdmig_mirror {
	struct rdmig_conn *conn; /* NULL until attached: buffers are only noted */
	uint32_t n, cap;
	struct rdmig_mr **mrs; /* NULL: not registered yet */
	void **bases;
	size_t *lens;
};

void rdmig_mirror_release(struct rdmig_mirror *m)
{
	if (!m)
		return;
	for (uint32_t i = 0; i < m->n; i++)
		if (m->mrs[i] && rdmig_tp_mr_dereg(m->mrs[i]) < 0)
			pr_warn("deregistering mirror region %u failed", i);
	free(m->mrs);
	free(m->bases);
	free(m->lens);
	free(m);
}

int rdmig_mirror_create(struct rdmig_conn *c, struct rdmig_mirror **out)
{
	struct rdmig_mirror *m = calloc(1, sizeof(*m));

	*out = NULL;
	if (!m)
		return -ENOMEM;
	m->conn = c;
	*out = m;
	return 0;
}

static int register_one(struct rdmig_mirror *m, struct rdmig_conn *c, uint32_t i, void *base,
                        size_t len)
{
	int ret = rdmig_tp_mr_reg(c, base, len, RDMIG_ACCESS_REMOTE_READ, &m->mrs[i]);

	if (ret < 0) {
		m->mrs[i] = NULL;
		pr_err("cannot register mirror region %u (%zu bytes): %s", i, len, strerror(-ret));
	}
	return ret;
}

int rdmig_mirror_add(struct rdmig_mirror *m, void *base, size_t len, uint32_t *reg)
{
	void **bases;
	int ret;

	if (m->n == RDMIG_REGIONS_MAX) {
		pr_err("a mirror of more than %u registrations does not fit one table",
		       RDMIG_REGIONS_MAX);
		return -E2BIG;
	}
	if (m->n == m->cap) {
		uint32_t cap = m->cap ? 2 * m->cap : 16;
		struct rdmig_mr **mrs = realloc(m->mrs, cap * sizeof(*mrs));
		size_t *lens;

		if (!mrs)
			return -ENOMEM;
		m->mrs = mrs;
		bases = realloc(m->bases, cap * sizeof(*bases));
		if (!bases)
			return -ENOMEM;
		m->bases = bases;
		lens = realloc(m->lens, cap * sizeof(*lens));
		if (!lens)
			return -ENOMEM;
		m->lens = lens;
		m->cap = cap;
	}
	m->mrs[m->n] = NULL;
	if (m->conn) {
		ret = register_one(m, m->conn, m->n, base, len);
		if (ret < 0)
			return ret;
	}
	m->bases[m->n] = base;
	m->lens[m->n] = len;
	*reg = m->n++;
	return 0;
}

int rdmig_mirror_attach(struct rdmig_mirror *m, struct rdmig_conn *c)
{
	if (m->conn)
		return -EALREADY;
	for (uint32_t i = 0; i < m->n; i++) {
		/* what was registered stays so, for rdmig_mirror_release */
		int ret = m->mrs[i] ? 0 : register_one(m, c, i, m->bases[i], m->lens[i]);

		if (ret < 0)
			return ret;
	}
	m->conn = c;
	return 0;
}

int rdmig_mirror_send(struct rdmig_mirror *m, const struct rdmig_mirror_view *v, uint32_t n)
{
	struct rdmig_region *table;
	uint8_t *msg;
	int ret, len;

	if (!m->conn) {
		pr_err("the mirror's table cannot be sent before it is registered");
		return -ENOTCONN;
	}
	if (n == 0 || n > RDMIG_REGIONS_MAX) {
		pr_err("a mirror of %u regions does not fit one table (at most %u)", n,
		       RDMIG_REGIONS_MAX);
		return -E2BIG;
	}
	table = calloc(n, sizeof(*table));
	msg = malloc(RDMIG_MSG_MAX);
	if (!table || !msg) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (v[i].reg >= m->n || v[i].off > m->lens[v[i].reg] || !v[i].len ||
		    v[i].len > m->lens[v[i].reg] - v[i].off) {
			pr_err("mirror view %u lies outside its registration", i);
			ret = -EINVAL;
			goto out_free;
		}
		table[i].id = v[i].id;
		rdmig_tp_mr_desc(m->mrs[v[i].reg], &table[i].desc);
		table[i].desc.addr += v[i].off;
		table[i].desc.len = v[i].len;
	}
	len = rdmig_msg_encode_regions(msg, RDMIG_MSG_MAX, table, n);
	if (len < 0) {
		ret = len;
		goto out_free;
	}
	ret = rdmig_tp_send(m->conn, msg, (size_t)len);
out_free:
	free(table);
	free(msg);
	return ret;
}

int rdmig_mirror_publish(struct rdmig_conn *c, const struct rdmig_mirror_region *r, uint32_t n,
                         struct rdmig_mirror **out)
{
	struct rdmig_mirror_view *v = NULL;
	struct rdmig_mirror *m = NULL;
	int ret;

	*out = NULL;
	if (n == 0 || n > RDMIG_REGIONS_MAX) {
		pr_err("a mirror of %u regions does not fit one table (at most %u)", n,
		       RDMIG_REGIONS_MAX);
		return -E2BIG;
	}
	v = calloc(n, sizeof(*v));
	if (!v)
		return -ENOMEM;
	/* noted first, then registered together: the source's own order (it fills
	 * its mirror before its connections are made), so every user of the table
	 * runs through rdmig_mirror_attach */
	ret = rdmig_mirror_create(NULL, &m);
	if (ret < 0)
		goto out_free;
	for (uint32_t i = 0; i < n; i++) {
		ret = rdmig_mirror_add(m, r[i].base, r[i].len, &v[i].reg);
		if (ret < 0)
			goto out_release;
		v[i].id = r[i].id;
		v[i].len = r[i].len;
	}
	ret = rdmig_mirror_attach(m, c);
	if (ret < 0)
		goto out_release;
	/* Nothing is sent unless every registration succeeded. */
	ret = rdmig_mirror_send(m, v, n);
	if (ret < 0)
		goto out_release;
	*out = m;
	m = NULL;
out_release:
	rdmig_mirror_release(m);
out_free:
	free(v);
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
