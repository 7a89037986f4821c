/*
 * shmbus-bench - what shmbus costs, next to what the hardware allows.
 *
 * Every latency figure is a round trip between two processes pinned to two
 * different CPUs: process A sends, process B answers, A measures from just
 * before its send to just after it has the answer in hand. The same loop is
 * run three ways so the numbers can be compared:
 *
 *   floor-spin   two counters on their own cache lines in a MAP_SHARED
 *                mapping; each side spins (with pause) on the other's line.
 *                Nothing can deliver a message between two cores faster, so
 *                it is the floor for shmbus in spin mode. Measured in blocks
 *                taking turns with shmbus's spin round trips, in the same
 *                processes, when both are measured (floor_block_after).
 *   floor-futex  the same with a FUTEX_WAIT/FUTEX_WAKE on shared (not
 *                private) futex words: sleeping and being woken by the
 *                kernel, the floor for shmbus in block mode.
 *   shmbus       a "ping" event (32-byte payload by default) published by A
 *                to B's subscription (filtered by name), a "pong" back to
 *                A's, in each wait mode (spin, block, adaptive).
 *
 * Throughput: one publisher process, one subscriber process that reads every
 * payload byte (it sums them; the parent checks the sum) and releases each
 * event; after one untimed lap of the ring (page faults, cold caches), timed
 * in the subscriber from its first timed event to its last. Each shmbus
 * throughput run is followed by its floor:
 *
 *   floor-ring   a bare single-producer, single-consumer ring of the same
 *                slot count and size, moving records as long as the shmbus
 *                events of that run, published and consumed in the same
 *                batches: the data movement without the protocol.
 *
 * Idle: subscribers that wait (adaptive, block) while nothing is published;
 * their own CPU time over the wall time, from getrusage in the waiting child.
 *
 * Each measurement is repeated --runs times with fresh processes and a fresh
 * bus; a reported figure is the median over the runs of that run's statistic
 * (the median of the per-run p50s, of the per-run p99s, ...). Runs of the
 * different cases are interleaved so slow drift of the machine affects them
 * alike.
 *
 * Children never use a handle of the parent: each opens the bus by name. Every
 * bus gets a unique, pid-based name and is unlinked at the end, also on error
 * or on a fatal signal (atexit + handlers); children die with the parent
 * (PR_SET_PDEATHSIG) and are killed and reaped when a measurement fails.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <x86intrin.h>
#endif

#include "bench_log.h"
#include "byte_sum.h"
#include "shmbus.h"

#define PROG "shmbus-bench"
#define MAX_RUNS 15
#define MAX_PUBLISHERS 4 /* throughput --publishers */
#define MAX_KIDS (1 + MAX_PUBLISHERS - 1) /* a subscriber and the publishers beside the parent */
#define MAX_RESULTS 32
#define MAX_BATCH 4096
#define WAIT_TIMEOUT_NS (10LL * 1000000000LL) /* any single wait: a hang, not a slow run */
#define SETUP_TIMEOUT_NS (10LL * 1000000000LL)

#define DEFAULT_RTT_ITERS 100000L
/* Floor-spin round trips per block inside the shmbus spin ping-pong: a few
 * hundred microseconds of each, taking turns (floor_block_after). */
#define FLOOR_BLOCK 1000L
#define DEFAULT_TP_SMALL_ITERS 5000000L
#define DEFAULT_TP_LARGE_ITERS 1000000L
#define DEFAULT_BATCH 64
#define DEFAULT_IDLE_SECONDS 5.0

/* ------------------------------------------------------------- options */

enum {
	MODE_FLOOR_SPIN = 1u << 0,
	MODE_FLOOR_FUTEX = 1u << 1,
	MODE_PINGPONG = 1u << 2,
	MODE_THROUGHPUT = 1u << 3,
	MODE_IDLE = 1u << 4,
	MODE_ALL = 0x1fu,
};

/* Not a wait mode of the library: events handled by a dispatcher
 * (shmbus_dispatcher_t) sleeping in its backend, handler to handler. */
#define WAIT_DISPATCH ((shmbus_wait_t)3)
#define WAIT_BIT(w) (1u << (w))
#define WAIT_ALL                                                                                                   \
	(WAIT_BIT(SHMBUS_WAIT_SPIN) | WAIT_BIT(SHMBUS_WAIT_BLOCK) | WAIT_BIT(SHMBUS_WAIT_ADAPTIVE) |                \
	 WAIT_BIT(WAIT_DISPATCH))

struct opts {
	unsigned modes;
	bool json;
	int runs;
	long iters;	   /* 0: the defaults above */
	long warmup;	   /* < 0: derived from the iteration count */
	unsigned waits;	   /* WAIT_BIT set */
	bool wait_given;
	size_t payload;	   /* ping-pong payload; throughput too when given */
	bool payload_given;
	unsigned batch;
	unsigned publishers; /* throughput: publishing processes (the parent and publishers - 1 children) */
	int cpu_a, cpu_b;
	double idle_seconds;
	bool plain_publish; /* --no-low-latency: ping-pong publishers without SHMBUS_PUB_LOW_LATENCY */
	bool stream_low_latency; /* --low-latency: throughput publishers with it too */
	bool cached_batches; /* --cached-batches: throughput publishers with SHMBUS_PUB_CACHED_BATCHES */
	long answer_work;    /* --answer-work N: rounds of answer_work before each pong */
};

static struct opts g_opt = {
	.modes = MODE_ALL,
	.runs = 3,
	.warmup = -1,
	.waits = WAIT_ALL,
	.payload = 32,
	.batch = DEFAULT_BATCH,
	.publishers = 1,
	.cpu_a = 0,
	.cpu_b = 1,
	.idle_seconds = DEFAULT_IDLE_SECONDS,
};

/* ------------------------------------------------------------- cleanup */

/*
 * What must not outlive us: the children of the current measurement and the
 * shm object of the current bus. Only the process that set them up (g_owner)
 * acts on them; forked children inherit the handlers and atexit entries.
 */
static pid_t g_owner;
static volatile pid_t g_kids[MAX_KIDS];
static char g_bus_name[SHMBUS_NAME_MAX + 1];
static char g_shm_file[SHMBUS_NAME_MAX + 32]; /* /dev/shm path, for signal handlers */
static volatile sig_atomic_t g_bus_live;

static void kill_registered_kids(void)
{
	for (int i = 0; i < MAX_KIDS; i++) {
		pid_t pid = g_kids[i];
		if (pid > 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			g_kids[i] = 0;
		}
	}
}

static void cleanup_at_exit(void)
{
	if (getpid() != g_owner)
		return;
	kill_registered_kids();
	if (g_bus_live) {
		shmbus_unlink(g_bus_name);
		g_bus_live = 0;
	}
}

