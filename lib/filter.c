/*
 * filter.c - filters as users build them (a tree in the subscriber's
 * memory) and their compiled, shared form (struct seg_filter).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct shmbus_filter {
	enum seg_filter_kind kind;
	uint32_t arg;
	char **strs;
	size_t nstr;
	struct shmbus_filter **kids;
	size_t nkids;
	shmbus_predicate_t fn;
	void *fn_arg;
};

SHMBUS_API void shmbus_filter_free(shmbus_filter_t *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->nstr; i++)
		free(f->strs[i]);
	free(f->strs);
	for (size_t i = 0; i < f->nkids; i++)
		shmbus_filter_free(f->kids[i]);
	free(f->kids);
	free(f);
}

static int new_node(enum seg_filter_kind kind, shmbus_filter_t **out)
{
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	shmbus_filter_t *f = calloc(1, sizeof *f);
	if (!f)
		return shmbus__fail(ENOMEM, "out of memory");
	f->kind = kind;
	*out = f;
	return 0;
}

SHMBUS_API int shmbus_filter_types(uint32_t type_mask, shmbus_filter_t **out)
{
	if (!type_mask || (type_mask & ~(uint32_t)SHMBUS_ALL_TYPES))
		return shmbus__fail(EINVAL, "type mask 0x%x must be a non-empty set of SHMBUS_TYPE_BIT()s", type_mask);
	int rc = new_node(SEG_F_TYPES, out);
	if (rc == 0)
		(*out)->arg = type_mask;
	return rc;
}

static int string_set(enum seg_filter_kind kind, const char *what, const char *const *v, size_t n, shmbus_filter_t **out)
{
	if (!v || n == 0)
		return shmbus__fail(EINVAL, "%s filter needs at least one %s", what, what);
	if (n > SHMBUS_FILTER_SET_MAX)
		return shmbus__fail(E2BIG, "%s filter has %zu entries, at most %d", what, n, SHMBUS_FILTER_SET_MAX);
	for (size_t i = 0; i < n; i++) {
		if (!v[i] || !v[i][0])
			return shmbus__fail(EINVAL, "%s filter entry %zu is empty", what, i);
		if (strnlen(v[i], SHMBUS_STR_MAX + 1) > SHMBUS_STR_MAX)
			return shmbus__fail(ENAMETOOLONG, "%s filter entry '%.20s...' is longer than %d bytes", what, v[i],
					    SHMBUS_STR_MAX);
	}
	int rc = new_node(kind, out);
	if (rc < 0)
		return rc;
	shmbus_filter_t *f = *out;
	f->strs = calloc(n, sizeof *f->strs);
	if (!f->strs)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		if (!(f->strs[i] = strdup(v[i])))
			goto nomem;
		f->nstr++;
	}
	return 0;
nomem:
	shmbus_filter_free(f);
	*out = NULL;
	return shmbus__fail(ENOMEM, "out of memory");
}

SHMBUS_API int shmbus_filter_names(const char *const *names, size_t n, shmbus_filter_t **out)
{
	return string_set(SEG_F_NAMES, "name", names, n, out);
}

SHMBUS_API int shmbus_filter_sources(const char *const *sources, size_t n, shmbus_filter_t **out)
{
	return string_set(SEG_F_SOURCES, "source", sources, n, out);
}

SHMBUS_API int shmbus_filter_targets(const char *const *targets, size_t n, shmbus_filter_t **out)
{
	return string_set(SEG_F_TARGETS, "target", targets, n, out);
}

SHMBUS_API int shmbus_filter_min_priority(shmbus_priority_t min, shmbus_filter_t **out)
{
	if (min < SHMBUS_PRIORITY_LOW || min > SHMBUS_PRIORITY_CRITICAL)
		return shmbus__fail(EINVAL, "minimum priority %d is not low, normal, high or critical", (int)min);
	int rc = new_node(SEG_F_MIN_PRIO, out);
	if (rc == 0)
		(*out)->arg = (uint32_t)min;
	return rc;
}

SHMBUS_API int shmbus_filter_pattern(const char *regex, shmbus_filter_t **out)
{
	if (!regex || !regex[0])
		return shmbus__fail(EINVAL, "pattern is empty");
	if (strlen(regex) >= SHMBUS_FILTER_TEXT_MAX)
		return shmbus__fail(E2BIG, "pattern is longer than the filter's text area");
	regex_t re;
	int err = regcomp(&re, regex, REG_EXTENDED | REG_NOSUB);
	if (err) {
		char msg[128];
		regerror(err, &re, msg, sizeof msg);
		return shmbus__fail(EINVAL, "pattern '%s' is not a POSIX extended regex: %s", regex, msg);
	}
	regfree(&re);
	const char *one[1] = {regex};
	int rc = new_node(SEG_F_PATTERN, out);
	if (rc < 0)
		return rc;
	(*out)->strs = malloc(sizeof(char *));
	if (!(*out)->strs || !((*out)->strs[0] = strdup(one[0]))) {
		shmbus_filter_free(*out);
		*out = NULL;
		return shmbus__fail(ENOMEM, "out of memory");
	}
	(*out)->nstr = 1;
	return 0;
}

static int composite(enum seg_filter_kind kind, shmbus_filter_t **kids, size_t n, shmbus_filter_t **out)
{
	int rc = 0;
	if (!kids && n)
		return shmbus__fail(EINVAL, "children are NULL");
	for (size_t i = 0; i < n; i++)
		if (!kids[i])
			rc = shmbus__fail(EINVAL, "child %zu is NULL", i);
	if (n > SHMBUS_FILTER_NODES_MAX - 1)
		rc = shmbus__fail(E2BIG, "composite has %zu children, at most %d", n, SHMBUS_FILTER_NODES_MAX - 1);
	if (rc == 0)
		rc = new_node(kind, out);
	if (rc == 0 && n && !((*out)->kids = calloc(n, sizeof *kids))) {
		free(*out);
		*out = NULL;
		rc = shmbus__fail(ENOMEM, "out of memory");
	}
	if (rc < 0) { /* composites own their children, also on failure */
		for (size_t i = 0; kids && i < n; i++)
			shmbus_filter_free(kids[i]);
		return rc;
	}
	memcpy((*out)->kids, kids, n * sizeof *kids);
	(*out)->nkids = n;
	return 0;
}

