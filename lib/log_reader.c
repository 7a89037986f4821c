/*
 * log_reader.c - reading the log in place: get_event by id (sequence ->
 * position in O(1) through the position table), get_events and scans by
 * time (binary search on the time table's running maximum) and criteria.
 *
 * Segments are mapped read-only once and stay mapped until shmbus_close,
 * so events handed out stay valid even if retention deletes their file.
 * Every record is checked (checksum, event check, sequence) before it is
 * returned; damage is recorded (shmbus_log_damage) and skipped, never
 * returned. A missing or corrupt index is rebuilt in memory from the
 * records, the one case where a whole segment is read.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log_seg.h"

void log_reader_close(struct log_reader *r)
{
	for (size_t i = 0; i < r->nsegs; i++)
		log_seg_close(&r->segs[i]);
	free(r->segs);
	memset(r, 0, sizeof *r);
}

static uint64_t seg_nrec(const struct log_seg *s)
{
	if (s->own_time)
		return s->nrec;
	uint64_t n = at_load_acquire_u64(&s->hdr->records);
	return n < s->cap ? n : s->cap;
}

static int rebuild(shmbus_bus_t *bus, struct log_seg *s, const char *idx_why)
{
	uint64_t end, bad;
	const char *why = NULL;
	uint32_t cap = s->hdr->capacity ? s->hdr->capacity : (uint32_t)(s->map_len / 64);
	int rc = log_seg_build_index(s, cap, true, &end, &bad, &why);
	if (rc < 0)
		return rc;
	log_damage(bus, EBADMSG, "index of segment '%s' is %s; rebuilt from the records", s->path, idx_why);
	if (bad)
		log_damage(bus, EBADMSG, "segment '%s': damaged record at offset %llu: %s", s->path,
			   (unsigned long long)bad, why);
	return 0;
}

int log_reader_refresh(shmbus_bus_t *bus, struct log_reader *r)
{
	int rc;
	/* Until a segment is mapped, the directory is looked up again: the
	 * bus's log root may be set after a first query found nothing
	 * (shmbus record --dir), and that query's lookup must not stick. */
	if (!r->loaded || !r->nsegs) {
		if ((rc = log_bus_dir(bus, NULL, r->dir, sizeof r->dir)) < 0)
			return rc;
		r->incarnation = bus->hdr->incarnation;
		r->loaded = true;
	}
	uint64_t *firsts;
	size_t n;
	if ((rc = log_list_segments(r->dir, &firsts, &n)) < 0)
		return rc == -ENOENT ? shmbus__fail(ENOENT, "bus '%s' has no log (no directory '%s')", bus->name, r->dir)
				     : rc;
	uint64_t last = r->nsegs ? r->segs[r->nsegs - 1].first_seq : 0;
	for (size_t i = 0; i < n; i++) {
		if (r->nsegs && firsts[i] <= last)
			continue;
		struct log_seg s;
		const char *idx_why;
		if (log_seg_open(&s, r->dir, firsts[i], false, &idx_why) < 0) {
			log_damage(bus, EBADMSG, "%s", shmbus_errmsg());
			continue;
		}
		if (s.hdr->incarnation != r->incarnation || strncmp(s.hdr->bus, bus->name, sizeof s.hdr->bus) != 0) {
			log_damage(bus, EPROTO, "segment '%s' belongs to bus '%.64s' incarnation %016llx, not to this bus",
				   s.path, s.hdr->bus, (unsigned long long)s.hdr->incarnation);
			log_seg_close(&s);
			continue;
		}
		if (!s.pos && rebuild(bus, &s, idx_why) < 0) {
			log_seg_close(&s);
			continue;
		}
		struct log_seg *ns = realloc(r->segs, (r->nsegs + 1) * sizeof *ns);
		if (!ns) {
			log_seg_close(&s);
			free(firsts);
			return shmbus__fail(ENOMEM, "out of memory");
		}
		r->segs = ns;
		r->segs[r->nsegs++] = s;
	}
	free(firsts);
	return 0;
}

