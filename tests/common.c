/*
 * common.c - see common.h.
 */
#include "common.h"

#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/membarrier.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RUN_PID_ENV "SHMBUS_TEST_RUN_PID"
#define TRACK_MAX 32

char tc_bus[SHMBUS_NAME_MAX + 1];

static char tracked[TRACK_MAX][SHMBUS_NAME_MAX + 1];
static size_t tracked_n;
static char tracked_files[TRACK_MAX][256];
static size_t tracked_files_n;

/* ------------------------------------------------------------- naming */

unsigned long tc_run_pid(void)
{
	const char *env = getenv(RUN_PID_ENV);
	if (env && *env)
		return strtoul(env, NULL, 10);
	return (unsigned long)getpid();
}

static void sanitize(char *s)
{
	for (; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			*s = '-';
	}
}

void tc_name(char out[SHMBUS_NAME_MAX + 1], const char *suffix)
{
	snprintf(out, SHMBUS_NAME_MAX + 1, "t%lu_%s", tc_run_pid(), suffix);
	sanitize(out);
	tc_track(out);
}

void tc_track(const char *bus_name)
{
	for (size_t i = 0; i < tracked_n; i++)
		if (strcmp(tracked[i], bus_name) == 0)
			return;
	if (tracked_n < TRACK_MAX)
		snprintf(tracked[tracked_n++], sizeof tracked[0], "%s", bus_name);
}

void tc_track_file(const char *path)
{
	for (size_t i = 0; i < tracked_files_n; i++)
		if (strcmp(tracked_files[i], path) == 0)
			return;
	if (tracked_files_n < TRACK_MAX)
		snprintf(tracked_files[tracked_files_n++], sizeof tracked_files[0], "%s", path);
}

void tc_init(void)
{
	tracked_n = 0;
	tracked_files_n = 0;
	tc_name(tc_bus, criterion_current_test ? criterion_current_test->name : "anon");
	shmbus_unlink(tc_bus);
	/* every bus of the test keeps its logs (dead letters included) under
	 * a root the run removes, never under the shared default root */
	tc_log_root();
}

void tc_fini(void)
{
	for (size_t i = 0; i < tracked_n; i++)
		shmbus_unlink(tracked[i]);
	/* Newest first, so a directory goes after the files made in it. */
	for (size_t i = tracked_files_n; i-- > 0;)
		remove(tracked_files[i]);
	tracked_n = 0;
	tracked_files_n = 0;
	tc_remove_tree(tc_log_root());
}

void tc_cleanup_run(void)
{
	char prefix[64];
	int plen = snprintf(prefix, sizeof prefix, "shmbus.t%lu_", tc_run_pid());
	DIR *d = opendir("/dev/shm");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, (size_t)plen) == 0)
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	/* log roots of this run (tc_log_root), even of tests that crashed */
	char root[PATH_MAX];
	plen = snprintf(prefix, sizeof prefix, "shmbus-logtest-%lu-", tc_run_pid());
	if (!(d = opendir("/tmp")))
		return;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, (size_t)plen) == 0) {
			snprintf(root, sizeof root, "/tmp/%s", de->d_name);
			tc_remove_tree(root);
		}
	}
	closedir(d);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	chmod(path, 0700); /* a test may have made it read-only */
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

