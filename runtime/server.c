/* The HTTP server: loop threads on libh2o serving the webhook route (checks, authentication,
 * envelope, deferred answer after the group commit), health endpoints and the admin listener,
 * with signal-driven graceful shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <h2o.h>
#include <h2o/multithread.h>

#include "wahook/auth.h"
#include "wahook/cidr.h"
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/admin.h"
#include "wahook/dashboard.h"
#include "wahook/live.h"
#include "wahook/metrics.h"
#include "wahook/stats.h"
#include "wahook/deliver.h"
#include "wahook/envelope.h"
#include "wahook/log.h"
#include "wahook/outbox.h"
#include "wahook/process.h"
#include "wahook/ratelimit.h"
#include "wahook/scripts.h"
#include "wahook/server.h"
#include "wahook/store.h"
#include "wahook/watchdog.h"

#define WH__PARSE_THREADS 2
#define WH__RATELIMIT_KEYS 65536
#define WH__FLUSH_GRACE 0.2 /* seconds the loop keeps running after the last answer */

typedef struct wh__route {
    const wh_route_conf_t *conf;
    size_t index;
    size_t path_len;
    wh_cidr_list_t *allow;
    wh_cidr_list_t *trusted;
    wh_ratelimit_t *ip_limit;       /* unauthenticated or failing requests per client IP */
    wh_ratelimit_t *instance_limit; /* authenticated requests per instance */
} wh__route_t;

typedef struct wh__host_handler {
    h2o_handler_t super;
    wh_server_t *server;
    const char *host; /* config host name; NULL on the admin listener */
} wh__host_handler_t;

struct wh__thread;

typedef struct wh__listener {
    h2o_socket_t *sock;
    h2o_accept_ctx_t accept_ctx;
    struct wh__thread *thread;
} wh__listener_t;

typedef struct wh__thread {
    wh_server_t *server;
    size_t index;
    pthread_t tid;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_context_t admin_ctx;
    int has_admin;
    wh__listener_t listeners[WH_MAX_LISTENERS + 1];
    size_t num_listeners;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t done_receiver;    /* completions of deferred requests */
    h2o_multithread_receiver_t control_receiver; /* shutdown request */
    h2o_timeout_t commit_timeouts[WH_MAX_ROUTES];
    size_t inflight;
    int stopping;
} wh__thread_t;

typedef enum { WH__JOB_STORED = 1, WH__JOB_REPLY = 2 } wh__job_kind_t;

typedef struct wh__guard {
    struct wh__job *job;
} wh__guard_t;

/* One webhook request whose answer waits for another thread (parse pool or store writer). It is
 * always freed on its owner thread, when its single completion message arrives. */
typedef struct wh__job {
    h2o_multithread_message_t super;
    wh_ingest_t ingest;
    wh__thread_t *owner;
    h2o_req_t *req;     /* NULL once answered or when h2o freed the request first */
    wh__guard_t *guard; /* lives in the request pool */
    h2o_timeout_entry_t timer;
    const wh__route_t *route;
    wh_envelope_t env;
    char *raw; /* copy of the body for off-loop parsing */
    size_t raw_len;
    wh_auth_result_t header_auth;
    char client_ip[INET6_ADDRSTRLEN];
    wh__job_kind_t kind;
    int reply_status;
    const char *reply_error;
    int retry_after;
    int store_status;
    int64_t id;
    int duplicate;
    struct wh__job *next_parse;
} wh__job_t;

/* An admin request whose work (reload, retry, store reads) runs on a worker thread through
 * wh_admin_defer, which answers it from the admin loop. */
typedef struct wh__admin_task {
    wh_server_t *server;
    int64_t id;
    char status_filter[16]; /* GET /api/outbox: ?status= and ?target= ("" = any), ?limit= */
    char target_filter[16];
    int limit;
    int (*run)(struct wh__admin_task *t); /* fills status and body */
    int status;
    char *body;
} wh__admin_task_t;

struct wh_server {
    wh_config_t *conf;
    wh_scripts_t *scripts;
    wh_processors_t *processors;
    wh_deliverers_t *deliverers;
    wh_watchdog_t *watchdog;
    /* admin modules: the dashboard, the live feed, … */
    wh_admin_env_t admin_env;
    wh_dashboard_t *dashboard;
    wh_live_t *live;
    wh_admin_module_t modules[16];
    size_t num_modules;
    h2o_globalconf_t globalconf;
    h2o_globalconf_t adminconf;
    int has_admin;
    wh_store_t *store;
    char db_path[PATH_MAX];
    wh__route_t routes[WH_MAX_ROUTES];
    size_t num_routes;
    int listen_fds[WH_MAX_LISTENERS];
    SSL_CTX *ssl_ctx[WH_MAX_LISTENERS];
    size_t num_listen_fds;
    int admin_fd;
    wh__thread_t *threads;
    size_t num_threads;
    atomic_int shutting_down;
    int access_fd;
    pthread_mutex_t start_mutex; /* loop threads report their initialisation */
    pthread_cond_t start_cond;
    size_t threads_started, threads_failed;
    /* off-loop parsing of large bodies */
    pthread_t parse_tids[WH__PARSE_THREADS];
    int parse_started;
    pthread_mutex_t parse_mutex;
    pthread_cond_t parse_cond;
    wh__job_t *parse_head, *parse_tail;
    int parse_stop;
};

/* ---- responses ------------------------------------------------------------------------- */

static void wh__access_log(wh_server_t *s, h2o_req_t *req, int status, size_t bytes)
{
    if (s->access_fd < 0)
        return;
    char ip[INET6_ADDRSTRLEN] = "";
    struct sockaddr_storage ss;
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (sl > 0)
        wh_client_ip((struct sockaddr *)&ss, NULL, 0, NULL, ip, sizeof(ip));
    /* The query string is never logged: it may carry hub.verify_token. */
    size_t path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    json_t *line = json_pack("{s:I,s:s,s:s%,s:s%,s:i,s:I}", "ts", (json_int_t)wh_now_ms(),
                             "remote", ip, "method", req->method.base, req->method.len, "path",
                             req->path.base, path_len, "status", status, "bytes",
                             (json_int_t)bytes);
    if (line == NULL)
        return;
    char *text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (text == NULL)
        return;
    size_t n = strlen(text);
    text[n] = '\n';
    ssize_t w = write(s->access_fd, text, n + 1);
    (void)w;
    free(text);
}

static void wh__respond(wh_server_t *s, h2o_req_t *req, int status, const char *reason,
                        const char *content_type, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                   strlen(content_type));
    if (atomic_load(&s->shutting_down))
        req->http1_is_persistent = 0;
    char route[256];
    size_t rl = req->path_normalized.len < sizeof(route) - 1 ? req->path_normalized.len
                                                            : sizeof(route) - 1;
    memcpy(route, req->path_normalized.base, rl);
    route[rl] = '\0';
    wh_metrics_request(route, status);
    wh__access_log(s, req, status, len);
    h2o_send_inline(req, body, len);
}

static const char *wh__reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

/* Answers {"error": msg}; retry_after > 0 adds Retry-After. */
static void wh__respond_error(wh_server_t *s, h2o_req_t *req, int status, const char *msg,
                              int retry_after)
{
    if (retry_after > 0) {
        char *ra = h2o_mem_alloc_pool(&req->pool, 16);
        int n = snprintf(ra, 16, "%d", retry_after);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, ra,
                       (size_t)n);
    }
    json_t *obj = json_pack("{s:s}", "error", msg);
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text == NULL) {
        wh__respond(s, req, status, wh__reason(status), "application/json", "{}", 2);
        return;
    }
    wh__respond(s, req, status, wh__reason(status), "application/json", text, strlen(text));
    free(text);
}

static void wh__respond_json(wh_server_t *s, h2o_req_t *req, int status, const char *text)
{
    wh__respond(s, req, status, wh__reason(status), "application/json", text, strlen(text));
}

static void wh__respond_method(wh_server_t *s, h2o_req_t *req, const char *allow)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
    wh__respond_error(s, req, 405, "method not allowed", 0);
}

