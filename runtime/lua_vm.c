/* The sandboxed Lua VM: capped allocator, deadline hook, allow-listed environment, scripts-only
 * require, the protected call gateway and handler dispatch. */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/lua_api.h"
#include "wahook/lua_vm.h"
#include "wahook/luaconv.h"

int luaopen_cjson_safe(lua_State *L); /* in liblua5.4-cjson, not declared by its header */

/* Instructions between two deadline checks: cheap enough to be invisible, short enough that a
 * runaway loop is noticed within microseconds of its deadline. */
#define WH__HOOK_COUNT 1000
/* Largest script file require will read. */
#define WH__MAX_SCRIPT_BYTES ((size_t)8 * 1024 * 1024)
#define WH__MAX_MODULE_NAME 200
/* Refused growths (each followed by an emergency collection) one call may survive. */
#define WH__MAX_REFUSALS 8

struct wh_lua_vm {
    lua_State *L;
    char *scripts_dir; /* realpath, no trailing slash */
    int (*source_fn)(void *ud, const char *rel, const char **data, size_t *len);
    void *source_ud;
    size_t mem_limit, mem_used, mem_peak;
    int deadline_ms;
    json_t *config;
    wh_lua_http_fn http_fn;
    void *http_ud;
    wh_lua_clock_fn clock_fn;
    void *clock_ud;

    int phase;
    wh_outcome_t *out;

    int depth;       /* nesting of gateway calls; 0 outside any */
    int capped;      /* the memory cap applies (inside a call) */
    int oom_pending; /* the last growth was refused; a second refusal in a row is a kill */
    int refusals;    /* growths refused during this call */
    int killed;      /* 0, WH_ETIMEDOUT or WH_ENOMEM: raise on every instruction */
    double deadline; /* monotonic seconds */
    char kill_where[128];

    int loaded_main;
    wh_strlist_t handlers; /* names in main.lua's table whose values are functions */

    /* Set only while wh_lua_vm_resume runs: the coroutine it resumes, where a yielding
     * wahook.http.request leaves its request, and the answer to the previous one. */
    lua_State *run_co;
    wh_lua_http_yield_t *yield_slot;
    wh_lua_http_result_t *resume_result;
};

/* Unique light-userdata registry keys. */
static const char wh__timeout_msg_key = 't';
static const char wh__oom_msg_key = 'o';
static const char wh__loaded_key = 'l';
static const char wh__preload_key = 'p';
static const char wh__loading_key = 'g';
static const char wh__handlers_key = 'h';

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- context accessors for the host areas ---- */

wh_lua_vm_t *wh_lua_vm_of(lua_State *L)
{
    return *(wh_lua_vm_t **)lua_getextraspace(L);
}

int wh_lua_phase(lua_State *L)
{
    return wh_lua_vm_of(L)->phase;
}

wh_outcome_t *wh_lua_outcome(lua_State *L)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    if (vm->out == NULL)
        wh_lua_errorf(L, "%s is not available here", wh_lua_fname(L));
    return vm->out;
}

int64_t wh_lua_now_ms(lua_State *L)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    return vm->clock_fn != NULL ? vm->clock_fn(vm->clock_ud) : wh_now_ms();
}

const json_t *wh_lua_vm_config(const wh_lua_vm_t *vm)
{
    return vm->config;
}

int wh_lua_vm_http(wh_lua_vm_t *vm, const wh_lua_http_req_t *req, wh_lua_http_resp_t *resp,
                   char *err, size_t errlen)
{
    if (vm->http_fn == NULL)
        return WH_ENOTFOUND;
    double t0 = wh_mono_now();
    int rc = vm->http_fn(vm->http_ud, req, resp, err, errlen);
    /* Network time is the deliverer's business (it has its own timeouts), not the script's. */
    vm->deadline += wh_mono_now() - t0;
    return rc;
}

const char *wh_lua_phase_name(int phase)
{
    switch (phase) {
    case WH_PHASE_LOAD: return "script loading";
    case WH_PHASE_HANDLER: return "event handler";
    case WH_PHASE_DELIVER: return "deliverer";
    case WH_PHASE_TRY: return "event handler (dry run)";
    default: return "unknown phase";
    }
}

