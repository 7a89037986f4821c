/*
 * crash_point.c - the counting and killing behind CRASH_POINT (see
 * crash_point.h). Built into the test variant of the library only.
 *
 * Speed does not matter here; being exact does: the kill must happen at
 * the asked hit and at no other, in whichever thread gets there, so the
 * table is under a mutex, and a fork (the tests' way of starting a victim)
 * gives the child a fresh table that reads the environment again.
 */
#include "crash_point.h"

#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* More distinct ids than the publish and consume paths have; a new one past it is a
 * mistake worth stopping for, not a point to skip silently. */
#define CRASH_IDS_MAX 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const char *ids[CRASH_IDS_MAX];
static uint64_t hits[CRASH_IDS_MAX];
static size_t nids;
static bool armed_read;		/* SHMBUS_CRASH_AT parsed */
static char armed_id[128];	/* "" when nothing is armed */
static uint64_t armed_hit;

static void reset_after_fork(void)
{
	pthread_mutex_init(&lock, NULL);
	nids = 0;
	armed_read = false;
}

__attribute__((constructor)) static void crash_point_setup(void)
{
	pthread_atfork(NULL, NULL, reset_after_fork);
}

/* "id:n" with n >= 1; anything else stops the process (a test asking for
 * a point in words it did not mean would otherwise pass vacuously). */
static void read_armed(void)
{
	armed_read = true;
	armed_id[0] = '\0';
	const char *env = getenv("SHMBUS_CRASH_AT");
	if (!env || !*env)
		return;
	const char *colon = strrchr(env, ':');
	char *end = NULL;
	unsigned long long n = colon ? strtoull(colon + 1, &end, 10) : 0;
	size_t len = colon ? (size_t)(colon - env) : 0;
	if (!colon || len == 0 || len >= sizeof armed_id || !end || *end || n == 0) {
		fprintf(stderr, "shmbus: SHMBUS_CRASH_AT=\"%s\" is not ID:HIT\n", env);
		abort();
	}
	memcpy(armed_id, env, len);
	armed_id[len] = '\0';
	armed_hit = n;
}

void crash_point_hit(const char *id)
{
	pthread_mutex_lock(&lock);
	if (!armed_read)
		read_armed();
	size_t i = 0;
	while (i < nids && strcmp(ids[i], id) != 0)
		i++;
	if (i == nids) {
		if (nids == CRASH_IDS_MAX) {
			fprintf(stderr, "shmbus: more than %d crash point ids\n", CRASH_IDS_MAX);
			abort();
		}
		ids[nids] = id;
		hits[nids++] = 0; /* a table reset by a fork keeps stale counts */
	}
	uint64_t n = ++hits[i];
	if (n == armed_hit && strcmp(armed_id, id) == 0)
		raise(SIGKILL); /* as kill -9 would: no handler, no exit path */
	pthread_mutex_unlock(&lock);
}

size_t crash_point_list(const char **out_ids, uint64_t *out_hits, size_t max)
{
	pthread_mutex_lock(&lock);
	size_t n = nids;
	for (size_t i = 0; i < n && i < max; i++) {
		out_ids[i] = ids[i];
		out_hits[i] = hits[i];
	}
	pthread_mutex_unlock(&lock);
	return n;
}
