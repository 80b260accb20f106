/*
 * tee_internal_api.h: the subset of the GlobalPlatform TEE Internal Core API that the host TEE
 * simulator offers to a trusted application compiled for the host (values from GP TEE Internal Core
 * API 1.3, names and types as in OP-TEE's libutee, so the same TA source builds against both).
 *
 * It is a simulation for development and tests: it does not reproduce OP-TEE's isolation. The TA host
 * process (ta_host.c) enforces TA_DATA_SIZE (every TEE_Malloc/malloc of the TA comes from a pool of
 * that size) and TA_STACK_SIZE (the entry points run on a stack of that size above a guard page).
 */
#ifndef TEE_INTERNAL_API_H
#define TEE_INTERNAL_API_H

#include <stddef.h>
#include <stdint.h>

#define MIRRORNET_TEE_SIM 1

#ifdef __cplusplus
extern "C" {
#endif

typedef uint32_t TEE_Result;

/* Return codes */
#define TEE_SUCCESS                  0x00000000u
#define TEE_ERROR_CORRUPT_OBJECT     0xF0100001u
#define TEE_ERROR_GENERIC            0xFFFF0000u
#define TEE_ERROR_ACCESS_DENIED      0xFFFF0001u
#define TEE_ERROR_CANCEL             0xFFFF0002u
#define TEE_ERROR_ACCESS_CONFLICT    0xFFFF0003u
#define TEE_ERROR_EXCESS_DATA        0xFFFF0004u
#define TEE_ERROR_BAD_FORMAT         0xFFFF0005u
#define TEE_ERROR_BAD_PARAMETERS     0xFFFF0006u
#define TEE_ERROR_BAD_STATE          0xFFFF0007u
#define TEE_ERROR_ITEM_NOT_FOUND     0xFFFF0008u
#define TEE_ERROR_NOT_IMPLEMENTED    0xFFFF0009u
#define TEE_ERROR_NOT_SUPPORTED      0xFFFF000Au
#define TEE_ERROR_NO_DATA            0xFFFF000Bu
#define TEE_ERROR_OUT_OF_MEMORY      0xFFFF000Cu
#define TEE_ERROR_BUSY               0xFFFF000Du
#define TEE_ERROR_COMMUNICATION      0xFFFF000Eu
#define TEE_ERROR_SECURITY           0xFFFF000Fu
#define TEE_ERROR_SHORT_BUFFER       0xFFFF0010u
#define TEE_ERROR_EXTERNAL_CANCEL    0xFFFF0011u
#define TEE_ERROR_OVERFLOW           0xFFFF300Fu
#define TEE_ERROR_TARGET_DEAD        0xFFFF3024u
#define TEE_ERROR_STORAGE_NO_SPACE   0xFFFF3041u

/* Parameter types */
#define TEE_PARAM_TYPE_NONE          0u
#define TEE_PARAM_TYPE_VALUE_INPUT   1u
#define TEE_PARAM_TYPE_VALUE_OUTPUT  2u
#define TEE_PARAM_TYPE_VALUE_INOUT   3u
#define TEE_PARAM_TYPE_MEMREF_INPUT  5u
#define TEE_PARAM_TYPE_MEMREF_OUTPUT 6u
#define TEE_PARAM_TYPE_MEMREF_INOUT  7u

#define TEE_NUM_PARAMS 4
#define TEE_PARAM_TYPES(t0, t1, t2, t3) \
	((uint32_t)(t0) | ((uint32_t)(t1) << 4) | ((uint32_t)(t2) << 8) | ((uint32_t)(t3) << 12))
#define TEE_PARAM_TYPE_GET(t, i) ((((uint32_t)(t)) >> ((i) * 4)) & 0xFu)

/* Memory access rights (TEE_CheckMemoryAccessRights) */
#define TEE_MEMORY_ACCESS_READ       0x00000001u
#define TEE_MEMORY_ACCESS_WRITE      0x00000002u
#define TEE_MEMORY_ACCESS_ANY_OWNER  0x00000004u

/* TEE_Malloc hints */
#define TEE_MALLOC_FILL_ZERO           0x00000000u
#define TEE_MALLOC_NO_FILL             0x00000001u
#define TEE_MALLOC_NO_SHARE            0x00000002u
#define TEE_USER_MEM_HINT_NO_FILL_ZERO 0x80000000u

/* Origin codes */
#define TEE_ORIGIN_API          0x00000001u
#define TEE_ORIGIN_COMMS        0x00000002u
#define TEE_ORIGIN_TEE          0x00000003u
#define TEE_ORIGIN_TRUSTED_APP  0x00000004u

typedef union {
	struct {
		void *buffer;
		size_t size;
	} memref;
	struct {
		uint32_t a;
		uint32_t b;
	} value;
} TEE_Param;

typedef struct {
	uint32_t seconds;
	uint32_t millis;
} TEE_Time;

typedef struct {
	uint32_t timeLow;
	uint16_t timeMid;
	uint16_t timeHiAndVersion;
	uint8_t clockSeqAndNode[8];
} TEE_UUID;

/* Entry points the TA implements */
TEE_Result TA_CreateEntryPoint(void);
void TA_DestroyEntryPoint(void);
TEE_Result TA_OpenSessionEntryPoint(uint32_t paramTypes, TEE_Param params[TEE_NUM_PARAMS],
				    void **sessionContext);
void TA_CloseSessionEntryPoint(void *sessionContext);
TEE_Result TA_InvokeCommandEntryPoint(void *sessionContext, uint32_t commandID,
				      uint32_t paramTypes, TEE_Param params[TEE_NUM_PARAMS]);

/* Memory management */
void *TEE_Malloc(size_t size, uint32_t hint);
void *TEE_Realloc(void *buffer, size_t newSize);
void TEE_Free(void *buffer);
void *TEE_MemMove(void *dest, const void *src, size_t size);
int32_t TEE_MemCompare(const void *buffer1, const void *buffer2, size_t size);
void *TEE_MemFill(void *buffer, uint32_t x, size_t size);
TEE_Result TEE_CheckMemoryAccessRights(uint32_t accessFlags, void *buffer, size_t size);

/* Panics end the TA instance: its sessions answer TEE_ERROR_TARGET_DEAD from then on. */
void TEE_Panic(TEE_Result panicCode) __attribute__((noreturn));

/* Time */
void TEE_GetSystemTime(TEE_Time *time);
void TEE_GetREETime(TEE_Time *time);

/* Simulator extension (not GP API): a monotonic clock in nanoseconds. */
uint64_t tee_sim_clock_ns(void);

/*
 * libutils' heap statistics, as OP-TEE's <malloc.h> declares them when built with CFG_WITH_STATS
 * (struct pta_stats_alloc as in <pta_stats.h>); the simulator keeps them for its TA heap.
 */
#define TEE_ALLOCATOR_DESC_LENGTH 32
struct pta_stats_alloc {
	char desc[TEE_ALLOCATOR_DESC_LENGTH];
	uint32_t allocated;               /* bytes currently allocated */
	uint32_t max_allocated;           /* peak of allocated */
	uint32_t size;                    /* size of the heap */
	uint32_t num_alloc_fail;          /* failed allocation requests */
	uint32_t biggest_alloc_fail;      /* size of the biggest failed request */
	uint32_t biggest_alloc_fail_used; /* bytes allocated when it failed */
};
void malloc_get_stats(struct pta_stats_alloc *stats);
void malloc_reset_stats(void);

#ifdef __cplusplus
}
#endif

#endif /* TEE_INTERNAL_API_H */
