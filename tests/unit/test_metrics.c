/* Unit tests for the metrics registry: exact exposition text of counters, a histogram, a gauge
 * and the route/code label mapping, escaping, bounded label values, exact totals under four
 * recording threads, the store-derived gauges of a scrape, and EXPLAIN QUERY PLAN of the
 * scrape's store queries. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include "wahook/admin.h"
#include "wahook/common.h"
#include "wahook/metrics.h"
#include "wahook/stats.h"
#include "wahook/store.h"
#include "wh_test.h"

/* The lines of family name in text: from its # HELP line to the next family (malloc'd). */
static char *family(const char *text, const char *name)
{
    char head[160];
    snprintf(head, sizeof(head), "# HELP %s ", name);
    const char *a = text != NULL ? strstr(text, head) : NULL;
    if (a == NULL)
        return strdup("");
    const char *b = strstr(a + 1, "# HELP ");
    size_t n = b != NULL ? (size_t)(b - a) : strlen(a);
    char *out = malloc(n + 1);
    memcpy(out, a, n);
    out[n] = '\0';
    return out;
}

static char *render(void)
{
    size_t len = 0;
    char *t = wh_metrics_render(NULL, &len);
    CHECK(t != NULL);
    CHECK_INT(t != NULL ? strlen(t) : 0, len);
    return t;
}

#define CHECK_FAMILY(text, name, expected)                                                     \
    do {                                                                                       \
        char *f_ = family(text, name);                                                         \
        CHECK_STR(f_, expected);                                                               \
        free(f_);                                                                              \
    } while (0)

static void test_counters_exact(void)
{
    wh_metrics_reset();
    wh_metrics_script_error("timeout");
    wh_metrics_script_error("timeout");
    wh_metrics_script_error("bogus");
    wh_metrics_script_error(NULL);
    wh_metrics_ratelimited("ip");
    wh_metrics_event_received("messages.upsert", "accepted");
    wh_metrics_event_received("messages.upsert", "accepted");
    wh_metrics_event_received("weird.event", "duplicate");
    wh_metrics_event_received("messages.update", "sideways");
    char *t = render();
    CHECK_FAMILY(t, "wahook_script_errors_total",
                 "# HELP wahook_script_errors_total Script runs that failed, by kind (error, "
                 "timeout, memory).\n"
                 "# TYPE wahook_script_errors_total counter\n"
                 "wahook_script_errors_total{kind=\"timeout\"} 2\n"
                 "wahook_script_errors_total{kind=\"other\"} 2\n");
    CHECK_FAMILY(t, "wahook_ratelimited_total",
                 "# HELP wahook_ratelimited_total Requests refused by a rate limit, by kind (ip, "
                 "instance, login).\n"
                 "# TYPE wahook_ratelimited_total counter\n"
                 "wahook_ratelimited_total{kind=\"ip\"} 1\n");
    CHECK_FAMILY(t, "wahook_events_received_total",
                 "# HELP wahook_events_received_total Webhook events at ingest by event name and "
                 "result.\n"
                 "# TYPE wahook_events_received_total counter\n"
                 "wahook_events_received_total{event=\"messages.update\",result=\"other\"} 1\n"
                 "wahook_events_received_total{event=\"messages.upsert\",result=\"accepted\"} 2\n"
                 "wahook_events_received_total{event=\"other\",result=\"duplicate\"} 1\n");
    /* a family with nothing recorded still has its HELP and TYPE */
    CHECK_FAMILY(t, "wahook_deliveries_total",
                 "# HELP wahook_deliveries_total Delivery attempts by target and outcome.\n"
                 "# TYPE wahook_deliveries_total counter\n");
    free(t);
}

