/*
 * stdlib.h as a trusted application sees it (the part of OP-TEE's libutils a CPM could use). In the
 * host TEE simulator malloc and friends are served from the TA heap of TA_DATA_SIZE bytes.
 */
#ifndef MIRRORNET_TA_STDLIB_H
#define MIRRORNET_TA_STDLIB_H
#include <stddef.h>
void *malloc(size_t size);
void *calloc(size_t nmemb, size_t size);
void *realloc(void *ptr, size_t size);
void free(void *ptr);
int abs(int j);
void qsort(void *base, size_t nmemb, size_t size, int (*compar)(const void *, const void *));
#endif
