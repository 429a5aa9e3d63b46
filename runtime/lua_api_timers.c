/* Host API area "timers": wahook.after and wahook.cancel schedule and cancel durable timers of
 * the event's contact (committed with the event; a due timer calls the handlers with
 * ev.event == "timer"). */
#include <lauxlib.h>
#include <math.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"

#define WH__MAX_TIMER_SECONDS (30.0 * 24 * 3600)
#define WH__MAX_TIMER_NAME 64

static const char *wh__check_name(lua_State *L, int idx)
{
    size_t n;
    const char *name = wh_lua_check_string(L, idx, "the timer name", 1, WH__MAX_TIMER_NAME, &n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            wh_lua_errorf(L, "%s: the timer name must not contain control characters",
                          wh_lua_fname(L));
    return name;
}

/* wahook.after(seconds, name [, payload]) */
static int wh__after(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80], err[256];
    int isnum;
    double seconds = (double)lua_tonumberx(L, 1, &isnum);
    if (lua_type(L, 1) != LUA_TNUMBER || !isnum || !(seconds > 0) ||
        seconds > WH__MAX_TIMER_SECONDS) {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L, "%s: seconds must be a number > 0 and at most %.0f (30 days), got %s", fn,
                      WH__MAX_TIMER_SECONDS, got);
    }
    const char *name = wh__check_name(L, 2);
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) {
        wh_lua_describe(L, 3, got, sizeof(got));
        wh_lua_errorf(L, "%s: payload must be a table or nil, got %s", fn, got);
    }
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *payload = NULL;
    if (lua_istable(L, 3)) {
        payload = wh_lua_to_json_or_raise(L, 3, "payload", out->limits.max_payload_bytes);
        if (!json_is_object(payload)) {
            json_decref(payload);
            wh_lua_errorf(L, "%s: payload must be a table with string keys, not a list", fn);
        }
    }
    int64_t ms = (int64_t)llround(seconds * 1000.0);
    int64_t due = wh_lua_now_ms(L) + (ms > 0 ? ms : 1);
    if (wh_outcome_set_timer(out, name, due, payload, err, sizeof(err)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", fn, err);
    return 0;
}

/* wahook.cancel(name) */
static int wh__cancel(lua_State *L)
{
    char err[256];
    const char *name = wh__check_name(L, 1);
    wh_outcome_t *out = wh_lua_outcome(L);
    if (wh_outcome_cancel_timer(out, name, err, sizeof(err)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", wh_lua_fname(L), err);
    return 0;
}

static const wh_lua_fn_t wh__timers[] = {
    {"after", wh__after, WH_PHASES_HANDLER},
    {"cancel", wh__cancel, WH_PHASES_HANDLER},
    {NULL, NULL, 0},
};

void wh_lua_api_timers_register(lua_State *L, int mod)
{
    wh_lua_api_register(L, mod, "wahook", wh__timers);
}
