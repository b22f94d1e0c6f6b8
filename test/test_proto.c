/*
 * Unit tests of the control-message codec (rdma/proto.c) and host:port parsing:
 * every encoder round-trips, and every way a message can be malformed is refused.
 */
#include "helpers.h"

#include "rdmig/le.h"
#include "rdmig/proto.h"
#include "tp_internal.h"

#include <dirent.h>
#include <stdint.h>

T_DEFINE_STATE;

static void roundtrip_hello(void)
{
	uint8_t buf[256], nonce[RDMIG_NONCE_LEN];
	struct rdmig_msg m;

	for (unsigned i = 0; i < sizeof(nonce); i++)
		nonce[i] = (uint8_t)(i * 7);
	int n = rdmig_msg_encode_hello(buf, sizeof(buf), 4096, RDMIG_ROLE_CONNECTOR, nonce);
	T_CHECK(n == RDMIG_HDR_LEN + 40, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_HELLO, "type %u", m.type);
	T_CHECK(m.u.hello.page_size == 4096 && m.u.hello.role == RDMIG_ROLE_CONNECTOR, "fields");
	T_CHECK(!memcmp(m.u.hello.nonce, nonce, sizeof(nonce)), "nonce");
	/* the byte order on the wire is little-endian whatever the host is */
	T_CHECK(buf[0] == 'R' && buf[1] == 'D' && buf[2] == 'M' && buf[3] == 'G', "magic bytes");
	T_CHECK(rdmig_msg_encode_hello(buf, 20, 4096, 1, nonce) == -ENOSPC, "short buffer");
}

static void roundtrip_regions(void)
{
	static uint8_t buf[RDMIG_MSG_MAX];
	struct rdmig_region r[3] =
	    {
	        {0x7f0000000000, {0x1000, 1 << 20, 42}},
	        {2, {0, 4096, UINT64_MAX}},
	        {3, {UINT64_MAX - 4096, 4096, 7}},
	    },
	                    got;
	struct rdmig_msg m;
	int n = rdmig_msg_encode_regions(buf, sizeof(buf), r, 3);

	T_CHECK(n > 0, "encode %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.regions.count == 3, "count %u", m.u.regions.count);
	for (uint32_t i = 0; i < 3; i++) {
		T_OK(rdmig_msg_region(&m, i, &got));
		T_CHECK(!memcmp(&got, &r[i], sizeof(got)), "entry %u", i);
	}
	T_CHECK(rdmig_msg_region(&m, 3, &got) == -EINVAL, "index past the end");
	T_CHECK(rdmig_msg_encode_regions(buf, sizeof(buf), r, RDMIG_REGIONS_MAX + 1) == -E2BIG,
	        "too many");
	n = rdmig_msg_encode_regions(buf, sizeof(buf), r, 0);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
}

static void roundtrip_error(void)
{
	uint8_t buf[512];
	struct rdmig_msg m;
	int n = rdmig_msg_encode_error(buf, sizeof(buf), -EACCES, "no\x1b[31mway");

	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.error.code == EACCES, "code %d", m.u.error.code);
	/* control characters never reach a terminal */
	T_CHECK(!strcmp(m.u.error.text, "no?[31mway"), "text '%s'", m.u.error.text);
}

