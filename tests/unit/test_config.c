/* Tests of runtime/config.c: defaults, every type and bound, positions of errors, directive
 * placement, ${VAR} expansion, validation, and the sample conf/wahook.conf. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "wahook/config.h"
#include "wh_test.h"

static const char *const wh_vars[] = {
    "WEBHOOK_SECRET", "WEBHOOK_SECRET_PREVIOUS", "WEBHOOK_VERIFY_TOKEN", "EVOLUTION_INSTANCE_TOKEN",
    "EVOLUTION_API_KEY", "NEXT_EVOLUTION_API_KEY", "WAHOOK_ENV", "NODE_ENV", "WAHOOK_DATA_DIR",
    "WAHOOK_ADMIN_TOKEN", "WH_C_PORT", "WH_C_SECRET", "WH_C_OLD", "WH_C_EMPTY", "WH_C_HIDDEN",
};

static void reset_env(void)
{
    for (size_t i = 0; i < sizeof(wh_vars) / sizeof(wh_vars[0]); i++)
        unsetenv(wh_vars[i]);
}

static char err[512];

static int load(wh_config_t *c, const char *text)
{
    err[0] = '\0';
    return wh_config_load_string(c, "t.conf", text, strlen(text), err, sizeof(err));
}

/* Loads text, expecting failure with exactly the message want (position included). */
static void check_error(const char *text, const char *want)
{
    wh_config_t c;
    CHECK_INT(load(&c, text), WH_EINVAL);
    CHECK_STR(err, want);
    /* A failed load leaves nothing owned behind; freeing again is harmless. */
    CHECK(c.file == NULL && c.data_dir == NULL && c.num_routes == 0);
    wh_config_free(&c);
}

/* Same, for messages whose tail comes from libyaml: checks the prefix only. */
static void check_error_prefix(const char *text, const char *want)
{
    wh_config_t c;
    CHECK_INT(load(&c, text), WH_EINVAL);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    if (strncmp(err, want, strlen(want)) != 0)
        fprintf(stderr, "  got \"%s\", want prefix \"%s\"\n", err, want);
    wh_config_free(&c);
}

