/* Unit tests for processing on the store: migration 2, partitions, strict per-contact FIFO work
 * selection, work commits (outcome, retries, dead letters, native records), timers, LID contact
 * merges, all-or-nothing commits and operator actions. Real SQLite files in a temp dir; work is
 * driven through the real writer with real wh_outcome_t objects. */
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/outcome.h"
#include "wahook/store.h"
#include "wh_test.h"

static char tmpdir[64];
static int dbseq;

static void db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/w%d.db", tmpdir, ++dbseq);
}

static void remove_db(const char *path)
{
    char p[160];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static wh_store_t *open_store(const char *path, int64_t max_size)
{
    wh_store_opts_t o = {.path = path, .max_size = max_size, .busy_timeout_ms = 20000};
    wh_store_t *s = NULL;
    char err[256] = "";
    int rc = wh_store_open(&s, &o, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "open %s: %s\n", path, err);
    CHECK_INT(rc, 0);
    return s;
}

static wh_store_reader_t *open_reader(const char *path)
{
    wh_store_reader_t *r = NULL;
    char err[256] = "";
    int rc = wh_store_reader_open(&r, path, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "reader %s: %s\n", path, err);
    CHECK_INT(rc, 0);
    return r;
}

/* ---- raw SQL checks, from a connection of their own ---------------------------------------- */

static int64_t q_int(const char *path, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
    } else {
        fprintf(stderr, "q_int: %s: %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The first column of the first row as text: "" when there is no row, "(null)" for NULL. */
static const char *q_text(const char *path, char *buf, size_t len, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(buf, len, "%s", "");
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            snprintf(buf, len, "%s", t != NULL ? t : "(null)");
        }
    } else {
        fprintf(stderr, "q_text: %s: %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return buf;
}

/* ---- synchronous wrappers around the writer ------------------------------------------------- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int status;
    int64_t id;
    int dup;
} waiter_t;

static void waiter_init(waiter_t *w)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

static void waiter_destroy(waiter_t *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

static int waiter_wait(waiter_t *w, int n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (w->done < n && rc == 0)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &until);
    int ok = w->done >= n;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static void on_ingest(wh_ingest_t *job, int status, int64_t id, int duplicate)
{
    waiter_t *w = job->user;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->id = id;
    w->dup = duplicate;
    w->done++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Stores one event; returns its id (or -1). */
static int64_t ingest(wh_store_t *s, const char *instance, const char *event, const char *dedup,
                      const char *phone, const char *lid)
{
    waiter_t w;
    waiter_init(&w);
    wh_ingest_t j = {.instance = instance, .event = event, .dedup_id = dedup, .phone = phone,
                     .lid = lid, .body = "{\"x\":1}", .body_len = 7, .received_at = wh_now_ms(),
                     .cb = on_ingest, .user = &w};
    int64_t id = -1;
    if (wh_store_submit(s, &j) == 0 && waiter_wait(&w, 1) && w.status == 0)
        id = w.id;
    waiter_destroy(&w);
    CHECK(id > 0);
    return id;
}

static void on_commit(wh_work_commit_t *c, int status)
{
    waiter_t *w = c->user;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->done++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Commits c and waits for its callback; returns the commit's status. */
static int commit_sync(wh_store_t *s, wh_work_commit_t *c)
{
    waiter_t w;
    waiter_init(&w);
    c->cb = on_commit;
    c->user = &w;
    int rc = wh_store_commit_work(s, c);
    if (rc == 0)
        rc = waiter_wait(&w, 1) ? w.status : WH_ETIMEDOUT;
    waiter_destroy(&w);
    return rc;
}

static int commit_simple(wh_store_t *s, const wh_work_item_t *it, wh_work_status_t st,
                         const wh_outcome_t *o, json_t *msg)
{
    wh_work_commit_t c = {.item = it, .status = st, .outcome = o, .msg = msg,
                          .script_version = "v1", .error = "boom",
                          .next_attempt_at = wh_now_ms() + 60000};
    return commit_sync(s, &c);
}

static size_t fetch(wh_store_reader_t *r, unsigned part, unsigned nparts, int64_t now,
                    wh_work_item_t *out, size_t max)
{
    size_t n = 0;
    char err[256] = "";
    int rc = wh_store_next_work(r, part, nparts, now, out, max, &n, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "next_work: %s\n", err);
    CHECK_INT(rc, 0);
    return n;
}

/* The position of event id among items, or -1. */
static int pos_of(const wh_work_item_t *v, size_t n, int64_t id, int timer)
{
    for (size_t i = 0; i < n; i++)
        if (v[i].id == id && v[i].is_timer == timer)
            return (int)i;
    return -1;
}

/* A fake item for an event id, for commits that need no body. */
static wh_work_item_t event_item(int64_t id, const char *instance, const char *event,
                                 const char *contact)
{
    wh_work_item_t it = {.id = id, .received_at = wh_now_ms(), .instance = (char *)instance,
                         .event = (char *)event, .contact_key = (char *)contact};
    return it;
}

/* ---- migrations ------------------------------------------------------------------------------ */

static const char *const migration1 =
    "CREATE TABLE events( id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,"
    " instance TEXT NOT NULL, event TEXT NOT NULL, dedup_id TEXT NOT NULL, contact_key TEXT,"
    " body TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',"
    " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, script_version TEXT,"
    " processed_at INTEGER, UNIQUE(instance, event, dedup_id));"
    "CREATE INDEX events_status ON events(status, id);"
    "CREATE INDEX events_contact ON events(contact_key, id);"
    "CREATE TABLE contact_aliases( instance TEXT NOT NULL, lid TEXT NOT NULL,"
    " phone TEXT NOT NULL, learned_at INTEGER NOT NULL, PRIMARY KEY(instance, lid));";

static void test_migrations(void)
{
    char path[160];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    if (s == NULL)
        return;
    CHECK_INT(wh_store_schema_version(s), wh_store_schema_latest());
    wh_store_close(s);
    CHECK_INT(q_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
                          " ('contact_state','timers','outbox','facts','metrics_counts',"
                          "'messages','pending_receipts','contacts','connection_history',"
                          "'qr_latest','contact_merges')"),
              11);
    CHECK_INT(q_int(path, "SELECT count(*) FROM pragma_table_info('events')"
                          " WHERE name = 'next_attempt_at' AND \"notnull\" AND dflt_value = '0'"),
              1);
    /* migration 2's two outbox indexes exist (later migrations may add more) */
    CHECK_INT(q_int(path, "SELECT count(*) FROM pragma_index_list('outbox')"
                          " WHERE name IN ('outbox_status', 'outbox_contact')"),
              2);
    remove_db(path);

    /* A database made by a version-1 build, with rows: upgraded in place, nothing lost. */
    db_path(path, sizeof(path));
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, migration1, NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db,
                           "INSERT INTO events(received_at, instance, event, dedup_id, contact_key,"
                           " body) VALUES(5, 'i', 'messages.upsert', 'OLD1', '346', '{}');"
                           "INSERT INTO events(received_at, instance, event, dedup_id, body, status)"
                           " VALUES(6, 'i', 'connection.update', 'sha256:x', '{}', 'done');"
                           "INSERT INTO contact_aliases VALUES('i', '9@lid', '346', 1);"
                           "PRAGMA user_version = 1;",
                           NULL, NULL, NULL),
             SQLITE_OK);
    sqlite3_close(db);
    s = open_store(path, 0);
    if (s == NULL)
        return;
    CHECK_INT(wh_store_schema_version(s), wh_store_schema_latest());
    /* The old alias still resolves, and the old dedup key still holds. */
    waiter_t w;
    waiter_init(&w);
    wh_ingest_t j = {.instance = "i", .event = "messages.upsert", .dedup_id = "OLD1",
                     .body = "{}", .body_len = 2, .cb = on_ingest, .user = &w};
    CHECK_INT(wh_store_submit(s, &j), 0);
    CHECK(waiter_wait(&w, 1));
    CHECK_INT(w.dup, 1);
    waiter_destroy(&w);
    int64_t id = ingest(s, "i", "presence.update", "sha256:p", NULL, "9@lid");
    wh_store_close(s);
    CHECK_INT(q_int(path, "PRAGMA user_version"), wh_store_schema_latest());
    CHECK_INT(q_int(path, "SELECT count(*) FROM events"), 3);
    CHECK_INT(q_int(path, "SELECT next_attempt_at FROM events WHERE dedup_id = 'OLD1'"), 0);
    char buf[64];
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE dedup_id = 'sha256:x'"),
              "done");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT contact_key FROM events WHERE id = %lld",
                     (long long)id),
              "346");
    wh_store_reader_t *r = open_reader(path);
    if (r != NULL) {
        wh_work_item_t items[4];
        size_t n = fetch(r, 0, 1, wh_now_ms(), items, 4);
        CHECK_INT(n, 2); /* the old pending event, then the new one */
        if (n == 2) {
            CHECK_STR(items[0].event, "messages.upsert");
            CHECK_STR(items[0].contact_key, "346");
            CHECK_STR(items[0].body, "{}");
            CHECK_INT(items[0].received_at, 5);
            CHECK_INT(items[1].id, id);
        }
        wh_store_work_free(items, n);
        wh_store_reader_close(r);
    }
    remove_db(path);
}

