/* The configuration file: one directive table drives the parsing of the h2o-style YAML (through
 * libyaml), ${VAR} expansion, defaults, bounds, freeing, validation and the documentation dump. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <jansson.h>
#include <yaml.h>
#include "wahook/config.h"

/* Where a directive may appear. Each context has its own struct the offsets are relative to. */
typedef enum wh__ctx {
    WH__CTX_NONE = -1,
    WH__CTX_GLOBAL = 0, /* wh_config_t */
    WH__CTX_LISTEN,     /* wh_listen_conf_t: one item of listen: */
    WH__CTX_ADMIN,      /* wh_admin_conf_t: under wahook.admin: */
    WH__CTX_HOST,       /* the host name: under hosts: NAME: */
    WH__CTX_PATH,       /* wh_route_conf_t: under paths: /PATH: */
    WH__CTX_WEBHOOK,    /* wh_webhook_conf_t: under wahook.webhook: */
    WH__CTX_COUNT
} wh__ctx_t;

static const char *const wh__ctx_names[WH__CTX_COUNT] = {"global", "listen", "wahook.admin",
                                                         "host",   "path",   "wahook.webhook"};

typedef enum wh__type {
    WH__T_INT,
    WH__T_SIZE,     /* integer with an optional K/M/G (KiB multiples) suffix */
    WH__T_DURATION, /* integer in the base unit, or with an ms/s/m/h suffix */
    WH__T_BOOL,
    WH__T_STRING,
    WH__T_STRLIST,  /* a sequence of scalars or one scalar; empty entries are dropped */
    WH__T_ENUM,     /* stored as the matching value */
    WH__T_ENUM_STR, /* stored as the canonical name */
    WH__T_LISTEN,   /* structural types, handled by their own code */
    WH__T_HOSTS,
    WH__T_PATHS,
    WH__T_BLOCK,   /* a mapping of the directives of another context */
    WH__T_HANDLER, /* the handler of a path */
    WH__T_JSON,    /* any YAML value, kept as a json_t* (scalars typed by the YAML core schema) */
} wh__type_t;

#define WH__F_EMPTY_OK 1 /* a literal "" is a value rather than "use the default" */
#define WH__F_HEADER 2   /* an HTTP header name: checked and lowercased (h2o keeps names lowercase) */

typedef struct wh__enumval {
    const char *name;
    int value;
} wh__enumval_t;

typedef struct wh__directive {
    const char *name; /* dotted path below the context's mapping */
    wh__ctx_t ctx;
    wh__type_t type;
    size_t off, size;            /* the field, relative to the context's struct */
    int64_t min, max;            /* numeric bounds, in the stored unit */
    int64_t unit_ms;             /* durations: the stored unit (1 = ms, 1000 = s) */
    const char *defval;          /* parsed like a configured value; NULL = none */
    int64_t (*dyn_default)(void);/* computed default, when defval is NULL */
    const char *doc_default;     /* how dump shows a computed default */
    const wh__enumval_t *enums;
    wh__ctx_t sub;               /* BLOCK/HANDLER: context of the nested mapping */
    wh_handler_kind_t handler;   /* HANDLER: the kind it mounts */
    int flags;
    const char *help;
} wh__directive_t;

#define WH__AT(t, m) .off = offsetof(t, m), .size = sizeof(((t *)0)->m)
#define WH__KiB ((int64_t)1024)
#define WH__MiB ((int64_t)1024 * 1024)
#define WH__GiB ((int64_t)1024 * 1024 * 1024)

/* The structural depth of a config is small; the budget bounds the work YAML aliases can cause. */
#define WH__MAX_DEPTH 16
#define WH__VISIT_BUDGET 200000
#define WH__NAME_MAX 256
#define WH__MAX_KEYS 4096 /* per mapping: keeps the duplicate-key check cheap */

static int64_t wh__default_threads(void);
static int64_t wh__default_env(void);

static const wh__enumval_t wh__enum_env[] = {
    {"production", WH_ENV_PRODUCTION}, {"development", WH_ENV_DEVELOPMENT}, {NULL, 0}};
static const wh__enumval_t wh__enum_sync[] = {{"full", 1}, {"normal", 0}, {NULL, 0}};
static const wh__enumval_t wh__enum_media[] = {{"drop", 0}, {"keep", 1}, {NULL, 0}};
static const wh__enumval_t wh__enum_alert_format[] = {{"json", 0}, {"slack", 1}, {NULL, 0}};
static const wh__enumval_t wh__enum_level[] = {
    {"debug", 0}, {"info", 1}, {"warn", 2}, {"error", 3}, {NULL, 0}};

_Static_assert(sizeof(wh_env_mode_t) == sizeof(int), "wahook.env is stored as an int");

