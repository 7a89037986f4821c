/*
 * crash_point.h - named points of the publish and consume protocols where
 * the crash tests kill a publisher or a consumer (tests/test_crash.c).
 *
 * CRASH_POINT("claim.cas") marks the moment right after a protocol step.
 * In the library as built and installed it is nothing at all: no call, no
 * branch, no symbol. Only the test variant of the library (shmbus_crash,
 * compiled with -DSHMBUS_CRASH_POINTS) turns each point into a call of
 * crash_point_hit, which counts the hits of each id and dies by SIGKILL at
 * the hit the environment asks for:
 *
 *   SHMBUS_CRASH_AT=push_many.marked:3   die at the third hit of that id
 *
 * The variable is read at a process's first hit, and a forked child starts
 * counting afresh (and reads it again), so a test can set it in the child
 * it forks. The points live here, not in lib/, because shm/ has some (the
 * queue push and take) and must not include lib/.
 */
#ifndef SHMBUS_SHM_CRASH_POINT_H
#define SHMBUS_SHM_CRASH_POINT_H

#ifdef SHMBUS_CRASH_POINTS

#include <stddef.h>
#include <stdint.h>

/* Count a hit of id (a string literal) and die here if it is the one
 * SHMBUS_CRASH_AT names. */
void crash_point_hit(const char *id);

/* The ids this process hit since it started (or forked), in the order of
 * their first hit, with their hit counts: up to max of them in ids[] and
 * hits[]. Returns how many ids were hit. */
size_t crash_point_list(const char **ids, uint64_t *hits, size_t max);

/* The "" forces a string literal: ids are compared by content, and a
 * literal outlives every caller. */
#define CRASH_POINT(id) crash_point_hit("" id "")

#else

#define CRASH_POINT(id) ((void)0)

#endif

#endif