static void test_histogram_exact(void)
{
    wh_metrics_reset();
    wh_metrics_delivery("crm", "ok", 0.2);
    wh_metrics_delivery("crm", "retry", 3);
    wh_metrics_delivery("crm", "ok", 0.01); /* on a bound: counted in le="0.01" */
    wh_metrics_delivery("smtp?", "ok", -1); /* unknown target, negative time */
    char *t = render();
    CHECK_FAMILY(t, "wahook_deliveries_total",
                 "# HELP wahook_deliveries_total Delivery attempts by target and outcome.\n"
                 "# TYPE wahook_deliveries_total counter\n"
                 "wahook_deliveries_total{target=\"crm\",outcome=\"ok\"} 2\n"
                 "wahook_deliveries_total{target=\"crm\",outcome=\"retry\"} 1\n"
                 "wahook_deliveries_total{target=\"other\",outcome=\"ok\"} 1\n");
    CHECK_FAMILY(t, "wahook_delivery_seconds",
                 "# HELP wahook_delivery_seconds Duration of delivery attempts by target.\n"
                 "# TYPE wahook_delivery_seconds histogram\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.01\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.025\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.05\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.1\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.25\"} 2\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"0.5\"} 2\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"1\"} 2\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"2.5\"} 2\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"5\"} 3\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"10\"} 3\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"30\"} 3\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"60\"} 3\n"
                 "wahook_delivery_seconds_bucket{target=\"crm\",le=\"+Inf\"} 3\n"
                 "wahook_delivery_seconds_sum{target=\"crm\"} 3.21\n"
                 "wahook_delivery_seconds_count{target=\"crm\"} 3\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.01\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.025\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.05\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.1\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.25\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"0.5\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"1\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"2.5\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"5\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"10\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"30\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"60\"} 1\n"
                 "wahook_delivery_seconds_bucket{target=\"other\",le=\"+Inf\"} 1\n"
                 "wahook_delivery_seconds_sum{target=\"other\"} 0\n"
                 "wahook_delivery_seconds_count{target=\"other\"} 1\n");
    free(t);
}

static void test_routes_and_gauges(void)
{
    wh_metrics_reset();
    const char *routes[] = {"/api/whatsapp/webhook/", "/hooks/b"};
    wh_metrics_set_routes(routes, 2);
    wh_metrics_request("/api/whatsapp/webhook", 200);
    wh_metrics_request("/api/whatsapp/webhook/messages-upsert", 200);
    wh_metrics_request("/api/whatsapp/webhookX", 404);
    wh_metrics_request("/api/events/12/retry", 401);
    wh_metrics_request("/api/events/stream", 200);
    wh_metrics_request("/hooks/b", 503);
    wh_metrics_request("/", 418);
    wh_metrics_request(NULL, 42);
    wh_metrics_circuit_state("crm", WH_CIRCUIT_OPEN);
    wh_metrics_circuit_state("evolution", WH_CIRCUIT_CLOSED);
    wh_metrics_circuit_state("evolution", WH_CIRCUIT_HALF_OPEN);
    char *t = render();
    CHECK_FAMILY(t, "wahook_http_requests_total",
                 "# HELP wahook_http_requests_total HTTP answers by route and status code.\n"
                 "# TYPE wahook_http_requests_total counter\n"
                 "wahook_http_requests_total{route=\"/api/events/stream\",code=\"200\"} 1\n"
                 "wahook_http_requests_total{route=\"/api/events\",code=\"401\"} 1\n"
                 "wahook_http_requests_total{route=\"/api/whatsapp/webhook\",code=\"200\"} 2\n"
                 "wahook_http_requests_total{route=\"/hooks/b\",code=\"503\"} 1\n"
                 "wahook_http_requests_total{route=\"other\",code=\"404\"} 1\n"
                 "wahook_http_requests_total{route=\"other\",code=\"4xx\"} 1\n"
                 "wahook_http_requests_total{route=\"other\",code=\"other\"} 1\n");
    CHECK_FAMILY(t, "wahook_circuit_state",
                 "# HELP wahook_circuit_state Circuit breaker per delivery target: 0 closed, 1 "
                 "open, 2 half-open.\n"
                 "# TYPE wahook_circuit_state gauge\n"
                 "wahook_circuit_state{target=\"evolution\"} 2\n"
                 "wahook_circuit_state{target=\"crm\"} 1\n");
    free(t);
    wh_metrics_set_routes(NULL, 0);
}

static void escaping_collector(wh_metrics_out_t *o, void *ud)
{
    const char *labels[] = {"path", "a\"b\\c\nd", "n", (const char *)ud, NULL};
    wh_metrics_out_family(o, "test_escape", "gauge", "back\\slash and\nnewline \"kept\"");
    wh_metrics_out_sample(o, "test_escape", labels, 0.25);
    wh_metrics_out_sample(o, "test_escape", NULL, -3);
    wh_metrics_out_sample(o, "test_escape", NULL, 1e-7);
    wh_metrics_out_sample(o, "test_escape", NULL, 0.1);
}

