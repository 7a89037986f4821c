/*
 * dlq.c - the dead-letter log: one append-only file per bus,
 * <root>/<bus>/dead.log, whatever else is configured. A DEAD record holds
 * the letter and a copy of the event; a TOMB record retires the latest
 * letter of an event before it (cleared or retried). The live letters are
 * the DEAD records no later TOMB retired, so list, retry and clear work the
 * same across process restarts.
 *
 * Every change is made under a process mutex and an OFD lock on byte 0 of
 * the file (the kernel drops it if the holder dies), then synced. The
 * file is walked record by record; a damaged record is reported and
 * skipped by looking for the next valid one, so nothing intact after it is
 * lost, and an append goes after the last valid record (a torn one is
 * overwritten).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dlq.h"
#include "liveness.h"
#include "log.h"

struct dlq_file {
	char path[PATH_MAX];
	int fd;
	uint8_t *base; /* read-only map of size bytes (NULL when empty) */
	uint64_t size;
	uint64_t end;  /* after the last valid record */
	uint64_t last, last_sum; /* that record's offset (0: none) and checksum */
	/* which file (see dlq_find_end) */
	dev_t dev;
	ino_t ino;
	uint64_t header_sum;
};

static void dlq_close(struct dlq_file *f)
{
	if (f->base)
		munmap(f->base, f->size);
	/* explicitly: a mapping kept for the caller holds the open file
	 * description, and with it an OFD lock, beyond close() */
	if (f->fd >= 0)
		live_unlock(f->fd, 0);
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	f->base = NULL;
}

/* Open (creating) and lock the bus's dead-letter log, check its header and
 * map it. The caller holds st->dlq_lock. */
