/* One sandboxed Lua 5.4 VM: the allow-listed environment scripts see, require limited to the
 * scripts directory, a capped allocator, a wall deadline per call, and the single protected
 * gateway every C→Lua call goes through. One VM per processor thread: a VM is not thread-safe,
 * but may move between threads while no call is running. */
#ifndef WAHOOK_LUA_VM_H
#define WAHOOK_LUA_VM_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include "wahook/outcome.h"

typedef struct wh_lua_vm wh_lua_vm_t;

/* What the running Lua code is doing; host functions declare the phases they may run in. */
enum {
    WH_PHASE_LOAD = 0,    /* loading scripts (main.lua's top level, required modules) */
    WH_PHASE_HANDLER = 1, /* an event handler in a processor */
    WH_PHASE_DELIVER = 2, /* CRM mapping code run by a deliverer */
    WH_PHASE_TRY = 3,     /* `wahook try`: a dry run that behaves like HANDLER */
};
#define WH_PHASE_BIT(p) (1u << (p))
#define WH_PHASES_HANDLER (WH_PHASE_BIT(WH_PHASE_HANDLER) | WH_PHASE_BIT(WH_PHASE_TRY))
#define WH_PHASES_DELIVER WH_PHASE_BIT(WH_PHASE_DELIVER)
#define WH_PHASES_ANY                                                                          \
    (WH_PHASE_BIT(WH_PHASE_LOAD) | WH_PHASES_HANDLER | WH_PHASES_DELIVER)

#define WH_LUA_DEFAULT_MEM_LIMIT ((size_t)64 * 1024 * 1024)
#define WH_LUA_DEFAULT_DEADLINE_MS 1000

/* A request made by wahook.http.request (DELIVER phase only). */
typedef struct wh_lua_http_req {
    const char *method;    /* "GET", "POST", "PUT", "PATCH" or "DELETE" */
    const char *path;      /* starts with "/", relative to the delivery target's base URL; may
                              carry a query string; no "..", no whitespace or control bytes */
    const json_t *headers; /* object of header name → string value (validated: token names, no
                              CR/LF in values), never NULL */
    const char *body;      /* NULL when absent */
    size_t body_len;
    int timeout_ms; /* > 0 */
} wh_lua_http_req_t;

/* The answer. The callback fills it; the VM frees body (free) and headers (json_decref). */
typedef struct wh_lua_http_resp {
    int status;      /* HTTP status code */
    json_t *headers; /* object of lower-case name → string value, or NULL */
    char *body;      /* malloc'd, may be NULL */
    size_t body_len;
} wh_lua_http_resp_t;

/* Performs req. Returns 0 with resp filled when an HTTP answer arrived (any status), or a
 * negative WH_E* code with a short message in err (the script gets nil, message). Runs on the
 * VM's thread; time spent in it does not count against the script's deadline. */
typedef int (*wh_lua_http_fn)(void *ud, const wh_lua_http_req_t *req, wh_lua_http_resp_t *resp,
                              char *err, size_t errlen);

/* Wall clock for wahook.now / wahook.after, in epoch milliseconds. */
typedef int64_t (*wh_lua_clock_fn)(void *ud);

typedef struct wh_lua_vm_opts {
    const char *scripts_dir;   /* directory holding main.lua and the modules (required) */
    size_t mem_limit;          /* bytes the VM may hold during a call; 0: 64 MiB */
    int deadline_ms;           /* wall time per call; 0: 1000 */
    const json_t *config_json; /* the wahook.scripts.config section, or NULL; copied */
    wh_lua_http_fn http_fn;    /* wahook.http.request backend (deliverers), or NULL */
    void *http_ud;
    wh_lua_clock_fn clock_fn; /* NULL: wh_now_ms */
    void *clock_ud;
    /* Where require reads a module's text: NULL reads <scripts_dir>/<rel> from disk; otherwise
     * source_fn returns 0 with the bytes of rel ("bot/flow.lua", valid while the VM lives) or
     * WH_ENOTFOUND. A reload uses it so every VM runs exactly the bytes that were checked. */
    int (*source_fn)(void *ud, const char *rel, const char **data, size_t *len);
    void *source_ud;
} wh_lua_vm_opts_t;

/* Creates a VM with the allow-listed environment: base functions without dofile/loadfile (load
 * accepts text chunks only; collectgarbage only "collect", "count", "step", "isrunning"; print
 * logs through wh_log), string (without dump), table, math, utf8, coroutine, os.time/os.date/
 * os.clock, and a require that loads <scripts_dir>/a/b.lua for "a.b" as text and never leaves
 * scripts_dir (symlinks included); "cjson", "cjson.safe" and "wahook" are preloaded.
 * setmetatable refuses metatables with __gc: finalizers would run outside any call, with no
 * deadline. Nothing is loaded from scripts yet. Returns NULL with a message in err on failure. */
