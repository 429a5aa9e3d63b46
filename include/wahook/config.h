/* The configuration: an h2o-style YAML file parsed with libyaml into wh_config_t, driven by one
 * directive table (name, context, type, bounds, default), with ${VAR} expansion from the
 * environment and a dotenv file. */
#ifndef WAHOOK_CONFIG_H
#define WAHOOK_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "wahook/common.h"

#define WH_MAX_LISTENERS 16
#define WH_MAX_ROUTES 32

typedef struct wh_listen_conf {
    char *host;             /* NULL: every address */
    uint16_t port;
    char *certificate_file; /* TLS when both certificate and key are set */
    char *key_file;
} wh_listen_conf_t;

/* One authentication method: enabled when at least one secret is configured. */
typedef struct wh_auth_method_conf {
    wh_strlist_t secrets; /* every active secret (rotation); empty entries are dropped */
    char *header;         /* hmac: default "x-webhook-signature"; token: "x-webhook-token" */
    char *prefix;         /* hmac: default "sha256=" */
} wh_auth_method_conf_t;

typedef struct wh_auth_conf {
    wh_auth_method_conf_t hmac;
    wh_auth_method_conf_t token;
    wh_auth_method_conf_t jwt;
    wh_auth_method_conf_t apikey;
    int64_t jwt_leeway;   /* seconds past exp still accepted; default 1800 */
    char *jwt_app;        /* required claim app, default "evolution" */
    char *jwt_action;     /* required claim action, default "webhook" */
} wh_auth_conf_t;

/* The wahook.webhook handler of one path. */
typedef struct wh_webhook_conf {
    wh_auth_conf_t auth;
    char *verify_token;            /* GET handshake; NULL = off */
    wh_strlist_t allow;            /* CIDR allow-list; empty = everyone */
    wh_strlist_t trusted_proxies;  /* CIDRs whose X-Forwarded-For is believed */
    int64_t ip_rate_per_min;       /* failing/unauthenticated requests per IP; default 100 */
    int64_t instance_rate_per_min; /* authenticated requests per instance; default 6000 */
    int64_t instance_burst;        /* default 1000 */
    int64_t commit_timeout_ms;     /* a deferred request answers 503 after this; default 10000 */
    int64_t offload_threshold;     /* bodies above this are parsed off the loop; default 256 KiB */
} wh_webhook_conf_t;

typedef enum wh_handler_kind {
    WH_HANDLER_WEBHOOK = 1,
    WH_HANDLER_HEALTH = 2, /* serves /healthz and /readyz under its path */
} wh_handler_kind_t;

typedef struct wh_route_conf {
    char *host;            /* key under hosts:, "default" or a host name */
    char *path;            /* key under paths: */
    wh_handler_kind_t kind;
    wh_webhook_conf_t webhook; /* kind == WH_HANDLER_WEBHOOK */
    int line, column;          /* position of the path key, for later error messages */
} wh_route_conf_t;

typedef struct wh_admin_conf {
    char *host;      /* default 127.0.0.1 */
    uint16_t port;   /* default 8081; 0 disables the admin listener */
    char *token;     /* WAHOOK_ADMIN_TOKEN */
} wh_admin_conf_t;

/* A delivery target (wahook.evolution, wahook.crm, wahook.smtp). Unused fields stay 0/NULL. */
typedef struct wh_target_conf {
    char *url;                  /* base URL (Evolution, CRM) or smtp[s]://host:port */
    char *api_key;              /* Evolution apikey header / CRM bearer token */
    char *module;               /* CRM: the Lua mapping module, default "crm.twenty" */
    char *user, *password;      /* SMTP authentication */
    char *from;                 /* SMTP envelope and header sender */
    int starttls;               /* SMTP: require STARTTLS on smtp:// */
    int tls_verify;             /* verify peer certificates (default ON) */
    int64_t rate_per_min;       /* token bucket refill */
    int64_t burst;              /* token bucket size */
    int64_t concurrency;        /* transfers in flight at most */
    int64_t timeout_ms;         /* whole transfer */
    int64_t connect_timeout_ms;
    int64_t echo_grace_ms;      /* Evolution: wait for a send.message echo before resending */
} wh_target_conf_t;

typedef enum wh_env_mode { WH_ENV_PRODUCTION = 0, WH_ENV_DEVELOPMENT = 1 } wh_env_mode_t;

