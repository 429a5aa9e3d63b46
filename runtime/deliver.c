/* Deliverer threads: a libcurl multi loop per thread draining the outbox to Evolution sendText,
 * the CRM (driving the Lua mapping run), SMTP mail and alert channels, gated per target by a
 * concurrency limit, a token bucket and a circuit breaker, with failure classification, backoff,
 * dead letters, the Evolution connection pause and the echo grace for timed-out sends. */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>

#include "wahook/auth.h"
#include "wahook/common.h"
#include "wahook/crm_runner.h"
#include "wahook/deliver.h"
#include "wahook/log.h"
#include "wahook/lua_vm.h"
#include "wahook/outbox.h"

/* ==== pure parts ============================================================================== */

const char *wh_deliver_class_name(wh_deliver_class_t c)
{
    switch (c) {
    case WH_DC_OK: return "ok";
    case WH_DC_RETRY: return "retry";
    case WH_DC_TIMEOUT: return "timeout";
    case WH_DC_MISCONFIGURED: return "misconfigured";
    case WH_DC_PERMANENT: return "permanent";
    case WH_DC_NOT_ON_WHATSAPP: return "not_on_whatsapp";
    }
    return "unknown";
}

/* 1 when arr (a JSON array) holds an object whose "exists" is false. */
static int wh__array_says_missing(const json_t *arr)
{
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        if (json_is_object(v) && json_is_false(json_object_get(v, "exists")))
            return 1;
    }
    return 0;
}

int wh_deliver_not_on_whatsapp(const char *body, size_t len)
{
    if (body == NULL || len == 0)
        return 0;
    json_t *root = json_loadb(body, len, 0, NULL);
    if (root == NULL)
        return 0;
    int found = 0;
    const json_t *resp = json_object_get(root, "response");
    const json_t *msg = json_object_get(resp != NULL ? resp : root, "message");
    if (json_is_array(msg)) {
        found = wh__array_says_missing(msg);
    } else if (json_is_string(msg)) {
        /* Some versions put the array into the message as text. */
        const char *s = json_string_value(msg);
        json_t *inner = json_loads(s, 0, NULL);
        if (json_is_array(inner))
            found = wh__array_says_missing(inner);
        else if (json_is_object(inner))
            found = json_is_false(json_object_get(inner, "exists"));
        else
            found = strstr(s, "\"exists\":false") != NULL || strstr(s, "exists: false") != NULL ||
                    strstr(s, "\"exists\": false") != NULL;
        json_decref(inner);
    }
    json_decref(root);
    return found;
}

wh_deliver_class_t wh_deliver_classify_http(int curl_code, long status, const char *body,
                                            size_t len)
{
    if (curl_code != CURLE_OK) {
        switch (curl_code) {
        case CURLE_OPERATION_TIMEDOUT:
            return WH_DC_TIMEOUT;
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_LOGIN_DENIED:
        case CURLE_TOO_MANY_REDIRECTS:
            return WH_DC_MISCONFIGURED;
        default:
            return WH_DC_RETRY; /* connection refused, reset, DNS, TLS handshake, … */
        }
    }
    if (status >= 200 && status < 300)
        return WH_DC_OK;
    if (status == 408 || status == 429 || status >= 500 || status < 100)
        return WH_DC_RETRY;
    if (status == 401 || status == 403 || status == 404 || (status >= 300 && status < 400))
        return WH_DC_MISCONFIGURED;
    if (status == 400 && wh_deliver_not_on_whatsapp(body, len))
        return WH_DC_NOT_ON_WHATSAPP;
    return WH_DC_PERMANENT; /* 400, 422 and every other answer about this one request */
}

wh_deliver_class_t wh_deliver_classify_smtp(int curl_code, long smtp_code)
{
    if (curl_code == CURLE_OK)
        return WH_DC_OK;
    if (curl_code == CURLE_LOGIN_DENIED || smtp_code == 530 || smtp_code == 535 ||
        smtp_code == 534 || smtp_code == 538)
        return WH_DC_MISCONFIGURED;
    switch (curl_code) {
    case CURLE_OPERATION_TIMEDOUT:
        return WH_DC_TIMEOUT;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_USE_SSL_FAILED: /* STARTTLS required but not offered */
        return WH_DC_MISCONFIGURED;
    default:
        break;
    }
    if (smtp_code >= 500 && smtp_code < 600)
        return WH_DC_PERMANENT; /* e.g. 550 mailbox unavailable, 552 message too big */
    return WH_DC_RETRY;         /* 4xx and connection trouble */
}

int64_t wh_deliver_backoff(int attempts, int64_t base_ms, int64_t max_ms, double u)
{
    if (attempts < 1)
        attempts = 1;
    if (base_ms < 1)
        base_ms = 1;
    if (max_ms < base_ms)
        max_ms = base_ms;
    int64_t wait = base_ms;
    for (int i = 1; i < attempts && wait < max_ms; i++)
        wait = wait > INT64_MAX / 2 ? INT64_MAX : wait * 2;
    if (wait > max_ms)
        wait = max_ms;
    if (!(u >= 0.0 && u < 1.0))
        u = 0.5;
    /* ±20% so that a burst of failures does not retry in lockstep. */
    double jitter = ((u * 2.0) - 1.0) * 0.2 * (double)wait;
    int64_t out = wait + (int64_t)jitter;
    return out < 1 ? 1 : out;
}

int64_t wh_deliver_retry_after_ms(const char *value, int64_t now_ms)
{
    static const int64_t day = 86400000;
    if (value == NULL)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value == '\0')
        return -1;
    if (*value >= '0' && *value <= '9') {
        int64_t secs = 0;
        const char *p = value;
        for (; *p >= '0' && *p <= '9'; p++) {
            secs = secs * 10 + (*p - '0');
            if (secs > day / 1000)
                return day;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        return *p == '\0' ? secs * 1000 : -1;
    }
    time_t t = curl_getdate(value, NULL);
    if (t == (time_t)-1)
        return -1;
    int64_t ms = (int64_t)t * 1000 - now_ms;
    if (ms < 0)
        ms = 0;
    return ms > day ? day : ms;
}

void wh_circuit_init(wh_circuit_t *c, int threshold, int64_t open_ms)
{
    memset(c, 0, sizeof(*c));
    c->threshold = threshold > 0 ? threshold : 1;
    c->open_ms = open_ms > 0 ? open_ms : 1;
}

int wh_circuit_allow(wh_circuit_t *c, int64_t now)
{
    switch (c->state) {
    case WH_CIRCUIT_CLOSED:
        return 1;
    case WH_CIRCUIT_OPEN:
        if (now < c->open_until)
            return 0;
        c->state = WH_CIRCUIT_HALF_OPEN;
        c->probing = 1;
        return 1;
    default:
        if (c->probing)
            return 0;
        c->probing = 1;
        return 1;
    }
}

int wh_circuit_success(wh_circuit_t *c, int64_t now)
{
    (void)now;
    int was = c->state != WH_CIRCUIT_CLOSED;
    c->state = WH_CIRCUIT_CLOSED;
    c->failures = 0;
    c->probing = 0;
    c->misconfigured = 0;
    return was;
}

int wh_circuit_failure(wh_circuit_t *c, int64_t now, int misconfigured)
{
    switch (c->state) {
    case WH_CIRCUIT_CLOSED:
        c->failures++;
        if (!misconfigured && c->failures < c->threshold)
            return 0;
        c->state = WH_CIRCUIT_OPEN;
        c->open_until = now + c->open_ms;
        c->misconfigured = misconfigured;
        return 1;
    case WH_CIRCUIT_HALF_OPEN:
        /* The probe failed: another full open period. */
        c->state = WH_CIRCUIT_OPEN;
        c->open_until = now + c->open_ms;
        c->probing = 0;
        c->misconfigured = misconfigured;
        return 0;
    default:
        /* A request started before the circuit opened failed too: nothing changes. */
        if (misconfigured)
            c->misconfigured = 1;
        return 0;
    }
}

void wh_circuit_release(wh_circuit_t *c)
{
    if (c->state == WH_CIRCUIT_HALF_OPEN)
        c->probing = 0;
}

const char *wh_circuit_state_name(const wh_circuit_t *c)
{
    return c->state == WH_CIRCUIT_CLOSED ? "closed"
           : c->state == WH_CIRCUIT_OPEN ? "open"
                                         : "half_open";
}

void wh_tbucket_init(wh_tbucket_t *b, double rate_per_min, double burst, int64_t now)
{
    b->burst = burst >= 1.0 ? burst : 1.0;
    b->tokens = b->burst;
    b->per_ms = rate_per_min > 0 ? rate_per_min / 60000.0 : 1.0 / 60000.0;
    b->last = now;
}

static void wh__tbucket_refill(wh_tbucket_t *b, int64_t now)
{
    if (now > b->last) {
        b->tokens += (double)(now - b->last) * b->per_ms;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last = now;
    }
}

/* ms until one token is available (0 when one is). */
static int64_t wh__tbucket_wait(wh_tbucket_t *b, int64_t now)
{
    wh__tbucket_refill(b, now);
    if (b->tokens >= 1.0)
        return 0;
    int64_t w = (int64_t)ceil((1.0 - b->tokens) / b->per_ms);
    return w < 1 ? 1 : w;
}

int wh_tbucket_take(wh_tbucket_t *b, int64_t now, int64_t *wait_ms)
{
    int64_t w = wh__tbucket_wait(b, now);
    if (w == 0) {
        b->tokens -= 1.0;
        if (wait_ms != NULL)
            *wait_ms = 0;
        return 1;
    }
    if (wait_ms != NULL)
        *wait_ms = w;
    return 0;
}

char *wh_deliver_evolution_body(const json_t *payload)
{
    const char *to = json_string_value(json_object_get(payload, "to"));
    const char *text = json_string_value(json_object_get(payload, "text"));
    if (to == NULL || text == NULL || to[0] == '\0')
        return NULL;
    json_t *b = json_pack("{s:s,s:s}", "number", to, "text", text);
    if (b == NULL)
        return NULL;
    const json_t *delay = json_object_get(payload, "delay");
    if (json_is_integer(delay) && json_integer_value(delay) >= 0)
        json_object_set_new(b, "delay", json_integer(json_integer_value(delay)));
    const json_t *lp = json_object_get(payload, "link_preview");
    if (json_is_boolean(lp))
        json_object_set_new(b, "linkPreview", json_boolean(json_is_true(lp)));
    const char *quoted = json_string_value(json_object_get(payload, "quoted"));
    if (quoted != NULL && quoted[0] != '\0')
        json_object_set_new(b, "quoted", json_pack("{s:{s:s}}", "key", "id", quoted));
    char *text_out = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return text_out;
}

int wh_deliver_evolution_sent(const char *body, size_t len, char **wa_id, char **remote_jid,
                              int64_t *ts)
{
    *wa_id = NULL;
    *remote_jid = NULL;
    *ts = 0;
    json_t *root = body != NULL ? json_loadb(body, len, 0, NULL) : NULL;
    const json_t *key = json_object_get(root, "key");
    const char *id = json_string_value(json_object_get(key, "id"));
    if (id == NULL || id[0] == '\0') {
        json_decref(root);
        return WH_EINVAL;
    }
    *wa_id = strdup(id);
    const char *jid = json_string_value(json_object_get(key, "remoteJid"));
    if (jid != NULL)
        *remote_jid = strdup(jid);
    const json_t *t = json_object_get(root, "messageTimestamp");
    if (json_is_integer(t))
        *ts = (int64_t)json_integer_value(t);
    else if (json_is_string(t))
        *ts = strtoll(json_string_value(t), NULL, 10);
    json_decref(root);
    if (*wa_id == NULL) {
        free(*remote_jid);
        *remote_jid = NULL;
        return WH_ENOMEM;
    }
    return WH_OK;
}

void wh_deliver_recipient_key(const char *to, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    if (to == NULL)
        return;
    const char *at = strchr(to, '@');
    if (at != NULL && strcmp(at, "@lid") == 0) {
        snprintf(out, outlen, "%s", to);
        return;
    }
    if (at != NULL && strcmp(at, "@s.whatsapp.net") != 0 && strcmp(at, "@c.us") != 0)
        return; /* groups, broadcasts, newsletters: no contact */
    size_t o = 0;
    for (const char *p = to; *p && p != at && *p != ':' && o + 1 < outlen; p++)
        if (*p >= '0' && *p <= '9')
            out[o++] = *p;
    out[o] = '\0';
}

void wh_deliver_iso_time(int64_t ms, char *out, size_t outlen)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%03dZ", base, (int)(ms % 1000));
}

/* A field value as text for slack and mail lines (strings bare, the rest as JSON). */
static char *wh__field_text(const json_t *v)
{
    if (json_is_string(v))
        return strdup(json_string_value(v));
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Appends "prefix key: value\n" lines for every field to a growing buffer. */
static int wh__append_fields(char **buf, size_t *len, const json_t *fields, const char *prefix)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)fields, k, v) {
        if (json_is_null(v))
            continue;
        char *val = wh__field_text(v);
        if (val == NULL)
            return WH_ENOMEM;
        size_t add = strlen(prefix) + strlen(k) + strlen(val) + 4;
        char *nb = realloc(*buf, *len + add + 1);
        if (nb == NULL) {
            free(val);
            return WH_ENOMEM;
        }
        *buf = nb;
        *len += (size_t)snprintf(*buf + *len, add + 1, "%s%s: %s\n", prefix, k, val);
        free(val);
    }
    return WH_OK;
}

char *wh_deliver_alert_body(const char *format, const json_t *payload, const char *instance,
                            int64_t at_ms)
{
    const char *kind = json_string_value(json_object_get(payload, "kind"));
    const char *text = json_string_value(json_object_get(payload, "text"));
    if (kind == NULL || text == NULL)
        return NULL;
    const json_t *fields = json_object_get(payload, "fields");
    int has_inst = instance != NULL && instance[0] != '\0';
    json_t *out;
    if (format != NULL && strcmp(format, "slack") == 0) {
        size_t len = 0;
        char *buf = NULL;
        size_t head = strlen(kind) + strlen(text) + (has_inst ? strlen(instance) : 0) + 32;
        if ((buf = malloc(head)) == NULL)
            return NULL;
        len = has_inst ? (size_t)snprintf(buf, head, "[wahook] %s (%s): %s\n", kind, instance, text)
                       : (size_t)snprintf(buf, head, "[wahook] %s: %s\n", kind, text);
        if (json_is_object(fields) && wh__append_fields(&buf, &len, fields, "• ") != WH_OK) {
            free(buf);
            return NULL;
        }
        while (len > 0 && buf[len - 1] == '\n')
            buf[--len] = '\0';
        out = json_pack("{s:s}", "text", buf);
        free(buf);
    } else {
        char at[40];
        wh_deliver_iso_time(at_ms, at, sizeof(at));
        json_t *f = json_is_object(fields) ? json_deep_copy(fields) : json_object();
        out = json_pack("{s:s,s:s,s:o,s:o,s:s}", "kind", kind, "text", text, "fields", f,
                        "instance", has_inst ? json_string(instance) : json_null(), "at", at);
    }
    char *s = out != NULL ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    return s;
}

