/* Unit tests of the live event feed (runtime/live.c): query filters, the SSE message format, and
 * the streams themselves on a real h2o loop in this thread — heartbeat, filters, the client
 * cap, the slow-client cut, drops when the queue is full, Last-Event-ID replay from a store,
 * and shutdown ending every stream. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include <h2o.h>
#include <h2o/multithread.h>

#include "wahook/admin.h"
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/live.h"
#include "wahook/store.h"
#include "wh_test.h"

/* ---- stand-ins for the server's side of admin.h (weak: the real ones win if linked) -------- */

__attribute__((weak)) void wh_admin_respond(h2o_req_t *req, int status, const char *ct,
                                            const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = "X";
    req->res.content_length = len;
    const char *t = ct != NULL ? ct : "application/json";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, t, strlen(t));
    h2o_send_inline(req, body, len);
}

__attribute__((weak)) void wh_admin_respond_json(h2o_req_t *req, int status, json_t *obj)
{
    char *t = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    wh_admin_respond(req, status, NULL, t != NULL ? t : "{}", t != NULL ? strlen(t) : 2);
    free(t);
}

__attribute__((weak)) void wh_admin_respond_error(h2o_req_t *req, int status, const char *msg)
{
    wh_admin_respond_json(req, status, json_pack("{s:s}", "error", msg));
}

__attribute__((weak)) int wh_admin_token_ok(const wh_admin_env_t *env, h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    const char *tok = env->conf->admin.token;
    if (i < 0)
        return 0;
    h2o_iovec_t a = req->headers.entries[i].value;
    return a.len == 7 + strlen(tok) && memcmp(a.base, "Bearer ", 7) == 0 &&
           memcmp(a.base + 7, tok, strlen(tok)) == 0;
}

__attribute__((weak)) int wh_admin_defer(h2o_req_t *req,
                                         void (*fn)(void *arg, wh_admin_reply_t *reply),
                                         void *arg)
{
    wh_admin_reply_t r = {0};
    fn(arg, &r); /* synchronous: good enough for a test */
    wh_admin_respond(req, r.status, r.content_type, r.body, r.body ? strlen(r.body) : 0);
    free(r.body);
    return 0;
}

/* ---- pure functions ------------------------------------------------------------------------ */

static void test_filter_parse(void)
{
    wh_live_filter_t f;
    char err[160];
    int64_t limit, before, last;
    const char *q = "event=messages.upsert,send.message&instance=acme%20bot&contact=34600111222"
                    "&contact=207581245931618%40lid&limit=20&before=99&status=dead";
    CHECK_INT(wh_live_filter_parse(&f, q, strlen(q), &limit, &before, &last, err, sizeof(err)),
              WH_OK);
    CHECK_INT(f.num_events, 2);
    CHECK_STR(f.events[1], "send.message");
    CHECK_INT(f.num_instances, 1);
    CHECK_STR(f.instances[0], "acme bot");
    CHECK_INT(f.num_contacts, 2);
    CHECK_STR(f.contacts[1], "207581245931618@lid");
    CHECK_STR(f.status, "dead");
    CHECK_INT(limit, 20);
    CHECK_INT(before, 99);
    CHECK_INT(last, -1);
    CHECK(wh_live_filter_match(&f, "send.message", "acme bot", "34600111222"));
    CHECK(!wh_live_filter_match(&f, "qrcode.updated", "acme bot", "34600111222"));
    CHECK(!wh_live_filter_match(&f, "send.message", "other", "34600111222"));
    CHECK(!wh_live_filter_match(&f, "send.message", "acme bot", NULL));
    wh_live_filter_clear(&f);

    /* An empty filter passes everything, contact-less events included. */
    CHECK_INT(wh_live_filter_parse(&f, NULL, 0, NULL, NULL, &last, err, sizeof(err)), WH_OK);
    CHECK(wh_live_filter_match(&f, "connection.update", "x", NULL));
    wh_live_filter_clear(&f);

    static const struct {
        const char *q;
        int with_limit;
        const char *msg;
    } bad[] = {
        {"foo=1", 1, "unknown query parameter: foo"},
        {"limit=0", 1, "limit must be"},
        {"limit=501", 1, "limit must be"},
        {"limit=abc", 1, "limit must be"},
        {"before=0", 1, "before must be"},
        {"status=gone", 1, "status must be"},
        {"status=dead", 0, "unknown query parameter: status"},
        {"limit=5", 0, "unknown query parameter: limit"},
        {"last_event_id=-1", 0, "last_event_id must be"},
        {"event=bad%20name", 0, "invalid event"},
        {"contact=a%22b", 0, "invalid contact"},
        {"instance=a%0ab", 0, "invalid instance"},
        {"event=a%zz", 0, "malformed query string"},
        {"event=a%00", 0, "malformed query string"},
        {"event=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", 0, "too many values for event"},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        int rc = bad[i].with_limit
                     ? wh_live_filter_parse(&f, bad[i].q, strlen(bad[i].q), &limit, &before, NULL,
                                            err, sizeof(err))
                     : wh_live_filter_parse(&f, bad[i].q, strlen(bad[i].q), NULL, NULL, &last,
                                            err, sizeof(err));
        CHECK_INT(rc, WH_EINVAL);
        CHECK_CONTAINS(err, bad[i].msg);
        wh_live_filter_clear(&f);
    }
}