typedef struct wh_config {
    char *file;                         /* path it was read from */
    wh_listen_conf_t listen[WH_MAX_LISTENERS];
    size_t num_listen;
    int64_t num_threads;                /* default: number of cores */
    int64_t limit_request_body;         /* default 1 MiB */
    int http2;                          /* http1-upgrade-to-http2; default 0 (off) */
    char *error_log;                    /* NULL: stderr */
    char *access_log;                   /* NULL: none */
    wh_route_conf_t routes[WH_MAX_ROUTES];
    size_t num_routes;

    wh_env_mode_t env;                  /* wahook.env; default from WAHOOK_ENV / NODE_ENV */
    char *data_dir;                     /* wahook.data-dir; default "data" */
    wh_admin_conf_t admin;              /* wahook.admin */
    int store_sync_full;                /* wahook.store.synchronous: full (1, default) | normal (0) */
    int store_keep_media;               /* wahook.store.media: keep (1) | drop (0, default) */
    int64_t store_queue_size;           /* wahook.store.queue-size; default 65536 */
    int64_t store_batch_size;           /* wahook.store.batch-size; default 512 */
    int64_t store_max_size;             /* wahook.store.max-size in bytes; 0 = unlimited */
    int64_t shutdown_timeout_ms;        /* wahook.shutdown-timeout; default 10000 */
    char *log_level;                    /* wahook.log-level: debug|info|warn|error */

    /* Processing (Lua). */
    int64_t processors;                 /* wahook.processors; default: number of cores */
    char *scripts_dir;                  /* wahook.scripts.dir; default "scripts" */
    int64_t script_timeout_ms;          /* wahook.scripts.timeout; default 1000 */
    int64_t script_memory;              /* wahook.scripts.memory in bytes; default 64 MiB */
    void *scripts_config;               /* wahook.scripts.config as a json_t* object (owned) */
    int64_t max_attempts;               /* wahook.processing.max-attempts; default 5 */
    int64_t retry_base_ms;              /* wahook.processing.retry-base; default 1000 */
    int64_t retry_max_ms;               /* wahook.processing.retry-max (one wait); default 300000 */
    int64_t retry_total_ms;             /* wahook.processing.retry-total; default 3600000 */
    int64_t poll_interval_ms;           /* wahook.processing.poll-interval; default 1000 */
    int64_t reload_debounce_ms;         /* wahook.scripts.reload-debounce; default 200 */

    /* Delivery (wahook.delivery.*) and its targets. */
    int64_t deliverers;                 /* threads draining the outbox; default 1 */
    int64_t delivery_max_attempts;      /* default 10 */
    int64_t delivery_retry_base_ms;     /* default 2000 */
    int64_t delivery_retry_max_ms;      /* default 600000 */
    int64_t delivery_retry_total_ms;    /* default 86400000 */
    int64_t circuit_failures;           /* consecutive failures that open a circuit; default 5 */
    int64_t circuit_open_ms;            /* how long it stays open before a probe; default 30000 */
    int64_t dead_alert_interval_ms;     /* one dead-letter alert per target per interval */
    wh_target_conf_t evolution;         /* wahook.evolution.* */
    wh_target_conf_t crm;               /* wahook.crm.* */
    wh_target_conf_t smtp;              /* wahook.smtp.* */
    wh_strlist_t alert_emails;          /* wahook.alerts.emails */
    wh_strlist_t alert_urls;            /* wahook.alerts.urls */
    char *alert_format;                 /* wahook.alerts.format: json | slack */
    int64_t watchdog_interval_ms;       /* wahook.watchdog.interval; 0 = off; default 60000 */
    int64_t watchdog_silence_ms;        /* alert when no webhook arrived for this long */
    int64_t watchdog_auth_failures;     /* authentication rejections per minute that alert */
    wh_strlist_t watchdog_instances;    /* instances whose connectionState is polled */

    /* Dashboard and live event feed (wahook.dashboard.*). */
    char *dashboard_dir;                /* static files; NULL: runtime/web, then next to the binary */
    int64_t dashboard_session_ttl_ms;   /* lifetime of a dashboard login; default 12 h */
    int64_t dashboard_login_rate;       /* login attempts per client address per minute; 10 */
    int dashboard_secure_cookie;        /* Secure cookie even without TLS (TLS proxy); OFF */
    int64_t sse_max_clients;            /* open event streams at most; default 32 */
    int64_t sse_buffer;                 /* bytes queued for one stream before the cut; 256 KiB */
    int64_t sse_heartbeat_ms;           /* heartbeat comment interval; default 15000 */
} wh_config_t;

/* Loads a dotenv file (KEY=VALUE, # comments, optional quotes, optional "export ") into the
 * process environment without overriding variables already set. A missing file is not an error
 * when required is 0. Returns 0 or a WH_E* code with "file:line: reason" in err. */
int wh_env_load_file(const char *path, int required, char *err, size_t errlen);

/* Looks a variable up in the environment, falling back to the original system's aliases
 * (EVOLUTION_API_URL→NEXT_PUBLIC_EVOLUTION_API_URL, EVOLUTION_API_KEY→NEXT_EVOLUTION_API_KEY,
 * WAHOOK_ENV→NODE_ENV). Returns NULL when unset. */
const char *wh_env_get(const char *name);

/* Expands ${VAR} and ${VAR:-default} in src. Unset variables expand to "". "$$" is a literal
 * "$". Returns a malloc'd string, or NULL with a reason in err on malformed syntax. */
char *wh_env_expand(const char *src, char *err, size_t errlen);

/* Parses path into *conf (zeroed first, defaults applied). Errors read
 * "file:line:column: message" in err. Returns 0 or WH_EINVAL / WH_EIO / WH_ENOMEM. */
int wh_config_load(wh_config_t *conf, const char *path, char *err, size_t errlen);
/* Same from a string; name is used in error positions. */
int wh_config_load_string(wh_config_t *conf, const char *name, const char *text, size_t len,
                          char *err, size_t errlen);
/* Checks cross-directive rules (e.g. production with no auth method configured on a webhook
 * route). Returns 0 or WH_EINVAL with the reason in err. */
int wh_config_validate(const wh_config_t *conf, char *err, size_t errlen);
/* Frees everything the config owns. */
void wh_config_free(wh_config_t *conf);

/* Prints the directive table (name, context, type, default, bounds) for documentation. */
void wh_config_dump_directives(void *file /* FILE* */);

#endif