/* ---- health ------------------------------------------------------------------------------ */

static void wh__respond_ready(wh_server_t *s, h2o_req_t *req)
{
    json_t *reasons = json_array();
    if (atomic_load(&s->shutting_down))
        json_array_append_new(reasons, json_string("shutting down"));
    if (!wh_store_ready(s->store))
        json_array_append_new(reasons, json_string("store not writable"));
    int ready = json_array_size(reasons) == 0;
    json_t *obj = json_pack("{s:s,s:o,s:I}", "status", ready ? "ready" : "not ready", "reasons",
                            reasons, "queue", (json_int_t)wh_store_queue_depth(s->store));
    if (obj != NULL && s->scripts != NULL)
        json_object_set_new(obj, "scripts", wh_scripts_status(s->scripts));
    if (obj != NULL && s->processors != NULL)
        json_object_set_new(obj, "processing", wh_processors_stats(s->processors));
    if (obj != NULL && s->deliverers != NULL)
        json_object_set_new(obj, "delivery", wh_deliverers_status(s->deliverers));
    if (obj != NULL && s->watchdog != NULL)
        json_object_set_new(obj, "watchdog", wh_watchdog_status(s->watchdog));
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!ready) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("5"));
    }
    wh__respond_json(s, req, ready ? 200 : 503, text != NULL ? text : "{}");
    free(text);
}

/* Serves /healthz and /readyz; returns 1 when the path was one of them. */
static int wh__serve_health(wh_server_t *s, h2o_req_t *req, h2o_iovec_t path)
{
    int live = h2o_memis(path.base, path.len, H2O_STRLIT("/healthz"));
    int ready = h2o_memis(path.base, path.len, H2O_STRLIT("/readyz"));
    if (!live && !ready)
        return 0;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        wh__respond_method(s, req, "GET, HEAD");
        return 1;
    }
    if (live)
        wh__respond_json(s, req, 200, "{\"status\":\"ok\"}");
    else
        wh__respond_ready(s, req);
    return 1;
}

/* ---- deferred jobs ------------------------------------------------------------------------ */

static void wh__guard_dispose(void *p)
{
    wh__guard_t *g = p;
    if (g->job != NULL) {
        g->job->req = NULL;
        g->job->guard = NULL;
    }
}

/* Forgets the request: called when it has been answered. */
static void wh__job_detach(wh__job_t *j)
{
    if (j->guard != NULL)
        j->guard->job = NULL;
    j->guard = NULL;
    j->req = NULL;
    if (h2o_timeout_is_linked(&j->timer))
        h2o_timeout_unlink(&j->timer);
}

static void wh__job_free(wh__job_t *j)
{
    wh_envelope_clear(&j->env);
    free(j->raw);
    free(j);
}

static void wh__job_answer(wh__job_t *j)
{
    wh_server_t *s = j->owner->server;
    h2o_req_t *req = j->req;
    if (req == NULL)
        return;
    wh__job_detach(j);
    if (j->kind == WH__JOB_REPLY) {
        wh__respond_error(s, req, j->reply_status, j->reply_error, j->retry_after);
        return;
    }
    if (j->store_status != WH_OK) {
        wh_metrics_event_received(j->env.event, "unavailable");
        wh__respond_error(s, req, 503,
                          j->store_status == WH_EFULL ? "store full" : "store unavailable", 5);
        return;
    }
    wh_metrics_event_received(j->env.event, j->duplicate ? "duplicate" : "accepted");
    if (!j->duplicate && wh_live_watched(s->live)) {
        char *contact = wh_contact_key(j->env.phone, j->env.lid, NULL);
        wh_live_publish(s->live, j->id, j->ingest.received_at, j->env.instance, j->env.event,
                        contact, j->env.body, j->env.body_len);
        free(contact);
    }
    char text[96];
    snprintf(text, sizeof(text), "{\"status\":\"%s\",\"id\":%lld}",
             j->duplicate ? "duplicate" : "accepted", (long long)j->id);
    wh__respond_json(s, req, 200, text);
}

static void wh__on_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    wh__thread_t *t = H2O_STRUCT_FROM_MEMBER(wh__thread_t, done_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
        wh__job_t *j = H2O_STRUCT_FROM_MEMBER(wh__job_t, super, m);
        wh__job_answer(j);
        wh__job_free(j);
        t->inflight--;
    }
}

/* Sends the job's single completion message to its owner. Any thread. */
static void wh__job_complete(wh__job_t *j)
{
    memset(&j->super, 0, sizeof(j->super));
    h2o_multithread_send_message(&j->owner->done_receiver, &j->super);
}

/* Store writer thread: the event's transaction ended. */
static void wh__on_stored(wh_ingest_t *ingest, int status, int64_t id, int duplicate)
{
    wh__job_t *j = H2O_STRUCT_FROM_MEMBER(wh__job_t, ingest, ingest);
    j->kind = WH__JOB_STORED;
    j->store_status = status;
    j->id = id;
    j->duplicate = duplicate;
    wh__job_complete(j);
}

static void wh__on_commit_timeout(h2o_timeout_entry_t *entry)
{
    wh__job_t *j = H2O_STRUCT_FROM_MEMBER(wh__job_t, timer, entry);
    h2o_req_t *req = j->req;
    if (req == NULL)
        return;
    wh__job_detach(j);
    wh_log(WH_LOG_WARN, "commit timed out", "{s:s,s:s}", "event", j->env.event ? j->env.event : "",
           "instance", j->env.instance ? j->env.instance : "");
    /* The job stays alive until the store reports; the event may still commit, and Evolution's
     * retry will then be answered as a duplicate. */
    wh__respond_error(j->owner->server, req, 503, "store did not commit in time", 5);
}

static void wh__set_reply(wh__job_t *j, int status, const char *msg, int retry_after)
{
    j->kind = WH__JOB_REPLY;
    j->reply_status = status;
    j->reply_error = msg;
    j->retry_after = retry_after;
}

/* Charges one failing or unauthenticated request to the client's IP budget. */
static void wh__charge_ip(const wh__route_t *r, const char *ip)
{
    int ra;
    wh_ratelimit_take(r->ip_limit, ip, strlen(ip), wh_mono_now(), &ra);
}

/* Everything after the envelope is parsed: body authentication, the instance limit, and the
 * submission to the store. Any thread. Returns 1 when submitted (the store will report), 0 when
 * a reply was set on the job. */
static int wh__job_after_parse(wh_server_t *s, wh__job_t *j)
{
    const wh__route_t *r = j->route;
    const wh_webhook_conf_t *wc = &r->conf->webhook;
    wh_auth_result_t body_auth = wh_auth_apikey_check(&wc->auth, j->env.apikey);
    if (body_auth == WH_AUTH_FAIL) {
        wh__charge_ip(r, j->client_ip);
        wh_log(WH_LOG_INFO, "authentication failed", "{s:s,s:s}", "ip", j->client_ip, "method",
               "apikey");
        wh_watchdog_note_auth_failure();
        wh__set_reply(j, 401, "invalid signature", 0);
        return 0;
    }
    int authenticated = j->header_auth == WH_AUTH_PASS || body_auth == WH_AUTH_PASS;
    if (!authenticated) {
        wh__charge_ip(r, j->client_ip);
        if (s->conf->env != WH_ENV_DEVELOPMENT) {
            wh_log(WH_LOG_INFO, "authentication missing", "{s:s}", "ip", j->client_ip);
            wh_watchdog_note_auth_failure();
            wh__set_reply(j, 401, "invalid signature", 0);
            return 0;
        }
    } else {
        int ra = 0;
        const char *inst = j->env.instance;
        if (!wh_ratelimit_take(r->instance_limit, inst, strlen(inst), wh_mono_now(), &ra)) {
            wh_metrics_ratelimited("instance");
            wh__set_reply(j, 429, "rate limited", ra);
            return 0;
        }
    }

    j->ingest.instance = j->env.instance;
    j->ingest.event = j->env.event;
    j->ingest.dedup_id = j->env.dedup_id;
    j->ingest.phone = j->env.phone;
    j->ingest.lid = j->env.lid;
    j->ingest.body = j->env.body;
    j->ingest.body_len = j->env.body_len;
    j->ingest.received_at = wh_now_ms();
    j->ingest.cb = wh__on_stored;
    int rc = wh_store_submit(s->store, &j->ingest);
    if (rc == WH_OK)
        return 1;
    wh__set_reply(j, 503, rc == WH_EFULL ? "store queue full" : "shutting down", 5);
    return 0;
}

