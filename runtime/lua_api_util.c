/* Host API area "util": wahook.log, metric, now, localtime, mktime and the read-only config. */
#include <lauxlib.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/lua_api.h"
#include "wahook/luaconv.h"
#include "wahook/tz.h"

#define WH__MAX_LOG_MSG 4096
#define WH__MAX_LOG_FIELDS 16384
#define WH__MAX_LABELS 8

void wh_lua_log(lua_State *L, int level, const char *msg, int fields_idx)
{
    json_t *obj = NULL;
    if (fields_idx != 0 && !lua_isnoneornil(L, fields_idx)) {
        obj = wh_lua_to_json_or_raise(L, fields_idx, "fields", WH__MAX_LOG_FIELDS);
        if (json_is_array(obj) && json_array_size(obj) == 0) {
            json_decref(obj);
            obj = NULL;
        } else if (!json_is_object(obj)) {
            json_decref(obj);
            wh_lua_errorf(L, "%s: fields must be a table with string keys", wh_lua_fname(L));
        }
    }
    /* Nothing below raises. */
    if (obj == NULL && (obj = json_object()) == NULL)
        return;
    char text[WH__MAX_LOG_MSG + 1];
    size_t n = strlen(msg);
    if (n > WH__MAX_LOG_MSG) {
        n = WH__MAX_LOG_MSG;
        while (n > 0 && ((unsigned char)msg[n] & 0xc0) == 0x80)
            n--; /* do not cut a UTF-8 sequence */
    }
    memcpy(text, msg, n);
    text[n] = '\0';
    if (!wh_lua_utf8_valid(text, n))
        snprintf(text, sizeof(text), "(log message is not valid UTF-8)");
    lua_Debug ar;
    char where[160];
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.currentline);
        json_object_set_new(obj, "where", json_string(where));
    }
    json_object_set_new(obj, "script", json_true());
    if (wh_lua_phase(L) == WH_PHASE_TRY)
        json_object_set_new(obj, "dry_run", json_true());
    wh_log(level, text, "o", obj);
}

static int wh__log_at(lua_State *L, int level)
{
    const char *msg;
    if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
        msg = lua_tostring(L, 1);
    } else {
        char got[80];
        wh_lua_describe(L, 1, got, sizeof(got));
        return wh_lua_errorf(L, "%s: the message must be a string, got %s", wh_lua_fname(L), got);
    }
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) {
        char got[80];
        wh_lua_describe(L, 2, got, sizeof(got));
        return wh_lua_errorf(L, "%s: fields must be a table or nil, got %s", wh_lua_fname(L), got);
    }
    wh_lua_log(L, level, msg, 2);
    return 0;
}

static int wh__log_info(lua_State *L) { return wh__log_at(L, WH_LOG_INFO); }
static int wh__log_warn(lua_State *L) { return wh__log_at(L, WH_LOG_WARN); }
static int wh__log_error(lua_State *L) { return wh__log_at(L, WH_LOG_ERROR); }

static int wh__ident_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* Checks labels (a JSON object) and turns every value into a string. Returns NULL or a message. */
static const char *wh__check_labels(json_t *labels, char *msg, size_t len)
{
    if (json_object_size(labels) > WH__MAX_LABELS) {
        snprintf(msg, len, "at most %d labels", WH__MAX_LABELS);
        return msg;
    }
    const char *k;
    json_t *v;
    json_object_foreach(labels, k, v) {
        if (!wh__ident_ok(k, strlen(k))) {
            snprintf(msg, len, "label name '%.60s' must be letters, digits and _", k);
            return msg;
        }
        char buf[64];
        if (json_is_string(v)) {
            if (json_string_length(v) > 128) {
                snprintf(msg, len, "label %s is longer than 128 bytes", k);
                return msg;
            }
            continue;
        } else if (json_is_integer(v)) {
            snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
        } else if (json_is_real(v)) {
            snprintf(buf, sizeof(buf), "%.14g", json_real_value(v));
        } else if (json_is_boolean(v)) {
            snprintf(buf, sizeof(buf), "%s", json_is_true(v) ? "true" : "false");
        } else {
            snprintf(msg, len, "label %s must be a string, a number or a boolean", k);
            return msg;
        }
        json_object_set_new(labels, k, json_string(buf));
    }
    return NULL;
}