static void test_format(void)
{
    size_t len;
    const char body[] = "{\"a\":1,\n\"b\":\"x\"}";
    char *s = wh_live_format(7, 1000, "in\"st", "messages.upsert", "346\n00", body,
                             strlen(body), 1024, &len);
    CHECK(s != NULL);
    CHECK_INT(len, strlen(s));
    CHECK_STR(s, "id: 7\ndata: {\"id\":7,\"received_at\":1000,\"instance\":\"in\\\"st\","
                 "\"event\":\"messages.upsert\",\"contact_key\":\"346\\u000a00\","
                 "\"body\":{\"a\":1, \"b\":\"x\"}}\n\n");
    /* The data line is valid JSON. */
    json_error_t jerr;
    const char *data = strstr(s, "data: ") + 6;
    json_t *j = json_loadb(data, strlen(data) - 2, 0, &jerr);
    CHECK(j != NULL);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "body"), "a")), 1);
    json_decref(j);
    free(s);

    s = wh_live_format(8, 1, "i", "e", NULL, body, strlen(body), 4, &len);
    CHECK_STR(s, "id: 8\ndata: {\"id\":8,\"received_at\":1,\"instance\":\"i\",\"event\":\"e\","
                 "\"contact_key\":null,\"body\":null,\"body_omitted\":true}\n\n");
    free(s);
}

/* ---- a loop with the module mounted ------------------------------------------------------- */

static h2o_evloop_t *loop;
static h2o_globalconf_t gconf;
static h2o_context_t hctx;
static h2o_multithread_queue_t *queue;
static h2o_accept_ctx_t actx;
static h2o_socket_t *listener;
static wh_admin_env_t env;
static wh_config_t conf;
static wh_admin_module_t mod;
static int port;

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    if (!mod.serve(mod.self, &env, req, req->path_normalized))
        wh_admin_respond_error(req, 404, "not found");
    return 0;
}

static void on_accept(h2o_socket_t *l, const char *err)
{
    h2o_socket_t *s;
    if (err != NULL)
        return;
    while ((s = h2o_evloop_socket_accept(l)) != NULL)
        h2o_accept(&actx, s);
}

static void server_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    loop = h2o_evloop_create();
    h2o_config_init(&gconf);
    h2o_hostconf_t *hc = h2o_config_register_host(&gconf, h2o_iovec_init(H2O_STRLIT("default")),
                                                  65535);
    h2o_pathconf_t *pc = h2o_config_register_path(hc, "/", 0);
    h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = on_req;
    h2o_context_init(&hctx, loop, &gconf);
    queue = h2o_multithread_create_queue(loop);
    actx.ctx = &hctx;
    actx.hosts = gconf.hosts;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        perror("listen");
        exit(2);
    }
    port = ntohs(a.sin_port);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    listener = h2o_evloop_socket_create(loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    h2o_socket_read_start(listener, on_accept);
    conf.admin.token = "tok";
    env.conf = &conf;
    env.admin_loop = loop;
    env.admin_queue = queue;
}

typedef struct client {
    int fd;
    char buf[1 << 20];
    size_t len;
    int eof;
} client_t;

static client_t *client_open(const char *path, const char *extra_headers, int rcvbuf)
{
    client_t *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("connect");
        exit(2);
    }
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer tok\r\n%s\r\n", path,
                     extra_headers ? extra_headers : "");
    if (write(c->fd, req, (size_t)n) != n)
        exit(2);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    return c;
}

