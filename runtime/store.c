/* The SQLite store: numbered migrations, one writer thread that group-commits a FIFO of queued
 * events (with dedup and LID alias resolution), processors' work commits and operator tasks, and
 * read-only helpers for the events listing and alias lookups. */
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
#include "wahook/stats.h"
#include "wahook/store.h"
#include "store_internal.h"

#define WH__QUEUE_DEFAULT 10000
#define WH__BATCH_DEFAULT 256

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

    /* 2: processing (DESIGN.md rules 3-4b): retry times, contact state, durable timers, the
     * transactional outbox, script facts, metric counters, the native records and LID merges.
     * Times are ms since the epoch except messages.ts (WhatsApp's seconds). Tables keyed by
     * contact (contact_state, timers, outbox, contacts) use '' for instance-level rows. */
    "ALTER TABLE events ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;"
    /* Small: only pending rows. Per-contact FIFO checks and the retry wake-up time. */
    "CREATE INDEX events_pending ON events(instance, contact_key, id) WHERE status = 'pending';"
    "CREATE INDEX events_retry ON events(next_attempt_at)"
    " WHERE status = 'pending' AND next_attempt_at > 0;"
    "CREATE TABLE contact_state("
    " instance TEXT NOT NULL,"
    " contact_key TEXT NOT NULL,"
    " state TEXT NOT NULL," /* a JSON object */
    " updated_at INTEGER NOT NULL,"
    " PRIMARY KEY(instance, contact_key));"
    /* AUTOINCREMENT: a replaced timer never gets the old one's id back, so a run of the old
     * one cannot delete or reschedule its replacement. */
    "CREATE TABLE timers("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " instance TEXT NOT NULL,"
    " contact_key TEXT NOT NULL,"
    " name TEXT NOT NULL,"
    " due_at INTEGER NOT NULL,"
    " payload TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT,"
    " created_at INTEGER NOT NULL,"
    " UNIQUE(instance, contact_key, name));"
    "CREATE INDEX timers_due ON timers(due_at);"
    "CREATE TABLE outbox("
    " id INTEGER PRIMARY KEY,"
    " event_id INTEGER," /* NULL for actions of a timer run */
    " instance TEXT NOT NULL,"
    " contact_key TEXT NOT NULL,"
    " target TEXT NOT NULL," /* evolution | crm | mail | alert */
    " kind TEXT NOT NULL,"   /* the action type */
    " payload TEXT NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'pending'," /* pending | inflight | done | dead */
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt_at INTEGER NOT NULL DEFAULT 0,"
    " progress TEXT,"
    " last_error TEXT,"
    " response TEXT,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL);"
    "CREATE INDEX outbox_status ON outbox(status, target, id);"
    "CREATE INDEX outbox_contact ON outbox(target, contact_key, id);"
    "CREATE TABLE facts("
    " id INTEGER PRIMARY KEY,"
    " event_id INTEGER,"
    " instance TEXT NOT NULL,"
    " contact_key TEXT,"
    " kind TEXT NOT NULL,"
    " fields TEXT NOT NULL,"
    " created_at INTEGER NOT NULL);"
    "CREATE INDEX facts_kind ON facts(kind, created_at);"
    "CREATE INDEX facts_instance ON facts(instance, created_at);"
    "CREATE INDEX facts_contact ON facts(contact_key);"
    "CREATE TABLE metrics_counts("
    " name TEXT NOT NULL,"
    " labels TEXT NOT NULL," /* compact JSON with sorted keys */
    " value INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(name, labels)) WITHOUT ROWID;"
    "CREATE TABLE messages("
    " instance TEXT NOT NULL,"
    " wa_id TEXT NOT NULL,"
    " contact_key TEXT,"
    " chat_jid TEXT,"
    " direction TEXT," /* in | out */
    " origin TEXT,"    /* contact | wahook | phone | api */
    " type TEXT,"
    " text TEXT,"
    " ts INTEGER," /* seconds */
    " status TEXT,"
    " status_rank INTEGER NOT NULL DEFAULT 0,"
    " event_id INTEGER,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " PRIMARY KEY(instance, wa_id));"
    "CREATE INDEX messages_contact ON messages(contact_key, ts);"
    "CREATE TABLE pending_receipts("
    " instance TEXT NOT NULL,"
    " wa_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " status_rank INTEGER NOT NULL,"
    " at INTEGER NOT NULL,"
    " PRIMARY KEY(instance, wa_id));"
    "CREATE TABLE contacts("
    " instance TEXT NOT NULL,"
    " contact_key TEXT NOT NULL,"
    " phone TEXT,"
    " lid TEXT,"
    " push_name TEXT,"
    " first_seen INTEGER," /* first and last inbound message */
    " last_seen INTEGER,"
    " presence TEXT,"
    " presence_at INTEGER,"
    " PRIMARY KEY(instance, contact_key));"
    "CREATE TABLE connection_history("
    " id INTEGER PRIMARY KEY,"
    " instance TEXT NOT NULL,"
    " state TEXT,"
    " status_reason INTEGER,"
    " at INTEGER NOT NULL,"
    " event_id INTEGER);"
    "CREATE INDEX connection_history_instance ON connection_history(instance, id);"
    /* One row per event, so a retried event does not add history twice. */
    "CREATE UNIQUE INDEX connection_history_event ON connection_history(event_id);"
    "CREATE TABLE qr_latest("
    " instance TEXT PRIMARY KEY,"
    " qr_base64 TEXT,"
    " code TEXT,"
    " pairing_code TEXT,"
    " limit_reached INTEGER NOT NULL DEFAULT 0,"
    " at INTEGER NOT NULL,"
    " event_id INTEGER);"
    "CREATE TABLE contact_merges("
    " instance TEXT NOT NULL,"
    " from_key TEXT NOT NULL," /* the LID key */
    " to_key TEXT NOT NULL,"   /* the phone key */
    " learned_at INTEGER NOT NULL,"
    " PRIMARY KEY(instance, from_key));"
    "CREATE INDEX contact_merges_to ON contact_merges(instance, to_key);",

    /* 3: delivery (store_outbox.c). Whether a contact is on WhatsApp (NULL unknown, 0 not: a
     * sendText answered exists:false); the per-(target, instance, contact) FIFO check and the
     * retry wake-up time of the outbox; one alert per incident (opened/cleared by the watchdog,
     * the scripts' close alert and misconfigured targets); rate-limited alerts per target. */
    "ALTER TABLE contacts ADD COLUMN on_whatsapp INTEGER;"
    "CREATE INDEX outbox_pending ON outbox(target, instance, contact_key, id)"
    " WHERE status IN ('pending', 'inflight');"
    "CREATE INDEX outbox_retry ON outbox(next_attempt_at)"
    " WHERE status = 'pending' AND next_attempt_at > 0;"
    "CREATE TABLE incidents("
    " key TEXT PRIMARY KEY,"
    " opened_at INTEGER,"
    " cleared_at INTEGER," /* NULL while open */
    " last_alert_at INTEGER);"
    "CREATE TABLE target_alerts("
    " target TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " last_at INTEGER NOT NULL,"
    " PRIMARY KEY(target, kind)) WITHOUT ROWID;",
    /* 4: indexes and the bot-reply table the analytics queries need (stats.c). */
    WH_STATS_MIGRATION,
};

