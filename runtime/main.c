/* The wahook command line: serve, check, sign, events, outbox, init and version. */
#include <errno.h>
#include <malloc.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <h2o/version.h>

#include "wahook/auth.h"
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/envelope.h"
#include "wahook/log.h"
#include "wahook/lua_vm.h"
#include "wahook/outbox.h"
#include "wahook/outcome.h"
#include "wahook/process.h"
#include "wahook/scripts.h"
#include "wahook/stats.h"
#include "wahook/server.h"
#include "wahook/store.h"

#define WH__DEFAULT_CONF "conf/wahook.conf"
#define WH__DEFAULT_ENV ".env"

typedef struct wh__opts {
    const char *conf;
    const char *env_file;
    int env_file_explicit;
    const char *secret_file;
    const char *input;
    int64_t since;
    int limit;
    int json;
    int help;
    const char *sub;        /* events: list | show | retry; outbox: list | show | retry | drop */
    int64_t id;             /* events show/retry, outbox show/retry/drop */
    const char *status;     /* outbox list --status */
    const char *target;     /* outbox list --target */
    const char *state_json; /* try --state */
} wh__opts_t;

typedef struct wh__command {
    const char *name;
    const char *usage;
    const char *summary;
    int (*run)(wh__opts_t *o);
} wh__command_t;

static const char wh__common_opts[] =
    "  -c, --config FILE   configuration file (default " WH__DEFAULT_CONF ")\n"
    "      --env-file FILE dotenv file read before the config (default " WH__DEFAULT_ENV
    " when present)\n"
    "  -h, --help          this help\n";

static int wh__admin_request(const wh_config_t *conf, const char *method, const char *path,
                             char **body);

static int wh__load_env(wh__opts_t *o)
{
    char err[512];
    if (wh_env_load_file(o->env_file, o->env_file_explicit, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "wahook: %s\n", err);
        return -1;
    }
    return 0;
}

