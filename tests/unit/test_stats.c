/* Unit tests for the analytics: every figure of /api/stats on a small generated store with
 * answers worked out by hand (all instances, one instance, a time zone), an empty store, the
 * writer's own rows, argument parsing, percentiles, and EXPLAIN QUERY PLAN of every stats query
 * (each must search an index on the big tables, never scan them). */
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/outcome.h"
#include "wahook/stats.h"
#include "wahook/store.h"
#include "wh_test.h"

#define T0 INT64_C(1741564800000) /* 2025-03-10T00:00:00Z, a Monday; CET (UTC+1) in Madrid */
#define M_ INT64_C(60000)
#define H_ INT64_C(3600000)
#define D_ INT64_C(86400000)

static char tmpdir[64];
static int dbseq;

static void db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/s%d.db", tmpdir, ++dbseq);
}

/* A migrated store (the real migrations, then the stats indexes) and a writable connection. */
static sqlite3 *make_store(const char *path)
{
    wh_store_opts_t o = {.path = path};
    wh_store_t *s = NULL;
    char err[256] = "";
    int rc = wh_store_open(&s, &o, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "store: %s\n", err);
    CHECK_INT(rc, 0);
    wh_store_close(s);
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, WH_STATS_MIGRATION, NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void exec_fmt(sqlite3 *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    char *e = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &e);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", sql, e);
    CHECK_INT(rc, SQLITE_OK);
    sqlite3_free(e);
    sqlite3_free(sql);
}

static void msg(sqlite3 *db, const char *inst, const char *wa_id, const char *contact,
                const char *dir, const char *origin, const char *type, const char *status,
                int64_t at)
{
    exec_fmt(db,
             "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, type, status,"
             " ts, created_at, updated_at) VALUES(%Q, %Q, %Q, %Q, %Q, %Q, %Q, %lld, %lld, %lld)",
             inst, wa_id, contact, dir, origin, type, status, (long long)(at / 1000),
             (long long)at, (long long)at);
}

static void fact(sqlite3 *db, const char *inst, const char *contact, const char *kind,
                 const char *fields, int64_t at)
{
    exec_fmt(db,
             "INSERT INTO facts(instance, contact_key, kind, fields, created_at)"
             " VALUES(%Q, %Q, %Q, %Q, %lld)",
             inst, contact, kind, fields, (long long)at);
}

static int evseq;
/* A pending event with attempts waits for its retry (next_attempt_at set, as the writer does). */
static void event(sqlite3 *db, const char *inst, const char *name, const char *status,
                  int attempts, int64_t at)
{
    int retrying = strcmp(status, "pending") == 0 && attempts > 0;
    exec_fmt(db,
             "INSERT INTO events(received_at, instance, event, dedup_id, body, status, attempts,"
             " next_attempt_at) VALUES(%lld, %Q, %Q, 'd%d', '{}', %Q, %d, %lld)",
             (long long)at, inst, name, ++evseq, status, attempts,
             (long long)(retrying ? at + 60000 : 0));
}

static void outbox(sqlite3 *db, const char *inst, const char *contact, const char *target,
                   const char *status, int64_t at)
{
    exec_fmt(db,
             "INSERT INTO outbox(instance, contact_key, target, kind, payload, status,"
             " created_at, updated_at) VALUES(%Q, %Q, %Q, 'k', '{}', %Q, %lld, %lld)",
             inst, contact, target, status, (long long)at, (long long)at);
}

/* The dataset whose figures are worked out in the checks below. Instance a has contacts c1-c4
 * and a group message; instance b has c9. Range [T0, T0+2d) leaves out mx/my and the old dead
 * letters. */