wh_lua_vm_t *wh_lua_vm_new(const wh_lua_vm_opts_t *opts, char *err, size_t errlen);

/* Closes the VM. NULL is fine. */
void wh_lua_vm_free(wh_lua_vm_t *vm);

/* The VM's main Lua state, for pushing a function and its arguments before wh_lua_vm_call and
 * reading results afterwards (wh_luaconv_to_json never raises; use wh_lua_vm_push_json, not
 * wh_luaconv_push, to push JSON). Outside a call the memory cap does not apply, so plain pushes
 * cannot fail for the cap; any Lua error raised outside a protected call aborts the process. */
lua_State *wh_lua_vm_state(wh_lua_vm_t *vm);

/* Sets the phase (a WH_PHASE_* value; anything else aborts) and the outcome host functions
 * append to, for later wh_lua_vm_call calls (initially WH_PHASE_LOAD and NULL). The outcome is
 * borrowed. The deliverer runs CRM mapping code with WH_PHASE_DELIVER. */
void wh_lua_vm_set_context(wh_lua_vm_t *vm, int phase, wh_outcome_t *out);

/* The gateway. Calls the function below nargs arguments on top of the stack, protected, with a
 * message handler adding a traceback, the deadline armed and the memory cap enforced. The
 * function and its arguments are always consumed; on success nresults values (or all, with
 * LUA_MULTRET) replace them, on failure nothing does. Returns 0, WH_ETIMEDOUT ("script timed out
 * after 1000 ms (at main.lua:7)"), WH_ENOMEM ("script exceeded its memory limit of N bytes"), or
 * WH_ERR ("main.lua:7: message" followed by a stack traceback). A script's own pcall cannot
 * swallow a timeout or a memory kill: once killed, every instruction raises again and memory
 * cannot grow until the call returns. The next call starts afresh. Nested calls (from a host
 * function) share the outer call's deadline. */
int wh_lua_vm_call(wh_lua_vm_t *vm, int nargs, int nresults, char *err, size_t errlen);

/* Pushes j as a Lua value (wh_luaconv_push: integers stay integers, null is cjson.null) onto the
 * VM's stack, protected: use this, not wh_luaconv_push, outside a call. Returns 0 with one value
 * pushed, or WH_EINVAL (nested deeper than WH_LUACONV_MAX_DEPTH) / WH_ENOMEM with nothing pushed
 * and a message in err. */
int wh_lua_vm_push_json(wh_lua_vm_t *vm, const json_t *j, char *err, size_t errlen);

/* Requires "main" (scripts_dir/main.lua) in the LOAD phase; it must return a table whose keys
 * are event names ("messages.upsert", …, "timer", "*") and whose values are functions. Returns 0
 * or an error code of wh_lua_vm_call / WH_EINVAL with the reason (file:line where known). After a
 * failure the VM should be discarded: a reload keeps the running version. */
int wh_lua_vm_load_main(wh_lua_vm_t *vm, char *err, size_t errlen);

/* 1 when main.lua's table, as loaded, has a handler for event_name or a "*" fallback, else 0.
 * Does not touch the Lua state (a snapshot taken by wh_lua_vm_load_main). */
int wh_lua_vm_has_handler(const wh_lua_vm_t *vm, const char *event_name);

/* Runs handlers[event_name] (or handlers["*"]) with ev converted to a Lua table (integers stay
 * integers) in the HANDLER phase; host functions append to out, whose prior state the caller
 * has set (wh_outcome_set_prior_state). For a timer the caller passes event_name "timer" and ev
 * {"event":"timer","timer":name,"payload":{…},…}. Returns 0, WH_ENOTFOUND when there is no
 * handler (nothing ran: the caller marks the event done), or an error of wh_lua_vm_call. On any
 * error out is reset, so nothing a failed run queued ever leaves. */
int wh_lua_vm_run_handler(wh_lua_vm_t *vm, const char *event_name, json_t *ev, wh_outcome_t *out,
                          char *err, size_t errlen);

/* wh_lua_vm_run_handler in phase WH_PHASE_HANDLER or WH_PHASE_TRY (any other phase: WH_EINVAL). */
int wh_lua_vm_run_handler_in(wh_lua_vm_t *vm, int phase, const char *event_name, json_t *ev,
                             wh_outcome_t *out, char *err, size_t errlen);

/* Bytes the VM's Lua state holds now, and the most it held since creation. */
void wh_lua_vm_mem_stats(const wh_lua_vm_t *vm, size_t *used, size_t *peak);

