/*
 * futex.c - thin wrappers over futex(2) for words in shared memory.
 */
#include "futex.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int futex_wait_shared(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000LL;
		ts.tv_nsec = timeout_ns % 1000000000LL;
		tsp = &ts;
	}
	long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
	if (rc == 0)
		return 0;
	if (errno == EAGAIN)
		return 0; /* value already changed: that is a wake-up */
	return -errno;
}

int futex_wake_shared(uint32_t *word, int n)
{
	long rc = syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
	return rc < 0 ? -errno : (int)rc;
}