static void fill(sqlite3 *db)
{
    exec_fmt(db, "BEGIN");
    /* messages */
    msg(db, "a", "m1", "c1", "in", "contact", "conversation", NULL, T0 + 1 * H_);
    msg(db, "a", "m2", "c1", "in", "contact", "conversation", NULL, T0 + 1 * H_ + 10 * M_);
    msg(db, "a", "m3", "c2", "in", "contact", "imageMessage", NULL, T0 + 2 * H_);
    msg(db, "a", "m4", "c3", "in", "contact", "conversation", NULL, T0 + D_ + 5 * H_);
    msg(db, "a", "m5", "c1", "in", "contact", "conversation", NULL, T0 + D_ + 6 * H_);
    msg(db, "a", "mx", "c1", "in", "contact", "conversation", NULL, T0 - 1 * H_);
    msg(db, "a", "my", "c2", "in", "contact", "conversation", NULL, T0 + 2 * D_);
    msg(db, "a", "g1", NULL, "in", "contact", "conversation", NULL, T0 + 3 * H_);
    msg(db, "a", "o1", "c1", "out", "wahook", "conversation", "READ", T0 + 1 * H_ + M_);
    msg(db, "a", "o2", "c2", "out", "wahook", "conversation", "DELIVERY_ACK", T0 + 2 * H_ + M_);
    msg(db, "a", "o3", "c3", "out", "phone", "conversation", "SERVER_ACK",
        T0 + D_ + 5 * H_ + 30 * M_);
    msg(db, "a", "o4", "c1", "out", "wahook", "conversation", "ERROR", T0 + D_ + 6 * H_ + M_);
    msg(db, "a", "o6", "c4", "out", "wahook", "conversation", "PENDING", T0 + 4 * H_);
    msg(db, "b", "m6", "c9", "in", "contact", "conversation", NULL, T0 + 3 * H_);
    msg(db, "b", "o5", "c9", "out", "api", "audioMessage", "PLAYED", T0 + 3 * H_ + M_);
    exec_fmt(db, "INSERT INTO contacts(instance, contact_key, push_name) VALUES('a', 'c1', 'Ana')");
    /* facts */
    fact(db, "a", "c1", "bot_reply", "{\"in_reply_to\":\"m1\",\"latency_ms\":1000}",
         T0 + 1 * H_ + M_);
    fact(db, "a", "c1", "bot_reply", "{\"in_reply_to\":\"m2\",\"latency_ms\":3000}",
         T0 + 1 * H_ + 11 * M_);
    fact(db, "a", "c2", "bot_reply", "{\"in_reply_to\":\"m3\",\"latency_ms\":2000}",
         T0 + 2 * H_ + M_);
    fact(db, "a", "c1", "bot_reply", "{\"in_reply_to\":\"m5\",\"latency_ms\":5000}",
         T0 + D_ + 6 * H_ + M_);
    fact(db, "b", "c9", "bot_reply", "{\"in_reply_to\":\"m6\",\"latency_ms\":400}",
         T0 + 3 * H_ + M_);
    fact(db, "a", "c3", "bot_reply", "{\"in_reply_to\":\"m4\"}", T0 + D_ + 5 * H_ + 2 * M_);
    /* names a message of instance a from instance b: must not count as a reply to g1 */
    fact(db, "b", "c9", "bot_reply", "{\"in_reply_to\":\"g1\"}", T0 + 3 * H_ + 30 * M_);
    fact(db, "a", "c1", "bot_reply", "{\"in_reply_to\":\"mx\",\"latency_ms\":99999}",
         T0 - 1 * H_ + M_);
    fact(db, "a", "c3", "handoff", "{\"reason\":\"asked_human\"}", T0 + D_ + 5 * H_ + 3 * M_);
    fact(db, "a", "c1", "handoff", "{\"reason\":\"angry\"}", T0 + D_ + 6 * H_ + 2 * M_);
    fact(db, "a", "c1", "handoff", "{\"reason\":\"angry\"}", T0 + D_ + 7 * H_);
    fact(db, "a", "c1", "csat", "{\"score\":5}", T0 + 5 * H_);
    fact(db, "a", "c2", "csat", "{\"score\":4}", T0 + 6 * H_);
    fact(db, "a", "c3", "csat", "{\"score\":2}", T0 + D_ + 8 * H_);
    fact(db, "b", "c9", "csat", "{\"score\":5}", T0 + 4 * H_);
    fact(db, "a", "c1", "lead", "{\"score\":10,\"stage\":\"new\"}", T0 + 2 * H_);
    fact(db, "a", "c2", "lead", "{\"score\":20,\"stage\":\"new\"}", T0 + 3 * H_);
    fact(db, "a", "c3", "lead", "{\"stage\":\"won\"}", T0 + D_ + 9 * H_);
    fact(db, "a", "c1", "custom", "{\"name\":\"x\",\"value\":1}", T0 + 7 * H_);
    fact(db, "a", "c2", "timer_dead", "{\"name\":\"t\",\"error\":\"boom\"}", T0 + D_ + 9 * H_);
    /* events */
    event(db, "a", "messages.upsert", "done", 1, T0 + 1 * H_);
    event(db, "a", "messages.upsert", "done", 1, T0 + 1 * H_ + 10 * M_);
    event(db, "a", "messages.upsert", "done", 1, T0 + 2 * H_);
    event(db, "a", "messages.upsert", "done", 1, T0 + D_ + 5 * H_);
    event(db, "a", "messages.upsert", "done", 1, T0 + D_ + 6 * H_);
    event(db, "a", "messages.upsert", "dead", 5, T0 + 2 * H_ + 5 * M_);
    event(db, "a", "messages.update", "done", 1, T0 + 1 * H_ + 2 * M_);
    event(db, "a", "messages.update", "done", 1, T0 + 1 * H_ + 2 * M_);
    event(db, "a", "send.message", "pending", 2, T0 + 4 * H_);
    event(db, "a", "connection.update", "pending", 0, T0 + 4 * H_ + M_);
    event(db, "b", "messages.upsert", "done", 1, T0 + 3 * H_);
    event(db, "a", "messages.upsert", "dead", 5, T0 - 2 * D_);
    event(db, "b", "call", "dead", 5, T0 + D_ + 1 * H_);
    /* outbox */
    outbox(db, "a", "c1", "evolution", "done", T0 + 1 * H_ + M_);
    outbox(db, "a", "c2", "evolution", "done", T0 + 2 * H_ + M_);
    outbox(db, "a", "c1", "evolution", "dead", T0 + D_ + 6 * H_ + M_);
    outbox(db, "a", "c1", "crm", "dead", T0 + 5 * H_);
    outbox(db, "a", "c2", "crm", "pending", T0 + 6 * H_);
    outbox(db, "a", "", "alert", "done", T0 + D_);
    outbox(db, "b", "c9", "evolution", "inflight", T0 + 3 * H_ + M_);
    outbox(db, "a", "c1", "evolution", "dead", T0 - 3 * D_);
    exec_fmt(db, "COMMIT");
}

/* ---- JSON accessors ----------------------------------------------------------------------- */

/* The value at a dotted path; numeric parts index arrays. */
static json_t *at(json_t *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part != NULL && cur != NULL;
         part = strtok_r(NULL, ".", &save)) {
        if (json_is_array(cur))
            cur = json_array_get(cur, (size_t)atoi(part));
        else
            cur = json_object_get(cur, part);
    }
    if (cur == NULL)
        fprintf(stderr, "no %s\n", path);
    return cur;
}

static long long I(json_t *o, const char *path)
{
    json_t *v = at(o, path);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -999999;
}

static double R(json_t *o, const char *path)
{
    json_t *v = at(o, path);
    return json_is_number(v) ? json_number_value(v) : -999999.0;
}

static const char *S(json_t *o, const char *path)
{
    return json_string_value(at(o, path));
}

#define CHECK_REAL(a, b) CHECK(fabs((a) - (b)) < 1e-9)

static json_t *query(const char *path, const char *qs)
{
    wh_stats_params_t p;
    char err[256] = "";
    int rc = wh_stats_params_from_query(&p, qs, strlen(qs), T0 + 100 * D_, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "params %s: %s\n", qs, err);
    CHECK_INT(rc, 0);
    json_t *o = wh_stats_query(path, &p, err, sizeof(err));
    if (o == NULL)
        fprintf(stderr, "query %s: %s\n", qs, err);
    CHECK(o != NULL);
    return o;
}

/* ---- the known answers -------------------------------------------------------------------- */