static void client_read(client_t *c)
{
    for (;;) {
        if (c->len + 1 >= sizeof(c->buf))
            return;
        ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len - 1);
        if (r > 0) {
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            c->eof = 1;
        return;
    }
}

/* Keeps the last 8 KiB of what c received, for clients that read a lot. */
static void client_trim(client_t *c)
{
    if (c->len < (1 << 19))
        return;
    memmove(c->buf, c->buf + c->len - 8192, 8192);
    c->len = 8192;
    c->buf[c->len] = '\0';
}

static void client_close(client_t *c)
{
    close(c->fd);
    free(c);
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Runs the loop and reads the clients until pred holds or secs pass. */
static int pump(client_t **cs, size_t nc, double secs, int (*pred)(void *), void *arg)
{
    double end = wh_mono_now() + secs;
    for (int i = 0; i < 100000 && wh_mono_now() < end; i++) {
        h2o_evloop_run(loop, 5);
        for (size_t k = 0; k < nc; k++)
            client_read(cs[k]);
        if (pred != NULL && pred(arg))
            return 1;
    }
    return pred == NULL;
}

typedef struct {
    client_t *c;
    const char *needle;
    size_t n;
} want_t;

static int has_n(void *arg)
{
    want_t *w = arg;
    return count(w->c->buf, w->needle) >= w->n;
}

static int is_eof(void *arg)
{
    return ((client_t *)arg)->eof;
}

static void publish_text(wh_live_t *l, int64_t id, const char *event, const char *contact)
{
    char body[128];
    snprintf(body, sizeof(body), "{\"event\":\"%s\",\"n\":%lld}", event, (long long)id);
    wh_live_publish(l, id, 1000 + id, "acme", event, contact, body, strlen(body));
}

static void test_stream_basics(void)
{
    wh_live_opts_t o = {.db_path = "/nonexistent/x.db", .heartbeat_ms = 100, .max_clients = 2};
    wh_live_t *l = wh_live_new(&o);
    mod = wh_live_module(l, NULL);

    /* Nobody listens: publishing costs nothing and queues nothing. */
    publish_text(l, 1, "messages.upsert", "34600111222");
    json_t *st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "published")), 0);
    json_decref(st);

    /* Without the token: 401, and nothing is streamed. */
    client_t *anon = calloc(1, sizeof(*anon));
    {
        anon->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(connect(anon->fd, (struct sockaddr *)&a, sizeof(a)) == 0);
        const char r[] = "GET /api/events/stream HTTP/1.1\r\nHost: t\r\n\r\n";
        CHECK(write(anon->fd, r, sizeof(r) - 1) == (ssize_t)sizeof(r) - 1);
        fcntl(anon->fd, F_SETFL, O_NONBLOCK);
    }
    want_t w401 = {anon, "HTTP/1.1 401", 1};
    CHECK(pump(&anon, 1, 3, has_n, &w401));
    client_close(anon);

    client_t *all = client_open("/api/events/stream", NULL, 0);
    client_t *qr = client_open("/api/events/stream?event=qrcode.updated", NULL, 0);
    client_t *cs[3] = {all, qr, NULL};
    want_t w = {all, ": connected", 1};
    CHECK(pump(cs, 2, 3, has_n, &w));
    w.c = qr;
    CHECK(pump(cs, 2, 3, has_n, &w));
    CHECK_CONTAINS(all->buf, "HTTP/1.1 200");
    CHECK_CONTAINS(all->buf, "text/event-stream");

    /* Heartbeats every 100 ms. */
    w = (want_t){all, ": heartbeat", 2};
    CHECK(pump(cs, 2, 3, has_n, &w));

    /* A third stream is over the cap. */
    client_t *third = client_open("/api/events/stream", NULL, 0);
    cs[2] = third;
    w = (want_t){third, "HTTP/1.1 503", 1};
    CHECK(pump(cs, 3, 3, has_n, &w));
    CHECK_CONTAINS(third->buf, "too many event streams");

    /* Events reach the streams whose filter they pass. */
    publish_text(l, 11, "messages.upsert", "34600111222");
    publish_text(l, 12, "qrcode.updated", NULL);
    w = (want_t){all, "id: 12\n", 1};
    CHECK(pump(cs, 3, 3, has_n, &w));
    w = (want_t){qr, "id: 12\n", 1};
    CHECK(pump(cs, 3, 3, has_n, &w));
    CHECK_CONTAINS(all->buf, "id: 11\ndata: {\"id\":11,");
    CHECK(strstr(qr->buf, "id: 11\n") == NULL);
    CHECK(strstr(all->buf, "id: 11") < strstr(all->buf, "id: 12"));

    st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "clients")), 2);
    CHECK_INT(json_integer_value(json_object_get(st, "published")), 2);
    CHECK_INT(json_integer_value(json_object_get(st, "rejected")), 1);
    json_decref(st);

    /* A client that goes away frees its slot. */
    client_close(qr);
    client_close(third);
    cs[1] = all;
    w = (want_t){all, ": heartbeat", count(all->buf, ": heartbeat") + 3};
    CHECK(pump(cs, 1, 3, has_n, &w));
    st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "clients")), 1);
    json_decref(st);

    /* Shutdown ends the stream: the chunked body terminates and the connection closes. */
    wh_live_shutdown(l);
    CHECK(pump(cs, 1, 3, is_eof, all));
    CHECK(all->len >= 5 && memcmp(all->buf + all->len - 5, "0\r\n\r\n", 5) == 0);
    client_close(all);
    client_t *late = client_open("/api/events/stream", NULL, 0);
    w = (want_t){late, "HTTP/1.1 503", 1};
    CHECK(pump(&late, 1, 3, has_n, &w));
    client_close(late);
    pump(NULL, 0, 0.1, NULL, NULL);
    wh_live_free(l);
}

