/*
 * tee_api.c: the host TEE simulator's GlobalPlatform Internal Core API shim.
 *
 * Memory: TEE_Malloc and friends are served from one pool of TA_DATA_SIZE bytes (tee_sim_heap_init),
 * first fit with coalescing, 16-byte aligned, so a TA that needs more heap than it declares fails here
 * as it would in OP-TEE (NULL from TEE_Malloc). TEE_CheckMemoryAccessRights knows the shared-memory
 * regions of the current call and checks the requested rights against them.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tee_internal_api.h>

#include "tee_sim_internal.h"

/* ---- logging without stdio (the TA stack is small) ------------------------------------------ */
static size_t put_str(char *out, size_t at, size_t cap, const char *s)
{
	while (s && *s && at + 1 < cap)
		out[at++] = *s++;
	return at;
}

void tee_sim_log(const char *what, const char *detail, uint64_t number)
{
	char line[256];
	char hex[19] = "0x";
	size_t at = 0;
	int i;

	for (i = 0; i < 16; i++)
		hex[2 + i] = "0123456789abcdef"[(number >> (60 - 4 * i)) & 0xf];
	hex[18] = '\0';
	at = put_str(line, at, sizeof(line), "mirrornet TA (simulated): ");
	at = put_str(line, at, sizeof(line), what);
	if (detail) {
		at = put_str(line, at, sizeof(line), " ");
		at = put_str(line, at, sizeof(line), detail);
	}
	at = put_str(line, at, sizeof(line), " ");
	at = put_str(line, at, sizeof(line), hex);
	line[at++] = '\n';
	if (write(STDERR_FILENO, line, at) < 0) {
		/* nothing else to do */
	}
}

/* ---- heap ---------------------------------------------------------------------------------------- */
#define ALIGN 16u

struct block {
	size_t size;  /* payload bytes, multiple of ALIGN */
	size_t used;  /* 0 or 1 */
};

_Static_assert(sizeof(struct block) % ALIGN == 0, "block header must keep payloads aligned");

static uint8_t *heap_start;
static size_t heap_size;
static size_t heap_in_use;
static size_t heap_peak;
static uint32_t alloc_fails, biggest_fail, biggest_fail_used;
static uint8_t zero_size_block[ALIGN] __attribute__((aligned(ALIGN)));

