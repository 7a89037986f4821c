/*
 * shmbus.c - the command line: create, list, inspect, remove and collect
 * buses, publish and subscribe, and read the live counters.
 *
 * Every argument is checked here before the library sees it, so a typo is
 * a usage error (exit 2) with a message naming the argument, while what
 * the library refuses at run time is a runtime failure (exit 1) with its
 * own explanation (shmbus_errmsg). Output meant for scripts is one JSON
 * object per line (--json), built with jansson.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "cmd.h"
#include "event_json.h"
#include "shmbus.h"
#include "sub_exec.h"

static volatile sig_atomic_t stop_requested;

/* Async-signal-safe: only records that a stop was asked for. */
static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* SIGINT/SIGTERM only set a flag; without SA_RESTART a sleeping wait
 * returns early, so the loops can close their handles cleanly. */
static void install_stop_handlers(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* ---------------------------------------------------------------- usage */

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *usage;
};

/* The command table entry for `name`, or NULL (defined below the table). */
static const struct command *find_command(const char *name);

static const char usage_text[] = "usage: shmbus COMMAND [ARGS]\n"
				 "\n"
				 "  create NAME [--slots N] [--slot-size B] [--max-payload B] [--max-subscribers N]\n"
				 "              [--max-members N] [--mode OCTAL] [--log-dir DIR] [--sync none|batch|always]\n"
				 "              [--dead-letter-unrouted]\n"
				 "  ls [--json]\n"
				 "  info NAME [--json]\n"
				 "  rm NAME [--keep-log]\n"
				 "  gc\n"
				 "  pub NAME --type TYPE --name EVENT [--source ID] [--target ID]\n"
				 "           [--priority low|normal|high|critical] [--correlation-id UUID]\n"
				 "           [--causation-id UUID] [--ttl DURATION] [--max-retries N]\n"
				 "           [--data JSON | --data-file FILE] [--meta KEY=VALUE]...\n"
				 "           [--conversation-id ID] [--user-id ID] [--intent TEXT]\n"
				 "           [--decision-id ID] [--confidence 0..1]\n"
				 "           [--count N] [--print-id] [--timeout DURATION]\n"
				 "  sub NAME [--id SUBSCRIBER] [--durable] [--group G] [--policy block|lag]\n"
				 "           [--type T,..] [--name N,..] [--source S,..] [--target T,..]\n"
				 "           [--min-priority P] [--pattern REGEX] [--count N]\n"
				 "           [--timeout DURATION] [--json]\n"
				 "           [--exec CMD [--concurrency N] [--max-retries N] [--retry-base DURATION]]\n"
				 "  stat NAME [--json | --prometheus] [--watch SECONDS]\n"
				 "  get NAME EVENT_ID [--json]\n"
				 "  events NAME [--type T] [--name N] [--source S] [--target T] [--since TIME]\n"
				 "              [--until TIME] [--limit N] [--json]\n"
				 "  replay NAME [same criteria] (--to SUBSCRIBER | --republish)\n"
				 "  dlq NAME ls [--json] | retry EVENT_ID | clear EVENT_ID\n"
				 "  record NAME [--dir DIR] [--sync none|batch|always] [--segment-size B]\n"
				 "              [--retain-bytes B] [--retain-age DURATION] [--retain-force] [--batch-ms N]\n"
				 "\n"
				 "TYPE is command|notification|query|response|error. NAME is a bus name,\n"
				 "1-64 characters of [A-Za-z0-9._-] but not '.' or '..'. B accepts k/M/G (KiB, MiB, GiB).\n"
				 "DURATION is a number with a suffix ns, us, ms, s, m or h; a bare number\n"
				 "means seconds (pub --timeout 0: fail at once instead of waiting).\n"
				 "Exit status: 0 success, 1 runtime failure, 2 usage error.\n";

/* A usage error of `cmd`: the message, then the command's synopsis. */
__attribute__((format(printf, 2, 3))) int usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	cli_error(cmd, "%s", msg);
	const struct command *c = find_command(cmd);
	if (c)
		fprintf(stderr, "usage: shmbus %s%s%s\n", c->name, *c->usage ? " " : "", c->usage);
	return EXIT_USAGE;
}

/* What getopt_long could not accept: an unknown option or a missing value. */
int bad_option(const char *cmd, int c, char **argv)
{
	const char *arg = argv[optind - 1];
	if (c == ':')
		return usage_error(cmd, "option %s needs a value", arg);
	return usage_error(cmd, "unknown option %s", arg);
}

/*
 * Exactly `n` positional arguments must remain after the options.
 * Returns 0 or a usage error.
 */
int want_positionals(const char *cmd, int argc, char **argv, int n)
{
	int have = argc - optind;
	if (have < n)
		return usage_error(cmd, "missing bus name");
	if (have > n)
		return usage_error(cmd, "unexpected argument '%s'", argv[optind + n]);
	return 0;
}

/* Whether `name` is a valid bus name: 0, or a usage error naming the rule. */
int check_bus_name(const char *cmd, const char *name)
{
	int rc = shmbus_name_check(name);
	if (rc == -ENAMETOOLONG)
		return usage_error(cmd, "bus name too long (at most %d characters)", SHMBUS_NAME_MAX);
	if (rc < 0 && (strcmp(name, ".") == 0 || strcmp(name, "..") == 0))
		return usage_error(cmd, "invalid bus name '%s': '.' and '..' are not bus names", name);
	if (rc < 0)
		return usage_error(cmd, "invalid bus name '%s': use 1-%d of [A-Za-z0-9._-]", name, SHMBUS_NAME_MAX);
	return 0;
}

/* Open bus `name` as member labelled "shmbus <cmd>". 0 or an exit code. */
int open_bus(const char *cmd, const char *name, shmbus_bus_t **bus)
{
	char label[SHMBUS_ID_MAX + 1];
	int rc = check_bus_name(cmd, name);
	if (rc)
		return rc;
	snprintf(label, sizeof label, "shmbus %s", cmd);
	shmbus_open_opts_t opts = {.label = label};
	rc = shmbus_open(name, &opts, bus);
	if (rc < 0)
		return cli_lib_error(cmd, rc);
	return 0;
}

/* Write a JSON value as one line and drop it; a NULL value means jansson
 * ran out of memory. 0 or an exit code. */
int emit_json(const char *cmd, json_t *j)
{
	int rc = j ? json_print_line(stdout, j) : -ENOMEM;
	json_decref(j);
	if (rc == 0 && fflush(stdout) == EOF)
		rc = errno ? -errno : -EIO;
	if (rc < 0)
		return cli_output_failed(cmd, -rc);
	return 0;
}

/* A counter as a JSON integer (counters stay below 2^63 in practice). */
static json_t *ju(uint64_t v) { return json_integer((json_int_t)v); }

/* --------------------------------------------------------------- create */

/*
 * One option of `create` into the config; every limit is checked here so a
 * typo is a usage error before the library sees it. 0 or exit code.
 */
static int parse_create_option(int c, const char *arg, shmbus_config_t *cfg)
{
	uint64_t v;
	switch (c) {
	case 's':
		if (cli_parse_u32(arg, 64, 1u << 22, &cfg->slots) < 0 || (cfg->slots & (cfg->slots - 1)))
			return usage_error("create", "--slots must be a power of two in [64, 4194304], not '%s'", arg);
		return 0;
	case 'z':
		if (cli_parse_size(arg, 65536, &v) < 0 || v < 256 || (v & (v - 1)))
			return usage_error("create", "--slot-size must be a power of two in [256, 65536], not '%s'",
					   arg);
		cfg->slot_size = (uint32_t)v;
		return 0;
	case 'p':
		if (cli_parse_size(arg, 1u << 30, &v) < 0 || v == 0)
			return usage_error("create", "--max-payload must be a size in [1, 1G], not '%s'", arg);
		cfg->max_payload = (uint32_t)v;
		return 0;
	case 'S':
		if (cli_parse_u32(arg, 1, 256, &cfg->max_subscribers) < 0)
			return usage_error("create", "--max-subscribers must be in [1, 256], not '%s'", arg);
		return 0;
	case 'M':
		if (cli_parse_u32(arg, 2, 255, &cfg->max_members) < 0)
			return usage_error("create", "--max-members must be in [2, 255], not '%s'", arg);
		return 0;
	case 'o': {
		char *end;
		errno = 0;
		unsigned long m = strtoul(arg, &end, 8);
		if (!*arg || *end || errno || m > 0777 || arg[0] == '-' || arg[0] == '+' || arg[0] == ' ')
			return usage_error("create", "--mode must be octal permission bits (e.g. 0660), not '%s'", arg);
		cfg->mode = (uint32_t)m;
		return 0;
	}
	case 'U':
		cfg->dead_letter_unrouted = true;
		return 0;
	default:
		return usage_error("create", "unexpected option");
	}
}