/* Every directive wahook knows. Defaults are written as they would be in the file. */
static const wh__directive_t wh__directives[] = {
    /* ---- global ---- */
    {.name = "listen", .ctx = WH__CTX_GLOBAL, .type = WH__T_LISTEN,
     .help = "where webhook traffic is accepted: a port, a mapping (port, host, ssl) or a "
             "sequence of them"},
    {.name = "num-threads", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, num_threads), .min = 1, .max = 256,
     .dyn_default = wh__default_threads, .doc_default = "online cores",
     .help = "HTTP event-loop threads"},
    {.name = "limit-request-body", .ctx = WH__CTX_GLOBAL, .type = WH__T_SIZE,
     WH__AT(wh_config_t, limit_request_body), .min = WH__KiB, .max = WH__GiB, .defval = "1M",
     .help = "largest accepted request body (413 above)"},
    {.name = "http1-upgrade-to-http2", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, http2), .defval = "OFF",
     .help = "allow HTTP/2 (h2c upgrade and prior knowledge)"},
    {.name = "error-log", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, error_log), .doc_default = "stderr",
     .help = "file the structured log is appended to; \"-\" = stderr"},
    {.name = "access-log", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, access_log), .doc_default = "none", .help = "access log file"},
    {.name = "hosts", .ctx = WH__CTX_GLOBAL, .type = WH__T_HOSTS,
     .help = "host name (or \"default\") -> paths -> handler"},
    {.name = "wahook.env", .ctx = WH__CTX_GLOBAL, .type = WH__T_ENUM, WH__AT(wh_config_t, env),
     .enums = wh__enum_env, .dyn_default = wh__default_env,
     .doc_default = "$WAHOOK_ENV ($NODE_ENV) or production",
     .help = "production refuses webhook routes without authentication"},
    {.name = "wahook.data-dir", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, data_dir), .defval = "data", .help = "directory of the SQLite store"},
    {.name = "wahook.log-level", .ctx = WH__CTX_GLOBAL, .type = WH__T_ENUM_STR,
     WH__AT(wh_config_t, log_level), .enums = wh__enum_level, .defval = "info",
     .help = "least severe level logged"},
    {.name = "wahook.shutdown-timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, shutdown_timeout_ms), .unit_ms = 1, .min = 0, .max = 3600000,
     .defval = "10s", .help = "how long a stop waits for requests and commits in flight"},
    {.name = "wahook.admin", .ctx = WH__CTX_GLOBAL, .type = WH__T_BLOCK,
     WH__AT(wh_config_t, admin), .sub = WH__CTX_ADMIN,
     .help = "the admin listener: dashboard, admin API, /metrics"},
    {.name = "wahook.dashboard.dir", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, dashboard_dir), .doc_default = "runtime/web, else next to the binary",
     .help = "directory of the dashboard's static files"},
    {.name = "wahook.dashboard.session-ttl", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, dashboard_session_ttl_ms), .unit_ms = 1, .min = 1000,
     .max = 30LL * 24 * 3600 * 1000, .defval = "12h", .help = "lifetime of a dashboard login"},
    {.name = "wahook.dashboard.login-rate-per-minute", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, dashboard_login_rate), .min = 1, .max = 100000, .defval = "10",
     .help = "dashboard login attempts per client address per minute (429 above)"},
    {.name = "wahook.dashboard.secure-cookie", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, dashboard_secure_cookie), .defval = "OFF",
     .help = "mark the session cookie Secure even on plain HTTP (behind a TLS proxy)"},
    {.name = "wahook.dashboard.sse-max-clients", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, sse_max_clients), .min = 1, .max = 4096, .defval = "32",
     .help = "open /api/events/stream connections at most (503 above)"},
    {.name = "wahook.dashboard.sse-buffer", .ctx = WH__CTX_GLOBAL, .type = WH__T_SIZE,
     WH__AT(wh_config_t, sse_buffer), .min = 4 * WH__KiB, .max = 64 * WH__MiB, .defval = "256K",
     .help = "bytes waiting for one event stream before the slow client is cut off"},
    {.name = "wahook.dashboard.sse-heartbeat", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, sse_heartbeat_ms), .unit_ms = 1, .min = 100, .max = 600000,
     .defval = "15s", .help = "interval of the heartbeat comment on event streams"},
    {.name = "wahook.store.synchronous", .ctx = WH__CTX_GLOBAL, .type = WH__T_ENUM,
     WH__AT(wh_config_t, store_sync_full), .enums = wh__enum_sync, .defval = "full",
     .help = "full survives power loss; normal survives a process crash only"},
    {.name = "wahook.store.media", .ctx = WH__CTX_GLOBAL, .type = WH__T_ENUM,
     WH__AT(wh_config_t, store_keep_media), .enums = wh__enum_media, .defval = "drop",
     .help = "drop replaces base64 media by its size and SHA-256; keep stores it"},
    {.name = "wahook.store.queue-size", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, store_queue_size), .min = 1, .max = 10000000, .defval = "65536",
     .help = "events waiting for the store writer before 503"},
    {.name = "wahook.store.batch-size", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, store_batch_size), .min = 1, .max = 100000, .defval = "512",
     .help = "most events committed in one transaction"},
    {.name = "wahook.store.max-size", .ctx = WH__CTX_GLOBAL, .type = WH__T_SIZE,
     WH__AT(wh_config_t, store_max_size), .min = 0, .max = 1024 * 1024 * WH__GiB,
     .defval = "0", .help = "database size above which ingest answers 503; 0 = unlimited"},

    {.name = "wahook.processors", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, processors), .min = 1, .max = 64, .dyn_default = wh__default_threads,
     .doc_default = "online cores",
     .help = "processor threads, each with its own Lua VM; one contact always runs on one"},
    {.name = "wahook.scripts.dir", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, scripts_dir), .defval = "scripts",
     .help = "directory of main.lua and the modules it requires"},
    {.name = "wahook.scripts.timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, script_timeout_ms), .unit_ms = 1, .min = 1, .max = 60000,
     .defval = "1s", .help = "wall deadline of one handler call (handlers do no I/O)"},
    {.name = "wahook.scripts.memory", .ctx = WH__CTX_GLOBAL, .type = WH__T_SIZE,
     WH__AT(wh_config_t, script_memory), .min = WH__MiB, .max = WH__GiB, .defval = "64M",
     .help = "memory cap of each Lua VM"},
    {.name = "wahook.scripts.reload-debounce", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, reload_debounce_ms), .unit_ms = 1, .min = 0, .max = 10000,
     .defval = "200ms", .help = "quiet time after a script change before reloading"},
    {.name = "wahook.scripts.config", .ctx = WH__CTX_GLOBAL, .type = WH__T_JSON,
     WH__AT(wh_config_t, scripts_config), .doc_default = "{}",
     .help = "free-form settings the scripts read as wahook.config (reloaded with them)"},
    {.name = "wahook.processing.max-attempts", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, max_attempts), .min = 1, .max = 100, .defval = "5",
     .help = "failed handler runs before an event is dead"},
    {.name = "wahook.processing.retry-base", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, retry_base_ms), .unit_ms = 1, .min = 1, .max = 3600000,
     .defval = "1s", .help = "first retry wait; doubles each attempt, with jitter"},
    {.name = "wahook.processing.retry-max", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, retry_max_ms), .unit_ms = 1, .min = 1, .max = 86400000,
     .defval = "5m", .help = "longest single retry wait"},
    {.name = "wahook.processing.retry-total", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, retry_total_ms), .unit_ms = 1, .min = 1, .max = 7 * 86400000LL,
     .defval = "1h",
     .help = "an event failing for longer than this since it arrived is dead (it holds back "
             "its contact's later events meanwhile)"},
    {.name = "wahook.processing.poll-interval", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, poll_interval_ms), .unit_ms = 1, .min = 10, .max = 3600000,
     .defval = "1s",
     .help = "fallback re-scan interval; committed events wake processors at once anyway"},

    {.name = "wahook.delivery.threads", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, deliverers), .min = 1, .max = 16, .defval = "1",
     .help = "deliverer threads, each with many transfers in flight"},
    {.name = "wahook.delivery.max-attempts", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, delivery_max_attempts), .min = 1, .max = 1000, .defval = "10",
     .help = "failed deliveries before an action is dead"},
    {.name = "wahook.delivery.retry-base", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, delivery_retry_base_ms), .unit_ms = 1, .min = 1, .max = 3600000, .defval = "2s",
     .help = "first retry wait; doubles each attempt, with jitter"},
    {.name = "wahook.delivery.retry-max", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, delivery_retry_max_ms), .unit_ms = 1, .min = 1, .max = 86400000, .defval = "10m",
     .help = "longest single retry wait"},
    {.name = "wahook.delivery.retry-total", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, delivery_retry_total_ms), .unit_ms = 1, .min = 1, .max = 30 * 86400000LL, .defval = "24h",
     .help = "an action failing for longer than this is dead"},
    {.name = "wahook.delivery.circuit-failures", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, circuit_failures), .min = 1, .max = 1000, .defval = "5",
     .help = "consecutive failures that open a target's circuit"},
    {.name = "wahook.delivery.circuit-open", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, circuit_open_ms), .unit_ms = 1, .min = 10, .max = 3600000, .defval = "30s",
     .help = "time an open circuit waits before one probe"},
    {.name = "wahook.delivery.dead-alert-interval", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, dead_alert_interval_ms), .unit_ms = 1, .min = 0, .max = 86400000, .defval = "15m",
     .help = "at most one dead-letter alert per target per interval"},
    {.name = "wahook.evolution.url", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, evolution.url), .doc_default = "none",
     .help = "base URL of the target"},
    {.name = "wahook.evolution.api-key", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, evolution.api_key), .doc_default = "none",
     .help = "credential sent to the target"},
    {.name = "wahook.evolution.tls-verify", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, evolution.tls_verify), .defval = "ON",
     .help = "verify the peer certificate"},
    {.name = "wahook.evolution.rate-per-minute", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, evolution.rate_per_min), .min = 1, .max = 1000000, .defval = "60",
     .help = "requests per minute at most"},
    {.name = "wahook.evolution.burst", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, evolution.burst), .min = 1, .max = 100000, .defval = "10",
     .help = "requests allowed at once above the rate"},
    {.name = "wahook.evolution.concurrency", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, evolution.concurrency), .min = 1, .max = 1024, .defval = "4",
     .help = "transfers in flight at most"},
    {.name = "wahook.evolution.timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, evolution.timeout_ms), .unit_ms = 1, .min = 100, .max = 600000, .defval = "60s",
     .help = "whole-transfer timeout"},
    {.name = "wahook.evolution.connect-timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, evolution.connect_timeout_ms), .unit_ms = 1, .min = 10, .max = 600000, .defval = "5s",
     .help = "connect timeout"},
    {.name = "wahook.evolution.echo-grace", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, evolution.echo_grace_ms), .unit_ms = 1, .min = 0, .max = 3600000, .defval = "30s",
     .help = "after a sendText timeout, wait this long for its send.message echo before sending again"},
    {.name = "wahook.crm.url", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, crm.url), .doc_default = "none",
     .help = "base URL of the target"},
    {.name = "wahook.crm.api-key", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, crm.api_key), .doc_default = "none",
     .help = "credential sent to the target"},
    {.name = "wahook.crm.module", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, crm.module), .defval = "crm.twenty",
     .help = "Lua module mapping CRM operations to HTTP (deliver(op, fields, ctx))"},
    {.name = "wahook.crm.tls-verify", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, crm.tls_verify), .defval = "ON",
     .help = "verify the peer certificate"},
    {.name = "wahook.crm.rate-per-minute", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, crm.rate_per_min), .min = 1, .max = 1000000, .defval = "85",
     .help = "requests per minute at most"},
    {.name = "wahook.crm.burst", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, crm.burst), .min = 1, .max = 100000, .defval = "5",
     .help = "requests allowed at once above the rate"},
    {.name = "wahook.crm.concurrency", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, crm.concurrency), .min = 1, .max = 1024, .defval = "2",
     .help = "transfers in flight at most"},
    {.name = "wahook.crm.timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, crm.timeout_ms), .unit_ms = 1, .min = 100, .max = 600000, .defval = "30s",
     .help = "whole-transfer timeout"},
    {.name = "wahook.crm.connect-timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, crm.connect_timeout_ms), .unit_ms = 1, .min = 10, .max = 600000, .defval = "5s",
     .help = "connect timeout"},
    {.name = "wahook.smtp.url", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, smtp.url), .doc_default = "none",
     .help = "smtp://host:587 or smtps://host:465"},
    {.name = "wahook.smtp.user", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, smtp.user), .doc_default = "none",
     .help = "SMTP user"},
    {.name = "wahook.smtp.password", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, smtp.password), .doc_default = "none",
     .help = "SMTP password"},
    {.name = "wahook.smtp.from", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRING,
     WH__AT(wh_config_t, smtp.from), .defval = "wahook@localhost",
     .help = "sender address"},
    {.name = "wahook.smtp.starttls", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, smtp.starttls), .defval = "OFF",
     .help = "require STARTTLS on smtp:// URLs"},
    {.name = "wahook.smtp.tls-verify", .ctx = WH__CTX_GLOBAL, .type = WH__T_BOOL,
     WH__AT(wh_config_t, smtp.tls_verify), .defval = "ON",
     .help = "verify the peer certificate"},
    {.name = "wahook.smtp.rate-per-minute", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, smtp.rate_per_min), .min = 1, .max = 1000000, .defval = "30",
     .help = "requests per minute at most"},
    {.name = "wahook.smtp.burst", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, smtp.burst), .min = 1, .max = 100000, .defval = "5",
     .help = "requests allowed at once above the rate"},
    {.name = "wahook.smtp.concurrency", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, smtp.concurrency), .min = 1, .max = 1024, .defval = "2",
     .help = "transfers in flight at most"},
    {.name = "wahook.smtp.timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, smtp.timeout_ms), .unit_ms = 1, .min = 100, .max = 600000, .defval = "30s",
     .help = "whole-transfer timeout"},
    {.name = "wahook.smtp.connect-timeout", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, smtp.connect_timeout_ms), .unit_ms = 1, .min = 10, .max = 600000, .defval = "5s",
     .help = "connect timeout"},
    {.name = "wahook.alerts.emails", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRLIST,
     WH__AT(wh_config_t, alert_emails), .help = "e-mail recipients of alerts"},
    {.name = "wahook.alerts.urls", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRLIST,
     WH__AT(wh_config_t, alert_urls), .help = "URLs alerts are POSTed to as JSON"},
    {.name = "wahook.alerts.format", .ctx = WH__CTX_GLOBAL, .type = WH__T_ENUM_STR,
     WH__AT(wh_config_t, alert_format), .enums = wh__enum_alert_format, .defval = "json",
     .help = "json posts {kind, text, fields, instance, at}; slack posts {\"text\": …}"},
    {.name = "wahook.watchdog.interval", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, watchdog_interval_ms), .unit_ms = 1, .min = 0, .max = 86400000, .defval = "60s",
     .help = "how often Evolution connectionState is polled; 0 turns the watchdog off"},
    {.name = "wahook.watchdog.silence", .ctx = WH__CTX_GLOBAL, .type = WH__T_DURATION,
     WH__AT(wh_config_t, watchdog_silence_ms), .unit_ms = 1, .min = 0, .max = 7 * 86400000LL, .defval = "30m",
     .help = "alert when no webhook arrived for this long; 0 = never"},
    {.name = "wahook.watchdog.auth-failures-per-minute", .ctx = WH__CTX_GLOBAL, .type = WH__T_INT,
     WH__AT(wh_config_t, watchdog_auth_failures), .min = 0, .max = 1000000, .defval = "20",
     .help = "authentication rejections per minute that raise an alert; 0 = never"},
    {.name = "wahook.watchdog.instances", .ctx = WH__CTX_GLOBAL, .type = WH__T_STRLIST,
     WH__AT(wh_config_t, watchdog_instances), .help = "instances whose connection state is watched (INSTANCE_NAME)"},

    /* ---- listen ---- */
    {.name = "port", .ctx = WH__CTX_LISTEN, .type = WH__T_INT, WH__AT(wh_listen_conf_t, port),
     .min = 1, .max = 65535, .doc_default = "required", .help = "TCP port"},
    {.name = "host", .ctx = WH__CTX_LISTEN, .type = WH__T_STRING, WH__AT(wh_listen_conf_t, host),
     .doc_default = "every address", .help = "address to bind"},
    {.name = "ssl.certificate-file", .ctx = WH__CTX_LISTEN, .type = WH__T_STRING,
     WH__AT(wh_listen_conf_t, certificate_file), .help = "PEM certificate chain (TLS)"},
    {.name = "ssl.key-file", .ctx = WH__CTX_LISTEN, .type = WH__T_STRING,
     WH__AT(wh_listen_conf_t, key_file), .help = "PEM private key (TLS)"},

    /* ---- wahook.admin ---- */
    {.name = "host", .ctx = WH__CTX_ADMIN, .type = WH__T_STRING, WH__AT(wh_admin_conf_t, host),
     .defval = "127.0.0.1", .help = "address of the admin listener"},
    {.name = "port", .ctx = WH__CTX_ADMIN, .type = WH__T_INT, WH__AT(wh_admin_conf_t, port),
     .min = 0, .max = 65535, .defval = "8081", .help = "port of the admin listener; 0 disables it"},
    {.name = "token", .ctx = WH__CTX_ADMIN, .type = WH__T_STRING, WH__AT(wh_admin_conf_t, token),
     .doc_default = "none", .help = "bearer token of the admin API (WAHOOK_ADMIN_TOKEN)"},

    /* ---- hosts: NAME: ---- */
    {.name = "paths", .ctx = WH__CTX_HOST, .type = WH__T_PATHS,
     .help = "path (starting with /) -> exactly one handler"},

    /* ---- paths: /PATH: ---- */
    {.name = "wahook.webhook", .ctx = WH__CTX_PATH, .type = WH__T_HANDLER,
     WH__AT(wh_route_conf_t, webhook), .sub = WH__CTX_WEBHOOK, .handler = WH_HANDLER_WEBHOOK,
     .help = "receives Evolution API webhooks"},
    {.name = "wahook.health", .ctx = WH__CTX_PATH, .type = WH__T_HANDLER, .sub = WH__CTX_NONE,
     .handler = WH_HANDLER_HEALTH, .help = "ON serves /healthz and /readyz under the path"},

    /* ---- wahook.webhook ---- */
    {.name = "auth.hmac.secrets", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, auth.hmac.secrets),
     .help = "HMAC-SHA256 keys of the raw body; the method is on when one is set"},
    {.name = "auth.hmac.header", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, auth.hmac.header), .defval = "x-webhook-signature",
     .flags = WH__F_HEADER, .help = "header carrying the signature"},
    {.name = "auth.hmac.prefix", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, auth.hmac.prefix), .defval = "sha256=", .flags = WH__F_EMPTY_OK,
     .help = "text before the hex digest (\"\" for none)"},
    {.name = "auth.token.secrets", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, auth.token.secrets), .help = "static header tokens"},
    {.name = "auth.token.header", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, auth.token.header), .defval = "x-webhook-token",
     .flags = WH__F_HEADER, .help = "header carrying the token"},
    {.name = "auth.jwt.secrets", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, auth.jwt.secrets),
     .help = "HS256 keys of Evolution's Bearer JWT (jwt_key)"},
    {.name = "auth.jwt.leeway", .ctx = WH__CTX_WEBHOOK, .type = WH__T_DURATION,
     WH__AT(wh_webhook_conf_t, auth.jwt_leeway), .unit_ms = 1000, .min = 0, .max = 86400,
     .defval = "30m", .help = "time past exp still accepted (Evolution reuses a token across retries)"},
    {.name = "auth.jwt.app", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, auth.jwt_app), .defval = "evolution", .help = "required app claim"},
    {.name = "auth.jwt.action", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, auth.jwt_action), .defval = "webhook",
     .help = "required action claim"},
    {.name = "auth.apikey.secrets", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, auth.apikey.secrets),
     .help = "instance tokens accepted in the body's apikey field"},
    {.name = "verify-token", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRING,
     WH__AT(wh_webhook_conf_t, verify_token), .doc_default = "off",
     .help = "answers the GET hub.verify_token handshake; empty = off"},
    {.name = "allow", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, allow), .doc_default = "everyone",
     .help = "CIDRs allowed to post (403 otherwise)"},
    {.name = "trusted-proxies", .ctx = WH__CTX_WEBHOOK, .type = WH__T_STRLIST,
     WH__AT(wh_webhook_conf_t, trusted_proxies), .doc_default = "none",
     .help = "CIDRs whose X-Forwarded-For is believed"},
    {.name = "rate-limit.ip-per-minute", .ctx = WH__CTX_WEBHOOK, .type = WH__T_INT,
     WH__AT(wh_webhook_conf_t, ip_rate_per_min), .min = 1, .max = 1000000000, .defval = "100",
     .help = "unauthenticated or failing requests per client IP"},
    {.name = "rate-limit.instance-per-minute", .ctx = WH__CTX_WEBHOOK, .type = WH__T_INT,
     WH__AT(wh_webhook_conf_t, instance_rate_per_min), .min = 1, .max = 1000000000,
     .defval = "6000", .help = "authenticated requests per instance"},
    {.name = "rate-limit.instance-burst", .ctx = WH__CTX_WEBHOOK, .type = WH__T_INT,
     WH__AT(wh_webhook_conf_t, instance_burst), .min = 1, .max = 1000000000, .defval = "1000",
     .help = "burst above the per-instance rate"},
    {.name = "commit-timeout", .ctx = WH__CTX_WEBHOOK, .type = WH__T_DURATION,
     WH__AT(wh_webhook_conf_t, commit_timeout_ms), .unit_ms = 1, .min = 1, .max = 600000,
     .defval = "10s", .help = "a request waiting for its commit answers 503 after this"},
    {.name = "offload-threshold", .ctx = WH__CTX_WEBHOOK, .type = WH__T_SIZE,
     WH__AT(wh_webhook_conf_t, offload_threshold), .min = 0, .max = WH__GiB, .defval = "256K",
     .help = "bodies above this are parsed off the event loop"},
};

