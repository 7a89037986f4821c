/*
 * shmbus.h - the public interface of shmbus, a zero-copy shared-memory event
 * bus for processes on one Linux host.
 *
 * Conventions (as liburing): every fallible function returns 0 (or a count)
 * on success and -errno on failure; shmbus_errmsg() then tells in words what
 * went wrong in this thread. Constructors take an options struct (zero means
 * default, designated initializers recommended) and return the object through
 * an out pointer; destructors accept NULL.
 *
 * Threads: a bus handle may be shared by threads. A publisher handle and a
 * subscription handle are used by one thread at a time. After fork() the
 * child must not use handles of its parent, nor read events the parent
 * held (they are not mapped in the child): it opens the bus again (the
 * library closes the parent's descriptors in the child so a child cannot
 * keep a dead parent looking alive). Closing inherited subscriptions,
 * publishers and buses only frees their memory; a parent's dispatcher or
 * requester is left alone in the child.
 */
#ifndef SHMBUS_H
#define SHMBUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMBUS_VERSION_MAJOR 0
#define SHMBUS_VERSION_MINOR 2

/* ---------------------------------------------------------------- limits */

#define SHMBUS_NAME_MAX 64	     /* bus name: [A-Za-z0-9._-]{1,64}, not . or .. */
#define SHMBUS_STR_MAX 63	     /* event name, source, target, context ids */
#define SHMBUS_ID_MAX 63	     /* subscriber id, group name, client label */
#define SHMBUS_META_MAX 16	     /* metadata pairs per event */
#define SHMBUS_META_KEY_MAX 31
#define SHMBUS_META_VALUE_MAX 255
#define SHMBUS_FILTER_SET_MAX 64     /* names+sources+targets per filter */
#define SHMBUS_FILTER_NODES_MAX 16   /* filter tree nodes */
#define SHMBUS_FILTER_DEPTH_MAX 8    /* nesting below the root (subscribe: -E2BIG) */
#define SHMBUS_FILTER_TEXT_MAX 1264  /* bytes of filter strings and regexes */
#define SHMBUS_MAX_HELD 40	     /* events a consumer may hold unreleased */
#define SHMBUS_GROUP_MEMBERS_MAX 8   /* consumers attached to one subscription */

/* ----------------------------------------------------------------- enums */

typedef enum {
	SHMBUS_COMMAND = 1,
	SHMBUS_NOTIFICATION = 2,
	SHMBUS_QUERY = 3,
	SHMBUS_RESPONSE = 4,
	SHMBUS_ERROR = 5,
} shmbus_type_t;

/* Bit of a type in a type mask: SHMBUS_TYPE_BIT(SHMBUS_COMMAND) etc. */
#define SHMBUS_TYPE_BIT(t) (1u << (t))
#define SHMBUS_ALL_TYPES 0x3Eu

typedef enum {
	SHMBUS_PRIORITY_DEFAULT = 0, /* normal */
	SHMBUS_PRIORITY_LOW = 1,
	SHMBUS_PRIORITY_NORMAL = 2,
	SHMBUS_PRIORITY_HIGH = 3,
	SHMBUS_PRIORITY_CRITICAL = 4,
} shmbus_priority_t;

typedef enum {
	SHMBUS_STATUS_CREATED = 0,
	SHMBUS_STATUS_PUBLISHED = 1,
	SHMBUS_STATUS_DELIVERED = 2,
	SHMBUS_STATUS_PROCESSING = 3,
	SHMBUS_STATUS_COMPLETED = 4,
	SHMBUS_STATUS_FAILED = 5,
	SHMBUS_STATUS_RETRYING = 6,
} shmbus_status_t;

typedef enum {
	SHMBUS_CONTENT_BINARY = 0,
	SHMBUS_CONTENT_JSON = 1,
	SHMBUS_CONTENT_TEXT = 2,
} shmbus_content_t;

/* How a subscriber waits for its next event. */
typedef enum {
	SHMBUS_WAIT_ADAPTIVE = 0, /* spin for spin_ns, then sleep on a futex */
	SHMBUS_WAIT_SPIN = 1,	  /* never sleep */
	SHMBUS_WAIT_BLOCK = 2,	  /* sleep at once */
} shmbus_wait_t;

/* What publishers do when a subscription falls behind. */
typedef enum {
	SHMBUS_POLICY_BLOCK = 0, /* wait up to the publish timeout, then fail */
	SHMBUS_POLICY_LAG = 1,	 /* pass it over; it is told how many it missed */
} shmbus_policy_t;

/* Event flags a publisher may set (shmbus_msg_t.flags). */
#define SHMBUS_FLAG_COMPRESSED 0x0004u
#define SHMBUS_FLAG_REPLAYED 0x0008u
#define SHMBUS_FLAG_MOBILE_LOW_POWER 0x0010u
#define SHMBUS_FLAG_MOBILE_METERED 0x0020u
/* Flags the library sets. */
#define SHMBUS_FLAG_SUCCESS 0x0001u	/* response: is_success */
#define SHMBUS_FLAG_FAILURE 0x0002u	/* response: not success */

/* ------------------------------------------------------------ errors, ids */

/* The last failure of this thread, in words. Never NULL. */
const char *shmbus_errmsg(void);

typedef struct {
	uint8_t bytes[16];
} shmbus_uuid_t;

#define SHMBUS_UUID_STR 37 /* 36 characters and the NUL */

/* Canonical text form (8-4-4-4-12, lower case). */
void shmbus_uuid_format(const shmbus_uuid_t *id, char out[SHMBUS_UUID_STR]);
/* Parse the canonical form (either case). Returns 0 or -EINVAL. */
int shmbus_uuid_parse(const char *text, shmbus_uuid_t *out);
bool shmbus_uuid_is_nil(const shmbus_uuid_t *id);
/* The bus sequence carried by an id this library made (UUIDv7). */
uint64_t shmbus_uuid_seq(const shmbus_uuid_t *id);

const char *shmbus_type_name(shmbus_type_t t);	       /* "command", ... */
int shmbus_type_parse(const char *text);	       /* type or -EINVAL */
const char *shmbus_priority_name(shmbus_priority_t p); /* "low", ... */
int shmbus_priority_parse(const char *text);	       /* priority or -EINVAL */
const char *shmbus_status_name(shmbus_status_t s);
const char *shmbus_content_name(shmbus_content_t c); /* "application/json", ... */

/* Whether `name` is a valid bus name. Returns 0, -EINVAL or -ENAMETOOLONG. */
int shmbus_name_check(const char *name);

/* ------------------------------------------------------------------ bus */

typedef struct shmbus_bus shmbus_bus_t;

typedef struct {
	uint32_t slots;		  /* ring slots, power of two (4096) */
	uint32_t slot_size;	  /* bytes per slot, power of two >= 256 (256) */
	uint32_t max_payload;	  /* largest payload accepted (65536) */
	uint32_t max_subscribers; /* subscription records, <= 256 (64) */
	uint32_t max_members;	  /* attached processes and publishers, <= 255 (64) */
	uint32_t mode;		  /* permission bits of the segment (0600) */
	uint64_t block_timeout_ns;   /* default publisher wait on `block` subs (1 s) */
	uint64_t stall_timeout_ns;   /* a stuck `block` sub is demoted after (5 s) */
	uint64_t reclaim_timeout_ns; /* dead members are reclaimed within (1 s) */
	bool dead_letter_unrouted;   /* a command or query that no subscription
					matches goes to the dead-letter queue
					(reason SHMBUS_DEAD_NO_SUBSCRIBER) */
} shmbus_config_t;

typedef struct {
	const char *label; /* shown by `shmbus info` (program name); at most SHMBUS_ID_MAX bytes */
} shmbus_open_opts_t;

