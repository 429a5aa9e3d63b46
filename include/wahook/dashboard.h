/* The dashboard on the admin listener: its static files (runtime/web/, loaded into memory at
 * start), the login that trades the admin token for a random, expiring, server-side session
 * cookie (rate-limited), the connection/QR view of the instances, and the playground's dry runs
 * (POST /api/try, the `wahook try` engine on a worker thread). */
#ifndef WAHOOK_DASHBOARD_H
#define WAHOOK_DASHBOARD_H

#include <h2o.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/admin.h"

typedef struct wh_dashboard wh_dashboard_t;

#define WH_DASHBOARD_COOKIE "wahook_session"

typedef struct wh_dashboard_opts {
    /* Directory of the static files. NULL: "runtime/web" relative to the working directory,
     * then ../runtime/web and ../share/wahook/web next to the running binary. */
    const char *dir;
    const char *token;        /* the admin token; NULL or "" refuses every login */
    int64_t session_ttl_ms;   /* a session's lifetime from login; 0: 12 h */
    size_t max_sessions;      /* live sessions at most (the oldest is evicted); 0: 64 */
    int login_per_minute;     /* login attempts per client address per minute; 0: 10 */
    int secure_cookie;        /* 1: always Secure; 0: only when the request came over TLS */
    int max_dry_runs;         /* playground runs at once; more are answered 429; 0: 2 */
} wh_dashboard_opts_t;

/* Loads the static files and prepares the session table. A missing directory is not an error:
 * it is logged and /dashboard answers 404 with the reason. Returns 0 or WH_ENOMEM / WH_EINVAL
 * with the reason in err. */
int wh_dashboard_new(wh_dashboard_t **out, const wh_dashboard_opts_t *opts, char *err,
                     size_t errlen);
void wh_dashboard_free(wh_dashboard_t *d);

/* 1 when req carries the cookie of a live session — and, when it is not a GET or HEAD, no
 * Origin header naming another site. Thread-safe. */
int wh_dashboard_session_ok(wh_dashboard_t *d, h2o_req_t *req);

/* wh_dashboard_session_ok with a void* first argument, for hooks such as wh_stats_set_auth:
 * wh_stats_set_auth(wh_dashboard_session_cb, dash). */
int wh_dashboard_session_cb(void *dash, h2o_req_t *req);

/* 1 when req is authorised: the admin token as a bearer (wh_admin_token_ok) or a session of d
 * (d may be NULL). Otherwise answers 401 (or 403 for a foreign Origin) and returns 0. Admin
 * loop thread. */
int wh_dashboard_authorize(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req);

/* The directory the static files were loaded from ("" when none was found). */
const char *wh_dashboard_dir(const wh_dashboard_t *d);

/* The admin modules of the dashboard, written to out (at most max); returns how many there are
 * (WH_DASHBOARD_NUM_MODULES). Each answers only its exact path and declines anything else:
 *   "/dashboard"      GET /dashboard (301 to /dashboard/) and /dashboard/<file>: static files,
 *                     no auth (the page holds no data; every data request is authorised)
 *   "/api/login"      POST {"token": …} (JSON or form): sets the session cookie; rate-limited
 *   "/api/logout"     POST: ends the session, expires the cookie
 *   "/api/session"    GET: 200 {"authenticated":true,"via":"session"|"token",…} or 401
 *   "/api/instances"  GET: connection state and latest QR per instance (store read, deferred)
 *   "/api/try"        POST: dry run of the scripts (the playground, deferred) */
#define WH_DASHBOARD_NUM_MODULES 6
size_t wh_dashboard_modules(wh_dashboard_t *d, wh_admin_module_t *out, size_t max);

/* Counters for /metrics and tests: {"sessions","logins","login_failures","login_limited",
 * "dry_runs","dir"}. Thread-safe. */
json_t *wh_dashboard_stats(wh_dashboard_t *d);

/* ---- the playground, runtime/playground.c ------------------------------------------------ */

/* Serves POST /api/try (already authorised by the caller): body is an event envelope, or
 * {"event": {…envelope…}, "state": {…}} to give the contact's prior state. Answers the JSON
 * `wahook try` prints, from a worker thread (wh_admin_defer). */
void wh_playground_serve(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req);

/* The dry run itself, synchronous (the worker's body; exposed for tests): runs the current
 * scripts on body in a fresh VM with the configured limits. Returns the HTTP status (200 when
 * the run happened, whatever the handler did; 400 for a body that is not an event) and sets
 * *result to the JSON answer (a new reference). */
int wh_playground_run(const wh_admin_env_t *env, const char *body, size_t len, json_t **result);

/* Limits the playground's concurrency: 1 when a run may start (then call
 * wh_dashboard_dry_run_end afterwards), 0 when too many run. Thread-safe. */
int wh_dashboard_dry_run_begin(wh_dashboard_t *d);
void wh_dashboard_dry_run_end(wh_dashboard_t *d);

#endif