static int dlq_open_locked(shmbus_bus_t *bus, struct dlq_file *f, bool create)
{
	char dir[PATH_MAX];
	int rc;
	f->fd = -1;
	f->base = NULL;
	if ((rc = log_bus_dir(bus, NULL, dir, sizeof dir)) < 0)
		return rc;
	if (snprintf(f->path, sizeof f->path, "%s/dead.log", dir) >= (int)sizeof f->path)
		return shmbus__fail(ENAMETOOLONG, "dead-letter log path is too long");
	if (create && (rc = log_mkdirs(dir)) < 0)
		return rc;
	/* readers lock too, so they never mistake an append in progress for
	 * a torn record; a read-only file is read without the lock */
	bool locking = true;
	f->fd = open(f->path, (create ? O_RDWR | O_CREAT : O_RDWR) | O_CLOEXEC, 0600);
	if (f->fd < 0 && !create && errno == EACCES) {
		f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
		locking = false;
	}
	if (f->fd < 0) {
		if (errno == ENOENT && !create)
			return 1; /* no letters yet */
		return shmbus__fail(errno, "dead-letter log '%s': %s", f->path, strerror(errno));
	}
	if (locking && (rc = live_lock_wait(f->fd, 0)) < 0) {
		dlq_close(f);
		return shmbus__fail(-rc, "dead-letter log '%s': cannot lock it", f->path);
	}
	struct stat st;
	if (fstat(f->fd, &st) < 0)
		return shmbus__fail(errno, "dead-letter log '%s': %s", f->path, strerror(errno));
	f->size = (uint64_t)st.st_size;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	struct log_file_header h;
	if (f->size == 0 && create) {
		log_header_init(&h, LOG_KIND_DEAD, bus->hdr->incarnation, 0, bus->name, 0, now_real_ns());
		if (pwrite(f->fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
			return shmbus__fail(errno ? errno : EIO, "dead-letter log '%s': cannot write its header: %s",
					    f->path, strerror(errno ? errno : EIO));
		f->size = sizeof h;
	}
	if (pread(f->fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
		memset(&h, 0, sizeof h);
	const char *why;
	if ((rc = log_header_check(&h, f->size, LOG_KIND_DEAD, &why)) < 0)
		return shmbus__fail(-rc, "dead-letter log '%s': %s", f->path, why);
	f->header_sum = h.header_sum;
	if (h.incarnation != bus->hdr->incarnation || strncmp(h.bus, bus->name, sizeof h.bus) != 0)
		return shmbus__fail(EPROTO,
				    "dead-letter log '%s' belongs to another bus or an earlier bus '%s' "
				    "(kept with `shmbus rm --keep-log`? move the directory away)",
				    f->path, bus->name);
	void *p = mmap(NULL, (size_t)f->size, PROT_READ, MAP_SHARED, f->fd, 0);
	if (p == MAP_FAILED)
		return shmbus__fail(errno, "dead-letter log '%s': cannot map it", f->path);
	f->base = p;
	return 0;
}

/* Walk every valid record from offset `from` (a record boundary),
 * resynchronising after damage. fn may be NULL. Sets f->end after the
 * last valid record, and f->last to that record if the walk met one. */
static void dlq_walk_from(shmbus_bus_t *bus, struct dlq_file *f, uint64_t from,
			  void (*fn)(const struct log_record *r, void *arg), void *arg)
{
	uint64_t off = from;
	f->end = from;
	while (off < f->size) {
		const char *why = NULL;
		int rc = log_rec_check(f->base, f->size, off, &why);
		if (rc == 0) {
			const struct log_record *r = (const struct log_record *)(const void *)(f->base + off);
			if (r->kind != LOG_REC_EVENT) {
				if (fn)
					fn(r, arg);
				f->last = off;
				f->last_sum = r->checksum;
				off += log_rec_size(r->len);
				f->end = off;
				continue;
			}
			why = "an event record in a dead-letter log";
		}
		/* damage (or a zero gap): the next valid record, if any */
		uint64_t next = off + 8;
		const char *w2;
		while (next < f->size && log_rec_check(f->base, f->size, next, &w2) != 0)
			next += 8;
		if (next >= f->size) {
			if (rc < 0)
				log_damage(bus, EBADMSG, "dead-letter log '%s': torn record at offset %llu (%s) cut off",
					   f->path, (unsigned long long)off, why);
			return;
		}
		log_damage(bus, EBADMSG, "dead-letter log '%s': damaged bytes at offsets %llu..%llu (%s) skipped",
			   f->path, (unsigned long long)off, (unsigned long long)next, why ? why : "zero gap");
		off = next;
	}
}

static void dlq_walk(shmbus_bus_t *bus, struct dlq_file *f, void (*fn)(const struct log_record *r, void *arg),
		     void *arg)
{
	f->last = 0;
	dlq_walk_from(bus, f, LOG_DATA_OFF, fn, arg);
}

/* Set f->end for an append. The records before where this handle last
 * saw the end of this very file were valid then and are never rewritten
 * (records are only appended; a failed append cuts back to its own
 * start), so only what other processes added since is walked: an append
 * used to walk, and checksum, the whole log, a cost that grew with every
 * letter ever written. "This very file" is checked three ways: its device
 * and inode (not removed and made again), its header (not emptied and
 * given a new one), and the record that ended where we saw the end, still
 * there whole with the same checksum (not cut back by hand and grown
 * again by others, which would leave that offset inside their records).
 * Otherwise the file is walked from its start. */
static void dlq_find_end(shmbus_bus_t *bus, const struct log_state *st, struct dlq_file *f)
{
	const struct dlq_seen *seen = &st->dlq_seen;
	bool same = seen->end >= LOG_DATA_OFF && seen->end <= f->size && seen->dev == f->dev &&
		    seen->ino == f->ino && seen->header_sum == f->header_sum && f->base;
	if (same && seen->last) {
		const char *why;
		const struct log_record *r = (const struct log_record *)(const void *)(f->base + seen->last);
		same = seen->last < seen->end && log_rec_check(f->base, f->size, seen->last, &why) == 0 &&
		       r->checksum == seen->last_sum && seen->last + log_rec_size(r->len) == seen->end;
	} else if (same) {
		same = seen->end == LOG_DATA_OFF; /* no record then: walk them all */
	}
	if (!same) {
		dlq_walk(bus, f, NULL, NULL);
		return;
	}
	f->last = seen->last;
	f->last_sum = seen->last_sum;
	dlq_walk_from(bus, f, seen->end, NULL, NULL);
}

/* Remember where f's valid records end now (see dlq_find_end). */
static void dlq_note_end(struct log_state *st, const struct dlq_file *f)
{
	st->dlq_seen = (struct dlq_seen){.dev = f->dev, .ino = f->ino, .header_sum = f->header_sum,
					 .end = f->end, .last = f->last, .last_sum = f->last_sum};
}

/* Write one record (body, then body2: len + len2 bytes, kind, seq) at
 * f->end and move f->end past it, without a sync (dlq_commit). A record
 * that could not be written whole is cut off again. */
static int dlq_put(struct dlq_file *f, uint16_t kind, uint64_t seq, const void *body, uint32_t len,
		   const void *body2, uint32_t len2)
{
	uint64_t size = log_rec_size(len + len2);
	uint8_t *buf = calloc(1, (size_t)size);
	if (!buf)
		return shmbus__fail(ENOMEM, "out of memory");
	struct log_record *r = (struct log_record *)(void *)buf;
	memcpy(r->body, body, len);
	if (len2)
		memcpy(r->body + len, body2, len2);
	log_rec_seal(r, len + len2, kind, seq);
	uint64_t sum = r->checksum;
	ssize_t w = pwrite(f->fd, buf, (size_t)size, (off_t)f->end);
	free(buf);
	if (w != (ssize_t)size) {
		int e = w < 0 ? errno : ENOSPC;
		/* nothing half-written may pass for a record: cut it */
		if (ftruncate(f->fd, (off_t)f->end) < 0)
			(void)0;
		return shmbus__fail(e, "dead-letter log '%s': cannot append: %s", f->path, strerror(e));
	}
	f->last = f->end;
	f->last_sum = sum;
	f->end += size;
	return 0;
}

/* Store the header's tail (f->end) and sync what dlq_put wrote: one sync
 * for however many records. */
static int dlq_commit(struct dlq_file *f)
{
	uint64_t tail = f->end;
	if (pwrite(f->fd, &tail, sizeof tail, offsetof(struct log_file_header, tail)) != (ssize_t)sizeof tail ||
	    fdatasync(f->fd) < 0)
		return shmbus__fail(errno, "dead-letter log '%s': cannot sync: %s", f->path, strerror(errno));
	return 0;
}

/* Append one record and sync it. */
static int dlq_write(struct dlq_file *f, uint16_t kind, uint64_t seq, const void *body, uint32_t len,
		     const void *body2, uint32_t len2)
{
	int rc = dlq_put(f, kind, seq, body, len, body2, len2);
	return rc < 0 ? rc : dlq_commit(f);
}

/* The body of ev's DEAD record in *buf (grown as needed): the letter,
 * then a copy of the event without its delivery-time bits. Its length,
 * or -errno (an event that is not valid is not written). */
static int64_t letter_body(const struct seg_event *e, const struct dlq_entry_in *in, uint8_t **buf, size_t *cap)
{
	const char *why;
	if (seg_event_check(e, e->size, &why) < 0)
		return shmbus__fail(EBADMSG, "dead letter: the event is not valid: %s", why);
	size_t len = sizeof(struct log_dead) + e->size;
	if (len > *cap) {
		uint8_t *nb = realloc(*buf, len);
		if (!nb)
			return shmbus__fail(ENOMEM, "out of memory");
		*buf = nb;
		*cap = len;
	}
	struct log_dead d;
	memset(&d, 0, sizeof d);
	memcpy(d.event_id, e->id, sizeof d.event_id);
	d.sub = in->sub;
	d.dead_ns = now_real_ns();
	d.reason = (uint32_t)in->reason;
	d.attempts = in->attempts;
	d.last_error = in->last_error;
	snprintf(d.subscriber, sizeof d.subscriber, "%s", in->subscriber_id ? in->subscriber_id : "");
	snprintf(d.group, sizeof d.group, "%s", in->group ? in->group : "");
	struct seg_event head;
	event_copy_committed(&head, e, sizeof head);
	head.flags &= (uint16_t)~(SEG_EVF_REDELIVERED | SEG_EVF_DIRECTED);
	/* its handling failed, whatever the copy said: RETRYING on a retry's
	 * private copy, PUBLISHED on the ring's own */
	head.status = SHMBUS_STATUS_FAILED;
	memcpy(*buf, &d, sizeof d);
	memcpy(*buf + sizeof d, &head, sizeof head);
	memcpy(*buf + sizeof d + sizeof head, (const uint8_t *)e + sizeof head, e->size - sizeof head);
	return (int64_t)len;
}

/* Every letter's result is rc (a failure before any was tried). */
static int letters_fail(struct dlq_letter *letters, size_t n, int rc)
{
	for (size_t i = 0; i < n; i++)
		letters[i].rc = rc;
	return rc;
}

int dlq_append_letters(shmbus_bus_t *bus, struct dlq_letter *letters, size_t n)
{
	if (!letters)
		return n ? shmbus__fail(EINVAL, "letters is NULL") : 0;
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return letters_fail(letters, n, rc);
	if (n > INT32_MAX)
		return letters_fail(letters, n, shmbus__fail(EINVAL, "too many letters (%zu) for one append", n));
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!letters[i].ev || !letters[i].in)
			return letters_fail(letters, n, shmbus__fail(EINVAL, "letter %zu has no event or entry", i));
	for (size_t i = 0; i < n; i++)
		letters[i].rc = 0;
	struct log_state *st = log_state_get(bus);
	if (!st)
		return letters_fail(letters, n, -ENOMEM);
	uint8_t *body = NULL;
	size_t cap = 0;
	int written = 0;
	pthread_mutex_lock(&st->dlq_lock);
	struct dlq_file f;
	if ((rc = dlq_open_locked(bus, &f, true)) == 0) {
		dlq_find_end(bus, st, &f);
		size_t i = 0;
		for (; i < n; i++) {
			const struct seg_event *e = (const struct seg_event *)(const void *)letters[i].ev;
			int64_t len = letter_body(e, letters[i].in, &body, &cap);
			if (len >= 0)
				len = dlq_put(&f, LOG_REC_DEAD, e->seq, body, (uint32_t)len, NULL, 0);
			letters[i].rc = len < 0 ? (int)len : 0;
			if (len >= 0)
				written++;
			else if (len != -EBADMSG)
				break; /* the file or memory failed: the rest would too */
		}
		for (size_t j = i + (i < n); j < n; j++)
			letters[j].rc = letters[i].rc;
		/* what was written is synced, even after a failure; it counts
		 * as written only once synced */
		if (written && (rc = dlq_commit(&f)) < 0) {
			for (size_t j = 0; j < n; j++)
				if (letters[j].rc == 0)
					letters[j].rc = rc;
			written = 0;
		}
		dlq_note_end(st, &f);
	}
	if (rc < 0 && written == 0)
		for (size_t j = 0; j < n; j++)
			if (letters[j].rc == 0)
				letters[j].rc = rc;
	dlq_close(&f);
	pthread_mutex_unlock(&st->dlq_lock);
	free(body);
	if (written)
		return written;
	if (rc < 0)
		return rc; /* the file (open, sync) failed */
	for (size_t j = 0; j < n; j++)
		if (letters[j].rc < 0)
			return letters[j].rc;
	return 0;
}

int dlq_append(shmbus_bus_t *bus, const shmbus_event_t *ev, const struct dlq_entry_in *in)
{
	struct dlq_letter l = {.ev = ev, .in = in};
	if (!ev || !in)
		return shmbus__fail(EINVAL, "event or entry is NULL");
	int rc = dlq_append_letters(bus, &l, 1);
	return rc < 0 ? rc : l.rc;
}

/* ------------------------------------------------------------ live set */

struct live {
	const struct log_record **recs;
	size_t n, cap;
	bool oom;
};

static void collect(const struct log_record *r, void *arg)
{
	struct live *l = arg;
	if (r->kind == LOG_REC_TOMB) {
		const struct log_tomb *t = (const struct log_tomb *)(const void *)r->body;
		for (size_t i = l->n; i-- > 0;)
			if (memcmp(l->recs[i]->body, t->event_id, 16) == 0) {
				memmove(&l->recs[i], &l->recs[i + 1], (l->n - i - 1) * sizeof *l->recs);
				l->n--;
				break;
			}
		return;
	}
	if (l->n == l->cap) {
		size_t nc = l->cap ? 2 * l->cap : 64;
		const struct log_record **nr = realloc(l->recs, nc * sizeof *nr);
		if (!nr) {
			l->oom = true;
			return;
		}
		l->recs = nr;
		l->cap = nc;
	}
	l->recs[l->n++] = r;
}

static void to_letter(const struct log_record *r, shmbus_dead_letter_t *out)
{
	const struct log_dead *d = (const struct log_dead *)(const void *)r->body;
	memset(out, 0, sizeof *out);
	memcpy(out->event_id.bytes, d->event_id, 16);
	out->sub = d->sub;
	snprintf(out->subscriber_id, sizeof out->subscriber_id, "%s", d->subscriber);
	snprintf(out->group, sizeof out->group, "%s", d->group);
	out->reason = (shmbus_dead_reason_t)d->reason;
	out->attempts = d->attempts;
	out->last_error = d->last_error;
	out->dead_ns = d->dead_ns;
	out->event = (const shmbus_event_t *)(const void *)(r->body + sizeof *d);
}

/* Keep a mapping alive until shmbus_close (letters point into it). */
static void keep_map(struct log_state *st, struct dlq_file *f)
{
	struct log_map *m = malloc(sizeof *m);
	if (!m)
		return; /* then it is unmapped: no letter may point into it */
	m->base = f->base;
	m->len = (size_t)f->size;
	pthread_mutex_lock(&st->lock);
	m->next = st->maps;
	st->maps = m;
	pthread_mutex_unlock(&st->lock);
	f->base = NULL;
}

SHMBUS_API int shmbus_dlq_list(shmbus_bus_t *bus, shmbus_dead_letter_t *out, size_t cap)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out && cap)
		return shmbus__fail(EINVAL, "out is NULL");
	struct log_state *st = log_state_get(bus);
	if (!st)
		return -ENOMEM;
	pthread_mutex_lock(&st->dlq_lock);
	struct dlq_file f;
	struct live l = {0};
	rc = dlq_open_locked(bus, &f, false);
	if (rc == 0) {
		dlq_walk(bus, &f, collect, &l);
		if (l.oom) {
			rc = shmbus__fail(ENOMEM, "out of memory");
		} else {
			for (size_t i = 0; i < l.n && i < cap; i++)
				to_letter(l.recs[i], &out[i]);
			rc = l.n > INT32_MAX ? INT32_MAX : (int)l.n;
			if (l.n && cap)
				keep_map(st, &f);
		}
	} else if (rc == 1) {
		rc = 0;
	}
	free(l.recs);
	dlq_close(&f);
	pthread_mutex_unlock(&st->dlq_lock);
	return rc;
}

/* The subscription a letter was for: by id while it exists, else by its
 * durable key (subscriber id, or group). */
static int letter_target(shmbus_bus_t *bus, const struct log_dead *d, uint32_t *idx, uint64_t *gen)
{
	uint32_t i = (uint32_t)(d->sub & 0xFFFF);
	if (d->sub && i < bus->max_subs) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) == SEG_SUB_ACTIVE && at_load_acquire_u64(&s->generation) == d->sub >> 16) {
			*idx = i;
			*gen = d->sub >> 16;
			return 0;
		}
	}
	shmbus_sub_id_t id;
	if (d->group[0] && shmbus_find_subscription(bus, d->group, &id) == 0) {
		*idx = (uint32_t)(id & 0xFFFF);
		*gen = id >> 16;
		return 0;
	}
	if (d->subscriber[0] && shmbus_find_subscription(bus, d->subscriber, &id) == 0) {
		*idx = (uint32_t)(id & 0xFFFF);
		*gen = id >> 16;
		return 0;
	}
	return shmbus__fail(ESRCH, "the subscription of the letter (%llu, '%s') no longer exists",
			    (unsigned long long)d->sub, d->group[0] ? d->group : d->subscriber);
}

