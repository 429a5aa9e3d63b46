/* Unit tests for the deliverers: the pure parts (classification of HTTP and SMTP outcomes,
 * exists:false detection in both message shapes, backoff bounds, Retry-After, the circuit
 * breaker and token bucket with explicit times, the sendText body and answer, recipient keys,
 * alert bodies) and a small end-to-end run against an HTTP server inside the test: sendText
 * with the apikey and body, retries of 5xx, a 401 that holds rows and alerts once, exists:false
 * that kills at once and flags the contact, the pause while the instance is not open, and the
 * timed-out send that is completed by its echo instead of being sent twice. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/deliver.h"
#include "wahook/outbox.h"
#include "wahook/store.h"
#include "wh_test.h"

static char *fixture(const char *rel)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/evolution-api/%s", WH_FIXTURES_DIR, rel);
    size_t len;
    return wh_test_read_file(path, &len);
}

/* ---- classification ------------------------------------------------------------------------- */

static void test_classify(void)
{
    CHECK_INT(wh_deliver_classify_http(0, 201, NULL, 0), WH_DC_OK);
    CHECK_INT(wh_deliver_classify_http(0, 200, NULL, 0), WH_DC_OK);
    CHECK_INT(wh_deliver_classify_http(0, 500, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(0, 502, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(0, 503, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(0, 429, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(0, 408, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(CURLE_OPERATION_TIMEDOUT, 0, NULL, 0), WH_DC_TIMEOUT);
    CHECK_INT(wh_deliver_classify_http(CURLE_COULDNT_CONNECT, 0, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(CURLE_RECV_ERROR, 0, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(CURLE_GOT_NOTHING, 0, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(CURLE_COULDNT_RESOLVE_HOST, 0, NULL, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_http(CURLE_PEER_FAILED_VERIFICATION, 0, NULL, 0),
              WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_http(CURLE_URL_MALFORMAT, 0, NULL, 0), WH_DC_MISCONFIGURED);
    char *e401 = fixture("error-401.json");
    char *e404 = fixture("error-404-instance.json");
    char *e400 = fixture("error-400-schema.json");
    char *nowa = fixture("error-400-number-not-on-whatsapp.json");
    CHECK_INT(wh_deliver_classify_http(0, 401, e401, strlen(e401)), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_http(0, 403, NULL, 0), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_http(0, 404, e404, strlen(e404)), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_http(0, 301, NULL, 0), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_http(0, 400, e400, strlen(e400)), WH_DC_PERMANENT);
    CHECK_INT(wh_deliver_classify_http(0, 400, nowa, strlen(nowa)), WH_DC_NOT_ON_WHATSAPP);
    CHECK_INT(wh_deliver_classify_http(0, 422, NULL, 0), WH_DC_PERMANENT);
    CHECK_INT(wh_deliver_classify_http(0, 413, NULL, 0), WH_DC_PERMANENT);
    /* exists:false only counts on a 400. */
    CHECK_INT(wh_deliver_classify_http(0, 500, nowa, strlen(nowa)), WH_DC_RETRY);
    free(e401);
    free(e404);
    free(e400);
    free(nowa);

    CHECK_INT(wh_deliver_classify_smtp(0, 250), WH_DC_OK);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_LOGIN_DENIED, 535), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_SEND_ERROR, 530), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_USE_SSL_FAILED, 0), WH_DC_MISCONFIGURED);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_SEND_ERROR, 550), WH_DC_PERMANENT);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_SEND_ERROR, 451), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_COULDNT_CONNECT, 0), WH_DC_RETRY);
    CHECK_INT(wh_deliver_classify_smtp(CURLE_OPERATION_TIMEDOUT, 0), WH_DC_TIMEOUT);
    CHECK_STR(wh_deliver_class_name(WH_DC_NOT_ON_WHATSAPP), "not_on_whatsapp");
}

