/*
 * metrics.c - the spec's get_metrics and the listings, read live from the
 * counters in the segment. Counters are written by their owners only
 * (publishers, consumers) or by rare paths, and summed here.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void sub_info(shmbus_bus_t *bus, uint32_t idx, shmbus_sub_info_t *o)
{
	struct seg_sub *s = bus_sub(bus, idx);
	uint32_t f = at_load_acquire_u32(&s->flags);
	memset(o, 0, sizeof *o);
	o->id = sub_id_make(idx, at_load_acquire_u64(&s->generation));
	snprintf(o->subscriber_id, sizeof o->subscriber_id, "%.*s", SHMBUS_ID_MAX, s->subscriber);
	snprintf(o->group, sizeof o->group, "%.*s", SHMBUS_ID_MAX, s->group);
	o->durable = f & SEG_SUB_DURABLE;
	o->paused = f & SEG_SUB_PAUSED;
	o->demoted = f & SEG_SUB_DEMOTED;
	o->policy = (f & SEG_SUB_POLICY_LAG) ? SHMBUS_POLICY_LAG : SHMBUS_POLICY_BLOCK;
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		o->queue_depth += queue_depth(&q);
		if (cls != SEG_QUEUE_REDELIVER) /* survivors' give-backs are not routings */
			o->routed += queue_pushed(&q);
	}
	/* queue positions carry on across reuses of the record */
	o->routed -= at_load_relaxed_u64(&s->routed_base);
	o->delivered = at_load_relaxed_u64(&s->delivered_total);
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) != SEG_CONSUMER_ACTIVE)
			continue;
		o->consumers++;
		o->delivered += at_load_relaxed_u64(&con->delivered);
		o->processing += at_load_relaxed_u32(&con->processing);
		o->retrying += at_load_relaxed_u32(&con->retrying);
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t d = at_load_relaxed_u64(&con->held[k]);
			if (!d || (d & (SEG_DESC_REVOKED | SEG_DESC_RELEASING)))
				continue;
			/* taken in a run but not handed out yet: still queued for
			 * the user */
			if (d & SEG_DESC_UNSEEN)
				o->queue_depth++;
			else
				o->held++;
		}
	}
	o->filtered = at_load_relaxed_u64(&s->filtered);
	o->lagged = at_load_relaxed_u64(&s->missed);
	o->demotions = at_load_relaxed_u64(&s->demotions);
	o->redelivered = at_load_relaxed_u64(&s->redelivered);
	o->revoked = at_load_relaxed_u64(&s->revoked);
	o->completed = at_load_relaxed_u64(&s->completed);
	o->failed = at_load_relaxed_u64(&s->failed);
	o->retried = at_load_relaxed_u64(&s->retried);
	o->dead_lettered = at_load_relaxed_u64(&s->dead_lettered);
	o->expired = at_load_relaxed_u64(&s->expired);
	o->late_responses = at_load_relaxed_u64(&s->late_responses);
}

void metrics_retire_sub(shmbus_bus_t *bus, uint32_t idx)
{
	struct seg_header *h = bus->hdr;
	shmbus_sub_info_t si;
	sub_info(bus, idx, &si);
	at_count_u64(&h->retired_routed, si.routed);
	at_count_u64(&h->retired_delivered, si.delivered);
	at_count_u64(&h->retired_filtered, si.filtered);
	at_count_u64(&h->retired_lagged, si.lagged);
	at_count_u64(&h->retired_redelivered, si.redelivered);
	at_count_u64(&h->retired_completed, si.completed);
	at_count_u64(&h->retired_failed, si.failed);
	at_count_u64(&h->retired_retried, si.retried);
	at_count_u64(&h->retired_dead_lettered, si.dead_lettered);
	at_count_u64(&h->retired_expired, si.expired);
	at_count_u64(&h->retired_late_responses, si.late_responses);
}

SHMBUS_API int shmbus_list_subscriptions(shmbus_bus_t *bus, const char *subscriber_id, shmbus_sub_info_t *out,
					 size_t cap)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (cap && !out)
		return shmbus__fail(EINVAL, "out is NULL");
	int n = 0;
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
			continue;
		if (subscriber_id && strncmp(s->subscriber, subscriber_id, sizeof s->subscriber) != 0)
			continue;
		if ((size_t)n < cap)
			sub_info(bus, i, &out[n]);
		n++;
	}
	return n;
}

