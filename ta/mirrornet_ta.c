/*
 * mirrornet_ta.c: the MirrorNet CPM trusted application.
 *
 * The normal world runs the backbone and hands its tapped feature maps to this TA; the TA runs the
 * Companion Partial Monitor (the generated mirrornet_cpm.c) on them and returns the rectified result
 * under the output policy fixed at build time. The command set and parameter layout are documented in
 * include/mirrornet_ta.h.
 *
 * Rules this file keeps: check the parameter types first, then every size, before touching any
 * buffer; answer a GP error code, never crash; copy the inputs out of shared memory into TA memory
 * before computing (the normal world can change shared memory while the TA reads it); keep all state
 * in static storage (the CPM's arena is static too), so the TA heap only serves the TA runtime.
 */
#include <tee_internal_api.h>

#include <mirrornet_ta.h>
#include <mirrornet_ta_config.h>

#include "mirrornet_cpm.h"

#ifndef MIRRORNET_TEE_SIM
/*
 * The dev kit's libutils is built with CFG_WITH_STATS (malloc_get_stats is in libutils.a), but TAs are
 * compiled without that flag, so <malloc.h> does not declare it: declare it here, as libutils has it.
 */
#include <pta_stats.h>
void malloc_get_stats(struct pta_stats_alloc *stats);
#endif

#define TAP_BYTES ((uint32_t)MIRRORNET_CPM_TAP_FLOATS * (uint32_t)sizeof(float))

#if MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_LABEL
#define OUTPUT_BYTES ((uint32_t)sizeof(int32_t))
#elif MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_LOGITS || \
	MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_PROBS
#define OUTPUT_BYTES ((uint32_t)MIRRORNET_CPM_NUM_CLASSES * (uint32_t)sizeof(float))
#else
#error "MIRRORNET_TA_OUTPUT_POLICY must be one of MIRRORNET_TA_POLICY_{LOGITS,PROBS,LABEL}"
#endif

_Static_assert(MIRRORNET_CPM_NUM_TAPS >= 1 && MIRRORNET_CPM_NUM_TAPS <= MIRRORNET_TA_MAX_TAPS,
	       "the CPM reads more taps than GET_INFO can describe");
_Static_assert(MIRRORNET_CPM_NUM_CLASSES >= 1, "the CPM has no output");
_Static_assert(sizeof(struct mirrornet_ta_info) == MIRRORNET_TA_INFO_BYTES,
	       "struct mirrornet_ta_info does not match MIRRORNET_TA_INFO_BYTES");
_Static_assert(MIRRORNET_TA_MAX_INVOKE_BYTES >= OUTPUT_BYTES &&
	       MIRRORNET_TA_MAX_INVOKE_BYTES >= MIRRORNET_TA_INFO_BYTES,
	       "MIRRORNET_TA_MAX_INVOKE_BYTES is too small for the TA's answers");

static const uint32_t tap_sizes[MIRRORNET_CPM_NUM_TAPS] = MIRRORNET_CPM_TAP_SIZES;

/* TA-private copies of the inputs and the result (never computed in place in shared memory). */
static float taps_buf[MIRRORNET_CPM_TAP_FLOATS];
static float logits_buf[MIRRORNET_CPM_NUM_CLASSES];
static uint32_t taps_loaded;   /* bytes of taps_buf filled by LOAD_TAPS (or 0) */
static uint32_t runs;
static uint64_t cpm_ns_total;

/* ---- timing ------------------------------------------------------------------------------------ */
#ifdef MIRRORNET_TEE_SIM
/* The host simulator offers a nanosecond monotonic clock (an extension, not GP API). */
#define CLOCK_RESOLUTION_NS 1u
static uint64_t clock_ns(void)
{
	return tee_sim_clock_ns();
}
#else
/* TEE_GetSystemTime has millisecond resolution: per-run figures are coarse, totals are sound. */
#define CLOCK_RESOLUTION_NS 1000000u
static uint64_t clock_ns(void)
{
	TEE_Time t;

	TEE_GetSystemTime(&t);
	return (uint64_t)t.seconds * 1000000000u + (uint64_t)t.millis * 1000000u;
}
#endif

