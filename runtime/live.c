/* The live event feed: a bounded cross-thread queue of accepted events, Server-Sent Events
 * streams on the admin loop (filters, heartbeat, per-client buffer cap, client cap, replay from
 * the store on Last-Event-ID, flow-controlled), and the filtered events listing. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <h2o.h>
#include <h2o/multithread.h>
#include <sqlite3.h>

#include "wahook/common.h"
#include "wahook/dashboard.h"
#include "wahook/live.h"
#include "wahook/log.h"

#define WH__IOV_MAX 64            /* chunks handed to one h2o_send */
#define WH__REPLAY_ROWS 200       /* rows per replay page at most */
#define WH__STALL_TICKS 4         /* heartbeats a write may stay pending before the cut */
#define WH__LIST_DEFAULT 50
#define WH__LIST_MAX 500

/* ---- small growable buffer ---------------------------------------------------------------- */

typedef struct wh__buf {
    char *p;
    size_t len, cap;
    int failed;
} wh__buf_t;

static void wh__buf_put(wh__buf_t *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void wh__buf_str(wh__buf_t *b, const char *s)
{
    wh__buf_put(b, s, strlen(s));
}

static void wh__buf_i64(wh__buf_t *b, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    wh__buf_put(b, tmp, (size_t)n);
}

/* Appends s as a JSON string literal, or null. */
static void wh__buf_jstr(wh__buf_t *b, const char *s)
{
    if (s == NULL) {
        wh__buf_str(b, "null");
        return;
    }
    wh__buf_put(b, "\"", 1);
    const char *run = s;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        const char *rep = NULL;
        if (*p == '"')
            rep = "\\\"";
        else if (*p == '\\')
            rep = "\\\\";
        else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            rep = esc;
        }
        if (rep != NULL) {
            wh__buf_put(b, run, (size_t)((const char *)p - run));
            wh__buf_str(b, rep);
            run = (const char *)p + 1;
        }
    }
    wh__buf_str(b, run);
    wh__buf_put(b, "\"", 1);
}

/* ---- filters ------------------------------------------------------------------------------ */

void wh_live_filter_clear(wh_live_filter_t *f)
{
    for (size_t i = 0; i < f->num_events; i++)
        free(f->events[i]);
    for (size_t i = 0; i < f->num_instances; i++)
        free(f->instances[i]);
    for (size_t i = 0; i < f->num_contacts; i++)
        free(f->contacts[i]);
    free(f->status);
    memset(f, 0, sizeof(*f));
}

static int wh__hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) ('+' is a space) into a new string; NULL for bad escapes or NUL. */
static char *wh__urldecode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < n ? wh__hexval(s[i + 1]) : -1;
            int lo = i + 2 < n ? wh__hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') {
            free(out);
            return NULL;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

static int wh__valid_event(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

static int wh__valid_instance(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 256)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

static int wh__valid_contact(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '@' || *s == '.' || *s == '_' || *s == '-' || *s == ':' || *s == '+'))
            return 0;
    return 1;
}

/* Decimal, 1 to 18 digits. */
static int wh__parse_num(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18)
        return 0;
    int64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return 1;
}

/* Adds the comma-separated values of v to list; 0 with err set on a bad value. */
static int wh__filter_add(char **list, size_t *num, const char *v, int (*valid)(const char *),
                          const char *name, char *err, size_t errlen)
{
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (n > 0) {
            if (*num >= WH_LIVE_MAX_FILTER) {
                snprintf(err, errlen, "too many values for %s (at most %d)", name,
                         WH_LIVE_MAX_FILTER);
                return 0;
            }
            char *one = strndup(p, n);
            if (one == NULL || !valid(one)) {
                free(one);
                snprintf(err, errlen, "invalid %s", name);
                return 0;
            }
            list[(*num)++] = one;
        }
        if (comma == NULL)
            return 1;
        p = comma + 1;
    }
}

int wh_live_filter_parse(wh_live_filter_t *f, const char *query, size_t len, int64_t *limit,
                         int64_t *before, int64_t *last_event_id, char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    if (limit != NULL)
        *limit = -1;
    if (before != NULL)
        *before = -1;
    if (last_event_id != NULL)
        *last_event_id = -1;
    size_t i = 0;
    while (query != NULL && i < len) {
        size_t end = i;
        while (end < len && query[end] != '&')
            end++;
        size_t eq = i;
        while (eq < end && query[eq] != '=')
            eq++;
        if (end == i) {
            i = end + 1;
            continue;
        }
        char *name = wh__urldecode(query + i, eq - i);
        char *value = eq < end ? wh__urldecode(query + eq + 1, end - eq - 1) : strdup("");
        int ok = 1;
        if (name == NULL || value == NULL) {
            snprintf(err, errlen, "malformed query string");
            ok = 0;
        } else if (strcmp(name, "event") == 0) {
            ok = wh__filter_add(f->events, &f->num_events, value, wh__valid_event, "event", err,
                                errlen);
        } else if (strcmp(name, "instance") == 0) {
            ok = wh__filter_add(f->instances, &f->num_instances, value, wh__valid_instance,
                                "instance", err, errlen);
        } else if (strcmp(name, "contact") == 0) {
            ok = wh__filter_add(f->contacts, &f->num_contacts, value, wh__valid_contact,
                                "contact", err, errlen);
        } else if (strcmp(name, "status") == 0 && limit != NULL) {
            static const char *const known[] = {"pending", "done", "dead", "failed"};
            ok = 0;
            for (size_t k = 0; k < WH_ARRAY_SIZE(known); k++)
                if (strcmp(value, known[k]) == 0)
                    ok = 1;
            if (ok && f->status == NULL) {
                f->status = value;
                value = NULL;
            } else {
                snprintf(err, errlen, "status must be one of pending, done, dead, failed");
                ok = 0;
            }
        } else if (strcmp(name, "limit") == 0 && limit != NULL) {
            ok = wh__parse_num(value, limit) && *limit >= 1 && *limit <= WH__LIST_MAX;
            if (!ok)
                snprintf(err, errlen, "limit must be an integer from 1 to %d", WH__LIST_MAX);
        } else if (strcmp(name, "before") == 0 && before != NULL) {
            ok = wh__parse_num(value, before) && *before >= 1;
            if (!ok)
                snprintf(err, errlen, "before must be a positive event id");
        } else if (strcmp(name, "last_event_id") == 0 && last_event_id != NULL) {
            ok = wh__parse_num(value, last_event_id);
            if (!ok)
                snprintf(err, errlen, "last_event_id must be an event id");
        } else {
            snprintf(err, errlen, "unknown query parameter: %.64s", name);
            ok = 0;
        }
        free(name);
        free(value);
        if (!ok)
            return WH_EINVAL;
        i = end + 1;
    }
    return WH_OK;
}

