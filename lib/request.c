/*
 * request.c - request/response over the bus.
 *
 * A requester is a publisher plus a reply subscription that matches
 * responses addressed to its source (type RESPONSE, target = source). A
 * response answers the request whose id is its causation id, or, failing
 * that, whose correlation id it carries (shmbus_publish_response sets both).
 * Anything else that arrives is late: released and counted.
 *
 * Blocking requests wait on the reply subscription themselves; asynchronous
 * ones bind the requester to a dispatcher, which serves the reply
 * subscription with an internal handler and arms one timer per request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dispatch.h"

struct pending {
	shmbus_uuid_t id, corr;
	shmbus_response_cb_t cb;
	void *arg;
	uint64_t gen; /* 0: free */
};

struct shmbus_requester {
	struct dispatch_client client; /* first: unbind finds us from it */
	shmbus_bus_t *bus;
	shmbus_pub_t *pub;
	shmbus_sub_t *replies;
	shmbus_dispatcher_t *d; /* bound by the first async request */
	struct pending *pend;
	size_t npend;
	uint64_t gen_seq;
	uint64_t late;
	bool closing;
};

static unsigned requester_seq;

SHMBUS_API int shmbus_requester_open(shmbus_bus_t *bus, const shmbus_pub_opts_t *opts, shmbus_requester_t **out)
{
	if (!bus || !out)
		return shmbus__fail(EINVAL, "bus or out is NULL");
	char source[SHMBUS_STR_MAX + 1];
	if (opts && opts->source)
		snprintf(source, sizeof source, "%s", opts->source);
	else
		snprintf(source, sizeof source, "pid-%d.req%u", (int)getpid(),
			 __atomic_add_fetch(&requester_seq, 1, __ATOMIC_RELAXED));
	shmbus_requester_t *r = calloc(1, sizeof *r);
	if (!r)
		return shmbus__fail(ENOMEM, "out of memory");
	r->bus = bus;
	shmbus_pub_opts_t po = opts ? *opts : (shmbus_pub_opts_t){0};
	po.source = source;
	int rc = shmbus_pub_open(bus, &po, &r->pub);
	if (rc < 0)
		goto fail;
	shmbus_filter_t *parts[2] = {NULL, NULL}, *filter = NULL;
	const char *targets[1] = {source};
	if ((rc = shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_RESPONSE), &parts[0])) < 0 ||
	    (rc = shmbus_filter_targets(targets, 1, &parts[1])) < 0 || (rc = shmbus_filter_all(parts, 2, &filter)) < 0) {
		shmbus_filter_free(parts[0]);
		shmbus_filter_free(parts[1]);
		goto fail;
	}
	/* lag: a requester that stopped reading must never hold up the
	 * processes that answer it */
	shmbus_sub_opts_t so = {.subscriber_id = source, .policy = SHMBUS_POLICY_LAG, .filter = filter};
	rc = shmbus_subscribe(bus, &so, &r->replies);
	shmbus_filter_free(filter);
	if (rc < 0)
		goto fail;
	*out = r;
	return 0;
fail:
	shmbus_pub_close(r->pub);
	free(r);
	return rc;
}

/* Let go of the dispatcher: stop being served, drop our timers, end the
 * pending requests with -ECANCELED. Outside any of its handlers. */
static void unbind(struct dispatch_client *c)
{
	shmbus_requester_t *r = (shmbus_requester_t *)(void *)c;
	shmbus_dispatcher_t *d = r->d;
	if (!d)
		return;
	r->d = NULL;
	dispatch_unbind_client(d, &r->client);
	shmbus_dispatcher_remove(d, r->replies);
	timers_drop(&d->timers, r);
	for (size_t i = 0; i < r->npend; i++) {
		if (!r->pend[i].gen)
			continue;
		r->pend[i].gen = 0;
		r->pend[i].cb(NULL, -ECANCELED, r->pend[i].arg);
	}
}

static void requester_free(void *arg)
{
	shmbus_requester_t *r = arg;
	unbind(&r->client);
	shmbus_sub_close(r->replies);
	shmbus_pub_close(r->pub);
	free(r->pend);
	free(r);
}

SHMBUS_API void shmbus_requester_close(shmbus_requester_t *r)
{
	if (!r)
		return;
	/* From one of the dispatcher's callbacks the dispatcher still uses
	 * our reply subscription: finish after the callback returns. */
	if (r->d && !r->closing) {
		r->closing = true;
		if (dispatch_defer(r->d, requester_free, r) == 0)
			return;
	}
	requester_free(r);
}

SHMBUS_API uint64_t shmbus_requester_late(const shmbus_requester_t *r)
{
	return r ? r->late : 0;
}

static bool answers(const shmbus_event_t *resp, const shmbus_uuid_t *id, const shmbus_uuid_t *corr)
{
	const shmbus_uuid_t *cause = shmbus_event_causation_id(resp);
	if (!shmbus_uuid_is_nil(cause))
		return memcmp(cause, id, sizeof *id) == 0;
	return memcmp(shmbus_event_correlation_id(resp), corr, sizeof *corr) == 0;
}

static void count_late(shmbus_requester_t *r)
{
	r->late++;
	at_count_u64(&r->replies->rec->late_responses, 1);
}