/* Parses the body of j (raw or in place) and decides. Returns like wh__job_after_parse. */
static int wh__job_parse(wh_server_t *s, wh__job_t *j, const char *body, size_t len)
{
    char err[128];
    wh_envelope_opts_t opts = {.keep_media = s->conf->store_keep_media};
    int rc = wh_envelope_parse(&j->env, body, len, &opts, err, sizeof(err));
    if (rc == WH_ENOMEM) {
        wh__set_reply(j, 503, "out of memory", 5);
        return 0;
    }
    if (rc != WH_OK) {
        /* Without header authentication a malformed body is first of all unauthenticated. */
        if (j->header_auth != WH_AUTH_PASS) {
            wh__charge_ip(j->route, j->client_ip);
            if (s->conf->env != WH_ENV_DEVELOPMENT) {
                wh_watchdog_note_auth_failure();
                wh__set_reply(j, 401, "invalid signature", 0);
                return 0;
            }
        }
        char *msg = NULL;
        /* err is on the stack; keep a copy with a static lifetime for the known messages. */
        static const char *const known[] = {"malformed JSON", "body is not a JSON object",
                                            "missing event", "invalid instance"};
        for (size_t i = 0; i < WH_ARRAY_SIZE(known); i++)
            if (strcmp(err, known[i]) == 0)
                msg = (char *)known[i];
        wh__set_reply(j, 400, msg != NULL ? msg : "malformed JSON", 0);
        return 0;
    }
    return wh__job_after_parse(s, j);
}

static void *wh__parse_main(void *arg)
{
    wh_server_t *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->parse_mutex);
        while (s->parse_head == NULL && !s->parse_stop)
            pthread_cond_wait(&s->parse_cond, &s->parse_mutex);
        wh__job_t *j = s->parse_head;
        if (j == NULL) {
            pthread_mutex_unlock(&s->parse_mutex);
            return NULL;
        }
        s->parse_head = j->next_parse;
        if (s->parse_head == NULL)
            s->parse_tail = NULL;
        pthread_mutex_unlock(&s->parse_mutex);

        /* Once submitted, the store may complete and free the job at any moment: take the raw
         * body out of it first. */
        char *raw = j->raw;
        j->raw = NULL;
        int submitted = wh__job_parse(s, j, raw, j->raw_len);
        free(raw);
        if (!submitted)
            wh__job_complete(j);
    }
}

static void wh__parse_enqueue(wh_server_t *s, wh__job_t *j)
{
    pthread_mutex_lock(&s->parse_mutex);
    j->next_parse = NULL;
    if (s->parse_tail != NULL)
        s->parse_tail->next_parse = j;
    else
        s->parse_head = j;
    s->parse_tail = j;
    pthread_cond_signal(&s->parse_cond);
    pthread_mutex_unlock(&s->parse_mutex);
}

/* ---- the webhook route --------------------------------------------------------------------- */

static h2o_iovec_t wh__header(h2o_req_t *req, const h2o_token_t *token)
{
    ssize_t i = h2o_find_header(&req->headers, token, -1);
    if (i < 0)
        return h2o_iovec_init(NULL, 0);
    return req->headers.entries[i].value;
}

static h2o_iovec_t wh__header_str(h2o_req_t *req, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    if (i < 0)
        return h2o_iovec_init(NULL, 0);
    return req->headers.entries[i].value;
}

/* All X-Forwarded-For headers joined by ", " (in the request pool). */
static h2o_iovec_t wh__forwarded_for(h2o_req_t *req)
{
    h2o_iovec_t out = h2o_iovec_init(NULL, 0);
    for (ssize_t i = -1; (i = h2o_find_header(&req->headers, H2O_TOKEN_X_FORWARDED_FOR, i)) >= 0;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (out.base == NULL) {
            out = v;
            continue;
        }
        out = h2o_concat(&req->pool, out, h2o_iovec_init(H2O_STRLIT(", ")), v);
    }
    return out;
}

static int wh__is_json_content_type(h2o_iovec_t ct)
{
    if (ct.base == NULL)
        return 0;
    size_t n = 0;
    while (n < ct.len && ct.base[n] != ';')
        n++;
    while (n > 0 && (ct.base[n - 1] == ' ' || ct.base[n - 1] == '\t'))
        n--;
    size_t start = 0;
    while (start < n && (ct.base[start] == ' ' || ct.base[start] == '\t'))
        start++;
    const char *p = ct.base + start;
    size_t len = n - start;
    if (h2o_lcstris(p, len, H2O_STRLIT("application/json")))
        return 1;
    /* application/<something>+json */
    return len > 17 && h2o_lcstris(p, 12, H2O_STRLIT("application/")) &&
           h2o_lcstris(p + len - 5, 5, H2O_STRLIT("+json"));
}

static int wh__hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Finds query parameter name and percent-decodes it into the pool. Returns 1 when present. */
static int wh__query_param(h2o_req_t *req, const char *name, h2o_iovec_t *out)
{
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t nlen = strlen(name);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        if (amp == NULL)
            amp = end;
        const char *eq = memchr(q, '=', (size_t)(amp - q));
        const char *kend = eq != NULL ? eq : amp;
        if ((size_t)(kend - q) == nlen && memcmp(q, name, nlen) == 0) {
            const char *v = eq != NULL ? eq + 1 : amp;
            size_t vlen = (size_t)(amp - v);
            char *buf = h2o_mem_alloc_pool(&req->pool, vlen + 1);
            size_t o = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] == '%' && i + 2 < vlen && wh__hexval(v[i + 1]) >= 0 &&
                    wh__hexval(v[i + 2]) >= 0) {
                    buf[o++] = (char)(wh__hexval(v[i + 1]) * 16 + wh__hexval(v[i + 2]));
                    i += 2;
                } else if (v[i] == '+') {
                    buf[o++] = ' ';
                } else {
                    buf[o++] = v[i];
                }
            }
            buf[o] = '\0';
            *out = h2o_iovec_init(buf, o);
            return 1;
        }
        q = amp + 1;
    }
    return 0;
}

static void wh__serve_handshake(wh_server_t *s, const wh__route_t *r, h2o_req_t *req)
{
    const char *expected = r->conf->webhook.verify_token;
    h2o_iovec_t mode, token, challenge;
    int has_mode = wh__query_param(req, "hub.mode", &mode);
    int ok = wh__query_param(req, "hub.verify_token", &token) &&
             wh__query_param(req, "hub.challenge", &challenge);
    if (ok && has_mode && !h2o_memis(mode.base, mode.len, H2O_STRLIT("subscribe")))
        ok = 0;
    if (ok && !wh_ct_equal(token.base, token.len, expected, strlen(expected)))
        ok = 0;
    if (!ok) {
        wh__respond_error(s, req, 403, "forbidden", 0);
        return;
    }
    wh__respond(s, req, 200, "OK", "text/plain; charset=utf-8", challenge.base, challenge.len);
}

