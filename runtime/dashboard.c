/* The dashboard on the admin listener: static files loaded into memory at start, token login
 * for a random, expiring, server-side session cookie (rate-limited per client address), the
 * authorisation shared by the dashboard's API modules, and the connection/QR view. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <h2o.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "wahook/cidr.h"
#include "wahook/common.h"
#include "wahook/dashboard.h"
#include "wahook/log.h"
#include "wahook/ratelimit.h"

#define WH__MAX_FILES 128
#define WH__MAX_FILE_SIZE (1024 * 1024)
#define WH__MAX_TOTAL (8 * 1024 * 1024)
#define WH__LOGIN_BODY_MAX 4096
#define WH__TRY_BODY_MAX (1024 * 1024)
#define WH__SESSION_ID_BYTES 32

static const char wh__csp[] =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'";

typedef struct wh__file {
    char *rel; /* "app.js", "examples/messages-upsert-text.json" */
    char *data;
    size_t len;
    const char *mime;
} wh__file_t;

typedef struct wh__session {
    unsigned char hash[32]; /* SHA-256 of the cookie value: the id itself is never kept */
    int64_t created_at, expires_at;
    int used;
} wh__session_t;

struct wh_dashboard {
    wh_dashboard_opts_t o;
    char *token;
    char dir[PATH_MAX];
    wh__file_t files[WH__MAX_FILES];
    size_t num_files, total;
    pthread_mutex_t mu; /* sessions */
    wh__session_t *sessions;
    wh_ratelimit_t *login_limit;
    atomic_int dry_runs;
    atomic_uint_fast64_t logins, login_failures, login_limited, dry_run_count;
    wh_admin_module_t modules[WH_DASHBOARD_NUM_MODULES];
};

/* ---- static files ------------------------------------------------------------------------- */

static const char *wh__mime(const char *name)
{
    static const struct {
        const char *ext, *mime;
    } map[] = {
        {".html", "text/html; charset=utf-8"},   {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},     {".json", "application/json"},
        {".svg", "image/svg+xml"},               {".png", "image/png"},
        {".ico", "image/x-icon"},                {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');
    if (dot == NULL)
        return NULL;
    for (size_t i = 0; i < WH_ARRAY_SIZE(map); i++)
        if (strcmp(dot, map[i].ext) == 0)
            return map[i].mime;
    return NULL;
}

static int wh__read_file(const char *path, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return WH_EIO;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size > WH__MAX_FILE_SIZE) {
        fclose(f);
        return WH_EINVAL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t n = buf != NULL ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (buf == NULL)
        return WH_ENOMEM;
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return WH_OK;
}

/* Loads dir/prefix… (one level of subdirectories: examples/). */
static int wh__load_dir(wh_dashboard_t *d, const char *prefix, int depth)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", d->dir, prefix) >= sizeof(path))
        return WH_EINVAL;
    DIR *dir = opendir(path);
    if (dir == NULL)
        return WH_EIO;
    struct dirent *de;
    int rc = WH_OK;
    while (rc == WH_OK && (de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char rel[PATH_MAX], full[PATH_MAX];
        if ((size_t)snprintf(rel, sizeof(rel), "%s%s", prefix, de->d_name) >= sizeof(rel) ||
            (size_t)snprintf(full, sizeof(full), "%s/%s", d->dir, rel) >= sizeof(full))
            continue;
        struct stat st;
        if (stat(full, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 1) {
                char sub[PATH_MAX];
                if ((size_t)snprintf(sub, sizeof(sub), "%s/", rel) < sizeof(sub) &&
                    wh__load_dir(d, sub, depth + 1) == WH_ENOMEM)
                    rc = WH_ENOMEM;
            }
            continue;
        }
        const char *mime = wh__mime(de->d_name);
        if (!S_ISREG(st.st_mode) || mime == NULL)
            continue;
        if (d->num_files == WH__MAX_FILES || d->total + (size_t)st.st_size > WH__MAX_TOTAL) {
            wh_log(WH_LOG_WARN, "dashboard: too many files, the rest is not served", "{s:s}",
                   "file", rel);
            break;
        }
        wh__file_t *f = &d->files[d->num_files];
        if (wh__read_file(full, &f->data, &f->len) != WH_OK)
            continue;
        if ((f->rel = strdup(rel)) == NULL) {
            free(f->data);
            rc = WH_ENOMEM;
            break;
        }
        f->mime = mime;
        d->total += f->len;
        d->num_files++;
    }
    closedir(dir);
    return rc;
}

static int wh__has_index(const char *dir)
{
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof(p), "%s/index.html", dir) >= sizeof(p))
        return 0;
    return access(p, R_OK) == 0;
}

