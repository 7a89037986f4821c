/*
 * shm-dump.c - post-mortem and live inspector of a bus segment.
 *
 *   shm-dump NAME|FILE [--json] [--events N]
 *
 * Reads a copy of the segment through the inspection API (which trusts no
 * byte of it) and prints the header and config, members, publishers,
 * subscriptions, ring occupancy, the last N committed events and the
 * invariant check. --json prints one object per line, each with a "kind":
 * header, member, publisher, subscription, ring, event, check.
 * Exit status: 0 when the check is clean, 1 when it found problems or the
 * segment could not be read, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "dump_log.h"
#include "event_json.h"
#include "shmbus.h"

#define DEFAULT_EVENTS 10u
#define MAX_EVENTS 1000000u

static const char usage_text[] = "usage: shm-dump NAME|FILE [--json] [--events N]\n"
				 "  NAME is a bus (/dev/shm/shmbus.NAME); a FILE is a copy of a segment,\n"
				 "  or a log file (<seq>.log, <seq>.idx, dead.log): records, index, damage.\n"
				 "  --events N   show the last N committed events (default 10)\n"
				 "  --json       one JSON object per line\n"
				 "Exit status: 0 clean, 1 problems found or unreadable, 2 usage error.\n";

struct dump_opts {
	const char *target;
	bool json;
	uint32_t events;
};

/* A counter as a JSON integer. */
static json_t *ju(uint64_t v) { return json_integer((json_int_t)v); }

/* Print one JSON line; a NULL object means jansson ran out of memory. */
static int emit(json_t *j)
{
	int rc = j ? json_print_line(stdout, j) : -ENOMEM;
	json_decref(j);
	return rc;
}

/* alive / dead / unknown, for the human form. */
static const char *liveness_name(shmbus_liveness_t l)
{
	return l == SHMBUS_LIVENESS_ALIVE ? "alive" : l == SHMBUS_LIVENESS_DEAD ? "dead" : "unknown";
}

/* true / false, or null when liveness cannot be known (a copied file). */
static json_t *alive_json(shmbus_liveness_t l)
{
	return l == SHMBUS_LIVENESS_UNKNOWN ? json_null() : json_boolean(l == SHMBUS_LIVENESS_ALIVE);
}

/* A timestamp, or null when 0. */
static json_t *time_or_null(uint64_t ns)
{
	char buf[40];
	if (!ns)
		return json_null();
	event_format_time(ns, buf);
	return json_string(buf);
}

/* ---------------------------------------------------------------- header */

/*
 * The "header" line: where the bytes came from, then, when the header can be
 * trusted, its fields, config and region offsets; else the reason it cannot.
 */
/* How the bus's publishers route: "full" (every one with the full fence),
 * "light", or "?" when the header cannot be trusted. */
static const char *route_fence_name(const shmbus_inspect_t *in)
{
	int full = shmbus_inspect_route_fence_full(in);
	return full < 0 ? "?" : full ? "full" : "light";
}

static int header_json(const shmbus_inspect_t *in)
{
	shmbus_inspect_header_t h;
	int ok = shmbus_inspect_header(in, &h) == 0;
	json_t *o = json_add(json_object(), "kind", json_string("header"), "path", json_text(h.path), "live",
			json_boolean(h.live), "file_size", ju(h.file_size), NULL);
	if (!ok)
		return emit(json_add(o, "error", json_text(shmbus_inspect_error(in)), NULL));
	const shmbus_config_t *c = &h.config;
	json_t *cfg = json_add(json_object(), "slots", ju(c->slots), "slot_size", ju(c->slot_size), "max_payload",
			  ju(c->max_payload), "max_subscribers", ju(c->max_subscribers), "max_members",
			  ju(c->max_members), "mode", ju(c->mode), "block_timeout_ns", ju(c->block_timeout_ns),
			  "stall_timeout_ns", ju(c->stall_timeout_ns), "reclaim_timeout_ns", ju(c->reclaim_timeout_ns),
			  "queue_capacity", ju(h.queue_capacity), NULL);
	json_t *regions = json_add(json_object(), "members", ju(h.members_off), "publishers", ju(h.pubs_off),
			      "subscriptions", ju(h.subs_off), "cells", ju(h.cells_off), "slot_ctl", ju(h.slot_ctl_off),
			      "data", ju(h.data_off), NULL);
	char hash[24];
	snprintf(hash, sizeof hash, "0x%016llx", (unsigned long long)h.layout_hash);
	return emit(json_add(o, "name", json_text(h.name), "layout_version", ju(h.layout_version), "state",
			json_string(h.state == 1   ? "ready"
				    : h.state == 0 ? "init"
						   : "invalid"),
			"layout_hash", json_string(hash), "total_size", ju(h.total_size), "incarnation",
			ju(h.incarnation), "created_at", time_or_null(h.created_ns), "flags", ju(h.flags), "config",
			cfg, "regions", regions, "claim_pos", ju(h.claim_pos), "route_epoch", ju(h.route_epoch),
			"route_fence", json_string(route_fence_name(in)), "space_waiters", ju(h.space_waiters),
			"reclaims", ju(h.reclaims), "aborted_claims",
			ju(h.aborted_claims), "demotions", ju(h.demotions), "recovered_events", ju(h.recovered_events),
			NULL));
}