static uint64_t first_at_delta(const struct log_seg *s, uint64_t n, uint64_t d);

/* Index of the last segment whose first_seq <= seq, or -1. */
static long seg_for_seq(const struct log_reader *r, uint64_t seq)
{
	long lo = 0, hi = (long)r->nsegs - 1, ans = -1;
	while (lo <= hi) {
		long mid = (lo + hi) / 2;
		if (r->segs[mid].first_seq <= seq) {
			ans = mid;
			lo = mid + 1;
		} else {
			hi = mid - 1;
		}
	}
	return ans;
}

/* The checked event record at off of s for seq, or an error with the
 * damage recorded. 1 means the index entry is wrong (not the record). */
static int record_at(shmbus_bus_t *bus, const struct log_seg *s, uint64_t off, uint64_t seq,
		     const struct seg_event **out)
{
	const char *why;
	if (off < LOG_DATA_OFF || off >= s->map_len || (off & 7))
		return 1;
	int rc = log_rec_check(s->base, s->map_len, off, &why);
	if (rc == 1)
		return 1;
	const struct log_record *rec = (const struct log_record *)(const void *)(s->base + off);
	if (rc < 0) {
		/* a record the index points at is damaged: report, never return */
		return log_damage(bus, EBADMSG, "segment '%s': record of sequence %llu at offset %llu is damaged: %s",
				  s->path, (unsigned long long)seq, (unsigned long long)off, why);
	}
	if (rec->kind != LOG_REC_EVENT || rec->seq != seq)
		return 1;
	*out = (const struct seg_event *)(const void *)rec->body;
	return 0;
}

int log_reader_get(shmbus_bus_t *bus, struct log_reader *r, uint64_t seq, const struct seg_event **out)
{
	int rc;
	for (int attempt = 0; attempt < 2; attempt++) {
		if ((attempt || !r->loaded) && (rc = log_reader_refresh(bus, r)) < 0)
			return rc;
		long i = seg_for_seq(r, seq);
		if (i < 0)
			continue;
		struct log_seg *s = &r->segs[i];
		uint64_t delta = seq - s->first_seq;
		if (delta >= s->cap)
			continue;
		uint32_t off = log_seg_pos(s, delta);
		if (off == 0) {
			if ((size_t)i + 1 < r->nsegs)
				break; /* not the newest segment: it is not there */
			continue;
		}
		rc = record_at(bus, s, off, seq, out);
		if (rc <= 0)
			return rc;
		if (!s->own_time) {
			/* the index lies: rebuild it from the records and look again */
			if ((rc = rebuild(bus, s, "inconsistent with its records")) < 0)
				return rc;
			off = log_seg_pos(s, delta);
			if (off && (rc = record_at(bus, s, off, seq, out)) <= 0)
				return rc;
		}
		break;
	}
	return shmbus__fail(ENOENT, "the log of bus '%s' holds no event at sequence %llu", bus->name,
			    (unsigned long long)seq);
}

/* Whether the reader must list the directory again before it can say
 * what lies past its last segment: never loaded, empty, or the last
 * segment sealed (its successor is a file it has not seen). */
static bool reader_stale(const struct log_reader *r)
{
	return !r->loaded || r->nsegs == 0 || at_load_acquire_u32(&r->segs[r->nsegs - 1].hdr->sealed);
}

