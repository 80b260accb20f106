/*
 * string.h as a trusted application sees it (OP-TEE's libutils offers these; the host TEE simulator
 * builds TA code with -nostdinc against this folder so the TA cannot use anything else by accident).
 */
#ifndef MIRRORNET_TA_STRING_H
#define MIRRORNET_TA_STRING_H
#include <stddef.h>
void *memcpy(void *dest, const void *src, size_t n);
void *memmove(void *dest, const void *src, size_t n);
void *memset(void *s, int c, size_t n);
int memcmp(const void *s1, const void *s2, size_t n);
void *memchr(const void *s, int c, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t maxlen);
int strcmp(const char *s1, const char *s2);
int strncmp(const char *s1, const char *s2, size_t n);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);
#endif
