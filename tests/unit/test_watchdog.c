/* Unit tests for runtime/watchdog.c with explicit times: one alert per incident and one when it
 * clears for a closed connection (shared with the scripts' own close alert), a connection stuck
 * in "connecting", a missing instance, webhook silence measured from the events table, spikes of
 * authentication rejections, instances discovered from events, the status object, the thread,
 * and the real libcurl poll against a tiny HTTP server in the test. The incident gate is the
 * store's (an incidents table in the same database), reproduced by the test's alert function. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/watchdog.h"
#include "wh_test.h"

#define T0 1767607320000LL /* 2026-01-05 10:02:00 UTC */
#define MIN 60000LL

static char g_dir[64], g_db[128];
static sqlite3 *g_w; /* the test's write connection (what the store would do) */

/* ---- the alert side: the store's incident gate, recorded ---- */

typedef struct alert_rec {
    char kind[64], incident[96], instance[64], text[512];
    int clear;
} alert_rec_t;

static alert_rec_t g_alerts[64];
static int g_nalerts, g_alert_calls;

static void exec(const char *sql)
{
    char *e = NULL;
    if (sqlite3_exec(g_w, sql, NULL, NULL, &e) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, e);
        exit(2);
    }
}

static int fake_alert(void *ud, const wh_outbox_alert_t *a)
{
    g_alert_calls++;
    sqlite3_stmt *st;
    int open = 0;
    sqlite3_prepare_v2(g_w, "SELECT cleared_at IS NULL FROM incidents WHERE key = ?1", -1, &st, NULL);
    sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        open = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (a->incident_clear ? !open : open)
        return 0; /* suppressed, like wh_outbox_alert */
    sqlite3_prepare_v2(g_w,
                       a->incident_clear
                           ? "UPDATE incidents SET cleared_at = 1 WHERE key = ?1"
                           : "INSERT INTO incidents(key, opened_at, cleared_at) VALUES(?1, 1, NULL)"
                             " ON CONFLICT(key) DO UPDATE SET opened_at = 1, cleared_at = NULL",
                       -1, &st, NULL);
    sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
    sqlite3_step(st);
    sqlite3_finalize(st);
    if (g_nalerts < (int)WH_ARRAY_SIZE(g_alerts)) {
        alert_rec_t *r = &g_alerts[g_nalerts++];
        snprintf(r->kind, sizeof(r->kind), "%s", a->kind);
        snprintf(r->incident, sizeof(r->incident), "%s", a->incident ? a->incident : "");
        snprintf(r->instance, sizeof(r->instance), "%s", a->instance ? a->instance : "");
        snprintf(r->text, sizeof(r->text), "%s", a->text);
        r->clear = a->incident_clear;
        const char *src = json_string_value(json_object_get(a->fields, "source"));
        CHECK_STR(src, "watchdog");
    }
    return 1;
}

/* ---- the poll side ---- */

static char g_state[8][32]; /* per instance index: the state, or "" = poll error */
static const char *const g_names[] = {"acme", "beta"};
static int g_polls;

static int fake_poll(void *ud, const char *instance, char *state, size_t len, char *err,
                     size_t errlen)
{
    g_polls++;
    for (size_t i = 0; i < WH_ARRAY_SIZE(g_names); i++) {
        if (strcmp(instance, g_names[i]) != 0)
            continue;
        if (g_state[i][0] == '\0') {
            snprintf(err, errlen, "connection refused");
            return WH_EIO;
        }
        snprintf(state, len, "%s", g_state[i]);
        return WH_OK;
    }
    snprintf(state, len, "open");
    return WH_OK;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/wh_watchdog_XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        exit(2);
    snprintf(g_db, sizeof(g_db), "%s/wahook.db", g_dir);
    if (sqlite3_open(g_db, &g_w) != SQLITE_OK)
        exit(2);
    exec("PRAGMA journal_mode=WAL;"
         "CREATE TABLE events(id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,"
         " instance TEXT NOT NULL, event TEXT NOT NULL, dedup_id TEXT NOT NULL, body TEXT);"
         "CREATE TABLE incidents(key TEXT PRIMARY KEY, opened_at INTEGER, cleared_at INTEGER,"
         " last_alert_at INTEGER);");
    g_nalerts = g_alert_calls = g_polls = 0;
}

