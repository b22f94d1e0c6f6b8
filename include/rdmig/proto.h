/*
 * The wire protocol of rdmig's control messages: one header for all of it.
 *
 * Every control message is one transport message (rdmig_tp_send/recv):
 *
 *   0      4        6      8       12        16
 *   | magic | version | type | length | reserved | payload (length bytes) ...
 *
 * All fields are little-endian and fixed-width, encoded and decoded byte by byte
 * (no struct overlays), so neither padding nor the host's byte order reaches the
 * wire. A decoder checks magic, version, type, that length matches the bytes
 * received exactly, and each type's own limits, before anything else reads the
 * payload; a message that fails any check is rejected whole with -EBADMSG (or
 * -EPROTONOSUPPORT for another version) and the caller closes the connection.
 *
 * Handshake (rdma/auth.c), before any memory descriptor:
 *   both:      HELLO   {page_size, role, nonce[32]}   each side's fresh random nonce
 *   connector: AUTH    {mac[32]}  HMAC-SHA256(token, "rdmig-auth-v1" | role | own nonce | peer nonce)
 *   listener:  AUTH    its own proof, sent only after the connector's checked out
 *   connector: AUTH_OK {}
 * Any failure: ERROR {code, text} and the connection is closed; a peer without
 * the token sees nothing but the listener's HELLO and ERROR.
 * Nothing secret crosses the wire; the role in the MAC stops a reflected answer.
 *
 * Migration (src/migrate_src.c, src/migrate_dst.c), after the handshake; the
 * source is the connector:
 *   src: LAYOUT    (optional, once, before the IMAGE) chunks like IMAGE's of an
 *                  image captured while the process still runs: only its map,
 *                  files, exe, mm fields and auxv mean anything (its thread,
 *                  descriptor and signal records are placeholders); the
 *                  destination builds that map into its husk ahead of the freeze
 *   src: REGIONS   the mirror's table (one or more messages, before the IMAGE)
 *   src: IMAGE     {total le64, offset le64, bytes}  chunks of the encoded image
 *                  (rdmig/image.h), in order, until offset + bytes == total
 *   dst: READY     {}  the process is rebuilt and stopped   (or ERROR: rollback)
 *   src: GO        {freeze_ns le64}  the source is committed: it never resumes
 *                  the original from here on
 *   dst: RUNNING   {pid le64, resume_ns le64}  the process runs on the destination
 * Post-copy without pulled rounds may send the IMAGE before the source has
 * walked the anonymous mappings: those arrive marked held (an image flag) and
 * their pages wait on the destination (a fault on one is parked, nothing is
 * fetched) until PART messages release them, part by part:
 *   src: PART      {addr le64, pages le32, flags le32, bitmap[(pages+7)/8]}
 *                  the source has walked and copied pages [addr, addr +
 *                  pages*4096): bit i of byte i/8 set = page addr + i*4096
 *                  holds data (the unused high bits of the last byte are 0);
 *                  RDMIG_PART_LAST on the last part: every held page is released
 *   dst: WANT      {addr le64}  a fault waits on the held page holding source
 *                  address addr (any address in the page): the source walks
 *                  that page's part next, and answers at once with
 *   src: PAGES     {addr le64, pages le32, mask le32, data[4096 x popcount(mask)]}
 *                  pages [addr, addr + pages*4096) (1..RDMIG_PAGES_MAX) as the
 *                  frozen process holds them: bit i of mask set = page i holds
 *                  data, its 4096 bytes next in data; clear = it reads zero.
 *                  The destination installs those of them still held, and its
 *                  part's PART later changes only the pages still held. An
 *                  answer the source could not make is not sent: the part's
 *                  walk releases the page anyway
 * After a reconnection the source sends every PART again: releasing a part
 * twice changes nothing, so the destination needs no memory of which it saw.
 *   dst: DONE      {faults, fetched, prefetched, bytes: le64 each}  every page is
 *                  local; the source kills the original and frees the mirror
 *   src: BYE
 * Pre-copy and hybrid modes add, before the IMAGE: the tracked ranges' REGIONS on
 * the data connection, then per round on control
 *   src: RUNS      {round le32, flags le32, n le32, 0, n x {addr le64, pages le64}}
 *                  the runs copied into the mirror that round (several messages,
 *                  RDMIG_RUNS_LAST on the last; RDMIG_RUNS_FINAL: pages copied
 *                  again after the last pulled round, by hybrid's settling
 *                  rounds or at the freeze, whose pulled copies are stale; not
 *                  pulled, no ROUND_DONE)
 *   dst: ROUND_DONE {round}  pulled into its arena; the source copies again only
 *                  after it, so a pull never reads a page being rewritten
 * Timestamps are CLOCK_REALTIME nanoseconds (downtime across hosts).
 */
#ifndef RDMIG_PROTO_H
#define RDMIG_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "rdmig/transport.h"

