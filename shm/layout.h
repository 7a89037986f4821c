/*
 * layout.h - every byte of a shmbus segment, and nothing else.
 *
 * A bus is one POSIX shm object, /shmbus.NAME, laid out as consecutive
 * regions. Each region has one descriptor struct here, a byte diagram in its
 * comment and a _Static_assert on every offset, so a change of layout cannot
 * slip through unnoticed; docs/FORMAT.md is the prose version of this file.
 *
 *   offset            region                 size
 *   0                 seg_header             4096
 *   members_off       seg_member[M]          M * 256
 *   pubs_off          seg_pub[P]             P * 256          (P == M)
 *   subs_off          seg_sub[S]             S * SEG_SUB_SIZE
 *   cells_off         queue cells            S * 2 * Q * 16   (Q == slot_count;
 *                                                              the redelivery
 *                                                              queue's cells are
 *                                                              in its seg_sub)
 *   slot_ctl_off      seg_slot_ctl[N]        N * 64           (one line per slot)
 *   data_off          event slots            N * slot_size    (page aligned;
 *                                                              mapped twice)
 *
 * All integers are little endian (the segment never leaves the host).
 * No policy lives here: the words are described, not decided upon.
 */
#ifndef SHMBUS_SHM_LAYOUT_H
#define SHMBUS_SHM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define SEG_MAGIC 0x01005355424D4853ull /* "SHMBUS\0\1" */
#define SEG_LAYOUT_VERSION 7u

/* seg_header.flags */
#define SEG_HDR_DEAD_LETTER_UNROUTED 0x1u /* unmatched commands/queries are dead-lettered */
/* route_fence: set for good once a member that cannot issue membarrier
 * attached (see routing_begin and sub_route_fence_full) */
#define SEG_ROUTE_FENCE_FULL 0x1u
#define SEG_HEADER_SIZE 4096u
#define SEG_NAME_MAX 64u /* bus name length, without NUL */
#define SEG_ID_MAX 63u	 /* subscriber id / group / label length */

#define SEG_LOG_DIR_MAX 1024u /* log root path, NUL included */

#define SEG_STATE_INIT 0u
#define SEG_STATE_READY 1u

#define SEG_MAX_MEMBERS 255u	 /* owner field of a queue cell is 8 bits */
#define SEG_MAX_SUBSCRIBERS 256u /* four 64-bit routing masks */
#define SEG_MASK_WORDS 4u
#define SEG_MIN_SLOTS 64u
#define SEG_MAX_SLOTS (1u << 22)
#define SEG_MIN_SLOT_SIZE 256u
#define SEG_MAX_SLOT_SIZE 65536u
#define SEG_EVENT_TYPES 5u

/*
 * seg_take_intent: what a taker of queue cells is doing, 16 bytes, written
 * before it moves a queue's head and cleared after it released the cells.
 * A survivor uses it to give back the cells of a taker that died between
 * the two (see shm/queue.h).
 *
 *   0   pos    u64  first queue position of the range
 *   8   info   u32  bits 0..7 count, bit 8 class, bits 9..17 subscription
 *                   index, bits 18..19 state (NONE, PENDING: head not
 *                   moved yet, OWNED: the range is the taker's, NOTED: a
 *                   drainer owns it and has counted it passed over)
 *   12  gen    u32  low bits of the subscription's generation: a survivor
 *                   gives nothing back to a record that was removed and
 *                   taken again meanwhile
 */
#define SEG_TAKE_NONE 0u
#define SEG_TAKE_PENDING 1u
#define SEG_TAKE_OWNED 2u
#define SEG_TAKE_NOTED 3u
#define SEG_TAKE_MAX 255u
struct seg_take_intent {
	uint64_t pos;
	uint32_t info;
	uint32_t gen;
};
_Static_assert(offsetof(struct seg_take_intent, info) == 8, "take.info");
_Static_assert(sizeof(struct seg_take_intent) == 16, "take size");
static inline uint32_t seg_take_info(uint32_t count, uint32_t cls, uint32_t sub, uint32_t state)
{
	return (count & 0xFF) | (cls & 3) << 8 | (sub & 0x1FF) << 10 | (state & 3) << 19;
}
static inline uint32_t seg_take_count(uint32_t info) { return info & 0xFF; }
static inline uint32_t seg_take_class(uint32_t info) { return (info >> 8) & 3; }
static inline uint32_t seg_take_sub(uint32_t info) { return (info >> 10) & 0x1FF; }
static inline uint32_t seg_take_state(uint32_t info) { return (info >> 19) & 3; }

/*
 * seg_header: offset 0, 4096 bytes. Written by the creator, then published
 * by a release store of `state` = READY; attachers read `state` with acquire
 * before trusting any other field and then validate every field anyway.
 *
 *   0    magic            u64
 *   8    layout_version   u32
 *   12   state            u32   INIT -> READY (release, last)
 *   16   layout_hash      u64   xxh3-64 of the layout description
 *   24   total_size       u64   bytes of the shm object
 *   32   incarnation      u64   random per creation
 *   40   created_ns       u64   CLOCK_REALTIME
 *   48   slot_count       u32   N, power of two
 *   52   slot_size        u32   power of two
 *   56   max_payload      u32
 *   60   max_subscribers  u32   S
 *   64   max_members      u32   M (and P)
 *   68   queue_capacity   u32   Q per priority class, == N
 *   72   mode             u32   permission bits of the object
 *   76   flags            u32   SEG_HDR_* (set at creation)
 *   80   block_timeout_ns u64   default publisher wait on a `block` sub
 *   88   stall_timeout_ns u64   a `block` sub stuck longer is demoted
 *   96   reclaim_timeout_ns u64 bound on reclaiming a dead member
 *   104  members_off ... 144 data_off  (u64 each, see diagram above)
 *   152  name[72]         NUL-terminated bus name
 *   224  reserved to 256
 *   256  claim_pos        u64   next free slot position (own line)
 *   320  space_futex u32, space_waiters u32 (own line): a publisher waiting
 *        for a slot raises space_waiters (a flag), then sleeps on space_futex
 *   384  routing line: route_epoch u64, active_mask[4], type_mask[5][4],
 *        route_fence u32 (SEG_ROUTE_FENCE_FULL: every publisher routes
 *        with a full fence; see routing_begin)
 *   640  counters line: reclaims, aborted_claims, demotions,
 *        recovered_events, retired publisher totals
 *   704  retired subscription totals: routed, delivered, filtered, lagged,
 *        redelivered
 *   744  locked_revoke    u64 where the table-lock holder is revoking a held
 *        entry (1 + (sub << 16 | consumer << 8 | entry); 0: nowhere); a new
 *        holder that finds it set finishes the revocation of one that died
 *   752  locked_take      seg_take_intent of the subscription-table lock holder
 *   768  log line: log_next u64 (position after the last event the
 *        recorder wrote), log_durable u64 (positions below it are on disk
 *        at the recorder's sync level), log_futex u32 (durability waiters
 *        sleep on it), log_waiters u32 (flag), log_sync u32 (default sync
 *        level, shmbus_sync_t), log_dir_set u32 (1 once log_dir is written,
 *        release), log_recorder_pid u32 (informational)
 *   1024 log_dir[1024]    log root directory ("" = the default root)
 *   2048 reserved to 3072
 *   3072 retired dispatch totals: completed, failed, retried,
 *        dead_lettered, expired, late_responses
 *   3120 reserved to 4096
 */