typedef struct wh__parser {
    wh_config_t *conf;
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t errlen;
    long budget;
} wh__parser_t;

static int64_t wh__default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : n;
}

static int64_t wh__default_env(void)
{
    const char *v = wh_env_get("WAHOOK_ENV");
    return v != NULL && strcasecmp(v, "development") == 0 ? WH_ENV_DEVELOPMENT
                                                           : WH_ENV_PRODUCTION;
}

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Formats "file:line:column: message" at node; returns WH_EINVAL for the caller to pass on. */
__attribute__((format(printf, 3, 4))) static int wh__fail(wh__parser_t *p, const yaml_node_t *node,
                                                          const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    wh__seterr(p->err, p->errlen, "%s:%zu:%zu: %s", p->file, node->start_mark.line + 1,
               node->start_mark.column + 1, msg);
    return WH_EINVAL;
}

static int wh__oom(wh__parser_t *p)
{
    wh__seterr(p->err, p->errlen, "%s: out of memory", p->file);
    return WH_ENOMEM;
}

/* The scalar as written (never its expansion, which may hold a secret), shortened for messages. */
static const char *wh__src(const yaml_node_t *node, char *buf, size_t len)
{
    if (node->type != YAML_SCALAR_NODE)
        return node->type == YAML_MAPPING_NODE ? "a mapping" : "a sequence";
    size_t n = node->data.scalar.length;
    if (n + 3 > len)
        snprintf(buf, len, "'%.*s...'", (int)(len - 6), (const char *)node->data.scalar.value);
    else
        snprintf(buf, len, "'%.*s'", (int)n, (const char *)node->data.scalar.value);
    return buf;
}

