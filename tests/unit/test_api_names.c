/* Proves that the busted fake of the `wahook` module (scripts/spec/support/wahook_fake.lua)
 * exposes exactly the names of the C registration (wh_lua_api_open), with the same kinds of
 * value, and behaves the same: the same snippets run against both give the same error messages,
 * return values and outcomes. A spec that passes against the fake calls nothing the runtime
 * lacks, and a host function added or changed in C without the fake fails here. */
#include <jansson.h>
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"
#include "wahook/lua_pure.h"
#include "wahook/lua_vm.h"
#include "wahook/luaconv.h"
#include "wahook/outcome.h"
#include "wh_test.h"

#define MAX_NAMES 256

typedef struct names {
    char *v[MAX_NAMES];
    size_t n;
    int overflow;
} names_t;

static void names_add(names_t *ns, const char *name, const char *kind)
{
    if (ns->n >= MAX_NAMES) {
        ns->overflow = 1;
        return;
    }
    size_t len = strlen(name) + strlen(kind) + 2;
    char *s = malloc(len);
    if (s == NULL)
        abort();
    snprintf(s, len, "%s:%s", name, kind);
    ns->v[ns->n++] = s;
}

static void names_free(names_t *ns)
{
    for (size_t i = 0; i < ns->n; i++)
        free(ns->v[i]);
    ns->n = 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collects "name:kind" for every field of the table at idx, recursing into plain sub-tables
 * ("state.get:function"); a table with a metatable (wahook.config's read-only proxy) is a leaf.
 * Names starting with "_" (the fake's test helpers) are skipped at any depth. Runs no Lua code:
 * raw iteration only. */
static void collect(lua_State *L, int idx, const char *prefix, names_t *ns, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > 4 || !lua_checkstack(L, 4))
        return;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            names_add(ns, "(non-string key)", luaL_typename(L, -1));
            lua_pop(L, 1);
            continue;
        }
        const char *k = lua_tostring(L, -2);
        char full[256];
        snprintf(full, sizeof(full), "%s%s", prefix, k);
        if (k[0] == '_') {
            lua_pop(L, 1);
            continue;
        }
        if (lua_type(L, -1) == LUA_TTABLE && !lua_getmetatable(L, -1)) {
            char sub[260];
            snprintf(sub, sizeof(sub), "%s.", full);
            collect(L, -1, sub, ns, depth + 1);
        } else {
            if (lua_type(L, -1) == LUA_TTABLE)
                lua_pop(L, 1); /* the metatable pushed by lua_getmetatable */
            names_add(ns, full, luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    qsort(ns->v, ns->n, sizeof(ns->v[0]), cmp_str);
}

static int contains(const names_t *ns, const char *s)
{
    for (size_t i = 0; i < ns->n; i++)
        if (strcmp(ns->v[i], s) == 0)
            return 1;
    return 0;
}

/* Prints what one side has and the other lacks; returns how many. */
static int report_missing(const names_t *have, const names_t *other, const char *what)
{
    int missing = 0;
    for (size_t i = 0; i < have->n; i++) {
        if (!contains(other, have->v[i])) {
            fprintf(stderr, "  %s: %s\n", what, have->v[i]);
            missing++;
        }
    }
    return missing;
}

/* The real module, opened in a VM (the host functions need a VM's context) through its gateway
 * so that a raise cannot escape. */
static int real_names(names_t *ns, const char *chunk)
{
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = WH_SOURCE_DIR "/scripts";
    char err[1024];
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, sizeof(err));
    if (vm == NULL) {
        fprintf(stderr, "wh_lua_vm_new: %s\n", err);
        return -1;
    }
    lua_State *L = wh_lua_vm_state(vm);
    if (chunk == NULL) {
        lua_pushcfunction(L, wh_lua_api_open);
    } else if (luaL_loadbufferx(L, chunk, strlen(chunk), "=test", "t") != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        wh_lua_vm_free(vm);
        return -1;
    }
    int rc = wh_lua_vm_call(vm, 0, 1, err, sizeof(err));
    if (rc != WH_OK) {
        fprintf(stderr, "opening the wahook module failed: %s\n", err);
        wh_lua_vm_free(vm);
        return -1;
    }
    if (lua_istable(L, -1))
        collect(L, -1, "", ns, 0);
    lua_pop(L, 1);
    wh_lua_vm_free(vm);
    return 0;
}

/* The fake, in a plain Lua state where scripts/ is on package.path (wahook_pure need not be
 * loadable: the fake loads it on first use of localtime/mktime). */
static int fake_names(names_t *ns)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return -1;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, WH_SOURCE_DIR "/scripts/?.lua");
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    int rc = 0;
    if (luaL_dofile(L, WH_SOURCE_DIR "/scripts/spec/support/wahook_fake.lua") != LUA_OK) {
        fprintf(stderr, "loading the fake failed: %s\n", lua_tostring(L, -1));
        rc = -1;
    } else if (!lua_istable(L, -1)) {
        fprintf(stderr, "the fake did not return a table\n");
        rc = -1;
    } else {
        collect(L, -1, "", ns, 0);
    }
    lua_close(L);
    return rc;
}