SHMBUS_API int shmbus_list_members(shmbus_bus_t *bus, shmbus_member_info_t *out, size_t cap)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (cap && !out)
		return shmbus__fail(EINVAL, "out is NULL");
	int n = 0;
	for (uint32_t i = 0; i < bus->max_members; i++) {
		struct seg_member *m = &bus->members[i];
		if (at_load_acquire_u32(&m->state) == SEG_MEMBER_FREE)
			continue;
		if ((size_t)n < cap) {
			shmbus_member_info_t *o = &out[n];
			memset(o, 0, sizeof *o);
			o->index = i;
			o->pid = m->pid;
			o->alive = member_alive(bus, i);
			o->attach_ns = m->attach_ns;
			snprintf(o->label, sizeof o->label, "%.*s", SHMBUS_ID_MAX, m->label);
		}
		n++;
	}
	return n;
}

SHMBUS_API int shmbus_get_metrics(shmbus_bus_t *bus, shmbus_metrics_t *out)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	struct seg_header *h = bus->hdr;
	memset(out, 0, sizeof *out);
	out->routed = at_load_relaxed_u64(&h->retired_routed);
	out->delivered = at_load_relaxed_u64(&h->retired_delivered);
	out->filtered = at_load_relaxed_u64(&h->retired_filtered);
	out->lagged = at_load_relaxed_u64(&h->retired_lagged);
	out->redelivered = at_load_relaxed_u64(&h->retired_redelivered);
	out->published = at_load_relaxed_u64(&h->retired_published);
	out->publish_bytes = at_load_relaxed_u64(&h->retired_publish_bytes);
	out->block_waits = at_load_relaxed_u64(&h->retired_block_waits);
	out->block_timeouts = at_load_relaxed_u64(&h->retired_block_timeouts);
	out->completed = at_load_relaxed_u64(&h->retired_completed);
	out->failed = at_load_relaxed_u64(&h->retired_failed);
	out->retried = at_load_relaxed_u64(&h->retired_retried);
	out->dead_lettered = at_load_relaxed_u64(&h->retired_dead_lettered);
	out->expired = at_load_relaxed_u64(&h->retired_expired);
	out->late_responses = at_load_relaxed_u64(&h->retired_late_responses);
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		if (!at_load_acquire_u32(&r->state))
			continue;
		out->published += at_load_relaxed_u64(&r->published);
		out->publish_bytes += at_load_relaxed_u64(&r->publish_bytes);
		out->block_waits += at_load_relaxed_u64(&r->block_waits);
		out->block_timeouts += at_load_relaxed_u64(&r->block_timeouts);
	}
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		if (at_load_acquire_u32(&bus_sub(bus, i)->state) != SEG_SUB_ACTIVE)
			continue;
		shmbus_sub_info_t si;
		sub_info(bus, i, &si);
		out->subscriptions++;
		out->routed += si.routed;
		out->delivered += si.delivered;
		out->filtered += si.filtered;
		out->lagged += si.lagged;
		out->redelivered += si.redelivered;
		out->processing += si.processing;
		out->retrying += si.retrying;
		out->completed += si.completed;
		out->failed += si.failed;
		out->retried += si.retried;
		out->dead_lettered += si.dead_lettered;
		out->expired += si.expired;
		out->late_responses += si.late_responses;
	}
	for (uint32_t m = 0; m < bus->max_members; m++)
		out->members += at_load_acquire_u32(&bus->members[m].state) != SEG_MEMBER_FREE;
	out->demotions = at_load_relaxed_u64(&h->demotions);
	out->reclaims = at_load_relaxed_u64(&h->reclaims);
	out->aborted_claims = at_load_relaxed_u64(&h->aborted_claims);
	out->recovered_events = at_load_relaxed_u64(&h->recovered_events);
	out->ring_slots = bus->nslots;
	for (uint64_t i = 0; i < bus->nslots; i++) {
		uint64_t c = at_load_relaxed_u64(&bus->slot_ctl[i].ctl);
		uint32_t st = seg_ctl_state(c);
		uint64_t any = 0;
		for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++)
			any |= at_load_relaxed_u64(&bus->slot_ctl[i].holders[w]);
		out->ring_used += st == SEG_SLOT_CLAIMED || (st == SEG_SLOT_COMMITTED && any);
	}
	out->next_seq = at_load_acquire_u64(&h->claim_pos);
	return 0;
}
