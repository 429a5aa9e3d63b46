/* The durable store: one SQLite database in WAL mode, numbered migrations, and one writer thread
 * that owns the write connection and commits queued events in batches (group commit). Readers
 * use their own connections. */
#ifndef WAHOOK_STORE_H
#define WAHOOK_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "wahook/outcome.h"

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
/* The schema version this build migrates to (the number of migrations it knows). */
int wh_store_schema_latest(void);

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

/* ---- processing: work items, outcomes, state (the transactional outbox) ----------------- */


/* Partition of a contact among nparts processors: FNV-1a of contact_key, or of "@" + instance for
 * events without a contact, modulo nparts. Stable across runs and platforms. */
unsigned wh_store_partition(const char *instance, const char *contact_key, unsigned nparts);

/* Wakes whoever waits for work: called by the writer thread after every batch that committed new
 * events (not duplicates), work commits that set timers or scheduled retries, event retries and
 * contact merges; before that batch's callbacks run. Set before processors start; fn must be
 * cheap and thread-safe. */
void wh_store_set_commit_hook(wh_store_t *s, void (*fn)(void *arg), void *arg);

/* A processor's read side: its own read-only connection, prepared statements, and the
 * partition SQL function. One per thread. */
typedef struct wh_store_reader wh_store_reader_t;
int wh_store_reader_open(wh_store_reader_t **out, const char *path, char *err, size_t errlen);
void wh_store_reader_close(wh_store_reader_t *r);

/* One unit of work for a processor: a pending event, or a due timer. Strings are owned. */
typedef struct wh_work_item {
    int64_t id;              /* events.id, or timers.id when is_timer */
    int is_timer;
    int64_t received_at;     /* ms: the event's arrival, or the timer's due_at */
    char *instance;
    char *event;             /* the event name; "timer" for timers */
    char *contact_key;       /* NULL: instance-level (connection, QR, …) */
    char *body;              /* the stored event body; for timers the payload JSON or NULL */
    char *timer_name;        /* timers only */
    int attempts;            /* failed runs so far */
} wh_work_item_t;

/* Fills out[0..max) with work of partition part (of nparts) that is due at now_ms, oldest first:
 * pending events in id order honouring strict FIFO per contact (a contact whose oldest pending
 * event waits for its retry time contributes nothing after it), then due timers of contacts
 * that have no pending events. A contact into which a LID contact waits to be merged
 * (wh_store_next_merge) contributes nothing until the merge is done. *n is the number filled.
 * Several items of one contact may be returned, in order: when one of them is retried, the
 * caller must not run that contact's later items from the same call. Items stay pending until
 * their commit, so call again only after the previous items' commits completed. Returns 0 or a
 * WH_E* code with the reason in err. */
int wh_store_next_work(wh_store_reader_t *r, unsigned part, unsigned nparts, int64_t now_ms,
                       wh_work_item_t *out, size_t max, size_t *n, char *err, size_t errlen);
/* Frees the strings of n items. */
void wh_store_work_free(wh_work_item_t *items, size_t n);

/* The earliest due time (ms) of a pending retry or timer in partition part, or INT64_MAX when
 * there is none; processors sleep until then (or until woken). Only what wh_store_next_work
 * would then return counts: a contact's oldest pending event, timers of contacts without
 * pending events, nothing of a contact waiting for a merge (the commit hook wakes those). */
int64_t wh_store_next_due(wh_store_reader_t *r, unsigned part, unsigned nparts);

/* The saved state of a contact (instance-level when contact_key is NULL) as a new JSON object
 * in *state, or NULL when none. Returns 0 or a WH_E* code. */
int wh_store_state_get(wh_store_reader_t *r, const char *instance, const char *contact_key,
                       json_t **state);

/* Who sent an outgoing message: copies "wahook" into out and returns 0 when wa_id is a message
 * wahook itself sent (recorded from the send response); else WH_ENOTFOUND with out = "" (the
 * caller decides between phone and another API client). WH_EINVAL when out is too small. */
int wh_store_message_origin(wh_store_reader_t *r, const char *instance, const char *wa_id,
                            char *out, size_t outlen);

/* Ids of the Evolution sends queued for contact_key before before_ms that are not delivered
 * yet (at most max, oldest first): the processor holds back the echo of an outgoing message
 * while one of them is in flight, so it can tell wahook's own send from another client's. */
int wh_store_pending_sends(wh_store_reader_t *r, const char *instance, const char *contact_key,
                           int64_t before_ms, int64_t *ids, size_t max, size_t *n);

typedef enum wh_work_status {
    WH_WORK_DONE = 1,  /* handler ran (or there was none): apply the outcome */
    WH_WORK_RETRY = 2, /* failed: attempts+1, keep error, try again at next_attempt_at */
    WH_WORK_DEAD = 3,  /* failed for the last time: attempts+1, keep error, status 'dead' */
} wh_work_status_t;

struct wh_work_commit;
/* Called on the writer thread once the commit's transaction ended; status 0 or WH_E*:
 * WH_ENOTFOUND when the event is unknown or no longer pending (already decided: nothing was
 * written), WH_EINVAL when the commit itself is malformed (an action type without a target, a
 * timer without a name, …: nothing was written), WH_EFULL / WH_EIO when the database failed
 * (nothing was written; commit again later). */
typedef void (*wh_work_commit_cb)(struct wh_work_commit *c, int status);

