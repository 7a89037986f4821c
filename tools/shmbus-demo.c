/*
 * shmbus-demo - a live conversation between processes on one named bus.
 *
 *   shmbus-demo [--keep] [BUS]        (BUS defaults to "demo")
 *
 * The parent creates the bus (replacing a stale one left by a crash), creates
 * the auditor's durable subscription so no event can slip past it, and forks
 * four agents. Each agent attaches to the bus anew with shmbus_open - the fork
 * rule: a child never uses its parent's handles.
 *
 *   recorder   records every event into the bus's checksummed log on disk
 *              (the parent reads it back at the end: get_events, get_event)
 *   inventory  a dispatcher (io_uring, or its fallback) runs its handler:
 *              answers get_stock queries with responses; executes restock
 *              commands, announces the change with a stock_changed
 *              notification and acknowledges the command with a response
 *   pricing    follows stock_changed notifications (a name filter) and
 *              publishes price_changed, or an error event when the input is
 *              bad (a sku it has no price for)
 *   orders     runs three small orders as command/query conversations with
 *              correlation and causation ids through a requester, waiting
 *              at most 5 s for each correlated response, and asks shipping
 *              to ship two of them
 *   shipping   a dispatcher with two worker threads handles ship commands;
 *              its courier fails every first attempt (retried after a
 *              back-off) and never reaches "nowhere" (dead-lettered after
 *              its retries)
 *   auditor    attaches to the durable subscription that matches everything
 *              and logs every event in one line
 *
 * Agents report to the parent over one pipe, one write() per line (shorter
 * than PIPE_BUF, so lines of different processes never interleave). The
 * parent narrates what the agents do as it happens, then prints the auditor's
 * log in bus-sequence order, the log read back from disk, the dead letters,
 * the bus metrics and the output of `shm-dump BUS`
 * (the binary next to this one), and removes the bus unless --keep.
 *
 * Every wait is bounded, so the demo ends on its own in a few seconds. Exit
 * status: 0 when every agent succeeded and every event was audited, 1
 * otherwise, 2 on a usage error. Agents are reaped and the bus is removed on
 * every path out of the parent (atexit, and SIGINT/SIGTERM/SIGHUP turned into
 * an orderly exit); an agent whose parent dies is killed by the kernel
 * (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmbus.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

#define READY_TIMEOUT_NS (5 * NS_PER_S)	   /* agents subscribe within */
#define REPLY_TIMEOUT_NS (5 * NS_PER_S)	   /* orders: each response within */
#define ORDERS_TIMEOUT_NS (10 * NS_PER_S)  /* the whole orders script within */
#define SHUTDOWN_TIMEOUT_NS (5 * NS_PER_S) /* an agent exits after "shutdown" within */
#define AGENT_LIFETIME_NS (30 * NS_PER_S)  /* an agent never outlives this */
#define REAP_GRACE_NS (1 * NS_PER_S)	   /* SIGTERM, then SIGKILL after */
#define DUMP_TIMEOUT_NS (10 * NS_PER_S)

#define REPORT_MAX 1024 /* one report line; below PIPE_BUF so write() is atomic */
#define AUDIT_MAX 512	/* audit lines the parent keeps for the ordered log */
#define SKU_MAX 32

/* ------------------------------------------------------------ shared state */

/* Set by the parent before it forks; children inherit the values. */
static const char *g_bus_name = "demo";
static pid_t g_parent_pid;
static uint64_t g_t0_mono; /* CLOCK_MONOTONIC at start: report times */
static uint64_t g_t0_real; /* CLOCK_REALTIME at start: event timestamps */

/* Parent only. */
static bool g_keep;
static bool g_bus_exists; /* the shm object is ours and not yet removed */
static volatile sig_atomic_t g_stop;
static pid_t g_dump_pid = -1;

/* Child only: where reports go and who writes them. */
static int g_report_fd = -1;
static const char *g_self = "demo";

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static double since_start_ms(void)
{
	return (double)(clock_ns(CLOCK_MONOTONIC) - g_t0_mono) / 1e6;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S) };

	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------ agent side: reports */

/*
 * Report protocol, one line per write():  KIND AGENT MS TEXT
 *   R  ready (subscribed; TEXT says to what)    L  a step of the agent
 *   E  an error (the agent will fail)           A  an audit line: TEXT = SEQ LINE
 * MS is the agent's CLOCK_MONOTONIC time since the demo started.
 */
static void __attribute__((format(printf, 2, 3))) report(char kind, const char *fmt, ...)
{
	char line[REPORT_MAX];
	va_list ap;
	int head, body;
	size_t len;
	ssize_t w;

	head = snprintf(line, sizeof(line), "%c %s %.3f ", kind, g_self, since_start_ms());
	if (head < 0 || (size_t)head >= sizeof(line) - 2)
		return;
	va_start(ap, fmt);
	body = vsnprintf(line + head, sizeof(line) - (size_t)head, fmt, ap);
	va_end(ap);
	len = (size_t)head + (body < 0 ? 0 : (size_t)body);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	for (size_t i = (size_t)head; i < len; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[len++] = '\n';
	do
		w = write(g_report_fd, line, len);
	while (w < 0 && errno == EINTR);
}

/* Reports a failed library call with the library's own words; returns -1. */
static int lib_fail(const char *call, int rc)
{
	report('E', "%s: %s (%s)", call, strerror(-rc), shmbus_errmsg());
	return -1;
}

/* --------------------------------------------------- agent side: events */

static bool uuid_eq(const shmbus_uuid_t *a, const shmbus_uuid_t *b)
{
	return memcmp(a->bytes, b->bytes, sizeof(a->bytes)) == 0;
}

/*
 * Short form of an id: the ids this library makes are UUIDv7 carrying the bus
 * sequence of their event, so "#12" names the event at sequence 12 in the
 * auditor's log. "-" is the nil id (no causation).
 */
static void short_id(const shmbus_uuid_t *id, char *out, size_t cap)
{
	if (shmbus_uuid_is_nil(id))
		snprintf(out, cap, "-");
	else
		snprintf(out, cap, "#%" PRIu64, shmbus_uuid_seq(id));
}

static uint64_t id_seq(const shmbus_uuid_t *id)
{
	return shmbus_uuid_seq(id);
}

/* The payload as printable text (a copy: the event is read in place and is
 * gone after shmbus_release). Returns false when it did not fit. */
static bool payload_text(const shmbus_event_t *ev, char *out, size_t cap)
{
	size_t len = 0, n;
	const unsigned char *p = shmbus_event_payload(ev, &len);

	n = len < cap - 1 ? len : cap - 1;
	for (size_t i = 0; i < n; i++)
		out[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '.';
	out[n] = '\0';
	return n == len;
}

/*
 * Fields of the flat JSON objects the agents send each other
 * ({"sku":"widget","qty":10}). The demo links nothing but libshmbus and
 * parses only what its own agents write, so a key lookup is enough; anything
 * else does not parse and is treated as bad input.
 */
static const char *json_field(const char *json, const char *key)
{
	char pat[48];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	return p ? p + strlen(pat) : NULL;
}

static bool json_str(const char *json, const char *key, char *out, size_t cap)
{
	const char *p = json_field(json, key);
	size_t n = 0;

	if (!p || *p++ != '"')
		return false;
	while (p[n] && p[n] != '"' && p[n] != '\\')
		n++;
	if (p[n] != '"' || n == 0 || n >= cap)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return true;
}

static bool json_long(const char *json, const char *key, long *out)
{
	const char *p = json_field(json, key);
	char *end;
	long v;

	if (!p)
		return false;
	errno = 0;
	v = strtol(p, &end, 10);
	if (end == p || errno || (*end != ',' && *end != '}'))
		return false;
	*out = v;
	return true;
}

/* all(types, names = {name}, targets = {target}); NULL name/target are left
 * out. Returns 0 or the failing constructor's -errno. */
static int filter_of(uint32_t types, const char *name, const char *target, shmbus_filter_t **out)
{
	shmbus_filter_t *parts[3];
	size_t n = 0;
	int rc;

	rc = shmbus_filter_types(types, &parts[n]);
	if (rc < 0)
		goto fail;
	n++;
	if (name) {
		rc = shmbus_filter_names(&name, 1, &parts[n]);
		if (rc < 0)
			goto fail;
		n++;
	}
	if (target) {
		rc = shmbus_filter_targets(&target, 1, &parts[n]);
		if (rc < 0)
			goto fail;
		n++;
	}
	return shmbus_filter_all(parts, n, out); /* owns parts, also on failure */
fail:
	while (n > 0)
		shmbus_filter_free(parts[--n]);
	return rc;
}

/* Subscribes with `filter` (consumed: the bus keeps its own copy). */
static int subscribe(shmbus_bus_t *bus, const shmbus_sub_opts_t *opts, shmbus_filter_t *filter, shmbus_sub_t **out)
{
	shmbus_sub_opts_t o = *opts;
	int rc;

	o.filter = filter;
	rc = shmbus_subscribe(bus, &o, out);
	shmbus_filter_free(filter);
	return rc < 0 ? lib_fail("shmbus_subscribe", rc) : 0;
}

/* The next event, waiting until `deadline` (CLOCK_MONOTONIC). Returns 1, or
 * -1 after reporting `late` (deadline passed) or the library's error. */
static int next_event(shmbus_sub_t *sub, uint64_t deadline, const char *late, const shmbus_event_t **ev)
{
	for (;;) {
		uint64_t now = clock_ns(CLOCK_MONOTONIC);
		int rc;

		if (now >= deadline) {
			report('E', "%s", late);
			return -1;
		}
		rc = shmbus_wait(sub, (int64_t)(deadline - now), ev);
		if (rc == 1)
			return 1;
		if (rc < 0 && rc != -EINTR)
			return lib_fail("shmbus_wait", rc);
	}
}

static int release(shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	int rc = shmbus_release(sub, ev);

	return rc < 0 ? lib_fail("shmbus_release", rc) : 0;
}

/* Publishes a JSON event with explicit conversation ids (NULL correlation:
 * the event starts its own conversation). Returns 0 or -1 (reported). */
static int publish_json(shmbus_pub_t *pub, shmbus_type_t type, const char *name, const char *target,
			shmbus_priority_t priority, const shmbus_uuid_t *correlation, const shmbus_uuid_t *causation,
			const char *json, shmbus_uuid_t *id)
{
	shmbus_msg_t msg = {
		.type = type,
		.name = name,
		.target = target,
		.priority = priority,
		.correlation_id = correlation,
		.causation_id = causation,
		.content_type = SHMBUS_CONTENT_JSON,
		.payload = json,
		.payload_len = strlen(json),
	};
	int rc = shmbus_publish(pub, &msg, id);

	return rc < 0 ? lib_fail("shmbus_publish", rc) : 0;
}

static bool is_shutdown_for(const shmbus_event_t *ev, const char *agent)
{
	return shmbus_event_type(ev) == SHMBUS_COMMAND && strcmp(shmbus_event_name(ev), "shutdown") == 0 &&
	       strcmp(shmbus_event_target(ev), agent) == 0;
}

/* ---------------------------------------------------------- agent: inventory */

struct stock_item {
	const char *sku;
	long qty;
};

static struct stock_item *find_stock(struct stock_item *stock, size_t n, const char *sku)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(stock[i].sku, sku) == 0)
			return &stock[i];
	return NULL;
}

