/*
 * event_encode.h - laying out and writing an event (lib-internal).
 */
#ifndef SHMBUS_LIB_EVENT_ENCODE_H
#define SHMBUS_LIB_EVENT_ENCODE_H

#include <string.h>

#include "internal.h"
#include "cpu_detect.h"
#include "stream.h"

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

#if defined(__x86_64__) && defined(__LP64__)
/* event_same_shape in four 32-byte compares (msg_shape.c); only where
 * shm_cpu_has_avx2. */
bool event_same_shape_avx2(const shmbus_msg_t *a, const shmbus_msg_t *b);
#endif

/* event_same_shape as this CPU answers it fastest: what a batch asks of
 * every message after its first. */
static inline bool event_same_shape_batch(const shmbus_msg_t *a, const shmbus_msg_t *b)
{
#if defined(__x86_64__) && defined(__LP64__)
	if (__builtin_expect(shm_cpu_has_avx2, 1))
		return event_same_shape_avx2(a, b);
#endif
	return event_same_shape(a, b);
}

/*
 * An event id as the two 8-byte words of its 16 bytes, each already in
 * memory order, put together in registers and stored with two 8-byte
 * moves. An id assembled in memory by two 8-byte stores and then copied as
 * 16 bytes cannot be forwarded from them: the copy waits until both have
 * reached the cache, behind every older store of the publish (the claimed
 * slot's control word, whose line is still on its way), and the rest of
 * the publish waits with it. In a spin ping-pong that load was half of
 * the samples (perf) of a single publish's own code.
 */
struct id_words {
	uint64_t time_word; /* bytes 0..7: ms(48) ver(4) tag(12), big endian */
	uint64_t seq_word;  /* bytes 8..15: var(2) seq(62), big endian */
};

/* The first word of a UUIDv7 of this millisecond and bus incarnation (see
 * uuid.c): the same for every event of one clock reading. */
static inline uint64_t uuid_v7_time_word(uint64_t unix_ms, uint64_t incarnation)
{
	return __builtin_bswap64((unix_ms << 16) | 0x7000 | (incarnation & 0xFFF));
}

/* The last word of the id of the event of sequence seq: the UUIDv7's
 * variant and sequence bits. The ids of one publish call differ in it
 * only. */
static inline uint64_t uuid_v7_seq_word(uint64_t seq)
{
	return __builtin_bswap64((2ull << 62) | (seq & ((1ull << 62) - 1)));
}

static inline struct id_words uuid_v7_words(uint64_t unix_ms, uint64_t incarnation, uint64_t seq)
{
	return (struct id_words){uuid_v7_time_word(unix_ms, incarnation), uuid_v7_seq_word(seq)};
}

/* Store id at dst (16 bytes, any alignment). */
static inline void id_words_put(uint8_t *dst, struct id_words id)
{
	memcpy(dst, &id.time_word, 8);
	memcpy(dst + 8, &id.seq_word, 8);
}

/* Write everything but the payload bytes; lay is the layout of msg's shape. */
void event_write(struct seg_event *ev, const shmbus_msg_t *msg, const struct event_layout *lay, size_t payload_len,
		 uint64_t seq, struct id_words id, uint64_t now_ns);

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
	/* The correlation id is built from prev's id (in this core's cache) and
	 * the new sequence bits, never read back from ev: a load of bytes just
	 * stored to a line not yet owned waits for that line to arrive, and ev's
	 * lines were last read by a consumer a lap ago. Reading ev->id back was
	 * half of what a batched event cost the publisher. */
	struct id_words id = {.seq_word = uuid_v7_seq_word(seq)};
	memcpy(&id.time_word, prev->id, 8);
	id_words_put(ev->id, id);
	if (own_correlation)
		id_words_put(ev->correlation_id, id);
	ev->payload_len = (uint32_t)payload_len;
	ev->committed = 0;
}