void wh_lua_check_phase(lua_State *L, unsigned mask, const char *name)
{
    int phase = wh_lua_phase(L);
    if (mask & WH_PHASE_BIT(phase))
        return;
    const char *where = phase == WH_PHASE_LOAD       ? "while scripts load"
                        : phase == WH_PHASE_DELIVER ? "from the deliverer"
                                                    : "from an event handler";
    char allowed[128] = "";
    static const int order[] = {WH_PHASE_HANDLER, WH_PHASE_DELIVER, WH_PHASE_LOAD};
    for (size_t i = 0; i < WH_ARRAY_SIZE(order); i++) {
        if (!(mask & WH_PHASE_BIT(order[i])) &&
            !(order[i] == WH_PHASE_HANDLER && (mask & WH_PHASE_BIT(WH_PHASE_TRY))))
            continue;
        size_t n = strlen(allowed);
        snprintf(allowed + n, sizeof(allowed) - n, "%s%s", n > 0 ? ", " : "",
                 wh_lua_phase_name(order[i]));
    }
    wh_lua_errorf(L, "%s cannot be called %s (allowed in: %s)", name, where,
                  allowed[0] != '\0' ? allowed : "nowhere");
}

/* ---- allocator and deadline ---- */

static void *wh__alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    wh_lua_vm_t *vm = ud;
    size_t old = ptr != NULL ? osize : 0; /* for a new block osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        vm->mem_used -= old;
        return NULL;
    }
    if (nsize > old && vm->capped) {
        size_t grow = nsize - old;
        if (vm->killed)
            return NULL; /* a killed script must not build anything while it unwinds */
        if (grow > vm->mem_limit || vm->mem_used > vm->mem_limit - grow) {
            /* Lua answers a refusal with an emergency collection and asks once more; only a
             * second refusal in a row means the live data really does not fit. A script whose
             * live data hovers at the cap would make every allocation pay a full collection,
             * so a few refusals per call are all it gets. */
            if (vm->oom_pending || ++vm->refusals > WH__MAX_REFUSALS)
                vm->killed = WH_ENOMEM;
            vm->oom_pending = 1;
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
    if (p == NULL)
        return nsize <= old ? ptr : NULL; /* Lua relies on shrinking never failing */
    if (nsize > old)
        vm->oom_pending = 0;
    vm->mem_used = vm->mem_used - old + nsize;
    if (vm->mem_used > vm->mem_peak)
        vm->mem_peak = vm->mem_used;
    return p;
}

static void wh__hook(lua_State *L, lua_Debug *ar)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    if (!vm->killed && vm->depth > 0 && wh_mono_now() > vm->deadline)
        vm->killed = WH_ETIMEDOUT;
    if (vm->killed) {
        if (vm->kill_where[0] == '\0' && lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
            snprintf(vm->kill_where, sizeof(vm->kill_where), "%s:%d", ar->short_src,
                     ar->currentline);
        /* From now on raise on every instruction of this thread, so no pcall can go on. */
        if (lua_gethookcount(L) != 1)
            lua_sethook(L, wh__hook, LUA_MASKCOUNT, 1);
        /* The message is preallocated: raising needs no memory. */
        lua_rawgetp(L, LUA_REGISTRYINDEX,
                    vm->killed == WH_ETIMEDOUT ? (const void *)&wh__timeout_msg_key
                                               : (const void *)&wh__oom_msg_key);
        lua_error(L);
    }
    /* A coroutine created while killed inherited the fast count; restore the normal one. */
    if (lua_gethookcount(L) != WH__HOOK_COUNT)
        lua_sethook(L, wh__hook, LUA_MASKCOUNT, WH__HOOK_COUNT);
}

/* ---- the gateway ---- */

static int wh__msgh(lua_State *L)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    if (vm->killed)
        return 1; /* the kill is reported by the gateway; building a traceback needs memory */
    const char *msg = NULL;
    if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER)
        msg = lua_tostring(L, 1);
    else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
        msg = lua_tostring(L, -1);
    else
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Enters a call; an outermost one gets budget_s seconds of run time. */
static void wh__enter_for(wh_lua_vm_t *vm, double budget_s)
{
    if (vm->depth++ > 0)
        return;
    vm->killed = 0;
    vm->oom_pending = 0;
    vm->refusals = 0;
    vm->kill_where[0] = '\0';
    vm->deadline = wh_mono_now() + budget_s;
    vm->capped = 1;
    lua_sethook(vm->L, wh__hook, LUA_MASKCOUNT, WH__HOOK_COUNT);
    /* Modules marked "being loaded" by a failed earlier call must not look circular now.
     * Clearing an existing key allocates nothing, so this cannot raise. */
    if (lua_rawgetp(vm->L, LUA_REGISTRYINDEX, &wh__loading_key) != LUA_TNIL) {
        lua_pushnil(vm->L);
        lua_rawsetp(vm->L, LUA_REGISTRYINDEX, &wh__loading_key);
    }
    lua_pop(vm->L, 1);
}

static void wh__enter(wh_lua_vm_t *vm)
{
    wh__enter_for(vm, vm->deadline_ms / 1000.0);
}

