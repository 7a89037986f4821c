/*
 * segment.c - the life of the shm object: geometry, creation, validation,
 * the double mapping of the data region.
 */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "atomics.h"
#include "event_format.h"
#include "liveness.h"
#include "queue.h"

#define PAGE 4096ull

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static int is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

uint64_t seg_max_event_bytes(uint32_t max_payload)
{
	/* fixed header, 7 strings and the metadata area at their limits, the
	 * payload, and the padding that aligns it */
	uint64_t strings = SEG_EVENT_STRINGS * (SEG_EVENT_STR_MAX + 1ull) +
			   SEG_EVENT_META_MAX * (SEG_EVENT_META_KEY_MAX + SEG_EVENT_META_VALUE_MAX + 2ull);
	return align_up(SEG_EVENT_FIXED + strings, 8) + max_payload;
}

int seg_geometry(const struct seg_params *p, struct seg_geometry *g, const char **why)
{
	if (!is_pow2(p->slot_count) || p->slot_count < SEG_MIN_SLOTS || p->slot_count > SEG_MAX_SLOTS) {
		*why = "slots must be a power of two between 64 and 4194304";
		return -EINVAL;
	}
	if (!is_pow2(p->slot_size) || p->slot_size < SEG_MIN_SLOT_SIZE || p->slot_size > SEG_MAX_SLOT_SIZE) {
		*why = "slot size must be a power of two between 256 and 65536";
		return -EINVAL;
	}
	if (p->max_subscribers < 1 || p->max_subscribers > SEG_MAX_SUBSCRIBERS) {
		*why = "max subscribers must be between 1 and 256";
		return -EINVAL;
	}
	if (p->max_members < 2 || p->max_members > SEG_MAX_MEMBERS) {
		*why = "max members must be between 2 and 255";
		return -EINVAL;
	}
	if (p->max_payload > (1u << 30)) {
		*why = "max payload must be at most 1 GiB";
		return -EINVAL;
	}
	uint64_t data_size = (uint64_t)p->slot_count * p->slot_size;
	if (data_size % PAGE) {
		*why = "slots * slot size must be a multiple of 4096";
		return -EINVAL;
	}
	/* The largest event must fit in half the ring so that a publisher can
	 * always make progress while the other half drains. */
	if (seg_max_event_bytes(p->max_payload) > data_size / 2) {
		*why = "max payload does not fit in half the ring: raise slots or slot size";
		return -EINVAL;
	}
	if (p->mode & ~0777u) {
		*why = "mode must be permission bits (octal <= 0777)";
		return -EINVAL;
	}
	g->slot_shift = (uint32_t)__builtin_ctz(p->slot_count);
	g->members_off = SEG_HEADER_SIZE;
	g->pubs_off = g->members_off + (uint64_t)p->max_members * sizeof(struct seg_member);
	g->subs_off = align_up(g->pubs_off + (uint64_t)p->max_members * sizeof(struct seg_pub), PAGE);
	g->cells_off = g->subs_off + (uint64_t)p->max_subscribers * SEG_SUB_SIZE;
	g->slot_ctl_off = g->cells_off + (uint64_t)p->max_subscribers * SEG_QUEUE_CELL_CLASSES * p->slot_count * sizeof(struct seg_cell);
	g->data_off = align_up(g->slot_ctl_off + (uint64_t)p->slot_count * sizeof(struct seg_slot_ctl), PAGE);
	g->data_size = data_size;
	g->total_size = g->data_off + data_size;
	return 0;
}

