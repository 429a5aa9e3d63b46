/* The effect-free Lua functions of the script API (time zones), shared by the runtime's `wahook`
 * module and the standalone `wahook_pure` module that busted specs load. */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "wahook/common.h"
#include "wahook/lua_pure.h"
#include "wahook/tz.h"

/* Raises the error for a failed wh_tz_* call; WH_EINVAL means a bad name or zone file, or what
 * `also` names. */
static int wh__tz_error(lua_State *L, const char *fn, const char *zone, int rc, const char *also)
{
    switch (rc) {
    case WH_ENOTFOUND:
        return luaL_error(L, "%s: unknown time zone '%s'", fn, zone);
    case WH_EINVAL:
        return luaL_error(L, "%s: invalid time zone '%s'%s", fn, zone, also);
    default:
        return luaL_error(L, "%s: time zone '%s': %s", fn, zone, wh_strerror(rc));
    }
}

static void wh__setint(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

int wh_lua_localtime(lua_State *L)
{
    const char *zone = luaL_checkstring(L, 1);
    int64_t t;
    if (lua_isnoneornil(L, 2)) {
        t = wh_now_ms() / 1000;
    } else if (lua_isinteger(L, 2)) {
        t = (int64_t)lua_tointeger(L, 2);
    } else {
        lua_Number n = luaL_checknumber(L, 2);
        /* Beyond ±2^62 no time zone answers anyway; the bound keeps the cast defined. */
        luaL_argcheck(L, isfinite(n) && fabs(n) < 4.6e18, 2, "time out of range");
        t = (int64_t)floor(n);
    }
    luaL_argcheck(L, t >= -WH_TZ_TIME_MAX && t <= WH_TZ_TIME_MAX, 2, "time out of range");
    wh_tm_t tm;
    int rc = wh_tz_localtime(zone, t, &tm);
    if (rc != WH_OK)
        return wh__tz_error(L, "localtime", zone, rc, "");
    lua_createtable(L, 0, 11);
    wh__setint(L, "year", tm.year);
    wh__setint(L, "month", tm.month);
    wh__setint(L, "day", tm.day);
    wh__setint(L, "hour", tm.hour);
    wh__setint(L, "min", tm.min);
    wh__setint(L, "sec", tm.sec);
    wh__setint(L, "wday", tm.wday);
    wh__setint(L, "yday", tm.yday);
    lua_pushboolean(L, tm.isdst);
    lua_setfield(L, -2, "isdst");
    wh__setint(L, "utc_offset", tm.utc_offset);
    lua_pushstring(L, tm.abbr);
    lua_setfield(L, -2, "zone");
    return 1;
}

/* fields[k] as an int; def when absent and def_ok, else an error naming the field. */
static int wh__getfield(lua_State *L, int idx, const char *k, int def, int def_ok)
{
    int isnum = 0;
    lua_getfield(L, idx, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (!def_ok)
            return luaL_error(L, "mktime: field '%s' missing", k);
        return def;
    }
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum)
        return luaL_error(L, "mktime: field '%s' is not an integer", k);
    if (v < INT_MIN || v > INT_MAX)
        return luaL_error(L, "mktime: field '%s' out of range", k);
    return (int)v;
}

int wh_lua_mktime(lua_State *L)
{
    const char *zone = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    wh_tm_t f = {0};
    f.year = wh__getfield(L, 2, "year", 0, 0);
    f.month = wh__getfield(L, 2, "month", 0, 0);
    f.day = wh__getfield(L, 2, "day", 0, 0);
    f.hour = wh__getfield(L, 2, "hour", 0, 1);
    f.min = wh__getfield(L, 2, "min", 0, 1);
    f.sec = wh__getfield(L, 2, "sec", 0, 1);
    int64_t t;
    int rc = wh_tz_mktime(zone, &f, &t);
    if (rc != WH_OK)
        return wh__tz_error(L, "mktime", zone, rc, " or fields out of range");
    lua_pushinteger(L, (lua_Integer)t);
    return 1;
}

int luaopen_wahook_pure(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"localtime", wh_lua_localtime},
        {"mktime", wh_lua_mktime},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
