/*
 * cmd_log.c - `shmbus get`, `events`, `replay`, `dlq` and `record`: the
 * durable log, replay and dead letters from the command line.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "cmd.h"
#include "event_json.h"

enum { L_TYPE = 300, L_NAME, L_SOURCE, L_TARGET, L_SINCE, L_UNTIL, L_LIMIT, L_JSON, L_TO, L_REPUBLISH, L_DIR, L_SYNC,
       L_SEGMENT, L_RETAIN_BYTES, L_RETAIN_AGE, L_RETAIN_FORCE, L_BATCH };

#define CRITERIA_OPTIONS                                                                                        \
	{"type", required_argument, NULL, L_TYPE}, {"name", required_argument, NULL, L_NAME},                   \
		{"source", required_argument, NULL, L_SOURCE}, {"target", required_argument, NULL, L_TARGET},   \
		{"since", required_argument, NULL, L_SINCE}, {"until", required_argument, NULL, L_UNTIL},       \
		{"limit", required_argument, NULL, L_LIMIT}

/*
 * A point in time: RFC 3339 UTC ("2026-11-27T10:00:00Z", fractions
 * allowed), or a duration meaning that long ago ("10m"). 0 or -EINVAL.
 */
static int parse_time(const char *s, uint64_t *ns)
{
	uint64_t d;
	struct timespec now;
	if (cli_parse_duration(s, &d) == 0) {
		clock_gettime(CLOCK_REALTIME, &now);
		uint64_t t = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
		*ns = d < t ? t - d : 1;
		return 0;
	}
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!rest)
		return -EINVAL;
	uint64_t frac = 0, scale = 1000000000ull;
	if (*rest == '.') {
		rest++;
		while (*rest >= '0' && *rest <= '9') {
			if (scale > 1) {
				scale /= 10;
				frac += (uint64_t)(*rest - '0') * scale;
			}
			rest++;
		}
	}
	if (strcmp(rest, "Z") != 0)
		return -EINVAL;
	time_t secs = timegm(&tm);
	if (secs < 0)
		return -EINVAL;
	*ns = (uint64_t)secs * 1000000000ull + frac;
	return 0;
}

/* One criteria option into q (strings point into argv). 0 or exit code. */
static int take_criterion(const char *cmd, int c, const char *arg, shmbus_query_t *q)
{
	switch (c) {
	case L_TYPE: {
		int t = shmbus_type_parse(arg);
		if (t < 0)
			return usage_error(cmd, "--type: '%s' is not command|notification|query|response|error", arg);
		q->types |= SHMBUS_TYPE_BIT(t);
		return 0;
	}
	case L_NAME:
	case L_SOURCE:
	case L_TARGET: {
		/* as pub and sub: no event carries a longer string, and a
		 * query for one is a mistake, not a search that finds nothing */
		const char *opt = c == L_NAME ? "--name" : c == L_SOURCE ? "--source" : "--target";
		if (strlen(arg) > SHMBUS_STR_MAX)
			return usage_error(cmd, "%s: '%.20s...' is longer than %d bytes", opt, arg, SHMBUS_STR_MAX);
		*(c == L_NAME ? &q->name : c == L_SOURCE ? &q->source : &q->target) = arg;
		return 0;
	}
	case L_SINCE:
	case L_UNTIL: {
		uint64_t ns;
		if (parse_time(arg, &ns) < 0)
			return usage_error(cmd, "%s: '%s' is neither an RFC 3339 UTC time nor a duration ago",
					   c == L_SINCE ? "--since" : "--until", arg);
		*(c == L_SINCE ? &q->since_ns : &q->until_ns) = ns;
		return 0;
	}
	case L_LIMIT: {
		uint64_t n;
		if (cli_parse_u64(arg, 1, UINT32_MAX, &n) < 0)
			return usage_error(cmd, "--limit must be a count in [1, 4294967295], not '%s'", arg);
		q->limit = (size_t)n;
		return 0;
	}
	default:
		return usage_error(cmd, "unexpected option");
	}
}