static void test_all_instances(const char *path)
{
    json_t *o = query(path, "since=1741564800000&until=2025-03-12T00:00:00Z&top=2");
    if (o == NULL)
        return;
    CHECK_INT(I(o, "range.since"), T0);
    CHECK_INT(I(o, "range.until"), T0 + 2 * D_);
    CHECK(json_is_null(at(o, "range.instance")));
    CHECK_STR(S(o, "range.tz"), "UTC");
    CHECK_INT(I(o, "range.days"), 2);

    CHECK_INT(I(o, "messages.total"), 13);
    CHECK_INT(I(o, "messages.in"), 7);
    CHECK_INT(I(o, "messages.out"), 6);
    CHECK_INT(json_array_size(at(o, "messages.by_type")), 3);
    CHECK_STR(S(o, "messages.by_type.0.type"), "conversation");
    CHECK_INT(I(o, "messages.by_type.0.total"), 11);
    CHECK_INT(I(o, "messages.by_type.0.in"), 6);
    CHECK_INT(I(o, "messages.by_type.0.out"), 5);
    CHECK_STR(S(o, "messages.by_type.1.type"), "audioMessage");
    CHECK_INT(I(o, "messages.by_type.1.in"), 0);
    CHECK_INT(I(o, "messages.by_type.1.out"), 1);
    CHECK_STR(S(o, "messages.by_type.2.type"), "imageMessage");
    CHECK_INT(I(o, "messages.by_type.2.in"), 1);
    CHECK_INT(json_object_size(at(o, "messages.outbound_by_origin")), 3);
    CHECK_INT(I(o, "messages.outbound_by_origin.wahook"), 4);
    CHECK_INT(I(o, "messages.outbound_by_origin.phone"), 1);
    CHECK_INT(I(o, "messages.outbound_by_origin.api"), 1);
    CHECK_INT(I(o, "messages.contacts"), 5);
    CHECK_INT(I(o, "messages.contacts_inbound"), 4);
    CHECK_INT(I(o, "messages.conversations"), 5);
    CHECK_INT(json_array_size(at(o, "messages.top_contacts")), 2);
    CHECK_STR(S(o, "messages.top_contacts.0.instance"), "a");
    CHECK_STR(S(o, "messages.top_contacts.0.contact"), "c1");
    CHECK_STR(S(o, "messages.top_contacts.0.name"), "Ana");
    CHECK_INT(I(o, "messages.top_contacts.0.in"), 3);
    CHECK_INT(I(o, "messages.top_contacts.0.out"), 2);
    CHECK_INT(I(o, "messages.top_contacts.0.total"), 5);
    CHECK_STR(S(o, "messages.top_contacts.1.contact"), "c2"); /* ties: smallest key first */
    CHECK(json_is_null(at(o, "messages.top_contacts.1.name")));
    CHECK_INT(I(o, "messages.top_contacts.1.total"), 2);

    CHECK_INT(I(o, "events.total"), 12);
    CHECK_INT(json_array_size(at(o, "events.by_type")), 5);
    CHECK_STR(S(o, "events.by_type.0.event"), "messages.upsert");
    CHECK_INT(I(o, "events.by_type.0.total"), 7);
    CHECK_INT(I(o, "events.by_type.0.done"), 6);
    CHECK_INT(I(o, "events.by_type.0.pending"), 0);
    CHECK_INT(I(o, "events.by_type.0.dead"), 1);
    CHECK_STR(S(o, "events.by_type.1.event"), "messages.update");
    CHECK_INT(I(o, "events.by_type.1.done"), 2);
    CHECK_STR(S(o, "events.by_type.2.event"), "call");
    CHECK_INT(I(o, "events.by_type.2.dead"), 1);
    CHECK_STR(S(o, "events.by_type.3.event"), "connection.update");
    CHECK_INT(I(o, "events.by_type.3.pending"), 1);
    CHECK_STR(S(o, "events.by_type.4.event"), "send.message");
    CHECK_INT(I(o, "events.by_type.4.pending"), 1);

    CHECK_INT(I(o, "bot.inbound"), 7);
    CHECK_INT(I(o, "bot.replied"), 6);
    CHECK_REAL(R(o, "bot.response_rate"), 0.8571);
    CHECK_INT(I(o, "bot.replies"), 7);
    CHECK_INT(I(o, "bot.conversations"), 5);
    CHECK_INT(I(o, "bot.handoffs"), 3);
    CHECK_INT(I(o, "bot.handoff_conversations"), 2);
    CHECK_REAL(R(o, "bot.handoff_rate"), 0.4);
    CHECK_INT(json_array_size(at(o, "bot.handoff_reasons")), 2);
    CHECK_STR(S(o, "bot.handoff_reasons.0.reason"), "angry");
    CHECK_INT(I(o, "bot.handoff_reasons.0.count"), 2);
    CHECK_STR(S(o, "bot.handoff_reasons.1.reason"), "asked_human");
    CHECK_INT(I(o, "bot.handoff_reasons.1.count"), 1);
    CHECK_INT(I(o, "bot.first_response.conversations"), 5);
    CHECK_INT(I(o, "bot.first_response.measured"), 4);
    CHECK_INT(I(o, "bot.first_response.median_ms"), 1000);
    CHECK_INT(I(o, "bot.first_response.p95_ms"), 5000);
    CHECK_REAL(R(o, "bot.first_response.avg_ms"), 2100.0);
    CHECK(json_is_false(at(o, "bot.first_response.sampled")));

    CHECK_INT(I(o, "delivery.outbound"), 6);
    CHECK_INT(I(o, "delivery.sent"), 4);
    CHECK_INT(I(o, "delivery.delivered"), 3);
    CHECK_INT(I(o, "delivery.read"), 2);
    CHECK_INT(I(o, "delivery.failed"), 1);
    CHECK_REAL(R(o, "delivery.delivery_rate"), 0.5);
    CHECK_REAL(R(o, "delivery.read_rate"), 0.3333);

    CHECK_INT(I(o, "errors.processing_dead"), 2);
    CHECK_INT(I(o, "errors.processing_retrying"), 1);
    CHECK_INT(I(o, "errors.timers_dead"), 1);
    CHECK_INT(json_object_size(at(o, "errors.delivery_dead")), 2);
    CHECK_INT(I(o, "errors.delivery_dead.evolution"), 1);
    CHECK_INT(I(o, "errors.delivery_dead.crm"), 1);
    CHECK_INT(I(o, "errors.delivery_dead_total"), 2);

    CHECK_INT(json_array_size(at(o, "outbox.by_target")), 3);
    CHECK_STR(S(o, "outbox.by_target.0.target"), "evolution");
    CHECK_INT(I(o, "outbox.by_target.0.total"), 4);
    CHECK_INT(I(o, "outbox.by_target.0.pending"), 0);
    CHECK_INT(I(o, "outbox.by_target.0.inflight"), 1);
    CHECK_INT(I(o, "outbox.by_target.0.done"), 2);
    CHECK_INT(I(o, "outbox.by_target.0.dead"), 1);
    CHECK_STR(S(o, "outbox.by_target.1.target"), "crm");
    CHECK_INT(I(o, "outbox.by_target.1.pending"), 1);
    CHECK_INT(I(o, "outbox.by_target.1.dead"), 1);
    CHECK_STR(S(o, "outbox.by_target.2.target"), "alert");
    CHECK_INT(I(o, "outbox.by_target.2.done"), 1);

    CHECK_INT(I(o, "dead_letters.events"), 3); /* all time, not only the range */
    CHECK_INT(I(o, "dead_letters.outbox.evolution"), 2);
    CHECK_INT(I(o, "dead_letters.outbox.crm"), 1);
    CHECK_INT(I(o, "dead_letters.total"), 6);

    CHECK_INT(I(o, "csat.answers"), 4);
    CHECK_REAL(R(o, "csat.average"), 4.0);
    CHECK_INT(json_array_size(at(o, "csat.distribution")), 3);
    CHECK_INT(I(o, "csat.distribution.0.score"), 2);
    CHECK_INT(I(o, "csat.distribution.0.count"), 1);
    CHECK_INT(I(o, "csat.distribution.1.score"), 4);
    CHECK_INT(I(o, "csat.distribution.2.score"), 5);
    CHECK_INT(I(o, "csat.distribution.2.count"), 2);

    CHECK_INT(I(o, "leads.count"), 3);
    CHECK_STR(S(o, "leads.by_stage.0.stage"), "new");
    CHECK_INT(I(o, "leads.by_stage.0.count"), 2);
    CHECK_REAL(R(o, "leads.by_stage.0.avg_score"), 15.0);
    CHECK_STR(S(o, "leads.by_stage.1.stage"), "won");
    CHECK(json_is_null(at(o, "leads.by_stage.1.avg_score")));

    CHECK_INT(I(o, "facts.bot_reply"), 7);
    CHECK_INT(I(o, "facts.handoff"), 3);
    CHECK_INT(I(o, "facts.lead"), 3);
    CHECK_INT(I(o, "facts.csat"), 4);
    CHECK_INT(I(o, "facts.custom"), 1);
    CHECK_INT(I(o, "facts.timer_dead"), 1);

    /* daily series */
    CHECK_INT(json_array_size(at(o, "series.day")), 2);
    CHECK_STR(S(o, "series.day.0.date"), "2025-03-10");
    CHECK_INT(I(o, "series.day.0.in"), 5);
    CHECK_INT(I(o, "series.day.0.out"), 4);
    CHECK_INT(I(o, "series.day.0.events"), 9);
    CHECK_INT(I(o, "series.day.0.errors"), 2);
    CHECK_INT(I(o, "series.day.0.bot_replies"), 5);
    CHECK_INT(I(o, "series.day.0.handoffs"), 0);
    CHECK_STR(S(o, "series.day.1.date"), "2025-03-11");
    CHECK_INT(I(o, "series.day.1.in"), 2);
    CHECK_INT(I(o, "series.day.1.out"), 2);
    CHECK_INT(I(o, "series.day.1.events"), 3);
    CHECK_INT(I(o, "series.day.1.errors"), 3);
    CHECK_INT(I(o, "series.day.1.bot_replies"), 2);
    CHECK_INT(I(o, "series.day.1.handoffs"), 3);
    /* hourly series and hour of day */
    CHECK_INT(json_array_size(at(o, "series.hour")), 48);
    CHECK_INT(I(o, "series.hour.1.start"), T0 + H_);
    CHECK_INT(I(o, "series.hour.1.in"), 2);
    CHECK_INT(I(o, "series.hour.1.out"), 1);
    CHECK(json_object_get(at(o, "series.hour.1"), "events") == NULL); /* daily only */
    CHECK_INT(I(o, "series.hour.1.bot_replies"), 2);
    CHECK_INT(I(o, "series.hour.25.errors"), 1);
    CHECK_INT(json_array_size(at(o, "series.hour_of_day")), 24);
    CHECK_INT(I(o, "series.hour_of_day.1.hour"), 1);
    CHECK_INT(I(o, "series.hour_of_day.1.in"), 2);
    CHECK_INT(I(o, "series.hour_of_day.1.errors"), 1);
    CHECK_INT(I(o, "series.hour_of_day.6.in"), 1); /* m5 */
    CHECK_INT(I(o, "series.hour_of_day.6.out"), 1); /* o4 */
    long long sum_in = 0;
    for (int h = 0; h < 24; h++) {
        char p[48];
        snprintf(p, sizeof(p), "series.hour_of_day.%d.in", h);
        sum_in += I(o, p);
    }
    CHECK_INT(sum_in, 7);
    CHECK(I(o, "took_ms") >= 0);
    json_decref(o);
}

