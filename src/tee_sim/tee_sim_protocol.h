/*
 * tee_sim_protocol.h: the wire format between the simulator's libteec (src/libteec_sim) and a TA host
 * process (src/tee_sim/ta_host.c), over one AF_UNIX stream socket per session.
 *
 * Request:  struct tee_sim_request, then for each MEMREF_INPUT/INOUT parameter with a buffer, its
 *           `size` bytes, in parameter order.
 * Reply:    struct tee_sim_reply, then for each MEMREF_OUTPUT/INOUT parameter with a buffer,
 *           min(size in the reply, size in the request) bytes, in parameter order.
 * Parameter types on the wire are the TA's (TEE_PARAM_TYPE_*): the client library resolves TEEC's
 * registered-memory variants into plain memrefs. Both ends run on the same host: native byte order.
 */
#ifndef TEE_SIM_PROTOCOL_H
#define TEE_SIM_PROTOCOL_H

#include <stdint.h>

#define TEE_SIM_MAGIC      0x4d495354u /* "TSIM" */
#define TEE_SIM_VERSION    1u

#define TEE_SIM_OPEN_SESSION   1u
#define TEE_SIM_INVOKE         2u
#define TEE_SIM_CLOSE_SESSION  3u

/* Largest memref the simulator carries (OP-TEE's own shared-memory pool is smaller still). */
#define TEE_SIM_MAX_MEMREF (64u << 20)

/* tee_sim_param.flags */
#define TEE_SIM_PARAM_NULL 1u /* memref with a NULL buffer (size only) */

struct tee_sim_param {
	uint64_t a_or_size; /* value.a, or memref size */
	uint32_t b;         /* value.b */
	uint32_t flags;
};

struct tee_sim_request {
	uint32_t magic;
	uint32_t version;
	uint32_t kind;
	uint32_t cmd;
	uint32_t param_types;
	uint32_t reserved;
	struct tee_sim_param params[4];
};

struct tee_sim_reply {
	uint32_t magic;
	uint32_t result;
	uint32_t origin;
	uint32_t reserved;
	struct tee_sim_param params[4];
};

static inline int tee_sim_is_memref(uint32_t t)
{
	return t == 5u || t == 6u || t == 7u;
}

static inline int tee_sim_is_value(uint32_t t)
{
	return t == 1u || t == 2u || t == 3u;
}

static inline int tee_sim_carries_in(uint32_t t)
{
	return t == 1u || t == 3u || t == 5u || t == 7u;
}

static inline int tee_sim_carries_out(uint32_t t)
{
	return t == 2u || t == 3u || t == 6u || t == 7u;
}

#endif /* TEE_SIM_PROTOCOL_H */
