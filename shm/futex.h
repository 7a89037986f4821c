/*
 * futex.h - shared (cross-process) futex wait and wake on 32-bit words in
 * the segment. Never FUTEX_PRIVATE_FLAG: waiter and waker are different
 * processes mapping the same page.
 */
#ifndef SHMBUS_SHM_FUTEX_H
#define SHMBUS_SHM_FUTEX_H

#include <stdint.h>

/* Sleep while *word == expected, at most timeout_ns (< 0: no limit).
 * Returns 0 when woken (or the value differed), -ETIMEDOUT, -EINTR. */
int futex_wait_shared(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/* Wake up to n sleepers on word. Returns how many were woken, or -errno. */
int futex_wake_shared(uint32_t *word, int n);

#endif