static int wh__in_list(char *const *list, size_t n, const char *s)
{
    if (n == 0)
        return 1;
    if (s == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

int wh_live_filter_match(const wh_live_filter_t *f, const char *event, const char *instance,
                         const char *contact)
{
    return wh__in_list(f->events, f->num_events, event) &&
           wh__in_list(f->instances, f->num_instances, instance) &&
           wh__in_list(f->contacts, f->num_contacts, contact);
}

static int wh__filter_copy(wh_live_filter_t *dst, const wh_live_filter_t *src)
{
    memset(dst, 0, sizeof(*dst));
    int ok = 1;
    for (size_t i = 0; i < src->num_events; i++)
        ok &= (dst->events[dst->num_events++] = strdup(src->events[i])) != NULL;
    for (size_t i = 0; i < src->num_instances; i++)
        ok &= (dst->instances[dst->num_instances++] = strdup(src->instances[i])) != NULL;
    for (size_t i = 0; i < src->num_contacts; i++)
        ok &= (dst->contacts[dst->num_contacts++] = strdup(src->contacts[i])) != NULL;
    if (src->status != NULL)
        ok &= (dst->status = strdup(src->status)) != NULL;
    if (!ok) {
        wh_live_filter_clear(dst);
        return WH_ENOMEM;
    }
    return WH_OK;
}

/* " AND col IN (?,…)" for each list; binds follow in the same order. */
static void wh__sql_in(wh__buf_t *b, const char *col, size_t n)
{
    if (n == 0)
        return;
    wh__buf_str(b, " AND ");
    wh__buf_str(b, col);
    wh__buf_str(b, " IN (");
    for (size_t i = 0; i < n; i++)
        wh__buf_str(b, i ? ",?" : "?");
    wh__buf_str(b, ")");
}

static void wh__sql_filters(wh__buf_t *b, const wh_live_filter_t *f)
{
    wh__sql_in(b, "event", f->num_events);
    wh__sql_in(b, "instance", f->num_instances);
    wh__sql_in(b, "contact_key", f->num_contacts);
    if (f->status != NULL) {
        if (strcmp(f->status, "failed") == 0)
            wh__buf_str(b, " AND status = 'pending' AND attempts > 0");
        else
            wh__buf_str(b, " AND status = ?");
    }
}

static int wh__sql_bind_filters(sqlite3_stmt *st, int idx, const wh_live_filter_t *f)
{
    for (size_t i = 0; i < f->num_events; i++)
        sqlite3_bind_text(st, idx++, f->events[i], -1, SQLITE_STATIC);
    for (size_t i = 0; i < f->num_instances; i++)
        sqlite3_bind_text(st, idx++, f->instances[i], -1, SQLITE_STATIC);
    for (size_t i = 0; i < f->num_contacts; i++)
        sqlite3_bind_text(st, idx++, f->contacts[i], -1, SQLITE_STATIC);
    if (f->status != NULL && strcmp(f->status, "failed") != 0)
        sqlite3_bind_text(st, idx++, f->status, -1, SQLITE_STATIC);
    return idx;
}

/* ---- SSE formatting ----------------------------------------------------------------------- */

char *wh_live_format(int64_t id, int64_t received_at, const char *instance, const char *event,
                     const char *contact, const char *body, size_t body_len, size_t max_body,
                     size_t *len)
{
    wh__buf_t b = {0};
    wh__buf_str(&b, "id: ");
    wh__buf_i64(&b, id);
    wh__buf_str(&b, "\ndata: {\"id\":");
    wh__buf_i64(&b, id);
    wh__buf_str(&b, ",\"received_at\":");
    wh__buf_i64(&b, received_at);
    wh__buf_str(&b, ",\"instance\":");
    wh__buf_jstr(&b, instance != NULL ? instance : "");
    wh__buf_str(&b, ",\"event\":");
    wh__buf_jstr(&b, event != NULL ? event : "");
    wh__buf_str(&b, ",\"contact_key\":");
    wh__buf_jstr(&b, contact != NULL && contact[0] ? contact : NULL);
    if (body != NULL && body_len > 0 && body_len <= max_body) {
        wh__buf_str(&b, ",\"body\":");
        size_t start = b.len;
        wh__buf_put(&b, body, body_len);
        /* One data line per message: a stored body is compact JSON, where a raw line break can
         * only be insignificant whitespace. */
        for (size_t i = start; !b.failed && i < b.len; i++)
            if (b.p[i] == '\n' || b.p[i] == '\r' || b.p[i] == '\0')
                b.p[i] = ' ';
    } else {
        wh__buf_str(&b, ",\"body\":null");
        if (body_len > 0)
            wh__buf_str(&b, ",\"body_omitted\":true");
    }
    wh__buf_str(&b, "}\n\n");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ---- chunks and per-client rings ---------------------------------------------------------- */

/* One formatted SSE message shared by the clients it is queued for. refs are touched on the
 * admin loop only; static chunks (refs < 0) are never freed. */
typedef struct wh__chunk {
    int refs;
    int64_t id; /* 0 for control messages */
    size_t len;
    const char *ptr;        /* data, or a static text */
    struct wh__chunk *next; /* replay pages */
    char data[];
} wh__chunk_t;

static wh__chunk_t *wh__chunk_new(int64_t id, const char *data, size_t len)
{
    wh__chunk_t *c = malloc(sizeof(*c) + len + 1);
    if (c == NULL)
        return NULL;
    c->refs = 1;
    c->id = id;
    c->len = len;
    c->ptr = c->data;
    c->next = NULL;
    memcpy(c->data, data, len);
    c->data[len] = '\0';
    return c;
}

/* A chunk around text (malloc'd, taken over: freed with the chunk, also on failure). */
static wh__chunk_t *wh__chunk_take(int64_t id, char *text, size_t len)
{
    if (text == NULL)
        return NULL;
    wh__chunk_t *c = malloc(sizeof(*c));
    if (c == NULL) {
        free(text);
        return NULL;
    }
    c->refs = 1;
    c->id = id;
    c->len = len;
    c->ptr = text;
    c->next = NULL;
    return c;
}

static void wh__chunk_unref(wh__chunk_t *c)
{
    if (c != NULL && c->refs > 0 && --c->refs == 0) {
        if (c->ptr != c->data)
            free((char *)c->ptr);
        free(c);
    }
}

typedef struct wh__ring {
    wh__chunk_t **v;
    size_t head, len, cap;
    size_t bytes;
} wh__ring_t;

static int wh__ring_push(wh__ring_t *r, wh__chunk_t *c)
{
    if (r->len == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        wh__chunk_t **v = malloc(cap * sizeof(*v));
        if (v == NULL)
            return WH_ENOMEM;
        for (size_t i = 0; i < r->len; i++)
            v[i] = r->v[(r->head + i) % r->cap];
        free(r->v);
        r->v = v;
        r->head = 0;
        r->cap = cap;
    }
    r->v[(r->head + r->len) % r->cap] = c;
    r->len++;
    r->bytes += c->len;
    if (c->refs > 0)
        c->refs++;
    return WH_OK;
}

/* Takes the oldest chunk with its reference. */
static wh__chunk_t *wh__ring_pop(wh__ring_t *r)
{
    if (r->len == 0)
        return NULL;
    wh__chunk_t *c = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->len--;
    r->bytes -= c->len;
    return c;
}

static void wh__ring_clear(wh__ring_t *r)
{
    wh__chunk_t *c;
    while ((c = wh__ring_pop(r)) != NULL)
        wh__chunk_unref(c);
}

static void wh__ring_free(wh__ring_t *r)
{
    wh__ring_clear(r);
    free(r->v);
    memset(r, 0, sizeof(*r));
}

static const char wh__hello_text[] = "retry: 3000\n: connected\n\n";
static const char wh__heartbeat_text[] = ": heartbeat\n\n";
static wh__chunk_t wh__hello = {-1, 0, sizeof(wh__hello_text) - 1, wh__hello_text, NULL};
static wh__chunk_t wh__heartbeat = {-1, 0, sizeof(wh__heartbeat_text) - 1, wh__heartbeat_text,
                                    NULL};

/* ---- the feed ----------------------------------------------------------------------------- */

enum { WH__MSG_EVENT = 1, WH__MSG_REPLAY = 2, WH__MSG_SHUTDOWN = 3 };

typedef struct wh__msg {
    h2o_multithread_message_t super;
    int kind;
    /* WH__MSG_EVENT: strings point into data */
    int64_t id, received_at;
    const char *instance, *event, *contact, *body;
    size_t body_len;
    /* WH__MSG_REPLAY */
    uint64_t cid;
    wh__chunk_t *chunks;
    size_t num_chunks;
    int64_t cursor;
    int more, failed;
    char data[];
} wh__msg_t;

typedef struct wh__replay_job {
    struct wh__replay_job *next;
    uint64_t cid;
    int64_t after;
    wh_live_filter_t filter;
} wh__replay_job_t;

typedef struct wh__client {
    h2o_generator_t gen; /* first: the generator pointer is the client */
    wh_live_t *live;
    h2o_req_t *req;
    uint64_t cid;
    h2o_linklist_t link;
    wh_live_filter_t filter;
    wh__ring_t q;    /* to send */
    wh__ring_t held; /* live events that arrived while replaying */
    wh__chunk_t *inflight[WH__IOV_MAX];
    size_t ninflight;
    int sending;  /* an h2o_send is in flight: wait for proceed */
    int closing;  /* finish the response once q is empty */
    int finished; /* the final send went out: touch nothing */
    int cut;      /* too slow: the connection is being torn down */
    int stall;    /* heartbeats seen while the same write stayed pending */
    uint64_t send_turn; /* the feed's turn when the pending write was issued */
    int replaying, replay_job;
    int64_t replay_cursor;
} wh__client_t;

struct wh_live {
    wh_live_opts_t o;
    char *db_path;
    struct wh_dashboard *dash; /* session check of the module; NULL: token only */
    atomic_int nclients;
    atomic_int stopped;
    atomic_size_t queued;
    atomic_uint_fast64_t published, dropped, slow, rejected, replayed;
    /* admin loop thread only */
    int attached;
    h2o_loop_t *loop;
    h2o_multithread_receiver_t receiver;
    h2o_timeout_t hb_timeout;
    h2o_timeout_entry_t hb_entry;
    h2o_linklist_t clients;
    uint64_t next_cid;
    uint64_t dropped_notified;
    uint64_t turn; /* counts receiver and heartbeat callbacks: the loop's progress */
    int closing_all;
    /* replay thread */
    pthread_t tid;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    wh__replay_job_t *jobs_head, *jobs_tail;
    int stop;
};

static void wh__client_flush(wh__client_t *c);

static void wh__client_release_inflight(wh__client_t *c)
{
    for (size_t i = 0; i < c->ninflight; i++)
        wh__chunk_unref(c->inflight[i]);
    c->ninflight = 0;
}

/* Runs when h2o frees the request (any reason): the only place a client leaves the list. */
static void wh__client_dispose(void *p)
{
    wh__client_t *c = p;
    h2o_linklist_unlink(&c->link);
    atomic_fetch_sub(&c->live->nclients, 1);
    wh__client_release_inflight(c);
    wh__ring_free(&c->q);
    wh__ring_free(&c->held);
    wh_live_filter_clear(&c->filter);
}

static void wh__client_stop(h2o_generator_t *g, h2o_req_t *req)
{
    wh__client_t *c = (wh__client_t *)g;
    c->finished = 1; /* the request is going away: no more sends */
}

/* A client that cannot keep up: its socket is shut down, so the pending write fails and h2o
 * closes the connection and frees the request (and with it the client). */
static void wh__client_cut(wh__client_t *c, const char *why)
{
    if (c->cut || c->finished)
        return;
    c->cut = 1;
    atomic_fetch_add(&c->live->slow, 1);
    wh__ring_clear(&c->q);
    wh__ring_clear(&c->held);
    wh_log(WH_LOG_INFO, "event stream cut off", "{s:s}", "reason", why);
    h2o_socket_t *sock = c->req->conn->callbacks->get_socket != NULL
                             ? c->req->conn->callbacks->get_socket(c->req->conn)
                             : NULL;
    if (sock != NULL)
        shutdown(h2o_socket_get_fd(sock), SHUT_RDWR);
    if (!c->sending) {
        c->finished = 1;
        h2o_send(c->req, NULL, 0, H2O_SEND_STATE_ERROR);
    }
}

/* Queues a chunk for c. live: counts against the client's buffer (replay pages do not: they
 * are requested only when the client has drained the previous one). A client is slow when more
 * than its buffer waits while a write has stayed pending for two loop turns (a write that
 * completes is acknowledged within the turn): then it is cut off. A burst to an idle client is
 * sent at once instead; whatever happens, four buffers' worth is the most a client may hold. */
static void wh__client_push(wh__client_t *c, wh__chunk_t *ch, int live)
{
    if (c->cut || c->closing || c->finished)
        return;
    wh_live_t *l = c->live;
    if (live) {
        size_t limit = l->o.client_buffer;
        if (c->q.bytes + c->held.bytes + ch->len > limit && !c->sending && !c->replaying)
            wh__client_flush(c);
        size_t queued = c->q.bytes + c->held.bytes + ch->len;
        if (queued > limit &&
            ((c->sending && l->turn - c->send_turn >= 2) || queued > 4 * limit)) {
            wh__client_cut(c, "buffer full");
            return;
        }
    }
    wh__ring_t *r = live && c->replaying ? &c->held : &c->q;
    if (wh__ring_push(r, ch) != WH_OK)
        wh__client_cut(c, "out of memory");
}

static void wh__replay_submit(wh__client_t *c)
{
    wh_live_t *l = c->live;
    wh__replay_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL || wh__filter_copy(&job->filter, &c->filter) != WH_OK) {
        free(job);
        c->replaying = 0; /* carry on live only */
        return;
    }
    job->cid = c->cid;
    job->after = c->replay_cursor;
    c->replay_job = 1;
    pthread_mutex_lock(&l->mu);
    if (l->jobs_tail != NULL)
        l->jobs_tail->next = job;
    else
        l->jobs_head = job;
    l->jobs_tail = job;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void wh__client_flush(wh__client_t *c)
{
    if (c->sending || c->cut || c->finished)
        return;
    if (c->q.len == 0) {
        if (c->closing) {
            c->finished = 1;
            h2o_send(c->req, NULL, 0, H2O_SEND_STATE_FINAL); /* may free c */
            return;
        }
        if (c->replaying && !c->replay_job)
            wh__replay_submit(c);
        return;
    }
    h2o_iovec_t bufs[WH__IOV_MAX];
    size_t n = 0;
    while (n < WH__IOV_MAX && c->q.len > 0) {
        wh__chunk_t *ch = wh__ring_pop(&c->q);
        c->inflight[n] = ch;
        bufs[n] = h2o_iovec_init(ch->ptr, ch->len);
        n++;
    }
    c->ninflight = n;
    c->sending = 1;
    c->stall = 0;
    c->send_turn = c->live->turn;
    h2o_send(c->req, bufs, n, H2O_SEND_STATE_IN_PROGRESS);
}

static void wh__client_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    wh__client_t *c = (wh__client_t *)g;
    wh__client_release_inflight(c);
    c->sending = 0;
    c->stall = 0;
    wh__client_flush(c);
}

/* Calls fn on every client; fn may end up freeing the client it is given. */
static void wh__each_client(wh_live_t *l, void (*fn)(wh__client_t *c, void *arg), void *arg)
{
    h2o_linklist_t *node = l->clients.next;
    while (node != &l->clients) {
        h2o_linklist_t *next = node->next;
        fn(H2O_STRUCT_FROM_MEMBER(wh__client_t, link, node), arg);
        node = next;
    }
}

static void wh__flush_one(wh__client_t *c, void *arg)
{
    wh__client_flush(c);
}

static void wh__push_event(wh__client_t *c, void *arg)
{
    const wh__msg_t *m = ((void **)arg)[0];
    wh__chunk_t *ch = ((void **)arg)[1];
    if (wh_live_filter_match(&c->filter, m->event, m->instance, m->contact))
        wh__client_push(c, ch, 1);
}

static void wh__push_control(wh__client_t *c, void *arg)
{
    wh__client_push(c, arg, 1);
}

static void wh__close_one(wh__client_t *c, void *arg)
{
    if (c->finished || c->cut)
        return;
    c->closing = 1;
    c->replaying = 0;
    wh__ring_clear(&c->q);
    wh__ring_clear(&c->held);
    wh__client_flush(c);
}

static wh__client_t *wh__find_client(wh_live_t *l, uint64_t cid)
{
    for (h2o_linklist_t *n = l->clients.next; n != &l->clients; n = n->next) {
        wh__client_t *c = H2O_STRUCT_FROM_MEMBER(wh__client_t, link, n);
        if (c->cid == cid)
            return c;
    }
    return NULL;
}

static void wh__free_chunk_list(wh__chunk_t *ch)
{
    while (ch != NULL) {
        wh__chunk_t *next = ch->next;
        wh__chunk_unref(ch);
        ch = next;
    }
}

static void wh__on_replay(wh_live_t *l, wh__msg_t *m)
{
    wh__client_t *c = wh__find_client(l, m->cid);
    if (c == NULL || c->cut || c->finished || c->closing || !c->replaying) {
        wh__free_chunk_list(m->chunks);
        return;
    }
    c->replay_job = 0;
    for (wh__chunk_t *ch = m->chunks; ch != NULL;) {
        wh__chunk_t *next = ch->next;
        wh__client_push(c, ch, 0);
        wh__chunk_unref(ch);
        ch = next;
    }
    atomic_fetch_add(&l->replayed, m->num_chunks);
    if (m->cursor > c->replay_cursor)
        c->replay_cursor = m->cursor;
    if (m->failed || !m->more) {
        /* Caught up: what arrived live meanwhile follows, without what the replay sent. */
        c->replaying = 0;
        wh__chunk_t *ch;
        while ((ch = wh__ring_pop(&c->held)) != NULL) {
            if (ch->id == 0 || ch->id > c->replay_cursor)
                wh__client_push(c, ch, 0);
            wh__chunk_unref(ch);
        }
    }
}

static void wh__on_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    wh_live_t *l = H2O_STRUCT_FROM_MEMBER(wh_live_t, receiver, receiver);
    l->turn++;
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *mm =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&mm->link);
        wh__msg_t *m = H2O_STRUCT_FROM_MEMBER(wh__msg_t, super, mm);
        if (m->kind == WH__MSG_EVENT) {
            atomic_fetch_sub(&l->queued, 1);
            size_t len = 0;
            wh__chunk_t *ch = NULL;
            /* Formatted once, shared by every stream it is queued for. */
            if (!l->closing_all && !h2o_linklist_is_empty(&l->clients)) {
                char *text = wh_live_format(m->id, m->received_at, m->instance, m->event,
                                            m->contact, m->body, m->body_len, l->o.max_body,
                                            &len);
                ch = wh__chunk_take(m->id, text, len);
            }
            if (ch != NULL) {
                void *arg[2] = {m, ch};
                wh__each_client(l, wh__push_event, arg);
                wh__chunk_unref(ch);
            }
        } else if (m->kind == WH__MSG_REPLAY) {
            wh__on_replay(l, m);
        } else if (m->kind == WH__MSG_SHUTDOWN) {
            l->closing_all = 1;
            if (h2o_timeout_is_linked(&l->hb_entry))
                h2o_timeout_unlink(&l->hb_entry);
            wh__each_client(l, wh__close_one, NULL);
        }
        free(m);
    }
    uint64_t dropped = atomic_load(&l->dropped);
    if (dropped != l->dropped_notified && !l->closing_all) {
        char text[96];
        int n = snprintf(text, sizeof(text), "event: dropped\ndata: {\"dropped\":%" PRIu64 "}\n\n",
                         dropped - l->dropped_notified);
        l->dropped_notified = dropped;
        wh__chunk_t *ch = wh__chunk_new(0, text, (size_t)n);
        if (ch != NULL) {
            wh__each_client(l, wh__push_control, ch);
            wh__chunk_unref(ch);
        }
    }
    wh__each_client(l, wh__flush_one, NULL);
}

