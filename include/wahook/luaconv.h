/* Conversion between jansson values and Lua 5.4 values, keeping integers as integers (lua-cjson
 * turns them into floats), with the path of the offending value in every error. */
#ifndef WAHOOK_LUACONV_H
#define WAHOOK_LUACONV_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>

/* Tables/arrays/objects nested deeper than this are refused in both directions. */
#define WH_LUACONV_MAX_DEPTH 64

/* Mapping (JSON → Lua → JSON):
 *   integer ↔ Lua integer (lua_isinteger), exact over the whole int64 range
 *   real    ↔ Lua float (a whole float such as 3.0 stays a float: 3.0)
 *   string  ↔ string (Lua → JSON: must be valid UTF-8)
 *   true/false ↔ boolean
 *   null    ↔ the null sentinel: lightuserdata NULL, the same value as cjson.null. Note that it
 *             is truthy in Lua: compare with cjson.null.
 *   array   ↔ a table with keys exactly 1..n
 *   object  ↔ a table with string keys
 * An empty Lua table serialises as an empty object {}, except an empty array that came from JSON
 * (it carries a marker metatable and serialises as []). Metatables are otherwise ignored and no
 * Lua code runs during Lua → JSON; read-only proxies (wh_luaconv_push_readonly) serialise as the
 * value they wrap. */

/* Pushes j (borrowed) as a Lua value. Raises a Lua error on memory exhaustion or nesting deeper
 * than WH_LUACONV_MAX_DEPTH, so call it only in protected code (inside a host function or a
 * function run through the VM's gateway). */
void wh_luaconv_push(lua_State *L, const json_t *j);

/* Like wh_luaconv_push, but objects and arrays become read-only proxies at every depth: reading,
 * #, pairs and ipairs work; assigning raises "<name> is read-only". A NULL j pushes an empty
 * read-only table. Raises like wh_luaconv_push. */
void wh_luaconv_push_readonly(lua_State *L, const json_t *j, const char *name);

/* Pushes the null sentinel (cjson.null). Never raises for lack of memory. */
void wh_luaconv_push_null(lua_State *L);

/* 1 when the value at idx is the null sentinel. */
int wh_luaconv_is_null(lua_State *L, int idx);

/* Converts the Lua value at idx to a new JSON value in *out. Never raises and never runs Lua
 * code, so it is safe while C resources are held. root names the value in messages ("state" →
 * "cannot serialise a table with mixed keys at state.a.b"; array elements show as [i], 1-based).
 * max_bytes caps the approximate compact serialised size (0: no cap); conversion stops as soon as
 * it is exceeded. Refused: functions, userdata, threads, lightuserdata other than null, NaN and
 * infinities, strings that are not UTF-8, tables with mixed, sparse or non-string/non-integer
 * keys, cycles, nesting deeper than WH_LUACONV_MAX_DEPTH. Returns 0, WH_EINVAL (unserialisable),
 * WH_EFULL (over max_bytes) or WH_ENOMEM, with a message in err (errlen bytes). */
int wh_luaconv_to_json(lua_State *L, int idx, const char *root, size_t max_bytes, json_t **out,
                       char *err, size_t errlen);

#endif
