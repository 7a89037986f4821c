/*
 * route.c - publisher-side routing: which subscriptions get an event.
 *
 * Candidates come from two bitmaps in the header (active subscriptions, and
 * those whose filter can match this type), so a subscription that cannot
 * match costs a publisher one AND of four words. Each candidate's filter
 * tree is evaluated against the hashes precomputed in the event header.
 * Everything read from the shared filter is bounds-checked: a corrupt filter
 * makes a subscription match nothing, never a crash.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "crash_point.h"
#include "futex.h"

/* Node visits allowed per evaluation: a sane tree of 16 nodes visits each
 * once; a hostile one sharing children could otherwise cost 2^16. */
#define MAX_VISITS 64

struct eval {
	unsigned visits;
	shmbus_bus_t *bus;
	struct route_ctx *ctx;
	uint32_t sub;
	const struct seg_filter *f;
	const struct seg_event *ev;
	const struct custom_pred *preds;
	struct pattern_cache *pc;
};

static void pattern_cache_reset(struct pattern_cache *pc)
{
	for (unsigned i = 0; i < SEG_FILTER_NODES; i++) {
		if (pc->compiled[i] && pc->ok[i])
			regfree(&pc->re[i]);
		pc->compiled[i] = false;
	}
	memset(pc->memo, 0, sizeof pc->memo);
}

void route_ctx_free(struct route_ctx *ctx)
{
	for (unsigned i = 0; i < SEG_MAX_SUBSCRIBERS; i++) {
		if (!ctx->cache[i])
			continue;
		pattern_cache_reset(ctx->cache[i]);
		free(ctx->cache[i]);
		ctx->cache[i] = NULL;
	}
}

/* The cache entry of this subscription, valid for the current routing
 * epoch (any subscribe, unsubscribe or filter change bumps it). */
static struct pattern_cache *pattern_cache_get(struct eval *e)
{
	struct pattern_cache *pc = e->ctx->cache[e->sub];
	if (!pc) {
		pc = calloc(1, sizeof *pc);
		if (!pc)
			return NULL;
		e->ctx->cache[e->sub] = pc;
	}
	uint64_t epoch = at_load_acquire_u64(&e->bus->hdr->route_epoch);
	uint64_t gen = at_load_acquire_u64(&e->bus->subs[e->sub].generation);
	if (pc->epoch != epoch || pc->sub_gen != gen) {
		pattern_cache_reset(pc);
		pc->epoch = epoch;
		pc->sub_gen = gen;
	}
	return pc;
}

static bool pattern_match(struct eval *e, unsigned node, uint32_t text_off)
{
	if (!e->pc && !(e->pc = pattern_cache_get(e))) {
		e->ctx->unsure = true;
		return false;
	}
	struct pattern_cache *pc = e->pc;
	unsigned slot = (unsigned)(e->ev->name_hash % PATTERN_MEMO);
	uint32_t bit = 1u << node;
	if (pc->memo[slot].name_hash == e->ev->name_hash && (pc->memo[slot].node_mask & bit))
		return pc->memo[slot].result & bit;
	if (!pc->compiled[node]) {
		const struct seg_filter *f = e->f;
		if (text_off >= SEG_FILTER_TEXT || !memchr(f->text + text_off, '\0', SEG_FILTER_TEXT - text_off)) {
			pc->ok[node] = false;
		} else {
			char re_text[SEG_FILTER_TEXT];
			strcpy(re_text, f->text + text_off);
			pc->ok[node] = regcomp(&pc->re[node], re_text, REG_EXTENDED | REG_NOSUB) == 0;
		}
		pc->compiled[node] = true;
	}
	bool m = pc->ok[node] && regexec(&pc->re[node], seg_event_string(e->ev, SEG_STR_NAME), 0, NULL, 0) == 0;
	if (pc->memo[slot].name_hash != e->ev->name_hash) {
		pc->memo[slot].name_hash = e->ev->name_hash;
		pc->memo[slot].node_mask = 0;
		pc->memo[slot].result = 0;
	}
	pc->memo[slot].node_mask |= bit;
	if (m)
		pc->memo[slot].result |= bit;
	return m;
}

static bool hash_in(const struct seg_filter *f, const struct seg_filter_node *n, uint64_t h)
{
	if ((uint32_t)n->first + n->count > SEG_FILTER_HASHES)
		return false;
	for (unsigned i = 0; i < n->count; i++)
		if (f->hashes[n->first + i] == h)
			return true;
	return false;
}

