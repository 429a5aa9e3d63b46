/* Unit tests for the SQLite store's ingest side: migrations, group-committed writes from many
 * threads, dedup, LID alias learning, back-pressure, disk full, lock timeouts and draining on
 * close. Processing is tested in test_store_work.c. */
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/store.h"
#include "wh_test.h"

static char tmpdir[64];
static int dbseq;

/* A fresh database path in the test's temp dir. */
static void db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/t%d.db", tmpdir, ++dbseq);
}

static void remove_db(const char *path)
{
    char p[128];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Callbacks report into a collector: counts and per-job results. */
typedef struct collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} collector_t;

typedef struct tjob {
    wh_ingest_t in;
    collector_t *col;
    int called;
    int status;
    int64_t id;
    int dup;
    char dedup[48];
} tjob_t;

static void collector_init(collector_t *c)
{
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->done = 0;
}

static void collector_destroy(collector_t *c)
{
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

static void on_done(wh_ingest_t *job, int status, int64_t id, int duplicate)
{
    tjob_t *t = job->user;
    pthread_mutex_lock(&t->col->mu);
    t->called++;
    t->status = status;
    t->id = id;
    t->dup = duplicate;
    t->col->done++;
    pthread_cond_broadcast(&t->col->cv);
    pthread_mutex_unlock(&t->col->mu);
}

/* Waits until n callbacks ran, at most 30 s. Returns 1 when they did. */
static int collector_wait(collector_t *c, int n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&c->mu);
    while (c->done < n) {
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT)
            break;
    }
    int ok = c->done >= n;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static void tjob_init(tjob_t *t, collector_t *col, const char *instance, const char *event,
                      const char *dedup, const char *phone, const char *lid, const char *body)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->dedup, sizeof(t->dedup), "%s", dedup);
    t->col = col;
    t->in.instance = instance;
    t->in.event = event;
    t->in.dedup_id = t->dedup;
    t->in.phone = phone;
    t->in.lid = lid;
    t->in.body = body;
    t->in.body_len = strlen(body);
    t->in.received_at = wh_now_ms();
    t->in.cb = on_done;
    t->in.user = t;
}

static wh_store_t *open_store(const char *path, const wh_store_opts_t *base)
{
    wh_store_opts_t o = {0};
    if (base != NULL)
        o = *base;
    o.path = path;
    char err[256] = "";
    wh_store_t *s = NULL;
    int rc = wh_store_open(&s, &o, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "open %s: %s\n", path, err);
    CHECK_INT(rc, 0);
    return s;
}

/* Listing into a copy of the rows that matter to the tests. */
typedef struct row_copy {
    int64_t id;
    char dedup[48];
    char contact[48]; /* "" when NULL */
    int contact_null;
    char status[16];
    size_t body_len;
} row_copy_t;

typedef struct rows {
    row_copy_t *v;
    size_t n, cap;
    size_t stop_after; /* 0 = never stop */
} rows_t;

static int collect_row(const wh_event_row_t *r, void *ctx)
{
    rows_t *rows = ctx;
    if (rows->n == rows->cap) {
        rows->cap = rows->cap ? rows->cap * 2 : 64;
        rows->v = realloc(rows->v, rows->cap * sizeof(*rows->v));
        if (rows->v == NULL)
            abort();
    }
    row_copy_t *c = &rows->v[rows->n++];
    memset(c, 0, sizeof(*c));
    c->id = r->id;
    snprintf(c->dedup, sizeof(c->dedup), "%s", r->dedup_id);
    c->contact_null = r->contact_key == NULL;
    snprintf(c->contact, sizeof(c->contact), "%s", r->contact_key ? r->contact_key : "");
    snprintf(c->status, sizeof(c->status), "%s", r->status);
    c->body_len = strlen(r->body);
    return rows->stop_after != 0 && rows->n >= rows->stop_after;
}

static int list_all(const char *path, rows_t *rows)
{
    char err[256] = "";
    memset(rows, 0, sizeof(*rows));
    int rc = wh_store_events_list(path, 0, 1000000, collect_row, rows, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "list: %s\n", err);
    return rc;
}

static const row_copy_t *find_row(const rows_t *rows, int64_t id)
{
    for (size_t i = 0; i < rows->n; i++)
        if (rows->v[i].id == id)
            return &rows->v[i];
    return NULL;
}