int wh_deliver_alert_mail(const json_t *payload, const char *instance, int64_t at_ms,
                          char **subject, char **body)
{
    *subject = NULL;
    *body = NULL;
    const char *kind = json_string_value(json_object_get(payload, "kind"));
    const char *text = json_string_value(json_object_get(payload, "text"));
    if (kind == NULL || text == NULL)
        return WH_EINVAL;
    /* Subject: the kind and the first line of the text, kept short and on one line. */
    size_t first = strcspn(text, "\r\n");
    if (first > 120)
        first = 120;
    while (first > 0 && ((unsigned char)text[first] & 0xC0) == 0x80)
        first--;
    size_t slen = strlen(kind) + first + 16;
    if ((*subject = malloc(slen)) == NULL)
        return WH_ENOMEM;
    snprintf(*subject, slen, "[wahook] %s: %.*s", kind, (int)first, text);
    char at[40];
    wh_deliver_iso_time(at_ms, at, sizeof(at));
    int has_inst = instance != NULL && instance[0] != '\0';
    size_t cap = strlen(text) + strlen(kind) + (has_inst ? strlen(instance) : 0) + 96;
    size_t len;
    char *buf = malloc(cap);
    if (buf == NULL) {
        free(*subject);
        *subject = NULL;
        return WH_ENOMEM;
    }
    len = (size_t)snprintf(buf, cap, "%s\n\nkind: %s\n%s%s%sat: %s\n", text, kind,
                           has_inst ? "instance: " : "", has_inst ? instance : "",
                           has_inst ? "\n" : "", at);
    const json_t *fields = json_object_get(payload, "fields");
    if (json_is_object(fields) && json_object_size(fields) > 0) {
        char *nb = realloc(buf, len + 2);
        if (nb != NULL) {
            buf = nb;
            buf[len++] = '\n';
            buf[len] = '\0';
        }
        if (nb == NULL || wh__append_fields(&buf, &len, fields, "") != WH_OK) {
            free(buf);
            free(*subject);
            *subject = NULL;
            return WH_ENOMEM;
        }
    }
    *body = buf;
    return WH_OK;
}

/* ==== deliverers ============================================================================== */

#define WH__CLAIM_MAX 64          /* rows claimed per target per scan at most */
#define WH__CRM_BATCH 20          /* queued CRM rows of one contact merged into one run */
#define WH__ALERT_INFLIGHT 16     /* alert rows in flight per thread */
#define WH__URL_RATE 60           /* per alert URL: requests per minute, burst, concurrency */
#define WH__URL_BURST 10
#define WH__URL_CONCURRENCY 2
#define WH__STATE_TTL_MS 250      /* a paused instance's state is re-read this often */
#define WH__STATE_REFETCH_MS 30000 /* a fetched non-open state is trusted this long */
#define WH__COUNTS_MS 2000
#define WH__RESP_MAX (1u << 20)   /* answer bytes kept per transfer */
#define WH__STORE_BACKOFF_MS 1000 /* a failing store pauses claims this long */
#define WH__INST_MAX 1024

enum { WH__T_EVO = 0, WH__T_CRM = 1, WH__T_MAIL = 2, WH__T_ALERT = 3, WH__T_COUNT = 4 };
static const char *const wh__tname[WH__T_COUNT] = {"evolution", "crm", "mail", "alert"};

/* A rate-limited peer: evolution, crm, smtp (mail rows and alert e-mails) or one alert URL.
 * Shared by every deliverer thread. */
typedef struct wh__lim {
    char name[48];
    char *url; /* base URL, smtp URL or alert URL (owned) */
    int configured;
    int verify;
    int64_t timeout_ms, connect_timeout_ms;
    int concurrency;
    int alerts; /* a misconfiguration raises an incident alert */
    pthread_mutex_t mu;
    wh_tbucket_t bucket;
    wh_circuit_t circuit;
    int in_flight;
    int64_t hold_until; /* Retry-After of a 429/503 holds the whole target */
} wh__lim_t;

enum { WH__X_SEND = 1, WH__X_STATE, WH__X_CRM, WH__X_MAIL, WH__X_ALERT_MAIL, WH__X_ALERT_URL };

typedef struct wh__buf {
    char *p;
    size_t len, cap;
    int truncated;
} wh__buf_t;

struct wh__job;
struct wh__thr;

typedef struct wh__xfer {
    struct wh__thr *thr;
    struct wh__job *job; /* NULL for connection-state checks */
    wh__lim_t *lim;      /* charged when started (NULL: not limited) */
    int purpose;
    int channel;
    char *instance; /* WH__X_STATE */
    CURL *easy;
    char *url;
    char *req_body;
    size_t req_len;
    struct curl_slist *headers, *rcpt;
    curl_mime *mime;
    wh__buf_t resp;
    json_t *resp_headers; /* WH__X_CRM: lower-case names */
    char retry_after[64];
    char errbuf[CURL_ERROR_SIZE];
    int64_t started_at;
    int running;
    struct wh__xfer *next, *prev;
} wh__xfer_t;

enum { WH__CH_PENDING = 0, WH__CH_SENT, WH__CH_GAVE_UP, WH__CH_FAILED, WH__CH_DEFERRED };

typedef struct wh__chan {
    char id[80];
    int is_mail;
    const char *dest; /* config-owned */
    wh__lim_t *lim;
    int state;
    int64_t retry_at;
    char err[200];
} wh__chan_t;

typedef struct wh__job {
    struct wh__thr *thr;
    int type;
    wh_outbox_row_t *rows; /* one, or several for a CRM batch (oldest first) */
    size_t nrows;
    json_t *payload;  /* rows[0]'s action */
    json_t *progress; /* rows[0]'s progress (an object) */
    int xfers;            /* transfers queued or running */
    int waiting_state;    /* evolution: waiting for a connectionState answer */
    char recipient[128];  /* evolution: the recipient's contact key ("" when none) */
    /* CRM */
    wh_crm_run_t *run;
    char *saved_progress; /* what rows hold now */
    int64_t retry_after_ms;
    /* alert */
    wh__chan_t *ch;
    size_t nch;
    /* the decision */
    int decided, released;
    int committing; /* its decision is queued for (or being written by) the commit thread */
    wh_outbox_op_kind_t op;
    int64_t next_at;
    char *error, *response, *progress_out;
    int dead_alert;
    int exhausted; /* DEAD because the head ran out of attempts: later rows of a batch retry */
    char *sent_wa_id, *sent_jid, *echo_wa_id;
    int64_t sent_ts;
    int not_on_wa;
    struct wh__job *next, *prev;
} wh__job_t;

/* What one thread knows about an instance's connection. */
typedef struct wh__inst {
    char *name;
    char db_state[24]; /* latest connection_history state; "" when none */
    int64_t checked_at;
    int fetching;
    int fetched; /* a connectionState answer (or its failure) is known */
    int fetched_open;
    int64_t fetched_at;
    int paused;
} wh__inst_t;

/* An incident alert waiting to be written after the thread's next op batch. */
typedef struct wh__palert {
    char kind[40];
    char *text;
    json_t *fields;
    char incident[96];
    int clear;
    char *instance;
    struct wh__palert *next;
} wh__palert_t;

typedef struct wh__thr {
    struct wh_deliverers *d;
    unsigned index;
    pthread_t tid;
    int started;
    CURLM *multi;
    wh_outbox_reader_t *reader;
    atomic_int dirty;
    pthread_mutex_t mu; /* the job list, for wh_deliverers_in_flight and status */
    wh__job_t *jobs;
    int njobs[WH__T_COUNT];
    wh__xfer_t *wait_head, *wait_tail;
    wh__xfer_t *running;
    size_t nrunning;
    wh__inst_t *inst;
    size_t ninst;
    wh__palert_t *alerts;
    int rescan;
    int64_t rescan_at;
    int64_t counts_at;
    int64_t store_backoff_until;
    /* CRM VM: swapped after a reload once no run is in flight on it */
    wh_lua_vm_t *vm;
    wh_scripts_gen_t *gen;
    int runs;
    int64_t vm_retry_at;
    int stopping;
    int64_t stop_deadline;
    unsigned rnd;
    /* The commit thread writes decisions while the loop keeps transferring. */
    pthread_t ctid;
    int cstarted;
    pthread_mutex_t cmu;
    pthread_cond_t ccv;
    struct wh__batch *cq_head, *cq_tail; /* to write, in order */
    struct wh__batch *cdone;             /* written, for the loop to reap */
    int cstop;
    int ncommitting; /* batches queued or being written (loop thread only) */
} wh__thr_t;

struct wh_deliverers {
    const wh_config_t *conf;
    wh_store_t *store;
    wh_scripts_t *scripts;
    char *db_path;
    unsigned n;
    wh__thr_t *thr;
    wh__lim_t evo, crm, smtp;
    wh__lim_t *urls;
    size_t nurls;
    atomic_int stop;
    atomic_long delivered[WH__T_COUNT], failed[WH__T_COUNT];
    pthread_mutex_t mu; /* counts */
    json_t *counts;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static char *wh__strdup0(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static char *wh__fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *wh__fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

static double wh__rand01(wh__thr_t *t)
{
    return (double)(rand_r(&t->rnd) % 1000000) / 1000000.0;
}

/* The base URL without trailing slashes, joined with path. */
static char *wh__join_url(const char *base, const char *path)
{
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    return wh__fmt("%.*s%s", (int)bl, base, path);
}

/* "url:" + the first 8 hex digits of the URL's SHA-256: a stable id that does not store the URL
 * (alert URLs often carry tokens). */
static void wh__url_id(const char *url, char *out, size_t outlen)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)url, strlen(url), md);
    snprintf(out, outlen, "url:%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
}

/* ---- limiters -------------------------------------------------------------------------------- */

static void wh__lim_init(wh__lim_t *l, const char *name, const char *url, int verify,
                         int64_t rate, int64_t burst, int64_t conc, int64_t timeout,
                         int64_t ctimeout, const wh_config_t *conf, int alerts, int64_t now)
{
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->url = wh__strdup0(url);
    l->configured = url != NULL && url[0] != '\0';
    l->verify = verify;
    l->timeout_ms = timeout > 0 ? timeout : 30000;
    l->connect_timeout_ms = ctimeout > 0 ? ctimeout : 5000;
    l->concurrency = conc > 0 ? (int)conc : 1;
    l->alerts = alerts;
    pthread_mutex_init(&l->mu, NULL);
    wh_tbucket_init(&l->bucket, (double)(rate > 0 ? rate : 60), (double)(burst > 0 ? burst : 1),
                    now);
    wh_circuit_init(&l->circuit, (int)conf->circuit_failures, conf->circuit_open_ms);
}

static void wh__lim_free(wh__lim_t *l)
{
    free(l->url);
    l->url = NULL;
    pthread_mutex_destroy(&l->mu);
}

/* When claims for this limiter make sense again (0: now). Rows are not claimed while its
 * circuit is open or a Retry-After holds it. */
static int64_t wh__lim_blocked(wh__lim_t *l, int64_t now, int *probe_only)
{
    int64_t until = 0;
    pthread_mutex_lock(&l->mu);
    *probe_only = 0;
    if (l->hold_until > now)
        until = l->hold_until;
    if (l->circuit.state == WH_CIRCUIT_OPEN) {
        if (l->circuit.open_until > now)
            until = until > l->circuit.open_until ? until : l->circuit.open_until;
        else
            *probe_only = 1;
    } else if (l->circuit.state == WH_CIRCUIT_HALF_OPEN) {
        *probe_only = 1;
    }
    pthread_mutex_unlock(&l->mu);
    return until;
}

/* Gate of one transfer: returns 1 when it may start now (charged: a slot, a token and, half
 * open, the probe). Else 0 with *retry_at (0: when a slot frees) and *circuit set when the
 * circuit (not the rate) holds it. */
