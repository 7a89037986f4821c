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
	bool like_prev;	      /* encode as a copy of the batch's previous event */
};

/* Validate msg (limits of shmbus.h) and compute the event's layout. */
int event_layout(const shmbus_msg_t *msg, const char *default_source, size_t default_source_len, size_t payload_len,
		 uint32_t max_payload, struct event_layout *lay);

/*
 * event_same_shape - whether b encodes exactly as a does but for its
 * payload: the same strings (by address: a caller's messages do not change
 * during the call), metadata array and fixed fields. A batch of such
 * messages is laid out and encoded once; each later event is a copy of the
 * one before with its own id, sequence and payload (event_write_like).
 */
bool event_same_shape(const shmbus_msg_t *a, const shmbus_msg_t *b);

/* The layout of a message of prev's shape with payload_len bytes of
 * payload: 0, or -EMSGSIZE past max_payload. */
int event_layout_like(const struct event_layout *prev, size_t payload_len, uint32_t max_payload,
		      struct event_layout *lay);

/* Write everything but the payload bytes. */
void event_write(struct seg_event *ev, const shmbus_msg_t *msg, const struct event_layout *lay, size_t payload_len,
		 uint64_t seq, const shmbus_uuid_t *id, uint64_t now_ns);

/* Write ev as a copy of prev, an event of the same shape written in this
 * call (same now_ns), with its own size, sequence, id and payload length;
 * own_correlation: the message gave no correlation id, so it is the id. */
void event_write_like(struct seg_event *ev, const struct seg_event *prev, const struct event_layout *lay,
		      size_t payload_len, uint64_t seq, const shmbus_uuid_t *id, bool own_correlation);

#endif
