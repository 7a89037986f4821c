/*
 * log.h - the on-disk log inside the library: segment files (shared by
 * the writer and the readers), the writer the recorder drives, the reader
 * queries use, and the per-bus state that keeps mappings alive until
 * shmbus_close. Bytes are in shm/log_format.h; policy is here.
 */
#ifndef SHMBUS_LIB_LOG_H
#define SHMBUS_LIB_LOG_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "internal.h"
#include "log_format.h"
#include "log_sync.h"

#define LOG_DEFAULT_SEGMENT_BYTES (64ull << 20)
#define LOG_MIN_SEGMENT_BYTES (64ull << 10)
#define LOG_DEFAULT_BATCH_MS 10u
/* A time-bounded scan stops at the first record whose running maximum of
 * published_ns passes the end of the range by this much: an event
 * published more than this out of sequence order is not found by it. */
#define LOG_TIME_SLACK_NS 100000000ull

/* One segment, mapped: the whole file, and its index when it is usable. */
struct log_seg {
	char path[PATH_MAX];
	int fd, idx_fd;
	uint8_t *base;
	uint64_t map_len; /* bytes mapped (the file's size when mapped) */
	struct log_file_header *hdr;
	uint64_t first_seq;
	uint8_t *idx;
	uint64_t idx_len;
	uint32_t cap;	   /* positions in the position table */
	uint32_t *pos;	   /* NULL when the index is unusable */
	struct log_time_entry *time;
	uint64_t nrec;	   /* time table entries known to be written */
	struct log_time_entry *own_time; /* a rebuilt time table (malloc) */
	uint32_t *own_pos;
};

/* Close and unmap; NULL-safe on the fields. */
void log_seg_close(struct log_seg *s);

/* "<root>/<bus>" of a bus (its configured root, else the env, else the
 * default). Returns the length or -ENAMETOOLONG. */
int log_bus_dir(const shmbus_bus_t *bus, const char *root_override, char *out, size_t cap);
/* mkdir -p with mode 0700 for what it creates; 0 or -errno (message set). */
int log_mkdirs(const char *dir);

/*
 * The writer: appends event records to the last segment of a directory,
 * rolling and retaining segments. Used by the recorder only.
 */
struct log_writer {
	char dir[PATH_MAX];
	char bus[SHMBUS_NAME_MAX + 1];
	uint64_t incarnation;
	uint64_t segment_bytes;
	uint32_t index_positions;
	uint64_t retain_bytes, retain_ns;
	bool retain_force;	 /* retention may delete what durable subscriptions need */
	shmbus_bus_t *spare;	 /* whose durable subscriptions retention spares (NULL: none) */
	struct log_seg seg;	 /* the open segment (seg.base NULL: none yet) */
	uint64_t wrote;		 /* end of the records written to the file (<= tail) */
	uint64_t tail;		 /* end of the committed records of seg */
	uint64_t wtail;		 /* end of the batch's reservations (>= tail) */
	uint32_t pending;	 /* reservations not committed yet */
	uint8_t *stage;		 /* file range [stage_off, wtail) of seg, being built (log_writer.c) */
	uint64_t stage_off, stage_cap;
	uint64_t pop_time, pop_pos; /* index prefaulted up to (offsets in the index file) */
	uint64_t next_pos;	 /* position after the last event written */
	uint64_t time_max;
	bool has_records;	 /* the log holds at least one event */
	bool sync_on_roll;	 /* fdatasync a segment before sealing it */
	bool damaged;		 /* recovery sealed a segment damaged mid-way */
	uint64_t cut_at;	 /* recovery cut a torn record at this offset (0: none) */
	uint32_t segments_created;
};

/* Open dir (created if missing), recover its last segment (cut a torn
 * tail, re-index what the index missed). 0 or -errno, message naming the
 * file. */
int log_writer_open(struct log_writer *w, const char *dir, const char *bus, uint64_t incarnation,
		    uint32_t slot_size, uint64_t segment_bytes, uint32_t index_positions);
/*
 * Writing is batched: reserve room for a run of records, copy the events
 * in, then commit the reservations in order (each is sealed with its
 * checksum and indexed) or discard what is left of them, and publish the
 * run once: its records are written to the file, then the segment header
 * counts them. Reservations live in a private staging copy, not in the
 * file: a writer that dies in a batch loses every record it has not
 * published (or written) yet, as if it had never been reserved; a caller
 * that must not lose an event (the recorder) keeps whatever lets it
 * record the event again until publish has returned 0. A writer that dies
 * between the write and the header leaves records the header does not
 * count yet (recovery indexes them) and index entries past the header's
 * count (ignored, overwritten).
 *
 * log_writer_reserve - room for the next record of len bytes after the
 * batch's reservations, rolling to a new segment first when needed and
 * nothing is pending. Returns where to copy the event; NULL with *rc = 0
 * when the open segment cannot take it in this batch (commit or discard
 * the batch, then reserve again), NULL with *rc = -errno on failure.
 */
