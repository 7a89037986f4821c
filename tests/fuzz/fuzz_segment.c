/*
 * fuzz_segment.c - the inspector (shm-dump's engine) on arbitrary segment
 * bytes: every accessor must work or report damage, never crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[] = "/tmp/shmbus-fuzz-segment-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		unlink(path);
		return 0;
	}
	close(fd);
	shmbus_inspect_t *in = NULL;
	if (shmbus_inspect_open(path, &in) == 0) {
		shmbus_inspect_header_t h;
		(void)shmbus_inspect_header(in, &h);
		for (size_t i = 0; i < shmbus_inspect_member_count(in); i++) {
			shmbus_inspect_member_t m;
			(void)shmbus_inspect_member(in, i, &m);
		}
		for (size_t i = 0; i < shmbus_inspect_pub_count(in); i++) {
			shmbus_inspect_pub_t p;
			(void)shmbus_inspect_pub(in, i, &p);
		}
		shmbus_inspect_sub_t *s = malloc(sizeof *s);
		for (size_t i = 0; s && i < shmbus_inspect_sub_count(in); i++)
			(void)shmbus_inspect_sub(in, i, s);
		free(s);
		shmbus_inspect_ring_t r;
		(void)shmbus_inspect_ring(in, &r);
		for (size_t i = 0; i < shmbus_inspect_event_count(in); i++) {
			shmbus_inspect_event_t ev;
			(void)shmbus_inspect_event(in, i, &ev);
		}
		for (size_t i = 0; i < shmbus_inspect_problem_count(in); i++)
			(void)strlen(shmbus_inspect_problem(in, i));
		shmbus_inspect_close(in);
	}
	unlink(path);
	return 0;
}
