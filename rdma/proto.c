/*
 * Encoding and checking of control messages (the format is in rdmig/proto.h).
 * The decoder is the only code that reads bytes from a peer before they are
 * trusted: it is fuzzed (test/fuzz/fuzz_proto.c) and keeps no state.
 */
#include "rdmig/proto.h"
#include "rdmig/le.h"

#include <errno.h>
#include <string.h>

#define REGION_WIRE_LEN 32u

/* Write the header for a payload of plen bytes; returns the payload pointer. */
static uint8_t *put_hdr(void *buf, size_t cap, uint16_t type, size_t plen)
{
	uint8_t *p = buf;

	if (cap < RDMIG_HDR_LEN || plen > cap - RDMIG_HDR_LEN || plen > RDMIG_MSG_MAX)
		return NULL;
	put_le32(p, RDMIG_PROTO_MAGIC);
	put_le16(p + 4, RDMIG_PROTO_VERSION);
	put_le16(p + 6, type);
	put_le32(p + 8, (uint32_t)plen);
	put_le32(p + 12, 0);
	return p + RDMIG_HDR_LEN;
}

int rdmig_msg_encode_hello(void *buf, size_t cap, uint32_t page_size, uint8_t role,
                           const uint8_t nonce[RDMIG_NONCE_LEN])
{
	const size_t plen = 8 + RDMIG_NONCE_LEN;
	uint8_t *p = put_hdr(buf, cap, RDMIG_MSG_HELLO, plen);

	if (!p)
		return -ENOSPC;
	put_le32(p, page_size);
	p[4] = role;
	memset(p + 5, 0, 3);
	memcpy(p + 8, nonce, RDMIG_NONCE_LEN);
	return (int)(RDMIG_HDR_LEN + plen);
}

int rdmig_msg_encode_auth(void *buf, size_t cap, const uint8_t mac[RDMIG_MAC_LEN])
{
	uint8_t *p = put_hdr(buf, cap, RDMIG_MSG_AUTH, RDMIG_MAC_LEN);

	if (!p)
		return -ENOSPC;
	memcpy(p, mac, RDMIG_MAC_LEN);
	return (int)(RDMIG_HDR_LEN + RDMIG_MAC_LEN);
}

int rdmig_msg_encode_empty(void *buf, size_t cap, uint16_t type)
{
	if (type != RDMIG_MSG_AUTH_OK && type != RDMIG_MSG_BYE && type != RDMIG_MSG_READY)
		return -EINVAL;
	if (!put_hdr(buf, cap, type, 0))
		return -ENOSPC;
	return (int)RDMIG_HDR_LEN;
}

int rdmig_msg_encode_error(void *buf, size_t cap, int code, const char *text)
{
	size_t tlen = strnlen(text ? text : "", RDMIG_ERRTEXT_MAX);
	uint8_t *p = put_hdr(buf, cap, RDMIG_MSG_ERROR, 4 + tlen);

	if (!p)
		return -ENOSPC;
	put_le32(p, (uint32_t)(code < 0 ? -code : code));
	for (size_t i = 0; i < tlen; i++) {
		unsigned char ch = (unsigned char)text[i];

		p[4 + i] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
	}
	return (int)(RDMIG_HDR_LEN + 4 + tlen);
}

/* How many u64 fields each fixed-size message carries (0: not such a type). */
static unsigned u64_fields(uint16_t type)
{
	switch (type) {
	case RDMIG_MSG_GO:
		return 1;
	case RDMIG_MSG_RUNNING:
		return 2;
	case RDMIG_MSG_DONE:
		return 4;
	case RDMIG_MSG_SESSION:
		return 3;
	case RDMIG_MSG_ROUND_DONE:
	case RDMIG_MSG_WANT:
		return 1;
	default:
		return 0;
	}
}

