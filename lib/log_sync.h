/*
 * log_sync.h - syncing log data to disk, through io_uring when it is there
 * (lib-internal).
 */
#ifndef SHMBUS_LIB_LOG_SYNC_H
#define SHMBUS_LIB_LOG_SYNC_H

#include <stdbool.h>
#include <stdint.h>

struct io_uring;

struct log_sync {
	struct io_uring *ring; /* NULL: plain fdatasync */
	bool inflight;	       /* an fsync was submitted and not reaped */
	uint64_t target;       /* what the in-flight sync makes durable */
	uint64_t done;	       /* what the last completed sync made durable */
	uint64_t syncs;
};

/* Set up io_uring unless SHMBUS_NO_IO_URING=1 or the kernel refuses. */
void log_sync_init(struct log_sync *s);
/* Wait for an in-flight sync, tear down. */
void log_sync_fini(struct log_sync *s);
/* Start a data sync of fd that makes `target` durable when it completes:
 * submitted to io_uring (returns at once), or done now with fdatasync.
 * Does nothing while another is in flight. 0 or -errno. */
int log_sync_start(struct log_sync *s, int fd, uint64_t target);
/* Reap a completed sync: 1 (s->done advanced), 0 (none done), -errno
 * (the sync failed). wait: block until the in-flight one completes. */
int log_sync_poll(struct log_sync *s, bool wait);

/*
 * Prefaulting a mapped range on an io_uring worker (IORING_OP_MADVISE
 * with MADV_POPULATE_WRITE), so the pages the writer is about to fill
 * are allocated and zeroed by the kernel on a CPU the recorder does not
 * need, typically one whose publisher waits for space. One request at a
 * time; a write that overtakes it simply faults.
 */
struct log_prefault {
	struct io_uring *ring; /* NULL: not available, the caller populates itself */
	bool inflight;
};

/* Set up a ring unless SHMBUS_NO_IO_URING=1, the kernel refuses or has
 * no MADV_POPULATE_WRITE. */
void log_prefault_init(struct log_prefault *p);
/* Wait for the request in flight, tear down. */
void log_prefault_fini(struct log_prefault *p);
/* Whether a new request can start now (reaps a finished one). */
bool log_prefault_idle(struct log_prefault *p);
/* Start populating [addr, addr + len): true if submitted. */
bool log_prefault_start(struct log_prefault *p, void *addr, size_t len);

#endif