static void wh__leave(wh_lua_vm_t *vm)
{
    if (--vm->depth > 0)
        return;
    vm->capped = 0;
    vm->killed = 0;
    vm->oom_pending = 0;
}

int wh_lua_vm_call(wh_lua_vm_t *vm, int nargs, int nresults, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    int fidx = lua_gettop(L) - nargs;
    if (fidx < 1 || !lua_checkstack(L, 2)) {
        wh__seterr(err, errlen, "wh_lua_vm_call: no function on the stack");
        return WH_EINVAL;
    }
    lua_pushcfunction(L, wh__msgh);
    lua_insert(L, fidx);
    wh__enter(vm);
    int st = lua_pcall(L, nargs, nresults, fidx);
    int killed = vm->killed, oom_pending = vm->oom_pending;
    char where[sizeof(vm->kill_where)];
    memcpy(where, vm->kill_where, sizeof(where));
    wh__leave(vm);
    /* A kill inside a coroutine or a pcall may leave too few instructions for the hook to
     * raise again before the function returns: the call has failed all the same. */
    if (st == LUA_OK && !killed) {
        lua_remove(L, fidx);
        return WH_OK;
    }

    int rc;
    if (killed == WH_ETIMEDOUT) {
        rc = WH_ETIMEDOUT;
        wh__seterr(err, errlen, "script timed out after %d ms%s%s%s", vm->deadline_ms,
                   where[0] ? " (at " : "", where, where[0] ? ")" : "");
    } else if (killed == WH_ENOMEM || st == LUA_ERRMEM) {
        rc = WH_ENOMEM;
        if (killed == WH_ENOMEM || oom_pending)
            wh__seterr(err, errlen, "script exceeded its memory limit of %zu bytes%s%s%s",
                       vm->mem_limit, where[0] ? " (at " : "", where, where[0] ? ")" : "");
        else
            wh__seterr(err, errlen, "out of memory");
    } else {
        rc = WH_ERR;
        if (lua_type(L, -1) == LUA_TSTRING)
            wh__seterr(err, errlen, "%s", lua_tostring(L, -1));
        else
            wh__seterr(err, errlen, "script error (%s)",
                       st == LUA_ERRERR ? "error in the error handler" : "no message");
    }
    lua_settop(L, fidx - 1);
    if (vm->depth == 0 && (killed || st == LUA_ERRMEM))
        lua_gc(L, LUA_GCCOLLECT, 0); /* give back what the killed script piled up */
    return rc;
}

/* ---- coroutines (yielding http) ---- */

void wh_lua_http_yield_clear(wh_lua_http_yield_t *y)
{
    if (y == NULL)
        return;
    free(y->path_buf);
    free(y->body_buf);
    json_decref(y->headers_buf);
    memset(y, 0, sizeof(*y));
}

wh_lua_http_yield_t *wh_lua_vm_yield_slot(wh_lua_vm_t *vm, lua_State **co)
{
    if (co != NULL)
        *co = vm->run_co;
    return vm->yield_slot;
}

wh_lua_http_result_t *wh_lua_vm_take_result(wh_lua_vm_t *vm)
{
    wh_lua_http_result_t *r = vm->resume_result;
    vm->resume_result = NULL;
    return r;
}

static void wh__result_free(wh_lua_http_result_t *r)
{
    if (r == NULL)
        return;
    free(r->resp.body);
    json_decref(r->resp.headers);
    r->resp.body = NULL;
    r->resp.headers = NULL;
}

/* The message of a failed coroutine plus its traceback. Arguments: the error object and the
 * coroutine (light userdata). Runs protected on the main thread, outside the cap. */
static int wh__co_errmsg_p(lua_State *L)
{
    lua_State *co = lua_touserdata(L, 2);
    const char *msg = NULL;
    switch (lua_type(L, 1)) {
    case LUA_TSTRING: msg = lua_tostring(L, 1); break;
    case LUA_TNUMBER: msg = luaL_tolstring(L, 1, NULL); break;
    case LUA_TTABLE:
        lua_pushliteral(L, "message");
        if (lua_rawget(L, 1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
            break;
        }
        /* fall through */
    default: msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1)); break;
    }
    luaL_traceback(L, co, msg, 0);
    return 1;
}

