/* Unit tests for the delivery side of the outbox: migration 3, strict FIFO eligibility per
 * (target, instance, contact), partitions and pauses, reset at start, the retry/dead/hold/done/
 * progress transitions, sent-message recording and echo matching, contacts not on WhatsApp,
 * incident and rate gates for alerts, the outbox hook, and operator list/show/retry/drop. Real
 * SQLite files in a temp dir, written through the real store writer. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/outbox.h"
#include "wahook/outcome.h"
#include "wahook/store.h"
#include "wh_test.h"

static char tmpdir[64];
static int dbseq;

static void db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/o%d.db", tmpdir, ++dbseq);
}

static wh_store_t *open_store(const char *path)
{
    wh_store_opts_t o = {.path = path, .busy_timeout_ms = 20000};
    wh_store_t *s = NULL;
    char err[256] = "";
    int rc = wh_store_open(&s, &o, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "open %s: %s\n", path, err);
    CHECK_INT(rc, 0);
    return s;
}

static wh_outbox_reader_t *open_reader(const char *path)
{
    wh_outbox_reader_t *r = NULL;
    char err[256] = "";
    int rc = wh_outbox_reader_open(&r, path, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "reader %s: %s\n", path, err);
    CHECK_INT(rc, 0);
    return r;
}

/* ---- raw SQL, from a connection of its own --------------------------------------------------- */

static void exec_sql(const char *path, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    sqlite3 *db = NULL;
    char *msg = NULL;
    sqlite3_open(path, &db);
    sqlite3_busy_timeout(db, 20000);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "exec %s: %s\n", sql, msg);
    CHECK_INT(rc, SQLITE_OK);
    sqlite3_free(msg);
    sqlite3_close(db);
}

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
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
    } else {
        fprintf(stderr, "q_int: %s: %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

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

/* Inserts an outbox row directly and returns its id. */
static int64_t put_row(const char *path, const char *instance, const char *ck, const char *target,
                       const char *status, int64_t next_at, int64_t created)
{
    exec_sql(path,
             "INSERT INTO outbox(event_id, instance, contact_key, target, kind, payload, status,"
             " next_attempt_at, created_at, updated_at) VALUES(NULL, '%s', '%s', '%s', 'k',"
             " '{\"type\":\"x\"}', '%s', %lld, %lld, %lld)",
             instance, ck, target, status, (long long)next_at, (long long)created,
             (long long)created);
    return q_int(path, "SELECT max(id) FROM outbox");
}

/* Ids returned by wh_outbox_next, as a "1,2,3" string. */
static const char *next_ids(wh_outbox_reader_t *r, const wh_outbox_query_t *q, char *buf,
                            size_t len)
{
    wh_outbox_row_t rows[32];
    size_t n = 0;
    int rc = wh_outbox_next(r, q, rows, 32, &n);
    CHECK_INT(rc, 0);
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)rows[i].id);
        wh_outbox_row_clear(&rows[i]);
    }
    return buf;
}