static void test_escaping(void)
{
    wh_metrics_reset();
    CHECK_INT(wh_metrics_add_collector(escaping_collector, "1"), 0);
    char *t = render();
    CHECK_FAMILY(t, "test_escape",
                 "# HELP test_escape back\\\\slash and\\nnewline \"kept\"\n"
                 "# TYPE test_escape gauge\n"
                 "test_escape{path=\"a\\\"b\\\\c\\nd\",n=\"1\"} 0.25\n"
                 "test_escape -3\n"
                 "test_escape 1e-07\n"
                 "test_escape 0.1\n");
    free(t);
    for (int i = 0; i < 15; i++)
        CHECK_INT(wh_metrics_add_collector(escaping_collector, "x"), 0);
    CHECK_INT(wh_metrics_add_collector(escaping_collector, "x"), WH_EFULL);
    wh_metrics_clear_collectors();
    t = render();
    CHECK(t != NULL && strstr(t, "test_escape") == NULL);
    free(t);
}

/* ---- concurrency ---------------------------------------------------------------------------- */

#define PER_THREAD 100000

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        wh_metrics_request("/metrics", 200);
        wh_metrics_event_processed("messages.upsert", i % 2 ? "done" : "retry", 0.003);
        if (i % 10 == 0)
            wh_metrics_event_processed("weird", "dead", 20);
    }
    return NULL;
}

static void test_concurrency(void)
{
    wh_metrics_reset();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        CHECK_INT(pthread_create(&th[i], NULL, hammer, NULL), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *t = render();
    CHECK_CONTAINS(t, "wahook_http_requests_total{route=\"/metrics\",code=\"200\"} 400000\n");
    CHECK_CONTAINS(t, "wahook_events_processed_total{event=\"messages.upsert\",outcome=\"done\"} "
                      "200000\n");
    CHECK_CONTAINS(t, "wahook_events_processed_total{event=\"messages.upsert\",outcome=\"retry\"}"
                      " 200000\n");
    CHECK_CONTAINS(t, "wahook_events_processed_total{event=\"other\",outcome=\"dead\"} 40000\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_bucket{event=\"messages.upsert\","
                      "le=\"0.0025\"} 0\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_bucket{event=\"messages.upsert\","
                      "le=\"0.005\"} 400000\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_sum{event=\"messages.upsert\"} 1200\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_count{event=\"messages.upsert\"} 400000\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_bucket{event=\"other\",le=\"10\"} 0\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_bucket{event=\"other\",le=\"+Inf\"} "
                      "40000\n");
    CHECK_CONTAINS(t, "wahook_event_processing_seconds_sum{event=\"other\"} 800000\n");
    free(t);
}

/* ---- store-derived gauges ------------------------------------------------------------------ */

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *e = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &e);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", sql, e);
    CHECK_INT(rc, SQLITE_OK);
    sqlite3_free(e);
}

static void make_store(const char *path)
{
    wh_store_opts_t o = {.path = path};
    wh_store_t *s = NULL;
    char err[256] = "";
    CHECK_INT(wh_store_open(&s, &o, err, sizeof(err)), 0);
    wh_store_close(s);
}