int wh_lua_vm_resume(wh_lua_vm_t *vm, lua_State *co, int nargs, wh_lua_http_result_t *result,
                     wh_lua_http_yield_t *y, double *used_s, int *yielded, int *nres, char *err,
                     size_t errlen)
{
    /* Fresh: status OK with the function and its arguments on the stack. Suspended: YIELD. */
    int ok = vm->depth == 0 && co != NULL && y != NULL && yielded != NULL && nres != NULL &&
             nargs >= 0;
    if (ok && lua_status(co) == LUA_OK)
        ok = lua_gettop(co) >= nargs + 1 && lua_type(co, -(nargs + 1)) == LUA_TFUNCTION;
    else if (ok)
        ok = lua_status(co) == LUA_YIELD;
    if (!ok) {
        wh__result_free(result);
        wh__seterr(err, errlen, "wh_lua_vm_resume: bad arguments or coroutine state");
        return WH_EINVAL;
    }
    *yielded = 0;
    *nres = 0;
    wh_lua_http_yield_clear(y);
    double used = used_s != NULL ? *used_s : 0;
    double budget = vm->deadline_ms / 1000.0 - used;
    if (budget <= 0) {
        wh__result_free(result);
        wh__seterr(err, errlen, "script timed out after %d ms", vm->deadline_ms);
        return WH_ETIMEDOUT;
    }
    vm->run_co = co;
    vm->yield_slot = y;
    vm->resume_result = result;
    wh__enter_for(vm, budget);
    double t0 = wh_mono_now();
    int st = lua_resume(co, vm->L, nargs, nres);
    double spent = wh_mono_now() - t0;
    int killed = vm->killed, oom_pending = vm->oom_pending;
    char where[sizeof(vm->kill_where)];
    memcpy(where, vm->kill_where, sizeof(where));
    wh__leave(vm);
    wh__result_free(wh_lua_vm_take_result(vm)); /* not taken: the script never asked for it */
    vm->run_co = NULL;
    vm->yield_slot = NULL;
    if (used_s != NULL)
        *used_s = used + spent;

    if (!killed && st == LUA_YIELD) {
        *yielded = 1;
        return WH_OK;
    }
    if (!killed && st == LUA_OK)
        return WH_OK;
    wh_lua_http_yield_clear(y); /* a request a killed script yielded is not to be sent */
    *nres = 0;
    if (killed == WH_ETIMEDOUT) {
        wh__seterr(err, errlen, "script timed out after %d ms%s%s%s", vm->deadline_ms,
                   where[0] ? " (at " : "", where, where[0] ? ")" : "");
        lua_gc(vm->L, LUA_GCCOLLECT, 0);
        return WH_ETIMEDOUT;
    }
    if (killed == WH_ENOMEM || st == LUA_ERRMEM) {
        if (killed == WH_ENOMEM || oom_pending)
            wh__seterr(err, errlen, "script exceeded its memory limit of %zu bytes%s%s%s",
                       vm->mem_limit, where[0] ? " (at " : "", where, where[0] ? ")" : "");
        else
            wh__seterr(err, errlen, "out of memory");
        lua_gc(vm->L, LUA_GCCOLLECT, 0);
        return WH_ENOMEM;
    }
    /* A plain error: the object stays on co; describe a copy of it from the main thread. */
    lua_State *L = vm->L;
    int top = lua_gettop(L);
    if (lua_gettop(co) > 0 && lua_checkstack(co, 1) && lua_checkstack(L, 4)) {
        lua_pushcfunction(L, wh__co_errmsg_p);
        lua_pushvalue(co, -1);
        lua_xmove(co, L, 1);
        lua_pushlightuserdata(L, co);
        if (lua_pcall(L, 2, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
            wh__seterr(err, errlen, "%s", lua_tostring(L, -1));
        else
            wh__seterr(err, errlen, "script error (no message)");
    } else {
        wh__seterr(err, errlen, "script error (no message)");
    }
    lua_settop(L, top);
    return WH_ERR;
}

void wh_lua_vm_close_thread(wh_lua_vm_t *vm, lua_State *co)
{
    if (co == NULL || vm->depth != 0)
        return;
    wh__enter(vm);
    lua_resetthread(co); /* protected: errors of __close handlers are dropped with the thread */
    wh__leave(vm);
    lua_settop(co, 0);
}

static int wh__push_json_p(lua_State *L)
{
    wh_luaconv_push(L, lua_touserdata(L, 1));
    return 1;
}

int wh_lua_vm_push_json(wh_lua_vm_t *vm, const json_t *j, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    if (!lua_checkstack(L, 3)) {
        wh__seterr(err, errlen, "out of Lua stack space");
        return WH_ENOMEM;
    }
    lua_pushcfunction(L, wh__push_json_p);
    lua_pushlightuserdata(L, (void *)j);
    int st = lua_pcall(L, 1, 1, 0);
    if (st == LUA_OK)
        return WH_OK;
    wh__seterr(err, errlen, "%s",
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "cannot convert JSON");
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? WH_ENOMEM : WH_EINVAL;
}

/* ---- sandbox ---- */

static int wh__load(lua_State *L)
{
    const char *mode = luaL_optstring(L, 3, "t");
    if (strcmp(mode, "t") != 0)
        return luaL_error(L, "load: binary chunks are not allowed (mode must be \"t\")");
    int n = lua_gettop(L);
    if (n < 3) {
        lua_settop(L, 3);
        n = 3;
    }
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

static int wh__collectgarbage(lua_State *L)
{
    static const char *const ok[] = {"collect", "count", "step", "isrunning", NULL};
    const char *opt = luaL_optstring(L, 1, "collect");
    for (size_t i = 0; ok[i] != NULL; i++) {
        if (strcmp(opt, ok[i]) == 0) {
            int n = lua_gettop(L);
            lua_pushvalue(L, lua_upvalueindex(1));
            lua_insert(L, 1);
            lua_call(L, n, LUA_MULTRET);
            return lua_gettop(L);
        }
    }
    return luaL_error(L, "collectgarbage(\"%s\") is not allowed in wahook scripts", opt);
}

/* Finalizers would run during collections outside any call, with no deadline and no cap. An
 * object is only marked for finalization when its metatable has __gc at setmetatable time, so
 * refusing such metatables here disables script finalizers entirely. */
static int wh__setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not allowed in wahook scripts");
        lua_pop(L, 1);
    }
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

static int wh__print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    wh_lua_log(L, WH_LOG_INFO, lua_tostring(L, -1), 0);
    return 0;
}

/* lua-cjson writes a process-wide locale setting when it opens; serialise those writes. */
static pthread_mutex_t wh__cjson_lock = PTHREAD_MUTEX_INITIALIZER;

static int wh__open_cjson_variant(lua_State *L, lua_CFunction open)
{
    lua_pushcfunction(L, open);
    pthread_mutex_lock(&wh__cjson_lock);
    int st = lua_pcall(L, 0, 1, 0);
    pthread_mutex_unlock(&wh__cjson_lock);
    if (st != LUA_OK)
        return lua_error(L);
    /* cjson's encode buffer lives outside the Lua allocator; do not keep it between calls. */
    if (lua_getfield(L, -1, "encode_keep_buffer") == LUA_TFUNCTION) {
        lua_pushboolean(L, 0);
        lua_call(L, 1, 0);
    } else {
        lua_pop(L, 1);
    }
    return 1;
}

static int wh__open_cjson(lua_State *L)
{
    return wh__open_cjson_variant(L, luaopen_cjson);
}

static int wh__open_cjson_safe(lua_State *L)
{
    return wh__open_cjson_variant(L, luaopen_cjson_safe);
}

static int wh__valid_module_name(const char *name, size_t len)
{
    if (len == 0 || len > WH__MAX_MODULE_NAME)
        return 0;
    int seglen = 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (c == '.') {
            if (seglen == 0)
                return 0;
            seglen = 0;
        } else if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c >= '0' && c <= '9')) {
            seglen++;
        } else {
            return 0;
        }
    }
    return seglen > 0;
}

