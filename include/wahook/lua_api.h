/* The `wahook` Lua module's plumbing, shared by the host-API area files (runtime/lua_api_*.c):
 * name→function tables with the phases each function may run in, access to the calling VM's
 * context, and helpers for argument errors a script author understands. Not for other modules. */
#ifndef WAHOOK_LUA_API_H
#define WAHOOK_LUA_API_H

#include <jansson.h>
#include <lua.h>
#include <stdint.h>
#include "wahook/lua_vm.h"
#include "wahook/outcome.h"

/* One host function: its field name in its table, its C body and a mask of WH_PHASE_BIT()s it
 * may run in. Tables end with a {NULL, NULL, 0} entry. */
typedef struct wh_lua_fn {
    const char *name;
    lua_CFunction fn;
    unsigned phases;
} wh_lua_fn_t;

/* Sets every function of fns into the table at tidx, each wrapped so that a call first checks
 * the phase (wh_lua_check_phase with "<prefix>.<name>"). Inside the body, wh_lua_fname() returns
 * that full name. Raises on memory exhaustion. */
void wh_lua_api_register(lua_State *L, int tidx, const char *prefix, const wh_lua_fn_t *fns);

/* Pushes a new `wahook` module table assembled from every area (a lua_CFunction). */
int wh_lua_api_open(lua_State *L);

/* Area registration: each sets its functions (and sub-tables) into the module table at mod. */
void wh_lua_api_actions_register(lua_State *L, int mod);
void wh_lua_api_timers_register(lua_State *L, int mod);
void wh_lua_api_state_register(lua_State *L, int mod);
void wh_lua_api_util_register(lua_State *L, int mod);
void wh_lua_api_http_register(lua_State *L, int mod);

/* Raises "<name> cannot be called from an event handler (allowed in: deliverer)" unless the
 * running phase is in mask. */
void wh_lua_check_phase(lua_State *L, unsigned mask, const char *name);

/* The full name ("wahook.send_text") of the host function running now. */
const char *wh_lua_fname(lua_State *L);

/* Raises a Lua error whose message is the printf-formatted text, prefixed with the script's
 * file:line. Never returns. */
int wh_lua_errorf(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Describes the value at idx for messages: nil, true, 42, 1.5, "text" (truncated), a table. */
void wh_lua_describe(lua_State *L, int idx, char *buf, size_t len);

/* Raises unless every key of the table at idx is a string listed in allowed (NULL-terminated);
 * what names the table in the message ("wahook.send_text options"). */
void wh_lua_check_keys(lua_State *L, int idx, const char *const *allowed, const char *what);

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
int wh_lua_utf8_valid(const char *s, size_t n);

/* Returns the string argument at idx or raises "<fname>: <what> must be a string of 1..max
 * bytes" (min 0 allows ""); also refuses strings that are not UTF-8. Numbers are refused too:
 * scripts pass strings. */
const char *wh_lua_check_string(lua_State *L, int idx, const char *what, size_t min, size_t max,
                                size_t *len);

/* Converts the value at idx to JSON (wh_luaconv_to_json) or raises with the message. */
json_t *wh_lua_to_json_or_raise(lua_State *L, int idx, const char *root, size_t max_bytes);

/* Writes a script log line at level (WH_LOG_*) with msg, the script's file:line and the fields
 * of the table at fields_idx (0: none). Raises when the fields cannot be serialised. */
void wh_lua_log(lua_State *L, int level, const char *msg, int fields_idx);

/* ---- the calling VM's context (implemented in runtime/lua_vm.c) ---- */

wh_lua_vm_t *wh_lua_vm_of(lua_State *L);
/* The running phase. */
int wh_lua_phase(lua_State *L);
/* The outcome of the running call, or raises "<fname> is not available here" when the caller
 * gave none. */
wh_outcome_t *wh_lua_outcome(lua_State *L);
/* The VM's clock in epoch milliseconds. */
int64_t wh_lua_now_ms(lua_State *L);
/* The script configuration (borrowed, may be NULL). */
const json_t *wh_lua_vm_config(const wh_lua_vm_t *vm);
/* Runs the VM's http callback, excluding its duration from the deadline. WH_ENOTFOUND when the
 * VM has none. */
int wh_lua_vm_http(wh_lua_vm_t *vm, const wh_lua_http_req_t *req, wh_lua_http_resp_t *resp,
                   char *err, size_t errlen);

#endif