static bool eval_node(struct eval *e, unsigned idx, unsigned depth)
{
	const struct seg_filter *f = e->f;
	if (idx >= SEG_FILTER_NODES || depth > SEG_FILTER_DEPTH_MAX || ++e->visits > MAX_VISITS)
		return false;
	const struct seg_filter_node *n = &f->nodes[idx];
	switch (n->kind) {
	case SEG_F_ALL:
	case SEG_F_ANY: {
		if ((uint32_t)n->first + n->count > SEG_FILTER_NODES)
			return false;
		bool all = n->kind == SEG_F_ALL;
		for (unsigned i = 0; i < n->count; i++) {
			if (n->first + i <= idx)
				return false; /* children come after their parent */
			bool m = eval_node(e, n->first + i, depth + 1);
			if (m != all)
				return m;
		}
		return all;
	}
	case SEG_F_TYPES:
		return (n->arg >> e->ev->type) & 1;
	case SEG_F_NAMES:
		return hash_in(f, n, e->ev->name_hash);
	case SEG_F_SOURCES:
		return hash_in(f, n, e->ev->source_hash);
	case SEG_F_TARGETS:
		return e->ev->target_hash && hash_in(f, n, e->ev->target_hash);
	case SEG_F_MIN_PRIO:
		return e->ev->priority >= n->arg;
	case SEG_F_PATTERN:
		return pattern_match(e, idx, n->arg);
	case SEG_F_CUSTOM:
		if (!e->preds)
			return true;
		if (n->arg >= SEG_FILTER_NODES || !e->preds[n->arg].fn)
			return false;
		return e->preds[n->arg].fn((const shmbus_event_t *)(const void *)e->ev, e->preds[n->arg].arg);
	default:
		return false;
	}
}

/* The filter walk of match_filter, for trees it cannot decide at once.
 * Out of line: inlined, its set-up crowds the registers of every walk. */
static __attribute__((noinline)) bool match_walk(shmbus_bus_t *bus, struct route_ctx *ctx, uint32_t sub_index,
						 const struct seg_filter *f, const struct seg_event *ev,
						 const struct custom_pred *preds)
{
	if (f->node_count > SEG_FILTER_NODES)
		return false;
	struct eval e = {.bus = bus, .ctx = ctx, .sub = sub_index, .f = f, .ev = ev, .preds = preds};
	return eval_node(&e, f->root, 0);
}

/* route_match. Inlined into the publisher's walks: no filter, or one set
 * or one test (the commonest filters), is decided without a call. */
static inline __attribute__((always_inline)) bool match_filter(shmbus_bus_t *bus, struct route_ctx *ctx,
								uint32_t sub_index, const struct seg_filter *f,
								const struct seg_event *ev,
								const struct custom_pred *preds)
{
	uint16_t count = f->node_count;
	if (count == 0)
		return true; /* no filter: everything */
	/* A filter of one set or one test needs no walk. */
	if (count == 1 && f->root == 0) {
		const struct seg_filter_node *n = &f->nodes[0];
		switch (n->kind) {
		case SEG_F_TYPES:
			return (n->arg >> ev->type) & 1;
		case SEG_F_NAMES:
			return hash_in(f, n, ev->name_hash);
		case SEG_F_SOURCES:
			return hash_in(f, n, ev->source_hash);
		case SEG_F_TARGETS:
			return ev->target_hash && hash_in(f, n, ev->target_hash);
		case SEG_F_MIN_PRIO:
			return ev->priority >= n->arg;
		default:
			break;
		}
	}
	return match_walk(bus, ctx, sub_index, f, ev, preds);
}

bool route_match(shmbus_bus_t *bus, struct route_ctx *ctx, uint32_t sub_index, const struct seg_filter *f,
		 const struct seg_event *ev, const struct custom_pred *preds)
{
	return match_filter(bus, ctx, sub_index, f, ev, preds);
}

static unsigned event_class(const struct seg_event *ev)
{
	return ev->priority >= SHMBUS_PRIORITY_HIGH ? SEG_QUEUE_URGENT : SEG_QUEUE_NORMAL;
}

/* Call on_match(ctx, idx, w, bit) for every subscription ev matches
 * (active, not paused, filter true), in index order. Always inlined with
 * a constant on_match, so each caller gets its own loop with the action
 * in it (a single publish pushes as it matches, on a round trip's path). */
