/* The SQLite store: numbered migrations, one writer thread that group-commits queued events with
 * dedup and LID alias resolution, and read-only helpers for the events listing and alias lookups. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "wahook/common.h"
#include "wahook/envelope.h"
#include "wahook/log.h"
#include "wahook/store.h"

#define WH__QUEUE_DEFAULT 10000
#define WH__BATCH_DEFAULT 256
#define WH__BUSY_DEFAULT_MS 5000

/* Migration N is wh__migrations[N - 1]. Append only: a released migration never changes. */
static const char *const wh__migrations[] = {
    /* 1: the event inbox and the LID -> phone alias table (DESIGN.md rules 2 and 4b). */
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY,"
    " received_at INTEGER NOT NULL," /* ms since the epoch */
    " instance TEXT NOT NULL,"
    " event TEXT NOT NULL,"
    " dedup_id TEXT NOT NULL,"
    " contact_key TEXT,"
    " body TEXT NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'pending',"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT,"
    " script_version TEXT,"
    " processed_at INTEGER,"
    " UNIQUE(instance, event, dedup_id));"
    "CREATE INDEX events_status ON events(status, id);"
    "CREATE INDEX events_contact ON events(contact_key, id);"
    "CREATE TABLE contact_aliases("
    " instance TEXT NOT NULL,"
    " lid TEXT NOT NULL,"
    " phone TEXT NOT NULL,"
    " learned_at INTEGER NOT NULL,"
    " PRIMARY KEY(instance, lid));",
};

struct wh_store {
    sqlite3 *db; /* write connection: used by the opener, then by the writer thread only */
    sqlite3_stmt *st_begin, *st_commit, *st_rollback;
    sqlite3_stmt *st_alias_get, *st_alias_put, *st_insert, *st_find;
    int schema_version;
    size_t queue_max, batch_max;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    wh_ingest_t *head, *tail; /* under mu */
    size_t count;             /* under mu */
    int closing;              /* under mu */
    pthread_t writer;
    int writer_started;

    atomic_int write_ok; /* 0 after a failed batch until one succeeds */

    /* Per-batch results, batch_max long, so the writer allocates nothing per job for them. */
    int64_t *ids;
    int *status;
    unsigned char *dup;
    /* Failure streak, for logging transitions rather than every failed batch. */
    int fail_rc;
    unsigned long fail_batches;
};

static void wh__set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *wh__nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Steps a statement that returns no rows and resets it. Returns SQLITE_OK or the error. */
static int wh__run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Runs a one-row PRAGMA and copies its first column as text. */
static int wh__pragma_text(sqlite3 *db, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, outlen, "%s", t != NULL ? (const char *)t : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        snprintf(out, outlen, "%s", "");
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int wh__pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    char buf[32];
    int rc = wh__pragma_text(db, sql, buf, sizeof(buf));
    if (rc == SQLITE_OK)
        *out = strtoll(buf, NULL, 10);
    return rc;
}

/* Brings the schema to the newest version, one transaction per migration. The version is re-read
 * under the write lock so two processes opening a fresh database at once do not both migrate. */
static int wh__migrate(sqlite3 *db, int *version, char *err, size_t errlen)
{
    const int known = (int)WH_ARRAY_SIZE(wh__migrations);
    for (;;) {
        int64_t cur = 0;
        if (wh__pragma_int(db, "PRAGMA user_version", &cur) != SQLITE_OK) {
            wh__set_err(err, errlen, "cannot read schema version: %s", sqlite3_errmsg(db));
            return WH_EIO;
        }
        if (cur > known) {
            wh__set_err(err, errlen,
                        "database schema version %lld is newer than this wahook supports (%d); "
                        "use a newer wahook or another database",
                        (long long)cur, known);
            return WH_EINVAL;
        }
        if (cur == known) {
            *version = known;
            return WH_OK;
        }
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            wh__set_err(err, errlen, "cannot start migration: %s", sqlite3_errmsg(db));
            return WH_EIO;
        }
        int64_t locked = 0;
        if (wh__pragma_int(db, "PRAGMA user_version", &locked) != SQLITE_OK)
            goto fail;
        if (locked != cur) { /* someone else migrated meanwhile: look again */
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            continue;
        }
        char setv[48];
        snprintf(setv, sizeof(setv), "PRAGMA user_version = %d", (int)cur + 1);
        if (sqlite3_exec(db, wh__migrations[cur], NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, setv, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            goto fail;
        continue;
    fail:
        wh__set_err(err, errlen, "migration %d failed: %s", (int)cur + 1, sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db))
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return WH_EIO;
    }
}

