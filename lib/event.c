/*
 * event.c - building events from shmbus_msg_t and reading them back.
 *
 * An event is the format of shm/event_format.h. The encoder here is the
 * only writer; the accessors read an event that the library has already
 * checked (delivered events) so they do no bounds work of their own.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "event_encode.h"

static const char *const type_names[] = {NULL, "command", "notification", "query", "response", "error"};
static const char *const prio_names[] = {"normal", "low", "normal", "high", "critical"};
static const char *const status_names[] = {"created",	 "published", "delivered", "processing",
					   "completed", "failed",    "retrying"};
static const char *const content_names[] = {"application/octet-stream", "application/json", "text/plain"};

SHMBUS_API const char *shmbus_type_name(shmbus_type_t t)
{
	return (t >= 1 && t <= 5) ? type_names[t] : "unknown";
}

SHMBUS_API int shmbus_type_parse(const char *text)
{
	for (int t = 1; text && t <= 5; t++)
		if (strcmp(text, type_names[t]) == 0)
			return t;
	return shmbus__fail(EINVAL, "unknown event type '%s' (command, notification, query, response, error)",
			    text ? text : "(null)");
}

SHMBUS_API const char *shmbus_priority_name(shmbus_priority_t p)
{
	return ((unsigned)p <= 4) ? prio_names[p] : "unknown";
}

SHMBUS_API int shmbus_priority_parse(const char *text)
{
	for (int p = 1; text && p <= 4; p++)
		if (strcmp(text, prio_names[p]) == 0)
			return p;
	return shmbus__fail(EINVAL, "unknown priority '%s' (low, normal, high, critical)", text ? text : "(null)");
}

SHMBUS_API const char *shmbus_status_name(shmbus_status_t s)
{
	return ((unsigned)s <= 6) ? status_names[s] : "unknown";
}

SHMBUS_API const char *shmbus_content_name(shmbus_content_t c)
{
	return ((unsigned)c <= 2) ? content_names[c] : "unknown";
}

/* ---------------------------------------------------------------- encode */

static int check_str(const char *what, const char *s, size_t max, bool required, size_t *len)
{
	if (!s) {
		*len = 0;
		return required ? shmbus__fail(EINVAL, "%s is required", what) : 0;
	}
	size_t n = strnlen(s, max + 1);
	if (n > max)
		return shmbus__fail(ENAMETOOLONG, "%s is longer than %zu bytes", what, max);
	if (required && n == 0)
		return shmbus__fail(EINVAL, "%s must not be empty", what);
	*len = n;
	return 0;
}

/* Check string k and record it in lay. Returns the bytes it takes in the
 * string area (with its NUL; none if empty), or -errno. */
static int layout_str(struct event_layout *lay, unsigned k, const char *str, const char *what, bool required)
{
	size_t n = 0;
	int rc = check_str(what, str, SEG_EVENT_STR_MAX, required, &n);
	if (rc < 0)
		return rc;
	lay->str[k] = str ? str : "";
	lay->len[k] = (uint8_t)n;
	return n ? (int)n + 1 : 0;
}

static uint64_t align8(uint64_t v)
{
	return (v + 7) & ~7ull;
}

