/* Host API area "http": wahook.http.request for CRM mapping code in the deliverers (DELIVER
 * phase only: a handler never touches the network), backed by the VM's http callback. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"
#include "wahook/luaconv.h"

#define WH__MAX_URL 2048
#define WH__MAX_HEADERS 50
#define WH__MAX_BODY ((size_t)16 * 1024 * 1024)
#define WH__DEFAULT_TIMEOUT_MS 10000
#define WH__MAX_TIMEOUT_S 30.0

static int wh__path_ok(const char *s, size_t n)
{
    if (n == 0 || s[0] != '/' || (n > 1 && s[1] == '/'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#')
            return 0;
    }
    /* No ".." segment before the query: the path must stay under the target's base URL. */
    const char *q = memchr(s, '?', n);
    size_t plen = q != NULL ? (size_t)(q - s) : n;
    for (size_t i = 0; i + 1 < plen; i++)
        if (s[i] == '.' && s[i + 1] == '.' && (i == 0 || s[i - 1] == '/') &&
            (i + 2 == plen || s[i + 2] == '/'))
            return 0;
    /* An encoded dot could become ".." on the far side. */
    for (size_t i = 0; i + 2 < plen; i++)
        if (s[i] == '%' && s[i + 1] == '2' && (s[i + 2] == 'e' || s[i + 2] == 'E'))
            return 0;
    return 1;
}

static int wh__token_ok(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return 0;
    }
    return 1;
}

/* Checks headers (a JSON object) and turns number values into strings. NULL or a message. */
static const char *wh__check_headers(json_t *h, char *msg, size_t len)
{
    if (json_object_size(h) > WH__MAX_HEADERS) {
        snprintf(msg, len, "at most %d headers", WH__MAX_HEADERS);
        return msg;
    }
    const char *k;
    json_t *v;
    json_object_foreach(h, k, v) {
        if (!wh__token_ok(k, strlen(k))) {
            snprintf(msg, len, "header name '%.60s' is not a valid HTTP token", k);
            return msg;
        }
        if (json_is_integer(v) || json_is_real(v)) {
            char buf[64];
            if (json_is_integer(v))
                snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
            else
                snprintf(buf, sizeof(buf), "%.14g", json_real_value(v));
            json_object_set_new(h, k, json_string(buf));
            continue;
        }
        if (!json_is_string(v)) {
            snprintf(msg, len, "header %.60s must be a string", k);
            return msg;
        }
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (n > 8192 || memchr(s, '\r', n) != NULL || memchr(s, '\n', n) != NULL ||
            memchr(s, '\0', n) != NULL) {
            snprintf(msg, len, "header %.60s must be one line of at most 8192 bytes", k);
            return msg;
        }
    }
    return NULL;
}

typedef struct wh__push_resp {
    wh_lua_http_resp_t *resp;
    json_t *decoded;
} wh__push_resp_t;

/* Builds the response table; run protected so the C-held response is freed whatever happens. */
static int wh__push_resp_p(lua_State *L)
{
    wh__push_resp_t *p = lua_touserdata(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, p->resp->status);
    lua_setfield(L, -2, "status");
    if (p->resp->headers != NULL && json_is_object(p->resp->headers))
        wh_luaconv_push(L, p->resp->headers);
    else
        lua_newtable(L);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, p->resp->body != NULL ? p->resp->body : "", p->resp->body_len);
    lua_setfield(L, -2, "body");
    if (p->decoded != NULL) {
        wh_luaconv_push(L, p->decoded);
        lua_setfield(L, -2, "json");
    }
    return 1;
}

/* Pushes the response table for resp and frees resp's body and headers, whatever happens. JSON
 * answers are decoded here so that integers (CRM ids) stay integers. */
static int wh__push_answer(lua_State *L, wh_lua_http_resp_t *resp)
{
    wh__push_resp_t p = {resp, NULL};
    const char *ct = NULL;
    if (resp->headers != NULL)
        ct = json_string_value(json_object_get(resp->headers, "content-type"));
    if (ct != NULL && strstr(ct, "json") != NULL && resp->body != NULL)
        p.decoded = json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, NULL);
    int room = lua_checkstack(L, 3), st = LUA_OK;
    if (room) {
        lua_pushcfunction(L, wh__push_resp_p);
        lua_pushlightuserdata(L, &p);
        st = lua_pcall(L, 1, 1, 0);
    }
    free(resp->body);
    json_decref(resp->headers);
    json_decref(p.decoded);
    resp->body = NULL;
    resp->headers = NULL;
    if (!room)
        return luaL_error(L, "not enough memory");
    if (st != LUA_OK)
        return lua_error(L);
    return 1;
}