/* The header, config and region offsets in the human form. */
static void header_human(const shmbus_inspect_t *in)
{
	shmbus_inspect_header_t h;
	int ok = shmbus_inspect_header(in, &h) == 0;
	char name[SHMBUS_NAME_MAX + 1];
	printf("segment %s (%s, %llu bytes)\n", h.path, h.live ? "live" : "file", (unsigned long long)h.file_size);
	if (!ok) {
		printf("header: DAMAGED: %s\n", shmbus_inspect_error(in));
		return;
	}
	const shmbus_config_t *c = &h.config;
	char created[40];
	event_format_time(h.created_ns, created);
	printf("header: bus %s, layout v%u, state %s, hash 0x%016llx, size %llu, incarnation %llu\n",
	       text_safe(h.name, name, sizeof name), h.layout_version,
	       h.state == 1   ? "ready"
	       : h.state == 0 ? "init"
			      : "invalid",
	       (unsigned long long)h.layout_hash, (unsigned long long)h.total_size, (unsigned long long)h.incarnation);
	printf("        created %s\n", created);
	printf("config: slots=%u slot_size=%u max_payload=%u max_subscribers=%u max_members=%u mode=0%o\n", c->slots,
	       c->slot_size, c->max_payload, c->max_subscribers, c->max_members, c->mode);
	printf("        block_timeout=%.3fs stall_timeout=%.3fs reclaim_timeout=%.3fs queue_capacity=%u\n",
	       (double)c->block_timeout_ns / 1e9, (double)c->stall_timeout_ns / 1e9,
	       (double)c->reclaim_timeout_ns / 1e9, h.queue_capacity);
	printf("regions: members@%llu publishers@%llu subscriptions@%llu cells@%llu slot_ctl@%llu data@%llu\n",
	       (unsigned long long)h.members_off, (unsigned long long)h.pubs_off, (unsigned long long)h.subs_off,
	       (unsigned long long)h.cells_off, (unsigned long long)h.slot_ctl_off, (unsigned long long)h.data_off);
	printf("state: claim_pos=%llu route_epoch=%llu route_fence=%s space_waiters=%u reclaims=%llu "
	       "aborted_claims=%llu demotions=%llu recovered_events=%llu\n",
	       (unsigned long long)h.claim_pos, (unsigned long long)h.route_epoch,
	       route_fence_name(in),
	       h.space_waiters,
	       (unsigned long long)h.reclaims, (unsigned long long)h.aborted_claims, (unsigned long long)h.demotions,
	       (unsigned long long)h.recovered_events);
}

/* --------------------------------------------------------------- members */

/*
 * Members in use, with liveness (alive/dead for a live bus, unknown for a
 * copy). 0 or -EIO.
 */
static int members_out(const shmbus_inspect_t *in, bool json)
{
	size_t n = shmbus_inspect_member_count(in);
	if (!json)
		printf("members (%zu):\n", n);
	for (size_t i = 0; i < n; i++) {
		shmbus_inspect_member_t m;
		char label[SHMBUS_ID_MAX + 1], when[40];
		if (shmbus_inspect_member(in, i, &m) < 0)
			break;
		if (json) {
			if (emit(json_add(json_object(), "kind", json_string("member"), "index", ju(m.index), "state",
				     json_string(m.state == 1	? "active"
						 : m.state == 2 ? "reclaiming"
								: "invalid"),
				     "pid", ju(m.pid), "alive", alive_json(m.liveness), "generation", ju(m.generation),
				     "attached_at", time_or_null(m.attach_ns), "label", json_text(m.label), NULL)) < 0)
				return -EIO;
			continue;
		}
		event_format_time(m.attach_ns, when);
		printf("  [%u] pid %u %s%s gen %llu attached %s \"%s\"\n", m.index, m.pid, liveness_name(m.liveness),
		       m.state == 2 ? " (reclaiming)" : "", (unsigned long long)m.generation, when,
		       text_safe(m.label, label, sizeof label));
	}
	return 0;
}

