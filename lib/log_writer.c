/*
 * log_writer.c - appending event records to a log directory: creating
 * segments, recovering the last one after a crash, rolling by size and
 * index capacity, and retention by size and age.
 *
 * Records are written in batches (log.h). Order of stores: the events of
 * a batch are copied into reserved room of a private staging copy; then,
 * record by record, the record header with its checksum there and the
 * index entries (position, time) in the index mapping; then, once per
 * publish, a pwrite of the sealed records as whole pages and only after it
 * the segment header's tail/records/next_pos (release). A writer killed at
 * any point loses what it had not written, and leaves at worst records the
 * header does not count, or index entries past the header's count;
 * log_writer_open repairs both. (A torn pwrite, at a power cut, leaves a
 * torn record after the last complete one: recovery cuts it.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log_seg.h"

static uint64_t round_page(uint64_t v) { return (v + 4095) & ~4095ull; }

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

/* Create a file of size bytes with header h, through a temporary name so
 * a crash never leaves a half-made file under the real one. */
static int create_file(const char *dir, const char *path, const struct log_file_header *h, uint64_t size)
{
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	unlink(tmp);
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return shmbus__fail(errno, "log directory '%s': cannot create '%s': %s", dir, tmp, strerror(errno));
	int e = posix_fallocate(fd, 0, (off_t)size);
	if (e) {
		close(fd);
		unlink(tmp);
		if (e == ENOSPC)
			return shmbus__fail(ENOSPC, "log directory '%s' is full: cannot allocate %llu bytes for '%s'", dir,
					    (unsigned long long)size, path);
		return shmbus__fail(e, "log directory '%s': cannot allocate '%s': %s", dir, path, strerror(e));
	}
	if (pwrite(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h || rename(tmp, path) < 0) {
		e = errno ? errno : EIO;
		close(fd);
		unlink(tmp);
		return shmbus__fail(e, "log directory '%s': cannot write '%s': %s", dir, path, strerror(e));
	}
	close(fd);
	return 0;
}

static int create_index(struct log_writer *w, uint64_t first)
{
	char path[PATH_MAX];
	struct log_file_header h;
	log_seg_path(w->dir, first, "idx", path, sizeof path);
	unlink(path);
	log_header_init(&h, LOG_KIND_INDEX, w->incarnation, first, w->bus, w->index_positions, now_real_ns());
	return create_file(w->dir, path, &h, log_index_size(w->index_positions));
}

/*
 * Staging. Records are not stored through the segment's mapping: the first
 * store to a page of a fresh (fallocated, unwritten) segment faults and
 * the kernel zeroes the page before it is written, about a fifth of all
 * CPU time of a recording bus with two CPUs, whether it is done in the
 * fault or prefaulted on an io_uring worker. A buffered write that covers
 * a whole page needs no zeroing. So a batch is built in w->stage, a private
 * copy of file range [stage_off, wtail) whose start is page-aligned (the
 * partial page of the written records is kept there as it is in the file),
 * and publish pwrites the committed records as whole pages, padded with
 * zeros to the page end: the file is all zeros past the records anyway,
 * and the next publish rewrites that page from the same copy.
 *
 * The staging buffer is as big as the segment (a batch never outgrows its
 * segment), anonymous and never given back, so its pages are zeroed once
 * and then reused batch after batch: only [0, one batch) of it is touched.
 */
static int stage_fit(struct log_writer *w)
{
	uint64_t need = w->seg.map_len;
	if (need <= w->stage_cap)
		return 0;
	void *p = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return shmbus__fail(errno, "segment '%s': cannot map a staging buffer of %llu bytes: %s", w->seg.path,
				    (unsigned long long)need, strerror(errno));
	if (w->stage)
		munmap(w->stage, (size_t)w->stage_cap);
	w->stage = p;
	w->stage_cap = need;
	return 0;
}

/* Start staging at the written tail of the open segment: the staging copy
 * of its partial page is read from the file (nothing is pending). */
static int stage_at_tail(struct log_writer *w)
{
	int rc = stage_fit(w);
	if (rc < 0)
		return rc;
	w->stage_off = w->tail & ~4095ull;
	w->wrote = w->tail;
	w->wtail = w->tail;
	if (w->tail > w->stage_off)
		memcpy(w->stage, w->seg.base + w->stage_off, (size_t)(w->tail - w->stage_off));
	return 0;
}

static void stage_free(struct log_writer *w)
{
	if (w->stage)
		munmap(w->stage, (size_t)w->stage_cap);
	w->stage = NULL;
	w->stage_cap = 0;
}

/*
 * Prefaulting the index. Its entries are still stored through its mapping
 * (they are small and readers ignore entries the header does not count);
 * MADV_POPULATE_WRITE makes a chunk of its pages ahead of the writer in one
 * call, several times cheaper a page than faulting them one by one.
 */
#define LOG_POPULATE_CHUNK (1u << 20)

static void populate(uint8_t *base, uint64_t len, uint64_t need, uint64_t *done)
{
#ifdef MADV_POPULATE_WRITE
	if (need <= *done || *done >= len)
		return;
	uint64_t from = *done & ~4095ull, to = (need + LOG_POPULATE_CHUNK + 4095) & ~4095ull;
	if (to > len)
		to = len;
	(void)madvise(base + from, (size_t)(to - from), MADV_POPULATE_WRITE); /* a hint: faults do it otherwise */
	*done = to;
#else
	(void)base, (void)len, (void)need, (void)done;
#endif
}

/* Populate the index tables the next record (position delta pos_end)
 * will touch. */
static void populate_index(struct log_writer *w, uint64_t pos_end)
{
	struct log_seg *s = &w->seg;
	uint64_t t = LOG_HEADER_SIZE + (uint64_t)s->cap * 4;
	populate(s->idx, s->idx_len, t + (s->nrec + w->pending + 1) * sizeof(struct log_time_entry), &w->pop_time);
	populate(s->idx, t, LOG_HEADER_SIZE + pos_end * 4, &w->pop_pos);
}

/* What is written already is mapped already: populating starts at the
 * tail (a recovered segment's pages before it may not even be cached). */
static void populated_to_tail(struct log_writer *w)
{
	struct log_seg *s = &w->seg;
	w->pop_time = (LOG_HEADER_SIZE + (uint64_t)s->cap * 4 + s->nrec * sizeof(struct log_time_entry)) & ~4095ull;
	w->pop_pos = (LOG_HEADER_SIZE + (w->next_pos > s->first_seq ? w->next_pos - s->first_seq : 0) * 4) & ~4095ull;
}

/* A new segment whose first event will be at `first`, big enough for a
 * record of rec_bytes. */
static int segment_create(struct log_writer *w, uint64_t first, uint64_t rec_bytes)
{
	char path[PATH_MAX];
	struct log_file_header h;
	int rc;
	uint64_t size = w->segment_bytes;
	if (LOG_DATA_OFF + rec_bytes > size)
		size = round_page(LOG_DATA_OFF + rec_bytes);
	log_seg_path(w->dir, first, "log", path, sizeof path);
	if (access(path, F_OK) == 0)
		return shmbus__fail(EEXIST, "segment '%s' exists already (another writer, or a damaged log)", path);
	if ((rc = create_index(w, first)) < 0)
		return rc;
	log_header_init(&h, LOG_KIND_SEGMENT, w->incarnation, first, w->bus, w->index_positions, now_real_ns());
	h.next_pos = first;
	h.time_max = w->time_max;
	if ((rc = create_file(w->dir, path, &h, size)) < 0)
		return rc;
	fsync_dir(w->dir); /* the new names survive a power cut with the data */
	const char *idx_why;
	if ((rc = log_seg_open(&w->seg, w->dir, first, true, &idx_why)) < 0)
		return rc;
	if (!w->seg.pos) {
		log_seg_close(&w->seg);
		return shmbus__fail(EIO, "index of segment '%s' is %s right after creating it", path, idx_why);
	}
	w->tail = LOG_DATA_OFF;
	w->seg.nrec = 0;
	if ((rc = stage_at_tail(w)) < 0) {
		log_seg_close(&w->seg);
		return rc;
	}
	populated_to_tail(w);
	w->segments_created++;
	return 0;
}

/* Delete the oldest sealed segments beyond the size or age budget. */
static void retain(struct log_writer *w)
{
	if (!w->retain_bytes && !w->retain_ns)
		return;
	uint64_t *firsts;
	size_t n;
	if (log_list_segments(w->dir, &firsts, &n) < 0)
		return;
	uint64_t total = 0, now = now_real_ns(), floor = log_retain_floor(w->spare);
	struct stat st;
	char path[PATH_MAX];
	for (size_t i = 0; i < n; i++) {
		log_seg_path(w->dir, firsts[i], "log", path, sizeof path);
		if (stat(path, &st) == 0)
			total += (uint64_t)st.st_size;
	}
	for (size_t i = 0; i + 1 < n && firsts[i] != w->seg.first_seq; i++) {
		log_seg_path(w->dir, firsts[i], "log", path, sizeof path);
		struct log_file_header h;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		bool ok = pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h && fstat(fd, &st) == 0;
		close(fd);
		if (!ok)
			continue;
		bool too_big = w->retain_bytes && total > w->retain_bytes;
		bool too_old = w->retain_ns && h.time_max && h.time_max + w->retain_ns < now;
		if (!too_big && !too_old)
			break; /* oldest first: once one stays, the newer ones do too */
		if (!w->retain_force && firsts[i + 1] > floor)
			break; /* a durable subscription still needs it */
		char idx[PATH_MAX];
		log_seg_path(w->dir, firsts[i], "idx", idx, sizeof idx);
		unlink(idx);
		if (unlink(path) == 0)
			total -= (uint64_t)st.st_size;
	}
	free(firsts);
}

static void seal(struct log_writer *w)
{
	if (!w->seg.base)
		return;
	at_store_release_u32(&w->seg.hdr->sealed, 1);
	log_seg_close(&w->seg);
}

uint8_t *log_writer_reserve(struct log_writer *w, uint64_t seq, uint32_t slots, uint32_t len, int *rc)
{
	uint64_t rs = log_rec_size(len);
	*rc = 0;
	if (w->seg.base) {
		bool full = w->wtail + rs > w->seg.map_len || w->seg.nrec + w->pending >= w->seg.cap ||
			    seq < w->seg.first_seq || seq + slots - w->seg.first_seq > w->seg.cap;
		if (full) {
			if (w->pending)
				return NULL; /* the batch is committed first; the next reserve rolls */
			if ((*rc = log_writer_publish(w)) < 0)
				return NULL;
			if (w->sync_on_roll && fdatasync(w->seg.fd) < 0) {
				*rc = shmbus__fail(errno, "segment '%s': fdatasync: %s", w->seg.path, strerror(errno));
				return NULL;
			}
			seal(w);
		}
	}
	if (!w->seg.base) {
		if ((*rc = segment_create(w, seq, rs)) < 0)
			return NULL;
		retain(w);
	}
	populate_index(w, seq + slots - w->seg.first_seq);
	uint8_t *rec = w->stage + (w->wtail - w->stage_off); /* commit seals its header and padding */
	w->wtail += rs;
	w->pending++;
	return rec + LOG_REC_HDR;
}

void log_writer_commit(struct log_writer *w, uint64_t seq, uint32_t slots, uint32_t len)
{
	struct log_seg *s = &w->seg;
	struct log_record *r = (struct log_record *)(void *)(w->stage + (w->tail - w->stage_off));
	log_rec_seal(r, len, LOG_REC_EVENT, seq);
	const struct seg_event *ev = (const struct seg_event *)(const void *)r->body;
	if (ev->published_ns > w->time_max)
		w->time_max = ev->published_ns;
	/* the index may name the record before it is written: readers and
	 * recovery believe no entry the header does not count, and check the
	 * record each one names */
	uint32_t delta = (uint32_t)(seq - s->first_seq);
	s->pos[delta] = (uint32_t)w->tail;
	s->time[s->nrec].time_max = w->time_max;
	s->time[s->nrec].off = (uint32_t)w->tail;
	s->time[s->nrec].pos_delta = delta;
	s->nrec++;
	w->pending--;
	w->tail += log_rec_size(len);
	w->next_pos = seq + slots;
	w->has_records = true;
}

void log_writer_discard(struct log_writer *w)
{
	/* nothing of it reached the file: forgetting the reservations is
	 * enough (publish writes up to tail only, and zeroes past it) */
	w->wtail = w->tail;
	w->pending = 0;
}

int log_writer_write(struct log_writer *w)
{
	if (!w->seg.base || w->wrote == w->tail)
		return 0;
	uint64_t end = round_page(w->tail), len = end - w->stage_off;
	uint64_t keep = w->tail - w->stage_off;
	if (end > w->seg.map_len)
		end = w->seg.map_len, len = end - w->stage_off;
	memset(w->stage + keep, 0, (size_t)(len - keep)); /* the rest of the last page, zero as in the file */
	for (uint64_t done = 0; done < len;) {
		ssize_t n = pwrite(w->seg.fd, w->stage + done, (size_t)(len - done), (off_t)(w->stage_off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return shmbus__fail(n < 0 ? errno : EIO, "segment '%s': cannot write records at offset %llu: %s",
					    w->seg.path, (unsigned long long)(w->stage_off + done),
					    strerror(n < 0 ? errno : EIO));
		done += (uint64_t)n;
	}
	w->wrote = w->tail;
	/* keep the partial last page as the start of the next batch's copy */
	uint64_t page = w->tail & ~4095ull;
	if (page > w->stage_off) {
		if (w->tail > page)
			memcpy(w->stage, w->stage + (page - w->stage_off), (size_t)(w->tail - page));
		w->stage_off = page;
	}
	return 0;
}

int log_writer_publish(struct log_writer *w)
{
	struct log_seg *s = &w->seg;
	int rc;
	if (!s->base)
		return 0;
	if ((rc = log_writer_write(w)) < 0)
		return rc;
	if (at_load_relaxed_u64(&s->hdr->records) == s->nrec)
		return 0;
	/* only now that the records are in the file (the page cache: they
	 * outlive this process) may the header count them */
	s->hdr->next_pos = w->next_pos;
	s->hdr->time_max = w->time_max;
	at_store_release_u64(&s->hdr->tail, w->tail);
	at_store_release_u64(&s->hdr->records, s->nrec);
	return 0;
}

int log_writer_sync(struct log_writer *w)
{
	if (w->seg.fd >= 0 && w->seg.base && fdatasync(w->seg.fd) < 0)
		return shmbus__fail(errno, "segment '%s': fdatasync: %s", w->seg.path, strerror(errno));
	return 0;
}

/* Zero everything from off to the end of the file: the torn record and
 * any garbage after it, so nothing there can ever pass for a record. */
static void cut_tail(struct log_seg *s, uint64_t off)
{
	uint64_t len = s->map_len - off;
	if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		posix_fallocate(s->fd, (off_t)off, (off_t)len); /* keep the space reserved */
	else
		memset(s->base + off, 0, (size_t)len);
}

/* Rewrite the index of the open segment from its records (the index file
 * is recreated), up to the first damaged record or, with past_damage, of
 * every valid record (log_seg_build_index). Returns where the records
 * indexed end and, in *bad_off, the first damaged record's offset (0:
 * none). */
static int reindex(struct log_writer *w, bool past_damage, uint64_t *end, uint64_t *bad_off, const char **why)
{
	uint64_t first = w->seg.first_seq;
	int rc;
	munmap(w->seg.idx, w->seg.idx_len);
	if (w->seg.idx_fd >= 0)
		close(w->seg.idx_fd);
	w->seg.idx = NULL;
	w->seg.idx_fd = -1;
	w->seg.pos = NULL;
	w->seg.time = NULL;
	if ((rc = create_index(w, first)) < 0)
		return rc;
	if ((rc = log_seg_build_index(&w->seg, w->index_positions, past_damage, end, bad_off, why)) < 0)
		return rc;
	/* reopen to map the new index writable, then copy the rebuilt table */
	struct log_seg tmp = w->seg;
	const char *idx_why;
	w->seg.own_time = NULL;
	w->seg.own_pos = NULL;
	w->seg.base = NULL;
	w->seg.fd = -1;
	log_seg_close(&w->seg);
	if ((rc = log_seg_open(&w->seg, w->dir, first, true, &idx_why)) < 0 || !w->seg.pos) {
		free(tmp.own_time);
		free(tmp.own_pos);
		munmap(tmp.base, tmp.map_len);
		close(tmp.fd);
		return rc < 0 ? rc : shmbus__fail(EIO, "index of '%s' is %s after rebuilding it", w->seg.path, idx_why);
	}
	memcpy(w->seg.pos, tmp.own_pos, (size_t)w->seg.cap * 4);
	memcpy(w->seg.time, tmp.own_time, (size_t)tmp.nrec * sizeof *w->seg.time);
	w->seg.nrec = tmp.nrec;
	free(tmp.own_time);
	free(tmp.own_pos);
	munmap(tmp.base, tmp.map_len);
	close(tmp.fd);
	return 0;
}

/* Where the log ends, from time-table entry i (verified) of s. */
static void note_last(struct log_writer *w, const struct log_seg *s, uint64_t i, uint32_t slot_size)
{
	const struct log_time_entry *t = &s->time[i];
	const struct log_record *r = (const struct log_record *)(const void *)(s->base + t->off);
	const struct seg_event *ev = (const struct seg_event *)(const void *)r->body;
	w->next_pos = r->seq + (ev->size + slot_size - 1) / slot_size;
	w->time_max = t->time_max;
	w->has_records = true;
}

/* Recover the last segment: find the last record the index vouches for,
 * index what follows it, and cut a torn tail. */
static int recover(struct log_writer *w, uint32_t slot_size)
{
	struct log_seg *s = &w->seg;
	uint64_t off = LOG_DATA_OFF, bad = 0, k = 0;
	const char *why = NULL;
	bool reindexed = false;
	int rc;
	if (!s->pos || s->cap != w->index_positions) {
		if (s->pos && s->cap != w->index_positions)
			w->index_positions = s->cap; /* keep the segment's own geometry */
		else if ((rc = reindex(w, false, &off, &bad, &why)) < 0)
			return rc;
		else
			reindexed = true;
		k = s->nrec;
	}
	if (s->pos && k == 0) {
		uint64_t n = at_load_acquire_u64(&s->hdr->records);
		if (n > s->cap)
			n = s->cap;
		uint64_t eoff, eseq;
		for (k = n; k > 0 && log_seg_entry_ok(s, k - 1, &eoff, &eseq) < 0; k--)
			;
		if (k > 0) {
			const struct log_record *r = (const struct log_record *)(const void *)(s->base + eoff);
			off = eoff + log_rec_size(r->len);
		}
		/* forward: records the index missed (the writer died before
		 * indexing them) */
		uint64_t tmax = k ? s->time[k - 1].time_max : w->time_max;
		for (;;) {
			rc = log_rec_check(s->base, s->map_len, off, &why);
			if (rc == 1)
				break;
			const struct log_record *r = (const struct log_record *)(const void *)(s->base + off);
			if (rc < 0 || r->kind != LOG_REC_EVENT || r->seq < s->first_seq ||
			    r->seq - s->first_seq >= s->cap || k >= s->cap) {
				bad = off;
				if (!why || rc == 0)
					why = "record does not belong in this segment";
				break;
			}
			const struct seg_event *ev = (const struct seg_event *)(const void *)r->body;
			if (ev->published_ns > tmax)
				tmax = ev->published_ns;
			s->pos[r->seq - s->first_seq] = (uint32_t)off;
			s->time[k].time_max = tmax;
			s->time[k].off = (uint32_t)off;
			s->time[k].pos_delta = (uint32_t)(r->seq - s->first_seq);
			k++;
			off += log_rec_size(r->len);
		}
		s->nrec = k;
	}
	uint64_t said_tail = at_load_acquire_u64(&s->hdr->tail);
	if (bad && said_tail > bad && said_tail <= s->map_len) {
		/* The header said records continue past the damage: a byte went
		 * bad in the middle. Keep the segment as it is (the index still
		 * reaches what follows), write on in a new one. */
		shmbus__fail(EBADMSG, "segment '%s': damaged record at offset %llu (%s); sealed, new records go to a new segment",
			     s->path, (unsigned long long)bad, why);
		w->damaged = true;
		/* an index rebuilt above ends at the damage: index what follows
		 * it too, or readers never reach it */
		if (reindexed) {
			uint64_t end2, bad2;
			const char *why2;
			if ((rc = reindex(w, true, &end2, &bad2, &why2)) < 0)
				return rc;
			at_store_release_u64(&s->hdr->records, s->nrec); /* the new index's entries */
		}
		uint64_t n = at_load_acquire_u64(&s->hdr->records), eoff, eseq;
		if (n > s->cap)
			n = s->cap;
		for (uint64_t i = n; i-- > s->nrec;)
			if (log_seg_entry_ok(s, i, &eoff, &eseq) == 0) {
				note_last(w, s, i, slot_size);
				break;
			}
		if (!w->has_records && s->nrec)
			note_last(w, s, s->nrec - 1, slot_size);
		seal(w);
		return 0;
	}
	if (bad || off < s->map_len) {
		if (bad)
			w->cut_at = bad;
		cut_tail(s, off);
		/* forget index entries of records that are gone */
		uint64_t n = at_load_acquire_u64(&s->hdr->records);
		for (uint64_t i = s->nrec; i < n && i < s->cap; i++) {
			if (s->time[i].pos_delta < s->cap && s->pos[s->time[i].pos_delta] == s->time[i].off)
				s->pos[s->time[i].pos_delta] = 0;
			memset(&s->time[i], 0, sizeof s->time[i]);
		}
	}
	w->tail = off;
	if (s->nrec)
		note_last(w, s, s->nrec - 1, slot_size);
	s->hdr->next_pos = w->next_pos;
	at_store_release_u64(&s->hdr->tail, w->tail);
	at_store_release_u64(&s->hdr->records, s->nrec);
	if (at_load_acquire_u32(&s->hdr->sealed))
		seal(w);
	return 0;
}

int log_writer_open(struct log_writer *w, const char *dir, const char *bus, uint64_t incarnation,
		    uint32_t slot_size, uint64_t segment_bytes, uint32_t index_positions)
{
	int rc;
	memset(w, 0, sizeof *w);
	w->seg.fd = w->seg.idx_fd = -1;
	snprintf(w->dir, sizeof w->dir, "%s", dir);
	snprintf(w->bus, sizeof w->bus, "%s", bus);
	w->incarnation = incarnation;
	w->segment_bytes = segment_bytes ? segment_bytes : LOG_DEFAULT_SEGMENT_BYTES;
	if (w->segment_bytes < LOG_MIN_SEGMENT_BYTES)
		w->segment_bytes = LOG_MIN_SEGMENT_BYTES;
	w->segment_bytes = round_page(w->segment_bytes);
	if (w->segment_bytes > UINT32_MAX)
		w->segment_bytes = UINT32_MAX & ~4095ull; /* offsets are u32 */
	w->index_positions = index_positions ? index_positions : (uint32_t)(w->segment_bytes / 128);
	if ((rc = log_mkdirs(dir)) < 0)
		return rc;
	uint64_t *firsts;
	size_t n;
	if ((rc = log_list_segments(dir, &firsts, &n)) < 0)
		return rc;
	/* the newest segment with a record decides where the log ends;
	 * empty ones after it are leftovers of a writer that died at once */
	while (n > 0) {
		const char *idx_why;
		rc = log_seg_open(&w->seg, dir, firsts[n - 1], true, &idx_why);
		if (rc < 0)
			break;
		const struct log_file_header *h = w->seg.hdr;
		if (h->incarnation != incarnation || strncmp(h->bus, bus, sizeof h->bus) != 0) {
			rc = shmbus__fail(EPROTO,
					  "segment '%s' belongs to bus '%.64s' (incarnation %016llx), not to this bus "
					  "'%s' (%016llx): move the log directory away or remove it",
					  w->seg.path, h->bus, (unsigned long long)h->incarnation, bus,
					  (unsigned long long)incarnation);
			log_seg_close(&w->seg);
			break;
		}
		if ((rc = recover(w, slot_size)) < 0) {
			log_seg_close(&w->seg);
			break;
		}
		if (w->has_records || w->damaged)
			break;
		/* empty: remove it and look at the one before */
		char path[PATH_MAX];
		log_seg_close(&w->seg);
		log_seg_path(dir, firsts[n - 1], "idx", path, sizeof path);
		unlink(path);
		log_seg_path(dir, firsts[n - 1], "log", path, sizeof path);
		unlink(path);
		n--;
	}
	free(firsts);
	w->wtail = w->tail;
	if (w->seg.base && rc >= 0) {
		if ((rc = stage_at_tail(w)) < 0)
			log_seg_close(&w->seg);
		else
			populated_to_tail(w);
	}
	return rc;
}

void log_writer_close(struct log_writer *w)
{
	if (w->seg.base) {
		log_writer_discard(w);
		(void)log_writer_publish(w); /* what fails to be written was never counted */
	}
	log_seg_close(&w->seg);
	stage_free(w);
}

int log_writer_reopen(struct log_writer *w, uint32_t slot_size)
{
	struct log_writer keep = *w;
	log_seg_close(&w->seg); /* no publish: the header must count nothing more */
	stage_free(w);
	int rc = log_writer_open(w, keep.dir, keep.bus, keep.incarnation, slot_size, keep.segment_bytes,
				 keep.index_positions);
	w->retain_bytes = keep.retain_bytes;
	w->retain_ns = keep.retain_ns;
	w->retain_force = keep.retain_force;
	w->spare = keep.spare;
	w->sync_on_roll = keep.sync_on_roll;
	w->segments_created = keep.segments_created;
	return rc;
}
