/* CRM delivery runs: a mapping module's deliver (or deliver_batch) as a coroutine of a
 * DELIVER-phase VM whose wahook.http.request calls are handed to the caller one at a time. */
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/crm_runner.h"
#include "wahook/luaconv.h"

/* Largest ctx.progress / result kept, as compact JSON (an outbox column, not a data store). */
#define WH__MAX_PROGRESS ((size_t)64 * 1024)
#define WH__MAX_RESULT ((size_t)16 * 1024)
#define WH__MAX_MESSAGE 4096

enum { WH__CREATED = 0, WH__WAIT_HTTP = 1, WH__FINISHED = 2 };

struct wh_crm_run {
    wh_lua_vm_t *vm;
    lua_State *co;
    int co_ref, ctx_ref;
    int nargs; /* arguments of the coroutine's entry function */
    int state;
    int batch;
    char *module, *op, *instance, *contact;
    json_t *fields; /* the fields object, or the items array of a batch */
    json_t *progress_in;

    wh_lua_http_yield_t y;
    double used_s;
    int requests;
    int last_status, last_transport;

    char *progress; /* compact JSON of ctx.progress after the last step */
    char *result;
    wh_crm_class_t fail_class;
    char message[WH__MAX_MESSAGE];
    long long retry_after_ms;
};

/* deliver_batch for modules that have none: the items one after the other, each with its own
 * progress at ctx.progress.items[i]; ctx.progress.done counts the finished ones, which a later
 * attempt of the same batch skips. */
static const char wh__batch_driver[] =
    "local deliver, items, ctx = ...\n"
    "local p = ctx.progress\n"
    "if type(p) ~= 'table' then p = {}; ctx.progress = p end\n"
    "if type(p.items) ~= 'table' then p.items = {} end\n"
    "local done = math.tointeger(p.done) or 0\n"
    "for i = done + 1, #items do\n"
    "  local item = items[i]\n"
    "  local sub = p.items[i]\n"
    "  if type(sub) ~= 'table' then sub = {}; p.items[i] = sub end\n"
    "  local c = {progress = sub, instance = ctx.instance, contact = ctx.contact,\n"
    "             target = ctx.target}\n"
    "  deliver(item.op, item.fields, c)\n"
    "  p.items[i] = c.progress\n"
    "  p.done = i\n"
    "end\n";