/*
 * create NAME [sizes]: create the bus and detach; the segment stays.
 * A size combination the library refuses (-EINVAL) is a usage error.
 */
static int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{"slots", required_argument, NULL, 's'},
		{"slot-size", required_argument, NULL, 'z'},
		{"max-payload", required_argument, NULL, 'p'},
		{"max-subscribers", required_argument, NULL, 'S'},
		{"max-members", required_argument, NULL, 'M'},
		{"mode", required_argument, NULL, 'o'},
		{"log-dir", required_argument, NULL, 'L'},
		{"sync", required_argument, NULL, 'Y'},
		{"dead-letter-unrouted", no_argument, NULL, 'U'},
		{NULL, 0, NULL, 0},
	};
	shmbus_config_t cfg = {0};
	shmbus_log_config_t lc = {0};
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c == '?' || c == ':')
			return bad_option("create", c, argv);
		if (c == 'L') {
			if (optarg[0] != '/')
				return usage_error("create", "--log-dir must be an absolute path, not '%s'", optarg);
			lc.dir = optarg;
		} else if (c == 'Y') {
			if (parse_sync_level(optarg, &lc.sync) < 0)
				return usage_error("create", "--sync must be none, batch or always, not '%s'", optarg);
		} else if ((rc = parse_create_option(c, optarg, &cfg))) {
			return rc;
		}
	}
	if ((rc = want_positionals("create", argc, argv, 1)) || (rc = check_bus_name("create", argv[optind])))
		return rc;
	const char *name = argv[optind];
	shmbus_bus_t *bus;
	shmbus_open_opts_t oo = {.label = "shmbus create"};
	rc = shmbus_create(name, &cfg, &oo, &bus);
	if (rc == -EINVAL) /* the combination of sizes was refused */
		return usage_error("create", "%s", shmbus_errmsg());
	if (rc < 0)
		return cli_lib_error("create", rc);
	if ((lc.dir || lc.sync) && (rc = shmbus_log_configure(bus, &lc)) < 0) {
		rc = cli_lib_error("create", rc);
		shmbus_close(bus);
		shmbus_unlink(name);
		return rc;
	}
	shmbus_close(bus);
	return 0;
}

/* ------------------------------------------------------------------- ls */

/*
 * ls [--json]: every bus in /dev/shm with its members and whether it is
 * stale (no live member) or invalid. The list is re-read if it grew between
 * the sizing call and the filling call.
 */
static int cmd_ls(int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
	bool json = false;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c == '?' || c == ':')
			return bad_option("ls", c, argv);
		json = true;
	}
	if (optind < argc)
		return usage_error("ls", "unexpected argument '%s'", argv[optind]);
	shmbus_bus_entry_t *list = NULL;
	int n = shmbus_list_buses(NULL, 0);
	for (int tries = 0; n >= 0 && tries < 4; tries++) {
		size_t cap = (size_t)n + 8;
		free(list);
		if (!(list = calloc(cap, sizeof *list)))
			return cli_lib_error("ls", -ENOMEM);
		n = shmbus_list_buses(list, cap);
		if (n >= 0 && (size_t)n <= cap)
			break;
	}
	if (n < 0) {
		free(list);
		return cli_lib_error("ls", n);
	}
	if (!json && n > 0)
		printf("%-24s %12s %7s %5s  %s\n", "NAME", "SIZE", "MEMBERS", "ALIVE", "STATE");
	rc = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		const shmbus_bus_entry_t *e = &list[i];
		const char *state = !e->valid ? "invalid" : e->stale ? "stale" : "ok";
		if (json)
			rc = emit_json("ls", json_add(json_object(), "name", json_text(e->name), "size", ju(e->size), "members",
						      ju(e->members), "alive", ju(e->alive), "stale",
						      json_boolean(e->stale), "valid", json_boolean(e->valid), NULL));
		else
			printf("%-24s %12llu %7u %5u  %s\n", e->name, (unsigned long long)e->size, e->members, e->alive,
			       state);
	}
	free(list);
	return rc;
}

/* ------------------------------------------------------------ info/stat */

static const char *sync_name(shmbus_sync_t s)
{
	return s == SHMBUS_SYNC_NONE ? "none" : s == SHMBUS_SYNC_ALWAYS ? "always" : "batch";
}

/* The bus configuration as a JSON object (NULL when out of memory), with
 * its log's directory (null if too long to name) and sync level. */
static json_t *config_json(const shmbus_config_t *c, const char *log_dir, shmbus_sync_t log_sync)
{
	return json_add(json_object(), "slots", ju(c->slots), "slot_size", ju(c->slot_size), "max_payload", ju(c->max_payload),
			"max_subscribers", ju(c->max_subscribers), "max_members", ju(c->max_members), "mode",
			ju(c->mode), "block_timeout_ns", ju(c->block_timeout_ns), "stall_timeout_ns",
			ju(c->stall_timeout_ns), "reclaim_timeout_ns", ju(c->reclaim_timeout_ns), "dead_letter_unrouted",
			json_boolean(c->dead_letter_unrouted), "log_dir", *log_dir ? json_text(log_dir) : json_null(),
			"log_sync", json_string(sync_name(log_sync)), NULL);
}

/* shmbus_get_metrics as a JSON object (NULL when out of memory). */
static json_t *metrics_json(const shmbus_metrics_t *m)
{
	return json_add(json_object(), "published", ju(m->published), "publish_bytes", ju(m->publish_bytes), "routed", ju(m->routed),
			"delivered", ju(m->delivered), "filtered", ju(m->filtered), "lagged", ju(m->lagged),
			"block_waits", ju(m->block_waits), "block_timeouts", ju(m->block_timeouts), "demotions",
			ju(m->demotions), "reclaims", ju(m->reclaims), "aborted_claims", ju(m->aborted_claims),
			"recovered_events", ju(m->recovered_events), "redelivered", ju(m->redelivered), "ring_slots",
			ju(m->ring_slots), "ring_used", ju(m->ring_used), "members", ju(m->members), "subscriptions",
			ju(m->subscriptions), "next_seq", ju(m->next_seq), "processing", ju(m->processing), "retrying",
			ju(m->retrying), "completed", ju(m->completed), "failed", ju(m->failed), "retried",
			ju(m->retried), "dead_lettered", ju(m->dead_lettered), "expired", ju(m->expired),
			"late_responses", ju(m->late_responses), NULL);
}

/* One subscription's identity and counters as a JSON object. */
static json_t *sub_json(const shmbus_sub_info_t *s)
{
	return json_add(json_object(), "id", ju(s->id), "subscriber_id", json_text(s->subscriber_id), "durable",
			json_boolean(s->durable), "group", s->group[0] ? json_text(s->group) : json_null(), "policy",
			json_string(s->policy == SHMBUS_POLICY_LAG ? "lag" : "block"), "paused",
			json_boolean(s->paused), "demoted", json_boolean(s->demoted), "consumers", ju(s->consumers),
			"queue_depth", ju(s->queue_depth), "held", ju(s->held), "routed", ju(s->routed), "delivered",
			ju(s->delivered), "filtered", ju(s->filtered), "lagged", ju(s->lagged), "demotions",
			ju(s->demotions), "redelivered", ju(s->redelivered), "revoked", ju(s->revoked), "processing",
			ju(s->processing), "retrying", ju(s->retrying), "completed", ju(s->completed), "failed",
			ju(s->failed), "retried", ju(s->retried), "dead_lettered", ju(s->dead_lettered), "expired",
			ju(s->expired), "late_responses", ju(s->late_responses), NULL);
}

