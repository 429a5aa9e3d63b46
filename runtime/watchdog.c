/* The watchdog thread: polls Evolution's connection state, watches for webhook silence and
 * authentication-rejection spikes, and raises one alert per incident (and one when it clears). */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/watchdog.h"

#define WH__MAX_BODY ((size_t)64 * 1024)
#define WH__MAX_INSTANCES 256
#define WH__DEFAULT_TIMEOUT_MS 10000

/* ---- authentication rejections: per-second buckets of the last minute, lock-free ---- */

/* Each slot packs (second << 32 | count); a slot whose second is stale starts again at 1. */
static _Atomic uint64_t wh__auth_ring[64];

void wh_watchdog_note_auth_failure_at(int64_t now_ms)
{
    uint32_t sec = (uint32_t)(now_ms / 1000);
    _Atomic uint64_t *slot = &wh__auth_ring[sec % 64];
    uint64_t old = atomic_load(slot), nw;
    do {
        nw = (uint32_t)(old >> 32) == sec && (old & 0xffffffffu) != 0
                 ? old + 1
                 : ((uint64_t)sec << 32) | 1u;
    } while (!atomic_compare_exchange_weak(slot, &old, nw));
}

void wh_watchdog_note_auth_failure(void)
{
    wh_watchdog_note_auth_failure_at(wh_now_ms());
}

int64_t wh_watchdog_auth_failures(int64_t now_ms)
{
    uint32_t now = (uint32_t)(now_ms / 1000);
    int64_t n = 0;
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__auth_ring); i++) {
        uint64_t v = atomic_load(&wh__auth_ring[i]);
        if ((v & 0xffffffffu) != 0 && (uint32_t)(now - (uint32_t)(v >> 32)) < 60)
            n += (int64_t)(v & 0xffffffffu);
    }
    return n;
}

/* ---- the watchdog ---- */

typedef struct wh__inst {
    char *name;
    char state[32];    /* last polled state; "" before the first answer */
    int not_open;      /* consecutive answers other than "open" */
    int64_t polled_at; /* ms of the last answer */
    char poll_error[160];
    int64_t last_webhook; /* ms; 0: none seen */
} wh__inst_t;

struct wh_watchdog {
    char *url, *api_key;
    int tls_verify;
    int64_t timeout_ms;
    int64_t interval_ms, silence_ms, auth_threshold;
    int64_t started_ms;
    int discover; /* no instances configured: watch every instance that sends webhooks */
    wh__inst_t *inst;
    size_t ninst;

    sqlite3 *db;
    sqlite3_stmt *st_events, *st_incident;
    int64_t events_seen; /* events.id scanned up to */

    wh_store_t *store;
    wh_watchdog_poll_fn poll_fn;
    void *poll_ud;
    wh_watchdog_alert_fn alert_fn;
    void *alert_ud;
    CURL *easy;
    int curl_global;

    pthread_mutex_t mu; /* instance fields read by wh_watchdog_status, and the stop flag */
    pthread_cond_t cv;
    int stop;
    pthread_t thread;
    int running;
};

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static wh__inst_t *wh__inst_find(wh_watchdog_t *w, const char *name)
{
    for (size_t i = 0; i < w->ninst; i++)
        if (strcmp(w->inst[i].name, name) == 0)
            return &w->inst[i];
    return NULL;
}

