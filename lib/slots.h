/*
 * slots.h - claiming ring slots (lib-internal).
 */
#ifndef SHMBUS_LIB_SLOTS_H
#define SHMBUS_LIB_SLOTS_H

#include "internal.h"

struct space_wait {
	bool started;
	uint64_t start_ns;
	int64_t timeout_ns;
	uint32_t rounds;
};

/*
 * slots_claim - claim n consecutive slot positions for pub. Urgent (high,
 * critical) claims may use the headroom low and normal ones leave. The
 * head slot turns CLAIMED naming the publisher. Waits for space as the
 * publisher's timeout allows: 0, -EAGAIN or -ETIMEDOUT.
 */
int slots_claim(shmbus_pub_t *pub, uint32_t n, bool urgent, uint64_t *pos_out);

/* Wake the publishers waiting for space, if any announced it (cheap when
 * none did). */
void slots_wake_waiters(shmbus_bus_t *bus);

#endif