/* Async-signal-safe: kill, waitpid and unlink only. */
static void cleanup_on_signal(int sig)
{
	if (getpid() == g_owner) {
		kill_registered_kids();
		if (g_bus_live)
			unlink(g_shm_file);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void install_cleanup(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
	struct sigaction sa = {.sa_handler = cleanup_on_signal};

	g_owner = getpid();
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
	atexit(cleanup_at_exit);
}

static void reset_signals_in_child(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		signal(sigs[i], SIG_DFL);
}

/* ------------------------------------------------------------ utilities */

static void warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnx(const char *fmt, ...)
{
	va_list ap;
	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(long ns)
{
	struct timespec ts = {.tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/*
 * Round-trip timestamps. Every sample includes the cost of one timestamp
 * read, the same for the floors and for shmbus; on x86 rdtscp is about half
 * the cost of a vDSO clock_gettime in a VM (~25 vs ~50 ns), which keeps that
 * bias small next to a ~400 ns floor. rdtscp also waits for earlier loads, so
 * the end stamp is never taken before the answer has arrived. Only the
 * pinned process A reads it, so TSC skew between CPUs does not matter.
 * Without an invariant TSC, CLOCK_MONOTONIC is used (1 tick = 1 ns).
 */
static bool g_use_tsc;
static double g_ns_per_tick = 1.0;

static inline uint64_t ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
	if (g_use_tsc) {
		unsigned aux;
		return __rdtscp(&aux);
	}
#endif
	return now_ns();
}

/* Use the TSC if it is invariant (CPUID 0x80000007 EDX bit 8) and rdtscp
 * exists; calibrate it against CLOCK_MONOTONIC over 100 ms. */
static void calibrate_ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
	if (!__get_cpuid(0x80000007, &a, &b, &c, &d) || !(d & (1u << 8)))
		return;
	if (!__get_cpuid(0x80000001, &a, &b, &c, &d) || !(d & (1u << 27)))
		return;
	g_use_tsc = true;
	uint64_t t0 = now_ns(), c0 = ticks();
	sleep_ns(100000000L);
	uint64_t t1 = now_ns(), c1 = ticks();
	if (c1 > c0 && t1 > t0)
		g_ns_per_tick = (double)(t1 - t0) / (double)(c1 - c0);
	else
		g_use_tsc = false;
#endif
}

static const char *timer_name(void)
{
	return g_use_tsc ? "rdtscp" : "clock_gettime";
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Voluntary context switches of this process so far: each is a sleep. */
static uint64_t sleeps_so_far(void)
{
	struct rusage ru;
	return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_nvcsw : 0;
}

static int pin_to_cpu(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : -errno;
}

static long futex_call(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, (void *)word, op, val, ts, NULL, 0);
}

static void fill_payload(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 7 + 1);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples: the smallest sample with at
 * least permille/1000 of all samples at or below it. */
static uint64_t percentile(const uint64_t *sorted, size_t n, unsigned permille)
{
	size_t rank = (n * permille + 999) / 1000;
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

static const char *wait_name(shmbus_wait_t w)
{
	if (w == WAIT_DISPATCH)
		return "dispatch";
	switch (w) {
	case SHMBUS_WAIT_SPIN:
		return "spin";
	case SHMBUS_WAIT_BLOCK:
		return "block";
	case SHMBUS_WAIT_ADAPTIVE:
		return "adaptive";
	}
	return "?";
}

/* ------------------------------------------------------------- results */

/* ST_SLEEPS: voluntary context switches of both processes per round trip
 * (human output only: it shows whether a wait mode really sleeps). */
enum {
	ST_P50, ST_P99, ST_P999, ST_MAX, ST_EPS, ST_MBPS, ST_CPU, ST_SLEEPS,
	/* a batched shmbus throughput run: where each side's time went */
	ST_SUB_POLL, ST_SUB_RELEASE, ST_SUB_IDLE, ST_PUB_NS, ST_SPACE_WAITS,
	NSTAT
};

enum {
	HAS_PAYLOAD = 1u << 0,
	HAS_BATCH = 1u << 1,
	HAS_RTT = 1u << 2,
	HAS_TP = 1u << 3,
	HAS_CPU = 1u << 4,
	HAS_PUBLISHERS = 1u << 5, /* a shmbus throughput run of several publishers */
	HAS_SPLIT = 1u << 6,	  /* a batched shmbus throughput run: ST_SUB_* and ST_PUB_NS */
};

/* One line of output: per-run statistics and, at the end, their medians. */
struct result {
	const char *system; /* "shmbus", "floor-spin", "floor-futex", "floor-ring" */
	const char *bench;  /* "pingpong", "throughput", "idle" */
	shmbus_wait_t wait;
	size_t payload;
	unsigned batch;
	unsigned publishers; /* throughput: more than 1 with --publishers */
	unsigned has;
	double per_run[MAX_RUNS][NSTAT];
	int nruns;
	double median[NSTAT];
	uint32_t event_bytes; /* throughput: bytes of one shmbus event (floor-ring copies it) */
};

static struct result g_results[MAX_RESULTS];
static int g_nresults;

static struct result *add_result(const char *system, const char *bench, shmbus_wait_t wait, size_t payload,
				 unsigned batch, unsigned has)
{
	struct result *r = &g_results[g_nresults++];
	*r = (struct result){
		.system = system, .bench = bench, .wait = wait, .payload = payload, .batch = batch, .has = has,
	};
	return r;
}

static struct result *find_result(const char *system, const char *bench, shmbus_wait_t wait, size_t payload,
				  unsigned batch)
{
	for (int i = 0; i < g_nresults; i++) {
		struct result *r = &g_results[i];
		if (strcmp(r->system, system) == 0 && strcmp(r->bench, bench) == 0 && r->wait == wait &&
		    (!(r->has & HAS_PAYLOAD) || r->payload == payload) &&
		    (!(r->has & HAS_BATCH) || r->batch == batch) && r->nruns > 0)
			return r;
	}
	return NULL;
}

/* Median of each statistic over the runs (the mean of the middle two for
 * an even count). */
static void compute_medians(struct result *r)
{
	for (int s = 0; s < NSTAT; s++) {
		double v[MAX_RUNS];
		for (int i = 0; i < r->nruns; i++)
			v[i] = r->per_run[i][s];
		qsort(v, (size_t)r->nruns, sizeof v[0], cmp_double);
		int n = r->nruns;
		r->median[s] = n == 0 ? NAN : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	}
}

/* samples are in ticks(); the statistics in ns. sleeps: both processes'
 * voluntary switches over total round trips (warm-up included). */
static void record_rtt(struct result *r, uint64_t *samples, size_t n, uint64_t sleeps, long total)
{
	double *v = r->per_run[r->nruns++];
	v[ST_SLEEPS] = (double)sleeps / (double)total;
	qsort(samples, n, sizeof samples[0], cmp_u64);
	v[ST_P50] = (double)percentile(samples, n, 500) * g_ns_per_tick;
	v[ST_P99] = (double)percentile(samples, n, 990) * g_ns_per_tick;
	v[ST_P999] = (double)percentile(samples, n, 999) * g_ns_per_tick;
	v[ST_MAX] = (double)samples[n - 1] * g_ns_per_tick;
}

/* ------------------------------------------------------------ sessions */

/*
 * Memory shared between the parent and the children of one measurement,
 * created before fork (MAP_SHARED | MAP_ANONYMOUS). The floor words each
 * sit on their own cache line so the floors measure a line transfer each
 * way and nothing else.
 */
struct child_out {
	uint64_t count;	     /* events received */
	uint64_t sum;	     /* sum of every payload byte received */
	uint64_t first_ns;   /* CLOCK_MONOTONIC at the first event */
	uint64_t last_ns;    /* ... and at the last */
	double cpu_percent;  /* idle: CPU time / wall time while waiting */
	uint64_t sleeps;     /* ping-pong: voluntary context switches in the loop */
	uint32_t event_bytes; /* throughput: shmbus_event_size of the events */
	/* batched throughput, timed stream: ticks() in the subscriber's calls
	 * that handed out events (poll), in its releases, and in the polls
	 * and waits that found nothing (idle) */
	uint64_t poll_ticks, release_ticks, idle_ticks;
};

struct ctl {
	_Alignas(64) _Atomic uint64_t spin_ping; /* floor-spin: A -> B */
	_Alignas(64) _Atomic uint64_t spin_pong; /* floor-spin: B -> A */
	_Alignas(64) _Atomic uint32_t fx_ping;	 /* floor-futex: A -> B */
	_Alignas(64) _Atomic uint32_t fx_pong;	 /* floor-futex: B -> A */
	_Alignas(64) _Atomic uint32_t ready;	 /* children set up and subscribed */
	_Atomic uint32_t go;			 /* the parent says start */
	_Atomic uint32_t warm_done;		 /* throughput: warm-up lap consumed */
	struct child_out out[MAX_KIDS];
	char err[256];				 /* a child's reason for failing */
};

struct session {
	struct ctl *ctl;
	bool has_bus;
	shmbus_bus_t *keeper; /* the creator's handle, held until the end */
	pid_t kids[MAX_KIDS];
	bool reaped[MAX_KIDS];
	int status[MAX_KIDS];
	int nkids;
};

typedef int (*child_fn)(struct ctl *ctl, int idx, const void *arg);

static unsigned g_bus_counter;

static void child_fail(struct ctl *ctl, const char *what, int err)
{
	snprintf(ctl->err, sizeof ctl->err, "%s: %s (%s)", what, strerror(err < 0 ? -err : err), shmbus_errmsg());
}

static int session_begin(struct session *s, const shmbus_config_t *cfg)
{
	*s = (struct session){0};
	s->ctl = mmap(NULL, sizeof *s->ctl, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s->ctl == MAP_FAILED) {
		s->ctl = NULL;
		warnx("mmap: %s", strerror(errno));
		return -1;
	}
	if (!cfg)
		return 0;

	snprintf(g_bus_name, sizeof g_bus_name, "bench-%d-%u", (int)getpid(), g_bus_counter++);
	snprintf(g_shm_file, sizeof g_shm_file, "/dev/shm/shmbus.%s", g_bus_name);
	shmbus_bus_t *bus = NULL;
	int r = shmbus_create(g_bus_name, cfg, &(shmbus_open_opts_t){.label = PROG}, &bus);
	if (r == -EEXIST) { /* left over by an earlier process with our pid */
		shmbus_unlink(g_bus_name);
		r = shmbus_create(g_bus_name, cfg, &(shmbus_open_opts_t){.label = PROG}, &bus);
	}
	if (r < 0) {
		warnx("shmbus_create %s: %s (%s)", g_bus_name, strerror(-r), shmbus_errmsg());
		return -1;
	}
	g_bus_live = 1;
	s->has_bus = true;
	/* Every participant opens the bus itself, the parent included, so both
	 * ends pay the same costs. The creator's handle only keeps a live member
	 * attached until the end, so the bus never looks stale (and removable
	 * by `shmbus gc`) before the participants have attached. */
	s->keeper = bus;
	return 0;
}

/* Fork a child that runs fn on cpu; it exits 0 on success. */
static int session_spawn(struct session *s, child_fn fn, const void *arg, int cpu)
{
	int idx = s->nkids;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		warnx("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		reset_signals_in_child();
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != g_owner)
			_exit(1);
		if (cpu >= 0)
			pin_to_cpu(cpu); /* the parent already warned if pinning fails */
		_exit(fn(s->ctl, idx, arg) == 0 ? 0 : 1);
	}
	s->kids[idx] = pid;
	g_kids[idx] = pid;
	s->nkids++;
	return 0;
}

/* False once any child has exited (it is reaped here and its status kept). */
static bool session_kids_alive(struct session *s)
{
	bool alive = true;
	for (int i = 0; i < s->nkids; i++) {
		if (s->reaped[i])
			return false;
		if (waitpid(s->kids[i], &s->status[i], WNOHANG) == s->kids[i]) {
			s->reaped[i] = true;
			g_kids[i] = 0;
			alive = false;
		}
	}
	return alive;
}

/* Wait (without burning the CPU a child may need) until n children are ready. */
static int session_await_ready(struct session *s, uint32_t n)
{
	uint64_t deadline = now_ns() + SETUP_TIMEOUT_NS;
	while (atomic_load_explicit(&s->ctl->ready, memory_order_acquire) < n) {
		if (!session_kids_alive(s)) {
			warnx("child failed during setup: %s", s->ctl->err[0] ? s->ctl->err : "exited");
			return -1;
		}
		if (now_ns() > deadline) {
			warnx("children not ready after %lld s", SETUP_TIMEOUT_NS / 1000000000LL);
			return -1;
		}
		sleep_ns(50000);
	}
	return 0;
}

/*
 * End a measurement: on success wait for the children to finish and check
 * they exited 0; on failure (or if they do not finish in time) kill them.
 * Then unlink the bus; the shared block stays mapped for the results.
 * Returns 0 only if everything went well.
 */
static int session_end(struct session *s, bool ok)
{
	uint64_t deadline = now_ns() + (ok ? WAIT_TIMEOUT_NS : 0);

	for (int i = 0; i < s->nkids; i++) {
		while (!s->reaped[i]) {
			pid_t r = waitpid(s->kids[i], &s->status[i], WNOHANG);
			if (r == s->kids[i] || (r < 0 && errno != EINTR)) {
				s->reaped[i] = true;
				break;
			}
			if (now_ns() >= deadline) {
				if (ok)
					warnx("child %d did not finish; killing it", (int)s->kids[i]);
				kill(s->kids[i], SIGKILL);
				waitpid(s->kids[i], &s->status[i], 0);
				s->reaped[i] = true;
				ok = false;
				break;
			}
			sleep_ns(100000);
		}
		g_kids[i] = 0;
		if (ok && !(WIFEXITED(s->status[i]) && WEXITSTATUS(s->status[i]) == 0)) {
			warnx("child failed: %s", s->ctl->err[0] ? s->ctl->err : "abnormal exit");
			ok = false;
		}
	}
	shmbus_close(s->keeper);
	s->keeper = NULL;
	if (s->has_bus) {
		shmbus_unlink(g_bus_name);
		g_bus_live = 0;
	}
	return ok ? 0 : -1;
}

/* After session_end, once the children's results have been read. */
static void session_unmap(struct session *s)
{
	if (s->ctl)
		munmap(s->ctl, sizeof *s->ctl);
	s->ctl = NULL;
}

/* ------------------------------------------------------- shmbus helpers */

/* One participant's attachment: its own bus handle, a subscription that
 * takes events named `listen`, and a publisher. */
struct peer {
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	shmbus_pub_t *pub;
};

static void peer_close(struct peer *p)
{
	shmbus_sub_close(p->sub);
	shmbus_pub_close(p->pub);
	shmbus_close(p->bus);
	*p = (struct peer){0};
}

/* Attach with a bus handle of our own. Each step returns 0 or -errno and,
 * on failure, names itself in *what. */
static int peer_attach(struct peer *p, const char *label, const char **what)
{
	*p = (struct peer){0};
	*what = "shmbus_open";
	return shmbus_open(g_bus_name, &(shmbus_open_opts_t){.label = label}, &p->bus);
}

/* Subscribe to events named `listen`, or to every event if it is NULL. */
static int peer_subscribe(struct peer *p, const char *label, const char *listen, shmbus_wait_t wait,
			  const char **what)
{
	shmbus_filter_t *filter = NULL;
	int r;

	if (listen) {
		*what = "shmbus_filter_names";
		r = shmbus_filter_names(&listen, 1, &filter);
		if (r < 0)
			return r;
	}
	*what = "shmbus_subscribe";
	if (wait == WAIT_DISPATCH) /* the dispatcher waits, not shmbus_wait */
		wait = SHMBUS_WAIT_BLOCK;
	r = shmbus_subscribe(p->bus, &(shmbus_sub_opts_t){.subscriber_id = label, .wait = wait, .filter = filter},
			     &p->sub);
	shmbus_filter_free(filter);
	return r;
}

static int peer_publisher(struct peer *p, const char *label, uint32_t flags, const char **what)
{
	*what = "shmbus_pub_open";
	return shmbus_pub_open(p->bus, &(shmbus_pub_opts_t){.source = label, .timeout_ns = WAIT_TIMEOUT_NS, .flags = flags},
			       &p->pub);
}

/* A publishing end only: attached and publishing (with
 * SHMBUS_PUB_LOW_LATENCY only if --low-latency, SHMBUS_PUB_CACHED_BATCHES
 * only if --cached-batches), or closed again. */
static int peer_open_publisher(struct peer *p, const char *label, const char **what)
{
	int r = peer_attach(p, label, what);
	uint32_t flags = (g_opt.stream_low_latency ? SHMBUS_PUB_LOW_LATENCY : 0) |
			 (g_opt.cached_batches ? SHMBUS_PUB_CACHED_BATCHES : 0);
	if (r == 0)
		r = peer_publisher(p, label, flags, what);
	if (r < 0)
		peer_close(p);
	return r;
}

/* A conversation end: subscribed to `listen` in mode `wait`, publishing
 * as a latency-minded application does (SHMBUS_PUB_LOW_LATENCY), unless
 * --no-low-latency. */
static int peer_open_both(struct peer *p, const char *label, const char *listen, shmbus_wait_t wait,
			  const char **what)
{
	int r = peer_attach(p, label, what);
	if (r == 0)
		r = peer_subscribe(p, label, listen, wait, what);
	if (r == 0)
		r = peer_publisher(p, label, g_opt.plain_publish ? 0 : SHMBUS_PUB_LOW_LATENCY, what);
	if (r < 0)
		peer_close(p);
	return r;
}

/* Next event, retrying interrupted sleeps; -ETIMEDOUT after WAIT_TIMEOUT_NS. */
static int next_event(shmbus_sub_t *sub, const shmbus_event_t **ev)
{
	for (;;) {
		int r = shmbus_wait(sub, WAIT_TIMEOUT_NS, ev);
		if (r == 1)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (r != -EINTR)
			return r;
	}
}

static void signal_ready(struct ctl *ctl)
{
	atomic_fetch_add_explicit(&ctl->ready, 1, memory_order_release);
}

static void await_go(struct ctl *ctl)
{
	while (!atomic_load_explicit(&ctl->go, memory_order_acquire))
		sleep_ns(100000);
}

/* ------------------------------------------------------- floor: spin */

struct pp_arg {
	long total; /* warm-up + measured round trips */
	shmbus_wait_t wait;
	size_t payload;
	long warmup;	  /* shmbus ping-pong: the round trips not measured */
	long floor_block; /* > 0: floor-spin round trips taking turns with them */
	long answer_work; /* shmbus pong: rounds of answer_work before each answer */
};

/*
 * --answer-work: `rounds` rounds of work in the first level cache before
 * B answers, each 8 loads, 8 ALU operations and the loop's own (about 20
 * instructions, independent enough to run several a cycle, like the
 * library's own code on a leg). Added to a spin ping-pong, the slope of
 * its round trip against rounds tells how fast B's work runs where the
 * two CPUs are at the time: on one core's two hardware threads a
 * spinning partner shares the core (ARCHITECTURE.md, Known limits).
 */
static volatile uint64_t answer_sink;

static uint64_t answer_work(long rounds)
{
	static uint64_t words[64 * 8];
	const uint64_t *base = words;
	__asm__("" : "+r"(base)); /* its words are not known to be zero */
	uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	for (long r = 0; r < rounds; r++) {
		const uint64_t *w = &base[(r & 63) * 8];
		a0 += w[0] ^ w[4];
		a1 += w[1] ^ w[5];
		a2 += w[2] ^ w[6];
		a3 += w[3] ^ w[7];
		/* keeps the four sums in registers, computed each round */
		__asm__ volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
	}
	return a0 + a1 + a2 + a3;
}

/*
 * Spin until *word == want. The child cannot hang the parent: every few
 * million spins the parent checks that its partner still lives.
 */
static int spin_until(struct session *s, _Atomic uint64_t *word, uint64_t want)
{
	unsigned spins = 0;
	while (atomic_load_explicit(word, memory_order_acquire) != want) {
		cpu_relax();
		if (s && ++spins == 1u << 22) {
			spins = 0;
			if (!session_kids_alive(s))
				return -1;
		}
	}
	return 0;
}

/*
 * The spin floor measured inside a shmbus spin ping-pong: after every
 * floor_block measured shmbus round trips, both processes run floor_block
 * floor round trips on the session's floor words, then go back to shmbus.
 * Measured apart, the floor ran in a different second than shmbus, and on
 * this kind of machine (virtual CPUs the host moves about) one second's
 * cache-line transfer can cost a quarter more or less than the next: the
 * ratio moved with it. Taking turns every millisecond or so, both see the
 * same machine.
 */
static bool floor_block_after(const struct pp_arg *a, long i)
{
	long measured = i + 1 - a->warmup;
	return a->floor_block > 0 && measured > 0 && measured % a->floor_block == 0;
}

/* B's side of the spin floor: answer `block` pings; *n counts the floor
 * round trips so far. */
static void floor_answer_block(struct ctl *ctl, long block, long *n)
{
	for (long j = 0; j < block; j++) {
		++*n;
		spin_until(NULL, &ctl->spin_ping, (uint64_t)*n); /* PDEATHSIG ends us if A dies */
		atomic_store_explicit(&ctl->spin_pong, (uint64_t)*n, memory_order_release);
	}
}

static int floor_spin_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct pp_arg *a = varg;
	long n = 0;
	(void)idx;
	signal_ready(ctl);
	uint64_t sw0 = sleeps_so_far();
	floor_answer_block(ctl, a->total, &n);
	ctl->out[0].sleeps = sleeps_so_far() - sw0;
	return 0;
}

/* ------------------------------------------------------ floor: futex */

/*
 * Wait until *word == want, sleeping in FUTEX_WAIT (shared: no
 * FUTEX_PRIVATE_FLAG, as between processes). With a partner to watch, the
 * sleep is bounded so a dead partner is noticed.
 */
static int futex_until(struct session *s, _Atomic uint32_t *word, uint32_t want)
{
	const struct timespec tmo = {.tv_sec = 1};
	for (;;) {
		uint32_t v = atomic_load_explicit(word, memory_order_acquire);
		if (v == want)
			return 0;
		if (futex_call(word, FUTEX_WAIT, v, s ? &tmo : NULL) < 0 && errno == ETIMEDOUT && s &&
		    !session_kids_alive(s))
			return -1;
	}
}

static void futex_post(_Atomic uint32_t *word, uint32_t v)
{
	atomic_store_explicit(word, v, memory_order_release);
	futex_call(word, FUTEX_WAKE, 1, NULL);
}

static int floor_futex_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct pp_arg *a = varg;
	(void)idx;
	signal_ready(ctl);
	uint64_t sw0 = sleeps_so_far();
	for (long i = 1; i <= a->total; i++) {
		futex_until(NULL, &ctl->fx_ping, (uint32_t)i);
		futex_post(&ctl->fx_pong, (uint32_t)i);
	}
	ctl->out[0].sleeps = sleeps_so_far() - sw0;
	return 0;
}

/* How one floor pings its partner and waits for the answer. */
struct floor_ops {
	const char *name;
	int (*child)(struct ctl *ctl, int idx, const void *arg);
	void (*ping)(struct ctl *ctl, long i);
	int (*await_pong)(struct session *s, long i);
};

static void spin_ping(struct ctl *ctl, long i)
{
	atomic_store_explicit(&ctl->spin_ping, (uint64_t)i, memory_order_release);
}

static int spin_await_pong(struct session *s, long i)
{
	return spin_until(s, &s->ctl->spin_pong, (uint64_t)i);
}

/* A's side of a floor block inside a shmbus ping-pong: block round trips,
 * timed into samples[]. 0, or -1 if B died. */
static int floor_ping_block(struct session *s, long block, long *n, uint64_t *samples)
{
	for (long j = 0; j < block; j++) {
		++*n;
		uint64_t t0 = ticks();
		spin_ping(s->ctl, *n);
		if (spin_await_pong(s, *n) < 0)
			return -1;
		samples[j] = ticks() - t0;
	}
	return 0;
}

static void futex_ping(struct ctl *ctl, long i)
{
	futex_post(&ctl->fx_ping, (uint32_t)i);
}

static int futex_await_pong(struct session *s, long i)
{
	return futex_until(s, &s->ctl->fx_pong, (uint32_t)i);
}

/* The cache-line ping-pong floor: one store and one remote load each way. */
static const struct floor_ops floor_spin = {"floor-spin", floor_spin_child, spin_ping, spin_await_pong};
/* The kernel wake-up floor: each side sleeps at once and is woken by a
 * FUTEX_WAKE from the other, as shmbus does in block mode. */
static const struct floor_ops floor_futex = {"floor-futex", floor_futex_child, futex_ping, futex_await_pong};

/* Round trips against a partner process running ops->child, timed here. */
static int run_floor(struct result *res, long iters, long warmup, const struct floor_ops *ops)
{
	struct pp_arg a = {.total = iters + warmup};
	struct session s;
	uint64_t *samples = malloc((size_t)iters * sizeof *samples);
	int ok = samples && session_begin(&s, NULL) == 0;

	if (!ok) {
		free(samples);
		return -1;
	}
	ok = session_spawn(&s, ops->child, &a, g_opt.cpu_b) == 0 && session_await_ready(&s, 1) == 0;
	uint64_t sw0 = sleeps_so_far();
	for (long i = 1; ok && i <= a.total; i++) {
		uint64_t t0 = ticks();
		ops->ping(s.ctl, i);
		if (ops->await_pong(&s, i) < 0) {
			warnx("%s: partner died", ops->name);
			ok = false;
			break;
		}
		uint64_t t1 = ticks();
		if (i > warmup)
			samples[i - warmup - 1] = t1 - t0;
	}
	uint64_t sleeps = sleeps_so_far() - sw0;
	if (session_end(&s, ok) == 0)
		record_rtt(res, samples, (size_t)iters, sleeps + s.ctl->out[0].sleeps, a.total);
	else
		ok = false;
	session_unmap(&s);
	free(samples);
	return ok ? 0 : -1;
}

/* --------------------------------------------------- shmbus ping-pong */

static shmbus_msg_t make_msg(const char *name, const void *payload, size_t len)
{
	return (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = name, .payload = payload, .payload_len = len};
}

/* --wait dispatch: both ends handle events in a dispatcher's handler. */
struct dispatch_end {
	struct peer *p;
	shmbus_msg_t reply; /* the pong, for B */
	uint64_t sum;	    /* payload bytes read */
	long handled;
	int err;
};

static int pong_handler(const shmbus_event_t *ev, void *arg)
{
	struct dispatch_end *e = arg;
	size_t n;
	const uint8_t *data = shmbus_event_payload(ev, &n);
	e->sum += byte_sum(data, n);
	int r = shmbus_publish(e->p->pub, &e->reply, NULL);
	if (r < 0)
		e->err = r;
	e->handled++;
	return 0; /* released by the dispatcher after we return */
}

static int ping_handler(const shmbus_event_t *ev, void *arg)
{
	struct dispatch_end *e = arg;
	size_t n;
	const uint8_t *data = shmbus_event_payload(ev, &n);
	e->sum += byte_sum(data, n);
	if (n != e->reply.payload_len || strcmp(shmbus_event_name(ev), "pong") != 0)
		e->err = -EPROTO;
	e->handled++;
	return 0;
}

/* A dispatcher serving p's subscription with handler h; 0 or -errno. */
static int dispatch_open(struct peer *p, shmbus_handler_t h, struct dispatch_end *e, shmbus_dispatcher_t **d)
{
	int r = shmbus_dispatcher_open(NULL, d);
	if (r < 0)
		return r;
	e->p = p;
	r = shmbus_dispatcher_add(*d, p->sub, &(shmbus_handler_opts_t){.handler = h, .arg = e});
	if (r < 0)
		shmbus_dispatcher_close(*d);
	return r;
}

/* Run d until e has handled `want` events in all; -ETIMEDOUT if nothing
 * comes for WAIT_TIMEOUT_NS. */
static int dispatch_until(shmbus_dispatcher_t *d, struct dispatch_end *e, long want)
{
	uint64_t give_up = 0;
	while (e->handled < want && !e->err) {
		int r = shmbus_dispatcher_run_once(d, WAIT_TIMEOUT_NS);
		if (r < 0 && r != -EINTR)
			return r;
		if (r > 0) {
			give_up = 0;
		} else if (!give_up) {
			give_up = now_ns() + WAIT_TIMEOUT_NS;
		} else if (now_ns() > give_up) {
			return -ETIMEDOUT;
		}
	}
	return e->err;
}

static int pong_dispatch(struct ctl *ctl, const struct pp_arg *a, struct peer *p, const uint8_t *buf)
{
	struct dispatch_end e = {.reply = make_msg("pong", buf, a->payload)};
	shmbus_dispatcher_t *d;
	int r = dispatch_open(p, pong_handler, &e, &d);
	if (r < 0) {
		child_fail(ctl, "pong: dispatcher", r);
		return r;
	}
	signal_ready(ctl);
	uint64_t sw0 = sleeps_so_far();
	if ((r = dispatch_until(d, &e, a->total)) < 0)
		child_fail(ctl, "pong: dispatcher run", r);
	ctl->out[0].sum += e.sum;
	ctl->out[0].sleeps = sleeps_so_far() - sw0;
	shmbus_dispatcher_close(d);
	return r;
}

/* B: answer every ping with a pong, then release the ping (after the
 * publish, so the release is off the round trip's critical path). */
static int pong_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct pp_arg *a = varg;
	uint8_t *buf = malloc(a->payload + 1);
	shmbus_msg_t msg = make_msg("pong", buf, a->payload);
	const char *what;
	struct peer p;
	int r;

	(void)idx;
	if (!buf) {
		snprintf(ctl->err, sizeof ctl->err, "pong: out of memory");
		return -1;
	}
	fill_payload(buf, a->payload);
	r = peer_open_both(&p, "bench-pong", "ping", a->wait, &what);
	if (r < 0) {
		child_fail(ctl, what, r);
		free(buf);
		return -1;
	}
	if (a->wait == WAIT_DISPATCH) {
		r = pong_dispatch(ctl, a, &p, buf);
		peer_close(&p);
		free(buf);
		return r < 0 ? -1 : 0;
	}
	signal_ready(ctl);
	uint64_t sw0 = sleeps_so_far();
	long floor_n = 0;
	for (long i = 0; i < a->total; i++) {
		const shmbus_event_t *ev;
		size_t n;
		if ((r = next_event(p.sub, &ev)) < 0) {
			child_fail(ctl, "pong: shmbus_wait", r);
			break;
		}
		const uint8_t *data = shmbus_event_payload(ev, &n);
		ctl->out[0].sum += byte_sum(data, n);
		if (a->answer_work)
			answer_sink += answer_work(a->answer_work);
		if ((r = shmbus_publish(p.pub, &msg, NULL)) < 0) {
			child_fail(ctl, "pong: shmbus_publish", r);
			break;
		}
		if ((r = shmbus_release(p.sub, ev)) < 0) {
			child_fail(ctl, "pong: shmbus_release", r);
			break;
		}
		if (floor_block_after(a, i))
			floor_answer_block(ctl, a->floor_block, &floor_n);
	}
	ctl->out[0].sleeps = sleeps_so_far() - sw0;
	peer_close(&p);
	free(buf);
	return r < 0 ? -1 : 0;
}

