/*
 * directory.c - the buses in /dev/shm: listing, and removing stale ones.
 *
 * A bus is stale when a member entry is still ACTIVE but nobody holds its
 * liveness lock, and no member is alive: its processes died without
 * detaching and nobody is left to reclaim. A bus that was created and
 * cleanly left is idle, not stale (`shmbus rm` removes it).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "liveness.h"

#define SHM_DIR "/dev/shm"
#define PREFIX "shmbus."

static void probe(const char *name, shmbus_bus_entry_t *e)
{
	char path[sizeof SHM_DIR + sizeof PREFIX + SHMBUS_NAME_MAX + 2];
	memset(e, 0, sizeof *e);
	snprintf(e->name, sizeof e->name, "%s", name);
	snprintf(path, sizeof path, SHM_DIR "/" PREFIX "%s", name);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	struct stat st;
	struct seg_header h;
	memset(&h, 0, sizeof h); /* a short read leaves no magic behind */
	struct seg_geometry g;
	const char *why;
	if (fstat(fd, &st) == 0) {
		e->size = (uint64_t)st.st_size;
		if ((uint64_t)st.st_size >= sizeof h && pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h &&
		    seg_check_header(&h, (uint64_t)st.st_size, &g, &why) == 0) {
			e->valid = true;
			uint32_t dead = 0;
			for (uint32_t i = 0; i < h.max_members; i++) {
				struct seg_member m;
				if (pread(fd, &m, sizeof m, (off_t)(g.members_off + i * sizeof m)) != (ssize_t)sizeof m ||
				    m.state == SEG_MEMBER_FREE)
					continue;
				e->members++;
				/* as member_alive: a held lock whose pid is gone from our
				 * namespace was inherited by a forked child */
				bool gone = m.pidns && m.pidns == bus_pid_namespace() && m.pid &&
					    kill((pid_t)m.pid, 0) < 0 && errno == ESRCH;
				if (live_is_locked(fd, SEG_LOCK_MEMBER_BASE + i) > 0 && !gone)
					e->alive++;
				else
					dead++;
			}
			e->stale = e->alive == 0 && dead > 0;
		} else if ((uint64_t)st.st_size >= sizeof h && h.magic == SEG_MAGIC && h.state != SEG_STATE_READY &&
			   live_is_locked(fd, SEG_LOCK_INIT) == 0) {
			e->stale = true; /* its creator died half way */
		} else if (seg_header_unwritten(fd, &st) == SEG_UNWRITTEN_ABANDONED) {
			e->stale = true; /* its creator died before writing the header */
		}
	}
	close(fd);
}

SHMBUS_API int shmbus_list_buses(shmbus_bus_entry_t *out, size_t cap)
{
	if (cap && !out)
		return shmbus__fail(EINVAL, "out is NULL");
	DIR *d = opendir(SHM_DIR);
	if (!d)
		return shmbus__fail(errno, "cannot read " SHM_DIR);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strncmp(de->d_name, PREFIX, strlen(PREFIX)) != 0)
			continue;
		const char *name = de->d_name + strlen(PREFIX);
		if (shmbus_name_check(name) < 0)
			continue;
		if ((size_t)n < cap)
			probe(name, &out[n]);
		n++;
	}
	closedir(d);
	return n;
}

SHMBUS_API int shmbus_gc(void)
{
	DIR *d = opendir(SHM_DIR);
	if (!d)
		return shmbus__fail(errno, "cannot read " SHM_DIR);
	int removed = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strncmp(de->d_name, PREFIX, strlen(PREFIX)) != 0)
			continue;
		const char *name = de->d_name + strlen(PREFIX);
		if (shmbus_name_check(name) < 0)
			continue;
		shmbus_bus_entry_t e;
		probe(name, &e);
		if (e.stale && shmbus_unlink(name) == 0)
			removed++;
	}
	closedir(d);
	return removed;
}
