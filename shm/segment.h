/*
 * segment.h - creating, validating and mapping the shm object of a bus.
 *
 * The event data region is mapped twice, back to back, right after the
 * control regions, so an event that runs past the last slot continues
 * seamlessly into the first and every event is contiguous in memory.
 */
#ifndef SHMBUS_SHM_SEGMENT_H
#define SHMBUS_SHM_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

struct seg_params {
	uint32_t slot_count, slot_size, max_payload, max_subscribers, max_members, mode;
	uint64_t block_timeout_ns, stall_timeout_ns, reclaim_timeout_ns;
	uint32_t flags; /* SEG_HDR_* */
};

struct seg_map {
	int fd;
	uint8_t *base;	 /* start of the reservation: header at offset 0 */
	size_t map_len;	 /* data_off + 2 * data_size */
	struct seg_header *hdr;
	struct seg_geometry geo;
};

/* Fixed size of the largest event the ring accepts, given its config. */
uint64_t seg_max_event_bytes(uint32_t max_payload);

/* Check params and compute every region's offset. 0 or -EINVAL (*why). */
int seg_geometry(const struct seg_params *p, struct seg_geometry *g, const char **why);

/* xxh3-64 of a description of every shared struct's size and key offsets. */
uint64_t seg_layout_hash(void);

/* "/shmbus.NAME" into out (size >= 80). */
void seg_shm_path(const char *name, char *out, size_t outlen);

/*
 * seg_create - create, size (posix_fallocate), initialise and map a new
 * segment. The header's state turns READY last. -EEXIST, -ENOSPC, -errno.
 */
int seg_create(const char *name, const struct seg_params *p, uint64_t incarnation, struct seg_map *m, const char **why);

/*
 * seg_open - open and validate an existing segment, then map it. Reads the
 * header with pread() first, so nothing is trusted before it is checked.
 * -ENOENT, -EPROTO (magic, version or layout hash), -EBADMSG (size or
 * geometry), -EBUSY (still initialising), -errno.
 */
int seg_open(const char *name, struct seg_map *m, const char **why);

/*
 * seg_check_header - validate a header copy against a file size.
 * Returns 0 and fills *g, or -EPROTO / -EBADMSG / -EBUSY with *why.
 */
int seg_check_header(const struct seg_header *h, uint64_t file_size, struct seg_geometry *g, const char **why);

/* Whether the object's header was ever written: an object empty, or with
 * zeros where the magic goes, is a creator's at work while it holds lock
 * byte SEG_LOCK_INIT or for SEG_UNWRITTEN_GRACE_S after its last change
 * (it locks right after shm_open); after that its creator died before
 * writing the header. */
#define SEG_UNWRITTEN_GRACE_S 2
enum seg_unwritten { SEG_HEADER_WRITTEN, SEG_UNWRITTEN_CREATING, SEG_UNWRITTEN_ABANDONED };
struct stat;
enum seg_unwritten seg_header_unwritten(int fd, const struct stat *st);

void seg_unmap(struct seg_map *m);

#endif
