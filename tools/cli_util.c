/*
 * cli_util.c - strict argument parsing and error reporting for the tools.
 */
#include "cli_util.h"

#include "shmbus.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog_name = "shmbus";

/* The name every message starts with. */
void cli_set_prog(const char *prog) { prog_name = prog; }

const char *cli_prog(void) { return prog_name; }

/* "<prog>: <what>: <message>" on stderr. */
void cli_error(const char *what, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: %s: ", prog_name, what);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static bool output_reported;

int cli_output_failed(const char *what, int err)
{
	if (!output_reported)
		cli_error(what, "cannot write output: %s", err ? strerror(err) : "write error");
	output_reported = true;
	return EXIT_RUNTIME;
}

int cli_finish_output(const char *what, int rc)
{
	errno = 0;
	bool failed = fflush(stdout) == EOF;
	int err = failed ? errno : 0;
	if (!failed && !ferror(stdout))
		return rc;
	cli_output_failed(what, err);
	return rc == 0 ? EXIT_RUNTIME : rc;
}

/*
 * The library's thread-local message names the reason more precisely than
 * strerror, but it may be stale (left from an earlier call) or empty; fall
 * back to strerror when it says nothing.
 */
int cli_lib_error(const char *what, int rc)
{
	const char *msg = shmbus_errmsg();
	if (msg && *msg)
		cli_error(what, "%s (%s)", msg, strerror(-rc));
	else
		cli_error(what, "%s", strerror(-rc));
	return EXIT_RUNTIME;
}

/* Digits only: strtoull would accept leading spaces, '+' and '-'. */
static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* Digits only, in [min, max]: 0, -EINVAL or -ERANGE. */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (!s || !all_digits(s))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, NULL, 10);
	if (errno == ERANGE || v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

/* cli_parse_u64 narrowed to 32 bits. */
int cli_parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	uint64_t v;
	int rc = cli_parse_u64(s, min, max, &v);
	if (rc == 0)
		*out = (uint32_t)v;
	return rc;
}

/* Split "123abc" into the number and the suffix; the number part must be
 * digits only (and at most one '.', when decimals are allowed). */
static int split_number(const char *s, bool decimals, char *num, size_t cap, const char **suffix)
{
	size_t i = 0;
	bool dot = false;
	for (; s[i] && (isdigit((unsigned char)s[i]) || (decimals && s[i] == '.' && !dot)); i++)
		dot |= s[i] == '.';
	if (i == 0 || i >= cap || (i == 1 && dot))
		return -EINVAL;
	memcpy(num, s, i);
	num[i] = '\0';
	*suffix = s + i;
	return 0;
}

/* A byte count with an optional binary suffix: 0, -EINVAL or -ERANGE. */
int cli_parse_size(const char *s, uint64_t max, uint64_t *out)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {{"", 1},	     {"k", 1024},      {"K", 1024},    {"KiB", 1024},  {"m", 1 << 20},
		     {"M", 1 << 20}, {"MiB", 1 << 20}, {"g", 1 << 30}, {"G", 1 << 30}, {"GiB", 1 << 30}};
	char num[32];
	const char *suffix;
	if (!s || split_number(s, false, num, sizeof num, &suffix) < 0)
		return -EINVAL;
	uint64_t v;
	if (cli_parse_u64(num, 0, UINT64_MAX, &v) < 0)
		return -ERANGE;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(suffix, units[i].suffix) != 0)
			continue;
		if (v > max / units[i].mult)
			return -ERANGE;
		*out = v * units[i].mult;
		return 0;
	}
	return -EINVAL;
}

/* A duration with suffix ns/us/ms/s/m, bare = seconds: 0, -EINVAL or -ERANGE. */
int cli_parse_duration(const char *s, uint64_t *ns)
{
	static const struct {
		const char *suffix;
		double mult;
	} units[] = {{"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"", 1e9}, {"m", 60e9}, {"h", 3600e9}};
	char num[40];
	const char *suffix;
	if (!s || split_number(s, true, num, sizeof num, &suffix) < 0)
		return -EINVAL;
	double v = strtod(num, NULL);
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(suffix, units[i].suffix) != 0)
			continue;
		double total = v * units[i].mult;
		if (total >= 9.2e18)
			return -ERANGE;
		*ns = (uint64_t)(total + 0.5);
		return 0;
	}
	return -EINVAL;
}

/* CLOCK_MONOTONIC in nanoseconds, for deadlines. */
uint64_t cli_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Split a comma list into a NULL-terminated array; no empty items.
 * Returns the count, -EINVAL or -ENOMEM.
 */
int cli_split_list(const char *s, char ***items)
{
	char *copy = strdup(s);
	if (!copy)
		return -ENOMEM;
	size_t n = 1;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	char **v = calloc(n + 1, sizeof *v);
	if (!v) {
		free(copy);
		return -ENOMEM;
	}
	char *p = copy;
	for (size_t i = 0; i < n; i++) {
		char *comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		if (!*p) {
			free(copy);
			free(v);
			return -EINVAL;
		}
		v[i] = p;
		p = comma ? comma + 1 : p + strlen(p);
	}
	*items = v;
	return (int)n;
}

/* The array and the copy it points into were allocated separately; the
 * copy starts at items[0]. */
void cli_list_free(char **items)
{
	if (!items)
		return;
	free(items[0]);
	free(items);
}

/*
 * Slurp a file ("-" = stdin) of at most max bytes, NUL-terminated.
 * Returns 0, -EFBIG or -errno.
 */
int cli_read_file(const char *path, size_t max, char **out, size_t *len)
{
	int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	int rc = buf ? 0 : -ENOMEM;
	while (rc == 0) {
		if (n == cap) {
			if (cap > max) {
				rc = -EFBIG;
				break;
			}
			char *bigger = realloc(buf, cap * 2 + 1);
			if (!bigger) {
				rc = -ENOMEM;
				break;
			}
			buf = bigger;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			rc = -errno;
		else if (r == 0)
			break;
		else
			n += (size_t)r;
	}
	if (fd != STDIN_FILENO)
		close(fd);
	if (rc == 0 && n > max)
		rc = -EFBIG;
	if (rc < 0) {
		free(buf);
		return rc;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}
