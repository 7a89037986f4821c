/*
 * inspect.c - read-only inspection of a bus segment (shm-dump).
 *
 * The inspector works on a private copy of the segment's bytes and trusts
 * none of them. Validation goes outward from the header: first whether the
 * header can be believed at all (size, magic, version, geometry), then each
 * region is checked to lie inside the copy before any struct in it is
 * looked at, and every index or offset read from a struct is checked
 * against the bounds it claims to respect. What does not hold becomes a
 * problem sentence; decoding carries on with whatever is still sound.
 *
 * It uses only the byte layout (shm/layout.h, shm/event_format.h, the pure
 * geometry and layout-hash functions of shm/segment.h) and the public API,
 * never another module's internals, so it keeps working on a segment the
 * rest of the library would refuse.
 */
#include "shmbus.h"

#include "event_format.h"
#include "layout.h"
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROBLEMS_MAX 256u

_Static_assert(SEG_CONSUMERS == SHMBUS_GROUP_MEMBERS_MAX, "consumer table sizes agree");
_Static_assert(SEG_HELD_MAX == SHMBUS_MAX_HELD, "held table sizes agree");
_Static_assert(SHMBUS_HELD_SEQ_MASK == SEG_DESC_SEQ_MASK && SHMBUS_HELD_REVOKED == SEG_DESC_REVOKED &&
		       SHMBUS_HELD_UNSEEN == SEG_DESC_UNSEEN && SHMBUS_HELD_RELEASING == SEG_DESC_RELEASING &&
		       SHMBUS_HELD_DROPPING == SEG_DESC_DROPPING && SHMBUS_HELD_TOMBSTONE == SEG_DESC_TOMBSTONE,
	       "the public names of a held descriptor's bits are the segment's");
_Static_assert(SEG_EVENT_META_MAX == SHMBUS_META_MAX, "metadata limits agree");
#define REGION_ALIGN 64u
#define PAGE_ALIGN 4096u

/* One committed event found in the ring. */
struct found_event {
	uint64_t pos;
	uint32_t slots;
	uint32_t refs;
	const struct seg_event *ev; /* into the copy, or `own` */
	void *own;		    /* contiguous copy of an event that wraps */
};

struct shmbus_inspect {
	unsigned char *bytes; /* the copy */
	size_t len;
	char path[256];
	char want_name[SHMBUS_NAME_MAX + 1]; /* bus name asked for, "" for a file */
	bool live;
	const char *fatal; /* points into problems[0] when set */

	char **problems;
	size_t problem_count;
	size_t problems_dropped;

	/* Set once the header is trusted. */
	const struct seg_header *hdr;
	uint32_t slot_shift;
	bool members_ok, pubs_ok, subs_ok, cells_ok, ctl_ok, data_ok;

	shmbus_inspect_member_t *members;
	size_t member_count;
	shmbus_inspect_pub_t *pubs;
	size_t pub_count;
	shmbus_inspect_sub_t *subs;
	size_t sub_count;
	shmbus_inspect_ring_t ring;
	/* Per slot index: descriptors (queued or held) that count a reference
	 * on it; meaningless once activity was seen mid-way (refs_unsure). */
	uint32_t *desc_refs;
	bool refs_unsure;
	struct found_event *events;
	size_t event_count;
};

/* ------------------------------------------------------------ problems */

/*
 * Record one problem, formatted like printf. Past PROBLEMS_MAX problems (or
 * when memory runs out) only the number of dropped ones is kept, so a
 * segment full of garbage cannot make the report itself unbounded.
 */
__attribute__((format(printf, 2, 3))) static void problem(shmbus_inspect_t *in, const char *fmt, ...)
{
	if (in->problem_count >= PROBLEMS_MAX) {
		in->problems_dropped++;
		return;
	}
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	char *copy = strdup(buf);
	if (!copy) {
		in->problems_dropped++;
		return;
	}
	in->problems[in->problem_count++] = copy;
}

/* Record why the header cannot be trusted; it becomes problem 0. */
__attribute__((format(printf, 2, 3))) static void fatal(shmbus_inspect_t *in, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	problem(in, "%s", buf);
	if (in->problem_count)
		in->fatal = in->problems[in->problem_count - 1];
	else
		in->fatal = "damaged header";
}

/* ------------------------------------------------------------- reading */

/*
 * Read the whole of fd into malloc'd memory. The size from fstat is only a
 * hint: the loop stops at end of file, so a file that shrinks meanwhile
 * yields a shorter copy, and one that grows is cut at the size seen.
 * Returns 0 or -errno.
 */
