/*
 * event_json.h - one event as JSON (the contract's snake_case fields) and
 * as one readable line, shared by `shmbus sub` and shm-dump.
 *
 * Both tools first flatten what they hold into a shmbus_inspect_event_t
 * (a live event through the public accessors, a dumped one through the
 * inspection API), so there is a single encoder for both.
 */
#ifndef SHMBUS_EVENT_JSON_H
#define SHMBUS_EVENT_JSON_H

#include <jansson.h>
#include <stdio.h>

#include "shmbus.h"

/* Flatten a live event; pointers stay valid until it is released. */
void event_view_from_event(const shmbus_event_t *ev, shmbus_inspect_event_t *out);

/*
 * The event as a JSON object: event_id, correlation_id, causation_id,
 * event_type, event_name, version, source, target, priority, created_at,
 * published_at, expires_at, status, retry_count, max_retries,
 * conversation_id, user_id, intent, decision_id, confidence, metadata,
 * content_type, data, seq, flags. Returns a new reference or NULL (no
 * memory).
 */
json_t *event_json(const shmbus_inspect_event_t *v);

/* One readable line, newline included. Returns 0 or -EIO. */
int event_print_line(FILE *out, const shmbus_inspect_event_t *v);

/* RFC 3339 UTC with nine fractional digits; out must hold 40 bytes. */
void event_format_time(uint64_t ns, char out[40]);

/* A JSON string of s; bytes that are not valid UTF-8 become '?'. NULL only
 * when out of memory. */
json_t *json_text(const char *s);

/* s with control characters replaced by '?', for terminal output; returns
 * buf (cap bytes, truncating). */
const char *text_safe(const char *s, char *buf, size_t cap);

/*
 * Add key/value pairs, ending with a NULL key, to object o; the values'
 * references are stolen. Returns o, or NULL (o released) if o or any value
 * is NULL (jansson out of memory), so calls nest: json_add(json_object(),
 * "a", json_integer(1), NULL).
 */
json_t *json_add(json_t *o, const char *key, ...);

/* Write a JSON value compactly on one line, newline included. 0 or -EIO. */
int json_print_line(FILE *out, const json_t *j);

#endif