/* One member (attached process) as a JSON object. */
static json_t *member_json(const shmbus_member_info_t *m)
{
	char when[40];
	event_format_time(m->attach_ns, when);
	return json_add(json_object(), "index", ju(m->index), "pid", ju(m->pid), "alive", json_boolean(m->alive), "label",
			json_text(m->label), "attached_at", m->attach_ns ? json_string(when) : json_null(), NULL);
}

/* Everything `info` and `stat` show, read once. */
struct snapshot {
	shmbus_config_t config;
	char log_dir[1024];	/* <root>/<bus>: where its log is, or would be */
	shmbus_sync_t log_sync; /* its recorders' sync level */
	shmbus_metrics_t metrics;
	shmbus_member_info_t *members;
	size_t member_count;
	shmbus_sub_info_t *subs;
	size_t sub_count;
};

/* Free the lists of a snapshot; safe on a zeroed one. */
static void snapshot_free(struct snapshot *s)
{
	free(s->members);
	free(s->subs);
	memset(s, 0, sizeof *s);
}

/*
 * Read config, metrics, members and subscriptions. Lists are sized from the
 * config's limits, so one call each suffices. Our own member entry (this
 * very process, attached only to look) is left out of the members.
 * Returns 0 or -errno.
 */
static int snapshot_take(shmbus_bus_t *bus, struct snapshot *s)
{
	memset(s, 0, sizeof *s);
	shmbus_bus_config(bus, &s->config);
	if (shmbus_log_dir(bus, s->log_dir, sizeof s->log_dir) < 0)
		s->log_dir[0] = '\0';
	s->log_sync = shmbus_log_sync(bus);
	int rc = shmbus_get_metrics(bus, &s->metrics);
	if (rc < 0)
		return rc;
	size_t mcap = s->config.max_members ? s->config.max_members : 255;
	size_t scap = s->config.max_subscribers ? s->config.max_subscribers : 256;
	s->members = calloc(mcap, sizeof *s->members);
	s->subs = calloc(scap, sizeof *s->subs);
	if (!s->members || !s->subs) {
		snapshot_free(s);
		return -ENOMEM;
	}
	int n = shmbus_list_members(bus, s->members, mcap);
	if (n < 0) {
		snapshot_free(s);
		return n;
	}
	for (size_t i = 0; i < (size_t)n && i < mcap; i++)
		if (!(s->members[i].pid == (uint32_t)getpid() && s->members[i].alive))
			s->members[s->member_count++] = s->members[i];
	n = shmbus_list_subscriptions(bus, NULL, s->subs, scap);
	if (n < 0) {
		snapshot_free(s);
		return n;
	}
	s->sub_count = (size_t)n < scap ? (size_t)n : scap;
	return 0;
}

/*
 * `info --json` (with_config: name, config, members, subscriptions, metrics)
 * or one `stat --json` sample (bus, time, metrics, subscriptions).
 */
static json_t *snapshot_json(const char *name, const struct snapshot *s, bool with_config)
{
	json_t *members = json_array(), *subs = json_array();
	for (size_t i = 0; members && i < s->member_count; i++)
		if (json_array_append_new(members, member_json(&s->members[i])) < 0)
			json_decref(members), members = NULL;
	for (size_t i = 0; subs && i < s->sub_count; i++)
		if (json_array_append_new(subs, sub_json(&s->subs[i])) < 0)
			json_decref(subs), subs = NULL;
	if (!with_config) {
		char now[40];
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		event_format_time((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec, now);
		json_decref(members);
		return json_add(json_object(), "bus", json_text(name), "time", json_string(now), "metrics", metrics_json(&s->metrics),
				"subscriptions", subs, NULL);
	}
	return json_add(json_object(), "name", json_text(name), "config", config_json(&s->config, s->log_dir, s->log_sync), "members", members, "subscriptions",
			subs, "metrics", metrics_json(&s->metrics), NULL);
}

/* One subscription on one line, for info and stat. */
static void print_sub_line(const shmbus_sub_info_t *s)
{
	char sid[SHMBUS_ID_MAX + 1], grp[SHMBUS_ID_MAX + 1];
	printf("  %-20llu %-20s %-6s %-5s%s%s group=%s depth=%llu held=%llu delivered=%llu lagged=%llu "
	       "consumers=%u\n",
	       (unsigned long long)s->id, text_safe(s->subscriber_id, sid, sizeof sid),
	       s->policy == SHMBUS_POLICY_LAG ? "lag" : "block", s->durable ? "dur" : "-", s->paused ? " paused" : "",
	       s->demoted ? " demoted" : "", s->group[0] ? text_safe(s->group, grp, sizeof grp) : "-",
	       (unsigned long long)s->queue_depth, (unsigned long long)s->held, (unsigned long long)s->delivered,
	       (unsigned long long)s->lagged, s->consumers);
}

/* The human form of `info`. */
static void print_info(const char *name, const struct snapshot *s)
{
	const shmbus_config_t *c = &s->config;
	const shmbus_metrics_t *m = &s->metrics;
	printf("bus %s\n", name);
	printf("config: slots=%u slot_size=%u max_payload=%u max_subscribers=%u max_members=%u mode=0%o\n", c->slots,
	       c->slot_size, c->max_payload, c->max_subscribers, c->max_members, c->mode);
	printf("        block_timeout=%.3fs stall_timeout=%.3fs reclaim_timeout=%.3fs%s\n",
	       (double)c->block_timeout_ns / 1e9, (double)c->stall_timeout_ns / 1e9,
	       (double)c->reclaim_timeout_ns / 1e9, c->dead_letter_unrouted ? " dead_letter_unrouted" : "");
	printf("log: %s sync=%s\n", *s->log_dir ? s->log_dir : "(name too long)", sync_name(s->log_sync));
	printf("ring: %llu/%llu slots in use, next seq %llu, published %llu\n", (unsigned long long)m->ring_used,
	       (unsigned long long)m->ring_slots, (unsigned long long)m->next_seq, (unsigned long long)m->published);
	printf("members (%zu):\n", s->member_count);
	for (size_t i = 0; i < s->member_count; i++) {
		char label[SHMBUS_ID_MAX + 1];
		const shmbus_member_info_t *mi = &s->members[i];
		printf("  [%u] pid %u %s %s\n", mi->index, mi->pid, mi->alive ? "alive" : "dead",
		       text_safe(mi->label, label, sizeof label));
	}
	printf("subscriptions (%zu):\n", s->sub_count);
	for (size_t i = 0; i < s->sub_count; i++)
		print_sub_line(&s->subs[i]);
}

/* info NAME [--json]: config, members (without ourselves), subscriptions. */
static int cmd_info(int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
	bool json = false;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c == '?' || c == ':')
			return bad_option("info", c, argv);
		json = true;
	}
	if ((rc = want_positionals("info", argc, argv, 1)))
		return rc;
	shmbus_bus_t *bus;
	if ((rc = open_bus("info", argv[optind], &bus)))
		return rc;
	struct snapshot s;
	rc = snapshot_take(bus, &s);
	if (rc < 0) {
		shmbus_close(bus);
		return cli_lib_error("info", rc);
	}
	if (json)
		rc = emit_json("info", snapshot_json(argv[optind], &s, true));
	else
		print_info(argv[optind], &s);
	snapshot_free(&s);
	shmbus_close(bus);
	return rc;
}

/* Prometheus label values escape backslash, quote and newline. */
static void prom_escape(const char *s, char *out, size_t cap)
{
	size_t n = 0;
	for (; *s && n + 3 < cap; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n') {
			out[n++] = '\\';
			out[n++] = *s == '\n' ? 'n' : *s;
		} else {
			out[n++] = *s;
		}
	}
	out[n] = '\0';
}

/* One Prometheus metric family with a single sample. */
static void prom_metric(const char *name, const char *type, const char *help, const char *labels, uint64_t v)
{
	printf("# HELP shmbus_%s %s\n# TYPE shmbus_%s %s\nshmbus_%s{%s} %llu\n", name, help, name, type, name, labels,
	       (unsigned long long)v);
}

/*
 * Prometheus text exposition: shmbus_* families labelled by bus, and
 * per-subscription families labelled by subscription id and subscriber.
 */