/* A second connection holding the write lock, so the store's writer waits on BEGIN IMMEDIATE. */
static sqlite3 *lock_db(const char *path)
{
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void unlock_db(sqlite3 *db)
{
    CHECK_INT(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* Waits (bounded) until the writer has taken everything queued. */
static int wait_queue_empty(wh_store_t *s)
{
    for (int i = 0; i < 5000; i++) {
        if (wh_store_queue_depth(s) == 0)
            return 1;
        sleep_ms(1);
    }
    return 0;
}

static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void test_migrations_and_reopen(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, NULL);
    if (s == NULL)
        return;
    CHECK_INT(wh_store_schema_version(s), wh_store_schema_latest());
    CHECK_INT(wh_store_ready(s), 1);
    CHECK_INT(wh_store_queue_depth(s), 0);

    collector_t col;
    collector_init(&col);
    tjob_t j;
    tjob_init(&j, &col, "inst", "messages.upsert", "ABC", NULL, NULL, "{\"a\":1}");
    CHECK_INT(wh_store_submit(s, &j.in), 0);
    CHECK(collector_wait(&col, 1));
    CHECK_INT(j.status, 0);
    CHECK(j.id > 0);
    CHECK_INT(j.dup, 0);
    wh_store_close(s);

    CHECK_INT(raw_int(path, "PRAGMA user_version"), wh_store_schema_latest());
    CHECK_INT(raw_int(path, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                            "('events', 'contact_aliases')"),
              2);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN "
                            "('events_status', 'events_contact')"),
              2);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM pragma_index_list('events') WHERE \"unique\""), 1);

    /* Reopening finds version 2 and runs nothing: the migrations would fail on existing tables. */
    s = open_store(path, NULL);
    if (s == NULL)
        return;
    CHECK_INT(wh_store_schema_version(s), wh_store_schema_latest());
    tjob_t j2;
    tjob_init(&j2, &col, "inst", "messages.upsert", "ABC", NULL, NULL, "{\"a\":2}");
    CHECK_INT(wh_store_submit(s, &j2.in), 0);
    CHECK(collector_wait(&col, 2));
    CHECK_INT(j2.status, 0);
    CHECK_INT(j2.dup, 1); /* the dedup row survived the reopen */
    CHECK_INT(j2.id, j.id);
    wh_store_close(s);

    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, 1);
    if (rows.n == 1) {
        CHECK_INT(rows.v[0].id, j.id);
        CHECK_STR(rows.v[0].dedup, "ABC");
        CHECK_STR(rows.v[0].status, "pending");
        CHECK_INT(rows.v[0].contact_null, 1);
        CHECK_INT(rows.v[0].body_len, strlen("{\"a\":1}"));
    }
    free(rows.v);
    collector_destroy(&col);
    remove_db(path);
}

static void test_newer_schema_refused(void)
{
    char path[128];
    db_path(path, sizeof(path));
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    wh_store_opts_t o = {.path = path};
    wh_store_t *s = (wh_store_t *)&o; /* must be reset to NULL on failure */
    char err[256] = "";
    CHECK_INT(wh_store_open(&s, &o, err, sizeof(err)), WH_EINVAL);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "newer");
    CHECK_CONTAINS(err, "99");
    CHECK_INT(raw_int(path, "PRAGMA user_version"), 99); /* left untouched */
    remove_db(path);

    /* An unusable path is reported, not crashed on. */
    o.path = "/nonexistent-dir-wahook/x.db";
    CHECK(wh_store_open(&s, &o, err, sizeof(err)) < 0);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "cannot open");
    o.path = "";
    CHECK_INT(wh_store_open(&s, &o, err, sizeof(err)), WH_EINVAL);
}

#define CONC_THREADS 4
#define CONC_PER_THREAD 500

typedef struct producer {
    wh_store_t *s;
    tjob_t *jobs;
    int n;
    int refused; /* submissions that never got accepted */
} producer_t;