int rdmig_msg_encode_u64(void *buf, size_t cap, uint16_t type, const uint64_t *v, unsigned n)
{
	uint8_t *p;

	if (!u64_fields(type) || n != u64_fields(type))
		return -EINVAL;
	if (type == RDMIG_MSG_WANT && v[0] >= RDMIG_PART_ADDR_END)
		return -EINVAL; /* the decoder would refuse it */
	if (type == RDMIG_MSG_SESSION && (v[2] & ~(uint64_t)RDMIG_SESSION_RETURNING))
		return -EINVAL;
	p = put_hdr(buf, cap, type, 8 * (size_t)n);
	if (!p)
		return -ENOSPC;
	for (unsigned i = 0; i < n; i++)
		put_le64(p + 8 * i, v[i]);
	return (int)(RDMIG_HDR_LEN + 8 * n);
}

#define RUN_LAST_ADDR 0x800000000000ull /* user space ends here on x86_64 */

static int run_ok(uint64_t addr, uint64_t pages)
{
	return !(addr & 4095) && pages >= 1 && pages <= (1ull << 36) && addr < RUN_LAST_ADDR &&
	       pages <= (RUN_LAST_ADDR - addr) / 4096;
}

int rdmig_msg_encode_runs(void *buf, size_t cap, uint32_t round, uint32_t flags,
                          const struct rdmig_run *r, uint32_t n)
{
	uint8_t *p;

	if (n > RDMIG_RUNS_MAX ||
	    (flags & ~(RDMIG_RUNS_LAST | RDMIG_RUNS_FINAL | RDMIG_RUNS_STOPCOPY)))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (!run_ok(r[i].addr, r[i].pages))
			return -EINVAL;
	p = put_hdr(buf, cap, RDMIG_MSG_RUNS, 16 + 16 * (size_t)n);
	if (!p)
		return -ENOSPC;
	put_le32(p, round);
	put_le32(p + 4, flags);
	put_le32(p + 8, n);
	put_le32(p + 12, 0);
	for (uint32_t i = 0; i < n; i++) {
		put_le64(p + 16 + 16 * (size_t)i, r[i].addr);
		put_le64(p + 24 + 16 * (size_t)i, r[i].pages);
	}
	return (int)(RDMIG_HDR_LEN + 16 + 16 * n);
}

int rdmig_msg_run(const struct rdmig_msg *m, uint32_t i, struct rdmig_run *out)
{
	if (m->type != RDMIG_MSG_RUNS || i >= m->u.runs.n)
		return -EINVAL;
	out->addr = get_le64(m->u.runs.raw + 16 * (size_t)i);
	out->pages = get_le64(m->u.runs.raw + 8 + 16 * (size_t)i);
	return 0;
}

_Static_assert(RDMIG_PART_PAGES_MAX % 64 == 0 &&
                   RDMIG_HDR_LEN + 16 + RDMIG_PART_PAGES_MAX / 8 <= RDMIG_MSG_MAX,
               "the largest PART fits one message");

static int part_ok(uint64_t addr, uint32_t pages, uint32_t flags)
{
	return !(addr & 4095) && pages >= 1 && pages <= RDMIG_PART_PAGES_MAX &&
	       !(flags & ~RDMIG_PART_LAST) && addr < RDMIG_PART_ADDR_END &&
	       pages <= (RDMIG_PART_ADDR_END - addr) / 4096;
}

/* The bits of the last bitmap byte that name no page (0 when pages % 8 == 0). */
static uint8_t part_pad_mask(uint32_t pages)
{
	return pages % 8 ? (uint8_t)(0xffu << (pages % 8)) : 0;
}

int rdmig_msg_encode_part(void *buf, size_t cap, uint64_t addr, uint32_t pages, uint32_t flags,
                          const uint8_t *bits)
{
	size_t nb;
	uint8_t *p;

	if (!part_ok(addr, pages, flags))
		return -EINVAL;
	nb = ((size_t)pages + 7) / 8;
	p = put_hdr(buf, cap, RDMIG_MSG_PART, 16 + nb);
	if (!p)
		return -ENOSPC;
	put_le64(p, addr);
	put_le32(p + 8, pages);
	put_le32(p + 12, flags);
	memcpy(p + 16, bits, nb);
	/* the caller's last byte may belong to a larger bitmap: its bits past the
	 * part are another part's pages, not this one's */
	p[16 + nb - 1] &= (uint8_t)~part_pad_mask(pages);
	return (int)(RDMIG_HDR_LEN + 16 + nb);
}