/*
 * shmbus_create - create bus `name` and attach to it.
 * The segment is sized with posix_fallocate (a full /dev/shm fails here with
 * -ENOSPC rather than SIGBUS later). Fails with -EEXIST if the bus exists,
 * -EINVAL (bad config, with the reason in shmbus_errmsg) or -ENAMETOOLONG.
 */
int shmbus_create(const char *name, const shmbus_config_t *cfg, const shmbus_open_opts_t *opts, shmbus_bus_t **out);

/*
 * shmbus_open - attach to an existing bus. Validates magic, layout version,
 * layout hash and size before trusting anything and names the mismatch:
 * -ENOENT (no such bus), -EPROTO (not a shmbus segment, or another layout
 * version or hash), -EBADMSG (truncated or inconsistent), -EBUSY (still
 * being created), -ENOSPC (no free member entry).
 */
int shmbus_open(const char *name, const shmbus_open_opts_t *opts, shmbus_bus_t **out);

/* Detach: this process's plain subscriptions are removed, its publishers
 * closed; durable subscriptions, and groups with members elsewhere, stay.
 * Every handle opened on the bus is freed with it: close subscriptions,
 * publishers, requesters and dispatchers first if they are used again.
 * NULL-safe. */
void shmbus_close(shmbus_bus_t *bus);

/* Remove the shm object of bus `name`; attached processes keep their mapping. */
int shmbus_unlink(const char *name);

const char *shmbus_bus_name(const shmbus_bus_t *bus);
void shmbus_bus_config(const shmbus_bus_t *bus, shmbus_config_t *out);

/*
 * shmbus_reclaim - look for members that died and reclaim what they held:
 * abort their uncommitted claims, give their held events back to their
 * durable or group subscriptions (or release them), remove their plain
 * subscriptions. The library calls it itself when it waits longer than a
 * reclaim interval; call it to force a sweep. Returns how many dead members
 * were reclaimed.
 */
int shmbus_reclaim(shmbus_bus_t *bus);

/* ------------------------------------------------------------- publishing */

typedef struct shmbus_pub shmbus_pub_t;

typedef struct {
	const char *source;   /* default source of events ("pid-<pid>") */
	int64_t timeout_ns;   /* wait on `block` subscribers: 0 = the bus's,
				 < 0 = fail at once with -EAGAIN */
	uint32_t flags;	      /* SHMBUS_PUB_* below; 0 for none */
} shmbus_pub_opts_t;

/*
 * SHMBUS_PUB_LOW_LATENCY: after each single publish (shmbus_publish, the
 * typed calls, shmbus_commit), hand the event's lines (its first KiB) to
 * the CPU's shared cache, so a consumer waiting for it reads them from
 * there instead of from this core (CLDEMOTE, on x86-64 processors that
 * have it; a no-op elsewhere); and write the id and times of a single
 * publish written from the publisher's cache of its last event (an event
 * with at most 512 bytes before its payload; not shmbus_commit's) after
 * its descriptor is pushed, so the clock reading overlaps with the push
 * instead of preceding it. For request/response and other traffic
 * where someone waits for each event: a spin round trip is about a tenth
 * shorter where measured. It costs the publisher a few nanoseconds a line,
 * a stream of single publishes a fifth to a quarter of its rate; batches
 * (shmbus_publish_batch) never do it.
 */
#define SHMBUS_PUB_LOW_LATENCY 0x1u

/*
 * SHMBUS_PUB_CACHED_BATCHES: write batches through the caches, always.
 * By default (on x86-64) a batch window of 16 events or more
 * (shmbus_publish_batch cuts batches into windows of 64) may write its
 * events after the first of each run of one shape with streaming stores:
 * their lines go to memory without being fetched first from the consumer
 * that read them a lap before, which is what holds a batching publisher
 * back when its consumer runs on a core it shares no cache with (more
 * than twice the events a second measured there); the consumer then
 * reads them from memory instead of from a shared cache, which costs
 * where the two share one. A publisher times its batches both ways and
 * keeps the faster, trying the other way now and then (ARCHITECTURE.md,
 * "Streamed batches"). With this flag it never streams.
 */
#define SHMBUS_PUB_CACHED_BATCHES 0x2u

int shmbus_pub_open(shmbus_bus_t *bus, const shmbus_pub_opts_t *opts, shmbus_pub_t **out);
void shmbus_pub_close(shmbus_pub_t *pub);

typedef struct {
	const char *key;
	const char *value;
} shmbus_meta_t;

/*
 * One event to publish. Strings are NUL-terminated and checked against the
 * limits above: longer input fails with -ENAMETOOLONG, never truncated.
 */
typedef struct {
	shmbus_type_t type;			/* required */
	const char *name;			/* required, 1..63 bytes */
	const char *source;			/* NULL: the publisher's */
	const char *target;			/* NULL: none */
	shmbus_priority_t priority;
	const shmbus_uuid_t *correlation_id;	/* NULL: the event's own id */
	const shmbus_uuid_t *causation_id;	/* NULL: none */
	uint64_t ttl_ns;			/* 0: never expires */
	uint8_t max_retries;
	uint8_t retry_count;
	uint8_t status;				/* 0: published */
	uint16_t schema_version;		/* 0: 1 */
	shmbus_content_t content_type;
	uint16_t flags;				/* SHMBUS_FLAG_* a publisher may set */
	const char *conversation_id;
	const char *user_id;
	const char *intent;
	const char *decision_id;
	bool has_confidence;
	float confidence;
	const shmbus_meta_t *metadata;
	size_t metadata_count;
	const void *payload;
	size_t payload_len;
} shmbus_msg_t; /* a field added here must be added to lib/msg_shape.c's masks too */

/*
 * shmbus_publish - copy one event into the bus, route it to every matching
 * subscription and wake those that sleep. The id (UUIDv7 with the bus
 * sequence) is stored in *id if id is not NULL.
 * Errors: -EINVAL (bad type/priority/missing name, an empty source),
 * -ENAMETOOLONG (a string over its limit), -EMSGSIZE (payload over
 * max_payload, or too many or too long metadata), -EAGAIN (the ring is full
 * because a subscriber holds the oldest slot, and the timeout is negative),
 * -ETIMEDOUT (it stayed full for the timeout), -EBUSY (this publisher has
 * a zero-copy claim open), -EBADMSG (the segment's words are corrupt).
 */
int shmbus_publish(shmbus_pub_t *pub, const shmbus_msg_t *msg, shmbus_uuid_t *id);

/*
 * shmbus_publish_batch - publish n events with one claim and one wake per
 * subscription. On error no event of the batch is visible. Events are
 * committed in order, so a publisher killed in the middle leaves a prefix
 * of the batch visible (each event whole, none after a missing one).
 * At most half the ring per batch (-EMSGSIZE beyond).
 * Returns n or -errno; ids (n entries) may be NULL.
 */
int shmbus_publish_batch(shmbus_pub_t *pub, const shmbus_msg_t *msgs, size_t n, shmbus_uuid_t *ids);

/*
 * Zero-copy publishing: reserve room for a payload of payload_len bytes,
 * write it at claim->payload, then commit (route, wake) or abort (the slot
 * becomes padding nobody sees). A publisher has at most one claim open:
 * while it is, its reserve and publish calls return -EBUSY.
 * msg->payload is ignored. If the process dies before commit, survivors
 * abort the claim within the reclaim timeout.
 */
typedef struct {
	void *payload;	    /* where to write payload_len bytes */
	size_t payload_len;
	uint64_t seq;	    /* bus sequence of the event */
	void *priv;	    /* library-owned */
} shmbus_claim_t;

int shmbus_reserve(shmbus_pub_t *pub, const shmbus_msg_t *msg, size_t payload_len, shmbus_claim_t *claim);
int shmbus_commit(shmbus_pub_t *pub, shmbus_claim_t *claim, shmbus_uuid_t *id);
int shmbus_abort(shmbus_pub_t *pub, shmbus_claim_t *claim);

