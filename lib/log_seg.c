/*
 * log_seg.c - one segment file and its index, mapped; listing a log
 * directory. Shared by the writer and the readers, so both check the same
 * things the same way: the header before anything else, every index entry
 * against the record it names before it is believed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log_seg.h"

void log_seg_close(struct log_seg *s)
{
	if (s->base)
		munmap(s->base, s->map_len);
	if (s->idx)
		munmap(s->idx, s->idx_len);
	if (s->fd >= 0)
		close(s->fd);
	if (s->idx_fd >= 0)
		close(s->idx_fd);
	free(s->own_time);
	free(s->own_pos);
	memset(s, 0, sizeof *s);
	s->fd = s->idx_fd = -1;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int log_list_segments(const char *dir, uint64_t **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return shmbus__fail(errno, "log directory '%s': %s", dir, strerror(errno));
	size_t cap = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d))) {
		uint64_t first;
		if (log_parse_name(e->d_name, "log", &first) < 0)
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			uint64_t *nv = realloc(*out, cap * sizeof *nv);
			if (!nv) {
				rc = shmbus__fail(ENOMEM, "out of memory");
				break;
			}
			*out = nv;
		}
		(*out)[(*n)++] = first;
	}
	closedir(d);
	if (rc < 0) {
		free(*out);
		*out = NULL;
		*n = 0;
		return rc;
	}
	if (*n)
		qsort(*out, *n, sizeof **out, cmp_u64);
	return 0;
}

void log_seg_path(const char *dir, uint64_t first, const char *ext, char *out, size_t cap)
{
	char name[40];
	log_segment_name(first, ext, name, sizeof name);
	snprintf(out, cap, "%s/%s", dir, name);
}

static int map_fd(int fd, uint64_t len, bool writable, uint8_t **out)
{
	void *p = mmap(NULL, (size_t)len, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

/* The index of s, if it is usable: header right, same segment, fits. */
static void open_index(struct log_seg *s, const char *dir, bool writable, const char **idx_why)
{
	char path[PATH_MAX];
	log_seg_path(dir, s->first_seq, "idx", path, sizeof path);
	*idx_why = NULL;
	int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0) {
		*idx_why = "missing";
		return;
	}
	struct stat st;
	struct log_file_header h;
	const char *why = NULL;
	if (fstat(fd, &st) < 0 || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
		why = "unreadable or shorter than its header";
	} else if (log_header_check(&h, (uint64_t)st.st_size, LOG_KIND_INDEX, &why) == 0) {
		if (h.first_seq != s->first_seq || h.incarnation != s->hdr->incarnation)
			why = "belongs to another segment";
	}
	if (why) {
		close(fd);
		*idx_why = why;
		return;
	}
	uint64_t len = log_index_size(h.capacity);
	if (map_fd(fd, len, writable, &s->idx) < 0) {
		close(fd);
		*idx_why = "cannot be mapped";
		return;
	}
	s->idx_fd = fd;
	s->idx_len = len;
	s->cap = h.capacity;
	s->pos = (uint32_t *)(void *)(s->idx + LOG_HEADER_SIZE);
	s->time = (struct log_time_entry *)(void *)(s->idx + LOG_HEADER_SIZE + (uint64_t)h.capacity * 4);
}

int log_seg_open(struct log_seg *s, const char *dir, uint64_t first, bool writable, const char **idx_why)
{
	memset(s, 0, sizeof *s);
	s->fd = s->idx_fd = -1;
	log_seg_path(dir, first, "log", s->path, sizeof s->path);
	int fd = open(s->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return shmbus__fail(errno, "segment '%s': %s", s->path, strerror(errno));
	s->fd = fd;
	struct stat st;
	struct log_file_header h;
	const char *why = NULL;
	int rc;
	if (fstat(fd, &st) < 0)
		return shmbus__fail(errno, "segment '%s': %s", s->path, strerror(errno));
	if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
		rc = -EBADMSG;
		why = "shorter than a log header (4096 bytes)";
	} else {
		rc = log_header_check(&h, (uint64_t)st.st_size, LOG_KIND_SEGMENT, &why);
	}
	if (rc == 0 && h.first_seq != first) {
		rc = -EBADMSG;
		why = "its header's first sequence differs from its name";
	}
	if (rc < 0) {
		int e = -rc;
		log_seg_close(s);
		return shmbus__fail(e, "segment '%s/%020llu.log': %s", dir, (unsigned long long)first, why);
	}
	if ((rc = map_fd(fd, (uint64_t)st.st_size, writable, &s->base)) < 0) {
		log_seg_close(s);
		return shmbus__fail(-rc, "segment '%s/%020llu.log': cannot map it", dir, (unsigned long long)first);
	}
	s->map_len = (uint64_t)st.st_size;
	s->hdr = (struct log_file_header *)(void *)s->base;
	s->first_seq = first;
	open_index(s, dir, writable, idx_why);
	return 0;
}

