/*
 * cmd.h - what the subcommands of `shmbus` in other files share with
 * tools/shmbus.c: error reporting in the command-line contract's form, bus
 * opening, JSON output; and the subcommands they add.
 */
#ifndef SHMBUS_TOOLS_CMD_H
#define SHMBUS_TOOLS_CMD_H

#include <jansson.h>

#include "shmbus.h"

/* A usage error of `cmd` (exit 2): the message, then its synopsis. */
__attribute__((format(printf, 2, 3))) int usage_error(const char *cmd, const char *fmt, ...);
/* An option getopt_long refused (c is '?' or ':'). */
int bad_option(const char *cmd, int c, char **argv);
/* Exactly n positionals after the options: 0 or a usage error. */
int want_positionals(const char *cmd, int argc, char **argv, int n);
int check_bus_name(const char *cmd, const char *name);
/* Attach to bus name labelled "shmbus <cmd>": 0 or an exit code. */
int open_bus(const char *cmd, const char *name, shmbus_bus_t **bus);
/* One JSON value as one line (the reference is dropped): 0 or exit code. */
int emit_json(const char *cmd, json_t *j);

/* cmd_log.c: the log, replay and dead letters */
int cmd_get(int argc, char **argv);
int cmd_events(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_dlq(int argc, char **argv);
int cmd_record(int argc, char **argv);
/* "none", "batch", "always": 0 or -EINVAL. */
int parse_sync_level(const char *arg, shmbus_sync_t *out);

#endif