static void *producer_main(void *arg)
{
    producer_t *p = arg;
    for (int i = 0; i < p->n; i++) {
        int rc = WH_EFULL;
        for (int tries = 0; tries < 10000 && rc == WH_EFULL; tries++) {
            rc = wh_store_submit(p->s, &p->jobs[i].in);
            if (rc == WH_EFULL)
                sleep_ms(1);
        }
        if (rc != 0)
            p->refused++;
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_concurrent_submit(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.queue_max = 256, .batch_max = 64};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    static tjob_t jobs[CONC_THREADS][CONC_PER_THREAD];
    producer_t prod[CONC_THREADS];
    pthread_t th[CONC_THREADS];
    for (int t = 0; t < CONC_THREADS; t++) {
        for (int i = 0; i < CONC_PER_THREAD; i++) {
            char dedup[32];
            snprintf(dedup, sizeof(dedup), "T%d-%d", t, i);
            tjob_init(&jobs[t][i], &col, "inst", "messages.upsert", dedup, NULL, NULL,
                      "{\"event\":\"messages.upsert\"}");
        }
        prod[t] = (producer_t){.s = s, .jobs = jobs[t], .n = CONC_PER_THREAD};
        pthread_create(&th[t], NULL, producer_main, &prod[t]);
    }
    int refused = 0;
    for (int t = 0; t < CONC_THREADS; t++) {
        pthread_join(th[t], NULL);
        refused += prod[t].refused;
    }
    CHECK_INT(refused, 0);
    const int total = CONC_THREADS * CONC_PER_THREAD;
    CHECK(collector_wait(&col, total));

    int64_t *ids = malloc(total * sizeof(*ids));
    int bad = 0, called_once = 0;
    for (int t = 0; t < CONC_THREADS; t++)
        for (int i = 0; i < CONC_PER_THREAD; i++) {
            tjob_t *j = &jobs[t][i];
            ids[t * CONC_PER_THREAD + i] = j->id;
            if (j->status != 0 || j->dup != 0 || j->id <= 0)
                bad++;
            called_once += j->called == 1;
        }
    CHECK_INT(bad, 0);
    CHECK_INT(called_once, total);
    qsort(ids, total, sizeof(*ids), cmp_i64);
    int repeats = 0;
    for (int i = 1; i < total; i++)
        repeats += ids[i] == ids[i - 1];
    CHECK_INT(repeats, 0);
    CHECK(wh_store_ready(s));
    wh_store_close(s);

    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, total);
    int missing = 0;
    for (int t = 0; t < CONC_THREADS; t++)
        for (int i = 0; i < CONC_PER_THREAD; i++) {
            const row_copy_t *r = find_row(&rows, jobs[t][i].id);
            if (r == NULL || strcmp(r->dedup, jobs[t][i].dedup) != 0)
                missing++;
        }
    CHECK_INT(missing, 0);
    free(rows.v);

    /* Paging: since + limit, and a callback that stops early. */
    rows_t page = {0};
    char err[256];
    CHECK_INT(wh_store_events_list(path, ids[9], 5, collect_row, &page, err, sizeof(err)), 0);
    CHECK_INT(page.n, 5);
    if (page.n == 5) {
        CHECK_INT(page.v[0].id, ids[10]);
        CHECK_INT(page.v[4].id, ids[14]);
    }
    free(page.v);
    memset(&page, 0, sizeof(page));
    page.stop_after = 3;
    CHECK_INT(wh_store_events_list(path, 0, 100, collect_row, &page, err, sizeof(err)), 0);
    CHECK_INT(page.n, 3);
    free(page.v);
    CHECK(wh_store_events_list(path, 0, 0, collect_row, NULL, err, sizeof(err)) < 0);
    CHECK(wh_store_events_list("/nonexistent-dir-wahook/x.db", 0, 10, collect_row, NULL, err,
                               sizeof(err)) < 0);
    CHECK_CONTAINS(err, "cannot open");

    free(ids);
    collector_destroy(&col);
    remove_db(path);
}