int log_reader_next(shmbus_bus_t *bus, struct log_reader *r, uint64_t from, uint64_t to,
		    bool (*want)(const struct seg_event *ev, void *arg), void *arg, const struct seg_event **out)
{
	int rc;
	if (reader_stale(r) && (rc = log_reader_refresh(bus, r)) < 0)
		return rc;
	for (int attempt = 0; attempt < 2; attempt++) {
		long first = seg_for_seq(r, from);
		for (size_t si = first < 0 ? 0 : (size_t)first; si < r->nsegs; si++) {
			struct log_seg *s = &r->segs[si];
			if (s->first_seq >= to)
				return -ENOENT;
			uint64_t n = seg_nrec(s);
			uint64_t ei = from > s->first_seq ? first_at_delta(s, n, from - s->first_seq) : 0;
			for (; ei < n; ei++) {
				const struct log_time_entry *t = log_seg_time(s, ei);
				uint64_t seq = s->first_seq + t->pos_delta;
				if (seq >= to)
					return -ENOENT;
				const struct seg_event *ev;
				if (record_at(bus, s, t->off, seq, &ev) != 0)
					continue; /* damaged: reported, skipped */
				if (want(ev, arg)) {
					*out = ev;
					return 0;
				}
			}
		}
		/* past the last segment it knows: a newer one may have begun */
		if (attempt || !reader_stale(r) || (rc = log_reader_refresh(bus, r)) < 0)
			break;
	}
	return -ENOENT;
}

/* ---------------------------------------------------------------- public */

static struct log_state *reader_begin(shmbus_bus_t *bus, int *rc)
{
	if ((*rc = bus_check_usable(bus)) < 0)
		return NULL;
	struct log_state *st = log_state_get(bus);
	if (!st) {
		*rc = -ENOMEM;
		return NULL;
	}
	pthread_mutex_lock(&st->lock);
	return st;
}

SHMBUS_API int shmbus_get_event(shmbus_bus_t *bus, const shmbus_uuid_t *id, const shmbus_event_t **out)
{
	int rc;
	if (!id || !out)
		return shmbus__fail(EINVAL, "id or out is NULL");
	struct log_state *st = reader_begin(bus, &rc);
	if (!st)
		return rc;
	const struct seg_event *ev = NULL;
	rc = log_reader_get(bus, &st->reader, shmbus_uuid_seq(id), &ev);
	pthread_mutex_unlock(&st->lock);
	if (rc < 0)
		return rc;
	if (memcmp(ev->id, id->bytes, sizeof ev->id) != 0) {
		char text[SHMBUS_UUID_STR];
		shmbus_uuid_format(id, text);
		return shmbus__fail(ENOENT, "the log of bus '%s' holds no event %s", bus->name, text);
	}
	*out = (const shmbus_event_t *)(const void *)ev;
	return 0;
}

static bool str_is(const struct seg_event *ev, unsigned k, const char *want)
{
	return !want || strcmp(seg_event_string(ev, k), want) == 0;
}

static bool matches(const struct seg_event *ev, const shmbus_query_t *q)
{
	if (q->types && !(q->types & SHMBUS_TYPE_BIT(ev->type)))
		return false;
	if (q->since_ns && ev->published_ns < q->since_ns)
		return false;
	if (q->until_ns && ev->published_ns > q->until_ns)
		return false;
	if (ev->seq < q->from_seq)
		return false;
	return str_is(ev, SEG_STR_NAME, q->name) && str_is(ev, SEG_STR_SOURCE, q->source) &&
	       str_is(ev, SEG_STR_TARGET, q->target);
}