/* ---- partitions ------------------------------------------------------------------------------ */

static void test_partition(void)
{
    /* FNV-1a 32-bit published vectors; modulo 2^32-1 leaves these values as they are. */
    CHECK_INT(wh_store_partition("x", "a", UINT_MAX), 0xe40c292cu);
    CHECK_INT(wh_store_partition("x", "foobar", UINT_MAX), 0xbf9cf968u);
    CHECK_INT(wh_store_partition("x", "34600111222", 8), 0x900b0dd1u % 8);
    CHECK_INT(wh_store_partition("x", "207581245931618@lid", 8), 0x676f3caeu % 8);
    /* Instance-level work hashes "@" + instance; "" counts as no contact. */
    CHECK_INT(wh_store_partition("inst", NULL, UINT_MAX), 0x7bcbadf3u);
    CHECK_INT(wh_store_partition("inst", "", UINT_MAX), 0x7bcbadf3u);
    CHECK_INT(wh_store_partition("other", "a", UINT_MAX), 0xe40c292cu); /* contact only */
    CHECK_INT(wh_store_partition("inst", "a", 1), 0);
    CHECK_INT(wh_store_partition("inst", "a", 0), 0);

    enum { KEYS = 4000, PARTS = 8 };
    int count[PARTS] = {0};
    for (int i = 0; i < KEYS; i++) {
        char k[32];
        snprintf(k, sizeof(k), "346%08d", 1000 + i * 7);
        unsigned p = wh_store_partition("inst", k, PARTS);
        if (p < PARTS)
            count[p]++;
    }
    int lo = KEYS, hi = 0, total = 0;
    for (int i = 0; i < PARTS; i++) {
        lo = count[i] < lo ? count[i] : lo;
        hi = count[i] > hi ? count[i] : hi;
        total += count[i];
    }
    CHECK_INT(total, KEYS);
    CHECK(lo > KEYS / PARTS * 7 / 10); /* within 30% of an even share */
    CHECK(hi < KEYS / PARTS * 13 / 10);

    /* The SQL function agrees with the C one: each event is work of exactly its partition. */
    char path[160];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    const char *phones[] = {"34600000001", "34600000002", "34600000003", "34600000004",
                            "34600000005", "34600000006", "34600000007", "34600000008"};
    int64_t ids[9];
    for (int i = 0; i < 8; i++) {
        char d[16];
        snprintf(d, sizeof(d), "P%d", i);
        ids[i] = ingest(s, "inst", "messages.upsert", d, phones[i], NULL);
    }
    ids[8] = ingest(s, "inst", "connection.update", "sha256:c", NULL, NULL);
    int seen[9] = {0}, wrong = 0;
    for (unsigned p = 0; p < 3; p++) {
        wh_work_item_t items[16];
        size_t n = fetch(r, p, 3, wh_now_ms(), items, 16);
        for (size_t i = 0; i < n; i++) {
            for (int k = 0; k < 9; k++)
                if (items[i].id == ids[k])
                    seen[k]++;
            if (wh_store_partition(items[i].instance, items[i].contact_key, 3) != p)
                wrong++;
        }
        wh_store_work_free(items, n);
    }
    CHECK_INT(wrong, 0);
    int once = 0;
    for (int k = 0; k < 9; k++)
        once += seen[k] == 1;
    CHECK_INT(once, 9);
    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

/* ---- work selection -------------------------------------------------------------------------- */

static void test_next_work_fifo(void)
{
    char path[160];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    int64_t a1 = ingest(s, "inst", "messages.upsert", "A1", "111", NULL);
    int64_t b1 = ingest(s, "inst", "messages.upsert", "B1", "222", NULL);
    int64_t a2 = ingest(s, "inst", "messages.upsert", "A2", "111", NULL);
    int64_t b2 = ingest(s, "inst", "messages.upsert", "B2", "222", NULL);
    int64_t now = wh_now_ms();

    wh_work_item_t items[8];
    size_t n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(n, 4); /* all four, in arrival order */
    if (n == 4) {
        CHECK_INT(items[0].id, a1);
        CHECK_INT(items[1].id, b1);
        CHECK_INT(items[2].id, a2);
        CHECK_INT(items[3].id, b2);
        CHECK_STR(items[0].contact_key, "111");
        CHECK_STR(items[0].event, "messages.upsert");
        CHECK_INT(items[0].is_timer, 0);
        CHECK_INT(items[0].attempts, 0);
    }
    wh_store_work_free(items, n);

    /* A1 fails and waits a minute: A2 must wait behind it, B runs on. */
    wh_work_item_t it = event_item(a1, "inst", "messages.upsert", "111");
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_RETRY, .error = "E1",
                          .next_attempt_at = now + 60000};
    CHECK_INT(commit_sync(s, &c), 0);
    n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(n, 2);
    CHECK_INT(pos_of(items, n, b1, 0), 0);
    CHECK_INT(pos_of(items, n, b2, 0), 1);
    CHECK_INT(pos_of(items, n, a2, 0), -1);
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 60000);

    /* max is honoured, oldest first. */
    n = fetch(r, 0, 1, now, items, 1);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_INT(items[0].id, b1);
    wh_store_work_free(items, n);

    /* After the retry time: A1 again (attempts 1), then A2 behind it, never A2 first. */
    n = fetch(r, 0, 1, now + 60000, items, 8);
    CHECK_INT(n, 4);
    CHECK_INT(pos_of(items, n, a1, 0), 0);
    CHECK(pos_of(items, n, a2, 0) > pos_of(items, n, a1, 0));
    if (n >= 1)
        CHECK_INT(items[0].attempts, 1);
    wh_store_work_free(items, n);

    /* A retry of a later event cannot make it due before the contact's head (no spin). */
    it = event_item(a2, "inst", "messages.upsert", "111");
    c = (wh_work_commit_t){.item = &it, .status = WH_WORK_RETRY, .error = "E2",
                           .next_attempt_at = now + 1000};
    CHECK_INT(commit_sync(s, &c), 0);
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 60000);
    n = fetch(r, 0, 1, now + 2000, items, 8);
    CHECK_INT(pos_of(items, n, a2, 0), -1);
    wh_store_work_free(items, n);

    /* Instance-level events: one queue per instance, in order, blocked the same way. */
    int64_t c1 = ingest(s, "inst", "connection.update", "sha256:1", NULL, NULL);
    int64_t c2 = ingest(s, "inst", "qrcode.updated", "sha256:2", NULL, NULL);
    int64_t o1 = ingest(s, "other", "connection.update", "sha256:3", NULL, NULL);
    n = fetch(r, 0, 1, now, items, 8);
    CHECK(pos_of(items, n, c1, 0) >= 0 && pos_of(items, n, c2, 0) > pos_of(items, n, c1, 0));
    CHECK(pos_of(items, n, o1, 0) > pos_of(items, n, c2, 0));
    for (size_t i = 0; i < n; i++)
        if (items[i].id == c1)
            CHECK(items[i].contact_key == NULL);
    wh_store_work_free(items, n);
    it = event_item(c1, "inst", "connection.update", NULL);
    c = (wh_work_commit_t){.item = &it, .status = WH_WORK_RETRY, .error = "E",
                           .next_attempt_at = now + 5000};
    CHECK_INT(commit_sync(s, &c), 0);
    n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(pos_of(items, n, c1, 0), -1);
    CHECK_INT(pos_of(items, n, c2, 0), -1);
    CHECK(pos_of(items, n, o1, 0) >= 0); /* another instance is not held back */
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 5000);

    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

