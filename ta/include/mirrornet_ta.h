/*
 * mirrornet_ta.h: the contract between the MirrorNet CPM trusted application and its clients.
 *
 * This header is the one place where the UUID, the command IDs and the parameter layout of every
 * command are defined. It is included by the TA (ta/mirrornet_ta.c), by the C client (src/client) and
 * parsed by the Python client (mirrornet_tvm.tee.abi). Keep it plain: #define constants and one struct.
 *
 * All integers are little-endian (both worlds run on the same CPU). "taps" are the backbone's tapped
 * feature maps, float32, concatenated in strategy order (MIRRORNET_CPM_TAP_SIZES in mirrornet_cpm.h).
 *
 * Commands (param[i] types are TEE_PARAM_TYPE_* on the TA side, TEEC_* on the client side):
 *
 *   MIRRORNET_TA_CMD_GET_INFO
 *     param[0] MEMREF_OUTPUT  struct mirrornet_ta_info (MIRRORNET_TA_INFO_BYTES bytes)
 *     param[1..3] NONE
 *     -> TEE_ERROR_SHORT_BUFFER with param[0].size = MIRRORNET_TA_INFO_BYTES if the buffer is smaller.
 *
 *   MIRRORNET_TA_CMD_RUN_CPM (one invoke per inference)
 *     param[0] MEMREF_INPUT   all taps, exactly tap_floats * 4 bytes, at most max_invoke_bytes;
 *              or NONE        run on the taps loaded by LOAD_TAPS (all tap bytes must have been loaded)
 *     param[1] MEMREF_OUTPUT  the result, output_bytes bytes (see the output policies below)
 *     param[2] VALUE_OUTPUT   a = CPM time in ns (low 32 bits), b = high 32 bits; or NONE
 *     param[3] NONE
 *     -> TEE_ERROR_SHORT_BUFFER with param[1].size = output_bytes if the output buffer is smaller;
 *        TEE_ERROR_BAD_STATE if param[0] is NONE and the loaded taps are incomplete.
 *
 *   MIRRORNET_TA_CMD_LOAD_TAPS (for taps larger than max_invoke_bytes: load in chunks, then RUN_CPM)
 *     param[0] MEMREF_INPUT   one chunk, 1 .. max_invoke_bytes bytes
 *     param[1] VALUE_INPUT    a = byte offset of the chunk, b = total tap bytes (tap_floats * 4)
 *     param[2..3] NONE
 *     Chunks must arrive in order: offset 0 starts a new set of taps, any other offset must equal the
 *     number of bytes loaded so far (else TEE_ERROR_BAD_STATE). RUN_CPM consumes the loaded taps.
 *
 *   MIRRORNET_TA_CMD_HEAP_STATS (debugging: the TA heap as OP-TEE's libutils counts it)
 *     param[0] VALUE_OUTPUT   a = heap bytes in use now, b = peak bytes in use (since the TA started)
 *     param[1] VALUE_OUTPUT   a = heap size (TA_DATA_SIZE less the allocator's own), b = failed allocations
 *     param[2..3] NONE
 *
 * Output policies (fixed when the TA is built; GET_INFO reports which):
 *   LOGITS  output = num_classes float32, the rectified logits
 *   PROBS   output = num_classes float32, softmax of the rectified logits
 *   LABEL   output = one int32, the index of the largest logit (lowest index on ties)
 */
#ifndef MIRRORNET_TA_H
#define MIRRORNET_TA_H

#include <stdint.h>

/* bdded61c-55d9-40e7-9d6d-660e27e7486a */
#define TA_MIRRORNET_UUID \
	{ 0xbdded61c, 0x55d9, 0x40e7, \
		{ 0x9d, 0x6d, 0x66, 0x0e, 0x27, 0xe7, 0x48, 0x6a } }
#define MIRRORNET_TA_UUID_STRING "bdded61c-55d9-40e7-9d6d-660e27e7486a"

#define MIRRORNET_TA_CMD_GET_INFO   0
#define MIRRORNET_TA_CMD_RUN_CPM    1
#define MIRRORNET_TA_CMD_LOAD_TAPS  2
#define MIRRORNET_TA_CMD_HEAP_STATS 3

#define MIRRORNET_TA_POLICY_LOGITS  0
#define MIRRORNET_TA_POLICY_PROBS   1
#define MIRRORNET_TA_POLICY_LABEL   2

#define MIRRORNET_TA_INFO_MAGIC     0x41544e4du /* "MNTA" */
#define MIRRORNET_TA_ABI_VERSION    1
#define MIRRORNET_TA_MAX_TAPS       16
#define MIRRORNET_TA_INFO_BYTES     192

/* GET_INFO's answer: MIRRORNET_TA_INFO_BYTES bytes at fixed offsets, no implicit padding. */
struct mirrornet_ta_info {
	uint32_t magic;                /*   0 MIRRORNET_TA_INFO_MAGIC */
	uint32_t abi_version;          /*   4 MIRRORNET_TA_ABI_VERSION */
	uint32_t policy;               /*   8 MIRRORNET_TA_POLICY_* */
	uint32_t num_taps;             /*  12 */
	uint32_t tap_floats;           /*  16 sum of tap_sizes */
	uint32_t num_classes;          /*  20 */
	uint32_t output_bytes;         /*  24 bytes RUN_CPM writes to param[1] */
	uint32_t max_invoke_bytes;     /*  28 largest memref the TA accepts in one invoke */
	uint32_t arena_bytes;          /*  32 MIRRORNET_CPM_ARENA_BYTES */
	uint32_t weight_bytes;         /*  36 MIRRORNET_CPM_WEIGHT_BYTES */
	uint32_t clock_resolution_ns;  /*  40 resolution of the TA's CPM timer */
	uint32_t runs;                 /*  44 CPM runs in this session */
	uint64_t cpm_ns_total;         /*  48 total CPM time in this session */
	uint32_t tap_sizes[MIRRORNET_TA_MAX_TAPS]; /* 56 floats per tap, strategy order */
	char source_sha256[72];        /* 120 MIRRORNET_CPM_SOURCE_SHA256, NUL-padded */
};

#endif /* MIRRORNET_TA_H */
