/*
 * log_dir.c - where a bus's log lives, its per-bus state in this process,
 * and the damage it has met.
 *
 * The root is chosen once, at the latest when the bus is configured: the
 * bus header's log_dir (shmbus_log_configure, `shmbus create --log-dir`),
 * else $SHMBUS_LOG_DIR of the reading process, else
 * SHMBUS_LOG_ROOT_DEFAULT. Storing it in the segment makes every process
 * of a bus agree on it without agreeing on an environment.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "log.h"
#include "log_seg.h"

static const char *default_root(void)
{
	const char *env = getenv("SHMBUS_LOG_DIR");
	return env && env[0] ? env : SHMBUS_LOG_ROOT_DEFAULT;
}

int log_bus_dir(const shmbus_bus_t *bus, const char *root_override, char *out, size_t cap)
{
	const char *root = root_override;
	char stored[SEG_LOG_DIR_MAX];
	if (!root && at_load_acquire_u32(&bus->hdr->log_dir_set)) {
		memcpy(stored, bus->hdr->log_dir, sizeof stored);
		stored[sizeof stored - 1] = '\0'; /* shared bytes: terminate our copy */
		root = stored;
	}
	if (!root || !root[0])
		root = default_root();
	int n = snprintf(out, cap, "%s/%s", root, bus->name);
	if (n < 0 || (size_t)n >= cap)
		return shmbus__fail(ENAMETOOLONG, "log directory '%s/%s' is too long", root, bus->name);
	return n;
}

SHMBUS_API int shmbus_log_dir(const shmbus_bus_t *bus, char *out, size_t cap)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	return log_bus_dir(bus, NULL, out, cap);
}

int log_mkdirs(const char *dir)
{
	char p[PATH_MAX];
	if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
		return shmbus__fail(ENAMETOOLONG, "log directory '%s' is too long", dir);
	for (char *s = p + 1;; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST)
			return shmbus__fail(errno, "log directory '%s': cannot create it: %s", p, strerror(errno));
		*s = c;
		if (!c)
			break;
	}
	struct stat st;
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return shmbus__fail(ENOTDIR, "log directory '%s' is not a directory", dir);
	if (access(dir, W_OK | X_OK) < 0)
		return shmbus__fail(errno, "log directory '%s' is not writable: %s", dir, strerror(errno));
	return 0;
}

SHMBUS_API shmbus_sync_t shmbus_log_sync(const shmbus_bus_t *bus)
{
	uint32_t v = bus && bus->hdr && !bus->orphaned ? at_load_acquire_u32(&bus->hdr->log_sync) : 0;
	return v >= SHMBUS_SYNC_NONE && v <= SHMBUS_SYNC_ALWAYS ? (shmbus_sync_t)v : SHMBUS_SYNC_BATCH;
}

SHMBUS_API int shmbus_log_configure(shmbus_bus_t *bus, const shmbus_log_config_t *cfg)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!cfg)
		return shmbus__fail(EINVAL, "config is NULL");
	if ((unsigned)cfg->sync > SHMBUS_SYNC_ALWAYS)
		return shmbus__fail(EINVAL, "unknown sync level %d", (int)cfg->sync);
	struct seg_header *h = bus->hdr;
	if (cfg->dir) {
		size_t n = strlen(cfg->dir);
		if (cfg->dir[0] != '/')
			return shmbus__fail(EINVAL, "log directory '%s' must be an absolute path", cfg->dir);
		if (n >= SEG_LOG_DIR_MAX - SHMBUS_NAME_MAX - 2)
			return shmbus__fail(ENAMETOOLONG, "log directory is longer than %u bytes",
					    SEG_LOG_DIR_MAX - SHMBUS_NAME_MAX - 3);
		/* It need not exist yet, but what exists must be able to hold
		 * it: a file there would fail every recorder and `rm` later. */
		struct stat st;
		if (stat(cfg->dir, &st) == 0 ? !S_ISDIR(st.st_mode) : errno == ENOTDIR)
			return shmbus__fail(ENOTDIR, "log directory '%s' is a file, or lies under one", cfg->dir);
		if (at_load_acquire_u32(&h->log_dir_set)) {
			if (strncmp(h->log_dir, cfg->dir, SEG_LOG_DIR_MAX) != 0)
				return shmbus__fail(EEXIST, "bus '%s' already logs to '%.*s'", bus->name, 200,
						    h->log_dir);
		} else {
			/* written before the flag that makes it visible */
			memcpy(h->log_dir, cfg->dir, n + 1);
			at_store_release_u32(&h->log_dir_set, 1);
		}
	}
	if (cfg->sync)
		at_store_release_u32(&h->log_sync, (uint32_t)cfg->sync);
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