static void test_same_names(void)
{
    names_t real = {0}, fake = {0}, preloaded = {0};
    CHECK_INT(real_names(&real, NULL), 0);
    CHECK_INT(fake_names(&fake), 0);
    /* What scripts get from require "wahook" is the module wh_lua_api_open builds. */
    CHECK_INT(real_names(&preloaded, "return require 'wahook'"), 0);
    CHECK(!real.overflow && !fake.overflow && !preloaded.overflow);

    /* Not vacuous: the real module has the documented API. */
    static const char *const expected[] = {
        "send_text:function", "crm:function",       "alert:function",      "mail:function",
        "after:function",     "cancel:function",    "state.get:function",  "state.set:function",
        "record:function",    "log.info:function",  "log.warn:function",   "log.error:function",
        "metric.inc:function", "now:function",      "localtime:function",  "mktime:function",
        "http.request:function", "config:table",    "version:string",
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(expected); i++) {
        if (!contains(&real, expected[i]))
            fprintf(stderr, "  the C module lacks %s\n", expected[i]);
        CHECK(contains(&real, expected[i]));
    }

    int diff = report_missing(&real, &fake, "in the C module, not in the fake");
    diff += report_missing(&fake, &real, "in the fake, not in the C module");
    CHECK_INT(diff, 0);
    CHECK_INT(fake.n, real.n);
    CHECK_INT(report_missing(&real, &preloaded, "not in require 'wahook'") +
                  report_missing(&preloaded, &real, "only in require 'wahook'"),
              0);

    names_free(&real);
    names_free(&fake);
    names_free(&preloaded);
}

/* The comparison itself can fail: a name only one side has is reported. */
static void test_difference_detected(void)
{
    names_t a = {0}, b = {0};
    names_add(&a, "send_text", "function");
    names_add(&a, "state.get", "function");
    names_add(&b, "send_text", "function");
    names_add(&b, "state.get", "table");
    fprintf(stderr, "(expected difference report follows)\n");
    CHECK_INT(report_missing(&a, &b, "expected"), 1);
    CHECK_INT(report_missing(&b, &a, "expected"), 1);
    names_free(&a);
    names_free(&b);
}

/* ---- the same behaviour ------------------------------------------------------------------ */

#define NOW_MS 1761141987000LL

static int64_t fixed_clock(void *ud)
{
    return NOW_MS;
}

/* One snippet and the phase it runs in: 'h' event handler, 'l' script loading, 'd' deliverer. */
typedef struct api_case {
    char phase;
    const char *code;
} api_case_t;

