/*
 * libFuzzer target for the control-message decoder: any bytes from a peer must
 * decode or be refused, never read outside the buffer or trip UB. A decoded
 * REGIONS table is walked entry by entry, as its users do, and a PART's bitmap
 * is read to its last byte.
 */
#include "rdmig/proto.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Keeps the PART bitmap's reads from being optimised away. */
static volatile unsigned sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rdmig_msg m;
	struct rdmig_region r;

	if (rdmig_msg_decode(data, size, &m) < 0)
		return 0;
	if (m.type == RDMIG_MSG_REGIONS) {
		for (uint32_t i = 0; i < m.u.regions.count; i++) {
			if (rdmig_msg_region(&m, i, &r) < 0 ||
			    r.desc.addr + r.desc.len < r.desc.addr)
				__builtin_trap();
		}
	}
	if (m.type == RDMIG_MSG_RUNS) {
		struct rdmig_run run;

		for (uint32_t i = 0; i < m.u.runs.n; i++) {
			if (rdmig_msg_run(&m, i, &run) < 0 || (run.addr & 4095) || !run.pages ||
			    run.addr + run.pages * 4096 < run.addr)
				__builtin_trap();
		}
	}
	if (m.type == RDMIG_MSG_PART) {
		uint32_t nb = (m.u.part.pages + 7) / 8;
		unsigned sum = 0;

		/* every byte the header promises, as the destination reads them: ASan
		 * sees a bitmap that runs past the received buffer */
		for (uint32_t i = 0; i < nb; i++)
			sum += m.u.part.bits[i];
		sink = sum;
		if ((m.u.part.addr & 4095) || !m.u.part.pages ||
		    m.u.part.pages > RDMIG_PART_PAGES_MAX ||
		    m.u.part.addr + (uint64_t)m.u.part.pages * 4096 > RDMIG_PART_ADDR_END ||
		    (m.u.part.flags & ~RDMIG_PART_LAST) ||
		    (m.u.part.pages % 8 && (m.u.part.bits[nb - 1] >> (m.u.part.pages % 8))))
			__builtin_trap();
	}
	if (m.type == RDMIG_MSG_WANT && m.u.u64[0] >= RDMIG_PART_ADDR_END)
		__builtin_trap();
	if (m.type == RDMIG_MSG_ERROR && strlen(m.u.error.text) > RDMIG_ERRTEXT_MAX)
		__builtin_trap();
	return 0;
}