static void wh__msg(wh_crm_run_t *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wh__msg(wh_crm_run_t *run, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(run->message, sizeof(run->message), fmt, ap);
    va_end(ap);
}

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

/* Parses text as JSON of the wanted type (object or array); NULL/"" gives an empty one. */
static json_t *wh__parse(const char *text, int want_array, const char *what, char *err,
                         size_t errlen)
{
    if (text == NULL || text[0] == '\0')
        return want_array ? json_array() : json_object();
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    if (j == NULL) {
        wh__seterr(err, errlen, "%s is not valid JSON: %s", what, je.text);
        return NULL;
    }
    if (json_is_null(j) && !want_array) {
        json_decref(j);
        return json_object();
    }
    if (want_array ? !json_is_array(j) : !json_is_object(j)) {
        wh__seterr(err, errlen, "%s must be a JSON %s", what, want_array ? "array" : "object");
        json_decref(j);
        return NULL;
    }
    return j;
}

static int wh__start(wh_lua_vm_t *vm, const char *module_name, const char *op, json_t *fields,
                     const char *progress_json, const char *instance, const char *contact_key,
                     int batch, wh_crm_run_t **out, char *err, size_t errlen)
{
    wh_crm_run_t *run = NULL;
    json_t *progress = NULL;
    if (vm == NULL || module_name == NULL || module_name[0] == '\0' || instance == NULL ||
        out == NULL || fields == NULL) {
        wh__seterr(err, errlen, "wh_crm_run_start: missing vm, module, instance or fields");
        goto fail_inval;
    }
    if ((progress = wh__parse(progress_json, 0, "progress", err, errlen)) == NULL)
        goto fail_inval;
    if ((run = calloc(1, sizeof(*run))) == NULL)
        goto nomem;
    run->vm = vm;
    run->co_ref = run->ctx_ref = LUA_NOREF;
    run->batch = batch;
    run->fields = fields;
    run->progress_in = progress;
    fields = NULL;
    progress = NULL;
    run->module = strdup(module_name);
    run->op = strdup(op != NULL ? op : "");
    run->instance = strdup(instance);
    run->contact = contact_key != NULL && contact_key[0] != '\0' ? strdup(contact_key) : NULL;
    run->progress = strdup("{}");
    if (run->module == NULL || run->op == NULL || run->instance == NULL || run->progress == NULL ||
        (contact_key != NULL && contact_key[0] != '\0' && run->contact == NULL))
        goto nomem;
    *out = run;
    return WH_OK;
nomem:
    wh__seterr(err, errlen, "out of memory");
    json_decref(fields);
    json_decref(progress);
    wh_crm_run_free(run);
    return WH_ENOMEM;
fail_inval:
    json_decref(fields);
    json_decref(progress);
    return WH_EINVAL;
}

int wh_crm_run_start(wh_lua_vm_t *vm, const char *module_name, const char *op,
                     const char *fields_json, const char *progress_json, const char *instance,
                     const char *contact_key, wh_crm_run_t **out, char *err, size_t errlen)
{
    json_t *fields = wh__parse(fields_json, 0, "fields", err, errlen);
    if (fields == NULL)
        return WH_EINVAL;
    return wh__start(vm, module_name, op, fields, progress_json, instance, contact_key, 0, out,
                     err, errlen);
}

int wh_crm_run_start_batch(wh_lua_vm_t *vm, const char *module_name, const char *items_json,
                           const char *progress_json, const char *instance,
                           const char *contact_key, wh_crm_run_t **out, char *err, size_t errlen)
{
    json_t *items = wh__parse(items_json, 1, "items", err, errlen);
    if (items == NULL)
        return WH_EINVAL;
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        json_t *f = json_object_get(it, "fields");
        if (!json_is_object(it) || !json_is_string(json_object_get(it, "op")) ||
            (f != NULL && !json_is_object(f))) {
            wh__seterr(err, errlen, "items[%zu] must be an object {\"op\": \"…\", \"fields\": {…}}",
                       i + 1);
            json_decref(items);
            return WH_EINVAL;
        }
    }
    return wh__start(vm, module_name, "batch", items, progress_json, instance, contact_key, 1, out,
                     err, errlen);
}

/* Requires the module and prepares the coroutine: [entry, args…] on a new thread. Runs through
 * the VM's gateway (deadline, cap, traceback). */
static int wh__setup_p(lua_State *L)
{
    wh_crm_run_t *run = lua_touserdata(L, 1);
    lua_settop(L, 0);
    if (lua_getglobal(L, "require") != LUA_TFUNCTION)
        return luaL_error(L, "require is not available");
    lua_pushstring(L, run->module);
    lua_call(L, 1, 1); /* 1: the module */
    if (!lua_istable(L, 1))
        return luaL_error(L, "CRM module \"%s\" must return a table with a deliver function",
                          run->module);
    int nargs;
    if (run->batch && lua_getfield(L, 1, "deliver_batch") == LUA_TFUNCTION) {
        nargs = 2; /* deliver_batch(items, ctx) */
    } else {
        if (run->batch) {
            lua_pop(L, 1);
            if (luaL_loadbufferx(L, wh__batch_driver, sizeof(wh__batch_driver) - 1,
                                 "=crm_runner (batch)", "t") != LUA_OK)
                return lua_error(L);
        }
        if (lua_getfield(L, 1, "deliver") != LUA_TFUNCTION)
            return luaL_error(L, "CRM module \"%s\" has no deliver function", run->module);
        nargs = 3; /* driver(deliver, items, ctx) or deliver(op, fields, ctx) */
        if (!run->batch)
            lua_pushstring(L, run->op);
    }
    wh_luaconv_push(L, run->fields);

    lua_createtable(L, 0, 4); /* ctx */
    wh_luaconv_push(L, run->progress_in);
    lua_setfield(L, -2, "progress");
    lua_pushstring(L, run->instance);
    lua_setfield(L, -2, "instance");
    if (run->contact != NULL) {
        lua_pushstring(L, run->contact);
        lua_setfield(L, -2, "contact");
    }
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "crm");
    lua_setfield(L, -2, "name");
    lua_setfield(L, -2, "target");
    lua_pushvalue(L, -1);
    run->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    lua_State *co = lua_newthread(L);
    run->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    run->co = co;
    int n = lua_gettop(L) - 1; /* the entry and its arguments, above the module */
    if (n != nargs + 1 || !lua_checkstack(co, n + 2))
        return luaL_error(L, "cannot prepare the CRM run");
    lua_xmove(L, co, n);
    run->nargs = nargs;
    return 0;
}

