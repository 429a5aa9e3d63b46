/* Extension points of the admin listener (dashboard, admin API, /metrics): what server.c offers
 * to the modules that serve admin paths, and what they offer back. Every admin path runs on the
 * admin listener's loop thread; blocking work goes through wh_admin_defer. */
#ifndef WAHOOK_ADMIN_H
#define WAHOOK_ADMIN_H

#include <h2o.h>
#include <jansson.h>
#include <stdint.h>
#include "wahook/config.h"

struct wh_store;
struct wh_scripts;
struct wh_processors;

/* What an admin module may use. Valid from server start to shutdown. */
typedef struct wh_admin_env {
    const wh_config_t *conf;
    struct wh_store *store;       /* the writer (submit tasks through its API only) */
    const char *db_path;          /* for read-only connections */
    struct wh_scripts *scripts;
    struct wh_processors *processors;
    void *deliverers;             /* wh_deliverers_t*, when delivery runs */
    h2o_loop_t *admin_loop;       /* the admin listener's event loop (thread 0) */
    h2o_multithread_queue_t *admin_queue; /* its cross-thread queue, for module receivers */
} wh_admin_env_t;

/* The answer of deferred work: status, content type (NULL: application/json) and a malloc'd
 * body that the server frees after sending. */
typedef struct wh_admin_reply {
    int status;
    const char *content_type;
    char *body;
    size_t body_len; /* 0: strlen(body) */
} wh_admin_reply_t;

/* Server side: makes env the admin modules' environment and registers the deferred-answer
 * receiver on env->admin_queue. Call once, on the admin loop thread, before it serves. env must
 * outlive the listener. */
void wh_admin_init(const wh_admin_env_t *env);
/* Deferred admin answers not delivered yet (the loop keeps running until this is 0 at shutdown). */
size_t wh_admin_pending(void);
/* The environment given to wh_admin_init, or NULL before it. */
const wh_admin_env_t *wh_admin_env(void);

/* Runs fn(arg, reply) on a worker thread, then answers req from the admin loop with the reply;
 * if the client went away meanwhile the reply is dropped. fn must not touch req. Returns 0, or
 * a WH_E* code when the work could not be started (the caller answers 503). Loop thread only. */
int wh_admin_defer(h2o_req_t *req, void (*fn)(void *arg, wh_admin_reply_t *reply), void *arg);

/* Sends a complete response now: JSON helpers for admin modules. Loop thread only. */
void wh_admin_respond(h2o_req_t *req, int status, const char *content_type, const char *body,
                      size_t len);
void wh_admin_respond_json(h2o_req_t *req, int status, json_t *obj /* stolen */);
void wh_admin_respond_error(h2o_req_t *req, int status, const char *message);

/* 1 when req carries the admin token (Authorization: Bearer) — modules with their own sessions
 * (the dashboard cookie) check those themselves and may call this as the fallback. */
int wh_admin_token_ok(const wh_admin_env_t *env, h2o_req_t *req);

/* An admin module: serve() is offered every admin request whose path starts with prefix and
 * returns 1 when it answered (or will answer: deferred or streaming), 0 to let the server answer
 * 404. */
typedef struct wh_admin_module {
    const char *prefix;
    int (*serve)(void *self, const wh_admin_env_t *env, h2o_req_t *req, h2o_iovec_t path);
    void *self;
} wh_admin_module_t;

#endif