/* The configured directory, else runtime/web in the working directory, else next to the
 * binary (build/wahook → ../runtime/web; an install → ../share/wahook/web). */
static void wh__find_dir(wh_dashboard_t *d, const char *configured)
{
    d->dir[0] = '\0';
    if (configured != NULL && configured[0]) {
        if (wh__has_index(configured))
            snprintf(d->dir, sizeof(d->dir), "%s", configured);
        return;
    }
    if (wh__has_index("runtime/web")) {
        snprintf(d->dir, sizeof(d->dir), "runtime/web");
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return;
    *slash = '\0';
    static const char *const rel[] = {"../runtime/web", "../share/wahook/web"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(rel); i++) {
        char cand[PATH_MAX];
        if ((size_t)snprintf(cand, sizeof(cand), "%s/%s", exe, rel[i]) >= sizeof(cand))
            continue;
        if (wh__has_index(cand)) {
            snprintf(d->dir, sizeof(d->dir), "%s", cand);
            return;
        }
    }
}

static const wh__file_t *wh__find_file(const wh_dashboard_t *d, const char *rel, size_t len)
{
    for (size_t i = 0; i < d->num_files; i++)
        if (strlen(d->files[i].rel) == len && memcmp(d->files[i].rel, rel, len) == 0)
            return &d->files[i];
    return NULL;
}

static void wh__security_headers(h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0,
                          NULL, wh__csp, sizeof(wh__csp) - 1);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0,
                          NULL, H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-frame-options"), 0, NULL,
                          H2O_STRLIT("DENY"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("referrer-policy"), 0, NULL,
                          H2O_STRLIT("no-referrer"));
}

static int wh__serve_static(void *self, const wh_admin_env_t *env, h2o_req_t *req,
                            h2o_iovec_t path)
{
    wh_dashboard_t *d = self;
    static const char prefix[] = "/dashboard";
    size_t pl = sizeof(prefix) - 1;
    if (path.len < pl || memcmp(path.base, prefix, pl) != 0 ||
        (path.len > pl && path.base[pl] != '/'))
        return 0;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        wh_admin_respond_error(req, 405, "method not allowed");
        return 1;
    }
    if (path.len == pl) {
        /* Relative links in the page need the trailing slash. */
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL,
                       H2O_STRLIT("/dashboard/"));
        wh_admin_respond(req, 301, "text/plain; charset=utf-8", "/dashboard/\n", 12);
        return 1;
    }
    const char *rel = path.base + pl + 1;
    size_t rl = path.len - pl - 1;
    if (rl == 0) {
        rel = "index.html";
        rl = strlen(rel);
    }
    if (d->num_files == 0) {
        char msg[PATH_MAX + 96];
        snprintf(msg, sizeof(msg),
                 "dashboard files not found (set wahook.dashboard.dir to the runtime/web "
                 "directory)");
        wh_admin_respond_error(req, 404, msg);
        return 1;
    }
    const wh__file_t *f = wh__find_file(d, rel, rl);
    if (f == NULL) {
        wh_admin_respond_error(req, 404, "not found");
        return 1;
    }
    wh__security_headers(req);
    wh_admin_respond(req, 200, f->mime, f->data, f->len);
    return 1;
}

/* ---- sessions ----------------------------------------------------------------------------- */

static void wh__sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

/* The value of cookie WH_DASHBOARD_COOKIE in req, or an empty iovec. */
static h2o_iovec_t wh__session_cookie(h2o_req_t *req)
{
    static const char name[] = WH_DASHBOARD_COOKIE;
    size_t nl = sizeof(name) - 1;
    for (ssize_t i = -1;
         (i = h2o_find_header(&req->headers, H2O_TOKEN_COOKIE, i)) != -1;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        size_t p = 0;
        while (p < v.len) {
            while (p < v.len && (v.base[p] == ' ' || v.base[p] == ';'))
                p++;
            size_t end = p;
            while (end < v.len && v.base[end] != ';')
                end++;
            if (end - p > nl && memcmp(v.base + p, name, nl) == 0 && v.base[p + nl] == '=')
                return h2o_iovec_init(v.base + p + nl + 1, end - p - nl - 1);
            p = end;
        }
    }
    return h2o_iovec_init(NULL, 0);
}