typedef struct shmbus_event shmbus_event_t;

/*
 * The five event types of the spec with their fields. JSON arguments are
 * stored as given (content type JSON; the library does not parse them) and
 * may be NULL for none.
 *  - command: name, parameters, target
 *  - notification: name, data
 *  - query: name, parameters, target
 *  - response: to `query` (correlation id = the query's, causation = the
 *    query, target = the query's source, name = the query's name), data,
 *    success (flag SUCCESS or FAILURE)
 *  - error: code (the event name), message (metadata "message", <= 255
 *    bytes), source_event_id (causation and correlation), details
 */
int shmbus_publish_command(shmbus_pub_t *pub, const char *name, const char *params_json, const char *target, shmbus_uuid_t *id);
int shmbus_publish_notification(shmbus_pub_t *pub, const char *name, const char *data_json, shmbus_uuid_t *id);
int shmbus_publish_query(shmbus_pub_t *pub, const char *name, const char *params_json, const char *target, shmbus_uuid_t *id);
int shmbus_publish_response(shmbus_pub_t *pub, const shmbus_event_t *query, const char *data_json, bool success, shmbus_uuid_t *id);
int shmbus_publish_error(shmbus_pub_t *pub, const char *code, const char *message, const shmbus_uuid_t *source_event_id,
			 const char *details_json, shmbus_uuid_t *id);

/* --------------------------------------------------------------- filters */

/*
 * A filter is built in the subscriber's process and copied into shared
 * memory at subscribe time, where publishers evaluate it (all kinds but
 * custom predicates, which run in the subscriber). Composites take ownership
 * of their children, also on failure. Constructors return 0 or -errno
 * (-EINVAL, -ENOMEM, -E2BIG when a limit above is exceeded).
 */
typedef struct shmbus_filter shmbus_filter_t;
typedef bool (*shmbus_predicate_t)(const shmbus_event_t *ev, void *arg);

int shmbus_filter_types(uint32_t type_mask, shmbus_filter_t **out);
int shmbus_filter_names(const char *const *names, size_t n, shmbus_filter_t **out);
int shmbus_filter_sources(const char *const *sources, size_t n, shmbus_filter_t **out);
int shmbus_filter_targets(const char *const *targets, size_t n, shmbus_filter_t **out);
int shmbus_filter_min_priority(shmbus_priority_t min, shmbus_filter_t **out);
/* POSIX extended regex on the event name, unanchored like regexec(). */
int shmbus_filter_pattern(const char *regex, shmbus_filter_t **out);
int shmbus_filter_all(shmbus_filter_t **children, size_t n, shmbus_filter_t **out);
int shmbus_filter_any(shmbus_filter_t **children, size_t n, shmbus_filter_t **out);
int shmbus_filter_custom(shmbus_predicate_t fn, void *arg, shmbus_filter_t **out);
void shmbus_filter_free(shmbus_filter_t *f);

/* --------------------------------------------------------- subscriptions */

typedef struct shmbus_sub shmbus_sub_t;
typedef uint64_t shmbus_sub_id_t;

typedef struct {
	const char *subscriber_id;   /* the spec's subscriber id ("pid-<pid>") */
	const char *group;	     /* competing consumers: one member per event */
	bool durable;		     /* outlives its process; key: subscriber_id,
					or group when set */
	shmbus_policy_t policy;
	shmbus_wait_t wait;
	uint64_t spin_ns;	     /* adaptive spin budget (50 us) */
	const shmbus_filter_t *filter; /* NULL: every event; copied */
} shmbus_sub_opts_t;

/*
 * shmbus_subscribe - create a subscription, or attach to an existing durable
 * one (same key; its stored filter and queued events are kept, and replaced
 * by opts->filter only if that is not NULL and differs) or join a group
 * (same group name; the same rule for the group's one filter). Replacing
 * a filter takes the subscription out of routing for a moment: events
 * published meanwhile do not reach it and are not counted (passing the
 * filter it has already replaces nothing; a filter with a custom
 * predicate must be passed again, since the predicate is code: -EINVAL
 * without it). Errors: -ENOSPC (no free
 * subscription record or group member entry; a removed subscription's
 * record is free for another only once its live consumers have seen the
 * removal), -E2BIG (filter too large or nested too deep), -EINVAL, -ENAMETOOLONG, -EEXIST (a
 * durable subscription with this key exists with another policy or group).
 */
int shmbus_subscribe(shmbus_bus_t *bus, const shmbus_sub_opts_t *opts, shmbus_sub_t **out);

/* Detach this handle. A plain subscription is removed (its queued events
 * released); a durable one stays, and so does a group while it has other
 * members (a group that is not durable goes with its last). NULL-safe. */
void shmbus_sub_close(shmbus_sub_t *sub);

/* Remove the subscription for everyone (durable and group included) and
 * close the handle. */
int shmbus_unsubscribe(shmbus_sub_t *sub);

shmbus_sub_id_t shmbus_sub_id(const shmbus_sub_t *sub);

/*
 * shmbus_poll - take the next event without waiting. Returns 1 and the
 * event in *ev (read in place; valid until shmbus_release), 0 if none,
 * -ENOBUFS if SHMBUS_MAX_HELD events are held, -ESHUTDOWN if the
 * subscription was removed. High and critical events come first.
 */
int shmbus_poll(shmbus_sub_t *sub, const shmbus_event_t **ev);

/*
 * shmbus_wait - like shmbus_poll but waits up to timeout_ns (< 0: forever)
 * in the subscription's wait mode. Returns 1, 0 on timeout, or -errno
 * (-EINTR when a signal interrupted a sleep).
 */
int shmbus_wait(shmbus_sub_t *sub, int64_t timeout_ns, const shmbus_event_t **ev);

/* Give an event back: its slot may be reused once every subscription it was
 * routed to has released it. Releases reach publishers in batches: after
 * 16, at this consumer's next poll or wait that finds nothing, at close,
 * and at once while a publisher waits for space; one that does not wait
 * (a negative timeout_ns) may meanwhile find the ring full of released slots.
 * Returns 0, or -ESTALE if the event was revoked (the subscription was
 * demoted after stalling; its bytes may have changed while held), -EINVAL
 * if it is not held by this subscription. */
int shmbus_release(shmbus_sub_t *sub, const shmbus_event_t *ev);

/*
 * shmbus_poll_batch - take up to max events (max >= 1) without waiting, as
 * max calls of shmbus_poll would, for about the cost of one. Returns how
 * many were put in evs[0..n) in delivery order (0: none), each held until
 * released; -errno as shmbus_poll when the first one fails. It stops early
 * at SHMBUS_MAX_HELD held events (-ENOBUFS only when none could be taken).
 */
int shmbus_poll_batch(shmbus_sub_t *sub, const shmbus_event_t **evs, int max);

/*
 * shmbus_release_batch - give back n held events at once: their slots'
 * holds are dropped together, without the per-event deferral of
 * shmbus_release (cheapest with evs in delivery order, as
 * shmbus_poll_batch returns them). Returns 0, or the first error of
 * shmbus_release (the other events are still released).
 */
int shmbus_release_batch(shmbus_sub_t *sub, const shmbus_event_t *const *evs, int n);

/* Whether held event ev was handed to this subscription again because
 * the consumer it was first delivered to died holding it. */
bool shmbus_redelivered(const shmbus_sub_t *sub, const shmbus_event_t *ev);

/* Whether held event ev was served from the log: a durable subscription
 * that was passed over (lag policy, demotion after a stall, a full queue)
 * gets the events it lost from the log, in sequence order, before its
 * queue (see "Catching up from the log" in docs/ARCHITECTURE.md). Such an
 * event lies in the log's read-only mapping and stays valid until
 * shmbus_close; shmbus_release accepts it and does nothing else. */
bool shmbus_from_log(const shmbus_sub_t *sub, const shmbus_event_t *ev);