static const char *wh__kind_name(const yaml_node_t *node)
{
    switch (node->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a sequence";
    default: return "a scalar";
    }
}

/* A plain "", "~" or "null": YAML's way to say nothing was given. */
static int wh__is_null(const yaml_node_t *node)
{
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *v = (const char *)node->data.scalar.value;
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

/* Expands ${VAR} in a scalar into a malloc'd string. what names the directive for messages. */
static int wh__expand_scalar(wh__parser_t *p, const yaml_node_t *node, const char *what,
                             char **out)
{
    char reason[200];
    if (node->type != YAML_SCALAR_NODE)
        return wh__fail(p, node, "'%s' expects a single value, not %s", what, wh__kind_name(node));
    if (memchr(node->data.scalar.value, '\0', node->data.scalar.length) != NULL)
        return wh__fail(p, node, "'%s': NUL character in value", what);
    reason[0] = '\0';
    *out = wh_env_expand((const char *)node->data.scalar.value, reason, sizeof(reason));
    if (*out == NULL) {
        if (strcmp(reason, "out of memory") == 0)
            return wh__oom(p);
        return wh__fail(p, node, "'%s': %s", what, reason);
    }
    return 0;
}

/* ---- directive lookup ---- */

static const wh__directive_t *wh__find(wh__ctx_t ctx, const char *name)
{
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__directives); i++)
        if ((ctx == WH__CTX_NONE || wh__directives[i].ctx == ctx) &&
            strcmp(wh__directives[i].name, name) == 0)
            return &wh__directives[i];
    return NULL;
}

/* Whether name is a dotted prefix of some directive ("auth" of "auth.hmac.secrets"). */
static int wh__is_prefix(wh__ctx_t ctx, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__directives); i++) {
        const wh__directive_t *d = &wh__directives[i];
        if ((ctx == WH__CTX_NONE || d->ctx == ctx) && strncmp(d->name, name, n) == 0 &&
            d->name[n] == '.')
            return 1;
    }
    return 0;
}

/* ---- typed values ---- */

static void wh__store_int(void *field, size_t size, int64_t v)
{
    switch (size) {
    case sizeof(int64_t): { int64_t x = v; memcpy(field, &x, sizeof(x)); break; }
    case sizeof(int): { int x = (int)v; memcpy(field, &x, sizeof(x)); break; }
    case sizeof(uint16_t): { uint16_t x = (uint16_t)v; memcpy(field, &x, sizeof(x)); break; }
    default: abort(); /* a table entry with an unsupported field width */
    }
}

static void wh__store_str(void *field, char *s)
{
    char **slot = field;
    free(*slot);
    *slot = s;
}

/* Parses an unsigned decimal prefix; returns the end or NULL on overflow or no digits. */
static const char *wh__parse_digits(const char *s, int64_t *out)
{
    int64_t v = 0;
    const char *q = s;
    while (*q >= '0' && *q <= '9') {
        int d = *q - '0';
        if (v > (INT64_MAX - d) / 10)
            return NULL;
        v = v * 10 + d;
        q++;
    }
    if (q == s)
        return NULL;
    *out = v;
    return q;
}

static int wh__parse_int(const char *s, int64_t *out)
{
    int neg = 0;
    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    const char *end = wh__parse_digits(s, out);
    if (end == NULL || *end != '\0')
        return -1;
    if (neg)
        *out = -*out;
    return 0;
}

static int wh__mul(int64_t a, int64_t b, int64_t *out)
{
    if (a != 0 && b > INT64_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

static int wh__parse_size(const char *s, int64_t *out)
{
    int64_t v, mult = 1;
    const char *end = wh__parse_digits(s, &v);
    if (end == NULL)
        return -1;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mult = WH__KiB; end++; break;
    case 'm': case 'M': mult = WH__MiB; end++; break;
    case 'g': case 'G': mult = WH__GiB; end++; break;
    default: return -1;
    }
    if (*end != '\0')
        return -1;
    return wh__mul(v, mult, out);
}

/* Returns 0, -1 for bad syntax, -2 for a value that is not a whole number of the stored unit. */
static int wh__parse_duration(const char *s, int64_t unit_ms, int64_t *out)
{
    int64_t v, mult, ms;
    const char *end = wh__parse_digits(s, &v);
    if (end == NULL)
        return -1;
    if (*end == '\0') { /* a bare number is in the directive's own unit */
        *out = v;
        return 0;
    }
    if (strcasecmp(end, "ms") == 0)
        mult = 1;
    else if (strcasecmp(end, "s") == 0)
        mult = 1000;
    else if (strcasecmp(end, "m") == 0)
        mult = 60 * 1000;
    else if (strcasecmp(end, "h") == 0)
        mult = 3600 * 1000;
    else
        return -1;
    if (wh__mul(v, mult, &ms) != 0)
        return -1;
    if (ms % unit_ms != 0)
        return -2;
    *out = ms / unit_ms;
    return 0;
}

static int wh__parse_bool(const char *s)
{
    static const char *const on[] = {"on", "true", "yes"}, *const off[] = {"off", "false", "no"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(on); i++) {
        if (strcasecmp(s, on[i]) == 0)
            return 1;
        if (strcasecmp(s, off[i]) == 0)
            return 0;
    }
    return -1;
}

/* Writes a number in the notation of its type (1G, 10s) for bounds and the dump. */
static void wh__fmt_value(const wh__directive_t *d, int64_t v, char *buf, size_t len)
{
    if (d->type == WH__T_SIZE && v != 0) {
        if (v % WH__GiB == 0)
            snprintf(buf, len, "%" PRId64 "G", v / WH__GiB);
        else if (v % WH__MiB == 0)
            snprintf(buf, len, "%" PRId64 "M", v / WH__MiB);
        else if (v % WH__KiB == 0)
            snprintf(buf, len, "%" PRId64 "K", v / WH__KiB);
        else
            snprintf(buf, len, "%" PRId64, v);
    } else if (d->type == WH__T_DURATION && v != 0) {
        int64_t ms = v * d->unit_ms;
        if (ms % 3600000 == 0)
            snprintf(buf, len, "%" PRId64 "h", ms / 3600000);
        else if (ms % 60000 == 0)
            snprintf(buf, len, "%" PRId64 "m", ms / 60000);
        else if (ms % 1000 == 0)
            snprintf(buf, len, "%" PRId64 "s", ms / 1000);
        else
            snprintf(buf, len, "%" PRId64 "ms", ms);
    } else {
        snprintf(buf, len, "%" PRId64, v);
    }
}

static void wh__fmt_enum(const wh__directive_t *d, const char *sep, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const wh__enumval_t *e = d->enums; e->name != NULL && n < len; e++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", e == d->enums ? "" : sep, e->name);
}

/* An RFC 9110 token: the characters a header name may have. */
static int wh__is_header_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && strchr("!#$%&'*+-.^_`|~", *s) == NULL)
            return 0;
    return 1;
}

/* Stores the non-empty text s as directive d. node positions errors; NULL means s is a
 * built-in default, whose failure is a bug in the table. */