#if SHM_HAVE_STREAM
/*
 * event_write_like and the payload's copy in one, with every line of the
 * event streamed (shm/stream.h): ev is the start of a slot (64-byte
 * aligned), and the event's lines are put together from prev (the
 * template of its shape, in private memory), its own size, sequence, id,
 * correlation id and payload length, and payload. A line that holds
 * both template and payload bytes, or the payload's last bytes, is put
 * together in a private line first, zero-padded to the line's end (within
 * the event's last slot, which nobody reads past the event). `committed`
 * goes out 0 and stays 0: the commit must not store to a streamed line
 * (the store would fetch the line back from memory), so readers of a
 * streamed event look at the slot's control word instead (FORMAT.md).
 * Nothing may read the event, nor a reader hear of it, before the
 * caller's stream_fence.
 */
static inline __attribute__((always_inline)) void event_write_streamed(struct seg_event *ev,
								      const struct seg_event *prev,
								      const struct event_layout *lay,
								      const void *payload, size_t payload_len,
								      uint64_t seq, bool own_correlation)
{
	_Static_assert(offsetof(struct seg_event, size) == 0 && offsetof(struct seg_event, seq) == 8 &&
			       offsetof(struct seg_event, id) == 16 && offsetof(struct seg_event, correlation_id) == 32 &&
			       offsetof(struct seg_event, payload_len) == 112 &&
			       offsetof(struct seg_event, committed) >= 128 && SEG_EVENT_FIXED >= 128,
		       "the own fields are in the first two lines, committed after");
	const char *src = (const char *)prev;
	char *dst = (char *)ev;
	uint32_t size = event_size(lay, payload_len), off = lay->payload_off;
	uint64_t head, tail_lo, tail_hi;
	memcpy(&head, src, 8);
	memcpy(&tail_lo, src + 112, 8);
	memcpy(&tail_hi, src + 120, 8);
	/* little endian: size and payload_len are the low halves */
	head = (head & ~0xffffffffull) | size;
	tail_lo = (tail_lo & ~0xffffffffull) | (uint32_t)payload_len;
	struct id_words id = {.seq_word = uuid_v7_seq_word(seq)};
	memcpy(&id.time_word, prev->id, 8);
	stream_chunk own_id = stream_chunk_of(id.time_word, id.seq_word);
	stream_put(dst, stream_chunk_of(head, seq));
	stream_put(dst + 16, own_id);
	stream_put(dst + 32, own_correlation ? own_id : stream_chunk_at(src + 32));
	stream_put(dst + 48, stream_chunk_at(src + 48));
	stream_put(dst + 64, stream_chunk_at(src + 64));
	stream_put(dst + 80, stream_chunk_at(src + 80));
	stream_put(dst + 96, stream_chunk_at(src + 96));
	stream_put(dst + 112, stream_chunk_of(tail_lo, tail_hi));
	const uint8_t *pl = payload;
	for (uint32_t lo = 128; lo < size; lo += 64) {
		if (lo + 64 <= off) { /* template bytes only */
			stream_copy_lines(dst + lo, src + lo, 1);
		} else if (lo >= off && lo + 64 <= size) { /* payload bytes only */
			size_t lines = (size - lo) / 64;
			stream_copy_lines(dst + lo, pl + (lo - off), lines);
			lo += (uint32_t)(lines - 1) * 64;
		} else { /* some of each, or the last bytes: put together first */
			_Alignas(16) uint8_t line[64];
			uint32_t t = off > lo ? off - lo : 0; /* template bytes */
			if (t > 64)
				t = 64;
			uint32_t end = size < lo + 64 ? size - lo : 64;
			memcpy(line, src + lo, t);
			if (end > t)
				memcpy(line + t, pl + (lo + t - off), end - t);
			memset(line + end, 0, 64 - end);
			stream_copy_lines(dst + lo, line, 1);
		}
	}
}
#endif

/* The fields of ev that are each publish's own whatever its shape: id,
 * correlation id (its own id unless the message names one), causation
 * id, times, expiry. Written by event_write, and by publish_one after a
 * cached event's push. */
static inline __attribute__((always_inline)) void event_put_own(struct seg_event *ev, const shmbus_msg_t *msg,
								struct id_words id, uint64_t now_ns)
{
	id_words_put(ev->id, id);
	if (msg->correlation_id)
		memcpy(ev->correlation_id, msg->correlation_id->bytes, 16);
	else
		id_words_put(ev->correlation_id, id);
	if (msg->causation_id)
		memcpy(ev->causation_id, msg->causation_id->bytes, 16);
	else
		memset(ev->causation_id, 0, 16);
	ev->created_ns = now_ns;
	ev->published_ns = now_ns;
	/* saturated: a TTL past the end of time is no expiry, not a wrap
	 * that makes the event born expired */
	uint64_t expires = now_ns + msg->ttl_ns;
	ev->expires_ns = !msg->ttl_ns ? 0 : expires < now_ns ? UINT64_MAX : expires;
}

