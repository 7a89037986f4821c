/*
 * liveness.c - OFD byte locks on the segment file.
 */
#include "liveness.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

static int ofd_call(int fd, int cmd, short type, uint64_t byte, struct flock *out, bool retry_eintr)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = type;
	fl.l_whence = SEEK_SET;
	fl.l_start = (off_t)byte;
	fl.l_len = 1;
	int rc;
	do
		rc = fcntl(fd, cmd, &fl);
	while (rc < 0 && errno == EINTR && retry_eintr);
	if (rc < 0)
		return -errno;
	if (out)
		*out = fl;
	return 0;
}

/* Retried on EINTR, the waiting form too: a signal handler installed
 * without SA_RESTART must not turn "wait for the lock" into "go on
 * without it" (live_lock_wait_or_signal is the exception). */
static int ofd(int fd, int cmd, short type, uint64_t byte, struct flock *out)
{
	return ofd_call(fd, cmd, type, byte, out, true);
}

int live_lock(int fd, uint64_t byte)
{
	int rc = ofd(fd, F_OFD_SETLK, F_WRLCK, byte, NULL);
	return rc == -EACCES ? -EAGAIN : rc;
}

int live_lock_wait(int fd, uint64_t byte)
{
	return ofd(fd, F_OFD_SETLKW, F_WRLCK, byte, NULL);
}

int live_lock_wait_or_signal(int fd, uint64_t byte)
{
	return ofd_call(fd, F_OFD_SETLKW, F_WRLCK, byte, NULL, false);
}

void live_unlock(int fd, uint64_t byte)
{
	(void)ofd(fd, F_OFD_SETLK, F_UNLCK, byte, NULL);
}

int live_is_locked(int fd, uint64_t byte)
{
	struct flock fl;
	int rc = ofd(fd, F_OFD_GETLK, F_WRLCK, byte, &fl);
	if (rc < 0)
		return rc;
	return fl.l_type != F_UNLCK;
}