/* ---- output policies ------------------------------------------------------------------------- */
#if MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_PROBS
/* expf without libm: 2^n * e^r with |r| <= ln2/2, degree-6 polynomial (relative error < 2e-7). */
static float ta_expf(float x)
{
	union { float f; uint32_t u; } scale;
	float n, r, p;
	int32_t k;

	if (x != x)
		return x;
	if (x > 88.0f)
		return __builtin_inff();
	if (x < -87.0f)
		return 0.0f;
	n = x * 1.44269504f;
	n = n >= 0.0f ? (float)(int32_t)(n + 0.5f) : (float)(int32_t)(n - 0.5f);
	k = (int32_t)n;
	r = x - n * 0.693145752f;  /* ln2, high part */
	r = r - n * 1.42860677e-6f; /* ln2, low part */
	p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f +
		r * (0.00833333377f + r * 0.00138888892f)))));
	scale.u = (uint32_t)(k + 127) << 23;
	return p * scale.f;
}
#endif

/* Apply the build-time policy to logits_buf and write OUTPUT_BYTES bytes to out. */
static void write_output(void *out)
{
#if MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_LOGITS
	TEE_MemMove(out, logits_buf, OUTPUT_BYTES);
#elif MIRRORNET_TA_OUTPUT_POLICY == MIRRORNET_TA_POLICY_PROBS
	float probs[MIRRORNET_CPM_NUM_CLASSES];
	float max = logits_buf[0], sum = 0.0f;
	uint32_t i;

	for (i = 1; i < MIRRORNET_CPM_NUM_CLASSES; i++)
		if (logits_buf[i] > max)
			max = logits_buf[i];
	for (i = 0; i < MIRRORNET_CPM_NUM_CLASSES; i++) {
		probs[i] = ta_expf(logits_buf[i] - max);
		sum += probs[i];
	}
	for (i = 0; i < MIRRORNET_CPM_NUM_CLASSES; i++)
		probs[i] = probs[i] / sum;
	TEE_MemMove(out, probs, OUTPUT_BYTES);
#else /* LABEL */
	int32_t label = 0;
	uint32_t i;

	for (i = 1; i < MIRRORNET_CPM_NUM_CLASSES; i++)
		if (logits_buf[i] > logits_buf[label])
			label = (int32_t)i;
	TEE_MemMove(out, &label, sizeof(label));
#endif
}

/* ---- parameter checks -------------------------------------------------------------------------- */
static TEE_Result check_input(const TEE_Param *p)
{
	if (!p->memref.buffer)
		return TEE_ERROR_BAD_PARAMETERS;
	return TEE_CheckMemoryAccessRights(TEE_MEMORY_ACCESS_READ | TEE_MEMORY_ACCESS_ANY_OWNER,
					   p->memref.buffer, p->memref.size);
}

static TEE_Result check_output(const TEE_Param *p)
{
	if (!p->memref.buffer)
		return TEE_ERROR_BAD_PARAMETERS;
	return TEE_CheckMemoryAccessRights(TEE_MEMORY_ACCESS_WRITE | TEE_MEMORY_ACCESS_ANY_OWNER,
					   p->memref.buffer, p->memref.size);
}

