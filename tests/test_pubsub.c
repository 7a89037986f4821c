/*
 * test_pubsub.c - single-process behaviour of publishing and subscribing:
 * fields, zero copy, batches, the five event types, filters, subscription
 * management, slow-consumer policies, priority, large events, durable and
 * group subscriptions, metrics and wait modes.
 */
#include "common.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(pubsub, .init = tc_init, .fini = tc_fini, .timeout = 60);

static bool uuid_eq(const shmbus_uuid_t *a, const shmbus_uuid_t *b)
{
	return memcmp(a->bytes, b->bytes, 16) == 0;
}

static const shmbus_event_t *poll_one(shmbus_sub_t *sub)
{
	const shmbus_event_t *ev = NULL;
	int rc = shmbus_poll(sub, &ev);
	cr_assert_eq(rc, 1, "expected an event, poll = %d (%s)", rc, shmbus_errmsg());
	cr_assert_not_null(ev);
	return ev;
}

static void expect_empty(shmbus_sub_t *sub, const char *what)
{
	const shmbus_event_t *ev = NULL;
	int rc = shmbus_poll(sub, &ev);
	cr_assert_eq(rc, 0, "%s: expected no event, poll = %d%s%s", what, rc, rc == 1 ? ", got " : "",
		     rc == 1 ? shmbus_event_name(ev) : "");
}

/* ------------------------------------------------------------ fields */

Test(pubsub, round_trip_preserves_every_field)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "src-a", 0);

	shmbus_uuid_t cause;
	cr_assert_eq(shmbus_uuid_parse("0190a3c1-2b3c-7d4e-8f50-6172839405a6", &cause), 0);
	shmbus_meta_t meta[] = {{"region", "eu-west"}, {"attempt", "2"}, {"empty", ""}};
	const char payload[] = "{\"order\":17,\"items\":[1,2,3]}";
	shmbus_msg_t m = {
		.type = SHMBUS_QUERY,
		.name = "order.created",
		.target = "svc-b",
		.priority = SHMBUS_PRIORITY_HIGH,
		.causation_id = &cause,
		.ttl_ns = 5 * TC_SEC_NS,
		.max_retries = 3,
		.retry_count = 1,
		.schema_version = 7,
		.content_type = SHMBUS_CONTENT_JSON,
		.flags = SHMBUS_FLAG_MOBILE_METERED | SHMBUS_FLAG_REPLAYED,
		.conversation_id = "conv-1",
		.user_id = "user-1",
		.intent = "buy",
		.decision_id = "dec-9",
		.has_confidence = true,
		.confidence = 0.75f,
		.metadata = meta,
		.metadata_count = 3,
		.payload = payload,
		.payload_len = sizeof payload - 1,
	};
	uint64_t t0 = tc_realtime_ns();
	shmbus_uuid_t id;
	cr_assert_eq(shmbus_publish(pub, &m, &id), 0, "%s", shmbus_errmsg());
	uint64_t t1 = tc_realtime_ns();

	const shmbus_event_t *ev = poll_one(sub);
	cr_assert(uuid_eq(shmbus_event_id(ev), &id), "event id differs from the id publish returned");
	cr_assert(uuid_eq(shmbus_event_correlation_id(ev), &id), "default correlation id must be the event's own id");
	cr_assert(uuid_eq(shmbus_event_causation_id(ev), &cause), "causation id");
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_QUERY);
	cr_assert_str_eq(shmbus_event_name(ev), "order.created");
	cr_assert_str_eq(shmbus_event_source(ev), "src-a");
	cr_assert_str_eq(shmbus_event_target(ev), "svc-b");
	cr_assert_eq(shmbus_event_priority(ev), SHMBUS_PRIORITY_HIGH);
	uint64_t created = shmbus_event_created_ns(ev), published = shmbus_event_published_ns(ev);
	cr_assert(created >= t0 && created <= t1, "created_ns %llu outside [%llu, %llu]", (unsigned long long)created,
		  (unsigned long long)t0, (unsigned long long)t1);
	cr_assert(published >= created && published <= t1, "published_ns %llu", (unsigned long long)published);
	uint64_t expires = shmbus_event_expires_ns(ev);
	cr_assert(expires >= created + m.ttl_ns && expires <= t1 + m.ttl_ns, "expires_ns %llu is not created + ttl",
		  (unsigned long long)expires);
	cr_assert_eq(shmbus_event_status(ev), SHMBUS_STATUS_PUBLISHED);
	cr_assert_eq(shmbus_event_retry_count(ev), 1);
	cr_assert_eq(shmbus_event_max_retries(ev), 3);
	cr_assert_eq(shmbus_event_schema_version(ev), 7);
	cr_assert_eq(shmbus_event_content_type(ev), SHMBUS_CONTENT_JSON);
	uint16_t fl = shmbus_event_flags(ev);
	cr_assert_eq(fl & 0x3F, SHMBUS_FLAG_MOBILE_METERED | SHMBUS_FLAG_REPLAYED, "flags 0x%x", fl);
	cr_assert_not(shmbus_redelivered(sub, ev), "a first delivery is not a redelivery");
	cr_assert_str_eq(shmbus_event_conversation_id(ev), "conv-1");
	cr_assert_str_eq(shmbus_event_user_id(ev), "user-1");
	cr_assert_str_eq(shmbus_event_intent(ev), "buy");
	cr_assert_str_eq(shmbus_event_decision_id(ev), "dec-9");
	float conf = 0;
	cr_assert(shmbus_event_confidence(ev, &conf));
	cr_assert_float_eq(conf, 0.75f, 1e-6);
	cr_assert_eq(shmbus_event_metadata_count(ev), 3);
	for (size_t i = 0; i < 3; i++) {
		const char *k = NULL, *v = NULL;
		cr_assert_eq(shmbus_event_metadata(ev, i, &k, &v), 0);
		cr_assert_str_eq(k, meta[i].key);
		cr_assert_str_eq(v, meta[i].value);
		cr_assert_str_eq(shmbus_event_meta_get(ev, meta[i].key), meta[i].value);
	}
	const char *k = NULL, *v = NULL;
	cr_assert_lt(shmbus_event_metadata(ev, 3, &k, &v), 0, "metadata index 3 of 3");
	cr_assert_null(shmbus_event_meta_get(ev, "missing"));
	size_t len = 0;
	const void *p = shmbus_event_payload(ev, &len);
	cr_assert_eq(len, sizeof payload - 1);
	cr_assert_arr_eq(p, payload, len);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	cr_assert_eq(shmbus_release(sub, ev), -EINVAL, "second release of the same event");

	/* Defaults. */
	shmbus_uuid_t corr, id2;
	cr_assert_eq(shmbus_uuid_parse("11111111-2222-7333-8444-555555555555", &corr), 0);
	shmbus_pub_t *pub2 = tc_pub(bus, NULL, 0);
	shmbus_msg_t d = {.type = SHMBUS_NOTIFICATION, .name = "plain", .correlation_id = &corr};
	cr_assert_eq(shmbus_publish(pub2, &d, &id2), 0, "%s", shmbus_errmsg());
	ev = poll_one(sub);
	char src[32];
	snprintf(src, sizeof src, "pid-%d", (int)getpid());
	cr_assert_str_eq(shmbus_event_source(ev), src, "default source");
	cr_assert_str_eq(shmbus_event_target(ev), "");
	cr_assert_eq(shmbus_event_priority(ev), SHMBUS_PRIORITY_NORMAL);
	cr_assert(uuid_eq(shmbus_event_correlation_id(ev), &corr));
	cr_assert(shmbus_uuid_is_nil(shmbus_event_causation_id(ev)));
	cr_assert_eq(shmbus_event_expires_ns(ev), 0);
	cr_assert_eq(shmbus_event_schema_version(ev), 1);
	cr_assert_not(shmbus_event_confidence(ev, &conf));
	cr_assert_eq(shmbus_event_metadata_count(ev), 0);
	cr_assert_str_eq(shmbus_event_conversation_id(ev), "");
	shmbus_event_payload(ev, &len);
	cr_assert_eq(len, 0);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	expect_empty(sub, "after two events");

	shmbus_pub_close(pub2);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ------------------------------------------------------------ zero copy */

Test(pubsub, reserve_commit_and_abort)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "zc.commit", .target = "worker"};
	shmbus_claim_t claim;
	cr_assert_eq(shmbus_reserve(pub, &m, 1000, &claim), 0, "%s", shmbus_errmsg());
	cr_assert_not_null(claim.payload);
	cr_assert_eq(claim.payload_len, 1000);
	for (int i = 0; i < 1000; i++)
		((uint8_t *)claim.payload)[i] = (uint8_t)(i * 7);
	uint64_t seq = claim.seq;
	expect_empty(sub, "reserved but not committed");
	shmbus_uuid_t id;
	cr_assert_eq(shmbus_commit(pub, &claim, &id), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_uuid_seq(&id), seq);

	const shmbus_event_t *ev = poll_one(sub);
	cr_assert_str_eq(shmbus_event_name(ev), "zc.commit");
	cr_assert_eq(shmbus_event_seq(ev), seq);
	size_t len = 0;
	const uint8_t *p = shmbus_event_payload(ev, &len);
	cr_assert_eq(len, 1000);
	uint8_t want[1000];
	for (int i = 0; i < 1000; i++)
		want[i] = (uint8_t)(i * 7);
	cr_assert_eq(memcmp(p, want, sizeof want), 0, "zero-copy payload corrupted");
	cr_assert_eq(shmbus_release(sub, ev), 0);

	/* Aborted: never delivered, and the bus goes on. */
	m.name = "zc.aborted";
	cr_assert_eq(shmbus_reserve(pub, &m, 300, &claim), 0, "%s", shmbus_errmsg());
	memset(claim.payload, 0xEE, 300);
	cr_assert_eq(shmbus_abort(pub, &claim), 0, "%s", shmbus_errmsg());
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.abort", 0, 1), 0);
	ev = poll_one(sub);
	cr_assert_str_eq(shmbus_event_name(ev), "after.abort", "got %s", shmbus_event_name(ev));
	cr_assert_eq(shmbus_release(sub, ev), 0);
	expect_empty(sub, "after abort");

	/* Many aborts in a row do not leak ring space. */
	for (unsigned i = 0; i < 4 * cfg.slots; i++) {
		cr_assert_eq(shmbus_reserve(pub, &m, 200, &claim), 0, "reserve %u: %s", i, shmbus_errmsg());
		cr_assert_eq(shmbus_abort(pub, &claim), 0);
	}
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.aborts", 0, 2), 0, "%s", shmbus_errmsg());
	ev = poll_one(sub);
	cr_assert_str_eq(shmbus_event_name(ev), "after.aborts");
	cr_assert_eq(shmbus_release(sub, ev), 0);
	expect_empty(sub, "after many aborts");

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ---------------------------------------------------------------- batch */

Test(pubsub, batch_publish_delivers_all_in_order)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	enum { N = 100 };
	shmbus_msg_t msgs[N];
	uint32_t vals[N];
	shmbus_uuid_t ids[N];
	tc_u32_batch(msgs, vals, N, "batch");
	int rc = shmbus_publish_batch(pub, msgs, N, ids);
	cr_assert_eq(rc, N, "publish_batch = %d (%s)", rc, shmbus_errmsg());
	for (uint32_t i = 1; i < N; i++)
		cr_assert_gt(shmbus_uuid_seq(&ids[i]), shmbus_uuid_seq(&ids[i - 1]), "batch ids out of order");
	for (uint32_t i = 0; i < N; i++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_assert_eq(tc_payload_u32(ev), i, "event %u out of order (got %u)", i, tc_payload_u32(ev));
		cr_assert(uuid_eq(shmbus_event_id(ev), &ids[i]));
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	expect_empty(sub, "after batch");
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, N);

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* Everything a subscriber can read of two events but their ids, sequences
 * and times. */
static void expect_same_but_identity(const shmbus_event_t *a, const shmbus_event_t *b, unsigned i)
{
	cr_expect_eq(shmbus_event_size(a), shmbus_event_size(b), "event %u: size", i);
	cr_expect_eq(shmbus_event_type(a), shmbus_event_type(b), "event %u: type", i);
	cr_expect_str_eq(shmbus_event_name(a), shmbus_event_name(b), "event %u: name", i);
	cr_expect_str_eq(shmbus_event_source(a), shmbus_event_source(b), "event %u: source", i);
	cr_expect_str_eq(shmbus_event_target(a), shmbus_event_target(b), "event %u: target", i);
	cr_expect_str_eq(shmbus_event_conversation_id(a), shmbus_event_conversation_id(b), "event %u", i);
	cr_expect_str_eq(shmbus_event_user_id(a), shmbus_event_user_id(b), "event %u: user", i);
	cr_expect_str_eq(shmbus_event_intent(a), shmbus_event_intent(b), "event %u: intent", i);
	cr_expect_str_eq(shmbus_event_decision_id(a), shmbus_event_decision_id(b), "event %u: decision", i);
	cr_expect_eq(shmbus_event_priority(a), shmbus_event_priority(b), "event %u: priority", i);
	cr_expect_eq(shmbus_event_status(a), shmbus_event_status(b), "event %u: status", i);
	cr_expect_eq(shmbus_event_max_retries(a), shmbus_event_max_retries(b), "event %u: max_retries", i);
	cr_expect_eq(shmbus_event_schema_version(a), shmbus_event_schema_version(b), "event %u: schema", i);
	cr_expect_eq(shmbus_event_content_type(a), shmbus_event_content_type(b), "event %u: content", i);
	cr_expect_eq(shmbus_event_flags(a), shmbus_event_flags(b), "event %u: flags", i);
	cr_expect_eq(shmbus_event_expires_ns(a) - shmbus_event_created_ns(a),
		     shmbus_event_expires_ns(b) - shmbus_event_created_ns(b), "event %u: ttl", i);
	float ca = -1, cb = -1;
	cr_expect_eq(shmbus_event_confidence(a, &ca), shmbus_event_confidence(b, &cb), "event %u: confidence", i);
	cr_expect_eq(ca, cb, "event %u: confidence", i);
	cr_expect_eq(shmbus_event_metadata_count(a), shmbus_event_metadata_count(b), "event %u: metadata", i);
	for (size_t k = 0; k < shmbus_event_metadata_count(a); k++) {
		const char *ka, *va, *kb, *vb;
		cr_assert_eq(shmbus_event_metadata(a, k, &ka, &va), 0);
		cr_assert_eq(shmbus_event_metadata(b, k, &kb, &vb), 0);
		cr_expect_str_eq(ka, kb, "event %u: metadata key %zu", i, k);
		cr_expect_str_eq(va, vb, "event %u: metadata value %zu", i, k);
	}
	size_t la, lb;
	const void *pa = shmbus_event_payload(a, &la), *pb = shmbus_event_payload(b, &lb);
	cr_expect_eq(la, lb, "event %u: payload length", i);
	cr_expect(la == lb && memcmp(pa, pb, la) == 0, "event %u: payload bytes", i);
	cr_expect_eq(shmbus_event_check(a, shmbus_event_size(a)), 0, "event %u does not check", i);
}

/* A batch of one kind of message is laid out once and each event copied
 * from the one before: every event must still be exactly what publishing
 * its message alone gives, with its own id (its own correlation id unless
 * the message names one), whatever the payload sizes and however shapes
 * alternate. */
Test(pubsub, batch_of_one_shape_encodes_like_single_publishes)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "shaper", 0);

	static const char big[600] = {[0] = 'x', [599] = 'y'};
	shmbus_meta_t meta[2] = {{.key = "k1", .value = "v1"}, {.key = "tenant", .value = "blue"}};
	shmbus_uuid_t corr;
	shmbus_uuid_parse("0190b6a0-0000-7000-8000-000000000042", &corr);
	shmbus_msg_t full = {.type = SHMBUS_COMMAND, .name = "ship", .target = "courier",
			     .priority = SHMBUS_PRIORITY_HIGH, .ttl_ns = 5 * TC_SEC_NS, .max_retries = 3,
			     .schema_version = 2, .content_type = SHMBUS_CONTENT_TEXT, .conversation_id = "conv-1",
			     .user_id = "u7", .intent = "deliver", .decision_id = "d9", .has_confidence = true,
			     .confidence = 0.75f, .metadata = meta, .metadata_count = 2};
	enum { N = 9 };
	static const size_t lens[N] = {0, 5, 40, 600, 1, 17, 17, 3, 0};
	shmbus_msg_t msgs[N];
	for (unsigned i = 0; i < N; i++) {
		msgs[i] = full;
		msgs[i].payload = big;
		msgs[i].payload_len = lens[i];
	}
	msgs[4].name = "other";	      /* a new shape ... */
	msgs[5].name = "other";	      /* ... copied once ... */
	msgs[6].name = "other";
	msgs[6].correlation_id = &corr; /* ... then another, with a correlation id */
	msgs[7].name = "other";
	msgs[7].correlation_id = &corr;
	msgs[8].has_confidence = false; /* and one that differs in a flag only */

	shmbus_uuid_t ids[N];
	int rc = shmbus_publish_batch(pub, msgs, N, ids);
	cr_assert_eq(rc, N, "publish_batch = %d (%s)", rc, shmbus_errmsg());
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(shmbus_publish(pub, &msgs[i], NULL), 0, "single %u: %s", i, shmbus_errmsg());
	const shmbus_event_t *batch[N], *single[N];
	for (unsigned i = 0; i < N; i++)
		batch[i] = poll_one(sub);
	for (unsigned i = 0; i < N; i++)
		single[i] = poll_one(sub);
	for (unsigned i = 0; i < N; i++) {
		expect_same_but_identity(batch[i], single[i], i);
		cr_expect(uuid_eq(shmbus_event_id(batch[i]), &ids[i]), "event %u: not the id returned", i);
		for (unsigned j = 0; j < i; j++)
			cr_expect(!uuid_eq(shmbus_event_id(batch[i]), shmbus_event_id(batch[j])), "ids %u and %u", i, j);
		const shmbus_uuid_t *want = msgs[i].correlation_id ? &corr : &ids[i];
		cr_expect(uuid_eq(shmbus_event_correlation_id(batch[i]), want), "event %u: correlation id", i);
	}
	for (unsigned i = 0; i < N; i++) {
		cr_assert_eq(shmbus_release(sub, batch[i]), 0);
		cr_assert_eq(shmbus_release(sub, single[i]), 0);
	}
	/* a payload past the limit is refused in a copied shape too */
	msgs[1].payload_len = cfg.max_payload + 1;
	cr_expect_eq(shmbus_publish_batch(pub, msgs, 2, NULL), -EMSGSIZE);
	expect_empty(sub, "after the refused batch");

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* What ev must be, published from m with id: every field the message
 * gives, its own id and sequence, its correlation id (its own id unless m
 * names one), and the payload's bytes. */
