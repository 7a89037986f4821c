/*
 * event_format.h - the bytes of one event, as it lies in the slot ring and,
 * later, in log records. Format version 2; docs/FORMAT.md has the diagram.
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
 *   144  strings         in len[] order, each one that is not empty
 *                        followed by a NUL (an empty one takes no byte);
 *                        then meta_count pairs: key\0 value\0 (lengths
 *                        implied)
 *   payload_off          payload (payload_len bytes)
 */
#ifndef SHMBUS_SHM_EVENT_FORMAT_H
#define SHMBUS_SHM_EVENT_FORMAT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SEG_EVENT_FORMAT 2u /* 1: every string took a NUL, empty or not */
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
 * The header words seg_event_check_fast's structural tests read: bytes
 * 0..8 (size, format, type, priority) and 112..144 (payload length through
 * the string lengths). Two events with the same words pass or fail those
 * tests alike and have their terminators in the same places, so a consumer
 * that remembers the words of the last event it accepted tests only the
 * terminators of the next one of that shape (seg_event_check_same_shape):
 * a run of one kind of event, the usual case, then costs a third of the
 * full check. The words are taken apart by shifts, in memory order.
 */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the header words are read little-endian");

struct seg_event_shape {
	uint64_t w[5];
	size_t avail; /* the bytes the words were tested against (0: none yet) */
	/* where the strings' terminators lie in the string area (an empty
	 * string's: the name's again), then the area's last byte with
	 * metadata (else the name's terminator again) */
	uint16_t nul_at[SEG_EVENT_STRINGS + 1];
};

/* Read ev's header words into w: the snapshot every later test uses (the
 * bytes may change under a reader). */
static inline void seg_event_shape_of(const struct seg_event *ev, struct seg_event_shape *w)
{
	const char *b = (const char *)ev;
	memcpy(&w->w[0], b, 8);
	memcpy(&w->w[1], b + 112, 32);
}

/* The lengths and the NULs of the strings that are not empty: at most the
 * string area's size for an event that passes. The lengths' byte lanes are
 * summed in 16-bit lanes (two lengths each, and at most 7 * 63 in all: no
 * carry, for lengths the same test refuses too). A lane is not empty
 * if any of its bits 0..5 is set: shifted down to bit 0 by at most 5, no
 * bit of the next lane reaches it (and lengths with bit 6 or 7 set are
 * refused anyway). */
static inline uint32_t seg_event_strings_sum(uint64_t lens)
{
	uint64_t pairs = (lens & 0x00FF00FF00FF00FFull) + ((lens >> 8) & 0x00FF00FF00FF00FFull);
	uint64_t any = lens | (lens >> 1) | (lens >> 2) | (lens >> 3) | (lens >> 4) | (lens >> 5);
	uint64_t nuls = ((any & 0x0101010101010101ull) * 0x0101010101010101ull) >> 56;
	return (uint32_t)((pairs * 0x0001000100010001ull) >> 48) + (uint32_t)nuls;
}

/*
 * seg_event_check_shape - the structural tests of the delivery path's
 * check, on the snapshot w: the size, format and enums, the payload and
 * string area bounds, and the string lengths as one word (each at most 63:
 * no byte has bit 6 or 7 set; their sum with the NULs within the string
 * area, and with metadata short of its end, whose last byte must then be
 * a NUL of its own). On success it fills in w->nul_at and w->avail.
 * 0 or -EBADMSG.
 */
static inline int seg_event_check_shape(struct seg_event_shape *w, size_t avail)
{
	uint32_t size = (uint32_t)w->w[0], payload_len = (uint32_t)w->w[1], off = (uint32_t)w->w[3];
	uint32_t strings = (uint32_t)(w->w[3] >> 32) & 0xFFFF;
	uint8_t format_lo = (uint8_t)(w->w[0] >> 32), format_hi = (uint8_t)(w->w[0] >> 40);
	uint8_t type = (uint8_t)(w->w[0] >> 48), priority = (uint8_t)(w->w[0] >> 56);
	uint8_t status = (uint8_t)(w->w[2] >> 16), content_type = (uint8_t)(w->w[2] >> 40);
	uint8_t meta_count = (uint8_t)(w->w[3] >> 48);
	uint64_t lens = w->w[4] & 0x00FFFFFFFFFFFFFFull; /* len[7] is reserved */
	uint32_t sum = seg_event_strings_sum(lens);
	_Static_assert(SEG_EVENT_FORMAT < 256, "format fits its low byte");
	/* off <= size and off >= FIXED + strings also put the string area
	 * inside the event */
	if (avail < SEG_EVENT_FIXED || size - SEG_EVENT_FIXED > avail - SEG_EVENT_FIXED ||
	    format_lo != SEG_EVENT_FORMAT || format_hi || (uint8_t)(type - 1) > 4 || (uint8_t)(priority - 1) > 3 ||
	    content_type > 2 || status > 6 || off % 8 || off < SEG_EVENT_FIXED + strings || off > size ||
	    payload_len > size - off || meta_count > SEG_EVENT_META_MAX || (lens & 0xC0C0C0C0C0C0C0C0ull) ||
	    !(lens & 0xFF) || sum > strings || (meta_count && sum >= strings))
		return -EBADMSG;
	/* An empty string has no terminator: its slot tests the name's
	 * again (the name is never empty, and comes first). */
	unsigned at = 0;
	for (unsigned k = 0; k < SEG_EVENT_STRINGS; k++) {
		unsigned n = (unsigned)(lens >> (8 * k)) & 0xFF;
		if (n == 0) {
			w->nul_at[k] = w->nul_at[0];
			continue;
		}
		at += n;
		w->nul_at[k] = (uint16_t)at++;
	}
	w->nul_at[SEG_EVENT_STRINGS] = meta_count ? (uint16_t)(strings - 1) : w->nul_at[0];
	w->avail = avail;
	return 0;
}