/* A: publish a ping, wait for the pong; the round trip includes both
 * publishes, both routings, both wake-ups (in the given wait mode) and
 * reading the answer's payload. The pong is checked and released outside
 * the timed window. */
/* ping_loop for --wait dispatch: the round trip ends in our handler. */
static int ping_dispatch(struct session *s, struct peer *p, const struct pp_arg *a, uint64_t *samples,
			 const uint8_t *buf, uint64_t *sleeps)
{
	const long warmup = a->warmup;
	struct dispatch_end e = {.reply = make_msg("ping", buf, a->payload)};
	shmbus_dispatcher_t *d;
	int r = dispatch_open(p, ping_handler, &e, &d);
	if (r < 0) {
		warnx("ping: dispatcher: %s (%s)", strerror(-r), shmbus_errmsg());
		return -1;
	}
	uint64_t sw0 = sleeps_so_far();
	for (long i = 0; i < a->total && r == 0; i++) {
		uint64_t t0 = ticks();
		if ((r = shmbus_publish(p->pub, &e.reply, NULL)) < 0)
			break;
		r = dispatch_until(d, &e, i + 1);
		uint64_t t1 = ticks();
		if (i >= warmup)
			samples[i - warmup] = t1 - t0;
	}
	*sleeps = sleeps_so_far() - sw0;
	shmbus_dispatcher_close(d);
	if (r < 0) {
		warnx("ping: %s (%s)%s", strerror(-r), shmbus_errmsg(), session_kids_alive(s) ? "" : "; partner died");
		return -1;
	}
	if (e.sum != (uint64_t)a->total * byte_sum(buf, a->payload)) {
		warnx("ping: payload sum %" PRIu64 " is wrong", e.sum);
		return -1;
	}
	return 0;
}

