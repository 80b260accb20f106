/*
 * tee_sim_protocol.h: the wire format between the simulator's libteec (src/libteec_sim) and a TA host
 * process (src/tee_sim/ta_host.c): one AF_UNIX stream socket per session and, when both ends agree, a
 * shared area with a futex word that carries the requests that fit in it.
 *
 * Request:  struct tee_sim_request, then for each MEMREF_INPUT/INOUT parameter with a buffer, its
 *           `size` bytes, in parameter order.
 * Reply:    struct tee_sim_reply, then for each MEMREF_OUTPUT/INOUT parameter with a buffer,
 *           min(size in the reply, size in the request) bytes, in parameter order.
 * Parameter types on the wire are the TA's (TEE_PARAM_TYPE_*): the client library resolves TEEC's
 * registered-memory variants into plain memrefs. Both ends run on the same host: native byte order.
 *
 * The shared area (the fast path). The client offers it in OPEN_SESSION (request.reserved =
 * TEE_SIM_OFFER_AREA): a sealed memfd, fd TEE_SIM_AREA_FD in the TA process, laid out as struct
 * tee_sim_area_head followed by the data bytes (the rest of the file). A TA host that maps it answers
 * reply.reserved = TEE_SIM_ACCEPT_AREA (a host that does not know the offer leaves it 0, and the session
 * keeps to the socket). From then on the head's `state` word is the doorbell for every request:
 *   IDLE|REPLY -> REQUEST  the client wrote a request (same layout as on the socket) at the start of
 *                          the data;
 *   REQUEST -> REPLY       the TA host wrote its reply (same layout) there;
 *   IDLE|REPLY -> SOCKET   the request does not fit: it follows on the socket, and the reply comes back
 *                          there (the TA host sets IDLE when it takes the request);
 *   any -> DEAD            the TA process crashed (its fault handler says so before it dies).
 * Each side waits with FUTEX_WAIT in bounded slices and checks the socket for the peer's end between
 * them, so neither waits on the word of a process that is gone. A sleeper marks the word
 * (TEE_SIM_AREA_WAITER), and only a marked word costs its changer a FUTEX_WAKE.
 */
#ifndef TEE_SIM_PROTOCOL_H
#define TEE_SIM_PROTOCOL_H

#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TEE_SIM_MAGIC      0x4d495354u /* "TSIM" */
#define TEE_SIM_VERSION    1u

#define TEE_SIM_OPEN_SESSION   1u
#define TEE_SIM_INVOKE         2u
#define TEE_SIM_CLOSE_SESSION  3u

/* The shared area */
#define TEE_SIM_AREA_FD        4   /* its descriptor in the TA process, when offered */
#define TEE_SIM_OFFER_AREA     1u  /* tee_sim_request.reserved of OPEN_SESSION */
#define TEE_SIM_ACCEPT_AREA    1u  /* tee_sim_reply.reserved of OPEN_SESSION's reply */
#define TEE_SIM_AREA_MAGIC     0x41455241u /* "AREA" */

#define TEE_SIM_AREA_IDLE      0u
#define TEE_SIM_AREA_REQUEST   1u
#define TEE_SIM_AREA_SOCKET    2u
#define TEE_SIM_AREA_REPLY     3u
#define TEE_SIM_AREA_DEAD      4u

struct tee_sim_area_head {
	uint32_t state;     /* the futex word */
	uint32_t magic;     /* TEE_SIM_AREA_MAGIC, written by the client */
	uint8_t pad[56];    /* the data starts on its own cache line */
};

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

/* The area's state word, shared between two processes (so not FUTEX_PRIVATE_FLAG). A side about to
 * sleep on it sets TEE_SIM_AREA_WAITER; the side that changes the state wakes it only then, so a
 * hand-over to a peer that has not gone to sleep costs no system call. */
#define TEE_SIM_AREA_WAITER 0x80000000u

static inline uint32_t tee_sim_area_state(const struct tee_sim_area_head *h)
{
	return __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) & ~TEE_SIM_AREA_WAITER;
}

static inline void tee_sim_area_post(struct tee_sim_area_head *h, uint32_t state)
{
	if (__atomic_exchange_n(&h->state, state, __ATOMIC_ACQ_REL) & TEE_SIM_AREA_WAITER)
		syscall(SYS_futex, &h->state, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Sleep while the state is `seen` (as tee_sim_area_state read it), at most timeout_ms. 1 if the time ran
 * out, else 0 (woken, the state had already changed, or a signal: the caller looks at the state again
 * either way). */
static inline int tee_sim_area_wait(struct tee_sim_area_head *h, uint32_t seen, int timeout_ms)
{
	struct timespec ts = { .tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000L };
	uint32_t v = seen;

	if (!__atomic_compare_exchange_n(&h->state, &v, seen | TEE_SIM_AREA_WAITER, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE) && v != (seen | TEE_SIM_AREA_WAITER))
		return 0; /* the state changed meanwhile */
	if (syscall(SYS_futex, &h->state, FUTEX_WAIT, seen | TEE_SIM_AREA_WAITER, &ts, NULL, 0) != 0 &&
	    errno == ETIMEDOUT)
		return 1;
	return 0;
}

#endif /* TEE_SIM_PROTOCOL_H */