/* Answers a get_stock query; an unknown sku gets a failure response. */
static int inventory_get_stock(shmbus_pub_t *pub, const shmbus_event_t *query, struct stock_item *stock, size_t n)
{
	char params[256], sku[SKU_MAX], reply[128];
	struct stock_item *item = NULL;
	shmbus_uuid_t id;
	int rc;

	payload_text(query, params, sizeof(params));
	if (json_str(params, "sku", sku, sizeof(sku)))
		item = find_stock(stock, n, sku);
	else
		snprintf(sku, sizeof(sku), "?");
	if (item)
		snprintf(reply, sizeof(reply), "{\"sku\":\"%s\",\"stock\":%ld}", item->sku, item->qty);
	else
		snprintf(reply, sizeof(reply), "{\"sku\":\"%s\",\"error\":\"unknown sku\"}", sku);
	rc = shmbus_publish_response(pub, query, reply, item != NULL, &id);
	if (rc < 0)
		return lib_fail("shmbus_publish_response", rc);
	if (item)
		report('L', "query #%" PRIu64 " get_stock %s: %ld in stock -> response #%" PRIu64,
		       shmbus_event_seq(query), sku, item->qty, id_seq(&id));
	else
		report('L', "query #%" PRIu64 " get_stock %s: unknown sku -> failure response #%" PRIu64,
		       shmbus_event_seq(query), sku, id_seq(&id));
	return 0;
}

/* Executes a restock command: announce the new stock (stock_changed, in the
 * command's conversation, caused by it), then acknowledge the command. */
static int inventory_restock(shmbus_pub_t *pub, const shmbus_event_t *cmd, struct stock_item *stock, size_t n)
{
	char params[256], sku[SKU_MAX], state[128];
	struct stock_item *item = NULL;
	shmbus_uuid_t note, ack;
	long qty = 0;
	int rc;

	payload_text(cmd, params, sizeof(params));
	if (json_str(params, "sku", sku, sizeof(sku)) && json_long(params, "qty", &qty) && qty > 0 && qty <= 1000000)
		item = find_stock(stock, n, sku);
	if (!item) {
		rc = shmbus_publish_response(pub, cmd, "{\"error\":\"bad restock parameters\"}", false, &ack);
		if (rc < 0)
			return lib_fail("shmbus_publish_response", rc);
		report('L', "command #%" PRIu64 " restock %s: rejected -> failure response #%" PRIu64,
		       shmbus_event_seq(cmd), params, id_seq(&ack));
		return 0;
	}
	item->qty += qty;
	snprintf(state, sizeof(state), "{\"sku\":\"%s\",\"stock\":%ld}", item->sku, item->qty);
	if (publish_json(pub, SHMBUS_NOTIFICATION, "stock_changed", NULL, SHMBUS_PRIORITY_NORMAL,
			 shmbus_event_correlation_id(cmd), shmbus_event_id(cmd), state, &note) < 0)
		return -1;
	rc = shmbus_publish_response(pub, cmd, state, true, &ack);
	if (rc < 0)
		return lib_fail("shmbus_publish_response", rc);
	report('L', "command #%" PRIu64 " restock %s +%ld: now %ld -> stock_changed #%" PRIu64 ", ack #%" PRIu64,
	       shmbus_event_seq(cmd), item->sku, qty, item->qty, id_seq(&note), id_seq(&ack));
	return 0;
}

struct inventory {
	shmbus_pub_t *pub;
	shmbus_dispatcher_t *d;
	struct stock_item stock[3];
	bool stopped;
	int result;
};

/* The inventory's handler: one event, on the dispatcher's thread. */
static int inventory_handle(const shmbus_event_t *ev, void *arg)
{
	struct inventory *inv = arg;
	const size_t n = sizeof(inv->stock) / sizeof(inv->stock[0]);
	int step = 0, rc;

	if (is_shutdown_for(ev, "inventory")) {
		report('L', "command #%" PRIu64 " shutdown: leaving", shmbus_event_seq(ev));
		inv->stopped = true;
		shmbus_dispatcher_stop(inv->d);
	} else if (shmbus_event_type(ev) == SHMBUS_QUERY && strcmp(shmbus_event_name(ev), "get_stock") == 0) {
		step = inventory_get_stock(inv->pub, ev, inv->stock, n);
	} else if (shmbus_event_type(ev) == SHMBUS_COMMAND && strcmp(shmbus_event_name(ev), "restock") == 0) {
		step = inventory_restock(inv->pub, ev, inv->stock, n);
	} else {
		rc = shmbus_publish_response(inv->pub, ev, "{\"error\":\"unknown request\"}", false, NULL);
		step = rc < 0 ? lib_fail("shmbus_publish_response", rc) : 0;
	}
	if (step < 0)
		inv->result = -1;
	return 0; /* a failed publish is the agent's error, not a reason to redo the request */
}

/* Inventory is served by a dispatcher: it sleeps in io_uring (or the
 * fallback) until a request comes, runs the handler, releases the event. */
static int run_inventory(shmbus_bus_t *bus)
{
	struct inventory inv = { .stock = { { "widget", 3 }, { "gadget", 7 }, { "gizmo", 0 } } };
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + AGENT_LIFETIME_NS;
	shmbus_sub_t *sub = NULL;
	shmbus_filter_t *filter;
	int rc, result = -1;

	rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){ .source = "inventory" }, &inv.pub);
	if (rc < 0)
		return lib_fail("shmbus_pub_open", rc);
	rc = filter_of(SHMBUS_TYPE_BIT(SHMBUS_COMMAND) | SHMBUS_TYPE_BIT(SHMBUS_QUERY), NULL, "inventory", &filter);
	if (rc < 0) {
		lib_fail("filter", rc);
		goto out;
	}
	if (subscribe(bus, &(shmbus_sub_opts_t){ .subscriber_id = "inventory", .policy = SHMBUS_POLICY_BLOCK }, filter,
		      &sub) < 0)
		goto out;
	if ((rc = shmbus_dispatcher_open(NULL, &inv.d)) < 0 ||
	    (rc = shmbus_dispatcher_add(inv.d, sub, &(shmbus_handler_opts_t){ .handler = inventory_handle, .arg = &inv })) <
		    0) {
		lib_fail("dispatcher", rc);
		goto out;
	}
	report('R', "commands and queries targeted at inventory, handled by a dispatcher (%s backend); "
		    "stock widget=3 gadget=7 gizmo=0",
	       shmbus_backend_name(shmbus_dispatcher_backend(inv.d)));
	while (!inv.stopped) {
		uint64_t now = clock_ns(CLOCK_MONOTONIC);

		if (now >= deadline) {
			report('E', "no shutdown command arrived");
			goto out;
		}
		rc = shmbus_dispatcher_run_once(inv.d, (int64_t)(deadline - now));
		if (rc < 0 && rc != -EINTR) {
			lib_fail("shmbus_dispatcher_run_once", rc);
			goto out;
		}
	}
	result = inv.result;