uint8_t *log_writer_reserve(struct log_writer *w, uint64_t seq, uint32_t slots, uint32_t len, int *rc);
/* Seal the oldest pending reservation (its event copied) and index it. */
void log_writer_commit(struct log_writer *w, uint64_t seq, uint32_t slots, uint32_t len);
/* Drop every pending reservation (none of it is in the file). */
void log_writer_discard(struct log_writer *w);
/* Write the committed records not written yet to the file (pwrite of
 * whole pages, the last one padded with zeros), without counting them in
 * the header. 0 or -errno (message set; nothing counted, the records stay
 * staged and the next call writes them again). Part of publish; on its own
 * only for tests of what a writer dying between the two leaves. */
int log_writer_write(struct log_writer *w);
/* log_writer_write, then store the segment header's tail, records,
 * next_pos and time_max for what was committed (release; readers and
 * recovery take them as hints). 0 or -errno as log_writer_write: the
 * header is stored only once the records are written. */
int log_writer_publish(struct log_writer *w);
/* fdatasync the open segment (blocking). 0 or -errno. */
int log_writer_sync(struct log_writer *w);
/* Forget every record not written yet, as a crash would, and recover the
 * open segment from the file (log_writer_open again, same settings). 0 or
 * -errno. For a writer whose write failed. */
int log_writer_reopen(struct log_writer *w, uint32_t slot_size);
void log_writer_close(struct log_writer *w);

/*
 * The reader: every segment of a directory mapped read-only, refreshed
 * when a lookup runs past what it knows.
 */
struct log_reader {
	char dir[PATH_MAX];
	uint64_t incarnation; /* 0: take the first segment's */
	struct log_seg *segs;
	size_t nsegs;
	bool loaded;
};

int log_reader_refresh(shmbus_bus_t *bus, struct log_reader *r);
void log_reader_close(struct log_reader *r);
/* The event at seq: 0, -ENOENT or -EBADMSG (damage recorded). */
int log_reader_get(shmbus_bus_t *bus, struct log_reader *r, uint64_t seq, const struct seg_event **out);
/* The first valid event record with a sequence in [from, to) for which
 * want() is true, in sequence order: 0 and *out, -ENOENT (none, as far
 * as the log is written), or -errno. Damaged records are reported and
 * skipped. */
int log_reader_next(shmbus_bus_t *bus, struct log_reader *r, uint64_t from, uint64_t to,
		    bool (*want)(const struct seg_event *ev, void *arg), void *arg, const struct seg_event **out);

/* Per-bus state of everything log-related, created on first use and freed
 * by shmbus_close (bus->log). */
struct log_state {
	pthread_mutex_t lock;
	struct log_reader reader;
	char **damage;
	size_t ndamage;
	pthread_mutex_t pub_lock; /* the publisher below is one thread's at a time */
	struct shmbus_pub *pub;	  /* for directed deliveries */
	pthread_mutex_t dlq_lock; /* with the dead-letter log's OFD lock */
	/* Where this handle last saw the dead-letter log's valid records
	 * end, which file that was, and the record that ended there (dlq.c):
	 * an append walks only what was added since, not the whole log.
	 * Under dlq_lock; end 0 = unknown. */
	struct dlq_seen {
		dev_t dev;
		ino_t ino;
		uint64_t header_sum;
		uint64_t end;
		uint64_t last, last_sum; /* the last record's offset (0: none) and checksum */
	} dlq_seen;
	struct log_map {
		void *base;
		size_t len;
		struct log_map *next;
	} *maps;		 /* dead-letter snapshots handed out */
	struct shmbus_recorder *recorder;
};

/* The bus's log state, created if needed (NULL only when out of memory). */
struct log_state *log_state_get(shmbus_bus_t *bus);
void log_state_free(shmbus_bus_t *bus);
/* Record a damaged spot (one sentence) and set it as the thread's message. */
int log_damage(shmbus_bus_t *bus, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* catchup.c: the lowest sequence a durable subscription may still need
 * from the log (its pending gap, events a consumer was handed from the
 * log and has not released, what is still in the ring), UINT64_MAX when
 * none; retention keeps every segment holding a sequence at or above it.
 * NULL bus: UINT64_MAX. */
uint64_t log_retain_floor(shmbus_bus_t *bus);

/* deliver.c: put a copy of event ev into the ring for subscription idx
 * (generation gen) only, with extra flags. 0 or -errno (-ESRCH when the
 * subscription is gone). */
int deliver_to(shmbus_bus_t *bus, uint32_t idx, uint64_t gen, const struct seg_event *ev, uint16_t add_flags);

/* Slots an event of size bytes takes on this bus. */
static inline uint32_t log_slots_for(const shmbus_bus_t *bus, uint32_t size)
{
	return (uint32_t)((size + (1u << bus->slot_size_shift) - 1) >> bus->slot_size_shift);
}

#endif