static void wh__heartbeat_one(wh__client_t *c, void *arg)
{
    if (c->cut || c->finished || c->closing)
        return;
    if (c->sending && ++c->stall >= WH__STALL_TICKS) {
        wh__client_cut(c, "write stalled");
        return;
    }
    wh__client_push(c, &wh__heartbeat, 1);
    wh__client_flush(c);
}

static void wh__on_heartbeat(h2o_timeout_entry_t *entry)
{
    wh_live_t *l = H2O_STRUCT_FROM_MEMBER(wh_live_t, hb_entry, entry);
    l->turn++;
    wh__each_client(l, wh__heartbeat_one, NULL);
    if (!l->closing_all)
        h2o_timeout_link(l->loop, &l->hb_timeout, &l->hb_entry);
}

/* ---- replay thread ------------------------------------------------------------------------ */

static void wh__replay_run(wh_live_t *l, sqlite3 **db, wh__replay_job_t *job, wh__msg_t *m)
{
    m->cursor = job->after;
    if (*db == NULL) {
        if (sqlite3_open_v2(l->db_path, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK) {
            sqlite3_close(*db);
            *db = NULL;
            m->failed = 1;
            return;
        }
        sqlite3_busy_timeout(*db, 2000);
    }
    wh__buf_t sql = {0};
    wh__buf_str(&sql, "SELECT id, received_at, instance, event, contact_key, body FROM events"
                      " WHERE id > ?");
    wh__sql_filters(&sql, &job->filter);
    wh__buf_str(&sql, " ORDER BY id LIMIT ?");
    sqlite3_stmt *st = NULL;
    if (sql.failed || sqlite3_prepare_v2(*db, sql.p, -1, &st, NULL) != SQLITE_OK) {
        wh_log(WH_LOG_WARN, "event replay failed", "{s:s}", "error",
               sql.failed ? "out of memory" : sqlite3_errmsg(*db));
        free(sql.p);
        m->failed = 1;
        return;
    }
    free(sql.p);
    sqlite3_bind_int64(st, 1, job->after);
    int idx = wh__sql_bind_filters(st, 2, &job->filter);
    sqlite3_bind_int(st, idx, WH__REPLAY_ROWS);
    size_t bytes = 0, rows = 0;
    wh__chunk_t **tail = &m->chunks;
    int rc;
    /* A page fills at most half a client buffer, so a page never cuts the client off. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        const char *body = (const char *)sqlite3_column_text(st, 5);
        size_t len;
        char *text = wh_live_format(id, sqlite3_column_int64(st, 1),
                                    (const char *)sqlite3_column_text(st, 2),
                                    (const char *)sqlite3_column_text(st, 3),
                                    (const char *)sqlite3_column_text(st, 4), body,
                                    body != NULL ? (size_t)sqlite3_column_bytes(st, 5) : 0,
                                    l->o.max_body, &len);
        wh__chunk_t *ch = wh__chunk_take(id, text, len);
        if (ch == NULL) {
            m->failed = 1;
            break;
        }
        *tail = ch;
        tail = &ch->next;
        m->num_chunks++;
        m->cursor = id;
        rows++;
        bytes += len;
        if (bytes >= l->o.client_buffer / 2)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        wh_log(WH_LOG_WARN, "event replay failed", "{s:s}", "error", sqlite3_errmsg(*db));
        m->failed = 1;
    }
    m->more = !m->failed && (rc == SQLITE_ROW || rows == WH__REPLAY_ROWS);
    sqlite3_finalize(st);
}

static void *wh__replay_main(void *arg)
{
    wh_live_t *l = arg;
    sqlite3 *db = NULL;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->jobs_head == NULL)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop)
            break;
        wh__replay_job_t *job = l->jobs_head;
        l->jobs_head = job->next;
        if (l->jobs_head == NULL)
            l->jobs_tail = NULL;
        pthread_mutex_unlock(&l->mu);
        wh__msg_t *m = calloc(1, sizeof(*m));
        if (m != NULL) {
            m->kind = WH__MSG_REPLAY;
            m->cid = job->cid;
            wh__replay_run(l, &db, job, m);
            h2o_multithread_send_message(&l->receiver, &m->super);
        }
        wh_live_filter_clear(&job->filter);
        free(job);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    sqlite3_close(db);
    return NULL;
}

/* ---- public API --------------------------------------------------------------------------- */

wh_live_t *wh_live_new(const wh_live_opts_t *opts)
{
    wh_live_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->o = *opts;
    if (l->o.queue_max == 0)
        l->o.queue_max = 4096;
    if (l->o.max_clients == 0)
        l->o.max_clients = 32;
    if (l->o.client_buffer == 0)
        l->o.client_buffer = 256 * 1024;
    if (l->o.heartbeat_ms <= 0)
        l->o.heartbeat_ms = 15000;
    if (l->o.max_body == 0)
        l->o.max_body = 64 * 1024;
    l->db_path = strdup(opts->db_path != NULL ? opts->db_path : "");
    l->o.db_path = l->db_path;
    h2o_linklist_init_anchor(&l->clients);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    /* The replay thread takes no signals: the server waits for them in one thread, and a
     * SIGTERM delivered here would end the process without a graceful stop. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int started = l->db_path != NULL && pthread_create(&l->tid, NULL, wh__replay_main, l) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!started) {
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        free(l->db_path);
        free(l);
        return NULL;
    }
    l->thread_started = 1;
    return l;
}

void wh_live_publish(wh_live_t *l, int64_t id, int64_t received_at, const char *instance,
                     const char *event, const char *contact, const char *body, size_t body_len)
{
    /* Nobody watching is the common case: it costs two atomic loads. */
    if (l == NULL || atomic_load(&l->nclients) == 0 || atomic_load(&l->stopped))
        return;
    if (atomic_fetch_add(&l->queued, 1) >= l->o.queue_max) {
        atomic_fetch_sub(&l->queued, 1);
        atomic_fetch_add(&l->dropped, 1);
        return;
    }
    if (instance == NULL)
        instance = "";
    if (event == NULL)
        event = "";
    size_t il = strlen(instance) + 1, el = strlen(event) + 1;
    size_t cl = contact != NULL ? strlen(contact) + 1 : 0;
    size_t bl = body != NULL && body_len <= l->o.max_body ? body_len + 1 : 0;
    wh__msg_t *m = malloc(sizeof(*m) + il + el + cl + bl);
    if (m == NULL) {
        atomic_fetch_sub(&l->queued, 1);
        atomic_fetch_add(&l->dropped, 1);
        return;
    }
    memset(m, 0, sizeof(*m));
    m->kind = WH__MSG_EVENT;
    m->id = id;
    m->received_at = received_at;
    char *p = m->data;
    memcpy(p, instance, il);
    m->instance = p;
    p += il;
    memcpy(p, event, el);
    m->event = p;
    p += el;
    if (cl > 0) {
        memcpy(p, contact, cl);
        m->contact = p;
        p += cl;
    }
    m->body_len = body != NULL ? body_len : 0;
    if (bl > 0) {
        memcpy(p, body, body_len);
        p[body_len] = '\0';
        m->body = p;
    }
    atomic_fetch_add(&l->published, 1);
    h2o_multithread_send_message(&l->receiver, &m->super);
}

int wh_live_watched(const wh_live_t *l)
{
    return l != NULL && atomic_load(&((wh_live_t *)l)->nclients) > 0 &&
           !atomic_load(&((wh_live_t *)l)->stopped);
}

void wh_live_shutdown(wh_live_t *l)
{
    if (l == NULL || atomic_exchange(&l->stopped, 1))
        return;
    /* Attached exactly when a stream was ever opened; then the receiver is registered. The
     * counter is the published gate: a loop that never served a stream has nothing to end. */
    if (atomic_load(&l->nclients) == 0)
        return;
    wh__msg_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return;
    m->kind = WH__MSG_SHUTDOWN;
    h2o_multithread_send_message(&l->receiver, &m->super);
}

void wh_live_free(wh_live_t *l)
{
    if (l == NULL)
        return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->tid, NULL);
    }
    while (l->jobs_head != NULL) {
        wh__replay_job_t *j = l->jobs_head;
        l->jobs_head = j->next;
        wh_live_filter_clear(&j->filter);
        free(j);
    }
    if (l->attached) {
        /* The loop has stopped: whatever is still queued for it is dropped here. */
        while (!h2o_linklist_is_empty(&l->receiver._messages)) {
            h2o_multithread_message_t *mm = H2O_STRUCT_FROM_MEMBER(
                h2o_multithread_message_t, link, l->receiver._messages.next);
            h2o_linklist_unlink(&mm->link);
            wh__msg_t *m = H2O_STRUCT_FROM_MEMBER(wh__msg_t, super, mm);
            if (m->kind == WH__MSG_REPLAY)
                wh__free_chunk_list(m->chunks);
            free(m);
        }
        h2o_multithread_unregister_receiver(l->receiver.queue, &l->receiver);
        if (h2o_timeout_is_linked(&l->hb_entry))
            h2o_timeout_unlink(&l->hb_entry);
        h2o_timeout_dispose(l->loop, &l->hb_timeout);
        /* Streams whose request was never freed (the loop stopped under them) stay with their
         * request pools; detach them so nothing points here. */
        while (!h2o_linklist_is_empty(&l->clients))
            h2o_linklist_unlink(l->clients.next);
    }
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->db_path);
    free(l);
}