/*
 * The last event a publisher encoded for a single publish, in its private
 * memory: the bytes before the payload and the message they were built
 * from. The same kind of message published again and again (the usual
 * case, on every round trip) is then written by copying them
 * (event_write_cached) instead of being laid out, hashed and encoded
 * again. Its strings are compared by content, never by address: callers
 * reuse buffers. It is built only from messages, never read back from the
 * ring, where a committed event may be released and its slot reused (or
 * overwritten by a hostile member) at any moment.
 */
#define EVENT_CACHE_BYTES 512u /* events with longer string areas are not cached */
struct event_cache {
	bool valid;
	uint16_t lib_flags;
	/* The message's fields; of its pointers only source is looked at,
	 * to tell the publisher's own source (NULL) from a given one. */
	shmbus_msg_t msg;
	/* the event up to its payload: everything but the fields each
	 * event has of its own */
	union {
		struct seg_event ev;
		uint64_t bytes[EVENT_CACHE_BYTES / 8];
	} head;
};

/* Whether the n bytes at a and b (at most 63) are equal: up to 32 bytes
 * as at most four word compares that read only [a, a + n) and [b, b + n). */
static inline __attribute__((always_inline)) bool equal_short(const void *a, const void *b, size_t n)
{
	const char *x = a, *y = b;
	uint64_t p, q, r, s;
	uint32_t u, v, w, z;
	if (n > 32)
		return memcmp(x, y, n) == 0;
	if (n > 16) {
		memcpy(&p, x, 8), memcpy(&q, y, 8), memcpy(&r, x + 8, 8), memcpy(&s, y + 8, 8);
		if ((p ^ q) | (r ^ s))
			return false;
		x += n - 16, y += n - 16, n = 16;
	}
	if (n >= 8) {
		memcpy(&p, x, 8), memcpy(&q, y, 8), memcpy(&r, x + n - 8, 8), memcpy(&s, y + n - 8, 8);
		return !((p ^ q) | (r ^ s));
	}
	if (n >= 4) {
		memcpy(&u, x, 4), memcpy(&v, y, 4), memcpy(&w, x + n - 4, 4), memcpy(&z, y + n - 4, 4);
		return !((u ^ v) | (w ^ z));
	}
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return false;
	return true;
}

/* Whether the string s (NULL counts as "") is the len bytes at cached,
 * which hold no NUL. s is read only up to its terminator or len + 1
 * bytes, wherever it ends: a short string byte by byte, which stops at
 * the first difference, at the latest at s's terminator, since cached has
 * none (about 3 instructions a byte, where strnlen's call and the wide
 * compare cost about 40 whatever the length); a longer one its length
 * first. */
#define CACHED_STR_BYTEWISE 16
static inline __attribute__((always_inline)) bool cached_str_is(const char *s, const char *cached, size_t len)
{
	if (len == 0)
		return !s || !s[0];
	if (!s)
		return false;
	if (len <= CACHED_STR_BYTEWISE) {
		for (size_t i = 0; i < len; i++)
			if (s[i] != cached[i])
				return false;
		return s[len] == '\0';
	}
	return strnlen(s, len + 1) == len && equal_short(s, cached, len);
}

/* The metadata part of event_cache_hit: msg's pairs (msg->metadata_count,
 * not 0, is the cached event's) are those at p, the cached event's first
 * metadata key. */
bool event_cache_meta_same(const shmbus_msg_t *msg, const char *p);

/*
 * event_cache_hit - whether msg, published with lib_flags, encodes exactly
 * as the cached event but for what each event has of its own (size,
 * sequence, ids, times, payload length): the same fixed
 * fields, and strings of the same bytes. A message that hits has passed
 * event_layout's checks already (but for its payload length).
 */