static int wh__set_typed(wh__parser_t *p, const wh__directive_t *d, void *base, const char *s,
                         const yaml_node_t *node)
{
    void *field = (char *)base + d->off;
    char src[80], lo[32], hi[32], opts[96];
    int64_t v = 0;
    int r;

    if (node == NULL) {
        /* Defaults go through the same code; keep messages working without a position. */
        static const yaml_node_t nonode = {
            .type = YAML_SCALAR_NODE, .data = {.scalar = {.value = (yaml_char_t *)""}}};
        wh__parser_t dp = *p;
        dp.file = "(built-in default)";
        int rc = wh__set_typed(&dp, d, base, s, &nonode);
        if (rc == WH_EINVAL) {
            fprintf(stderr, "wahook: bad default for '%s': %s\n", d->name, p->err ? p->err : "");
            abort();
        }
        return rc;
    }

    switch (d->type) {
    case WH__T_INT:
        if (wh__parse_int(s, &v) != 0)
            return wh__fail(p, node, "'%s' must be an integer, got %s", d->name,
                            wh__src(node, src, sizeof(src)));
        goto bounds;
    case WH__T_SIZE:
        if (wh__parse_size(s, &v) != 0)
            return wh__fail(p, node,
                            "'%s' must be a size (a number with an optional K, M or G suffix), "
                            "got %s",
                            d->name, wh__src(node, src, sizeof(src)));
        goto bounds;
    case WH__T_DURATION:
        r = wh__parse_duration(s, d->unit_ms, &v);
        if (r == -2)
            return wh__fail(p, node, "'%s' must be a whole number of seconds, got %s", d->name,
                            wh__src(node, src, sizeof(src)));
        if (r != 0)
            return wh__fail(p, node,
                            "'%s' must be a duration (a number of %s, or with an ms, s, m or h "
                            "suffix), got %s",
                            d->name, d->unit_ms == 1 ? "milliseconds" : "seconds",
                            wh__src(node, src, sizeof(src)));
        goto bounds;
    case WH__T_BOOL:
        r = wh__parse_bool(s);
        if (r < 0)
            return wh__fail(p, node, "'%s' must be ON or OFF, got %s", d->name,
                            wh__src(node, src, sizeof(src)));
        wh__store_int(field, d->size, r);
        return 0;
    case WH__T_ENUM:
    case WH__T_ENUM_STR:
        for (const wh__enumval_t *e = d->enums; e->name != NULL; e++) {
            if (strcasecmp(s, e->name) != 0)
                continue;
            if (d->type == WH__T_ENUM) {
                wh__store_int(field, d->size, e->value);
            } else {
                char *c = strdup(e->name);
                if (c == NULL)
                    return wh__oom(p);
                wh__store_str(field, c);
            }
            return 0;
        }
        wh__fmt_enum(d, "|", opts, sizeof(opts));
        return wh__fail(p, node, "'%s' must be one of %s, got %s", d->name, opts,
                        wh__src(node, src, sizeof(src)));
    case WH__T_STRING: {
        if ((d->flags & WH__F_HEADER) && !wh__is_header_name(s))
            return wh__fail(p, node, "'%s' must be an HTTP header name, got %s", d->name,
                            wh__src(node, src, sizeof(src)));
        char *c = strdup(s);
        if (c == NULL)
            return wh__oom(p);
        if (d->flags & WH__F_HEADER)
            for (char *q = c; *q != '\0'; q++)
                *q = (char)tolower((unsigned char)*q);
        wh__store_str(field, c);
        return 0;
    }
    case WH__T_STRLIST: {
        wh_strlist_t *l = field;
        wh_strlist_clear(l);
        if (wh_strlist_push(l, s, strlen(s)) != 0)
            return wh__oom(p);
        return 0;
    }
    default:
        abort(); /* structural types never reach here */
    }

bounds:
    if (v < d->min || v > d->max) {
        wh__fmt_value(d, d->min, lo, sizeof(lo));
        wh__fmt_value(d, d->max, hi, sizeof(hi));
        return wh__fail(p, node, "'%s' must be between %s and %s, got %s", d->name, lo, hi,
                        wh__src(node, src, sizeof(src)));
    }
    wh__store_int(field, d->size, v);
    return 0;
}

/* Applies d's default. node is the empty value that asked for it (NULL while initialising). */
static int wh__set_default(wh__parser_t *p, const wh__directive_t *d, void *base,
                           const yaml_node_t *node)
{
    void *field = (char *)base + d->off;
    if (d->defval != NULL)
        return wh__set_typed(p, d, base, d->defval, NULL);
    if (d->dyn_default != NULL) {
        wh__store_int(field, d->size, d->dyn_default());
        return 0;
    }
    switch (d->type) {
    case WH__T_STRING:
        wh__store_str(field, NULL);
        return 0;
    case WH__T_STRLIST:
        wh_strlist_clear(field);
        return 0;
    default:
        if (node != NULL)
            return wh__fail(p, node, "'%s' requires a value", d->name);
        return 0;
    }
}

static int wh__apply_defaults(wh__parser_t *p, wh__ctx_t ctx, void *base)
{
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__directives); i++) {
        const wh__directive_t *d = &wh__directives[i];
        if (d->ctx == ctx && (d->defval != NULL || d->dyn_default != NULL)) {
            int rc = wh__set_default(p, d, base, NULL);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* A scalar-typed directive: expand, then empty means "the default", else type and store. */
static int wh__apply_scalar(wh__parser_t *p, const wh__directive_t *d, void *base,
                            const yaml_node_t *val)
{
    char *s = NULL;
    int rc, is_null = wh__is_null(val);

    if (val->type != YAML_SCALAR_NODE)
        return wh__fail(p, val, "'%s' expects a single value, not %s", d->name,
                        wh__kind_name(val));
    if (!is_null && (rc = wh__expand_scalar(p, val, d->name, &s)) != 0)
        return rc;
    if (s == NULL || s[0] == '\0') {
        /* Only a literal "" in the file is an empty value; an empty expansion is "unset". */
        if ((d->flags & WH__F_EMPTY_OK) && !is_null && val->data.scalar.length == 0)
            rc = wh__set_typed(p, d, base, "", val);
        else
            rc = wh__set_default(p, d, base, val);
    } else {
        rc = wh__set_typed(p, d, base, s, val);
    }
    free(s);
    return rc;
}

static int wh__apply_strlist(wh__parser_t *p, const wh__directive_t *d, void *base,
                             const yaml_node_t *val)
{
    wh_strlist_t *l = (wh_strlist_t *)((char *)base + d->off);
    if (val->type == YAML_SCALAR_NODE)
        return wh__apply_scalar(p, d, base, val);
    if (val->type != YAML_SEQUENCE_NODE)
        return wh__fail(p, val, "'%s' expects a string or a sequence of strings, not %s",
                        d->name, wh__kind_name(val));
    wh_strlist_clear(l);
    for (yaml_node_item_t *it = val->data.sequence.items.start;
         it < val->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, *it);
        char *s = NULL;
        int rc;
        if (item == NULL)
            continue;
        if (item->type != YAML_SCALAR_NODE)
            return wh__fail(p, item, "'%s' entries must be strings, not %s", d->name,
                            wh__kind_name(item));
        if (wh__is_null(item))
            continue;
        if ((rc = wh__expand_scalar(p, item, d->name, &s)) != 0)
            return rc;
        /* An unset ${WEBHOOK_SECRET_PREVIOUS} drops out instead of becoming an empty secret. */
        if (s[0] != '\0' && wh_strlist_push(l, s, strlen(s)) != 0) {
            free(s);
            return wh__oom(p);
        }
        free(s);
    }
    return 0;
}

static int wh__apply_map(wh__parser_t *p, wh__ctx_t ctx, void *base, const yaml_node_t *map,
                         const char *prefix, int depth);

static int wh__add_listener(wh__parser_t *p, const yaml_node_t *node, int depth)
{
    wh_config_t *conf = p->conf;
    int rc;

    if (conf->num_listen >= WH_MAX_LISTENERS)
        return wh__fail(p, node, "too many listeners (at most %d)", WH_MAX_LISTENERS);
    wh_listen_conf_t *l = &conf->listen[conf->num_listen++];
    if ((rc = wh__apply_defaults(p, WH__CTX_LISTEN, l)) != 0)
        return rc;
    if (wh__is_null(node))
        return wh__fail(p, node, "'listen' requires a port");
    if (node->type == YAML_SCALAR_NODE) { /* listen: 8080 */
        if ((rc = wh__apply_scalar(p, wh__find(WH__CTX_LISTEN, "port"), l, node)) != 0)
            return rc;
    } else if (node->type == YAML_MAPPING_NODE) {
        if ((rc = wh__apply_map(p, WH__CTX_LISTEN, l, node, NULL, depth + 1)) != 0)
            return rc;
    } else {
        return wh__fail(p, node, "'listen' expects a port, a mapping or a sequence of them");
    }
    if (l->port == 0)
        return wh__fail(p, node, "'listen' requires a 'port'");
    if ((l->certificate_file == NULL) != (l->key_file == NULL))
        return wh__fail(p, node, "'ssl' requires both 'certificate-file' and 'key-file'");
    return 0;
}

static int wh__apply_listen(wh__parser_t *p, const yaml_node_t *val, int depth)
{
    if (val->type != YAML_SEQUENCE_NODE)
        return wh__add_listener(p, val, depth);
    for (yaml_node_item_t *it = val->data.sequence.items.start;
         it < val->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, *it);
        int rc;
        if (item != NULL && (rc = wh__add_listener(p, item, depth)) != 0)
            return rc;
    }
    return 0;
}

/* Rejects a key that appeared earlier in the same mapping: libyaml keeps both silently. */
static int wh__check_dup_key(wh__parser_t *p, const yaml_node_t *map, yaml_node_pair_t *pair,
                             const yaml_node_t *key)
{
    if (pair - map->data.mapping.pairs.start >= WH__MAX_KEYS)
        return wh__fail(p, key, "too many keys in one mapping (at most %d)", WH__MAX_KEYS);
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < pair; q++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, q->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE &&
            k->data.scalar.length == key->data.scalar.length &&
            memcmp(k->data.scalar.value, key->data.scalar.value, k->data.scalar.length) == 0)
            return wh__fail(p, key, "duplicate key '%.*s'", (int)key->data.scalar.length,
                            (const char *)key->data.scalar.value);
    }
    return 0;
}

