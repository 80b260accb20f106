/*
 * tee_sim_internal.h: what the TA host process (ta_host.c) and the fuzz harness tell the GP API shim
 * (tee_api.c): the TA heap pool and the memory regions shared with the client for the current call.
 */
#ifndef TEE_SIM_INTERNAL_H
#define TEE_SIM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

struct tee_sim_region {
	const void *start;
	size_t size;
	uint32_t access; /* TEE_MEMORY_ACCESS_READ | TEE_MEMORY_ACCESS_WRITE */
};

/* The TA heap: every TEE_Malloc (and malloc of TA code) is served from this pool. */
void tee_sim_heap_init(void *pool, size_t size);
size_t tee_sim_heap_peak(void);

/* Shared-memory regions of the call being served (at most 4); n = 0 clears them. */
void tee_sim_set_shared_regions(const struct tee_sim_region *regions, int n);

/* Write a message to stderr without using more than a few bytes of stack. */
void tee_sim_log(const char *what, const char *detail, uint64_t number);

/* malloc family for TA code: package-ta renames the TA objects' malloc/calloc/realloc/free to these
 * (objcopy --redefine-sym), so TA allocations count against TA_DATA_SIZE as in OP-TEE's libutils. */
void *tee_sim_ta_malloc(size_t size);
void *tee_sim_ta_calloc(size_t n, size_t size);
void *tee_sim_ta_realloc(void *p, size_t size);
void tee_sim_ta_free(void *p);

#endif /* TEE_SIM_INTERNAL_H */
