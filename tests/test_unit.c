/*
 * test_unit.c - layout and encoding: ids, names, enums, event validation and
 * argument checking of create, publish and filters.
 */
#include "common.h"
#include "event_format.h"
#include "internal.h"
#include "slots.h"
#include "pub_clock.h"
#include "event_encode.h"
#include "log_sync.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(unit, .init = tc_init, .fini = tc_fini, .timeout = 60);

static void fill(char *buf, size_t n, char c)
{
	memset(buf, c, n);
	buf[n] = '\0';
}

/* ------------------------------------------------------------------ ids */

Test(unit, uuid_format_parse_round_trip)
{
	for (unsigned k = 0; k < 64; k++) {
		shmbus_uuid_t id, back;
		for (unsigned i = 0; i < 16; i++)
			id.bytes[i] = (uint8_t)tc_mix64(k * 16 + i);
		char text[SHMBUS_UUID_STR];
		shmbus_uuid_format(&id, text);
		cr_assert_eq(strlen(text), 36, "uuid text length %zu: %s", strlen(text), text);
		char expect[SHMBUS_UUID_STR];
		const uint8_t *b = id.bytes;
		snprintf(expect, sizeof expect,
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
			 b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
		cr_assert_str_eq(text, expect);
		cr_assert_eq(shmbus_uuid_parse(text, &back), 0, "parse %s: %s", text, shmbus_errmsg());
		cr_assert_arr_eq(back.bytes, id.bytes, 16);

		/* Either case is accepted. */
		char upper[SHMBUS_UUID_STR];
		for (unsigned i = 0; i < SHMBUS_UUID_STR; i++)
			upper[i] = (text[i] >= 'a' && text[i] <= 'f') ? (char)(text[i] - 32) : text[i];
		memset(&back, 0, sizeof back);
		cr_assert_eq(shmbus_uuid_parse(upper, &back), 0, "parse %s", upper);
		cr_assert_arr_eq(back.bytes, id.bytes, 16);
	}
}

Test(unit, uuid_parse_rejects_bad_text)
{
	static const char *bad[] = {
		"",
		"0",
		"0123456789abcdef0123456789abcdef",	  /* no dashes */
		"01234567-89ab-cdef-0123-456789abcde",	  /* 35 chars */
		"01234567-89ab-cdef-0123-456789abcdef0",  /* 37 chars */
		"01234567-89ab-cdef-0123-456789abcdeg",	  /* bad hex */
		"01234567+89ab-cdef-0123-456789abcdef",	  /* bad separator */
		"0123456-789ab-cdef-0123-456789abcdef",	  /* dash misplaced */
		"01234567-89ab-cdef-0123-456789abcd f",	  /* space */
		" 01234567-89ab-cdef-0123-456789abcdef",  /* leading space */
		"{01234567-89ab-cdef-0123-456789abcdef}", /* braces */
		"01234567-89ab-cdef-0123-456789abcdeF\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		shmbus_uuid_t out;
		cr_expect_eq(shmbus_uuid_parse(bad[i], &out), -EINVAL, "parse(\"%s\") should be -EINVAL", bad[i]);
	}
	shmbus_uuid_t nil = {{0}}, one = {{0}};
	one.bytes[15] = 1;
	cr_assert(shmbus_uuid_is_nil(&nil));
	cr_assert_not(shmbus_uuid_is_nil(&one));
}

Test(unit, uuid_seq_matches_event_seq)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_uuid_t ids[20];
	char payload[700] = {0};
	for (unsigned i = 0; i < 20; i++) {
		/* Sizes that span one to four slots so sequences are not consecutive. */
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "seq.check", .payload = payload,
				  .payload_len = (i * 97) % sizeof payload};
		cr_assert_eq(shmbus_publish(pub, &m, &ids[i]), 0, "publish %u: %s", i, shmbus_errmsg());
	}
	uint64_t last = 0;
	for (unsigned i = 0; i < 20; i++) {
		const shmbus_event_t *ev = NULL;
		cr_assert_eq(shmbus_poll(sub, &ev), 1, "poll %u", i);
		cr_assert_arr_eq(shmbus_event_id(ev)->bytes, ids[i].bytes, 16, "event %u id", i);
		cr_assert_eq(shmbus_uuid_seq(&ids[i]), shmbus_event_seq(ev), "uuid_seq %llu != event_seq %llu",
			     (unsigned long long)shmbus_uuid_seq(&ids[i]), (unsigned long long)shmbus_event_seq(ev));
		/* UUIDv7: version nibble 7, RFC 4122 variant. */
		cr_assert_eq(ids[i].bytes[6] >> 4, 7, "uuid version %d", ids[i].bytes[6] >> 4);
		cr_assert_eq(ids[i].bytes[8] & 0xC0, 0x80, "uuid variant 0x%02x", ids[i].bytes[8]);
		if (i > 0)
			cr_assert_gt(shmbus_event_seq(ev), last, "sequence must increase");
		last = shmbus_event_seq(ev);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ---------------------------------------------------------------- enums */

Test(unit, type_and_priority_names_round_trip)
{
	static const char *types[] = {NULL, "command", "notification", "query", "response", "error"};
	for (int t = SHMBUS_COMMAND; t <= SHMBUS_ERROR; t++) {
		const char *n = shmbus_type_name((shmbus_type_t)t);
		cr_assert_not_null(n);
		cr_assert_str_eq(n, types[t]);
		cr_assert_eq(shmbus_type_parse(n), t, "type_parse(%s)", n);
	}
	static const char *prios[] = {NULL, "low", "normal", "high", "critical"};
	for (int p = SHMBUS_PRIORITY_LOW; p <= SHMBUS_PRIORITY_CRITICAL; p++) {
		const char *n = shmbus_priority_name((shmbus_priority_t)p);
		cr_assert_not_null(n);
		cr_assert_str_eq(n, prios[p]);
		cr_assert_eq(shmbus_priority_parse(n), p, "priority_parse(%s)", n);
	}
	static const char *bad[] = {"", "bogus", "commandx", "notif", " query", "urgent", "5"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cr_expect_eq(shmbus_type_parse(bad[i]), -EINVAL, "type_parse(\"%s\")", bad[i]);
		cr_expect_eq(shmbus_priority_parse(bad[i]), -EINVAL, "priority_parse(\"%s\")", bad[i]);
	}
	for (int s = SHMBUS_STATUS_CREATED; s <= SHMBUS_STATUS_RETRYING; s++)
		cr_assert_not_null(shmbus_status_name((shmbus_status_t)s));
	cr_assert_not_null(shmbus_content_name(SHMBUS_CONTENT_JSON));
	cr_assert_str_eq(shmbus_content_name(SHMBUS_CONTENT_JSON), "application/json");
}

Test(unit, bus_name_check)
{
	char n64[SHMBUS_NAME_MAX + 1], n65[SHMBUS_NAME_MAX + 2];
	fill(n64, 64, 'a');
	fill(n65, 65, 'b');
	cr_assert_eq(shmbus_name_check("a"), 0);
	cr_assert_eq(shmbus_name_check("Az09._-"), 0);
	cr_assert_eq(shmbus_name_check(n64), 0, "64 chars is the limit");
	cr_assert_eq(shmbus_name_check(n65), -ENAMETOOLONG);
	cr_assert_eq(shmbus_name_check(""), -EINVAL);
	static const char *bad[] = {"a/b", "a b", "a*", "bus\n", "caf\xc3\xa9", "x:y", "/abs", "a\\b"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		cr_expect_eq(shmbus_name_check(bad[i]), -EINVAL, "name_check(\"%s\")", bad[i]);
}

/* ------------------------------------------------------ event validation */

/* Bytes of an event read in place: strings start SEG_EVENT_FIXED bytes
 * after the event (invariant 1: subscribers read the bytes where they lie). */
static const struct seg_event *raw_event(const shmbus_event_t *ev)
{
	const struct seg_event *se = (const void *)(shmbus_event_name(ev) - SEG_EVENT_FIXED);
	cr_assert_eq(se->seq, shmbus_event_seq(ev), "event bytes not found in place before the name");
	cr_assert_arr_eq(se->id, shmbus_event_id(ev)->bytes, 16);
	cr_assert_geq(se->size, SEG_EVENT_FIXED);
	return se;
}

struct captured {
	uint64_t *buf; /* 8-byte aligned copy */
	size_t len;
};

/* A received event: every string present (gaps false), or only the name,
 * the source and the intent with absent strings between them, which take
 * no byte (format 2), and metadata after. */
static struct captured capture_event_of(bool gaps)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "unit-src", 0);
	shmbus_meta_t meta[] = {{"k1", "v1"}, {"trace", "abc-123"}};
	const char payload[] = "{\"hello\":\"world\",\"n\":42}";
	shmbus_msg_t m = {
		.type = SHMBUS_QUERY,
		.name = "unit.event",
		.target = "unit-dst",
		.priority = SHMBUS_PRIORITY_HIGH,
		.conversation_id = "conv",
		.user_id = "user",
		.intent = "intent",
		.decision_id = "dec",
		.has_confidence = true,
		.confidence = 0.5f,
		.metadata = meta,
		.metadata_count = 2,
		.content_type = SHMBUS_CONTENT_JSON,
		.payload = payload,
		.payload_len = sizeof payload - 1,
	};
	if (gaps)
		m.target = m.conversation_id = m.user_id = m.decision_id = NULL;
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "%s", shmbus_errmsg());
	const shmbus_event_t *ev = NULL;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	const struct seg_event *se = raw_event(ev);
	struct captured c = {.len = se->size};
	c.buf = calloc(1, (c.len + 7) / 8 * 8 + 64);
	cr_assert_not_null(c.buf);
	memcpy(c.buf, se, c.len);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	shmbus_unlink(tc_bus); /* a test may capture both kinds */
	return c;
}

Test(unit, event_check_accepts_received_bytes)
{
	for (int gaps = 0; gaps < 2; gaps++) {
	struct captured c = capture_event_of(gaps);
	int rc = shmbus_event_check(c.buf, c.len);
	cr_assert_eq(rc, 0, "valid event rejected: %s", shmbus_errmsg());
	const char *why = NULL;
	cr_assert_eq(seg_event_check((const struct seg_event *)c.buf, c.len, &why), 0, "seg_event_check: %s",
		     why ? why : "?");
	/* More room than the event needs is fine too. */
	cr_assert_eq(shmbus_event_check(c.buf, c.len + 32), 0, "%s", shmbus_errmsg());
	free(c.buf);
	}
}

typedef void (*mutator_fn)(struct seg_event *e, size_t *len);

static void m_trunc_one(struct seg_event *e, size_t *len) { (void)e; *len -= 1; }
static void m_trunc_half(struct seg_event *e, size_t *len) { (void)e; *len /= 2; }
static void m_trunc_header(struct seg_event *e, size_t *len) { (void)e; *len = SEG_EVENT_FIXED - 1; }
static void m_trunc_zero(struct seg_event *e, size_t *len) { (void)e; *len = 0; }
static void m_size_big(struct seg_event *e, size_t *len) { e->size = (uint32_t)*len + 8; }
static void m_size_small(struct seg_event *e, size_t *len) { (void)len; e->size = SEG_EVENT_FIXED - 8; }
static void m_size_huge(struct seg_event *e, size_t *len) { (void)len; e->size = 0xFFFFFFF0u; }
static void m_format(struct seg_event *e, size_t *len) { (void)len; e->format = SEG_EVENT_FORMAT + 1; }
static void m_type0(struct seg_event *e, size_t *len) { (void)len; e->type = 0; }
static void m_type6(struct seg_event *e, size_t *len) { (void)len; e->type = 6; }
static void m_prio0(struct seg_event *e, size_t *len) { (void)len; e->priority = 0; }
static void m_prio5(struct seg_event *e, size_t *len) { (void)len; e->priority = 5; }
static void m_content(struct seg_event *e, size_t *len) { (void)len; e->content_type = 200; }
static void m_status(struct seg_event *e, size_t *len) { (void)len; e->status = 200; }
static void m_name_len_long(struct seg_event *e, size_t *len) { (void)len; e->len[SEG_STR_NAME] = 200; }
static void m_name_len_short(struct seg_event *e, size_t *len) { (void)len; e->len[SEG_STR_NAME] -= 1; }
static void m_name_empty(struct seg_event *e, size_t *len) { (void)len; e->len[SEG_STR_NAME] = 0; }
static void m_name_no_nul(struct seg_event *e, size_t *len)
{
	(void)len;
	e->strings[e->len[SEG_STR_NAME]] = 'X';
}
static void m_strings_len(struct seg_event *e, size_t *len) { (void)len; e->strings_len = 0xFFFF; }
static void m_strings_len_zero(struct seg_event *e, size_t *len) { (void)len; e->strings_len = 0; }
static void m_meta_17(struct seg_event *e, size_t *len) { (void)len; e->meta_count = 17; }
static void m_payload_off_odd(struct seg_event *e, size_t *len) { (void)len; e->payload_off += 4; }
static void m_payload_off_out(struct seg_event *e, size_t *len) { e->payload_off = (uint32_t)*len + 64; }
static void m_payload_off_low(struct seg_event *e, size_t *len) { (void)len; e->payload_off = 8; }
static void m_payload_len(struct seg_event *e, size_t *len) { e->payload_len = (uint32_t)*len; }
static void m_payload_len_wrap(struct seg_event *e, size_t *len) { (void)len; e->payload_len = 0xFFFFFFF8u; }
/* format 2: an absent string given a length, a present one taken away
 * (the strings after it then lie elsewhere), lengths of bit 6 or 7 alone */
