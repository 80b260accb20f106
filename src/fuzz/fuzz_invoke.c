/*
 * fuzz_invoke.c: libFuzzer target for the MirrorNet TA's invoke handler.
 *
 *   clang -fsanitize=fuzzer,address ... (CMake target mirrornet_fuzz_invoke)
 *
 * Each input is a short sequence of invokes on a fresh session (the TA's state, e.g. partly loaded
 * taps, carries across the invokes of one input). Per invoke the input chooses the command, any 16-bit
 * parameter-type word (including types OP-TEE would never deliver), memref sizes (biased towards the
 * sizes the TA expects, off by one, and zero), NULL buffers, values and the memref contents.
 * Every memref is an exact-size heap block, so AddressSanitizer reports any read or write past a size
 * the TA was given. After each invoke the harness checks what the TA promised:
 *   - input memrefs are unchanged;
 *   - the result is one of the GP codes the TA documents;
 *   - a successful RUN_CPM reports exactly the output size of its policy, GET_INFO the info size;
 *   - TEE_ERROR_SHORT_BUFFER writes back a size larger than the one given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tee_internal_api.h>
#include <user_ta_header_defines.h>

#include "tee_sim_internal.h"

#include "mirrornet_cpm.h"

#define TAP_BYTES ((size_t)MIRRORNET_CPM_TAP_FLOATS * 4)
#define MAX_INVOKES 4

static uint8_t heap[TA_DATA_SIZE] __attribute__((aligned(16)));

struct reader {
	const uint8_t *p;
	size_t n;
};

static uint32_t take(struct reader *r, int bytes)
{
	uint32_t v = 0;
	int i;

	for (i = 0; i < bytes; i++) {
		v |= (uint32_t)(r->n ? *r->p : 0) << (8 * i);
		if (r->n) {
			r->p++;
			r->n--;
		}
	}
	return v;
}

static size_t pick_size(struct reader *r)
{
	switch (take(r, 1) % 10) {
	case 0: return TAP_BYTES;
	case 1: return TAP_BYTES - 1;
	case 2: return TAP_BYTES + 1;
	case 3: return 0;
	case 4: return (size_t)MIRRORNET_CPM_NUM_CLASSES * 4;
	case 5: return 4;
	case 6: return 192; /* MIRRORNET_TA_INFO_BYTES */
	case 7: return 191;
	case 8: return take(r, 1) * 4u + 1u;
	default: return take(r, 2) % (TAP_BYTES + 64);
	}
}

static void fail(const char *why)
{
	tee_sim_log("fuzz invariant violated:", why, 0);
	abort();
}

static void one_invoke(struct reader *r)
{
	TEE_Param params[4];
	uint8_t *bufs[4] = { NULL, NULL, NULL, NULL };
	uint8_t *copies[4] = { NULL, NULL, NULL, NULL };
	size_t sizes[4] = { 0, 0, 0, 0 };
	struct tee_sim_region regions[4];
	uint32_t cmd = take(r, 1) % 4; /* 3 is not a command */
	uint32_t types = take(r, 2);
	int i, nregions = 0;
	TEE_Result res;

	memset(params, 0, sizeof(params));
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(types, i);

		if (t == TEE_PARAM_TYPE_MEMREF_INPUT || t == TEE_PARAM_TYPE_MEMREF_OUTPUT ||
		    t == TEE_PARAM_TYPE_MEMREF_INOUT) {
			size_t size = pick_size(r);
			int null_buffer = (take(r, 1) & 0x1f) == 0;

			params[i].memref.size = size;
			if (null_buffer)
				continue;
			/* Exact size; malloc(0) gives a block any access to which ASan reports. */
			bufs[i] = malloc(size);
			copies[i] = malloc(size ? size : 1);
			if (!bufs[i] || !copies[i])
				abort();
			/* Contents from the input (zeros once it runs out). */
			{
				size_t k;

				for (k = 0; k < size; k++)
					bufs[i][k] = (uint8_t)take(r, 1);
			}
			memcpy(copies[i], bufs[i], size);
			sizes[i] = size;
			params[i].memref.buffer = bufs[i];
			regions[nregions].start = bufs[i];
			regions[nregions].size = size;
			regions[nregions].access = TEE_MEMORY_ACCESS_READ |
				(t == TEE_PARAM_TYPE_MEMREF_INPUT ? 0 : TEE_MEMORY_ACCESS_WRITE);
			nregions++;
		} else {
			params[i].value.a = take(r, 4);
			params[i].value.b = take(r, 4);
		}
	}

	tee_sim_set_shared_regions(regions, nregions);
	res = TA_InvokeCommandEntryPoint(NULL, cmd, types, params);
	tee_sim_set_shared_regions(NULL, 0);

	switch (res) {
	case TEE_SUCCESS:
	case TEE_ERROR_BAD_PARAMETERS:
	case TEE_ERROR_BAD_STATE:
	case TEE_ERROR_SHORT_BUFFER:
	case TEE_ERROR_NOT_SUPPORTED:
	case TEE_ERROR_ACCESS_DENIED:
	case TEE_ERROR_GENERIC:
		break;
	default:
		fail("undocumented result code");
	}
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(types, i);

		if (t == TEE_PARAM_TYPE_MEMREF_INPUT && bufs[i] &&
		    memcmp(bufs[i], copies[i], sizes[i]) != 0)
			fail("the TA wrote into an input memref");
	}
	if (res == TEE_ERROR_SHORT_BUFFER) {
		int grew = 0;

		for (i = 0; i < 4; i++)
			if (TEE_PARAM_TYPE_GET(types, i) == TEE_PARAM_TYPE_MEMREF_OUTPUT &&
			    params[i].memref.size > sizes[i])
				grew = 1;
		if (!grew)
			fail("SHORT_BUFFER without a larger size written back");
	}
	if (res == TEE_SUCCESS && cmd == 1 && params[1].memref.size !=
	    (MIRRORNET_TA_OUTPUT_POLICY == 2 ? 4u : (size_t)MIRRORNET_CPM_NUM_CLASSES * 4))
		fail("RUN_CPM succeeded with the wrong output size");
	if (res == TEE_SUCCESS && cmd == 0 && params[0].memref.size != 192)
		fail("GET_INFO succeeded with the wrong size");
	for (i = 0; i < 4; i++) {
		free(bufs[i]);
		free(copies[i]);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int created;
	struct reader r = { data, size };
	void *session = NULL;
	int n, k;

	if (!created) {
		tee_sim_heap_init(heap, sizeof(heap));
		if (TA_CreateEntryPoint() != TEE_SUCCESS)
			abort();
		created = 1;
	}
	if (TA_OpenSessionEntryPoint(0, NULL, &session) != TEE_SUCCESS)
		abort();
	n = 1 + (int)(take(&r, 1) % MAX_INVOKES);
	for (k = 0; k < n; k++)
		one_invoke(&r);
	TA_CloseSessionEntryPoint(session);
	return 0;
}
