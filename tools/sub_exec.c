/*
 * sub_exec.c - `shmbus sub --exec CMD`.
 *
 * Each event is one run of `/bin/sh -c CMD` with the event as one JSON line
 * on stdin and SHMBUS_EVENT_ID, SHMBUS_EVENT_NAME and SHMBUS_ATTEMPT in
 * its environment. Exit status 0 is success; anything else (or death by a
 * signal) is a handler failure, which the dispatcher retries with back-off
 * and finally dead-letters, so the whole retry/dead-letter machinery can be
 * driven from a shell. With --concurrency N the commands run on N worker
 * threads (posix_spawn, which is safe from threads).
 */
#include "sub_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"
#include "event_json.h"

extern char **environ;

#define SLICE_NS 200000000ll /* so a stop signal is seen soon */

struct exec_ctx {
	const struct sub_exec_args *a;
	uint64_t deadline;     /* --timeout's end (UINT64_MAX: none) */
	atomic_ulong finished; /* succeeded, or failed for the last time, by the deadline */
};

/* One event's handling is over: it counts if it ended in time. A command
 * still running at the deadline finishes (the exit waits for it), but
 * --count is about what was handled by then. */
static void finished_one(struct exec_ctx *c)
{
	if (cli_now_ns() <= c->deadline)
		atomic_fetch_add(&c->finished, 1);
}

/* Write all of buf; a command that does not read its stdin is fine. */
static void write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* EPIPE: it exited without reading */
		buf += n;
		len -= (size_t)n;
	}
}

/* The child's environment: ours plus the event's. NULL on no memory. */
static char **child_env(const shmbus_event_t *ev, char vars[3][128])
{
	char id[SHMBUS_UUID_STR];
	shmbus_uuid_format(shmbus_event_id(ev), id);
	snprintf(vars[0], 128, "SHMBUS_EVENT_ID=%s", id);
	snprintf(vars[1], 128, "SHMBUS_EVENT_NAME=%s", shmbus_event_name(ev));
	snprintf(vars[2], 128, "SHMBUS_ATTEMPT=%u", shmbus_handler_attempt());
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = malloc((n + 4) * sizeof *env);
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "SHMBUS_EVENT_", 13) && strncmp(environ[i], "SHMBUS_ATTEMPT=", 15))
			env[k++] = environ[i];
	for (int i = 0; i < 3; i++)
		env[k++] = vars[i];
	env[k] = NULL;
	return env;
}

/* Run the command for one event: 0 on exit status 0, else -EIO (or -errno
 * when it could not be started). */
static int run_command(const struct sub_exec_args *a, const shmbus_event_t *ev)
{
	shmbus_inspect_event_t v;
	event_view_from_event(ev, &v);
	json_t *j = event_json(&v);
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text)
		return -ENOMEM;
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		free(text);
		return -errno;
	}
	char vars[3][128];
	char **env = child_env(ev, vars);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[0], STDIN_FILENO);
	/* we ignore SIGPIPE (a closed stdout is an error we report); a shell
	 * pipeline in CMD must not inherit that */
	posix_spawnattr_t at;
	sigset_t dfl;
	posix_spawnattr_init(&at);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigdefault(&at, &dfl);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF);
	char *argv[] = {"sh", "-c", (char *)a->cmd, NULL};
	pid_t pid;
	int rc = env ? posix_spawn(&pid, "/bin/sh", &fa, &at, argv, env) : ENOMEM;
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	free(env);
	close(p[0]);
	if (rc) {
		close(p[1]);
		free(text);
		cli_error("sub", "--exec: cannot start /bin/sh: %s", strerror(rc));
		return -rc;
	}
	write_all(p[1], text, strlen(text));
	write_all(p[1], "\n", 1);
	close(p[1]);
	free(text);
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

static int exec_handler(const shmbus_event_t *ev, void *arg)
{
	struct exec_ctx *c = arg;
	int rc = run_command(c->a, ev);
	if (rc == 0)
		finished_one(c);
	return rc;
}

/* Dead-lettered (out of retries, or expired): its handling is over too. */
static void exec_dead(const shmbus_event_t *ev, int reason, void *arg)
{
	(void)ev;
	(void)reason;
	finished_one(arg);
}

int sub_exec_run(shmbus_sub_t *sub, const struct sub_exec_args *a, volatile sig_atomic_t *stop)
{
	shmbus_dispatcher_t *d;
	uint32_t workers = a->concurrency > 1 ? (uint32_t)a->concurrency : 0;
	int rc = shmbus_dispatcher_open(&(shmbus_dispatcher_opts_t){.workers = workers}, &d);
	if (rc < 0)
		return cli_lib_error("sub", rc);
	struct exec_ctx c = {.a = a, .deadline = a->has_timeout ? cli_now_ns() + a->timeout_ns : UINT64_MAX};
	shmbus_handler_opts_t ho = {
		.handler = exec_handler,
		.on_dead = exec_dead,
		.arg = &c,
		.concurrency = a->concurrency,
		.max_retries = a->max_retries,
		.retry_base_ns = a->retry_base_ns,
	};
	if ((rc = shmbus_dispatcher_add(d, sub, &ho)) < 0) {
		shmbus_dispatcher_close(d);
		return cli_lib_error("sub", rc);
	}
	uint64_t deadline = c.deadline;
	int status = 0;
	while (!*stop && (!a->count || atomic_load(&c.finished) < a->count)) {
		uint64_t now = cli_now_ns();
		if (now >= deadline)
			break;
		int64_t slice = deadline - now < (uint64_t)SLICE_NS ? (int64_t)(deadline - now) : SLICE_NS;
		rc = shmbus_dispatcher_run_once(d, slice);
		if (rc < 0 && rc != -EINTR) {
			status = cli_lib_error("sub", rc);
			break;
		}
	}
	/* commands still running finish; retries still waiting become dead
	 * letters (closing says so) */
	shmbus_dispatcher_close(d);
	unsigned long done = atomic_load(&c.finished);
	if (!status && a->count && done < a->count) {
		cli_error("sub", "%s after %lu of %llu events", *stop ? "interrupted" : "timed out", done,
			  (unsigned long long)a->count);
		status = EXIT_RUNTIME;
	}
	return status;
}