static int wh__load_config(wh__opts_t *o, wh_config_t *conf, int validate)
{
    char err[1024];
    if (wh__load_env(o) != 0)
        return -1;
    if (wh_config_load(conf, o->conf, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (validate && wh_config_validate(conf, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "%s\n", err);
        wh_config_free(conf);
        return -1;
    }
    return 0;
}

static int wh__log_level(const char *name)
{
    if (name == NULL)
        return WH_LOG_INFO;
    if (strcmp(name, "debug") == 0)
        return WH_LOG_DEBUG;
    if (strcmp(name, "warn") == 0)
        return WH_LOG_WARN;
    if (strcmp(name, "error") == 0)
        return WH_LOG_ERROR;
    return WH_LOG_INFO;
}

static int wh__cmd_serve(wh__opts_t *o)
{
    /* glibc trims and unmaps freed memory eagerly; with several threads allocating per request
     * that turns into TLB shoot-downs across cores, which cost a third of the throughput on the
     * benchmark machine (tests/bench/process.sh: about 3,300 → 5,400 events/s). Keep freed
     * memory for reuse up to these bounds instead. */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
    wh_config_t conf;
    if (wh__load_config(o, &conf, 1) != 0)
        return 1;
    wh_log_set_level(wh__log_level(conf.log_level));
    if (conf.error_log != NULL && wh_log_open(conf.error_log) != WH_OK) {
        fprintf(stderr, "wahook: cannot open error log %s: %s\n", conf.error_log,
                strerror(errno));
        wh_config_free(&conf);
        return 1;
    }
    wh_server_t *s = NULL;
    char err[1024];
    int rc = wh_server_create(&s, &conf, err, sizeof(err));
    if (rc != WH_OK) {
        wh_log(WH_LOG_ERROR, "cannot start", "{s:s}", "error", err);
        fprintf(stderr, "wahook: %s\n", err);
        wh_config_free(&conf);
        return 1;
    }
    rc = wh_server_run(s);
    wh_server_free(s);
    wh_config_free(&conf);
    return rc == WH_OK ? 0 : 1;
}

static int wh__cmd_check(wh__opts_t *o)
{
    wh_config_t conf;
    if (wh__load_config(o, &conf, 1) != 0)
        return 1;
    char err[2048];
    wh_scripts_t *scripts = wh_scripts_new(&conf, o->conf, err, sizeof(err));
    if (scripts == NULL) {
        fprintf(stderr, "%s\n", err);
        wh_config_free(&conf);
        return 1;
    }
    wh_scripts_gen_t *g = wh_scripts_current(scripts);
    printf("%s: scripts in %s load (version %s)\n", o->conf, conf.scripts_dir, g->version);
    wh_scripts_gen_unref(scripts, g);
    wh_scripts_free(scripts);
    printf("%s: ok (%zu listener%s, %zu route%s, %s)\n", o->conf, conf.num_listen,
           conf.num_listen == 1 ? "" : "s", conf.num_routes, conf.num_routes == 1 ? "" : "s",
           conf.env == WH_ENV_DEVELOPMENT ? "development" : "production");
    wh_config_free(&conf);
    return 0;
}

/* Reads a whole stream into a malloc'd buffer. */
static char *wh__read_all(FILE *f, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (nb == NULL) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int wh__cmd_sign(wh__opts_t *o)
{
    if (wh__load_env(o) != 0)
        return 1;
    char *secret = NULL;
    size_t secret_len = 0;
    if (o->secret_file != NULL) {
        FILE *f = fopen(o->secret_file, "rb");
        if (f == NULL) {
            fprintf(stderr, "wahook sign: cannot read %s: %s\n", o->secret_file,
                    strerror(errno));
            return 1;
        }
        secret = wh__read_all(f, &secret_len);
        fclose(f);
        while (secret != NULL && secret_len > 0 &&
               (secret[secret_len - 1] == '\n' || secret[secret_len - 1] == '\r'))
            secret_len--;
    } else {
        const char *env = getenv("WEBHOOK_SECRET");
        if (env != NULL)
            secret = strdup(env), secret_len = strlen(env);
    }
    if (secret == NULL || secret_len == 0) {
        fprintf(stderr, "wahook sign: no secret: set WEBHOOK_SECRET (in the environment or the "
                        "env file) or pass --secret-file FILE\n");
        free(secret);
        return 1;
    }

    /* Use the prefix of the first webhook route when the config loads; else the default. */
    char prefix[64] = "sha256=";
    wh_config_t conf;
    char err[1024];
    if (access(o->conf, R_OK) == 0 && wh_config_load(&conf, o->conf, err, sizeof(err)) == WH_OK) {
        for (size_t i = 0; i < conf.num_routes; i++) {
            if (conf.routes[i].kind == WH_HANDLER_WEBHOOK &&
                conf.routes[i].webhook.auth.hmac.prefix != NULL) {
                snprintf(prefix, sizeof(prefix), "%s", conf.routes[i].webhook.auth.hmac.prefix);
                break;
            }
        }
        wh_config_free(&conf);
    }

    FILE *in = stdin;
    if (o->input != NULL && strcmp(o->input, "-") != 0 && (in = fopen(o->input, "rb")) == NULL) {
        fprintf(stderr, "wahook sign: cannot read %s: %s\n", o->input, strerror(errno));
        free(secret);
        return 1;
    }
    size_t len = 0;
    char *body = wh__read_all(in, &len);
    if (in != stdin)
        fclose(in);
    if (body == NULL) {
        fprintf(stderr, "wahook sign: cannot read the body\n");
        free(secret);
        return 1;
    }
    char out[64 + 65];
    wh_auth_sign(secret, secret_len, prefix, body, len, out);
    printf("%s\n", out);
    free(body);
    free(secret);
    return 0;
}

typedef struct wh__events_ctx {
    int json;
    int count;
} wh__events_ctx_t;

static int wh__print_event(const wh_event_row_t *row, void *arg)
{
    wh__events_ctx_t *c = arg;
    c->count++;
    if (c->json) {
        json_error_t jerr;
        json_t *body = json_loads(row->body, JSON_ALLOW_NUL, &jerr);
        json_t *obj = json_pack("{s:I,s:I,s:s,s:s,s:s,s:s?,s:s,s:o?}", "id",
                                (json_int_t)row->id, "received_at", (json_int_t)row->received_at,
                                "instance", row->instance, "event", row->event, "dedup_id",
                                row->dedup_id, "contact_key", row->contact_key, "status",
                                row->status, "body", body);
        char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
        if (text != NULL)
            printf("%s\n", text);
        free(text);
        json_decref(obj);
        return 0;
    }
    time_t secs = (time_t)(row->received_at / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[32];
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%-8lld %-20s %-16s %-20s %-22s %s\n", (long long)row->id, ts, row->instance,
           row->event, row->contact_key != NULL ? row->contact_key : "-", row->status);
    return 0;
}

static int wh__print_detail(const wh_event_detail_t *d, void *ctx)
{
    json_error_t jerr;
    json_t *body = json_loads(d->row.body, JSON_ALLOW_NUL, &jerr);
    json_t *obj = json_pack("{s:I,s:I,s:s,s:s,s:s,s:s?,s:s,s:i,s:s?,s:s?,s:I,s:I,s:o?}", "id",
                            (json_int_t)d->row.id, "received_at", (json_int_t)d->row.received_at,
                            "instance", d->row.instance, "event", d->row.event, "dedup_id",
                            d->row.dedup_id, "contact_key", d->row.contact_key, "status",
                            d->row.status, "attempts", d->attempts, "last_error", d->last_error,
                            "script_version", d->script_version, "processed_at",
                            (json_int_t)d->processed_at, "next_attempt_at",
                            (json_int_t)d->next_attempt_at, "body", body);
    char *text = obj != NULL ? json_dumps(obj, JSON_INDENT(2)) : NULL;
    if (text != NULL)
        printf("%s\n", text);
    free(text);
    json_decref(obj);
    *(int *)ctx = 1;
    return 0;
}

static int wh__events_retry(wh__opts_t *o, wh_config_t *conf, const char *path)
{
    char apipath[64];
    snprintf(apipath, sizeof(apipath), "/api/events/%lld/retry", (long long)o->id);
    char *body = NULL;
    int status = wh__admin_request(conf, "POST", apipath, &body);
    if (status > 0) {
        printf("%s\n", body != NULL ? body : "");
        free(body);
        return status == 200 ? 0 : 1;
    }
    free(body);
    /* Nothing listens: the store has no other writer, so change it directly. */
    wh_store_t *store = NULL;
    char err[512];
    wh_store_opts_t so = {.path = path, .sync_full = 1};
    if (wh_store_open(&store, &so, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "wahook events retry: %s\n", err);
        return 1;
    }
    int rc = wh_store_event_retry(store, o->id);
    wh_store_close(store);
    if (rc == WH_OK) {
        printf("{\"status\":\"pending\",\"id\":%lld}\n", (long long)o->id);
        return 0;
    }
    fprintf(stderr, "wahook events retry: %s\n",
            rc == WH_ENOTFOUND ? "no such event"
            : rc == WH_EINVAL  ? "the event is neither dead nor failing"
                               : wh_strerror(rc));
    return 1;
}

static int wh__cmd_events(wh__opts_t *o)
{
    wh_config_t conf;
    if (wh__load_config(o, &conf, 0) != 0)
        return 1;
    char path[4096];
    snprintf(path, sizeof(path), "%s/wahook.db", conf.data_dir);
    if (o->sub != NULL && strcmp(o->sub, "retry") == 0) {
        int rc = wh__events_retry(o, &conf, path);
        wh_config_free(&conf);
        return rc;
    }
    wh_config_free(&conf);
    if (o->sub != NULL && strcmp(o->sub, "show") == 0) {
        char err[512];
        int found = 0;
        int rc = wh_store_event_show(path, o->id, wh__print_detail, &found, err, sizeof(err));
        if (rc != WH_OK || !found) {
            fprintf(stderr, "wahook events show: %s\n",
                    rc == WH_OK || rc == WH_ENOTFOUND ? "no such event" : err);
            return 1;
        }
        return 0;
    }
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "wahook events: no store at %s (has the server run?)\n", path);
        return 1;
    }
    wh__events_ctx_t c = {.json = o->json};
    if (!o->json)
        printf("%-8s %-20s %-16s %-20s %-22s %s\n", "ID", "RECEIVED", "INSTANCE", "EVENT",
               "CONTACT", "STATUS");
    char err[512];
    if (wh_store_events_list(path, o->since, o->limit, wh__print_event, &c, err, sizeof(err)) !=
        WH_OK) {
        fprintf(stderr, "wahook events: %s\n", err);
        return 1;
    }
    return 0;
}

/* ---- wahook outbox ------------------------------------------------------------------------- */

static int wh__outbox_collect(const wh_outbox_row_t *row, void *ctx)
{
    json_t *o = wh_outbox_row_json(row);
    if (o != NULL)
        json_array_append_new(ctx, o);
    return 0;
}

static void wh__outbox_print(const json_t *row, int json)
{
    if (json) {
        char *text = json_dumps(row, JSON_COMPACT);
        if (text != NULL)
            printf("%s\n", text);
        free(text);
        return;
    }
    time_t secs = (time_t)(json_integer_value(json_object_get(row, "created_at")) / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[32];
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    const char *ck = json_string_value(json_object_get(row, "contact_key"));
    const char *err = json_string_value(json_object_get(row, "last_error"));
    printf("%-8lld %-20s %-9s %-16s %-16s %-8s %-3lld %.60s\n",
           (long long)json_integer_value(json_object_get(row, "id")), ts,
           json_string_value(json_object_get(row, "target")),
           json_string_value(json_object_get(row, "instance")), ck != NULL && ck[0] ? ck : "-",
           json_string_value(json_object_get(row, "status")),
           (long long)json_integer_value(json_object_get(row, "attempts")), err != NULL ? err : "");
}

/* list and show: from the running server's admin API (which knows what is in flight), else
 * straight from the store (read-only: safe while a server runs). */
static int wh__outbox_read(wh__opts_t *o, const wh_config_t *conf, const char *path)
{
    int show = o->sub != NULL && strcmp(o->sub, "show") == 0;
    char apipath[256];
    if (show)
        snprintf(apipath, sizeof(apipath), "/api/outbox/%lld", (long long)o->id);
    else
        snprintf(apipath, sizeof(apipath), "/api/outbox?limit=%d%s%s%s%s", o->limit,
                 o->status ? "&status=" : "", o->status ? o->status : "",
                 o->target ? "&target=" : "", o->target ? o->target : "");
    char *body = NULL;
    int status = wh__admin_request(conf, "GET", apipath, &body);
    json_t *answer = status == 200 && body != NULL ? json_loads(body, 0, NULL) : NULL;
    if (status == 404 && show) {
        fprintf(stderr, "wahook outbox show: no such outbox row\n");
        free(body);
        return 1;
    }
    if (status == 400) {
        fprintf(stderr, "wahook outbox: %s\n", body != NULL ? body : "bad request");
        free(body);
        return 2;
    }
    free(body);
    json_t *rows = NULL;
    if (answer != NULL) {
        rows = show ? json_pack("[O]", answer) : json_incref(json_object_get(answer, "rows"));
        json_decref(answer);
    }
    if (rows == NULL) {
        char err[512];
        rows = json_array();
        if (access(path, R_OK) != 0) {
            fprintf(stderr, "wahook outbox: no store at %s (has the server run?)\n", path);
            json_decref(rows);
            return 1;
        }
        int rc = show ? wh_outbox_show(path, o->id, wh__outbox_collect, rows, err, sizeof(err))
                      : wh_outbox_list(path, o->status, o->target, o->limit, wh__outbox_collect,
                                       rows, err, sizeof(err));
        if (rc != WH_OK) {
            fprintf(stderr, "wahook outbox %s: %s\n", show ? "show" : "list",
                    rc == WH_ENOTFOUND ? "no such outbox row" : err);
            json_decref(rows);
            return 1;
        }
    }
    if (show) {
        char *text = json_dumps(json_array_get(rows, 0), JSON_INDENT(2));
        if (text != NULL)
            printf("%s\n", text);
        free(text);
    } else {
        if (!o->json)
            printf("%-8s %-20s %-9s %-16s %-16s %-8s %-3s %s\n", "ID", "CREATED", "TARGET",
                   "INSTANCE", "CONTACT", "STATUS", "TRY", "LAST ERROR");
        size_t i;
        const json_t *row;
        json_array_foreach(rows, i, row) wh__outbox_print(row, o->json);
    }
    json_decref(rows);
    return 0;
}

/* retry and drop: through the running server (one writer), else the store directly. */
static int wh__outbox_change(wh__opts_t *o, const wh_config_t *conf, const char *path)
{
    int drop = strcmp(o->sub, "drop") == 0;
    char apipath[64];
    snprintf(apipath, sizeof(apipath), "/api/outbox/%lld/%s", (long long)o->id, o->sub);
    char *body = NULL;
    int status = wh__admin_request(conf, "POST", apipath, &body);
    if (status > 0) {
        printf("%s\n", body != NULL ? body : "");
        free(body);
        return status == 200 ? 0 : 1;
    }
    free(body);
    wh_store_t *store = NULL;
    char err[512];
    wh_store_opts_t so = {.path = path, .sync_full = 1};
    if (wh_store_open(&store, &so, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "wahook outbox %s: %s\n", o->sub, err);
        return 1;
    }
    int rc = drop ? wh_outbox_drop(store, o->id) : wh_outbox_retry(store, o->id);
    wh_store_close(store);
    if (rc == WH_OK) {
        printf("{\"status\":\"%s\",\"id\":%lld}\n", drop ? "dropped" : "pending",
               (long long)o->id);
        return 0;
    }
    fprintf(stderr, "wahook outbox %s: %s\n", o->sub,
            rc == WH_ENOTFOUND ? "no such outbox row"
            : rc == WH_EINVAL  ? "the row is already done or dropped"
                               : wh_strerror(rc));
    return 1;
}

static int wh__cmd_outbox(wh__opts_t *o)
{
    wh_config_t conf;
    if (wh__load_config(o, &conf, 0) != 0)
        return 1;
    char path[4096];
    snprintf(path, sizeof(path), "%s/wahook.db", conf.data_dir);
    int rc = o->sub != NULL && (strcmp(o->sub, "retry") == 0 || strcmp(o->sub, "drop") == 0)
                 ? wh__outbox_change(o, &conf, path)
                 : wh__outbox_read(o, &conf, path);
    wh_config_free(&conf);
    return rc;
}

/* Creates the env file with a fresh WEBHOOK_SECRET when none is set, and prints how to point
 * Evolution API at this server. */
static int wh__cmd_init(wh__opts_t *o)
{
    if (wh__load_env(o) != 0)
        return 1;
    const char *secret = getenv("WEBHOOK_SECRET");
    char generated[64];
    if (secret == NULL || secret[0] == '\0') {
        unsigned char raw[32];
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            fprintf(stderr, "wahook init: no randomness available\n");
            return 1;
        }
        wh_base64_encode(raw, sizeof(raw), generated);
        FILE *f = fopen(o->env_file, "a");
        if (f == NULL) {
            fprintf(stderr, "wahook init: cannot write %s: %s\n", o->env_file, strerror(errno));
            return 1;
        }
        fchmod(fileno(f), 0600);
        fprintf(f, "# generated by wahook init: 32 random bytes, base64\nWEBHOOK_SECRET=%s\n",
                generated);
        fclose(f);
        setenv("WEBHOOK_SECRET", generated, 1);
        secret = generated;
        printf("wahook: WEBHOOK_SECRET was not set; generated a new one into %s\n", o->env_file);
    }

    wh_config_t conf;
    char err[1024];
    char url[512] = "http://127.0.0.1:8080/api/whatsapp/webhook";
    if (wh_config_load(&conf, o->conf, err, sizeof(err)) == WH_OK) {
        for (size_t i = 0; i < conf.num_routes; i++) {
            if (conf.routes[i].kind == WH_HANDLER_WEBHOOK && conf.num_listen > 0) {
                const wh_listen_conf_t *l = &conf.listen[0];
                snprintf(url, sizeof(url), "%s://%s:%u%s",
                         l->certificate_file != NULL ? "https" : "http",
                         l->host != NULL ? l->host : "127.0.0.1", (unsigned)l->port,
                         conf.routes[i].path);
                break;
            }
        }
        wh_config_free(&conf);
    }
    /* The secret is printed only because the operator must paste it into Evolution once. */
    printf("\nPoint Evolution API at wahook (POST {EVOLUTION_API_URL}/webhook/set/{instance},\n"
           "header apikey: <your Evolution API key>) with this body:\n\n"
           "{\"webhook\":{\"enabled\":true,\"url\":\"%s\",\n"
           "  \"headers\":{\"x-webhook-token\":\"%s\",\"jwt_key\":\"%s\"},\n"
           "  \"byEvents\":false,\"base64\":false,\n"
           "  \"events\":[\"MESSAGES_UPSERT\",\"MESSAGES_UPDATE\",\"MESSAGES_DELETE\","
           "\"SEND_MESSAGE\",\"CONNECTION_UPDATE\",\"QRCODE_UPDATED\",\"PRESENCE_UPDATE\","
           "\"CONTACTS_UPSERT\"]}}\n\n"
           "Send a first signed event:\n\n"
           "  body='{\"event\":\"connection.update\",\"instance\":\"demo\",\"data\":{\"state\":"
           "\"open\"}}'\n"
           "  curl -sS -H 'content-type: application/json' \\\n"
           "       -H \"x-webhook-signature: $(printf '%%s' \"$body\" | build/wahook sign -)\" \\\n"
           "       --data-binary \"$body\" %s\n\n",
           url, secret, secret, url);
    return 0;
}

/* ---- talking to the running server's admin listener ---------------------------------------- */

/* Sends one request to the admin listener. Returns the HTTP status, 0 when nothing listens
 * there, -1 on another failure. The response body (malloc'd) goes to *body. */
static int wh__admin_request(const wh_config_t *conf, const char *method, const char *path,
                             char **body)
{
    *body = NULL;
    if (conf->admin.port == 0)
        return 0;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)conf->admin.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(conf->admin.host ? conf->admin.host : "127.0.0.1", port, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return 0;
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: wahook-admin\r\nAuthorization: Bearer %s\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n",
                     method, path, conf->admin.token ? conf->admin.token : "");
    if (n <= 0 || (size_t)n >= sizeof(head) || write(fd, head, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    ssize_t r;
    while (buf != NULL && (r = read(fd, buf + len, cap - len)) > 0) {
        len += (size_t)r;
        if (len == cap) {
            char *nb = realloc(buf, (cap *= 2) + 1);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    close(fd);
    if (buf == NULL)
        return -1;
    buf[len] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        free(buf);
        return -1;
    }
    char *sep = strstr(buf, "\r\n\r\n");
    *body = strdup(sep != NULL ? sep + 4 : "");
    free(buf);
    return status;
}

static int wh__cmd_reload(wh__opts_t *o)
{
    wh_config_t conf;
    if (wh__load_config(o, &conf, 0) != 0)
        return 1;
    char *body = NULL;
    int status = wh__admin_request(&conf, "POST", "/api/reload", &body);
    wh_config_free(&conf);
    if (status <= 0) {
        fprintf(stderr, "wahook reload: no server answers on the admin listener (send SIGHUP to "
                        "the server instead)\n");
        free(body);
        return 1;
    }
    printf("%s\n", body != NULL ? body : "");
    free(body);
    return status == 200 ? 0 : 1;
}

/* Runs the handlers on one event without a server or network, and prints what they would do. */
static int wh__cmd_try(wh__opts_t *o)
{
    int rc = 1;
    wh_config_t conf;
    if (wh__load_config(o, &conf, 0) != 0)
        return 1;
    char err[4096];
    wh_scripts_t *scripts = NULL;
    wh_scripts_gen_t *gen = NULL;
    wh_lua_vm_t *vm = NULL;
    json_t *ev = NULL, *prior = NULL, *result = NULL;
    wh_outcome_t out;
    int out_ready = 0;
    char *body = NULL;
    size_t len = 0;
    wh_envelope_t env = {0};

    if (o->input == NULL) {
        fprintf(stderr, "wahook try: give an event file (or - for stdin)\n");
        goto done;
    }
    FILE *in = strcmp(o->input, "-") == 0 ? stdin : fopen(o->input, "rb");
    if (in == NULL) {
        fprintf(stderr, "wahook try: cannot read %s: %s\n", o->input, strerror(errno));
        goto done;
    }
    body = wh__read_all(in, &len);
    if (in != stdin)
        fclose(in);
    if (body == NULL)
        goto done;
    if (o->state_json != NULL) {
        json_error_t jerr;
        prior = json_loads(o->state_json, 0, &jerr);
        if (!json_is_object(prior)) {
            fprintf(stderr, "wahook try: --state must be a JSON object (%s)\n", jerr.text);
            goto done;
        }
    }
    /* The same envelope rules as ingest: redaction, dedup, the contact candidates. */
    wh_envelope_opts_t eo = {.keep_media = conf.store_keep_media};
    if (wh_envelope_parse(&env, body, len, &eo, err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "wahook try: %s\n", err);
        goto done;
    }
    char *contact = wh_contact_key(env.phone, env.lid, NULL);
    ev = wh_process_build_event(0, wh_now_ms(), contact, env.body, 1);
    free(contact);
    if ((scripts = wh_scripts_new(&conf, o->conf, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    gen = wh_scripts_current(scripts);
    if ((vm = wh_scripts_vm_new(scripts, gen, NULL, NULL, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    result = json_object();
    if (strcmp(env.event, "timer") != 0 && wh_process_normalize(vm, ev, err, sizeof(err)) != WH_OK)
        json_object_set_new(result, "normalize_error", json_string(err));
    if (wh_outcome_init(&out, NULL) != WH_OK)
        goto done;
    out_ready = 1;
    wh_outcome_set_prior_state(&out, prior);
    int hr = wh_lua_vm_run_handler_in(vm, WH_PHASE_TRY, env.event, ev, &out, err, sizeof(err));
    json_object_set_new(result, "event", json_string(env.event));
    json_object_set_new(result, "contact", json_incref(json_object_get(ev, "contact")));
    json_object_set_new(result, "script_version", json_string(gen->version));
    if (json_object_get(ev, "msg") != NULL)
        json_object_set_new(result, "msg", json_incref(json_object_get(ev, "msg")));
    if (hr == WH_OK || hr == WH_ENOTFOUND) {
        json_object_set_new(result, "handled", json_boolean(hr == WH_OK));
        json_object_set_new(result, "outcome", wh_outcome_to_json(&out));
        rc = 0;
    } else {
        json_object_set_new(result, "error", json_string(err));
    }
    char *text = json_dumps(result, JSON_INDENT(2));
    if (text != NULL)
        printf("%s\n", text);
    free(text);
done:
    json_decref(result);
    if (out_ready)
        wh_outcome_free(&out);
    json_decref(prior);
    json_decref(ev);
    wh_envelope_clear(&env);
    free(body);
    wh_lua_vm_free(vm);
    if (scripts != NULL) {
        wh_scripts_gen_unref(scripts, gen);
        wh_scripts_free(scripts);
    }
    wh_config_free(&conf);
    return rc;
}

/* `wahook stats` parses its own options (cli_stats.c); -c and --env-file are read here. */
static int wh__stats_argc;
static char **wh__stats_argv;

static int wh__cmd_stats(wh__opts_t *o)
{
    wh_config_t conf;
    if (wh__load_config(o, &conf, 0) != 0)
        return 1;
    int rc = wh_cli_stats(&conf, wh__stats_argc, wh__stats_argv);
    wh_config_free(&conf);
    return rc;
}

static int wh__cmd_version(wh__opts_t *o)
{
    printf("wahook %s (libh2o %s, %s, SQLite %s, jansson %s)\n", WH_VERSION, H2O_VERSION,
           "Lua 5.4", sqlite3_libversion(), JANSSON_VERSION);
    return 0;
}

static const wh__command_t wh__commands[] = {
    {"serve", "serve [-c FILE] [--env-file FILE]", "run the server until SIGTERM/SIGINT",
     wh__cmd_serve},
    {"check", "check [-c FILE] [--env-file FILE]",
     "validate the configuration; exit 0, or 1 with file:line:column errors", wh__cmd_check},
    {"sign", "sign [-c FILE] [--env-file FILE] [--secret-file F] [FILE|-]",
     "print the x-webhook-signature value (sha256=<hex>) of a body read from FILE or stdin,\n"
     "  signed with WEBHOOK_SECRET or the content of --secret-file (never a secret in argv)",
     wh__cmd_sign},
    {"events",
     "events [list|show ID|retry ID] [-c FILE] [--env-file FILE] [--since ID] [--limit N] "
     "[--json]",
     "list stored events oldest first (apikey values are redacted in storage), show one with\n"
     "  its processing status and last error, or put a dead event back to pending (through the\n"
     "  running server's admin listener, or the store directly when no server runs)",
     wh__cmd_events},
    {"outbox",
     "outbox [list|show ID|retry ID|drop ID] [-c FILE] [--env-file FILE] [--status S] "
     "[--target T] [--limit N] [--json]",
     "list outbox actions newest first (optionally one status: pending, done, dead, dropped;\n"
     "  one target: evolution, crm, mail, alert), show one with its last error and the peer's\n"
     "  answer, put a dead or waiting one back to pending now, or drop one (never delivered);\n"
     "  retry and drop go through the running server's admin listener, or the store directly\n"
     "  when no server runs",
     wh__cmd_outbox},
    {"try", "try [-c FILE] [--env-file FILE] EVENT.json [--state JSON]",
     "run the handlers on one event without a server or network and print, as JSON, the\n"
     "  actions, timers, state and facts they would commit, or the error with its traceback",
     wh__cmd_try},
    {"reload", "reload [-c FILE] [--env-file FILE]",
     "ask the running server to reload its scripts and wahook.scripts.config (as SIGHUP does)\n"
     "  and print the new version or the load error",
     wh__cmd_reload},
    {"init", "init [-c FILE] [--env-file FILE]",
     "generate WEBHOOK_SECRET into the env file when unset, and print the Evolution API\n"
     "  webhook body and a signed curl example",
     wh__cmd_init},
    {"stats", "stats [-c FILE] [--env-file FILE] [--since T] [--until T] [--instance X] [--json]",
     "analytics for a time range from the store (a table, or JSON with --json); see\n"
     "  wahook stats --help",
     wh__cmd_stats},
    {"version", "version", "print the version", wh__cmd_version},
};

static void wh__usage(FILE *f)
{
    fprintf(f, "usage: wahook COMMAND [OPTIONS]\n\nWhatsApp webhook runtime for Evolution API.\n\n"
               "commands:\n");
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__commands); i++)
        fprintf(f, "  %-8s %s\n", wh__commands[i].name, wh__commands[i].summary);
    fprintf(f, "\nRun 'wahook COMMAND --help' for the options of a command.\n");
}

static void wh__command_usage(FILE *f, const wh__command_t *c)
{
    fprintf(f, "usage: wahook %s\n\n  %s\n\noptions:\n%s", c->usage, c->summary, wh__common_opts);
    if (strcmp(c->name, "events") == 0)
        fprintf(f, "      --since ID      only events with a larger id\n"
                   "      --limit N       at most N events (default 100)\n"
                   "      --json          one JSON object per line\n");
    if (strcmp(c->name, "sign") == 0)
        fprintf(f, "      --secret-file F read the secret from F (trailing newline dropped)\n");
    if (strcmp(c->name, "outbox") == 0)
        fprintf(f, "      --status S      only rows with this status (pending, done, dead,\n"
                   "                      dropped)\n"
                   "      --target T      only rows of this target (evolution, crm, mail, alert)\n"
                   "      --limit N       at most N rows (default 100)\n"
                   "      --json          one JSON object per line\n");
}

static int wh__parse_args(const wh__command_t *c, int argc, char **argv, wh__opts_t *o)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
#define WH__NEED_ARG                                                                           \
    do {                                                                                       \
        if (next == NULL) {                                                                    \
            fprintf(stderr, "wahook %s: %s needs a value\n", c->name, a);                      \
            return -1;                                                                         \
        }                                                                                      \
        i++;                                                                                   \
    } while (0)
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            o->help = 1;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            WH__NEED_ARG;
            o->conf = next;
        } else if (strcmp(a, "--env-file") == 0) {
            WH__NEED_ARG;
            o->env_file = next;
            o->env_file_explicit = 1;
        } else if (strcmp(c->name, "sign") == 0 && strcmp(a, "--secret-file") == 0) {
            WH__NEED_ARG;
            o->secret_file = next;
        } else if (strcmp(c->name, "events") == 0 && strcmp(a, "--since") == 0) {
            WH__NEED_ARG;
            o->since = strtoll(next, NULL, 10);
        } else if (strcmp(c->name, "events") == 0 && strcmp(a, "--limit") == 0) {
            WH__NEED_ARG;
            o->limit = atoi(next);
            if (o->limit <= 0) {
                fprintf(stderr, "wahook events: --limit takes a positive number\n");
                return -1;
            }
        } else if (strcmp(c->name, "events") == 0 && strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(c->name, "events") == 0 && i == 0 &&
                   (strcmp(a, "list") == 0 || strcmp(a, "show") == 0 ||
                    strcmp(a, "retry") == 0)) {
            o->sub = a;
            if (strcmp(a, "list") != 0) {
                char *end = NULL;
                if (next == NULL || (o->id = strtoll(next, &end, 10)) <= 0 || *end != '\0') {
                    fprintf(stderr, "wahook events %s: give an event id\n", a);
                    return -1;
                }
                i++;
            }
        } else if (strcmp(c->name, "outbox") == 0 && strcmp(a, "--status") == 0) {
            WH__NEED_ARG;
            static const char *const ok[] = {"pending", "inflight", "done", "dead", "dropped"};
            int found = 0;
            for (size_t k = 0; k < WH_ARRAY_SIZE(ok); k++)
                found |= strcmp(next, ok[k]) == 0;
            if (!found) {
                fprintf(stderr, "wahook outbox: --status takes pending, done, dead or dropped\n");
                return -1;
            }
            o->status = next;
        } else if (strcmp(c->name, "outbox") == 0 && strcmp(a, "--target") == 0) {
            WH__NEED_ARG;
            if (strcmp(next, "evolution") != 0 && strcmp(next, "crm") != 0 &&
                strcmp(next, "mail") != 0 && strcmp(next, "alert") != 0) {
                fprintf(stderr, "wahook outbox: --target takes evolution, crm, mail or alert\n");
                return -1;
            }
            o->target = next;
        } else if (strcmp(c->name, "outbox") == 0 && strcmp(a, "--limit") == 0) {
            WH__NEED_ARG;
            o->limit = atoi(next);
            if (o->limit <= 0 || o->limit > 10000) {
                fprintf(stderr, "wahook outbox: --limit takes a number from 1 to 10000\n");
                return -1;
            }
        } else if (strcmp(c->name, "outbox") == 0 && strcmp(a, "--json") == 0) {
            o->json = 1;
        } else if (strcmp(c->name, "outbox") == 0 && i == 0 &&
                   (strcmp(a, "list") == 0 || strcmp(a, "show") == 0 ||
                    strcmp(a, "retry") == 0 || strcmp(a, "drop") == 0)) {
            o->sub = a;
            if (strcmp(a, "list") != 0) {
                char *end = NULL;
                if (next == NULL || (o->id = strtoll(next, &end, 10)) <= 0 || *end != '\0') {
                    fprintf(stderr, "wahook outbox %s: give an outbox id\n", a);
                    return -1;
                }
                i++;
            }
        } else if (strcmp(c->name, "try") == 0 && strcmp(a, "--state") == 0) {
            WH__NEED_ARG;
            o->state_json = next;
        } else if (strcmp(c->name, "try") == 0 && o->input == NULL &&
                   (a[0] != '-' || strcmp(a, "-") == 0)) {
            o->input = a;
        } else if (strcmp(c->name, "sign") == 0 && o->input == NULL &&
                   (a[0] != '-' || strcmp(a, "-") == 0)) {
            o->input = a;
        } else {
            fprintf(stderr, "wahook %s: unknown argument '%s' (see wahook %s --help)\n", c->name,
                    a, c->name);
            return -1;
        }
#undef WH__NEED_ARG
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        wh__usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0)
        argv[1] = "version";
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__commands); i++) {
        const wh__command_t *c = &wh__commands[i];
        if (strcmp(argv[1], c->name) != 0)
            continue;
        wh__opts_t o = {.conf = WH__DEFAULT_CONF, .env_file = WH__DEFAULT_ENV, .limit = 100};
        if (strcmp(c->name, "stats") == 0) {
            for (int k = 2; k < argc; k++) {
                if (strcmp(argv[k], "-h") == 0 || strcmp(argv[k], "--help") == 0) {
                    printf("%s", wh_cli_stats_usage);
                    return 0;
                }
                if ((strcmp(argv[k], "-c") == 0 || strcmp(argv[k], "--config") == 0) &&
                    k + 1 < argc)
                    o.conf = argv[k + 1];
                if (strcmp(argv[k], "--env-file") == 0 && k + 1 < argc) {
                    o.env_file = argv[k + 1];
                    o.env_file_explicit = 1;
                }
            }
            wh__stats_argc = argc - 2;
            wh__stats_argv = argv + 2;
            return c->run(&o);
        }
        if (wh__parse_args(c, argc - 2, argv + 2, &o) != 0)
            return 2;
        if (o.help) {
            wh__command_usage(stdout, c);
            return 0;
        }
        return c->run(&o);
    }
    fprintf(stderr, "wahook: unknown command '%s'\n\n", argv[1]);
    wh__usage(stderr);
    return 2;
}