struct printer {
	const char *cmd;
	bool json;
	int rc;
};

static bool print_one(const shmbus_event_t *ev, void *arg)
{
	struct printer *p = arg;
	shmbus_inspect_event_t v;
	event_view_from_event(ev, &v);
	int rc;
	if (p->json) {
		json_t *j = event_json(&v);
		rc = j ? json_print_line(stdout, j) : -ENOMEM;
		json_decref(j);
	} else {
		rc = event_print_line(stdout, &v);
	}
	if (rc < 0) {
		p->rc = rc;
		cli_output_failed(p->cmd, -rc);
		return false;
	}
	return true;
}

/* Say what damage the log met, under the command's name. What was found
 * is printed still, but a command that met damage (a damaged record, a
 * segment of another bus) did not do all it was asked: rc, or
 * EXIT_RUNTIME in place of a success, as shm-dump does. */
static int report_damage(shmbus_bus_t *bus, const char *cmd, int rc)
{
	size_t n = shmbus_log_damage_count(bus);
	for (size_t i = 0; i < n; i++)
		cli_error(cmd, "%s", shmbus_log_damage(bus, i));
	return n && rc == 0 ? EXIT_RUNTIME : rc;
}

/* get NAME EVENT_ID [--json]: one event from the log. */
int cmd_get(int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, L_JSON}, {NULL, 0, NULL, 0}};
	struct printer p = {0};
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c != L_JSON)
			return bad_option("get", c, argv);
		p.json = true;
	}
	if (argc - optind < 2)
		return usage_error("get", "missing %s", argc - optind ? "event id" : "bus name");
	if ((rc = want_positionals("get", argc, argv, 2)))
		return rc;
	shmbus_uuid_t id;
	if (shmbus_uuid_parse(argv[optind + 1], &id) < 0)
		return usage_error("get", "'%s' is not an event id (a UUID)", argv[optind + 1]);
	shmbus_bus_t *bus;
	if ((rc = open_bus("get", argv[optind], &bus)))
		return rc;
	const shmbus_event_t *ev;
	rc = shmbus_get_event(bus, &id, &ev);
	if (rc < 0)
		rc = cli_lib_error("get", rc);
	else
		rc = print_one(ev, &p) ? 0 : EXIT_RUNTIME;
	rc = report_damage(bus, "get", rc);
	shmbus_close(bus);
	return rc;
}

static int parse_criteria_cmd(const char *cmd, int argc, char **argv, shmbus_query_t *q, bool *json, const char **to,
			      bool *republish)
{
	static const struct option opts[] = {CRITERIA_OPTIONS,
					     {"json", no_argument, NULL, L_JSON},
					     {"to", required_argument, NULL, L_TO},
					     {"republish", no_argument, NULL, L_REPUBLISH},
					     {NULL, 0, NULL, 0}};
	int c, rc;
	bool replay = strcmp(cmd, "replay") == 0;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c == '?' || c == ':')
			return bad_option(cmd, c, argv);
		if (c == L_JSON && !replay)
			*json = true;
		else if (c == L_TO && replay)
			*to = optarg;
		else if (c == L_REPUBLISH && replay)
			*republish = true;
		else if (c >= L_TYPE && c <= L_LIMIT) {
			if ((rc = take_criterion(cmd, c, optarg, q)))
				return rc;
		} else
			return usage_error(cmd, "unknown option %s", argv[optind - 1]);
	}
	return want_positionals(cmd, argc, argv, 1);
}