static int wh__lim_acquire(wh__lim_t *l, int64_t now, int64_t *retry_at, int *circuit)
{
    int ok = 0;
    *retry_at = 0;
    *circuit = 0;
    pthread_mutex_lock(&l->mu);
    if (l->hold_until > now) {
        *retry_at = l->hold_until;
    } else if (l->in_flight >= l->concurrency) {
        *retry_at = 0;
    } else {
        int64_t wait = wh__tbucket_wait(&l->bucket, now);
        if (wait > 0) {
            *retry_at = now + wait;
        } else if (!wh_circuit_allow(&l->circuit, now)) {
            *circuit = 1;
            *retry_at = l->circuit.state == WH_CIRCUIT_OPEN ? l->circuit.open_until : now + 100;
        } else {
            wh_tbucket_take(&l->bucket, now, NULL);
            l->in_flight++;
            ok = 1;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return ok;
}

/* A started transfer ended with class c: frees its slot and feeds the circuit. *opened: this
 * opened the circuit for a misconfiguration (or reported one while open); *recovered: it closed
 * an open circuit. abandon: no verdict (shutdown). */
static void wh__lim_release(wh__lim_t *l, int64_t now, wh_deliver_class_t c, int64_t retry_after,
                            int abandon, int *misconfigured, int *recovered)
{
    *misconfigured = 0;
    *recovered = 0;
    pthread_mutex_lock(&l->mu);
    if (l->in_flight > 0)
        l->in_flight--;
    if (abandon) {
        wh_circuit_release(&l->circuit);
    } else if (c == WH_DC_OK || c == WH_DC_PERMANENT || c == WH_DC_NOT_ON_WHATSAPP) {
        *recovered = wh_circuit_success(&l->circuit, now);
    } else {
        int opened = wh_circuit_failure(&l->circuit, now, c == WH_DC_MISCONFIGURED);
        if (opened)
            wh_log(WH_LOG_WARN, "delivery circuit opened", "{s:s,s:s,s:I}", "target", l->name,
                   "cause", wh_deliver_class_name(c), "open_ms", (json_int_t)l->circuit.open_ms);
        *misconfigured = c == WH_DC_MISCONFIGURED;
    }
    if (retry_after > 0 && now + retry_after > l->hold_until)
        l->hold_until = now + retry_after;
    pthread_mutex_unlock(&l->mu);
    if (*recovered)
        wh_log(WH_LOG_INFO, "delivery circuit closed", "{s:s}", "target", l->name);
}

/* A misconfiguration without a transfer (no URL configured, module unusable): opens the circuit
 * as a 401 would. */
static void wh__lim_misconfigured(wh__lim_t *l, int64_t now)
{
    pthread_mutex_lock(&l->mu);
    /* An open circuit whose time is up counts this as its failed probe: open again. */
    if (l->circuit.state == WH_CIRCUIT_OPEN && l->circuit.open_until <= now)
        l->circuit.state = WH_CIRCUIT_HALF_OPEN;
    wh_circuit_failure(&l->circuit, now, 1);
    pthread_mutex_unlock(&l->mu);
}

static int64_t wh__lim_open_until(wh__lim_t *l, int64_t now)
{
    pthread_mutex_lock(&l->mu);
    int64_t t = l->circuit.state == WH_CIRCUIT_OPEN && l->circuit.open_until > now
                    ? l->circuit.open_until
                    : now + l->circuit.open_ms;
    pthread_mutex_unlock(&l->mu);
    return t;
}

/* ---- incident alerts ------------------------------------------------------------------------- */

/* 1 when alerts have somewhere to go: without channels, alerts raised by C are only logged
 * (an outbox row nobody can deliver would just be noise). */
static int wh__alerts_configured(const wh_deliverers_t *d)
{
    return d->conf->alert_emails.n > 0 || d->nurls > 0;
}

static void wh__queue_alert(wh__thr_t *t, const char *kind, char *text, json_t *fields,
                            const char *incident, int clear, const char *instance)
{
    if (!wh__alerts_configured(t->d)) {
        wh_log(WH_LOG_WARN, "alert not sent: no wahook.alerts channel is configured",
               "{s:s,s:s}", "kind", kind, "text", text != NULL ? text : "");
        free(text);
        json_decref(fields);
        return;
    }
    wh__palert_t *a = calloc(1, sizeof(*a));
    if (a == NULL || text == NULL) {
        free(a);
        free(text);
        json_decref(fields);
        return;
    }
    snprintf(a->kind, sizeof(a->kind), "%s", kind);
    snprintf(a->incident, sizeof(a->incident), "%s", incident);
    a->text = text;
    a->fields = fields;
    a->clear = clear;
    a->instance = wh__strdup0(instance);
    a->next = t->alerts;
    t->alerts = a;
}

/* One alert per incident: a target starts refusing our credentials / URL, or accepts again. */
static void wh__misconfig_alert(wh__thr_t *t, wh__lim_t *l, const char *error, int clear)
{
    if (!l->alerts)
        return;
    char incident[96];
    snprintf(incident, sizeof(incident), "target_misconfigured:%s", l->name);
    if (clear)
        wh__queue_alert(t, "target_recovered",
                        wh__fmt("Deliveries to %s work again; held actions are being sent.",
                                l->name),
                        json_pack("{s:s}", "target", l->name), incident, 1, NULL);
    else
        wh__queue_alert(t, "target_misconfigured",
                        wh__fmt("wahook cannot deliver to %s: %s. Its actions are held (not "
                                "dropped) until the configuration is fixed.",
                                l->name, error != NULL ? error : "misconfigured"),
                        json_pack("{s:s,s:s}", "target", l->name, "error",
                                  error != NULL ? error : ""),
                        incident, 0, NULL);
}

static void wh__flush_alerts(wh_deliverers_t *d, wh__palert_t *list)
{
    while (list != NULL) {
        wh__palert_t *a = list;
        list = a->next;
        wh_outbox_alert_t al = {.instance = a->instance,
                                .kind = a->kind,
                                .text = a->text,
                                .fields = a->fields,
                                .incident = a->incident,
                                .incident_clear = a->clear};
        int rc = wh_outbox_alert(d->store, &al);
        if (rc < 0)
            wh_log(WH_LOG_WARN, "cannot record alert", "{s:s,s:s}", "kind", a->kind, "error",
                   wh_strerror(rc));
        free(a->text);
        free(a->instance);
        json_decref(a->fields);
        free(a);
    }
}

/* ---- jobs ------------------------------------------------------------------------------------ */

static void wh__job_free(wh__job_t *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->nrows; i++)
        wh_outbox_row_clear(&j->rows[i]);
    free(j->rows);
    json_decref(j->payload);
    json_decref(j->progress);
    if (j->run != NULL) {
        wh_crm_run_free(j->run);
        j->thr->runs--;
    }
    free(j->saved_progress);
    free(j->ch);
    free(j->error);
    free(j->response);
    free(j->progress_out);
    free(j->sent_wa_id);
    free(j->sent_jid);
    free(j->echo_wa_id);
    free(j);
}

static void wh__job_link(wh__thr_t *t, wh__job_t *j)
{
    pthread_mutex_lock(&t->mu);
    j->next = t->jobs;
    j->prev = NULL;
    if (t->jobs != NULL)
        t->jobs->prev = j;
    t->jobs = j;
    t->njobs[j->type]++;
    pthread_mutex_unlock(&t->mu);
}

static void wh__job_unlink(wh__thr_t *t, wh__job_t *j)
{
    pthread_mutex_lock(&t->mu);
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        t->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    t->njobs[j->type]--;
    pthread_mutex_unlock(&t->mu);
    j->next = j->prev = NULL;
}

/* Records the decision about the job's rows; written by the next batch (wh__finish). */
static void wh__decide(wh__job_t *j, wh_outbox_op_kind_t op, int64_t next_at, char *error,
                       const char *response, size_t resp_len)
{
    if (j->decided || j->released) {
        free(error);
        return;
    }
    j->decided = 1;
    j->op = op;
    j->next_at = next_at;
    free(j->error);
    j->error = error;
    free(j->response);
    j->response = NULL;
    if (response != NULL) {
        size_t n = resp_len < WH_OUTBOX_RESPONSE_MAX ? resp_len : WH_OUTBOX_RESPONSE_MAX;
        /* Never cut a UTF-8 sequence in two. */
        while (n < resp_len && n > 0 && ((unsigned char)response[n] & 0xC0) == 0x80)
            n--;
        j->response = strndup(response, n);
    }
    j->thr->rescan = 1;
}

/* Leaves the rows untouched (paused instance, shutdown): they are claimed again later. */
static void wh__release(wh__job_t *j)
{
    if (!j->decided)
        j->released = 1;
    j->thr->rescan = 1;
}

static int wh__exhausted(const wh__thr_t *t, const wh__job_t *j, int64_t now)
{
    const wh_config_t *c = t->d->conf;
    return j->rows[0].attempts + 1 >= c->delivery_max_attempts ||
           now - j->rows[0].created_at >= c->delivery_retry_total_ms;
}

/* A failed attempt of the job, classified: retry with backoff, dead, or held (misconfigured). */
static void wh__fail(wh__job_t *j, wh_deliver_class_t c, char *error, const char *response,
                     size_t resp_len, int64_t retry_after, wh__lim_t *lim)
{
    wh__thr_t *t = j->thr;
    const wh_config_t *conf = t->d->conf;
    int64_t now = wh_now_ms();
    switch (c) {
    case WH_DC_MISCONFIGURED:
        wh__decide(j, WH_OUTBOX_HOLD, lim != NULL ? wh__lim_open_until(lim, now)
                                                  : now + conf->circuit_open_ms,
                   error, response, resp_len);
        return;
    case WH_DC_PERMANENT:
    case WH_DC_NOT_ON_WHATSAPP:
        j->dead_alert = j->type != WH__T_ALERT;
        wh__decide(j, WH_OUTBOX_DEAD, 0, error, response, resp_len);
        return;
    default:
        break;
    }
    if (wh__exhausted(t, j, now)) {
        char *e = wh__fmt("%s (gave up after %d attempts)", error != NULL ? error : "failed",
                          j->rows[0].attempts + 1);
        free(error);
        j->dead_alert = j->type != WH__T_ALERT;
        j->exhausted = 1;
        wh__decide(j, WH_OUTBOX_DEAD, 0, e, response, resp_len);
        return;
    }
    int64_t wait = wh_deliver_backoff(j->rows[0].attempts + 1, conf->delivery_retry_base_ms,
                                      conf->delivery_retry_max_ms, wh__rand01(t));
    if (retry_after > wait)
        wait = retry_after;
    wh__decide(j, WH_OUTBOX_RETRY, now + wait, error, response, resp_len);
}

/* ---- transfers ------------------------------------------------------------------------------- */

static size_t wh__on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    wh__xfer_t *x = ud;
    size_t n = size * nmemb;
    wh__buf_t *b = &x->resp;
    if (b->len + n > WH__RESP_MAX) {
        b->truncated = 1;
        n = WH__RESP_MAX > b->len ? WH__RESP_MAX - b->len : 0;
    }
    if (n > 0) {
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap : 1024;
            while (cap < b->len + n + 1)
                cap *= 2;
            char *p = realloc(b->p, cap);
            if (p == NULL)
                return 0; /* aborts the transfer (CURLE_WRITE_ERROR) */
            b->p = p;
            b->cap = cap;
        }
        memcpy(b->p + b->len, ptr, n);
        b->len += n;
        b->p[b->len] = '\0';
    }
    return size * nmemb;
}

static size_t wh__on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    wh__xfer_t *x = ud;
    size_t n = size * nmemb;
    const char *colon = memchr(ptr, ':', n);
    if (colon == NULL) {
        /* A status line: a new response (after a 100 Continue) starts afresh. */
        if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
            x->retry_after[0] = '\0';
            if (x->resp_headers != NULL)
                json_object_clear(x->resp_headers);
        }
        return n;
    }
    size_t nl = (size_t)(colon - ptr);
    const char *v = colon + 1;
    size_t vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (nl == 11 && strncasecmp(ptr, "retry-after", 11) == 0)
        snprintf(x->retry_after, sizeof(x->retry_after), "%.*s", (int)vl, v);
    if (x->resp_headers != NULL && nl > 0 && nl < 128) {
        char name[128];
        for (size_t i = 0; i < nl; i++)
            name[i] = (char)((ptr[i] >= 'A' && ptr[i] <= 'Z') ? ptr[i] + 32 : ptr[i]);
        name[nl] = '\0';
        json_t *val = json_stringn(v, vl); /* NULL for bytes that are not UTF-8: skipped */
        if (val != NULL)
            json_object_set_new(x->resp_headers, name, val);
    }
    return n;
}

static void wh__xfer_free(wh__xfer_t *x)
{
    if (x == NULL)
        return;
    if (x->easy != NULL)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    curl_slist_free_all(x->rcpt);
    curl_mime_free(x->mime);
    free(x->url);
    free(x->req_body);
    free(x->resp.p);
    free(x->instance);
    json_decref(x->resp_headers);
    free(x);
}

/* A transfer with its easy handle configured for lim's timeouts and TLS rules. */
static wh__xfer_t *wh__xfer_new(wh__thr_t *t, wh__job_t *j, wh__lim_t *lim, int purpose)
{
    wh__xfer_t *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->thr = t;
    x->job = j;
    x->lim = lim;
    x->purpose = purpose;
    if ((x->easy = curl_easy_init()) == NULL) {
        free(x);
        return NULL;
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, wh__on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, wh__on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    int64_t timeout = lim != NULL ? lim->timeout_ms : 10000;
    int64_t ctimeout = lim != NULL ? lim->connect_timeout_ms : 5000;
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ctimeout);
    int verify = lim != NULL ? lim->verify : 1;
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    int smtp = purpose == WH__X_MAIL || purpose == WH__X_ALERT_MAIL;
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, smtp ? "smtp,smtps" : "http,https");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    return x;
}

/* Headers common to JSON requests; "Expect:" stops curl from waiting for 100-continue. */
static int wh__json_headers(wh__xfer_t *x)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h != NULL)
        h = curl_slist_append(h, "Expect:");
    if (h == NULL)
        return WH_ENOMEM;
    x->headers = h;
    return WH_OK;
}

static int wh__add_header(wh__xfer_t *x, const char *name, const char *value)
{
    char *line = wh__fmt("%s: %s", name, value);
    if (line == NULL)
        return WH_ENOMEM;
    struct curl_slist *h = curl_slist_append(x->headers, line);
    free(line);
    if (h == NULL)
        return WH_ENOMEM;
    x->headers = h;
    return WH_OK;
}

static void wh__post_json(wh__xfer_t *x, char *body)
{
    x->req_body = body;
    x->req_len = strlen(body);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->req_body);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->req_len);
}

/* Queues x behind its limiter's gate (started by wh__start_waiting). */
static void wh__enqueue(wh__thr_t *t, wh__xfer_t *x)
{
    x->next = NULL;
    if (t->wait_tail != NULL)
        t->wait_tail->next = x;
    else
        t->wait_head = x;
    t->wait_tail = x;
    if (x->job != NULL)
        x->job->xfers++;
}

static int wh__xfer_start(wh__thr_t *t, wh__xfer_t *x, int64_t now)
{
    curl_easy_setopt(x->easy, CURLOPT_URL, x->url);
    if (x->headers != NULL)
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
    x->started_at = now;
    if (curl_multi_add_handle(t->multi, x->easy) != CURLM_OK)
        return WH_EIO;
    x->running = 1;
    x->prev = NULL;
    x->next = t->running;
    if (t->running != NULL)
        t->running->prev = x;
    t->running = x;
    t->nrunning++;
    return WH_OK;
}

static void wh__running_unlink(wh__thr_t *t, wh__xfer_t *x)
{
    if (x->prev != NULL)
        x->prev->next = x->next;
    else
        t->running = x->next;
    if (x->next != NULL)
        x->next->prev = x->prev;
    x->next = x->prev = NULL;
    x->running = 0;
    t->nrunning--;
}

static void wh__xfer_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code);
static void wh__xfer_discard(wh__thr_t *t, wh__xfer_t *x, const char *why);

/* The error text of a failed transfer, for last_error. */
static char *wh__xfer_error(const wh__xfer_t *x, CURLcode code, long status, const char *target)
{
    if (code == CURLE_OPERATION_TIMEDOUT)
        return wh__fmt("%s: timed out after %lld ms", target,
                       (long long)(wh_now_ms() - x->started_at));
    if (code != CURLE_OK)
        return wh__fmt("%s: %s (curl %d)", target,
                       x->errbuf[0] != '\0' ? x->errbuf : curl_easy_strerror(code), (int)code);
    return wh__fmt("%s answered HTTP %ld", target, status);
}

/* Feeds the limiter with a transfer's class and raises or clears its misconfiguration alert. */
static void wh__lim_done(wh__thr_t *t, wh__xfer_t *x, wh_deliver_class_t c, int64_t retry_after,
                         const char *error)
{
    if (x->lim == NULL)
        return;
    int misconf, recovered;
    wh__lim_release(x->lim, wh_now_ms(), c, retry_after, 0, &misconf, &recovered);
    if (misconf)
        wh__misconfig_alert(t, x->lim, error, 0);
    else if (recovered)
        wh__misconfig_alert(t, x->lim, NULL, 1);
}

/* Retry-After of a 429 or 503 answer, in ms (0: none). */
static int64_t wh__retry_after(const wh__xfer_t *x, long status)
{
    if (status != 429 && status != 503)
        return 0;
    int64_t ra = wh_deliver_retry_after_ms(x->retry_after, wh_now_ms());
    return ra > 0 ? ra : 0;
}

/* ---- Evolution: connection state ------------------------------------------------------------- */

static wh__inst_t *wh__inst_get(wh__thr_t *t, const char *name)
{
    for (size_t i = 0; i < t->ninst; i++)
        if (strcmp(t->inst[i].name, name) == 0)
            return &t->inst[i];
    if (t->ninst >= WH__INST_MAX)
        return NULL; /* untracked instances count as open */
    char *copy = strdup(name);
    pthread_mutex_lock(&t->mu);
    wh__inst_t *n = realloc(t->inst, (t->ninst + 1) * sizeof(*n));
    if (n != NULL)
        t->inst = n;
    pthread_mutex_unlock(&t->mu);
    if (n == NULL || copy == NULL) {
        free(copy);
        return NULL;
    }
    wh__inst_t *e = &t->inst[t->ninst];
    memset(e, 0, sizeof(*e));
    e->name = copy;
    pthread_mutex_lock(&t->mu);
    t->ninst++;
    pthread_mutex_unlock(&t->mu);
    return e;
}

static void wh__inst_set_paused(wh__thr_t *t, wh__inst_t *e, int paused)
{
    if (e->paused == paused)
        return;
    pthread_mutex_lock(&t->mu);
    e->paused = paused;
    pthread_mutex_unlock(&t->mu);
    if (paused) {
        wh_log(WH_LOG_INFO, "evolution sends paused: instance not connected", "{s:s,s:s}",
               "instance", e->name, "state", e->db_state[0] ? e->db_state : "(fetched)");
    } else {
        wh_log(WH_LOG_INFO, "evolution sends resumed", "{s:s}", "instance", e->name);
        t->rescan = 1;
    }
}

/* Re-reads the instance's latest known state from the store. */
static void wh__inst_refresh(wh__thr_t *t, wh__inst_t *e, int64_t now)
{
    char st[sizeof(e->db_state)];
    int rc = wh_outbox_connection_state(t->reader, e->name, st, sizeof(st));
    if (rc == WH_OK)
        snprintf(e->db_state, sizeof(e->db_state), "%s", st);
    else if (rc == WH_ENOTFOUND)
        e->db_state[0] = '\0';
    e->checked_at = now;
    int paused;
    if (e->db_state[0] != '\0') {
        paused = strcmp(e->db_state, "open") != 0;
    } else {
        if (e->fetched && now - e->fetched_at >= WH__STATE_REFETCH_MS)
            e->fetched = 0; /* ask Evolution again with the next send */
        paused = e->fetched && !e->fetched_open;
    }
    wh__inst_set_paused(t, e, paused);
}

