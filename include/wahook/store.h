/* The durable store: one SQLite database in WAL mode, numbered migrations, and one writer thread
 * that owns the write connection and commits queued events in batches (group commit). Readers
 * use their own connections. */
#ifndef WAHOOK_STORE_H
#define WAHOOK_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct wh_store wh_store_t;

typedef struct wh_store_opts {
    const char *path;       /* database file */
    int sync_full;          /* 1: synchronous=FULL (power-loss safe), 0: NORMAL */
    size_t queue_max;       /* submissions waiting beyond this are refused with WH_EFULL */
    size_t batch_max;       /* events per transaction at most */
    int64_t max_size;       /* database size cap in bytes (max_page_count); 0 = none */
    int busy_timeout_ms;    /* how long a write waits for another connection's lock; 0 = 5000 */
} wh_store_opts_t;

struct wh_ingest;
/* Called once per accepted submission, on the writer thread, after its transaction committed
 * or failed. status is 0 or a WH_E* code (WH_EFULL for SQLITE_FULL). On success id is the
 * event's row id and duplicate says whether it was already stored. */
typedef void (*wh_ingest_cb)(struct wh_ingest *job, int status, int64_t id, int duplicate);

/* One event to store. The caller owns the memory and must keep it alive until cb runs. */
typedef struct wh_ingest {
    const char *instance;
    const char *event;
    const char *dedup_id;
    const char *phone;      /* contact candidates from wh_envelope_t; may be NULL */
    const char *lid;
    const char *body;       /* redacted JSON */
    size_t body_len;
    int64_t received_at;    /* ms since the epoch */
    wh_ingest_cb cb;
    void *user;             /* free for the caller */
    struct wh_ingest *next; /* owned by the store while queued */
} wh_ingest_t;

/* Opens (creating) the database, runs migrations and starts the writer thread. Returns 0 or a
 * WH_E* code with the reason in err. queue_max 0 means 10000 and batch_max 0 means 256. A
 * database whose schema is newer than this build knows is refused (WH_EINVAL). */
int wh_store_open(wh_store_t **out, const wh_store_opts_t *opts, char *err, size_t errlen);
/* Queues job for the writer. Returns 0 (cb will run exactly once), WH_EFULL when the queue is
 * full, WH_ESHUTDOWN when closing (cb will not run). Thread-safe. WH_EINVAL (cb will not run)
 * when instance, event, dedup_id, body or cb is NULL. Empty phone or lid count as absent. */
int wh_store_submit(wh_store_t *s, wh_ingest_t *job);
/* 1 when the last write succeeded (or nothing was written yet) and the store is not closing. */
int wh_store_ready(wh_store_t *s);
/* Number of jobs waiting for the writer. */
size_t wh_store_queue_depth(wh_store_t *s);
/* Refuses new submissions, commits everything queued, stops the writer, closes. NULL is ok. */
void wh_store_close(wh_store_t *s);

/* Schema version after migrations (PRAGMA user_version). */
int wh_store_schema_version(wh_store_t *s);

/* A stored event, as read by the events listing. Strings are valid during the callback only. */
typedef struct wh_event_row {
    int64_t id;
    int64_t received_at;
    const char *instance;
    const char *event;
    const char *dedup_id;
    const char *contact_key; /* may be NULL */
    const char *status;
    const char *body;
} wh_event_row_t;

typedef int (*wh_event_row_cb)(const wh_event_row_t *row, void *ctx); /* non-zero stops */

/* Lists events with id > since, oldest first, at most limit rows, from a read-only connection
 * to the database at path. Returns 0 or a WH_E* code with the reason in err. */
int wh_store_events_list(const char *path, int64_t since, int limit, wh_event_row_cb cb,
                         void *ctx, char *err, size_t errlen);

/* Looks up the phone learned for (instance, lid) in the alias table, from a read-only connection
 * to the database at path. Copies it NUL-terminated into phone_out and returns 0; WH_ENOTFOUND
 * when no alias is known, WH_EINVAL when it does not fit in outlen bytes, WH_EIO when the
 * database cannot be read. */
int wh_store_alias_lookup(const char *path, const char *instance, const char *lid, char *phone_out,
                          size_t outlen);

#endif