void tee_sim_heap_init(void *pool, size_t size)
{
	uintptr_t p = ((uintptr_t)pool + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
	struct block *b;

	size -= (size_t)(p - (uintptr_t)pool);
	size &= ~(size_t)(ALIGN - 1);
	heap_start = (uint8_t *)p;
	heap_size = size;
	heap_in_use = 0;
	heap_peak = 0;
	alloc_fails = biggest_fail = biggest_fail_used = 0;
	if (size < sizeof(struct block) + ALIGN) {
		heap_size = 0;
		return;
	}
	b = (struct block *)heap_start;
	b->size = size - sizeof(struct block);
	b->used = 0;
}

size_t tee_sim_heap_peak(void)
{
	return heap_peak;
}

/* libutils' heap statistics (OP-TEE with CFG_WITH_STATS), for this TA heap. */
void malloc_get_stats(struct pta_stats_alloc *stats)
{
	memset(stats, 0, sizeof(*stats));
	strncpy(stats->desc, "TA heap (host TEE simulator)", sizeof(stats->desc) - 1);
	stats->allocated = (uint32_t)heap_in_use;
	stats->max_allocated = (uint32_t)heap_peak;
	stats->size = (uint32_t)heap_size;
	stats->num_alloc_fail = alloc_fails;
	stats->biggest_alloc_fail = biggest_fail;
	stats->biggest_alloc_fail_used = biggest_fail_used;
}

void malloc_reset_stats(void)
{
	heap_peak = heap_in_use;
	alloc_fails = biggest_fail = biggest_fail_used = 0;
}

static void *count_failure(size_t size)
{
	alloc_fails++;
	if (size > biggest_fail) {
		biggest_fail = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
		biggest_fail_used = (uint32_t)heap_in_use;
	}
	return NULL;
}

static struct block *next_block(struct block *b)
{
	uint8_t *n = (uint8_t *)(b + 1) + b->size;

	return n < heap_start + heap_size ? (struct block *)n : NULL;
}

static void *heap_alloc(size_t size)
{
	struct block *b;

	if (size == 0)
		return zero_size_block;
	if (size > heap_size)
		return count_failure(size);
	size = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
	for (b = heap_size ? (struct block *)heap_start : NULL; b; b = next_block(b)) {
		struct block *n;

		if (b->used)
			continue;
		/* Coalesce the free blocks that follow. */
		while ((n = next_block(b)) && !n->used)
			b->size += sizeof(struct block) + n->size;
		if (b->size < size)
			continue;
		if (b->size >= size + sizeof(struct block) + ALIGN) {
			n = (struct block *)((uint8_t *)(b + 1) + size);
			n->size = b->size - size - sizeof(struct block);
			n->used = 0;
			b->size = size;
		}
		b->used = 1;
		heap_in_use += b->size + sizeof(struct block);
		if (heap_in_use > heap_peak)
			heap_peak = heap_in_use;
		return b + 1;
	}
	return count_failure(size);
}

static struct block *owner_block(void *p)
{
	uint8_t *q = p;

	if (!p || p == zero_size_block)
		return NULL;
	if (q < heap_start + sizeof(struct block) || q >= heap_start + heap_size ||
	    ((uintptr_t)q - (uintptr_t)heap_start) % ALIGN)
		TEE_Panic(TEE_ERROR_BAD_PARAMETERS); /* not a heap pointer: OP-TEE panics too */
	return (struct block *)q - 1;
}

static void heap_free(void *p)
{
	struct block *b = owner_block(p);

	if (!b)
		return;
	if (!b->used)
		TEE_Panic(TEE_ERROR_BAD_STATE); /* double free */
	b->used = 0;
	heap_in_use -= b->size + sizeof(struct block);
}

void *TEE_Malloc(size_t size, uint32_t hint)
{
	void *p = heap_alloc(size);

	if (p && size && !(hint & (TEE_MALLOC_NO_FILL | TEE_USER_MEM_HINT_NO_FILL_ZERO)))
		memset(p, 0, size);
	return p;
}

void *TEE_Realloc(void *buffer, size_t new_size)
{
	struct block *b = owner_block(buffer);
	void *p;

	if (!b)
		return heap_alloc(new_size);
	if (new_size <= b->size)
		return buffer;
	p = heap_alloc(new_size);
	if (!p)
		return NULL;
	memcpy(p, buffer, b->size);
	heap_free(buffer);
	return p;
}

void TEE_Free(void *buffer)
{
	heap_free(buffer);
}

void *tee_sim_ta_malloc(size_t size)
{
	return heap_alloc(size);
}

void *tee_sim_ta_calloc(size_t n, size_t size)
{
	void *p;

	if (size && n > SIZE_MAX / size)
		return NULL;
	p = heap_alloc(n * size);
	if (p && n && size)
		memset(p, 0, n * size);
	return p;
}

void *tee_sim_ta_realloc(void *p, size_t size)
{
	return TEE_Realloc(p, size);
}

void tee_sim_ta_free(void *p)
{
	heap_free(p);
}

/* ---- memory helpers ------------------------------------------------------------------------------ */
void *TEE_MemMove(void *dest, const void *src, size_t size)
{
	return memmove(dest, src, size);
}

int32_t TEE_MemCompare(const void *buffer1, const void *buffer2, size_t size)
{
	int r = memcmp(buffer1, buffer2, size);

	return r < 0 ? -1 : r > 0 ? 1 : 0;
}

void *TEE_MemFill(void *buffer, uint32_t x, size_t size)
{
	return memset(buffer, (int)(uint8_t)x, size);
}

/* ---- access rights ----------------------------------------------------------------------------- */
static struct tee_sim_region regions[4];
static int num_regions;

void tee_sim_set_shared_regions(const struct tee_sim_region *r, int n)
{
	int i;

	num_regions = 0;
	for (i = 0; i < n && i < 4; i++)
		regions[num_regions++] = r[i];
}

TEE_Result TEE_CheckMemoryAccessRights(uint32_t flags, void *buffer, size_t size)
{
	uintptr_t start = (uintptr_t)buffer;
	uint32_t want = flags & (TEE_MEMORY_ACCESS_READ | TEE_MEMORY_ACCESS_WRITE);
	int i;

	if (flags & ~(TEE_MEMORY_ACCESS_READ | TEE_MEMORY_ACCESS_WRITE | TEE_MEMORY_ACCESS_ANY_OWNER))
		return TEE_ERROR_ACCESS_DENIED;
	if (!buffer || start + size < start)
		return TEE_ERROR_ACCESS_DENIED;
	for (i = 0; i < num_regions; i++) {
		uintptr_t rs = (uintptr_t)regions[i].start, re = rs + regions[i].size;

		if (start >= rs && start + size <= re) {
			if (!(flags & TEE_MEMORY_ACCESS_ANY_OWNER))
				return TEE_ERROR_ACCESS_DENIED; /* shared, but the TA asked for private */
			return (regions[i].access & want) == want ? TEE_SUCCESS : TEE_ERROR_ACCESS_DENIED;
		}
		if (start < re && start + size > rs)
			return TEE_ERROR_ACCESS_DENIED; /* straddles a shared region's edge */
	}
	/* Not shared memory: the simulator cannot tell valid TA memory apart, so it accepts it. */
	return TEE_SUCCESS;
}

/* ---- panic and time ---------------------------------------------------------------------------- */
void TEE_Panic(TEE_Result code)
{
	tee_sim_log("TEE_Panic", NULL, code);
	_exit(101);
}

uint64_t tee_sim_clock_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void TEE_GetSystemTime(TEE_Time *t)
{
	uint64_t ns = tee_sim_clock_ns();

	t->seconds = (uint32_t)(ns / 1000000000u);
	t->millis = (uint32_t)((ns / 1000000u) % 1000u);
}

void TEE_GetREETime(TEE_Time *t)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	t->seconds = (uint32_t)ts.tv_sec;
	t->millis = (uint32_t)(ts.tv_nsec / 1000000);
}
