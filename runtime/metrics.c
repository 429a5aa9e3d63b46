/* Prometheus metrics: a static registry of labelled counters, gauges and histograms whose label
 * values come from fixed lists (so recording is an index computation and one atomic add), the
 * scrape-time collectors for what the store, the scripts and the processors know, the text
 * exposition renderer and the GET /metrics admin module. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "wahook/admin.h"
#include "wahook/common.h"
#include "wahook/metrics.h"
#include "wahook/process.h"
#include "wahook/scripts.h"
#include "wahook/store.h"

/* ---- label dimensions --------------------------------------------------------------------- */

/* A label and its known values; the last value is the catch-all. */
typedef struct wh__dim {
    const char *label;
    const char *const *values;
    size_t n;
} wh__dim_t;

#define WH__DIM(lbl, arr) {lbl, arr, sizeof(arr) / sizeof(arr[0])}

/* Evolution API's webhook events (reference/evolution-api.md) and the processors' "timer". */
static const char *const wh__event_v[] = {
    "application.startup", "call",           "chats.delete",    "chats.set",
    "chats.update",        "chats.upsert",   "connection.update", "contacts.set",
    "contacts.update",     "contacts.upsert", "group-participants.update", "groups.update",
    "groups.upsert",       "instance.create", "instance.delete", "labels.association",
    "labels.edit",         "logout.instance", "messages.delete", "messages.edited",
    "messages.set",        "messages.update", "messages.upsert", "presence.update",
    "qrcode.updated",      "remove.instance", "send.message",    "typebot.change-status",
    "typebot.start",       "timer",           "other"};
static const char *const wh__received_v[] = {"accepted", "duplicate", "rejected", "unavailable",
                                             "other"};
static const char *const wh__processed_v[] = {"done", "retry", "dead", "other"};
static const char *const wh__target_v[] = {"evolution", "crm", "mail", "alert", "other"};
static const char *const wh__delivery_v[] = {"ok", "retry", "dead", "misconfigured", "other"};
static const char *const wh__script_err_v[] = {"error", "timeout", "memory", "other"};
static const char *const wh__ratelimit_v[] = {"ip", "instance", "login", "other"};
/* HTTP codes wahook answers (DESIGN.md "Replies over HTTP") and common ones; others by class. */
static const char *const wh__code_v[] = {"200", "201", "202", "204", "301", "302", "304", "400",
                                         "401", "403", "404", "405", "408", "409", "413", "415",
                                         "422", "429", "500", "502", "503", "504", "1xx", "2xx",
                                         "3xx", "4xx", "5xx", "other"};

static const wh__dim_t wh__d_event = WH__DIM("event", wh__event_v);
static const wh__dim_t wh__d_received = WH__DIM("result", wh__received_v);
static const wh__dim_t wh__d_processed = WH__DIM("outcome", wh__processed_v);
static const wh__dim_t wh__d_target = WH__DIM("target", wh__target_v);
static const wh__dim_t wh__d_delivery = WH__DIM("outcome", wh__delivery_v);
static const wh__dim_t wh__d_script_err = WH__DIM("kind", wh__script_err_v);
static const wh__dim_t wh__d_ratelimit = WH__DIM("kind", wh__ratelimit_v);
static const wh__dim_t wh__d_code = WH__DIM("code", wh__code_v);

/* Routes: the built-in paths, then the configured ones, then "other" (set before threads). */
static const char *const wh__route_builtin[] = {
    "/healthz",  "/readyz",      "/metrics",  "/dashboard", "/api/events/stream", "/api/events",
    "/api/stats", "/api/outbox", "/api/try", "/api/reload", "/api/login"};
#define WH__ROUTES_MAX (WH_ARRAY_SIZE(wh__route_builtin) + WH_METRICS_MAX_ROUTES + 1)
static char wh__route_buf[WH_METRICS_MAX_ROUTES][128];
static const char *wh__route_v[WH__ROUTES_MAX] = {
    "/healthz",  "/readyz",      "/metrics",  "/dashboard", "/api/events/stream", "/api/events",
    "/api/stats", "/api/outbox", "/api/try", "/api/reload", "/api/login", "other"};
static wh__dim_t wh__d_route = {"route", wh__route_v, WH_ARRAY_SIZE(wh__route_builtin) + 1};