/* Events this subscription missed since the last call; the counter is
 * reset. A plain or group subscription misses what it is passed over for
 * (lag policy or demotion); a durable one misses only what it could not
 * catch up from the log (retention removed it, no recorder ran, or the
 * recorder missed it), counted once its catch-up has closed the gap. */
uint64_t shmbus_take_missed(shmbus_sub_t *sub);

/* Pause (publishers skip the subscription; nothing is queued while paused),
 * resume, and remove by id, from any process attached to the bus. A
 * removed subscription's consumers learn it at their next poll or wait
 * (-ESHUTDOWN); its record is not used for another subscription before
 * they have, or have died. */
int shmbus_pause(shmbus_bus_t *bus, shmbus_sub_id_t id);
int shmbus_resume(shmbus_bus_t *bus, shmbus_sub_id_t id);
int shmbus_unsubscribe_id(shmbus_bus_t *bus, shmbus_sub_id_t id);

/* ------------------------------------------------------- reading events */

uint64_t shmbus_event_seq(const shmbus_event_t *ev);
/* Bytes of the whole event (header, strings, payload): what to copy to
 * keep it beyond shmbus_release. */
size_t shmbus_event_size(const shmbus_event_t *ev);
const shmbus_uuid_t *shmbus_event_id(const shmbus_event_t *ev);
const shmbus_uuid_t *shmbus_event_correlation_id(const shmbus_event_t *ev);
const shmbus_uuid_t *shmbus_event_causation_id(const shmbus_event_t *ev); /* nil = none */
shmbus_type_t shmbus_event_type(const shmbus_event_t *ev);
const char *shmbus_event_name(const shmbus_event_t *ev);
const char *shmbus_event_source(const shmbus_event_t *ev);
const char *shmbus_event_target(const shmbus_event_t *ev); /* "" = none */
shmbus_priority_t shmbus_event_priority(const shmbus_event_t *ev);
uint64_t shmbus_event_created_ns(const shmbus_event_t *ev);
uint64_t shmbus_event_published_ns(const shmbus_event_t *ev);
uint64_t shmbus_event_expires_ns(const shmbus_event_t *ev); /* 0 = never */
shmbus_status_t shmbus_event_status(const shmbus_event_t *ev);
unsigned shmbus_event_retry_count(const shmbus_event_t *ev);
unsigned shmbus_event_max_retries(const shmbus_event_t *ev);
unsigned shmbus_event_schema_version(const shmbus_event_t *ev);
shmbus_content_t shmbus_event_content_type(const shmbus_event_t *ev);
uint16_t shmbus_event_flags(const shmbus_event_t *ev);
const char *shmbus_event_conversation_id(const shmbus_event_t *ev);
const char *shmbus_event_user_id(const shmbus_event_t *ev);
const char *shmbus_event_intent(const shmbus_event_t *ev);
const char *shmbus_event_decision_id(const shmbus_event_t *ev);
bool shmbus_event_confidence(const shmbus_event_t *ev, float *out);
size_t shmbus_event_metadata_count(const shmbus_event_t *ev);
int shmbus_event_metadata(const shmbus_event_t *ev, size_t i, const char **key, const char **value);
/* Value of metadata `key`, or NULL. */
const char *shmbus_event_meta_get(const shmbus_event_t *ev, const char *key);
const void *shmbus_event_payload(const shmbus_event_t *ev, size_t *len);

/*
 * shmbus_event_check - validate bytes that claim to be an event (from a
 * file, a socket, a copied segment): size, format, enums, string and
 * payload bounds. Returns 0 or -EBADMSG (reason in shmbus_errmsg), -EINVAL
 * for NULL bytes.
 */
int shmbus_event_check(const void *bytes, size_t len);

/* ----------------------------------------------------- listing, metrics */

typedef struct {
	shmbus_sub_id_t id;
	char subscriber_id[SHMBUS_ID_MAX + 1];
	char group[SHMBUS_ID_MAX + 1];
	bool durable, paused, demoted;
	shmbus_policy_t policy;
	uint32_t consumers;	 /* attached consumers */
	uint64_t queue_depth;	 /* queued, not yet delivered */
	uint64_t held;		 /* delivered, not yet released */
	uint64_t routed;	 /* events routed to it */
	uint64_t delivered;
	uint64_t filtered;	 /* dropped by a custom predicate */
	uint64_t lagged;	 /* missed: passed over or dropped */
	uint64_t demotions;
	uint64_t redelivered;
	uint64_t revoked;
	/* dispatchers serving it (see shmbus_dispatcher_add) */
	uint32_t processing;	 /* handler runs started and not finished: running, or queued for a worker */
	uint32_t retrying;	 /* events waiting for a retry */
	uint64_t completed;	 /* handler runs that succeeded */
	uint64_t failed;	 /* handler runs that failed */
	uint64_t retried;	 /* handler runs that were retries */
	uint64_t dead_lettered;	 /* sent to the dead-letter queue */
	uint64_t expired;	 /* of which: expired before a run succeeded (unrun, or failed
				    and waiting for a retry) */
	uint64_t late_responses; /* a requester's replies that came too late */
} shmbus_sub_info_t;

/*
 * shmbus_list_subscriptions - fill up to cap entries with the bus's
 * subscriptions (those of `subscriber_id` only, unless NULL). Returns the
 * total number that matched (which may exceed cap).
 */
int shmbus_list_subscriptions(shmbus_bus_t *bus, const char *subscriber_id, shmbus_sub_info_t *out, size_t cap);

typedef struct {
	uint32_t index;
	uint32_t pid;
	bool alive;
	uint64_t attach_ns;
	char label[SHMBUS_ID_MAX + 1];
} shmbus_member_info_t;

/* Members (attached processes), alive or dead. Returns the count (may exceed cap). */
int shmbus_list_members(shmbus_bus_t *bus, shmbus_member_info_t *out, size_t cap);

typedef struct {
	uint64_t published;	 /* events committed */
	uint64_t publish_bytes;	 /* payload bytes committed */
	uint64_t routed;	 /* deliveries queued (sum over subscriptions) */
	uint64_t delivered;
	uint64_t filtered;
	uint64_t lagged;
	uint64_t block_waits;	 /* publishes that had to wait for space */
	uint64_t block_timeouts; /* publishes that gave up */
	uint64_t demotions;
	uint64_t reclaims;	 /* dead members reclaimed */
	uint64_t aborted_claims;
	uint64_t recovered_events;
	uint64_t redelivered;
	uint64_t ring_slots, ring_used; /* slots, and slots not reusable now */
	uint64_t processing, retrying;	 /* dispatcher gauges, summed */
	uint64_t completed, failed, retried, dead_lettered, expired, late_responses;
	uint32_t members, subscriptions;
	uint64_t next_seq; /* the claim position: sequences below it are taken,
			      or leased to a publisher that may still use one
			      for its next event (for a few ms at most) */
} shmbus_metrics_t;

/* The spec's get_metrics: bus-wide counters summed over publishers and
 * subscriptions, read live from the segment. */
int shmbus_get_metrics(shmbus_bus_t *bus, shmbus_metrics_t *out);

/* --------------------------------------------------- bus directory */

typedef struct {
	char name[SHMBUS_NAME_MAX + 1];
	uint64_t size;
	uint32_t members, alive;
	bool stale;  /* no live member */
	bool valid;  /* passed validation */
} shmbus_bus_entry_t;

/* Buses in /dev/shm. Returns the count (may exceed cap). */
int shmbus_list_buses(shmbus_bus_entry_t *out, size_t cap);

/* Remove every stale bus (no live member). Returns how many. */
int shmbus_gc(void);

/* ------------------------------------------------------------ dispatcher */

