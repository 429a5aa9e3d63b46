/* jansson ↔ Lua conversion that keeps integers exact and names the path of whatever it refuses. */
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/luaconv.h"

/* Addresses used as unique light-userdata keys. */
static const char wh__ro_key = 'r';       /* read-only proxy metatable → wrapped table */
static const char wh__array_mt_key = 'a'; /* registry → marker metatable of empty JSON arrays */

/* ---- JSON → Lua ---- */

static void wh__push_array_marker(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &wh__array_mt_key) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__name");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &wh__array_mt_key);
    }
}

static void wh__push(lua_State *L, const json_t *j, int depth)
{
    if (depth > WH_LUACONV_MAX_DEPTH && (json_is_object(j) || json_is_array(j)))
        luaL_error(L, "JSON value nested deeper than %d levels", WH_LUACONV_MAX_DEPTH);
    luaL_checkstack(L, 4, "JSON value nested too deeply");
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *v;
        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_keylen_foreach((json_t *)j, k, klen, v) {
            lua_pushlstring(L, k, klen);
            wh__push(L, v, depth + 1);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            wh__push(L, json_array_get(j, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (n == 0) {
            wh__push_array_marker(L);
            lua_setmetatable(L, -2);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(j)); break;
    case JSON_REAL: lua_pushnumber(L, (lua_Number)json_real_value(j)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL: lua_pushlightuserdata(L, NULL); break;
    }
}

void wh_luaconv_push(lua_State *L, const json_t *j)
{
    if (j == NULL)
        lua_pushlightuserdata(L, NULL);
    else
        wh__push(L, j, 0);
}

void wh_luaconv_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL);
}

int wh_luaconv_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

/* ---- read-only proxies ---- */

static int wh__ro_newindex(lua_State *L)
{
    return luaL_error(L, "%s is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

/* Pushes the table wrapped by the proxy at idx. */
static void wh__ro_target(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        luaL_error(L, "not a read-only table");
    lua_rawgetp(L, -1, &wh__ro_key);
    lua_remove(L, -2);
}

static int wh__ro_len(lua_State *L)
{
    wh__ro_target(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
    return 1;
}

static int wh__ro_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int wh__ro_pairs(lua_State *L)
{
    lua_pushcfunction(L, wh__ro_next);
    wh__ro_target(L, 1);
    lua_pushnil(L);
    return 3;
}

/* ni: stack index of the shared __newindex closure. */
static void wh__push_ro(lua_State *L, const json_t *j, int depth, int ni)
{
    if (depth > WH_LUACONV_MAX_DEPTH && (json_is_object(j) || json_is_array(j)))
        luaL_error(L, "JSON value nested deeper than %d levels", WH_LUACONV_MAX_DEPTH);
    luaL_checkstack(L, 6, "JSON value nested too deeply");
    if (j != NULL && !json_is_object(j) && !json_is_array(j)) {
        wh__push(L, j, depth);
        return;
    }
    /* The wrapped table holds proxies for its children. */
    if (j != NULL && json_is_array(j)) {
        size_t n = json_array_size(j);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            wh__push_ro(L, json_array_get(j, i), depth + 1, ni);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (n == 0) {
            wh__push_array_marker(L);
            lua_setmetatable(L, -2);
        }
    } else {
        const char *k;
        size_t klen;
        json_t *v;
        lua_createtable(L, 0, j != NULL ? (int)json_object_size(j) : 0);
        if (j != NULL) {
            json_object_keylen_foreach((json_t *)j, k, klen, v) {
                lua_pushlstring(L, k, klen);
                wh__push_ro(L, v, depth + 1, ni);
                lua_rawset(L, -3);
            }
        }
    }
    int target = lua_gettop(L);
    lua_newtable(L); /* the proxy, always empty */
    lua_createtable(L, 0, 6);
    lua_pushvalue(L, target);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, ni);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, wh__ro_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, wh__ro_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "read-only");
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, target);
    lua_rawsetp(L, -2, &wh__ro_key);
    lua_setmetatable(L, -2);
    lua_remove(L, target);
}

void wh_luaconv_push_readonly(lua_State *L, const json_t *j, const char *name)
{
    luaL_checkstack(L, 2, NULL);
    lua_pushstring(L, name != NULL ? name : "this table");
    lua_pushcclosure(L, wh__ro_newindex, 1);
    int ni = lua_gettop(L);
    wh__push_ro(L, j, 0, ni);
    lua_remove(L, ni);
}

/* ---- Lua → JSON ---- */

typedef struct wh__conv {
    lua_State *L;
    size_t max_bytes, used;
    int rc;
    char *err;
    size_t errlen;
    const void *ancestors[WH_LUACONV_MAX_DEPTH + 2];
    char root[64];
    char path[256];
    size_t pathlen;
} wh__conv_t;

static json_t *wh__fail(wh__conv_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static json_t *wh__fail(wh__conv_t *c, int rc, const char *fmt, ...)
{
    c->rc = rc;
    if (c->err != NULL && c->errlen > 0) {
        char what[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        if (rc == WH_EINVAL)
            snprintf(c->err, c->errlen, "cannot serialise %s at %s", what, c->path);
        else
            snprintf(c->err, c->errlen, "%s", what);
    }
    return NULL;
}

/* Appends a path segment; returns the previous length for wh__path_pop. */
static size_t wh__path_push_key(wh__conv_t *c, const char *k, size_t klen)
{
    size_t old = c->pathlen, room = sizeof(c->path) - old;
    int simple = klen > 0 && klen <= 40;
    for (size_t i = 0; simple && i < klen; i++)
        simple = k[i] == '_' || (k[i] >= 'a' && k[i] <= 'z') || (k[i] >= 'A' && k[i] <= 'Z') ||
                 (k[i] >= '0' && k[i] <= '9' && i > 0);
    int n;
    if (simple)
        n = snprintf(c->path + old, room, ".%.*s", (int)klen, k);
    else
        n = snprintf(c->path + old, room, "[\"%.*s%s\"]", (int)(klen > 40 ? 40 : klen), k,
                     klen > 40 ? "..." : "");
    c->pathlen = n > 0 && (size_t)n < room ? old + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static size_t wh__path_push_index(wh__conv_t *c, lua_Integer i)
{
    size_t old = c->pathlen, room = sizeof(c->path) - old;
    int n = snprintf(c->path + old, room, "[%lld]", (long long)i);
    c->pathlen = n > 0 && (size_t)n < room ? old + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static void wh__path_pop(wh__conv_t *c, size_t old)
{
    c->pathlen = old;
    c->path[old] = '\0';
}

static int wh__charge(wh__conv_t *c, size_t n)
{
    c->used += n;
    if (c->max_bytes != 0 && c->used > c->max_bytes) {
        wh__fail(c, WH_EFULL, "%s is too large: more than %zu bytes as JSON", c->root,
                 c->max_bytes);
        return -1;
    }
    return 0;
}

static const char *wh__lua_typename(lua_State *L, int idx)
{
    return lua_typename(L, lua_type(L, idx));
}

static json_t *wh__to_json(wh__conv_t *c, int idx, int depth);

static json_t *wh__table_to_json(wh__conv_t *c, int idx, int depth)
{
    lua_State *L = c->L;
    if (depth > WH_LUACONV_MAX_DEPTH)
        return wh__fail(c, WH_EINVAL, "a table nested deeper than %d levels",
                        WH_LUACONV_MAX_DEPTH);
    if (!lua_checkstack(L, 6))
        return wh__fail(c, WH_ENOMEM, "out of Lua stack space at %s", c->path);

    /* A read-only proxy serialises as what it wraps; an empty JSON array keeps being one. */
    int is_array_marked = 0;
    if (lua_getmetatable(L, idx)) {
        if (lua_rawgetp(L, -1, &wh__ro_key) == LUA_TTABLE) {
            lua_remove(L, -2);
            json_t *j = wh__table_to_json(c, lua_gettop(L), depth);
            lua_pop(L, 1);
            return j;
        }
        lua_pop(L, 1);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &wh__array_mt_key);
        is_array_marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }

    const void *self = lua_topointer(L, idx);
    for (int i = 0; i < depth; i++)
        if (c->ancestors[i] == self)
            return wh__fail(c, WH_EINVAL, "a table that contains itself (a cycle)");
    c->ancestors[depth] = self;

    /* First pass: classify the keys. */
    size_t nstr = 0, nint = 0;
    lua_Integer maxk = 0;
    int nonpositive = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) {
            nstr++;
        } else if (kt == LUA_TNUMBER && lua_isinteger(L, -2)) {
            lua_Integer k = lua_tointeger(L, -2);
            nint++;
            if (k < 1)
                nonpositive = 1;
            else if (k > maxk)
                maxk = k;
        } else {
            const char *tn = kt == LUA_TNUMBER ? "non-integer number" : lua_typename(L, kt);
            lua_pop(L, 2);
            return wh__fail(c, WH_EINVAL, "a table with a %s key", tn);
        }
        lua_pop(L, 1);
    }
    if (nstr > 0 && nint > 0)
        return wh__fail(c, WH_EINVAL, "a table with mixed keys");
    if (nint > 0 && (nonpositive || (lua_Unsigned)maxk != nint))
        return wh__fail(c, WH_EINVAL,
                        "a table with mixed keys (integer keys must be exactly 1..n, without "
                        "holes)");

    if (nint > 0 || (nstr == 0 && is_array_marked)) {
        json_t *arr = json_array();
        if (arr == NULL || wh__charge(c, 2) != 0) {
            json_decref(arr);
            return arr == NULL ? wh__fail(c, WH_ENOMEM, "out of memory") : NULL;
        }
        for (lua_Integer i = 1; i <= maxk; i++) {
            size_t old = wh__path_push_index(c, i);
            lua_rawgeti(L, idx, i);
            json_t *v = wh__to_json(c, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            if (v == NULL || wh__charge(c, 1) != 0) {
                json_decref(v);
                json_decref(arr);
                return NULL;
            }
            wh__path_pop(c, old);
            if (json_array_append_new(arr, v) != 0) {
                json_decref(arr);
                return wh__fail(c, WH_ENOMEM, "out of memory");
            }
        }
        return arr;
    }

    json_t *obj = json_object();
    if (obj == NULL)
        return wh__fail(c, WH_ENOMEM, "out of memory");
    if (wh__charge(c, 2) != 0) {
        json_decref(obj);
        return NULL;
    }
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen); /* a string already: no conversion */
        size_t old = wh__path_push_key(c, k, klen);
        json_t *v = wh__to_json(c, lua_gettop(L), depth + 1);
        if (v == NULL || wh__charge(c, klen + 4) != 0) {
            json_decref(v);
            json_decref(obj);
            lua_pop(L, 2);
            return NULL;
        }
        if (json_object_setn_new(obj, k, klen, v) != 0) {
            json_decref(obj);
            lua_pop(L, 2);
            return wh__fail(c, WH_EINVAL, "a key that is not valid UTF-8");
        }
        wh__path_pop(c, old);
        lua_pop(L, 1);
    }
    return obj;
}

static json_t *wh__to_json(wh__conv_t *c, int idx, int depth)
{
    lua_State *L = c->L;
    json_t *j = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        /* Only reachable at the root: tables cannot hold nil. */
        if (wh__charge(c, 4) != 0)
            return NULL;
        j = json_null();
        break;
    case LUA_TBOOLEAN:
        if (wh__charge(c, 5) != 0)
            return NULL;
        j = json_boolean(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (wh__charge(c, 20) != 0)
            return NULL;
        if (lua_isinteger(L, idx)) {
            j = json_integer((json_int_t)lua_tointeger(L, idx));
        } else {
            double d = (double)lua_tonumber(L, idx);
            if (!isfinite(d))
                return wh__fail(c, WH_EINVAL, "a number that is NaN or infinite");
            j = json_real(d);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (wh__charge(c, len + 2) != 0)
            return NULL;
        j = json_stringn(s, len);
        if (j == NULL)
            return wh__fail(c, WH_EINVAL, "a string that is not valid UTF-8");
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL)
            return wh__fail(c, WH_EINVAL, "a light userdata value");
        if (wh__charge(c, 4) != 0)
            return NULL;
        j = json_null();
        break;
    case LUA_TTABLE: return wh__table_to_json(c, idx, depth);
    default: return wh__fail(c, WH_EINVAL, "a %s value", wh__lua_typename(L, idx));
    }
    if (j == NULL)
        return wh__fail(c, WH_ENOMEM, "out of memory");
    return j;
}

int wh_luaconv_to_json(lua_State *L, int idx, const char *root, size_t max_bytes, json_t **out,
                       char *err, size_t errlen)
{
    wh__conv_t c;
    memset(&c, 0, sizeof(c));
    c.L = L;
    c.max_bytes = max_bytes;
    c.rc = WH_OK;
    c.err = err;
    c.errlen = errlen;
    snprintf(c.root, sizeof(c.root), "%s", root != NULL && root[0] != '\0' ? root : "value");
    snprintf(c.path, sizeof(c.path), "%s", c.root);
    c.pathlen = strlen(c.path);
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    int top = lua_gettop(L);
    *out = wh__to_json(&c, lua_absindex(L, idx), 0);
    lua_settop(L, top);
    if (*out == NULL)
        return c.rc != WH_OK ? c.rc : WH_ENOMEM;
    return WH_OK;
}
