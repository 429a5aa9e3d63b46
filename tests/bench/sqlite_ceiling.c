/* The storage ceiling for the benchmark: one writer inserting ~1 KB rows into a table shaped like
 * wahook's events table (same columns, UNIQUE(instance, event, dedup_id), same secondary indexes,
 * same INSERT ... ON CONFLICT DO NOTHING) in WAL mode, committing N rows per transaction, and
 * printing rows/s for each batch size.
 *
 * usage: sqlite_ceiling DIR normal|full SECONDS MAX_ROWS BODIES_FILE BATCH...
 *   BODIES_FILE holds "<signature>\t<body>" lines (gen_bodies.py); the bodies are cycled as row
 *   payloads and every row gets a distinct dedup_id. Each batch size runs against a fresh
 *   database DIR/ceiling-<sync>-<batch>.db for SECONDS or MAX_ROWS rows, whichever comes first.
 * Output, one line per batch size:
 *   ceiling sync=normal batch=64 rows=123456 secs=3.001 rows_per_s=41138 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODIES 2000

static const char *const schema =
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY,"
    " received_at INTEGER NOT NULL,"
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
    "CREATE INDEX events_contact ON events(contact_key, id);";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(sqlite3 *db, const char *what)
{
    fprintf(stderr, "sqlite_ceiling: %s: %s\n", what, db != NULL ? sqlite3_errmsg(db) : "?");
    exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "sqlite_ceiling: %s: %s\n", sql, msg != NULL ? msg : "?");
        exit(1);
    }
}

static void step_done(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    if (sqlite3_step(st) != SQLITE_DONE)
        die(db, what);
    sqlite3_reset(st);
}

/* Loads up to MAX_BODIES bodies (the part after the tab) from the bodies file. */
static size_t load_bodies(const char *path, char **bodies, size_t *lens)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    while (n < MAX_BODIES && (len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        char *tab = memchr(line, '\t', (size_t)len);
        if (tab == NULL)
            continue;
        lens[n] = (size_t)(line + len - (tab + 1));
        bodies[n] = strndup(tab + 1, lens[n]);
        if (bodies[n] == NULL)
            exit(1);
        n++;
    }
    free(line);
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "sqlite_ceiling: no bodies in %s\n", path);
        exit(1);
    }
    return n;
}

static void run_one(const char *dir, const char *sync, long batch, double secs, long max_rows,
                    char **bodies, size_t *lens, size_t nbodies)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/ceiling-%s-%ld.db", dir, sync, batch);
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
        unlink(p);
    }

    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        die(db, "open");
    /* The same connection settings the server's store applies. */
    exec(db, "PRAGMA journal_mode = WAL");
    exec(db, strcmp(sync, "full") == 0 ? "PRAGMA synchronous = FULL"
                                       : "PRAGMA synchronous = NORMAL");
    exec(db, "PRAGMA foreign_keys = ON");
    exec(db, schema);

    sqlite3_stmt *ins = NULL, *begin = NULL, *commit = NULL;
    if (sqlite3_prepare_v3(db,
                           "INSERT INTO events(received_at, instance, event, dedup_id, "
                           "contact_key, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
                           "ON CONFLICT(instance, event, dedup_id) DO NOTHING",
                           -1, SQLITE_PREPARE_PERSISTENT, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db, "BEGIN", -1, SQLITE_PREPARE_PERSISTENT, &begin, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v3(db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &commit, NULL) !=
            SQLITE_OK)
        die(db, "prepare");

    static const char *const contacts[] = {"34600111222", "34600333444", "5511987654321",
                                           "lid:99887766554433", "447700900123"};
    long rows = 0;
    double t0 = now_s(), t = t0;
    while (rows < max_rows && t - t0 < secs) {
        step_done(db, begin, "begin");
        for (long i = 0; i < batch; i++, rows++) {
            char dedup[40];
            snprintf(dedup, sizeof(dedup), "C%031lX", rows);
            size_t b = (size_t)rows % nbodies;
            sqlite3_bind_int64(ins, 1, now_ms());
            sqlite3_bind_text(ins, 2, "bench", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 3, "messages.upsert", -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 4, dedup, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins, 5, contacts[(size_t)rows % 5], -1, SQLITE_STATIC);
            sqlite3_bind_text64(ins, 6, bodies[b], lens[b], SQLITE_STATIC, SQLITE_UTF8);
            step_done(db, ins, "insert");
        }
        step_done(db, commit, "commit");
        t = now_s();
    }
    double dt = t - t0;

    sqlite3_finalize(ins);
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_close(db);
    printf("ceiling sync=%s batch=%ld rows=%ld secs=%.3f rows_per_s=%.0f\n", sync, batch, rows, dt,
           dt > 0 ? (double)rows / dt : 0.0);
    fflush(stdout);
    for (size_t i = 0; i < 3; i++) { /* keep the temp disk small between runs */
        char p[4200];
        snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
        unlink(p);
    }
}

int main(int argc, char **argv)
{
    if (argc < 7 || (strcmp(argv[2], "normal") != 0 && strcmp(argv[2], "full") != 0)) {
        fprintf(stderr,
                "usage: %s DIR normal|full SECONDS MAX_ROWS BODIES_FILE BATCH...\n", argv[0]);
        return 2;
    }
    double secs = atof(argv[3]);
    long max_rows = atol(argv[4]);
    if (secs <= 0 || max_rows <= 0) {
        fprintf(stderr, "sqlite_ceiling: SECONDS and MAX_ROWS must be positive\n");
        return 2;
    }
    static char *bodies[MAX_BODIES];
    static size_t lens[MAX_BODIES];
    size_t nbodies = load_bodies(argv[5], bodies, lens);
    for (int i = 6; i < argc; i++) {
        long batch = atol(argv[i]);
        if (batch <= 0) {
            fprintf(stderr, "sqlite_ceiling: bad batch size %s\n", argv[i]);
            return 2;
        }
        run_one(argv[1], argv[2], batch, secs, max_rows, bodies, lens, nbodies);
    }
    for (size_t i = 0; i < nbodies; i++)
        free(bodies[i]);
    return 0;
}
