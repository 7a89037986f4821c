/*
 * event_encode.h - laying out and writing an event (lib-internal).
 */
#ifndef SHMBUS_LIB_EVENT_ENCODE_H
#define SHMBUS_LIB_EVENT_ENCODE_H

#include "internal.h"

struct event_layout {
	const char *str[SEG_EVENT_STRINGS];
	uint8_t len[SEG_EVENT_STRINGS];
	uint32_t strings_len;
	uint32_t payload_off;
	uint32_t size;
	uint16_t lib_flags; /* SUCCESS/FAILURE set by the response helper */
	uint64_t source_hash; /* precomputed (the publisher's default), or 0 */
};

/* Validate msg (limits of shmbus.h) and compute the event's layout. */
int event_layout(const shmbus_msg_t *msg, const char *default_source, size_t default_source_len, size_t payload_len,
		 uint32_t max_payload, struct event_layout *lay);

/* Write everything but the payload bytes. */
void event_write(struct seg_event *ev, const shmbus_msg_t *msg, const struct event_layout *lay, size_t payload_len,
		 uint64_t seq, const shmbus_uuid_t *id, uint64_t now_ns);

#endif