static void test_one_instance(const char *path)
{
    json_t *o = query(path, "since=2025-03-10&until=2025-03-12&instance=a");
    if (o == NULL)
        return;
    CHECK_STR(S(o, "range.instance"), "a");
    CHECK_INT(I(o, "messages.total"), 11);
    CHECK_INT(I(o, "messages.in"), 6);
    CHECK_INT(I(o, "messages.out"), 5);
    CHECK_INT(I(o, "messages.contacts"), 4);
    CHECK_INT(I(o, "messages.contacts_inbound"), 3);
    CHECK_INT(I(o, "messages.conversations"), 4);
    CHECK_INT(json_array_size(at(o, "messages.top_contacts")), 4); /* top 10 by default */
    CHECK_STR(S(o, "messages.top_contacts.3.contact"), "c4");
    CHECK_INT(I(o, "messages.top_contacts.3.out"), 1);
    CHECK(json_object_get(at(o, "messages.outbound_by_origin"), "api") == NULL);
    CHECK_INT(I(o, "messages.outbound_by_origin.wahook"), 4);
    CHECK_INT(I(o, "bot.inbound"), 6);
    CHECK_INT(I(o, "bot.replied"), 5);
    CHECK_REAL(R(o, "bot.response_rate"), 0.8333);
    CHECK_INT(I(o, "bot.replies"), 5);
    CHECK_REAL(R(o, "bot.handoff_rate"), 0.5);
    CHECK_INT(I(o, "bot.first_response.conversations"), 4);
    CHECK_INT(I(o, "bot.first_response.measured"), 3);
    CHECK_INT(I(o, "bot.first_response.median_ms"), 2000);
    CHECK_INT(I(o, "bot.first_response.p95_ms"), 5000);
    CHECK_REAL(R(o, "bot.first_response.avg_ms"), 2666.7);
    CHECK_INT(I(o, "delivery.outbound"), 5);
    CHECK_INT(I(o, "delivery.sent"), 3);
    CHECK_INT(I(o, "delivery.delivered"), 2);
    CHECK_INT(I(o, "delivery.read"), 1);
    CHECK_INT(I(o, "delivery.failed"), 1);
    CHECK_REAL(R(o, "delivery.delivery_rate"), 0.4);
    CHECK_REAL(R(o, "delivery.read_rate"), 0.2);
    CHECK_INT(I(o, "events.total"), 10);
    CHECK_INT(I(o, "errors.processing_dead"), 1);
    CHECK_INT(I(o, "errors.processing_retrying"), 1);
    CHECK_INT(I(o, "dead_letters.events"), 2);
    CHECK_INT(I(o, "dead_letters.outbox.evolution"), 2);
    CHECK_INT(I(o, "dead_letters.total"), 5);
    CHECK_INT(json_array_size(at(o, "outbox.by_target")), 3);
    CHECK_INT(I(o, "outbox.by_target.0.total"), 3);
    CHECK_INT(I(o, "outbox.by_target.0.inflight"), 0);
    CHECK_INT(I(o, "csat.answers"), 3);
    CHECK_REAL(R(o, "csat.average"), 3.67);
    CHECK_INT(I(o, "facts.bot_reply"), 5);
    json_decref(o);

    o = query(path, "since=2025-03-10&until=2025-03-12&instance=nobody");
    if (o != NULL) {
        CHECK_INT(I(o, "messages.total"), 0);
        CHECK(json_is_null(at(o, "bot.response_rate")));
        CHECK(json_is_null(at(o, "bot.first_response.median_ms")));
        CHECK_INT(I(o, "dead_letters.total"), 0);
        json_decref(o);
    }
}