static void wh__serve_webhook(wh_server_t *s, wh__thread_t *t, const wh__route_t *r,
                              h2o_req_t *req)
{
    const wh_webhook_conf_t *wc = &r->conf->webhook;
    int is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    if (!is_post) {
        int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
        if (is_get && wc->verify_token != NULL) {
            wh__serve_handshake(s, r, req);
            return;
        }
        wh__respond_method(s, req, wc->verify_token != NULL ? "POST, GET" : "POST");
        return;
    }
    if (atomic_load(&s->shutting_down) || t->stopping) {
        wh__respond_error(s, req, 503, "shutting down", 5);
        return;
    }
    if ((int64_t)req->entity.len > s->conf->limit_request_body) {
        wh__respond_error(s, req, 413, "request body too large", 0);
        return;
    }
    if (!wh__is_json_content_type(wh__header(req, H2O_TOKEN_CONTENT_TYPE))) {
        wh__respond_error(s, req, 415, "unsupported media type", 0);
        return;
    }

    char ip[INET6_ADDRSTRLEN] = "";
    struct sockaddr_storage ss;
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    h2o_iovec_t xff = wh__forwarded_for(req);
    if (sl == 0 || wh_client_ip((struct sockaddr *)&ss, xff.base, xff.len, r->trusted, ip,
                                sizeof(ip)) != WH_OK)
        strcpy(ip, "unknown");
    if (wh_cidr_list_size(r->allow) > 0 && !wh_cidr_list_match_str(r->allow, ip, strlen(ip))) {
        wh__respond_error(s, req, 403, "forbidden", 0);
        return;
    }
    int retry_after = 0;
    if (!wh_ratelimit_peek(r->ip_limit, ip, strlen(ip), wh_mono_now(), &retry_after)) {
        wh_metrics_ratelimited("ip");
        wh__respond_error(s, req, 429, "rate limited", retry_after);
        return;
    }

    h2o_iovec_t sig = wh__header_str(req, wc->auth.hmac.header);
    h2o_iovec_t tok = wh__header_str(req, wc->auth.token.header);
    h2o_iovec_t authz = wh__header(req, H2O_TOKEN_AUTHORIZATION);
    wh_auth_creds_t creds = {sig.base, sig.len, tok.base, tok.len, authz.base, authz.len};
    wh_auth_result_t hauth = wh_auth_check_headers(&wc->auth, &creds, req->entity.base,
                                                   req->entity.len, time(NULL));
    if (hauth == WH_AUTH_FAIL || (hauth == WH_AUTH_ABSENT && s->conf->env != WH_ENV_DEVELOPMENT &&
                                  wc->auth.apikey.secrets.n == 0)) {
        wh__charge_ip(r, ip);
        wh_log(WH_LOG_INFO, hauth == WH_AUTH_FAIL ? "authentication failed"
                                                  : "authentication missing",
               "{s:s}", "ip", ip);
        wh_watchdog_note_auth_failure();
        wh__respond_error(s, req, 401, "invalid signature", 0);
        return;
    }

    wh__job_t *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        wh__respond_error(s, req, 503, "out of memory", 5);
        return;
    }
    j->owner = t;
    j->route = r;
    j->header_auth = hauth;
    memcpy(j->client_ip, ip, sizeof(j->client_ip));

    int deferred;
    if ((int64_t)req->entity.len > wc->offload_threshold) {
        /* Large bodies (base64 media) are parsed off the loop so other requests keep flowing;
         * req->entity points into the connection buffer, so it is copied first. */
        j->raw = malloc(req->entity.len + 1);
        if (j->raw == NULL) {
            free(j);
            wh__respond_error(s, req, 503, "out of memory", 5);
            return;
        }
        memcpy(j->raw, req->entity.base, req->entity.len);
        j->raw_len = req->entity.len;
        deferred = 1;
    } else {
        deferred = wh__job_parse(s, j, req->entity.base, req->entity.len);
        if (!deferred) {
            wh__respond_error(s, req, j->reply_status, j->reply_error, j->retry_after);
            wh__job_free(j);
            return;
        }
    }

    j->req = req;
    j->guard = h2o_mem_alloc_shared(&req->pool, sizeof(*j->guard), wh__guard_dispose);
    j->guard->job = j;
    j->timer.cb = wh__on_commit_timeout;
    h2o_timeout_link(t->loop, &t->commit_timeouts[r->index], &j->timer);
    t->inflight++;
    if (j->raw != NULL)
        wh__parse_enqueue(s, j);
}

/* ---- admin API ------------------------------------------------------------------------------ */

/* wh_admin_defer's worker: runs the task and hands its answer over. */
static void wh__admin_task_run(void *arg, wh_admin_reply_t *reply)
{
    wh__admin_task_t *task = arg;
    task->run(task);
    reply->status = task->status;
    reply->body = task->body; /* freed by admin.c once sent */
    free(task);
}

static char *wh__dump(json_t *obj)
{
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return text;
}

static int wh__admin_reload(wh__admin_task_t *t)
{
    char err[2048];
    if (wh_scripts_reload(t->server->scripts, "admin API", err, sizeof(err)) == WH_OK) {
        json_t *st = wh_scripts_status(t->server->scripts);
        json_object_set_new(st, "status", json_string("reloaded"));
        t->status = 200;
        t->body = wh__dump(st);
    } else {
        t->status = 422;
        t->body = wh__dump(json_pack("{s:s,s:s}", "status", "failed", "error", err));
    }
    return 0;
}

static int wh__admin_retry(wh__admin_task_t *t)
{
    int rc = wh_store_event_retry(t->server->store, t->id);
    if (rc == WH_OK) {
        t->status = 200;
        t->body = wh__dump(json_pack("{s:s,s:I}", "status", "pending", "id", (json_int_t)t->id));
        wh_processors_wake(t->server->processors);
    } else if (rc == WH_ENOTFOUND) {
        t->status = 404;
        t->body = wh__dump(json_pack("{s:s}", "error", "no such event"));
    } else if (rc == WH_EINVAL) {
        t->status = 409;
        t->body = wh__dump(json_pack("{s:s}", "error", "the event is neither dead nor failing"));
    } else {
        t->status = 503;
        t->body = wh__dump(json_pack("{s:s}", "error", wh_strerror(rc)));
    }
    return 0;
}

static int wh__admin_event_cb(const wh_event_detail_t *d, void *ctx)
{
    json_t **out = ctx;
    json_error_t jerr;
    json_t *body = json_loads(d->row.body, JSON_ALLOW_NUL, &jerr);
    *out = json_pack("{s:I,s:I,s:s,s:s,s:s,s:s?,s:s,s:i,s:s?,s:s?,s:I,s:I,s:o?}", "id",
                     (json_int_t)d->row.id, "received_at", (json_int_t)d->row.received_at,
                     "instance", d->row.instance, "event", d->row.event, "dedup_id",
                     d->row.dedup_id, "contact_key", d->row.contact_key, "status", d->row.status,
                     "attempts", d->attempts, "last_error", d->last_error, "script_version",
                     d->script_version, "processed_at", (json_int_t)d->processed_at,
                     "next_attempt_at", (json_int_t)d->next_attempt_at, "body", body);
    return 0;
}

static int wh__admin_show(wh__admin_task_t *t)
{
    json_t *obj = NULL;
    char err[256];
    int rc = wh_store_event_show(t->server->db_path, t->id, wh__admin_event_cb, &obj, err,
                                 sizeof(err));
    if (rc == WH_OK && obj != NULL) {
        t->status = 200;
        t->body = wh__dump(obj);
    } else {
        json_decref(obj);
        t->status = rc == WH_ENOTFOUND || rc == WH_OK ? 404 : 503;
        t->body = wh__dump(json_pack("{s:s}", "error", rc == WH_ENOTFOUND || rc == WH_OK
                                                          ? "no such event"
                                                          : err));
    }
    return 0;
}

/* ---- the outbox (admin API) ------------------------------------------------------------------ */

static int wh__admin_outbox_row_cb(const wh_outbox_row_t *row, void *ctx)
{
    json_t *rows = ctx;
    json_t *o = wh_outbox_row_json(row);
    if (o != NULL)
        json_array_append_new(rows, o);
    return 0;
}

static int wh__admin_outbox_list(wh__admin_task_t *t)
{
    json_t *rows = json_array();
    char err[256] = "";
    int rc = rows != NULL ? wh_outbox_list(t->server->db_path,
                                           t->status_filter[0] ? t->status_filter : NULL,
                                           t->target_filter[0] ? t->target_filter : NULL,
                                           t->limit, wh__admin_outbox_row_cb, rows, err,
                                           sizeof(err))
                          : WH_ENOMEM;
    if (rc == WH_OK) {
        t->status = 200;
        t->body = wh__dump(json_pack("{s:I,s:o}", "count", (json_int_t)json_array_size(rows),
                                     "rows", rows));
    } else {
        json_decref(rows);
        t->status = 503;
        t->body = wh__dump(json_pack("{s:s}", "error", err[0] ? err : wh_strerror(rc)));
    }
    return 0;
}