static void expect_encodes(const shmbus_event_t *ev, const shmbus_msg_t *m, const shmbus_uuid_t *id,
			   const char *source, unsigned i)
{
	cr_expect(uuid_eq(shmbus_event_id(ev), id), "event %u: not the id returned", i);
	cr_expect_eq(shmbus_event_seq(ev), shmbus_uuid_seq(id), "event %u: sequence", i);
	cr_expect(uuid_eq(shmbus_event_correlation_id(ev), m->correlation_id ? m->correlation_id : id),
		  "event %u: correlation id", i);
	static const shmbus_uuid_t nil;
	cr_expect(uuid_eq(shmbus_event_causation_id(ev), m->causation_id ? m->causation_id : &nil),
		  "event %u: causation id", i);
	cr_expect_eq(shmbus_event_type(ev), m->type, "event %u: type", i);
	cr_expect_eq(shmbus_event_priority(ev), m->priority, "event %u: priority", i);
	cr_expect_str_eq(shmbus_event_name(ev), m->name, "event %u: name", i);
	cr_expect_str_eq(shmbus_event_source(ev), source, "event %u: source", i);
	cr_expect_str_eq(shmbus_event_target(ev), m->target ? m->target : "", "event %u: target", i);
	cr_expect_str_eq(shmbus_event_conversation_id(ev), m->conversation_id ? m->conversation_id : "",
			 "event %u: conversation", i);
	cr_expect_eq(shmbus_event_expires_ns(ev) - shmbus_event_created_ns(ev), m->ttl_ns, "event %u: ttl", i);
	cr_expect_eq(shmbus_event_max_retries(ev), m->max_retries, "event %u: max_retries", i);
	cr_expect_eq(shmbus_event_schema_version(ev), m->schema_version, "event %u: schema", i);
	cr_expect_eq(shmbus_event_content_type(ev), m->content_type, "event %u: content", i);
	float c = -1;
	cr_expect_eq(shmbus_event_confidence(ev, &c), m->has_confidence, "event %u: confidence", i);
	cr_expect(!m->has_confidence || c == m->confidence, "event %u: confidence %f", i, (double)c);
	cr_expect_eq(shmbus_event_metadata_count(ev), m->metadata_count, "event %u: metadata", i);
	for (size_t k = 0; k < m->metadata_count && k < shmbus_event_metadata_count(ev); k++) {
		const char *key, *val;
		cr_assert_eq(shmbus_event_metadata(ev, k, &key, &val), 0);
		cr_expect_str_eq(key, m->metadata[k].key, "event %u: metadata key %zu", i, k);
		cr_expect_str_eq(val, m->metadata[k].value, "event %u: metadata value %zu", i, k);
	}
	size_t len;
	const void *p = shmbus_event_payload(ev, &len);
	cr_expect_eq(len, m->payload_len, "event %u: payload length", i);
	cr_expect(len == m->payload_len && memcmp(p, m->payload, len) == 0, "event %u: payload bytes", i);
	cr_expect_eq(shmbus_event_check(ev, shmbus_event_size(ev)), 0, "event %u does not check", i);
}

/*
 * Windows of 16 events or more of a batch are written with streaming
 * stores (but the first event of each run of one shape; a new publisher
 * streams its first stretch, four laps of the ring, which these batches
 * stay within), smaller ones and those of a SHMBUS_PUB_CACHED_BATCHES
 * publisher with ordinary ones: each event must arrive exactly as its
 * message says whichever way, with payloads ending anywhere in a line
 * (lines of template and payload bytes together, whole payload lines, a
 * zero-padded last line), events over several slots, runs of shapes
 * broken by a name and by a correlation id, and a last window too small
 * to stream.
 */
Test(pubsub, streamed_batches_arrive_exactly_as_their_messages_say)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 1024;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *streamed = tc_pub(bus, "streamer", 0), *cached = NULL;
	cr_assert_eq(shmbus_pub_open(bus, &(shmbus_pub_opts_t){.source = "cacher", .flags = SHMBUS_PUB_CACHED_BATCHES},
				     &cached),
		     0, "%s", shmbus_errmsg());
	static uint8_t pattern[4096];
	for (size_t j = 0; j < sizeof pattern; j++)
		pattern[j] = (uint8_t)(j * 7 + 3);
	shmbus_meta_t meta[1] = {{.key = "tenant", .value = "blue"}};
	shmbus_uuid_t corr;
	shmbus_uuid_parse("0190b6a0-0000-7000-8000-000000000042", &corr);
	shmbus_msg_t base = {.type = SHMBUS_COMMAND, .name = "ship", .target = "courier",
			     .priority = SHMBUS_PRIORITY_HIGH, .ttl_ns = 5 * TC_SEC_NS, .max_retries = 3,
			     .schema_version = 2, .content_type = SHMBUS_CONTENT_TEXT, .conversation_id = "conv-1",
			     .has_confidence = true, .confidence = 0.25f, .metadata = meta, .metadata_count = 1};
	enum { N = 150 };
	static const size_t lens[] = {0, 1, 31, 32, 33, 64, 100, 127, 128, 129, 300, 600, 1500};
	enum { NLENS = sizeof lens / sizeof lens[0] };
	static shmbus_msg_t msgs[N];
	for (unsigned i = 0; i < N; i++) {
		msgs[i] = base;
		msgs[i].payload = pattern + i;
		msgs[i].payload_len = lens[i % NLENS];
		if (i >= 20 && i < 30)
			msgs[i].name = "other"; /* a new shape in a window... */
		if (i >= 40 && i < 70)
			msgs[i].correlation_id = &corr; /* ...and one over a window's end */
	}
	/* 150: windows of 64, 64 and 22 (streamed); 70: 64 and 6 (not) */
	static const size_t counts[] = {N, 70};
	shmbus_pub_t *pubs[] = {streamed, cached};
	const char *sources[] = {"streamer", "cacher"};
	for (unsigned p = 0; p < 2; p++) {
		for (unsigned c = 0; c < 2; c++) {
			static shmbus_uuid_t ids[N];
			int rc = shmbus_publish_batch(pubs[p], msgs, counts[c], ids);
			cr_assert_eq(rc, (int)counts[c], "publish_batch = %d (%s)", rc, shmbus_errmsg());
			for (unsigned i = 0; i < counts[c]; i++) {
				const shmbus_event_t *ev = poll_one(sub);
				expect_encodes(ev, &msgs[i], &ids[i], sources[p], i);
				cr_assert_eq(shmbus_release(sub, ev), 0);
			}
			expect_empty(sub, "after a batch");
		}
	}
	shmbus_pub_close(streamed);
	shmbus_pub_close(cached);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* Event format 2: an empty string takes no byte in the string area, so
 * a present one after absent ones is found where the lengths before it
 * put it, through every way an event is written (laid out, from the
 * single-publish cache, copied in a batch) and read (full check, the
 * remembered shape of the last event). */
Test(pubsub, absent_strings_take_no_bytes_and_present_ones_are_found_after_them)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "src", 0);
	uint32_t v = 7;
	/* name "ev" (3 bytes) and source "src" (4): 144 + 7 -> 152 + 4 */
	shmbus_msg_t plain = {.type = SHMBUS_NOTIFICATION, .name = "ev", .payload = &v, .payload_len = 4};
	shmbus_msg_t gaps = plain;
	gaps.target = "";	 /* given but empty: absent */
	gaps.intent = "why"; /* the sixth string, after three absent ones */
	shmbus_msg_t batch[3] = {gaps, gaps, plain};
	for (int i = 0; i < 2; i++) { /* laid out, then from the cache */
		cr_assert_eq(shmbus_publish(pub, &plain, NULL), 0, "%s", shmbus_errmsg());
		cr_assert_eq(shmbus_publish(pub, &gaps, NULL), 0, "%s", shmbus_errmsg());
	}
	cr_assert_eq(shmbus_publish_batch(pub, batch, 3, NULL), 3, "%s", shmbus_errmsg());
	static const bool has_intent[] = {false, true, false, true, true, true, false};
	for (unsigned i = 0; i < sizeof has_intent / sizeof has_intent[0]; i++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_expect_str_eq(shmbus_event_name(ev), "ev", "event %u", i);
		cr_expect_str_eq(shmbus_event_source(ev), "src", "event %u", i);
		cr_expect_str_eq(shmbus_event_target(ev), "", "event %u", i);
		cr_expect_str_eq(shmbus_event_conversation_id(ev), "", "event %u", i);
		cr_expect_str_eq(shmbus_event_user_id(ev), "", "event %u", i);
		cr_expect_str_eq(shmbus_event_intent(ev), has_intent[i] ? "why" : "", "event %u", i);
		cr_expect_str_eq(shmbus_event_decision_id(ev), "", "event %u", i);
		/* the string area is the present strings and their NULs only */
		size_t strings = 3 + 4 + (has_intent[i] ? 4 : 0);
		cr_expect_eq(shmbus_event_size(ev), ((144 + strings + 7) & ~(size_t)7) + 4, "event %u: %zu bytes", i,
			     shmbus_event_size(ev));
		cr_expect_eq(shmbus_event_check(ev, shmbus_event_size(ev)), 0, "event %u", i);
		cr_expect_eq(tc_payload_u32(ev), 7u);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	expect_empty(sub, "after the seven");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* Collect what sub has now: payload values in delivery order. */
static unsigned collect_u32(shmbus_sub_t *sub, uint32_t *out, unsigned max)
{
	unsigned n = 0;
	const shmbus_event_t *ev;
	while (n < max && shmbus_poll(sub, &ev) == 1) {
		out[n++] = tc_payload_u32(ev);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	return n;
}

/* A batch routes each event by its own fields, whether it is matched
 * afresh or shares the previous event's shape (and its match): runs of
 * one name, alternating names and priorities, two queue classes. */
Test(pubsub, batch_routes_each_event_by_its_own_filter)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	const char *a_name[] = {"alpha"}, *b_name[] = {"beta"};
	shmbus_filter_t *fa, *fb, *fhigh;
	cr_assert_eq(shmbus_filter_names(a_name, 1, &fa), 0);
	cr_assert_eq(shmbus_filter_names(b_name, 1, &fb), 0);
	cr_assert_eq(shmbus_filter_min_priority(SHMBUS_PRIORITY_HIGH, &fhigh), 0);
	shmbus_sub_t *sa = tc_sub(bus, fa), *sb = tc_sub(bus, fb), *shigh = tc_sub(bus, fhigh);
	shmbus_sub_t *all = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	/* runs: aaa b aa bbb a(high) a(high) b(high) a */
	static const char pattern[] = "aaabaabbbAABa";
	enum { N = sizeof pattern - 1 };
	shmbus_msg_t msgs[N];
	uint32_t vals[N];
	uint32_t want_a[N], want_b[N], want_high[N];
	unsigned na = 0, nb = 0, nh = 0;
	for (uint32_t i = 0; i < N; i++) {
		char c = pattern[i];
		bool high = c == 'A' || c == 'B';
		bool is_a = c == 'a' || c == 'A';
		vals[i] = i;
		msgs[i] = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = is_a ? "alpha" : "beta",
					 .priority = high ? SHMBUS_PRIORITY_HIGH : SHMBUS_PRIORITY_NORMAL,
					 .payload = &vals[i], .payload_len = sizeof vals[i]};
		if (is_a)
			want_a[na++] = i;
		else
			want_b[nb++] = i;
		if (high)
			want_high[nh++] = i;
	}
	cr_assert_eq(shmbus_publish_batch(pub, msgs, N, NULL), N, "%s", shmbus_errmsg());

	uint32_t got[N + 1];
	/* urgent events come first within each subscription; compare as
	 * sets plus per-class order */
	struct {
		shmbus_sub_t *sub;
		const uint32_t *want;
		unsigned n;
		const char *what;
	} cases[] = {{sa, want_a, na, "alpha"}, {sb, want_b, nb, "beta"}, {shigh, want_high, nh, "high"}};
	for (unsigned c = 0; c < 3; c++) {
		unsigned n = collect_u32(cases[c].sub, got, N + 1);
		cr_expect_eq(n, cases[c].n, "%s: %u events, expected %u", cases[c].what, n, cases[c].n);
		bool seen[N] = {false};
		for (unsigned i = 0; i < n && i < N; i++) {
			cr_assert_lt(got[i], N);
			seen[got[i]] = true;
		}
		for (unsigned i = 0; i < cases[c].n; i++)
			cr_expect(seen[cases[c].want[i]], "%s: event %u missing", cases[c].what, cases[c].want[i]);
		for (unsigned i = 1; i < n; i++) {
			bool hi = pattern[got[i]] < 'a', hi_prev = pattern[got[i - 1]] < 'a';
			if (hi == hi_prev)
				cr_expect_gt(got[i], got[i - 1], "%s: %u after %u", cases[c].what, got[i], got[i - 1]);
		}
	}
	cr_expect_eq(collect_u32(all, got, N + 1), N, "the unfiltered subscription");

	shmbus_pub_close(pub);
	shmbus_sub_close(sa);
	shmbus_sub_close(sb);
	shmbus_sub_close(shigh);
	shmbus_sub_close(all);
	shmbus_close(bus);
}

/* ------------------------------------------------------------- the types */

Test(pubsub, convenience_calls_for_the_five_types)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *client = tc_pub(bus, "client-1", 0);
	shmbus_pub_t *server = tc_pub(bus, "server-1", 0);
	size_t len;
	const void *p;

	shmbus_uuid_t cmd_id;
	cr_assert_eq(shmbus_publish_command(client, "door.open", "{\"door\":3}", "door-svc", &cmd_id), 0, "%s",
		     shmbus_errmsg());
	const shmbus_event_t *ev = poll_one(sub);
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_COMMAND);
	cr_assert_str_eq(shmbus_event_name(ev), "door.open");
	cr_assert_str_eq(shmbus_event_target(ev), "door-svc");
	cr_assert_str_eq(shmbus_event_source(ev), "client-1");
	cr_assert_eq(shmbus_event_content_type(ev), SHMBUS_CONTENT_JSON);
	p = shmbus_event_payload(ev, &len);
	cr_assert_eq(len, strlen("{\"door\":3}"));
	cr_assert_arr_eq(p, "{\"door\":3}", len);
	cr_assert(uuid_eq(shmbus_event_id(ev), &cmd_id));
	cr_assert_eq(shmbus_release(sub, ev), 0);

	cr_assert_eq(shmbus_publish_notification(client, "door.opened", NULL, NULL), 0);
	ev = poll_one(sub);
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_NOTIFICATION);
	cr_assert_str_eq(shmbus_event_name(ev), "door.opened");
	shmbus_event_payload(ev, &len);
	cr_assert_eq(len, 0, "NULL data must give an empty payload");
	cr_assert_eq(shmbus_release(sub, ev), 0);

	shmbus_uuid_t q_id;
	cr_assert_eq(shmbus_publish_query(client, "stock.level", "{\"sku\":\"A1\"}", "stock-svc", &q_id), 0);
	const shmbus_event_t *q = poll_one(sub);
	cr_assert_eq(shmbus_event_type(q), SHMBUS_QUERY);
	cr_assert_str_eq(shmbus_event_target(q), "stock-svc");

	shmbus_uuid_t r_id;
	cr_assert_eq(shmbus_publish_response(server, q, "{\"level\":12}", true, &r_id), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_publish_response(server, q, "{\"why\":\"db\"}", false, NULL), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_release(sub, q), 0);

	ev = poll_one(sub);
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_RESPONSE);
	cr_assert(uuid_eq(shmbus_event_id(ev), &r_id));
	cr_assert(uuid_eq(shmbus_event_correlation_id(ev), &q_id), "response correlation = the query's");
	cr_assert(uuid_eq(shmbus_event_causation_id(ev), &q_id), "response causation = the query");
	cr_assert_str_eq(shmbus_event_target(ev), "client-1", "response target = the query's source");
	cr_assert_str_eq(shmbus_event_source(ev), "server-1");
	cr_assert_str_eq(shmbus_event_name(ev), "stock.level");
	cr_assert_eq(shmbus_event_flags(ev) & (SHMBUS_FLAG_SUCCESS | SHMBUS_FLAG_FAILURE), SHMBUS_FLAG_SUCCESS);
	p = shmbus_event_payload(ev, &len);
	cr_assert_eq(len, strlen("{\"level\":12}"));
	cr_assert_arr_eq(p, "{\"level\":12}", len);
	cr_assert_eq(shmbus_release(sub, ev), 0);

	ev = poll_one(sub);
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_RESPONSE);
	cr_assert(uuid_eq(shmbus_event_correlation_id(ev), &q_id));
	cr_assert_eq(shmbus_event_flags(ev) & (SHMBUS_FLAG_SUCCESS | SHMBUS_FLAG_FAILURE), SHMBUS_FLAG_FAILURE);
	cr_assert_eq(shmbus_release(sub, ev), 0);

	shmbus_uuid_t e_id;
	cr_assert_eq(shmbus_publish_error(server, "E_TIMEOUT", "backend did not answer", &q_id, "{\"after_ms\":500}",
					  &e_id), 0, "%s", shmbus_errmsg());
	ev = poll_one(sub);
	cr_assert_eq(shmbus_event_type(ev), SHMBUS_ERROR);
	cr_assert_str_eq(shmbus_event_name(ev), "E_TIMEOUT");
	const char *msg = shmbus_event_meta_get(ev, "message");
	cr_assert_not_null(msg, "error message metadata missing");
	cr_assert_str_eq(msg, "backend did not answer");
	cr_assert(uuid_eq(shmbus_event_causation_id(ev), &q_id), "error causation = source event");
	cr_assert(uuid_eq(shmbus_event_correlation_id(ev), &q_id), "error correlation = source event");
	p = shmbus_event_payload(ev, &len);
	cr_assert_eq(len, strlen("{\"after_ms\":500}"));
	cr_assert_arr_eq(p, "{\"after_ms\":500}", len);
	cr_assert_eq(shmbus_release(sub, ev), 0);

	/* A message over the metadata value limit is refused, not truncated. */
	char long_msg[300];
	memset(long_msg, 'm', sizeof long_msg - 1);
	long_msg[sizeof long_msg - 1] = '\0';
	cr_assert_eq(shmbus_publish_error(server, "E_BIG", long_msg, &q_id, NULL, NULL), -EMSGSIZE);
	expect_empty(sub, "after the five types");

	shmbus_pub_close(client);
	shmbus_pub_close(server);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* --------------------------------------------------------------- filters */

