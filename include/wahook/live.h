/* The live event feed: accepted events published from any thread, handed to the admin loop
 * through a bounded queue and streamed to Server-Sent Events clients (GET /api/events/stream)
 * with filters, a heartbeat, a bounded buffer per client, a cap on clients and resume from the
 * store with Last-Event-ID; plus the filtered events listing (GET /api/events). */
#ifndef WAHOOK_LIVE_H
#define WAHOOK_LIVE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/admin.h"

typedef struct wh_live wh_live_t;
struct wh_dashboard;

typedef struct wh_live_opts {
    const char *db_path;  /* the store, read-only: Last-Event-ID replay and the listing */
    size_t queue_max;     /* published events waiting for the admin loop; 0: 4096 */
    size_t max_clients;   /* concurrent streams; more are refused with 503; 0: 32 */
    size_t client_buffer; /* bytes waiting for one client before it is cut off; 0: 256 KiB */
    int heartbeat_ms;     /* comment line sent to every stream this often; 0: 15000 */
    size_t max_body;      /* larger bodies are streamed without "body"; 0: 64 KiB */
} wh_live_opts_t;

/* Creates the feed and starts its replay thread. Returns NULL when out of memory. Nothing
 * touches the admin loop until the first stream arrives. */
wh_live_t *wh_live_new(const wh_live_opts_t *opts);

/* Offers one accepted event to the open streams. Any thread; never blocks on clients or I/O:
 * when nobody is streaming it returns at once, and when the queue is full the event is dropped
 * and counted ("dropped" in wh_live_stats; streams get an "event: dropped" notice). body is the
 * redacted JSON that was stored (copied); contact may be NULL. */
void wh_live_publish(wh_live_t *l, int64_t id, int64_t received_at, const char *instance,
                     const char *event, const char *contact, const char *body, size_t body_len);

/* 1 while at least one stream is open: lets the caller skip preparing what it would publish
 * (e.g. the contact key). Any thread; one atomic load. */
int wh_live_watched(const wh_live_t *l);

/* Ends every stream (their responses finish, their connections close) and refuses new ones.
 * Any thread; returns at once (the admin loop does the work). Call when shutdown starts, while
 * the admin loop still runs. */
void wh_live_shutdown(wh_live_t *l);

/* Stops the replay thread and frees the feed. Call after the admin loop thread has exited and
 * nothing can publish any more (loop threads joined, store closed). NULL is fine. */
void wh_live_free(wh_live_t *l);

/* Counters for /metrics and tests: a new object {"clients","published","dropped",
 * "slow_disconnects","rejected","replayed"}. Any thread. */
json_t *wh_live_stats(wh_live_t *l);

/* The admin module for "/api/events": GET /api/events (listing) and GET /api/events/stream
 * (SSE). Other paths under /api/events (/api/events/{id}, …/retry) are declined (serve returns
 * 0) so the server's own routes answer them. Requests are authorised with the admin token or
 * a dashboard session of dash (may be NULL: token only). */
wh_admin_module_t wh_live_module(wh_live_t *l, struct wh_dashboard *dash);

/* ---- exposed for tests ------------------------------------------------------------------- */

/* Filters of the listing and the stream, from the query string: event, instance, contact
 * (each a comma-separated list or repeated), status (listing only: pending|done|dead|failed). */
#define WH_LIVE_MAX_FILTER 16
typedef struct wh_live_filter {
    char *events[WH_LIVE_MAX_FILTER];
    size_t num_events;
    char *instances[WH_LIVE_MAX_FILTER];
    size_t num_instances;
    char *contacts[WH_LIVE_MAX_FILTER];
    size_t num_contacts;
    char *status; /* NULL: any */
} wh_live_filter_t;

/* Parses a query string (without "?", may be NULL) into f: event, instance, contact, status and
 * the numbers the caller asks for (limit, before, last_event_id: -1 when absent; pass NULL for
 * the ones it does not take). Returns 0, or WH_EINVAL with a client-facing message in err
 * (unknown parameter, bad number, too many values, bad characters). f must be freed with
 * wh_live_filter_clear in either case. */
int wh_live_filter_parse(wh_live_filter_t *f, const char *query, size_t len, int64_t *limit,
                         int64_t *before, int64_t *last_event_id, char *err, size_t errlen);
void wh_live_filter_clear(wh_live_filter_t *f);
/* 1 when an event with these fields passes the filter's event, instance and contact lists. */
int wh_live_filter_match(const wh_live_filter_t *f, const char *event, const char *instance,
                         const char *contact);

/* Formats one event as an SSE message ("id: N\ndata: {…}\n\n"), body included only when it is
 * at most max_body bytes (else "body_omitted":true). Returns a malloc'd string (length in *len)
 * or NULL when out of memory. Thread-safe. */
char *wh_live_format(int64_t id, int64_t received_at, const char *instance, const char *event,
                     const char *contact, const char *body, size_t body_len, size_t max_body,
                     size_t *len);

#endif