void tc_remove_tree(const char *path)
{
	chmod(path, 0700);
	nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tc_log_root(void)
{
	static char root[PATH_MAX];
	snprintf(root, sizeof root, "/tmp/shmbus-logtest-%lu-%s", tc_run_pid(), tc_bus);
	setenv("SHMBUS_LOG_DIR", root, 1);
	return root;
}

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
	(void)set;
	char buf[32];
	snprintf(buf, sizeof buf, "%lu", (unsigned long)getpid());
	setenv(RUN_PID_ENV, buf, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
	(void)stats;
	tc_cleanup_run();
}

/* ------------------------------------------------------------- buses */

shmbus_config_t tc_small_cfg(void)
{
	return (shmbus_config_t){
		.slots = 256,
		.slot_size = 256,
		.max_payload = 4096,
		.max_subscribers = 16,
		.max_members = 32,
		.block_timeout_ns = 1 * TC_SEC_NS,
		.stall_timeout_ns = 500 * TC_MS_NS,
		.reclaim_timeout_ns = 200 * TC_MS_NS,
	};
}

shmbus_bus_t *tc_create(const shmbus_config_t *cfg)
{
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_create(tc_bus, cfg, NULL, &bus);
	cr_assert_eq(rc, 0, "shmbus_create(%s) = %d (%s)", tc_bus, rc, shmbus_errmsg());
	cr_assert_not_null(bus);
	return bus;
}

shmbus_bus_t *tc_open(void)
{
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	cr_assert_eq(rc, 0, "shmbus_open(%s) = %d (%s)", tc_bus, rc, shmbus_errmsg());
	cr_assert_not_null(bus);
	return bus;
}

shmbus_pub_t *tc_pub(shmbus_bus_t *bus, const char *source, int64_t timeout_ns)
{
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t o = {.source = source, .timeout_ns = timeout_ns};
	int rc = shmbus_pub_open(bus, &o, &pub);
	cr_assert_eq(rc, 0, "shmbus_pub_open = %d (%s)", rc, shmbus_errmsg());
	cr_assert_not_null(pub);
	return pub;
}

shmbus_sub_t *tc_sub(shmbus_bus_t *bus, shmbus_filter_t *filter)
{
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.filter = filter};
	int rc = shmbus_subscribe(bus, &o, &sub);
	shmbus_filter_free(filter);
	cr_assert_eq(rc, 0, "shmbus_subscribe = %d (%s)", rc, shmbus_errmsg());
	cr_assert_not_null(sub);
	return sub;
}

int tc_publish_u32(shmbus_pub_t *pub, shmbus_type_t type, const char *name, shmbus_priority_t prio, uint32_t value)
{
	shmbus_msg_t m = {
		.type = type,
		.name = name,
		.priority = prio,
		.payload = &value,
		.payload_len = sizeof value,
	};
	return shmbus_publish(pub, &m, NULL);
}

void tc_u32_batch(shmbus_msg_t *msgs, uint32_t *vals, unsigned n, const char *name)
{
	for (unsigned i = 0; i < n; i++) {
		vals[i] = i;
		msgs[i] = (shmbus_msg_t){
			.type = SHMBUS_NOTIFICATION, .name = name, .payload = &vals[i], .payload_len = sizeof vals[i]};
	}
}

uint32_t tc_payload_u32(const shmbus_event_t *ev)
{
	size_t len = 0;
	const void *p = shmbus_event_payload(ev, &len);
	uint32_t v;
	if (!p || len != sizeof v)
		return UINT32_MAX;
	memcpy(&v, p, sizeof v);
	return v;
}

int tc_drain(shmbus_sub_t *sub, tc_event_fn fn, void *arg)
{
	int n = 0;
	for (;;) {
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_poll(sub, &ev);
		if (rc < 0)
			return rc;
		if (rc == 0)
			return n;
		if (fn)
			fn(ev, arg);
		rc = shmbus_release(sub, ev);
		if (rc < 0)
			return rc;
		n++;
	}
}

int tc_collect(shmbus_sub_t *sub, int want, int timeout_ms, tc_event_fn fn, void *arg)
{
	uint64_t deadline = tc_now_ns() + (uint64_t)timeout_ms * TC_MS_NS;
	int n = 0;
	while (n < want) {
		uint64_t now = tc_now_ns();
		if (now >= deadline)
			break;
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_wait(sub, (int64_t)(deadline - now), &ev);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			return rc;
		if (rc == 0)
			continue;
		if (fn)
			fn(ev, arg);
		rc = shmbus_release(sub, ev);
		if (rc < 0)
			return rc;
		n++;
	}
	return n;
}