static void test_not_on_whatsapp(void)
{
    const char *arr = "{\"status\":400,\"response\":{\"message\":[{\"jid\":\"1@s.whatsapp.net\","
                      "\"exists\":false,\"number\":\"1\"}]}}";
    const char *str_json = "{\"status\":400,\"response\":{\"message\":\"[{\\\"exists\\\":false,"
                           "\\\"number\\\":\\\"1\\\"}]\"}}";
    const char *str_text = "{\"status\":400,\"response\":{\"message\":\"Error: {\\\"exists\\\":"
                           "false} for 1\"}}";
    const char *exists = "{\"response\":{\"message\":[{\"exists\":true}]}}";
    const char *schema =
        "{\"response\":{\"message\":[\"instance requires property \\\"text\\\"\"]}}";
    const char *plain = "{\"response\":{\"message\":\"Text is required\"}}";
    CHECK(wh_deliver_not_on_whatsapp(arr, strlen(arr)));
    CHECK(wh_deliver_not_on_whatsapp(str_json, strlen(str_json)));
    CHECK(wh_deliver_not_on_whatsapp(str_text, strlen(str_text)));
    CHECK(!wh_deliver_not_on_whatsapp(exists, strlen(exists)));
    CHECK(!wh_deliver_not_on_whatsapp(schema, strlen(schema)));
    CHECK(!wh_deliver_not_on_whatsapp(plain, strlen(plain)));
    CHECK(!wh_deliver_not_on_whatsapp("not json", 8));
    CHECK(!wh_deliver_not_on_whatsapp(NULL, 0));
}

/* ---- backoff, Retry-After -------------------------------------------------------------------- */

static void test_backoff(void)
{
    CHECK_INT(wh_deliver_backoff(1, 2000, 600000, 0.5), 2000);
    CHECK_INT(wh_deliver_backoff(2, 2000, 600000, 0.5), 4000);
    CHECK_INT(wh_deliver_backoff(4, 2000, 600000, 0.5), 16000);
    CHECK_INT(wh_deliver_backoff(30, 2000, 600000, 0.5), 600000); /* capped */
    CHECK_INT(wh_deliver_backoff(10000, 2000, 600000, 0.5), 600000); /* no overflow */
    CHECK_INT(wh_deliver_backoff(0, 2000, 600000, 0.5), 2000);
    CHECK_INT(wh_deliver_backoff(1, 1000, 600000, 0.0), 800);
    CHECK_INT(wh_deliver_backoff(1, 1, 1, 0.0), 1); /* never below 1 */
    int ok = 1;
    for (int a = 1; a <= 12; a++) {
        int64_t w = 1000;
        for (int i = 1; i < a && w < 60000; i++)
            w *= 2;
        if (w > 60000)
            w = 60000;
        for (double u = 0.0; u < 1.0; u += 0.01) {
            int64_t b = wh_deliver_backoff(a, 1000, 60000, u);
            ok &= b >= w * 8 / 10 && b <= w * 12 / 10;
        }
    }
    CHECK(ok);
    CHECK(wh_deliver_backoff(1, 1000, 60000, 0.999) > 1190);
}