uint64_t seg_layout_hash(void)
{
	char desc[768];
	int n = snprintf(desc, sizeof desc,
			 "shmbus-layout v%u hdr=%zu claim=%zu space=%zu route=%zu member=%zu pub=%zu routing=%zu "
			 "sub=%zu ends=%zu filter=%zu consumers=%zu consumer=%zu held=%u cell=%zu event=%zu fmt=%u "
			 "ctl=%d/%d turn=%d/%d holders=%u slot=%zu missed_taken=%zu locked_take=%zu take=%zu drain=%zu desc=%d "
			 "log=%zu/%zu gap=%zu/%zu claiming=%zu dispatch=%zu/%zu revoke=%zu dropping=%llx redeliver=%zu/%u/%d "
			 "route_fence=%zu vacant=%llx",
			 SEG_LAYOUT_VERSION, sizeof(struct seg_header), offsetof(struct seg_header, claim_pos),
			 offsetof(struct seg_header, space_futex), offsetof(struct seg_header, route_epoch),
			 sizeof(struct seg_member), sizeof(struct seg_pub), offsetof(struct seg_pub, routing),
			 sizeof(struct seg_sub), offsetof(struct seg_sub, ends), offsetof(struct seg_sub, filter),
			 offsetof(struct seg_sub, consumers), sizeof(struct seg_consumer), SEG_HELD_MAX,
			 sizeof(struct seg_cell), sizeof(struct seg_event), SEG_EVENT_FORMAT, SEG_CTL_STATE_SHIFT,
			 SEG_CTL_LAP_SHIFT, SEG_TURN_OWNER_SHIFT, SEG_TURN_RUN_SHIFT, SEG_HOLDER_WORDS, sizeof(struct seg_slot_ctl), offsetof(struct seg_sub, missed_taken),
			 offsetof(struct seg_header, locked_take), offsetof(struct seg_consumer, take),
			 offsetof(struct seg_pub, drain), __builtin_ctzll(SEG_DESC_REVOKED),
			 offsetof(struct seg_header, log_next), offsetof(struct seg_header, log_dir),
			 offsetof(struct seg_sub, gap_lo), offsetof(struct seg_consumer, log_low),
			 /* a library that does not record its claims, or keep the
			 * dispatch counters, must not share a bus with one that does */
			 offsetof(struct seg_pub, claiming), offsetof(struct seg_sub, completed),
			 offsetof(struct seg_consumer, processing),
			 /* nor one whose parties may clear a hold they did not
			 * win (revocations outside the table lock, a consumer
			 * that clears its bit before its entry) */
			 offsetof(struct seg_header, locked_revoke), (unsigned long long)SEG_DESC_DROPPING,
			 /* nor one that gives a dead consumer's events back to the
			 * tail of their queue with one that serves them first */
			 offsetof(struct seg_sub, redeliver_ends), SEG_REDELIVER_CELLS, SEG_QUEUE_CLASSES,
			 /* nor one that routes with a full fence and ends grace
			 * periods without membarrier with one that may route with
			 * the light one; nor one whose EMPTY cells hold another
			 * value than the single push's CAS expects */
			 offsetof(struct seg_header, route_fence), (unsigned long long)SEG_DESC_VACANT);
	if (n < 0 || (size_t)n >= sizeof desc)
		n = (int)sizeof desc - 1; /* never: the description fits */
	return XXH3_64bits(desc, (size_t)n);
}

void seg_shm_path(const char *name, char *out, size_t outlen)
{
	snprintf(out, outlen, "/shmbus.%s", name);
}

/* Reserve address space for header..data and a second copy of data, then
 * map the object over it twice. */
static int map_twice(struct seg_map *m, int prot)
{
	const struct seg_geometry *g = &m->geo;
	size_t len = (size_t)(g->data_off + 2 * g->data_size);
	uint8_t *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		return -errno;
	if (mmap(base, (size_t)(g->data_off + g->data_size), prot, MAP_SHARED | MAP_FIXED, m->fd, 0) == MAP_FAILED ||
	    mmap(base + g->data_off + g->data_size, (size_t)g->data_size, prot, MAP_SHARED | MAP_FIXED, m->fd,
		 (off_t)g->data_off) == MAP_FAILED) {
		int err = errno;
		munmap(base, len);
		return -err;
	}
	m->base = base;
	m->map_len = len;
	m->hdr = (struct seg_header *)base;
	/* A forked child must not inherit the mapping: a mapping holds the
	 * open file description, and with it the parent's liveness lock, so
	 * a child would keep a dead parent looking alive. */
	(void)madvise(base, len, MADV_DONTFORK);
	/* Fault every page in now rather than one by one on the first lap of
	 * the ring (about half a microsecond each). Best effort: kernels
	 * before 5.14 do not know the advice. */
#ifdef MADV_POPULATE_WRITE
	if (prot & PROT_WRITE)
		(void)madvise(base, (size_t)(g->data_off + g->data_size), MADV_POPULATE_WRITE);
#endif
	return 0;
}