void wh_metrics_set_routes(const char *const *paths, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__route_builtin); i++)
        wh__route_v[k++] = wh__route_builtin[i];
    for (size_t i = 0; i < n && i < WH_METRICS_MAX_ROUTES; i++) {
        if (paths[i] == NULL)
            continue;
        /* without trailing slashes, so prefixes match at '/' */
        size_t len = strlen(paths[i]);
        while (len > 1 && paths[i][len - 1] == '/')
            len--;
        snprintf(wh__route_buf[i], sizeof(wh__route_buf[i]), "%.*s", (int)len, paths[i]);
        wh__route_v[k++] = wh__route_buf[i];
    }
    wh__route_v[k++] = "other";
    wh__d_route.n = k;
}

static size_t wh__index(const wh__dim_t *d, const char *v)
{
    if (v != NULL)
        for (size_t i = 0; i + 1 < d->n; i++)
            if (strcmp(d->values[i], v) == 0)
                return i;
    return d->n - 1;
}

/* The longest known route equal to path or a prefix of it ending at '/'. */
static size_t wh__route_index(const char *path)
{
    size_t best = wh__d_route.n - 1, best_len = 0;
    if (path == NULL)
        return best;
    size_t pl = strlen(path);
    for (size_t i = 0; i + 1 < wh__d_route.n; i++) {
        const char *r = wh__d_route.values[i];
        size_t rl = strlen(r);
        if (rl <= best_len || rl > pl || memcmp(path, r, rl) != 0)
            continue;
        if (rl == pl || path[rl] == '/' || path[rl] == '?' || (rl == 1 && r[0] == '/')) {
            best = i;
            best_len = rl;
        }
    }
    return best;
}

/* wh__code_v: the exact codes, then "1xx".."5xx", then "other". */
#define WH__CODES_EXACT (WH_ARRAY_SIZE(wh__code_v) - 6)

static size_t wh__code_index(int status)
{
    char buf[16];
    snprintf(buf, sizeof(buf), "%d", status);
    for (size_t i = 0; i < WH__CODES_EXACT; i++)
        if (strcmp(wh__code_v[i], buf) == 0)
            return i;
    if (status >= 100 && status <= 599)
        return WH__CODES_EXACT + (size_t)(status / 100 - 1);
    return WH_ARRAY_SIZE(wh__code_v) - 1;
}

/* ---- the registry ------------------------------------------------------------------------- */

enum { WH__COUNTER, WH__GAUGE, WH__HISTOGRAM };

/* Cells per series: 1 for counters and gauges (a gauge stores value + 1, 0 = never set); for
 * histograms one per bucket, one for +Inf, then the sum in microseconds. */
typedef struct wh__metric {
    const char *name, *help;
    int kind;
    const wh__dim_t *d0, *d1; /* d1 may be NULL */
    const double *bounds;
    const char *const *les;
    size_t nb;
    _Atomic uint64_t *cells;
} wh__metric_t;

static const double wh__proc_b[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10};
static const char *const wh__proc_le[] = {"0.001", "0.0025", "0.005", "0.01", "0.025",
                                          "0.05",  "0.1",    "0.25",  "0.5",  "1",
                                          "2.5",   "5",      "10"};