/* A's loop. With a->floor_block, the floor blocks' samples go to
 * floor_samples (*nfloor of them). */
static int ping_loop(struct session *s, struct peer *p, const struct pp_arg *a, uint64_t *samples,
		     const uint8_t *buf, uint64_t *sleeps, uint64_t *floor_samples, size_t *nfloor)
{
	if (a->wait == WAIT_DISPATCH)
		return ping_dispatch(s, p, a, samples, buf, sleeps);
	const long warmup = a->warmup;
	uint64_t sw0 = sleeps_so_far();
	const size_t len = a->payload;
	shmbus_msg_t msg = make_msg("ping", buf, len);
	uint64_t sink = 0;
	long floor_n = 0;

	for (long i = 0; i < a->total; i++) {
		const shmbus_event_t *ev;
		size_t n;
		uint64_t t0 = ticks();
		int r = shmbus_publish(p->pub, &msg, NULL);
		if (r < 0) {
			warnx("ping: shmbus_publish: %s (%s)", strerror(-r), shmbus_errmsg());
			return -1;
		}
		r = next_event(p->sub, &ev);
		if (r < 0) {
			warnx("ping: shmbus_wait: %s (%s)%s", strerror(-r), shmbus_errmsg(),
			      session_kids_alive(s) ? "" : "; partner died");
			return -1;
		}
		const uint8_t *data = shmbus_event_payload(ev, &n);
		sink += byte_sum(data, n);
		uint64_t t1 = ticks();
		if (n != len || strcmp(shmbus_event_name(ev), "pong") != 0) {
			warnx("ping: unexpected event '%s' with %zu payload bytes", shmbus_event_name(ev), n);
			return -1;
		}
		if ((r = shmbus_release(p->sub, ev)) < 0) {
			warnx("ping: shmbus_release: %s (%s)", strerror(-r), shmbus_errmsg());
			return -1;
		}
		if (i >= warmup)
			samples[i - warmup] = t1 - t0;
		if (floor_block_after(a, i)) {
			if (floor_ping_block(s, a->floor_block, &floor_n, floor_samples + *nfloor) < 0) {
				warnx("ping: floor block: partner died");
				return -1;
			}
			*nfloor += (size_t)a->floor_block;
		}
	}
	*sleeps = sleeps_so_far() - sw0;
	uint64_t expect = (uint64_t)a->total * byte_sum(buf, len);
	if (sink != expect) {
		warnx("ping: payload sum %" PRIu64 ", expected %" PRIu64, sink, expect);
		return -1;
	}
	return 0;
}

/*
 * One shmbus ping-pong run in res's wait mode. With floor (spin only), the
 * spin floor is measured in the same run, in blocks taking turns with
 * shmbus's round trips (floor_block_after), and recorded in floor.
 */
static int run_shmbus_pingpong(struct result *res, struct result *floor, long iters, long warmup)
{
	struct pp_arg a = {.total = iters + warmup,
			   .wait = res->wait,
			   .payload = res->payload,
			   .warmup = warmup,
			   .answer_work = g_opt.answer_work};
	if (floor)
		a.floor_block = iters < FLOOR_BLOCK ? iters : FLOOR_BLOCK;
	shmbus_config_t cfg = {.max_payload = res->payload > 65536 ? (uint32_t)res->payload : 0};
	uint64_t *samples = malloc((size_t)iters * sizeof *samples);
	uint64_t *floor_samples = floor ? malloc((size_t)iters * sizeof *floor_samples) : NULL;
	size_t nfloor = 0;
	uint8_t *buf = malloc(res->payload + 1);
	uint64_t sleeps = 0;
	struct peer p = {0};
	struct session s;
	const char *what;
	bool ok;
	int r;

	if (!samples || !buf || (floor && !floor_samples) || session_begin(&s, &cfg) < 0) {
		free(samples);
		free(floor_samples);
		free(buf);
		return -1;
	}
	fill_payload(buf, res->payload);
	ok = session_spawn(&s, pong_child, &a, g_opt.cpu_b) == 0;
	if (ok && (r = peer_open_both(&p, "bench-ping", "pong", a.wait, &what)) < 0) {
		warnx("%s: %s (%s)", what, strerror(-r), shmbus_errmsg());
		ok = false;
	}
	ok = ok && session_await_ready(&s, 1) == 0 &&
	     ping_loop(&s, &p, &a, samples, buf, &sleeps, floor_samples, &nfloor) == 0;
	peer_close(&p);
	if (session_end(&s, ok) == 0) {
		record_rtt(res, samples, (size_t)iters, sleeps + s.ctl->out[0].sleeps, a.total);
		if (floor) /* a spinning floor does not sleep */
			record_rtt(floor, floor_samples, nfloor, 0, (long)nfloor);
	} else {
		ok = false;
	}
	session_unmap(&s);
	free(samples);
	free(floor_samples);
	free(buf);
	return ok ? 0 : -1;
}

/* ---------------------------------------------------------- throughput */

struct tp_arg {
	long warm;  /* events of the warm-up lap, neither timed nor summed */
	long count; /* events timed */
	shmbus_wait_t wait;
	unsigned batch; /* > 1: the subscriber polls and releases batches too */
	long share;	/* --publishers: the timed events each publisher child sends */
	const uint8_t *payload; /* ... of payload_len bytes (the parent's buffer, inherited) */
	size_t payload_len;
};

static int tp_publish(struct peer *p, long count, size_t payload, unsigned batch, const uint8_t *buf);

/* The batched subscriber: shmbus_poll_batch and shmbus_release_batch, as
 * a consumer of a batching publisher would; the same reading, counting
 * and timing as one event at a time. 0 or -errno. */
static int tp_consume_batches(struct ctl *ctl, struct peer *p, const struct tp_arg *a, struct child_out *out,
			      uint64_t *sum)
{
	const shmbus_event_t *evs[SHMBUS_MAX_HELD];
	int max = a->batch < SHMBUS_MAX_HELD ? (int)a->batch : SHMBUS_MAX_HELD;
	for (long i = -a->warm; i < a->count;) {
		long left = a->count - i < max ? a->count - i : max;
		if (i < 0 && -i < left)
			left = -i; /* the warm-up lap ends on its own */
		/* Three timestamps a call of up to 40 events: about 2 ns an event
		 * (rdtscp) added to the subscriber's side. */
		uint64_t t0 = ticks();
		int n = shmbus_poll_batch(p->sub, evs, (int)left);
		uint64_t t1 = ticks();
		bool idle = n == 0;
		if (n == 0) {
			/* nothing queued: wait for one through the wait path */
			if ((n = next_event(p->sub, &evs[0])) == 0)
				n = 1;
			t1 = ticks();
		}
		if (i >= 0)
			*(idle ? &out->idle_ticks : &out->poll_ticks) += t1 - t0;
		if (n < 0) {
			child_fail(ctl, "subscriber: shmbus_poll_batch", n);
			return n;
		}
		if (i == 0)
			out->first_ns = now_ns();
		for (int k = 0; k < n; k++) {
			size_t len;
			const uint8_t *data = shmbus_event_payload(evs[k], &len);
			if (i + k >= 0)
				*sum += byte_sum(data, len);
			if (i + k == 0)
				out->event_bytes = (uint32_t)shmbus_event_size(evs[k]);
		}
		uint64_t t2 = ticks();
		int r = shmbus_release_batch(p->sub, evs, n);
		if (i >= 0)
			out->release_ticks += ticks() - t2;
		if (r < 0) {
			child_fail(ctl, "subscriber: shmbus_release_batch", r);
			return r;
		}
		if (i < 0 && i + n >= 0)
			atomic_store_explicit(&ctl->warm_done, 1, memory_order_release);
		if (i >= 0) /* the warm-up lap ends exactly at 0: left is cut there */
			out->count += (uint64_t)n;
		i += n;
	}
	out->last_ns = now_ns();
	return 0;
}

/* The subscriber: read every payload byte, release, and time the stream
 * from the first event after the warm-up to the last. */