/* Iterates a mapping whose keys are names (hosts, paths), giving each expanded key. */
typedef int (*wh__named_cb)(wh__parser_t *p, const char *name, const yaml_node_t *key,
                            const yaml_node_t *val, void *arg, int depth);

static int wh__each_named(wh__parser_t *p, const char *what, const yaml_node_t *map,
                          wh__named_cb cb, void *arg, int depth)
{
    if (wh__is_null(map))
        return 0;
    if (map->type != YAML_MAPPING_NODE)
        return wh__fail(p, map, "'%s' expects a mapping, not %s", what, wh__kind_name(map));
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(p->doc, pair->key);
        yaml_node_t *val = yaml_document_get_node(p->doc, pair->value);
        char *name = NULL;
        int rc;
        if (key == NULL || val == NULL)
            continue;
        if (--p->budget < 0)
            return wh__fail(p, key, "configuration too complex");
        if (key->type != YAML_SCALAR_NODE)
            return wh__fail(p, key, "keys under '%s' must be scalars", what);
        if ((rc = wh__check_dup_key(p, map, pair, key)) != 0)
            return rc;
        if ((rc = wh__expand_scalar(p, key, what, &name)) != 0)
            return rc;
        rc = cb(p, name, key, val, arg, depth);
        free(name);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int wh__on_path(wh__parser_t *p, const char *path, const yaml_node_t *key,
                       const yaml_node_t *val, void *arg, int depth)
{
    const char *host = arg;
    wh_config_t *conf = p->conf;
    int rc;

    if (path[0] != '/')
        return wh__fail(p, key, "path '%s' must start with '/'", path);
    for (size_t i = 0; i < conf->num_routes; i++)
        if (strcmp(conf->routes[i].host, host) == 0 && strcmp(conf->routes[i].path, path) == 0)
            return wh__fail(p, key, "path '%s' is configured twice on host '%s'", path, host);
    if (conf->num_routes >= WH_MAX_ROUTES)
        return wh__fail(p, key, "too many paths (at most %d)", WH_MAX_ROUTES);
    wh_route_conf_t *r = &conf->routes[conf->num_routes++];
    if ((r->host = strdup(host)) == NULL || (r->path = strdup(path)) == NULL)
        return wh__oom(p);
    r->line = (int)key->start_mark.line + 1;
    r->column = (int)key->start_mark.column + 1;
    if (!wh__is_null(val)) {
        if (val->type != YAML_MAPPING_NODE)
            return wh__fail(p, val, "path '%s' expects a mapping, not %s", path,
                            wh__kind_name(val));
        if ((rc = wh__apply_map(p, WH__CTX_PATH, r, val, NULL, depth + 1)) != 0)
            return rc;
    }
    if (r->kind == 0)
        return wh__fail(p, key, "path '%s' needs a handler (wahook.webhook or wahook.health)",
                        path);
    return 0;
}

static int wh__on_host(wh__parser_t *p, const char *host, const yaml_node_t *key,
                       const yaml_node_t *val, void *arg, int depth)
{
    if (host[0] == '\0')
        return wh__fail(p, key, "empty host name (use \"default\")");
    if (wh__is_null(val))
        return 0;
    if (val->type != YAML_MAPPING_NODE)
        return wh__fail(p, val, "host '%s' expects a mapping, not %s", host, wh__kind_name(val));
    return wh__apply_map(p, WH__CTX_HOST, (void *)host, val, NULL, depth + 1);
}

static int wh__apply_handler(wh__parser_t *p, const wh__directive_t *d, wh_route_conf_t *r,
                             const yaml_node_t *key, const yaml_node_t *val, int depth)
{
    int rc;
    if (r->kind != 0)
        return wh__fail(p, key, "path '%s' has more than one handler", r->path);
    if (d->sub == WH__CTX_NONE) { /* wahook.health: ON */
        char *s = NULL, src[80];
        if (val->type != YAML_SCALAR_NODE || wh__is_null(val))
            return wh__fail(p, val, "'%s' must be ON or OFF", d->name);
        if ((rc = wh__expand_scalar(p, val, d->name, &s)) != 0)
            return rc;
        int on = wh__parse_bool(s);
        free(s);
        if (on < 0)
            return wh__fail(p, val, "'%s' must be ON or OFF, got %s", d->name,
                            wh__src(val, src, sizeof(src)));
        if (on)
            r->kind = d->handler;
        return 0;
    }
    void *sub = (char *)r + d->off;
    r->kind = d->handler;
    if ((rc = wh__apply_defaults(p, d->sub, sub)) != 0)
        return rc;
    if (wh__is_null(val))
        return 0;
    if (val->type != YAML_MAPPING_NODE)
        return wh__fail(p, val, "'%s' expects a mapping, not %s", d->name, wh__kind_name(val));
    return wh__apply_map(p, d->sub, sub, val, NULL, depth + 1);
}

/* A YAML value as JSON: mappings and sequences as such, scalars expanded (${VAR}) and typed
 * like the YAML core schema when plain (null, booleans, integers, floats), strings when quoted. */
static int wh__to_json(wh__parser_t *p, const yaml_node_t *node, const char *what, int depth,
                       json_t **out)
{
    int rc;
    *out = NULL;
    if (depth > WH__MAX_DEPTH)
        return wh__fail(p, node, "'%s' is nested too deeply", what);
    if (--p->budget < 0)
        return wh__fail(p, node, "configuration too complex");
    if (node->type == YAML_MAPPING_NODE) {
        json_t *obj = json_object();
        if (obj == NULL)
            return wh__oom(p);
        for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
             pair < node->data.mapping.pairs.top; pair++) {
            yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
            yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);
            if (k == NULL || v == NULL)
                continue;
            if (k->type != YAML_SCALAR_NODE) {
                json_decref(obj);
                return wh__fail(p, k, "keys under '%s' must be scalars", what);
            }
            json_t *child;
            if ((rc = wh__to_json(p, v, what, depth + 1, &child)) != 0) {
                json_decref(obj);
                return rc;
            }
            char *name = strndup((const char *)k->data.scalar.value, k->data.scalar.length);
            if (name == NULL || json_object_set_new(obj, name, child) != 0) {
                free(name);
                json_decref(obj);
                return wh__oom(p);
            }
            free(name);
        }
        *out = obj;
        return 0;
    }
    if (node->type == YAML_SEQUENCE_NODE) {
        json_t *arr = json_array();
        if (arr == NULL)
            return wh__oom(p);
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++) {
            yaml_node_t *v = yaml_document_get_node(p->doc, *it);
            json_t *child;
            if (v == NULL)
                continue;
            if ((rc = wh__to_json(p, v, what, depth + 1, &child)) != 0) {
                json_decref(arr);
                return rc;
            }
            json_array_append_new(arr, child);
        }
        *out = arr;
        return 0;
    }
    if (node->type != YAML_SCALAR_NODE)
        return wh__fail(p, node, "'%s' holds an unsupported YAML value", what);
    int plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (plain && wh__is_null(node)) {
        *out = json_null();
        return 0;
    }
    char *s = NULL;
    if ((rc = wh__expand_scalar(p, node, what, &s)) != 0)
        return rc;
    int64_t iv;
    char *end = NULL;
    if (plain && (strcmp(s, "true") == 0 || strcmp(s, "false") == 0)) {
        *out = json_boolean(s[0] == 't');
    } else if (plain && s[0] != '\0' && wh__parse_int(s, &iv) == 0) {
        *out = json_integer(iv);
    } else if (plain && s[0] != '\0' && (isdigit((unsigned char)s[0]) || s[0] == '-' ||
                                         s[0] == '.') &&
               (errno = 0, strtod(s, &end), errno == 0 && end != NULL && *end == '\0')) {
        *out = json_real(strtod(s, NULL));
    } else {
        *out = json_string(s);
    }
    free(s);
    return *out == NULL ? wh__oom(p) : 0;
}

static int wh__apply_directive(wh__parser_t *p, const wh__directive_t *d, void *base,
                               const yaml_node_t *key, const yaml_node_t *val, int depth)
{
    switch (d->type) {
    case WH__T_LISTEN:
        return wh__apply_listen(p, val, depth);
    case WH__T_HOSTS:
        return wh__each_named(p, "hosts", val, wh__on_host, NULL, depth);
    case WH__T_PATHS:
        return wh__each_named(p, "paths", val, wh__on_path, base, depth);
    case WH__T_BLOCK:
        if (wh__is_null(val))
            return 0;
        if (val->type != YAML_MAPPING_NODE)
            return wh__fail(p, val, "'%s' expects a mapping, not %s", d->name,
                            wh__kind_name(val));
        return wh__apply_map(p, d->sub, (char *)base + d->off, val, NULL, depth + 1);
    case WH__T_HANDLER:
        return wh__apply_handler(p, d, base, key, val, depth);
    case WH__T_STRLIST:
        return wh__apply_strlist(p, d, base, val);
    case WH__T_JSON: {
        json_t **field = (json_t **)((char *)base + d->off);
        json_t *j = NULL;
        int rc = wh__to_json(p, val, d->name, depth, &j);
        if (rc != 0)
            return rc;
        if (!json_is_object(j) && !json_is_null(j)) {
            json_decref(j);
            return wh__fail(p, val, "'%s' expects a mapping, not %s", d->name, wh__kind_name(val));
        }
        json_decref(*field);
        *field = json_is_object(j) ? j : json_object();
        if (json_is_null(j))
            json_decref(j);
        return *field == NULL ? wh__oom(p) : 0;
    }
    default:
        return wh__apply_scalar(p, d, base, val);
    }
}