/*
 * The dispatcher runs handlers for any number of subscriptions (on one or
 * several buses) from one thread. It sleeps in the kernel until an event,
 * a timer (retry back-off, expiry, request timeout) or a registered fd
 * needs it, so an idle dispatcher costs no CPU:
 *  - io_uring backend: IORING_OP_FUTEX_WAIT on each subscription's wake
 *    word, IORING_OP_TIMEOUT, IORING_OP_POLL_ADD for fds;
 *  - fallback backend (io_uring missing, forbidden by seccomp or
 *    kernel.io_uring_disabled, lacking futex operations, or forced off by
 *    opts.no_io_uring or the environment variable SHMBUS_NO_IO_URING=1):
 *    futex_waitv(2) in a waiter thread, timerfd and epoll.
 * The choice is made at open; callers see no difference.
 *
 * Per subscription: a handler, a concurrency limit (handlers running at
 * once; above 1 they run on worker threads), retries with exponential
 * back-off and jitter, and dead letters (see shmbus_dlq_list) for events
 * whose retries ran out or that expired before they were handled. Events
 * are released in delivery order: one that completes early waits for those
 * delivered before it, so what a subscription has released is always a
 * contiguous prefix (a crash redelivers everything after it to a durable
 * subscription or a group).
 *
 * Threads: stop() may be called from any thread and from a signal handler.
 * Every other call is made from the thread that runs the dispatcher, or
 * while it does not run, and never from inside a handler (such calls fail
 * with -EBUSY; close is ignored there). A subscription removed by another
 * process stops being served (what it held is given up uncounted); call
 * shmbus_dispatcher_remove for it as usual.
 */
typedef struct shmbus_dispatcher shmbus_dispatcher_t;

/* 0: handled. Negative: failed (retried, then dead-lettered). */
typedef int (*shmbus_handler_t)(const shmbus_event_t *ev, void *arg);

typedef enum {
	SHMBUS_BACKEND_IO_URING = 1,
	SHMBUS_BACKEND_FALLBACK = 2,
} shmbus_backend_t;

typedef struct {
	uint32_t workers;  /* handler threads; 0: handlers run on the thread
			      that runs the dispatcher (at most 64) */
	bool no_io_uring;  /* use the fallback backend */
} shmbus_dispatcher_opts_t;

/* Errors: -EINVAL (too many workers), -ENOMEM, -EMFILE, or what the
 * fallback's epoll/timerfd/eventfd setup returned. */
int shmbus_dispatcher_open(const shmbus_dispatcher_opts_t *opts, shmbus_dispatcher_t **out);

/* Waits for running handlers, dead-letters events that were waiting for a
 * retry (reason SHMBUS_DEAD_ABANDONED), releases the rest, and unbinds the
 * requesters bound to it (their pending requests end with -ECANCELED).
 * NULL-safe. The subscriptions themselves stay open: they are the caller's. */
void shmbus_dispatcher_close(shmbus_dispatcher_t *d);

shmbus_backend_t shmbus_dispatcher_backend(const shmbus_dispatcher_t *d);
const char *shmbus_backend_name(shmbus_backend_t b); /* "io_uring", "fallback" */

/* An fd that is readable while the dispatcher has work: add it to an
 * epoll/libuv/asyncio loop and call shmbus_dispatcher_run_once(d, 0) when
 * it fires. Owned by the dispatcher. A dispatcher whose fd was never asked
 * for skips the work of keeping it true (a syscall or two per turn). */
int shmbus_dispatcher_fd(shmbus_dispatcher_t *d);

#define SHMBUS_NO_RETRY (-1)

/* Told on the dispatcher's thread after the dispatcher sent an event to the
 * dead-letter queue; reason is a shmbus_dead_reason_t. */
typedef void (*shmbus_dead_fn_t)(const shmbus_event_t *ev, int reason, void *arg);

typedef struct {
	shmbus_handler_t handler; /* required */
	void *arg;
	int32_t concurrency;	  /* handlers running at once (1); above 1
				     needs workers; at most SHMBUS_MAX_HELD */
	int32_t max_retries;	  /* retries of an event whose own max_retries
				     is 0: 0 means 3, SHMBUS_NO_RETRY none,
				     at most 255 */
	uint64_t retry_base_ns;	  /* first back-off (100 ms); doubles per retry */
	uint64_t retry_max_ns;	  /* back-off ceiling (0: 30 s, or retry_base_ns if larger;
				     below retry_base_ns: -EINVAL) */
	shmbus_dead_fn_t on_dead; /* NULL: not told */
} shmbus_handler_opts_t;

/*
 * shmbus_dispatcher_add - serve subscription sub with a handler. The
 * dispatcher takes events from sub from now on; the caller must not poll
 * it. Retry n of an event (n = 1, 2, ...) runs after a back-off drawn
 * uniformly from [b/2, b] with b = min(retry_base_ns * 2^(n-1),
 * retry_max_ns), so intervals never shrink and peers do not retry in step.
 * Errors: -EINVAL (NULL handler, concurrency < 1 or > SHMBUS_MAX_HELD, or
 * > 1 without workers, max_retries out of range), -EEXIST (already added),
 * -ENOMEM.
 */
int shmbus_dispatcher_add(shmbus_dispatcher_t *d, shmbus_sub_t *sub, const shmbus_handler_opts_t *opts);

/* Stop serving sub: waits for its running handlers, releases what they
 * completed and dead-letters what waited for a retry (reason
 * SHMBUS_DEAD_ABANDONED). -ENOENT if not added. Events the caller still
 * holds from its own polls count against the subscription's held limit
 * (SHMBUS_MAX_HELD): release them before adding it. */
int shmbus_dispatcher_remove(shmbus_dispatcher_t *d, shmbus_sub_t *sub);

/* Called on the dispatcher thread with the poll(2) bits that are ready
 * (POLLIN, POLLOUT, POLLERR, POLLHUP). Remove an fd before closing it: a
 * close while registered is reported as POLLNVAL (once, then the fd is
 * unregistered) only at the next once-a-second sweep, and only if the
 * number was not reused by then; meanwhile the io_uring backend's poll
 * keeps the closed file open and may still report its readiness. */
typedef void (*shmbus_fd_cb_t)(int fd, uint32_t revents, void *arg);

/* Watch fd for `events` (POLLIN and/or POLLOUT), level-triggered, until
 * removed. Errors: -EBADF (not an open fd), -EEXIST, -EINVAL, -ENOMEM. */
int shmbus_dispatcher_add_fd(shmbus_dispatcher_t *d, int fd, uint32_t events, shmbus_fd_cb_t cb, void *arg);
int shmbus_dispatcher_remove_fd(shmbus_dispatcher_t *d, int fd); /* -ENOENT */

/*
 * shmbus_dispatcher_run_once - do what is ready (handlers, completions,
 * due retries, fd callbacks), waiting up to timeout_ns (< 0: until
 * something happens; 0: never wait) if nothing is. Inline handlers run in
 * the call, up to 512 in one turn: as long as they take. Returns how many
 * handler runs completed, or -errno (-EINTR when stopped or interrupted).
 */
int shmbus_dispatcher_run_once(shmbus_dispatcher_t *d, int64_t timeout_ns);

/* Run until shmbus_dispatcher_stop. Returns 0, or -errno on a failure of
 * the backend. */
int shmbus_dispatcher_run(shmbus_dispatcher_t *d);

/* Make run() return (and a waiting run_once return -EINTR) soon. Safe from
 * any thread and from a signal handler. */
void shmbus_dispatcher_stop(shmbus_dispatcher_t *d);

/* In a handler: which run of this event this is (1 = first delivery). The
 * event a retry sees is a private copy whose retry_count and status
 * (SHMBUS_STATUS_RETRYING) say so. 0 outside a handler. */
unsigned shmbus_handler_attempt(void);

/* --------------------------------------------------- request / response */

/*
 * A requester sends queries (or commands) and waits for the response that
 * carries their correlation id. Responses find it through their target:
 * the requester's source, which must be unique on the bus (the default,
 * "pid-<pid>.req<n>", is). A response that arrives after its request timed
 * out is released and counted (shmbus_requester_late). The answering side
 * replies with shmbus_publish_response.
 */
