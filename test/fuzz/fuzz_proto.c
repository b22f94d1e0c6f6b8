/*
 * libFuzzer target for the control-message decoder: any bytes from a peer must
 * decode or be refused, never read outside the buffer or trip UB. A decoded
 * REGIONS table is walked entry by entry, as its users do.
 */
#include "rdmig/proto.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	if (m.type == RDMIG_MSG_ERROR && strlen(m.u.error.text) > RDMIG_ERRTEXT_MAX)
		__builtin_trap();
	return 0;
}