SHMBUS_API int shmbus_filter_all(shmbus_filter_t **children, size_t n, shmbus_filter_t **out)
{
	return composite(SEG_F_ALL, children, n, out);
}

SHMBUS_API int shmbus_filter_any(shmbus_filter_t **children, size_t n, shmbus_filter_t **out)
{
	return composite(SEG_F_ANY, children, n, out);
}

SHMBUS_API int shmbus_filter_custom(shmbus_predicate_t fn, void *arg, shmbus_filter_t **out)
{
	if (!fn)
		return shmbus__fail(EINVAL, "custom filter needs a predicate");
	int rc = new_node(SEG_F_CUSTOM, out);
	if (rc == 0) {
		(*out)->fn = fn;
		(*out)->fn_arg = arg;
	}
	return rc;
}

/* ------------------------------------------------------------- compiling */

struct compiler {
	struct seg_filter *out;
	struct custom_pred *preds;
	unsigned ncustom;
};

static int add_text(struct compiler *c, const char *s, uint16_t *off)
{
	size_t n = strlen(s) + 1;
	if (c->out->text_len + n > SEG_FILTER_TEXT)
		return shmbus__fail(E2BIG, "filter strings exceed %u bytes", SEG_FILTER_TEXT);
	*off = c->out->text_len;
	memcpy(c->out->text + c->out->text_len, s, n);
	c->out->text_len = (uint16_t)(c->out->text_len + n);
	return 0;
}