static void print_prometheus(const char *name, const struct snapshot *s)
{
	const shmbus_metrics_t *m = &s->metrics;
	char bus[160];
	char esc[2 * SHMBUS_NAME_MAX + 2];
	prom_escape(name, esc, sizeof esc);
	snprintf(bus, sizeof bus, "bus=\"%s\"", esc);
	const struct {
		const char *name, *type, *help;
		uint64_t v;
	} bm[] = {
		{"published_total", "counter", "Events committed.", m->published},
		{"publish_bytes_total", "counter", "Payload bytes committed.", m->publish_bytes},
		{"routed_total", "counter", "Deliveries queued, summed over subscriptions.", m->routed},
		{"delivered_total", "counter", "Events delivered to consumers.", m->delivered},
		{"filtered_total", "counter", "Events dropped by a subscriber-side predicate.", m->filtered},
		{"lagged_total", "counter", "Events missed by lagging subscriptions.", m->lagged},
		{"block_waits_total", "counter", "Publishes that waited for space.", m->block_waits},
		{"block_timeouts_total", "counter", "Publishes that gave up waiting.", m->block_timeouts},
		{"demotions_total", "counter", "Stalled block subscriptions demoted.", m->demotions},
		{"reclaims_total", "counter", "Dead members reclaimed.", m->reclaims},
		{"aborted_claims_total", "counter", "Claims aborted.", m->aborted_claims},
		{"recovered_events_total", "counter", "Events recovered from dead members.", m->recovered_events},
		{"redelivered_total", "counter", "Events redelivered after a consumer died.", m->redelivered},
		{"ring_slots", "gauge", "Slots in the event ring.", m->ring_slots},
		{"ring_used_slots", "gauge", "Ring slots not reusable now.", m->ring_used},
		{"members", "gauge", "Attached members.", m->members},
		{"subscriptions", "gauge", "Subscriptions.", m->subscriptions},
		{"next_seq", "gauge", "Next bus sequence number.", m->next_seq},
		{"handlers_processing", "gauge", "Dispatcher handlers running now.", m->processing},
		{"events_retrying", "gauge", "Events waiting for a handler retry.", m->retrying},
		{"handled_total", "counter", "Handler runs that succeeded.", m->completed},
		{"handler_failures_total", "counter", "Handler runs that failed.", m->failed},
		{"retries_total", "counter", "Handler runs that were retries.", m->retried},
		{"dead_lettered_total", "counter", "Events sent to the dead-letter queue.", m->dead_lettered},
		{"expired_total", "counter", "Events dead-lettered because they expired.", m->expired},
		{"late_responses_total", "counter", "Responses that came after their request gave up.", m->late_responses},
	};
	for (size_t i = 0; i < sizeof bm / sizeof bm[0]; i++)
		prom_metric(bm[i].name, bm[i].type, bm[i].help, bus, bm[i].v);
	static const char *const sub_metrics[][3] = {
		{"subscription_queue_depth", "gauge", "Events queued, not yet delivered."},
		{"subscription_held", "gauge", "Events delivered, not yet released."},
		{"subscription_routed_total", "counter", "Events routed to the subscription."},
		{"subscription_delivered_total", "counter", "Events delivered."},
		{"subscription_filtered_total", "counter", "Events dropped by its predicate."},
		{"subscription_lagged_total", "counter", "Events missed."},
		{"subscription_demotions_total", "counter", "Times demoted."},
		{"subscription_redelivered_total", "counter", "Events redelivered."},
		{"subscription_revoked_total", "counter", "Held events revoked."},
		{"subscription_processing", "gauge", "Handlers running now."},
		{"subscription_retrying", "gauge", "Events waiting for a retry."},
		{"subscription_handled_total", "counter", "Handler runs that succeeded."},
		{"subscription_handler_failures_total", "counter", "Handler runs that failed."},
		{"subscription_retries_total", "counter", "Handler runs that were retries."},
		{"subscription_dead_lettered_total", "counter", "Events dead-lettered."},
		{"subscription_expired_total", "counter", "Events dead-lettered because they expired."},
	};
	for (size_t k = 0; k < sizeof sub_metrics / sizeof sub_metrics[0]; k++) {
		printf("# HELP shmbus_%s %s\n# TYPE shmbus_%s %s\n", sub_metrics[k][0], sub_metrics[k][2],
		       sub_metrics[k][0], sub_metrics[k][1]);
		for (size_t i = 0; i < s->sub_count; i++) {
			const shmbus_sub_info_t *si = &s->subs[i];
			uint64_t v[] = {si->queue_depth, si->held,	   si->routed,	  si->delivered,
					si->filtered,	 si->lagged,	   si->demotions, si->redelivered,
					si->revoked,	 si->processing,   si->retrying,  si->completed,
					si->failed,	 si->retried,	   si->dead_lettered, si->expired};
			char sid[2 * SHMBUS_ID_MAX + 2];
			prom_escape(si->subscriber_id, sid, sizeof sid);
			printf("shmbus_%s{%s,subscription=\"%llu\",subscriber=\"%s\"} %llu\n", sub_metrics[k][0], bus,
			       (unsigned long long)si->id, sid, (unsigned long long)v[k]);
		}
	}
}

/* The human form of one `stat` sample. */
static void print_stat(const char *name, const struct snapshot *s)
{
	const shmbus_metrics_t *m = &s->metrics;
	printf("bus %s: published=%llu bytes=%llu routed=%llu delivered=%llu filtered=%llu lagged=%llu\n", name,
	       (unsigned long long)m->published, (unsigned long long)m->publish_bytes, (unsigned long long)m->routed,
	       (unsigned long long)m->delivered, (unsigned long long)m->filtered, (unsigned long long)m->lagged);
	printf("  block_waits=%llu block_timeouts=%llu demotions=%llu reclaims=%llu aborted_claims=%llu "
	       "recovered=%llu redelivered=%llu\n",
	       (unsigned long long)m->block_waits, (unsigned long long)m->block_timeouts,
	       (unsigned long long)m->demotions, (unsigned long long)m->reclaims, (unsigned long long)m->aborted_claims,
	       (unsigned long long)m->recovered_events, (unsigned long long)m->redelivered);
	printf("  ring %llu/%llu used, members=%u subscriptions=%u next_seq=%llu\n", (unsigned long long)m->ring_used,
	       (unsigned long long)m->ring_slots, m->members, m->subscriptions, (unsigned long long)m->next_seq);
	printf("  handlers: processing=%llu retrying=%llu completed=%llu failed=%llu retried=%llu dead_lettered=%llu "
	       "expired=%llu late_responses=%llu\n",
	       (unsigned long long)m->processing, (unsigned long long)m->retrying, (unsigned long long)m->completed,
	       (unsigned long long)m->failed, (unsigned long long)m->retried, (unsigned long long)m->dead_lettered,
	       (unsigned long long)m->expired, (unsigned long long)m->late_responses);
	for (size_t i = 0; i < s->sub_count; i++)
		print_sub_line(&s->subs[i]);
}

enum stat_format { STAT_HUMAN, STAT_JSON, STAT_PROMETHEUS };

/* Sleep ns unless a stop signal arrives first. */
static void sleep_interruptible(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
	while (!stop_requested && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Take and print one sample in the chosen format. 0 or exit code. */
static int stat_once(const char *name, shmbus_bus_t *bus, enum stat_format fmt)
{
	struct snapshot s;
	int rc = snapshot_take(bus, &s);
	if (rc < 0)
		return cli_lib_error("stat", rc);
	if (fmt == STAT_JSON) {
		rc = emit_json("stat", snapshot_json(name, &s, false));
	} else {
		if (fmt == STAT_PROMETHEUS)
			print_prometheus(name, &s);
		else
			print_stat(name, &s);
		if (fflush(stdout) == EOF)
			rc = cli_output_failed("stat", errno);
	}
	snapshot_free(&s);
	return rc;
}

/*
 * stat NAME [--json|--prometheus] [--watch D]: one sample, or one every D
 * until SIGINT/SIGTERM (then exit 0).
 */
static int cmd_stat(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"prometheus", no_argument, NULL, 'P'},
		{"watch", required_argument, NULL, 'w'},
		{NULL, 0, NULL, 0},
	};
	enum stat_format fmt = STAT_HUMAN;
	uint64_t watch_ns = 0;
	int c, rc, formats = 0;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c == '?' || c == ':')
			return bad_option("stat", c, argv);
		if (c == 'j' || c == 'P') {
			fmt = c == 'j' ? STAT_JSON : STAT_PROMETHEUS;
			formats++;
		} else if (cli_parse_duration(optarg, &watch_ns) < 0 || watch_ns < 1000000) {
			return usage_error("stat", "--watch must be a duration of at least 1ms, not '%s'", optarg);
		}
	}
	if (formats > 1)
		return usage_error("stat", "--json and --prometheus exclude each other");
	if ((rc = want_positionals("stat", argc, argv, 1)))
		return rc;
	shmbus_bus_t *bus;
	if ((rc = open_bus("stat", argv[optind], &bus)))
		return rc;
	install_stop_handlers();
	do {
		rc = stat_once(argv[optind], bus, fmt);
		if (rc || !watch_ns)
			break;
		sleep_interruptible(watch_ns);
		if (!stop_requested && fmt == STAT_HUMAN)
			printf("\n");
	} while (!stop_requested);
	shmbus_close(bus);
	return rc;
}