typedef struct shmbus_requester shmbus_requester_t;

int shmbus_requester_open(shmbus_bus_t *bus, const shmbus_pub_opts_t *opts, shmbus_requester_t **out);
void shmbus_requester_close(shmbus_requester_t *r);

/*
 * shmbus_request - publish msg (its correlation id is set to the event's
 * own id unless msg has one) and wait up to timeout_ns for the response.
 * On success *response is a private copy (free with shmbus_event_free).
 * Errors: -ETIMEDOUT, -EBUSY (the requester serves a dispatcher), what
 * shmbus_publish returns.
 */
int shmbus_request(shmbus_requester_t *r, const shmbus_msg_t *msg, int64_t timeout_ns, shmbus_event_t **response);

/* status 0 and the response, or -ETIMEDOUT and NULL, or -ECANCELED and NULL
 * when the requester or its dispatcher closes first. Runs on the dispatcher
 * thread; the response is valid during the call. The requester may be
 * closed from inside the callback (the close completes after it returns). */
typedef void (*shmbus_response_cb_t)(const shmbus_event_t *response, int status, void *arg);

/*
 * shmbus_request_async - publish msg and call cb once, from dispatcher d,
 * with the response or with -ETIMEDOUT. The first call binds the requester
 * to d (its replies are dispatched there) for the rest of its life. The
 * request's id is stored in *id if not NULL.
 */
int shmbus_request_async(shmbus_requester_t *r, shmbus_dispatcher_t *d, const shmbus_msg_t *msg, int64_t timeout_ns,
			 shmbus_response_cb_t cb, void *arg, shmbus_uuid_t *id);

/* Responses that came after their request gave up (or matched none). */
uint64_t shmbus_requester_late(const shmbus_requester_t *r);

/* A private copy of an event (for keeping it beyond shmbus_release). */
int shmbus_event_copy(const shmbus_event_t *ev, shmbus_event_t **out);
void shmbus_event_free(shmbus_event_t *ev);

/* ---- inspection (shm-dump) ---- */
/*
 * Read-only inspection of a bus segment, for shm-dump and post-mortems.
 *
 * The inspector reads a private copy of the bytes once, at open (read(),
 * never mmap, so a file that shrinks cannot fault us), never attaches as a
 * member and never writes. Nothing in the copy is trusted: every offset,
 * index and length is checked before use, whatever the bytes, and what does
 * not hold is recorded as a problem (one sentence each) rather than acted
 * upon. A snapshot of a busy live bus may show transient inconsistencies.
 * Every pointer and string handed out stays valid until
 * shmbus_inspect_close.
 */
#pragma GCC visibility push(default)

typedef struct shmbus_inspect shmbus_inspect_t;

/*
 * shmbus_inspect_open - copy and check a segment. `name_or_path` is a bus
 * name (the object /dev/shm/shmbus.NAME, member liveness is then asked of
 * the kernel) or, when it contains a '/' or names no valid bus, a file
 * holding a copy of a segment (liveness is then unknown).
 * Returns 0 and an inspector whenever the bytes could be read, even if they
 * are garbage (see shmbus_inspect_error and the problem list), or -ENOENT,
 * -EACCES, -EFBIG (larger than the address space allows) or -ENOMEM.
 */
int shmbus_inspect_open(const char *name_or_path, shmbus_inspect_t **out);
void shmbus_inspect_close(shmbus_inspect_t *in);

/* Why the header cannot be trusted (nothing else is decoded then), or NULL
 * when it can. */
const char *shmbus_inspect_error(const shmbus_inspect_t *in);

/* Invariant violations and damage found, in the order found. The error
 * above, if any, is the first problem. */
size_t shmbus_inspect_problem_count(const shmbus_inspect_t *in);
const char *shmbus_inspect_problem(const shmbus_inspect_t *in, size_t i); /* NULL past the end */

typedef enum {
	SHMBUS_LIVENESS_UNKNOWN = 0, /* a copied file: nobody to ask */
	SHMBUS_LIVENESS_ALIVE = 1,
	SHMBUS_LIVENESS_DEAD = 2,
} shmbus_liveness_t;

typedef struct {
	char name[SHMBUS_NAME_MAX + 1];
	char path[256];		 /* what was read */
	bool live;		 /* read from /dev/shm, liveness known */
	uint64_t file_size;	 /* bytes read */
	uint64_t magic;
	uint32_t layout_version;
	uint32_t state;		 /* 0 initialising, 1 ready */
	uint64_t layout_hash;
	uint64_t total_size;	 /* as the header states it */
	uint64_t incarnation;
	uint64_t created_ns;
	shmbus_config_t config;
	uint32_t queue_capacity; /* per priority class */
	uint32_t flags;
	uint64_t members_off, pubs_off, subs_off, cells_off, slot_ctl_off, data_off;
	uint64_t claim_pos;	 /* next free slot position */
	uint64_t route_epoch;
	uint32_t space_waiters;
	uint64_t reclaims, aborted_claims, demotions, recovered_events;
} shmbus_inspect_header_t;

/* 0, or -EBADMSG when the header cannot be trusted. */
int shmbus_inspect_header(const shmbus_inspect_t *in, shmbus_inspect_header_t *out);
/* 1 when every publisher of the bus routes with a full fence (a member
 * that cannot issue membarrier(2) attached once; docs/ARCHITECTURE.md,
 * "The routing fence"), 0 when publishers may route with the light one,
 * -EBADMSG when the header cannot be trusted. */
int shmbus_inspect_route_fence_full(const shmbus_inspect_t *in);

typedef struct {
	uint32_t index;
	uint32_t state; /* 1 active, 2 being reclaimed */
	uint32_t pid;
	uint64_t generation;
	uint64_t attach_ns;
	char label[SHMBUS_ID_MAX + 1];
	shmbus_liveness_t liveness;
} shmbus_inspect_member_t;

/* Member entries in use (free ones are skipped); i in [0, count). 0 or -ERANGE. */
size_t shmbus_inspect_member_count(const shmbus_inspect_t *in);
int shmbus_inspect_member(const shmbus_inspect_t *in, size_t i, shmbus_inspect_member_t *out);

typedef struct {
	uint32_t index;
	uint32_t member;
	uint64_t member_gen;
	char source[SHMBUS_ID_MAX + 1];
	uint64_t routing; /* odd while it routes an event */
	uint64_t published, publish_bytes, block_waits, block_timeouts;
	uint64_t lease_taken; /* positions of its claim leases others took away */
} shmbus_inspect_pub_t;

/* Publisher entries in use. 0 or -ERANGE. */
size_t shmbus_inspect_pub_count(const shmbus_inspect_t *in);
int shmbus_inspect_pub(const shmbus_inspect_t *in, size_t i, shmbus_inspect_pub_t *out);

typedef struct {
	uint32_t index;
	uint32_t member;
	uint64_t member_gen;
	uint32_t pid;
	uint64_t delivered;
	bool detached;			/* its subscription was removed; it still drops what it took */
	uint32_t held_count;		/* entries used in held[] */
	uint64_t held[SHMBUS_MAX_HELD]; /* raw descriptors: SHMBUS_HELD_* below */
} shmbus_inspect_consumer_t;

/* The parts of a held descriptor (shmbus_inspect_consumer_t.held): the
 * event's sequence, and what its consumer is doing with it. With none of
 * the state bits set, the event was handed to the user. */