json_t *wh_live_stats(wh_live_t *l)
{
    if (l == NULL)
        return json_object();
    return json_pack("{s:i,s:I,s:I,s:I,s:I,s:I}", "clients", atomic_load(&l->nclients),
                     "published", (json_int_t)atomic_load(&l->published), "dropped",
                     (json_int_t)atomic_load(&l->dropped), "slow_disconnects",
                     (json_int_t)atomic_load(&l->slow), "rejected",
                     (json_int_t)atomic_load(&l->rejected), "replayed",
                     (json_int_t)atomic_load(&l->replayed));
}

/* ---- HTTP: the stream --------------------------------------------------------------------- */

static void wh__attach(wh_live_t *l, const wh_admin_env_t *env)
{
    l->loop = env->admin_loop;
    h2o_multithread_register_receiver(env->admin_queue, &l->receiver, wh__on_messages);
    h2o_timeout_init(l->loop, &l->hb_timeout, (uint64_t)l->o.heartbeat_ms);
    l->hb_entry.cb = wh__on_heartbeat;
    h2o_timeout_link(l->loop, &l->hb_timeout, &l->hb_entry);
    l->attached = 1;
}

static void wh__respond_busy(h2o_req_t *req, const char *msg)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("5"));
    wh_admin_respond_error(req, 503, msg);
}

