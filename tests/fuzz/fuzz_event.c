/*
 * fuzz_event.c - the event checker and every accessor on arbitrary bytes.
 *
 * Whatever the bytes, shmbus_event_check either rejects them or the event
 * can be read through the public accessors without touching a byte outside
 * the buffer (AddressSanitizer watches). The same holds for the cheaper
 * check events get on delivery (seg_event_check_fast), which skips the
 * embedded-NUL and metadata scans, and its remembered-shape forms
 * (seg_event_check_same_shape, seg_event_like_last) must decide as it
 * does.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event_format.h"
#include "shmbus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* events are 8-byte aligned where they live; give the checker the
	 * exact size so reads past it are caught */
	uint64_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	/* Either check's acceptance must make every accessor safe. (The fast
	 * one is stricter about bytes after the last metadata pair, which the
	 * encoder never leaves.) */
	int full = shmbus_event_check(buf, size) == 0;
	int fast = seg_event_check_fast((const struct seg_event *)(void *)buf, size) == 0;
	/* A consumer's remembered-shape check decides as the fast one does,
	 * the first time (the full path) and again (the remembered one). */
	struct seg_event_shape last = {0};
	for (int round = 0; round < 2; round++)
		if ((seg_event_check_same_shape((const struct seg_event *)(void *)buf, size, &last) == 0) != fast)
			abort();
	/* and the consumer's inline usual case (seg_event_like_last) accepts
	 * exactly those, once a shape is remembered: first the bytes' own
	 * (when they passed), then one that cannot be theirs (a copy with the
	 * first size byte changed, checked against the original's shape) */
	if (seg_event_like_last((const struct seg_event *)(void *)buf, size, &last) != fast)
		abort();
	if (fast && size > 0) {
		uint64_t *other = malloc(size);
		if (other) {
			memcpy(other, buf, size);
			((uint8_t *)other)[0] ^= 1;
			if (seg_event_like_last((const struct seg_event *)(void *)other, size, &last))
				abort();
			free(other);
		}
	}
	if (full || fast) {
		const shmbus_event_t *ev = (const shmbus_event_t *)(void *)buf;
		size_t len = 0, acc = 0;
		const uint8_t *p = shmbus_event_payload(ev, &len);
		for (size_t i = 0; i < len; i++)
			acc += p[i];
		acc += strlen(shmbus_event_name(ev)) + strlen(shmbus_event_source(ev)) + strlen(shmbus_event_target(ev));
		acc += strlen(shmbus_event_conversation_id(ev)) + strlen(shmbus_event_user_id(ev));
		acc += strlen(shmbus_event_intent(ev)) + strlen(shmbus_event_decision_id(ev));
		for (size_t i = 0; i < shmbus_event_metadata_count(ev); i++) {
			const char *k, *v;
			if (shmbus_event_metadata(ev, i, &k, &v) == 0)
				acc += strlen(k) + strlen(v);
		}
		acc += shmbus_event_meta_get(ev, "message") != NULL;
		char id[SHMBUS_UUID_STR];
		shmbus_uuid_format(shmbus_event_id(ev), id);
		acc += id[0];
		__asm__ volatile("" ::"r"(acc));
	}
	free(buf);
	return 0;
}