static void wh__refresh_states(wh__thr_t *t, int64_t now)
{
    for (size_t i = 0; i < t->ninst; i++)
        if (t->inst[i].paused && now - t->inst[i].checked_at >= WH__STATE_TTL_MS)
            wh__inst_refresh(t, &t->inst[i], now);
}

static void wh__evo_begin(wh__thr_t *t, wh__job_t *j, int64_t now);

static void wh__state_fetch(wh__thr_t *t, wh__inst_t *e, int64_t now)
{
    const wh_config_t *conf = t->d->conf;
    wh__xfer_t *x = wh__xfer_new(t, NULL, NULL, WH__X_STATE);
    char *esc = NULL;
    if (x != NULL) {
        int64_t timeout = conf->evolution.timeout_ms < 10000 ? conf->evolution.timeout_ms : 10000;
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)timeout);
        curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)t->d->evo.connect_timeout_ms);
        curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYPEER, t->d->evo.verify ? 1L : 0L);
        curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYHOST, t->d->evo.verify ? 2L : 0L);
        x->instance = strdup(e->name);
        esc = curl_easy_escape(x->easy, e->name, 0);
    }
    char *path = esc != NULL ? wh__fmt("/instance/connectionState/%s", esc) : NULL;
    curl_free(esc);
    if (x != NULL && path != NULL && x->instance != NULL &&
        (x->url = wh__join_url(t->d->evo.url, path)) != NULL &&
        wh__add_header(x, "apikey", conf->evolution.api_key) == WH_OK &&
        wh__xfer_start(t, x, now) == WH_OK) {
        e->fetching = 1;
        free(path);
        return;
    }
    free(path);
    wh__xfer_free(x);
    /* Cannot even ask: count it as open, as when the request fails. */
    e->fetched = 1;
    e->fetched_open = 1;
    e->fetched_at = now;
}

static void wh__state_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    int64_t now = wh_now_ms();
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    const char *state = NULL;
    json_t *root = NULL;
    if (code == CURLE_OK && status == 200 && x->resp.p != NULL) {
        root = json_loadb(x->resp.p, x->resp.len, 0, NULL);
        const json_t *inst = json_object_get(root, "instance");
        state = json_string_value(json_object_get(inst != NULL ? inst : root, "state"));
    }
    wh__inst_t *e = wh__inst_get(t, x->instance);
    int open = state == NULL || strcmp(state, "open") == 0; /* unknown counts as open */
    if (e != NULL) {
        e->fetching = 0;
        e->fetched = 1;
        e->fetched_open = open;
        e->fetched_at = now;
        if (e->db_state[0] == '\0')
            wh__inst_set_paused(t, e, !open);
    }
    wh_log(WH_LOG_DEBUG, "evolution connection state fetched", "{s:s,s:s,s:i}", "instance",
           x->instance, "state", state != NULL ? state : "(unknown)", "status", (int)status);
    json_decref(root);
    for (wh__job_t *j = t->jobs; j != NULL; j = j->next) {
        if (!j->waiting_state || strcmp(j->rows[0].instance, x->instance) != 0)
            continue;
        j->waiting_state = 0;
        if (open)
            wh__evo_begin(t, j, now);
        else
            wh__release(j);
    }
}

/* ---- Evolution: sendText --------------------------------------------------------------------- */

static void wh__evo_misconfigured(wh__thr_t *t, wh__job_t *j, wh__lim_t *l, const char *why,
                                  int64_t now)
{
    wh__lim_misconfigured(l, now);
    wh__misconfig_alert(t, l, why, 0);
    wh__fail(j, WH_DC_MISCONFIGURED, strdup(why), NULL, 0, 0, l);
}

static void wh__evo_start(wh__thr_t *t, wh__job_t *j, int64_t now)
{
    wh_deliverers_t *d = t->d;
    const char *to = json_string_value(json_object_get(j->payload, "to"));
    char *body = wh_deliver_evolution_body(j->payload);
    if (body == NULL) {
        wh__fail(j, WH_DC_PERMANENT, strdup("malformed send_text action (it needs to and text)"),
                 NULL, 0, 0, NULL);
        return;
    }
    free(body);
    wh_deliver_recipient_key(to, j->recipient, sizeof(j->recipient));
    if (!d->evo.configured || d->conf->evolution.api_key == NULL ||
        d->conf->evolution.api_key[0] == '\0') {
        wh__evo_misconfigured(t, j, &d->evo,
                              "wahook.evolution.url or wahook.evolution.api-key is not set", now);
        return;
    }
    wh__inst_t *e = wh__inst_get(t, j->rows[0].instance);
    if (e != NULL) {
        if (e->checked_at != now) /* new here, or not refreshed by this claim round */
            wh__inst_refresh(t, e, now);
        if (e->db_state[0] != '\0' || e->fetched) {
            if (e->paused) {
                wh__release(j);
                return;
            }
        } else {
            if (!e->fetching)
                wh__state_fetch(t, e, now);
            if (e->fetching) {
                j->waiting_state = 1;
                return;
            }
        }
    }
    wh__evo_begin(t, j, now);
}

static void wh__evo_begin(wh__thr_t *t, wh__job_t *j, int64_t now)
{
    wh_deliverers_t *d = t->d;
    const wh_outbox_row_t *r = &j->rows[0];
    const char *text = json_string_value(json_object_get(j->payload, "text"));
    /* After a timed-out attempt: its echo proves it was sent. */
    const json_t *after = json_object_get(j->progress, "echo_after");
    if (json_is_integer(after) && text != NULL) {
        char wa[160];
        int rc = wh_outbox_find_echo(t->reader, r->instance,
                                     j->recipient[0] != '\0' ? j->recipient : NULL,
                                     r->contact_key[0] != '\0' ? r->contact_key : NULL, text,
                                     (int64_t)json_integer_value(after), wa, sizeof(wa));
        if (rc == WH_OK) {
            j->echo_wa_id = strdup(wa);
            json_t *resp = json_pack("{s:s}", "echo", wa);
            char *rt = resp != NULL ? json_dumps(resp, JSON_COMPACT) : NULL;
            json_decref(resp);
            wh_log(WH_LOG_INFO, "timed-out send confirmed by its echo; not sent again",
                   "{s:I,s:s}", "outbox_id", (json_int_t)r->id, "wa_id", wa);
            wh__decide(j, WH_OUTBOX_DONE, 0, NULL, rt, rt != NULL ? strlen(rt) : 0);
            free(rt);
            return;
        }
    }
    wh__xfer_t *x = wh__xfer_new(t, j, &d->evo, WH__X_SEND);
    char *esc = x != NULL ? curl_easy_escape(x->easy, r->instance, 0) : NULL;
    char *path = esc != NULL ? wh__fmt("/message/sendText/%s", esc) : NULL;
    char *body = wh_deliver_evolution_body(j->payload);
    curl_free(esc);
    if (x == NULL || path == NULL || body == NULL ||
        (x->url = wh__join_url(d->evo.url, path)) == NULL || wh__json_headers(x) != WH_OK ||
        wh__add_header(x, "apikey", d->conf->evolution.api_key) != WH_OK) {
        free(path);
        free(body);
        wh__xfer_free(x);
        wh__fail(j, WH_DC_RETRY, strdup("out of memory"), NULL, 0, 0, NULL);
        return;
    }
    free(path);
    wh__post_json(x, body);
    /* The call blocks for the typing delay: the timeout covers it. */
    const json_t *delay = json_object_get(j->payload, "delay");
    int64_t extra = json_is_integer(delay) && json_integer_value(delay) > 0
                        ? (int64_t)json_integer_value(delay)
                        : 0;
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)(d->evo.timeout_ms + extra));
    wh__enqueue(t, x);
}

static void wh__evo_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    wh_deliverers_t *d = t->d;
    wh__job_t *j = x->job;
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    wh_deliver_class_t c = wh_deliver_classify_http(code, status, x->resp.p, x->resp.len);
    int64_t ra = wh__retry_after(x, status);
    char *error = c == WH_DC_OK ? NULL : wh__xfer_error(x, code, status, "evolution");
    wh__lim_done(t, x, c, ra, error);
    const char *resp = x->resp.p;
    size_t rlen = x->resp.len;
    switch (c) {
    case WH_DC_OK: {
        char *wa = NULL, *jid = NULL;
        int64_t ts = 0;
        if (wh_deliver_evolution_sent(resp, rlen, &wa, &jid, &ts) == WH_OK) {
            j->sent_wa_id = wa;
            j->sent_jid = jid;
            j->sent_ts = ts;
        } else {
            wh_log(WH_LOG_WARN, "sendText answer without key.id; the message is not recorded",
                   "{s:I,s:i}", "outbox_id", (json_int_t)j->rows[0].id, "status", (int)status);
        }
        wh__decide(j, WH_OUTBOX_DONE, 0, NULL, resp, rlen);
        break;
    }
    case WH_DC_NOT_ON_WHATSAPP: {
        j->not_on_wa = 1;
        char *e = wh__fmt("the number is not on WhatsApp (HTTP %ld exists:false)", status);
        free(error);
        wh__fail(j, c, e, resp, rlen, 0, &d->evo);
        break;
    }
    case WH_DC_TIMEOUT:
    case WH_DC_RETRY: {
        /* A timeout, a lost answer or a 5xx does not prove the message unsent: the next
         * attempt first looks for the echo of this one. After a timeout or an answer lost on
         * the wire, it also waits the echo grace for it to arrive. */
        wh__fail(j, c, error, resp, rlen, ra, &d->evo);
        if (j->op == WH_OUTBOX_RETRY) {
            int lost = c == WH_DC_TIMEOUT || code == CURLE_GOT_NOTHING ||
                       code == CURLE_RECV_ERROR || code == CURLE_PARTIAL_FILE;
            int64_t grace = wh_now_ms() + d->conf->evolution.echo_grace_ms;
            if (lost && j->next_at < grace)
                j->next_at = grace;
            json_t *p = json_deep_copy(j->progress);
            if (p != NULL) {
                json_object_set_new(p, "echo_after", json_integer(x->started_at));
                free(j->progress_out);
                j->progress_out = json_dumps(p, JSON_COMPACT);
                json_decref(p);
            }
        }
        break;
    }
    default:
        wh__fail(j, c, error, resp, rlen, ra, &d->evo);
        break;
    }
}

/* ---- SMTP ------------------------------------------------------------------------------------ */

static int wh__is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* The Subject header: RFC 2047 encoded words when it is not plain ASCII. */
static char *wh__subject_header(const char *subject)
{
    size_t len = strlen(subject);
    if (len > 600) /* keeps the encoded line under the 998-byte limit */
        len = 600;
    while (len > 0 && ((unsigned char)subject[len] & 0xC0) == 0x80 && len < strlen(subject))
        len--;
    char *cut = strndup(subject, len);
    if (cut == NULL)
        return NULL;
    for (char *p = cut; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    if (wh__is_ascii(cut)) {
        char *h = wh__fmt("Subject: %s", cut);
        free(cut);
        return h;
    }
    /* Words of at most 45 input bytes (60 base64 characters), never splitting a character. */
    size_t cap = 16 + len * 2 + (len / 30 + 1) * 16;
    char *h = malloc(cap);
    if (h == NULL) {
        free(cut);
        return NULL;
    }
    size_t o = (size_t)snprintf(h, cap, "Subject:");
    size_t i = 0;
    while (i < len) {
        size_t n = len - i > 45 ? 45 : len - i;
        while (i + n < len && n > 1 && ((unsigned char)cut[i + n] & 0xC0) == 0x80)
            n--;
        char b64[64];
        wh_base64_encode(cut + i, n, b64);
        o += (size_t)snprintf(h + o, cap - o, " =?UTF-8?B?%s?=", b64);
        i += n;
    }
    free(cut);
    return h;
}

/* Configures x as one SMTP mail: envelope, headers and a MIME body with attachments
 * ([{filename, content_type, data_base64}]). Returns 0, WH_EINVAL (bad attachment, with a
 * reason) or WH_ENOMEM. */
static int wh__smtp_setup(wh__xfer_t *x, const wh_config_t *conf, const json_t *to,
                          const char *subject, const char *body, size_t blen,
                          const json_t *attachments, int64_t id, char *err, size_t errlen)
{
    CURL *e = x->easy;
    const char *from = conf->smtp.from != NULL ? conf->smtp.from : "wahook@localhost";
    if ((x->url = strdup(conf->smtp.url)) == NULL)
        return WH_ENOMEM;
    char *env_from = wh__fmt("<%s>", from);
    if (env_from == NULL)
        return WH_ENOMEM;
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, env_from);
    free(env_from); /* libcurl copies string options */
    size_t i;
    const json_t *v;
    size_t to_len = 0;
    json_array_foreach(to, i, v) {
        char *r = wh__fmt("<%s>", json_string_value(v));
        struct curl_slist *l = r != NULL ? curl_slist_append(x->rcpt, r) : NULL;
        free(r);
        if (l == NULL)
            return WH_ENOMEM;
        x->rcpt = l;
        to_len += strlen(json_string_value(v)) + 2;
    }
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, x->rcpt);
    /* One refused recipient does not stop the mail to the others (libcurl's spelling). */
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT_ALLLOWFAILS, 1L);
    if (conf->smtp.starttls)
        curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    if (conf->smtp.user != NULL && conf->smtp.user[0] != '\0') {
        curl_easy_setopt(e, CURLOPT_USERNAME, conf->smtp.user);
        curl_easy_setopt(e, CURLOPT_PASSWORD,
                         conf->smtp.password != NULL ? conf->smtp.password : "");
    }

    char *to_hdr = malloc(to_len + 8);
    if (to_hdr == NULL)
        return WH_ENOMEM;
    size_t o = (size_t)snprintf(to_hdr, to_len + 8, "To: ");
    json_array_foreach(to, i, v)
        o += (size_t)snprintf(to_hdr + o, to_len + 8 - o, "%s%s", i > 0 ? ", " : "",
                              json_string_value(v));
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "Date: %a, %d %b %Y %H:%M:%S +0000", &tm);
    const char *at = strchr(from, '@');
    char *msgid = wh__fmt("Message-ID: <wahook.%lld.%lld@%s>", (long long)id,
                          (long long)wh_now_ms(), at != NULL ? at + 1 : "wahook");
    char *from_hdr = wh__fmt("From: %s", from);
    char *subj = wh__subject_header(subject);
    const char *lines[] = {date, from_hdr, to_hdr, subj, msgid};
    int ret = WH_OK;
    for (i = 0; i < WH_ARRAY_SIZE(lines) && ret == WH_OK; i++) {
        struct curl_slist *l = lines[i] != NULL ? curl_slist_append(x->headers, lines[i]) : NULL;
        if (l == NULL)
            ret = WH_ENOMEM;
        else
            x->headers = l;
    }
    free(to_hdr);
    free(msgid);
    free(from_hdr);
    free(subj);
    if (ret != WH_OK)
        return ret;

    if ((x->mime = curl_mime_init(e)) == NULL)
        return WH_ENOMEM;
    curl_mimepart *part = curl_mime_addpart(x->mime);
    if (part == NULL)
        return WH_ENOMEM;
    curl_mime_data(part, body, blen);
    curl_mime_type(part, "text/plain; charset=utf-8");
    curl_mime_encoder(part, "quoted-printable");
    json_array_foreach(attachments, i, v) {
        const char *fname = json_string_value(json_object_get(v, "filename"));
        const char *ctype = json_string_value(json_object_get(v, "content_type"));
        const char *b64 = json_string_value(json_object_get(v, "data_base64"));
        if (fname == NULL || b64 == NULL) {
            snprintf(err, errlen, "attachment %zu needs filename and data_base64", i + 1);
            return WH_EINVAL;
        }
        size_t bl = strlen(b64);
        uint8_t *raw = malloc(bl / 4 * 3 + 4);
        if (raw == NULL)
            return WH_ENOMEM;
        long n = wh_base64_decode(b64, bl, raw);
        if (n < 0) {
            free(raw);
            snprintf(err, errlen, "attachment %s is not valid base64", fname);
            return WH_EINVAL;
        }
        part = curl_mime_addpart(x->mime);
        if (part == NULL) {
            free(raw);
            return WH_ENOMEM;
        }
        curl_mime_data(part, (const char *)raw, (size_t)n); /* copied */
        free(raw);
        curl_mime_type(part, ctype != NULL ? ctype : "application/octet-stream");
        curl_mime_filename(part, fname);
        curl_mime_encoder(part, "base64");
    }
    curl_easy_setopt(e, CURLOPT_MIMEPOST, x->mime);
    return WH_OK;
}