/* Index of the live session matching the cookie, or -1. Caller holds the mutex. */
static int wh__session_find(wh_dashboard_t *d, h2o_iovec_t cookie, int64_t now)
{
    if (cookie.len != WH__SESSION_ID_BYTES * 2)
        return -1;
    unsigned char h[32];
    wh__sha256(cookie.base, cookie.len, h);
    for (size_t i = 0; i < d->o.max_sessions; i++) {
        wh__session_t *s = &d->sessions[i];
        if (!s->used)
            continue;
        if (s->expires_at <= now) {
            memset(s, 0, sizeof(*s));
            continue;
        }
        if (wh_ct_equal(s->hash, 32, h, 32))
            return (int)i;
    }
    return -1;
}

/* 1 when an Origin header is absent or names this server (scheme://Host). */
static int wh__same_origin(h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("origin"), -1);
    if (i < 0)
        return 1;
    h2o_iovec_t o = req->headers.entries[i].value;
    h2o_iovec_t host = req->input.authority;
    const char *schemes[] = {"http://", "https://"};
    for (size_t k = 0; k < 2; k++) {
        size_t sl = strlen(schemes[k]);
        if (o.len == sl + host.len && memcmp(o.base, schemes[k], sl) == 0 &&
            h2o_lcstris(o.base + sl, host.len, host.base, host.len))
            return 1;
    }
    return 0;
}

static int wh__is_safe_method(h2o_req_t *req)
{
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
           h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
}

/* 1: a live session; 0: none; -1: a live session on a cross-site state-changing request. */
static int wh__session_check(wh_dashboard_t *d, h2o_req_t *req, int64_t *expires_at)
{
    h2o_iovec_t cookie = wh__session_cookie(req);
    if (cookie.base == NULL)
        return 0;
    pthread_mutex_lock(&d->mu);
    int i = wh__session_find(d, cookie, wh_now_ms());
    if (i >= 0 && expires_at != NULL)
        *expires_at = d->sessions[i].expires_at;
    pthread_mutex_unlock(&d->mu);
    if (i < 0)
        return 0;
    if (!wh__is_safe_method(req) && !wh__same_origin(req))
        return -1;
    return 1;
}

int wh_dashboard_session_ok(wh_dashboard_t *d, h2o_req_t *req)
{
    return d != NULL && wh__session_check(d, req, NULL) == 1;
}

int wh_dashboard_session_cb(void *dash, h2o_req_t *req)
{
    return wh_dashboard_session_ok(dash, req);
}

static int wh__token_configured(const wh_dashboard_t *d, const wh_admin_env_t *env)
{
    if (d != NULL)
        return d->token != NULL && d->token[0] != '\0';
    return env->conf != NULL && env->conf->admin.token != NULL && env->conf->admin.token[0];
}

int wh_dashboard_authorize(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req)
{
    if (wh_admin_token_ok(env, req))
        return 1;
    int s = d != NULL ? wh__session_check(d, req, NULL) : 0;
    if (s == 1)
        return 1;
    if (s == -1) {
        wh_admin_respond_error(req, 403, "cross-site request refused");
        return 0;
    }
    wh_admin_respond_error(req, 401, wh__token_configured(d, env)
                                         ? "invalid admin token"
                                         : "the admin API is disabled: set WAHOOK_ADMIN_TOKEN");
    return 0;
}

/* Creates a session; writes the cookie value (hex, NUL-terminated) into id. */
static int wh__session_new(wh_dashboard_t *d, char id[WH__SESSION_ID_BYTES * 2 + 1],
                           int64_t *expires_at)
{
    unsigned char raw[WH__SESSION_ID_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return WH_EIO;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        id[2 * i] = hex[raw[i] >> 4];
        id[2 * i + 1] = hex[raw[i] & 15];
    }
    id[sizeof(raw) * 2] = '\0';
    int64_t now = wh_now_ms();
    pthread_mutex_lock(&d->mu);
    /* A free or expired slot, else the oldest session gives way. */
    size_t pick = 0;
    for (size_t i = 0; i < d->o.max_sessions; i++) {
        wh__session_t *s = &d->sessions[i];
        if (!s->used || s->expires_at <= now) {
            pick = i;
            break;
        }
        if (s->created_at < d->sessions[pick].created_at)
            pick = i;
    }
    wh__session_t *s = &d->sessions[pick];
    wh__sha256(id, sizeof(raw) * 2, s->hash);
    s->created_at = now;
    s->expires_at = now + d->o.session_ttl_ms;
    s->used = 1;
    *expires_at = s->expires_at;
    pthread_mutex_unlock(&d->mu);
    OPENSSL_cleanse(raw, sizeof(raw));
    return WH_OK;
}