static void test_retry_after(void)
{
    CHECK_INT(wh_deliver_retry_after_ms("120", 0), 120000);
    CHECK_INT(wh_deliver_retry_after_ms(" 5 ", 0), 5000);
    CHECK_INT(wh_deliver_retry_after_ms("0", 0), 0);
    CHECK_INT(wh_deliver_retry_after_ms("5x", 0), -1);
    CHECK_INT(wh_deliver_retry_after_ms("abc", 0), -1);
    CHECK_INT(wh_deliver_retry_after_ms("", 0), -1);
    CHECK_INT(wh_deliver_retry_after_ms(NULL, 0), -1);
    CHECK_INT(wh_deliver_retry_after_ms("99999999999", 0), 86400000);
    /* Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 s. */
    int64_t date_ms = 1445412480000LL;
    CHECK_INT(wh_deliver_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", date_ms - 30000), 30000);
    CHECK_INT(wh_deliver_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", date_ms + 5000), 0);
}

/* ---- circuit breaker, token bucket ----------------------------------------------------------- */

static void test_circuit(void)
{
    wh_circuit_t c;
    wh_circuit_init(&c, 3, 1000);
    int64_t t = 100000;
    CHECK(wh_circuit_allow(&c, t));
    CHECK_INT(wh_circuit_failure(&c, t, 0), 0);
    CHECK_INT(wh_circuit_failure(&c, t, 0), 0);
    CHECK_STR(wh_circuit_state_name(&c), "closed");
    CHECK_INT(wh_circuit_success(&c, t), 0); /* a success resets the streak */
    CHECK_INT(wh_circuit_failure(&c, t, 0), 0);
    CHECK_INT(wh_circuit_failure(&c, t, 0), 0);
    CHECK_INT(wh_circuit_failure(&c, t, 0), 1); /* the third in a row opens it */
    CHECK_STR(wh_circuit_state_name(&c), "open");
    CHECK(!wh_circuit_allow(&c, t + 999));
    CHECK(wh_circuit_allow(&c, t + 1000)); /* one probe */
    CHECK_STR(wh_circuit_state_name(&c), "half_open");
    CHECK(!wh_circuit_allow(&c, t + 1001));
    CHECK_INT(wh_circuit_failure(&c, t + 1500, 0), 0); /* failed probe: open again */
    CHECK_STR(wh_circuit_state_name(&c), "open");
    CHECK(!wh_circuit_allow(&c, t + 2499));
    CHECK(wh_circuit_allow(&c, t + 2500));
    wh_circuit_release(&c); /* an abandoned probe frees the slot */
    CHECK(wh_circuit_allow(&c, t + 2501));
    CHECK_INT(wh_circuit_success(&c, t + 2600), 1); /* recovery */
    CHECK_STR(wh_circuit_state_name(&c), "closed");
    CHECK_INT(c.failures, 0);
    /* A misconfiguration opens it at once. */
    CHECK_INT(wh_circuit_failure(&c, t + 3000, 1), 1);
    CHECK(c.misconfigured);
    CHECK(!wh_circuit_allow(&c, t + 3999));
    /* Failures of requests started before it opened change nothing. */
    CHECK_INT(wh_circuit_failure(&c, t + 3100, 0), 0);
    CHECK_INT(c.open_until, t + 4000);
}

static void test_tbucket(void)
{
    wh_tbucket_t b;
    int64_t t = 1000000, w = 0;
    wh_tbucket_init(&b, 60, 2, t); /* one per second, two at once */
    CHECK(wh_tbucket_take(&b, t, &w));
    CHECK(wh_tbucket_take(&b, t, &w));
    CHECK(!wh_tbucket_take(&b, t, &w));
    CHECK_INT(w, 1000);
    CHECK(!wh_tbucket_take(&b, t + 500, &w));
    CHECK_INT(w, 500);
    CHECK(wh_tbucket_take(&b, t + 1000, &w));
    CHECK(!wh_tbucket_take(&b, t + 900, &w)); /* the clock went back: nothing refilled */
    CHECK(wh_tbucket_take(&b, t + 100000, &w));
    CHECK(wh_tbucket_take(&b, t + 100000, &w));
    CHECK(!wh_tbucket_take(&b, t + 100000, &w)); /* idle time refills up to the burst only */

    /* Twenty's budget: 90/min with a burst of 10 never exceeds 100 in any 60 s window. */
    wh_tbucket_init(&b, 90, 10, 0);
    static int64_t at[1000];
    int n = 0;
    for (int64_t ms = 0; ms < 180000 && n < 1000; ms++)
        if (wh_tbucket_take(&b, ms, NULL))
            at[n++] = ms;
    int worst = 0;
    for (int i = 0, j = 0; i < n; i++) {
        while (at[i] - at[j] >= 60000)
            j++;
        if (i - j + 1 > worst)
            worst = i - j + 1;
    }
    CHECK(worst <= 100);
    CHECK(worst >= 95); /* and the budget is actually used */
}

/* ---- request and answer shapes --------------------------------------------------------------- */

static void test_evolution_body(void)
{
    json_t *p = json_pack("{s:s,s:s,s:s}", "type", "send_text", "to", "34600111222", "text",
                          "Hola 👋");
    char *b = wh_deliver_evolution_body(p);
    CHECK_STR(b, "{\"number\":\"34600111222\",\"text\":\"Hola 👋\"}");
    free(b);
    json_object_set_new(p, "delay", json_integer(1200));
    json_object_set_new(p, "link_preview", json_false());
    json_object_set_new(p, "quoted", json_string("A5F3C8E1B2D4967F0E1A2B3C4D5E6F70"));
    b = wh_deliver_evolution_body(p);
    json_t *j = b != NULL ? json_loads(b, 0, NULL) : NULL;
    CHECK_INT(json_integer_value(json_object_get(j, "delay")), 1200);
    CHECK(json_is_false(json_object_get(j, "linkPreview")));
    CHECK_STR(json_string_value(
                  json_object_get(json_object_get(json_object_get(j, "quoted"), "key"), "id")),
              "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70");
    CHECK(json_object_get(j, "to") == NULL && json_object_get(j, "type") == NULL);
    /* The same keys as the reference request. */
    char *ref = fixture("send-text-request.json");
    json_t *rj = json_loads(ref, 0, NULL);
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) CHECK(json_object_get(rj, k) != NULL);
    json_decref(rj);
    free(ref);
    json_decref(j);
    free(b);
    json_object_del(p, "to");
    CHECK(wh_deliver_evolution_body(p) == NULL);
    json_decref(p);

    char *resp = fixture("send-text-response-201.json");
    char *wa = NULL, *jid = NULL;
    int64_t ts = 0;
    CHECK_INT(wh_deliver_evolution_sent(resp, strlen(resp), &wa, &jid, &ts), 0);
    CHECK_STR(wa, "3EB07F3A9C1D2E4B5A6F70");
    CHECK_STR(jid, "34600111222@s.whatsapp.net");
    CHECK_INT(ts, 1761141987);
    free(wa);
    free(jid);
    free(resp);
    CHECK_INT(wh_deliver_evolution_sent("{\"status\":\"x\"}", 14, &wa, &jid, &ts), WH_EINVAL);
    CHECK(wa == NULL && jid == NULL);

    char key[64];
    wh_deliver_recipient_key("34600111222", key, sizeof(key));
    CHECK_STR(key, "34600111222");
    wh_deliver_recipient_key("34600111222@s.whatsapp.net", key, sizeof(key));
    CHECK_STR(key, "34600111222");
    wh_deliver_recipient_key("34600111222:12@s.whatsapp.net", key, sizeof(key));
    CHECK_STR(key, "34600111222");
    wh_deliver_recipient_key("207581245931618@lid", key, sizeof(key));
    CHECK_STR(key, "207581245931618@lid");
    wh_deliver_recipient_key("120363025246125888@g.us", key, sizeof(key));
    CHECK_STR(key, "");
}

static void test_alert_bodies(void)
{
    json_t *p = json_pack("{s:s,s:s,s:s,s:{s:s,s:i}}", "type", "alert", "kind", "handoff", "text",
                          "María wants a human", "fields", "phone", "34600111222", "score", 80);
    int64_t at = 1767607323004LL; /* 2026-01-05T10:02:03.004Z */
    char iso[40];
    wh_deliver_iso_time(at, iso, sizeof(iso));
    CHECK_STR(iso, "2026-01-05T10:02:03.004Z");
    char *b = wh_deliver_alert_body("json", p, "acme-bot", at);
    json_t *j = b != NULL ? json_loads(b, 0, NULL) : NULL;
    CHECK_STR(json_string_value(json_object_get(j, "kind")), "handoff");
    CHECK_STR(json_string_value(json_object_get(j, "text")), "María wants a human");
    CHECK_STR(json_string_value(json_object_get(j, "instance")), "acme-bot");
    CHECK_STR(json_string_value(json_object_get(j, "at")), "2026-01-05T10:02:03.004Z");
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "fields"), "score")), 80);
    json_decref(j);
    free(b);
    b = wh_deliver_alert_body("json", p, "", at);
    j = json_loads(b, 0, NULL);
    CHECK(json_is_null(json_object_get(j, "instance")));
    json_decref(j);
    free(b);

    b = wh_deliver_alert_body("slack", p, "acme-bot", at);
    j = json_loads(b, 0, NULL);
    CHECK_INT(json_object_size(j), 1);
    const char *text = json_string_value(json_object_get(j, "text"));
    CHECK_CONTAINS(text, "[wahook] handoff (acme-bot): María wants a human");
    CHECK_CONTAINS(text, "• phone: 34600111222");
    CHECK_CONTAINS(text, "• score: 80");
    json_decref(j);
    free(b);

    char *subject = NULL, *body = NULL;
    CHECK_INT(wh_deliver_alert_mail(p, "acme-bot", at, &subject, &body), 0);
    CHECK_STR(subject, "[wahook] handoff: María wants a human");
    CHECK_CONTAINS(body, "María wants a human\n");
    CHECK_CONTAINS(body, "instance: acme-bot\n");
    CHECK_CONTAINS(body, "phone: 34600111222\n");
    free(subject);
    free(body);
    json_object_del(p, "kind");
    CHECK(wh_deliver_alert_body("json", p, "x", at) == NULL);
    json_decref(p);
}

