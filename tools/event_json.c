/*
 * event_json.c - events as JSON and as readable lines.
 *
 * Every JSON value is built with jansson; nothing here writes JSON by hand.
 * Text taken from an event or a segment is not guaranteed to be UTF-8, and
 * jansson rightly refuses invalid UTF-8, so such text is passed through
 * json_text(), which replaces bytes that do not form valid UTF-8.
 */
#include "event_json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A JSON string of s, with bytes that are not valid UTF-8 replaced. */
json_t *json_text(const char *s)
{
	json_t *j = json_string(s);
	if (j)
		return j;
	/* Invalid UTF-8: keep ASCII, mark every other byte. */
	size_t n = strlen(s);
	char *copy = malloc(n + 1);
	if (!copy)
		return NULL;
	for (size_t i = 0; i <= n; i++)
		copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
	j = json_string(copy);
	free(copy);
	return j;
}

/* s without control characters, for terminals. */
const char *text_safe(const char *s, char *buf, size_t cap)
{
	size_t i = 0;
	for (; s[i] && i + 1 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	buf[i] = '\0';
	return buf;
}

/* Flatten a live event through the public accessors. */
void event_view_from_event(const shmbus_event_t *ev, shmbus_inspect_event_t *v)
{
	memset(v, 0, sizeof *v);
	v->seq = shmbus_event_seq(ev);
	v->id = *shmbus_event_id(ev);
	v->correlation_id = *shmbus_event_correlation_id(ev);
	v->causation_id = *shmbus_event_causation_id(ev);
	v->type = shmbus_event_type(ev);
	v->priority = shmbus_event_priority(ev);
	v->status = shmbus_event_status(ev);
	v->created_ns = shmbus_event_created_ns(ev);
	v->published_ns = shmbus_event_published_ns(ev);
	v->expires_ns = shmbus_event_expires_ns(ev);
	v->schema_version = shmbus_event_schema_version(ev);
	v->retry_count = shmbus_event_retry_count(ev);
	v->max_retries = shmbus_event_max_retries(ev);
	v->content_type = shmbus_event_content_type(ev);
	v->flags = shmbus_event_flags(ev);
	v->has_confidence = shmbus_event_confidence(ev, &v->confidence);
	v->name = shmbus_event_name(ev);
	v->source = shmbus_event_source(ev);
	v->target = shmbus_event_target(ev);
	v->conversation_id = shmbus_event_conversation_id(ev);
	v->user_id = shmbus_event_user_id(ev);
	v->intent = shmbus_event_intent(ev);
	v->decision_id = shmbus_event_decision_id(ev);
	size_t n = shmbus_event_metadata_count(ev);
	for (size_t i = 0; i < n && i < SHMBUS_META_MAX; i++)
		if (shmbus_event_metadata(ev, i, &v->metadata[i].key, &v->metadata[i].value) == 0)
			v->metadata[v->metadata_count++] = v->metadata[i];
	v->payload = shmbus_event_payload(ev, &v->payload_len);
}

/* RFC 3339 UTC with nanoseconds: 2026-11-27T03:04:05.123456789Z. */
void event_format_time(uint64_t ns, char out[40])
{
	time_t secs = (time_t)(ns / 1000000000ull);
	struct tm tm;
	gmtime_r(&secs, &tm);
	size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 40 - n, ".%09lluZ", (unsigned long long)(ns % 1000000000ull));
}

/* A timestamp, or null when it is 0 (not set). */
static json_t *json_time(uint64_t ns)
{
	char buf[40];
	if (ns == 0)
		return json_null();
	event_format_time(ns, buf);
	return json_string(buf);
}

/* A UUID in canonical form, or null for the nil UUID when asked. */
static json_t *json_uuid(const shmbus_uuid_t *id, bool nil_is_null)
{
	char buf[SHMBUS_UUID_STR];
	if (nil_is_null && shmbus_uuid_is_nil(id))
		return json_null();
	shmbus_uuid_format(id, buf);
	return json_string(buf);
}

/* Empty text means "not set". */
static json_t *json_text_or_null(const char *s) { return s && *s ? json_text(s) : json_null(); }

/* Standard base64 (RFC 4648, padded) in a malloc'd string, or NULL. */
static char *base64(const unsigned char *p, size_t n)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t w = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			w |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			w |= p[i + 2];
		*o++ = tab[(w >> 18) & 63];
		*o++ = tab[(w >> 12) & 63];
		*o++ = i + 1 < n ? tab[(w >> 6) & 63] : '=';
		*o++ = i + 2 < n ? tab[w & 63] : '=';
	}
	*o = '\0';
	return out;
}

/* data: the parsed payload when it is JSON and parses, else base64; null
 * when there is no payload. */
