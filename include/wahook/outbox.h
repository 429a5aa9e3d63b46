/* The delivery side of the outbox: what deliverers read (due rows in strict FIFO per target and
 * contact, echoes of timed-out sends, connection states) on their own read-only connection, what
 * they write through the store writer (completions, retries, dead letters, progress, sent
 * messages, contacts not on WhatsApp), alerts raised by C code (rate-limited per target, or once
 * per incident), and the operators' list/show/retry/drop. Times are ms since the epoch. */
#ifndef WAHOOK_OUTBOX_H
#define WAHOOK_OUTBOX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/store.h"

/* One outbox row. Strings are owned (wh_outbox_row_clear frees them); NULL when the column is. */
typedef struct wh_outbox_row {
    int64_t id;
    int64_t event_id;    /* 0 for actions of a timer run or alerts raised by C code */
    char *instance;
    char *contact_key;   /* "" for instance-level rows */
    char *target;        /* evolution | crm | mail | alert */
    char *kind;          /* the action type: send_text, crm, mail, alert */
    char *payload;       /* the action JSON */
    char *status;        /* pending | inflight | done | dead | dropped */
    int attempts;
    int64_t next_attempt_at;
    char *progress;      /* JSON text or NULL */
    char *last_error;
    char *response;
    int64_t created_at;
    int64_t updated_at;
} wh_outbox_row_t;

void wh_outbox_row_clear(wh_outbox_row_t *r);
/* The row as a new JSON object (payload, progress and a JSON response decoded; a response that
 * is not JSON stays a string). NULL on ENOMEM. */
json_t *wh_outbox_row_json(const wh_outbox_row_t *r);

/* Targets whose rows keep strict FIFO per (target, instance, contact_key): evolution and crm.
 * mail and alert rows have no order among themselves. */
int wh_outbox_target_ordered(const char *target);

/* Called by the store writer after a batch committed new outbox rows (actions of a work commit,
 * alerts, retried rows) — the deliverers' wake-up, next to the processors' commit hook. Set it
 * before deliverers start; fn must be cheap and thread-safe. NULL fn removes it. */
void wh_store_set_outbox_hook(wh_store_t *s, void (*fn)(void *arg), void *arg);

/* Returns once the store writer has finished every batch it had started before the call (and
 * so every call of a hook it read before). After wh_store_set_outbox_hook(s, NULL, NULL), the
 * old hook's argument may be freed once this returns. 0 or WH_ESHUTDOWN / WH_EBUSY. */
int wh_outbox_barrier(wh_store_t *s);

/* ---- the deliverer's read side --------------------------------------------------------------- */

typedef struct wh_outbox_reader wh_outbox_reader_t;
int wh_outbox_reader_open(wh_outbox_reader_t **out, const char *path, char *err, size_t errlen);
void wh_outbox_reader_close(wh_outbox_reader_t *r);

/* What wh_outbox_next looks for. */
typedef struct wh_outbox_query {
    const char *target;
    unsigned part, nparts;   /* partition of (instance, contact_key) by wh_store_partition */
    int64_t now;
    const int64_t *skip;     /* ids already in flight in this deliverer: not returned */
    size_t nskip;
    const char *const *paused; /* instances whose rows are not returned (evolution pause) */
    size_t npaused;
} wh_outbox_query_t;

/* Fills out[0..max) with pending rows of q->target in q's partition that are due (next_attempt_at
 * <= now), oldest first. For an ordered target a row is returned only when no older row of the
 * same (target, instance, contact_key) is pending or inflight — a row waiting for its retry holds
 * back the ones behind it. *n is the number filled; the caller clears them. Rows stay 'pending'
 * in the database while they are delivered (the deliverer keeps them in flight in memory), so a
 * crash redelivers them. Returns 0 or WH_EIO. */
int wh_outbox_next(wh_outbox_reader_t *r, const wh_outbox_query_t *q, wh_outbox_row_t *out,
                   size_t max, size_t *n);

/* The rows queued behind head (same target, instance and contact_key, still pending, newer),
 * oldest first, at most max: merged into one CRM run with head. Returns 0 or WH_EIO. */