#define SHMBUS_HELD_SEQ_MASK ((1ull << 58) - 1)
#define SHMBUS_HELD_REVOKED (1ull << 58)   /* taken back from a stalled consumer; its hold being dropped */
#define SHMBUS_HELD_UNSEEN (1ull << 59)    /* taken in a run, left for a later poll */
#define SHMBUS_HELD_RELEASING (1ull << 60) /* released; its hold not dropped yet (batched) */
#define SHMBUS_HELD_DROPPING (SHMBUS_HELD_UNSEEN | SHMBUS_HELD_RELEASING) /* its hold being dropped */
#define SHMBUS_HELD_TOMBSTONE (1ull << 62) /* a dead producer's cell: nothing to read */

typedef struct {
	uint32_t index;
	uint32_t state; /* 1 active, 2 being set up, 0 removed (only its detached consumers are shown) */
	uint32_t flags; /* raw SEG_SUB_* bits */
	shmbus_sub_id_t id;
	uint32_t owner; /* member index, or 0xFFFFFFFF for durable/group */
	uint64_t created_ns;
	char subscriber_id[SHMBUS_ID_MAX + 1];
	char group[SHMBUS_ID_MAX + 1];
	bool durable, paused, demoted, grouped;
	shmbus_policy_t policy;
	char filter[1024];	 /* decoded, e.g. all(types(command),name~"^a") */
	uint64_t head[3], tail[3]; /* per queue: 0 urgent, 1 normal, 2 redelivery */
	uint64_t queue_depth;	 /* sum of tail - head over the queues */
	uint64_t held;		 /* held entries over all consumers, revoked ones not counted */
	uint64_t routed;	 /* descriptors queued by publishers to this subscription (tails 0
				    and 1 since the record was taken: shmbus_get_metrics's) */
	uint64_t delivered;	 /* retired total plus every active consumer's */
	uint64_t filtered, missed, dropped_full;
	uint64_t demotions, redelivered, revoked;
	bool catchup;		 /* durable: catches up from the log */
	uint64_t gap_lo, gap_hi; /* pending gap [gap_lo, gap_hi); gap_lo ~0: none */
	int64_t gap_owed;	 /* dropped, not yet served from the log */
	uint64_t gap_dropped, gap_served; /* totals */
	uint32_t consumer_count;
	shmbus_inspect_consumer_t consumers[SHMBUS_GROUP_MEMBERS_MAX];
} shmbus_inspect_sub_t;

/* Subscription records in use. 0 or -ERANGE. */
size_t shmbus_inspect_sub_count(const shmbus_inspect_t *in);
int shmbus_inspect_sub(const shmbus_inspect_t *in, size_t i, shmbus_inspect_sub_t *out);

typedef struct {
	uint64_t slots;
	uint64_t free, claimed, committed, aborted; /* slot_ctl states */
	uint64_t leased; /* of those: leased to a publisher, or being taken from one */
	uint64_t referenced;			   /* slots with refs > 0 */
	uint64_t refs;				   /* sum of refs */
	uint64_t claim_pos;
	uint64_t events; /* committed events still readable in the ring */
} shmbus_inspect_ring_t;

/* 0, or -EBADMSG when the slot control region is unreadable. */
int shmbus_inspect_ring(const shmbus_inspect_t *in, shmbus_inspect_ring_t *out);

/* One decoded event; the strings point into the inspector's copy (an
 * empty one to a constant ""). */
typedef struct {
	uint64_t seq;
	uint32_t slots; /* ring slots it spans */
	uint32_t refs;	/* routing references not yet released */
	shmbus_uuid_t id, correlation_id, causation_id;
	shmbus_type_t type;
	shmbus_priority_t priority;
	shmbus_status_t status;
	uint64_t created_ns, published_ns, expires_ns;
	unsigned schema_version, retry_count, max_retries;
	shmbus_content_t content_type;
	uint16_t flags;
	bool has_confidence;
	float confidence;
	const char *name, *source, *target, *conversation_id, *user_id, *intent, *decision_id;
	size_t metadata_count;
	shmbus_meta_t metadata[SHMBUS_META_MAX];
	const void *payload;
	size_t payload_len;
} shmbus_inspect_event_t;

/* Committed events that passed the event check, oldest first. 0 or -ERANGE. */
size_t shmbus_inspect_event_count(const shmbus_inspect_t *in);
int shmbus_inspect_event(const shmbus_inspect_t *in, size_t i, shmbus_inspect_event_t *out);

#pragma GCC visibility pop
/* ---- end inspection ---- */

/* ------------------------------------------ durable log, replay, dead letters */
/*
 * The log: checksummed, segmented, append-only files per bus in
 * <root>/<bus>/ (format in docs/FORMAT.md), written by one recorder per
 * bus and read in place by everyone. <root> is the bus's configured log
 * directory (shmbus_log_configure, `shmbus create --log-dir`), else
 * the $SHMBUS_LOG_DIR of the process that looks (each reads its own: set it
 * alike in every process of the bus, or configure the bus), else
 * SHMBUS_LOG_ROOT_DEFAULT.
 */
#define SHMBUS_LOG_ROOT_DEFAULT "/var/tmp/shmbus"
#define SHMBUS_FLAG_DIRECTED 0x0100u /* library: delivered to one subscription (replay, dead-letter retry) */

typedef enum {
	SHMBUS_SYNC_DEFAULT = 0, /* the bus's setting; batch if none */
	SHMBUS_SYNC_NONE = 1,	 /* page cache only: survives a process crash, not a power cut */
	SHMBUS_SYNC_BATCH = 2,	 /* fdatasync every batch_ms, asynchronously */
	SHMBUS_SYNC_ALWAYS = 3,	 /* fdatasync before an event counts as durable */
} shmbus_sync_t;

typedef struct {
	const char *dir;     /* log root; NULL keeps the current one */
	shmbus_sync_t sync;  /* default sync level of recorders */
} shmbus_log_config_t;

/* Set the bus's log root (once: -EEXIST if another one is set) and default
 * sync level. The directory need not exist yet; it must be absolute, and
 * -ENOTDIR if it, or a directory above it, is a file. */
int shmbus_log_configure(shmbus_bus_t *bus, const shmbus_log_config_t *cfg);
/* The bus's log directory, <root>/<bus>. Returns its length or -ENAMETOOLONG. */
int shmbus_log_dir(const shmbus_bus_t *bus, char *out, size_t cap);
/* The sync level a recorder of the bus uses unless it asks for another:
 * the one shmbus_log_configure set, else SHMBUS_SYNC_BATCH. */
shmbus_sync_t shmbus_log_sync(const shmbus_bus_t *bus);
/* Remove <root>/<name> and everything in it (root NULL: $SHMBUS_LOG_DIR or
 * the default root). 0, or -ENOENT if there was nothing. */
int shmbus_log_remove(const char *name, const char *root);
/* Whether every segment and the dead-letter log in the bus's log directory
 * are this bus's (this incarnation's): 1, 0 if one is another's (a log kept by `shmbus rm
 * --keep-log` before the bus was made again, which its recorder leaves
 * alone), -ENOENT if there is no directory, or -errno. */
int shmbus_log_owned(shmbus_bus_t *bus);

typedef struct {
	const char *dir;	/* log root for this recorder; NULL: the bus's. Readers look
				   under the bus's root only: set it too (shmbus_log_configure),
				   as `shmbus record --dir` does */
	shmbus_sync_t sync;	/* 0: the bus's */
	uint32_t batch_ms;	/* SYNC_BATCH interval (10 ms) */
	uint64_t segment_bytes; /* roll a segment at this size (64 MiB) */
	uint32_t index_positions; /* positions per segment index (1 Mi) */
	uint64_t retain_bytes;	/* delete the oldest segments beyond (0: keep) */
	uint64_t retain_ns;	/* delete segments whose last event is older (0: keep) */
	bool retain_force;	/* retention deletes even segments a durable
				   subscription still needs to catch up (it
				   then counts what it cannot get as missed);
				   without it they are kept */
	bool no_wait;		/* -EBUSY at once when another recorder runs */
} shmbus_record_opts_t;

typedef struct shmbus_recorder shmbus_recorder_t;