int event_layout(const shmbus_msg_t *msg, const char *default_source, size_t default_source_len, size_t payload_len,
		 uint32_t max_payload, struct event_layout *lay)
{
	int rc;
	if (!msg)
		return shmbus__fail(EINVAL, "message is NULL");
	lay->lib_flags = 0;
	lay->source_hash = 0;
	if (msg->type < SHMBUS_COMMAND || msg->type > SHMBUS_ERROR)
		return shmbus__fail(EINVAL, "unknown event type %d", (int)msg->type);
	if ((unsigned)msg->priority > SHMBUS_PRIORITY_CRITICAL)
		return shmbus__fail(EINVAL, "unknown priority %d", (int)msg->priority);
	if ((unsigned)msg->content_type > SHMBUS_CONTENT_TEXT)
		return shmbus__fail(EINVAL, "unknown content type %d", (int)msg->content_type);
	if (msg->status > SHMBUS_STATUS_RETRYING)
		return shmbus__fail(EINVAL, "unknown status %d", (int)msg->status);
	if (msg->flags & ~(uint16_t)(SEG_EVF_USER_MASK))
		return shmbus__fail(EINVAL, "flags 0x%x are not settable by a publisher", msg->flags);
	uint64_t strings = 0;
	if ((rc = layout_str(lay, SEG_STR_NAME, msg->name, "event name", true)) < 0)
		return rc;
	strings += (unsigned)rc;
	if (msg->source) {
		if (!msg->source[0]) /* as shmbus_pub_open: no source is NULL */
			return shmbus__fail(EINVAL, "source must not be empty (NULL: the publisher's)");
		if ((rc = layout_str(lay, SEG_STR_SOURCE, msg->source, "source", false)) < 0)
			return rc;
		strings += (unsigned)rc;
	} else { /* the publisher's, checked when it opened */
		lay->str[SEG_STR_SOURCE] = default_source;
		lay->len[SEG_STR_SOURCE] = (uint8_t)default_source_len;
		strings += default_source_len ? default_source_len + 1 : 0;
	}
	if ((rc = layout_str(lay, SEG_STR_TARGET, msg->target, "target", false)) < 0)
		return rc;
	strings += (unsigned)rc;
	/* The context strings are usually all absent: one test for the four. */
	static const char *const what[SEG_EVENT_STRINGS] = {
		[SEG_STR_CONVERSATION] = "conversation id", [SEG_STR_USER] = "user id",
		[SEG_STR_INTENT] = "intent", [SEG_STR_DECISION] = "decision id"};
	if (!(msg->conversation_id || msg->user_id || msg->intent || msg->decision_id)) {
		for (unsigned k = SEG_STR_CONVERSATION; k < SEG_EVENT_STRINGS; k++) {
			lay->str[k] = "";
			lay->len[k] = 0;
		}
	} else {
		const char *ctx[SEG_EVENT_STRINGS] = {[SEG_STR_CONVERSATION] = msg->conversation_id,
						      [SEG_STR_USER] = msg->user_id, [SEG_STR_INTENT] = msg->intent,
						      [SEG_STR_DECISION] = msg->decision_id};
		for (unsigned k = SEG_STR_CONVERSATION; k < SEG_EVENT_STRINGS; k++) {
			if ((rc = layout_str(lay, k, ctx[k], what[k], false)) < 0)
				return rc;
			strings += (unsigned)rc;
		}
	}
	if (msg->metadata_count > SEG_EVENT_META_MAX)
		return shmbus__fail(EMSGSIZE, "%zu metadata pairs, at most %u", msg->metadata_count, SEG_EVENT_META_MAX);
	if (msg->metadata_count && !msg->metadata)
		return shmbus__fail(EINVAL, "metadata is NULL with a count of %zu", msg->metadata_count);
	for (size_t i = 0; i < msg->metadata_count; i++) {
		const shmbus_meta_t *m = &msg->metadata[i];
		if (!m->key || !m->value || !m->key[0])
			return shmbus__fail(EINVAL, "metadata pair %zu has no key or no value", i);
		size_t kl = strnlen(m->key, SEG_EVENT_META_KEY_MAX + 1);
		size_t vl = strnlen(m->value, SEG_EVENT_META_VALUE_MAX + 1);
		if (kl > SEG_EVENT_META_KEY_MAX)
			return shmbus__fail(EMSGSIZE, "metadata key %zu is longer than %u bytes", i, SEG_EVENT_META_KEY_MAX);
		if (vl > SEG_EVENT_META_VALUE_MAX)
			return shmbus__fail(EMSGSIZE, "metadata value of '%s' is longer than %u bytes", m->key,
					    SEG_EVENT_META_VALUE_MAX);
		strings += kl + vl + 2;
	}
	if ((rc = event_check_payload(payload_len, max_payload)) < 0)
		return rc;
	if (msg->has_confidence && !(msg->confidence >= 0.0f && msg->confidence <= 1.0f))
		return shmbus__fail(EINVAL, "confidence must be within [0, 1]");
	lay->strings_len = (uint32_t)strings;
	lay->payload_off = (uint32_t)align8(SEG_EVENT_FIXED + strings);
	return 0;
}

int event_payload_too_big(size_t payload_len, uint32_t max_payload)
{
	return shmbus__fail(EMSGSIZE, "payload of %zu bytes exceeds the bus's max payload of %u", payload_len,
			    max_payload);
}

/* Copy a short string (at most 255 bytes here) and its NUL. Up to 16
 * bytes take two overlapping fixed-size moves that read only [s, s+n):
 * no loop and no call for the names, sources and targets of most events. */
static inline __attribute__((always_inline)) char *put_str(char *p, const char *s, size_t n)
{
	uint64_t a, b;
	uint32_t c, d;
	if (n == 0) {
		*p = '\0';
		return p + 1;
	}
	if (n >= 8 && n <= 16) {
		memcpy(&a, s, 8);
		memcpy(&b, s + n - 8, 8);
		memcpy(p, &a, 8);
		memcpy(p + n - 8, &b, 8);
	} else if (n >= 4 && n < 8) {
		memcpy(&c, s, 4);
		memcpy(&d, s + n - 4, 4);
		memcpy(p, &c, 4);
		memcpy(p + n - 4, &d, 4);
	} else if (n < 4) {
		for (size_t i = 0; i < n; i++)
			p[i] = s[i];
	} else {
		memcpy(p, s, n);
	}
	p[n] = '\0';
	return p + n + 1;
}