static void test_timers_selection(void)
{
    char path[160];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    int64_t now = wh_now_ms();
    int64_t e1 = ingest(s, "inst", "messages.upsert", "T1", "111", NULL);
    int64_t e2 = ingest(s, "inst", "messages.upsert", "T2", "111", NULL);
    CHECK_INT(wh_store_next_due(r, 0, 1), INT64_MAX);

    /* e1 sets a timer for its contact due in 1 s, and an instance-level one is set too. */
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "nudge", now + 1000, json_pack("{s:i}", "n", 7), NULL, 0),
              0);
    wh_work_item_t it = event_item(e1, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    int64_t ce = ingest(s, "inst", "connection.update", "sha256:c", NULL, NULL);
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "watch", now + 500, NULL, NULL, 0), 0);
    it = event_item(ce, "inst", "connection.update", NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);

    /* Not due yet: only e2. */
    wh_work_item_t items[8];
    size_t n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_INT(items[0].id, e2);
    wh_store_work_free(items, n);
    /* The instance timer is the next wake-up; the contact's waits for e2 (which wakes us). */
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 500);

    /* Due, but the contact still has e2 pending: e2 first, the contact's timer later. */
    n = fetch(r, 0, 1, now + 2000, items, 8);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_INT(items[0].id, e2);
        CHECK_INT(items[1].is_timer, 1);
        CHECK_STR(items[1].timer_name, "watch");
        CHECK(items[1].contact_key == NULL);
        CHECK_STR(items[1].event, "timer");
        CHECK_INT(items[1].received_at, now + 500);
        CHECK(items[1].body == NULL);
    }
    wh_store_work_free(items, n);

    it = event_item(e2, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, NULL, NULL), 0);
    n = fetch(r, 0, 1, now + 2000, items, 8);
    CHECK_INT(n, 2); /* ordered by due time */
    if (n == 2) {
        CHECK_STR(items[0].timer_name, "watch");
        CHECK_STR(items[1].timer_name, "nudge");
        CHECK_STR(items[1].contact_key, "111");
        CHECK_STR(items[1].body, "{\"n\":7}");
        CHECK_INT(items[1].received_at, now + 1000);
        CHECK_INT(items[1].attempts, 0);
    }
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 500);
    /* A timer is not work of another partition. */
    unsigned pc = wh_store_partition("inst", "111", 4);
    n = fetch(r, (pc + 1) % 4, 4, now + 2000, items, 8);
    CHECK_INT(pos_of(items, n, 0, 1), -1);
    for (size_t i = 0; i < n; i++)
        CHECK(items[i].timer_name == NULL || strcmp(items[i].timer_name, "nudge") != 0);
    wh_store_work_free(items, n);

    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

/* ---- commits --------------------------------------------------------------------------------- */

static void test_commit_done(void)
{
    char path[160], buf[512];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    int64_t now = wh_now_ms();
    int64_t e0 = ingest(s, "inst", "messages.upsert", "D0", "111", NULL);
    int64_t e1 = ingest(s, "inst", "messages.upsert", "D1", "111", NULL);
    int64_t e2 = ingest(s, "inst", "messages.upsert", "D2", "111", NULL);

    /* e0 leaves timers "a" and "b" behind. */
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "a", now + 1000, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "b", now + 2000, NULL, NULL, 0), 0);
    wh_work_item_t it = event_item(e0, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    int64_t old_a = q_int(path, "SELECT id FROM timers WHERE name = 'a'");

    /* e1: everything at once. */
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s,s:i}", "step", "ask", "n", 2), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s,s:s}", "type", "send_text", "to",
                                                  "111", "text", "hola"),
                                    NULL, 0),
              0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s}", "type", "crm", "op", "upsert"),
                                    NULL, 0),
              0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s}", "type", "mail", "to", "x@y"), NULL,
                                    0),
              0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s}", "type", "alert", "kind", "k"), NULL,
                                    0),
              0);
    CHECK_INT(wh_outcome_set_timer(&o, "a", now + 9000, json_pack("{s:b}", "again", 1), NULL, 0),
              0);
    CHECK_INT(wh_outcome_cancel_timer(&o, "b", NULL, 0), 0);
    CHECK_INT(wh_outcome_add_fact(&o, "lead", json_pack("{s:i,s:s}", "score", 7, "stage", "hot"),
                                  NULL, 0),
              0);
    CHECK_INT(wh_outcome_add_metric(&o, "replies", json_pack("{s:s,s:s}", "z", "1", "a", "2"),
                                    NULL, 0),
              0);
    CHECK_INT(wh_outcome_add_metric(&o, "replies", json_pack("{s:s,s:s}", "a", "2", "z", "1"),
                                    NULL, 0),
              0);
    CHECK_INT(wh_outcome_add_metric(&o, "plain", NULL, NULL, 0), 0);
    it = event_item(e1, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);

    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e1),
              "done");
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e1), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT script_version FROM events WHERE id = %lld",
                     (long long)e1),
              "v1");
    CHECK(q_int(path, "SELECT processed_at FROM events WHERE id = %lld", (long long)e1) >= now);
    CHECK_INT(q_int(path, "SELECT last_error IS NULL FROM events WHERE id = %lld", (long long)e1),
              1);
    json_t *st = NULL;
    CHECK_INT(wh_store_state_get(r, "inst", "111", &st), 0);
    CHECK_INT(json_integer_value(json_object_get(st, "n")), 2);
    CHECK_STR(json_string_value(json_object_get(st, "step")), "ask");
    json_decref(st);
    CHECK_INT(wh_store_state_get(r, "inst", "222", &st), 0);
    CHECK(st == NULL);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT group_concat(target || ':' || kind, ',') FROM"
                     " (SELECT * FROM outbox ORDER BY id)"),
              "evolution:send_text,crm:crm,mail:mail,alert:alert");
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE event_id = %lld AND status = 'pending'"
                          " AND contact_key = '111' AND instance = 'inst' AND attempts = 0",
                    (long long)e1),
              4);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT payload FROM outbox ORDER BY id LIMIT 1"),
              "{\"type\":\"send_text\",\"to\":\"111\",\"text\":\"hola\"}");
    /* "a" replaced (new row, new due time, payload), "b" cancelled. */
    CHECK_INT(q_int(path, "SELECT count(*) FROM timers"), 1);
    CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE name = 'a' AND contact_key = '111'"),
              now + 9000);
    CHECK(q_int(path, "SELECT id FROM timers WHERE name = 'a'") != old_a);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT payload FROM timers WHERE name = 'a'"),
              "{\"again\":true}");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT kind || ' ' || fields FROM facts"),
              "lead {\"score\":7,\"stage\":\"hot\"}");
    CHECK_INT(q_int(path, "SELECT event_id FROM facts"), e1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT contact_key FROM facts"), "111");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT labels FROM metrics_counts WHERE name = 'replies'"),
              "{\"a\":\"2\",\"z\":\"1\"}");
    CHECK_INT(q_int(path, "SELECT value FROM metrics_counts WHERE name = 'replies'"), 2);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT labels FROM metrics_counts WHERE name = 'plain'"),
              "{}");

    /* e2: state cleared, metrics add up across commits, instance-level rows use ''. */
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_add_metric(&o, "replies", json_pack("{s:s,s:s}", "a", "2", "z", "1"),
                                    NULL, 0),
              0);
    it = event_item(e2, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    CHECK_INT(wh_store_state_get(r, "inst", "111", &st), 0);
    CHECK(st == NULL);
    CHECK_INT(q_int(path, "SELECT value FROM metrics_counts WHERE name = 'replies'"), 3);

    int64_t ce = ingest(s, "inst", "connection.update", "sha256:c", NULL, NULL);
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s}", "last", "open"), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s}", "type", "alert"), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_fact(&o, "custom", NULL, NULL, 0), 0);
    it = event_item(ce, "inst", "connection.update", NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    CHECK_INT(wh_store_state_get(r, "inst", NULL, &st), 0);
    CHECK_STR(json_string_value(json_object_get(st, "last")), "open");
    json_decref(st);
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_state WHERE contact_key = ''"), 1);
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE contact_key = '' AND event_id = %lld",
                    (long long)ce),
              1);
    CHECK_INT(q_int(path, "SELECT count(*) FROM facts WHERE kind = 'custom' AND contact_key IS NULL"
                          " AND fields = '{}'"),
              1);

    /* Exactly one decision: committing a decided event again changes nothing. */
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s}", "type", "alert"), NULL, 0), 0);
    it = event_item(e1, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), WH_ENOTFOUND);
    it = event_item(999999, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), WH_ENOTFOUND);
    wh_outcome_free(&o);
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox"), 5);
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e1), 1);

    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