SHMBUS_API int shmbus_log_remove(const char *name, const char *root)
{
	int rc = shmbus_name_check(name);
	if (rc < 0)
		return rc;
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof dir, "%s/%s", root ? root : default_root(), name) >= (int)sizeof dir)
		return shmbus__fail(ENAMETOOLONG, "log directory is too long");
	struct stat st;
	if (lstat(dir, &st) < 0)
		return shmbus__fail(errno, "log directory '%s': %s", dir, strerror(errno));
	if (nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
		return shmbus__fail(errno, "remove log directory '%s': %s", dir, strerror(errno));
	return 0;
}

SHMBUS_API int shmbus_log_owned(shmbus_bus_t *bus)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	char dir[PATH_MAX];
	if ((rc = log_bus_dir(bus, NULL, dir, sizeof dir)) < 0)
		return rc;
	uint64_t *firsts;
	size_t n;
	if ((rc = log_list_segments(dir, &firsts, &n)) < 0)
		return rc == -ENOENT ? shmbus__fail(ENOENT, "no log directory '%s'", dir) : rc;
	int owned = 1;
	for (size_t i = 0; i <= n && owned == 1; i++) { /* the segments, then dead.log */
		char path[PATH_MAX + 32];
		if (i < n)
			log_seg_path(dir, firsts[i], "log", path, sizeof path);
		else
			snprintf(path, sizeof path, "%s/dead.log", dir);
		struct log_file_header h;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* gone meanwhile */
		/* a header too short to say is nobody's we know: not ours */
		if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h || h.incarnation != bus->hdr->incarnation ||
		    strncmp(h.bus, bus->name, sizeof h.bus) != 0)
			owned = 0;
		close(fd);
	}
	free(firsts);
	return owned;
}

/* ------------------------------------------------------------ per-bus state */

struct log_state *log_state_get(shmbus_bus_t *bus)
{
	pthread_mutex_lock(&bus->lock);
	if (!bus->log) {
		struct log_state *st = calloc(1, sizeof *st);
		if (st) {
			pthread_mutex_init(&st->lock, NULL);
			pthread_mutex_init(&st->pub_lock, NULL);
			pthread_mutex_init(&st->dlq_lock, NULL);
			bus->log = st;
		}
	}
	pthread_mutex_unlock(&bus->lock);
	if (!bus->log)
		shmbus__fail(ENOMEM, "out of memory");
	return bus->log;
}

void log_state_free(shmbus_bus_t *bus)
{
	struct log_state *st = bus->log;
	if (!st)
		return;
	if (st->recorder)
		shmbus_recorder_close(st->recorder);
	if (st->pub && !bus->orphaned)
		shmbus_pub_close(st->pub);
	log_reader_close(&st->reader);
	for (struct log_map *m = st->maps, *n; m; m = n) {
		n = m->next;
		munmap(m->base, m->len);
		free(m);
	}
	for (size_t i = 0; i < st->ndamage; i++)
		free(st->damage[i]);
	free(st->damage);
	pthread_mutex_destroy(&st->lock);
	pthread_mutex_destroy(&st->pub_lock);
	pthread_mutex_destroy(&st->dlq_lock);
	free(st);
	bus->log = NULL;
}

int log_damage(shmbus_bus_t *bus, int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct log_state *st = bus ? log_state_get(bus) : NULL;
	if (st) {
		/* not st->lock: readers report damage while they hold it */
		pthread_mutex_lock(&bus->lock);
		bool seen = false;
		for (size_t i = 0; i < st->ndamage && !seen; i++)
			seen = strcmp(st->damage[i], msg) == 0;
		char **nd = seen ? NULL : realloc(st->damage, (st->ndamage + 1) * sizeof *nd);
		if (nd) {
			st->damage = nd;
			if ((nd[st->ndamage] = strdup(msg)))
				st->ndamage++;
		}
		pthread_mutex_unlock(&bus->lock);
	}
	return shmbus__fail(err, "%s", msg);
}

SHMBUS_API size_t shmbus_log_damage_count(shmbus_bus_t *bus)
{
	return bus && bus->log ? bus->log->ndamage : 0;
}

SHMBUS_API const char *shmbus_log_damage(shmbus_bus_t *bus, size_t i)
{
	return bus && bus->log && i < bus->log->ndamage ? bus->log->damage[i] : NULL;
}