static void init_regions(struct seg_map *m, const struct seg_params *p)
{
	struct seg_header *h = m->hdr;
	uint8_t *base = m->base;
	for (uint32_t s = 0; s < p->max_subscribers; s++) {
		struct seg_sub *sub = (struct seg_sub *)(base + m->geo.subs_off + (uint64_t)s * SEG_SUB_SIZE);
		for (unsigned k = 0; k < SEG_QUEUE_CLASSES; k++) {
			bool redeliver = k == SEG_QUEUE_REDELIVER;
			struct queue_view q = {
				.ends = seg_sub_ends(sub, k),
				.cells = redeliver ? sub->redeliver_cells
						   : (struct seg_cell *)(base + m->geo.cells_off) +
							     ((uint64_t)s * SEG_QUEUE_CELL_CLASSES + k) * p->slot_count,
				.cap = redeliver ? SEG_REDELIVER_CELLS : p->slot_count,
			};
			queue_init(&q);
		}
	}
	(void)h;
}

int seg_create(const char *name, const struct seg_params *p, uint64_t incarnation, struct seg_map *m, const char **why)
{
	char path[96];
	int rc = seg_geometry(p, &m->geo, why);
	if (rc)
		return rc;
	seg_shm_path(name, path, sizeof path);
	int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, p->mode);
	if (fd < 0) {
		*why = errno == EEXIST ? "a bus with this name exists" : "shm_open failed";
		return -errno;
	}
	m->fd = fd;
	/* Hold the init lock so an attacher can tell "being created" from
	 * "creator died half way". */
	if ((rc = live_lock(fd, SEG_LOCK_INIT)) < 0) {
		*why = "cannot lock the new segment";
		goto fail;
	}
	if (fchmod(fd, p->mode) < 0) {
		rc = -errno;
		*why = "cannot set the segment's mode";
		goto fail;
	}
	rc = posix_fallocate(fd, 0, (off_t)m->geo.total_size);
	if (rc) {
		rc = -rc;
		*why = rc == -ENOSPC ? "not enough space in /dev/shm for the bus" : "cannot size the segment";
		goto fail;
	}
	if ((rc = map_twice(m, PROT_READ | PROT_WRITE)) < 0) {
		*why = "cannot map the segment";
		goto fail;
	}
	struct seg_header *h = m->hdr;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	h->magic = SEG_MAGIC;
	h->layout_version = SEG_LAYOUT_VERSION;
	h->layout_hash = seg_layout_hash();
	h->total_size = m->geo.total_size;
	h->incarnation = incarnation;
	h->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	h->slot_count = p->slot_count;
	h->slot_size = p->slot_size;
	h->max_payload = p->max_payload;
	h->max_subscribers = p->max_subscribers;
	h->max_members = p->max_members;
	h->queue_capacity = p->slot_count;
	h->mode = p->mode;
	h->block_timeout_ns = p->block_timeout_ns;
	h->stall_timeout_ns = p->stall_timeout_ns;
	h->reclaim_timeout_ns = p->reclaim_timeout_ns;
	h->flags = p->flags;
	h->members_off = m->geo.members_off;
	h->pubs_off = m->geo.pubs_off;
	h->subs_off = m->geo.subs_off;
	h->cells_off = m->geo.cells_off;
	h->slot_ctl_off = m->geo.slot_ctl_off;
	h->data_off = m->geo.data_off;
	snprintf(h->name, sizeof h->name, "%s", name);
	init_regions(m, p);
	at_store_release_u32(&h->state, SEG_STATE_READY);
	live_unlock(fd, SEG_LOCK_INIT);
	return 0;
fail:
	if (m->base)
		munmap(m->base, m->map_len);
	m->base = NULL;
	close(fd);
	shm_unlink(path);
	return rc;
}

int seg_check_header(const struct seg_header *h, uint64_t file_size, struct seg_geometry *g, const char **why)
{
	if (file_size < SEG_HEADER_SIZE) {
		*why = "truncated: smaller than a segment header";
		return -EBADMSG;
	}
	if (h->magic != SEG_MAGIC) {
		*why = "not a shmbus segment (bad magic)";
		return -EPROTO;
	}
	if (h->layout_version != SEG_LAYOUT_VERSION) {
		*why = "segment layout version differs from this library's";
		return -EPROTO;
	}
	if (h->state != SEG_STATE_READY) {
		*why = "segment is not initialised (being created, or its creator died)";
		return -EBUSY;
	}
	if (h->layout_hash != seg_layout_hash()) {
		*why = "segment layout hash differs from this library's (built with another layout)";
		return -EPROTO;
	}
	struct seg_params p = {
		.slot_count = h->slot_count,
		.slot_size = h->slot_size,
		.max_payload = h->max_payload,
		.max_subscribers = h->max_subscribers,
		.max_members = h->max_members,
		.mode = h->mode,
	};
	if (seg_geometry(&p, g, why) < 0)
		return -EBADMSG;
	if (h->queue_capacity != h->slot_count || h->members_off != g->members_off || h->pubs_off != g->pubs_off ||
	    h->subs_off != g->subs_off || h->cells_off != g->cells_off || h->slot_ctl_off != g->slot_ctl_off ||
	    h->data_off != g->data_off) {
		*why = "region offsets disagree with the configuration";
		return -EBADMSG;
	}
	if (h->total_size != g->total_size || file_size != g->total_size) {
		*why = "segment size differs from the size its configuration needs (truncated?)";
		return -EBADMSG;
	}
	if (memchr(h->name, '\0', sizeof h->name) == NULL) {
		*why = "bus name in the header is not terminated";
		return -EBADMSG;
	}
	return 0;
}