/* ---------------------------------------------------------------- rm, gc */

/* rm NAME [--keep-log]: unlink the bus and remove its log directory (its
 * log belongs to this incarnation only); processes attached keep their
 * mapping. */
static int cmd_rm(int argc, char **argv)
{
	static const struct option opts[] = {{"keep-log", no_argument, NULL, 'k'}, {NULL, 0, NULL, 0}};
	bool keep = false;
	int c, rc;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		if (c != 'k')
			return bad_option("rm", c, argv);
		keep = true;
	}
	if ((rc = want_positionals("rm", argc, argv, 1)) || (rc = check_bus_name("rm", argv[optind])))
		return rc;
	char dir[4096] = "";
	shmbus_bus_t *bus;
	/* the log's place is in the segment: find it before the segment goes;
	 * a directory that also holds a log kept from an earlier bus of this
	 * name (rm --keep-log) is left as it is */
	if (!keep && shmbus_open(argv[optind], &(shmbus_open_opts_t){.label = "shmbus rm"}, &bus) == 0) {
		if (shmbus_log_dir(bus, dir, sizeof dir) < 0)
			dir[0] = '\0';
		if (dir[0] && shmbus_log_owned(bus) == 0) {
			fprintf(stderr, "shmbus: rm: log directory '%s' holds another bus's log (kept with --keep-log?): "
					"left in place\n",
				dir);
			dir[0] = '\0';
		}
		shmbus_close(bus);
	}
	rc = shmbus_unlink(argv[optind]);
	if (rc < 0)
		return cli_lib_error("rm", rc);
	char *slash = strrchr(dir, '/');
	if (!keep && slash) {
		*slash = '\0';
		rc = shmbus_log_remove(argv[optind], dir[0] ? dir : "/");
		if (rc < 0 && rc != -ENOENT)
			return cli_lib_error("rm", rc);
	}
	return 0;
}

/* gc: remove every stale bus and say how many went. */
static int cmd_gc(int argc, char **argv)
{
	static const struct option opts[] = {{NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1)
		return bad_option("gc", c, argv);
	if (optind < argc)
		return usage_error("gc", "unexpected argument '%s'", argv[optind]);
	int n = shmbus_gc();
	if (n < 0)
		return cli_lib_error("gc", n);
	printf("removed %d stale bus%s\n", n, n == 1 ? "" : "es");
	return 0;
}

/* ------------------------------------------------------------------ pub */

struct pub_args {
	shmbus_msg_t msg;
	shmbus_uuid_t correlation, causation;
	shmbus_meta_t meta[SHMBUS_META_MAX];
	char *payload_buf;
	const char *data_file; /* --data-file, read once the bus's max_payload is known */
	uint64_t count;
	bool print_id;
	bool has_timeout;
	uint64_t timeout_ns;
};

/* A string option with a length limit; empty is refused too. */
static int take_string(const char *opt, const char *arg, size_t max, const char **out)
{
	size_t n = strlen(arg);
	if (n == 0)
		return usage_error("pub", "%s must not be empty", opt);
	if (n > max)
		return usage_error("pub", "%s is %zu bytes, at most %zu are allowed", opt, n, max);
	*out = arg;
	return 0;
}

/* Strict JSON check with jansson; the error names line, column and position. */
static int check_json(const char *what, const char *text, size_t len)
{
	json_error_t err;
	json_t *j = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
	if (j) {
		json_decref(j);
		return 0;
	}
	return usage_error("pub", "%s: invalid JSON at line %d column %d (position %d): %s", what, err.line, err.column,
			   err.position, err.text);
}

/*
 * --data-file: the payload is the file's bytes. Content that parses as JSON
 * is sent as JSON, anything else as binary; a *.json file must parse (usage
 * error with the position otherwise). Read once the bus is open, no
 * further than its max_payload: a bigger file (or /dev/zero) is refused
 * after that many bytes, not read whole first. 0 or exit code.
 */
static int take_data_file(struct pub_args *a, const char *path, uint32_t max_payload)
{
	size_t len;
	int rc = cli_read_file(path, max_payload, &a->payload_buf, &len);
	if (rc == -EFBIG) {
		cli_error("pub", "--data-file %s: more than the bus's max_payload of %u bytes", path, max_payload);
		return EXIT_RUNTIME;
	}
	if (rc < 0) {
		cli_error("pub", "--data-file %s: %s", path, strerror(-rc));
		return EXIT_RUNTIME;
	}
	a->msg.payload = a->payload_buf;
	a->msg.payload_len = len;
	size_t plen = strlen(path);
	bool says_json = plen > 5 && strcmp(path + plen - 5, ".json") == 0;
	if (says_json) { /* a file that says it is JSON must be JSON */
		if (check_json("--data-file", a->payload_buf, len))
			return EXIT_USAGE;
		a->msg.content_type = SHMBUS_CONTENT_JSON;
		return 0;
	}
	json_t *j = json_loadb(a->payload_buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
	a->msg.content_type = j ? SHMBUS_CONTENT_JSON : SHMBUS_CONTENT_BINARY;
	json_decref(j);
	return 0;
}

/* --meta KEY=VALUE, checked against the metadata limits. 0 or exit code. */
static int take_meta(struct pub_args *a, const char *arg)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg)
		return usage_error("pub", "--meta wants KEY=VALUE, not '%s'", arg);
	size_t klen = (size_t)(eq - arg);
	if (klen > SHMBUS_META_KEY_MAX || strlen(eq + 1) > SHMBUS_META_VALUE_MAX)
		return usage_error("pub", "--meta '%.*s': key at most %d bytes, value at most %d", (int)klen, arg,
				   SHMBUS_META_KEY_MAX, SHMBUS_META_VALUE_MAX);
	if (a->msg.metadata_count >= SHMBUS_META_MAX)
		return usage_error("pub", "at most %d --meta pairs", SHMBUS_META_MAX);
	/* JSON keeps one value per key: a second would be lost on the way */
	for (size_t i = 0; i < a->msg.metadata_count; i++)
		if (strlen(a->meta[i].key) == klen && memcmp(a->meta[i].key, arg, klen) == 0)
			return usage_error("pub", "--meta key '%.*s' given twice", (int)klen, arg);
	char *key = strndup(arg, klen);
	if (!key)
		return cli_lib_error("pub", -ENOMEM);
	a->meta[a->msg.metadata_count].key = key;
	a->meta[a->msg.metadata_count].value = eq + 1;
	a->msg.metadata_count++;
	a->msg.metadata = a->meta;
	return 0;
}

/* A UUID option into *id, with *out pointing at it. 0 or exit code. */
static int take_uuid(const char *opt, const char *arg, shmbus_uuid_t *id, const shmbus_uuid_t **out)
{
	if (shmbus_uuid_parse(arg, id) < 0)
		return usage_error("pub", "%s: '%s' is not a UUID (8-4-4-4-12 hex digits)", opt, arg);
	*out = id;
	return 0;
}

enum {
	O_TYPE = 256,
	O_NAME,
	O_SOURCE,
	O_TARGET,
	O_PRIORITY,
	O_CORR,
	O_CAUS,
	O_TTL,
	O_MAXRET,
	O_DATA,
	O_DATAFILE,
	O_COUNT,
	O_PRINTID,
	O_TIMEOUT,
	O_META,
	O_CONV,
	O_USER,
	O_INTENT,
	O_DECISION,
	O_CONF,
	O_ID,
	O_DURABLE,
	O_GROUP,
	O_POLICY,
	O_MINPRIO,
	O_PATTERN,
	O_JSON,
	O_EXEC,
	O_CONCURRENCY,
	O_RETRY_BASE,
};