out:
	shmbus_dispatcher_close(inv.d);
	shmbus_sub_close(sub);
	shmbus_pub_close(inv.pub);
	return result;
}

/* ------------------------------------------------------------ agent: pricing */

static const struct {
	const char *sku;
	long cents;
} base_prices[] = { { "widget", 250 }, { "gadget", 1000 } };

/* Reprices after a stock change: 10% off when 10 or more are in stock. A
 * payload it cannot read or a sku without a base price is bad input and
 * becomes an error event caused by the notification. */
static int pricing_reprice(shmbus_pub_t *pub, const shmbus_event_t *ev)
{
	char data[256], sku[SKU_MAX], msg[128], body[128];
	long stock = 0, cents = -1;
	shmbus_uuid_t id;
	int rc;

	payload_text(ev, data, sizeof(data));
	if (!json_str(data, "sku", sku, sizeof(sku)) || !json_long(data, "stock", &stock) || stock < 0) {
		rc = shmbus_publish_error(pub, "bad_input", "stock_changed payload is not {sku, stock}",
					  shmbus_event_id(ev), NULL, &id);
		if (rc < 0)
			return lib_fail("shmbus_publish_error", rc);
		report('L', "stock_changed #%" PRIu64 ": unreadable payload -> error bad_input #%" PRIu64,
		       shmbus_event_seq(ev), id_seq(&id));
		return 0;
	}
	for (size_t i = 0; i < sizeof(base_prices) / sizeof(base_prices[0]); i++)
		if (strcmp(base_prices[i].sku, sku) == 0)
			cents = base_prices[i].cents;
	if (cents < 0) {
		snprintf(msg, sizeof(msg), "no base price for sku %s", sku);
		snprintf(body, sizeof(body), "{\"sku\":\"%s\",\"stock\":%ld}", sku, stock);
		rc = shmbus_publish_error(pub, "unknown_sku", msg, shmbus_event_id(ev), body, &id);
		if (rc < 0)
			return lib_fail("shmbus_publish_error", rc);
		report('L', "stock_changed #%" PRIu64 " %s=%ld: %s -> error unknown_sku #%" PRIu64,
		       shmbus_event_seq(ev), sku, stock, msg, id_seq(&id));
		return 0;
	}
	if (stock >= 10)
		cents = cents * 9 / 10;
	snprintf(body, sizeof(body), "{\"sku\":\"%s\",\"price_cents\":%ld}", sku, cents);
	if (publish_json(pub, SHMBUS_NOTIFICATION, "price_changed", NULL, SHMBUS_PRIORITY_NORMAL,
			 shmbus_event_correlation_id(ev), shmbus_event_id(ev), body, &id) < 0)
		return -1;
	report('L', "stock_changed #%" PRIu64 " %s=%ld: price %ld cents -> price_changed #%" PRIu64,
	       shmbus_event_seq(ev), sku, stock, cents, id_seq(&id));
	return 0;
}

static int run_pricing(shmbus_bus_t *bus)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + AGENT_LIFETIME_NS;
	shmbus_filter_t *either[2] = { NULL, NULL }, *filter;
	shmbus_pub_t *pub = NULL;
	shmbus_sub_t *sub = NULL;
	int rc, result = -1;

	rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){ .source = "pricing" }, &pub);
	if (rc < 0)
		return lib_fail("shmbus_pub_open", rc);
	/* any(notification named stock_changed, command shutdown for pricing) */
	rc = filter_of(SHMBUS_TYPE_BIT(SHMBUS_NOTIFICATION), "stock_changed", NULL, &either[0]);
	if (rc == 0)
		rc = filter_of(SHMBUS_TYPE_BIT(SHMBUS_COMMAND), "shutdown", "pricing", &either[1]);
	if (rc == 0)
		rc = shmbus_filter_any(either, 2, &filter);
	else
		shmbus_filter_free(either[0]);
	if (rc < 0) {
		lib_fail("filter", rc);
		goto out;
	}
	if (subscribe(bus,
		      &(shmbus_sub_opts_t){ .subscriber_id = "pricing", .policy = SHMBUS_POLICY_BLOCK,
					    .wait = SHMBUS_WAIT_BLOCK },
		      filter, &sub) < 0)
		goto out;
	report('R', "notifications named stock_changed (name filter, block policy, blocking wait)");

	for (;;) {
		const shmbus_event_t *ev;
		bool stop;
		int step = 0;

		if (next_event(sub, deadline, "no shutdown command arrived", &ev) < 0)
			goto out;
		stop = is_shutdown_for(ev, "pricing");
		if (stop)
			report('L', "command #%" PRIu64 " shutdown: leaving", shmbus_event_seq(ev));
		else
			step = pricing_reprice(pub, ev);
		if (release(sub, ev) < 0 || step < 0)
			goto out;
		if (stop)
			break;
	}
	result = 0;
out:
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	return result;
}

/* ------------------------------------------------------------- agent: orders */

struct reply {
	shmbus_uuid_t id;
	uint16_t flags;
	double round_trip_ms;
	char data[256];
};

/*
 * Sends one request through the requester and waits for the response that
 * names it as its cause; `correlation` (NULL: the request's own id) is the
 * conversation it belongs to and must come back. Returns 0, or -1 (reported).
 */
static int ask(shmbus_requester_t *r, shmbus_msg_t *msg, const shmbus_uuid_t *correlation, shmbus_uuid_t *request,
	       struct reply *out)
{
	const uint64_t start = clock_ns(CLOCK_MONOTONIC);
	shmbus_event_t *resp;
	int rc;

	msg->content_type = SHMBUS_CONTENT_JSON;
	msg->payload_len = msg->payload ? strlen((const char *)msg->payload) : 0;
	msg->correlation_id = correlation;
	rc = shmbus_request(r, msg, (int64_t)REPLY_TIMEOUT_NS, &resp);
	if (rc == -ETIMEDOUT) {
		report('E', "no response to %s within %llu s", msg->name, REPLY_TIMEOUT_NS / NS_PER_S);
		return -1;
	}
	if (rc < 0)
		return lib_fail("shmbus_request", rc);
	*request = *shmbus_event_causation_id(resp);
	if (correlation && !uuid_eq(shmbus_event_correlation_id(resp), correlation)) {
		report('E', "response #%" PRIu64 " carries correlation #%" PRIu64 ", expected #%" PRIu64,
		       shmbus_event_seq(resp), id_seq(shmbus_event_correlation_id(resp)), id_seq(correlation));
		shmbus_event_free(resp);
		return -1;
	}
	out->id = *shmbus_event_id(resp);
	out->flags = shmbus_event_flags(resp);
	out->round_trip_ms = (double)(clock_ns(CLOCK_MONOTONIC) - start) / 1e6;
	payload_text(resp, out->data, sizeof(out->data));
	shmbus_event_free(resp);
	return 0;
}

/* The stock figure of a successful inventory response, or -1 (reported). */
static long reply_stock(const struct reply *r, const char *what)
{
	long stock;

	if (!(r->flags & SHMBUS_FLAG_SUCCESS) || !json_long(r->data, "stock", &stock)) {
		report('E', "%s: unexpected response %s", what, r->data);
		return -1;
	}
	return stock;
}

/* Fire-and-forget: ask shipping to ship, in the order's conversation. */
static int ship(shmbus_pub_t *pub, const char *what, const char *address, const shmbus_uuid_t *order)
{
	char params[128];
	shmbus_uuid_t cmd;

	snprintf(params, sizeof(params), "{\"items\":\"%s\",\"address\":\"%s\"}", what, address);
	if (publish_json(pub, SHMBUS_COMMAND, "ship", "shipping", SHMBUS_PRIORITY_NORMAL, order, order, params, &cmd) <
	    0)
		return -1;
	report('L', "ship command #%" PRIu64 ": %s to %s", id_seq(&cmd), what, address);
	return 0;
}

/*
 * Order 1 is a conversation: a query opens it and its id is the correlation
 * id of everything that follows, each request caused by the answer before.
 */