/* ---- commands ------------------------------------------------------------------------------------ */
static TEE_Result cmd_get_info(uint32_t types, TEE_Param params[4])
{
	struct mirrornet_ta_info info;
	static const char sha[] = MIRRORNET_CPM_SOURCE_SHA256;
	TEE_Result res;
	uint32_t i;

	if (types != TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE,
				     TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE))
		return TEE_ERROR_BAD_PARAMETERS;
	if (params[0].memref.size < MIRRORNET_TA_INFO_BYTES) {
		params[0].memref.size = MIRRORNET_TA_INFO_BYTES;
		return TEE_ERROR_SHORT_BUFFER;
	}
	res = check_output(&params[0]);
	if (res != TEE_SUCCESS)
		return res;

	TEE_MemFill(&info, 0, sizeof(info));
	info.magic = MIRRORNET_TA_INFO_MAGIC;
	info.abi_version = MIRRORNET_TA_ABI_VERSION;
	info.policy = MIRRORNET_TA_OUTPUT_POLICY;
	info.num_taps = MIRRORNET_CPM_NUM_TAPS;
	info.tap_floats = MIRRORNET_CPM_TAP_FLOATS;
	info.num_classes = MIRRORNET_CPM_NUM_CLASSES;
	info.output_bytes = OUTPUT_BYTES;
	info.max_invoke_bytes = MIRRORNET_TA_MAX_INVOKE_BYTES;
	info.arena_bytes = MIRRORNET_CPM_ARENA_BYTES;
	info.weight_bytes = MIRRORNET_CPM_WEIGHT_BYTES;
	info.clock_resolution_ns = CLOCK_RESOLUTION_NS;
	info.runs = runs;
	info.cpm_ns_total = cpm_ns_total;
	for (i = 0; i < MIRRORNET_CPM_NUM_TAPS; i++)
		info.tap_sizes[i] = tap_sizes[i];
	for (i = 0; i < sizeof(sha) - 1 && i < sizeof(info.source_sha256) - 1; i++)
		info.source_sha256[i] = sha[i];

	TEE_MemMove(params[0].memref.buffer, &info, sizeof(info));
	params[0].memref.size = MIRRORNET_TA_INFO_BYTES;
	return TEE_SUCCESS;
}

static TEE_Result cmd_load_taps(uint32_t types, TEE_Param params[4])
{
	uint32_t offset, size;
	TEE_Result res;

	if (types != TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_VALUE_INPUT,
				     TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE))
		return TEE_ERROR_BAD_PARAMETERS;
	if (params[1].value.b != TAP_BYTES)
		return TEE_ERROR_BAD_PARAMETERS;
	if (params[0].memref.size == 0 || params[0].memref.size > MIRRORNET_TA_MAX_INVOKE_BYTES)
		return TEE_ERROR_BAD_PARAMETERS;
	offset = params[1].value.a;
	size = (uint32_t)params[0].memref.size;
	if (offset > TAP_BYTES || size > TAP_BYTES - offset)
		return TEE_ERROR_BAD_PARAMETERS;
	if (offset != 0 && offset != taps_loaded)
		return TEE_ERROR_BAD_STATE;
	res = check_input(&params[0]);
	if (res != TEE_SUCCESS)
		return res;

	TEE_MemMove((uint8_t *)taps_buf + offset, params[0].memref.buffer, size);
	taps_loaded = offset + size;
	return TEE_SUCCESS;
}