/* The numeric options of `pub` (durations, counts, confidence). 0 or exit code. */
static int take_number_option(struct pub_args *a, int c, const char *arg)
{
	uint32_t v32;
	switch (c) {
	case O_TTL:
		if (cli_parse_duration(arg, &a->msg.ttl_ns) < 0)
			return usage_error("pub", "--ttl: '%s' is not a duration (e.g. 500ms, 30s, 5m)", arg);
		return 0;
	case O_MAXRET:
		if (cli_parse_u32(arg, 0, 255, &v32) < 0)
			return usage_error("pub", "--max-retries must be in [0, 255], not '%s'", arg);
		a->msg.max_retries = (uint8_t)v32;
		return 0;
	case O_COUNT:
		if (cli_parse_u64(arg, 1, UINT32_MAX, &a->count) < 0)
			return usage_error("pub", "--count must be in [1, %u], not '%s'", UINT32_MAX, arg);
		return 0;
	case O_TIMEOUT:
		if (cli_parse_duration(arg, &a->timeout_ns) < 0 || a->timeout_ns > INT64_MAX)
			return usage_error("pub", "--timeout: '%s' is not a duration (e.g. 500ms, 2s)", arg);
		a->has_timeout = true;
		return 0;
	case O_CONF: {
		char *end;
		double d = strtod(arg, &end);
		if (!*arg || *end || !(d >= 0.0 && d <= 1.0))
			return usage_error("pub", "--confidence must be a number in [0, 1], not '%s'", arg);
		a->msg.has_confidence = true;
		a->msg.confidence = (float)d;
		return 0;
	}
	default:
		return usage_error("pub", "unexpected option");
	}
}

/* One option of `pub` into the message. 0 or exit code. */
static int take_pub_option(struct pub_args *a, int c, const char *arg)
{
	int v;
	switch (c) {
	case O_TYPE:
		if ((v = shmbus_type_parse(arg)) < 0)
			return usage_error("pub", "unknown --type '%s' (command|notification|query|response|error)",
					   arg);
		a->msg.type = (shmbus_type_t)v;
		return 0;
	case O_PRIORITY:
		if ((v = shmbus_priority_parse(arg)) < 0)
			return usage_error("pub", "unknown --priority '%s' (low|normal|high|critical)", arg);
		a->msg.priority = (shmbus_priority_t)v;
		return 0;
	case O_NAME:
		return take_string("--name", arg, SHMBUS_STR_MAX, &a->msg.name);
	case O_SOURCE:
		return take_string("--source", arg, SHMBUS_STR_MAX, &a->msg.source);
	case O_TARGET:
		return take_string("--target", arg, SHMBUS_STR_MAX, &a->msg.target);
	case O_CONV:
		return take_string("--conversation-id", arg, SHMBUS_STR_MAX, &a->msg.conversation_id);
	case O_USER:
		return take_string("--user-id", arg, SHMBUS_STR_MAX, &a->msg.user_id);
	case O_INTENT:
		return take_string("--intent", arg, SHMBUS_STR_MAX, &a->msg.intent);
	case O_DECISION:
		return take_string("--decision-id", arg, SHMBUS_STR_MAX, &a->msg.decision_id);
	case O_CORR:
		return take_uuid("--correlation-id", arg, &a->correlation, &a->msg.correlation_id);
	case O_CAUS:
		return take_uuid("--causation-id", arg, &a->causation, &a->msg.causation_id);
	case O_META:
		return take_meta(a, arg);
	case O_PRINTID:
		a->print_id = true;
		return 0;
	case O_DATA:
		if (a->msg.payload)
			return usage_error("pub", "--data and --data-file exclude each other, and may be given once");
		if (check_json("--data", arg, strlen(arg)))
			return EXIT_USAGE;
		a->msg.payload = arg;
		a->msg.payload_len = strlen(arg);
		a->msg.content_type = SHMBUS_CONTENT_JSON;
		return 0;
	case O_DATAFILE:
		if (a->msg.payload || a->data_file)
			return usage_error("pub", "--data and --data-file exclude each other, and may be given once");
		a->data_file = arg;
		return 0;
	default:
		return take_number_option(a, c, arg);
	}
}

/* Free what the options allocated (metadata keys, file payload). */
static void pub_args_free(struct pub_args *a)
{
	for (size_t i = 0; i < a->msg.metadata_count; i++)
		free((char *)a->meta[i].key);
	free(a->payload_buf);
}

/* Publish a->count copies; ids printed (and flushed) as they are made. */
static int publish_all(shmbus_bus_t *bus, struct pub_args *a)
{
	shmbus_pub_opts_t po = {0};
	if (a->has_timeout)
		po.timeout_ns = a->timeout_ns ? (int64_t)a->timeout_ns : -1;
	shmbus_pub_t *pub;
	int rc = shmbus_pub_open(bus, &po, &pub);
	if (rc < 0)
		return cli_lib_error("pub", rc);
	for (uint64_t i = 0; i < a->count; i++) {
		shmbus_uuid_t id;
		rc = shmbus_publish(pub, &a->msg, &id);
		if (rc < 0) {
			char what[64];
			snprintf(what, sizeof what, "pub: event %llu", (unsigned long long)i + 1);
			rc = cli_lib_error(what, rc);
			break;
		}
		if (a->print_id) {
			char text[SHMBUS_UUID_STR];
			shmbus_uuid_format(&id, text);
			if (printf("%s\n", text) < 0 || fflush(stdout) == EOF) {
				rc = cli_output_failed("pub", errno);
				break;
			}
		}
		rc = 0;
	}
	shmbus_pub_close(pub);
	return rc;
}

static const struct option pub_opts[] = {
	{"type", required_argument, NULL, O_TYPE},
	{"name", required_argument, NULL, O_NAME},
	{"source", required_argument, NULL, O_SOURCE},
	{"target", required_argument, NULL, O_TARGET},
	{"priority", required_argument, NULL, O_PRIORITY},
	{"correlation-id", required_argument, NULL, O_CORR},
	{"causation-id", required_argument, NULL, O_CAUS},
	{"ttl", required_argument, NULL, O_TTL},
	{"max-retries", required_argument, NULL, O_MAXRET},
	{"data", required_argument, NULL, O_DATA},
	{"data-file", required_argument, NULL, O_DATAFILE},
	{"count", required_argument, NULL, O_COUNT},
	{"print-id", no_argument, NULL, O_PRINTID},
	{"timeout", required_argument, NULL, O_TIMEOUT},
	{"meta", required_argument, NULL, O_META},
	{"conversation-id", required_argument, NULL, O_CONV},
	{"user-id", required_argument, NULL, O_USER},
	{"intent", required_argument, NULL, O_INTENT},
	{"decision-id", required_argument, NULL, O_DECISION},
	{"confidence", required_argument, NULL, O_CONF},
	{NULL, 0, NULL, 0},
};

/*
 * pub NAME --type T --name N [...]: validate everything, then publish
 * --count copies. A payload over the bus's max_payload is a runtime failure
 * (exit 1), like every refusal by the library.
 */
static int cmd_pub(int argc, char **argv)
{
	struct pub_args a = {.count = 1};
	int c, rc = 0;
	while (rc == 0 && (c = getopt_long(argc, argv, ":", pub_opts, NULL)) != -1)
		rc = (c == '?' || c == ':') ? bad_option("pub", c, argv) : take_pub_option(&a, c, optarg);
	if (rc == 0 && !a.msg.type)
		rc = usage_error("pub", "--type is required");
	if (rc == 0 && !a.msg.name)
		rc = usage_error("pub", "--name is required");
	if (rc == 0)
		rc = want_positionals("pub", argc, argv, 1);
	shmbus_bus_t *bus = NULL;
	if (rc == 0)
		rc = open_bus("pub", argv[optind], &bus);
	shmbus_config_t cfg = {0};
	if (rc == 0) {
		shmbus_bus_config(bus, &cfg);
		if (a.data_file) /* no further than max_payload */
			rc = take_data_file(&a, a.data_file, cfg.max_payload);
	}
	if (rc == 0 && a.msg.payload_len > cfg.max_payload) {
		cli_error("pub", "payload of %zu bytes exceeds the bus's max_payload of %u", a.msg.payload_len,
			  cfg.max_payload);
		rc = EXIT_RUNTIME;
	}
	if (rc == 0)
		rc = publish_all(bus, &a);
	shmbus_close(bus);
	pub_args_free(&a);
	return rc;
}

