/*
 * fuzz_log.c - the log file parser (record and header checks, the walk
 * that resynchronises after damage, dead letters and tombstones) on
 * arbitrary bytes: every event it hands out must be safe to read through
 * every accessor, whatever the file says.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void touch(const shmbus_logi_item_t *it, void *arg)
{
	size_t *sum = arg;
	if (it->text)
		*sum += strlen(it->text);
	if (!it->event)
		return;
	const shmbus_event_t *ev = it->event;
	*sum += strlen(shmbus_event_name(ev)) + strlen(shmbus_event_source(ev)) + strlen(shmbus_event_target(ev));
	*sum += strlen(shmbus_event_conversation_id(ev)) + strlen(shmbus_event_intent(ev));
	for (size_t i = 0; i < shmbus_event_metadata_count(ev); i++) {
		const char *k, *v;
		if (shmbus_event_metadata(ev, i, &k, &v) == 0)
			*sum += strlen(k) + strlen(v);
	}
	size_t len;
	const uint8_t *p = shmbus_event_payload(ev, &len);
	for (size_t i = 0; i < len; i++)
		*sum += p[i];
	if (it->dead)
		*sum += strlen(it->dead->subscriber_id) + strlen(it->dead->group);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[] = "/tmp/shmbus-fuzz-log-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		unlink(path);
		return 0;
	}
	close(fd);
	size_t sum = 0;
	(void)shmbus_log_inspect_file(path, touch, &sum);
	unlink(path);
	return 0;
}