/* events NAME [criteria] [--json]: matching events from the log. */
int cmd_events(int argc, char **argv)
{
	shmbus_query_t q = {0};
	struct printer p = {0};
	int rc = parse_criteria_cmd("events", argc, argv, &q, &p.json, NULL, NULL);
	if (rc)
		return rc;
	shmbus_bus_t *bus;
	if ((rc = open_bus("events", argv[optind], &bus)))
		return rc;
	int64_t n = shmbus_log_scan(bus, &q, print_one, &p);
	rc = n < 0 ? cli_lib_error("events", (int)n) : p.rc < 0 ? EXIT_RUNTIME : 0;
	rc = report_damage(bus, "events", rc);
	shmbus_close(bus);
	return rc;
}

/* replay NAME [criteria] (--to SUBSCRIBER | --republish). */
int cmd_replay(int argc, char **argv)
{
	shmbus_query_t q = {0};
	const char *to = NULL;
	bool republish = false;
	int rc = parse_criteria_cmd("replay", argc, argv, &q, NULL, &to, &republish);
	if (rc)
		return rc;
	if (!to == !republish)
		return usage_error("replay", "give exactly one of --to SUBSCRIBER and --republish");
	shmbus_bus_t *bus;
	if ((rc = open_bus("replay", argv[optind], &bus)))
		return rc;
	int64_t n;
	if (to) {
		shmbus_sub_id_t id;
		n = shmbus_find_subscription(bus, to, &id);
		if (n == 0)
			n = shmbus_replay_to(bus, &q, id);
	} else {
		shmbus_pub_t *pub;
		n = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.source = "shmbus-replay"}, &pub);
		if (n == 0) {
			n = shmbus_replay_republish(pub, &q);
			shmbus_pub_close(pub);
		}
	}
	if (n < 0)
		rc = cli_lib_error("replay", (int)n);
	else
		printf("replayed %lld events\n", (long long)n);
	rc = report_damage(bus, "replay", rc);
	shmbus_close(bus);
	return rc;
}

static const char *reason_name(shmbus_dead_reason_t r)
{
	switch (r) {
	case SHMBUS_DEAD_FAILED:
		return "failed";
	case SHMBUS_DEAD_EXPIRED:
		return "expired";
	case SHMBUS_DEAD_NO_SUBSCRIBER:
		return "no_subscriber";
	case SHMBUS_DEAD_ABANDONED:
		return "abandoned";
	default:
		return "unknown";
	}
}

static int dlq_ls(shmbus_bus_t *bus, bool json)
{
	int n = shmbus_dlq_list(bus, NULL, 0);
	if (n < 0)
		return cli_lib_error("dlq", n);
	shmbus_dead_letter_t *dl = calloc((size_t)n + 1, sizeof *dl);
	if (!dl)
		return cli_lib_error("dlq", -ENOMEM);
	int got = shmbus_dlq_list(bus, dl, (size_t)n);
	int rc = got < 0 ? cli_lib_error("dlq", got) : 0;
	for (int i = 0; rc == 0 && i < got && i < n; i++) {
		char id[SHMBUS_UUID_STR], when[40];
		shmbus_uuid_format(&dl[i].event_id, id);
		event_format_time(dl[i].dead_ns, when);
		if (json) {
			shmbus_inspect_event_t v;
			event_view_from_event(dl[i].event, &v);
			rc = emit_json("dlq", json_add(json_object(), "event_id", json_string(id), "subscription",
						       json_integer((json_int_t)dl[i].sub), "subscriber_id",
						       json_text(dl[i].subscriber_id), "group",
						       dl[i].group[0] ? json_text(dl[i].group) : json_null(),
						       "reason", json_string(reason_name(dl[i].reason)), "attempts",
						       json_integer(dl[i].attempts), "last_error",
						       json_integer(dl[i].last_error), "dead_at", json_string(when), "event",
						       event_json(&v), NULL));
		} else {
			char sub[80];
			printf("%s %s %s attempts=%u last_error=%d sub=%s %s\n", id, when, reason_name(dl[i].reason),
			       dl[i].attempts, dl[i].last_error,
			       text_safe(dl[i].group[0] ? dl[i].group : dl[i].subscriber_id, sub, sizeof sub),
			       shmbus_event_name(dl[i].event));
		}
	}
	free(dl);
	return rc;
}

