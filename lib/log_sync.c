/*
 * log_sync.c - data syncs of the recorder's segment: asynchronous through
 * io_uring (IORING_OP_FSYNC with DATASYNC) so recording goes on while the
 * disk works, or a plain fdatasync when io_uring is unavailable (old
 * kernel, seccomp) or SHMBUS_NO_IO_URING=1.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log_sync.h"

static struct io_uring *ring_new(void)
{
	const char *no = getenv("SHMBUS_NO_IO_URING");
	if (no && no[0] && strcmp(no, "0") != 0)
		return NULL;
	struct io_uring *ring = calloc(1, sizeof *ring);
	if (ring && io_uring_queue_init(4, ring, 0) == 0)
		return ring;
	free(ring);
	return NULL;
}

static void ring_free(struct io_uring *ring, bool inflight)
{
	if (!ring)
		return;
	struct io_uring_cqe *cqe;
	if (inflight && io_uring_wait_cqe(ring, &cqe) == 0)
		io_uring_cqe_seen(ring, cqe);
	io_uring_queue_exit(ring);
	free(ring);
}

/* The in-flight sync's own descriptor, once it is reaped. */
static void drop_fd(struct log_sync *s)
{
	if (s->has_fd)
		close(s->fd);
	s->has_fd = false;
}

void log_sync_init(struct log_sync *s)
{
	memset(s, 0, sizeof *s);
	s->ring = ring_new();
}

/* Also on a zeroed struct never set up (a recorder that failed to open). */
void log_sync_fini(struct log_sync *s)
{
	ring_free(s->ring, s->inflight);
	drop_fd(s);
	memset(s, 0, sizeof *s);
}

int log_sync_start(struct log_sync *s, int fd, uint64_t target)
{
	if (s->inflight)
		return 0;
	if (s->ring) {
		/* On a descriptor of its own: the kernel resolves it when the
		 * fsync runs, which may be after the writer sealed the segment
		 * and closed fd at a roll (it failed with EBADF, and the
		 * recorder with it). */
		int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		struct io_uring_sqe *sqe = own >= 0 ? io_uring_get_sqe(s->ring) : NULL;
		if (sqe) {
			io_uring_prep_fsync(sqe, own, IORING_FSYNC_DATASYNC);
			if (io_uring_submit(s->ring) == 1) {
				s->inflight = true;
				s->target = target;
				s->fd = own;
				s->has_fd = true;
				return 0;
			}
		}
		if (own >= 0)
			close(own);
		/* a ring that cannot take an fsync now: do it the plain way */
	}
	if (fdatasync(fd) < 0)
		return -errno;
	s->done = target;
	s->syncs++;
	return 0;
}

int log_sync_poll(struct log_sync *s, bool wait)
{
	if (!s->inflight)
		return 0;
	struct io_uring_cqe *cqe;
	int rc = wait ? io_uring_wait_cqe(s->ring, &cqe) : io_uring_peek_cqe(s->ring, &cqe);
	if (rc == -EAGAIN || rc == -EINTR)
		return 0;
	if (rc < 0)
		return rc;
	int res = cqe->res;
	io_uring_cqe_seen(s->ring, cqe);
	s->inflight = false;
	drop_fd(s);
	if (res < 0)
		return res;
	s->done = s->target;
	s->syncs++;
	return 1;
}
