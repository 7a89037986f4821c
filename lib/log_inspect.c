/*
 * log_inspect.c - a log file (segment, index or dead-letter log) decoded
 * for shm-dump and post-mortems. The file is read into private memory once
 * (never mapped: a file that shrinks cannot fault us) and nothing in it is
 * trusted: every record passes log_rec_check before it is described, and
 * damage is reported with its offset, after which the walk looks for the
 * next valid record.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define INSPECT_MAX (1ull << 32)

static void header_text(const struct log_file_header *h, char *out, size_t cap)
{
	static const char *const kinds[] = {"?", "event segment", "dead-letter log", "index"};
	snprintf(out, cap, "%s of bus '%.64s', incarnation %016llx, first sequence %llu, records %llu, tail %llu%s",
		 kinds[h->kind < 4 ? h->kind : 0], h->bus, (unsigned long long)h->incarnation,
		 (unsigned long long)h->first_seq, (unsigned long long)h->records, (unsigned long long)h->tail,
		 h->sealed ? ", sealed" : "");
}

static void walk_records(const uint8_t *buf, uint64_t size, void (*fn)(const shmbus_logi_item_t *, void *), void *arg)
{
	uint64_t off = LOG_DATA_OFF;
	while (off < size) {
		const char *why = NULL;
		int rc = log_rec_check(buf, size, off, &why);
		if (rc == 0) {
			const struct log_record *r = (const struct log_record *)(const void *)(buf + off);
			shmbus_logi_item_t it = {.kind = SHMBUS_LOGI_RECORD, .off = off, .seq = r->seq, .record_kind = r->kind};
			shmbus_dead_letter_t dl;
			if (r->kind == LOG_REC_EVENT)
				it.event = (const shmbus_event_t *)(const void *)r->body;
			if (r->kind == LOG_REC_DEAD) {
				const struct log_dead *d = (const struct log_dead *)(const void *)r->body;
				memset(&dl, 0, sizeof dl);
				memcpy(dl.event_id.bytes, d->event_id, 16);
				dl.sub = d->sub;
				snprintf(dl.subscriber_id, sizeof dl.subscriber_id, "%s", d->subscriber);
				snprintf(dl.group, sizeof dl.group, "%s", d->group);
				dl.reason = (shmbus_dead_reason_t)d->reason;
				dl.attempts = d->attempts;
				dl.last_error = d->last_error;
				dl.dead_ns = d->dead_ns;
				dl.event = (const shmbus_event_t *)(const void *)(r->body + sizeof *d);
				it.event = dl.event;
				it.dead = &dl;
			}
			if (r->kind == LOG_REC_TOMB)
				it.text = ((const struct log_tomb *)(const void *)r->body)->action == LOG_TOMB_RETRIED ? "retried"
															: "cleared";
			fn(&it, arg);
			off += log_rec_size(r->len);
			continue;
		}
		uint64_t next = off + 8;
		const char *w2;
		while (next < size && log_rec_check(buf, size, next, &w2) != 0)
			next += 8;
		if (rc == 1 && next >= size)
			return; /* a clean end: zeros to the end of the file */
		char text[256];
		snprintf(text, sizeof text, "%s at offset %llu%s", rc == 1 ? "zero gap" : why, (unsigned long long)off,
			 next < size ? "; resumed at the next valid record" : "; nothing valid after it");
		shmbus_logi_item_t it = {.kind = SHMBUS_LOGI_DAMAGE, .off = off, .text = text};
		fn(&it, arg);
		off = next;
	}
}

SHMBUS_API int shmbus_log_inspect_file(const char *path, void (*fn)(const shmbus_logi_item_t *item, void *arg), void *arg)
{
	if (!path || !fn)
		return shmbus__fail(EINVAL, "path or callback is NULL");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return shmbus__fail(errno, "'%s': %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size > INSPECT_MAX) {
		close(fd);
		return shmbus__fail(EFBIG, "'%s' is too large to inspect", path);
	}
	uint64_t size = (uint64_t)st.st_size;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf) {
		close(fd);
		return shmbus__fail(ENOMEM, "out of memory");
	}
	uint64_t got = 0;
	while (got < size) {
		ssize_t n = pread(fd, buf + got, (size_t)(size - got), (off_t)got);
		if (n <= 0)
			break;
		got += (uint64_t)n;
	}
	close(fd);
	size = got;
	struct log_file_header h;
	memset(&h, 0, sizeof h);
	memcpy(&h, buf, size < sizeof h ? size : sizeof h);
	const char *why = NULL;
	uint32_t kind = h.kind >= LOG_KIND_SEGMENT && h.kind <= LOG_KIND_INDEX ? h.kind : LOG_KIND_SEGMENT;
	char text[512];
	if (log_header_check(&h, size, kind, &why) < 0) {
		snprintf(text, sizeof text, "header: %s", why);
		shmbus_logi_item_t it = {.kind = SHMBUS_LOGI_DAMAGE, .off = 0, .text = text};
		fn(&it, arg);
		/* records may still be intact behind a damaged header */
		if (size > LOG_DATA_OFF && kind != LOG_KIND_INDEX)
			walk_records(buf, size, fn, arg);
		free(buf);
		return 0;
	}
	header_text(&h, text, sizeof text);
	shmbus_logi_item_t it = {.kind = SHMBUS_LOGI_HEADER, .text = text, .seq = h.first_seq};
	fn(&it, arg);
	if (kind == LOG_KIND_INDEX) {
		uint64_t used = 0;
		const uint32_t *pos = (const uint32_t *)(const void *)(buf + LOG_HEADER_SIZE);
		for (uint64_t i = 0; i < h.capacity; i++)
			used += pos[i] != 0;
		snprintf(text, sizeof text, "index: %u positions, %llu with an event", h.capacity, (unsigned long long)used);
		shmbus_logi_item_t ix = {.kind = SHMBUS_LOGI_INDEX, .text = text};
		fn(&ix, arg);
	} else {
		walk_records(buf, size, fn, arg);
	}
	free(buf);
	return 0;
}
