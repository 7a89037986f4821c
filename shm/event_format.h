/*
 * event_format.h - the bytes of one event, as it lies in the slot ring and,
 * later, in log records. Format version 1; docs/FORMAT.md has the diagram.
 *
 *   0    size            u32  bytes of the whole event (header..payload end)
 *   4    format          u16  SEG_EVENT_FORMAT
 *   6    type            u8   1 command, 2 notification, 3 query, 4 response, 5 error
 *   7    priority        u8   1 low, 2 normal, 3 high, 4 critical
 *   8    seq             u64  bus sequence (position of the first slot)
 *   16   id              16   UUIDv7, seq in the low 62 bits
 *   32   correlation_id  16
 *   48   causation_id    16   all zero = none
 *   64   created_ns      u64  CLOCK_REALTIME
 *   72   published_ns    u64
 *   80   expires_ns      u64  0 = never
 *   88   name_hash       u64  xxh3-64 of the name (routing)
 *   96   source_hash     u64
 *   104  target_hash     u64  0 when there is no target
 *   112  payload_len     u32
 *   116  confidence      f32  NaN = not set
 *   120  schema_version  u16
 *   122  status          u8
 *   123  retry_count     u8
 *   124  max_retries     u8
 *   125  content_type    u8
 *   126  flags           u16  SEG_EVF_*
 *   128  payload_off     u32  from the event start, multiple of 8
 *   132  strings_len     u16  bytes of the string area (from offset 144)
 *   134  meta_count      u8
 *   135  committed       u8   1 once the publisher committed (release store),
 *                             so a reader that got the descriptor early can tell
 *   136  len[8]          u8   name, source, target, conversation_id,
 *                             user_id, intent, decision_id, reserved(0)
 *   144  strings         each NUL-terminated, in len[] order; then
 *                        meta_count pairs: key\0 value\0 (lengths implied)
 *   payload_off          payload (payload_len bytes)
 */
#ifndef SHMBUS_SHM_EVENT_FORMAT_H
#define SHMBUS_SHM_EVENT_FORMAT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SEG_EVENT_FORMAT 1u
#define SEG_EVENT_FIXED 144u
#define SEG_EVENT_STRINGS 7u
#define SEG_EVENT_STR_MAX 63u	  /* name, source, target, context ids */
#define SEG_EVENT_META_MAX 16u	  /* metadata pairs */
#define SEG_EVENT_META_KEY_MAX 31u
#define SEG_EVENT_META_VALUE_MAX 255u

enum { SEG_STR_NAME, SEG_STR_SOURCE, SEG_STR_TARGET, SEG_STR_CONVERSATION, SEG_STR_USER, SEG_STR_INTENT, SEG_STR_DECISION };

#define SEG_EVF_SUCCESS 0x0001u	   /* response: success */
#define SEG_EVF_FAILURE 0x0002u	   /* response: failure */
#define SEG_EVF_COMPRESSED 0x0004u /* payload compressed (content-specific) */
#define SEG_EVF_REPLAYED 0x0008u
#define SEG_EVF_MOBILE_LOW_POWER 0x0010u /* mobile/delivery hints, carried as is */
#define SEG_EVF_MOBILE_METERED 0x0020u
#define SEG_EVF_REDELIVERED 0x0040u	 /* never stored: reported to a consumer */
#define SEG_EVF_HAS_CONFIDENCE 0x0080u
#define SEG_EVF_DIRECTED 0x0100u	 /* library: delivered to one subscription (replay, dead-letter retry); the recorder skips it */
#define SEG_EVF_USER_MASK 0x003Fu /* flags a publisher may set */