static void m_user_toggled(struct seg_event *e, size_t *len)
{
	(void)len;
	e->len[SEG_STR_USER] = e->len[SEG_STR_USER] ? 0 : 3;
}
static void m_target_toggled(struct seg_event *e, size_t *len)
{
	(void)len;
	e->len[SEG_STR_TARGET] = e->len[SEG_STR_TARGET] ? 0 : 5;
}
static void m_target_len_64(struct seg_event *e, size_t *len) { (void)len; e->len[SEG_STR_TARGET] = 64; }
static void m_decision_len_128(struct seg_event *e, size_t *len) { (void)len; e->len[SEG_STR_DECISION] = 128; }

static void expect_mutations_rejected(bool gaps)
{
	struct captured c = capture_event_of(gaps);
	static const struct {
		const char *what;
		mutator_fn fn;
	} cases[] = {
		{"truncated by one byte", m_trunc_one},
		{"truncated to half", m_trunc_half},
		{"truncated inside the header", m_trunc_header},
		{"zero length", m_trunc_zero},
		{"size beyond the buffer", m_size_big},
		{"size below the header", m_size_small},
		{"size huge", m_size_huge},
		{"unknown format", m_format},
		{"type 0", m_type0},
		{"type 6", m_type6},
		{"priority 0", m_prio0},
		{"priority 5", m_prio5},
		{"content type 200", m_content},
		{"status 200", m_status},
		{"name length 200", m_name_len_long},
		{"name length one short", m_name_len_short},
		{"empty name", m_name_empty},
		{"name not NUL-terminated", m_name_no_nul},
		{"strings_len huge", m_strings_len},
		{"strings_len zero", m_strings_len_zero},
		{"17 metadata pairs", m_meta_17},
		{"payload_off misaligned", m_payload_off_odd},
		{"payload_off beyond the event", m_payload_off_out},
		{"payload_off inside the header", m_payload_off_low},
		{"payload_len beyond the event", m_payload_len},
		{"payload_len wraps", m_payload_len_wrap},
		{"user id present/absent swapped", m_user_toggled},
		{"target present/absent swapped", m_target_toggled},
		{"target length 64", m_target_len_64},
		{"decision id length 128", m_decision_len_128},
	};
	size_t bufsz = (c.len + 7) / 8 * 8 + 64;
	uint64_t *copy = malloc(bufsz);
	cr_assert_not_null(copy);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memcpy(copy, c.buf, bufsz);
		size_t len = c.len;
		cases[i].fn((struct seg_event *)copy, &len);
		/* Whatever lies past len must not be read: poison it. */
		memset((char *)copy + len, 0xA5, bufsz - len);
		cr_expect_eq(shmbus_event_check(copy, len), -EBADMSG, "%s (gaps %d): shmbus_event_check accepted it", cases[i].what, (int)gaps);
		const char *why = NULL;
		int rc = seg_event_check((const struct seg_event *)copy, len, &why);
		cr_expect_eq(rc, -EBADMSG, "%s (gaps %d): seg_event_check accepted it", cases[i].what, (int)gaps);
		if (rc == -EBADMSG && why == NULL)
			cr_expect_fail("%s (gaps %d): seg_event_check gave no reason", cases[i].what, (int)gaps);
		/* the delivery path's checks: fresh, and after an event of the
		 * original's shape passed (at the original's length: a truncated
		 * copy has the same header words, and only the remembered length
		 * tells them apart) */
		cr_expect_eq(seg_event_check_fast((const struct seg_event *)copy, len), -EBADMSG,
			     "%s (gaps %d): seg_event_check_fast accepted it", cases[i].what, (int)gaps);
		struct seg_event_shape last = {0};
		cr_assert_eq(seg_event_check_same_shape((const struct seg_event *)c.buf, c.len, &last), 0);
		cr_expect_eq(seg_event_check_same_shape((const struct seg_event *)copy, len, &last), -EBADMSG,
			     "%s (gaps %d): seg_event_check_same_shape accepted it after the original", cases[i].what, (int)gaps);
	}
	free(copy);
	free(c.buf);
}

Test(unit, event_check_rejects_mutations)
{
	expect_mutations_rejected(false);
	expect_mutations_rejected(true); /* absent strings between present ones */
}

static void expect_corruption_survived(bool gaps)
{
	struct captured c = capture_event_of(gaps);
	size_t bufsz = (c.len + 7) / 8 * 8 + 64;
	uint64_t *copy = malloc(bufsz);
	cr_assert_not_null(copy);
	uint64_t seed = 12345;
	unsigned accepted = 0;
	for (unsigned iter = 0; iter < 20000; iter++) {
		memcpy(copy, c.buf, bufsz);
		unsigned flips = 1 + (unsigned)(tc_mix64(seed++) % 4);
		for (unsigned f = 0; f < flips; f++) {
			size_t off = (size_t)(tc_mix64(seed++) % c.len);
			((uint8_t *)copy)[off] ^= (uint8_t)(1 + tc_mix64(seed++) % 255);
		}
		size_t len = (tc_mix64(seed++) % 8 == 0) ? (size_t)(tc_mix64(seed++) % (c.len + 1)) : c.len;
		int rc = shmbus_event_check(copy, len);
		cr_assert(rc == 0 || rc == -EBADMSG, "gaps %d, iteration %u: unexpected %d", (int)gaps, iter, rc);
		/* The remembered-shape check decides as the fast one does,
		 * whether the header words match the original's or not. */
		struct seg_event_shape last = {0};
		cr_assert_eq(seg_event_check_same_shape((const struct seg_event *)c.buf, c.len, &last), 0);
		int fast = seg_event_check_fast((const struct seg_event *)copy, c.len);
		cr_assert_eq(seg_event_check_same_shape((const struct seg_event *)copy, c.len, &last), fast,
			     "gaps %d, iteration %u: the remembered shape decided otherwise", (int)gaps, iter);
		/* the consumer's usual case accepts nothing the full check refuses */
		if (seg_event_like_last((const struct seg_event *)copy, c.len, &last))
			cr_assert_eq(fast, 0, "gaps %d, iteration %u: taken as like the last, yet corrupt", (int)gaps, iter);
		if (rc == 0) {
			accepted++;
			/* An accepted event is internally consistent. */
			const struct seg_event *e = (const void *)copy;
			cr_assert_leq(e->size, len);
			cr_assert_leq((uint64_t)e->payload_off + e->payload_len, e->size);
			cr_assert(e->type >= 1 && e->type <= 5);
		}
	}
	/* Pure garbage of every length. */
	uint8_t garbage[1024];
	for (unsigned iter = 0; iter < 5000; iter++) {
		for (size_t i = 0; i < sizeof garbage; i += 8) {
			uint64_t r = tc_mix64(seed++);
			memcpy(garbage + i, &r, 8);
		}
		size_t len = (size_t)(tc_mix64(seed++) % sizeof garbage);
		int rc = shmbus_event_check(garbage, len);
		cr_assert(rc == 0 || rc == -EBADMSG, "garbage %u: unexpected %d", iter, rc);
	}
	cr_log_info("random corruption: %u of 20000 mutated events still valid", accepted);
	free(copy);
	free(c.buf);
}

Test(unit, event_check_survives_random_corruption)
{
	expect_corruption_survived(false);
	expect_corruption_survived(true); /* absent strings between present ones */
}

/* ------------------------------------------------------- create config */

static void expect_create_fails(const shmbus_config_t *cfg, int want, const char *what)
{
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_create(tc_bus, cfg, NULL, &bus);
	if (rc == 0)
		shmbus_close(bus);
	cr_expect_eq(rc, want, "%s: shmbus_create = %d, want %d", what, rc, want);
	if (rc != 0) {
		shmbus_bus_t *b = NULL;
		int orc = shmbus_open(tc_bus, NULL, &b);
		cr_expect_eq(orc, -ENOENT, "%s: failed create left a bus behind (open = %d)", what, orc);
		if (orc == 0)
			shmbus_close(b);
	}
	shmbus_unlink(tc_bus);
}

Test(unit, create_rejects_bad_config)
{
	shmbus_config_t c;
	c = tc_small_cfg(); c.slots = 100;
	expect_create_fails(&c, -EINVAL, "slots 100 (not a power of two)");
	c = tc_small_cfg(); c.slots = 3;
	expect_create_fails(&c, -EINVAL, "slots 3");
	c = tc_small_cfg(); c.slot_size = 128;
	expect_create_fails(&c, -EINVAL, "slot_size 128 (< 256)");
	c = tc_small_cfg(); c.slot_size = 384;
	expect_create_fails(&c, -EINVAL, "slot_size 384 (not a power of two)");
	c = tc_small_cfg(); c.slots = 64; c.slot_size = 256; c.max_payload = 1u << 20;
	expect_create_fails(&c, -EINVAL, "max_payload 1 MiB on a 16 KiB ring");
	c = tc_small_cfg(); c.max_payload = 64 * 256;
	c.slots = 64;
	expect_create_fails(&c, -EINVAL, "max_payload equal to the whole ring");
	c = tc_small_cfg(); c.max_subscribers = 257;
	expect_create_fails(&c, -EINVAL, "max_subscribers 257");
	c = tc_small_cfg(); c.max_members = 256;
	expect_create_fails(&c, -EINVAL, "max_members 256");

	shmbus_bus_t *bus = NULL;
	char n65[SHMBUS_NAME_MAX + 2];
	fill(n65, 65, 'n');
	cr_expect_eq(shmbus_create(n65, NULL, NULL, &bus), -ENAMETOOLONG);
	cr_expect_eq(shmbus_create("", NULL, NULL, &bus), -EINVAL);
	cr_expect_eq(shmbus_create("bad/name", NULL, NULL, &bus), -EINVAL);
}

Test(unit, create_defaults_and_limits)
{
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_create(tc_bus, NULL, NULL, &bus);
	cr_assert_eq(rc, 0, "create with NULL config: %d %s", rc, shmbus_errmsg());
	shmbus_config_t got;
	shmbus_bus_config(bus, &got);
	cr_expect_eq(got.slots, 4096);
	cr_expect_eq(got.slot_size, 256);
	cr_expect_eq(got.max_payload, 65536);
	cr_expect_eq(got.max_subscribers, 64);
	cr_expect_eq(got.max_members, 64);
	cr_expect_eq(got.mode, 0600, "mode %o", got.mode);
	cr_expect_eq(got.block_timeout_ns, TC_SEC_NS);
	cr_expect_eq(got.stall_timeout_ns, 5 * TC_SEC_NS);
	cr_expect_eq(got.reclaim_timeout_ns, TC_SEC_NS);
	cr_expect_str_eq(shmbus_bus_name(bus), tc_bus);
	char path[128];
	snprintf(path, sizeof path, "/dev/shm/shmbus.%s", tc_bus);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "segment %s missing", path);
	cr_expect_eq(st.st_mode & 0777, 0600, "segment mode %o", st.st_mode & 0777);
	shmbus_close(bus);

	/* The largest values accepted. */
	shmbus_unlink(tc_bus);
	shmbus_config_t c = tc_small_cfg();
	c.max_subscribers = 256;
	c.max_members = 255;
	rc = shmbus_create(tc_bus, &c, NULL, &bus);
	cr_assert_eq(rc, 0, "max_subscribers 256, max_members 255: %d %s", rc, shmbus_errmsg());
	shmbus_close(bus);
}

/* ---------------------------------------------------- publish validation */