void event_write(struct seg_event *ev, const shmbus_msg_t *msg, const struct event_layout *lay, size_t payload_len,
		 uint64_t seq, struct id_words id, uint64_t now_ns)
{
	/* Every byte of the fixed part is assigned (no memset first): the
	 * slot's cache lines are written once. */
	ev->size = event_size(lay, payload_len);
	ev->format = SEG_EVENT_FORMAT;
	ev->type = (uint8_t)msg->type;
	ev->priority = (uint8_t)(msg->priority ? msg->priority : SHMBUS_PRIORITY_NORMAL);
	ev->seq = seq;
	event_put_own(ev, msg, id, now_ns);
	ev->name_hash = seg_str_hash(lay->str[SEG_STR_NAME], lay->len[SEG_STR_NAME]);
	ev->source_hash = lay->source_hash ? lay->source_hash
					   : seg_str_hash(lay->str[SEG_STR_SOURCE], lay->len[SEG_STR_SOURCE]);
	ev->target_hash =
		lay->len[SEG_STR_TARGET] ? seg_str_hash(lay->str[SEG_STR_TARGET], lay->len[SEG_STR_TARGET]) : 0;
	ev->payload_len = (uint32_t)payload_len;
	ev->confidence = msg->has_confidence ? msg->confidence : NAN;
	ev->schema_version = msg->schema_version ? msg->schema_version : 1;
	ev->status = msg->status ? msg->status : SHMBUS_STATUS_PUBLISHED;
	ev->retry_count = msg->retry_count;
	ev->max_retries = msg->max_retries;
	ev->content_type = (uint8_t)msg->content_type;
	ev->flags = (uint16_t)(msg->flags | (msg->has_confidence ? SEG_EVF_HAS_CONFIDENCE : 0) | lay->lib_flags);
	ev->payload_off = lay->payload_off;
	ev->strings_len = (uint16_t)lay->strings_len;
	ev->meta_count = (uint8_t)msg->metadata_count;
	ev->committed = 0;
	memcpy(ev->len, lay->len, SEG_EVENT_STRINGS);
	ev->len[SEG_EVENT_STRINGS] = 0;
	/* Padding before the payload is zeroed so events are reproducible:
	 * one word that ends at the payload, written before the strings that
	 * may share it (payload_off >= SEG_EVENT_FIXED + 8: the name takes
	 * two bytes at least). */
	memset((char *)ev + lay->payload_off - 8, 0, 8);
	char *p = ev->strings;
	for (unsigned k = 0; k < SEG_EVENT_STRINGS; k++)
		if (lay->len[k]) /* an empty string takes no byte */
			p = put_str(p, lay->str[k], lay->len[k]);
	for (size_t i = 0; i < msg->metadata_count; i++) {
		p = put_str(p, msg->metadata[i].key, strlen(msg->metadata[i].key));
		p = put_str(p, msg->metadata[i].value, strlen(msg->metadata[i].value));
	}
}

bool event_cache_meta_same(const shmbus_msg_t *msg, const char *p)
{
	if (!msg->metadata)
		return false;
	for (size_t i = 0; i < msg->metadata_count; i++) {
		/* the cached pairs passed event_layout: a key is not empty */
		size_t kl = strlen(p), vl = strlen(p + kl + 1);
		if (!msg->metadata[i].key || !msg->metadata[i].value ||
		    !cached_str_is(msg->metadata[i].key, p, kl) || !cached_str_is(msg->metadata[i].value, p + kl + 1, vl))
			return false;
		p += kl + vl + 2;
	}
	return true;
}

bool event_cache_fill(struct event_cache *c, const shmbus_msg_t *msg, const struct event_layout *lay)
{
	if (lay->payload_off > sizeof c->head)
		return false;
	/* Only the bytes before the payload are kept; the fields each event
	 * has of its own get placeholders. */
	event_write(&c->head.ev, msg, lay, 0, 0, (struct id_words){0, 0}, 0);
	c->msg = *msg;
	c->lib_flags = lay->lib_flags;
	c->valid = true;
	return true;
}

/* --------------------------------------------------------------- accessors */

#define EV(e) ((const struct seg_event *)(const void *)(e))