struct seg_header {
	uint64_t magic;
	uint32_t layout_version;
	uint32_t state;
	uint64_t layout_hash;
	uint64_t total_size;
	uint64_t incarnation;
	uint64_t created_ns;
	uint32_t slot_count;
	uint32_t slot_size;
	uint32_t max_payload;
	uint32_t max_subscribers;
	uint32_t max_members;
	uint32_t queue_capacity;
	uint32_t mode;
	uint32_t flags;
	uint64_t block_timeout_ns;
	uint64_t stall_timeout_ns;
	uint64_t reclaim_timeout_ns;
	uint64_t members_off;
	uint64_t pubs_off;
	uint64_t subs_off;
	uint64_t cells_off;
	uint64_t slot_ctl_off;
	uint64_t data_off;
	char name[72];
	uint8_t reserved0[32];
	/* 256: the claim word every publisher CASes; alone on its line. */
	uint64_t claim_pos;
	uint8_t pad_claim[56];
	/* 320: publishers waiting for a slot to be released sleep here. */
	uint32_t space_futex;
	uint32_t space_waiters;
	uint8_t pad_space[56];
	/* 384: routing summary, rewritten only on subscribe/unsubscribe/pause. */
	uint64_t route_epoch;
	uint64_t active_mask[SEG_MASK_WORDS];
	uint64_t type_mask[SEG_EVENT_TYPES][SEG_MASK_WORDS];
	uint32_t route_fence;
	uint32_t reserved_route;
	uint8_t pad_route[48];
	/* 640: rare bus-wide counters. */
	uint64_t reclaims;
	uint64_t aborted_claims;
	uint64_t demotions;
	uint64_t recovered_events;
	uint64_t retired_published;
	uint64_t retired_publish_bytes;
	uint64_t retired_block_waits;
	uint64_t retired_block_timeouts;
	/* 704: what removed subscriptions had counted, so bus totals never
	 * go backwards */
	uint64_t retired_routed;
	uint64_t retired_delivered;
	uint64_t retired_filtered;
	uint64_t retired_lagged;
	uint64_t retired_redelivered;
	/* 744: the held entry whose hold the subscription-table lock holder is
	 * revoking (revocations happen under the lock, see the held entries
	 * of seg_consumer), and its take intent (removals drain queues under
	 * it); a new holder that finds either set finishes the work of a
	 * holder that died. */
	uint64_t locked_revoke;
	struct seg_take_intent locked_take;
	/* 768: the recorder's progress; publishers that wait for durability
	 * sleep on log_futex (same flag-then-futex protocol as space_futex). */
	uint64_t log_next;
	uint64_t log_durable;
	uint32_t log_futex;
	uint32_t log_waiters;
	uint32_t log_sync;
	uint32_t log_dir_set;
	uint32_t log_recorder_pid;
	uint8_t reserved1[1024 - 804];
	/* 1024: where the log lives, set at most once (shmbus_log_configure) */
	char log_dir[SEG_LOG_DIR_MAX];
	uint8_t reserved2[3072 - 2048];
	/* 3072: dispatch counters of removed subscriptions */
	uint64_t retired_completed;
	uint64_t retired_failed;
	uint64_t retired_retried;
	uint64_t retired_dead_lettered;
	uint64_t retired_expired;
	uint64_t retired_late_responses;
	uint8_t reserved_tail[SEG_HEADER_SIZE - 3120];
};