Test(unit, publish_rejects_bad_messages)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_payload = 1024;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);

	char s63[64], s64[65], k32[33], v256[257];
	fill(s63, 63, 'x');
	fill(s64, 64, 'y');
	fill(k32, 32, 'k');
	fill(v256, 256, 'v');
	static char payload[1025];
	shmbus_meta_t meta17[17];
	for (int i = 0; i < 17; i++)
		meta17[i] = (shmbus_meta_t){"key", "value"};
	shmbus_meta_t meta_long_key[] = {{k32, "v"}};
	shmbus_meta_t meta_long_value[] = {{"k", v256}};

	const shmbus_msg_t base = {.type = SHMBUS_NOTIFICATION, .name = "ok"};
	struct {
		const char *what;
		shmbus_msg_t m;
		int want;
	} cases[] = {
		{"missing name", base, -EINVAL},
		{"empty name", base, -EINVAL},
		{"type 0", base, -EINVAL},
		{"type 6", base, -EINVAL},
		{"priority 5", base, -EINVAL},
		{"64-char name", base, -ENAMETOOLONG},
		{"64-char source", base, -ENAMETOOLONG},
		{"64-char target", base, -ENAMETOOLONG},
		{"64-char conversation id", base, -ENAMETOOLONG},
		{"64-char user id", base, -ENAMETOOLONG},
		{"64-char decision id", base, -ENAMETOOLONG},
		{"payload max_payload + 1", base, -EMSGSIZE},
		{"17 metadata pairs", base, -EMSGSIZE},
		{"32-char metadata key", base, -EMSGSIZE},
		{"256-char metadata value", base, -EMSGSIZE},
	};
	cases[0].m.name = NULL;
	cases[1].m.name = "";
	cases[2].m.type = (shmbus_type_t)0;
	cases[3].m.type = (shmbus_type_t)6;
	cases[4].m.priority = (shmbus_priority_t)5;
	cases[5].m.name = s64;
	cases[6].m.source = s64;
	cases[7].m.target = s64;
	cases[8].m.conversation_id = s64;
	cases[9].m.user_id = s64;
	cases[10].m.decision_id = s64;
	cases[11].m.payload = payload;
	cases[11].m.payload_len = 1025;
	cases[12].m.metadata = meta17;
	cases[12].m.metadata_count = 17;
	cases[13].m.metadata = meta_long_key;
	cases[13].m.metadata_count = 1;
	cases[14].m.metadata = meta_long_value;
	cases[14].m.metadata_count = 1;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int rc = shmbus_publish(pub, &cases[i].m, NULL);
		cr_expect_eq(rc, cases[i].want, "publish %s: got %d, want %d", cases[i].what, rc, cases[i].want);
		shmbus_claim_t claim;
		rc = shmbus_reserve(pub, &cases[i].m, cases[i].m.payload_len, &claim);
		if (rc == 0)
			shmbus_abort(pub, &claim);
		cr_expect_eq(rc, cases[i].want, "reserve %s: got %d, want %d", cases[i].what, rc, cases[i].want);
	}

	/* The limits themselves are accepted. */
	shmbus_meta_t meta16[16];
	for (int i = 0; i < 16; i++)
		meta16[i] = (shmbus_meta_t){k32 + 1, v256 + 1};
	shmbus_msg_t edge = {
		.type = SHMBUS_COMMAND,
		.name = s63,
		.source = s63,
		.target = s63,
		.priority = SHMBUS_PRIORITY_CRITICAL,
		.conversation_id = s63,
		.user_id = s63,
		.intent = s63,
		.decision_id = s63,
		.metadata = meta16,
		.metadata_count = 16,
		.payload = payload,
		.payload_len = 1024,
	};
	int rc = shmbus_publish(pub, &edge, NULL);
	cr_assert_eq(rc, 0, "event at every limit rejected: %d %s", rc, shmbus_errmsg());

	/* Nothing but the valid event was published. */
	const shmbus_event_t *ev = NULL;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_assert_str_eq(shmbus_event_name(ev), s63);
	cr_assert_eq(shmbus_event_metadata_count(ev), 16);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	cr_assert_eq(shmbus_poll(sub, &ev), 0, "a rejected event was delivered");
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.published, 1, "published = %llu", (unsigned long long)mt.published);

	/* A batch with one bad event publishes nothing. */
	shmbus_msg_t batch[5];
	for (int i = 0; i < 5; i++)
		batch[i] = base;
	batch[3].name = s64;
	rc = shmbus_publish_batch(pub, batch, 5, NULL);
	cr_assert_eq(rc, -ENAMETOOLONG, "batch with a bad event: %d", rc);
	cr_assert_eq(shmbus_poll(sub, &ev), 0, "part of a failed batch was delivered");

	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* --------------------------------------------------------- filter limits */

/* A limit may be caught when the filter is built or when it is subscribed. */
static void expect_filter_too_big(shmbus_bus_t *bus, int build_rc, shmbus_filter_t *f, const char *what)
{
	if (build_rc != 0) {
		cr_expect_eq(build_rc, -E2BIG, "%s: built with %d, want -E2BIG", what, build_rc);
		return;
	}
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.filter = f};
	int rc = shmbus_subscribe(bus, &o, &sub);
	shmbus_filter_free(f);
	if (rc == 0)
		shmbus_sub_close(sub);
	cr_expect_eq(rc, -E2BIG, "%s: subscribe = %d, want -E2BIG", what, rc);
}

Test(unit, filter_limits)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_filter_t *f = NULL;

	/* 65 names: over SHMBUS_FILTER_SET_MAX. */
	static char names_buf[65][8];
	const char *names[65];
	for (int i = 0; i < 65; i++) {
		snprintf(names_buf[i], sizeof names_buf[i], "n%d", i);
		names[i] = names_buf[i];
	}
	int rc = shmbus_filter_names(names, 65, &f);
	expect_filter_too_big(bus, rc, rc == 0 ? f : NULL, "65 names");

	/* 64 names is fine. */
	f = NULL;
	rc = shmbus_filter_names(names, 64, &f);
	cr_assert_eq(rc, 0, "64 names: %d", rc);
	shmbus_sub_t *ok = tc_sub(bus, f);
	shmbus_sub_close(ok);

	/* 32 + 32 names in two children: 64 set members in all, fine; 33 + 32 not. */
	shmbus_filter_t *kids[2];
	cr_assert_eq(shmbus_filter_names(names, 32, &kids[0]), 0);
	cr_assert_eq(shmbus_filter_sources(names + 32, 33, &kids[1]), 0);
	rc = shmbus_filter_any(kids, 2, &f);
	expect_filter_too_big(bus, rc, rc == 0 ? f : NULL, "65 set members over two nodes");

	/* Text over SHMBUS_FILTER_TEXT_MAX: 30 names of 63 bytes. */
	static char long_buf[30][64];
	const char *longs[30];
	for (int i = 0; i < 30; i++) {
		fill(long_buf[i], 63, 'a');
		snprintf(long_buf[i], 8, "L%02d", i);
		long_buf[i][3] = 'x';
		longs[i] = long_buf[i];
	}
	rc = shmbus_filter_names(longs, 30, &f);
	expect_filter_too_big(bus, rc, rc == 0 ? f : NULL, "1920 bytes of names");

	/* 17 nodes: one any() over 16 leaves. */
	shmbus_filter_t *leaves[16];
	for (int i = 0; i < 16; i++)
		cr_assert_eq(shmbus_filter_min_priority(SHMBUS_PRIORITY_LOW, &leaves[i]), 0);
	rc = shmbus_filter_any(leaves, 16, &f);
	expect_filter_too_big(bus, rc, rc == 0 ? f : NULL, "17 filter nodes");

	/* Nested: all(any(8 leaves), any(8 leaves)) = 19 nodes. */
	shmbus_filter_t *a[8], *b[8], *mid[2];
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_COMMAND), &a[i]), 0);
		cr_assert_eq(shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_QUERY), &b[i]), 0);
	}
	cr_assert_eq(shmbus_filter_any(a, 8, &mid[0]), 0);
	cr_assert_eq(shmbus_filter_any(b, 8, &mid[1]), 0);
	rc = shmbus_filter_all(mid, 2, &f);
	expect_filter_too_big(bus, rc, rc == 0 ? f : NULL, "19 nested nodes");

	/* Bad arguments. */
	f = NULL;
	cr_expect_eq(shmbus_filter_pattern("(unclosed", &f), -EINVAL, "bad regex");
	cr_expect_eq(shmbus_filter_min_priority((shmbus_priority_t)9, &f), -EINVAL, "priority 9");
	cr_expect_eq(shmbus_filter_custom(NULL, NULL, &f), -EINVAL, "NULL predicate");

	shmbus_close(bus);
}

/* --------------------------------------------------------------- claims */

/* Publish urgent events (no headroom) until one fails; no subscription
 * holds anything, so only a slot that stays busy stops them. */
static uint32_t publish_until_full(shmbus_pub_t *pub, uint32_t max, int *rc_out)
{
	uint32_t n = 0;
	int rc = 0;
	while (n < max && (rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "fill", SHMBUS_PRIORITY_HIGH, n)) == 0)
		n++;
	*rc_out = rc;
	return n;
}

/* What a publisher leaves when it dies between its claim CAS and marking
 * the slots: claim_pos moved, the words still carry the lap before. */
static int die_after_claim_cas(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || shmbus_pub_open(bus, NULL, &pub) < 0)
		return 1;
	uint64_t *claim = &bus->hdr->claim_pos, pos = at_load_acquire_u64(claim);
	at_store_relaxed_u32(&pub->rec->claiming_n, 2);
	at_store_relaxed_u64(&pub->rec->claiming, pos + 1);
	if (!at_cas_u64(claim, &pos, pos + 2))
		return 2;
	_exit(0); /* no detach: the member dies with its claim unmarked */
}

Test(unit, claim_unmarked_by_a_dead_publisher_is_aborted)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	int rc;
	cr_assert_eq(publish_until_full(pub, 5, &rc), 5);
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(die_after_claim_cas, NULL), 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s", tc_status_str(st));
	cr_assert_geq(shmbus_reclaim(bus), 1);
	/* the dead claim's two positions are aborted, so three laps go through */
	uint32_t n = publish_until_full(pub, 3 * cfg.slots, &rc);
	cr_expect_eq(n, 3 * cfg.slots, "publish %u failed: %d (%s)", n, rc, shmbus_errmsg());
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.aborted_claims, 1);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A batch publisher paused between committing its first event and
 * starting its second: the ids it returns lie on a page that faults until
 * the test lets it go. */
static struct {
	uint8_t *page;
	size_t len;
	int paused[2], resume[2];
} bp;

static void batch_pause(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if ((uint8_t *)si->si_addr < bp.page || (uint8_t *)si->si_addr >= bp.page + bp.len) {
		signal(sig, SIG_DFL); /* a real fault: crash on the retry */
		return;
	}
	char c = 'P';
	if (write(bp.paused[1], &c, 1) != 1 || read(bp.resume[0], &c, 1) != 1)
		_exit(3);
	mprotect(bp.page, bp.len, PROT_READ | PROT_WRITE); /* the copy resumes */
}

struct batch_arg {
	shmbus_pub_t *pub;
	int rc;
};

static void *batch_thread(void *arg)
{
	struct batch_arg *a = arg;
	static const uint32_t v[2] = {1, 2};
	shmbus_msg_t m[2] = {
		{.type = SHMBUS_NOTIFICATION, .name = "batch", .payload = &v[0], .payload_len = sizeof v[0]},
		{.type = SHMBUS_NOTIFICATION, .name = "batch", .payload = &v[1], .payload_len = sizeof v[1]},
	};
	a->rc = shmbus_publish_batch(a->pub, m, 2, (shmbus_uuid_t *)(void *)bp.page);
	return NULL;
}

/* Every head of a batch is busy from the claim until it is written: a
 * later head left reusable was claimed a lap ahead by another publisher's
 * claim window, and the batch then wrote over that event and wedged the
 * slot at the older lap. */
Test(unit, batch_heads_stay_claimed_until_written)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *batcher = tc_pub(bus, "batcher", 0), *other = tc_pub(bus, "other", -1);
	bp.len = (size_t)sysconf(_SC_PAGESIZE);
	bp.page = mmap(NULL, bp.len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(bp.page, MAP_FAILED);
	cr_assert_eq(pipe(bp.paused), 0);
	cr_assert_eq(pipe(bp.resume), 0);
	struct sigaction sa = {.sa_sigaction = batch_pause, .sa_flags = SA_SIGINFO};
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);

	struct batch_arg a = {.pub = batcher};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, batch_thread, &a), 0);
	char c = 0;
	cr_assert_eq(read(bp.paused[0], &c, 1), 1);
	/* The batch holds positions 0 and 1; event 0 went to nobody, so
	 * position N may reuse its slot, and N + 1 must wait for event 1. */
	int rc;
	uint32_t n = publish_until_full(other, 3 * cfg.slots, &rc);
	cr_expect_eq(n, cfg.slots - 1, "claimed %u positions past a batch still writing (rc %d)", n, rc);
	cr_expect_eq(rc, -EAGAIN);

	cr_assert_eq(write(bp.resume[1], "G", 1), 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(a.rc, 2, "batch: %d", a.rc);
	signal(SIGSEGV, SIG_DFL);
	/* and nothing stays busy afterwards */
	n = publish_until_full(other, 3 * cfg.slots, &rc);
	cr_expect_eq(n, 3 * cfg.slots, "publish %u after the batch: %d (%s)", n, rc, shmbus_errmsg());
	munmap(bp.page, bp.len);
	shmbus_pub_close(batcher);
	shmbus_pub_close(other);
	shmbus_close(bus);
}

/* ----------------------------------------------------------- revocation */

/* Two parties paused at the instruction that clears a holder bit: the
 * slot-control page of each one's own mapping of the bus is read-only, so
 * its lap check (a load) passes and its AND faults; the handler parks the
 * thread until the test lets it go. [0] is the consumer's mapping, [1] the
 * revoker's. */
static struct {
	uint8_t *page[2];
	size_t len;
	int paused[2][2], resume[2][2];
} rv;

static void revoke_pause(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	for (int i = 0; i < 2; i++) {
		uint8_t *a = si->si_addr;
		if (!rv.page[i] || a < rv.page[i] || a >= rv.page[i] + rv.len)
			continue;
		char c = 'P';
		if (write(rv.paused[i][1], &c, 1) != 1 || read(rv.resume[i][0], &c, 1) != 1)
			_exit(3);
		mprotect(rv.page[i], rv.len, PROT_READ | PROT_WRITE); /* the AND runs again */
		return;
	}
	signal(sig, SIG_DFL); /* a real fault: crash on the retry */
}