_Static_assert(RDMIG_PAGES_MAX <= 32 &&
                   RDMIG_HDR_LEN + 16 + RDMIG_PAGES_MAX * 4096 <= RDMIG_MSG_MAX,
               "the largest PAGES fits one message, its mask a u32");

static int pages_ok(uint64_t addr, uint32_t pages, uint32_t mask)
{
	return !(addr & 4095) && pages >= 1 && pages <= RDMIG_PAGES_MAX &&
	       !(mask >> (pages - 1) >> 1) && addr < RDMIG_PART_ADDR_END &&
	       pages <= (RDMIG_PART_ADDR_END - addr) / 4096;
}

int rdmig_msg_encode_pages(void *buf, size_t cap, uint64_t addr, uint32_t pages, uint32_t mask,
                           const void *data)
{
	size_t nd;
	uint8_t *p;

	if (!pages_ok(addr, pages, mask))
		return -EINVAL;
	nd = (size_t)__builtin_popcount(mask) * 4096;
	p = put_hdr(buf, cap, RDMIG_MSG_PAGES, 16 + nd);
	if (!p)
		return -ENOSPC;
	put_le64(p, addr);
	put_le32(p + 8, pages);
	put_le32(p + 12, mask);
	if (nd)
		memcpy(p + 16, data, nd);
	return (int)(RDMIG_HDR_LEN + 16 + nd);
}

int rdmig_msg_encode_image(void *buf, size_t cap, uint64_t total, uint64_t offset, const void *data,
                           uint32_t len)
{
	return rdmig_msg_encode_chunk(buf, cap, RDMIG_MSG_IMAGE, total, offset, data, len);
}

int rdmig_msg_encode_chunk(void *buf, size_t cap, uint16_t type, uint64_t total, uint64_t offset,
                           const void *data, uint32_t len)
{
	uint8_t *p;

	if ((type != RDMIG_MSG_IMAGE && type != RDMIG_MSG_LAYOUT) || !len ||
	    len > RDMIG_IMAGE_CHUNK_MAX || total > RDMIG_IMAGE_TOTAL_MAX || offset >= total ||
	    len > total - offset)
		return -EINVAL;
	p = put_hdr(buf, cap, type, 16 + (size_t)len);
	if (!p)
		return -ENOSPC;
	put_le64(p, total);
	put_le64(p + 8, offset);
	memcpy(p + 16, data, len);
	return (int)(RDMIG_HDR_LEN + 16 + len);
}

int rdmig_msg_encode_regions(void *buf, size_t cap, const struct rdmig_region *r, uint32_t n)
{
	uint8_t *p;

	if (n > RDMIG_REGIONS_MAX)
		return -E2BIG;
	p = put_hdr(buf, cap, RDMIG_MSG_REGIONS, 8 + (size_t)n * REGION_WIRE_LEN);
	if (!p)
		return -ENOSPC;
	put_le32(p, n);
	put_le32(p + 4, 0);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *e = p + 8 + (size_t)i * REGION_WIRE_LEN;

		put_le64(e, r[i].id);
		put_le64(e + 8, r[i].desc.addr);
		put_le64(e + 16, r[i].desc.len);
		put_le64(e + 24, r[i].desc.key);
	}
	return (int)(RDMIG_HDR_LEN + 8 + (size_t)n * REGION_WIRE_LEN);
}

