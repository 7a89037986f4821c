/*
 * bus.c - bus lifecycle: create, attach (membership and liveness lock),
 * detach, unlink, and the fork rule.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "asym_fence.h"
#include "liveness.h"
#include "log.h"

uint64_t now_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t now_real_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The inode of our pid namespace (0 if unknown): pids are only compared
 * between members of one namespace. */
uint64_t bus_pid_namespace(void)
{
	static uint64_t ns;
	struct stat st;
	if (!ns && stat("/proc/self/ns/pid", &st) == 0)
		ns = (uint64_t)st.st_ino;
	return ns;
}

/* ------------------------------------------------------------- fork rule */

/* Every open bus of this process, so a forked child can close their
 * descriptors: an inherited descriptor would keep the parent's liveness
 * locks (they belong to the open file description) and make a dead parent
 * look alive. */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static shmbus_bus_t *open_buses;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void)
{
	/* The child has one thread; the lock may have been held by another
	 * thread of the parent, so reinitialise it rather than take it. */
	pthread_mutex_init(&open_lock, NULL);
	for (shmbus_bus_t *b = open_buses; b; b = b->next_open) {
		if (b->map.fd >= 0)
			close(b->map.fd);
		b->map.fd = -1;
		b->orphaned = true;
		/* The same for each handle's own locks: one a parent thread held
		 * at the fork stayed held in the child for good, and closing an
		 * inherited subscription or publisher hung on it. */
		pthread_mutex_init(&b->lock, NULL);
		pthread_mutex_init(&b->subs_mutex, NULL);
		pthread_mutex_init(&b->reclaim_mutex, NULL);
		if (b->log) {
			pthread_mutex_init(&b->log->lock, NULL);
			pthread_mutex_init(&b->log->pub_lock, NULL);
			pthread_mutex_init(&b->log->dlq_lock, NULL);
		}
	}
}

static void atfork_install(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static void open_list_add(shmbus_bus_t *b)
{
	pthread_once(&atfork_once, atfork_install);
	pthread_mutex_lock(&open_lock);
	b->next_open = open_buses;
	open_buses = b;
	pthread_mutex_unlock(&open_lock);
}

static void open_list_remove(shmbus_bus_t *b)
{
	pthread_mutex_lock(&open_lock);
	for (shmbus_bus_t **pp = &open_buses; *pp; pp = &(*pp)->next_open)
		if (*pp == b) {
			*pp = b->next_open;
			break;
		}
	pthread_mutex_unlock(&open_lock);
}

int bus_check_usable(const shmbus_bus_t *bus)
{
	if (!bus)
		return shmbus__fail(EINVAL, "bus is NULL");
	if (bus->orphaned)
		return shmbus__fail(ECHILD, "bus handle was inherited through fork(): open the bus again in the child");
	return 0;
}

/* -------------------------------------------------------------- names */

SHMBUS_API int shmbus_name_check(const char *name)
{
	if (!name || !name[0])
		return shmbus__fail(EINVAL, "bus name is empty");
	size_t n = strnlen(name, SHMBUS_NAME_MAX + 1);
	if (n > SHMBUS_NAME_MAX)
		return shmbus__fail(ENAMETOOLONG, "bus name is longer than %d characters", SHMBUS_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return shmbus__fail(EINVAL, "bus name '%s' has '%c': only [A-Za-z0-9._-] are allowed", name, c);
	}
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return shmbus__fail(EINVAL, "bus name '%s' is reserved", name);
	return 0;
}

/* ------------------------------------------------------------ attaching */

static void bus_bind(shmbus_bus_t *b, const char *name)
{
	struct seg_header *h = b->map.hdr;
	uint8_t *base = b->map.base;
	snprintf(b->name, sizeof b->name, "%s", name);
	b->hdr = h;
	b->members = (struct seg_member *)(base + h->members_off);
	b->pubs = (struct seg_pub *)(base + h->pubs_off);
	b->subs = (struct seg_sub *)(base + h->subs_off);
	b->cells = (struct seg_cell *)(base + h->cells_off);
	b->slot_ctl = (struct seg_slot_ctl *)(base + h->slot_ctl_off);
	b->data = base + h->data_off;
	b->nslots = h->slot_count;
	b->slot_mask = h->slot_count - 1;
	b->slot_shift = b->map.geo.slot_shift;
	b->slot_size_shift = (uint32_t)__builtin_ctz(h->slot_size);
	b->max_subs = h->max_subscribers;
	b->max_members = h->max_members;
	b->max_event_bytes = seg_max_event_bytes(h->max_payload);
	b->reclaim_interval_ns = h->reclaim_timeout_ns / 2 ? h->reclaim_timeout_ns / 2 : 1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->subs_mutex, NULL);
	pthread_mutex_init(&b->reclaim_mutex, NULL);
}