static json_t *json_data(const shmbus_inspect_event_t *v)
{
	if (!v->payload || v->payload_len == 0)
		return json_null();
	if (v->content_type == SHMBUS_CONTENT_JSON) {
		json_t *j = json_loadb(v->payload, v->payload_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		if (j)
			return j;
	}
	char *b = base64(v->payload, v->payload_len);
	if (!b)
		return NULL;
	json_t *j = json_string(b);
	free(b);
	return j;
}

/* The metadata pairs as one JSON object. */
static json_t *json_metadata(const shmbus_inspect_event_t *v)
{
	json_t *o = json_object();
	for (size_t i = 0; o && i < v->metadata_count; i++) {
		json_t *val = json_text(v->metadata[i].value);
		json_t *key = json_text(v->metadata[i].key); /* keys must be UTF-8 too */
		if (!val || !key || json_object_set_new(o, json_string_value(key), val) < 0) {
			json_decref(key);
			json_decref(o);
			return NULL;
		}
		json_decref(key);
	}
	return o;
}

/* A float confidence printed as its shortest decimal (0.9, not 0.899999976). */
static json_t *json_confidence(const shmbus_inspect_event_t *v)
{
	char buf[32];
	if (!v->has_confidence || !isfinite(v->confidence))
		return json_null();
	snprintf(buf, sizeof buf, "%.7g", (double)v->confidence);
	return json_real(strtod(buf, NULL));
}

/* name unless it is NULL (an enum value with no name). */
static const char *name_or(const char *name, const char *fallback) { return name ? name : fallback; }

/* The event in the contract's JSON form (see event_json.h). */
json_t *event_json(const shmbus_inspect_event_t *v)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	struct {
		const char *key;
		json_t *val;
	} f[] = {
		{"event_id", json_uuid(&v->id, false)},
		{"correlation_id", json_uuid(&v->correlation_id, true)},
		{"causation_id", json_uuid(&v->causation_id, true)},
		{"event_type", json_string(name_or(shmbus_type_name(v->type), "unknown"))},
		{"event_name", json_text(v->name)},
		{"version", json_integer(v->schema_version)},
		{"source", json_text(v->source)},
		{"target", json_text_or_null(v->target)},
		{"priority", json_string(name_or(shmbus_priority_name(v->priority), "unknown"))},
		{"created_at", json_time(v->created_ns)},
		{"published_at", json_time(v->published_ns)},
		{"expires_at", json_time(v->expires_ns)},
		{"status", json_string(name_or(shmbus_status_name(v->status), "unknown"))},
		{"retry_count", json_integer(v->retry_count)},
		{"max_retries", json_integer(v->max_retries)},
		{"conversation_id", json_text_or_null(v->conversation_id)},
		{"user_id", json_text_or_null(v->user_id)},
		{"intent", json_text_or_null(v->intent)},
		{"decision_id", json_text_or_null(v->decision_id)},
		{"confidence", json_confidence(v)},
		{"metadata", json_metadata(v)},
		{"content_type", json_string(name_or(shmbus_content_name(v->content_type), "unknown"))},
		{"data", json_data(v)},
		{"seq", json_integer((json_int_t)v->seq)},
		{"flags", json_integer(v->flags)},
	};
	bool ok = true;
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		ok &= f[i].val && json_object_set_new(o, f[i].key, f[i].val) == 0;
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* A short printable rendering of the payload for the one-line form. */
static void payload_summary(const shmbus_inspect_event_t *v, char *out, size_t cap)
{
	const unsigned char *p = v->payload;
	size_t n = v->payload_len;
	if (!p || n == 0) {
		snprintf(out, cap, "-");
		return;
	}
	if (v->content_type == SHMBUS_CONTENT_JSON) { /* compact: one line */
		json_t *j = json_loadb(v->payload, n, JSON_DECODE_ANY, NULL);
		char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		json_decref(j);
		if (text && strlen(text) <= 200) {
			snprintf(out, cap, "%s", text);
			free(text);
			return;
		}
		free(text);
	}
	bool printable = v->content_type != SHMBUS_CONTENT_BINARY;
	for (size_t i = 0; printable && i < n; i++)
		printable = p[i] >= 0x20 && p[i] != 0x7f;
	if (!printable || n > 200) {
		snprintf(out, cap, "<%zu bytes>", n);
		return;
	}
	snprintf(out, cap, "%.*s", (int)n, (const char *)p);
}

/* #seq time type name prio=P src=S [-> target] id=UUID data=..., one line. */
int event_print_line(FILE *out, const shmbus_inspect_event_t *v)
{
	char when[40], id[SHMBUS_UUID_STR], data[256], name[64], src[64], tgt[64];
	event_format_time(v->published_ns, when);
	shmbus_uuid_format(&v->id, id);
	payload_summary(v, data, sizeof data);
	int rc = fprintf(out, "#%llu %s %s %s prio=%s src=%s%s%s id=%s data=%s\n", (unsigned long long)v->seq, when,
			 name_or(shmbus_type_name(v->type), "?"), text_safe(v->name, name, sizeof name),
			 name_or(shmbus_priority_name(v->priority), "?"), text_safe(v->source, src, sizeof src),
			 v->target && *v->target ? " -> " : "", v->target ? text_safe(v->target, tgt, sizeof tgt) : "",
			 id, data);
	return rc < 0 ? -EIO : 0;
}

/* Compact JSON and a newline; reals with at most 15 significant digits. */
int json_print_line(FILE *out, const json_t *j)
{
	errno = 0;
	if (json_dumpf(j, out, JSON_COMPACT | JSON_REAL_PRECISION(15)) < 0 || fputc('\n', out) == EOF)
		return errno ? -errno : -EIO;
	return 0;
}

json_t *json_add(json_t *o, const char *key, ...)
{
	va_list ap;
	va_start(ap, key);
	for (const char *k = key; k; k = va_arg(ap, const char *)) {
		json_t *v = va_arg(ap, json_t *);
		if (!o || !v || json_object_set_new(o, k, v) < 0) {
			json_decref(v);
			json_decref(o);
			o = NULL;
		}
	}
	va_end(ap);
	return o;
}