/* dlq NAME ls [--json] | retry EVENT_ID | clear EVENT_ID */
int cmd_dlq(int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, L_JSON}, {NULL, 0, NULL, 0}};
	bool json = false;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c != L_JSON)
			return bad_option("dlq", c, argv);
		json = true;
	}
	int have = argc - optind;
	if (have < 2)
		return usage_error("dlq", "missing %s", have ? "action (ls, retry or clear)" : "bus name");
	const char *action = argv[optind + 1];
	bool ls = strcmp(action, "ls") == 0;
	if (!ls && strcmp(action, "retry") != 0 && strcmp(action, "clear") != 0)
		return usage_error("dlq", "unknown action '%s' (ls, retry or clear)", action);
	if (ls && have != 2)
		return usage_error("dlq", "unexpected argument '%s'", argv[optind + 2]);
	if (!ls && have != 3)
		return usage_error("dlq", have < 3 ? "%s needs an event id" : "unexpected argument after %s", action);
	shmbus_uuid_t id;
	if (!ls && shmbus_uuid_parse(argv[optind + 2], &id) < 0)
		return usage_error("dlq", "'%s' is not an event id (a UUID)", argv[optind + 2]);
	if (!ls && json)
		return usage_error("dlq", "--json goes with ls");
	shmbus_bus_t *bus;
	if ((rc = open_bus("dlq", argv[optind], &bus)))
		return rc;
	if (ls)
		rc = dlq_ls(bus, json);
	else if ((rc = action[0] == 'r' ? shmbus_dlq_retry(bus, &id) : shmbus_dlq_clear(bus, &id)) < 0)
		rc = cli_lib_error("dlq", rc);
	rc = report_damage(bus, "dlq", rc);
	shmbus_close(bus);
	return rc;
}

static shmbus_recorder_t *volatile recorder;
static volatile sig_atomic_t stop_asked;

static void on_stop(int sig)
{
	(void)sig;
	stop_asked = 1;
	shmbus_recorder_stop(recorder);
}

/* How often a standby recorder tries to take over. */
#define STANDBY_POLL_NS 50000000L

/*
 * Become the recorder of bus, or stand by until the current one goes:
 * polled, not a blocking wait for the lock, so that a SIGINT or SIGTERM
 * that comes at any moment, even just before the wait would begin, ends
 * it (stop_asked). 0 and *out, 1 when stopped first, or -errno.
 */
static int open_or_stand_by(shmbus_bus_t *bus, shmbus_record_opts_t *o, shmbus_recorder_t **out)
{
	bool told = false;
	o->no_wait = true;
	for (;;) {
		int rc = shmbus_recorder_open(bus, o, out);
		if (rc != -EBUSY)
			return rc;
		if (!told) {
			fprintf(stderr, "shmbus: record: %s; standing by until it goes\n", shmbus_errmsg());
			told = true;
		}
		if (stop_asked)
			return 1;
		/* a stop while asleep is seen by the next round, or, should
		 * that round take the role, by the caller */
		nanosleep(&(struct timespec){0, STANDBY_POLL_NS}, NULL);
	}
}

int parse_sync_level(const char *arg, shmbus_sync_t *out)
{
	if (!strcmp(arg, "none"))
		*out = SHMBUS_SYNC_NONE;
	else if (!strcmp(arg, "batch"))
		*out = SHMBUS_SYNC_BATCH;
	else if (!strcmp(arg, "always"))
		*out = SHMBUS_SYNC_ALWAYS;
	else
		return -EINVAL;
	return 0;
}

/* record NAME [--dir DIR] [--sync none|batch|always] [--segment-size B]
 * [--retain-bytes B] [--retain-age DURATION] [--retain-force] [--batch-ms N]:
 * be the bus's recorder until SIGINT/SIGTERM. */