static void test_store_collector(const char *dir)
{
    char path[200];
    snprintf(path, sizeof(path), "%s/m.db", dir);
    make_store(path);
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    exec_sql(db,
             "INSERT INTO events(received_at, instance, event, dedup_id, body, status, attempts,"
             " next_attempt_at) VALUES"
             " (1, 'a', 'e', '1', '{}', 'pending', 0, 0),"
             " (2, 'a', 'e', '2', '{}', 'pending', 1, 9),"
             " (3, 'a', 'e', '3', '{}', 'pending', 0, 0), (4, 'a', 'e', '4', '{}', 'dead', 5, 0),"
             " (5, 'a', 'e', '5', '{}', 'done', 1, 0);"
             "INSERT INTO outbox(instance, contact_key, target, kind, payload, status, created_at,"
             " updated_at) VALUES ('a', 'c', 'evolution', 'k', '{}', 'pending', 1, 1),"
             " ('a', 'c', 'evolution', 'k', '{}', 'pending', 1, 1),"
             " ('a', 'c', 'evolution', 'k', '{}', 'inflight', 1, 1),"
             " ('a', 'c', 'crm', 'k', '{}', 'dead', 1, 1),"
             " ('a', 'c', 'crm', 'k', '{}', 'done', 1, 1);"
             "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
             " ('main', 'connecting', 1, 1), ('main', 'open', 2, 2), ('b\"x', 'close', 3, 3),"
             " ('sales', 'open', 4, 4), ('sales', 'refused', 5, 5);"
             "INSERT INTO metrics_counts(name, labels, value) VALUES"
             " ('bot_flow', '{\"__bad\":1,\"metric\":true,\"step\":\"menu\"}', 7),"
             " ('plain', '{}', 2);");
    sqlite3_close(db);

    wh_metrics_reset();
    wh_admin_env_t env = {.db_path = path};
    size_t len = 0;
    char *t = wh_metrics_render(&env, &len);
    CHECK(t != NULL);
    CHECK_CONTAINS(t, "wahook_build_info{version=\"" WH_VERSION "\"} 1\n");
    CHECK_FAMILY(t, "wahook_inbox_depth",
                 "# HELP wahook_inbox_depth Events stored and not yet processed (pending).\n"
                 "# TYPE wahook_inbox_depth gauge\n"
                 "wahook_inbox_depth 3\n");
    CHECK_CONTAINS(t, "wahook_inbox_retrying 1\n");
    CHECK_FAMILY(t, "wahook_outbox_depth",
                 "# HELP wahook_outbox_depth Actions waiting for delivery, by target and state.\n"
                 "# TYPE wahook_outbox_depth gauge\n"
                 "wahook_outbox_depth{target=\"evolution\",state=\"inflight\"} 1\n"
                 "wahook_outbox_depth{target=\"evolution\",state=\"pending\"} 2\n");
    CHECK_CONTAINS(t, "wahook_dead_letters{queue=\"events\"} 1\n");
    CHECK_CONTAINS(t, "wahook_dead_letters{queue=\"crm\"} 1\n");
    CHECK_FAMILY(t, "wahook_connection_state",
                 "# HELP wahook_connection_state 1 for each instance's last known WhatsApp "
                 "connection state.\n"
                 "# TYPE wahook_connection_state gauge\n"
                 "wahook_connection_state{instance=\"b\\\"x\",state=\"close\"} 1\n"
                 "wahook_connection_state{instance=\"main\",state=\"open\"} 1\n"
                 "wahook_connection_state{instance=\"sales\",state=\"other\"} 1\n");
    CHECK_FAMILY(t, "wahook_script_counter_total",
                 "# HELP wahook_script_counter_total Counters scripts increment with "
                 "wahook.metric.inc.\n"
                 "# TYPE wahook_script_counter_total counter\n"
                 "wahook_script_counter_total{metric=\"bot_flow\",label___bad=\"1\","
                 "label_metric=\"true\",step=\"menu\"} 7\n"
                 "wahook_script_counter_total{metric=\"plain\"} 2\n");
    /* no store file: the registry and process gauges only */
    free(t);
    wh_admin_env_t none = {.db_path = "/nonexistent/x.db"};
    t = wh_metrics_render(&none, &len);
    CHECK(t != NULL && strstr(t, "wahook_inbox_depth") == NULL);
    CHECK_CONTAINS(t, "wahook_build_info");
    free(t);
}

static void test_store_plans(const char *dir)
{
    char path[200];
    snprintf(path, sizeof(path), "%s/p.db", dir);
    make_store(path);
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    size_t n = 0;
    for (size_t i = 0; wh_metrics_sql(i) != NULL; i++, n++) {
        char *sql = sqlite3_mprintf("EXPLAIN QUERY PLAN %s", wh_metrics_sql(i));
        sqlite3_stmt *st = NULL;
        CHECK_INT(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
            const char *d = (const char *)sqlite3_column_text(st, 3);
            int bad = strncmp(d, "SCAN events", 11) == 0 || strncmp(d, "SCAN outbox", 11) == 0 ||
                      strncmp(d, "SCAN connection_history", 23) == 0;
            if (bad)
                fprintf(stderr, "scrape query %zu scans: %s\n", i, d);
            CHECK(!bad);
        }
        sqlite3_finalize(st);
        sqlite3_free(sql);
    }
    CHECK_INT(n, 7);
    sqlite3_close(db);
}

int main(void)
{
    char dir[] = "/tmp/wh-metrics-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 2;
    test_counters_exact();
    test_histogram_exact();
    test_routes_and_gauges();
    test_escaping();
    test_concurrency();
    test_store_collector(dir);
    test_store_plans(dir);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    WH_TEST_MAIN_END();
}