static void rejects_malformed(void)
{
	uint8_t buf[256], nonce[RDMIG_NONCE_LEN] = {0}, bad[256];
	struct rdmig_msg m;
	int n = rdmig_msg_encode_hello(buf, sizeof(buf), 4096, RDMIG_ROLE_LISTENER, nonce);

	T_CHECK(rdmig_msg_decode(buf, (size_t)n - 1, &m) == -EBADMSG, "truncated");
	T_CHECK(rdmig_msg_decode(buf, 3, &m) == -EBADMSG, "shorter than a header");
	memcpy(bad, buf, (size_t)n);
	bad[0] ^= 1;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "magic");
	memcpy(bad, buf, (size_t)n);
	bad[4] = RDMIG_PROTO_VERSION + 1;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EPROTONOSUPPORT, "version");
	memcpy(bad, buf, (size_t)n);
	bad[6] = 99;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "type");
	memcpy(bad, buf, (size_t)n);
	bad[8] = 0xff;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "length field");
	memcpy(bad, buf, (size_t)n);
	bad[RDMIG_HDR_LEN + 4] = 9;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "role");
	memcpy(bad, buf, (size_t)n);
	bad[RDMIG_HDR_LEN + 1] = 0x30; /* page size 0x3000: not a power of two */
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "page size");
	memcpy(bad, buf, (size_t)n);
	bad[12] = 1;
	T_CHECK(rdmig_msg_decode(bad, (size_t)n, &m) == -EBADMSG, "reserved bits");

	/* a region table whose count disagrees with its length, or that wraps */
	struct rdmig_region r = {1, {UINT64_MAX - 10, 4096, 1}};
	n = rdmig_msg_encode_regions(buf, sizeof(buf), &r, 1);
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "wrapping region");
	r.desc.addr = 0;
	n = rdmig_msg_encode_regions(buf, sizeof(buf), &r, 1);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	buf[RDMIG_HDR_LEN] = 2;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "count vs length");
	r.desc.len = 0;
	buf[RDMIG_HDR_LEN] = 1;
	n = rdmig_msg_encode_regions(buf, sizeof(buf), &r, 1);
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "empty region");

	n = rdmig_msg_encode_empty(buf, sizeof(buf), RDMIG_MSG_AUTH_OK);
	buf[8] = 1;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n + 1, &m) == -EBADMSG, "AUTH_OK with payload");
	n = rdmig_msg_encode_error(buf, sizeof(buf), EIO, "x");
	buf[RDMIG_HDR_LEN] = 0;
	buf[RDMIG_HDR_LEN + 1] = 0;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "error code 0");
	T_CHECK(rdmig_msg_encode_empty(buf, sizeof(buf), RDMIG_MSG_HELLO) == -EINVAL,
	        "empty HELLO");
}