static void teardown(void)
{
    sqlite3_close(g_w);
    g_w = NULL;
    nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void add_event(const char *instance, int64_t at)
{
    char sql[256];
    static int seq;
    snprintf(sql, sizeof(sql),
             "INSERT INTO events(received_at, instance, event, dedup_id) VALUES(%lld, '%s',"
             " 'messages.upsert', 'd%d')",
             (long long)at, instance, ++seq);
    exec(sql);
}

static wh_watchdog_t *new_wd(const wh_strlist_t *instances, int64_t silence_ms,
                             int64_t auth_failures, int64_t started)
{
    wh_watchdog_opts_t o = {.instances = instances,
                            .interval_ms = MIN,
                            .silence_ms = silence_ms,
                            .auth_failures = auth_failures,
                            .db_path = g_db,
                            .poll_fn = fake_poll,
                            .alert_fn = fake_alert};
    wh_watchdog_t *w = NULL;
    char err[256];
    if (wh_watchdog_new(&w, &o, started, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "%s\n", err);
        exit(2);
    }
    return w;
}

static void two_instances(wh_strlist_t *l)
{
    memset(l, 0, sizeof(*l));
    wh_strlist_push(l, "acme", 4);
    wh_strlist_push(l, "beta", 4);
}

static void test_connection(void)
{
    setup();
    wh_strlist_t inst;
    two_instances(&inst);
    wh_watchdog_t *w = new_wd(&inst, 0, 0, T0);
    snprintf(g_state[0], 32, "open");
    snprintf(g_state[1], 32, "open");
    CHECK_INT(wh_watchdog_tick(w, T0), 0);
    CHECK_INT(g_polls, 2);
    CHECK_INT(g_alert_calls, 0); /* open and no incident: nothing to write */

    /* A logout: one alert, and no more while it lasts. */
    snprintf(g_state[0], 32, "close");
    CHECK_INT(wh_watchdog_tick(w, T0 + MIN), 1);
    CHECK_INT(g_nalerts, 1);
    CHECK_STR(g_alerts[0].kind, "connection_closed");
    CHECK_STR(g_alerts[0].incident, "connection:acme");
    CHECK_STR(g_alerts[0].instance, "acme");
    CHECK_CONTAINS(g_alerts[0].text, "state \"close\"");
    CHECK_INT(wh_watchdog_tick(w, T0 + 2 * MIN), 0);
    CHECK_INT(wh_watchdog_tick(w, T0 + 3 * MIN), 0);
    CHECK_INT(g_nalerts, 1);
    CHECK_INT(g_alert_calls, 1); /* the open incident is read, not re-sent */

    /* A failed poll changes nothing. */
    g_state[0][0] = '\0';
    CHECK_INT(wh_watchdog_tick(w, T0 + 4 * MIN), 0);
    json_t *s = wh_watchdog_status(w);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_object_get(s, "instances"),
                                                                "acme"),
                                                "poll_error")),
              "connection refused");
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_object_get(s, "instances"),
                                                                "acme"),
                                                "state")),
              "close");
    json_decref(s);

    /* Back: one clearing alert. */
    snprintf(g_state[0], 32, "open");
    CHECK_INT(wh_watchdog_tick(w, T0 + 5 * MIN), 1);
    CHECK_STR(g_alerts[1].kind, "connection_restored");
    CHECK_INT(g_alerts[1].clear, 1);
    CHECK_INT(wh_watchdog_tick(w, T0 + 6 * MIN), 0);
    CHECK_INT(g_nalerts, 2);

    /* The scripts' own close alert opened the incident first: the watchdog adds nothing, but
     * clears it when the poll sees the instance open again. */
    exec("INSERT INTO incidents(key, opened_at, cleared_at) VALUES('connection:beta', 1, NULL)");
    snprintf(g_state[1], 32, "close");
    CHECK_INT(wh_watchdog_tick(w, T0 + 7 * MIN), 0);
    snprintf(g_state[1], 32, "open");
    CHECK_INT(wh_watchdog_tick(w, T0 + 8 * MIN), 1);
    CHECK_STR(g_alerts[2].kind, "connection_restored");
    CHECK_STR(g_alerts[2].incident, "connection:beta");

    /* "connecting" once is a reconnect; twice in a row is an incident. */
    snprintf(g_state[0], 32, "connecting");
    CHECK_INT(wh_watchdog_tick(w, T0 + 9 * MIN), 0);
    CHECK_INT(wh_watchdog_tick(w, T0 + 10 * MIN), 1);
    CHECK_STR(g_alerts[3].kind, "connection_closed");
    CHECK_CONTAINS(g_alerts[3].text, "\"connecting\"");
    snprintf(g_state[0], 32, "open");
    CHECK_INT(wh_watchdog_tick(w, T0 + 11 * MIN), 1);

    /* An instance Evolution does not know. */
    snprintf(g_state[1], 32, "missing");
    CHECK_INT(wh_watchdog_tick(w, T0 + 12 * MIN), 1);
    CHECK_CONTAINS(g_alerts[5].text, "Evolution has no instance \"beta\"");
    wh_watchdog_free(w);
    wh_strlist_clear(&inst);
    teardown();
}