struct revoke_party {
	shmbus_sub_t *sub;   /* the consumer: polls (finds nothing, flushes its release) */
	shmbus_bus_t *bus;   /* the revoker: relieves congestion at seq */
	shmbus_pub_t *pub;
	uint64_t seq;
	int rc;
};

static void *consumer_party(void *arg)
{
	struct revoke_party *p = arg;
	const shmbus_event_t *ev;
	p->rc = shmbus_poll(p->sub, &ev);
	char c = 'D';
	if (write(rv.paused[0][1], &c, 1) != 1)
		_exit(4);
	return NULL;
}

static void *revoker_party(void *arg)
{
	struct revoke_party *p = arg;
	reclaim_relieve_congestion(p->bus, &p->pub->rec->drain, p->seq, false);
	char c = 'D';
	if (write(rv.paused[1][1], &c, 1) != 1)
		_exit(4);
	return NULL;
}

static uint8_t *ctl_page(shmbus_bus_t *bus, uint64_t seq)
{
	uintptr_t a = (uintptr_t)bus_slot_ctl(bus, seq);
	return (uint8_t *)(a & ~(uintptr_t)(rv.len - 1));
}

/* A holder bit is cleared by exactly one party. The consumer drops a
 * released event while a congested publisher revokes it (a lag
 * subscription's RELEASING entry): the consumer is parked just before its
 * AND, the revoker runs as far as it can, the consumer finishes, the slot
 * is reused by a new event for the same subscription, and only then may
 * the revoker go on. When both cleared the bit (the old protocol: the
 * revoker marked the entry the consumer had already read, then passed its
 * lap check), the revoker's AND took the new event's bit and its slot
 * became reusable while the event was still queued. */
Test(unit, a_hold_is_cleared_once_when_a_revoker_races_its_consumer)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg); /* consumer and publisher */
	shmbus_bus_t *rbus = tc_open();	     /* the revoker's own mapping */
	const char *names[] = {"target"};
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_names(names, 1, &f), 0);
	shmbus_sub_opts_t so = {.filter = f, .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0);
	shmbus_filter_free(f);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0), *rpub = tc_pub(rbus, "revoker", 0);

	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "target", SHMBUS_PRIORITY_NORMAL, 1), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	uint64_t x = shmbus_event_seq(ev);
	cr_assert_eq(shmbus_release(sub, ev), 0); /* RELEASING: the hold waits for the batch */
	cr_assert(slot_held_by(bus, x, sub->index));

	rv.len = (size_t)sysconf(_SC_PAGESIZE);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(pipe(rv.paused[i]), 0);
		cr_assert_eq(pipe(rv.resume[i]), 0);
	}
	struct sigaction sa = {.sa_sigaction = revoke_pause, .sa_flags = SA_SIGINFO};
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);

	/* the consumer drops the hold: parked at its AND */
	struct revoke_party cp = {.sub = sub}, tp = {.bus = rbus, .pub = rpub, .seq = x};
	rv.page[0] = ctl_page(bus, x);
	cr_assert_eq(mprotect(rv.page[0], rv.len, PROT_READ), 0);
	pthread_t ct, tt;
	cr_assert_eq(pthread_create(&ct, NULL, consumer_party, &cp), 0);
	char c = 0;
	cr_assert_eq(tc_read_byte(rv.paused[0][0], 10000, &c), 0);
	cr_assert_eq(c, 'P', "the consumer never reached its AND");

	/* the revoker: parked at its AND too if it believes the hold is its
	 * to clear, else done */
	rv.page[1] = ctl_page(rbus, x);
	cr_assert_eq(mprotect(rv.page[1], rv.len, PROT_READ), 0);
	cr_assert_eq(pthread_create(&tt, NULL, revoker_party, &tp), 0);
	char r = 0;
	cr_assert_eq(tc_read_byte(rv.paused[1][0], 10000, &r), 0);

	/* the consumer finishes its drop */
	cr_assert_eq(write(rv.resume[0][1], "G", 1), 1);
	cr_assert_eq(tc_read_byte(rv.paused[0][0], 10000, &c), 0);
	cr_assert_eq(c, 'D');
	cr_assert_eq(pthread_join(ct, NULL), 0);
	cr_assert_eq(cp.rc, 0);
	cr_assert(!slot_held_by(bus, x, sub->index));

	/* the slot comes round again, to the same subscription */
	uint64_t *claim = &bus->hdr->claim_pos;
	while (at_load_acquire_u64(claim) < x + cfg.slots)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "filler", SHMBUS_PRIORITY_NORMAL, 0), 0);
	cr_assert_eq(at_load_acquire_u64(claim), x + cfg.slots);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "target", SHMBUS_PRIORITY_NORMAL, 2), 0);
	cr_assert(slot_held_by(bus, x + cfg.slots, sub->index));

	if (r == 'P') { /* the revoker goes on */
		cr_assert_eq(write(rv.resume[1][1], "G", 1), 1);
		cr_assert_eq(tc_read_byte(rv.paused[1][0], 10000, &r), 0);
	}
	cr_assert_eq(r, 'D');
	cr_assert_eq(pthread_join(tt, NULL), 0);
	signal(SIGSEGV, SIG_DFL);
	rv.page[0] = rv.page[1] = NULL;

	cr_expect(slot_held_by(bus, x + cfg.slots, sub->index),
		  "the new event's holder bit was cleared by the revocation of the old one");
	cr_expect_eq(at_load_acquire_u64(&sub->rec->revoked), 0, "revoked an entry its consumer had already dropped");
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(shmbus_event_seq(ev), x + cfg.slots);
	cr_expect_eq(tc_payload_u32(ev), 2);
	cr_expect_eq(shmbus_release(sub, ev), 0);
	cr_expect_eq(shmbus_poll(sub, &ev), 0);
	cr_expect(!slot_held_by(bus, x + cfg.slots, sub->index));
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 2; j++) {
			close(rv.paused[i][j]);
			close(rv.resume[i][j]);
		}
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_pub_close(rpub);
	shmbus_close(rbus);
	shmbus_close(bus);
}

/* The held entry of sub's consumer that holds seq (SEG_HELD_MAX if none). */
static uint32_t held_index(shmbus_sub_t *sub, uint64_t seq)
{
	for (uint32_t k = 0; k < SEG_HELD_MAX; k++) {
		uint64_t d = at_load_acquire_u64(&sub->cons->held[k]);
		if (d && (d & SEG_DESC_SEQ_MASK) == seq)
			return k;
	}
	return SEG_HELD_MAX;
}

/* A batch release drops the plain holds at once and leaves a revoked one
 * to the general path: the batch reports -ESTALE for it, releases the
 * others, and the revoked entry is freed for the next take. */
Test(unit, release_batch_reports_a_revoked_event_and_releases_the_rest)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_opts_t so = {.policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, i), 0);
	const shmbus_event_t *evs[3];
	cr_assert_eq(shmbus_poll_batch(sub, evs, 3), 3);
	uint64_t seq[3];
	for (int i = 0; i < 3; i++)
		seq[i] = shmbus_event_seq(evs[i]);

	/* a revoker's whole work on the middle one: win the entry, clear the
	 * bit, free the entry */
	uint32_t k = held_index(sub, seq[1]);
	cr_assert_lt(k, SEG_HELD_MAX);
	uint64_t *e = &sub->cons->held[k], d = at_load_acquire_u64(e);
	cr_assert(at_cas_u64(e, &d, d | SEG_DESC_REVOKED));
	slot_release(bus, seq[1], sub->index);
	d |= SEG_DESC_REVOKED;
	cr_assert(at_cas_u64(e, &d, 0));

	cr_expect_eq(shmbus_release_batch(sub, evs, 3), -ESTALE);
	for (int i = 0; i < 3; i++)
		cr_expect(!slot_held_by(bus, seq[i], sub->index), "event %d still held", i);
	cr_expect_eq(sub->nheld, 0);
	cr_expect_eq(sub->held_count, 0, "%u held entries still allocated", sub->held_count);
	cr_expect_eq(shmbus_release(sub, evs[0]), -EINVAL, "released by the batch");

	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, 3), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(tc_payload_u32(ev), 3u);
	cr_expect_eq(shmbus_release(sub, ev), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* The other order: the revoker wins the entry and is parked at its AND;
 * the consumer's drop of the same hold must leave the bit to it, and keep
 * the entry (the revoker's record until it stores 0) out of its next
 * takes until then. */
Test(unit, a_consumer_leaves_a_hold_its_revoker_won)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_bus_t *rbus = tc_open();
	shmbus_sub_opts_t so = {.policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0), *rpub = tc_pub(rbus, "revoker", 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "target", SHMBUS_PRIORITY_NORMAL, 1), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	uint64_t x = shmbus_event_seq(ev);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	uint32_t k = held_index(sub, x);
	cr_assert_lt(k, SEG_HELD_MAX);

	rv.len = (size_t)sysconf(_SC_PAGESIZE);
	cr_assert_eq(pipe(rv.paused[1]), 0);
	cr_assert_eq(pipe(rv.resume[1]), 0);
	struct sigaction sa = {.sa_sigaction = revoke_pause, .sa_flags = SA_SIGINFO};
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);
	struct revoke_party tp = {.bus = rbus, .pub = rpub, .seq = x};
	rv.page[1] = ctl_page(rbus, x);
	cr_assert_eq(mprotect(rv.page[1], rv.len, PROT_READ), 0);
	pthread_t tt;
	cr_assert_eq(pthread_create(&tt, NULL, revoker_party, &tp), 0);
	char r = 0;
	cr_assert_eq(tc_read_byte(rv.paused[1][0], 10000, &r), 0);
	cr_assert_eq(r, 'P', "the revoker never reached its AND");
	uint64_t e = at_load_acquire_u64(&sub->cons->held[k]);
	cr_expect(e & SEG_DESC_REVOKED, "entry %#llx", (unsigned long long)e);
	cr_expect_eq(at_load_acquire_u64(&bus->hdr->locked_revoke), seg_revoke_where(sub->index, sub->consumer, k));

	/* the consumer flushes its release: lost, the bit is the revoker's */
	cr_assert_eq(shmbus_poll(sub, &ev), 0);
	cr_expect(slot_held_by(bus, x, sub->index), "the consumer cleared a hold its revoker had won");
	cr_expect_eq(at_load_acquire_u64(&sub->cons->held[k]), e, "the consumer touched the revoker's record");
	cr_expect(sub->held_revoked & (1ull << k));

	cr_assert_eq(write(rv.resume[1][1], "G", 1), 1);
	cr_assert_eq(tc_read_byte(rv.paused[1][0], 10000, &r), 0);
	cr_assert_eq(r, 'D');
	cr_assert_eq(pthread_join(tt, NULL), 0);
	signal(SIGSEGV, SIG_DFL);
	rv.page[1] = NULL;
	cr_expect(!slot_held_by(bus, x, sub->index));
	cr_expect_eq(at_load_acquire_u64(&sub->cons->held[k]), 0);
	cr_expect_eq(at_load_acquire_u64(&bus->hdr->locked_revoke), 0);
	cr_expect_eq(at_load_acquire_u64(&sub->rec->revoked), 1);

	/* the entry is ours again once the revoker is done */
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "target", SHMBUS_PRIORITY_NORMAL, 2), 0);
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(sub->held_revoked, 0);
	cr_expect_eq(tc_payload_u32(ev), 2);
	cr_expect_eq(shmbus_release(sub, ev), 0);
	for (int j = 0; j < 2; j++) {
		close(rv.paused[1][j]);
		close(rv.resume[1][j]);
	}
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_pub_close(rpub);
	shmbus_close(rbus);
	shmbus_close(bus);
}

struct dying_party {
	uint32_t sub, consumer, k; /* the entry to win */
	uint64_t seq;
	int ready[2]; /* the consumer child: tells it is subscribed, then its sub index */
};

/* A revoker killed between winning an entry (CAS to REVOKED, under the
 * table lock, its locked_revoke set) and clearing the bit. */
static int die_after_revoke_cas(void *arg)
{
	struct dying_party *d = arg;
	shmbus_bus_t *bus = NULL;
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || bus_lock_subs(bus) < 0)
		return 1;
	uint64_t *e = &bus_sub(bus, d->sub)->consumers[d->consumer].held[d->k];
	uint64_t cur = at_load_acquire_u64(e);
	if ((cur & SEG_DESC_SEQ_MASK) != d->seq || (cur & SEG_DESC_REVOKED))
		return 2;
	at_store_release_u64(&bus->hdr->locked_revoke, seg_revoke_where(d->sub, d->consumer, d->k));
	if (!at_cas_u64(e, &cur, cur | SEG_DESC_REVOKED))
		return 3;
	_exit(0); /* the lock goes with us; the bit stays set */
}

/* Its hold is released by whoever takes the table lock next; its consumer
 * (alive) reports the event revoked and leaves the entry to that one. */