/* Pushes the registry table under key, creating it when absent. */
static void wh__registry_table(lua_State *L, const void *key)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, key);
    }
}

static int wh__require(lua_State *L)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    if (!wh__valid_module_name(name, len))
        return wh_lua_errorf(L,
                             "require: invalid module name \"%.80s\" (use letters, digits and _ "
                             "separated by dots, e.g. \"bot.flow\" for scripts/bot/flow.lua)",
                             name);
    wh__registry_table(L, &wh__loaded_key); /* 2 */
    if (lua_getfield(L, 2, name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);

    wh__registry_table(L, &wh__preload_key); /* 3 */
    if (lua_getfield(L, 3, name) == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, 2, name);
        return 1;
    }
    lua_pop(L, 1);

    wh__registry_table(L, &wh__loading_key); /* 4 */
    if (lua_getfield(L, 4, name) != LUA_TNIL)
        return wh_lua_errorf(L,
                             "require: module \"%s\" is already being loaded (a circular "
                             "require, or it failed earlier in this call)",
                             name);
    lua_pop(L, 1);

    /* "a.b" → "a/b.lua", relative to the scripts directory. */
    char rel[WH__MAX_MODULE_NAME + 8], path[PATH_MAX], real[PATH_MAX];
    snprintf(rel, sizeof(rel), "%s.lua", name);
    for (char *p = rel; *p != '\0'; p++)
        if (*p == '.' && strcmp(p, ".lua") != 0)
            *p = '/';
    if (vm->source_fn != NULL) {
        /* A snapshot of the scripts: the bytes a reload hashed and checked. */
        const char *data = NULL;
        size_t dlen = 0;
        if (vm->source_fn(vm->source_ud, rel, &data, &dlen) != WH_OK)
            return wh_lua_errorf(L,
                                 "require: module \"%s\" not found (no %s in the scripts "
                                 "directory)",
                                 name, rel);
        char chunk[sizeof(rel) + 1];
        snprintf(chunk, sizeof(chunk), "@%s", rel);
        if (luaL_loadbufferx(L, data, dlen, chunk, "t") != LUA_OK) /* 5 */
            return lua_error(L);
        lua_pushnil(L); /* 6: keeps the stack shape of the disk path below */
        lua_insert(L, 5);
        goto loaded;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", vm->scripts_dir, rel) >= sizeof(path))
        return wh_lua_errorf(L, "require: module path for \"%s\" is too long", name);
    if (realpath(path, real) == NULL)
        return wh_lua_errorf(L, "require: module \"%s\" not found (no %s in the scripts directory)",
                             name, rel);
    size_t dlen = strlen(vm->scripts_dir);
    if (strncmp(real, vm->scripts_dir, dlen) != 0 || real[dlen] != '/')
        return wh_lua_errorf(L, "require: module \"%s\" resolves outside the scripts directory",
                             name);
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode))
        return wh_lua_errorf(L, "require: %s is not a regular file", rel);
    if ((size_t)st.st_size > WH__MAX_SCRIPT_BYTES)
        return wh_lua_errorf(L, "require: %s is larger than %zu bytes", rel,
                             WH__MAX_SCRIPT_BYTES);

    /* Read into Lua-owned memory first, so an error raised later leaks nothing. */
    size_t size = (size_t)st.st_size;
    char *buf = lua_newuserdatauv(L, size > 0 ? size : 1, 0); /* 5 */
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    size_t got = 0;
    int read_err = fd < 0 ? errno : 0;
    while (fd >= 0 && got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            read_err = n < 0 ? errno : EIO;
            break;
        }
        got += (size_t)n;
    }
    if (fd >= 0)
        close(fd);
    if (read_err != 0)
        return wh_lua_errorf(L, "require: cannot read %s: %s", rel, strerror(read_err));

    char chunkname[sizeof(rel) + 1];
    snprintf(chunkname, sizeof(chunkname), "@%s", rel);
    if (luaL_loadbufferx(L, buf, got, chunkname, "t") != LUA_OK) /* 6 */
        return lua_error(L); /* "bot/flow.lua:3: unexpected symbol near …" */