static int wh__admin_outbox_show_cb(const wh_outbox_row_t *row, void *ctx)
{
    *(json_t **)ctx = wh_outbox_row_json(row);
    return 0;
}

static int wh__admin_outbox_show(wh__admin_task_t *t)
{
    json_t *obj = NULL;
    char err[256] = "";
    int rc = wh_outbox_show(t->server->db_path, t->id, wh__admin_outbox_show_cb, &obj, err,
                            sizeof(err));
    if (rc == WH_OK && obj != NULL) {
        json_object_set_new(obj, "in_flight",
                            json_boolean(wh_deliverers_in_flight(t->server->deliverers, t->id)));
        t->status = 200;
        t->body = wh__dump(obj);
    } else {
        json_decref(obj);
        int missing = rc == WH_ENOTFOUND || rc == WH_OK;
        t->status = missing ? 404 : 503;
        t->body = wh__dump(json_pack("{s:s}", "error", missing ? "no such outbox row" : err));
    }
    return 0;
}

/* POST /api/outbox/<id>/retry and /drop. */
static int wh__admin_outbox_change(wh__admin_task_t *t, int drop)
{
    int rc = drop ? wh_outbox_drop(t->server->store, t->id)
                  : wh_outbox_retry(t->server->store, t->id);
    if (rc == WH_OK) {
        t->status = 200;
        t->body = wh__dump(json_pack("{s:s,s:I}", "status", drop ? "dropped" : "pending", "id",
                                     (json_int_t)t->id));
        if (!drop)
            wh_deliverers_wake(t->server->deliverers);
    } else if (rc == WH_ENOTFOUND) {
        t->status = 404;
        t->body = wh__dump(json_pack("{s:s}", "error", "no such outbox row"));
    } else if (rc == WH_EINVAL) {
        t->status = 409;
        t->body = wh__dump(json_pack("{s:s}", "error", "the row is already done or dropped"));
    } else {
        t->status = 503;
        t->body = wh__dump(json_pack("{s:s}", "error", wh_strerror(rc)));
    }
    return 0;
}

static int wh__admin_outbox_retry(wh__admin_task_t *t)
{
    return wh__admin_outbox_change(t, 0);
}

static int wh__admin_outbox_drop(wh__admin_task_t *t)
{
    return wh__admin_outbox_change(t, 1);
}

/* <prefix><id>[/<suffix>] → id, with *action 0 for no suffix or k for suffixes[k-1]
 * (a NULL-terminated list); -1 when the path has another shape. */
static int64_t wh__admin_id_path(h2o_iovec_t path, const char *prefix,
                                 const char *const *suffixes, int *action)
{
    size_t pl = strlen(prefix);
    if (path.len <= pl || memcmp(path.base, prefix, pl) != 0)
        return -1;
    int64_t id = 0;
    size_t i = pl;
    for (; i < path.len && path.base[i] >= '0' && path.base[i] <= '9' && id < INT64_MAX / 10; i++)
        id = id * 10 + (path.base[i] - '0');
    if (i == pl)
        return -1;
    *action = 0;
    if (i == path.len)
        return id;
    for (int k = 0; suffixes[k] != NULL; k++) {
        if (h2o_memis(path.base + i, path.len - i, suffixes[k], strlen(suffixes[k]))) {
            *action = k + 1;
            return id;
        }
    }
    return -1;
}

/* Reads ?status=, ?target= and ?limit= of GET /api/outbox. Returns NULL or the error. */
static const char *wh__admin_outbox_query(h2o_req_t *req, wh__admin_task_t *t)
{
    static const char *const statuses[] = {"pending", "inflight", "done", "dead", "dropped"};
    static const char *const targets[] = {"evolution", "crm", "mail", "alert"};
    t->limit = 100;
    if (req->query_at == SIZE_MAX)
        return NULL;
    const char *q = req->path.base + req->query_at + 1;
    size_t qlen = req->path.len - req->query_at - 1;
    while (qlen > 0) {
        const char *amp = memchr(q, '&', qlen);
        size_t plen = amp != NULL ? (size_t)(amp - q) : qlen;
        const char *eq = memchr(q, '=', plen);
        if (eq != NULL) {
            size_t kl = (size_t)(eq - q), vl = plen - kl - 1;
            const char *v = eq + 1;
            if (h2o_memis(q, kl, H2O_STRLIT("status")) || h2o_memis(q, kl, H2O_STRLIT("target"))) {
                int is_status = q[0] == 's';
                const char *const *list = is_status ? statuses : targets;
                size_t n = is_status ? WH_ARRAY_SIZE(statuses) : WH_ARRAY_SIZE(targets);
                const char *match = NULL;
                for (size_t i = 0; i < n; i++)
                    if (h2o_memis(v, vl, list[i], strlen(list[i])))
                        match = list[i];
                if (match == NULL && vl > 0)
                    return is_status ? "status must be pending, inflight, done, dead or dropped"
                                     : "target must be evolution, crm, mail or alert";
                snprintf(is_status ? t->status_filter : t->target_filter,
                         sizeof(t->status_filter), "%s", match != NULL ? match : "");
            } else if (h2o_memis(q, kl, H2O_STRLIT("limit"))) {
                long n = 0;
                size_t i = 0;
                for (; i < vl && v[i] >= '0' && v[i] <= '9' && n <= 100000; i++)
                    n = n * 10 + (v[i] - '0');
                if (i != vl || n < 1 || n > 10000)
                    return "limit must be a number from 1 to 10000";
                t->limit = (int)n;
            }
        }
        if (amp == NULL)
            break;
        qlen -= plen + 1;
        q = amp + 1;
    }
    return NULL;
}

static int wh__admin_authorized(wh_server_t *s, h2o_req_t *req)
{
    return wh_dashboard_session_ok(s->dashboard, req) || wh_admin_token_ok(&s->admin_env, req);
}


static void wh__serve_admin(wh_server_t *s, wh__thread_t *t, h2o_req_t *req, h2o_iovec_t path)
{
    for (size_t i = 0; i < s->num_modules; i++) {
        const wh_admin_module_t *m = &s->modules[i];
        size_t pl = strlen(m->prefix);
        if (path.len >= pl && memcmp(path.base, m->prefix, pl) == 0 &&
            m->serve(m->self, &s->admin_env, req, path))
            return;
    }
    int is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int retry = 0, action = 0;
    int64_t id = -1;
    int (*run)(wh__admin_task_t *) = NULL;
    const char *allow = NULL;
    wh__admin_task_t query = {0};
    const char *bad_query = NULL;

    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/reload"))) {
        run = wh__admin_reload;
        allow = "POST";
        if (!is_post)
            run = NULL;
    } else if ((id = wh__admin_id_path(path, "/api/events/", (const char *const[]){"/retry", NULL},
                                      &retry)) >= 0) {
        allow = retry ? "POST" : "GET";
        if (retry && is_post)
            run = wh__admin_retry;
        else if (!retry && is_get)
            run = wh__admin_show;
    } else if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/outbox"))) {
        allow = "GET";
        if (is_get) {
            run = wh__admin_outbox_list;
            bad_query = wh__admin_outbox_query(req, &query);
        }
    } else if ((id = wh__admin_id_path(path, "/api/outbox/",
                                      (const char *const[]){"/retry", "/drop", NULL},
                                      &action)) >= 0) {
        allow = action == 0 ? "GET" : "POST";
        if (action == 0 && is_get)
            run = wh__admin_outbox_show;
        else if (action == 1 && is_post)
            run = wh__admin_outbox_retry;
        else if (action == 2 && is_post)
            run = wh__admin_outbox_drop;
    } else {
        wh__respond_error(s, req, 404, "not found", 0);
        return;
    }
    if (!wh__admin_authorized(s, req)) {
        wh__respond_error(s, req, 401, s->conf->admin.token == NULL || !s->conf->admin.token[0]
                                           ? "the admin API is disabled: set WAHOOK_ADMIN_TOKEN"
                                           : "invalid admin token",
                          0);
        return;
    }
    if (run == NULL) {
        wh__respond_method(s, req, allow);
        return;
    }
    if (bad_query != NULL) {
        wh__respond_error(s, req, 400, bad_query, 0);
        return;
    }
    if (t->stopping || atomic_load(&s->shutting_down)) {
        wh__respond_error(s, req, 503, "shutting down", 5);
        return;
    }
    wh__admin_task_t *task = calloc(1, sizeof(*task));
    if (task == NULL) {
        wh__respond_error(s, req, 503, "out of memory", 5);
        return;
    }
    task->server = s;
    task->id = id;
    task->run = run;
    memcpy(task->status_filter, query.status_filter, sizeof(task->status_filter));
    memcpy(task->target_filter, query.target_filter, sizeof(task->target_filter));
    task->limit = query.limit;
    if (wh_admin_defer(req, wh__admin_task_run, task) != WH_OK) {
        free(task);
        wh__respond_error(s, req, 503, "cannot start the admin task", 5);
    }
}