enum { FN = 96 };
static const char *const f_names[] = {"order.created", "order.paid", "user.login", "sys.tick"};
static const char *const f_sources[] = {"svc-a", "svc-b", "svc-c"};
static const char *const f_targets[] = {"t1", "t2"};

struct fev {
	shmbus_type_t type;
	const char *name, *source, *target;
	shmbus_priority_t prio;
};

static struct fev fev_of(uint32_t i)
{
	struct fev e;
	e.type = (shmbus_type_t)(1 + i % 5);
	e.name = f_names[(i / 5) % 4];
	e.source = f_sources[i % 3];
	e.target = (i % 4 == 0) ? NULL : f_targets[(i / 2) % 2];
	e.prio = (shmbus_priority_t)(1 + (i / 3) % 4);
	return e;
}

static bool tgt_is(const struct fev *e, const char *t) { return e->target && strcmp(e->target, t) == 0; }

static bool p_all(uint32_t i) { (void)i; return true; }
static bool p_types(uint32_t i) { struct fev e = fev_of(i); return e.type == SHMBUS_COMMAND || e.type == SHMBUS_QUERY; }
static bool p_names(uint32_t i)
{
	struct fev e = fev_of(i);
	return !strcmp(e.name, "order.created") || !strcmp(e.name, "user.login");
}
static bool p_sources(uint32_t i) { struct fev e = fev_of(i); return !strcmp(e.source, "svc-b"); }
static bool p_targets(uint32_t i) { struct fev e = fev_of(i); return tgt_is(&e, "t1"); }
static bool p_minprio(uint32_t i) { struct fev e = fev_of(i); return e.prio >= SHMBUS_PRIORITY_HIGH; }
static bool p_pattern(uint32_t i) { struct fev e = fev_of(i); return !strncmp(e.name, "order.", 6); }
static bool p_pattern2(uint32_t i)
{
	struct fev e = fev_of(i);
	return strstr(e.name, "login") || strstr(e.name, "tick");
}
static bool p_all_of(uint32_t i)
{
	struct fev e = fev_of(i);
	return (e.type == SHMBUS_NOTIFICATION || e.type == SHMBUS_ERROR) && e.prio >= SHMBUS_PRIORITY_NORMAL;
}
static bool p_any_of(uint32_t i) { struct fev e = fev_of(i); return !strcmp(e.name, "sys.tick") || tgt_is(&e, "t2"); }
static bool p_custom(uint32_t i) { return i % 3 != 1; }
static bool p_nested(uint32_t i)
{
	struct fev e = fev_of(i);
	bool a = (e.type == SHMBUS_COMMAND || !strcmp(e.source, "svc-a")) && (strstr(e.name, "paid") || strstr(e.name, "login")) &&
		 p_custom(i);
	bool b = e.prio == SHMBUS_PRIORITY_CRITICAL && tgt_is(&e, "t1");
	return a || b;
}

static bool custom_pred(const shmbus_event_t *ev, void *arg)
{
	(*(unsigned *)arg)++;
	return p_custom(tc_payload_u32(ev));
}

static shmbus_filter_t *mk_types(uint32_t mask)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_types(mask, &f), 0);
	return f;
}
static shmbus_filter_t *mk_names(const char *a, const char *b)
{
	const char *v[] = {a, b};
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_names(v, b ? 2 : 1, &f), 0);
	return f;
}
static shmbus_filter_t *mk_sources(const char *a)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_sources(&a, 1, &f), 0);
	return f;
}
static shmbus_filter_t *mk_targets(const char *a)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_targets(&a, 1, &f), 0);
	return f;
}
static shmbus_filter_t *mk_min(shmbus_priority_t p)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_min_priority(p, &f), 0);
	return f;
}
static shmbus_filter_t *mk_pattern(const char *re)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_pattern(re, &f), 0, "pattern %s", re);
	return f;
}
static shmbus_filter_t *mk_custom(unsigned *calls)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_custom(custom_pred, calls, &f), 0);
	return f;
}
static shmbus_filter_t *mk_all2(shmbus_filter_t *a, shmbus_filter_t *b)
{
	shmbus_filter_t *k[] = {a, b}, *f = NULL;
	cr_assert_eq(shmbus_filter_all(k, 2, &f), 0);
	return f;
}
static shmbus_filter_t *mk_any2(shmbus_filter_t *a, shmbus_filter_t *b)
{
	shmbus_filter_t *k[] = {a, b}, *f = NULL;
	cr_assert_eq(shmbus_filter_any(k, 2, &f), 0);
	return f;
}

struct fcase {
	const char *what;
	bool (*pred)(uint32_t);
	shmbus_sub_t *sub;
	uint8_t got[FN];
	uint32_t last_urgent, last_normal; /* +1, 0 = none yet */
	unsigned extra, out_of_order;
};

static void record(const shmbus_event_t *ev, void *arg)
{
	struct fcase *c = arg;
	uint32_t i = tc_payload_u32(ev);
	if (i >= FN) {
		c->extra++;
		return;
	}
	c->got[i]++;
	/* Each field as published. */
	struct fev e = fev_of(i);
	cr_assert_eq(shmbus_event_type(ev), e.type);
	cr_assert_str_eq(shmbus_event_name(ev), e.name);
	cr_assert_str_eq(shmbus_event_source(ev), e.source);
	cr_assert_str_eq(shmbus_event_target(ev), e.target ? e.target : "");
	cr_assert_eq(shmbus_event_priority(ev), e.prio);
	uint32_t *last = e.prio >= SHMBUS_PRIORITY_HIGH ? &c->last_urgent : &c->last_normal;
	if (*last > i)
		c->out_of_order++;
	*last = i + 1;
}

Test(pubsub, every_filter_kind_delivers_exactly_its_events)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 32;
	shmbus_bus_t *bus = tc_create(&cfg);
	unsigned custom_calls = 0, nested_calls = 0;

	struct fcase cases[] = {
		{.what = "no filter", .pred = p_all},
		{.what = "types command|query", .pred = p_types},
		{.what = "names order.created,user.login", .pred = p_names},
		{.what = "sources svc-b", .pred = p_sources},
		{.what = "targets t1", .pred = p_targets},
		{.what = "min priority high", .pred = p_minprio},
		{.what = "pattern ^order\\.", .pred = p_pattern},
		{.what = "pattern login|tick", .pred = p_pattern2},
		{.what = "all(types notification|error, min normal)", .pred = p_all_of},
		{.what = "any(names sys.tick, targets t2)", .pred = p_any_of},
		{.what = "custom", .pred = p_custom},
		{.what = "nested", .pred = p_nested},
	};
	shmbus_filter_t *filters[] = {
		NULL,
		mk_types(SHMBUS_TYPE_BIT(SHMBUS_COMMAND) | SHMBUS_TYPE_BIT(SHMBUS_QUERY)),
		mk_names("order.created", "user.login"),
		mk_sources("svc-b"),
		mk_targets("t1"),
		mk_min(SHMBUS_PRIORITY_HIGH),
		mk_pattern("^order\\."),
		mk_pattern("login|tick"),
		mk_all2(mk_types(SHMBUS_TYPE_BIT(SHMBUS_NOTIFICATION) | SHMBUS_TYPE_BIT(SHMBUS_ERROR)),
			mk_min(SHMBUS_PRIORITY_NORMAL)),
		mk_any2(mk_names("sys.tick", NULL), mk_targets("t2")),
		mk_custom(&custom_calls),
		mk_any2(mk_all2(mk_all2(mk_any2(mk_types(SHMBUS_TYPE_BIT(SHMBUS_COMMAND)), mk_sources("svc-a")),
					mk_pattern("paid|login")),
				mk_custom(&nested_calls)),
			mk_all2(mk_min(SHMBUS_PRIORITY_CRITICAL), mk_targets("t1"))),
	};
	size_t nc = sizeof cases / sizeof cases[0];
	for (size_t c = 0; c < nc; c++)
		cases[c].sub = tc_sub(bus, filters[c]);

	shmbus_pub_t *pubs[3];
	for (int s = 0; s < 3; s++)
		pubs[s] = tc_pub(bus, f_sources[s], 0);
	for (uint32_t i = 0; i < FN; i++) {
		struct fev e = fev_of(i);
		shmbus_msg_t m = {.type = e.type, .name = e.name, .target = e.target, .priority = e.prio,
				  .payload = &i, .payload_len = sizeof i};
		/* Half through the publisher's default source, half set per event. */
		if (i % 2)
			m.source = e.source;
		int rc = shmbus_publish(pubs[i % 2 ? (i + 1) % 3 : i % 3], &m, NULL);
		cr_assert_eq(rc, 0, "publish %u: %d %s", i, rc, shmbus_errmsg());
	}

	for (size_t c = 0; c < nc; c++) {
		int n = tc_drain(cases[c].sub, record, &cases[c]);
		cr_assert_geq(n, 0, "%s: drain %d", cases[c].what, n);
		unsigned expected = 0;
		for (uint32_t i = 0; i < FN; i++) {
			unsigned want = cases[c].pred(i) ? 1 : 0;
			expected += want;
			cr_expect_eq(cases[c].got[i], want, "filter %s: event %u (%s %s from %s to %s, prio %d) delivered %u times, want %u",
				     cases[c].what, i, shmbus_type_name(fev_of(i).type), fev_of(i).name, fev_of(i).source,
				     fev_of(i).target ? fev_of(i).target : "-", fev_of(i).prio, cases[c].got[i], want);
		}
		cr_expect_gt(expected, 0, "%s: the test set must exercise the filter", cases[c].what);
		cr_expect_lt(expected, c == 0 ? FN + 1 : FN, "%s: the test set must exercise the filter", cases[c].what);
		cr_expect_eq(cases[c].extra, 0, "%s: foreign events", cases[c].what);
		cr_expect_eq(cases[c].out_of_order, 0, "%s: events out of publish order", cases[c].what);
	}

	/* The custom predicate ran in this process for the routed events only,
	 * and its rejections are counted as filtered. */
	cr_expect_eq(custom_calls, FN, "custom predicate calls");
	shmbus_sub_info_t info;
	int n = shmbus_list_subscriptions(bus, NULL, NULL, 0);
	cr_assert_eq(n, (int)nc, "list_subscriptions total %d", n);
	shmbus_sub_info_t *all = calloc((size_t)n, sizeof *all);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, all, (size_t)n), n);
	bool found = false;
	for (int i = 0; i < n; i++) {
		if (all[i].id != shmbus_sub_id(cases[10].sub))
			continue;
		info = all[i];
		found = true;
	}
	cr_assert(found, "custom subscription not listed");
	unsigned rejected = 0;
	for (uint32_t i = 0; i < FN; i++)
		rejected += !p_custom(i);
	cr_expect_eq(info.filtered, rejected, "custom sub filtered %llu, want %u", (unsigned long long)info.filtered,
		     rejected);
	cr_expect_eq(info.delivered, FN - rejected, "custom sub delivered %llu", (unsigned long long)info.delivered);
	free(all);

	for (int s = 0; s < 3; s++)
		shmbus_pub_close(pubs[s]);
	for (size_t c = 0; c < nc; c++)
		shmbus_sub_close(cases[c].sub);
	shmbus_close(bus);
}

/* ----------------------------------------------- subscription management */

static const shmbus_sub_info_t *find_info(const shmbus_sub_info_t *v, int n, shmbus_sub_id_t id)
{
	for (int i = 0; i < n; i++)
		if (v[i].id == id)
			return &v[i];
	return NULL;
}

Test(pubsub, pause_resume_unsubscribe_and_list)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	shmbus_sub_t *alice1 = NULL, *alice2 = NULL, *bob = NULL;
	shmbus_sub_opts_t oa = {.subscriber_id = "alice"}, ob = {.subscriber_id = "bob", .policy = SHMBUS_POLICY_LAG};
	cr_assert_eq(shmbus_subscribe(bus, &oa, &alice1), 0);
	cr_assert_eq(shmbus_subscribe(bus, &oa, &alice2), 0);
	cr_assert_eq(shmbus_subscribe(bus, &ob, &bob), 0);
	cr_assert_neq(shmbus_sub_id(alice1), shmbus_sub_id(alice2));

	shmbus_sub_info_t v[8];
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 8), 3);
	const shmbus_sub_info_t *bi = find_info(v, 3, shmbus_sub_id(bob));
	cr_assert_not_null(bi);
	cr_assert_str_eq(bi->subscriber_id, "bob");
	cr_assert_eq(bi->policy, SHMBUS_POLICY_LAG);
	cr_assert_not(bi->durable);
	cr_assert_not(bi->paused);
	cr_assert_eq(shmbus_list_subscriptions(bus, "alice", v, 8), 2);
	cr_assert(find_info(v, 2, shmbus_sub_id(alice1)) && find_info(v, 2, shmbus_sub_id(alice2)));
	cr_assert_str_eq(v[0].subscriber_id, "alice");
	cr_assert_eq(shmbus_list_subscriptions(bus, "bob", v, 8), 1);
	cr_assert_eq(v[0].id, shmbus_sub_id(bob));
	cr_assert_eq(shmbus_list_subscriptions(bus, "nobody", v, 8), 0);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 1), 3, "the total, even over cap");

	/* Paused: nothing is queued. */
	cr_assert_eq(shmbus_pause(bus, shmbus_sub_id(alice1)), 0);
	cr_assert_eq(shmbus_list_subscriptions(bus, "alice", v, 8), 2);
	cr_assert(find_info(v, 2, shmbus_sub_id(alice1))->paused);
	cr_assert_not(find_info(v, 2, shmbus_sub_id(alice2))->paused);
	for (uint32_t i = 0; i < 5; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "while.paused", 0, i), 0);
	expect_empty(alice1, "paused");
	cr_assert_eq(tc_drain(alice2, NULL, NULL), 5, "a paused sibling must not affect others");
	cr_assert_eq(tc_drain(bob, NULL, NULL), 5);

	cr_assert_eq(shmbus_resume(bus, shmbus_sub_id(alice1)), 0);
	for (uint32_t i = 100; i < 103; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.resume", 0, i), 0);
	for (uint32_t i = 100; i < 103; i++) {
		const shmbus_event_t *ev = poll_one(alice1);
		cr_assert_eq(tc_payload_u32(ev), i, "after resume: got %u want %u", tc_payload_u32(ev), i);
		cr_assert_eq(shmbus_release(alice1, ev), 0);
	}
	expect_empty(alice1, "after resume");

	/* Removed by id: the handle learns it, the list forgets it. */
	shmbus_sub_id_t gone = shmbus_sub_id(alice1);
	cr_assert_eq(shmbus_unsubscribe_id(bus, gone), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.unsub", 0, 7), 0);
	const shmbus_event_t *ev = NULL;
	cr_assert_eq(shmbus_poll(alice1, &ev), -ESHUTDOWN);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 8), 2);
	cr_assert_null(find_info(v, 2, gone));
	cr_assert_lt(shmbus_pause(bus, gone), 0, "pausing a removed subscription");
	cr_assert_lt(shmbus_resume(bus, gone), 0);
	cr_assert_lt(shmbus_unsubscribe_id(bus, gone), 0);
	cr_assert_lt(shmbus_pause(bus, 0xFFFFFFFFFFull), 0, "pausing an unknown id");

	cr_assert_eq(shmbus_unsubscribe(bob), 0);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 8), 1);
	shmbus_sub_close(alice1);
	shmbus_sub_close(alice2);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 8), 0, "closing a plain sub removes it");
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* The routed count of a subscription whose record an earlier one used
 * starts from zero, in the metrics and in the inspector (shm-dump showed
 * the queue tails of every earlier user too). */