static const api_case_t g_cases[] = {
    /* send_text */
    {'h', "wahook.send_text('+34 600 111 222', 'Hola')"},
    {'h', "wahook.send_text('120363025246125888@g.us', 'g', {delay = 1200, quoted = '3EB0ABC', "
          "link_preview = false})"},
    {'h', "wahook.send_text(34600111222, 'n')"},
    {'h', "wahook.send_text('207581245931618@lid', 'x', {delay = '250'})"},
    {'h', "wahook.send_text('abc', 'x')"},
    {'h', "wahook.send_text('12', 'x')"},
    {'h', "wahook.send_text(1234, 'x')"},
    {'h', "wahook.send_text(nil, 'x')"},
    {'h', "wahook.send_text(3.5, 'x')"},
    {'h', "wahook.send_text('a b@s.whatsapp.net', 'x')"},
    {'h', "wahook.send_text('34600111222@S.WHATSAPP.NET', 'x')"},
    {'h', "wahook.send_text('123456789012345678901', 'x')"},
    {'h', "wahook.send_text('34600111222', '')"},
    {'h', "wahook.send_text('34600111222', string.rep('x', 4097))"},
    {'h', "wahook.send_text('34600111222', {})"},
    {'h', "wahook.send_text('34600111222', '\\xff')"},
    {'h', "wahook.send_text('34600111222', 'x', {dealy = 5})"},
    {'h', "wahook.send_text('34600111222', 'x', {delay = -1})"},
    {'h', "wahook.send_text('34600111222', 'x', {delay = 1.5})"},
    {'h', "wahook.send_text('34600111222', 'x', {delay = 300001})"},
    {'h', "wahook.send_text('34600111222', 'x', {link_preview = 'yes'})"},
    {'h', "wahook.send_text('34600111222', 'x', {quoted = ''})"},
    {'h', "wahook.send_text('34600111222', 'x', 5)"},
    {'h', "for i = 1, 101 do wahook.send_text('34600111222', 'x') end"},
    /* crm */
    {'h', "wahook.crm('contact_upsert', {phone = '34600111222', score = 10, tags = {'a'}, "
          "ratio = 0.5, ok = true})"},
    {'h', "wahook.crm('activity', {})"},
    {'h', "wahook.crm('delete_everything', {})"},
    {'h', "wahook.crm(nil, {})"},
    {'h', "wahook.crm('task')"},
    {'h', "wahook.crm('task', {1, 2})"},
    {'h', "wahook.crm('task', {f = print})"},
    {'h', "wahook.crm('task', {a = {b = {1, x = 2}}})"},
    {'h', "wahook.crm('task', {a = {[1] = 1, [3] = 3}})"},
    {'h', "wahook.crm('task', {a = {[0] = 1}})"},
    {'h', "wahook.crm('task', {n = 0/0})"},
    {'h', "wahook.crm('task', {['a b'] = '\\xff'})"},
    {'h', "wahook.crm('task', {[1.5] = 1})"},
    {'h', "wahook.crm('task', {[print] = 1})"},
    {'h', "local t = {} t.t = t wahook.crm('task', t)"},
    {'h', "wahook.crm('task', {big = string.rep('x', 70000)})"},
    /* alert */
    {'h', "wahook.alert('connection.lost', 'Instance down', {instance = 'main'})"},
    {'h', "wahook.alert('qr', 'scan me')"},
    {'h', "wahook.alert('bad kind', 'x')"},
    {'h', "wahook.alert('', 'x')"},
    {'h', "wahook.alert('k', 'x', 'notatable')"},
    {'h', "wahook.alert('k', 'x', {1})"},
    {'h', "wahook.alert('k', '')"},
    /* mail */
    {'h', "wahook.mail({'ops@example.com', 'b@example.org'}, 'New lead', 'Body', {{filename = "
          "'a.txt', content_type = 'text/plain', data = 'hi!'}})"},
    {'h', "wahook.mail('ops@example.com', 'QR', '', {{filename = 'qr.png', data_url = "
          "'data:image/png;base64,iVBORw0KGgo='}})"},
    {'h', "wahook.mail('ops@example.com', 'S', 'b', {{filename = 'x.bin', data = 'ab'}, "
          "{filename = 'y', data = ''}})"},
    {'h', "wahook.mail('ops@example.com', 'S', 'b')"},
    {'h', "wahook.mail('ops@example.com', 'Hi\\r\\nBcc: x@y.z', 'b')"},
    {'h', "wahook.mail('not an address', 'S', 'b')"},
    {'h', "wahook.mail('a@b', 'S', 'b')"},
    {'h', "wahook.mail('a<b>@c.d', 'S', 'b')"},
    {'h', "wahook.mail({}, 'S', 'b')"},
    {'h', "wahook.mail({'a@b.c', 5}, 'S', 'b')"},
    {'h', "wahook.mail(5, 'S', 'b')"},
    {'h', "wahook.mail('a@b.c', '', 'b')"},
    {'h', "wahook.mail('a@b.c', 'S', 5)"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', 'x')"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {5})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 'd', data_url = "
          "'data:;base64,AA=='}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data_url = "
          "'data:image/png;base64,@@@'}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data_url = 'http://x/y.png'}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = '../etc/passwd', data = 'x'}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 'x', size = 1}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 'x', content_type = 'pdf'}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 5}})"},
    {'h', "wahook.mail('a@b.c', 'S', 'b', {{data = 'x'}})"},
    /* timers */
    {'h', "wahook.after(60, 'remind', {step = 2})"},
    {'h', "wahook.after(60, 'remind', {step = 2}) wahook.after(1.5, 'remind')"},
    {'h', "wahook.after(60, 'remind') wahook.cancel('remind')"},
    {'h', "wahook.cancel('remind') wahook.after(5, 'remind')"},
    {'h', "wahook.cancel('a') wahook.cancel('a')"},
    {'h', "wahook.after(30 * 86400, 'max') wahook.after(0.0001, 'min')"},
    {'h', "wahook.after(0, 'x')"},
    {'h', "wahook.after(30 * 86400 + 1, 'x')"},
    {'h', "wahook.after(0/0, 'x')"},
    {'h', "wahook.after('10', 'x')"},
    {'h', "wahook.after(10, string.rep('n', 65))"},
    {'h', "wahook.after(10, '')"},
    {'h', "wahook.after(10, 'a\\nb')"},
    {'h', "wahook.after(10, 'x', 'payload')"},
    {'h', "wahook.after(10, 'x', {1, 2})"},
    {'h', "wahook.cancel()"},
    {'h', "for i = 1, 51 do wahook.after(10, 't' .. i) end"},
    /* state */
    {'h', "return next(wahook.state.get()) == nil"},
    {'h', "wahook.state.set({step = 2, tags = {}, f = 1.5, s = 'x'})"},
    {'h', "wahook.state.set({a = 1}) return wahook.state.get().a"},
    {'h', "wahook.state.set({a = 1}) wahook.state.set(nil) return next(wahook.state.get()) == nil"},
    {'h', "wahook.state.set({a = {b = {1, x = 2}}})"},
    {'h', "wahook.state.set({blob = string.rep('x', 70000)})"},
    {'h', "wahook.state.set({1, 2})"},
    {'h', "wahook.state.set('x')"},
    {'h', "local t = {} t.self = t wahook.state.set(t)"},
    {'h', "wahook.state.set({[true] = 1})"},
    /* record */
    {'h', "wahook.record('bot_reply', {in_reply_to = '3EB0', latency_ms = 120.0}) "
          "wahook.record('handoff', {}) wahook.record('lead', {score = 40, stage = 'engaged'}) "
          "wahook.record('csat', {score = 5}) wahook.record('custom', {name = 'x', value = true}) "
          "wahook.record('handoff')"},
    {'h', "wahook.record('purchase', {})"},
    {'h', "wahook.record('bot_reply', {in_reply_to = 'x', latency = 5})"},
    {'h', "wahook.record('bot_reply', {in_reply_to = 'x', latency_ms = -3})"},
    {'h', "wahook.record('bot_reply', {in_reply_to = 'x', latency_ms = 1.5})"},
    {'h', "wahook.record('bot_reply', {latency_ms = 3})"},
    {'h', "wahook.record('lead', {})"},
    {'h', "wahook.record('csat', {score = '5'})"},
    {'h', "wahook.record('custom', {name = 'x', value = {1}})"},
    {'h', "wahook.record('custom', {name = 'x'})"},
    {'h', "wahook.record('handoff', 'reason')"},
    {'h', "wahook.record('handoff', {reason = ''})"},
    {'h', "wahook.record('handoff', {1})"},
    {'h', "for i = 1, 101 do wahook.record('handoff') end"},
    /* log and metric */
    {'h', "wahook.log.info({})"},
    {'h', "wahook.log.warn('x', 5)"},
    {'h', "wahook.log.error('x', {1, 2})"},
    {'h', "wahook.metric.inc('msgs', {type = 'text'}) wahook.metric.inc('msgs', {type = 'text'}) "
          "wahook.metric.inc('msgs', {type = 'image', n = 2, ok = true, r = 0.5}) "
          "wahook.metric.inc('other') wahook.metric.inc('other', {})"},
    {'h', "wahook.metric.inc('bad name')"},
    {'h', "wahook.metric.inc('1st')"},
    {'h', "wahook.metric.inc('m', {['bad-label'] = 1})"},
    {'h', "wahook.metric.inc('m', {x = {}})"},
    {'h', "wahook.metric.inc('m', 5)"},
    {'h', "wahook.metric.inc('m', {x = string.rep('v', 129)})"},
    {'h', "wahook.metric.inc('m', {a=1,b=1,c=1,d=1,e=1,f=1,g=1,h=1,i=1})"},
    /* time and config */
    {'h', "return wahook.now()"},
    {'h', "local t = wahook.localtime('Europe/Madrid', 1774746000) return t.year .. t.month .. "
          "t.day .. t.hour .. t.min .. t.sec .. t.wday .. t.yday .. tostring(t.isdst) .. "
          "t.utc_offset .. t.zone"},
    {'h', "return wahook.localtime('UTC').sec"},
    {'h', "return wahook.localtime('UTC', 1761141987.9).sec"},
    {'h', "return wahook.mktime('UTC', {year = 2025, month = 10, day = 22, hour = 14, min = 6, "
          "sec = 27})"},
    {'h', "return wahook.mktime('Europe/Madrid', wahook.localtime('Europe/Madrid', 1774746000))"},
    {'h', "return wahook.mktime('Europe/Madrid', {year = 2026, month = 3, day = 29, hour = 2, "
          "min = 30})"},
    {'h', "return wahook.mktime('UTC', {year = 2025, month = 9.0, day = 1})"},
    {'h', "wahook.localtime('Mars/Olympus')"},
    {'h', "wahook.localtime('../../etc/passwd')"},
    {'h', "wahook.localtime(1)"},
    {'h', "wahook.localtime('UTC', 'noon')"},
    {'h', "wahook.localtime('UTC', 1e300)"},
    {'h', "wahook.localtime('UTC', math.maxinteger)"},
    {'h', "wahook.localtime('UTC', 1e14)"},
    {'h', "return wahook.mktime('UTC', {year = 1000000, month = 1, day = 1})"},
    {'h', "wahook.mktime('UTC', {year = 2025, month = 1})"},
    {'h', "wahook.mktime('UTC', {year = 2025, month = 1, day = 1, hours = 3})"},
    {'h', "wahook.mktime('UTC', 5)"},
    {'h', "wahook.mktime('UTC', {year = 2025, month = 1.5, day = 1})"},
    {'h', "wahook.mktime('Mars/Olympus', {year = 2025, month = 1, day = 1})"},
    {'h', "wahook.config.x = 1"},
    {'h', "return #wahook.config + select('#', next, wahook.config)"},
    /* phases */
    {'l', "wahook.send_text('34600111222', 'x')"},
    {'l', "wahook.state.get()"},
    {'l', "wahook.metric.inc('m')"},
    {'l', "wahook.http.request{url = '/x'}"},
    {'l', "return wahook.localtime('UTC', 0).year"},
    {'d', "wahook.after(1, 'x')"},
    {'d', "wahook.record('handoff')"},
    {'d', "wahook.metric.inc('m', {k = 'v'})"},
    {'d', "return select(2, wahook.http.request{url = '/rest/people'})"},
    {'d', "return select(2, wahook.http.request{method = 'post', url = '/rest/people?x=1', "
          "headers = {['X-Id'] = 5}, body = {name = 'Ana'}, timeout = 5})"},
    {'d', "wahook.http.request{url = 'https://evil.example/x'}"},
    {'d', "wahook.http.request{url = '/a/../b'}"},
    {'d', "wahook.http.request{url = '//host/x'}"},
    {'d', "wahook.http.request{url = '/x', method = 'TRACE'}"},
    {'d', "wahook.http.request{url = '/x', timeout = 31}"},
    {'d', "wahook.http.request{url = '/x', headers = {['bad header'] = 'v'}}"},
    {'d', "wahook.http.request{url = '/x', headers = {h = 'a\\r\\nb'}}"},
    {'d', "wahook.http.request{url = '/x', headers = 'h'}"},
    {'d', "wahook.http.request{url = '/x', verb = 'GET'}"},
    {'d', "wahook.http.request('x')"},
    {'d', "wahook.http.request{url = '/x', body = 5}"},
    {'d', "wahook.http.request{}"},
    {'h', "wahook.http.request{url = '/x'}"},
};