static void migration_messages(void)
{
	static uint8_t buf[RDMIG_MSG_MAX], data[RDMIG_IMAGE_CHUNK_MAX];
	uint64_t v[4] = {1, 2, 3, UINT64_MAX};
	struct rdmig_msg m;
	int n;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7);
	n = rdmig_msg_encode_image(buf, sizeof(buf), 100000, 5, data, sizeof(data));
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_IMAGE && m.u.image.total == 100000 && m.u.image.offset == 5 &&
	            m.u.image.len == sizeof(data) && !memcmp(m.u.image.data, data, sizeof(data)),
	        "image chunk round trip");
	/* a chunk that runs past its announced total, or an offset at the end */
	n = rdmig_msg_encode_image(buf, sizeof(buf), 100, 90, data, 10);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	buf[RDMIG_HDR_LEN + 8] = 91;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "chunk past total");
	buf[RDMIG_HDR_LEN + 8] = 100;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "offset at total");
	buf[RDMIG_HDR_LEN + 8] = 0;
	buf[RDMIG_HDR_LEN + 7] = 0x40; /* total far beyond the limit */
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "total too large");
	T_CHECK(rdmig_msg_encode_image(buf, sizeof(buf), 10, 0, data, 11) == -EINVAL,
	        "encoder refuses a chunk past total");
	T_CHECK(rdmig_msg_encode_image(buf, sizeof(buf), 10, 0, data, 0) == -EINVAL,
	        "encoder refuses an empty chunk");
	/* LAYOUT: the same body under its own type, with the same checks */
	n = rdmig_msg_encode_chunk(buf, sizeof(buf), RDMIG_MSG_LAYOUT, 300, 200, data, 100);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_LAYOUT && m.u.image.total == 300 && m.u.image.offset == 200 &&
	            m.u.image.len == 100 && !memcmp(m.u.image.data, data, 100),
	        "layout chunk round trip");
	buf[RDMIG_HDR_LEN + 8] = 201;
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "layout chunk past total");
	T_CHECK(rdmig_msg_encode_chunk(buf, sizeof(buf), RDMIG_MSG_RUNS, 10, 0, data, 1) == -EINVAL,
	        "only IMAGE and LAYOUT are chunks");

	n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_DONE, v, 4);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_DONE && m.u.u64[0] == 1 && m.u.u64[3] == UINT64_MAX, "DONE");
	T_CHECK(rdmig_msg_decode(buf, (size_t)n - 8, &m) == -EBADMSG, "DONE truncated");
	n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_GO, v, 1);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_GO && m.u.u64[0] == 1, "GO");
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_GO, v, 2) == -EINVAL,
	        "GO with two fields");
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_HELLO, v, 1) == -EINVAL,
	        "HELLO is not a u64 message");
	n = rdmig_msg_encode_empty(buf, sizeof(buf), RDMIG_MSG_READY);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_READY, "READY");

	struct rdmig_run runs[2] = {{0x7f0000001000, 3}, {0x1000, 1}}, got;

	n = rdmig_msg_encode_runs(buf, sizeof(buf), 7, RDMIG_RUNS_LAST, runs, 2);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_RUNS && m.u.runs.round == 7 && m.u.runs.n == 2 &&
	            m.u.runs.flags == RDMIG_RUNS_LAST,
	        "RUNS header");
	T_OK(rdmig_msg_run(&m, 1, &got));
	T_CHECK(got.addr == 0x1000 && got.pages == 1, "RUNS entry");
	T_CHECK(rdmig_msg_run(&m, 2, &got) == -EINVAL, "RUNS index past n");
	buf[RDMIG_HDR_LEN + 16] = 0x01; /* first run no longer page aligned */
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "unaligned run");
	runs[0].pages = 0;
	T_CHECK(rdmig_msg_encode_runs(buf, sizeof(buf), 1, 0, runs, 2) == -EINVAL, "empty run");
	runs[0] = (struct rdmig_run){0x7ffffffff000, 2};
	T_CHECK(rdmig_msg_encode_runs(buf, sizeof(buf), 1, 0, runs, 2) == -EINVAL,
	        "run past user space");
}

/* A PART message made by hand, past the encoder's checks. */
static size_t hand_part(uint8_t *buf, uint64_t addr, uint32_t pages, uint32_t flags, size_t nb)
{
	uint8_t *p = buf + RDMIG_HDR_LEN;

	put_le32(buf, RDMIG_PROTO_MAGIC);
	put_le16(buf + 4, RDMIG_PROTO_VERSION);
	put_le16(buf + 6, RDMIG_MSG_PART);
	put_le32(buf + 8, (uint32_t)(16 + nb));
	put_le32(buf + 12, 0);
	put_le64(p, addr);
	put_le32(p + 8, pages);
	put_le32(p + 12, flags);
	memset(p + 16, 0, nb);
	return RDMIG_HDR_LEN + 16 + nb;
}

