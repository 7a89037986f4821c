/*
 * dispatch_timers.c - the dispatcher's deadlines: a binary min-heap.
 *
 * Retries, expiries, request timeouts and the periodic sweep all land
 * here; the backend only ever holds one timer, at the earliest deadline.
 */
#include <errno.h>
#include <stdlib.h>

#include "dispatch.h"

static void swap(struct timer_entry *a, struct timer_entry *b)
{
	struct timer_entry t = *a;
	*a = *b;
	*b = t;
}

int timers_add(struct timer_heap *h, uint64_t deadline, timer_fire_fn fire, void *obj, uint64_t gen)
{
	if (h->n == h->cap) {
		size_t nc = h->cap ? h->cap * 2 : 64;
		struct timer_entry *e = realloc(h->e, nc * sizeof *e);
		if (!e)
			return -ENOMEM;
		h->e = e;
		h->cap = nc;
	}
	size_t i = h->n++;
	h->e[i] = (struct timer_entry){.deadline = deadline, .fire = fire, .obj = obj, .gen = gen};
	while (i > 0 && h->e[(i - 1) / 2].deadline > h->e[i].deadline) {
		swap(&h->e[(i - 1) / 2], &h->e[i]);
		i = (i - 1) / 2;
	}
	return 0;
}

uint64_t timers_next(const struct timer_heap *h)
{
	return h->n ? h->e[0].deadline : UINT64_MAX;
}

static void sift_down(struct timer_heap *h, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < h->n && h->e[l].deadline < h->e[m].deadline)
			m = l;
		if (r < h->n && h->e[r].deadline < h->e[m].deadline)
			m = r;
		if (m == i)
			return;
		swap(&h->e[i], &h->e[m]);
		i = m;
	}
}

static struct timer_entry pop(struct timer_heap *h)
{
	struct timer_entry top = h->e[0];
	h->e[0] = h->e[--h->n];
	sift_down(h, 0);
	return top;
}

size_t timers_run(struct timer_heap *h, shmbus_dispatcher_t *d, uint64_t now)
{
	size_t fired = 0;
	while (h->n && h->e[0].deadline <= now) {
		struct timer_entry t = pop(h);
		t.fire(d, t.obj, t.gen); /* may add timers: the heap is consistent */
		fired++;
	}
	return fired;
}

void timers_free(struct timer_heap *h)
{
	free(h->e);
	h->e = NULL;
	h->n = h->cap = 0;
}

void timers_drop(struct timer_heap *h, const void *obj)
{
	size_t k = 0;
	for (size_t i = 0; i < h->n; i++)
		if (h->e[i].obj != obj)
			h->e[k++] = h->e[i];
	h->n = k;
	for (size_t s = h->n / 2; s-- > 0;) /* rebuild, last inner node first */
		sift_down(h, s);
}
