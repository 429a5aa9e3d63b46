/* The pure (effect-free) functions scripts call, as Lua C functions: registered by the runtime in
 * its `wahook` module and built on their own as the `wahook_pure` Lua module that busted loads,
 * so specs run the very code the server runs. */
#ifndef WAHOOK_LUA_PURE_H
#define WAHOOK_LUA_PURE_H

struct lua_State;

/* localtime(tz [, t]) -> {year, month, day, hour, min, sec, wday (1 = Monday .. 7 = Sunday),
 * yday (1..366), isdst (boolean), utc_offset (seconds east of UTC), zone ("CET")}.
 * t is epoch seconds (a float is floored), default now. Raises an error for a malformed or
 * unknown zone name or a time out of range. */
int wh_lua_localtime(struct lua_State *L);

/* mktime(tz, fields) -> epoch seconds (integer) of the local time fields.year, month, day
 * (required) and hour, min, sec (default 0); other fields are ignored. Out-of-range fields are
 * normalised, a time in a DST gap moves forward by the gap and an ambiguous one is the earlier
 * instant (see wh_tz_mktime). Raises an error like localtime. */
int wh_lua_mktime(struct lua_State *L);

/* Opens the module table {localtime = ..., mktime = ...}. */
int luaopen_wahook_pure(struct lua_State *L);

#endif