static void part_want(void)
{
	static uint8_t buf[RDMIG_MSG_MAX + 64], bits[RDMIG_PART_PAGES_MAX / 8 + 1];
	const uint64_t end = RDMIG_PART_ADDR_END;
	struct rdmig_msg m;
	uint64_t v;
	size_t len;
	int n;

	/* the size the header promises: whole 64-page words, one full message */
	T_CHECK(RDMIG_PART_PAGES_MAX % 64 == 0 &&
	            RDMIG_HDR_LEN + 16 + RDMIG_PART_PAGES_MAX / 8 <= RDMIG_MSG_MAX &&
	            RDMIG_HDR_LEN + 16 + (RDMIG_PART_PAGES_MAX + 64) / 8 > RDMIG_MSG_MAX,
	        "RDMIG_PART_PAGES_MAX %u", RDMIG_PART_PAGES_MAX);
	T_CHECK(!strcmp(rdmig_msg_type_name(RDMIG_MSG_PART), "PART") &&
	            !strcmp(rdmig_msg_type_name(RDMIG_MSG_WANT), "WANT"),
	        "type names");

	/* 13 pages: two bytes, the caller's last byte with garbage past page 12 */
	bits[0] = 0xa5;
	bits[1] = 0xf3; /* pages 8, 9, 12 and four bits of another part's pages */
	n = rdmig_msg_encode_part(buf, sizeof(buf), 0x7f0000002000, 13, RDMIG_PART_LAST, bits);
	T_CHECK(n == RDMIG_HDR_LEN + 16 + 2, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_PART && m.u.part.addr == 0x7f0000002000 &&
	            m.u.part.pages == 13 && m.u.part.flags == RDMIG_PART_LAST,
	        "PART header");
	T_CHECK(m.u.part.bits == buf + RDMIG_HDR_LEN + 16, "bits point into the buffer");
	T_CHECK(m.u.part.bits[0] == 0xa5 && m.u.part.bits[1] == 0x13, "bitmap %02x %02x",
	        m.u.part.bits[0], m.u.part.bits[1]);
	T_CHECK(bits[1] == 0xf3, "the caller's bitmap is left alone");
	T_CHECK(rdmig_msg_encode_part(buf, RDMIG_HDR_LEN + 17, 0x1000, 13, 0, bits) == -ENOSPC,
	        "short buffer");
	/* the largest part, ending exactly at the end of user space */
	memset(bits, 0xff, sizeof(bits));
	n = rdmig_msg_encode_part(buf, sizeof(buf), end - (uint64_t)RDMIG_PART_PAGES_MAX * 4096,
	                          RDMIG_PART_PAGES_MAX, 0, bits);
	T_CHECK(n == (int)RDMIG_HDR_LEN + 16 + (int)RDMIG_PART_PAGES_MAX / 8, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.part.pages == RDMIG_PART_PAGES_MAX && m.u.part.flags == 0, "largest PART");
	/* one page, a multiple of 8 pages: nothing masked that names a page */
	n = rdmig_msg_encode_part(buf, sizeof(buf), 0, 1, 0, bits);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.part.pages == 1 && m.u.part.bits[0] == 0x01, "one page");
	n = rdmig_msg_encode_part(buf, sizeof(buf), 0x10000, 16, 0, bits);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.part.bits[0] == 0xff && m.u.part.bits[1] == 0xff, "16 pages");

	/* what the encoder refuses, the decoder refuses too */
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), 0x1001, 1, 0, bits) == -EINVAL,
	        "encoder: unaligned");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), 0x1000, 0, 0, bits) == -EINVAL,
	        "encoder: no pages");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), 0, RDMIG_PART_PAGES_MAX + 1, 0, bits) ==
	            -EINVAL,
	        "encoder: too many pages");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), end - 4096, 2, 0, bits) == -EINVAL,
	        "encoder: past the end");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), end, 1, 0, bits) == -EINVAL,
	        "encoder: at the end");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), UINT64_MAX - 4095, 2, 0, bits) == -EINVAL,
	        "encoder: wrapping");
	T_CHECK(rdmig_msg_encode_part(buf, sizeof(buf), 0x1000, 1, 2, bits) == -EINVAL,
	        "encoder: unknown flag");

	len = hand_part(buf, 0x1000, 13, RDMIG_PART_LAST, 2);
	T_OK(rdmig_msg_decode(buf, len, &m));
	hand_part(buf, 0x1800, 13, 0, 2);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "unaligned");
	len = hand_part(buf, 0x1000, 0, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "no pages");
	/* the largest part fills a message: one page more is a byte more than fits */
	len = hand_part(buf, 0, RDMIG_PART_PAGES_MAX + 1, 0, (RDMIG_PART_PAGES_MAX + 8) / 8);
	T_CHECK(len == RDMIG_MSG_MAX + 1 && rdmig_msg_decode(buf, len, &m) == -EBADMSG,
	        "too many pages");
	len = hand_part(buf, 0, UINT32_MAX, 0, 8);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "pages far beyond the length");
	len = hand_part(buf, end - 4096, 2, 0, 1);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "past the end");
	len = hand_part(buf, end - 8192, 2, 0, 1);
	T_OK(rdmig_msg_decode(buf, len, &m));
	len = hand_part(buf, UINT64_MAX - 4095, 2, 0, 1);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "wrapping");
	len = hand_part(buf, 0x1000, 13, 0, 2);
	put_le32(buf + 8, 16 + 1);
	T_CHECK(rdmig_msg_decode(buf, len - 1, &m) == -EBADMSG, "bitmap a byte short");
	len = hand_part(buf, 0x1000, 13, 0, 3);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "bitmap a byte long");
	len = hand_part(buf, 0x1000, 13, 4, 2);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "unknown flag");
	len = hand_part(buf, 0x1000, 13, 0, 2);
	buf[len - 1] = 0x20; /* page 13 of a 13-page part */
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "trailing bit");
	buf[len - 1] = 0x1f; /* pages 8..12: all in the part */
	T_OK(rdmig_msg_decode(buf, len, &m));
	len = hand_part(buf, 0x1000, 0, 0, 0);
	put_le32(buf + 8, 8);
	T_CHECK(rdmig_msg_decode(buf, RDMIG_HDR_LEN + 8, &m) == -EBADMSG,
	        "shorter than its header");

	/* WANT: any address inside a user-space page */
	v = 0x7f0000001234;
	n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_WANT, &v, 1);
	T_CHECK(n == RDMIG_HDR_LEN + 8, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_WANT && m.u.u64[0] == 0x7f0000001234, "WANT");
	v = end - 1;
	n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_WANT, &v, 1);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	put_le64(buf + RDMIG_HDR_LEN, end);
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "WANT past the end");
	v = end;
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_WANT, &v, 1) == -EINVAL,
	        "encoder: WANT past the end");
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_WANT, &v, 2) == -EINVAL,
	        "WANT with two fields");

	/* SESSION: id, id, flags; no field fewer or more, no unknown flag */
	uint64_t id[3] = {0x0123456789abcdefull, 0xfedcba9876543210ull, RDMIG_SESSION_RETURNING};
	n = rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_SESSION, id, 3);
	T_CHECK(n == RDMIG_HDR_LEN + 24, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_SESSION && m.u.u64[0] == id[0] && m.u.u64[1] == id[1] &&
	            m.u.u64[2] == RDMIG_SESSION_RETURNING &&
	            !strcmp(rdmig_msg_type_name(RDMIG_MSG_SESSION), "SESSION"),
	        "SESSION");
	put_le64(buf + RDMIG_HDR_LEN + 16, 2);
	T_CHECK(rdmig_msg_decode(buf, (size_t)n, &m) == -EBADMSG, "SESSION with an unknown flag");
	put_le32(buf + 8, 16);
	T_CHECK(rdmig_msg_decode(buf, RDMIG_HDR_LEN + 16, &m) == -EBADMSG, "SESSION of two fields");
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_SESSION, id, 2) == -EINVAL,
	        "encoder: SESSION of two fields");
	id[2] = 2;
	T_CHECK(rdmig_msg_encode_u64(buf, sizeof(buf), RDMIG_MSG_SESSION, id, 3) == -EINVAL,
	        "encoder: SESSION with an unknown flag");
}