/*
 * shmbus_recorder_open - become the bus's recorder: a durable subscription
 * ("shmbus.recorder") that matches everything. One recorder per bus: this
 * waits until the current one dies or closes (unless no_wait; -EINTR if a
 * signal handler installed without SA_RESTART runs meanwhile). It opens or
 * creates the log, cuts a torn tail, and resumes exactly after the last
 * complete record. Errors name the file and what is wrong with it.
 */
int shmbus_recorder_open(shmbus_bus_t *bus, const shmbus_record_opts_t *opts, shmbus_recorder_t **out);
/*
 * shmbus_recorder_run - record until timeout_ns passes (< 0: until
 * shmbus_recorder_stop) and return how many events were written, or -errno.
 * Events are written in sequence order, each once.
 */
int64_t shmbus_recorder_run(shmbus_recorder_t *rec, int64_t timeout_ns);
/* Make run return soon; safe from a signal handler or another thread. */
void shmbus_recorder_stop(shmbus_recorder_t *rec);
/* Sync what was written, give up the recorder role. NULL-safe. */
void shmbus_recorder_close(shmbus_recorder_t *rec);

typedef struct {
	uint64_t recorded;	/* events written by this recorder */
	uint64_t bytes;		/* record bytes written */
	uint64_t missed;	/* events gone from the ring before they were recorded */
	uint64_t syncs;		/* data syncs completed */
	uint64_t next_seq;	/* position after the last recorded event */
	uint64_t durable_seq;	/* positions below are durable */
	uint32_t segments;	/* segments created */
	bool io_uring;		/* syncs go through io_uring */
} shmbus_recorder_stats_t;
void shmbus_recorder_stats(const shmbus_recorder_t *rec, shmbus_recorder_stats_t *out);

/* Wait until the event at seq is durable (the recorder wrote it and synced
 * it at its sync level). 0, -ETIMEDOUT, -EINTR. */
int shmbus_wait_durable(shmbus_bus_t *bus, uint64_t seq, int64_t timeout_ns);

/*
 * Reading the log. Events are returned in place (in a read-only mapping of
 * the log); they stay valid until shmbus_close and are never released.
 * Only records whose checksum and event check pass are returned; damage is
 * reported through shmbus_errmsg and shmbus_log_damage.
 */
/* The event with this id: -ENOENT when the log does not hold it (never
 * recorded, or removed by retention), -EBADMSG when its record is damaged
 * (where the index says it is; with the index lost too, -ENOENT). */
int shmbus_get_event(shmbus_bus_t *bus, const shmbus_uuid_t *id, const shmbus_event_t **out);

typedef struct {
	uint32_t types;	   /* SHMBUS_TYPE_BIT mask; 0: any */
	const char *name;  /* NULL: any */
	const char *source;
	const char *target;
	uint64_t since_ns; /* published at or after (0: the start) */
	uint64_t until_ns; /* published at or before (0: no end) */
	uint64_t from_seq; /* sequence at or after */
	size_t limit;	   /* at most this many (0: no limit) */
} shmbus_query_t;

/* Call fn for every matching event in sequence order until it returns
 * false. Returns the number of events passed to fn, or -errno. */
typedef bool (*shmbus_event_fn)(const shmbus_event_t *ev, void *arg);
int64_t shmbus_log_scan(shmbus_bus_t *bus, const shmbus_query_t *q, shmbus_event_fn fn, void *arg);
/* The spec's get_events: up to cap matching events into out. Returns how
 * many matched (up to q->limit), which may exceed cap. */
int64_t shmbus_get_events(shmbus_bus_t *bus, const shmbus_query_t *q, const shmbus_event_t **out, size_t cap);

/* Damaged records met since the bus was opened, as one sentence each
 * naming the file and offset; i in [0, count). NULL past the end. */
size_t shmbus_log_damage_count(shmbus_bus_t *bus);
const char *shmbus_log_damage(shmbus_bus_t *bus, size_t i);

/*
 * Replay: the matching events from the log, in sequence order, either
 * delivered to subscription `to` only (flagged SHMBUS_FLAG_REPLAYED and
 * SHMBUS_FLAG_DIRECTED, ids and created times kept, new sequences and
 * publish times; `to`'s own filter is not applied: the query chooses) or
 * republished on the bus by pub as new events (flagged
 * SHMBUS_FLAG_REPLAYED, causation and correlation kept).
 * Returns the number of events replayed, or -errno.
 */
int64_t shmbus_replay_to(shmbus_bus_t *bus, const shmbus_query_t *q, shmbus_sub_id_t to);
int64_t shmbus_replay_republish(shmbus_pub_t *pub, const shmbus_query_t *q);

/* Subscription id of a live subscription by its subscriber id (or group),
 * for tools: -ENOENT if none. */
int shmbus_find_subscription(shmbus_bus_t *bus, const char *subscriber_or_group, shmbus_sub_id_t *out);

/*
 * Dead letters: an append-only log per bus (<root>/<bus>/dead.log) that
 * every bus has, configured or not. Entries survive process restarts.
 */
typedef enum {
	SHMBUS_DEAD_FAILED = 1,        /* handler failed after its retries */
	SHMBUS_DEAD_EXPIRED = 2,       /* expired before it was handled */
	SHMBUS_DEAD_NO_SUBSCRIBER = 3, /* command/query whose target nobody subscribes to */
	SHMBUS_DEAD_ABANDONED = 4,     /* waited for a retry when its dispatcher stopped serving it */
} shmbus_dead_reason_t;

typedef struct {
	shmbus_uuid_t event_id;
	shmbus_sub_id_t sub;                     /* subscription it was for, 0 = none */
	char subscriber_id[SHMBUS_ID_MAX + 1];
	char group[SHMBUS_ID_MAX + 1];
	shmbus_dead_reason_t reason;
	uint32_t attempts;                       /* handler runs */
	int32_t last_error;                      /* handler's return value or -errno */
	uint64_t dead_ns;                        /* CLOCK_REALTIME when dead-lettered */
	const shmbus_event_t *event;             /* in place; valid until shmbus_close */
} shmbus_dead_letter_t;

/* Live letters (not cleared/retried), oldest first; returns total count, may exceed cap. */
int shmbus_dlq_list(shmbus_bus_t *bus, shmbus_dead_letter_t *out, size_t cap);
/* Re-deliver the letter's event to its original subscription (found by id,
 * else by its subscriber id or group) and tombstone the letter. -ENOENT if
 * no live letter, -ESRCH if the subscription no longer exists. */
int shmbus_dlq_retry(shmbus_bus_t *bus, const shmbus_uuid_t *event_id);
/* Tombstone the live letter of event_id. -ENOENT if none. */
int shmbus_dlq_clear(shmbus_bus_t *bus, const shmbus_uuid_t *event_id);

/*
 * Inspecting log files (shm-dump): every record of one file, its index
 * entries and every damaged spot, never trusting a byte. fn is called for
 * each item; returns 0, or -errno when the file cannot be read at all.
 */
typedef enum {
	SHMBUS_LOGI_HEADER = 1,	 /* text: the header, described */
	SHMBUS_LOGI_RECORD = 2,	 /* a valid record: kind, seq, off, event (may be NULL) */
	SHMBUS_LOGI_DAMAGE = 3,	 /* text: what is wrong at off */
	SHMBUS_LOGI_INDEX = 4,	 /* text: index summary */
} shmbus_logi_kind_t;
typedef struct {
	shmbus_logi_kind_t kind;
	uint64_t off;
	uint64_t seq;
	uint32_t record_kind;	 /* 1 event, 2 dead letter, 3 tombstone */
	const shmbus_event_t *event;
	const shmbus_dead_letter_t *dead; /* for dead letters */
	const char *text;
} shmbus_logi_item_t;
int shmbus_log_inspect_file(const char *path, void (*fn)(const shmbus_logi_item_t *item, void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