static void wh__set_cookie(wh_dashboard_t *d, h2o_req_t *req, const char *value, int64_t max_age)
{
    int secure = d->o.secure_cookie || req->input.scheme == &H2O_URL_SCHEME_HTTPS;
    char *c = h2o_mem_alloc_pool(&req->pool, 256);
    int n = snprintf(c, 256, "%s=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Strict%s",
                     WH_DASHBOARD_COOKIE, value, (long long)max_age, secure ? "; Secure" : "");
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, c, (size_t)n);
}

static void wh__client_addr(h2o_req_t *req, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    out[0] = '\0';
    if (sl == 0 || wh_client_ip((struct sockaddr *)&ss, NULL, 0, NULL, out, outlen) != WH_OK)
        snprintf(out, outlen, "unknown");
}

static int wh__hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes a form value ('+' is a space); NULL for a bad escape or a NUL byte. */
static char *wh__form_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < n ? wh__hexdigit(s[i + 1]) : -1;
            int lo = i + 2 < n ? wh__hexdigit(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi | lo) == 0) {
                free(out);
                return NULL;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

/* The token from a JSON {"token": …} or a form token=… body; NULL when absent. malloc'd. */
static char *wh__login_token(h2o_req_t *req, int *unsupported)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    h2o_iovec_t ct = i >= 0 ? req->headers.entries[i].value : h2o_iovec_init(NULL, 0);
    size_t base = 0;
    while (base < ct.len && ct.base[base] != ';' && ct.base[base] != ' ')
        base++;
    *unsupported = 0;
    if (h2o_lcstris(ct.base, base, H2O_STRLIT("application/json"))) {
        json_error_t jerr;
        json_t *root = json_loadb(req->entity.base, req->entity.len, 0, &jerr);
        const char *t = json_string_value(json_object_get(root, "token"));
        char *out = t != NULL ? strdup(t) : NULL;
        json_decref(root);
        return out;
    }
    if (h2o_lcstris(ct.base, base, H2O_STRLIT("application/x-www-form-urlencoded"))) {
        const char *p = req->entity.base;
        size_t n = req->entity.len, k = 0;
        while (k < n) {
            size_t end = k;
            while (end < n && p[end] != '&')
                end++;
            if (end - k >= 6 && memcmp(p + k, "token=", 6) == 0)
                return wh__form_decode(p + k + 6, end - k - 6);
            k = end + 1;
        }
        return NULL;
    }
    *unsupported = 1;
    return NULL;
}