Test(pubsub, a_reused_subscription_record_counts_its_own_routings)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 1; /* the second subscription must take the first's record */
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_sub_t *first = tc_sub(bus, NULL);
	for (uint32_t i = 0; i < 2; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "before", 0, i), 0);
	cr_assert_eq(tc_drain(first, NULL, NULL), 2);
	shmbus_sub_close(first);
	shmbus_sub_t *second = tc_sub(bus, NULL);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after", 0, 9), 0);
	shmbus_sub_info_t v;
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &v, 1), 1);
	cr_assert_eq(v.routed, 1, "metrics: routed %llu", (unsigned long long)v.routed);
	shmbus_inspect_t *in;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_inspect_sub_count(in), 1);
	shmbus_inspect_sub_t *o = malloc(sizeof *o); /* large: its consumers */
	cr_assert_not_null(o);
	cr_assert_eq(shmbus_inspect_sub(in, 0, o), 0);
	cr_assert_eq(o->routed, 1, "inspector: routed %llu", (unsigned long long)o->routed);
	free(o);
	cr_assert_eq(shmbus_inspect_problem_count(in), 0, "%s", shmbus_inspect_problem(in, 0));
	shmbus_inspect_close(in);
	cr_assert_eq(tc_drain(second, NULL, NULL), 1);
	shmbus_sub_close(second);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(pubsub, held_limit_gives_enobufs)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	for (uint32_t i = 0; i < SHMBUS_MAX_HELD + 5; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "held", 0, i), 0);
	const shmbus_event_t *held[SHMBUS_MAX_HELD];
	for (int i = 0; i < SHMBUS_MAX_HELD; i++)
		held[i] = poll_one(sub);
	const shmbus_event_t *ev = NULL;
	cr_assert_eq(shmbus_poll(sub, &ev), -ENOBUFS);
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &info, 1), 1);
	cr_assert_eq(info.held, SHMBUS_MAX_HELD, "held %llu", (unsigned long long)info.held);
	/* Release out of order; the held events stay intact meanwhile. */
	for (int i = SHMBUS_MAX_HELD - 1; i >= 0; i -= 2)
		cr_assert_eq(shmbus_release(sub, held[i]), 0);
	for (int i = SHMBUS_MAX_HELD - 2; i >= 0; i -= 2) {
		cr_assert_eq(tc_payload_u32(held[i]), (uint32_t)i);
		cr_assert_eq(shmbus_release(sub, held[i]), 0);
	}
	cr_assert_eq(tc_drain(sub, NULL, NULL), 5);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A batch hands out a taken run in one go, but priority still holds at
 * every run: urgent events queued before the call lead the array, and one
 * published between two calls leads the next call's array, ahead of the
 * normal events already taken. */
Test(pubsub, poll_batch_puts_urgent_events_first)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	const shmbus_event_t *evs[SHMBUS_MAX_HELD];

	for (uint32_t i = 0; i < 20; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", SHMBUS_PRIORITY_NORMAL, i), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "u", SHMBUS_PRIORITY_CRITICAL, 100), 0);
	int n = shmbus_poll_batch(sub, evs, 4);
	cr_assert_eq(n, 4);
	cr_expect_eq(tc_payload_u32(evs[0]), 100u, "the critical event leads");
	for (int i = 1; i < n; i++)
		cr_expect_eq(tc_payload_u32(evs[i]), (uint32_t)i - 1, "then the normal ones in order");
	cr_assert_eq(shmbus_release_batch(sub, evs, n), 0);

	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "u", SHMBUS_PRIORITY_HIGH, 200), 0);
	n = shmbus_poll_batch(sub, evs, SHMBUS_MAX_HELD);
	cr_assert_eq(n, 18, "%d events", n);
	cr_expect_eq(tc_payload_u32(evs[0]), 200u, "the high event leads the next call");
	for (int i = 1; i < n; i++)
		cr_expect_eq(tc_payload_u32(evs[i]), (uint32_t)i + 2, "event %d", i);
	cr_assert_eq(shmbus_release_batch(sub, evs, n), 0);
	cr_expect_eq(tc_drain(sub, NULL, NULL), 0);

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* Batches in and out: events come in delivery order, at most max and at
 * most what the held limit leaves; released in a batch, their slots are
 * free again (the ring turns many times over); a bad entry in a release
 * batch is reported and the others are still released. */
Test(pubsub, poll_batch_and_release_batch)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	const shmbus_event_t *evs[SHMBUS_MAX_HELD + 8];

	cr_expect_eq(shmbus_poll_batch(sub, evs, 8), 0, "nothing published yet");
	cr_expect_eq(shmbus_poll_batch(sub, evs, 0), -EINVAL);
	cr_expect_eq(shmbus_poll_batch(NULL, evs, 1), -EINVAL);
	cr_expect_eq(shmbus_release_batch(sub, NULL, 1), -EINVAL);
	cr_expect_eq(shmbus_release_batch(sub, evs, 0), 0);

	/* the ring turns 8 times over: every slot freed by release_batch */
	uint32_t next = 0, got = 0;
	for (int round = 0; round < 8 * (int)cfg.slots / 50; round++) {
		for (int i = 0; i < 50; i++)
			cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "b", 0, next++), 0, "publish %u: %s", next,
				     shmbus_errmsg());
		int n;
		while ((n = shmbus_poll_batch(sub, evs, 16)) > 0) {
			cr_assert_leq(n, 16);
			for (int i = 0; i < n; i++)
				cr_assert_eq(tc_payload_u32(evs[i]), got + (uint32_t)i, "event %u out of order", got + i);
			got += (uint32_t)n;
			cr_assert_eq(shmbus_release_batch(sub, evs, n), 0, "%s", shmbus_errmsg());
		}
		cr_assert_eq(n, 0);
	}
	cr_expect_eq(got, next);

	/* the held limit: one batch stops at it, the next fails */
	for (uint32_t i = 0; i < SHMBUS_MAX_HELD + 5; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "b", 0, i), 0);
	const shmbus_event_t *one = poll_one(sub);
	int n = shmbus_poll_batch(sub, evs, SHMBUS_MAX_HELD + 8);
	cr_expect_eq(n, SHMBUS_MAX_HELD - 1, "%d taken with one held", n);
	cr_expect_eq(shmbus_poll_batch(sub, evs + n, 4), -ENOBUFS);
	/* a foreign pointer in the middle: reported, the rest released */
	const shmbus_event_t *mixed[3] = {evs[0], (const shmbus_event_t *)(const void *)&cfg, evs[1]};
	cr_expect_eq(shmbus_release_batch(sub, mixed, 3), -EINVAL);
	cr_expect_eq(shmbus_release(sub, evs[0]), -EINVAL, "evs[0] was released by the batch");
	cr_expect_eq(shmbus_release(sub, evs[1]), -EINVAL, "evs[1] was released by the batch");
	cr_expect_eq(shmbus_release_batch(sub, evs + 2, n - 2), 0);
	cr_expect_eq(shmbus_release(sub, one), 0);
	cr_expect_eq(tc_drain(sub, NULL, NULL), 5);

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

static bool even_payload(const shmbus_event_t *ev, void *arg)
{
	(void)arg;
	return tc_payload_u32(ev) % 2 == 0;
}

/* A custom predicate runs on every event a batch poll hands out, also on
 * a run of one shape, where the consumer opens events without the
 * structural tests (open_event_usual declines a subscription with one). */
Test(pubsub, a_custom_predicate_sees_every_event_of_a_batch_of_one_shape)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_custom(even_payload, NULL, &f), 0);
	shmbus_sub_t *sub = tc_sub(bus, f); /* takes f */
	shmbus_pub_t *pub = tc_pub(bus, "pred", 0);
	enum { N = 12 };
	shmbus_msg_t msgs[N];
	uint32_t vals[N];
	tc_u32_batch(msgs, vals, N, "p");
	cr_assert_eq(shmbus_publish_batch(pub, msgs, N, NULL), N, "%s", shmbus_errmsg());
	const shmbus_event_t *evs[N];
	int n = shmbus_poll_batch(sub, evs, N);
	cr_assert_eq(n, N / 2, "batch poll handed out %d", n);
	for (int i = 0; i < n; i++)
		cr_expect_eq(tc_payload_u32(evs[i]), 2u * (uint32_t)i, "event %d", i);
	cr_assert_eq(shmbus_release_batch(sub, evs, n), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A durable subscription whose filter has a custom predicate: the record
 * keeps only that it has one, so a consumer attaching without the filter
 * is refused (it delivered what the predicate rejects), and one that
 * passes it again gets what was queued meanwhile, through the predicate. */
Test(pubsub, a_durable_custom_predicate_must_come_back_with_its_consumer)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_custom(even_payload, NULL, &f), 0);
	shmbus_sub_opts_t o = {.subscriber_id = "evens", .durable = true, .filter = f};
	shmbus_sub_t *sub;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	shmbus_sub_close(sub); /* durable: it stays, and queues */
	shmbus_pub_t *pub = tc_pub(bus, "pred", 0);
	for (uint32_t i = 0; i < 6; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", 0, i), 0);
	o.filter = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), -EINVAL, "attached without its predicate");
	cr_expect(strstr(shmbus_errmsg(), "custom predicate"), "%s", shmbus_errmsg());
	o.filter = f;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	const shmbus_event_t *ev;
	for (uint32_t want = 0; want < 6; want += 2) {
		cr_assert_eq(shmbus_poll(sub, &ev), 1, "event %u", want);
		cr_expect_eq(tc_payload_u32(ev), want);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	cr_assert_eq(shmbus_poll(sub, &ev), 0, "an odd payload got through");
	shmbus_unsubscribe(sub);
	shmbus_filter_free(f);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* Limits a subscription must either honour or refuse, never accept and
 * then quietly break (found by an independent test of the API's edges):
 * a filter nested below the depth evaluators follow was taken and then
 * matched nothing; a TTL past the end of time wrapped, and the event was
 * born expired (a dispatcher dead-lettered it unhandled). */
Test(pubsub, deep_filters_are_refused_and_huge_ttls_never_expire)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "edge", 0);
	int deepest = -1;
	for (int wraps = 0; wraps <= 12; wraps++) {
		shmbus_filter_t *f = NULL;
		cr_assert_eq(shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_NOTIFICATION), &f), 0);
		for (int k = 0; k < wraps; k++) {
			shmbus_filter_t *outer = NULL;
			cr_assert_eq(shmbus_filter_all(&f, 1, &outer), 0);
			f = outer;
		}
		shmbus_sub_t *sub = NULL;
		int rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &sub);
		shmbus_filter_free(f);
		if (rc < 0) {
			cr_assert_eq(rc, -E2BIG, "%d wrappers: %s", wraps, shmbus_errmsg());
			continue;
		}
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "deep", 0, (uint32_t)wraps), 0);
		cr_assert_eq(tc_drain(sub, NULL, NULL), 1, "%d wrappers: accepted, but the event never came", wraps);
		deepest = wraps;
		shmbus_sub_close(sub);
	}
	cr_expect_eq(deepest, SHMBUS_FILTER_DEPTH_MAX, "the deepest filter accepted has %d wrappers", deepest);

	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "forever", .ttl_ns = UINT64_MAX};
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_gt(shmbus_event_expires_ns(ev), shmbus_event_created_ns(ev), "a TTL of UINT64_MAX wrapped");
	cr_assert_eq(shmbus_release(sub, ev), 0);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A batch of messages whose padding and confidence the caller never
 * wrote (malloc'd, filled field by field, has_confidence false): the
 * batch's shape compare must not let them decide anything. Here the
 * events must simply arrive whole; under memcheck (`valgrind
 * --trace-children=yes build/tests/test_pubsub --filter 'pubsub/a_batch_of*'`)
 * a decision that depends on the unwritten bytes is reported (it was,
 * while the compare read confidence whatever has_confidence said). */
Test(pubsub, a_batch_of_messages_with_unwritten_padding_arrives_whole)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "raw", 0);
	enum { N = 8 };
	shmbus_msg_t *msgs = malloc(N * sizeof *msgs);
	cr_assert_not_null(msgs);
	uint32_t vals[N];
	for (unsigned i = 0; i < N; i++) {
		shmbus_msg_t *m = &msgs[i];
		vals[i] = i;
		m->type = SHMBUS_NOTIFICATION, m->name = "raw", m->source = NULL, m->target = NULL;
		m->priority = SHMBUS_PRIORITY_NORMAL, m->correlation_id = NULL, m->causation_id = NULL, m->ttl_ns = 0;
		m->max_retries = 0, m->retry_count = 0, m->status = 0, m->schema_version = 0;
		m->content_type = SHMBUS_CONTENT_BINARY, m->flags = 0, m->conversation_id = NULL, m->user_id = NULL;
		m->intent = NULL, m->decision_id = NULL, m->has_confidence = false; /* confidence left unwritten */
		m->metadata = NULL, m->metadata_count = 0, m->payload = &vals[i], m->payload_len = sizeof vals[i];
	}
	cr_assert_eq(shmbus_publish_batch(pub, msgs, N, NULL), N, "%s", shmbus_errmsg());
	free(msgs);
	const shmbus_event_t *evs[N];
	int n = shmbus_poll_batch(sub, evs, N);
	cr_assert_eq(n, N, "batch poll handed out %d", n);
	for (int i = 0; i < n; i++) {
		cr_expect_eq(tc_payload_u32(evs[i]), (uint32_t)i, "event %d", i);
		cr_expect_str_eq(shmbus_event_name(evs[i]), "raw");
	}
	cr_assert_eq(shmbus_release_batch(sub, evs, n), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ----------------------------------------------------- slow consumers */

struct order_check {
	uint32_t next_min;
	unsigned count, bad;
};

static void check_increasing(const shmbus_event_t *ev, void *arg)
{
	struct order_check *o = arg;
	uint32_t v = tc_payload_u32(ev);
	if (v < o->next_min)
		o->bad++;
	o->next_min = v + 1;
	o->count++;
}

Test(pubsub, lag_subscriber_never_blocks_and_counts_missed)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *lag = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "laggard", .policy = SHMBUS_POLICY_LAG};
	cr_assert_eq(shmbus_subscribe(bus, &o, &lag), 0);
	shmbus_sub_t *fast = tc_sub(bus, NULL); /* keeps up, must get everything */
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);

	uint32_t total = 10 * cfg.slots;
	struct order_check fast_seen = {0};
	for (uint32_t i = 0; i < total; i++) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "lag", 0, i);
		cr_assert_eq(rc, 0, "publish %u blocked on a lag subscriber: %d (%s)", i, rc, shmbus_errmsg());
		cr_assert_geq(tc_drain(fast, check_increasing, &fast_seen), 0);
	}
	cr_assert_eq(fast_seen.count, total);
	cr_assert_eq(fast_seen.bad, 0);

	struct order_check lag_seen = {0};
	cr_assert_geq(tc_drain(lag, check_increasing, &lag_seen), 0);
	uint64_t missed = shmbus_take_missed(lag);
	cr_assert_eq(lag_seen.bad, 0, "lag subscriber saw events out of order or twice");
	cr_assert_eq(missed + lag_seen.count, total, "missed %llu + received %u != published %u",
		     (unsigned long long)missed, lag_seen.count, total);
	cr_assert_gt(missed, 0);
	cr_assert_eq(shmbus_take_missed(lag), 0, "take_missed resets the counter");

	shmbus_sub_info_t v[4];
	int n = shmbus_list_subscriptions(bus, "laggard", v, 4);
	cr_assert_eq(n, 1);
	cr_assert_eq(v[0].lagged, missed, "info.lagged %llu, missed %llu", (unsigned long long)v[0].lagged,
		     (unsigned long long)missed);
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, total);
	cr_assert_geq(mt.lagged, missed);

	/* Caught up, it receives new events again. */
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "lag", 0, total), 0);
	const shmbus_event_t *ev = poll_one(lag);
	cr_assert_eq(tc_payload_u32(ev), total);
	cr_assert_eq(shmbus_release(lag, ev), 0);

	shmbus_pub_close(pub);
	shmbus_sub_close(fast);
	shmbus_sub_close(lag);
	shmbus_close(bus);
}

struct drain_later {
	shmbus_sub_t *sub;
	unsigned delay_ms;
	int rc;
	unsigned fill, late; /* events taken with payload < 10000, == 10000 */
};

static void count_fill_late(const shmbus_event_t *ev, void *arg)
{
	struct drain_later *d = arg;
	if (tc_payload_u32(ev) == 10000)
		d->late++;
	else
		d->fill++;
}

static void *drain_after_delay(void *arg)
{
	struct drain_later *d = arg;
	tc_sleep_ms(d->delay_ms);
	d->rc = tc_drain(d->sub, count_fill_late, d);
	return NULL;
}