static void test_defaults(void)
{
    wh_config_t c;
    reset_env();
    CHECK_INT(load(&c, "listen: 8080\n"), 0);
    CHECK_STR(c.file, "t.conf");
    CHECK_INT(c.num_listen, 1);
    CHECK_INT(c.listen[0].port, 8080);
    CHECK(c.listen[0].host == NULL);
    CHECK(c.listen[0].certificate_file == NULL && c.listen[0].key_file == NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_INT(c.num_threads, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    CHECK_INT(c.limit_request_body, 1048576);
    CHECK_INT(c.http2, 0);
    CHECK(c.error_log == NULL);
    CHECK(c.access_log == NULL);
    CHECK_INT(c.num_routes, 0);
    CHECK_INT(c.env, WH_ENV_PRODUCTION);
    CHECK_STR(c.data_dir, "data");
    CHECK_STR(c.log_level, "info");
    CHECK_INT(c.shutdown_timeout_ms, 10000);
    CHECK_STR(c.admin.host, "127.0.0.1");
    CHECK_INT(c.admin.port, 8081);
    CHECK(c.admin.token == NULL);
    CHECK_INT(c.store_sync_full, 1);
    CHECK_INT(c.store_keep_media, 0);
    CHECK_INT(c.store_queue_size, 65536);
    CHECK_INT(c.store_batch_size, 512);
    CHECK_INT(c.store_max_size, 0);
    wh_config_free(&c);
    CHECK(c.file == NULL && c.data_dir == NULL && c.admin.host == NULL);

    /* An empty document is all defaults. */
    CHECK_INT(load(&c, ""), 0);
    CHECK_INT(c.num_listen, 0);
    CHECK_STR(c.data_dir, "data");
    wh_config_free(&c);
    CHECK_INT(load(&c, "# only a comment\n"), 0);
    wh_config_free(&c);

    /* The default mode follows WAHOOK_ENV, then NODE_ENV, and is production otherwise. */
    setenv("WAHOOK_ENV", "development", 1);
    CHECK_INT(load(&c, ""), 0);
    CHECK_INT(c.env, WH_ENV_DEVELOPMENT);
    wh_config_free(&c);
    unsetenv("WAHOOK_ENV");
    setenv("NODE_ENV", "development", 1);
    CHECK_INT(load(&c, ""), 0);
    CHECK_INT(c.env, WH_ENV_DEVELOPMENT);
    wh_config_free(&c);
    setenv("WAHOOK_ENV", "production", 1); /* WAHOOK_ENV wins over NODE_ENV */
    CHECK_INT(load(&c, ""), 0);
    CHECK_INT(c.env, WH_ENV_PRODUCTION);
    wh_config_free(&c);
    unsetenv("WAHOOK_ENV");
    setenv("NODE_ENV", "test", 1); /* not a wahook mode: production */
    CHECK_INT(load(&c, ""), 0);
    CHECK_INT(c.env, WH_ENV_PRODUCTION);
    wh_config_free(&c);
    /* An explicit directive overrides the environment. */
    setenv("NODE_ENV", "development", 1);
    CHECK_INT(load(&c, "wahook.env: production\n"), 0);
    CHECK_INT(c.env, WH_ENV_PRODUCTION);
    wh_config_free(&c);
    reset_env();
}

static void test_webhook_defaults(void)
{
    wh_config_t c;
    reset_env();
    CHECK_INT(load(&c, "hosts:\n"
                       "  default:\n"
                       "    paths:\n"
                       "      /hook:\n"
                       "        wahook.webhook:\n"),
              0);
    CHECK_INT(c.num_routes, 1);
    wh_route_conf_t *r = &c.routes[0];
    CHECK_STR(r->host, "default");
    CHECK_STR(r->path, "/hook");
    CHECK_INT(r->kind, WH_HANDLER_WEBHOOK);
    const wh_webhook_conf_t *w = &r->webhook;
    CHECK_INT(w->auth.hmac.secrets.n, 0);
    CHECK_STR(w->auth.hmac.header, "x-webhook-signature");
    CHECK_STR(w->auth.hmac.prefix, "sha256=");
    CHECK_INT(w->auth.token.secrets.n, 0);
    CHECK_STR(w->auth.token.header, "x-webhook-token");
    CHECK(w->auth.token.prefix == NULL);
    CHECK_INT(w->auth.jwt.secrets.n, 0);
    CHECK_INT(w->auth.jwt_leeway, 1800);
    CHECK_STR(w->auth.jwt_app, "evolution");
    CHECK_STR(w->auth.jwt_action, "webhook");
    CHECK_INT(w->auth.apikey.secrets.n, 0);
    CHECK(w->verify_token == NULL);
    CHECK_INT(w->allow.n, 0);
    CHECK_INT(w->trusted_proxies.n, 0);
    CHECK_INT(w->ip_rate_per_min, 100);
    CHECK_INT(w->instance_rate_per_min, 6000);
    CHECK_INT(w->instance_burst, 1000);
    CHECK_INT(w->commit_timeout_ms, 10000);
    CHECK_INT(w->offload_threshold, 262144);
    wh_config_free(&c);
}

static const char wh_full[] =
    "listen:\n"
    "  - port: 8080\n"
    "    host: 127.0.0.1\n"
    "  - 9090\n"
    "  - port: 8443\n"
    "    ssl:\n"
    "      certificate-file: /etc/cert.pem\n"
    "      key-file: /etc/key.pem\n"
    "num-threads: 3\n"
    "limit-request-body: 64M\n"
    "http1-upgrade-to-http2: on\n"
    "error-log: /var/log/e.log\n"
    "access-log: '-'\n"
    "wahook.env: development\n"
    "wahook.data-dir: /var/lib/wahook\n"
    "wahook.log-level: WARN\n"
    "wahook.shutdown-timeout: 1500\n"
    "wahook.admin:\n"
    "  host: ::1\n"
    "  port: 0\n"
    "  token: admintok\n"
    "wahook.store.synchronous: normal\n"
    "wahook.store.media: keep\n"
    "wahook.store.queue-size: 10000000\n"
    "wahook.store.batch-size: 1\n"
    "wahook.store.max-size: 2G\n"
    "hosts:\n"
    "  default:\n"
    "    paths:\n"
    "      /api/whatsapp/webhook:\n"
    "        wahook.webhook:\n"
    "          auth:\n"
    "            hmac:   {secrets: [h1, h2], header: X-Hub-Signature-256, prefix: \"\"}\n"
    "            token:  {secrets: t1, header: X-Token}\n"
    "            jwt:    {secrets: [j1], leeway: 2m, app: myapp, action: act}\n"
    "            apikey: {secrets: [a1, a2, a3]}\n"
    "          verify-token: vt\n"
    "          allow: [127.0.0.0/8, \"::1\"]\n"
    "          trusted-proxies: 10.0.0.1/32\n"
    "          rate-limit:\n"
    "            ip-per-minute: 5\n"
    "            instance-per-minute: 7\n"
    "            instance-burst: 9\n"
    "          commit-timeout: 2s\n"
    "          offload-threshold: 0\n"
    "      /status:\n"
    "        wahook.health: ON\n"
    "  example.com:\n"
    "    paths:\n"
    "      /hook:\n"
    "        wahook.webhook: {auth.apikey.secrets: k, rate-limit.ip-per-minute: 11}\n";

static void test_full(void)
{
    wh_config_t c;
    reset_env();
    CHECK_INT(load(&c, wh_full), 0);
    CHECK_STR(err, "");
    CHECK_INT(c.num_listen, 3);
    CHECK_STR(c.listen[0].host, "127.0.0.1");
    CHECK_INT(c.listen[0].port, 8080);
    CHECK(c.listen[1].host == NULL);
    CHECK_INT(c.listen[1].port, 9090);
    CHECK_INT(c.listen[2].port, 8443);
    CHECK_STR(c.listen[2].certificate_file, "/etc/cert.pem");
    CHECK_STR(c.listen[2].key_file, "/etc/key.pem");
    CHECK_INT(c.num_threads, 3);
    CHECK_INT(c.limit_request_body, 64 * 1048576);
    CHECK_INT(c.http2, 1);
    CHECK_STR(c.error_log, "/var/log/e.log");
    CHECK_STR(c.access_log, "-");
    CHECK_INT(c.env, WH_ENV_DEVELOPMENT);
    CHECK_STR(c.data_dir, "/var/lib/wahook");
    CHECK_STR(c.log_level, "warn");
    CHECK_INT(c.shutdown_timeout_ms, 1500); /* a bare number is in the base unit, ms */
    CHECK_STR(c.admin.host, "::1");
    CHECK_INT(c.admin.port, 0);
    CHECK_STR(c.admin.token, "admintok");
    CHECK_INT(c.store_sync_full, 0);
    CHECK_INT(c.store_keep_media, 1);
    CHECK_INT(c.store_queue_size, 10000000);
    CHECK_INT(c.store_batch_size, 1);
    CHECK_INT(c.store_max_size, 2LL * 1024 * 1024 * 1024);

    CHECK_INT(c.num_routes, 3);
    wh_route_conf_t *r = &c.routes[0];
    CHECK_STR(r->host, "default");
    CHECK_STR(r->path, "/api/whatsapp/webhook");
    CHECK_INT(r->kind, WH_HANDLER_WEBHOOK);
    const wh_auth_conf_t *a = &r->webhook.auth;
    CHECK_INT(a->hmac.secrets.n, 2);
    CHECK_STR(a->hmac.secrets.v[0], "h1");
    CHECK_STR(a->hmac.secrets.v[1], "h2");
    CHECK_STR(a->hmac.header, "x-hub-signature-256"); /* header names are lowercased */
    CHECK_STR(a->hmac.prefix, "");                     /* an explicit "" is kept */
    CHECK_INT(a->token.secrets.n, 1);
    CHECK_STR(a->token.secrets.v[0], "t1");
    CHECK_STR(a->token.header, "x-token");
    CHECK_INT(a->jwt.secrets.n, 1);
    CHECK_STR(a->jwt.secrets.v[0], "j1");
    CHECK_INT(a->jwt_leeway, 120);
    CHECK_STR(a->jwt_app, "myapp");
    CHECK_STR(a->jwt_action, "act");
    CHECK_INT(a->apikey.secrets.n, 3);
    CHECK_STR(a->apikey.secrets.v[2], "a3");
    CHECK_STR(r->webhook.verify_token, "vt");
    CHECK_INT(r->webhook.allow.n, 2);
    CHECK_STR(r->webhook.allow.v[0], "127.0.0.0/8");
    CHECK_STR(r->webhook.allow.v[1], "::1");
    CHECK_INT(r->webhook.trusted_proxies.n, 1);
    CHECK_STR(r->webhook.trusted_proxies.v[0], "10.0.0.1/32");
    CHECK_INT(r->webhook.ip_rate_per_min, 5);
    CHECK_INT(r->webhook.instance_rate_per_min, 7);
    CHECK_INT(r->webhook.instance_burst, 9);
    CHECK_INT(r->webhook.commit_timeout_ms, 2000);
    CHECK_INT(r->webhook.offload_threshold, 0);

    CHECK_STR(c.routes[1].host, "default");
    CHECK_STR(c.routes[1].path, "/status");
    CHECK_INT(c.routes[1].kind, WH_HANDLER_HEALTH);

    r = &c.routes[2];
    CHECK_STR(r->host, "example.com");
    CHECK_STR(r->path, "/hook");
    CHECK_INT(r->kind, WH_HANDLER_WEBHOOK);
    CHECK_INT(r->webhook.auth.apikey.secrets.n, 1);
    CHECK_STR(r->webhook.auth.apikey.secrets.v[0], "k");
    CHECK_INT(r->webhook.ip_rate_per_min, 11);
    CHECK_INT(r->webhook.instance_rate_per_min, 6000);
    CHECK_STR(r->webhook.auth.hmac.header, "x-webhook-signature");

    CHECK_INT(wh_config_validate(&c, err, sizeof(err)), 0);
    wh_config_free(&c);
}

/* Nested maps and dotted names reach the same directives. */
static void test_flattening(void)
{
    wh_config_t c;
    reset_env();
    CHECK_INT(load(&c, "wahook:\n"
                       "  env: development\n"
                       "  store:\n"
                       "    media: keep\n"
                       "    batch-size: 3\n"
                       "wahook.store:\n"
                       "  queue-size: 4\n"
                       "listen: {port: 1, ssl: {certificate-file: c, key-file: k}}\n"
                       "hosts: {h: {paths: {/p: {wahook: {webhook: {auth.hmac: {secrets: s}}}}}}}\n"),
              0);
    CHECK_INT(c.env, WH_ENV_DEVELOPMENT);
    CHECK_INT(c.store_keep_media, 1);
    CHECK_INT(c.store_batch_size, 3);
    CHECK_INT(c.store_queue_size, 4);
    CHECK_STR(c.listen[0].certificate_file, "c");
    CHECK_INT(c.num_routes, 1);
    CHECK_INT(c.routes[0].kind, WH_HANDLER_WEBHOOK);
    CHECK_INT(c.routes[0].webhook.auth.hmac.secrets.n, 1);
    wh_config_free(&c);

    /* Empty (null) intermediate maps and blocks are accepted and change nothing. */
    CHECK_INT(load(&c, "wahook.store:\nwahook.admin:\nlisten: {port: 2, ssl: ~}\n"), 0);
    CHECK_INT(c.admin.port, 8081);
    CHECK_INT(c.listen[0].port, 2);
    wh_config_free(&c);
}

static void test_values(void)
{
    wh_config_t c;
    reset_env();
    static const struct {
        const char *text;
        int64_t want;
    } ints[] = {
        {"limit-request-body: 1K\n", 1024},
        {"limit-request-body: 1k\n", 1024},
        {"limit-request-body: 1024\n", 1024},
        {"limit-request-body: 3m\n", 3 * 1048576},
        {"limit-request-body: 1G\n", 1073741824},
        {"wahook.shutdown-timeout: 0\n", 0},
        {"wahook.shutdown-timeout: 250ms\n", 250},
        {"wahook.shutdown-timeout: 2m\n", 120000},
        {"wahook.shutdown-timeout: 1h\n", 3600000},
        {"wahook.shutdown-timeout: 5S\n", 5000},
        {"num-threads: 256\n", 256},
        {"num-threads: +4\n", 4},
        {"num-threads: \"7\"\n", 7},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        CHECK_INT(load(&c, ints[i].text), 0);
        int64_t got = strncmp(ints[i].text, "limit", 5) == 0 ? c.limit_request_body
                      : strncmp(ints[i].text, "num", 3) == 0 ? c.num_threads
                                                             : c.shutdown_timeout_ms;
        CHECK_INT(got, ints[i].want);
        wh_config_free(&c);
    }

    static const char *const on[] = {"ON", "on", "On", "true", "TRUE", "yes"};
    static const char *const off[] = {"OFF", "off", "false", "no", "No"};
    char buf[256];
    for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
        snprintf(buf, sizeof(buf), "http1-upgrade-to-http2: %s\n", on[i]);
        CHECK_INT(load(&c, buf), 0);
        CHECK_INT(c.http2, 1);
        wh_config_free(&c);
    }
    for (size_t i = 0; i < sizeof(off) / sizeof(off[0]); i++) {
        snprintf(buf, sizeof(buf), "http1-upgrade-to-http2: %s\n", off[i]);
        CHECK_INT(load(&c, buf), 0);
        CHECK_INT(c.http2, 0);
        wh_config_free(&c);
    }

    /* Seconds-based durations: a bare number is seconds; ms only when whole seconds. */
    static const struct {
        const char *v;
        int64_t want;
    } leeway[] = {{"90", 90}, {"2m", 120}, {"3000ms", 3}, {"1h", 3600}, {"0", 0}, {"24h", 86400}};
    for (size_t i = 0; i < sizeof(leeway) / sizeof(leeway[0]); i++) {
        snprintf(buf, sizeof(buf), "hosts: {d: {paths: {/: {wahook.webhook: {auth.jwt.leeway: %s}}}}}",
                 leeway[i].v);
        CHECK_INT(load(&c, buf), 0);
        CHECK_INT(c.routes[0].webhook.auth.jwt_leeway, leeway[i].want);
        wh_config_free(&c);
    }

    /* A value given twice through different spellings: the later one wins, without leaks. */
    CHECK_INT(load(&c, "wahook.data-dir: a\nwahook: {data-dir: b}\n"), 0);
    CHECK_STR(c.data_dir, "b");
    wh_config_free(&c);
    CHECK_INT(load(&c, "hosts: {d: {paths: {/: {wahook.webhook: "
                       "{auth.token.secrets: [a, b], auth: {token: {secrets: [c]}}}}}}}\n"),
              0);
    CHECK_INT(c.routes[0].webhook.auth.token.secrets.n, 1);
    CHECK_STR(c.routes[0].webhook.auth.token.secrets.v[0], "c");
    wh_config_free(&c);

    /* Null values mean "the default". */
    CHECK_INT(load(&c, "wahook.data-dir: ~\nnum-threads:\nwahook.admin: {host: null}\n"), 0);
    CHECK_STR(c.data_dir, "data");
    CHECK(c.num_threads >= 1);
    CHECK_STR(c.admin.host, "127.0.0.1");
    wh_config_free(&c);
    /* ...but an explicit "" empties a string that allows it, and the hmac prefix only. */
    CHECK_INT(load(&c, "hosts: {d: {paths: {/: {wahook.webhook: "
                       "{auth.hmac.prefix: , auth.token.header: \"\"}}}}}\n"),
              0);
    CHECK_STR(c.routes[0].webhook.auth.hmac.prefix, "sha256=");
    CHECK_STR(c.routes[0].webhook.auth.token.header, "x-webhook-token");
    wh_config_free(&c);
    CHECK_INT(load(&c, "hosts: {d: {paths: {/: {wahook.webhook: "
                       "{auth.hmac.prefix: \"${WH_C_UNSET}\"}}}}}\n"),
              0);
    CHECK_STR(c.routes[0].webhook.auth.hmac.prefix, "sha256="); /* empty expansion: default */
    wh_config_free(&c);
    CHECK_INT(load(&c, "hosts: {d: {paths: {/: {wahook.webhook: {auth.hmac.prefix: ''}}}}}\n"), 0);
    CHECK_STR(c.routes[0].webhook.auth.hmac.prefix, "");
    wh_config_free(&c);
}

static void test_type_errors(void)
{
    reset_env();
    check_error("num-threads: abc\n", "t.conf:1:14: 'num-threads' must be an integer, got 'abc'");
    check_error("num-threads: 1.5\n", "t.conf:1:14: 'num-threads' must be an integer, got '1.5'");
    check_error("num-threads: 99999999999999999999\n",
                "t.conf:1:14: 'num-threads' must be an integer, got '99999999999999999999'");
    check_error("num-threads: 0\n", "t.conf:1:14: 'num-threads' must be between 1 and 256, got '0'");
    check_error("\n\n  num-threads: 257\n",
                "t.conf:3:16: 'num-threads' must be between 1 and 256, got '257'");
    check_error("num-threads: -1\n",
                "t.conf:1:14: 'num-threads' must be between 1 and 256, got '-1'");
    check_error("limit-request-body: 512\n",
                "t.conf:1:21: 'limit-request-body' must be between 1K and 1G, got '512'");
    check_error("limit-request-body: 2G\n",
                "t.conf:1:21: 'limit-request-body' must be between 1K and 1G, got '2G'");
    check_error("limit-request-body: 1.5M\n",
                "t.conf:1:21: 'limit-request-body' must be a size (a number with an optional K, "
                "M or G suffix), got '1.5M'");
    check_error("limit-request-body: 10MB\n",
                "t.conf:1:21: 'limit-request-body' must be a size (a number with an optional K, "
                "M or G suffix), got '10MB'");
    check_error("limit-request-body: 99999999999G\n",
                "t.conf:1:21: 'limit-request-body' must be a size (a number with an optional K, "
                "M or G suffix), got '99999999999G'");
    check_error("wahook.shutdown-timeout: 10x\n",
                "t.conf:1:26: 'wahook.shutdown-timeout' must be a duration (a number of "
                "milliseconds, or with an ms, s, m or h suffix), got '10x'");
    check_error("wahook.shutdown-timeout: 2h\n",
                "t.conf:1:26: 'wahook.shutdown-timeout' must be between 0 and 1h, got '2h'");
    check_error("wahook.shutdown-timeout: s\n",
                "t.conf:1:26: 'wahook.shutdown-timeout' must be a duration (a number of "
                "milliseconds, or with an ms, s, m or h suffix), got 's'");
    check_error("http1-upgrade-to-http2: maybe\n",
                "t.conf:1:25: 'http1-upgrade-to-http2' must be ON or OFF, got 'maybe'");
    check_error("http1-upgrade-to-http2: 1\n",
                "t.conf:1:25: 'http1-upgrade-to-http2' must be ON or OFF, got '1'");
    check_error("wahook.env: staging\n",
                "t.conf:1:13: 'wahook.env' must be one of production|development, got 'staging'");
    check_error("wahook.log-level: trace\n",
                "t.conf:1:19: 'wahook.log-level' must be one of debug|info|warn|error, got "
                "'trace'");
    check_error("wahook.store.synchronous: off\n",
                "t.conf:1:27: 'wahook.store.synchronous' must be one of full|normal, got 'off'");
    check_error("wahook.store.media: 1\n",
                "t.conf:1:21: 'wahook.store.media' must be one of drop|keep, got '1'");
    check_error("wahook.store.queue-size: 10000001\n",
                "t.conf:1:26: 'wahook.store.queue-size' must be between 1 and 10000000, got "
                "'10000001'");
    check_error("wahook.store.batch-size: 0\n",
                "t.conf:1:26: 'wahook.store.batch-size' must be between 1 and 100000, got '0'");
    check_error("wahook.admin:\n  port: 65536\n",
                "t.conf:2:9: 'port' must be between 0 and 65535, got '65536'");
    check_error("listen: 0\n", "t.conf:1:9: 'port' must be between 1 and 65535, got '0'");
    check_error("listen:\n  - port: 80\n  - port: 70000\n",
                "t.conf:3:11: 'port' must be between 1 and 65535, got '70000'");
    check_error("num-threads: {a: 1}\n",
                "t.conf:1:14: 'num-threads' expects a single value, not a mapping");
    check_error("num-threads:\n  - 1\n",
                "t.conf:2:3: 'num-threads' expects a single value, not a sequence");
    check_error("wahook.admin: 8081\n",
                "t.conf:1:15: 'wahook.admin' expects a mapping, not a scalar");
    check_error("hosts: [a]\n", "t.conf:1:8: 'hosts' expects a mapping, not a sequence");

    /* Errors deep in a webhook route point at the value. */
    const char *pre = "hosts:\n"
                      "  default:\n"
                      "    paths:\n"
                      "      /api/whatsapp/webhook:\n"
                      "        wahook.webhook:\n";
    char buf[512];
    snprintf(buf, sizeof(buf), "%s          auth:\n            jwt:\n              leeway: 1500ms\n",
             pre);
    check_error(buf, "t.conf:8:23: 'auth.jwt.leeway' must be a whole number of seconds, got "
                     "'1500ms'");
    snprintf(buf, sizeof(buf), "%s          auth:\n            jwt: {leeway: 25h}\n", pre);
    check_error(buf, "t.conf:7:27: 'auth.jwt.leeway' must be between 0 and 24h, got '25h'");
    snprintf(buf, sizeof(buf), "%s          rate-limit:\n            ip-per-minute: 1000000001\n",
             pre);
    check_error(buf, "t.conf:7:28: 'rate-limit.ip-per-minute' must be between 1 and 1000000000, "
                     "got '1000000001'");
    snprintf(buf, sizeof(buf), "%s          rate-limit: {instance-burst: 0}\n", pre);
    check_error(buf, "t.conf:6:40: 'rate-limit.instance-burst' must be between 1 and 1000000000, "
                     "got '0'");
    snprintf(buf, sizeof(buf), "%s          commit-timeout: 0\n", pre);
    check_error(buf, "t.conf:6:27: 'commit-timeout' must be between 1ms and 10m, got '0'");
    snprintf(buf, sizeof(buf), "%s          offload-threshold: 2G\n", pre);
    check_error(buf, "t.conf:6:30: 'offload-threshold' must be between 0 and 1G, got '2G'");
    snprintf(buf, sizeof(buf), "%s          allow: {a: b}\n", pre);
    check_error(buf, "t.conf:6:18: 'allow' expects a string or a sequence of strings, not a "
                     "mapping");
    snprintf(buf, sizeof(buf), "%s          allow: [10.0.0.0/8, [x]]\n", pre);
    check_error(buf, "t.conf:6:31: 'allow' entries must be strings, not a sequence");
    snprintf(buf, sizeof(buf), "%s          auth.hmac.header: \"x bad\"\n", pre);
    check_error(buf, "t.conf:6:29: 'auth.hmac.header' must be an HTTP header name, got 'x bad'");
    snprintf(buf, sizeof(buf), "%s          auth: [1]\n", pre);
    check_error(buf, "t.conf:6:17: 'auth' expects a mapping, not a sequence");
}

static void test_directive_errors(void)
{
    reset_env();
    check_error("foo: 1\n", "t.conf:1:1: unknown directive 'foo'");
    check_error("listen: 80\n  \nnum-thread: 2\n", "t.conf:3:1: unknown directive 'num-thread'");
    check_error("wahook.webhook: {}\n", "t.conf:1:1: directive 'wahook.webhook' is not allowed here");
    check_error("auth:\n  hmac: {secrets: x}\n", "t.conf:1:1: directive 'auth' is not allowed here");
    check_error("port: 80\n", "t.conf:1:1: directive 'port' is not allowed here");
    check_error("paths: {}\n", "t.conf:1:1: directive 'paths' is not allowed here");
    check_error("wahook.admin:\n  num-threads: 2\n",
                "t.conf:2:3: directive 'num-threads' is not allowed here");
    check_error("wahook.admin:\n  tokn: x\n", "t.conf:2:3: unknown directive 'tokn'");
    check_error("listen:\n  port: 80\n  bogus: 1\n", "t.conf:3:3: unknown directive 'bogus'");
    check_error("listen:\n  port: 80\n  ssl: {cert: x}\n",
                "t.conf:3:9: unknown directive 'ssl.cert'");
    check_error("wahook.store:\n  medias: keep\n",
                "t.conf:2:3: unknown directive 'wahook.store.medias'");
    check_error("hosts:\n  default:\n    num-threads: 1\n",
                "t.conf:3:5: directive 'num-threads' is not allowed here");
    check_error("hosts:\n"
                "  default:\n"
                "    paths:\n"
                "      /x:\n"
                "        num-threads: 2\n",
                "t.conf:5:9: directive 'num-threads' is not allowed here");
    check_error("hosts:\n"
                "  default:\n"
                "    paths:\n"
                "      /x:\n"
                "        wahook.webhook:\n"
                "          auth:\n"
                "            hmac:\n"
                "              secret: x\n",
                "t.conf:8:15: unknown directive 'auth.hmac.secret'");
    check_error("hosts:\n"
                "  default:\n"
                "    paths:\n"
                "      /x:\n"
                "        wahook.webhook:\n"
                "          listen: 80\n",
                "t.conf:6:11: directive 'listen' is not allowed here");
    check_error("hosts:\n"
                "  default:\n"
                "    paths:\n"
                "      /x:\n"
                "        wahook.webhook:\n"
                "          wahook.health: ON\n",
                "t.conf:6:11: directive 'wahook.health' is not allowed here");

    /* Structure of hosts and paths. */
    check_error("hosts:\n  default:\n    paths:\n      api/hook:\n        wahook.health: ON\n",
                "t.conf:4:7: path 'api/hook' must start with '/'");
    check_error("hosts:\n  default:\n    paths:\n      /x:\n",
                "t.conf:4:7: path '/x' needs a handler (wahook.webhook or wahook.health)");
    check_error("hosts:\n  default:\n    paths:\n      /x:\n        wahook.health: OFF\n",
                "t.conf:4:7: path '/x' needs a handler (wahook.webhook or wahook.health)");
    check_error("hosts:\n  default:\n    paths:\n      /x:\n        wahook.health: ON\n"
                "        wahook.webhook: {}\n",
                "t.conf:6:9: path '/x' has more than one handler");
    check_error("hosts:\n  default:\n    paths:\n      /x:\n        wahook.health: sure\n",
                "t.conf:5:24: 'wahook.health' must be ON or OFF, got 'sure'");
    check_error("hosts:\n  default:\n    paths:\n      /x: 1\n",
                "t.conf:4:11: path '/x' expects a mapping, not a scalar");
    check_error("hosts:\n  \"\":\n    paths: {}\n", "t.conf:2:3: empty host name (use \"default\")");

    /* Duplicate keys, which YAML parsers otherwise accept silently. */
    check_error("num-threads: 1\nnum-threads: 2\n", "t.conf:2:1: duplicate key 'num-threads'");
    check_error("hosts:\n  default:\n    paths:\n      /x: {wahook.health: ON}\n"
                "      /x: {wahook.health: ON}\n",
                "t.conf:5:7: duplicate key '/x'");
    check_error("{[a]: 1}\n", "t.conf:1:2: directive names must be scalars, not a sequence");

    /* Listeners. */
    check_error("listen:\n  host: 127.0.0.1\n", "t.conf:2:3: 'listen' requires a 'port'");
    check_error("listen:\n", "t.conf:1:8: 'listen' requires a port");
    check_error("listen:\n  port: 443\n  ssl:\n    certificate-file: c.pem\n",
                "t.conf:2:3: 'ssl' requires both 'certificate-file' and 'key-file'");
    check_error("listen: [[80]]\n",
                "t.conf:1:10: 'listen' expects a port, a mapping or a sequence of them");

    /* The document itself. */
    check_error("- a\n- b\n", "t.conf:1:1: the configuration must be a mapping of directives, "
                              "not a sequence");
    check_error("just a string\n",
                "t.conf:1:1: the configuration must be a mapping of directives, not a scalar");
    check_error("listen: 80\n---\nlisten: 81\n", "t.conf:3:1: only one YAML document is allowed");
}

static void test_limits(void)
{
    char buf[4096];
    size_t n = 0;
    reset_env();
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "listen:\n");
    for (int i = 0; i <= WH_MAX_LISTENERS; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "  - %d\n", 1000 + i);
    check_error(buf, "t.conf:18:5: too many listeners (at most 16)");

    n = (size_t)snprintf(buf, sizeof(buf), "hosts:\n  default:\n    paths:\n");
    for (int i = 0; i <= WH_MAX_ROUTES; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "      /p%d: {wahook.health: ON}\n", i);
    check_error(buf, "t.conf:36:7: too many paths (at most 32)");

    /* Exactly at the limits is fine. */
    n = (size_t)snprintf(buf, sizeof(buf), "hosts:\n  default:\n    paths:\n");
    for (int i = 0; i < WH_MAX_ROUTES; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "      /p%d: {wahook.health: ON}\n", i);
    wh_config_t c;
    CHECK_INT(load(&c, buf), 0);
    CHECK_INT(c.num_routes, WH_MAX_ROUTES);
    wh_config_free(&c);

    /* The same host and path spelled two ways (here through a variable) is one route. */
    setenv("WH_C_SECRET", "/x", 1);
    check_error("hosts:\n  default:\n    paths:\n      /x: {wahook.health: ON}\n"
                "      ${WH_C_SECRET}: {wahook.health: ON}\n",
                "t.conf:5:7: path '/x' is configured twice on host 'default'");
    /* Aliases are followed, and cannot loop. */
    CHECK_INT(load(&c, "wahook.store: &s {media: keep}\nwahook: {store: *s}\n"), 0);
    CHECK_INT(c.store_keep_media, 1);
    wh_config_free(&c);
    check_error("wahook: &w {store: *w}\n", "t.conf:1:13: unknown directive 'wahook.store.store'");
    reset_env();
}