static json_t *msg_inbound(const char *id, const char *phone, const char *lid, const char *name,
                           const char *text, const char *status)
{
    json_t *m = json_pack("{s:s,s:s,s:b,s:s?,s:s,s:s,s:s,s:I}", "kind", "message", "id", id,
                          "from_me", 0, "phone", phone, "chat_jid", "111@s.whatsapp.net", "type",
                          "text", "text", text, "timestamp", (json_int_t)1761143067);
    if (lid != NULL)
        json_object_set_new(m, "lid", json_string(lid));
    if (name != NULL)
        json_object_set_new(m, "push_name", json_string(name));
    if (status != NULL)
        json_object_set_new(m, "status", json_string(status));
    return m;
}

static void test_commit_retry_dead(void)
{
    char path[160], buf[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    if (s == NULL)
        return;
    int64_t now = wh_now_ms();
    int64_t e1 = ingest(s, "inst", "messages.upsert", "R1", "111", NULL);
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:i}", "x", 1), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s}", "type", "alert"), NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "t", now, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_add_fact(&o, "custom", NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_add_metric(&o, "m", NULL, NULL, 0), 0);
    json_t *msg = msg_inbound("WAID1", "111", NULL, "Ana", "hola", "DELIVERY_ACK");

    wh_work_item_t it = event_item(e1, "inst", "messages.upsert", "111");
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_RETRY, .error = "main.lua:3: oops",
                          .next_attempt_at = now + 4321, .script_version = "v9", .msg = msg,
                          .origin = "contact", .outcome = &o};
    CHECK_INT(commit_sync(s, &c), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT script_version FROM events WHERE id = %lld",
                     (long long)e1),
              "v9");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e1),
              "pending");
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e1), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT last_error FROM events WHERE id = %lld",
                     (long long)e1),
              "main.lua:3: oops");
    CHECK_INT(q_int(path, "SELECT next_attempt_at FROM events WHERE id = %lld", (long long)e1),
              now + 4321);
    CHECK_INT(q_int(path, "SELECT processed_at FROM events WHERE id = %lld", (long long)e1), -2);
    /* Nothing from the outcome ... */
    CHECK_INT(q_int(path, "SELECT (SELECT count(*) FROM contact_state) + (SELECT count(*) FROM"
                          " outbox) + (SELECT count(*) FROM timers) + (SELECT count(*) FROM"
                          " facts) + (SELECT count(*) FROM metrics_counts)"),
              0);
    /* ... but the native records are there. */
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages WHERE wa_id = 'WAID1'"), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key = '111'"),
              "Ana");

    c.status = WH_WORK_DEAD;
    c.error = "gave up";
    CHECK_INT(commit_sync(s, &c), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e1),
              "dead");
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e1), 2);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT last_error FROM events WHERE id = %lld",
                     (long long)e1),
              "gave up");
    CHECK_INT(q_int(path, "SELECT next_attempt_at FROM events WHERE id = %lld", (long long)e1), 0);
    CHECK_INT(q_int(path, "SELECT (SELECT count(*) FROM contact_state) + (SELECT count(*) FROM"
                          " outbox) + (SELECT count(*) FROM timers) + (SELECT count(*) FROM"
                          " facts) + (SELECT count(*) FROM metrics_counts)"),
              0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages"), 1); /* upserted, not duplicated */
    /* A dead event takes no further decisions. */
    CHECK_INT(commit_sync(s, &c), WH_ENOTFOUND);
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e1), 2);

    json_decref(msg);
    wh_outcome_free(&o);
    wh_store_close(s);
    remove_db(path);
}

/* ---- native records -------------------------------------------------------------------------- */

/* Stores an event and commits DONE with msg; returns the event id. */
static int64_t native(wh_store_t *s, const char *event, const char *dedup, const char *phone,
                      const char *lid, const char *origin, json_t *msg)
{
    int64_t id = ingest(s, "inst", event, dedup, phone, lid);
    const char *key = phone != NULL ? phone : lid;
    wh_work_item_t it = event_item(id, "inst", event, key);
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_DONE, .msg = msg, .origin = origin};
    CHECK_INT(commit_sync(s, &c), 0);
    json_decref(msg);
    return id;
}

