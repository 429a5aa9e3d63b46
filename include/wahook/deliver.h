/* Deliverers: threads that drain the outbox with libcurl's multi interface (many transfers in
 * flight per thread, connection reuse, per-target timeouts and TLS verification) to Evolution
 * API sendText, the CRM (through the Lua mapping module), SMTP mail and alert channels, with a
 * concurrency limit, a token-bucket rate limit and a circuit breaker per target, classification
 * of failures, backoff with jitter, dead letters with rate-limited alerts, the Evolution pause
 * while an instance is not connected, and the echo grace for timed-out sends.
 *
 * The pure parts (classification, backoff, circuit breaker, token bucket, request and alert
 * bodies, response parsing) are exposed for unit tests. */
#ifndef WAHOOK_DELIVER_H
#define WAHOOK_DELIVER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/config.h"
#include "wahook/scripts.h"
#include "wahook/store.h"

typedef struct wh_deliverers wh_deliverers_t;

/* Resets rows a crash left in flight, then starts conf->deliverers threads reading the database
 * at db_path and writing through store; CRM mapping code runs in per-thread VMs of the current
 * scripts version (swapped after a reload once no CRM action is in flight on that VM). Registers
 * itself as the store's outbox hook (wh_store_set_outbox_hook), so committed actions wake it at
 * once. Returns 0 or a WH_E* code with the reason in err. */
int wh_deliverers_start(wh_deliverers_t **out, const wh_config_t *conf, wh_store_t *store,
                        const char *db_path, wh_scripts_t *scripts, char *err, size_t errlen);

/* Wakes every deliverer (new outbox rows may be due). Thread-safe, cheap. NULL is fine. */
void wh_deliverers_wake(wh_deliverers_t *d);

/* Stops claiming rows, gives transfers in flight up to half the shutdown timeout to finish and
 * records their outcome, abandons the rest (their rows stay pending and are delivered after the
 * restart), joins the threads and frees everything. Removes the outbox hook. Call before the
 * store closes. NULL is fine. */
void wh_deliverers_stop(wh_deliverers_t *d);

/* Status for /readyz and the admin API, a new object:
 * {"threads":N,
 *  "targets":{"evolution"|"crm"|"mail"|"alert":{"in_flight":N,"pending":N,"dead":N,
 *             "delivered":N,"failed":N}},   pending/dead as last counted (every ~2 s)
 *  "circuits":{"evolution"|"crm"|"smtp"|"alert_url:<8 hex>":{"state":"closed"|"open"|
 *             "half_open","failures":N,"in_flight":N,"configured":bool}},
 *  "paused_instances":["…"]} */
json_t *wh_deliverers_status(wh_deliverers_t *d);

/* 1 when outbox row id is being delivered right now. */
int wh_deliverers_in_flight(wh_deliverers_t *d, int64_t id);

/* ---- pure parts (unit-tested) ---------------------------------------------------------------- */

/* How one attempt ended. */
typedef enum wh_deliver_class {
    WH_DC_OK = 0,
    WH_DC_RETRY = 1,          /* connection error, 5xx, 408, 429: backoff and try again */
    WH_DC_TIMEOUT = 2,        /* the transfer timed out: retry class (a sendText waits for its
                               * echo first) */
    WH_DC_MISCONFIGURED = 3,  /* 401/403/404, 3xx, bad URL or certificate, SMTP login refused:
                               * the target's circuit opens, the row stays pending */
    WH_DC_PERMANENT = 4,      /* an answer about this one action (400, 422, other 4xx, SMTP 5xx) */
    WH_DC_NOT_ON_WHATSAPP = 5, /* Evolution 400 with exists:false: permanent, flag the contact */
} wh_deliver_class_t;

/* Classifies an HTTP attempt from the libcurl result code (0 = CURLE_OK), the HTTP status (0
 * when no answer arrived) and the answer's body (may be NULL). */
wh_deliver_class_t wh_deliver_classify_http(int curl_code, long status, const char *body,
                                            size_t len);
/* Classifies an SMTP attempt from the libcurl result code and the last SMTP reply code. */
wh_deliver_class_t wh_deliver_classify_smtp(int curl_code, long smtp_code);
/* A short name: "ok", "retry", "timeout", "misconfigured", "permanent", "not_on_whatsapp". */
const char *wh_deliver_class_name(wh_deliver_class_t c);

/* 1 when an Evolution error body says the number is not on WhatsApp: response.message is an
 * array holding an object with "exists": false, or a string that holds such an array (JSON) or
 * the text "exists":false. */
int wh_deliver_not_on_whatsapp(const char *body, size_t len);

/* The wait before retry number `attempts` (1 = after the first failure): base * 2^(attempts-1)
 * capped at max_ms, then ±20% jitter chosen by u in [0, 1) (0.5 = none). Never below 1. */
