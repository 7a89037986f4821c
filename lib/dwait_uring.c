/*
 * dwait_uring.c - the dispatcher's io_uring backend.
 *
 * Every wait is one request in flight: IORING_OP_FUTEX_WAIT on a shared
 * futex word (Linux 6.7; liburing 2.3 has no prep helper, so the SQE is
 * filled here by the kernel's rules: fd = futex2 flags, addr = word,
 * addr2 = expected value, addr3 = wake mask), IORING_OP_POLL_ADD for fds
 * and one IORING_OP_TIMEOUT with an absolute deadline. Completions raise an
 * eventfd registered with the ring, which is the fd we expose. The ring is
 * entered only when we wait: arming just fills SQEs.
 */
#include <errno.h>
#include <liburing.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dwait.h"

#ifndef IORING_OP_FUTEX_WAIT
#define IORING_OP_FUTEX_WAIT 51
#endif
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#ifndef FUTEX_BITSET_MATCH_ANY
#define FUTEX_BITSET_MATCH_ANY 0xffffffffu
#endif

/* user_data values of our own requests; callers' tokens never use the top
 * 16 bits (see dispatch.c) */
#define UD_IGNORE 0xFFFF000000000000ull /* cancels, timeout removals */
#define UD_TIMER 0xFFFE000000000000ull	/* | timer generation */
#define UD_KIND_MASK 0xFFFF000000000000ull

#define RING_ENTRIES 256

struct uwait {
	struct dwait base;
	struct io_uring ring;
	int efd;
	bool efd_registered; /* only once someone asked for our fd */
	uint64_t timer_deadline; /* UINT64_MAX: none armed */
	uint64_t timer_gen;
	struct __kernel_timespec timer_ts;
};

static struct io_uring_sqe *sqe_get(struct uwait *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) { /* full: hand what is there to the kernel first */
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

static void u_close(struct dwait *w)
{
	struct uwait *u = (struct uwait *)w;
	io_uring_queue_exit(&u->ring);
	close(u->efd);
	free(u);
}

static int u_fd(struct dwait *w)
{
	struct uwait *u = (struct uwait *)w;
	if (!u->efd_registered) {
		int rc = io_uring_register_eventfd(&u->ring, u->efd);
		if (rc < 0)
			return rc;
		u->efd_registered = true;
		if (io_uring_cq_ready(&u->ring)) { /* already pending: say so */
			uint64_t one = 1;
			(void)!write(u->efd, &one, sizeof one);
		}
	}
	return u->efd;
}

static int u_arm_futex(struct dwait *w, uint32_t *word, uint32_t val, uint64_t token)
{
	struct uwait *u = (struct uwait *)w;
	struct io_uring_sqe *sqe = sqe_get(u);
	if (!sqe)
		return -EBUSY;
	/* shared, not private: the word is in a MAP_SHARED segment other
	 * processes wake through */
	io_uring_prep_rw(IORING_OP_FUTEX_WAIT, sqe, FUTEX2_SIZE_U32, word, 0, val);
	sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
	io_uring_sqe_set_data64(sqe, token);
	return 0;
}

static int u_arm_fd(struct dwait *w, int fd, uint32_t events, uint64_t token)
{
	struct uwait *u = (struct uwait *)w;
	struct io_uring_sqe *sqe = sqe_get(u);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, fd, events);
	io_uring_sqe_set_data64(sqe, token);
	return 0;
}

static int u_disarm(struct dwait *w, uint64_t token, int fd)
{
	(void)fd;
	struct uwait *u = (struct uwait *)w;
	struct io_uring_sqe *sqe = sqe_get(u);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_cancel64(sqe, token, 0);
	io_uring_sqe_set_data64(sqe, UD_IGNORE);
	return 0;
}

static int u_set_timer(struct dwait *w, uint64_t deadline)
{
	struct uwait *u = (struct uwait *)w;
	if (deadline == u->timer_deadline)
		return 0;
	struct io_uring_sqe *sqe;
	if (u->timer_deadline != UINT64_MAX) {
		if (!(sqe = sqe_get(u)))
			return -EBUSY; /* nothing changed: the next call tries again */
		io_uring_prep_timeout_remove(sqe, UD_TIMER | u->timer_gen, 0);
		io_uring_sqe_set_data64(sqe, UD_IGNORE);
		u->timer_deadline = UINT64_MAX;
	}
	u->timer_gen = (u->timer_gen + 1) & ~UD_KIND_MASK;
	if (deadline == UINT64_MAX)
		return 0;
	if (!(sqe = sqe_get(u)))
		return -EBUSY; /* none armed, and recorded so: the next call arms it */
	u->timer_deadline = deadline;
	u->timer_ts.tv_sec = (long long)(deadline / 1000000000ull);
	u->timer_ts.tv_nsec = (long long)(deadline % 1000000000ull);
	io_uring_prep_timeout(sqe, &u->timer_ts, 0, IORING_TIMEOUT_ABS);
	io_uring_sqe_set_data64(sqe, UD_TIMER | u->timer_gen);
	/* the kernel reads the timespec at submission, which must come
	 * before the next set_timer reuses it */
	io_uring_submit(&u->ring);
	return 0;
}