static int wh__on_req(h2o_handler_t *self, h2o_req_t *req)
{
    wh__host_handler_t *hh = (wh__host_handler_t *)self;
    wh_server_t *s = hh->server;
    h2o_context_t *ctx = req->conn->ctx;
    wh__thread_t *t;
    if (hh->host == NULL)
        t = H2O_STRUCT_FROM_MEMBER(wh__thread_t, admin_ctx, ctx);
    else
        t = H2O_STRUCT_FROM_MEMBER(wh__thread_t, ctx, ctx);
    h2o_iovec_t path = req->path_normalized;

    if (wh__serve_health(s, req, path))
        return 0;
    if (hh->host == NULL) {
        wh__serve_admin(s, t, req, path);
        return 0;
    }

    /* Longest matching route of this host: exact path or path + "/…". */
    const wh__route_t *best = NULL;
    for (size_t i = 0; i < s->num_routes; i++) {
        const wh__route_t *r = &s->routes[i];
        if (strcmp(r->conf->host, hh->host) != 0)
            continue;
        const char *rp = r->conf->path;
        size_t rl = r->path_len;
        while (rl > 1 && rp[rl - 1] == '/')
            rl--;
        if (path.len < rl || memcmp(path.base, rp, rl) != 0)
            continue;
        if (path.len > rl && path.base[rl] != '/' && rl > 1)
            continue;
        if (best == NULL || rl > best->path_len)
            best = r;
    }
    if (best == NULL) {
        wh__respond_error(s, req, 404, "not found", 0);
        return 0;
    }
    if (best->conf->kind == WH_HANDLER_HEALTH) {
        /* <path> and <path>/readyz answer readiness, <path>/healthz liveness. */
        size_t rl = best->path_len;
        while (rl > 1 && best->conf->path[rl - 1] == '/')
            rl--;
        h2o_iovec_t rest = h2o_iovec_init(path.base + rl, path.len - rl);
        if (rest.len == 0 || h2o_memis(rest.base, rest.len, H2O_STRLIT("/")) ||
            h2o_memis(rest.base, rest.len, H2O_STRLIT("/readyz")))
            wh__respond_ready(s, req);
        else if (h2o_memis(rest.base, rest.len, H2O_STRLIT("/healthz")))
            wh__respond_json(s, req, 200, "{\"status\":\"ok\"}");
        else
            wh__respond_error(s, req, 404, "not found", 0);
        return 0;
    }
    wh__serve_webhook(s, t, best, req);
    return 0;
}

/* ---- threads -------------------------------------------------------------------------------- */

static void wh__on_accept(h2o_socket_t *listener, const char *err)
{
    if (err != NULL)
        return;
    wh__listener_t *l = listener->data;
    /* Accept a few at once; the loop calls back while more are pending. */
    for (int i = 0; i < 16; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            return;
        h2o_accept(&l->accept_ctx, sock);
    }
}

static void wh__thread_stop_accepting(wh__thread_t *t)
{
    for (size_t i = 0; i < t->num_listeners; i++) {
        if (t->listeners[i].sock == NULL)
            continue;
        h2o_socket_read_stop(t->listeners[i].sock);
        h2o_socket_close(t->listeners[i].sock);
        t->listeners[i].sock = NULL;
    }
}

static void wh__on_control(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    wh__thread_t *t = H2O_STRUCT_FROM_MEMBER(wh__thread_t, control_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
        free(m);
    }
    if (t->stopping)
        return;
    t->stopping = 1;
    wh__thread_stop_accepting(t);
    h2o_context_request_shutdown(&t->ctx);
    if (t->has_admin)
        h2o_context_request_shutdown(&t->admin_ctx);
}

static int wh__thread_init(wh_server_t *s, wh__thread_t *t, size_t index);

static void *wh__thread_main(void *arg)
{
    wh__thread_t *t = arg;
    wh_server_t *s = t->server;
    double deadline = 0, flush_until = 0;

    /* The loop, its context and queue are created on the thread that runs them: libh2o ties
     * socket buffers to the creating thread's (unsynchronised) buffer recycler. */
    int rc = wh__thread_init(s, t, t->index);
    pthread_mutex_lock(&s->start_mutex);
    s->threads_started++;
    if (rc != WH_OK)
        s->threads_failed++;
    pthread_cond_broadcast(&s->start_cond);
    pthread_mutex_unlock(&s->start_mutex);
    if (rc != WH_OK)
        return NULL;
    for (;;) {
        h2o_evloop_run(t->loop, 50);
        if (!t->stopping)
            continue;
        double now = wh_mono_now();
        if (deadline == 0)
            deadline = now + (double)s->conf->shutdown_timeout_ms / 1000.0;
        size_t pending = t->inflight + (t->has_admin ? wh_admin_pending() : 0);
        if (pending > 0 && now < deadline) {
            flush_until = 0;
            continue;
        }
        if (flush_until == 0)
            flush_until = now + WH__FLUSH_GRACE;
        if (now >= flush_until || now >= deadline)
            break;
    }
    if (t->inflight > 0)
        wh_log(WH_LOG_WARN, "shutdown deadline passed with requests in flight", "{s:I}",
               "inflight", (json_int_t)t->inflight);
    return NULL;
}

static int wh__thread_init(wh_server_t *s, wh__thread_t *t, size_t index)
{
    t->server = s;
    t->index = index;
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &s->globalconf);
    t->queue = h2o_multithread_create_queue(t->loop);
    h2o_multithread_register_receiver(t->queue, &t->done_receiver, wh__on_done);
    h2o_multithread_register_receiver(t->queue, &t->control_receiver, wh__on_control);
    for (size_t i = 0; i < s->num_routes; i++) {
        int64_t ms = s->routes[i].conf->kind == WH_HANDLER_WEBHOOK
                         ? s->routes[i].conf->webhook.commit_timeout_ms
                         : 10000;
        h2o_timeout_init(t->loop, &t->commit_timeouts[i], (uint64_t)ms);
    }
    for (size_t i = 0; i < s->num_listen_fds; i++) {
        int fd = dup(s->listen_fds[i]);
        if (fd < 0)
            return WH_EIO;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        wh__listener_t *l = &t->listeners[t->num_listeners++];
        l->thread = t;
        l->accept_ctx.ctx = &t->ctx;
        l->accept_ctx.hosts = s->globalconf.hosts;
        l->accept_ctx.ssl_ctx = s->ssl_ctx[i];
        l->sock = h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
        l->sock->data = l;
        h2o_socket_read_start(l->sock, wh__on_accept);
    }
    if (s->has_admin && index == 0) {
        t->has_admin = 1;
        h2o_context_init(&t->admin_ctx, t->loop, &s->adminconf);
        s->admin_env.admin_loop = t->loop;
        s->admin_env.admin_queue = t->queue;
        wh_admin_init(&s->admin_env);
        int fd = dup(s->admin_fd);
        if (fd < 0)
            return WH_EIO;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        wh__listener_t *l = &t->listeners[t->num_listeners++];
        l->thread = t;
        l->accept_ctx.ctx = &t->admin_ctx;
        l->accept_ctx.hosts = s->adminconf.hosts;
        l->sock = h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
        l->sock->data = l;
        h2o_socket_read_start(l->sock, wh__on_accept);
    }
    return WH_OK;
}