/* A PAGES message by hand: header, then addr, pages, mask and nd data bytes
 * (zeros). */
static size_t hand_pages(uint8_t *buf, uint64_t addr, uint32_t pages, uint32_t mask, size_t nd)
{
	uint8_t *p = buf + RDMIG_HDR_LEN;

	put_le32(buf, RDMIG_PROTO_MAGIC);
	put_le16(buf + 4, RDMIG_PROTO_VERSION);
	put_le16(buf + 6, RDMIG_MSG_PAGES);
	put_le32(buf + 8, (uint32_t)(16 + nd));
	put_le32(buf + 12, 0);
	put_le64(p, addr);
	put_le32(p + 8, pages);
	put_le32(p + 12, mask);
	memset(p + 16, 0, nd);
	return RDMIG_HDR_LEN + 16 + nd;
}

static void pages_msg(void)
{
	static uint8_t buf[RDMIG_MSG_MAX + 64], data[RDMIG_PAGES_MAX * 4096];
	const uint64_t end = RDMIG_PART_ADDR_END;
	struct rdmig_msg m;
	size_t len;
	int n;

	T_CHECK(!strcmp(rdmig_msg_type_name(RDMIG_MSG_PAGES), "PAGES"), "type name");
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i / 4096 + 1);
	/* 8 pages, pages 1 and 6 hold data: two pages of it, in order */
	n = rdmig_msg_encode_pages(buf, sizeof(buf), 0x7f0000008000, 8, 0x42, data);
	T_CHECK(n == RDMIG_HDR_LEN + 16 + 2 * 4096, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.type == RDMIG_MSG_PAGES && m.u.pages.addr == 0x7f0000008000 &&
	            m.u.pages.pages == 8 && m.u.pages.mask == 0x42,
	        "PAGES header");
	T_CHECK(m.u.pages.data == buf + RDMIG_HDR_LEN + 16 && m.u.pages.data[0] == 1 &&
	            m.u.pages.data[4096] == 2,
	        "data in the buffer, the caller's pages in order");
	/* every page zero: no data at all */
	n = rdmig_msg_encode_pages(buf, sizeof(buf), 0x1000, 3, 0, NULL);
	T_CHECK(n == RDMIG_HDR_LEN + 16, "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(m.u.pages.pages == 3 && m.u.pages.mask == 0, "zero pages");
	/* the largest, ending at the end of user space */
	n = rdmig_msg_encode_pages(buf, sizeof(buf), end - RDMIG_PAGES_MAX * 4096ull,
	                           RDMIG_PAGES_MAX, (1u << RDMIG_PAGES_MAX) - 1, data);
	T_CHECK(n == (int)(RDMIG_HDR_LEN + 16 + RDMIG_PAGES_MAX * 4096), "length %d", n);
	T_OK(rdmig_msg_decode(buf, (size_t)n, &m));
	T_CHECK(rdmig_msg_encode_pages(buf, RDMIG_HDR_LEN + 16 + 4095, 0x1000, 1, 1, data) ==
	            -ENOSPC,
	        "short buffer");

	/* what the encoder refuses, the decoder refuses too */
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), 0x1800, 1, 1, data) == -EINVAL,
	        "encoder: unaligned");
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), 0x1000, 0, 0, data) == -EINVAL,
	        "encoder: no pages");
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), 0x1000, RDMIG_PAGES_MAX + 1, 0, data) ==
	            -EINVAL,
	        "encoder: too many pages");
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), 0x1000, 2, 4, data) == -EINVAL,
	        "encoder: a mask bit past the pages");
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), end - 4096, 2, 0, data) == -EINVAL,
	        "encoder: past the end");
	T_CHECK(rdmig_msg_encode_pages(buf, sizeof(buf), UINT64_MAX - 4095, 2, 0, data) == -EINVAL,
	        "encoder: wrapping");

	len = hand_pages(buf, 0x1000, 2, 3, 2 * 4096);
	T_OK(rdmig_msg_decode(buf, len, &m));
	len = hand_pages(buf, 0x1000, 2, 3, 4096);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "a page of data short");
	len = hand_pages(buf, 0x1000, 2, 1, 2 * 4096);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "a page of data too many");
	len = hand_pages(buf, 0x1000, 2, 1, 4095);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "a byte short");
	len = hand_pages(buf, 0x1000, 2, 4, 4096);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "a mask bit past the pages");
	len = hand_pages(buf, 0x1000, 2, 0x80000000u, 4096);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "the mask's top bit");
	len = hand_pages(buf, 0x1000, 0, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "no pages");
	len = hand_pages(buf, 0x1000, RDMIG_PAGES_MAX + 1, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "too many pages");
	len = hand_pages(buf, 0x1000, UINT32_MAX, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "pages far beyond the limit");
	len = hand_pages(buf, 0x1080, 1, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "unaligned");
	len = hand_pages(buf, end - 4096, 2, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "past the end");
	len = hand_pages(buf, UINT64_MAX - 4095, 2, 0, 0);
	T_CHECK(rdmig_msg_decode(buf, len, &m) == -EBADMSG, "wrapping");
	len = hand_pages(buf, 0x1000, 1, 0, 0);
	put_le32(buf + 8, 8);
	T_CHECK(rdmig_msg_decode(buf, RDMIG_HDR_LEN + 8, &m) == -EBADMSG,
	        "shorter than its header");
}