/* Publisher entries in use with their counters. 0 or -EIO. */
static int pubs_out(const shmbus_inspect_t *in, bool json)
{
	size_t n = shmbus_inspect_pub_count(in);
	if (!json)
		printf("publishers (%zu):\n", n);
	for (size_t i = 0; i < n; i++) {
		shmbus_inspect_pub_t p;
		char src[SHMBUS_ID_MAX + 1];
		if (shmbus_inspect_pub(in, i, &p) < 0)
			break;
		if (json) {
			if (emit(json_add(json_object(), "kind", json_string("publisher"), "index", ju(p.index), "member",
				     ju(p.member), "source", json_text(p.source), "routing",
				     json_boolean(p.routing & 1), "published", ju(p.published), "publish_bytes",
				     ju(p.publish_bytes), "block_waits", ju(p.block_waits), "block_timeouts",
				     ju(p.block_timeouts), "lease_taken", ju(p.lease_taken), NULL)) < 0)
				return -EIO;
			continue;
		}
		printf("  [%u] member %u source \"%s\" published=%llu bytes=%llu block_waits=%llu "
		       "block_timeouts=%llu lease_taken=%llu%s\n",
		       p.index, p.member, text_safe(p.source, src, sizeof src), (unsigned long long)p.published,
		       (unsigned long long)p.publish_bytes, (unsigned long long)p.block_waits,
		       (unsigned long long)p.block_timeouts, (unsigned long long)p.lease_taken,
		       (p.routing & 1) ? " (routing now)" : "");
	}
	return 0;
}

/* --------------------------------------------------------- subscriptions */

/* What a held descriptor's consumer is doing with it, or NULL when the
 * event was handed to the user and is neither released nor taken back. */
static const char *held_state(uint64_t d)
{
	if (d & SHMBUS_HELD_TOMBSTONE)
		return "tombstone";
	if (d & SHMBUS_HELD_REVOKED)
		return "revoked";
	if ((d & SHMBUS_HELD_DROPPING) == SHMBUS_HELD_DROPPING)
		return "dropping";
	if (d & SHMBUS_HELD_UNSEEN)
		return "unseen";
	if (d & SHMBUS_HELD_RELEASING)
		return "releasing";
	return NULL;
}

/* Held descriptors: their sequences (held), or what their consumer is
 * doing with them (held_state: a state name, or null for an event handed
 * to the user), in the same order. */
static json_t *held_json(const shmbus_inspect_consumer_t *c, bool states)
{
	json_t *a = json_array();
	for (uint32_t k = 0; a && k < c->held_count; k++) {
		uint64_t d = c->held[k];
		const char *state = held_state(d);
		json_t *v = !states ? ju(d & SHMBUS_HELD_SEQ_MASK) : state ? json_string(state) : json_null();
		if (json_array_append_new(a, v) < 0) {
			json_decref(a);
			a = NULL;
		}
	}
	return a;
}

/* The consumers of a subscription with their held events. */
static json_t *consumers_json(const shmbus_inspect_sub_t *s)
{
	json_t *a = json_array();
	for (uint32_t i = 0; a && i < s->consumer_count; i++) {
		const shmbus_inspect_consumer_t *c = &s->consumers[i];
		json_t *o = json_add(json_object(), "index", ju(c->index), "member", ju(c->member), "pid", ju(c->pid),
				"delivered", ju(c->delivered), "detached", json_boolean(c->detached), "held",
				held_json(c, false), "held_state", held_json(c, true), NULL);
		if (json_array_append_new(a, o) < 0) {
			json_decref(a);
			a = NULL;
		}
	}
	return a;
}

