/*
 * dispatch_pool.c - worker threads that run handlers for the dispatcher.
 *
 * The dispatcher thread owns every subscription handle; workers only call
 * handlers on events the dispatcher keeps held (or on private copies) and
 * report the result. Two queues under one mutex: jobs in, results out.
 * A result is announced through the dispatcher's kick eventfd, which its
 * backend watches, so a dispatcher asleep in io_uring or epoll wakes up.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "dispatch.h"

struct fifo {
	struct pool_job *q;
	size_t head, n, cap;
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t job_cv, done_cv;
	struct fifo jobs, done;
	bool closing;
	int notify_fd;
	uint32_t nthreads;
	pthread_t threads[];
};

/* Make room for `want` jobs in all. */
static int fifo_reserve(struct fifo *f, size_t want)
{
	if (want > f->cap) {
		size_t nc = f->cap ? f->cap : 64;
		while (nc < want)
			nc *= 2;
		struct pool_job *q = malloc(nc * sizeof *q);
		if (!q)
			return -ENOMEM;
		for (size_t i = 0; i < f->n; i++)
			q[i] = f->q[(f->head + i) % f->cap];
		free(f->q);
		f->q = q;
		f->head = 0;
		f->cap = nc;
	}
	return 0;
}

static int fifo_push(struct fifo *f, const struct pool_job *j)
{
	int rc = fifo_reserve(f, f->n + 1);
	if (rc == 0)
		f->q[(f->head + f->n++) % f->cap] = *j;
	return rc;
}

static struct pool_job fifo_pop(struct fifo *f)
{
	struct pool_job j = f->q[f->head];
	f->head = (f->head + 1) % f->cap;
	f->n--;
	return j;
}

static void *worker_main(void *arg)
{
	struct pool *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->jobs.n && !p->closing)
			pthread_cond_wait(&p->job_cv, &p->mu);
		if (!p->jobs.n)
			break; /* closing, and nothing left to run */
		struct pool_job job = fifo_pop(&p->jobs);
		pthread_mutex_unlock(&p->mu);
		dispatch_run_job(&job);
		pthread_mutex_lock(&p->mu);
		/* the slot cannot be lost: the queue grew when the job was
		 * submitted (see pool_submit) */
		fifo_push(&p->done, &job);
		pthread_cond_broadcast(&p->done_cv);
		uint64_t one = 1;
		(void)!write(p->notify_fd, &one, sizeof one);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int pool_open(uint32_t n, int notify_fd, struct pool **out)
{
	struct pool *p = calloc(1, sizeof *p + n * sizeof(pthread_t));
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->job_cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	p->notify_fd = notify_fd;
	for (uint32_t i = 0; i < n; i++) {
		int rc = pthread_create(&p->threads[i], NULL, worker_main, p);
		if (rc) {
			p->nthreads = i;
			pool_close(p);
			return -rc;
		}
	}
	p->nthreads = n;
	*out = p;
	return 0;
}

void pool_close(struct pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->closing = true;
	pthread_cond_broadcast(&p->job_cv);
	pthread_mutex_unlock(&p->mu);
	for (uint32_t i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->job_cv);
	pthread_cond_destroy(&p->done_cv);
	free(p->jobs.q);
	free(p->done.q);
	free(p);
}

int pool_submit(struct pool *p, const struct pool_job *job)
{
	pthread_mutex_lock(&p->mu);
	/* room for the result too, so a worker never fails to report one */
	int rc = fifo_reserve(&p->done, p->done.n + p->jobs.n + p->nthreads + 1);
	if (rc == 0 && (rc = fifo_push(&p->jobs, job)) == 0)
		pthread_cond_signal(&p->job_cv);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

size_t pool_collect(struct pool *p, struct pool_job *out, size_t cap, bool wait)
{
	pthread_mutex_lock(&p->mu);
	while (wait && !p->done.n)
		pthread_cond_wait(&p->done_cv, &p->mu);
	size_t n = 0;
	while (n < cap && p->done.n)
		out[n++] = fifo_pop(&p->done);
	pthread_mutex_unlock(&p->mu);
	return n;
}
