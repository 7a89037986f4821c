/*
 * dump_log.h - shm-dump's view of log files (tools-internal).
 */
#ifndef SHMBUS_TOOLS_DUMP_LOG_H
#define SHMBUS_TOOLS_DUMP_LOG_H

#include <stdbool.h>
#include <stdint.h>

/* Whether target names a log file (.log or .idx) rather than a bus. */
bool dump_is_log_file(const char *target);
/* Records (up to max_events shown), index summary and damage of one log
 * file. Exit status: 0 clean, 1 damaged or unreadable. */
int dump_log_file(const char *path, bool json, uint32_t max_events);

#endif