static int wh__smtp_configured(const wh_deliverers_t *d)
{
    return d->smtp.configured;
}

/* ---- mail ------------------------------------------------------------------------------------ */

static void wh__mail_start(wh__thr_t *t, wh__job_t *j, int64_t now)
{
    wh_deliverers_t *d = t->d;
    const json_t *to = json_object_get(j->payload, "to");
    json_t *list = NULL;
    if (json_is_string(to))
        list = json_pack("[O]", to);
    else if (json_is_array(to) && json_array_size(to) > 0)
        list = json_incref((json_t *)to);
    size_t i;
    const json_t *v;
    int bad = list == NULL;
    json_array_foreach(list, i, v) bad |= !json_is_string(v);
    const char *subject = json_string_value(json_object_get(j->payload, "subject"));
    const json_t *body = json_object_get(j->payload, "body");
    const json_t *att = json_object_get(j->payload, "attachments");
    if (bad || subject == NULL || !json_is_string(body) || (att != NULL && !json_is_array(att))) {
        json_decref(list);
        wh__fail(j, WH_DC_PERMANENT,
                 strdup("malformed mail action (it needs to, subject and body)"), NULL, 0, 0,
                 NULL);
        return;
    }
    if (!wh__smtp_configured(d)) {
        json_decref(list);
        wh__lim_misconfigured(&d->smtp, now);
        wh__misconfig_alert(t, &d->smtp, "wahook.smtp.url is not set", 0);
        wh__fail(j, WH_DC_MISCONFIGURED, strdup("wahook.smtp.url is not set"), NULL, 0, 0,
                 &d->smtp);
        return;
    }
    char err[160] = "";
    wh__xfer_t *x = wh__xfer_new(t, j, &d->smtp, WH__X_MAIL);
    int rc = x != NULL ? wh__smtp_setup(x, d->conf, list, subject, json_string_value(body),
                                        json_string_length(body), att, j->rows[0].id, err,
                                        sizeof(err))
                       : WH_ENOMEM;
    json_decref(list);
    if (rc != WH_OK) {
        wh__xfer_free(x);
        if (rc == WH_EINVAL)
            wh__fail(j, WH_DC_PERMANENT, strdup(err), NULL, 0, 0, NULL);
        else
            wh__fail(j, WH_DC_RETRY, strdup("out of memory"), NULL, 0, 0, NULL);
        return;
    }
    wh__enqueue(t, x);
}

static void wh__mail_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    long smtp = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &smtp);
    wh_deliver_class_t c = wh_deliver_classify_smtp(code, smtp);
    char *error = NULL;
    if (c != WH_DC_OK)
        error = code == CURLE_OPERATION_TIMEDOUT
                    ? wh__xfer_error(x, code, 0, "smtp")
                    : wh__fmt("smtp: %s (curl %d, SMTP %ld)",
                              x->errbuf[0] ? x->errbuf : curl_easy_strerror(code), (int)code,
                              smtp);
    wh__lim_done(t, x, c, 0, error);
    if (c == WH_DC_OK) {
        char resp[64];
        snprintf(resp, sizeof(resp), "{\"smtp\":%ld}", smtp);
        wh__decide(x->job, WH_OUTBOX_DONE, 0, NULL, resp, strlen(resp));
    } else {
        wh__fail(x->job, c, error, NULL, 0, 0, &t->d->smtp);
    }
}

/* ---- alerts ---------------------------------------------------------------------------------- */

/* The incident a script's alert belongs to: fields.incident (fields.incident_state "cleared"
 * clears it), or the connection of its instance for connection_closed / connection_restored
 * (shared with the watchdog's alerts). Returns 0 when it has none. */
static int wh__alert_incident(const json_t *payload, const char *instance, char *key,
                              size_t keylen, int *clear)
{
    if (json_is_true(json_object_get(payload, "gated")))
        return 0;
    const char *kind = json_string_value(json_object_get(payload, "kind"));
    const json_t *fields = json_object_get(payload, "fields");
    const char *explicit_key = json_string_value(json_object_get(fields, "incident"));
    if (explicit_key != NULL && explicit_key[0] != '\0') {
        const char *st = json_string_value(json_object_get(fields, "incident_state"));
        *clear = st != NULL && (strcmp(st, "cleared") == 0 || strcmp(st, "clear") == 0);
        snprintf(key, keylen, "%s", explicit_key);
        return 1;
    }
    if (kind == NULL)
        return 0;
    int closed = strcmp(kind, "connection_closed") == 0;
    int restored = strcmp(kind, "connection_restored") == 0;
    if (!closed && !restored)
        return 0;
    const char *inst = json_string_value(json_object_get(fields, "instance"));
    if (inst == NULL || inst[0] == '\0')
        inst = instance;
    if (inst == NULL || inst[0] == '\0')
        return 0;
    *clear = restored;
    snprintf(key, keylen, "connection:%s", inst);
    return 1;
}

static int wh__progress_has(const json_t *progress, const char *list, const char *id)
{
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(progress, list), i, v) {
        const char *s = json_string_value(v);
        if (s != NULL && strcmp(s, id) == 0)
            return 1;
    }
    return 0;
}

static void wh__alert_chan_start(wh__thr_t *t, wh__job_t *j, size_t k, int64_t now)
{
    wh_deliverers_t *d = t->d;
    wh__chan_t *ch = &j->ch[k];
    const char *instance = j->rows[0].instance;
    int64_t at = j->rows[0].created_at;
    wh__xfer_t *x = wh__xfer_new(t, j, ch->lim, ch->is_mail ? WH__X_ALERT_MAIL : WH__X_ALERT_URL);
    int rc = x != NULL ? WH_OK : WH_ENOMEM;
    char err[160] = "";
    if (rc == WH_OK && ch->is_mail) {
        char *subject = NULL, *body = NULL;
        rc = wh_deliver_alert_mail(j->payload, instance, at, &subject, &body);
        json_t *to = rc == WH_OK ? json_pack("[s]", ch->dest) : NULL;
        if (rc == WH_OK)
            rc = to == NULL ? WH_ENOMEM
                            : wh__smtp_setup(x, d->conf, to, subject, body, strlen(body), NULL,
                                             j->rows[0].id, err, sizeof(err));
        json_decref(to);
        free(subject);
        free(body);
    } else if (rc == WH_OK) {
        char *body = wh_deliver_alert_body(d->conf->alert_format, j->payload, instance, at);
        if (body == NULL || (x->url = strdup(ch->dest)) == NULL || wh__json_headers(x) != WH_OK) {
            free(body);
            rc = WH_ENOMEM;
        } else {
            wh__post_json(x, body);
        }
    }
    if (rc != WH_OK) {
        wh__xfer_free(x);
        ch->state = rc == WH_EINVAL ? WH__CH_GAVE_UP : WH__CH_FAILED;
        snprintf(ch->err, sizeof(ch->err), "%s", rc == WH_EINVAL ? err : "out of memory");
        return;
    }
    x->channel = (int)k;
    (void)now;
    wh__enqueue(t, x);
}

static void wh__alert_decide(wh__thr_t *t, wh__job_t *j)
{
    json_t *p = json_deep_copy(j->progress);
    json_t *sent = json_array(), *gave = json_array();
    if (p == NULL || sent == NULL || gave == NULL) {
        json_decref(p);
        json_decref(sent);
        json_decref(gave);
        wh__release(j);
        return;
    }
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(p, "sent"), i, v) json_array_append(sent, (json_t *)v);
    json_array_foreach(json_object_get(p, "gave_up"), i, v) json_array_append(gave, (json_t *)v);
    int failed = 0, deferred = 0;
    int64_t defer_at = INT64_MAX;
    char errs[600] = "";
    size_t el = 0;
    for (i = 0; i < j->nch; i++) {
        wh__chan_t *ch = &j->ch[i];
        switch (ch->state) {
        case WH__CH_SENT:
            json_array_append_new(sent, json_string(ch->id));
            break;
        case WH__CH_GAVE_UP:
            json_array_append_new(gave, json_string(ch->id));
            break;
        case WH__CH_FAILED:
            failed++;
            break;
        default:
            deferred++;
            if (ch->retry_at > 0 && ch->retry_at < defer_at)
                defer_at = ch->retry_at;
            break;
        }
        if (ch->state != WH__CH_SENT && ch->err[0] != '\0' && el + 8 < sizeof(errs))
            el += (size_t)snprintf(errs + el, sizeof(errs) - el, "%s%s: %s", el > 0 ? "; " : "",
                                   ch->id, ch->err);
    }
    size_t nsent = json_array_size(sent), ngave = json_array_size(gave);
    json_object_set_new(p, "sent", sent);
    json_object_set_new(p, "gave_up", gave);
    free(j->progress_out);
    j->progress_out = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    if (failed == 0 && deferred == 0) {
        char resp[96];
        snprintf(resp, sizeof(resp), "{\"sent\":%zu,\"gave_up\":%zu}", nsent, ngave);
        if (nsent > 0 || ngave == 0)
            wh__decide(j, WH_OUTBOX_DONE, 0, NULL, resp, strlen(resp));
        else
            wh__fail(j, WH_DC_PERMANENT, wh__fmt("every alert channel refused it: %s", errs),
                     NULL, 0, 0, NULL);
    } else if (failed > 0) {
        wh__fail(j, WH_DC_RETRY, wh__fmt("alert channels failed: %s", errs), NULL, 0, 0, NULL);
    } else {
        int64_t now = wh_now_ms();
        wh__decide(j, WH_OUTBOX_HOLD,
                   defer_at != INT64_MAX ? defer_at : now + t->d->conf->circuit_open_ms,
                   wh__fmt("alert channels held: %s", errs[0] ? errs : "circuit open"), NULL, 0);
    }
}

static void wh__alert_start(wh__thr_t *t, wh__job_t *j, int64_t now)
{
    wh_deliverers_t *d = t->d;
    const wh_config_t *conf = d->conf;
    const char *kind = json_string_value(json_object_get(j->payload, "kind"));
    const char *text = json_string_value(json_object_get(j->payload, "text"));
    if (kind == NULL || text == NULL) {
        wh__fail(j, WH_DC_PERMANENT, strdup("malformed alert action (it needs kind and text)"),
                 NULL, 0, 0, NULL);
        return;
    }
    char key[160];
    int clear = 0;
    if (!json_is_string(json_object_get(j->progress, "gate")) &&
        wh__alert_incident(j->payload, j->rows[0].instance, key, sizeof(key), &clear)) {
        json_t *p = json_deep_copy(j->progress);
        char *pt = NULL;
        if (p != NULL) {
            json_object_set_new(p, "gate", json_string(key));
            pt = json_dumps(p, JSON_COMPACT);
        }
        int rc = pt != NULL ? wh_outbox_gate_alert(d->store, j->rows[0].id, key, clear, pt)
                            : WH_ENOMEM;
        free(pt);
        if (rc == 0 || rc == WH_ENOTFOUND) {
            /* Suppressed (the row is done already) or dropped meanwhile. */
            if (rc == 0)
                wh_log(WH_LOG_INFO, "alert suppressed: one per incident", "{s:I,s:s,s:s}",
                       "outbox_id", (json_int_t)j->rows[0].id, "kind", kind, "incident", key);
            json_decref(p);
            wh__release(j);
            return;
        }
        if (rc < 0) {
            json_decref(p);
            t->store_backoff_until = now + WH__STORE_BACKOFF_MS;
            wh__release(j);
            return;
        }
        json_decref(j->progress);
        j->progress = p;
    }
    size_t total = conf->alert_emails.n + d->nurls;
    j->ch = total > 0 ? calloc(total, sizeof(*j->ch)) : NULL;
    if (total > 0 && j->ch == NULL) {
        wh__release(j);
        return;
    }
    for (size_t i = 0; i < conf->alert_emails.n; i++) {
        wh__chan_t *ch = &j->ch[j->nch];
        snprintf(ch->id, sizeof(ch->id), "email:%s", conf->alert_emails.v[i]);
        if (wh__progress_has(j->progress, "sent", ch->id) ||
            wh__progress_has(j->progress, "gave_up", ch->id))
            continue;
        ch->is_mail = 1;
        ch->dest = conf->alert_emails.v[i];
        ch->lim = &d->smtp;
        if (!wh__smtp_configured(d)) {
            ch->state = WH__CH_GAVE_UP;
            snprintf(ch->err, sizeof(ch->err), "wahook.smtp.url is not set");
        }
        j->nch++;
    }
    for (size_t i = 0; i < d->nurls; i++) {
        wh__chan_t *ch = &j->ch[j->nch];
        /* "alert_url:…" → "url:…" */
        snprintf(ch->id, sizeof(ch->id), "%s", d->urls[i].name + 6);
        if (wh__progress_has(j->progress, "sent", ch->id) ||
            wh__progress_has(j->progress, "gave_up", ch->id))
            continue;
        ch->dest = d->urls[i].url;
        ch->lim = &d->urls[i];
        j->nch++;
    }
    for (size_t i = 0; i < j->nch; i++)
        if (j->ch[i].state == WH__CH_PENDING)
            wh__alert_chan_start(t, j, i, now);
    if (j->xfers == 0)
        wh__alert_decide(t, j);
}

static void wh__alert_chan_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    wh__job_t *j = x->job;
    wh__chan_t *ch = &j->ch[x->channel];
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    wh_deliver_class_t c = ch->is_mail ? wh_deliver_classify_smtp(code, status)
                                       : wh_deliver_classify_http(code, status, x->resp.p,
                                                                  x->resp.len);
    char *error = c == WH_DC_OK
                      ? NULL
                      : wh__xfer_error(x, code, status, ch->is_mail ? "smtp" : "alert url");
    wh__lim_done(t, x, c, wh__retry_after(x, status), error);
    switch (c) {
    case WH_DC_OK:
        ch->state = WH__CH_SENT;
        break;
    case WH_DC_PERMANENT:
    case WH_DC_NOT_ON_WHATSAPP:
        ch->state = WH__CH_GAVE_UP;
        break;
    case WH_DC_MISCONFIGURED:
        ch->state = WH__CH_DEFERRED;
        ch->retry_at = wh__lim_open_until(ch->lim, wh_now_ms());
        break;
    default:
        ch->state = WH__CH_FAILED;
        break;
    }
    if (error != NULL)
        snprintf(ch->err, sizeof(ch->err), "%s", error);
    free(error);
    if (j->xfers == 0)
        wh__alert_decide(t, j);
}

/* ---- CRM ------------------------------------------------------------------------------------- */