static int orders_widgets(shmbus_requester_t *r, shmbus_pub_t *pub)
{
	const long want = 10;
	shmbus_uuid_t order, cmd, query;
	struct reply rep;
	long before, after;
	char params[64];

	shmbus_msg_t q = { .type = SHMBUS_QUERY, .name = "get_stock", .target = "inventory",
			   .payload = "{\"sku\":\"widget\"}" };
	if (ask(r, &q, NULL, &order, &rep) < 0 || (before = reply_stock(&rep, "order 1")) < 0)
		return -1;
	report('L', "order 1: query #%" PRIu64 " opened conversation #%" PRIu64 ": %ld widgets (response #%" PRIu64
		    ", round trip %.3f ms); %s",
	       id_seq(&order), id_seq(&order), before, id_seq(&rep.id), rep.round_trip_ms,
	       before < want ? "too few, restocking" : "enough");

	snprintf(params, sizeof(params), "{\"sku\":\"widget\",\"qty\":%ld}", want);
	shmbus_uuid_t cause = rep.id;
	shmbus_msg_t c = { .type = SHMBUS_COMMAND, .name = "restock", .target = "inventory", .causation_id = &cause,
			   .payload = params };
	if (ask(r, &c, &order, &cmd, &rep) < 0 || reply_stock(&rep, "order 1 restock") < 0)
		return -1;
	report('L', "order 1: restock command #%" PRIu64 " (caused by #%" PRIu64 ") acknowledged by #%" PRIu64
		    " (round trip %.3f ms)",
	       id_seq(&cmd), id_seq(&cause), id_seq(&rep.id), rep.round_trip_ms);

	cause = rep.id;
	shmbus_msg_t q2 = { .type = SHMBUS_QUERY, .name = "get_stock", .target = "inventory", .causation_id = &cause,
			    .payload = "{\"sku\":\"widget\"}" };
	if (ask(r, &q2, &order, &query, &rep) < 0 || (after = reply_stock(&rep, "order 1 check")) < 0)
		return -1;
	if (after != before + want) {
		report('E', "order 1: inventory reports %ld widgets after restocking %ld onto %ld", after, want, before);
		return -1;
	}
	report('L', "order 1: query #%" PRIu64 " confirms %ld widgets (response #%" PRIu64 ")", id_seq(&query), after,
	       id_seq(&rep.id));
	return ship(pub, "10 widgets", "12 Main St", &order);
}

/* Order 2: an urgent restock (high priority: admitted and delivered ahead of
 * normal traffic) of a sku that pricing has no price for. */
static int orders_gizmos(shmbus_requester_t *r, shmbus_pub_t *pub)
{
	shmbus_uuid_t cmd;
	struct reply rep;
	long stock;

	shmbus_msg_t c = { .type = SHMBUS_COMMAND, .name = "restock", .target = "inventory",
			   .priority = SHMBUS_PRIORITY_HIGH, .payload = "{\"sku\":\"gizmo\",\"qty\":4}" };
	if (ask(r, &c, NULL, &cmd, &rep) < 0 || (stock = reply_stock(&rep, "order 2")) < 0)
		return -1;
	report('L', "order 2: urgent restock command #%" PRIu64 " (high priority): %ld gizmos now (ack #%" PRIu64
		    ", round trip %.3f ms)",
	       id_seq(&cmd), stock, id_seq(&rep.id), rep.round_trip_ms);
	/* an address the courier never reaches: retried, then dead-lettered */
	return ship(pub, "4 gizmos", "nowhere", &cmd);
}

/* Order 3: a sku nobody stocks; the answer is a response flagged FAILURE. */
static int orders_unknown(shmbus_requester_t *r)
{
	shmbus_uuid_t query;
	struct reply rep;

	shmbus_msg_t q = { .type = SHMBUS_QUERY, .name = "get_stock", .target = "inventory",
			   .payload = "{\"sku\":\"doohickey\"}" };
	if (ask(r, &q, NULL, &query, &rep) < 0)
		return -1;
	if (!(rep.flags & SHMBUS_FLAG_FAILURE)) {
		report('E', "order 3: expected a failure response, got %s", rep.data);
		return -1;
	}
	report('L', "order 3: any doohickeys? query #%" PRIu64 " -> failure response #%" PRIu64 ": %s",
	       id_seq(&query), id_seq(&rep.id), rep.data);
	return 0;
}

static int run_orders(shmbus_bus_t *bus)
{
	shmbus_requester_t *r = NULL;
	shmbus_pub_t *pub = NULL;
	int rc, result = -1;

	/* requests and their responses go through a requester (source
	 * "orders": responses are targeted at it); shipping commands are
	 * fire-and-forget from a plain publisher */
	rc = shmbus_requester_open(bus, &(shmbus_pub_opts_t){ .source = "orders" }, &r);
	if (rc < 0)
		return lib_fail("shmbus_requester_open", rc);
	rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){ .source = "orders" }, &pub);
	if (rc < 0) {
		lib_fail("shmbus_pub_open", rc);
		goto out;
	}
	report('R', "requests through a requester (responses targeted at orders)");
	if (orders_widgets(r, pub) < 0 || orders_gizmos(r, pub) < 0 || orders_unknown(r) < 0)
		goto out;
	report('L', "all three orders done (%" PRIu64 " late responses)", shmbus_requester_late(r));
	result = 0;
out:
	shmbus_pub_close(pub);
	shmbus_requester_close(r);
	return result;
}

/* ----------------------------------------------------------- agent: shipping */

struct shipping {
	shmbus_pub_t *pub;
	shmbus_dispatcher_t *d;
	_Atomic bool stopped;
	_Atomic int result;
};

/*
 * Ships on a worker thread (two at a time). The courier is flaky: every
 * first attempt times out (-ETIMEDOUT), so the dispatcher retries after a
 * back-off; "nowhere" is never reached, so that shipment runs out of
 * retries and goes to the dead-letter queue.
 */
static int shipping_handle(const shmbus_event_t *ev, void *arg)
{
	struct shipping *sh = arg;
	char params[256], items[64], address[64], body[160];
	unsigned attempt = shmbus_handler_attempt();
	shmbus_uuid_t id;

	if (is_shutdown_for(ev, "shipping")) {
		report('L', "command #%" PRIu64 " shutdown: leaving", shmbus_event_seq(ev));
		atomic_store(&sh->stopped, true);
		shmbus_dispatcher_stop(sh->d);
		return 0;
	}
	payload_text(ev, params, sizeof(params));
	if (!json_str(params, "items", items, sizeof(items)) || !json_str(params, "address", address, sizeof(address)))
		return -EINVAL; /* retried like any failure; ends as a dead letter */
	if (attempt == 1 || strcmp(address, "nowhere") == 0) {
		report('L', "ship #%" PRIu64 " %s to %s: attempt %u, courier timed out%s", shmbus_event_seq(ev), items,
		       address, attempt, attempt > 2 ? " (giving up)" : "; retry after a back-off");
		return -ETIMEDOUT;
	}
	snprintf(body, sizeof(body), "{\"items\":\"%s\",\"address\":\"%s\"}", items, address);
	if (publish_json(sh->pub, SHMBUS_NOTIFICATION, "shipped", NULL, SHMBUS_PRIORITY_NORMAL,
			 shmbus_event_correlation_id(ev), shmbus_event_id(ev), body, &id) < 0) {
		atomic_store(&sh->result, -1);
		return 0;
	}
	report('L', "ship #%" PRIu64 " %s to %s: attempt %u delivered -> shipped #%" PRIu64, shmbus_event_seq(ev), items,
	       address, attempt, id_seq(&id));
	return 0;
}

static int run_shipping(shmbus_bus_t *bus)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + AGENT_LIFETIME_NS;
	struct shipping sh = { 0 };
	shmbus_sub_t *sub = NULL;
	shmbus_filter_t *filter;
	int rc, result = -1;

	rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){ .source = "shipping" }, &sh.pub);
	if (rc < 0)
		return lib_fail("shmbus_pub_open", rc);
	rc = filter_of(SHMBUS_TYPE_BIT(SHMBUS_COMMAND), NULL, "shipping", &filter);
	if (rc < 0) {
		lib_fail("filter", rc);
		goto out;
	}
	/* durable: a shipment handed to shipping survives a shipping crash */
	if (subscribe(bus, &(shmbus_sub_opts_t){ .subscriber_id = "shipping", .durable = true }, filter, &sub) < 0)
		goto out;
	if ((rc = shmbus_dispatcher_open(&(shmbus_dispatcher_opts_t){ .workers = 2 }, &sh.d)) < 0 ||
	    (rc = shmbus_dispatcher_add(sh.d, sub,
					&(shmbus_handler_opts_t){ .handler = shipping_handle, .arg = &sh,
								  .concurrency = 2, .max_retries = 2,
								  .retry_base_ns = 20 * NS_PER_MS })) < 0) {
		lib_fail("dispatcher", rc);
		goto out;
	}
	report('R', "commands targeted at shipping (durable), 2 handlers at once on worker threads, "
		    "2 retries with back-off from 20 ms");
	while (!atomic_load(&sh.stopped)) {
		uint64_t now = clock_ns(CLOCK_MONOTONIC);

		if (now >= deadline) {
			report('E', "no shutdown command arrived");
			goto out;
		}
		rc = shmbus_dispatcher_run_once(sh.d, (int64_t)(deadline - now));
		if (rc < 0 && rc != -EINTR) {
			lib_fail("shmbus_dispatcher_run_once", rc);
			goto out;
		}
	}
	result = atomic_load(&sh.result);
out:
	shmbus_dispatcher_close(sh.d);
	shmbus_sub_close(sub);
	shmbus_pub_close(sh.pub);
	return result;
}