static void wh__serve_login(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req)
{
    char ip[64];
    int retry_after = 0;
    wh__client_addr(req, ip, sizeof(ip));
    if (!wh_ratelimit_take(d->login_limit, ip, strlen(ip), wh_mono_now(), &retry_after)) {
        atomic_fetch_add(&d->login_limited, 1);
        char *ra = h2o_mem_alloc_pool(&req->pool, 16);
        int n = snprintf(ra, 16, "%d", retry_after);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, ra,
                       (size_t)n);
        wh_log(WH_LOG_WARN, "dashboard login rate-limited", "{s:s}", "ip", ip);
        wh_admin_respond_error(req, 429, "too many login attempts");
        return;
    }
    if (req->entity.len > WH__LOGIN_BODY_MAX) {
        wh_admin_respond_error(req, 413, "body too large");
        return;
    }
    int unsupported;
    char *token = wh__login_token(req, &unsupported);
    if (unsupported) {
        wh_admin_respond_error(req, 415,
                               "send application/json {\"token\":…} or a form with token=…");
        return;
    }
    if (!wh__token_configured(d, env)) {
        free(token);
        wh_admin_respond_error(req, 401, "the admin API is disabled: set WAHOOK_ADMIN_TOKEN");
        return;
    }
    int ok = token != NULL && wh_ct_equal(token, strlen(token), d->token, strlen(d->token));
    if (token != NULL)
        OPENSSL_cleanse(token, strlen(token));
    free(token);
    if (!ok) {
        atomic_fetch_add(&d->login_failures, 1);
        wh_log(WH_LOG_WARN, "dashboard login failed", "{s:s}", "ip", ip);
        wh_admin_respond_error(req, 401, "invalid admin token");
        return;
    }
    char id[WH__SESSION_ID_BYTES * 2 + 1];
    int64_t expires_at = 0;
    if (wh__session_new(d, id, &expires_at) != WH_OK) {
        wh_admin_respond_error(req, 503, "cannot create a session");
        return;
    }
    atomic_fetch_add(&d->logins, 1);
    wh__set_cookie(d, req, id, d->o.session_ttl_ms / 1000);
    OPENSSL_cleanse(id, sizeof(id));
    wh_log(WH_LOG_INFO, "dashboard login", "{s:s}", "ip", ip);
    wh_admin_respond_json(req, 200,
                          json_pack("{s:s,s:I}", "status", "ok", "expires_at",
                                    (json_int_t)expires_at));
}

static void wh__serve_logout(wh_dashboard_t *d, h2o_req_t *req)
{
    h2o_iovec_t cookie = wh__session_cookie(req);
    if (cookie.base != NULL) {
        if (!wh__same_origin(req)) {
            wh_admin_respond_error(req, 403, "cross-site request refused");
            return;
        }
        pthread_mutex_lock(&d->mu);
        int i = wh__session_find(d, cookie, wh_now_ms());
        if (i >= 0)
            memset(&d->sessions[i], 0, sizeof(d->sessions[i]));
        pthread_mutex_unlock(&d->mu);
    }
    wh__set_cookie(d, req, "", 0);
    wh_admin_respond_json(req, 200, json_pack("{s:s}", "status", "logged out"));
}

static void wh__serve_session(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req)
{
    int64_t expires_at = 0;
    if (wh__session_check(d, req, &expires_at) == 1) {
        wh_admin_respond_json(req, 200,
                              json_pack("{s:b,s:s,s:I}", "authenticated", 1, "via", "session",
                                        "expires_at", (json_int_t)expires_at));
        return;
    }
    if (wh_admin_token_ok(env, req)) {
        wh_admin_respond_json(req, 200,
                              json_pack("{s:b,s:s}", "authenticated", 1, "via", "token"));
        return;
    }
    wh_admin_respond_error(req, 401, wh__token_configured(d, env)
                                         ? "not logged in"
                                         : "the admin API is disabled: set WAHOOK_ADMIN_TOKEN");
}

/* ---- instances: connection state and QR --------------------------------------------------- */

static void wh__reply(wh_admin_reply_t *reply, int status, json_t *obj)
{
    reply->status = status;
    reply->content_type = NULL;
    reply->body = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    reply->body_len = 0;
    json_decref(obj);
    if (reply->body == NULL) {
        reply->status = 500;
        reply->body = strdup("{\"error\":\"out of memory\"}");
    }
}

/* A QR image is shown only as a base64 PNG/JPEG data URL: anything else could be a script URL. */
static int wh__valid_image_url(const char *s)
{
    static const char *const prefixes[] = {"data:image/png;base64,", "data:image/jpeg;base64,"};
    for (size_t k = 0; k < WH_ARRAY_SIZE(prefixes); k++) {
        size_t pl = strlen(prefixes[k]);
        if (strncmp(s, prefixes[k], pl) != 0)
            continue;
        const char *p = s + pl;
        if (*p == '\0')
            return 0;
        for (; *p; p++)
            if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                  (*p >= '0' && *p <= '9') || *p == '+' || *p == '/' || *p == '='))
                return 0;
        return 1;
    }
    return 0;
}

static json_t *wh__instance_entry(json_t *map, const char *name)
{
    json_t *e = json_object_get(map, name);
    if (e == NULL) {
        e = json_pack("{s:s,s:n,s:n,s:n,s:n}", "instance", name, "state", "status_reason",
                      "state_at", "qr");
        json_object_set_new(map, name, e);
    }
    return e;
}