/* Where a yielded request continues: the resumer's answer becomes the call's results. */
static int wh__request_k(lua_State *L, int status, lua_KContext kctx)
{
    (void)status;
    (void)kctx;
    wh_lua_http_result_t *r = wh_lua_vm_take_result(wh_lua_vm_of(L));
    if (r == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "resumed without an answer");
        return 2;
    }
    if (r->err != NULL) {
        free(r->resp.body);
        json_decref(r->resp.headers);
        r->resp.body = NULL;
        r->resp.headers = NULL;
        lua_pushnil(L);
        lua_pushstring(L, r->err[0] != '\0' ? r->err : "request failed");
        return 2;
    }
    return wh__push_answer(L, &r->resp);
}

/* wahook.http.request{method, url, headers, body, timeout} → {status, headers, body, json} or
 * nil, message. url is a path under the delivery target's base URL. Inside a CRM run
 * (wh_lua_vm_resume) the request is yielded to the resumer instead of performed here. */
static int wh__request(lua_State *L)
{
    static const char *const keys[] = {"method", "url", "headers", "body", "timeout", NULL};
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", NULL};
    const char *fn = wh_lua_fname(L);
    char got[80], msg[256];
    if (!lua_istable(L, 1)) {
        wh_lua_describe(L, 1, got, sizeof(got));
        return wh_lua_errorf(L, "%s: expects a table {method, url, headers, body, timeout}, got %s",
                             fn, got);
    }
    lua_settop(L, 1);
    wh_lua_check_keys(L, 1, keys, "wahook.http.request");

    const char *method = "GET";
    if (lua_getfield(L, 1, "method") != LUA_TNIL) { /* 2 */
        const char *m = wh_lua_check_string(L, 2, "method", 1, 8, NULL);
        method = NULL;
        for (size_t i = 0; methods[i] != NULL && method == NULL; i++)
            if (strcasecmp(m, methods[i]) == 0)
                method = methods[i];
        if (method == NULL)
            return wh_lua_errorf(L, "%s: method must be GET, POST, PUT, PATCH or DELETE, got \"%s\"",
                                 fn, m);
    }
    lua_getfield(L, 1, "url"); /* 3 */
    size_t ulen;
    const char *url = wh_lua_check_string(L, 3, "url", 1, WH__MAX_URL, &ulen);
    if (!wh__path_ok(url, ulen))
        return wh_lua_errorf(L,
                             "%s: url must be a path under the target's base URL, like "
                             "\"/rest/people?limit=1\" (no scheme, no \"..\", no spaces), got "
                             "\"%.80s\"",
                             fn, url);
    int timeout_ms = WH__DEFAULT_TIMEOUT_MS;
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL) { /* 4 */
        double t = (double)lua_tonumber(L, 4);
        if (lua_type(L, 4) != LUA_TNUMBER || !(t > 0) || t > WH__MAX_TIMEOUT_S) {
            wh_lua_describe(L, 4, got, sizeof(got));
            return wh_lua_errorf(L, "%s: timeout must be seconds > 0 and at most %.0f, got %s", fn,
                                 WH__MAX_TIMEOUT_S, got);
        }
        timeout_ms = (int)ceil(t * 1000.0);
    }
    int htype = lua_getfield(L, 1, "headers"); /* 5 */
    if (htype != LUA_TNIL && htype != LUA_TTABLE) {
        wh_lua_describe(L, 5, got, sizeof(got));
        return wh_lua_errorf(L, "%s: headers must be a table, got %s", fn, got);
    }
    int btype = lua_getfield(L, 1, "body"); /* 6 */
    if (btype != LUA_TNIL && btype != LUA_TSTRING && btype != LUA_TTABLE) {
        wh_lua_describe(L, 6, got, sizeof(got));
        return wh_lua_errorf(L, "%s: body must be a string or a table (sent as JSON), got %s", fn,
                             got);
    }
    if (btype == LUA_TSTRING && lua_rawlen(L, 6) > WH__MAX_BODY)
        return wh_lua_errorf(L, "%s: body is larger than %zu bytes", fn, WH__MAX_BODY);

    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    lua_State *run_co = NULL;
    wh_lua_http_yield_t *slot = wh_lua_vm_yield_slot(vm, &run_co);
    if (slot != NULL && L != run_co)
        return wh_lua_errorf(L,
                             "%s cannot be called inside a coroutine the script created (call it "
                             "from deliver's own code)",
                             fn);
    if (slot != NULL && !lua_isyieldable(L))
        return wh_lua_errorf(L,
                             "%s cannot be called here (not from a metamethod, an iterator, a "
                             "sort comparator or a module's top level)",
                             fn);

    /* Convert (non-raising) and validate; raise only with nothing held. */
    json_t *headers = NULL, *jbody = NULL;
    if (htype == LUA_TTABLE) {
        headers = wh_lua_to_json_or_raise(L, 5, "headers", 65536);
        if (json_is_array(headers) && json_array_size(headers) == 0) {
            json_decref(headers);
            headers = NULL;
        } else if (!json_is_object(headers) ||
                   wh__check_headers(headers, msg, sizeof(msg)) != NULL) {
            if (!json_is_object(headers))
                snprintf(msg, sizeof(msg), "headers must be a table of name = value");
            json_decref(headers);
            return wh_lua_errorf(L, "%s: %s", fn, msg);
        }
    }
    if (headers == NULL && (headers = json_object()) == NULL)
        return luaL_error(L, "not enough memory");
    if (btype == LUA_TTABLE) {
        char err[512];
        if (wh_luaconv_to_json(L, 6, "body", WH__MAX_BODY, &jbody, err, sizeof(err)) != WH_OK) {
            json_decref(headers);
            return wh_lua_errorf(L, "%s: %s", fn, err);
        }
    }

    /* From here until the response is pushed, nothing raises. */
    wh_lua_http_req_t req = {method, url, headers, NULL, 0, timeout_ms};
    char *dumped = NULL;
    if (btype == LUA_TSTRING) {
        req.body = lua_tolstring(L, 6, &req.body_len);
    } else if (jbody != NULL) {
        dumped = json_dumps(jbody, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(jbody);
        if (dumped == NULL) {
            json_decref(headers);
            return luaL_error(L, "not enough memory");
        }
        req.body = dumped;
        req.body_len = strlen(dumped);
        int has_ct = 0;
        const char *k;
        json_t *v;
        json_object_foreach(headers, k, v)
            has_ct |= strcasecmp(k, "content-type") == 0;
        if (!has_ct)
            json_object_set_new(headers, "Content-Type", json_string("application/json"));
    }
    if (slot != NULL) {
        /* Hand owned copies to the resumer and yield; wh__request_k continues. */
        wh_lua_http_yield_clear(slot);
        slot->path_buf = strdup(url);
        slot->headers_buf = headers;
        if (dumped != NULL) {
            slot->body_buf = dumped;
        } else if (req.body != NULL && (slot->body_buf = malloc(req.body_len + 1)) != NULL) {
            memcpy(slot->body_buf, req.body, req.body_len);
            slot->body_buf[req.body_len] = '\0';
        }
        if (slot->path_buf == NULL || (req.body != NULL && slot->body_buf == NULL)) {
            wh_lua_http_yield_clear(slot);
            return luaL_error(L, "not enough memory");
        }
        slot->req = req;
        slot->req.path = slot->path_buf;
        slot->req.headers = slot->headers_buf;
        slot->req.body = slot->body_buf;
        slot->pending = 1;
        return lua_yieldk(L, 0, 0, wh__request_k);
    }

    wh_lua_http_resp_t resp;
    memset(&resp, 0, sizeof(resp));
    char err[256] = "";
    int rc = wh_lua_vm_http(vm, &req, &resp, err, sizeof(err));
    free(dumped);
    json_decref(headers);
    if (rc != WH_OK) {
        free(resp.body);
        json_decref(resp.headers);
        lua_pushnil(L);
        if (rc == WH_ENOTFOUND)
            lua_pushliteral(L, "http is not available");
        else
            lua_pushstring(L, err[0] != '\0' ? err : wh_strerror(rc));
        return 2;
    }

    return wh__push_answer(L, &resp);
}

static const wh_lua_fn_t wh__http_fns[] = {
    {"request", wh__request, WH_PHASES_DELIVER},
    {NULL, NULL, 0},
};

void wh_lua_api_http_register(lua_State *L, int mod)
{
    lua_newtable(L);
    wh_lua_api_register(L, -1, "wahook.http", wh__http_fns);
    lua_setfield(L, mod, "http");
}