/* Applies a mapping of directives of context ctx. Keys are joined to prefix with '.', so nested
 * maps reach dotted directives: auth: {hmac: {secrets: x}} sets "auth.hmac.secrets". */
static int wh__apply_map(wh__parser_t *p, wh__ctx_t ctx, void *base, const yaml_node_t *map,
                         const char *prefix, int depth)
{
    if (depth > WH__MAX_DEPTH)
        return wh__fail(p, map, "configuration nested too deeply");
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(p->doc, pair->key);
        yaml_node_t *val = yaml_document_get_node(p->doc, pair->value);
        char name[WH__NAME_MAX];
        int rc;

        if (key == NULL || val == NULL)
            continue;
        if (--p->budget < 0)
            return wh__fail(p, key, "configuration too complex");
        if (key->type != YAML_SCALAR_NODE)
            return wh__fail(p, key, "directive names must be scalars, not %s",
                            wh__kind_name(key));
        if ((rc = wh__check_dup_key(p, map, pair, key)) != 0)
            return rc;
        int n = snprintf(name, sizeof(name), "%s%s%.*s", prefix ? prefix : "", prefix ? "." : "",
                         (int)key->data.scalar.length, (const char *)key->data.scalar.value);
        if (n < 0 || (size_t)n >= sizeof(name) || memchr(key->data.scalar.value, '\0',
                                                         key->data.scalar.length) != NULL)
            return wh__fail(p, key, "unknown directive '%.40s...'", name);

        const wh__directive_t *d = wh__find(ctx, name);
        if (d != NULL) {
            rc = wh__apply_directive(p, d, base, key, val, depth);
        } else if (wh__is_prefix(ctx, name)) {
            if (wh__is_null(val))
                continue;
            if (val->type != YAML_MAPPING_NODE)
                return wh__fail(p, val, "'%s' expects a mapping, not %s", name,
                                wh__kind_name(val));
            rc = wh__apply_map(p, ctx, base, val, name, depth + 1);
        } else if (wh__find(WH__CTX_NONE, name) != NULL || wh__is_prefix(WH__CTX_NONE, name)) {
            return wh__fail(p, key, "directive '%s' is not allowed here", name);
        } else {
            return wh__fail(p, key, "unknown directive '%s'", name);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- ${VAR} inside YAML flow collections ----
 *
 * In [a, b] and {k: v} YAML treats '{' and '}' as syntax, so `secrets: [${A}, ${B}]` would not
 * parse. Before parsing, each single-line ASCII ${...} reference is replaced by an opaque
 * placeholder of the same number of characters (so line:column positions stay exact): '$', one
 * private-use character U+F0000+index naming the reference, and U+100000 as padding. After
 * parsing, every scalar gets its original text back, in place: the placeholder is never shorter
 * in bytes than the reference. Inputs already holding such characters are left alone. */

#define WH__PH_MAX_REFS 0xFFF0
#define WH__PH_INDEX_BASE 0xF0000u

typedef struct wh__refs {
    struct {
        const char *s; /* into the original text */
        size_t len;
    } *v;
    size_t n;
} wh__refs_t;

/* Length of the ${...} reference at s, or 0 when it does not close on its line in printable
 * ASCII. Nesting and "$$" follow wh_env_expand, which checks the syntax afterwards. */
static size_t wh__ref_len(const char *s, const char *end)
{
    int depth = 0;
    for (const char *q = s; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20 || c > 0x7e)
            return 0;
        if (c == '$' && q + 1 < end && (q[1] == '$' || q[1] == '{')) {
            depth += q[1] == '{';
            q++;
        } else if (c == '}' && --depth == 0) {
            return (size_t)(q - s) + 1;
        }
    }
    return 0;
}

static void wh__put_utf8_4(char *o, uint32_t cp)
{
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
}

/* Sets *out to a protected copy of text, or leaves it NULL when nothing needs protecting. */
static int wh__protect_refs(const char *text, size_t len, char **out, size_t *outlen,
                            wh__refs_t *refs)
{
    *out = NULL;
    if (len > (SIZE_MAX - 1) / 4 || memmem(text, len, "${", 2) == NULL ||
        memchr(text, 0xF3, len) != NULL ||
        memchr(text, 0xF4, len) != NULL)
        return 0;
    /* A placeholder takes at most 4 bytes per character of the reference. */
    char *o = malloc(len * 4 + 1);
    size_t w = 0;
    if (o == NULL)
        return WH_ENOMEM;
    for (size_t i = 0; i < len;) {
        size_t rl;
        if (text[i] == '$' && i + 1 < len && text[i + 1] == '$') {
            o[w++] = text[i++];
            o[w++] = text[i++];
            continue;
        }
        if (text[i] != '$' || i + 1 >= len || text[i + 1] != '{' ||
            (rl = wh__ref_len(text + i, text + len)) == 0) {
            o[w++] = text[i++];
            continue;
        }
        size_t idx;
        for (idx = 0; idx < refs->n; idx++)
            if (refs->v[idx].len == rl && memcmp(refs->v[idx].s, text + i, rl) == 0)
                break;
        if (idx == refs->n) {
            if (refs->n >= WH__PH_MAX_REFS) { /* absurdly many: leave the rest as written */
                o[w++] = text[i++];
                continue;
            }
            void *nv = realloc(refs->v, (refs->n + 1) * sizeof(*refs->v));
            if (nv == NULL) {
                free(o);
                return WH_ENOMEM;
            }
            refs->v = nv;
            refs->v[refs->n].s = text + i;
            refs->v[refs->n].len = rl;
            refs->n++;
        }
        o[w++] = '$';
        wh__put_utf8_4(o + w, WH__PH_INDEX_BASE + (uint32_t)idx);
        w += 4;
        for (size_t k = 2; k < rl; k++, w += 4)
            wh__put_utf8_4(o + w, 0x100000u);
        i += rl;
    }
    o[w] = '\0';
    *out = o;
    *outlen = w;
    return 0;
}

/* Puts the original references back into every scalar of the document. */
static void wh__restore_refs(yaml_document_t *doc, const wh__refs_t *refs)
{
    static const unsigned char pad[4] = {0xF4, 0x80, 0x80, 0x80};
    for (yaml_node_t *n = doc->nodes.start; refs->n > 0 && n < doc->nodes.top; n++) {
        if (n->type != YAML_SCALAR_NODE)
            continue;
        unsigned char *s = n->data.scalar.value;
        size_t len = n->data.scalar.length, r = 0, w = 0;
        while (r < len) {
            if (s[r] == '$' && r + 5 <= len && s[r + 1] == 0xF3) {
                uint32_t cp = ((uint32_t)(s[r + 1] & 0x07) << 18) |
                              ((uint32_t)(s[r + 2] & 0x3F) << 12) |
                              ((uint32_t)(s[r + 3] & 0x3F) << 6) | (uint32_t)(s[r + 4] & 0x3F);
                size_t idx = cp - WH__PH_INDEX_BASE, end, k;
                if (cp >= WH__PH_INDEX_BASE && idx < refs->n) {
                    size_t npad = refs->v[idx].len - 2;
                    end = r + 5 + 4 * npad;
                    for (k = 0; k < npad && end <= len; k++)
                        if (memcmp(s + r + 5 + 4 * k, pad, 4) != 0)
                            break;
                    if (end <= len && k == npad) {
                        /* w <= r and the reference is shorter than its placeholder. */
                        memcpy(s + w, refs->v[idx].s, refs->v[idx].len);
                        w += refs->v[idx].len;
                        r = end;
                        continue;
                    }
                }
            }
            s[w++] = s[r++];
        }
        s[w] = '\0';
        n->data.scalar.length = w;
    }
}

/* ---- loading ---- */

static int wh__yaml_error(wh__parser_t *p, yaml_parser_t *parser, const char *text, size_t len)
{
    size_t line, col;
    if (parser->error == YAML_MEMORY_ERROR)
        return wh__oom(p);
    if (parser->error == YAML_READER_ERROR) {
        /* Reader errors (bad encoding) carry a byte offset, not a mark; columns count
         * characters, as libyaml's marks do. */
        size_t off = parser->problem_offset < len ? parser->problem_offset : len;
        line = 1;
        col = 1;
        for (size_t i = 0; i < off; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
                col++;
            }
        }
    } else {
        line = parser->problem_mark.line + 1;
        col = parser->problem_mark.column + 1;
    }
    wh__seterr(p->err, p->errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", p->file, line, col,
               parser->problem ? parser->problem : "malformed document",
               parser->context ? " (" : "", parser->context ? parser->context : "",
               parser->context ? ")" : "");
    return WH_EINVAL;
}