/* wahook.metric.inc(name [, labels]) */
static int wh__metric_inc(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80], msg[256];
    size_t n = 0;
    const char *name = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    if (name == NULL || !wh__ident_ok(name, n)) {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L, "%s: the metric name must be letters, digits and _ (at most 64), got %s",
                      fn, got);
    }
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) {
        wh_lua_describe(L, 2, got, sizeof(got));
        wh_lua_errorf(L, "%s: labels must be a table or nil, got %s", fn, got);
    }
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *labels = NULL;
    if (lua_istable(L, 2)) {
        labels = wh_lua_to_json_or_raise(L, 2, "labels", 4096);
        if (json_is_array(labels) && json_array_size(labels) == 0) {
            json_decref(labels);
            labels = NULL;
        } else if (!json_is_object(labels) || wh__check_labels(labels, msg, sizeof(msg)) != NULL) {
            if (!json_is_object(labels))
                snprintf(msg, sizeof(msg), "labels must be a table with string keys");
            json_decref(labels);
            wh_lua_errorf(L, "%s: %s", fn, msg);
        }
    }
    if (wh_outcome_add_metric(out, name, labels, msg, sizeof(msg)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", fn, msg);
    return 0;
}

/* wahook.now() → seconds since the epoch, with millisecond precision. */
static int wh__now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)wh_lua_now_ms(L) / 1000.0);
    return 1;
}

static const char *wh__check_zone(lua_State *L, int idx)
{
    return wh_lua_check_string(L, idx, "the time zone (e.g. \"Europe/Madrid\")", 1, 128, NULL);
}

static void wh__tz_error(lua_State *L, int rc, const char *zone)
{
    if (rc == WH_ENOTFOUND)
        wh_lua_errorf(L, "%s: unknown time zone \"%.80s\"", wh_lua_fname(L), zone);
    if (rc == WH_EINVAL)
        wh_lua_errorf(L, "%s: invalid time zone \"%.80s\"", wh_lua_fname(L), zone);
    wh_lua_errorf(L, "%s: time zone \"%.80s\": %s", wh_lua_fname(L), zone, wh_strerror(rc));
}

/* wahook.localtime(tz [, t]) → {year, month, day, hour, min, sec, wday (1 = Monday), yday,
 * isdst, utc_offset, zone} */
static int wh__localtime(lua_State *L)
{
    const char *zone = wh__check_zone(L, 1);
    int64_t t;
    if (lua_isnoneornil(L, 2)) {
        int64_t ms = wh_lua_now_ms(L);
        t = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    } else if (lua_type(L, 2) == LUA_TNUMBER) {
        if (lua_isinteger(L, 2)) {
            t = (int64_t)lua_tointeger(L, 2);
        } else {
            double d = floor((double)lua_tonumber(L, 2));
            if (!(d > -1e15 && d < 1e15))
                return wh_lua_errorf(L, "%s: t is out of range", wh_lua_fname(L));
            t = (int64_t)d;
        }
    } else {
        char got[80];
        wh_lua_describe(L, 2, got, sizeof(got));
        return wh_lua_errorf(L, "%s: t must be seconds since the epoch, got %s", wh_lua_fname(L),
                             got);
    }
    wh_tm_t tm;
    int rc = wh_tz_localtime(zone, t, &tm);
    if (rc != WH_OK)
        wh__tz_error(L, rc, zone);
    lua_createtable(L, 0, 11);
    static const struct {
        const char *k;
        size_t off;
    } ints[] = {
        {"year", offsetof(wh_tm_t, year)},   {"month", offsetof(wh_tm_t, month)},
        {"day", offsetof(wh_tm_t, day)},     {"hour", offsetof(wh_tm_t, hour)},
        {"min", offsetof(wh_tm_t, min)},     {"sec", offsetof(wh_tm_t, sec)},
        {"wday", offsetof(wh_tm_t, wday)},   {"yday", offsetof(wh_tm_t, yday)},
        {"utc_offset", offsetof(wh_tm_t, utc_offset)},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(ints); i++) {
        lua_pushinteger(L, *(const int *)((const char *)&tm + ints[i].off));
        lua_setfield(L, -2, ints[i].k);
    }
    lua_pushboolean(L, tm.isdst);
    lua_setfield(L, -2, "isdst");
    tm.abbr[sizeof(tm.abbr) - 1] = '\0';
    lua_pushstring(L, tm.abbr);
    lua_setfield(L, -2, "zone");
    return 1;
}