/* ---- end to end: an HTTP server inside the test ---------------------------------------------- */

#define MAX_CALLS 64

typedef struct call {
    char method[8];
    char path[256];
    char apikey[64];
    char body[1024];
} call_t;

static struct {
    int fd;
    int port;
    pthread_t tid;
    atomic_int stop;
    pthread_mutex_t mu;
    call_t calls[MAX_CALLS];
    int ncalls;
    /* scripted answers for sendText, consumed in order; then 201 */
    int script[16];
    int nscript, pos;
    int hang_ms; /* > 0: the next sendText answers only after this long */
    char state[16];
    int seq;
} srv;

static int srv_count(const char *prefix)
{
    pthread_mutex_lock(&srv.mu);
    int n = 0;
    for (int i = 0; i < srv.ncalls; i++)
        n += strncmp(srv.calls[i].path, prefix, strlen(prefix)) == 0;
    pthread_mutex_unlock(&srv.mu);
    return n;
}

static void srv_handle(int c)
{
    char buf[8192];
    size_t len = 0;
    char *end = NULL;
    while (len < sizeof(buf) - 1 && end == NULL) {
        ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (end == NULL)
        return;
    call_t call;
    memset(&call, 0, sizeof(call));
    sscanf(buf, "%7s %255s", call.method, call.path);
    size_t clen = 0;
    for (char *h = strstr(buf, "\r\n"); h != NULL && h < end; h = strstr(h + 2, "\r\n")) {
        if (strncasecmp(h + 2, "content-length:", 15) == 0)
            clen = (size_t)strtoul(h + 17, NULL, 10);
        if (strncasecmp(h + 2, "apikey:", 7) == 0)
            sscanf(h + 9, "%63s", call.apikey);
    }
    size_t have = len - (size_t)(end + 4 - buf);
    while (have < clen && len < sizeof(buf) - 1) {
        ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        have += (size_t)n;
    }
    buf[len] = '\0';
    snprintf(call.body, sizeof(call.body), "%s", end + 4);

    int status = 201;
    char resp[512];
    int hang = 0;
    pthread_mutex_lock(&srv.mu);
    if (srv.ncalls < MAX_CALLS)
        srv.calls[srv.ncalls++] = call;
    if (strncmp(call.path, "/instance/connectionState/", 26) == 0) {
        status = 200;
        snprintf(resp, sizeof(resp), "{\"instance\":{\"instanceName\":\"x\",\"state\":\"%s\"}}",
                 srv.state);
    } else if (strcmp(call.path, "/alerts") == 0) {
        status = 200;
        snprintf(resp, sizeof(resp), "{\"ok\":true}");
    } else {
        if (srv.pos < srv.nscript)
            status = srv.script[srv.pos++];
        hang = srv.hang_ms;
        srv.hang_ms = 0;
        if (status == 201)
            snprintf(resp, sizeof(resp),
                     "{\"key\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":true,"
                     "\"id\":\"3EB0TEST%014d\"},\"status\":\"PENDING\","
                     "\"messageTimestamp\":1761141987}",
                     ++srv.seq);
        else if (status == 400)
            snprintf(resp, sizeof(resp), "{\"status\":400,\"error\":\"Bad Request\",\"response\":"
                                         "{\"message\":[{\"jid\":\"1@s.whatsapp.net\",\"exists\""
                                         ":false,\"number\":\"1\"}]}}");
        else
            snprintf(resp, sizeof(resp), "{\"status\":%d,\"response\":{\"message\":\"x\"}}",
                     status);
    }
    pthread_mutex_unlock(&srv.mu);
    if (hang > 0)
        usleep((useconds_t)hang * 1000);
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      status, strlen(resp));
    /* The client may have given up (a timeout test): no SIGPIPE. */
    if (send(c, head, (size_t)hl, MSG_NOSIGNAL) < 0 ||
        send(c, resp, strlen(resp), MSG_NOSIGNAL) < 0)
        return;
}