Test(unit, a_revocation_its_revoker_died_in_is_finished_under_the_lock)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_opts_t so = {.policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, 1), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	struct dying_party d = {.sub = sub->index, .consumer = sub->consumer, .seq = shmbus_event_seq(ev)};
	d.k = held_index(sub, d.seq);
	cr_assert_lt(d.k, SEG_HELD_MAX);
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(die_after_revoke_cas, &d), 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s", tc_status_str(st));

	uint64_t *e = &sub->cons->held[d.k], marked = at_load_acquire_u64(e);
	cr_assert(marked & SEG_DESC_REVOKED);
	cr_expect_eq(shmbus_release(sub, ev), -ESTALE);
	cr_expect_eq(at_load_acquire_u64(e), marked, "the consumer cleared its revoker's record");
	cr_expect(slot_held_by(bus, d.seq, sub->index));

	cr_assert_geq(shmbus_reclaim(bus), 1); /* takes the table lock */
	cr_expect(!slot_held_by(bus, d.seq, sub->index), "the dead revoker's hold leaked");
	cr_expect_eq(at_load_acquire_u64(e), 0);
	cr_expect_eq(at_load_acquire_u64(&bus->hdr->locked_revoke), 0);

	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, 2), 0);
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(sub->held_revoked, 0, "the entry stayed lost after its revocation was finished");
	cr_expect_eq(shmbus_release(sub, ev), 0);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A consumer killed between winning its entry (DROPPING) and clearing
 * the bit: the survivor clears it, and does not deliver the event again
 * (it was released). */
static int die_while_dropping(void *arg)
{
	struct dying_party *d = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t so = {.subscriber_id = "dropper", .durable = true};
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || shmbus_subscribe(bus, &so, &sub) < 0)
		return 1;
	if (tc_write_byte(d->ready[1], 'R') < 0)
		return 2;
	const shmbus_event_t *ev;
	if (shmbus_wait(sub, 10 * (int64_t)TC_SEC_NS, &ev) != 1 || shmbus_release(sub, ev) < 0)
		return 3;
	uint32_t k = held_index(sub, shmbus_event_seq(ev));
	if (k >= SEG_HELD_MAX)
		return 4;
	uint64_t cur = at_load_acquire_u64(&sub->cons->held[k]);
	if (!(cur & SEG_DESC_RELEASING) || !at_cas_u64(&sub->cons->held[k], &cur, cur | SEG_DESC_DROPPING))
		return 5;
	_exit(0); /* the bit stays set */
}

Test(unit, a_hold_its_consumer_died_dropping_is_released_once)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0);
	struct dying_party d = {0};
	cr_assert_eq(pipe(d.ready), 0);
	pid_t pid = tc_fork(die_while_dropping, &d);
	char c;
	cr_assert_eq(tc_read_byte(d.ready[0], 10000, &c), 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, 1), 0);
	int st = 0;
	cr_assert_eq(tc_wait(pid, 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s", tc_status_str(st));
	close(d.ready[0]);
	close(d.ready[1]);

	shmbus_sub_opts_t so = {.subscriber_id = "dropper", .durable = true};
	uint64_t seq = 0;
	uint32_t idx = SEG_MAX_SUBSCRIBERS;
	for (uint32_t i = 0; i < bus->max_subs; i++)
		if (at_load_acquire_u32(&bus_sub(bus, i)->state) == SEG_SUB_ACTIVE)
			idx = i;
	cr_assert_lt(idx, bus->max_subs);
	for (uint32_t k = 0; k < SEG_HELD_MAX; k++) {
		uint64_t e = at_load_acquire_u64(&bus_sub(bus, idx)->consumers[0].held[k]);
		if (e) {
			cr_expect(seg_desc_dropping(e), "entry %#llx", (unsigned long long)e);
			seq = e & SEG_DESC_SEQ_MASK;
		}
	}
	cr_assert(slot_held_by(bus, seq, idx));
	cr_assert_geq(shmbus_reclaim(bus), 1);
	cr_expect(!slot_held_by(bus, seq, idx), "the dead consumer's hold leaked");
	for (uint32_t k = 0; k < SEG_HELD_MAX; k++)
		cr_expect_eq(at_load_acquire_u64(&bus_sub(bus, idx)->consumers[0].held[k]), 0);
	/* released before it died: not delivered again */
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0);
	const shmbus_event_t *ev;
	cr_expect_eq(shmbus_poll(sub, &ev), 0);
	cr_expect_eq(shmbus_unsubscribe(sub), 0);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* ---------------------------------------------------------------- queue */

/* A private queue of cap cells, as a subscription's would be. */
struct test_queue {
	struct seg_queue_ends ends;
	struct seg_cell cells[8];
	struct seg_take_intent intent;
	struct queue_view q;
};

static void test_queue_init(struct test_queue *t)
{
	memset(t, 0, sizeof *t);
	t->q = (struct queue_view){.ends = &t->ends, .cells = t->cells, .cap = 8};
	queue_init(&t->q);
}

/* Take everything ready, in order, and release it. */
static uint32_t test_queue_drain(struct test_queue *t, uint64_t *out, uint32_t max)
{
	uint32_t got = 0, n;
	uint64_t first;
	while (got < max && (n = queue_take(&t->q, &t->intent, max - got, UINT64_MAX, out + got, &first)) > 0) {
		queue_release(&t->q, &t->intent, first, n);
		got += n;
	}
	return got;
}

/* A run is appended in order, and only the prefix that fits when the
 * queue fills: the rest is refused, never written over queued cells. */
Test(unit, queue_push_many_keeps_order_and_stops_when_full)
{
	struct test_queue t;
	test_queue_init(&t);
	uint64_t in[12], out[12];
	for (unsigned i = 0; i < 12; i++)
		in[i] = 100 + i;
	cr_assert_eq(queue_push_many(&t.q, 1, in, 3), 3);
	cr_assert_eq(queue_push_many(&t.q, 1, in + 3, 9), 5, "8 cells: 3 + 5 fit");
	cr_assert_eq(queue_push_many(&t.q, 1, in + 8, 1), 0, "full");
	cr_assert_eq(test_queue_drain(&t, out, 12), 8);
	for (unsigned i = 0; i < 8; i++)
		cr_expect_eq(out[i], in[i], "cell %u: %llu", i, (unsigned long long)out[i]);
	/* a second lap reuses the released cells */
	cr_assert_eq(queue_push_many(&t.q, 1, in, 8), 8);
	cr_assert_eq(test_queue_drain(&t, out, 12), 8);
	cr_expect_eq(out[7], in[7]);
}

/* A cell left half-pushed by a producer that died is stepped over; the
 * survivor's tombstone then takes its place, and the run that came
 * after it keeps its order. */
Test(unit, queue_push_many_steps_over_a_dead_writers_cell)
{
	struct test_queue t;
	test_queue_init(&t);
	uint64_t in[3] = {7, 8, 9}, out[8];
	/* member 5 marked cell 0 and died before moving tail or writing */
	t.cells[0].turn = seg_turn_busy(5, 0, 1);
	cr_assert_eq(queue_push_many(&t.q, 1, in, 3), 3);
	cr_expect_eq(test_queue_drain(&t, out, 8), 0, "the dead writer's cell blocks the head");
	cr_assert_eq(queue_recover_writer(&t.q, 5, SEG_DESC_TOMBSTONE), 1);
	cr_assert_eq(test_queue_drain(&t, out, 8), 4);
	cr_expect_eq(out[0], SEG_DESC_TOMBSTONE);
	cr_expect_eq(out[1], 7);
	cr_expect_eq(out[2], 8);
	cr_expect_eq(out[3], 9);
}

/* A push of many takes its run of cells with one WRITING word in the
 * first: until that cell is FULL nobody looks past it, and a later push
 * (one or many) that finds it steps over the whole run. */
Test(unit, queue_push_many_takes_a_run_that_later_pushes_step_over)
{
	struct test_queue t;
	test_queue_init(&t);
	uint64_t in[4] = {11, 12, 13, 14}, out[8];
	cr_assert_eq(queue_push_many(&t.q, 1, in, 3), 3);
	cr_expect_eq(t.ends.tail, 3, "the tail hint moves past the run at once");
	for (unsigned i = 0; i < 3; i++)
		cr_expect_eq(t.cells[i].turn, i + 1, "cell %u FULL", i);
	/* member 5 took cells 3..6 as a run and died having made only cell 5
	 * FULL; a push that starts from a stale tail hint lands past it */
	t.cells[3].turn = seg_turn_busy(5, 3, 4);
	at_store_relaxed_u64(&t.cells[5].desc, 99);
	t.cells[5].turn = 6;
	t.ends.tail = 3;
	cr_assert_eq(queue_push(&t.q, 1, in[3]), 0);
	cr_expect_eq(t.cells[7].desc, 14, "the push stepped over the four cells of the run");
	cr_expect_eq(t.cells[4].turn, 4, "a cell inside the run stays untouched");
	cr_expect_eq(test_queue_drain(&t, out, 8), 3, "the run's first cell blocks the head");
	cr_assert_eq(queue_recover_writer(&t.q, 5, SEG_DESC_TOMBSTONE), 3, "the first and the two cells never FULL");
	cr_assert_eq(test_queue_drain(&t, out, 8), 5);
	uint64_t want[5] = {SEG_DESC_TOMBSTONE, SEG_DESC_TOMBSTONE, 99, SEG_DESC_TOMBSTONE, 14};
	for (unsigned i = 0; i < 5; i++)
		cr_expect_eq(out[i], want[i], "cell %u: %llx", i + 3, (unsigned long long)out[i]);
}

/* A survivor looking for a dead writer's cells steps over a live run's
 * cells that are not FULL yet instead of stopping there, and leaves the
 * live run alone. */
Test(unit, queue_recover_writer_steps_over_a_live_run)
{
	struct test_queue t;
	test_queue_init(&t);
	t.cells[0].turn = seg_turn_busy(1, 0, 3); /* live member 1: cells 0..2 */
	t.cells[3].turn = seg_turn_busy(5, 3, 1); /* dead member 5 */
	t.ends.tail = 4;
	cr_assert_eq(queue_recover_writer(&t.q, 5, SEG_DESC_TOMBSTONE), 1);
	cr_expect_eq(t.cells[3].turn, 4, "the dead writer's cell is FULL");
	cr_expect_eq(t.cells[3].desc, SEG_DESC_TOMBSTONE);
	cr_expect_eq(t.cells[0].turn, seg_turn_busy(1, 0, 3), "the live run is untouched");
	cr_expect_eq(t.cells[1].turn, 1);
	cr_expect_eq(t.cells[2].turn, 2);
}

/* Positions count on past 2^54, where the turn words wrap: a run pushed
 * across the wrap, taken, released and pushed again a lap later, a single
 * push, and a dead writer's run recovered there all behave as anywhere. */
Test(unit, queue_works_across_the_wrap_of_its_turn_words)
{
	struct test_queue t;
	test_queue_init(&t);
	uint64_t start = (1ull << 54) - 3;
	for (uint64_t p = start; p < start + 8; p++)
		t.cells[p % 8].turn = seg_turn_empty(p);
	t.ends.head = t.ends.tail = start;
	uint64_t in[8] = {11, 12, 13, 14, 15, 16, 17, 18}, out[8];
	cr_assert_eq(queue_push_many(&t.q, 1, in, 6), 6);
	cr_assert_eq(test_queue_drain(&t, out, 8), 6, "the run across the wrap is taken whole");
	for (unsigned i = 0; i < 6; i++)
		cr_expect_eq(out[i], in[i]);
	cr_assert_eq(queue_push_many(&t.q, 1, in, 8), 8, "a lap later every cell is free again");
	cr_assert_eq(test_queue_drain(&t, out, 8), 8);
	cr_expect_eq(out[7], in[7]);
	cr_assert_eq(queue_push(&t.q, 1, 99), 0);
	cr_assert_eq(test_queue_drain(&t, out, 8), 1);
	cr_expect_eq(out[0], 99);
	/* member 5 took the run of 4 from the next position and died */
	uint64_t p = t.ends.tail;
	t.cells[p % 8].turn = seg_turn_busy(5, p, 4);
	cr_assert_eq(queue_push(&t.q, 1, 77), 0, "a push steps over the dead run");
	cr_assert_eq(queue_recover_writer(&t.q, 5, SEG_DESC_TOMBSTONE), 4);
	cr_assert_eq(test_queue_drain(&t, out, 8), 5);
	cr_expect_eq(out[0], SEG_DESC_TOMBSTONE);
	cr_expect_eq(out[4], 77);
	cr_expect_eq(t.ends.head, start + 6 + 8 + 1 + 5, "head counts on past 2^54");
}

/* A WRITING word keeps the low 48 bits of its position: the distance to
 * a position of another lap comes out signed and exact. */
Test(unit, turn_distance_of_writing_words)
{
	uint64_t p = (1ull << 50) + 5;
	cr_expect_eq(seg_turn_distance(seg_turn_busy(7, p, 64), p), 0);
	cr_expect_eq(seg_turn_distance(seg_turn_busy(7, p + 1024, 1), p), 1024);
	cr_expect_eq(seg_turn_distance(seg_turn_busy(7, p - 1024, 1), p), -1024);
	cr_expect_eq(seg_turn_distance(p - 1024 + 1, p), -1023, "a FULL word of the lap before");
	cr_expect_eq(seg_turn_run(seg_turn_busy(7, p, 64)), 64);
	cr_expect_eq(seg_turn_run(seg_turn_busy(7, p, 1)), 1);
	cr_expect_eq(seg_turn_run(p + 1), 1, "a FULL word covers its own cell");
	cr_expect_eq(seg_turn_owner(seg_turn_busy(200, p, 33)), 200);
}

/* ------------------------------------------- a dead writer's queue cells */

/* A publisher that dies inside a push, into the first subscription record:
 * the cell at the queue's tail is left WRITING in its name. */
static int die_inside_push(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || shmbus_pub_open(bus, NULL, &pub) < 0)
		return 1;
	struct queue_view q = bus_queue(bus, 0, SEG_QUEUE_NORMAL);
	uint64_t pos = at_load_acquire_u64(&q.ends->tail);
	struct seg_cell *c = &q.cells[seg_cell_index(pos, q.cap)];
	uint64_t turn = pos;
	if (!at_cas_u64(&c->turn, &turn, seg_turn_busy(bus->member, pos, 1)))
		return 2;
	at_store_relaxed_u64(&q.ends->tail, pos + 1);
	_exit(0); /* no detach: the member dies with the cell half pushed */
}

