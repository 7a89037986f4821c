/*
 * event_encode.h - laying out and writing an event (lib-internal).
 */
#ifndef SHMBUS_LIB_EVENT_ENCODE_H
#define SHMBUS_LIB_EVENT_ENCODE_H

#include <string.h>

#include "internal.h"

/* The layout of a message's shape: everything but its payload's length,
 * so the messages of a batch of one shape share one. */
struct event_layout {
	const char *str[SEG_EVENT_STRINGS];
	uint8_t len[SEG_EVENT_STRINGS];
	uint32_t strings_len;
	uint32_t payload_off;
	uint16_t lib_flags; /* SUCCESS/FAILURE set by the response helper */
	uint64_t source_hash; /* precomputed (the publisher's default), or 0 */
};

/* Validate msg (limits of shmbus.h, and payload_len against max_payload)
 * and compute the layout of its shape. */
int event_layout(const shmbus_msg_t *msg, const char *default_source, size_t default_source_len, size_t payload_len,
		 uint32_t max_payload, struct event_layout *lay);

/* The size of an event of lay's shape with payload_len bytes of payload
 * (at most a bus's max_payload, so it fits). */
static inline uint32_t event_size(const struct event_layout *lay, size_t payload_len)
{
	return lay->payload_off + (uint32_t)payload_len;
}

/* -EMSGSIZE, saying so: a payload longer than the bus's max_payload. */
int event_payload_too_big(size_t payload_len, uint32_t max_payload);

/* The payload check of event_layout, for a message whose shape is laid
 * out already: 0, or -EMSGSIZE past max_payload. */
static inline int event_check_payload(size_t payload_len, uint32_t max_payload)
{
	return payload_len > max_payload ? event_payload_too_big(payload_len, max_payload) : 0;
}

/*
 * event_same_shape - whether b encodes exactly as a does but for its
 * payload: the same strings (by address: a caller's messages do not change
 * during the call), metadata array and fixed fields. A batch of such
 * messages is laid out and encoded once; each later event is a copy of the
 * one before with its own id, sequence and payload (event_write_like).
 * Inlined: a batch asks it for every message after the first.
 */
static inline bool event_same_shape(const shmbus_msg_t *a, const shmbus_msg_t *b)
{
	return a->type == b->type && a->name == b->name && a->source == b->source && a->target == b->target &&
	       a->priority == b->priority && a->correlation_id == b->correlation_id &&
	       a->causation_id == b->causation_id && a->ttl_ns == b->ttl_ns && a->max_retries == b->max_retries &&
	       a->retry_count == b->retry_count && a->status == b->status && a->schema_version == b->schema_version &&
	       a->content_type == b->content_type && a->flags == b->flags && a->conversation_id == b->conversation_id &&
	       a->user_id == b->user_id && a->intent == b->intent && a->decision_id == b->decision_id &&
	       a->has_confidence == b->has_confidence &&
	       (!a->has_confidence || memcmp(&a->confidence, &b->confidence, sizeof a->confidence) == 0) &&
	       a->metadata == b->metadata && a->metadata_count == b->metadata_count;
}

/* Write everything but the payload bytes; lay is the layout of msg's shape. */
void event_write(struct seg_event *ev, const shmbus_msg_t *msg, const struct event_layout *lay, size_t payload_len,
		 uint64_t seq, const shmbus_uuid_t *id, uint64_t now_ns);

/* Store the last 8 bytes of the id of the event of sequence seq: the
 * UUIDv7's variant and sequence bits (see uuid.c). The ids of one publish
 * call differ in these bytes only. */
static inline void uuid_v7_put_seq(uint8_t *last8, uint64_t seq)
{
	uint64_t lo = __builtin_bswap64((2ull << 62) | (seq & ((1ull << 62) - 1)));
	memcpy(last8, &lo, 8);
}

/*
 * Copy n bytes between buffers that do not overlap. Up to 32 bytes take at
 * most two fixed-size moves each way, overlapping in the middle and
 * reading only [src, src + n): no call and no loop for the string areas
 * and payloads of small events. Longer copies call memcpy.
 */
static inline __attribute__((always_inline)) void copy_short(void *dst, const void *src, size_t n)
{
	char *d = dst;
	const char *s = src;
	if (n > 32) {
		memcpy(d, s, n);
	} else if (n >= 16) {
		memcpy(d, s, 16);
		memcpy(d + n - 16, s + n - 16, 16);
	} else if (n >= 8) {
		memcpy(d, s, 8);
		memcpy(d + n - 8, s + n - 8, 8);
	} else if (n >= 4) {
		memcpy(d, s, 4);
		memcpy(d + n - 4, s + n - 4, 4);
	} else {
		for (size_t i = 0; i < n; i++)
			d[i] = s[i];
	}
}

/*
 * Write ev as a copy of prev, an event of the same shape (layout lay)
 * written in this call, with its own size, sequence, id and payload length;
 * own_correlation: the message gave no correlation id, so it is the id.
 * prev's id is the id ev would get but for the sequence bits: the same
 * clock reading (one per call) and bus. Inlined: it is most of what a
 * batched event costs to write.
 */
static inline __attribute__((always_inline)) void event_write_like(struct seg_event *ev, const struct seg_event *prev,
								  const struct event_layout *lay, size_t payload_len,
								  uint64_t seq, bool own_correlation)
{
	/* the fixed part (a constant size: inline moves), then the strings
	 * and the zeroed padding word: all that precedes the payload is the
	 * previous event's but for the fields below */
	memcpy(ev, prev, SEG_EVENT_FIXED);
	copy_short(ev->strings, prev->strings, lay->payload_off - SEG_EVENT_FIXED);
	ev->size = event_size(lay, payload_len);
	ev->seq = seq;
	uuid_v7_put_seq(ev->id + 8, seq);
	if (own_correlation)
		memcpy(ev->correlation_id, ev->id, 16);
	ev->payload_len = (uint32_t)payload_len;
	ev->committed = 0;
}

#endif
