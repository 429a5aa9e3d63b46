/* The watchdog: a thread that covers what webhooks cannot report. Every wahook.watchdog.interval
 * it polls Evolution's GET /instance/connectionState/{instance} (header apikey) for each of
 * wahook.watchdog.instances, reads when the last webhook of each instance arrived (events), and
 * counts the authentication rejections of the last minute (wh_watchdog_note_auth_failure). It
 * raises an alert — an outbox 'alert' row through wh_outbox_alert, so it goes out on the same
 * channels as the scripts' alerts — once when an incident starts and once when it clears:
 *
 *   incident key             opens (kind)                         clears (kind)
 *   connection:<instance>    connection_closed: state "close", or   connection_restored: "open"
 *                            not "open" on two polls in a row, or
 *                            the instance does not exist (404)
 *   silence:<instance>       webhooks_silent: no webhook for        webhooks_resumed
 *                            wahook.watchdog.silence
 *   auth_failures            auth_failures: ≥ auth-failures-per-    auth_failures_cleared: below
 *                            minute rejections in the last 60 s     half of it
 *
 * The incident gate lives in the store (the incidents table): the connection incident is the
 * same one the scripts' own connection_closed / connection_restored alerts use (deliver.c), so a
 * logout reported by a webhook and by the poll alerts once. A poll that fails (Evolution down,
 * wrong apikey) changes nothing: the silence check and the deliverers' own alerts cover that. */
#ifndef WAHOOK_WATCHDOG_H
#define WAHOOK_WATCHDOG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/outbox.h"
#include "wahook/store.h"

typedef struct wh_watchdog wh_watchdog_t;

/* Called by the server for every request refused for its credentials (the 401 path, and 403
 * for a refused IP if wanted). Lock-free, async-signal-unsafe but thread-safe; cheap. Counts per
 * wall-clock second over the last minute, process-wide. */
void wh_watchdog_note_auth_failure(void);
/* The same at an explicit time (ms since the epoch), for tests. */
void wh_watchdog_note_auth_failure_at(int64_t now_ms);
/* Rejections noted in the 60 s up to now_ms. */
int64_t wh_watchdog_auth_failures(int64_t now_ms);

/* Reads the connection state of instance: 0 with the state ("open", "connecting", "close", or
 * "missing" when Evolution answers 404: no such instance) copied into state; or a negative WH_E*
 * code with the reason in err (transfer failed, other status, unreadable answer). */
typedef int (*wh_watchdog_poll_fn)(void *ud, const char *instance, char *state, size_t statelen,
                                   char *err, size_t errlen);
/* Inserts an alert like wh_outbox_alert (1 inserted, 0 suppressed by its gate, < 0 error). */
typedef int (*wh_watchdog_alert_fn)(void *ud, const wh_outbox_alert_t *a);

typedef struct wh_watchdog_opts {
    const char *evolution_url;     /* base URL; NULL or "": no polling */
    const char *evolution_api_key; /* apikey header; NULL: none */
    int tls_verify;                /* verify Evolution's certificate */
    int64_t timeout_ms;            /* per poll; 0: 10000 */
    const wh_strlist_t *instances; /* copied */
    int64_t interval_ms;           /* > 0 */
    int64_t silence_ms;            /* 0: no silence check */
    int64_t auth_failures;         /* per minute; 0: no auth check */
    const char *db_path;           /* read-only: events, incidents */
    wh_store_t *store;             /* alerts (wh_outbox_alert) when alert_fn is NULL */
    /* Seams for tests: NULL uses libcurl / wh_outbox_alert. */
    wh_watchdog_poll_fn poll_fn;
    void *poll_ud;
    wh_watchdog_alert_fn alert_fn;
    void *alert_ud;
} wh_watchdog_opts_t;

/* Creates a watchdog that is not running yet; silence is measured from started_ms for an
 * instance that never sent a webhook. Returns 0 or WH_EINVAL / WH_ENOMEM / WH_EIO (the database
 * cannot be opened) with the reason in err. */
int wh_watchdog_new(wh_watchdog_t **out, const wh_watchdog_opts_t *o, int64_t started_ms,
                    char *err, size_t errlen);
/* One round of checks at now_ms (what the thread runs every interval). Returns the number of
 * alerts inserted, or a negative WH_E* code when the database could not be read. */
int wh_watchdog_tick(wh_watchdog_t *w, int64_t now_ms);
/* Starts the thread (first round at once). Returns 0 or WH_ERR. */
int wh_watchdog_run(wh_watchdog_t *w);
/* Stops the thread (waking it; at most one poll timeout) and frees. NULL is fine. */
void wh_watchdog_free(wh_watchdog_t *w);

/* The server's entry points. start reads conf (watchdog_*, evolution url/api_key/tls_verify/
 * connect timeout), opens db_path read-only and starts the thread; with watchdog.interval 0 it
 * does nothing and sets *out NULL. Call after the store is open; stop before it closes. */
int wh_watchdog_start(wh_watchdog_t **out, const wh_config_t *conf, wh_store_t *store,
                      const char *db_path, char *err, size_t errlen);
void wh_watchdog_stop(wh_watchdog_t *w);

/* For /readyz and the admin API, a new object: {"instances":{"<name>":{"state":"open"|…|null,
 * "polled_at":ms|null,"poll_error":"…"|null,"last_webhook_at":ms|null}},
 * "auth_failures_last_minute":N}. NULL w gives NULL. */
json_t *wh_watchdog_status(wh_watchdog_t *w);

#endif