Test(pubsub, block_subscriber_backpressure)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 120 * TC_SEC_NS; /* no demotion in this test */
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *slow = tc_sub(bus, NULL);
	shmbus_pub_t *now = tc_pub(bus, NULL, -1);

	uint32_t i = 0;
	int rc = 0;
	for (; i <= cfg.slots; i++) {
		rc = tc_publish_u32(now, SHMBUS_NOTIFICATION, "fill", 0, i);
		if (rc != 0)
			break;
	}
	cr_assert_eq(rc, -EAGAIN, "publish %u with a full block subscriber and timeout < 0: %d, want -EAGAIN", i, rc);
	cr_assert_gt(i, 0);

	shmbus_pub_t *patient = tc_pub(bus, NULL, 50 * (int64_t)TC_MS_NS);
	shmbus_metrics_t before, after;
	cr_assert_eq(shmbus_get_metrics(bus, &before), 0);
	uint64_t t0 = tc_now_ns();
	rc = tc_publish_u32(patient, SHMBUS_NOTIFICATION, "fill", 0, 9999);
	uint64_t waited = tc_now_ns() - t0;
	cr_assert_eq(rc, -ETIMEDOUT, "publish with a 50 ms timeout: %d, want -ETIMEDOUT", rc);
	cr_assert_geq(waited, 45 * TC_MS_NS, "gave up after %llu ns, before its timeout", (unsigned long long)waited);
	cr_assert_eq(shmbus_get_metrics(bus, &after), 0);
	cr_assert_gt(after.block_waits, before.block_waits, "block_waits did not increase");
	cr_assert_gt(after.block_timeouts, before.block_timeouts, "block_timeouts did not increase");

	/* When the subscriber catches up, a waiting publisher goes on. */
	shmbus_pub_t *waiter = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	struct drain_later d = {.sub = slow, .delay_ms = 100};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, drain_after_delay, &d), 0);
	rc = tc_publish_u32(waiter, SHMBUS_NOTIFICATION, "late", 0, 10000);
	pthread_join(th, NULL);
	cr_assert_eq(rc, 0, "publish while the subscriber drains: %d (%s)", rc, shmbus_errmsg());
	cr_assert_geq(d.rc, 0, "drain: %d", d.rc);
	cr_assert_eq(d.fill, i, "the subscriber lost events: took %u, %u were published", d.fill, i);
	if (d.late == 0) {
		const shmbus_event_t *ev = NULL;
		cr_assert_eq(shmbus_wait(slow, 5 * (int64_t)TC_SEC_NS, &ev), 1, "the waiting publisher's event is missing");
		cr_assert_eq(tc_payload_u32(ev), 10000);
		cr_assert_eq(shmbus_release(slow, ev), 0);
	} else {
		cr_assert_eq(d.late, 1);
	}
	expect_empty(slow, "after backpressure");
	cr_assert_eq(shmbus_take_missed(slow), 0, "a block subscriber never misses events");

	shmbus_pub_close(waiter);
	shmbus_pub_close(patient);
	shmbus_pub_close(now);
	shmbus_sub_close(slow);
	shmbus_close(bus);
}

/* A publisher that sleeps for space (its thread id, and its result). */
struct space_sleeper {
	shmbus_pub_t *pub;
	_Atomic pid_t tid;
	_Atomic bool done;
	int rc;
};

static void *publish_when_space(void *arg)
{
	struct space_sleeper *s = arg;
	atomic_store(&s->tid, (pid_t)syscall(SYS_gettid));
	s->rc = tc_publish_u32(s->pub, SHMBUS_NOTIFICATION, "late", 0, 77777);
	atomic_store(&s->done, true);
	return NULL;
}

/* Whether thread tid of this process sleeps (state S in its stat line). */
static bool thread_sleeps(pid_t tid)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	bool ok = fgets(line, sizeof line, f) != NULL;
	fclose(f);
	const char *end = ok ? strrchr(line, ')') : NULL; /* the name may hold anything */
	return end && end[1] == ' ' && end[2] == 'S';
}

/*
 * Batch releases clear a holder bit that is alone in its word with a plain
 * store and look for publishers waiting for space once per batch. A
 * publisher asleep on a full ring must be woken by them: with the reclaim
 * interval and every timeout at ten minutes nothing else wakes it, so a
 * lost wake-up hangs this test until the suite's timeout fails it. Two
 * subscriptions hold every event: the first one's releases leave the
 * other bit set (the locked AND, nothing freed), the second's free the
 * slots with the plain store.
 */
Test(pubsub, a_batch_release_wakes_a_publisher_asleep_for_space)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 600 * TC_SEC_NS;
	cfg.reclaim_timeout_ns = 600 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *first = tc_sub(bus, NULL), *second = tc_sub(bus, NULL);
	shmbus_pub_t *fill = tc_pub(bus, NULL, -1);
	uint32_t n = 0;
	while (tc_publish_u32(fill, SHMBUS_NOTIFICATION, "fill", 0, n) == 0)
		n++;
	cr_assert_gt(n, 0);
	shmbus_metrics_t m;
	cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
	uint64_t waits = m.block_waits;

	struct space_sleeper s = {.pub = tc_pub(bus, NULL, 600 * (int64_t)TC_SEC_NS)};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, publish_when_space, &s), 0);
	/* asleep: it counted its wait, spun its rounds and sleeps on the futex */
	for (;;) {
		cr_assert(!atomic_load(&s.done), "the publisher did not wait for space: %d", s.rc);
		cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
		pid_t tid = atomic_load(&s.tid);
		if (tid && m.block_waits > waits && thread_sleeps(tid))
			break;
		tc_sleep_ms(1);
	}

	const shmbus_event_t *evs[SHMBUS_MAX_HELD];
	shmbus_sub_t *subs[2] = {first, second};
	for (int k = 0; k < 2; k++) {
		uint32_t got = 0;
		int r;
		/* no further than the fill: the woken publisher's event follows */
		while (got < n) {
			int want = n - got < SHMBUS_MAX_HELD ? (int)(n - got) : SHMBUS_MAX_HELD;
			if ((r = shmbus_poll_batch(subs[k], evs, want)) <= 0)
				break;
			for (int i = 0; i < r; i++)
				cr_assert_eq(tc_payload_u32(evs[i]), got + (uint32_t)i, "subscription %d: event %u", k, got + i);
			got += (uint32_t)r;
			cr_assert_eq(shmbus_release_batch(subs[k], evs, r), 0, "%s", shmbus_errmsg());
		}
		cr_assert_eq(got, n, "subscription %d took %u of %u", k, got, n);
		if (k == 0) {
			/* the other subscription still holds every slot */
			cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
			cr_assert_geq(m.ring_used, n, "%llu slots in use after one of two subscriptions released %u",
				      (unsigned long long)m.ring_used, n);
		}
	}
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(s.rc, 0, "the sleeping publisher: %d (%s)", s.rc, shmbus_errmsg());
	for (int k = 0; k < 2; k++) {
		const shmbus_event_t *ev = poll_one(subs[k]);
		cr_expect_eq(tc_payload_u32(ev), 77777);
		cr_assert_eq(shmbus_release_batch(subs[k], &ev, 1), 0); /* at once, not deferred */
	}
	/* and the released slots are reusable: nothing is held any more */
	cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
	cr_expect_eq(m.ring_used, 0, "%llu slots still in use", (unsigned long long)m.ring_used);

	shmbus_pub_close(s.pub);
	shmbus_pub_close(fill);
	shmbus_sub_close(second);
	shmbus_sub_close(first);
	shmbus_close(bus);
}

Test(pubsub, urgent_events_overtake_under_congestion)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	/* 0..9 normal, 10..14 high, 15..16 critical, 17..19 low, 20..22 normal. */
	static const shmbus_priority_t plan[] = {
		2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 1, 1, 1, 2, 2, 2,
	};
	uint32_t n = sizeof plan / sizeof plan[0];
	for (uint32_t i = 0; i < n; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "prio", plan[i], i), 0);
	uint32_t urgent[] = {10, 11, 12, 13, 14, 15, 16};
	for (size_t k = 0; k < sizeof urgent / sizeof urgent[0]; k++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_assert_eq(tc_payload_u32(ev), urgent[k], "poll %zu: got %u (priority %d), want urgent event %u", k,
			     tc_payload_u32(ev), shmbus_event_priority(ev), urgent[k]);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	uint32_t rest[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18, 19, 20, 21, 22};
	for (size_t k = 0; k < sizeof rest / sizeof rest[0]; k++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_assert_eq(tc_payload_u32(ev), rest[k], "poll after urgent %zu: got %u, want %u", k, tc_payload_u32(ev),
			     rest[k]);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	expect_empty(sub, "after priorities");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ---------------------------------------------------------- large events */

static uint8_t pattern_byte(uint32_t ev, size_t i)
{
	return (uint8_t)(tc_mix64(((uint64_t)ev << 32) ^ (i / 8)) >> ((i % 8) * 8));
}

Test(pubsub, one_mebibyte_payload)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 1024;
	cfg.slot_size = 4096;
	cfg.max_payload = 1u << 20;
	cfg.max_subscribers = 4;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	size_t n = 1u << 20;
	uint8_t *buf = malloc(n + 1);
	cr_assert_not_null(buf);
	for (uint32_t round = 0; round < 6; round++) {
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern_byte(round, i);
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "big", .payload = buf, .payload_len = n};
		if (round % 2 == 0) {
			cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "1 MiB publish %u: %s", round, shmbus_errmsg());
		} else {
			shmbus_claim_t c;
			cr_assert_eq(shmbus_reserve(pub, &m, n, &c), 0, "1 MiB reserve %u: %s", round, shmbus_errmsg());
			memcpy(c.payload, buf, n);
			cr_assert_eq(shmbus_commit(pub, &c, NULL), 0);
		}
		const shmbus_event_t *ev = poll_one(sub);
		size_t len = 0;
		const uint8_t *p = shmbus_event_payload(ev, &len);
		cr_assert_eq(len, n);
		cr_assert_eq(memcmp(p, buf, n), 0, "1 MiB payload %u corrupted", round);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "too.big", .payload = buf, .payload_len = n + 1};
	cr_assert_eq(shmbus_publish(pub, &m, NULL), -EMSGSIZE);
	free(buf);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

Test(pubsub, multi_slot_events_stay_contiguous_across_the_wrap)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 128; /* 32 KiB ring: wraps every few events */
	cfg.max_payload = 3000;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	uint8_t buf[3000], want[3000];
	uint64_t last_seq = 0;
	for (uint32_t e = 0; e < 3000; e++) {
		size_t len = (size_t)((e * 997u) % 3001u);
		for (size_t i = 0; i < len; i++)
			buf[i] = pattern_byte(e, i);
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "wrap", .payload = buf, .payload_len = len};
		cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "publish %u (%zu bytes): %s", e, len, shmbus_errmsg());
		/* Hold up to three events at a time so slots are reused late. */
		if (e % 3 != 2)
			continue;
		for (uint32_t k = e - 2; k <= e; k++) {
			const shmbus_event_t *ev = poll_one(sub);
			size_t got = 0;
			const uint8_t *p = shmbus_event_payload(ev, &got);
			size_t want_len = (size_t)((k * 997u) % 3001u);
			cr_assert_eq(got, want_len, "event %u length", k);
			for (size_t i = 0; i < got; i++)
				want[i] = pattern_byte(k, i);
			for (size_t i = 0; i < got; i++)
				if (p[i] != want[i])
					cr_assert_fail("event %u (%zu bytes, seq %llu) differs at byte %zu", k, got,
						       (unsigned long long)shmbus_event_seq(ev), i);
			cr_assert(shmbus_event_seq(ev) > last_seq || k == 0);
			last_seq = shmbus_event_seq(ev);
			cr_assert_eq(shmbus_release(sub, ev), 0);
		}
	}
	cr_assert_gt(last_seq, 16 * (uint64_t)cfg.slots, "the ring did not wrap many times (seq %llu)",
		     (unsigned long long)last_seq);
	expect_empty(sub, "after wrap");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* -------------------------------------------------- durable and groups */

Test(pubsub, durable_subscription_queues_while_offline)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	shmbus_bus_t *b1 = tc_open();
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_pattern("^keep\\.", &f), 0);
	shmbus_sub_opts_t o = {.subscriber_id = "inventory", .durable = true, .filter = f};
	shmbus_sub_t *s1 = NULL;
	cr_assert_eq(shmbus_subscribe(b1, &o, &s1), 0, "%s", shmbus_errmsg());
	shmbus_filter_free(f);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "keep.first", 0, 0), 0);
	const shmbus_event_t *ev = poll_one(s1);
	cr_assert_eq(tc_payload_u32(ev), 0);
	cr_assert_eq(shmbus_release(s1, ev), 0);
	shmbus_sub_close(s1);

	/* Offline (handle closed): events queue. */
	for (uint32_t i = 1; i <= 10; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "keep.offline", 0, i), 0);
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "drop.offline", 0, 1000 + i), 0);
	}
	shmbus_sub_info_t v[4];
	cr_assert_eq(shmbus_list_subscriptions(bus, "inventory", v, 4), 1, "durable subscription gone after close");
	cr_assert(v[0].durable);
	cr_assert_eq(v[0].consumers, 0);
	cr_assert_eq(v[0].queue_depth, 10, "queue_depth %llu", (unsigned long long)v[0].queue_depth);

	/* Offline across a whole bus handle too. */
	shmbus_close(b1);
	for (uint32_t i = 11; i <= 15; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "keep.closed", 0, i), 0);

	shmbus_bus_t *b2 = tc_open();
	shmbus_sub_opts_t again = {.subscriber_id = "inventory", .durable = true};
	shmbus_sub_t *s2 = NULL;
	cr_assert_eq(shmbus_subscribe(b2, &again, &s2), 0, "%s", shmbus_errmsg());
	for (uint32_t i = 1; i <= 15; i++) {
		ev = poll_one(s2);
		cr_assert_eq(tc_payload_u32(ev), i, "durable replay: got %u want %u", tc_payload_u32(ev), i);
		cr_assert_not(shmbus_redelivered(s2, ev));
		cr_assert_eq(shmbus_release(s2, ev), 0);
	}
	expect_empty(s2, "durable after replay");
	/* The stored filter is kept. */
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "drop.online", 0, 99), 0);
	expect_empty(s2, "filter kept");

	/* Another policy under the same key is refused. */
	shmbus_sub_opts_t clash = {.subscriber_id = "inventory", .durable = true, .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *s3 = NULL;
	cr_assert_eq(shmbus_subscribe(b2, &clash, &s3), -EEXIST);

	cr_assert_eq(shmbus_unsubscribe(s2), 0);
	cr_assert_eq(shmbus_list_subscriptions(bus, "inventory", v, 4), 0, "unsubscribe removes a durable sub");
	shmbus_close(b2);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(pubsub, group_members_share_the_events)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_bus_t *b2 = tc_open();
	shmbus_sub_opts_t o = {.subscriber_id = "workers", .group = "workers"};
	shmbus_sub_t *m1 = NULL, *m2 = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &m1), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_subscribe(b2, &o, &m2), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_sub_id(m1), shmbus_sub_id(m2), "group members share one subscription");
	shmbus_sub_info_t v[4];
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 4), 1);
	cr_assert_eq(v[0].consumers, 2);
	cr_assert_str_eq(v[0].group, "workers");

	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	enum { N = 200 };
	uint8_t owner[N] = {0};
	unsigned got1 = 0, got2 = 0, total = 0, spins = 0;
	for (uint32_t i = 0; i < N; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "job", 0, i), 0);
	while (total < N && spins < 10 * N) {
		spins++;
		shmbus_sub_t *who[2] = {m1, m2};
		for (int w = 0; w < 2; w++) {
			const shmbus_event_t *ev = NULL;
			int rc = shmbus_poll(who[w], &ev);
			cr_assert_geq(rc, 0);
			if (rc == 0)
				continue;
			uint32_t i = tc_payload_u32(ev);
			cr_assert_lt(i, N);
			cr_assert_eq(owner[i], 0, "event %u delivered to member %d and member %d", i, owner[i], w + 1);
			owner[i] = (uint8_t)(w + 1);
			if (w)
				got2++;
			else
				got1++;
			total++;
			cr_assert_eq(shmbus_release(who[w], ev), 0);
		}
	}
	cr_assert_eq(total, N, "members received %u of %u", total, N);
	cr_assert_gt(got1, 0);
	cr_assert_gt(got2, 0);
	expect_empty(m1, "group after all");
	expect_empty(m2, "group after all");
	shmbus_sub_close(m1);
	shmbus_sub_close(m2);
	shmbus_pub_close(pub);
	shmbus_close(b2);
	shmbus_close(bus);
}

/* ---------------------------------------------------------------- metrics */

