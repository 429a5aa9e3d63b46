/* The result of one handler run (actions, timers, state, facts, metrics) with its per-run caps. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/outcome.h"

static int wh__fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int wh__fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void wh_outcome_limits_default(wh_outcome_limits_t *l)
{
    l->max_actions = WH_OUTCOME_MAX_ACTIONS;
    l->max_timers = WH_OUTCOME_MAX_TIMERS;
    l->max_facts = WH_OUTCOME_MAX_FACTS;
    l->max_metrics = WH_OUTCOME_MAX_METRICS;
    l->max_state_bytes = WH_OUTCOME_MAX_STATE_BYTES;
    l->max_payload_bytes = WH_OUTCOME_MAX_PAYLOAD_BYTES;
    l->max_mail_bytes = WH_OUTCOME_MAX_MAIL_BYTES;
    l->max_total_bytes = WH_OUTCOME_MAX_TOTAL_BYTES;
}

int wh_outcome_init(wh_outcome_t *out, const wh_outcome_limits_t *limits)
{
    memset(out, 0, sizeof(*out));
    wh_outcome_limits_default(&out->limits);
    if (limits != NULL) {
        /* A zero field keeps its default, so callers can set only what they configure. */
#define WH__TAKE(f) if (limits->f != 0) out->limits.f = limits->f
        WH__TAKE(max_actions);
        WH__TAKE(max_timers);
        WH__TAKE(max_facts);
        WH__TAKE(max_metrics);
        WH__TAKE(max_state_bytes);
        WH__TAKE(max_payload_bytes);
        WH__TAKE(max_mail_bytes);
        WH__TAKE(max_total_bytes);
#undef WH__TAKE
    }
    out->actions = json_array();
    out->timers = json_array();
    out->cancelled = json_array();
    out->facts = json_array();
    out->metrics = json_array();
    if (out->actions == NULL || out->timers == NULL || out->cancelled == NULL ||
        out->facts == NULL || out->metrics == NULL) {
        wh_outcome_free(out);
        return WH_ENOMEM;
    }
    return WH_OK;
}

void wh_outcome_set_prior_state(wh_outcome_t *out, json_t *state)
{
    json_t *old = out->prior_state;
    out->prior_state = json_incref(state);
    json_decref(old);
}

void wh_outcome_reset(wh_outcome_t *out)
{
    json_array_clear(out->actions);
    json_array_clear(out->timers);
    json_array_clear(out->cancelled);
    json_array_clear(out->facts);
    json_array_clear(out->metrics);
    json_decref(out->state);
    out->state = NULL;
    out->state_change = WH_STATE_UNCHANGED;
    out->bytes = 0;
}

void wh_outcome_free(wh_outcome_t *out)
{
    json_decref(out->actions);
    json_decref(out->timers);
    json_decref(out->cancelled);
    json_decref(out->facts);
    json_decref(out->metrics);
    json_decref(out->state);
    json_decref(out->prior_state);
    memset(out, 0, sizeof(*out));
}

size_t wh_outcome_json_size(const json_t *j)
{
    size_t n = 0;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *v;
        n = 2;
        json_object_foreach((json_t *)j, k, v)
            n += strlen(k) + 4 + wh_outcome_json_size(v);
        return n;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *v;
        n = 2;
        json_array_foreach(j, i, v)
            n += 1 + wh_outcome_json_size(v);
        return n;
    }
    case JSON_STRING: return json_string_length(j) + 2;
    case JSON_INTEGER: return 20;
    case JSON_REAL: return 24;
    case JSON_TRUE:
    case JSON_NULL: return 4;
    case JSON_FALSE: return 5;
    }
    return n;
}

/* Charges size bytes against max_total_bytes. */
static int wh__charge(wh_outcome_t *out, size_t size, char *err, size_t errlen)
{
    if (out->bytes + size > out->limits.max_total_bytes)
        return wh__fail(WH_EFULL, err, errlen,
                        "this run queued more than %zu bytes in total (actions, timers, state, "
                        "facts)",
                        out->limits.max_total_bytes);
    out->bytes += size;
    return WH_OK;
}

int wh_outcome_add_action(wh_outcome_t *out, json_t *action, char *err, size_t errlen)
{
    int rc;
    const char *type = json_string_value(json_object_get(action, "type"));
    if (!json_is_object(action) || type == NULL || type[0] == '\0') {
        rc = wh__fail(WH_EINVAL, err, errlen, "an action needs a \"type\"");
        goto out;
    }
    if (json_array_size(out->actions) >= out->limits.max_actions) {
        rc = wh__fail(WH_EFULL, err, errlen,
                      "too many actions: a handler may queue at most %zu per event",
                      out->limits.max_actions);
        goto out;
    }
    if ((rc = wh__charge(out, wh_outcome_json_size(action), err, errlen)) != WH_OK)
        goto out;
    if (json_array_append(out->actions, action) != 0)
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
out:
    json_decref(action);
    return rc;
}