_Static_assert(offsetof(struct seg_header, magic) == 0, "magic");
_Static_assert(offsetof(struct seg_header, layout_version) == 8, "layout_version");
_Static_assert(offsetof(struct seg_header, state) == 12, "state");
_Static_assert(offsetof(struct seg_header, layout_hash) == 16, "layout_hash");
_Static_assert(offsetof(struct seg_header, total_size) == 24, "total_size");
_Static_assert(offsetof(struct seg_header, incarnation) == 32, "incarnation");
_Static_assert(offsetof(struct seg_header, created_ns) == 40, "created_ns");
_Static_assert(offsetof(struct seg_header, slot_count) == 48, "slot_count");
_Static_assert(offsetof(struct seg_header, slot_size) == 52, "slot_size");
_Static_assert(offsetof(struct seg_header, max_payload) == 56, "max_payload");
_Static_assert(offsetof(struct seg_header, max_subscribers) == 60, "max_subscribers");
_Static_assert(offsetof(struct seg_header, max_members) == 64, "max_members");
_Static_assert(offsetof(struct seg_header, queue_capacity) == 68, "queue_capacity");
_Static_assert(offsetof(struct seg_header, mode) == 72, "mode");
_Static_assert(offsetof(struct seg_header, flags) == 76, "flags");
_Static_assert(offsetof(struct seg_header, block_timeout_ns) == 80, "block_timeout_ns");
_Static_assert(offsetof(struct seg_header, stall_timeout_ns) == 88, "stall_timeout_ns");
_Static_assert(offsetof(struct seg_header, reclaim_timeout_ns) == 96, "reclaim_timeout_ns");
_Static_assert(offsetof(struct seg_header, members_off) == 104, "members_off");
_Static_assert(offsetof(struct seg_header, pubs_off) == 112, "pubs_off");
_Static_assert(offsetof(struct seg_header, subs_off) == 120, "subs_off");
_Static_assert(offsetof(struct seg_header, cells_off) == 128, "cells_off");
_Static_assert(offsetof(struct seg_header, slot_ctl_off) == 136, "slot_ctl_off");
_Static_assert(offsetof(struct seg_header, data_off) == 144, "data_off");
_Static_assert(offsetof(struct seg_header, name) == 152, "name");
_Static_assert(offsetof(struct seg_header, claim_pos) == 256, "claim_pos");
_Static_assert(offsetof(struct seg_header, space_futex) == 320, "space_futex");
_Static_assert(offsetof(struct seg_header, space_waiters) == 324, "space_waiters");
_Static_assert(offsetof(struct seg_header, route_epoch) == 384, "route_epoch");
_Static_assert(offsetof(struct seg_header, active_mask) == 392, "active_mask");
_Static_assert(offsetof(struct seg_header, type_mask) == 424, "type_mask");
_Static_assert(offsetof(struct seg_header, route_fence) == 584, "route_fence");
_Static_assert(offsetof(struct seg_header, reclaims) == 640, "reclaims");
_Static_assert(offsetof(struct seg_header, retired_block_timeouts) == 696, "retired");
_Static_assert(offsetof(struct seg_header, retired_routed) == 704, "retired_routed");
_Static_assert(offsetof(struct seg_header, retired_redelivered) == 736, "retired_redelivered");
_Static_assert(offsetof(struct seg_header, locked_revoke) == 744, "locked_revoke");
_Static_assert(offsetof(struct seg_header, locked_take) == 752, "locked_take");
_Static_assert(offsetof(struct seg_header, log_next) == 768, "log_next");
_Static_assert(offsetof(struct seg_header, log_durable) == 776, "log_durable");
_Static_assert(offsetof(struct seg_header, log_futex) == 784, "log_futex");
_Static_assert(offsetof(struct seg_header, log_waiters) == 788, "log_waiters");
_Static_assert(offsetof(struct seg_header, log_sync) == 792, "log_sync");
_Static_assert(offsetof(struct seg_header, log_dir_set) == 796, "log_dir_set");
_Static_assert(offsetof(struct seg_header, log_recorder_pid) == 800, "log_recorder_pid");
_Static_assert(offsetof(struct seg_header, log_dir) == 1024, "log_dir");
_Static_assert(offsetof(struct seg_header, retired_completed) == 3072, "retired_completed");
_Static_assert(offsetof(struct seg_header, retired_late_responses) == 3112, "retired_late_responses");
_Static_assert(sizeof(struct seg_header) == SEG_HEADER_SIZE, "seg_header size");

/*
 * seg_member: one attached process (one bus handle), 256 bytes.
 * Liveness is the OFD write lock on byte SEG_LOCK_MEMBER_BASE + index of the
 * shm object, held by the member's own open file description; the kernel
 * drops it when the process dies, whatever the pid is reused for.
 *
 *   0   state       u32  FREE / ACTIVE / RECLAIMING
 *   4   pid         u32
 *   8   generation  u64  bumped on every allocation of this entry
 *   16  attach_ns   u64
 *   24  label[64]
 *   88  pidns       u64  inode of the member's pid namespace
 *   96  reserved to 256
 *
 * A process forked by a member inherits its descriptor, and with it the
 * lock, until it runs the library's fork handler (which closes it): for
 * that moment the lock alone would make a dead member look alive. A member
 * whose lock is held but whose pid no longer exists in our own pid
 * namespace is therefore dead too.
 */
#define SEG_MEMBER_FREE 0u
#define SEG_MEMBER_ACTIVE 1u
#define SEG_MEMBER_RECLAIMING 2u
struct seg_member {
	uint32_t state;
	uint32_t pid;
	uint64_t generation;
	uint64_t attach_ns;
	char label[64];
	uint64_t pidns;
	uint8_t reserved[160];
};
_Static_assert(offsetof(struct seg_member, state) == 0, "member.state");
_Static_assert(offsetof(struct seg_member, pid) == 4, "member.pid");
_Static_assert(offsetof(struct seg_member, generation) == 8, "member.generation");
_Static_assert(offsetof(struct seg_member, attach_ns) == 16, "member.attach_ns");
_Static_assert(offsetof(struct seg_member, label) == 24, "member.label");
_Static_assert(offsetof(struct seg_member, pidns) == 88, "member.pidns");
_Static_assert(sizeof(struct seg_member) == 256, "seg_member size");

/*
 * seg_pub: one publisher handle, 256 bytes. What a publisher has claimed but
 * not committed is found from the slots themselves (a CLAIMED slot names its
 * publisher), so a survivor can abort it when the owner is dead (Aeron's
 * "unblock a dead claimer").
 *
 *   0   state         u32  FREE / ACTIVE
 *   4   member        u32  owning member index
 *   8   member_gen    u64  owning member generation
 *   16  source[64]    default source id
 *   80  reserved to 128
 *   128 routing       u64  odd while the publisher routes an event: a
 *                          subscription being removed waits for it to turn
 *                          even (a grace period, as in RCU)
 *   136 reserved
 *   144 drain         seg_take_intent: cells taken while draining `lag`
 *                          subscriptions for space
 *   160 claiming_n    u32  slots of the claim `claiming` names
 *   168 lease_using   u64  1 + the LEASED position the publisher is taking
 *                          (see seg_slot_ctl), 0: none
 *   176 lease_taken   u64  positions of its leases taken away from it, a
 *                          count only takers raise (see seg_slot_ctl)
 *   184 reserved to 192
 *   192 published     u64  counters, written only by the owner
 *   200 publish_bytes u64
 *   208 block_waits   u64
 *   216 block_timeouts u64
 *   224 reserved to 256
 */
