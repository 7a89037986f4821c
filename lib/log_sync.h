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
	bool has_fd;	       /* it holds fd, a descriptor of its own of the file */
	int fd;
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
 * Does nothing while another is in flight. The in-flight sync holds a
 * descriptor of its own, so the caller may close fd meanwhile (a segment
 * sealed at a roll). 0 or -errno. */
int log_sync_start(struct log_sync *s, int fd, uint64_t target);
/* Reap a completed sync: 1 (s->done advanced), 0 (none done), -errno
 * (the sync failed). wait: block until the in-flight one completes. */
int log_sync_poll(struct log_sync *s, bool wait);

#endif