static void test_syntax_errors(void)
{
    reset_env();
    check_error_prefix("listen: 80\nfoo: bar: baz\n",
                       "t.conf:2:9: YAML syntax error: mapping values are not allowed");
    check_error_prefix("listen: [80\n", "t.conf:2:1: YAML syntax error: ");
    check_error_prefix("a:\n\tb: 1\n", "t.conf:2:1: YAML syntax error: ");
    check_error_prefix("x: *nothing\n", "t.conf:1:4: YAML syntax error: found undefined alias");
    check_error_prefix("listen: \"80\x01\"\n", "t.conf:1:12: YAML syntax error: ");
    check_error_prefix("listen: 80\n\xff\n", "t.conf:2:1: YAML syntax error: ");
}

static void test_expansion(void)
{
    wh_config_t c;
    const char *route = "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /hook:\n"
                        "        wahook.webhook:\n";
    char buf[1024];
    reset_env();

    setenv("WH_C_PORT", "9001", 1);
    setenv("WH_C_SECRET", "s3cret", 1);
    setenv("WH_C_EMPTY", "", 1);
    setenv("NEXT_EVOLUTION_API_KEY", "legacy-key", 1);
    snprintf(buf, sizeof(buf),
             "listen:\n"
             "  - ${WH_C_PORT}\n"
             "  - port: ${WH_C_UNSET:-9002}\n"
             "    host: \"${WH_C_EMPTY:-0.0.0.0}\"\n"
             "wahook.data-dir: ${WH_C_UNSET:-/srv}/data-${WH_C_PORT}\n"
             "wahook.admin: {token: '${EVOLUTION_API_KEY}'}\n"
             "%s"
             "          auth:\n"
             "            hmac: {secrets: [\"${WH_C_SECRET}\", \"${WH_C_OLD}\", \"\", ~]}\n"
             "            token: {secrets: [\"${WH_C_OLD}\"], header: \"${WH_C_EMPTY}\"}\n"
             "            jwt: {secrets: \"${WH_C_OLD}\"}\n"
             "            apikey: {secrets: \"k-${WH_C_SECRET}\"}\n"
             "          verify-token: ${WEBHOOK_VERIFY_TOKEN}\n"
             "          allow: [\"${WH_C_OLD}\", 10.0.0.0/8, \"$$literal\"]\n"
             "          commit-timeout: ${WH_C_UNSET:-3}s\n",
             route);
    CHECK_INT(load(&c, buf), 0);
    CHECK_STR(err, "");
    CHECK_INT(c.num_listen, 2);
    CHECK_INT(c.listen[0].port, 9001);
    CHECK_INT(c.listen[1].port, 9002);
    CHECK_STR(c.listen[1].host, "0.0.0.0");
    CHECK_STR(c.data_dir, "/srv/data-9001");
    CHECK_STR(c.admin.token, "legacy-key"); /* EVOLUTION_API_KEY -> NEXT_EVOLUTION_API_KEY */
    const wh_webhook_conf_t *w = &c.routes[0].webhook;
    CHECK_INT(w->auth.hmac.secrets.n, 1); /* unset and empty entries are dropped */
    CHECK_STR(w->auth.hmac.secrets.v[0], "s3cret");
    CHECK_INT(w->auth.token.secrets.n, 0);
    CHECK_STR(w->auth.token.header, "x-webhook-token"); /* empty expansion = default */
    CHECK_INT(w->auth.jwt.secrets.n, 0);
    CHECK_INT(w->auth.apikey.secrets.n, 1);
    CHECK_STR(w->auth.apikey.secrets.v[0], "k-s3cret");
    CHECK(w->verify_token == NULL); /* unset: the handshake is off */
    CHECK_INT(w->allow.n, 2);
    CHECK_STR(w->allow.v[0], "10.0.0.0/8");
    CHECK_STR(w->allow.v[1], "$literal");
    CHECK_INT(w->commit_timeout_ms, 3000);
    wh_config_free(&c);

    setenv("WEBHOOK_VERIFY_TOKEN", "vt-1", 1);
    snprintf(buf, sizeof(buf), "%s          verify-token: ${WEBHOOK_VERIFY_TOKEN}\n", route);
    CHECK_INT(load(&c, buf), 0);
    CHECK_STR(c.routes[0].webhook.verify_token, "vt-1");
    wh_config_free(&c);

    /* Types apply after expansion, with the position of the scalar. */
    setenv("WH_C_PORT", "eighty", 1);
    check_error("listen:\n  port: ${WH_C_PORT}\n",
                "t.conf:2:9: 'port' must be an integer, got '${WH_C_PORT}'");
    /* An error quotes the text as written, never a variable's value (it may be a secret). */
    setenv("WH_C_HIDDEN", "hunter2", 1);
    wh_config_t c2;
    CHECK_INT(load(&c2, "num-threads: ${WH_C_HIDDEN}\n"), WH_EINVAL);
    CHECK(strstr(err, "hunter2") == NULL);
    CHECK_CONTAINS(err, "got '${WH_C_HIDDEN}'");
    wh_config_free(&c2);
    /* Empty after expansion: the default, or an error when there is none. */
    CHECK_INT(load(&c, "num-threads: ${WH_C_UNSET}\nlimit-request-body: ${WH_C_EMPTY}\n"), 0);
    CHECK_INT(c.limit_request_body, 1048576);
    CHECK(c.num_threads >= 1);
    wh_config_free(&c);
    check_error("listen:\n  port: ${WH_C_UNSET}\n", "t.conf:2:9: 'port' requires a value");

    /* Malformed references. */
    check_error("wahook.data-dir: ${WH_C_PORT\n",
                "t.conf:1:18: 'wahook.data-dir': unterminated '${' at offset 0");
    check_error("wahook.data-dir: \"a/${}\"\n",
                "t.conf:1:18: 'wahook.data-dir': missing variable name after '${' at offset 2");
    snprintf(buf, sizeof(buf), "%s          allow: [10.0.0.0/8, \"${1X}\"]\n", route);
    check_error(buf, "t.conf:6:31: 'allow': variable name may not start with a digit at offset 0");
    check_error("hosts:\n  ${BAD:?x}: {}\n",
                "t.conf:2:3: 'hosts': unexpected ':' in '${BAD' at offset 0 (expected '}' or ':-')");
    reset_env();
}