/* One "subscription" line. 0 or -EIO/-ENOMEM. */
static int sub_json(const shmbus_inspect_sub_t *s)
{
	json_t *queue = json_add(json_object(), "urgent_head", ju(s->head[0]), "urgent_tail", ju(s->tail[0]), "normal_head",
			    ju(s->head[1]), "normal_tail", ju(s->tail[1]), "redelivery_head", ju(s->head[2]),
			    "redelivery_tail", ju(s->tail[2]), NULL);
	return emit(json_add(
		json_object(), "kind", json_string("subscription"), "index", ju(s->index), "id", ju(s->id), "state",
		json_string(s->state == 1   ? "active"
			    : s->state == 2 ? "init"
			    : s->state == 0 ? "removed"
					    : "invalid"),
		"subscriber_id", json_text(s->subscriber_id), "group", s->group[0] ? json_text(s->group) : json_null(),
		"durable", json_boolean(s->durable), "policy",
		json_string(s->policy == SHMBUS_POLICY_LAG ? "lag" : "block"), "paused", json_boolean(s->paused),
		"demoted", json_boolean(s->demoted), "flags", ju(s->flags), "owner",
		s->owner == 0xFFFFFFFFu ? json_null() : ju(s->owner), "created_at", time_or_null(s->created_ns),
		"filter", json_text(s->filter), "queue_depth", ju(s->queue_depth), "queue", queue, "held", ju(s->held),
		"routed", ju(s->routed), "delivered", ju(s->delivered), "filtered", ju(s->filtered), "missed",
		ju(s->missed), "dropped_full", ju(s->dropped_full), "demotions", ju(s->demotions), "redelivered",
		ju(s->redelivered), "revoked", ju(s->revoked), "catchup", json_boolean(s->catchup), "gap",
		s->catchup && s->gap_lo != UINT64_MAX
			? json_add(json_object(), "lo", ju(s->gap_lo), "hi", ju(s->gap_hi), NULL)
			: json_null(),
		"gap_owed", json_integer(s->gap_owed), "gap_dropped", ju(s->gap_dropped), "gap_served",
		ju(s->gap_served), "consumers", consumers_json(s), NULL));
}

/* The consumers of a subscription and what they hold, human form. */
static void consumers_human(const shmbus_inspect_sub_t *s)
{
	for (uint32_t i = 0; i < s->consumer_count; i++) {
		const shmbus_inspect_consumer_t *c = &s->consumers[i];
		printf("      consumer[%u]%s member %u pid %u delivered %llu held:", c->index,
		       c->detached ? " detached" : "", c->member, c->pid, (unsigned long long)c->delivered);
		for (uint32_t k = 0; k < c->held_count; k++) {
			const char *state = held_state(c->held[k]);
			printf(" %llu%s%s%s", (unsigned long long)(c->held[k] & SHMBUS_HELD_SEQ_MASK), state ? " (" : "",
			       state ? state : "", state ? ")" : "");
		}
		printf("%s\n", c->held_count ? "" : " -");
	}
}

/*
 * One subscription in the human form: identity, filter, queue, counters,
 * consumers and what they hold.
 */
static void sub_human(const shmbus_inspect_sub_t *s)
{
	char sid[SHMBUS_ID_MAX + 1], grp[SHMBUS_ID_MAX + 1], filter[sizeof s->filter];
	if (s->state == 0) {
		printf("  [%u] id %llu \"%s\" (removed: its consumers still drop what they took)\n", s->index,
		       (unsigned long long)s->id, text_safe(s->subscriber_id, sid, sizeof sid));
		consumers_human(s);
		return;
	}
	printf("  [%u] id %llu \"%s\"%s policy=%s%s%s%s group=%s\n", s->index, (unsigned long long)s->id,
	       text_safe(s->subscriber_id, sid, sizeof sid), s->state == 1 ? "" : " (not active)",
	       s->policy == SHMBUS_POLICY_LAG ? "lag" : "block", s->durable ? " durable" : "",
	       s->paused ? " paused" : "", s->demoted ? " demoted" : "",
	       s->group[0] ? text_safe(s->group, grp, sizeof grp) : "-");
	printf("      filter: %s\n", text_safe(s->filter, filter, sizeof filter));
	printf("      queue: depth %llu (urgent %llu..%llu, normal %llu..%llu, redelivery %llu..%llu), held %llu\n",
	       (unsigned long long)s->queue_depth, (unsigned long long)s->head[0], (unsigned long long)s->tail[0],
	       (unsigned long long)s->head[1], (unsigned long long)s->tail[1], (unsigned long long)s->head[2],
	       (unsigned long long)s->tail[2], (unsigned long long)s->held);
	printf("      routed=%llu delivered=%llu filtered=%llu missed=%llu dropped_full=%llu demotions=%llu "
	       "redelivered=%llu "
	       "revoked=%llu\n",
	       (unsigned long long)s->routed, (unsigned long long)s->delivered, (unsigned long long)s->filtered,
	       (unsigned long long)s->missed, (unsigned long long)s->dropped_full, (unsigned long long)s->demotions,
	       (unsigned long long)s->redelivered, (unsigned long long)s->revoked);
	if (s->catchup) {
		printf("      catch-up: ");
		if (s->gap_lo == UINT64_MAX)
			printf("no gap");
		else
			printf("gap %llu..%llu", (unsigned long long)s->gap_lo, (unsigned long long)s->gap_hi);
		printf(", owed %lld, dropped %llu, served from the log %llu\n", (long long)s->gap_owed,
		       (unsigned long long)s->gap_dropped, (unsigned long long)s->gap_served);
	}
	consumers_human(s);
}