static void test_silence(void)
{
    setup();
    wh_strlist_t inst;
    memset(&inst, 0, sizeof(inst));
    wh_strlist_push(&inst, "acme", 4);
    wh_watchdog_opts_t o = {.instances = &inst, .interval_ms = MIN, .silence_ms = 30 * MIN,
                            .db_path = g_db, .alert_fn = fake_alert}; /* no polling */
    wh_watchdog_t *w = NULL;
    char err[256];
    CHECK_INT(wh_watchdog_new(&w, &o, T0, err, sizeof(err)), WH_OK);
    /* Nothing ever arrived: measured from the start. */
    CHECK_INT(wh_watchdog_tick(w, T0 + 30 * MIN - 1), 0);
    CHECK_INT(wh_watchdog_tick(w, T0 + 30 * MIN), 1);
    CHECK_STR(g_alerts[0].kind, "webhooks_silent");
    CHECK_STR(g_alerts[0].incident, "silence:acme");
    CHECK_CONTAINS(g_alerts[0].text, "for 30 min (none since wahook started)");
    CHECK_INT(wh_watchdog_tick(w, T0 + 45 * MIN), 0);
    CHECK_INT(g_polls, 0);

    /* A webhook arrives: one clearing alert. Another instance's events do not count. */
    add_event("other", T0 + 46 * MIN);
    CHECK_INT(wh_watchdog_tick(w, T0 + 47 * MIN), 0);
    add_event("acme", T0 + 48 * MIN);
    CHECK_INT(wh_watchdog_tick(w, T0 + 49 * MIN), 1);
    CHECK_STR(g_alerts[1].kind, "webhooks_resumed");
    json_t *s = wh_watchdog_status(w);
    CHECK_INT(json_integer_value(json_object_get(
                  json_object_get(json_object_get(s, "instances"), "acme"), "last_webhook_at")),
              T0 + 48 * MIN);
    json_decref(s);

    /* Silent again later: a new incident, measured from the last webhook. */
    CHECK_INT(wh_watchdog_tick(w, T0 + 77 * MIN), 0);
    CHECK_INT(wh_watchdog_tick(w, T0 + 78 * MIN), 1);
    CHECK_STR(g_alerts[2].kind, "webhooks_silent");
    CHECK_CONTAINS(g_alerts[2].text, "for 30 min");
    CHECK(strstr(g_alerts[2].text, "none since") == NULL);
    wh_watchdog_free(w);
    wh_strlist_clear(&inst);
    teardown();
}

static void test_auth_failures(void)
{
    const int64_t t = T0 + 1000 * MIN; /* a minute no other test uses */
    CHECK_INT(wh_watchdog_auth_failures(t), 0);
    for (int i = 0; i < 3; i++)
        wh_watchdog_note_auth_failure_at(t - 70000); /* older than a minute */
    for (int i = 0; i < 4; i++)
        wh_watchdog_note_auth_failure_at(t - 10000);
    wh_watchdog_note_auth_failure_at(t);
    CHECK_INT(wh_watchdog_auth_failures(t), 5);
    CHECK_INT(wh_watchdog_auth_failures(t - 65000), 3);

    setup();
    wh_watchdog_t *w = new_wd(NULL, 0, 5, t);
    CHECK_INT(wh_watchdog_tick(w, t - 1000), 0); /* 4 */
    CHECK_INT(wh_watchdog_tick(w, t), 1);        /* 5 */
    CHECK_STR(g_alerts[0].kind, "auth_failures");
    CHECK_STR(g_alerts[0].incident, "auth_failures");
    CHECK_CONTAINS(g_alerts[0].text, "5 webhook requests refused");
    CHECK_INT(wh_watchdog_tick(w, t + 5000), 0);
    /* Half the threshold or more keeps it open; below, it clears. */
    CHECK_INT(wh_watchdog_tick(w, t + 51000), 1); /* only the one at t is left */
    CHECK_INT(g_nalerts, 2);
    CHECK_STR(g_alerts[1].kind, "auth_failures_cleared");
    wh_watchdog_free(w);

    /* The real entry point counts too. */
    int64_t before = wh_watchdog_auth_failures(wh_now_ms());
    wh_watchdog_note_auth_failure();
    CHECK(wh_watchdog_auth_failures(wh_now_ms()) >= before + 1);
    teardown();
}