static inline __attribute__((always_inline)) bool event_cache_hit(const struct event_cache *c, const shmbus_msg_t *msg,
								 uint16_t lib_flags)
{
	const shmbus_msg_t *k = &c->msg;
	if (!c->valid || msg->type != k->type || msg->priority != k->priority || msg->flags != k->flags ||
	    lib_flags != c->lib_flags || msg->content_type != k->content_type || msg->status != k->status ||
	    msg->schema_version != k->schema_version || msg->max_retries != k->max_retries ||
	    msg->retry_count != k->retry_count || msg->metadata_count != k->metadata_count ||
	    msg->has_confidence != k->has_confidence ||
	    (msg->has_confidence && memcmp(&msg->confidence, &k->confidence, sizeof msg->confidence) != 0))
		return false;
	const struct seg_event *ev = &c->head.ev;
	const char *p = ev->strings;
	/* each string takes its bytes and a NUL, an empty one none */
	if (!cached_str_is(msg->name, p, ev->len[SEG_STR_NAME]))
		return false;
	p += ev->len[SEG_STR_NAME] + 1; /* never empty */
	/* the publisher's source is the cached one only if it was then too
	 * (a given source of the same bytes encodes the same) */
	if (msg->source ? !cached_str_is(msg->source, p, ev->len[SEG_STR_SOURCE]) : k->source != NULL)
		return false;
	p += ev->len[SEG_STR_SOURCE] ? ev->len[SEG_STR_SOURCE] + 1 : 0;
	if (!cached_str_is(msg->target, p, ev->len[SEG_STR_TARGET]))
		return false;
	p += ev->len[SEG_STR_TARGET] ? ev->len[SEG_STR_TARGET] + 1 : 0;
	/* The context strings are usually all absent: one test for the four. */
	if (!(msg->conversation_id || msg->user_id || msg->intent || msg->decision_id)) {
		uint32_t lens;
		memcpy(&lens, &ev->len[SEG_STR_CONVERSATION], 4);
		if (lens)
			return false;
	} else {
		const char *ctx[] = {msg->conversation_id, msg->user_id, msg->intent, msg->decision_id};
		for (unsigned i = SEG_STR_CONVERSATION; i < SEG_EVENT_STRINGS; i++) {
			if (!cached_str_is(ctx[i - SEG_STR_CONVERSATION], p, ev->len[i]))
				return false;
			p += ev->len[i] ? ev->len[i] + 1 : 0;
		}
	}
	return !msg->metadata_count || event_cache_meta_same(msg, p);
}

/* Remember msg (published with lib_flags, laid out as lay: it passed
 * event_layout) as the cached event. Returns whether it is cached: not
 * when its string area is too long for the cache, and then the cache is
 * left as it was. */
bool event_cache_fill(struct event_cache *c, const shmbus_msg_t *msg, const struct event_layout *lay);

/*
 * Write ev (everything but the payload bytes and the fields event_put_own
 * writes, bytes 16..87) as the cached event with its own size, sequence
 * and payload length; the message hit the cache, or was just cached. The
 * caller writes the rest with event_put_own before the commit: those
 * bytes are not copied from the cache's placeholders first, so the lines
 * they lie on are stored to once. Inlined: it is most of what a single
 * publish costs to write.
 */
static inline __attribute__((always_inline)) void event_write_cached(struct seg_event *ev, const struct event_cache *c,
								    size_t payload_len, uint64_t seq)
{
	const struct seg_event *t = &c->head.ev;
	/* the fixed part around the own fields (constant sizes: inline
	 * moves), then the strings and the zeroed padding word before the
	 * payload */
	_Static_assert(offsetof(struct seg_event, id) == 16 && offsetof(struct seg_event, name_hash) == 88,
		       "the own fields are bytes 16..87");
	memcpy(ev, t, offsetof(struct seg_event, id));
	memcpy(&ev->name_hash, &t->name_hash, SEG_EVENT_FIXED - offsetof(struct seg_event, name_hash));
	copy_short(ev->strings, t->strings, t->payload_off - SEG_EVENT_FIXED);
	ev->size = t->payload_off + (uint32_t)payload_len;
	ev->seq = seq;
	ev->payload_len = (uint32_t)payload_len;
}

#endif