/* The thread's CRM VM for the current scripts version: 1 when CRM rows may start now. After a
 * reload the old VM keeps serving its runs; no new run starts until they are done and the VM
 * is swapped. */
static int wh__vm_ready(wh__thr_t *t, int64_t now)
{
    wh_deliverers_t *d = t->d;
    if (d->scripts == NULL)
        return 0;
    uint64_t g = wh_scripts_generation(d->scripts);
    if (t->vm != NULL && t->gen->number == g)
        return 1;
    if (t->vm != NULL && t->runs > 0)
        return 0;
    if (now < t->vm_retry_at)
        return 0;
    char err[1024];
    wh_scripts_gen_t *gen = wh_scripts_current(d->scripts);
    if (t->vm != NULL && strcmp(gen->version, t->gen->version) == 0) {
        /* A reload of the same bytes: the VM runs them already. */
        wh_scripts_gen_unref(d->scripts, t->gen);
        t->gen = gen;
        return 1;
    }
    wh_lua_vm_t *vm = wh_scripts_vm_new(d->scripts, gen, NULL, NULL, err, sizeof(err));
    if (vm == NULL) {
        wh_scripts_gen_unref(d->scripts, gen);
        wh_log(WH_LOG_ERROR, "cannot create the deliverer's CRM VM", "{s:s}", "error", err);
        t->vm_retry_at = now + 5000;
        return 0;
    }
    if (t->vm != NULL) {
        wh_lua_vm_free(t->vm);
        wh_scripts_gen_unref(d->scripts, t->gen);
        wh_log(WH_LOG_INFO, "deliverer CRM VM swapped", "{s:i,s:s}", "thread", (int)t->index,
               "version", gen->version);
    }
    t->vm = vm;
    t->gen = gen;
    return 1;
}

static void wh__crm_handle(wh__thr_t *t, wh__job_t *j, int st);

static void wh__crm_misconfigured(wh__thr_t *t, wh__job_t *j, char *why)
{
    wh__lim_t *l = &t->d->crm;
    wh__lim_misconfigured(l, wh_now_ms());
    wh__misconfig_alert(t, l, why, 0);
    wh__fail(j, WH_DC_MISCONFIGURED, why, NULL, 0, 0, l);
}

static void wh__crm_start(wh__thr_t *t, wh__job_t *j, int64_t now)
{
    wh_deliverers_t *d = t->d;
    const wh_config_t *conf = d->conf;
    (void)now;
    if (!d->crm.configured || conf->crm.api_key == NULL || conf->crm.api_key[0] == '\0') {
        wh__crm_misconfigured(t, j, strdup("wahook.crm.url or wahook.crm.api-key is not set"));
        return;
    }
    const char *module = conf->crm.module != NULL ? conf->crm.module : "crm.twenty";
    const wh_outbox_row_t *r = &j->rows[0];
    char err[512] = "";
    int rc;
    if (j->nrows == 1) {
        const char *op = json_string_value(json_object_get(j->payload, "op"));
        char *fields = json_dumps(json_object_get(j->payload, "fields"), JSON_COMPACT);
        rc = wh_crm_run_start(t->vm, module, op != NULL ? op : "", fields, r->progress,
                              r->instance, r->contact_key, &j->run, err, sizeof(err));
        free(fields);
    } else {
        json_t *items = json_array();
        for (size_t i = 0; items != NULL && i < j->nrows; i++) {
            json_t *p = json_loads(j->rows[i].payload, 0, NULL);
            json_t *it = json_pack("{s:O?,s:O?}", "op", json_object_get(p, "op"), "fields",
                                   json_object_get(p, "fields"));
            json_decref(p);
            if (it == NULL || json_array_append_new(items, it) != 0) {
                json_decref(items);
                items = NULL;
            }
        }
        char *text = items != NULL ? json_dumps(items, JSON_COMPACT) : NULL;
        json_decref(items);
        rc = text != NULL ? wh_crm_run_start_batch(t->vm, module, text, r->progress, r->instance,
                                                   r->contact_key, &j->run, err, sizeof(err))
                          : WH_ENOMEM;
        free(text);
    }
    if (rc != WH_OK) {
        wh__fail(j, rc == WH_EINVAL ? WH_DC_PERMANENT : WH_DC_RETRY,
                 wh__fmt("crm: %s", err[0] ? err : wh_strerror(rc)), NULL, 0, 0, NULL);
        return;
    }
    t->runs++;
    j->saved_progress = wh__strdup0(r->progress);
    wh__crm_handle(t, j, wh_crm_run_step(j->run));
}

/* Persists the run's progress on every row of the job before its next request. Returns 0, or
 * an error after which the job is released (the rows keep what they had). */
static int wh__crm_save_progress(wh__thr_t *t, wh__job_t *j)
{
    const char *prog = wh_crm_run_progress_json(j->run);
    if (j->saved_progress != NULL && strcmp(prog, j->saved_progress) == 0)
        return WH_OK;
    wh_outbox_op_t ops[WH__CRM_BATCH];
    memset(ops, 0, sizeof(ops));
    for (size_t i = 0; i < j->nrows; i++) {
        ops[i].op = WH_OUTBOX_PROGRESS;
        ops[i].id = j->rows[i].id;
        ops[i].progress = prog;
    }
    int rc = wh_outbox_apply(t->d->store, ops, j->nrows);
    if (rc == WH_OK && ops[0].status != WH_OK)
        rc = ops[0].status;
    if (rc != WH_OK)
        return rc;
    free(j->saved_progress);
    j->saved_progress = strdup(prog);
    return j->saved_progress != NULL ? WH_OK : WH_ENOMEM;
}

static void wh__crm_request(wh__thr_t *t, wh__job_t *j)
{
    wh_deliverers_t *d = t->d;
    const wh_lua_http_req_t *req = wh_crm_run_request(j->run);
    int rc = wh__crm_save_progress(t, j);
    if (rc != WH_OK) {
        if (rc != WH_ENOTFOUND)
            t->store_backoff_until = wh_now_ms() + WH__STORE_BACKOFF_MS;
        wh_log(WH_LOG_WARN, "crm progress not saved; the action will run again", "{s:I,s:s}",
               "outbox_id", (json_int_t)j->rows[0].id, "error", wh_strerror(rc));
        wh__release(j);
        return;
    }
    wh__xfer_t *x = wh__xfer_new(t, j, &d->crm, WH__X_CRM);
    if (x == NULL || req == NULL || (x->resp_headers = json_object()) == NULL ||
        (x->url = wh__join_url(d->crm.url, req->path)) == NULL) {
        wh__xfer_free(x);
        wh__fail(j, WH_DC_RETRY, strdup("out of memory"), NULL, 0, 0, NULL);
        return;
    }
    const char *k;
    const json_t *v;
    int ok = 1;
    json_object_foreach((json_t *)req->headers, k, v) {
        if (strcasecmp(k, "authorization") == 0 || strcasecmp(k, "host") == 0 ||
            strcasecmp(k, "content-length") == 0)
            continue; /* credentials and framing are ours */
        if (json_is_string(v))
            ok &= wh__add_header(x, k, json_string_value(v)) == WH_OK;
    }
    char *auth = wh__fmt("Bearer %s", d->conf->crm.api_key);
    ok &= auth != NULL && wh__add_header(x, "Authorization", auth) == WH_OK;
    free(auth);
    struct curl_slist *h = curl_slist_append(x->headers, "Expect:");
    if (h != NULL)
        x->headers = h;
    if (!ok || h == NULL) {
        wh__xfer_free(x);
        wh__fail(j, WH_DC_RETRY, strdup("out of memory"), NULL, 0, 0, NULL);
        return;
    }
    const char *m = req->method != NULL ? req->method : "GET";
    if (strcmp(m, "GET") == 0) {
        curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, m);
        if (req->body != NULL) {
            x->req_body = malloc(req->body_len + 1);
            if (x->req_body == NULL) {
                wh__xfer_free(x);
                wh__fail(j, WH_DC_RETRY, strdup("out of memory"), NULL, 0, 0, NULL);
                return;
            }
            memcpy(x->req_body, req->body, req->body_len);
            x->req_body[req->body_len] = '\0';
            x->req_len = req->body_len;
            curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->req_body);
            curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->req_len);
        } else if (strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
                   strcmp(m, "PATCH") == 0) {
            curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
    }
    if (req->timeout_ms > 0)
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    wh__enqueue(t, x);
}

static void wh__crm_handle(wh__thr_t *t, wh__job_t *j, int st)
{
    const char *prog = wh_crm_run_progress_json(j->run);
    switch (st) {
    case WH_CRM_NEED_HTTP:
        wh__crm_request(t, j);
        return;
    case WH_CRM_DONE: {
        const char *res = wh_crm_run_result_json(j->run);
        free(j->progress_out);
        j->progress_out = strdup(prog);
        wh__decide(j, WH_OUTBOX_DONE, 0, NULL, res, res != NULL ? strlen(res) : 0);
        return;
    }
    case WH_CRM_FAILED:
        break;
    default:
        free(j->progress_out);
        j->progress_out = strdup(prog);
        wh__fail(j, WH_DC_RETRY, strdup("crm: the run cannot continue"), NULL, 0, 0, NULL);
        return;
    }
    free(j->progress_out);
    j->progress_out = strdup(prog);
    const char *msg = wh_crm_run_message(j->run);
    char *error = wh__fmt("crm: %s", msg != NULL && msg[0] != '\0' ? msg : "failed");
    int64_t ra = (int64_t)wh_crm_run_retry_after_ms(j->run);
    if (j->retry_after_ms > ra)
        ra = j->retry_after_ms;
    wh_deliver_class_t c;
    switch (wh_crm_run_fail_class(j->run)) {
    case WH_CRM_PERMANENT:
        c = WH_DC_PERMANENT;
        break;
    case WH_CRM_MISCONFIGURED:
        c = WH_DC_MISCONFIGURED;
        break;
    case WH_CRM_BY_STATUS: {
        int status = wh_crm_run_last_status(j->run);
        c = status > 0 ? wh_deliver_classify_http(0, status, NULL, 0) : WH_DC_RETRY;
        if (c == WH_DC_OK)
            c = WH_DC_RETRY; /* raised after a 2xx: nothing says the action itself is bad */
        break;
    }
    default:
        c = WH_DC_RETRY;
        break;
    }
    if (c == WH_DC_MISCONFIGURED) {
        wh__crm_misconfigured(t, j, error);
        return;
    }
    wh__fail(j, c, error, NULL, 0, ra, &t->d->crm);
}

static void wh__crm_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    wh__job_t *j = x->job;
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    wh_deliver_class_t c = wh_deliver_classify_http(code, status, x->resp.p, x->resp.len);
    /* For the circuit a 404 is an answer about one record (a REST lookup), not a wrong URL: a
     * module that fails because of it is classified by status (misconfigured) at the end. */
    wh_deliver_class_t for_circuit = status == 404 && code == CURLE_OK ? WH_DC_PERMANENT : c;
    int64_t ra = wh__retry_after(x, status);
    if (ra > j->retry_after_ms)
        j->retry_after_ms = ra;
    char *error = for_circuit == WH_DC_OK || for_circuit == WH_DC_PERMANENT
                      ? NULL
                      : wh__xfer_error(x, code, status, "crm");
    wh__lim_done(t, x, for_circuit, ra, error);
    int st;
    if (code != CURLE_OK) {
        char msg[CURL_ERROR_SIZE + 64];
        snprintf(msg, sizeof(msg), "%s", error != NULL ? error : curl_easy_strerror(code));
        st = wh_crm_run_resume(j->run, NULL, msg);
    } else {
        wh_lua_http_resp_t resp = {.status = (int)status,
                                   .headers = x->resp_headers,
                                   .body = x->resp.p,
                                   .body_len = x->resp.len};
        x->resp_headers = NULL; /* taken over by the runner */
        x->resp.p = NULL;
        x->resp.len = x->resp.cap = 0;
        st = wh_crm_run_resume(j->run, &resp, NULL);
    }
    free(error);
    wh__crm_handle(t, j, st);
}

/* ---- transfer completion --------------------------------------------------------------------- */

static void wh__xfer_done(wh__thr_t *t, wh__xfer_t *x, CURLcode code)
{
    if (x->job != NULL)
        x->job->xfers--;
    switch (x->purpose) {
    case WH__X_STATE:
        wh__state_done(t, x, code);
        break;
    case WH__X_SEND:
        wh__evo_done(t, x, code);
        break;
    case WH__X_MAIL:
        wh__mail_done(t, x, code);
        break;
    case WH__X_CRM:
        wh__crm_done(t, x, code);
        break;
    default:
        wh__alert_chan_done(t, x, code);
        break;
    }
    wh__xfer_free(x);
}

/* A queued transfer that will not run (its circuit is open, or shutdown). */
static void wh__xfer_discard(wh__thr_t *t, wh__xfer_t *x, const char *why)
{
    wh__job_t *j = x->job;
    if (j != NULL) {
        j->xfers--;
        if (x->purpose == WH__X_ALERT_MAIL || x->purpose == WH__X_ALERT_URL) {
            wh__chan_t *ch = &j->ch[x->channel];
            ch->state = WH__CH_DEFERRED;
            ch->retry_at = x->lim != NULL ? wh__lim_open_until(x->lim, wh_now_ms()) : 0;
            snprintf(ch->err, sizeof(ch->err), "%s", why);
            if (j->xfers == 0)
                wh__alert_decide(t, j);
        } else {
            wh__release(j);
        }
    }
    wh__xfer_free(x);
}

/* Starts every queued transfer its limiter lets through now. */
static int64_t wh__start_waiting(wh__thr_t *t, int64_t now)
{
    int64_t retry_at = INT64_MAX;
    wh__xfer_t *x = t->wait_head, *keep_head = NULL, *keep_tail = NULL;
    t->wait_head = t->wait_tail = NULL;
    while (x != NULL) {
        wh__xfer_t *next = x->next;
        x->next = NULL;
        if (t->stopping) {
            wh__xfer_discard(t, x, "shutting down");
            x = next;
            continue;
        }
        int64_t ra = 0;
        int circuit = 0;
        int ok = x->lim == NULL || wh__lim_acquire(x->lim, now, &ra, &circuit);
        if (ok) {
            if (wh__xfer_start(t, x, now) != WH_OK) {
                int m, r;
                if (x->lim != NULL)
                    wh__lim_release(x->lim, now, WH_DC_RETRY, 0, 1, &m, &r);
                wh__xfer_discard(t, x, "cannot start the transfer");
            }
        } else if (circuit &&
                   (x->purpose == WH__X_ALERT_MAIL || x->purpose == WH__X_ALERT_URL)) {
            wh__xfer_discard(t, x, "circuit open");
        } else {
            if (keep_tail != NULL)
                keep_tail->next = x;
            else
                keep_head = x;
            keep_tail = x;
            if (ra > 0 && ra < retry_at)
                retry_at = ra;
        }
        x = next;
    }
    /* Transfers queued meanwhile (by discards) go behind the kept ones. */
    if (keep_tail != NULL) {
        keep_tail->next = t->wait_head;
        if (t->wait_head == NULL)
            t->wait_tail = keep_tail;
        t->wait_head = keep_head;
    }
    return retry_at;
}

/* ---- writing decisions ----------------------------------------------------------------------- */

static char *wh__dead_text(const wh__job_t *j)
{
    const wh_outbox_row_t *r = &j->rows[0];
    return wh__fmt("Delivery to %s failed for good (outbox #%lld%s%s%s%s): %s", r->target,
                   (long long)r->id, r->instance[0] ? ", instance " : "", r->instance,
                   r->contact_key[0] ? ", contact " : "", r->contact_key,
                   j->error != NULL ? j->error : "failed");
}