static int tp_sub_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct tp_arg *a = varg;
	struct child_out *out = &ctl->out[idx];
	const char *what;
	struct peer p;
	int r;

	r = peer_attach(&p, "bench-tp-sub", &what);
	if (r == 0)
		r = peer_subscribe(&p, "bench-tp-sub", NULL, a->wait, &what);
	if (r < 0) {
		peer_close(&p);
		child_fail(ctl, what, r);
		return -1;
	}
	signal_ready(ctl);
	uint64_t sum = 0;
	if (a->batch > 1) {
		r = tp_consume_batches(ctl, &p, a, out, &sum);
		goto done;
	}
	for (long i = -a->warm; i < a->count; i++) {
		const shmbus_event_t *ev;
		size_t n;
		/* Take what is queued without waiting, as a busy consumer would;
		 * only an empty queue goes through the wait path. */
		r = shmbus_poll(p.sub, &ev);
		if (r == 0)
			r = next_event(p.sub, &ev);
		if (r < 0) {
			child_fail(ctl, "subscriber: shmbus_wait", r);
			break;
		}
		if (i == 0)
			out->first_ns = now_ns();
		const uint8_t *data = shmbus_event_payload(ev, &n);
		if (i >= 0)
			sum += byte_sum(data, n);
		if (i == 0)
			out->event_bytes = (uint32_t)shmbus_event_size(ev);
		if ((r = shmbus_release(p.sub, ev)) < 0) {
			child_fail(ctl, "subscriber: shmbus_release", r);
			break;
		}
		out->count += i >= 0;
		if (i == -1)
			atomic_store_explicit(&ctl->warm_done, 1, memory_order_release);
	}
	out->last_ns = now_ns();
done:
	out->sum = sum;
	peer_close(&p);
	return r < 0 ? -1 : 0;
}

/* A publisher beside the parent (--publishers): attached and ready before
 * the warm-up lap, it sends its share of the timed stream once the parent
 * says go, when the subscriber has consumed the lap. Not pinned: with more
 * processes than CPUs the scheduler places it. */
static int tp_pub_child(struct ctl *ctl, int idx, const void *varg)
{
	(void)idx;
	const struct tp_arg *a = varg;
	const char *what;
	struct peer p;
	int r = peer_open_publisher(&p, "bench-tp-pub", &what);
	if (r < 0) {
		child_fail(ctl, what, r);
		return -1;
	}
	signal_ready(ctl);
	await_go(ctl);
	r = tp_publish(&p, a->share, a->payload_len, a->batch, a->payload);
	peer_close(&p);
	return r;
}

/* The publisher: count events of `payload` bytes, one publish each or
 * shmbus_publish_batch of `batch` (one claim and one wake per batch). */
static int tp_publish(struct peer *p, long count, size_t payload, unsigned batch, const uint8_t *buf)
{
	static shmbus_msg_t msgs[MAX_BATCH];

	for (unsigned i = 0; i < batch; i++)
		msgs[i] = make_msg("tp", buf, payload);
	for (long sent = 0; sent < count;) {
		long n = count - sent < (long)batch ? count - sent : (long)batch;
		int r = batch == 1 ? shmbus_publish(p->pub, &msgs[0], NULL)
				   : shmbus_publish_batch(p->pub, msgs, (size_t)n, NULL);
		if (r < 0) {
			const char *call = batch == 1 ? "shmbus_publish" : "shmbus_publish_batch";
			warnx("publisher: %s after %ld events: %s (%s)", call, sent, strerror(-r), shmbus_errmsg());
			return -1;
		}
		sent += n;
	}
	return 0;
}

static uint32_t slot_size_for(size_t payload)
{
	/* 144-byte fixed header, short name and source strings, alignment:
	 * 192 bytes of room keeps one event per slot (256 for 32 B, 2048 for
	 * 1 KiB). */
	uint32_t s = 256;
	while (s < payload + 192 && s < 65536) /* larger events span slots */
		s <<= 1;
	return s;
}

/* A ring of 1 MiB (4096 slots of 256 B; at least 1024 slots of bigger
 * ones): big enough that the publisher rarely waits on a healthy
 * subscriber, small enough that the ring and its control lines stay in the
 * caches, as an IPC ring should (8192 slots measured slower here). */
static uint32_t slots_for_tp(uint32_t slot_size)
{
	uint32_t slots = 4096;
	while (slots > 1024 && (uint64_t)slots * slot_size > (1u << 20))
		slots >>= 1;
	return slots;
}

/* The timed stream starts on an empty queue: otherwise a backlog left by
 * the warm-up would be drained at the subscriber's speed alone and a short
 * run would over-state the rate. */
static int await_warm_done(struct session *s)
{
	uint64_t deadline = now_ns() + WAIT_TIMEOUT_NS;
	while (!atomic_load_explicit(&s->ctl->warm_done, memory_order_acquire)) {
		if (!session_kids_alive(s) || now_ns() > deadline) {
			warnx("throughput: subscriber did not finish the warm-up: %s",
			      s->ctl->err[0] ? s->ctl->err : "no progress");
			return -1;
		}
		cpu_relax();
	}
	return 0;
}

/* One throughput run's figures from its reader's timestamps: count - 1
 * intervals between the first event and the last. */
static void record_rate(struct result *res, const struct child_out *out, long count, uint32_t event_bytes)
{
	double secs = (double)(out->last_ns - out->first_ns) / 1e9;
	double eps = secs > 0 ? (double)(count - 1) / secs : INFINITY;
	double *v = res->per_run[res->nruns++];
	v[ST_EPS] = eps;
	v[ST_MBPS] = eps * (double)res->payload / 1e6;
	res->event_bytes = event_bytes;
}

/* Where a batched run's time went, per event of the timed stream: the
 * subscriber's polls that handed out events and its releases, the share
 * of its time in those calls that found nothing, and the pinned publisher's time
 * in its publish calls (waits for space included) with the count of those
 * waits (bus-wide). Whichever side is near 1e9 / events_per_s ns an event
 * is the one that limits the run. */
static void record_split(struct result *res, const struct child_out *out, long count, double pub_ns_per_event,
			 uint64_t space_waits)
{
	double *v = res->per_run[res->nruns - 1];
	double total = (double)(out->poll_ticks + out->release_ticks + out->idle_ticks);
	v[ST_SUB_POLL] = (double)out->poll_ticks * g_ns_per_tick / (double)count;
	v[ST_SUB_RELEASE] = (double)out->release_ticks * g_ns_per_tick / (double)count;
	v[ST_SUB_IDLE] = total > 0 ? 100.0 * (double)out->idle_ticks / total : 0;
	v[ST_PUB_NS] = pub_ns_per_event;
	v[ST_SPACE_WAITS] = (double)space_waits;
}

static int run_throughput(struct result *res, long count)
{
	struct tp_arg a = {.count = count, .wait = res->wait, .batch = res->batch};
	shmbus_config_t cfg = {
		.slot_size = slot_size_for(res->payload),
		.max_payload = res->payload > 65536 ? (uint32_t)res->payload : 0,
		.max_subscribers = 4, /* queue cells grow with subscriptions x slots */
	};
	cfg.slots = slots_for_tp(cfg.slot_size);
	/* One lap of the ring first, consumed before the timed stream: every
	 * page faulted in by both processes and every cache and TLB path warm,
	 * so the figure is the steady state, not the first touch of fresh
	 * tmpfs pages. */
	a.warm = cfg.slots;
	uint8_t *buf = malloc(res->payload ? res->payload : 1);
	struct peer p = {0};
	struct session s;
	const char *what;
	bool ok;
	int r;

	if (!buf || session_begin(&s, &cfg) < 0) {
		free(buf);
		return -1;
	}
	fill_payload(buf, res->payload);
	/* Several publishers: the children send `share` events each, the
	 * parent the rest; the subscriber counts them all. */
	unsigned kids = res->publishers > 1 ? res->publishers - 1 : 0;
	a.share = count / (long)(kids + 1);
	a.payload = buf;
	a.payload_len = res->payload;
	long own = count - a.share * (long)kids;
	ok = session_spawn(&s, tp_sub_child, &a, g_opt.cpu_b) == 0;
	for (unsigned k = 0; ok && k < kids; k++)
		ok = session_spawn(&s, tp_pub_child, &a, -1) == 0;
	if (ok) {
		r = peer_open_publisher(&p, "bench-tp-pub", &what);
		if (r < 0) {
			warnx("%s: %s (%s)", what, strerror(-r), shmbus_errmsg());
			ok = false;
		}
	}
	ok = ok && session_await_ready(&s, 1 + kids) == 0 && tp_publish(&p, a.warm, res->payload, res->batch, buf) == 0 &&
	     await_warm_done(&s) == 0;
	if (ok)
		atomic_store_explicit(&s.ctl->go, 1, memory_order_release);
	shmbus_metrics_t m0 = {0}, m1 = {0};
	uint64_t pub_ns = 0;
	if (ok && (ok = shmbus_get_metrics(p.bus, &m0) == 0)) {
		pub_ns = now_ns();
		ok = tp_publish(&p, own, res->payload, res->batch, buf) == 0;
		pub_ns = now_ns() - pub_ns;
		ok = ok && shmbus_get_metrics(p.bus, &m1) == 0;
	}
	peer_close(&p);
	ok = session_end(&s, ok) == 0;

	const struct child_out *out = &s.ctl->out[0];
	uint64_t expect = (uint64_t)count * byte_sum(buf, res->payload);
	if (ok && (out->count != (uint64_t)count || out->sum != expect)) {
		warnx("throughput: subscriber got %" PRIu64 " of %ld events, byte sum %" PRIu64
		      " (expected %" PRIu64 ")", out->count, count, out->sum, expect);
		ok = false;
	}
	if (ok) {
		record_rate(res, out, count, out->event_bytes);
		if (res->has & HAS_SPLIT)
			record_split(res, out, count, (double)pub_ns / (double)own, m1.block_waits - m0.block_waits);
	}
	session_unmap(&s);
	free(buf);
	return ok ? 0 : -1;
}

/* ---------------------------------------------------------------- idle */

struct idle_arg {
	shmbus_wait_t wait[MAX_KIDS];
	double seconds;
};

#define IDLE_DISPATCH_SUBS 100

static int idle_handler(const shmbus_event_t *ev, void *arg)
{
	(void)ev;
	(*(uint64_t *)arg)++;
	return 0;
}