struct seg_pub {
	uint32_t state;
	uint32_t member;
	uint64_t member_gen;
	char source[64];
	uint8_t reserved0[48];
	uint64_t routing;
	uint64_t claiming;    /* 1 + the position a claim CAS may be moving claim_pos from; 0: none */
	struct seg_take_intent drain;
	uint32_t claiming_n;  /* slots of that claim */
	uint32_t reserved1b;
	uint64_t lease_using; /* 1 + the leased position being taken; 0: none */
	uint64_t lease_taken; /* lease positions taken away from it */
	uint8_t reserved1c[8];
	uint64_t published;
	uint64_t publish_bytes;
	uint64_t block_waits;
	uint64_t block_timeouts;
	uint8_t reserved2[32];
};
_Static_assert(offsetof(struct seg_pub, member) == 4, "pub.member");
_Static_assert(offsetof(struct seg_pub, member_gen) == 8, "pub.member_gen");
_Static_assert(offsetof(struct seg_pub, source) == 16, "pub.source");
_Static_assert(offsetof(struct seg_pub, routing) == 128, "pub.routing");
_Static_assert(offsetof(struct seg_pub, drain) == 144, "pub.drain");
_Static_assert(offsetof(struct seg_pub, claiming) == 136, "pub.claiming");
_Static_assert(offsetof(struct seg_pub, claiming_n) == 160, "pub.claiming_n");
_Static_assert(offsetof(struct seg_pub, lease_using) == 168, "pub.lease_using");
_Static_assert(offsetof(struct seg_pub, lease_taken) == 176, "pub.lease_taken");
_Static_assert(offsetof(struct seg_pub, published) == 192, "pub.published");
_Static_assert(offsetof(struct seg_pub, block_timeouts) == 216, "pub.block_timeouts");
_Static_assert(sizeof(struct seg_pub) == 256, "seg_pub size");

/*
 * Filter, as publishers evaluate it: a small tree of nodes in the
 * subscription record, 2048 bytes. Leaves test one precomputed hash or
 * field of the event header; PATTERN leaves are POSIX extended regexes on
 * the name, compiled and cached by each publisher process; CUSTOM leaves are
 * true for publishers and run as a second stage in the subscriber.
 *
 *   0    node_count u16, root u16, hash_count u16, text_len u16
 *   8    type_union u32  (bit per type the filter can possibly match)
 *   12   flags u32       (SEG_FILTER_HAS_CUSTOM, SEG_FILTER_HAS_PATTERN)
 *   16   nodes[16]       16 bytes each
 *   272  hashes[64]      u64 xxh3 of the set members, in node order
 *   784  text[1264]      NUL-separated strings (set members, regexes)
 */
#define SEG_FILTER_NODES 16u
/* Deepest node an evaluator follows (the root is at depth 0): one below
 * it does not match, so compilers refuse such a tree. */
#define SEG_FILTER_DEPTH_MAX 8u
#define SEG_FILTER_HASHES 64u
#define SEG_FILTER_TEXT 1264u
enum seg_filter_kind {
	SEG_F_ALL = 1,	   /* children [first, first+count) all match; 0 children = true */
	SEG_F_ANY = 2,	   /* any child matches */
	SEG_F_TYPES = 3,   /* arg: bit (1 << type) */
	SEG_F_NAMES = 4,   /* hashes [first, first+count) against name_hash */
	SEG_F_SOURCES = 5, /* ... against source_hash */
	SEG_F_TARGETS = 6, /* ... against target_hash */
	SEG_F_MIN_PRIO = 7, /* arg: minimum priority */
	SEG_F_PATTERN = 8, /* arg: text offset of the regex */
	SEG_F_CUSTOM = 9,  /* always true here; arg: slot in the subscriber */
};
#define SEG_FILTER_HAS_CUSTOM 1u
#define SEG_FILTER_HAS_PATTERN 2u
struct seg_filter_node {
	uint8_t kind;
	uint8_t reserved;
	uint16_t count;	 /* children or hashes */
	uint16_t first;	 /* first child node or first hash */
	uint16_t text;	 /* text offset of first string of a set */
	uint32_t arg;
	uint32_t reserved2;
};
_Static_assert(sizeof(struct seg_filter_node) == 16, "filter node size");
struct seg_filter {
	uint16_t node_count;
	uint16_t root;
	uint16_t hash_count;
	uint16_t text_len;
	uint32_t type_union;
	uint32_t flags;
	struct seg_filter_node nodes[SEG_FILTER_NODES];
	uint64_t hashes[SEG_FILTER_HASHES];
	char text[SEG_FILTER_TEXT];
};
_Static_assert(offsetof(struct seg_filter, type_union) == 8, "filter.type_union");
_Static_assert(offsetof(struct seg_filter, nodes) == 16, "filter.nodes");
_Static_assert(offsetof(struct seg_filter, hashes) == 272, "filter.hashes");
_Static_assert(offsetof(struct seg_filter, text) == 784, "filter.text");
_Static_assert(sizeof(struct seg_filter) == 2048, "seg_filter size");

/*
 * Queue cell, 16 bytes: a turn word and a descriptor.
 *
 * turn encodes who may touch the cell next, for queue position p at index
 * p & (Q-1):
 *   p                  EMPTY: a producer at position p may take it
 *   BUSY|o|r-1|p       a producer (member o) took the run of r cells from
 *                      this one and is writing their descriptors (p: the
 *                      position's low 48 bits; see the turn words below)
 *   p + 1              FULL: a consumer may take it by moving head past p
 *   p + Q              released by the consumer that took it: EMPTY for
 *                      position p + Q
 * The owner o lets a survivor finish the push of a member that died inside
 * it; a consumer that dies between moving head and releasing is found
 * through its seg_take_intent.
 */
struct seg_cell {
	_Alignas(16) uint64_t turn; /* 16-byte aligned: CMPXCHG16B faults otherwise */
	uint64_t desc;
};
_Static_assert(sizeof(struct seg_cell) == 16, "seg_cell size");