static int apply1(wh_store_t *s, wh_outbox_op_t *op)
{
    int rc = wh_outbox_apply(s, op, 1);
    CHECK_INT(rc, 0);
    return op->status;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_migration(void)
{
    char path[128];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    CHECK(wh_store_schema_version(s) >= 3); /* migration 3 is delivery's */
    CHECK_INT(q_int(path, "SELECT count(*) FROM sqlite_master WHERE name IN ('incidents',"
                          " 'target_alerts', 'outbox_pending', 'outbox_retry')"),
              4);
    CHECK_INT(q_int(path, "SELECT count(*) FROM pragma_table_info('contacts')"
                          " WHERE name = 'on_whatsapp'"),
              1);
    wh_store_close(s);
}

static void test_fifo(void)
{
    char path[128], ids[256], exp[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    wh_outbox_reader_t *r = open_reader(path);
    int64_t now = wh_now_ms();
    int64_t a1 = put_row(path, "acme", "346001", "evolution", "pending", 0, now);
    int64_t a2 = put_row(path, "acme", "346001", "evolution", "pending", 0, now);
    int64_t b1 = put_row(path, "acme", "346002", "evolution", "pending", 0, now);
    int64_t c1 = put_row(path, "other", "346001", "evolution", "pending", 0, now); /* instance */
    int64_t k1 = put_row(path, "acme", "346001", "crm", "pending", 0, now);        /* target */

    wh_outbox_query_t q = {.target = "evolution", .nparts = 1, .now = now};
    snprintf(exp, sizeof(exp), "%lld,%lld,%lld", (long long)a1, (long long)b1, (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp); /* a2 waits behind a1 */

    /* a1 in flight here: not returned, and a2 still held back. */
    int64_t skip[] = {a1};
    q.skip = skip;
    q.nskip = 1;
    snprintf(exp, sizeof(exp), "%lld,%lld", (long long)b1, (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    q.skip = NULL;
    q.nskip = 0;

    /* Paused instance. */
    const char *paused[] = {"acme"};
    q.paused = paused;
    q.npaused = 1;
    snprintf(exp, sizeof(exp), "%lld", (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    q.paused = NULL;
    q.npaused = 0;

    /* a1 retries later: it holds a2 back, and next_due says when. */
    wh_outbox_op_t op = {.op = WH_OUTBOX_RETRY, .id = a1, .next_attempt_at = now + 60000,
                         .error = "HTTP 500"};
    CHECK_INT(apply1(s, &op), 0);
    snprintf(exp, sizeof(exp), "%lld,%lld", (long long)b1, (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    CHECK_INT(wh_outbox_next_due(r, "evolution", 0, 1, now), now + 60000);
    CHECK(wh_outbox_next_due(r, "mail", 0, 1, now) == INT64_MAX);
    /* Due at its time. */
    q.now = now + 60000;
    snprintf(exp, sizeof(exp), "%lld,%lld,%lld", (long long)a1, (long long)b1, (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    q.now = now;

    /* Done: a2 becomes eligible. */
    wh_outbox_op_t done = {.op = WH_OUTBOX_DONE, .id = a1, .response = "{\"ok\":1}"};
    CHECK_INT(apply1(s, &done), 0);
    snprintf(exp, sizeof(exp), "%lld,%lld,%lld", (long long)a2, (long long)b1, (long long)c1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);

    /* Other targets are separate queues. */
    q.target = "crm";
    snprintf(exp, sizeof(exp), "%lld", (long long)k1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);

    /* Mail and alert rows have no order per contact. */
    int64_t m1 = put_row(path, "acme", "346001", "mail", "pending", 0, now);
    int64_t m2 = put_row(path, "acme", "346001", "mail", "pending", 0, now);
    q.target = "mail";
    snprintf(exp, sizeof(exp), "%lld,%lld", (long long)m1, (long long)m2);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    CHECK(!wh_outbox_target_ordered("mail") && !wh_outbox_target_ordered("alert"));
    CHECK(wh_outbox_target_ordered("evolution") && wh_outbox_target_ordered("crm"));

    /* Partitions split the eligible rows without overlap. */
    q.target = "evolution";
    q.nparts = 2;
    char p0[128], p1[128];
    q.part = 0;
    next_ids(r, &q, p0, sizeof(p0));
    q.part = 1;
    next_ids(r, &q, p1, sizeof(p1));
    wh_outbox_row_t rows[8];
    size_t n0 = 0, n1 = 0;
    q.part = 0;
    wh_outbox_next(r, &q, rows, 8, &n0);
    for (size_t i = 0; i < n0; i++)
        wh_outbox_row_clear(&rows[i]);
    q.part = 1;
    wh_outbox_next(r, &q, rows, 8, &n1);
    for (size_t i = 0; i < n1; i++)
        wh_outbox_row_clear(&rows[i]);
    CHECK_INT(n0 + n1, 3);
    CHECK(strcmp(p0, p1) != 0 || n0 + n1 == 0);

    /* Followers: what a CRM batch merges. */
    int64_t k2 = put_row(path, "acme", "346001", "crm", "pending", 0, now);
    int64_t k3 = put_row(path, "acme", "346001", "crm", "pending", 0, now);
    put_row(path, "acme", "346002", "crm", "pending", 0, now);
    wh_outbox_row_t head = {.id = k1, .target = "crm", .instance = "acme", .contact_key = "346001"};
    size_t nf = 0;
    CHECK_INT(wh_outbox_followers(r, &head, rows, 8, &nf), 0);
    CHECK_INT(nf, 2);
    if (nf == 2) {
        CHECK_INT(rows[0].id, k2);
        CHECK_INT(rows[1].id, k3);
    }
    for (size_t i = 0; i < nf; i++)
        wh_outbox_row_clear(&rows[i]);
    wh_outbox_reader_close(r);
    wh_store_close(s);
}

static void test_reset_and_inflight(void)
{
    char path[128], ids[128], exp[64];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    wh_outbox_reader_t *r = open_reader(path);
    int64_t now = wh_now_ms();
    int64_t a1 = put_row(path, "acme", "1", "evolution", "inflight", 0, now);
    put_row(path, "acme", "1", "evolution", "pending", 0, now);
    wh_outbox_query_t q = {.target = "evolution", .nparts = 1, .now = now};
    /* An inflight row (a crash) holds back its followers and is not returned itself. */
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), "");
    CHECK_INT(wh_outbox_reset_inflight(s), 1);
    snprintf(exp, sizeof(exp), "%lld", (long long)a1);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    CHECK_INT(wh_outbox_reset_inflight(s), 0);
    wh_outbox_reader_close(r);
    wh_store_close(s);
}

static void test_transitions(void)
{
    char path[128], buf[8192];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    int64_t now = wh_now_ms();
    int64_t id = put_row(path, "acme", "1", "evolution", "pending", 0, now);

    wh_outbox_op_t op = {.op = WH_OUTBOX_RETRY, .id = id, .next_attempt_at = now + 5000,
                         .error = "HTTP 503", .response = "{\"e\":1}", .progress = "{\"p\":1}"};
    CHECK_INT(apply1(s, &op), 0);
    CHECK_INT(q_int(path, "SELECT attempts FROM outbox WHERE id = %lld", (long long)id), 1);
    CHECK_INT(q_int(path, "SELECT next_attempt_at FROM outbox WHERE id = %lld", (long long)id),
              now + 5000);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT last_error FROM outbox WHERE id = %lld",
                     (long long)id),
              "HTTP 503");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT progress FROM outbox WHERE id = %lld",
                     (long long)id),
              "{\"p\":1}");

    /* Held (misconfigured target): no attempt consumed; NULL keeps the progress. */
    wh_outbox_op_t hold = {.op = WH_OUTBOX_HOLD, .id = id, .next_attempt_at = now + 30000,
                           .error = "HTTP 401"};
    CHECK_INT(apply1(s, &hold), 0);
    CHECK_INT(q_int(path, "SELECT attempts FROM outbox WHERE id = %lld", (long long)id), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status || ' ' || last_error || ' ' ||"
                     " progress FROM outbox WHERE id = %lld", (long long)id),
              "pending HTTP 401 {\"p\":1}");

    wh_outbox_op_t prog = {.op = WH_OUTBOX_PROGRESS, .id = id, .progress = "{\"p\":2}"};
    CHECK_INT(apply1(s, &prog), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT progress FROM outbox WHERE id = %lld",
                     (long long)id),
              "{\"p\":2}");
    CHECK_INT(q_int(path, "SELECT attempts FROM outbox WHERE id = %lld", (long long)id), 1);

    /* Dead keeps the error and the (truncated) answer. */
    char big[6000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big + 4094, "\xc3\xa9", 2); /* an "é" across the 4096-byte cut */
    wh_outbox_op_t dead = {.op = WH_OUTBOX_DEAD, .id = id, .error = "exhausted", .response = big};
    CHECK_INT(apply1(s, &dead), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM outbox WHERE id = %lld",
                     (long long)id),
              "dead");
    CHECK_INT(q_int(path, "SELECT attempts FROM outbox WHERE id = %lld", (long long)id), 2);
    CHECK_INT(q_int(path, "SELECT length(CAST(response AS BLOB)) FROM outbox WHERE id = %lld",
                    (long long)id),
              4096);

    /* A row no longer pending is left alone. */
    wh_outbox_op_t late = {.op = WH_OUTBOX_DONE, .id = id, .response = "late"};
    CHECK_INT(apply1(s, &late), WH_ENOTFOUND);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status FROM outbox WHERE id = %lld",
                     (long long)id),
              "dead");

    /* DONE clears the error. */
    int64_t id2 = put_row(path, "acme", "2", "evolution", "pending", 0, now);
    wh_outbox_op_t r2 = {.op = WH_OUTBOX_RETRY, .id = id2, .next_attempt_at = now, .error = "e"};
    apply1(s, &r2);
    wh_outbox_op_t d2 = {.op = WH_OUTBOX_DONE, .id = id2, .response = "{\"key\":1}"};
    CHECK_INT(apply1(s, &d2), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status || '/' || coalesce(last_error, '-')"
                     " || '/' || response FROM outbox WHERE id = %lld", (long long)id2),
              "done/-/{\"key\":1}");

    /* Several ops in one transaction, each with its own status. */
    int64_t x1 = put_row(path, "acme", "3", "crm", "pending", 0, now);
    wh_outbox_op_t ops[2] = {{.op = WH_OUTBOX_DONE, .id = x1},
                             {.op = WH_OUTBOX_DONE, .id = 999999}};
    CHECK_INT(wh_outbox_apply(s, ops, 2), 0);
    CHECK_INT(ops[0].status, 0);
    CHECK_INT(ops[1].status, WH_ENOTFOUND);
    wh_store_close(s);
}

