/*
 * errmsg.c - the thread-local "why" behind the last -errno.
 */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static __thread char last_msg[256] = "no error";

int shmbus__fail(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_msg, sizeof last_msg, fmt, ap);
	va_end(ap);
	return -err;
}

SHMBUS_API const char *shmbus_errmsg(void)
{
	return last_msg;
}