#define RDMIG_PROTO_MAGIC 0x474d4452u /* "RDMG" on the wire */
#define RDMIG_PROTO_VERSION 5u        /* 2: LAYOUT; 3: PART, WANT; 4: PAGES; 5: SESSION */
#define RDMIG_HDR_LEN 16u
#define RDMIG_NONCE_LEN 32u
#define RDMIG_MAC_LEN 32u
#define RDMIG_ERRTEXT_MAX 200u
/* Largest encoded image the IMAGE chunks may announce (rdmig/image.h's limit). */
#define RDMIG_IMAGE_TOTAL_MAX (256ull << 20)
/* Payload bytes of one IMAGE chunk at most. */
#define RDMIG_IMAGE_CHUNK_MAX (RDMIG_MSG_MAX - RDMIG_HDR_LEN - 16u)
/* RUNS flags and size */
#define RDMIG_RUNS_LAST 1u
#define RDMIG_RUNS_FINAL 2u
#define RDMIG_RUNS_STOPCOPY 4u /* on FINAL: every page local before the process runs */
#define RDMIG_RUNS_MAX ((RDMIG_MSG_MAX - RDMIG_HDR_LEN - 16u) / 16u)
/* PART flags and size. Addresses are source addresses in x86_64 user space
 * (below RDMIG_PART_ADDR_END, for WANT's too). The largest part fills one
 * message with its bitmap, rounded down to whole 64-page words so that parts
 * cut from a u64 bitmap start on a word. */
#define RDMIG_PART_LAST 1u /* the last part: every held page is now released */
#define RDMIG_PART_ADDR_END 0x800000000000ull
#define RDMIG_PART_PAGES_MAX (((RDMIG_MSG_MAX - RDMIG_HDR_LEN - 16u) * 8u) & ~63u)
/* Pages one PAGES answer carries at most (32 KiB: a fault's neighbours). */
#define RDMIG_PAGES_MAX 8u
/* Fixed u64 fields of GO, RUNNING, DONE, ROUND_DONE, WANT, SESSION. */
#define RDMIG_MSG_U64_MAX 4u
/* SESSION flags (no others are taken): a source coming back after a lost
 * link, not the start of a migration */
#define RDMIG_SESSION_RETURNING 1u

/* A region table fits one message: 16 + 8 + n*32 <= RDMIG_MSG_MAX. */
#define RDMIG_REGIONS_MAX 2000u

enum rdmig_msg_type {
	RDMIG_MSG_HELLO = 1,
	RDMIG_MSG_AUTH = 2,
	RDMIG_MSG_AUTH_OK = 3,
	RDMIG_MSG_ERROR = 4,
	RDMIG_MSG_REGIONS = 5,     /* a table of registered regions the peer may read */
	RDMIG_MSG_BYE = 6,         /* orderly end of a session */
	RDMIG_MSG_IMAGE = 7,       /* a chunk of the process image */
	RDMIG_MSG_READY = 8,       /* dst: restored, waiting for GO */
	RDMIG_MSG_GO = 9,          /* src: committed */
	RDMIG_MSG_RUNNING = 10,    /* dst: the process runs */
	RDMIG_MSG_DONE = 11,       /* dst: every page is local */
	RDMIG_MSG_RUNS = 12,       /* src: runs of pages copied into the mirror (pre-copy) */
	RDMIG_MSG_ROUND_DONE = 13, /* dst: it has pulled round {n} into its arena */
	RDMIG_MSG_LAYOUT = 14,     /* src: a chunk of the running process's layout */
	RDMIG_MSG_PART = 15,       /* src: a part of the held anonymous pages is released */
	RDMIG_MSG_WANT = 16,       /* dst: a fault waits on a held page: walk its part next */
	RDMIG_MSG_PAGES = 17,      /* src: held pages a fault waits on, with their data */
	RDMIG_MSG_SESSION = 18,    /* src: which migration this connection is of; dst: taken */
	RDMIG_MSG_TYPE_MAX = 18,
};

enum rdmig_role {
	RDMIG_ROLE_LISTENER = 1,
	RDMIG_ROLE_CONNECTOR = 2,
};

struct rdmig_region {
	uint64_t id; /* the owner's name for it (for a mirror: the target's address) */
	struct rdmig_rdesc desc;
};

