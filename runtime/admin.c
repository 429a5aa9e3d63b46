/* The admin listener's shared services for admin modules: deferred answers computed on worker
 * threads, JSON responses and the admin-token check. */
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <h2o.h>
#include <h2o/multithread.h>

#include "wahook/admin.h"
#include "wahook/common.h"

typedef struct wh__deferred {
    h2o_multithread_message_t super;
    h2o_req_t *req;            /* NULL once h2o freed the request */
    struct wh__defer_guard *guard;
    void (*fn)(void *arg, wh_admin_reply_t *reply);
    void *arg;
    wh_admin_reply_t reply;
} wh__deferred_t;

typedef struct wh__defer_guard {
    wh__deferred_t *task;
} wh__defer_guard_t;

static const wh_admin_env_t *wh__env;
static h2o_multithread_receiver_t wh__receiver;
static atomic_size_t wh__pending;

const wh_admin_env_t *wh_admin_env(void)
{
    return wh__env;
}

size_t wh_admin_pending(void)
{
    return atomic_load(&wh__pending);
}

void wh_admin_respond(h2o_req_t *req, int status, const char *content_type, const char *body,
                      size_t len)
{
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : status < 400 ? "Other" : "Error";
    req->res.content_length = len;
    const char *ct = content_type != NULL ? content_type : "application/json";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct, strlen(ct));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    h2o_send_inline(req, body, len);
}

void wh_admin_respond_json(h2o_req_t *req, int status, json_t *obj)
{
    char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text == NULL) {
        wh_admin_respond(req, 503, NULL, H2O_STRLIT("{\"error\":\"out of memory\"}"));
        return;
    }
    wh_admin_respond(req, status, NULL, text, strlen(text));
    free(text);
}

void wh_admin_respond_error(h2o_req_t *req, int status, const char *message)
{
    wh_admin_respond_json(req, status, json_pack("{s:s}", "error", message));
}

int wh_admin_token_ok(const wh_admin_env_t *env, h2o_req_t *req)
{
    const char *token = env != NULL && env->conf != NULL ? env->conf->admin.token : NULL;
    if (token == NULL || token[0] == '\0')
        return 0;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return 0;
    h2o_iovec_t a = req->headers.entries[i].value;
    if (a.len < 7 || !h2o_lcstris(a.base, 7, H2O_STRLIT("bearer ")))
        return 0;
    return wh_ct_equal(a.base + 7, a.len - 7, token, strlen(token));
}

static void wh__guard_dispose(void *p)
{
    wh__defer_guard_t *g = p;
    if (g->task != NULL)
        g->task->req = NULL;
}

static void wh__on_answers(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
        wh__deferred_t *t = H2O_STRUCT_FROM_MEMBER(wh__deferred_t, super, m);
        if (t->req != NULL) {
            t->guard->task = NULL;
            const char *body = t->reply.body != NULL ? t->reply.body : "{}";
            size_t len = t->reply.body_len != 0 ? t->reply.body_len : strlen(body);
            wh_admin_respond(t->req, t->reply.status != 0 ? t->reply.status : 500,
                             t->reply.content_type, body, len);
        }
        free(t->reply.body);
        free(t);
        atomic_fetch_sub(&wh__pending, 1);
    }
}

void wh_admin_init(const wh_admin_env_t *env)
{
    wh__env = env;
    h2o_multithread_register_receiver(env->admin_queue, &wh__receiver, wh__on_answers);
}

static void *wh__defer_main(void *arg)
{
    wh__deferred_t *t = arg;
    t->fn(t->arg, &t->reply);
    memset(&t->super, 0, sizeof(t->super));
    h2o_multithread_send_message(&wh__receiver, &t->super);
    return NULL;
}

int wh_admin_defer(h2o_req_t *req, void (*fn)(void *arg, wh_admin_reply_t *reply), void *arg)
{
    if (wh__env == NULL)
        return WH_ESHUTDOWN;
    wh__deferred_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return WH_ENOMEM;
    t->req = req;
    t->fn = fn;
    t->arg = arg;
    t->guard = h2o_mem_alloc_shared(&req->pool, sizeof(*t->guard), wh__guard_dispose);
    t->guard->task = t;
    atomic_fetch_add(&wh__pending, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t tid;
    int rc = pthread_create(&tid, &attr, wh__defer_main, t);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        t->guard->task = NULL;
        free(t);
        atomic_fetch_sub(&wh__pending, 1);
        return WH_EBUSY;
    }
    return WH_OK;
}