/* The subscription the dead publisher was pushing to is removed before
 * the reclaim sweep gets to the publisher: the next subscription in that
 * record must still get every event, and publishers must not wait on a
 * queue wedged at the dead writer's cell. */
Test(unit, dead_writers_cell_in_a_removed_subscription_is_recovered)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *first = tc_sub(bus, NULL);
	cr_assert_eq(first->index, 0, "the test pushes into record 0");
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(die_inside_push, NULL), 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s", tc_status_str(st));
	shmbus_sub_close(first); /* removed while the dead member is not reclaimed */
	shmbus_reclaim(bus);
	shmbus_sub_t *next = tc_sub(bus, NULL);
	cr_assert_eq(next->index, 0, "the record is reused");
	shmbus_pub_t *pub = tc_pub(bus, NULL, 2 * (int64_t)TC_SEC_NS);
	uint32_t got = 0;
	for (uint32_t i = 0; i < 3 * cfg.slots; i++) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after", 0, i);
		cr_assert_eq(rc, 0, "publish %u: %d (%s)", i, rc, shmbus_errmsg());
		const shmbus_event_t *ev;
		while (shmbus_poll(next, &ev) == 1) {
			cr_assert_eq(tc_payload_u32(ev), got, "event %u out of order", got);
			got++;
			cr_assert_eq(shmbus_release(next, ev), 0);
		}
	}
	cr_expect_eq(got, 3 * cfg.slots, "the new subscription got %u of %u", got, 3 * cfg.slots);
	shmbus_pub_close(pub);
	shmbus_sub_close(next);
	shmbus_close(bus);
}

/* ------------------------------ a consumer killed mid-take after a removal */

struct midtake {
	int up[2];   /* child -> parent: the run is taken */
	uint32_t n;  /* descriptors taken */
};

/* Join durable subscription "mid", take a run into the consumer's intent
 * (OWNED, head moved, nothing in held[] yet) and stop there, as a consumer
 * preempted inside take_run would. */
static int take_and_stop(void *arg)
{
	struct midtake *mt = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "mid", .durable = true};
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || shmbus_subscribe(bus, &o, &sub) < 0)
		return 1;
	struct queue_view q = bus_queue(bus, sub->index, SEG_QUEUE_NORMAL);
	uint64_t descs[SEG_TAKE_MAX], first;
	uint32_t n = queue_take(&q, &sub->cons->take, 8, UINT64_MAX, descs, &first);
	mt->n = n;
	tc_write_byte(mt->up[1], 'T');
	for (;;)
		pause();
}

/* A removal that finds a live consumer in the middle of a take must leave
 * its entry for it (DETACHED), not free it: the consumer, killed right
 * after, leaves a run whose holds only the dead consumer's entry records,
 * and reclaim must still find and drop them. Before, they leaked: the
 * run's ring slots were never reusable again. */
Test(unit, consumer_killed_mid_take_after_a_removal_leaks_nothing)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "mid", .durable = true};
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	for (uint32_t i = 0; i < 5; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "mid", 0, i), 0);
	struct midtake *mt = tc_shared_alloc(sizeof *mt);
	cr_assert_eq(pipe(mt->up), 0);
	pid_t child = tc_fork(take_and_stop, mt);
	char c = 0;
	cr_assert_eq(read(mt->up[0], &c, 1), 1);
	cr_assert_eq(mt->n, 5, "the child took %u", mt->n);

	cr_assert_eq(shmbus_unsubscribe(sub), 0); /* removed under the live taker */
	tc_kill9(child);
	cr_assert_geq(shmbus_reclaim(bus), 1);
	shmbus_metrics_t m;
	cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
	cr_expect_eq(m.ring_used, 0, "%llu ring slots still held by the dead taker's run",
		     (unsigned long long)m.ring_used);
	/* and its consumer entry is free for the record's next subscription */
	shmbus_sub_t *next = tc_sub(bus, NULL);
	struct seg_sub *s = next->rec;
	unsigned used = 0;
	for (unsigned k = 0; k < SEG_CONSUMERS; k++)
		used += at_load_acquire_u32(&s->consumers[k].state) != SEG_CONSUMER_FREE;
	cr_expect_eq(used, 1, "%u consumer entries in use, only ours should be", used);
	close(mt->up[0]);
	close(mt->up[1]);
	tc_shared_free(mt, sizeof *mt);
	shmbus_sub_close(next);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A free record whose consumer entry a removal left DETACHED, still holding
 * an event its taker stored before it saw the removal: shm-dump's
 * inspection lists it as a removed subscription with that consumer, and
 * the holder bit it keeps is counted, not reported as a leak. */
Test(unit, inspect_lists_a_removed_subscriptions_detached_consumer)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", SHMBUS_PRIORITY_NORMAL, 7), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	uint64_t seq = shmbus_event_seq(ev);

	/* what a removal leaves while the taker has not looked yet */
	struct seg_sub *s = bus_sub(bus, sub->index);
	at_store_release_u32(&sub->cons->state, SEG_CONSUMER_DETACHED);
	at_store_release_u32(&s->state, SEG_SUB_FREE);
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0);
	for (size_t i = 0; i < shmbus_inspect_problem_count(in); i++)
		cr_log_error("problem: %s", shmbus_inspect_problem(in, i));
	cr_expect_eq(shmbus_inspect_problem_count(in), 0, "the detached hold read as a problem");
	cr_assert_eq(shmbus_inspect_sub_count(in), 1);
	shmbus_inspect_sub_t *o = malloc(sizeof *o);
	cr_assert_not_null(o);
	cr_assert_eq(shmbus_inspect_sub(in, 0, o), 0);
	cr_expect_eq(o->state, 0u, "listed as removed");
	cr_expect_eq(o->index, sub->index);
	cr_assert_eq(o->consumer_count, 1u);
	cr_expect(o->consumers[0].detached);
	cr_assert_eq(o->consumers[0].held_count, 1u);
	cr_expect_eq(o->consumers[0].held[0] & SEG_DESC_SEQ_MASK, seq);
	free(o);
	shmbus_inspect_close(in);

	at_store_release_u32(&s->state, SEG_SUB_ACTIVE);
	at_store_release_u32(&sub->cons->state, SEG_CONSUMER_ACTIVE);
	cr_expect_eq(shmbus_release(sub, ev), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A consumer's held entries as the inspection reports them, decoded with
 * the public SHMBUS_HELD_* names: one handed out, one released (its drop
 * deferred to a batch), two taken in the same run and not handed out yet.
 * shm-dump prints them so: it masked sequences with an old width and read
 * UNSEEN entries as huge numbers. */
Test(unit, inspect_reports_each_held_event_by_sequence_and_state)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "pub", 0);
	uint64_t seq[4];
	for (uint32_t i = 0; i < 4; i++) {
		shmbus_uuid_t id;
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "e", .payload = &i, .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, &id), 0);
		seq[i] = shmbus_uuid_seq(&id);
	}
	const shmbus_event_t *first, *second;
	cr_assert_eq(shmbus_poll(sub, &first), 1); /* takes the run of four */
	cr_assert_eq(shmbus_poll(sub, &second), 1);
	cr_assert_eq(shmbus_release(sub, first), 0); /* deferred: RELEASING */

	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0);
	shmbus_inspect_sub_t *o = malloc(sizeof *o);
	cr_assert_not_null(o);
	cr_assert_eq(shmbus_inspect_sub(in, 0, o), 0);
	cr_assert_eq(o->consumer_count, 1u);
	const shmbus_inspect_consumer_t *c = &o->consumers[0];
	cr_assert_eq(c->held_count, 4u);
	static const uint64_t want[4] = {SHMBUS_HELD_RELEASING, 0, SHMBUS_HELD_UNSEEN, SHMBUS_HELD_UNSEEN};
	unsigned seen = 0;
	for (uint32_t k = 0; k < c->held_count; k++) {
		uint64_t d = c->held[k], s = d & SHMBUS_HELD_SEQ_MASK;
		unsigned i = 0;
		while (i < 4 && seq[i] != s)
			i++;
		cr_assert_lt(i, 4u, "held entry %llx names no event published", (unsigned long long)d);
		seen |= 1u << i;
		uint64_t state = d & (SHMBUS_HELD_REVOKED | SHMBUS_HELD_DROPPING | SHMBUS_HELD_TOMBSTONE);
		cr_expect_eq(state, want[i], "event %u: state bits %llx", i, (unsigned long long)state);
	}
	cr_expect_eq(seen, 0xFu, "every event once");
	free(o);
	shmbus_inspect_close(in);
	cr_expect_eq(shmbus_release(sub, second), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/*
 * The taker's side of a claim lease against a publisher caught in the
 * middle of taking the position itself (its lease_using names it): the
 * taker must leave the word TAKING and report the slot unavailable; when
 * the publisher retreats the slot is taken away, and when the publisher
 * stored CLAIMED first, it stays the publisher's. The publisher that comes
 * back to a lease something was taken from claims anew.
 */
/* A small bus and two publishers, a and b, that lease claims when they
 * take turns; the test is skipped where membarrier is refused (publishers
 * then neither lease nor route with the light fence). */
static shmbus_bus_t *two_leasing_publishers(shmbus_pub_t **a, shmbus_pub_t **b)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	*a = tc_pub(bus, "a", 0);
	*b = tc_pub(bus, "b", 0);
	if (!(*a)->asym_ok)
		cr_skip_test("membarrier is refused here: publishers do not lease, and route with the full fence");
	return bus;
}

Test(unit, a_lease_position_its_publisher_is_taking_is_not_taken_away)
{
	shmbus_pub_t *a, *b;
	shmbus_bus_t *bus = two_leasing_publishers(&a, &b);
	/* turns until A holds at least two leased positions */
	for (int i = 0; i < 64 && a->lease_next + 1 >= a->lease_end; i++) {
		cr_assert_eq(tc_publish_u32(a, SHMBUS_NOTIFICATION, "x", SHMBUS_PRIORITY_NORMAL, 0), 0);
		cr_assert_eq(tc_publish_u32(b, SHMBUS_NOTIFICATION, "x", SHMBUS_PRIORITY_NORMAL, 0), 0);
	}
	cr_assert_lt(a->lease_next + 1, a->lease_end, "A holds no lease of two positions");
	uint64_t p = a->lease_next, q = p + 1, *ctl = bus_slot_ctl(bus, p), lap = bus_lap(bus, p);
	uint64_t leased = seg_ctl_make(lap, SEG_SLOT_FREE, a->index + 1);
	uint64_t taking = seg_ctl_make(lap, SEG_SLOT_ABORTED, a->index + 1);
	cr_assert_eq(at_load_acquire_u64(ctl), leased);

	/* A is between its lease_using store and its CLAIMED store */
	at_store_release_u64(&a->rec->lease_using, p + 1);
	cr_expect(!slots_take_lease(bus, p, leased), "took a position its publisher is taking");
	cr_expect_eq(at_load_acquire_u64(ctl), taking, "the word is not left TAKING");
	/* ... and it retreats: anybody finishes the taking */
	at_store_release_u64(&a->rec->lease_using, 0);
	cr_expect(slots_take_lease(bus, p, taking));
	cr_expect_eq(at_load_acquire_u64(ctl), seg_ctl_make(lap, SEG_SLOT_ABORTED, 0));

	/* the same at q, but A did not see the count and stored CLAIMED */
	uint64_t *qctl = bus_slot_ctl(bus, q);
	uint64_t qleased = seg_ctl_make(bus_lap(bus, q), SEG_SLOT_FREE, a->index + 1);
	at_store_release_u64(&a->rec->lease_using, q + 1);
	cr_expect(!slots_take_lease(bus, q, qleased));
	uint64_t claimed = seg_ctl_make(bus_lap(bus, q), SEG_SLOT_CLAIMED, a->index + 1);
	at_store_release_u64(qctl, claimed);
	cr_expect(!slots_take_lease(bus, q, seg_ctl_make(bus_lap(bus, q), SEG_SLOT_ABORTED, a->index + 1)));
	cr_expect_eq(at_load_acquire_u64(qctl), claimed, "a taker overwrote its publisher's claim");
	at_store_release_u64(qctl, seg_ctl_make(bus_lap(bus, q), SEG_SLOT_ABORTED, 0)); /* the test's claim, undone */

	/* A's lease had positions taken: it gives it up and claims anew */
	uint64_t claim = at_load_acquire_u64(&bus->hdr->claim_pos);
	shmbus_uuid_t id;
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "x"};
	cr_assert_eq(shmbus_publish(a, &m, &id), 0, "%s", shmbus_errmsg());
	cr_expect_geq(shmbus_uuid_seq(&id), claim, "A published at %llu, inside its taken lease",
		      (unsigned long long)shmbus_uuid_seq(&id));
	shmbus_pub_close(a);
	shmbus_pub_close(b);
	shmbus_close(bus);
}