/* Find a free member entry and make it ours: the OFD lock on its byte is
 * taken first, so an entry that reads ACTIVE is always locked by a living
 * process or by nobody (then its owner died and it awaits reclaim). */
static int member_join(shmbus_bus_t *b, const char *label)
{
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t i = 0; i < b->max_members; i++) {
			struct seg_member *m = &b->members[i];
			if (at_load_acquire_u32(&m->state) != SEG_MEMBER_FREE)
				continue;
			if (live_lock(b->map.fd, SEG_LOCK_MEMBER_BASE + i) < 0)
				continue;
			uint32_t expected = SEG_MEMBER_FREE;
			if (!at_cas_u32(&m->state, &expected, SEG_MEMBER_ACTIVE)) {
				live_unlock(b->map.fd, SEG_LOCK_MEMBER_BASE + i);
				continue;
			}
			m->pid = (uint32_t)getpid();
			m->pidns = bus_pid_namespace();
			m->attach_ns = now_real_ns();
			snprintf(m->label, sizeof m->label, "%s", label);
			b->member = i;
			b->member_gen = at_fetch_add_u64(&m->generation, 1) + 1;
			return 0;
		}
		/* Full: reclaim dead members once, then look again. */
		if (pass == 0 && reclaim_for_join(b) <= 0)
			break;
	}
	return shmbus__fail(ENOSPC, "bus '%s' has no free member entry (max members %u)", b->name, b->max_members);
}