static void test_messages(void)
{
    char path[128], buf[256], wa[64];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    wh_outbox_reader_t *r = open_reader(path);
    int64_t now = wh_now_ms();

    /* A receipt that arrived before the send answer is applied to the recorded message. */
    exec_sql(path, "INSERT INTO pending_receipts(instance, wa_id, status, status_rank, at)"
                   " VALUES('acme', '3EB0AAA', 'DELIVERY_ACK', 3, %lld)", (long long)now);
    int64_t id = put_row(path, "acme", "34600111222", "evolution", "pending", 0, now);
    wh_outbox_sent_t m = {.instance = "acme", .wa_id = "3EB0AAA", .contact_key = "34600111222",
                          .chat_jid = "34600111222@s.whatsapp.net", .text = "Hola",
                          .ts = 1761141987};
    wh_outbox_op_t op = {.op = WH_OUTBOX_DONE, .id = id, .instance = "acme", .sent = &m};
    CHECK_INT(apply1(s, &op), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT direction || '/' || origin || '/' || status"
                     " || '/' || text || '/' || contact_key FROM messages WHERE wa_id = '3EB0AAA'"),
              "out/wahook/DELIVERY_ACK/Hola/34600111222");
    CHECK_INT(q_int(path, "SELECT count(*) FROM pending_receipts"), 0);
    wh_store_reader_t *sr = NULL;
    char err[128];
    CHECK_INT(wh_store_reader_open(&sr, path, err, sizeof(err)), 0);
    char origin[16];
    CHECK_INT(wh_store_message_origin(sr, "acme", "3EB0AAA", origin, sizeof(origin)), 0);
    CHECK_STR(origin, "wahook");
    wh_store_reader_close(sr);

    /* The echo came first (origin api): our record still makes it wahook. */
    exec_sql(path, "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, text,"
                   " status, status_rank, created_at, updated_at) VALUES('acme', '3EB0BBB',"
                   " '34600111222', 'out', 'api', 'Hi', 'SERVER_ACK', 2, %lld, %lld)",
             (long long)now, (long long)now);
    int64_t id2 = put_row(path, "acme", "34600111222", "evolution", "pending", 0, now);
    wh_outbox_sent_t m2 = {.instance = "acme", .wa_id = "3EB0BBB", .contact_key = "34600111222",
                           .text = "Hi"};
    wh_outbox_op_t op2 = {.op = WH_OUTBOX_DONE, .id = id2, .instance = "acme", .sent = &m2};
    CHECK_INT(apply1(s, &op2), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf),
                     "SELECT origin || '/' || status FROM messages WHERE wa_id = '3EB0BBB'"),
              "wahook/SERVER_ACK");

    /* Echo matching: same contact, same text, outbound, after the attempt, not ours yet. */
    exec_sql(path, "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, text,"
                   " created_at, updated_at) VALUES"
                   " ('acme', 'OLD', '346', 'out', 'api', 'Echo me', %lld, %lld),"
                   " ('acme', 'IN1', '346', 'in', 'contact', 'Echo me', %lld, %lld),"
                   " ('acme', 'OTHER', '347', 'out', 'api', 'Echo me', %lld, %lld),"
                   " ('acme', 'DIFF', '346', 'out', 'api', 'Echo you', %lld, %lld)",
             (long long)now - 10000, (long long)now - 10000, (long long)now + 5,
             (long long)now + 5, (long long)now + 5, (long long)now + 5, (long long)now + 5,
             (long long)now + 5);
    CHECK_INT(wh_outbox_find_echo(r, "acme", "346", NULL, "Echo me", now, wa, sizeof(wa)),
              WH_ENOTFOUND);
    exec_sql(path, "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, text,"
                   " created_at, updated_at) VALUES('acme', 'ECHO', '346', 'out', 'api',"
                   " 'Echo me', %lld, %lld)",
             (long long)now + 10, (long long)now + 10);
    CHECK_INT(wh_outbox_find_echo(r, "acme", NULL, "346", "Echo me", now, wa, sizeof(wa)), 0);
    CHECK_STR(wa, "ECHO");
    CHECK_INT(wh_outbox_find_echo(r, "acme", "346", "999", "Echo me", now + 11, wa, sizeof(wa)),
              WH_ENOTFOUND);
    int64_t id3 = put_row(path, "acme", "346", "evolution", "pending", 0, now);
    wh_outbox_op_t op3 = {.op = WH_OUTBOX_DONE, .id = id3, .instance = "acme",
                          .echo_wa_id = "ECHO"};
    CHECK_INT(apply1(s, &op3), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT origin FROM messages WHERE wa_id = 'ECHO'"),
              "wahook");
    /* Once ours, it no longer matches another timed-out send. */
    CHECK_INT(wh_outbox_find_echo(r, "acme", "346", NULL, "Echo me", now, wa, sizeof(wa)),
              WH_ENOTFOUND);

    /* Not on WhatsApp: the contact is flagged (created when unknown). */
    int64_t id4 = put_row(path, "acme", "34600000000", "evolution", "pending", 0, now);
    wh_outbox_op_t op4 = {.op = WH_OUTBOX_DEAD, .id = id4, .instance = "acme",
                          .error = "not on WhatsApp", .not_on_whatsapp = "34600000000"};
    CHECK_INT(apply1(s, &op4), 0);
    CHECK_INT(q_int(path, "SELECT on_whatsapp FROM contacts WHERE instance = 'acme' AND"
                          " contact_key = '34600000000'"),
              0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT phone FROM contacts WHERE contact_key ="
                     " '34600000000'"),
              "34600000000");

    /* Connection state: the newest history row. */
    char st[24];
    CHECK_INT(wh_outbox_connection_state(r, "acme", st, sizeof(st)), WH_ENOTFOUND);
    exec_sql(path, "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
                   " ('acme', 'open', 1, 1), ('acme', 'close', 2, 2), ('zzz', 'open', 3, 3)");
    CHECK_INT(wh_outbox_connection_state(r, "acme", st, sizeof(st)), 0);
    CHECK_STR(st, "close");
    wh_outbox_reader_close(r);
    wh_store_close(s);
}

