/*
 * dwait_fallback.c - the dispatcher's backend without io_uring.
 *
 * fds and the timer go into an epoll set (the timer is a timerfd), and the
 * epoll fd is the fd we expose. A futex is not an fd, so waiter threads
 * turn futex wake-ups into one: each sleeps in futex_waitv(2) on up to
 * WAITER_SPAN armed words plus a private control word of its own, and on a
 * wake moves the tokens whose words changed to a done list and raises an
 * eventfd in the epoll set. Arming or disarming bumps the control word of
 * the thread that serves the entry so it takes the new set. An idle
 * dispatcher therefore sleeps in two syscalls and costs nothing.
 */
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "atomics.h"
#include "dwait.h"

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

#define WAITER_SPAN (FUTEX_WAITV_MAX - 1) /* entries per thread, besides its control word */
#define MAX_WAITERS 64

#define TOK_EVENTFD 0xFFFD000000000001ull
#define TOK_TIMERFD 0xFFFD000000000002ull

struct arm {
	uint32_t *word;
	uint32_t val;
	bool used;
	uint64_t token;
};

struct waiter {
	pthread_t thread;
	bool started;
	uint32_t ctl; /* bumped to make the thread look at its entries again */
};

struct fwait {
	struct dwait base;
	int epfd, tfd, efd;
	pthread_mutex_t mu;
	bool stopping;
	struct arm *arms;
	size_t cap;
	uint64_t *done;
	size_t ndone, done_cap;
	struct waiter waiters[MAX_WAITERS];
};

struct waiter_arg {
	struct fwait *f;
	unsigned idx;
};

static long futex_waitv(struct futex_waitv *v, unsigned n)
{
	return syscall(SYS_futex_waitv, v, n, 0, NULL, CLOCK_MONOTONIC);
}