static void hostport(void)
{
	char h[64], p[8];

	T_OK(rdmig_split_hostport("127.0.0.1:7471", h, sizeof(h), p, sizeof(p)));
	T_CHECK(!strcmp(h, "127.0.0.1") && !strcmp(p, "7471"), "%s %s", h, p);
	T_OK(rdmig_split_hostport("[::1]:0", h, sizeof(h), p, sizeof(p)));
	T_CHECK(!strcmp(h, "::1") && !strcmp(p, "0"), "%s %s", h, p);
	T_CHECK(rdmig_split_hostport("::1:80", h, sizeof(h), p, sizeof(p)) == -EINVAL, "bare v6");
	T_CHECK(rdmig_split_hostport("host", h, sizeof(h), p, sizeof(p)) == -EINVAL, "no port");
	T_CHECK(rdmig_split_hostport("host:", h, sizeof(h), p, sizeof(p)) == -EINVAL, "empty port");
	T_CHECK(rdmig_split_hostport(":80", h, sizeof(h), p, sizeof(p)) == -EINVAL, "empty host");
	T_CHECK(rdmig_split_hostport("h:65536", h, sizeof(h), p, sizeof(p)) == -EINVAL, "port");
	T_CHECK(rdmig_split_hostport("h:-1", h, sizeof(h), p, sizeof(p)) == -EINVAL, "sign");
	T_CHECK(rdmig_split_hostport("[::1]80", h, sizeof(h), p, sizeof(p)) == -EINVAL, "bracket");
}