/* Which types can node f possibly match (bit per type)? */
static uint32_t type_union_of(const shmbus_filter_t *f)
{
	uint32_t u;
	switch (f->kind) {
	case SEG_F_TYPES:
		return f->arg;
	case SEG_F_ALL:
		u = SHMBUS_ALL_TYPES;
		for (size_t i = 0; i < f->nkids; i++)
			u &= type_union_of(f->kids[i]);
		return u;
	case SEG_F_ANY:
		u = f->nkids ? 0 : SHMBUS_ALL_TYPES;
		for (size_t i = 0; i < f->nkids; i++)
			u |= type_union_of(f->kids[i]);
		return u;
	default:
		return SHMBUS_ALL_TYPES;
	}
}

/* Fill node `at` from f; children get consecutive nodes after it. */
_Static_assert(SHMBUS_FILTER_DEPTH_MAX == SEG_FILTER_DEPTH_MAX, "the public depth limit is the format's");
_Static_assert(SHMBUS_FILTER_NODES_MAX == SEG_FILTER_NODES, "the public node limit is the format's");

static int compile_node(struct compiler *c, const shmbus_filter_t *f, unsigned at, unsigned depth)
{
	struct seg_filter *o = c->out;
	struct seg_filter_node *n = &o->nodes[at];
	int rc;
	/* evaluators do not follow deeper: such a node would never match,
	 * and the subscription would get nothing */
	if (depth > SEG_FILTER_DEPTH_MAX)
		return shmbus__fail(E2BIG, "filter nests deeper than %u levels", SEG_FILTER_DEPTH_MAX);
	n->kind = (uint8_t)f->kind;
	n->arg = f->arg;
	switch (f->kind) {
	case SEG_F_ALL:
	case SEG_F_ANY:
		if (o->node_count + f->nkids > SEG_FILTER_NODES)
			return shmbus__fail(E2BIG, "filter has more than %u nodes", SEG_FILTER_NODES);
		n->first = o->node_count;
		n->count = (uint16_t)f->nkids;
		o->node_count = (uint16_t)(o->node_count + f->nkids);
		for (size_t i = 0; i < f->nkids; i++)
			if ((rc = compile_node(c, f->kids[i], n->first + (unsigned)i, depth + 1)) < 0)
				return rc;
		return 0;
	case SEG_F_NAMES:
	case SEG_F_SOURCES:
	case SEG_F_TARGETS:
		if (o->hash_count + f->nstr > SEG_FILTER_HASHES)
			return shmbus__fail(E2BIG, "filter sets hold more than %u strings", SEG_FILTER_HASHES);
		n->first = o->hash_count;
		n->count = (uint16_t)f->nstr;
		for (size_t i = 0; i < f->nstr; i++) {
			uint16_t off;
			if ((rc = add_text(c, f->strs[i], &off)) < 0)
				return rc;
			if (i == 0)
				n->text = off;
			o->hashes[o->hash_count++] = seg_str_hash(f->strs[i], strlen(f->strs[i]));
		}
		return 0;
	case SEG_F_PATTERN: {
		uint16_t off;
		if ((rc = add_text(c, f->strs[0], &off)) < 0)
			return rc;
		n->arg = off;
		o->flags |= SEG_FILTER_HAS_PATTERN;
		return 0;
	}
	case SEG_F_CUSTOM:
		n->arg = c->ncustom;
		c->preds[c->ncustom].fn = f->fn;
		c->preds[c->ncustom].arg = f->fn_arg;
		c->ncustom++;
		o->flags |= SEG_FILTER_HAS_CUSTOM;
		return 0;
	default:
		return 0;
	}
}

int filter_compile(const shmbus_filter_t *f, struct seg_filter *out, struct custom_pred *preds, uint32_t *type_union)
{
	memset(out, 0, sizeof *out);
	memset(preds, 0, sizeof(*preds) * SEG_FILTER_NODES);
	if (!f) {
		out->type_union = SHMBUS_ALL_TYPES;
		*type_union = SHMBUS_ALL_TYPES;
		return 0;
	}
	struct compiler c = {.out = out, .preds = preds};
	out->node_count = 1;
	out->root = 0;
	int rc = compile_node(&c, f, 0, 0);
	if (rc < 0)
		return rc;
	out->type_union = type_union_of(f);
	*type_union = out->type_union;
	return 0;
}