int wh_config_load_string(wh_config_t *conf, const char *name, const char *text, size_t len,
                          char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    wh__refs_t refs = {0};
    char *protected_text = NULL;
    size_t protected_len = 0;
    int parser_ok = 0, have_doc = 0, rc = 0;
    wh__parser_t p = {.conf = conf, .doc = &doc, .err = err, .errlen = errlen,
                      .budget = WH__VISIT_BUDGET};

    memset(conf, 0, sizeof(*conf));
    p.file = name != NULL ? name : "<string>";
    if ((conf->file = strdup(p.file)) == NULL) {
        rc = wh__oom(&p);
        goto exit;
    }
    if ((rc = wh__apply_defaults(&p, WH__CTX_GLOBAL, conf)) != 0 ||
        (rc = wh__apply_defaults(&p, WH__CTX_ADMIN, &conf->admin)) != 0)
        goto exit;
    if ((rc = wh__protect_refs(text, len, &protected_text, &protected_len, &refs)) != 0) {
        rc = wh__oom(&p);
        goto exit;
    }
    if (protected_text != NULL) {
        text = protected_text;
        len = protected_len;
    }

    if (!yaml_parser_initialize(&parser)) {
        rc = wh__oom(&p);
        goto exit;
    }
    parser_ok = 1;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = wh__yaml_error(&p, &parser, text, len);
        goto exit;
    }
    have_doc = 1;
    wh__restore_refs(&doc, &refs);

    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL && !wh__is_null(root)) {
        if (root->type != YAML_MAPPING_NODE) {
            rc = wh__fail(&p, root, "the configuration must be a mapping of directives, not %s",
                          wh__kind_name(root));
            goto exit;
        }
        if ((rc = wh__apply_map(&p, WH__CTX_GLOBAL, conf, root, NULL, 0)) != 0)
            goto exit;
    }

    /* A second document would be silently ignored; say so instead. */
    if (!yaml_parser_load(&parser, &extra)) {
        rc = wh__yaml_error(&p, &parser, text, len);
        goto exit;
    }
    yaml_node_t *root2 = yaml_document_get_root_node(&extra);
    if (root2 != NULL)
        rc = wh__fail(&p, root2, "only one YAML document is allowed");
    yaml_document_delete(&extra);

exit:
    if (have_doc)
        yaml_document_delete(&doc);
    if (parser_ok)
        yaml_parser_delete(&parser);
    free(protected_text);
    free(refs.v);
    if (rc != 0)
        wh_config_free(conf);
    return rc;
}

int wh_config_load(wh_config_t *conf, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    int rc;

    memset(conf, 0, sizeof(*conf));
    if (f == NULL) {
        wh__seterr(err, errlen, "%s: %s", path, strerror(errno));
        return WH_EIO;
    }
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16384;
            char *nb = ncap > (64u << 20) ? NULL : realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                wh__seterr(err, errlen, "%s: %s", path,
                           ncap > (64u << 20) ? "file too large" : "out of memory");
                return ncap > (64u << 20) ? WH_EINVAL : WH_ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    if (ferror(f)) {
        wh__seterr(err, errlen, "%s: %s", path, strerror(errno ? errno : EIO));
        free(buf);
        fclose(f);
        return WH_EIO;
    }
    fclose(f);
    rc = wh_config_load_string(conf, path, buf, len, err, errlen);
    free(buf);
    return rc;
}

/* ---- validation ---- */

static int wh__has_auth(const wh_auth_conf_t *a)
{
    return a->hmac.secrets.n > 0 || a->token.secrets.n > 0 || a->jwt.secrets.n > 0 ||
           a->apikey.secrets.n > 0;
}

static int wh__same_host(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int wh_config_validate(const wh_config_t *conf, char *err, size_t errlen)
{
    const char *file = conf->file != NULL ? conf->file : "<config>";

    if (conf->num_listen == 0) {
        wh__seterr(err, errlen, "%s: no listener configured (add for example 'listen: 8080')",
                   file);
        return WH_EINVAL;
    }
    for (size_t i = 0; i < conf->num_listen; i++) {
        const wh_listen_conf_t *a = &conf->listen[i];
        for (size_t j = i + 1; j < conf->num_listen; j++) {
            const wh_listen_conf_t *b = &conf->listen[j];
            if (a->port == b->port && wh__same_host(a->host, b->host)) {
                wh__seterr(err, errlen, "%s: listener %s:%u is configured twice", file,
                           a->host ? a->host : "*", (unsigned)a->port);
                return WH_EINVAL;
            }
        }
        if (conf->admin.port != 0 && conf->admin.port == a->port) {
            wh__seterr(err, errlen,
                       "%s: wahook.admin port %u is also a listener port; give the admin "
                       "listener its own port (or 0 to disable it)",
                       file, (unsigned)a->port);
            return WH_EINVAL;
        }
    }
    if (conf->env == WH_ENV_PRODUCTION) {
        for (size_t i = 0; i < conf->num_routes; i++) {
            const wh_route_conf_t *r = &conf->routes[i];
            if (r->kind == WH_HANDLER_WEBHOOK && !wh__has_auth(&r->webhook.auth)) {
                wh__seterr(err, errlen,
                           "%s:%d:%d: production mode requires an authentication method on "
                           "%s (set WEBHOOK_SECRET, or wahook.env: development)",
                           file, r->line, r->column, r->path);
                return WH_EINVAL;
            }
        }
    }
    return 0;
}

/* ---- freeing and documentation ---- */

/* Frees every string and list the table says context ctx owns at base. */
static void wh__free_ctx(wh__ctx_t ctx, void *base)
{
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__directives); i++) {
        const wh__directive_t *d = &wh__directives[i];
        if (d->ctx != ctx)
            continue;
        if (d->type == WH__T_STRING || d->type == WH__T_ENUM_STR)
            wh__store_str((char *)base + d->off, NULL);
        else if (d->type == WH__T_STRLIST)
            wh_strlist_clear((wh_strlist_t *)((char *)base + d->off));
        else if (d->type == WH__T_JSON) {
            json_t **field = (json_t **)((char *)base + d->off);
            json_decref(*field);
            *field = NULL;
        }
    }
}

void wh_config_free(wh_config_t *conf)
{
    if (conf == NULL)
        return;
    wh__free_ctx(WH__CTX_GLOBAL, conf);
    wh__free_ctx(WH__CTX_ADMIN, &conf->admin);
    for (size_t i = 0; i < WH_MAX_LISTENERS; i++)
        wh__free_ctx(WH__CTX_LISTEN, &conf->listen[i]);
    for (size_t i = 0; i < WH_MAX_ROUTES; i++) {
        free(conf->routes[i].host);
        free(conf->routes[i].path);
        wh__free_ctx(WH__CTX_WEBHOOK, &conf->routes[i].webhook);
    }
    free(conf->file);
    memset(conf, 0, sizeof(*conf));
}

static const char *wh__type_name(const wh__directive_t *d, char *buf, size_t len)
{
    char opts[96];
    switch (d->type) {
    case WH__T_INT: return "int";
    case WH__T_SIZE: return "size";
    case WH__T_DURATION: return d->unit_ms == 1 ? "duration (ms)" : "duration (s)";
    case WH__T_BOOL: return "bool";
    case WH__T_STRING: return "string";
    case WH__T_STRLIST: return "string list";
    case WH__T_ENUM:
    case WH__T_ENUM_STR:
        wh__fmt_enum(d, ", ", opts, sizeof(opts)); /* no '|': the dump is a markdown table */
        snprintf(buf, len, "enum (%s)", opts);
        return buf;
    case WH__T_LISTEN: return "listen";
    case WH__T_HOSTS: return "mapping of hosts";
    case WH__T_PATHS: return "mapping of paths";
    case WH__T_BLOCK: return "mapping";
    case WH__T_HANDLER: return d->sub == WH__CTX_NONE ? "handler (bool)" : "handler (mapping)";
    case WH__T_JSON: return "mapping (free-form)";
    }
    return "?";
}

void wh_config_dump_directives(void *file)
{
    FILE *f = file != NULL ? file : stdout;
    fprintf(f, "| directive | context | type | default | bounds | meaning |\n");
    fprintf(f, "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__directives); i++) {
        const wh__directive_t *d = &wh__directives[i];
        char tbuf[128], lo[32], hi[32], bounds[80] = "";
        const char *def = d->defval != NULL ? d->defval : d->doc_default ? d->doc_default : "";
        if (d->type == WH__T_INT || d->type == WH__T_SIZE || d->type == WH__T_DURATION) {
            wh__fmt_value(d, d->min, lo, sizeof(lo));
            wh__fmt_value(d, d->max, hi, sizeof(hi));
            snprintf(bounds, sizeof(bounds), "%s..%s", lo, hi);
        }
        fprintf(f, "| `%s` | %s | %s | %s | %s | %s |\n", d->name, wh__ctx_names[d->ctx],
                wh__type_name(d, tbuf, sizeof(tbuf)), def, bounds, d->help ? d->help : "");
    }
}