static void test_native_records(void)
{
    char path[160], buf[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    /* Inbound message: messages + contacts. */
    int64_t m1 = native(s, "messages.upsert", "IN1", "111", "9@lid", "contact",
                        msg_inbound("IN1", "111", "9@lid", "Ana", "hola", "DELIVERY_ACK"));
    q_text(path, buf, sizeof(buf),
           "SELECT contact_key||'|'||chat_jid||'|'||direction||'|'||origin||'|'||type||"
           "'|'||text||'|'||ts||'|'||status||'|'||status_rank||'|'||event_id"
           " FROM messages WHERE instance = 'inst' AND wa_id = 'IN1'");
    char want[160];
    snprintf(want, sizeof(want),
             "111|111@s.whatsapp.net|in|contact|text|hola|1761143067|DELIVERY_ACK|3|%lld",
             (long long)m1);
    CHECK_STR(buf, want);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT phone||'|'||lid||'|'||push_name FROM contacts WHERE contact_key='111'"),
              "111|9@lid|Ana");
    int64_t first = q_int(path, "SELECT first_seen FROM contacts WHERE contact_key = '111'");
    CHECK(first > 0);
    CHECK_INT(q_int(path, "SELECT last_seen FROM contacts WHERE contact_key = '111'"), first);
    /* A later message keeps first_seen, moves last_seen, keeps the name when none is given. */
    usleep(3000);
    native(s, "messages.upsert", "IN2", "111", NULL, "contact",
           msg_inbound("IN2", "111", NULL, NULL, "otra", "DELIVERY_ACK"));
    CHECK_INT(q_int(path, "SELECT first_seen FROM contacts WHERE contact_key = '111'"), first);
    CHECK(q_int(path, "SELECT last_seen FROM contacts WHERE contact_key = '111'") > first);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key='111'"),
              "Ana");

    /* A receipt before its message is kept, then applied when the message appears. */
    native(s, "messages.update", "OUT1:READ", "111", NULL, NULL,
           json_pack("{s:s,s:s,s:s,s:b}", "kind", "receipt", "key_id", "OUT1", "status", "READ",
                     "from_me", 1));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT status||' '||status_rank FROM pending_receipts WHERE wa_id='OUT1'"),
              "READ 4");
    native(s, "messages.update", "OUT1:DELIVERY_ACK", "111", NULL, NULL,
           json_pack("{s:s,s:s,s:s}", "kind", "receipt", "key_id", "OUT1", "status",
                     "DELIVERY_ACK"));
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM pending_receipts WHERE wa_id='OUT1'"),
              "READ");
    json_t *sm = json_pack("{s:s,s:s,s:b,s:s,s:s,s:s}", "kind", "message", "id", "OUT1",
                           "from_me", 1, "status", "PENDING", "type", "text", "text", "hi");
    native(s, "send.message", "OUT1", "111", NULL, "wahook", sm);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT direction||' '||origin||' '||status||' '||status_rank FROM messages"
                     " WHERE wa_id = 'OUT1'"),
              "out wahook READ 4");
    CHECK_INT(q_int(path, "SELECT count(*) FROM pending_receipts"), 0);
    char origin[16] = "x";
    CHECK_INT(wh_store_message_origin(r, "inst", "OUT1", origin, sizeof(origin)), 0);
    CHECK_STR(origin, "wahook");
    CHECK_INT(wh_store_message_origin(r, "inst", "IN1", origin, sizeof(origin)), WH_ENOTFOUND);
    CHECK_STR(origin, "");
    CHECK_INT(wh_store_message_origin(r, "inst", "OUT1", origin, 3), WH_EINVAL);
    /* The echo of the same message later says "api": wahook stays, the status does not drop. */
    native(s, "messages.upsert", "OUT1-echo", "111", NULL, "api",
           json_pack("{s:s,s:s,s:b,s:s}", "kind", "message", "id", "OUT1", "from_me", 1, "status",
                     "SERVER_ACK"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT origin||' '||status FROM messages WHERE wa_id = 'OUT1'"),
              "wahook READ");
    /* Receipts never go backwards; PLAYED goes forward; ERROR is terminal. */
    native(s, "messages.update", "OUT1:SERVER_ACK", "111", NULL, NULL,
           json_pack("{s:s,s:s}", "key_id", "OUT1", "status", "SERVER_ACK"));
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM messages WHERE wa_id = 'OUT1'"),
              "READ");
    native(s, "messages.update", "OUT1:PLAYED", "111", NULL, NULL,
           json_pack("{s:s,s:s}", "key_id", "OUT1", "status", "PLAYED"));
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM messages WHERE wa_id = 'OUT1'"),
              "PLAYED");
    native(s, "messages.update", "IN1:ERROR", "111", NULL, NULL,
           json_pack("{s:s,s:s}", "key_id", "IN1", "status", "ERROR"));
    native(s, "messages.update", "IN1:READ", "111", NULL, NULL,
           json_pack("{s:s,s:s}", "key_id", "IN1", "status", "READ"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT status||' '||status_rank FROM messages WHERE wa_id = 'IN1'"),
              "ERROR 100");
    /* The old array form of receipts. */
    native(s, "messages.update", "sha256:arr", NULL, NULL, NULL,
           json_pack("{s:s,s:[{s:s,s:s},{s:s,s:s}]}", "kind", "receipt", "receipts", "key_id",
                     "IN2", "status", "READ", "key_id", "GHOST", "status", "DELIVERY_ACK"));
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM messages WHERE wa_id = 'IN2'"),
              "READ");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM pending_receipts WHERE wa_id='GHOST'"),
              "DELIVERY_ACK");
    /* Outgoing messages typed on the phone do not touch the contact row. */
    int64_t seen = q_int(path, "SELECT last_seen FROM contacts WHERE contact_key = '111'");
    native(s, "messages.upsert", "PH1", "111", NULL, "phone",
           json_pack("{s:s,s:b,s:s,s:s}", "id", "PH1", "from_me", 1, "push_name", "Owner", "text",
                     "x"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT direction||' '||origin FROM messages WHERE wa_id = 'PH1'"),
              "out phone");
    CHECK_INT(q_int(path, "SELECT last_seen FROM contacts WHERE contact_key = '111'"), seen);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key='111'"),
              "Ana");

    /* Connection history: one row per event, even when the event is retried. */
    int64_t cu = ingest(s, "inst", "connection.update", "sha256:cu1", NULL, NULL);
    json_t *cm = json_pack("{s:s,s:s,s:i}", "kind", "connection", "state", "close",
                           "status_reason", 401);
    wh_work_item_t it = event_item(cu, "inst", "connection.update", NULL);
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_RETRY, .msg = cm, .error = "e",
                          .next_attempt_at = 1};
    CHECK_INT(commit_sync(s, &c), 0);
    c.status = WH_WORK_DONE;
    CHECK_INT(commit_sync(s, &c), 0);
    json_decref(cm);
    native(s, "connection.update", "sha256:cu2", NULL, NULL, NULL,
           json_pack("{s:s,s:i}", "state", "open", "status_reason", 200));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT group_concat(state||':'||status_reason, ',') FROM"
                     " (SELECT * FROM connection_history WHERE instance = 'inst' ORDER BY id)"),
              "close:401,open:200");
    CHECK_INT(q_int(path, "SELECT event_id FROM connection_history ORDER BY id LIMIT 1"), cu);

    /* Latest QR per instance, replaced; the limit form clears the code. */
    native(s, "qrcode.updated", "sha256:q1", NULL, NULL, NULL,
           json_pack("{s:s,s:s,s:s,s:s}", "kind", "qrcode", "qr", "data:image/png;base64,AAA",
                     "code", "2@abc", "pairing_code", "WZYEH1YY"));
    native(s, "qrcode.updated", "sha256:q2", NULL, NULL, NULL,
           json_pack("{s:s,s:s}", "qr", "data:image/png;base64,BBB", "code", "2@def"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT qr_base64||'|'||code||'|'||coalesce(pairing_code,'-')||'|'||"
                     "limit_reached FROM qr_latest WHERE instance = 'inst'"),
              "data:image/png;base64,BBB|2@def|-|0");
    native(s, "qrcode.updated", "sha256:q3", NULL, NULL, NULL,
           json_pack("{s:b,s:i}", "limit_reached", 1, "status_code", 500));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT coalesce(code,'-')||'|'||limit_reached FROM qr_latest"),
              "-|1");
    CHECK_INT(q_int(path, "SELECT count(*) FROM qr_latest"), 1);

    /* Presence of a known contact and of a new one. */
    native(s, "presence.update", "sha256:pr1", "111", NULL, NULL,
           json_pack("{s:s,s:s}", "kind", "presence", "presence", "composing"));
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT presence FROM contacts WHERE contact_key='111'"),
              "composing");
    CHECK(q_int(path, "SELECT presence_at FROM contacts WHERE contact_key = '111'") > 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key='111'"),
              "Ana");
    native(s, "presence.update", "sha256:pr2", NULL, "5@lid", NULL,
           json_pack("{s:s,s:s}", "presence", "available", "lid", "5@lid"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT presence||' '||lid||' '||coalesce(first_seen,'-') FROM contacts"
                     " WHERE contact_key = '5@lid'"),
              "available 5@lid -");

    /* Contacts: the object form uses the event's contact; the array form keys each entry by
     * phone, else the phone known for its LID (9@lid -> 111 from the first message), else LID. */
    native(s, "contacts.upsert", "sha256:co1", "222", NULL, NULL,
           json_pack("{s:s,s:s,s:[{s:s,s:s}]}", "phone", "222", "push_name", "Bea", "contacts",
                     "phone", "222", "push_name", "Bea"));
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT push_name||' '||coalesce(first_seen,'-') FROM contacts"
                     " WHERE contact_key = '222'"),
              "Bea -");
    int64_t before = q_int(path, "SELECT count(*) FROM contacts");
    native(s, "contacts.upsert", "sha256:co2", NULL, NULL, NULL,
           json_pack("{s:[{s:s,s:s},{s:s,s:s},{s:s,s:s},{}]}", "contacts", "phone", "333",
                     "push_name", "Cai", "lid", "9@lid", "push_name", "Ana2", "lid", "77@lid",
                     "push_name", "Dan"));
    CHECK_INT(q_int(path, "SELECT count(*) FROM contacts"), before + 2);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key='333'"),
              "Cai");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT push_name FROM contacts WHERE contact_key='111'"),
              "Ana2");
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT push_name FROM contacts WHERE contact_key='77@lid'"),
              "Dan");

    /* A failed normalisation (msg NULL) still commits the decision. */
    int64_t nn = native(s, "messages.upsert", "NOMSG", "444", NULL, "contact", NULL);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)nn),
              "done");
    CHECK_INT(q_int(path, "SELECT count(*) FROM contacts WHERE contact_key = '444'"), 0);

    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

/* ---- timer runs ------------------------------------------------------------------------------ */