static inline __attribute__((always_inline)) void
walk_matches(shmbus_pub_t *pub, const struct seg_event *ev, void (*on_match)(void *, uint32_t, unsigned, uint64_t),
	     void *ctx)
{
	shmbus_bus_t *bus = pub->bus;
	struct seg_header *h = bus->hdr;
	uint64_t *type_mask = h->type_mask[ev->type - 1];
	unsigned words = (bus->max_subs + 63) / 64; /* the masks' used words */
	for (unsigned w = 0; w < words; w++) {
		uint64_t cand = at_load_acquire_u64(&h->active_mask[w]) & at_load_acquire_u64(&type_mask[w]);
		while (cand) {
			unsigned bit = (unsigned)__builtin_ctzll(cand);
			cand &= cand - 1;
			uint32_t idx = w * 64 + bit;
			if (idx >= bus->max_subs)
				break;
			struct seg_sub *s = bus_sub(bus, idx);
			if ((at_load_acquire_u32(&s->flags) & SEG_SUB_PAUSED) ||
			    at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
				continue;
			if (match_filter(bus, &pub->route, idx, &s->filter, ev, NULL))
				on_match(ctx, idx, w, 1ull << bit);
		}
	}
}

static inline __attribute__((always_inline)) void mark_match(void *ctx, uint32_t idx, unsigned w, uint64_t bit)
{
	(void)idx;
	((uint64_t *)ctx)[w] |= bit;
}

/* Which subscriptions it->ev matches: their bits in it->hold. */
static void match_event(shmbus_pub_t *pub, struct route_item *it)
{
	for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++)
		it->hold[w] = 0;
	walk_matches(pub, it->ev, mark_match, it->hold);
	it->matched = (it->hold[0] | it->hold[1] | it->hold[2] | it->hold[3]) != 0;
	it->cls = (uint8_t)event_class(it->ev);
}

/* Push the descriptors of the items (at most QUEUE_PUSH_MAX) subscription
 * idx holds in class cls as one run, in order; what does not fit is
 * dropped from hold[] and counted. Returns whether any was pushed. */
static bool push_class(shmbus_pub_t *pub, struct route_item *items, size_t n, uint32_t idx, unsigned cls)
{
	shmbus_bus_t *bus = pub->bus;
	unsigned w = idx / 64;
	uint64_t bit = 1ull << (idx % 64);
	uint64_t descs[QUEUE_PUSH_MAX];
	uint32_t k = 0;
	for (size_t i = 0; i < n; i++) {
		/* written whatever the test says, kept only if it holds: no
		 * branch to mispredict per item */
		descs[k] = items[i].seq | SEG_DESC_HOLDS_REF;
		k += ((items[i].hold[w] & bit) != 0) & (items[i].cls == cls);
	}
	if (k == 0)
		return false;
	struct queue_view q = bus_class_queue(bus, idx, cls);
	uint32_t pushed = queue_push_many(&q, bus->member, descs, k);
	/* the items of the descriptors that did not fit (rare): found again */
	for (size_t i = 0, j = 0; pushed < k && i < n; i++) {
		struct route_item *it = &items[i];
		if (!(it->hold[w] & bit) || it->cls != cls || j++ < pushed)
			continue;
		it->hold[w] &= ~bit;
		at_count_u64(&bus_sub(bus, idx)->dropped_full, 1);
		catchup_note_drop(bus, idx, it->seq, it->seq + 1, 1);
	}
	return pushed > 0;
}

struct push_one {
	shmbus_bus_t *bus;
	uint64_t seq, *hold, *wake, *match;
	unsigned cls, matched;
};

/* The descriptor of seq found subscription idx's queue full: dropped,
 * and counted. Out of line: the push loop then calls nothing normally. */
static __attribute__((noinline, cold)) void push_dropped(shmbus_bus_t *bus, uint32_t idx, uint64_t seq)
{
	at_count_u64(&bus_sub(bus, idx)->dropped_full, 1);
	catchup_note_drop(bus, idx, seq, seq + 1, 1);
}

static inline __attribute__((always_inline)) void push_match(void *ctx, uint32_t idx, unsigned w, uint64_t bit)
{
	struct push_one *p = ctx;
	shmbus_bus_t *bus = p->bus;
	p->matched++;
	p->match[w] |= bit;
	/* the ends and cells, not a whole view: a push records no intent, and
	 * the view's generation is an atomic load the compiler must keep */
	if (queue_push_cells(&bus_sub(bus, idx)->ends[p->cls], bus_class_cells(bus, idx, p->cls), bus->nslots,
			     bus->member, p->seq | SEG_DESC_HOLDS_REF) == 0) {
		p->hold[w] |= bit;
		p->wake[w] |= bit;
	} else {
		push_dropped(bus, idx, p->seq);
	}
	CRASH_POINT("route.sub_pushed");
}

static bool memo_holds(const struct route_memo *m, uint64_t epoch, const struct seg_event *ev)
{
	return m->valid && m->epoch == epoch && m->type == ev->type && m->priority == ev->priority &&
	       m->name_hash == ev->name_hash && m->source_hash == ev->source_hash && m->target_hash == ev->target_hash;
}