static void kick_waiter(struct fwait *f, unsigned t)
{
	at_fetch_add_u32(&f->waiters[t].ctl, 1);
	syscall(SYS_futex, &f->waiters[t].ctl, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *waiter_main(void *p)
{
	struct waiter_arg a = *(struct waiter_arg *)p;
	free(p);
	struct fwait *f = a.f;
	struct waiter *me = &f->waiters[a.idx];
	struct futex_waitv v[FUTEX_WAITV_MAX];
	size_t slot[FUTEX_WAITV_MAX];
	uint64_t tok[FUTEX_WAITV_MAX];
	for (;;) {
		pthread_mutex_lock(&f->mu);
		if (f->stopping) {
			pthread_mutex_unlock(&f->mu);
			return NULL;
		}
		unsigned n = 0;
		memset(v, 0, sizeof v);
		v[n].uaddr = (uintptr_t)&me->ctl;
		v[n].val = at_load_relaxed_u32(&me->ctl);
		v[n++].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
		size_t lo = (size_t)a.idx * WAITER_SPAN, hi = lo + WAITER_SPAN;
		for (size_t i = lo; i < hi && i < f->cap; i++) {
			if (!f->arms[i].used)
				continue;
			v[n].uaddr = (uintptr_t)f->arms[i].word;
			v[n].val = f->arms[i].val;
			v[n].flags = FUTEX_32; /* shared: words live in MAP_SHARED memory */
			slot[n] = i;
			tok[n++] = f->arms[i].token;
		}
		pthread_mutex_unlock(&f->mu);
		long woke = futex_waitv(v, n);
		/* Anything but a wake, a changed word or a signal (EFAULT: a word
		 * unmapped between our snapshot and the call; ENOMEM): report
		 * every entry of the snapshot as woken, so their owners look and
		 * re-arm (a disarmed one is skipped below), and pause a little so
		 * a lasting error cannot spin. */
		bool all = woke < 0 && errno != EAGAIN && errno != EINTR && errno != ETIMEDOUT;
		if (all)
			usleep(1000);
		pthread_mutex_lock(&f->mu);
		bool any = false;
		for (unsigned i = 1; i < n; i++) {
			struct arm *e = &f->arms[slot[i]];
			if (!e->used || e->token != tok[i])
				continue; /* disarmed meanwhile: its word may be gone */
			if (!all && (long)i != woke && at_load_acquire_u32(e->word) == e->val)
				continue;
			if (f->ndone == f->done_cap) {
				size_t nc = f->done_cap ? f->done_cap * 2 : 64;
				uint64_t *d = realloc(f->done, nc * sizeof *d);
				if (!d)
					break; /* retried on the next wake-up: the entry stays armed */
				f->done = d;
				f->done_cap = nc;
			}
			f->done[f->ndone++] = e->token;
			e->used = false;
			any = true;
		}
		pthread_mutex_unlock(&f->mu);
		if (any) {
			uint64_t one = 1;
			(void)!write(f->efd, &one, sizeof one);
		}
	}
}

static void f_close(struct dwait *w)
{
	struct fwait *f = (struct fwait *)w;
	pthread_mutex_lock(&f->mu);
	f->stopping = true;
	pthread_mutex_unlock(&f->mu);
	for (unsigned t = 0; t < MAX_WAITERS; t++) {
		if (!f->waiters[t].started)
			continue;
		kick_waiter(f, t);
		pthread_join(f->waiters[t].thread, NULL);
	}
	pthread_mutex_destroy(&f->mu);
	close(f->epfd);
	close(f->tfd);
	close(f->efd);
	free(f->arms);
	free(f->done);
	free(f);
}

static int f_fd(struct dwait *w)
{
	return ((struct fwait *)w)->epfd;
}

static int start_waiter(struct fwait *f, unsigned t)
{
	struct waiter_arg *a = malloc(sizeof *a);
	if (!a)
		return -ENOMEM;
	a->f = f;
	a->idx = t;
	int rc = pthread_create(&f->waiters[t].thread, NULL, waiter_main, a);
	if (rc) {
		free(a);
		return -rc;
	}
	f->waiters[t].started = true;
	return 0;
}

static int f_arm_futex(struct dwait *w, uint32_t *word, uint32_t val, uint64_t token)
{
	struct fwait *f = (struct fwait *)w;
	pthread_mutex_lock(&f->mu);
	int rc = 0;
	size_t i = 0;
	while (rc == 0 && i < f->cap && f->arms[i].used)
		i++;
	if (rc == 0 && i == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 64;
		if (nc > (size_t)WAITER_SPAN * MAX_WAITERS)
			nc = (size_t)WAITER_SPAN * MAX_WAITERS;
		struct arm *na = nc > f->cap ? realloc(f->arms, nc * sizeof *na) : NULL;
		if (!na) {
			rc = nc > f->cap ? -ENOMEM : -ENOSPC;
		} else {
			memset(na + f->cap, 0, (nc - f->cap) * sizeof *na);
			f->arms = na;
			f->cap = nc;
		}
	}
	unsigned t = (unsigned)(i / WAITER_SPAN);
	if (rc == 0 && !f->waiters[t].started)
		rc = start_waiter(f, t);
	if (rc == 0) {
		f->arms[i] = (struct arm){.word = word, .val = val, .used = true, .token = token};
		kick_waiter(f, t);
	}
	pthread_mutex_unlock(&f->mu);
	return rc;
}

static uint32_t to_epoll(uint32_t events)
{
	return (events & POLLIN ? EPOLLIN : 0u) | (events & POLLOUT ? EPOLLOUT : 0u) | (events & POLLPRI ? EPOLLPRI : 0u);
}

static int32_t from_epoll(uint32_t ev)
{
	return (int32_t)((ev & EPOLLIN ? POLLIN : 0) | (ev & EPOLLOUT ? POLLOUT : 0) | (ev & EPOLLPRI ? POLLPRI : 0) |
			 (ev & EPOLLERR ? POLLERR : 0) | (ev & EPOLLHUP ? POLLHUP : 0));
}

static int f_arm_fd(struct dwait *w, int fd, uint32_t events, uint64_t token)
{
	struct fwait *f = (struct fwait *)w;
	struct epoll_event ev = {.events = to_epoll(events) | EPOLLONESHOT, .data.u64 = token};
	/* one-shot entries stay in the set, disabled, after they fire */
	if (epoll_ctl(f->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
		return 0;
	if (errno == ENOENT && epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
		return 0;
	return -errno;
}

static int f_disarm(struct dwait *w, uint64_t token, int fd)
{
	struct fwait *f = (struct fwait *)w;
	if (fd >= 0) {
		epoll_ctl(f->epfd, EPOLL_CTL_DEL, fd, NULL); /* gone already if closed */
		return 0;
	}
	pthread_mutex_lock(&f->mu);
	for (size_t i = 0; i < f->cap; i++) {
		if (f->arms[i].used && f->arms[i].token == token) {
			f->arms[i].used = false;
			kick_waiter(f, (unsigned)(i / WAITER_SPAN));
		}
	}
	pthread_mutex_unlock(&f->mu);
	return 0;
}

static int f_set_timer(struct dwait *w, uint64_t deadline)
{
	struct fwait *f = (struct fwait *)w;
	struct itimerspec its = {0};
	if (deadline != UINT64_MAX) {
		if (deadline == 0)
			deadline = 1; /* zero would disarm */
		its.it_value.tv_sec = (time_t)(deadline / 1000000000ull);
		its.it_value.tv_nsec = (long)(deadline % 1000000000ull);
	}
	return timerfd_settime(f->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0 ? -errno : 0;
}

static int f_wait(struct dwait *w, int64_t timeout_ns, struct dwait_done *out, int cap)
{
	struct fwait *f = (struct fwait *)w;
	struct epoll_event evs[64];
	struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL};
	int maxev = cap < 64 ? cap : 64;
	int k = epoll_pwait2(f->epfd, evs, maxev, timeout_ns < 0 ? NULL : &ts, NULL);
	if (k < 0)
		return -errno;
	int n = 0;
	for (int i = 0; i < k; i++) {
		uint64_t tok = evs[i].data.u64, junk;
		if (tok == TOK_TIMERFD) {
			if (read(f->tfd, &junk, sizeof junk) == (ssize_t)sizeof junk && n < cap) {
				out[n].token = DWAIT_TIMER_TOKEN;
				out[n++].res = 0;
			}
		} else if (tok == TOK_EVENTFD) {
			(void)!read(f->efd, &junk, sizeof junk);
		} else if (n < cap) {
			out[n].token = tok;
			out[n++].res = from_epoll(evs[i].events);
		}
	}
	/* futex completions fill what is left; the rest waits for next time */
	pthread_mutex_lock(&f->mu);
	size_t take = 0;
	while (n < cap && take < f->ndone) {
		out[n].token = f->done[take++];
		out[n++].res = 0;
	}
	if (take) {
		memmove(f->done, f->done + take, (f->ndone - take) * sizeof *f->done);
		f->ndone -= take;
	}
	if (f->ndone) {
		uint64_t one = 1;
		(void)!write(f->efd, &one, sizeof one);
	}
	pthread_mutex_unlock(&f->mu);
	return n;
}

/* Arming acts at once here (epoll_ctl, the waiter threads' control words). */
static void f_flush(struct dwait *w)
{
	(void)w;
}

static const struct dwait_ops fallback_ops = {
	.name = "fallback",
	.close = f_close,
	.fd = f_fd,
	.arm_futex = f_arm_futex,
	.arm_fd = f_arm_fd,
	.disarm = f_disarm,
	.set_timer = f_set_timer,
	.wait = f_wait,
	.flush = f_flush,
};

int dwait_fallback_open(struct dwait **out)
{
	struct fwait *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	int rc;
	f->epfd = epoll_create1(EPOLL_CLOEXEC);
	f->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	f->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (f->epfd < 0 || f->tfd < 0 || f->efd < 0) {
		rc = -errno;
		goto fail;
	}
	struct epoll_event te = {.events = EPOLLIN, .data.u64 = TOK_TIMERFD};
	struct epoll_event ee = {.events = EPOLLIN, .data.u64 = TOK_EVENTFD};
	if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->tfd, &te) < 0 || epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->efd, &ee) < 0) {
		rc = -errno;
		goto fail;
	}
	/* futex_waitv is what we need of the kernel: ask before promising */
	uint32_t probe = 1;
	struct futex_waitv v = {.val = 0, .uaddr = (uintptr_t)&probe, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
	if (futex_waitv(&v, 1) == 0 || errno != EAGAIN) {
		rc = errno == ENOSYS ? -ENOSYS : -EOPNOTSUPP;
		goto fail;
	}
	pthread_mutex_init(&f->mu, NULL);
	f->base.ops = &fallback_ops;
	*out = &f->base;
	return 0;
fail:
	if (f->epfd >= 0)
		close(f->epfd);
	if (f->tfd >= 0)
		close(f->tfd);
	if (f->efd >= 0)
		close(f->efd);
	free(f);
	return rc;
}