static void test_timer_items(void)
{
    char path[160], buf[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    int64_t now = wh_now_ms();
    int64_t e = ingest(s, "inst", "messages.upsert", "X1", "111", NULL);
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "a", now - 10, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "b", now - 5, json_pack("{s:s}", "k", "v"), NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "c", now - 1, NULL, NULL, 0), 0);
    wh_work_item_t it = event_item(e, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);

    wh_work_item_t items[8];
    size_t n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(n, 3);
    if (n != 3) {
        wh_store_work_free(items, n);
        goto out;
    }
    /* "a" runs fine: deleted. The run's outcome is applied with the timer's contact. */
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s}", "type", "send_text"), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_fact(&o, "bot_reply", NULL, NULL, 0), 0);
    CHECK_INT(commit_simple(s, &items[0], WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    CHECK_INT(q_int(path, "SELECT count(*) FROM timers WHERE name = 'a'"), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE event_id IS NULL AND contact_key = '111'"),
              1);
    CHECK_INT(q_int(path, "SELECT count(*) FROM facts WHERE event_id IS NULL AND kind = 'bot_reply'"
                          " AND contact_key = '111'"),
              1);

    /* "b" is replaced by an event while its run is in flight: its DONE must not delete the new
     * one. Then a run that re-arms its own name keeps the new timer. */
    int64_t e2 = ingest(s, "inst", "messages.upsert", "X2", "111", NULL);
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "b", now + 50000, NULL, NULL, 0), 0);
    it = event_item(e2, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, NULL), 0);
    wh_outcome_free(&o);
    CHECK_STR(items[1].timer_name, "b");
    CHECK_STR(items[1].body, "{\"k\":\"v\"}");
    CHECK_INT(commit_simple(s, &items[1], WH_WORK_DONE, NULL, NULL), 0);
    CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE name = 'b'"), now + 50000);

    /* "c" fails: rescheduled (same id), attempts counted; then succeeds re-arming itself. */
    CHECK_STR(items[2].timer_name, "c");
    int64_t cid = items[2].id;
    wh_work_commit_t c = {.item = &items[2], .status = WH_WORK_RETRY, .error = "t.lua:1: x",
                          .next_attempt_at = now + 700};
    CHECK_INT(commit_sync(s, &c), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT last_error FROM timers WHERE name = 'c'"),
              "t.lua:1: x");
    CHECK_INT(q_int(path, "SELECT id FROM timers WHERE name = 'c'"), cid);
    CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE name = 'c'"), now + 700);
    CHECK_INT(q_int(path, "SELECT attempts FROM timers WHERE name = 'c'"), 1);
    wh_store_work_free(items, n);
    n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(n, 0); /* not due again yet */
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_next_due(r, 0, 1), now + 700);
    n = fetch(r, 0, 1, now + 700, items, 8);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_INT(items[0].attempts, 1);
        CHECK_INT(items[0].received_at, now + 700);
        CHECK_INT(wh_outcome_init(&o, NULL), 0);
        CHECK_INT(wh_outcome_set_timer(&o, "c", now + 99000, NULL, NULL, 0), 0);
        CHECK_INT(commit_simple(s, &items[0], WH_WORK_DONE, &o, NULL), 0);
        wh_outcome_free(&o);
        CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE name = 'c'"), now + 99000);
        CHECK_INT(q_int(path, "SELECT attempts FROM timers WHERE name = 'c'"), 0);
    }
    wh_store_work_free(items, n);

    /* A dead timer run: deleted, with a timer_dead fact. */
    n = fetch(r, 0, 1, now + 100000, items, 8);
    CHECK_INT(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(items[i].timer_name, "c") != 0)
            continue;
        c = (wh_work_commit_t){.item = &items[i], .status = WH_WORK_DEAD, .error = "too many"};
        CHECK_INT(commit_sync(s, &c), 0);
    }
    wh_store_work_free(items, n);
    CHECK_INT(q_int(path, "SELECT count(*) FROM timers WHERE name = 'c'"), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT fields FROM facts WHERE kind = 'timer_dead' AND event_id IS NULL"
                     " AND contact_key = '111'"),
              "{\"name\":\"c\",\"error\":\"too many\"}");
out:
    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

/* ---- merges ---------------------------------------------------------------------------------- */

static void test_merges(void)
{
    char path[160], buf[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    const char *phone = "34600111222", *lid = "207581245931618@lid";
    int64_t now = wh_now_ms();
    char inst[32], from[64], to[64];

    /* The phone contact exists with state and a timer "remind". */
    int64_t p0 = ingest(s, "inst", "messages.upsert", "P0", phone, NULL);
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s,s:i}", "step", "phone", "a", 1), NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "remind", now + 1111, NULL, NULL, 0), 0);
    wh_work_item_t it = event_item(p0, "inst", "messages.upsert", phone);
    json_t *m = msg_inbound("P0", phone, NULL, NULL, "a", NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, m), 0);
    json_decref(m);
    wh_outcome_free(&o);

    /* The same person writes by LID only: a separate contact with its own state, timers, facts. */
    int64_t l1 = ingest(s, "inst", "messages.upsert", "L1", NULL, lid);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT contact_key FROM events WHERE id = %lld",
                     (long long)l1),
              lid);
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s,s:i}", "step", "lid", "b", 2), NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "remind", now + 2222, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_set_timer(&o, "lidonly", now + 3333, NULL, NULL, 0), 0);
    CHECK_INT(wh_outcome_add_fact(&o, "lead", json_pack("{s:i}", "score", 3), NULL, 0), 0);
    it = event_item(l1, "inst", "messages.upsert", lid);
    m = msg_inbound("L1", NULL, lid, "Ana", "b", NULL);
    CHECK(m != NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, m), 0);
    json_decref(m);
    wh_outcome_free(&o);
    int64_t l2 = ingest(s, "inst", "messages.upsert", "L2", NULL, lid); /* still pending */
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_merges"), 0);
    CHECK_INT(wh_store_next_merge(r, 0, 1, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              WH_ENOTFOUND);

    /* An event carrying both forms teaches the alias: a merge is noted, keyed by phone. */
    int64_t b = ingest(s, "inst", "messages.upsert", "B", phone, lid);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT contact_key FROM events WHERE id = %lld",
                     (long long)b),
              phone);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT from_key||'>'||to_key FROM contact_merges WHERE instance = 'inst'"),
              "207581245931618@lid>34600111222");
    /* The phone contact waits for the merge; the LID contact's pending event runs first. */
    wh_work_item_t items[8];
    size_t n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(pos_of(items, n, b, 0), -1);
    CHECK(pos_of(items, n, l2, 0) >= 0);
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_next_due(r, 0, 1), INT64_MAX); /* the phone's timer waits too: no spin */
    CHECK_INT(wh_store_next_merge(r, 0, 1, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              WH_ENOTFOUND);
    it = event_item(l2, "inst", "messages.upsert", lid);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, NULL, NULL), 0);

    /* Ready now, in the LID's partition only. */
    unsigned lp = wh_store_partition("inst", lid, 4);
    CHECK_INT(wh_store_next_merge(r, (lp + 1) % 4, 4, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              WH_ENOTFOUND);
    CHECK_INT(wh_store_next_merge(r, lp, 4, inst, 4, from, sizeof(from), to, sizeof(to)),
              WH_EINVAL);
    CHECK_INT(wh_store_next_merge(r, lp, 4, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              0);
    CHECK_STR(inst, "inst");
    CHECK_STR(from, lid);
    CHECK_STR(to, phone);

    CHECK_INT(wh_store_merge_contact(s, inst, from, from), WH_EINVAL);
    CHECK_INT(wh_store_merge_contact(s, inst, from, to), 0);
    json_t *st = NULL;
    CHECK_INT(wh_store_state_get(r, "inst", phone, &st), 0);
    CHECK_STR(json_string_value(json_object_get(st, "step")), "phone"); /* the phone's wins */
    CHECK_INT(json_integer_value(json_object_get(st, "a")), 1);
    CHECK_INT(json_integer_value(json_object_get(st, "b")), 2); /* missing keys added */
    json_decref(st);
    CHECK_INT(wh_store_state_get(r, "inst", lid, &st), 0);
    CHECK(st == NULL);
    CHECK_INT(q_int(path, "SELECT count(*) FROM timers WHERE contact_key = '%s'", lid), 0);
    CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE contact_key = '%s' AND name = 'remind'",
                    phone),
              now + 1111);
    CHECK_INT(q_int(path, "SELECT due_at FROM timers WHERE contact_key = '%s' AND name = 'lidonly'",
                    phone),
              now + 3333);
    CHECK_INT(q_int(path, "SELECT count(*) FROM facts WHERE contact_key = '%s'", phone), 1);
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages WHERE contact_key = '%s'", lid), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages WHERE contact_key = '%s'", phone), 2);
    CHECK_INT(q_int(path, "SELECT count(*) FROM contacts"), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT phone||' '||lid||' '||push_name FROM contacts WHERE contact_key='%s'",
                     phone),
              "34600111222 207581245931618@lid Ana");
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_merges"), 0);
    CHECK_INT(wh_store_next_merge(r, lp, 4, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              WH_ENOTFOUND);
    /* The phone contact's event runs now. */
    n = fetch(r, 0, 1, now, items, 8);
    CHECK_INT(pos_of(items, n, b, 0), 0);
    wh_store_work_free(items, n);

    /* The same mapping again notes nothing; a LID with nothing behind it notes nothing. */
    ingest(s, "inst", "messages.upsert", "B2", phone, lid);
    ingest(s, "inst", "messages.upsert", "N1", "34699999999", "5555@lid");
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_merges"), 0);

    /* Moving into an empty phone contact: state moved as is, contacts row re-keyed. */
    const char *lid2 = "888@lid", *phone2 = "34611111111";
    int64_t q1 = ingest(s, "inst", "messages.upsert", "Q1", NULL, lid2);
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s}", "only", "lid"), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s}", "type", "send_text"), NULL, 0), 0);
    it = event_item(q1, "inst", "messages.upsert", lid2);
    m = msg_inbound("Q1", NULL, lid2, "Eva", "c", NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, m), 0);
    json_decref(m);
    wh_outcome_free(&o);
    ingest(s, "inst", "presence.update", "sha256:q2", phone2, lid2);
    CHECK_INT(wh_store_next_merge(r, 0, 1, inst, sizeof(inst), from, sizeof(from), to,
                                  sizeof(to)),
              0);
    CHECK_STR(from, lid2);
    CHECK_INT(wh_store_merge_contact(s, inst, from, to), 0);
    CHECK_INT(wh_store_state_get(r, "inst", phone2, &st), 0);
    CHECK_STR(json_string_value(json_object_get(st, "only")), "lid");
    json_decref(st);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT phone||' '||lid||' '||push_name FROM contacts WHERE contact_key='%s'",
                     phone2),
              "34611111111 888@lid Eva");
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE contact_key = '%s'", phone2), 1);

    wh_store_reader_close(r);
    wh_store_close(s);
    remove_db(path);
}