/* The committed fuzzing seeds (test/CMakeLists.txt passes their folder) are
 * messages this build accepts: a version bump that left them behind would
 * leave the fuzzer starting from inputs refused at their header. */
static void seeds_current(void)
{
	const char *have = getenv("RDMIG_PROTO_SEEDS_COMMITTED");
	struct dirent *e;
	DIR *d;
	unsigned n = 0;

	if (!have) {
		printf("  (RDMIG_PROTO_SEEDS_COMMITTED not set: nothing to check)\n");
		return;
	}
	d = opendir(have);
	T_CHECK(d != NULL, "%s: %s", have, strerror(errno));
	while (d && (e = readdir(d))) {
		uint8_t buf[RDMIG_MSG_MAX];
		struct rdmig_msg m;
		char path[4096];
		size_t len;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", have, e->d_name);
		f = fopen(path, "rb");
		T_CHECK(f != NULL, "%s: %s", path, strerror(errno));
		if (!f)
			continue;
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		T_CHECK(rdmig_msg_decode(buf, len, &m) == 0,
		        "seed %s is refused by this build: make it a message it takes", path);
		n++;
	}
	if (d)
		closedir(d);
	T_CHECK(n > 0, "no seeds in %s", have);
}

int main(int argc, char **argv)
{
	t_state.only = argc > 1 ? argv[1] : NULL;
	T_RUN(roundtrip_hello);
	T_RUN(roundtrip_regions);
	T_RUN(roundtrip_error);
	T_RUN(rejects_malformed);
	T_RUN(migration_messages);
	T_RUN(part_want);
	T_RUN(pages_msg);
	T_RUN(hostport);
	T_RUN(seeds_current);
	return t_finish();
}
