/*
 * common.h - helpers shared by the Criterion suites: bus naming and
 * cleanup, small bus configurations, fork/wait with timeouts, pipes,
 * shared anonymous memory and running the command-line tools.
 *
 * Naming: every test uses the bus "t<run-pid>_<test name>", where run-pid is
 * the pid of the Criterion runner (exported to the test workers by a
 * PRE_ALL hook), so the POST_ALL hook can remove /dev/shm/shmbus.t<run-pid>_*
 * even when a test crashed before its .fini ran.
 */
#ifndef SHMBUS_TESTS_COMMON_H
#define SHMBUS_TESTS_COMMON_H

#include <shmbus.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#define TC_SEC_NS 1000000000ull
#define TC_MS_NS 1000000ull

/* The bus of the running test, set by tc_init(). */
extern char tc_bus[SHMBUS_NAME_MAX + 1];

/* .init / .fini of every suite: name the bus after the test, unlink it (and
 * every name passed to tc_track and file passed to tc_track_file) after. */
void tc_init(void);
void tc_fini(void);

/* "t<run-pid>_<suffix>", truncated to a valid bus name; tracked for .fini. */
void tc_name(char out[SHMBUS_NAME_MAX + 1], const char *suffix);
void tc_track(const char *bus_name);
void tc_track_file(const char *path);
unsigned long tc_run_pid(void);
/* Remove /dev/shm/shmbus.t<run-pid>_* and /tmp/shmbus-logtest-<run-pid>-*. */
void tc_cleanup_run(void);
/* The log root of the running test, /tmp/shmbus-logtest-<run-pid>-<bus>,
 * exported as SHMBUS_LOG_DIR (call after tc_init). */
const char *tc_log_root(void);
/* rm -r, read-only directories included. */
void tc_remove_tree(const char *path);

/* Small bus for fast tests: 256 slots of 256 bytes, 4 KiB payloads,
 * 16 subscriptions, reclaim 200 ms, stall 500 ms, block 1 s. */
shmbus_config_t tc_small_cfg(void);
/* Create tc_bus (asserts success). */
shmbus_bus_t *tc_create(const shmbus_config_t *cfg);
/* Attach to tc_bus (asserts success). */
shmbus_bus_t *tc_open(void);
/* Open a publisher (asserts success). */
shmbus_pub_t *tc_pub(shmbus_bus_t *bus, const char *source, int64_t timeout_ns);
/* Subscribe with a filter (asserts success; the filter is freed). */
shmbus_sub_t *tc_sub(shmbus_bus_t *bus, shmbus_filter_t *filter);

/* Publish a notification (or `type`) named `name` with a u32 payload. */
int tc_publish_u32(shmbus_pub_t *pub, shmbus_type_t type, const char *name, shmbus_priority_t prio, uint32_t value);
/* Fill msgs[0..n) with notifications named `name` of one shape, msgs[i]
 * carrying the u32 payload vals[i] = i: a batch of one shape. */
void tc_u32_batch(shmbus_msg_t *msgs, uint32_t *vals, unsigned n, const char *name);
/* The u32 payload of an event, or UINT32_MAX if the payload is not 4 bytes. */
uint32_t tc_payload_u32(const shmbus_event_t *ev);

typedef void (*tc_event_fn)(const shmbus_event_t *ev, void *arg);
/* Poll until empty, calling fn (may be NULL) and releasing each event.
 * Returns the number taken, or -errno. */
int tc_drain(shmbus_sub_t *sub, tc_event_fn fn, void *arg);
/* Wait until `want` events were taken or timeout_ms passed (fn as above).
 * Returns the number taken, or -errno. */
int tc_collect(shmbus_sub_t *sub, int want, int timeout_ms, tc_event_fn fn, void *arg);

uint64_t tc_now_ns(void);      /* CLOCK_MONOTONIC */
uint64_t tc_realtime_ns(void); /* CLOCK_REALTIME */
void tc_sleep_ms(unsigned ms);

/* fork(); the child dies with its parent (PR_SET_PDEATHSIG), runs fn and
 * _exit()s with its return value. Returns the child's pid. */
pid_t tc_fork(int (*fn)(void *), void *arg);
/* Wait up to timeout_ms for pid. Returns 0 and *status, or -ETIMEDOUT after
 * killing it with SIGKILL. */
int tc_wait(pid_t pid, int timeout_ms, int *status);
/* SIGKILL and reap. Returns the wait status. */
int tc_kill9(pid_t pid);
/* "exited 3", "killed by signal 9" ... (static buffer). */
const char *tc_status_str(int status);

/* Report a failed check from a forked child on stderr; returns 1 so it can be
 * used as `return CHILD_FAIL(...)`. */
#define CHILD_FAIL(...) tc_child_fail(__FILE__, __LINE__, __VA_ARGS__)
int tc_child_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* In a forked child: attach to the test bus and subscribe with o. Returns 0,
 * or the child's failure code (reported) to return from it. */
int tc_child_subscribe(const shmbus_sub_opts_t *o, shmbus_bus_t **bus, shmbus_sub_t **sub);
/* In a forked child: attach to the test bus and open a publisher with o.
 * Returns 0, or the child's failure code (reported) to return from it. */
int tc_child_publisher(const shmbus_pub_opts_t *o, shmbus_bus_t **bus, shmbus_pub_t **pub);
/* In a forked child: attach, publish n events of type and name whose u32
 * payload counts 0..n-1 (publisher timeout timeout_ns), detach. Returns 0 or
 * the child's failure code. */
int tc_child_publish_n(shmbus_type_t type, const char *name, uint32_t n, int64_t timeout_ns);

/* Pipe helpers: 0 on success, -errno, or -ETIMEDOUT. */
int tc_write_byte(int fd, char c);
int tc_read_byte(int fd, int timeout_ms, char *c);

/* MAP_SHARED | MAP_ANONYMOUS memory that survives fork (zeroed). */
void *tc_shared_alloc(size_t size);
void tc_shared_free(void *p, size_t size);

/* Run argv (argv[0] a path) with stdout/stderr captured, up to timeout_ms. */
struct tc_run_result {
	int status;	/* waitpid status */
	bool timed_out;
	char *out, *err; /* NUL-terminated */
	size_t out_len, err_len;
};
int tc_run(char *const argv[], int timeout_ms, struct tc_run_result *r);
/* The path of a tool meson test names in env (SHMBUS_CLI, SHM_DUMP); the
 * test fails when it is not set. */
const char *tc_tool(const char *env);
void tc_run_free(struct tc_run_result *r);

/* Copy a shm object of bus `from` to bus `to` (whole, or its first len
 * bytes when len != 0). Returns the size of `from`, or -errno. */
long tc_copy_segment(const char *from, const char *to, size_t len);
/* Write `len` bytes at `off` of the shm object of bus `name`. */
int tc_patch_segment(const char *name, size_t off, const void *bytes, size_t len);
/* Create the shm object of bus `name` with the given contents. */
int tc_write_segment(const char *name, const void *bytes, size_t len);

/* Whether publishers of this process can take claim leases (membarrier(2)
 * is allowed: shmbus_pub_open registers for it). */
bool tc_leases_available(void);

/* Deterministic PRNG (splitmix64). */
uint64_t tc_mix64(uint64_t x);

#endif