void wh__store_set_err(char *err, size_t errlen, const char *fmt, ...)
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
int wh__store_run(sqlite3_stmt *st)
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
            wh__store_set_err(err, errlen, "cannot read schema version: %s", sqlite3_errmsg(db));
            return WH_EIO;
        }
        if (cur > known) {
            wh__store_set_err(err, errlen,
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
            wh__store_set_err(err, errlen, "cannot start migration: %s", sqlite3_errmsg(db));
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
        wh__store_set_err(err, errlen, "migration %d failed: %s", (int)cur + 1, sqlite3_errmsg(db));
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
        /* Each item runs in a savepoint, so one refused on its own data fails alone. */
        {&s->st_savepoint, "SAVEPOINT wh_item"},
        {&s->st_release, "RELEASE wh_item"},
        {&s->st_rollback_to, "ROLLBACK TO wh_item"},
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
            wh__store_set_err(err, errlen, "cannot prepare store statement: %s",
                              sqlite3_errmsg(s->db));
            return WH_EIO;
        }
    }
    return wh__work_prepare(s, err, errlen);
}

/* A failure caused by the job itself (too big, a constraint), with the transaction still open:
 * it fails that job only, so one bad submission cannot keep failing its batch neighbours. */
int wh__store_is_item_error(sqlite3 *db, int rc)
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
        if ((rc = wh__store_run(st)) != SQLITE_OK)
            goto out;
        /* A new or changed mapping: rows a LID-keyed contact left behind must be merged. */
        if (sqlite3_changes(s->db) > 0 &&
            (rc = wh__merge_note(s, job->instance, lid, phone, now)) != SQLITE_OK)
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
    if ((rc = wh__store_run(st)) != SQLITE_OK)
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
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
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