static int wh__prepare_all(wh_store_t *s, char *err, size_t errlen)
{
    const struct {
        sqlite3_stmt **st;
        const char *sql;
    } list[] = {
        {&s->st_begin, "BEGIN IMMEDIATE"},
        {&s->st_commit, "COMMIT"},
        {&s->st_rollback, "ROLLBACK"},
        {&s->st_alias_get, "SELECT phone FROM contact_aliases WHERE instance = ?1 AND lid = ?2"},
        /* Rewrite only when the phone changed, so a repeated mapping costs no page write. */
        {&s->st_alias_put,
         "INSERT INTO contact_aliases(instance, lid, phone, learned_at) VALUES(?1, ?2, ?3, ?4) "
         "ON CONFLICT(instance, lid) DO UPDATE SET phone = excluded.phone, "
         "learned_at = excluded.learned_at WHERE phone <> excluded.phone"},
        /* Only the dedup conflict is ignored; any other constraint still fails the insert. */
        {&s->st_insert,
         "INSERT INTO events(received_at, instance, event, dedup_id, contact_key, body) "
         "VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(instance, event, dedup_id) DO NOTHING"},
        {&s->st_find, "SELECT id FROM events WHERE instance = ?1 AND event = ?2 AND dedup_id = ?3"},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(list); i++) {
        if (sqlite3_prepare_v3(s->db, list[i].sql, -1, SQLITE_PREPARE_PERSISTENT, list[i].st,
                               NULL) != SQLITE_OK) {
            wh__set_err(err, errlen, "cannot prepare store statement: %s", sqlite3_errmsg(s->db));
            return WH_EIO;
        }
    }
    return WH_OK;
}

/* A failure caused by the job itself (too big, a constraint), with the transaction still open:
 * it fails that job only, so one bad submission cannot keep failing its batch neighbours. */
static int wh__is_job_error(sqlite3 *db, int rc)
{
    switch (rc & 0xff) {
    case SQLITE_TOOBIG:
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return !sqlite3_get_autocommit(db);
    default:
        return 0;
    }
}

/* Stores one job inside the open transaction. Returns SQLITE_OK with *status set (0, or a WH_E*
 * code for a job refused on its own), or the SQLite error that fails the whole batch. */
