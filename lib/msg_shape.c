/*
 * msg_shape.c - event_same_shape for a batch, in a few wide compares.
 *
 * A batch publish asks, for every message after the first, whether it
 * encodes as the one before but for its payload (event_same_shape: 22
 * fields, about 56 instructions a message, a sixth of what a batched
 * event costs its publisher). The fields a shape is made of are the
 * message's first 136 bytes bar the padding between them, so with AVX2
 * the question is four 32-byte XORs, masked where the padding lies, one
 * 8-byte compare and, where has_confidence is set, the confidence (a
 * caller may leave it unwritten otherwise, as event_same_shape never reads
 * it then). The answer is event_same_shape's.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "event_encode.h"

#if defined(__x86_64__) && defined(__LP64__)
#include <immintrin.h>

/* Where the compared bytes and the padding lie (x86-64 System V): the
 * masks below are written for exactly this layout. */
#define PINNED(field, off) _Static_assert(offsetof(shmbus_msg_t, field) == (off), "msg." #field)
PINNED(type, 0);
_Static_assert(sizeof(shmbus_type_t) == 4, "msg.type size");
PINNED(name, 8);
PINNED(source, 16);
PINNED(target, 24);
PINNED(priority, 32);
_Static_assert(sizeof(shmbus_priority_t) == 4, "msg.priority size");
PINNED(correlation_id, 40);
PINNED(causation_id, 48);
PINNED(ttl_ns, 56);
PINNED(max_retries, 64);
PINNED(retry_count, 65);
PINNED(status, 66);
PINNED(schema_version, 68);
PINNED(content_type, 72);
_Static_assert(sizeof(shmbus_content_t) == 4, "msg.content_type size");
PINNED(flags, 76);
PINNED(conversation_id, 80);
PINNED(user_id, 88);
PINNED(intent, 96);
PINNED(decision_id, 104);
PINNED(has_confidence, 112);
PINNED(confidence, 116);
PINNED(metadata, 120);
PINNED(metadata_count, 128);
PINNED(payload, 136); /* the first byte not compared */
_Static_assert(sizeof(shmbus_msg_t) == 152, "no field was added (into padding or at the end) that the masks miss");

/* 0xFF where a field's byte lies in bytes 0..127, 0 over padding and over
 * confidence (compared apart, only where has_confidence says it is set). */
#define F4 0xFF, 0xFF, 0xFF, 0xFF
#define F8 F4, F4
#define P1 0
#define P2 0, 0
#define P3 0, 0, 0
#define P4 0, 0, 0, 0
static const uint8_t shape_bytes[128] __attribute__((aligned(32))) = {
	F4, P4, F8, F8, F8,		       /*  0: type, pad, name, source, target */
	F4, P4, F8, F8, F8,		       /* 32: priority, pad, correlation, causation, ttl */
	0xFF, 0xFF, 0xFF, P1, 0xFF, 0xFF, P2, /* 64: retries, retry count, status, pad, schema, pad */
	F4, 0xFF, 0xFF, P2, F8, F8,	       /* 72: content type, flags, pad, conversation, user */
	F8, F8, 0xFF, P3, P4, F8,	       /* 96: intent, decision, has_confidence, pad, (confidence), metadata */
};
_Static_assert(sizeof shape_bytes == 128, "every byte of 0..127 has its mask");

__attribute__((target("avx2"))) bool event_same_shape_avx2(const shmbus_msg_t *a, const shmbus_msg_t *b)
{
	const char *pa = (const char *)a, *pb = (const char *)b;
	__m256i diff = _mm256_setzero_si256();
#pragma GCC unroll 4
	for (unsigned off = 0; off < 128; off += 32) {
		__m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i_u *)(pa + off)),
					     _mm256_loadu_si256((const __m256i_u *)(pb + off)));
		diff = _mm256_or_si256(diff, _mm256_and_si256(x, _mm256_load_si256((const __m256i *)(shape_bytes + off))));
	}
	/* confidence only where has_confidence (equal in both, by now) says
	 * it was set: a caller may leave it unwritten */
	return _mm256_testz_si256(diff, diff) && a->metadata_count == b->metadata_count &&
	       (!a->has_confidence || memcmp(&a->confidence, &b->confidence, sizeof a->confidence) == 0);
}
#endif