static void test_alerts(void)
{
    char path[128], buf[512];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    json_t *fields = json_pack("{s:s}", "instance", "acme");
    wh_outbox_alert_t a = {.instance = "acme", .kind = "connection_not_open", .text = "down",
                           .fields = fields, .incident = "connection:acme"};
    CHECK_INT(wh_outbox_alert(s, &a), 1);
    CHECK_INT(wh_outbox_alert(s, &a), 0); /* one alert per incident */
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE target = 'alert'"), 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT kind || ' ' || contact_key || 'x ' ||"
                     " json_extract(payload, '$.fields.incident') || ' ' ||"
                     " json_extract(payload, '$.gated') || ' ' || json_extract(payload, '$.type')"
                     " FROM outbox WHERE target = 'alert'"),
              "alert x connection:acme 1 alert");
    a.incident_clear = 1;
    a.kind = "connection_restored";
    CHECK_INT(wh_outbox_alert(s, &a), 1);
    CHECK_INT(wh_outbox_alert(s, &a), 0);
    a.incident_clear = 0;
    a.kind = "connection_not_open";
    CHECK_INT(wh_outbox_alert(s, &a), 1); /* a new incident */
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE target = 'alert'"), 3);

    /* Rate gate per (target, kind). */
    wh_outbox_alert_t r = {.kind = "dead_letter", .text = "dead", .rate_target = "crm",
                           .rate_kind = "dead_letter", .rate_interval_ms = 3600000};
    CHECK_INT(wh_outbox_alert(s, &r), 1);
    CHECK_INT(wh_outbox_alert(s, &r), 0);
    r.rate_target = "evolution";
    CHECK_INT(wh_outbox_alert(s, &r), 1);
    r.rate_interval_ms = 0; /* no limit */
    CHECK_INT(wh_outbox_alert(s, &r), 1);

    /* Malformed alerts are refused. */
    wh_outbox_alert_t bad = {.kind = "bad kind!", .text = "x"};
    CHECK(wh_outbox_alert(s, &bad) < 0);

    /* A dead op carries its alert in the same transaction. */
    int64_t id = put_row(path, "acme", "1", "crm", "pending", 0, wh_now_ms());
    wh_outbox_alert_t da = {.kind = "dead_letter", .text = "crm dead", .rate_target = "mail",
                            .rate_kind = "dead_letter", .rate_interval_ms = 3600000};
    wh_outbox_op_t op = {.op = WH_OUTBOX_DEAD, .id = id, .error = "x", .alert = &da};
    CHECK_INT(apply1(s, &op), 0);
    CHECK_INT(op.alerted, 1);
    int64_t id2 = put_row(path, "acme", "1", "crm", "pending", 0, wh_now_ms());
    op.id = id2;
    CHECK_INT(apply1(s, &op), 0);
    CHECK_INT(op.alerted, 0);
    CHECK_INT(q_int(path, "SELECT count(*) FROM outbox WHERE target = 'alert' AND"
                          " json_extract(payload, '$.text') = 'crm dead'"),
              1);

    /* The delivery-time gate of a script's alert. */
    int64_t s1 = put_row(path, "acme", "", "alert", "pending", 0, wh_now_ms());
    int64_t s2 = put_row(path, "acme", "", "alert", "pending", 0, wh_now_ms());
    CHECK_INT(wh_outbox_gate_alert(s, s1, "connection:beta", 0, "{\"gate\":\"connection:beta\"}"),
              1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status || ' ' || progress FROM outbox"
                     " WHERE id = %lld", (long long)s1),
              "pending {\"gate\":\"connection:beta\"}");
    CHECK_INT(wh_outbox_gate_alert(s, s2, "connection:beta", 0, "{}"), 0);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status || ' ' ||"
                     " json_extract(response, '$.suppressed') FROM outbox WHERE id = %lld",
                     (long long)s2),
              "done the incident is already open");
    CHECK_INT(wh_outbox_gate_alert(s, s2, "connection:beta", 0, "{}"), WH_ENOTFOUND);
    json_decref(fields);
    wh_store_close(s);
}