/* ---- all or nothing -------------------------------------------------------------------------- */

static void test_commit_atomic(void)
{
    char path[160], buf[64];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    if (s == NULL)
        return;
    int64_t e = ingest(s, "inst", "messages.upsert", "F1", "111", NULL);
    wh_store_close(s);
    int64_t pages = q_int(path, "PRAGMA page_count"), psize = q_int(path, "PRAGMA page_size");
    CHECK(pages > 0 && psize > 0);

    /* A few pages of room: the status update and state fit, the outbox rows do not. */
    s = open_store(path, (pages + 4) * psize);
    if (s == NULL)
        return;
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&o, json_pack("{s:s}", "k", "v"), NULL, 0), 0);
    char *big = malloc(6000);
    memset(big, 'x', 5999);
    big[5999] = '\0';
    for (int i = 0; i < 20; i++)
        CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s}", "type", "send_text", "text",
                                                      big),
                                        NULL, 0),
                  0);
    free(big);
    wh_work_item_t it = event_item(e, "inst", "messages.upsert", "111");
    json_t *msg = msg_inbound("F1", "111", NULL, "Ana", "x", NULL);
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, &o, msg), WH_EFULL);
    CHECK_INT(wh_store_ready(s), 0);
    wh_outcome_free(&o);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e),
              "pending");
    CHECK_INT(q_int(path, "SELECT attempts FROM events WHERE id = %lld", (long long)e), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox"), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_state"), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages"), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM contacts"), 0);

    /* The store recovers: a small commit of the same event goes through. */
    CHECK_INT(commit_simple(s, &it, WH_WORK_DEAD, NULL, msg), 0);
    CHECK_INT(wh_store_ready(s), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e),
              "dead");
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages"), 1);
    json_decref(msg);
    wh_store_close(s);
    remove_db(path);
}

/* A lock held elsewhere parks the writer, so the next items queue up into one batch. */
static sqlite3 *lock_db(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    return db;
}

static int hook_calls;
static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;
static void hook(void *arg)
{
    pthread_mutex_lock(&hook_mu);
    hook_calls += arg == (void *)&hook_calls;
    pthread_mutex_unlock(&hook_mu);
}
static int hooks(void)
{
    pthread_mutex_lock(&hook_mu);
    int n = hook_calls;
    pthread_mutex_unlock(&hook_mu);
    return n;
}

static void test_item_isolation_and_hook(void)
{
    char path[160], buf[64];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    if (s == NULL)
        return;
    wh_store_set_commit_hook(s, hook, &hook_calls);
    int h0 = hooks();
    int64_t e1 = ingest(s, "inst", "messages.upsert", "I1", "111", NULL);
    int64_t e2 = ingest(s, "inst", "messages.upsert", "I2", "222", NULL);
    int64_t e3 = ingest(s, "inst", "messages.upsert", "I3", "333", NULL);
    CHECK_INT(hooks(), h0 + 3); /* new events */
    CHECK(ingest(s, "inst", "messages.upsert", "I1", "111", NULL) == e1);
    CHECK_INT(hooks(), h0 + 3); /* a duplicate wakes nobody */

    /* One batch: a good commit, a malformed one (unknown action type), another good one. */
    wh_outcome_t good, bad;
    CHECK_INT(wh_outcome_init(&good, NULL), 0);
    CHECK_INT(wh_outcome_add_action(&good, json_pack("{s:s}", "type", "crm"), NULL, 0), 0);
    CHECK_INT(wh_outcome_init(&bad, NULL), 0);
    CHECK_INT(wh_outcome_set_state(&bad, json_pack("{s:i}", "x", 1), NULL, 0), 0);
    CHECK_INT(wh_outcome_add_action(&bad, json_pack("{s:s}", "type", "fax"), NULL, 0), 0);
    wh_work_item_t i1 = event_item(e1, "inst", "messages.upsert", "111");
    wh_work_item_t i2 = event_item(e2, "inst", "messages.upsert", "222");
    wh_work_item_t i3 = event_item(e3, "inst", "messages.upsert", "333");
    json_t *m2 = msg_inbound("I2", "222", NULL, "Bad", "x", NULL);
    waiter_t w;
    waiter_init(&w);
    wh_work_commit_t c[3] = {
        {.item = &i1, .status = WH_WORK_DONE, .outcome = &good, .cb = on_commit, .user = &w},
        {.item = &i2, .status = WH_WORK_DONE, .outcome = &bad, .msg = m2, .cb = on_commit,
         .user = &w},
        {.item = &i3, .status = WH_WORK_DONE, .outcome = &good, .cb = on_commit, .user = &w}};
    sqlite3 *lk = lock_db(path);
    int64_t park = -1;
    waiter_t pw;
    waiter_init(&pw);
    wh_ingest_t pj = {.instance = "inst", .event = "x", .dedup_id = "park", .body = "{}",
                      .body_len = 2, .cb = on_ingest, .user = &pw};
    CHECK_INT(wh_store_submit(s, &pj), 0);
    for (int i = 0; i < 2000 && wh_store_queue_depth(s) > 0; i++)
        usleep(1000); /* the writer took the parking job and waits for the lock */
    for (int i = 0; i < 3; i++)
        CHECK_INT(wh_store_commit_work(s, &c[i]), 0);
    CHECK_INT(wh_store_queue_depth(s), 3);
    sqlite3_exec(lk, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(lk);
    CHECK(waiter_wait(&pw, 1));
    park = pw.id;
    CHECK(park > 0);
    CHECK(waiter_wait(&w, 3));
    waiter_destroy(&pw);
    waiter_destroy(&w);
    /* Callbacks ran in FIFO order; only the statuses tell them apart here. */
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e1),
              "done");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e2),
              "pending");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM events WHERE id = %lld",
                     (long long)e3),
              "done");
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox"), 2);
    CHECK_INT(q_int(path, "SELECT count(*) FROM contact_state"), 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM messages"), 0); /* the bad one's natives too */
    CHECK_INT(commit_simple(s, &i2, WH_WORK_DONE, &bad, NULL), WH_EINVAL);
    json_decref(m2);

    /* The hook: not for a plain DONE, yes for timers and retries, yes for an operator retry. */
    int h1 = hooks();
    CHECK_INT(commit_simple(s, &i2, WH_WORK_DONE, &good, NULL), 0);
    CHECK_INT(hooks(), h1);
    int64_t e4 = ingest(s, "inst", "messages.upsert", "I4", "444", NULL);
    int64_t e5 = ingest(s, "inst", "messages.upsert", "I5", "555", NULL);
    h1 = hooks();
    wh_outcome_t t;
    CHECK_INT(wh_outcome_init(&t, NULL), 0);
    CHECK_INT(wh_outcome_set_timer(&t, "x", 1, NULL, NULL, 0), 0);
    wh_work_item_t i4 = event_item(e4, "inst", "messages.upsert", "444");
    CHECK_INT(commit_simple(s, &i4, WH_WORK_DONE, &t, NULL), 0);
    CHECK_INT(hooks(), h1 + 1);
    wh_work_item_t i5 = event_item(e5, "inst", "messages.upsert", "555");
    CHECK_INT(commit_simple(s, &i5, WH_WORK_RETRY, NULL, NULL), 0);
    CHECK_INT(hooks(), h1 + 2);
    CHECK_INT(wh_store_event_retry(s, e5), 0);
    CHECK_INT(hooks(), h1 + 3);
    wh_outcome_free(&t);
    wh_outcome_free(&good);
    wh_outcome_free(&bad);
    wh_store_close(s);
    remove_db(path);
}

