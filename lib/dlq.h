/* TEMPORARY: the interface agreed with the log branch. */
#ifndef SHMBUS_LIB_DLQ_H
#define SHMBUS_LIB_DLQ_H
#include "shmbus.h"
struct dlq_entry_in {
	shmbus_sub_id_t sub; const char *subscriber_id; const char *group;
	shmbus_dead_reason_t reason; uint32_t attempts; int32_t last_error;
};
int dlq_append(shmbus_bus_t *bus, const shmbus_event_t *ev, const struct dlq_entry_in *in);
#endif
