/*
 * log_format.h - the bytes of the on-disk log: event segments, their
 * indexes and the dead-letter log. No policy: what is written when, and
 * what a damaged file means, is lib/'s business (lib/log*.c, lib/dlq.c).
 * docs/FORMAT.md has the prose version.
 *
 * A bus's log lives in one directory, <root>/<bus>/:
 *
 *   <first-seq>.log   event segment: log_file_header, then records
 *   <first-seq>.idx   its index: log_file_header, position table, time table
 *   dead.log          the dead-letter log: log_file_header, then records
 *
 * <first-seq> is 20 decimal digits, so names sort in sequence order.
 * Every file starts with the same 4096-byte header; records start at
 * LOG_DATA_OFF. All integers are little endian.
 *
 * A record (8-byte aligned, LOG_REC_HDR + len bytes, padded to 8):
 *
 *   0    checksum  u64  xxh3-64 of bytes [8, 24 + len): the rest of this
 *                       header and the body, so a torn or flipped byte
 *                       anywhere in the record is caught
 *   8    len       u32  body bytes, > 0
 *   12   kind      u16  LOG_REC_EVENT, LOG_REC_DEAD, LOG_REC_TOMB
 *   14   rflags    u16  0
 *   16   seq       u64  EVENT/DEAD: the event's bus sequence; TOMB: 0
 *   24   body
 *
 * An all-zero record header (checksum 0, len 0) is where the records end.
 */
#ifndef SHMBUS_SHM_LOG_FORMAT_H
#define SHMBUS_SHM_LOG_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define LOG_MAGIC 0x01474F4C424D4853ull /* "SHMBLOG\1" */
#define LOG_FORMAT_VERSION 1u
#define LOG_HEADER_SIZE 4096u
#define LOG_DATA_OFF LOG_HEADER_SIZE

#define LOG_KIND_SEGMENT 1u
#define LOG_KIND_DEAD 2u
#define LOG_KIND_INDEX 3u

/*
 * log_file_header: offset 0 of every log file, 4096 bytes. Bytes [0, 120)
 * are written once, when the file is created, and covered by header_sum;
 * the words from 128 change while the file is written (the writer stores
 * them with release ordering after the records they describe; readers
 * trust none of them beyond what the records' own checksums confirm).
 *
 *   0    magic        u64  LOG_MAGIC
 *   8    version      u32  LOG_FORMAT_VERSION
 *   12   kind         u32  LOG_KIND_*
 *   16   incarnation  u64  of the bus the records come from
 *   24   first_seq    u64  segment and index: first position it may hold
 *   32   created_ns   u64  CLOCK_REALTIME
 *   40   event_format u32  SEG_EVENT_FORMAT of the records' events
 *   44   capacity     u32  index: positions in the position table
 *   48   bus[72]           bus name, NUL-terminated
 *   120  header_sum   u64  xxh3-64 of bytes [0, 120)
 *   128  tail         u64  end of the last complete record (a hint)
 *   136  records      u64  segment: records written
 *   144  next_pos     u64  segment: position after its last event
 *   152  sealed       u32  segment: 1 once closed for appending
 *   156  reserved     u32
 *   160  time_max     u64  segment: largest published_ns so far
 *   168  reserved to 4096
 */
struct log_file_header {
	uint64_t magic;
	uint32_t version;
	uint32_t kind;
	uint64_t incarnation;
	uint64_t first_seq;
	uint64_t created_ns;
	uint32_t event_format;
	uint32_t capacity;
	char bus[72];
	uint64_t header_sum;
	uint64_t tail;
	uint64_t records;
	uint64_t next_pos;
	uint32_t sealed;
	uint32_t reserved0;
	uint64_t time_max;
	uint8_t reserved1[LOG_HEADER_SIZE - 168];
};
_Static_assert(offsetof(struct log_file_header, version) == 8, "log.version");
_Static_assert(offsetof(struct log_file_header, kind) == 12, "log.kind");
_Static_assert(offsetof(struct log_file_header, incarnation) == 16, "log.incarnation");
_Static_assert(offsetof(struct log_file_header, first_seq) == 24, "log.first_seq");
_Static_assert(offsetof(struct log_file_header, created_ns) == 32, "log.created_ns");
_Static_assert(offsetof(struct log_file_header, event_format) == 40, "log.event_format");
_Static_assert(offsetof(struct log_file_header, capacity) == 44, "log.capacity");
_Static_assert(offsetof(struct log_file_header, bus) == 48, "log.bus");
_Static_assert(offsetof(struct log_file_header, header_sum) == 120, "log.header_sum");
_Static_assert(offsetof(struct log_file_header, tail) == 128, "log.tail");
_Static_assert(offsetof(struct log_file_header, records) == 136, "log.records");
_Static_assert(offsetof(struct log_file_header, next_pos) == 144, "log.next_pos");
_Static_assert(offsetof(struct log_file_header, sealed) == 152, "log.sealed");
_Static_assert(offsetof(struct log_file_header, time_max) == 160, "log.time_max");
_Static_assert(sizeof(struct log_file_header) == LOG_HEADER_SIZE, "log header size");
#define LOG_HEADER_SUMMED 120u

#define LOG_REC_EVENT 1u /* body: the event's bytes (shm/event_format.h) */
#define LOG_REC_DEAD 2u	 /* body: log_dead, then the event's bytes */
#define LOG_REC_TOMB 3u	 /* body: log_tomb */
#define LOG_REC_HDR 24u
#define LOG_REC_MAX (1u << 31) /* body bytes */

