/*
 * event_format.c - checking and reading the bytes of one event.
 * Nothing here trusts the bytes: every length is compared with what is
 * available before a pointer is formed from it.
 */
#include "event_format.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

uint64_t seg_str_hash(const char *s, size_t len)
{
	uint64_t h = XXH3_64bits(s, len);
	return h ? h : 1; /* 0 means "absent" in the header */
}

/* Strings here are short (<= 63 bytes): a plain loop beats a call. */
static int has_nul(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!p[i])
			return 1;
	return 0;
}

static const char *strings_end(const struct seg_event *ev)
{
	return ev->strings + ev->strings_len;
}

static int check(const struct seg_event *ev, size_t avail, const char **why)
{
	const char *unused;
	if (!why)
		why = &unused;
	if (avail < SEG_EVENT_FIXED) {
		*why = "shorter than the fixed event header";
		return -EBADMSG;
	}
	if (ev->format != SEG_EVENT_FORMAT) {
		*why = "unknown event format version";
		return -EBADMSG;
	}
	if (ev->size < SEG_EVENT_FIXED || ev->size > avail) {
		*why = "event size out of bounds";
		return -EBADMSG;
	}
	if (ev->type < 1 || ev->type > 5) {
		*why = "unknown event type";
		return -EBADMSG;
	}
	if (ev->priority < 1 || ev->priority > 4) {
		*why = "unknown priority";
		return -EBADMSG;
	}
	if (ev->content_type > 2) {
		*why = "unknown content type";
		return -EBADMSG;
	}
	if (ev->status > 6) {
		*why = "unknown status";
		return -EBADMSG;
	}
	if ((size_t)SEG_EVENT_FIXED + ev->strings_len > ev->size) {
		*why = "string area overruns the event";
		return -EBADMSG;
	}
	if (ev->payload_off % 8 || ev->payload_off < SEG_EVENT_FIXED + (uint32_t)ev->strings_len ||
	    ev->payload_off > ev->size || ev->payload_len > ev->size - ev->payload_off) {
		*why = "payload out of bounds";
		return -EBADMSG;
	}
	if (ev->meta_count > SEG_EVENT_META_MAX) {
		*why = "too many metadata pairs";
		return -EBADMSG;
	}
	/* Every string that is not empty: its stated length fits, and a NUL
	 * ends it there. An empty one takes no byte. */
	const char *p = ev->strings, *end = strings_end(ev);
	for (unsigned k = 0; k < SEG_EVENT_STRINGS; k++) {
		size_t n = ev->len[k];
		if (n == 0)
			continue;
		if (n > SEG_EVENT_STR_MAX || (size_t)(end - p) < n + 1 || p[n] != '\0' || has_nul(p, n)) {
			*why = "malformed string field";
			return -EBADMSG;
		}
		p += n + 1;
	}
	if (ev->len[SEG_STR_NAME] == 0) {
		*why = "empty event name";
		return -EBADMSG;
	}
	for (unsigned i = 0; i < 2u * ev->meta_count; i++) {
		size_t max = (i & 1) ? SEG_EVENT_META_VALUE_MAX : SEG_EVENT_META_KEY_MAX;
		const char *nul = memchr(p, '\0', (size_t)(end - p));
		if (!nul || (size_t)(nul - p) > max) {
			*why = "malformed metadata";
			return -EBADMSG;
		}
		p = nul + 1;
	}
	return 0;
}

/* The string area's bytes taken by strings 0..k-1 (an empty one takes
 * none). */
static size_t strings_before(const struct seg_event *ev, unsigned k)
{
	size_t at = 0;
	for (unsigned i = 0; i < k; i++)
		at += ev->len[i] ? ev->len[i] + 1u : 0;
	return at;
}

const char *seg_event_string(const struct seg_event *ev, unsigned k)
{
	if (k >= SEG_EVENT_STRINGS || ev->len[k] == 0)
		return "";
	return ev->strings + strings_before(ev, k);
}

int seg_event_check(const struct seg_event *ev, size_t avail, const char **why)
{
	return check(ev, avail, why);
}

int seg_event_meta(const struct seg_event *ev, unsigned i, const char **key, const char **value)
{
	if (i >= ev->meta_count)
		return -ERANGE;
	const char *p = ev->strings + strings_before(ev, SEG_EVENT_STRINGS);
	const char *end = strings_end(ev);
	/* Bounded by the string area, whose last byte a checked event has as
	 * NUL: a pair missing from a damaged area reads as empty strings. */
	for (unsigned j = 0; j < 2 * i && p < end; j++)
		p += strlen(p) + 1;
	if (p >= end)
		return -ERANGE;
	*key = p;
	p += strlen(p) + 1;
	*value = p < end ? p : end - 1;
	return 0;
}