static void test_duplicates(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.batch_max = 64, .busy_timeout_ms = 30000};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);

    /* Sequential: the second submission finds the committed row. */
    tjob_t a, b, c;
    tjob_init(&a, &col, "inst", "messages.upsert", "K1", NULL, NULL, "{}");
    tjob_init(&b, &col, "inst", "messages.upsert", "K1", NULL, NULL, "{\"retry\":1}");
    CHECK_INT(wh_store_submit(s, &a.in), 0);
    CHECK(collector_wait(&col, 1));
    CHECK_INT(wh_store_submit(s, &b.in), 0);
    CHECK(collector_wait(&col, 2));
    CHECK_INT(a.dup, 0);
    CHECK_INT(b.dup, 1);
    CHECK_INT(b.id, a.id);
    /* Same dedup id under another event name or instance is a different event (rule 2). */
    tjob_init(&c, &col, "inst", "messages.update", "K1", NULL, NULL, "{}");
    CHECK_INT(wh_store_submit(s, &c.in), 0);
    CHECK(collector_wait(&col, 3));
    CHECK_INT(c.dup, 0);
    CHECK(c.id != a.id);
    tjob_init(&c, &col, "other", "messages.upsert", "K1", NULL, NULL, "{}");
    CHECK_INT(wh_store_submit(s, &c.in), 0);
    CHECK(collector_wait(&col, 4));
    CHECK_INT(c.dup, 0);
    CHECK(c.id != a.id);

    /* Within one transaction: block the writer on a plug job, queue 8 copies, then release, so
     * all 8 are written in the same batch. */
    sqlite3 *lk = lock_db(path);
    tjob_t plug, same[8];
    tjob_init(&plug, &col, "inst", "messages.upsert", "PLUG", NULL, NULL, "{}");
    CHECK_INT(wh_store_submit(s, &plug.in), 0);
    CHECK(wait_queue_empty(s));
    for (int i = 0; i < 8; i++) {
        tjob_init(&same[i], &col, "inst", "messages.upsert", "K8", NULL, NULL, "{}");
        CHECK_INT(wh_store_submit(s, &same[i].in), 0);
    }
    CHECK_INT(wh_store_queue_depth(s), 8);
    unlock_db(lk);
    CHECK(collector_wait(&col, 4 + 1 + 8));
    int dups = 0, same_id = 0, ok = 0;
    for (int i = 0; i < 8; i++) {
        dups += same[i].dup;
        same_id += same[i].id == same[0].id;
        ok += same[i].status == 0;
    }
    CHECK_INT(ok, 8);
    CHECK_INT(dups, 7);
    CHECK_INT(same_id, 8);
    CHECK_INT(same[0].dup, 0); /* the first in queue order is the one stored */
    CHECK(same[0].id > plug.id);
    wh_store_close(s);

    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    int k8 = 0, k1 = 0;
    for (size_t i = 0; i < rows.n; i++) {
        k8 += strcmp(rows.v[i].dedup, "K8") == 0;
        k1 += strcmp(rows.v[i].dedup, "K1") == 0;
    }
    CHECK_INT(k8, 1);
    CHECK_INT(k1, 3);
    CHECK_INT(rows.n, 5);
    free(rows.v);
    collector_destroy(&col);
    remove_db(path);
}

static void test_alias_learning(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path, NULL);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    char phone[32];

    /* Seen by LID first, before the mapping exists: keyed by the LID. */
    tjob_t j[6];
    tjob_init(&j[0], &col, "inst", "presence.update", "e0", NULL, "111@lid", "{}");
    tjob_init(&j[1], &col, "inst", "messages.upsert", "e1", "5511999990000", "111@lid", "{}");
    tjob_init(&j[2], &col, "inst", "messages.update", "e2", NULL, "111@lid", "{}");
    tjob_init(&j[3], &col, "other", "messages.update", "e3", NULL, "111@lid", "{}");
    tjob_init(&j[4], &col, "inst", "connection.update", "e4", NULL, NULL, "{}");
    tjob_init(&j[5], &col, "inst", "messages.upsert", "e5", "", "", "{}");
    for (int i = 0; i < 6; i++) {
        CHECK_INT(wh_store_submit(s, &j[i].in), 0);
        CHECK(collector_wait(&col, i + 1)); /* one at a time: order matters here */
        CHECK_INT(j[i].status, 0);
    }
    CHECK_INT(wh_store_alias_lookup(path, "inst", "111@lid", phone, sizeof(phone)), 0);
    CHECK_STR(phone, "5511999990000");
    CHECK_INT(wh_store_alias_lookup(path, "other", "111@lid", phone, sizeof(phone)), WH_ENOTFOUND);
    CHECK_INT(wh_store_alias_lookup(path, "inst", "222@lid", phone, sizeof(phone)), WH_ENOTFOUND);
    CHECK_INT(wh_store_alias_lookup(path, "inst", "111@lid", phone, 5), WH_EINVAL);
    CHECK(wh_store_alias_lookup("/nonexistent-dir-wahook/x.db", "inst", "111@lid", phone,
                                sizeof(phone)) < 0);

    /* A new phone for the same LID replaces the old mapping. */
    tjob_t k;
    tjob_init(&k, &col, "inst", "messages.upsert", "e6", "5511888880000", "111@lid", "{}");
    CHECK_INT(wh_store_submit(s, &k.in), 0);
    CHECK(collector_wait(&col, 7));
    wh_store_close(s);
    CHECK_INT(wh_store_alias_lookup(path, "inst", "111@lid", phone, sizeof(phone)), 0);
    CHECK_STR(phone, "5511888880000");

    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    const row_copy_t *r;
    CHECK((r = find_row(&rows, j[0].id)) != NULL && strcmp(r->contact, "111@lid") == 0);
    CHECK((r = find_row(&rows, j[1].id)) != NULL && strcmp(r->contact, "5511999990000") == 0);
    CHECK((r = find_row(&rows, j[2].id)) != NULL && strcmp(r->contact, "5511999990000") == 0);
    CHECK((r = find_row(&rows, j[3].id)) != NULL && strcmp(r->contact, "111@lid") == 0);
    CHECK((r = find_row(&rows, j[4].id)) != NULL && r->contact_null);
    CHECK((r = find_row(&rows, j[5].id)) != NULL && r->contact_null);
    free(rows.v);
    collector_destroy(&col);
    remove_db(path);
}