Test(pubsub, metrics_are_consistent)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *a = tc_sub(bus, NULL);
	shmbus_sub_t *b = tc_sub(bus, NULL);
	shmbus_sub_t *none = tc_sub(bus, mk_names("never.published", NULL));
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	enum { N = 50 };
	char ten[10] = "0123456789";
	for (int i = 0; i < N; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "metric", .payload = ten, .payload_len = 10};
		cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	}
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, N);
	cr_assert_eq(mt.publish_bytes, 10 * N);
	cr_assert_eq(mt.routed, 2 * N, "routed %llu", (unsigned long long)mt.routed);
	cr_assert_eq(mt.delivered, 0);
	cr_assert_eq(mt.subscriptions, 3);
	cr_assert_geq(mt.members, 1);
	cr_assert_eq(mt.ring_slots, cfg.slots);
	cr_assert_gt(mt.ring_used, 0, "unreleased events use ring slots");
	cr_assert_geq(mt.next_seq, N);

	cr_assert_eq(tc_drain(a, NULL, NULL), N);
	const shmbus_event_t *held = poll_one(b);
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.delivered, N + 1, "delivered %llu", (unsigned long long)mt.delivered);
	shmbus_sub_info_t v[4];
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, v, 4), 3);
	const shmbus_sub_info_t *ia = find_info(v, 3, shmbus_sub_id(a)), *ib = find_info(v, 3, shmbus_sub_id(b)),
				*in = find_info(v, 3, shmbus_sub_id(none));
	cr_assert(ia && ib && in);
	cr_assert_eq(ia->routed, N);
	cr_assert_eq(ia->delivered, N);
	cr_assert_eq(ia->queue_depth, 0);
	cr_assert_eq(ia->held, 0);
	cr_assert_eq(ib->delivered, 1);
	cr_assert_eq(ib->held, 1, "held %llu (one event polled and not released)", (unsigned long long)ib->held);
	cr_assert_eq(ib->queue_depth, N - 1, "queue_depth %llu (one of %d polled)", (unsigned long long)ib->queue_depth, N);
	cr_assert_eq(in->routed, 0);
	cr_assert_eq(in->delivered, 0);
	cr_assert_eq(shmbus_release(b, held), 0);
	cr_assert_eq(tc_drain(b, NULL, NULL), N - 1);
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.delivered, 2 * N);
	cr_assert_eq(mt.ring_used, 0, "every event released, ring_used %llu", (unsigned long long)mt.ring_used);
	cr_assert_eq(mt.lagged, 0);
	cr_assert_eq(mt.block_timeouts, 0);

	shmbus_pub_close(pub);
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, N, "closing a publisher must not lose its counts");
	shmbus_sub_close(a);
	shmbus_sub_close(b);
	shmbus_sub_close(none);
	shmbus_close(bus);
}

/* ------------------------------------------------------------ wait modes */

struct late_pub {
	unsigned delay_ms;
	uint32_t value;
	int rc;
};

static void *publish_later_thread(void *arg)
{
	struct late_pub *lp = arg;
	tc_sleep_ms(lp->delay_ms);
	shmbus_bus_t *bus = NULL;
	lp->rc = shmbus_open(tc_bus, NULL, &bus);
	if (lp->rc < 0)
		return NULL;
	shmbus_pub_t *pub = NULL;
	lp->rc = shmbus_pub_open(bus, NULL, &pub);
	if (lp->rc == 0)
		lp->rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "late", 0, lp->value);
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return NULL;
}

static int publish_later_child(void *arg)
{
	struct late_pub *lp = arg;
	publish_later_thread(lp);
	if (lp->rc != 0)
		return CHILD_FAIL("publish from child: %d", lp->rc);
	return 0;
}

static void check_wait_mode(shmbus_wait_t mode)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.wait = mode, .spin_ns = 20000};
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);

	/* Nothing published: times out with 0. */
	const shmbus_event_t *ev = NULL;
	uint64_t t0 = tc_now_ns();
	int rc = shmbus_wait(sub, 50 * (int64_t)TC_MS_NS, &ev);
	uint64_t took = tc_now_ns() - t0;
	cr_assert_eq(rc, 0, "wait with nothing published = %d", rc);
	cr_assert_geq(took, 45 * TC_MS_NS, "returned after %llu ns, before the timeout", (unsigned long long)took);
	cr_assert_eq(shmbus_wait(sub, 0, &ev), 0, "zero timeout, nothing published");

	/* Another thread publishes while we wait. */
	struct late_pub lp = {.delay_ms = 100, .value = 1};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, publish_later_thread, &lp), 0);
	rc = shmbus_wait(sub, 10 * (int64_t)TC_SEC_NS, &ev);
	pthread_join(th, NULL);
	cr_assert_eq(lp.rc, 0, "thread publish: %d", lp.rc);
	cr_assert_eq(rc, 1, "wait for a thread's event = %d", rc);
	cr_assert_eq(tc_payload_u32(ev), 1);
	cr_assert_eq(shmbus_release(sub, ev), 0);

	/* Another process publishes while we wait forever. */
	struct late_pub cp = {.delay_ms = 100, .value = 2};
	pid_t pid = tc_fork(publish_later_child, &cp);
	rc = shmbus_wait(sub, -1, &ev);
	int st = 0;
	cr_assert_eq(tc_wait(pid, 10000, &st), 0, "publisher child hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher child %s", tc_status_str(st));
	cr_assert_eq(rc, 1, "wait for another process's event = %d", rc);
	cr_assert_eq(tc_payload_u32(ev), 2);
	cr_assert_eq(shmbus_release(sub, ev), 0);

	shmbus_sub_close(sub);
	shmbus_close(bus);
}

Test(pubsub, wait_spin) { check_wait_mode(SHMBUS_WAIT_SPIN); }
Test(pubsub, wait_block) { check_wait_mode(SHMBUS_WAIT_BLOCK); }
Test(pubsub, wait_adaptive) { check_wait_mode(SHMBUS_WAIT_ADAPTIVE); }

/* ------------------------------------------------------- invariants 1, 2 */

Test(pubsub, fan_out_reads_one_copy_in_place)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *a = tc_sub(bus, NULL), *b = tc_sub(bus, NULL), *c = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);

	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "fan.out"};
	shmbus_claim_t claim;
	cr_assert_eq(shmbus_reserve(pub, &m, 512, &claim), 0);
	memset(claim.payload, 0x5A, 512);
	void *written = claim.payload;
	cr_assert_eq(shmbus_commit(pub, &claim, NULL), 0);
	const shmbus_event_t *ea = poll_one(a), *eb = poll_one(b), *ec = poll_one(c);
	size_t la, lb, lc;
	const void *pa = shmbus_event_payload(ea, &la), *pb = shmbus_event_payload(eb, &lb),
		   *pc = shmbus_event_payload(ec, &lc);
	cr_assert(pa == written && pb == written && pc == written,
		  "subscribers must read the bytes where the publisher wrote them (%p; got %p %p %p)", written, pa, pb, pc);
	cr_assert_eq(shmbus_event_name(ea), shmbus_event_name(eb), "event header copied per subscriber");
	cr_assert_eq(shmbus_release(a, ea), 0);
	cr_assert_eq(shmbus_release(b, eb), 0);
	cr_assert_eq(shmbus_release(c, ec), 0);

	/* A copying publish is written once too. */
	char data[300];
	memset(data, 7, sizeof data);
	m.payload = data;
	m.payload_len = sizeof data;
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	ea = poll_one(a);
	eb = poll_one(b);
	pa = shmbus_event_payload(ea, &la);
	pb = shmbus_event_payload(eb, &lb);
	cr_assert_eq(pa, pb, "two subscribers got two copies of one event");
	cr_assert_neq(pa, (const void *)data, "the payload must live in the bus, not the caller's buffer");
	cr_assert_eq(shmbus_release(a, ea), 0);
	cr_assert_eq(shmbus_release(b, eb), 0);
	cr_assert_eq(tc_drain(c, NULL, NULL), 1);

	shmbus_pub_close(pub);
	shmbus_sub_close(a);
	shmbus_sub_close(b);
	shmbus_sub_close(c);
	shmbus_close(bus);
}

Test(pubsub, idle_subscriptions_never_hold_publishers_back)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 120 * TC_SEC_NS; /* no demotion: they must simply not matter */
	shmbus_bus_t *bus = tc_create(&cfg);
	/* Block subscriptions that never poll: one matching nothing, one paused. */
	shmbus_sub_t *nothing = tc_sub(bus, mk_names("never.published", NULL));
	shmbus_sub_t *paused = tc_sub(bus, NULL);
	shmbus_sub_t *types = tc_sub(bus, mk_types(SHMBUS_TYPE_BIT(SHMBUS_ERROR)));
	cr_assert_eq(shmbus_pause(bus, shmbus_sub_id(paused)), 0);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	for (uint32_t i = 0; i < 10 * cfg.slots; i++) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "busy", 0, i);
		cr_assert_eq(rc, 0, "publish %u held back by an idle subscription: %d (%s)", i, rc, shmbus_errmsg());
	}
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.routed, 0, "routed %llu events to subscriptions that match none",
		     (unsigned long long)mt.routed);
	cr_assert_eq(mt.block_waits, 0);
	expect_empty(nothing, "filter matching nothing");
	expect_empty(paused, "paused");
	expect_empty(types, "error-only filter");
	shmbus_pub_close(pub);
	shmbus_sub_close(nothing);
	shmbus_sub_close(paused);
	shmbus_sub_close(types);
	shmbus_close(bus);
}

Test(pubsub, urgent_events_admitted_when_the_ring_is_congested)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 120 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *slow = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	uint32_t normal = 0, urgent = 0;
	while (normal <= cfg.slots && tc_publish_u32(pub, SHMBUS_NOTIFICATION, "bulk", SHMBUS_PRIORITY_NORMAL, normal) == 0)
		normal++;
	cr_assert_lt(normal, cfg.slots, "normal events filled the whole ring (%u): nothing left for urgent ones", normal);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "bulk", SHMBUS_PRIORITY_LOW, 0), -EAGAIN);
	while (urgent <= cfg.slots &&
	       tc_publish_u32(pub, SHMBUS_NOTIFICATION, "alarm", urgent % 2 ? SHMBUS_PRIORITY_HIGH : SHMBUS_PRIORITY_CRITICAL,
			      10000 + urgent) == 0)
		urgent++;
	cr_assert_gt(urgent, 0, "no high/critical event admitted once normal ones were refused");
	cr_log_info("congested ring: %u normal, then %u urgent events admitted", normal, urgent);
	/* And they are delivered first. */
	for (uint32_t k = 0; k < urgent; k++) {
		const shmbus_event_t *ev = poll_one(slow);
		cr_assert_eq(tc_payload_u32(ev), 10000 + k, "urgent event %u not first", k);
		cr_assert_eq(shmbus_release(slow, ev), 0);
	}
	cr_assert_eq(tc_drain(slow, NULL, NULL), (int)normal);
	shmbus_pub_close(pub);
	shmbus_sub_close(slow);
	shmbus_close(bus);
}

/* ---------------------------------------------------- waking and signals */

struct waiter {
	shmbus_sub_t *sub;
	int rc;
	int done;
};

static void *wait_forever(void *arg)
{
	struct waiter *w = arg;
	const shmbus_event_t *ev = NULL;
	w->rc = shmbus_wait(w->sub, -1, &ev);
	__atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static bool join_within(pthread_t th, struct waiter *w, unsigned ms)
{
	uint64_t deadline = tc_now_ns() + (uint64_t)ms * TC_MS_NS;
	while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE) && tc_now_ns() < deadline)
		tc_sleep_ms(5);
	if (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE))
		return false;
	pthread_join(th, NULL);
	return true;
}

/* A waiter in mode `mode`, waiting forever on an empty subscription, returns
 * -ESHUTDOWN when another attachment removes the subscription: a sleeper
 * is woken, a spinner (whose rounds mostly only look at the queue heads)
 * notices in one of its whole polls. The adaptive waiter spins for a
 * minute before it would sleep, so it is still spinning when the removal
 * comes (with the default 50 us it would be asleep, as in block mode). */
static void check_removal_ends_wait(shmbus_wait_t mode)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.wait = mode, .spin_ns = mode == SHMBUS_WAIT_ADAPTIVE ? 60 * TC_SEC_NS : 0};
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	struct waiter w = {.sub = sub};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, wait_forever, &w), 0);
	tc_sleep_ms(100);
	shmbus_bus_t *other = tc_open();
	cr_assert_eq(shmbus_unsubscribe_id(other, shmbus_sub_id(sub)), 0);
	bool woke = join_within(th, &w, 10000);
	if (!woke) {
		/* the waiter is stuck in shmbus_wait(-1) on a subscription
		 * nobody can publish to any more: fail, which ends the test's
		 * process and the thread with it */
		pthread_detach(th);
		cr_assert_fail("shmbus_wait(-1) still waiting 10 s after its subscription was removed");
	}
	cr_assert_eq(w.rc, -ESHUTDOWN, "wait on a removed subscription returned %d", w.rc);
	shmbus_sub_close(sub);
	shmbus_close(other);
	shmbus_close(bus);
}

Test(pubsub, unsubscribe_by_id_wakes_a_waiter) { check_removal_ends_wait(SHMBUS_WAIT_BLOCK); }
Test(pubsub, unsubscribe_by_id_ends_a_spinning_wait) { check_removal_ends_wait(SHMBUS_WAIT_SPIN); }
Test(pubsub, unsubscribe_by_id_ends_an_adaptive_wait) { check_removal_ends_wait(SHMBUS_WAIT_ADAPTIVE); }

static void on_usr1(int sig)
{
	(void)sig;
}

Test(pubsub, a_signal_interrupts_a_blocking_wait)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.wait = SHMBUS_WAIT_BLOCK};
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	struct sigaction sa = {.sa_handler = on_usr1}; /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
	struct waiter w = {.sub = sub};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, wait_forever, &w), 0);
	tc_sleep_ms(150);
	cr_assert_eq(pthread_kill(th, SIGUSR1), 0);
	bool woke = join_within(th, &w, 5000);
	if (!woke) {
		shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
		tc_publish_u32(pub, SHMBUS_NOTIFICATION, "unstick", 0, 0);
		pthread_detach(th);
		cr_assert_fail("shmbus_wait(-1) was not interrupted by a signal");
	}
	cr_assert_eq(w.rc, -EINTR, "interrupted wait returned %d", w.rc);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

Test(pubsub, segment_mode_is_configurable)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.mode = 0640;
	shmbus_bus_t *bus = tc_create(&cfg);
	char path[128];
	snprintf(path, sizeof path, "/dev/shm/shmbus.%s", tc_bus);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0640, "segment mode %o, want 640", st.st_mode & 0777);
	shmbus_config_t got;
	shmbus_bus_config(bus, &got);
	cr_assert_eq(got.mode, 0640);
	shmbus_close(bus);
}

/* ---------------------------------------------------- misuse of the API */

Test(pubsub, claims_and_releases_misused)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *a = tc_sub(bus, NULL), *b = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "misuse"};

	/* One claim open per publisher. */
	shmbus_claim_t c1, c2;
	cr_assert_eq(shmbus_reserve(pub, &m, 16, &c1), 0);
	cr_assert_lt(shmbus_reserve(pub, &m, 16, &c2), 0, "a second claim on one publisher");
	memset(c1.payload, 1, 16);
	cr_assert_eq(shmbus_commit(pub, &c1, NULL), 0, "the first claim survives the refused second one");
	cr_assert_lt(shmbus_commit(pub, &c1, NULL), 0, "committing a claim twice");
	cr_assert_lt(shmbus_abort(pub, &c1), 0, "aborting a committed claim");
	cr_assert_eq(shmbus_reserve(pub, &m, 16, &c2), 0);
	cr_assert_eq(shmbus_abort(pub, &c2), 0);
	cr_assert_lt(shmbus_commit(pub, &c2, NULL), 0, "committing an aborted claim");
	cr_assert_lt(shmbus_abort(pub, &c2), 0, "aborting twice");

	/* An event is released through the subscription that holds it. */
	const shmbus_event_t *ea = poll_one(a);
	cr_assert_eq(shmbus_release(b, ea), -EINVAL, "release through a subscription that does not hold it");
	cr_assert_eq(shmbus_release(a, ea), 0);
	const shmbus_event_t *eb = poll_one(b);
	cr_assert_eq(shmbus_release(b, eb), 0);
	expect_empty(a, "after misuse");
	expect_empty(b, "after misuse");

	/* Destructors take NULL. */
	shmbus_close(NULL);
	shmbus_sub_close(NULL);
	shmbus_pub_close(NULL);
	shmbus_filter_free(NULL);

	/* The bus is unharmed. */
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.misuse", 0, 5), 0);
	cr_assert_eq(tc_drain(a, NULL, NULL), 1);
	cr_assert_eq(tc_drain(b, NULL, NULL), 1);
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, 2);
	cr_assert_eq(mt.ring_used, 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(a);
	shmbus_sub_close(b);
	shmbus_close(bus);
}

Test(pubsub, unlinked_bus_keeps_working_for_those_attached)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	cr_assert_eq(shmbus_unlink(tc_bus), 0);
	shmbus_bus_t *late = NULL;
	cr_assert_eq(shmbus_open(tc_bus, NULL, &late), -ENOENT);
	for (uint32_t i = 0; i < 2 * cfg.slots; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "orphan", 0, i), 0, "%s", shmbus_errmsg());
		const shmbus_event_t *ev = poll_one(sub);
		cr_assert_eq(tc_payload_u32(ev), i);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	cr_assert_eq(shmbus_unlink(tc_bus), -ENOENT);
	/* The name is free again. */
	shmbus_bus_t *fresh = tc_create(&cfg);
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(fresh, &mt), 0);
	cr_assert_eq(mt.published, 0, "a new bus under the old name shares the old segment");
	shmbus_close(fresh);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A durable subscriber that closes with events it took but never saw (the
 * rest of a run) gives them back; the next consumer gets them before what
 * was queued behind them, and before what came while nobody listened:
 * one publisher's events stay in order across the hand-over. */