/* A peek races a consumer that takes and releases the cell it looks at:
 * it must find a queued descriptor's sequence or nothing, never what a
 * release leaves in the cell (a peek that read it once reported
 * sequence 0, and a congested publisher then opened a catch-up gap from
 * the log's start). */
struct peek_race {
	struct test_queue *t;
	_Atomic int stop;
};

static void *peek_race_churn(void *arg)
{
	struct peek_race *r = arg;
	for (uint64_t i = 0; i < 400000; i++) {
		uint64_t d = (1000 + i) | SEG_DESC_HOLDS_REF, got, first;
		if (queue_push(&r->t->q, 1, d) != 0 || queue_take(&r->t->q, &r->t->intent, 1, UINT64_MAX, &got, &first) != 1)
			break;
		queue_release(&r->t->q, &r->t->intent, first, 1);
	}
	atomic_store(&r->stop, 1);
	return NULL;
}

Test(unit, queue_peek_never_reports_a_released_cell)
{
	struct test_queue t;
	test_queue_init(&t);
	cr_assert_eq((uintptr_t)t.cells % 16, 0, "cells are 16-byte aligned wherever they live");
	struct peek_race r = {.t = &t};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, peek_race_churn, &r), 0);
	uint64_t peeks = 0, bad = 0, seq;
	while (!atomic_load(&r.stop)) {
		if (queue_peek_seq(&t.q, &seq)) {
			peeks++;
			bad += seq < 1000;
		}
	}
	pthread_join(th, NULL);
	cr_expect_eq(bad, 0, "%llu of %llu peeks reported a sequence never queued", (unsigned long long)bad,
		     (unsigned long long)peeks);
	cr_expect_eq(queue_pushed(&t.q), 400000, "the churn ran to the end");
}

/* Once route_fence is set (a member that cannot issue membarrier), a
 * publisher routes with the full fence and stops leasing claims, whatever
 * its own process can do. */
Test(unit, route_fence_turns_publishers_to_the_full_fence_and_off_leases)
{
	shmbus_pub_t *a, *b;
	shmbus_bus_t *bus = two_leasing_publishers(&a, &b);
	cr_expect(routing_fence_light(a), "a fresh bus, a process that answers membarrier");
	sub_route_fence_full(bus);
	cr_expect(!routing_fence_light(a), "route_fence set: the full fence");
	for (int i = 0; i < 64; i++) {
		cr_assert_eq(tc_publish_u32(a, SHMBUS_NOTIFICATION, "x", SHMBUS_PRIORITY_NORMAL, 0), 0);
		cr_assert_eq(tc_publish_u32(b, SHMBUS_NOTIFICATION, "x", SHMBUS_PRIORITY_NORMAL, 0), 0);
		cr_assert_eq(a->lease_end - a->lease_next, 0, "publishers taking turns leased after all");
	}
	shmbus_close(bus);
}

/* The batch publisher's wide shape compare (msg_shape.c) against every
 * byte of a message: a byte of a field that differs makes two messages
 * differ, a padding byte or a payload field does not (confidence counts
 * only with has_confidence). Messages whose padding holds garbage must
 * still be found alike. */
Test(unit, batch_shape_compare_sees_every_field_byte_and_no_padding)
{
#if defined(__x86_64__) && defined(__LP64__)
	if (!shm_cpu_has_avx2)
		cr_skip_test("no AVX2 here: batches use the field compare");
#define MSG_FIELD(f) {offsetof(shmbus_msg_t, f), sizeof(((shmbus_msg_t *)0)->f)}
	static const struct {
		size_t off, len;
	} fields[] = {
		MSG_FIELD(type), MSG_FIELD(name), MSG_FIELD(source), MSG_FIELD(target), MSG_FIELD(priority),
		MSG_FIELD(correlation_id), MSG_FIELD(causation_id), MSG_FIELD(ttl_ns), MSG_FIELD(max_retries),
		MSG_FIELD(retry_count), MSG_FIELD(status), MSG_FIELD(schema_version), MSG_FIELD(content_type),
		MSG_FIELD(flags), MSG_FIELD(conversation_id), MSG_FIELD(user_id), MSG_FIELD(intent),
		MSG_FIELD(decision_id), MSG_FIELD(has_confidence), MSG_FIELD(confidence), MSG_FIELD(metadata),
		MSG_FIELD(metadata_count),
	};
#undef MSG_FIELD
	unsigned field_bytes = 0;
	for (size_t off = 0; off < sizeof(shmbus_msg_t); off++) {
		bool in_field = false;
		for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
			in_field |= off >= fields[f].off && off < fields[f].off + fields[f].len;
		field_bytes += in_field;
		/* garbage everywhere, then the same garbage in both */
		union {
			shmbus_msg_t m;
			uint8_t b[sizeof(shmbus_msg_t)];
		} a, b;
		for (size_t i = 0; i < sizeof a.b; i++)
			a.b[i] = (uint8_t)tc_mix64(i * 31 + 7);
		a.m.has_confidence = true; /* so confidence is a field */
		b = a;
		cr_assert(event_same_shape_avx2(&a.m, &b.m), "byte %zu: identical messages differ", off);
		b.b[off] ^= 0x80;
		bool want_same = !in_field;
		cr_expect_eq(event_same_shape_avx2(&a.m, &b.m), want_same, "byte %zu (%s) flipped: same = %d", off,
			     in_field ? "a field's" : "padding", !want_same);
	}
	/* bytes 0..135 less 16 of padding; the payload's 16 are not a shape's */
	cr_expect_eq(field_bytes, 120, "the field table covers the message");
	/* without has_confidence, confidence is not read (it may be unset) */
	shmbus_msg_t a = {.type = SHMBUS_NOTIFICATION, .name = "n"}, b = a;
	b.confidence = 0.5f;
	cr_expect(event_same_shape_avx2(&a, &b), "confidence compared without has_confidence");
	a.has_confidence = b.has_confidence = true;
	cr_expect(!event_same_shape_avx2(&a, &b), "confidence not compared with has_confidence");
#else
	cr_skip_test("the wide compare is x86-64 only");
#endif
}

/* A consumer opens an event shaped like the last one it opened without
 * the structural tests (open_event_usual): that must accept exactly what
 * they would. After good events of one shape, one whose name lost its
 * terminator (the header words unchanged) and one whose header changed
 * are not handed out, by a batch poll or by a single poll that opens the
 * first of a new run, and each counts as missed; the good ones after
 * them are handed out. */
Test(unit, an_event_corrupted_after_a_run_of_its_shape_is_not_handed_out)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL), *spy = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "shaper", 0);
	enum { N = 12, M = 3 };
	shmbus_msg_t msgs[N];
	uint32_t vals[N];
	tc_u32_batch(msgs, vals, N, "run");
	cr_assert_eq(shmbus_publish_batch(pub, msgs, N, NULL), N, "%s", shmbus_errmsg());
	/* where the batch lies, from another subscription */
	const shmbus_event_t *first = NULL;
	cr_assert_eq(shmbus_poll(spy, &first), 1);
	cr_assert_leq(shmbus_event_size(first), cfg.slot_size, "one slot an event");
	uint64_t s0 = shmbus_event_seq(first);
	struct seg_event *no_nul = (struct seg_event *)bus_slot_data(bus, s0 + 3);
	cr_assert_eq(no_nul->len[SEG_STR_NAME], 3);
	no_nul->strings[3] = 'x';
	((struct seg_event *)bus_slot_data(bus, s0 + 4))->type = 9;

	/* one run, every event of it handed out at once */
	const shmbus_event_t *evs[N];
	int n = shmbus_poll_batch(sub, evs, N);
	cr_assert_eq(n, N - 2, "batch poll: %d", n);
	static const uint32_t want[N - 2] = {0, 1, 2, 5, 6, 7, 8, 9, 10, 11};
	for (int i = 0; i < n; i++)
		cr_expect_eq(tc_payload_u32(evs[i]), want[i], "batch event %d", i);
	cr_assert_eq(shmbus_release_batch(sub, evs, n), 0);

	/* a single poll: the first of the run it takes is the corrupt one */
	cr_assert_eq(shmbus_publish_batch(pub, msgs, M, NULL), M, "%s", shmbus_errmsg());
	no_nul = (struct seg_event *)bus_slot_data(bus, s0 + N);
	cr_assert_eq(no_nul->seq, s0 + N, "the second batch follows the first");
	no_nul->strings[3] = 'x';
	for (uint32_t v = 1; v < M; v++) {
		const shmbus_event_t *ev = NULL;
		cr_assert_eq(shmbus_poll(sub, &ev), 1, "single poll %u", v);
		cr_expect_eq(tc_payload_u32(ev), v, "single poll %u", v);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	const shmbus_event_t *none = NULL;
	cr_expect_eq(shmbus_poll(sub, &none), 0, "the corrupt events stay undelivered");
	cr_expect_eq(shmbus_take_missed(sub), 3, "each corrupt event counts as missed");
	cr_assert_eq(shmbus_release(spy, first), 0);
	shmbus_pub_close(pub);
	shmbus_sub_close(spy);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

#if PUB_CLOCK_HAVE_TSC
/*
 * The publisher clock's arithmetic (lib/pub_clock.h), fed pairs of our
 * own: a counter of 2.6 GHz against a real clock that keeps time with it,
 * then the cases that must make it answer from the real clock or start
 * over. pub_clock_at is what pub_clock_now computes between anchors.
 */
#define CLK_HZ 2600000000ull
#define CLK_T0 1000000ull		     /* the counter at the first pair */
#define CLK_R0 1800000000000000000ull	     /* the real clock then, ns */
static uint64_t clk_ticks(uint64_t ns) { return ns * CLK_HZ / 1000000000ull; }

/* A clock calibrated on exact pairs 10 ms apart (the counter mode, as
 * pub_clock_sync chooses it on such a CPU). */
static struct pub_clock calibrated_clock(void)
{
	struct pub_clock c = {.mode = PUB_CLOCK_COUNTER};
	cr_assert_eq(pub_clock_anchor(&c, CLK_T0, CLK_R0), CLK_R0);
	cr_assert_eq(c.mult, 0, "one pair gives no rate");
	cr_assert_eq(pub_clock_anchor(&c, CLK_T0 + clk_ticks(5000000), CLK_R0 + 5000000), CLK_R0 + 5000000);
	cr_assert_eq(c.mult, 0, "5 ms are too few for a rate");
	cr_assert_eq(pub_clock_anchor(&c, CLK_T0 + clk_ticks(10000000), CLK_R0 + 10000000), CLK_R0 + 10000000);
	cr_assert_neq(c.mult, 0, "no rate after 10 ms");
	return c;
}

Test(unit, pub_clock_converts_the_counter_at_the_measured_rate)
{
	struct pub_clock c = calibrated_clock();
	/* 1/2.6 ns a tick, to a part in 10^9 */
	double ns_per_tick = (double)c.mult / 4294967296.0;
	cr_assert_float_eq(ns_per_tick, 1e9 / (double)CLK_HZ, 1e-9, "%.12f ns a tick", ns_per_tick);
	uint64_t t = c.tsc0 + clk_ticks(30000000);
	int64_t err = (int64_t)(pub_clock_at(&c, t) - (c.real0 + 30000000));
	cr_assert(err >= -2 && err <= 2, "30 ms after the anchor: %lld ns off", (long long)err);
	/* due 40 ms after the anchor; a consistent pair there keeps the rate
	 * and doubles the interval */
	cr_assert_eq(c.interval_ns, 40000000);
	uint64_t due = c.resync_tsc, mult = c.mult;
	cr_assert_geq(due, c.tsc0 + clk_ticks(40000000) - 1);
	uint64_t real = CLK_R0 + 10000000 + 40000000;
	cr_assert_eq(pub_clock_anchor(&c, CLK_T0 + clk_ticks(50000000), real), real);
	cr_assert_eq(c.interval_ns, 80000000);
	cr_assert_eq(c.tsc0, CLK_T0 + clk_ticks(50000000));
	cr_assert_leq(c.mult > mult ? c.mult - mult : mult - c.mult, mult / 1000000, "the rate moved on exact pairs");
}

Test(unit, pub_clock_keeps_its_anchor_for_a_counter_a_little_behind)
{
	struct pub_clock c = calibrated_clock();
	struct pub_clock before = c;
	/* a CPU whose counter lags the anchor by 100 ticks: the real clock
	 * answers, the anchor and rate stay (a rate measured over 100 ticks
	 * would be noise) */
	uint64_t real = c.real0 + 50;
	cr_assert_eq(pub_clock_anchor(&c, c.tsc0 - 100, real), real);
	cr_assert_eq(c.mult, before.mult);
	cr_assert_eq(c.tsc0, before.tsc0);
	cr_assert_eq(c.resync_tsc, before.resync_tsc);
	/* and a sync before its time likewise */
	real = c.real0 + 1000;
	cr_assert_eq(pub_clock_anchor(&c, c.tsc0 + clk_ticks(1000), real), real);
	cr_assert_eq(c.mult, before.mult);
	cr_assert_eq(c.tsc0, before.tsc0);
	/* a counter 10 s behind jumped: calibrate again */
	real = c.real0 + 2000;
	cr_assert_eq(pub_clock_anchor(&c, c.tsc0 - clk_ticks(10000000000ull), real), real);
	cr_assert_eq(c.mult, 0, "a counter 10 s behind its anchor was trusted");
}

Test(unit, pub_clock_starts_over_when_the_clock_or_the_rate_moves)
{
	/* the real clock set 5 ms forward between anchors */
	struct pub_clock c = calibrated_clock();
	uint64_t t = c.resync_tsc, real = c.real0 + 40000000 + 5000000;
	cr_assert_eq(pub_clock_anchor(&c, t, real), real);
	cr_assert_eq(c.mult, 0, "a prediction 5 ms off was kept");
	/* the rate 0.2 % off over the 40 ms (80 us, under the 1 ms bound) */
	c = calibrated_clock();
	t = c.resync_tsc;
	real = c.real0 + 40000000 + 80000;
	cr_assert_eq(pub_clock_anchor(&c, t, real), real);
	cr_assert_eq(c.mult, 0, "a rate 0.2 %% off was taken");
	/* 0.05 % is a slew the clock follows */
	c = calibrated_clock();
	t = c.resync_tsc;
	real = c.real0 + 40000000 + 20000;
	cr_assert_eq(pub_clock_anchor(&c, t, real), real);
	cr_assert_neq(c.mult, 0, "a rate 0.05 %% off was refused");
	cr_assert_eq(c.real0, real);
}

Test(unit, pub_clock_reads_the_real_clock_alone_when_told_to)
{
	/* read once per process, at the first publish: none came before in
	 * this test's process */
	setenv("SHMBUS_REALTIME_CLOCK", "1", 1);
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	uint64_t before = tc_realtime_ns();
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "clock", 0, 1), 0);
	cr_assert_eq(pub->clock.mode, PUB_CLOCK_REAL, "SHMBUS_REALTIME_CLOCK=1 left the clock in mode %d", pub->clock.mode);
	cr_assert_eq(pub->clock.mult, 0, "a rate without the counter");
	cr_assert_geq(pub->clock.last, before, "the reading is not the real clock's");
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(unit, pub_clock_never_goes_back_by_less_than_a_millisecond)
{
	struct pub_clock c = calibrated_clock();
	uint64_t last = c.last;
	/* the real clock 300 us behind the last reading: the last reading */
	cr_assert_eq(pub_clock_anchor(&c, c.tsc0 - 1, last - 300000), last);
	/* 5 ms behind: the clock was set back, and is followed */
	cr_assert_eq(pub_clock_anchor(&c, c.tsc0 - 1, last - 5000000), last - 5000000);
}
#endif

