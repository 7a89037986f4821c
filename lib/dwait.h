/*
 * dwait.h - what the dispatcher waits with: the backend interface.
 *
 * A backend turns three kinds of wait into completions identified by a
 * 64-bit token the caller chose:
 *  - a futex word in shared memory that still holds `val` (one-shot: it
 *    completes once the word changed or a wake was issued on it);
 *  - an fd becoming ready for poll(2) `events` (one-shot);
 *  - one timer, at an absolute CLOCK_MONOTONIC time (re-armed by every
 *    set_timer call; it completes with DWAIT_TIMER_TOKEN).
 * and exposes one fd that is readable while completions are pending, so
 * the dispatcher can live in someone else's event loop.
 *
 * A disarmed wait may still complete (it raced with the disarm): callers
 * put a generation in their tokens and ignore stale ones. Two backends:
 * io_uring (dwait_uring.c) and futex_waitv + epoll + timerfd
 * (dwait_fallback.c).
 */
#ifndef SHMBUS_LIB_DWAIT_H
#define SHMBUS_LIB_DWAIT_H

#include <stdbool.h>
#include <stdint.h>

#define DWAIT_TIMER_TOKEN UINT64_MAX

struct dwait_done {
	uint64_t token;
	int32_t res; /* futex: 0; fd: poll bits; timer: 0 */
};

struct dwait;

struct dwait_ops {
	const char *name;
	void (*close)(struct dwait *w);
	/* The pollable fd. Asking for it may cost the backend something per
	 * wait from then on (io_uring: an eventfd raised by every completion). */
	int (*fd)(struct dwait *w);
	int (*arm_futex)(struct dwait *w, uint32_t *word, uint32_t val, uint64_t token);
	int (*arm_fd)(struct dwait *w, int fd, uint32_t events, uint64_t token);
	/* Forget the wait with this token (futex or fd); fd is the fd it
	 * watched, or -1 for a futex. */
	int (*disarm)(struct dwait *w, uint64_t token, int fd);
	/* UINT64_MAX: no timer. */
	int (*set_timer)(struct dwait *w, uint64_t deadline_mono_ns);
	/* Submit what was armed, wait up to timeout_ns (< 0 forever, 0 not at
	 * all) for at least one completion, and return up to cap of them.
	 * Returns the count, or -errno (-EINTR when a signal came). */
	int (*wait)(struct dwait *w, int64_t timeout_ns, struct dwait_done *out, int cap);
	/* Hand what was armed to the kernel without waiting or collecting. */
	void (*flush)(struct dwait *w);
};

struct dwait {
	const struct dwait_ops *ops;
};

/* Open the io_uring backend: -ENOSYS/-EPERM/-EOPNOTSUPP when io_uring or
 * an operation it needs (futex wait, poll, timeout, cancel, waiting with a
 * timeout) is unavailable here. */
int dwait_uring_open(struct dwait **out);
/* Open the fallback backend (needs futex_waitv, Linux 5.16). */
int dwait_fallback_open(struct dwait **out);

#endif