static void test_queue_full(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.queue_max = 4, .batch_max = 1, .busy_timeout_ms = 30000};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    tjob_t j[6];
    for (int i = 0; i < 6; i++) {
        char d[16];
        snprintf(d, sizeof(d), "Q%d", i);
        tjob_init(&j[i], &col, "inst", "messages.upsert", d, NULL, NULL, "{}");
    }
    sqlite3 *lk = lock_db(path);
    CHECK_INT(wh_store_submit(s, &j[0].in), 0); /* taken by the writer, which then waits */
    CHECK(wait_queue_empty(s));
    for (int i = 1; i <= 4; i++)
        CHECK_INT(wh_store_submit(s, &j[i].in), 0);
    CHECK_INT(wh_store_queue_depth(s), 4);
    CHECK_INT(wh_store_submit(s, &j[5].in), WH_EFULL);
    CHECK_INT(wh_store_queue_depth(s), 4);
    unlock_db(lk);
    CHECK(collector_wait(&col, 5));
    for (int i = 0; i <= 4; i++) {
        CHECK_INT(j[i].status, 0);
        CHECK_INT(j[i].called, 1);
    }
    CHECK_INT(j[5].called, 0);
    /* Room again once drained. */
    CHECK_INT(wh_store_submit(s, &j[5].in), 0);
    CHECK(collector_wait(&col, 6));
    CHECK_INT(j[5].status, 0);
    wh_store_close(s);
    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, 6);
    free(rows.v);
    collector_destroy(&col);
    remove_db(path);
}

static void test_busy_then_recover(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.busy_timeout_ms = 50};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    tjob_t a, b;
    tjob_init(&a, &col, "inst", "messages.upsert", "B1", NULL, NULL, "{}");
    tjob_init(&b, &col, "inst", "messages.upsert", "B2", NULL, NULL, "{}");
    sqlite3 *lk = lock_db(path);
    CHECK_INT(wh_store_submit(s, &a.in), 0);
    CHECK(collector_wait(&col, 1));
    CHECK_INT(a.status, WH_EIO);
    CHECK_INT(wh_store_ready(s), 0);
    unlock_db(lk);
    CHECK_INT(wh_store_submit(s, &b.in), 0);
    CHECK(collector_wait(&col, 2));
    CHECK_INT(b.status, 0);
    CHECK_INT(wh_store_ready(s), 1);
    wh_store_close(s);
    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, 1); /* the failed one was not stored */
    if (rows.n == 1)
        CHECK_STR(rows.v[0].dedup, "B2");
    free(rows.v);
    collector_destroy(&col);
    remove_db(path);
}