int log_seg_entry_ok(const struct log_seg *s, uint64_t i, uint64_t *off_out, uint64_t *seq_out)
{
	const struct log_time_entry *t = s->own_time ? &s->own_time[i] : &s->time[i];
	uint64_t off = t->off, seq = s->first_seq + t->pos_delta;
	const char *why;
	if (off < LOG_DATA_OFF || off >= s->map_len || t->pos_delta >= s->cap)
		return -EBADMSG;
	if (log_rec_check(s->base, s->map_len, off, &why) != 0)
		return -EBADMSG;
	const struct log_record *r = (const struct log_record *)(const void *)(s->base + off);
	if (r->kind != LOG_REC_EVENT || r->seq != seq)
		return -EBADMSG;
	*off_out = off;
	*seq_out = seq;
	return 0;
}

/* A record at off that is a valid event of segment s (whose index has
 * cap positions): 0, else -EBADMSG (or 1 for zeros) and *why. */
static int event_record_here(const struct log_seg *s, uint32_t cap, uint64_t off, const char **why)
{
	int rc = log_rec_check(s->base, s->map_len, off, why);
	if (rc != 0)
		return rc;
	const struct log_record *r = (const struct log_record *)(const void *)(s->base + off);
	if (r->kind != LOG_REC_EVENT || r->seq < s->first_seq || r->seq - s->first_seq >= cap) {
		*why = "record does not belong in this segment";
		return -EBADMSG;
	}
	return 0;
}

int log_seg_build_index(struct log_seg *s, uint32_t cap, bool past_damage, uint64_t *end_off, uint64_t *bad_off,
			const char **bad_why)
{
	free(s->own_time);
	free(s->own_pos);
	s->own_time = calloc(cap, sizeof *s->own_time);
	s->own_pos = calloc(cap, sizeof *s->own_pos);
	if (!s->own_time || !s->own_pos)
		return shmbus__fail(ENOMEM, "out of memory");
	s->cap = cap;
	uint64_t off = LOG_DATA_OFF, n = 0, tmax = 0, end = off;
	/* records reach this far, by the header (a damaged header: the file) */
	uint64_t reach = at_load_acquire_u64(&s->hdr->tail);
	if (reach < LOG_DATA_OFF || reach > s->map_len)
		reach = s->map_len;
	*bad_off = 0;
	for (;;) {
		const char *why = NULL;
		int rc = event_record_here(s, cap, off, &why);
		/* zeros: the end, for a writer wherever they are (a torn tail) */
		if (rc == 1 && (!past_damage || off >= reach))
			break;
		if (rc == 0 && n >= cap) {
			if (!*bad_off) {
				*bad_off = off;
				*bad_why = "record does not belong in this segment";
			}
			break; /* more records than positions: nothing further fits */
		}
		if (rc != 0) {
			if (!*bad_off) {
				*bad_off = off;
				*bad_why = rc == 1 ? "zeros where the header says records continue" : why;
			}
			if (!past_damage)
				break;
			const char *skip;
			do
				off += 8;
			while (off < reach && event_record_here(s, cap, off, &skip) != 0);
			if (off >= reach)
				break;
			continue;
		}
		const struct log_record *r = (const struct log_record *)(const void *)(s->base + off);
		const struct seg_event *ev = (const struct seg_event *)(const void *)r->body;
		if (ev->published_ns > tmax)
			tmax = ev->published_ns;
		s->own_pos[r->seq - s->first_seq] = (uint32_t)off;
		s->own_time[n].time_max = tmax;
		s->own_time[n].off = (uint32_t)off;
		s->own_time[n].pos_delta = (uint32_t)(r->seq - s->first_seq);
		n++;
		off += log_rec_size(r->len);
		end = off;
	}
	s->nrec = n;
	*end_off = end;
	return 0;
}
