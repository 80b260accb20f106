/*
 * fuzz_invoke.c: libFuzzer target for the MirrorNet TA's invoke handler.
 *
 *   clang -fsanitize=fuzzer,address ... (CMake target mirrornet_fuzz_invoke)
 *
 * Each input is a short sequence of invokes on a fresh session (the TA's state, e.g. partly loaded
 * taps, carries across the invokes of one input). Per invoke the input chooses the command, any 16-bit
 * parameter-type word (including types OP-TEE would never deliver), memref sizes (the sizes the TA
 * expects, off by one, zero, anything), NULL buffers, values, and a seed for the memref contents.
 * The choices lean towards what the TA compares against (each command's valid type words and their
 * one-nibble neighbours, the tap size, the offset reached so far), so deep paths are reached in seconds.
 * Every memref is an exact-size heap block, so AddressSanitizer reports any read or write past a size
 * the TA was given. After each invoke the harness checks what the TA promised:
 *   - input memrefs are unchanged;
 *   - the result is one of the GP codes the TA documents;
 *   - a successful RUN_CPM reports exactly the output size of its policy, GET_INFO the info size;
 *   - TEE_ERROR_SHORT_BUFFER writes back a size larger than the one given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tee_internal_api.h>
#include <user_ta_header_defines.h>

#include "tee_sim_internal.h"

#include "mirrornet_cpm.h"

#define TAP_BYTES ((size_t)MIRRORNET_CPM_TAP_FLOATS * 4)
#define MAX_INVOKES 6

/* Bytes of taps this input has loaded so far (the harness's own count, to aim offsets at). */
static uint32_t harness_loaded;

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
	switch (take(r, 1) % 12) {
	case 10: return TAP_BYTES - harness_loaded;
	case 11: /* the per-invoke limit, when it is within reach */
		return MIRRORNET_TA_MAX_INVOKE_BYTES < TAP_BYTES + 64 ? MIRRORNET_TA_MAX_INVOKE_BYTES : TAP_BYTES + 2;
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

/* Values the TA compares against (offsets, totals), their neighbours, and anything else. */
static uint32_t pick_value(struct reader *r)
{
	switch (take(r, 1) % 8) {
	case 7: return harness_loaded;
	case 0: return 0;
	case 1: return (uint32_t)TAP_BYTES;
	case 2: return (uint32_t)TAP_BYTES - 1;
	case 3: return (uint32_t)TAP_BYTES + 1;
	case 4: return take(r, 1) * 4u;
	case 5: return take(r, 2) % ((uint32_t)TAP_BYTES + 8);
	default: return take(r, 4);
	}
}

/* A parameter-type word for command cmd: one the TA accepts, one with a nibble changed, or any. */
static uint32_t pick_types(struct reader *r, uint32_t cmd)
{
	static const uint32_t valid[4][4] = {
		{ TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE,
				  TEE_PARAM_TYPE_NONE) },
		{ TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT,
				  TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_NONE),
		  TEE_PARAM_TYPES(TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_MEMREF_OUTPUT,
				  TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_NONE),
		  TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT,
				  TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE),
		  TEE_PARAM_TYPES(TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE,
				  TEE_PARAM_TYPE_NONE) },
		{ TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_VALUE_INPUT, TEE_PARAM_TYPE_NONE,
				  TEE_PARAM_TYPE_NONE) },
		{ TEE_PARAM_TYPES(TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_NONE,
				  TEE_PARAM_TYPE_NONE) },
	};
	uint32_t mode = take(r, 1) % 4, t;

	if (cmd > 3 || mode == 3)
		return take(r, 2);
	t = valid[cmd][cmd == 1 ? take(r, 1) % 4 : 0];
	if (mode == 2) {
		uint32_t slot = take(r, 1) % 4;

		t = (t & ~(0xFu << (4 * slot))) | ((take(r, 1) & 0xFu) << (4 * slot));
	}
	return t;
}

/* Successful invokes per command, printed at exit: evidence that the deep paths were reached. */
static unsigned long successes[4]; /* get_info, run_cpm (taps given), load_taps, run_cpm (loaded) */

static void print_successes(void)
{
	char line[160];
	int n = snprintf(line, sizeof(line), "mirrornet_fuzz: successes get_info=%lu run_cpm=%lu "
			 "load_taps=%lu run_cpm_loaded=%lu\n", successes[0], successes[1], successes[2],
			 successes[3]);

	if (n > 0 && write(2, line, (size_t)n) < 0) {
		/* best effort */
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
	uint32_t pick = take(r, 1);
	uint32_t cmd = pick % 5; /* 4 is not a command */
	uint32_t types;

	/* Once the harness has loaded a whole set of taps, often follow with RUN_CPM on them. */
	if (harness_loaded == TAP_BYTES && !(pick & 0x80)) {
		cmd = 1;
		types = TEE_PARAM_TYPES(TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_MEMREF_OUTPUT,
					pick & 0x40 ? TEE_PARAM_TYPE_VALUE_OUTPUT : TEE_PARAM_TYPE_NONE,
					TEE_PARAM_TYPE_NONE);
	} else {
		types = pick_types(r, cmd);
	}
	int i, nregions = 0;
	TEE_Result res;

	memset(params, 0, sizeof(params));
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(types, i);

		if (t == TEE_PARAM_TYPE_MEMREF_INPUT || t == TEE_PARAM_TYPE_MEMREF_OUTPUT ||
		    t == TEE_PARAM_TYPE_MEMREF_INOUT) {
			size_t size = pick_size(r);
			int null_buffer = (take(r, 1) & 0x1f) == 0x1f; /* not when the input ran out */

			params[i].memref.size = size;
			if (null_buffer)
				continue;
			/* Exact size; malloc(0) gives a block any access to which ASan reports. */
			bufs[i] = malloc(size);
			copies[i] = malloc(size ? size : 1);
			if (!bufs[i] || !copies[i])
				abort();
			/* Contents from a generator seeded by one input byte: the structure of an invoke
			 * stays a few bytes long, so short inputs reach long invoke sequences. */
			{
				uint32_t x = 0x9e3779b9u * (take(r, 1) + 1);
				size_t k;

				for (k = 0; k < size; k++) {
					x ^= x << 13;
					x ^= x >> 17;
					x ^= x << 5;
					bufs[i][k] = (uint8_t)x;
				}
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
			params[i].value.a = pick_value(r);
			params[i].value.b = take(r, 1) & 1 ? (uint32_t)TAP_BYTES : pick_value(r);
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
	if (res == TEE_SUCCESS && cmd < 3)
		successes[cmd == 1 && TEE_PARAM_TYPE_GET(types, 0) == TEE_PARAM_TYPE_NONE ? 3 : cmd]++;
	if (res == TEE_SUCCESS && cmd == 2)
		harness_loaded = params[1].value.a + (uint32_t)params[0].memref.size;
	if (res == TEE_SUCCESS && cmd == 1)
		harness_loaded = 0;
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
		atexit(print_successes);
		created = 1;
	}
	if (TA_OpenSessionEntryPoint(0, NULL, &session) != TEE_SUCCESS)
		abort();
	harness_loaded = 0;
	n = 1 + (int)(take(&r, 1) % MAX_INVOKES);
	for (k = 0; k < n; k++)
		one_invoke(&r);
	TA_CloseSessionEntryPoint(session);
	return 0;
}