/* -------------------------------------------------------------- time */

uint64_t tc_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * TC_SEC_NS + (uint64_t)ts.tv_nsec;
}

uint64_t tc_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * TC_SEC_NS + (uint64_t)ts.tv_nsec;
}

void tc_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* ------------------------------------------------------------ processes */

pid_t tc_fork(int (*fn)(void *), void *arg)
{
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(98);
		int rc = fn(arg);
		fflush(NULL);
		_exit(rc);
	}
	return pid;
}

int tc_wait(pid_t pid, int timeout_ms, int *status)
{
	uint64_t deadline = tc_now_ns() + (uint64_t)timeout_ms * TC_MS_NS;
	for (;;) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (status)
				*status = st;
			return 0;
		}
		if (r < 0 && errno != EINTR)
			return -errno;
		if (tc_now_ns() >= deadline)
			break;
		tc_sleep_ms(5);
	}
	kill(pid, SIGKILL);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (status)
		*status = st;
	return -ETIMEDOUT;
}

int tc_kill9(pid_t pid)
{
	int st = 0;
	kill(pid, SIGKILL);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return st;
}

const char *tc_status_str(int status)
{
	static __thread char buf[64];
	if (WIFEXITED(status))
		snprintf(buf, sizeof buf, "exited %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, sizeof buf, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, sizeof buf, "status 0x%x", status);
	return buf;
}

int tc_child_fail(const char *file, int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "child %d: %s:%d: %s (errmsg: %s)\n", (int)getpid(), file, line, msg, shmbus_errmsg());
	fflush(stderr);
	return 1;
}