static void wh__instances_run(void *arg, wh_admin_reply_t *reply)
{
    char *db_path = arg;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    json_t *map = json_object();
    int64_t now = wh_now_ms();
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db,
                           "SELECT instance, state, status_reason, at FROM connection_history"
                           " WHERE id IN (SELECT max(id) FROM connection_history"
                           " GROUP BY instance)",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (name == NULL)
            continue;
        json_t *e = wh__instance_entry(map, name);
        const char *state = (const char *)sqlite3_column_text(st, 1);
        json_object_set_new(e, "state", state != NULL ? json_string(state) : json_null());
        json_object_set_new(e, "status_reason",
                            sqlite3_column_type(st, 2) == SQLITE_NULL
                                ? json_null()
                                : json_integer(sqlite3_column_int64(st, 2)));
        json_object_set_new(e, "state_at", json_integer(sqlite3_column_int64(st, 3)));
    }
    if (rc != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT instance, qr_base64, code, pairing_code, limit_reached, at"
                           " FROM qr_latest",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (name == NULL)
            continue;
        json_t *e = wh__instance_entry(map, name);
        const char *img = (const char *)sqlite3_column_text(st, 1);
        int64_t at = sqlite3_column_int64(st, 5);
        json_t *qr = json_pack("{s:s?,s:s?,s:s?,s:b,s:I,s:I}", "image",
                               img != NULL && wh__valid_image_url(img) ? img : NULL, "code",
                               (const char *)sqlite3_column_text(st, 2), "pairing_code",
                               (const char *)sqlite3_column_text(st, 3), "limit_reached",
                               sqlite3_column_int(st, 4) != 0, "at", (json_int_t)at, "age_ms",
                               (json_int_t)(now - at));
        json_object_set_new(e, "qr", qr != NULL ? qr : json_null());
    }
    if (rc != SQLITE_DONE)
        goto fail;
    json_t *list = json_array();
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val)
        json_array_append(list, val);
    wh__reply(reply, 200, json_pack("{s:I,s:o}", "now", (json_int_t)now, "instances", list));
    goto done;
fail:
    wh_log(WH_LOG_WARN, "instances view failed", "{s:s}", "error",
           db != NULL ? sqlite3_errmsg(db) : "cannot open the store");
    wh__reply(reply, 503, json_pack("{s:s}", "error", "cannot read the store"));
done:
    json_decref(map);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(db_path);
}

/* ---- dry runs: concurrency ---------------------------------------------------------------- */

int wh_dashboard_dry_run_begin(wh_dashboard_t *d)
{
    if (atomic_fetch_add(&d->dry_runs, 1) >= d->o.max_dry_runs) {
        atomic_fetch_sub(&d->dry_runs, 1);
        return 0;
    }
    atomic_fetch_add(&d->dry_run_count, 1);
    return 1;
}

void wh_dashboard_dry_run_end(wh_dashboard_t *d)
{
    atomic_fetch_sub(&d->dry_runs, 1);
}

/* ---- the API module ----------------------------------------------------------------------- */

static void wh__method_not_allowed(h2o_req_t *req, const char *allow)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
    wh_admin_respond_error(req, 405, "method not allowed");
}

static int wh__serve_api(void *self, const wh_admin_env_t *env, h2o_req_t *req, h2o_iovec_t path)
{
    wh_dashboard_t *d = self;
    int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/login"))) {
        if (!is_post)
            wh__method_not_allowed(req, "POST");
        else
            wh__serve_login(d, env, req);
        return 1;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/logout"))) {
        if (!is_post)
            wh__method_not_allowed(req, "POST");
        else
            wh__serve_logout(d, req);
        return 1;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/session"))) {
        if (!is_get)
            wh__method_not_allowed(req, "GET");
        else
            wh__serve_session(d, env, req);
        return 1;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/instances"))) {
        if (!wh_dashboard_authorize(d, env, req))
            return 1;
        if (!is_get) {
            wh__method_not_allowed(req, "GET");
            return 1;
        }
        char *db_path = env->db_path != NULL ? strdup(env->db_path) : NULL;
        if (db_path == NULL || wh_admin_defer(req, wh__instances_run, db_path) != WH_OK) {
            free(db_path);
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                           H2O_STRLIT("5"));
            wh_admin_respond_error(req, 503, "cannot read the store now");
        }
        return 1;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/api/try"))) {
        if (!wh_dashboard_authorize(d, env, req))
            return 1;
        if (!is_post) {
            wh__method_not_allowed(req, "POST");
            return 1;
        }
        if (req->entity.len > WH__TRY_BODY_MAX) {
            wh_admin_respond_error(req, 413, "event too large for a dry run (1 MiB at most)");
            return 1;
        }
        wh_playground_serve(d, env, req);
        return 1;
    }
    return 0;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