typedef struct wh__json_out {
    json_t *j;
    int rc;
    char err[256];
    size_t max;
    const char *root;
} wh__json_out_t;

/* ctx.progress (read raw) → JSON. Arguments: the run, the output. */
static int wh__progress_p(lua_State *L)
{
    wh_crm_run_t *run = lua_touserdata(L, 1);
    wh__json_out_t *o = lua_touserdata(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
    lua_pushliteral(L, "progress");
    int t = lua_istable(L, -2) ? lua_rawget(L, -2) : LUA_TNIL;
    if (t == LUA_TNIL) {
        o->j = json_object();
        o->rc = o->j != NULL ? WH_OK : WH_ENOMEM;
        return 0;
    }
    if (t != LUA_TTABLE) {
        o->rc = WH_EINVAL;
        snprintf(o->err, sizeof(o->err), "ctx.progress must be a table, not a %s",
                 luaL_typename(L, -1));
        return 0;
    }
    o->rc = wh_luaconv_to_json(L, -1, "ctx.progress", o->max, &o->j, o->err, sizeof(o->err));
    if (o->rc == WH_OK && json_is_array(o->j) && json_array_size(o->j) == 0) {
        json_decref(o->j); /* an empty table that came from [] */
        o->j = json_object();
    }
    return 0;
}

/* A value moved from the coroutine → JSON. Arguments: the value, the output. */
static int wh__value_p(lua_State *L)
{
    wh__json_out_t *o = lua_touserdata(L, 2);
    o->rc = wh_luaconv_to_json(L, 1, o->root, o->max, &o->j, o->err, sizeof(o->err));
    return 0;
}

typedef struct wh__errinfo {
    int retry, permanent, misconfigured;
    double retry_after;
} wh__errinfo_t;

/* Reads the flags of a table error object, raw. Arguments: the object, the output. */
static int wh__errinfo_p(lua_State *L)
{
    wh__errinfo_t *e = lua_touserdata(L, 2);
    if (!lua_istable(L, 1))
        return 0;
    static const char *const flags[] = {"retry", "permanent", "misconfigured"};
    int *dst[] = {&e->retry, &e->permanent, &e->misconfigured};
    for (size_t i = 0; i < WH_ARRAY_SIZE(flags); i++) {
        lua_pushstring(L, flags[i]);
        lua_rawget(L, 1);
        *dst[i] = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "retry_after");
    if (lua_rawget(L, 1) == LUA_TNUMBER)
        e->retry_after = (double)lua_tonumber(L, -1);
    return 0;
}

/* Converts the value on top of co (popped) with the VM's gateway. Returns a new JSON value or
 * NULL (message in o->err). */
static json_t *wh__co_value_json(wh_crm_run_t *run, size_t max, const char *root,
                                 wh__json_out_t *o)
{
    lua_State *L = wh_lua_vm_state(run->vm);
    memset(o, 0, sizeof(*o));
    o->max = max;
    o->root = root;
    o->rc = WH_ERR;
    if (!lua_checkstack(L, 4)) {
        lua_pop(run->co, 1);
        return NULL;
    }
    lua_pushcfunction(L, wh__value_p);
    lua_xmove(run->co, L, 1);
    lua_pushlightuserdata(L, o);
    char err[256];
    if (wh_lua_vm_call(run->vm, 2, 0, err, sizeof(err)) != WH_OK) {
        snprintf(o->err, sizeof(o->err), "%s", err);
        json_decref(o->j);
        return NULL;
    }
    if (o->rc != WH_OK) {
        json_decref(o->j);
        return NULL;
    }
    return o->j;
}

/* Refreshes run->progress from ctx.progress. Returns 0, or an error with the reason in msg. */
static int wh__save_progress(wh_crm_run_t *run, char *msg, size_t msglen)
{
    lua_State *L = wh_lua_vm_state(run->vm);
    wh__json_out_t o;
    memset(&o, 0, sizeof(o));
    o.max = WH__MAX_PROGRESS;
    o.rc = WH_ERR;
    char err[256];
    if (!lua_checkstack(L, 3)) {
        snprintf(msg, msglen, "out of Lua stack space");
        return WH_ENOMEM;
    }
    lua_pushcfunction(L, wh__progress_p);
    lua_pushlightuserdata(L, run);
    lua_pushlightuserdata(L, &o);
    int rc = wh_lua_vm_call(run->vm, 2, 0, err, sizeof(err));
    if (rc != WH_OK || o.rc != WH_OK) {
        snprintf(msg, msglen, "ctx.progress cannot be saved: %s", rc != WH_OK ? err : o.err);
        json_decref(o.j);
        return rc != WH_OK ? rc : o.rc;
    }
    char *text = json_dumps(o.j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o.j);
    if (text == NULL) {
        snprintf(msg, msglen, "ctx.progress cannot be saved: out of memory");
        return WH_ENOMEM;
    }
    free(run->progress);
    run->progress = text;
    return WH_OK;
}

static int wh__fail(wh_crm_run_t *run, wh_crm_class_t cls)
{
    run->state = WH__FINISHED;
    run->fail_class = cls;
    wh_lua_http_yield_clear(&run->y);
    return WH_CRM_FAILED;
}

/* Classifies a failed resume (rc, message in run->message). */
static int wh__failed(wh_crm_run_t *run, int rc)
{
    if (rc == WH_ERR && run->co != NULL && lua_gettop(run->co) > 0) {
        lua_State *L = wh_lua_vm_state(run->vm);
        wh__errinfo_t e;
        memset(&e, 0, sizeof(e));
        if (lua_checkstack(L, 4)) {
            lua_pushcfunction(L, wh__errinfo_p);
            lua_xmove(run->co, L, 1);
            lua_pushlightuserdata(L, &e);
            char err[64];
            (void)wh_lua_vm_call(run->vm, 2, 0, err, sizeof(err));
        }
        if (e.retry_after > 0 && e.retry_after < 86400.0 * 365)
            run->retry_after_ms = (long long)(e.retry_after * 1000.0);
        if (e.misconfigured)
            return wh__fail(run, WH_CRM_MISCONFIGURED);
        if (e.permanent)
            return wh__fail(run, WH_CRM_PERMANENT);
        if (e.retry)
            return wh__fail(run, WH_CRM_RETRY);
        if (!run->last_transport && run->last_status != 0 &&
            (run->last_status < 200 || run->last_status >= 300))
            return wh__fail(run, WH_CRM_BY_STATUS);
        return wh__fail(run, WH_CRM_RETRY);
    }
    if (rc == WH_EINVAL)
        return wh__fail(run, WH_CRM_MISCONFIGURED);
    return wh__fail(run, WH_CRM_RETRY); /* timed out, out of memory */
}

/* One resume and what it ended in. */
static int wh__run(wh_crm_run_t *run, int nargs, wh_lua_http_result_t *result)
{
    wh_lua_vm_set_context(run->vm, WH_PHASE_DELIVER, NULL);
    int yielded = 0, nres = 0;
    run->message[0] = '\0';
    int rc = wh_lua_vm_resume(run->vm, run->co, nargs, result, &run->y, &run->used_s, &yielded,
                              &nres, run->message, sizeof(run->message));
    if (rc != WH_OK)
        return wh__failed(run, rc);

    char msg[512];
    if (yielded) {
        if (!run->y.pending) {
            wh__msg(run, "deliver yielded outside wahook.http.request (a bare coroutine.yield)");
            return wh__fail(run, WH_CRM_MISCONFIGURED);
        }
        if (wh__save_progress(run, msg, sizeof(msg)) != WH_OK) {
            wh__msg(run, "%s", msg);
            return wh__fail(run, WH_CRM_MISCONFIGURED);
        }
        run->requests++;
        run->state = WH__WAIT_HTTP;
        return WH_CRM_NEED_HTTP;
    }

    /* Returned: the action is complete whatever its progress or result look like. */
    run->state = WH__FINISHED;
    if (nres > 0) {
        lua_settop(run->co, lua_gettop(run->co) - nres + 1); /* keep the first result */
        wh__json_out_t o;
        json_t *j = lua_isnil(run->co, -1) ? (lua_pop(run->co, 1), NULL)
                                           : wh__co_value_json(run, WH__MAX_RESULT, "result", &o);
        if (j != NULL)
            run->result = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        json_decref(j);
    }
    (void)wh__save_progress(run, msg, sizeof(msg));
    return WH_CRM_DONE;
}

int wh_crm_run_step(wh_crm_run_t *run)
{
    if (run == NULL || run->state != WH__CREATED || run->co_ref != LUA_NOREF)
        return WH_EINVAL;
    lua_State *L = wh_lua_vm_state(run->vm);
    wh_lua_vm_set_context(run->vm, WH_PHASE_DELIVER, NULL);
    if (!lua_checkstack(L, 2)) {
        wh__msg(run, "out of Lua stack space");
        return wh__fail(run, WH_CRM_RETRY);
    }
    lua_pushcfunction(L, wh__setup_p);
    lua_pushlightuserdata(L, run);
    char err[WH__MAX_MESSAGE];
    int rc = wh_lua_vm_call(run->vm, 1, 0, err, sizeof(err));
    if (rc != WH_OK) {
        wh__msg(run, "%s", err);
        /* A module that does not load is the integration's configuration, not this action. */
        return wh__fail(run, rc == WH_ERR ? WH_CRM_MISCONFIGURED : WH_CRM_RETRY);
    }
    return wh__run(run, run->nargs, NULL);
}

int wh_crm_run_resume(wh_crm_run_t *run, wh_lua_http_resp_t *resp, const char *transport_err)
{
    wh_lua_http_result_t r;
    memset(&r, 0, sizeof(r));
    if (resp != NULL) {
        r.resp = *resp;
        resp->body = NULL;
        resp->headers = NULL;
    } else {
        r.err = transport_err != NULL ? transport_err : "request failed";
    }
    if (run == NULL || run->state != WH__WAIT_HTTP) {
        free(r.resp.body);
        json_decref(r.resp.headers);
        return WH_EINVAL;
    }
    run->last_status = resp != NULL ? r.resp.status : 0;
    run->last_transport = resp == NULL;
    /* The request was performed: its copies are no longer needed (resume clears them too). */
    wh_lua_http_yield_clear(&run->y);
    return wh__run(run, 0, &r);
}

const wh_lua_http_req_t *wh_crm_run_request(const wh_crm_run_t *run)
{
    return run != NULL && run->state == WH__WAIT_HTTP && run->y.pending ? &run->y.req : NULL;
}

const char *wh_crm_run_progress_json(const wh_crm_run_t *run)
{
    return run->progress;
}

const char *wh_crm_run_result_json(const wh_crm_run_t *run)
{
    return run->result;
}

wh_crm_class_t wh_crm_run_fail_class(const wh_crm_run_t *run)
{
    return run->fail_class;
}

const char *wh_crm_run_message(const wh_crm_run_t *run)
{
    return run->message;
}

int wh_crm_run_last_status(const wh_crm_run_t *run)
{
    return run->last_transport ? 0 : run->last_status;
}

long long wh_crm_run_retry_after_ms(const wh_crm_run_t *run)
{
    return run->retry_after_ms;
}

int wh_crm_run_requests(const wh_crm_run_t *run)
{
    return run->requests;
}

void wh_crm_run_free(wh_crm_run_t *run)
{
    if (run == NULL)
        return;
    lua_State *L = wh_lua_vm_state(run->vm);
    if (run->co != NULL)
        wh_lua_vm_close_thread(run->vm, run->co);
    if (run->co_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, run->co_ref);
    if (run->ctx_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, run->ctx_ref);
    wh_lua_http_yield_clear(&run->y);
    json_decref(run->fields);
    json_decref(run->progress_in);
    free(run->module);
    free(run->op);
    free(run->instance);
    free(run->contact);
    free(run->progress);
    free(run->result);
    free(run);
}