static void test_disk_full(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.max_size = 256 * 1024};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    enum { MAXJ = 200, BODY = 3000 };
    char *body = malloc(BODY + 16);
    snprintf(body, BODY + 16, "{\"pad\":\"%0*d\"}", BODY, 0);
    tjob_t *jobs = calloc(MAXJ, sizeof(*jobs));
    int n = 0, last = 0;
    for (; n < MAXJ; n++) {
        char d[16];
        snprintf(d, sizeof(d), "F%d", n);
        tjob_init(&jobs[n], &col, "inst", "messages.upsert", d, NULL, NULL, body);
        CHECK_INT(wh_store_submit(s, &jobs[n].in), 0);
        CHECK(collector_wait(&col, n + 1));
        last = jobs[n].status;
        if (last != 0)
            break;
    }
    CHECK(n > 3 && n < MAXJ); /* some fit, then the cap was hit */
    CHECK_INT(last, WH_EFULL);
    CHECK_INT(wh_store_ready(s), 0);
    wh_store_close(s);

    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, n); /* exactly the acknowledged ones */
    int missing = 0;
    for (int i = 0; i < n; i++) {
        const row_copy_t *r = find_row(&rows, jobs[i].id);
        if (r == NULL || strcmp(r->dedup, jobs[i].dedup) != 0 || r->body_len != strlen(body))
            missing++;
    }
    CHECK_INT(missing, 0);
    free(rows.v);
    free(jobs);
    free(body);
    collector_destroy(&col);
    remove_db(path);
}

static void test_close_drains(void)
{
    char path[128];
    db_path(path, sizeof(path));
    enum { N = 3000 };
    wh_store_opts_t o = {.queue_max = N, .batch_max = 100};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    tjob_t *jobs = calloc(N, sizeof(*jobs));
    int accepted = 0;
    for (int i = 0; i < N; i++) {
        char d[16];
        snprintf(d, sizeof(d), "D%d", i);
        tjob_init(&jobs[i], &col, "inst", "messages.upsert", d, NULL, NULL, "{\"x\":1}");
        accepted += wh_store_submit(s, &jobs[i].in) == 0;
    }
    CHECK_INT(accepted, N);
    wh_store_close(s); /* at once: whatever is still queued must be committed before it returns */
    pthread_mutex_lock(&col.mu);
    int done = col.done;
    pthread_mutex_unlock(&col.mu);
    CHECK_INT(done, N);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += jobs[i].called == 1 && jobs[i].status == 0 && jobs[i].id > 0;
    CHECK_INT(ok, N);
    rows_t rows;
    CHECK_INT(list_all(path, &rows), 0);
    CHECK_INT(rows.n, N);
    free(rows.v);
    free(jobs);
    collector_destroy(&col);
    remove_db(path);
}

static void *closer_main(void *arg)
{
    wh_store_close(arg);
    return NULL;
}

static void test_closing_refuses(void)
{
    char path[128];
    db_path(path, sizeof(path));
    /* Long lock wait: the writer must still be blocked while this thread uses the store. */
    wh_store_opts_t o = {.busy_timeout_ms = 60000};
    wh_store_t *s = open_store(path, &o);
    if (s == NULL)
        return;
    collector_t col;
    collector_init(&col);
    tjob_t a, b, bad;
    tjob_init(&a, &col, "inst", "messages.upsert", "C1", NULL, NULL, "{}");
    tjob_init(&b, &col, "inst", "messages.upsert", "C2", NULL, NULL, "{}");

    bad = a;
    bad.in.instance = NULL;
    CHECK_INT(wh_store_submit(s, &bad.in), WH_EINVAL);
    bad = a;
    bad.in.cb = NULL;
    CHECK_INT(wh_store_submit(s, &bad.in), WH_EINVAL);

    sqlite3 *lk = lock_db(path);
    CHECK_INT(wh_store_submit(s, &a.in), 0);
    CHECK(wait_queue_empty(s));
    pthread_t th;
    pthread_create(&th, NULL, closer_main, s);
    int closing = 0;
    for (int i = 0; i < 5000 && !closing; i++) {
        closing = !wh_store_ready(s);
        if (!closing)
            sleep_ms(1);
    }
    CHECK(closing);
    CHECK_INT(wh_store_submit(s, &b.in), WH_ESHUTDOWN);
    unlock_db(lk);
    pthread_join(th, NULL);
    CHECK_INT(a.called, 1);
    CHECK_INT(a.status, 0);
    CHECK_INT(b.called, 0);
    wh_store_close(NULL);
    collector_destroy(&col);
    remove_db(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/wh-store-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    test_migrations_and_reopen();
    test_newer_schema_refused();
    test_concurrent_submit();
    test_duplicates();
    test_alias_learning();
    test_queue_full();
    test_busy_then_recover();
    test_disk_full();
    test_close_drains();
    test_closing_refuses();
    rmdir(tmpdir);
    WH_TEST_MAIN_END();
}