int wh_dashboard_new(wh_dashboard_t **out, const wh_dashboard_opts_t *opts, char *err,
                     size_t errlen)
{
    *out = NULL;
    wh_dashboard_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return WH_ENOMEM;
    d->o = *opts;
    if (d->o.session_ttl_ms <= 0)
        d->o.session_ttl_ms = 12LL * 3600 * 1000;
    if (d->o.max_sessions == 0)
        d->o.max_sessions = 64;
    if (d->o.login_per_minute <= 0)
        d->o.login_per_minute = 10;
    if (d->o.max_dry_runs <= 0)
        d->o.max_dry_runs = 2;
    pthread_mutex_init(&d->mu, NULL);
    d->o.dir = NULL;
    d->o.token = NULL;
    if ((opts->token != NULL && (d->token = strdup(opts->token)) == NULL) ||
        (d->sessions = calloc(d->o.max_sessions, sizeof(*d->sessions))) == NULL ||
        (d->login_limit = wh_ratelimit_new((double)d->o.login_per_minute,
                                           (double)d->o.login_per_minute, 4096)) == NULL) {
        wh_dashboard_free(d);
        snprintf(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    wh__find_dir(d, opts->dir);
    if (d->dir[0] == '\0') {
        wh_log(WH_LOG_WARN, "dashboard files not found; /dashboard answers 404", "{s:s}", "dir",
               opts->dir != NULL ? opts->dir : "runtime/web");
    } else {
        int lr = wh__load_dir(d, "", 0);
        if (lr == WH_ENOMEM) {
            wh_dashboard_free(d);
            snprintf(err, errlen, "out of memory loading the dashboard files");
            return WH_ENOMEM;
        }
        if (lr != WH_OK || d->num_files == 0)
            wh_log(WH_LOG_WARN, "cannot read the dashboard files", "{s:s}", "dir", d->dir);
    }
    wh_admin_module_t mods[WH_DASHBOARD_NUM_MODULES] = {
        {"/dashboard", wh__serve_static, d}, {"/api/login", wh__serve_api, d},
        {"/api/logout", wh__serve_api, d},   {"/api/session", wh__serve_api, d},
        {"/api/instances", wh__serve_api, d}, {"/api/try", wh__serve_api, d},
    };
    memcpy(d->modules, mods, sizeof(mods));
    *out = d;
    return WH_OK;
}

void wh_dashboard_free(wh_dashboard_t *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->num_files; i++) {
        free(d->files[i].rel);
        free(d->files[i].data);
    }
    if (d->token != NULL) {
        OPENSSL_cleanse(d->token, strlen(d->token));
        free(d->token);
    }
    free(d->sessions);
    wh_ratelimit_free(d->login_limit);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

const char *wh_dashboard_dir(const wh_dashboard_t *d)
{
    return d->dir;
}

size_t wh_dashboard_modules(wh_dashboard_t *d, wh_admin_module_t *out, size_t max)
{
    for (size_t i = 0; i < WH_DASHBOARD_NUM_MODULES && i < max; i++)
        out[i] = d->modules[i];
    return WH_DASHBOARD_NUM_MODULES;
}

json_t *wh_dashboard_stats(wh_dashboard_t *d)
{
    int64_t now = wh_now_ms();
    int live = 0;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->o.max_sessions; i++)
        live += d->sessions[i].used && d->sessions[i].expires_at > now;
    pthread_mutex_unlock(&d->mu);
    return json_pack("{s:i,s:I,s:I,s:I,s:I,s:s}", "sessions", live, "logins",
                     (json_int_t)atomic_load(&d->logins), "login_failures",
                     (json_int_t)atomic_load(&d->login_failures), "login_limited",
                     (json_int_t)atomic_load(&d->login_limited), "dry_runs",
                     (json_int_t)atomic_load(&d->dry_run_count), "dir", d->dir);
}