/* Short name of a phase for messages: "script loading", "event handler", "deliverer",
 * "event handler (dry run)". */
const char *wh_lua_phase_name(int phase);

/* ---- coroutines: a yielding wahook.http.request (CRM runs, see crm_runner.h) ----------------
 *
 * Inside wh_lua_vm_resume, wahook.http.request does not call http_fn: it validates its argument
 * exactly as the blocking form does, hands the request to the resumer (wh_lua_http_yield_t) and
 * yields. The resumer performs the transfer however it likes (a libcurl multi loop) and resumes
 * the coroutine with the answer (wh_lua_http_result_t); the script then gets {status, headers,
 * body, json} or nil, message, as from the blocking form. Yields work across pcall. Called from a
 * coroutine the script created itself, or where Lua cannot yield (a metamethod, a sort
 * comparator, a module's top level), the request raises an error instead. Outside
 * wh_lua_vm_resume the blocking http_fn is used as before. */

/* A request yielded by wahook.http.request. req is a view of the owned copies below (method is a
 * static string). The resumer owns the whole struct's memory until it calls
 * wh_lua_http_yield_clear (wh_lua_vm_resume also clears it before resuming). */
typedef struct wh_lua_http_yield {
    int pending;          /* 1 when the last resume ended in a yielded request */
    wh_lua_http_req_t req;
    char *path_buf;
    char *body_buf;
    json_t *headers_buf;
} wh_lua_http_yield_t;

/* Frees the owned copies and zeroes y. NULL is fine. */
void wh_lua_http_yield_clear(wh_lua_http_yield_t *y);

/* The answer to a yielded request. err NULL: resp is the HTTP answer (any status); its body
 * (malloc) and headers (lower-case names, json_decref) are taken over by wh_lua_vm_resume in
 * every case. err non-NULL: the transfer failed (timeout, connection refused, …); the script
 * gets nil, err. */
typedef struct wh_lua_http_result {
    const char *err;
    wh_lua_http_resp_t resp;
} wh_lua_http_result_t;

/* Resumes coroutine co, a thread created with lua_newthread on wh_lua_vm_state(vm) and kept
 * referenced by the caller, in the VM's current phase (wh_lua_vm_set_context), memory cap on.
 * First resume: co holds a function and nargs arguments. Later resumes: nargs 0, and result
 * answers the request of the previous yield (NULL: the script sees nil, "resumed without an
 * answer"). *used_s (seconds of Lua run time the coroutine already had) is advanced by this
 * resume: the VM's deadline bounds the sum over all resumes, so time spent waiting for HTTP
 * between resumes never counts, while a script cannot escape its deadline by yielding.
 * Returns:
 *  - 0 with *yielded 0: the function returned; *nres results are on co's stack.
 *  - 0 with *yielded 1: the coroutine yielded; y->pending says whether it was a request from
 *    wahook.http.request (y->req), else a bare coroutine.yield of the script.
 *  - WH_ETIMEDOUT / WH_ENOMEM: killed, messages as wh_lua_vm_call's.
 *  - WH_ERR: the script raised; err holds the message (for a table error object its string
 *    field "message", if any) and a stack traceback, and the error object itself is left on
 *    top of co's stack for the caller to inspect (raw reads only: co is dead).
 *  - WH_EINVAL: bad arguments, or called from inside another call of the VM.
 * After anything but a yield the coroutine is finished: release it (wh_lua_vm_close_thread).
 * Must not be called from inside wh_lua_vm_call. */
int wh_lua_vm_resume(wh_lua_vm_t *vm, lua_State *co, int nargs, wh_lua_http_result_t *result,
                     wh_lua_http_yield_t *y, double *used_s, int *yielded, int *nres, char *err,
                     size_t errlen);

/* Closes the pending to-be-closed variables of a suspended or failed coroutine (under the
 * deadline) and empties its stack, so an abandoned run leaves nothing behind but garbage. */
void wh_lua_vm_close_thread(wh_lua_vm_t *vm, lua_State *co);

/* For runtime/lua_api_http.c: the yield slot and coroutine of the running wh_lua_vm_resume
 * (NULL, and *co NULL, when none runs: wahook.http.request then blocks on http_fn). */
wh_lua_http_yield_t *wh_lua_vm_yield_slot(wh_lua_vm_t *vm, lua_State **co);
/* For runtime/lua_api_http.c: takes the result the running resume was given (NULL when none);
 * the taker frees resp's body and headers. */
wh_lua_http_result_t *wh_lua_vm_take_result(wh_lua_vm_t *vm);

#endif