static TEE_Result cmd_run_cpm(uint32_t types, TEE_Param params[4])
{
	const float *taps[MIRRORNET_CPM_NUM_TAPS];
	uint32_t t0 = TEE_PARAM_TYPE_GET(types, 0);
	uint32_t t2 = TEE_PARAM_TYPE_GET(types, 2);
	uint64_t start, elapsed;
	uint32_t i, at;
	TEE_Result res;

	if ((t0 != TEE_PARAM_TYPE_MEMREF_INPUT && t0 != TEE_PARAM_TYPE_NONE) ||
	    TEE_PARAM_TYPE_GET(types, 1) != TEE_PARAM_TYPE_MEMREF_OUTPUT ||
	    (t2 != TEE_PARAM_TYPE_VALUE_OUTPUT && t2 != TEE_PARAM_TYPE_NONE) ||
	    TEE_PARAM_TYPE_GET(types, 3) != TEE_PARAM_TYPE_NONE)
		return TEE_ERROR_BAD_PARAMETERS;

	if (t0 == TEE_PARAM_TYPE_MEMREF_INPUT) {
		if (params[0].memref.size != TAP_BYTES || TAP_BYTES > MIRRORNET_TA_MAX_INVOKE_BYTES)
			return TEE_ERROR_BAD_PARAMETERS;
		res = check_input(&params[0]);
		if (res != TEE_SUCCESS)
			return res;
	} else if (taps_loaded != TAP_BYTES) {
		return TEE_ERROR_BAD_STATE;
	}
	if (params[1].memref.size < OUTPUT_BYTES) {
		params[1].memref.size = OUTPUT_BYTES;
		return TEE_ERROR_SHORT_BUFFER;
	}
	res = check_output(&params[1]);
	if (res != TEE_SUCCESS)
		return res;

	if (t0 == TEE_PARAM_TYPE_MEMREF_INPUT)
		TEE_MemMove(taps_buf, params[0].memref.buffer, TAP_BYTES);
	taps_loaded = 0; /* the taps are consumed by this run, whatever its outcome */

	for (i = 0, at = 0; i < MIRRORNET_CPM_NUM_TAPS; i++) {
		taps[i] = taps_buf + at;
		at += tap_sizes[i];
	}
	start = clock_ns();
	if (mirrornet_cpm_run(taps, logits_buf) != 0)
		return TEE_ERROR_GENERIC;
	elapsed = clock_ns() - start;
	runs++;
	cpm_ns_total += elapsed;

	write_output(params[1].memref.buffer);
	params[1].memref.size = OUTPUT_BYTES;
	if (t2 == TEE_PARAM_TYPE_VALUE_OUTPUT) {
		params[2].value.a = (uint32_t)elapsed;
		params[2].value.b = (uint32_t)(elapsed >> 32);
	}
	return TEE_SUCCESS;
}

/* HEAP_STATS: the TA heap's bytes in use, peak, size and failed allocations (libutils' statistics). */
static TEE_Result cmd_heap_stats(uint32_t types, TEE_Param params[4])
{
	struct pta_stats_alloc stats;

	if (types != TEE_PARAM_TYPES(TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_VALUE_OUTPUT,
				     TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE))
		return TEE_ERROR_BAD_PARAMETERS;
	TEE_MemFill(&stats, 0, sizeof(stats));
	malloc_get_stats(&stats);
	params[0].value.a = stats.allocated;
	params[0].value.b = stats.max_allocated;
	params[1].value.a = stats.size;
	params[1].value.b = stats.num_alloc_fail;
	return TEE_SUCCESS;
}

/* ---- entry points -------------------------------------------------------------------------------- */
TEE_Result TA_CreateEntryPoint(void)
{
	return TEE_SUCCESS;
}

void TA_DestroyEntryPoint(void)
{
}

TEE_Result TA_OpenSessionEntryPoint(uint32_t types, TEE_Param params[4], void **session)
{
	(void)params;
	if (types != TEE_PARAM_TYPES(TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE,
				     TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE))
		return TEE_ERROR_BAD_PARAMETERS;
	*session = NULL;
	taps_loaded = 0;
	runs = 0;
	cpm_ns_total = 0;
	return TEE_SUCCESS;
}

void TA_CloseSessionEntryPoint(void *session)
{
	(void)session;
	TEE_MemFill(taps_buf, 0, sizeof(taps_buf));
	TEE_MemFill(logits_buf, 0, sizeof(logits_buf));
	taps_loaded = 0;
}

TEE_Result TA_InvokeCommandEntryPoint(void *session, uint32_t cmd, uint32_t types,
				      TEE_Param params[4])
{
	(void)session;
	switch (cmd) {
	case MIRRORNET_TA_CMD_GET_INFO:
		return cmd_get_info(types, params);
	case MIRRORNET_TA_CMD_RUN_CPM:
		return cmd_run_cpm(types, params);
	case MIRRORNET_TA_CMD_LOAD_TAPS:
		return cmd_load_taps(types, params);
	case MIRRORNET_TA_CMD_HEAP_STATS:
		return cmd_heap_stats(types, params);
	default:
		return TEE_ERROR_NOT_SUPPORTED;
	}
}