/* Every subscription in use. 0, -EIO or -ENOMEM. */
static int subs_out(const shmbus_inspect_t *in, bool json)
{
	size_t n = shmbus_inspect_sub_count(in);
	if (!json)
		printf("subscriptions (%zu):\n", n);
	for (size_t i = 0; i < n; i++) {
		shmbus_inspect_sub_t *s = malloc(sizeof *s); /* large: keep it off the stack */
		if (!s)
			return -ENOMEM;
		int rc = shmbus_inspect_sub(in, i, s);
		if (rc == 0 && json)
			rc = sub_json(s);
		else if (rc == 0)
			sub_human(s);
		free(s);
		if (rc == -EIO || rc == -ENOMEM)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------- ring and events */

/* Slot occupancy by state. 0 or -EIO. */
static int ring_out(const shmbus_inspect_t *in, bool json)
{
	shmbus_inspect_ring_t r;
	int ok = shmbus_inspect_ring(in, &r) == 0;
	if (json)
		return emit(json_add(json_object(), "kind", json_string("ring"), "readable", json_boolean(ok), "slots",
				ju(r.slots), "free", ju(r.free), "leased", ju(r.leased), "claimed", ju(r.claimed), "committed", ju(r.committed),
				"aborted", ju(r.aborted), "referenced", ju(r.referenced), "refs", ju(r.refs),
				"claim_pos", ju(r.claim_pos), "events", ju(r.events), NULL));
	if (!ok) {
		printf("ring: unreadable\n");
		return 0;
	}
	printf("ring: %llu slots: free=%llu (leased=%llu) claimed=%llu committed=%llu aborted=%llu; referenced=%llu "
	       "refs=%llu; claim_pos=%llu; %llu readable events\n",
	       (unsigned long long)r.slots, (unsigned long long)r.free, (unsigned long long)r.leased,
	       (unsigned long long)r.claimed,
	       (unsigned long long)r.committed, (unsigned long long)r.aborted, (unsigned long long)r.referenced,
	       (unsigned long long)r.refs, (unsigned long long)r.claim_pos, (unsigned long long)r.events);
	return 0;
}

/*
 * One event: the contract's event JSON plus kind, slots and refs, or the
 * one-line form. 0, -EIO or -ENOMEM.
 */
static int event_out(const shmbus_inspect_event_t *e, bool json)
{
	if (!json) {
		printf("  ");
		if (event_print_line(stdout, e) < 0)
			return -EIO;
		printf("      slots=%u refs=%u\n", e->slots, e->refs);
		return 0;
	}
	json_t *o = json_add(json_object(), "kind", json_string("event"), "slots", ju(e->slots), "refs", ju(e->refs), NULL);
	json_t *ev = event_json(e);
	if (!o || !ev || json_object_update(o, ev) < 0) {
		json_decref(o);
		o = NULL;
	}
	json_decref(ev);
	return emit(o);
}

/* The last `want` events, oldest first. */
static int events_out(const shmbus_inspect_t *in, bool json, uint32_t want)
{
	size_t n = shmbus_inspect_event_count(in);
	size_t first = n > want ? n - want : 0;
	if (!json)
		printf("events (last %zu of %zu readable):\n", n - first, n);
	for (size_t i = first; i < n; i++) {
		shmbus_inspect_event_t e;
		if (shmbus_inspect_event(in, i, &e) < 0)
			break;
		int rc = event_out(&e, json);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* ----------------------------------------------------------------- check */

/* The invariant check: ok, or every problem found. 0 or -EIO. */
static int check_out(const shmbus_inspect_t *in, bool json)
{
	size_t n = shmbus_inspect_problem_count(in);
	if (json) {
		json_t *a = json_array();
		for (size_t i = 0; a && i < n; i++)
			if (json_array_append_new(a, json_text(shmbus_inspect_problem(in, i))) < 0)
				json_decref(a), a = NULL;
		return emit(json_add(json_object(), "kind", json_string("check"), "ok", json_boolean(n == 0), "problems", a,
				NULL));
	}
	if (n == 0) {
		printf("check: ok\n");
		return 0;
	}
	printf("check: %zu problem%s\n", n, n == 1 ? "" : "s");
	for (size_t i = 0; i < n; i++) {
		char line[600];
		printf("  - %s\n", text_safe(shmbus_inspect_problem(in, i), line, sizeof line));
	}
	return 0;
}

/* ------------------------------------------------------------------ main */

/*
 * Inspect the target and print every section; only the header and the
 * check when the header cannot be trusted. Exit 0 clean, 1 otherwise.
 */
static int dump(const struct dump_opts *o)
{
	shmbus_inspect_t *in;
	int rc = shmbus_inspect_open(o->target, &in);
	if (rc == -ENOENT && !strchr(o->target, '/'))
		cli_error(o->target, "no such bus (/dev/shm/shmbus.%s) or file", o->target);
	else if (rc == -EINVAL)
		cli_error(o->target, "not a regular file");
	else if (rc < 0)
		cli_error(o->target, "%s", strerror(-rc));
	if (rc < 0)
		return EXIT_RUNTIME;
	if (o->json)
		rc = header_json(in);
	else
		header_human(in);
	if (rc == 0 && !shmbus_inspect_error(in)) {
		rc = members_out(in, o->json);
		if (rc == 0)
			rc = pubs_out(in, o->json);
		if (rc == 0)
			rc = subs_out(in, o->json);
		if (rc == 0)
			rc = ring_out(in, o->json);
		if (rc == 0)
			rc = events_out(in, o->json, o->events);
	}
	if (rc == 0)
		rc = check_out(in, o->json);
	bool clean = shmbus_inspect_problem_count(in) == 0;
	shmbus_inspect_close(in);
	if (rc == 0 && fflush(stdout) == EOF)
		rc = errno ? -errno : -EIO;
	if (rc < 0)
		return cli_output_failed(o->target, -rc);
	return clean ? 0 : EXIT_RUNTIME;
}

/* Options and the one NAME|FILE. 0 or EXIT_USAGE (message printed). */
static int parse_args(int argc, char **argv, struct dump_opts *o)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"events", required_argument, NULL, 'e'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o->json = true;
			break;
		case 'e':
			if (cli_parse_u32(optarg, 0, MAX_EVENTS, &o->events) < 0) {
				cli_error("--events", "must be a number in [0, %u], not '%s'", MAX_EVENTS, optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h':
			fputs(usage_text, stdout);
			exit(0);
		case ':':
			cli_error(argv[optind - 1], "option needs a value");
			fputs(usage_text, stderr);
			return EXIT_USAGE;
		default:
			cli_error(argv[optind - 1], "unknown option");
			fputs(usage_text, stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		cli_error("usage", argc - optind < 1 ? "missing NAME or FILE" : "more than one NAME or FILE");
		fputs(usage_text, stderr);
		return EXIT_USAGE;
	}
	o->target = argv[optind];
	if (!*o->target) {
		cli_error("usage", "empty NAME or FILE");
		return EXIT_USAGE;
	}
	return 0;
}

/* shm-dump NAME|FILE [--json] [--events N]. */
int main(int argc, char **argv)
{
	cli_set_prog("shm-dump");
	struct dump_opts o = {.events = DEFAULT_EVENTS};
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc;
	if (dump_is_log_file(o.target))
		return cli_finish_output(o.target, dump_log_file(o.target, o.json, o.events));
	return cli_finish_output(o.target, dump(&o));
}
