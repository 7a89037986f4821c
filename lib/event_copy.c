/*
 * event_copy.c - private copies of events, for keeping one beyond its
 * release (retries, responses handed to a requester).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

SHMBUS_API int shmbus_event_copy(const shmbus_event_t *ev, shmbus_event_t **out)
{
	if (!ev || !out)
		return shmbus__fail(EINVAL, "event or out is NULL");
	size_t n = shmbus_event_size(ev);
	/* the accessors read the header fields as aligned words */
	void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
	if (!p)
		return shmbus__fail(ENOMEM, "out of memory");
	event_copy_committed(p, ev, n); /* a copy is of a committed event */
	*out = p;
	return 0;
}

SHMBUS_API void shmbus_event_free(shmbus_event_t *ev)
{
	free(ev);
}
