/*
 * sub_exec.h - `shmbus sub --exec CMD`: a dispatcher whose handler runs a
 * shell command once per event, with the event's JSON on its stdin.
 */
#ifndef SHMBUS_TOOLS_SUB_EXEC_H
#define SHMBUS_TOOLS_SUB_EXEC_H

#include <shmbus.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

struct sub_exec_args {
	const char *cmd;	/* run with /bin/sh -c */
	int32_t concurrency;	/* commands running at once */
	int32_t max_retries;	/* library convention: 0 default, -1 none */
	uint64_t retry_base_ns; /* 0: library default */
	uint64_t count;		/* stop after this many finished events (0: never) */
	bool has_timeout;
	uint64_t timeout_ns;
};

/*
 * Serve sub with the command until `count` events finished (handled, or
 * dead-lettered after their last retry), the timeout passed or *stop was
 * set. Returns the exit status: 0 when the count was reached (or none was
 * asked), 1 otherwise.
 */
int sub_exec_run(shmbus_sub_t *sub, const struct sub_exec_args *a, volatile sig_atomic_t *stop);

#endif