static void test_time_zone(const char *path)
{
    /* Madrid is UTC+1 on these days: its 2025-03-10 starts at T0 - 1h, so mx (T0 - 1h) is in. */
    json_t *o = query(path, "since=2025-03-10&until=2025-03-12&instance=a&tz=Europe%2FMadrid");
    if (o == NULL)
        return;
    CHECK_INT(I(o, "range.since"), T0 - H_);
    CHECK_INT(I(o, "range.until"), T0 + 2 * D_ - H_);
    CHECK_STR(S(o, "range.tz"), "Europe/Madrid");
    CHECK_INT(I(o, "messages.in"), 7);
    CHECK_INT(json_array_size(at(o, "series.day")), 2);
    CHECK_STR(S(o, "series.day.0.date"), "2025-03-10");
    CHECK_INT(I(o, "series.day.0.in"), 5); /* mx m1 m2 m3 g1 */
    CHECK_INT(I(o, "series.day.1.in"), 2);
    CHECK_INT(I(o, "series.hour_of_day.0.in"), 1); /* mx at local 00:00 */
    CHECK_INT(I(o, "series.hour_of_day.2.in"), 2); /* m1 m2 at local 02:xx */
    CHECK_INT(I(o, "series.hour_of_day.1.in"), 0);
    CHECK_INT(I(o, "series.hour.0.start"), T0 - H_);
    CHECK_INT(I(o, "series.hour.0.in"), 1);
    /* mx and m1/m2 are one local day of c1: still 4 conversations; f8 answers mx */
    CHECK_INT(I(o, "messages.conversations"), 4);
    CHECK_INT(I(o, "bot.replied"), 6);
    CHECK_INT(I(o, "bot.first_response.measured"), 3);
    CHECK_INT(I(o, "bot.first_response.p95_ms"), 99999);
    json_decref(o);

    /* a range over 31 days has no hourly series */
    o = query(path, "since=2025-01-01&until=2025-03-12");
    if (o != NULL) {
        CHECK(json_is_null(at(o, "series.hour")));
        CHECK_INT(json_array_size(at(o, "series.day")), 70);
        CHECK_STR(S(o, "series.day.68.date"), "2025-03-10");
        CHECK_INT(I(o, "series.day.68.in"), 5);
        CHECK_INT(I(o, "series.day.67.in"), 1); /* mx */
        json_decref(o);
    }
}