loaded:
    lua_pushboolean(L, 1);
    lua_setfield(L, 4, name);
    lua_pushvalue(L, 1);
    lua_pushstring(L, rel);
    lua_call(L, 2, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    lua_pushnil(L);
    lua_setfield(L, 4, name);
    return 1;
}

static int wh__setup(lua_State *L)
{
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {
        {LUA_GNAME, luaopen_base},           {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},     {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},     {LUA_COLIBNAME, luaopen_coroutine},
        {LUA_OSLIBNAME, luaopen_os},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(libs); i++) {
        luaL_requiref(L, libs[i].name, libs[i].open, 1);
        lua_pop(L, 1);
    }
    lua_pushglobaltable(L);
    int g = lua_gettop(L);

    /* Base functions: no file access, text-only load, a restricted collectgarbage. */
    lua_pushnil(L);
    lua_setfield(L, g, "dofile");
    lua_pushnil(L);
    lua_setfield(L, g, "loadfile");
    lua_getfield(L, g, "load");
    lua_pushcclosure(L, wh__load, 1);
    lua_setfield(L, g, "load");
    lua_getfield(L, g, "collectgarbage");
    lua_pushcclosure(L, wh__collectgarbage, 1);
    lua_setfield(L, g, "collectgarbage");
    lua_getfield(L, g, "setmetatable");
    lua_pushcclosure(L, wh__setmetatable, 1);
    lua_setfield(L, g, "setmetatable");
    lua_pushcfunction(L, wh__print);
    lua_setfield(L, g, "print");
    lua_pushcfunction(L, wh__require);
    lua_setfield(L, g, "require");

    /* string.dump would hand out binary chunks. */
    lua_getfield(L, g, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    /* os keeps only time, date and clock. */
    lua_getfield(L, g, LUA_OSLIBNAME);
    lua_createtable(L, 0, 3);
    static const char *const os_keep[] = {"time", "date", "clock"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(os_keep); i++) {
        lua_getfield(L, -2, os_keep[i]);
        lua_setfield(L, -2, os_keep[i]);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, g, LUA_OSLIBNAME);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, LUA_OSLIBNAME);
    lua_pop(L, 3);

    /* require's cache starts with the standard libraries under their usual names. */
    wh__registry_table(L, &wh__loaded_key);
    static const char *const std[] = {LUA_GNAME,     LUA_STRLIBNAME,  LUA_TABLIBNAME,
                                      LUA_MATHLIBNAME, LUA_UTF8LIBNAME, LUA_COLIBNAME,
                                      LUA_OSLIBNAME};
    for (size_t i = 0; i < WH_ARRAY_SIZE(std); i++) {
        lua_getfield(L, g, std[i]);
        lua_setfield(L, -2, std[i]);
    }
    lua_pushcfunction(L, wh_lua_api_open);
    lua_call(L, 0, 1);
    lua_setfield(L, -2, "wahook");
    lua_pop(L, 1);

    wh__registry_table(L, &wh__preload_key);
    lua_pushcfunction(L, wh__open_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, wh__open_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);

    /* Preallocated kill messages: raising them needs no memory. */
    lua_pushliteral(L, "script timed out");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &wh__timeout_msg_key);
    lua_pushliteral(L, "script exceeded its memory limit");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &wh__oom_msg_key);
    lua_pop(L, 1);
    return 0;
}