struct log_record {
	uint64_t checksum;
	uint32_t len;
	uint16_t kind;
	uint16_t rflags;
	uint64_t seq;
	uint8_t body[];
};
_Static_assert(offsetof(struct log_record, len) == 8, "rec.len");
_Static_assert(offsetof(struct log_record, kind) == 12, "rec.kind");
_Static_assert(offsetof(struct log_record, seq) == 16, "rec.seq");
_Static_assert(sizeof(struct log_record) == LOG_REC_HDR, "rec size");

/*
 * Index file: the header (kind LOG_KIND_INDEX, first_seq and incarnation
 * of its segment, capacity C), then
 *
 *   4096              position table: C × u32, entry p - first_seq is the
 *                     offset in the segment of the record of the event at
 *                     position p, 0 when no event starts there
 *   4096 + 4C         time table: one log_time_entry per record, in record
 *                     (= sequence) order; entry i describes record i
 *
 * The index is derived data: it is rebuilt from the records when it is
 * missing or does not agree with them, and every entry is checked against
 * the record it points at before it is believed.
 */
struct log_time_entry {
	uint64_t time_max; /* largest published_ns of records 0..i (monotonic) */
	uint32_t off;	   /* record offset in the segment */
	uint32_t pos_delta; /* record's seq - first_seq */
};
_Static_assert(offsetof(struct log_time_entry, off) == 8, "time.off");
_Static_assert(sizeof(struct log_time_entry) == 16, "time entry size");
static inline uint64_t log_index_size(uint32_t capacity)
{
	return LOG_HEADER_SIZE + (uint64_t)capacity * 4 + (uint64_t)capacity * sizeof(struct log_time_entry);
}

/*
 * Body of a LOG_REC_DEAD record, 176 bytes, followed by the event:
 *
 *   0    event_id[16]
 *   16   sub          u64  subscription id it was for, 0 = none
 *   24   dead_ns      u64  CLOCK_REALTIME
 *   32   reason       u32  shmbus_dead_reason_t
 *   36   attempts     u32
 *   40   last_error   i32
 *   44   reserved     u32
 *   48   subscriber[64]    NUL-terminated
 *   112  group[64]         NUL-terminated
 *   176  event bytes
 */
struct log_dead {
	uint8_t event_id[16];
	uint64_t sub;
	uint64_t dead_ns;
	uint32_t reason;
	uint32_t attempts;
	int32_t last_error;
	uint32_t reserved;
	char subscriber[64];
	char group[64];
};
_Static_assert(offsetof(struct log_dead, sub) == 16, "dead.sub");
_Static_assert(offsetof(struct log_dead, reason) == 32, "dead.reason");
_Static_assert(offsetof(struct log_dead, last_error) == 40, "dead.last_error");
_Static_assert(offsetof(struct log_dead, subscriber) == 48, "dead.subscriber");
_Static_assert(offsetof(struct log_dead, group) == 112, "dead.group");
_Static_assert(sizeof(struct log_dead) == 176, "log_dead size");

/*
 * Body of a LOG_REC_TOMB record, 32 bytes: the latest dead letter of
 * event_id before it was retried or cleared is no longer live.
 *
 *   0    event_id[16]
 *   16   action  u32  LOG_TOMB_CLEARED or LOG_TOMB_RETRIED
 *   20   reserved u32
 *   24   time_ns u64
 */
#define LOG_TOMB_CLEARED 1u
#define LOG_TOMB_RETRIED 2u
struct log_tomb {
	uint8_t event_id[16];
	uint32_t action;
	uint32_t reserved;
	uint64_t time_ns;
};
_Static_assert(offsetof(struct log_tomb, action) == 16, "tomb.action");
_Static_assert(offsetof(struct log_tomb, time_ns) == 24, "tomb.time");
_Static_assert(sizeof(struct log_tomb) == 32, "log_tomb size");

static inline uint64_t log_rec_size(uint32_t len) { return ((uint64_t)LOG_REC_HDR + len + 7) & ~7ull; }

/* "%020llu.log" etc. into out (>= 32 bytes). */
void log_segment_name(uint64_t first_seq, const char *ext, char *out, size_t cap);
/* first_seq of a name "<20 digits>.<ext>", or -1 if it is not one. */
int log_parse_name(const char *name, const char *ext, uint64_t *first_seq);

/* Fill the immutable part of a header and its checksum. */
void log_header_init(struct log_file_header *h, uint32_t kind, uint64_t incarnation, uint64_t first_seq,
		     const char *bus, uint32_t capacity, uint64_t now_ns);

/*
 * log_header_check - validate the header of a file of size file_size that
 * should be of `kind`. Returns 0, or -EPROTO (not a log file, another
 * version or kind) / -EBADMSG (checksum, truncated, bad fields), with a
 * static reason in *why.
 */
int log_header_check(const struct log_file_header *h, uint64_t file_size, uint32_t kind, const char **why);

/* Checksum of a record whose header fields and body are in place. */
uint64_t log_rec_sum(const struct log_record *r);

/* Write a record header and checksum around a body already at r->body. */
void log_rec_seal(struct log_record *r, uint32_t len, uint16_t kind, uint64_t seq);

/*
 * log_rec_check - the record at off in a file of `avail` bytes mapped at
 * base: its header fits, len is sane, the body fits, the checksum matches,
 * the kind is known, and for an EVENT the body is an event (seg_event_check)
 * whose seq equals the record's; for a DEAD the event after log_dead too.
 * Returns 0, 1 when the bytes there are all zero (the end of the records),
 * or -EBADMSG with a static reason in *why.
 */
int log_rec_check(const uint8_t *base, uint64_t avail, uint64_t off, const char **why);

#endif