static const double wh__deliv_b[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const char *const wh__deliv_le[] = {"0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                                           "1",    "2.5",   "5",    "10",  "30",   "60"};

#define WH__NE WH_ARRAY_SIZE(wh__event_v)
#define WH__NT WH_ARRAY_SIZE(wh__target_v)
static _Atomic uint64_t wh__c_requests[WH__ROUTES_MAX * WH_ARRAY_SIZE(wh__code_v)];
static _Atomic uint64_t wh__c_received[WH__NE * WH_ARRAY_SIZE(wh__received_v)];
static _Atomic uint64_t wh__c_processed[WH__NE * WH_ARRAY_SIZE(wh__processed_v)];
static _Atomic uint64_t wh__c_proc_hist[WH__NE * (WH_ARRAY_SIZE(wh__proc_b) + 2)];
static _Atomic uint64_t wh__c_deliveries[WH__NT * WH_ARRAY_SIZE(wh__delivery_v)];
static _Atomic uint64_t wh__c_deliv_hist[WH__NT * (WH_ARRAY_SIZE(wh__deliv_b) + 2)];
static _Atomic uint64_t wh__c_script_err[WH_ARRAY_SIZE(wh__script_err_v)];
static _Atomic uint64_t wh__c_ratelimit[WH_ARRAY_SIZE(wh__ratelimit_v)];
static _Atomic uint64_t wh__c_circuit[WH__NT];

enum {
    WH__M_REQUESTS,
    WH__M_RECEIVED,
    WH__M_PROCESSED,
    WH__M_PROC_HIST,
    WH__M_DELIVERIES,
    WH__M_DELIV_HIST,
    WH__M_SCRIPT_ERR,
    WH__M_RATELIMIT,
    WH__M_CIRCUIT,
    WH__M_COUNT
};

static wh__metric_t wh__metrics[WH__M_COUNT] = {
    [WH__M_REQUESTS] = {"wahook_http_requests_total", "HTTP answers by route and status code.",
                        WH__COUNTER, &wh__d_route, &wh__d_code, NULL, NULL, 0, wh__c_requests},
    [WH__M_RECEIVED] = {"wahook_events_received_total",
                        "Webhook events at ingest by event name and result.", WH__COUNTER,
                        &wh__d_event, &wh__d_received, NULL, NULL, 0, wh__c_received},
    [WH__M_PROCESSED] = {"wahook_events_processed_total",
                         "Processing runs by event name and outcome.", WH__COUNTER,
                         &wh__d_event, &wh__d_processed, NULL, NULL, 0, wh__c_processed},
    [WH__M_PROC_HIST] = {"wahook_event_processing_seconds",
                         "Time a processor spent on one run (normalise, handler, commit).",
                         WH__HISTOGRAM, &wh__d_event, NULL, wh__proc_b, wh__proc_le,
                         WH_ARRAY_SIZE(wh__proc_b), wh__c_proc_hist},
    [WH__M_DELIVERIES] = {"wahook_deliveries_total",
                          "Delivery attempts by target and outcome.", WH__COUNTER,
                          &wh__d_target, &wh__d_delivery, NULL, NULL, 0, wh__c_deliveries},
    [WH__M_DELIV_HIST] = {"wahook_delivery_seconds", "Duration of delivery attempts by target.",
                          WH__HISTOGRAM, &wh__d_target, NULL, wh__deliv_b, wh__deliv_le,
                          WH_ARRAY_SIZE(wh__deliv_b), wh__c_deliv_hist},
    [WH__M_SCRIPT_ERR] = {"wahook_script_errors_total",
                          "Script runs that failed, by kind (error, timeout, memory).",
                          WH__COUNTER, &wh__d_script_err, NULL, NULL, NULL, 0,
                          wh__c_script_err},
    [WH__M_RATELIMIT] = {"wahook_ratelimited_total",
                         "Requests refused by a rate limit, by kind (ip, instance, login).",
                         WH__COUNTER, &wh__d_ratelimit, NULL, NULL, NULL, 0, wh__c_ratelimit},
    [WH__M_CIRCUIT] = {"wahook_circuit_state",
                       "Circuit breaker per delivery target: 0 closed, 1 open, 2 half-open.",
                       WH__GAUGE, &wh__d_target, NULL, NULL, NULL, 0, wh__c_circuit},
};

static size_t wh__stride(const wh__metric_t *m)
{
    return m->kind == WH__HISTOGRAM ? m->nb + 2 : 1;
}

static size_t wh__ncells(const wh__metric_t *m, int max)
{
    size_t n0 = m->d0 == &wh__d_route && max ? WH__ROUTES_MAX : m->d0->n;
    return n0 * (m->d1 != NULL ? m->d1->n : 1) * wh__stride(m);
}

void wh_metrics_reset(void)
{
    for (size_t i = 0; i < WH__M_COUNT; i++) {
        size_t n = wh__ncells(&wh__metrics[i], 1);
        for (size_t k = 0; k < n; k++)
            atomic_store_explicit(&wh__metrics[i].cells[k], 0, memory_order_relaxed);
    }
}

static void wh__add(int metric, size_t i0, size_t i1, uint64_t n)
{
    wh__metric_t *m = &wh__metrics[metric];
    size_t series = i0 * (m->d1 != NULL ? m->d1->n : 1) + i1;
    atomic_fetch_add_explicit(&m->cells[series], n, memory_order_relaxed);
}

static void wh__observe(int metric, size_t i0, double seconds)
{
    wh__metric_t *m = &wh__metrics[metric];
    if (!(seconds >= 0)) /* also NaN */
        seconds = 0;
    size_t b = 0;
    while (b < m->nb && seconds > m->bounds[b])
        b++;
    _Atomic uint64_t *cell = &m->cells[i0 * wh__stride(m)];
    atomic_fetch_add_explicit(&cell[b], 1, memory_order_relaxed);
    double us = seconds * 1e6;
    atomic_fetch_add_explicit(&cell[m->nb + 1], us < 1.8e19 ? (uint64_t)(us + 0.5) : 0,
                              memory_order_relaxed);
}

void wh_metrics_request(const char *route, int status)
{
    wh__add(WH__M_REQUESTS, wh__route_index(route), wh__code_index(status), 1);
}

void wh_metrics_event_received(const char *event, const char *result)
{
    wh__add(WH__M_RECEIVED, wh__index(&wh__d_event, event), wh__index(&wh__d_received, result),
            1);
}

void wh_metrics_event_processed(const char *event, const char *outcome, double seconds)
{
    size_t e = wh__index(&wh__d_event, event);
    wh__add(WH__M_PROCESSED, e, wh__index(&wh__d_processed, outcome), 1);
    wh__observe(WH__M_PROC_HIST, e, seconds);
}

void wh_metrics_delivery(const char *target, const char *outcome, double seconds)
{
    size_t t = wh__index(&wh__d_target, target);
    wh__add(WH__M_DELIVERIES, t, wh__index(&wh__d_delivery, outcome), 1);
    wh__observe(WH__M_DELIV_HIST, t, seconds);
}

void wh_metrics_script_error(const char *kind)
{
    wh__add(WH__M_SCRIPT_ERR, wh__index(&wh__d_script_err, kind), 0, 1);
}

void wh_metrics_ratelimited(const char *kind)
{
    wh__add(WH__M_RATELIMIT, wh__index(&wh__d_ratelimit, kind), 0, 1);
}

void wh_metrics_circuit_state(const char *target, int state)
{
    if (state < 0)
        state = 0;
    atomic_store_explicit(&wh__c_circuit[wh__index(&wh__d_target, target)], (uint64_t)state + 1,
                          memory_order_relaxed);
}

/* ---- output --------------------------------------------------------------------------------- */

struct wh_metrics_out {
    char *buf;
    size_t len, cap;
    int oom;
};

static void wh__put(wh_metrics_out_t *o, const char *s, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 16384;
        while (nc < o->len + n + 1)
            nc *= 2;
        char *nb = realloc(o->buf, nc);
        if (nb == NULL) {
            o->oom = 1;
            return;
        }
        o->buf = nb;
        o->cap = nc;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void wh__puts(wh_metrics_out_t *o, const char *s)
{
    wh__put(o, s, strlen(s));
}

static void wh__printf(wh_metrics_out_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void wh__printf(wh_metrics_out_t *o, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        wh__put(o, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* Label values escape \, " and newline; HELP text escapes \ and newline. */
static void wh__escaped(wh_metrics_out_t *o, const char *s, int label)
{
    const char *run = s;
    for (; *s != '\0'; s++) {
        const char *rep = *s == '\\'              ? "\\\\"
                          : *s == '\n'             ? "\\n"
                          : label && *s == '"' ? "\\\""
                                               : NULL;
        if (rep == NULL)
            continue;
        wh__put(o, run, (size_t)(s - run));
        wh__puts(o, rep);
        run = s + 1;
    }
    wh__put(o, run, (size_t)(s - run));
}

/* Integers as integers; other values in %.17g's round-trip precision without noise digits. */
static void wh__value(wh_metrics_out_t *o, double v)
{
    if (v != v) {
        wh__puts(o, "NaN");
    } else if (v > 1.7e308) {
        wh__puts(o, "+Inf");
    } else if (v < -1.7e308) {
        wh__puts(o, "-Inf");
    } else if (v == (double)(long long)v && v > -9e15 && v < 9e15) {
        wh__printf(o, "%lld", (long long)v);
    } else {
        char buf[40];
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(buf, sizeof(buf), "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
        wh__puts(o, buf);
    }
}

void wh_metrics_out_family(wh_metrics_out_t *o, const char *name, const char *type,
                           const char *help)
{
    wh__printf(o, "# HELP %s ", name);
    wh__escaped(o, help != NULL ? help : "", 0);
    wh__printf(o, "\n# TYPE %s %s\n", name, type != NULL ? type : "untyped");
}

/* name{k="v",…,extra_k="extra_v"} value */
static void wh__sample(wh_metrics_out_t *o, const char *name, const char *const *labels,
                       const char *extra_k, const char *extra_v, double value)
{
    wh__puts(o, name);
    int any = 0;
    for (size_t i = 0; labels != NULL && labels[i] != NULL && labels[i + 1] != NULL; i += 2) {
        wh__puts(o, any ? "," : "{");
        wh__puts(o, labels[i]);
        wh__puts(o, "=\"");
        wh__escaped(o, labels[i + 1], 1);
        wh__puts(o, "\"");
        any = 1;
    }
    if (extra_k != NULL) {
        wh__puts(o, any ? "," : "{");
        wh__printf(o, "%s=\"%s\"", extra_k, extra_v);
        any = 1;
    }
    wh__puts(o, any ? "} " : " ");
    wh__value(o, value);
    wh__puts(o, "\n");
}

void wh_metrics_out_sample(wh_metrics_out_t *o, const char *name, const char *const *labels,
                           double value)
{
    wh__sample(o, name, labels, NULL, NULL, value);
}

/* One registry metric: every series that was recorded (a label-less one always). */
static void wh__render_metric(wh_metrics_out_t *o, const wh__metric_t *m)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    wh_metrics_out_family(o, m->name, types[m->kind], m->help);
    size_t n0 = m->d0->n, n1 = m->d1 != NULL ? m->d1->n : 1, stride = wh__stride(m);
    char name[96];
    for (size_t i0 = 0; i0 < n0; i0++) {
        for (size_t i1 = 0; i1 < n1; i1++) {
            const char *labels[5] = {m->d0->label, m->d0->values[i0], NULL, NULL, NULL};
            if (m->d1 != NULL) {
                labels[2] = m->d1->label;
                labels[3] = m->d1->values[i1];
            }
            _Atomic uint64_t *cell = &m->cells[(i0 * n1 + i1) * stride];
            if (m->kind == WH__COUNTER) {
                uint64_t v = atomic_load_explicit(cell, memory_order_relaxed);
                if (v > 0)
                    wh__sample(o, m->name, labels, NULL, NULL, (double)v);
                continue;
            }
            if (m->kind == WH__GAUGE) {
                uint64_t v = atomic_load_explicit(cell, memory_order_relaxed);
                if (v > 0)
                    wh__sample(o, m->name, labels, NULL, NULL, (double)(v - 1));
                continue;
            }
            /* histogram: the count is the sum of the buckets read here, so it matches +Inf */
            uint64_t counts[32], total = 0;
            for (size_t b = 0; b <= m->nb; b++)
                total += counts[b] = atomic_load_explicit(&cell[b], memory_order_relaxed);
            if (total == 0)
                continue;
            uint64_t cum = 0;
            snprintf(name, sizeof(name), "%s_bucket", m->name);
            for (size_t b = 0; b <= m->nb; b++) {
                cum += counts[b];
                wh__sample(o, name, labels, "le", b < m->nb ? m->les[b] : "+Inf", (double)cum);
            }
            double sum = (double)atomic_load_explicit(&cell[m->nb + 1], memory_order_relaxed) / 1e6;
            snprintf(name, sizeof(name), "%s_sum", m->name);
            wh__sample(o, name, labels, NULL, NULL, sum);
            snprintf(name, sizeof(name), "%s_count", m->name);
            wh__sample(o, name, labels, NULL, NULL, (double)total);
        }
    }
}

/* ---- collectors --------------------------------------------------------------------------- */

#define WH__COLLECTORS_MAX 16
static pthread_mutex_t wh__coll_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    wh_metrics_collect_fn fn;
    void *ud;
} wh__coll[WH__COLLECTORS_MAX];
static size_t wh__ncoll;

int wh_metrics_add_collector(wh_metrics_collect_fn fn, void *ud)
{
    pthread_mutex_lock(&wh__coll_mu);
    int rc = WH_EFULL;
    if (wh__ncoll < WH__COLLECTORS_MAX) {
        wh__coll[wh__ncoll].fn = fn;
        wh__coll[wh__ncoll].ud = ud;
        wh__ncoll++;
        rc = WH_OK;
    }
    pthread_mutex_unlock(&wh__coll_mu);
    return rc;
}

void wh_metrics_clear_collectors(void)
{
    pthread_mutex_lock(&wh__coll_mu);
    wh__ncoll = 0;
    pthread_mutex_unlock(&wh__coll_mu);
}

/* Store queries of the scrape; all counts come from small or partial indexes. */
enum {
    WH__S_PENDING,
    WH__S_RETRYING,
    WH__S_OUTBOX,
    WH__S_DEAD_EVENTS,
    WH__S_DEAD_OUTBOX,
    WH__S_CONNECTION,
    WH__S_SCRIPT_COUNTS,
    WH__S_COUNT
};

static const char *const wh__store_sql[WH__S_COUNT] = {
    [WH__S_PENDING] = "SELECT count(*) FROM events INDEXED BY events_status"
                      " WHERE status = 'pending'",
    [WH__S_RETRYING] = "SELECT count(*) FROM events INDEXED BY events_retry"
                       " WHERE status = 'pending' AND next_attempt_at > 0",
    [WH__S_OUTBOX] = "SELECT target, status, count(*) FROM outbox INDEXED BY outbox_status"
                     " WHERE status IN ('pending', 'inflight') GROUP BY target, status",
    [WH__S_DEAD_EVENTS] = "SELECT count(*) FROM events INDEXED BY events_status"
                          " WHERE status = 'dead'",
    [WH__S_DEAD_OUTBOX] = "SELECT target, count(*) FROM outbox INDEXED BY outbox_status"
                          " WHERE status = 'dead' GROUP BY target",
    /* Each instance's latest state: a skip scan of (instance, id), at most 100 instances. */
    [WH__S_CONNECTION] =
        "WITH RECURSIVE i(name) AS (SELECT (SELECT min(instance) FROM connection_history)"
        " UNION ALL SELECT (SELECT min(instance) FROM connection_history WHERE instance > i.name)"
        " FROM i WHERE i.name IS NOT NULL)"
        " SELECT name, (SELECT state FROM connection_history WHERE instance = i.name"
        " ORDER BY id DESC LIMIT 1) FROM i WHERE name IS NOT NULL LIMIT 100",
    [WH__S_SCRIPT_COUNTS] = "SELECT name, labels, value FROM metrics_counts"
                            " ORDER BY name, labels LIMIT 1000",
};

const char *wh_metrics_sql(size_t i)
{
    return i < WH__S_COUNT ? wh__store_sql[i] : NULL;
}

static int wh__store_int(sqlite3 *db, int which, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_prepare_v2(db, wh__store_sql[which], -1, &st, NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW;
    if (ok)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return ok;
}

static const char *wh__conn_state(const char *s)
{
    static const char *const known[] = {"open", "connecting", "close"};
    for (size_t i = 0; s != NULL && i < WH_ARRAY_SIZE(known); i++)
        if (strcmp(s, known[i]) == 0)
            return known[i];
    return "other";
}

/* A script metric label name: [a-zA-Z_][a-zA-Z0-9_]*, not reserved ("__…", "metric"). */
static void wh__label_name(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; in[i] != '\0' && o + 1 < len; i++) {
        char ch = in[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
                 (o > 0 && ch >= '0' && ch <= '9');
        out[o++] = ok ? ch : '_';
    }
    out[o] = '\0';
    if (o == 0 || strcmp(out, "metric") == 0 || strncmp(out, "__", 2) == 0) {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "label_%s", out);
        snprintf(out, len, "%s", tmp);
    }
}

/* The scripts' wahook.metric.inc counters: wahook_script_counter_total{metric, labels…}. */
static void wh__script_counts(wh_metrics_out_t *o, sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, wh__store_sql[WH__S_SCRIPT_COUNTS], -1, &st, NULL) != SQLITE_OK)
        return;
    int header = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *ltxt = (const char *)sqlite3_column_text(st, 1);
        if (name == NULL)
            continue;
        if (!header) {
            wh_metrics_out_family(o, "wahook_script_counter_total",
                                  "counter", "Counters scripts increment with wahook.metric.inc.");
            header = 1;
        }
        const char *labels[2 * 9 + 1] = {"metric", name};
        char names[8][64], values[8][128];
        size_t k = 2, nl = 0;
        json_t *lj = ltxt != NULL ? json_loads(ltxt, 0, NULL) : NULL;
        const char *key;
        json_t *v;
        json_object_foreach(lj, key, v) {
            if (nl >= 8)
                break;
            wh__label_name(key, names[nl], sizeof(names[nl]));
            if (json_is_string(v))
                snprintf(values[nl], sizeof(values[nl]), "%s", json_string_value(v));
            else if (json_is_integer(v))
                snprintf(values[nl], sizeof(values[nl]), "%lld",
                         (long long)json_integer_value(v));
            else if (json_is_real(v))
                snprintf(values[nl], sizeof(values[nl]), "%g", json_real_value(v));
            else if (json_is_boolean(v))
                snprintf(values[nl], sizeof(values[nl]), "%s", json_is_true(v) ? "true" : "false");
            else
                continue;
            labels[k++] = names[nl];
            labels[k++] = values[nl];
            nl++;
        }
        labels[k] = NULL;
        wh_metrics_out_sample(o, "wahook_script_counter_total", labels,
                              (double)sqlite3_column_int64(st, 2));
        json_decref(lj);
    }
    sqlite3_finalize(st);
}

static void wh__collect_store(wh_metrics_out_t *o, const char *db_path)
{
    struct stat sb;
    sqlite3 *db = NULL;
    if (db_path == NULL || stat(db_path, &sb) != 0 ||
        sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK) {
        sqlite3_close(db);
        return;
    }
    sqlite3_busy_timeout(db, 2000);
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    int64_t n = 0;
    if (wh__store_int(db, WH__S_PENDING, &n)) {
        wh_metrics_out_family(o, "wahook_inbox_depth", "gauge",
                              "Events stored and not yet processed (pending).");
        wh_metrics_out_sample(o, "wahook_inbox_depth", NULL, (double)n);
    }
    if (wh__store_int(db, WH__S_RETRYING, &n)) {
        wh_metrics_out_family(o, "wahook_inbox_retrying", "gauge",
                              "Pending events waiting for a retry after a failed run.");
        wh_metrics_out_sample(o, "wahook_inbox_retrying", NULL, (double)n);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, wh__store_sql[WH__S_OUTBOX], -1, &st, NULL) == SQLITE_OK) {
        wh_metrics_out_family(o, "wahook_outbox_depth", "gauge",
                              "Actions waiting for delivery, by target and state.");
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            const char *s = (const char *)sqlite3_column_text(st, 1);
            const char *labels[] = {"target", t != NULL ? t : "", "state", s != NULL ? s : "",
                                    NULL};
            wh_metrics_out_sample(o, "wahook_outbox_depth", labels,
                                  (double)sqlite3_column_int64(st, 2));
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    wh_metrics_out_family(o, "wahook_dead_letters", "gauge",
                          "Dead letters now: failed events (queue=\"events\") and undeliverable "
                          "actions per target.");
    if (wh__store_int(db, WH__S_DEAD_EVENTS, &n)) {
        const char *labels[] = {"queue", "events", NULL};
        wh_metrics_out_sample(o, "wahook_dead_letters", labels, (double)n);
    }
    if (sqlite3_prepare_v2(db, wh__store_sql[WH__S_DEAD_OUTBOX], -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            const char *labels[] = {"queue", t != NULL ? t : "", NULL};
            wh_metrics_out_sample(o, "wahook_dead_letters", labels,
                                  (double)sqlite3_column_int64(st, 1));
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, wh__store_sql[WH__S_CONNECTION], -1, &st, NULL) == SQLITE_OK) {
        wh_metrics_out_family(o, "wahook_connection_state", "gauge",
                              "1 for each instance's last known WhatsApp connection state.");
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *i = (const char *)sqlite3_column_text(st, 0);
            const char *labels[] = {"instance", i != NULL ? i : "", "state",
                                    wh__conn_state((const char *)sqlite3_column_text(st, 1)),
                                    NULL};
            wh_metrics_out_sample(o, "wahook_connection_state", labels, 1);
        }
    }
    sqlite3_finalize(st);
    wh__script_counts(o, db);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
}

static int64_t wh__start_ms;

static void wh__collect_env(wh_metrics_out_t *o, const wh_admin_env_t *env)
{
    const char *bl[] = {"version", WH_VERSION, NULL};
    wh_metrics_out_family(o, "wahook_build_info", "gauge", "The running wahook version.");
    wh_metrics_out_sample(o, "wahook_build_info", bl, 1);
    if (wh__start_ms > 0) {
        wh_metrics_out_family(o, "wahook_start_time_seconds", "gauge",
                              "When the server started, seconds since the epoch.");
        wh_metrics_out_sample(o, "wahook_start_time_seconds", NULL, (double)wh__start_ms / 1000);
    }
    if (env->store != NULL) {
        wh_metrics_out_family(o, "wahook_store_up", "gauge",
                              "1 when the store's last write succeeded.");
        wh_metrics_out_sample(o, "wahook_store_up", NULL, wh_store_ready(env->store) ? 1 : 0);
        wh_metrics_out_family(o, "wahook_store_queue_depth", "gauge",
                              "Submissions waiting for the store writer.");
        wh_metrics_out_sample(o, "wahook_store_queue_depth", NULL,
                              (double)wh_store_queue_depth(env->store));
    }
    if (env->scripts != NULL) {
        json_t *s = wh_scripts_status(env->scripts);
        const char *ver = json_string_value(json_object_get(s, "version"));
        const char *vl[] = {"version", ver != NULL ? ver : "", NULL};
        wh_metrics_out_family(o, "wahook_script_info", "gauge", "The loaded script version.");
        wh_metrics_out_sample(o, "wahook_script_info", vl, 1);
        wh_metrics_out_family(o, "wahook_script_loaded_timestamp_seconds", "gauge",
                              "When the running scripts were loaded.");
        wh_metrics_out_sample(o, "wahook_script_loaded_timestamp_seconds", NULL,
                              (double)json_integer_value(json_object_get(s, "loaded_at")) / 1000);
        wh_metrics_out_family(o, "wahook_script_reloads_total", "counter",
                              "Script reloads by result (a failed one keeps the running "
                              "version).");
        const char *ok[] = {"result", "ok", NULL}, *failed[] = {"result", "failed", NULL};
        wh_metrics_out_sample(o, "wahook_script_reloads_total", ok,
                              (double)json_integer_value(json_object_get(s, "reloads")));
        wh_metrics_out_sample(o, "wahook_script_reloads_total", failed,
                              (double)json_integer_value(json_object_get(s, "reload_failures")));
        wh_metrics_out_family(o, "wahook_script_reload_error", "gauge",
                              "1 while the last reload failed.");
        wh_metrics_out_sample(o, "wahook_script_reload_error", NULL,
                              json_object_get(s, "last_error") != NULL ? 1 : 0);
        json_decref(s);
    }
    if (env->processors != NULL) {
        json_t *p = wh_processors_stats(env->processors);
        wh_metrics_out_family(o, "wahook_normalize_errors_total", "counter",
                              "Events whose normalize.lua failed (C fallback used).");
        wh_metrics_out_sample(o, "wahook_normalize_errors_total", NULL,
                              (double)json_integer_value(json_object_get(p, "normalize_errors")));
        wh_metrics_out_family(o, "wahook_contact_mismatches_total", "counter",
                              "Events where normalize.lua and ingest disagreed on the contact.");
        wh_metrics_out_sample(
            o, "wahook_contact_mismatches_total", NULL,
            (double)json_integer_value(json_object_get(p, "contact_mismatches")));
        json_decref(p);
    }
    wh__collect_store(o, env->db_path);
}

char *wh_metrics_render(const wh_admin_env_t *env, size_t *len)
{
    wh_metrics_out_t o = {0};
    for (size_t i = 0; i < WH__M_COUNT; i++)
        wh__render_metric(&o, &wh__metrics[i]);
    if (env != NULL)
        wh__collect_env(&o, env);
    pthread_mutex_lock(&wh__coll_mu);
    for (size_t i = 0; i < wh__ncoll; i++)
        wh__coll[i].fn(&o, wh__coll[i].ud);
    pthread_mutex_unlock(&wh__coll_mu);
    if (o.oom || o.buf == NULL) {
        free(o.buf);
        return NULL;
    }
    if (len != NULL)
        *len = o.len;
    return o.buf;
}

/* ---- the admin module: GET /metrics ------------------------------------------------------- */

static atomic_int wh__scrapes;

static void wh__scrape(void *arg, wh_admin_reply_t *reply)
{
    const wh_admin_env_t *env = arg;
    size_t len = 0;
    reply->body = wh_metrics_render(env, &len);
    if (reply->body != NULL) {
        reply->status = 200;
        reply->content_type = "text/plain; version=0.0.4; charset=utf-8";
        reply->body_len = len;
    } else {
        reply->status = 503;
        reply->content_type = "application/json";
        reply->body = strdup("{\"error\":\"out of memory\"}");
        reply->body_len = 0;
    }
    atomic_fetch_sub(&wh__scrapes, 1);
}

static int wh__metrics_serve(void *self, const wh_admin_env_t *env, h2o_req_t *req,
                             h2o_iovec_t path)
{
    if (!h2o_memis(path.base, path.len, H2O_STRLIT("/metrics")))
        return 0;
    int require_token = self != NULL;
    if (require_token && !wh_admin_token_ok(env, req)) {
        wh_admin_respond_error(req, 401,
                               env->conf == NULL || env->conf->admin.token == NULL ||
                                       env->conf->admin.token[0] == '\0'
                                   ? "the admin API is disabled: set WAHOOK_ADMIN_TOKEN"
                                   : "invalid admin token");
        return 1;
    }
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        wh_admin_respond_error(req, 405, "method not allowed");
        return 1;
    }
    if (atomic_fetch_add(&wh__scrapes, 1) >= 2) {
        atomic_fetch_sub(&wh__scrapes, 1);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("1"));
        wh_admin_respond_error(req, 503, "a scrape is already running");
        return 1;
    }
    /* env lives from server start to shutdown, longer than any deferred work */
    if (wh_admin_defer(req, wh__scrape, (void *)env) != WH_OK) {
        atomic_fetch_sub(&wh__scrapes, 1);
        wh_admin_respond_error(req, 503, "cannot scrape now");
    }
    return 1;
}

void wh_metrics_module_init(struct wh_admin_module *m, int require_token)
{
    static int token_marker;
    if (wh__start_ms == 0)
        wh__start_ms = wh_now_ms();
    m->prefix = "/metrics";
    m->serve = wh__metrics_serve;
    m->self = require_token ? &token_marker : NULL;
}
