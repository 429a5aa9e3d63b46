/* Unit tests for runtime/luaconv.c: exact integers both ways, nesting, null, empty tables, the
 * refusals (mixed keys, cycles, depth, NaN, UTF-8, size cap) with their paths, and read-only
 * proxies. */
#include <jansson.h>
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/luaconv.h"
#include "wh_test.h"

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "cjson", luaopen_cjson, 1);
    lua_pop(L, 1);
    return L;
}

/* Runs code (one result) and leaves the result on the stack. */
static void run(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
        exit(2);
    }
}

static int push_p(lua_State *L)
{
    wh_luaconv_push(L, lua_touserdata(L, 1));
    return 1;
}

/* Pushes j in protected mode; returns the Lua status (error message left on the stack). */
static int ppush(lua_State *L, json_t *j)
{
    lua_pushcfunction(L, push_p);
    lua_pushlightuserdata(L, j);
    return lua_pcall(L, 1, 1, 0);
}

/* Lua → JSON → compact text, or the error message prefixed with "!". */
static void to_text(lua_State *L, const char *root, size_t cap, char *buf, size_t len)
{
    json_t *j = NULL;
    char err[256];
    int top = lua_gettop(L);
    int rc = wh_luaconv_to_json(L, -1, root, cap, &j, err, sizeof(err));
    CHECK_INT(lua_gettop(L), top);
    if (rc != WH_OK) {
        snprintf(buf, len, "!%s", err);
        CHECK(j == NULL);
        return;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    snprintf(buf, len, "%s", s);
    free(s);
    json_decref(j);
}

static void lua_to_text(lua_State *L, const char *code, char *buf, size_t len)
{
    run(L, code);
    to_text(L, "state", 0, buf, len);
    lua_pop(L, 1);
}

static void test_json_to_lua_integers(void)
{
    lua_State *L = new_state();
    json_error_t jerr;
    json_t *j = json_loads("{\"ts\":1761141987,\"big\":9007199254740993,\"max\":9223372036854775807,"
                           "\"min\":-9223372036854775808,\"real\":1.5,\"whole\":3.0,\"s\":\"h\\u00e9\","
                           "\"t\":true,\"f\":false,\"n\":null,\"arr\":[1,[2,{\"x\":3}]],\"empty\":[],"
                           "\"eo\":{}}",
                           0, &jerr);
    CHECK(j != NULL);
    CHECK_INT(ppush(L, j), LUA_OK);
    lua_setglobal(L, "v");
    run(L, "return math.type(v.ts) == 'integer' and v.ts == 1761141987 and "
           "math.type(v.big) == 'integer' and v.big == 9007199254740993 and "
           "v.max == math.maxinteger and v.min == math.mininteger and "
           "math.type(v.real) == 'float' and math.type(v.whole) == 'float' and "
           "v.s == 'h\\u{e9}' and v.t == true and v.f == false and v.n == cjson.null and "
           "v.arr[1] == 1 and v.arr[2][1] == 2 and v.arr[2][2].x == 3 and #v.empty == 0 and "
           "next(v.eo) == nil");
    CHECK(lua_toboolean(L, -1));
    lua_pop(L, 1);

    /* And back: identical, including integers and the empty array. */
    lua_getglobal(L, "v");
    json_t *back = NULL;
    char err[256];
    CHECK_INT(wh_luaconv_to_json(L, -1, "v", 0, &back, err, sizeof(err)), WH_OK);
    lua_pop(L, 1);
    CHECK(json_equal(j, back));
    CHECK(json_is_integer(json_object_get(back, "big")));
    CHECK_INT(json_integer_value(json_object_get(back, "big")), 9007199254740993LL);
    CHECK(json_is_real(json_object_get(back, "whole")));
    CHECK(json_is_array(json_object_get(back, "empty")));
    CHECK(json_is_object(json_object_get(back, "eo")));
    json_decref(back);
    json_decref(j);

    /* Scalars at the root. */
    j = json_integer(42);
    CHECK_INT(ppush(L, j), LUA_OK);
    CHECK(lua_isinteger(L, -1));
    lua_pop(L, 1);
    json_decref(j);
    wh_luaconv_push_null(L);
    CHECK(wh_luaconv_is_null(L, -1));
    lua_getglobal(L, "cjson");
    lua_getfield(L, -1, "null");
    CHECK(lua_rawequal(L, -1, -3));
    lua_pop(L, 3);

    /* Depth: 65 nested arrays (depth 0..64) are fine, 66 are refused with an error, not a
     * crash: the same limit as for Lua tables. */
    json_t *deep = json_integer(1);
    for (int i = 0; i < 65; i++)
        deep = json_pack("[o]", deep);
    CHECK_INT(ppush(L, deep), LUA_OK);
    lua_pop(L, 1);
    deep = json_pack("[o]", deep);
    CHECK_INT(ppush(L, deep), LUA_ERRRUN);
    CHECK_CONTAINS(lua_tostring(L, -1), "nested deeper than 64");
    lua_pop(L, 1);
    json_decref(deep);
    CHECK_INT(lua_gettop(L), 0);
    lua_close(L);
}

static void test_lua_to_json(void)
{
    lua_State *L = new_state();
    char buf[512];
    lua_to_text(L, "return {n = 1761141987, big = 2^53 | 1, f = 2.5, w = 3.0, s = 'x', b = false}",
                buf, sizeof(buf));
    CHECK_STR(buf, "{\"b\":false,\"big\":9007199254740993,\"f\":2.5,\"n\":1761141987,\"s\":\"x\","
                   "\"w\":3.0}");
    lua_to_text(L, "return {a = {b = {1, 2, {c = cjson.null}}}}", buf, sizeof(buf));
    CHECK_STR(buf, "{\"a\":{\"b\":[1,2,{\"c\":null}]}}");
    lua_to_text(L, "return {}", buf, sizeof(buf));
    CHECK_STR(buf, "{}"); /* documented: an empty table is an object */
    lua_to_text(L, "return {{}, {1}}", buf, sizeof(buf));
    CHECK_STR(buf, "[{},[1]]");
    lua_to_text(L, "return 'plain'", buf, sizeof(buf));
    CHECK_STR(buf, "\"plain\"");
    lua_to_text(L, "return {['with space'] = 1, ['a\\0b'] = 2}", buf, sizeof(buf));
    CHECK_STR(buf, "{\"a\\u0000b\":2,\"with space\":1}");
    /* Metatables are ignored: no Lua runs. */
    lua_to_text(L, "return setmetatable({x = 1}, {__index = function() error('ran') end, "
                   "__pairs = function() error('ran') end})",
                buf, sizeof(buf));
    CHECK_STR(buf, "{\"x\":1}");

    /* Refusals name the path. */
    lua_to_text(L, "return {a = {b = {1, x = 2}}}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a table with mixed keys at state.a.b");
    lua_to_text(L, "return {a = {[1] = 1, [3] = 3}}", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "!cannot serialise a table with mixed keys (integer keys must be exactly");
    CHECK_CONTAINS(buf, "at state.a");
    lua_to_text(L, "return {list = {{ok = 1}, {bad = {[true] = 1}}}}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a table with a boolean key at state.list[2].bad");
    lua_to_text(L, "return {[1.5] = 1}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a table with a non-integer number key at state");
    lua_to_text(L, "return {[0] = 'zero'}", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "!cannot serialise a table with mixed keys");
    lua_to_text(L, "local t = {a = {}} t.a.loop = t return t", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a table that contains itself (a cycle) at state.a.loop");
    lua_to_text(L, "local shared = {1} return {x = shared, y = shared}", buf, sizeof(buf));
    CHECK_STR(buf, "{\"x\":[1],\"y\":[1]}"); /* shared but not cyclic is fine */
    lua_to_text(L, "return {v = 0/0}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a number that is NaN or infinite at state.v");
    lua_to_text(L, "return {v = math.huge}", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "NaN or infinite");
    lua_to_text(L, "return {f = print}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a function value at state.f");
    lua_to_text(L, "return {co = coroutine.create(print)}", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "a thread value");
    lua_to_text(L, "return {s = '\\xff\\xfe'}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a string that is not valid UTF-8 at state.s");
    lua_to_text(L, "return {['odd key!'] = {1, {}, print}}", buf, sizeof(buf));
    CHECK_STR(buf, "!cannot serialise a function value at state[\"odd key!\"][3]");
    lua_to_text(L, "local t = {} local c = t for i = 1, 64 do c.x = {} c = c.x end return t", buf,
                sizeof(buf));
    CHECK(buf[0] == '{');
    lua_to_text(L, "local t = {} local c = t for i = 1, 65 do c.x = {} c = c.x end return t", buf,
                sizeof(buf));
    CHECK_CONTAINS(buf, "nested deeper than 64 levels");

    /* The size cap stops the conversion cleanly. */
    run(L, "return {text = string.rep('x', 1000)}");
    to_text(L, "state", 900, buf, sizeof(buf));
    CHECK_STR(buf, "!state is too large: more than 900 bytes as JSON");
    to_text(L, "state", 2000, buf, sizeof(buf));
    CHECK(buf[0] == '{');
    lua_pop(L, 1);
    run(L, "local t = {} for i = 1, 10000 do t[i] = i end return t");
    to_text(L, "state", 4096, buf, sizeof(buf));
    CHECK_CONTAINS(buf, "too large");
    lua_pop(L, 1);

    /* Arguments given by negative and positive index give the same result. */
    run(L, "return {1, 2}");
    json_t *a = NULL, *b = NULL;
    char err[128];
    CHECK_INT(wh_luaconv_to_json(L, -1, NULL, 0, &a, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_luaconv_to_json(L, lua_gettop(L), NULL, 0, &b, err, sizeof(err)), WH_OK);
    CHECK(json_equal(a, b));
    json_decref(a);
    json_decref(b);
    lua_pop(L, 1);
    CHECK_INT(lua_gettop(L), 0);
    lua_close(L);
}

static int ro_p(lua_State *L)
{
    wh_luaconv_push_readonly(L, lua_touserdata(L, 1), "wahook.config");
    return 1;
}

static void test_readonly(void)
{
    lua_State *L = new_state();
    json_error_t jerr;
    json_t *cfg = json_loads("{\"hours\":{\"open\":9,\"days\":[1,2,3]},\"name\":\"shop\","
                             "\"none\":[]}",
                             0, &jerr);
    lua_pushcfunction(L, ro_p);
    lua_pushlightuserdata(L, cfg);
    CHECK_INT(lua_pcall(L, 1, 1, 0), LUA_OK);
    lua_setglobal(L, "config");
    run(L, "local n = 0 for k in pairs(config) do n = n + 1 end\n"
           "local s = 0 for _, d in ipairs(config.hours.days) do s = s + d end\n"
           "return config.name == 'shop' and config.hours.open == 9 and #config.hours.days == 3 "
           "and s == 6 and n == 3 and math.type(config.hours.open) == 'integer'");
    CHECK(lua_toboolean(L, -1));
    lua_pop(L, 1);
    static const char *const writes[] = {"config.name = 'x'", "config.hours.open = 10",
                                         "config.hours.days[4] = 4", "config.new = {}"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(writes); i++) {
        CHECK(luaL_dostring(L, writes[i]) != LUA_OK);
        CHECK_CONTAINS(lua_tostring(L, -1), "wahook.config is read-only");
        lua_pop(L, 1);
    }
    run(L, "return config.name");
    CHECK_STR(lua_tostring(L, -1), "shop");
    lua_pop(L, 1);
    /* A proxy serialises as its content. */
    lua_getglobal(L, "config");
    json_t *back = NULL;
    char err[128];
    CHECK_INT(wh_luaconv_to_json(L, -1, "c", 0, &back, err, sizeof(err)), WH_OK);
    CHECK(json_equal(back, cfg));
    json_decref(back);
    lua_pop(L, 1);
    /* NULL config: an empty read-only table. */
    lua_pushcfunction(L, ro_p);
    lua_pushlightuserdata(L, NULL);
    CHECK_INT(lua_pcall(L, 1, 1, 0), LUA_OK);
    lua_setglobal(L, "empty");
    CHECK(luaL_dostring(L, "return empty.anything == nil") == LUA_OK && lua_toboolean(L, -1));
    lua_pop(L, 1);
    CHECK(luaL_dostring(L, "empty.x = 1") != LUA_OK);
    lua_pop(L, 1);
    CHECK_INT(lua_gettop(L), 0);
    json_decref(cfg);
    lua_close(L);
}

int main(void)
{
    test_json_to_lua_integers();
    test_lua_to_json();
    test_readonly();
    WH_TEST_MAIN_END();
}