/* Index of the entry of arr whose "name" (or, for string arrays, value) equals name, or -1. */
static long wh__find_name(json_t *arr, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *s = json_is_string(v) ? json_string_value(v)
                                          : json_string_value(json_object_get(v, "name"));
        if (s != NULL && strcmp(s, name) == 0)
            return (long)i;
    }
    return -1;
}

static int wh__timer_name_ok(const char *name, char *err, size_t errlen)
{
    if (name == NULL || name[0] == '\0')
        return wh__fail(WH_EINVAL, err, errlen, "a timer needs a non-empty name");
    return WH_OK;
}

int wh_outcome_set_timer(wh_outcome_t *out, const char *name, int64_t due_at_ms, json_t *payload,
                         char *err, size_t errlen)
{
    int rc;
    json_t *t = NULL;
    if ((rc = wh__timer_name_ok(name, err, errlen)) != WH_OK)
        goto out;
    if (payload != NULL && !json_is_object(payload)) {
        rc = wh__fail(WH_EINVAL, err, errlen, "a timer payload must be an object");
        goto out;
    }
    long set_at = wh__find_name(out->timers, name);
    long cancel_at = wh__find_name(out->cancelled, name);
    if (set_at < 0 && cancel_at < 0 &&
        json_array_size(out->timers) + json_array_size(out->cancelled) >= out->limits.max_timers) {
        rc = wh__fail(WH_EFULL, err, errlen,
                      "too many timers: a handler may set or cancel at most %zu per event",
                      out->limits.max_timers);
        goto out;
    }
    size_t size = strlen(name) + 40 + (payload != NULL ? wh_outcome_json_size(payload) : 0);
    if ((rc = wh__charge(out, size, err, errlen)) != WH_OK)
        goto out;
    t = json_pack("{s:s,s:I}", "name", name, "due_at", (json_int_t)due_at_ms);
    if (t == NULL || (payload != NULL && json_object_set(t, "payload", payload) != 0)) {
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
        goto out;
    }
    if (set_at >= 0)
        json_array_remove(out->timers, (size_t)set_at);
    if (cancel_at >= 0)
        json_array_remove(out->cancelled, (size_t)cancel_at);
    if (json_array_append(out->timers, t) != 0)
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
out:
    json_decref(t);
    json_decref(payload);
    return rc;
}

int wh_outcome_cancel_timer(wh_outcome_t *out, const char *name, char *err, size_t errlen)
{
    int rc = wh__timer_name_ok(name, err, errlen);
    if (rc != WH_OK)
        return rc;
    long set_at = wh__find_name(out->timers, name);
    if (wh__find_name(out->cancelled, name) >= 0)
        return WH_OK;
    if (set_at < 0 &&
        json_array_size(out->timers) + json_array_size(out->cancelled) >= out->limits.max_timers)
        return wh__fail(WH_EFULL, err, errlen,
                        "too many timers: a handler may set or cancel at most %zu per event",
                        out->limits.max_timers);
    if ((rc = wh__charge(out, strlen(name) + 3, err, errlen)) != WH_OK)
        return rc;
    if (json_array_append_new(out->cancelled, json_string(name)) != 0)
        return wh__fail(WH_ENOMEM, err, errlen, "out of memory");
    if (set_at >= 0)
        json_array_remove(out->timers, (size_t)set_at);
    return WH_OK;
}

int wh_outcome_set_state(wh_outcome_t *out, json_t *state, char *err, size_t errlen)
{
    if (state == NULL) {
        json_decref(out->state);
        out->state = NULL;
        out->state_change = WH_STATE_CLEARED;
        return WH_OK;
    }
    int rc = WH_OK;
    if (!json_is_object(state)) {
        rc = wh__fail(WH_EINVAL, err, errlen, "state must be a table with string keys");
        goto fail;
    }
    size_t size = wh_outcome_json_size(state);
    if (size > out->limits.max_state_bytes) {
        rc = wh__fail(WH_EFULL, err, errlen,
                      "state is too large: about %zu bytes as JSON, the limit is %zu", size,
                      out->limits.max_state_bytes);
        goto fail;
    }
    /* State replaces state: only its latest size counts, so it is not charged per set. */
    json_decref(out->state);
    out->state = state;
    out->state_change = WH_STATE_SET;
    return WH_OK;
fail:
    json_decref(state);
    return rc;
}