/* Last-Event-ID header (what EventSource sends when it reconnects) wins over the query. */
static int64_t wh__last_event_id(h2o_req_t *req, int64_t from_query, int *bad)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("last-event-id"), -1);
    if (i < 0)
        return from_query;
    h2o_iovec_t v = req->headers.entries[i].value;
    char tmp[24];
    int64_t id;
    if (v.len == 0)
        return from_query;
    if (v.len >= sizeof(tmp)) {
        *bad = 1;
        return -1;
    }
    memcpy(tmp, v.base, v.len);
    tmp[v.len] = '\0';
    if (!wh__parse_num(tmp, &id)) {
        *bad = 1;
        return -1;
    }
    return id;
}

static void wh__serve_stream(wh_live_t *l, const wh_admin_env_t *env, h2o_req_t *req)
{
    wh_live_filter_t f;
    char err[160];
    int64_t last = -1;
    size_t qlen = req->query_at != SIZE_MAX ? req->path.len - req->query_at - 1 : 0;
    const char *q = req->query_at != SIZE_MAX ? req->path.base + req->query_at + 1 : NULL;
    if (wh_live_filter_parse(&f, q, qlen, NULL, NULL, &last, err, sizeof(err)) != WH_OK) {
        wh_live_filter_clear(&f);
        wh_admin_respond_error(req, 400, err);
        return;
    }
    int bad = 0;
    last = wh__last_event_id(req, last, &bad);
    if (bad) {
        wh_live_filter_clear(&f);
        wh_admin_respond_error(req, 400, "Last-Event-ID must be an event id");
        return;
    }
    if (atomic_load(&l->stopped) || env->admin_loop == NULL || env->admin_queue == NULL) {
        wh_live_filter_clear(&f);
        wh__respond_busy(req, "shutting down");
        return;
    }
    if ((size_t)atomic_load(&l->nclients) >= l->o.max_clients) {
        wh_live_filter_clear(&f);
        atomic_fetch_add(&l->rejected, 1);
        wh__respond_busy(req, "too many event streams");
        return;
    }
    if (!l->attached)
        wh__attach(l, env);
    wh__client_t *c = h2o_mem_alloc_shared(&req->pool, sizeof(*c), wh__client_dispose);
    memset(c, 0, sizeof(*c));
    c->gen.proceed = wh__client_proceed;
    c->gen.stop = wh__client_stop;
    c->live = l;
    c->req = req;
    c->cid = ++l->next_cid;
    c->filter = f;
    h2o_linklist_insert(&l->clients, &c->link);
    atomic_fetch_add(&l->nclients, 1);
    if (last >= 0) {
        c->replaying = 1;
        c->replay_cursor = last;
    }

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream; charset=utf-8"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL,
                          H2O_STRLIT("no"));
    /* A stream is the connection's last response. */
    req->http1_is_persistent = 0;
    h2o_start_response(req, &c->gen);
    wh__ring_push(&c->q, &wh__hello); /* static: cannot fail once the ring has room */
    if (c->q.len == 0) {
        c->finished = 1;
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    wh__client_flush(c);
}