Test(pubsub, events_a_closing_durable_consumer_took_come_back_first_in_order)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_sub_opts_t o = {.subscriber_id = "ledger", .durable = true};
	shmbus_sub_t *s1 = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &s1), 0, "%s", shmbus_errmsg());
	for (uint32_t i = 0; i < 40; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "entry", 0, i), 0);
	/* one poll takes a run (more than the one it hands out) */
	const shmbus_event_t *ev = poll_one(s1);
	cr_assert_eq(tc_payload_u32(ev), 0);
	cr_assert_eq(shmbus_release(s1, ev), 0);
	shmbus_sub_close(s1);
	for (uint32_t i = 40; i < 50; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "entry", 0, i), 0);

	shmbus_sub_t *s2 = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &s2), 0, "%s", shmbus_errmsg());
	for (uint32_t i = 1; i < 50; i++) {
		ev = poll_one(s2);
		cr_assert_eq(tc_payload_u32(ev), i, "after the hand-over: got %u, want %u", tc_payload_u32(ev), i);
		cr_assert_not(shmbus_redelivered(s2, ev), "event %u was never handed out: not a redelivery", i);
		cr_assert_eq(shmbus_release(s2, ev), 0);
	}
	cr_assert_eq(shmbus_poll(s2, &ev), 0, "nothing more");
	shmbus_sub_close(s2);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(pubsub, durable_lag_subscription_counts_what_it_missed_offline)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	shmbus_sub_opts_t o = {.subscriber_id = "sleepy", .durable = true, .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	shmbus_sub_close(sub);
	uint32_t total = 10 * cfg.slots;
	for (uint32_t i = 0; i < total; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "while.away", 0, i), 0,
			     "publish %u held back by an offline lag subscription: %s", i, shmbus_errmsg());
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	struct order_check seen = {0};
	cr_assert_geq(tc_drain(sub, check_increasing, &seen), 0);
	uint64_t missed = shmbus_take_missed(sub);
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "sleepy", &info, 1), 1);
	cr_assert_eq(seen.bad, 0);
	cr_assert_gt(seen.count, 0, "nothing kept for the offline subscription");
	cr_assert_eq(seen.count + missed, total,
		     "received %u + shmbus_take_missed %llu != published %u (the subscription's lagged counter says %llu)",
		     seen.count, (unsigned long long)missed, total, (unsigned long long)info.lagged);
	cr_assert_eq(seen.next_min, total, "the newest events must be the ones kept");
	cr_assert_eq(shmbus_unsubscribe(sub), 0);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* ------------------------------------------------------------- capacity */

Test(pubsub, subscription_and_group_capacity)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 4;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *subs[4];
	for (int i = 0; i < 4; i++)
		subs[i] = tc_sub(bus, NULL);
	shmbus_sub_t *extra = NULL;
	cr_assert_eq(shmbus_subscribe(bus, NULL, &extra), -ENOSPC, "a fifth subscription on a bus for four");
	shmbus_sub_close(subs[3]);
	cr_assert_eq(shmbus_subscribe(bus, NULL, &subs[3]), 0, "a freed record is reused: %s", shmbus_errmsg());
	for (int i = 0; i < 4; i++)
		shmbus_sub_close(subs[i]);

	/* A group takes at most SHMBUS_GROUP_MEMBERS_MAX consumers. */
	shmbus_sub_t *members[SHMBUS_GROUP_MEMBERS_MAX];
	shmbus_sub_opts_t g = {.subscriber_id = "crowd", .group = "crowd"};
	for (int i = 0; i < SHMBUS_GROUP_MEMBERS_MAX; i++)
		cr_assert_eq(shmbus_subscribe(bus, &g, &members[i]), 0, "group member %d: %s", i + 1, shmbus_errmsg());
	cr_assert_eq(shmbus_subscribe(bus, &g, &extra), -ENOSPC, "group member %d", SHMBUS_GROUP_MEMBERS_MAX + 1);
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "crowd", &info, 1), 1);
	cr_assert_eq(info.consumers, SHMBUS_GROUP_MEMBERS_MAX);
	for (int i = 0; i < SHMBUS_GROUP_MEMBERS_MAX; i++)
		shmbus_sub_close(members[i]);
	shmbus_close(bus);
}

Test(pubsub, durable_resubscribe_replaces_the_filter_when_given)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_filter_t *first = mk_names("first.kind", NULL), *second = mk_names("second.kind", NULL);
	shmbus_sub_opts_t o = {.subscriber_id = "picky", .durable = true, .filter = first};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	shmbus_filter_free(first);
	shmbus_sub_close(sub);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "first.kind", 0, 1), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "second.kind", 0, 2), 0);

	o.filter = second;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	shmbus_filter_free(second);
	/* What queued under the old filter stays queued. */
	const shmbus_event_t *ev = poll_one(sub);
	cr_assert_eq(tc_payload_u32(ev), 1);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	expect_empty(sub, "after the queued event");
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "first.kind", 0, 3), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "second.kind", 0, 4), 0);
	ev = poll_one(sub);
	cr_assert_eq(tc_payload_u32(ev), 4, "the new filter must replace the stored one (got event %u)",
		     tc_payload_u32(ev));
	cr_assert_eq(shmbus_release(sub, ev), 0);
	expect_empty(sub, "new filter");
	cr_assert_eq(shmbus_unsubscribe(sub), 0);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(pubsub, routing_reaches_every_subscription_record)
{
	/* Routing masks span several 64-bit words: use records in all four. */
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 256;
	shmbus_bus_t *bus = tc_create(&cfg);
	enum { NSUBS = 256, KINDS = 5 };
	static const char *const names[KINDS] = {"k0", "k1", "k2", "k3", "k4"};
	shmbus_sub_t **subs = calloc(NSUBS, sizeof *subs);
	for (int i = 0; i < NSUBS; i++) {
		shmbus_filter_t *f = NULL;
		if (i % 2)
			f = mk_names(names[i % KINDS], NULL);
		else
			f = mk_all2(mk_types(SHMBUS_TYPE_BIT((shmbus_type_t)(1 + i % KINDS))), mk_names(names[i % KINDS], NULL));
		subs[i] = tc_sub(bus, f);
	}
	shmbus_sub_t *none = NULL;
	cr_assert_eq(shmbus_subscribe(bus, NULL, &none), -ENOSPC);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	for (uint32_t k = 0; k < KINDS; k++)
		cr_assert_eq(tc_publish_u32(pub, (shmbus_type_t)(1 + k), names[k], 0, k), 0);
	for (int i = 0; i < NSUBS; i++) {
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_poll(subs[i], &ev);
		cr_assert_eq(rc, 1, "subscription record %d got nothing", i);
		cr_assert_eq(tc_payload_u32(ev), (uint32_t)(i % KINDS), "subscription record %d got event %u", i,
			     tc_payload_u32(ev));
		cr_assert_eq(shmbus_release(subs[i], ev), 0);
		expect_empty(subs[i], "one event per record");
	}
	/* Removing records in the middle leaves the others routed. */
	for (int i = 0; i < NSUBS; i += 3)
		shmbus_sub_close(subs[i]);
	for (uint32_t k = 0; k < KINDS; k++)
		cr_assert_eq(tc_publish_u32(pub, (shmbus_type_t)(1 + k), names[k], 0, 10 + k), 0);
	for (int i = 0; i < NSUBS; i++) {
		if (i % 3 == 0)
			continue;
		const shmbus_event_t *ev = NULL;
		cr_assert_eq(shmbus_poll(subs[i], &ev), 1, "record %d after removals", i);
		cr_assert_eq(tc_payload_u32(ev), (uint32_t)(10 + i % KINDS));
		cr_assert_eq(shmbus_release(subs[i], ev), 0);
		shmbus_sub_close(subs[i]);
	}
	free(subs);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A group member that took an event and went quiet (it released the
 * event, its hold still batched, and polls no more) does not hold its
 * queue cell: the other member consumes several laps of the queue
 * meanwhile and misses nothing. (The batched hold does pin the event's
 * slot, but a lag subscription gives that up under congestion; nothing
 * would give a cell back.) */
Test(pubsub, a_quiet_group_member_does_not_pin_the_queue)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_bus_t *b2 = tc_open();
	shmbus_sub_opts_t o = {.subscriber_id = "workers", .group = "workers", .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *busy = NULL, *other = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &busy), 0, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_subscribe(b2, &o, &other), 0, "%s", shmbus_errmsg());
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1); /* never waits: a full queue would show */
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "job", 0, 0), 0);
	const shmbus_event_t *held = NULL;
	cr_assert_eq(shmbus_poll(busy, &held), 1);
	cr_assert_eq(shmbus_release(busy, held), 0);

	uint32_t laps = 3 * cfg.slots, got = 0;
	for (uint32_t i = 1; i <= laps; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "job", 0, i), 0, "publish %u: %s", i,
			     shmbus_errmsg());
		const shmbus_event_t *ev = NULL;
		cr_assert_eq(shmbus_poll(other, &ev), 1, "event %u", i);
		cr_assert_eq(tc_payload_u32(ev), i);
		cr_assert_eq(shmbus_release(other, ev), 0);
		got++;
	}
	cr_expect_eq(got, laps);
	shmbus_sub_info_t v;
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &v, 1), 1);
	cr_expect_eq(v.lagged, 0, "events missed (a full queue drops descriptors)");
	cr_expect_eq(v.routed, (uint64_t)laps + 1);
	shmbus_sub_close(busy);
	shmbus_sub_close(other);
	shmbus_pub_close(pub);
	shmbus_close(b2);
	shmbus_close(bus);
}

/* The single publish that ref (which never caches: a batch lays out its
 * first message afresh) makes of m: the first event of a batch of two. */
static const shmbus_event_t *encode_afresh(shmbus_pub_t *ref, shmbus_sub_t *sub, const shmbus_msg_t *m,
					   const shmbus_event_t **second)
{
	shmbus_msg_t two[2] = {*m, *m};
	cr_assert_eq(shmbus_publish_batch(ref, two, 2, NULL), 2, "%s", shmbus_errmsg());
	const shmbus_event_t *ev = poll_one(sub);
	*second = poll_one(sub);
	return ev;
}

/* A publisher keeps the encoding of its last single publish and copies it
 * for a message that encodes the same. Whatever changes between two
 * publishes (string bytes behind the same pointer, shorter or longer,
 * fields, metadata, ids behind the same pointer, the response flags), the
 * event must be exactly what a fresh encoding gives, and be routed by its
 * new name. */
Test(pubsub, single_publish_reencodes_whatever_changed_behind_the_same_buffers)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_sub_t *bravo = tc_sub(bus, mk_names("bravo", NULL));
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0), *ref = tc_pub(bus, NULL, 0);

	char name[32] = "alpha", target[32] = "", conv[32] = "conv-1", key[32] = "k", value[64] = "v1";
	shmbus_meta_t meta[2] = {{.key = key, .value = value}, {.key = "tenant", .value = "blue"}};
	shmbus_uuid_t corr, caus;
	shmbus_uuid_parse("0190b6a0-0000-7000-8000-000000000042", &corr);
	shmbus_uuid_parse("0190b6a0-0000-7000-8000-000000000043", &caus);
	static const uint8_t payload[40] = {1, 2, 3};
	/* a ttl, so that the events of two calls compare equal in it */
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = name, .ttl_ns = 2 * TC_SEC_NS, .payload = payload,
			  .payload_len = 32};
	enum { STEPS = 28 };
	for (unsigned step = 0; step < STEPS; step++) {
		const char *want_name = name;
		switch (step) {
		case 0: break;				  /* cached from here on */
		case 1: break;				  /* the same again: copied */
		case 2: strcpy(name, "bravo"); break;	  /* new bytes, same length and pointer */
		case 3: strcpy(name, "brav"); break;	  /* shorter */
		case 4: strcpy(name, "bravo-charlie"); break; /* longer */
		case 5: m.target = target; break;	  /* "" encodes as no target */
		case 6: strcpy(target, "t1"); break;
		case 7: strcpy(target, "t2"); break;
		case 8: m.priority = SHMBUS_PRIORITY_HIGH; break;
		case 9: m.metadata = meta, m.metadata_count = 1; break;
		case 10: strcpy(value, "v2"); break;
		case 11: strcpy(key, "kk"); break;
		case 12: m.metadata_count = 2; break;
		case 13: m.correlation_id = &corr, m.causation_id = &caus; break;
		case 14: corr.bytes[15]++, caus.bytes[15]++; break; /* the same pointers */
		case 15: m.conversation_id = conv; break;
		case 16: strcpy(conv, "conv-2"); break;
		case 17: m.has_confidence = true, m.confidence = 0.5f; break;
		case 18: m.confidence = 0.25f; break;
		case 19: m.source = "other-src"; break;
		case 20: m.source = NULL, m.ttl_ns = 3 * TC_SEC_NS; break;
		case 21: strcpy(name, "bravo"), m.payload_len = 40; break;
		/* names past the 16 bytes compared byte by byte (cached_str_is) */
		case 22: strcpy(name, "bravo-charlie-delta-echo"); break;
		case 23: name[23] = 'x'; break; /* the last byte */
		case 24: name[23] = '\0'; break; /* a byte shorter */
		case 25: strcpy(name, "bravo-charlie-delt"); break; /* the bound's edge: 18, then 16 */
		case 26: name[16] = '\0'; break;
		case 27: name[15] = 'x'; break;
		}
		shmbus_uuid_t id;
		cr_assert_eq(shmbus_publish(pub, &m, &id), 0, "step %u: %s", step, shmbus_errmsg());
		const shmbus_event_t *got = poll_one(sub), *second;
		const shmbus_event_t *want = encode_afresh(ref, sub, &m, &second);
		cr_expect_str_eq(shmbus_event_name(got), want_name, "step %u", step);
		expect_same_but_identity(got, want, step);
		cr_expect(uuid_eq(shmbus_event_id(got), &id), "step %u: the id returned", step);
		cr_expect(uuid_eq(shmbus_event_correlation_id(got), m.correlation_id ? &corr : &id), "step %u", step);
		cr_expect(m.causation_id ? uuid_eq(shmbus_event_causation_id(got), &caus)
					 : shmbus_uuid_is_nil(shmbus_event_causation_id(got)),
			  "step %u: causation id", step);
		cr_assert_eq(shmbus_release(sub, got), 0);
		cr_assert_eq(shmbus_release(sub, want), 0);
		cr_assert_eq(shmbus_release(sub, second), 0);
		/* routed by its own name hash: one event (ours) and the two of ref */
		const shmbus_event_t *ev;
		int n = 0;
		while (shmbus_poll(bravo, &ev) == 1) {
			cr_expect_str_eq(shmbus_event_name(ev), "bravo", "step %u", step);
			cr_assert_eq(shmbus_release(bravo, ev), 0);
			n++;
		}
		cr_expect_eq(n, strcmp(name, "bravo") ? 0 : 3, "step %u: %d events for the filter on bravo", step, n);
	}

	/* the response helper's success and failure flags are part of the shape */
	shmbus_uuid_t q_id;
	cr_assert_eq(shmbus_publish_query(ref, "stock.level", NULL, NULL, &q_id), 0);
	const shmbus_event_t *q = poll_one(sub);
	for (int i = 0; i < 4; i++) {
		bool ok = i % 2 == 0;
		cr_assert_eq(shmbus_publish_response(pub, q, "{}", ok, NULL), 0, "%s", shmbus_errmsg());
		const shmbus_event_t *r = poll_one(sub);
		cr_expect_eq(shmbus_event_flags(r) & (SHMBUS_FLAG_SUCCESS | SHMBUS_FLAG_FAILURE),
			     ok ? SHMBUS_FLAG_SUCCESS : SHMBUS_FLAG_FAILURE, "response %d", i);
		cr_assert_eq(shmbus_release(sub, r), 0);
	}
	cr_assert_eq(shmbus_release(sub, q), 0);
	expect_empty(sub, "after the responses");

	shmbus_pub_close(pub);
	shmbus_pub_close(ref);
	shmbus_sub_close(bravo);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A message that changed into an invalid one after its encoding was cached
 * is refused as any other, and the cache still serves the valid one. */