enum seg_unwritten seg_header_unwritten(int fd, const struct stat *st)
{
	uint64_t magic = 0;
	if (st->st_size > 0 && pread(fd, &magic, st->st_size < (off_t)sizeof magic ? (size_t)st->st_size : sizeof magic,
				     0) < 0)
		return SEG_HEADER_WRITTEN; /* unreadable: let the header checks say */
	if (magic != 0)
		return SEG_HEADER_WRITTEN;
	if (live_is_locked(fd, SEG_LOCK_INIT) != 0)
		return SEG_UNWRITTEN_CREATING; /* its creator holds it: at work */
	/* the creator locks right after shm_open: a young object may be in
	 * that window */
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return now.tv_sec - st->st_mtim.tv_sec > SEG_UNWRITTEN_GRACE_S ? SEG_UNWRITTEN_ABANDONED
									: SEG_UNWRITTEN_CREATING;
}

int seg_open(const char *name, struct seg_map *m, const char **why)
{
	char path[96];
	seg_shm_path(name, path, sizeof path);
	int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0) {
		int err = errno;
		*why = err == ENOENT ? "no such bus" : err == EACCES ? "permission denied" : "shm_open failed";
		return -err;
	}
	struct stat st;
	struct seg_header h;
	int rc;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		*why = "fstat failed";
		goto fail;
	}
	memset(&h, 0, sizeof h);
	/* what there is of a header: a short object's bytes too, so that one
	 * with a magic (a truncated copy) is told from one never written */
	size_t have = (uint64_t)st.st_size < sizeof h ? (size_t)st.st_size : sizeof h;
	if (have && pread(fd, &h, have, 0) != (ssize_t)have) {
		rc = -EBADMSG;
		*why = "cannot read the segment header";
		goto fail;
	}
	rc = seg_check_header(&h, (uint64_t)st.st_size, &m->geo, why);
	if (rc == -EBUSY && live_is_locked(fd, SEG_LOCK_INIT) == 0) {
		rc = -EPROTO;
		*why = "segment was never fully created (its creator died): remove it with shmbus rm or gc";
	}
	/* Not even its header written: a creator at work (or one that just
	 * opened it and is about to lock), or one that died before writing */
	enum seg_unwritten unwritten = rc != 0 ? seg_header_unwritten(fd, &st) : SEG_HEADER_WRITTEN;
	if (unwritten == SEG_UNWRITTEN_CREATING) {
		rc = -EBUSY;
		*why = "segment is being created";
	} else if (unwritten == SEG_UNWRITTEN_ABANDONED) {
		rc = -EPROTO;
		*why = "segment was never fully created (its creator died before writing its header): remove it "
		       "with shmbus rm or gc";
	}
	/* A copy or a renamed object still names the bus it was made for, and
	 * that name is where its log lives: attached under another name, its
	 * recorder would write into the other bus's log. */
	if (rc == 0 && strncmp(h.name, name, sizeof h.name) != 0) {
		rc = -EPROTO;
		*why = "segment was created as another bus (a copy, or a renamed object)";
	}
	if (rc)
		goto fail;
	m->fd = fd;
	if ((rc = map_twice(m, PROT_READ | PROT_WRITE)) < 0) {
		*why = "cannot map the segment";
		goto fail;
	}
	return 0;
fail:
	close(fd);
	return rc;
}

void seg_unmap(struct seg_map *m)
{
	if (m->base)
		munmap(m->base, m->map_len);
	m->base = NULL;
	m->hdr = NULL;
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
}