/*
 * Queue head/tail of one queue of a subscription; tail and head are hints
 * that anyone may advance (the cells' turn words are the truth), each alone
 * on its line. Three queues per subscription:
 *   0 urgent (high and critical events), Q cells in the cells region;
 *   1 normal (low and normal events), Q cells in the cells region;
 *   2 redelivery: what survivors give back from a dead consumer, in
 *     sequence order, SEG_REDELIVER_CELLS cells in the seg_sub itself.
 * Consumers serve 2, then 0, then 1. Publishers push to 0 and 1 only.
 */
#define SEG_QUEUE_URGENT 0u
#define SEG_QUEUE_NORMAL 1u
#define SEG_QUEUE_REDELIVER 2u
#define SEG_QUEUE_CLASSES 3u	  /* all queues of a subscription */
#define SEG_QUEUE_CELL_CLASSES 2u /* the queues whose cells are in the cells region */
#define SEG_REDELIVER_CELLS 512u
struct seg_queue_ends {
	uint64_t tail;
	uint8_t pad0[56];
	uint64_t head;
	uint8_t pad1[56];
};
_Static_assert(offsetof(struct seg_queue_ends, head) == 64, "queue.head");
_Static_assert(sizeof(struct seg_queue_ends) == 128, "queue ends size");

/*
 * One consumer attached to a subscription (a process, or one of the members
 * of a group), 384 bytes. held[] records every event taken and not yet
 * released, so a survivor can give them back when the consumer dies.
 * A held entry is 0 when empty, else a descriptor (see SEG_DESC_*) with:
 *   UNSEEN      taken in a run, left for a later poll (the events the
 *               taking poll hands out at once are stored seen)
 *   (none)      handed to the user, or being handed out by the poll
 *               that took it
 *   RELEASING   released by the user, the hold not yet dropped (releases
 *               are applied in batches)
 *   DROPPING    the consumer won the entry and is clearing the holder bit;
 *               it stores 0 next
 *   REVOKED     the holder of the subscription-table lock (a revoker, a
 *               removal) won the entry and is clearing the holder bit; it
 *               stores 0 next
 * A holder bit is cleared by exactly one party: whoever moves the entry
 * from one of the first three states to DROPPING or REVOKED with a CAS.
 * The marked entry stays until the bit is clear, so a survivor finds a
 * winner that died in between (its bit, if still set, is then cleared by
 * the survivor alone).
 *
 *   0   state       u32 FREE / ACTIVE
 *   4   member      u32
 *   8   member_gen  u64
 *   16  delivered   u64 counter
 *   24  take        seg_take_intent: cells being moved into held[]
 *   40  pid         u32
 *   44  processing  u32 gauge: handlers of its dispatcher running now
 *   48  retrying    u32 gauge: its events waiting for a retry
 *   52  reserved
 *   56  log_low     u64 one past the lowest sequence of the events catch-up
 *                   handed this consumer from the log and it has not
 *                   released (0: none); a survivor reopens the gap there
 *   64  held[40]    u64
 * The gauges live with the consumer, not the subscription, so that a
 * consumer that dies takes its share with it when its entry is reset.
 */
#define SEG_CONSUMERS 8u
#define SEG_HELD_MAX 40u
#define SEG_CONSUMER_FREE 0u
#define SEG_CONSUMER_ACTIVE 1u
/* The subscription was removed while this consumer was taking a run: the
 * entry stays the run's record until the consumer has dropped the run and
 * frees the entry, or until a survivor reclaiming it finishes the run (see
 * reclaim_sub). */
#define SEG_CONSUMER_DETACHED 2u
struct seg_consumer {
	uint32_t state;
	uint32_t member;
	uint64_t member_gen;
	uint64_t delivered;
	struct seg_take_intent take;
	uint32_t pid;
	uint32_t processing;
	uint32_t retrying;
	uint32_t reserved1;
	uint64_t log_low;
	uint64_t held[SEG_HELD_MAX];
};
_Static_assert(offsetof(struct seg_consumer, member) == 4, "consumer.member");
_Static_assert(offsetof(struct seg_consumer, member_gen) == 8, "consumer.member_gen");
_Static_assert(offsetof(struct seg_consumer, delivered) == 16, "consumer.delivered");
_Static_assert(offsetof(struct seg_consumer, take) == 24, "consumer.take");
_Static_assert(offsetof(struct seg_consumer, pid) == 40, "consumer.pid");
_Static_assert(offsetof(struct seg_consumer, processing) == 44, "consumer.processing");
_Static_assert(offsetof(struct seg_consumer, retrying) == 48, "consumer.retrying");
_Static_assert(offsetof(struct seg_consumer, log_low) == 56, "consumer.log_low");
_Static_assert(offsetof(struct seg_consumer, held) == 64, "consumer.held");
_Static_assert(sizeof(struct seg_consumer) == 384, "seg_consumer size");

/*
 * seg_sub: one subscription, 8192 bytes.
 *
 *   0     state        u32  FREE / ACTIVE / INIT (being set up or torn down)
 *   4     flags        u32  SEG_SUB_* below (policy, durable, group, paused)
 *   8     generation   u64  id = generation << 16 | index
 *   16    owner        u32  owning member for plain subs, ~0 for durable/group
 *   20    owner_gen_lo u32
 *   24    created_ns   u64
 *   32    subscriber[64]    the spec's subscriber id
 *   96    group[64]         group name ("" if none)
 *   160   block_since_ns u64 (informational: last stall seen)
 *   168   missed_taken   u64 missed events already reported to a consumer
 *   176   reserved to 256
 *   256   wake_futex u32, sleepers u32 (own line)
 *   320   counters (own lines): delivered_total, filtered, missed,
 *         dropped_full, demotions, redelivered, revoked, routed_base
 *         (the queue positions carry on across reuses of the record)
 *   384   ends[2]      seg_queue_ends (256 bytes): urgent, normal
 *   640   dispatch counters (own line): completed, failed, retried,
 *         dead_lettered, expired, late_responses (see dispatch.c)
 *   704   catch-up from the log (own line; durable subscriptions with
 *         SEG_SUB_CATCHUP only, see lib/catchup.c):
 *         gap_lo      u64 lowest dropped sequence not yet caught up
 *                         (~0: no gap); droppers lower it (atomic min),
 *                         catching consumers raise it (CAS)
 *         gap_hi      u64 one past the highest sequence ever dropped
 *                         (atomic max, never lowered)
 *         gap_owed    u64 dropped minus served from the log, two's
 *                         complement; what is left when a gap closes
 *                         is added to missed
 *         gap_dropped u64 counter: events dropped into gaps
 *         gap_served  u64 counter: events served from the log
 *   744   reserved to 1024
 *   1024  filter       seg_filter (2048)
 *   3072  consumers[8] seg_consumer (3072)
 *   6144  redeliver_ends seg_queue_ends: the redelivery queue (class 2)
 *   6272  reserved to 8192
 *   8192  redeliver_cells[512] seg_cell: its cells
 */
