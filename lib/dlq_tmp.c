/* TEMPORARY: an in-process dead-letter list until the log branch lands. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "dlq.h"
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static shmbus_dead_letter_t letters[256];
static shmbus_bus_t *owners[256];
static size_t nletters;
int dlq_append(shmbus_bus_t *bus, const shmbus_event_t *ev, const struct dlq_entry_in *in)
{
	pthread_mutex_lock(&mu);
	if (nletters == 256) { pthread_mutex_unlock(&mu); return -ENOSPC; }
	shmbus_dead_letter_t *l = &letters[nletters];
	memset(l, 0, sizeof *l);
	l->event_id = *shmbus_event_id(ev);
	l->sub = in->sub;
	snprintf(l->subscriber_id, sizeof l->subscriber_id, "%s", in->subscriber_id ? in->subscriber_id : "");
	snprintf(l->group, sizeof l->group, "%s", in->group ? in->group : "");
	l->reason = in->reason; l->attempts = in->attempts; l->last_error = in->last_error; l->dead_ns = now_real_ns();
	shmbus_event_t *c; shmbus_event_copy(ev, &c); l->event = c;
	owners[nletters++] = bus;
	pthread_mutex_unlock(&mu);
	return 0;
}
SHMBUS_API int shmbus_dlq_list(shmbus_bus_t *bus, shmbus_dead_letter_t *out, size_t cap)
{
	pthread_mutex_lock(&mu);
	int n = 0;
	for (size_t i = 0; i < nletters; i++) if (owners[i] == bus) { if ((size_t)n < cap) out[n] = letters[i]; n++; }
	pthread_mutex_unlock(&mu);
	return n;
}
SHMBUS_API int shmbus_dlq_retry(shmbus_bus_t *bus, const shmbus_uuid_t *id) { (void)bus; (void)id; return -ENOSYS; }
SHMBUS_API int shmbus_dlq_clear(shmbus_bus_t *bus, const shmbus_uuid_t *id) { (void)bus; (void)id; return -ENOSYS; }