static void test_slow_client_and_drops(void)
{
    wh_live_opts_t o = {.db_path = "/nonexistent/x.db", .client_buffer = 8192,
                        .queue_max = 5, .heartbeat_ms = 60000};
    wh_live_t *l = wh_live_new(&o);
    mod = wh_live_module(l, NULL);
    client_t *fast = client_open("/api/events/stream", NULL, 0);
    client_t *slow = client_open("/api/events/stream", NULL, 1024);
    client_t *cs[2] = {fast, slow};
    want_t w = {fast, ": connected", 1};
    CHECK(pump(cs, 2, 3, has_n, &w));
    w.c = slow;
    CHECK(pump(cs, 2, 3, has_n, &w));

    /* The queue toward the loop holds 5: the loop does not run, so 15 of 20 are dropped. */
    for (int i = 1; i <= 20; i++)
        publish_text(l, i, "messages.upsert", "1");
    json_t *st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "dropped")), 15);
    json_decref(st);
    w = (want_t){fast, "event: dropped\ndata: {\"dropped\":15}", 1};
    CHECK(pump(cs, 1, 3, has_n, &w));
    CHECK_INT(count(fast->buf, "\ndata: {\"id\":"), 5);

    /* The slow client stops reading: it is cut off once 8 KiB wait for it; the fast one keeps
     * everything. Events go one loop turn at a time so the queue never drops any. */
    char big[2048];
    memset(big, 'x', sizeof(big));
    memcpy(big, "{\"pad\":\"", 8);
    memcpy(big + sizeof(big) - 3, "\"}", 3);
    int sent = 0;
    for (int i = 100; i < 1100; i++) {
        wh_live_publish(l, i, 1, "acme", "messages.upsert", "1", big, strlen(big));
        sent++;
        h2o_evloop_run(loop, 0);
        client_read(fast);
        client_trim(fast);
        st = wh_live_stats(l);
        int cut = json_integer_value(json_object_get(st, "slow_disconnects")) == 1;
        json_decref(st);
        if (cut)
            break;
    }
    st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "slow_disconnects")), 1);
    json_decref(st);
    /* The cut client's connection ends: draining it reaches EOF (or a reset). */
    for (int i = 0; i < 20000 && !slow->eof; i++) {
        h2o_evloop_run(loop, 1);
        client_read(fast);
        client_trim(fast);
        slow->len = 0; /* only EOF matters */
        client_read(slow);
    }
    CHECK(slow->eof);
    char last[32];
    snprintf(last, sizeof(last), "id: %d\n", 100 + sent - 1);
    w = (want_t){fast, last, 1};
    CHECK(pump(&fast, 1, 5, has_n, &w));
    CHECK(!fast->eof);
    st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "clients")), 1);
    json_decref(st);
    client_close(slow);
    client_close(fast);
    pump(NULL, 0, 0.1, NULL, NULL);
    wh_live_free(l);
}

static atomic_int stored;
static void on_stored(wh_ingest_t *job, int status, int64_t id, int duplicate)
{
    atomic_fetch_add(&stored, status == WH_OK ? 1 : 1000);
}