int tc_child_subscribe(const shmbus_sub_opts_t *o, shmbus_bus_t **bus, shmbus_sub_t **sub)
{
	int rc = shmbus_open(tc_bus, NULL, bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	if ((rc = shmbus_subscribe(*bus, o, sub)) < 0)
		return CHILD_FAIL("subscribe %d", rc);
	return 0;
}

int tc_child_publisher(const shmbus_pub_opts_t *o, shmbus_bus_t **bus, shmbus_pub_t **pub)
{
	int rc = shmbus_open(tc_bus, NULL, bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	if ((rc = shmbus_pub_open(*bus, o, pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	return 0;
}

int tc_child_publish_n(shmbus_type_t type, const char *name, uint32_t n, int64_t timeout_ns)
{
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	int rc = tc_child_publisher(&(shmbus_pub_opts_t){.timeout_ns = timeout_ns}, &bus, &pub);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < n; i++)
		if ((rc = tc_publish_u32(pub, type, name, 0, i)) < 0)
			return CHILD_FAIL("publish %s #%u: %d (%s)", name, i, rc, shmbus_errmsg());
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

int tc_write_byte(int fd, char c)
{
	for (;;) {
		ssize_t w = write(fd, &c, 1);
		if (w == 1)
			return 0;
		if (w < 0 && errno == EINTR)
			continue;
		return w < 0 ? -errno : -EIO;
	}
}

int tc_read_byte(int fd, int timeout_ms, char *c)
{
	uint64_t deadline = tc_now_ns() + (uint64_t)timeout_ms * TC_MS_NS;
	for (;;) {
		uint64_t now = tc_now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int rc = poll(&p, 1, (int)((deadline - now) / TC_MS_NS) + 1);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return -errno;
		if (rc == 0)
			continue;
		ssize_t r = read(fd, c, 1);
		if (r == 1)
			return 0;
		if (r < 0 && errno == EINTR)
			continue;
		return r == 0 ? -EPIPE : -errno;
	}
}

void *tc_shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap shared %zu: %s", size, strerror(errno));
	return p;
}

void tc_shared_free(void *p, size_t size)
{
	if (p)
		munmap(p, size);
}

/* ---------------------------------------------------------- run a tool */

static void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t nc = *cap ? *cap : 4096;
		while (nc < *len + n + 1)
			nc *= 2;
		char *nb = realloc(*buf, nc);
		cr_assert_not_null(nb);
		*buf = nb;
		*cap = nc;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	(*buf)[*len] = '\0';
}

const char *tc_tool(const char *env)
{
	const char *p = getenv(env);
	cr_assert(p && *p, "%s is not set (run through meson test)", env);
	return p;
}

int tc_run(char *const argv[], int timeout_ms, struct tc_run_result *r)
{
	memset(r, 0, sizeof *r);
	int out[2], err[2];
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		execv(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	size_t ocap = 0, ecap = 0;
	append(&r->out, &r->out_len, &ocap, "", 0);
	append(&r->err, &r->err_len, &ecap, "", 0);
	uint64_t deadline = tc_now_ns() + (uint64_t)timeout_ms * TC_MS_NS;
	bool oopen = true, eopen = true;
	while (oopen || eopen) {
		uint64_t now = tc_now_ns();
		if (now >= deadline) {
			r->timed_out = true;
			kill(pid, SIGKILL);
			break;
		}
		struct pollfd p[2] = {{.fd = oopen ? out[0] : -1, .events = POLLIN},
				      {.fd = eopen ? err[0] : -1, .events = POLLIN}};
		int rc = poll(p, 2, (int)((deadline - now) / TC_MS_NS) + 1);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			break;
		char buf[4096];
		if (oopen && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(out[0], buf, sizeof buf);
			if (n > 0)
				append(&r->out, &r->out_len, &ocap, buf, (size_t)n);
			else if (n == 0 || errno != EINTR)
				oopen = false;
		}
		if (eopen && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(err[0], buf, sizeof buf);
			if (n > 0)
				append(&r->err, &r->err_len, &ecap, buf, (size_t)n);
			else if (n == 0 || errno != EINTR)
				eopen = false;
		}
	}
	close(out[0]);
	close(err[0]);
	int rc = tc_wait(pid, r->timed_out ? 1000 : timeout_ms, &r->status);
	if (rc == -ETIMEDOUT)
		r->timed_out = true;
	return 0;
}

void tc_run_free(struct tc_run_result *r)
{
	free(r->out);
	free(r->err);
	memset(r, 0, sizeof *r);
}

/* --------------------------------------------------- raw shm objects */

static void shm_path(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "/dev/shm/shmbus.%s", name);
}

int tc_write_segment(const char *name, const void *bytes, size_t len)
{
	char path[128];
	shm_path(path, sizeof path, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	const char *p = bytes;
	size_t done = 0;
	while (done < len) {
		ssize_t w = write(fd, p + done, len - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		done += (size_t)w;
	}
	close(fd);
	return 0;
}

long tc_copy_segment(const char *from, const char *to, size_t len)
{
	char path[128];
	shm_path(path, sizeof path, from);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	size_t want = len ? len : (size_t)st.st_size;
	char *buf = malloc(want ? want : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t done = 0;
	while (done < want) {
		ssize_t r = pread(fd, buf + done, want - done, (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		done += (size_t)r;
	}
	close(fd);
	int rc = tc_write_segment(to, buf, done);
	free(buf);
	return rc < 0 ? rc : (long)st.st_size;
}

int tc_patch_segment(const char *name, size_t off, const void *bytes, size_t len)
{
	char path[128];
	shm_path(path, sizeof path, name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t w = pwrite(fd, bytes, len, (off_t)off);
	int e = errno;
	close(fd);
	if (w < 0)
		return -e;
	return (size_t)w == len ? 0 : -EIO;
}

uint64_t tc_mix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

bool tc_leases_available(void)
{
	long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
	return q >= 0 && (q & MEMBARRIER_CMD_GLOBAL_EXPEDITED) &&
	       syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}