static int decode_payload(uint16_t type, const uint8_t *p, uint32_t plen, struct rdmig_msg *m)
{
	switch (type) {
	case RDMIG_MSG_HELLO:
		if (plen != 8 + RDMIG_NONCE_LEN || p[5] || p[6] || p[7])
			return -EBADMSG;
		m->u.hello.page_size = get_le32(p);
		m->u.hello.role = p[4];
		if (m->u.hello.role != RDMIG_ROLE_LISTENER &&
		    m->u.hello.role != RDMIG_ROLE_CONNECTOR)
			return -EBADMSG;
		/* a page size is a power of two between 4 KiB and 1 GiB */
		if (m->u.hello.page_size < 4096 || m->u.hello.page_size > (1u << 30) ||
		    (m->u.hello.page_size & (m->u.hello.page_size - 1)))
			return -EBADMSG;
		memcpy(m->u.hello.nonce, p + 8, RDMIG_NONCE_LEN);
		return 0;
	case RDMIG_MSG_AUTH:
		if (plen != RDMIG_MAC_LEN)
			return -EBADMSG;
		memcpy(m->u.auth.mac, p, RDMIG_MAC_LEN);
		return 0;
	case RDMIG_MSG_AUTH_OK:
	case RDMIG_MSG_BYE:
	case RDMIG_MSG_READY:
		return plen == 0 ? 0 : -EBADMSG;
	case RDMIG_MSG_RUNS: {
		uint32_t n;

		if (plen < 16 || get_le32(p + 12) != 0 ||
		    (get_le32(p + 4) & ~(RDMIG_RUNS_LAST | RDMIG_RUNS_FINAL | RDMIG_RUNS_STOPCOPY)))
			return -EBADMSG;
		n = get_le32(p + 8);
		if (n > RDMIG_RUNS_MAX || plen != 16 + 16 * (uint64_t)n)
			return -EBADMSG;
		for (uint32_t i = 0; i < n; i++)
			if (!run_ok(get_le64(p + 16 + 16 * (size_t)i),
			            get_le64(p + 24 + 16 * (size_t)i)))
				return -EBADMSG;
		m->u.runs.round = get_le32(p);
		m->u.runs.flags = get_le32(p + 4);
		m->u.runs.n = n;
		m->u.runs.raw = p + 16;
		return 0;
	}
	case RDMIG_MSG_PART: {
		uint64_t addr;
		uint32_t pages, flags;

		if (plen < 16)
			return -EBADMSG;
		addr = get_le64(p);
		pages = get_le32(p + 8);
		flags = get_le32(p + 12);
		if (!part_ok(addr, pages, flags) || plen != 16 + ((uint64_t)pages + 7) / 8)
			return -EBADMSG;
		/* bits past the last page would be pages outside the part */
		if (p[plen - 1] & part_pad_mask(pages))
			return -EBADMSG;
		m->u.part.addr = addr;
		m->u.part.pages = pages;
		m->u.part.flags = flags;
		m->u.part.bits = p + 16;
		return 0;
	}
	case RDMIG_MSG_PAGES: {
		uint64_t addr;
		uint32_t pages, mask;

		if (plen < 16)
			return -EBADMSG;
		addr = get_le64(p);
		pages = get_le32(p + 8);
		mask = get_le32(p + 12);
		if (!pages_ok(addr, pages, mask) ||
		    plen != 16 + 4096 * (uint64_t)__builtin_popcount(mask))
			return -EBADMSG;
		m->u.pages.addr = addr;
		m->u.pages.pages = pages;
		m->u.pages.mask = mask;
		m->u.pages.data = p + 16;
		return 0;
	}
	case RDMIG_MSG_GO:
	case RDMIG_MSG_RUNNING:
	case RDMIG_MSG_DONE:
	case RDMIG_MSG_ROUND_DONE:
	case RDMIG_MSG_WANT:
	case RDMIG_MSG_SESSION:
		if (plen != 8 * u64_fields(type))
			return -EBADMSG;
		for (unsigned i = 0; i < u64_fields(type); i++)
			m->u.u64[i] = get_le64(p + 8 * i);
		/* any address inside the page will do, but only a user-space one */
		if (type == RDMIG_MSG_WANT && m->u.u64[0] >= RDMIG_PART_ADDR_END)
			return -EBADMSG;
		if (type == RDMIG_MSG_SESSION && (m->u.u64[2] & ~(uint64_t)RDMIG_SESSION_RETURNING))
			return -EBADMSG;
		return 0;
	case RDMIG_MSG_IMAGE:
	case RDMIG_MSG_LAYOUT: {
		uint64_t total, offset, len;

		if (plen <= 16)
			return -EBADMSG;
		total = get_le64(p);
		offset = get_le64(p + 8);
		len = plen - 16;
		if (total > RDMIG_IMAGE_TOTAL_MAX || offset >= total || len > total - offset ||
		    len > RDMIG_IMAGE_CHUNK_MAX)
			return -EBADMSG;
		m->u.image.total = total;
		m->u.image.offset = offset;
		m->u.image.len = (uint32_t)len;
		m->u.image.data = p + 16;
		return 0;
	}
	case RDMIG_MSG_ERROR: {
		uint32_t code;

		if (plen < 4 || plen - 4 > RDMIG_ERRTEXT_MAX)
			return -EBADMSG;
		code = get_le32(p);
		if (code == 0 || code > 4095)
			return -EBADMSG;
		m->u.error.code = (int32_t)code;
		for (uint32_t i = 0; i < plen - 4; i++) {
			if (p[4 + i] < 0x20 || p[4 + i] >= 0x7f)
				return -EBADMSG; /* the text goes to a terminal: printable only */
			m->u.error.text[i] = (char)p[4 + i];
		}
		m->u.error.text[plen - 4] = '\0';
		return 0;
	}
	case RDMIG_MSG_REGIONS: {
		uint32_t n;

		if (plen < 8)
			return -EBADMSG;
		n = get_le32(p);
		if (n > RDMIG_REGIONS_MAX || get_le32(p + 4) != 0 ||
		    plen != 8 + (uint64_t)n * REGION_WIRE_LEN)
			return -EBADMSG;
		for (uint32_t i = 0; i < n; i++) {
			const uint8_t *e = p + 8 + (size_t)i * REGION_WIRE_LEN;
			uint64_t addr = get_le64(e + 8), len = get_le64(e + 16);

			/* a region that wraps the address space is a lie */
			if (len == 0 || addr + len < addr)
				return -EBADMSG;
		}
		m->u.regions.count = n;
		m->u.regions.raw = p + 8;
		return 0;
	}
	default:
		return -EBADMSG;
	}
}