/* One dispatcher serving IDLE_DISPATCH_SUBS subscriptions, for a->seconds. */
static int idle_dispatch_child(struct ctl *ctl, int idx, const struct idle_arg *a)
{
	const char *what = "shmbus_open";
	shmbus_sub_t *subs[IDLE_DISPATCH_SUBS] = {0};
	shmbus_dispatcher_t *d = NULL;
	shmbus_bus_t *bus;
	uint64_t got = 0;
	int r = shmbus_open(g_bus_name, &(shmbus_open_opts_t){.label = "bench-idle-dispatch"}, &bus);
	if (r == 0 && (what = "shmbus_dispatcher_open", r = shmbus_dispatcher_open(NULL, &d)) == 0) {
		for (int i = 0; r == 0 && i < IDLE_DISPATCH_SUBS; i++) {
			what = "shmbus_subscribe";
			r = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "bench-idle"}, &subs[i]);
			if (r == 0) {
				what = "shmbus_dispatcher_add";
				r = shmbus_dispatcher_add(d, subs[i], &(shmbus_handler_opts_t){.handler = idle_handler, .arg = &got});
			}
		}
	}
	if (r < 0) {
		child_fail(ctl, what, r);
	} else {
		shmbus_dispatcher_run_once(d, 0); /* arm every wait before the clock starts */
		signal_ready(ctl);
		await_go(ctl);
		struct rusage ru0, ru1;
		uint64_t t0 = now_ns(), end = t0 + (uint64_t)(a->seconds * 1e9);
		getrusage(RUSAGE_SELF, &ru0);
		for (uint64_t t = t0; t < end; t = now_ns())
			shmbus_dispatcher_run_once(d, (int64_t)(end - t));
		getrusage(RUSAGE_SELF, &ru1);
		double cpu_us = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1e6 +
				(double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
				(double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1e6 +
				(double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
		ctl->out[idx].cpu_percent = cpu_us * 1e3 / (double)(now_ns() - t0) * 100.0;
		ctl->out[idx].count = got;
	}
	shmbus_dispatcher_close(d);
	for (int i = 0; i < IDLE_DISPATCH_SUBS; i++)
		shmbus_sub_close(subs[i]);
	shmbus_close(bus);
	return r < 0 ? -1 : 0;
}

/* Wait for events that never come; report own CPU time over wall time
 * (getrusage of this whole process, library threads included). */
static int idle_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct idle_arg *a = varg;
	const char *what;
	struct peer p;
	struct rusage ru0, ru1;
	int r;

	if (a->wait[idx] == WAIT_DISPATCH)
		return idle_dispatch_child(ctl, idx, a);
	r = peer_attach(&p, "bench-idle", &what);
	if (r == 0)
		r = peer_subscribe(&p, "bench-idle", NULL, a->wait[idx], &what);
	if (r < 0) {
		peer_close(&p);
		child_fail(ctl, what, r);
		return -1;
	}
	signal_ready(ctl);
	await_go(ctl);

	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(a->seconds * 1e9);
	getrusage(RUSAGE_SELF, &ru0);
	for (uint64_t t = t0; t < end; t = now_ns()) {
		const shmbus_event_t *ev;
		r = shmbus_wait(p.sub, (int64_t)(end - t), &ev);
		if (r == 1) {
			ctl->out[idx].count++;
			shmbus_release(p.sub, ev);
		} else if (r < 0 && r != -EINTR) {
			child_fail(ctl, "idle: shmbus_wait", r);
			break;
		}
	}
	getrusage(RUSAGE_SELF, &ru1);
	uint64_t wall = now_ns() - t0;
	double cpu_us = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1e6 +
			(double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
			(double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1e6 +
			(double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
	ctl->out[idx].cpu_percent = cpu_us * 1e3 / (double)wall * 100.0;
	peer_close(&p);
	return r < 0 && r != -EINTR ? -1 : 0;
}

/* Both idle subscribers wait in the same window (nothing is published, so
 * they cannot disturb each other); one result each. */
static int run_idle(struct result **res, int n)
{
	struct idle_arg a = {.seconds = g_opt.idle_seconds};
	shmbus_config_t cfg = {.max_subscribers = IDLE_DISPATCH_SUBS + 2}; /* and the two waiting children */
	struct session s;
	bool ok = true;

	for (int i = 0; i < n; i++)
		a.wait[i] = res[i]->wait;
	if (session_begin(&s, &cfg) < 0)
		return -1;
	for (int i = 0; ok && i < n; i++)
		ok = session_spawn(&s, idle_child, &a, g_opt.cpu_b) == 0;
	ok = ok && session_await_ready(&s, (uint32_t)n) == 0;
	if (ok)
		atomic_store_explicit(&s.ctl->go, 1, memory_order_release);
	ok = session_end(&s, ok) == 0;
	for (int i = 0; ok && i < n; i++) {
		if (s.ctl->out[i].count)
			warnx("idle: %s subscriber received %" PRIu64 " events on a silent bus", wait_name(a.wait[i]),
			      s.ctl->out[i].count);
		res[i]->per_run[res[i]->nruns++][ST_CPU] = s.ctl->out[i].cpu_percent;
	}
	session_unmap(&s);
	return ok ? 0 : -1;
}

/* --------------------------------------------------------------- cases */

/* What to measure: a case fills one result (two for idle) per run. */
/* ------------------------------------------------------- floor: ring */

/*
 * The throughput floor: the bytes shmbus moves per event, through a ring of
 * the same geometry, with no protocol at all. A single-producer,
 * single-consumer ring of the same slot count and slot size as the shmbus
 * run, in a MAP_SHARED mapping. The writer copies a record as long as the
 * shmbus event of the same run (a length word, the payload, filler: the
 * header, strings and padding of an event) and publishes its tail every
 * `batch` records; the reader sums the payload bytes as the shmbus
 * subscriber does and publishes its head after each run it read. What is
 * left between the two figures is shmbus's protocol: claiming, routing,
 * descriptors, commit marks, holder bits and their release.
 */
struct ring_ends {
	_Alignas(64) _Atomic uint64_t tail;
	_Alignas(64) _Atomic uint64_t head;
};

struct ring_arg {
	long warm, count;
	uint32_t slots, slot_size, record;
	size_t payload;
	struct ring_ends *ends;
	uint8_t *ring;
};

static uint8_t *ring_slot(const struct ring_arg *a, uint64_t i)
{
	return a->ring + (size_t)(i & (a->slots - 1)) * a->slot_size;
}

static int ring_reader_child(struct ctl *ctl, int idx, const void *varg)
{
	const struct ring_arg *a = varg;
	struct child_out *out = &ctl->out[idx];
	uint64_t head = 0, sum = 0, total = (uint64_t)(a->warm + a->count);
	signal_ready(ctl);
	while (head < total) {
		uint64_t tail = atomic_load_explicit(&a->ends->tail, memory_order_acquire);
		if (tail == head) {
			cpu_relax(); /* PDEATHSIG ends us if the writer dies */
			continue;
		}
		for (; head < tail; head++) {
			const uint8_t *slot = ring_slot(a, head);
			uint64_t len;
			memcpy(&len, slot, sizeof len);
			if (head == (uint64_t)a->warm)
				out->first_ns = now_ns();
			if (head >= (uint64_t)a->warm)
				sum += byte_sum(slot + 16, len);
		}
		atomic_store_explicit(&a->ends->head, head, memory_order_release);
	}
	out->last_ns = now_ns();
	out->count = (uint64_t)a->count;
	out->sum = sum;
	return 0;
}

/* Write records [from, to) in runs of batch, waiting for room. */
static int ring_write(struct session *s, const struct ring_arg *a, uint64_t from, uint64_t to, unsigned batch,
		      const uint8_t *buf)
{
	uint64_t head = atomic_load_explicit(&a->ends->head, memory_order_acquire);
	unsigned spins = 0;
	for (uint64_t i = from; i < to;) {
		uint64_t n = to - i < batch ? to - i : batch;
		while (i + n - head > a->slots) {
			cpu_relax();
			head = atomic_load_explicit(&a->ends->head, memory_order_acquire);
			if (++spins == 1u << 22) {
				spins = 0;
				if (!session_kids_alive(s))
					return -1;
			}
		}
		for (uint64_t k = i; k < i + n; k++) {
			uint8_t *slot = ring_slot(a, k);
			uint64_t len = a->payload;
			memcpy(slot, &len, sizeof len);
			memcpy(slot + 16, buf, a->payload);
			memset(slot + 16 + a->payload, 0, a->record - 16 - a->payload);
		}
		i += n;
		atomic_store_explicit(&a->ends->tail, i, memory_order_release);
	}
	return 0;
}

/* One run of the ring floor next to the shmbus run `like` (its event size). */
static int run_floor_ring(struct result *res, const struct result *like, long count)
{
	uint32_t slot_size = slot_size_for(res->payload);
	struct ring_arg a = {.warm = 0, .count = count, .slot_size = slot_size, .payload = res->payload};
	a.slots = slots_for_tp(slot_size);
	a.warm = a.slots;
	/* as long as the shmbus event; before any shmbus run, its fixed part */
	uint64_t record = like && like->event_bytes ? like->event_bytes : 16 + res->payload + 160;
	a.record = (uint32_t)(record < 16 + res->payload ? 16 + res->payload : record > slot_size ? slot_size : record);
	size_t ring_bytes = (size_t)a.slots * slot_size;
	void *mem = mmap(NULL, sizeof *a.ends + ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE,
			 -1, 0);
	uint8_t *buf = malloc(res->payload ? res->payload : 1);
	struct session s;
	if (mem == MAP_FAILED || !buf || session_begin(&s, NULL) < 0) {
		if (mem != MAP_FAILED)
			munmap(mem, sizeof *a.ends + ring_bytes);
		free(buf);
		return -1;
	}
	a.ends = mem;
	a.ring = (uint8_t *)mem + sizeof *a.ends;
	fill_payload(buf, res->payload);
	uint64_t warm = (uint64_t)a.warm, total = warm + (uint64_t)count;
	bool ok = session_spawn(&s, ring_reader_child, &a, g_opt.cpu_b) == 0 && session_await_ready(&s, 1) == 0 &&
		  ring_write(&s, &a, 0, warm, res->batch, buf) == 0;
	/* the timed stream starts on an empty ring, as shmbus's does */
	while (ok && atomic_load_explicit(&a.ends->head, memory_order_acquire) < warm)
		if (!session_kids_alive(&s))
			ok = false;
	ok = ok && ring_write(&s, &a, warm, total, res->batch, buf) == 0;
	ok = session_end(&s, ok) == 0;
	const struct child_out *out = &s.ctl->out[0];
	if (ok && out->sum != (uint64_t)count * byte_sum(buf, res->payload)) {
		warnx("floor-ring: reader summed %" PRIu64 ", expected %" PRIu64, out->sum,
		      (uint64_t)count * byte_sum(buf, res->payload));
		ok = false;
	}
	if (ok)
		record_rate(res, out, count, a.record);
	session_unmap(&s);
	munmap(mem, sizeof *a.ends + ring_bytes);
	free(buf);
	return ok ? 0 : -1;
}

enum case_kind { CASE_FLOOR_SPIN, CASE_FLOOR_FUTEX, CASE_FLOOR_RING, CASE_PINGPONG, CASE_THROUGHPUT, CASE_IDLE };

struct bench_case {
	enum case_kind kind;
	struct result *res[MAX_KIDS];
	int nres;
	long iters;
};

static struct bench_case g_cases[MAX_RESULTS];
static int g_ncases;

static void add_case(enum case_kind kind, long iters, struct result *r0, struct result *r1)
{
	struct bench_case *c = &g_cases[g_ncases++];
	*c = (struct bench_case){.kind = kind, .iters = iters, .res = {r0, r1}, .nres = r1 ? 2 : 1};
}

static long warmup_for(long iters)
{
	if (g_opt.warmup >= 0)
		return g_opt.warmup;
	long w = iters / 10;
	return w < 1000 ? 1000 : w > 20000 ? 20000 : w;
}

/* Events per throughput run: the same order of run time for both sizes. */
static long tp_default_iters(size_t payload)
{
	return payload <= 256 ? DEFAULT_TP_SMALL_ITERS : DEFAULT_TP_LARGE_ITERS;
}

static void plan_cases(void)
{
	const unsigned w = g_opt.waits;
	long rtt_iters = g_opt.iters ? g_opt.iters : DEFAULT_RTT_ITERS;

	/* The spin floor goes inside the shmbus spin ping-pong when both are
	 * measured (floor_block_after), on its own otherwise. */
	bool spin_pp = (g_opt.modes & MODE_PINGPONG) && (w & WAIT_BIT(SHMBUS_WAIT_SPIN));
	struct result *spin_floor = NULL;
	if (g_opt.modes & MODE_FLOOR_SPIN) {
		spin_floor = add_result("floor-spin", "pingpong", SHMBUS_WAIT_SPIN, 0, 0, HAS_RTT);
		if (!spin_pp)
			add_case(CASE_FLOOR_SPIN, rtt_iters, spin_floor, NULL);
	}
	if (g_opt.modes & MODE_FLOOR_FUTEX)
		add_case(CASE_FLOOR_FUTEX, rtt_iters,
			 add_result("floor-futex", "pingpong", SHMBUS_WAIT_BLOCK, 0, 0, HAS_RTT), NULL);
	if (g_opt.modes & MODE_PINGPONG) {
		static const shmbus_wait_t order[] = {SHMBUS_WAIT_SPIN, SHMBUS_WAIT_BLOCK, SHMBUS_WAIT_ADAPTIVE,
						      WAIT_DISPATCH};
		for (int i = 0; i < 4; i++) {
			if (!(w & WAIT_BIT(order[i])))
				continue;
			struct result *r = add_result("shmbus", "pingpong", order[i], g_opt.payload, 0,
						      HAS_RTT | HAS_PAYLOAD);
			add_case(CASE_PINGPONG, rtt_iters, r, order[i] == SHMBUS_WAIT_SPIN ? spin_floor : NULL);
		}
	}
	if (g_opt.modes & MODE_THROUGHPUT) {
		/* The subscriber spins unless one wait mode was asked for: the
		 * figure is the bus's capacity, not its wake-up cost. */
		shmbus_wait_t tw = SHMBUS_WAIT_SPIN;
		if (g_opt.wait_given && __builtin_popcount(w) == 1)
			tw = (shmbus_wait_t)__builtin_ctz(w);
		size_t sizes[2] = {32, 1024};
		int nsizes = 2;
		if (g_opt.payload_given) {
			sizes[0] = g_opt.payload;
			nsizes = 1;
		}
		for (int i = 0; i < nsizes; i++) {
			long n = g_opt.iters ? g_opt.iters : tp_default_iters(sizes[i]);
			unsigned batches[2] = {1, g_opt.batch};
			for (int b = 0; b < (g_opt.batch > 1 ? 2 : 1); b++) {
				struct result *sr = add_result("shmbus", "throughput", tw, sizes[i], batches[b],
							       HAS_TP | HAS_PAYLOAD | HAS_BATCH |
								       (g_opt.publishers > 1 ? HAS_PUBLISHERS : 0) |
								       (batches[b] > 1 ? HAS_SPLIT : 0));
				sr->publishers = g_opt.publishers;
				add_case(CASE_THROUGHPUT, n, sr, NULL);
				/* right after it in every run: the same geometry, no protocol */
				add_case(CASE_FLOOR_RING, n,
					 add_result("floor-ring", "throughput", SHMBUS_WAIT_SPIN, sizes[i], batches[b],
						    HAS_TP | HAS_PAYLOAD | HAS_BATCH),
					 sr);
			}
		}
	}
	if (g_opt.modes & MODE_IDLE) {
		struct result *r[2] = {NULL, NULL};
		int n = 0;
		if (!g_opt.wait_given || (w & WAIT_BIT(SHMBUS_WAIT_ADAPTIVE)))
			r[n++] = add_result("shmbus", "idle", SHMBUS_WAIT_ADAPTIVE, 0, 0, HAS_CPU);
		if (!g_opt.wait_given || (w & WAIT_BIT(SHMBUS_WAIT_BLOCK)))
			r[n++] = add_result("shmbus", "idle", SHMBUS_WAIT_BLOCK, 0, 0, HAS_CPU);
		if (n)
			add_case(CASE_IDLE, 0, r[0], r[1]);
		/* the dispatcher's idle cost is measured on its own, over
		 * IDLE_DISPATCH_SUBS subscriptions */
		if (!g_opt.wait_given || (w & WAIT_BIT(WAIT_DISPATCH)))
			add_case(CASE_IDLE, 0, add_result("shmbus", "idle", WAIT_DISPATCH, 0, 0, HAS_CPU), NULL);
	}
}

static int run_case(struct bench_case *c)
{
	switch (c->kind) {
	case CASE_FLOOR_SPIN:
		return run_floor(c->res[0], c->iters, warmup_for(c->iters), &floor_spin);
	case CASE_FLOOR_FUTEX:
		return run_floor(c->res[0], c->iters, warmup_for(c->iters), &floor_futex);
	case CASE_PINGPONG:
		return run_shmbus_pingpong(c->res[0], c->nres > 1 ? c->res[1] : NULL, c->iters, warmup_for(c->iters));
	case CASE_THROUGHPUT:
		return run_throughput(c->res[0], c->iters);
	case CASE_FLOOR_RING:
		return run_floor_ring(c->res[0], c->res[1], c->iters);
	case CASE_IDLE:
		return run_idle(c->res, c->nres);
	}
	return -1;
}

static void describe(const struct result *r, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s %s %s", r->system, r->bench, wait_name(r->wait));
	if (n > 0 && (size_t)n < len && (r->has & HAS_PAYLOAD))
		n += snprintf(buf + n, len - (size_t)n, " %zu B", r->payload);
	if (n > 0 && (size_t)n < len && (r->has & HAS_BATCH))
		n += snprintf(buf + n, len - (size_t)n, " batch %u", r->batch);
	if (n > 0 && (size_t)n < len && (r->has & HAS_PUBLISHERS))
		snprintf(buf + n, len - (size_t)n, " %u publishers", r->publishers);
}

/* Where a batched run's time went (v: its statistics, or their medians),
 * after `indent`, on two lines when `split`. */
static void print_split(FILE *f, const char *indent, const double *v, bool split)
{
	fprintf(f,
		"%ssubscriber %.0f ns/event (poll %.0f, release %.0f), idle %.1f %%;%s%s"
		"publisher %.0f ns/event in publish calls, %.0f waits for space\n",
		indent, v[ST_SUB_POLL] + v[ST_SUB_RELEASE], v[ST_SUB_POLL], v[ST_SUB_RELEASE], v[ST_SUB_IDLE],
		split ? "\n" : " ", split ? indent : "", v[ST_PUB_NS], v[ST_SPACE_WAITS]);
}

/* One line per finished run on stderr, so a long run shows progress. */
static void report_progress(const struct bench_case *c, int run)
{
	for (int i = 0; i < c->nres; i++) {
		const struct result *r = c->res[i];
		const double *v = r->per_run[r->nruns - 1];
		char name[96];
		describe(r, name, sizeof name);
		if (r->has & HAS_RTT)
			fprintf(stderr, "  run %d: %-34s p50 %8.0f ns  p99 %8.0f ns\n", run + 1, name, v[ST_P50],
				v[ST_P99]);
		else if (r->has & HAS_TP)
			fprintf(stderr, "  run %d: %-34s %8.2f M events/s  %8.1f MB/s\n", run + 1, name,
				v[ST_EPS] / 1e6, v[ST_MBPS]);
		else
			fprintf(stderr, "  run %d: %-34s cpu %.4f %%\n", run + 1, name, v[ST_CPU]);
		if ((r->has & HAS_SPLIT) && c->kind == CASE_THROUGHPUT)
			print_split(stderr, "         ", v, false);
	}
}

/* Runs interleave the cases: run 1 of everything, then run 2, ... */
static int run_all(void)
{
	for (int run = 0; run < g_opt.runs; run++) {
		for (int i = 0; i < g_ncases; i++) {
			if (run_case(&g_cases[i]) < 0) {
				char name[96];
				describe(g_cases[i].res[0], name, sizeof name);
				warnx("%s: run %d failed", name, run + 1);
				return -1;
			}
			if (!g_opt.json)
				report_progress(&g_cases[i], run);
		}
	}
	for (int i = 0; i < g_nresults; i++)
		compute_medians(&g_results[i]);
	return 0;
}

/* -------------------------------------------------------------- output */

static void print_json(const struct result *r)
{
	const double *m = r->median;
	printf("{\"system\": \"%s\", \"bench\": \"%s\", \"wait\": \"%s\"", r->system, r->bench, wait_name(r->wait));
	if (r->has & HAS_PAYLOAD)
		printf(", \"payload_bytes\": %zu", r->payload);
	if (r->has & HAS_BATCH)
		printf(", \"batch\": %u", r->batch);
	if (r->has & HAS_PUBLISHERS)
		printf(", \"publishers\": %u", r->publishers);
	if (g_opt.answer_work && strcmp(r->system, "shmbus") == 0 && strcmp(r->bench, "pingpong") == 0)
		printf(", \"answer_work\": %ld", g_opt.answer_work);
	if (r->has & HAS_RTT)
		printf(", \"rtt_p50_ns\": %.0f, \"rtt_p99_ns\": %.0f, \"rtt_p999_ns\": %.0f, \"rtt_max_ns\": %.0f",
		       m[ST_P50], m[ST_P99], m[ST_P999], m[ST_MAX]);
	if (r->has & HAS_TP)
		printf(", \"events_per_s\": %.0f, \"mb_per_s\": %.1f", m[ST_EPS], m[ST_MBPS]);
	if (r->has & HAS_CPU)
		printf(", \"cpu_percent\": %.4f", m[ST_CPU]);
	if (r->has & HAS_SPLIT)
		printf(", \"sub_poll_ns\": %.1f, \"sub_release_ns\": %.1f, \"sub_idle_percent\": %.1f, "
		       "\"pub_ns\": %.1f, \"space_waits\": %.0f",
		       m[ST_SUB_POLL], m[ST_SUB_RELEASE], m[ST_SUB_IDLE], m[ST_PUB_NS], m[ST_SPACE_WAITS]);
	printf("}\n");
}

static void print_row(const struct result *r)
{
	const double *m = r->median;
	char payload[16] = "-", batch[16] = "-";

	if (r->has & HAS_PAYLOAD)
		snprintf(payload, sizeof payload, "%zu", r->payload);
	if (r->has & HAS_BATCH)
		snprintf(batch, sizeof batch, "%u", r->batch);
	printf("%-12s %-11s %-9s %7s %5s", r->system, r->bench, wait_name(r->wait), payload, batch);
	if (r->has & HAS_RTT)
		printf(" %9.0f %9.0f %9.0f %10.0f %7.2f", m[ST_P50], m[ST_P99], m[ST_P999], m[ST_MAX], m[ST_SLEEPS]);
	else
		printf(" %9s %9s %9s %10s %7s", "", "", "", "", "");
	if (r->has & HAS_TP)
		printf(" %9.2f %9.1f", m[ST_EPS] / 1e6, m[ST_MBPS]);
	else if (r->has & HAS_CPU)
		printf(" %9s %9s %8.4f", "", "", m[ST_CPU]);
	printf("\n");
}

/* A ratio of p50s against its target, when both sides were measured;
 * `why_not` marks a comparison the bench found invalid. */
static void print_ratio(const char *label, const struct result *num, const struct result *den, double target,
			const char *why_not)
{
	if (!num || !den)
		return;
	double q = num->median[ST_P50] / den->median[ST_P50];
	printf("  %-44s %8.2f   (target <= %.1f)  %s\n", label, q, target,
	       why_not ? why_not : q <= target ? "ok" : "MISSED");
}

static void print_targets(void)
{
	const size_t pl = g_opt.payload;
	struct result *sspin = find_result("shmbus", "pingpong", SHMBUS_WAIT_SPIN, pl, 0);
	struct result *sblock = find_result("shmbus", "pingpong", SHMBUS_WAIT_BLOCK, pl, 0);
	struct result *sadapt = find_result("shmbus", "pingpong", SHMBUS_WAIT_ADAPTIVE, pl, 0);
	struct result *sdisp = find_result("shmbus", "pingpong", WAIT_DISPATCH, pl, 0);
	struct result *fspin = find_result("floor-spin", "pingpong", SHMBUS_WAIT_SPIN, 0, 0);
	struct result *ffutex = find_result("floor-futex", "pingpong", SHMBUS_WAIT_BLOCK, 0, 0);

	printf("\ntargets (RTT ratios are of the medians of per-run p50s):\n");
	if (g_opt.answer_work)
		printf("  (with --answer-work: shmbus's round trips include B's added work, so these are not the\n"
		       "  targets' figures)\n");
	/* Block mode must sleep at once, as the futex floor does (two sleeps
	 * per round trip); fewer sleeps mean it spun first, and its p50 then
	 * measures spinning, not waking: no valid comparison with the floor. */
	bool block_spun = sblock && ffutex && sblock->median[ST_SLEEPS] < 0.75 * ffutex->median[ST_SLEEPS];

	print_ratio("shmbus spin p50 / floor-spin p50", sspin, fspin, 2.5, NULL);
	print_ratio("shmbus block p50 / floor-futex p50", sblock, ffutex, 1.2,
		    block_spun ? "NOT COMPARABLE (block mode spins; see below)" : NULL);
	if (block_spun)
		printf("  %-44s %8.2f   (floor-futex %.2f): block mode does not sleep at once\n",
		       "shmbus block sleeps per round trip", sblock->median[ST_SLEEPS], ffutex->median[ST_SLEEPS]);
	print_ratio("shmbus adaptive p50 / shmbus spin p50", sadapt, sspin, 1.5, NULL);
	print_ratio("shmbus dispatch p50 / shmbus block p50", sdisp, sblock, 1.3, NULL);

	for (int i = 0; i < g_nresults; i++) {
		const struct result *r = &g_results[i];
		if (strcmp(r->system, "shmbus") == 0 && strcmp(r->bench, "throughput") == 0 && r->payload == 32 &&
		    r->batch > 1) {
			if (r->has & HAS_PUBLISHERS) /* the target is one publisher's */
				printf("  %-44s %8.2f M (%u publishers; the target is for one)\n",
				       "shmbus 32 B batched events/s", r->median[ST_EPS] / 1e6, r->publishers);
			else
				printf("  %-44s %8.2f M (target >= 15 M events/s)  %s\n", "shmbus 32 B batched events/s",
				       r->median[ST_EPS] / 1e6, r->median[ST_EPS] >= 15e6 ? "ok" : "MISSED");
			const struct result *f = find_result("floor-ring", "throughput", SHMBUS_WAIT_SPIN, 32, r->batch);
			if (f)
				printf("  %-44s %8.2f   (floor-ring %.2f M events/s of %u-byte records)\n",
				       "shmbus 32 B batched / floor-ring", r->median[ST_EPS] / f->median[ST_EPS],
				       f->median[ST_EPS] / 1e6, f->event_bytes);
			if (r->has & HAS_SPLIT) {
				printf("    where it went (medians; waits for space: per run):\n");
				print_split(stdout, "    ", r->median, true);
			}
		}
		if (strcmp(r->bench, "idle") == 0) {
			char label[64];
			if (r->wait == WAIT_DISPATCH)
				snprintf(label, sizeof label, "idle dispatcher (%d subs) cpu %%", IDLE_DISPATCH_SUBS);
			else
				snprintf(label, sizeof label, "idle %s subscriber cpu %%", wait_name(r->wait));
			printf("  %-44s %8.4f   (target < 0.1 %%)  %s\n", label, r->median[ST_CPU],
			       r->median[ST_CPU] < 0.1 ? "ok" : "MISSED");
		}
	}
}

static void print_human(void)
{
	printf("\nshmbus-bench: A on CPU %d, B on CPU %d; every figure is the median over %d run%s of that run's\n"
	       "statistic (median of the per-run p50s, p99s, ...); RTT in ns, throughput in M events/s and\n"
	       "MB/s of payload (10^6 bytes), idle cpu as %% of one CPU. RTTs include one timestamp\n"
	       "read (%s); sleeps = voluntary context switches of both processes per round trip.\n\n",
	       g_opt.cpu_a, g_opt.cpu_b, g_opt.runs, g_opt.runs == 1 ? "" : "s", timer_name());
	if (g_opt.answer_work)
		printf("B answers each shmbus ping after %ld rounds of work (--answer-work, about 20 instructions\n"
		       "a round); the floors are as always.\n\n",
		       g_opt.answer_work);
	printf("%-12s %-11s %-9s %7s %5s %9s %9s %9s %10s %7s %9s %9s %8s\n", "system", "bench", "wait", "payload",
	       "batch", "p50", "p99", "p99.9", "max", "sleeps", "Mev/s", "MB/s", "cpu%");
	for (int i = 0; i < g_nresults; i++)
		print_row(&g_results[i]);
	print_targets();
}

/* ------------------------------------------------------------ arguments */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [MODE] [--json] [--runs N] [--iters N] [--wait spin|block|adaptive|dispatch|all]\n"
		"                    [--payload B] [--batch N] [--publishers N] [--warmup N] [--idle-seconds S]\n"
		"                    [--cpu-a N --cpu-b N] [--no-low-latency] [--low-latency] [--cached-batches]\n"
		"                    [--answer-work N]\n"
		"MODE: all (default), pingpong (shmbus and both floors), floors, floor-spin,\n"
		"      floor-futex, throughput, idle\n"
		"--iters N sets the round trips of each ping-pong run (default %ld) and the events\n"
		"of each throughput run (default %ld for small payloads, %ld above 256 B).\n"
		"--publishers N (1-4): the throughput runs' events come from N processes (the\n"
		"pinned one and N - 1 the scheduler places), to one subscriber.\n"
		"Ping-pong publishers use SHMBUS_PUB_LOW_LATENCY (--no-low-latency: not); throughput\n"
		"publishers do not (--low-latency: they do too, to see what it costs a stream).\n"
		"--cached-batches: throughput publishers never stream their batches\n"
		"(SHMBUS_PUB_CACHED_BATCHES), to compare with the default in one build.\n"
		"--answer-work N: in the spin, block and adaptive ping-pongs B runs N rounds of work\n"
		"in its first-level cache (about 20 instructions each) before each answer; the\n"
		"slope of the round trip against N tells how fast work runs where the CPUs are.\n"
		"The durable log: " PROG " record|replay|get [--events N] [--runs N] [--json]\n"
		"(record: publisher events/s without a recorder and with one at sync none and\n"
		"batch, per run on a fresh bus, and the medians over --runs).\n",
		DEFAULT_RTT_ITERS, DEFAULT_TP_SMALL_ITERS, DEFAULT_TP_LARGE_ITERS);
}

static void usage_error(const char *fmt, const char *arg)
{
	fputs(PROG ": ", stderr);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	usage(stderr);
	exit(2);
}

static long parse_long(const char *opt, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = s ? strtol(s, &end, 10) : 0;
	if (!s || errno || end == s || *end || v < min || v > max)
		usage_error("bad value for %s", opt);
	return v;
}

static unsigned parse_mode(const char *s)
{
	static const struct {
		const char *name;
		unsigned modes;
	} modes[] = {
		{"all", MODE_ALL},
		{"pingpong", MODE_PINGPONG | MODE_FLOOR_SPIN | MODE_FLOOR_FUTEX},
		{"floors", MODE_FLOOR_SPIN | MODE_FLOOR_FUTEX},
		{"floor-spin", MODE_FLOOR_SPIN},
		{"floor-futex", MODE_FLOOR_FUTEX},
		{"throughput", MODE_THROUGHPUT},
		{"idle", MODE_IDLE},
	};
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		if (strcmp(s, modes[i].name) == 0)
			return modes[i].modes;
	usage_error("unknown mode '%s'", s);
	return 0;
}

static unsigned parse_wait(const char *s)
{
	if (s && strcmp(s, "spin") == 0)
		return WAIT_BIT(SHMBUS_WAIT_SPIN);
	if (s && strcmp(s, "block") == 0)
		return WAIT_BIT(SHMBUS_WAIT_BLOCK);
	if (s && strcmp(s, "adaptive") == 0)
		return WAIT_BIT(SHMBUS_WAIT_ADAPTIVE);
	if (s && strcmp(s, "dispatch") == 0)
		return WAIT_BIT(WAIT_DISPATCH);
	if (s && strcmp(s, "all") == 0)
		return WAIT_ALL;
	usage_error("bad value for --wait: '%s'", s ? s : "");
	return 0;
}

static void parse_args(int argc, char **argv)
{
	bool mode_seen = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			g_opt.json = true;
			continue;
		}
		if (strcmp(a, "--no-low-latency") == 0) {
			g_opt.plain_publish = true;
			continue;
		}
		if (strcmp(a, "--low-latency") == 0) {
			g_opt.stream_low_latency = true;
			continue;
		}
		if (strcmp(a, "--cached-batches") == 0) {
			g_opt.cached_batches = true;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (a[0] != '-') {
			if (mode_seen)
				usage_error("more than one mode: '%s'", a);
			g_opt.modes = parse_mode(a);
			mode_seen = true;
			continue;
		}
		i++; /* every other option takes a value */
		if (strcmp(a, "--runs") == 0) {
			g_opt.runs = (int)parse_long(a, v, 1, MAX_RUNS);
		} else if (strcmp(a, "--iters") == 0) {
			g_opt.iters = parse_long(a, v, 2, 1000000000L);
		} else if (strcmp(a, "--warmup") == 0) {
			g_opt.warmup = parse_long(a, v, 0, 100000000L);
		} else if (strcmp(a, "--wait") == 0) {
			g_opt.waits = parse_wait(v);
			g_opt.wait_given = true;
		} else if (strcmp(a, "--payload") == 0) {
			g_opt.payload = (size_t)parse_long(a, v, 0, 1L << 24);
			g_opt.payload_given = true;
		} else if (strcmp(a, "--batch") == 0) {
			g_opt.batch = (unsigned)parse_long(a, v, 1, MAX_BATCH);
		} else if (strcmp(a, "--publishers") == 0) {
			g_opt.publishers = (unsigned)parse_long(a, v, 1, MAX_PUBLISHERS);
		} else if (strcmp(a, "--idle-seconds") == 0) {
			g_opt.idle_seconds = (double)parse_long(a, v, 1, 3600);
		} else if (strcmp(a, "--answer-work") == 0) {
			g_opt.answer_work = parse_long(a, v, 0, 1000000L);
		} else if (strcmp(a, "--cpu-a") == 0) {
			g_opt.cpu_a = (int)parse_long(a, v, 0, CPU_SETSIZE - 1);
		} else if (strcmp(a, "--cpu-b") == 0) {
			g_opt.cpu_b = (int)parse_long(a, v, 0, CPU_SETSIZE - 1);
		} else {
			usage_error("unknown option '%s'", a);
		}
	}
}

/*
 * Pin A (this process) now and check B's CPU is usable; children pin
 * themselves after fork. Without two usable CPUs the figures still come,
 * unpinned, with a warning: spin-mode figures are then meaningless.
 */
static void setup_pinning(void)
{
	cpu_set_t allowed;
	int r;

	if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 &&
	    (!CPU_ISSET(g_opt.cpu_a, &allowed) || !CPU_ISSET(g_opt.cpu_b, &allowed) || g_opt.cpu_a == g_opt.cpu_b)) {
		warnx("CPUs %d and %d are not two distinct usable CPUs (%d usable); running unpinned", g_opt.cpu_a,
		      g_opt.cpu_b, CPU_COUNT(&allowed));
		g_opt.cpu_a = g_opt.cpu_b = -1;
		return;
	}
	if ((r = pin_to_cpu(g_opt.cpu_a)) < 0) {
		warnx("pinning to CPU %d failed: %s; running unpinned", g_opt.cpu_a, strerror(-r));
		g_opt.cpu_a = g_opt.cpu_b = -1;
	}
}