static int read_all(int fd, unsigned char **out, size_t *len)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2)
		return -EFBIG;
	size_t want = (size_t)st.st_size;
	unsigned char *buf = malloc(want ? want : 1);
	if (!buf)
		return -ENOMEM;
	size_t got = 0;
	while (got < want) {
		ssize_t n = read(fd, buf + got, want - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = -errno;
			free(buf);
			return err;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	*out = buf;
	*len = got;
	return 0;
}

/*
 * Open what the caller named: a valid bus name whose object exists is the
 * live bus, anything else is a file path. O_NONBLOCK so that naming a FIFO
 * cannot hang us before read_all refuses what is not a regular file.
 * Sets in->live and in->path. Returns an fd or -errno.
 */
static int open_target(shmbus_inspect_t *in, const char *name_or_path)
{
	if (!strchr(name_or_path, '/') && shmbus_name_check(name_or_path) == 0) {
		snprintf(in->path, sizeof in->path, "/dev/shm/shmbus.%s", name_or_path);
		int fd = open(in->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (fd >= 0) {
			in->live = true;
			snprintf(in->want_name, sizeof in->want_name, "%s", name_or_path);
			return fd;
		}
		if (errno != ENOENT)
			return -errno;
	}
	snprintf(in->path, sizeof in->path, "%s", name_or_path);
	int fd = open(name_or_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	return fd < 0 ? -errno : fd;
}

/* --------------------------------------------------------------- header */

/* Non-zero power of two. */
static bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

/* log2 of a power of two (the slot shift). */
static uint32_t log2_u32(uint32_t v)
{
	uint32_t s = 0;
	while ((1u << s) < v)
		s++;
	return s;
}

/*
 * Check the header fields everything else depends on: size, magic, version
 * and the configuration that fixes the geometry. Any failure here is fatal
 * (returns false): without them no offset can be believed.
 */
static bool check_header_identity(shmbus_inspect_t *in)
{
	if (in->len < SEG_HEADER_SIZE) {
		fatal(in, "truncated: %zu bytes, the header alone needs %u", in->len, SEG_HEADER_SIZE);
		return false;
	}
	const struct seg_header *h = (const struct seg_header *)in->bytes;
	if (h->magic != SEG_MAGIC) {
		fatal(in, "bad magic 0x%016llx: not a shmbus segment", (unsigned long long)h->magic);
		return false;
	}
	if (h->layout_version != SEG_LAYOUT_VERSION) {
		fatal(in, "layout version %u, this build reads %u", h->layout_version, SEG_LAYOUT_VERSION);
		return false;
	}
	return true;
}

/*
 * The config fields the geometry derives from, within the limits the
 * library itself enforces at create time. False (fatal) when any is not.
 */
static bool check_header_config(shmbus_inspect_t *in, const struct seg_header *h)
{
	if (!is_pow2(h->slot_count) || h->slot_count < SEG_MIN_SLOTS || h->slot_count > SEG_MAX_SLOTS) {
		fatal(in, "header: slot_count %u is not a power of two in [%u, %u]", h->slot_count, SEG_MIN_SLOTS,
		      SEG_MAX_SLOTS);
		return false;
	}
	if (!is_pow2(h->slot_size) || h->slot_size < SEG_MIN_SLOT_SIZE || h->slot_size > SEG_MAX_SLOT_SIZE) {
		fatal(in, "header: slot_size %u is not a power of two in [%u, %u]", h->slot_size, SEG_MIN_SLOT_SIZE,
		      SEG_MAX_SLOT_SIZE);
		return false;
	}
	if (h->max_subscribers < 1 || h->max_subscribers > SEG_MAX_SUBSCRIBERS) {
		fatal(in, "header: max_subscribers %u out of [1, %u]", h->max_subscribers, SEG_MAX_SUBSCRIBERS);
		return false;
	}
	if (h->max_members < 1 || h->max_members > SEG_MAX_MEMBERS) {
		fatal(in, "header: max_members %u out of [1, %u]", h->max_members, SEG_MAX_MEMBERS);
		return false;
	}
	if (h->queue_capacity != h->slot_count) {
		fatal(in, "header: queue_capacity %u differs from slot_count %u", h->queue_capacity, h->slot_count);
		return false;
	}
	if (memchr(h->name, '\0', sizeof h->name) == NULL) {
		fatal(in, "header: bus name is not NUL-terminated");
		return false;
	}
	return true;
}

/* Non-fatal header observations: state, name, stated size. */
static void check_header_misc(shmbus_inspect_t *in, const struct seg_header *h)
{
	if (h->state == SEG_STATE_INIT)
		problem(in, "header: state INIT: the bus is still being created (or its creator died)");
	else if (h->state != SEG_STATE_READY)
		problem(in, "header: unknown state %u", h->state);
	if (shmbus_name_check(h->name) != 0)
		problem(in, "header: stored bus name is not a valid bus name");
	else if (in->want_name[0] && strcmp(in->want_name, h->name) != 0)
		problem(in, "header: stored bus name \"%s\" differs from the object's \"%s\"", h->name, in->want_name);
	if (h->total_size != in->len)
		problem(in, "size: header states %llu bytes, %zu were read%s", (unsigned long long)h->total_size,
			in->len, h->total_size > in->len ? " (truncated)" : "");
	if (h->max_payload == 0)
		problem(in, "header: max_payload is 0");
}

/* -------------------------------------------------------------- regions */

struct region {
	const char *what;
	uint64_t off;
	uint64_t size; /* bytes the config requires */
	uint64_t align;
	bool *ok;
};

/*
 * Check that one region is aligned, does not overlap the one before it and
 * lies entirely inside the stated size and inside the bytes we actually
 * have. Sets *r->ok accordingly; *prev_end advances past the region.
 */
static void check_region(shmbus_inspect_t *in, const struct region *r, uint64_t *prev_end)
{
	const struct seg_header *h = in->hdr;
	*r->ok = false;
	if (r->off % r->align) {
		problem(in, "region %s: offset %llu is not %llu-byte aligned", r->what, (unsigned long long)r->off,
			(unsigned long long)r->align);
		return;
	}
	if (r->off < *prev_end) {
		problem(in, "region %s: offset %llu overlaps the previous region (ends at %llu)", r->what,
			(unsigned long long)r->off, (unsigned long long)*prev_end);
		return;
	}
	if (r->off > UINT64_MAX - r->size || r->off + r->size > h->total_size) {
		problem(in, "region %s: [%llu, +%llu) runs past the stated size %llu", r->what,
			(unsigned long long)r->off, (unsigned long long)r->size, (unsigned long long)h->total_size);
		return;
	}
	*prev_end = r->off + r->size;
	if (r->off + r->size > in->len) {
		problem(in, "region %s: [%llu, +%llu) is missing from the copy (%zu bytes)", r->what,
			(unsigned long long)r->off, (unsigned long long)r->size, in->len);
		return;
	}
	*r->ok = true;
}

#define GEO_CHECK(field)                                                                                               \
	do {                                                                                                           \
		if (h->field != g.field)                                                                               \
			problem(in, "geometry: " #field " is %llu, the config implies %llu",                           \
				(unsigned long long)h->field, (unsigned long long)g.field);                            \
	} while (0)

/*
 * Compare the stated layout hash and region offsets with what this build
 * computes from the stated config: a mismatch means another build wrote
 * the segment, or the header was damaged.
 */
static void check_geometry(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	if (h->layout_hash != seg_layout_hash())
		problem(in, "header: layout hash 0x%016llx differs from this build's 0x%016llx",
			(unsigned long long)h->layout_hash, (unsigned long long)seg_layout_hash());
	struct seg_params p = {
		.slot_count = h->slot_count,
		.slot_size = h->slot_size,
		.max_payload = h->max_payload,
		.max_subscribers = h->max_subscribers,
		.max_members = h->max_members,
		.mode = h->mode,
	};
	struct seg_geometry g;
	const char *why = "invalid";
	if (seg_geometry(&p, &g, &why) != 0) {
		problem(in, "header: config is invalid: %s", why);
		return;
	}
	GEO_CHECK(members_off);
	GEO_CHECK(pubs_off);
	GEO_CHECK(subs_off);
	GEO_CHECK(cells_off);
	GEO_CHECK(slot_ctl_off);
	GEO_CHECK(data_off);
	GEO_CHECK(total_size);
}

/* Check every region against the geometry the header's config implies. */
static void check_regions(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	uint64_t n = h->slot_count, s = h->max_subscribers, m = h->max_members;
	struct region regions[] = {
		{"members", h->members_off, m * sizeof(struct seg_member), REGION_ALIGN, &in->members_ok},
		{"publishers", h->pubs_off, m * sizeof(struct seg_pub), REGION_ALIGN, &in->pubs_ok},
		{"subscriptions", h->subs_off, s * SEG_SUB_SIZE, REGION_ALIGN, &in->subs_ok},
		{"queue cells", h->cells_off, s * SEG_QUEUE_CELL_CLASSES * n * sizeof(struct seg_cell), REGION_ALIGN,
		 &in->cells_ok},
		{"slot control", h->slot_ctl_off, n * sizeof(struct seg_slot_ctl), REGION_ALIGN, &in->ctl_ok},
		{"data", h->data_off, n * h->slot_size, PAGE_ALIGN, &in->data_ok},
	};
	uint64_t end = SEG_HEADER_SIZE;
	for (size_t i = 0; i < sizeof regions / sizeof regions[0]; i++)
		check_region(in, &regions[i], &end);
}

/* -------------------------------------------------------------- members */

/*
 * Ask the kernel whether member `index` is alive: its OFD write lock on
 * byte SEG_LOCK_MEMBER_BASE + index. Our own descriptor holds no lock, so
 * any lock reported belongs to someone else.
 */
static shmbus_liveness_t member_liveness(int fd, uint32_t index)
{
	if (fd < 0)
		return SHMBUS_LIVENESS_UNKNOWN;
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = (off_t)(SEG_LOCK_MEMBER_BASE + index);
	fl.l_len = 1;
	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return SHMBUS_LIVENESS_UNKNOWN;
	return fl.l_type == F_UNLCK ? SHMBUS_LIVENESS_DEAD : SHMBUS_LIVENESS_ALIVE;
}

/* Copy a fixed-size char field that may lack its NUL; reports if it does. */
static void copy_field(shmbus_inspect_t *in, char *dst, size_t cap, const char *src, size_t src_len, const char *what,
		       uint32_t index)
{
	size_t n = strnlen(src, src_len);
	if (n == src_len)
		problem(in, "%s[%u]: text field is not NUL-terminated", what, index);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * Every member entry in use, with liveness asked of the kernel when fd is
 * the live object (-1 for a copy: liveness unknown).
 */
static void decode_members(shmbus_inspect_t *in, int fd)
{
	const struct seg_header *h = in->hdr;
	if (!in->members_ok)
		return;
	in->members = calloc(h->max_members, sizeof *in->members);
	if (!in->members) {
		problem(in, "out of memory decoding members");
		return;
	}
	const struct seg_member *tab = (const struct seg_member *)(in->bytes + h->members_off);
	for (uint32_t i = 0; i < h->max_members; i++) {
		const struct seg_member *m = &tab[i];
		if (m->state == SEG_MEMBER_FREE)
			continue;
		if (m->state != SEG_MEMBER_ACTIVE && m->state != SEG_MEMBER_RECLAIMING)
			problem(in, "member[%u]: invalid state %u", i, m->state);
		shmbus_inspect_member_t *o = &in->members[in->member_count++];
		o->index = i;
		o->state = m->state;
		o->pid = m->pid;
		o->generation = m->generation;
		o->attach_ns = m->attach_ns;
		copy_field(in, o->label, sizeof o->label, m->label, sizeof m->label, "member", i);
		o->liveness = member_liveness(fd, i);
	}
}

/* The member entry that index refers to, if it is in use. */
static const shmbus_inspect_member_t *find_member(const shmbus_inspect_t *in, uint32_t index)
{
	for (size_t i = 0; i < in->member_count; i++)
		if (in->members[i].index == index)
			return &in->members[i];
	return NULL;
}

/* A reference from a publisher or consumer to member `index`. */
static void check_member_ref(shmbus_inspect_t *in, const char *what, uint32_t who, uint32_t index)
{
	if (index >= in->hdr->max_members)
		problem(in, "%s[%u]: member index %u out of range (max_members %u)", what, who, index,
			in->hdr->max_members);
	else if (in->members_ok && !find_member(in, index))
		problem(in, "%s[%u]: refers to member %u, which is free", what, who, index);
}

/* ----------------------------------------------------------- publishers */

/* Every publisher entry in use; its member must be in range and in use. */
static void decode_pubs(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	if (!in->pubs_ok)
		return;
	in->pubs = calloc(h->max_members, sizeof *in->pubs);
	if (!in->pubs) {
		problem(in, "out of memory decoding publishers");
		return;
	}
	const struct seg_pub *tab = (const struct seg_pub *)(in->bytes + h->pubs_off);
	for (uint32_t i = 0; i < h->max_members; i++) {
		const struct seg_pub *p = &tab[i];
		if (p->state == 0)
			continue;
		if (p->state != 1)
			problem(in, "publisher[%u]: invalid state %u", i, p->state);
		shmbus_inspect_pub_t *o = &in->pubs[in->pub_count++];
		o->index = i;
		o->member = p->member;
		o->member_gen = p->member_gen;
		copy_field(in, o->source, sizeof o->source, p->source, sizeof p->source, "publisher", i);
		o->routing = p->routing;
		in->refs_unsure |= (p->routing & 1) != 0; /* mid-route: counts move */
		o->published = p->published;
		o->publish_bytes = p->publish_bytes;
		o->block_waits = p->block_waits;
		o->block_timeouts = p->block_timeouts;
		o->lease_taken = p->lease_taken;
		check_member_ref(in, "publisher", i, p->member);
	}
}

/* --------------------------------------------------------------- filter */

/* Bounded string builder: appends until full, then silently stops. */
struct sbuf {
	char *p;
	size_t cap, len;
	unsigned budget; /* filter nodes still allowed to be visited */
};

__attribute__((format(printf, 2, 3))) static void sb_add(struct sbuf *b, const char *fmt, ...)
{
	if (b->len + 1 >= b->cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		b->len += (size_t)n < b->cap - b->len ? (size_t)n : b->cap - b->len - 1;
}

/* String at text offset `off` of a filter, or NULL if it does not end
 * inside the text area. */
static const char *filter_text(const struct seg_filter *f, uint32_t off)
{
	if (off >= f->text_len)
		return NULL;
	if (!memchr(f->text + off, '\0', f->text_len - off))
		return NULL;
	return f->text + off;
}

static const char *const set_names[] = {[SEG_F_NAMES] = "name", [SEG_F_SOURCES] = "source", [SEG_F_TARGETS] = "target"};

/* A name/source/target set: its strings, in order, from text offset node->text. */
static bool filter_set(const struct seg_filter *f, const struct seg_filter_node *nd, struct sbuf *b)
{
	if ((uint32_t)nd->first + nd->count > f->hash_count)
		return false;
	sb_add(b, "%s in {", set_names[nd->kind]);
	uint32_t off = nd->text;
	for (uint16_t i = 0; i < nd->count; i++) {
		const char *s = filter_text(f, off);
		if (!s)
			return false;
		sb_add(b, "%s\"%s\"", i ? "," : "", s);
		off += (uint32_t)strlen(s) + 1;
	}
	sb_add(b, "}");
	return true;
}

/* A type set; bits outside the five types make the node malformed. */
static bool filter_types(uint32_t mask, struct sbuf *b)
{
	if (mask & ~(uint32_t)SHMBUS_ALL_TYPES)
		return false;
	sb_add(b, "type in {");
	bool first = true;
	for (int t = SHMBUS_COMMAND; t <= SHMBUS_ERROR; t++) {
		if (!(mask & SHMBUS_TYPE_BIT(t)))
			continue;
		sb_add(b, "%s%s", first ? "" : ",", shmbus_type_name((shmbus_type_t)t));
		first = false;
	}
	sb_add(b, "}");
	return true;
}

/*
 * Render node `idx` of a filter tree. Depth and the number of nodes
 * visited are bounded by the node count, so cyclic or shared child ranges
 * cannot recurse forever or blow up. Returns false on the first malformed
 * node (or when the visit budget runs out).
 */
static bool filter_node(const struct seg_filter *f, uint32_t idx, unsigned depth, struct sbuf *b)
{
	if (idx >= f->node_count || depth > SEG_FILTER_NODES || b->budget == 0)
		return false;
	b->budget--;
	const struct seg_filter_node *nd = &f->nodes[idx];
	switch (nd->kind) {
	case SEG_F_ALL:
	case SEG_F_ANY:
		if ((uint32_t)nd->first + nd->count > f->node_count)
			return false;
		sb_add(b, "%s(", nd->kind == SEG_F_ALL ? "all" : "any");
		for (uint16_t i = 0; i < nd->count; i++) {
			if (i)
				sb_add(b, ", ");
			if (!filter_node(f, (uint32_t)nd->first + i, depth + 1, b))
				return false;
		}
		sb_add(b, ")");
		return true;
	case SEG_F_TYPES:
		return filter_types(nd->arg, b);
	case SEG_F_NAMES:
	case SEG_F_SOURCES:
	case SEG_F_TARGETS:
		return filter_set(f, nd, b);
	case SEG_F_MIN_PRIO:
		if (nd->arg < SHMBUS_PRIORITY_LOW || nd->arg > SHMBUS_PRIORITY_CRITICAL)
			return false;
		sb_add(b, "priority >= %s", shmbus_priority_name((shmbus_priority_t)nd->arg));
		return true;
	case SEG_F_PATTERN: {
		const char *re = filter_text(f, nd->arg);
		if (!re)
			return false;
		sb_add(b, "name ~ /%s/", re);
		return true;
	}
	case SEG_F_CUSTOM:
		sb_add(b, "custom#%u", nd->arg);
		return true;
	default:
		return false;
	}
}

/* Decode a subscription's filter into text; malformed ones are problems. */
static void decode_filter(shmbus_inspect_t *in, uint32_t sub, const struct seg_filter *f, char *out, size_t cap)
{
	/* A well-formed tree visits each node once; shared or cyclic child
	 * ranges in a damaged one would otherwise take exponential time. */
	struct sbuf b = {out, cap, 0, SEG_FILTER_NODES};
	out[0] = '\0';
	if (f->node_count == 0) {
		sb_add(&b, "*");
		return;
	}
	if (f->node_count > SEG_FILTER_NODES || f->hash_count > SEG_FILTER_HASHES || f->text_len > SEG_FILTER_TEXT) {
		problem(in, "sub[%u]: filter sizes out of range (nodes %u, hashes %u, text %u)", sub, f->node_count,
			f->hash_count, f->text_len);
		snprintf(out, cap, "<damaged>");
		return;
	}
	if (!filter_node(f, f->root, 0, &b)) {
		problem(in, "sub[%u]: filter tree is malformed", sub);
		snprintf(out, cap, "<damaged>");
	}
}

/* -------------------------------------------------------- subscriptions */

/* The control word of slot position pos (words are spread over lines). */
static uint64_t slot_ctl(const shmbus_inspect_t *in, uint64_t pos)
{
	const struct seg_slot_ctl *sc = (const struct seg_slot_ctl *)(in->bytes + in->hdr->slot_ctl_off);
	return sc[seg_ctl_index(pos, in->hdr->slot_count)].ctl;
}

/* Subscriptions holding the event in slot position pos: the bits set in
 * its holder words. */
static uint32_t slot_refs(const shmbus_inspect_t *in, uint64_t pos)
{
	const struct seg_slot_ctl *sc = (const struct seg_slot_ctl *)(in->bytes + in->hdr->slot_ctl_off);
	const uint64_t *h = sc[seg_ctl_index(pos, in->hdr->slot_count)].holders;
	uint32_t n = 0;
	for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++)
		n += (uint32_t)__builtin_popcountll(h[w]);
	return n;
}

/* One more descriptor counts a reference on the slot of seq. */
static void count_ref(shmbus_inspect_t *in, uint64_t seq)
{
	if (in->desc_refs)
		in->desc_refs[seq & (in->hdr->slot_count - 1)]++;
}

/*
 * A held descriptor must name an event still in the ring: before the claim
 * position, no more than a ring behind it, on a committed slot of the
 * right lap.
 */
static void check_held(shmbus_inspect_t *in, uint32_t sub, uint32_t c, uint64_t desc)
{
	const struct seg_header *h = in->hdr;
	uint64_t seq = desc & SEG_DESC_SEQ_MASK;
	if (seq >= h->claim_pos) {
		problem(in, "sub[%u].consumer[%u]: held seq %llu lies past the claim position %llu", sub, c,
			(unsigned long long)seq, (unsigned long long)h->claim_pos);
		return;
	}
	if (h->claim_pos - seq > h->slot_count) {
		problem(in, "sub[%u].consumer[%u]: held seq %llu lies outside the ring (claim position %llu)", sub, c,
			(unsigned long long)seq, (unsigned long long)h->claim_pos);
		return;
	}
	if (!in->ctl_ok)
		return;
	uint64_t ctl = slot_ctl(in, seq);
	if (seg_ctl_state(ctl) != SEG_SLOT_COMMITTED || seg_ctl_lap(ctl) != seg_lap_of(seq, in->slot_shift))
		problem(in, "sub[%u].consumer[%u]: held seq %llu is not a committed event of that lap", sub, c,
			(unsigned long long)seq);
	else if (desc & SEG_DESC_HOLDS_REF)
		count_ref(in, seq);
}

/*
 * The consumers of a subscription and every event they hold, each held
 * descriptor checked against the ring.
 */
static void decode_consumers(shmbus_inspect_t *in, const struct seg_sub *s, shmbus_inspect_sub_t *o)
{
	for (uint32_t c = 0; c < SEG_CONSUMERS; c++) {
		const struct seg_consumer *sc = &s->consumers[c];
		if (sc->state == SEG_CONSUMER_FREE || (s->state == SEG_SUB_FREE && sc->state != SEG_CONSUMER_DETACHED))
			continue;
		if (sc->state != SEG_CONSUMER_ACTIVE && sc->state != SEG_CONSUMER_DETACHED)
			problem(in, "sub[%u].consumer[%u]: invalid state %u", o->index, c, sc->state);
		shmbus_inspect_consumer_t *oc = &o->consumers[o->consumer_count++];
		oc->index = c;
		oc->member = sc->member;
		oc->member_gen = sc->member_gen;
		oc->pid = sc->pid;
		oc->delivered = sc->delivered;
		oc->detached = sc->state == SEG_CONSUMER_DETACHED;
		if (sc->state == SEG_CONSUMER_ACTIVE)
			o->delivered += sc->delivered;
		if (sc->member >= in->hdr->max_members)
			problem(in, "sub[%u].consumer[%u]: member index %u out of range", o->index, c, sc->member);
		for (uint32_t k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t d = sc->held[k];
			if (d == 0)
				continue;
			oc->held[oc->held_count++] = d;
			if ((d & SEG_DESC_REVOKED) || seg_desc_dropping(d)) {
				/* won by a party clearing its bit (a live one, or one
				 * that died before its store of 0): mid-way */
				in->refs_unsure = true;
				continue;
			}
			o->held++;
			if (!(d & SEG_DESC_TOMBSTONE))
				check_held(in, o->index, c, d);
		}
	}
}

/* What a queued descriptor's slot says of it. */
enum queued_desc {
	QUEUED_HOLDS,	/* a committed event of its lap: it counts a reference */
	QUEUED_PENDING, /* no reference to count, and nothing wrong */
	QUEUED_BAD,	/* a problem was recorded */
};

/*
 * A queued descriptor must, like a held one, name a committed event still
 * in the ring, or one whose publisher is still routing it (CLAIMED), or
 * one whose publisher died before committing it: reclaim turned the slot
 * ABORTED and left the descriptor for its consumer to drop (see "Crash
 * recovery" in docs/ARCHITECTURE.md).
 */
static enum queued_desc check_queued_desc(shmbus_inspect_t *in, uint32_t sub, unsigned k, uint64_t pos, uint64_t desc)
{
	const struct seg_header *h = in->hdr;
	uint64_t seq = desc & SEG_DESC_SEQ_MASK;
	if (seq >= h->claim_pos || h->claim_pos - seq > h->slot_count) {
		problem(in, "sub[%u]: queued seq %llu (class %u, position %llu) lies outside the ring", sub,
			(unsigned long long)seq, k, (unsigned long long)pos);
		return QUEUED_BAD;
	}
	if (!in->ctl_ok)
		return QUEUED_PENDING;
	uint64_t ctl = slot_ctl(in, seq);
	if (seg_ctl_lap(ctl) == seg_lap_of(seq, in->slot_shift)) {
		switch (seg_ctl_state(ctl)) {
		case SEG_SLOT_COMMITTED:
			return QUEUED_HOLDS;
		case SEG_SLOT_CLAIMED:
			in->refs_unsure = true; /* routed, not yet committed */
			return QUEUED_PENDING;
		case SEG_SLOT_ABORTED:
			return QUEUED_PENDING;
		}
	}
	problem(in, "sub[%u]: queued seq %llu is not a committed event of that lap", sub, (unsigned long long)seq);
	return QUEUED_BAD;
}

/*
 * Walk one queue lap from the head hint: a cell whose turn word says FULL
 * for its position holds a queued descriptor; a BUSY one is a writer or
 * taker at work (then reference counts cannot be compared exactly). The
 * hints may lag, never lead, so this lap covers every queued cell.
 */
static void scan_queue(shmbus_inspect_t *in, const struct seg_sub *s, const shmbus_inspect_sub_t *o, unsigned k)
{
	const struct seg_header *h = in->hdr;
	uint64_t q = h->queue_capacity;
	const struct seg_cell *cells;
	if (k == SEG_QUEUE_REDELIVER) {
		q = SEG_REDELIVER_CELLS; /* in the record itself, checked with it */
		cells = s->redeliver_cells;
	} else {
		if (!in->cells_ok)
			return;
		cells = (const struct seg_cell *)(in->bytes + h->cells_off) +
			((uint64_t)o->index * SEG_QUEUE_CELL_CLASSES + k) * q;
	}
	unsigned reported = 0;
	for (uint64_t p = o->head[k]; p < o->head[k] + q; p++) {
		const struct seg_cell *c = &cells[seg_cell_index(p, q)];
		if (c->turn & SEG_TURN_BUSY) {
			in->refs_unsure = true;
			continue;
		}
		if (c->turn != seg_turn_full(p) || (c->desc & SEG_DESC_TOMBSTONE))
			continue;
		if (reported >= 4) {
			in->refs_unsure = true; /* the count below would be partial */
			continue;
		}
		enum queued_desc v = check_queued_desc(in, o->index, k, p, c->desc);
		if (v == QUEUED_HOLDS && (c->desc & SEG_DESC_HOLDS_REF))
			count_ref(in, c->desc & SEG_DESC_SEQ_MASK);
		else if (v == QUEUED_BAD)
			reported++;
	}
}

/* Queue ends of one class: tail never behind head, never a ring ahead. */
static void decode_queue(shmbus_inspect_t *in, const struct seg_sub *s, shmbus_inspect_sub_t *o)
{
	_Static_assert(SEG_QUEUE_CLASSES == sizeof o->head / sizeof o->head[0], "one head per queue");
	for (unsigned k = 0; k < SEG_QUEUE_CLASSES; k++) {
		const struct seg_queue_ends *e = seg_sub_ends_const(s, k);
		uint64_t cap = k == SEG_QUEUE_REDELIVER ? SEG_REDELIVER_CELLS : in->hdr->queue_capacity;
		o->head[k] = e->head;
		o->tail[k] = e->tail;
		if (k != SEG_QUEUE_REDELIVER)
			o->routed += o->tail[k]; /* survivors' give-backs are not routings */
		if (o->tail[k] < o->head[k]) {
			problem(in, "sub[%u]: queue class %u tail %llu is behind head %llu", o->index, k,
				(unsigned long long)o->tail[k], (unsigned long long)o->head[k]);
			continue;
		}
		uint64_t depth = o->tail[k] - o->head[k];
		if (depth > cap)
			problem(in, "sub[%u]: queue class %u holds %llu, more than its capacity %llu", o->index, k,
				(unsigned long long)depth, (unsigned long long)cap);
		o->queue_depth += depth;
		scan_queue(in, s, o, k);
	}
	/* queue positions carry on across reuses of the record: count from
	 * where they stood when this subscription took it, as the metrics do */
	if (s->routed_base <= o->routed)
		o->routed -= s->routed_base;
	else
		problem(in, "sub[%u]: queue tails %llu are behind where they stood when the record was taken (%llu)",
			o->index, (unsigned long long)o->routed, (unsigned long long)s->routed_base);
}

/*
 * State, flags, names and owner of subscription i, with their consistency:
 * known flags only, group flag iff a group name, owner iff plain.
 */
static void decode_sub_identity(shmbus_inspect_t *in, uint32_t i, const struct seg_sub *s, shmbus_inspect_sub_t *o)
{
	const uint32_t known =
		SEG_SUB_POLICY_LAG | SEG_SUB_DURABLE | SEG_SUB_GROUP | SEG_SUB_PAUSED | SEG_SUB_DEMOTED | SEG_SUB_CATCHUP;
	o->index = i;
	o->state = s->state;
	o->flags = s->flags;
	o->id = (s->generation << 16) | i;
	o->owner = s->owner;
	o->created_ns = s->created_ns;
	o->durable = s->flags & SEG_SUB_DURABLE;
	o->grouped = s->flags & SEG_SUB_GROUP;
	o->paused = s->flags & SEG_SUB_PAUSED;
	o->demoted = s->flags & SEG_SUB_DEMOTED;
	o->policy = (s->flags & SEG_SUB_POLICY_LAG) ? SHMBUS_POLICY_LAG : SHMBUS_POLICY_BLOCK;
	copy_field(in, o->subscriber_id, sizeof o->subscriber_id, s->subscriber, sizeof s->subscriber, "sub", i);
	copy_field(in, o->group, sizeof o->group, s->group, sizeof s->group, "sub", i);
	if (s->state != SEG_SUB_ACTIVE && s->state != SEG_SUB_INIT)
		problem(in, "sub[%u]: invalid state %u", i, s->state);
	if (s->flags & ~known)
		problem(in, "sub[%u]: unknown flag bits 0x%x", i, s->flags & ~known);
	if (o->grouped != (o->group[0] != '\0'))
		problem(in, "sub[%u]: group flag and group name disagree", i);
	if ((s->flags & SEG_SUB_CATCHUP) && !o->durable)
		problem(in, "sub[%u]: catch-up flag on a subscription that is not durable", i);
	bool ownerless = o->durable || o->grouped;
	if (ownerless && s->owner != SEG_SUB_NO_OWNER)
		problem(in, "sub[%u]: durable/group subscription has an owner (%u)", i, s->owner);
	else if (!ownerless && s->owner >= in->hdr->max_members)
		problem(in, "sub[%u]: owner member %u out of range", i, s->owner);
}

/* Whether a record has consumer entries a removal left DETACHED. */
static bool has_detached(const struct seg_sub *s)
{
	for (uint32_t c = 0; c < SEG_CONSUMERS; c++)
		if (s->consumers[c].state == SEG_CONSUMER_DETACHED)
			return true;
	return false;
}

/*
 * A removed subscription whose record is free but still has DETACHED
 * consumer entries: their takers have yet to drop what they took before
 * they saw the removal (or reclaim, for a dead one). Listed with state 0
 * and only those consumers, so their holds are shown and counted (else the
 * holder bits they keep would read as leaks); its other fields are stale.
 */
static void decode_removed(shmbus_inspect_t *in, uint32_t i, const struct seg_sub *s)
{
	shmbus_inspect_sub_t *o = &in->subs[in->sub_count++];
	o->index = i;
	o->state = SEG_SUB_FREE;
	o->id = (s->generation << 16) | i;
	o->owner = 0xFFFFFFFFu;
	copy_field(in, o->subscriber_id, sizeof o->subscriber_id, s->subscriber, sizeof s->subscriber, "sub", i);
	decode_consumers(in, s, o);
}

/*
 * Every subscription record in use: identity, counters, filter, queues and
 * consumers; and removed ones whose consumers still hold what they took.
 */
static void decode_subs(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	if (!in->subs_ok)
		return;
	in->subs = calloc(h->max_subscribers, sizeof *in->subs);
	if (!in->subs) {
		problem(in, "out of memory decoding subscriptions");
		return;
	}
	if (in->ctl_ok)
		in->desc_refs = calloc(h->slot_count, sizeof *in->desc_refs);
	for (uint32_t i = 0; i < h->max_subscribers; i++) {
		const struct seg_sub *s =
			(const struct seg_sub *)(in->bytes + h->subs_off + (uint64_t)i * SEG_SUB_SIZE);
		if (s->state == SEG_SUB_FREE) {
			if (has_detached(s))
				decode_removed(in, i, s);
			continue;
		}
		shmbus_inspect_sub_t *o = &in->subs[in->sub_count++];
		decode_sub_identity(in, i, s, o);
		o->delivered = s->delivered_total; /* consumers' shares are added below */
		o->filtered = s->filtered;
		o->missed = s->missed;
		o->dropped_full = s->dropped_full;
		o->demotions = s->demotions;
		o->redelivered = s->redelivered;
		o->revoked = s->revoked;
		o->catchup = s->flags & SEG_SUB_CATCHUP;
		o->gap_lo = s->gap_lo;
		o->gap_hi = s->gap_hi;
		o->gap_owed = (int64_t)s->gap_owed;
		o->gap_dropped = s->gap_dropped;
		o->gap_served = s->gap_served;
		decode_filter(in, i, &s->filter, o->filter, sizeof o->filter);
		decode_queue(in, s, o);
		decode_consumers(in, s, o);
	}
}

/* ----------------------------------------------------------------- ring */

/*
 * Whether slot index i carries a lap tag newer than the latest position
 * with that index below the claim position (or any lap at all when no such
 * position was claimed yet). Lap 0 is the never-written word.
 */
static bool lap_ahead(const shmbus_inspect_t *in, uint64_t i, uint64_t lap)
{
	uint64_t claim = in->hdr->claim_pos;
	if (lap == 0)
		return false;
	if (claim <= i)
		return true;
	uint64_t latest = i + (((claim - 1 - i) >> in->slot_shift) << in->slot_shift);
	return lap > seg_lap_of(latest, in->slot_shift);
}

/*
 * Whether the references of committed slot index i differ from the
 * descriptors found that count one: a leak (or a double release). Only
 * asked when nothing was caught mid-way and the slot holds the latest lap
 * below the claim position.
 */
static bool refs_disagree(const shmbus_inspect_t *in, uint64_t i, uint64_t ctl)
{
	uint64_t claim = in->hdr->claim_pos;
	if (in->refs_unsure || !in->desc_refs || !in->cells_ok || claim <= i)
		return false;
	uint64_t latest = i + (((claim - 1 - i) >> in->slot_shift) << in->slot_shift);
	if (seg_ctl_lap(ctl) != seg_lap_of(latest, in->slot_shift))
		return false;
	return slot_refs(in, i) != in->desc_refs[i];
}

/* Count slot states; a slot whose lap tag is ahead of the claim position,
 * or with more references than subscriptions exist, is a problem. */
static void decode_ring(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	shmbus_inspect_ring_t *r = &in->ring;
	r->slots = h->slot_count;
	r->claim_pos = h->claim_pos;
	if (!in->ctl_ok)
		return;
	unsigned reported = 0;
	for (uint64_t i = 0; i < h->slot_count; i++) {
		uint64_t ctl = slot_ctl(in, i);
		uint32_t state = seg_ctl_state(ctl);
		/* a claimed slot's low bits name its claimer; holders count the
		 * subscriptions holding a committed one */
		bool names_claimer = state == SEG_SLOT_CLAIMED || seg_ctl_leased(ctl);
		uint32_t refs = state == SEG_SLOT_CLAIMED ? seg_ctl_claimer(ctl) : slot_refs(in, i);
		r->free += state == SEG_SLOT_FREE;
		r->leased += (uint64_t)seg_ctl_leased(ctl);
		r->claimed += state == SEG_SLOT_CLAIMED;
		r->committed += state == SEG_SLOT_COMMITTED;
		r->aborted += state == SEG_SLOT_ABORTED;
		if (state != SEG_SLOT_CLAIMED) { /* a claimed slot's refs name its claimer */
			r->referenced += refs > 0;
			r->refs += refs;
		}
		if (reported >= 8)
			continue;
		if (names_claimer && seg_ctl_claimer(ctl) > h->max_members) {
			problem(in, "slot %llu: %s by publisher %d, out of range", (unsigned long long)i,
				state == SEG_SLOT_CLAIMED ? "claimed" : "leased", (int)seg_ctl_claimer(ctl) - 1);
			reported++;
		} else if (state == SEG_SLOT_CLAIMED && refs == 0) {
			problem(in, "slot %llu: claimed by publisher -1, out of range", (unsigned long long)i);
			reported++;
		} else if (state != SEG_SLOT_CLAIMED && refs > h->max_subscribers) {
			problem(in, "slot %llu: %u references, more than the %u subscriptions", (unsigned long long)i,
				refs, h->max_subscribers);
			reported++;
		}
		if (state == SEG_SLOT_COMMITTED && refs_disagree(in, i, ctl)) {
			problem(in, "slot %llu: %u references, but %u queued or held descriptors count one",
				(unsigned long long)i, refs, in->desc_refs[i]);
			reported++;
		}
		if (lap_ahead(in, i, seg_ctl_lap(ctl))) {
			problem(in, "slot %llu: lap tag %llu lies ahead of the claim position %llu",
				(unsigned long long)i, (unsigned long long)seg_ctl_lap(ctl),
				(unsigned long long)h->claim_pos);
			reported++;
		}
	}
}

/*
 * The event whose first slot is position pos, made contiguous: in place
 * when it does not run past the end of the data region, else copied into
 * fe->own with the wrap undone. Returns the number of readable bytes at
 * fe->ev, or 0 when even the size word is implausible.
 */
static size_t event_bytes(shmbus_inspect_t *in, uint64_t pos, struct found_event *fe)
{
	const struct seg_header *h = in->hdr;
	uint64_t ring = (uint64_t)h->slot_count * h->slot_size;
	uint64_t at = (pos & (h->slot_count - 1)) * h->slot_size;
	const unsigned char *data = in->bytes + h->data_off;
	uint32_t size;
	memcpy(&size, data + at, sizeof size);
	if (size < SEG_EVENT_FIXED || size > ring)
		return 0;
	if (at + size <= ring) {
		fe->ev = (const struct seg_event *)(data + at);
		return (size_t)(ring - at);
	}
	fe->own = malloc(size);
	if (!fe->own)
		return 0;
	size_t first = (size_t)(ring - at);
	memcpy(fe->own, data + at, first);
	memcpy((unsigned char *)fe->own + first, data, size - first);
	fe->ev = fe->own;
	return size;
}

/*
 * Look at position pos: if its slot holds a committed event of the right
 * lap, check it with seg_event_check before anything else is read, and
 * keep it. A committed slot that fails the check is a problem.
 */
static void consider_event(shmbus_inspect_t *in, uint64_t pos)
{
	uint64_t ctl = slot_ctl(in, pos);
	if (seg_ctl_state(ctl) != SEG_SLOT_COMMITTED || seg_ctl_lap(ctl) != seg_lap_of(pos, in->slot_shift))
		return;
	struct found_event fe = {.pos = pos, .refs = slot_refs(in, pos)};
	size_t avail = event_bytes(in, pos, &fe);
	const char *why = "size word out of bounds";
	if (!avail || seg_event_check(fe.ev, avail, &why) != 0) {
		problem(in, "event at seq %llu: %s", (unsigned long long)pos, why);
		free(fe.own);
		return;
	}
	if (fe.ev->seq != pos) {
		problem(in, "event at seq %llu: stored seq is %llu", (unsigned long long)pos,
			(unsigned long long)fe.ev->seq);
		free(fe.own);
		return;
	}
	fe.slots = (uint32_t)((fe.ev->size + in->hdr->slot_size - 1) / in->hdr->slot_size);
	in->events[in->event_count++] = fe;
}

/* Walk the last ring's worth of positions, oldest first, collecting events. */
static void decode_events(shmbus_inspect_t *in)
{
	const struct seg_header *h = in->hdr;
	if (!in->ctl_ok || !in->data_ok || h->claim_pos == 0)
		return;
	uint64_t n = h->slot_count;
	uint64_t start = h->claim_pos > n ? h->claim_pos - n : 0;
	in->events = calloc(h->claim_pos - start, sizeof *in->events);
	if (!in->events) {
		problem(in, "out of memory decoding events");
		return;
	}
	for (uint64_t pos = start; pos < h->claim_pos; pos++)
		consider_event(in, pos);
	in->ring.events = in->event_count;
}

/* --------------------------------------------------------------- public */

/* Decode everything once the header is trusted; fd may be -1 (a file). */
static void decode_all(shmbus_inspect_t *in, int fd)
{
	if (!check_header_identity(in))
		return;
	const struct seg_header *h = (const struct seg_header *)in->bytes;
	if (!check_header_config(in, h))
		return;
	in->hdr = h;
	in->slot_shift = log2_u32(h->slot_count);
	check_header_misc(in, h);
	check_geometry(in);
	check_regions(in);
	decode_members(in, in->live ? fd : -1);
	decode_pubs(in);
	decode_subs(in);
	decode_ring(in);
	decode_events(in);
}

/*
 * shmbus_inspect_open - read a copy of a segment and check it. The
 * inspector is returned whenever the bytes could be read at all, so a
 * damaged segment can still be reported on; only failing to read them is an
 * error. Returns 0, -ENOENT, -EACCES, -EINVAL (not a regular file), -EFBIG
 * or -ENOMEM.
 */
int shmbus_inspect_open(const char *name_or_path, shmbus_inspect_t **out)
{
	if (!name_or_path || !out || !*name_or_path)
		return -EINVAL;
	*out = NULL;
	shmbus_inspect_t *in = calloc(1, sizeof *in);
	if (!in)
		return -ENOMEM;
	in->problems = calloc(PROBLEMS_MAX, sizeof *in->problems);
	if (!in->problems) {
		free(in);
		return -ENOMEM;
	}
	int fd = open_target(in, name_or_path);
	if (fd < 0) {
		shmbus_inspect_close(in);
		return fd;
	}
	int rc = read_all(fd, &in->bytes, &in->len);
	if (rc < 0) {
		close(fd);
		shmbus_inspect_close(in);
		return rc;
	}
	decode_all(in, fd);
	close(fd);
	*out = in;
	return 0;
}

/* NULL-safe; frees the copy and everything decoded from it. */
void shmbus_inspect_close(shmbus_inspect_t *in)
{
	if (!in)
		return;
	for (size_t i = 0; i < in->event_count; i++)
		free(in->events[i].own);
	free(in->events);
	free(in->desc_refs);
	for (size_t i = 0; i < in->problem_count; i++)
		free(in->problems[i]);
	free(in->problems);
	free(in->members);
	free(in->pubs);
	free(in->subs);
	free(in->bytes);
	free(in);
}

/* Why the header cannot be trusted, or NULL when it can. */
const char *shmbus_inspect_error(const shmbus_inspect_t *in)
{
	return in->hdr ? NULL : (in->fatal ? in->fatal : "unreadable segment");
}

/* Problems found, plus one summary line when some had to be dropped. */
size_t shmbus_inspect_problem_count(const shmbus_inspect_t *in)
{
	return in->problem_count + (in->problems_dropped ? 1 : 0);
}

/* Problem i as a sentence, or NULL past the end. */
const char *shmbus_inspect_problem(const shmbus_inspect_t *in, size_t i)
{
	if (i < in->problem_count)
		return in->problems[i];
	if (i == in->problem_count && in->problems_dropped)
		return "... more problems were found and not recorded";
	return NULL;
}

int shmbus_inspect_route_fence_full(const shmbus_inspect_t *in)
{
	if (!in || !in->hdr)
		return -EBADMSG;
	return (in->hdr->route_fence & SEG_ROUTE_FENCE_FULL) != 0;
}

/* The header's fields as stated; -EBADMSG when they cannot be trusted. */
int shmbus_inspect_header(const shmbus_inspect_t *in, shmbus_inspect_header_t *out)
{
	memset(out, 0, sizeof *out);
	snprintf(out->path, sizeof out->path, "%s", in->path);
	out->live = in->live;
	out->file_size = in->len;
	const struct seg_header *h = in->hdr;
	if (!h)
		return -EBADMSG;
	size_t name_len = strnlen(h->name, SHMBUS_NAME_MAX);
	memcpy(out->name, h->name, name_len);
	out->name[name_len] = '\0';
	out->magic = h->magic;
	out->layout_version = h->layout_version;
	out->state = h->state;
	out->layout_hash = h->layout_hash;
	out->total_size = h->total_size;
	out->incarnation = h->incarnation;
	out->created_ns = h->created_ns;
	out->config = (shmbus_config_t){
		.slots = h->slot_count,
		.slot_size = h->slot_size,
		.max_payload = h->max_payload,
		.max_subscribers = h->max_subscribers,
		.max_members = h->max_members,
		.mode = h->mode,
		.block_timeout_ns = h->block_timeout_ns,
		.stall_timeout_ns = h->stall_timeout_ns,
		.reclaim_timeout_ns = h->reclaim_timeout_ns,
	};
	out->queue_capacity = h->queue_capacity;
	out->flags = h->flags;
	out->members_off = h->members_off;
	out->pubs_off = h->pubs_off;
	out->subs_off = h->subs_off;
	out->cells_off = h->cells_off;
	out->slot_ctl_off = h->slot_ctl_off;
	out->data_off = h->data_off;
	out->claim_pos = h->claim_pos;
	out->route_epoch = h->route_epoch;
	out->space_waiters = h->space_waiters;
	out->reclaims = h->reclaims;
	out->aborted_claims = h->aborted_claims;
	out->demotions = h->demotions;
	out->recovered_events = h->recovered_events;
	return 0;
}

/* Members in use, and member i of them (0 or -ERANGE). */
size_t shmbus_inspect_member_count(const shmbus_inspect_t *in) { return in->member_count; }

int shmbus_inspect_member(const shmbus_inspect_t *in, size_t i, shmbus_inspect_member_t *out)
{
	if (i >= in->member_count)
		return -ERANGE;
	*out = in->members[i];
	return 0;
}

/* Publishers in use, and publisher i of them (0 or -ERANGE). */
size_t shmbus_inspect_pub_count(const shmbus_inspect_t *in) { return in->pub_count; }

int shmbus_inspect_pub(const shmbus_inspect_t *in, size_t i, shmbus_inspect_pub_t *out)
{
	if (i >= in->pub_count)
		return -ERANGE;
	*out = in->pubs[i];
	return 0;
}

/* Subscriptions in use, and subscription i of them (0 or -ERANGE). */
size_t shmbus_inspect_sub_count(const shmbus_inspect_t *in) { return in->sub_count; }

int shmbus_inspect_sub(const shmbus_inspect_t *in, size_t i, shmbus_inspect_sub_t *out)
{
	if (i >= in->sub_count)
		return -ERANGE;
	*out = in->subs[i];
	return 0;
}

/* Ring occupancy; -EBADMSG when the slot control region was unreadable. */
int shmbus_inspect_ring(const shmbus_inspect_t *in, shmbus_inspect_ring_t *out)
{
	*out = in->ring;
	return in->hdr && in->ctl_ok ? 0 : -EBADMSG;
}

/* Committed events that passed seg_event_check, oldest first. */
size_t shmbus_inspect_event_count(const shmbus_inspect_t *in) { return in->event_count; }

/* Fill the flat view of a checked event; strings come from the event. */
static void view_event(const struct found_event *fe, shmbus_inspect_event_t *o)
{
	const struct seg_event *ev = fe->ev;
	memset(o, 0, sizeof *o);
	o->seq = ev->seq;
	o->slots = fe->slots;
	o->refs = fe->refs;
	memcpy(o->id.bytes, ev->id, 16);
	memcpy(o->correlation_id.bytes, ev->correlation_id, 16);
	memcpy(o->causation_id.bytes, ev->causation_id, 16);
	o->type = (shmbus_type_t)ev->type;
	o->priority = (shmbus_priority_t)ev->priority;
	o->status = (shmbus_status_t)ev->status;
	o->created_ns = ev->created_ns;
	o->published_ns = ev->published_ns;
	o->expires_ns = ev->expires_ns;
	o->schema_version = ev->schema_version;
	o->retry_count = ev->retry_count;
	o->max_retries = ev->max_retries;
	o->content_type = (shmbus_content_t)ev->content_type;
	o->flags = ev->flags;
	o->has_confidence = (ev->flags & SEG_EVF_HAS_CONFIDENCE) && !isnan(ev->confidence);
	o->confidence = o->has_confidence ? ev->confidence : 0.0f;
	o->name = seg_event_string(ev, SEG_STR_NAME);
	o->source = seg_event_string(ev, SEG_STR_SOURCE);
	o->target = seg_event_string(ev, SEG_STR_TARGET);
	o->conversation_id = seg_event_string(ev, SEG_STR_CONVERSATION);
	o->user_id = seg_event_string(ev, SEG_STR_USER);
	o->intent = seg_event_string(ev, SEG_STR_INTENT);
	o->decision_id = seg_event_string(ev, SEG_STR_DECISION);
	for (unsigned k = 0; k < ev->meta_count && k < SHMBUS_META_MAX; k++)
		if (seg_event_meta(ev, k, &o->metadata[k].key, &o->metadata[k].value) == 0)
			o->metadata_count = k + 1;
	o->payload = (const unsigned char *)ev + ev->payload_off;
	o->payload_len = ev->payload_len;
}

/* Event i (0 = oldest) flattened; strings point into the copy. 0 or -ERANGE. */
int shmbus_inspect_event(const shmbus_inspect_t *in, size_t i, shmbus_inspect_event_t *out)
{
	if (i >= in->event_count)
		return -ERANGE;
	view_event(&in->events[i], out);
	return 0;
}
