/*
 * log_format.c - encoding and checking log file headers and records.
 * Nothing read from a file is trusted: every length is checked against
 * the bytes available before it is used.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "event_format.h"
#include "log_format.h"

void log_segment_name(uint64_t first_seq, const char *ext, char *out, size_t cap)
{
	snprintf(out, cap, "%020llu.%s", (unsigned long long)first_seq, ext);
}

int log_parse_name(const char *name, const char *ext, uint64_t *first_seq)
{
	size_t el = strlen(ext);
	if (strlen(name) != 21 + el || name[20] != '.' || strcmp(name + 21, ext) != 0)
		return -1;
	uint64_t v = 0;
	for (int i = 0; i < 20; i++) {
		if (name[i] < '0' || name[i] > '9')
			return -1;
		uint64_t d = (uint64_t)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*first_seq = v;
	return 0;
}

void log_header_init(struct log_file_header *h, uint32_t kind, uint64_t incarnation, uint64_t first_seq,
		     const char *bus, uint32_t capacity, uint64_t now_ns)
{
	memset(h, 0, sizeof *h);
	h->magic = LOG_MAGIC;
	h->version = LOG_FORMAT_VERSION;
	h->kind = kind;
	h->incarnation = incarnation;
	h->first_seq = first_seq;
	h->created_ns = now_ns;
	h->event_format = SEG_EVENT_FORMAT;
	h->capacity = capacity;
	snprintf(h->bus, sizeof h->bus, "%s", bus);
	h->header_sum = XXH3_64bits(h, LOG_HEADER_SUMMED);
	h->tail = LOG_DATA_OFF;
}

int log_header_check(const struct log_file_header *h, uint64_t file_size, uint32_t kind, const char **why)
{
	if (file_size < LOG_HEADER_SIZE) {
		*why = "shorter than a log header (4096 bytes)";
		return -EBADMSG;
	}
	if (h->magic != LOG_MAGIC) {
		*why = "not a shmbus log file (bad magic)";
		return -EPROTO;
	}
	if (h->version != LOG_FORMAT_VERSION) {
		*why = "log format version is not the one this library reads";
		return -EPROTO;
	}
	if (XXH3_64bits(h, LOG_HEADER_SUMMED) != h->header_sum) {
		*why = "header checksum does not match (damaged header)";
		return -EBADMSG;
	}
	if (h->kind != kind) {
		*why = kind == LOG_KIND_SEGMENT ? "header says it is not an event segment"
		       : kind == LOG_KIND_DEAD	 ? "header says it is not a dead-letter log"
						 : "header says it is not an index";
		return -EPROTO;
	}
	if (h->event_format != SEG_EVENT_FORMAT) {
		*why = "events are in another event format";
		return -EPROTO;
	}
	if (!memchr(h->bus, 0, sizeof h->bus)) {
		*why = "bus name is not terminated";
		return -EBADMSG;
	}
	if (kind == LOG_KIND_INDEX && (h->capacity == 0 || log_index_size(h->capacity) > file_size)) {
		*why = "index capacity does not fit the file";
		return -EBADMSG;
	}
	return 0;
}

uint64_t log_rec_sum(const struct log_record *r)
{
	return XXH3_64bits((const uint8_t *)r + 8, (size_t)LOG_REC_HDR - 8 + r->len);
}

void log_rec_seal(struct log_record *r, uint32_t len, uint16_t kind, uint64_t seq)
{
	r->len = len;
	r->kind = kind;
	r->rflags = 0;
	r->seq = seq;
	/* padding is part of no checksum but is kept zero */
	uint64_t end = LOG_REC_HDR + (uint64_t)len;
	memset((uint8_t *)r + end, 0, (size_t)(log_rec_size(len) - end));
	r->checksum = log_rec_sum(r);
}

static int check_event(const uint8_t *ev, uint64_t len, uint64_t seq, const char **why)
{
	if (len < SEG_EVENT_FIXED) {
		*why = "event shorter than its fixed header";
		return -EBADMSG;
	}
	const struct seg_event *e = (const struct seg_event *)(const void *)ev;
	if (e->size != len) {
		*why = "event size differs from the record length";
		return -EBADMSG;
	}
	if (seg_event_check(e, (size_t)len, why) < 0)
		return -EBADMSG;
	if (e->seq != seq) {
		*why = "event sequence differs from the record's";
		return -EBADMSG;
	}
	return 0;
}

int log_rec_check(const uint8_t *base, uint64_t avail, uint64_t off, const char **why)
{
	if ((off & 7) || off > avail || avail - off < LOG_REC_HDR) {
		if (off <= avail && avail - off < LOG_REC_HDR) {
			/* a short remainder that is all zero is a clean end */
			for (uint64_t i = off; i < avail; i++)
				if (base[i]) {
					*why = "truncated record header";
					return -EBADMSG;
				}
			return 1;
		}
		*why = "record offset out of the file";
		return -EBADMSG;
	}
	const struct log_record *r = (const struct log_record *)(const void *)(base + off);
	if (r->checksum == 0 && r->len == 0 && r->kind == 0 && r->seq == 0)
		return 1;
	if (r->len == 0 || r->len > LOG_REC_MAX) {
		*why = "record length is zero or too large";
		return -EBADMSG;
	}
	if (log_rec_size(r->len) > avail - off) {
		*why = "record runs past the end of the file (torn write?)";
		return -EBADMSG;
	}
	if (log_rec_sum(r) != r->checksum) {
		*why = "record checksum does not match";
		return -EBADMSG;
	}
	switch (r->kind) {
	case LOG_REC_EVENT:
		return check_event(r->body, r->len, r->seq, why);
	case LOG_REC_DEAD: {
		if (r->len < sizeof(struct log_dead)) {
			*why = "dead letter shorter than its header";
			return -EBADMSG;
		}
		const struct log_dead *d = (const struct log_dead *)(const void *)r->body;
		if (!memchr(d->subscriber, 0, sizeof d->subscriber) || !memchr(d->group, 0, sizeof d->group)) {
			*why = "dead letter subscriber or group not terminated";
			return -EBADMSG;
		}
		return check_event(r->body + sizeof *d, r->len - sizeof *d, r->seq, why);
	}
	case LOG_REC_TOMB:
		if (r->len != sizeof(struct log_tomb)) {
			*why = "tombstone of the wrong size";
			return -EBADMSG;
		}
		return 0;
	default:
		*why = "unknown record kind";
		return -EBADMSG;
	}
}