static atomic_int hook_calls;
static void on_hook(void *arg)
{
    (void)arg;
    atomic_fetch_add(&hook_calls, 1);
}

static void on_ingest(wh_ingest_t *job, int status, int64_t id, int duplicate)
{
    (void)duplicate;
    int64_t *out = job->user;
    *out = status == 0 ? id : -1;
}

static void on_commit(wh_work_commit_t *c, int status)
{
    *(int *)c->user = status == 0 ? 1 : -1;
}

static void test_hook_and_operators(void)
{
    char path[128], buf[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    wh_store_set_outbox_hook(s, on_hook, NULL);

    /* A processor's commit with actions wakes the deliverers. */
    volatile int64_t ev = 0;
    wh_ingest_t job = {.instance = "acme", .event = "messages.upsert", .dedup_id = "d1",
                       .phone = "346", .body = "{}", .body_len = 2, .received_at = wh_now_ms(),
                       .cb = on_ingest, .user = (void *)&ev};
    CHECK_INT(wh_store_submit(s, &job), 0);
    for (int i = 0; i < 2000 && ev == 0; i++)
        usleep(1000);
    CHECK(ev > 0);
    atomic_store(&hook_calls, 0);
    wh_work_item_t it = {.id = ev, .instance = "acme", .event = "messages.upsert",
                         .contact_key = "346"};
    wh_outcome_t o;
    CHECK_INT(wh_outcome_init(&o, NULL), 0);
    CHECK_INT(wh_outcome_add_action(&o, json_pack("{s:s,s:s,s:s}", "type", "send_text", "to",
                                                  "346", "text", "hi"),
                                    NULL, 0),
              0);
    volatile int committed = 0;
    wh_work_commit_t c = {.item = &it, .status = WH_WORK_DONE, .outcome = &o, .cb = on_commit,
                          .user = (void *)&committed};
    CHECK_INT(wh_store_commit_work(s, &c), 0);
    for (int i = 0; i < 2000 && committed == 0; i++)
        usleep(1000);
    CHECK_INT(committed, 1);
    CHECK(atomic_load(&hook_calls) >= 1);
    wh_outcome_free(&o);
    int64_t id = q_int(path, "SELECT id FROM outbox WHERE target = 'evolution'");
    CHECK(id > 0);

    /* retry / drop. */
    CHECK_INT(wh_outbox_retry(s, 987654), WH_ENOTFOUND);
    wh_outbox_op_t dead = {.op = WH_OUTBOX_DEAD, .id = id, .error = "boom"};
    CHECK_INT(apply1(s, &dead), 0);
    atomic_store(&hook_calls, 0);
    CHECK_INT(wh_outbox_retry(s, id), 0);
    CHECK(atomic_load(&hook_calls) >= 1);
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT status || ' ' || attempts || ' ' ||"
                     " last_error FROM outbox WHERE id = %lld", (long long)id),
              "pending 0 boom");
    int64_t behind = put_row(path, "acme", "346", "evolution", "pending", 0, wh_now_ms());
    wh_outbox_reader_t *r = open_reader(path);
    char ids[64], exp[64];
    wh_outbox_query_t q = {.target = "evolution", .nparts = 1, .now = wh_now_ms()};
    snprintf(exp, sizeof(exp), "%lld", (long long)id);
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    CHECK_INT(wh_outbox_drop(s, id), 0);
    CHECK_INT(wh_outbox_drop(s, id), WH_EINVAL);
    CHECK_INT(wh_outbox_retry(s, id), WH_EINVAL);
    snprintf(exp, sizeof(exp), "%lld", (long long)behind); /* the dropped row holds nothing back */
    CHECK_STR(next_ids(r, &q, ids, sizeof(ids)), exp);
    wh_outbox_op_t done = {.op = WH_OUTBOX_DONE, .id = behind};
    apply1(s, &done);
    CHECK_INT(wh_outbox_drop(s, behind), WH_EINVAL);
    wh_outbox_reader_close(r);

    /* list / show, newest first, filtered. */
    int64_t d1 = put_row(path, "acme", "9", "crm", "dead", 0, wh_now_ms());
    int64_t d2 = put_row(path, "acme", "9", "mail", "dead", 0, wh_now_ms());
    wh_outbox_reader_t *cr = open_reader(path);
    json_t *counts = wh_outbox_counts(cr);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(counts, "crm"), "dead")), 1);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(counts, "mail"), "dead")), 1);
    CHECK(json_object_get(counts, "evolution") == NULL);
    json_decref(counts);
    wh_outbox_reader_close(cr);

    wh_store_close(s);
    (void)d1;
    (void)d2;
}