static const char *default_label(const shmbus_open_opts_t *opts, char *buf, size_t len)
{
	if (opts && opts->label)
		return opts->label;
	char comm[32] = "";
	FILE *f = fopen("/proc/self/comm", "r");
	if (f) {
		if (fgets(comm, sizeof comm, f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	snprintf(buf, len, "%s", comm[0] ? comm : "process");
	return buf;
}

/* The open options' label fits a member entry (it was cut short). */
static int check_label(const shmbus_open_opts_t *opts)
{
	if (opts && opts->label && strnlen(opts->label, SHMBUS_ID_MAX + 1) > SHMBUS_ID_MAX)
		return shmbus__fail(ENAMETOOLONG, "label is longer than %d bytes", SHMBUS_ID_MAX);
	return 0;
}

static int attach(shmbus_bus_t *b, const char *name, const shmbus_open_opts_t *opts)
{
	char lbuf[64];
	bus_bind(b, name);
	b->member = UINT32_MAX;
	/* A process that cannot issue membarrier could not end a grace
	 * period against publishers routing with the light fence: before it
	 * takes part in anything, they stop using it (routing_begin). */
	if (asym_fence_register() < 0)
		sub_route_fence_full(b);
	int rc = member_join(b, default_label(opts, lbuf, sizeof lbuf));
	if (rc < 0)
		return rc;
	open_list_add(b);
	return 0;
}

static void params_from_config(const shmbus_config_t *c, struct seg_params *p)
{
	shmbus_config_t z = {0};
	if (!c)
		c = &z;
	p->slot_count = c->slots ? c->slots : DEFAULT_SLOTS;
	p->slot_size = c->slot_size ? c->slot_size : DEFAULT_SLOT_SIZE;
	p->max_payload = c->max_payload ? c->max_payload : DEFAULT_MAX_PAYLOAD;
	p->max_subscribers = c->max_subscribers ? c->max_subscribers : DEFAULT_MAX_SUBSCRIBERS;
	p->max_members = c->max_members ? c->max_members : DEFAULT_MAX_MEMBERS;
	p->mode = c->mode ? c->mode : DEFAULT_MODE;
	p->block_timeout_ns = c->block_timeout_ns ? c->block_timeout_ns : DEFAULT_BLOCK_TIMEOUT_NS;
	p->stall_timeout_ns = c->stall_timeout_ns ? c->stall_timeout_ns : DEFAULT_STALL_TIMEOUT_NS;
	p->reclaim_timeout_ns = c->reclaim_timeout_ns ? c->reclaim_timeout_ns : DEFAULT_RECLAIM_TIMEOUT_NS;
	p->flags = c->dead_letter_unrouted ? SEG_HDR_DEAD_LETTER_UNROUTED : 0;
}

SHMBUS_API int shmbus_create(const char *name, const shmbus_config_t *cfg, const shmbus_open_opts_t *opts,
			     shmbus_bus_t **out)
{
	int rc = shmbus_name_check(name);
	if (rc < 0 || (rc = check_label(opts)) < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	struct seg_params p;
	params_from_config(cfg, &p);
	shmbus_bus_t *b = calloc(1, sizeof *b);
	if (!b)
		return shmbus__fail(ENOMEM, "out of memory");
	b->map.fd = -1;
	uint64_t incarnation = 0;
	if (getrandom(&incarnation, sizeof incarnation, 0) != sizeof incarnation)
		incarnation = now_real_ns() ^ ((uint64_t)getpid() << 32);
	const char *why = "";
	rc = seg_create(name, &p, incarnation, &b->map, &why);
	if (rc < 0) {
		free(b);
		return shmbus__fail(-rc, "create bus '%s': %s", name, why);
	}
	if ((rc = attach(b, name, opts)) < 0) {
		seg_unmap(&b->map);
		free(b);
		return rc;
	}
	*out = b;
	return 0;
}

SHMBUS_API int shmbus_open(const char *name, const shmbus_open_opts_t *opts, shmbus_bus_t **out)
{
	int rc = shmbus_name_check(name);
	if (rc < 0 || (rc = check_label(opts)) < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	shmbus_bus_t *b = calloc(1, sizeof *b);
	if (!b)
		return shmbus__fail(ENOMEM, "out of memory");
	b->map.fd = -1;
	const char *why = "";
	rc = seg_open(name, &b->map, &why);
	if (rc < 0) {
		free(b);
		return shmbus__fail(-rc, "open bus '%s': %s", name, why);
	}
	if ((rc = attach(b, name, opts)) < 0) {
		seg_unmap(&b->map);
		free(b);
		return rc;
	}
	*out = b;
	return 0;
}

/* Leave the member table: what this process still has open is closed
 * first, so its entry carries nothing a survivor must reclaim. */
SHMBUS_API void shmbus_close(shmbus_bus_t *bus)
{
	if (!bus)
		return;
	open_list_remove(bus);
	log_state_free(bus); /* the recorder and replay publisher close first */
	if (!bus->orphaned && bus->member != UINT32_MAX) {
		while (bus->subs_open)
			shmbus_sub_close(bus->subs_open);
		while (bus->pubs_open)
			shmbus_pub_close(bus->pubs_open);
		/* Nothing should be left; whatever is (a claim never committed)
		 * is reclaimed as if we had died. reclaim_member frees the entry
		 * and drops our lock on it. */
		reclaim_member(bus, bus->member);
	}
	seg_unmap(&bus->map);
	pthread_mutex_destroy(&bus->lock);
	pthread_mutex_destroy(&bus->subs_mutex);
	pthread_mutex_destroy(&bus->reclaim_mutex);
	free(bus);
}

SHMBUS_API int shmbus_unlink(const char *name)
{
	int rc = shmbus_name_check(name);
	if (rc < 0)
		return rc;
	char path[96];
	seg_shm_path(name, path, sizeof path);
	if (shm_unlink(path) < 0)
		return shmbus__fail(errno, "remove bus '%s': %s", name, errno == ENOENT ? "no such bus" : "shm_unlink failed");
	return 0;
}

SHMBUS_API const char *shmbus_bus_name(const shmbus_bus_t *bus)
{
	return bus ? bus->name : "";
}

SHMBUS_API void shmbus_bus_config(const shmbus_bus_t *bus, shmbus_config_t *out)
{
	const struct seg_header *h = bus->hdr;
	memset(out, 0, sizeof *out);
	if (bus->orphaned)
		return; /* a forked child's: the mapping is not in the child */
	out->slots = h->slot_count;
	out->slot_size = h->slot_size;
	out->max_payload = h->max_payload;
	out->max_subscribers = h->max_subscribers;
	out->max_members = h->max_members;
	out->mode = h->mode;
	out->block_timeout_ns = h->block_timeout_ns;
	out->stall_timeout_ns = h->stall_timeout_ns;
	out->reclaim_timeout_ns = h->reclaim_timeout_ns;
	out->dead_letter_unrouted = h->flags & SEG_HDR_DEAD_LETTER_UNROUTED;
}

void bus_track_pub(shmbus_bus_t *bus, shmbus_pub_t *pub, bool add)
{
	pthread_mutex_lock(&bus->lock);
	if (add) {
		pub->next = bus->pubs_open;
		bus->pubs_open = pub;
	} else {
		for (shmbus_pub_t **pp = &bus->pubs_open; *pp; pp = &(*pp)->next)
			if (*pp == pub) {
				*pp = pub->next;
				break;
			}
	}
	pthread_mutex_unlock(&bus->lock);
}

void bus_track_sub(shmbus_bus_t *bus, shmbus_sub_t *sub, bool add)
{
	pthread_mutex_lock(&bus->lock);
	if (add) {
		sub->next = bus->subs_open;
		bus->subs_open = sub;
	} else {
		for (shmbus_sub_t **pp = &bus->subs_open; *pp; pp = &(*pp)->next)
			if (*pp == sub) {
				*pp = sub->next;
				break;
			}
	}
	pthread_mutex_unlock(&bus->lock);
}

/* Whether this thread holds a table lock: a sweep for dead members takes
 * it too, so waits under it must not start one (the mutex is not
 * recursive). */
static __thread unsigned subs_lock_depth;

bool bus_holds_subs_lock(void)
{
	return subs_lock_depth > 0;
}

int bus_lock_subs(shmbus_bus_t *bus)
{
	pthread_mutex_lock(&bus->subs_mutex);
	int rc = live_lock_wait(bus->map.fd, SEG_LOCK_SUBS);
	if (rc < 0) {
		pthread_mutex_unlock(&bus->subs_mutex);
		return shmbus__fail(-rc, "cannot lock the subscription table");
	}
	subs_lock_depth++;
	sub_lock_recover(bus);
	return 0;
}

int bus_trylock_subs(shmbus_bus_t *bus)
{
	/* a thread of ours that holds it (the mutex is not recursive), or
	 * another description's holder */
	if (pthread_mutex_trylock(&bus->subs_mutex) != 0)
		return -EBUSY;
	if (live_lock(bus->map.fd, SEG_LOCK_SUBS) < 0) {
		pthread_mutex_unlock(&bus->subs_mutex);
		return -EBUSY;
	}
	subs_lock_depth++;
	sub_lock_recover(bus);
	return 0;
}

void bus_unlock_subs(shmbus_bus_t *bus)
{
	subs_lock_depth--;
	live_unlock(bus->map.fd, SEG_LOCK_SUBS);
	pthread_mutex_unlock(&bus->subs_mutex);
}