/* The terminator tests of an event whose shape w passed
 * seg_event_check_shape: every string ends where its length says (all
 * inside the area, as the sum showed), and with metadata the area ends
 * with a NUL, so no walk by seg_event_meta can leave it. 0 or -EBADMSG. */
static inline int seg_event_check_terminators(const struct seg_event *ev, const struct seg_event_shape *w)
{
	unsigned nul = 0;
#pragma GCC unroll 8
	for (unsigned k = 0; k <= SEG_EVENT_STRINGS; k++)
		nul |= (unsigned char)ev->strings[w->nul_at[k]];
	return nul ? -EBADMSG : 0;
}

/*
 * seg_event_check_fast - the delivery path's check: the tests of
 * seg_event_check that reading the event safely needs, without the scan
 * for embedded NULs and the metadata parsing, and with one of its own in
 * their place (with metadata, the string area's last byte is a NUL). The
 * header is read once (seg_event_shape_of), tested
 * (seg_event_check_shape), and the terminators are looked up where the
 * snapshot's lengths put them.
 */
static inline int seg_event_check_fast(const struct seg_event *ev, size_t avail)
{
	if (avail < SEG_EVENT_FIXED)
		return -EBADMSG;
	struct seg_event_shape w;
	seg_event_shape_of(ev, &w);
	int rc = seg_event_check_shape(&w, avail);
	return rc < 0 ? rc : seg_event_check_terminators(ev, &w);
}

/*
 * seg_event_like_last - whether ev passes the delivery path's check as the
 * event *last was taken from did: the same header words at the same avail
 * (so the same structural verdict) and a NUL everywhere a terminator lies
 * for that shape. false says nothing against ev: it may be of another
 * shape, which seg_event_check_same_shape then tests from scratch. It
 * reads nothing before the avail tests (the remembered one, and at least
 * SEG_EVENT_FIXED), so every read lies inside avail. The words are read
 * into registers rather than a snapshot on the stack; a word that another
 * process changes meanwhile can make the answer either way, as with a
 * snapshot, and stays safe: the terminators are looked up where the
 * remembered (validated) lengths put them, inside the string area.
 */
static inline bool seg_event_like_last(const struct seg_event *ev, size_t avail, const struct seg_event_shape *last)
{
	if (last->avail != avail || avail < SEG_EVENT_FIXED) /* a zeroed *last has avail 0 */
		return false;
	const char *b = (const char *)ev;
	uint64_t w0, w[4];
	memcpy(&w0, b, 8);
	memcpy(w, b + 112, 32);
	return !((w0 ^ last->w[0]) | (w[0] ^ last->w[1]) | (w[1] ^ last->w[2]) | (w[2] ^ last->w[3]) |
		 (w[3] ^ last->w[4])) &&
	       seg_event_check_terminators(ev, last) == 0;
}

/*
 * seg_event_check_same_shape - seg_event_check_fast for a consumer that
 * remembers, in *last, the shape of the last event it accepted (zeroed at
 * first: avail 0 matches no call). An event with the same words at the
 * same avail passed the structural tests as that one did, so only its
 * terminators are looked up; otherwise the structural tests run and, on
 * success, *last becomes the shape they tested. 0 or -EBADMSG.
 */
static inline int seg_event_check_same_shape(const struct seg_event *ev, size_t avail, struct seg_event_shape *last)
{
	if (avail < SEG_EVENT_FIXED)
		return -EBADMSG;
	struct seg_event_shape w;
	seg_event_shape_of(ev, &w);
	if (last->avail != avail || ((w.w[0] ^ last->w[0]) | (w.w[1] ^ last->w[1]) | (w.w[2] ^ last->w[2]) |
				     (w.w[3] ^ last->w[3]) | (w.w[4] ^ last->w[4]))) {
		int rc = seg_event_check_shape(&w, avail);
		if (rc < 0 || (rc = seg_event_check_terminators(ev, &w)) < 0)
			return rc;
		*last = w;
		return 0;
	}
	return seg_event_check_terminators(ev, last);
}

/* Pointer to string k (SEG_STR_*) of a checked event; never NULL. */
const char *seg_event_string(const struct seg_event *ev, unsigned k);

/* Metadata pair i of a checked event. Returns 0 or -ERANGE. */
int seg_event_meta(const struct seg_event *ev, unsigned i, const char **key, const char **value);

#endif