Test(pubsub, single_publish_refuses_a_cached_message_made_invalid)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	char name[80] = "ping";
	shmbus_meta_t meta = {.key = "k", .value = "v"};
	static const uint8_t payload[8];
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = name, .payload = payload, .payload_len = 8};
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	memset(name, 'x', 64); /* one byte over the limit, in the same buffer */
	name[64] = '\0';
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -ENAMETOOLONG);
	name[0] = '\0';
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "an empty name");
	strcpy(name, "ping");
	m.payload_len = cfg.max_payload + 1;
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EMSGSIZE);
	m.payload_len = 8;
	m.payload = NULL;
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "a payload length without a payload");
	m.payload = payload;
	m.type = (shmbus_type_t)0;
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "no type");
	m.type = SHMBUS_NOTIFICATION;
	m.metadata = &meta;
	m.metadata_count = 1;
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	meta.key = "";
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "an empty metadata key");
	meta.key = NULL;
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "no metadata key");
	meta.key = "k";
	m.metadata = NULL;
	cr_expect_eq(shmbus_publish(pub, &m, NULL), -EINVAL, "metadata NULL with a count");
	m.metadata = &meta;
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0);
	for (int i = 0; i < 3; i++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_expect_str_eq(shmbus_event_name(ev), "ping");
		cr_expect_eq(shmbus_event_metadata_count(ev), (size_t)(i > 0));
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	expect_empty(sub, "after the refused messages");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* Review: a lone consumer that handed out a whole run and had every event
 * of it released, then does not poll for a while, must not keep the run's
 * queue cells: a lap of the queue (as many cells as the ring has slots)
 * comes back to them as soon as publishers fill the ring once, and a push
 * that finds a cell of the previous lap unreleased is dropped, whatever
 * the policy. A block subscription must not miss anything here. (Urgent
 * events: normal ones leave an eighth of the ring as headroom, so a lone
 * consumer's normal queue cannot come round a lap while it is idle.) */
Test(pubsub, a_lone_consumer_between_polls_does_not_pin_the_queue)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL); /* plain, block */
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1); /* never waits: a full queue would show */
	for (uint32_t i = 0; i < 16; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ev", SHMBUS_PRIORITY_HIGH, i), 0);
	for (uint32_t i = 0; i < 16; i++) {
		const shmbus_event_t *ev = poll_one(sub);
		cr_assert_eq(tc_payload_u32(ev), i);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	/* every hold is dropped (the 16th release flushed the batch): the
	 * whole ring is free for one more lap, and nothing is queued; urgent
	 * events, which need no headroom, can fill all of it */
	uint32_t lap = cfg.slots;
	for (uint32_t i = 0; i < lap; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ev", SHMBUS_PRIORITY_HIGH, 16 + i), 0, "publish %u: %s", i,
			     shmbus_errmsg());
	uint32_t got = 0;
	const shmbus_event_t *ev = NULL;
	while (shmbus_poll(sub, &ev) == 1) {
		cr_expect_eq(tc_payload_u32(ev), 16 + got);
		cr_assert_eq(shmbus_release(sub, ev), 0);
		got++;
	}
	shmbus_sub_info_t v;
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &v, 1), 1);
	cr_expect_eq(v.lagged, 0, "a block subscription missed %llu events (queue full)", (unsigned long long)v.lagged);
	cr_expect_eq(got, lap, "got %u of %u", got, lap);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

struct urgent_once {
	shmbus_pub_t *pub;
	bool done;
};

/* A custom predicate that publishes one urgent event the first time it
 * sees event 0: what another process could do at that very moment. */
static bool publish_urgent_once(const shmbus_event_t *ev, void *arg)
{
	struct urgent_once *u = arg;
	if (!u->done && tc_payload_u32(ev) == 0) {
		u->done = true;
		cr_assert_eq(tc_publish_u32(u->pub, SHMBUS_NOTIFICATION, "ev", SHMBUS_PRIORITY_HIGH, 100), 0);
	}
	return true;
}

/* Review: shmbus_poll_batch stores the events it means to hand out at once
 * seen when it takes their run. When an urgent event comes in after the
 * take, the rest of the normal run waits for a later call, stored seen
 * although nobody saw it. A stalled publisher then revokes it (a culprit's
 * holds, seen ones included) and reuses its slot; a later poll must not
 * hand out an event whose hold was revoked before it was ever opened (the
 * old protocol's CAS from UNSEEN failed and dropped it). */
Test(pubsub, an_event_revoked_before_it_was_opened_is_not_handed_out)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 100 * TC_MS_NS;
	cfg.block_timeout_ns = 3 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	struct urgent_once u = {.pub = tc_pub(bus, "urgent", -1)};
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_custom(publish_urgent_once, &u, &f), 0);
	shmbus_sub_t *sub = tc_sub(bus, f); /* plain, block */
	shmbus_pub_t *pub = tc_pub(bus, NULL, (int64_t)(3 * TC_SEC_NS));
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ev", 0, i), 0);
	const shmbus_event_t *evs[2];
	cr_assert_eq(shmbus_poll_batch(sub, evs, 2), 2, "%s", shmbus_errmsg());
	cr_assert_eq(tc_payload_u32(evs[0]), 0);
	cr_assert_eq(tc_payload_u32(evs[1]), 100, "the urgent event comes before the rest of the run");
	/* Events 1 and 2 wait in the consumer; nobody has seen them. Fill the
	 * ring: the publish that needs event 0's slot stalls, demotes the
	 * subscription and revokes its holds (0, 1, 2 and the urgent one). */
	uint32_t n = 0;
	for (;;) {
		shmbus_sub_info_t v;
		cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &v, 1), 1);
		if (v.revoked)
			break;
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ev", 0, 1000 + n), 0, "publish %u: %s", n,
			     shmbus_errmsg());
		n++;
		cr_assert_lt(n, cfg.slots, "no revocation");
	}
	cr_expect_eq(shmbus_release(sub, evs[0]), -ESTALE);
	cr_expect_eq(shmbus_release(sub, evs[1]), -ESTALE);
	const shmbus_event_t *ev = NULL;
	cr_assert_eq(shmbus_poll(sub, &ev), 1, "%s", shmbus_errmsg());
	uint32_t got = tc_payload_u32(ev);
	cr_expect(got != 1 && got != 2, "event %u was handed out after its hold was revoked (release: %d)", got,
		  shmbus_release(sub, ev));
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_pub_close(u.pub);
	shmbus_close(bus);
}

/*
 * SHMBUS_PUB_LOW_LATENCY hands each single publish's lines to the shared
 * cache after the commit; nothing about the event may change with it. Two
 * processes answer each other with such publishers, spinning, through
 * shmbus_publish and zero-copy commits alike, with payloads of none, 32
 * bytes and more than the kilobyte that is handed off; each side checks
 * every byte it gets. Unknown publisher flags are refused.
 */
#define LL_ROUNDS 400
static const size_t ll_sizes[3] = {0, 32, 1500};

static void ll_fill(uint8_t *p, size_t n, uint32_t round, uint8_t side)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(round * 31 + i * 7 + side);
}

/* Publish round's message of `name` from `side`: by copy on even rounds,
 * zero-copy on odd ones. 0 or -errno. */
static int ll_send(shmbus_pub_t *pub, const char *name, uint32_t round, uint8_t side)
{
	size_t n = ll_sizes[round % 3];
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = name};
	if (round % 2) {
		shmbus_claim_t c;
		int rc = shmbus_reserve(pub, &m, n, &c);
		if (rc < 0)
			return rc;
		ll_fill(c.payload, n, round, side);
		return shmbus_commit(pub, &c, NULL);
	}
	uint8_t buf[1500];
	ll_fill(buf, n, round, side);
	m.payload = buf;
	m.payload_len = n;
	return shmbus_publish(pub, &m, NULL);
}

/* Wait for round's message from `side` and check it: 0, or a description. */
static const char *ll_check(shmbus_sub_t *sub, uint32_t round, uint8_t side)
{
	const shmbus_event_t *ev = NULL;
	if (shmbus_wait(sub, 10 * (int64_t)TC_SEC_NS, &ev) != 1)
		return "nothing came";
	size_t len = 0;
	const uint8_t *p = shmbus_event_payload(ev, &len);
	uint8_t want[1500];
	ll_fill(want, ll_sizes[round % 3], round, side);
	const char *bad = len != ll_sizes[round % 3] ? "wrong payload length"
			  : len && memcmp(p, want, len) != 0 ? "wrong payload bytes"
							     : NULL;
	if (shmbus_release(sub, ev) < 0 && !bad)
		bad = "release failed";
	return bad;
}

static shmbus_sub_t *ll_subscribe(shmbus_bus_t *bus, const char *name)
{
	shmbus_filter_t *f = NULL;
	shmbus_sub_t *sub = NULL;
	if (shmbus_filter_names(&name, 1, &f) < 0)
		return NULL;
	shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f, .wait = SHMBUS_WAIT_SPIN}, &sub);
	shmbus_filter_free(f);
	return sub;
}

struct ll_child {
	int ready_fd;
};

static int ll_answer_child(void *arg)
{
	struct ll_child *c = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_sub_t *sub = ll_subscribe(bus, "ll.ping");
	if (!sub)
		return CHILD_FAIL("subscribe: %s", shmbus_errmsg());
	if ((rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.flags = SHMBUS_PUB_LOW_LATENCY}, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	if (tc_write_byte(c->ready_fd, 'r') < 0)
		return CHILD_FAIL("ready pipe");
	for (uint32_t r = 0; r < LL_ROUNDS; r++) {
		const char *bad = ll_check(sub, r, 1);
		if (bad)
			return CHILD_FAIL("ping %u: %s", r, bad);
		if ((rc = ll_send(pub, "ll.pong", r, 2)) < 0)
			return CHILD_FAIL("pong %u: %d (%s)", r, rc, shmbus_errmsg());
	}
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

Test(pubsub, low_latency_publishers_answer_each_other_across_processes)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = NULL;
	cr_assert_eq(shmbus_pub_open(bus, &(shmbus_pub_opts_t){.flags = 0x80}, &pub), -EINVAL,
		     "unknown publisher flags accepted");
	cr_assert_null(pub);
	shmbus_sub_t *sub = ll_subscribe(bus, "ll.pong");
	cr_assert_not_null(sub, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_pub_open(bus, &(shmbus_pub_opts_t){.flags = SHMBUS_PUB_LOW_LATENCY}, &pub), 0, "%s",
		     shmbus_errmsg());
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	struct ll_child c = {.ready_fd = fds[1]};
	pid_t pid = tc_fork(ll_answer_child, &c);
	char byte;
	cr_assert_eq(tc_read_byte(fds[0], 10000, &byte), 0, "the answering child never subscribed");
	for (uint32_t r = 0; r < LL_ROUNDS; r++) {
		cr_assert_eq(ll_send(pub, "ll.ping", r, 1), 0, "ping %u: %s", r, shmbus_errmsg());
		const char *bad = ll_check(sub, r, 2);
		cr_assert_null(bad, "pong %u: %s", r, bad);
	}
	int st = 0;
	cr_assert_eq(tc_wait(pid, 10000, &st), 0, "answering child hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "answering child %s", tc_status_str(st));
	close(fds[0]);
	close(fds[1]);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ------------------------------------------------ routing a repeated event */

/* What another process does to the subscriptions between two publishes of
 * one message by one publisher (the case a publisher's memo of what its
 * last event matched serves). */
enum memo_change { MEMO_PAUSE, MEMO_RESUME, MEMO_DURABLE, MEMO_REFILTER, MEMO_UNSUBSCRIBE };
struct memo_op {
	enum memo_change change;
	shmbus_sub_id_t id;
};

static int memo_change_child(void *arg)
{
	const struct memo_op *op = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *d = NULL;
	shmbus_filter_t *f = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	const char *name = op->change == MEMO_REFILTER ? "memo.other" : "memo";
	switch (op->change) {
	case MEMO_PAUSE:
		rc = shmbus_pause(bus, op->id);
		break;
	case MEMO_RESUME:
		rc = shmbus_resume(bus, op->id);
		break;
	case MEMO_DURABLE:
	case MEMO_REFILTER: /* attaching with a filter replaces the stored one */
		if ((rc = shmbus_filter_names(&name, 1, &f)) < 0)
			break;
		rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "memo-d", .durable = true, .filter = f},
				      &d);
		shmbus_filter_free(f);
		shmbus_sub_close(d);
		break;
	case MEMO_UNSUBSCRIBE:
		rc = shmbus_unsubscribe_id(bus, op->id);
		break;
	}
	shmbus_close(bus);
	return rc < 0 ? CHILD_FAIL("change %d: %d (%s)", (int)op->change, rc, shmbus_errmsg()) : 0;
}

static void memo_change(enum memo_change change, shmbus_sub_id_t id)
{
	struct memo_op op = {.change = change, .id = id};
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(memo_change_child, &op), 10000, &st), 0, "change %d hung", (int)change);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "change %d: child %s", (int)change, tc_status_str(st));
}

/* The durable subscription's events, by attaching to it (its stored filter
 * kept) and draining: their payloads' sum. */
static int memo_durable_take(shmbus_bus_t *bus, shmbus_sub_id_t *id, uint32_t *sum)
{
	shmbus_sub_t *d = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "memo-d", .durable = true}, &d), 0,
		     "%s", shmbus_errmsg());
	if (id)
		*id = shmbus_sub_id(d);
	const shmbus_event_t *ev;
	int n = 0;
	*sum = 0;
	while (shmbus_poll(d, &ev) == 1) {
		*sum += tc_payload_u32(ev);
		shmbus_release(d, ev);
		n++;
	}
	shmbus_sub_close(d);
	return n;
}

/* One publisher publishes one message over and over while another process
 * pauses, resumes, adds, re-filters and removes subscriptions between the
 * publishes: each event goes exactly where the subscriptions say at the
 * time, never where the previous identical event went. */
Test(pubsub, a_repeated_event_follows_subscription_changes_of_another_process)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	const char *name = "memo";
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_names(&name, 1, &f), 0);
	shmbus_sub_t *s = tc_sub(bus, f);
	uint32_t sum = 0;
	shmbus_sub_id_t d_id = 0;

	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 1), 0);
	cr_assert_eq(tc_drain(s, NULL, NULL), 1);

	memo_change(MEMO_PAUSE, shmbus_sub_id(s));
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 2), 0);
	expect_empty(s, "paused by another process");

	memo_change(MEMO_RESUME, shmbus_sub_id(s));
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 3), 0);
	cr_assert_eq(tc_drain(s, NULL, NULL), 1, "resumed by another process");

	memo_change(MEMO_DURABLE, 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 4), 0);
	cr_assert_eq(tc_drain(s, NULL, NULL), 1);
	cr_assert_eq(memo_durable_take(bus, &d_id, &sum), 1, "a subscription added by another process");
	cr_assert_eq(sum, 4);

	memo_change(MEMO_REFILTER, 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 5), 0);
	cr_assert_eq(tc_drain(s, NULL, NULL), 1);
	cr_assert_eq(memo_durable_take(bus, NULL, &sum), 0, "re-filtered away by another process, got %u", sum);

	memo_change(MEMO_UNSUBSCRIBE, d_id);
	cr_assert_eq(shmbus_list_subscriptions(bus, "memo-d", NULL, 0), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 6), 0);
	cr_assert_eq(tc_drain(s, NULL, NULL), 1);
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, NULL, 0), 1, "only the plain subscription is left");

	shmbus_pub_close(pub);
	shmbus_sub_close(s);
	shmbus_close(bus);
}

/* What check_publish_times checks each event of a call against. */
struct time_check {
	uint64_t before, after; /* CLOCK_REALTIME around the call */
	uint64_t last;		/* the publisher's previous event's time */
	unsigned events;
};

static void check_event_time(const shmbus_event_t *ev, void *arg)
{
	struct time_check *tc = arg;
	/* the clock's own bound: a millisecond while the kernel slews (a
	 * rate off by a hundredth is 10 ms off within a second) */
	const uint64_t slack = 1000000;
	uint64_t t = shmbus_event_published_ns(ev);
	cr_assert_geq(t + slack, tc->before, "event %u published at %llu, %llu ns before its call began", tc->events,
		      (unsigned long long)t, (unsigned long long)(tc->before - t));
	cr_assert_leq(t, tc->after + slack, "event %u published at %llu, %llu ns after its call returned", tc->events,
		      (unsigned long long)t, (unsigned long long)(t - tc->after));
	cr_assert_geq(t, tc->last, "event %u published at %llu, before the one before it (%llu)", tc->events,
		      (unsigned long long)t, (unsigned long long)tc->last);
	tc->last = t;
	tc->events++;
}

/*
 * For run_ms, one publisher takes turns with a single publish, a
 * zero-copy claim and a batch of 8, a call every 200 us or so; every
 * event's publish time lies within a millisecond of CLOCK_REALTIME read
 * around its call (the clock's bound while the kernel slews it; a
 * microsecond or so otherwise), and none is earlier than the publisher's
 * event before it. Over a second or more that spans the publisher clock's
 * calibration and several re-anchorings (lib/pub_clock.h): a rate off by
 * a hundredth puts the events 10 ms out by the 1 s interval.
 */
static void check_publish_times(unsigned run_ms)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_msg_t batch[8];
	uint32_t vals[8];
	tc_u32_batch(batch, vals, 8, "clock");
	struct time_check tc = {0};
	uint64_t end = tc_realtime_ns() + (uint64_t)run_ms * TC_MS_NS;
	for (unsigned call = 0; tc.before < end; call++) {
		tc.before = tc_realtime_ns();
		if (call % 3 == 0) {
			cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "clock", 0, call), 0);
		} else if (call % 3 == 1) {
			shmbus_claim_t claim;
			shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "clock"};
			cr_assert_eq(shmbus_reserve(pub, &m, sizeof call, &claim), 0);
			memcpy(claim.payload, &call, sizeof call);
			cr_assert_eq(shmbus_commit(pub, &claim, NULL), 0);
		} else {
			cr_assert_eq(shmbus_publish_batch(pub, batch, 8, NULL), 8);
		}
		tc.after = tc_realtime_ns();
		cr_assert_gt(tc_drain(sub, check_event_time, &tc), 0, "call %u: nothing delivered", call);
		struct timespec pause = {.tv_nsec = 200000};
		nanosleep(&pause, NULL);
	}
	cr_assert_geq(tc.events, 10, "only %u events in %u ms", tc.events, run_ms);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

Test(pubsub, publish_times_follow_the_real_clock) { check_publish_times(1500); }

/* The same with the counter switched off (that the switch takes is
 * unit/pub_clock_reads_the_real_clock_alone_when_told_to). */
Test(pubsub, publish_times_from_the_real_clock_alone)
{
	/* read once per process, on the first publish: none came before */
	setenv("SHMBUS_REALTIME_CLOCK", "1", 1);
	check_publish_times(100);
}