static int wh__write_job(wh_store_t *s, const wh_ingest_t *job, int64_t now, int64_t *id,
                         unsigned char *dup, int *status)
{
    const char *phone = wh__nonempty(job->phone), *lid = wh__nonempty(job->lid);
    const char *alias_phone = NULL;
    char *key = NULL;
    int rc = SQLITE_OK;

    *id = 0;
    *dup = 0;
    *status = WH_OK;
    if (phone != NULL && lid != NULL) {
        sqlite3_stmt *st = s->st_alias_put;
        sqlite3_bind_text(st, 1, job->instance, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lid, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, phone, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now);
        if ((rc = wh__run(st)) != SQLITE_OK)
            goto out;
    } else if (lid != NULL) {
        sqlite3_stmt *st = s->st_alias_get;
        sqlite3_bind_text(st, 1, job->instance, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lid, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            alias_phone = (const char *)sqlite3_column_text(st, 0); /* valid until the reset */
        } else if (rc != SQLITE_DONE) {
            sqlite3_reset(st);
            goto out;
        }
        rc = SQLITE_OK;
    }
    if (phone != NULL || lid != NULL) {
        key = wh_contact_key(phone, lid, alias_phone);
        if (lid != NULL && phone == NULL)
            sqlite3_reset(s->st_alias_get);
        if (key == NULL) {
            *status = WH_ENOMEM;
            goto out;
        }
    }

    sqlite3_stmt *st = s->st_insert;
    if ((rc = sqlite3_bind_int64(st, 1, job->received_at)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 2, job->instance, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 3, job->event, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 4, job->dedup_id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = key != NULL ? sqlite3_bind_text(st, 5, key, -1, SQLITE_STATIC)
                          : sqlite3_bind_null(st, 5)) != SQLITE_OK ||
        (rc = sqlite3_bind_text64(st, 6, job->body, job->body_len, SQLITE_STATIC, SQLITE_UTF8)) !=
            SQLITE_OK)
        goto out;
    if ((rc = wh__run(st)) != SQLITE_OK)
        goto out;
    if (sqlite3_changes(s->db) > 0) {
        *id = sqlite3_last_insert_rowid(s->db);
        goto out;
    }

    /* Already stored (earlier, or earlier in this very transaction): report the first id. */
    st = s->st_find;
    sqlite3_bind_text(st, 1, job->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, job->event, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, job->dedup_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        *dup = 1;
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_CORRUPT; /* the conflict row vanished inside our own transaction */
    }
    sqlite3_reset(st);

out:
    free(key);
    if (rc != SQLITE_OK && wh__is_job_error(s->db, rc)) {
        *status = WH_EINVAL; /* permanent: retrying the same job cannot succeed */
        rc = SQLITE_OK;
    }
    return rc;
}

static void wh__note_result(wh_store_t *s, int rc, const char *msg, size_t n)
{
    if (rc == SQLITE_OK) {
        if (s->fail_batches > 0) {
            wh_log(WH_LOG_INFO, "store writes recovered", "{s:i}", "failed_batches",
                   (int)(s->fail_batches > 1000000000UL ? 1000000000UL : s->fail_batches));
            s->fail_batches = 0;
            s->fail_rc = 0;
        }
        atomic_store(&s->write_ok, 1);
        return;
    }
    /* Log the first failure of a streak and each change of cause, not every failed batch. */
    if (s->fail_batches == 0 || s->fail_rc != rc)
        wh_log(WH_LOG_ERROR, "store write failed", "{s:s,s:i,s:i}", "error", msg, "sqlite_code",
               rc, "events", (int)n);
    s->fail_batches++;
    s->fail_rc = rc;
    atomic_store(&s->write_ok, 0);
}

/* Writes one batch in one transaction, then runs every job's callback. */
static void wh__write_batch(wh_store_t *s, wh_ingest_t *batch, size_t n)
{
    int64_t now = wh_now_ms();
    int rc = wh__run(s->st_begin);
    if (rc == SQLITE_OK) {
        size_t i = 0;
        for (wh_ingest_t *job = batch; job != NULL; job = job->next, i++) {
            rc = wh__write_job(s, job, now, &s->ids[i], &s->dup[i], &s->status[i]);
            if (rc != SQLITE_OK)
                break;
        }
        if (rc == SQLITE_OK)
            rc = wh__run(s->st_commit);
    }

    int fail = WH_OK;
    if (rc != SQLITE_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", sqlite3_errmsg(s->db)); /* ROLLBACK resets it */
        if (!sqlite3_get_autocommit(s->db))
            wh__run(s->st_rollback);
        fail = (rc & 0xff) == SQLITE_FULL ? WH_EFULL : WH_EIO;
        wh__note_result(s, rc, msg, n);
    } else {
        wh__note_result(s, SQLITE_OK, NULL, n);
    }

    /* The callback may free the job: read next first and never look at the job afterwards. */
    size_t i = 0;
    for (wh_ingest_t *job = batch, *next; job != NULL; job = next, i++) {
        next = job->next;
        job->next = NULL;
        if (fail != WH_OK)
            job->cb(job, fail, 0, 0);
        else
            job->cb(job, s->status[i], s->status[i] == WH_OK ? s->ids[i] : 0, s->dup[i]);
    }
}