int wh_outbox_followers(wh_outbox_reader_t *r, const wh_outbox_row_t *head, wh_outbox_row_t *out,
                        size_t max, size_t *n);

/* The earliest next_attempt_at later than now of a pending row of target in the partition, or
 * INT64_MAX when none. */
int64_t wh_outbox_next_due(wh_outbox_reader_t *r, const char *target, unsigned part,
                           unsigned nparts, int64_t now);

/* The echo of a timed-out send: an outbound message of instance to contact_a or contact_b (either
 * may be NULL) with exactly this text, stored at or after `after`, not already known as sent by
 * wahook. Copies its WhatsApp id into wa_id and returns 0; WH_ENOTFOUND when there is none. */
int wh_outbox_find_echo(wh_outbox_reader_t *r, const char *instance, const char *contact_a,
                        const char *contact_b, const char *text, int64_t after, char *wa_id,
                        size_t wa_len);

/* The latest known connection state of instance (the newest connection_history row) into out;
 * WH_ENOTFOUND when none is known. */
int wh_outbox_connection_state(wh_outbox_reader_t *r, const char *instance, char *out,
                               size_t outlen);

/* Counts of pending and dead rows per target: a new object {"<target>":{"pending":N,"dead":N}}
 * (targets without such rows are absent). NULL on error. */
json_t *wh_outbox_counts(wh_outbox_reader_t *r);

/* ---- the deliverer's writes (through the store writer) --------------------------------------- */

/* An alert raised by C code: an outbox row shaped exactly like a script's wahook.alert action
 * (target 'alert', kind 'alert', payload {"type":"alert","kind":…,"text":…,"fields":{…}}).
 * Optional gates, checked and updated in the same transaction as the insert:
 *  - incident: one alert per incident. With incident_clear 0 the alert is inserted only when
 *    the incident is not already open (it is then opened); with incident_clear 1 only when it
 *    is open (it is then cleared). The incident key is added to fields as "incident", and
 *    the payload gets "gated":true (the deliverer does not gate it again).
 *  - rate_target/rate_kind: at most one alert per (target, kind) per rate_interval_ms. */
typedef struct wh_outbox_alert {
    const char *instance;    /* NULL: "" */
    const char *kind;        /* required: letters, digits, '_', '.', '-' */
    const char *text;        /* required */
    const json_t *fields;    /* an object or NULL; copied */
    const char *incident;    /* NULL: no incident gate */
    int incident_clear;
    const char *rate_target; /* NULL: no rate gate */
    const char *rate_kind;
    int64_t rate_interval_ms;
} wh_outbox_alert_t;

/* What a deliverer decided about one row. */
typedef enum wh_outbox_op_kind {
    WH_OUTBOX_DONE = 1,     /* status done; response and progress kept */
    WH_OUTBOX_RETRY = 2,    /* attempts+1, next_attempt_at, last_error, response */
    WH_OUTBOX_DEAD = 3,     /* attempts+1, status dead, last_error, response */
    WH_OUTBOX_HOLD = 4,     /* stays pending without consuming an attempt (misconfigured target,
                             * or an echo grace): next_attempt_at, last_error, response */
    WH_OUTBOX_PROGRESS = 5, /* progress only (between the steps of a multi-step action) */
} wh_outbox_op_kind_t;

/* A message wahook sent (from a sendText answer): recorded in messages as direction 'out',
 * origin 'wahook', status PENDING, so the send.message echo and receipts attach to it. */
typedef struct wh_outbox_sent {
    const char *instance;
    const char *wa_id;
    const char *contact_key; /* may be NULL */
    const char *chat_jid;    /* may be NULL */
    const char *text;
    int64_t ts;              /* WhatsApp's seconds, 0 when unknown */
} wh_outbox_sent_t;