static int u_wait(struct dwait *w, int64_t timeout_ns, struct dwait_done *out, int cap)
{
	struct uwait *u = (struct uwait *)w;
	uint64_t drained;
	/* reset the readiness of our fd before looking, so a completion
	 * posted after the look raises it again (a syscall per wait, paid
	 * only by those who watch the fd) */
	if (u->efd_registered)
		(void)!read(u->efd, &drained, sizeof drained);
	int rc;
	if (io_uring_cq_ready(&u->ring) || timeout_ns == 0) {
		rc = io_uring_submit(&u->ring);
	} else {
		struct io_uring_cqe *cqe;
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ns / 1000000000LL,
			.tv_nsec = timeout_ns % 1000000000LL,
		};
		rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, timeout_ns < 0 ? NULL : &ts, NULL);
		if (rc == -ETIME)
			rc = 0;
	}
	if (rc < 0 && rc != -EBUSY && rc != -EAGAIN)
		return rc; /* -EINTR among them */
	int n = 0;
	unsigned head, seen = 0;
	struct io_uring_cqe *cqe;
	io_uring_for_each_cqe(&u->ring, head, cqe)
	{
		if (n == cap)
			break;
		seen++;
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		if (ud == UD_IGNORE || cqe->res == -ECANCELED)
			continue;
		if ((ud & UD_KIND_MASK) == UD_TIMER) {
			if ((ud & ~UD_KIND_MASK) != u->timer_gen || cqe->res != -ETIME)
				continue; /* replaced, or removed */
			u->timer_deadline = UINT64_MAX;
			out[n].token = DWAIT_TIMER_TOKEN;
			out[n++].res = 0;
			continue;
		}
		out[n].token = ud;
		/* futex: woken (0) or the word had already changed (-EAGAIN),
		 * both mean "look"; poll: the ready bits; else the error */
		out[n++].res = cqe->res == -EAGAIN ? 0 : cqe->res;
	}
	io_uring_cq_advance(&u->ring, seen);
	if (u->efd_registered && io_uring_cq_ready(&u->ring)) { /* more than cap: keep the fd hot */
		uint64_t one = 1;
		(void)!write(u->efd, &one, sizeof one);
	}
	return n;
}

static void u_flush(struct dwait *w)
{
	io_uring_submit(&((struct uwait *)w)->ring);
}

static const struct dwait_ops uring_ops = {
	.name = "io_uring",
	.close = u_close,
	.fd = u_fd,
	.arm_futex = u_arm_futex,
	.arm_fd = u_arm_fd,
	.disarm = u_disarm,
	.set_timer = u_set_timer,
	.wait = u_wait,
	.flush = u_flush,
};

/* Everything we rely on, asked of this kernel rather than assumed from its
 * version (seccomp and backports make versions lie). */
static int probe_ops(struct io_uring *ring)
{
	if (!(ring->features & IORING_FEAT_EXT_ARG))
		return -EOPNOTSUPP;
	struct io_uring_probe *p = io_uring_get_probe_ring(ring);
	if (!p)
		return -EOPNOTSUPP;
	static const int need[] = {IORING_OP_FUTEX_WAIT, IORING_OP_POLL_ADD, IORING_OP_TIMEOUT,
				   IORING_OP_TIMEOUT_REMOVE, IORING_OP_ASYNC_CANCEL};
	int rc = 0;
	for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
		if (!io_uring_opcode_supported(p, need[i]))
			rc = -EOPNOTSUPP;
	io_uring_free_probe(p);
	return rc;
}

int dwait_uring_open(struct dwait **out)
{
	struct uwait *u = calloc(1, sizeof *u);
	if (!u)
		return -ENOMEM;
	int rc = io_uring_queue_init(RING_ENTRIES, &u->ring, 0);
	if (rc < 0) {
		free(u);
		return rc; /* -ENOSYS, -EPERM (seccomp, io_uring_disabled) */
	}
	if ((rc = probe_ops(&u->ring)) < 0)
		goto fail_ring;
	u->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (u->efd < 0) {
		rc = -errno;
		goto fail_ring;
	}
	u->timer_deadline = UINT64_MAX;
	u->base.ops = &uring_ops;
	*out = &u->base;
	return 0;
fail_ring:
	io_uring_queue_exit(&u->ring);
	free(u);
	return rc;
}