/* ${VAR} unquoted inside [ ] and { }, where YAML would otherwise read the braces as syntax. */
static void test_flow_references(void)
{
    wh_config_t c;
    const char *route = "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /hook:\n"
                        "        wahook.webhook:\n";
    char buf[1024];
    reset_env();
    setenv("WH_C_SECRET", "new", 1);
    setenv("WH_C_PORT", "7000", 1);

    snprintf(buf, sizeof(buf),
             "listen: [${WH_C_PORT}, {port: ${WH_C_UNSET:-7001}, host: ${WH_C_UNSET:-::1}}]\n"
             "%s"
             "          auth:\n"
             "            hmac: {secrets: [${WH_C_SECRET}, ${WH_C_OLD}], prefix: ${WH_C_UNSET:-v1=}}\n"
             "            token: {secrets: [${WH_C_SECRET}, ${WH_C_SECRET}x, a${WH_C_OLD:-${WH_C_SECRET}}b]}\n"
             "          allow: [${WH_C_UNSET:-10.0.0.0/8}, \"${WH_C_UNSET:-::1}\", '${WH_C_OLD}']\n",
             route);
    CHECK_INT(load(&c, buf), 0);
    CHECK_STR(err, "");
    CHECK_INT(c.num_listen, 2);
    CHECK_INT(c.listen[0].port, 7000);
    CHECK_INT(c.listen[1].port, 7001);
    CHECK_STR(c.listen[1].host, "::1");
    const wh_webhook_conf_t *w = &c.routes[0].webhook;
    CHECK_INT(w->auth.hmac.secrets.n, 1); /* the unset previous secret is dropped */
    CHECK_STR(w->auth.hmac.secrets.v[0], "new");
    CHECK_STR(w->auth.hmac.prefix, "v1=");
    CHECK_INT(w->auth.token.secrets.n, 3);
    CHECK_STR(w->auth.token.secrets.v[0], "new");
    CHECK_STR(w->auth.token.secrets.v[1], "newx");
    CHECK_STR(w->auth.token.secrets.v[2], "anewb");
    CHECK_INT(w->allow.n, 2);
    CHECK_STR(w->allow.v[0], "10.0.0.0/8");
    CHECK_STR(w->allow.v[1], "::1");
    wh_config_free(&c);

    /* Positions after a reference are those of the file as written. */
    snprintf(buf, sizeof(buf), "%s          allow: [${WH_C_SECRET}, ${WH_C_OLD:-x}, [y]]\n", route);
    check_error(buf, "t.conf:6:51: 'allow' entries must be strings, not a sequence");
    check_error("wahook.store: {media: ${WH_C_UNSET:-keep}, batch-size: 0}\n",
                "t.conf:1:56: 'wahook.store.batch-size' must be between 1 and 100000, got '0'");
    check_error("wahook.store: {media: ${WH_C_SECRET}}\n",
                "t.conf:1:23: 'wahook.store.media' must be one of drop|keep, got '${WH_C_SECRET}'");
    check_error("hosts: {${WH_C_PORT}: {paths: {/a: {wahook.health: ON}}}, ${WH_C_PORT}: {}}\n",
                "t.conf:1:59: duplicate key '${WH_C_PORT}'");
    check_error("listen: [${WH_C_PORT\n", "t.conf:1:11: YAML syntax error: did not find expected "
                                          "',' or ']' (while parsing a flow sequence)");
    check_error("wahook.data-dir: [${}]\n",
                "t.conf:1:18: 'wahook.data-dir' expects a single value, not a sequence");
    check_error("listen: [${1A}]\n",
                "t.conf:1:10: 'port': variable name may not start with a digit at offset 0");
    /* "$$" is a literal dollar, so "$${X}" is not a reference: quote it in a flow. */
    check_error_prefix("allow: [$${X}]\n", "t.conf:1:");
    CHECK_CONTAINS(err, "YAML syntax error");
    reset_env();
}

