/*
 * user_ta_header_defines.h: the properties OP-TEE reads from the MirrorNet CPM TA's header.
 *
 * TA_STACK_SIZE and TA_DATA_SIZE come from mirrornet_ta_config.h, which `mirrornet package-ta`
 * generates from the build folder's manifest (the CPM keeps every intermediate in a static arena, so
 * the heap only serves the TA runtime itself).
 */
#ifndef USER_TA_HEADER_DEFINES_H
#define USER_TA_HEADER_DEFINES_H

#include <mirrornet_ta.h>
#include <mirrornet_ta_config.h>

#define TA_UUID TA_MIRRORNET_UUID

/* No TA_FLAG_SINGLE_INSTANCE: every session gets its own instance, hence its own loaded taps. */
#define TA_FLAGS 0

#define TA_STACK_SIZE MIRRORNET_TA_STACK_SIZE
#define TA_DATA_SIZE  MIRRORNET_TA_DATA_SIZE

#define TA_VERSION "1.0"
#define TA_DESCRIPTION "MirrorNet Companion Partial Monitor (CPM)"

#endif /* USER_TA_HEADER_DEFINES_H */