static void test_replay(void)
{
    char dir[] = "/tmp/wh-test-live-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], err[256];
    snprintf(path, sizeof(path), "%s/wahook.db", dir);
    wh_store_t *store = NULL;
    wh_store_opts_t so = {.path = path};
    CHECK_INT(wh_store_open(&store, &so, err, sizeof(err)), WH_OK);
    static wh_ingest_t jobs[6];
    static char bodies[6][96], ids[6][16];
    for (int i = 0; i < 6; i++) {
        const char *ev = i % 2 ? "qrcode.updated" : "messages.upsert";
        snprintf(ids[i], sizeof(ids[i]), "m%d", i);
        snprintf(bodies[i], sizeof(bodies[i]), "{\"event\":\"%s\",\"instance\":\"acme\",\"i\":%d}",
                 ev, i);
        jobs[i] = (wh_ingest_t){.instance = "acme", .event = ev, .dedup_id = ids[i],
                                .phone = i % 2 ? NULL : "34600111222", .body = bodies[i],
                                .body_len = strlen(bodies[i]), .received_at = 5000 + i,
                                .cb = on_stored};
        CHECK_INT(wh_store_submit(store, &jobs[i]), WH_OK);
    }
    for (int i = 0; i < 500 && atomic_load(&stored) < 6; i++)
        usleep(10000);
    CHECK_INT(atomic_load(&stored), 6);

    wh_live_opts_t o = {.db_path = path, .heartbeat_ms = 60000, .client_buffer = 1024};
    wh_live_t *l = wh_live_new(&o);
    mod = wh_live_module(l, NULL);
    /* Resume after id 2: 3..6 come back in order (several pages: a page is half a buffer),
     * then live events continue. The header beats the query parameter. */
    client_t *c = client_open("/api/events/stream?last_event_id=5", "Last-Event-ID: 2\r\n", 0);
    client_t *f = client_open("/api/events/stream?event=messages.upsert&last_event_id=0", NULL,
                              0);
    client_t *cs[2] = {c, f};
    want_t w = {c, "id: 6\n", 1};
    CHECK(pump(cs, 2, 5, has_n, &w));
    const char *p3 = strstr(c->buf, "id: 3\n"), *p4 = strstr(c->buf, "id: 4\n");
    const char *p5 = strstr(c->buf, "id: 5\n"), *p6 = strstr(c->buf, "id: 6\n");
    CHECK(strstr(c->buf, "id: 2\n") == NULL);
    CHECK(p3 != NULL && p4 > p3 && p5 > p4 && p6 > p5);
    CHECK_CONTAINS(c->buf, "\"body\":{\"event\":\"messages.upsert\",\"instance\":\"acme\",\"i\":2}");
    /* The filtered replay sends only messages.upsert: ids 1, 3, 5. */
    w = (want_t){f, "id: 5\n", 1};
    CHECK(pump(cs, 2, 5, has_n, &w));
    CHECK_INT(count(f->buf, "\ndata: "), 3);
    CHECK(strstr(f->buf, "qrcode.updated") == NULL);

    publish_text(l, 7, "messages.upsert", "34600111222");
    w = (want_t){c, "id: 7\n", 1};
    CHECK(pump(cs, 2, 3, has_n, &w));
    w.c = f;
    CHECK(pump(cs, 2, 3, has_n, &w));
    CHECK_INT(count(c->buf, "id: 6\n"), 1);
    json_t *st = wh_live_stats(l);
    CHECK_INT(json_integer_value(json_object_get(st, "replayed")), 7);
    json_decref(st);

    /* A bad Last-Event-ID is refused. */
    client_t *bad = client_open("/api/events/stream", "Last-Event-ID: x1\r\n", 0);
    w = (want_t){bad, "HTTP/1.1 400", 1};
    CHECK(pump(&bad, 1, 3, has_n, &w));
    client_close(bad);

    /* Freed with streams still open (the loop "stopped" under them): no leak, no crash. */
    wh_live_shutdown(l);
    pump(cs, 2, 0.3, NULL, NULL);
    CHECK(c->eof && f->eof);
    client_close(c);
    client_close(f);
    wh_live_free(l);
    wh_store_close(store);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    test_filter_parse();
    test_format();
    server_init();
    test_stream_basics();
    test_slow_client_and_drops();
    test_replay();
    WH_TEST_MAIN_END();
}