static void test_discovery_and_thread(void)
{
    setup();
    add_event("gamma", T0);
    memset(g_state, 0, sizeof(g_state));
    wh_strlist_t none;
    memset(&none, 0, sizeof(none));
    wh_watchdog_opts_t o = {.instances = &none,
                            .interval_ms = 20,
                            .silence_ms = 10 * MIN,
                            .db_path = g_db,
                            .poll_fn = fake_poll,
                            .alert_fn = fake_alert};
    wh_watchdog_t *w = NULL;
    char err[256];
    CHECK_INT(wh_watchdog_new(&w, &o, T0, err, sizeof(err)), WH_OK);
    /* No instances configured: every instance that sends webhooks is watched. The thread runs
     * rounds at wall-clock time, long after T0, so gamma is silent. */
    CHECK_INT(wh_watchdog_run(w), WH_OK);
    for (int i = 0; i < 200 && g_nalerts == 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    wh_watchdog_free(w);
    CHECK_INT(g_nalerts, 1);
    CHECK_STR(g_alerts[0].kind, "webhooks_silent");
    CHECK_STR(g_alerts[0].instance, "gamma");
    CHECK(g_polls >= 1); /* gamma is polled too (the fake answers "open") */
    teardown();
}

/* ---- the real poll over HTTP ---- */

typedef struct mini_http {
    int fd, port, stop, served;
    int status;
    char body[256];
    char request[2048];
    pthread_t thr;
} mini_http_t;

static void *mini_serve(void *arg)
{
    mini_http_t *h = arg;
    while (!h->stop) {
        int c = accept(h->fd, NULL, NULL);
        if (c < 0)
            break;
        size_t n = 0;
        while (n < sizeof(h->request) - 1) {
            ssize_t r = read(c, h->request + n, sizeof(h->request) - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            h->request[n] = '\0';
            if (strstr(h->request, "\r\n\r\n") != NULL)
                break;
        }
        char resp[512];
        int len = snprintf(resp, sizeof(resp),
                           "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                           "%zu\r\nConnection: close\r\n\r\n%s",
                           h->status, strlen(h->body), h->body);
        if (write(c, resp, (size_t)len) < 0) {
        }
        close(c);
        h->served++;
    }
    return NULL;
}

static void test_curl_poll(void)
{
    setup();
    mini_http_t h;
    memset(&h, 0, sizeof(h));
    h.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(h.fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(h.fd, 8) != 0 ||
        getsockname(h.fd, (struct sockaddr *)&a, &alen) != 0)
        exit(2);
    h.port = ntohs(a.sin_port);
    h.status = 200;
    snprintf(h.body, sizeof(h.body), "{\"instance\":{\"instanceName\":\"acme bot\",\"state\":\"close\"}}");
    pthread_create(&h.thr, NULL, mini_serve, &h);

    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", h.port);
    wh_strlist_t inst;
    memset(&inst, 0, sizeof(inst));
    wh_strlist_push(&inst, "acme bot", 8);
    wh_watchdog_opts_t o = {.evolution_url = url,
                            .evolution_api_key = "k3y",
                            .timeout_ms = 5000,
                            .instances = &inst,
                            .interval_ms = MIN,
                            .db_path = g_db,
                            .alert_fn = fake_alert};
    wh_watchdog_t *w = NULL;
    char err[256];
    CHECK_INT(wh_watchdog_new(&w, &o, T0, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_watchdog_tick(w, T0), 1);
    CHECK_CONTAINS(h.request, "GET /instance/connectionState/acme%20bot HTTP/1.1\r\n");
    CHECK_CONTAINS(h.request, "\r\napikey: k3y\r\n");
    CHECK_STR(g_alerts[0].kind, "connection_closed");
    CHECK_STR(g_alerts[0].incident, "connection:acme bot");

    /* The older flat shape, 404 for an unknown instance, and errors. */
    snprintf(h.body, sizeof(h.body), "{\"state\":\"open\"}");
    CHECK_INT(wh_watchdog_tick(w, T0 + MIN), 1);
    CHECK_STR(g_alerts[1].kind, "connection_restored");
    h.status = 404;
    snprintf(h.body, sizeof(h.body), "{\"status\":404,\"error\":\"Not Found\"}");
    CHECK_INT(wh_watchdog_tick(w, T0 + 2 * MIN), 1);
    CHECK_CONTAINS(g_alerts[2].text, "Evolution has no instance \"acme bot\"");
    h.status = 200;
    snprintf(h.body, sizeof(h.body), "{\"instance\":{}}");
    CHECK_INT(wh_watchdog_tick(w, T0 + 3 * MIN), 0);
    h.status = 401;
    CHECK_INT(wh_watchdog_tick(w, T0 + 4 * MIN), 0);
    json_t *s = wh_watchdog_status(w);
    CHECK_STR(json_string_value(json_object_get(
                  json_object_get(json_object_get(s, "instances"), "acme bot"), "poll_error")),
              "HTTP 401 from connectionState");
    json_decref(s);
    CHECK_INT(h.served, 5);
    wh_watchdog_free(w);

    h.stop = 1;
    shutdown(h.fd, SHUT_RDWR);
    close(h.fd);
    pthread_join(h.thr, NULL);
    wh_strlist_clear(&inst);
    teardown();
}

/* With the real store: alerts become outbox rows, gated by its incidents table. */
static int count_rows(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int n = -1;
    if (sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

static void test_real_store(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/wh_watchdog_XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        exit(2);
    snprintf(g_db, sizeof(g_db), "%s/wahook.db", g_dir);
    wh_store_t *store = NULL;
    wh_store_opts_t so = {.path = g_db};
    char err[256];
    CHECK_INT(wh_store_open(&store, &so, err, sizeof(err)), WH_OK);
    if (store == NULL) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    wh_strlist_t inst;
    memset(&inst, 0, sizeof(inst));
    wh_strlist_push(&inst, "acme", 4);
    memset(g_state, 0, sizeof(g_state));
    snprintf(g_state[0], 32, "close");
    g_polls = 0;
    wh_watchdog_opts_t o = {.instances = &inst, .interval_ms = MIN, .db_path = g_db,
                            .poll_fn = fake_poll, .store = store};
    wh_watchdog_t *w = NULL;
    CHECK_INT(wh_watchdog_new(&w, &o, T0, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_watchdog_tick(w, T0), 1);
    CHECK_INT(wh_watchdog_tick(w, T0 + MIN), 0);
    CHECK_INT(count_rows("SELECT COUNT(*) FROM outbox WHERE target = 'alert' AND instance = 'acme'"
                         " AND json_extract(payload, '$.kind') = 'connection_closed'"
                         " AND json_extract(payload, '$.fields.incident') = 'connection:acme'"),
              1);
    CHECK_INT(count_rows("SELECT COUNT(*) FROM incidents WHERE key = 'connection:acme'"
                         " AND cleared_at IS NULL"),
              1);
    snprintf(g_state[0], 32, "open");
    CHECK_INT(wh_watchdog_tick(w, T0 + 2 * MIN), 1);
    CHECK_INT(count_rows("SELECT COUNT(*) FROM outbox WHERE target = 'alert'"), 2);
    CHECK_INT(count_rows("SELECT COUNT(*) FROM incidents WHERE cleared_at IS NOT NULL"), 1);
    wh_watchdog_free(w);
    wh_store_close(store);
    wh_strlist_clear(&inst);
    nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void test_start_off(void)
{
    wh_config_t conf;
    memset(&conf, 0, sizeof(conf));
    wh_watchdog_t *w = (wh_watchdog_t *)&conf;
    char err[128];
    CHECK_INT(wh_watchdog_start(&w, &conf, NULL, NULL, err, sizeof(err)), WH_OK);
    CHECK(w == NULL);
    CHECK(wh_watchdog_status(NULL) == NULL);
    wh_watchdog_stop(NULL);
    wh_watchdog_opts_t o = {.interval_ms = 0};
    CHECK_INT(wh_watchdog_new(&w, &o, 0, err, sizeof(err)), WH_EINVAL);
}

int main(void)
{
    test_connection();
    test_silence();
    test_auth_failures();
    test_discovery_and_thread();
    test_curl_poll();
    test_real_store();
    test_start_off();
    WH_TEST_MAIN_END();
}