typedef struct collect {
    int64_t ids[16];
    int n;
    char status[16];
} collect_t;

static int collect_cb(const wh_outbox_row_t *row, void *ctx)
{
    collect_t *c = ctx;
    if (c->n < 16)
        c->ids[c->n++] = row->id;
    snprintf(c->status, sizeof(c->status), "%s", row->status);
    json_t *j = wh_outbox_row_json(row);
    CHECK(j != NULL && json_is_object(json_object_get(j, "payload")));
    if (row->last_error != NULL && strncmp(row->last_error, "ok", 2) == 0)
        CHECK_STR(json_string_value(json_object_get(j, "last_error")), "ok?");
    json_decref(j);
    return 0;
}

static void test_list_show(void)
{
    char path[128], err[256];
    db_path(path, sizeof(path));
    wh_store_t *s = open_store(path);
    int64_t now = wh_now_ms();
    int64_t a = put_row(path, "acme", "1", "crm", "dead", 0, now);
    int64_t b = put_row(path, "acme", "1", "evolution", "pending", 0, now);
    int64_t c = put_row(path, "acme", "2", "crm", "dead", 0, now);
    collect_t col = {0};
    CHECK_INT(wh_outbox_list(path, "dead", NULL, 10, collect_cb, &col, err, sizeof(err)), 0);
    CHECK_INT(col.n, 2);
    CHECK_INT(col.ids[0], c);
    CHECK_INT(col.ids[1], a);
    memset(&col, 0, sizeof(col));
    CHECK_INT(wh_outbox_list(path, NULL, NULL, 2, collect_cb, &col, err, sizeof(err)), 0);
    CHECK_INT(col.n, 2);
    memset(&col, 0, sizeof(col));
    CHECK_INT(wh_outbox_list(path, NULL, "evolution", 10, collect_cb, &col, err, sizeof(err)), 0);
    CHECK_INT(col.n, 1);
    CHECK_INT(col.ids[0], b);
    memset(&col, 0, sizeof(col));
    CHECK_INT(wh_outbox_show(path, a, collect_cb, &col, err, sizeof(err)), 0);
    CHECK_STR(col.status, "dead");
    CHECK_INT(wh_outbox_show(path, 424242, collect_cb, &col, err, sizeof(err)), WH_ENOTFOUND);
    CHECK_INT(wh_outbox_list(path, NULL, NULL, 0, collect_cb, &col, err, sizeof(err)), WH_EINVAL);
    /* An error that is not UTF-8 (a cut answer) still gives a row. */
    exec_sql(path, "UPDATE outbox SET last_error = CAST(X'6F6BC3' AS TEXT), response = 'x'"
                   " WHERE id = %lld", (long long)a);
    memset(&col, 0, sizeof(col));
    CHECK_INT(wh_outbox_show(path, a, collect_cb, &col, err, sizeof(err)), 0);
    CHECK_INT(col.n, 1);
    CHECK_INT(wh_outbox_barrier(s), 0);
    wh_store_close(s);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/wh-outbox-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return 2;
    test_migration();
    test_fifo();
    test_reset_and_inflight();
    test_transitions();
    test_messages();
    test_alerts();
    test_hook_and_operators();
    test_list_show();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
    WH_TEST_MAIN_END();
}
