/*
 * liveness.h - "is that member alive?" answered by the kernel.
 *
 * Each member holds an OFD (open file description) write lock on one byte
 * of the shm object. The lock belongs to the open file description, so it
 * goes away exactly when the process that opened it dies (or closes it),
 * whatever its pid is reused for later. F_OFD_GETLK from any other
 * description tells whether the byte is locked.
 */
#ifndef SHMBUS_SHM_LIVENESS_H
#define SHMBUS_SHM_LIVENESS_H

#include <stdbool.h>
#include <stdint.h>

/* Take the write lock on `byte` without waiting. 0, -EAGAIN if held. */
int live_lock(int fd, uint64_t byte);
/* Take the write lock on `byte`, waiting for it. 0 or -errno. */
int live_lock_wait(int fd, uint64_t byte);
/* live_lock_wait, but -EINTR when a signal handler installed without
 * SA_RESTART runs meanwhile: for a wait of unbounded length that its
 * caller must be able to give up (a standby recorder told to stop). */
int live_lock_wait_or_signal(int fd, uint64_t byte);
/* Drop the lock on `byte`. */
void live_unlock(int fd, uint64_t byte);
/* 1 if another description holds a lock on `byte`, 0 if none, -errno. */
int live_is_locked(int fd, uint64_t byte);

#endif