static void *srv_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&srv.stop)) {
        int c = accept(srv.fd, NULL, NULL);
        if (c < 0)
            continue;
        srv_handle(c);
        close(c);
    }
    return NULL;
}

static int srv_start(void)
{
    pthread_mutex_init(&srv.mu, NULL);
    snprintf(srv.state, sizeof(srv.state), "open");
    srv.fd = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(srv.fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    struct timeval tv = {.tv_usec = 200000};
    setsockopt(srv.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (bind(srv.fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(srv.fd, 64) != 0 ||
        getsockname(srv.fd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    srv.port = ntohs(a.sin_port);
    return pthread_create(&srv.tid, NULL, srv_main, NULL);
}

static void srv_stop(void)
{
    atomic_store(&srv.stop, 1);
    pthread_join(srv.tid, NULL);
    close(srv.fd);
    pthread_mutex_destroy(&srv.mu);
}

static void srv_script(const int *statuses, int n)
{
    pthread_mutex_lock(&srv.mu);
    for (int i = 0; i < n; i++)
        srv.script[i] = statuses[i];
    srv.nscript = n;
    srv.pos = 0;
    pthread_mutex_unlock(&srv.mu);
}

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
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return buf;
}

/* Waits (at most 10 s) until the query's first column equals want. */
static int wait_text(const char *path, const char *want, const char *sql)
{
    char buf[512];
    for (int i = 0; i < 1000; i++) {
        if (strcmp(q_text(path, buf, sizeof(buf), "%s", sql), want) == 0)
            return 1;
        usleep(10000);
    }
    fprintf(stderr, "waited for \"%s\" from %s, last \"%s\"\n", want, sql, buf);
    return 0;
}

static int64_t put_send(const char *path, const char *instance, const char *to, const char *text)
{
    int64_t now = wh_now_ms();
    exec_sql(path,
             "INSERT INTO outbox(event_id, instance, contact_key, target, kind, payload,"
             " created_at, updated_at) VALUES(NULL, '%s', '%s', 'evolution', 'send_text',"
             " '{\"type\":\"send_text\",\"to\":\"%s\",\"text\":\"%s\"}', %lld, %lld)",
             instance, to, to, text, (long long)now, (long long)now);
    char buf[32];
    return strtoll(q_text(path, buf, sizeof(buf), "SELECT max(id) FROM outbox"), NULL, 10);
}

static void test_end_to_end(void)
{
    if (srv_start() != 0) {
        CHECK(!"cannot start the test server");
        return;
    }
    char dir[] = "/tmp/wh-deliver-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return;
    char path[128], url[64], sql[256], buf[512];
    snprintf(path, sizeof(path), "%s/wahook.db", dir);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", srv.port);
    wh_store_opts_t so = {.path = path, .busy_timeout_ms = 20000};
    wh_store_t *store = NULL;
    char err[512] = "";
    CHECK_INT(wh_store_open(&store, &so, err, sizeof(err)), 0);

    wh_config_t conf;
    memset(&conf, 0, sizeof(conf));
    conf.deliverers = 2; /* two threads: partitions, shared limiters */
    conf.delivery_max_attempts = 5;
    conf.delivery_retry_base_ms = 20;
    conf.delivery_retry_max_ms = 40;
    conf.delivery_retry_total_ms = 600000;
    conf.circuit_failures = 5;
    conf.circuit_open_ms = 300;
    conf.dead_alert_interval_ms = 600000;
    conf.poll_interval_ms = 50;
    conf.shutdown_timeout_ms = 2000;
    conf.alert_format = "json";
    char alert_url[80];
    snprintf(alert_url, sizeof(alert_url), "http://127.0.0.1:%d/alerts", srv.port);
    wh_strlist_push(&conf.alert_urls, alert_url, strlen(alert_url));
    conf.evolution.url = url;
    conf.evolution.api_key = "secret-key";
    conf.evolution.tls_verify = 1;
    conf.evolution.rate_per_min = 60000;
    conf.evolution.burst = 100;
    conf.evolution.concurrency = 4;
    conf.evolution.timeout_ms = 500;
    conf.evolution.connect_timeout_ms = 1000;
    conf.evolution.echo_grace_ms = 1500;

    /* Known connection state 'open', so no connectionState request is needed. */
    exec_sql(path, "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
                   " ('acme', 'open', 1, 1)");
    wh_deliverers_t *d = NULL;
    CHECK_INT(wh_deliverers_start(&d, &conf, store, path, NULL, err, sizeof(err)), 0);
    if (d == NULL) {
        fprintf(stderr, "deliverers: %s\n", err);
        wh_store_close(store);
        srv_stop();
        return;
    }

    /* 1. Delivered with the apikey and the reference body; the message is recorded as ours. */
    int64_t id = put_send(path, "acme", "34600111222", "Hola");
    wh_deliverers_wake(d);
    snprintf(sql, sizeof(sql), "SELECT status FROM outbox WHERE id = %lld", (long long)id);
    CHECK(wait_text(path, "done", sql));
    pthread_mutex_lock(&srv.mu);
    call_t first = srv.calls[0];
    pthread_mutex_unlock(&srv.mu);
    CHECK_STR(first.method, "POST");
    CHECK_STR(first.path, "/message/sendText/acme");
    CHECK_STR(first.apikey, "secret-key");
    CHECK_STR(first.body, "{\"number\":\"34600111222\",\"text\":\"Hola\"}");
    CHECK_STR(q_text(path, buf, sizeof(buf), "SELECT origin || '/' || direction || '/' ||"
                     " contact_key FROM messages WHERE wa_id = '3EB0TEST00000000000001'"),
              "wahook/out/34600111222");

    /* 2. 5xx is retried; the third attempt succeeds. */
    int two500[] = {500, 503};
    srv_script(two500, 2);
    id = put_send(path, "acme", "34600111222", "Retry me");
    wh_deliverers_wake(d);
    snprintf(sql, sizeof(sql), "SELECT status || ' ' || attempts FROM outbox WHERE id = %lld",
             (long long)id);
    CHECK(wait_text(path, "done 2", sql));

    /* 3. exists:false: dead at once, contact flagged, one dead-letter alert. */
    int nowa[] = {400};
    srv_script(nowa, 1);
    id = put_send(path, "acme", "34600000000", "Anyone?");
    wh_deliverers_wake(d);
    snprintf(sql, sizeof(sql), "SELECT status || ' ' || attempts FROM outbox WHERE id = %lld",
             (long long)id);
    CHECK(wait_text(path, "dead 1", sql));
    CHECK(wait_text(path, "0", "SELECT on_whatsapp FROM contacts WHERE contact_key ="
                               " '34600000000'"));
    CHECK(wait_text(path, "1", "SELECT count(*) FROM outbox WHERE target = 'alert' AND"
                               " json_extract(payload, '$.kind') = 'dead_letter'"));

    /* 4. A wrong apikey (401): held without consuming attempts, one alert, delivered once the
     * target answers again (after the circuit's open time). */
    int bad[] = {401, 401};
    srv_script(bad, 2);
    int64_t h1 = put_send(path, "acme", "34600111222", "Held 1");
    wh_deliverers_wake(d);
    snprintf(sql, sizeof(sql), "SELECT status || ' ' || attempts FROM outbox WHERE id = %lld",
             (long long)h1);
    CHECK(wait_text(path, "done 0", sql));
    CHECK(wait_text(path, "1", "SELECT count(*) FROM outbox WHERE target = 'alert' AND"
                               " json_extract(payload, '$.kind') = 'target_misconfigured'"));
    CHECK(wait_text(path, "1", "SELECT count(*) FROM outbox WHERE target = 'alert' AND"
                               " json_extract(payload, '$.kind') = 'target_recovered'"));
    CHECK(wait_text(path, "0", "SELECT count(*) FROM outbox WHERE status = 'dead' AND"
                               " target = 'evolution' AND id > 3"));

    /* 5. Paused while the instance is not open; sent once it is. */
    exec_sql(path, "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
                   " ('acme', 'close', 2, 2)");
    usleep(1200 * 1000); /* the deliverer's view of the state is at most 1 s old */
    int before = srv_count("/message/sendText/");
    id = put_send(path, "acme", "34600111222", "Wait for open");
    wh_deliverers_wake(d);
    usleep(400 * 1000);
    CHECK_INT(srv_count("/message/sendText/"), before);
    json_t *st = wh_deliverers_status(d);
    CHECK_STR(json_string_value(json_array_get(json_object_get(st, "paused_instances"), 0)),
              "acme");
    CHECK_STR(json_string_value(
                  json_object_get(json_object_get(json_object_get(st, "circuits"), "evolution"),
                                  "state")),
              "closed");
    json_decref(st);
    exec_sql(path, "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
                   " ('acme', 'open', 3, 3)");
    snprintf(sql, sizeof(sql), "SELECT status FROM outbox WHERE id = %lld", (long long)id);
    CHECK(wait_text(path, "done", sql));

    /* 6. Unknown state: connectionState is asked first ('close' pauses). */
    pthread_mutex_lock(&srv.mu);
    snprintf(srv.state, sizeof(srv.state), "close");
    pthread_mutex_unlock(&srv.mu);
    before = srv_count("/message/sendText/");
    id = put_send(path, "beta", "34600111222", "Beta");
    wh_deliverers_wake(d);
    for (int i = 0; i < 300 && srv_count("/instance/connectionState/beta") == 0; i++)
        usleep(10000);
    CHECK_INT(srv_count("/instance/connectionState/beta"), 1);
    usleep(300 * 1000);
    CHECK_INT(srv_count("/message/sendText/"), before);
    snprintf(sql, sizeof(sql), "SELECT status FROM outbox WHERE id = %lld", (long long)id);
    exec_sql(path, "INSERT INTO connection_history(instance, state, at, event_id) VALUES"
                   " ('beta', 'open', 4, 4)");
    CHECK(wait_text(path, "done", sql));

    /* 7. A timed-out send is not resent when its echo shows up during the grace window. */
    pthread_mutex_lock(&srv.mu);
    srv.hang_ms = 900; /* longer than the 500 ms timeout */
    pthread_mutex_unlock(&srv.mu);
    before = srv_count("/message/sendText/");
    id = put_send(path, "acme", "34600111222", "Timed out");
    wh_deliverers_wake(d);
    snprintf(sql, sizeof(sql), "SELECT attempts FROM outbox WHERE id = %lld", (long long)id);
    CHECK(wait_text(path, "1", sql));
    /* The echo (processing of send.message) records the message with origin api. */
    exec_sql(path, "INSERT INTO messages(instance, wa_id, contact_key, direction, origin, text,"
                   " created_at, updated_at) VALUES('acme', 'ECHO1', '34600111222', 'out', 'api',"
                   " 'Timed out', %lld, %lld)",
             (long long)wh_now_ms(), (long long)wh_now_ms());
    snprintf(sql, sizeof(sql), "SELECT status || ' ' || json_extract(response, '$.echo') FROM"
                               " outbox WHERE id = %lld", (long long)id);
    CHECK(wait_text(path, "done ECHO1", sql));
    CHECK_INT(srv_count("/message/sendText/"), before + 1);
    CHECK(wait_text(path, "wahook", "SELECT origin FROM messages WHERE wa_id = 'ECHO1'"));

    /* Counters follow the commit of the outcomes (a moment after the rows change). */
    json_int_t delivered = 0;
    for (int i = 0; i < 200 && delivered < 6; i++) {
        json_t *status = wh_deliverers_status(d);
        delivered = json_integer_value(json_object_get(
            json_object_get(json_object_get(status, "targets"), "evolution"), "delivered"));
        json_decref(status);
        if (delivered < 6)
            usleep(10000);
    }
    CHECK(delivered >= 6);
    /* The alerts raised above went out to the alert URL. */
    CHECK(wait_text(path, "0", "SELECT count(*) FROM outbox WHERE target = 'alert' AND"
                               " status <> 'done'"));
    CHECK(srv_count("/alerts") >= 3);
    wh_deliverers_stop(d);
    wh_store_close(store);
    srv_stop();
    wh_strlist_clear(&conf.alert_urls);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

int main(void)
{
    test_classify();
    test_not_on_whatsapp();
    test_backoff();
    test_retry_after();
    test_circuit();
    test_tbucket();
    test_evolution_body();
    test_alert_bodies();
    test_end_to_end();
    curl_global_cleanup();
    WH_TEST_MAIN_END();
}
