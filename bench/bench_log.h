/*
 * bench_log.h - the log modes of shmbus-bench (record, replay, get).
 */
#ifndef SHMBUS_BENCH_LOG_H
#define SHMBUS_BENCH_LOG_H

/* argv[1] is "record", "replay" or "get". Exit status. */
int bench_log_main(int argc, char **argv);

#endif