/* ---- HTTP: the listing -------------------------------------------------------------------- */

typedef struct wh__list_job {
    char *db_path;
    wh_live_filter_t filter;
    int64_t limit, before;
} wh__list_job_t;

static void wh__reply_json(wh_admin_reply_t *reply, int status, json_t *obj)
{
    reply->status = status;
    reply->content_type = NULL;
    reply->body = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    if (reply->body == NULL) {
        reply->status = 500;
        reply->body = strdup("{\"error\":\"out of memory\"}");
    }
    reply->body_len = 0;
    json_decref(obj);
}

static const char *wh__col(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static void wh__list_run(void *arg, wh_admin_reply_t *reply)
{
    wh__list_job_t *job = arg;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    json_t *events = json_array();
    wh__buf_t sql = {0};
    if (sqlite3_open_v2(job->db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, 5000);
    wh__buf_str(&sql, "SELECT id, received_at, instance, event, dedup_id, contact_key, status,"
                      " attempts, last_error, script_version, processed_at, next_attempt_at, body"
                      " FROM events WHERE id < ?");
    wh__sql_filters(&sql, &job->filter);
    wh__buf_str(&sql, " ORDER BY id DESC LIMIT ?");
    if (sql.failed || sqlite3_prepare_v2(db, sql.p, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, job->before > 0 ? job->before : INT64_MAX);
    int idx = wh__sql_bind_filters(st, 2, &job->filter);
    sqlite3_bind_int64(st, idx, job->limit);
    int rc;
    int64_t last = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_error_t jerr;
        json_t *body = wh__col(st, 12) != NULL ? json_loads(wh__col(st, 12), 0, &jerr) : NULL;
        last = sqlite3_column_int64(st, 0);
        json_t *row = json_pack(
            "{s:I,s:I,s:s,s:s,s:s,s:s?,s:s,s:i,s:s?,s:s?,s:I,s:I,s:o?}", "id", (json_int_t)last,
            "received_at", (json_int_t)sqlite3_column_int64(st, 1), "instance", wh__col(st, 2),
            "event", wh__col(st, 3), "dedup_id", wh__col(st, 4), "contact_key", wh__col(st, 5),
            "status", wh__col(st, 6), "attempts", sqlite3_column_int(st, 7), "last_error",
            wh__col(st, 8), "script_version", wh__col(st, 9), "processed_at",
            (json_int_t)sqlite3_column_int64(st, 10), "next_attempt_at",
            (json_int_t)sqlite3_column_int64(st, 11), "body", body);
        if (row == NULL || json_array_append_new(events, row) != 0)
            goto fail;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    json_t *out = json_pack("{s:o}", "events", events);
    events = NULL;
    if (out != NULL && (int64_t)json_array_size(json_object_get(out, "events")) == job->limit)
        json_object_set_new(out, "next_before", json_integer(last));
    else if (out != NULL)
        json_object_set_new(out, "next_before", json_null());
    wh__reply_json(reply, 200, out);
    goto done;
fail:
    wh_log(WH_LOG_WARN, "events listing failed", "{s:s}", "error",
           db != NULL ? sqlite3_errmsg(db) : "cannot open the store");
    wh__reply_json(reply, 503, json_pack("{s:s}", "error", "cannot read the store"));
done:
    json_decref(events);
    free(sql.p);
    sqlite3_finalize(st);
    sqlite3_close(db);
    wh_live_filter_clear(&job->filter);
    free(job->db_path);
    free(job);
}

static void wh__serve_list(wh_live_t *l, h2o_req_t *req)
{
    wh__list_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        wh_admin_respond_error(req, 503, "out of memory");
        return;
    }
    char err[160];
    size_t qlen = req->query_at != SIZE_MAX ? req->path.len - req->query_at - 1 : 0;
    const char *q = req->query_at != SIZE_MAX ? req->path.base + req->query_at + 1 : NULL;
    if (wh_live_filter_parse(&job->filter, q, qlen, &job->limit, &job->before, NULL, err,
                             sizeof(err)) != WH_OK) {
        wh_live_filter_clear(&job->filter);
        free(job);
        wh_admin_respond_error(req, 400, err);
        return;
    }
    if (job->limit < 0)
        job->limit = WH__LIST_DEFAULT;
    job->db_path = strdup(l->db_path);
    if (job->db_path == NULL || wh_admin_defer(req, wh__list_run, job) != WH_OK) {
        wh_live_filter_clear(&job->filter);
        free(job->db_path);
        free(job);
        wh__respond_busy(req, "cannot start the listing");
    }
}

/* ---- the module --------------------------------------------------------------------------- */

static int wh__live_serve(void *self, const wh_admin_env_t *env, h2o_req_t *req,
                          h2o_iovec_t path)
{
    wh_live_t *l = self;
    int list = h2o_memis(path.base, path.len, H2O_STRLIT("/api/events"));
    int stream = h2o_memis(path.base, path.len, H2O_STRLIT("/api/events/stream"));
    if (!list && !stream)
        return 0;
    if (!wh_dashboard_authorize(l->dash, env, req))
        return 1;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        wh_admin_respond_error(req, 405, "method not allowed");
        return 1;
    }
    if (stream)
        wh__serve_stream(l, env, req);
    else
        wh__serve_list(l, req);
    return 1;
}

wh_admin_module_t wh_live_module(wh_live_t *l, struct wh_dashboard *dash)
{
    l->dash = dash;
    wh_admin_module_t out = {"/api/events", wh__live_serve, l};
    return out;
}