/* ----------------------------------------------------------- agent: recorder */

static shmbus_recorder_t *g_recorder;

static void recorder_on_term(int sig)
{
	(void)sig;
	shmbus_recorder_stop(g_recorder); /* async-signal-safe: one atomic store */
}

/* The bus's recorder: every event into the checksummed log on disk, until
 * the parent's SIGTERM at the end. */
static int run_recorder(shmbus_bus_t *bus)
{
	struct sigaction sa = { .sa_handler = recorder_on_term };
	shmbus_recorder_stats_t st;
	char dir[PATH_MAX];
	int64_t n;
	int rc;

	rc = shmbus_recorder_open(bus, &(shmbus_record_opts_t){ .sync = SHMBUS_SYNC_BATCH, .no_wait = true },
				  &g_recorder);
	if (rc < 0)
		return lib_fail("shmbus_recorder_open", rc);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	if (shmbus_log_dir(bus, dir, sizeof(dir)) < 0)
		snprintf(dir, sizeof(dir), "?");
	report('R', "recording every event to %s (sync batch: fdatasync every 10 ms)", dir);
	n = shmbus_recorder_run(g_recorder, (int64_t)AGENT_LIFETIME_NS);
	shmbus_recorder_stats(g_recorder, &st);
	shmbus_recorder_close(g_recorder);
	if (n < 0)
		return lib_fail("shmbus_recorder_run", (int)n);
	report('L', "recorded %" PRIu64 " events (%" PRIu64 " bytes, %" PRIu64 " syncs, %s); leaving", st.recorded,
	       st.bytes, st.syncs, st.io_uring ? "io_uring" : "fdatasync");
	return st.missed ? -1 : 0;
}

/* ------------------------------------------------------------ agent: auditor */

/* One audit line: SEQ, publish time since the demo started, type, name,
 * route, conversation ids, priority, outcome flags and payload (or, for an
 * error, its message). Returns -1 if the event contradicts itself. */
static int audit(shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	const uint64_t seq = shmbus_event_seq(ev);
	const uint16_t flags = shmbus_event_flags(ev);
	const char *target = shmbus_event_target(ev);
	const char *message = shmbus_event_meta_get(ev, "message");
	char corr[24], cause[24], route[48], data[72];
	int result = 0;

	if (id_seq(shmbus_event_id(ev)) != seq) {
		report('E', "event #%" PRIu64 ": its id carries sequence %" PRIu64, seq, id_seq(shmbus_event_id(ev)));
		result = -1;
	}
	short_id(shmbus_event_correlation_id(ev), corr, sizeof(corr));
	short_id(shmbus_event_causation_id(ev), cause, sizeof(cause));
	snprintf(route, sizeof(route), "%s → %s", shmbus_event_source(ev), *target ? target : "*");
	if (!payload_text(ev, data, 48))
		strcat(data, "...");
	report('A', "%" PRIu64 " %+9.3f  %-12s %-13s %-21s corr=%-4s cause=%-4s %-8s %s%s%s%s%s%s", seq,
	       (double)((int64_t)(shmbus_event_published_ns(ev) - g_t0_real)) / 1e6,
	       shmbus_type_name(shmbus_event_type(ev)), shmbus_event_name(ev), route, corr, cause,
	       shmbus_priority_name(shmbus_event_priority(ev)), (flags & SHMBUS_FLAG_SUCCESS) ? "ok " : "",
	       (flags & SHMBUS_FLAG_FAILURE) ? "failed " : "", shmbus_redelivered(sub, ev) ? "redelivered " : "",
	       data, message ? " message=" : "", message ? message : "");
	return result;
}

static int run_auditor(shmbus_bus_t *bus)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + AGENT_LIFETIME_NS;
	const shmbus_event_t *ev;
	shmbus_sub_t *sub = NULL;
	uint64_t audited = 0, missed;
	bool stop = false;
	int rc, result = 0;

	/* Same key and policy as the parent's: attach, keep the stored filter. */
	if (subscribe(bus,
		      &(shmbus_sub_opts_t){ .subscriber_id = "auditor", .durable = true, .policy = SHMBUS_POLICY_LAG,
					    .wait = SHMBUS_WAIT_BLOCK },
		      NULL, &sub) < 0)
		return -1;
	report('R', "attached to the durable subscription \"auditor\" (every event, lag policy)");

	while (!stop) {
		if (next_event(sub, deadline, "no shutdown command arrived", &ev) < 0) {
			result = -1;
			break;
		}
		audited++;
		stop = is_shutdown_for(ev, "auditor");
		if (audit(sub, ev) < 0 || release(sub, ev) < 0)
			result = -1;
	}
	/* Whatever was queued with the shutdown command is part of the record. */
	while ((rc = shmbus_poll(sub, &ev)) == 1) {
		audited++;
		if (audit(sub, ev) < 0 || release(sub, ev) < 0)
			result = -1;
	}
	if (rc < 0)
		result = lib_fail("shmbus_poll", rc);
	missed = shmbus_take_missed(sub);
	if (missed)
		report('E', "missed %" PRIu64 " events", missed);
	report('L', "audited %" PRIu64 " events, missed %" PRIu64 "; detaching (the durable subscription stays)",
	       audited, missed);
	shmbus_sub_close(sub);
	return missed ? -1 : result;
}

/* --------------------------------------------------------- parent: agents */

struct agent {
	const char *name;
	int (*run)(shmbus_bus_t *bus);
	pid_t pid;
	bool ready, exited;
	int status; /* wait status once exited */
	unsigned errors;
};

enum { AG_RECORDER, AG_INVENTORY, AG_PRICING, AG_SHIPPING, AG_AUDITOR, AG_ORDERS, AG_COUNT };
#define AG_BIT(i) (1u << (i))
#define AG_SERVICES                                                                                                \
	(AG_BIT(AG_RECORDER) | AG_BIT(AG_INVENTORY) | AG_BIT(AG_PRICING) | AG_BIT(AG_SHIPPING) | AG_BIT(AG_AUDITOR))
#define AG_ALL (AG_SERVICES | AG_BIT(AG_ORDERS))

static struct agent g_agents[AG_COUNT] = {
	[AG_RECORDER] = { .name = "recorder", .run = run_recorder, .pid = -1 },
	[AG_INVENTORY] = { .name = "inventory", .run = run_inventory, .pid = -1 },
	[AG_PRICING] = { .name = "pricing", .run = run_pricing, .pid = -1 },
	[AG_SHIPPING] = { .name = "shipping", .run = run_shipping, .pid = -1 },
	[AG_AUDITOR] = { .name = "auditor", .run = run_auditor, .pid = -1 },
	[AG_ORDERS] = { .name = "orders", .run = run_orders, .pid = -1 },
};

static bool agent_ok(const struct agent *a)
{
	return a->exited && WIFEXITED(a->status) && WEXITSTATUS(a->status) == 0 && a->errors == 0;
}

/* The child's life: its own attachment to the bus, its script, _exit (never
 * the parent's atexit handlers, never its stdio buffers). */
static void __attribute__((noreturn)) agent_main(struct agent *a, int report_fd)
{
	char label[SHMBUS_ID_MAX + 1];
	shmbus_bus_t *bus;
	int rc;

	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != g_parent_pid)
		_exit(1);
	g_report_fd = report_fd;
	g_self = a->name;
	snprintf(label, sizeof(label), "demo-%s", a->name);
	rc = shmbus_open(g_bus_name, &(shmbus_open_opts_t){ .label = label }, &bus);
	if (rc < 0) {
		lib_fail("shmbus_open", rc);
		_exit(1);
	}
	rc = a->run(bus);
	shmbus_close(bus);
	_exit(rc == 0 ? 0 : 1);
}

static int spawn(struct agent *a, int read_fd, int write_fd)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "shmbus-demo: fork %s: %s\n", a->name, strerror(errno));
		return -1;
	}
	if (pid == 0) {
		close(read_fd);
		agent_main(a, write_fd);
	}
	a->pid = pid;
	return 0;
}

static struct agent *agent_by_name(const char *name)
{
	for (int i = 0; i < AG_COUNT; i++)
		if (strcmp(g_agents[i].name, name) == 0)
			return &g_agents[i];
	return NULL;
}

static void describe_exit(const struct agent *a, char *out, size_t cap)
{
	if (WIFEXITED(a->status))
		snprintf(out, cap, "exited with status %d", WEXITSTATUS(a->status));
	else if (WIFSIGNALED(a->status))
		snprintf(out, cap, "killed by signal %d (%s)", WTERMSIG(a->status), strsignal(WTERMSIG(a->status)));
	else
		snprintf(out, cap, "ended with wait status %#x", (unsigned)a->status);
}

static void reap_agents(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < AG_COUNT; i++) {
			struct agent *a = &g_agents[i];
			char how[96];

			if (a->pid != pid)
				continue;
			a->exited = true;
			a->status = status;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
				describe_exit(a, how, sizeof(how));
				printf("  %9.3f ms  %-9s  %s\n", since_start_ms(), a->name, how);
			}
		}
	}
}