/* A decoded message, in host form. */
struct rdmig_msg {
	uint16_t type;
	union {
		struct {
			uint32_t page_size;
			uint8_t role;
			uint8_t nonce[RDMIG_NONCE_LEN];
		} hello;
		struct {
			uint8_t mac[RDMIG_MAC_LEN];
		} auth;
		struct {
			int32_t code;                     /* an errno value, positive */
			char text[RDMIG_ERRTEXT_MAX + 1]; /* NUL-terminated, printable */
		} error;
		struct {
			uint32_t count;
			const uint8_t *raw; /* count entries, decode with rdmig_msg_region() */
		} regions;
		struct {
			uint64_t total, offset; /* offset < total <= RDMIG_IMAGE_TOTAL_MAX */
			uint32_t len;           /* 1..RDMIG_IMAGE_CHUNK_MAX, offset+len <= total */
			const uint8_t *data;
		} image; /* IMAGE and LAYOUT */
		struct {
			uint32_t round, flags, n;
			const uint8_t *raw; /* n runs, decode with rdmig_msg_run() */
		} runs;
		struct {
			uint64_t addr;       /* page aligned, part ends <= RDMIG_PART_ADDR_END */
			uint32_t pages;      /* 1..RDMIG_PART_PAGES_MAX */
			uint32_t flags;      /* RDMIG_PART_LAST */
			const uint8_t *bits; /* (pages+7)/8 bytes, in the received buffer */
		} part;
		struct {
			uint64_t addr;       /* page aligned, ends <= RDMIG_PART_ADDR_END */
			uint32_t pages;      /* 1..RDMIG_PAGES_MAX */
			uint32_t mask;       /* bits below pages only */
			const uint8_t *data; /* 4096 bytes per bit set, in the received buffer */
		} pages;
		/* GO {freeze_ns}, RUNNING {pid, resume_ns}, DONE {faults, fetched,
		 * prefetched, bytes}, ROUND_DONE {round}, WANT {addr}, SESSION {id,
		 * id, flags}: their fixed number of u64 fields. */
		uint64_t u64[RDMIG_MSG_U64_MAX];
	} u;
};

/* Encoders write into buf (cap bytes) and return the message length or -ENOSPC. */
int rdmig_msg_encode_hello(void *buf, size_t cap, uint32_t page_size, uint8_t role,
                           const uint8_t nonce[RDMIG_NONCE_LEN]);
int rdmig_msg_encode_auth(void *buf, size_t cap, const uint8_t mac[RDMIG_MAC_LEN]);
int rdmig_msg_encode_empty(void *buf, size_t cap, uint16_t type);
int rdmig_msg_encode_error(void *buf, size_t cap, int code, const char *text);
int rdmig_msg_encode_image(void *buf, size_t cap, uint64_t total, uint64_t offset, const void *data,
                           uint32_t len);
/* A chunk of type IMAGE or LAYOUT (same body). */
int rdmig_msg_encode_chunk(void *buf, size_t cap, uint16_t type, uint64_t total, uint64_t offset,
                           const void *data, uint32_t len);
/* GO, RUNNING, DONE, ROUND_DONE, WANT: n must be the type's field count (1, 2,
 * 4, 1, 1); a WANT address at or past RDMIG_PART_ADDR_END is -EINVAL. */
int rdmig_msg_encode_u64(void *buf, size_t cap, uint16_t type, const uint64_t *v, unsigned n);
struct rdmig_run {
	uint64_t addr, pages;
};
/* RUNS: n <= RDMIG_RUNS_MAX runs, each page aligned, 1..2^36 pages, no wrap. */
int rdmig_msg_encode_runs(void *buf, size_t cap, uint32_t round, uint32_t flags,
                          const struct rdmig_run *r, uint32_t n);
/* Run i (< n, checked) of a decoded RUNS message. */
int rdmig_msg_run(const struct rdmig_msg *m, uint32_t i, struct rdmig_run *out);
/* PART: addr page aligned, 1..RDMIG_PART_PAGES_MAX pages ending at or below
 * RDMIG_PART_ADDR_END, flags within RDMIG_PART_LAST, else -EINVAL. bits holds
 * (pages+7)/8 bytes; the unused high bits of its last byte are sent as zero
 * whatever they hold, so a caller may pass a slice of a larger bitmap. */
int rdmig_msg_encode_part(void *buf, size_t cap, uint64_t addr, uint32_t pages, uint32_t flags,
                          const uint8_t *bits);
/* PAGES: addr page aligned, 1..RDMIG_PAGES_MAX pages ending at or below
 * RDMIG_PART_ADDR_END, mask without bits at or past pages, else -EINVAL. data
 * holds 4096 bytes for each bit set in mask, in order. */
int rdmig_msg_encode_pages(void *buf, size_t cap, uint64_t addr, uint32_t pages, uint32_t mask,
                           const void *data);
int rdmig_msg_encode_regions(void *buf, size_t cap, const struct rdmig_region *r, uint32_t n);

/* Check and decode one received message. 0, -EBADMSG or -EPROTONOSUPPORT. */
int rdmig_msg_decode(const void *buf, size_t len, struct rdmig_msg *out);
/* Entry i (< count, checked) of a decoded REGIONS message. */
int rdmig_msg_region(const struct rdmig_msg *m, uint32_t i, struct rdmig_region *out);
const char *rdmig_msg_type_name(uint16_t type);

#endif /* RDMIG_PROTO_H */