/* ------------------------------------------------------------------ sub */

struct sub_args {
	shmbus_sub_opts_t opts;
	shmbus_filter_t *filters[8];
	size_t filter_count;
	uint64_t count;
	bool has_timeout;
	uint64_t timeout_ns;
	bool json;
	struct sub_exec_args exec;
};

/* A filter built from a comma list of strings (names, sources, targets). */
static int add_set_filter(struct sub_args *a, const char *opt, const char *arg,
			  int (*make)(const char *const *, size_t, shmbus_filter_t **))
{
	char **items;
	int n = cli_split_list(arg, &items);
	if (n < 0)
		return usage_error("sub", "%s wants a comma list without empty items, not '%s'", opt, arg);
	for (int i = 0; i < n; i++) {
		if (strlen(items[i]) > SHMBUS_STR_MAX) {
			/* the message quotes the item: freed only after it */
			int code = usage_error("sub", "%s: '%s' is longer than %d bytes", opt, items[i], SHMBUS_STR_MAX);
			cli_list_free(items);
			return code;
		}
	}
	int rc = make((const char *const *)items, (size_t)n, &a->filters[a->filter_count]);
	cli_list_free(items);
	if (rc < 0)
		return usage_error("sub", "%s: %s", opt, shmbus_errmsg());
	a->filter_count++;
	return 0;
}

/* --type T,..: one type-set filter from a comma list. 0 or exit code. */
static int add_type_filter(struct sub_args *a, const char *arg)
{
	char **items;
	int n = cli_split_list(arg, &items);
	if (n < 0)
		return usage_error("sub", "--type wants a comma list of types, not '%s'", arg);
	uint32_t mask = 0;
	for (int i = 0; i < n; i++) {
		int t = shmbus_type_parse(items[i]);
		if (t < 0) {
			int rc = usage_error("sub", "unknown --type '%s' (command|notification|query|response|error)",
					     items[i]);
			cli_list_free(items);
			return rc;
		}
		mask |= SHMBUS_TYPE_BIT(t);
	}
	cli_list_free(items);
	int rc = shmbus_filter_types(mask, &a->filters[a->filter_count]);
	if (rc < 0)
		return cli_lib_error("sub", rc);
	a->filter_count++;
	return 0;
}

/* One filter option of `sub` into a->filters. 0 or exit code. */
static int add_filter_option(struct sub_args *a, int c, const char *arg)
{
	int rc, p;
	if (a->filter_count >= sizeof a->filters / sizeof a->filters[0])
		return usage_error("sub", "too many filter options");
	switch (c) {
	case O_TYPE:
		return add_type_filter(a, arg);
	case O_NAME:
		return add_set_filter(a, "--name", arg, shmbus_filter_names);
	case O_SOURCE:
		return add_set_filter(a, "--source", arg, shmbus_filter_sources);
	case O_TARGET:
		return add_set_filter(a, "--target", arg, shmbus_filter_targets);
	case O_MINPRIO:
		if ((p = shmbus_priority_parse(arg)) < 0)
			return usage_error("sub", "unknown --min-priority '%s' (low|normal|high|critical)", arg);
		rc = shmbus_filter_min_priority((shmbus_priority_t)p, &a->filters[a->filter_count]);
		break;
	case O_PATTERN:
		rc = shmbus_filter_pattern(arg, &a->filters[a->filter_count]);
		if (rc == -EINVAL || rc == -E2BIG)
			return usage_error("sub", "--pattern '%s': %s", arg, shmbus_errmsg());
		break;
	default:
		return usage_error("sub", "unexpected option");
	}
	if (rc < 0)
		return cli_lib_error("sub", rc);
	a->filter_count++;
	return 0;
}

/* The numbers of `sub --exec`. 0 or exit code. */
static int take_exec_option(struct sub_args *a, int c, const char *arg)
{
	uint32_t v;
	switch (c) {
	case O_CONCURRENCY:
		if (cli_parse_u32(arg, 1, SHMBUS_MAX_HELD, &v) < 0)
			return usage_error("sub", "--concurrency must be in [1, %d], not '%s'", SHMBUS_MAX_HELD, arg);
		a->exec.concurrency = (int32_t)v;
		return 0;
	case O_MAXRET:
		if (cli_parse_u32(arg, 0, 255, &v) < 0)
			return usage_error("sub", "--max-retries must be in [0, 255], not '%s'", arg);
		a->exec.max_retries = v ? (int32_t)v : SHMBUS_NO_RETRY;
		return 0;
	case O_RETRY_BASE:
		if (cli_parse_duration(arg, &a->exec.retry_base_ns) < 0 || a->exec.retry_base_ns == 0)
			return usage_error("sub", "--retry-base: '%s' is not a positive duration (e.g. 100ms)", arg);
		return 0;
	default:
		return add_filter_option(a, c, arg);
	}
}

/* One option of `sub` into the subscription options. 0 or exit code. */
static int take_sub_option(struct sub_args *a, int c, const char *arg)
{
	switch (c) {
	case O_ID:
		if (!*arg || strlen(arg) > SHMBUS_ID_MAX)
			return usage_error("sub", "--id must be 1-%d bytes", SHMBUS_ID_MAX);
		a->opts.subscriber_id = arg;
		return 0;
	case O_GROUP:
		if (!*arg || strlen(arg) > SHMBUS_ID_MAX)
			return usage_error("sub", "--group must be 1-%d bytes", SHMBUS_ID_MAX);
		a->opts.group = arg;
		return 0;
	case O_DURABLE:
		a->opts.durable = true;
		return 0;
	case O_JSON:
		a->json = true;
		return 0;
	case O_POLICY:
		if (strcmp(arg, "block") && strcmp(arg, "lag"))
			return usage_error("sub", "--policy must be block or lag, not '%s'", arg);
		a->opts.policy = arg[0] == 'l' ? SHMBUS_POLICY_LAG : SHMBUS_POLICY_BLOCK;
		return 0;
	case O_COUNT:
		if (cli_parse_u64(arg, 1, UINT64_MAX, &a->count) < 0)
			return usage_error("sub", "--count must be a positive number, not '%s'", arg);
		return 0;
	case O_TIMEOUT:
		if (cli_parse_duration(arg, &a->timeout_ns) < 0 || a->timeout_ns > INT64_MAX)
			return usage_error("sub", "--timeout: '%s' is not a duration (e.g. 500ms, 2s)", arg);
		a->has_timeout = true;
		return 0;
	case O_EXEC:
		if (!*arg)
			return usage_error("sub", "--exec needs a command");
		a->exec.cmd = arg;
		return 0;
	default:
		return take_exec_option(a, c, arg);
	}
}

/* Combine the filter options: none, one, or all of them. Ownership of the
 * children passes to the composite, also on failure. */
static int build_filter(struct sub_args *a, shmbus_filter_t **out)
{
	*out = NULL;
	if (a->filter_count == 0)
		return 0;
	if (a->filter_count == 1) {
		*out = a->filters[0];
		a->filter_count = 0;
		return 0;
	}
	int rc = shmbus_filter_all(a->filters, a->filter_count, out);
	a->filter_count = 0;
	return rc < 0 ? cli_lib_error("sub", rc) : 0;
}

/* Tell stderr how many events the subscription missed since the last call. */
static void report_missed(shmbus_sub_t *sub)
{
	uint64_t missed = shmbus_take_missed(sub);
	if (missed)
		cli_error("sub", "missed %llu event%s", (unsigned long long)missed, missed == 1 ? "" : "s");
}

/* Print one event and flush, so a reader sees it at once. 0 or exit code. */
static int print_event(const struct sub_args *a, const shmbus_event_t *ev)
{
	shmbus_inspect_event_t v;
	event_view_from_event(ev, &v);
	if (a->json)
		return emit_json("sub", event_json(&v));
	if (event_print_line(stdout, &v) < 0 || fflush(stdout) == EOF)
		return cli_output_failed("sub", errno);
	return 0;
}