int rdmig_msg_decode(const void *buf, size_t len, struct rdmig_msg *out)
{
	const uint8_t *p = buf;
	uint32_t plen;
	uint16_t type;

	memset(out, 0, sizeof(*out));
	if (!buf || len < RDMIG_HDR_LEN || len > RDMIG_MSG_MAX)
		return -EBADMSG;
	if (get_le32(p) != RDMIG_PROTO_MAGIC)
		return -EBADMSG;
	if (get_le16(p + 4) != RDMIG_PROTO_VERSION)
		return -EPROTONOSUPPORT;
	type = get_le16(p + 6);
	plen = get_le32(p + 8);
	if (type == 0 || type > RDMIG_MSG_TYPE_MAX || get_le32(p + 12) != 0)
		return -EBADMSG;
	if (plen != len - RDMIG_HDR_LEN)
		return -EBADMSG;
	out->type = type;
	return decode_payload(type, p + RDMIG_HDR_LEN, plen, out);
}

int rdmig_msg_region(const struct rdmig_msg *m, uint32_t i, struct rdmig_region *out)
{
	const uint8_t *e;

	if (m->type != RDMIG_MSG_REGIONS || i >= m->u.regions.count)
		return -EINVAL;
	e = m->u.regions.raw + (size_t)i * REGION_WIRE_LEN;
	out->id = get_le64(e);
	out->desc.addr = get_le64(e + 8);
	out->desc.len = get_le64(e + 16);
	out->desc.key = get_le64(e + 24);
	return 0;
}

const char *rdmig_msg_type_name(uint16_t type)
{
	static const char *const names[] = {"?",       "HELLO", "AUTH",  "AUTH_OK",    "ERROR",
	                                    "REGIONS", "BYE",   "IMAGE", "READY",      "GO",
	                                    "RUNNING", "DONE",  "RUNS",  "ROUND_DONE", "LAYOUT",
	                                    "PART",    "WANT",  "PAGES", "SESSION"};
	_Static_assert(sizeof(names) / sizeof(names[0]) == RDMIG_MSG_TYPE_MAX + 1,
	               "a name for every type");

	return type <= RDMIG_MSG_TYPE_MAX ? names[type] : "?";
}
