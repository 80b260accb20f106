/*
 * tee_internal_api_extensions.h: OP-TEE's extensions header, as the host TEE simulator sees it.
 * TAs written for OP-TEE often include it; the simulator offers none of its functions beyond the
 * GP API in tee_internal_api.h.
 */
#ifndef TEE_INTERNAL_API_EXTENSIONS_H
#define TEE_INTERNAL_API_EXTENSIONS_H
#include <tee_internal_api.h>
#endif