int wh_outcome_add_fact(wh_outcome_t *out, const char *kind, json_t *fields, char *err,
                        size_t errlen)
{
    int rc;
    json_t *f = NULL;
    if (kind == NULL || kind[0] == '\0' || (fields != NULL && !json_is_object(fields))) {
        rc = wh__fail(WH_EINVAL, err, errlen, "a fact needs a kind and an object of fields");
        goto out;
    }
    if (json_array_size(out->facts) >= out->limits.max_facts) {
        rc = wh__fail(WH_EFULL, err, errlen,
                      "too many facts: a handler may record at most %zu per event",
                      out->limits.max_facts);
        goto out;
    }
    if (fields == NULL && (fields = json_object()) == NULL) {
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
        goto out;
    }
    if ((rc = wh__charge(out, strlen(kind) + 24 + wh_outcome_json_size(fields), err, errlen)) !=
        WH_OK)
        goto out;
    f = json_pack("{s:s,s:O}", "kind", kind, "fields", fields);
    if (f == NULL || json_array_append(out->facts, f) != 0)
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
out:
    json_decref(f);
    json_decref(fields);
    return rc;
}

int wh_outcome_add_metric(wh_outcome_t *out, const char *name, json_t *labels, char *err,
                          size_t errlen)
{
    int rc = WH_OK;
    json_t *m = NULL;
    if (name == NULL || name[0] == '\0' || (labels != NULL && !json_is_object(labels))) {
        rc = wh__fail(WH_EINVAL, err, errlen, "a metric needs a name and an object of labels");
        goto out;
    }
    if (labels == NULL && (labels = json_object()) == NULL) {
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
        goto out;
    }
    size_t i;
    json_t *v;
    json_array_foreach(out->metrics, i, v) {
        if (strcmp(json_string_value(json_object_get(v, "name")), name) == 0 &&
            json_equal(json_object_get(v, "labels"), labels)) {
            json_t *val = json_object_get(v, "value");
            json_integer_set(val, json_integer_value(val) + 1);
            goto out;
        }
    }
    if (json_array_size(out->metrics) >= out->limits.max_metrics) {
        rc = wh__fail(WH_EFULL, err, errlen,
                      "too many metrics: a handler may count at most %zu distinct name and label "
                      "sets per event",
                      out->limits.max_metrics);
        goto out;
    }
    if ((rc = wh__charge(out, strlen(name) + 40 + wh_outcome_json_size(labels), err, errlen)) !=
        WH_OK)
        goto out;
    m = json_pack("{s:s,s:O,s:i}", "name", name, "labels", labels, "value", 1);
    if (m == NULL || json_array_append(out->metrics, m) != 0)
        rc = wh__fail(WH_ENOMEM, err, errlen, "out of memory");
out:
    json_decref(m);
    json_decref(labels);
    return rc;
}

json_t *wh_outcome_actions(const wh_outcome_t *out) { return out->actions; }
json_t *wh_outcome_timers(const wh_outcome_t *out) { return out->timers; }
json_t *wh_outcome_cancelled(const wh_outcome_t *out) { return out->cancelled; }
json_t *wh_outcome_facts(const wh_outcome_t *out) { return out->facts; }
json_t *wh_outcome_metrics(const wh_outcome_t *out) { return out->metrics; }
int wh_outcome_state_change(const wh_outcome_t *out) { return out->state_change; }

json_t *wh_outcome_current_state(const wh_outcome_t *out)
{
    switch (out->state_change) {
    case WH_STATE_SET: return out->state;
    case WH_STATE_CLEARED: return NULL;
    default: return out->prior_state;
    }
}

int wh_outcome_is_empty(const wh_outcome_t *out)
{
    return json_array_size(out->actions) == 0 && json_array_size(out->timers) == 0 &&
           json_array_size(out->cancelled) == 0 && json_array_size(out->facts) == 0 &&
           json_array_size(out->metrics) == 0 && out->state_change == WH_STATE_UNCHANGED;
}

json_t *wh_outcome_to_json(const wh_outcome_t *out)
{
    static const char *const changes[] = {"unchanged", "set", "cleared"};
    json_t *state = json_pack("{s:s}", "change", changes[out->state_change]);
    if (state == NULL)
        return NULL;
    if (out->state_change == WH_STATE_SET && json_object_set(state, "value", out->state) != 0) {
        json_decref(state);
        return NULL;
    }
    return json_pack("{s:O,s:O,s:O,s:o,s:O,s:O}", "actions", out->actions, "timers", out->timers,
                     "cancelled", out->cancelled, "state", state, "facts", out->facts, "metrics",
                     out->metrics);
}