int64_t wh_deliver_backoff(int attempts, int64_t base_ms, int64_t max_ms, double u);

/* A Retry-After value (delta seconds or an HTTP date) as milliseconds from now_ms; -1 when absent
 * or malformed. Capped at one day. */
int64_t wh_deliver_retry_after_ms(const char *value, int64_t now_ms);

/* Circuit breaker with explicit times. */
#ifndef WH_CIRCUIT_STATES /* shared by deliver.h and metrics.h */
#define WH_CIRCUIT_STATES
enum { WH_CIRCUIT_CLOSED = 0, WH_CIRCUIT_OPEN = 1, WH_CIRCUIT_HALF_OPEN = 2 };
#endif
typedef struct wh_circuit {
    int state;
    int failures;      /* consecutive failures while closed */
    int threshold;     /* failures that open it */
    int64_t open_ms;   /* how long it stays open before one probe */
    int64_t open_until;
    int probing;       /* half-open: the probe is out */
    int misconfigured; /* the last opening was for a misconfiguration */
} wh_circuit_t;

void wh_circuit_init(wh_circuit_t *c, int threshold, int64_t open_ms);
/* 1 when a request may start at now. An open circuit whose time is up becomes half-open and
 * lets exactly one probe through (this call takes it). */
int wh_circuit_allow(wh_circuit_t *c, int64_t now);
/* The target answered properly (success, or an answer about one action): closes the circuit.
 * Returns 1 when it was open or half-open (a recovery). */
int wh_circuit_success(wh_circuit_t *c, int64_t now);
/* A retry-class failure, or a misconfiguration (opens at once). Returns 1 when this call opened
 * a closed circuit; a failed probe re-opens it for open_ms and returns 0. */
int wh_circuit_failure(wh_circuit_t *c, int64_t now, int misconfigured);
/* A probe ended without a verdict (abandoned): the next caller may probe. */
void wh_circuit_release(wh_circuit_t *c);
/* "closed", "open", "half_open". */
const char *wh_circuit_state_name(const wh_circuit_t *c);

/* Token bucket with explicit times (ms). */
typedef struct wh_tbucket {
    double tokens;
    double burst;
    double per_ms; /* refill rate */
    int64_t last;
} wh_tbucket_t;

void wh_tbucket_init(wh_tbucket_t *b, double rate_per_min, double burst, int64_t now);
/* Takes one token at now: 1 when taken; else 0 with the ms until one is available in *wait_ms
 * (>= 1; may be NULL). A clock going backwards refills nothing. */
int wh_tbucket_take(wh_tbucket_t *b, int64_t now, int64_t *wait_ms);

/* The sendText body for a send_text action payload ({"to","text","delay"?,"quoted"?,
 * "link_preview"?}): {"number","text","delay"?,"linkPreview"?,"quoted":{"key":{"id"}}?}, as
 * malloc'd compact JSON; NULL when the payload has no "to" or "text". */
char *wh_deliver_evolution_body(const json_t *payload);

/* Reads a 201 sendText answer: key.id (required), key.remoteJid and messageTimestamp. Strings are
 * malloc'd into *wa_id and *remote_jid (NULL when absent). Returns 0 or WH_EINVAL. */
int wh_deliver_evolution_sent(const char *body, size_t len, char **wa_id, char **remote_jid,
                              int64_t *ts);

/* The contact key a recipient ("34600111222", "34600111222@s.whatsapp.net",
 * "34600111222:12@s.whatsapp.net", "2075…@lid") is stored under: the digits of a phone JID or
 * number, the LID itself; "" for groups and other JIDs. */
void wh_deliver_recipient_key(const char *to, char *out, size_t outlen);

/* The JSON POSTed to an alert URL for an alert payload ({"kind","text","fields"?}): format "json"
 * → {"kind","text","fields","instance","at"} with at an ISO-8601 UTC time with milliseconds;
 * "slack" → {"text":"[wahook] <kind> (<instance>): <text>"} with one "• key: value" line per
 * field. instance "" is reported as null / left out. malloc'd; NULL on a bad payload. */
char *wh_deliver_alert_body(const char *format, const json_t *payload, const char *instance,
                            int64_t at_ms);
/* The e-mail subject and plain-text body of an alert (malloc'd). Returns 0 or WH_EINVAL. */
int wh_deliver_alert_mail(const json_t *payload, const char *instance, int64_t at_ms,
                          char **subject, char **body);

/* Formats ms since the epoch as "2026-01-05T10:02:03.004Z" into out (>= 25 bytes). */
void wh_deliver_iso_time(int64_t ms, char *out, size_t outlen);

#endif