static void test_empty(void)
{
    char path[160];
    db_path(path, sizeof(path));
    sqlite3 *db = make_store(path);
    sqlite3_close(db);
    json_t *o = query(path, "");
    if (o == NULL)
        return;
    CHECK_INT(I(o, "range.until") - I(o, "range.since"), 30 * D_);
    CHECK_INT(I(o, "range.until"), T0 + 100 * D_);
    CHECK_INT(I(o, "messages.total"), 0);
    CHECK_INT(json_array_size(at(o, "messages.top_contacts")), 0);
    CHECK(json_is_null(at(o, "bot.response_rate")));
    CHECK(json_is_null(at(o, "bot.handoff_rate")));
    CHECK(json_is_null(at(o, "delivery.delivery_rate")));
    CHECK(json_is_null(at(o, "csat.average")));
    CHECK_INT(json_array_size(at(o, "series.day")), 30);
    CHECK_INT(json_array_size(at(o, "series.hour")), 720);
    json_decref(o);

    char err[256] = "";
    wh_stats_params_t p;
    wh_stats_params_init(&p);
    CHECK_INT(wh_stats_params_resolve(&p, T0, err, sizeof(err)), 0);
    CHECK(wh_stats_query("/nonexistent/dir/x.db", &p, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "no store");
    wh_stats_params_init(&p); /* not resolved */
    CHECK(wh_stats_query(path, &p, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "since must be before until");
    /* a store without migration 4 is named as such */
    char old[160];
    wh_store_t *s = NULL;
    db_path(old, sizeof(old));
    wh_store_opts_t so = {.path = old};
    CHECK_INT(wh_store_open(&s, &so, err, sizeof(err)), 0);
    wh_store_close(s);
    CHECK_INT(wh_stats_params_resolve(&p, T0, err, sizeof(err)), 0);
    sqlite3 *db2 = NULL; /* without stats_replies, whether or not the store made it */
    CHECK_INT(sqlite3_open(old, &db2), SQLITE_OK);
    sqlite3_exec(db2, "DROP TABLE IF EXISTS stats_replies", NULL, NULL, NULL);
    sqlite3_close(db2);
    CHECK(wh_stats_query(old, &p, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "migration 4");
}

/* First-response percentiles over many conversations whose latencies arrive shuffled: the
 * selection must find what sorting would. */
static void test_many_latencies(void)
{
    char path[160];
    db_path(path, sizeof(path));
    sqlite3 *db = make_store(path);
    exec_fmt(db, "BEGIN");
    unsigned x = 12345;
    int used[1001] = {0};
    for (int i = 0; i < 1001; i++) {
        /* a permutation of 1..1001 by a full-period LCG walk */
        int v;
        do {
            x = x * 1103515245u + 12345u;
            v = (int)((x >> 8) % 1001);
        } while (used[v]);
        used[v] = 1;
        char contact[16], fields[64];
        snprintf(contact, sizeof(contact), "k%d", i);
        snprintf(fields, sizeof(fields), "{\"in_reply_to\":\"w%d\",\"latency_ms\":%d}", i, v + 1);
        fact(db, "a", contact, "bot_reply", fields, T0 + i * M_);
    }
    exec_fmt(db, "COMMIT");
    sqlite3_close(db);
    json_t *o = query(path, "since=2025-03-10&until=2025-03-11");
    if (o == NULL)
        return;
    CHECK_INT(I(o, "bot.first_response.conversations"), 1001);
    CHECK_INT(I(o, "bot.first_response.measured"), 1001);
    CHECK_INT(I(o, "bot.first_response.median_ms"), 501);
    CHECK_INT(I(o, "bot.first_response.p95_ms"), 951);
    CHECK_REAL(R(o, "bot.first_response.avg_ms"), 501.0);
    CHECK_INT(I(o, "bot.replies"), 1001);
    json_decref(o);
}

/* ---- the writer's own rows ---------------------------------------------------------------- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, status;
    int64_t id;
} waiter_t;

static void on_ingest(wh_ingest_t *job, int status, int64_t id, int duplicate)
{
    waiter_t *w = job->user;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->id = id;
    w->done = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void on_commit(wh_work_commit_t *c, int status)
{
    waiter_t *w = c->user;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->done = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int wait_for(waiter_t *w)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->done && rc == 0)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &until);
    int ok = w->done && w->status == 0;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static void test_writer_rows(void)
{
    char path[160];
    db_path(path, sizeof(path));
    sqlite3 *db = make_store(path);
    sqlite3_close(db);
    wh_store_opts_t so = {.path = path};
    wh_store_t *s = NULL;
    char err[256] = "";
    CHECK_INT(wh_store_open(&s, &so, err, sizeof(err)), 0);
    if (s == NULL)
        return;
    int64_t now = wh_now_ms();
    waiter_t w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    wh_ingest_t j = {.instance = "inst", .event = "messages.upsert", .dedup_id = "W1",
                     .phone = "34600111222", .body = "{}", .body_len = 2, .received_at = now,
                     .cb = on_ingest, .user = &w};
    CHECK_INT(wh_store_submit(s, &j), 0);
    CHECK(wait_for(&w));
    wh_work_item_t it = {.id = w.id, .received_at = now, .instance = "inst",
                         .event = "messages.upsert", .contact_key = "34600111222"};
    wh_outcome_t out;
    CHECK_INT(wh_outcome_init(&out, NULL), 0);
    CHECK_INT(wh_outcome_add_fact(&out, "bot_reply",
                                  json_pack("{s:s,s:i}", "in_reply_to", "W1", "latency_ms", 700),
                                  err, sizeof(err)),
              0);
    json_t *m = json_pack("{s:s,s:b,s:s,s:I,s:s}", "id", "W1", "from_me", 0, "type",
                          "conversation", "timestamp", (json_int_t)(now / 1000), "text", "hola");
    waiter_t w2 = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_DONE, .msg = m, .origin = "contact",
                          .outcome = &out, .script_version = "v1", .cb = on_commit, .user = &w2};
    CHECK_INT(wh_store_commit_work(s, &c), 0);
    CHECK(wait_for(&w2));
    wh_store_close(s);
    json_decref(m);
    wh_outcome_free(&out);

    wh_stats_params_t p;
    wh_stats_params_init(&p);
    CHECK_INT(wh_stats_params_resolve(&p, wh_now_ms() + 60000, err, sizeof(err)), 0);
    json_t *o = wh_stats_query(path, &p, err, sizeof(err));
    CHECK(o != NULL);
    if (o != NULL) {
        CHECK_INT(I(o, "messages.in"), 1);
        CHECK_STR(S(o, "messages.by_type.0.type"), "conversation");
        CHECK_INT(I(o, "events.total"), 1);
        CHECK_INT(I(o, "events.by_type.0.done"), 1);
        CHECK_INT(I(o, "bot.replied"), 1);
        CHECK_REAL(R(o, "bot.response_rate"), 1.0);
        CHECK_INT(I(o, "bot.first_response.median_ms"), 700);
        CHECK_STR(S(o, "messages.top_contacts.0.contact"), "34600111222");
        json_decref(o);
    }
}

/* ---- migration 4's triggers and the CLI ------------------------------------------------------ */

static int64_t q_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "q_int %s: %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return v;
}

/* stats_replies follows bot_reply facts: insert, re-key (LID merges), delete (retention), a
 * malformed fields text never fails the insert, other kinds stay out; the migration backfills
 * facts written before it. */
static void test_reply_triggers(void)
{
    char path[160];
    db_path(path, sizeof(path));
    wh_store_opts_t o = {.path = path};
    wh_store_t *s = NULL;
    char err[256] = "";
    CHECK_INT(wh_store_open(&s, &o, err, sizeof(err)), 0);
    wh_store_close(s);
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    /* written before migration 4 */
    fact(db, "a", "old", "bot_reply", "{\"in_reply_to\":\"w0\",\"latency_ms\":5}", T0);
    CHECK_INT(sqlite3_exec(db, WH_STATS_MIGRATION, NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, WH_STATS_MIGRATION, NULL, NULL, NULL), SQLITE_OK); /* again */
    CHECK_INT(q_int(db, "SELECT latency_ms FROM stats_replies WHERE in_reply_to = 'w0'"), 5);
    fact(db, "a", "lid1", "bot_reply", "{\"in_reply_to\":\"w1\",\"latency_ms\":700}", T0 + 1);
    fact(db, "a", "lid1", "bot_reply", "not json", T0 + 2);
    fact(db, "a", "lid1", "csat", "{\"score\":5}", T0 + 3);
    CHECK_INT(q_int(db, "SELECT count(*) FROM stats_replies"), 3);
    CHECK_INT(q_int(db, "SELECT latency_ms FROM stats_replies WHERE in_reply_to = 'w1'"), 700);
    CHECK_INT(q_int(db, "SELECT count(*) FROM stats_replies WHERE in_reply_to IS NULL"
                        " AND latency_ms IS NULL AND created_at = 1741564800002"),
              1);
    exec_fmt(db, "UPDATE facts SET contact_key = 'phone1' WHERE contact_key = 'lid1'");
    CHECK_INT(q_int(db, "SELECT count(*) FROM stats_replies WHERE contact_key = 'phone1'"), 2);
    exec_fmt(db, "DELETE FROM facts WHERE created_at <= %lld", (long long)(T0 + 1));
    CHECK_INT(q_int(db, "SELECT count(*) FROM stats_replies"), 1);
    sqlite3_close(db);
}

/* Runs wh_cli_stats with stdout sent to a file; returns its exit status, output in out. */
static int run_cli(const char *dir, char **argv, int argc, char *out, size_t outlen)
{
    char file[200];
    snprintf(file, sizeof(file), "%s/cli.out", tmpdir);
    fflush(stdout);
    int saved = dup(1), fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 1);
    wh_config_t conf;
    memset(&conf, 0, sizeof(conf));
    conf.data_dir = (char *)dir;
    int rc = wh_cli_stats(&conf, argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(fd);
    size_t n = 0;
    char *text = wh_test_read_file(file, &n);
    snprintf(out, outlen, "%s", text);
    free(text);
    return rc;
}

static void test_cli(const char *path)
{
    char dir[160], out[65536];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    /* the CLI reads <data-dir>/wahook.db */
    char link[200];
    snprintf(link, sizeof(link), "%s/wahook.db", dir);
    CHECK_INT(symlink(path, link), 0);
    char *json_args[] = {"stats", "-c", "conf/x.conf", "--since", "2025-03-10", "--until=2025-03-12",
                         "--instance", "a", "--json"};
    CHECK_INT(run_cli(dir, json_args, 9, out, sizeof(out)), 0);
    json_t *o = json_loads(out, 0, NULL);
    CHECK(o != NULL);
    CHECK_INT(I(o, "messages.in"), 6);
    CHECK_INT(I(o, "bot.first_response.median_ms"), 2000);
    json_decref(o);
    char *table_args[] = {"--since", "1741564800000", "--until", "2025-03-12", "--top", "2",
                          "--tz", "UTC"};
    CHECK_INT(run_cli(dir, table_args, 8, out, sizeof(out)), 0);
    CHECK_CONTAINS(out, "wahook stats  2025-03-10 00:00 → 2025-03-12 00:00 UTC  all instances");
    CHECK_CONTAINS(out, "total 13 · in 7 · out 6 · contacts 5 (4 wrote) · conversations 5");
    CHECK_CONTAINS(out, "response rate 85.7% (6 of 7 inbound messages) · replies 7");
    CHECK_CONTAINS(out, "first response median 1.0 s · p95 5.0 s · avg 2.1 s (4 conversations)");
    CHECK_CONTAINS(out, "handoff rate 40.0% (2 of 5 conversations) · reasons angry 2 · "
                        "asked_human 1");
    CHECK_CONTAINS(out, "outbound 6 · sent 4 · delivered 3 (50.0%) · read 2 (33.3%) · failed 1");
    CHECK_CONTAINS(out, "4 answers · average 4.00 · 2: 1, 4: 1, 5: 2");
    CHECK_CONTAINS(out, "DEAD LETTERS  6 now · events 3 · outbox crm 1 · evolution 2");
    CHECK_CONTAINS(out, "              2025-03-11        2        2        3       3        2"
                        "        3\n");
    CHECK_CONTAINS(out, "a            c1                     Ana                      3       2"
                        "       5\n");
    char *bad_args[] = {"--since", "yesterday"};
    CHECK_INT(run_cli(dir, bad_args, 2, out, sizeof(out)), 2);
    char *unknown_args[] = {"--frobnicate"};
    CHECK_INT(run_cli(dir, unknown_args, 1, out, sizeof(out)), 2);
    char *missing_args[] = {"--instance"};
    CHECK_INT(run_cli(dir, missing_args, 1, out, sizeof(out)), 2);
    char *none[] = {"--json"};
    CHECK_INT(run_cli("/nonexistent/dir", none, 1, out, sizeof(out)), 1);
    char *help[] = {"--help"};
    CHECK_INT(run_cli(dir, help, 1, out, sizeof(out)), 0);
    CHECK_CONTAINS(out, "--since T");
    unlink(link);
}

/* ---- arguments ---------------------------------------------------------------------------- */

static void test_parse_time(void)
{
    int64_t t = 0, now = T0 + 5 * D_;
    CHECK_INT(wh_stats_parse_time("2025-03-10", NULL, now, &t), 0);
    CHECK_INT(t, T0);
    CHECK_INT(wh_stats_parse_time("2025-03-10T01:02:03Z", NULL, now, &t), 0);
    CHECK_INT(t, T0 + 3723000);
    CHECK_INT(wh_stats_parse_time("2025-03-10T01:02:03.5+01:00", NULL, now, &t), 0);
    CHECK_INT(t, T0 + 3723500 - H_);
    CHECK_INT(wh_stats_parse_time("2025-03-10T01:02:03.123456-0230", NULL, now, &t), 0);
    CHECK_INT(t, T0 + 3723123 + 2 * H_ + 30 * M_);
    CHECK_INT(wh_stats_parse_time("2025-03-10 01:02", "UTC", now, &t), 0);
    CHECK_INT(t, T0 + 3720000);
    CHECK_INT(wh_stats_parse_time("2025-03-10", "Europe/Madrid", now, &t), 0);
    CHECK_INT(t, T0 - H_);
    CHECK_INT(wh_stats_parse_time("2025-07-01T12:00", "Europe/Madrid", now, &t), 0);
    CHECK_INT(t, INT64_C(1751364000000)); /* 10:00Z, CEST */
    CHECK_INT(wh_stats_parse_time("2025-03-10T12:00Z", "Europe/Madrid", now, &t), 0);
    CHECK_INT(t, T0 + 12 * H_); /* an explicit zone wins */
    CHECK_INT(wh_stats_parse_time("1741564800000", NULL, now, &t), 0);
    CHECK_INT(t, T0);
    CHECK_INT(wh_stats_parse_time("now", NULL, now, &t), 0);
    CHECK_INT(t, now);
    CHECK_INT(wh_stats_parse_time("7d", NULL, now, &t), 0);
    CHECK_INT(t, now - 7 * D_);
    CHECK_INT(wh_stats_parse_time("24h", NULL, now, &t), 0);
    CHECK_INT(t, now - D_);
    CHECK_INT(wh_stats_parse_time("15m", NULL, now, &t), 0);
    CHECK_INT(t, now - 15 * M_);
    CHECK_INT(wh_stats_parse_time("2w", NULL, now, &t), 0);
    CHECK_INT(t, now - 14 * D_);
    const char *bad[] = {"",          "abc",        "2025-02-30",       "2025-3-10",
                         "2025-13-01", "2025-03-10T25:00", "2025-03-10T10:60", "2025-03-10T",
                         "2025-03-10Tx", "2025-03-10T10:00+2", "2025-03-10T10:00:00.",
                         "7y",         "-5d",        "1234567890123456", "2025-03-10 junk"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = wh_stats_parse_time(bad[i], NULL, now, &t);
        if (rc != WH_EINVAL)
            fprintf(stderr, "accepted bad time '%s'\n", bad[i]);
        CHECK_INT(rc, WH_EINVAL);
    }
    CHECK_INT(wh_stats_parse_time("2025-03-10", "Nowhere/Land", now, &t), WH_ENOTFOUND);
}

static void test_params(void)
{
    wh_stats_params_t p;
    char err[256] = "";
    const char *q = "since=2025-03-10&until=2025-03-12T00%3A00Z&instance=a%20b+c&top=5&x=1&tz=UTC";
    CHECK_INT(wh_stats_params_from_query(&p, q, strlen(q), T0, err, sizeof(err)), 0);
    CHECK_INT(p.since_ms, T0);
    CHECK_INT(p.until_ms, T0 + 2 * D_);
    CHECK_STR(p.instance, "a b c");
    CHECK_INT(p.top, 5);
    CHECK_INT(wh_stats_params_from_query(&p, NULL, 0, T0, err, sizeof(err)), 0);
    CHECK_INT(p.until_ms, T0);
    CHECK_INT(p.since_ms, T0 - 30 * D_);
    CHECK_STR(p.instance, "");
    CHECK_INT(p.top, 10);
    q = "since=7d";
    CHECK_INT(wh_stats_params_from_query(&p, q, strlen(q), T0, err, sizeof(err)), 0);
    CHECK_INT(p.since_ms, T0 - 7 * D_);

    struct {
        const char *q, *msg;
    } bad[] = {
        {"top=0", "top must be"},
        {"top=101", "top must be"},
        {"top=5x", "top must be"},
        {"since=2025-03-12&until=2025-03-10", "since must be before until"},
        {"since=2024-01-01&until=2025-03-10", "longer than 400 days"},
        {"since=yesterday", "since: 'yesterday' is not a time"},
        {"until=2025-02-30", "until:"},
        {"tz=Nowhere%2FLand", "unknown time zone"},
        {"tz=..%2Fetc%2Fpasswd", "unknown time zone"},
        {"instance=", "instance must be 1 to"},
        {"instance=a%0Ab", "control character"},
        {"instance=a%00b", "not decodable"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK_INT(wh_stats_params_from_query(&p, bad[i].q, strlen(bad[i].q), T0, err,
                                             sizeof(err)),
                  WH_EINVAL);
        CHECK_CONTAINS(err, bad[i].msg);
    }
    char longq[400];
    snprintf(longq, sizeof(longq), "instance=%0300d", 1);
    CHECK_INT(wh_stats_params_from_query(&p, longq, strlen(longq), T0, err, sizeof(err)),
              WH_EINVAL);
    wh_stats_params_init(&p);
    CHECK_INT(wh_stats_param_set(&p, "bogus", "1", err, sizeof(err)), WH_EINVAL);
    CHECK_CONTAINS(err, "unknown argument");
}

static void test_percentile(void)
{
    int64_t v[10];
    for (int i = 0; i < 10; i++)
        v[i] = i + 1;
    CHECK_INT(wh_stats_percentile(v, 10, 50), 5);
    CHECK_INT(wh_stats_percentile(v, 10, 95), 10);
    CHECK_INT(wh_stats_percentile(v, 10, 10), 1);
    CHECK_INT(wh_stats_percentile(v, 10, 100), 10);
    CHECK_INT(wh_stats_percentile(v, 10, 0.1), 1);
    CHECK_INT(wh_stats_percentile(v, 1, 50), 1);
    CHECK_INT(wh_stats_percentile(v, 2, 50), 1);
    CHECK_INT(wh_stats_percentile(v, 3, 50), 2);
    CHECK_INT(wh_stats_percentile(v, 10, 90), 9);
}

/* ---- EXPLAIN QUERY PLAN --------------------------------------------------------------------- */

static const char *const big[] = {"events", "messages", "facts", "outbox", "stats_replies"};

/* 1 when a plan line reads one of the big tables without bounds: a SCAN (even of a whole
 * covering index: a whole index is a whole year), or a SEARCH bounded by nothing but the
 * instance (the reply lookup must use the in_reply_to expression, the others a time range or a
 * status). */
static int bad_plan_line(const char *d)
{
    if (strncmp(d, "SEARCH ", 7) == 0) {
        for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
            size_t n = strlen(big[i]);
            if (strncmp(d + 7, big[i], n) == 0 && d[7 + n] == ' ')
                return strstr(d, "created_at>?") == NULL && strstr(d, "received_at>?") == NULL &&
                       strstr(d, "status=?") == NULL && strstr(d, "event>?") == NULL &&
                       strstr(d, "status>?") == NULL && strstr(d, "next_attempt_at>?") == NULL;
        }
        return 0;
    }
    if (strncmp(d, "SCAN ", 5) != 0)
        return 0;
    const char *name = d + 5;
    /* "SCAN CONSTANT ROW", a subquery's or a CTE's own rows: not a table */
    if (strncmp(name, "CONSTANT ROW", 12) == 0)
        return 0;
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        size_t n = strlen(big[i]);
        if (strncmp(name, big[i], n) == 0 && (name[n] == ' ' || name[n] == '\0'))
            return 1; /* even "USING COVERING INDEX": a whole index is a whole year */
    }
    /* any other table scanned is a finding too, unless it is a subquery ("SCAN (subquery-N)")
     * or the schema table (the check that migration 4 ran) */
    return strncmp(name, "(subquery", 9) != 0 && strcmp(name, "sqlite_master") != 0;
}

static void test_query_plans(void)
{
    char path[160];
    db_path(path, sizeof(path));
    sqlite3 *db = make_store(path);
    size_t n = 0;
    for (size_t i = 0; wh_stats_sql(i) != NULL; i++, n++) {
        char *sql = sqlite3_mprintf("EXPLAIN QUERY PLAN %s", wh_stats_sql(i));
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
            fprintf(stderr, "prepare %s: %s\n", wh_stats_sql(i), sqlite3_errmsg(db));
        CHECK_INT(rc, SQLITE_OK);
        int searches = 0, bad = 0;
        char plan[2048] = "";
        while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
            const char *d = (const char *)sqlite3_column_text(st, 3);
            size_t l = strlen(plan);
            snprintf(plan + l, sizeof(plan) - l, "  %s\n", d);
            if (strncmp(d, "SEARCH ", 7) == 0 &&
                (strstr(d, "USING INDEX") || strstr(d, "USING COVERING INDEX") ||
                 strstr(d, "USING PRIMARY KEY") || strstr(d, "USING INTEGER PRIMARY KEY")))
                searches++;
            bad |= bad_plan_line(d);
        }
        int reads_big = 0;
        for (size_t k = 0; k < sizeof(big) / sizeof(big[0]); k++) {
            char from[64];
            snprintf(from, sizeof(from), "FROM %s ", big[k]);
            reads_big |= strstr(wh_stats_sql(i), from) != NULL;
        }
        if (bad || (reads_big && searches == 0))
            fprintf(stderr, "query %zu does not search an index:\n%s\n%s", i, wh_stats_sql(i),
                    plan);
        CHECK(!bad);
        CHECK(!reads_big || searches > 0);
        sqlite3_finalize(st);
        sqlite3_free(sql);
    }
    CHECK(n >= 14);
    sqlite3_close(db);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/wh-stats-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return 2;
    test_parse_time();
    test_params();
    test_percentile();
    test_query_plans();
    char path[160];
    db_path(path, sizeof(path));
    sqlite3 *db = make_store(path);
    fill(db);
    sqlite3_close(db);
    test_all_instances(path);
    test_one_instance(path);
    test_time_zone(path);
    test_cli(path);
    test_reply_triggers();
    test_empty();
    test_many_latencies();
    test_writer_rows();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
    WH_TEST_MAIN_END();
}