#define SEG_SUB_SIZE 16384u
#define SEG_SUB_FREE 0u
#define SEG_SUB_ACTIVE 1u
#define SEG_SUB_INIT 2u
#define SEG_SUB_POLICY_LAG 0x1u
#define SEG_SUB_DURABLE 0x2u
#define SEG_SUB_GROUP 0x4u
#define SEG_SUB_PAUSED 0x8u
#define SEG_SUB_DEMOTED 0x10u
#define SEG_SUB_CATCHUP 0x20u /* durable: dropped events are served from the log */
#define SEG_GAP_NONE UINT64_MAX
#define SEG_SUB_NO_OWNER 0xFFFFFFFFu
struct seg_sub {
	uint32_t state;
	uint32_t flags;
	uint64_t generation;
	uint32_t owner;
	uint32_t owner_gen_lo;
	uint64_t created_ns;
	char subscriber[64];
	char group[64];
	uint64_t block_since_ns;
	uint64_t missed_taken; /* missed already reported (shmbus_take_missed) */
	uint8_t reserved0[80];
	uint32_t wake_futex;
	uint32_t sleepers;
	uint8_t pad_wake[56];
	uint64_t delivered_total;
	uint64_t filtered;
	uint64_t missed;
	uint64_t dropped_full;
	uint64_t demotions;
	uint64_t redelivered;
	uint64_t revoked;
	uint64_t routed_base; /* queue tails when the record was taken */
	struct seg_queue_ends ends[SEG_QUEUE_CELL_CLASSES];
	uint64_t completed;	 /* handler runs that succeeded */
	uint64_t failed;	 /* handler runs that failed */
	uint64_t retried;	 /* runs that were retries */
	uint64_t dead_lettered;
	uint64_t expired;	 /* dead-lettered because they expired */
	uint64_t late_responses; /* a requester's reply subscription: too late */
	uint8_t pad_dispatch[16];
	uint64_t gap_lo;
	uint64_t gap_hi;
	uint64_t gap_owed;
	uint64_t gap_dropped;
	uint64_t gap_served;
	uint8_t reserved2[280];
	struct seg_filter filter;
	struct seg_consumer consumers[SEG_CONSUMERS];
	struct seg_queue_ends redeliver_ends;
	uint8_t reserved3[8192 - 6272];
	struct seg_cell redeliver_cells[SEG_REDELIVER_CELLS];
};
_Static_assert(offsetof(struct seg_sub, flags) == 4, "sub.flags");
_Static_assert(offsetof(struct seg_sub, generation) == 8, "sub.generation");
_Static_assert(offsetof(struct seg_sub, owner) == 16, "sub.owner");
_Static_assert(offsetof(struct seg_sub, created_ns) == 24, "sub.created_ns");
_Static_assert(offsetof(struct seg_sub, subscriber) == 32, "sub.subscriber");
_Static_assert(offsetof(struct seg_sub, group) == 96, "sub.group");
_Static_assert(offsetof(struct seg_sub, block_since_ns) == 160, "sub.block_since_ns");
_Static_assert(offsetof(struct seg_sub, missed_taken) == 168, "sub.missed_taken");
_Static_assert(offsetof(struct seg_sub, wake_futex) == 256, "sub.wake_futex");
_Static_assert(offsetof(struct seg_sub, sleepers) == 260, "sub.sleepers");
_Static_assert(offsetof(struct seg_sub, delivered_total) == 320, "sub.delivered_total");
_Static_assert(offsetof(struct seg_sub, routed_base) == 376, "sub.routed_base");
_Static_assert(offsetof(struct seg_sub, ends) == 384, "sub.ends");
_Static_assert(offsetof(struct seg_sub, completed) == 640, "sub.completed");
_Static_assert(offsetof(struct seg_sub, late_responses) == 680, "sub.late_responses");
_Static_assert(offsetof(struct seg_sub, gap_lo) == 704, "sub.gap_lo");
_Static_assert(offsetof(struct seg_sub, gap_hi) == 712, "sub.gap_hi");
_Static_assert(offsetof(struct seg_sub, gap_owed) == 720, "sub.gap_owed");
_Static_assert(offsetof(struct seg_sub, gap_dropped) == 728, "sub.gap_dropped");
_Static_assert(offsetof(struct seg_sub, gap_served) == 736, "sub.gap_served");
_Static_assert(offsetof(struct seg_sub, filter) == 1024, "sub.filter");
_Static_assert(offsetof(struct seg_sub, consumers) == 3072, "sub.consumers");
_Static_assert(offsetof(struct seg_sub, redeliver_ends) == 6144, "sub.redeliver_ends");
_Static_assert(offsetof(struct seg_sub, redeliver_cells) == 8192, "sub.redeliver_cells");
_Static_assert(sizeof(struct seg_sub) == SEG_SUB_SIZE, "seg_sub size");

/* The ends of queue cls (SEG_QUEUE_*) of subscription record s. */
static inline struct seg_queue_ends *seg_sub_ends(struct seg_sub *s, unsigned cls)
{
	return cls == SEG_QUEUE_REDELIVER ? &s->redeliver_ends : &s->ends[cls];
}
static inline const struct seg_queue_ends *seg_sub_ends_const(const struct seg_sub *s, unsigned cls)
{
	return cls == SEG_QUEUE_REDELIVER ? &s->redeliver_ends : &s->ends[cls];
}


