/* Host API area "state": wahook.state.get/set for the event's contact (committed with the event)
 * and wahook.record for the fixed set of script facts analytics are built on. */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"
#include "wahook/luaconv.h"

/* wahook.state.get() → a fresh copy of the contact's state ({} when it has none). */
static int wh__state_get(lua_State *L)
{
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *cur = wh_outcome_current_state(out);
    if (cur == NULL)
        lua_newtable(L);
    else
        wh_luaconv_push(L, cur);
    return 1;
}

/* wahook.state.set(tbl): replaces the state; nil clears it. */
static int wh__state_set(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80], err[256];
    wh_outcome_t *out = wh_lua_outcome(L);
    if (lua_isnoneornil(L, 1)) {
        wh_outcome_set_state(out, NULL, NULL, 0);
        return 0;
    }
    if (!lua_istable(L, 1)) {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L, "%s: state must be a table (or nil to clear it), got %s", fn, got);
    }
    json_t *state = wh_lua_to_json_or_raise(L, 1, "state", out->limits.max_state_bytes);
    if (!json_is_object(state)) {
        json_decref(state);
        wh_lua_errorf(L, "%s: state must be a table with string keys, not a list", fn);
    }
    if (wh_outcome_set_state(out, state, err, sizeof(err)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", fn, err);
    return 0;
}

/* ---- facts ---- */

enum { WH__F_STRING, WH__F_COUNT, WH__F_NUMBER, WH__F_SCALAR };

typedef struct wh__field {
    const char *name;
    int type;
    int required;
} wh__field_t;

typedef struct wh__kind {
    const char *kind;
    int need_any; /* at least one field must be present */
    wh__field_t fields[3];
} wh__kind_t;

/* The fixed kinds and fields of DESIGN.md "What the runtime records natively". */
static const wh__kind_t wh__kinds[] = {
    {"bot_reply", 0, {{"in_reply_to", WH__F_STRING, 1}, {"latency_ms", WH__F_COUNT, 0}}},
    {"handoff", 0, {{"reason", WH__F_STRING, 0}}},
    {"lead", 1, {{"score", WH__F_NUMBER, 0}, {"stage", WH__F_STRING, 0}}},
    {"csat", 0, {{"score", WH__F_NUMBER, 1}}},
    {"custom", 0, {{"name", WH__F_STRING, 1}, {"value", WH__F_SCALAR, 1}}},
};

#define WH__MAX_FACT_STRING 512

static void wh__field_list(const wh__kind_t *k, char *buf, size_t len)
{
    buf[0] = '\0';
    for (size_t i = 0; i < WH_ARRAY_SIZE(k->fields) && k->fields[i].name != NULL; i++) {
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "%s%s", i > 0 ? ", " : "", k->fields[i].name);
    }
}

/* Checks fields against the kind's fields; normalises whole floats to integers for counts.
 * Returns NULL or a message in msg. */
static const char *wh__check_fact(const wh__kind_t *k, json_t *fields, char *msg, size_t len)
{
    char list[128];
    wh__field_list(k, list, sizeof(list));
    const char *key;
    json_t *v;
    json_object_foreach(fields, key, v) {
        const wh__field_t *f = NULL;
        for (size_t i = 0; i < WH_ARRAY_SIZE(k->fields) && k->fields[i].name != NULL; i++)
            if (strcmp(k->fields[i].name, key) == 0)
                f = &k->fields[i];
        if (f == NULL) {
            snprintf(msg, len, "unknown field '%.60s' for kind '%s' (allowed: %s)", key, k->kind,
                     list);
            return msg;
        }
        switch (f->type) {
        case WH__F_STRING:
            if (!json_is_string(v) || json_string_length(v) == 0 ||
                json_string_length(v) > WH__MAX_FACT_STRING) {
                snprintf(msg, len, "%s must be a non-empty string of at most %d bytes", key,
                         WH__MAX_FACT_STRING);
                return msg;
            }
            break;
        case WH__F_COUNT: {
            double d = json_number_value(v);
            int whole = json_is_integer(v) || (json_is_real(v) && d == floor(d) && d < 9e15);
            if (!whole || d < 0) {
                snprintf(msg, len, "%s must be an integer >= 0", key);
                return msg;
            }
            if (json_is_real(v))
                json_object_set_new(fields, key, json_integer((json_int_t)d));
            break;
        }
        case WH__F_NUMBER:
            if (!json_is_number(v)) {
                snprintf(msg, len, "%s must be a number", key);
                return msg;
            }
            break;
        case WH__F_SCALAR:
            if (!json_is_number(v) && !json_is_boolean(v) &&
                !(json_is_string(v) && json_string_length(v) <= WH__MAX_FACT_STRING)) {
                snprintf(msg, len, "%s must be a string, a number or a boolean", key);
                return msg;
            }
            break;
        }
    }
    int any = json_object_size(fields) > 0;
    for (size_t i = 0; i < WH_ARRAY_SIZE(k->fields) && k->fields[i].name != NULL; i++) {
        if (k->fields[i].required && json_object_get(fields, k->fields[i].name) == NULL) {
            snprintf(msg, len, "kind '%s' needs the field %s", k->kind, k->fields[i].name);
            return msg;
        }
    }
    if (k->need_any && !any) {
        snprintf(msg, len, "kind '%s' needs at least one of: %s", k->kind, list);
        return msg;
    }
    return NULL;
}

/* wahook.record(kind, fields) */
static int wh__record(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80], msg[256];
    const char *kind = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL;
    const wh__kind_t *k = NULL;
    for (size_t i = 0; kind != NULL && i < WH_ARRAY_SIZE(wh__kinds); i++)
        if (strcmp(wh__kinds[i].kind, kind) == 0)
            k = &wh__kinds[i];
    if (k == NULL) {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L, "%s: unknown kind %s (allowed: bot_reply, handoff, lead, csat, custom)",
                      fn, got);
    }
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) {
        wh_lua_describe(L, 2, got, sizeof(got));
        wh_lua_errorf(L, "%s: fields must be a table, got %s", fn, got);
    }
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *fields;
    if (lua_istable(L, 2)) {
        fields = wh_lua_to_json_or_raise(L, 2, "fields", 4096);
        if (json_is_array(fields) && json_array_size(fields) > 0) {
            json_decref(fields);
            wh_lua_errorf(L, "%s: fields must be a table with string keys, not a list", fn);
        }
        if (json_is_array(fields)) { /* {} from JSON: treat as no fields */
            json_decref(fields);
            fields = json_object();
        }
    } else {
        fields = json_object();
    }
    if (fields == NULL)
        return luaL_error(L, "not enough memory");
    if (wh__check_fact(k, fields, msg, sizeof(msg)) != NULL) {
        json_decref(fields);
        wh_lua_errorf(L, "%s('%s'): %s", fn, k->kind, msg);
    }
    if (wh_outcome_add_fact(out, k->kind, fields, msg, sizeof(msg)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", fn, msg);
    return 0;
}

static const wh_lua_fn_t wh__state_fns[] = {
    {"get", wh__state_get, WH_PHASES_HANDLER},
    {"set", wh__state_set, WH_PHASES_HANDLER},
    {NULL, NULL, 0},
};

static const wh_lua_fn_t wh__record_fns[] = {
    {"record", wh__record, WH_PHASES_HANDLER},
    {NULL, NULL, 0},
};

void wh_lua_api_state_register(lua_State *L, int mod)
{
    lua_newtable(L);
    wh_lua_api_register(L, -1, "wahook.state", wh__state_fns);
    lua_setfield(L, mod, "state");
    wh_lua_api_register(L, mod, "wahook", wh__record_fns);
}
