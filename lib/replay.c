/*
 * replay.c - events from the log back onto the bus: to one subscription
 * (a directed copy, id kept) or republished to everyone as new events.
 * Both are flagged REPLAYED so handlers can tell history from news.
 */
#include <errno.h>
#include <string.h>

#include "log.h"

struct to_one {
	shmbus_bus_t *bus;
	uint32_t idx;
	uint64_t gen;
	int rc;
};

static bool deliver_one(const shmbus_event_t *ev, void *arg)
{
	struct to_one *t = arg;
	t->rc = deliver_to(t->bus, t->idx, t->gen, (const struct seg_event *)(const void *)ev, SEG_EVF_REPLAYED);
	return t->rc == 0;
}

SHMBUS_API int64_t shmbus_replay_to(shmbus_bus_t *bus, const shmbus_query_t *q, shmbus_sub_id_t to)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	struct to_one t = {.bus = bus, .idx = (uint32_t)(to & 0xFFFF), .gen = to >> 16};
	if (t.idx >= bus->max_subs || at_load_acquire_u32(&bus_sub(bus, t.idx)->state) != SEG_SUB_ACTIVE ||
	    at_load_acquire_u64(&bus_sub(bus, t.idx)->generation) != t.gen)
		return shmbus__fail(ESRCH, "bus '%s' has no subscription %llu", bus->name, (unsigned long long)to);
	int64_t n = shmbus_log_scan(bus, q, deliver_one, &t);
	if (n < 0)
		return n;
	if (t.rc < 0)
		return t.rc; /* the message says which delivery failed */
	return n;
}

struct republish {
	shmbus_pub_t *pub;
	int rc;
};

static bool republish_one(const shmbus_event_t *ev, void *arg)
{
	struct republish *rp = arg;
	shmbus_meta_t meta[SHMBUS_META_MAX];
	size_t nmeta = shmbus_event_metadata_count(ev);
	for (size_t i = 0; i < nmeta && i < SHMBUS_META_MAX; i++)
		shmbus_event_metadata(ev, i, &meta[i].key, &meta[i].value);
	size_t len;
	const void *payload = shmbus_event_payload(ev, &len);
	uint64_t created = shmbus_event_created_ns(ev), expires = shmbus_event_expires_ns(ev);
	float conf = 0;
	bool has_conf = shmbus_event_confidence(ev, &conf);
	const char *target = shmbus_event_target(ev);
#define OPT(s) ((s)[0] ? (s) : NULL)
	shmbus_msg_t m = {
		.type = shmbus_event_type(ev),
		.name = shmbus_event_name(ev),
		.source = shmbus_event_source(ev),
		.target = OPT(target),
		.priority = shmbus_event_priority(ev),
		.correlation_id = shmbus_event_correlation_id(ev),
		.causation_id = shmbus_uuid_is_nil(shmbus_event_causation_id(ev)) ? NULL : shmbus_event_causation_id(ev),
		.ttl_ns = expires > created ? expires - created : 0,
		.max_retries = (uint8_t)shmbus_event_max_retries(ev),
		.retry_count = (uint8_t)shmbus_event_retry_count(ev),
		.status = (uint8_t)shmbus_event_status(ev),
		.schema_version = (uint16_t)shmbus_event_schema_version(ev),
		.content_type = shmbus_event_content_type(ev),
		.flags = (uint16_t)((shmbus_event_flags(ev) & SEG_EVF_USER_MASK) | SEG_EVF_REPLAYED),
		.conversation_id = OPT(shmbus_event_conversation_id(ev)),
		.user_id = OPT(shmbus_event_user_id(ev)),
		.intent = OPT(shmbus_event_intent(ev)),
		.decision_id = OPT(shmbus_event_decision_id(ev)),
		.has_confidence = has_conf,
		.confidence = conf,
		.metadata = meta,
		.metadata_count = nmeta,
		.payload = payload,
		.payload_len = len,
	};
#undef OPT
	rp->rc = shmbus_publish(rp->pub, &m, NULL);
	return rp->rc == 0;
}

SHMBUS_API int64_t shmbus_replay_republish(shmbus_pub_t *pub, const shmbus_query_t *q)
{
	if (!pub)
		return shmbus__fail(EINVAL, "publisher is NULL");
	struct republish rp = {.pub = pub};
	int64_t n = shmbus_log_scan(pub->bus, q, republish_one, &rp);
	if (n < 0)
		return n;
	if (rp.rc < 0)
		return rp.rc;
	return n;
}