/*
 * Turn words. Positions are 54 bits (SEG_TURN_POS_MASK) in EMPTY and FULL
 * words. A WRITING word is BUSY | owner o << 54 | (run - 1) << 48 | the
 * position's low 48 bits: member o took the run of cells from this one (1
 * to SEG_TURN_RUN_MAX of them) with one CAS of this cell, and nobody else
 * takes any of them (see queue.h). The position is known from the cell's
 * place anyway; its low 48 bits tell laps apart (seg_turn_distance).
 */
#define SEG_TURN_BUSY (1ull << 63)
#define SEG_TURN_OWNER_SHIFT 54
#define SEG_TURN_OWNER_MASK 0xFFull
#define SEG_TURN_POS_MASK ((1ull << SEG_TURN_OWNER_SHIFT) - 1)
#define SEG_TURN_RUN_SHIFT 48
#define SEG_TURN_RUN_MASK 0x3Full
#define SEG_TURN_RUN_MAX (SEG_TURN_RUN_MASK + 1)
#define SEG_TURN_BUSY_POS_MASK ((1ull << SEG_TURN_RUN_SHIFT) - 1)

/* The WRITING word of member owner for the run of `run` cells (1 to
 * SEG_TURN_RUN_MAX) from position pos. */
static inline uint64_t seg_turn_busy(uint32_t owner, uint64_t pos, uint32_t run)
{
	return SEG_TURN_BUSY | ((uint64_t)(owner & SEG_TURN_OWNER_MASK) << SEG_TURN_OWNER_SHIFT) |
	       ((uint64_t)((run - 1) & SEG_TURN_RUN_MASK) << SEG_TURN_RUN_SHIFT) | (pos & SEG_TURN_BUSY_POS_MASK);
}
static inline uint32_t seg_turn_owner(uint64_t turn) { return (uint32_t)((turn >> SEG_TURN_OWNER_SHIFT) & SEG_TURN_OWNER_MASK); }
/* The cells a WRITING word's run covers (1 for any other word). */
static inline uint32_t seg_turn_run(uint64_t turn)
{
	return turn & SEG_TURN_BUSY ? (uint32_t)((turn >> SEG_TURN_RUN_SHIFT) & SEG_TURN_RUN_MASK) + 1 : 1;
}
/* The EMPTY and the FULL word of queue position pos (positions count on
 * past 2^54; their words wrap there). A cell released after serving p is
 * EMPTY for p + Q: seg_turn_empty(p + Q). */
static inline uint64_t seg_turn_empty(uint64_t pos) { return pos & SEG_TURN_POS_MASK; }
static inline uint64_t seg_turn_full(uint64_t pos) { return (pos + 1) & SEG_TURN_POS_MASK; }
/*
 * How far the position a turn word names lies from position p (positive:
 * beyond it), from the word's 54 bits (48 for a WRITING word): exact
 * within 2^47 positions of p (a queue is far shorter), across the words'
 * wrap too.
 */
static inline int64_t seg_turn_distance(uint64_t turn, uint64_t p)
{
	unsigned bits = turn & SEG_TURN_BUSY ? SEG_TURN_RUN_SHIFT : SEG_TURN_OWNER_SHIFT;
	uint64_t d = (turn - p) << (64 - bits);
	return (int64_t)d >> (64 - bits);
}

/*
 * Descriptor: what a queue cell (and a held entry) carries.
 *   bits 0..57  seq: the position of the event's first slot
 *   bit 58      REVOKED (held entries only): the hold was taken back from a
 *               stalled consumer
 *   bit 59      UNSEEN (held entries only): taken from the queue and left
 *               for a later poll
 *   bit 60      RELEASING (held entries only): released, reference not yet
 *               dropped
 *   bits 59+60  DROPPING (held entries only; UNSEEN and RELEASING are never
 *               both set otherwise): the consumer won the entry and clears
 *               the holder bit
 *   bit 61      HOLDS_REF: the subscription's holder bit of the slot is set for it
 *   bit 62      TOMBSTONE: nothing to deliver (a dead producer's cell)
 *   bit 63      REDELIVERED: handed back after its consumer died
 */
#define SEG_DESC_SEQ_MASK ((1ull << 58) - 1)
#define SEG_DESC_REVOKED (1ull << 58)
#define SEG_DESC_UNSEEN (1ull << 59)
#define SEG_DESC_RELEASING (1ull << 60)
#define SEG_DESC_DROPPING (SEG_DESC_UNSEEN | SEG_DESC_RELEASING)
#define SEG_DESC_HOLDS_REF (1ull << 61)
#define SEG_DESC_TOMBSTONE (1ull << 62)
#define SEG_DESC_REDELIVERED (1ull << 63)
/* The descriptor of an EMPTY queue cell: a tombstone, so that whoever
 * reads it by a race (a peek, a taker whose head CAS then fails, the
 * survivor of a consumer that died between a release's two stores) finds
 * nothing there; and one known value, which a single push's 16-byte CAS
 * expects without reading the cell first (queue_push_in_one). */
#define SEG_DESC_VACANT SEG_DESC_TOMBSTONE
/* A held entry its consumer is dropping (it won it, see seg_consumer). */
static inline int seg_desc_dropping(uint64_t d) { return (d & SEG_DESC_DROPPING) == SEG_DESC_DROPPING; }
/* locked_revoke of the header: where, and back. */
static inline uint64_t seg_revoke_where(uint32_t sub, uint32_t consumer, uint32_t k)
{
	return 1 + ((uint64_t)sub << 16 | (uint64_t)(consumer & 0xFF) << 8 | (k & 0xFF));
}
static inline uint32_t seg_revoke_sub(uint64_t w) { return (uint32_t)((w - 1) >> 16); }
static inline uint32_t seg_revoke_consumer(uint64_t w) { return (uint32_t)((w - 1) >> 8) & 0xFF; }
static inline uint32_t seg_revoke_entry(uint64_t w) { return (uint32_t)(w - 1) & 0xFF; }