SHMBUS_API uint64_t shmbus_event_seq(const shmbus_event_t *e) { return EV(e)->seq; }
SHMBUS_API size_t shmbus_event_size(const shmbus_event_t *e) { return EV(e)->size; }
SHMBUS_API const shmbus_uuid_t *shmbus_event_id(const shmbus_event_t *e) { return (const shmbus_uuid_t *)EV(e)->id; }
SHMBUS_API const shmbus_uuid_t *shmbus_event_correlation_id(const shmbus_event_t *e)
{
	return (const shmbus_uuid_t *)EV(e)->correlation_id;
}
SHMBUS_API const shmbus_uuid_t *shmbus_event_causation_id(const shmbus_event_t *e)
{
	return (const shmbus_uuid_t *)EV(e)->causation_id;
}
SHMBUS_API shmbus_type_t shmbus_event_type(const shmbus_event_t *e) { return (shmbus_type_t)EV(e)->type; }
SHMBUS_API const char *shmbus_event_name(const shmbus_event_t *e) { return seg_event_string(EV(e), SEG_STR_NAME); }
SHMBUS_API const char *shmbus_event_source(const shmbus_event_t *e) { return seg_event_string(EV(e), SEG_STR_SOURCE); }
SHMBUS_API const char *shmbus_event_target(const shmbus_event_t *e) { return seg_event_string(EV(e), SEG_STR_TARGET); }
SHMBUS_API shmbus_priority_t shmbus_event_priority(const shmbus_event_t *e) { return (shmbus_priority_t)EV(e)->priority; }
SHMBUS_API uint64_t shmbus_event_created_ns(const shmbus_event_t *e) { return EV(e)->created_ns; }
SHMBUS_API uint64_t shmbus_event_published_ns(const shmbus_event_t *e) { return EV(e)->published_ns; }
SHMBUS_API uint64_t shmbus_event_expires_ns(const shmbus_event_t *e) { return EV(e)->expires_ns; }
SHMBUS_API shmbus_status_t shmbus_event_status(const shmbus_event_t *e) { return (shmbus_status_t)EV(e)->status; }
SHMBUS_API unsigned shmbus_event_retry_count(const shmbus_event_t *e) { return EV(e)->retry_count; }
SHMBUS_API unsigned shmbus_event_max_retries(const shmbus_event_t *e) { return EV(e)->max_retries; }
SHMBUS_API unsigned shmbus_event_schema_version(const shmbus_event_t *e) { return EV(e)->schema_version; }
SHMBUS_API shmbus_content_t shmbus_event_content_type(const shmbus_event_t *e)
{
	return (shmbus_content_t)EV(e)->content_type;
}
SHMBUS_API uint16_t shmbus_event_flags(const shmbus_event_t *e)
{
	return EV(e)->flags & (uint16_t)~SEG_EVF_HAS_CONFIDENCE; /* that one is shmbus_event_confidence's */
}
SHMBUS_API const char *shmbus_event_conversation_id(const shmbus_event_t *e)
{
	return seg_event_string(EV(e), SEG_STR_CONVERSATION);
}
SHMBUS_API const char *shmbus_event_user_id(const shmbus_event_t *e) { return seg_event_string(EV(e), SEG_STR_USER); }
SHMBUS_API const char *shmbus_event_intent(const shmbus_event_t *e) { return seg_event_string(EV(e), SEG_STR_INTENT); }
SHMBUS_API const char *shmbus_event_decision_id(const shmbus_event_t *e)
{
	return seg_event_string(EV(e), SEG_STR_DECISION);
}

SHMBUS_API bool shmbus_event_confidence(const shmbus_event_t *e, float *out)
{
	if (!(EV(e)->flags & SEG_EVF_HAS_CONFIDENCE))
		return false;
	if (out)
		*out = EV(e)->confidence;
	return true;
}

SHMBUS_API size_t shmbus_event_metadata_count(const shmbus_event_t *e) { return EV(e)->meta_count; }

SHMBUS_API int shmbus_event_metadata(const shmbus_event_t *e, size_t i, const char **key, const char **value)
{
	if (i > UINT32_MAX || seg_event_meta(EV(e), (unsigned)i, key, value) < 0)
		return shmbus__fail(ERANGE, "metadata index %zu out of range", i);
	return 0;
}

SHMBUS_API const char *shmbus_event_meta_get(const shmbus_event_t *e, const char *key)
{
	const char *k, *v;
	for (unsigned i = 0; seg_event_meta(EV(e), i, &k, &v) == 0; i++)
		if (strcmp(k, key) == 0)
			return v;
	return NULL;
}

SHMBUS_API const void *shmbus_event_payload(const shmbus_event_t *e, size_t *len)
{
	if (len)
		*len = EV(e)->payload_len;
	return (const uint8_t *)e + EV(e)->payload_off;
}

SHMBUS_API int shmbus_event_check(const void *bytes, size_t len)
{
	const char *why = NULL;
	if (!bytes)
		return shmbus__fail(EINVAL, "event bytes are NULL");
	/* Bytes from outside may be unaligned: check a private copy. */
	if ((uintptr_t)bytes % 8) {
		return shmbus__fail(EINVAL, "event bytes must be 8-byte aligned");
	}
	int rc = seg_event_check(bytes, len, &why);
	if (rc < 0)
		return shmbus__fail(EBADMSG, "invalid event: %s", why);
	return 0;
}