/* Longest single wait, so a stop signal is seen even if a wait restarts. */
#define WAIT_SLICE_NS 1000000000ll

/*
 * Receive until the count is reached, the timeout passes, a stop signal
 * arrives or the subscription goes away. Exit 0 when the count was reached
 * (or none was asked), 1 otherwise.
 */
static int receive_loop(shmbus_sub_t *sub, const struct sub_args *a)
{
	uint64_t got = 0, deadline = a->has_timeout ? cli_now_ns() + a->timeout_ns : 0;
	while (!stop_requested && (!a->count || got < a->count)) {
		int64_t wait = WAIT_SLICE_NS;
		if (a->has_timeout) {
			uint64_t now = cli_now_ns();
			if (now >= deadline)
				break;
			if (deadline - now < (uint64_t)wait)
				wait = (int64_t)(deadline - now);
		}
		const shmbus_event_t *ev;
		int rc = shmbus_wait(sub, wait, &ev);
		report_missed(sub);
		if (rc == 0 || rc == -EINTR)
			continue;
		if (rc < 0)
			return cli_lib_error("sub", rc);
		uint64_t seq = shmbus_event_seq(ev);
		rc = print_event(a, ev);
		if (shmbus_release(sub, ev) == -ESTALE) /* printed bytes may have changed under us */
			cli_error("sub", "event %llu was revoked while held", (unsigned long long)seq);
		if (rc)
			return rc;
		got++;
	}
	if (a->count && got < a->count) {
		cli_error("sub", "%s after %llu of %llu events", stop_requested ? "interrupted" : "timed out",
			  (unsigned long long)got, (unsigned long long)a->count);
		return EXIT_RUNTIME;
	}
	return 0;
}

static const struct option sub_opts[] = {
	{"id", required_argument, NULL, O_ID},
	{"durable", no_argument, NULL, O_DURABLE},
	{"group", required_argument, NULL, O_GROUP},
	{"policy", required_argument, NULL, O_POLICY},
	{"type", required_argument, NULL, O_TYPE},
	{"name", required_argument, NULL, O_NAME},
	{"source", required_argument, NULL, O_SOURCE},
	{"target", required_argument, NULL, O_TARGET},
	{"min-priority", required_argument, NULL, O_MINPRIO},
	{"pattern", required_argument, NULL, O_PATTERN},
	{"count", required_argument, NULL, O_COUNT},
	{"timeout", required_argument, NULL, O_TIMEOUT},
	{"json", no_argument, NULL, O_JSON},
	{"exec", required_argument, NULL, O_EXEC},
	{"concurrency", required_argument, NULL, O_CONCURRENCY},
	{"max-retries", required_argument, NULL, O_MAXRET},
	{"retry-base", required_argument, NULL, O_RETRY_BASE},
	{NULL, 0, NULL, 0},
};

/*
 * Open the bus, subscribe with the combined filter and receive. The
 * subscription is closed on every way out (a plain one is removed).
 */
static int subscribe_and_receive(const char *name, struct sub_args *a)
{
	shmbus_bus_t *bus;
	int rc = open_bus("sub", name, &bus);
	if (rc)
		return rc;
	shmbus_filter_t *filter = NULL;
	if ((rc = build_filter(a, &filter))) {
		shmbus_close(bus);
		return rc;
	}
	a->opts.filter = filter;
	shmbus_sub_t *sub;
	rc = shmbus_subscribe(bus, &a->opts, &sub);
	shmbus_filter_free(filter);
	if (rc < 0) {
		rc = cli_lib_error("sub", rc);
		shmbus_close(bus);
		return rc;
	}
	install_stop_handlers();
	if (a->exec.cmd) {
		a->exec.count = a->count;
		a->exec.has_timeout = a->has_timeout;
		a->exec.timeout_ns = a->timeout_ns;
		rc = sub_exec_run(sub, &a->exec, &stop_requested);
	} else {
		rc = receive_loop(sub, a);
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return rc;
}

/* sub NAME [filters] [--count N] [--timeout D] [--json]. */
static int cmd_sub(int argc, char **argv)
{
	struct sub_args a = {0};
	int c, rc = 0;
	while (rc == 0 && (c = getopt_long(argc, argv, ":", sub_opts, NULL)) != -1)
		rc = (c == '?' || c == ':') ? bad_option("sub", c, argv) : take_sub_option(&a, c, optarg);
	if (rc == 0 && a.opts.durable && !a.opts.subscriber_id && !a.opts.group)
		rc = usage_error("sub", "--durable needs --id or --group: that is its key");
	if (rc == 0 && !a.exec.cmd && (a.exec.concurrency || a.exec.max_retries || a.exec.retry_base_ns))
		rc = usage_error("sub", "--concurrency, --max-retries and --retry-base go with --exec");
	if (rc == 0 && a.exec.cmd && a.json)
		rc = usage_error("sub", "--json and --exec exclude each other (the command gets the JSON)");
	if (rc == 0)
		rc = want_positionals("sub", argc, argv, 1);
	if (rc == 0)
		rc = subscribe_and_receive(argv[optind], &a);
	for (size_t i = 0; i < a.filter_count; i++)
		shmbus_filter_free(a.filters[i]);
	return rc;
}

/* ----------------------------------------------------------------- main */

static const struct command commands[] = {
	{"create", cmd_create,
	 "NAME [--slots N] [--slot-size B] [--max-payload B] [--max-subscribers N] [--max-members N] [--mode OCTAL] "
	 "[--log-dir DIR] [--sync none|batch|always] [--dead-letter-unrouted]"},
	{"ls", cmd_ls, "[--json]"},
	{"info", cmd_info, "NAME [--json]"},
	{"rm", cmd_rm, "NAME [--keep-log]"},
	{"gc", cmd_gc, ""},
	{"pub", cmd_pub,
	 "NAME --type TYPE --name EVENT [--source ID] [--target ID] [--priority P] [--correlation-id UUID] "
	 "[--causation-id UUID] [--ttl DURATION] [--max-retries N] [--data JSON | --data-file FILE] "
	 "[--meta K=V].. [--conversation-id ID] [--user-id ID] [--intent TEXT] [--decision-id ID] "
	 "[--confidence 0..1] [--count N] [--print-id] [--timeout DURATION]"},
	{"sub", cmd_sub,
	 "NAME [--id SUBSCRIBER] [--durable] [--group G] [--policy block|lag] [--type T,..] [--name N,..] "
	 "[--source S,..] [--target T,..] [--min-priority P] [--pattern REGEX] [--count N] [--timeout DURATION] "
	 "[--json | --exec CMD [--concurrency N] [--max-retries N] [--retry-base DURATION]]"},
	{"stat", cmd_stat, "NAME [--json | --prometheus] [--watch SECONDS]"},
	{"get", cmd_get, "NAME EVENT_ID [--json]"},
	{"events", cmd_events,
	 "NAME [--type T] [--name N] [--source S] [--target T] [--since TIME] [--until TIME] [--limit N] [--json]"},
	{"replay", cmd_replay, "NAME [--type T] [--name N] [--source S] [--target T] [--since TIME] [--until TIME] "
			       "[--limit N] (--to SUBSCRIBER | --republish)"},
	{"dlq", cmd_dlq, "NAME ls [--json] | retry EVENT_ID | clear EVENT_ID"},
	{"record", cmd_record, "NAME [--dir DIR] [--sync none|batch|always] [--segment-size B] [--retain-bytes B] "
			       "[--retain-age DURATION] [--retain-force] [--batch-ms N]"},
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* shmbus COMMAND [ARGS]: dispatch to the command; exit 0, 1 or 2. */
int main(int argc, char **argv)
{
	cli_set_prog("shmbus");
	if (argc < 2) {
		cli_error("usage", "missing command");
		fputs(usage_text, stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		fputs(usage_text, stdout);
		return cli_finish_output("help", 0);
	}
	const struct command *c = find_command(argv[1]);
	if (!c) {
		cli_error(argv[1], "unknown command (try shmbus --help)");
		return EXIT_USAGE;
	}
	/* A closed stdout (| head) is a write error to report and exit on,
	 * with handles closed, not a silent death that leaves a plain
	 * subscription for the reclaimer. */
	signal(SIGPIPE, SIG_IGN);
	opterr = 0;
	return cli_finish_output(argv[1], c->run(argc - 1, argv + 1));
}