/* Adds an instance (under mu). NULL on ENOMEM or when the list is full. */
static wh__inst_t *wh__inst_add(wh_watchdog_t *w, const char *name)
{
    if (w->ninst >= WH__MAX_INSTANCES)
        return NULL;
    wh__inst_t *v = realloc(w->inst, (w->ninst + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    w->inst = v;
    wh__inst_t *in = &w->inst[w->ninst];
    memset(in, 0, sizeof(*in));
    if ((in->name = strdup(name)) == NULL)
        return NULL;
    w->ninst++;
    return in;
}

/* ---- Evolution's connectionState over libcurl ---- */

typedef struct wh__buf {
    char *p;
    size_t n;
    int over;
} wh__buf_t;

static size_t wh__write(char *data, size_t size, size_t nmemb, void *ud)
{
    wh__buf_t *b = ud;
    size_t len = size * nmemb;
    if (b->n + len > WH__MAX_BODY) {
        b->over = 1;
        return 0;
    }
    char *p = realloc(b->p, b->n + len + 1);
    if (p == NULL)
        return 0;
    memcpy(p + b->n, data, len);
    b->p = p;
    b->n += len;
    p[b->n] = '\0';
    return len;
}

static int wh__curl_poll(void *ud, const char *instance, char *state, size_t statelen, char *err,
                         size_t errlen)
{
    wh_watchdog_t *w = ud;
    if (w->easy == NULL && (w->easy = curl_easy_init()) == NULL) {
        wh__seterr(err, errlen, "cannot initialise libcurl");
        return WH_ENOMEM;
    }
    CURL *c = w->easy;
    curl_easy_reset(c);
    char *esc = curl_easy_escape(c, instance, 0);
    size_t ulen = strlen(w->url);
    while (ulen > 0 && w->url[ulen - 1] == '/')
        ulen--;
    char url[2048];
    int n = snprintf(url, sizeof(url), "%.*s/instance/connectionState/%s", (int)ulen, w->url,
                     esc != NULL ? esc : "");
    curl_free(esc);
    if (esc == NULL || n < 0 || (size_t)n >= sizeof(url)) {
        wh__seterr(err, errlen, "connectionState URL too long");
        return WH_EINVAL;
    }
    struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
    char key[1024];
    if (w->api_key != NULL && hdrs != NULL) {
        snprintf(key, sizeof(key), "apikey: %s", w->api_key);
        struct curl_slist *h2 = curl_slist_append(hdrs, key);
        if (h2 == NULL) {
            curl_slist_free_all(hdrs);
            hdrs = NULL;
        } else {
            hdrs = h2;
        }
    }
    if (hdrs == NULL) {
        wh__seterr(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    wh__buf_t b = {NULL, 0, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, wh__write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)w->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)w->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, w->tls_verify ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, w->tls_verify ? 2L : 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    int rc = WH_OK;
    if (cc != CURLE_OK) {
        wh__seterr(err, errlen, "%s", b.over ? "answer too large" : curl_easy_strerror(cc));
        rc = cc == CURLE_OPERATION_TIMEDOUT ? WH_ETIMEDOUT : WH_EIO;
    } else if (status == 404) {
        snprintf(state, statelen, "missing");
    } else if (status != 200) {
        wh__seterr(err, errlen, "HTTP %ld from connectionState", status);
        rc = WH_EIO;
    } else {
        json_t *j = b.p != NULL ? json_loadb(b.p, b.n, 0, NULL) : NULL;
        const char *s = json_string_value(json_object_get(json_object_get(j, "instance"), "state"));
        if (s == NULL)
            s = json_string_value(json_object_get(j, "state"));
        if (s == NULL || s[0] == '\0' || strlen(s) >= statelen) {
            wh__seterr(err, errlen, "connectionState answer has no state");
            rc = WH_EINVAL;
        } else {
            snprintf(state, statelen, "%s", s);
        }
        json_decref(j);
    }
    free(b.p);
    return rc;
}

static int wh__store_alert(void *ud, const wh_outbox_alert_t *a)
{
    return wh_outbox_alert(ud, a);
}

/* ---- database reads ---- */

/* Folds the webhooks that arrived since the last round into last_webhook. */
static int wh__read_events(wh_watchdog_t *w)
{
    if (w->db == NULL)
        return WH_OK;
    if (w->st_events == NULL &&
        sqlite3_prepare_v2(w->db,
                           "SELECT instance, MAX(received_at), MAX(id) FROM events WHERE id > ?1"
                           " GROUP BY instance",
                           -1, &w->st_events, NULL) != SQLITE_OK) {
        wh_log(WH_LOG_WARN, "watchdog: cannot read events", "{s:s}", "error",
               sqlite3_errmsg(w->db));
        return WH_EIO;
    }
    sqlite3_stmt *st = w->st_events;
    sqlite3_bind_int64(st, 1, w->events_seen);
    int rc;
    int64_t seen = w->events_seen;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int64_t at = sqlite3_column_int64(st, 1), id = sqlite3_column_int64(st, 2);
        if (id > seen)
            seen = id;
        if (name == NULL)
            continue;
        pthread_mutex_lock(&w->mu);
        wh__inst_t *in = wh__inst_find(w, name);
        if (in == NULL && w->discover && name[0] != '\0')
            in = wh__inst_add(w, name);
        if (in != NULL && at > in->last_webhook)
            in->last_webhook = at;
        pthread_mutex_unlock(&w->mu);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        wh_log(WH_LOG_WARN, "watchdog: cannot read events", "{s:s}", "error",
               sqlite3_errmsg(w->db));
        return WH_EIO;
    }
    w->events_seen = seen;
    return WH_OK;
}

/* 1 open, 0 not open, -1 unknown (no table yet, read error). */
static int wh__incident_open(wh_watchdog_t *w, const char *key)
{
    if (w->db == NULL)
        return -1;
    if (w->st_incident == NULL &&
        sqlite3_prepare_v2(w->db, "SELECT cleared_at IS NULL FROM incidents WHERE key = ?1", -1,
                           &w->st_incident, NULL) != SQLITE_OK)
        return -1;
    sqlite3_stmt *st = w->st_incident;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int open = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return -1;
    return open != 0;
}

/* Opens (want 1) or clears (want 0) incident key with one alert, unless it already is so.
 * Returns 1 when an alert was inserted. */
static int wh__incident(wh_watchdog_t *w, const char *key, int want, const char *instance,
                        const char *kind, const char *text, json_t *fields)
{
    int inserted = 0;
    int open = wh__incident_open(w, key);
    if (open != want) {
        json_object_set_new(fields, "source", json_string("watchdog"));
        wh_outbox_alert_t a = {.instance = instance,
                               .kind = kind,
                               .text = text,
                               .fields = fields,
                               .incident = key,
                               .incident_clear = !want};
        int rc = w->alert_fn(w->alert_ud, &a);
        if (rc < 0)
            wh_log(WH_LOG_WARN, "watchdog: cannot raise alert", "{s:s,s:s,s:s}", "kind", kind,
                   "incident", key, "error", wh_strerror(rc));
        else if (rc > 0)
            wh_log(want ? WH_LOG_WARN : WH_LOG_INFO, text, "{s:s,s:s}", "kind", kind, "incident",
                   key);
        inserted = rc > 0;
    }
    json_decref(fields);
    return inserted;
}

static void wh__fmt_duration(char *buf, size_t len, int64_t ms)
{
    if (ms >= 2 * 86400000LL)
        snprintf(buf, len, "%lld days", (long long)(ms / 86400000LL));
    else if (ms >= 2 * 3600000)
        snprintf(buf, len, "%lld h", (long long)(ms / 3600000));
    else if (ms >= 120000)
        snprintf(buf, len, "%lld min", (long long)(ms / 60000));
    else
        snprintf(buf, len, "%lld s", (long long)(ms / 1000));
}

/* ---- one round ---- */

static int wh__check_instance(wh_watchdog_t *w, size_t i, int64_t now)
{
    int alerts = 0;
    char text[512], key[300], name[128];
    pthread_mutex_lock(&w->mu);
    snprintf(name, sizeof(name), "%s", w->inst[i].name);
    pthread_mutex_unlock(&w->mu);

    if (w->poll_fn != NULL) {
        char state[32] = "", err[160] = "";
        int rc = w->poll_fn(w->poll_ud, name, state, sizeof(state), err, sizeof(err));
        int want = -1;
        pthread_mutex_lock(&w->mu);
        wh__inst_t *in = &w->inst[i];
        if (rc == WH_OK) {
            snprintf(in->state, sizeof(in->state), "%s", state);
            in->polled_at = now;
            in->poll_error[0] = '\0';
            if (strcmp(state, "open") == 0) {
                in->not_open = 0;
                want = 0;
            } else {
                /* "connecting" is normal for a moment during a reconnect; "close" comes only
                 * with a logout or a ban. */
                in->not_open++;
                if (strcmp(state, "close") == 0 || strcmp(state, "missing") == 0 ||
                    in->not_open >= 2)
                    want = 1;
            }
        } else {
            snprintf(in->poll_error, sizeof(in->poll_error), "%s",
                     err[0] != '\0' ? err : wh_strerror(rc));
        }
        pthread_mutex_unlock(&w->mu);
        if (rc != WH_OK)
            wh_log(WH_LOG_WARN, "watchdog: connectionState poll failed", "{s:s,s:s}", "instance",
                   name, "error", err[0] != '\0' ? err : wh_strerror(rc));
        snprintf(key, sizeof(key), "connection:%s", name);
        if (want == 1) {
            if (strcmp(state, "missing") == 0)
                snprintf(text, sizeof(text), "Evolution has no instance \"%s\" (HTTP 404)", name);
            else
                snprintf(text, sizeof(text),
                         "WhatsApp instance \"%s\" is not connected (Evolution reports state "
                         "\"%s\")",
                         name, state);
            alerts += wh__incident(w, key, 1, name, "connection_closed", text,
                                   json_pack("{s:s,s:s}", "instance", name, "state", state));
        } else if (want == 0) {
            snprintf(text, sizeof(text), "WhatsApp instance \"%s\" is connected again", name);
            alerts += wh__incident(w, key, 0, name, "connection_restored", text,
                                   json_pack("{s:s,s:s}", "instance", name, "state", state));
        }
    }

    if (w->silence_ms > 0) {
        pthread_mutex_lock(&w->mu);
        int64_t last = w->inst[i].last_webhook;
        pthread_mutex_unlock(&w->mu);
        int64_t ref = last > 0 ? last : w->started_ms;
        snprintf(key, sizeof(key), "silence:%s", name);
        char dur[32];
        if (now - ref >= w->silence_ms) {
            wh__fmt_duration(dur, sizeof(dur), now - ref);
            snprintf(text, sizeof(text), "No webhook from instance \"%s\" for %s%s", name, dur,
                     last > 0 ? "" : " (none since wahook started)");
            json_t *f = json_pack("{s:s,s:I}", "instance", name, "silence_ms",
                                  (json_int_t)w->silence_ms);
            if (f != NULL)
                json_object_set_new(f, "last_webhook_at",
                                    last > 0 ? json_integer((json_int_t)last) : json_null());
            alerts += wh__incident(w, key, 1, name, "webhooks_silent", text, f);
        } else {
            snprintf(text, sizeof(text), "Webhooks from instance \"%s\" arrive again", name);
            alerts += wh__incident(w, key, 0, name, "webhooks_resumed", text,
                                   json_pack("{s:s,s:I}", "instance", name, "last_webhook_at",
                                             (json_int_t)last));
        }
    }
    return alerts;
}

int wh_watchdog_tick(wh_watchdog_t *w, int64_t now)
{
    int rc = wh__read_events(w);
    int alerts = 0;
    pthread_mutex_lock(&w->mu);
    size_t n = w->ninst;
    pthread_mutex_unlock(&w->mu);
    /* Instances are only ever appended (by this thread), so indexes stay valid. */
    for (size_t i = 0; i < n; i++)
        alerts += wh__check_instance(w, i, now);

    if (w->auth_threshold > 0) {
        int64_t count = wh_watchdog_auth_failures(now);
        char text[512];
        if (count >= w->auth_threshold) {
            snprintf(text, sizeof(text),
                     "%lld webhook requests refused for their credentials in the last minute "
                     "(alert at %lld): Evolution drops events it gets 401/403 for — check the "
                     "webhook secret/token on both sides",
                     (long long)count, (long long)w->auth_threshold);
            alerts += wh__incident(w, "auth_failures", 1, NULL, "auth_failures", text,
                                   json_pack("{s:I,s:I}", "count", (json_int_t)count,
                                             "threshold", (json_int_t)w->auth_threshold));
        } else if (count * 2 < w->auth_threshold) {
            snprintf(text, sizeof(text),
                     "Authentication rejections are back to normal (%lld in the last minute)",
                     (long long)count);
            alerts += wh__incident(w, "auth_failures", 0, NULL, "auth_failures_cleared", text,
                                   json_pack("{s:I,s:I}", "count", (json_int_t)count,
                                             "threshold", (json_int_t)w->auth_threshold));
        }
    }
    return rc != WH_OK ? rc : alerts;
}

/* ---- life cycle ---- */

int wh_watchdog_new(wh_watchdog_t **out, const wh_watchdog_opts_t *o, int64_t started_ms,
                    char *err, size_t errlen)
{
    if (out == NULL || o == NULL || o->interval_ms <= 0 ||
        (o->alert_fn == NULL && o->store == NULL)) {
        wh__seterr(err, errlen, "watchdog: interval and a store (or alert function) are required");
        return WH_EINVAL;
    }
    wh_watchdog_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        goto nomem;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->tls_verify = o->tls_verify;
    w->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : WH__DEFAULT_TIMEOUT_MS;
    w->interval_ms = o->interval_ms;
    w->silence_ms = o->silence_ms > 0 ? o->silence_ms : 0;
    w->auth_threshold = o->auth_failures > 0 ? o->auth_failures : 0;
    w->started_ms = started_ms;
    w->store = o->store;
    w->alert_fn = o->alert_fn != NULL ? o->alert_fn : wh__store_alert;
    w->alert_ud = o->alert_fn != NULL ? o->alert_ud : o->store;
    if (o->evolution_url != NULL && o->evolution_url[0] != '\0') {
        if ((w->url = strdup(o->evolution_url)) == NULL)
            goto nomem;
        if (o->evolution_api_key != NULL && (w->api_key = strdup(o->evolution_api_key)) == NULL)
            goto nomem;
    }
    if (o->poll_fn != NULL) {
        w->poll_fn = o->poll_fn;
        w->poll_ud = o->poll_ud;
    } else if (w->url != NULL) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            wh__seterr(err, errlen, "watchdog: cannot initialise libcurl");
            wh_watchdog_free(w);
            return WH_ERR;
        }
        w->curl_global = 1;
        w->poll_fn = wh__curl_poll;
        w->poll_ud = w;
    }
    size_t ninst = o->instances != NULL ? o->instances->n : 0;
    for (size_t i = 0; i < ninst; i++)
        if (wh__inst_find(w, o->instances->v[i]) == NULL &&
            wh__inst_add(w, o->instances->v[i]) == NULL)
            goto nomem;
    w->discover = ninst == 0;
    if (o->db_path != NULL) {
        if (sqlite3_open_v2(o->db_path, &w->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK) {
            wh__seterr(err, errlen, "watchdog: cannot open %s: %s", o->db_path,
                       w->db != NULL ? sqlite3_errmsg(w->db) : "out of memory");
            wh_watchdog_free(w);
            return WH_EIO;
        }
        sqlite3_busy_timeout(w->db, 2000);
    }
    *out = w;
    return WH_OK;
nomem:
    wh__seterr(err, errlen, "out of memory");
    wh_watchdog_free(w);
    return WH_ENOMEM;
}

static void *wh__thread(void *arg)
{
    wh_watchdog_t *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        pthread_mutex_unlock(&w->mu);
        int rc = wh_watchdog_tick(w, wh_now_ms());
        if (rc < 0)
            wh_log(WH_LOG_WARN, "watchdog: round failed", "{s:s}", "error", wh_strerror(rc));
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(w->interval_ms / 1000);
        until.tv_nsec += (long)(w->interval_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&w->mu);
        while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int wh_watchdog_run(wh_watchdog_t *w)
{
    if (w == NULL || w->running)
        return WH_EINVAL;
    if (pthread_create(&w->thread, NULL, wh__thread, w) != 0)
        return WH_ERR;
    w->running = 1;
    return WH_OK;
}

void wh_watchdog_free(wh_watchdog_t *w)
{
    if (w == NULL)
        return;
    if (w->running) {
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    sqlite3_finalize(w->st_events);
    sqlite3_finalize(w->st_incident);
    sqlite3_close(w->db);
    if (w->easy != NULL)
        curl_easy_cleanup(w->easy);
    if (w->curl_global)
        curl_global_cleanup();
    for (size_t i = 0; i < w->ninst; i++)
        free(w->inst[i].name);
    free(w->inst);
    free(w->url);
    free(w->api_key);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int wh_watchdog_start(wh_watchdog_t **out, const wh_config_t *conf, wh_store_t *store,
                      const char *db_path, char *err, size_t errlen)
{
    if (out == NULL || conf == NULL)
        return WH_EINVAL;
    *out = NULL;
    if (conf->watchdog_interval_ms <= 0)
        return WH_OK;
    int64_t timeout = conf->evolution.timeout_ms > 0 ? conf->evolution.timeout_ms
                                                      : WH__DEFAULT_TIMEOUT_MS;
    if (timeout > conf->watchdog_interval_ms)
        timeout = conf->watchdog_interval_ms;
    wh_watchdog_opts_t o = {.evolution_url = conf->evolution.url,
                            .evolution_api_key = conf->evolution.api_key,
                            .tls_verify = conf->evolution.tls_verify,
                            .timeout_ms = timeout,
                            .instances = &conf->watchdog_instances,
                            .interval_ms = conf->watchdog_interval_ms,
                            .silence_ms = conf->watchdog_silence_ms,
                            .auth_failures = conf->watchdog_auth_failures,
                            .db_path = db_path,
                            .store = store};
    wh_watchdog_t *w = NULL;
    int rc = wh_watchdog_new(&w, &o, wh_now_ms(), err, errlen);
    if (rc != WH_OK)
        return rc;
    if ((rc = wh_watchdog_run(w)) != WH_OK) {
        wh__seterr(err, errlen, "watchdog: cannot start its thread");
        wh_watchdog_free(w);
        return rc;
    }
    wh_log(WH_LOG_INFO, "watchdog started", "{s:I,s:I,s:I,s:b}", "interval_ms",
           (json_int_t)conf->watchdog_interval_ms, "silence_ms",
           (json_int_t)conf->watchdog_silence_ms, "instances",
           (json_int_t)conf->watchdog_instances.n, "polls",
           conf->evolution.url != NULL && conf->evolution.url[0] != '\0');
    *out = w;
    return WH_OK;
}

void wh_watchdog_stop(wh_watchdog_t *w)
{
    wh_watchdog_free(w);
}

json_t *wh_watchdog_status(wh_watchdog_t *w)
{
    if (w == NULL)
        return NULL;
    json_t *insts = json_object();
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; insts != NULL && i < w->ninst; i++) {
        const wh__inst_t *in = &w->inst[i];
        json_t *o = json_pack(
            "{s:o,s:o,s:o,s:o}", "state",
            in->state[0] != '\0' ? json_string(in->state) : json_null(), "polled_at",
            in->polled_at > 0 ? json_integer((json_int_t)in->polled_at) : json_null(),
            "poll_error", in->poll_error[0] != '\0' ? json_string(in->poll_error) : json_null(),
            "last_webhook_at",
            in->last_webhook > 0 ? json_integer((json_int_t)in->last_webhook) : json_null());
        if (o != NULL)
            json_object_set_new(insts, in->name, o);
    }
    pthread_mutex_unlock(&w->mu);
    return json_pack("{s:o,s:I}", "instances", insts != NULL ? insts : json_object(),
                     "auth_failures_last_minute", (json_int_t)wh_watchdog_auth_failures(wh_now_ms()));
}
