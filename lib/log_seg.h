/*
 * log_seg.h - segment files of a log directory (lib-internal).
 */
#ifndef SHMBUS_LIB_LOG_SEG_H
#define SHMBUS_LIB_LOG_SEG_H

#include "log.h"

/* The first sequences of every "<20 digits>.log" in dir, sorted. 0 or
 * -errno (message names the directory); *out is malloc'd. */
int log_list_segments(const char *dir, uint64_t **out, size_t *n);

/* "<dir>/<first>.<ext>". */
void log_seg_path(const char *dir, uint64_t first, const char *ext, char *out, size_t cap);

/*
 * log_seg_open - open and map segment `first` of dir after checking its
 * header (-EPROTO, -EBADMSG, -errno; the message names the file and what
 * is wrong). Its index is mapped too when usable; otherwise s->pos is NULL
 * and *idx_why says why.
 */
int log_seg_open(struct log_seg *s, const char *dir, uint64_t first, bool writable, const char **idx_why);

/* Whether time-table entry i (of the mapped or rebuilt table) names a
 * valid event record of this segment; 0 and its offset and seq, or
 * -EBADMSG. */
int log_seg_entry_ok(const struct log_seg *s, uint64_t i, uint64_t *off_out, uint64_t *seq_out);

/*
 * log_seg_build_index - index the segment in memory from its records
 * (for a missing or corrupt index file). At the first record that is not
 * a valid event of this segment it stops, or with past_damage looks for
 * the next valid one and goes on from there, as far as the header's tail
 * says records reach (a reader, or a segment kept sealed around damage
 * in its middle: what follows the damage stays reachable; not a writer
 * recovering a torn tail, which must end at the first damage). *end_off
 * is where the last record indexed ends; *bad_off is the first damaged
 * record's offset (0: none).
 */
int log_seg_build_index(struct log_seg *s, uint32_t cap, bool past_damage, uint64_t *end_off, uint64_t *bad_off,
			const char **bad_why);

static inline const struct log_time_entry *log_seg_time(const struct log_seg *s, uint64_t i)
{
	return s->own_time ? &s->own_time[i] : &s->time[i];
}
static inline uint32_t log_seg_pos(const struct log_seg *s, uint64_t delta)
{
	return s->own_pos ? s->own_pos[delta] : s->pos[delta];
}

#endif