/* Decisions of finished jobs, written by the commit thread in one transaction. */
typedef struct wh__batch {
    wh_outbox_op_t *ops;
    size_t nops;
    wh_outbox_sent_t *sent;
    wh_outbox_alert_t *alerts;
    json_t **afields;
    char **atexts;
    wh__job_t **jobs;
    size_t njobs;
    wh__palert_t *incidents; /* incident alerts raised meanwhile, written after the ops */
    int rc;
    struct wh__batch *next;
} wh__batch_t;

static void wh__batch_free(wh__batch_t *b)
{
    for (size_t i = 0; i < b->nops; i++) {
        json_decref(b->afields[i]);
        free(b->atexts[i]);
    }
    free(b->ops);
    free(b->sent);
    free(b->alerts);
    free(b->afields);
    free(b->atexts);
    free(b->jobs);
    free(b);
}

/* Fills the ops of one decided job from o on. */
static void wh__job_ops(wh__thr_t *t, wh__batch_t *b, wh__job_t *j, size_t o)
{
    wh_deliverers_t *d = t->d;
    for (size_t i = 0; i < j->nrows; i++, o++) {
        wh_outbox_op_t *op = &b->ops[o];
        const wh_outbox_row_t *r = &j->rows[i];
        op->op = j->op;
        op->id = r->id;
        op->instance = r->instance;
        op->next_attempt_at = j->next_at;
        op->error = j->error;
        op->response = j->response;
        op->progress = j->progress_out;
        if (i > 0 && j->exhausted && r->attempts + 1 < d->conf->delivery_max_attempts &&
            wh_now_ms() - r->created_at < d->conf->delivery_retry_total_ms) {
            /* The head of a merged CRM batch ran out of attempts; this row has not. */
            op->op = WH_OUTBOX_RETRY;
            op->next_attempt_at =
                wh_now_ms() + wh_deliver_backoff(r->attempts + 1, d->conf->delivery_retry_base_ms,
                                                 d->conf->delivery_retry_max_ms, wh__rand01(t));
        }
        if (i > 0)
            continue; /* the extras belong to the action, written once */
        if (j->sent_wa_id != NULL) {
            wh_outbox_sent_t *m = &b->sent[o];
            m->instance = r->instance;
            m->wa_id = j->sent_wa_id;
            m->contact_key = j->recipient[0] != '\0' ? j->recipient : NULL;
            m->chat_jid = j->sent_jid;
            m->text = json_string_value(json_object_get(j->payload, "text"));
            m->ts = j->sent_ts;
            op->sent = m;
        }
        op->echo_wa_id = j->echo_wa_id;
        if (j->not_on_wa)
            op->not_on_whatsapp = j->recipient[0] != '\0' ? j->recipient : r->contact_key;
        if (j->op == WH_OUTBOX_DEAD && j->dead_alert && wh__alerts_configured(d)) {
            wh_outbox_alert_t *a = &b->alerts[o];
            b->afields[o] = json_pack("{s:s,s:I,s:s,s:s,s:s,s:s}", "target", r->target,
                                      "outbox_id", (json_int_t)r->id, "instance", r->instance,
                                      "contact", r->contact_key, "action", r->kind, "error",
                                      j->error != NULL ? j->error : "");
            b->atexts[o] = wh__dead_text(j);
            if (b->afields[o] != NULL && b->atexts[o] != NULL) {
                a->instance = r->instance;
                a->kind = "dead_letter";
                a->text = b->atexts[o];
                a->fields = b->afields[o];
                a->rate_target = r->target;
                a->rate_kind = "dead_letter";
                a->rate_interval_ms = d->conf->dead_alert_interval_ms;
                op->alert = a;
            }
        }
    }
}

/* Hands the decisions of finished jobs to the commit thread (the jobs stay in flight, so their
 * rows and the rows behind them are not claimed again until written), and frees released jobs
 * (their rows were not touched). */
static void wh__finish(wh__thr_t *t)
{
    size_t nops = 0, njobs = 0;
    for (wh__job_t *j = t->jobs, *next; j != NULL; j = next) {
        next = j->next;
        if (j->committing || j->xfers > 0 || j->waiting_state || !(j->decided || j->released))
            continue;
        if (!j->decided) {
            wh__job_unlink(t, j);
            wh__job_free(j);
            t->rescan = 1;
            continue;
        }
        njobs++;
        nops += j->nrows;
    }
    if (njobs == 0 && t->alerts == NULL)
        return;
    wh__batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return; /* tried again on the next turn */
    b->nops = nops;
    b->njobs = njobs;
    if (nops > 0) {
        b->ops = calloc(nops, sizeof(*b->ops));
        b->sent = calloc(nops, sizeof(*b->sent));
        b->alerts = calloc(nops, sizeof(*b->alerts));
        b->afields = calloc(nops, sizeof(*b->afields));
        b->atexts = calloc(nops, sizeof(*b->atexts));
        b->jobs = calloc(njobs, sizeof(*b->jobs));
        if (b->ops == NULL || b->sent == NULL || b->alerts == NULL || b->afields == NULL ||
            b->atexts == NULL || b->jobs == NULL) {
            b->nops = 0;
            wh__batch_free(b);
            return;
        }
    }
    size_t k = 0, o = 0;
    for (wh__job_t *j = t->jobs; j != NULL && k < njobs; j = j->next) {
        if (j->committing || j->xfers > 0 || j->waiting_state || !j->decided)
            continue;
        j->committing = 1;
        b->jobs[k++] = j;
        wh__job_ops(t, b, j, o);
        o += j->nrows;
    }
    b->incidents = t->alerts;
    t->alerts = NULL;
    pthread_mutex_lock(&t->cmu);
    if (t->cq_tail != NULL)
        t->cq_tail->next = b;
    else
        t->cq_head = b;
    t->cq_tail = b;
    pthread_cond_signal(&t->ccv);
    pthread_mutex_unlock(&t->cmu);
    t->ncommitting++;
}

static void *wh__commit_main(void *arg)
{
    wh__thr_t *t = arg;
    pthread_setname_np(pthread_self(), "wh-deliv-commit");
    pthread_mutex_lock(&t->cmu);
    for (;;) {
        while (t->cq_head == NULL && !t->cstop)
            pthread_cond_wait(&t->ccv, &t->cmu);
        wh__batch_t *b = t->cq_head;
        if (b == NULL)
            break; /* stopping, and everything queued is written */
        t->cq_head = b->next;
        if (t->cq_head == NULL)
            t->cq_tail = NULL;
        b->next = NULL;
        pthread_mutex_unlock(&t->cmu);
        int rc = WH_OK;
        for (int tries = 0; b->nops > 0 && tries < 3; tries++) {
            rc = wh_outbox_apply(t->d->store, b->ops, b->nops);
            if (rc != WH_EBUSY)
                break;
            usleep(20000);
        }
        b->rc = rc;
        wh__flush_alerts(t->d, b->incidents);
        b->incidents = NULL;
        pthread_mutex_lock(&t->cmu);
        b->next = t->cdone;
        t->cdone = b;
        pthread_mutex_unlock(&t->cmu);
        curl_multi_wakeup(t->multi);
        pthread_mutex_lock(&t->cmu);
    }
    pthread_mutex_unlock(&t->cmu);
    return NULL;
}

/* Frees the jobs of written batches (loop thread). */
static void wh__reap(wh__thr_t *t)
{
    wh_deliverers_t *d = t->d;
    pthread_mutex_lock(&t->cmu);
    wh__batch_t *list = t->cdone;
    t->cdone = NULL;
    pthread_mutex_unlock(&t->cmu);
    while (list != NULL) {
        wh__batch_t *b = list;
        list = b->next;
        t->ncommitting--;
        if (b->rc != WH_OK) {
            /* Nothing was written: the rows stay pending and are delivered again (at least
             * once). */
            wh_log(WH_LOG_ERROR, "cannot record delivery outcomes", "{s:s,s:I}", "error",
                   wh_strerror(b->rc), "rows", (json_int_t)b->nops);
            t->store_backoff_until = wh_now_ms() + WH__STORE_BACKOFF_MS;
        }
        size_t o = 0;
        for (size_t i = 0; i < b->njobs; i++) {
            wh__job_t *j = b->jobs[i];
            const wh_outbox_row_t *r = &j->rows[0];
            if (b->rc == WH_OK) {
                if (b->ops[o].status == WH_ENOTFOUND)
                    wh_log(WH_LOG_INFO, "outbox row changed by an operator during delivery",
                           "{s:I}", "outbox_id", (json_int_t)r->id);
                if (j->op == WH_OUTBOX_DONE)
                    atomic_fetch_add(&d->delivered[j->type], (long)j->nrows);
                else if (j->op != WH_OUTBOX_PROGRESS)
                    atomic_fetch_add(&d->failed[j->type], (long)j->nrows);
                if (j->op == WH_OUTBOX_DEAD)
                    wh_log(WH_LOG_WARN, "delivery dead", "{s:I,s:s,s:s,s:i,s:b}", "outbox_id",
                           (json_int_t)r->id, "target", r->target, "error",
                           j->error != NULL ? j->error : "", "rows", (int)j->nrows, "alerted",
                           b->ops[o].alerted);
                else if (j->op == WH_OUTBOX_RETRY || j->op == WH_OUTBOX_HOLD)
                    wh_log(WH_LOG_INFO,
                           j->op == WH_OUTBOX_RETRY ? "delivery failed; will retry"
                                                    : "delivery held",
                           "{s:I,s:s,s:s,s:I}", "outbox_id", (json_int_t)r->id, "target",
                           r->target, "error", j->error != NULL ? j->error : "", "in_ms",
                           (json_int_t)(j->next_at - wh_now_ms()));
            }
            o += j->nrows;
            wh__job_unlink(t, j);
            wh__job_free(j);
        }
        wh__batch_free(b);
        t->rescan = 1;
    }
}

/* ---- claiming rows --------------------------------------------------------------------------- */

static wh__lim_t *wh__type_lim(wh_deliverers_t *d, int type)
{
    return type == WH__T_EVO    ? &d->evo
           : type == WH__T_CRM  ? &d->crm
           : type == WH__T_MAIL ? &d->smtp
                                : NULL;
}

static wh__job_t *wh__job_new(wh__thr_t *t, int type, wh_outbox_row_t *row)
{
    wh__job_t *j = calloc(1, sizeof(*j));
    wh_outbox_row_t *rows = malloc(sizeof(*rows));
    if (j == NULL || rows == NULL) {
        free(j);
        free(rows);
        return NULL;
    }
    rows[0] = *row;
    memset(row, 0, sizeof(*row));
    j->thr = t;
    j->type = type;
    j->rows = rows;
    j->nrows = 1;
    j->payload = json_loads(rows[0].payload, 0, NULL);
    if (j->payload == NULL)
        j->payload = json_object();
    j->progress = rows[0].progress != NULL ? json_loads(rows[0].progress, 0, NULL) : NULL;
    if (!json_is_object(j->progress)) {
        json_decref(j->progress);
        j->progress = json_object();
    }
    return j;
}

/* Adds the CRM rows queued behind the head to its job (one merged run). */
static void wh__crm_batch(wh__thr_t *t, wh__job_t *j)
{
    wh_outbox_row_t more[WH__CRM_BATCH - 1];
    size_t n = 0;
    if (wh_outbox_followers(t->reader, &j->rows[0], more, WH__CRM_BATCH - 1, &n) != WH_OK ||
        n == 0)
        return;
    wh_outbox_row_t *rows = realloc(j->rows, (1 + n) * sizeof(*rows));
    if (rows == NULL) {
        for (size_t i = 0; i < n; i++)
            wh_outbox_row_clear(&more[i]);
        return;
    }
    memcpy(rows + 1, more, n * sizeof(*rows));
    j->rows = rows;
    j->nrows = 1 + n;
}

static void wh__claim(wh__thr_t *t, int type, int64_t now)
{
    wh_deliverers_t *d = t->d;
    wh__lim_t *lim = wh__type_lim(d, type);
    int cap;
    if (lim == NULL) {
        cap = WH__ALERT_INFLIGHT - t->njobs[type];
    } else {
        int probe = 0;
        int64_t until = wh__lim_blocked(lim, now, &probe);
        if (until > now) {
            if (until < t->rescan_at)
                t->rescan_at = until;
            return;
        }
        cap = (lim->concurrency < WH__CLAIM_MAX ? lim->concurrency : WH__CLAIM_MAX) -
              t->njobs[type];
        if (probe)
            cap = 1 - t->njobs[type];
    }
    if (cap <= 0)
        return;
    if (type == WH__T_CRM && d->crm.configured && !wh__vm_ready(t, now)) {
        if (t->vm_retry_at > now && t->vm_retry_at < t->rescan_at)
            t->rescan_at = t->vm_retry_at;
        return;
    }
    /* Rows this thread already delivers, and instances whose sends are paused. */
    size_t nskip = 0;
    for (wh__job_t *j = t->jobs; j != NULL; j = j->next)
        if (j->type == type)
            nskip += j->nrows;
    int64_t *skip = nskip > 0 ? malloc(nskip * sizeof(*skip)) : NULL;
    const char **paused = type == WH__T_EVO && t->ninst > 0 ? malloc(t->ninst * sizeof(*paused))
                                                             : NULL;
    size_t ns = 0, np = 0;
    if ((nskip > 0 && skip == NULL) || (type == WH__T_EVO && t->ninst > 0 && paused == NULL)) {
        free(skip);
        free(paused);
        return;
    }
    for (wh__job_t *j = t->jobs; j != NULL; j = j->next)
        if (j->type == type)
            for (size_t i = 0; i < j->nrows; i++)
                skip[ns++] = j->rows[i].id;
    if (paused != NULL) {
        /* The pause follows the latest committed connection state, not a cached one. */
        for (size_t i = 0; i < t->ninst; i++)
            if (t->inst[i].checked_at != now)
                wh__inst_refresh(t, &t->inst[i], now);
        for (size_t i = 0; i < t->ninst; i++)
            if (t->inst[i].paused)
                paused[np++] = t->inst[i].name;
    }
    wh_outbox_row_t rows[WH__CLAIM_MAX];
    size_t n = 0;
    wh_outbox_query_t q = {.target = wh__tname[type],
                           .part = t->index,
                           .nparts = d->n,
                           .now = now,
                           .skip = skip,
                           .nskip = ns,
                           .paused = paused,
                           .npaused = np};
    int rc = wh_outbox_next(t->reader, &q, rows, (size_t)cap, &n);
    free(skip);
    free(paused);
    if (rc != WH_OK) {
        t->store_backoff_until = now + WH__STORE_BACKOFF_MS;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        wh__job_t *j = wh__job_new(t, type, &rows[i]);
        if (j == NULL) {
            wh_outbox_row_clear(&rows[i]);
            continue;
        }
        if (type == WH__T_CRM)
            wh__crm_batch(t, j);
        wh__job_link(t, j);
        switch (type) {
        case WH__T_EVO:
            wh__evo_start(t, j, now);
            break;
        case WH__T_CRM:
            if (t->vm == NULL) /* CRM not configured: held without a VM */
                wh__crm_misconfigured(t, j,
                                      strdup("wahook.crm.url or wahook.crm.api-key is not set"));
            else
                wh__crm_start(t, j, now);
            break;
        case WH__T_MAIL:
            wh__mail_start(t, j, now);
            break;
        default:
            wh__alert_start(t, j, now);
            break;
        }
    }
}

