/* Assembles the `wahook` Lua module from the host-API areas and provides their shared helpers
 * (phase-checked registration, argument errors, JSON conversion that raises). */
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"
#include "wahook/luaconv.h"

/* Upvalues of every registered host function: 1 its body, 2 its phase mask, 3 its full name. */
static int wh__trampoline(lua_State *L)
{
    unsigned mask = (unsigned)lua_tointeger(L, lua_upvalueindex(2));
    wh_lua_check_phase(L, mask, lua_tostring(L, lua_upvalueindex(3)));
    lua_CFunction body = lua_tocfunction(L, lua_upvalueindex(1));
    return body(L);
}

void wh_lua_api_register(lua_State *L, int tidx, const char *prefix, const wh_lua_fn_t *fns)
{
    tidx = lua_absindex(L, tidx);
    for (const wh_lua_fn_t *f = fns; f->name != NULL; f++) {
        lua_pushcfunction(L, f->fn);
        lua_pushinteger(L, (lua_Integer)f->phases);
        lua_pushfstring(L, "%s.%s", prefix, f->name);
        lua_pushcclosure(L, wh__trampoline, 3);
        lua_setfield(L, tidx, f->name);
    }
}

const char *wh_lua_fname(lua_State *L)
{
    const char *name = lua_tostring(L, lua_upvalueindex(3));
    return name != NULL ? name : "wahook";
}

int wh_lua_errorf(lua_State *L, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", buf);
}

void wh_lua_describe(lua_State *L, int idx, char *buf, size_t len)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE: snprintf(buf, len, "nil"); break;
    case LUA_TBOOLEAN: snprintf(buf, len, "%s", lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(buf, len, "%.14g", (double)lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        snprintf(buf, len, "\"%.*s%s\"", (int)(n > 40 ? 40 : n), s, n > 40 ? "..." : "");
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (wh_luaconv_is_null(L, idx)) {
            snprintf(buf, len, "null");
            break;
        }
        /* fall through */
    default: snprintf(buf, len, "a %s", luaL_typename(L, idx)); break;
    }
}

void wh_lua_check_keys(lua_State *L, int idx, const char *const *allowed, const char *what)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        int ok = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            for (size_t i = 0; allowed[i] != NULL && !ok; i++)
                ok = strcmp(k, allowed[i]) == 0;
        }
        if (!ok) {
            char key[64], list[256] = "";
            wh_lua_describe(L, -2, key, sizeof(key));
            for (size_t i = 0; allowed[i] != NULL; i++) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof(list) - n, "%s%s", i > 0 ? ", " : "", allowed[i]);
            }
            wh_lua_errorf(L, "%s: unknown field %s (allowed: %s)", what, key, list);
        }
        lua_pop(L, 1);
    }
}

int wh_lua_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        size_t need;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if ((size_t)(end - p) <= need)
            return 0;
        for (size_t i = 1; i <= need; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        p += need + 1;
    }
    return 1;
}

const char *wh_lua_check_string(lua_State *L, int idx, const char *what, size_t min, size_t max,
                                size_t *len)
{
    size_t n = 0;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
    if (s == NULL || n < min || n > max) {
        char got[80];
        wh_lua_describe(L, idx, got, sizeof(got));
        if (s != NULL && n > max)
            snprintf(got, sizeof(got), "%zu bytes", n);
        wh_lua_errorf(L, "%s: %s must be a %sstring of at most %zu bytes, got %s",
                      wh_lua_fname(L), what, min > 0 ? "non-empty " : "", max, got);
    }
    if (!wh_lua_utf8_valid(s, n))
        wh_lua_errorf(L, "%s: %s is not valid UTF-8", wh_lua_fname(L), what);
    if (len != NULL)
        *len = n;
    return s;
}

json_t *wh_lua_to_json_or_raise(lua_State *L, int idx, const char *root, size_t max_bytes)
{
    char err[512];
    json_t *j = NULL;
    if (wh_luaconv_to_json(L, idx, root, max_bytes, &j, err, sizeof(err)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", wh_lua_fname(L), err);
    return j;
}

int wh_lua_api_open(lua_State *L)
{
    lua_newtable(L);
    int mod = lua_gettop(L);
    wh_lua_api_actions_register(L, mod);
    wh_lua_api_timers_register(L, mod);
    wh_lua_api_state_register(L, mod);
    wh_lua_api_util_register(L, mod);
    wh_lua_api_http_register(L, mod);
    lua_pushliteral(L, WH_VERSION);
    lua_setfield(L, mod, "version");
    return 1;
}