int cmd_record(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dir", required_argument, NULL, L_DIR},
		{"sync", required_argument, NULL, L_SYNC},
		{"segment-size", required_argument, NULL, L_SEGMENT},
		{"retain-bytes", required_argument, NULL, L_RETAIN_BYTES},
		{"retain-age", required_argument, NULL, L_RETAIN_AGE},
		{"retain-force", no_argument, NULL, L_RETAIN_FORCE},
		{"batch-ms", required_argument, NULL, L_BATCH},
		{NULL, 0, NULL, 0},
	};
	shmbus_record_opts_t o = {0};
	uint64_t v;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case L_DIR:
			if (optarg[0] != '/')
				return usage_error("record", "--dir must be an absolute path, not '%s'", optarg);
			o.dir = optarg;
			break;
		case L_SYNC:
			if (parse_sync_level(optarg, &o.sync) < 0)
				return usage_error("record", "--sync must be none, batch or always, not '%s'", optarg);
			break;
		case L_SEGMENT:
			if (cli_parse_size(optarg, 4ull << 30, &v) < 0 || v < (64u << 10))
				return usage_error("record", "--segment-size must be a size in [64k, 4G], not '%s'", optarg);
			o.segment_bytes = v;
			break;
		case L_RETAIN_BYTES:
			if (cli_parse_size(optarg, UINT64_MAX >> 1, &v) < 0)
				return usage_error("record", "--retain-bytes must be a size, not '%s'", optarg);
			o.retain_bytes = v;
			break;
		case L_RETAIN_AGE:
			if (cli_parse_duration(optarg, &v) < 0)
				return usage_error("record", "--retain-age must be a duration, not '%s'", optarg);
			o.retain_ns = v;
			break;
		case L_RETAIN_FORCE:
			o.retain_force = true;
			break;
		case L_BATCH:
			if (cli_parse_u64(optarg, 1, 60000, &v) < 0)
				return usage_error("record", "--batch-ms must be in [1, 60000], not '%s'", optarg);
			o.batch_ms = (uint32_t)v;
			break;
		default:
			return bad_option("record", c, argv);
		}
	}
	if ((rc = want_positionals("record", argc, argv, 1)))
		return rc;
	shmbus_bus_t *bus;
	if ((rc = open_bus("record", argv[optind], &bus)))
		return rc;
	/* --dir becomes the bus's log root, so that get, events, replay, dlq
	 * and rm find what is recorded there; a bus that logs elsewhere
	 * already refuses it */
	if (o.dir && (rc = shmbus_log_configure(bus, &(shmbus_log_config_t){.dir = o.dir})) < 0) {
		rc = cli_lib_error("record", rc);
		shmbus_close(bus);
		return rc;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	shmbus_recorder_t *rec;
	rc = open_or_stand_by(bus, &o, &rec);
	if (rc != 0) {
		if (rc > 0)
			fprintf(stderr, "shmbus: record: stopped while standing by\n");
		rc = rc > 0 ? 0 : cli_lib_error("record", rc);
		shmbus_close(bus);
		return rc;
	}
	recorder = rec;
	if (stop_asked) /* came before `recorder` was set */
		shmbus_recorder_stop(rec);
	int64_t n = shmbus_recorder_run(rec, -1);
	recorder = NULL;
	shmbus_recorder_stats_t s;
	shmbus_recorder_stats(rec, &s);
	rc = n < 0 ? cli_lib_error("record", (int)n) : 0;
	shmbus_recorder_close(rec);
	fprintf(stderr, "shmbus: record: %llu events recorded, %llu missed, next sequence %llu\n",
		(unsigned long long)s.recorded, (unsigned long long)s.missed, (unsigned long long)s.next_seq);
	shmbus_close(bus);
	return rc;
}
