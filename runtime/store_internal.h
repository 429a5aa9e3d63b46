/* Internals shared by store.c (open, migrations, the writer queue, ingest) and store_work.c
 * (processing: work commits, readers, merges, operator actions). Not a public header. */
#ifndef WAHOOK_STORE_INTERNAL_H
#define WAHOOK_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include "wahook/store.h"

#define WH__BUSY_DEFAULT_MS 5000
#define WH__TASKS_MAX 64 /* synchronous operator tasks waiting at once */

/* What a queue slot holds. */
enum { WH__Q_INGEST = 1, WH__Q_WORK = 2, WH__Q_TASK = 3 };

typedef struct wh__qitem {
    void *p; /* wh_ingest_t, wh_work_commit_t or wh__task_t */
    int kind;
} wh__qitem_t;

/* A synchronous task run by the writer for a caller that waits for it (operator actions). */
enum { WH__TASK_RETRY = 1, WH__TASK_MERGE = 2, WH__TASK_FN = 3 };

typedef struct wh__task {
    int op;
    /* WH__TASK_FN (store_outbox.c): runs on the writer connection inside the batch transaction,
     * in the item's savepoint. Returns SQLITE_OK with *status set (0 or a WH_E* code failing
     * this task only), or the SQLite error that fails the batch. Sets *outbox when deliverers
     * should re-scan (the outbox hook runs after the commit). */
    int (*fn)(wh_store_t *s, struct wh__task *t, int64_t now, int *status, int *outbox);
    void *arg;
    int64_t id;           /* RETRY */
    const char *instance; /* MERGE */
    const char *from_key;
    const char *to_key;
    int status; /* set by the writer */
    int done;   /* under the store mutex */
} wh__task_t;

/* Writer statements used by processing, prepared once (store_work.c owns the SQL). */
enum {
    WH__WS_EV_DONE,
    WH__WS_EV_RETRY,
    WH__WS_EV_DEAD,
    WH__WS_EV_REQUEUE,
    WH__WS_EV_EXISTS,
    WH__WS_STATE_PUT,
    WH__WS_STATE_DEL,
    WH__WS_STATE_GET,
    WH__WS_TIMER_DEL_NAME,
    WH__WS_TIMER_PUT,
    WH__WS_TIMER_DEL_ITEM,
    WH__WS_TIMER_RETRY,
    WH__WS_OUTBOX_PUT,
    WH__WS_FACT_PUT,
    WH__WS_METRIC_ADD,
    WH__WS_MSG_PUT,
    WH__WS_MSG_APPLY_PENDING,
    WH__WS_PENDING_DEL,
    WH__WS_MSG_RANK,
    WH__WS_MSG_RAISE,
    WH__WS_PENDING_PUT,
    WH__WS_CONTACT_PUT,
    WH__WS_CONN_PUT,
    WH__WS_QR_PUT,
    WH__WS_MERGE_NOTE,
    WH__WS_MG_STATE_MOVE,
    WH__WS_MG_TIMER_CLASH,
    WH__WS_MG_TIMER_MOVE,
    WH__WS_MG_FACTS,
    WH__WS_MG_OUTBOX,
    WH__WS_MG_MESSAGES,
    WH__WS_MG_CONTACT_MERGE,
    WH__WS_MG_CONTACT_DROP,
    WH__WS_MG_CONTACT_MOVE,
    WH__WS_MG_DONE,
    WH__WS_COUNT
};

struct wh_store {
    sqlite3 *db; /* write connection: used by the opener, then by the writer thread only */
    sqlite3_stmt *st_begin, *st_commit, *st_rollback;
    sqlite3_stmt *st_savepoint, *st_release, *st_rollback_to;
    sqlite3_stmt *st_alias_get, *st_alias_put, *st_insert, *st_find;
    sqlite3_stmt *ws[WH__WS_COUNT];
    int schema_version;
    size_t queue_max, batch_max;

    pthread_mutex_t mu;
    pthread_cond_t cv;      /* the writer waits here for work */
    pthread_cond_t sync_cv; /* synchronous callers wait here for their task */
    /* The FIFO of everything the writer does, as a ring (no allocation per submission). Ingest
     * jobs and work commits are capped separately so a flood of webhooks cannot refuse the
     * processors' commits (which are bounded by the processors themselves). All under mu. */
    wh__qitem_t *ring;
    size_t ring_cap, ring_head, count;
    size_t n_ingest, n_work, n_task;
    int closing;
    void (*hook_fn)(void *arg);
    void *hook_arg;
    void (*outbox_hook_fn)(void *arg); /* deliverers: new or re-queued outbox rows committed */
    void *outbox_hook_arg;
    pthread_t writer;
    int writer_started;

    atomic_int write_ok; /* 0 after a failed batch until one succeeds */

    /* Per-batch scratch, batch_max long, so the writer allocates nothing per item for it. */
    wh__qitem_t *batch;
    int64_t *ids;
    int *status;
    unsigned char *dup;
    /* Reusable buffer for serialising JSON into bound parameters. */
    char *dump;
    size_t dump_cap;
    /* Failure streak, for logging transitions rather than every failed batch. */
    int fail_rc;
    unsigned long fail_batches;
};

/* Helpers from store.c. */
void wh__store_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int wh__store_run(sqlite3_stmt *st);
int wh__store_is_item_error(sqlite3 *db, int rc);
int wh__store_open_ro(const char *path, sqlite3 **db, char *err, size_t errlen);
/* Queues t for the writer and waits until it ran; returns its status. */
int wh__store_sync(wh_store_t *s, wh__task_t *t);

/* From store_work.c, all on the writer connection inside the open batch transaction. They
 * return SQLITE_OK with *status set (0 or a WH_E* code failing that item only), or the SQLite
 * error that fails the whole batch. *wake is set when processors should re-scan. */
int wh__work_prepare(wh_store_t *s, char *err, size_t errlen);
void wh__work_finalize(wh_store_t *s);
int wh__work_apply(wh_store_t *s, wh_work_commit_t *c, int64_t now, int *status, int *wake);
int wh__task_apply(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *wake);
/* The ingest path learned lid -> phone: note a merge when rows keyed by the lid exist. */
int wh__merge_note(wh_store_t *s, const char *instance, const char *lid, const char *phone,
                   int64_t now);

#endif