/* ---- operator actions ------------------------------------------------------------------------ */

typedef struct detail_copy {
    int calls;
    int64_t id, received_at, processed_at, next_attempt_at;
    int attempts;
    char status[16], error[64], version[16], event[32], contact[32], dedup[32], body[32];
    int error_null, version_null;
} detail_copy_t;

static int on_detail(const wh_event_detail_t *d, void *ctx)
{
    detail_copy_t *c = ctx;
    c->calls++;
    c->id = d->row.id;
    c->received_at = d->row.received_at;
    c->processed_at = d->processed_at;
    c->next_attempt_at = d->next_attempt_at;
    c->attempts = d->attempts;
    snprintf(c->status, sizeof(c->status), "%s", d->row.status);
    snprintf(c->event, sizeof(c->event), "%s", d->row.event);
    snprintf(c->contact, sizeof(c->contact), "%s", d->row.contact_key ? d->row.contact_key : "");
    snprintf(c->dedup, sizeof(c->dedup), "%s", d->row.dedup_id);
    snprintf(c->body, sizeof(c->body), "%s", d->row.body);
    c->error_null = d->last_error == NULL;
    c->version_null = d->script_version == NULL;
    snprintf(c->error, sizeof(c->error), "%s", d->last_error ? d->last_error : "");
    snprintf(c->version, sizeof(c->version), "%s", d->script_version ? d->script_version : "");
    return 0;
}

static void test_operator(void)
{
    char path[160], err[128];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, 0);
    wh_store_reader_t *r = s != NULL ? open_reader(path) : NULL;
    if (r == NULL) {
        wh_store_close(s);
        return;
    }
    int64_t e1 = ingest(s, "inst", "messages.upsert", "O1", "111", NULL);
    int64_t e2 = ingest(s, "inst", "messages.upsert", "O2", "222", NULL);
    int64_t e3 = ingest(s, "inst", "messages.upsert", "O3", "333", NULL);
    int64_t p = -1, d = -1, x = -1;
    CHECK_INT(wh_store_event_counts(path, &p, &d, &x), 0);
    CHECK_INT(p, 3);
    CHECK_INT(d, 0);
    CHECK_INT(x, 0);

    detail_copy_t dc = {0};
    CHECK_INT(wh_store_event_show(path, e1, on_detail, &dc, err, sizeof(err)), 0);
    CHECK_INT(dc.calls, 1);
    CHECK_INT(dc.id, e1);
    CHECK_STR(dc.status, "pending");
    CHECK_STR(dc.event, "messages.upsert");
    CHECK_STR(dc.contact, "111");
    CHECK_STR(dc.dedup, "O1");
    CHECK_STR(dc.body, "{\"x\":1}");
    CHECK_INT(dc.attempts, 0);
    CHECK_INT(dc.processed_at, 0);
    CHECK_INT(dc.next_attempt_at, 0);
    CHECK_INT(dc.error_null, 1);
    CHECK_INT(dc.version_null, 1);
    CHECK(dc.received_at > 0);
    CHECK_INT(wh_store_event_show(path, 424242, on_detail, &dc, err, sizeof(err)), WH_ENOTFOUND);
    CHECK_CONTAINS(err, "424242");
    CHECK_INT(dc.calls, 1);

    /* e1 dies after two runs; e2 is waiting for a retry; e3 is done. */
    wh_work_item_t it = event_item(e1, "inst", "messages.upsert", "111");
    CHECK_INT(commit_simple(s, &it, WH_WORK_RETRY, NULL, NULL), 0);
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_DEAD, .error = "main.lua:9: nil",
                          .script_version = "abc123"};
    CHECK_INT(commit_sync(s, &c), 0);
    it = event_item(e2, "inst", "messages.upsert", "222");
    int64_t later = wh_now_ms() + 3600000;
    c = (wh_work_commit_t){.item = &it, .status = WH_WORK_RETRY, .error = "x",
                           .next_attempt_at = later};
    CHECK_INT(commit_sync(s, &c), 0);
    it = event_item(e3, "inst", "messages.upsert", "333");
    CHECK_INT(commit_simple(s, &it, WH_WORK_DONE, NULL, NULL), 0);
    CHECK_INT(wh_store_event_counts(path, &p, &d, &x), 0);
    CHECK_INT(p, 1);
    CHECK_INT(d, 1);
    CHECK_INT(x, 1);
    CHECK_INT(wh_store_event_counts(path, NULL, NULL, &x), 0);

    memset(&dc, 0, sizeof(dc));
    CHECK_INT(wh_store_event_show(path, e1, on_detail, &dc, err, sizeof(err)), 0);
    CHECK_STR(dc.status, "dead");
    CHECK_INT(dc.attempts, 2);
    CHECK_STR(dc.error, "main.lua:9: nil");
    CHECK_STR(dc.version, "abc123");
    CHECK(dc.processed_at > 0);
    memset(&dc, 0, sizeof(dc));
    CHECK_INT(wh_store_event_show(path, e2, on_detail, &dc, err, sizeof(err)), 0);
    CHECK_INT(dc.next_attempt_at, later);
    CHECK_INT(dc.attempts, 1);

    /* Retry: the dead one and the waiting one come back at once; done and unknown do not. */
    CHECK_INT(wh_store_event_retry(s, e1), 0);
    CHECK_INT(wh_store_event_retry(s, e2), 0);
    CHECK_INT(wh_store_event_retry(s, e3), WH_EINVAL);
    CHECK_INT(wh_store_event_retry(s, 987654), WH_ENOTFOUND);
    CHECK_INT(wh_store_event_retry(s, e1), WH_EINVAL); /* pending with no failure now */
    memset(&dc, 0, sizeof(dc));
    CHECK_INT(wh_store_event_show(path, e1, on_detail, &dc, err, sizeof(err)), 0);
    CHECK_STR(dc.status, "pending");
    CHECK_INT(dc.attempts, 0);
    CHECK_INT(dc.processed_at, 0);
    CHECK_STR(dc.error, "main.lua:9: nil"); /* kept for the operator until it is done */
    wh_work_item_t items[4];
    size_t n = fetch(r, 0, 1, wh_now_ms(), items, 4);
    CHECK_INT(n, 2);
    CHECK_INT(pos_of(items, n, e1, 0), 0);
    CHECK_INT(pos_of(items, n, e2, 0), 1);
    wh_store_work_free(items, n);
    CHECK_INT(wh_store_event_counts(path, &p, &d, &x), 0);
    CHECK_INT(p, 2);
    CHECK_INT(x, 0);

    wh_store_reader_close(r);
    wh_store_close(s);
    CHECK_INT(wh_store_event_counts("/nonexistent-wahook/x.db", &p, &d, &x), WH_EIO);
    remove_db(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/wh-storew-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    test_migrations();
    test_partition();
    test_next_work_fifo();
    test_timers_selection();
    test_commit_done();
    test_commit_retry_dead();
    test_native_records();
    test_timer_items();
    test_merges();
    test_commit_atomic();
    test_item_isolation_and_hook();
    test_operator();
    rmdir(tmpdir);
    WH_TEST_MAIN_END();
}