/* wahook.mktime(tz, {year, month, day [, hour, min, sec]}) → epoch seconds (integer). The other
 * fields of a localtime() table are accepted and ignored, so a modified copy can be passed back. */
static int wh__mktime(lua_State *L)
{
    static const char *const keys[] = {"year", "month", "day",  "hour", "min",        "sec",
                                       "wday", "yday",  "isdst", "zone", "utc_offset", NULL};
    static const struct {
        const char *k;
        int required;
        size_t off;
    } want[] = {
        {"year", 1, offsetof(wh_tm_t, year)}, {"month", 1, offsetof(wh_tm_t, month)},
        {"day", 1, offsetof(wh_tm_t, day)},   {"hour", 0, offsetof(wh_tm_t, hour)},
        {"min", 0, offsetof(wh_tm_t, min)},   {"sec", 0, offsetof(wh_tm_t, sec)},
    };
    const char *fn = wh_lua_fname(L);
    const char *zone = wh__check_zone(L, 1);
    if (!lua_istable(L, 2)) {
        char got[80];
        wh_lua_describe(L, 2, got, sizeof(got));
        return wh_lua_errorf(L, "%s: fields must be a table {year, month, day, hour, min, sec}, "
                                "got %s",
                             fn, got);
    }
    wh_lua_check_keys(L, 2, keys, "wahook.mktime fields");
    wh_tm_t tm;
    memset(&tm, 0, sizeof(tm));
    for (size_t i = 0; i < WH_ARRAY_SIZE(want); i++) {
        lua_pushstring(L, want[i].k);
        int type = lua_rawget(L, 2);
        int isint = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isint);
        if (type == LUA_TNIL && !want[i].required) {
            v = 0;
        } else if (type != LUA_TNUMBER || !isint || v < -1000000 || v > 1000000) {
            char got[80];
            wh_lua_describe(L, -1, got, sizeof(got));
            return wh_lua_errorf(L, "%s: %s must be an integer, got %s", fn, want[i].k, got);
        }
        *(int *)((char *)&tm + want[i].off) = (int)v;
        lua_pop(L, 1);
    }
    int64_t t;
    int rc = wh_tz_mktime(zone, &tm, &t);
    if (rc != WH_OK)
        wh__tz_error(L, rc, zone);
    lua_pushinteger(L, (lua_Integer)t);
    return 1;
}

static const wh_lua_fn_t wh__util_fns[] = {
    {"now", wh__now, WH_PHASES_ANY},
    {"localtime", wh__localtime, WH_PHASES_ANY},
    {"mktime", wh__mktime, WH_PHASES_ANY},
    {NULL, NULL, 0},
};

static const wh_lua_fn_t wh__log_fns[] = {
    {"info", wh__log_info, WH_PHASES_ANY},
    {"warn", wh__log_warn, WH_PHASES_ANY},
    {"error", wh__log_error, WH_PHASES_ANY},
    {NULL, NULL, 0},
};

static const wh_lua_fn_t wh__metric_fns[] = {
    {"inc", wh__metric_inc, WH_PHASES_HANDLER | WH_PHASES_DELIVER},
    {NULL, NULL, 0},
};

void wh_lua_api_util_register(lua_State *L, int mod)
{
    wh_lua_api_register(L, mod, "wahook", wh__util_fns);
    lua_newtable(L);
    wh_lua_api_register(L, -1, "wahook.log", wh__log_fns);
    lua_setfield(L, mod, "log");
    lua_newtable(L);
    wh_lua_api_register(L, -1, "wahook.metric", wh__metric_fns);
    lua_setfield(L, mod, "metric");
    wh_luaconv_push_readonly(L, wh_lua_vm_config(wh_lua_vm_of(L)), "wahook.config");
    lua_setfield(L, mod, "config");
}