/* An error outside any protected call is a bug in the C caller; say what it was before Lua
 * aborts. */
static int wh__panic(lua_State *L)
{
    wh_log(WH_LOG_ERROR, "Lua error outside a protected call (a bug in the caller)", "{s:s}",
           "error", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    return 0;
}

wh_lua_vm_t *wh_lua_vm_new(const wh_lua_vm_opts_t *opts, char *err, size_t errlen)
{
    if (opts == NULL || opts->scripts_dir == NULL) {
        wh__seterr(err, errlen, "no scripts directory configured");
        return NULL;
    }
    wh_lua_vm_t *vm = calloc(1, sizeof(*vm));
    if (vm == NULL) {
        wh__seterr(err, errlen, "out of memory");
        return NULL;
    }
    vm->mem_limit = opts->mem_limit != 0 ? opts->mem_limit : WH_LUA_DEFAULT_MEM_LIMIT;
    vm->deadline_ms = opts->deadline_ms > 0 ? opts->deadline_ms : WH_LUA_DEFAULT_DEADLINE_MS;
    vm->http_fn = opts->http_fn;
    vm->http_ud = opts->http_ud;
    vm->clock_fn = opts->clock_fn;
    vm->clock_ud = opts->clock_ud;
    vm->source_fn = opts->source_fn;
    vm->source_ud = opts->source_ud;
    vm->phase = WH_PHASE_LOAD;

    char real[PATH_MAX];
    struct stat st;
    if (realpath(opts->scripts_dir, real) == NULL || stat(real, &st) != 0) {
        wh__seterr(err, errlen, "scripts directory %s: %s", opts->scripts_dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        wh__seterr(err, errlen, "scripts directory %s: not a directory", opts->scripts_dir);
        goto fail;
    }
    if ((vm->scripts_dir = strdup(real)) == NULL)
        goto nomem;
    if (opts->config_json != NULL &&
        (vm->config = json_deep_copy(opts->config_json)) == NULL)
        goto nomem;
    if ((vm->L = lua_newstate(wh__alloc, vm)) == NULL)
        goto nomem;
    *(wh_lua_vm_t **)lua_getextraspace(vm->L) = vm;
    lua_atpanic(vm->L, wh__panic);
    lua_sethook(vm->L, wh__hook, LUA_MASKCOUNT, WH__HOOK_COUNT);

    lua_pushcfunction(vm->L, wh__setup);
    if (lua_pcall(vm->L, 0, 0, 0) != LUA_OK) {
        wh__seterr(err, errlen, "cannot set up the Lua environment: %s",
                   lua_type(vm->L, -1) == LUA_TSTRING ? lua_tostring(vm->L, -1) : "error");
        goto fail;
    }
    return vm;
nomem:
    wh__seterr(err, errlen, "out of memory");
fail:
    wh_lua_vm_free(vm);
    return NULL;
}

void wh_lua_vm_free(wh_lua_vm_t *vm)
{
    if (vm == NULL)
        return;
    if (vm->L != NULL)
        lua_close(vm->L);
    wh_strlist_clear(&vm->handlers);
    json_decref(vm->config);
    free(vm->scripts_dir);
    free(vm);
}

lua_State *wh_lua_vm_state(wh_lua_vm_t *vm)
{
    return vm->L;
}

void wh_lua_vm_set_context(wh_lua_vm_t *vm, int phase, wh_outcome_t *out)
{
    if (phase < WH_PHASE_LOAD || phase > WH_PHASE_TRY)
        abort(); /* a programmer error: phases are the enum's values */
    vm->phase = phase;
    vm->out = out;
}

void wh_lua_vm_mem_stats(const wh_lua_vm_t *vm, size_t *used, size_t *peak)
{
    if (used != NULL)
        *used = vm->mem_used;
    if (peak != NULL)
        *peak = vm->mem_peak;
}

/* ---- main.lua and handlers ---- */

static int wh__load_main_p(lua_State *L)
{
    wh_lua_vm_t *vm = wh_lua_vm_of(L);
    lua_pushcfunction(L, wh__require);
    lua_pushliteral(L, "main");
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
        return luaL_error(L,
                          "main.lua must return a table of handlers keyed by event name, not "
                          "%s",
                          lua_isboolean(L, -1) ? "nothing" : luaL_typename(L, -1));
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "main.lua: handler keys must be event names (strings), found a "
                                 "%s key",
                              luaL_typename(L, -2));
        const char *k = lua_tostring(L, -2);
        if (!lua_isfunction(L, -1))
            return luaL_error(L, "main.lua: handler \"%s\" is a %s, not a function", k,
                              luaL_typename(L, -1));
        if (wh_strlist_push(&vm->handlers, k, strlen(k)) != WH_OK)
            return luaL_error(L, "out of memory");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, t);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &wh__handlers_key);
    return 0;
}

