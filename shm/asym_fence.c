/*
 * asym_fence.c - membarrier(2) behind asym_fence.h.
 */
#include <errno.h>
#include <sys/types.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "asym_fence.h"

/* The outcome for the process registered_pid: 1 registered, -errno
 * refused. A forked child (another pid) is not registered: the kernel
 * keeps registrations per address space, and a child has a new one. */
static int registered;
static pid_t registered_pid;

int asym_fence_register(void)
{
	pid_t me = getpid();
	if (__atomic_load_n(&registered_pid, __ATOMIC_ACQUIRE) == me) {
		int r = __atomic_load_n(&registered, __ATOMIC_RELAXED);
		return r > 0 ? 0 : r;
	}
	/* Registration is idempotent: racing threads may both make the call. */
	long rc = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0);
	int r = rc == 0 ? 1 : -(errno ? errno : ENOSYS);
	__atomic_store_n(&registered, r, __ATOMIC_RELAXED);
	__atomic_store_n(&registered_pid, me, __ATOMIC_RELEASE);
	return r > 0 ? 0 : r;
}

int asym_fence_heavy(void)
{
	return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0 ? 0 : -(errno ? errno : ENOSYS);
}