int main(int argc, char **argv)
{
	/* the durable log's modes live in bench_log.c */
	if (argc > 1 && (!strcmp(argv[1], "record") || !strcmp(argv[1], "replay") || !strcmp(argv[1], "get")))
		return bench_log_main(argc, argv);
	parse_args(argc, argv);
	/* With ping-pong restricted to some wait modes, only their floors. */
	if ((g_opt.modes & MODE_PINGPONG) && g_opt.wait_given) {
		if (!(g_opt.waits & (WAIT_BIT(SHMBUS_WAIT_SPIN) | WAIT_BIT(SHMBUS_WAIT_ADAPTIVE))))
			g_opt.modes &= ~(unsigned)MODE_FLOOR_SPIN;
		if (!(g_opt.waits & (WAIT_BIT(SHMBUS_WAIT_BLOCK) | WAIT_BIT(WAIT_DISPATCH))))
			g_opt.modes &= ~(unsigned)MODE_FLOOR_FUTEX;
	}
	install_cleanup();
	setup_pinning();
	calibrate_ticks();
	plan_cases();
	if (g_ncases == 0) {
		warnx("nothing to measure");
		return 2;
	}
	if (!g_opt.json)
		fprintf(stderr, PROG ": %d case%s x %d run%s\n", g_ncases, g_ncases == 1 ? "" : "s", g_opt.runs,
			g_opt.runs == 1 ? "" : "s");
	if (run_all() < 0)
		return 1; /* atexit kills children and unlinks the bus */
	if (g_opt.json)
		for (int i = 0; i < g_nresults; i++)
			print_json(&g_results[i]);
	else
		print_human();
	return 0;
}
