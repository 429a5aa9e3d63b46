/* Unit tests for runtime/lua_vm.c: the sandboxed environment, scripts-only require, the gateway
 * (tracebacks, timeouts and memory kills that a script's pcall cannot swallow, stack balance),
 * the allocator cap and handler dispatch. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <pthread.h>
#include <jansson.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/lua_vm.h"
#include "wahook/outcome.h"
#include "wh_test.h"

static char g_dir[64];

static void write_file(const char *dir, const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    for (char *p = path + strlen(dir) + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0755);
            *p = '/';
        }
    }
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *new_dir(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/wh_lua_vm_XXXXXX");
    if (mkdtemp(g_dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    return g_dir;
}

static wh_lua_vm_t *vm_with(const char *dir, int deadline_ms, size_t mem)
{
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = dir;
    o.deadline_ms = deadline_ms;
    o.mem_limit = mem;
    char err[256] = "";
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, sizeof(err));
    if (vm == NULL)
        fprintf(stderr, "wh_lua_vm_new: %s\n", err);
    return vm;
}

/* Runs code through the gateway. With want_result, the single result is returned as a string
 * in res ("" when none). Checks the stack is balanced. */
static int eval(wh_lua_vm_t *vm, const char *code, char *res, size_t reslen, char *err,
                size_t errlen)
{
    lua_State *L = wh_lua_vm_state(vm);
    int top = lua_gettop(L);
    err[0] = '\0';
    if (res != NULL)
        res[0] = '\0';
    if (luaL_loadbufferx(L, code, strlen(code), "=test", "t") != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -100;
    }
    int rc = wh_lua_vm_call(vm, 0, 1, err, errlen);
    if (rc == WH_OK) {
        if (res != NULL) {
            const char *s = luaL_tolstring(L, -1, NULL);
            snprintf(res, reslen, "%s", s);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    CHECK_INT(lua_gettop(L), top);
    return rc;
}

static void test_removed_names(void)
{
    wh_lua_vm_t *vm = vm_with(new_dir(), 0, 0);
    CHECK(vm != NULL);
    static const char *const removed[] = {
        "io", "os.exit", "os.getenv", "os.remove", "os.rename", "os.execute", "os.tmpname",
        "package", "debug", "dofile", "loadfile", "string.dump", "require('string').dump",
    };
    char code[256], res[128], err[512];
    for (size_t i = 0; i < WH_ARRAY_SIZE(removed); i++) {
        snprintf(code, sizeof(code), "return type(%s)", removed[i]);
        CHECK_INT(eval(vm, code, res, sizeof(res), err, sizeof(err)), WH_OK);
        if (strcmp(res, "nil") != 0)
            fprintf(stderr, "%s is %s\n", removed[i], res);
        CHECK_STR(res, "nil");
    }
    /* package.loadlib in particular: there is no package table to reach it through. */
    CHECK_INT(eval(vm, "return package and package.loadlib", res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "nil");
    static const char *const kept[] = {"os.time", "os.date", "os.clock", "string.rep",
                                       "table.concat", "math.floor", "utf8.char",
                                       "coroutine.wrap", "pcall", "load", "require",
                                       "setmetatable"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(kept); i++) {
        snprintf(code, sizeof(code), "return type(%s)", kept[i]);
        CHECK_INT(eval(vm, code, res, sizeof(res), err, sizeof(err)), WH_OK);
        CHECK_STR(res, "function");
    }
    CHECK_INT(eval(vm, "local c = require 'cjson' return c.encode({a=1})", res, sizeof(res), err,
                   sizeof(err)),
              WH_OK);
    CHECK_STR(res, "{\"a\":1}");
    CHECK_INT(eval(vm, "return type(require('wahook').send_text)", res, sizeof(res), err,
                   sizeof(err)),
              WH_OK);
    CHECK_STR(res, "function");
    CHECK_INT(eval(vm, "return require('cjson').null == require('cjson.safe').null", res,
                   sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "true");

    /* load: text works, binary chunks do not (asked for, or smuggled in as text). */
    CHECK_INT(eval(vm, "return load('return 1 + 1')()", res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "2");
    CHECK_INT(eval(vm, "return load('return 1', 'x', 'b')", res, sizeof(res), err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "binary chunks are not allowed");
    CHECK_INT(eval(vm, "return load('return 1', 'x', 'bt')", res, sizeof(res), err, sizeof(err)),
              WH_ERR);
    CHECK_INT(eval(vm, "local f, e = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n') return e", res,
                   sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_CONTAINS(res, "binary chunk");
    /* An env argument still works. */
    CHECK_INT(eval(vm, "return load('return x', 'c', 't', {x = 7})()", res, sizeof(res), err,
                   sizeof(err)),
              WH_OK);
    CHECK_STR(res, "7");

    CHECK_INT(eval(vm, "collectgarbage('stop')", NULL, 0, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "not allowed");
    CHECK_INT(eval(vm, "return collectgarbage('count') > 0", res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "true");
    CHECK_INT(eval(vm, "setmetatable({}, {__gc = function() end})", NULL, 0, err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "__gc");
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

static void test_require(void)
{
    const char *dir = new_dir();
    write_file(dir, "lib/util.lua",
               "loads = (loads or 0) + 1\nreturn { twice = function(x) return 2 * x end }\n");
    write_file(dir, "bot/flow/step.lua", "return { name = ... }\n");
    write_file(dir, "nothing.lua", "x_loaded = true\n");
    write_file(dir, "loop_a.lua", "return require 'loop_b'\n");
    write_file(dir, "loop_b.lua", "return require 'loop_a'\n");
    char outside[128];
    snprintf(outside, sizeof(outside), "%s_outside.lua", dir);
    FILE *f = fopen(outside, "w");
    fputs("return 'escaped'\n", f);
    fclose(f);
    char link[256];
    snprintf(link, sizeof(link), "%s/evil.lua", dir);
    CHECK_INT(symlink(outside, link), 0);
    snprintf(link, sizeof(link), "%s/inside.lua", dir);
    CHECK_INT(symlink("nothing.lua", link), 0);

    wh_lua_vm_t *vm = vm_with(dir, 0, 0);
    char res[256], err[1024];
    CHECK_INT(eval(vm, "return require('lib.util').twice(21)", res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "42");
    CHECK_INT(eval(vm, "require 'lib.util' require 'lib.util' return loads", res, sizeof(res), err,
                   sizeof(err)),
              WH_OK);
    CHECK_STR(res, "1");
    CHECK_INT(eval(vm, "return require('bot.flow.step').name", res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "bot.flow.step");
    CHECK_INT(eval(vm, "return require('nothing')", res, sizeof(res), err, sizeof(err)), WH_OK);
    CHECK_STR(res, "true");
    /* A symlink that stays inside is fine. */
    CHECK_INT(eval(vm, "return require('inside')", res, sizeof(res), err, sizeof(err)), WH_OK);

    static const char *const bad[] = {"../x", "/etc/passwd", "a..b", ".a", "a.", "a/b", "",
                                      "a-b", "..", "lib.util\\0x"};
    char code[128];
    for (size_t i = 0; i < WH_ARRAY_SIZE(bad); i++) {
        snprintf(code, sizeof(code), "return require('%s')", bad[i]);
        CHECK_INT(eval(vm, code, res, sizeof(res), err, sizeof(err)), WH_ERR);
        CHECK_CONTAINS(err, "invalid module name");
    }
    CHECK_INT(eval(vm, "return require('evil')", res, sizeof(res), err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "outside the scripts directory");
    CHECK_INT(eval(vm, "return require('missing.mod')", res, sizeof(res), err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "not found (no missing/mod.lua");
    CHECK_INT(eval(vm, "return require('loop_a')", res, sizeof(res), err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "already being loaded");
    CHECK_INT(eval(vm, "return require(42)", res, sizeof(res), err, sizeof(err)), WH_ERR);
    wh_lua_vm_free(vm);
    unlink(outside);
    rm_rf(dir);
}

static void test_errors_and_traceback(void)
{
    const char *dir = new_dir();
    write_file(dir, "main.lua",
               "local h = {}\n"
               "local function inner() error('boom') end\n"
               "h['messages.upsert'] = function(ev)\n"
               "  inner()\n"
               "end\n"
               "h.table_error = function() error({code = 1}) end\n"
               "h.tostring_error = function() error(setmetatable({}, {__tostring = function() "
               "return 'custom' end})) end\n"
               "return h\n");
    wh_lua_vm_t *vm = vm_with(dir, 0, 0);
    char err[2048];
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_OK);
    wh_outcome_t out;
    CHECK_INT(wh_outcome_init(&out, NULL), WH_OK);
    json_t *ev = json_pack("{s:s}", "event", "messages.upsert");
    lua_State *L = wh_lua_vm_state(vm);
    int top = lua_gettop(L);
    CHECK_INT(wh_lua_vm_run_handler(vm, "messages.upsert", ev, &out, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "main.lua:2: boom");
    CHECK_CONTAINS(err, "stack traceback:");
    CHECK_CONTAINS(err, "main.lua:4:");
    CHECK_INT(lua_gettop(L), top);
    CHECK_INT(wh_lua_vm_run_handler(vm, "table_error", ev, &out, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "error object is a table value");
    CHECK_INT(wh_lua_vm_run_handler(vm, "tostring_error", ev, &out, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "custom");
    CHECK_INT(lua_gettop(L), top);
    json_decref(ev);
    wh_outcome_free(&out);
    wh_lua_vm_free(vm);

    /* Load failures name file:line. */
    write_file(dir, "main.lua", "local x = \nreturn {\n");
    vm = vm_with(dir, 0, 0);
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "main.lua:2:");
    wh_lua_vm_free(vm);
    write_file(dir, "main.lua", "return 42\n");
    vm = vm_with(dir, 0, 0);
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "main.lua must return a table of handlers");
    wh_lua_vm_free(vm);
    write_file(dir, "main.lua", "return { ['messages.upsert'] = 'not a function' }\n");
    vm = vm_with(dir, 0, 0);
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "handler \"messages.upsert\" is a string");
    wh_lua_vm_free(vm);
    write_file(dir, "main.lua", "require 'lib.missing'\nreturn {}\n");
    vm = vm_with(dir, 0, 0);
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "main.lua:1:");
    CHECK_CONTAINS(err, "lib/missing.lua");
    wh_lua_vm_free(vm);
    rm_rf(dir);
}

static void test_timeouts(void)
{
    wh_lua_vm_t *vm = vm_with(new_dir(), 50, 0);
    char res[128], err[512];
    CHECK_INT(eval(vm, "while true do end", NULL, 0, err, sizeof(err)), WH_ETIMEDOUT);
    CHECK_CONTAINS(err, "script timed out after 50 ms");
    CHECK_CONTAINS(err, "test:1");
    /* A pcall catches the first raise, but the loop after it is stopped too. */
    CHECK_INT(eval(vm,
                   "local ok, e = pcall(function() while true do end end)\n"
                   "while true do end",
                   NULL, 0, err, sizeof(err)),
              WH_ETIMEDOUT);
    /* Retrying forever under pcall does not help either, nor does xpcall with a handler. */
    CHECK_INT(eval(vm, "while true do pcall(function() while true do end end) end", NULL, 0, err,
                   sizeof(err)),
              WH_ETIMEDOUT);
    CHECK_INT(eval(vm,
                   "while true do xpcall(function() while true do end end, function(m) return m "
                   "end) end",
                   NULL, 0, err, sizeof(err)),
              WH_ETIMEDOUT);
    /* Nor does a coroutine. */
    CHECK_INT(eval(vm,
                   "local co = coroutine.wrap(function() while true do end end)\n"
                   "while true do pcall(co) end",
                   NULL, 0, err, sizeof(err)),
              WH_ETIMEDOUT);
    CHECK_INT(eval(vm,
                   "local n = 0\n"
                   "local co = coroutine.create(function() while true do n = n + 1 end end)\n"
                   "while true do coroutine.resume(co) end",
                   NULL, 0, err, sizeof(err)),
              WH_ETIMEDOUT);
    /* Killed inside a coroutine, with the main function returning right after: still a
     * timeout. */
    CHECK_INT(eval(vm,
                   "local co = coroutine.create(function() while true do end end)\n"
                   "coroutine.resume(co) return 'finished'",
                   res, sizeof(res), err, sizeof(err)),
              WH_ETIMEDOUT);
    /* The next call starts afresh. */
    CHECK_INT(eval(vm, "local s = 0 for i = 1, 100 do s = s + i end return s", res, sizeof(res),
                   err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "5050");
    CHECK_INT(eval(vm, "local ok = pcall(error, 'x') return tostring(ok)", res, sizeof(res), err,
                   sizeof(err)),
              WH_OK);
    CHECK_STR(res, "false");
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

static void test_memory(void)
{
    const size_t cap = 16u * 1024 * 1024;
    /* A generous deadline: this test is about memory, never about speed. */
    wh_lua_vm_t *vm = vm_with(new_dir(), 600000, cap);
    char res[128], err[512];
    size_t used0, peak0, used, peak;
    wh_lua_vm_mem_stats(vm, &used0, &peak0);
    CHECK(used0 > 0 && used0 < cap);

    CHECK_INT(eval(vm, "local s = string.rep('x', 4 * 1024 * 1024) return #s", res, sizeof(res),
                   err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "4194304");
    wh_lua_vm_mem_stats(vm, &used, &peak);
    CHECK(peak >= 4u * 1024 * 1024);
    CHECK(peak <= cap);

    CHECK_INT(eval(vm, "local s = string.rep('x', 20 * 1024 * 1024) return #s", res, sizeof(res),
                   err, sizeof(err)),
              WH_ENOMEM);
    CHECK_CONTAINS(err, "script exceeded its memory limit of 16777216 bytes");

    /* A pcall inside the script cannot swallow the memory kill. */
    CHECK_INT(eval(vm,
                   "local ok, e = pcall(function()\n"
                   "  local t = {} while true do t[#t + 1] = string.rep('x', 1e6) end\n"
                   "end)\n"
                   "return 'survived: ' .. tostring(e)",
                   res, sizeof(res), err, sizeof(err)),
              WH_ENOMEM);
    CHECK_CONTAINS(err, "memory limit");
    CHECK_INT(eval(vm,
                   "local co = coroutine.wrap(function() local t = {} while true do t[#t + 1] = "
                   "{} end end)\n"
                   "return pcall(co)",
                   res, sizeof(res), err, sizeof(err)),
              WH_ENOMEM);
    CHECK_INT(eval(vm,
                   "for i = 1, 1000 do\n"
                   "  pcall(function() local t = {} while true do t[#t + 1] = {} end end)\n"
                   "end\n"
                   "return 'survived'",
                   res, sizeof(res), err, sizeof(err)),
              WH_ENOMEM);
    wh_lua_vm_mem_stats(vm, &used, &peak);
    CHECK(peak <= cap + 1024 * 1024); /* the cap holds, give or take one refused block */
    CHECK(used < cap / 2);            /* the garbage was collected after the kill */

    /* ...and the VM is usable afterwards. */
    CHECK_INT(eval(vm, "local t = {} for i = 1, 1000 do t[i] = i end return #t", res, sizeof(res),
                   err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "1000");
    /* A script that allocates within the cap, with garbage, is fine. */
    CHECK_INT(eval(vm,
                   "local n = 0 for i = 1, 40 do local s = string.rep('y', 1e6) n = n + #s end "
                   "return n",
                   res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "40000000");
    /* Even when the garbage has not been collected at all, reaching the cap first triggers
     * Lua's emergency collection, which frees enough: not a kill. */
    lua_gc(wh_lua_vm_state(vm), LUA_GCSTOP, 0);
    CHECK_INT(eval(vm,
                   "local n = 0 for i = 1, 40 do local s = string.rep('z', 1e6) n = n + #s end "
                   "return n",
                   res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "40000000");
    lua_gc(wh_lua_vm_state(vm), LUA_GCRESTART, 0);
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

static void test_recursion(void)
{
    wh_lua_vm_t *vm = vm_with(new_dir(), 600000, 0);
    char res[128], err[4096];
    int rc = eval(vm, "local function f() return 1 + f() end return f()", res, sizeof(res), err,
                  sizeof(err));
    CHECK(rc == WH_ERR || rc == WH_ENOMEM);
    if (rc == WH_ERR)
        CHECK_CONTAINS(err, "stack overflow");
    rc = eval(vm,
              "local t = setmetatable({}, {__index = function(t, k) return t[k] end}) return t.x",
              res, sizeof(res), err, sizeof(err));
    CHECK_INT(rc, WH_ERR);
    CHECK_CONTAINS(err, "stack overflow");
    rc = eval(vm, "local s = string.rep('(', 1000) return load('return ' .. s)", res, sizeof(res),
              err, sizeof(err));
    CHECK_INT(rc, WH_OK);
    CHECK_INT(eval(vm, "return 'ok'", res, sizeof(res), err, sizeof(err)), WH_OK);
    CHECK_STR(res, "ok");
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

static void test_dispatch(void)
{
    const char *dir = new_dir();
    write_file(dir, "main.lua",
               "local wahook = require 'wahook'\n"
               "local cjson = require 'cjson'\n"
               "return {\n"
               "  ['messages.upsert'] = function(ev)\n"
               "    assert(math.type(ev.data.ts) == 'integer', 'ts is ' .. math.type(ev.data.ts))\n"
               "    assert(ev.data.big == 9007199254740993)\n"
               "    assert(ev.data.quoted == cjson.null)\n"
               "    wahook.send_text(ev.data.from, 'hi ' .. ev.data.ts)\n"
               "  end,\n"
               "  ['*'] = function(ev) wahook.record('custom', {name = 'fallback', value = "
               "ev.event}) end,\n"
               "  fails = function(ev)\n"
               "    wahook.send_text('34600111222', 'queued then failed')\n"
               "    wahook.state.set({step = 1})\n"
               "    error('after queuing')\n"
               "  end,\n"
               "}\n");
    wh_lua_vm_t *vm = vm_with(dir, 0, 0);
    char err[2048];
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_OK);
    CHECK(wh_lua_vm_has_handler(vm, "messages.upsert"));
    CHECK(wh_lua_vm_has_handler(vm, "anything"));
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    json_error_t jerr;
    json_t *ev = json_loads("{\"event\":\"messages.upsert\",\"data\":{\"ts\":1761141987,"
                            "\"big\":9007199254740993,\"quoted\":null,\"from\":\"34600111222\"}}",
                            0, &jerr);
    CHECK_INT(wh_lua_vm_run_handler(vm, "messages.upsert", ev, &out, err, sizeof(err)), WH_OK);
    CHECK_INT(json_array_size(wh_outcome_actions(&out)), 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(wh_outcome_actions(&out), 0),
                                                "text")),
              "hi 1761141987");
    json_decref(ev);

    wh_outcome_reset(&out);
    ev = json_pack("{s:s}", "event", "presence.update");
    CHECK_INT(wh_lua_vm_run_handler(vm, "presence.update", ev, &out, err, sizeof(err)), WH_OK);
    json_t *fact = json_array_get(wh_outcome_facts(&out), 0);
    CHECK_STR(json_string_value(json_object_get(json_object_get(fact, "fields"), "value")),
              "presence.update");
    json_decref(ev);

    /* A failed run leaves nothing behind. */
    wh_outcome_reset(&out);
    ev = json_pack("{s:s}", "event", "fails");
    CHECK_INT(wh_lua_vm_run_handler(vm, "fails", ev, &out, err, sizeof(err)), WH_ERR);
    CHECK_CONTAINS(err, "after queuing");
    CHECK(wh_outcome_is_empty(&out));
    json_decref(ev);

    /* A dry run behaves like a handler. */
    ev = json_pack("{s:s}", "event", "x");
    CHECK_INT(wh_lua_vm_run_handler_in(vm, WH_PHASE_TRY, "x", ev, &out, err, sizeof(err)), WH_OK);
    CHECK_INT(json_array_size(wh_outcome_facts(&out)), 1);
    CHECK_INT(wh_lua_vm_run_handler_in(vm, WH_PHASE_DELIVER, "x", ev, &out, err, sizeof(err)),
              WH_EINVAL);
    json_decref(ev);
    wh_lua_vm_free(vm);

    /* Without "*", an unknown event has no handler and nothing runs. */
    write_file(dir, "main.lua",
               "return { ['messages.upsert'] = function() require('wahook').state.set({}) end }\n");
    vm = vm_with(dir, 0, 0);
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_OK);
    CHECK(wh_lua_vm_has_handler(vm, "messages.upsert"));
    CHECK(!wh_lua_vm_has_handler(vm, "connection.update"));
    wh_outcome_reset(&out);
    ev = json_pack("{s:s}", "event", "connection.update");
    lua_State *L = wh_lua_vm_state(vm);
    int top = lua_gettop(L);
    CHECK_INT(wh_lua_vm_run_handler(vm, "connection.update", ev, &out, err, sizeof(err)),
              WH_ENOTFOUND);
    CHECK_INT(lua_gettop(L), top);
    CHECK(wh_outcome_is_empty(&out));
    json_decref(ev);
    wh_outcome_free(&out);
    wh_lua_vm_free(vm);

    /* Not loaded: refused. */
    vm = vm_with(dir, 0, 0);
    wh_outcome_init(&out, NULL);
    ev = json_object();
    CHECK_INT(wh_lua_vm_run_handler(vm, "x", ev, &out, err, sizeof(err)), WH_EINVAL);
    CHECK(!wh_lua_vm_has_handler(vm, "x"));
    json_decref(ev);
    wh_outcome_free(&out);
    wh_lua_vm_free(vm);
    rm_rf(dir);
}

static void test_timeout_in_handler_resets_outcome(void)
{
    const char *dir = new_dir();
    write_file(dir, "main.lua",
               "local wahook = require 'wahook'\n"
               "return { ['*'] = function(ev)\n"
               "  wahook.send_text('34600111222', 'before the loop')\n"
               "  pcall(function() while true do end end)\n"
               "  wahook.send_text('34600111222', 'after the loop')\n"
               "end }\n");
    wh_lua_vm_t *vm = vm_with(dir, 50, 0);
    char err[512];
    CHECK_INT(wh_lua_vm_load_main(vm, err, sizeof(err)), WH_OK);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    json_t *ev = json_object();
    CHECK_INT(wh_lua_vm_run_handler(vm, "x", ev, &out, err, sizeof(err)), WH_ETIMEDOUT);
    CHECK(wh_outcome_is_empty(&out));
    CHECK_CONTAINS(err, "main.lua:4");
    json_decref(ev);
    wh_outcome_free(&out);
    wh_lua_vm_free(vm);
    rm_rf(dir);
}

static void test_push_json(void)
{
    wh_lua_vm_t *vm = vm_with(new_dir(), 0, 0);
    lua_State *L = wh_lua_vm_state(vm);
    char err[256];
    int top = lua_gettop(L);
    json_t *deep = json_integer(1);
    for (int i = 0; i < 100; i++)
        deep = json_pack("{s:o}", "a", deep);
    CHECK_INT(wh_lua_vm_push_json(vm, deep, err, sizeof(err)), WH_EINVAL);
    CHECK_CONTAINS(err, "nested deeper than 64 levels");
    CHECK_INT(lua_gettop(L), top);
    json_decref(deep);
    json_t *ev = json_pack("{s:I}", "id", (json_int_t)9007199254740993LL);
    luaL_loadstring(L, "local ev = ... return math.type(ev.id) .. ' ' .. ev.id");
    CHECK_INT(wh_lua_vm_push_json(vm, ev, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_lua_vm_call(vm, 1, 1, err, sizeof(err)), WH_OK);
    CHECK_STR(lua_tostring(L, -1), "integer 9007199254740993");
    lua_pop(L, 1);
    CHECK_INT(lua_gettop(L), top);
    json_decref(ev);
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

/* One VM per thread, as processors use them: no shared state between VMs. */
typedef struct worker {
    const char *dir;
    int ok, events;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    wh_lua_vm_t *vm = vm_with(w->dir, 0, 0);
    char err[512];
    if (vm == NULL || wh_lua_vm_load_main(vm, err, sizeof(err)) != WH_OK) {
        wh_lua_vm_free(vm);
        return NULL;
    }
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    for (int i = 0; i < w->events; i++) {
        wh_outcome_reset(&out);
        json_t *ev = json_pack("{s:s,s:i}", "event", "messages.upsert", "n", i);
        int rc = wh_lua_vm_run_handler(vm, "messages.upsert", ev, &out, err, sizeof(err));
        json_t *a = json_array_get(wh_outcome_actions(&out), 0);
        char want[64];
        snprintf(want, sizeof(want), "{\"n\":%d}", i);
        if (rc == WH_OK && a != NULL &&
            strcmp(json_string_value(json_object_get(a, "text")), want) == 0)
            w->ok++;
        json_decref(ev);
    }
    wh_outcome_free(&out);
    wh_lua_vm_free(vm);
    return NULL;
}

static void test_threads(void)
{
    const char *dir = new_dir();
    write_file(dir, "main.lua",
               "local wahook = require 'wahook'\n"
               "local cjson = require 'cjson'\n"
               "return { ['messages.upsert'] = function(ev)\n"
               "  wahook.send_text('34600111222', cjson.encode({n = ev.n}))\n"
               "end }\n");
    enum { N = 4 };
    pthread_t th[N];
    worker_t w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker_t){dir, 0, 100};
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(w[i].ok, 100);
    }
    rm_rf(dir);
}

static void test_bad_options(void)
{
    wh_lua_vm_opts_t o = {0};
    char err[256];
    CHECK(wh_lua_vm_new(&o, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "scripts directory");
    o.scripts_dir = "/nonexistent/wahook/scripts";
    CHECK(wh_lua_vm_new(&o, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "/nonexistent/wahook/scripts");
    /* The gateway refuses an empty stack instead of crashing. */
    wh_lua_vm_t *vm = vm_with(new_dir(), 0, 0);
    CHECK_INT(wh_lua_vm_call(vm, 0, 0, err, sizeof(err)), WH_EINVAL);
    CHECK_STR(wh_lua_phase_name(WH_PHASE_DELIVER), "deliverer");
    wh_lua_vm_free(vm);
    rm_rf(g_dir);
}

int main(void)
{
    test_removed_names();
    test_require();
    test_errors_and_traceback();
    test_timeouts();
    test_memory();
    test_recursion();
    test_dispatch();
    test_timeout_in_handler_resets_outcome();
    test_push_json();
    test_threads();
    test_bad_options();
    WH_TEST_MAIN_END();
}