/* First time-table entry of s whose running maximum reaches t. */
static uint64_t first_at_time(const struct log_seg *s, uint64_t n, uint64_t t)
{
	uint64_t lo = 0, hi = n;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (log_seg_time(s, mid)->time_max < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* First time-table entry of s at or after position delta d (entries are
 * in sequence order). */
static uint64_t first_at_delta(const struct log_seg *s, uint64_t n, uint64_t d)
{
	uint64_t lo = 0, hi = n;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (log_seg_time(s, mid)->pos_delta < d)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Where a scan starts: segment and entry, by sequence and by time, both
 * found by binary search. */
static void scan_start(const struct log_reader *r, const shmbus_query_t *q, size_t *seg, uint64_t *entry)
{
	size_t si = 0;
	uint64_t ei = 0;
	if (q->from_seq) {
		long i = seg_for_seq(r, q->from_seq);
		if (i >= 0) {
			si = (size_t)i;
			const struct log_seg *s = &r->segs[si];
			ei = first_at_delta(s, seg_nrec(s), q->from_seq - s->first_seq);
		}
	}
	if (q->since_ns) {
		/* the running maximum is monotonic across segments too */
		size_t lo = si, hi = r->nsegs;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			const struct log_seg *s = &r->segs[mid];
			uint64_t n = seg_nrec(s);
			if (n && log_seg_time(s, n - 1)->time_max < q->since_ns)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo > si) {
			si = lo;
			ei = 0;
		}
		if (si < r->nsegs) {
			const struct log_seg *s = &r->segs[si];
			uint64_t e = first_at_time(s, seg_nrec(s), q->since_ns);
			if (e > ei)
				ei = e;
		}
	}
	*seg = si;
	*entry = ei;
}

SHMBUS_API int64_t shmbus_log_scan(shmbus_bus_t *bus, const shmbus_query_t *q, shmbus_event_fn fn, void *arg)
{
	int rc;
	shmbus_query_t all = {0};
	if (!q)
		q = &all;
	if (!fn)
		return shmbus__fail(EINVAL, "callback is NULL");
	struct log_state *st = reader_begin(bus, &rc);
	if (!st)
		return rc;
	struct log_reader *r = &st->reader;
	if ((rc = log_reader_refresh(bus, r)) < 0) {
		pthread_mutex_unlock(&st->lock);
		return rc;
	}
	size_t si;
	uint64_t ei;
	int64_t count = 0;
	scan_start(r, q, &si, &ei);
	/* only what the log held when the scan began: a replay that
	 * republishes must not meet its own copies */
	size_t nsegs = r->nsegs;
	uint64_t last_n = nsegs ? seg_nrec(&r->segs[nsegs - 1]) : 0;
	bool stop = false;
	for (; si < nsegs && !stop; si++, ei = 0) {
		struct log_seg *s = &r->segs[si];
		uint64_t n = si + 1 == nsegs ? last_n : seg_nrec(s);
		for (; ei < n; ei++) {
			const struct log_time_entry *t = log_seg_time(s, ei);
			const struct seg_event *ev;
			uint64_t seq = s->first_seq + t->pos_delta;
			if (record_at(bus, s, t->off, seq, &ev) != 0) {
				if (t->pos_delta < s->cap && log_seg_pos(s, t->pos_delta) != t->off)
					log_damage(bus, EBADMSG, "index of segment '%s': time entry %llu names offset %u",
						   s->path, (unsigned long long)ei, t->off);
				continue; /* damaged: reported, skipped */
			}
			/* The end of the window: an event claimed too late. Claim
			 * times (created_ns) follow sequence order within a lease's
			 * age; publish times do not: a zero-copy claim committed
			 * long after the events behind it stopped the scan at
			 * its publish time, before them. */
			if (q->until_ns && ev->created_ns > q->until_ns + LOG_TIME_SLACK_NS) {
				stop = true;
				break;
			}
			if (!matches(ev, q))
				continue;
			count++;
			if (!fn((const shmbus_event_t *)(const void *)ev, arg) || (q->limit && (uint64_t)count >= q->limit)) {
				stop = true;
				break;
			}
		}
	}
	pthread_mutex_unlock(&st->lock);
	return count;
}

struct collect {
	const shmbus_event_t **out;
	size_t cap, n;
};

static bool collect_one(const shmbus_event_t *ev, void *arg)
{
	struct collect *c = arg;
	if (c->n < c->cap)
		c->out[c->n] = ev;
	c->n++;
	return true;
}

SHMBUS_API int64_t shmbus_get_events(shmbus_bus_t *bus, const shmbus_query_t *q, const shmbus_event_t **out, size_t cap)
{
	if (!out && cap)
		return shmbus__fail(EINVAL, "out is NULL");
	struct collect c = {.out = out, .cap = cap};
	return shmbus_log_scan(bus, q, collect_one, &c);
}