/* Runs one queued item inside the batch transaction, in its own savepoint. Returns SQLITE_OK
 * with s->status[i] set, or the SQLite error that fails the whole batch. Bit 1 of *wake is
 * raised when the item committed something processors must look at, bit 2 when it committed
 * outbox rows deliverers must look at. */
static int wh__write_item(wh_store_t *s, size_t i, int64_t now, int *wake)
{
    const wh__qitem_t *q = &s->batch[i];
    int item_wake = 0, item_outbox = 0;
    int rc = wh__store_run(s->st_savepoint);
    if (rc != SQLITE_OK)
        return rc;
    s->ids[i] = 0;
    s->dup[i] = 0;
    switch (q->kind) {
    case WH__Q_INGEST:
        rc = wh__write_job(s, q->p, now, &s->ids[i], &s->dup[i], &s->status[i]);
        item_wake = !s->dup[i];
        break;
    case WH__Q_WORK: {
        const wh_work_commit_t *c = q->p;
        rc = wh__work_apply(s, q->p, now, &s->status[i], &item_wake);
        /* Actions became outbox rows: the deliverers' hook runs after the commit. */
        item_outbox = c->status == WH_WORK_DONE && c->outcome != NULL &&
                      c->outcome->actions != NULL && json_array_size(c->outcome->actions) > 0;
        break;
    }
    default: {
        wh__task_t *t = q->p;
        if (t->op == WH__TASK_FN)
            rc = t->fn(s, t, now, &s->status[i], &item_outbox);
        else
            rc = wh__task_apply(s, t, now, &s->status[i], &item_wake);
        break;
    }
    }
    if (rc != SQLITE_OK)
        return rc;
    if (s->status[i] != WH_OK) {
        /* Undo whatever part of the item was written; its neighbours keep theirs. */
        if ((rc = wh__store_run(s->st_rollback_to)) != SQLITE_OK)
            return rc;
    } else {
        if (item_wake)
            *wake |= 1;
        if (item_outbox)
            *wake |= 2;
    }
    return wh__store_run(s->st_release);
}