/* Everything that processing one work item changes, committed by the writer in one
 * transaction (group-committed with others). The caller owns the memory until cb runs. */
typedef struct wh_work_commit {
    const wh_work_item_t *item;
    wh_work_status_t status;
    const char *error;          /* RETRY / DEAD: the last error, with traceback */
    int64_t next_attempt_at;    /* RETRY: ms */
    const char *script_version; /* content hash of the scripts that ran */
    /* Native records (DESIGN.md "What the runtime records natively"): the normalised view of
     * the event (ev.msg) or NULL when normalisation failed; written whatever the status. */
    json_t *msg;
    const char *origin;         /* messages: "contact", "wahook", "phone" or "api" */
    const wh_outcome_t *outcome; /* DONE only: actions → outbox rows, timers, cancels, state,
                                  * facts (NULL = nothing) */
    wh_work_commit_cb cb;
    void *user;
    struct wh_work_commit *next_commit; /* owned by the store while queued */
} wh_work_commit_t;

/* Queues c for the writer. Returns 0 (cb will run exactly once), WH_EFULL, WH_ESHUTDOWN;
 * WH_EINVAL (cb will not run) when c, c->item or c->cb is NULL. Work commits share the FIFO
 * with ingest but have their own queue_max, so an ingest flood cannot refuse them.
 *
 * What one commit writes (rows keyed by contact use '' for instance-level work):
 *  - always, for events with c->msg: the native records by event name — messages.upsert and
 *    send.message upsert messages (status only moves forward; ERROR/DELETED are terminal) and
 *    apply a receipt that came first; inbound messages.upsert also upserts contacts (first/last
 *    seen = the event's arrival); messages.update raises a known message's status or keeps a
 *    pending receipt; contacts.* upsert contacts; connection.update adds connection history;
 *    qrcode.updated replaces qr_latest; presence.update sets the contact's presence.
 *  - DONE: the event becomes 'done' (attempts+1, processed_at, script_version); the outcome's
 *    state, timers (same name replaces), cancels, actions (outbox target: send_text→evolution,
 *    crm, mail, alert), facts (event_id NULL for timer runs) and metrics. For a timer item the
 *    timer row is deleted first unless it was replaced meanwhile.
 *  - RETRY: attempts+1, error, next_attempt_at (a timer is rescheduled to it). DEAD: attempts+1,
 *    error, status 'dead' (a timer is deleted and a 'timer_dead' fact {name, error} recorded).
 *    Nothing from the outcome. */
int wh_store_commit_work(wh_store_t *s, wh_work_commit_t *c);

/* LID merges (DESIGN.md rule 4b). When ingest learns a new LID -> phone alias and the store
 * holds rows keyed by the LID contact (state, timers, contacts, facts, messages, pending
 * events), it notes a merge from the LID key to the phone key. Until the merge is done, the
 * phone contact's events and timers are held back (wh_store_next_work), so they see the merged
 * state; processors must therefore call wh_store_next_merge and wh_store_merge_contact. */

/* A noted merge whose LID key falls in partition part and has no pending events any more:
 * copies it into the buffers and returns 0; WH_ENOTFOUND when there is none ready, WH_EINVAL
 * when a buffer is too small, WH_EIO on a read error. Call from the processor of part when it
 * has no work in flight. */
int wh_store_next_merge(wh_store_reader_t *r, unsigned part, unsigned nparts, char *instance,
                        size_t ilen, char *from_key, size_t flen, char *to_key, size_t tlen);

/* Merges contact from_key into to_key of instance in one transaction, through the writer, and
 * waits for it: state (moved when to_key has none, else to_key's kept with the top-level keys
 * only from_key had added), timers (a name clash keeps to_key's), facts, pending outbox rows,
 * messages and the contacts row (first/last seen, push name, presence) are re-keyed, and the
 * noted merge is removed. Returns 0, WH_EINVAL for empty or equal keys, or a store error. Never
 * call from a store callback (the writer would wait for itself). */
int wh_store_merge_contact(wh_store_t *s, const char *instance, const char *from_key,
                           const char *to_key);

/* Operator actions on an event, through the writer: retry puts a dead or failed event back to
 * pending with attempts 0 (WH_ENOTFOUND for an unknown id, WH_EINVAL when it is not dead or
 * failed). Synchronous: waits for the commit (never call from a store callback); WH_EBUSY when
 * too many such calls wait at once. "Failed" is a pending event waiting for its retry time; it
 * becomes due at once. The last error is kept until the event is done. */
int wh_store_event_retry(wh_store_t *s, int64_t id);

/* One event with its processing columns, read-only, for `wahook events show`. Strings valid
 * during the callback. */
typedef struct wh_event_detail {
    wh_event_row_t row;
    int attempts;
    const char *last_error;     /* may be NULL */
    const char *script_version; /* may be NULL */
    int64_t processed_at;       /* 0 when not yet */
    int64_t next_attempt_at;
} wh_event_detail_t;
/* Calls cb once with event id and returns 0; WH_ENOTFOUND (reason in err) when there is none. */
int wh_store_event_show(const char *path, int64_t id,
                        int (*cb)(const wh_event_detail_t *d, void *ctx), void *ctx, char *err,
                        size_t errlen);

/* Counts by status ("pending", "done", "dead") for /readyz details and tests; NULL outputs are
 * skipped. */
int wh_store_event_counts(const char *path, int64_t *pending, int64_t *done, int64_t *dead);

#endif