struct seg_event {
	uint32_t size;
	uint16_t format;
	uint8_t type;
	uint8_t priority;
	uint64_t seq;
	uint8_t id[16];
	uint8_t correlation_id[16];
	uint8_t causation_id[16];
	uint64_t created_ns;
	uint64_t published_ns;
	uint64_t expires_ns;
	uint64_t name_hash;
	uint64_t source_hash;
	uint64_t target_hash;
	uint32_t payload_len;
	float confidence;
	uint16_t schema_version;
	uint8_t status;
	uint8_t retry_count;
	uint8_t max_retries;
	uint8_t content_type;
	uint16_t flags;
	uint32_t payload_off;
	uint16_t strings_len;
	uint8_t meta_count;
	uint8_t committed;
	uint8_t len[8];
	char strings[];
};
_Static_assert(offsetof(struct seg_event, format) == 4, "ev.format");
_Static_assert(offsetof(struct seg_event, type) == 6, "ev.type");
_Static_assert(offsetof(struct seg_event, priority) == 7, "ev.priority");
_Static_assert(offsetof(struct seg_event, seq) == 8, "ev.seq");
_Static_assert(offsetof(struct seg_event, id) == 16, "ev.id");
_Static_assert(offsetof(struct seg_event, correlation_id) == 32, "ev.correlation_id");
_Static_assert(offsetof(struct seg_event, causation_id) == 48, "ev.causation_id");
_Static_assert(offsetof(struct seg_event, created_ns) == 64, "ev.created_ns");
_Static_assert(offsetof(struct seg_event, published_ns) == 72, "ev.published_ns");
_Static_assert(offsetof(struct seg_event, expires_ns) == 80, "ev.expires_ns");
_Static_assert(offsetof(struct seg_event, name_hash) == 88, "ev.name_hash");
_Static_assert(offsetof(struct seg_event, source_hash) == 96, "ev.source_hash");
_Static_assert(offsetof(struct seg_event, target_hash) == 104, "ev.target_hash");
_Static_assert(offsetof(struct seg_event, payload_len) == 112, "ev.payload_len");
_Static_assert(offsetof(struct seg_event, confidence) == 116, "ev.confidence");
_Static_assert(offsetof(struct seg_event, schema_version) == 120, "ev.schema_version");
_Static_assert(offsetof(struct seg_event, status) == 122, "ev.status");
_Static_assert(offsetof(struct seg_event, retry_count) == 123, "ev.retry_count");
_Static_assert(offsetof(struct seg_event, max_retries) == 124, "ev.max_retries");
_Static_assert(offsetof(struct seg_event, content_type) == 125, "ev.content_type");
_Static_assert(offsetof(struct seg_event, flags) == 126, "ev.flags");
_Static_assert(offsetof(struct seg_event, payload_off) == 128, "ev.payload_off");
_Static_assert(offsetof(struct seg_event, strings_len) == 132, "ev.strings_len");
_Static_assert(offsetof(struct seg_event, meta_count) == 134, "ev.meta_count");
_Static_assert(offsetof(struct seg_event, committed) == 135, "ev.committed");
_Static_assert(offsetof(struct seg_event, len) == 136, "ev.len");
_Static_assert(offsetof(struct seg_event, strings) == SEG_EVENT_FIXED, "ev.strings");
_Static_assert(sizeof(struct seg_event) == SEG_EVENT_FIXED, "seg_event size");

/* Hash used for routing on names, sources and targets; 0 is reserved for
 * "absent" so a real string never hashes to it. */
uint64_t seg_str_hash(const char *s, size_t len);

/*
 * seg_event_check - validate an event's bytes before anyone trusts them.
 * `avail` is how many bytes may be read at `ev`. Checks the size, format,
 * enums, that every string lies inside the string area and is NUL
 * terminated at its stated length, metadata bounds and the payload bounds.
 * Returns 0 or -EBADMSG with a static description in *why.
 */
int seg_event_check(const struct seg_event *ev, size_t avail, const char **why);

/*
 * seg_event_check_fast - the delivery path's check, run on every event a
 * consumer opens (inline: it is a tenth of a consumer's instructions): the same
 * acceptance as seg_event_check without the scan for embedded NULs and the
 * metadata parsing. The string lengths are tested as one word: each at
 * most 63 (no byte has bit 6 or 7 set), and their sum with the NULs within
 * the string area; the terminators are then looked up from that snapshot.
 */
static inline int seg_event_check_fast(const struct seg_event *ev, size_t avail)
{
	if (avail < SEG_EVENT_FIXED)
		return -EBADMSG;
	uint32_t size = ev->size, strings = ev->strings_len, off = ev->payload_off;
	uint64_t lens;
	memcpy(&lens, ev->len, sizeof lens);
	lens &= 0x00FFFFFFFFFFFFFFull; /* len[7] is reserved */
	/* byte lanes summed in 16-bit lanes (each <= 4 * 63): no carry */
	uint64_t pairs = (lens & 0x00FF00FF00FF00FFull) + ((lens >> 8) & 0x00FF00FF00FF00FFull);
	uint32_t sum = (uint32_t)((pairs * 0x0001000100010001ull) >> 48) + SEG_EVENT_STRINGS;
	/* off <= size and off >= FIXED + strings also put the string area
	 * inside the event */
	if (size - SEG_EVENT_FIXED > avail - SEG_EVENT_FIXED || ev->format != SEG_EVENT_FORMAT ||
	    (uint8_t)(ev->type - 1) > 4 || (uint8_t)(ev->priority - 1) > 3 || ev->content_type > 2 || ev->status > 6 ||
	    off % 8 || off < SEG_EVENT_FIXED + strings || off > size || ev->payload_len > size - off ||
	    ev->meta_count > SEG_EVENT_META_MAX || (lens & 0xC0C0C0C0C0C0C0C0ull) || !(lens & 0xFF) || sum > strings)
		return -EBADMSG;
	/* Every string ends where its length says (all inside the area, as
	 * the sum showed), and with metadata the area ends with a NUL, so no
	 * walk by seg_event_meta can leave it. */
	const char *p = ev->strings;
	unsigned nul = 0;
#pragma GCC unroll 7
	for (unsigned k = 0; k < SEG_EVENT_STRINGS; k++) {
		p += (lens >> (8 * k)) & 0xFF; /* the lengths checked above */
		nul |= (unsigned char)*p++;
	}
	if (ev->meta_count)
		nul |= (sum >= strings) | (unsigned char)ev->strings[strings - 1];
	return nul ? -EBADMSG : 0;
}

/* Pointer to string k (SEG_STR_*) of a checked event; never NULL. */
const char *seg_event_string(const struct seg_event *ev, unsigned k);

/* Metadata pair i of a checked event. Returns 0 or -ERANGE. */
int seg_event_meta(const struct seg_event *ev, unsigned i, const char **key, const char **value);

#endif