/* ---- setup -------------------------------------------------------------------------------- */

static int wh__bind(const char *host, uint16_t port, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", host ? host : "*",
                 gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int on = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host ? host : "*", (unsigned)port,
                 strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0)
        fcntl(fd, F_SETFL, O_NONBLOCK | fcntl(fd, F_GETFL));
    return fd;
}

static SSL_CTX *wh__ssl_ctx(const wh_listen_conf_t *lc, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
    /* No ALPN callback: clients negotiate HTTP/1.1 only (HTTP/2 stays off, see README). */
    if (SSL_CTX_use_certificate_chain_file(ctx, lc->certificate_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, lc->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    return ctx;
fail:;
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
    snprintf(err, errlen, "TLS setup for port %u failed (%s, %s): %s", (unsigned)lc->port,
             lc->certificate_file, lc->key_file, buf);
    SSL_CTX_free(ctx);
    return NULL;
}

static void wh__register_handler(wh_server_t *s, h2o_globalconf_t *gc, const char *host,
                                 const char *config_host)
{
    h2o_hostconf_t *hc = h2o_config_register_host(gc, h2o_iovec_init(host, strlen(host)), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(hc, "/", 0);
    wh__host_handler_t *hh = (wh__host_handler_t *)h2o_create_handler(pc, sizeof(*hh));
    hh->super.on_req = wh__on_req;
    hh->server = s;
    hh->host = config_host;
}

static void wh__globalconf_init(wh_server_t *s, h2o_globalconf_t *gc)
{
    h2o_config_init(gc);
    gc->server_name = h2o_iovec_init(H2O_STRLIT("wahook"));
    gc->max_request_entity_size = (size_t)s->conf->limit_request_body;
    gc->http1.upgrade_to_http2 = s->conf->http2;
}

/* Blocks the signals wh_server_run waits for, in the calling thread and so in every thread it
 * creates from now on (the store writer starts in create): a signal must never land on a
 * thread that would take its default action and kill the process mid-commit. */
static void wh__block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int wh_server_create(wh_server_t **out, wh_config_t *conf, char *err, size_t errlen)
{
    wh__block_signals();
    int rc = WH_ERR;
    wh_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return WH_ENOMEM;
    s->conf = conf;
    s->admin_fd = -1;
    s->access_fd = -1;
    pthread_mutex_init(&s->parse_mutex, NULL);
    pthread_cond_init(&s->parse_cond, NULL);
    pthread_mutex_init(&s->start_mutex, NULL);
    pthread_cond_init(&s->start_cond, NULL);
    for (size_t i = 0; i < WH_MAX_LISTENERS; i++)
        s->listen_fds[i] = -1;

    /* Routes: compile CIDR lists and rate limiters once. */
    for (size_t i = 0; i < conf->num_routes; i++) {
        wh__route_t *r = &s->routes[s->num_routes];
        r->conf = &conf->routes[i];
        r->index = s->num_routes;
        r->path_len = strlen(r->conf->path);
        s->num_routes++;
        if (r->conf->kind != WH_HANDLER_WEBHOOK)
            continue;
        const wh_webhook_conf_t *wc = &r->conf->webhook;
        char cerr[256];
        if (wh_cidr_list_parse(&r->allow, &wc->allow, cerr, sizeof(cerr)) != WH_OK ||
            wh_cidr_list_parse(&r->trusted, &wc->trusted_proxies, cerr, sizeof(cerr)) != WH_OK) {
            snprintf(err, errlen, "%s: %s", r->conf->path, cerr);
            rc = WH_EINVAL;
            goto fail;
        }
        r->ip_limit = wh_ratelimit_new((double)wc->ip_rate_per_min, (double)wc->ip_rate_per_min,
                                       WH__RATELIMIT_KEYS);
        r->instance_limit = wh_ratelimit_new((double)wc->instance_rate_per_min,
                                             (double)wc->instance_burst, WH__RATELIMIT_KEYS);
        if (r->ip_limit == NULL || r->instance_limit == NULL) {
            rc = WH_ENOMEM;
            goto fail;
        }
    }

    /* Data directory and store. */
    if (mkdir(conf->data_dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data directory %s: %s", conf->data_dir,
                 strerror(errno));
        rc = WH_EIO;
        goto fail;
    }
    snprintf(s->db_path, sizeof(s->db_path), "%s/wahook.db", conf->data_dir);
    wh_store_opts_t so = {.path = s->db_path,
                          .sync_full = conf->store_sync_full,
                          .queue_max = (size_t)conf->store_queue_size,
                          .batch_max = (size_t)conf->store_batch_size,
                          .max_size = conf->store_max_size};
    char serr[256];
    if ((rc = wh_store_open(&s->store, &so, serr, sizeof(serr))) != WH_OK) {
        snprintf(err, errlen, "store %s: %s", s->db_path, serr);
        goto fail;
    }

    /* Scripts that do not load stop the start, with file:line. */
    char scerr[2048];
    if ((s->scripts = wh_scripts_new(conf, conf->file, scerr, sizeof(scerr))) == NULL) {
        snprintf(err, errlen, "scripts: %s", scerr);
        rc = WH_EINVAL;
        goto fail;
    }

    if (conf->access_log != NULL) {
        if (strcmp(conf->access_log, "-") == 0)
            s->access_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
        else
            s->access_fd =
                open(conf->access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (s->access_fd < 0) {
            snprintf(err, errlen, "cannot open access log %s: %s", conf->access_log,
                     strerror(errno));
            rc = WH_EIO;
            goto fail;
        }
    }

    /* h2o configuration: the "default" host first, because h2o falls back to the first. */
    wh__globalconf_init(s, &s->globalconf);
    int has_default = 0;
    for (size_t i = 0; i < conf->num_routes; i++)
        if (strcmp(conf->routes[i].host, "default") == 0)
            has_default = 1;
    wh__register_handler(s, &s->globalconf, "default", has_default ? "default" : "");
    for (size_t i = 0; i < conf->num_routes; i++) {
        const char *h = conf->routes[i].host;
        int seen = strcmp(h, "default") == 0;
        for (size_t k = 0; k < i && !seen; k++)
            seen = strcmp(conf->routes[k].host, h) == 0;
        if (!seen)
            wh__register_handler(s, &s->globalconf, h, h);
    }

    for (size_t i = 0; i < conf->num_listen; i++) {
        const wh_listen_conf_t *lc = &conf->listen[i];
        if (lc->certificate_file != NULL && lc->key_file != NULL &&
            (s->ssl_ctx[i] = wh__ssl_ctx(lc, err, errlen)) == NULL) {
            rc = WH_EINVAL;
            goto fail;
        }
        if ((s->listen_fds[i] = wh__bind(lc->host, lc->port, err, errlen)) < 0) {
            rc = WH_EIO;
            goto fail;
        }
        s->num_listen_fds++;
    }
    if (conf->admin.port != 0) {
        wh_dashboard_opts_t dopts = {.dir = conf->dashboard_dir, .token = conf->admin.token,
                                     .session_ttl_ms = conf->dashboard_session_ttl_ms,
                                     .login_per_minute = (int)conf->dashboard_login_rate,
                                     .secure_cookie = conf->dashboard_secure_cookie};
        if ((rc = wh_dashboard_new(&s->dashboard, &dopts, err, errlen)) != WH_OK)
            goto fail;
        wh_live_opts_t lopts = {.db_path = s->db_path,
                                .max_clients = (size_t)conf->sse_max_clients,
                                .client_buffer = (size_t)conf->sse_buffer,
                                .heartbeat_ms = (int)conf->sse_heartbeat_ms};
        if ((s->live = wh_live_new(&lopts)) == NULL) {
            rc = WH_ENOMEM;
            goto fail;
        }
        s->admin_env.conf = conf;
        s->admin_env.store = s->store;
        s->admin_env.db_path = s->db_path;
        s->admin_env.scripts = s->scripts;
        s->num_modules = wh_dashboard_modules(s->dashboard, s->modules, 12);
        s->modules[s->num_modules++] = wh_live_module(s->live, s->dashboard);
        wh_stats_module_init(&s->modules[s->num_modules++]);
        wh_stats_set_auth(wh_dashboard_session_cb, s->dashboard);
        wh_metrics_module_init(&s->modules[s->num_modules++], 1);
        wh__globalconf_init(s, &s->adminconf);
        wh__register_handler(s, &s->adminconf, "default", NULL);
        s->has_admin = 1;
        if ((s->admin_fd = wh__bind(conf->admin.host, conf->admin.port, err, errlen)) < 0) {
            rc = WH_EIO;
            goto fail;
        }
    }
    *out = s;
    return WH_OK;
fail:
    wh_server_free(s);
    return rc;
}

/* ---- run and shutdown --------------------------------------------------------------------- */

int wh_server_run(wh_server_t *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Every thread created from here inherits the mask; this thread waits for them. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *routes[WH_MAX_ROUTES + 2];
    size_t nroutes = 0;
    for (size_t i = 0; i < s->conf->num_routes; i++)
        routes[nroutes++] = s->conf->routes[i].path;
    wh_metrics_set_routes(routes, nroutes);

    s->num_threads = (size_t)s->conf->num_threads;
    s->threads = calloc(s->num_threads, sizeof(*s->threads));
    if (s->threads == NULL)
        return WH_ENOMEM;
    for (size_t i = 0; i < s->num_threads; i++) {
        s->threads[i].server = s;
        s->threads[i].index = i;
    }
    for (size_t i = 0; i < WH__PARSE_THREADS; i++)
        pthread_create(&s->parse_tids[i], NULL, wh__parse_main, s);
    s->parse_started = 1;
    char perr[512];
    if (wh_processors_start(&s->processors, s->conf, s->store, s->db_path, s->scripts, perr,
                            sizeof(perr)) != WH_OK) {
        wh_log(WH_LOG_ERROR, "cannot start processors", "{s:s}", "error", perr);
        return WH_EIO;
    }
    char derr[512];
    if (wh_deliverers_start(&s->deliverers, s->conf, s->store, s->db_path, s->scripts, derr,
                            sizeof(derr)) != WH_OK) {
        wh_log(WH_LOG_ERROR, "cannot start deliverers", "{s:s}", "error", derr);
        return WH_EIO;
    }
    wh_processors_set_deliverers(s->processors, s->deliverers);
    if (wh_watchdog_start(&s->watchdog, s->conf, s->store, s->db_path, derr, sizeof(derr)) !=
        WH_OK)
        wh_log(WH_LOG_WARN, "cannot start the watchdog", "{s:s}", "error", derr);
    s->admin_env.processors = s->processors;
    if (wh_scripts_watch(s->scripts) != WH_OK)
        wh_log(WH_LOG_WARN, "cannot watch the scripts; reload with SIGHUP or wahook reload", NULL);
    for (size_t i = 0; i < s->num_threads; i++)
        pthread_create(&s->threads[i].tid, NULL, wh__thread_main, &s->threads[i]);
    pthread_mutex_lock(&s->start_mutex);
    while (s->threads_started < s->num_threads)
        pthread_cond_wait(&s->start_cond, &s->start_mutex);
    size_t failed = s->threads_failed;
    pthread_mutex_unlock(&s->start_mutex);
    if (failed > 0) {
        /* Unreachable in practice (dup of a bound socket failed); stop what did start. */
        wh_log(WH_LOG_ERROR, "a loop thread could not start", "{s:I}", "failed",
               (json_int_t)failed);
        atomic_store(&s->shutting_down, 1);
        for (size_t i = 0; i < s->num_threads; i++) {
            if (s->threads[i].queue == NULL)
                continue;
            h2o_multithread_message_t *m = calloc(1, sizeof(*m));
            if (m != NULL)
                h2o_multithread_send_message(&s->threads[i].control_receiver, m);
        }
        for (size_t i = 0; i < s->num_threads; i++)
            pthread_join(s->threads[i].tid, NULL);
        return WH_EIO;
    }

    for (size_t i = 0; i < s->conf->num_listen; i++)
        wh_log(WH_LOG_INFO, "listening", "{s:s,s:i,s:b}", "host",
               s->conf->listen[i].host ? s->conf->listen[i].host : "*", "port",
               (int)s->conf->listen[i].port, "tls", s->ssl_ctx[i] != NULL);
    if (s->has_admin)
        wh_log(WH_LOG_INFO, "admin listening", "{s:s,s:i}", "host", s->conf->admin.host,
               "port", (int)s->conf->admin.port);
    wh_scripts_gen_t *gen = wh_scripts_current(s->scripts);
    wh_log(WH_LOG_INFO, "started", "{s:s,s:i,s:i,s:s,s:s,s:s}", "version", WH_VERSION, "threads",
           (int)s->num_threads, "processors", (int)s->conf->processors, "env",
           s->conf->env == WH_ENV_DEVELOPMENT ? "development" : "production", "store",
           s->db_path, "scripts", gen->version);
    wh_scripts_gen_unref(s->scripts, gen);

    int sig = 0;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT)
            break;
        wh_scripts_reload(s->scripts, "SIGHUP", NULL, 0);
    }
    wh_log(WH_LOG_INFO, "shutting down", "{s:i}", "signal", sig);
    atomic_store(&s->shutting_down, 1);
    wh_live_shutdown(s->live);
    for (size_t i = 0; i < s->num_threads; i++) {
        h2o_multithread_message_t *m = calloc(1, sizeof(*m));
        if (m != NULL)
            h2o_multithread_send_message(&s->threads[i].control_receiver, m);
    }
    for (size_t i = 0; i < s->num_threads; i++)
        pthread_join(s->threads[i].tid, NULL);

    pthread_mutex_lock(&s->parse_mutex);
    s->parse_stop = 1;
    pthread_cond_broadcast(&s->parse_cond);
    pthread_mutex_unlock(&s->parse_mutex);
    for (size_t i = 0; i < WH__PARSE_THREADS; i++)
        pthread_join(s->parse_tids[i], NULL);
    s->parse_started = 0;

    /* Processors finish their batch and its commits before the writer drains and stops; then
     * the deliverers record what their transfers in flight achieved (the rest stays pending). */
    wh_processors_stop(s->processors);
    s->processors = NULL;
    wh_watchdog_stop(s->watchdog);
    s->watchdog = NULL;
    wh_deliverers_stop(s->deliverers);
    s->deliverers = NULL;
    wh_store_close(s->store);
    s->store = NULL;
    wh_log(WH_LOG_INFO, "stopped", NULL);
    return WH_OK;
}

void wh_server_free(wh_server_t *s)
{
    if (s == NULL)
        return;
    /* Loop threads have exited; their contexts are left to process exit, because disposing an
     * h2o context while its HTTP/2 graceful-shutdown timer is armed aborts (h2o 2.2.5). */
    wh_processors_stop(s->processors);
    wh_watchdog_stop(s->watchdog);
    wh_deliverers_stop(s->deliverers);
    wh_store_close(s->store);
    wh_live_free(s->live);
    wh_dashboard_free(s->dashboard);
    wh_scripts_free(s->scripts);
    for (size_t i = 0; i < s->num_routes; i++) {
        wh_cidr_list_free(s->routes[i].allow);
        wh_cidr_list_free(s->routes[i].trusted);
        wh_ratelimit_free(s->routes[i].ip_limit);
        wh_ratelimit_free(s->routes[i].instance_limit);
    }
    for (size_t i = 0; i < WH_MAX_LISTENERS; i++) {
        if (s->listen_fds[i] >= 0)
            close(s->listen_fds[i]);
        SSL_CTX_free(s->ssl_ctx[i]);
    }
    if (s->admin_fd >= 0)
        close(s->admin_fd);
    if (s->access_fd >= 0)
        close(s->access_fd);
    free(s->threads);
    free(s);
}