static void wh__refresh_counts(wh__thr_t *t, int64_t now)
{
    json_t *c = wh_outbox_counts(t->reader);
    t->counts_at = now + WH__COUNTS_MS;
    if (c == NULL)
        return;
    pthread_mutex_lock(&t->d->mu);
    json_decref(t->d->counts);
    t->d->counts = c;
    pthread_mutex_unlock(&t->d->mu);
}

/* ---- the thread ------------------------------------------------------------------------------ */

static void wh__abandon_all(wh__thr_t *t)
{
    int64_t now = wh_now_ms();
    while (t->running != NULL) {
        wh__xfer_t *x = t->running;
        curl_multi_remove_handle(t->multi, x->easy);
        wh__running_unlink(t, x);
        if (x->lim != NULL) {
            int m, r;
            wh__lim_release(x->lim, now, WH_DC_RETRY, 0, 1, &m, &r);
        }
        if (x->purpose == WH__X_STATE) {
            wh__xfer_free(x);
            continue;
        }
        wh__xfer_discard(t, x, "shutting down");
    }
    while (t->wait_head != NULL) {
        wh__xfer_t *x = t->wait_head;
        t->wait_head = x->next;
        if (t->wait_head == NULL)
            t->wait_tail = NULL;
        x->next = NULL;
        wh__xfer_discard(t, x, "shutting down");
    }
    /* Decisions made up to here are still written; the rest stay pending. */
    for (wh__job_t *j = t->jobs; j != NULL; j = j->next) {
        j->waiting_state = 0;
        if (!j->decided)
            j->released = 1;
    }
    wh__finish(t);
    pthread_mutex_lock(&t->cmu);
    t->cstop = 1;
    pthread_cond_signal(&t->ccv);
    pthread_mutex_unlock(&t->cmu);
    if (t->cstarted) {
        pthread_join(t->ctid, NULL);
        t->cstarted = 0;
    }
    wh__reap(t);
}

static void *wh__thr_main(void *arg)
{
    wh__thr_t *t = arg;
    wh_deliverers_t *d = t->d;
    pthread_setname_np(pthread_self(), "wh-deliver");
    t->rescan = 1;
    t->rescan_at = 0;
    for (;;) {
        int64_t now = wh_now_ms();
        if (atomic_load(&d->stop) && !t->stopping) {
            t->stopping = 1;
            int64_t grace = d->conf->shutdown_timeout_ms / 2;
            t->stop_deadline = now + (grace > 500 ? grace : 500);
        }
        wh__reap(t);
        wh__finish(t);
        if (t->stopping &&
            ((t->nrunning == 0 && t->ncommitting == 0) || now >= t->stop_deadline))
            break;
        if (!t->stopping) {
            wh__refresh_states(t, now);
            if (atomic_exchange(&t->dirty, 0))
                t->rescan = 1;
            if (now >= t->rescan_at)
                t->rescan = 1;
            if (t->rescan && now >= t->store_backoff_until) {
                t->rescan = 0;
                t->rescan_at = INT64_MAX;
                for (int type = 0; type < WH__T_COUNT; type++)
                    wh__claim(t, type, now);
                for (int type = 0; type < WH__T_COUNT; type++) {
                    int64_t due = wh_outbox_next_due(t->reader, wh__tname[type], t->index, d->n,
                                                     now);
                    if (due < t->rescan_at)
                        t->rescan_at = due;
                }
            }
            if (t->index == 0 && now >= t->counts_at)
                wh__refresh_counts(t, now);
        }
        int64_t gate_at = wh__start_waiting(t, now);
        wh__finish(t);

        /* Sleep until curl has work, a wake-up, or the next due row / gate / state check. */
        int64_t wake = t->rescan ? now : t->rescan_at;
        if (t->store_backoff_until > now && wake < t->store_backoff_until)
            wake = t->store_backoff_until;
        if (gate_at < wake)
            wake = gate_at;
        for (size_t i = 0; i < t->ninst; i++)
            if (t->inst[i].paused && t->inst[i].checked_at + WH__STATE_TTL_MS < wake)
                wake = t->inst[i].checked_at + WH__STATE_TTL_MS;
        if (t->index == 0 && t->counts_at < wake)
            wake = t->counts_at;
        int64_t timeout = wake - now;
        int64_t cap = t->stopping ? 50 : d->conf->poll_interval_ms;
        if (timeout > cap)
            timeout = cap;
        if (timeout < 0)
            timeout = 0;
        curl_multi_poll(t->multi, NULL, 0, (int)timeout, NULL);
        int running = 0;
        curl_multi_perform(t->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(t->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            CURL *easy = m->easy_handle;
            CURLcode code = m->data.result;
            wh__xfer_t *x = NULL;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(t->multi, easy);
            if (x == NULL)
                continue;
            wh__running_unlink(t, x);
            wh__xfer_done(t, x, code);
        }
    }
    wh__abandon_all(t);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------------------ */

static void wh__hook(void *arg)
{
    wh_deliverers_wake(arg);
}

void wh_deliverers_wake(wh_deliverers_t *d)
{
    if (d == NULL)
        return;
    for (unsigned i = 0; i < d->n; i++) {
        if (!d->thr[i].started)
            continue;
        atomic_store(&d->thr[i].dirty, 1);
        curl_multi_wakeup(d->thr[i].multi);
    }
}

static void wh__free(wh_deliverers_t *d)
{
    if (d == NULL)
        return;
    for (unsigned i = 0; d->thr != NULL && i < d->n; i++) {
        wh__thr_t *t = &d->thr[i];
        for (size_t k = 0; k < t->ninst; k++)
            free(t->inst[k].name);
        free(t->inst);
        if (t->vm != NULL)
            wh_lua_vm_free(t->vm);
        if (t->gen != NULL)
            wh_scripts_gen_unref(d->scripts, t->gen);
        wh_outbox_reader_close(t->reader);
        if (t->multi != NULL)
            curl_multi_cleanup(t->multi);
        pthread_mutex_destroy(&t->mu);
        pthread_mutex_destroy(&t->cmu);
        pthread_cond_destroy(&t->ccv);
    }
    free(d->thr);
    wh__lim_free(&d->evo);
    wh__lim_free(&d->crm);
    wh__lim_free(&d->smtp);
    for (size_t i = 0; i < d->nurls; i++)
        wh__lim_free(&d->urls[i]);
    free(d->urls);
    json_decref(d->counts);
    pthread_mutex_destroy(&d->mu);
    free(d->db_path);
    free(d);
}

int wh_deliverers_start(wh_deliverers_t **out, const wh_config_t *conf, wh_store_t *store,
                        const char *db_path, wh_scripts_t *scripts, char *err, size_t errlen)
{
    *out = NULL;
    if (conf == NULL || store == NULL || db_path == NULL) {
        snprintf(err, errlen, "deliverers need a config, a store and a database path");
        return WH_EINVAL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "cannot initialise libcurl");
        return WH_ERR;
    }
    wh_deliverers_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    pthread_mutex_init(&d->mu, NULL);
    d->conf = conf;
    d->store = store;
    d->scripts = scripts;
    d->n = conf->deliverers > 0 ? (unsigned)conf->deliverers : 1;
    d->db_path = strdup(db_path);
    int64_t now = wh_now_ms();
    const wh_target_conf_t *e = &conf->evolution, *c = &conf->crm, *m = &conf->smtp;
    wh__lim_init(&d->evo, "evolution", e->url, e->tls_verify, e->rate_per_min, e->burst,
                 e->concurrency, e->timeout_ms, e->connect_timeout_ms, conf, 1, now);
    wh__lim_init(&d->crm, "crm", c->url, c->tls_verify, c->rate_per_min, c->burst,
                 c->concurrency, c->timeout_ms, c->connect_timeout_ms, conf, 1, now);
    wh__lim_init(&d->smtp, "smtp", m->url, m->tls_verify, m->rate_per_min, m->burst,
                 m->concurrency, m->timeout_ms, m->connect_timeout_ms, conf, 1, now);
    d->evo.configured = d->evo.configured && e->api_key != NULL && e->api_key[0] != '\0';
    d->crm.configured = d->crm.configured && c->api_key != NULL && c->api_key[0] != '\0';
    if (conf->alert_urls.n > 0) {
        d->urls = calloc(conf->alert_urls.n, sizeof(*d->urls));
        if (d->urls == NULL)
            goto nomem;
        for (size_t i = 0; i < conf->alert_urls.n; i++) {
            char id[32], name[48];
            wh__url_id(conf->alert_urls.v[i], id, sizeof(id));
            snprintf(name, sizeof(name), "alert_%s", id);
            /* Alert URLs: the SMTP timeouts and TLS rule; a misconfigured one is only logged
             * (alerting about the alert channel would loop). */
            wh__lim_init(&d->urls[i], name, conf->alert_urls.v[i], m->tls_verify, WH__URL_RATE,
                         WH__URL_BURST, WH__URL_CONCURRENCY, m->timeout_ms, m->connect_timeout_ms,
                         conf, 0, now);
            d->nurls++;
        }
    }
    if (d->db_path == NULL || (d->thr = calloc(d->n, sizeof(*d->thr))) == NULL)
        goto nomem;

    int reset = wh_outbox_reset_inflight(store);
    if (reset > 0)
        wh_log(WH_LOG_INFO, "outbox rows in flight at the last stop are pending again", "{s:i}",
               "rows", reset);

    int rc = WH_OK;
    for (unsigned i = 0; i < d->n; i++) {
        wh__thr_t *t = &d->thr[i];
        t->d = d;
        t->index = i;
        t->rnd = (unsigned)now ^ (i * 2654435761u);
        pthread_mutex_init(&t->mu, NULL);
        pthread_mutex_init(&t->cmu, NULL);
        pthread_cond_init(&t->ccv, NULL);
        if ((t->multi = curl_multi_init()) == NULL) {
            snprintf(err, errlen, "cannot create a libcurl multi handle");
            rc = WH_ERR;
            break;
        }
        curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, 64L);
        if ((rc = wh_outbox_reader_open(&t->reader, db_path, err, errlen)) != WH_OK)
            break;
    }
    for (unsigned i = 0; rc == WH_OK && i < d->n; i++) {
        if (pthread_create(&d->thr[i].ctid, NULL, wh__commit_main, &d->thr[i]) != 0) {
            snprintf(err, errlen, "cannot start a deliverer thread");
            rc = WH_ERR;
            break;
        }
        d->thr[i].cstarted = 1;
        if (pthread_create(&d->thr[i].tid, NULL, wh__thr_main, &d->thr[i]) != 0) {
            snprintf(err, errlen, "cannot start a deliverer thread");
            rc = WH_ERR;
            break;
        }
        d->thr[i].started = 1;
    }
    if (rc != WH_OK) {
        atomic_store(&d->stop, 1);
        for (unsigned i = 0; i < d->n; i++) {
            wh__thr_t *t = &d->thr[i];
            if (t->started) {
                curl_multi_wakeup(t->multi);
                pthread_join(t->tid, NULL); /* its exit stops its commit thread */
            } else if (t->cstarted) {
                pthread_mutex_lock(&t->cmu);
                t->cstop = 1;
                pthread_cond_signal(&t->ccv);
                pthread_mutex_unlock(&t->cmu);
                pthread_join(t->ctid, NULL);
                t->cstarted = 0;
            }
        }
        wh__free(d);
        return rc;
    }
    wh_store_set_outbox_hook(store, wh__hook, d);
    wh_log(WH_LOG_INFO, "deliverers started", "{s:i,s:b,s:b,s:b,s:i,s:i}", "threads", (int)d->n,
           "evolution", d->evo.configured, "crm", d->crm.configured, "smtp", d->smtp.configured,
           "alert_emails", (int)conf->alert_emails.n, "alert_urls", (int)d->nurls);
    *out = d;
    return WH_OK;

nomem:
    snprintf(err, errlen, "out of memory");
    wh__free(d);
    return WH_ENOMEM;
}

void wh_deliverers_stop(wh_deliverers_t *d)
{
    if (d == NULL)
        return;
    wh_store_set_outbox_hook(d->store, NULL, NULL);
    /* The writer may hold the old hook for the batch it is writing: wait for that batch. */
    int brc = wh_outbox_barrier(d->store);
    if (brc != WH_OK && brc != WH_ESHUTDOWN)
        for (int i = 0; i < 50 && wh_outbox_barrier(d->store) == WH_EBUSY; i++)
            usleep(10000);
    atomic_store(&d->stop, 1);
    for (unsigned i = 0; i < d->n; i++)
        if (d->thr[i].started)
            curl_multi_wakeup(d->thr[i].multi);
    for (unsigned i = 0; i < d->n; i++)
        if (d->thr[i].started)
            pthread_join(d->thr[i].tid, NULL);
    wh__free(d);
}

int wh_deliverers_in_flight(wh_deliverers_t *d, int64_t id)
{
    if (d == NULL)
        return 0;
    int found = 0;
    for (unsigned i = 0; i < d->n && !found; i++) {
        wh__thr_t *t = &d->thr[i];
        pthread_mutex_lock(&t->mu);
        for (wh__job_t *j = t->jobs; j != NULL && !found; j = j->next)
            for (size_t k = 0; k < j->nrows && !found; k++)
                found = j->rows[k].id == id && !j->decided && !j->released;
        pthread_mutex_unlock(&t->mu);
    }
    return found;
}

static json_t *wh__lim_status(wh__lim_t *l)
{
    pthread_mutex_lock(&l->mu);
    json_t *o = json_pack("{s:s,s:i,s:i,s:b}", "state", wh_circuit_state_name(&l->circuit),
                          "failures", l->circuit.failures, "in_flight", l->in_flight,
                          "configured", l->configured);
    if (o != NULL && l->circuit.state == WH_CIRCUIT_OPEN)
        json_object_set_new(o, "open_until", json_integer(l->circuit.open_until));
    pthread_mutex_unlock(&l->mu);
    return o;
}

json_t *wh_deliverers_status(wh_deliverers_t *d)
{
    if (d == NULL)
        return json_null();
    json_t *targets = json_object(), *circuits = json_object(), *paused = json_array();
    int inflight[WH__T_COUNT] = {0};
    for (unsigned i = 0; i < d->n; i++) {
        wh__thr_t *t = &d->thr[i];
        pthread_mutex_lock(&t->mu);
        for (int k = 0; k < WH__T_COUNT; k++)
            inflight[k] += t->njobs[k];
        for (size_t k = 0; k < t->ninst; k++)
            if (t->inst[k].paused)
                json_array_append_new(paused, json_string(t->inst[k].name));
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_lock(&d->mu);
    for (int k = 0; k < WH__T_COUNT; k++) {
        const json_t *c = json_object_get(d->counts, wh__tname[k]);
        json_object_set_new(
            targets, wh__tname[k],
            json_pack("{s:i,s:I,s:I,s:I,s:I}", "in_flight", inflight[k], "pending",
                      (json_int_t)json_integer_value(json_object_get(c, "pending")), "dead",
                      (json_int_t)json_integer_value(json_object_get(c, "dead")), "delivered",
                      (json_int_t)atomic_load(&d->delivered[k]), "failed",
                      (json_int_t)atomic_load(&d->failed[k])));
    }
    pthread_mutex_unlock(&d->mu);
    json_object_set_new(circuits, "evolution", wh__lim_status(&d->evo));
    json_object_set_new(circuits, "crm", wh__lim_status(&d->crm));
    json_object_set_new(circuits, "smtp", wh__lim_status(&d->smtp));
    for (size_t i = 0; i < d->nurls; i++)
        json_object_set_new(circuits, d->urls[i].name, wh__lim_status(&d->urls[i]));
    return json_pack("{s:i,s:o,s:o,s:o}", "threads", (int)d->n, "targets", targets, "circuits",
                     circuits, "paused_instances", paused);
}