unsigned route_event(shmbus_pub_t *pub, const struct seg_event *ev, uint64_t seq, uint64_t *hold, uint64_t *wake)
{
	shmbus_bus_t *bus = pub->bus;
	struct route_memo *m = &pub->memo;
	/* the walk collects its matches straight into the memo (on a memo
	 * hit, push_match sets bits that are set already) */
	struct push_one p = {.bus = bus, .seq = seq, .hold = hold, .wake = wake, .match = m->match, .cls = event_class(ev)};
	/* Read inside the routing pass (after routing_begin's fence), as the
	 * walk reads the masks: a change that bumps it later waits for this
	 * pass before it takes effect (sub_wait_routing_grace), as it would
	 * for a walk. */
	uint64_t epoch = at_load_acquire_u64(&bus->hdr->route_epoch);
	if (memo_holds(m, epoch, ev)) {
		/* what the walk would find: push in the walk's order */
		unsigned words = (bus->max_subs + 63) / 64; /* no bit beyond */
		for (unsigned w = 0; w < words; w++)
			for (uint64_t b = m->match[w]; b; b &= b - 1)
				push_match(&p, w * 64 + (unsigned)__builtin_ctzll(b), w, b & -b);
		return p.matched;
	}
	memset(m->match, 0, sizeof m->match);
	pub->route.unsure = false;
	walk_matches(pub, ev, push_match, &p);
	/* Not remembered under an odd epoch (a change is under way, or its
	 * maker died in it: what the walk saw may be half of it), nor when a
	 * pattern could not be evaluated this time. */
	m->valid = !(epoch & 1) && !pub->route.unsure;
	m->epoch = epoch;
	m->type = ev->type;
	m->priority = ev->priority;
	m->name_hash = ev->name_hash;
	m->source_hash = ev->source_hash;
	m->target_hash = ev->target_hash;
	return p.matched;
}

void route_events(shmbus_pub_t *pub, struct route_item *items, size_t n, uint64_t *wake)
{
	assert(n <= QUEUE_PUSH_MAX); /* one window of publish_many */
	uint64_t subs[SEG_HOLDER_WORDS] = {0};
	bool urgent = false, normal = false;
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && items[i].like_prev) {
			/* what a filter reads is the previous event's, and so is
			 * what the match adds to subs and the classes */
			memcpy(items[i].hold, items[i - 1].hold, sizeof items[i].hold);
			items[i].matched = items[i - 1].matched;
			items[i].cls = items[i - 1].cls;
			continue;
		}
		match_event(pub, &items[i]);
		for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++)
			subs[w] |= items[i].hold[w];
		if (items[i].matched)
			*(items[i].cls == SEG_QUEUE_URGENT ? &urgent : &normal) = true;
	}
	for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++) {
		for (uint64_t m = subs[w]; m; m &= m - 1) {
			uint32_t idx = w * 64 + (unsigned)__builtin_ctzll(m);
			bool pushed = false;
			if (urgent)
				pushed |= push_class(pub, items, n, idx, SEG_QUEUE_URGENT);
			if (normal)
				pushed |= push_class(pub, items, n, idx, SEG_QUEUE_NORMAL);
			if (pushed)
				wake[w] |= 1ull << (idx % 64);
			CRASH_POINT("route.sub_run_pushed");
		}
	}
}

void route_wake(shmbus_bus_t *bus, uint32_t idx)
{
	struct seg_sub *s = bus_sub(bus, idx);
	at_fetch_add_u32(&s->wake_futex, 1);
	futex_wake_shared(&s->wake_futex, 1 << 30);
}

/* route_wake_set once some subscription of the bitmap announced it sleeps. */
static __attribute__((noinline)) void wake_sleepers(shmbus_bus_t *bus, const uint64_t *wake, unsigned words)
{
	for (unsigned w = 0; w < words; w++) {
		for (uint64_t m = wake[w]; m; m &= m - 1) {
			uint32_t idx = w * 64 + (unsigned)__builtin_ctzll(m);
			struct seg_sub *s = bus_sub(bus, idx);
			if (at_load_relaxed_u32(&s->sleepers) && at_exchange_u32(&s->sleepers, 0))
				route_wake(bus, idx);
		}
	}
}

void route_wake_set(shmbus_bus_t *bus, const uint64_t *wake)
{
	/* Nobody sleeps, mostly: a first look that calls nothing (so it
	 * saves no registers) finds that out in a few instructions. */
	unsigned words = (bus->max_subs + 63) / 64; /* no bit beyond */
	for (unsigned w = 0; w < words; w++)
		for (uint64_t m = wake[w]; m; m &= m - 1)
			if (at_load_relaxed_u32(&bus_sub(bus, w * 64 + (unsigned)__builtin_ctzll(m))->sleepers)) {
				wake_sleepers(bus, wake, words);
				return;
			}
}