/* Ends agents still running: SIGTERM, then SIGKILL after a grace period. */
static void stop_agents(void)
{
	uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + REAP_GRACE_NS;
	bool running = false;

	for (int i = 0; i < AG_COUNT; i++)
		if (g_agents[i].pid > 0 && !g_agents[i].exited) {
			kill(g_agents[i].pid, SIGTERM);
			running = true;
		}
	while (running) {
		reap_agents();
		running = false;
		for (int i = 0; i < AG_COUNT; i++)
			running |= g_agents[i].pid > 0 && !g_agents[i].exited;
		if (!running)
			break;
		if (clock_ns(CLOCK_MONOTONIC) >= deadline) {
			for (int i = 0; i < AG_COUNT; i++)
				if (g_agents[i].pid > 0 && !g_agents[i].exited)
					kill(g_agents[i].pid, SIGKILL);
			deadline = UINT64_MAX;
		}
		sleep_ns(5 * NS_PER_MS);
	}
}

/* ------------------------------------------------- parent: report relay */

struct audit_line {
	uint64_t seq;
	char *text;
};

static struct {
	int fd; /* read end of the report pipe, -1 after EOF */
	char buf[2 * REPORT_MAX];
	size_t len;
	struct audit_line audit[AUDIT_MAX];
	size_t audit_count, audit_dropped;
} g_relay = { .fd = -1 };

static void relay_line(char *line)
{
	char kind, name[16];
	double ms;
	int off = 0;
	struct agent *a;
	char *text, *end;

	if (sscanf(line, "%c %15s %lf %n", &kind, name, &ms, &off) < 3 || off == 0) {
		printf("  %s\n", line);
		return;
	}
	text = line + off;
	a = agent_by_name(name);
	switch (kind) {
	case 'R':
		if (a)
			a->ready = true;
		printf("  %9.3f ms  %-9s  ready: %s\n", ms, name, text);
		break;
	case 'E':
		if (a)
			a->errors++;
		printf("  %9.3f ms  %-9s  ERROR: %s\n", ms, name, text);
		break;
	case 'A':
		if (g_relay.audit_count == AUDIT_MAX) {
			g_relay.audit_dropped++;
			break;
		}
		g_relay.audit[g_relay.audit_count].seq = strtoull(text, &end, 10);
		g_relay.audit[g_relay.audit_count].text = strdup(*end ? end + 1 : end);
		if (g_relay.audit[g_relay.audit_count].text)
			g_relay.audit_count++;
		break;
	default:
		printf("  %9.3f ms  %-9s  %s\n", ms, name, text);
		break;
	}
}

/* Reads what is in the pipe and relays every complete line; a line longer
 * than the buffer (agents never write one) is relayed in pieces. */
static void relay_read(void)
{
	ssize_t n = read(g_relay.fd, g_relay.buf + g_relay.len, sizeof(g_relay.buf) - 1 - g_relay.len);
	char *start, *nl;

	if (n < 0)
		return; /* EINTR, EAGAIN: the next poll comes back */
	if (n == 0) {
		close(g_relay.fd);
		g_relay.fd = -1;
		if (g_relay.len > 0) {
			g_relay.buf[g_relay.len] = '\0';
			relay_line(g_relay.buf);
			g_relay.len = 0;
		}
		return;
	}
	g_relay.len += (size_t)n;
	g_relay.buf[g_relay.len] = '\0';
	start = g_relay.buf;
	while ((nl = strchr(start, '\n')) != NULL) {
		*nl = '\0';
		relay_line(start);
		start = nl + 1;
	}
	g_relay.len -= (size_t)(start - g_relay.buf);
	memmove(g_relay.buf, start, g_relay.len);
	if (g_relay.len == sizeof(g_relay.buf) - 1) {
		g_relay.buf[g_relay.len] = '\0';
		relay_line(g_relay.buf);
		g_relay.len = 0;
	}
}

/* Relays whatever is already in the pipe without waiting. */
static void relay_drain(void)
{
	struct pollfd p = { .events = POLLIN };

	while (g_relay.fd >= 0) {
		p.fd = g_relay.fd;
		if (poll(&p, 1, 0) <= 0)
			return;
		relay_read();
	}
}

/* Every agent is gone: relays what they wrote last, up to EOF. */
static void relay_until_eof(uint64_t timeout_ns)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + timeout_ns;
	struct pollfd p = { .events = POLLIN };

	while (g_relay.fd >= 0 && !g_stop && clock_ns(CLOCK_MONOTONIC) < deadline) {
		p.fd = g_relay.fd;
		if (poll(&p, 1, 10) > 0)
			relay_read();
	}
}

enum milestone { READY, EXITED };

static bool reached(unsigned mask, enum milestone m)
{
	for (int i = 0; i < AG_COUNT; i++) {
		const struct agent *a = &g_agents[i];

		if ((mask & AG_BIT(i)) && !a->exited && (m == EXITED || !a->ready))
			return false;
	}
	return true;
}

/*
 * Relays reports and reaps agents until every agent in `mask` reached the
 * milestone (an agent that exited counts as having reached any), a signal
 * asked us to stop, or timeout_ns passed. Returns whether it was reached.
 */
static bool pump(unsigned mask, enum milestone m, uint64_t timeout_ns)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + timeout_ns;

	for (;;) {
		uint64_t now;

		reap_agents();
		if (reached(mask, m)) {
			relay_drain(); /* what an agent wrote before exiting comes first */
			return true;
		}
		now = clock_ns(CLOCK_MONOTONIC);
		if (g_stop || now >= deadline)
			return false;
		if (g_relay.fd >= 0) {
			struct pollfd p = { .fd = g_relay.fd, .events = POLLIN };

			if (poll(&p, 1, 2) > 0)
				relay_read();
		} else {
			sleep_ns(2 * NS_PER_MS);
		}
	}
}