static int retire(shmbus_bus_t *bus, const shmbus_uuid_t *event_id, uint32_t action)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!event_id)
		return shmbus__fail(EINVAL, "event id is NULL");
	struct log_state *st = log_state_get(bus);
	if (!st)
		return -ENOMEM;
	char text[SHMBUS_UUID_STR];
	shmbus_uuid_format(event_id, text);
	pthread_mutex_lock(&st->dlq_lock);
	struct dlq_file f;
	struct live l = {0};
	if ((rc = dlq_open_locked(bus, &f, true)) == 0) {
		dlq_walk(bus, &f, collect, &l);
		const struct log_record *r = NULL;
		for (size_t i = l.n; i-- > 0 && !r;)
			if (memcmp(l.recs[i]->body, event_id->bytes, 16) == 0)
				r = l.recs[i];
		if (l.oom) {
			rc = shmbus__fail(ENOMEM, "out of memory");
		} else if (!r) {
			rc = shmbus__fail(ENOENT, "bus '%s' has no live dead letter for event %s", bus->name, text);
		} else {
			if (action == LOG_TOMB_RETRIED) {
				const struct log_dead *d = (const struct log_dead *)(const void *)r->body;
				uint32_t idx = 0;
				uint64_t gen = 0;
				if ((rc = letter_target(bus, d, &idx, &gen)) == 0)
					rc = deliver_to(bus, idx, gen, (const struct seg_event *)(const void *)(r->body + sizeof *d), 0);
			}
			if (rc == 0) {
				struct log_tomb t = {.action = action, .time_ns = now_real_ns()};
				memcpy(t.event_id, event_id->bytes, 16);
				rc = dlq_write(&f, LOG_REC_TOMB, 0, &t, sizeof t, NULL, 0);
			}
			dlq_note_end(st, &f);
		}
	}
	free(l.recs);
	dlq_close(&f);
	pthread_mutex_unlock(&st->dlq_lock);
	return rc;
}

SHMBUS_API int shmbus_dlq_retry(shmbus_bus_t *bus, const shmbus_uuid_t *event_id)
{
	return retire(bus, event_id, LOG_TOMB_RETRIED);
}

SHMBUS_API int shmbus_dlq_clear(shmbus_bus_t *bus, const shmbus_uuid_t *event_id)
{
	return retire(bus, event_id, LOG_TOMB_CLEARED);
}

SHMBUS_API int shmbus_find_subscription(shmbus_bus_t *bus, const char *key, shmbus_sub_id_t *out)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!key || !out)
		return shmbus__fail(EINVAL, "key or out is NULL");
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
			continue;
		uint32_t f = at_load_acquire_u32(&s->flags);
		bool hit = (f & SEG_SUB_GROUP) ? strncmp(s->group, key, sizeof s->group) == 0
					       : strncmp(s->subscriber, key, sizeof s->subscriber) == 0;
		if (hit) {
			*out = sub_id_make(i, at_load_acquire_u64(&s->generation));
			return 0;
		}
	}
	return shmbus__fail(ENOENT, "bus '%s' has no subscription '%s'", bus->name, key);
}