/*
 * Slot control word, one u64 per slot:
 *   bits 0..17   while CLAIMED, LEASED or TAKING: 1 + index of the
 *                claiming seg_pub; else 0
 *   bits 18..19  state: FREE (never used, or continuation of a larger event),
 *                CLAIMED (being written), COMMITTED, ABORTED
 *   bits 20..63  lap tag: 1 + (slot position >> log2(N)), modulo 2^44, so the
 *                all-zero word of a new segment is older than every lap
 * LEASED is FREE naming a publisher: a position claimed ahead of need by
 * that publisher for a later single-slot event (a claim lease, so that
 * publishers taking turns do not pass the claim word between them on every
 * event). Its publisher takes it without a locked instruction and without
 * reading the slot's line: it stores 1 + the position in its seg_pub's
 * lease_using, then (compiler barrier only) reads its own lease_taken, and
 * if that is what it was before the lease was claimed, stores CLAIMED;
 * else it clears lease_using and claims elsewhere. Anybody who must not
 * wait for the position (a claimer a lap later, the recorder) takes it
 * away: a CAS from LEASED to TAKING (ABORTED naming the publisher), an
 * increment of the publisher's lease_taken, a heavy asymmetric fence
 * (membarrier, shm/asym_fence.h) that makes the publisher's lease_using
 * store visible if it came first, then, unless lease_using names the
 * position while the publisher lives, a CAS from TAKING to ABORTED. Either
 * the publisher sees the new count, or the taker sees lease_using and
 * waits for the publisher's CLAIMED or its retreat. Any party may finish a
 * TAKING word the same way (a taker that died leaves one).
 * A slot is reusable when FREE (naming nobody), ABORTED (naming nobody),
 * or COMMITTED with no holder (see below). The lap tag tells a reader
 * holding an old descriptor that the slot moved on.
 *
 * Holders: bit s of a slot's holder words is set while subscription s has
 * the event queued or held. The publisher sets them before it commits;
 * whoever drops the event for s (its consumer, a drain, a revoker, a
 * survivor) clears bit s, and only one party may: the bit of a slot's lap
 * keeps the slot from being reused, so the check of the lap before the
 * AND holds until the AND only while nobody else can clear that bit. A
 * queued descriptor is owned by whoever takes its cell, a held one by
 * whoever wins its entry (see seg_consumer). A survivor clears the bit of
 * a dead owner's record only after seeing it still set in the record's
 * lap, so a record whose bit its owner cleared before dying is skipped.
 *
 * seg_slot_ctl: the control word and the holder words of one slot share a
 * cache line of their own, 64 bytes: the publisher claims and commits, and
 * the consumer releases, on one line, and neighbouring slots never share
 * it.
 *   0   ctl         u64
 *   8   holders[4]  u64
 *   40  reserved to 64
 */
#define SEG_HOLDER_WORDS SEG_MASK_WORDS
struct seg_slot_ctl {
	uint64_t ctl;
	uint64_t holders[SEG_HOLDER_WORDS];
	uint64_t reserved[3];
};
_Static_assert(offsetof(struct seg_slot_ctl, holders) == 8, "slot.holders");
_Static_assert(sizeof(struct seg_slot_ctl) == 64, "seg_slot_ctl size");
#define SEG_CTL_CLAIMER_MASK 0x3FFFFull
#define SEG_CTL_STATE_SHIFT 18
#define SEG_CTL_STATE_MASK 0x3ull
#define SEG_CTL_LAP_SHIFT 20
#define SEG_SLOT_FREE 0u
#define SEG_SLOT_CLAIMED 1u
#define SEG_SLOT_COMMITTED 2u
#define SEG_SLOT_ABORTED 3u

static inline uint64_t seg_ctl_make(uint64_t lap, uint32_t state, uint32_t claimer)
{
	return (lap << SEG_CTL_LAP_SHIFT) | ((uint64_t)state << SEG_CTL_STATE_SHIFT) | (claimer & SEG_CTL_CLAIMER_MASK);
}
static inline uint64_t seg_ctl_lap(uint64_t ctl) { return ctl >> SEG_CTL_LAP_SHIFT; }
static inline uint32_t seg_ctl_state(uint64_t ctl) { return (uint32_t)((ctl >> SEG_CTL_STATE_SHIFT) & SEG_CTL_STATE_MASK); }
/* 1 + index of the publisher that claimed a CLAIMED or LEASED slot; 0
 * otherwise. */
static inline uint32_t seg_ctl_claimer(uint64_t ctl) { return (uint32_t)(ctl & SEG_CTL_CLAIMER_MASK); }
/* Whether the word is LEASED (FREE naming a publisher) or TAKING (ABORTED
 * naming one): a lease position nobody may reuse or skip before it is
 * taken from its publisher. */
static inline int seg_ctl_leased(uint64_t ctl)
{
	uint32_t st = seg_ctl_state(ctl);
	return (st == SEG_SLOT_FREE || st == SEG_SLOT_ABORTED) && seg_ctl_claimer(ctl) != 0;
}
/* The lap tag of position pos, truncated to the 44 bits the word keeps. */
static inline uint64_t seg_lap_of(uint64_t pos, uint32_t slot_shift)
{
	return ((pos >> slot_shift) + 1) & ((1ull << (64 - SEG_CTL_LAP_SHIFT)) - 1);
}

/* Index of slot position pos in slot_ctl[] and of queue position pos in a
 * queue's cells: the one place that maps positions to memory. */
static inline uint64_t seg_ctl_index(uint64_t pos, uint64_t nslots) { return pos & (nslots - 1); }
static inline uint64_t seg_cell_index(uint64_t pos, uint64_t cap) { return pos & (cap - 1); }

/* OFD lock bytes of the shm object. */
#define SEG_LOCK_INIT 0ull	    /* held while a creator initialises */
#define SEG_LOCK_RECLAIM 1ull	    /* held by whoever reclaims dead members */
#define SEG_LOCK_SUBS 2ull	    /* held while the subscription table changes */
#define SEG_LOCK_RECORDER 3ull	    /* held by the bus's one recorder */
#define SEG_LOCK_MEMBER_BASE 16ull  /* + member index: that member is alive */

/* Size of every region for a given config, and the layout hash input. */
struct seg_geometry {
	uint64_t members_off, pubs_off, subs_off, cells_off, slot_ctl_off, data_off;
	uint64_t data_size, total_size;
	uint32_t slot_shift;
};

#endif
