/*
 * dlq.h - appending to a bus's dead-letter log (lib-internal; the
 * dispatcher calls it).
 */
#ifndef SHMBUS_LIB_DLQ_H
#define SHMBUS_LIB_DLQ_H

#include "internal.h"

struct dlq_entry_in {
	shmbus_sub_id_t sub; const char *subscriber_id; const char *group; /* NULL ok */
	shmbus_dead_reason_t reason; uint32_t attempts; int32_t last_error;
};

/*
 * Append one dead letter for event ev (ev points at a valid event in the
 * ring or a copy). Safe from several processes and threads at once: the
 * append is serialised by a mutex and an OFD lock on the file, and synced
 * to disk before it returns. It walks only the records other processes
 * added since this handle last appended, not the whole log. Subscriber ids and groups longer than
 * SHMBUS_ID_MAX are cut. 0 or -errno (message names the file).
 */
int dlq_append(shmbus_bus_t *bus, const shmbus_event_t *ev, const struct dlq_entry_in *in);

/* One letter of dlq_append_letters: the event, its entry, and (out) 0 once
 * written and synced, or -errno (-EBADMSG: the event is not valid). */
struct dlq_letter {
	const shmbus_event_t *ev;
	const struct dlq_entry_in *in;
	int rc;
};

/*
 * Append the n letters as dlq_append does, but under one lock and with one
 * sync for them all: a batch's unrouted events, a dispatch round's failed
 * ones. An event that is not valid is skipped; after a write that fails,
 * the rest are not tried. Each letter's rc says what became of it. Returns
 * how many were written and synced, or -errno when none was.
 */
int dlq_append_letters(shmbus_bus_t *bus, struct dlq_letter *letters, size_t n);

#endif