/* Writes one batch in one transaction, then wakes processors and runs every item's callback. */
static void wh__write_batch(wh_store_t *s, size_t n, void (*hook)(void *), void *hook_arg,
                            void (*ohook)(void *), void *ohook_arg)
{
    int64_t now = wh_now_ms();
    int wake = 0;
    int rc = wh__store_run(s->st_begin);
    if (rc == SQLITE_OK) {
        for (size_t i = 0; i < n && rc == SQLITE_OK; i++)
            rc = wh__write_item(s, i, now, &wake);
        if (rc == SQLITE_OK)
            rc = wh__store_run(s->st_commit);
    }

    int fail = WH_OK;
    if (rc != SQLITE_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", sqlite3_errmsg(s->db)); /* ROLLBACK resets it */
        if (!sqlite3_get_autocommit(s->db))
            wh__store_run(s->st_rollback);
        fail = (rc & 0xff) == SQLITE_FULL ? WH_EFULL : WH_EIO;
        wh__note_result(s, rc, msg, n);
        wake = 0;
    } else {
        wh__note_result(s, SQLITE_OK, NULL, n);
    }
    if ((wake & 1) && hook != NULL)
        hook(hook_arg);
    if ((wake & 2) && ohook != NULL)
        ohook(ohook_arg);

    /* A callback may free its item: never look at an item after its callback ran. */
    for (size_t i = 0; i < n; i++) {
        int st = fail != WH_OK ? fail : s->status[i];
        switch (s->batch[i].kind) {
        case WH__Q_INGEST: {
            wh_ingest_t *job = s->batch[i].p;
            job->next = NULL;
            job->cb(job, st, st == WH_OK ? s->ids[i] : 0, st == WH_OK ? s->dup[i] : 0);
            break;
        }
        case WH__Q_WORK: {
            wh_work_commit_t *c = s->batch[i].p;
            c->next_commit = NULL;
            c->cb(c, st);
            break;
        }
        default: {
            wh__task_t *t = s->batch[i].p;
            pthread_mutex_lock(&s->mu);
            t->status = st;
            t->done = 1;
            pthread_cond_broadcast(&s->sync_cv);
            pthread_mutex_unlock(&s->mu);
            break;
        }
        }
        s->batch[i].p = NULL;
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
        /* Group commit: take everything waiting, up to batch_max, in arrival order. */
        size_t n = s->count < s->batch_max ? s->count : s->batch_max;
        for (size_t i = 0; i < n; i++) {
            wh__qitem_t *q = &s->ring[(s->ring_head + i) % s->ring_cap];
            s->batch[i] = *q;
            q->p = NULL;
            if (q->kind == WH__Q_INGEST)
                s->n_ingest--;
            else if (q->kind == WH__Q_WORK)
                s->n_work--;
            else
                s->n_task--;
        }
        s->ring_head = (s->ring_head + n) % s->ring_cap;
        s->count -= n;
        void (*hook)(void *) = s->hook_fn;
        void *hook_arg = s->hook_arg;
        void (*ohook)(void *) = s->outbox_hook_fn;
        void *ohook_arg = s->outbox_hook_arg;
        pthread_mutex_unlock(&s->mu);
        wh__write_batch(s, n, hook, hook_arg, ohook, ohook_arg);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void wh__store_free(wh_store_t *s)
{
    sqlite3_stmt *sts[] = {s->st_begin,       s->st_commit,    s->st_rollback, s->st_savepoint,
                           s->st_release,     s->st_rollback_to, s->st_alias_get,
                           s->st_alias_put,   s->st_insert,    s->st_find};
    for (size_t i = 0; i < WH_ARRAY_SIZE(sts); i++)
        sqlite3_finalize(sts[i]);
    wh__work_finalize(s);
    if (s->db != NULL) {
        if (s->writer_started) /* leave a short WAL behind; readers may prevent it, which is fine */
            sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        sqlite3_close(s->db);
    }
    pthread_cond_destroy(&s->sync_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->ring);
    free(s->batch);
    free(s->ids);
    free(s->status);
    free(s->dup);
    free(s->dump);
    free(s);
}

int wh_store_open(wh_store_t **out, const wh_store_opts_t *opts, char *err, size_t errlen)
{
    *out = NULL;
    if (opts == NULL || opts->path == NULL || opts->path[0] == '\0') {
        wh__store_set_err(err, errlen, "store path is empty");
        return WH_EINVAL;
    }
    wh_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        wh__store_set_err(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->sync_cv, NULL);
    atomic_init(&s->write_ok, 1);
    s->queue_max = opts->queue_max > 0 ? opts->queue_max : WH__QUEUE_DEFAULT;
    s->batch_max = opts->batch_max > 0 ? opts->batch_max : WH__BATCH_DEFAULT;
    /* Room for a full ingest queue, a full work queue and the synchronous tasks. */
    s->ring_cap = 2 * s->queue_max + WH__TASKS_MAX;

    int ret = WH_EIO;
    s->ring = calloc(s->ring_cap, sizeof(*s->ring));
    s->batch = calloc(s->batch_max, sizeof(*s->batch));
    s->ids = malloc(s->batch_max * sizeof(*s->ids));
    s->status = malloc(s->batch_max * sizeof(*s->status));
    s->dup = malloc(s->batch_max * sizeof(*s->dup));
    if (s->ring == NULL || s->batch == NULL || s->ids == NULL || s->status == NULL ||
        s->dup == NULL) {
        wh__store_set_err(err, errlen, "out of memory");
        ret = WH_ENOMEM;
        goto fail;
    }

    /* No SQLite mutex: the connection is used by one thread at a time (opener, then writer). */
    int rc = sqlite3_open_v2(opts->path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot open %s: %s", opts->path,
                    s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms
                                                          : WH__BUSY_DEFAULT_MS);

    char mode[16];
    if (wh__pragma_text(s->db, "PRAGMA journal_mode = WAL", mode, sizeof(mode)) != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot open %s: %s", opts->path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (strcasecmp(mode, "wal") != 0) {
        wh__store_set_err(err, errlen, "cannot put %s in WAL mode (journal_mode is %s)", opts->path,
                    mode);
        goto fail;
    }
    const char *sync = opts->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
    if (sqlite3_exec(s->db, sync, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot configure %s: %s", opts->path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (opts->max_size > 0) {
        int64_t page = 0;
        char sql[64];
        if (wh__pragma_int(s->db, "PRAGMA page_size", &page) != SQLITE_OK || page <= 0) {
            wh__store_set_err(err, errlen, "cannot read page size: %s", sqlite3_errmsg(s->db));
            goto fail;
        }
        int64_t pages = opts->max_size / page;
        snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld",
                 (long long)(pages > 0 ? pages : 1));
        if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
            wh__store_set_err(err, errlen, "cannot cap database size: %s", sqlite3_errmsg(s->db));
            goto fail;
        }
    }

    if ((ret = wh__migrate(s->db, &s->schema_version, err, errlen)) != WH_OK)
        goto fail;
    if ((ret = wh__prepare_all(s, err, errlen)) != WH_OK)
        goto fail;
    if (pthread_create(&s->writer, NULL, wh__writer_main, s) != 0) {
        wh__store_set_err(err, errlen, "cannot start the store writer thread");
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

/* Appends an item to the writer's FIFO under s->mu. The writer only sleeps on an empty queue,
 * so only the first item needs to wake it. */
static void wh__enqueue_locked(wh_store_t *s, void *p, int kind)
{
    wh__qitem_t *q = &s->ring[(s->ring_head + s->count) % s->ring_cap];
    q->p = p;
    q->kind = kind;
    if (kind == WH__Q_INGEST)
        s->n_ingest++;
    else if (kind == WH__Q_WORK)
        s->n_work++;
    else
        s->n_task++;
    if (++s->count == 1)
        pthread_cond_signal(&s->cv);
}

int wh_store_submit(wh_store_t *s, wh_ingest_t *job)
{
    if (s == NULL || job == NULL || job->instance == NULL || job->event == NULL ||
        job->dedup_id == NULL || job->body == NULL || job->cb == NULL)
        return WH_EINVAL;
    job->next = NULL;
    pthread_mutex_lock(&s->mu);
    int ret = WH_OK;
    if (s->closing)
        ret = WH_ESHUTDOWN;
    else if (s->n_ingest >= s->queue_max)
        ret = WH_EFULL;
    else
        wh__enqueue_locked(s, job, WH__Q_INGEST);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int wh_store_commit_work(wh_store_t *s, wh_work_commit_t *c)
{
    if (s == NULL || c == NULL || c->item == NULL || c->cb == NULL)
        return WH_EINVAL;
    c->next_commit = NULL;
    pthread_mutex_lock(&s->mu);
    int ret = WH_OK;
    if (s->closing)
        ret = WH_ESHUTDOWN;
    else if (s->n_work >= s->queue_max)
        ret = WH_EFULL;
    else
        wh__enqueue_locked(s, c, WH__Q_WORK);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int wh__store_sync(wh_store_t *s, wh__task_t *t)
{
    t->done = 0;
    t->status = WH_OK;
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return WH_ESHUTDOWN;
    }
    if (s->n_task >= WH__TASKS_MAX) {
        pthread_mutex_unlock(&s->mu);
        return WH_EBUSY;
    }
    wh__enqueue_locked(s, t, WH__Q_TASK);
    /* close() drains the queue before it stops the writer, so this wait always ends. */
    while (!t->done)
        pthread_cond_wait(&s->sync_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return t->status;
}

void wh_store_set_commit_hook(wh_store_t *s, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->hook_fn = fn;
    s->hook_arg = arg;
    pthread_mutex_unlock(&s->mu);
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

int wh__store_open_ro(const char *path, sqlite3 **db, char *err, size_t errlen)
{
    *db = NULL;
    if (path == NULL || path[0] == '\0') {
        wh__store_set_err(err, errlen, "store path is empty");
        return WH_EINVAL;
    }
    int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot open %s: %s", path,
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
        wh__store_set_err(err, errlen, "limit must be positive");
        return WH_EINVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__store_open_ro(path, &db, err, errlen);
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
        wh__store_set_err(err, errlen, "cannot list events: %s", sqlite3_errmsg(db));
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
    int ret = wh__store_open_ro(path, &db, NULL, 0);
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

int wh_store_schema_latest(void)
{
    return (int)WH_ARRAY_SIZE(wh__migrations);
}