/* Publish msg; its id and correlation id come back. */
static int send_request(shmbus_requester_t *r, const shmbus_msg_t *msg, shmbus_uuid_t *id, shmbus_uuid_t *corr)
{
	if (!msg)
		return shmbus__fail(EINVAL, "message is NULL");
	int rc = shmbus_publish(r->pub, msg, id);
	if (rc < 0)
		return rc;
	*corr = msg->correlation_id ? *msg->correlation_id : *id;
	return 0;
}

SHMBUS_API int shmbus_request(shmbus_requester_t *r, const shmbus_msg_t *msg, int64_t timeout_ns,
			      shmbus_event_t **response)
{
	if (!r || !response)
		return shmbus__fail(EINVAL, "requester or response is NULL");
	if (r->d)
		return shmbus__fail(EBUSY, "this requester serves a dispatcher: use shmbus_request_async");
	shmbus_uuid_t id, corr;
	int rc = send_request(r, msg, &id, &corr);
	if (rc < 0)
		return rc;
	uint64_t start = now_mono_ns();
	for (;;) {
		int64_t left = -1;
		if (timeout_ns >= 0) {
			uint64_t spent = now_mono_ns() - start;
			left = spent >= (uint64_t)timeout_ns ? 0 : timeout_ns - (int64_t)spent;
		}
		const shmbus_event_t *ev;
		rc = shmbus_wait(r->replies, left, &ev);
		if (rc < 0)
			return rc;
		if (rc == 0)
			return shmbus__fail(ETIMEDOUT, "no response within the timeout");
		if (answers(ev, &id, &corr)) {
			rc = shmbus_event_copy(ev, response);
			shmbus_release(r->replies, ev);
			return rc;
		}
		count_late(r);
		shmbus_release(r->replies, ev);
	}
}

static struct pending *find_pending(shmbus_requester_t *r, const shmbus_event_t *resp)
{
	for (size_t i = 0; i < r->npend; i++)
		if (r->pend[i].gen && answers(resp, &r->pend[i].id, &r->pend[i].corr))
			return &r->pend[i];
	return NULL;
}

static int on_reply(const shmbus_event_t *ev, void *arg)
{
	shmbus_requester_t *r = arg;
	struct pending *p = find_pending(r, ev);
	if (!p) {
		count_late(r);
		return 0;
	}
	shmbus_response_cb_t cb = p->cb;
	void *cb_arg = p->arg;
	p->gen = 0; /* its timer finds it gone */
	cb(ev, 0, cb_arg);
	return 0;
}

static void on_timeout(shmbus_dispatcher_t *d, void *obj, uint64_t gen)
{
	(void)d;
	shmbus_requester_t *r = obj;
	for (size_t i = 0; i < r->npend; i++) {
		if (r->pend[i].gen != gen)
			continue;
		r->pend[i].gen = 0;
		r->pend[i].cb(NULL, -ETIMEDOUT, r->pend[i].arg);
		return;
	}
}

static struct pending *pending_slot(shmbus_requester_t *r)
{
	for (size_t i = 0; i < r->npend; i++)
		if (!r->pend[i].gen)
			return &r->pend[i];
	size_t n = r->npend ? r->npend * 2 : 8;
	struct pending *p = realloc(r->pend, n * sizeof *p);
	if (!p)
		return NULL;
	memset(p + r->npend, 0, (n - r->npend) * sizeof *p);
	r->pend = p;
	struct pending *slot = &p[r->npend];
	r->npend = n;
	return slot;
}

SHMBUS_API int shmbus_request_async(shmbus_requester_t *r, shmbus_dispatcher_t *d, const shmbus_msg_t *msg,
				    int64_t timeout_ns, shmbus_response_cb_t cb, void *arg, shmbus_uuid_t *id)
{
	if (!r || !d || !cb)
		return shmbus__fail(EINVAL, "requester, dispatcher or callback is NULL");
	if (timeout_ns < 0)
		return shmbus__fail(EINVAL, "an asynchronous request needs a timeout");
	if (r->closing)
		return shmbus__fail(EBADF, "the requester is closing");
	if (r->d && r->d != d)
		return shmbus__fail(EBUSY, "this requester is bound to another dispatcher");
	int rc;
	if (!r->d) {
		if ((rc = dispatch_add_internal(d, r->replies, on_reply, r)) < 0)
			return rc;
		r->d = d;
		r->client.unbind = unbind;
		dispatch_bind_client(d, &r->client);
	}
	struct pending *p = pending_slot(r);
	if (!p)
		return shmbus__fail(ENOMEM, "out of memory");
	shmbus_uuid_t rid, corr;
	if ((rc = send_request(r, msg, &rid, &corr)) < 0)
		return rc;
	*p = (struct pending){.id = rid, .corr = corr, .cb = cb, .arg = arg, .gen = ++r->gen_seq};
	if ((rc = dispatch_timer(d, now_mono_ns() + (uint64_t)timeout_ns, on_timeout, r, p->gen)) < 0) {
		/* published, but it could never time out: fail it now, and its
		 * response will count as late */
		p->gen = 0;
		return shmbus__fail(ENOMEM, "out of memory for the request's timer");
	}
	if (id)
		*id = rid;
	return 0;
}
