/*
 * cli_util.h - strict argument parsing and error reporting shared by the
 * shmbus and shm-dump command lines.
 *
 * Exit status convention: 0 success, 1 runtime failure, 2 usage error.
 * Every message goes to stderr as "<prog>: <what>: <why>".
 */
#ifndef SHMBUS_CLI_UTIL_H
#define SHMBUS_CLI_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

/* Program name used as the first part of every message ("shmbus"). */
void cli_set_prog(const char *prog);
const char *cli_prog(void);

/* Print "<prog>: <what>: <message>" to stderr. */
__attribute__((format(printf, 2, 3))) void cli_error(const char *what, const char *fmt, ...);

/* Report a library failure (rc is -errno) with shmbus_errmsg() when it has
 * something to say, else strerror(-rc). Returns EXIT_RUNTIME. */
int cli_lib_error(const char *what, int rc);

/* Report that standard output could not be written (err: an errno value,
 * 0 if unknown), once per process. Returns EXIT_RUNTIME. */
int cli_output_failed(const char *what, int err);

/*
 * The end of a command whose result is rc: flush standard output, and if
 * it or any earlier write to it failed, report that (unless reported
 * already) and return EXIT_RUNTIME in place of a success. A full disk or
 * a reader that went away (| head) is a failure to say, never a silent
 * exit 0 with the output lost.
 */
int cli_finish_output(const char *what, int rc);

/*
 * Strict number parsers: the whole string must be a number in [min, max],
 * no sign unless negative values are allowed, no spaces. Return 0 or
 * -EINVAL (malformed) / -ERANGE (out of range).
 */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
int cli_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out);

/*
 * A byte size: a number with an optional binary suffix k/K/KiB, m/M/MiB,
 * g/G/GiB. Returns 0, -EINVAL or -ERANGE (over max).
 */
int cli_parse_size(const char *s, uint64_t max, uint64_t *out);

/*
 * A duration: a number (decimals allowed) with a suffix ns, us, ms, s, m or h;
 * a bare number means seconds. Returns 0 and nanoseconds, -EINVAL or
 * -ERANGE (over about 292 years).
 */
int cli_parse_duration(const char *s, uint64_t *ns);

/* Monotonic clock in nanoseconds. */
uint64_t cli_now_ns(void);

/*
 * Split a comma list ("a,b,c") into a NULL-terminated array of pointers into
 * a copy of s. Empty elements are rejected. Returns the number of elements
 * (>= 1) or -EINVAL / -ENOMEM; free *items[0]'s buffer with cli_list_free.
 */
int cli_split_list(const char *s, char ***items);
void cli_list_free(char **items);

/*
 * Read a whole file (or stdin for "-") into malloc'd memory, NUL-terminated
 * for convenience; *len excludes the NUL. Refuses files over max bytes
 * with -EFBIG. Returns 0 or -errno.
 */
int cli_read_file(const char *path, size_t max, char **out, size_t *len);

#endif