/* ------------------------------------------------ streamed batches */

/* Feed a publisher's choice `calls` batch calls of 64 one-slot events on
 * a ring of RING slots, each taking 64 x per_event[cached] ticks the way
 * the choice says; returns how many of them streamed. */
enum { RING = 4096 };
static unsigned feed_choice(struct stream_choice *c, const uint64_t per_event[2], unsigned calls)
{
	unsigned streamed = 0;
	for (unsigned k = 0; k < calls; k++) {
		bool stream = stream_choose(c);
		streamed += stream;
		stream_account(c, RING, 64, 64 * per_event[!stream]);
	}
	return streamed;
}

/* a stretch is four laps; a lap after each switch is not timed */
enum { CALLS_PER_STRETCH = 4 * RING / 64, SETTLE_CALLS = RING / 64 };

/* A stretch is four laps of the ring, and never under STREAM_STRETCH_MIN
 * slots: a small ring's stretch is as long as a 1024-slot ring's. */
Test(unit, a_stretch_is_four_laps_of_the_ring_and_no_less_than_the_minimum)
{
	cr_assert_eq(stream_stretch_slots(4096), 16384);
	cr_assert_eq(stream_stretch_slots(1024), 4096);
	cr_assert_eq(stream_stretch_slots(64), STREAM_STRETCH_MIN);
	cr_assert_eq(STREAM_STRETCH_MIN, 4096);
	/* big events count by their slots: 8-slot events fill a stretch 8
	 * times sooner */
	struct stream_choice c = {0};
	for (unsigned k = 0; k < 16384 / (64 * 8); k++) {
		cr_assert(stream_choose(&c), "call %u", k);
		stream_account(&c, RING, 64 * 8, 1000);
	}
	cr_assert_not(stream_choose(&c), "the first stretch (streaming) ended after its slots");
}

/* Where streaming is cheaper (cores that share no cache) the publisher
 * streams, after timing one stretch each way, and tries the caches again
 * after 16 stretches, then 32, 64...: each try costs a stretch and the
 * settling after each switch, and they grow rarer while the answer stays
 * the same. */
Test(unit, a_publisher_streams_where_streaming_is_cheaper_and_tries_less_and_less)
{
	struct stream_choice c = {0};
	const uint64_t far[2] = {30, 70}; /* ticks an event: streamed, cached */
	cr_assert(stream_choose(&c), "a new publisher streams first");
	cr_assert_eq(feed_choice(&c, far, CALLS_PER_STRETCH), CALLS_PER_STRETCH);
	cr_assert_not(stream_choose(&c), "then times the caches");
	cr_assert_eq(feed_choice(&c, far, SETTLE_CALLS + CALLS_PER_STRETCH), 0);
	cr_assert(stream_choose(&c), "and streams, the cheaper");
	unsigned run = STREAM_RUN_FIRST;
	for (int tries = 0; tries < 4; tries++, run *= 2) {
		unsigned calls = SETTLE_CALLS + run * CALLS_PER_STRETCH;
		cr_assert_eq(feed_choice(&c, far, calls), calls, "streams for %u stretches", run);
		cr_assert_not(stream_choose(&c), "then tries the caches (try %d)", tries);
		cr_assert_eq(feed_choice(&c, far, SETTLE_CALLS + CALLS_PER_STRETCH), 0);
		cr_assert(stream_choose(&c), "and streams again (try %d)", tries);
	}
}

/* Where the caches are cheaper (cores that share one) the publisher
 * writes through them; when the costs turn (the host moved the cores)
 * the next try finds it out, and the tries start frequent again. */
Test(unit, a_publisher_keeps_to_the_caches_where_they_are_cheaper_until_that_changes)
{
	struct stream_choice c = {0};
	const uint64_t near[2] = {26, 19}, far[2] = {30, 70};
	const unsigned try_calls = SETTLE_CALLS + CALLS_PER_STRETCH;
	feed_choice(&c, near, CALLS_PER_STRETCH + try_calls);
	cr_assert_not(stream_choose(&c), "the caches, the cheaper");
	cr_assert_eq(feed_choice(&c, near, STREAM_RUN_FIRST * CALLS_PER_STRETCH), 0);
	cr_assert(stream_choose(&c), "a try of streaming");
	cr_assert_eq(feed_choice(&c, near, try_calls), try_calls);
	cr_assert_not(stream_choose(&c), "back to the caches");
	/* the cores move apart: the next try (after 32 stretches) wins */
	cr_assert_eq(feed_choice(&c, far, SETTLE_CALLS + 2 * STREAM_RUN_FIRST * CALLS_PER_STRETCH), 0);
	cr_assert_eq(feed_choice(&c, far, try_calls), try_calls);
	cr_assert(stream_choose(&c), "streaming won its try and stays");
	cr_assert_eq(feed_choice(&c, far, STREAM_RUN_FIRST * CALLS_PER_STRETCH), STREAM_RUN_FIRST * CALLS_PER_STRETCH,
		     "for a first run again");
	cr_assert_not(stream_choose(&c), "then tries the caches");
}

/* A tie goes to the caches (the consumer reads from a cache, not from
 * memory), and a try must win by a sixteenth: 3 % is noise, 10 % is not. */
Test(unit, a_try_must_win_by_a_sixteenth)
{
	struct stream_choice c = {0};
	const unsigned try_calls = SETTLE_CALLS + CALLS_PER_STRETCH;
	feed_choice(&c, (const uint64_t[2]){100, 100}, CALLS_PER_STRETCH + try_calls);
	cr_assert_not(stream_choose(&c), "a tie: the caches");
	feed_choice(&c, (const uint64_t[2]){100, 100}, STREAM_RUN_FIRST * CALLS_PER_STRETCH);
	cr_assert(stream_choose(&c), "the try of streaming");
	feed_choice(&c, (const uint64_t[2]){97, 100}, try_calls);
	cr_assert_not(stream_choose(&c), "streaming 3 %% cheaper does not win its try");
	feed_choice(&c, (const uint64_t[2]){97, 100}, SETTLE_CALLS + 2 * STREAM_RUN_FIRST * CALLS_PER_STRETCH);
	cr_assert(stream_choose(&c), "the next try, after twice as many stretches");
	feed_choice(&c, (const uint64_t[2]){90, 100}, try_calls);
	cr_assert(stream_choose(&c), "streaming 10 %% cheaper wins it");
}

#if SHM_HAVE_STREAM
/* The streamed writer writes, from a template, exactly the bytes the
 * ordinary one and the payload copy do (with its own id, size, sequence
 * and payload length), and zeroes the rest of the event's last line, so
 * no private bytes reach the segment: payloads that end anywhere in a
 * line, share a line with the strings, or fill whole lines, with the
 * event's own id as correlation id and with a given one. */
Test(unit, a_streamed_event_is_the_ordinary_one_and_zeroes_the_rest_of_its_line)
{
	static uint8_t payload[1200];
	for (size_t j = 0; j < sizeof payload; j++)
		payload[j] = (uint8_t)(j * 13 + 5);
	shmbus_uuid_t corr = {.bytes = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
	static const size_t lens[] = {0, 1, 7, 31, 32, 33, 63, 64, 65, 100, 128, 129, 1000, 1200};
	for (int given = 0; given < 2; given++) {
		for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
			size_t len = lens[k];
			shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "ship", .target = "courier",
					  .correlation_id = given ? &corr : NULL, .payload = payload, .payload_len = len};
			struct event_layout lay;
			cr_assert_eq(event_layout(&m, "src", 3, len, 4096, &lay), 0, "%s", shmbus_errmsg());
			union {
				struct seg_event ev;
				uint64_t bytes[EVENT_CACHE_BYTES / 8];
			} tmpl;
			event_write(&tmpl.ev, &m, &lay, 0, 40, uuid_v7_words(1700000000000ull, 7, 40), 123);
			_Alignas(64) static uint8_t ref[2048], out[2048];
			memset(ref, 0xAA, sizeof ref);
			memset(out, 0xAA, sizeof out);
			event_write_like((struct seg_event *)ref, &tmpl.ev, &lay, len, 41, !given);
			memcpy(ref + lay.payload_off, payload, len);
			event_write_streamed((struct seg_event *)out, &tmpl.ev, &lay, payload, len, 41, !given);
			stream_fence();
			uint32_t size = event_size(&lay, len), end = (size + 63) & ~63u;
			cr_assert_eq(memcmp(out, ref, size), 0, "payload %zu (correlation %s): the event's bytes differ", len,
				     given ? "given" : "own");
			for (uint32_t b = size; b < end; b++)
				cr_assert_eq(out[b], 0, "payload %zu: byte %u past the event, in its last line, is %#x", len, b,
					     out[b]);
			cr_assert_eq(out[end], 0xAA, "payload %zu: wrote past the event's last line", len);
		}
	}
}
#endif

/* ---------------------------------------------------------- log syncs */

/* An fsync in flight when its caller closes the file's descriptor (the
 * writer seals a segment at a roll) completes on a descriptor of its own:
 * on the caller's, io_uring resolved it only when the fsync ran and
 * failed with EBADF, which took the recorder down (found by an
 * independent test, at sync batch with small segments). */
Test(unit, a_log_sync_in_flight_outlives_the_callers_descriptor)
{
	char path[128];
	snprintf(path, sizeof path, "/var/tmp/shmbus-test-%d-sync", (int)getpid());
	tc_track_file(path);
	static char block[1 << 16];
	memset(block, 'd', sizeof block);
	struct log_sync s;
	log_sync_init(&s);
	int failed = 0, rounds = 40;
	for (int i = 0; i < rounds; i++) {
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
		for (int k = 0; k < 16; k++) /* dirty pages: the fsync has work to do */
			cr_assert_eq(write(fd, block, sizeof block), (ssize_t)sizeof block);
		cr_assert_eq(log_sync_start(&s, fd, (uint64_t)i + 1), 0);
		close(fd); /* sealed at a roll */
		int rc = log_sync_poll(&s, true);
		if (rc < 0)
			failed++;
		else
			cr_assert_eq(s.done, (uint64_t)i + 1, "round %d: the sync did not complete", i);
	}
	log_sync_fini(&s);
	unlink(path);
	cr_expect_eq(failed, 0, "%d of %d syncs failed once their caller closed the descriptor", failed, rounds);
}