static void *wh__writer_main(void *arg)
{
    wh_store_t *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->count == 0 && !s->closing)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->count == 0)
            break; /* closing, and everything queued before it is committed */
        /* Group commit: take everything waiting, up to batch_max. */
        wh_ingest_t *batch = s->head, *last = batch;
        size_t n = 1;
        while (n < s->batch_max && last->next != NULL) {
            last = last->next;
            n++;
        }
        s->head = last->next;
        if (s->head == NULL)
            s->tail = NULL;
        last->next = NULL;
        s->count -= n;
        pthread_mutex_unlock(&s->mu);
        wh__write_batch(s, batch, n);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void wh__store_free(wh_store_t *s)
{
    sqlite3_stmt *sts[] = {s->st_begin,     s->st_commit,   s->st_rollback, s->st_alias_get,
                           s->st_alias_put, s->st_insert,   s->st_find};
    for (size_t i = 0; i < WH_ARRAY_SIZE(sts); i++)
        sqlite3_finalize(sts[i]);
    if (s->db != NULL) {
        if (s->writer_started) /* leave a short WAL behind; readers may prevent it, which is fine */
            sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        sqlite3_close(s->db);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->ids);
    free(s->status);
    free(s->dup);
    free(s);
}

int wh_store_open(wh_store_t **out, const wh_store_opts_t *opts, char *err, size_t errlen)
{
    *out = NULL;
    if (opts == NULL || opts->path == NULL || opts->path[0] == '\0') {
        wh__set_err(err, errlen, "store path is empty");
        return WH_EINVAL;
    }
    wh_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        wh__set_err(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    atomic_init(&s->write_ok, 1);
    s->queue_max = opts->queue_max > 0 ? opts->queue_max : WH__QUEUE_DEFAULT;
    s->batch_max = opts->batch_max > 0 ? opts->batch_max : WH__BATCH_DEFAULT;

    int ret = WH_EIO;
    s->ids = malloc(s->batch_max * sizeof(*s->ids));
    s->status = malloc(s->batch_max * sizeof(*s->status));
    s->dup = malloc(s->batch_max * sizeof(*s->dup));
    if (s->ids == NULL || s->status == NULL || s->dup == NULL) {
        wh__set_err(err, errlen, "out of memory");
        ret = WH_ENOMEM;
        goto fail;
    }

    /* No SQLite mutex: the connection is used by one thread at a time (opener, then writer). */
    int rc = sqlite3_open_v2(opts->path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        wh__set_err(err, errlen, "cannot open %s: %s", opts->path,
                    s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms
                                                          : WH__BUSY_DEFAULT_MS);

    char mode[16];
    if (wh__pragma_text(s->db, "PRAGMA journal_mode = WAL", mode, sizeof(mode)) != SQLITE_OK) {
        wh__set_err(err, errlen, "cannot open %s: %s", opts->path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (strcasecmp(mode, "wal") != 0) {
        wh__set_err(err, errlen, "cannot put %s in WAL mode (journal_mode is %s)", opts->path,
                    mode);
        goto fail;
    }
    const char *sync = opts->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
    if (sqlite3_exec(s->db, sync, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK) {
        wh__set_err(err, errlen, "cannot configure %s: %s", opts->path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (opts->max_size > 0) {
        int64_t page = 0;
        char sql[64];
        if (wh__pragma_int(s->db, "PRAGMA page_size", &page) != SQLITE_OK || page <= 0) {
            wh__set_err(err, errlen, "cannot read page size: %s", sqlite3_errmsg(s->db));
            goto fail;
        }
        int64_t pages = opts->max_size / page;
        snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld",
                 (long long)(pages > 0 ? pages : 1));
        if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
            wh__set_err(err, errlen, "cannot cap database size: %s", sqlite3_errmsg(s->db));
            goto fail;
        }
    }

    if ((ret = wh__migrate(s->db, &s->schema_version, err, errlen)) != WH_OK)
        goto fail;
    if ((ret = wh__prepare_all(s, err, errlen)) != WH_OK)
        goto fail;
    if (pthread_create(&s->writer, NULL, wh__writer_main, s) != 0) {
        wh__set_err(err, errlen, "cannot start the store writer thread");
        ret = WH_ERR;
        goto fail;
    }
    s->writer_started = 1;
    *out = s;
    return WH_OK;

fail:
    wh__store_free(s);
    return ret;
}

int wh_store_submit(wh_store_t *s, wh_ingest_t *job)
{
    if (s == NULL || job == NULL || job->instance == NULL || job->event == NULL ||
        job->dedup_id == NULL || job->body == NULL || job->cb == NULL)
        return WH_EINVAL;
    job->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return WH_ESHUTDOWN;
    }
    if (s->count >= s->queue_max) {
        pthread_mutex_unlock(&s->mu);
        return WH_EFULL;
    }
    if (s->tail != NULL)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    /* The writer only sleeps on an empty queue, so only the first job needs to wake it. */
    if (++s->count == 1)
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return WH_OK;
}

int wh_store_ready(wh_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    int closing = s->closing;
    pthread_mutex_unlock(&s->mu);
    return !closing && atomic_load(&s->write_ok);
}

size_t wh_store_queue_depth(wh_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->count;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int wh_store_schema_version(wh_store_t *s)
{
    return s->schema_version;
}

void wh_store_close(wh_store_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->closing = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->writer, NULL);
    wh__store_free(s);
}

static int wh__open_ro(const char *path, sqlite3 **db, char *err, size_t errlen)
{
    *db = NULL;
    if (path == NULL || path[0] == '\0') {
        wh__set_err(err, errlen, "store path is empty");
        return WH_EINVAL;
    }
    int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        wh__set_err(err, errlen, "cannot open %s: %s", path,
                    *db != NULL ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        sqlite3_close(*db);
        *db = NULL;
        return WH_EIO;
    }
    sqlite3_busy_timeout(*db, WH__BUSY_DEFAULT_MS);
    return WH_OK;
}

int wh_store_events_list(const char *path, int64_t since, int limit, wh_event_row_cb cb,
                         void *ctx, char *err, size_t errlen)
{
    if (limit <= 0 || cb == NULL) {
        wh__set_err(err, errlen, "limit must be positive");
        return WH_EINVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__open_ro(path, &db, err, errlen);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, received_at, instance, event, dedup_id, contact_key, status,"
                           " body FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_int64(st, 1, since);
    sqlite3_bind_int(st, 2, limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        wh_event_row_t row = {
            .id = sqlite3_column_int64(st, 0),
            .received_at = sqlite3_column_int64(st, 1),
            .instance = (const char *)sqlite3_column_text(st, 2),
            .event = (const char *)sqlite3_column_text(st, 3),
            .dedup_id = (const char *)sqlite3_column_text(st, 4),
            .contact_key = (const char *)sqlite3_column_text(st, 5),
            .status = (const char *)sqlite3_column_text(st, 6),
            .body = (const char *)sqlite3_column_text(st, 7),
        };
        if (cb(&row, ctx) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc == SQLITE_DONE)
        ret = WH_OK;

done:
    if (ret != WH_OK)
        wh__set_err(err, errlen, "cannot list events: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int wh_store_alias_lookup(const char *path, const char *instance, const char *lid, char *phone_out,
                          size_t outlen)
{
    if (instance == NULL || lid == NULL || phone_out == NULL || outlen == 0)
        return WH_EINVAL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__open_ro(path, &db, NULL, 0);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db, "SELECT phone FROM contact_aliases WHERE instance = ?1 AND lid = ?2",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, lid, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *phone = (const char *)sqlite3_column_text(st, 0);
        size_t len = phone != NULL ? strlen(phone) : 0;
        if (len >= outlen) {
            ret = WH_EINVAL;
        } else {
            memcpy(phone_out, phone != NULL ? phone : "", len + 1);
            ret = WH_OK;
        }
    } else if (rc == SQLITE_DONE) {
        ret = WH_ENOTFOUND;
    }

done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}