static const char *const wh_route_noauth = "listen: 8080\n"
                                           "hosts:\n"
                                           "  default:\n"
                                           "    paths:\n"
                                           "      /api/whatsapp/webhook:\n"
                                           "        wahook.webhook:\n"
                                           "          verify-token: x\n"
                                           "      /status: {wahook.health: ON}\n";

static void test_validate(void)
{
    wh_config_t c;
    char verr[512];
    reset_env();

    /* Production without an auth method on a webhook route is refused. */
    CHECK_INT(load(&c, wh_route_noauth), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_STR(verr, "t.conf:5:7: production mode requires an authentication method on "
                    "/api/whatsapp/webhook (set WEBHOOK_SECRET, or wahook.env: development)");
    wh_config_free(&c);

    /* The same file in development mode is accepted, by directive or by environment. */
    char buf[1024];
    snprintf(buf, sizeof(buf), "wahook.env: development\n%s", wh_route_noauth);
    CHECK_INT(load(&c, buf), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    wh_config_free(&c);
    setenv("NODE_ENV", "development", 1);
    CHECK_INT(load(&c, wh_route_noauth), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    wh_config_free(&c);
    reset_env();

    /* Any one method with a secret satisfies production; an unset secret does not. */
    static const char *const methods[] = {"hmac", "token", "jwt", "apikey"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(buf, sizeof(buf),
                 "listen: 8080\nhosts: {default: {paths: {/h: {wahook.webhook: "
                 "{auth: {%s: {secrets: [\"${WH_C_SECRET}\"]}}}}}}}\n",
                 methods[i]);
        CHECK_INT(load(&c, buf), 0);
        CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
        CHECK_CONTAINS(verr, "production mode requires an authentication method on /h");
        wh_config_free(&c);
        setenv("WH_C_SECRET", "x", 1);
        CHECK_INT(load(&c, buf), 0);
        CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
        wh_config_free(&c);
        unsetenv("WH_C_SECRET");
    }

    /* Listeners: at least one, no duplicate host:port, admin port apart. */
    CHECK_INT(load(&c, "wahook.env: development\n"), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_CONTAINS(verr, "t.conf: no listener configured");
    wh_config_free(&c);

    CHECK_INT(load(&c, "listen: [8080, {port: 8080, host: 127.0.0.1}, {port: 8090, host: \"::1\"}, "
                       "{port: 8090, host: 127.0.0.1}]\n"),
              0);
    CHECK_INT(c.num_listen, 4);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    wh_config_free(&c);

    CHECK_INT(load(&c, "listen: [8080, {port: 8090, host: 127.0.0.1}, {host: 127.0.0.1, port: "
                       "8090}]\n"),
              0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_STR(verr, "t.conf: listener 127.0.0.1:8090 is configured twice");
    wh_config_free(&c);
    CHECK_INT(load(&c, "listen: [8080, 8080]\n"), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_STR(verr, "t.conf: listener *:8080 is configured twice");
    wh_config_free(&c);

    CHECK_INT(load(&c, "listen: [8080, 8081]\n"), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_CONTAINS(verr, "t.conf: wahook.admin port 8081 is also a listener port");
    wh_config_free(&c);
    CHECK_INT(load(&c, "listen: [8080, 8081]\nwahook.admin: {port: 0}\n"), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    wh_config_free(&c);
}

static void test_sample(void)
{
    wh_config_t c;
    char verr[512];
    const char *path = WH_SOURCE_DIR "/conf/wahook.conf";
    reset_env();

    setenv("WEBHOOK_SECRET", "0123456789abcdef0123456789abcdef", 1);
    CHECK_INT(wh_config_load(&c, path, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    CHECK_STR(c.file, path);
    CHECK_INT(c.num_listen, 1);
    CHECK_STR(c.listen[0].host, "127.0.0.1");
    CHECK_INT(c.listen[0].port, 8080);
    CHECK_INT(c.http2, 0);
    CHECK_INT(c.limit_request_body, 1048576);
    CHECK_INT(c.env, WH_ENV_PRODUCTION);
    CHECK_STR(c.data_dir, "data");
    CHECK_STR(c.admin.host, "127.0.0.1");
    CHECK_INT(c.admin.port, 8081);
    CHECK(c.admin.token == NULL);
    CHECK_INT(c.store_sync_full, 1);
    CHECK_INT(c.store_keep_media, 0);
    CHECK_INT(c.num_routes, 2);
    const wh_route_conf_t *r = &c.routes[0];
    CHECK_STR(r->path, "/api/whatsapp/webhook");
    CHECK_INT(r->kind, WH_HANDLER_WEBHOOK);
    CHECK_INT(r->webhook.auth.token.secrets.n, 1);
    CHECK_STR(r->webhook.auth.token.secrets.v[0], "0123456789abcdef0123456789abcdef");
    CHECK_INT(r->webhook.auth.jwt.secrets.n, 1);
    CHECK_INT(r->webhook.auth.hmac.secrets.n, 1);
    CHECK_INT(r->webhook.auth.apikey.secrets.n, 0);
    CHECK(r->webhook.verify_token == NULL);
    CHECK_INT(c.routes[1].kind, WH_HANDLER_HEALTH);
    wh_config_free(&c);

    /* Rotation, the instance token and the variables with defaults. */
    setenv("WEBHOOK_SECRET_PREVIOUS", "old-secret", 1);
    setenv("EVOLUTION_INSTANCE_TOKEN", "inst-token", 1);
    setenv("WEBHOOK_VERIFY_TOKEN", "verify-me", 1);
    setenv("WAHOOK_DATA_DIR", "/var/lib/wahook", 1);
    setenv("WAHOOK_ADMIN_TOKEN", "adm", 1);
    CHECK_INT(wh_config_load(&c, path, err, sizeof(err)), 0);
    r = &c.routes[0];
    CHECK_INT(r->webhook.auth.hmac.secrets.n, 2);
    CHECK_STR(r->webhook.auth.hmac.secrets.v[1], "old-secret");
    CHECK_INT(r->webhook.auth.apikey.secrets.n, 1);
    CHECK_STR(r->webhook.auth.apikey.secrets.v[0], "inst-token");
    CHECK_STR(r->webhook.verify_token, "verify-me");
    CHECK_STR(c.data_dir, "/var/lib/wahook");
    CHECK_STR(c.admin.token, "adm");
    wh_config_free(&c);
    reset_env();

    /* Without WEBHOOK_SECRET the sample refuses production, and runs in development. */
    CHECK_INT(wh_config_load(&c, path, err, sizeof(err)), 0);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), WH_EINVAL);
    CHECK_CONTAINS(verr, "production mode requires an authentication method");
    wh_config_free(&c);
    setenv("NODE_ENV", "development", 1);
    CHECK_INT(wh_config_load(&c, path, err, sizeof(err)), 0);
    CHECK_INT(c.env, WH_ENV_DEVELOPMENT);
    CHECK_INT(wh_config_validate(&c, verr, sizeof(verr)), 0);
    wh_config_free(&c);
    reset_env();

    CHECK_INT(wh_config_load(&c, "/nonexistent/wahook.conf", err, sizeof(err)), WH_EIO);
    CHECK_CONTAINS(err, "/nonexistent/wahook.conf: ");
    wh_config_free(&c);
}

static void test_dump(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    wh_config_dump_directives(f);
    fclose(f);
    CHECK_CONTAINS(text, "| directive | context | type | default | bounds | meaning |");
    CHECK_CONTAINS(text, "| `limit-request-body` | global | size | 1M | 1K..1G |");
    CHECK_CONTAINS(text, "| `auth.hmac.secrets` | wahook.webhook | string list |");
    CHECK_CONTAINS(text, "| `auth.jwt.leeway` | wahook.webhook | duration (s) | 30m | 0..24h |");
    CHECK_CONTAINS(text, "| `wahook.env` | global | enum (production, development) |");
    CHECK_CONTAINS(text, "| `port` | wahook.admin | int | 8081 | 0..65535 |");
    CHECK_CONTAINS(text, "| `num-threads` | global | int | online cores | 1..256 |");
    free(text);
}

int main(void)
{
    test_defaults();
    test_webhook_defaults();
    test_full();
    test_flattening();
    test_values();
    test_type_errors();
    test_directive_errors();
    test_limits();
    test_syntax_errors();
    test_expansion();
    test_flow_references();
    test_validate();
    test_sample();
    test_dump();
    WH_TEST_MAIN_END();
}