static int audit_cmp(const void *a, const void *b)
{
	const struct audit_line *x = a, *y = b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void print_audit_log(void)
{
	qsort(g_relay.audit, g_relay.audit_count, sizeof(g_relay.audit[0]), audit_cmp);
	printf("\nEvent log: the auditor's durable subscription, in bus-sequence order\n"
	       "(#N = the event at sequence N: ids are UUIDv7 carrying the sequence;\n"
	       " sequences are slot positions, so an event spanning slots skips numbers)\n");
	/* Same widths as audit(); the arrow is 3 bytes in 1 column on both. */
	printf("  %6s %9s  %-12s %-13s %-21s %-9s %-10s %-8s %s\n", "seq", "+ms", "type", "name", "source → target",
	       "", "", "priority", "outcome, data");
	for (size_t i = 0; i < g_relay.audit_count; i++) {
		printf("  %6" PRIu64 " %s\n", g_relay.audit[i].seq, g_relay.audit[i].text);
		free(g_relay.audit[i].text);
	}
	if (g_relay.audit_dropped)
		printf("  (%zu more lines not kept)\n", g_relay.audit_dropped);
}

/* ------------------------------------------------ parent: bus and report */

#define SUBS_SHOWN 32

/* What the bus looked like at one moment: subscriptions and metrics. */
struct snapshot {
	shmbus_sub_info_t subs[SUBS_SHOWN];
	int nsubs; /* or -errno */
	shmbus_metrics_t m;
	int mrc; /* shmbus_get_metrics' result */
};

static void take_snapshot(shmbus_bus_t *bus, struct snapshot *s)
{
	s->nsubs = shmbus_list_subscriptions(bus, NULL, s->subs, SUBS_SHOWN);
	s->mrc = shmbus_get_metrics(bus, &s->m);
}

static void print_subscriptions(const struct snapshot *s)
{
	if (s->nsubs < 0) {
		printf("  shmbus_list_subscriptions: %s\n", strerror(-s->nsubs));
		return;
	}
	printf("  %-9s %-16s %-8s %-6s %9s %6s %6s %9s %6s %7s %7s %5s\n", "id", "subscriber", "kind", "policy",
	       "consumers", "queued", "routed", "delivered", "lagged", "handled", "retried", "dead");
	for (int i = 0; i < s->nsubs && i < SUBS_SHOWN; i++) {
		const shmbus_sub_info_t *si = &s->subs[i];

		printf("  %#-9" PRIx64 " %-16s %-8s %-6s %9u %6" PRIu64 " %6" PRIu64 " %9" PRIu64 " %6" PRIu64
		       " %7" PRIu64 " %7" PRIu64 " %5" PRIu64 "\n",
		       si->id, si->subscriber_id, si->durable ? "durable" : si->group[0] ? "group" : "plain",
		       si->policy == SHMBUS_POLICY_LAG ? "lag" : "block", si->consumers, si->queue_depth, si->routed,
		       si->delivered, si->lagged, si->completed, si->retried, si->dead_lettered);
	}
}

static void print_metrics(const struct snapshot *s)
{
	const shmbus_metrics_t *m = &s->m;

	if (s->mrc < 0) {
		printf("  shmbus_get_metrics: %s\n", strerror(-s->mrc));
		return;
	}
	printf("  published   %" PRIu64 " events, %" PRIu64 " payload bytes; next sequence %" PRIu64 "\n",
	       m->published, m->publish_bytes, m->next_seq);
	printf("  routed      %" PRIu64 " deliveries; delivered %" PRIu64 ", filtered %" PRIu64 ", lagged %" PRIu64
	       "\n",
	       m->routed, m->delivered, m->filtered, m->lagged);
	printf("  publishers  waited for space %" PRIu64 " times, gave up %" PRIu64 " times; demotions %" PRIu64 "\n",
	       m->block_waits, m->block_timeouts, m->demotions);
	printf("  recovery    %" PRIu64 " members reclaimed, %" PRIu64 " claims aborted, %" PRIu64
	       " events recovered, %" PRIu64 " redelivered\n",
	       m->reclaims, m->aborted_claims, m->recovered_events, m->redelivered);
	printf("  ring        %" PRIu64 " of %" PRIu64 " slots in use; members %u, subscriptions %u\n", m->ring_used,
	       m->ring_slots, m->members, m->subscriptions);
}

/*
 * Creates the bus. One that exists with no live process attached - stale
 * (its processes died), idle (they all left, e.g. after --keep) or never
 * finished - is replaced: it is the demo's and holds nothing anyone waits
 * for. A bus a live process uses is left alone. Reports its own failures.
 */
static int create_bus(const shmbus_config_t *cfg, shmbus_bus_t **bus)
{
	const shmbus_open_opts_t opts = { .label = "shmbus-demo" };
	shmbus_bus_entry_t *list = NULL;
	int rc, n, cap = 64, alive = -1;

	rc = shmbus_create(g_bus_name, cfg, &opts, bus);
	if (rc == -EEXIST) {
		for (;;) {
			shmbus_bus_entry_t *grown = realloc(list, (size_t)cap * sizeof(*list));

			if (!grown) {
				free(list);
				return -ENOMEM;
			}
			list = grown;
			n = shmbus_list_buses(list, (size_t)cap);
			if (n <= cap)
				break;
			cap = n;
		}
		for (int i = 0; i < n; i++)
			if (strcmp(list[i].name, g_bus_name) == 0)
				alive = (int)list[i].alive;
		free(list);
		if (alive != 0) {
			fprintf(stderr, "shmbus-demo: bus %s exists and %s; see `shmbus info %s`, or pick another name\n",
				g_bus_name, alive > 0 ? "a live process uses it" : "is not one this library lists",
				g_bus_name);
			return -EEXIST;
		}
		printf("Replacing bus %s: no live process is attached to it\n", g_bus_name);
		rc = shmbus_unlink(g_bus_name);
		if (rc == 0 || rc == -ENOENT)
			rc = shmbus_create(g_bus_name, cfg, &opts, bus);
	}
	/* A new bus: logs left under its name belong to an older incarnation
	 * (the recorder would refuse them), not to it. */
	if (rc == 0)
		shmbus_log_remove(g_bus_name, NULL);
	if (rc < 0)
		fprintf(stderr, "shmbus-demo: create %s: %s (%s)\n", g_bus_name, strerror(-rc), shmbus_errmsg());
	return rc;
}

/* Runs `shm-dump BUS` from the directory this binary lives in. */
static int run_dump(void)
{
	char exe[PATH_MAX], path[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	uint64_t deadline;
	char *slash;
	int status;

	if (n < 0) {
		fprintf(stderr, "shmbus-demo: /proc/self/exe: %s\n", strerror(errno));
		return -1;
	}
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	snprintf(path, sizeof(path), "%.*s/shm-dump", slash ? (int)(slash - exe) : 1, slash ? exe : ".");
	if (access(path, X_OK) != 0) {
		fprintf(stderr, "shmbus-demo: %s: %s\n", path, strerror(errno));
		return -1;
	}
	printf("\n$ shm-dump %s\n", g_bus_name);
	fflush(stdout);
	g_dump_pid = fork();
	if (g_dump_pid < 0) {
		fprintf(stderr, "shmbus-demo: fork: %s\n", strerror(errno));
		return -1;
	}
	if (g_dump_pid == 0) {
		execl(path, path, g_bus_name, (char *)NULL);
		fprintf(stderr, "shmbus-demo: exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	deadline = clock_ns(CLOCK_MONOTONIC) + DUMP_TIMEOUT_NS;
	while (waitpid(g_dump_pid, &status, WNOHANG) == 0) {
		if (g_stop || clock_ns(CLOCK_MONOTONIC) >= deadline) {
			kill(g_dump_pid, SIGKILL);
			waitpid(g_dump_pid, &status, 0);
			fprintf(stderr, "shmbus-demo: shm-dump %s\n", g_stop ? "interrupted" : "did not finish in time");
			g_dump_pid = -1;
			return -1;
		}
		sleep_ns(5 * NS_PER_MS);
	}
	g_dump_pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "shmbus-demo: shm-dump failed (wait status %#x)\n", (unsigned)status);
		return -1;
	}
	return 0;
}

/* Every way out of the parent: agents reaped, the bus removed (unless
 * --keep). Children return early: the bus is not theirs to remove. */
static void cleanup(void)
{
	if (getpid() != g_parent_pid)
		return;
	if (g_dump_pid > 0) {
		kill(g_dump_pid, SIGKILL);
		waitpid(g_dump_pid, NULL, 0);
		g_dump_pid = -1;
	}
	stop_agents();
	if (g_bus_exists && !g_keep) {
		shmbus_unlink(g_bus_name);
		shmbus_log_remove(g_bus_name, NULL);
	}
	g_bus_exists = false;
}

static void on_signal(int sig)
{
	g_stop = sig;
}

/*
 * Waits (relaying reports) until shipping has settled both shipments - one
 * delivered, one dead-lettered - with nothing running or waiting for a retry.
 */
static bool wait_shipping_settled(shmbus_bus_t *bus)
{
	const uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + SHUTDOWN_TIMEOUT_NS;

	while (!g_stop && clock_ns(CLOCK_MONOTONIC) < deadline) {
		shmbus_sub_info_t si;

		if (shmbus_list_subscriptions(bus, "shipping", &si, 1) == 1 && si.completed + si.dead_lettered >= 2 &&
		    !si.processing && !si.retrying)
			return true;
		pump(0, EXITED, 10 * NS_PER_MS);
	}
	fprintf(stderr, "shmbus-demo: shipping did not settle its shipments within %llu s\n",
		SHUTDOWN_TIMEOUT_NS / NS_PER_S);
	return false;
}

/* Reads the event log back from disk: everything the bus published, and
 * one event found by id. Returns whether the log holds every event. */
static bool print_from_log(shmbus_bus_t *bus)
{
	const shmbus_event_t *evs[64], *got;
	shmbus_query_t all = { 0 }, shipped = { .name = "shipped" };
	shmbus_metrics_t m;
	char id[SHMBUS_UUID_STR];
	int64_t n = shmbus_get_events(bus, &all, evs, 64);

	printf("\nThe log on disk (shmbus get / shmbus events read the same)\n");
	if (n < 0 || shmbus_get_metrics(bus, &m) < 0) {
		printf("  %s\n", shmbus_errmsg());
		return false;
	}
	printf("  get_events(all): %" PRId64 " events, #%" PRIu64 " to #%" PRIu64 ", of %" PRIu64 " published\n", n,
	       n ? shmbus_event_seq(evs[0]) : 0, n ? shmbus_event_seq(evs[n < 64 ? n - 1 : 63]) : 0, m.published);
	if (shmbus_get_events(bus, &shipped, evs, 1) == 1 && shmbus_get_event(bus, shmbus_event_id(evs[0]), &got) == 0) {
		char data[96];
		shmbus_uuid_format(shmbus_event_id(got), id);
		payload_text(got, data, sizeof(data));
		printf("  get_event(%s): #%" PRIu64 " %s %s from %s, caused by #%" PRIu64 ": %s\n", id,
		       shmbus_event_seq(got), shmbus_type_name(shmbus_event_type(got)), shmbus_event_name(got),
		       shmbus_event_source(got), id_seq(shmbus_event_causation_id(got)), data);
	}
	return (uint64_t)n == m.published;
}

/* The dead-letter queue: what could not be handled, and why. */
static void print_dead_letters(shmbus_bus_t *bus)
{
	shmbus_dead_letter_t dl[8];
	char dir[PATH_MAX];
	int n = shmbus_dlq_list(bus, dl, 8);

	if (shmbus_log_dir(bus, dir, sizeof(dir)) < 0)
		snprintf(dir, sizeof(dir), "?");
	printf("\nDead letters (%s/dead.log)\n", dir);
	if (n < 0) {
		printf("  shmbus_dlq_list: %s\n", shmbus_errmsg());
		return;
	}
	for (int i = 0; i < n && i < 8; i++) {
		char data[96];

		payload_text(dl[i].event, data, sizeof(data));
		printf("  #%-4" PRIu64 " %-8s %-9s for %-9s after %u attempts, last error %s: %s\n",
		       shmbus_event_seq(dl[i].event), shmbus_event_name(dl[i].event),
		       dl[i].reason == SHMBUS_DEAD_FAILED	 ? "failed"
		       : dl[i].reason == SHMBUS_DEAD_EXPIRED	 ? "expired"
		       : dl[i].reason == SHMBUS_DEAD_ABANDONED ? "abandoned"
							 : "unrouted",
		       dl[i].subscriber_id, dl[i].attempts, strerror(-dl[i].last_error), data);
	}
	if (n == 0)
		printf("  (none)\n");
}

static int send_shutdown(shmbus_pub_t *pub, const char *agent)
{
	shmbus_uuid_t id;
	int rc = shmbus_publish_command(pub, "shutdown", NULL, agent, &id);

	if (rc < 0) {
		fprintf(stderr, "shmbus-demo: shutdown %s: %s (%s)\n", agent, strerror(-rc), shmbus_errmsg());
		return -1;
	}
	printf("  %9.3f ms  %-9s  command #%" PRIu64 " shutdown -> %s\n", since_start_ms(), "demo", id_seq(&id), agent);
	return 0;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: shmbus-demo [--keep] [BUS]\n"
		     "Runs recorder, inventory, pricing, shipping, orders and auditor agents as\n"
		     "processes on bus BUS\n"
		     "(default \"demo\"), prints what they do, the event log, the metrics and\n"
		     "`shm-dump BUS`, then removes the bus unless --keep.\n");
}

int main(int argc, char **argv)
{
	const shmbus_config_t cfg = {
		.slots = 1024,
		.slot_size = 256,
		.max_payload = 4096,
		.max_subscribers = 16,
		.max_members = 16,
	};
	struct sigaction sa = { .sa_handler = on_signal };
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	shmbus_sub_t *audit_sub = NULL;
	static struct snapshot busy, done;
	shmbus_config_t actual;
	int fds[2], rc;
	bool ok = true, named = false;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--keep") == 0) {
			g_keep = true;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (argv[i][0] == '-' || named) {
			fprintf(stderr, "shmbus-demo: unexpected argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		} else {
			g_bus_name = argv[i];
			named = true;
		}
	}
	if (shmbus_name_check(g_bus_name) < 0) {
		fprintf(stderr, "shmbus-demo: bad bus name '%s': want [A-Za-z0-9._-]{1,%d}\n", g_bus_name,
			SHMBUS_NAME_MAX);
		return 2;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	g_parent_pid = getpid();
	g_t0_mono = clock_ns(CLOCK_MONOTONIC);
	g_t0_real = clock_ns(CLOCK_REALTIME);
	atexit(cleanup);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (create_bus(&cfg, &bus) < 0)
		return 1;
	g_bus_exists = true;
	shmbus_bus_config(bus, &actual);
	printf("Bus %s: /dev/shm/shmbus.%s, %u slots of %u bytes, up to %u subscriptions and %u members\n",
	       g_bus_name, g_bus_name, actual.slots, actual.slot_size, actual.max_subscribers, actual.max_members);

	/* The auditor's subscription exists before any agent runs, so it
	 * queues every event even if the auditor process attaches late. */
	rc = shmbus_subscribe(bus,
			      &(shmbus_sub_opts_t){ .subscriber_id = "auditor", .durable = true,
						    .policy = SHMBUS_POLICY_LAG },
			      &audit_sub);
	if (rc < 0) {
		fprintf(stderr, "shmbus-demo: durable subscription: %s (%s)\n", strerror(-rc), shmbus_errmsg());
		return 1;
	}
	shmbus_sub_close(audit_sub);
	rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){ .source = "demo" }, &pub);
	if (rc < 0) {
		fprintf(stderr, "shmbus-demo: publisher: %s (%s)\n", strerror(-rc), shmbus_errmsg());
		return 1;
	}
	if (pipe2(fds, O_CLOEXEC) < 0) {
		fprintf(stderr, "shmbus-demo: pipe: %s\n", strerror(errno));
		return 1;
	}
	g_relay.fd = fds[0];

	printf("\nAgents (time since start, agent, what it did)\n");
	for (int i = AG_RECORDER; i <= AG_AUDITOR && ok; i++)
		ok = spawn(&g_agents[i], fds[0], fds[1]) == 0;
	if (ok && !(pump(AG_SERVICES, READY, READY_TIMEOUT_NS) && reached(AG_SERVICES, READY))) {
		fprintf(stderr, "shmbus-demo: agents were not ready within %llu s\n", READY_TIMEOUT_NS / NS_PER_S);
		ok = false;
	}
	for (int i = AG_RECORDER; i <= AG_AUDITOR && ok; i++)
		if (g_agents[i].exited) {
			fprintf(stderr, "shmbus-demo: %s ended before the orders began\n", g_agents[i].name);
			ok = false;
		}
	if (ok)
		ok = spawn(&g_agents[AG_ORDERS], fds[0], fds[1]) == 0;
	close(fds[1]); /* the pipe reaches EOF once every agent is gone */
	if (ok && !pump(AG_BIT(AG_ORDERS), EXITED, ORDERS_TIMEOUT_NS)) {
		fprintf(stderr, "shmbus-demo: orders did not finish within %llu s\n", ORDERS_TIMEOUT_NS / NS_PER_S);
		ok = false;
	}
	/* Inventory and pricing leave first; the auditor last, so its log
	 * holds everything they published, its own shutdown command included. */
	if (!g_stop) {
		/* shipping finishes its retries first: the last one is due
		 * within 20 + 40 + 80 ms of the order */
		if (!wait_shipping_settled(bus))
			ok = false;
		take_snapshot(bus, &busy);
		if (send_shutdown(pub, "inventory") < 0 || send_shutdown(pub, "pricing") < 0 ||
		    send_shutdown(pub, "shipping") < 0 ||
		    !pump(AG_BIT(AG_INVENTORY) | AG_BIT(AG_PRICING) | AG_BIT(AG_SHIPPING), EXITED, SHUTDOWN_TIMEOUT_NS))
			ok = false;
		if (send_shutdown(pub, "auditor") < 0 || !pump(AG_BIT(AG_AUDITOR), EXITED, SHUTDOWN_TIMEOUT_NS))
			ok = false;
		/* the recorder goes last, once everything is on disk */
		shmbus_metrics_t m;
		if (shmbus_get_metrics(bus, &m) == 0 && m.next_seq &&
		    (rc = shmbus_wait_durable(bus, m.next_seq - 1, (int64_t)SHUTDOWN_TIMEOUT_NS)) < 0) {
			fprintf(stderr, "shmbus-demo: the log did not catch up: %s\n", shmbus_errmsg());
			ok = false;
		}
	} else {
		take_snapshot(bus, &busy);
	}
	stop_agents();
	relay_until_eof(NS_PER_S);
	if (g_stop) {
		fprintf(stderr, "shmbus-demo: interrupted by signal %d\n", (int)g_stop);
		exit(128 + g_stop);
	}

	for (int i = 0; i < AG_COUNT; i++) {
		char how[96];

		if (g_agents[i].pid < 0 || agent_ok(&g_agents[i]))
			continue;
		describe_exit(&g_agents[i], how, sizeof(how));
		fprintf(stderr, "shmbus-demo: agent %s failed: %s, %u errors reported\n", g_agents[i].name, how,
			g_agents[i].errors);
		ok = false;
	}
	print_audit_log();
	if (!print_from_log(bus))
		ok = false;
	print_dead_letters(bus);
	take_snapshot(bus, &done);
	printf("\nAfter the orders (the services still attached)\n");
	print_subscriptions(&busy);
	print_metrics(&busy);
	printf("\nAfter the agents left (plain subscriptions and their counters went with them)\n");
	print_subscriptions(&done);
	print_metrics(&done);
	if (done.mrc < 0) {
		ok = false;
	} else if (g_relay.audit_count != done.m.published) {
		fprintf(stderr, "shmbus-demo: the auditor logged %zu events, the bus published %" PRIu64 "\n",
			g_relay.audit_count, done.m.published);
		ok = false;
	}
	if (run_dump() < 0)
		ok = false;

	shmbus_pub_close(pub);
	shmbus_close(bus);
	if (!g_keep) {
		shmbus_log_remove(g_bus_name, NULL);
		rc = shmbus_unlink(g_bus_name);
		if (rc < 0) {
			fprintf(stderr, "shmbus-demo: remove %s: %s (%s)\n", g_bus_name, strerror(-rc), shmbus_errmsg());
			ok = false;
		}
		g_bus_exists = false;
	}
	printf("\n%s: %s; bus %s %s\n", ok ? "OK" : "FAILED",
	       ok ? "every agent succeeded and every event was audited" : "see the errors above", g_bus_name,
	       g_keep ? "kept (shmbus rm to remove it)" : "removed");
	return ok ? 0 : 1;
}
