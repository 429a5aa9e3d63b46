/* Prometheus metrics: a fixed registry of counters, gauges and histograms with bounded label
 * sets, recorded lock-free from hot paths, plus collectors run at scrape time (store depths,
 * dead letters, connection states, scripts), rendered in the text exposition format (0.0.4) at
 * GET /metrics on the admin listener.
 *
 * Label values outside a metric's known set collapse into "other" (HTTP codes into their class,
 * e.g. "4xx"), so no caller can grow the number of series. Recording functions are thread-safe,
 * never allocate and never block; they may be called before anything else. */
#ifndef WAHOOK_METRICS_H
#define WAHOOK_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct wh_admin_env;
struct wh_admin_module;

#define WH_METRICS_MAX_ROUTES 32 /* configured routes kept as label values */

/* ---- setup (call before the threads that record start) ----------------------------------- */

/* The configured webhook route paths, as values of the route label (besides the built-in
 * /healthz, /readyz, /metrics, /dashboard, /api/... ones). Copies up to WH_METRICS_MAX_ROUTES. */
void wh_metrics_set_routes(const char *const *paths, size_t n);

/* Zeroes every recorded value (tests). Not safe while others record. */
void wh_metrics_reset(void);

/* ---- recording (hot paths) ---------------------------------------------------------------- */

/* An HTTP answer: route is the request path or a route template; it is matched to the longest
 * known route that equals it or prefixes it at a '/' ("/api/events/12/retry" → "/api/events"),
 * else "other". wahook_http_requests_total{route,code}. */
void wh_metrics_request(const char *route, int status);

/* A webhook event at ingest: result "accepted", "duplicate", "rejected" (4xx) or
 * "unavailable" (503). wahook_events_received_total{event,result}. */
void wh_metrics_event_received(const char *event, const char *result);

/* One processing run of an event (event "timer" for timers): outcome "done", "retry" or
 * "dead"; seconds the processor spent on it (normalise, handler, commit).
 * wahook_events_processed_total{event,outcome}, wahook_event_processing_seconds{event}. */
void wh_metrics_event_processed(const char *event, const char *outcome, double seconds);

/* One delivery attempt to target ("evolution", "crm", "mail", "alert"): outcome "ok",
 * "retry", "dead" or "misconfigured"; seconds of the transfer.
 * wahook_deliveries_total{target,outcome}, wahook_delivery_seconds{target}. */
void wh_metrics_delivery(const char *target, const char *outcome, double seconds);

/* A script run that failed: kind "error", "timeout" or "memory".
 * wahook_script_errors_total{kind}. */
void wh_metrics_script_error(const char *kind);

/* A request refused by a rate limit: kind "ip", "instance" or "login".
 * wahook_ratelimited_total{kind}. */
void wh_metrics_ratelimited(const char *kind);

#ifndef WH_CIRCUIT_STATES /* shared by deliver.h and metrics.h */
#define WH_CIRCUIT_STATES
enum { WH_CIRCUIT_CLOSED = 0, WH_CIRCUIT_OPEN = 1, WH_CIRCUIT_HALF_OPEN = 2 };
#endif
/* The circuit breaker of target changed: wahook_circuit_state{target} (0 closed, 1 open,
 * 2 half-open). Targets never set are not exported. */
void wh_metrics_circuit_state(const char *target, int state);

/* ---- collectors (scrape time) ------------------------------------------------------------- */

typedef struct wh_metrics_out wh_metrics_out_t;

/* Starts a family: its # HELP and # TYPE lines (type "counter", "gauge" or "untyped"). Every
 * sample of the family must follow before the next family starts. */
void wh_metrics_out_family(wh_metrics_out_t *o, const char *name, const char *type,
                           const char *help);
/* One sample: labels are name/value pairs ending with NULL (NULL for none); values are
 * escaped here. */
void wh_metrics_out_sample(wh_metrics_out_t *o, const char *name, const char *const *labels,
                           double value);

typedef void (*wh_metrics_collect_fn)(wh_metrics_out_t *o, void *ud);
/* Adds a collector run at every scrape, after the registry (at most 16). Returns 0 or
 * WH_EFULL. */
int wh_metrics_add_collector(wh_metrics_collect_fn fn, void *ud);
/* Removes every collector (shutdown, tests). */
void wh_metrics_clear_collectors(void);

/* The whole exposition: the registry, then (when env is not NULL) what the server knows at
 * scrape time — store queue and readiness, inbox depth, retrying events, outbox depth per
 * target, dead letters, connection state per instance (read-only connection to env->db_path),
 * the script version and reloads (env->scripts), normalisation errors (env->processors), the
 * scripts' own counters (metrics_counts) — then the added collectors. A malloc'd
 * NUL-terminated string and its length in *len, or NULL when out of memory. Blocking (SQLite):
 * never on a loop thread. */
char *wh_metrics_render(const struct wh_admin_env *env, size_t *len);

/* The SQL of the store queries the scrape runs, for the EXPLAIN QUERY PLAN test; NULL past the
 * end. */
const char *wh_metrics_sql(size_t i);

/* The admin module serving GET /metrics (prefix "/metrics"). With require_token, the admin
 * bearer token is needed as for the rest of the admin listener (401 otherwise); without, the
 * endpoint is open (config: wahook.admin.metrics-auth: none). 405 for other methods, 503 when
 * two scrapes already run. Rendering goes through wh_admin_defer. */
void wh_metrics_module_init(struct wh_admin_module *m, int require_token);

#endif