/* What one run gave: the error's first line, or the first result and the outcome. */
typedef struct api_result {
    char err[1024];
    char ret[256];
    json_t *outcome;
} api_result_t;

static void first_line(char *dst, size_t len, const char *src)
{
    size_t n = strcspn(src, "\n");
    snprintf(dst, len, "%.*s", (int)n, src);
}

/* Takes the one result on top of the stack as text. */
static void result_ret(lua_State *L, api_result_t *r)
{
    snprintf(r->ret, sizeof(r->ret), "%s", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 2);
}

static int run_real(wh_lua_vm_t *vm, const api_case_t *c, api_result_t *r)
{
    lua_State *L = wh_lua_vm_state(vm);
    char chunk[2048], err[4096];
    snprintf(chunk, sizeof(chunk), "local wahook = require 'wahook' %s", c->code);
    if (luaL_loadbufferx(L, chunk, strlen(chunk), "=case", "t") != LUA_OK) {
        fprintf(stderr, "syntax: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    wh_outcome_t out;
    if (wh_outcome_init(&out, NULL) != WH_OK)
        return -1;
    int phase = c->phase == 'l' ? WH_PHASE_LOAD : c->phase == 'd' ? WH_PHASE_DELIVER
                                                                   : WH_PHASE_HANDLER;
    wh_lua_vm_set_context(vm, phase, phase == WH_PHASE_LOAD ? NULL : &out);
    int rc = wh_lua_vm_call(vm, 0, 1, err, sizeof(err));
    wh_lua_vm_set_context(vm, WH_PHASE_LOAD, NULL);
    if (rc != WH_OK)
        first_line(r->err, sizeof(r->err), err);
    else
        result_ret(L, r);
    if (rc == WH_OK && phase != WH_PHASE_LOAD)
        r->outcome = wh_outcome_to_json(&out);
    wh_outcome_free(&out);
    return 0;
}

static int run_fake(lua_State *L, int fake, const api_case_t *c, api_result_t *r)
{
    char chunk[2048];
    snprintf(chunk, sizeof(chunk), "local wahook = require 'wahook' %s", c->code);
    lua_getfield(L, fake, "_reset");
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, (lua_Number)NOW_MS / 1000.0);
    lua_setfield(L, -2, "now");
    lua_pushstring(L, c->phase == 'l' ? "load" : c->phase == 'd' ? "deliver" : "handler");
    lua_setfield(L, -2, "phase");
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fake _reset: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (luaL_loadbufferx(L, chunk, strlen(chunk), "=case", "t") != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
        first_line(r->err, sizeof(r->err), lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    result_ret(L, r);
    if (c->phase != 'l') {
        char err[512];
        lua_getfield(L, fake, "_outcome");
        if (lua_pcall(L, 0, 1, 0) != LUA_OK ||
            wh_luaconv_to_json(L, -1, "outcome", 0, &r->outcome, err, sizeof(err)) != WH_OK) {
            fprintf(stderr, "fake _outcome failed\n");
            lua_pop(L, 1);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Empty arrays and empty objects are the same to Lua; compare without the difference. */
static json_t *normalise(json_t *j)
{
    if (json_is_array(j)) {
        if (json_array_size(j) == 0)
            return json_object();
        json_t *a = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) json_array_append_new(a, normalise(v));
        return a;
    }
    if (json_is_object(j)) {
        json_t *o = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) json_object_set_new(o, k, normalise(v));
        return o;
    }
    return json_incref(j);
}

static int same_outcome(json_t *a, json_t *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    json_t *na = normalise(a), *nb = normalise(b);
    int eq = json_equal(na, nb);
    json_decref(na);
    json_decref(nb);
    return eq;
}

static void test_same_behaviour(void)
{
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = WH_SOURCE_DIR "/scripts";
    o.clock_fn = fixed_clock;
    char err[1024];
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, sizeof(err));
    CHECK(vm != NULL);
    lua_State *F = luaL_newstate();
    CHECK(F != NULL);
    if (vm == NULL || F == NULL) {
        wh_lua_vm_free(vm);
        if (F != NULL)
            lua_close(F);
        return;
    }
    luaL_openlibs(F);
    /* What the runtime links in, for the fake: lua-cjson (its null) and the pure functions. */
    luaL_requiref(F, "cjson", luaopen_cjson, 0);
    luaL_requiref(F, "wahook_pure", luaopen_wahook_pure, 0);
    lua_pop(F, 2);
    int fake = 0;
    if (luaL_dofile(F, WH_SOURCE_DIR "/scripts/spec/support/wahook_fake.lua") == LUA_OK &&
        lua_istable(F, -1)) {
        fake = lua_gettop(F);
        lua_getfield(F, fake, "_install");
        if (lua_pcall(F, 0, 0, 0) != LUA_OK)
            fake = 0;
    }
    CHECK(fake != 0);

    int differ = 0;
    for (size_t i = 0; fake != 0 && i < WH_ARRAY_SIZE(g_cases); i++) {
        const api_case_t *c = &g_cases[i];
        api_result_t real = {0}, fk = {0};
        int top = lua_gettop(F);
        if (run_real(vm, c, &real) != 0 || run_fake(F, fake, c, &fk) != 0) {
            fprintf(stderr, "case %zu could not run: %s\n", i, c->code);
            differ++;
        } else if (strcmp(real.err, fk.err) != 0 || strcmp(real.ret, fk.ret) != 0 ||
                   !same_outcome(real.outcome, fk.outcome)) {
            char *rj = real.outcome ? json_dumps(real.outcome, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
            char *fj = fk.outcome ? json_dumps(fk.outcome, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
            fprintf(stderr,
                    "case %zu (%c) %s\n  C:    error [%s] result [%s] outcome %s\n"
                    "  fake: error [%s] result [%s] outcome %s\n",
                    i, c->phase, c->code, real.err, real.ret, rj ? rj : "-", fk.err, fk.ret,
                    fj ? fj : "-");
            free(rj);
            free(fj);
            differ++;
        }
        CHECK_INT(lua_gettop(F), top);
        json_decref(real.outcome);
        json_decref(fk.outcome);
    }
    CHECK_INT(differ, 0);
    lua_close(F);
    wh_lua_vm_free(vm);
}

int main(void)
{
    test_same_names();
    test_difference_detected();
    test_same_behaviour();
    WH_TEST_MAIN_END();
}