typedef struct wh_outbox_op {
    wh_outbox_op_kind_t op;
    int64_t id;
    const char *instance;     /* the row's instance: needed by echo_wa_id and not_on_whatsapp */
    int64_t next_attempt_at;  /* RETRY / HOLD */
    const char *error;        /* RETRY / DEAD / HOLD: last_error (NULL keeps it) */
    const char *response;     /* the peer's answer, truncated to 4 KiB; NULL keeps it */
    const char *progress;     /* JSON text; NULL keeps it */
    /* Extras written in the same transaction (any may be NULL): */
    const wh_outbox_sent_t *sent;     /* DONE of a sendText */
    const char *echo_wa_id;           /* DONE by echo: that message becomes origin 'wahook' */
    const char *not_on_whatsapp;      /* contact key (of the row's instance) to flag
                                       * contacts.on_whatsapp = 0 */
    const wh_outbox_alert_t *alert;   /* e.g. the dead-letter alert, with its rate gate */
    int status;  /* set by wh_outbox_apply: 0, or WH_ENOTFOUND when the row is no longer pending
                  * (dropped or retried by an operator meanwhile: nothing of the op was written) */
    int alerted; /* set: 1 when the op's alert row was inserted (not suppressed by its gate) */
} wh_outbox_op_t;

/* The longest response kept, in bytes. */
#define WH_OUTBOX_RESPONSE_MAX 4096

/* Applies ops[0..n) in one writer transaction and waits for it; each op's status is set. Returns
 * 0 when the transaction committed (individual ops may still report WH_ENOTFOUND), WH_EIO /
 * WH_EFULL when it did not (nothing written: the rows stay pending and are delivered again),
 * WH_ESHUTDOWN, WH_EBUSY. Never call from a store callback. */
int wh_outbox_apply(wh_store_t *s, wh_outbox_op_t *ops, size_t n);

/* Inserts an alert row (gates as described above). Returns 1 when inserted, 0 when a gate
 * suppressed it, or a negative WH_E* code. Synchronous; never from a store callback. */
int wh_outbox_alert(wh_store_t *s, const wh_outbox_alert_t *a);

/* The incident gate for an alert row queued by a script (its kind implies an incident, see
 * deliver.c): in one transaction, when the incident is in the state the alert changes (not open
 * for an opening alert, open for a clearing one) it is opened/cleared and the row's progress set
 * to progress (the gate passed: a retry of the row does not ask again), and 1 is returned; else
 * the row becomes done with response {"suppressed":"…"} and 0 is returned. WH_ENOTFOUND when the
 * row is no longer pending. Alert rows inserted by wh_outbox_alert carry "gated":true in their
 * payload and need no second gate. */
int wh_outbox_gate_alert(wh_store_t *s, int64_t id, const char *incident, int clear,
                         const char *progress);

/* Puts rows left 'inflight' by a crashed process back to 'pending' (at start, before any
 * deliverer reads). Returns the number of rows reset, or a negative WH_E* code. */
int wh_outbox_reset_inflight(wh_store_t *s);

/* ---- operators ------------------------------------------------------------------------------- */

typedef int (*wh_outbox_row_cb)(const wh_outbox_row_t *row, void *ctx); /* non-zero stops */

/* Lists rows newest first, at most limit, optionally only of one status and/or target (NULL:
 * any), from a read-only connection to the database at path. Returns 0 or a WH_E* code with the
 * reason in err. */
int wh_outbox_list(const char *path, const char *status, const char *target, int limit,
                   wh_outbox_row_cb cb, void *ctx, char *err, size_t errlen);
/* Calls cb once with row id; WH_ENOTFOUND when there is none. */
int wh_outbox_show(const char *path, int64_t id, wh_outbox_row_cb cb, void *ctx, char *err,
                   size_t errlen);

/* Through the writer, synchronous. retry: a dead row, or a pending row waiting for its retry
 * time, becomes due now with attempts 0 (last_error kept until it is done); WH_ENOTFOUND for an
 * unknown id, WH_EINVAL when it is done or dropped. drop: a pending or dead row becomes
 * 'dropped' (never delivered; it no longer holds back its contact's later rows); WH_EINVAL when
 * it is done or already dropped. */
int wh_outbox_retry(wh_store_t *s, int64_t id);
int wh_outbox_drop(wh_store_t *s, int64_t id);

#endif