int wh_lua_vm_load_main(wh_lua_vm_t *vm, char *err, size_t errlen)
{
    wh_strlist_clear(&vm->handlers);
    vm->loaded_main = 0;
    int phase = vm->phase;
    wh_outcome_t *out = vm->out;
    wh_lua_vm_set_context(vm, WH_PHASE_LOAD, NULL);
    lua_pushcfunction(vm->L, wh__load_main_p);
    int rc = wh_lua_vm_call(vm, 0, 0, err, errlen);
    wh_lua_vm_set_context(vm, phase, out);
    if (rc != WH_OK) {
        wh_strlist_clear(&vm->handlers);
        return rc;
    }
    vm->loaded_main = 1;
    return WH_OK;
}

int wh_lua_vm_has_handler(const wh_lua_vm_t *vm, const char *event_name)
{
    for (size_t i = 0; i < vm->handlers.n; i++)
        if (strcmp(vm->handlers.v[i], event_name) == 0 || strcmp(vm->handlers.v[i], "*") == 0)
            return 1;
    return 0;
}

typedef struct wh__run {
    const char *event_name;
    json_t *ev;
    int found;
} wh__run_t;

static int wh__run_p(lua_State *L)
{
    wh__run_t *r = lua_touserdata(L, 1);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &wh__handlers_key) != LUA_TTABLE)
        return luaL_error(L, "scripts are not loaded");
    if (lua_getfield(L, -1, r->event_name) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        if (lua_getfield(L, -1, "*") != LUA_TFUNCTION)
            return 0;
    }
    r->found = 1;
    wh_luaconv_push(L, r->ev);
    lua_call(L, 1, 0);
    return 0;
}

int wh_lua_vm_run_handler_in(wh_lua_vm_t *vm, int phase, const char *event_name, json_t *ev,
                             wh_outcome_t *out, char *err, size_t errlen)
{
    if ((phase != WH_PHASE_HANDLER && phase != WH_PHASE_TRY) || out == NULL ||
        event_name == NULL || ev == NULL) {
        wh__seterr(err, errlen, "wh_lua_vm_run_handler: bad arguments");
        return WH_EINVAL;
    }
    if (!vm->loaded_main) {
        wh__seterr(err, errlen, "scripts are not loaded");
        return WH_EINVAL;
    }
    wh__run_t r = {event_name, ev, 0};
    int saved_phase = vm->phase;
    wh_outcome_t *saved_out = vm->out;
    wh_lua_vm_set_context(vm, phase, out);
    lua_pushcfunction(vm->L, wh__run_p);
    lua_pushlightuserdata(vm->L, &r);
    int rc = wh_lua_vm_call(vm, 1, 0, err, errlen);
    wh_lua_vm_set_context(vm, saved_phase, saved_out);
    if (rc != WH_OK) {
        wh_outcome_reset(out);
        return rc;
    }
    if (!r.found) {
        wh__seterr(err, errlen, "no handler for %s", event_name);
        return WH_ENOTFOUND;
    }
    return WH_OK;
}

int wh_lua_vm_run_handler(wh_lua_vm_t *vm, const char *event_name, json_t *ev, wh_outcome_t *out,
                          char *err, size_t errlen)
{
    return wh_lua_vm_run_handler_in(vm, WH_PHASE_HANDLER, event_name, ev, out, err, errlen);
}
