/* Analytics benchmark: generates a store holding a year of traffic (at least a million messages
 * with their events, facts and outbox rows, on the real schema and indexes), then times
 * wh_stats_query over 7, 30 and 365 days and the `wahook stats` command (wh_cli_stats) over 30
 * days, and prints the figures. Targets are reported, never asserted.
 *
 *   usage: stats_bench DB [MESSAGES]      (DB is reused when it already holds MESSAGES messages)
 */
#include <fcntl.h>
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/stats.h"
#include "wahook/store.h"

#define DAY_MS INT64_C(86400000)
#define CONTACTS 40000

static uint64_t rng = UINT64_C(0x2545F4914F6CDD1D);

static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double unif(void)
{
    return (double)(next_u64() >> 11) / 9007199254740992.0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(sqlite3 *db, const char *what)
{
    fprintf(stderr, "stats_bench: %s: %s\n", what, db != NULL ? sqlite3_errmsg(db) : "");
    exit(1);
}

static sqlite3_stmt *prep(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        die(db, sql);
    return st;
}

static void step(sqlite3 *db, sqlite3_stmt *st)
{
    if (sqlite3_step(st) != SQLITE_DONE)
        die(db, sqlite3_sql(st));
    sqlite3_reset(st);
}

static int64_t count_rows(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

typedef struct gen {
    sqlite3 *db;
    sqlite3_stmt *msg, *ev, *fact, *ob;
    int64_t n_msg, n_in, n_out, n_ev, n_fact, n_ob, seq;
} gen_t;

static void put_msg(gen_t *g, const char *inst, const char *wa_id, const char *contact,
                    const char *dir, const char *origin, const char *type, const char *status,
                    int rank, int64_t at)
{
    sqlite3_stmt *st = g->msg;
    sqlite3_bind_text(st, 1, inst, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, wa_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, contact, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, dir, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, origin, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, type, -1, SQLITE_STATIC);
    if (status != NULL)
        sqlite3_bind_text(st, 7, status, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    sqlite3_bind_int(st, 8, rank);
    sqlite3_bind_int64(st, 9, at);
    step(g->db, st);
    g->n_msg++;
    if (dir[0] == 'i')
        g->n_in++;
    else
        g->n_out++;
}

static void put_event(gen_t *g, const char *inst, const char *name, const char *contact,
                      const char *status, int attempts, int64_t at)
{
    char dedup[32], body[96];
    snprintf(dedup, sizeof(dedup), "B%012llx", (unsigned long long)++g->seq);
    snprintf(body, sizeof(body), "{\"event\":\"%s\",\"instance\":\"%s\",\"data\":{}}", name, inst);
    sqlite3_stmt *st = g->ev;
    sqlite3_bind_int64(st, 1, at);
    sqlite3_bind_text(st, 2, inst, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, dedup, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, contact, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 6, body, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 7, status, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 8, attempts);
    step(g->db, st);
    g->n_ev++;
}

static void put_fact(gen_t *g, const char *inst, const char *contact, const char *kind,
                     const char *fields, int64_t at)
{
    sqlite3_stmt *st = g->fact;
    sqlite3_bind_text(st, 1, inst, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, contact, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, fields, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, at);
    step(g->db, st);
    g->n_fact++;
}

static void put_outbox(gen_t *g, const char *inst, const char *contact, const char *target,
                       const char *status, int64_t at)
{
    sqlite3_stmt *st = g->ob;
    sqlite3_bind_text(st, 1, inst, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, contact, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, target, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, target[0] == 'e' ? "send_text" : "crm", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, at);
    step(g->db, st);
    g->n_ob++;
}

static const char *pick(const char *const *v, const double *w, size_t n)
{
    double u = unif(), acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += w[i];
        if (u < acc)
            return v[i];
    }
    return v[n - 1];
}

/* One inbound message and everything it causes: the bot's reply (message, fact, outbox row,
 * echo and receipts), sometimes a handoff and the agent's reply, CSAT, a lead, a CRM write. */
static void conversation_turn(gen_t *g, int64_t at)
{
    static const char *const types[] = {"conversation", "imageMessage", "audioMessage",
                                        "extendedTextMessage", "stickerMessage"};
    static const double type_w[] = {0.80, 0.08, 0.06, 0.04, 0.02};
    static const char *const out_status[] = {"READ", "DELIVERY_ACK", "SERVER_ACK", "ERROR",
                                             "PENDING"};
    static const double out_w[] = {0.60, 0.25, 0.10, 0.02, 0.03};
    static const int out_rank[] = {4, 3, 2, 100, 1};
    static const char *const reasons[] = {"asked_human", "angry", "complex_question"};
    const char *inst = unif() < 0.9 ? "main" : "sales";
    /* skewed contact popularity: a few contacts write a lot */
    unsigned ci = (unsigned)(CONTACTS * pow(unif(), 3.0));
    char contact[32], wa_in[32], wa_out[32], fields[160];
    snprintf(contact, sizeof(contact), "346%08u", ci);
    snprintf(wa_in, sizeof(wa_in), "3A%016llX", (unsigned long long)++g->seq);
    put_msg(g, inst, wa_in, contact, "in", "contact", pick(types, type_w, 5), NULL, 0, at);
    double u = unif();
    const char *ev_status = u < 0.002 ? "dead" : u < 0.003 ? "pending" : "done";
    put_event(g, inst, "messages.upsert", contact, ev_status, u < 0.003 ? 3 : 1, at);
    if (unif() < 0.8) {
        /* ~1.1 s median, long tail */
        int64_t lat = (int64_t)exp(7.0 + 0.8 * (unif() + unif() + unif() - 1.5) * 2);
        int64_t t = at + lat;
        size_t k = 0;
        double v = unif(), acc = 0;
        for (k = 0; k < 4; k++) {
            acc += out_w[k];
            if (v < acc)
                break;
        }
        snprintf(wa_out, sizeof(wa_out), "3EB0%016llX", (unsigned long long)++g->seq);
        put_msg(g, inst, wa_out, contact, "out", "wahook", "conversation", out_status[k],
                out_rank[k], t);
        snprintf(fields, sizeof(fields), "{\"in_reply_to\":\"%s\",\"latency_ms\":%lld}", wa_in,
                 (long long)lat);
        put_fact(g, inst, contact, "bot_reply", fields, t);
        double d = unif();
        put_outbox(g, inst, contact, "evolution",
                   d < 0.01 ? "dead" : d < 0.015 ? "pending" : "done", t);
        put_event(g, inst, "send.message", contact, "done", 1, t + 300);
        put_event(g, inst, "messages.update", contact, "done", 1, t + 900);
        put_event(g, inst, "messages.update", contact, "done", 1, t + 60000);
    }
    if (unif() < 0.05) {
        snprintf(fields, sizeof(fields), "{\"reason\":\"%s\"}", reasons[next_u64() % 3]);
        put_fact(g, inst, contact, "handoff", fields, at + 2000);
        snprintf(wa_out, sizeof(wa_out), "3EB1%016llX", (unsigned long long)++g->seq);
        put_msg(g, inst, wa_out, contact, "out", "phone", "conversation", "READ", 4,
                at + 300000);
        put_event(g, inst, "send.message", contact, "done", 1, at + 300000);
    }
    if (unif() < 0.03) {
        snprintf(fields, sizeof(fields), "{\"score\":%d}", 5 - (int)(4 * pow(unif(), 2.5)));
        put_fact(g, inst, contact, "csat", fields, at + 600000);
    }
    if (unif() < 0.02) {
        snprintf(fields, sizeof(fields), "{\"score\":%d,\"stage\":\"%s\"}",
                 (int)(unif() * 100), unif() < 0.7 ? "new" : "qualified");
        put_fact(g, inst, contact, "lead", fields, at + 1000);
    }
    if (unif() < 0.1) {
        double d = unif();
        put_outbox(g, inst, contact, "crm", d < 0.005 ? "dead" : "done", at + 1500);
    }
}

/* Saves the SQL of the big tables' secondary indexes and drops them: a bulk load followed by
 * CREATE INDEX is several times faster than maintaining them row by row. */
static char **drop_indexes(sqlite3 *db, size_t *n)
{
    sqlite3_stmt *st = prep(db, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND"
                                " sql IS NOT NULL AND tbl_name IN ('events', 'messages',"
                                " 'facts', 'outbox')");
    char **sqls = NULL, **names = NULL;
    *n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        sqls = realloc(sqls, (*n + 1) * sizeof(*sqls));
        names = realloc(names, (*n + 1) * sizeof(*names));
        names[*n] = strdup((const char *)sqlite3_column_text(st, 0));
        sqls[*n] = strdup((const char *)sqlite3_column_text(st, 1));
        (*n)++;
    }
    sqlite3_finalize(st);
    for (size_t i = 0; i < *n; i++) {
        char *sql = sqlite3_mprintf("DROP INDEX \"%w\"", names[i]);
        if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
            die(db, sql);
        sqlite3_free(sql);
        free(names[i]);
    }
    free(names);
    return sqls;
}

static void generate(const char *path, int64_t target, int64_t end_ms)
{
    double t0 = now_s();
    char err[256];
    wh_store_opts_t so = {.path = path, .sync_full = 0};
    wh_store_t *s = NULL;
    if (wh_store_open(&s, &so, err, sizeof(err)) != 0) {
        fprintf(stderr, "stats_bench: %s\n", err);
        exit(1);
    }
    wh_store_close(s);
    gen_t g = {0};
    if (sqlite3_open(path, &g.db) != SQLITE_OK)
        die(g.db, "open");
    if (sqlite3_exec(g.db, WH_STATS_MIGRATION, NULL, NULL, NULL) != SQLITE_OK)
        die(g.db, "stats migration");
    sqlite3_exec(g.db, "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;", NULL, NULL,
                 NULL);
    size_t nidx = 0;
    char **idx = drop_indexes(g.db, &nidx);
    g.msg = prep(g.db, "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, type,"
                       " status, status_rank, ts, created_at, updated_at)"
                       " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 / 1000, ?9, ?9)");
    /* a pending event with attempts waits for its retry, as the writer leaves it */
    g.ev = prep(g.db, "INSERT INTO events(received_at, instance, event, dedup_id, contact_key,"
                      " body, status, attempts, processed_at, next_attempt_at)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
                      " CASE WHEN ?7 = 'pending' THEN NULL ELSE ?1 + 50 END,"
                      " CASE WHEN ?7 = 'pending' AND ?8 > 0 THEN ?1 + 60000 ELSE 0 END)");
    g.fact = prep(g.db, "INSERT INTO facts(instance, contact_key, kind, fields, created_at)"
                        " VALUES(?1, ?2, ?3, ?4, ?5)");
    g.ob = prep(g.db, "INSERT INTO outbox(instance, contact_key, target, kind, payload, status,"
                      " attempts, created_at, updated_at) VALUES(?1, ?2, ?3, ?4, '{}', ?5, 1, ?6,"
                      " ?6)");
    /* Hour-of-day and weekday weights: busy 9-21h, quieter weekends; traffic grows over the
     * year (the last month is about twice the first). */
    static const double hour_w[24] = {0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 1.4, 2.0, 2.4, 2.4,
                                      2.0, 1.8, 2.0, 2.2, 2.3, 2.2, 2.0, 1.8, 1.5, 1.0, 0.6, 0.3};
    double hsum = 0;
    for (int h = 0; h < 24; h++)
        hsum += hour_w[h];
    int64_t start = end_ms - 365 * DAY_MS;
    /* ~1.85 messages per inbound message; the growth averages 1.5, the weekday factor 0.964;
     * aim 1% over and stop at the target */
    double per_day_base = (double)target / 1.85 / 365.0 / 1.5 / 0.964 * 1.01;
    if (sqlite3_exec(g.db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        die(g.db, "begin");
    for (int d = 0; d < 365 && g.n_msg < target; d++) {
        int64_t day = start + d * DAY_MS;
        int wday = (int)((day / DAY_MS + 3) % 7); /* 0 = Monday */
        double n_day = per_day_base * (1.0 + (double)d / 365.0) * (wday >= 5 ? 0.5 : 1.15);
        for (int h = 0; h < 24; h++) {
            int n = (int)(n_day * hour_w[h] / hsum + unif());
            /* sorted arrival times within the hour */
            int64_t step_ms = n > 0 ? 3600000 / n : 3600000;
            for (int i = 0; i < n && g.n_msg < target; i++)
                conversation_turn(&g, day + h * INT64_C(3600000) + i * step_ms +
                                          (int64_t)(unif() * (double)step_ms));
        }
    }
    /* top up over the last day, in time order (each turn adds at least one message) */
    int64_t left = target - g.n_msg, start_n = g.n_msg;
    while (g.n_msg < target)
        conversation_turn(&g, end_ms - DAY_MS +
                                  (int64_t)((double)DAY_MS * (double)(g.n_msg - start_n) /
                                            (double)left));
    for (int i = 0; i < CONTACTS; i++) {
        char sql[200];
        snprintf(sql, sizeof(sql),
                 "INSERT OR IGNORE INTO contacts(instance, contact_key, push_name)"
                 " VALUES('main', '346%08d', 'Contact %d')",
                 i, i);
        sqlite3_exec(g.db, sql, NULL, NULL, NULL);
    }
    if (sqlite3_exec(g.db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        die(g.db, "commit");
    double t1 = now_s();
    for (size_t i = 0; i < nidx; i++) {
        if (sqlite3_exec(g.db, idx[i], NULL, NULL, NULL) != SQLITE_OK)
            die(g.db, idx[i]);
        free(idx[i]);
    }
    free(idx);
    sqlite3_exec(g.db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    sqlite3_finalize(g.msg);
    sqlite3_finalize(g.ev);
    sqlite3_finalize(g.fact);
    sqlite3_finalize(g.ob);
    sqlite3_close(g.db);
    printf("   generated in %.1f s (rows %.1f s, indexes %.1f s): %lld messages (%lld in, %lld "
           "out), %lld events, %lld facts, %lld outbox rows\n",
           now_s() - t0, t1 - t0, now_s() - t1, (long long)g.n_msg, (long long)g.n_in,
           (long long)g.n_out, (long long)g.n_ev, (long long)g.n_fact, (long long)g.n_ob);
}

/* CPU time of this thread: steadier than wall time when other work shares the cores. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Prints a first (cold-ish) run and min/median/max of the others, wall and CPU time. */
#define RUNS 7
static double report(const char *what, double first, double *v, double *cpu, int n,
                     double target)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    qsort(cpu, (size_t)n, sizeof(*cpu), cmp_double);
    double med = v[n / 2];
    printf("   %-28s first %6.1f · min %6.1f · median %6.1f · max %6.1f ms (cpu median %6.1f)",
           what, first, v[0], med, v[n - 1], cpu[n / 2]);
    if (target > 0)
        printf("  < %.0f ms: %s", target, med < target ? "MET" : "MISSED");
    printf("\n");
    return med;
}

static void time_query(const char *path, const char *what, const char *qs, int64_t now,
                       double target)
{
    wh_stats_params_t p;
    char err[256];
    if (wh_stats_params_from_query(&p, qs, strlen(qs), now, err, sizeof(err)) != 0) {
        fprintf(stderr, "stats_bench: %s: %s\n", qs, err);
        exit(1);
    }
    double v[RUNS], cpu[RUNS], first = 0;
    json_t *last = NULL;
    for (int i = 0; i <= RUNS; i++) {
        double t = now_s(), tc = cpu_s();
        json_t *o = wh_stats_query(path, &p, err, sizeof(err));
        double ms = (now_s() - t) * 1000;
        if (i > 0)
            cpu[i - 1] = (cpu_s() - tc) * 1000;
        if (o == NULL) {
            fprintf(stderr, "stats_bench: query %s: %s\n", qs, err);
            exit(1);
        }
        if (i == 0)
            first = ms;
        else
            v[i - 1] = ms;
        json_decref(last);
        last = o;
    }
    report(what, first, v, cpu, RUNS, target);
    json_t *m = json_object_get(last, "messages"), *b = json_object_get(last, "bot");
    printf("   %-28s %lld messages, %lld events, response rate %.3f, first response median "
           "%lld ms\n",
           "", (long long)json_integer_value(json_object_get(m, "total")),
           (long long)json_integer_value(json_object_get(json_object_get(last, "events"), "total")),
           json_number_value(json_object_get(b, "response_rate")),
           (long long)json_integer_value(
               json_object_get(json_object_get(b, "first_response"), "median_ms")));
    json_decref(last);
}

static void time_cli(const char *dir, const char *what, int json, int64_t end_ms, double target)
{
    wh_config_t conf;
    memset(&conf, 0, sizeof(conf));
    conf.data_dir = (char *)dir;
    char since[32], until[32];
    snprintf(since, sizeof(since), "%lld", (long long)(end_ms - 30 * DAY_MS));
    snprintf(until, sizeof(until), "%lld", (long long)end_ms);
    char *argv_table[] = {"--since", since, "--until", until, NULL};
    char *argv_json[] = {"--since", since, "--until", until, "--json", NULL};
    double v[RUNS], cpu[RUNS], first = 0;
    fflush(stdout);
    int saved = dup(1), devnull = open("/dev/null", O_WRONLY);
    for (int i = 0; i <= RUNS; i++) {
        dup2(devnull, 1);
        double t = now_s(), tc = cpu_s();
        int rc = wh_cli_stats(&conf, json ? 5 : 4, json ? argv_json : argv_table);
        fflush(stdout);
        double ms = (now_s() - t) * 1000;
        if (i > 0)
            cpu[i - 1] = (cpu_s() - tc) * 1000;
        dup2(saved, 1);
        if (rc != 0) {
            fprintf(stderr, "stats_bench: wh_cli_stats returned %d\n", rc);
            exit(1);
        }
        if (i == 0)
            first = ms;
        else
            v[i - 1] = ms;
    }
    close(devnull);
    close(saved);
    report(what, first, v, cpu, RUNS, target);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: stats_bench DB [MESSAGES]\n");
        return 2;
    }
    const char *path = argv[1];
    int64_t target = argc > 2 ? strtoll(argv[2], NULL, 10) : 1000000;
    if (target < 1000)
        target = 1000;
    /* "now" is fixed by the data: the end of the generated year, rounded to the hour. */
    int64_t end_ms = wh_now_ms() / 3600000 * 3600000;
    struct stat sb;
    int reuse = 0;
    if (stat(path, &sb) == 0) {
        sqlite3 *db = NULL;
        if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
            int64_t n = count_rows(db, "SELECT count(*) FROM messages");
            int64_t last = count_rows(db, "SELECT max(created_at) FROM messages");
            if (n >= target && last > 0) {
                reuse = 1;
                end_ms = last / 3600000 * 3600000 + 3600000;
            }
        }
        sqlite3_close(db);
    }
    printf("-- store %s: %s\n", path, reuse ? "reusing the generated year" : "generating a year");
    if (!reuse)
        generate(path, target, end_ms);
    sqlite3 *db = NULL;
    sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    printf("   %lld messages, %lld events, %lld facts, %lld outbox rows; %.0f MB on disk\n",
           (long long)count_rows(db, "SELECT count(*) FROM messages"),
           (long long)count_rows(db, "SELECT count(*) FROM events"),
           (long long)count_rows(db, "SELECT count(*) FROM facts"),
           (long long)count_rows(db, "SELECT count(*) FROM outbox"),
           stat(path, &sb) == 0 ? (double)sb.st_size / 1048576.0 : 0.0);
    sqlite3_close(db);

    char qs[160];
    printf("-- load average %.2f (other work on the machine inflates wall times; cpu is this "
           "thread's)\n",
           loadavg());
    printf("-- wh_stats_query (a fresh read-only connection per run; %d timed runs after the "
           "first)\n",
           RUNS);
    snprintf(qs, sizeof(qs), "since=%lld&until=%lld", (long long)(end_ms - 30 * DAY_MS),
             (long long)end_ms);
    time_query(path, "30 days, all instances", qs, end_ms, 200);
    snprintf(qs, sizeof(qs), "since=%lld&until=%lld&instance=main",
             (long long)(end_ms - 30 * DAY_MS), (long long)end_ms);
    time_query(path, "30 days, instance main", qs, end_ms, 200);
    snprintf(qs, sizeof(qs), "since=%lld&until=%lld&tz=Europe/Madrid",
             (long long)(end_ms - 30 * DAY_MS), (long long)end_ms);
    time_query(path, "30 days, tz Europe/Madrid", qs, end_ms, 200);
    snprintf(qs, sizeof(qs), "since=%lld&until=%lld", (long long)(end_ms - 7 * DAY_MS),
             (long long)end_ms);
    time_query(path, "7 days", qs, end_ms, 0);
    snprintf(qs, sizeof(qs), "since=%lld&until=%lld", (long long)(end_ms - 365 * DAY_MS),
             (long long)end_ms);
    time_query(path, "365 days", qs, end_ms, 0);

    /* wh_cli_stats reads <data-dir>/wahook.db and ranges relative to the real clock. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash != NULL ? slash + 1 : dir;
    if (strcmp(base, "wahook.db") == 0) {
        if (slash != NULL)
            *slash = '\0';
        else
            snprintf(dir, sizeof(dir), ".");
        printf("-- wahook stats over the same 30 days (wh_cli_stats, output to /dev/null)\n");
        time_cli(dir, "table", 0, end_ms, 200);
        time_cli(dir, "--json", 1, end_ms, 200);
    } else {
        printf("-- wahook stats: skipped (the store file must be named wahook.db)\n");
    }
    printf("-- load average %.2f at the end\n", loadavg());
    return 0;
}
